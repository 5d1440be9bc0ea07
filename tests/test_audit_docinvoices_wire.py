"""A sentence-by-sentence audit of invoices.proto and pricing.proto (and README "Invoices and revenue"), over the
wire against a real server: the statements the earlier audits leave unpinned. Every amount is worked out by hand
(the arithmetic is in each test's docstring), none read back from the server.

One server for the module (`--close-grace off`: nothing closes by itself), usage dated in January 2026, long over.
Rate card `oc` (credits): products `a` (pricing dimensions ["z", "b"], in that order: not key order) and `a.b`
(dimension "k"), both SUM of `n`; version 1 from 2025 prices both at 1 a unit, version 2 from 2026-01-01T10:00Z
prices `a` at 2. Rate card `tc` (credits): product `tiny` (dimension "k") at 0.0000000000005 (half a pico) a
unit. Rate card `ex` (credits): the two examples of pricing.proto's Rate, version 2 from 2026-01-01T01:00Z."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import HOUR_MS, audit_count, refusal, serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices2_wire import give
from tests.test_audit_invoices_wire import FEB, JAN, MAR, ms, ts

YEAR_2025 = ms("2025-01-01T00:00:00")
MINUTE_MS = 60_000
# A snapshot every few records, so that the restart at the end of the module restores from one.
ARGS = ["--close-grace", "off", "--snapshot-every", "3", "--snapshot-journal-factor", "0"]


def _product(client: TariffClient, product_id: str, dimensions: list[str]) -> None:
    product = pricing_pb2.Product(
        id=product_id,
        name=product_id,
        event_type=product_id,
        aggregation=pricing_pb2.SUM,
        value_key="n",
        pricing_dimensions=dimensions,
        unit="units",
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))


def _card(client: TariffClient, card: str, rates: list[pricing_pb2.Rate]) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=ts(YEAR_2025))
    )


def _unit(product_id: str, price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price))


def _catalogue(client: TariffClient) -> None:
    _product(client, "a.b", ["k"])
    _product(client, "a", ["z", "b"])
    _product(client, "tiny", ["k"])
    _card(client, "oc", [_unit("a", "1"), _unit("a.b", "1")])
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="oc", based_on_version=1, upsert_rates=[_unit("a", "2")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="oc", version=2, effective_from=ts(JAN + 10 * HOUR_MS))
    )
    _card(client, "tc", [_unit("tiny", "0.0000000000005")])
    _product(client, "gr", ["k"])
    _product(client, "vo", ["k"])
    _card(
        client,
        "ex",
        [_tiered("gr", pricing_pb2.GRADUATED, ("100", "1"), ("", "0.5")), _tiered("vo", pricing_pb2.VOLUME, ("", "1"))],
    )
    rates = [
        _tiered("gr", pricing_pb2.GRADUATED, ("100", "2"), ("", "1")),
        _tiered("vo", pricing_pb2.VOLUME, ("50", "10"), ("", "0.01")),
    ]
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="ex", based_on_version=1, upsert_rates=rates)
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="ex", version=2, effective_from=ts(JAN + HOUR_MS))
    )


def _tiered(product_id: str, mode: pricing_pb2.TierMode, *tiers: tuple[str, str]) -> pricing_pb2.Rate:
    priced = [pricing_pb2.Tier(up_to=up_to, unit_price=price) for up_to, price in tiers]
    return pricing_pb2.Rate(product_id=product_id, tiered=pricing_pb2.TieredPrice(mode=mode, tiers=priced))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-docinvoices") / "data", extra_args=ARGS)
    yield from serving(process, _catalogue)


def _contract(client: TariffClient, who: str, card: str) -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=who, name=who))
    request = contracts_pb2.CreateContractRequest(
        id=f"{who}-c",
        customer_id=who,
        rate_card_id=card,
        starting_at=ts(JAN),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    made: contracts_pb2.Contract = client.contracts.CreateContract(request)
    return str(made.id)


def _send(client: TariffClient, who: str, tx: str, product_id: str, dims: dict[str, str], n: float, at_ms: int) -> None:
    """One event in its own batch, so that the order of the calls is the order the events are rated in."""
    event = usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=who, event_type=product_id, timestamp_ms=at_ms, dimensions=dims
    )
    event.values["n"] = n
    ack = client.ingest_batch([event], f"batch-{tx}")
    assert ack.accepted == 1, ack.rejected


def _preview(client: TariffClient, who: str) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=who, period_start=ts(JAN))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def test_lines_run_by_product_then_by_dimension_values_in_pricing_dimension_order_parts_by_version(
    server: ServerProcess,
) -> None:
    """invoices.proto Invoice.lines, AppliedPrice, credits_applied: the orders. Grants zz (3 credits, priority 1,
    granted first) and aa (100, priority 2). Events, each rated in turn: a{z=2,b=1} 1 unit at 00:00 (v1: 1, from
    zz); a{z=1,b=2} 2 units at 20:00 (v2: 4: zz's last 2, then 2 from aa); a.b{k=x} 4 at 00:00 (4, aa); a{z=1,b=2}
    3 more at 00:00 (v1: 3, aa). Lines: a{z=1,b=2} 5 units, 7 (v1 3 units for 3, v2 2 for 4; zz 2, aa 5);
    a{z=2,b=1} 1 unit, 1 (zz 1); a.b{k=x} 4 (aa 4). They run by product id ("a" before "a.b", though the line id
    "a.b;k=x" sorts before "a;b=..."), then by the values of the product's pricing dimensions in its own order (z
    then b: z=1 before z=2, though "a;b=1;z=2" sorts before "a;b=2;z=1"): not in line_id order. A line's prices
    ascend by version, its credits in the order the grants were first drawn (zz, then aa), the invoice's
    credits_applied by grant id (aa 9, zz 3)."""
    with server.client() as client:
        _contract(client, "o", "oc")
        give(client, "o-c", "zz", "3", "3", starts_at=ts(JAN), priority=1)
        give(client, "o-c", "aa", "100", "100", starts_at=ts(JAN), priority=2)
        _send(client, "o", "o0", "a", {"z": "2", "b": "1"}, 1, JAN)
        _send(client, "o", "o1", "a", {"z": "1", "b": "2"}, 2, JAN + 20 * HOUR_MS)
        _send(client, "o", "o2", "a.b", {"k": "x"}, 4, JAN)
        _send(client, "o", "o3", "a", {"z": "1", "b": "2"}, 3, JAN)
        invoice = _preview(client, "o")
    assert [
        (
            line.line_id,
            line.quantity,
            line.amount,
            [(part.version, part.quantity, part.amount) for part in line.prices],
            [(c.grant_id, c.credits) for c in line.credits_applied],
        )
        for line in invoice.lines
    ] == [
        ("a;b=2;z=1", "5", "7", [(1, "3", "3"), (2, "2", "4")], [("zz", "2"), ("aa", "5")]),
        ("a;b=1;z=2", "1", "1", [(1, "1", "1")], [("zz", "1")]),
        ("a.b;k=x", "4", "4", [(1, "4", "4")], [("aa", "4")]),
    ]
    assert [(c.grant_id, c.credits) for c in invoice.credits_applied] == [("aa", "9"), ("zz", "3")]
    assert (invoice.subtotal, invoice.overage_amount, invoice.total_due) == ("12", "0", "0.00")


def test_unit_prices_round_half_even_at_12_places_and_read_0_or_empty_without_quantity(server: ServerProcess) -> None:
    """AppliedPrice.unit_price: amount / quantity rounded half-even to 12 places, "0" when quantity is 0;
    ExplainedEvent.unit_price alike, but empty when quantity is 0. At half a pico a unit: k=a 2 units are 1 pico,
    its unit price 0.5 pico, a tie, to even: "0" (half up would read 0.000000000001); k=b 3 units cost 1.5 picos,
    rounded half-even to 2, a unit price of 0.666... picos: 0.000000000001; k=c one event of 0 units: quantity 0,
    amount 0, unit price "0" on the invoice, "" on its event."""
    with server.client() as client:
        _contract(client, "t", "tc")
        _send(client, "t", "t1", "tiny", {"k": "a"}, 2, JAN)
        _send(client, "t", "t2", "tiny", {"k": "b"}, 3, JAN)
        _send(client, "t", "t3", "tiny", {"k": "c"}, 0, JAN)
        invoice = _preview(client, "t")
        explained = {
            line_id: [
                (e.quantity, e.unit_price, e.amount)
                for e in client.invoices.ExplainLineItem(
                    invoices_pb2.ExplainLineItemRequest(customer_id="t", period_start=ts(JAN), line_id=line_id)
                ).events
            ]
            for line_id in ("tiny;k=a", "tiny;k=b", "tiny;k=c")
        }
    assert [(line.line_id, [(p.quantity, p.unit_price, p.amount) for p in line.prices]) for line in invoice.lines] == [
        ("tiny;k=a", [("2", "0", "0.000000000001")]),
        ("tiny;k=b", [("3", "0.000000000001", "0.000000000002")]),
        ("tiny;k=c", [("0", "0", "0")]),
    ]
    assert explained == {
        "tiny;k=a": [("2", "0", "0.000000000001")],
        "tiny;k=b": [("3", "0.000000000001", "0.000000000002")],
        "tiny;k=c": [("0", "", "0")],
    }


def test_grant_balances_list_grants_started_before_the_periods_end_and_a_closed_period_closes_once(
    server: ServerProcess,
) -> None:
    """Invoice.grant_balances: "each grant started before the period's end". A grant starting at 2026-02-01T00:00Z
    exactly (January's end) is not on January's invoice, one starting a millisecond before it is (10 granted, 0
    drawn, 10 remaining, 0 expired), and February's lists both. ClosePeriodRequest: closing a closed period
    answers its invoice, changing nothing: the retry is the same invoice, and the audit log gains no entry."""
    with server.client() as client:
        contract_id = _contract(client, "g", "oc")
        give(client, contract_id, "at-end", "10", "10", starts_at=ts(FEB))
        give(client, contract_id, "before-end", "10", "10", starts_at=ts(FEB - 1))
        january = _preview(client, "g")
        february = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="g", period_start=ts(FEB))
        )
        closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="g", period_start=ts(JAN)))
        entries = audit_count(client)
        again = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="g", period_start=ts(JAN)))
        assert (again, audit_count(client)) == (closed, entries)

    def balances(invoice: invoices_pb2.Invoice) -> set[tuple[str, str, str, str, str]]:
        return {(b.grant_id, b.granted, b.drawn, b.remaining, b.expired) for b in invoice.grant_balances}

    assert balances(january) == {("before-end", "10", "0", "10", "0")}
    assert balances(february) == {("before-end", "10", "0", "10", "0"), ("at-end", "10", "0", "10", "0")}
    assert balances(closed) == balances(january)


def test_the_rate_comments_examples_charge_what_they_say_across_a_version_change(server: ServerProcess) -> None:
    """pricing.proto Rate's two examples, as written. GRADUATED 1 a unit up to 100 then 0.5: 80 units at 00:00 are
    80; with 2 a unit up to 100 then 1 from 01:00, 40 more at 01:00 are charged p2(120) - p2(80) = 220 - 160 = 60,
    the line 140 (v1's part 80 units for 80, v2's 40 for 60). VOLUME 1 a unit: 50 units are 50; then VOLUME 10 a
    unit up to 50, 0.01 beyond: 10 more give back 50, not 500 - 0.6 = 499.4: the line is 0 (v1's part 50 for 50,
    v2's 10 units for -50, as AppliedPrice says: negative when a cheaper VOLUME tier gave back more than it took)."""
    with server.client() as client:
        _contract(client, "x", "ex")
        _send(client, "x", "x1", "gr", {"k": "a"}, 80, JAN)
        _send(client, "x", "x2", "gr", {"k": "a"}, 40, JAN + HOUR_MS)
        _send(client, "x", "x3", "vo", {"k": "a"}, 50, JAN)
        _send(client, "x", "x4", "vo", {"k": "a"}, 10, JAN + HOUR_MS)
        invoice = _preview(client, "x")
    assert [
        (line.line_id, line.quantity, line.amount, [(p.version, p.quantity, p.amount) for p in line.prices])
        for line in invoice.lines
    ] == [
        ("gr;k=a", "120", "140", [(1, "80", "80"), (2, "40", "60")]),
        ("vo;k=a", "60", "0", [(1, "50", "50"), (2, "10", "-50")]),
    ]


def test_revenue_lines_run_by_period_then_product_and_customer_lines_by_customer_then_period(
    server: ServerProcess,
) -> None:
    """invoices.proto RevenueReport: lines by period_start then product_id, customer_lines by customer_id then
    period_start. Customers r2 then r1 (made in that order), no grants, overage at 1 USD a credit. r1: a{z=1,b=1}
    2 units on Jan 1 at 00:00 (v1: 2), a.b 1 unit in January (1), a 1 unit on Feb 1 (v2: 2); r2: a 3 units on Feb 1
    (6). Recognised overage = overage x 1: r1's report over [Jan, Mar) has lines Jan a 2, Jan a.b 1, Feb a 2 (a
    period's products by id, "a" before "a.b"), customer lines Jan 3, Feb 2. Over all customers, the customer lines
    run by customer id (r1 before r2, whichever was made first), each customer's periods in order, and the product
    lines by period then product: Feb's a is r1's 2 plus r2's 6, 8."""
    with server.client() as client:
        for who in ("r2", "r1"):
            _contract(client, who, "oc")
        _send(client, "r1", "r1-1", "a", {"z": "1", "b": "1"}, 2, JAN)
        _send(client, "r1", "r1-2", "a.b", {"k": "x"}, 1, JAN + HOUR_MS)
        _send(client, "r1", "r1-3", "a", {"z": "1", "b": "1"}, 1, FEB)
        _send(client, "r2", "r2-1", "a", {"z": "1", "b": "1"}, 3, FEB)
        mine = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(MAR), customer_id="r1")
        )
        everyone = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(MAR))
        )
    assert [(line.period_start.ToMilliseconds(), line.product_id, line.recognized) for line in mine.lines] == [
        (JAN, "a", "2"),
        (JAN, "a.b", "1"),
        (FEB, "a", "2"),
    ]
    assert [(line.period_start.ToMilliseconds(), line.recognized) for line in mine.customer_lines] == [
        (JAN, "3"),
        (FEB, "2"),
    ]
    by_customer = [(line.customer_id, line.period_start.ToMilliseconds()) for line in everyone.customer_lines]
    assert by_customer == sorted(by_customer)
    assert [line for line in by_customer if line[0] in ("r1", "r2")] == [
        ("r1", JAN),
        ("r1", FEB),
        ("r2", JAN),
        ("r2", FEB),
    ]
    by_product = [(line.period_start.ToMilliseconds(), line.product_id) for line in everyone.lines]
    assert by_product == sorted(by_product)
    assert {line.product_id: line.recognized for line in everyone.lines if line.period_start.ToMilliseconds() == FEB}[
        "a"
    ] == "8"


def test_where_an_hour_holds_a_period_boundary_the_version_parts_need_not_add_up_to_the_line(
    server: ServerProcess,
) -> None:
    """invoices.proto InvoiceLine.amount and AppliedPrice.quantity, with README "Lines": an hour's usage belongs to
    the version parts of the period its start falls in, so where a contract starts off the hour the parts need not
    add up to the line (the line itself is exact). Contract h-c starts 2026-01-01T00:30Z (periods from 00:30 each
    month) on card oc: product a at 1 a unit before 10:00 on Jan 1 (v1), 2 after (v2). a{z=1,b=1}: 2 units at Jan 1
    00:31 (v1: 2), 3 at Feb 1 00:15 (v2: 6), 5 at Feb 1 00:45 (v2: 10, the February period). January's line: 5
    units, 8; its parts count the hours starting in [Jan 1 00:30, Feb 1 00:30): not Jan 1 00:00 (which starts
    before the period), but Feb 1 00:00, whose bucket holds 8 units for 16: parts v2 8 units, 16. February's line:
    5 units, 10, no parts (its first hour, 00:00, starts before it)."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="h", name="h"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="h-c",
                customer_id="h",
                rate_card_id="oc",
                starting_at=ts(JAN + 30 * MINUTE_MS),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
        dims = {"z": "1", "b": "1"}
        _send(client, "h", "h1", "a", dims, 2, JAN + 31 * MINUTE_MS)
        _send(client, "h", "h2", "a", dims, 3, FEB + 15 * MINUTE_MS)
        _send(client, "h", "h3", "a", dims, 5, FEB + 45 * MINUTE_MS)
        shown = [
            [
                (line.quantity, line.amount, [(p.version, p.quantity, p.amount, p.events) for p in line.prices])
                for line in client.invoices.PreviewInvoice(
                    invoices_pb2.PreviewInvoiceRequest(customer_id="h", period_start=ts(start_ms))
                ).lines
            ]
            for start_ms in (JAN + 30 * MINUTE_MS, FEB + 30 * MINUTE_MS)
        ]
    assert shown == [[("5", "8", [(2, "8", "16", 2)])], [("5", "10", [])]]


def _draft_refusal(client: TariffClient, price: str) -> tuple[grpc.StatusCode, str]:
    rate = pricing_pb2.Rate(product_id="a", unit=pricing_pb2.UnitPrice(price=price))
    code, details = refusal(
        lambda: client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="oc", based_on_version=1, upsert_rates=[rate])
        )
    )
    return code, details.split(":")[0]


def test_a_price_of_more_than_1000_characters_is_refused_by_create_draft_version_naming_the_field(
    server: ServerProcess,
) -> None:
    """pricing.proto: a price neither begins nor ends with whitespace, holds no '#' and writes its numbers in the
    decimal grammar ("2", not "2."; a literal at most 64 characters): "CreateDraftVersion refuses any other as
    INVALID_ARGUMENT naming the field". Past 1,000 characters (what validation evaluates at most) the server made
    the draft all the same (a finding "is longer than 1000 characters" only then): " 1+1+...+1" (1,002
    characters, a leading space), the same sum ending "#x", one beginning with a unary "+", a 1,002-character
    literal 0.000...1. Each is refused now, naming upsert_rates[0].unit.price, and no draft is made (the card's
    latest_version stays as it was); so is a well-formed sum of 1,001 characters, which no version could publish."""
    long_sum = "+".join(["1"] * 501)  # 1,001 characters
    with server.client() as client:
        latest = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="oc")).latest_version
        refused = {
            price[:3] + "..." + price[-3:]: _draft_refusal(client, price)
            for price in (" " + long_sum, long_sum + "#x", "+" + long_sum, "0." + "0" * 999 + "1", long_sum)
        }
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="oc")).latest_version == latest
    assert refused == dict.fromkeys(refused, (grpc.StatusCode.INVALID_ARGUMENT, "upsert_rates[0].unit.price"))


def test_a_formula_nests_at_most_32_deep(server: ServerProcess) -> None:
    """pricing.proto UnitPrice: a formula nests at most 32 operations deep, a ValidateVersion finding naming the
    field past that. 32 unary minuses around 2 (even: 2), min( 32 deep around 3, and a sum of 33 ones (33) validate
    and price so (DiffVersions' new_price); 33 minuses, 33 min( and 34 ones are each an ERROR finding on
    rates[i].unit.price saying "nests deeper than 32"."""
    prices = {
        "-" * 32 + "2": "2",
        "min(" * 32 + "3" + ")" * 32: "3",
        "+".join(["1"] * 33): "33",
        "-" * 33 + "2": "",
        "min(" * 33 + "3" + ")" * 33: "",
        "+".join(["1"] * 34): "",
    }
    found = {}
    with server.client() as client:
        for price in prices:
            rate = pricing_pb2.Rate(product_id="a", unit=pricing_pb2.UnitPrice(price=price))
            version = client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="oc", upsert_rates=[rate])
            ).version
            report = client.pricing.ValidateVersion(
                pricing_pb2.ValidateVersionRequest(rate_card_id="oc", version=version)
            )
            diff = client.pricing.DiffVersions(
                pricing_pb2.DiffVersionsRequest(rate_card_id="oc", from_version=1, to_version=version)
            )
            new_price = next(f.new_price for r in diff.rates if r.key.product_id == "a" for f in r.fields)
            findings = [(f.severity, f.path, f.message.endswith("nests deeper than 32")) for f in report.findings]
            found[price] = (new_price, findings)
    assert found == {
        price: (value, [] if value else [(pricing_pb2.ERROR, "rates[0].unit.price", True)])
        for price, value in prices.items()
    }


def test_a_code_without_a_minor_unit_is_refused_saying_so_not_that_it_is_no_three_capital_letters(
    server: ServerProcess,
) -> None:
    """pricing.proto CreateRateCardRequest.pricing_unit: "credits", or an ISO 4217 code that has a minor unit;
    anything else ("XYZ", "XXX") is INVALID_ARGUMENT naming pricing_unit; contracts.proto Contract.currency alike,
    naming currency. The refusals said the code must be "of three capital letters" (which XYZ and XXX are), not
    why they are refused: they name no currency with a minor unit."""
    with server.client() as client:
        refused = [
            refusal(
                lambda: client.pricing.CreateRateCard(
                    pricing_pb2.CreateRateCardRequest(id="xyz", name="xyz", pricing_unit="XYZ")
                )
            ),
            refusal(
                lambda: client.contracts.CreateContract(
                    contracts_pb2.CreateContractRequest(
                        id="xxx-c", customer_id="o", rate_card_id="oc", starting_at=ts(JAN), currency="XXX"
                    )
                )
            ),
        ]
    assert [(code, details.split(":")[0], "minor unit" in details) for code, details in refused] == [
        (grpc.StatusCode.INVALID_ARGUMENT, "pricing_unit", True),
        (grpc.StatusCode.INVALID_ARGUMENT, "currency", True),
    ], refused


def test_products_list_in_creation_order_and_versions_by_number_across_a_restart(server: ServerProcess) -> None:
    """pricing.proto ListProductsResponse: every product in the order they were created, not id order, restarts
    included; ListVersionsResponse: every version, drafts included, by number. The module made a.b, a, tiny, gr,
    vo; here zz, then mm (COUNT), then a draft 3 of card ex (versions 1 and 2 published). The server then
    restarts (from a snapshot: one is taken every 3 records) and answers the same. This test runs last in the
    module: it restarts the shared server."""
    made = ["a.b", "a", "tiny", "gr", "vo", "zz", "mm"]
    with server.client() as client:
        for product_id in ("zz", "mm"):
            product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.COUNT)
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="ex", based_on_version=2))
    for restarted in (False, True):
        if restarted:
            server.restart()
        with server.client() as client:
            listed = client.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products
            versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="ex")).versions
        assert [p.id for p in listed] == made
        assert [(v.version, v.state) for v in versions] == [
            (1, pricing_pb2.PUBLISHED),
            (2, pricing_pb2.PUBLISHED),
            (3, pricing_pb2.DRAFT),
        ]
