"""The pricing team's workflow over the wire, end to end: CreateDraftVersion, ValidateVersion, SimulateVersion,
DiffVersions, PublishVersion (re-rating from an hour before usage already rated), RollbackRateCard, with
ListVersions, GetVersion and GetAuditLog along the way. The central property: what SimulateVersion says a version
charges per customer and product is what PreviewInvoice, GetBalance and ExplainLineItem show once it is published
from the window's start and its re-rating has completed. Every amount was computed by hand from pricing.proto (Rate,
SimulateVersion, PublishVersion, RollbackRateCard, DiffVersions), contracts.proto (PriceOverride, Grant) and README
"Changing prices safely", never read back from the server.

Card `pf` (USD) prices five products, each the SUM of `n` of an event type of its own name:
  version 1: pu UNIT 3 per 10; pg GRADUATED up to 10 at 1 (flat 5), then 0.5 (flat 2); pv VOLUME 1 a unit;
             pp PACKAGE 2 per started 5; pl FLAT 7.
  version 2: pu UNIT 4 per 10; pg GRADUATED up to 20 at 2 (flat 1), then 0.25 (flat 3); pv VOLUME up to 50 at 10,
             then 0.01; pp PACKAGE 3 per started 4; pl FLAT 9.
Version 1 is in force since 2025-12-01; version 2 is simulated and published from W = 2026-01-10. Contracts start
2026-01-01 (monthly, ALLOW, overage 1 USD). Card `pq` (USD) prices pu at 100 per 10 for customer z's second
contract. The server runs with `--close-grace off`: nothing closes by itself."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import refusal, serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import JAN, ms, ts
from tests.test_audit_simulate_wire import _counts

CARD = "pf"
OTHER = "pq"
PRODUCTS = ("pg", "pl", "pp", "pu", "pv")
W = ms("2026-01-10T00:00:00")
R = ms("2026-01-15T00:00:00")  # rollbacks from here
FEB = ms("2026-02-01T00:00:00")
JAN5 = ms("2026-01-05T10:00:00")
JAN12 = ms("2026-01-12T10:00:00")
JAN20 = ms("2026-01-20T10:00:00")


def _tiered(mode: pricing_pb2.TierMode, *tiers: tuple[str, str, str]) -> pricing_pb2.TieredPrice:
    return pricing_pb2.TieredPrice(
        mode=mode, tiers=[pricing_pb2.Tier(up_to=u, unit_price=p, flat_price=f) for u, p, f in tiers]
    )


def _rates(version: int) -> list[pricing_pb2.Rate]:
    if version == 1:
        pu, pp, pl = ("3", "10"), ("5", "2"), "7"
        pg = _tiered(pricing_pb2.GRADUATED, ("10", "1", "5"), ("", "0.5", "2"))
        pv = _tiered(pricing_pb2.VOLUME, ("", "1", ""))
    else:
        pu, pp, pl = ("4", "10"), ("4", "3"), "9"
        pg = _tiered(pricing_pb2.GRADUATED, ("20", "2", "1"), ("", "0.25", "3"))
        pv = _tiered(pricing_pb2.VOLUME, ("50", "10", ""), ("", "0.01", ""))
    return [
        pricing_pb2.Rate(product_id="pu", unit=pricing_pb2.UnitPrice(price=pu[0], per_units=pu[1])),
        pricing_pb2.Rate(product_id="pg", tiered=pg),
        pricing_pb2.Rate(product_id="pv", tiered=pv),
        pricing_pb2.Rate(product_id="pp", package=pricing_pb2.PackagePrice(package_size=pp[0], package_price=pp[1])),
        pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price=pl)),
    ]


def _contract(
    client: TariffClient, customer_id: str, contract_id: str, card: str, start_ms: int, end_ms: int = 0
) -> None:
    request = contracts_pb2.CreateContractRequest(
        id=contract_id,
        customer_id=customer_id,
        rate_card_id=card,
        starting_at=ts(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    if end_ms:
        request.ending_before.CopyFrom(ts(end_ms))
    client.contracts.CreateContract(request)


def _grant(client: TariffClient, grant_id: str, customer_id: str, amount: str, *products: str) -> None:
    grant = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PREPAID,
        amount=amount,
        paid_amount=amount,
        applicable_product_ids=list(products),
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def _use(client: TariffClient, customer_id: str, at_ms: int, **quantities: float) -> None:
    """One batch: one event per product, in product id order."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{at_ms}-{product}",
            customer_id=customer_id,
            event_type=product,
            timestamp_ms=at_ms,
            values={"n": n},
        )
        for product, n in sorted(quantities.items())
    ]
    ack = client.ingest_batch(events, batch_id=f"{customer_id}-{at_ms}")
    assert ack.accepted == len(events), ack.rejected


def _setup(client: TariffClient) -> None:
    for product_id in PRODUCTS:
        product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card in (CARD, OTHER):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="USD"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=_rates(1)))
    other = [pricing_pb2.Rate(product_id="pu", unit=pricing_pb2.UnitPrice(price="100", per_units="10"))]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=OTHER, upsert_rates=other))
    for card in (CARD, OTHER):
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=card, version=1, effective_from=ts(ms("2025-12-01T00:00:00"))
            )
        )
    for customer_id in "sxyz":
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    _contract(client, "x", "k-x", CARD, JAN)
    _contract(client, "y", "k-y", CARD, JAN)
    _contract(client, "z", "k-z", CARD, JAN, R)
    _contract(client, "z", "k-z2", OTHER, R)
    # s switches contracts on the same card at R: its first contract's last period ends there, the second's begins.
    _contract(client, "s", "k-s1", CARD, JAN, R)
    _contract(client, "s", "k-s2", CARD, R)
    # x: 30 credits for pg only (burnt first: the narrower product list), 40 for anything.
    _grant(client, "x-g", "x", "30", "pg")
    _grant(client, "x-all", "x", "40")
    _grant(client, "y-all", "y", "120")
    # y: pg at half price, its own prices for pu (1 per 10), pv (2 a unit, tiers dropped) and pp (10 a package).
    for override in (
        contracts_pb2.PriceOverride(id="y-g", product_id="pg", multiplier="0.5"),
        contracts_pb2.PriceOverride(id="y-u", product_id="pu", price="1"),
        contracts_pb2.PriceOverride(id="y-v", product_id="pv", price="2"),
        contracts_pb2.PriceOverride(id="y-p", product_id="pp", price="10"),
    ):
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-y", override=override))
    _use(client, "x", JAN5, pu=25, pg=8, pv=50, pp=6, pl=1)
    _use(client, "x", JAN12, pu=15, pg=10, pv=10, pp=3, pl=1)
    _use(client, "y", JAN12, pu=20, pg=12, pv=30, pp=9, pl=1)
    _use(client, "y", JAN20, pg=10)
    _use(client, "z", JAN12, pu=10)
    _use(client, "z", JAN20, pu=10)
    _use(client, "s", JAN12, pg=8)
    _use(client, "s", JAN20, pg=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-pricingflow") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, _setup)


def _simulate(
    client: TariffClient, version: int, from_ms: int, card: str = CARD
) -> pricing_pb2.SimulateVersionResponse:
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=card, version=version, period_start=ts(from_ms), period_end=ts(FEB)
    )
    answer: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
    return answer


def _amounts(answer: pricing_pb2.SimulateVersionResponse) -> dict[tuple[str, str], tuple[str, str, str]]:
    return {(a.customer_id, a.product_id): (a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts}


def _totals(answer: pricing_pb2.SimulateVersionResponse) -> tuple[str, str, str]:
    return answer.totals.current_amount, answer.totals.simulated_amount, answer.totals.delta


def _invoice(client: TariffClient, customer_id: str, start_ms: int = JAN) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=ts(start_ms))
    )
    return found


def _lines(client: TariffClient, customer_id: str, start_ms: int = JAN) -> dict[str, str]:
    return {line.line_id: line.amount for line in _invoice(client, customer_id, start_ms).lines}


def _balance(client: TariffClient, customer_id: str) -> tuple[str, str, dict[str, str]]:
    """The January period's charges and overage (the period in force now is a later one: read from the preview)
    and each grant's remaining credit."""
    invoice = _invoice(client, customer_id)
    grants = {g.grant_id: g.remaining for g in client.get_balance(customer_id).grants}
    return invoice.subtotal, invoice.overage_amount, grants


def _explained(client: TariffClient, customer_id: str, line_id: str, start_ms: int = JAN) -> tuple[str, list[str]]:
    request = invoices_pb2.ExplainLineItemRequest(customer_id=customer_id, period_start=ts(start_ms), line_id=line_id)
    answer = client.invoices.ExplainLineItem(request)
    assert not answer.next_page_token
    return answer.line_amount, [e.amount for e in answer.events]


# Before any change (version 1 throughout):
# x: pu 25 x 0.3 = 7.5, then 4.5; pg p1(8) = 13, p1(18) = 15 + 8 x 0.5 + 2 = 21: 8; pv 50, then 10; pp 2 packages
#    (6 units) = 4, 9 units still 2: 0; pl 7, then 0. Lines 12, 21, 60, 4, 7: 104. Grants: pg's 21 from x-g
#    (9 left), everything else (83) against x-all's 40: 43 overage.
# y (Jan 12): pu 20 at its own 1 per 10 = 2; pg 0.5 x p1(12) = 0.5 x 18 = 9, then 10 more on the 20th:
#    0.5 x (p1(22) - p1(12)) = 0.5 x (23 - 18) = 2.5; pv 30 x 2 = 60; pp 2 packages x 10 = 20; pl 7. 100.5, from its
#    grant of 120 (19.5 left).
# z: pu 10 x 0.3 = 3 on pf (its contract to the 15th), 10 x 10 = 100 on pq from the 15th.
BEFORE = {
    "x": {"pg": "21", "pl": "7", "pp": "4", "pu": "12", "pv": "60"},
    "y": {"pg": "11.5", "pl": "7", "pp": "20", "pu": "2", "pv": "60"},
}
# SimulateVersion of version 2 from W (the hours before W priced by version 1, as they are now):
# x: pu 15 x 0.4 = 6; pg p2(18) - p2(8) = 37 - 17 = 20; pv pv2(60) - pv2(50) = 0.6 - 500, no more than the 50 the
#    line was charged so far: -50; pp 3 x 3 - 2 x 3 = 3; pl 9 - 9 = 0.
# y: pu 2 (its own price, per_units 10 kept); pg 0.5 x p2(12) = 0.5 x 25 = 12.5, then 0.5 x (p2(22) - p2(12)) =
#    0.5 x (44.5 - 25) = 9.75; pv 60 (its own price); pp 3 packages of 4 x 10 = 30; pl 9.
# z: pu 10 x 0.4 = 4 (its pq usage is no usage of this card).
# s: p1(8) = 13 in each of its two periods (the second contract's starts at R, its quantity from 0) -> p2(8) = 17.
SIMULATED_2 = {
    ("s", "pg"): ("26", "34", "8"),
    ("x", "pg"): ("8", "20", "12"),
    ("x", "pl"): ("0", "0", "0"),
    ("x", "pp"): ("0", "3", "3"),
    ("x", "pu"): ("4.5", "6", "1.5"),
    ("x", "pv"): ("10", "-50", "-60"),
    ("y", "pg"): ("11.5", "22.25", "10.75"),
    ("y", "pl"): ("7", "9", "2"),
    ("y", "pp"): ("20", "30", "10"),
    ("y", "pu"): ("2", "2", "0"),
    ("y", "pv"): ("60", "60", "0"),
    ("z", "pu"): ("3", "4", "1"),
}
AFTER_2 = {
    "x": {"pg": "33", "pl": "7", "pp": "7", "pu": "13.5", "pv": "0"},
    "y": {"pg": "22.25", "pl": "9", "pp": "30", "pu": "2", "pv": "60"},
}


def test_simulate_then_publish_then_rollback_agree_with_previews_balances_and_explanations(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        assert {c: _lines(client, c) for c in "xy"} == BEFORE
        assert _balance(client, "x") == ("104", "43", {"x-g": "9", "x-all": "0"})
        assert _balance(client, "y") == ("100.5", "0", {"y-all": "19.5"})
        assert _lines(client, "z") == {"pu": "3"}
        assert _lines(client, "z", R) == {"pu": "100"}
        assert (_lines(client, "s"), _lines(client, "s", R)) == ({"pg": "13"}, {"pg": "13"})
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, upsert_rates=_rates(2), change_note="v2", request_id="v2"
        )
        made = client.pricing.CreateDraftVersion(draft)
        assert (made.version, made.state, made.based_on_version) == (2, pricing_pb2.DRAFT, 1)
        assert client.pricing.CreateDraftVersion(draft) == made  # a retry: the same draft
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=2))
        assert (report.ok, list(report.findings)) == (True, [])
        simulated = _simulate(client, 2, W)
        assert _amounts(simulated) == SIMULATED_2
        assert _totals(simulated) == ("152", "140.25", "-11.75")
        # Per customer the simulated deltas are what the publish moves each preview by.
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(W))
        )
        # x's 5 buckets of Jan 12, y's 5 and its Jan 20 one, z's one, s's two: 14 buckets, one event each.
        assert _counts(done) == (4, 14, 14, "-11.75", 0, 0, "0")
        assert {c: _lines(client, c) for c in "xy"} == AFTER_2
        # x: 60.5 charged; pg's 33 takes x-g's 30 and 3 of x-all, the other 27.5 x-all's: 9.5 left, no overage.
        assert _balance(client, "x") == ("60.5", "0", {"x-g": "0", "x-all": "9.5"})
        # y: 123.25 against its 120: 3.25 overage (its Jan 20 hour, the last drawn).
        assert _balance(client, "y") == ("123.25", "3.25", {"y-all": "0"})
        assert (_lines(client, "z"), _lines(client, "z", R)) == ({"pu": "4"}, {"pu": "100"})
        assert (_lines(client, "s"), _lines(client, "s", R)) == ({"pg": "17"}, {"pg": "17"})
        # Each line's prices split by version (Jan 5 at 1, Jan 12 at 2), each adjustment citing the publish's seq.
        publish_seq = next(e.seq for e in _audit(client) if e.action == "PublishVersion" and e.target.endswith("/2"))
        pv = next(line for line in _invoice(client, "x").lines if line.line_id == "pv")
        assert [(p.version, p.quantity, p.amount, p.unit_price, p.events) for p in pv.prices] == [
            (1, "50", "50", "1", 1),
            (2, "10", "-50", "-5", 1),
        ]
        assert [
            (a.journal_seq, list(a.old_versions), a.new_version, a.old_amount, a.new_amount) for a in pv.adjustments
        ] == [(publish_seq, [1], 2, "10", "-50")]
        pg = next(line for line in _invoice(client, "x").lines if line.line_id == "pg")
        assert [(c.grant_id, c.credits) for c in pg.credits_applied] == [("x-g", "30"), ("x-all", "3")]
        # Explained: x's pv line is 50 + 10 at version 1, then its Jan 12 bucket re-rated from 10 to -50.
        assert _explained(client, "x", "pv") == ("0", ["50", "10", "-60"])
        assert _explained(client, "y", "pg") == ("22.25", ["9", "2.5", "3.5", "7.25"])

        # The rollback to version 1 from R, simulated first: y's Jan 20 bucket, 9.75 -> 0.5 x (p1(22) - p1(12)), and
        # s's, 17 -> p1(8) = 13 (its second period's).
        simulated = _simulate(client, 1, R)
        assert _amounts(simulated) == {("s", "pg"): ("17", "13", "-4"), ("y", "pg"): ("9.75", "2.5", "-7.25")}
        assert _totals(simulated) == ("26.75", "15.5", "-11.25")
        rolled = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(R))
        )
        assert _counts(rolled) == (2, 2, 2, "-11.25", 0, 0, "0")
        copy = rolled.version
        assert (copy.version, copy.state, copy.based_on_version, copy.rollback_to_version) == (
            3,
            pricing_pb2.PUBLISHED,
            1,
            1,
        )
        assert (copy.rollback_from_version, copy.effective_from.ToMilliseconds()) == (2, R)
        assert _lines(client, "y")["pg"] == "15"
        # y's Jan 20 hour back at 2.5: the overage given back first, then 4 credits.
        assert _balance(client, "y") == ("116", "0", {"y-all": "4"})
        assert (_lines(client, "s"), _lines(client, "s", R)) == ({"pg": "17"}, {"pg": "13"})
        # Explained, oldest first: the events, then each re-rating's adjustments (journal order, then hour).
        assert _explained(client, "y", "pg") == ("15", ["9", "2.5", "3.5", "7.25", "-7.25"])
        assert _explained(client, "s", "pg", R) == ("13", ["13", "4", "-4"])
        assert _explained(client, "s", "pg") == ("17", ["13", "4"])
        assert _lines(client, "x") == AFTER_2["x"]
        # A retry (and one naming no hour: the copy is in force now) answers the copy, changing nothing.
        entries = _audit(client)
        for retry in (
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(R)),
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1),
        ):
            again = client.pricing.RollbackRateCard(retry)
            assert (again.version.version, _counts(again)) == (3, (0, 0, 0, "0", 0, 0, "0"))
        assert _audit(client) == entries
        assert _lines(client, "y")["pg"] == "15"
        # A retried publish of version 2 (same hour, or none) answers as the first, re-rating nothing.
        for hour in (ts(W), None):
            again = client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=hour)
            )
            assert (again.version.version, again.validation.ok, _counts(again)) == (2, True, (0, 0, 0, "0", 0, 0, "0"))
        assert _audit(client) == entries
        # Another hour: FAILED_PRECONDITION naming the hour it is in force from.
        code, details = refusal(
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(R))
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "2026-01-10T00:00:00Z" in details, details
        # Rolling back to version 1 again from R: its prices are in force (copy 3): refused, naming it.
        code, details = refusal(
            lambda: client.pricing.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=3, effective_from=ts(R))
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 3" in details, details
        assert _audit(client) == entries
        # The audit log of the card: the drafts, the publishes and the rollback, in order, the rollback's diff
        # naming the copy and both versions.
        log = [(e.action, e.target) for e in entries]
        assert log == [
            ("CreateRateCard", "rate_card/pf"),
            ("CreateDraftVersion", "rate_card/pf/version/1"),
            ("PublishVersion", "rate_card/pf/version/1"),
            ("CreateDraftVersion", "rate_card/pf/version/2"),
            ("PublishVersion", "rate_card/pf/version/2"),
            ("RollbackRateCard", "rate_card/pf/version/3"),
        ]
        rollback = [e for e in entries if e.action == "RollbackRateCard"]
        assert len(rollback) == 1
        diff = json.loads(rollback[0].diff)
        assert (diff["version"], diff["rollback_from"], diff["rollback_to"], diff["effective_from_ms"]) == (3, 2, 1, R)
        # A second rollback, to version 2 from the same hour: copy 4 takes y and s back to what version 2 charged,
        # their balances with them.
        again = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=2, effective_from=ts(R))
        )
        assert _counts(again) == (2, 2, 2, "11.25", 0, 0, "0")
        copy = again.version
        assert (copy.version, copy.based_on_version, copy.rollback_to_version, copy.rollback_from_version) == (
            4,
            2,
            2,
            3,
        )
        assert _balance(client, "y") == ("123.25", "3.25", {"y-all": "0"})
        assert (_lines(client, "y"), _lines(client, "s", R)) == (AFTER_2["y"], {"pg": "17"})
        assert not _diff(client, 2, 4).rates and _diff(client, 3, 4) == _diff(client, 1, 2)
        diffs = [json.loads(e.diff) for e in _audit(client) if e.action == "RollbackRateCard"]
        assert [(d["version"], d["rollback_from"], d["rollback_to"]) for d in diffs] == [(3, 2, 1), (4, 3, 2)]


def _audit(client: TariffClient) -> list[pricing_pb2.AuditEntry]:
    answer = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000, target=f"rate_card/{CARD}"))
    return list(answer.entries)


Field = tuple[str, str, str, str, str, bool, bool]


def _fields(change: pricing_pb2.RateChange) -> list[Field]:
    return [
        (f.path, f.old_formula, f.new_formula, f.old_price, f.new_price, f.has_old, f.has_new) for f in change.fields
    ]


def _diff(client: TariffClient, from_version: int, to_version: int) -> pricing_pb2.DiffVersionsResponse:
    request = pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=from_version, to_version=to_version)
    answer: pricing_pb2.DiffVersionsResponse = client.pricing.DiffVersions(request)
    return answer


# Version 1 to version 2, by hand, by product id: every field whose text or price differs, to_version's order.
DIFF_1_2: list[tuple[str, int, list[Field]]] = [
    (
        "pg",
        pricing_pb2.CHANGED,
        [
            ("tiered.tiers[0].up_to", "10", "20", "10", "20", True, True),
            ("tiered.tiers[0].unit_price", "1", "2", "1", "2", True, True),
            ("tiered.tiers[0].flat_price", "5", "1", "5", "1", True, True),
            ("tiered.tiers[1].unit_price", "0.5", "0.25", "0.5", "0.25", True, True),
            ("tiered.tiers[1].flat_price", "2", "3", "2", "3", True, True),
        ],
    ),
    ("pl", pricing_pb2.CHANGED, [("flat.price", "7", "9", "7", "9", True, True)]),
    (
        "pp",
        pricing_pb2.CHANGED,
        [
            ("package.package_size", "5", "4", "5", "4", True, True),
            ("package.package_price", "2", "3", "2", "3", True, True),
        ],
    ),
    ("pu", pricing_pb2.CHANGED, [("unit.price", "3", "4", "3", "4", True, True)]),
    (
        "pv",
        pricing_pb2.CHANGED,
        [
            # Version 1's only tier is unbounded (no price), version 2's first ends at 50.
            ("tiered.tiers[0].up_to", "", "50", "", "50", True, True),
            ("tiered.tiers[0].unit_price", "1", "10", "1", "10", True, True),
            # Only version 2 has a second tier: unbounded, 0.01, no flat fee ("0").
            ("tiered.tiers[1].up_to", "", "", "", "", False, True),
            ("tiered.tiers[1].unit_price", "", "0.01", "", "0.01", False, True),
            ("tiered.tiers[1].flat_price", "", "", "", "0", False, True),
        ],
    ),
]


def test_diff_describes_exactly_the_two_versions_both_ways(server: ServerProcess) -> None:
    with server.client() as client:
        _ensure_version_2(client)
        answer = _diff(client, 1, 2)
        assert not answer.parameters
        assert [(r.key.product_id, r.kind, _fields(r)) for r in answer.rates] == DIFF_1_2
        swapped = [(p, k, [(f[0], f[2], f[1], f[4], f[3], f[6], f[5]) for f in fields]) for p, k, fields in DIFF_1_2]
        assert [(r.key.product_id, r.kind, _fields(r)) for r in _diff(client, 2, 1).rates] == swapped
        # Each change carries both rates whole.
        pv = _diff(client, 1, 2).rates[4]
        assert (pv.old_rate, pv.new_rate) == (_rates(1)[2], _rates(2)[2])
        # A parameter rename with a rate written over it: the parameter REMOVED and ADDED, the rate CHANGED; a
        # rate removed lists its every field; a tier mode alone changes a rate with no fields.
        mode_only = pricing_pb2.Rate(
            product_id="pv", tiered=_tiered(pricing_pb2.GRADUATED, ("50", "10", ""), ("", "0.01", ""))
        )
        first = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=2,
                set_parameters={"a": "1.50"},
                upsert_rates=[pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price="a * 6"))],
            )
        ).version
        second = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=first,
                set_parameters={"b": "1.5"},
                remove_parameters=["a"],
                upsert_rates=[
                    pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price="b * 6")),
                    mode_only,
                ],
                remove_rates=[pricing_pb2.RateKey(product_id="pu")],
            )
        ).version
        answer = _diff(client, first, second)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters] == [
            ("a", "1.50", "", pricing_pb2.REMOVED),
            ("b", "", "1.5", pricing_pb2.ADDED),
        ]
        assert [(r.key.product_id, r.kind, _fields(r)) for r in answer.rates] == [
            ("pl", pricing_pb2.CHANGED, [("flat.price", "a * 6", "b * 6", "9", "9", True, True)]),
            (
                "pu",
                pricing_pb2.REMOVED,
                [
                    ("unit.price", "4", "", "4", "", True, False),
                    ("unit.per_units", "10", "", "10", "", True, False),
                ],
            ),
            ("pv", pricing_pb2.CHANGED, []),
        ]
        # Only the parameter's text changing ("1.50" to "1.5"): the parameter CHANGED, the rate over it left out
        # (written the same, priced the same).
        third = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=first, set_parameters={"a": "1.5"}
            )
        ).version
        answer = _diff(client, first, third)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters] == [
            ("a", "1.50", "1.5", pricing_pb2.CHANGED)
        ]
        assert list(answer.rates) == []
        # With a = 2 the rate over it is REPRICED: 9 to 12.
        fourth = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=first, set_parameters={"a": "2"})
        ).version
        assert [(r.key.product_id, r.kind, _fields(r)) for r in _diff(client, first, fourth).rates] == [
            ("pl", pricing_pb2.REPRICED, [("flat.price", "a * 6", "a * 6", "9", "12", True, True)])
        ]


def _ensure_version_2(client: TariffClient) -> None:
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, upsert_rates=_rates(2), change_note="v2", request_id="v2"
    )
    assert client.pricing.CreateDraftVersion(draft).version == 2


def _violations(code_details: tuple[grpc.StatusCode, str]) -> tuple[grpc.StatusCode, list[str]]:
    """The status and the fields a refusal names ("field: why; field: why")."""
    code, details = code_details
    return code, [part.split(": ", 1)[0] for part in details.split("; ")]


def test_a_parameter_name_that_is_no_identifier_is_refused_by_create_draft_version(server: ServerProcess) -> None:
    """pricing.proto and the README's limits said such a name was a ValidateVersion finding; the engine has always
    refused it when the draft is made (INVALID_ARGUMENT naming set_parameters[name]), so no version can hold one."""
    with server.client() as client:
        latest = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version
        for name in ("1k", "a-b", ""):
            request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, set_parameters={name: "1"})
            code, details = refusal(lambda request=request: client.pricing.CreateDraftVersion(request))  # type: ignore[misc]
            assert (code, details.startswith(f"set_parameters[{name}]: ")) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                True,
            ), details
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == latest


def test_validate_refuses_what_publish_refuses_and_accepts_what_it_accepts(server: ServerProcess) -> None:
    """Card `pz`, with no usage: a draft with errors is listed by ValidateVersion and refused by PublishVersion and
    SimulateVersion naming the same fields; a draft with only a warning (no rates) validates and publishes."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="pz", pricing_unit="USD"))
        rates = [
            # 999999999999999999.9999999999999999999 rounds to 10^18: out of range.
            pricing_pb2.Rate(
                product_id="pu", unit=pricing_pb2.UnitPrice(price="999999999999999999.9999999999999999999 * 1")
            ),
            pricing_pb2.Rate(product_id="pg", tiered=_tiered(pricing_pb2.GRADUATED, ("10", "1", ""), ("5", "1", ""))),
            pricing_pb2.Rate(
                product_id="pp", package=pricing_pb2.PackagePrice(package_size="k - 1", package_price="1")
            ),
            pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price="1 / (k - 1)")),
        ]
        broken = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="pz", set_parameters={"k": "1"}, upsert_rates=rates)
        ).version
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="pz", version=broken))
        paths = [f.path for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert (report.ok, paths) == (
            False,
            [
                "rates[0].unit.price",
                "rates[1].tiered.tiers[1].up_to",
                "rates[1].tiered.tiers",
                "rates[2].package.package_size",
                "rates[3].flat.price",
            ],
        )
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="pz", version=broken)
        expected = (grpc.StatusCode.INVALID_ARGUMENT, [f"version.{p}" for p in paths])
        assert _violations(refusal(lambda: client.pricing.PublishVersion(publish))) == expected
        simulate = pricing_pb2.SimulateVersionRequest(
            rate_card_id="pz", version=broken, period_start=ts(W), period_end=ts(FEB)
        )
        assert _violations(refusal(lambda: client.pricing.SimulateVersion(simulate))) == expected
        assert client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="pz", version=broken)).state == (
            pricing_pb2.DRAFT
        )
        # No rates: a warning only. Validates (ok) and publishes, the publish's validation saying the same.
        empty = client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="pz")).version
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="pz", version=empty))
        assert (report.ok, [(f.severity, f.path) for f in report.findings]) == (True, [(pricing_pb2.WARNING, "rates")])
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="pz", version=empty, effective_from=ts(W))
        )
        assert (done.version.state, done.validation) == (pricing_pb2.PUBLISHED, report)
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="pz"))
        assert (card.latest_version, card.current_version) == (2, 2)


def test_each_bad_request_gets_its_status_naming_the_field(server: ServerProcess) -> None:
    with server.client() as client:
        _ensure_version_2(client)
        p = client.pricing
        half_past = ts(W + 1_800_000)
        cases = [
            (
                lambda: p.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD)),
                "INVALID_ARGUMENT",
                "version",
            ),
            (
                lambda: p.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=99)),
                "NOT_FOUND",
                "99",
            ),
            (
                lambda: p.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="nope", version=1)),
                "NOT_FOUND",
                "nope",
            ),
            (
                lambda: p.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=99)),
                "NOT_FOUND",
                "99",
            ),
            (
                lambda: p.PublishVersion(
                    pricing_pb2.PublishVersionRequest(rate_card_id="pz", version=1, effective_from=half_past)
                ),
                "INVALID_ARGUMENT",
                "effective_from",
            ),
            (
                lambda: p.RollbackRateCard(
                    pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=half_past)
                ),
                "INVALID_ARGUMENT",
                "effective_from",
            ),
            (
                lambda: p.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD)),
                "INVALID_ARGUMENT",
                "to_version",
            ),
            (
                lambda: p.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=99)),
                "NOT_FOUND",
                "99",
            ),
            (
                lambda: p.RollbackRateCard(
                    pricing_pb2.RollbackRateCardRequest(
                        rate_card_id=CARD, to_version=1, effective_from=ts(ms("2025-11-01T00:00:00"))
                    )
                ),
                "FAILED_PRECONDITION",
                "2025-11-01T00:00:00Z",
            ),
            (lambda: p.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD)), "INVALID_ARGUMENT", "version"),
            (
                lambda: p.GetVersion(
                    pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(ms("2025-11-01T00:00:00")))
                ),
                "NOT_FOUND",
                CARD,
            ),
            (
                lambda: p.DiffVersions(pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, to_version=1)),
                "INVALID_ARGUMENT",
                "from_version",
            ),
            (
                lambda: p.DiffVersions(
                    pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=98)
                ),
                "NOT_FOUND",
                "98",
            ),
            (
                lambda: p.SimulateVersion(
                    pricing_pb2.SimulateVersionRequest(rate_card_id=CARD, version=1, period_end=ts(FEB))
                ),
                "INVALID_ARGUMENT",
                "period_start",
            ),
            (
                lambda: p.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD, page_token="x")),
                "INVALID_ARGUMENT",
                "page_token",
            ),
            (
                lambda: p.CreateDraftVersion(
                    pricing_pb2.CreateDraftVersionRequest(
                        rate_card_id=CARD, based_on_version=1, remove_rates=[pricing_pb2.RateKey(product_id="nope")]
                    )
                ),
                "INVALID_ARGUMENT",
                "remove_rates[0]",
            ),
            (
                lambda: p.CreateDraftVersion(
                    pricing_pb2.CreateDraftVersionRequest(
                        rate_card_id=CARD, based_on_version=1, remove_parameters=["nope"]
                    )
                ),
                "INVALID_ARGUMENT",
                "remove_parameters",
            ),
            (
                lambda: p.CreateDraftVersion(
                    pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, request_id="v2")
                ),
                "ALREADY_EXISTS",
                "v2",
            ),
        ]
        before = len(_audit(client))
        for index, (call, status, named) in enumerate(cases):
            code, details = refusal(call)
            assert (index, code.name, named in details) == (index, status, True), details
        assert len(_audit(client)) == before


def test_simulate_over_two_periods_and_an_override_added_late_is_what_the_publish_rerates(
    server: ServerProcess,
) -> None:
    """Card `pt` (USD): pg at version 1's prices since 2025-11-01, version 2 (pg at version 2's) a draft. t's contract
    starts 2025-12-01: 8 units on Dec 10, 10 on Dec 20, 5 on Jan 5. Simulated from Dec 15: Dec 20 p2(18) - p2(8) =
    20 (was p1(18) - p1(8) = 8), and Jan 5 opens a period: p2(5) = 11 (was p1(5) = 10): 18 -> 31.
    u's contract starts Jan 1: 8 units on Jan 5 (p1(8) = 13), then pg at half price (an override from the contract's
    start, added after), then 10 on Jan 12: 0.5 x (p1(18) - p1(8)) = 4. Simulated from W: the walk prices Jan 5 at
    0.5 x 13 = 6.5 now, 6.5 less than it was charged, which Jan 12 carries: 0.5 x (p2(18) - p2(8)) - 6.5 = 3.5, the
    line 16.5 (0.5 x (13 + 20), as rating on time with the override and the new timeline)."""
    dec = ms("2025-12-01T00:00:00")
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="pt", pricing_unit="USD"))
        for version in (1, 2):
            rates = [r for r in _rates(version) if r.product_id == "pg"]
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="pt", upsert_rates=rates)
            )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="pt", version=1, effective_from=ts(ms("2025-11-01T00:00:00"))
            )
        )
        for customer_id, start_ms in (("t", dec), ("u", JAN)):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
            _contract(client, customer_id, f"k-{customer_id}", "pt", start_ms)
        _use(client, "t", ms("2025-12-10T10:00:00"), pg=8)
        _use(client, "t", ms("2025-12-20T10:00:00"), pg=10)
        _use(client, "t", JAN5, pg=5)
        _use(client, "u", JAN5, pg=8)
        override = contracts_pb2.PriceOverride(id="u-g", product_id="pg", multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-u", override=override))
        _use(client, "u", JAN12, pg=10)
        assert (_lines(client, "t", dec), _lines(client, "t"), _lines(client, "u")) == (
            {"pg": "21"},
            {"pg": "10"},
            {"pg": "17"},
        )

        def simulated(customer_id: str, from_ms: int) -> dict[tuple[str, str], tuple[str, str, str]]:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id="pt", version=2, period_start=ts(from_ms), period_end=ts(FEB), customer_ids=[customer_id]
            )
            return _amounts(client.pricing.SimulateVersion(request))

        assert simulated("t", ms("2025-12-15T00:00:00")) == {("t", "pg"): ("18", "31", "13")}
        assert simulated("u", W) == {("u", "pg"): ("4", "3.5", "-0.5")}
        # Published from W: t's Jan 5 (4 -> ... its Dec 20 is before W, left) and u's Jan 12.
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="pt", version=2, effective_from=ts(W))
        )
        assert _lines(client, "u") == {"pg": "16.5"}
        assert done.customers_rerated == 1 and done.rerated_amount_delta == "-0.5", done


def test_a_refused_rollback_and_cohort_publish_retries_change_nothing(server: ServerProcess) -> None:
    """On `pf` (after the main test: version 2 from W, copy 3 of version 1 then copy 4 of version 2 from R), a version without pg's rate is
    published from 2027 (no usage then); rolling back to it from R would re-rate s's and y's pg on Jan 20, which
    it has no rate for: FAILED_PRECONDITION naming the first customer, s, pg and the hour, and no copy is left behind (the next
    draft takes the next number, the audit log holds no rollback)."""
    with server.client() as client:
        _ensure_version_2(client)
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        no_pg = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, remove_rates=[pricing_pb2.RateKey(product_id="pg")]
            )
        ).version
        assert no_pg == len(versions) + 1
        y2027 = ms("2027-01-01T00:00:00")
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=no_pg, effective_from=ts(y2027))
        )
        entries = _audit(client)
        lines = {c: _lines(client, c) for c in "xy"}
        code, details = refusal(
            lambda: client.pricing.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=no_pg, effective_from=ts(R))
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert 'customer "s"' in details and 'product "pg"' in details and "2026-01-20T10:00:00Z" in details, details
        assert (_audit(client), {c: _lines(client, c) for c in "xy"}) == (entries, lines)
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert card.latest_version == no_pg
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD, page_size=2))
        assert [v.version for v in listed.versions] == [1, 2] and listed.next_page_token == "2"
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(y2027 - 1)))
        assert (at.version, at.rollback_to_version, at.rollback_from_version) == (4, 2, 3)
        # From 2027, a rollback to version 1 needs no re-rating: copy no_pg + 1.
        rolled = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(y2027))
        )
        assert (rolled.version.version, rolled.version.rollback_from_version) == (no_pg + 1, no_pg)

        # A cohort publish on `pz`, retried with the same cohort written another way: the same answer.
        draft = client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="pz")).version
        first = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="pz",
                version=draft,
                effective_from=ts(y2027),
                cohort=pricing_pb2.Cohort(customer_ids=["y", "x", "x"]),
            )
        )
        assert list(first.version.cohort.customer_ids) == ["x", "y"]
        again = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="pz",
                version=draft,
                effective_from=ts(y2027),
                cohort=pricing_pb2.Cohort(customer_ids=["x", "y"]),
            )
        )
        assert again == first
        for other in (pricing_pb2.Cohort(customer_ids=["x"]), None):
            code, details = refusal(
                lambda other=other: client.pricing.PublishVersion(  # type: ignore[misc]
                    pricing_pb2.PublishVersionRequest(
                        rate_card_id="pz", version=draft, effective_from=ts(y2027), cohort=other
                    )
                )
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION, details


def test_a_formula_prices_the_parameter_it_names_not_another_written_alike(server: ServerProcess) -> None:
    """A formula names a parameter by its text. Python's grammar, which formulas are parsed with, reads a name in
    its compatibility form (NFKC): "ﬁ" (the ligature, U+FB01) is read as "fi". So a draft with ﬁ = 2 and fi = 5
    and a flat price of "ﬁ * 1" validated, diffed and would publish at 5, the other parameter's value; and "ﬁ * 1"
    with fi alone priced fi. Such a name, and a price written with such characters, are refused at
    CreateDraftVersion (INVALID_ARGUMENT naming the field), nothing made."""
    with server.client() as client:
        latest = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version
        flat = pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price="\ufb01 * 1"))
        for parameters, field in (
            ({"\ufb01": "2", "fi": "5"}, "set_parameters[\ufb01]"),
            ({"fi": "5"}, "upsert_rates[0].flat.price"),
        ):
            request = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters=parameters, upsert_rates=[flat]
            )
            code, details = refusal(lambda request=request: client.pricing.CreateDraftVersion(request))  # type: ignore[misc]
            assert (code, details.split(": ", 1)[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field), details
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == latest
        # A name in another script, written in its normal form, is a name like any other: café = 3 prices 3.
        cafe = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                set_parameters={"café": "3"},
                upsert_rates=[pricing_pb2.Rate(product_id="pl", flat=pricing_pb2.FlatPrice(price="café * 1"))],
            )
        ).version
        (change,) = _diff(client, 1, cafe).rates
        assert _fields(change) == [("flat.price", "7", "café * 1", "7", "3", True, True)]
