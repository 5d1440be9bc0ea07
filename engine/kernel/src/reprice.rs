//! Pricing a customer's recorded hour buckets again (`Kernel::reprice`): each open-period aggregate holding
//! the rate card's usage, its buckets walked in hour order over the cumulative quantity, each priced by the
//! version a `Pricing` names (the timeline as it is now, a simulated version, or a version about to be
//! published), exactly as ingestion prices an event. Changes nothing: the entry points (rerate.rs) write what
//! it found, or only report it.

use ethnum::I256;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::account::Account;
use crate::buckets::{HourKey, HourUsage, PeriodKey, PeriodTotal, HOUR_MS};
use crate::kernel::Kernel;
use crate::money::{Fixed, Picos};
use crate::price::PricedCurve;
use crate::rerate::{event_type_of, Rerated};
use crate::route::{curve_with_override, period_containing, Aggregation, Contract, Product, Rate, Route, Sym, Version};

/// Which version prices a walked bucket.
#[derive(Clone, Copy)]
pub(crate) enum Pricing<'a> {
    /// The version in force for the bucket's hour on the customer's timeline.
    Timeline,
    /// The timeline before `from_ms`, `version` for every bucket from it on (a simulation: the hours
    /// before its window are priced as a publish effective from the window's start leaves them, and
    /// every hour of the window by the simulated version).
    From { from_ms: i64, version: &'a Version },
    /// The timeline with `version` inserted effective at `at_ms` (after any entry effective then):
    /// a publish checked before it changes anything.
    Inserted { at_ms: i64, version: &'a Version },
}

/// A bucket priced again.
pub(crate) struct Repriced {
    pub(crate) key: HourKey,
    pub(crate) rate_card: Sym,
    pub(crate) version: u32,
    pub(crate) old_versions: SmallVec<[u32; 2]>,
    pub(crate) quantity: Fixed,
    pub(crate) events: u64,
    pub(crate) old_amount: Picos,
    pub(crate) new_amount: Picos,
    /// In the selected hours (the others are walked for their cumulative quantity only).
    pub(crate) selected: bool,
}

/// An aggregate's buckets priced again, in hour order.
pub(crate) struct AggregateRepriced {
    pub(crate) key: PeriodKey,
    pub(crate) buckets: Vec<Repriced>,
}

impl Kernel {
    /// Prices again every open-period aggregate of the account holding usage of `card` in the
    /// hours [from, until); returns them in a stable order (period, product, dimension values)
    /// with the usage left alone in closed periods. Changes nothing. `in_contract`: an aggregate's
    /// run of buckets ends at its contract's end as well as its period's (a switched contract's last
    /// period keeps its monthly end, and its run would otherwise take in the next contract's hours,
    /// pricing and recording them a second time); without it, at the period's end only.
    pub(crate) fn reprice(
        &self,
        account: &Account,
        card: Sym,
        (from, until): (i64, i64),
        pricing: Pricing,
        in_contract: bool,
    ) -> Result<(Vec<AggregateRepriced>, Rerated), String> {
        let Some(route) = account.route.as_ref() else { return Ok((Vec::new(), Rerated::default())) };
        // Every bucket by (product, dimension values, hour): an aggregate's buckets are then one run.
        let mut all: Vec<(&HourKey, &HourUsage)> = account.buckets.iter().collect();
        let combos = &self.rater.combos;
        all.sort_unstable_by(|a, b| {
            (a.0.product, combos.tuple(a.0.combo), a.0.hour).cmp(&(b.0.product, combos.tuple(b.0.combo), b.0.hour))
        });
        let (selected, closed) = self.select_aggregates(route, &all, card, (from, until), in_contract);
        let mut aggregates = Vec::with_capacity(selected.len());
        for (start, end, at) in selected {
            let first = all[at].0;
            // Back to the period's first bucket of this product and dimension values.
            let mut begin = at;
            while begin > 0 && {
                let k = all[begin - 1].0;
                k.product == first.product && k.combo == first.combo && k.hour * HOUR_MS >= start
            } {
                begin -= 1;
            }
            let run = all[begin..]
                .iter()
                .take_while(|(k, _)| k.product == first.product && k.combo == first.combo && k.hour * HOUR_MS < end);
            let key = PeriodKey { period_start_ms: start, product: first.product, combo: first.combo };
            // `first` is the aggregate's first bucket in the hours asked for: a refusal names its hour.
            let product = self.walkable_product(first.product, first.hour)?;
            let buckets = self.walk(account, key, product, run, (from, until), pricing)?;
            aggregates.push(AggregateRepriced { key, buckets });
        }
        self.period_totals_hold(account, &aggregates)?;
        aggregates.sort_by(|a, b| {
            (a.key.period_start_ms, a.key.product, combos.tuple(a.key.combo)).cmp(&(
                b.key.period_start_ms,
                b.key.product,
                combos.tuple(b.key.combo),
            ))
        });
        Ok((aggregates, closed))
    }

    /// Err when the re-priced amounts would overflow a period's totals: its charges move by the
    /// selected buckets' differences (with what earlier hours may carry into them), its overage by at
    /// most their rises. Each line's price fits (`walk`), but the lines of one period add up.
    fn period_totals_hold(&self, account: &Account, aggregates: &[AggregateRepriced]) -> Result<(), String> {
        let mut totals: Vec<(i64, PeriodTotal)> = Vec::new();
        for aggregate in aggregates {
            let start = aggregate.key.period_start_ms;
            let at = match totals.iter().position(|(s, _)| *s == start) {
                Some(at) => at,
                None => {
                    totals.push((start, account.periods.get(start).unwrap_or_default()));
                    totals.len() - 1
                }
            };
            let product = self.rater.interner.text(aggregate.key.product);
            let out_of_range = || format!("the charge for product {product:?} is out of range");
            // The hours before the first selected one move nothing themselves, but what they price at
            // more than they were charged may be carried into it (`earlier_hours_shortfall`).
            let mut carried: Picos = 0;
            for b in &aggregate.buckets {
                let change = b.new_amount.checked_sub(b.old_amount).ok_or_else(out_of_range)?;
                if !b.selected {
                    carried = carried.checked_add(change).ok_or_else(out_of_range)?;
                    continue;
                }
                let rise = change.checked_add(std::mem::take(&mut carried).max(0)).ok_or_else(out_of_range)?;
                totals[at].1 = totals[at].1.charged(rise).ok_or_else(out_of_range)?;
            }
        }
        Ok(())
    }

    /// Where each open-period aggregate holding usage of `card` in the hours [from, until) starts in
    /// `all` (sorted by product, dimension values and hour), with its period's start and end (its
    /// contract's end too, `in_contract`: see `reprice`); and the usage left alone in closed periods.
    fn select_aggregates(
        &self,
        route: &Route,
        all: &[(&HourKey, &HourUsage)],
        card: Sym,
        (from, until): (i64, i64),
        in_contract: bool,
    ) -> (Vec<(i64, i64, usize)>, Rerated) {
        let mut closed = Rerated::default();
        let mut selected: Vec<(i64, i64, usize)> = Vec::new(); // (period start, period end, index in `all`)
        let mut periods = PeriodCache::default();
        // Closed events per (hour, event type) and product, for `closed_events_once`.
        let mut closed_by_hour: FxHashMap<(i64, &str), FxHashMap<Sym, u64>> = FxHashMap::default();
        for (at, (key, usages)) in all.iter().enumerate() {
            if key.hour < from || key.hour >= until || !usages.iter().any(|u| u.rate_card == card) {
                continue;
            }
            let ts = key.hour * HOUR_MS;
            let Some(contract) = route.contracts.iter().find(|c| c.covers(ts)) else { continue };
            let (start, mut end) = periods.containing(contract.starting_at_ms, ts);
            if in_contract {
                end = end.min(contract.ending_before_ms.unwrap_or(i64::MAX));
            }
            if route.is_closed(start) {
                let events = usages.iter().map(|u| u.events).sum::<u64>();
                closed.closed_buckets += 1;
                closed.closed_events += events;
                closed.closed_amount += usages.iter().fold(I256::ZERO, |sum, u| sum + I256::new(u.amount));
                let event_type = event_type_of(&self.rater.catalog, key.product);
                *closed_by_hour.entry((key.hour, event_type)).or_default().entry(key.product).or_default() += events;
                continue;
            }
            let same = |&(s, _, i): &(i64, i64, usize)| {
                s == start && all[i].0.product == key.product && all[i].0.combo == key.combo
            };
            if !selected.last().is_some_and(same) {
                selected.push((start, end, at));
            }
        }
        closed.closed_events_once =
            closed_by_hour.values().map(|by_product| by_product.values().copied().max().unwrap_or(0)).sum();
        (selected, closed)
    }

    /// Prices an aggregate's buckets in hour order over the cumulative quantity.
    fn walk<'a>(
        &self,
        account: &Account,
        key: PeriodKey,
        product: &Product,
        run: impl Iterator<Item = &'a (&'a HourKey, &'a HourUsage)>,
        (from, until): (i64, i64),
        pricing: Pricing,
    ) -> Result<Vec<Repriced>, String> {
        let route = account.route.as_ref().expect("selected, so routed");
        let dimensions: SmallVec<[Option<Sym>; 4]> =
            self.rater.combos.tuple(key.combo).iter().map(|s| Some(*s)).collect();
        let (mut quantity, mut charged): (Fixed, Picos) = (0, 0);
        let mut out = Vec::new();
        for &(hour_key, usages) in run {
            let ts = hour_key.hour * HOUR_MS;
            let contract =
                route.contracts.iter().find(|c| c.covers(ts)).ok_or_else(|| {
                    format!("usage of product {:?} at {ts} has no contract covering it", product.id_text)
                })?;
            let version = self.pricing_version(pricing, contract, ts)?;
            let rate = self.rate_of(version, product, &dimensions, ts)?;
            let curve: std::borrow::Cow<'_, PricedCurve> =
                curve_with_override(contract, product.id, &dimensions, rate, ts);
            let bucket_quantity: Fixed = usages.iter().map(|u| u.quantity).sum();
            let out_of_range = || format!("the charge for product {:?} is out of range", product.id_text);
            let after = quantity.checked_add(bucket_quantity).ok_or_else(out_of_range)?;
            let price_after = curve.picos(after).ok_or_else(out_of_range)?;
            let price_before = curve.picos(quantity).ok_or_else(out_of_range)?;
            let amount = (price_after - price_before).max(-charged);
            (quantity, charged) = (after, charged + amount);
            let mut old_versions: SmallVec<[u32; 2]> = usages.iter().map(|u| u.version).collect();
            old_versions.sort_unstable();
            old_versions.dedup();
            out.push(Repriced {
                key: *hour_key,
                rate_card: version.rate_card,
                version: version.number,
                old_versions,
                quantity: bucket_quantity,
                events: usages.iter().map(|u| u.events).sum(),
                old_amount: usages.iter().map(|u| u.amount).sum(),
                new_amount: amount,
                selected: hour_key.hour >= from && hour_key.hour < until,
            });
        }
        Ok(out)
    }

    /// The catalogue's product of an aggregate, if its usage can be walked: only additive
    /// aggregations can (see rerate.rs's module comment). `hour` (Unix ms / HOUR_MS), the aggregate's
    /// first usage to be priced again, is named in the refusal (SimulateVersion's names the hour).
    fn walkable_product(&self, id: Sym, hour: i64) -> Result<&Product, String> {
        let product = self.rater.catalog.products.iter().find(|p| p.id == id).ok_or_else(|| {
            format!("product {:?} has usage but is not in the catalogue", self.rater.interner.text(id))
        })?;
        if !matches!(product.aggregation, Aggregation::Sum | Aggregation::Count) {
            return Err(format!(
                "product {:?} aggregates by {:?}: its hour buckets hold increments in arrival order, not its \
                 measure per hour, so its usage (first in the hour from {} (timestamp_ms {})) cannot be priced \
                 again from them",
                product.id_text,
                product.aggregation,
                crate::route::utc_text(hour * HOUR_MS),
                hour * HOUR_MS,
            ));
        }
        Ok(product)
    }

    /// The version that prices the hour starting at `ts` under `contract`.
    fn pricing_version<'k>(
        &'k self,
        pricing: Pricing<'k>,
        contract: &Contract,
        ts: i64,
    ) -> Result<&'k Version, String> {
        let catalog = &self.rater.catalog;
        Ok(match pricing {
            Pricing::From { from_ms, version } if ts >= from_ms => version,
            Pricing::Inserted { at_ms, version } if contract.rate_card == version.rate_card && ts >= at_ms => {
                let entries = &catalog.timelines[contract.timeline as usize];
                let after = entries.partition_point(|(at, _)| *at <= ts);
                match after.checked_sub(1).map(|i| entries[i]) {
                    Some((at, index)) if at > at_ms => &catalog.versions[index],
                    _ => version,
                }
            }
            Pricing::Timeline | Pricing::Inserted { .. } | Pricing::From { .. } => {
                catalog.version_at(contract.timeline, ts).ok_or_else(|| {
                    let at = crate::route::utc_text(ts);
                    format!(
                        "rate card {:?} has no version in force at {at} (timestamp_ms {ts})",
                        self.rater.interner.text(contract.rate_card)
                    )
                })?
            }
        })
    }

    /// The rate of `version` for the product's usage with these dimension values, at `ts`.
    fn rate_of<'v>(
        &self,
        version: &'v Version,
        product: &Product,
        dimensions: &[Option<Sym>],
        ts: i64,
    ) -> Result<&'v Rate, String> {
        let interner = &self.rater.interner;
        version.rate_for(product.id, dimensions).ok_or_else(|| {
            format!(
                "rate card {:?} version {} has no rate for product {:?} with {:?}: its usage in the hour from {} \
                 (timestamp_ms {ts}) cannot be priced by it",
                interner.text(version.rate_card),
                version.number,
                product.id_text,
                dimensions
                    .iter()
                    .zip(&product.dimensions)
                    .map(|(v, d)| (d.as_str(), interner.text(v.expect("interned"))))
                    .collect::<Vec<_>>(),
                crate::route::utc_text(ts),
            )
        })
    }
}

impl Repriced {
    /// Whether writing it again changes the bucket: its amount, or the version that priced it.
    pub(crate) fn changed(&self) -> bool {
        self.new_amount != self.old_amount || self.old_versions.as_slice() != [self.version]
    }
}

/// The last period found: the buckets of an account mostly share a few periods, and finding one
/// walks the calendar.
#[derive(Default)]
pub(crate) struct PeriodCache {
    last: Option<(i64, i64, i64)>,
}

impl PeriodCache {
    pub(crate) fn containing(&mut self, anchor_ms: i64, ts_ms: i64) -> (i64, i64) {
        match self.last {
            Some((anchor, start, end)) if anchor == anchor_ms && start <= ts_ms && ts_ms < end => (start, end),
            _ => {
                let (start, end) = period_containing(anchor_ms, ts_ms);
                self.last = Some((anchor_ms, start, end));
                (start, end)
            }
        }
    }
}
