"""An acceptance audit (2) of alerts over the wire against real servers (alerts.proto, README "Watching balances and
alerts"), covering what tests/test_audit_alerts_wire.py does not:

- thresholds met exactly: SPEND_THRESHOLD fires when period_charges *reaches* it (equal included), LOW_BALANCE only
  when credits_available falls *below* it (equal is not below), CREDITS_EXHAUSTED at exactly 0;
- spend over several products: SPEND_THRESHOLD reads the period's charges of every product together, and a rule
  for every customer fires beside the customer's own at its own threshold;
- a re-rating (a retroactive publish) that gives credit back clears a fired LOW_BALANCE, so falling below again
  fires it a second time; one that lowers the charges exactly to a SPEND_THRESHOLD does not clear it (equal is not
  below), so the threshold does not fire again that period;
- every refusal of CreateAlert and ListAlertRules names its field, and creates nothing, over the wire and through
  `tariff alerts create`.

The catalogue is tests/test_audit_invoices_wire.py's, in credits: product `unit` at 1 per 1,000 units, `pack` at 3
per started 10.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_alerts_wire import alerts_until, marked, marker, rule
from tests.test_audit_invoices_wire import CARD, customer, ts
from tests.test_cli import tariff

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-alerts2") / "data", extra_args=["--close-grace", "off"])
    process.start()
    with marked(process) as client:
        customer(client, "refused-cli", "USD", "1")  # the customer `tariff alerts create` is refused rules for
    yield process
    process.stop()


def spend(client: TariffClient, customer_id: str, key: str, product_id: str, units: float, at_ms: int = 0) -> None:
    """One event of `units` of `product_id` now (or at `at_ms`), acknowledged before the next."""
    event = usage_pb2.UsageEvent(
        transaction_id=key,
        customer_id=customer_id,
        event_type=product_id,
        timestamp_ms=at_ms or int(time.time() * 1000),
        dimensions={"k": "a"},
    )
    event.values["n"] = units
    ack = client.ingest_batch([event], key)
    assert ack.accepted == 1, ack.rejected


def grant(client: TariffClient, contract_id: str, credits: str, grant_id: str = "") -> None:
    made = contracts_pb2.Grant(
        id=grant_id or f"{contract_id}-g",
        contract_id=contract_id,
        kind=contracts_pb2.PREPAID,
        amount=credits,
        paid_amount=credits,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def fired(alerts: list[alerts_pb2.Alert], rules: set[str]) -> list[tuple[str, str, str, dict[str, str]]]:
    """The alerts of `rules`: rule, customer, type and details (period_start_ms left out: its own test)."""
    return [
        (
            a.rule_id,
            a.customer_id,
            alerts_pb2.AlertType.Name(a.type),
            {k: v for k, v in a.details.items() if k != "period_start_ms"},
        )
        for a in alerts
        if a.rule_id in rules
    ]


def test_thresholds_met_exactly(server: ServerProcess) -> None:
    """10 credits; LOW_BALANCE below 7, SPEND_THRESHOLD at 3, CREDITS_EXHAUSTED. 3 credits spent: charges 3 reach
    the spend threshold (it fires), available 7 is not below 7 (nothing). 0.001 more: 6.999 is below 7 (it fires).
    The other 6.999: available exactly 0 exhausts the credit (it fires); LOW_BALANCE, still holding, does not fire
    again, nor does the spend threshold at charges 10. A grant back up to exactly 7 clears LOW_BALANCE."""
    with server.client() as client:
        contract_id = customer(client, "edge", "USD", "1")
        grant(client, contract_id, "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "edge", "7")
        at = rule(client, alerts_pb2.SPEND_THRESHOLD, "edge", "3")
        out = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "edge")
        mine = {low, at, out}
        spend(client, "edge", "edge-1", "unit", 3000)
        balance = client.get_balance("edge")
        assert (balance.credits_available, balance.period_charges) == ("7", "3")
        marker(client, "edge-m1")
        first = alerts_until(client, "edge-m1")
        assert fired(first, mine) == [
            (at, "edge", "SPEND_THRESHOLD", {"period_charges": "3", "threshold": "3"}),
        ]
        spend(client, "edge", "edge-2", "unit", 1)
        spend(client, "edge", "edge-3", "unit", 6999)
        balance = client.get_balance("edge")
        assert (balance.credits_available, balance.period_charges) == ("0", "10")
        marker(client, "edge-m2")
        later = alerts_until(client, "edge-m2", first[-1].seq)
        assert fired(later, mine) == [
            (low, "edge", "LOW_BALANCE", {"credits_available": "6.999", "threshold": "7"}),
            (out, "edge", "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]
        # A grant of exactly 7 lifts the balance to the threshold: not below it, so LOW_BALANCE is cleared (and
        # CREDITS_EXHAUSTED); 0.001 spent takes it below again, and it fires a second time.
        grant(client, contract_id, "7", "edge-g2")
        spend(client, "edge", "edge-4", "unit", 1)
        assert client.get_balance("edge").credits_available == "6.999"
        marker(client, "edge-m3")
        again = alerts_until(client, "edge-m3", later[-1].seq)
        assert fired(again, mine) == [
            (low, "edge", "LOW_BALANCE", {"credits_available": "6.999", "threshold": "7"}),
        ]


def test_spend_over_several_products_is_read_together(server: ServerProcess) -> None:
    """No grant, overage allowed. 4 credits of `unit`, then `pack`: 1 package (3, charges 7), then 2 (6, charges
    10). Neither product alone reaches 10, together they do: the customer's rule at 10 fires once, with charges 10;
    a rule for every customer at 5 fires for it at charges 7, once."""
    with server.client() as client:
        customer(client, "multi", "USD", "1")
        own = rule(client, alerts_pb2.SPEND_THRESHOLD, "multi", "10")
        every = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.SPEND_THRESHOLD, threshold="5", id="every-5")
        ).id
        spend(client, "multi", "multi-1", "unit", 4000)
        spend(client, "multi", "multi-2", "pack", 5)
        spend(client, "multi", "multi-3", "pack", 15)
        spend(client, "multi", "multi-4", "unit", 1000)
        assert client.get_balance("multi").period_charges == "11"
        marker(client, "multi-m")
        seen = [a for a in alerts_until(client, "multi-m") if a.customer_id == "multi"]
        assert fired(seen, {own, every}) == [
            (every, "multi", "SPEND_THRESHOLD", {"period_charges": "7", "threshold": "5"}),
            (own, "multi", "SPEND_THRESHOLD", {"period_charges": "10", "threshold": "10"}),
        ]


def test_a_rerating_that_gives_credit_back_clears_low_balance_but_charges_equal_to_a_threshold_do_not_clear_it(
    server_factory: ServerFactory,
) -> None:
    """10 credits; LOW_BALANCE below 5, SPEND_THRESHOLD at 3. 6,000 units at 1 per 1,000: charges 6, available 4,
    both fire. Half the price from the hour of that usage on (a retroactive publish): charges 3, available 7. Credit
    is back above 5, so LOW_BALANCE is cleared; charges 3 are not below 3, so SPEND_THRESHOLD is not. 6,000 more
    units at the new price: charges 6, available 4: LOW_BALANCE fires again, SPEND_THRESHOLD does not."""
    with marked(server_factory(name="rerate", extra_args=["--close-grace", "off"])) as client:
        contract_id = customer(client, "rr", "USD", "1")
        grant(client, contract_id, "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "rr", "5")
        at = rule(client, alerts_pb2.SPEND_THRESHOLD, "rr", "3")
        used_ms = int(time.time() * 1000)
        spend(client, "rr", "rr-1", "unit", 6000, used_ms)
        half = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="0.5", per_units="1000"))
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=[half])
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=draft.version, effective_from=ts(used_ms // HOUR_MS * HOUR_MS)
            )
        )
        assert wait_for(lambda: client.get_balance("rr").credits_available == "7", 30)
        assert client.get_balance("rr").period_charges == "3"
        spend(client, "rr", "rr-2", "unit", 6000)
        balance = client.get_balance("rr")
        assert (balance.credits_available, balance.period_charges) == ("4", "6")
        marker(client, "rr-m")
        seen = alerts_until(client, "rr-m")
        both = fired(seen, {low, at})
        assert sorted(both[:2]) == sorted(
            [
                (low, "rr", "LOW_BALANCE", {"credits_available": "4", "threshold": "5"}),
                (at, "rr", "SPEND_THRESHOLD", {"period_charges": "6", "threshold": "3"}),
            ]
        )
        assert both[2:] == [(low, "rr", "LOW_BALANCE", {"credits_available": "4", "threshold": "5"})]
        # The first two in one record (the first batch), the third in a later one (the second batch).
        records = [a.journal_seq for a in seen if a.rule_id in {low, at}]
        assert records[0] == records[1] < records[2], records


def refused(call: Callable[[], object]) -> tuple[str, list[str], str]:
    with pytest.raises(TariffError) as refusal:
        call()
    error = refusal.value
    return error.code.name, [v.field for v in error.field_violations], error.details


NO_THRESHOLD = ("CREDITS_EXHAUSTED", "TOP_UP_EXECUTED", "RESERVATION_EXPIRED")


def test_every_refusal_names_its_field_and_creates_nothing(server: ServerProcess) -> None:
    """README: a missing type or scope, a missing threshold on LOW_BALANCE or SPEND_THRESHOLD ("is required for
    ..."), a threshold on a type that takes none, a negative or zero one are INVALID_ARGUMENT naming the field;
    ListAlertRules: a negative page_size, a page_token it did not issue, naming theirs."""
    with server.client() as client:
        customer(client, "refused", "USD", "1")
        before = list(client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1_000)).rules)
        request = alerts_pb2.CreateAlertRequest
        cases: list[tuple[alerts_pb2.CreateAlertRequest, str, str]] = [
            (request(type=alerts_pb2.LOW_BALANCE, threshold="5"), "scope", ""),
            (request(all=False, type=alerts_pb2.LOW_BALANCE, threshold="5"), "scope", ""),
            (request(customer_id="", type=alerts_pb2.CREDITS_EXHAUSTED), "scope", ""),
            (request(customer_id="refused"), "type", ""),
            (request(all=True, threshold="5"), "type", ""),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE), "threshold", "is required for LOW_BALANCE"),
            (request(all=True, type=alerts_pb2.SPEND_THRESHOLD), "threshold", "is required for SPEND_THRESHOLD"),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE, threshold="-0"), "threshold", ""),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE, threshold="NaN"), "threshold", ""),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE, threshold="Infinity"), "threshold", ""),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE, threshold="+5"), "threshold", ""),
            (request(customer_id="refused", type=alerts_pb2.LOW_BALANCE, threshold="9" * 30), "threshold", ""),
        ]
        for kind in NO_THRESHOLD:
            cases.append((request(customer_id="refused", type=kind, threshold="1"), "threshold", "takes no threshold"))
        for made, field, says in cases:
            code, fields, details = refused(functools.partial(client.alerts.CreateAlert, made))
            assert (code, fields) == ("INVALID_ARGUMENT", [field]), (made, details)
            assert details.startswith(f"{field}: ") and says in details, details
        listing = alerts_pb2.ListAlertRulesRequest
        for page, field in ((listing(page_size=-1), "page_size"), (listing(page_token="edge-made-up"), "page_token")):
            code, fields, _ = refused(functools.partial(client.alerts.ListAlertRules, page))
            assert (code, fields) == ("INVALID_ARGUMENT", [field])
        after = list(client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1_000)).rules)
        assert [r for r in after if r not in before] == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--customer", "refused-cli", "--type", "LOW_BALANCE"), "threshold: is required for LOW_BALANCE"),
        (("--all", "--type", "TOP_UP_EXECUTED", "--threshold", "1"), "threshold: TOP_UP_EXECUTED takes no threshold"),
        (("--customer", "refused-cli", "--type", "SPEND_THRESHOLD", "--threshold", "0"), "threshold: "),
        (("--customer", "refused cli", "--type", "CREDITS_EXHAUSTED"), "customer_id: "),
        (("--customer", "refused-cli", "--type", "CREDITS_EXHAUSTED", "--id", "a b"), "id: "),
    ],
    ids=["no-threshold", "threshold-on-event-type", "zero", "not-an-id", "bad-rule-id"],
)
def test_the_cli_prints_the_refusal_naming_its_field_in_one_line(
    server: ServerProcess, args: tuple[str, ...], said: str
) -> None:
    done = tariff(server, "alerts", "create", *args, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tariff: INVALID_ARGUMENT: ") and said in lines[0], done.stderr
