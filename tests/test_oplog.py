"""The operator's log in-process (server/oplog.py, the writer's admin-change lines, recovery progress), and the
writer's handling of commands that change nothing. The same log from a real server: tests/test_server_startup.py.
"""

from __future__ import annotations

import collections
import json
import logging

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.errors import Repeated
from server import oplog
from server.demo import demo_commands
from server.journal import MemoryJournal
from server.records import JournalRecord, encode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests.test_sequencer import NOW_MS, batch, event, run_with


def customer(index: int) -> cmd.CreateCustomer:
    return cmd.CreateCustomer(NOW_MS, "ops", f"c-{index}", f"Customer {index}", {})


def test_a_long_recovery_says_how_far_it_got(caplog: pytest.LogCaptureFixture) -> None:
    journal = MemoryJournal()  # records only, no snapshot: all of them are replayed
    journal.commit([(seq, encode_record(JournalRecord(customer(seq)))) for seq in range(1, 2_101)])
    last_seq = journal.last_seq()
    with caplog.at_level(logging.INFO, logger="tariff"):
        recover(journal, progress_every_s=0.0)  # 0: a line at every check (one per 1,024 records)
    progress = [r for r in caplog.records if r.getMessage() == "recovery in progress"]
    assert [r.fields["seq"] for r in progress] == [1_024, 2_048]  # type: ignore[attr-defined]
    assert {r.fields["last_seq"] for r in progress} == {last_seq}  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tariff"):
        recover(journal)  # no interval: silent
    assert not caplog.records


def test_a_long_recovery_of_few_large_batches_says_how_far_it_got_too(caplog: pytest.LogCaptureFixture) -> None:
    """README: a recovery longer than 2 s says how far it got every 2 s. The clock was read once per 1,024 records
    only, so a journal of fewer, larger records (up to 10,000 events each by default: 10 million events, seconds
    of replay, between two reads) replayed without a line. It is read every 65,536 events replayed as well."""
    journal = MemoryJournal()
    events_per_batch = 40_000

    async def body(sequencer: Sequencer) -> None:
        for n in range(3):
            ids = (f"b{n}-{i}" for i in range(events_per_batch))
            data = usage_pb2.UsageBatch(batch_id=f"b{n}", events=[event(t) for t in ids]).SerializeToString()
            await sequencer.run(UsageBatch(data, events_per_batch))

    run_with(journal, body)
    records_only = MemoryJournal()  # without the snapshot the writer stored at its close: every record is replayed
    records_only.commit(list(journal.read_records(0)))
    last_seq = records_only.last_seq()
    assert last_seq < 1_024
    with caplog.at_level(logging.INFO, logger="tariff"):
        recover(records_only, progress_every_s=0.0)  # 0: a line at every check
    progress = [r.fields for r in caplog.records if r.getMessage() == "recovery in progress"]  # type: ignore[attr-defined]
    # Checked before each record: the third batch's record starts past 2 x 40,000 events, the second's past 40,000.
    assert [(line["seq"], line["last_seq"]) for line in progress] == [(last_seq, last_seq)], progress


def test_one_line_per_admin_change_and_none_for_a_retry_or_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    journal = MemoryJournal()
    refused = cmd.CreateCustomer(NOW_MS, "ops", "has space", "", {})

    async def body(sequencer: Sequencer) -> None:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tariff"):
            seq, first = await sequencer.run(customer(1))
            retry_seq, again = await sequencer.run(customer(1))
            assert (retry_seq, again) == (seq, first), "a retry is answered with the first call's result"
            with pytest.raises(Exception, match="letters, digits"):
                await sequencer.run(refused)
        assert journal.last_seq() == seq, "neither the retry nor the refusal was journaled"

    run_with(journal, body)
    changes = [r for r in caplog.records if r.getMessage() == "admin change"]
    assert [r.fields for r in changes] == [  # type: ignore[attr-defined]
        {"actor": "ops", "action": "CreateCustomer", "target": "customer/c-1"}
    ]


def test_a_batch_that_accepts_nothing_takes_no_record_and_keeps_the_seq() -> None:
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        seq, _ = await sequencer.run(batch(event("t1")))
        assert journal.last_seq() == seq
        for nothing in (
            batch(),
            batch(event("t1")),
            batch(
                usage_pb2.UsageEvent(
                    transaction_id="t2", customer_id="nobody", event_type="ai_action", timestamp_ms=NOW_MS
                )
            ),
        ):
            ack_seq, _ = await sequencer.run(nothing)
            assert ack_seq == seq and journal.last_seq() == seq and sequencer.billing.last_seq == seq
        next_seq, _ = await sequencer.run(batch(event("t3")))
        assert next_seq == seq + 1

    billing = run_with(journal, body)
    assert recover(journal).last_seq == billing.last_seq


def test_text_and_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        oplog.configure("text", "info")
        oplog.line("serving", listen="127.0.0.1:50051", data_dir="my data")
        logging.getLogger("tariff").debug("not at info")
        text = capsys.readouterr().err.strip().splitlines()
        assert len(text) == 1
        assert text[0].endswith('INFO tariff: serving listen=127.0.0.1:50051 data_dir="my data"'), text
        oplog.configure("json", "debug")
        oplog.line("stopped", journal_seq=7)
        (entry,) = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
        assert {k: entry[k] for k in ("level", "logger", "msg", "journal_seq")} == {
            "level": "INFO",
            "logger": "tariff",
            "msg": "stopped",
            "journal_seq": 7,
        }
        with pytest.raises(ValueError, match="text, json"):
            oplog.configure("xml", "info")
    finally:
        logging.getLogger().handlers.clear()


def test_activity_reports_only_a_busy_interval_and_starts_afresh() -> None:
    activity = oplog.Activity()
    assert activity.report(lambda: 1) is None, "idle: no line"
    activity.batch(10, 2, collections.Counter({"UNKNOWN_CUSTOMER": 3}))
    activity.batch(5, 0, collections.Counter({"UNKNOWN_CUSTOMER": 1, "INVALID_EVENT": 1}))
    for commit_ms in [1.0] * 99 + [50.0]:
        activity.committed(commit_ms)
    activity.streams_open = 2
    fields = activity.report(lambda: 4096)
    assert fields is not None
    assert {k: fields[k] for k in ("accepted", "duplicates", "rejected", "rejected_by_reason", "commits")} == {
        "accepted": 15,
        "duplicates": 2,
        "rejected": 5,
        "rejected_by_reason": "INVALID_EVENT:1,UNKNOWN_CUSTOMER:4",
        "commits": 100,
    }
    assert (fields["commit_p99_ms"], fields["journal_bytes"], fields["streams"]) == (50.0, 4096, 2)
    assert activity.report(lambda: 4096) is None, "the next interval starts empty"


def test_demo_commands_replay_to_the_same_state_with_the_request_marks() -> None:
    """The idempotency marks are state: a snapshot-free replay rebuilds them, so a retry after a restart is known."""
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(customer(1))

    billing = run_with(journal, body)
    replayed = recover(journal).engine
    assert replayed.state.requests == billing.engine.state.requests
    assert "rate_card/ai-credits" in replayed.state.requests and len(demo_commands(NOW_MS)) == 7
    # A customer's mark is held on the customer (engine/contracts.py): replay rebuilds it, and a retry is known.
    assert replayed.state.customers["c-1"] == billing.engine.state.customers["c-1"]
    with pytest.raises(Repeated):
        replayed.apply(msgspec.structs.replace(customer(1), at_ms=NOW_MS + 1), replayed.state.last_seq + 1)
