"""A grant with a rollover_fraction lasts until the end of the billing period in which it starts (contracts.proto,
Grant.rollover_fraction): usage dated after that end is not paid from it, even when it arrives before the clock has
rolled the grant over. Over the wire against a real server, amounts computed by hand: one product at 1 credit a
unit, an ALLOW contract with overage at 1 USD, a period boundary a few seconds from now."""

from __future__ import annotations

import grpc
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal
from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_credits_wire import (
    DAY_MS,
    breakage,
    catalogue,
    grant,
    grants_of,
    period_anchor_ms,
    totals,
    work,
)


def customer_with_a_period_ending_soon(client: TariffClient, customer_id: str, **contract: object) -> int:
    """A customer and its contract on the catalogue's card whose billing period ends about 4 s from now (the
    contract starts a month before that end); returns the period's end, in ms."""
    period_end_ms = (now_ms() // 1000 + 4) * 1000
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}",
            customer_id=customer_id,
            rate_card_id="card",
            starting_at=stamp(period_anchor_ms(period_end_ms)),
            **contract,  # type: ignore[arg-type]
        )
    )
    return period_end_ms


def test_usage_dated_after_the_period_end_is_not_paid_from_a_grant_that_rolls_over_there(
    server_factory: ServerFactory,
) -> None:
    """Grant R: 10 credits, rollover_fraction 0.5, the customer's only grant. 4 units dated 1 s after the period's
    end, ingested before it: R cannot pay them (they fall after its last usable instant), so they are 4 credits of
    overage in the new period (4 USD due); R keeps its 10, and at the end 5 roll over into rollover-R-<end> and 5
    break (not 3 and 3, as when R paid the 4). Authorize agrees: before the end R's 10 are available, after the
    rollover the ROLLOVER grant's 5."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        period_end_ms = customer_with_a_period_ending_soon(
            client, "ru", overage_policy=contracts_pb2.ALLOW, overage_price="1", currency="USD"
        )
        grant(client, "ru", "R", "10", starts_at_ms=now_ms() - 1000, rollover_fraction="0.5")
        assert client.ingest_batch([work("late", "ru", 4, period_end_ms + 1000)]).accepted == 1
        assert now_ms() < period_end_ms, "the scenario needs the event in before the period's end"
        assert grants_of(client, "ru")["R"] == ("0", "10", "0", "0", "0")
        decision = client.authorize("ru", "work", values={"n": 10})
        assert (decision.reason, decision.credits_available) == ("OK", "10")
        rolled = f"rollover-R-{period_end_ms}"
        assert wait_for(lambda: rolled in grants_of(client, "ru"), 15)
        grants = grants_of(client, "ru")
        # Nothing left, 5 broke; GetBalance counts the 5 moved into the ROLLOVER grant as R's drawn (they left it).
        assert grants["R"] == ("5", "0", "0", "5", "0")
        assert grants[rolled] == ("0", "5", "0", "0", "0")
        assert totals(client, "ru") == ("5", "0", "5")
        balance = client.get_balance("ru")
        assert (balance.overage_amount, balance.overage_due) == ("4", "4")
        decision = client.authorize("ru", "work", values={"n": 6})
        assert (decision.reason, decision.credits_available) == ("OVERAGE_ALLOWED", "5")


def listed(client: TariffClient, customer_id: str) -> list[tuple[str, int, str, str, str, str]]:
    """GetBalance's grants as (id, kind, amount, drawn, remaining, expired), sorted, each as often as listed."""
    grants = client.get_balance(customer_id).grants
    return sorted((g.grant_id, g.kind, g.amount, g.drawn, g.remaining, g.expired) for g in grants)


def test_a_grant_named_as_the_rollover_in_advance_keeps_its_id_and_the_rollover_gets_another(
    server_factory: ServerFactory,
) -> None:
    """Grant R: 10 credits, rollover_fraction 0.5. Before the period's end the control plane grants 1 credit under
    rollover-R-<end>, the id the ROLLOVER grant takes when free. At the end 5 roll over into a grant of its own,
    rollover-R-<end>+ (a '+' added, as to a top-up's id that is taken), 5 break: GetBalance lists three grants with
    three ids, the grant of 1 untouched; GrantCredits under the id the server gave is ALREADY_EXISTS; a restart
    (the journal replayed) shows the same."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        period_end_ms = customer_with_a_period_ending_soon(client, "ra")
        named, rolled = f"rollover-R-{period_end_ms}", f"rollover-R-{period_end_ms}+"
        grant(client, "ra", "R", "10", starts_at_ms=now_ms() - 1000, rollover_fraction="0.5")
        grant(client, "ra", named, "1", starts_at_ms=now_ms() - 1000)
        assert now_ms() < period_end_ms, "the scenario needs the grant made before the period's end"
        assert wait_for(lambda: grants_of(client, "ra")["R"][1] == "0", 15), "the server did not roll R over"
        before_restart = listed(client, "ra")
        assert before_restart == [
            ("R", contracts_pb2.PROMOTIONAL, "10", "5", "0", "5"),
            (named, contracts_pb2.PROMOTIONAL, "1", "0", "1", "0"),
            (rolled, contracts_pb2.ROLLOVER, "5", "0", "5", "0"),
        ]
        assert totals(client, "ra") == ("6", "0", "6")
        code, details = refusal(lambda: grant(client, "ra", rolled, "1"))
        assert code == grpc.StatusCode.ALREADY_EXISTS and rolled in details, details
    server.kill9()
    server.start()
    with server.client() as client:
        assert listed(client, "ra") == before_restart


def test_a_grant_under_the_id_of_a_rollover_that_made_no_grant_keeps_its_own_revenue(
    server_factory: ServerFactory,
) -> None:
    """Grant R: 10.000000000001 credits paid as many USD, rollover_fraction 0.5; 10 units drawn before the period's
    end leave 10^-12, of which nothing rolls over (half of it rounds down to 0): it breaks and no ROLLOVER grant is
    made. rollover-R-<end> is then free, and a grant of 4 paid 2 takes it; 4 units in the new period draw it. The
    revenue report recognises them at that grant's 0.5 a credit, not at R's 1: 10 + 2 recognised of 12.000000000001
    sold, nothing deferred (not 14 recognised and -2 deferred)."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        period_end_ms = customer_with_a_period_ending_soon(client, "rz")
        amount = "10.000000000001"
        grant(client, "rz", "R", amount, paid=amount, starts_at_ms=now_ms() - 1000, rollover_fraction="0.5")
        assert client.ingest_batch([work("jan", "rz", 10, now_ms())]).accepted == 1
        assert now_ms() < period_end_ms, "the scenario needs the usage in before the period's end"
        assert wait_for(lambda: breakage(client, "rz") > 0, 15), "the server did not roll R over"
        named = f"rollover-R-{period_end_ms}"
        grant(client, "rz", named, "4", paid="2", starts_at_ms=period_end_ms)
        assert client.ingest_batch([work("feb", "rz", 4, period_end_ms + 1000)]).accepted == 1
        assert grants_of(client, "rz")[named] == ("4", "0", "0", "0", "2")
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(period_anchor_ms(period_end_ms)),
                period_end=stamp(period_end_ms + 40 * DAY_MS),
                customer_id="rz",
            )
        )
        totals = report.reconciliation
        assert (totals.prepaid_sold, totals.recognized_credits) == ("12.000000000001", "12")
        assert (totals.breakage, totals.deferred_end) == ("0.000000000001", "0")
