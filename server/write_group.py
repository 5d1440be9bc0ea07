"""What the writer (server/sequencer.py) works with: a command submitted with the future its caller awaits, the group
of commands applied and committed together, and a publish held until its re-rating's completion is durable."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from engine import commands as cmd
from engine.errors import EngineError
from engine.versions import PublishResult
from server.explain_index import ExplainIndex
from server.journal import Journal
from server.usage_batches import UsageBatch
from server.worker import Worker

Submitted = cmd.AdminCommand | UsageBatch


@dataclasses.dataclass(slots=True)
class Submission:
    command: Submitted | None  # None: the marker close() queues behind the last real command
    future: asyncio.Future[tuple[int, object]]
    # time.monotonic() after which the caller no longer waits: the command is then not applied at all.
    deadline_monotonic: float | None = None


@dataclasses.dataclass(slots=True)
class HeldPublish:
    """A publish journaled with its re-rating pending: its caller, answered once the re-rating completes."""

    submission: Submission
    seq: int
    published: PublishResult


@dataclasses.dataclass
class Group:
    """One group commit: the records a group of commands produced, and who to answer."""

    now_ms: int
    records: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    # (caller, seq, result); a result that is an EngineError is that caller's refusal (nothing was applied).
    answers: list[tuple[Submission, int, object]] = dataclasses.field(default_factory=list)
    commit: asyncio.Future[None] | None = None
    commit_ms: float = 0.0
    events: int = 0  # usage events accepted in its records
    changes: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (actor, action, target)
    # The customers its records touched (usage only while watched: see Billing.set_watching), and the
    # alert seq its records fired up to: both reported to `Sequencer.committed` once the group is durable.
    touched: set[str] = dataclasses.field(default_factory=set)
    alerts_upto: int = 0
    explain: list[bytes] = dataclasses.field(default_factory=list)  # the kernel's explain records of its batches
    # The publish whose re-rating's completion record this group holds, answered among `answers`: if the commit
    # fails with the publish durable, it is held again rather than failed (`PublishWriting._fail_group`).
    held: HeldPublish | None = None

    def start(self, writer_thread: Worker, journal: Journal, explain_index: ExplainIndex | None) -> None:
        """Hands the records to the journal's thread. Once they are durable, that thread also hands the explain index
        the kernel's explain records of the group's batches: the index's thread is woken from there, not from the
        event loop, which the group's commit would otherwise wake once more."""
        if not self.records:
            return
        started_ns = time.perf_counter_ns()

        def commit() -> None:
            journal.commit(self.records)
            self.commit_ms = (time.perf_counter_ns() - started_ns) / 1e6
            if explain_index is not None:
                explain_index.submit(self.explain, self.records[-1][0])

        self.commit = writer_thread.run(commit)

    async def wait(self) -> None:
        if self.commit is not None:
            await self.commit

    def answer(self) -> None:
        for submission, seq, result in self.answers:
            if submission.future.done():
                continue
            if isinstance(result, EngineError):
                submission.future.set_exception(result)
            else:
                submission.future.set_result((seq, result))

    def fail(self, error: Exception, *, spared: Submission | None = None) -> None:
        """Nothing of the group was committed: every caller gets `error` (but `spared`, answered later), and each
        IngestUsage stream with a batch here ends with it, so the writer applies none of the batches that stream
        sent after (queued behind)."""
        for submission, _, _ in self.answers:
            if submission is spared:
                continue
            if isinstance(submission.command, UsageBatch) and submission.command.stream is not None:
                submission.command.stream.refused = True
            if not submission.future.done():
                submission.future.set_exception(error)


def past_deadline(submission: Submission) -> bool:
    deadline = submission.deadline_monotonic
    return deadline is not None and time.monotonic() >= deadline
