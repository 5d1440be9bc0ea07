//! Usage buckets: what the account remembers of rated usage.
//!
//! A period aggregate (customer, period, product, pricing-dimension values) holds the cumulative
//! quantity its price is computed over, the amount charged, and where the charges went (credits
//! per grant, overage), so a price that falls gives back exactly what it took. An hour bucket
//! (customer, product, dimension values, hour) holds quantity, event count and amount per rate
//! card version: fine enough to split usage at any hour boundary, which is where versions start.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

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
    index: FxHashMap<Box<[Sym]>, u32>,
}

impl Combos {
    pub fn get(&self, tuple: &[Sym]) -> Option<u32> {
        self.index.get(tuple).copied()
    }
    pub fn intern(&mut self, tuple: &[Sym]) -> u32 {
        if let Some(combo) = self.get(tuple) {
            return combo;
        }
        let combo = self.tuples.len() as u32;
        self.tuples.push(tuple.into());
        self.index.insert(tuple.into(), combo);
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
    /// Invariant: amount == overage + sum of drawn_by_grant.
    pub drawn_by_grant: Vec<(u32, Picos)>,
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
            drawn_by_grant: Vec::new(),
            overage: 0,
        }
    }
}

impl Aggregate {
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
            match self.drawn_by_grant.iter_mut().find(|(g, _)| *g == grant) {
                Some(entry) => entry.1 += credits,
                None => self.drawn_by_grant.push((grant, credits)),
            }
        }
        self.drawn_by_grant.retain(|(_, credits)| *credits != 0);
        self.overage += overage;
        debug_assert_eq!(
            self.amount,
            self.overage + self.drawn_by_grant.iter().map(|(_, c)| c).sum::<Picos>(),
            "charges not accounted"
        );
    }
}

/// Adds one event to its hour bucket, under the version that priced it.
pub fn record_hour(usages: &mut Vec<VersionUsage>, rate_card: Sym, version: u32, quantity: Fixed, amount: Picos) {
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
