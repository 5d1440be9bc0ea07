//! Credits that behave like money: reservations, automatic top-ups, expiry with breakage.
//!
//! A reservation holds credit by carving it out of grants in burn order (the grants' `remaining`
//! falls, the reservation remembers what it took from which grant), so a hold can never be spent
//! twice and, with BLOCK, holds together never exceed the credit there was. An event naming the
//! reservation gives the hold back before its own charge draws (so it is charged what it costs,
//! more or less than held); `release` and expiry give it back too. A top-up is decided inside the
//! step whose draw or hold took available credit below the policy's threshold, so replaying the
//! journal repeats it exactly; its grant id comes from the period and the purchase count. Time only
//! comes in with commands: `advance_clock` expires reservations and turns what expired grants still
//! hold into breakage, and nothing here reads a clock.

use std::collections::BTreeMap;
use std::ops::DerefMut;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

use crate::account::Account;
use crate::ack::AckBuilder;
use crate::decode::{check_event, py_repr, py_repr_cut, wire, with_view};
use crate::draw::{Changed, Grant, Outcomes, NEVER_MS};
use crate::kernel::Kernel;
use crate::money::Picos;
use crate::reads::Decision;
use crate::rollover;
use crate::route::period_containing;
use crate::tables::GrantTable;

/// What a top-up looks up, kept so that it walks neither every grant (for an id no grant has) nor every
/// purchase (for its period's count): a customer whose every draw buys one holds thousands of each. Derived from
/// the grants and purchases at the account's first top-up after its grants were installed, restored or added
/// to by a rollover (`Account::index_grants` drops it); each top-up adds its own. Not snapshotted.
#[derive(Debug, Default, Clone)]
pub struct TopUpIndex {
    /// xxh3 of every grant id of the account.
    ids: rustc_hash::FxHashSet<u64>,
    /// Purchases per billing period (by its start).
    bought: rustc_hash::FxHashMap<i64, usize>,
}

impl TopUpIndex {
    fn of(grants: &[Grant], credits: Option<&AccountCredits>) -> TopUpIndex {
        let mut index = TopUpIndex::default();
        index.ids.extend(grants.iter().map(|g| xxh3_64(g.id.as_bytes())));
        for purchase in credits.map_or(&[][..], |c| &c.purchases[..]) {
            *index.bought.entry(purchase.period_start_ms).or_default() += 1;
        }
        index
    }
}

/// `EventNotice.reason` values (tariff.v1.NoticeReason).
pub const NOTICE_UNKNOWN: i32 = 1;
pub const NOTICE_ALREADY_SETTLED: i32 = 2;
pub const NOTICE_RELEASED: i32 = 3;
pub const NOTICE_EXPIRED: i32 = 4;

/// Notices kept for `drain_notices` when nobody drains them; later ones are counted, not kept.
pub const NOTICES_MAX: usize = 100_000;

/// Top-up grants burn after every other grant (GrantBalance.priority is an int32).
pub const TOP_UP_PRIORITY: i64 = i32::MAX as i64;
/// Creation order of grants the kernel makes: after every grant the control plane made.
const MADE_CREATION_ORDER_BASE: i64 = 1 << 48;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Of what was asked (event type, dimensions, values, ttl as asked: `request_digest`): a retry must ask the same.
    pub digest: u64,
    /// The estimated cost when it was made.
    pub amount: Picos,
    /// Credits taken from each grant (grant index, picos).
    pub held: Vec<(u32, Picos)>,
    pub made_at_ms: i64,
    pub expires_at_ms: i64,
    /// Since snapshot format 6: the reason it was allowed, which a retry answers again.
    pub reason: HoldReason,
}

/// Why a hold was allowed: a retry of its request answers the same (a hold allowed as overage is not covered
/// by credit on its retry either). Holds restored from a snapshot before format 6 answer `Ok`, as they did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldReason {
    #[default]
    Ok,
    OverageAllowed,
}

impl HoldReason {
    /// The reason of an allowed decision (`Decision.reason`).
    pub fn of(reason: &str) -> HoldReason {
        match reason {
            "OVERAGE_ALLOWED" => HoldReason::OverageAllowed,
            _ => HoldReason::Ok,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            HoldReason::Ok => "OK",
            HoldReason::OverageAllowed => "OVERAGE_ALLOWED",
        }
    }
    /// What a retry's message adds to say why it was allowed.
    fn retry_note(self) -> &'static str {
        match self {
            HoldReason::Ok => "",
            HoldReason::OverageAllowed => "; allowed beyond available credit: billed as overage",
        }
    }
}

impl Reservation {
    pub fn held_total(&self) -> Picos {
        self.held.iter().map(|(_, c)| c).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    Settled,
    Released,
    Expired,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Settled => "settled",
            Ending::Released => "released",
            Ending::Expired => "expired",
        }
    }
    fn notice(self) -> i32 {
        match self {
            Ending::Settled => NOTICE_ALREADY_SETTLED,
            Ending::Released => NOTICE_RELEASED,
            Ending::Expired => NOTICE_EXPIRED,
        }
    }
}

/// A reservation no longer open, kept for a dedupe window so that retries and late events are told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub ending: Ending,
    pub digest: u64,
    pub amount: Picos,
    /// What its end gave back to grants.
    pub released: Picos,
    pub at_ms: i64,
    /// Since snapshot format 6: the reservation's `reason`.
    pub reason: HoldReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpPolicy {
    pub threshold: Picos,
    pub recharge_to: Picos,
    /// Currency per credit, at 10^-18.
    pub price_per_credit_e18: i128,
    pub max_per_period: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub period_start_ms: i64,
    pub grant_id: Box<str>,
    pub credits: Picos,
    pub price_per_credit_e18: i128,
    /// credits x price, exactly: currency at 10^-30.
    pub cost_e30: i128,
    pub at_ms: i64,
    /// Since snapshot format 7: its period's net charges when it was bought, the draw (or hold) that
    /// bought it done. A re-rating that settles the period again in time withholds the top-up from
    /// the period's charges until they reach this amount (resettle.rs `resettle`): rated on time, the
    /// purchase follows the draw. None: bought before it was recorded (restored from an older
    /// snapshot), and such a top-up is usable in a re-rating from its period's start, as then.
    pub period_charges_when_bought: Option<Picos>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakage {
    pub grant_id: Box<str>,
    /// The billing period in which the grant's last usable instant falls (0: no contract covered it).
    pub period_start_ms: i64,
    pub credits: Picos,
    /// When it was recorded (the AdvanceClock that found the grant expired).
    pub at_ms: i64,
}

/// A customer's reservations, top-up policy and purchases, and breakage: boxed in the account and
/// absent until first used, so a customer who never uses them costs one pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCredits {
    pub open: BTreeMap<Box<str>, Reservation>,
    pub ended: BTreeMap<Box<str>, Ended>,
    pub top_up: Option<TopUpPolicy>,
    pub purchases: Vec<Purchase>,
    pub breakage: Vec<Breakage>,
    /// Rollover fractions (at 10^-18) of grants that have not rolled over yet, by grant id.
    pub rollover: BTreeMap<Box<str>, i128>,
    pub rolled: Vec<Rolled>,
}

/// A rollover at a period's end: `credits` of `from` moved into the ROLLOVER grant `to` (the rest of its
/// remainder was recorded as breakage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolled {
    pub from: Box<str>,
    pub to: Box<str>,
    pub credits: Picos,
    /// The period end at which it rolled.
    pub at_period_end_ms: i64,
    /// The AdvanceClock that did it.
    pub at_ms: i64,
}

/// Held and broken credits per grant, for balances: summed once for all of an account's grants (looked up
/// per grant, the holds and breakage entries were walked once per grant).
pub struct GrantExtras<'a> {
    held: rustc_hash::FxHashMap<u32, Picos>,
    broken: rustc_hash::FxHashMap<&'a str, Picos>,
}

impl<'a> GrantExtras<'a> {
    pub fn of(account: &'a Account) -> GrantExtras<'a> {
        let mut extras = GrantExtras { held: Default::default(), broken: Default::default() };
        if let Some(c) = account.credits.as_deref() {
            for &(g, credits) in c.open.values().flat_map(|r| r.held.iter()) {
                *extras.held.entry(g).or_default() += credits;
            }
            for b in &c.breakage {
                *extras.broken.entry(&*b.grant_id).or_default() += b.credits;
            }
        }
        extras
    }

    /// (held, broken) of grant index `grant`.
    pub fn of_grant(&self, account: &Account, grant: u32) -> (Picos, Picos) {
        let held = self.held.get(&grant).copied().unwrap_or(0);
        (held, self.broken.get(&*account.grants[grant as usize].id).copied().unwrap_or(0))
    }
}

/// Something a caller may want to hear about after a step (alerts): a top-up executed or a
/// reservation expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// "TOP_UP_EXECUTED" or "RESERVATION_EXPIRED".
    pub kind: &'static str,
    pub customer_id: String,
    /// The grant (top-up) or the reservation (expiry).
    pub id: String,
    /// Credits bought, or released by the expiry.
    pub amount: Picos,
    pub period_start_ms: i64,
    pub at_ms: i64,
}

/// The kernel's notion of time and what is due.
#[derive(Debug)]
pub struct Clock {
    /// The latest AdvanceClock's time.
    pub now_ms: i64,
    /// The earliest time anything (a reservation's TTL, a grant's expiry) is due; i64::MAX: nothing.
    pub due_ms: i64,
    pub notices: Vec<Notice>,
    pub notices_dropped: u64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock { now_ms: i64::MIN, due_ms: i64::MAX, notices: Vec::new(), notices_dropped: 0 }
    }
}

impl Clock {
    pub fn note_due(&mut self, at_ms: i64) {
        self.due_ms = self.due_ms.min(at_ms);
    }
    fn notify(&mut self, notice: Notice) {
        if self.notices.len() < NOTICES_MAX {
            self.notices.push(notice);
        } else {
            self.notices_dropped += 1;
        }
    }
}

/// Why the kernel made a grant.
pub enum Made<'a> {
    TopUp(&'a Purchase),
    Rollover(&'a Rolled),
}

/// What `Kernel::reserve` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reserved {
    pub decision: Decision,
    /// Credits held by this reservation now.
    pub held: Picos,
    /// The id was known with the same request: nothing changed.
    pub repeated: bool,
    pub expires_at_ms: i64,
}

/// Why `release` did not release.
#[derive(Debug, PartialEq, Eq)]
pub enum ReleaseRefusal {
    NotFound(String),
    Ended(String),
}

/// A hold's TTL in milliseconds, and how its request asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldTtl {
    /// The request named it (or, journaled before `Defaulted`, was given it by the server): part of the request.
    Named(i64),
    /// The request named none and the server gave it this (the default, or `--reservation-ttl-max-s` when
    /// shorter, which a later start may set otherwise): no part of the request.
    Defaulted(i64),
}

impl HoldTtl {
    pub fn ms(self) -> i64 {
        match self {
            HoldTtl::Named(ms) | HoldTtl::Defaulted(ms) => ms,
        }
    }
}

/// The digest of what a reservation asks (not its time: a retry comes later): a `Named` TTL as its 8 bytes, a
/// `Defaulted` one as 0, which no named TTL is (each is positive), so a retry naming none is the same request as a
/// first call naming none whatever TTL it is given by then.
pub fn request_digest(event: &wire::UsageEvent, ttl: HoldTtl) -> u64 {
    fn text(bytes: &mut Vec<u8>, s: &str) {
        bytes.extend_from_slice(&(s.len() as u64).to_le_bytes());
        bytes.extend_from_slice(s.as_bytes());
    }
    let mut bytes = Vec::with_capacity(64);
    text(&mut bytes, &event.event_type);
    let mut dimensions: Vec<(&str, &str)> = Vec::new();
    for d in &event.dimensions {
        dimensions.retain(|(k, _)| *k != d.key);
        dimensions.push((&d.key, &d.value));
    }
    dimensions.sort_unstable();
    let mut values: Vec<(&str, u64)> = Vec::new();
    for v in &event.values {
        values.retain(|(k, _)| *k != v.key);
        values.push((&v.key, v.value.to_bits()));
    }
    values.sort_unstable();
    for (k, v) in dimensions {
        text(&mut bytes, k);
        text(&mut bytes, v);
    }
    for (k, v) in values {
        text(&mut bytes, k);
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let asked_ms = match ttl {
        HoldTtl::Named(ms) => ms,
        HoldTtl::Defaulted(_) => 0,
    };
    bytes.extend_from_slice(&asked_ms.to_le_bytes());
    xxh3_64(&bytes)
}

/// Gives a reservation's hold back to its grants; returns the credits given back.
fn give_back(account: &mut Account, held: &[(u32, Picos)]) -> Picos {
    let mut total = 0;
    for &(g, credits) in held {
        account.grants[g as usize].remaining += credits;
        account.note_payable(g);
        total += credits;
    }
    total
}

/// Called by ingestion for an event naming `reservation_id`, after it was planned and before its
/// charges draw: Ok(credits released) when it settled an open reservation, else the notice
/// (reason, message) its ack carries. The event is rated either way.
pub fn settle_event(account: &mut Account, reservation_id: &str, received_ms: i64) -> Result<Picos, (i32, String)> {
    let credits = account.credits.as_deref_mut();
    let Some(reservation) = credits.as_ref().and_then(|c| c.open.get(reservation_id)).cloned() else {
        let ended = credits.and_then(|c| c.ended.get(reservation_id));
        return Err(match ended {
            Some(ended) => (
                ended.ending.notice(),
                format!(
                    "reservation {} was already {} at {}: the event was rated, nothing was released",
                    py_repr_cut(reservation_id),
                    ended.ending.name(),
                    ended.at_ms
                ),
            ),
            None => (
                NOTICE_UNKNOWN,
                format!(
                    "the customer has no reservation {}: the event was rated, nothing was released",
                    py_repr_cut(reservation_id)
                ),
            ),
        });
    };
    let released = give_back(account, &reservation.held);
    let credits = account.credits.as_deref_mut().expect("held a reservation");
    credits.open.remove(reservation_id);
    let ended = Ended {
        ending: Ending::Settled,
        digest: reservation.digest,
        amount: reservation.amount,
        released,
        at_ms: received_ms,
        reason: reservation.reason,
    };
    credits.ended.insert(reservation_id.into(), ended);
    Ok(released)
}

/// After credit went back to the account's grants (a settled or released hold, a refund) and,
/// for an event, that event drew: what a grant whose expiry the clock had already passed
/// (`clock_ms`, the latest AdvanceClock: the grant's breakage is recorded) still has breaks now, at
/// `at_ms`, so that nothing draws credit that breakage made final (with `expired`; false: batches journaled
/// before it leave it to the next AdvanceClock). With `rolled`, so does what a grant
/// that has rolled over already has (a late refund dated before its rollover gave it back: the rollover
/// was final), in the period that ended at its rollover; false (batches journaled before it) leaves that
/// credit in the grant. Returns the entries recorded.
pub fn break_returned(account: &mut Account, clock_ms: i64, at_ms: i64, expired: bool, rolled: bool) -> u32 {
    let mut broken = 0;
    // The grants with credit, in index order as a walk of every grant finds them: only they can break.
    let mut with_credit: SmallVec<[u32; 4]> =
        account.payable.iter().copied().filter(|&g| account.grants[g as usize].remaining > 0).collect();
    with_credit.sort_unstable();
    for g in with_credit.into_iter().map(|g| g as usize) {
        let grant = &account.grants[g];
        let last_usable_ms = match grant.expires_at_ms {
            Some(end) if expired && end <= clock_ms => end - 1,
            _ if rolled => match rolled_over_at(account, &grant.id) {
                Some(period_end_ms) => period_end_ms - 1,
                None => continue,
            },
            _ => continue,
        };
        let credits = grant.remaining;
        let grant_id = grant.id.clone();
        let period_start_ms = period_start_at(account, last_usable_ms).unwrap_or(0);
        account.grants[g].remaining = 0;
        let entry = Breakage { grant_id, period_start_ms, credits, at_ms };
        account.credits.get_or_insert_with(Box::default).breakage.push(entry);
        broken += 1;
    }
    broken
}

/// The period end at which grant `grant_id` rolled over; None when it has not (or has no rollover).
pub(crate) fn rolled_over_at(account: &Account, grant_id: &str) -> Option<i64> {
    let credits = account.credits.as_deref()?;
    credits.rolled.iter().find(|r| *r.from == *grant_id).map(|r| r.at_period_end_ms)
}

/// After an event's charges drew (or a hold was taken): executes the customer's
/// top-up when available credit is below its threshold and the period's cap allows. `period_start_ms`:
/// the billing period the purchase counts in. `in_billed_period`: when that period starts after `at_ms`
/// (an event dated past the period's end), the credit available is counted at its start and the grant
/// starts there, so that revenue sells it in the period that bills it; false (batches journaled
/// before it) counts at `at_ms` and starts the grant there. Returns (grant id, credits) when it bought.
pub fn top_up(
    account: &mut Account,
    clock: &mut Clock,
    customer_id: &str,
    period_start_ms: i64,
    at_ms: i64,
    in_billed_period: bool,
) -> Option<(Box<str>, Picos)> {
    let policy = account.credits.as_deref()?.top_up?;
    if refused_in(account, period_start_ms) {
        return None;
    }
    let (counted_at_ms, starts_at_ms) = if in_billed_period {
        (at_ms.max(period_start_ms), period_start_ms)
    } else {
        (at_ms, period_start_ms.min(at_ms))
    };
    // Grants without credit add nothing: only the payable ones are walked.
    let payable = account.payable.iter().map(|&g| &account.grants[g as usize]);
    let available: Picos = payable.filter(|g| g.usable_at(counted_at_ms)).map(|g| g.remaining).sum();
    if available >= policy.threshold {
        return None;
    }
    let made =
        account.made.get_or_insert_with(|| Box::new(TopUpIndex::of(&account.grants, account.credits.as_deref())));
    let bought = made.bought.get(&period_start_ms).copied().unwrap_or(0);
    if bought >= policy.max_per_period as usize {
        return None;
    }
    let credits = policy.recharge_to - available;
    let mut id = format!("top-up-{period_start_ms}-{}", bought + 1);
    // The index rules out every id no grant has; a hash it holds is confirmed by the grants themselves.
    while made.ids.contains(&xxh3_64(id.as_bytes())) && account.grants.iter().any(|g| *g.id == *id) {
        id.push('+'); // a grant the control plane made already has the id: never merge with it
    }
    let id: Box<str> = id.into();
    made.ids.insert(xxh3_64(id.as_bytes()));
    *made.bought.entry(period_start_ms).or_default() += 1;
    let credits_state = account.credits.as_deref_mut().expect("has a policy");
    let cost_e30 = credits.checked_mul(policy.price_per_credit_e18).expect("checked when the policy was set");
    let creation_order = MADE_CREATION_ORDER_BASE + credits_state.purchases.len() as i64;
    let period_charges_when_bought = Some(account.periods.get(period_start_ms).map_or(0, |p| p.charges));
    credits_state.purchases.push(Purchase {
        period_start_ms,
        grant_id: id.clone(),
        credits,
        price_per_credit_e18: policy.price_per_credit_e18,
        cost_e30,
        at_ms,
        period_charges_when_bought,
    });
    account.grants.push(Grant {
        id: id.clone(),
        amount: credits,
        remaining: credits,
        priority: TOP_UP_PRIORITY,
        applicable: Vec::new(),
        starts_at_ms,
        expires_at_ms: None,
        creation_order,
        usable_before_ms: NEVER_MS,
        expiring_at_rollover_rolls: false,
    });
    account.note_added(u32::try_from(account.grants.len() - 1).expect("grant indexes are u32"));
    clock.notify(Notice {
        kind: "TOP_UP_EXECUTED",
        customer_id: customer_id.to_owned(),
        id: id.to_string(),
        amount: credits,
        period_start_ms,
        at_ms,
    });
    Some((id, credits))
}

/// Whether the customer's top-up policy buys nothing in the billing period starting at `period_start_ms`: the
/// contract it is a period of (the one covering its start) bills in another currency than the policy's price.
fn refused_in(account: &Account, period_start_ms: i64) -> bool {
    let contracts = account.route.as_ref().map_or(&[][..], |r| &r.contracts[..]);
    contracts.iter().any(|c| c.top_up_refused && c.covers(period_start_ms))
}

/// The start of the billing period covering `at_ms` for the account, if a contract covers it.
fn period_start_at(account: &Account, at_ms: i64) -> Option<i64> {
    let route = account.route.as_ref()?;
    let contract = route.contracts.iter().find(|c| c.covers(at_ms))?;
    Some(period_containing(contract.starting_at_ms, at_ms).0)
}

/// Ingestion's hook after an event is committed: top-up (`in_billed_period`: as `top_up`'s), and a
/// refund that gave credit back to an expired grant is due for breakage.
#[allow(clippy::too_many_arguments)]
pub fn after_event(
    account: &mut Account,
    clock: &mut Clock,
    customer_id: &str,
    period_start_ms: i64,
    refunded: bool,
    at_ms: i64,
    in_billed_period: bool,
    ack: &mut AckBuilder,
) {
    if account.credits.as_deref().is_some_and(|c| c.top_up.is_some()) {
        if let Some((id, credits)) = top_up(account, clock, customer_id, period_start_ms, at_ms, in_billed_period) {
            ack.topped_up(&id, credits);
        }
    }
    if refunded {
        for grant in account.payable.iter().map(|&g| &account.grants[g as usize]) {
            if let Some(end) = grant.expires_at_ms.filter(|_| grant.remaining > 0) {
                clock.note_due(end);
            }
        }
    }
}

impl Kernel {
    /// Authorize with a hold: decides as `authorize` at `now_ms` and, when allowed, holds what
    /// the usage would draw from grants under `reservation_id` until `now_ms + ttl.ms()`. The same id
    /// with the same request answers again without holding more; with another request it is
    /// refused (Err, nothing changed). A denied request holds nothing and records nothing.
    pub fn reserve(
        &mut self,
        reservation_id: &str,
        event: &wire::UsageEvent,
        now_ms: i64,
        ttl: HoldTtl,
    ) -> Result<Reserved, String> {
        let digest = request_digest(event, ttl);
        // A TTL left to the server is also the one it is given now, as it always was: a request naming none is that
        // of a hold whose first call named the TTL it is given now (or, journaled before `Defaulted`, named none and
        // was given it), and a request naming a TTL is that of an open hold whose first call named none and was
        // given it (an ended hold keeps no TTL: a retry naming one is then another request).
        // (Computed only for a known id whose digest is not this request's: a new hold pays for one digest.)
        let asked = |known: u64, held_ttl_ms: Option<i64>| {
            known == digest
                || match ttl {
                    HoldTtl::Defaulted(ms) => known == request_digest(event, HoldTtl::Named(ms)),
                    HoldTtl::Named(ms) => {
                        held_ttl_ms == Some(ms) && known == request_digest(event, HoldTtl::Defaulted(ms))
                    }
                }
        };
        if let Some(known) = self.known_reservation(reservation_id, event, asked, now_ms)? {
            return Ok(known);
        }
        let netted = self.refunds_netted;
        let mut decision = with_view(event, |view| self.authorize_settled(view, now_ms, netted));
        let expires_at_ms = now_ms.saturating_add(ttl.ms());
        if !decision.allowed {
            return Ok(Reserved { decision, held: 0, repeated: false, expires_at_ms });
        }
        let held = self.hold_draws(event, now_ms);
        let account = self.accounts.get_mut(event.customer_id.as_str()).expect("allowed, so the account exists");
        for &(g, credits) in &held {
            account.grants[g as usize].remaining -= credits;
            assert!(account.grants[g as usize].remaining >= 0, "a hold never takes a grant below zero");
            account.note_drawn(g);
        }
        let total: Picos = held.iter().map(|(_, c)| c).sum();
        decision.available -= total;
        let reason = HoldReason::of(decision.reason);
        let reservation =
            Reservation { digest, amount: decision.cost, held, made_at_ms: now_ms, expires_at_ms, reason };
        account.credits.get_or_insert_with(Box::default).open.insert(reservation_id.into(), reservation);
        self.clock.note_due(expires_at_ms);
        if let Some(period_start) = period_start_at(account, now_ms) {
            if let Some((_, bought)) = top_up(account, &mut self.clock, &event.customer_id, period_start, now_ms, false)
            {
                // The answer counts what the hold's own top-up bought, as a retry's and GetBalance do.
                decision.available += bought;
            }
        }
        self.due.refresh_at(&event.customer_id, account, self.rater.catalog.dedupe_window_ms, now_ms);
        Ok(Reserved { decision, held: total, repeated: false, expires_at_ms })
    }

    /// The answer to a reservation id already known to the customer, or None for a new one.
    fn known_reservation(
        &self,
        reservation_id: &str,
        event: &wire::UsageEvent,
        asked: impl Fn(u64, Option<i64>) -> bool,
        now_ms: i64,
    ) -> Result<Option<Reserved>, String> {
        let Some(credits) = self.accounts.get(event.customer_id.as_str()).and_then(|a| a.credits.as_deref()) else {
            return Ok(None);
        };
        let conflict = || {
            let id = py_repr(reservation_id);
            format!("reservation_id {id} is already used by a different request of this customer")
        };
        let available = || self.authorize(event, now_ms).available;
        if let Some(open) = credits.open.get(reservation_id) {
            if !asked(open.digest, Some(open.expires_at_ms - open.made_at_ms)) {
                return Err(conflict());
            }
            let note = open.reason.retry_note();
            let message = format!("already held: this reservation was made by an earlier identical request{note}");
            let (reason, cost) = (open.reason.name(), open.amount);
            let decision = Decision { allowed: true, reason, message, cost, available: available() };
            return Ok(Some(Reserved {
                decision,
                held: open.held_total(),
                repeated: true,
                expires_at_ms: open.expires_at_ms,
            }));
        }
        let Some(ended) = credits.ended.get(reservation_id) else { return Ok(None) };
        if !asked(ended.digest, None) {
            return Err(conflict());
        }
        let (ending, at_ms, note) = (ended.ending.name(), ended.at_ms, ended.reason.retry_note());
        let message = format!("this reservation was already {ending} at {at_ms}; nothing is held{note}");
        let (reason, cost) = (ended.reason.name(), ended.amount);
        let decision = Decision { allowed: true, reason, message, cost, available: available() };
        Ok(Some(Reserved { decision, held: 0, repeated: true, expires_at_ms: ended.at_ms }))
    }

    /// What the usage would draw from each grant now (positive draws, netted per grant), its refunds netted
    /// as `refunds_netted` says (set for each hold, as its journal record says).
    fn hold_draws(&self, event: &wire::UsageEvent, now_ms: i64) -> Vec<(u32, Picos)> {
        let Some(account) = self.accounts.get(event.customer_id.as_str()) else { return Vec::new() };
        let Ok(checked) = check_event(event, now_ms, self.rater.catalog.future_skew_ms) else { return Vec::new() };
        let mut plans = Vec::new();
        if self.rater.plan(account, &checked, &mut plans).is_err() {
            return Vec::new();
        }
        let mut outcomes = Outcomes::new();
        let mut changed = Changed::new();
        self.rater.settle(account, &plans, now_ms, self.refunds_netted, &mut outcomes, &mut changed);
        let mut held: Vec<(u32, Picos)> = (changed.iter())
            .filter_map(|&(g, after)| {
                let before = account.grants[g as usize].remaining;
                (before > after).then_some((g, before - after))
            })
            .collect();
        held.sort_unstable(); // by grant index, as a walk of every grant listed them
        held
    }

    /// Frees an open reservation of the customer: Ok(credits given back). Releasing one already
    /// released answers what the first release gave back (a retry). One settled or expired is
    /// `Ended`; one the customer does not have (never made, or another customer's) is `NotFound`,
    /// worded alike in both cases so that nothing reveals another customer's reservations.
    /// `expired_credit_breaks`: what it gives back to a grant already broken at its expiry breaks at
    /// once (`break_returned`); false (releases stored before it) leaves it to the next AdvanceClock.
    pub fn release(
        &mut self,
        customer_id: &str,
        reservation_id: &str,
        now_ms: i64,
        expired_credit_breaks: bool,
    ) -> Result<(Picos, bool), ReleaseRefusal> {
        let not_found = || {
            let (customer, id) = (py_repr_cut(customer_id), py_repr_cut(reservation_id));
            ReleaseRefusal::NotFound(format!("customer {customer} has no reservation {id}"))
        };
        let account = self.accounts.get_mut(customer_id).ok_or_else(not_found)?;
        let credits = account.credits.as_deref_mut().ok_or_else(not_found)?;
        let Some(reservation) = credits.open.remove(reservation_id) else {
            return match credits.ended.get(reservation_id) {
                Some(ended) if ended.ending == Ending::Released => Ok((ended.released, true)),
                Some(ended) => Err(ReleaseRefusal::Ended(format!(
                    "reservation {} was already {} at {}: nothing is held",
                    py_repr_cut(reservation_id),
                    ended.ending.name(),
                    ended.at_ms
                ))),
                None => Err(not_found()),
            };
        };
        let ended = Ended {
            ending: Ending::Released,
            digest: reservation.digest,
            amount: reservation.amount,
            released: reservation.held_total(),
            at_ms: now_ms,
            reason: reservation.reason,
        };
        credits.ended.insert(reservation_id.into(), ended);
        let released = give_back(account, &reservation.held);
        if expired_credit_breaks {
            break_returned(account, self.clock.now_ms, now_ms, true, false);
        }
        let mut payable = account.payable.iter().map(|&g| &account.grants[g as usize]);
        if payable.any(|g| g.remaining > 0 && g.expired_at(now_ms)) {
            self.clock.note_due(now_ms);
        }
        self.due.refresh_at(customer_id, account, self.rater.catalog.dedupe_window_ms, now_ms);
        Ok((released, false))
    }

    /// Sets (Some) or clears (None) the customer's top-up policy. False for an unknown customer.
    /// A policy set while available credit is already below its threshold buys at the next draw.
    pub fn set_top_up(&mut self, customer_id: &str, policy: Option<TopUpPolicy>) -> bool {
        let Some(account) = self.accounts.get_mut(customer_id) else { return false };
        account.credits.get_or_insert_with(Box::default).top_up = policy;
        true
    }

    /// Moves grant `grant_id` of the customer to expire at `expires_at_ms` (ContractService.ExpireGrant; the
    /// control plane checks its rules: only earlier, never before the clock) and reschedules what is due, so the
    /// grant then expires as one granted with that expiry does: `advance_account` breaks what it still holds
    /// then, and `rollover_at` makes no rollover after it. False, changing nothing, for an unknown customer or
    /// grant. A grant the tables name must be given the same expiry there, or their next install moves it back.
    pub fn set_grant_expiry(&mut self, customer_id: &str, grant_id: &str, expires_at_ms: i64) -> bool {
        let window_ms = self.rater.catalog.dedupe_window_ms;
        let Kernel { accounts, clock, due, .. } = self;
        let Some(account) = accounts.get_mut(customer_id) else { return false };
        let Some(grant) = account.grants.iter_mut().find(|g| *g.id == *grant_id) else { return false };
        grant.expires_at_ms = Some(expires_at_ms);
        if grant.remaining > 0 {
            clock.note_due(expires_at_ms); // as install notes a grant's expiry
        }
        account.index_grants(); // the burn order reads the expiry (earliest first)
        due.refresh(customer_id, account, window_ms);
        true
    }

    /// The time up to which everything due was done (reservations expired, breakage recorded):
    /// when something is due by `now_ms`, moves the kernel's clock there (never back) and does it;
    /// otherwise changes nothing. Returns (reservations expired, breakage
    /// entries recorded). Entries of ended reservations older than the dedupe window are dropped.
    /// A ROLLOVER grant it makes never takes an id a grant of the account holds, and lasts a full next period
    /// (Rollovers::CURRENT).
    pub fn advance_clock(&mut self, now_ms: i64) -> (u32, u32) {
        let Some(due) = self.due_accounts(now_ms) else { return (0, 0) };
        let mut kernel = self;
        let advanced = advance_clock_pausing(&mut kernel, now_ms, due, Rollovers::CURRENT, |_| {});
        (advanced.reservations_expired, advanced.breakage_entries)
    }

    /// The accounts `advance_clock(now_ms)` visits, sorted by id (so that the notices come in the same
    /// order on every replay), or None when it would change nothing, not even the clock: the accounts
    /// the index of due times (crate::due) has at its front. Reads only: the binding finds them under a
    /// lock that lets reads go on (sorting a month's end of accounts takes milliseconds).
    pub fn due_accounts(&self, now_ms: i64) -> Option<Vec<Box<str>>> {
        (now_ms > self.clock.now_ms && now_ms >= self.clock_due_ms()).then(|| self.due.due_by(now_ms))
    }

    /// The customers (sorted by id) holding an open reservation whose TTL ran out by `now_ms`: those
    /// `expire_holds(now_ms)` changes. Re-rating never creates or ends a reservation nor moves its TTL
    /// (it may shrink what one holds: resettle.rs `retake_hold`), so this is the same whichever customers
    /// a pending re-rating has reached (engine/credits.py relies on it).
    pub fn holds_due_by(&self, now_ms: i64) -> Vec<String> {
        let expired = |account: &Account| {
            account.credits.as_deref().is_some_and(|c| c.open.values().any(|r| r.expires_at_ms <= now_ms))
        };
        let due = self.due.due_by(now_ms).into_iter(); // a superset, sorted: the index is exact
        due.filter(|id| self.accounts.get(&**id).is_some_and(|a| expired(a))).map(String::from).collect()
    }

    /// Expires the reservations whose TTL ran out by `now_ms` and does nothing else `advance_clock`
    /// does: no breakage, rollover or forgetting, and the clock stays where it is (its lower bound of
    /// what is due stays one: expiring only moves due times later). What applies while a publish's
    /// re-rating is pending (engine/credits.py): the breakage and rollovers `advance_clock` records
    /// depend on grant balances the re-rating changes, customer by customer in slices no record
    /// lists, but not which reservations are open or when they run out (the customers `holds_due_by`
    /// names are re-rated before they expire, so what they give back is the re-rated hold). Returns how
    /// many expired.
    pub fn expire_holds(&mut self, now_ms: i64) -> u32 {
        let window_ms = self.rater.catalog.dedupe_window_ms;
        let mut expired = 0;
        for customer_id in self.holds_due_by(now_ms) {
            let account = self.accounts.get_mut(customer_id.as_str()).expect("listed, so present");
            expired += expire_reservations(account, &mut self.clock, &customer_id, now_ms);
            self.due.refresh(&customer_id, account, window_ms);
        }
        expired
    }

    /// Rebuilds the index of due times and makes the clock's lower bound exact (after a restore).
    pub fn recompute_due(&mut self) {
        self.rebuild_due();
        self.clock.due_ms = self.due.next_due_ms();
    }

    /// Takes the notices recorded since the last call.
    pub fn drain_notices(&mut self) -> (Vec<Notice>, u64) {
        let dropped = std::mem::take(&mut self.clock.notices_dropped);
        (std::mem::take(&mut self.clock.notices), dropped)
    }

    /// Credits held by open reservations per grant, in burn order (as `balance` lists grants).
    pub fn held_by_grant(&self, customer_id: &str) -> Vec<Picos> {
        self.accounts.get(customer_id).map_or_else(Vec::new, |a| held_by_grant_of(a))
    }

    pub fn account_credits(&self, customer_id: &str) -> Option<&AccountCredits> {
        self.accounts.get(customer_id).and_then(|a| a.credits.as_deref())
    }
}

/// Credits held by open reservations per grant of an account, in burn order (as `balance` lists grants).
pub fn held_by_grant_of(account: &Account) -> Vec<Picos> {
    let extras = GrantExtras::of(account);
    account.order.iter().map(|&g| extras.of_grant(account, g).0).collect()
}

impl Kernel {
    /// The grants the kernel made for a customer: top-ups with their purchase, rollovers with their origin.
    /// A rollover that moved nothing made no grant: a grant that took its `to` id since is none of the kernel's.
    pub fn made_grants(&self, customer_id: &str) -> Vec<(&Grant, Made<'_>)> {
        self.accounts.get(customer_id).map_or_else(Vec::new, |a| made_grants_of(a))
    }
}

/// The ROLLOVER grants the kernel made for an account, as `made_grants_of` lists them, without a walk of its
/// top-ups (a balance with its top-ups encoded reads these alone: balance_wire.rs).
pub fn made_rollovers_of(account: &Account) -> Vec<(&Grant, Made<'_>)> {
    let Some(credits) = account.credits.as_deref() else { return Vec::new() };
    let rolled: Vec<&Rolled> = credits.rolled.iter().filter(|r| r.credits > 0).collect();
    if rolled.is_empty() {
        return Vec::new();
    }
    // The first grant holding each id made, as `made_grants_of` finds it.
    let mut first: rustc_hash::FxHashMap<&str, Option<&Grant>> = rolled.iter().map(|r| (&*r.to, None)).collect();
    for grant in &account.grants {
        if let Some(slot @ None) = first.get_mut(&*grant.id) {
            *slot = Some(grant);
        }
    }
    rolled.into_iter().filter_map(|r| first[&*r.to].map(|g| (g, Made::Rollover(r)))).collect()
}

/// The grants the kernel made for an account (`Kernel::made_grants`).
pub fn made_grants_of(account: &Account) -> Vec<(&Grant, Made<'_>)> {
    let Some(credits) = account.credits.as_deref() else { return Vec::new() };
    // By id, the first grant holding it (as a walk finds it): one lookup per made grant, not a walk of all.
    let mut by_id: rustc_hash::FxHashMap<&str, &Grant> = rustc_hash::FxHashMap::default();
    for grant in &account.grants {
        by_id.entry(&*grant.id).or_insert(grant);
    }
    let find = |id: &str| by_id.get(id).copied();
    let top_ups = credits.purchases.iter().filter_map(|p| find(&p.grant_id).map(|g| (g, Made::TopUp(p))));
    let made_rollovers = credits.rolled.iter().filter(|r| r.credits > 0);
    let rollovers = made_rollovers.filter_map(|r| find(&r.to).map(|g| (g, Made::Rollover(r))));
    top_ups.chain(rollovers).collect()
}

/// The earliest time after `after_ms` something of the account is due.
pub(crate) fn account_due(account: &Account, after_ms: i64) -> i64 {
    let payable = account.payable.iter().map(|&g| &account.grants[g as usize]);
    let grants = payable.filter(|g| g.remaining > 0).filter_map(|g| g.expires_at_ms);
    let holds = account.credits.as_deref().into_iter().flat_map(|c| c.open.values().map(|r| r.expires_at_ms));
    let rollovers = account.credits.as_deref().into_iter().flat_map(|c| c.rollover.keys()).filter_map(|id| {
        let grant = account.grants.iter().find(|g| g.id == *id)?;
        rollover_at(account, grant)
    });
    grants.chain(holds).chain(rollovers).filter(|&t| t > after_ms).min().unwrap_or(i64::MAX)
}

/// Keeps the rollover fractions of the grants the tables name (install): a grant that has rolled over
/// already, or whose fraction is 0, has none. A grant whose table says `use_ends_at_rollover` is usable
/// only for usage dated before its rollover, before it rolls over and after (`bound_use_at_rollover`).
pub fn note_rollovers(account: &mut Account, tables: &[GrantTable], clock: &mut Clock) {
    for table in tables {
        let fraction: i128 = table.rollover_fraction_e18.parse().unwrap_or(0);
        if fraction > 0 && table.use_ends_at_rollover {
            bound_use_at_rollover(account, &table.id);
        }
        let rolled = account.credits.as_deref().is_some_and(|c| c.rolled.iter().any(|r| *r.from == *table.id));
        if fraction <= 0 || rolled {
            continue;
        }
        let credits = account.credits.get_or_insert_with(Box::default);
        credits.rollover.insert(table.id.as_str().into(), fraction.min(ROLLOVER_ONE));
        if let Some(grant) = account.grants.iter().find(|g| *g.id == *table.id) {
            if let Some(at) = rollover_at(account, grant) {
                clock.note_due(at);
            }
        }
    }
}

const ROLLOVER_ONE: i128 = 1_000_000_000_000_000_000;

/// Sets the grant's `usable_before_ms` to its rollover: the end of the billing period in which it starts
/// ("it lasts until then"), so usage dated after that end, arriving before the clock rolls the grant over,
/// is not paid from it. Computed here, once per install of the account's tables, so a draw pays one
/// comparison for it. None (no contract covers its start, or it expires first): its expiry bounds it.
fn bound_use_at_rollover(account: &mut Account, grant_id: &str) {
    let Some(g) = account.grants.iter().position(|g| *g.id == *grant_id) else { return };
    account.grants[g].usable_before_ms = rollover_at(account, &account.grants[g]).unwrap_or(NEVER_MS);
}

/// When a grant with a rollover fraction rolls over: the end of the billing period in which it starts
/// (None when no contract covers its start, or it expires first and simply breaks: before that end, or
/// exactly at it when its GrantCredits came before `expiring_at_rollover_rolls`; with the flag a grant
/// expiring exactly then, usable up to that end, rolls over there). At a tie the rollover comes first in
/// `advance_account`, so the expiry finds nothing left.
fn rollover_at(account: &Account, grant: &Grant) -> Option<i64> {
    let route = account.route.as_ref()?;
    let contract = route.contracts.iter().find(|c| c.covers(grant.starts_at_ms))?;
    let end = period_containing(contract.starting_at_ms, grant.starts_at_ms).1;
    let rolls = |expiry: i64| expiry > end || (expiry == end && grant.expiring_at_rollover_rolls);
    grant.expires_at_ms.is_none_or(rolls).then_some(end)
}

/// How `advance_clock` names the ROLLOVER grant of `<grant>` at `<period end ms>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloverIds {
    /// `rollover-<grant>-<period end ms>`, with a '+' added while a grant of the account holds the id (one the
    /// control plane made in advance), as a top-up's id gets one: two grants of an account never share an id.
    Distinct,
    /// `rollover-<grant>-<period end ms>` even when a grant of the account holds it: what AdvanceClock records
    /// of earlier releases did, so that their journals replay to the same grants.
    AsRecordedBefore,
}

/// How long `advance_clock` makes a ROLLOVER grant usable: "until the end of the next period".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloverWindow {
    /// Until the end of the period after the one that ended, on the schedule of the contract the original grant
    /// rolled over in (`rollover_at`'s): a full period, after a switch and with no contract in force alike.
    NextPeriod,
    /// Until the end of the period of the contract in force at the rollover (15 days after a switch mid-period;
    /// never, with no contract in force): what AdvanceClock records of earlier releases did.
    AsRecordedBefore,
}

/// The rules `advance_clock` rolls grants over by, as the AdvanceClock record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollovers {
    pub ids: RolloverIds,
    pub window: RolloverWindow,
}

impl Rollovers {
    /// The rules of the records the server makes now.
    pub const CURRENT: Rollovers = Rollovers { ids: RolloverIds::Distinct, window: RolloverWindow::NextPeriod };
}

/// When the ROLLOVER grant made at `period_end_ms` of `from` (whose rollover that is) stops being usable.
fn rolled_credit_expiry(account: &Account, from: &Grant, period_end_ms: i64, window: RolloverWindow) -> Option<i64> {
    let contracts = &account.route.as_ref()?.contracts;
    let at = match window {
        RolloverWindow::NextPeriod => from.starts_at_ms,
        RolloverWindow::AsRecordedBefore => period_end_ms,
    };
    let contract = contracts.iter().find(|c| c.covers(at))?;
    Some(period_containing(contract.starting_at_ms, period_end_ms).1)
}

/// The id of the ROLLOVER grant `from` rolls into at `period_end_ms` (see RolloverIds).
fn rollover_id(account: &Account, from: &str, period_end_ms: i64, ids: RolloverIds) -> Box<str> {
    let mut id = format!("rollover-{from}-{period_end_ms}");
    while ids == RolloverIds::Distinct && account.grants.iter().any(|g| *g.id == *id) {
        id.push('+'); // a grant the control plane made already has the id: never share it
    }
    id.into()
}

/// Rolls over the grants whose period has ended by `now_ms`: floor((remaining + held) x fraction) into a
/// new ROLLOVER grant (cost basis of the original, usable from the period end until the end of the next
/// period, no rollover of its own; its id as `ids` says), the rest breakage; open holds on the grant keep
/// their rolled share on the new grant (crate::rollover). Returns the breakage entries recorded.
fn roll_over(account: &mut Account, now_ms: i64, rules: Rollovers) -> u32 {
    let Some(credits) = account.credits.as_deref() else { return 0 };
    let due: Vec<(Box<str>, i128, i64)> = credits
        .rollover
        .iter()
        .filter_map(|(id, fraction)| {
            let grant = account.grants.iter().find(|g| g.id == *id)?;
            let at = rollover_at(account, grant)?;
            (at <= now_ms).then(|| (id.clone(), *fraction, at))
        })
        .collect();
    let mut broken = 0;
    for (id, fraction, period_end_ms) in due {
        let g = account.grants.iter().position(|g| g.id == id).expect("found above");
        let new_grant = u32::try_from(account.grants.len()).expect("grant indexes are u32");
        let split = rollover::split_at_rollover(account, g as u32, new_grant, fraction);
        let (total, rolled) = (split.total, split.rolled);
        let next_end = rolled_credit_expiry(account, &account.grants[g], period_end_ms, rules.window);
        let to = rollover_id(account, &id, period_end_ms, rules.ids);
        let credits = account.credits.as_deref_mut().expect("present");
        credits.rollover.remove(&id);
        if total <= 0 {
            // Recorded all the same: the grant has had its rollover, and new tables must not give it another.
            let done = Rolled { from: id, to, credits: 0, at_period_end_ms: period_end_ms, at_ms: now_ms };
            credits.rolled.push(done);
            continue;
        }
        if total > rolled {
            let period_start_ms = period_start_at(account, period_end_ms - 1).unwrap_or(0);
            let entry = Breakage { grant_id: id.clone(), period_start_ms, credits: total - rolled, at_ms: now_ms };
            account.credits.as_deref_mut().expect("present").breakage.push(entry);
            broken += 1;
        }
        account.grants[g].remaining = 0;
        if rolled > 0 {
            let original = &account.grants[g];
            let grant = Grant {
                id: to.clone(),
                amount: rolled,
                remaining: split.rolled_remaining,
                priority: original.priority,
                applicable: original.applicable.clone(),
                starts_at_ms: period_end_ms,
                expires_at_ms: next_end,
                creation_order: MADE_CREATION_ORDER_BASE + (1 << 40) + original.creation_order,
                usable_before_ms: NEVER_MS,
                expiring_at_rollover_rolls: false,
            };
            account.grants.push(grant);
            account.index_grants();
        }
        let credits = account.credits.as_deref_mut().expect("present");
        credits.rolled.push(Rolled { from: id, to, credits: rolled, at_period_end_ms: period_end_ms, at_ms: now_ms });
    }
    broken
}

/// Accounts `advance_clock_pausing` advances between two pauses: a month's end can make every
/// customer's grant due at once, at a few microseconds an account, so a read waits for these only.
pub const ADVANCE_PAUSE_EVERY_ACCOUNTS: usize = 64;

/// `Kernel::advance_clock` on a kernel behind a lock (`kernel` is its guard), for the accounts
/// `due_accounts(now_ms)` found with nothing changed since: `pause` gets the guard before every
/// ADVANCE_PAUSE_EVERY_ACCOUNTS-th account, so the binding can hand the lock to a waiting read and take
/// it back. Such a read sees some accounts advanced and the rest not yet, each account whole; it reads
/// at its own time (a grant past its expiry is not usable to it either way), and nothing changes the
/// kernel between the pauses but this. Same result as without pauses. `rules`: how the ROLLOVER grants it
/// makes are named and how long they last (the AdvanceClock record says).
pub fn advance_clock_pausing<K: DerefMut<Target = Kernel>>(
    kernel: &mut K,
    now_ms: i64,
    due: Vec<Box<str>>,
    rules: Rollovers,
    mut pause: impl FnMut(&mut K),
) -> Advanced {
    debug_assert_eq!(kernel.due_accounts(now_ms).as_ref(), Some(&due), "nothing changed since");
    kernel.clock.now_ms = now_ms;
    let window_ms = kernel.rater.catalog.dedupe_window_ms;
    let mut advanced = Advanced::default();
    for (index, customer_id) in due.into_iter().enumerate() {
        if index > 0 && index % ADVANCE_PAUSE_EVERY_ACCOUNTS == 0 {
            pause(kernel);
        }
        let Kernel { accounts, clock, due, .. } = &mut **kernel;
        let account = accounts.get_mut(&*customer_id).expect("indexed, so present");
        let (expired, broken, _) = advance_account(account, clock, &customer_id, now_ms, window_ms, rules);
        due.refresh(&customer_id, account, window_ms);
        advanced.reservations_expired += expired;
        advanced.breakage_entries += broken;
        if broken > 0 {
            advanced.grants_ended.push(customer_id);
        }
    }
    kernel.clock.due_ms = kernel.due.next_due_ms();
    advanced
}

/// What an `advance_clock` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    pub reservations_expired: u32,
    /// Breakage entries recorded, a rolled-over grant's included.
    pub breakage_entries: u32,
    /// The accounts (by id, sorted) of which a grant expired or rolled over: their balances changed
    /// (a reservation's expiry comes with a notice of its own).
    pub grants_ended: Vec<Box<str>>,
}

/// The account as the clock's next AdvanceClock at `now_ms` leaves it, when something of it is due after
/// `done_ms` (the kernel's clock: everything due by then is done) and by `now_ms`: holds whose TTL ran out
/// expired, grants rolled over (under the rules the server's records use now) and expired. None when nothing is
/// due. For reads only (GetBalance, Authorize without a hold), so that one answered between an instant
/// something falls due and the moment the clock records it (the driver looks every 50 ms) answers what the
/// clock will make of it, as usage and holds, which the writer applies after that AdvanceClock, find it.
/// Journaled changes never read it: what they see is the kernel's own state, so replay is unaffected.
pub(crate) fn projected(account: &Account, customer_id: &str, done_ms: i64, now_ms: i64) -> Option<Account> {
    // The index's key (exact, O(1)): Authorize reads this on every call, and a gateway's customer may hold
    // thousands of open holds that account_due would walk.
    if account.due.due_ms() > now_ms {
        return None;
    }
    // Its notices and what it forgets are the clock's to record, not a read's: a throwaway clock, no forgetting.
    let mut clock = Clock::default();
    if now_ms <= done_ms {
        // The server's wall clock is behind the kernel's (stepped back): what the clock records then is the
        // expiry of holds made since and run out (engine/credits.py, `Kernel::expire_holds`), nothing else.
        let credits = account.credits.as_deref();
        if !credits.is_some_and(|c| c.open.values().any(|r| r.expires_at_ms <= now_ms)) {
            return None;
        }
        let mut copy = account.clone();
        expire_reservations(&mut copy, &mut clock, customer_id, now_ms);
        return Some(copy);
    }
    let mut copy = account.clone();
    advance_account(&mut copy, &mut clock, customer_id, now_ms, i64::MAX / 4, Rollovers::CURRENT);
    Some(copy)
}

/// One account's share of `advance_clock`: (reservations expired, breakage entries, next due).
fn advance_account(
    account: &mut Account,
    clock: &mut Clock,
    customer_id: &str,
    now_ms: i64,
    window_ms: i64,
    rules: Rollovers,
) -> (u32, u32, i64) {
    if let Some(credits) = account.credits.as_deref_mut() {
        credits.ended.retain(|_, e| e.at_ms.saturating_add(window_ms) > now_ms);
    }
    let expired = expire_reservations(account, clock, customer_id, now_ms);
    let mut broken = roll_over(account, now_ms, rules);
    for g in 0..account.grants.len() {
        let grant = &account.grants[g];
        let Some(end) = grant.expires_at_ms else { continue };
        if end > now_ms || grant.remaining <= 0 {
            continue;
        }
        let credits = grant.remaining;
        let grant_id = grant.id.clone();
        let period_start_ms = period_start_at(account, end - 1).unwrap_or(0);
        account.grants[g].remaining = 0;
        let entry = Breakage { grant_id, period_start_ms, credits, at_ms: now_ms };
        account.credits.get_or_insert_with(Box::default).breakage.push(entry);
        broken += 1;
    }
    (expired, broken, account_due(account, now_ms))
}

/// Expires the account's open reservations whose TTL ran out by `now_ms`, giving their held credit
/// back to the grants it was taken from, with a notice each: (reservations expired).
fn expire_reservations(account: &mut Account, clock: &mut Clock, customer_id: &str, now_ms: i64) -> u32 {
    let Some(credits) = account.credits.as_deref() else { return 0 };
    let due: Vec<Box<str>> =
        credits.open.iter().filter(|(_, r)| r.expires_at_ms <= now_ms).map(|(id, _)| id.clone()).collect();
    let mut expired = 0;
    for id in due {
        let credits = account.credits.as_deref_mut().expect("present");
        let reservation = credits.open.remove(&id).expect("listed");
        let released = reservation.held_total();
        let ended = Ended {
            ending: Ending::Expired,
            digest: reservation.digest,
            amount: reservation.amount,
            released,
            at_ms: now_ms,
            reason: reservation.reason,
        };
        credits.ended.insert(id.clone(), ended);
        give_back(account, &reservation.held);
        clock.notify(Notice {
            kind: "RESERVATION_EXPIRED",
            customer_id: customer_id.to_owned(),
            id: id.to_string(),
            amount: released,
            period_start_ms: period_start_at(account, reservation.expires_at_ms).unwrap_or(0),
            at_ms: now_ms,
        });
        expired += 1;
    }
    expired
}

#[cfg(test)]
mod tests {
    use super::*;
    // One COUNT product `calls` at 2.5 a call; customer `c` on a BLOCK contract holding 10 credits.
    use crate::authorize::tests::{calls_customer, calls_tables, kernel, SCALE};
    use HoldTtl::{Defaulted, Named};

    const NOW: i64 = 1_000;

    fn call(event_type: &str) -> wire::UsageEvent {
        wire::UsageEvent {
            transaction_id: "authorize".into(),
            customer_id: "c".into(),
            event_type: event_type.into(),
            timestamp_ms: NOW,
            ..wire::UsageEvent::default()
        }
    }

    fn retried(kernel: &mut Kernel, at_ms: i64, ttl: HoldTtl) -> Result<Reserved, String> {
        kernel.reserve("r", &call("call"), at_ms, ttl)
    }

    /// A customer whose every event buys a top-up (threshold 9, recharge_to 10, 2.5 a call) piles up exhausted
    /// grants: rating, holds, releases and a restore keep the payable grants and the burn order as a walk of
    /// every grant finds them, and the top-ups' ids and counts as before they were indexed.
    #[test]
    fn exhausted_top_ups_leave_the_payable_grants_and_a_restore_as_a_walk_finds_them() {
        let mut kernel = kernel();
        let picos = 1_000_000_000_000;
        let policy = TopUpPolicy {
            threshold: 9 * picos,
            recharge_to: 10 * picos,
            price_per_credit_e18: 1,
            max_per_period: 4_000,
        };
        assert!(kernel.set_top_up("c", Some(policy)));
        let batch = |from: usize, to: usize| {
            use prost::Message;
            let events = (from..to).map(|i| wire::UsageEvent { transaction_id: format!("t{i}"), ..call("call") });
            wire::UsageBatch { batch_id: format!("b{from}"), events: events.collect() }.encode_to_vec()
        };
        kernel.ingest(&batch(0, 300), NOW, 1).expect("rates");
        let account = kernel.accounts.get("c").expect("known");
        // 10 credits, then each call of 2.5 buys one most of the time: hundreds of grants, a few with credit.
        let with_credit = account.grants.iter().filter(|g| g.remaining > 0).count();
        assert!(account.grants.len() > 200 && with_credit < 5, "{} {with_credit}", account.grants.len());
        assert_eq!(account.payable.len(), with_credit);
        kernel.check_due_index().expect("payable grants as a walk finds them");
        let held = kernel.reserve("r", &call("call"), NOW, Named(60_000)).expect("holds");
        assert!(held.decision.allowed);
        kernel.check_due_index().expect("after a hold");
        kernel.release("c", "r", NOW + 1, true).expect("released");
        kernel.check_due_index().expect("after a release");
        let mut restored = Kernel::restore(&kernel.snapshot()).expect("restores");
        let customer = calls_customer("c", "k", true, "10000000000000".into(), None);
        let tables = crate::tables::encode(&calls_tables(format!("25{}", &SCALE[1..]), vec![customer]));
        restored.load_tables(&tables).expect("valid tables");
        restored.check_due_index().expect("restored");
        for k in [&mut kernel, &mut restored] {
            k.ingest(&batch(300, 400), NOW + 2, 2).expect("rates");
            k.check_due_index().expect("after more top-ups");
        }
        assert_eq!(restored.snapshot(), kernel.snapshot());
        // Top-up ids count the period's purchases: each is its number in the period.
        let ids = kernel.grant_ids("c");
        let bought = kernel.account_credits("c").expect("bought").purchases.len();
        assert_eq!(ids.len(), 1 + bought);
        assert!(ids[1..].iter().enumerate().all(|(n, id)| *id == format!("top-up-0-{}", n + 1)), "{ids:?}");
    }

    const CONFLICT: &str = "reservation_id 'r' is already used by a different request of this customer";

    #[test]
    fn a_ttl_left_to_the_server_is_no_part_of_the_request_and_a_named_one_is() {
        let digest = |ttl| request_digest(&call("call"), ttl);
        // Whatever the default resolves to (60 s, or a shorter --reservation-ttl-max-s), the request is one.
        assert_eq!(digest(Defaulted(60_000)), digest(Defaulted(30_000)));
        assert_ne!(digest(Named(60_000)), digest(Defaulted(60_000)));
        assert_ne!(digest(Named(60_000)), digest(Named(30_000)));
        assert_ne!(request_digest(&call("other"), Defaulted(60_000)), digest(Defaulted(60_000)));
    }

    #[test]
    fn a_named_ttl_digests_as_the_holds_of_earlier_releases_did() {
        // Pinned: what `request_digest(event, 60_000)` gave before `HoldTtl`, which their journals and snapshots keep.
        let event = wire::UsageEvent {
            event_type: "call".into(),
            dimensions: vec![wire::DimensionEntry { key: "model".into(), value: "a".into() }],
            values: vec![wire::ValueEntry { key: "n".into(), value: 2.5 }],
            ..wire::UsageEvent::default()
        };
        assert_eq!(request_digest(&event, Named(60_000)), 0xabc7_a98d_f2bf_c1aa);
    }

    #[test]
    fn a_retry_naming_no_ttl_is_the_hold_whatever_its_ttl_resolves_to_and_one_naming_another_is_a_conflict() {
        let mut kernel = kernel();
        let first = kernel.reserve("r", &call("call"), NOW, Defaulted(60_000)).expect("holds");
        assert_eq!((first.held, first.expires_at_ms), (2_500_000_000_000, NOW + 60_000));
        // After a start with --reservation-ttl-max-s 30 the default resolves to 30 s: still the same request.
        let again = retried(&mut kernel, NOW + 5, Defaulted(30_000)).expect("the same request");
        assert!(again.repeated && again.decision.message.starts_with("already held"), "{again:?}");
        assert_eq!((again.held, again.expires_at_ms), (2_500_000_000_000, NOW + 60_000)); // the first call's hold
        assert_eq!(retried(&mut kernel, NOW + 5, Named(30_000)), Err(CONFLICT.into()));
        // Naming the 60 s it was given is the same request, while it is open.
        assert!(retried(&mut kernel, NOW + 5, Named(60_000)).expect("the same request").repeated);
        assert_eq!(kernel.balance("c", NOW + 5).expect("known").remaining, 7_500_000_000_000);
        // held once
    }

    #[test]
    fn a_hold_naming_its_ttl_is_retried_naming_it_or_none_where_none_is_given_it() {
        // Also a hold journaled before `Defaulted` by a request naming none: it was applied naming the TTL given.
        let mut kernel = kernel();
        kernel.reserve("r", &call("call"), NOW, Named(60_000)).expect("holds");
        for ttl in [Named(60_000), Defaulted(60_000)] {
            assert!(retried(&mut kernel, NOW + 5, ttl).expect("the same request").repeated, "{ttl:?}");
        }
        for ttl in [Named(30_000), Defaulted(30_000)] {
            assert_eq!(retried(&mut kernel, NOW + 5, ttl), Err(CONFLICT.into()), "{ttl:?}");
        }
        // Ended holds are compared alike.
        kernel.release("c", "r", NOW + 10, true).expect("released");
        let ended = retried(&mut kernel, NOW + 20, Defaulted(60_000)).expect("the same request");
        assert!(ended.decision.message.starts_with("this reservation was already released"), "{ended:?}");
        assert_eq!(retried(&mut kernel, NOW + 20, Defaulted(30_000)), Err(CONFLICT.into()));
    }

    #[test]
    fn an_ended_hold_made_naming_no_ttl_answers_a_retry_naming_none_whatever_its_ttl_resolves_to() {
        let mut kernel = kernel();
        kernel.reserve("r", &call("call"), NOW, Defaulted(60_000)).expect("holds");
        kernel.release("c", "r", NOW + 10, true).expect("released");
        let again = retried(&mut kernel, NOW + 20, Defaulted(1_500)).expect("the same request");
        assert!(again.repeated && again.decision.message.starts_with("this reservation was already released"));
        assert_eq!(retried(&mut kernel, NOW + 20, Named(1_500)), Err(CONFLICT.into()));
        // An ended hold keeps no TTL: naming the one it was given is taken for another request.
        assert_eq!(retried(&mut kernel, NOW + 20, Named(60_000)), Err(CONFLICT.into()));
    }

    #[test]
    fn a_grant_whose_expiry_is_moved_earlier_breaks_what_it_holds_then() {
        let mut kernel = kernel(); // 10 credits in grant `g`, no expiry
        kernel.ingest(&calls_batch("b", 1), NOW, 1).expect("rates"); // 2.5 drawn
        assert!(!kernel.set_grant_expiry("c", "unknown", NOW + 100));
        assert!(!kernel.set_grant_expiry("nobody", "g", NOW + 100));
        assert!(kernel.set_grant_expiry("c", "g", NOW + 100));
        kernel.check_due_index().expect("the new expiry indexed");
        assert_eq!(kernel.due_accounts(NOW + 99), None);
        assert_eq!(kernel.advance_clock(NOW + 99), (0, 0));
        assert_eq!(kernel.advance_clock(NOW + 100), (0, 1)); // due at the new expiry: one breakage entry
        let credits = kernel.account_credits("c").expect("broke");
        assert_eq!(credits.breakage.iter().map(|b| b.credits).sum::<Picos>(), 7_500_000_000_000);
        assert_eq!(kernel.balance("c", NOW + 100).expect("known").remaining, 0);
        let restored = Kernel::restore(&kernel.snapshot()).expect("restores");
        assert_eq!(restored.snapshot(), kernel.snapshot());
    }

    /// Grants `g` (10 credits) and `later` (10, granted after it, same priority): both without expiry, g burns
    /// first (creation order); `later` given an expiry burns first (earliest expiry first), and the next call draws it.
    #[test]
    fn a_grant_whose_expiry_is_moved_earlier_takes_its_place_in_the_burn_order() {
        let mut customer = calls_customer("c", "k", true, "10000000000000".into(), None);
        let mut later = calls_customer("c", "k", true, "10000000000000".into(), None).grants.remove(0);
        (later.id, later.creation_order) = ("later".into(), 1);
        customer.grants.push(later);
        let mut kernel = crate::authorize::tests::loaded(calls_tables(format!("25{}", &SCALE[1..]), vec![customer]));
        assert!(kernel.set_grant_expiry("c", "later", NOW + 100));
        kernel.check_due_index().expect("the burn order and the payable grants sorted again");
        kernel.ingest(&calls_batch("b", 1), NOW, 1).expect("rates");
        let remaining = |k: &Kernel, id: &str| {
            k.accounts.get("c").expect("known").grants.iter().find(|g| *g.id == *id).expect("held").remaining
        };
        assert_eq!((remaining(&kernel, "g"), remaining(&kernel, "later")), (10_000_000_000_000, 7_500_000_000_000));
    }

    fn calls_batch(batch_id: &str, calls: usize) -> Vec<u8> {
        use prost::Message;
        let events = (0..calls).map(|i| wire::UsageEvent { transaction_id: format!("{batch_id}-{i}"), ..call("call") });
        wire::UsageBatch { batch_id: batch_id.into(), events: events.collect() }.encode_to_vec()
    }
}
