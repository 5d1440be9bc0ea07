//! Usage buckets: what the account remembers of rated usage.
//!
//! A period aggregate (customer, period, product, pricing-dimension values) holds the cumulative
//! quantity its price is computed over, the amount charged, and where the charges went (credits
//! per grant, overage), so a price that falls gives back exactly what it took. An hour bucket
//! (customer, product, dimension values, hour) holds quantity, event count and amount per rate
//! card version: fine enough to split usage at any hour boundary, which is where versions start.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::money::{Fixed, Picos, SCALE};
use crate::route::{Aggregation, Sym};

pub const HOUR_MS: i64 = 3_600_000;

/// Pricing-dimension value tuples interned to small ids, so the account's keys are small Copy
/// structs and an event finds its buckets without comparing slices kept on the heap. Not part of
/// the snapshot: it stores keys with their tuples (`AggregateKey`, `BucketKey`), and a restore
/// gives the ids again.
#[derive(Default)]
pub struct Combos {
    tuples: Vec<Box<[Sym]>>,
    /// One-value tuples (the usual case) by their value: cheaper to hash than a slice.
    singles: FxHashMap<Sym, u32>,
    /// Two-value tuples by both values in one word: no slice to hash and compare.
    pairs: FxHashMap<u64, u32>,
    index: FxHashMap<Box<[Sym]>, u32>,
}

fn pair(first: Sym, second: Sym) -> u64 {
    (u64::from(first) << 32) | u64::from(second)
}

impl Combos {
    pub fn get(&self, tuple: &[Sym]) -> Option<u32> {
        match *tuple {
            [single] => self.singles.get(&single).copied(),
            [first, second] => self.pairs.get(&pair(first, second)).copied(),
            _ => self.index.get(tuple).copied(),
        }
    }
    /// `get` of a tuple whose values may not be interned (None: then no combination has it), with
    /// no tuple of symbols gathered first for the usual one or two values. Inline: called once an
    /// event, a call's register saving was a third of its instructions.
    #[inline]
    pub fn get_interned(&self, tuple: &[Option<Sym>]) -> Option<u32> {
        let combo = match *tuple {
            [single] => self.singles.get(&single?).copied(),
            [first, second] => self.pairs.get(&pair(first?, second?)).copied(),
            _ => tuple.iter().copied().collect::<Option<SmallVec<[Sym; 4]>>>().and_then(|t| self.get(&t)),
        };
        debug_assert_eq!(
            combo,
            tuple.iter().copied().collect::<Option<SmallVec<[Sym; 4]>>>().and_then(|t| self.index_get(&t)),
            "the one- and two-value maps agree with the tuples"
        );
        combo
    }
    /// The combination of a tuple found by scanning the tuples (the reference `get` is checked against).
    fn index_get(&self, tuple: &[Sym]) -> Option<u32> {
        self.tuples.iter().position(|t| **t == *tuple).map(|at| at as u32)
    }
    pub fn intern(&mut self, tuple: &[Sym]) -> u32 {
        if let Some(combo) = self.get(tuple) {
            return combo;
        }
        let combo = self.tuples.len() as u32;
        self.tuples.push(tuple.into());
        match *tuple {
            [single] => self.singles.insert(single, combo),
            [first, second] => self.pairs.insert(pair(first, second), combo),
            _ => self.index.insert(tuple.into(), combo),
        };
        combo
    }
    pub fn tuple(&self, combo: u32) -> &[Sym] {
        &self.tuples[combo as usize]
    }
}

/// A period aggregate's key in the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeriodKey {
    pub period_start_ms: i64,
    pub product: Sym,
    pub combo: u32,
}

impl PeriodKey {
    /// The key of the hour bucket an event at ts_ms adds to, alongside this aggregate.
    pub fn hour_key(&self, ts_ms: i64) -> HourKey {
        HourKey { hour: ts_ms.div_euclid(HOUR_MS), product: self.product, combo: self.combo }
    }
}

/// An hour bucket's key in the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HourKey {
    pub hour: i64,
    pub product: Sym,
    pub combo: u32,
}

/// A period aggregate's key as reads and snapshots see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AggregateKey {
    pub period_start_ms: i64,
    pub product: Sym,
    pub dimensions: Box<[Sym]>,
}

/// An hour bucket's key as reads and snapshots see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BucketKey {
    pub hour: i64,
    pub product: Sym,
    pub dimensions: Box<[Sym]>,
}

/// One rate card version's part of an hour bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionUsage {
    pub rate_card: Sym,
    pub version: u32,
    pub quantity: Fixed,
    pub events: u64,
    pub amount: Picos,
}

/// What an event contributes to one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Quantity(Fixed),
    /// A distinct value for UNIQUE_COUNT; None when the value was never interned (so unseen).
    Unique(Option<Sym>),
}

/// Rating reads nearly all of an aggregate's map slot: 176 bytes (the key, then `drawn_by_grant`'s 64, the
/// three amounts, `uniques`, `events`, `latest_ts_ms`), which the map places at 16-byte offsets, so 3 or 4
/// cache lines. Packing it into 128 bytes (one grant's share and `uniques` in fewer bytes, with encodings of
/// their own to keep the snapshot's bytes) would save at most 0.75 of a line an aggregate, 1.5 an event of the
/// spike's 37 simulated LL misses: at the at most 28 ns a miss the hour buckets show (`HourUsage`), some 40 ns,
/// under 3% of the server's rating thread, so not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub quantity: Fixed,
    pub events: u64,
    pub amount: Picos,
    /// UNIQUE_COUNT only: the distinct values seen, sorted.
    pub uniques: Vec<Sym>,
    /// LATEST only.
    pub latest_ts_ms: i64,
    /// Credits drawn per grant index (one entry per grant) and the part no grant covered.
    /// Invariant: amount == overage + sum of drawn_by_grant. Inline for one grant (no heap block
    /// to reach per event); it encodes as a sequence, exactly as a Vec did.
    pub drawn_by_grant: SmallVec<[(u32, Picos); 1]>,
    pub overage: Picos,
}

impl Default for Aggregate {
    fn default() -> Aggregate {
        Aggregate {
            quantity: 0,
            events: 0,
            amount: 0,
            uniques: Vec::new(),
            latest_ts_ms: -1,
            drawn_by_grant: SmallVec::new(),
            overage: 0,
        }
    }
}

impl Aggregate {
    /// Reads the fields rating reads and writes (an aggregate spans several cache lines, and its
    /// first grant's share may sit on another than the length), for `Kernel::warm`.
    pub fn warm(&self) -> u64 {
        let lengths = self.uniques.len() ^ self.drawn_by_grant.len();
        let drawn = self.drawn_by_grant.first().map_or(0, |(grant, credits)| credits ^ i128::from(*grant));
        let sum = self.quantity ^ self.amount ^ self.overage ^ drawn;
        sum as u64 ^ self.events ^ self.latest_ts_ms as u64 ^ lengths as u64
    }

    /// The cumulative quantity once this event is counted; None on overflow.
    pub fn quantity_after(&self, aggregation: Aggregation, measure: Measure, ts_ms: i64) -> Option<Fixed> {
        Some(match (aggregation, measure) {
            (Aggregation::Sum | Aggregation::Count, Measure::Quantity(q)) => self.quantity.checked_add(q)?,
            (Aggregation::Max, Measure::Quantity(q)) => {
                if self.events == 0 || q > self.quantity {
                    q
                } else {
                    self.quantity
                }
            }
            // A late event (older than the latest seen) does not move a gauge; a tie goes to the later arrival.
            (Aggregation::Latest, Measure::Quantity(q)) => {
                if ts_ms >= self.latest_ts_ms {
                    q
                } else {
                    self.quantity
                }
            }
            (Aggregation::UniqueCount, Measure::Unique(value)) => {
                let seen = value.is_some_and(|v| self.uniques.binary_search(&v).is_ok());
                if seen {
                    self.quantity
                } else {
                    self.quantity.checked_add(SCALE)?
                }
            }
            _ => unreachable!("a measure always matches its product's aggregation"),
        })
    }

    /// Counts one event: its quantity, charge, and where the charge went.
    pub fn record(
        &mut self,
        after: Fixed,
        charge: Picos,
        unique: Option<Sym>,
        ts_ms: i64,
        draws: &[(u32, Picos)],
        overage: Picos,
    ) {
        self.events += 1;
        self.amount += charge;
        self.quantity = after;
        if let Some(value) = unique {
            if let Err(at) = self.uniques.binary_search(&value) {
                self.uniques.insert(at, value);
            }
        }
        self.latest_ts_ms = self.latest_ts_ms.max(ts_ms);
        for &(grant, credits) in draws {
            // From the end: a grant drawn lately (the latest top-up) is found first. A grant has one entry at most.
            match self.drawn_by_grant.iter_mut().rev().find(|(g, _)| *g == grant) {
                Some(entry) => entry.1 += credits,
                None => self.drawn_by_grant.push((grant, credits)),
            }
        }
        // Most events leave every grant's share nonzero: retain's pass (with its moves) only then. Shares are
        // positive, so only a draw of no credits or a refund (negative) can leave one at zero: the pass over
        // every share (one per grant the period's usage drew on) is skipped for an event that only drew.
        let may_zero = draws.iter().any(|&(_, credits)| credits <= 0);
        if may_zero && self.drawn_by_grant.iter().any(|(_, credits)| *credits == 0) {
            self.drawn_by_grant.retain(|(_, credits)| *credits != 0);
        }
        self.overage += overage;
        debug_assert_eq!(
            self.amount,
            self.overage + self.drawn_by_grant.iter().map(|(_, c)| c).sum::<Picos>(),
            "charges not accounted"
        );
    }
}

/// An hour bucket's usage per rate card version: inline for the usual one version. Its map slot is 96 bytes (2 or 3
/// cache lines). All of the hour buckets' work, measured by leaving it out (a build kept for the measurement only): the
/// kernel spike (600 batches, 10,000 customers, 2 regions) 1,065 ns of CPU an event with it, 884 without, over 5
/// alternating runs (at 200 batches, 6,748 and 6,433 instructions and 36.9 and 30.5 LL misses an event, callgrind
/// simulating a 2 MiB LL); the server's rating thread (`server.bench.thread_cpu --runs 3`) 1.51 and 1.37 µs an event,
/// lower without in each of 3 alternating pairs. A slot of 80 bytes (one version inline, more on the heap) would always
/// read 2 lines, half a line an event fewer: a small part of that, so not done.
pub type HourUsage = SmallVec<[VersionUsage; 1]>;

/// Reads what `record_hour` reads and writes of an hour bucket (its first version's usage may sit
/// on another cache line than the length), for `Kernel::warm`.
pub fn warm_hour(usages: &HourUsage) -> u64 {
    let first = usages.first().map_or(0, |u| (u.quantity ^ u.amount) as u64 ^ u.events ^ u64::from(u.version));
    first ^ usages.len() as u64
}

/// Adds one event to its hour bucket, under the version that priced it.
pub fn record_hour(usages: &mut HourUsage, rate_card: Sym, version: u32, quantity: Fixed, amount: Picos) {
    let usage = match usages.iter().position(|u| u.rate_card == rate_card && u.version == version) {
        Some(at) => &mut usages[at],
        None => {
            usages.push(VersionUsage { rate_card, version, ..VersionUsage::default() });
            usages.last_mut().expect("just pushed")
        }
    };
    usage.quantity += quantity;
    usage.events += 1;
    usage.amount += amount;
}

/// What a period was charged in all, and the part no grant covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodTotal {
    pub charges: Picos,
    pub overage: Picos,
}

impl PeriodTotal {
    /// The totals after a charge of `charge` (negative: a refund), checked: the charges move by it and the
    /// overage by at most its positive part. None when either would overflow.
    pub fn charged(self, charge: Picos) -> Option<PeriodTotal> {
        let charges = self.charges.checked_add(charge)?;
        let overage = self.overage.checked_add(charge.max(0))?;
        Some(PeriodTotal { charges, overage })
    }
}

/// An account's totals per period, by period start: a short sorted list (one entry inline), so
/// an event reaches its period's totals in one place (two maps put each total on the heap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodTotals(SmallVec<[(i64, PeriodTotal); 1]>);

impl PeriodTotals {
    pub fn get(&self, period_start_ms: i64) -> Option<PeriodTotal> {
        self.0.iter().find(|(start, _)| *start == period_start_ms).map(|(_, total)| *total)
    }

    /// The period's totals, created at zero.
    #[inline]
    pub fn slot(&mut self, period_start_ms: i64) -> &mut PeriodTotal {
        // Newest last: the period of most events is the last, found here with no call (the whole
        // search as a call spent most of its instructions saving and restoring registers).
        let newest = self.0.len().wrapping_sub(1);
        if self.0.get(newest).is_some_and(|(start, _)| *start == period_start_ms) {
            return &mut self.0[newest].1;
        }
        self.slot_searched(period_start_ms)
    }

    /// `slot` of a period that is not the newest (an older one, or one to create).
    #[inline(never)]
    fn slot_searched(&mut self, period_start_ms: i64) -> &mut PeriodTotal {
        let at = match self.0.iter().rposition(|(start, _)| *start <= period_start_ms) {
            Some(at) if self.0[at].0 == period_start_ms => at,
            Some(at) => {
                self.0.insert(at + 1, (period_start_ms, PeriodTotal::default()));
                at + 1
            }
            None => {
                self.0.insert(0, (period_start_ms, PeriodTotal::default()));
                0
            }
        };
        &mut self.0[at].1
    }

    /// (period start, totals), ascending.
    pub fn iter(&self) -> impl Iterator<Item = (i64, PeriodTotal)> + '_ {
        self.0.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn combinations_are_found_as_the_tuples_list_them(
            interned in proptest::collection::vec(proptest::collection::vec(0u32..4, 0..4), 0..24),
            probes in proptest::collection::vec(proptest::collection::vec(proptest::option::weighted(0.9, 0u32..5), 0..4), 0..24),
        ) {
            let mut combos = Combos::default();
            for tuple in &interned {
                let combo = combos.intern(tuple);
                proptest::prop_assert_eq!(combos.tuple(combo), tuple.as_slice());
            }
            for probe in probes.iter().chain(&interned.iter().map(|t| t.iter().map(|s| Some(*s)).collect()).collect::<Vec<_>>()) {
                let tuple: Option<Vec<Sym>> = probe.iter().copied().collect();
                let scanned = tuple.as_ref().and_then(|t| combos.index_get(t));
                proptest::prop_assert_eq!(combos.get_interned(probe), scanned);
                if let Some(t) = &tuple {
                    proptest::prop_assert_eq!(combos.get(t), scanned);
                }
            }
        }
    }

    #[test]
    fn period_totals_stay_sorted_by_start() {
        let mut totals = PeriodTotals::default();
        for (start, amount) in [(20, 1), (10, 2), (30, 3), (20, 4), (10, 5)] {
            totals.slot(start).charges += amount;
        }
        let charges: Vec<(i64, Picos)> = totals.iter().map(|(start, t)| (start, t.charges)).collect();
        assert_eq!(charges, vec![(10, 7), (20, 5), (30, 3)]);
        assert_eq!((totals.get(20).map(|t| t.charges), totals.get(15)), (Some(5), None));
    }
}
