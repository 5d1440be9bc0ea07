//! Rating one event against one account: planning what it charges each product it feeds (`Rater::plan`),
//! settling those charges on the grants (`Rater::settle`, shared with Authorize) and committing them to the
//! account's aggregates, hour buckets and period totals, with the ack's ledger and the explain records. Apart
//! from the batch loop (kernel.rs), so that the per-event money path reads in one place.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::account::{unknown_customer, Account};
use crate::ack::AckBuilder;
use crate::buckets::{record_hour, Aggregate, Combos, Measure, PeriodKey};
use crate::decode::{py_dict, py_repr, Event, Reason, Refusal};
use crate::draw::{settle_into, Changed, Changes, Charge, Grant, Outcomes};
use crate::explain::{self, Charged, Recorder};
use crate::money::{Fixed, Picos, SCALE};
use crate::route::{curve_with_override, Aggregation, Catalog, Contract, Interner, Product, Sym, Version};

/// The compiled control plane and the symbols: what rating reads, apart from the account.
#[derive(Default)]
pub(crate) struct Rater {
    pub(crate) catalog: Catalog,
    pub(crate) interner: Interner,
    pub(crate) combos: Combos,
    /// Per-event records for ExplainLineItem, when enabled.
    pub(crate) explain: Recorder,
    /// What a bucket not yet created holds (built once, not for every product of every event).
    pub(crate) no_aggregate: Aggregate,
    /// (contract anchor, start, end) of the period of the last event committed, of any account: an
    /// account's first event in a period (each account's first after a restore, or in a new month)
    /// takes it rather than walking the calendar when its contract shares the anchor, as contracts
    /// made the same day do. Each of the kernel spike's 10,000 accounts computed one, about 560
    /// instructions. Not state: a cache of `period_containing`.
    pub(crate) last_period: (i64, i64, i64),
}

impl Rater {
    /// Everything the event would charge (into `plans`, cleared first), or why it is refused;
    /// changes nothing.
    pub(crate) fn plan(&self, account: &Account, event: &Event, plans: &mut Vec<Plan>) -> Result<EventPlan, Refusal> {
        self.plan_keyed(account, event, plans, &mut None)
    }

    /// `plan` starting from `keyed`, what `Kernel::warm` keyed the event's products by (planning
    /// may replace it). Taken only when it names a combination: its symbols and combination keep
    /// their meaning, where a value or combination warm found none of may have been interned since
    /// (by an event rated between).
    pub(crate) fn plan_keyed(
        &self,
        account: &Account,
        event: &Event,
        plans: &mut Vec<Plan>,
        keyed: &mut Option<Keyed>,
    ) -> Result<EventPlan, Refusal> {
        plans.clear();
        let customer = event.customer_id;
        let Some(route) = account.route.as_ref() else { return Err(unknown_customer(customer)) };
        let ts = event.timestamp_ms;
        let Some((contract, period)) = account.covering(ts, self.last_period) else {
            return Err(Refusal::new(
                Reason::NoActiveContract,
                format!("customer {} has no contract covering timestamp_ms {ts}", py_repr(customer)),
            ));
        };
        let period_start_ms = period.1;
        if route.is_closed(period_start_ms) {
            // The period named as an instant a person reads (its invoice's period_start), not in Unix ms.
            let start = crate::route::utc_text(period_start_ms);
            return Err(Refusal::new(Reason::PeriodClosed, format!("the period starting {start} is closed")));
        }
        let mut feeding = self.catalog.feeding(event.event_type, |k| event.dimension(k)).peekable();
        if feeding.peek().is_none() {
            return Ok(EventPlan { period_start_ms, period, block: contract.block });
        }
        let Some(version) = self.catalog.version_at(contract.timeline, ts) else {
            return Err(Refusal::new(
                Reason::NoApplicableRate,
                format!(
                    "rate card {} has no version in force at {} (timestamp_ms {ts})",
                    py_repr(self.interner.text(contract.rate_card)),
                    crate::route::utc_text(ts)
                ),
            ));
        };
        if keyed.as_ref().is_some_and(|k| k.combo.is_none()) {
            *keyed = None;
        }
        for index in feeding {
            plans.push(self.plan_product(account, event, contract, version, period_start_ms, index, keyed)?);
        }
        self.period_totals_hold(account, period_start_ms, plans)?;
        Ok(EventPlan { period_start_ms, period, block: contract.block })
    }

    /// Refuses the event (INVALID_EVENT, naming the product) when its charges would overflow the
    /// period's totals: the charges, and the overage, which grows by at most a charge's positive part.
    /// Each line's price fits (`plan_product`), but the lines of one period add up.
    fn period_totals_hold(&self, account: &Account, period_start_ms: i64, plans: &[Plan]) -> Result<(), Refusal> {
        let mut totals = account.periods.get(period_start_ms).unwrap_or_default();
        for p in plans {
            let Some(next) = totals.charged(p.charge) else {
                let product = &self.catalog.products[p.product].id_text;
                return Err(Refusal::new(
                    Reason::InvalidEvent,
                    format!("the charge for product {} is out of range", py_repr(product)),
                ));
            };
            totals = next;
        }
        Ok(())
    }

    /// The event's dimension symbols under a product's pricing dimensions, and the key of the
    /// product's period aggregate (None: a combination no bucket has yet). `dimension` reads the
    /// event's values; `symbol` finds a value's symbol (`Interner::get`, or `Symbols` while warming);
    /// `last` holds the symbols of the event's previous product, reused when its dimensions are the
    /// same. Planning and `Kernel::warm` both key here, so warm reads the entries rating looks up.
    pub(crate) fn product_key<'k, 'a>(
        &self,
        product: &Product,
        period_start_ms: i64,
        dimension: impl Fn(&str) -> Option<&'a str>,
        mut symbol: impl FnMut(&'a str) -> Option<Sym>,
        last: &'k mut Option<Keyed>,
    ) -> (&'k Keyed, Option<PeriodKey>) {
        if last.as_ref().is_none_or(|k| k.class != product.dimensions_class) {
            // A loop, not `gather_four` over a closure: with the symbol lookup in it, that closure
            // stayed a call (about 20 instructions a dimension).
            let dimensions = if product.dimensions.len() <= 4 {
                let mut inline = [None; 4];
                for (slot, d) in inline.iter_mut().zip(&product.dimensions) {
                    *slot = symbol(dimension(d).unwrap_or(""));
                }
                SmallVec::from_buf_and_len(inline, product.dimensions.len())
            } else {
                product.dimensions.iter().map(|d| symbol(dimension(d).unwrap_or(""))).collect()
            };
            // A tuple with a value never interned has no bucket yet.
            let combo = self.combos.get_interned(&dimensions);
            *last = Some(Keyed { class: product.dimensions_class, dimensions, combo });
        }
        let keyed = last.as_ref().expect("set above");
        let key = keyed.combo.map(|combo| PeriodKey { period_start_ms, product: product.id, combo });
        (keyed, key)
    }

    /// What the event would charge one product it feeds; `keyed` is `product_key`'s cache for the event.
    #[allow(clippy::too_many_arguments)]
    fn plan_product(
        &self,
        account: &Account,
        event: &Event,
        contract: &Contract,
        version: &Version,
        period_start_ms: i64,
        index: usize,
        keyed: &mut Option<Keyed>,
    ) -> Result<Plan, Refusal> {
        let ts = event.timestamp_ms;
        let product = &self.catalog.products[index];
        let measure = self.measure(product, event)?;
        // Borrowed from the event's cache, not copied into the plan: commit needs the values only
        // for a new combination, and interns them from the event then.
        let symbol = |text| self.interner.get(text);
        let (Keyed { dimensions, .. }, key) =
            self.product_key(product, period_start_ms, |d| event.dimension(d), symbol, keyed);
        let Some(rate) = version.rate_for(product.id, dimensions) else {
            return Err(Refusal::new(
                Reason::NoApplicableRate,
                format!(
                    "rate card {} version {} has no rate for product {} with {}",
                    py_repr(self.interner.text(version.rate_card)),
                    version.number,
                    py_repr(&product.id_text),
                    py_dict(product.dimensions.iter().map(|d| (d.as_str(), event.dimension(d).unwrap_or(""))))
                ),
            ));
        };
        let curve = curve_with_override(contract, product.id, dimensions, rate, ts);
        let current = key.as_ref().and_then(|k| account.aggregates.get(k)).unwrap_or(&self.no_aggregate);
        let out_of_range = || {
            Refusal::new(
                Reason::InvalidEvent,
                format!("the charge for product {} is out of range", py_repr(&product.id_text)),
            )
        };
        let after = current.quantity_after(product.aggregation, measure, ts).ok_or_else(out_of_range)?;
        let (price_before, price_after) = curve.picos_before_after(current.quantity, after).ok_or_else(out_of_range)?;
        // Under a newer, dearer version the old quantity prices higher than it was charged:
        // never give back more than the bucket was charged in all.
        let charge = (price_after - price_before).max(-current.amount);
        Ok(Plan {
            product: index,
            aggregate: key,
            measure,
            after,
            before: current.quantity,
            charge,
            overage: current.overage,
            rate_card: version.rate_card,
            version: version.number,
        })
    }

    fn measure(&self, product: &Product, event: &Event) -> Result<Measure, Refusal> {
        let value_key = product.value_key.as_str();
        let missing = |place: &str| {
            Refusal::new(
                Reason::InvalidEvent,
                format!("{place}[{}] is required by product {}", py_repr(value_key), py_repr(&product.id_text)),
            )
        };
        match product.aggregation {
            Aggregation::Count => Ok(Measure::Quantity(SCALE)),
            Aggregation::UniqueCount => {
                // Empty is missing for a product the server marked so (products made before count it).
                let value =
                    event.dimension(value_key).filter(|value| !(value.is_empty() && product.empty_count_missing));
                let value = value.ok_or_else(|| missing("dimensions"))?;
                Ok(Measure::Unique(self.interner.get(value)))
            }
            _ => event.value(value_key).map(Measure::Quantity).ok_or_else(|| missing("values")),
        }
    }

    /// Settles the plans' charges on the account's balances without changing them: the one code path for
    /// ingestion and Authorize. Fills `outcomes`, and `changed` with the balances it changed. `netted`: the event's
    /// charges take back first what its refunds gave back (`draw::settle`; false, as batches journaled before).
    pub(crate) fn settle(
        &self,
        account: &Account,
        plans: &[Plan],
        ts_ms: i64,
        netted: bool,
        outcomes: &mut Outcomes,
        changed: &mut Changed,
    ) {
        // Pushed into a vector built where it stays: collected, the vector (a few hundred bytes
        // inline) was built and then copied out.
        let mut charges: SmallVec<[Charge; 4]> = SmallVec::new();
        for p in plans {
            // Only a refund reads where its bucket's charges went.
            let drawn_by_grant = match p.aggregate {
                Some(key) if p.charge < 0 => account.aggregates.get(&key).map_or(&[][..], |a| &a.drawn_by_grant),
                _ => &[],
            };
            let product = &self.catalog.products[p.product];
            charges.push(Charge {
                product: product.id,
                product_id: &product.id_text,
                charge: p.charge,
                drawn_by_grant,
                overage: p.overage,
            });
        }
        let mut changes = Changes::new(&account.grants, changed);
        settle_into(&account.grants, &account.payable, &mut changes, &charges, ts_ms, netted, outcomes);
    }

    pub(crate) fn commit(
        &mut self,
        account: &mut Account,
        event: &Event,
        plan: EventPlan,
        netted: bool,
        plans: &[Plan],
        ack: &mut AckBuilder,
    ) {
        let ts = event.timestamp_ms;
        let mut outcomes = Outcomes::new();
        let mut changed = Changed::new();
        self.settle(account, plans, ts, netted, &mut outcomes, &mut changed);
        for &(g, balance) in &changed {
            account.grants[g as usize].remaining = balance;
            if balance > 0 {
                account.note_payable(g); // a refund gave it credit
            } else {
                account.note_drawn(g);
            }
        }
        account.last_period = plan.period;
        self.last_period = plan.period;
        if plans.is_empty() {
            return;
        }
        presize(&mut account.aggregates);
        presize(&mut account.buckets);
        // The period's totals, found once for the event's products.
        let period = account.periods.slot(plan.period_start_ms);
        for (p, outcome) in plans.iter().zip(&outcomes) {
            let key = self.aggregate_key(p, event, plan.period_start_ms);
            let product = &self.catalog.products[p.product];
            let unique = match p.measure {
                Measure::Unique(_) => {
                    Some(self.interner.intern(event.dimension(&product.value_key).expect("measured, so present")))
                }
                Measure::Quantity(_) => None,
            };
            let hour = key.hour_key(ts);
            account.aggregates.entry(key).or_default().record(
                p.after,
                p.charge,
                unique,
                ts,
                &outcome.draws,
                outcome.overage,
            );
            record_hour(account.buckets.entry(hour).or_default(), p.rate_card, p.version, p.after - p.before, p.charge);
            period.charges += p.charge;
            period.overage += outcome.overage;
            assert!(period.overage >= 0, "period overage never falls below zero");
            ack.ledger(&product.id_text, p.version, p.charge, &outcome.draws, outcome.overage);
            if self.explain.on() {
                self.record_explain(&account.grants, event, plan.period_start_ms, p, key, outcome);
            }
        }
    }

    /// Appends the ExplainLineItem record of one product an event charged.
    fn record_explain(
        &mut self,
        grants: &[Grant],
        event: &Event,
        period_start_ms: i64,
        p: &Plan,
        key: PeriodKey,
        outcome: &crate::draw::Outcome,
    ) {
        let product = &self.catalog.products[p.product];
        let charged = Charged {
            customer_id: event.customer_id,
            transaction_id: event.transaction_id,
            timestamp_ms: event.timestamp_ms,
            period_start_ms,
            version: p.version,
            quantity: p.after - p.before,
            amount: p.charge,
            overage: outcome.overage,
        };
        let (interner, combos) = (&self.interner, &self.combos);
        let line = || {
            let values = combos.tuple(key.combo).iter().map(|s| interner.text(*s));
            let pairs: SmallVec<[(&str, &str); 4]> =
                product.dimensions.iter().map(|d| d.as_str()).zip(values).collect();
            explain::line_id(&product.id_text, &pairs)
        };
        let draws = outcome.draws.iter().map(|&(g, credits)| (&*grants[g as usize].id, credits));
        self.explain.record(&charged, product.id, key.combo, line, draws);
    }

    /// The key of a plan's period aggregate: a combination seen before was keyed in planning; a new
    /// one interns its dimension values now (a value interned already keeps its symbol).
    fn aggregate_key(&mut self, plan: &Plan, event: &Event, period_start_ms: i64) -> PeriodKey {
        if let Some(key) = plan.aggregate {
            return key;
        }
        let product = &self.catalog.products[plan.product];
        let tuple: SmallVec<[Sym; 4]> =
            product.dimensions.iter().map(|key| self.interner.intern(event.dimension(key).unwrap_or(""))).collect();
        PeriodKey { period_start_ms, product: product.id, combo: self.combos.intern(&tuple) }
    }
}

/// What one event would do to one product.
pub(crate) struct Plan {
    pub(crate) product: usize,
    /// None when the bucket does not exist yet (its dimension values are interned at commit).
    pub(crate) aggregate: Option<PeriodKey>,
    measure: Measure,
    pub(crate) after: Fixed,
    before: Fixed,
    pub(crate) charge: Picos,
    /// The overage the bucket caused so far (what a refund gives back first).
    overage: Picos,
    rate_card: Sym,
    version: u32,
}

/// An event's dimension symbols under one class of products' pricing dimensions (None: a value
/// never interned), and their combination (None: no bucket has it yet).
#[derive(Debug, PartialEq)]
pub(crate) struct Keyed {
    pub(crate) class: usize,
    dimensions: SmallVec<[Option<Sym>; 4]>,
    combo: Option<u32>,
}

/// What one event would do: its period and contract, and one `Plan` per product it feeds (kept
/// apart, in a buffer the kernel reuses).
#[derive(Clone, Copy)]
pub(crate) struct EventPlan {
    pub(crate) period_start_ms: i64,
    /// (contract anchor, start, end) of the event's period, for the account's cache.
    period: (i64, i64, i64),
    pub(crate) block: bool,
}

/// Room an account's aggregate and hour-bucket maps get at their first entry. A map grows from
/// nothing to room for 3 entries, 7, then 14, allocating and rehashing each time, and an account
/// rated under a few products and dimension values soon holds more than 3: starting at 7 skips one
/// allocation and rehash per map. Not more: an account with one bucket would keep room for 14.
const FIRST_ENTRIES: usize = 7;

/// Gives an empty map (never allocated) room for FIRST_ENTRIES. Made with that capacity, not
/// `reserve`d: reserving on an empty map went through the general grow-and-rehash path (about 140
/// instructions more per map, twice for each account's first event), to the same 8 buckets.
fn presize<K, V>(map: &mut FxHashMap<K, V>)
where
    K: std::hash::Hash + Eq,
{
    if map.capacity() == 0 {
        *map = FxHashMap::with_capacity_and_hasher(FIRST_ENTRIES, Default::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::HourKey;

    /// An account's maps are made at their first size as reserving on the empty map made them: the same
    /// room, and so the same order of entries, which whatever iterates the map follows.
    #[test]
    fn a_presized_map_is_the_one_reserving_made() {
        let mut made: FxHashMap<HourKey, u64> = FxHashMap::default();
        presize(&mut made);
        let mut reserved: FxHashMap<HourKey, u64> = FxHashMap::default();
        reserved.reserve(FIRST_ENTRIES);
        assert_eq!(made.capacity(), reserved.capacity());
        for hour in (0..FIRST_ENTRIES as i64 + 3).map(|n| n * 7_919) {
            let key = HourKey { hour, product: hour as u32 % 5, combo: 1 };
            made.insert(key, hour as u64);
            reserved.insert(key, hour as u64);
            assert_eq!(made.iter().collect::<Vec<_>>(), reserved.iter().collect::<Vec<_>>());
        }
        let room = made.capacity();
        presize(&mut made);
        assert_eq!(made.capacity(), room, "a map with room keeps it");
    }
}
