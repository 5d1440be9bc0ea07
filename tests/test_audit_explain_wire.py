"""An acceptance audit of InvoiceService.ExplainLineItem as a finance user reads it (invoices.proto's comments on
ExplainLineItemRequest / ExplainedEvent / ExplainLineItemResponse, README "Why was I charged this?", the `tariff
invoices explain` CLI, docs/architecture.md "The explain index"), over the wire against real server processes.
Every amount asserted is computed by hand from the documents (the price models in pricing.proto, PriceOverride in
contracts.proto, the draw rule of docs/architecture.md §5 step 7), never read back from the server.

Everything happens in periods long over (2026-01), with `--close-grace off` so nothing closes by itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_invoices_wire import JAN, ms, ts
from tests.test_cli import table_rows, tariff
from tests.test_server_auth import Keys

S = grpc.StatusCode
CARD = "explain-card"
Row = tuple[str, str, str, str, str]  # quantity, amount, unit_price, overage, draws ("grant:credits,...")


TIERS = [
    pricing_pb2.Tier(up_to="100", unit_price="1", flat_price="10"),
    pricing_pb2.Tier(up_to="200", unit_price="0.5", flat_price="5"),
    pricing_pb2.Tier(up_to="", unit_price="0.1", flat_price="2"),
]


def product(
    client: TariffClient,
    product_id: str,
    aggregation: pricing_pb2.Aggregation = pricing_pb2.SUM,
    value_key: str = "n",
    dimensions: Sequence[str] = ("k",),
    event_type: str = "",
) -> None:
    found = pricing_pb2.Product(
        id=product_id,
        event_type=event_type or product_id,
        aggregation=aggregation,
        value_key=value_key,
        pricing_dimensions=list(dimensions),
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=found))


def unit(product_id: str, price: str, per_units: str = "") -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units))


def card(client: TariffClient, rates: list[pricing_pb2.Rate]) -> None:
    """The card (credits), version 1 of `rates` in force from 2025."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-01-01T00:00:00")))
    )


def customer(client: TariffClient, customer_id: str, start_ms: int = JAN, end_ms: int | None = None) -> str:
    if customer_id not in {
        c.id for c in client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest()).customers
    }:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-{start_ms}",
        customer_id=customer_id,
        rate_card_id=CARD,
        starting_at=ts(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(ts(end_ms))
    return str(client.contracts.CreateContract(request).id)


def event(
    tx: str, who: str, event_type: str, at: str, n: float | None = None, **dimensions: str
) -> usage_pb2.UsageEvent:
    found = usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=who, event_type=event_type, timestamp_ms=ms(at), dimensions=dimensions
    )
    if n is not None:
        found.values["n"] = n
    return found


def ingest(client: TariffClient, batch_id: str, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=events))
    return ack


def explain(
    client: TariffClient, who: str, line: str, page_size: int = 0, token: str = "", period_ms: int = JAN
) -> invoices_pb2.ExplainLineItemResponse:
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=who, period_start=ts(period_ms), line_id=line, page_size=page_size, page_token=token
    )
    found: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
    return found


def every_page(
    client: TariffClient, who: str, line: str, page_size: int, period_ms: int = JAN
) -> tuple[list[invoices_pb2.ExplainedEvent], invoices_pb2.ExplainLineItemResponse]:
    """Every entry of the line, page by page (each page full but the last), and the last page."""
    entries: list[invoices_pb2.ExplainedEvent] = []
    token = ""
    while True:
        page = explain(client, who, line, page_size, token, period_ms)
        entries.extend(page.events)
        token = page.next_page_token
        if not token:
            return entries, page
        assert len(page.events) == page_size, page


def rows(entries: Sequence[invoices_pb2.ExplainedEvent]) -> list[Row]:
    return [
        (e.quantity, e.amount, e.unit_price, e.overage, ",".join(f"{d.grant_id}:{d.credits}" for d in e.draws))
        for e in entries
    ]


def check_sums(entries: Sequence[invoices_pb2.ExplainedEvent], last: invoices_pb2.ExplainLineItemResponse) -> None:
    """The documented invariants: amounts sum to line_amount, quantities to line_quantity, and amount = draws +
    overage on every event (adjustments carry neither)."""
    assert sum(Decimal(e.amount) for e in entries) == Decimal(last.line_amount)
    assert sum(Decimal(e.quantity) for e in entries) == Decimal(last.line_quantity)
    for e in entries:
        if not e.HasField("adjustment"):
            assert sum(Decimal(d.credits) for d in e.draws) + Decimal(e.overage) == Decimal(e.amount), e


def expect_error(code: grpc.StatusCode, call: Callable[[], object], field: str | None = None) -> str:
    try:
        call()
    except TariffError as exc:
        assert exc.code == code, f"expected {code.name}, got {exc}"
        if field is not None:
            assert [v.field for v in exc.field_violations] == [field], exc
        return str(exc.details)
    raise AssertionError(f"expected {code.name}, the call succeeded")


def models_catalogue(client: TariffClient) -> None:
    for name in ("unit", "grad", "vol", "pack", "flat"):
        product(client, name)
    product(client, "mirror", dimensions=(), event_type="unit")  # a second product fed by `unit` events
    product(client, "cnt", pricing_pb2.COUNT, value_key="")
    product(client, "mx", pricing_pb2.MAX)
    product(client, "lat", pricing_pb2.LATEST)
    product(client, "uq", pricing_pb2.UNIQUE_COUNT, value_key="u", dimensions=())
    product(client, "tiny", dimensions=())
    card(
        client,
        [
            unit("unit", "1", per_units="1000"),
            unit("mirror", "0.002"),
            pricing_pb2.Rate(
                product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=TIERS)
            ),
            pricing_pb2.Rate(product_id="vol", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=TIERS)),
            pricing_pb2.Rate(product_id="pack", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
            pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
            *(unit(name, "2") for name in ("cnt", "mx", "lat", "uq")),
            unit("tiny", "0.0000000000025"),
        ],
    )


def test_every_price_model_and_aggregation_explains_event_by_event(server_factory: ServerFactory) -> None:
    """Per event, by hand: UNIT 1 per 1000; GRADUATED (<=100: 1 + flat 10, <=200: 0.5 + flat 5, then 0.1 + flat 2)
    50 -> 60, 150 -> 140 (+80), 250 -> 172 (+32); VOLUME (the tier reached prices all, its flat fee once) 90 ->
    100, 110 -> 5 + 55 = 60 (-40), 210 -> 2 + 21 = 23 (-37); PACKAGE of 10 at 3, rounded up: 4, 8, 12, 21 -> 3, 3,
    6, 9; FLAT 7 once the quantity is above 0. COUNT, MAX, LATEST, UNIQUE_COUNT at 2 a unit, quantity the change
    each event made. One `unit` event feeds `unit;k=a` and `mirror` (0.002 a unit); a duplicate, a conflicting
    retry and an invalid event are on no line."""
    server = server_factory()
    with server.client() as client:
        models_catalogue(client)
        customer(client, "m")
        first = [
            event("u1", "m", "unit", "2026-01-02T10:00:00", 1500, k="a"),
            event("u2", "m", "unit", "2026-01-02T11:00:00", 500, k="a"),
            *(event(f"g{i}", "m", "grad", "2026-01-03T10:00:00", n, k="a") for i, n in enumerate((50, 100, 100))),
            *(event(f"v{i}", "m", "vol", "2026-01-04T10:00:00", n, k="a") for i, n in enumerate((90, 20, 100))),
            *(event(f"p{i}", "m", "pack", "2026-01-05T10:00:00", n, k="a") for i, n in enumerate((4, 4, 4, 9))),
            *(event(f"f{i}", "m", "flat", "2026-01-06T10:00:00", n, k="a") for i, n in enumerate((0, 2, 3))),
            *(event(f"c{i}", "m", "cnt", "2026-01-07T10:00:00", k="a") for i in range(3)),
            *(event(f"x{i}", "m", "mx", "2026-01-08T10:00:00", n, k="a") for i, n in enumerate((5, 3, 8))),
            event("l0", "m", "lat", "2026-01-09T10:00:00", 5, k="a"),
            event("l1", "m", "lat", "2026-01-09T11:00:00", 3, k="a"),
            event("l2", "m", "lat", "2026-01-09T09:00:00", 10, k="a"),  # earlier than l1: not the latest
            event("l3", "m", "lat", "2026-01-09T12:00:00", 4, k="a"),
            *(event(f"q{i}", "m", "uq", "2026-01-10T10:00:00", u=u) for i, u in enumerate("abac")),
            event("t0", "m", "tiny", "2026-01-11T10:00:00", 2),
        ]
        assert ingest(client, "models-1", *first).accepted == len(first)
        again = ingest(
            client,
            "models-2",
            first[0],  # the same event again: a duplicate
            event("u2", "m", "unit", "2026-01-02T11:00:00", 999, k="a"),  # its id with another content
            event("u3", "m", "unit", "2026-01-02T12:00:00", k="a"),  # no value n: INVALID_EVENT
            event("u4", "m", "unit", "2026-01-02T12:00:00", 2, k="a"),
        )
        assert (again.accepted, again.duplicates, len(again.rejected)) == (1, 1, 2), again
        expected: dict[str, list[Row]] = {
            "unit;k=a": [("1500", "1.5", "0.001", "1.5", ""), ("500", "0.5", "0.001", "0.5", ""),
                         ("2", "0.002", "0.001", "0.002", "")],
            "mirror": [("1500", "3", "0.002", "3", ""), ("500", "1", "0.002", "1", ""),
                       ("2", "0.004", "0.002", "0.004", "")],
            "grad;k=a": [("50", "60", "1.2", "60", ""), ("100", "80", "0.8", "80", ""),
                         ("100", "32", "0.32", "32", "")],
            "vol;k=a": [("90", "100", "1.111111111111", "100", ""), ("20", "-40", "-2", "-40", ""),
                        ("100", "-37", "-0.37", "-37", "")],
            "pack;k=a": [("4", "3", "0.75", "3", ""), ("4", "0", "0", "0", ""), ("4", "3", "0.75", "3", ""),
                         ("9", "3", "0.333333333333", "3", "")],
            "flat;k=a": [("0", "0", "", "0", ""), ("2", "7", "3.5", "7", ""), ("3", "0", "0", "0", "")],
            "cnt;k=a": [("1", "2", "2", "2", "")] * 3,
            "mx;k=a": [("5", "10", "2", "10", ""), ("0", "0", "", "0", ""), ("3", "6", "2", "6", "")],
            "lat;k=a": [("5", "10", "2", "10", ""), ("-2", "-4", "2", "-4", ""), ("0", "0", "", "0", ""),
                        ("1", "2", "2", "2", "")],
            "uq": [("1", "2", "2", "2", ""), ("1", "2", "2", "2", ""), ("0", "0", "", "0", ""),
                   ("1", "2", "2", "2", "")],
            # 2 x 0.0000000000025 = 0.000000000005; / 2 = 0.0000000000025, half-even at 12 places: ...02 (not 03)
            "tiny": [("2", "0.000000000005", "0.000000000002", "0.000000000005", "")],
        }  # fmt: skip
        totals = {
            "unit;k=a": ("2.002", "2002"), "mirror": ("4.004", "2002"), "grad;k=a": ("172", "250"),
            "vol;k=a": ("23", "210"), "pack;k=a": ("9", "21"), "flat;k=a": ("7", "5"), "cnt;k=a": ("6", "3"),
            "mx;k=a": ("16", "8"), "lat;k=a": ("8", "4"), "uq": ("6", "3"), "tiny": ("0.000000000005", "2"),
        }  # fmt: skip
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="m", period_start=ts(JAN))
        )
        assert {line.line_id: (line.amount, line.quantity) for line in invoice.lines} == totals
        for line, want in expected.items():
            entries, last = every_page(client, "m", line, 2)
            assert rows(entries) == want, line
            assert (last.line_amount, last.line_quantity) == totals[line], line
            assert all(e.version == 1 and not e.HasField("adjustment") for e in entries), line
            check_sums(entries, last)
        unit_ids = [e.transaction_id for e in every_page(client, "m", "unit;k=a", 1000)[0]]
        assert unit_ids == ["u1", "u2", "u4"]  # journal order; the duplicate and the rejected events absent
        assert [e.transaction_id for e in every_page(client, "m", "mirror", 1000)[0]] == unit_ids
        stamps = [e.timestamp_ms for e in every_page(client, "m", "lat;k=a", 1000)[0]]
        assert stamps == [ms(f"2026-01-09T{h}:00:00") for h in ("10", "11", "09", "12")]


def test_draws_per_grant_give_back_on_a_cheaper_volume_tier_then_overage(server_factory: ServerFactory) -> None:
    """docs/architecture.md §5 step 7: a positive charge draws on the grants, the rest is overage; a negative charge
    gives back the aggregate's own overage first, then credits to the grants it drew from. A 100-credit grant: the
    VOLUME line's 100 is all drawn, -40 and -37 go back to the grant (23 drawn, 77 left); a PACKAGE event of 260
    (26 packages of 3: 78) then draws the 77 left and 1 is overage."""
    server = server_factory()
    with server.client() as client:
        models_catalogue(client)
        contract_id = customer(client, "g")
        grant = contracts_pb2.Grant(
            id="g-100", customer_id="g", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="100",
            paid_amount="100", starts_at=ts(JAN),
        )  # fmt: skip
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        vol = [event(f"gv{i}", "g", "vol", "2026-01-04T10:00:00", n, k="a") for i, n in enumerate((90, 20, 100))]
        assert ingest(client, "draws-1", *vol).accepted == 3
        assert ingest(client, "draws-2", event("gp", "g", "pack", "2026-01-05T10:00:00", 260, k="a")).accepted
        entries, last = every_page(client, "g", "vol;k=a", 0)
        assert rows(entries) == [
            ("90", "100", "1.111111111111", "0", "g-100:100"),
            ("20", "-40", "-2", "0", "g-100:-40"),
            ("100", "-37", "-0.37", "0", "g-100:-37"),
        ]
        check_sums(entries, last)
        entries, last = every_page(client, "g", "pack;k=a", 0)
        assert rows(entries) == [("260", "78", "0.3", "1", "g-100:77")]
        check_sums(entries, last)


def use(tx: str, at: str, n: float, who: str = "v") -> usage_pb2.UsageEvent:
    return event(tx, who, "use", at, n)


def publish_price(client: TariffClient, base: int, price: str, from_ms: int) -> int:
    version = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=base, upsert_rates=[unit("use", price)]
        )
    ).version
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=ts(from_ms))
    )
    return int(version)


def adjustment_fields(entry: invoices_pb2.ExplainedEvent) -> tuple[object, ...]:
    a = entry.adjustment
    return (a.hour.ToMilliseconds(), a.rate_card_id, list(a.old_versions), a.new_version, a.quantity, a.events,
            a.old_amount, a.new_amount, a.delta)  # fmt: skip


def entry_fields(entry: invoices_pb2.ExplainedEvent) -> tuple[object, ...]:
    return (entry.transaction_id, entry.timestamp_ms, entry.quantity, entry.version, entry.unit_price, entry.amount,
            len(entry.draws), entry.overage)  # fmt: skip


def test_versions_retroactive_publish_rollback_and_override_explain_as_documented(
    server_factory: ServerFactory,
) -> None:
    """`use` (SUM of n, no dimension) at 1 (v1, from 2025), 2 (v2, from Jan 10). e1 Jan 5 n=3: 3 at v1; e2, e3 in
    hour Jan 15 10:00, n=4 and 1: 8 and 2 at v2. A retroactive v3 at 3 from that hour re-rates its bucket (5
    units, 2 events) 10 -> 15 (+5); a rollback to v1 from the same hour (v4, at 1) 15 -> 5 (-10). An override
    x0.5 then prices e4 Jan 20 n=6 (v4) at 3. Events keep their amounts; adjustments follow them, with the fields
    invoices.proto lists; all sum to the line: 3 + 5 + 3 = 11."""
    server = server_factory()
    hour = ms("2026-01-15T10:00:00")
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        contract_id = customer(client, "v")
        assert publish_price(client, 1, "2", ms("2026-01-10T00:00:00")) == 2  # no usage yet: nothing re-rated
        ingest(client, "v-1", use("e1", "2026-01-05T10:00:00", 3), use("e2", "2026-01-15T10:00:00", 4))
        ingest(client, "v-2", use("e3", "2026-01-15T10:30:00", 1))
        entries, last = every_page(client, "v", "use", 0)
        assert [(e.transaction_id, e.version, e.amount, e.unit_price) for e in entries] == [
            ("e1", 1, "3", "1"), ("e2", 2, "8", "2"), ("e3", 2, "2", "2")
        ]  # fmt: skip
        assert publish_price(client, 2, "3", hour) == 3
        rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(hour))
        assert client.pricing.RollbackRateCard(rollback).version.version == 4
        override = contracts_pb2.PriceOverride(id="half", product_id="use", multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override))
        ingest(client, "v-3", use("e4", "2026-01-20T10:00:00", 6))

        entries, last = every_page(client, "v", "use", 2)
        assert (last.line_amount, last.line_quantity) == ("11", "14")
        check_sums(entries, last)
        assert [entry_fields(e) for e in entries] == [
            ("e1", ms("2026-01-05T10:00:00"), "3", 1, "1", "3", 0, "3"),
            ("e2", hour, "4", 2, "2", "8", 0, "8"),
            ("e3", hour + 1_800_000, "1", 2, "2", "2", 0, "2"),
            ("e4", ms("2026-01-20T10:00:00"), "6", 4, "0.5", "3", 0, "3"),
            ("", hour, "0", 3, "", "5", 0, ""),
            ("", hour, "0", 4, "", "-10", 0, ""),
        ]
        assert [adjustment_fields(e) for e in entries[4:]] == [
            (hour, CARD, [2], 3, "5", 2, "10", "15", "5"),
            (hour, CARD, [3], 4, "5", 2, "15", "5", "-10"),
        ]
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="v", period_start=ts(JAN))
        )
        [line] = invoice.lines
        assert [e.adjustment for e in entries[4:]] == list(line.adjustments)  # as the invoice line shows them
        seqs = [a.journal_seq for a in line.adjustments]
        assert 0 < seqs[0] < seqs[1]
        assert [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices] == [
            (1, "3", "3", "1"), (4, "11", "8", "0.727272727273")
        ]  # fmt: skip  # hour 10:00 re-rated to v4 (5 at 1), Jan 20 v4 (3): 8 / 11 = 0.72727272727272...

        cli = tariff(server, "invoices", "explain", "v", "use", "--period", "2026-01")
        table = table_rows(cli.stdout)
        assert [r[0] for r in table if r[0] in {"e1", "e2", "e3", "e4"}] == ["e1", "e2", "e3", "e4"]
        labels = [r[0] for r in table if r[0].startswith("re-rated")]
        assert labels == [f"re-rated #{seqs[0]} v2->v3", f"re-rated #{seqs[1]} v3->v4"], cli.stdout
        assert ["line amount (credits)", "11"] in table and ["line quantity", "14"] in table, cli.stdout
        assert ["events", "4"] in table and ["re-rating adjustments", "2"] in table, cli.stdout
        as_json = json.loads(tariff(server, "invoices", "explain", "v", "use", "--period", "2026-01", "--json").stdout)
        assert (as_json["line_amount"], as_json["line_quantity"], len(as_json["events"])) == ("11", "14", 6)
        assert sum(Decimal(e["amount"]) for e in as_json["events"]) == Decimal("11")
        one_page = tariff(server, "invoices", "explain", "v", "use", "--period", "2026-01", "--page-size", "4")
        token = dict((r[0], r[-1]) for r in table_rows(one_page.stdout) if len(r) == 2)["next page token"]
        assert ["events", "4"] in table_rows(one_page.stdout) and ["re-rating adjustments", "0"] in table_rows(
            one_page.stdout
        )
        rest = tariff(server, "invoices", "explain", "v", "use", "--period", "2026-01", "--page-token", token)
        assert ["events", "0"] in table_rows(rest.stdout) and ["re-rating adjustments", "2"] in table_rows(rest.stdout)


def test_tokens_between_pages_and_past_the_events(server_factory: ServerFactory) -> None:
    """A token issued between events: an event rated since shows on a later page and the pages sum to the new
    line_amount. A token issued past the last event names the next adjustment: the pages after it hold the
    adjustments only (documented), and paging again from the first page sums to line_amount."""
    server = server_factory()
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        customer(client, "v")
        ingest(client, "t-1", *(use(f"t{i}", f"2026-01-05T1{i}:00:00", 1) for i in range(4)))
        mid = explain(client, "v", "use", 2)
        publish_price(client, 1, "2", ms("2026-01-05T13:00:00"))  # re-rates t3's hour: 1 -> 2
        past = explain(client, "v", "use", 4)
        assert [e.transaction_id for e in past.events] == ["t0", "t1", "t2", "t3"] and past.next_page_token
        ingest(client, "t-2", use("t4", "2026-01-06T10:00:00", 1))  # at v2: 2
        rest = explain(client, "v", "use", 10, mid.next_page_token)
        assert [(e.transaction_id, e.amount) for e in rest.events] == [("t2", "1"), ("t3", "1"), ("t4", "2"), ("", "1")]
        assert (rest.line_amount, rest.next_page_token) == ("7", "")  # 1 + 1 + 1 + 2 (t3 re-rated) + 2
        assert sum(Decimal(e.amount) for e in [*mid.events, *rest.events]) == Decimal("7")
        after = explain(client, "v", "use", 10, past.next_page_token)
        assert [(e.transaction_id, e.amount, e.HasField("adjustment")) for e in after.events] == [("", "1", True)]
        entries, last = every_page(client, "v", "use", 3)
        assert len(entries) == 6 and last.line_amount == "7"
        check_sums(entries, last)
    server.kill9()  # tokens stay valid across restarts
    server.start()
    with server.client() as client:
        assert explain(client, "v", "use", 10, mid.next_page_token) == rest


def test_paging_refusals_contract_switch_and_restricted_keys(server_factory: ServerFactory, tmp_path: object) -> None:
    """page_size 0 is 100, at most 1000 (1001: INVALID_ARGUMENT naming page_size); the last page's token is empty;
    a token altered, of another line, customer or period is INVALID_ARGUMENT naming page_token; unknown customer
    NOT_FOUND, unknown line NOT_FOUND naming it, a period_start that is no period start INVALID_ARGUMENT naming
    period_start. After a contract switch on Jan 20 12:00 the old contract's period (Jan 1) and the new one's (Jan
    20 12:00) each explain their own events. A key restricted to `s` is refused `w` (and an unknown customer)."""
    from pathlib import Path

    keys = Keys(Path(str(tmp_path)) / "keys.json", {"admin": ("admin", None), "s-portal": ("read", ["s"])})
    server = server_factory(extra_args=keys.args, api_key=keys.key["admin"])
    switch = ms("2026-01-20T12:00:00")
    with server.client() as client:
        product(client, "use", dimensions=())
        product(client, "other", dimensions=())
        card(client, [unit("use", "0.5"), unit("other", "1")])
        customer(client, "s", JAN, switch)
        customer(client, "s", switch)
        customer(client, "w")
        before = [use(f"s{i:03d}", "2026-01-10T10:00:00", 1, who="s") for i in range(150)]
        assert ingest(client, "s-1", *before).accepted == 150
        assert ingest(client, "s-2", use("late", "2026-01-25T10:00:00", 5, who="s")).accepted == 1
        assert ingest(client, "w-1", use("w1", "2026-01-25T10:00:00", 1, who="w"), use("w2", "2026-01-26", 1, who="w"))
        assert ingest(client, "s-3", event("o1", "s", "other", "2026-02-25T10:00:00", 1)).accepted == 1

        default = explain(client, "s", "use")
        assert len(default.events) == 100 and default.next_page_token
        assert (default.line_amount, default.line_quantity) == ("75", "150")  # the old contract's period only
        whole = explain(client, "s", "use", 1000)
        assert len(whole.events) == 150 and whole.next_page_token == ""
        assert [e.transaction_id for e in whole.events] == [e.transaction_id for e in before]
        assert sum(Decimal(e.amount) for e in whole.events) == Decimal("75")
        new_period = explain(client, "s", "use", period_ms=switch)
        assert [(e.transaction_id, e.amount) for e in new_period.events] == [("late", "2.5")]
        assert (new_period.line_amount, new_period.next_page_token) == ("2.5", "")

        token = explain(client, "s", "use", 1).next_page_token
        w_token = explain(client, "w", "use", 1).next_page_token
        assert token and w_token
        page_token = "page_token"
        for bad_call in (
            lambda: explain(client, "s", "use", 1, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")),
            lambda: explain(client, "s", "use", 1, "not-a-token"),
            lambda: explain(client, "s", "use", 1, w_token),  # another customer's
            lambda: explain(client, "s", "use", 1, token, period_ms=switch),  # another period's
        ):
            expect_error(S.INVALID_ARGUMENT, bad_call, page_token)
        expect_error(S.INVALID_ARGUMENT, lambda: explain(client, "s", "use", 1001), "page_size")
        expect_error(S.INVALID_ARGUMENT, lambda: explain(client, "s", "use", period_ms=JAN + 1), "period_start")
        expect_error(S.INVALID_ARGUMENT, lambda: explain(client, "s", "use", period_ms=ms("2026-02-01T00:00:00")))
        # "the exact start": a nanosecond past it is not (the server dropped the sub-millisecond part and answered)
        past_start = invoices_pb2.ExplainLineItemRequest(
            customer_id="s", line_id="use", period_start=Timestamp(seconds=JAN // 1000, nanos=1)
        )
        expect_error(S.INVALID_ARGUMENT, lambda: client.invoices.ExplainLineItem(past_start), "period_start")
        missing = invoices_pb2.ExplainLineItemRequest(customer_id="s", line_id="use")
        expect_error(S.INVALID_ARGUMENT, lambda: client.invoices.ExplainLineItem(missing), "period_start")
        expect_error(S.NOT_FOUND, lambda: explain(client, "ghost", "use"))
        assert "'use;k=z'" in expect_error(S.NOT_FOUND, lambda: explain(client, "s", "use;k=z"))
        # `other` has usage in s's second period of the new contract, not in the first: no line there.
        expect_error(S.NOT_FOUND, lambda: explain(client, "s", "other", period_ms=switch))
    with server.client(api_key=keys.key["s-portal"]) as portal:
        assert len(explain(portal, "s", "use", 1000).events) == 150
        for who in ("w", "ghost"):
            details = expect_error(S.PERMISSION_DENIED, lambda who=who: explain(portal, who, "use"))  # type: ignore[misc]
            assert "w2" not in details
    cli_env = {"TARIFF_API_KEY": keys.key["s-portal"]}
    by_start = tariff(server, "invoices", "explain", "s", "use", "--period-start", "2026-01-20T12:00:00Z", env=cli_env)
    line_amount = ["line amount (credits)", "2.5"]
    assert line_amount in table_rows(by_start.stdout) and "late" in by_start.stdout, by_start.stdout
    by_month = tariff(server, "invoices", "explain", "s", "use", "--period", "2026-01", env=cli_env)  # the earlier
    month_rows = table_rows(by_month.stdout)
    assert ["line amount (credits)", "75"] in month_rows and ["events", "150"] in month_rows


def test_a_rerating_of_an_hour_holding_a_period_boundary_off_the_hour_is_refused(server_factory: ServerFactory) -> None:
    """A contract starting off the hour (Jan 1 10:30): its periods run 10:30 to 10:30, so the hour 10:00-11:00 on
    Feb 1 holds usage of both periods (b1 at 10:15 in January's, b2 at 10:45 in February's) and the first hour
    (Jan 1 10:00) usage of January's only from 10:30. An hour bucket does not know which period each unit is of, so
    pricing it again cannot be exact (January's line read 28 instead of 14, February's 0 instead of 16): pricing.proto
    refuses such a publish (or rollback) FAILED_PRECONDITION, naming the customer, the product and the hour, and it
    changes nothing. SimulateVersion over such an hour is refused likewise. A version effective after the boundary
    hours publishes as usual. (Version 2, the same price, is in force from Jan 1 before the usage, so that a rollback
    to version 1 changes the version in force, re-rating those hours, rather than being refused as already in force.)"""
    server = server_factory()
    start = ms("2026-01-01T10:30:00")
    february = ms("2026-02-01T10:30:00")
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        publish_price(client, 1, "1", JAN)
        customer(client, "o", start)
        events = [
            use("a1", "2026-01-01T10:45:00", 1, who="o"),
            use("a2", "2026-01-15T10:00:00", 2, who="o"),
            use("b1", "2026-02-01T10:15:00", 4, who="o"),
            use("b2", "2026-02-01T10:45:00", 8, who="o"),
        ]
        assert ingest(client, "o-1", *events).accepted == 4
        lines = {p: every_page(client, "o", "use", 0, p) for p in (start, february)}
        assert [(lines[p][1].line_amount, lines[p][1].line_quantity) for p in lines] == [("7", "7"), ("8", "8")]
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("use", "2")]
            )
        ).version
        # From Jan 20 the first hour is not re-rated itself, but January's walk over the cumulative quantity is
        # missing its part (a1): refused as well, naming the earliest such hour.
        named = 'customer "o": product "use": the hour from 2026-01-01T10:00:00Z holds a period boundary off the hour'
        for from_ms in (ms("2026-01-01T10:00:00"), ms("2026-01-20T00:00:00"), ms("2026-02-01T10:00:00")):
            request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=draft, effective_from=ts(from_ms))
            details = expect_error(S.FAILED_PRECONDITION, partial(client.pricing.PublishVersion, request))
            assert named + " (2026-01-01T10:30:00Z)" in details, details
            rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(from_ms))
            details = expect_error(S.FAILED_PRECONDITION, partial(client.pricing.RollbackRateCard, rollback))
            assert named in details, details
        simulated = pricing_pb2.SimulateVersionRequest(
            rate_card_id=CARD, version=draft, period_start=ts(start), period_end=ts(february)
        )
        details = expect_error(S.FAILED_PRECONDITION, lambda: client.pricing.SimulateVersion(simulated))
        assert 'customer "o": product "use": the hour from 2026-01-01T10:00:00Z' in details, details
        assert [v.state for v in client.pricing.ListVersions(
            pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions] == [pricing_pb2.PUBLISHED, pricing_pb2.PUBLISHED, pricing_pb2.DRAFT]  # fmt: skip
        for period_ms, (entries, last) in lines.items():
            assert every_page(client, "o", "use", 0, period_ms) == (entries, last), "the refusals changed nothing"
        publish_price(client, 1, "3", ms("2026-02-01T11:00:00"))  # after every boundary hour: nothing to re-rate
        assert every_page(client, "o", "use", 0, february)[1].line_amount == "8"


def switched_and_rerated(client: TariffClient) -> int:
    """Customer `s` switches contracts on Jan 20 12:00 (same card): a (Jan 10, 2 units) is the old contract's last
    period's (Jan 1 - Feb 1), b (Jan 25, 3 units) the new one's first (Jan 20 12:00 - Feb 20 12:00). v2 at 2 from
    Jan 5 re-rates both hours: a's 2 -> 4 (+2), b's 3 -> 6 (+3). Returns the switch."""
    switch = ms("2026-01-20T12:00:00")
    product(client, "use", dimensions=())
    card(client, [unit("use", "1")])
    customer(client, "s", JAN, switch)
    customer(client, "s", switch)
    assert ingest(
        client, "s", use("a", "2026-01-10T10:00:00", 2, "s"), use("b", "2026-01-25T10:00:00", 3, "s")
    ).accepted
    publish_price(client, 1, "2", ms("2026-01-05T00:00:00"))
    return switch


def test_after_a_switch_the_old_contracts_last_period_lists_only_its_own_adjustments(
    server_factory: ServerFactory,
) -> None:
    """The old contract's last period keeps its monthly end (Feb 1) but its contract ends on Jan 20 12:00: the
    new contract's hour (Jan 25) is not its bucket. Its line (a: 4) showed that adjustment too (twice), so its
    pages summed to 10, not 4, and its invoice listed three adjustments for one re-rated bucket. Draft, explain
    and the final invoice list a's adjustment only."""
    server = server_factory()
    a_hour = ms("2026-01-10T10:00:00")
    with server.client() as client:
        switched_and_rerated(client)
        entries, last = every_page(client, "s", "use", 0)
        assert last.line_amount == "4"
        assert [(e.transaction_id, e.amount) for e in entries] == [("a", "2"), ("", "2")]
        assert adjustment_fields(entries[1]) == (a_hour, CARD, [1], 2, "2", 1, "2", "4", "2")
        draft = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="s", period_start=ts(JAN))
        )
        assert [a.hour.ToMilliseconds() for a in draft.lines[0].adjustments] == [a_hour]
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="s", period_start=ts(JAN)))
        assert list(final.lines[0].adjustments) == list(draft.lines[0].adjustments)
        assert [e.amount for e in every_page(client, "s", "use", 0)[0]] == ["2", "2"]  # closed: the final's


def test_after_a_switch_the_new_contracts_first_period_lists_each_adjustment_once(
    server_factory: ServerFactory,
) -> None:
    """After a switch on the hour, the old contract's last period keeps its monthly end (Feb 1), but its run of
    hour buckets ends at its contract's end: the re-rating prices the new contract's bucket (Jan 25) once, in the
    new period, so that line (b: 3 units, 6) lists one +3 adjustment (its pages summed to 9, listing it twice)."""
    server = server_factory()
    with server.client() as client:
        switch = switched_and_rerated(client)
        entries, last = every_page(client, "s", "use", 0, switch)
        assert [(e.transaction_id, e.amount) for e in entries] == [("b", "3"), ("", "3")]
        assert last.line_amount == "6"


def test_after_a_switch_the_old_contracts_last_period_prices_only_its_own_hours(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        switched_with_usage(client)
        draft = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="s", period_start=ts(JAN))
        )
        [line] = draft.lines
        assert (line.quantity, line.amount) == ("2", "2")
        assert [(p.version, p.quantity, p.amount) for p in line.prices] == [(1, "2", "2")]


def switched_with_usage(client: TariffClient) -> None:
    """Contract 1 from Jan 1 to Jan 20 12:00 (its last period keeps its monthly end, Feb 1), contract 2 from then:
    2 units on Jan 10 (contract 1's), 3 on Jan 25 (contract 2's), at 1 a unit."""
    product(client, "use", dimensions=())
    card(client, [unit("use", "1")])
    switch = ms("2026-01-20T12:00:00")
    customer(client, "s", JAN, switch)
    customer(client, "s", switch)
    assert ingest(
        client, "s", use("a", "2026-01-10T10:00:00", 2, "s"), use("b", "2026-01-25T10:00:00", 3, "s")
    ).accepted


def line_prices(invoice: invoices_pb2.Invoice) -> list[tuple[int, str, str, str]]:
    [line] = invoice.lines
    return [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices]


def test_after_a_switch_the_old_contracts_closed_invoice_prices_only_its_own_hours(
    server_factory: ServerFactory,
) -> None:
    """The final invoice of the old contract's last period is its draft: one line (2 units, 2) priced by v1 for
    2 units, 2 (it showed v1: 5 units, 5, the new contract's Jan 25 hour included), as ClosePeriod answers it and
    GetInvoice reads it; the new contract's period prices its 3 units only."""
    server = server_factory()
    with server.client() as client:
        switched_with_usage(client)
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="s", period_start=ts(JAN)))
        assert final.status == invoices_pb2.INVOICE_FINAL
        assert (final.lines[0].quantity, final.lines[0].amount) == ("2", "2")
        assert line_prices(final) == [(1, "2", "2", "1")]
        read = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number))
        assert line_prices(read) == [(1, "2", "2", "1")]
        new_period = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="s", period_start=ts(ms("2026-01-20T12:00:00")))
        )
        assert line_prices(new_period) == [(1, "3", "3", "1")]


def test_after_a_switch_a_restart_keeps_the_old_contracts_closed_invoice(server_factory: ServerFactory) -> None:
    """The close is journaled: after kill -9 the replay builds the same final invoice, its v1 part 2 units, 2
    (the server marks its close so; a close record without the mark, from an earlier release, replays as then)."""
    server = server_factory()
    with server.client() as client:
        switched_with_usage(client)
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="s", period_start=ts(JAN)))
        assert line_prices(final) == [(1, "2", "2", "1")]
    server.kill9()
    server.start()
    with server.client() as client:
        read = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number))
        assert read == final
        assert line_prices(read) == [(1, "2", "2", "1")]


def test_without_the_explain_index_explain_is_unavailable(server_factory: ServerFactory) -> None:
    """README: `tariff serve --no-explain-index` turns the index off, and ExplainLineItem then answers UNAVAILABLE
    (the CLI says so and fails)."""
    server = server_factory(extra_args=["--no-explain-index"])
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        customer(client, "v")
        assert ingest(client, "n-1", use("n1", "2026-01-05T10:00:00", 1)).accepted == 1
        assert "--no-explain-index" in expect_error(S.UNAVAILABLE, lambda: explain(client, "v", "use"))
    failed = tariff(server, "invoices", "explain", "v", "use", "--period", "2026-01", check=False)
    assert "--no-explain-index" in failed.stderr + failed.stdout


def test_overrides_price_each_event_as_contracts_proto_says(server_factory: ServerFactory) -> None:
    """PriceOverride: `price` on a GRADUATED rate is a flat unit price for the whole quantity, tiers and flat fees
    dropped (0.5 a unit: 50 -> 25, +100 -> 50); `multiplier` multiplies the card's amount for the cumulative
    quantity (VOLUME x 0.5: 90 -> 50, 110 -> 30, so -20); a PACKAGE `price` prices each started package (4 -> 1
    package at 0.25, 12 -> 2: +0.25)."""
    server = server_factory()
    with server.client() as client:
        models_catalogue(client)
        contract_id = customer(client, "ov")
        for override in (
            contracts_pb2.PriceOverride(id="grad", product_id="grad", price="0.5"),
            contracts_pb2.PriceOverride(id="vol", product_id="vol", multiplier="0.5"),
            contracts_pb2.PriceOverride(id="pack", product_id="pack", match={"k": "a"}, price="0.25"),
        ):
            client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override))
        rows_in = [("grad", 50), ("grad", 100), ("vol", 90), ("vol", 20), ("pack", 4), ("pack", 8)]
        events = [event(f"o{i}", "ov", kind, "2026-01-12T10:00:00", n, k="a") for i, (kind, n) in enumerate(rows_in)]
        assert ingest(client, "ov-1", *events).accepted == len(events)
        expected = {
            "grad;k=a": ([("50", "25", "0.5", "25", ""), ("100", "50", "0.5", "50", "")], ("75", "150")),
            "vol;k=a": ([("90", "50", "0.555555555556", "50", ""), ("20", "-20", "-1", "-20", "")], ("30", "110")),
            "pack;k=a": ([("4", "0.25", "0.0625", "0.25", ""), ("8", "0.25", "0.03125", "0.25", "")], ("0.5", "12")),
        }
        for line, (want, totals) in expected.items():
            entries, last = every_page(client, "ov", line, 0)
            assert rows(entries) == want, line
            assert (last.line_amount, last.line_quantity) == totals, line
            check_sums(entries, last)
