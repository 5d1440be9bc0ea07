"""An audit of what grows over a long-lived customer's life, over the wire: the grants the server makes itself
(TOP_UP purchases, at most `max_per_period` a billing period, kept for good) against GrantCredits' limit of 1,000
and against the balance's one message.

One server for the module, with `--message-mb-max 1` so that a balance reaches the limit in seconds: a top-up
grant takes about 62 bytes of a Balance, so 18 billing periods of 1,000 purchases (18,000 grants) pass 1 MiB. The
months are driven by dating each period's usage in it (the contract runs from January 2024, and usage in a past
period is rated in it, its purchases counting there): nothing of the server's clock is moved.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal, release, serving, unit
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_longrun_wire import WINDOW_MS, clock_env, hold
from tests.test_audit_longrun_wire import catalogue as longrun_catalogue
from tests.test_cli import tariff

JAN_2024_MS = 1_704_067_200_000
MIB = 1024 * 1024


def month_start_ms(months_after_jan_2024: int) -> int:
    year, month = 2024 + months_after_jan_2024 // 12, months_after_jan_2024 % 12 + 1
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def catalogue(client: TariffClient) -> None:
    """`p` (SUM of `n`) at 1 credit a unit on card `card`, from January 2024."""
    product = pricing_pb2.Product(id="p", event_type="p", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("p", "1")])
    client.pricing.CreateDraftVersion(draft)
    publish = pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_2024_MS))
    client.pricing.PublishVersion(publish)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("growth") / "data"
    yield from serving(ServerProcess(data_dir, extra_args=["--message-mb-max", "1"]), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def topping_up_customer(client: TariffClient, customer_id: str) -> None:
    """A customer on `card` from January 2024 (ALLOW) whose top-up policy buys 2 credits whenever less than 1 is
    available, at most 1,000 times a period."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    contract = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-k",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(JAN_2024_MS),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(contract)
    policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="2", price_per_credit="0.5", max_per_period=1000)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-k", top_up=policy))


def use_up(client: TariffClient, customer_id: str, months: range) -> None:
    """1,000 events of 2 units in each month of `months`: each draws what the customer has (2 credits) and buys
    the next 2, so each period ends with 1,000 purchases, the last one's 2 credits left for the next period."""
    for month in months:
        start_ms = month_start_ms(month)
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"{customer_id}-{month}-{n}",
                customer_id=customer_id,
                event_type="p",
                timestamp_ms=start_ms + 1000 + n,
                values={"n": 2},
            )
            for n in range(1000)
        ]
        assert client.ingest_batch(events).accepted == 1000


def own_grant(client: TariffClient, grant_id: str, customer_id: str) -> contracts_pb2.Grant:
    grant = contracts_pb2.Grant(id=grant_id, customer_id=customer_id, kind=contracts_pb2.PROMOTIONAL, amount="5")
    made: contracts_pb2.Grant = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return made


def test_the_grants_the_server_makes_do_not_count_toward_grantcredits_limit_and_stay_listed(
    client: TariffClient,
) -> None:
    """contracts.proto GrantCredits: "The grants the server makes (TOP_UP, ROLLOVER) do not count"; TopUpPolicy:
    "each purchase is a grant the balance lists". Three periods of 1,000 purchases of 2 credits: the first event
    of January is 2 of overage (nothing to draw) and buys 2; each later event draws the 2 the one before bought
    and buys 2 more, the 1,000th of each period's purchases left whole for the next period's first event. So
    3,000 TOP_UP grants, 2,999 of them spent (drawn 2, remaining 0), 2 credits remaining, and every one listed.
    GrantCredits then still grants (the 3,000 are not counted against its 1,000): 5 more, 7 remaining."""
    topping_up_customer(client, "steady")
    use_up(client, "steady", range(3))
    balance = client.get_balance("steady")
    assert len(balance.grants) == 3000 and {g.kind for g in balance.grants} == {contracts_pb2.TOP_UP}
    assert sum(g.remaining == "0" and g.drawn == "2" for g in balance.grants) == 2999
    assert balance.credits_remaining == "2"
    assert own_grant(client, "steady-own", "steady").id == "steady-own"
    balance = client.get_balance("steady")
    assert (len(balance.grants), balance.credits_remaining, balance.grants_left_out) == (3001, "7", 0)


def test_grantcredits_counts_every_grant_ever_given_expired_ones_too(client: TariffClient) -> None:
    """contracts.proto GrantCredits: at most 1,000 grants given by GrantCredits over the customer's life, spent and
    expired ones too (no grant is removed, so none makes room). 1,000 grants of 1 credit that ran from January to
    February 2024, long expired (the balance shows 0 remaining): another, unexpired, is RESOURCE_EXHAUSTED naming
    the limit; a retry of one held still answers."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="expired-many"))

    def request(grant_id: str, expires_at_ms: int | None) -> contracts_pb2.GrantCreditsRequest:
        grant = contracts_pb2.Grant(id=grant_id, customer_id="expired-many", kind=contracts_pb2.PROMOTIONAL, amount="1")
        grant.starts_at.CopyFrom(stamp(JAN_2024_MS))
        if expires_at_ms is not None:
            grant.expires_at.CopyFrom(stamp(expires_at_ms))
        return contracts_pb2.GrantCreditsRequest(grant=grant)

    for n in range(1000):
        client.contracts.GrantCredits(request(f"x{n:04d}", month_start_ms(1)))
    assert client.get_balance("expired-many").credits_remaining == "0"
    code, details = refusal(lambda: client.contracts.GrantCredits(request("fresh", None)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1,000" in details, details
    assert client.contracts.GrantCredits(request("x0007", month_start_ms(1))).id == "x0007"


def test_a_balance_past_the_message_limit_leaves_out_its_oldest_spent_grants_and_still_answers(
    server: ServerProcess, client: TariffClient
) -> None:
    """README "Limits and backpressure": an answer is kept within --message-mb-max where it can be. A customer
    whose policy bought 1,000 top-ups a period for 18 periods holds 18,000 TOP_UP grants, 17,999 of them spent
    long ago (their draws billed on their periods' invoices), and a GrantCredits grant of 5: listed whole, about
    1.1 MB, past the server's 1 MiB. The balance lists the grants with credit (the last top-up's 2, the 5) and
    the latest spent ones that fit, leaving out the spent ones starting earliest (`grants_left_out` counting
    them): credits_remaining 7 as before, the totals unchanged. WatchBalance sends the same balance, and `tariff
    grants` answers the count. Before, both
    were RESOURCE_EXHAUSTED for good ("the balance of customer 'aged' (18,001 grants) is 1,114,xxx bytes, more
    than this server sends"): a long-lived customer's balance became unreadable through grants long spent."""
    topping_up_customer(client, "aged")
    use_up(client, "aged", range(18))
    own_grant(client, "aged-own", "aged")
    try:
        balance = client.get_balance("aged")
    except TariffError as refused:
        pytest.fail(f"GetBalance refused: {refused.code.name}: {refused.details}")
    assert balance.ByteSize() <= MIB
    assert balance.credits_remaining == "7" and balance.credits_available == "7"
    listed = len(balance.grants)
    assert 10_000 < listed < 18_001 and balance.grants_left_out == 18_001 - listed
    with_credit = {g.grant_id: g.remaining for g in balance.grants if g.remaining != "0"}
    assert with_credit == {"aged-own": "5", f"top-up-{month_start_ms(17)}-1000": "2"}
    listed_top_ups = {g.grant_id for g in balance.grants if g.kind == contracts_pb2.TOP_UP}
    assert f"top-up-{month_start_ms(17)}-1" in listed_top_ups  # the latest period's are listed
    assert f"top-up-{month_start_ms(0)}-1" not in listed_top_ups  # the earliest left out
    stream = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="aged"))
    try:
        assert next(iter(stream)) == balance
    finally:
        stream.cancel()
    shown = json.loads(tariff(server, "grants", "aged", "--json").stdout)  # `tariff grants` says so too
    assert (len(shown["grants"]), shown["grants_left_out"]) == (listed, balance.grants_left_out)


def test_an_invoice_lists_the_grants_of_its_period_so_a_long_lived_customer_still_closes(client: TariffClient) -> None:
    """README "Limits and backpressure" (what grows over a customer's life): an invoice's grant_balances leave out
    the grants spent before its period that nothing in it touched (invoices.proto Invoice.grant_balances), so a
    customer buying 1,000 top-ups every period has every period's invoice list about 1,000 grants, however long it
    lives. 26 periods of 1,000 purchases: the first period's draft lists its 1,000 grants; the 26th's lists 1,001
    (the 25th period's last purchase, which its first event drew, and its own 1,000: 999 spent, the last 2 credits
    remaining). Before, it listed all 26,000 (about 1.1 MB) and was RESOURCE_EXHAUSTED past this server's 1 MiB,
    the period left open. It closes, the final invoice equal to the draft but for number, status and close time."""
    topping_up_customer(client, "ancient")
    use_up(client, "ancient", range(26))
    first = preview(client, "ancient", month_start_ms(0))
    assert len(first.grant_balances) == 1000
    draft = preview(client, "ancient", month_start_ms(25))
    assert len(draft.grant_balances) == 1001
    balances = [(b.granted, b.drawn, b.remaining, b.expired) for b in draft.grant_balances]
    assert balances == [("2", "2", "0", "0")] * 1000 + [("2", "0", "2", "0")]
    request = invoices_pb2.ClosePeriodRequest(customer_id="ancient", period_start=stamp(month_start_ms(25)))
    final: invoices_pb2.Invoice = client.invoices.ClosePeriod(request)
    for name in ("invoice_number", "status", "closed_at"):
        final.ClearField(name)
        draft.ClearField(name)
    assert final == draft
    assert client.get_balance("ancient").credits_remaining == "2"


def test_an_ended_hold_is_forgotten_35_days_after_it_ended_though_nothing_else_falls_due(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """README "Reservations": "A customer's ids are remembered 35 days (the dedupe window) after the reservation
    ended"; docs/architecture.md §5: "after that the id is unknown". Its own server, its clock frozen at T0: `h`
    (100 credits, no expiry, nothing else that expires) holds 30 under r1 and releases it at T0. Started again at
    T0 + 35 days - 1 ms (the tick its hold's former TTL still asks for applies then, and finds nothing due): r1
    asked for 31 is ALREADY_EXISTS, still remembered. Started again at T0 + 35 days: r1 for 31 is a new hold (31
    held, 69 available). Before, forgetting alone never made the clock due: r1 stayed ALREADY_EXISTS for good
    ("reservation_id 'r1' is already used by a different request of this customer"), and a gateway whose holds all
    settle in time kept every id it ever used."""
    t0_ms = time.time_ns() // 1_000_000 // 1000 * 1000
    server = server_factory(env=clock_env(tmp_path, frozen_ms=t0_ms))
    with server.client() as client:
        longrun_catalogue(client, ("h", False))
        assert hold(client, "h", "r1", 30, 60_000) == "30"
        assert release(client, "h", "r1") == "30"
    for at_ms, conflict in ((t0_ms + WINDOW_MS - 1, True), (t0_ms + WINDOW_MS, False)):
        server.env = clock_env(tmp_path, frozen_ms=at_ms)
        server.restart()
        with server.client() as client:
            if conflict:
                code, details = refusal(lambda: hold(client, "h", "r1", 31, 60_000))
                assert code == grpc.StatusCode.ALREADY_EXISTS and "different request" in details, details
            else:
                assert hold(client, "h", "r1", 31, 60_000) == "31"
                assert client.get_balance("h").credits_available == "69"
