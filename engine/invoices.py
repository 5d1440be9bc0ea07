"""Invoices as stored and shown: lines from the kernel's buckets, credits, overage, what is due, and the one
rounding rule. engine/invoicing.py closes periods (ClosePeriod, CloseDuePeriods: the invoice becomes final,
numbered and immutable) and reads drafts; this module is the model and the arithmetic.

How an invoice is computed (the same for a draft and a final invoice, so the two are equal field by field but
for `status`, `number` and `closed_at_ms`):
- a line is one product and one combination of its pricing-dimension values; its quantity, amount, the credits
  each grant paid for it and its overage (the part no grant covered) are the kernel's period aggregate, in the
  pricing unit at 10^-12 (picos), exact, never rounded; its parts per rate card version come from the hour
  buckets whose hour starts inside the period and before its contract's end (a switched contract's last period
  keeps its monthly end: the hours past the switch are the next contract's);
- a line's `amount_due` is its overage at the contract's overage price, in the currency, rounded half-even to
  the currency's minor unit (`minor_unit`); the invoice's `overage_due` is the exact sum of the lines' unrounded
  amounts due, rounded once the same way; `rounding_adjustment` = overage_due - the sum of the lines' rounded
  amounts due, so the rounded lines plus the adjustment are the overage due to the minor unit, and no minor
  unit appears or vanishes;
- top_up_purchases = the exact sum of the costs (credits x price_per_credit, at 10^-30 of the currency) of the
  top-ups bought in the period (the kernel counts a purchase in the billing period of the event or hold that
  triggered it), rounded half-even once to the minor unit;
- total_due = overage_due + top_up_purchases (currency, minor unit). Credits are not rounded: they are drawn
  at 10^-12 exactly, whether the pricing unit is credits or a currency.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import msgspec

from engine.contracts import Contract
from engine.lines import line_id
from engine.money import round_ratio

QUANTITY_SCALE = 10**18
PICOS_PER_UNIT = 10**12
# The kernel's exact product of picos (10^-12) and an overage price at 10^-18 is at 10^-30 of the currency.
DUE_EXPONENT = 30
# The ISO 4217 currencies (list one, funds codes included) that have a minor unit, and its decimal places: a
# contract's currency and a rate card's pricing unit (besides "credits") must be one of these (checked where the
# request enters: server/services/contracts.py, server/services/pricing.py). Codes without a minor unit (XXX, XTS,
# XAU, XDR, ...) are not currencies an invoice can be rounded in. Compared code by code with list one as published
# on 2026-01-01 (the data of the `iso4217` package, 1.16.20260101): XAD, the Arab Accounting Dinar, was missing.
_TWO_PLACES = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF "
    "CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL "
    "HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU "
    "MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR "
    "SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED "
    "VES WST XAD XCD XCG YER ZAR ZMW ZWG"
)
CURRENCIES: dict[str, int] = {
    **dict.fromkeys(_TWO_PLACES.split(), 2),
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI"), 0),
    **dict.fromkeys(("VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}
INVOICE_NUMBER_PREFIX = "INV-"

# (period_start_ms, period_end_ms, overage_price_e18, closed, lines, grants): the lines Kernel.invoice_read returns.
KernelPart = tuple[str, int, int, int, int]
KernelLine = tuple[str, list[str], int, int, int, int, list[tuple[str, int]], list[KernelPart]]
# (grant id, amount, drawn through the period, expires_at_ms, (period end it rolled at, credits rolled) or None)
KernelGrant = tuple[str, int, int, int | None, tuple[int, int] | None]
KernelLines = tuple[int, int, int, bool, list[KernelLine], list[KernelGrant]]
# (journal seq, hour (Unix ms / HOUR_MS), product_id, dimension values, rate_card_id, old versions, new version,
# quantity_e18, events, old_amount_picos, new_amount_picos): what Kernel.adjustments returns, oldest first.
KernelAdjustment = tuple[int, int, str, list[str], str, list[int], int, int, int, int, int]
AdjustmentsReader = Callable[[str], list[KernelAdjustment]]
HOUR_MS = 3_600_000
ROLLOVER_FRACTION_ONE = 10**18  # a grant's rollover_fraction at 10^-18, as the kernel holds it
# Kernel.top_up_purchases: [(period_start_ms, grant_id, credits_picos, price_per_credit_e18, cost_e30, at_ms)].
KernelPurchase = tuple[int, str, int, int, int, int]
# A customer's grants as the kernel holds them, by id: (the credit it still has, its remainder and what open
# reservations hold on it; the breakage recorded from it): Kernel.invoice_read's, read with the lines when asked.
GrantCredit = Mapping[str, tuple[int, int]]
# When a period read also reads the grant credit: (the earliest instant a grant of the customer rolls over, or
# NO_ROLLOVER_MS; whether a grant expiring by the period's end wants it), Kernel.invoice_read's `grant_credit`.
CreditWanted = tuple[int, bool]
NO_ROLLOVER_MS = 2**63 - 1  # no grant of the customer rolls over (the kernel's i64::MAX)
# (customer_id, at_ms, in_contract, read_ms, grant credit wanted or None): in_contract, the version parts count the
# hours before the contract's end only; read_ms, a draft read then (what fell due by then as the clock will record
# it), None for a close. The lines, the customer's adjustments, its top-up purchases and, when one of the period's
# grants wants it, its grant credit (else None), from one kernel call (Kernel.invoice_read), so that a batch rated
# or a re-rating slice applied on the writer's thread shows in all of them or in none (a draft's read off the
# writer; a close, on the writer, reads the same way).
PeriodRead = tuple[KernelLines | None, list[KernelAdjustment], list[KernelPurchase], GrantCredit | None]
PeriodReader = Callable[[str, int, bool, int | None, CreditWanted | None], PeriodRead]


def minor_unit(currency: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3), as CURRENCIES says. A code it does not
    hold (only contracts journaled before the check can, "usd" or "XYZ") is read as it was then: its upper case's
    places, else 2."""
    return CURRENCIES.get(currency.upper(), 2)


def invoice_number(serial: int) -> str:
    """`INV-00000042`: the 42nd invoice this server finalised, over all customers, in closing order."""
    return f"{INVOICE_NUMBER_PREFIX}{serial:08d}"


class VersionPart(msgspec.Struct, frozen=True, array_like=True, gc=False):
    rate_card_id: str
    version: int
    quantity_e18: int
    events: int
    amount_picos: int

    @property
    def unit_price_picos(self) -> int:
        """amount / quantity, rounded half-even to 10^-12 of the pricing unit per unit (0 for no quantity). A LATEST
        line's part can have a negative quantity (the gauge fell in the hours that version priced): the ratio's
        signs are taken out of the divisor, as ExplainLineItem's unit price does."""
        if not self.quantity_e18:
            return 0
        sign = -1 if self.quantity_e18 < 0 else 1
        return round_ratio(sign * self.amount_picos * QUANTITY_SCALE, abs(self.quantity_e18))


class LineAdjustment(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One hour bucket of a line re-rated by journal record `journal_seq` (a retroactive publish or rollback):
    it explains the line's amount, which already holds `new_amount_picos` for the bucket."""

    journal_seq: int
    hour_start_ms: int
    rate_card_id: str
    old_versions: list[int]
    new_version: int
    quantity_e18: int
    events: int
    old_amount_picos: int
    new_amount_picos: int


class InvoiceLine(msgspec.Struct, frozen=True, gc=False):
    line_id: str
    product_id: str
    dimensions: dict[str, str]
    quantity_e18: int
    events: int
    amount_picos: int
    overage_picos: int
    credits: list[tuple[str, int]]  # (grant id, picos), in the order the grants were first drawn
    parts: list[VersionPart]
    amount_due_minor: int  # overage x overage price, rounded half-even to the currency's minor unit
    # Its buckets' re-ratings in the period, oldest first (empty for a line never re-rated).
    adjustments: list[LineAdjustment] = []


class GrantBalance(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A grant at the period's end, in picos of the pricing unit: drawn by the usage of this period and the ones
    before; what was left is `expired` if the grant expired by the period's end, else `remaining`."""

    grant_id: str
    granted_picos: int
    drawn_picos: int
    remaining_picos: int
    expired_picos: int


class RecordedBefore(msgspec.Struct, frozen=True, gc=False):
    """How many grants GrantCredits had made (State.grants_created), TOP_UP grants the kernel had bought for the
    customer (Kernel.made_grants, in the order bought) and breakage entries it had recorded for the customer
    (Kernel.breakage, in the order recorded) when a period was closed: a grant whose creation_order is above
    `grants`, or a top-up or breakage entry at that index or later, came after the close in journal order, whatever
    times the records carry (engine/revenue.py). `contracts`: how many contracts the customer had (Engine.contracts_of,
    in the order created): one at that index or later came after the close (None in an invoice closed before it was
    kept: the report compares the contract's created_at with closed_at, as then)."""

    grants: int
    top_ups: int
    breakage: int
    contracts: int | None = None


class Invoice(msgspec.Struct, gc=False):
    customer_id: str
    contract_id: str
    period_start_ms: int
    period_end_ms: int
    pricing_unit: str
    currency: str
    minor_unit: int
    overage_price: str
    lines: list[InvoiceLine]
    credits_applied: list[tuple[str, int]]  # (grant id, picos) over all lines, by grant id
    subtotal_picos: int
    overage_picos: int
    overage_due_minor: int
    top_up_purchases_minor: int
    rounding_adjustment_minor: int
    total_due_minor: int
    number: str = ""  # empty for a draft
    final: bool = False
    closed_at_ms: int = 0
    grant_balances: list[GrantBalance] = []
    # What had been recorded of the customer when it was closed, a final invoice closed by a record with
    # `closed_in_journal_order` only (None otherwise): see RecordedBefore.
    recorded_before: RecordedBefore | None = None


def build_invoice(
    contract: Contract,
    pricing_unit: str,
    product_dimensions: dict[str, tuple[str, ...]],
    period: KernelLines,
    top_ups_minor: int,
    adjustments: Sequence[KernelAdjustment] = (),
    *,
    rollovers_shown: bool = True,
    adjustments_in_contract: bool = True,
    rollovers_due: Mapping[str, tuple[int, int]] | None = None,
    grant_credit: GrantCredit | None = None,
    expired_credit: GrantCredit | None = None,
    bought: Collection[str] | None = None,
) -> Invoice:
    """The invoice of a period from the kernel's lines (a draft: number, status and close time unset), each
    line with the customer's `adjustments` (Kernel.adjustments) of its buckets whose hour starts in the period
    and, with `adjustments_in_contract`, before the contract's end (a switched contract's last period keeps its
    monthly end: the hours past the switch are the next contract's). `rollovers_shown` and
    `adjustments_in_contract` False: as the final invoices of ClosePeriod records written by earlier releases were
    built (their replay builds the same): a rolled-over grant keeps its remainder as `remaining`, and every hour of
    the period is listed. `rollovers_due` (a draft's: grant id -> (when, rollover fraction at 10^-18)): the grants
    that roll over by this period's end and have not yet, shown as rolled from the usage so far, as closing will.
    `grant_credit` (ClosePeriod's `rolled_breakage_shown`, and every draft): a grant rolled over by the period's end
    shows as GetBalance does, `expired` the breakage its rollover recorded (or, not rolled yet, will record from the
    credit it has now) and `drawn` the rest, so usage dated before the period's end but counted in a later
    contract's period (a switched contract's last period keeps its monthly end) is drawn, not broken; None: as
    closes of earlier releases, this period's and earlier periods' usage drawn and the rest of the grant expired.
    `expired_credit` (ClosePeriod's `expired_breakage_shown`, and every draft; the same reading): likewise for a
    grant that expires by the period's end without rolling over, `expired` the breakage its expiry recorded and the
    credit it has now (which breaks at its expiry, or when a hold on it gives it back), `drawn` the rest; None: as
    closes of earlier releases, this period's and earlier periods' usage drawn and the rest expired.
    `bought` (ClosePeriod's `spent_grants_left_out`, and every draft): the ids of the grants bought in the period
    (its top-up purchases); the grants that do not matter to the period are left out (`_spent_before`); None: every
    grant started before the period's end listed, as closes of earlier releases."""
    start_ms, end_ms, overage_price_e18, _closed, rows, grants = period
    listed_until_ms = contract_hours_end(contract, end_ms) if adjustments_in_contract else end_ms
    adjusted = _adjustments_by_line(adjustments, start_ms, listed_until_ms)
    currency = contract.currency
    places = minor_unit(currency)
    to_minor = 10 ** (DUE_EXPONENT - places)
    lines, due_exact, credits = _invoice_lines(rows, product_dimensions, overage_price_e18, to_minor, adjusted)
    overage_due = round_due(due_exact, to_minor)
    return Invoice(
        contract.customer_id,
        contract.id,
        start_ms,
        end_ms,
        pricing_unit,
        currency,
        places,
        contract.overage_price,
        lines,
        sorted(credits.items()),
        sum(line.amount_picos for line in lines),
        sum(line.overage_picos for line in lines),
        overage_due,
        top_ups_minor,
        overage_due - sum(line.amount_due_minor for line in lines),
        overage_due + top_ups_minor,
        grant_balances=_grant_balances(
            grants,
            (start_ms, end_ms),
            rollovers_shown,
            rollovers_due or {},
            (grant_credit, expired_credit),
            None if bought is None else {*bought, *credits},
        ),
    )


def _grant_balances(
    grants: list[KernelGrant],
    period: tuple[int, int],
    rollovers_shown: bool,
    rollovers_due: Mapping[str, tuple[int, int]],
    credit: tuple[GrantCredit | None, GrantCredit | None],
    touched: Collection[str] | None,
) -> list[GrantBalance]:
    """The period's grant balances, in the kernel's order; with `touched` (the ids of the grants the period bought
    or its lines drew on), less those spent before the period that nothing in it touched."""
    end_ms = period[1]
    balances = []
    for grant in grants:
        balance = _grant_at_end(grant, end_ms, rollovers_shown, rollovers_due, *credit)
        if touched is None or not _spent_before(balance, grant, period, rollovers_due, touched):
            balances.append(balance)
    return balances


def _spent_before(
    balance: GrantBalance,
    grant: KernelGrant,
    period: tuple[int, int],
    rollovers_due: Mapping[str, tuple[int, int]],
    touched: Collection[str],
) -> bool:
    """Whether the grant had nothing at the period's start and nothing in the period touched it, so its invoice
    leaves it out: spent whole (granted = drawn, nothing remaining or expired: it adds nothing to the list's
    remaining, expired, or granted - drawn, so the totals are those of the full list), not bought or drawn on in
    the period (so drawn whole by earlier periods' usage, or rolled over whole before the period into its ROLLOVER
    grant), and neither expiring nor rolling over in it (start excluded, end included: what a grant ending exactly
    at the start had, the previous period's invoice shows)."""
    start_ms, end_ms = period
    if balance.remaining_picos or balance.expired_picos or balance.drawn_picos != balance.granted_picos:
        return False
    grant_id, _amount, _drawn, expires_at_ms, rolled = grant
    if grant_id in touched:
        return False
    due = rollovers_due.get(grant_id)
    ends = (expires_at_ms, rolled[0] if rolled is not None else None, due[0] if due is not None else None)
    return not any(at_ms is not None and start_ms < at_ms <= end_ms for at_ms in ends)


def _invoice_lines(
    rows: list[KernelLine],
    product_dimensions: dict[str, tuple[str, ...]],
    overage_price_e18: int,
    to_minor: int,
    adjusted: dict[tuple[str, tuple[str, ...]], list[LineAdjustment]],
) -> tuple[list[InvoiceLine], int, dict[str, int]]:
    """The invoice's lines from the kernel's rows, the exact overage due over all of them (before rounding: the
    invoice rounds the sum once) and the credits drawn by grant id."""
    lines = []
    due_exact = 0
    credits: dict[str, int] = {}
    for product_id, values, quantity, events, amount, overage, drawn, parts in rows:
        dimensions = dict(zip(product_dimensions.get(product_id, ()), values, strict=False))
        line_due = overage * overage_price_e18
        due_exact += line_due
        for grant_id, picos in drawn:
            credits[grant_id] = credits.get(grant_id, 0) + picos
        lines.append(
            InvoiceLine(
                line_id(product_id, dimensions),
                product_id,
                dimensions,
                quantity,
                events,
                amount,
                overage,
                list(drawn),
                [VersionPart(*part) for part in parts],
                round_due(line_due, to_minor),
                adjusted.get((product_id, tuple(values)), []),
            )
        )
    return lines, due_exact, credits


def contract_hours_end(contract: Contract, period_end_ms: int) -> int:
    """Where the hours of a contract's period end: the period's end, or the contract's end when that comes first
    (a switched contract's last period)."""
    ending_ms = contract.ending_before_ms
    return period_end_ms if ending_ms is None else min(period_end_ms, ending_ms)


def _adjustments_by_line(
    adjustments: Sequence[KernelAdjustment], start_ms: int, end_ms: int
) -> dict[tuple[str, tuple[str, ...]], list[LineAdjustment]]:
    """The adjustments of buckets whose hour starts in [start_ms, end_ms), by (product, dimension values), in the
    kernel's order (journal order, then the order the re-rating wrote them)."""
    by_line: dict[tuple[str, tuple[str, ...]], list[LineAdjustment]] = {}
    for seq, hour, product_id, values, card, old_versions, new_version, quantity, events, old, new in adjustments:
        hour_start_ms = hour * HOUR_MS
        if start_ms <= hour_start_ms < end_ms:
            adjustment = LineAdjustment(
                seq, hour_start_ms, card, list(old_versions), new_version, quantity, events, old, new
            )
            by_line.setdefault((product_id, tuple(values)), []).append(adjustment)
    return by_line


def _grant_at_end(
    grant: KernelGrant,
    end_ms: int,
    rollovers_shown: bool,
    rollovers_due: Mapping[str, tuple[int, int]],
    grant_credit: GrantCredit | None,
    expired_credit: GrantCredit | None,
) -> GrantBalance:
    grant_id, amount, drawn, expires_at_ms, rolled = grant
    left = amount - drawn
    due = rollovers_due.get(grant_id)
    credit = grant_credit.get(grant_id) if grant_credit is not None else None
    if rollovers_shown and credit is not None:
        has, broken = credit
        if rolled is None and due is not None and due[0] <= end_ms:
            # What the clock will break then from the credit the grant has now (remainder and held): all of it but
            # its rollover share, fraction x it rounded down to the pico.
            broken += has - has * due[1] // ROLLOVER_FRACTION_ONE
            rolled = (due[0], 0)
        if rolled is not None and rolled[0] <= end_ms:
            # As GetBalance shows it: the breakage is expired, the rest of the grant drawn (into its ROLLOVER grant,
            # or by usage dated before the rollover, in whichever period that usage counts).
            return GrantBalance(grant_id, amount, amount - broken, 0, broken)
    if rolled is None and due is not None:
        # What the clock will roll then from this remainder: fraction x it, rounded down to the pico.
        rolled = (due[0], left * due[1] // ROLLOVER_FRACTION_ONE)
    if rollovers_shown and rolled is not None and rolled[0] <= end_ms:
        # As GetBalance shows it: what moved into the ROLLOVER grant is drawn, the rest of the remainder broke.
        rolled_picos = rolled[1]
        assert 0 <= rolled_picos <= left, f"grant {grant_id!r} rolled {rolled_picos} of {left} left"
        return GrantBalance(grant_id, amount, drawn + rolled_picos, 0, left - rolled_picos)
    if expires_at_ms is not None and expires_at_ms <= end_ms:
        expired = expired_credit.get(grant_id) if expired_credit is not None else None
        if expired is not None:
            # As GetBalance shows it once the clock passes the expiry: what broke and what the grant still has
            # (which will break) expired, the rest drawn (by usage dated before the expiry, in whichever period
            # that usage counts: a later contract's too, a switched contract's last period keeping its monthly end).
            has, broken = expired
            return GrantBalance(grant_id, amount, amount - broken - has, 0, broken + has)
        return GrantBalance(grant_id, amount, drawn, 0, left)
    return GrantBalance(grant_id, amount, drawn, left, 0)


def round_due(value: int, divisor: int) -> int:
    """value / divisor rounded half-even, for negative values too (a refund's overage)."""
    return round_ratio(value, divisor) if value >= 0 else -round_ratio(-value, divisor)
