"""ExplainLineItem against a real server: usage for a few customers, drill-down through pages, bad requests, and
the same answers after kill -9 (the index caught up by replay) and after the index is deleted (rebuilt).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import lmdb
import pytest
from google.protobuf import timestamp_pb2
from tariff.client import TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, usage_pb2

from engine.lines import line_id
from tests.serverproc import ServerFactory, ServerProcess

KINDS: tuple[tuple[dict[str, str], Decimal], ...] = (  # demo prices (server/demo.py), credits per action
    ({"action": "summary", "model": "gpt-4", "complexity": "simple", "data_source": "crm"}, Decimal("2.5")),
    ({"action": "summary", "model": "gpt-4o-mini", "complexity": "simple", "data_source": "crm"}, Decimal("0.5")),
    ({"action": "summary", "model": "gpt-4o-mini", "complexity": "complex", "data_source": "web"}, Decimal("1")),
)
CUSTOMERS = ("acme", "beta", "gamma")  # beta: a 10-credit grant then overage; gamma: no grant, all overage


def month_start_ms() -> int:
    now = datetime.now(UTC)
    return int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def stamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def seed_customers(server: ServerProcess) -> None:
    start = stamp(month_start_ms())
    with server.client() as client:
        for customer in CUSTOMERS[1:]:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name=customer))
            client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=f"{customer}-c",
                    customer_id=customer,
                    rate_card_id="ai-credits",
                    starting_at=start,
                    overage_policy=contracts_pb2.ALLOW,
                    overage_price="1",
                    currency="USD",
                )
            )
        grant = contracts_pb2.Grant(
            id="beta-10",
            customer_id="beta",
            contract_id="beta-c",
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="9",
            starts_at=start,
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant, request_id="beta-10"))


def ingest(server: ServerProcess) -> dict[tuple[str, str], tuple[set[str], Decimal]]:
    """Sends usage in several batches; returns, per (customer, line id), the transaction ids and the credits."""
    expected: dict[tuple[str, str], tuple[set[str], Decimal]] = {}
    now = int(time.time() * 1000)
    with server.client() as client:
        for batch_no in range(6):
            events = []
            for i in range(40):
                n = batch_no * 40 + i
                customer = CUSTOMERS[n % 3]
                dimensions, price = KINDS[(n // 3) % 3]
                tx = f"{customer}-{n}"
                events.append(
                    usage_pb2.UsageEvent(
                        transaction_id=tx,
                        customer_id=customer,
                        event_type="ai_action",
                        timestamp_ms=now - 300 + i,
                        dimensions=dimensions,
                    )
                )
                ids, total = expected.setdefault((customer, line_id("ai_action", dimensions)), (set(), Decimal(0)))
                ids.add(tx)
                expected[(customer, line_id("ai_action", dimensions))] = (ids, total + price)
            ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=f"b{batch_no}", events=events))
            assert ack.accepted == 40, ack
    return expected


def drill(server: ServerProcess, customer: str, line: str, page_size: int) -> list[invoices_pb2.ExplainedEvent]:
    """Every page of a line; asserts each page's amounts sum with the others to the line's amount."""
    events: list[invoices_pb2.ExplainedEvent] = []
    token = ""
    with server.client() as client:
        while True:
            page = client.invoices.ExplainLineItem(
                invoices_pb2.ExplainLineItemRequest(
                    customer_id=customer,
                    period_start=stamp(month_start_ms()),
                    line_id=line,
                    page_size=page_size,
                    page_token=token,
                )
            )
            assert len(page.events) <= page_size
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                assert sum(Decimal(e.amount) for e in events) == Decimal(page.line_amount)
                return events
            assert len(page.events) == page_size


def check_lines(server: ServerProcess, expected: dict[tuple[str, str], tuple[set[str], Decimal]]) -> list[str]:
    answers = []
    for (customer, line), (ids, credits) in sorted(expected.items()):
        events = drill(server, customer, line, page_size=7)
        counts = Counter(e.transaction_id for e in events)
        assert set(counts) == ids, "every event of the line, and no other"
        assert max(counts.values()) == 1, "no event twice"
        assert sum(Decimal(e.amount) for e in events) == credits
        for e in events:
            assert sum(Decimal(d.credits) for d in e.draws) + Decimal(e.overage) == Decimal(e.amount)
            assert e.version == 1
            assert Decimal(e.unit_price) * Decimal(e.quantity) == Decimal(e.amount)
        answers.append(repr([e.SerializeToString() for e in events]))
    return answers


def index_behind(path: Path, covered_seq: int) -> None:
    """Makes the (stopped) server's explain index look as if it had been killed before indexing past covered_seq."""
    env = lmdb.open(str(path), max_dbs=2)
    try:
        with env.begin(write=True) as txn:
            # The (customer, period) entries of blocks in chunk layout 2: 8 bytes of period key, then the block.
            entries, meta = env.open_db(b"periods-2", txn=txn), env.open_db(b"meta", txn=txn)
            assert int(txn.get(b"covered_seq", db=meta) or b"0") > covered_seq
            late = [key for key, _ in txn.cursor(db=entries) if int.from_bytes(key[8:], "big") > covered_seq]
            assert late, "there are entries to lose"
            for key in late:
                txn.delete(key, db=entries)
            txn.put(b"covered_seq", str(covered_seq).encode(), db=meta)
    finally:
        env.close()


def explain_error(server: ServerProcess, **fields: object) -> TariffError:
    request = invoices_pb2.ExplainLineItemRequest(**fields)  # type: ignore[arg-type]
    with server.client() as client, pytest.raises(TariffError) as raised:
        client.invoices.ExplainLineItem(request)
    return raised.value


@pytest.mark.slow
def test_explain_drills_down_and_survives_kill_and_index_loss(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    seed_customers(server)
    expected = ingest(server)
    # beta's 10 credits run out: its events draw on the grant, then overage.
    beta = [e for (c, line) in expected if c == "beta" for e in drill(server, "beta", line, 1000)]
    assert sum(Decimal(d.credits) for e in beta for d in e.draws) == 10
    assert any(Decimal(e.overage) > 0 for e in beta)
    answers = check_lines(server, expected)

    (customer, line), _ = sorted(expected.items())[0]
    other_line = sorted(expected)[1][1]
    with server.client() as client:
        first = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=customer, period_start=stamp(month_start_ms()), line_id=line, page_size=3
            )
        )
    token = first.next_page_token
    assert token
    base = {"customer_id": customer, "period_start": stamp(month_start_ms()), "page_size": 3}
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (forged, "not-a-token", token[:10]):
        error = explain_error(server, line_id=line, page_token=bad, **base)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in error.details
    error = explain_error(server, line_id=other_line, page_token=token, **base)  # another line's token
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    error = explain_error(server, line_id="ai_action;action=nothing", **base)
    assert error.code == grpc.StatusCode.NOT_FOUND and "ai_action;action=nothing" in error.details
    base["period_start"] = stamp(month_start_ms() + 3_600_000)
    error = explain_error(server, line_id=line, **base)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in error.details

    server.kill9()
    server.start()
    assert check_lines(server, expected) == answers
    with server.client() as client:  # a token from before the crash still pages on
        again = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=customer, period_start=stamp(month_start_ms()), line_id=line, page_size=3, page_token=token
            )
        )
    assert again.events[0].transaction_id not in {e.transaction_id for e in first.events}

    server.kill9()
    index_behind(server.data_dir / "explain", covered_seq=12)  # killed before any usage was indexed
    server.start()
    assert check_lines(server, expected) == answers

    server.terminate()  # a clean stop saves a snapshot: an index behind it is rebuilt from the journal's start
    shutil.rmtree(server.data_dir / "explain")
    server.start()
    assert check_lines(server, expected) == answers

    server.kill9()
    shutil.rmtree(server.data_dir / "explain")  # the index lost: rebuilt from the journal at the start
    server.start()
    assert check_lines(server, expected) == answers
    error = explain_error(server, line_id=line, page_token=token, **{**base, "period_start": stamp(month_start_ms())})
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT  # tokens of the lost index are stale
