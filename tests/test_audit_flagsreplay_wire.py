"""`tariff serve` flags against replay and restarts, over the wire (README "Server flags", "Flags and restarts").

A flag governs what the server takes from the time it starts (a limit applied where a request enters, the TTL a hold
may ask, the grace after which the close driver submits a `CloseDuePeriods` carrying its time and grace, snapshot
cadence, the explain index, telemetry, the log); it never changes what a journaled record did. So every read is
the same after a restart with any other value of any flag, and a record a new value would refuse replays as it
was journaled. The scenario is tests/test_audit_recovery_wire.py's (every feature, every read compared byte for
byte).
"""

from __future__ import annotations

import functools
import re

import grpc
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal
from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_recovery_wire import (
    BATCH1,
    HOLDS,
    HOUR_MS,
    M1,
    M2,
    alert_count,
    differences,
    every_read,
    ingest,
    retries,
    scenario_read,
)

# Every flag the README's table lists that a restart may change, each set far from its default: the tightest
# limits (a batch of 1 event, holds of at most 1 s, 1 MiB messages and intake, one batch in flight), no explain
# index, a snapshot after every record, no future skew, idle connections closed after 1 s, a slow clock driver.
TIGHT = (
    "--no-explain-index",
    "--batch-events-max", "1",
    "--reservation-ttl-max-s", "1",
    "--message-mb-max", "1",
    "--intake-mb-max", "1",
    "--stream-inflight-batches-max", "1",
    "--max-concurrent-rpcs", "8",
    "--connection-idle-max", "1s",
    "--future-skew-s", "0",
    "--clock-look-every-ms", "1000",
    "--close-grace", "100000d",
    "--snapshot-every", "1",
    "--snapshot-every-events", "1",
    "--snapshot-journal-factor", "0",
    "--log-format", "json",
    "--log-level", "debug",
    "--log-activity-every-s", "0.5",
    "--loop-stall-sample-ms", "5",
)  # fmt: skip
# And the loosest: the index on again (rebuilt from the journal), limits far above anything journaled.
LOOSE = (
    "--explain-index",
    "--explain-map-mb", "2048",
    "--map-size-mb", "2048",
    "--batch-events-max", "1000000",
    "--reservation-ttl-max-s", "31536000",
    "--message-mb-max", "64",
    "--connection-idle-max", "off",
    "--future-skew-s", "31622400",
    "--close-grace", "off",
    "--snapshot-every", "1000000",
    "--snapshot-every-events", "100000000",
    "--snapshot-journal-factor", "10",
)  # fmt: skip
_EXPLAIN = re.compile(r"^Explain ")


def restarted_with(server: ServerProcess, how: str, args: tuple[str, ...]) -> None:
    if how == "kill9":
        server.kill9()
    else:
        server.terminate()
    server.extra_args = args
    server.restart()


def test_every_read_is_the_same_after_starts_with_other_values_of_every_flag(server_factory: ServerFactory) -> None:
    """The recovery scenario, read. Clean stop and a start with TIGHT: every read is the same but ExplainLineItem,
    UNAVAILABLE without the index; a journaled batch of 2 events resent is refused whole (the new limit governs
    what enters), a journaled hold of 60 s retried naming its TTL is INVALID_ARGUMENT (over the new 1 s maximum).
    kill -9 and a start with LOOSE: every read is the same, ExplainLineItem included (the index rebuilt from the
    journal), and every retry answers as it did before the first restart."""
    server = server_factory()
    with server.client() as client:
        before, retried = scenario_read(client)
    count = alert_count(before)
    explained = {name: read for name, read in before.items() if _EXPLAIN.match(name)}
    assert explained and not any(read.startswith(b"refused") for read in explained.values())
    restarted_with(server, "stop", TIGHT)
    with server.client() as client:
        tight = every_read(client, count)
        for name in explained:
            assert tight.pop(name).startswith(b"refused StatusCode.UNAVAILABLE"), name
        assert differences({n: r for n, r in before.items() if n not in explained}, tight) == []
        assert len(BATCH1) > 1
        again = usage_pb2.UsageBatch(batch_id="b1", events=BATCH1)
        code, details = refusal(functools.partial(client.usage.IngestUsageBatch, again))
        assert (code, "at most 1 events" in details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, True), details
        named = next(h for h in HOLDS if h.reservation_ttl.seconds > 1)
        code, details = refusal(functools.partial(client.balance.Authorize, named))
        assert (code, "reservation_ttl" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        assert differences(tight, {n: r for n, r in every_read(client, count).items() if n not in explained}) == []
    restarted_with(server, "kill9", LOOSE)
    with server.client() as client:
        assert differences(before, every_read(client, count)) == []
        assert differences(retried, retries(client)) == []


def small_catalogue(client: TariffClient) -> None:
    client.pricing.CreateProduct(
        pricing_pb2.CreateProductRequest(
            product=pricing_pb2.Product(
                id="fr-api", name="api", event_type="fr-call", aggregation=pricing_pb2.SUM, value_key="n"
            )
        )
    )
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="fr-card", name="fr", pricing_unit="USD"))
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="fr-card",
            upsert_rates=[pricing_pb2.Rate(product_id="fr-api", unit=pricing_pb2.UnitPrice(price="0.25"))],
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="fr-card", version=draft.version, effective_from=stamp(M2))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="fr-c", name="fr-c"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="fr-c-1", customer_id="fr-c", rate_card_id="fr-card", starting_at=stamp(M2)
        )
    )


def invoice_reads(client: TariffClient) -> list[bytes]:
    listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="fr-c", page_size=1000))
    reads = [listed.SerializeToString(deterministic=True)]
    for start in (M2, M1):
        request = invoices_pb2.PreviewInvoiceRequest(customer_id="fr-c", period_start=stamp(start))
        reads.append(client.invoices.PreviewInvoice(request).SerializeToString(deterministic=True))
    reads.append(client.get_balance("fr-c").SerializeToString(deterministic=True))
    return reads


def test_periods_closed_under_one_close_grace_stay_closed_under_any_other(server_factory: ServerFactory) -> None:
    """fr-c (0.25 USD a unit) from M2: 8 units in M2 (2.00), 4 in M1 (1.00). Under --close-grace 100000d nothing
    closes by itself. Restarted with --close-grace 0s, both ended periods close by themselves (the new value
    governs what happens from the start on): 2 final invoices, 2.00 and 1.00. kill -9 and a start with
    --close-grace off, then a clean stop and a start with 100000d again: both invoices stay as they were closed."""
    snapshots = ("--snapshot-every", "1", "--snapshot-journal-factor", "0")  # each start loads one
    server = server_factory(extra_args=["--close-grace", "100000d", *snapshots])
    with server.client() as client:
        small_catalogue(client)
        ingest(client, "fr-1", *[_event(f"fr-m2-{i}", M2 + HOUR_MS, 2) for i in range(4)])
        ingest(client, "fr-2", _event("fr-m1", M1 + HOUR_MS, 4))
        assert [str(p.total_due) for p in _previews(client)] == ["2.00", "1.00"]
        assert not client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="fr-c")).invoices
    restarted_with(server, "stop", ("--close-grace", "0s", *snapshots))
    with server.client() as client:
        assert wait_for(lambda: len(_listed(client)) == 2, 20), _listed(client)
        assert [str(i.total_due) for i in _listed(client)] == ["2.00", "1.00"]
        closed = invoice_reads(client)
    for how, args in (("kill9", ("--close-grace", "off")), ("stop", ("--close-grace", "100000d"))):
        restarted_with(server, how, args)
        with server.client() as client:
            assert invoice_reads(client) == closed, (how, args)


def explained(client: TariffClient) -> invoices_pb2.ExplainLineItemResponse:
    line_id = _previews(client)[1].lines[0].line_id
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id="fr-c", period_start=stamp(M1), line_id=line_id, page_size=1000
    )
    answer: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
    return answer


def test_usage_taken_without_the_explain_index_is_explained_once_it_is_back(server_factory: ServerFactory) -> None:
    """fr-c from M2 at 0.25 a unit, a snapshot after every record. With the index: e1 (4 units in M1), its line
    explained as 1 event, 1. Clean stop, a start with --no-explain-index: e2 (6 units in M1) taken, the line
    2.50 (10 units), ExplainLineItem UNAVAILABLE. kill -9 and a start with the index: the line explains both
    events, 1 + 1.5 = 2.5, as the invoice's line says; the invoice is the same as before. Started first with
    --map-size-mb 64 and that start with 1, the journal keeps its map: 5 batches of 2,000 events (about 1.5 MB)
    are taken."""
    snapshots = ("--snapshot-every", "1", "--snapshot-journal-factor", "0")
    server = server_factory(extra_args=["--close-grace", "off", "--map-size-mb", "64", *snapshots])
    with server.client() as client:
        small_catalogue(client)
        ingest(client, "fr-e1", _event("fr-e1", M1 + HOUR_MS, 4))
        first = explained(client)
        assert [(e.transaction_id, e.amount) for e in first.events] == [("fr-e1", "1")], first
    restarted_with(server, "stop", ("--close-grace", "off", "--no-explain-index", *snapshots))
    with server.client() as client:
        ingest(client, "fr-e2", _event("fr-e2", M1 + 2 * HOUR_MS, 6))
        code, _ = refusal(functools.partial(explained, client))
        assert code == grpc.StatusCode.UNAVAILABLE
        line = _previews(client)[1].lines[0]
        assert (line.quantity, line.amount) == ("10", "2.5"), line
        invoice = invoice_reads(client)
    restarted_with(server, "kill9", ("--close-grace", "off", "--map-size-mb", "1", *snapshots))
    with server.client() as client:
        again = explained(client)
        events = [(e.transaction_id, e.amount) for e in again.events]
        assert (events, again.line_amount) == ([("fr-e1", "1"), ("fr-e2", "1.5")], "2.5"), again
        assert invoice_reads(client) == invoice
        # The journal keeps its 64 MiB map: more than 1 MiB more of usage is taken (10,000 events, about 1.5 MB).
        for b in range(5):
            events_b = [_event(f"fr-map-{b}-{i}-{'x' * 100}", M1 + HOUR_MS, 1) for i in range(2000)]
            assert ingest(client, f"fr-map-{b}", *events_b).accepted == 2000
        line = _previews(client)[1].lines[0]
        assert (line.quantity, line.amount) == ("10010", "2502.5"), line
        made = invoice_reads(client)
    for how, args in (
        ("kill9", ("--no-explain-index",)),
        ("kill9", ()),
        ("stop", ("--no-explain-index",)),
        ("stop", ()),
    ):
        restarted_with(server, how, ("--close-grace", "off", *args, *snapshots))
        with server.client() as client:
            assert invoice_reads(client) == made, (how, args)
            if not args:
                assert explained(client).line_quantity == "10010", (how, args)


def _event(txn: str, at_ms: int, n: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=txn, customer_id="fr-c", event_type="fr-call", timestamp_ms=at_ms, values={"n": n}
    )


def _previews(client: TariffClient) -> list[invoices_pb2.Invoice]:
    return [
        client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="fr-c", period_start=stamp(s)))
        for s in (M2, M1)
    ]


def _listed(client: TariffClient) -> list[invoices_pb2.Invoice]:
    answer = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="fr-c", page_size=1000))
    return list(answer.invoices)


def test_a_ttl_beyond_a_fractional_ttl_maximum_is_refused(server_factory: ServerFactory) -> None:
    """README: a `reservation_ttl` beyond `--reservation-ttl-max-s` is INVALID_ARGUMENT. Started with 1.0015 s, a
    hold naming 1.002 s (beyond it by half a millisecond) is refused naming `reservation_ttl`; 1.001 s is taken."""
    server = server_factory(extra_args=["--close-grace", "off", "--reservation-ttl-max-s", "1.0015"])
    with server.client() as client:
        small_catalogue(client)

        def hold(reservation_id: str, ttl_ms: int) -> object:
            request = balance_pb2.AuthorizeRequest(
                request_id=reservation_id,
                customer_id="fr-c",
                event_type="fr-call",
                values={"n": 1},
                reserve=True,
                reservation_id=reservation_id,
                reservation_ttl=Duration(seconds=ttl_ms // 1000, nanos=ttl_ms % 1000 * 1_000_000),
            )
            return client.balance.Authorize(request)

        code, details = refusal(functools.partial(hold, "fr-over", 1002))
        assert (code, "reservation_ttl" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        assert "1.001 s" in details, details
        hold("fr-within", 1001)
