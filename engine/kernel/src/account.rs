//! One customer's account: its grants in burn order, its usage and period totals, and the lookups of
//! the contract and period an event falls in. Apart from the kernel, so that what an account holds, and
//! the indexes kept beside its grants, read in one place; and the refusals of an event or request that
//! names no account.

use rustc_hash::FxHashMap;

use crate::buckets::{Aggregate, HourKey, HourUsage, PeriodKey, PeriodTotals};
use crate::credits::{self, AccountCredits};
use crate::decode::{py_repr, py_repr_cut, Reason, Refusal};
use crate::draw::{burn_order, burn_rank, BurnOrder, Grant};
use crate::route::{period_containing, Contract, Route};

#[derive(Default, Clone)]
pub struct Account {
    pub grants: Vec<Grant>,
    pub(crate) order: BurnOrder,
    /// The grants that may pay, in burn order: every grant with credit left (and perhaps some that have
    /// none since). What an event's draws, Authorize and a top-up's count walk, rather than every grant a
    /// customer ever held (exhausted top-ups pile up: one a draw). Derived (`Account::index_grants`), not
    /// snapshotted; `Kernel::check_due_index` checks it holds every grant with credit.
    pub(crate) payable: BurnOrder,
    /// Grant ids and purchases per period for top-ups (`credits::TopUpIndex`); None until a top-up needs it.
    pub(crate) made: Option<Box<credits::TopUpIndex>>,
    pub aggregates: FxHashMap<PeriodKey, Aggregate>,
    pub buckets: FxHashMap<HourKey, HourUsage>,
    pub periods: PeriodTotals,
    /// (contract anchor, start, end) of the period of the account's last rated event: consecutive
    /// events almost always share it, and computing one walks the calendar. Written only when an
    /// event is committed (reads share the account and must not write).
    pub(crate) last_period: (i64, i64, i64),
    /// The customer's contracts and closed periods, from the tables (None until they name it).
    pub(crate) route: Option<Route>,
    /// Re-ratings' adjustment entries, oldest first (rerate.rs).
    pub adjustments: Vec<crate::rerate::Adjustment>,
    /// The kernel's `touch_epoch` when an event of this account was last listed in `touched`: one
    /// comparison per accepted event tells whether the account is listed already. Not snapshotted.
    pub(crate) touched_epoch: u64,
    /// Reservations, top-up policy and purchases, breakage (crate::credits); None until used.
    pub credits: Option<Box<AccountCredits>>,
    /// The account's entries in the kernel's index of due times (crate::due). Not snapshotted.
    pub(crate) due: crate::due::DueKeys,
}

/// Payable grants walked for a grant before `note_payable` searches them by burn rank.
const PAYABLE_WALKED_MAX: usize = 8;

impl Account {
    /// Sets the burn order and the payable grants from the grants (after any change but a draw, a
    /// top-up's grant, or credit given back to a grant: those keep them as they go).
    pub(crate) fn index_grants(&mut self) {
        self.made = None;
        self.order = burn_order(&self.grants);
        self.index_payable();
    }

    /// Sets the payable grants from the burn order and the grants' balances (after a re-rating moved credit
    /// between any of them).
    pub(crate) fn index_payable(&mut self) {
        let grants = &self.grants;
        self.payable = self.order.iter().copied().filter(|&g| grants[g as usize].remaining > 0).collect();
    }

    /// After grant `g` was given credit (it may have had none): it is among the payable grants.
    /// Always inline: the usual case, below, is a few instructions (with the hint alone it stayed a call).
    #[inline(always)]
    pub(crate) fn note_payable(&mut self, g: u32) {
        // Usually it is there already (a draw left it credit, every event of an account with credit): a
        // short list is walked for it, cheaper than the search's burn ranks (about 90 instructions).
        if self.payable.len() <= PAYABLE_WALKED_MAX && self.payable.contains(&g) {
            return;
        }
        self.place_payable(g);
    }

    /// `note_payable` by a search of the payable grants by burn rank.
    fn place_payable(&mut self, g: u32) {
        let grants = &self.grants;
        if let Err(at) = self.payable.binary_search_by_key(&burn_rank(grants, g), |&p| burn_rank(grants, p)) {
            self.payable.insert(at, g);
        }
    }

    /// After grant `g` was drawn: out of the payable grants once it has nothing left.
    pub(crate) fn note_drawn(&mut self, g: u32) {
        let grants = &self.grants;
        if grants[g as usize].remaining > 0 {
            return;
        }
        if let Ok(at) = self.payable.binary_search_by_key(&burn_rank(grants, g), |&p| burn_rank(grants, p)) {
            self.payable.remove(at);
        }
    }

    /// After the kernel added grant `g` (the last): in the burn order where sorting all again puts it, and
    /// among the payable grants.
    pub(crate) fn note_added(&mut self, g: u32) {
        let grants = &self.grants;
        let rank = burn_rank(grants, g);
        let at = self.order.partition_point(|&o| burn_rank(grants, o) < rank);
        self.order.insert(at, g);
        self.note_payable(g);
    }

    /// Whether every grant with credit is among the payable grants, in burn order (tests).
    pub(crate) fn payable_ok(&self) -> bool {
        let grants = &self.grants;
        let sorted = self.payable.windows(2).all(|w| burn_rank(grants, w[0]) < burn_rank(grants, w[1]));
        let with_credit = grants.iter().enumerate().filter(|(_, g)| g.remaining > 0);
        sorted
            && with_credit.count() == self.payable.iter().filter(|&&g| grants[g as usize].remaining > 0).count()
            && self.order == burn_order(grants)
    }

    /// The contract covering ts_ms.
    pub(crate) fn contract_at(&self, ts_ms: i64) -> Option<&Contract> {
        self.route.as_ref()?.contracts.iter().find(|c| c.covers(ts_ms))
    }

    /// The contract covering ts_ms, and (anchor, start, end) of its period containing ts_ms;
    /// `shared` is a period of any account's (`Rater::last_period`), taken when it is that one.
    pub(crate) fn covering(&self, ts_ms: i64, shared: (i64, i64, i64)) -> Option<(&Contract, (i64, i64, i64))> {
        let contract = self.contract_at(ts_ms)?;
        Some((contract, self.period(contract.starting_at_ms, ts_ms, shared)))
    }

    /// The start of the period containing ts_ms under the contract covering it, when that period is
    /// the one the account last rated in (`last_period`); else None. For `Kernel::warm`, which reads
    /// ahead of checking: an unchecked timestamp may be anywhere, so warm asks only the cached period
    /// and computes none (a fuzzed timestamp near i64::MAX once looped in the calendar for minutes; it
    /// is total now, but computing a period is work an event not yet checked should not cost). Warming
    /// an event in another period is skipped, not needed for correctness.
    pub(crate) fn last_period_covering(&self, ts_ms: i64) -> Option<i64> {
        let (anchor, start, end) = self.last_period;
        let contract = self.contract_at(ts_ms)?;
        (contract.starting_at_ms == anchor && start <= ts_ms && ts_ms < end).then_some(start)
    }

    /// (anchor, start, end) of the period containing ts_ms under the contract anchored at anchor_ms:
    /// the account's last period or `shared` when either is that period (a period depends on the
    /// anchor and the time alone, so one found for another account is the same), else computed.
    fn period(&self, anchor_ms: i64, ts_ms: i64, shared: (i64, i64, i64)) -> (i64, i64, i64) {
        for known in [self.last_period, shared] {
            let (anchor, start, end) = known;
            if anchor == anchor_ms && start <= ts_ms && ts_ms < end {
                return known;
            }
        }
        let (start, end) = period_containing(anchor_ms, ts_ms);
        (anchor_ms, start, end)
    }
}

impl Account {
    /// The customer's contracts and closed periods, once the tables name it.
    pub(crate) fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }
}

pub(crate) fn unknown_customer(customer_id: &str) -> Refusal {
    Refusal::new(Reason::UnknownCustomer, format!("customer {} does not exist", py_repr(customer_id)))
}

/// The refusal of an event or request naming no account: INVALID_EVENT naming customer_id when the id breaks
/// the id rule (contracts.proto: 1-128 of ASCII letters, digits and . _ : @ -), else UNKNOWN_CUSTOMER. Asked
/// only once no account has the id, so an account stored before the rule is never re-checked.
pub(crate) fn no_such_customer(customer_id: &str) -> Refusal {
    if is_id(customer_id) {
        return unknown_customer(customer_id);
    }
    let why = "must be 1-128 characters of letters, digits and ._:@-";
    Refusal::new(Reason::InvalidEvent, format!("customer_id: {} {why}", py_repr_cut(customer_id)))
}

/// The refusal of a usage event naming no account. Its reason stays UNKNOWN_CUSTOMER whatever the id: a
/// batch's digest covers each rejection's reason, so a journal written before the id rule (where such an
/// event was UNKNOWN_CUSTOMER) must replay to the same digest. The message names customer_id and the rule.
pub(crate) fn no_such_customer_event(customer_id: &str) -> Refusal {
    if is_id(customer_id) {
        return unknown_customer(customer_id);
    }
    let why = "must be 1-128 characters of letters, digits and ._:@-, so no customer has it";
    Refusal::new(Reason::UnknownCustomer, format!("customer_id: {} {why}", py_repr_cut(customer_id)))
}

/// Whether `text` follows the id rule (engine/control.py ID_PATTERN).
pub(crate) fn is_id(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_config())]
        /// A period taken from the account's cache or another account's (`Rater::last_period`) is the
        /// one the calendar gives: for another anchor, or another time, the calendar is walked.
        #[test]
        fn a_period_found_for_another_account_is_taken_only_when_it_is_the_same(
            anchor in 0i64..2_000_000_000_000,
            anchor_days in proptest::collection::vec(0i64..40, 2),
            at in 2_000_000_000_000i64..4_000_000_000_000,
            at_days in proptest::collection::vec(0i64..40, 3),
        ) {
            // Anchors and times a few days apart, so that the periods known often hold the time asked.
            let anchors: Vec<i64> = anchor_days.iter().map(|d| anchor + d * 86_400_000).collect();
            let times: Vec<i64> = at_days.iter().map(|d| at + d * 86_400_000).collect();
            let known = |anchor: i64, ts: i64| {
                let (start, end) = period_containing(anchor, ts);
                (anchor, start, end)
            };
            let account = Account { last_period: known(anchors[0], times[0]), ..Account::default() };
            let shared = known(anchors[1], times[1]);
            for &anchor in &anchors {
                prop_assert_eq!(account.period(anchor, times[2], shared), known(anchor, times[2]));
            }
        }
    }
}
