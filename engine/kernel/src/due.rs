//! The index of due times: which accounts have something for `advance_clock` to do, and from when.
//!
//! An account is due at the earliest of: the expiry of a grant that still holds credit, the TTL of an
//! open reservation, the end of the billing period at which a grant rolls over (`credits::account_due`).
//! The index keeps `(due_ms, slot)` for every account with something due, ordered by time, so the next
//! due instant is its first entry (O(log n)) and `advance_clock` visits only the accounts at its front,
//! not every account. It keeps, the same way, when an account's oldest ended reservation leaves the
//! dedupe window: an `advance_clock` that runs forgets old reservation ids in those accounts only (as the
//! walk of every account did before). That instant makes the clock due too (`clock_due_ms`), so an id is
//! forgotten when its window ends also where nothing else ever falls due (a gateway whose holds all settle
//! in time): before, it was remembered, and its ended reservation kept, until something else did.
//!
//! The index is derived state: every change to an account's grants, holds or rollovers refreshes that
//! account's entry (`refresh`), a snapshot does not store it, and restoring or loading the tables
//! rebuilds it. `Kernel::check_due_index` compares it with a full walk (tests).

use std::collections::BTreeSet;

use crate::account::Account;
use crate::credits::account_due;
use crate::kernel::Kernel;

/// Nothing due (the key of an account that is not in the index).
pub const NEVER: i64 = i64::MAX;
const NO_SLOT: u32 = u32::MAX;
/// `DueKeys::ended` before the first exact computation.
const UNCOUNTED: usize = usize::MAX;

/// An account's entries in the index, kept in the account so that a refresh finds them without a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueKeys {
    /// The account's number in `DueIndex::customers` (NO_SLOT until it first has something due).
    slot: u32,
    due_ms: i64,
    forget_ms: i64,
    /// How many ended reservations `forget_ms` accounts for: a busy gateway's customer may have millions
    /// within the dedupe window, so a change that only adds some (at its own time) does not walk them.
    ended: usize,
}

impl DueKeys {
    /// The earliest time something of the account is due (a hold's TTL, a grant's expiry or rollover), exact as
    /// the index keeps it; NEVER: nothing.
    pub(crate) fn due_ms(&self) -> i64 {
        self.due_ms
    }
}

impl Default for DueKeys {
    fn default() -> DueKeys {
        DueKeys { slot: NO_SLOT, due_ms: NEVER, forget_ms: NEVER, ended: UNCOUNTED }
    }
}

#[derive(Debug, Default)]
pub struct DueIndex {
    /// Customer ids by slot: the index orders small integers, not strings.
    customers: Vec<Box<str>>,
    due: BTreeSet<(i64, u32)>,
    forget: BTreeSet<(i64, u32)>,
}

/// When the account's oldest ended reservation leaves the dedupe window (it is kept while
/// `at_ms + window_ms > now`).
fn forget_at(account: &Account, window_ms: i64) -> i64 {
    let ended = account.credits.as_deref().into_iter().flat_map(|c| c.ended.values());
    ended.map(|e| e.at_ms.saturating_add(window_ms)).min().unwrap_or(NEVER)
}

/// (due_ms, forget_ms, ended reservations) for `refresh_at`.
fn due_times(account: &Account, window_ms: i64, at_ms: i64) -> (i64, i64, usize) {
    if account.credits.is_none() && account.grants.iter().all(|g| g.expires_at_ms.is_none()) {
        // No holds, rollovers or ended reservations, no grant that expires (the usual account, refreshed
        // after each of its events): nothing is due, which the walks below would find more slowly.
        return (NEVER, NEVER, 0);
    }
    let ended = account.credits.as_deref().map_or(0, |c| c.ended.len());
    let counted = account.due.ended;
    let forget_ms = if counted == UNCOUNTED || ended < counted {
        forget_at(account, window_ms)
    } else if ended > counted {
        account.due.forget_ms.min(at_ms.saturating_add(window_ms))
    } else {
        account.due.forget_ms
    };
    (account_due(account, i64::MIN), forget_ms, ended)
}

fn move_entry(set: &mut BTreeSet<(i64, u32)>, slot: u32, from: i64, to: i64) {
    if from == to {
        return;
    }
    if from != NEVER {
        set.remove(&(from, slot));
    }
    if to != NEVER {
        set.insert((to, slot));
    }
}

impl DueIndex {
    /// The earliest time something is due (NEVER: nothing).
    pub fn next_due_ms(&self) -> i64 {
        self.due.first().map_or(NEVER, |&(at, _)| at)
    }

    /// The earliest time an account's oldest ended reservation leaves the dedupe window (NEVER: none).
    pub fn next_forget_ms(&self) -> i64 {
        self.forget.first().map_or(NEVER, |&(at, _)| at)
    }

    /// Brings the account's entries up to date after any change to its grants, holds, ended reservations
    /// or rollovers, walking its ended reservations.
    pub fn refresh(&mut self, customer_id: &str, account: &mut Account, window_ms: i64) {
        account.due.ended = UNCOUNTED;
        self.refresh_at(customer_id, account, window_ms, NEVER);
    }

    /// `refresh` after a change at `at_ms` that may have ended reservations (then, at `at_ms`) but
    /// forgot none: the oldest ended one is found without walking them all.
    /// Inline for the usual account (no credits, no grant that expires, nothing due before): ingestion
    /// refreshes after every event, and as a call its entry and exit were half its instructions.
    #[inline]
    pub fn refresh_at(&mut self, customer_id: &str, account: &mut Account, window_ms: i64, at_ms: i64) {
        let keys = &account.due;
        if (keys.due_ms, keys.forget_ms) == (NEVER, NEVER)
            && account.credits.is_none()
            && account.grants.iter().all(|g| g.expires_at_ms.is_none())
        {
            account.due.ended = 0; // what `due_times` finds of such an account: (NEVER, NEVER, 0)
            return;
        }
        self.refresh_walked(customer_id, account, window_ms, at_ms);
    }

    /// `refresh_at` of any account.
    fn refresh_walked(&mut self, customer_id: &str, account: &mut Account, window_ms: i64, at_ms: i64) {
        let (due_ms, forget_ms, ended) = due_times(account, window_ms, at_ms);
        let keys = &mut account.due;
        keys.ended = ended;
        if (keys.due_ms, keys.forget_ms) == (due_ms, forget_ms) {
            return;
        }
        if keys.slot == NO_SLOT {
            keys.slot = u32::try_from(self.customers.len()).expect("fewer than 2^32 customers");
            self.customers.push(customer_id.into());
        }
        move_entry(&mut self.due, keys.slot, keys.due_ms, due_ms);
        move_entry(&mut self.forget, keys.slot, keys.forget_ms, forget_ms);
        (keys.due_ms, keys.forget_ms) = (due_ms, forget_ms);
    }

    /// The customers with something due, or an ended reservation to forget, by `now_ms`, sorted by id
    /// (so that notices come in the same order on every replay).
    pub fn due_by(&self, now_ms: i64) -> Vec<Box<str>> {
        let front = |set: &BTreeSet<(i64, u32)>| {
            set.range(..=(now_ms, NO_SLOT)).map(|&(_, slot)| slot).collect::<Vec<u32>>().into_iter()
        };
        let mut slots: Vec<u32> = front(&self.due).chain(front(&self.forget)).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut customers: Vec<Box<str>> = slots.into_iter().map(|s| self.customers[s as usize].clone()).collect();
        customers.sort_unstable();
        customers
    }

    /// The index of these accounts, from a walk of every one (restore, tables loaded).
    pub fn rebuild(accounts: &mut crate::kernel::Accounts, window_ms: i64) -> DueIndex {
        // Slots follow the map's order: they only name accounts (`due_by` sorts by customer id).
        let mut index = DueIndex::default();
        for (customer_id, account) in accounts.iter_mut() {
            account.due = DueKeys::default();
            index.refresh(customer_id, account, window_ms);
        }
        index
    }
}

impl Kernel {
    /// The earliest time anything is due, exactly (None: nothing): what the server's clock driver waits for.
    pub fn next_due_ms(&self) -> Option<i64> {
        Some(self.due.next_due_ms()).filter(|&at| at != NEVER)
    }

    /// The earliest time an ended reservation leaves the dedupe window, exactly (None: none ended).
    pub fn next_forget_ms(&self) -> Option<i64> {
        Some(self.due.next_forget_ms()).filter(|&at| at != NEVER)
    }

    /// The earlier of `next_due_ms` and, with `forget`, `next_forget_ms`: when an AdvanceClock next has work, read
    /// under one lock (the writer asks before every group).
    pub fn next_clock_work_ms(&self, forget: bool) -> Option<i64> {
        let forget_ms = if forget { self.due.next_forget_ms() } else { NEVER };
        Some(self.due.next_due_ms().min(forget_ms)).filter(|&at| at != NEVER)
    }

    /// From when an AdvanceClock changes the state: the earliest of the exact next due instant, the next
    /// instant an ended reservation is forgotten, and `clock.due_ms`, a lower bound kept as before the
    /// index existed (lowered whenever something may become due, exact after each AdvanceClock), so that a
    /// journal written before the index replays the same AdvanceClock commands with the same effect. Every
    /// AdvanceClock journaled before forgetting counted here was applied under the later of the two bounds,
    /// so it is applied (and does the same: it visits the same accounts) under this one too.
    pub fn clock_due_ms(&self) -> i64 {
        self.clock.due_ms.min(self.due.next_due_ms()).min(self.due.next_forget_ms())
    }

    /// Rebuilds the index from every account (after a restore or new tables: routes and the dedupe window
    /// may have changed). The clock's lower bound is left as it is (see `clock_due_ms`).
    pub fn rebuild_due(&mut self) {
        self.due = DueIndex::rebuild(&mut self.accounts, self.rater.catalog.dedupe_window_ms);
    }

    /// After `load_tables` (whose `install` refreshed the customers the tables name): every other account
    /// lost its route, which moves its rollovers, and a new dedupe window moves when ended reservations are
    /// forgotten. Only accounts with rollovers or ended reservations are refreshed: the others' keys depend on
    /// their grants and holds alone, which new tables do not change.
    pub fn refresh_due_after_tables(&mut self, window_before_ms: i64) {
        let window_ms = self.rater.catalog.dedupe_window_ms;
        for (customer_id, account) in self.accounts.iter_mut() {
            let Some(credits) = account.credits.as_deref() else { continue };
            if !credits.rollover.is_empty() || (window_ms != window_before_ms && !credits.ended.is_empty()) {
                self.due.refresh(customer_id, account, window_ms);
            }
        }
    }

    /// Ok when the index holds exactly what a walk of every account finds, and each account's burn order and
    /// payable grants (account.rs `Account::payable`, derived alike) hold every grant they must; Err says where
    /// it differs.
    pub fn check_due_index(&self) -> Result<(), String> {
        let window_ms = self.rater.catalog.dedupe_window_ms;
        let (mut due, mut forget) = (BTreeSet::new(), BTreeSet::new());
        for (customer_id, account) in &self.accounts {
            if !account.payable_ok() {
                return Err(format!("customer {customer_id:?}: a grant with credit is not among its payable grants"));
            }
            let (due_ms, forget_ms) = (account_due(account, i64::MIN), forget_at(account, window_ms));
            let keys = account.due;
            if (keys.due_ms, keys.forget_ms) != (due_ms, forget_ms) {
                return Err(format!(
                    "customer {customer_id:?}: indexed (due {}, forget {}), a walk finds (due {due_ms}, forget {forget_ms})",
                    keys.due_ms, keys.forget_ms
                ));
            }
            if due_ms == NEVER && forget_ms == NEVER {
                continue;
            }
            if self.due.customers.get(keys.slot as usize).is_none_or(|c| **c != **customer_id) {
                return Err(format!("customer {customer_id:?}: slot {} names another customer", keys.slot));
            }
            if due_ms != NEVER {
                due.insert((due_ms, keys.slot));
            }
            if forget_ms != NEVER {
                forget.insert((forget_ms, keys.slot));
            }
        }
        if due != self.due.due || forget != self.due.forget {
            return Err(format!(
                "the index holds {} due and {} forget entries, a walk finds {} and {}",
                self.due.due.len(),
                self.due.forget.len(),
                due.len(),
                forget.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::decode::wire;
    // One COUNT product `calls` on rate card `card`, and customers with one grant each.
    use crate::authorize::tests::{calls_customer, calls_tables, loaded, SCALE};

    const CREDIT: i128 = 1_000_000_000_000;

    /// Customers c0..c{n-1}, each on an ALLOW contract from 0 with one grant of 10 credits (1 a call) expiring
    /// at `expiry(customer number)`.
    fn kernel(n: usize, expiry: impl Fn(usize) -> Option<i64>) -> Kernel {
        let customers = (0..n)
            .map(|c| calls_customer(&format!("c{c}"), &format!("k{c}"), false, (10 * CREDIT).to_string(), expiry(c)));
        loaded(calls_tables(format!("1{SCALE}"), customers.collect()))
    }

    fn call(customer_id: &str, transaction_id: &str, reservation_id: &str, at_ms: i64) -> wire::UsageEvent {
        wire::UsageEvent {
            transaction_id: transaction_id.into(),
            customer_id: customer_id.into(),
            event_type: "call".into(),
            timestamp_ms: at_ms,
            reservation_id: reservation_id.into(),
            ..wire::UsageEvent::default()
        }
    }

    fn ingest(kernel: &mut Kernel, events: Vec<wire::UsageEvent>, at_ms: i64, seq: u64) {
        let batch = wire::UsageBatch { batch_id: format!("b{seq}"), events }.encode_to_vec();
        kernel.ingest(&batch, at_ms, seq).expect("a batch");
    }

    fn checked(kernel: &Kernel) {
        kernel.check_due_index().expect("the index matches a walk of every account");
    }

    #[test]
    fn the_index_lists_exactly_the_accounts_due_and_follows_every_change() {
        // c0 expires at 5_000, c1 at 9_000, c2 never; c3 expires at 5_000 too.
        let mut kernel = kernel(4, |c| [Some(5_000), Some(9_000), None, Some(5_000)][c]);
        checked(&kernel);
        assert_eq!(kernel.next_due_ms(), Some(5_000));
        assert_eq!(kernel.due.due_by(4_999), Vec::<Box<str>>::new());
        assert_eq!(kernel.due.due_by(5_000), vec!["c0".into(), "c3".into()]);
        // c3 draws its grant to nothing: its expiry is no longer due.
        let calls = (0..10).map(|n| call("c3", &format!("t{n}"), "", 1_000)).collect();
        ingest(&mut kernel, calls, 1_000, 1);
        checked(&kernel);
        assert_eq!(kernel.due.due_by(5_000), vec!["c0".into()]);
        // c2 holds credit until 3_000 (TTL 2_000): its hold is due before anyone's expiry.
        let reserved = kernel
            .reserve("r1", &call("c2", "h1", "", 1_000), 1_000, crate::credits::HoldTtl::Named(2_000))
            .expect("reserves");
        assert_eq!(reserved.held, CREDIT);
        checked(&kernel);
        assert_eq!(kernel.next_due_ms(), Some(3_000));
        // Settled by an event: the hold is no longer due, its id is remembered until 2_000 + the window.
        ingest(&mut kernel, vec![call("c2", "t9", "r1", 2_000)], 2_000, 2);
        checked(&kernel);
        assert_eq!(kernel.next_due_ms(), Some(5_000));
        // The clock's lower bound still says 3_000 (a journal from before the index may hold that tick),
        // and such a tick moves the clock but finds no account due.
        assert_eq!(kernel.clock_due_ms(), 3_000);
        assert_eq!(kernel.advance_clock(3_000), (0, 0));
        assert_eq!(kernel.clock.now_ms, 3_000);
        assert_eq!(kernel.clock_due_ms(), 5_000);
        // At 5_000 only c0 is visited: its grant breaks; c1 stays due at 9_000.
        assert_eq!(kernel.advance_clock(5_000), (0, 1));
        checked(&kernel);
        assert_eq!(kernel.next_due_ms(), Some(9_000));
        assert_eq!(kernel.account_credits("c0").map(|c| c.breakage.len()), Some(1));
        assert!(kernel.account_credits("c1").is_none_or(|c| c.breakage.is_empty()));
        // The ended reservation is forgotten at the first AdvanceClock at or after 2_000 + the window.
        assert_eq!(kernel.advance_clock(9_000), (0, 1));
        assert_eq!(kernel.account_credits("c2").map(|c| c.ended.len()), Some(1));
        assert_eq!(kernel.next_due_ms(), None);
        // Its forgetting is due itself, at 2_000 + the window, though nothing else is.
        let forget_ms = 2_000 + kernel.rater.catalog.dedupe_window_ms;
        assert_eq!(kernel.next_forget_ms(), Some(forget_ms));
        assert_eq!(kernel.clock_due_ms(), forget_ms);
        assert_eq!((kernel.next_clock_work_ms(true), kernel.next_clock_work_ms(false)), (Some(forget_ms), None));
        assert_eq!(kernel.advance_clock(forget_ms - 1), (0, 0)); // not yet: not run
        assert_eq!(kernel.account_credits("c2").map(|c| c.ended.len()), Some(1));
        assert_eq!(kernel.advance_clock(forget_ms), (0, 0));
        assert_eq!(kernel.clock.now_ms, forget_ms);
        assert_eq!(kernel.account_credits("c2").map(|c| c.ended.len()), Some(0));
        assert_eq!((kernel.next_forget_ms(), kernel.clock_due_ms()), (None, i64::MAX));
        checked(&kernel);
    }

    #[test]
    fn restoring_a_snapshot_rebuilds_the_index_it_does_not_store() {
        let mut kernel = kernel(50, |c| Some(1_000 + (c as i64 % 7) * 100));
        kernel.reserve("r", &call("c3", "h3", "", 10), 10, crate::credits::HoldTtl::Named(5_000)).expect("reserves");
        let snapshot = kernel.snapshot();
        crate::snapshot::check_owned_form(&snapshot);
        let mut restored = Kernel::restore(&snapshot).expect("restores");
        restored.check_due_index().expect("rebuilt on restore");
        assert_eq!(restored.next_due_ms(), kernel.next_due_ms());
        assert_eq!(restored.snapshot(), snapshot);
        // Both advance alike, whichever accounts they visit.
        assert_eq!(restored.advance_clock(1_300), kernel.advance_clock(1_300));
        assert_eq!(restored.snapshot(), kernel.snapshot());
        assert_eq!(restored.due.due_by(1_300), kernel.due.due_by(1_300));
    }

    #[test]
    fn advancing_with_pauses_pauses_every_few_dozen_accounts_and_ends_as_without() {
        use crate::credits::{advance_clock_pausing, Rollovers, ADVANCE_PAUSE_EVERY_ACCOUNTS};
        // 150 accounts whose grants all expire at 1_000: a month's end.
        let mut paused = kernel(150, |_| Some(1_000));
        let mut whole = kernel(150, |_| Some(1_000));
        let mut pauses = Vec::new();
        let mut guard = &mut paused;
        let due = guard.due_accounts(1_000).expect("due");
        let done = advance_clock_pausing(&mut guard, 1_000, due, Rollovers::CURRENT, |k| {
            // What a read sees at a pause: the accounts before it advanced, the rest not yet.
            let broken = (0..150)
                .filter(|c| k.account_credits(&format!("c{c}")).is_some_and(|credits| !credits.breakage.is_empty()));
            pauses.push(broken.count());
        });
        assert_eq!((done.reservations_expired, done.breakage_entries, done.grants_ended.len()), (0, 150, 150));
        let mut ids: Vec<Box<str>> = (0..150).map(|c| format!("c{c}").into()).collect();
        ids.sort_unstable();
        assert_eq!(done.grants_ended, ids);
        assert_eq!(pauses, vec![ADVANCE_PAUSE_EVERY_ACCOUNTS, 2 * ADVANCE_PAUSE_EVERY_ACCOUNTS]);
        assert_eq!(whole.advance_clock(1_000), (0, 150));
        assert_eq!(paused.snapshot(), whole.snapshot());
        checked(&paused);
        assert_eq!(paused.next_due_ms(), None);
    }
}
