//! Settling a re-rated customer's open periods again, in time order (`resettle`): what they drew given back,
//! then each hour bucket's amount drawn as ingestion settles events arriving on time, with open holds taken
//! again at their place in time and top-ups withheld until the charges reach the point they were bought at.
//! Apart from pricing again (reprice.rs) because it moves credit, not prices, and its journaled flags
//! (`InTime`) are its own.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::account::Account;
use crate::buckets::{HourKey, PeriodKey, HOUR_MS};
use crate::draw::{settle_into, Charge, Outcomes};
use crate::money::Picos;
use crate::reprice::PeriodCache;

/// Settles the account's open periods from `first_period` on again, in time order: everything
/// they drew is given back, then each hour bucket's amount draws in burn order (a negative one
/// gives back its aggregate's overage first, then credits in reverse burn order), bucket by bucket
/// in hour order, an hour's refunds before its charges, then by product id and dimension values,
/// as ingestion settles events arriving on time.
/// Earlier periods keep their draws, so the result is what rating on time would have drawn, hour by
/// hour: a bucket is not an event, so when an hour's events drew in another order (one product
/// using up a grant before another product's later event, a refund after charges), which grant
/// pays which aggregate may move, and with it the overage, also for aggregates whose charges did
/// not change. So `rerate_customer` (under `rerate_keeps_unchanged_draws`, the server's publishes)
/// calls it only for a customer with at least one bucket whose amount changed: a customer whose
/// buckets only changed version keeps its draws exactly as rated. Publishes journaled before it
/// settle every re-rated customer again, as then.
///
/// With `in_time.holds`, open holds take their place in that walk too: their credit is given back
/// first, and each is taken again (`retake_hold`) before the buckets of the hour it was made in and
/// of every later hour, holds of one hour in the order made (then by reservation id). So usage dated
/// before a hold's hour draws first and the hold keeps at most what is left; usage of its hour and
/// later finds it held, as when it arrived. Without it, open holds keep what they hold and the walk
/// draws from what they leave (publishes journaled before).
///
/// With `in_time.top_ups`, a top-up pays only its period's charges beyond those at which it was bought
/// (`Purchase::period_charges_when_bought`, P: the period's net charges once the draw or hold that
/// bought it was done): rated on time, the purchase follows the draw. The walk keeps the period's
/// net charges settled so far (R, what `period.charges` holds as it is rebuilt) and withholds the
/// period's top-ups from the draws, releasing them in the order bought: the next one once R
/// reaches its P (a bucket's charge c is split at P - R, the first part settled without it, the
/// rest with it). Refunds lower R (a negative charge, or what an aggregate could only give back at
/// a later bucket, `carried`, once given back) and are never split: a withheld top-up was not drawn
/// in the walk, so nothing is given back to it. A released top-up stays usable even if a refund
/// takes R below its P again: rated on time, it was bought then and is still there. The order
/// bought matters when refunds lower the charges between two purchases (the second bought at a
/// lower P than the first). With the same prices and usage that arrived in time order this draws
/// what rating on time drew, within an hour too, unless the net charges came back to a purchase's
/// P between the purchase before it and it (a refund of overage while credits stayed drawn). A
/// price rise reaches P sooner, a cut later or never (the top-up then pays nothing of its period's
/// charges; it stays bought and pays later periods'). A top-up with no recorded P (bought by an
/// earlier release, restored from an older snapshot) is usable from its period's start. Holds are
/// taken again from what the grants have, a withheld top-up's credit included. Without it
/// (publishes journaled before) every top-up is usable from its period's start.
pub(crate) fn resettle(rater: &crate::kernel::Rater, account: &mut Account, first_period: i64, in_time: InTime) {
    let mut holds = if in_time.holds { give_back_open_holds(account) } else { Vec::new() };
    let route = account.route.take().expect("re-rated, so routed");
    let open = |start: i64| start >= first_period && !route.is_closed(start);
    let mut withheld = if in_time.top_ups { withheld_top_ups(account, open) } else { Vec::new() };
    for (key, aggregate) in account.aggregates.iter_mut().filter(|(k, _)| open(k.period_start_ms)) {
        for &(grant, credits) in &aggregate.drawn_by_grant {
            account.grants[grant as usize].remaining += credits;
        }
        let period = account.periods.slot(key.period_start_ms);
        period.charges -= aggregate.amount;
        period.overage -= aggregate.overage;
        (aggregate.amount, aggregate.overage) = (0, 0);
        aggregate.drawn_by_grant.clear();
    }
    let mut periods = PeriodCache::default();
    let mut walk: Vec<(HourKey, PeriodKey, Picos)> = (account.buckets.iter())
        .filter_map(|(key, usages)| {
            let ts = key.hour * HOUR_MS;
            let contract = route.contracts.iter().find(|c| c.covers(ts))?;
            let (start, _) = periods.containing(contract.starting_at_ms, ts);
            let amount = usages.iter().map(|u| u.amount).sum();
            open(start).then_some((
                *key,
                PeriodKey { period_start_ms: start, product: key.product, combo: key.combo },
                amount,
            ))
        })
        .collect();
    let (interner, combos) = (&rater.interner, &rater.combos);
    walk.sort_unstable_by(|a, b| {
        let key =
            |w: &(HourKey, PeriodKey, Picos)| (w.0.hour, w.2 >= 0, interner.text(w.0.product), combos.tuple(w.0.combo));
        key(a).cmp(&key(b))
    });
    // What a bucket could not give back yet (a refund recorded before the charges it undoes, when
    // events arrived late), carried to the aggregate's next bucket.
    let mut carried: FxHashMap<PeriodKey, Picos> = FxHashMap::default();
    let mut outcomes = Outcomes::new();
    for (hour, key, amount) in walk {
        retake_holds_by(account, &mut holds, hour.hour, in_time.final_grants);
        let aggregate = account.aggregates.entry(key).or_default();
        let owed = amount + carried.remove(&key).unwrap_or(0);
        let charge = owed.max(-aggregate.amount);
        if owed != charge {
            carried.insert(key, owed - charge);
        }
        settle_bucket(interner, account, (hour.hour, key), charge, &mut withheld, &mut outcomes);
    }
    assert!(carried.values().all(|c| *c == 0), "an aggregate never gives back more than it was charged");
    retake_holds_by(account, &mut holds, i64::MAX, in_time.final_grants);
    account.route = Some(route);
    account.index_payable(); // credit moved between grants, some given back to grants that had none
}

/// Which parts of a re-settlement take their place in time (`resettle`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct InTime {
    pub(crate) holds: bool,
    pub(crate) top_ups: bool,
    /// Some(the publish's time, or the latest AdvanceClock's if later): a hold is taken again from a grant
    /// whose breakage is final (rolled over, or expired by then) and from a grant not usable when it was made (the ROLLOVER grant
    /// its share moved to) only up to what it held there (`retake_hold`).
    pub(crate) final_grants: Option<i64>,
}

/// A top-up withheld from its period's re-settled charges until they reach `point` (`resettle`).
struct Withheld {
    period_start_ms: i64,
    point: Picos,
    grant: u32,
}

/// The top-ups with a recorded point bought in periods the walk settles again from their start,
/// in the order bought.
fn withheld_top_ups(account: &Account, walked: impl Fn(i64) -> bool) -> Vec<Withheld> {
    let Some(credits) = account.credits.as_deref() else { return Vec::new() };
    (credits.purchases.iter())
        .filter(|p| walked(p.period_start_ms))
        .filter_map(|p| {
            let point = p.period_charges_when_bought?;
            let grant = account.grants.iter().position(|g| *g.id == *p.grant_id)?;
            Some(Withheld { period_start_ms: p.period_start_ms, point, grant: grant as u32 })
        })
        .collect()
}

/// Settles a bucket's charge, split at the next withheld top-up's point of its period: each part
/// is settled with the top-ups reached by then (`resettle`).
fn settle_bucket(
    interner: &crate::route::Interner,
    account: &mut Account,
    (hour, key): (i64, PeriodKey),
    charge: Picos,
    withheld: &mut Vec<Withheld>,
    outcomes: &mut Outcomes,
) {
    let (period, mut left) = (key.period_start_ms, charge);
    loop {
        let so_far = account.periods.get(period).map_or(0, |t| t.charges);
        // Those of periods the walk has left are usable from now on; this period's are reached in the
        // order bought, each once (after the one before) the period's net charges reach its point.
        withheld.retain(|w| w.period_start_ms >= period);
        while let Some(at) = withheld.iter().position(|w| w.period_start_ms == period) {
            if withheld[at].point > so_far {
                break;
            }
            withheld.remove(at);
        }
        let to_next = withheld.iter().find(|w| w.period_start_ms == period).map(|w| w.point - so_far);
        let part = match to_next {
            Some(to_next) if left > to_next => to_next,
            _ => left,
        };
        settle_part(interner, account, (hour, key), part, withheld, outcomes);
        left -= part;
        if left == 0 {
            break;
        }
    }
}

/// Settles `charge` of the aggregate `key` at the hour's start against the grants but the top-ups
/// withheld in its period, recording the draws and overage on the aggregate and its period.
fn settle_part(
    interner: &crate::route::Interner,
    account: &mut Account,
    (hour, key): (i64, PeriodKey),
    charge: Picos,
    withheld: &[Withheld],
    outcomes: &mut Outcomes,
) {
    let aggregate = account.aggregates.entry(key).or_default();
    let mut remaining: SmallVec<[Picos; 4]> = account.grants.iter().map(|g| g.remaining).collect();
    let mut kept: SmallVec<[(u32, Picos); 2]> = SmallVec::new();
    for w in withheld.iter().filter(|w| w.period_start_ms == key.period_start_ms) {
        kept.push((w.grant, std::mem::take(&mut remaining[w.grant as usize])));
    }
    let settled = Charge {
        product: key.product,
        product_id: interner.text(key.product),
        charge,
        drawn_by_grant: &aggregate.drawn_by_grant,
        overage: aggregate.overage,
    };
    // One charge alone: nothing of the event to net it with (`netted` changes nothing).
    settle_into(&account.grants, &account.order, &mut remaining[..], &[settled], hour * HOUR_MS, false, outcomes);
    for (grant, balance) in kept {
        remaining[grant as usize] += balance;
    }
    for (grant, balance) in account.grants.iter_mut().zip(remaining) {
        grant.remaining = balance;
    }
    let outcome = &outcomes[0];
    aggregate.amount += charge;
    for &(grant, credits) in &outcome.draws {
        match aggregate.drawn_by_grant.iter_mut().find(|(g, _)| *g == grant) {
            Some(drawn) => drawn.1 += credits,
            None => aggregate.drawn_by_grant.push((grant, credits)),
        }
    }
    aggregate.drawn_by_grant.retain(|(_, credits)| *credits != 0);
    aggregate.overage += outcome.overage;
    let period = account.periods.slot(key.period_start_ms);
    period.charges += charge;
    period.overage += outcome.overage;
    assert!(aggregate.overage >= 0 && period.overage >= 0, "overage never falls below zero");
}

/// An open hold given back for `resettle`: (hour it was made in, when made, reservation id).
type HoldPlace = (i64, i64, Box<str>);

/// Gives every open hold's credit back to its grants (the reservations keep their entries until
/// taken again); returns their places in time, latest last.
fn give_back_open_holds(account: &mut Account) -> Vec<HoldPlace> {
    let Some(credits) = account.credits.as_deref() else { return Vec::new() };
    let mut holds: Vec<HoldPlace> = Vec::with_capacity(credits.open.len());
    for (id, reservation) in &credits.open {
        for &(grant, held) in &reservation.held {
            account.grants[grant as usize].remaining += held;
        }
        holds.push((reservation.made_at_ms.div_euclid(HOUR_MS), reservation.made_at_ms, id.clone()));
    }
    holds.sort_unstable();
    holds
}

/// Takes again, in their order, the holds of `holds` made in an hour up to `hour` (removing them).
fn retake_holds_by(account: &mut Account, holds: &mut Vec<HoldPlace>, hour: i64, final_grants: Option<i64>) {
    let due = holds.partition_point(|place| place.0 <= hour);
    for (_, _, id) in holds.drain(..due) {
        retake_hold(account, &id, final_grants);
    }
}

/// Takes an open hold again from the grants' remaining: in burn order, up to what it held (a hold
/// never grows), from the grants usable when it was made that it held on or that apply to every
/// product (it never moves to a grant that may not apply to its usage); what they no longer have
/// it holds no more. Entries by grant index, as a hold's are made.
///
/// With `final_grants` (Some(at_ms): the publish's time, or the latest AdvanceClock's if later, as of
/// which the re-rating settles), breakage stays final: a grant that has rolled over, or expired by
/// `at_ms`, gives the hold back only what it held there (a rolled grant nothing: its rollover moved the
/// hold), never credit settling again gave back to it (that breaks, or has rolled); and the ROLLOVER
/// grant the hold's share moved to, though not usable when the hold was made, gives back up to that
/// share. Without it (publishes journaled before) the hold could land on the rolled or expired grant,
/// taking credit that was to break, or lose its rolled share.
fn retake_hold(account: &mut Account, reservation_id: &str, final_grants: Option<i64>) {
    let final_by: SmallVec<[bool; 4]> = (account.grants.iter())
        .map(|g| {
            final_grants
                .is_some_and(|at_ms| g.expired_at(at_ms) || crate::credits::rolled_over_at(account, &g.id).is_some())
        })
        .collect();
    let credits = account.credits.as_deref_mut().expect("an open hold, so credits");
    let reservation = credits.open.get_mut(reservation_id).expect("given back, so open");
    let mut left = reservation.held_total();
    let mut held: Vec<(u32, Picos)> = Vec::with_capacity(reservation.held.len());
    for &g in &account.order {
        let grant = &mut account.grants[g as usize];
        let held_before = reservation.held.iter().find(|(h, _)| *h == g).map(|(_, credits)| *credits);
        if left == 0 || grant.remaining <= 0 {
            continue;
        }
        let most = if !final_by[g as usize] && grant.usable_at(reservation.made_at_ms) {
            if held_before.is_some() || grant.applicable.is_empty() {
                left
            } else {
                0
            }
        } else if final_grants.is_some() {
            held_before.unwrap_or(0).min(left)
        } else {
            0
        };
        if most > 0 {
            let take = most.min(grant.remaining);
            grant.remaining -= take;
            left -= take;
            held.push((g, take));
        }
    }
    held.sort_unstable();
    reservation.held = held;
}
