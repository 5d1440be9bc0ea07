"""Bytes and page faults an event of the explain index, on bench records: server/bench/seed.py's customers and
batches, rated in process as the server rates them, their explain records written into a fresh index
(server/explain_index.py) in one thread, in blocks of BLOCK_BATCHES batches (the server writes about a second of
ingest at once). A measurement, not a test: `python -m server.bench.explain_bytes [batches]` (600 by default:
600,000 events). Prints the file's bytes an event, the minor page faults an event while writing, the CPU an
event of the writes, and the bytes an event of each table's pages and of the pages LMDB holds free."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import lmdb

from engine.billing import Billing
from server.bench import seed
from server.explain_index import ExplainIndex

CUSTOMERS = 10_000
BATCH_EVENTS = 1_000
BLOCK_BATCHES = 50
# Transaction ids are the run tag, a dash and a serial ("m7-123456"): each byte more of the tag is two bytes an
# event more in the chunks (a part per product charged). The figures in docs/architecture.md were measured with it.
RUN_TAG = "m7"


def records(batches: int) -> tuple[list[tuple[list[bytes], int]], int]:
    """The explain records of `batches` bench batches, grouped by block, each with the last seq it holds; and the
    seq before the first batch."""
    billing = Billing()
    for seq, command in enumerate(seed.seed_commands(CUSTOMERS), start=1):
        billing.apply(command, seq)
    billing.refresh_tables()
    first = billing.last_seq + 1
    billing.kernel.set_explain(first)
    blocks: list[tuple[list[bytes], int]] = []
    pending: list[bytes] = []
    now_ms = time.time_ns() // 1_000_000
    for batch in seed.batches(RUN_TAG, CUSTOMERS, BATCH_EVENTS, batches, seed=7):
        done = billing.ingest(batch.SerializeToString(), now_ms)
        assert done.accepted == BATCH_EVENTS, done
        pending.append(billing.kernel.take_explain())
        if len(pending) == BLOCK_BATCHES:
            blocks.append((pending, billing.last_seq))
            pending = []
    if pending:
        blocks.append((pending, billing.last_seq))
    return blocks, first - 1


def tables(path: Path, events: int) -> str:
    """Bytes an event of each table's pages, and of the pages no table holds (LMDB's free pages)."""
    env = lmdb.open(str(path), readonly=True, max_dbs=4, lock=False)
    try:
        used, parts = 0, []
        with env.begin() as txn:
            for name in (b"chunks", b"periods-2"):
                stat = txn.stat(env.open_db(name, txn=txn, create=False))
                pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                used += pages
                parts.append(f"{name.decode()} {pages * 4096 / events:.1f}")
        free = env.info()["last_pgno"] + 1 - used
        return ", ".join(parts) + f", free and other {free * 4096 / events:.1f}"
    finally:
        env.close()


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    blocks, covered = records(batches)
    events = batches * BATCH_EVENTS
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "explain"
        index = ExplainIndex(path)
        index.write([], covered)  # the covered seq a replay from the first batch starts from
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu = time.process_time()
        for block, through in blocks:
            index.write(block, through)
        cpu = time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        index.close()
        size = (path / "data.mdb").stat().st_blocks * 512
        print(
            f"{events:,} events: {size / events:.1f} B an event in the index file ({tables(path, events)}); "
            f"{faults / events:.3f} page faults and {cpu / events * 1e6:.2f} us CPU an event writing"
        )


if __name__ == "__main__":
    main()
