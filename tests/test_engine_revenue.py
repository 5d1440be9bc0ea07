"""Revenue recognition (engine/revenue.py) over the kernel's aggregates: for random grants (with cost bases that do
not divide evenly), some expiring (their rest broken by the clock), and random usage over three months, the report
reconciles for any span, recognised + deferred + breakage == paid for credits, spans add up, products and customers
sum to the same figure, the recognised total equals each grant's paid x drawn / amount and the breakage each
grant's value once drawn and broken less its value once drawn, both computed independently from the balances.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import commands as cmd
from engine import revenue
from engine.contracts import OveragePolicy
from engine.errors import InvalidArgument, NotFound
from engine.ledger import GrantKind
from engine.money import PICOS_PER_UNIT, round_ratio
from tests.engine_fixtures import DAY_MS, EPOCH_MS, basic_world, rate, unit
from tests.kernel_fixtures import KernelWorld, usage_event


def add_months(anchor_ms: int, months: int) -> int:
    """The anchor plus `months` calendar months, a day past the month's end clamped to the month's last day (the
    README's billing calendar), computed here independently of the engine."""
    anchor = datetime.fromtimestamp(anchor_ms / 1000, UTC)
    year, month = divmod(anchor.year * 12 + anchor.month - 1 + months, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor_ms + (anchor.replace(year=year, month=month + 1, day=day) - anchor) // timedelta(milliseconds=1)


MONTHS = [add_months(EPOCH_MS, k) for k in range(4)]  # the contract's first three periods and the end
FAR_FUTURE_MS = add_months(EPOCH_MS, 120)


def world(
    grants: list[tuple[int, int, int]], overage_price: str = "1.5", expiry_days: list[int | None] | None = None
) -> KernelWorld:
    """acme with grants (amount credits, paid currency units, starts in month k), the i-th expiring
    expiry_days[i] days after it starts when given."""
    w = basic_world([rate("tokens", unit("1"))], overage_price=overage_price, extra_products=["images"])
    w.version([rate("tokens", unit("1")), rate("images", unit("3"))])
    for i, (amount, paid, month) in enumerate(grants):
        kind = GrantKind.PROMOTIONAL if paid == 0 else GrantKind.PREPAID
        days = expiry_days[i] if expiry_days else None
        expires_at_ms = MONTHS[month] + days * DAY_MS if days is not None else None
        w.grant(
            f"g{i}",
            str(amount),
            paid=str(paid),
            kind=kind,
            priority=i,
            starts_at_ms=MONTHS[month],
            expires_at_ms=expires_at_ms,
        )
    kernel = KernelWorld(w)
    kernel.load()
    return kernel


def report(kernel: KernelWorld, start: int, end: int) -> revenue.Report:
    usage = kernel.kernel.usage("acme")
    credits = revenue.KernelCredits(kernel.kernel.made_grants("acme"), kernel.kernel.breakage("acme"))
    return revenue.report(kernel.world.engine, lambda c: usage[0] if usage else [], start, end, "", lambda c: credits)


grants_strategy = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 97), st.integers(0, 2)), min_size=1, max_size=4)
usage_strategy = st.lists(
    st.tuples(st.integers(0, 3 * 28 * DAY_MS - 1), st.integers(1, 9), st.sampled_from(["ai", "images"])),
    min_size=1,
    max_size=30,
)


expiries_strategy = st.lists(st.one_of(st.none(), st.integers(1, 80)), min_size=4, max_size=4)


@settings(max_examples=50, deadline=None)
@given(grants=grants_strategy, usage=usage_strategy, cut=st.integers(0, 3), expiry_days=expiries_strategy)
def test_revenue_reconciles_and_credits_are_conserved(
    grants: list[tuple[int, int, int]], usage: list[tuple[int, int, str]], cut: int, expiry_days: list[int | None]
) -> None:
    kernel = world(grants, expiry_days=expiry_days)
    events = [
        usage_event(f"t{i}", EPOCH_MS + at, {"tokens": n}, event_type=kind) for i, (at, n, kind) in enumerate(usage)
    ]
    ack = kernel.ingest(events, MONTHS[3])
    assert ack.accepted == len(events)
    kernel.kernel.advance_clock(MONTHS[3], True, True)  # grants expired by then break: what they still hold
    whole = report(kernel, EPOCH_MS, FAR_FUTURE_MS)
    totals = whole.totals
    paid_picos = sum(paid for _, paid, _ in grants) * PICOS_PER_UNIT
    assert totals.deferred_start == 0 and totals.prepaid_sold == paid_picos
    assert totals.recognized_credits + totals.deferred_end + totals.breakage == paid_picos
    assert totals.reconciles
    # Independently: each grant's paid x drawn / amount, rounded once, from the balances the kernel reports.
    balance = kernel.balance(MONTHS[3])
    drawn = {grant_id: d for grant_id, _, _, _, d in balance["grants"]}
    expected = sum(round_ratio(drawn[f"g{i}"] * paid, amount) for i, (amount, paid, _) in enumerate(grants))
    assert totals.recognized_credits == expected
    # Breakage: each grant's value once drawn and broken, less its value once drawn (breakage follows draws).
    gone = {grant_id: d + expired for grant_id, _, _, expired, d in balance["grants"]}
    assert totals.breakage == sum(
        round_ratio(gone[f"g{i}"] * paid, amount) - round_ratio(drawn[f"g{i}"] * paid, amount)
        for i, (amount, paid, _) in enumerate(grants)
    )
    assert sum(line.breakage for line in whole.by_customer) == totals.breakage
    # Spans add up at any cut, and products and customers sum to the same recognised figure.
    first, second = report(kernel, EPOCH_MS, MONTHS[cut]) if cut else None, report(kernel, MONTHS[cut], FAR_FUTURE_MS)
    for part in (first, second):
        if part is not None:
            assert part.totals.reconciles
            by_product = sum(line.recognized for line in part.by_product)
            assert by_product == sum(line.recognized for line in part.by_customer)
    if first is not None:
        assert first.totals.deferred_end == second.totals.deferred_start
        assert first.totals.recognized_credits + second.totals.recognized_credits == totals.recognized_credits
    overage = sum(a[6] for a in (kernel.kernel.usage("acme") or ([], []))[0])
    assert totals.recognized_overage == round_ratio(overage * 3, 2)  # x 1.5, one period's lines exact here


def test_a_fully_drawn_grant_recognises_exactly_its_paid_amount() -> None:
    kernel = world([(3, 1, 0)])  # 1 paid for 3 credits: a third of a unit per credit, not exact in picos
    kernel.ingest([usage_event(f"t{i}", EPOCH_MS + i, {"tokens": 1}) for i in range(3)], MONTHS[1])
    months = [report(kernel, MONTHS[0], MONTHS[1])]
    per_credit = [revenue.value_picos(kernel.world.grant_by_id("g0"), PICOS_PER_UNIT * k) for k in (1, 2, 3)]
    assert per_credit == [333_333_333_333, 666_666_666_667, PICOS_PER_UNIT]  # rounded cumulatively, never drifts
    assert months[0].totals.recognized_credits == PICOS_PER_UNIT
    assert months[0].totals.deferred_end == 0
    assert [line.deferred for line in months[0].by_customer] == [0]


def test_deferred_is_the_paid_value_of_remaining_credits_at_each_period_end() -> None:
    kernel = world([(100, 90, 0)])
    kernel.ingest([usage_event("a", EPOCH_MS + DAY_MS, {"tokens": 10})], MONTHS[1])
    kernel.ingest([usage_event("b", MONTHS[1] + DAY_MS, {"tokens": 20})], MONTHS[2])
    two = report(kernel, MONTHS[0], MONTHS[2])
    assert [(line.recognized_credits, line.deferred) for line in two.by_customer] == [
        (9 * PICOS_PER_UNIT, 81 * PICOS_PER_UNIT),
        (18 * PICOS_PER_UNIT, 63 * PICOS_PER_UNIT),
    ]
    assert [(line.product_id, line.recognized_credits) for line in two.by_product] == [
        ("tokens", 9 * PICOS_PER_UNIT),
        ("tokens", 18 * PICOS_PER_UNIT),
    ]


def test_bad_spans_and_unknown_customers_are_refused() -> None:
    kernel = world([(10, 9, 0)])
    with pytest.raises(InvalidArgument, match="period_end"):
        report(kernel, MONTHS[1], MONTHS[0])
    with pytest.raises(InvalidArgument, match="period_start"):
        revenue.report(kernel.world.engine, lambda c: [], None, MONTHS[1])
    with pytest.raises(NotFound, match="nobody"):
        revenue.report(kernel.world.engine, lambda c: [], MONTHS[0], MONTHS[1], "nobody")


def test_largest_remainder_split_is_exact() -> None:
    assert revenue.split_largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert sum(revenue.split_largest_remainder(7, {"x": 5, "y": 3}).values()) == 7


def test_a_report_of_every_customer_comes_in_steps_and_counts_a_contract_made_between_them() -> None:
    """GetRevenueReport runs report_steps on the event loop, pausing between steps (a report of a million
    customers takes seconds): a step reads REPORT_STEP_CUSTOMERS customers whole, and a contract made between two
    steps counts for its customer as in a report made after it; one in another currency refuses the report."""
    w = basic_world()
    customers = [f"c{n:03}" for n in range(2 * revenue.REPORT_STEP_CUSTOMERS + 2)]
    for n, customer_id in enumerate(customers):
        w.customer(customer_id)
        ends_ms = EPOCH_MS + 40 * DAY_MS if customer_id == customers[-1] else None
        w.contract(f"k-{customer_id}", customer_id=customer_id, ending_before_ms=ends_ms)
        w.grant(f"g-{customer_id}", "10", customer_id=customer_id, paid=str(n))
    start, end = EPOCH_MS, EPOCH_MS + 3 * 31 * DAY_MS
    steps = revenue.report_steps(w.engine, lambda c: ([], revenue.KernelCredits()), start, end)
    next(steps)  # the first REPORT_STEP_CUSTOMERS customers read
    last = customers[-1]
    second_month = EPOCH_MS + 31 * DAY_MS
    w.contract(
        "k-last-2", customer_id=last, starting_at_ms=EPOCH_MS + 40 * DAY_MS, ending_before_ms=EPOCH_MS + 100 * DAY_MS
    )
    w.grant("g-last-2", "5", customer_id=last, paid="3", starts_at_ms=second_month)
    next(steps)
    with pytest.raises(StopIteration) as done:
        next(steps)
    stepped = done.value.value
    assert stepped == revenue.report(w.engine, lambda c: [], start, end)
    # The cash of every grant, the one made between the steps included (for the customer read after them).
    assert stepped.totals.prepaid_sold == (sum(range(len(customers))) + 3) * PICOS_PER_UNIT
    # A contract in another currency, made between two steps: the report is refused, not mixed.
    steps = revenue.report_steps(w.engine, lambda c: ([], revenue.KernelCredits()), start, end)
    next(steps)
    eur = cmd.CreateContract(
        EPOCH_MS, "test", "k-eur", last, "card", EPOCH_MS + 100 * DAY_MS, None, OveragePolicy.ALLOW, "1", "EUR"
    )
    w.apply(eur)
    with pytest.raises(InvalidArgument, match=r"contracts bill in \['EUR', 'USD'\]"):
        list(steps)
