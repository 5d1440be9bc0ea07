//! The hours a re-rating cannot price again exactly, refused rather than approximated: an hour bucket
//! holding, off the hour, a period boundary (`refuse_split_hours`) or the start or end of a matching price
//! override (`refuse_override_split_hours`). A bucket is keyed by hour, so it cannot tell which of its units
//! fell on which side. Apart from the walk (reprice.rs) because these are checks made before it, changing nothing.

use smallvec::SmallVec;

use crate::account::Account;
use crate::buckets::{HourKey, HOUR_MS};
use crate::kernel::Kernel;
use crate::route::{chosen_override, period_containing, Route, Sym};

impl Kernel {
    /// Err naming the customer, the product and the hour when pricing again the account's usage of
    /// `card` in the hours [from, until) cannot be exact because an hour bucket holds a period
    /// boundary off the hour (a contract's start or end, a period's end: `split_boundary`) with an
    /// open period on one side: the bucket does not know which period each of its units is of, yet
    /// a re-rating assigns it whole to the period its hour starts in (or to none, before a contract's
    /// start). Refused are such a bucket in the hours re-rated, and one before them holding the start
    /// of an open period whose re-rated buckets are walked over its cumulative quantity. Changes nothing.
    pub(crate) fn refuse_split_hours(
        &self,
        customer_id: &str,
        account: &Account,
        card: Sym,
        (from, until): (i64, i64),
    ) -> Result<(), String> {
        let Some(route) = account.route.as_ref() else { return Ok(()) };
        // Periods are whole months from the contract's start, at its time of day: with every contract
        // starting and ending on the hour, no boundary is off the hour (most customers: no bucket looked at).
        let on_the_hour = |at: Option<i64>| at.is_none_or(|at| at.rem_euclid(HOUR_MS) == 0);
        if route.contracts.iter().all(|c| on_the_hour(Some(c.starting_at_ms)) && on_the_hour(c.ending_before_ms)) {
            return Ok(());
        }
        let split = (account.buckets.iter())
            .filter(|(_, usages)| usages.iter().any(|u| u.rate_card == card))
            .filter_map(|(key, _)| Some((key, split_boundary(route, key.hour)?)))
            .filter(|(key, boundary)| {
                (from..until).contains(&key.hour) || walked_after(account, route, key, *boundary, (from, until))
            });
        let Some((key, boundary)) = self.first_in_order(split) else { return Ok(()) };
        let interner = &self.rater.interner;
        Err(format!(
            "customer {customer_id:?}: product {:?}: the hour from {} holds a period boundary off the hour ({}) and \
             its usage is in one hour bucket, which does not know which period each unit is of, so it cannot be \
             priced again exactly",
            interner.text(key.product),
            crate::route::utc_text(key.hour * HOUR_MS),
            crate::route::utc_text(boundary),
        ))
    }

    /// The first of `found` in (hour, product, dimension values) order: the bucket a refusal names,
    /// whatever order the account's map holds its buckets in.
    fn first_in_order<'k, T>(&self, found: impl Iterator<Item = (&'k HourKey, T)>) -> Option<(&'k HourKey, T)> {
        let (interner, combos) = (&self.rater.interner, &self.rater.combos);
        let order = |k: &HourKey| (k.hour, interner.text(k.product), combos.tuple(k.combo));
        found.min_by(|a, b| order(a.0).cmp(&order(b.0)))
    }

    /// Err naming the customer, the product and the hour when pricing again the account's usage of
    /// `card` in the hours [from, until) cannot be exact because an hour bucket to be priced again
    /// holds an override's start or end off the hour (`starting_at`, `ending_before`) where the
    /// override chosen for the bucket's usage (`chosen_override`) changes: rated on time, the units
    /// before that instant and those after it were priced by different overrides (or one and none),
    /// but the bucket does not know which are which, and priced again at its hour's start it would
    /// take one choice for all of them. Hours before `from` are only walked for their quantity, so they are not looked at,
    /// and neither are buckets of closed periods (the period holding the hour's start, as `select_aggregates` reads
    /// it), which a re-rating leaves alone. Changes nothing.
    pub(crate) fn refuse_override_split_hours(
        &self,
        customer_id: &str,
        account: &Account,
        card: Sym,
        (from, until): (i64, i64),
    ) -> Result<(), String> {
        let Some(route) = account.route.as_ref() else { return Ok(()) };
        let overrides = || route.contracts.iter().flat_map(|c| c.overrides.iter());
        if !overrides().any(|o| off_the_hour(o.starting_at_ms) || o.ending_before_ms.is_some_and(off_the_hour)) {
            return Ok(()); // most customers: no bucket looked at
        }
        let interner = &self.rater.interner;
        let split = (account.buckets.iter())
            .filter(|(key, usages)| (from..until).contains(&key.hour) && usages.iter().any(|u| u.rate_card == card))
            .filter(|(key, _)| open_at(route, key.hour * HOUR_MS))
            .filter_map(|(key, _)| Some((key, self.override_split(route, key)?)));
        let Some((key, boundary)) = self.first_in_order(split) else { return Ok(()) };
        Err(format!(
            "customer {customer_id:?}: product {:?}: the hour from {} holds the start or end of a price override \
             off the hour ({}) and its usage is in one hour bucket, which does not know which units were used \
             before it and which after, so it cannot be priced again exactly",
            interner.text(key.product),
            crate::route::utc_text(key.hour * HOUR_MS),
            crate::route::utc_text(boundary),
        ))
    }

    /// The earliest instant off the hour inside the bucket's hour where the matching override chosen
    /// for its usage changes (an override's start or end), if any: the units before it and those
    /// after were priced by different overrides (or one and none) when rated on time, and the bucket
    /// does not know which are which (`refuse_override_split_hours`).
    pub(crate) fn override_split(&self, route: &Route, key: &HourKey) -> Option<i64> {
        let inside = |at: i64, hour: i64| off_the_hour(at) && at.div_euclid(HOUR_MS) == hour;
        // The contract that prices the bucket (`walk`): the one in force at the hour's start. An
        // instant splits the bucket when the override chosen for its usage changes there.
        let contract = route.contracts.iter().find(|c| c.covers(key.hour * HOUR_MS))?;
        let dimensions: SmallVec<[Option<Sym>; 4]> =
            self.rater.combos.tuple(key.combo).iter().map(|s| Some(*s)).collect();
        let chosen = |at: i64| chosen_override(contract, key.product, &dimensions, at).map(std::ptr::from_ref);
        (contract.overrides.iter())
            .filter(|o| o.product == key.product)
            .flat_map(|o| [Some(o.starting_at_ms), o.ending_before_ms].into_iter().flatten())
            .filter(|at| inside(*at, key.hour) && chosen(*at - 1) != chosen(*at))
            .min()
    }
}

fn off_the_hour(at_ms: i64) -> bool {
    at_ms.rem_euclid(HOUR_MS) != 0
}

/// The first boundary strictly inside the hour (a contract's start or end, the end of the period
/// holding the hour's start) with an open period on one side of it, if any: the hour's bucket then
/// holds usage that a re-rating cannot assign to its periods exactly.
fn split_boundary(route: &Route, hour: i64) -> Option<i64> {
    let (start, end) = (hour * HOUR_MS, (hour + 1) * HOUR_MS);
    let inside = |at: &i64| start < *at && *at < end;
    let mut boundaries: SmallVec<[i64; 4]> = SmallVec::new();
    for contract in route.contracts.iter() {
        boundaries.extend([Some(contract.starting_at_ms), contract.ending_before_ms].into_iter().flatten());
        if contract.covers(start) {
            boundaries.push(period_containing(contract.starting_at_ms, start).1);
        }
    }
    boundaries.retain(|at| inside(at));
    boundaries.sort_unstable();
    boundaries.into_iter().find(|&boundary| open_at(route, start) || open_at(route, boundary))
}

/// Whether the instant is in an open period of a contract covering it.
fn open_at(route: &Route, at_ms: i64) -> bool {
    (route.contracts.iter().find(|c| c.covers(at_ms)))
        .is_some_and(|c| !route.is_closed(period_containing(c.starting_at_ms, at_ms).0))
}

/// Whether the bucket `key`, before the hours [from, until), holds usage of the open period that
/// `boundary` starts and that period has usage of the same product and dimension values in those
/// hours: re-rating walks that usage over a cumulative quantity the bucket's part is missing from.
fn walked_after(account: &Account, route: &Route, key: &HourKey, boundary: i64, (from, until): (i64, i64)) -> bool {
    let Some(contract) = route.contracts.iter().find(|c| c.covers(boundary)) else { return false };
    let (start, end) = period_containing(contract.starting_at_ms, boundary);
    if route.is_closed(start) {
        return false;
    }
    let mut later = (from.max(key.hour + 1)..until).take_while(|hour| hour * HOUR_MS < end);
    later.any(|hour| account.buckets.contains_key(&HourKey { hour, ..*key }))
}
