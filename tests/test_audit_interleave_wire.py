"""Two concurrent state-changing calls on one customer, audited over the wire: every interleaving must give the
result of some serial order of the two (docs/architecture.md §2, "One writer": every state change is a command
applied one at a time in arrival order; §5 "Online" for a publish's re-rating), with credit conserved per grant
(balance.proto GrantBalance: amount = drawn + remaining + expired, held part of remaining), and each call's answer
the one that order gives it.

Each race is run ROUNDS times, each on a fresh customer, its two calls released together by a barrier, each on a
client (channel) of its own, while a third client reads the balance over and over: every balance read meanwhile
must be the state before, after one of the calls, or after both (never a mix: credit counted twice, charges at a
price no order gives). The amounts of every serial order are computed by hand in each test. tests/
test_audit_concurrency_wire.py races one call against its own retries; this races calls of different kinds.

Product `u` (event type `u`, SUM of `n`), card `il` in credits, u at 1 credit a unit since 2025; each customer's
contract on it from 2025 (ALLOW unless said), `--close-grace off`. A test whose customers a publish re-rates has a
rate card of its own per round."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import ms, product

ROUNDS = 16  # each race, each time on a fresh customer
FILLER = 80_000  # events of another customer ahead of the one that matters, in one batch
CARD = "il"
SINCE_2025 = ms("2025-01-01T00:00:00")

# A customer's state as a serial order leaves it: (period_charges, overage_amount, credits_held,
# ((grant id, drawn, remaining, held, expired), ...) in burn order).
State = tuple[str, str, str, tuple[tuple[str, str, str, str, str], ...]]


def new_card(client: TariffClient, card_id: str) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, name=card_id, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, upsert_rates=[unit("u", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card_id, version=1, effective_from=stamp(SINCE_2025))
    )


def catalogue(client: TariffClient) -> None:
    product(client, "u")
    new_card(client, CARD)
    customer(client, "filler")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-interleave")
    # Batches of up to FILLER + 1 events: one batch long enough to rate that a read comes while it is rated.
    args = ["--close-grace", "off", "--batch-events-max", str(FILLER + 1)]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


@pytest.fixture(scope="module")
def seen() -> dict[str, State]:
    """Every customer's final state, read again after the restart at the end of the module."""
    return {}


def norm(text: str) -> str:
    """A decimal as one text whatever its trailing zeros ("5.0" and "5" alike)."""
    return format(Decimal(text).normalize(), "f")


def state_of(balance: balance_pb2.Balance) -> State:
    """The balance as a State, each grant checked for conservation."""
    rows = []
    for g in balance.grants:
        amount, drawn, remaining, held, expired = (
            Decimal(x) for x in (g.amount, g.drawn, g.remaining, g.held, g.expired)
        )
        assert min(drawn, remaining, held, expired) >= 0, g
        if expired > 0 or remaining == 0:  # held beside remaining once expired (balance.proto)
            assert amount in (drawn + remaining + expired, drawn + held + expired), g
        else:
            assert amount == drawn + remaining + expired and held <= remaining, g
        rows.append((g.grant_id, norm(g.drawn), norm(g.remaining), norm(g.held), norm(g.expired)))
    held_total = sum((Decimal(g.held) for g in balance.grants), Decimal(0))
    assert Decimal(balance.credits_held) == held_total, balance
    assert Decimal(balance.credits_available) == Decimal(balance.credits_remaining) - held_total, balance
    return norm(balance.period_charges), norm(balance.overage_amount), norm(balance.credits_held), tuple(rows)


def st(charges: str, overage: str, held: str, *grants: tuple[str, str, str, str, str]) -> State:
    return norm(charges), norm(overage), norm(held), tuple(grants)


ROUND = itertools.count()


def race(
    clients: list[TariffClient], reader: TariffClient, customer_id: str, calls: list[Callable[[TariffClient], Any]]
) -> tuple[list[Any], list[State]]:
    """`calls` released together, each on its own client; each one's answer (or the TariffError it raised) in
    order, and every state a reader saw of the customer meanwhile (from before the first to after the last).
    Released together the admin call mostly applied first, so one of the two calls waits 0-3 ms, in turn, to
    meet the other's other orders (outcomes only are asserted: any order is right)."""
    round_ = next(ROUND)
    delays_s = [0.0] * len(calls)
    delays_s[round_ % len(calls)] = (round_ // len(calls)) % 4 / 1000
    barrier = threading.Barrier(len(calls) + 1)
    done = threading.Event()
    states: list[State] = []

    def read() -> None:
        barrier.wait()
        while not done.is_set():
            states.append(state_of(reader.get_balance(customer_id)))

    def run(index: int) -> Any:
        barrier.wait()
        if delays_s[index]:
            time.sleep(delays_s[index])
        try:
            return calls[index](clients[index])
        except TariffError as exc:
            return exc

    with ThreadPoolExecutor(len(calls) + 1) as pool:
        reading = pool.submit(read)
        answers = list(pool.map(run, range(len(calls))))
        done.set()
        reading.result()
    states.append(state_of(reader.get_balance(customer_id)))
    return answers, states


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[list[TariffClient]]:
    """Three clients: two racers and a reader, each on its own channel, connected up front."""
    made = [server.client() for _ in range(3)]
    yield made
    for client in made:
        client.close()


def customer(
    client: TariffClient, customer_id: str, card_id: str = CARD, *, block: bool = False, starting_ms: int = SINCE_2025
) -> str:
    """A customer with a contract `<id>-c` on `card_id` from 2025 (or `starting_ms`), ALLOW (overage at 1 USD) or
    BLOCK."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=card_id,
            starting_at=stamp(starting_ms),
            overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
    )
    return f"{customer_id}-c"


def grant(
    client: TariffClient, customer_id: str, grant_id: str, amount: str, priority: int = 0, **fields: Any
) -> contracts_pb2.Grant:
    made: contracts_pb2.Grant = client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=grant_id,
                customer_id=customer_id,
                kind=contracts_pb2.PREPAID,
                amount=amount,
                paid_amount=amount,
                priority=priority,
                **fields,
            )
        )
    )
    return made


def customer_to_top_up(client: TariffClient, customer_id: str) -> contracts_pb2.SetTopUpPolicyRequest:
    """A customer with a grant `<id>.G` of 10, and the top-up policy its races set: below 5 available, up to 20 at 1
    USD a credit, at most 3 a period."""
    contract_id = customer(client, customer_id)
    grant(client, customer_id, f"{customer_id}.G", "10")
    return contracts_pb2.SetTopUpPolicyRequest(
        contract_id=contract_id,
        top_up=contracts_pb2.TopUpPolicy(threshold="5", recharge_to="20", price_per_credit="1", max_per_period=3),
    )


def event(
    customer_id: str, key: str, n: int, at_ms: int | None = None, reservation_id: str = ""
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=f"{customer_id}-{key}",
        customer_id=customer_id,
        event_type="u",
        timestamp_ms=now_ms() - 1_000 if at_ms is None else at_ms,
        values={"n": n},
        reservation_id=reservation_id,
    )


def ingest(customer_id: str, key: str, n: int, at_ms: int | None = None) -> Callable[[TariffClient], Any]:
    def send(client: TariffClient) -> usage_pb2.IngestAck:
        return client.ingest_batch([event(customer_id, key, n, at_ms)], f"{customer_id}-{key}")

    return send


def granting(
    customer_id: str, grant_id: str, amount: str, priority: int = 0, **fields: Any
) -> Callable[[TariffClient], Any]:
    def call(client: TariffClient) -> contracts_pb2.Grant:
        return grant(client, customer_id, grant_id, amount, priority, **fields)

    return call


def rpc(service: str, method: str, request: Any) -> Callable[[TariffClient], Any]:
    """`client.<service>.<method>(request)` on the client given."""

    def call(client: TariffClient) -> Any:
        return getattr(getattr(client, service), method)(request)

    return call


def accepted(ack: Any) -> int:
    assert isinstance(ack, usage_pb2.IngestAck), ack
    return ack.accepted


def race_ended(
    seen: dict[str, State],
    client: TariffClient,
    who: str,
    states: list[State],
    allowed: set[State] | None,
    finals: set[State],
    order: str = "",
) -> None:
    """How every race ends: each read of `who` one of the serial orders' states (`allowed`; None: not checked
    here, a race that says what it checks of them itself), the last one of `finals` (what the orders its answers
    allow leave), and the state kept for the restart to read again. `order`: the serial order the answers showed,
    named in a failure."""
    what = f"{who} {order}" if order else who
    for read in states:
        assert allowed is None or read in allowed, (
            f"{what}: a read saw a state no serial order gives: {read}\nallowed: {allowed}"
        )
    assert states[-1] in finals, f"{what}: final {states[-1]} is not one of {finals}"
    remember(seen, client, who)


def month_start_ms() -> int:
    """The current billing period's start: contracts from 2025-01-01 are billed by calendar month."""
    now = datetime.fromtimestamp(now_ms() / 1000, UTC)
    return int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def month_before(at_ms: int) -> int:
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
    return int(at.replace(year=year, month=month).timestamp() * 1000)


def remember(seen: dict[str, State], client: TariffClient, customer_id: str) -> None:
    seen[customer_id] = state_of(client.get_balance(customer_id))


# ---------------------------------------------------------------------------------------------
# Usage against admin calls


def test_usage_racing_a_grant_is_paid_by_it_only_when_granted_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """A (5 credits, priority 1) before; race: 10 units (10 credits) against GrantCredits B (100, priority 0, burns
    first). Usage first: A pays 5, 5 overage, B untouched. Grant first: B pays 10, A untouched."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"g-{i}"
        customer(admin, who)
        grant(admin, who, f"{who}.A", "5", priority=1)
        answers, states = race(clients[:2], reader, who, [ingest(who, "e", 10), granting(who, f"{who}.B", "100")])
        assert accepted(answers[0]) == 1
        assert isinstance(answers[1], contracts_pb2.Grant) and answers[1].amount == "100", answers[1]
        a0, a5, b0 = (
            (f"{who}.A", "0", "5", "0", "0"),
            (f"{who}.A", "5", "0", "0", "0"),
            (f"{who}.B", "0", "100", "0", "0"),
        )
        usage_first = st("10", "5", "0", b0, a5)
        grant_first = st("10", "0", "0", (f"{who}.B", "10", "90", "0", "0"), a0)
        before, only_usage, only_grant = st("0", "0", "0", a0), st("10", "5", "0", a5), st("0", "0", "0", b0, a0)
        race_ended(
            seen,
            admin,
            who,
            states,
            {before, only_usage, only_grant, usage_first, grant_first},
            {usage_first, grant_first},
        )


def test_usage_racing_an_override_is_priced_by_it_only_when_added_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 100 credits; race: 10 units against AddOverride price 3 for u from the contract's start (contracts.proto
    PriceOverride: it prices only what is rated after it). Usage first: 10 drawn; override first: 30 drawn."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"o-{i}"
        contract_id = customer(admin, who)
        grant(admin, who, f"{who}.G", "100")
        override = contracts_pb2.AddOverrideRequest(
            contract_id=contract_id, override=contracts_pb2.PriceOverride(id=f"{who}-o", product_id="u", price="3")
        )
        answers, states = race(
            clients[:2], reader, who, [ingest(who, "e", 10), rpc("contracts", "AddOverride", override)]
        )
        assert accepted(answers[0]) == 1
        assert isinstance(answers[1], contracts_pb2.Contract) and len(answers[1].overrides) == 1, answers[1]
        g = f"{who}.G"
        before = st("0", "0", "0", (g, "0", "100", "0", "0"))
        usage_first = st("10", "0", "0", (g, "10", "90", "0", "0"))
        override_first = st("30", "0", "0", (g, "30", "70", "0", "0"))
        race_ended(seen, admin, who, states, {before, usage_first, override_first}, {usage_first, override_first})


def test_usage_racing_a_top_up_policy_buys_only_when_the_policy_came_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 10 credits; race: 8 units against SetTopUpPolicy(threshold 5, recharge to 20, 1 a credit). Policy first:
    the event leaves 2 available, below 5, and buys top-up-<period start>-1 of 18. Usage first: the policy set
    while available is already below the threshold buys nothing until the next rated event."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"t-{i}"
        policy = customer_to_top_up(admin, who)
        answers, states = race(
            clients[:2], reader, who, [ingest(who, "e", 8), rpc("contracts", "SetTopUpPolicy", policy)]
        )
        assert accepted(answers[0]) == 1
        assert isinstance(answers[1], contracts_pb2.Contract), answers[1]
        g = f"{who}.G"
        before = st("0", "0", "0", (g, "0", "10", "0", "0"))
        usage_first = st("8", "0", "0", (g, "8", "2", "0", "0"))
        top_up = (f"top-up-{month_start_ms()}-1", "0", "18", "0", "0")
        policy_first = st("8", "0", "0", (g, "8", "2", "0", "0"), top_up)
        race_ended(seen, admin, who, states, {before, usage_first, policy_first}, {usage_first, policy_first})


def test_usage_racing_a_new_contract_is_accepted_only_when_the_contract_came_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """The first contract ended at this hour's start; race: 10 units dated now against CreateContract from this
    hour. Contract first: accepted, 10 credits of G drawn. Usage first: NO_ACTIVE_CONTRACT, nothing drawn."""
    admin, reader = clients[0], clients[2]
    hour_ms = this_hour_ms()
    for i in range(ROUNDS):
        who = f"c-{i}"
        open_contract(admin, who, f"{who}-c1", SINCE_2025, hour_ms, rate_card_id=CARD)
        grant(admin, who, f"{who}.G", "100", starts_at=stamp(SINCE_2025))
        at_ms = max(hour_ms, now_ms() - 1_000)
        request = contracts_pb2.CreateContractRequest(
            id=f"{who}-c2", customer_id=who, rate_card_id=CARD, starting_at=stamp(hour_ms), overage_price="1"
        )
        answers, states = race(
            clients[:2], reader, who, [ingest(who, "e", 10, at_ms), rpc("contracts", "CreateContract", request)]
        )
        ack = answers[0]
        assert isinstance(answers[1], contracts_pb2.Contract), answers[1]
        g = f"{who}.G"
        before = st("0", "0", "0", (g, "0", "100", "0", "0"))
        contract_first = st("10", "0", "0", (g, "10", "90", "0", "0"))
        if accepted(ack) == 0:
            assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["NO_ACTIVE_CONTRACT"], ack
            race_ended(seen, admin, who, states, {before}, {before})
        else:
            race_ended(seen, admin, who, states, {before, contract_first}, {contract_first})


# ---------------------------------------------------------------------------------------------
# Holds


def hold(customer_id: str, reservation_id: str, n: int) -> Callable[[TariffClient], Any]:
    def call(client: TariffClient) -> balance_pb2.AuthorizeResponse:
        return client.authorize(
            customer_id, "u", values={"n": n}, reserve=True, reservation_ttl_s=600, reservation_id=reservation_id
        )

    return call


def test_a_hold_racing_usage_under_block_is_denied_only_when_the_usage_came_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """BLOCK, G 10 credits; race: a hold of 6 units against an event of 8 (no reservation). Hold first: it holds 6
    (answer available 4), the event draws the 4 left, 4 overage. Usage first: 8 drawn, 2 left, the hold (estimate 6)
    denied INSUFFICIENT_CREDIT, nothing held."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"h-{i}"
        customer(admin, who, block=True)
        grant(admin, who, f"{who}.G", "10")
        answers, states = race(clients[:2], reader, who, [ingest(who, "e", 8), hold(who, "r", 6)])
        assert accepted(answers[0]) == 1
        answer = answers[1]
        g = f"{who}.G"
        before = st("0", "0", "0", (g, "0", "10", "0", "0"))
        hold_first = st("8", "4", "6", (g, "4", "6", "6", "0"))
        usage_first = st("8", "0", "0", (g, "8", "2", "0", "0"))
        if answer.allowed:
            assert (answer.reason, answer.estimated_cost, answer.credits_available) == ("OK", "6", "4"), answer
            race_ended(
                seen,
                admin,
                who,
                states,
                {before, st("0", "0", "6", (g, "0", "10", "6", "0")), hold_first},
                {hold_first},
            )
        else:
            assert (answer.reason, answer.credits_available) == ("INSUFFICIENT_CREDIT", "2"), answer
            race_ended(seen, admin, who, states, {before, usage_first}, {usage_first})


def test_a_hold_racing_a_grant_under_block_is_allowed_only_when_the_grant_came_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """BLOCK, A 10 credits (priority 0); race: a hold of 15 units against GrantCredits B 10 (priority 1). Hold
    first: 15 > 10 denied, nothing held. Grant first: 20 available, the hold takes 10 from A and 5 from B."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"hg-{i}"
        customer(admin, who, block=True)
        grant(admin, who, f"{who}.A", "10")
        answers, states = race(
            clients[:2],
            reader,
            who,
            [hold(who, "r", 15), granting(who, f"{who}.B", "10", priority=1)],
        )
        assert isinstance(answers[1], contracts_pb2.Grant), answers[1]
        answer = answers[0]
        a, b = f"{who}.A", f"{who}.B"
        before = st("0", "0", "0", (a, "0", "10", "0", "0"))
        hold_first = st("0", "0", "0", (a, "0", "10", "0", "0"), (b, "0", "10", "0", "0"))
        grant_first = st("0", "0", "15", (a, "0", "10", "10", "0"), (b, "0", "10", "5", "0"))
        if answer.allowed:
            assert (answer.reason, answer.estimated_cost, answer.credits_available) == ("OK", "15", "5"), answer
            race_ended(seen, admin, who, states, {before, hold_first, grant_first}, {grant_first})
        else:
            assert (answer.reason, answer.credits_available) == ("INSUFFICIENT_CREDIT", "10"), answer
            race_ended(seen, admin, who, states, {before, hold_first}, {hold_first})


# ---------------------------------------------------------------------------------------------
# A retroactive publish


def two_hours_of_one_period() -> int:
    """This hour's start; skipped when the hour before it lies in another (monthly) period."""
    hour_ms = this_hour_ms()
    if hour_ms == month_start_ms():
        pytest.skip("the hour before this one is in the previous billing period")
    return hour_ms


def draft_at(client: TariffClient, card_id: str, price: str) -> int:
    made = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, based_on_version=1, upsert_rates=[unit("u", price)])
    )
    return int(made.version)


def publish(card_id: str, version: int, from_ms: int) -> Callable[[TariffClient], Any]:
    def call(client: TariffClient) -> pricing_pb2.PublishVersionResponse:
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=card_id, version=version, effective_from=stamp(from_ms)
        )
        done: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
        return done

    return call


def test_usage_racing_a_retroactive_publish_is_rerated_once_and_the_answer_says_whether_it_was(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """Its own card per round; G 100; 5 units an hour ago (H - 1 h + 1 min, at 1); race: 10 units now against
    version 2 (u at 2) from H - 1 h. Either order charges 10 + 20 = 30 (G drawn 30); the publish re-rates the 5
    units (+5) and, when the usage came first, its 10 too (+15, 2 events). A read meanwhile is the state before
    (5), after the usage alone (15), or after both (30): never the 10 units at 2 beside the 5 at 1 (25)."""
    admin, reader = clients[0], clients[2]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS):
        who = f"p-{i}"
        new_card(admin, f"{who}-card")
        customer(admin, who, f"{who}-card")
        grant(admin, who, f"{who}.G", "100")
        assert accepted(ingest(who, "early", 5, hour_ms - HOUR_MS + 60_000)(admin)) == 1
        version = draft_at(admin, f"{who}-card", "2")
        answers, states = race(
            clients[:2], reader, who, [ingest(who, "e", 10), publish(f"{who}-card", version, hour_ms - HOUR_MS)]
        )
        assert accepted(answers[0]) == 1
        done = answers[1]
        assert isinstance(done, pricing_pb2.PublishVersionResponse), done
        g = f"{who}.G"
        before = st("5", "0", "0", (g, "5", "95", "0", "0"))
        only_publish = st("10", "0", "0", (g, "10", "90", "0", "0"))
        only_usage = st("15", "0", "0", (g, "15", "85", "0", "0"))
        both = st("30", "0", "0", (g, "30", "70", "0", "0"))
        answered = (done.customers_rerated, done.events_rerated, norm(done.rerated_amount_delta))
        if answered == (1, 2, "15"):
            race_ended(seen, admin, who, states, {before, only_usage, both}, {both}, "usage first")
        else:
            assert answered == (1, 1, "5"), done
            race_ended(seen, admin, who, states, {before, only_publish, both}, {both}, "publish first")


def test_a_hold_racing_a_retroactive_publish_under_block_holds_what_its_order_gives(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """Its own card per round; BLOCK, G 30; 10 units an hour ago (10 at 1); race: a hold of 15 units now against
    version 2 (u at 2) from H - 1 h. Hold first: estimate 15 against 20 available, allowed; the publish re-rates
    the 10 units to 20, drawn before the hold (an earlier hour), which shrinks to the 10 left (balance.proto
    AuthorizeRequest.reserve). Publish first: 20 drawn, 10 available, the hold estimated 30: denied."""
    admin, reader = clients[0], clients[2]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS):
        who = f"ph-{i}"
        new_card(admin, f"{who}-card")
        customer(admin, who, f"{who}-card", block=True)
        grant(admin, who, f"{who}.G", "30")
        assert accepted(ingest(who, "early", 10, hour_ms - HOUR_MS + 60_000)(admin)) == 1
        version = draft_at(admin, f"{who}-card", "2")
        answers, states = race(
            clients[:2], reader, who, [hold(who, "r", 15), publish(f"{who}-card", version, hour_ms - HOUR_MS)]
        )
        answer, done = answers
        assert isinstance(done, pricing_pb2.PublishVersionResponse), done
        assert (done.customers_rerated, done.events_rerated, norm(done.rerated_amount_delta)) == (1, 1, "10"), done
        g = f"{who}.G"
        before = st("10", "0", "0", (g, "10", "20", "0", "0"))
        publish_first = st("20", "0", "0", (g, "20", "10", "0", "0"))
        if answer.allowed:
            assert (answer.reason, answer.estimated_cost, answer.credits_available) == ("OK", "15", "5"), answer
            only_hold = st("10", "0", "15", (g, "10", "20", "15", "0"))
            hold_first = st("20", "0", "10", (g, "20", "10", "10", "0"))
            race_ended(seen, admin, who, states, {before, only_hold, hold_first}, {hold_first}, "hold first")
        else:
            assert (answer.reason, answer.estimated_cost, answer.credits_available) == (
                "INSUFFICIENT_CREDIT",
                "30",
                "10",
            ), answer
            race_ended(seen, admin, who, states, {before, publish_first}, {publish_first}, "publish first")


def rerated_customer(admin: TariffClient, who: str, credits: str, early_units: int) -> tuple[str, int]:
    """`who` on a card of its own (u at 1), G `credits`, `early_units` dated H - 1 h + 1 min; version 2 (u at 2)
    drafted: (the card, version 2)."""
    card_id = f"{who}-card"
    new_card(admin, card_id)
    customer(admin, who, card_id)
    grant(admin, who, f"{who}.G", credits)
    assert accepted(ingest(who, "early", early_units, this_hour_ms() - HOUR_MS + 60_000)(admin)) == 1
    return card_id, draft_at(admin, card_id, "2")


def rerating(done: Any) -> tuple[int, int, str]:
    assert isinstance(done, pricing_pb2.PublishVersionResponse), done
    return done.customers_rerated, done.events_rerated, norm(done.rerated_amount_delta)


def test_a_release_racing_a_retroactive_publish_gives_back_what_the_hold_held_in_its_order(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 30; 10 units at H - 1 h + 1 min (10 at 1); r holding 15 (made now, hour H); race: releasing r against
    version 2 (u at 2) from H - 1 h. Release first: 15 given back, then 20 drawn. Publish first: the 10 units cost
    20, drawn before the hold, which shrinks to 10; the release gives back 10. Either way: 20 drawn, 10 left."""
    admin, reader = clients[0], clients[2]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS):
        who = f"pr-{i}"
        card_id, version = rerated_customer(admin, who, "30", 10)
        assert hold(who, "r", 15)(admin).allowed
        release = balance_pb2.ReleaseReservationRequest(customer_id=who, reservation_id="r")
        answers, states = race(
            clients[:2],
            reader,
            who,
            [rpc("balance", "ReleaseReservation", release), publish(card_id, version, hour_ms - HOUR_MS)],
        )
        released, done = answers
        assert isinstance(released, balance_pb2.ReleaseReservationResponse), released
        assert rerating(done) == (1, 1, "10"), done
        g = f"{who}.G"
        before = st("10", "0", "15", (g, "10", "20", "15", "0"))
        both = st("20", "0", "0", (g, "20", "10", "0", "0"))
        if norm(released.released_amount) == "15":
            race_ended(seen, admin, who, states, {before, st("10", "0", "0", (g, "10", "20", "0", "0")), both}, {both})
        else:
            assert norm(released.released_amount) == "10", released
            race_ended(
                seen, admin, who, states, {before, st("20", "0", "10", (g, "20", "10", "10", "0")), both}, {both}
            )


def test_an_event_settling_a_hold_racing_a_retroactive_publish_is_charged_once_at_the_new_price(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 30; 10 units at H - 1 h + 1 min; r holding 15 (now); race: an event of 12 units now settling r against
    version 2 (u at 2) from H - 1 h. Settle first: 15 given back, 12 drawn (22), then the publish re-rates both
    events (+10 +12): 44 of charges, 30 drawn, 14 overage. Publish first: 20 drawn, r shrinks to 10; the event
    gives 10 back and costs 24: 30 drawn, 14 overage. The publish answers +22 (2 events) or +10 (1)."""
    admin, reader = clients[0], clients[2]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS):
        who = f"ps-{i}"
        card_id, version = rerated_customer(admin, who, "30", 10)
        assert hold(who, "r", 15)(admin).allowed

        def settle(client: TariffClient, who: str = who) -> usage_pb2.IngestAck:
            return client.ingest_batch([event(who, "e", 12, reservation_id="r")], f"{who}-e")

        answers, states = race(clients[:2], reader, who, [settle, publish(card_id, version, hour_ms - HOUR_MS)])
        ack, done = answers
        assert accepted(ack) == 1 and not ack.notices, ack
        g = f"{who}.G"
        before = st("10", "0", "15", (g, "10", "20", "15", "0"))
        both = st("44", "14", "0", (g, "30", "0", "0", "0"))
        if rerating(done) == (1, 2, "22"):
            race_ended(seen, admin, who, states, {before, st("22", "0", "0", (g, "22", "8", "0", "0")), both}, {both})
        else:
            assert rerating(done) == (1, 1, "10"), done
            race_ended(
                seen, admin, who, states, {before, st("20", "0", "10", (g, "20", "10", "10", "0")), both}, {both}
            )


def test_usage_racing_a_retroactive_rollback_is_rerated_once_and_the_answer_says_whether_it_was(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 100; 5 units at H - 1 h + 1 min; version 2 (u at 2) published from H - 1 h (5 units at 2: 10); race: 10
    units now against RollbackRateCard to version 1 from H - 1 h. Usage first: 20 more (30), the rollback re-rates
    both events to 1 (-15, 2 events). Rollback first: the 5 units back to 5 (-5, 1 event), the 10 units cost 10.
    Either way 15."""
    admin, reader = clients[0], clients[2]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS):
        who = f"rb-{i}"
        card_id, version = rerated_customer(admin, who, "100", 5)
        assert rerating(publish(card_id, version, hour_ms - HOUR_MS)(admin)) == (1, 1, "5")
        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=card_id, to_version=1, effective_from=stamp(hour_ms - HOUR_MS)
        )
        answers, states = race(
            clients[:2], reader, who, [ingest(who, "e", 10), rpc("pricing", "RollbackRateCard", rollback)]
        )
        assert accepted(answers[0]) == 1
        g = f"{who}.G"
        before = st("10", "0", "0", (g, "10", "90", "0", "0"))
        both = st("15", "0", "0", (g, "15", "85", "0", "0"))
        if rerating(answers[1]) == (1, 2, "-15"):
            race_ended(seen, admin, who, states, {before, st("30", "0", "0", (g, "30", "70", "0", "0")), both}, {both})
        else:
            assert rerating(answers[1]) == (1, 1, "-5"), answers[1]
            race_ended(seen, admin, who, states, {before, st("5", "0", "0", (g, "5", "95", "0", "0")), both}, {both})


def test_a_publish_racing_its_retry_and_usage_re_rates_once_and_only_the_first_answer_counts_it(
    clients: list[TariffClient], server: ServerProcess, seen: dict[str, State]
) -> None:
    """As the publish race above, with the same PublishVersion sent twice: one applies, the other is its retry,
    answered the same version with zero counts (pricing.proto PublishVersion: "the re-rating counts are zero, as
    the retry re-rated nothing"); the first answers +5 (1 event) or +15 (2 events), and the usage ends 30."""
    reader = clients[2]
    hour_ms = two_hours_of_one_period()
    third = server.client()
    try:
        for i in range(ROUNDS // 2):
            who = f"pp-{i}"
            card_id, version = rerated_customer(clients[0], who, "100", 5)
            call = publish(card_id, version, hour_ms - HOUR_MS)
            answers, states = race([*clients[:2], third], reader, who, [call, call, ingest(who, "e", 10)])
            assert accepted(answers[2]) == 1
            counts = sorted(rerating(done) for done in answers[:2])
            assert counts in ([(0, 0, "0"), (1, 1, "5")], [(0, 0, "0"), (1, 2, "15")]), answers[:2]
            assert answers[0].version == answers[1].version, answers[:2]
            g = f"{who}.G"
            race_ended(seen, clients[0], who, states, None, {st("30", "0", "0", (g, "30", "70", "0", "0"))})
    finally:
        third.close()


def test_a_close_racing_a_grant_into_its_period_lists_the_grant_only_when_granted_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """Last month's period closed (ClosePeriod) while G2 (10 credits, starting a day into that period) is granted.
    Grant first: the final invoice lists G2 (granted 10, remaining 10: it holds credit at the period's end).
    Close first: the invoice is final without it (invoices.proto Invoice.grant_balances). Either way GetInvoice
    and a retried close answer that invoice, and the balance holds G2's 10."""
    admin = clients[0]
    start_ms = month_before(month_start_ms())
    for i in range(ROUNDS // 2):
        who = f"cl-{i}"
        customer(admin, who)
        grant(admin, who, f"{who}.G", "5")
        close = invoices_pb2.ClosePeriodRequest(customer_id=who, period_start=stamp(start_ms))
        answers, states = race(
            clients[:2],
            clients[2],
            who,
            [
                rpc("invoices", "ClosePeriod", close),
                granting(who, f"{who}.G2", "10", starts_at=stamp(start_ms + 86_400_000)),
            ],
        )
        invoice = answers[0]
        assert isinstance(invoice, invoices_pb2.Invoice) and invoice.status == invoices_pb2.INVOICE_FINAL, invoice
        listed = {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances}
        assert listed in (
            {f"{who}.G": ("5", "0", "5", "0")},
            {f"{who}.G": ("5", "0", "5", "0"), f"{who}.G2": ("10", "0", "10", "0")},
        ), listed
        number = invoices_pb2.GetInvoiceRequest(invoice_number=invoice.invoice_number)
        assert admin.invoices.GetInvoice(number) == invoice
        assert admin.invoices.ClosePeriod(close) == invoice
        both = st("0", "0", "0", (f"{who}.G", "0", "5", "0", "0"), (f"{who}.G2", "0", "10", "0", "0"))
        race_ended(seen, admin, who, states, None, {both})


def test_a_close_racing_a_publish_into_its_period_bills_the_price_of_its_order(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """Its own card per round; G 100; 5 units a day into last month (5 at 1); race: ClosePeriod of last month
    against version 2 (u at 2) from last month's start. Close first: the invoice bills 5 and the publish leaves
    the closed usage alone (1 bucket, 1 event, 5: pricing.proto PublishVersionResponse), re-rating nothing.
    Publish first: it re-rates the 5 units to 10 (+5), and the invoice bills 10. G drawn 5 or 10 alike."""
    admin = clients[0]
    start_ms = month_before(month_start_ms())
    for i in range(ROUNDS // 2):
        who = f"cp-{i}"
        card_id = f"{who}-card"
        new_card(admin, card_id)
        customer(admin, who, card_id)
        grant(admin, who, f"{who}.G", "100")
        assert accepted(ingest(who, "early", 5, start_ms + 86_400_000)(admin)) == 1
        version = draft_at(admin, card_id, "2")
        close = invoices_pb2.ClosePeriodRequest(customer_id=who, period_start=stamp(start_ms))
        answers, states = race(
            clients[:2], clients[2], who, [rpc("invoices", "ClosePeriod", close), publish(card_id, version, start_ms)]
        )
        invoice, done = answers
        assert isinstance(invoice, invoices_pb2.Invoice) and invoice.status == invoices_pb2.INVOICE_FINAL, invoice
        left_alone = (
            done.closed_buckets_left_alone,
            done.closed_events_left_alone,
            norm(done.closed_amount_left_alone),
        )
        if norm(invoice.subtotal) == "5":
            assert rerating(done)[1:] == (0, "0") and left_alone == (1, 1, "5"), done
            drawn = "5"
        else:
            assert norm(invoice.subtotal) == "10", invoice
            assert rerating(done) == (1, 1, "5") and left_alone == (0, 0, "0"), done
            drawn = "10"
        assert (
            admin.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=invoice.invoice_number)) == invoice
        )
        g = f"{who}.G"
        assert all(read[3][0][1] in ("5", drawn) for read in states), states
        race_ended(seen, admin, who, states, None, {st("0", "0", "0", (g, drawn, str(100 - int(drawn)), "0", "0"))})


def test_two_publishes_racing_on_one_card_leave_the_later_ones_price_and_answer_in_that_order(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """Its own card per round; G 100; 5 units at H - 1 h + 1 min (5 at 1); race: version 2 (u at 2) and version 3
    (u at 3), both from H - 1 h. Whichever applies last is in force: 2 then 3 answers +5 and +5, ends 15; 3 then
    2 answers +10 and -5, ends 10. A read meanwhile shows 5, 10 or 15, and 15 only in the order ending there."""
    admin = clients[0]
    hour_ms = two_hours_of_one_period()
    for i in range(ROUNDS // 2):
        who = f"pv-{i}"
        card_id, v2 = rerated_customer(admin, who, "100", 5)
        v3 = draft_at(admin, card_id, "3")
        answers, states = race(
            clients[:2],
            clients[2],
            who,
            [publish(card_id, v2, hour_ms - HOUR_MS), publish(card_id, v3, hour_ms - HOUR_MS)],
        )
        two, three = (rerating(done) for done in answers)
        g = f"{who}.G"
        if (two, three) == ((1, 1, "5"), (1, 1, "5")):
            final = "15"
        else:
            assert (two, three) == ((1, 1, "-5"), (1, 1, "10")), answers
            final = "10"
        charged = {c: st(c, "0", "0", (g, c, str(100 - int(c)), "0", "0")) for c in ("5", "10", "15")}
        allowed = {charged["5"], charged["10"], charged["15"]} if final == "15" else set(charged.values())
        race_ended(seen, admin, who, states, allowed, {charged[final]})


def test_a_hold_racing_a_top_up_policy_buys_only_when_the_policy_came_first(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 10; race: a hold of 8 units against SetTopUpPolicy(threshold 5, recharge to 20). Policy first: the hold
    leaves 2 available and buys 18 (README: "A hold's answer counts the top-up it bought": available 20). Hold
    first: 2 available, nothing bought (a policy set below its threshold buys at the next event or hold)."""
    admin = clients[0]
    for i in range(ROUNDS // 2):
        who = f"ht-{i}"
        policy = customer_to_top_up(admin, who)
        answers, states = race(
            clients[:2], clients[2], who, [hold(who, "r", 8), rpc("contracts", "SetTopUpPolicy", policy)]
        )
        answer = answers[0]
        assert answer.allowed and answer.estimated_cost == "8", answer
        g = f"{who}.G"
        before, held = st("0", "0", "0", (g, "0", "10", "0", "0")), st("0", "0", "8", (g, "0", "10", "8", "0"))
        if answer.credits_available == "20":
            bought = st("0", "0", "8", (g, "0", "10", "8", "0"), (f"top-up-{month_start_ms()}-1", "0", "18", "0", "0"))
            race_ended(seen, admin, who, states, {before, bought}, {bought})
        else:
            assert answer.credits_available == "2", answer
            race_ended(seen, admin, who, states, {before, held}, {held})


STORM = 200  # customers of one card: more than a plan slice (128) and a background slice (64)


def storm_card(server: ServerProcess, names: list[str], hour_ms: int) -> tuple[str, int]:
    """`names` on card `storm-card`, each G 100 and 5 units at H - 1 h + 1 min; version 2 (u at 2) drafted."""
    card_id = "storm-card"
    with server.client() as admin:
        new_card(admin, card_id)
        for who in names:
            customer(admin, who, card_id)
            grant(admin, who, f"{who}.G", "100")
        early = [event(who, "early", 5, hour_ms - HOUR_MS + 60_000) for who in names]
        assert admin.ingest_batch(early, "storm-early").accepted == STORM
        return card_id, draft_at(admin, card_id, "2")


def is_even(who: str) -> bool:
    return int(who.split("-")[1]) % 2 == 0


def storm(
    server: ServerProcess, names: list[str], publishing: Callable[[TariffClient], Any]
) -> tuple[Any, list[Any], list[tuple[str, State]]]:
    """`publishing` on a channel of its own while four others send each even customer 10 units and grant each odd
    one B 50 (priority 1), and a reader reads every seventh customer over and over: the publish's answer, the
    others' answers, and the reads."""
    senders = [server.client() for _ in range(4)]
    reader, publisher = server.client(), server.client()
    done = threading.Event()
    reads: list[tuple[str, State]] = []
    barrier = threading.Barrier(len(senders) + 2)

    def send(index: int) -> list[Any]:
        barrier.wait()
        sending = [ingest(who, "e", 10) if is_even(who) else granting(who, f"{who}.B", "50", 1) for who in names]
        return [call(senders[index]) for call in sending[index :: len(senders)]]

    def read() -> None:
        barrier.wait()
        while not done.is_set():
            reads.extend((who, state_of(reader.get_balance(who))) for who in names[::7])

    def run_publish() -> Any:
        barrier.wait()
        return publishing(publisher)

    try:
        with ThreadPoolExecutor(len(senders) + 2) as pool:
            reading = pool.submit(read)
            published = pool.submit(run_publish)
            sent = [answer for answers in pool.map(send, range(len(senders))) for answer in answers]
            done_publish = published.result()
            done.set()
            reading.result()
    finally:
        for client in [*senders, reader, publisher]:
            client.close()
    return done_publish, sent, reads


def test_usage_and_grants_racing_a_publish_that_rerates_many_customers_online(
    server: ServerProcess, seen: dict[str, State]
) -> None:
    """One card, STORM customers, each G 100 and 5 units at H - 1 h + 1 min (5 at 1); version 2 (u at 2) published
    from H - 1 h while each even customer sends 10 units now and each odd one is granted B 50 (priority 1), and
    a reader reads them over and over. The publish is planned in slices and re-rated online (docs/architecture.md
    §5 "Online"): usage meanwhile re-rates its customer first, the grants queue behind the publish. Serial orders:
    an even customer reads 5 (before), 15 (usage alone), 10 (publish alone) or 30, and ends 30 (G drawn 30); an
    odd one reads 5 or 10, with or without B, and ends 10 with B untouched. The publish answers every customer
    re-rated, STORM + k events and 5 x STORM + 10 x k, k the usage it found rated."""
    hour_ms = two_hours_of_one_period()
    names = [f"s-{i}" for i in range(STORM)]
    card_id, version = storm_card(server, names, hour_ms)
    done, sent, reads = storm(server, names, publish(card_id, version, hour_ms - HOUR_MS))
    for answer in sent:
        assert isinstance(answer, usage_pb2.IngestAck | contracts_pb2.Grant), answer
        assert not isinstance(answer, usage_pb2.IngestAck) or answer.accepted == 1, answer
    customers, events, delta = rerating(done)
    found_rated = events - STORM
    assert customers == STORM and 0 <= found_rated <= STORM // 2, done
    assert Decimal(delta) == 5 * STORM + 10 * found_rated, done

    def charged(who: str, charges: str, *more: tuple[str, str, str, str, str]) -> State:
        return st(charges, "0", "0", (f"{who}.G", charges, str(100 - int(charges)), "0", "0"), *more)

    def b(who: str) -> tuple[str, str, str, str, str]:
        return (f"{who}.B", "0", "50", "0", "0")

    for who, state in reads:
        if is_even(who):
            allowed = {charged(who, c) for c in ("5", "15", "10", "30")}
        else:
            allowed = {charged(who, c, *more) for c in ("5", "10") for more in ((), (b(who),))}
        assert state in allowed, f"{who}: a read saw a state no serial order gives: {state}"
    with server.client() as client:
        for who in names:
            seen[who] = state_of(client.get_balance(who))
            assert seen[who] == (charged(who, "30") if is_even(who) else charged(who, "10", b(who))), who


# ---------------------------------------------------------------------------------------------
# AuthorizeBatches holds against a grant's expiry


def batch_hold(customer_id: str, reservation_id: str, n: int) -> Callable[[TariffClient], Any]:
    def call(client: TariffClient) -> balance_pb2.AuthorizeResponse:
        request = balance_pb2.AuthorizeRequest(
            request_id="q",
            customer_id=customer_id,
            event_type="u",
            values={"n": n},
            reserve=True,
            reservation_ttl=Duration(seconds=600),
            reservation_id=reservation_id,
        )
        (result,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request])])))
        (answer,) = result.responses
        assert isinstance(answer, balance_pb2.AuthorizeResponse)
        return answer

    return call


def test_batch_holds_racing_a_grants_expiry_hold_on_it_only_before_it_expires(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """A 10 credits (priority 0) expiring at E, B 100 (priority 1); an AuthorizeBatches hold of 6 units sent from
    12 ms before E to 9 ms after it. Before E: it holds 6 on A (answer available 104); at E A's 4 left break and
    the 6 stay held on it (remaining 0, expired 4, held 6: balance.proto GrantBalance.remaining). At or after E:
    A's 10 broke, the hold takes 6 of B (answer available 94). A read meanwhile shows one of those states, or A
    expired with nothing held, or A usable with or without the hold."""
    admin, reader = clients[0], clients[2]
    for i in range(ROUNDS):
        who = f"x-{i}"
        customer(admin, who)
        expiry_ms = now_ms() + 200
        grant(admin, who, f"{who}.A", "10", expires_at=stamp(expiry_ms))
        grant(admin, who, f"{who}.B", "100", priority=1)
        send_ms = expiry_ms + (i % 8 - 4) * 3

        def at_send(
            client: TariffClient, who: str = who, send_ms: int = send_ms, expiry_ms: int = expiry_ms
        ) -> balance_pb2.AuthorizeResponse:
            while now_ms() < send_ms:
                time.sleep(0.001)
            answer: balance_pb2.AuthorizeResponse = batch_hold(who, "r", 6)(client)
            while now_ms() <= expiry_ms + 50:  # the reader goes on past E
                time.sleep(0.005)
            return answer

        (answer,), states = race(clients[1:2], reader, who, [at_send])
        assert answer.allowed and answer.reason == "OK" and answer.estimated_cost == "6", answer
        a, b = f"{who}.A", f"{who}.B"
        b_free = (b, "0", "100", "0", "0")
        before = st("0", "0", "0", (a, "0", "10", "0", "0"), b_free)
        expired = st("0", "0", "0", (a, "0", "0", "0", "10"), b_free)
        held_on_a = st("0", "0", "6", (a, "0", "10", "6", "0"), b_free)
        held_on_a_expired = st("0", "0", "6", (a, "0", "0", "6", "4"), b_free)
        held_on_b = st("0", "0", "6", (a, "0", "0", "0", "10"), (b, "0", "100", "6", "0"))
        if answer.credits_available == "104":
            race_ended(seen, admin, who, states, {before, held_on_a, held_on_a_expired}, {held_on_a_expired})
        else:
            assert answer.credits_available == "94", answer
            race_ended(seen, admin, who, states, {before, expired, held_on_b}, {held_on_b})


def filler_events(who: str) -> list[usage_pb2.UsageEvent]:
    """FILLER events of customer `filler` (made on first use), to be rated ahead of `who`'s in one batch."""
    return [
        usage_pb2.UsageEvent(
            transaction_id=f"filler-{who}-{n}",
            customer_id="filler",
            event_type="u",
            timestamp_ms=now_ms(),
            values={"n": 1},
        )
        for n in range(FILLER)
    ]


def sent_before(
    clients: list[TariffClient], who: str, events: list[usage_pb2.UsageEvent], due_ms: int
) -> tuple[usage_pb2.IngestAck, list[State]]:
    """`events` as one batch sent 40 ms before `due_ms`, all accepted, while `who`'s balance is read until 20 ms past
    it: the ack, and every state read, the last one after the ack."""

    batch = usage_pb2.UsageBatch(batch_id=f"{who}-b", events=events)  # made ahead: it takes a while

    def send(client: TariffClient) -> Any:
        while now_ms() < due_ms - 40:
            time.sleep(0.001)
        ack = client.usage.IngestUsageBatch(batch)
        while now_ms() <= due_ms + 20:  # the reader goes on past the due instant
            time.sleep(0.005)
        return ack

    (ack,), states = race(clients[1:2], clients[2], who, [send])
    assert accepted(ack) == len(events)
    return ack, states


def test_a_read_while_a_batch_received_before_a_grants_expiry_is_rated_shows_what_the_clock_then_records(
    server: ServerProcess, clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 10 credits expiring at E; one batch received about 40 ms before E: FILLER events of another customer,
    then 4 units of ours dated before E. The writer applies the clock's work due by its group's time before the
    batch (README "Expiry and breakage": before it rates usage received after expires_at), so the batch, received
    before E, draws 4 from G and 6 break at E; received after E, G's 10 broke and the 4 are overage. A read from E
    on counts what the clock will record at that instant (README "Rollover": "The same holds for a grant's expiry")
    : so while the batch is rated it may show G whole or, once its event is rated, drawn 4; never G broken whole
    beside the batch then drawing 4 from it (breakage 10 shown, 6 recorded)."""
    admin = clients[0]
    for i in range(3):
        who = f"late-{i}"
        customer(admin, who)
        filler = filler_events(who)
        expiry_ms = now_ms() + 300
        grant(admin, who, f"{who}.G", "10", expires_at=stamp(expiry_ms))
        _, states = sent_before(clients, who, [*filler, event(who, "e", 4, expiry_ms - 200)], expiry_ms)
        g = f"{who}.G"
        before = st("0", "0", "0", (g, "0", "10", "0", "0"))
        received_before = st("4", "0", "0", (g, "4", "0", "0", "6"))
        if states[-1] == received_before:
            race_ended(
                seen,
                admin,
                who,
                states,
                {before, st("4", "0", "0", (g, "4", "6", "0", "0")), received_before},
                {received_before},
            )
        else:
            received_after = st("4", "4", "0", (g, "0", "0", "0", "10"))
            race_ended(
                seen,
                admin,
                who,
                states,
                {before, st("0", "0", "0", (g, "0", "0", "0", "10")), received_after},
                {received_after},
            )


def test_a_read_while_a_batch_received_before_a_period_end_is_rated_shows_the_rollover_the_clock_then_records(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """As above with a rollover (README "Rollover"): a contract whose period ends at E, R 10 credits with
    rollover_fraction 0.5; one batch received about 40 ms before E, its last event 4 units of ours dated before E.
    Received before E: R pays 4, and at E 3 roll over into rollover-R-E and 3 break (R drawn 4 + 3). Received
    after E: 5 rolled and 5 broke at E, and the event, dated before E, is overage of the period that ended (R has
    nothing left, the ROLLOVER grant starts at E). The ROLLOVER grant, which expires, burns and lists first. A read
    never shows one of these beside the other's end."""
    admin = clients[0]
    for i in range(3):
        who = f"roll-{i}"
        filler = filler_events(who)
        end_ms = now_ms() + 400
        start_ms = month_before(end_ms)
        if datetime.fromtimestamp(end_ms / 1000, UTC).day > 28:
            pytest.skip("a month before a 29th-31st may not exist: the period would not end at E")
        customer(admin, who, starting_ms=start_ms)
        grant(admin, who, f"{who}.R", "10", starts_at=stamp(start_ms), rollover_fraction="0.5")
        _, states = sent_before(clients, who, [*filler, event(who, "e", 4, end_ms - 200)], end_ms)
        r, rolled = f"{who}.R", f"rollover-{who}.R-{end_ms}"
        before = st("0", "0", "0", (r, "0", "10", "0", "0"))
        rolled_before = st("0", "0", "0", (rolled, "0", "3", "0", "0"), (r, "7", "0", "0", "3"))
        if states[-1] == rolled_before:
            drew = st("4", "0", "0", (r, "4", "6", "0", "0"))
            race_ended(seen, admin, who, states, {before, drew, rolled_before}, {rolled_before})
        else:
            after = st("0", "0", "0", (rolled, "0", "5", "0", "0"), (r, "5", "0", "0", "5"))
            race_ended(seen, admin, who, states, {before, after}, {after})


def test_a_read_while_a_batch_received_before_a_holds_ttl_settles_it_never_shows_the_hold_expired(
    clients: list[TariffClient], seen: dict[str, State]
) -> None:
    """G 10; r holding 6 with a TTL ending at T; one batch received about 40 ms before T, its last event 4 units
    settling r. Received before T: it settles r (no notice), 4 drawn. Received after: r expired at T (its 6 given
    back), the event is NOTICE_RESERVATION_EXPIRED and draws 4. Both end with 4 drawn, nothing held; but a read
    showing r expired (nothing held, nothing drawn) beside an event that then settled it is no serial order's."""
    admin = clients[0]
    for i in range(3):
        who = f"ttl-{i}"
        customer(admin, who)
        grant(admin, who, f"{who}.G", "10")
        filler = filler_events(who)
        made_ms = now_ms()
        answer = admin.authorize(who, "u", values={"n": 6}, reserve=True, reservation_ttl_s=0.4, reservation_id="r")
        assert answer.allowed, answer
        due_ms = made_ms + 400  # the hold ends at its instant, taken by the server after made_ms, plus its TTL
        settling = usage_pb2.UsageEvent(
            transaction_id=f"{who}-e", customer_id=who, event_type="u", timestamp_ms=now_ms(), values={"n": 4}
        )
        settling.reservation_id = "r"
        ack, states = sent_before(clients, who, [*filler, settling], due_ms)
        g = f"{who}.G"
        before, after = st("0", "0", "6", (g, "0", "10", "6", "0")), st("4", "0", "0", (g, "4", "6", "0", "0"))
        notices = [usage_pb2.NoticeReason.Name(n.reason) for n in ack.notices]
        if notices:
            assert notices == ["NOTICE_RESERVATION_EXPIRED"], notices
            race_ended(seen, admin, who, states, {before, st("0", "0", "0", (g, "0", "10", "0", "0")), after}, {after})
        else:
            race_ended(seen, admin, who, states, {before, after}, {after})


# ---------------------------------------------------------------------------------------------
# Replay


def test_after_a_restart_every_customer_reads_as_before(server: ServerProcess, seen: dict[str, State]) -> None:
    """Replay (snapshot and journal) gives the state every race left."""
    assert seen
    server.restart()
    with server.client() as client:
        for who, state in seen.items():
            assert state_of(client.get_balance(who)) == state, who
