"""SimulateVersion, DiffVersions and ValidateVersion against what PublishVersion and RollbackRateCard then do, over
the wire: every price model in one rate card, a dimensional rate with a more specific match, contract overrides
(a price in a window and a multiplier), one event feeding five products, customers in USD, EUR and JPY, prepaid
grants a change frees credit on or makes run out, and a closed period inside the simulated window. Every amount
asserted was computed by hand from pricing.proto (Rate, SimulateVersion, PublishVersion, RollbackRateCard,
DiffVersions), contracts.proto (PriceOverride, Grant), invoices.proto and README "Changing prices safely", never
read back from the server.

Card `sim` (USD) prices five products, each the SUM of `n` of one event type `ev` (so one event feeds all five):
`u` (pricing dimension `model`) UNIT 2 per 10 units, and 5 per 10 for model=big; `g` GRADUATED up to 100 at 1
(flat 10) then 0.5 (flat 5); `v` VOLUME with the same tiers; `p` PACKAGE 3 per started 10; `f` FLAT 100. Version 1
is in force since 2025-12-01. Version 2 (based on 1): `u` 3 per 10 (model=big unchanged); `g` up to 50 at 1 (flat
10) then 0.25 (flat 20); `v` VOLUME up to 100 at 2 then 0.1 (flat 30); `p` 2 per started 5; `f` 80.
Contracts start 2026-01-01 (monthly), but `d`'s, which starts 2025-12-12 and whose first period (to 2026-01-12) is
closed. The server runs with `--close-grace off`: nothing closes by itself."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import HOUR_MS, refusal, serving, this_hour_ms
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import JAN, ms, ts

CARD = "sim"
DEC12 = ms("2025-12-12T00:00:00")
W = ms("2026-01-10T00:00:00")  # version 2 is simulated and published from here
R = ms("2026-01-15T00:00:00")  # the rollback to version 1 is simulated and published from here
TIERS_1 = [
    pricing_pb2.Tier(up_to="100", unit_price="1", flat_price="10"),
    pricing_pb2.Tier(unit_price="0.5", flat_price="5"),
]


def _rates(version: int) -> list[pricing_pb2.Rate]:
    if version == 1:
        g_tiers, v_tiers = TIERS_1, TIERS_1
        u, p, f = ("2", "10"), ("10", "3"), "100"
    else:
        g_tiers = [
            pricing_pb2.Tier(up_to="50", unit_price="1", flat_price="10"),
            pricing_pb2.Tier(unit_price="0.25", flat_price="20"),
        ]
        v_tiers = [pricing_pb2.Tier(up_to="100", unit_price="2"), pricing_pb2.Tier(unit_price="0.1", flat_price="30")]
        u, p, f = ("3", "10"), ("5", "2"), "80"
    return [
        pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price=u[0], per_units=u[1])),
        pricing_pb2.Rate(product_id="u", match={"model": "big"}, unit=pricing_pb2.UnitPrice(price="5", per_units="10")),
        pricing_pb2.Rate(product_id="g", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=g_tiers)),
        pricing_pb2.Rate(product_id="v", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=v_tiers)),
        pricing_pb2.Rate(product_id="p", package=pricing_pb2.PackagePrice(package_size=p[0], package_price=p[1])),
        pricing_pb2.Rate(product_id="f", flat=pricing_pb2.FlatPrice(price=f)),
    ]


def _contract(client: TariffClient, customer_id: str, start_ms: int, currency: str, overage_price: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(start_ms),
            overage_policy=contracts_pb2.ALLOW,
            overage_price=overage_price,
            currency=currency,
        )
    )


def _grant(client: TariffClient, customer_id: str, amount: str) -> None:
    grant = contracts_pb2.Grant(
        id=f"grant-{customer_id}",
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PREPAID,
        amount=amount,
        paid_amount=amount,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def _override(client: TariffClient, customer_id: str, override: contracts_pb2.PriceOverride) -> None:
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=f"k-{customer_id}", override=override))


def _use(client: TariffClient, customer_id: str, rows: list[tuple[str, int, float, str]]) -> None:
    """rows: (transaction id, timestamp, n, model), one batch."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{tx}",
            customer_id=customer_id,
            event_type="ev",
            timestamp_ms=at_ms,
            values={"n": n},
            dimensions={"model": model},
        )
        for tx, at_ms, n, model in rows
    ]
    ack = client.ingest_batch(events, batch_id=f"{customer_id}-{rows[0][0]}")
    assert ack.accepted == len(events), ack.rejected


def _setup(client: TariffClient) -> None:
    for product_id in "ugvpf":
        dimensions = ["model"] if product_id == "u" else []
        product = pricing_pb2.Product(
            id=product_id, event_type="ev", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=dimensions
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="USD"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=_rates(1)))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-12-01T00:00:00")))
    )
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=_rates(2))
    )
    _contract(client, "a", JAN, "USD", "1")
    _contract(client, "b", JAN, "EUR", "0.9")
    _contract(client, "c", JAN, "JPY", "100")
    _contract(client, "d", DEC12, "USD", "1")
    _grant(client, "b", "250")
    _grant(client, "c", "46")
    _override(client, "b", contracts_pb2.PriceOverride(id="b-g-half", product_id="g", multiplier="0.5"))
    price = contracts_pb2.PriceOverride(
        id="b-u-1", product_id="u", price="1", starting_at=ts(ms("2026-01-15T00:00:00"))
    )
    _override(client, "b", price)
    _override(client, "c", contracts_pb2.PriceOverride(id="c-f-0", product_id="f", price="0"))
    _use(
        client,
        "a",
        [
            ("1", ms("2026-01-05T10:00:00"), 30, "small"),
            ("2", ms("2026-01-12T10:00:00"), 90, "big"),
            ("3", ms("2026-01-15T10:00:00"), 10, "small"),
        ],
    )
    _use(client, "b", [("1", ms("2026-01-12T10:00:00"), 30, "small"), ("2", ms("2026-01-20T10:00:00"), 90, "big")])
    _use(client, "c", [("1", ms("2026-01-12T10:00:00"), 10, "small")])
    _use(client, "d", [("1", ms("2026-01-11T10:00:00"), 20, "small"), ("2", ms("2026-01-13T10:00:00"), 10, "small")])
    client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="d", period_start=ts(DEC12)))
    _peaks(client)


def _peaks(client: TariffClient) -> None:
    """Card `simx`: product `mx`, the MAX of `n` (event type `em`), at 1 a unit in version 1 and 2 in version 2 (a
    draft); customer `m` sent a peak of 5 on 2026-01-12 at 10:30."""
    product = pricing_pb2.Product(id="mx", event_type="em", aggregation=pricing_pb2.MAX, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="simx", name="simx", pricing_unit="USD"))
    for price in ("1", "2"):
        rate = pricing_pb2.Rate(product_id="mx", unit=pricing_pb2.UnitPrice(price=price))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="simx", upsert_rates=[rate])
        )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="simx", version=1, effective_from=ts(ms("2025-12-01T00:00:00")))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="m", name="m"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="k-m", customer_id="m", rate_card_id="simx", starting_at=ts(JAN), overage_policy=contracts_pb2.ALLOW
        )
    )
    event = usage_pb2.UsageEvent(
        transaction_id="m-1", customer_id="m", event_type="em", timestamp_ms=ms("2026-01-12T10:30:00"), values={"n": 5}
    )
    assert client.ingest_batch([event], batch_id="m-1").accepted == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-simulate") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, _setup)


def _simulate(client: TariffClient, version: int, from_ms: int) -> pricing_pb2.SimulateVersionResponse:
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=CARD, version=version, period_start=ts(from_ms), period_end=ts(ms("2026-02-01T00:00:00"))
    )
    answer: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
    return answer


def _amounts(answer: pricing_pb2.SimulateVersionResponse) -> dict[tuple[str, str], tuple[str, str, str]]:
    return {(a.customer_id, a.product_id): (a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts}


def ms_of(stamp: Timestamp) -> int:
    return stamp.ToMilliseconds()


def _invoice(client: TariffClient, customer_id: str, start_ms: int = JAN) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=ts(start_ms))
    )
    return found


def _lines(invoice: invoices_pb2.Invoice) -> dict[str, str]:
    return {line.line_id: line.amount for line in invoice.lines}


def _due(invoice: invoices_pb2.Invoice) -> tuple[str, str, str, str]:
    return invoice.subtotal, invoice.overage_amount, invoice.overage_due, invoice.total_due


def _remaining(client: TariffClient, customer_id: str) -> str:
    balance = client.get_balance(customer_id)
    return next(g.remaining for g in balance.grants if g.grant_id == f"grant-{customer_id}")


def _counts(done: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str, int, int, str]:
    return (
        done.customers_rerated,
        done.buckets_rerated,
        done.events_rerated,
        done.rerated_amount_delta,
        done.closed_buckets_left_alone,
        done.closed_events_left_alone,
        done.closed_amount_left_alone,
    )


# SimulateVersion of version 2 from 2026-01-10, by hand (current, simulated, delta per customer and product):
# a: 30 small on the 5th (before the window, version 1: u 6, g p1(30) = 40, v 40, p 9, f 100), 90 big on the 12th,
#    10 small on the 15th. u: 45 (big, unchanged) + 2 -> 3; g: p1(120) - p1(30) = 125 - 40 = 85, then 5 -> p2(120) -
#    p2(30) = 97.5 - 40 = 57.5, then 2.5; v: 65 - 40 = 25, then 5 -> pv2(120) - pv2(30) = 42 - 60 = -18 (the line
#    was charged 40: nothing to clamp), then 1; p: 27 + 3 -> 48 - 12 = 36, then 4; f: nothing more after the 5th.
# b (EUR, g at 0.5 x, u at its own price 1 per 10 from the 15th): 30 small on the 12th, 90 big on the 20th.
#    u: 6 + 9 -> 9 + 9; g: 0.5 x (40 + 85) -> 0.5 x (40 + 57.5); v: 40 + 25 -> 60 - 18; p: 9 + 27 -> 12 + 36;
#    f: 100 -> 80.
# c (JPY, f at its own price 0): 10 small on the 12th: u 2 -> 3, g 20, v 20 -> 2 x 10 = 20, p 3 -> 4, f 0.
# d: its period to 2026-01-12 is closed (20 small on the 11th: left out); 10 small on the 13th opens the next
#    period: u 2 -> 3, g 20, v 20, p 3 -> 4, f 100 -> 80.
SIMULATED_2 = {
    ("a", "f"): ("0", "0", "0"),
    ("a", "g"): ("90", "60", "-30"),
    ("a", "p"): ("30", "40", "10"),
    ("a", "u"): ("47", "48", "1"),
    ("a", "v"): ("30", "-17", "-47"),
    ("b", "f"): ("100", "80", "-20"),
    ("b", "g"): ("62.5", "48.75", "-13.75"),
    ("b", "p"): ("36", "48", "12"),
    ("b", "u"): ("15", "18", "3"),
    ("b", "v"): ("65", "42", "-23"),
    ("c", "f"): ("0", "0", "0"),
    ("c", "g"): ("20", "20", "0"),
    ("c", "p"): ("3", "4", "1"),
    ("c", "u"): ("2", "3", "1"),
    ("c", "v"): ("20", "20", "0"),
    ("d", "f"): ("100", "80", "-20"),
    ("d", "g"): ("20", "20", "0"),
    ("d", "p"): ("3", "4", "1"),
    ("d", "u"): ("2", "3", "1"),
    ("d", "v"): ("20", "20", "0"),
}
# SimulateVersion of version 1 from 2026-01-15 once version 2 is in force from the 10th: a's 10 small on the 15th
# (u 3 -> 2; g 2.5 -> p1(130) - p1(120) = 5; v 1 -> 70 - 65 = 5; p 4 -> 3) and b's 90 big on the 20th (u 9 at its
# own price either way; g 0.5 x 57.5 -> 0.5 x 85; v -18 -> pv1(120) - pv1(30) = 65 - 40 = 25; p 36 -> 36 - 9 = 27).
SIMULATED_1 = {
    ("a", "f"): ("0", "0", "0"),
    ("a", "g"): ("2.5", "5", "2.5"),
    ("a", "p"): ("4", "3", "-1"),
    ("a", "u"): ("3", "2", "-1"),
    ("a", "v"): ("1", "5", "4"),
    ("b", "f"): ("0", "0", "0"),
    ("b", "g"): ("28.75", "42.5", "13.75"),
    ("b", "p"): ("36", "27", "-9"),
    ("b", "u"): ("9", "9", "0"),
    ("b", "v"): ("-18", "25", "43"),
}
D_OPEN = ms("2026-01-12T00:00:00")


def test_simulate_says_what_a_publish_then_a_rollback_do_to_every_price_model_override_grant_and_currency(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        before = {c: _due(_invoice(client, c)) for c in "abc"}
        assert before == {
            "a": ("392", "392", "392.00", "392.00"),
            # 278.5 against a grant of 250: 28.5 overage at 0.9 EUR.
            "b": ("278.5", "28.5", "25.65", "25.65"),
            "c": ("45", "0", "0", "0"),
        }
        simulated = _simulate(client, 2, W)
        assert _amounts(simulated) == SIMULATED_2
        assert (simulated.totals.current_amount, simulated.totals.simulated_amount, simulated.totals.delta) == (
            "665.5",
            "541.75",
            "-123.75",
        )
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(W))
        )
        # Re-rated: a's 2 hours and b's 2 (5 buckets each, one per product), c's and d's open hour; d's closed
        # hour (its 5 buckets, 1 event feeding them, 4 + 30 + 30 + 6 + 100 at version 1) left alone.
        assert _counts(done) == (4, 30, 6, "-123.75", 5, 1, "170")
        assert done.left_alone_reason
        assert _lines(_invoice(client, "a")) == {
            "f": "100",
            "g": "100",
            "p": "49",
            "u;model=big": "45",
            "u;model=small": "9",
            "v": "23",
        }
        assert _lines(_invoice(client, "b")) == {
            "f": "80",
            "g": "48.75",
            "p": "48",
            "u;model=big": "9",
            "u;model=small": "9",
            "v": "42",
        }
        after = {c: _due(_invoice(client, c)) for c in "abc"}
        # b's cut of 41.75 gives back the 28.5 overage first, then 13.25 credits; c's rise of 2 takes its last
        # credit, then 1 overage at 100 JPY.
        assert after == {
            "a": ("326", "326", "326.00", "326.00"),
            "b": ("236.75", "0", "0.00", "0.00"),
            "c": ("47", "1", "100", "100"),
        }
        assert (_remaining(client, "b"), _remaining(client, "c")) == ("13.25", "0")
        assert _due(_invoice(client, "d", D_OPEN)) == ("127", "127", "127.00", "127.00")
        closed = _invoice(client, "d", DEC12)
        assert (closed.status, closed.subtotal) == (invoices_pb2.INVOICE_FINAL, "170")

        simulated = _simulate(client, 1, R)
        assert _amounts(simulated) == SIMULATED_1
        assert (simulated.totals.current_amount, simulated.totals.simulated_amount, simulated.totals.delta) == (
            "66.25",
            "118.5",
            "52.25",
        )
        rolled = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(R))
        )
        assert _counts(rolled) == (2, 10, 2, "52.25", 0, 0, "0")
        copy = rolled.version
        assert (copy.version, copy.state, copy.based_on_version) == (3, pricing_pb2.PUBLISHED, 1)
        assert (copy.rollback_to_version, copy.rollback_from_version) == (1, 2)
        assert copy.change_note == "rollback of version 2 to version 1: a copy of version 1, effective from " + (
            "2026-01-15T00:00:00Z"
        )
        assert _due(_invoice(client, "a"))[0] == "330.5"
        # b: 284.5 against its grant of 250: 34.5 overage at 0.9 EUR.
        assert _due(_invoice(client, "b")) == ("284.5", "34.5", "31.05", "31.05")
        assert _remaining(client, "b") == "0"
        # a's g line: each re-rated bucket once per publish, citing the versions before and after.
        g = next(line for line in _invoice(client, "a").lines if line.line_id == "g")
        assert [
            (ms_of(x.hour), list(x.old_versions), x.new_version, x.quantity, x.old_amount, x.new_amount, x.delta)
            for x in g.adjustments
        ] == [
            (ms("2026-01-12T10:00:00"), [1], 2, "90", "85", "57.5", "-27.5"),
            (ms("2026-01-15T10:00:00"), [1], 2, "10", "5", "2.5", "-2.5"),
            (ms("2026-01-15T10:00:00"), [2], 3, "10", "2.5", "5", "2.5"),
        ]
        assert g.adjustments[0].journal_seq == g.adjustments[1].journal_seq < g.adjustments[2].journal_seq
        # The copy prices as version 1: diffed with it, nothing; with version 2, version 2 to 1's changes.
        assert not _diff(client, 1, 3).rates
        assert _diff(client, 2, 3).rates == _diff(client, 2, 1).rates
        # Simulating the version in force changes nothing: every delta 0.
        assert {k: v[2] for k, v in _amounts(_simulate(client, 3, R)).items()} == {k: "0" for k in SIMULATED_1}
        # d's closed period holds the only usage of [01-11, 01-12): no amounts, zero totals.
        closed_only = pricing_pb2.SimulateVersionRequest(
            rate_card_id=CARD, version=2, period_start=ts(ms("2026-01-11T00:00:00")), period_end=ts(D_OPEN)
        )
        answer = client.pricing.SimulateVersion(closed_only)
        assert (list(answer.amounts), answer.totals.current_amount, answer.totals.delta) == ([], "0", "0")
        # A retried publish is answered as the first one, re-rating nothing again.
        again = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(W))
        )
        assert (again.version.version, _counts(again)) == (2, (0, 0, 0, "0", 0, 0, "0"))
        assert _due(_invoice(client, "a"))[0] == "330.5"


def _diff(client: TariffClient, from_version: int, to_version: int) -> pricing_pb2.DiffVersionsResponse:
    request = pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=from_version, to_version=to_version)
    answer: pricing_pb2.DiffVersionsResponse = client.pricing.DiffVersions(request)
    return answer


Field = tuple[str, str, str, str, str, str, str, bool, bool]


def _field(f: pricing_pb2.PriceFieldChange) -> Field:
    prices = (f.old_price, f.new_price, f.old_problem, f.new_problem)
    return (f.path, f.old_formula, f.new_formula, *prices, f.has_old, f.has_new)


def _rate_changes(answer: pricing_pb2.DiffVersionsResponse) -> list[tuple[str, dict[str, str], int, list[Field]]]:
    return [
        (
            r.key.product_id,
            dict(r.key.match),
            r.kind,
            [_field(f) for f in r.fields],
        )
        for r in answer.rates
    ]


def _same(path: str, old: str, new: str, old_price: str = "", new_price: str = "") -> Field:
    """A field both rates have, whose prices are its texts unless given."""
    return (path, old, new, old_price or old, new_price or new, "", "", True, True)


# Version 1 to version 2, by hand: u's catch-all (its per_units the same), g's first bound and second tier, both
# package fields, f's fee, and v's four tier prices (its first flat fee left empty: "0"); u for model=big is the
# same in both and left out. By product id: f, g, p, u, v.
DIFF_1_2: list[tuple[str, dict[str, str], int, list[Field]]] = [
    ("f", {}, pricing_pb2.CHANGED, [_same("flat.price", "100", "80")]),
    (
        "g",
        {},
        pricing_pb2.CHANGED,
        [
            _same("tiered.tiers[0].up_to", "100", "50"),
            _same("tiered.tiers[1].unit_price", "0.5", "0.25"),
            _same("tiered.tiers[1].flat_price", "5", "20"),
        ],
    ),
    (
        "p",
        {},
        pricing_pb2.CHANGED,
        [_same("package.package_size", "10", "5"), _same("package.package_price", "3", "2")],
    ),
    ("u", {}, pricing_pb2.CHANGED, [_same("unit.price", "2", "3")]),
    (
        "v",
        {},
        pricing_pb2.CHANGED,
        [
            _same("tiered.tiers[0].unit_price", "1", "2"),
            _same("tiered.tiers[0].flat_price", "10", "", "10", "0"),
            _same("tiered.tiers[1].unit_price", "0.5", "0.1"),
            _same("tiered.tiers[1].flat_price", "5", "30"),
        ],
    ),
]


def _swapped(field: Field) -> Field:
    path, old, new, old_price, new_price, old_problem, new_problem, has_old, has_new = field
    return (path, new, old, new_price, old_price, new_problem, old_problem, has_new, has_old)


def test_diff_lists_exactly_the_changed_rates_and_fields_both_ways(server: ServerProcess) -> None:
    with server.client() as client:
        assert _rate_changes(_diff(client, 1, 2)) == DIFF_1_2
        assert not _diff(client, 1, 2).parameters
        backwards = [(p, m, k, [_swapped(f) for f in fields]) for p, m, k, fields in DIFF_1_2]
        assert _rate_changes(_diff(client, 2, 1)) == backwards
        # By match within a product: the catch-all first, then model=a before model=big (added last).
        three = _draft(
            client,
            upsert_rates=[
                pricing_pb2.Rate(product_id="u", match={"model": "big"}, unit=pricing_pb2.UnitPrice(price="6")),
                pricing_pb2.Rate(product_id="u", match={"model": "a"}, unit=pricing_pb2.UnitPrice(price="1")),
                pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="4", per_units="10")),
            ],
        )
        assert _rate_changes(_diff(client, 1, three)) == [
            ("u", {}, pricing_pb2.CHANGED, [_same("unit.price", "2", "4")]),
            (
                "u",
                {"model": "a"},
                pricing_pb2.ADDED,
                [
                    ("unit.price", "", "1", "", "1", "", "", False, True),
                    ("unit.per_units", "", "", "", "1", "", "", False, True),
                ],
            ),
            (
                "u",
                {"model": "big"},
                pricing_pb2.CHANGED,
                [_same("unit.price", "5", "6"), _same("unit.per_units", "10", "", "10", "1")],
            ),
        ]


def _draft(client: TariffClient, **changes: object) -> int:
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, **changes)  # type: ignore[arg-type]
    made: pricing_pb2.RateCardVersion = client.pricing.CreateDraftVersion(request)
    return made.version


def _tiered(mode: pricing_pb2.TierMode, *tiers: tuple[str, str]) -> pricing_pb2.TieredPrice:
    return pricing_pb2.TieredPrice(mode=mode, tiers=[pricing_pb2.Tier(up_to=u, unit_price=p) for u, p in tiers])


def test_validate_names_each_broken_field_and_diff_shows_why_it_has_no_price(server: ServerProcess) -> None:
    with server.client() as client:
        broken = _draft(
            client,
            set_parameters={"m": "2"},
            upsert_rates=[
                # An unbounded tier before the last, and the last one bounded.
                pricing_pb2.Rate(product_id="g", tiered=_tiered(pricing_pb2.GRADUATED, ("", "1"), ("100", "m"))),
                # Bounds not ascending; a formula over a parameter the version does not have.
                pricing_pb2.Rate(
                    product_id="v", tiered=_tiered(pricing_pb2.VOLUME, ("100", "1"), ("50", "1"), ("", "nope"))
                ),
                pricing_pb2.Rate(
                    product_id="u", match={"model": "tiny"}, unit=pricing_pb2.UnitPrice(price="m / 0", per_units="0")
                ),
            ],
        )
        # The draft's rates: version 1's in their order (g and v replaced in place), then the new one.
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=broken))
        assert [(r.product_id, dict(r.match)) for r in version.rates] == [
            ("u", {}),
            ("u", {"model": "big"}),
            ("g", {}),
            ("v", {}),
            ("p", {}),
            ("f", {}),
            ("u", {"model": "tiny"}),
        ]
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=broken))
        assert not report.ok
        assert [(f.severity, f.path) for f in report.findings] == [
            (pricing_pb2.ERROR, "rates[2].tiered.tiers[0].up_to"),
            (pricing_pb2.ERROR, "rates[2].tiered.tiers"),
            (pricing_pb2.ERROR, "rates[3].tiered.tiers[1].up_to"),
            (pricing_pb2.ERROR, "rates[3].tiered.tiers[2].unit_price"),
            (pricing_pb2.ERROR, "rates[6].unit.price"),
            (pricing_pb2.ERROR, "rates[6].unit.per_units"),
        ]
        # Simulating it is refused as publishing it is, with the findings.
        code, details = refusal(lambda: _simulate(client, broken, W))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "version.rates[3].tiered.tiers[1].up_to" in details, details
        code, details = refusal(
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=broken, effective_from=ts(W))
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "rates[2].tiered.tiers[0].up_to" in details, details
        added = [r for r in _diff(client, 1, broken).rates if r.kind == pricing_pb2.ADDED]
        assert [(r.key.product_id, dict(r.key.match)) for r in added] == [("u", {"model": "tiny"})]
        fields = [(f.path, f.new_formula, f.new_price, f.new_problem != "", f.has_old) for f in added[0].fields]
        assert fields == [("unit.price", "m / 0", "", True, False), ("unit.per_units", "0", "", True, False)]


def test_a_parameter_change_diffs_as_repriced_rates_and_simulates_and_publishes_as_written(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        rate = pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="k * 2", per_units="10"))
        first = _draft(client, set_parameters={"k": "1"}, upsert_rates=[rate])
        second = _draft(client, set_parameters={"k": "1.5"}, upsert_rates=[rate])
        answer = _diff(client, first, second)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters] == [
            ("k", "1", "1.5", pricing_pb2.CHANGED)
        ]
        assert _rate_changes(answer) == [
            ("u", {}, pricing_pb2.REPRICED, [_same("unit.price", "k * 2", "k * 2", "2", "3")])
        ]
        # `first` prices u as version 1 does, written differently: CHANGED, the prices the same.
        assert _rate_changes(_diff(client, 1, first)) == [
            ("u", {}, pricing_pb2.CHANGED, [_same("unit.price", "2", "k * 2", "2", "2")])
        ]


def test_usage_a_version_cannot_price_is_refused_naming_the_customer_the_product_and_the_hour(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        no_p = _draft(client, remove_rates=[pricing_pb2.RateKey(product_id="p")])
        # No rate is missing: validation has nothing to say about usage (the refusal comes from the usage).
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=no_p))
        assert (report.ok, list(report.findings)) == (True, [])
        code, details = refusal(lambda: _simulate(client, no_p, W))
        # Customers in id order: a's first bucket of p in the window is its 90 units on the 12th at 10:00.
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert 'customer "a"' in details and 'product "p"' in details, details
        assert "2026-01-12T10:00:00Z" in details, details
        code, details = refusal(
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=no_p, effective_from=ts(W))
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert 'customer "a"' in details and 'product "p"' in details and "2026-01-12T10:00:00Z" in details, details
        # A MAX product's usage cannot be priced again from its buckets: m's peak of 5 at 10:30 on the 12th.
        request = pricing_pb2.SimulateVersionRequest(
            rate_card_id="simx", version=2, period_start=ts(W), period_end=ts(ms("2026-02-01T00:00:00"))
        )
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="simx", version=2, effective_from=ts(W))
        for call in (lambda: client.pricing.SimulateVersion(request), lambda: client.pricing.PublishVersion(publish)):
            code, details = refusal(call)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert 'customer "m"' in details and 'product "mx"' in details, details
            assert "2026-01-12T10:00:00Z" in details, details


def test_simulate_and_diff_refuse_bad_requests_naming_the_field(server: ServerProcess) -> None:
    with server.client() as client:

        def simulate(customer_ids: list[str]) -> pricing_pb2.SimulateVersionResponse:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=2, period_start=ts(W), period_end=ts(R), customer_ids=customer_ids
            )
            answer: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
            return answer

        code, details = refusal(lambda: simulate(customer_ids=["a", "zz", "yy"]))
        assert code == grpc.StatusCode.NOT_FOUND and "'yy'" in details and "'zz'" in details, details
        code, details = refusal(lambda: simulate(customer_ids=["a", "bad id"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_ids[1]" in details, details
        flipped = pricing_pb2.SimulateVersionRequest(rate_card_id=CARD, version=2, period_start=ts(R), period_end=ts(W))
        code, details = refusal(lambda: client.pricing.SimulateVersion(flipped))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_end" in details, details
        code, details = refusal(lambda: _simulate(client, 99, W))
        assert code == grpc.StatusCode.NOT_FOUND and "99" in details, details
        # A window off the hour takes in its whole hours: 10:30 to 10:31 on the 12th is the 10:00 hour.
        narrow = pricing_pb2.SimulateVersionRequest(
            rate_card_id=CARD,
            version=2,
            period_start=ts(ms("2026-01-12T10:30:00")),
            period_end=ts(ms("2026-01-12T10:31:00")),
            customer_ids=["c", "c"],
        )
        assert {k[1] for k in _amounts(client.pricing.SimulateVersion(narrow))} == set("fgpuv")
        code, details = refusal(lambda: _diff(client, 0, 2))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        code, details = refusal(lambda: _diff(client, 1, 99))
        assert code == grpc.StatusCode.NOT_FOUND and "99" in details, details
        assert not _diff(client, 2, 2).rates and not _diff(client, 2, 2).parameters


def test_get_balance_of_the_running_period_moves_by_the_simulated_delta(server: ServerProcess) -> None:
    """Card `simnow` (USD) with `sim`'s prices: version 1 in force since 2025-12-01, version 2 a draft. Customer
    `n`, from six hours before this hour, with a grant of 215: 30 small five hours ago, 10 small three hours ago:
    u 6 + 2, g 40 + 10, v 40 + 10, p 9 + 3, f 100: 220 charged, 5 overage. Simulated from four hours ago, the 10
    units: u 2 -> 3, g p2(40) - p2(30) = 10, v pv2(40) - pv2(30) = 80 - 60 = 20, p 16 - 12 = 4, f 0; published
    from then, the period's charges are 232 and its overage 17."""
    hour = this_hour_ms()
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="simnow", pricing_unit="USD"))
        for version in (1, 2):
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="simnow", upsert_rates=_rates(version))
            )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="simnow", version=1, effective_from=ts(ms("2025-12-01T00:00:00"))
            )
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="n", name="n"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-n",
                customer_id="n",
                rate_card_id="simnow",
                starting_at=ts(hour - 6 * HOUR_MS),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
        _grant(client, "n", "215")
        _use(client, "n", [("1", hour - 5 * HOUR_MS, 30, "x"), ("2", hour - 3 * HOUR_MS, 10, "x")])
        balance = client.get_balance("n")
        assert (balance.period_charges, balance.overage_amount) == ("220", "5")
        request = pricing_pb2.SimulateVersionRequest(
            rate_card_id="simnow",
            version=2,
            period_start=ts(hour - 4 * HOUR_MS),
            period_end=ts(hour + HOUR_MS),
            customer_ids=["n", "a"],  # a has no usage of this card: no amounts
        )
        assert _amounts(client.pricing.SimulateVersion(request)) == {
            ("n", "f"): ("0", "0", "0"),
            ("n", "g"): ("10", "10", "0"),
            ("n", "p"): ("3", "4", "1"),
            ("n", "u"): ("2", "3", "1"),
            ("n", "v"): ("10", "20", "10"),
        }
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="simnow", version=2, effective_from=ts(hour - 4 * HOUR_MS))
        )
        assert _counts(done) == (1, 5, 1, "12", 0, 0, "0")
        balance = client.get_balance("n")
        assert (balance.period_charges, balance.overage_amount, _remaining(client, "n")) == ("232", "17", "0")
