"""`tariff backup` (README "The data directory, snapshots and backups"): a copy of a data directory taken while its
server runs, or of a stopped one, that `tariff serve` starts from.

Catalogue: the demo's rate card `ai-credits` (an `ai_action` with no other dimension costs its default rate, 1
credit) and customers c0, c1, c2 on it, with no credit: each event adds 1 to its customer's period_charges. Batch i
holds one event per customer (transaction ids `b<i>-c<k>`), so after the first m batches each customer's
period_charges is m.

The server snapshots every 10 records, so that backups taken while it ingests copy a snapshot and its dedupe
segments while the snapshot's thread replaces them."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from server.explain_index import ExplainIndex
from server.journal import LmdbJournal
from server.recovery import recover_counting
from tests.audit_fixtures import HOUR_MS, open_contract, preview, serving, this_hour_ms
from tests.serverproc import REPO_ROOT, ServerProcess

CUSTOMERS = ("c0", "c1", "c2")
# Batches the ingesting thread sends at least, and at most (it stops sooner only once the backup is done).
BATCHES_MIN = 60
BATCHES_MAX = 2_000
# The batches acked before the backup starts, at least.
ACKED_BEFORE_MIN = 20
_LINE = re.compile(r"records up to seq (\d+) .*?(?:snapshot at seq (\d+)|no snapshot)")


def catalogue(client: TariffClient) -> None:
    for customer_id in CUSTOMERS:
        open_contract(client, customer_id, f"{customer_id}-k", this_hour_ms() - HOUR_MS, rate_card_id="ai-credits")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("backup")
    yield from serving(ServerProcess(root / "data", demo=True, extra_args=["--snapshot-every", "10"]), catalogue)


def batch(index: int, prefix: str = "b") -> usage_pb2.UsageBatch:
    at_ms = now_ms() - 1_000
    return usage_pb2.UsageBatch(
        batch_id=f"{prefix}{index}",
        events=[
            usage_pb2.UsageEvent(
                transaction_id=f"{prefix}{index}-{customer_id}",
                customer_id=customer_id,
                event_type="ai_action",
                timestamp_ms=at_ms,
            )
            for customer_id in CUSTOMERS
        ],
    )


def tariff_backup(data_dir: Path, destination: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.cli", "backup", "--data-dir", str(data_dir), "--to", str(destination)]
    command.extend(args)
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def copied_seqs(done: subprocess.CompletedProcess[str]) -> tuple[int, int | None]:
    """(last record's seq, snapshot's seq or None) from the backup's line."""
    assert done.returncode == 0, done.stderr
    found = _LINE.search(done.stdout)
    assert found is not None and done.stdout.count("\n") == 1, done.stdout
    return int(found[1]), None if found[2] is None else int(found[2])


def balances(client: TariffClient) -> dict[str, bytes]:
    """Each customer's balance but for as_of_seq (a resend journals its batches under other seqs)."""
    read = {}
    for customer_id in (*CUSTOMERS, "acme"):
        balance = client.get_balance(customer_id)
        balance.as_of_seq = 0
        read[customer_id] = balance.SerializeToString(deterministic=True)
    return read


class Ingesting(threading.Thread):
    """Sends batch 0, 1, 2, ... one at a time, each once acked noting how many are (`acked`), until told to stop
    (and BATCHES_MIN sent)."""

    def __init__(self, server: ServerProcess, prefix: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.prefix = prefix
        self.sent: list[usage_pb2.UsageBatch] = []  # as sent: a resend must carry the same events
        self.acked = 0
        self.some_acked = threading.Event()
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with self.server.client() as client:
                while self.acked < BATCHES_MAX and not (self.stop.is_set() and self.acked >= BATCHES_MIN):
                    self.sent.append(batch(self.acked, self.prefix))
                    ack = client.usage.IngestUsageBatch(self.sent[-1])
                    assert (ack.accepted, ack.duplicates) == (len(CUSTOMERS), 0), ack
                    self.acked += 1
                    if self.acked >= ACKED_BEFORE_MIN:
                        self.some_acked.set()
        except BaseException as exc:
            self.failure = exc
            self.some_acked.set()


@pytest.mark.parametrize("args", [("--no-explain-index",), ()], ids=["journal", "explain-index"])
def test_a_backup_of_a_running_server_holds_every_batch_acked_before_it_and_a_prefix_of_the_rest(
    server: ServerProcess, args: tuple[str, ...]
) -> None:
    with server.client() as client:
        charges_before = int(client.get_balance("c0").period_charges)
    sender = Ingesting(server, f"{len(args)}-")
    sender.start()
    assert sender.some_acked.wait(60) and sender.failure is None, sender.failure
    acked_before = sender.acked
    destination = server.data_dir.parent / f"restored-{len(args)}"
    done = tariff_backup(server.data_dir, destination, *args)
    sender.stop.set()
    sender.join(60)
    assert not sender.is_alive() and sender.failure is None, sender.failure
    last_seq, snapshot_seq = copied_seqs(done)
    assert snapshot_seq is not None and 0 < snapshot_seq <= last_seq, done.stdout
    assert ("no explain index" in done.stdout) == bool(args), done.stdout
    assert (destination / "explain").exists() == (not args) and not (destination / "LOCK").exists()
    with server.client() as client:
        final = balances(client), explained(client)

    restored = ServerProcess(destination)
    restored.start()
    # Its start line says what the recovery replayed: past the snapshot with the index copied, else every record.
    assert replayed_records(restored) == (last_seq if args else last_seq - snapshot_seq), restored.log_tail(5)
    try:
        with restored.client() as client:
            charges_restored = {c: client.get_balance(c).period_charges for c in CUSTOMERS}
            in_backup = []
            for index in range(sender.acked):
                ack = client.usage.IngestUsageBatch(sender.sent[index])
                assert (ack.accepted, ack.duplicates) in ((0, len(CUSTOMERS)), (len(CUSTOMERS), 0)), (index, ack)
                in_backup.append(ack.duplicates == len(CUSTOMERS))
            kept = in_backup.count(True)
            assert in_backup == [True] * kept + [False] * (sender.acked - kept), "the backup holds a prefix"
            assert kept >= acked_before, (kept, acked_before)
            assert charges_restored == {c: str(charges_before + kept) for c in CUSTOMERS}
            assert (balances(client), explained(client)) == final
    finally:
        restored.stop()


def replayed_records(server: ServerProcess) -> int:
    """The `replayed_records` of the server's `serving` line (README, The operator's log)."""
    found = re.search(r" tariff: serving .* replayed_records=(\d+) ", server.log_path.read_text())
    assert found is not None, server.log_tail(5)
    return int(found.group(1))


def explained(client: TariffClient) -> list[str]:
    """The transaction ids of c0's current line's events, every page's, sorted."""
    ids: list[str] = []
    page = explain_page(client, page_size=1000)
    ids.extend(e.transaction_id for e in page.events)
    while page.next_page_token:
        page = explain_page(client, page.next_page_token, page_size=1000)
        ids.extend(e.transaction_id for e in page.events)
    return sorted(ids)


def explain_page(
    client: TariffClient, page_token: str = "", *, page_size: int = 2
) -> invoices_pb2.ExplainLineItemResponse:
    """A page of c0's current line's events."""
    (line,) = preview(client, "c0", this_hour_ms() - HOUR_MS).lines
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id="c0", period_start=stamp(this_hour_ms() - HOUR_MS), line_id=line.line_id, page_size=page_size
    )
    request.page_token = page_token
    page: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
    return page


def reads(client: TariffClient) -> dict[str, bytes]:
    """Balances, the current period's invoice drafts, the customers, the audit log and the invoices."""
    read = {f"balance {c}": b for c, b in balances(client).items()}
    for customer_id in CUSTOMERS:
        read[f"preview {customer_id}"] = str(preview(client, customer_id, this_hour_ms() - HOUR_MS)).encode()
    listed = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest())
    read["customers"] = listed.SerializeToString(deterministic=True)
    audit = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000))
    read["audit log"] = audit.SerializeToString(deterministic=True)
    invoices = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000))
    read["invoices"] = invoices.SerializeToString(deterministic=True)
    return read


def test_a_backup_of_a_stopped_server_with_its_explain_index_reads_as_it_and_takes_its_page_tokens(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        client.usage.IngestUsageBatch(batch(BATCHES_MAX + 1))
        seq = client.get_balance("c0").as_of_seq
        before = reads(client)
        first = explain_page(client)
        second = explain_page(client, first.next_page_token)
    assert first.next_page_token and len(second.events) == 2, (first, second)
    assert server.terminate() == 0
    destination = server.data_dir.parent / "stopped-copy"
    done = tariff_backup(server.data_dir, destination)  # the explain index copied: the default
    server.restart()
    last_seq, snapshot_seq = copied_seqs(done)
    assert last_seq >= seq and snapshot_seq == last_seq, done.stdout  # a clean stop snapshots its last record
    assert f"explain index covering seq {last_seq} " in done.stdout, done.stdout
    restored = ServerProcess(destination)
    restored.start()
    assert replayed_records(restored) == 0, restored.log_tail(5)  # the snapshot is the last record's
    try:
        with restored.client() as client:
            assert reads(client) == before
            # The index copied, not rebuilt: its secret verifies the token the original server issued.
            assert explain_page(client, first.next_page_token) == second
    finally:
        restored.stop()


@pytest.mark.parametrize("args", [("--no-explain-index",), ()], ids=["journal", "explain-index"])
def test_a_start_from_a_backup_with_its_explain_index_loads_the_snapshot_and_one_without_replays_everything(
    server: ServerProcess, args: tuple[str, ...]
) -> None:
    """The start's recovery, run here on the backup as `tariff serve` runs it (the explain index on, its default):
    what it replays (its Backlog) is the records after the snapshot when the index was copied, else every record (a
    new index is behind the snapshot: server/recovery.py)."""
    destination = server.data_dir.parent / f"recovered-{len(args)}"
    last_seq, snapshot_seq = copied_seqs(tariff_backup(server.data_dir, destination, *args))
    assert snapshot_seq is not None and 0 < snapshot_seq <= last_seq
    journal = LmdbJournal(destination / "journal", map_size_bytes=1 << 30, sync=False)
    index = ExplainIndex(destination / "explain", map_size_bytes=1 << 26)
    try:
        billing, backlog = recover_counting(journal, explain_index=index)
    finally:
        index.close()
        journal.close()
    assert billing.last_seq == last_seq
    assert backlog.records == (last_seq if args else last_seq - snapshot_seq), (backlog, snapshot_seq)


def test_an_existing_destination_or_a_directory_without_a_journal_is_refused_and_nothing_is_written(
    server: ServerProcess,
) -> None:
    root = server.data_dir.parent
    taken = root / "taken"
    taken.mkdir()
    (taken / "keep").write_bytes(b"mine")
    done = tariff_backup(server.data_dir, taken)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "already exists" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert [p.name for p in taken.iterdir()] == ["keep"] and (taken / "keep").read_bytes() == b"mine"

    empty = root / "no-journal"
    empty.mkdir()
    done = tariff_backup(empty, root / "from-nothing")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "holds no journal" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (root / "from-nothing").exists()
    assert not [p.name for p in root.iterdir() if ".partial-" in p.name]
