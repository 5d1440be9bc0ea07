//! Grants and how an event's charges draw on them.
//!
//! Burn order: applicable, started, unexpired grants by priority (lower first), then earliest
//! expiry, then narrowest applicability, then creation order. What no grant covers is overage.
//! An event's refunds and charges are netted before they touch grants or overage (design §3), as far
//! as the grants' products allow: its refunds are settled first (each gives back the overage its bucket
//! caused, then the credits its bucket drew, in reverse burn order), and what they gave back is noted;
//! then its charges, product by product in product-id order (never in the order products were created),
//! each first take back what the event's refunds gave back that could pay it: the credit given back to
//! grants usable for its product, in burn order, then the overage given back (overage pays any product:
//! the charge becomes overage again). Only the rest draws in burn order, the remainder overage. Credit
//! before overage, because that is the exact reverse of a refund's own order: where the grants apply
//! to every product the event settles as its net amount would (a net refund gives back overage first,
//! then credits in reverse burn order; a net charge draws in burn order; a net zero touches nothing),
//! and the universal overage is kept for the charges that can use no credit given back. Taken the other
//! way, a refund of 5 overage and 7 credits beside a charge of 5 would leave the 5 overage and 7 credits
//! given back, where its net refund of 7 gives back the 5 overage and 2 credits. Credit given back to a
//! grant another product's charge cannot use stays given back (that charge draws in burn order), and
//! charges take back greedily in product-id order, so grants restricted to some products can leave an
//! event less than fully netted. Batches journaled before this rule (`netted` false) settled the
//! charges in burn order without taking anything back, and replay so. `settle` works on a copy of the
//! balances, so Authorize runs the very same code and commits nothing.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::money::Picos;
use crate::route::Sym;

pub const NEVER_MS: i64 = i64::MAX;

fn never() -> i64 {
    NEVER_MS
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: Box<str>,
    pub amount: Picos,
    pub remaining: Picos,
    pub priority: i64,
    /// Product symbols; empty = every product.
    pub applicable: Vec<Sym>,
    pub starts_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub creation_order: i64,
    /// Usage dated at or after this is not paid from the grant: its rollover, for a grant with a rollover
    /// fraction granted by a GrantCredits that says so (`GrantTable::use_ends_at_rollover`); NEVER_MS for
    /// every other grant. Derived when tables are installed (`credits::note_rollovers`), from the tables and
    /// the route, as recovery installs them before serving: a snapshot does not carry it.
    #[serde(skip, default = "never")]
    pub usable_before_ms: i64,
    /// With a rollover fraction and an expiry exactly at its rollover: rolls over there instead of simply
    /// expiring (`GrantTable::expiring_at_rollover_rolls`; `credits::rollover_at`); false for every other grant.
    /// Taken from the tables when they are installed, as `usable_before_ms`: a snapshot does not carry it.
    #[serde(skip)]
    pub expiring_at_rollover_rolls: bool,
}

impl Grant {
    pub fn drawn(&self) -> Picos {
        self.amount - self.remaining
    }
    #[inline]
    pub fn applies_to(&self, product: Sym) -> bool {
        self.applicable.is_empty() || self.applicable.contains(&product)
    }
    pub fn usable_at(&self, ts_ms: i64) -> bool {
        self.starts_at_ms <= ts_ms && ts_ms < self.usable_before_ms && self.expires_at_ms.is_none_or(|end| ts_ms < end)
    }
    pub fn expired_at(&self, ts_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|end| ts_ms >= end)
    }
    fn burn_key(&self) -> (i64, i64, usize, i64) {
        let narrowness = if self.applicable.is_empty() { usize::MAX } else { self.applicable.len() };
        (self.priority, self.expires_at_ms.unwrap_or(NEVER_MS), narrowness, self.creation_order)
    }
}

/// Grant indices in burn order, inline for up to four grants: held in a Vec, an account's order was
/// a heap block of its own, one more cache line (a miss, at 10,000 customers) for every event settled.
pub type BurnOrder = SmallVec<[u32; 4]>;

/// Grant indices in burn order.
pub fn burn_order(grants: &[Grant]) -> BurnOrder {
    let mut order: BurnOrder = (0..grants.len() as u32).collect();
    order.sort_by_key(|&i| grants[i as usize].burn_key());
    order
}

/// One product's part of an event, as settlement sees it.
pub struct Charge<'a> {
    pub product: Sym,
    /// Sort key for charges: the product id.
    pub product_id: &'a str,
    pub charge: Picos,
    /// What the product's bucket drew so far, per grant index, and the overage it caused.
    pub drawn_by_grant: &'a [(u32, Picos)],
    pub overage: Picos,
}

/// Where one product's charge went: credits per grant (negative = given back) and overage.
/// Inline for the usual one or two grants, so settling allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub draws: SmallVec<[(u32, Picos); 2]>,
    pub overage: Picos,
}

/// An event's outcomes, one per product, inline for the usual few products.
pub type Outcomes = SmallVec<[Outcome; 4]>;

/// Grant balances as settlement reads and changes them, by grant index.
pub trait Balances {
    fn get(&self, grant: u32) -> Picos;
    fn set(&mut self, grant: u32, balance: Picos);
}

impl Balances for [Picos] {
    fn get(&self, grant: u32) -> Picos {
        self[grant as usize]
    }
    fn set(&mut self, grant: u32, balance: Picos) {
        self[grant as usize] = balance;
    }
}

/// Changes above of the account's balances (`Grant::remaining`): what settling an event changed, without
/// copying every grant's balance (a customer holding 60,000 exhausted top-ups copied, and wrote back, all of
/// them for every event). A handful of grants change per event: found by a walk of `changed` while it is short.
pub struct Changes<'a> {
    grants: &'a [Grant],
    /// (grant index, balance now), in the order first changed: the caller's, so that it reads them where
    /// they were written (returned, the overlay was copied out twice, some 60 instructions an event).
    pub changed: &'a mut Changed,
    /// Places in `changed` by grant index, once it is long (an event drawing on thousands of grants).
    places: Option<rustc_hash::FxHashMap<u32, usize>>,
}

/// Entries of `Changes::changed` walked before they are indexed.
const CHANGES_WALKED_MAX: usize = 16;

/// What `Changes` records: (grant index, balance now), inline for the usual few grants.
pub type Changed = SmallVec<[(u32, Picos); 4]>;

impl<'a> Changes<'a> {
    /// An overlay recording into `changed`, cleared first.
    pub fn new(grants: &'a [Grant], changed: &'a mut Changed) -> Changes<'a> {
        changed.clear();
        Changes { grants, changed, places: None }
    }
    fn place(&self, grant: u32) -> Option<usize> {
        match &self.places {
            Some(places) => places.get(&grant).copied(),
            None => self.changed.iter().position(|&(g, _)| g == grant),
        }
    }
}

impl Balances for Changes<'_> {
    fn get(&self, grant: u32) -> Picos {
        self.place(grant).map_or(self.grants[grant as usize].remaining, |at| self.changed[at].1)
    }
    fn set(&mut self, grant: u32, balance: Picos) {
        if let Some(at) = self.place(grant) {
            self.changed[at].1 = balance;
            return;
        }
        self.changed.push((grant, balance));
        if let Some(places) = &mut self.places {
            places.insert(grant, self.changed.len() - 1);
        } else if self.changed.len() > CHANGES_WALKED_MAX {
            self.places = Some(self.changed.iter().enumerate().map(|(at, &(g, _))| (g, at)).collect());
        }
    }
}

/// Where grant `g` stands in burn order: its burn key, then its index (`burn_order` sorts stably, so among
/// equal keys the earlier grant burns first). Distinct for distinct grants.
pub fn burn_rank(grants: &[Grant], g: u32) -> ((i64, i64, usize, i64), u32) {
    (grants[g as usize].burn_key(), g)
}

/// Settles an event's charges (in product-id order) against `remaining` (one balance per grant,
/// changed in place). `order`: grants in burn order, every grant with credit among them (the full burn
/// order, or the account's payable grants: `Account::payable`). `netted`: charges take back first what
/// the event's refunds gave back (module comment); false, as batches journaled before that rule.
pub fn settle(
    grants: &[Grant],
    order: &[u32],
    remaining: &mut [Picos],
    charges: &[Charge],
    ts_ms: i64,
    netted: bool,
) -> Outcomes {
    let mut outcomes = Outcomes::new();
    settle_into(grants, order, remaining, charges, ts_ms, netted, &mut outcomes);
    outcomes
}

/// What an event's refunds gave back, as its charges may take it back (`netted`).
#[derive(Default)]
struct GivenBack {
    /// (grant, credit given back and not yet taken back), in burn order.
    credit: SmallVec<[(u32, Picos); 4]>,
    overage: Picos,
}

/// `settle` into the caller's `outcomes` (cleared first), so nothing is moved on return.
pub fn settle_into<B: Balances + ?Sized>(
    grants: &[Grant],
    order: &[u32],
    remaining: &mut B,
    charges: &[Charge],
    ts_ms: i64,
    netted: bool,
    outcomes: &mut Outcomes,
) {
    outcomes.clear();
    // `extend` reserves once and writes each in place; `resize_with` checks the capacity per outcome.
    outcomes.extend((0..charges.len()).map(|_| Outcome::default()));
    // Grants a refund gave credit back to: they may have had none, so not be in `order`.
    let mut returned: SmallVec<[u32; 4]> = SmallVec::new();
    let mut given = GivenBack::default();
    for (charge, outcome) in charges.iter().zip(outcomes.iter_mut()) {
        if charge.charge < 0 {
            *outcome = give_back(grants, remaining, charge);
            returned.extend(outcome.draws.iter().map(|&(g, _)| g));
            given.overage -= outcome.overage;
            for &(g, credits) in &outcome.draws {
                add_draw(&mut given.credit, g, -credits);
            }
        }
    }
    given.credit.sort_unstable_by_key(|&(g, _)| burn_rank(grants, g));
    debug_assert!(charges.windows(2).all(|w| w[0].product_id <= w[1].product_id), "charges come in product-id order");
    let merged: Vec<u32>;
    let order = if returned.iter().all(|g| order.contains(g)) {
        order
    } else {
        let mut all: Vec<u32> = order.iter().chain(&returned).copied().collect();
        all.sort_unstable_by_key(|&g| burn_rank(grants, g));
        all.dedup();
        merged = all;
        &merged[..]
    };
    for (charge, outcome) in charges.iter().zip(outcomes.iter_mut()) {
        if charge.charge <= 0 {
            continue;
        }
        let mut left = charge.charge;
        if netted {
            left = take_back(grants, remaining, charge, ts_ms, &mut given, outcome);
        }
        for &g in order {
            if left == 0 {
                break;
            }
            let grant = &grants[g as usize];
            let balance = remaining.get(g);
            if balance <= 0 || !grant.usable_at(ts_ms) || !grant.applies_to(charge.product) {
                continue;
            }
            let take = left.min(balance);
            remaining.set(g, balance - take);
            add_draw(&mut outcome.draws, g, take);
            left -= take;
        }
        outcome.overage += left;
    }
}

/// A charge takes back what the event's refunds gave back that could pay it: credit of grants usable for
/// its product at `ts_ms`, in burn order, then overage (any product's). Returns what is left to draw.
fn take_back<B: Balances + ?Sized>(
    grants: &[Grant],
    remaining: &mut B,
    charge: &Charge,
    ts_ms: i64,
    given: &mut GivenBack,
    outcome: &mut Outcome,
) -> Picos {
    let mut left = charge.charge;
    for (g, back) in given.credit.iter_mut() {
        if left == 0 {
            break;
        }
        let grant = &grants[*g as usize];
        if *back <= 0 || !grant.usable_at(ts_ms) || !grant.applies_to(charge.product) {
            continue;
        }
        let balance = remaining.get(*g);
        let take = left.min(*back).min(balance);
        if take > 0 {
            remaining.set(*g, balance - take);
            add_draw(&mut outcome.draws, *g, take);
            *back -= take;
            left -= take;
        }
    }
    let overage = left.min(given.overage);
    given.overage -= overage;
    outcome.overage += overage;
    left - overage
}

/// Adds credits to a grant's entry in `draws`, or a new entry: a charge taking back a grant's credit may
/// draw more of it in burn order.
fn add_draw<const N: usize>(draws: &mut SmallVec<[(u32, Picos); N]>, g: u32, credits: Picos)
where
    [(u32, Picos); N]: smallvec::Array<Item = (u32, Picos)>,
{
    match draws.iter_mut().find(|(i, _)| *i == g) {
        Some(entry) => entry.1 += credits,
        None => draws.push((g, credits)),
    }
}

/// A refund: the overage the bucket caused first, then its credits in reverse burn order (of the grants
/// the bucket drew on: no other grant has anything to give back).
fn give_back<B: Balances + ?Sized>(grants: &[Grant], remaining: &mut B, charge: &Charge) -> Outcome {
    let refund = -charge.charge;
    let overage_back = refund.min(charge.overage);
    let mut left = refund - overage_back;
    let mut draws = SmallVec::new();
    let mut drawn_on: SmallVec<[u32; 4]> = charge.drawn_by_grant.iter().map(|&(g, _)| g).collect();
    drawn_on.sort_unstable_by_key(|&g| std::cmp::Reverse(burn_rank(grants, g)));
    drawn_on.dedup();
    for g in drawn_on {
        if left == 0 {
            break;
        }
        let drew: Picos = charge.drawn_by_grant.iter().filter(|(i, _)| *i == g).map(|(_, c)| c).sum();
        let give = left.min(drew);
        if give > 0 {
            remaining.set(g, remaining.get(g) + give);
            draws.push((g, -give));
            left -= give;
        }
    }
    assert_eq!(left, 0, "a refund never exceeds what its bucket was charged");
    Outcome { draws, overage: -overage_back }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smallvec::smallvec;

    fn grant(id: &str, amount: Picos, priority: i64, applicable: Vec<Sym>, expires: Option<i64>, order: i64) -> Grant {
        Grant {
            id: id.into(),
            amount,
            remaining: amount,
            priority,
            applicable,
            starts_at_ms: 0,
            expires_at_ms: expires,
            creation_order: order,
            usable_before_ms: NEVER_MS,
            expiring_at_rollover_rolls: false,
        }
    }

    fn charge(product: Sym, id: &str, amount: Picos) -> Charge<'_> {
        Charge { product, product_id: id, charge: amount, drawn_by_grant: &[], overage: 0 }
    }

    #[test]
    fn burn_order_is_priority_expiry_narrowness_creation() {
        let grants = vec![
            grant("late", 1, 1, vec![], None, 0),
            grant("soon", 1, 1, vec![], Some(100), 1),
            grant("narrow", 1, 1, vec![7], Some(100), 2),
            grant("first", 1, 0, vec![], None, 3),
            grant("twin", 1, 1, vec![], None, 4),
        ];
        assert_eq!(burn_order(&grants).as_slice(), [3, 2, 1, 0, 4]);
    }

    #[test]
    fn refunds_settle_before_charges_whichever_product_sorts_first() {
        // One unrestricted grant of 100, fully drawn by the refunding product; then it gives back
        // 49 and the other product charges 40 in one event: 9 credits left and no overage.
        let grants = vec![grant("g", 100, 0, vec![], None, 0)];
        let order = burn_order(&grants);
        let drew = [(0u32, 100)];
        for (charging, refunding, netted) in [("a", "b", false), ("b", "a", false), ("a", "b", true), ("b", "a", true)]
        {
            let charge = Charge { product: 1, product_id: charging, charge: 40, drawn_by_grant: &[], overage: 0 };
            let refund = Charge { product: 2, product_id: refunding, charge: -49, drawn_by_grant: &drew, overage: 0 };
            let charges = if charging < refunding { [charge, refund] } else { [refund, charge] };
            let mut remaining = vec![0];
            let outcomes = settle(&grants, &order, &mut remaining, &charges, 1, netted);
            assert_eq!(remaining, vec![9]);
            assert!(outcomes.iter().all(|o| o.overage == 0));
        }
    }

    /// Total overage and balances after settling `charges` (netted or not) from `remaining`.
    fn settled(grants: &[Grant], remaining: &[Picos], charges: &[Charge], netted: bool) -> (Picos, Vec<Picos>) {
        let mut balances = remaining.to_vec();
        let outcomes = settle(grants, &burn_order(grants), &mut balances, charges, 1, netted);
        (outcomes.iter().map(|o| o.overage).sum(), balances)
    }

    #[test]
    fn a_refund_of_overage_beside_a_charge_of_as_much_touches_nothing_netted() {
        // A LATEST line of 5, all overage, falls to 2 (-3) while the event's SUM product costs 3; 10 credits.
        let grants = vec![grant("g", 10, 0, vec![], None, 0)];
        let latest = Charge { product: 1, product_id: "latest", charge: -3, drawn_by_grant: &[], overage: 5 };
        let sum = charge(2, "sum", 3);
        let charges = [latest, sum];
        assert_eq!(settled(&grants, &[10], &charges, true), (0, vec![10])); // overage stays 5, the grant 10
        assert_eq!(settled(&grants, &[10], &charges, false), (-3, vec![7])); // as batches journaled before
    }

    #[test]
    fn credit_given_back_to_a_grant_of_another_product_does_not_pay_a_charge() {
        // A grant of 200 for pB only, 100 drawn by pB; pB gives back 49.5 while pA charges 40: pA's 40 is overage.
        let grants = vec![grant("b-only", 200, 0, vec![2], None, 0)];
        let drew = [(0u32, 100)];
        let refund = Charge { product: 2, product_id: "pB", charge: -49, drawn_by_grant: &drew, overage: 0 };
        let charges = [charge(1, "pA", 40), refund];
        for netted in [false, true] {
            assert_eq!(settled(&grants, &[100], &charges, netted), (40, vec![149]));
        }
    }

    #[test]
    fn a_charge_takes_back_credit_given_back_before_overage_given_back() {
        // The refunding line caused 5 of overage and drew 7 from g; it gives back 12 while another product costs 5.
        // Netted, the event is a refund of 7: the 5 of overage first, then 2 credits. Its charge takes back 5
        // credits, leaving the overage given back; taking the overage back first would leave 7 credits given back
        // and the 5 of overage billed.
        let grants = vec![grant("g", 10, 0, vec![], None, 0), grant("h", 10, 1, vec![], None, 1)];
        let drew = [(0u32, 7)];
        let refund = Charge { product: 1, product_id: "a", charge: -12, drawn_by_grant: &drew, overage: 5 };
        let charges = [refund, charge(2, "b", 5)];
        assert_eq!(settled(&grants, &[3, 10], &charges, true), (-5, vec![5, 10]));
        assert_eq!(settled(&grants, &[3, 10], &charges, false), (-5, vec![5, 10]));
        // Costing 12, it touches nothing; costing 20, it draws 8 more in burn order.
        let charges = [Charge { charge: -12, ..charges[0] }, charge(2, "b", 12)];
        assert_eq!(settled(&grants, &[3, 10], &charges, true), (0, vec![3, 10]));
        let charges = [Charge { charge: -12, ..charges[0] }, charge(2, "b", 20)];
        assert_eq!(settled(&grants, &[3, 10], &charges, true), (0, vec![0, 5]));
    }

    #[test]
    fn what_no_grant_covers_is_overage() {
        let grants = vec![grant("b-only", 200, 0, vec![2], None, 0)];
        let mut remaining = vec![200];
        let outcomes = settle(&grants, &burn_order(&grants), &mut remaining, &[charge(1, "a", 40)], 1, true);
        assert_eq!(outcomes[0], Outcome { draws: smallvec![], overage: 40 });
        assert_eq!(remaining, vec![200]);
    }

    #[test]
    fn expired_and_unstarted_grants_are_skipped() {
        let mut later = grant("later", 10, 0, vec![], None, 0);
        later.starts_at_ms = 50;
        let grants = vec![later, grant("gone", 10, 0, vec![], Some(5), 1), grant("ok", 10, 1, vec![], None, 2)];
        let mut remaining = vec![10, 10, 10];
        let outcomes = settle(&grants, &burn_order(&grants), &mut remaining, &[charge(1, "a", 15)], 10, true);
        assert_eq!(outcomes[0], Outcome { draws: smallvec![(2, 10)], overage: 5 });
    }

    /// Grants of which most have nothing left (exhausted top-ups pile up so), with priorities, expiries, starts and
    /// applicability that interleave them in burn order.
    #[test]
    fn an_event_drawing_on_many_grants_changes_them_as_a_copy_of_every_balance_does() {
        // 40 grants of 1 credit (past CHANGES_WALKED_MAX, so the overlay indexes its changes): 35 drawn, then a
        // refund of 12 and a charge of 20 in one event.
        let grants: Vec<Grant> = (0..40).map(|i| grant("g", 1, i % 3, vec![], None, i)).collect();
        let order = burn_order(&grants);
        let mut all = vec![1; 40];
        let first = settle(&grants, &order, &mut all, &[charge(1, "a", 35)], 1, false);
        let mut changed = Changed::new();
        let mut changes = Changes::new(&grants, &mut changed);
        let mut outcomes = Outcomes::new();
        settle_into(&grants, &order, &mut changes, &[charge(1, "a", 35)], 1, false, &mut outcomes);
        assert_eq!((outcomes.clone(), changes.changed.len()), (first.clone(), 35));
        let after: Vec<Grant> = grants.iter().zip(&all).map(|(g, r)| Grant { remaining: *r, ..g.clone() }).collect();
        let payable: Vec<u32> = order.iter().copied().filter(|&g| all[g as usize] > 0).collect();
        let drew = first[0].draws.to_vec();
        let refund = Charge { product: 1, product_id: "a", charge: -12, drawn_by_grant: &drew, overage: 0 };
        let both = [refund, charge(2, "b", 20)];
        let expected = settle(&after, &order, &mut all, &both, 1, false);
        let mut changes = Changes::new(&after, &mut changed);
        settle_into(&after, &payable, &mut changes, &both, 1, false, &mut outcomes);
        assert_eq!(outcomes, expected);
        let mut overlaid: Vec<Picos> = after.iter().map(|g| g.remaining).collect();
        for &(g, balance) in &changed {
            overlaid[g as usize] = balance;
        }
        assert_eq!(overlaid, all);
        assert_eq!(expected[1].overage, 3); // 5 never drawn + 12 given back pay 17 of the 20
    }

    /// (amount, priority, expiry, start, applicable products, exhausted).
    type GrantSpec = (Picos, i64, Option<i64>, i64, Vec<Sym>, bool);

    fn many_grants() -> impl Strategy<Value = Vec<GrantSpec>> {
        let grant = (
            1i128..50,
            0i64..3,
            proptest::option::of(5i64..40),
            0i64..20,
            proptest::collection::vec(1u32..4, 0..2),
            proptest::bool::weighted(0.8),
        );
        proptest::collection::vec(grant, 1..120)
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        /// Settling over the payable grants only (those with credit, in burn order) draws, gives back and leaves
        /// exactly what settling over every grant does, refunds to exhausted grants within the same event included.
        #[test]
        fn settling_over_the_payable_grants_is_settling_over_all(
            specs in many_grants(),
            events in proptest::collection::vec((proptest::collection::vec((1u32..4, -60i128..60), 1..4), 0i64..45), 1..30),
            netted in proptest::bool::ANY,
        ) {
            let grants: Vec<Grant> = specs.iter().enumerate().map(|(i, (amount, priority, expires, starts, applicable, _))| {
                let mut g = grant("g", *amount, *priority, applicable.clone(), *expires, (i as i64 * 7) % 11);
                g.starts_at_ms = *starts;
                g
            }).collect();
            // Most grants start exhausted: drawn by a product that never refunds here.
            let mut all: Vec<Picos> = specs.iter().map(|s| if s.5 { 0 } else { s.0 }).collect();
            let mut some = all.clone();
            let order = burn_order(&grants);
            let mut drawn: std::collections::BTreeMap<u32, Vec<(u32, Picos)>> = Default::default();
            let mut overage: std::collections::BTreeMap<u32, Picos> = Default::default();
            for (parts, ts_ms) in events {
                let mut parts: Vec<(u32, Picos)> = parts;
                parts.sort_by_key(|p| p.0);
                parts.dedup_by_key(|p| p.0);
                let ids: Vec<String> = parts.iter().map(|p| p.0.to_string()).collect();
                let charges: Vec<Charge> = parts.iter().zip(&ids).map(|(&(product, amount), id)| {
                    let by_grant = drawn.get(&product).map_or(&[][..], |d| &d[..]);
                    let charged: Picos = overage.get(&product).copied().unwrap_or(0) + by_grant.iter().map(|d| d.1).sum::<Picos>();
                    Charge { product, product_id: id, charge: amount.max(-charged), drawn_by_grant: by_grant, overage: overage.get(&product).copied().unwrap_or(0) }
                }).collect();
                let expected = settle(&grants, &order, &mut all, &charges, ts_ms, netted);
                let payable: Vec<u32> = order.iter().copied().filter(|&g| some[g as usize] > 0).collect();
                // The overlay reads balances from the grants, as the kernel's accounts hold them.
                let grants_now: Vec<Grant> =
                    grants.iter().zip(&some).map(|(g, r)| Grant { remaining: *r, ..g.clone() }).collect();
                let mut changed = Changed::new();
                let mut changes = Changes::new(&grants_now, &mut changed);
                let mut outcomes = Outcomes::new();
                settle_into(&grants_now, &payable, &mut changes, &charges, ts_ms, netted, &mut outcomes);
                prop_assert_eq!(&outcomes, &expected);
                for &(g, balance) in &changed {
                    some[g as usize] = balance;
                }
                prop_assert_eq!(&some, &all);
                for ((product, _), outcome) in parts.iter().zip(&expected) {
                    let entry = drawn.entry(*product).or_default();
                    for &(g, c) in &outcome.draws {
                        match entry.iter_mut().find(|d| d.0 == g) {
                            Some(d) => d.1 += c,
                            None => entry.push((g, c)),
                        }
                    }
                    entry.retain(|d| d.1 != 0);
                    *overage.entry(*product).or_default() += outcome.overage;
                }
            }
        }

        /// With grants usable for every product, an event of one refunding line and some charges settles, netted,
        /// as its net amount does: a net refund from that line (overage first, then credits in reverse burn order),
        /// a net charge in burn order.
        #[test]
        fn netted_an_event_settles_as_its_net_amount(
            amounts in proptest::collection::vec(1i128..50, 1..5),
            drawn in proptest::collection::vec(0i128..50, 1..5),
            overage in 0i128..30,
            refund in 1i128..100,
            costs in proptest::collection::vec(1i128..40, 0..3),
        ) {
            let grants: Vec<Grant> =
                amounts.iter().enumerate().map(|(i, a)| grant("g", *a, i as i64 % 2, vec![], None, i as i64)).collect();
            let drawn_by_grant: Vec<(u32, Picos)> =
                drawn.iter().zip(&amounts).enumerate().map(|(g, (d, a))| (g as u32, (*d).min(*a))).collect();
            let remaining: Vec<Picos> = amounts.iter().zip(&drawn_by_grant).map(|(a, d)| a - d.1).chain(amounts.iter().skip(drawn_by_grant.len()).copied()).collect();
            let charged = overage + drawn_by_grant.iter().map(|d| d.1).sum::<Picos>();
            let refund = refund.min(charged);
            prop_assume!(refund > 0);
            let line = Charge { product: 0, product_id: "a", charge: -refund, drawn_by_grant: &drawn_by_grant, overage };
            let ids = ["b", "c", "d"];
            let mut charges = vec![Charge { ..line }];
            charges.extend(costs.iter().zip(ids).enumerate().map(|(i, (c, id))| charge(i as u32 + 1, id, *c)));
            let net = costs.iter().sum::<Picos>() - refund;
            let alone = [Charge { charge: net, ..line }];
            let as_net = if net == 0 { (0, remaining.clone()) } else { settled(&grants, &remaining, &alone, true) };
            prop_assert_eq!(settled(&grants, &remaining, &charges, true), as_net);
        }

        #[test]
        fn credits_are_conserved(amounts in proptest::collection::vec(1i128..1_000, 1..5), charges in proptest::collection::vec(-500i128..1_000, 1..8)) {
            let grants: Vec<Grant> = amounts.iter().enumerate().map(|(i, a)| grant("g", *a, i as i64 % 2, vec![], None, i as i64)).collect();
            let order = burn_order(&grants);
            let mut remaining: Vec<Picos> = amounts.clone();
            let mut drawn_by_grant: Vec<(u32, Picos)> = Vec::new();
            let mut overage = 0;
            for amount in charges {
                // A refund never exceeds what was charged.
                let total: Picos = overage + drawn_by_grant.iter().map(|(_, c)| c).sum::<Picos>();
                let amount = amount.max(-total);
                let outcome = settle(&grants, &order, &mut remaining, &[Charge { product: 1, product_id: "p", charge: amount, drawn_by_grant: &drawn_by_grant, overage }], 1, true).remove(0);
                prop_assert_eq!(outcome.draws.iter().map(|(_, c)| c).sum::<Picos>() + outcome.overage, amount);
                drawn_by_grant.extend(outcome.draws);
                overage += outcome.overage;
                prop_assert!(overage >= 0);
                for (g, balance) in remaining.iter().enumerate() {
                    let drew: Picos = drawn_by_grant.iter().filter(|(i, _)| *i as usize == g).map(|(_, c)| c).sum();
                    prop_assert_eq!(amounts[g], balance + drew);
                    prop_assert!(*balance >= 0);
                }
            }
        }
    }
}
