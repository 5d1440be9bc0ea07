"""docs/architecture.md §5 "The rating pipeline: from a usage batch to its ack", with "Re-rating and simulation",
"Cohorts" and "Watching balances and alerts", statement by statement over the wire, for what the other wire audits
(tests/test_audit_*_wire.py) did not already pin:

- step 3/4: an identical resend of an accepted event is a duplicate whatever the skew (a restart with a smaller
  `--future-skew-s`), while a changed one is held to the skew (TIMESTAMP_OUT_OF_RANGE, not DUPLICATE_CONFLICT);
- "Which customers a change touched" and "Alerts": CreateAlert evaluates nothing, AddOverride touches the customer
  it names (its balance rules are evaluated), and a publish that only changes its customers' buckets' version
  touches none of them yet evaluates the balance rules of every customer of its plan, in the plan's (id) order;
- step 5's order: the period (PERIOD_CLOSED) is decided before the event's products, so an event feeding no product
  or lacking its product's value is PERIOD_CLOSED in a closed period, and NO_ACTIVE_CONTRACT outside every contract;
- "Cohorts": a customer is in a cohort when it meets every criterion given (listed and matching every attribute);
- "Re-rating and simulation": SimulateVersion adds to a line's first hour in its window what the hours before were
  charged less than the timeline as it is now prices them (a late event's GRADUATED hour), and the publish from the
  window's start charges what it said.

Catalogue: products `u` (event type `u`, SUM of `n`) and `g` (event type `g`, SUM of `n`). Card `ra` (credits)
prices `u` at 1 a unit, card `rg` (credits) prices `g` GRADUATED, card `rc` (credits) `u` at 1, each in version 1
from 2025-01-01. No product has event type `unfed`. Contracts
start on 2026-01-01 (monthly, ALLOW, overage 1 USD); usage is dated January 2026 unless said otherwise, and the
server runs with `--close-grace off` (nothing closes by itself) and `--future-skew-s 3600`. Every amount is computed
by hand in the docstrings, never read back from the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, charges, open_contract, preview, refusal, serving, unit
from tests.serverproc import ServerProcess

REJECT = usage_pb2.RejectReason
FROM_2025_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
JAN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FEB_MS = 1_769_904_000_000  # 2026-02-01T00:00:00Z
JAN_5_10H_MS = JAN_MS + 4 * 24 * HOUR_MS + 10 * HOUR_MS  # 2026-01-05T10:00:00Z
STREAM_TIMEOUT_S = 20.0
# GRADUATED: up to 100 at 1 (flat 10), up to 200 at 0.5 (flat 5), beyond at 0.1 (flat 2). p(50) = 60,
# p(100) = 110, p(150) = 110 + 25 + 5 = 140, p(200) = 165.
TIERS = [("100", "1", "10"), ("200", "0.5", "5"), ("", "0.1", "2")]


def graduated(product_id: str) -> pricing_pb2.Rate:
    tiers = [pricing_pb2.Tier(up_to=up_to, unit_price=price, flat_price=flat) for up_to, price, flat in TIERS]
    return pricing_pb2.Rate(
        product_id=product_id, tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)
    )


def draft(client: TariffClient, card: str, rate: pricing_pb2.Rate, based_on: int = 0) -> int:
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=based_on, upsert_rates=[rate])
    return int(client.pricing.CreateDraftVersion(request).version)


def publish(client: TariffClient, card: str, version: int, from_ms: int) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=stamp(from_ms))
    done: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return done


def counts(done: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str]:
    return done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta


def catalogue(client: TariffClient) -> None:
    for product_id in ("u", "g"):
        product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card, rate in (("ra", unit("u", "1")), ("rg", graduated("g")), ("rc", unit("u", "1"))):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
        publish(client, card, draft(client, card, rate), FROM_2025_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("archrating") / "data"
    args = ["--close-grace", "off", "--future-skew-s", "3600"]
    yield from serving(ServerProcess(data_dir, extra_args=args), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def customer(client: TariffClient, customer_id: str, card: str) -> str:
    """`customer_id` on `card` from 2026-01-01; its contract's id."""
    return open_contract(client, customer_id, f"{customer_id}-k", JAN_MS, rate_card_id=card).id


def january(client: TariffClient, customer_id: str) -> str:
    """January 2026's charges: its draft invoice's subtotal (GetBalance reads the period in force now)."""
    return str(preview(client, customer_id, JAN_MS).subtotal)


def grant(client: TariffClient, contract_id: str, grant_id: str, credits: str) -> None:
    made = contracts_pb2.Grant(
        id=grant_id, contract_id=contract_id, kind=contracts_pb2.PREPAID, amount=credits, paid_amount=credits
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def used(tx: str, customer_id: str, event_type: str, at_ms: int, n: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=customer_id, event_type=event_type, timestamp_ms=at_ms, values={"n": n}
    )


def outcome(ack: usage_pb2.IngestAck) -> tuple[int, int, list[tuple[str, str]]]:
    """(accepted, duplicates, [(transaction id, reason) of each rejection])."""
    return ack.accepted, ack.duplicates, [(r.transaction_id, REJECT.Name(r.reason)) for r in ack.rejected]


def alerts_until(
    client: TariffClient, after_seq: int, customers: set[str], last: tuple[str, str]
) -> list[tuple[int, str, str, str, dict[str, str]]]:
    """The alerts after `after_seq` (0: every alert; this module's rules are its first test's) of `customers`, as
    (seq, customer, rule, type, details), up to and including the first of customer last[0] by rule last[1]."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=after_seq), timeout=STREAM_TIMEOUT_S)
    seen: list[tuple[int, str, str, str, dict[str, str]]] = []
    try:
        for alert in stream:
            if alert.customer_id not in customers:
                continue
            seen.append(
                (
                    alert.seq,
                    alert.customer_id,
                    alert.rule_id,
                    alerts_pb2.AlertType.Name(alert.type),
                    dict(alert.details),
                )
            )
            if (alert.customer_id, alert.rule_id) == last:
                return seen
    finally:
        stream.cancel()
    raise AssertionError(f"no alert of {last}: {seen}")


def low_balance_rule(client: TariffClient, rule_id: str, customer_id: str, threshold: str) -> None:
    request = alerts_pb2.CreateAlertRequest(
        id=rule_id, customer_id=customer_id, type=alerts_pb2.LOW_BALANCE, threshold=threshold
    )
    client.alerts.CreateAlert(request)


# "Watching balances and alerts": which customers a change touched ------------------------------------------------


def test_a_publish_changing_only_versions_evaluates_every_plan_customers_rules_and_admin_commands_their_customers(
    client: TariffClient,
) -> None:
    """§5 "Which customers a change touched": "An admin command touches the one customer it names (...
    AddOverride, ..., SetTopUpPolicy ...); CreateAlert and DeleteAlertRule touch none (... it does not fire on
    creation, even when its condition already holds) ... A customer whose buckets only changed version is re-rated
    but not touched ... The balance rules are still evaluated for every customer of the plan"; "Alerts": a rule
    fires "when its condition holds and did not at the previous evaluation"; "A fired alert takes the next alert
    sequence number".

    Customers `ov`, `qu` and `tp` on card `ra`, each a grant of 10 and 8 units on Jan 5 (8 credits drawn): 2
    available. LOW_BALANCE rules below 5, one for each, are created after: 2 < 5 holds, but nothing fires on
    creation (these are the module's first rules: no alert yet). An override of `u` at multiplier 1 on ov's
    contract touches ov: ov's rule fires (seq 1: 2 available, threshold 5). A top-up policy on tp's contract (below
    1, back to 10: 2 is not below 1, nothing bought) touches tp: tp's rule fires (seq 2). A version of `ra` with
    the same price (1 a unit) published from 2026-01-01: the three customers' Jan 5 buckets only change version
    (8 x 1 = 8 either way; the override multiplies by 1): 3 customers, 3 buckets, 3 events re-rated, net change
    "0"; none is touched, yet the plan's customers are evaluated in id order (ov, qu, tp): ov's and tp's rules
    still hold (no new alert), qu's fires for the first time (seq 3). Balances stay 2 available. Watching qu (2
    available), its rule deleted (touching no one: no balance sent), then a grant of 1: the next balance sent is
    the grant's, 3."""
    contracts = {name: customer(client, name, "ra") for name in ("ov", "qu", "tp")}
    for name, contract_id in contracts.items():
        grant(client, contract_id, f"{name}-g", "10")
        ack = client.ingest_batch([used(f"{name}-1", name, "u", JAN_5_10H_MS, 8)])
        assert outcome(ack) == (1, 0, []), ack
    for name in contracts:
        low_balance_rule(client, f"{name}-low", name, "5")
    override = contracts_pb2.PriceOverride(id="ov-same", product_id="u", multiplier="1")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contracts["ov"], override=override))
    policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="10", price_per_credit="1", max_per_period=1)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contracts["tp"], top_up=policy))
    done = publish(client, "ra", draft(client, "ra", unit("u", "1"), based_on=1), JAN_MS)
    assert counts(done) == (3, 3, 3, "0")
    fired = alerts_until(client, 0, set(contracts), ("qu", "qu-low"))
    details = {"credits_available": "2", "threshold": "5"}
    assert fired == [
        (1, "ov", "ov-low", "LOW_BALANCE", details),
        (2, "tp", "tp-low", "LOW_BALANCE", details),
        (3, "qu", "qu-low", "LOW_BALANCE", details),
    ]
    assert [client.get_balance(name).credits_available for name in contracts] == ["2", "2", "2"]
    stream = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="qu"), timeout=STREAM_TIMEOUT_S)
    balances = iter(stream)
    assert next(balances).credits_available == "2"
    client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="qu-low"))
    grant(client, contracts["qu"], "qu-g2", "1")
    after = next(balances)  # the grant's balance: the delete touched no one, so it sent nothing
    stream.cancel()
    assert after.credits_available == "3"


# Step 5: route in order, the period before the products ------------------------------------------------------------


def test_the_period_is_decided_before_the_products_so_a_closed_period_refuses_even_an_event_feeding_none(
    client: TariffClient,
) -> None:
    """§5 step 5: "The customer (UNKNOWN_CUSTOMER ...), its contract covering the event's timestamp
    (NO_ACTIVE_CONTRACT), the period of that contract containing it (PERIOD_CLOSED once it is closed), the products
    its event type feeds, and the rate card version ... (an event feeding no product is accepted before this,
    charging nothing)"; step 6 (the measure) comes after.

    "Which customers a change touched": ClosePeriod touches the customer it names: a watcher of `cl` is sent a
    balance with a later as_of_seq, its amounts alike (credits_remaining 8, period_charges 0: December's).

    `cl` on card `ra` from 2026-01-01, a grant of 10: 2 units on Jan 5, January closed (invoice subtotal 2). One
    batch:
        0  cl-u        `u` n=1, Jan 6              PERIOD_CLOSED
        1  cl-unfed    `unfed`, Jan 6              PERIOD_CLOSED (the period before the products: none)
        2  cl-novalue  `u` without n, Jan 6        PERIOD_CLOSED (before the measure: not INVALID_EVENT)
        3  cl-before   `unfed`, 2025-12-15         NO_ACTIVE_CONTRACT (no contract covers it)
        4  cl-before-u `u` without n, 2025-12-15   NO_ACTIVE_CONTRACT (before the measure)
        5  cl-feb      `unfed`, Feb 3              accepted, charging nothing (February is open)
        6  nobody-1    customer `nobody`, `unfed`  UNKNOWN_CUSTOMER
        7  cl-u        `unfed`, Feb 3              accepted: step 4, the same id "inside one batch is decided ...
                                                   against the first one accepted", and event 0 was rejected
    2 accepted; February's draft invoice: subtotal 0."""
    grant(client, customer(client, "cl", "ra"), "cl-g", "10")
    assert outcome(client.ingest_batch([used("cl-0", "cl", "u", JAN_5_10H_MS, 2)])) == (1, 0, [])
    stream = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="cl"), timeout=STREAM_TIMEOUT_S)
    balances = iter(stream)
    first = next(balances)
    closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="cl", period_start=stamp(JAN_MS)))
    assert closed.subtotal == "2"
    after_close = next(balances)
    stream.cancel()
    assert (first.credits_remaining, first.period_charges) == (
        after_close.credits_remaining,
        after_close.period_charges,
    )
    assert (after_close.credits_remaining, after_close.period_charges) == ("8", "0")
    assert first.as_of_seq < after_close.as_of_seq
    jan_6_ms, dec_15_ms, feb_3_ms = JAN_5_10H_MS + 24 * HOUR_MS, JAN_MS - 17 * 24 * HOUR_MS, FEB_MS + 2 * 24 * HOUR_MS
    novalue = used("cl-novalue", "cl", "u", jan_6_ms, 1)
    del novalue.values["n"]
    before_u = used("cl-before-u", "cl", "u", dec_15_ms, 1)
    del before_u.values["n"]
    ack = client.ingest_batch(
        [
            used("cl-u", "cl", "u", jan_6_ms, 1),
            used("cl-unfed", "cl", "unfed", jan_6_ms, 1),
            novalue,
            used("cl-before", "cl", "unfed", dec_15_ms, 1),
            before_u,
            used("cl-feb", "cl", "unfed", feb_3_ms, 1),
            used("nobody-1", "nobody", "unfed", feb_3_ms, 1),
            used("cl-u", "cl", "unfed", feb_3_ms, 1),
        ]
    )
    assert outcome(ack) == (
        2,
        0,
        [
            ("cl-u", "PERIOD_CLOSED"),
            ("cl-unfed", "PERIOD_CLOSED"),
            ("cl-novalue", "PERIOD_CLOSED"),
            ("cl-before", "NO_ACTIVE_CONTRACT"),
            ("cl-before-u", "NO_ACTIVE_CONTRACT"),
            ("nobody-1", "UNKNOWN_CUSTOMER"),
        ],
    )
    assert preview(client, "cl", FEB_MS).subtotal == "0"


# "Cohorts": every criterion given -----------------------------------------------------------------------------------


def test_a_cohort_holds_only_the_customers_meeting_every_criterion_it_gives(client: TariffClient) -> None:
    """§5 "Cohorts": "A customer is in it when it meets every criterion given"; "Re-rating a cohort publish ...
    plans and checks only the cohort's members ...; everyone else's timeline, buckets and draws are untouched".

    Customers on card `rc` (`u` at 1), each 1 unit on Jan 5: `co1` {tier: gold, region: eu}, `co2` {tier: silver,
    region: eu}, `co3` {tier: gold, region: eu}, `co4` {tier: gold, region: us}. Version 2 (`u` at 3) published from
    2026-01-01 for the cohort {customer_ids: co1, co2, co4; attributes: tier gold, region eu}: co2 is listed but
    silver, co3 matches but is not listed, co4 is listed and gold but in the us: only co1 is in it. Re-rated: 1
    customer, 1 bucket, 1 event, net change 2; January: co1 3, the others 1. A unit more each on Jan 6: co1 3 more
    (6), the others 1 more (2)."""
    attributes = {
        "co1": {"tier": "gold", "region": "eu"},
        "co2": {"tier": "silver", "region": "eu"},
        "co3": {"tier": "gold", "region": "eu"},
        "co4": {"tier": "gold", "region": "us"},
    }
    for name, attrs in attributes.items():
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=name, name=name, attributes=attrs))
        customer(client, name, "rc")
        assert outcome(client.ingest_batch([used(f"{name}-1", name, "u", JAN_5_10H_MS, 1)])) == (1, 0, [])
    cohort = pricing_pb2.Cohort(customer_ids=["co1", "co2", "co4"], attributes={"tier": "gold", "region": "eu"})
    version = draft(client, "rc", unit("u", "3"), based_on=1)
    request = pricing_pb2.PublishVersionRequest(
        rate_card_id="rc", version=version, effective_from=stamp(JAN_MS), cohort=cohort
    )
    assert counts(client.pricing.PublishVersion(request)) == (1, 1, 1, "2")
    assert {name: january(client, name) for name in attributes} == {"co1": "3", "co2": "1", "co3": "1", "co4": "1"}
    for name in attributes:
        ack = client.ingest_batch([used(f"{name}-2", name, "u", JAN_5_10H_MS + 24 * HOUR_MS, 1)])
        assert outcome(ack) == (1, 0, [])
    assert {name: january(client, name) for name in attributes} == {"co1": "6", "co2": "2", "co3": "2", "co4": "2"}


def test_a_cohort_with_an_empty_attribute_key_or_id_is_refused_naming_the_field_and_publishes_nothing(
    client: TariffClient,
) -> None:
    """§5 "Cohorts", "Checked when published (INVALID_ARGUMENT, naming the field, changing nothing): ... ids,
    attribute keys and attribute values must not be empty". A draft of `rc` published for {attributes: "" ->
    gold}, for {attributes: a -> b, "" -> ""} and for {customer_ids: "", ""}: each INVALID_ARGUMENT on
    cohort.attributes (an empty key) or cohort.customer_ids (an empty id); the draft stays a DRAFT."""
    version = draft(client, "rc", unit("u", "5"), based_on=1)
    cohorts = [
        (pricing_pb2.Cohort(attributes={"": "gold"}), "cohort.attributes"),
        (pricing_pb2.Cohort(attributes={"a": "b", "": ""}), "cohort.attributes"),
        (pricing_pb2.Cohort(customer_ids=["", ""]), "cohort.customer_ids"),
    ]
    for cohort, field in cohorts:
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id="rc", version=version, effective_from=stamp(JAN_MS), cohort=cohort
        )
        code, details = refusal(lambda: client.pricing.PublishVersion(request))  # noqa: B023
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field), details
        assert "must not be empty" in details, details
    shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="rc", version=version))
    assert shown.state == pricing_pb2.DRAFT


# "Re-rating and simulation": the carry of earlier hours, simulated and published ---------------------------------


def test_simulate_carries_a_late_events_earlier_hour_into_the_windows_first_hour_as_the_publish_charges(
    client: TariffClient,
) -> None:
    """§5 "Re-rating and simulation": a late event's hour "keeps the charge it had, priced at the top of the
    period's quantity when it arrived"; publishes carry what "the buckets before it were charged less than the walk
    prices them at"; "SimulateVersion adds to each line's first hour in its window what a publish from the window's
    start would carry", and prices "what re-rating after publishing it effective from the window's start gives".

    Customer `lt` on card `rg` (GRADUATED, module docstring): 50 units at Jan 5 10:00, 100 at 12:00, then 50 more
    at 10:30 arriving last: charged 60, p(150) - p(50) = 80 and p(200) - p(150) = 25: 165. Buckets: 10:00 holds
    100 units charged 85, 12:00 holds 100 charged 80. Version 2 prices `g` at 1 a unit (UNIT). Simulated over
    [Jan 5 11:00, Feb 1): the hour before the window is priced by the timeline as it is now, p(100) = 110, 25 more
    than it was charged; the window's 12:00 bucket by version 2: 200 - 100 = 100, plus the 25 carried: 125, against
    80 now: delta 45 (lt's row and the totals alike). Published from Jan 5 11:00: 1 customer, 1 bucket, 1 event
    re-rated, net change 45; charges 85 + 125 = 210, what rating on time charges (110 in the 10:00 hour at the
    tiers, 100 at 12:00 at 1 a unit)."""
    customer(client, "lt", "rg")
    for tx, at_ms, n in (("lt-a", JAN_5_10H_MS, 50), ("lt-b", JAN_5_10H_MS + 2 * HOUR_MS, 100)):
        assert outcome(client.ingest_batch([used(tx, "lt", "g", at_ms, n)])) == (1, 0, [])
    late = client.ingest_batch([used("lt-late", "lt", "g", JAN_5_10H_MS + HOUR_MS // 2, 50)])
    assert outcome(late) == (1, 0, [])
    assert january(client, "lt") == "165"
    version = draft(client, "rg", unit("g", "1"), based_on=1)
    window_ms = JAN_5_10H_MS + HOUR_MS
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id="rg", version=version, period_start=stamp(window_ms), period_end=stamp(FEB_MS)
    )
    answer = client.pricing.SimulateVersion(request)
    rows = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
    assert rows == [("lt", "g", "80", "125", "45")]
    totals = answer.totals
    assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("80", "125", "45")
    assert counts(publish(client, "rg", version, window_ms)) == (1, 1, 1, "45")
    assert january(client, "lt") == "210"


# Steps 3 and 4: a duplicate whatever the skew ----------------------------------------------------------------------


def test_an_identical_resend_past_a_smaller_skew_is_a_duplicate_and_a_changed_one_is_held_to_the_skew(
    server: ServerProcess,
) -> None:
    """§5 step 3: the timestamp at most `--future-skew-s` ahead, "held once step 4's lookup finds the event is no
    identical resend of an accepted one, which is a duplicate whatever the skew"; step 4: "A transaction id already
    accepted with the same content ... is counted as a duplicate and changes nothing; with different content it is
    rejected as DUPLICATE_CONFLICT".

    Under a skew of 3600 s, `sk` (card `ra`) sends 3 units stamped 30 minutes ahead: accepted, charges 3. The
    server restarts with a skew of 60 s (last in this module: it changes the module's server). The same event again
    is a duplicate (0 accepted, 1 duplicate, no rejection). The same id with 4 units, still 30 minutes ahead, is no
    resend: the skew holds first, TIMESTAMP_OUT_OF_RANGE; so is a new id 30 minutes ahead. The same id with 4 units
    stamped now is DUPLICATE_CONFLICT. Charges stay 3."""
    ahead_ms = now_ms() + 1_800_000
    with server.client() as client:
        customer(client, "sk", "ra")
        assert outcome(client.ingest_batch([used("sk-1", "sk", "u", ahead_ms, 3)])) == (1, 0, [])
        assert charges(client, "sk") == "3"
    server.terminate()
    server.extra_args = ("--close-grace", "off", "--future-skew-s", "60")
    server.start()
    with server.client() as client:
        assert outcome(client.ingest_batch([used("sk-1", "sk", "u", ahead_ms, 3)])) == (0, 1, [])
        changed = client.ingest_batch([used("sk-1", "sk", "u", ahead_ms, 4)])
        assert outcome(changed) == (0, 0, [("sk-1", "TIMESTAMP_OUT_OF_RANGE")])
        fresh = client.ingest_batch([used("sk-2", "sk", "u", ahead_ms, 3)])
        assert outcome(fresh) == (0, 0, [("sk-2", "TIMESTAMP_OUT_OF_RANGE")])
        now_stamped = client.ingest_batch([used("sk-1", "sk", "u", now_ms(), 4)])
        assert outcome(now_stamped) == (0, 0, [("sk-1", "DUPLICATE_CONFLICT")])
        assert charges(client, "sk") == "3"
