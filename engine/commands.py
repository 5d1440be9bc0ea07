"""Commands: every state change, as a value. Time, ids and the actor come in on the command.

Commands are what the journal stores; replaying the same commands in the same order gives the same state.
Stored formats only gain fields (with defaults), never lose or retype one.

The per-event structs here and in the engine (events, batches, accounts, aggregates, grants, draws) are
declared gc=False: they never take part in a reference cycle, so the cyclic garbage collector need not track
them, and millions of them do not make its collections (pauses of the event loop) longer.
"""

from __future__ import annotations

import msgspec

from engine.contracts import OveragePolicy, Override
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Cohort, Rate


class UsageEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    transaction_id: str
    customer_id: str
    event_type: str
    timestamp_ms: int
    dimensions: dict[str, str]
    values: dict[str, float]
    reservation_id: str = ""


class IngestBatch(msgspec.Struct, frozen=True, tag="ingest", gc=False):
    batch_id: str
    events: list[UsageEvent]
    received_at_ms: int
    # Content hashes of this batch's transaction ids that were already accepted (looked up in the dedupe index
    # before the command ran). Stored with the command so that replay decides duplicates exactly as before.
    known: dict[str, bytes]


class CreateCustomer(msgspec.Struct, frozen=True, tag="create_customer", omit_defaults=True):
    """`applied_audited`: as CreateContract's, for the name (its id) a customer created without one is given."""

    at_ms: int
    actor: str
    id: str
    name: str
    attributes: dict[str, str]
    applied_audited: bool = False


class CreateProduct(msgspec.Struct, frozen=True, tag="create_product"):
    """`empty_count_missing`: set by the server for every request it takes (server/convert.py), so a UNIQUE_COUNT
    product takes an event whose counted dimension is empty ("") as one without it (INVALID_EVENT), as a missing
    pricing dimension is the empty one; False (products created before it) counts "" as a distinct value, as they
    did, so their journals replay as before. `empty_filter_missing`: set likewise, so a filter on the empty value ("")
    is met by an event that leaves the dimension out, as by one sending it empty (the two count on one invoice line
    and one rate prices both); False (products created before it) is met only by an event sending it empty, as they
    were. Neither is part of the request's fingerprint."""

    at_ms: int
    actor: str
    id: str
    name: str
    event_type: str
    aggregation: Aggregation | None
    value_key: str
    filters: dict[str, str]
    pricing_dimensions: tuple[str, ...]
    unit: str
    empty_count_missing: bool = False
    empty_filter_missing: bool = False


class CreateRateCard(msgspec.Struct, frozen=True, tag="create_rate_card", omit_defaults=True):
    """`applied_audited`: as CreateContract's, for the name (its id) a rate card created without one is given."""

    at_ms: int
    actor: str
    id: str
    name: str
    pricing_unit: str
    applied_audited: bool = False


class RemoveRate(msgspec.Struct, frozen=True):
    product_id: str
    match: dict[str, str]


class CreateDraftVersion(msgspec.Struct, frozen=True, tag="create_draft_version"):
    """`drafts_bounded`: set by the server for every request it takes (server/convert.py), so a draft past
    DRAFTS_PER_RATE_CARD_MAX unpublished drafts of its card is refused (engine/versions.py); False (commands
    stored before it) drafts as it drafted then."""

    at_ms: int
    actor: str
    rate_card_id: str
    based_on_version: int
    set_parameters: dict[str, str]
    remove_parameters: tuple[str, ...]
    upsert_rates: tuple[Rate, ...]
    remove_rates: tuple[RemoveRate, ...]
    change_note: str
    request_id: str = ""  # the idempotency key: a retry with it returns the draft the first call made
    drafts_bounded: bool = False


class PublishVersion(msgspec.Struct, frozen=True, tag="publish_version"):
    """`split_hours_refused`: set by the server for every publish it takes (server/services/pricing.py), so a
    publish whose re-rating would price again usage in an hour holding a period boundary off the hour (an hour
    bucket does not know which period each unit is of) is refused (engine/kernel/src/split_hours.rs
    refuse_split_hours); False (commands stored before it) re-rates as it re-rated then. `rerate_in_contract`: set
    likewise, so a re-rated period's run of hour buckets ends at its contract's end too (a switched contract's last
    period keeps its monthly end, and its run took in the next contract's hours, pricing and recording them twice);
    False (commands stored before it) re-rates as then. `rerate_holds_in_time`: set likewise, so settling the draws
    again takes each open hold again at its place in time (engine/kernel/src/resettle.rs resettle: usage dated before
    the hour a hold was made in draws first and the hold keeps at most what is left); False (commands stored before
    it) settles the draws from what open holds leave, as then. `rerate_top_ups_in_time`: set likewise, so settling
    the draws again withholds each top-up from its period's charges until they reach what they were when it was
    bought (rated on time, the purchase follows the draw that bought it); False (commands stored before it) lets
    every top-up pay from its period's start, as then. `override_hours_refused`: set likewise, so a publish whose
    re-rating would price again usage in an hour holding the start or end of a matching price override off the hour
    (an hour bucket does not know which units were used before that instant) is refused
    (engine/kernel/src/split_hours.rs refuse_override_split_hours); False (commands stored before it) re-rates as
    it re-rated then.
    `rerate_carries_earlier_hours`: set likewise, so each re-rated aggregate's first bucket also carries what the
    hours before effective_from were charged less than they price at in time order (a late event was charged at the
    top of its period's quantity when it arrived: engine/kernel/src/rerate.rs earlier_hours_shortfall), the contract's
    price overrides included (unless a bucket before effective_from holds a matching override's start or end off the
    hour: rerate.rs `carries`); False (commands stored before it) re-rates as then, when a same-price publish could
    move a tiered line after a late event. Until its first release this field also left the carry out wherever the
    contract had any price override of the aggregate's product (a same-price publish then still moved such a line);
    it was never in a released journal, so it took the wider meaning rather than a new field.
    `rerate_counts_closed_events_once`: set likewise, so the reply's closed_events_left_alone counts an event
    feeding several products once (per hour and event type, the most events any one of its products had), as
    events_rerated does; False (commands stored before it) counts it once per product it fed, as then (a
    re-rating's completion record holds the counts, and replay compares them).
    `prices_rounded_in_range`: set likewise (publishes only), so validation holds a price field's value rounded to 18
    places below 10^18 too (engine/ratecard.py validate: 999999999999999999.9999999999999999999 rounds to 10^18);
    False (commands stored before it) validates as then. `rerate_breaks_rolled_credit`: set likewise, so credit
    settling the draws again gives back to a grant that has rolled over already (a cut of the period it rolled over
    at) breaks at once, in that period, at the latest AdvanceClock's time, the rollover being final; False (commands
    stored before it) leaves it in the grant, usable by nothing and never broken, as then.
    `rerate_holds_off_final_grants`: set likewise, so an open hold taken again at its place in time (with
    `rerate_holds_in_time`) takes from a grant that has rolled over, or whose expiry has passed by the command's
    time, no more than it held there (a rolled one nothing: the rollover moved it), so credit a cut gives back to
    such a grant breaks, and takes back its share on the ROLLOVER grant a rollover moved it to
    (engine/kernel/src/resettle.rs retake_hold); False (commands stored before it) takes it again from the grants
    usable when it was made, as then: the rolled or expired ones included (a cut put the hold on credit that was to
    break; on a rolled grant its release left it there, usable by nothing) and the ROLLOVER grant not (the hold lost
    its share, even under the very same prices). `rerate_keeps_unchanged_draws`: set likewise, so a customer the
    re-rating changes no bucket's amount of (its buckets only change version) keeps its draws, holds, top-ups,
    overage and revenue exactly as rated (engine/kernel/src/rerate.rs rerate_customer); False (commands stored
    before it) settles its open periods again by buckets (resettle), as then, which could move which grant pays a
    line, and the overage, although no amount changed."""

    at_ms: int
    actor: str
    rate_card_id: str
    version: int
    effective_from_ms: int | None  # None: the start of the current hour
    cohort: Cohort | None = None  # None: every customer outside cohorts (engine/cohorts.py)
    split_hours_refused: bool = False
    rerate_in_contract: bool = False
    rerate_holds_in_time: bool = False
    rerate_top_ups_in_time: bool = False
    override_hours_refused: bool = False
    rerate_carries_earlier_hours: bool = False
    rerate_counts_closed_events_once: bool = False
    prices_rounded_in_range: bool = False
    rerate_breaks_rolled_credit: bool = False
    rerate_holds_off_final_grants: bool = False
    rerate_keeps_unchanged_draws: bool = False


class CreateContract(msgspec.Struct, frozen=True, tag="create_contract", omit_defaults=True):
    """`applied_audited`: set by the server for every request it takes (server/services/contracts.py), so the
    audit entry's diff holds the id, start, overage price and currency the contract was given when the request
    left them out (engine/audit.py), not the request's blanks; False (left out when stored, as commands stored
    before it have none, so their fingerprints are unchanged) writes the entry its release wrote.
    `numbered_id_keeps_start`: set likewise, so an unnamed contract whose default id is taken, and which must be
    cut to stay within 128 characters once ".2" is added, is cut in its customer id, keeping the start's date whole
    (engine/control.py numbered_contract_id); False (commands stored before it) cuts the id's end, as then.
    `pricing_unit_shared`: set likewise, so a contract on a card priced in another unit than the customer's other
    contracts' cards is refused (their grants, in one unit, would pay it credit for credit); False (commands
    stored before it) takes it, as then."""

    at_ms: int
    actor: str
    id: str
    customer_id: str
    rate_card_id: str
    starting_at_ms: int | None
    ending_before_ms: int | None
    overage_policy: OveragePolicy
    overage_price: str
    currency: str
    applied_audited: bool = False
    numbered_id_keeps_start: bool = False
    pricing_unit_shared: bool = False


class AddOverride(msgspec.Struct, frozen=True, tag="add_override", omit_defaults=True):
    """`overrides_bounded`: set by the server for every request it takes (server/services/contracts.py), so the
    engine refuses an override past OVERRIDES_PER_CONTRACT_MAX when it applies the command, not only the service
    when the request arrives (requests arriving together all passed that check, and took a contract past the
    limit); False (left out when stored, as commands stored before it have none) adds as it added then.
    `multiplier_reduced`: set likewise, so the override's multiplier is reduced by its common factor with 10^18
    and multiplied in after the division (engine/kernel/src/price.rs `PricedCurve::with_multiplier`: a multiplier
    of 1 took charges far inside 128 bits out of range, INVALID_EVENT); False (commands stored before it) prices
    as it priced then. `applied_audited`: set likewise, so the audit entry's diff names the id an override sent
    without one was given (engine/audit.py); False writes the entry its release wrote."""

    at_ms: int
    actor: str
    contract_id: str
    override: Override
    overrides_bounded: bool = False
    multiplier_reduced: bool = False
    applied_audited: bool = False


class EndContract(msgspec.Struct, frozen=True, tag="end_contract"):
    """Sets (or moves) a contract's ending_before (engine/customers.py `_end_contract`; the usage it checks for is the
    kernel's, engine/billing.py). A command kind of its own, new with its rules: no record of an earlier release
    holds one, so it needs no server-set field."""

    at_ms: int
    actor: str
    contract_id: str
    ending_before_ms: int


class EndOverride(msgspec.Struct, frozen=True, tag="end_override"):
    """Sets a contract override's ending_before, or moves it earlier (engine/customers.py `_end_override`; the usage
    it checks for is the kernel's, engine/billing.py). A command kind of its own, new with its rules: no record of an
    earlier release holds one, so it needs no server-set field."""

    at_ms: int
    actor: str
    contract_id: str
    override_id: str
    ending_before_ms: int


class ExpireGrant(msgspec.Struct, frozen=True, tag="expire_grant"):
    """Moves a grant's expires_at earlier, or sets it on a grant with none (engine/grants.py `_expire_grant`; the
    kernel's usage hours and grants it reads and the kernel's grant it moves, engine/billing.py). A command kind
    of its own, new with its rules: no record of an earlier release holds one, so it needs no server-set field."""

    at_ms: int
    actor: str
    customer_id: str
    grant_id: str
    expires_at_ms: int


# Fields the server sets on every new command of their type, asked for by no caller; absent from the records of
# earlier releases. What was asked is the same with or without them, so neither a retry's fingerprint
# (engine/control.py) nor the audit log's entry (engine/audit.py) holds them: replaying an earlier record then
# writes the same entry its release wrote.
SERVER_SET_FIELDS = (
    "use_ends_at_rollover",
    "rollovers_shown",
    "alerts_evaluated",
    "paid_at_picos",
    "made_ids_refused",
    "rollover_ids_distinct",
    "rollover_lasts_next_period",
    "adjustments_in_contract",
    "split_hours_refused",
    "rerate_in_contract",
    "parts_in_contract",
    "rerate_holds_in_time",
    "rerate_top_ups_in_time",
    "rerate_breaks_rolled_credit",
    "rerate_holds_off_final_grants",
    "rerate_keeps_unchanged_draws",
    "expired_credit_breaks",
    "override_hours_refused",
    "rerate_carries_earlier_hours",
    "overrides_bounded",
    "multiplier_reduced",
    "rollover_start_in_contract",
    "rerate_counts_closed_events_once",
    "empty_count_missing",
    "prices_rounded_in_range",
    "expiring_at_rollover_rolls",
    "rolled_breakage_shown",
    "expired_breakage_shown",
    "spent_grants_left_out",
    "price_in_contract_currency",
    "applied_audited",
    "numbered_id_keeps_start",
    "pricing_unit_shared",
    "rules_bounded",
    "grants_bounded",
    "drafts_bounded",
    "refunds_netted",
    "closed_in_journal_order",
    "empty_filter_missing",
)


class GrantCredits(msgspec.Struct, frozen=True, tag="grant_credits", omit_defaults=True):
    """`use_ends_at_rollover`: set by the server for every request it takes (server/convert.py), so a grant with a
    rollover fraction pays only for usage dated before its rollover; False (left out when stored, as commands
    stored before it have none) keeps the older rule, under which such a grant paid whatever it still held until
    the clock rolled it over. `paid_at_picos`: set by the server likewise, so a paid_amount finer than 10^-12 of
    the currency (which revenue, kept in picos, would round away) is refused; False (commands stored before it)
    takes it as it was taken then. `made_ids_refused`: set by the server likewise, so an id the rating kernel gave
    a grant it made for the customer (a top-up, a rollover) is refused (engine/billing.py) instead of replacing
    that grant in the kernel; False (commands stored before it) applies as it applied then.
    `rollover_start_in_contract`: set by the server likewise, so a grant with a rollover fraction whose start no
    contract of its customer covers (it would have no billing period to roll over at the end of, and so never
    roll over) is refused; False (commands stored before it) grants it as it was granted then.
    `applied_audited`: set likewise, so the audit entry's diff names the customer and start the grant was given
    when the request left them to its contract (engine/audit.py); False writes the entry its release wrote.
    `expiring_at_rollover_rolls`: set by the server likewise, so a grant with a rollover fraction whose expires_at
    is exactly the end of the billing period it starts in (its rollover) rolls over there, as one with no expiry
    or a later one does (its credits are usable up to that end); False (commands stored before it) keeps the
    older rule, under which such a grant simply expired, all of its remainder breakage. `grants_bounded`: set
    likewise, so a grant past GRANTS_PER_CUSTOMER_MAX of its customer is refused (engine/grants.py); False
    (commands stored before it) grants as it granted then. None of them is part of a request's fingerprint
    (engine/control.py)."""

    at_ms: int
    actor: str
    id: str
    customer_id: str
    contract_id: str
    kind: GrantKind | None
    amount: str
    paid_amount: str
    priority: int
    applicable_product_ids: tuple[str, ...]
    starts_at_ms: int | None
    expires_at_ms: int | None
    rollover_fraction: str
    use_ends_at_rollover: bool = False
    paid_at_picos: bool = False
    made_ids_refused: bool = False
    rollover_start_in_contract: bool = False
    expiring_at_rollover_rolls: bool = False
    applied_audited: bool = False  # as CreateContract's: the diff names the customer and start the grant was given
    grants_bounded: bool = False


class RollbackRateCard(msgspec.Struct, frozen=True, tag="rollback_rate_card"):
    """Publishes a copy of `to_version` as a new version, through PublishVersion's own path."""

    at_ms: int
    actor: str
    rate_card_id: str
    to_version: int
    effective_from_ms: int | None  # None: the start of the current hour
    split_hours_refused: bool = False  # as PublishVersion's
    rerate_in_contract: bool = False  # as PublishVersion's
    rerate_holds_in_time: bool = False  # as PublishVersion's
    rerate_top_ups_in_time: bool = False  # as PublishVersion's
    override_hours_refused: bool = False  # as PublishVersion's
    rerate_carries_earlier_hours: bool = False  # as PublishVersion's
    rerate_counts_closed_events_once: bool = False  # as PublishVersion's
    rerate_breaks_rolled_credit: bool = False  # as PublishVersion's
    rerate_holds_off_final_grants: bool = False  # as PublishVersion's
    rerate_keeps_unchanged_draws: bool = False  # as PublishVersion's


class CreateAlert(msgspec.Struct, frozen=True, tag="create_alert", omit_defaults=True):
    """`applied_audited`: as CreateContract's, for the id a rule is named by when the request gives none.
    `rules_bounded`: set by the server for every request it takes (server/services/alerts.py), so the engine
    refuses a rule past ALERT_RULES_PER_SCOPE_MAX of its scope (engine/alerts.py) when it applies the command;
    False (left out when stored, as commands stored before it have none) adds as it added then."""

    at_ms: int
    actor: str
    id: str  # empty: named after the rule's content (engine/alerts.py)
    customer_id: str  # empty with all_customers
    all_customers: bool
    alert_type: str  # an engine.alerts.AlertType name, checked when applied
    threshold: str
    applied_audited: bool = False
    rules_bounded: bool = False


class DeleteAlertRule(msgspec.Struct, frozen=True, tag="delete_alert_rule"):
    """Deletes an alert rule (engine/alerts.py `delete_rule`): evaluated no more, its id never used again."""

    at_ms: int
    actor: str
    id: str


class ClosePeriod(msgspec.Struct, frozen=True, tag="close_period"):
    """Finalises one customer's invoice for the period starting at period_start_ms (which must have ended by at_ms)."""

    at_ms: int
    actor: str
    customer_id: str
    period_start_ms: int
    # The invoice shows a grant that rolled over by the period's end as drawn into its ROLLOVER grant and broken
    # (GetBalance's rule). False in the records of earlier releases, whose replay builds their invoices as then.
    rollovers_shown: bool = False
    # A line lists the re-rating adjustments of the hours its contract covers only (a switched contract's last
    # period keeps its monthly end, past the contract's end). False in the records of earlier releases, whose
    # replay lists every hour of the period as they did.
    adjustments_in_contract: bool = False
    # A line's version parts (`prices`) count the hours its contract covers only, as its adjustments do. False in
    # the records of earlier releases (adjustments_in_contract ones included), whose replay counts every hour of
    # the period in the parts as they did.
    parts_in_contract: bool = False
    # A grant that rolled over by the period's end shows as GetBalance shows it: `expired` the breakage its
    # rollover recorded, `drawn` the rest (usage of a later contract's period dated before this period's end, a
    # switched contract's last period keeping its monthly end, included). False in the records of earlier
    # releases, whose replay counts this period's and earlier periods' usage as drawn and the rest as expired.
    rolled_breakage_shown: bool = False
    # Likewise a grant that expired by the period's end without rolling over: `expired` the breakage its expiry
    # recorded (and the credit it still has, which breaks), `drawn` the rest (usage of a later contract's period
    # dated before the expiry included). False in the records of earlier releases, whose replay counts this
    # period's and earlier periods' usage as drawn and the rest as expired.
    expired_breakage_shown: bool = False
    # The invoice keeps how many grants GrantCredits had made, and top-ups the kernel had bought, breakage entries
    # it had recorded and contracts there were for the customer, by its close (Invoice.recorded_before), so the
    # revenue report tells a sale, breakage or contract recorded after the close by journal order, not by the times
    # the records carry (a wall clock set back between them: engine/revenue.py). False in the records of earlier
    # releases, whose invoices keep none: the report compares the times, as then.
    closed_in_journal_order: bool = False
    # The invoice lists the grants that matter to its period: it leaves out a grant spent whole by the usage of
    # earlier periods (granted = drawn, nothing remaining or expired) that nothing in the period touched (no line
    # drew on it, it was not bought in it, it did not expire or roll over in it), as drafts do. False in the
    # records of earlier releases, whose replay lists every grant started before the period's end, as they did.
    spent_grants_left_out: bool = False


class CloseDuePeriods(msgspec.Struct, frozen=True, tag="close_due_periods"):
    """Finalises every customer's invoice for each period that ended at least grace_ms before at_ms: the
    server's periodic close, a journaled time command (replay reads at_ms from here, never a clock)."""

    at_ms: int
    actor: str
    grace_ms: int
    periods_max: int = 0  # at most this many periods (the earliest period end first, then contract id); 0: all
    rollovers_shown: bool = False  # as ClosePeriod's
    # The balance rules are evaluated for the customers whose periods it closed, as ClosePeriod's customer is
    # (engine/billing.py): a grant that expired or rolled over at the period's end alerts at its close at the
    # latest. False in the records of earlier releases, whose replay evaluates none, as they did.
    alerts_evaluated: bool = False
    adjustments_in_contract: bool = False  # as ClosePeriod's
    parts_in_contract: bool = False  # as ClosePeriod's
    rolled_breakage_shown: bool = False  # as ClosePeriod's
    expired_breakage_shown: bool = False  # as ClosePeriod's
    closed_in_journal_order: bool = False  # as ClosePeriod's
    spent_grants_left_out: bool = False  # as ClosePeriod's


class Reserve(msgspec.Struct, frozen=True, tag="reserve"):
    """Authorize with a hold: the kernel decides at `at_ms` and, when allowed, holds the estimate until
    `at_ms + ttl_ms` (engine/credits.py). `ttl_defaulted`: set by the server when the request named no
    reservation_ttl (`ttl_ms` is then the one it gave it), so a retry naming none is the same request whatever TTL it
    is given by then (after a start with a shorter --reservation-ttl-max-s), and one naming a TTL is while the hold
    is open and was given that TTL (engine/kernel/src/credits.rs Kernel::reserve). False (requests naming their TTL,
    and commands stored before it, which named the TTL given) takes `ttl_ms` as named, as then. `refunds_netted`: set
    by the server for every request it takes, so that the usage is decided and held with its refunds and charges
    netted, as the server rates a batch (Billing.ingest); False (commands stored before it) settles its charges in
    burn order, as then."""

    at_ms: int
    actor: str
    customer_id: str
    reservation_id: str
    event_type: str
    dimensions: dict[str, str]
    values: dict[str, float]
    ttl_ms: int
    ttl_defaulted: bool = False
    refunds_netted: bool = False


class ReleaseReservation(msgspec.Struct, frozen=True, tag="release_reservation"):
    """`expired_credit_breaks`: set by the server for every release it takes, so that what the hold gives back to a
    grant already broken at its expiry breaks at once, where no event can draw it before the next AdvanceClock; False
    (commands stored before it) leaves it to that AdvanceClock, as then."""

    at_ms: int
    actor: str
    customer_id: str
    reservation_id: str
    expired_credit_breaks: bool = False


class SetTopUpPolicy(msgspec.Struct, frozen=True, tag="set_top_up_policy", omit_defaults=True):
    """Decimal texts as received; an empty threshold and recharge_to with max_per_period 0 clears the policy.
    `price_in_contract_currency`: set by the server for every request it takes (server/services/contracts.py), so
    the policy's price is in the currency of the contract it is set through, and it buys only in billing periods of
    the customer's contracts in that currency (a price set in USD is no price in JPY: after a switch to another
    currency it buys nothing until set again through a contract in that one); False (left out when stored, as
    commands stored before it have none) buys in every contract's period, its price read in that contract's
    currency, as then."""

    at_ms: int
    actor: str
    contract_id: str
    threshold: str
    recharge_to: str
    price_per_credit: str
    max_per_period: int
    price_in_contract_currency: bool = False


class AdvanceClock(msgspec.Struct, frozen=True, tag="advance_clock"):
    """The server's clock reached `at_ms`: expire reservations and grants due by then (server/clock.py)."""

    at_ms: int
    actor: str
    # The balance rules are evaluated for the customers of which a grant expired or rolled over (engine/billing.py),
    # as for a reservation's expiry: LOW_BALANCE and CREDITS_EXHAUSTED fire at the expiry's record. Set by the
    # server; False in the records of earlier releases, whose replay evaluates none, as they did.
    alerts_evaluated: bool = False
    # A ROLLOVER grant it makes is named rollover-<grant>-<period end ms> with a '+' added while a grant of the
    # customer holds that id (one the control plane made in advance, as a top-up's id gets one), so that two grants
    # of a customer never share an id. Set by the server; False in the records of earlier releases, whose replay
    # names it as they did, even when taken.
    rollover_ids_distinct: bool = False
    # A ROLLOVER grant it makes is usable until the end of the period after the one that ended, on the schedule of
    # the contract the grant rolled over in (a full period, after a switch or with no contract in force alike). Set
    # by the server; False in the records of earlier releases, whose replay bounds it by the period of the contract
    # in force at the rollover (never, when none is), as they did.
    rollover_lasts_next_period: bool = False


class ReserveBatch(msgspec.Struct, frozen=True, tag="reserve_batch"):
    """An AuthorizeBatches message's holds, one command for the message: `requests` is a tariff.v1.AuthorizeBatch
    of its reserve requests as the kernel completed them (each with its reservation id), applied in order as
    Reserve applies one (engine/credits.py). `ttl_default_ms`: set by the server for every message, the TTL of its
    requests naming none (the default, or --reservation-ttl-max-s when shorter), which are journaled naming none,
    their TTL no part of their request (as a Reserve's with `ttl_defaulted`); 0 in commands stored before it, whose
    requests had the TTL given filled in and apply naming it, as then. `refunds_netted`: as Reserve's."""

    at_ms: int
    actor: str
    requests: bytes
    ttl_default_ms: int = 0
    refunds_netted: bool = False


AdminCommand = (
    CreateCustomer
    | CreateProduct
    | CreateRateCard
    | CreateDraftVersion
    | PublishVersion
    | CreateContract
    | AddOverride
    | EndContract
    | EndOverride
    | GrantCredits
    | ExpireGrant
    | RollbackRateCard
    | CreateAlert
    | DeleteAlertRule
    | ClosePeriod
    | CloseDuePeriods
    | Reserve
    | ReleaseReservation
    | SetTopUpPolicy
    | AdvanceClock
    | ReserveBatch
)
# Applied by the kernel (engine/credits.py), not the control plane.
KernelCommand = Reserve | ReleaseReservation | SetTopUpPolicy | AdvanceClock | ReserveBatch
KERNEL_COMMANDS = (Reserve, ReleaseReservation, SetTopUpPolicy, AdvanceClock, ReserveBatch)
Command = IngestBatch | AdminCommand
