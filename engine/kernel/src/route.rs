//! Routing: which products an event feeds, under which contract, period, version and rate.
//!
//! `Catalog` is the control plane compiled from the tables: products by event type, version rate
//! lookups (most specific match first), per-customer contracts with their period calendar,
//! version timeline and overrides. Dimension values are compared as interned symbols.

use std::borrow::Cow;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::money::{parse_i128, Fixed};
use crate::price::{Curve, PricedCurve, Tier};
use crate::tables::{CurveTable, CustomerTable, Tables};

pub type Sym = u32;

/// Strings to small integers, so buckets are keyed by integers. Part of the snapshot.
#[derive(Default, Clone)]
pub struct Interner {
    strings: Vec<Box<str>>,
    index: FxHashMap<Interned, Sym>,
}

/// A string as the interner's index holds it: hashed as the str, compared through `Text` (events'
/// dimension values are short, and a call to memcmp cost several times the comparison).
#[derive(Clone, Debug)]
struct Interned(Box<str>);

/// A string looked up in the interner's index (and in the kernel's accounts, crate::customer_key):
/// equal as `same_text` says (the same as `==`).
#[repr(transparent)]
pub(crate) struct Text(str);

impl Text {
    pub(crate) fn of(text: &str) -> &Text {
        // SAFETY: Text is repr(transparent) over str, so a &str and a &Text have the same layout and
        // metadata (the length), and the borrow's lifetime carries over unchanged.
        unsafe { &*(text as *const str as *const Text) }
    }
}

impl std::borrow::Borrow<Text> for Interned {
    fn borrow(&self) -> &Text {
        Text::of(&self.0)
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl std::hash::Hash for Interned {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Text::of(&self.0).hash(state)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        crate::decode::same_text(&self.0, &other.0)
    }
}

impl Eq for Text {}

impl PartialEq for Interned {
    fn eq(&self, other: &Interned) -> bool {
        Text::of(&self.0) == Text::of(&other.0)
    }
}

impl Eq for Interned {}

impl Interner {
    pub fn intern(&mut self, text: &str) -> Sym {
        if let Some(&sym) = self.index.get(Text::of(text)) {
            return sym;
        }
        let sym = self.strings.len() as Sym;
        self.strings.push(text.into());
        self.index.insert(Interned(text.into()), sym);
        sym
    }
    pub fn get(&self, text: &str) -> Option<Sym> {
        self.index.get(Text::of(text)).copied()
    }
    pub fn text(&self, sym: Sym) -> &str {
        &self.strings[sym as usize]
    }
    pub fn strings(&self) -> Vec<String> {
        self.strings.iter().map(|s| s.to_string()).collect()
    }
    pub fn len(&self) -> usize {
        self.strings.len()
    }
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
    pub fn from_strings(strings: Vec<String>) -> Interner {
        let strings: Vec<Box<str>> = strings.into_iter().map(String::into_boxed_str).collect();
        let index = strings.iter().enumerate().map(|(i, s)| (Interned(s.clone()), i as Sym)).collect();
        Interner { strings, index }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Count,
    Max,
    UniqueCount,
    Latest,
}

pub struct Product {
    pub id: Sym,
    pub id_text: String,
    pub aggregation: Aggregation,
    pub value_key: String,
    /// UNIQUE_COUNT: an event whose counted dimension is empty is refused as one without it.
    pub empty_count_missing: bool,
    pub filters: Vec<(String, String)>,
    /// What a filter reads for a dimension the event leaves out: `Some("")` (CreateProduct.empty_filter_missing),
    /// so a filter on "" is met by it too, a left-out dimension being the empty one as on an invoice line and for
    /// a rate; `None` for products created before that flag, whose filters only an event sending "" meets.
    pub filter_reads_missing_as: Option<&'static str>,
    pub dimensions: Vec<String>,
    /// The first product (by index) with the same pricing dimensions in the same order: an event's
    /// products of one class share its dimension symbols and their combination, looked up once.
    pub dimensions_class: usize,
}

#[derive(Clone)]
pub struct Rate {
    pub required: Vec<(usize, Sym)>,
    /// The rate card's price, ready to price (a contract's override derives its own).
    pub priced: PricedCurve,
}

pub struct Version {
    pub rate_card: Sym,
    pub number: u32,
    /// Rates by product, in the tables' order. Whoever changes them calls `index_rates` after.
    pub rates: FxHashMap<Sym, Vec<Rate>>,
    /// `rate_for` of the keys that name a value at every position (the usual key: a rate for each
    /// combination of the pricing dimensions' values), a copy of the rate by product and values: one
    /// hash lookup, where finding the product's rates and scanning them compared each in turn.
    exact: FxHashMap<ExactKey, Rate>,
}

/// A product and a key naming a value at each of up to 4 positions: three words to hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ExactKey {
    product: Sym,
    len: u32,
    values: [Sym; 4],
}

impl ExactKey {
    fn new(product: Sym, key: &[Option<Sym>]) -> Option<ExactKey> {
        let mut values = [0; 4];
        if key.len() > values.len() {
            return None;
        }
        for (slot, value) in values.iter_mut().zip(key) {
            *slot = (*value)?;
        }
        Some(ExactKey { product, len: key.len() as u32, values })
    }
}

impl std::hash::Hash for ExactKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let pair = |a: u32, b: u32| (u64::from(a) << 32) | u64::from(b);
        state.write_u64(pair(self.product, self.len));
        state.write_u64(pair(self.values[0], self.values[1]));
        state.write_u64(pair(self.values[2], self.values[3]));
    }
}

#[derive(Clone)]
pub struct Override {
    pub product: Sym,
    /// (position in the product's pricing dimensions, value); None if a key is not one of them.
    pub required: Option<Vec<(usize, Sym)>>,
    pub starting_at_ms: i64,
    pub ending_before_ms: Option<i64>,
    pub price: Option<Fixed>,
    pub multiplier: Option<Fixed>,
    /// `OverrideTable::multiplier_reduced`.
    pub multiplier_reduced: bool,
}

/// Held once per customer contract (a million of them with a million customers), so kept compact:
/// symbols for text, boxed slices for lists that never grow.
#[derive(Clone)]
pub struct Contract {
    pub rate_card: Sym,
    pub timeline: u32,
    pub block: bool,
    pub starting_at_ms: i64,
    pub ending_before_ms: Option<i64>,
    pub overage_price: Fixed,
    pub overrides: Box<[Override]>,
    /// The customer's top-up policy buys nothing in this contract's billing periods (set in another currency).
    pub top_up_refused: bool,
}

impl Contract {
    pub fn covers(&self, ts_ms: i64) -> bool {
        self.starting_at_ms <= ts_ms && self.ending_before_ms.is_none_or(|end| ts_ms < end)
    }
}

/// A customer's contracts and closed periods (period starts, ascending): the one copy of its
/// compiled tables, held by its account.
#[derive(Default, Clone)]
pub struct Route {
    pub contracts: Box<[Contract]>,
    pub closed_periods: Box<[i64]>,
}

impl Route {
    pub fn is_closed(&self, period_start_ms: i64) -> bool {
        self.closed_periods.binary_search(&period_start_ms).is_ok()
    }
}

#[derive(Default)]
pub struct Catalog {
    pub future_skew_ms: i64,
    pub dedupe_window_ms: i64,
    pub products: Vec<Product>,
    pub by_event_type: FxHashMap<String, Vec<usize>>,
    pub versions: Vec<Version>,
    pub timelines: Vec<Vec<(i64, usize)>>,
}

fn fixed(text: &str) -> Result<Fixed, String> {
    parse_i128(text)
}

fn curve(table: &CurveTable) -> Result<Curve, String> {
    let positive = |text: &str, what: &str| -> Result<Fixed, String> {
        let value = fixed(text)?;
        if value <= 0 {
            return Err(format!("{what} must be positive, not {text}"));
        }
        Ok(value)
    };
    Ok(match table.kind.as_str() {
        "UNIT" => Curve::Unit { price: fixed(&table.price)?, per_units: positive(&table.per_units, "per_units")? },
        "GRADUATED" | "VOLUME" => Curve::Tiered {
            volume: table.kind == "VOLUME",
            per_units: positive(&table.per_units, "per_units")?,
            tiers: table
                .tiers
                .iter()
                .map(|(up_to, unit, flat)| {
                    Ok(Tier {
                        up_to: if up_to.is_empty() { None } else { Some(fixed(up_to)?) },
                        unit_price: fixed(unit)?,
                        flat_price: fixed(flat)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        },
        "PACKAGE" => {
            Curve::Package { size: positive(&table.package_size, "package_size")?, price: fixed(&table.price)? }
        }
        "FLAT" => Curve::Flat { price: fixed(&table.price)? },
        other => return Err(format!("unknown price model {other:?}")),
    })
}

fn aggregation(text: &str) -> Result<Aggregation, String> {
    Ok(match text {
        "SUM" => Aggregation::Sum,
        "COUNT" => Aggregation::Count,
        "MAX" => Aggregation::Max,
        "UNIQUE_COUNT" => Aggregation::UniqueCount,
        "LATEST" => Aggregation::Latest,
        other => return Err(format!("unknown aggregation {other:?}")),
    })
}

impl Product {
    /// Whether an event whose dimensions `dimension` reads meets every filter of this product. Never inline:
    /// inlined into `Catalog::feeding`, it kept the walk over the candidates from being inlined into its callers.
    #[inline(never)]
    fn meets<'c>(&self, dimension: &impl Fn(&str) -> Option<&'c str>) -> bool {
        self.filters.iter().all(|(k, v)| dimension(k).or(self.filter_reads_missing_as) == Some(v.as_str()))
    }
}

impl Catalog {
    /// Compiles the shared tables (products, versions, timelines); symbols are interned into the
    /// kernel's interner. Customers' routes compile with `route`.
    pub fn compile(tables: &Tables, interner: &mut Interner) -> Result<Catalog, String> {
        let mut catalog = Catalog {
            future_skew_ms: tables.future_skew_ms,
            dedupe_window_ms: tables.dedupe_window_ms,
            ..Catalog::default()
        };
        for (index, table) in tables.products.iter().enumerate() {
            catalog.by_event_type.entry(table.event_type.clone()).or_default().push(index);
            catalog.products.push(Product {
                id: interner.intern(&table.id),
                id_text: table.id.clone(),
                aggregation: aggregation(&table.aggregation)?,
                value_key: table.value_key.clone(),
                empty_count_missing: table.empty_count_missing,
                filters: table.filters.clone(),
                filter_reads_missing_as: table.empty_filter_missing.then_some(""),
                dimensions: table.pricing_dimensions.clone(),
                dimensions_class: (catalog.products.iter().position(|p| p.dimensions == table.pricing_dimensions))
                    .unwrap_or(index),
            });
        }
        // An event's products in product-id order: the order its charges draw in (never creation order).
        for products in catalog.by_event_type.values_mut() {
            products.sort_by(|a, b| tables.products[*a].id.cmp(&tables.products[*b].id));
        }
        for table in &tables.versions {
            let mut rates: FxHashMap<Sym, Vec<Rate>> = FxHashMap::default();
            for rate in &table.rates {
                let required = rate.required.iter().map(|(p, v)| (*p as usize, interner.intern(v))).collect();
                let compiled = Rate { required, priced: PricedCurve::new(curve(&rate.curve)?, None) };
                rates.entry(interner.intern(&rate.product_id)).or_default().push(compiled);
            }
            let rate_card = interner.intern(&table.rate_card_id);
            let mut version = Version { rate_card, number: table.number, rates, exact: FxHashMap::default() };
            version.index_rates();
            catalog.versions.push(version);
        }
        catalog.timelines = catalog.checked_timelines(&tables.timelines)?;
        Ok(catalog)
    }

    /// Timelines as tables send them, checked against the versions held.
    pub fn checked_timelines(&self, timelines: &[Vec<(i64, u32)>]) -> Result<Vec<Vec<(i64, usize)>>, String> {
        timelines
            .iter()
            .map(|timeline| {
                if timeline.iter().any(|(_, v)| *v as usize >= self.versions.len()) {
                    return Err("a timeline names a version the tables do not hold".to_string());
                }
                Ok(timeline.iter().map(|(at, v)| (*at, *v as usize)).collect())
            })
            .collect()
    }

    /// A customer's route, compiled against these tables: its contracts' timelines must be among the
    /// first `timelines` (those held, plus any loaded with it).
    pub fn route(&self, customer: &CustomerTable, timelines: usize, interner: &mut Interner) -> Result<Route, String> {
        let mut contracts = Vec::with_capacity(customer.contracts.len());
        for contract in &customer.contracts {
            if contract.timeline as usize >= timelines {
                return Err(format!("contract {:?} names a missing timeline", contract.id));
            }
            let mut overrides = Vec::with_capacity(contract.overrides.len());
            for table in &contract.overrides {
                let dimensions = self
                    .products
                    .iter()
                    .find(|p| p.id_text == table.product_id)
                    .map_or(&[][..], |p| p.dimensions.as_slice());
                let required = table
                    .matches
                    .iter()
                    .map(|(key, value)| dimensions.iter().position(|d| d == key).map(|p| (p, interner.intern(value))))
                    .collect::<Option<Vec<_>>>();
                overrides.push(Override {
                    product: interner.intern(&table.product_id),
                    required,
                    starting_at_ms: table.starting_at_ms,
                    ending_before_ms: table.ending_before_ms,
                    price: table.price.as_deref().map(fixed).transpose()?,
                    multiplier: table.multiplier.as_deref().map(fixed).transpose()?,
                    multiplier_reduced: table.multiplier_reduced,
                });
            }
            contracts.push(Contract {
                rate_card: interner.intern(&contract.rate_card_id),
                timeline: contract.timeline,
                block: contract.block,
                starting_at_ms: contract.starting_at_ms,
                ending_before_ms: contract.ending_before_ms,
                overage_price: fixed(&contract.overage_price)?,
                overrides: overrides.into_boxed_slice(),
                top_up_refused: contract.top_up_refused,
            });
        }
        let mut closed_periods = customer.closed_periods.clone();
        closed_periods.sort_unstable();
        closed_periods.dedup();
        Ok(Route { contracts: contracts.into_boxed_slice(), closed_periods: closed_periods.into_boxed_slice() })
    }

    /// Products of this event type whose filters the event meets, in catalogue order. An iterator,
    /// not a collected buffer: rating walks it once or twice per event (`Kernel::warm`, planning),
    /// and gathering the one or two products into a SmallVec cost more than checking their filters.
    pub fn feeding<'c>(
        &'c self,
        event_type: &str,
        dimension: impl Fn(&str) -> Option<&'c str> + Clone + 'c,
    ) -> impl Iterator<Item = usize> + Clone + 'c {
        // One event type (the usual catalogue): compared, not hashed.
        let candidates = match self.by_event_type.len() {
            1 => self
                .by_event_type
                .iter()
                .next()
                .filter(|(only, _)| crate::decode::same_text(only, event_type))
                .map(|(_, products)| products),
            _ => self.by_event_type.get(event_type),
        };
        let candidates: &'c [usize] = candidates.map_or(&[], Vec::as_slice);
        candidates.iter().copied().filter(move |&p| {
            let product = &self.products[p];
            // A product without filters (the usual one) is fed without a call; the walk over the filters is one.
            product.filters.is_empty() || product.meets(&dimension)
        })
    }

    /// The version in force at ts_ms on a timeline (the newest effective; a later entry wins a tie).
    pub fn version_at(&self, timeline: u32, ts_ms: i64) -> Option<&Version> {
        let entries = &self.timelines[timeline as usize];
        let after = entries.partition_point(|(at, _)| *at <= ts_ms);
        after.checked_sub(1).map(|i| &self.versions[entries[i].1])
    }
}

impl Version {
    /// The most specific rate for a product and dimension key (symbols; None = never interned). Always inline:
    /// planning calls it for every product of every event, and with the hint alone it stayed a call.
    #[inline(always)]
    pub fn rate_for(&self, product: Sym, key: &[Option<Sym>]) -> Option<&Rate> {
        let indexed = ExactKey::new(product, key).and_then(|exact| self.exact.get(&exact));
        let rate = indexed.or_else(|| self.scan(product, key));
        debug_assert!(
            rate.map(|r| (&r.required, &r.priced)) == self.scan(product, key).map(|r| (&r.required, &r.priced)),
            "the index gives what the scan finds"
        );
        rate
    }

    /// `rate_for` by scanning the product's rates in order: the first whose required values the key holds.
    fn scan(&self, product: Sym, key: &[Option<Sym>]) -> Option<&Rate> {
        self.rates.get(&product)?.iter().find(|r| r.required.iter().all(|(p, v)| key.get(*p) == Some(&Some(*v))))
    }

    /// Rebuilds `exact` from `rates`: for each rate requiring positions 0, 1, ... each once, the key
    /// of exactly those values maps to a copy of what the scan finds for it (the first match in
    /// order, which may be another rate), so an indexed lookup always agrees with the scan.
    pub fn index_rates(&mut self) {
        let mut exact = FxHashMap::default();
        for (&product, rates) in &self.rates {
            for rate in rates {
                let mut key: SmallVec<[Option<Sym>; 4]> = smallvec::smallvec![None; rate.required.len()];
                for &(position, value) in &rate.required {
                    if let Some(slot) = key.get_mut(position).filter(|slot| slot.is_none()) {
                        *slot = Some(value);
                    }
                }
                let Some(indexed) = ExactKey::new(product, &key) else { continue };
                if let Some(found) = self.scan(product, &key) {
                    exact.entry(indexed).or_insert_with(|| found.clone());
                }
            }
        }
        self.exact = exact;
    }
}

/// The contract's curve for this rate: its override (most specific match, then the one added
/// last) replaces or scales the rate card's price. What an override `price` means per model is
/// defined in proto/tariff/v1/contracts.proto (PriceOverride).
#[inline]
pub fn curve_with_override<'a>(
    contract: &Contract,
    product: Sym,
    key: &[Option<Sym>],
    rate: &'a Rate,
    ts_ms: i64,
) -> Cow<'a, PricedCurve> {
    // Most contracts override nothing: their curve is the rate's, found with no call (the search
    // as a call cost about 20 instructions a product, most of them the call's).
    if contract.overrides.is_empty() {
        return Cow::Borrowed(&rate.priced);
    }
    overridden_curve(contract, product, key, rate, ts_ms)
}

/// `curve_with_override` of a contract with overrides.
#[inline(never)]
fn overridden_curve<'a>(
    contract: &Contract,
    product: Sym,
    key: &[Option<Sym>],
    rate: &'a Rate,
    ts_ms: i64,
) -> Cow<'a, PricedCurve> {
    let Some(chosen) = chosen_override(contract, product, key, ts_ms) else { return Cow::Borrowed(&rate.priced) };
    let base = rate.priced.curve.clone();
    if let Some(multiplier) = chosen.multiplier {
        return Cow::Owned(PricedCurve::with_multiplier(base, multiplier, chosen.multiplier_reduced));
    }
    let price = chosen.price.expect("an override has a price or a multiplier");
    let curve = match base {
        Curve::Unit { per_units, .. } | Curve::Tiered { per_units, .. } => Curve::Unit { price, per_units },
        Curve::Package { size, .. } => Curve::Package { size, price },
        Curve::Flat { .. } => Curve::Flat { price },
    };
    Cow::Owned(PricedCurve::new(curve, None))
}

/// The override `curve_with_override` applies to usage of `product` with these dimension values at
/// `ts_ms`: of those in force then that match, the most specific (most entries), of equally specific
/// ones the one added last; None when none does.
pub fn chosen_override<'c>(
    contract: &'c Contract,
    product: Sym,
    key: &[Option<Sym>],
    ts_ms: i64,
) -> Option<&'c Override> {
    contract
        .overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            o.product == product
                && o.starting_at_ms <= ts_ms
                && o.ending_before_ms.is_none_or(|end| ts_ms < end)
                && o.required.as_ref().is_some_and(|req| req.iter().all(|(p, v)| key.get(*p) == Some(&Some(*v))))
        })
        .max_by_key(|(i, o)| (o.required.as_ref().map_or(0, Vec::len), *i))
        .map(|(_, o)| o)
}

// The period calendar: months anchored on the contract's start (UTC), a day past a month's end
// clamped to its last day, every boundary computed from the anchor so clamping does not drift.

const DAY_MS: i64 = 86_400_000;

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (if month <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, month, day)
}

/// An instant (Unix ms) as an RFC 3339 UTC text, to the second (the milliseconds shown when not
/// zero): how a refusal names an hour or a boundary.
pub fn utc_text(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    let (hour, minute, second, millis) =
        (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1_000 % 60, in_day % 1_000);
    let fraction = if millis == 0 { String::new() } else { format!(".{millis:03}") };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let next = if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) };
    next - days_from_civil(year, month, 1)
}

/// A contract's anchor read once into its civil date: a period's boundaries are whole months
/// added to it, and reading the anchor again for each boundary was most of the work.
struct Anchor {
    year: i64,
    month: i64,
    day: i64,
    time_of_day_ms: i64,
}

impl Anchor {
    fn new(anchor_ms: i64) -> Anchor {
        let (days, time_of_day_ms) = (anchor_ms.div_euclid(DAY_MS), anchor_ms.rem_euclid(DAY_MS));
        let (year, month, day) = civil_from_days(days);
        Anchor { year, month, day, time_of_day_ms }
    }

    /// The anchor moved `months` months on, a day past the month's end clamped to its last day.
    fn plus_months(&self, months: i64) -> i64 {
        let index = self.month - 1 + months;
        let (y, m) = (self.year + index.div_euclid(12), index.rem_euclid(12) + 1);
        (days_from_civil(y, m, self.day.min(days_in_month(y, m)))) * DAY_MS + self.time_of_day_ms
    }
}

/// The last instant of year 8999 UTC: the server refuses instants after it (and before 1970) at the
/// wire (engine/instants.py `LATEST_MS`), so contract anchors lie in [0, LATEST_MS].
const LATEST_MS: i64 = 221_845_392_000_000 - 1;

/// The instants `period_containing` finds the period of: those the server accepts, the end of a period
/// after one of them (up to a month past LATEST_MS), and as far again either side (about years -5060 to
/// 16029), where every boundary stays some 10^4 times below i64 overflow.
const EARLIEST_PERIOD_TS_MS: i64 = -LATEST_MS;
const LATEST_PERIOD_TS_MS: i64 = 2 * LATEST_MS;

/// (start_ms, end_ms) of the monthly period anchored on anchor_ms that contains ts_ms: start_ms <= ts_ms <
/// end_ms, start_ms the anchor moved a whole number of months (fewer than none when ts_ms precedes the
/// anchor: the same clamped calendar extrapolated backwards) and end_ms one month more.
///
/// Domain: ts_ms in [EARLIEST_PERIOD_TS_MS, LATEST_PERIOD_TS_MS] and any anchor_ms (a contract's lies in
/// [0, LATEST_MS]). A ts_ms outside is clamped into it first, so the result is the period of the domain's
/// first or last instant: still a period of the calendar, found without overflow, panic or walk. Only a
/// caller's bug sends one (the server refuses such instants at the wire), and for the single writer a
/// wrong period is a better outcome than a panic or a hang: near i64::MIN or MAX a boundary overflows,
/// or, saturated, stops moving, and a walk towards it never ends.
///
/// Two boundaries, no walk: ts_ms lies in some civil month; the anchor moved into that month (its day
/// clamped) is either at or before ts_ms, and the next boundary, in the following month, is after it; or
/// after ts_ms, and the previous boundary, in the month before, is at or before it. Each boundary is
/// computed once (an event whose account has no cached period pays this).
pub fn period_containing(anchor_ms: i64, ts_ms: i64) -> (i64, i64) {
    let ts_ms = ts_ms.clamp(EARLIEST_PERIOD_TS_MS, LATEST_PERIOD_TS_MS);
    let anchor = Anchor::new(anchor_ms);
    let (ty, tm, _) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    let months = (ty - anchor.year) * 12 + (tm - anchor.month);
    let in_ts_month = anchor.plus_months(months);
    let period = if in_ts_month <= ts_ms {
        (in_ts_month, anchor.plus_months(months + 1))
    } else {
        (anchor.plus_months(months - 1), in_ts_month)
    };
    debug_assert!(period.0 <= ts_ms && ts_ms < period.1, "anchor {anchor_ms}, ts {ts_ms}: {period:?}");
    period
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn the_interner_finds_each_string_as_a_map_of_strings_does(
            texts in proptest::collection::vec("[ab\u{e9}]{0,20}", 0..40),
            probes in proptest::collection::vec("[ab\u{e9}]{0,20}", 0..40),
        ) {
            let mut interner = Interner::default();
            let mut reference: std::collections::HashMap<String, Sym> = std::collections::HashMap::new();
            for text in &texts {
                let next = reference.len() as Sym;
                let sym = *reference.entry(text.clone()).or_insert(next);
                proptest::prop_assert_eq!(interner.intern(text), sym);
                proptest::prop_assert_eq!(interner.text(sym), text.as_str());
            }
            let restored = Interner::from_strings(interner.strings());
            for probe in probes.iter().chain(&texts) {
                proptest::prop_assert_eq!(interner.get(probe), reference.get(probe).copied());
                proptest::prop_assert_eq!(restored.get(probe), reference.get(probe).copied());
            }
        }
    }

    const JAN_31_2026: i64 = 1_769_817_600_000; // 2026-01-31T00:00:00Z

    #[test]
    fn periods_clamp_to_month_ends_without_drift() {
        let feb = period_containing(JAN_31_2026, JAN_31_2026 + 10 * DAY_MS);
        assert_eq!(feb, (JAN_31_2026, JAN_31_2026 + 28 * DAY_MS)); // Jan 31 -> Feb 28
        let march = period_containing(JAN_31_2026, feb.1 + 5 * DAY_MS);
        assert_eq!(march, (feb.1, feb.1 + 31 * DAY_MS)); // Feb 28 -> Mar 31, not Mar 28
    }

    fn customer(timeline: u32, closed_periods: Vec<i64>) -> CustomerTable {
        CustomerTable {
            id: "acme".into(),
            contracts: vec![crate::tables::ContractTable {
                id: "c1".into(),
                rate_card_id: "card".into(),
                starting_at_ms: 0,
                ending_before_ms: None,
                block: false,
                overage_price: "1000000000000000000".into(),
                timeline,
                overrides: vec![],
                top_up_refused: false,
            }],
            grants: vec![],
            closed_periods,
        }
    }

    #[test]
    fn a_route_names_only_timelines_held_and_keeps_closed_periods_sorted() {
        let (catalog, mut interner) = (Catalog::default(), Interner::default());
        let route = catalog.route(&customer(0, vec![30, 10, 20, 10]), 1, &mut interner).expect("timeline 0 of 1");
        assert_eq!(&*route.closed_periods, &[10, 20, 30]);
        assert!(route.is_closed(20) && !route.is_closed(15));
        assert_eq!(interner.text(route.contracts[0].rate_card), "card");
        let missing = catalog.route(&customer(1, vec![]), 1, &mut interner).err().expect("timeline 1 of 1");
        assert!(missing.contains("missing timeline"), "{missing}");
    }

    /// The former definition, which read the anchor's date again for every boundary.
    fn period_by_repeated_anchor_reads(anchor_ms: i64, ts_ms: i64) -> (i64, i64) {
        let add_months = |months: i64| Anchor::new(anchor_ms).plus_months(months);
        let (ay, am, _) = civil_from_days(anchor_ms.div_euclid(DAY_MS));
        let (ty, tm, _) = civil_from_days(ts_ms.div_euclid(DAY_MS));
        let mut months = ((ty - ay) * 12 + (tm - am)).max(0);
        while add_months(months) > ts_ms {
            months -= 1;
        }
        while add_months(months + 1) <= ts_ms {
            months += 1;
        }
        (add_months(months), add_months(months + 1))
    }

    #[test]
    fn periods_match_the_boundary_by_boundary_definition() {
        // Anchors on month ends (clamped), across leap years and before 1970; events up to years later.
        let anchors = [JAN_31_2026, JAN_31_2026 - 700 * DAY_MS + 12_345, -86 * DAY_MS - 1, 0, 951_782_400_000];
        for anchor in anchors {
            for step in 0..400 {
                let ts = anchor + step * 3 * DAY_MS + step * 7_777_777;
                let period = period_containing(anchor, ts);
                assert_eq!(period, period_by_repeated_anchor_reads(anchor, ts), "anchor {anchor}, ts {ts}");
                assert!(period.0 <= ts && ts < period.1);
            }
        }
    }

    // An oracle calendar written apart from days_from_civil and civil_from_days: days counted year by
    // year and month by month from 1970-01-01, so it stays fast only near 1970 (the properties keep it
    // within a few centuries).

    fn oracle_month_days(year: i64, month: i64) -> i64 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    fn oracle_year_days(year: i64) -> i64 {
        (1..=12).map(|month| oracle_month_days(year, month)).sum()
    }

    fn oracle_ms(year: i64, month: i64, day: i64, time_of_day_ms: i64) -> i64 {
        let before_1970: i64 = (year..1970).map(oracle_year_days).sum();
        let since_1970: i64 = (1970..year).map(oracle_year_days).sum();
        let in_year: i64 = (1..month).map(|m| oracle_month_days(year, m)).sum();
        (since_1970 - before_1970 + in_year + day - 1) * DAY_MS + time_of_day_ms
    }

    /// (year, month, day, time of day in ms) of an instant.
    fn oracle_civil(ms: i64) -> (i64, i64, i64, i64) {
        let (mut days, mut year, mut month) = (ms.div_euclid(DAY_MS), 1970, 1);
        while days < 0 {
            year -= 1;
            days += oracle_year_days(year);
        }
        while days >= oracle_year_days(year) {
            days -= oracle_year_days(year);
            year += 1;
        }
        while days >= oracle_month_days(year, month) {
            days -= oracle_month_days(year, month);
            month += 1;
        }
        (year, month, days + 1, ms.rem_euclid(DAY_MS))
    }

    /// The period found by stepping the anchor back or on one month at a time until ts lies between two
    /// boundaries.
    fn period_by_walking_months(anchor_ms: i64, ts_ms: i64) -> (i64, i64) {
        let (anchor_year, anchor_month, anchor_day, time_of_day_ms) = oracle_civil(anchor_ms);
        let boundary = |(y, m): (i64, i64)| oracle_ms(y, m, anchor_day.min(oracle_month_days(y, m)), time_of_day_ms);
        let next = |(y, m): (i64, i64)| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let previous = |(y, m): (i64, i64)| if m == 1 { (y - 1, 12) } else { (y, m - 1) };
        let mut month = (anchor_year, anchor_month);
        while boundary(month) > ts_ms {
            month = previous(month);
        }
        while boundary(next(month)) <= ts_ms {
            month = next(month);
        }
        (boundary(month), boundary(next(month)))
    }

    const YEAR_2100_MS: i64 = 4_102_444_800_000;
    const FORTY_YEARS_MS: i64 = 40 * 365 * DAY_MS;

    proptest::proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn periods_are_those_a_month_by_month_walk_finds(
            anchor in 0..YEAR_2100_MS,
            offset in -FORTY_YEARS_MS..FORTY_YEARS_MS,
        ) {
            let ts = anchor + offset;
            proptest::prop_assert_eq!(period_containing(anchor, ts), period_by_walking_months(anchor, ts));
        }

        #[test]
        fn every_instant_of_the_domain_lies_in_a_month_of_the_anchors_calendar(
            anchor in 0..=LATEST_MS,
            ts in EARLIEST_PERIOD_TS_MS..=LATEST_PERIOD_TS_MS,
        ) {
            let (start, end) = period_containing(anchor, ts);
            proptest::prop_assert!(start <= ts && ts < end, "{start} <= {ts} < {end}");
            assert_one_month_apart_on_the_calendar(anchor, start, end);
            // Periods tile: the instants just before and at each boundary fall either side of it.
            if end <= LATEST_PERIOD_TS_MS {
                proptest::prop_assert_eq!(period_containing(anchor, end - 1).1, end);
                proptest::prop_assert_eq!(period_containing(anchor, end).0, end);
            }
            if start > EARLIEST_PERIOD_TS_MS {
                proptest::prop_assert_eq!(period_containing(anchor, start - 1).1, start);
            }
        }

        #[test]
        fn periods_are_those_the_former_walk_found(
            anchor in 0..=LATEST_MS,
            ts in -FORTY_YEARS_MS..=LATEST_PERIOD_TS_MS,
        ) {
            // The former definition walked back one month at a time before the anchor: 40 years at most here.
            let ts = ts.max(anchor - FORTY_YEARS_MS);
            proptest::prop_assert_eq!(period_containing(anchor, ts), period_by_repeated_anchor_reads(anchor, ts));
        }

        #[test]
        fn any_instants_give_the_period_of_the_instant_clamped_into_the_domain(
            anchor in proptest::num::i64::ANY,
            ts in proptest::num::i64::ANY,
        ) {
            let clamped = ts.clamp(EARLIEST_PERIOD_TS_MS, LATEST_PERIOD_TS_MS);
            let (start, end) = period_containing(anchor, ts);
            proptest::prop_assert!(start <= clamped && clamped < end, "{start} <= {clamped} < {end}");
            proptest::prop_assert_eq!((start, end), period_containing(anchor, clamped));
        }
    }

    /// start and end are boundaries of the anchor's calendar a month apart: the anchor's time of day, its
    /// day of the month clamped to each month's last, in consecutive months.
    fn assert_one_month_apart_on_the_calendar(anchor_ms: i64, start_ms: i64, end_ms: i64) {
        let anchor = Anchor::new(anchor_ms);
        let civil = |ms: i64| (civil_from_days(ms.div_euclid(DAY_MS)), ms.rem_euclid(DAY_MS));
        let ((sy, sm, sd), start_time_ms) = civil(start_ms);
        let ((ey, em, ed), end_time_ms) = civil(end_ms);
        assert_eq!((start_time_ms, end_time_ms), (anchor.time_of_day_ms, anchor.time_of_day_ms));
        assert_eq!(sd, anchor.day.min(days_in_month(sy, sm)), "start {start_ms} of anchor {anchor_ms}");
        assert_eq!(ed, anchor.day.min(days_in_month(ey, em)), "end {end_ms} of anchor {anchor_ms}");
        assert_eq!(ey * 12 + em, sy * 12 + sm + 1, "{start_ms}..{end_ms} of anchor {anchor_ms}");
    }

    #[test]
    fn periods_at_the_domains_edges_and_on_leap_and_month_end_anchors() {
        let at = |y: i64, m: i64, d: i64, time_of_day_ms: i64| days_from_civil(y, m, d) * DAY_MS + time_of_day_ms;
        const LAST_MS_OF_DAY: i64 = DAY_MS - 1;
        assert_eq!(LATEST_MS, at(8999, 12, 31, LAST_MS_OF_DAY));
        // The anchor at the last instant accepted: its first period ends a month past it, clamped to Jan 31.
        assert_eq!(period_containing(LATEST_MS, LATEST_MS), (LATEST_MS, at(9000, 1, 31, LAST_MS_OF_DAY)));
        assert_eq!(period_containing(LATEST_MS, LATEST_MS - 1), (at(8999, 11, 30, LAST_MS_OF_DAY), LATEST_MS));
        assert_eq!(
            period_containing(LATEST_MS, 0),
            (at(1969, 12, 31, LAST_MS_OF_DAY), at(1970, 1, 31, LAST_MS_OF_DAY))
        );
        assert_eq!(period_containing(0, LATEST_MS), (at(8999, 12, 1, 0), at(9000, 1, 1, 0)));
        assert_eq!(period_containing(0, -1), (at(1969, 12, 1, 0), 0));
        // The domain's edges, and instants past them (clamped to them).
        let first = period_containing(0, EARLIEST_PERIOD_TS_MS);
        let last = period_containing(0, LATEST_PERIOD_TS_MS);
        assert!(first.0 <= EARLIEST_PERIOD_TS_MS && EARLIEST_PERIOD_TS_MS < first.1);
        assert!(last.0 <= LATEST_PERIOD_TS_MS && LATEST_PERIOD_TS_MS < last.1);
        for anchor in [0, LATEST_MS, i64::MIN, i64::MAX] {
            let (earliest, latest) = (EARLIEST_PERIOD_TS_MS, LATEST_PERIOD_TS_MS);
            for (outside, edge) in
                [(i64::MIN, earliest), (earliest - 1, earliest), (i64::MAX, latest), (latest + 1, latest)]
            {
                assert_eq!(
                    period_containing(anchor, outside),
                    period_containing(anchor, edge),
                    "anchor {anchor}, ts {outside}"
                );
            }
        }
        // Jan 31 anchors: February's end in a common and a leap year, then back to the 31st (no drift).
        assert_eq!(period_containing(at(2024, 1, 31, 0), at(2024, 2, 29, 0)), (at(2024, 2, 29, 0), at(2024, 3, 31, 0)));
        assert_eq!(period_containing(at(2025, 1, 31, 0), at(2025, 2, 27, 0)), (at(2025, 1, 31, 0), at(2025, 2, 28, 0)));
        // Feb 29: the 29th of each month after, Feb 28 in common years, and before the anchor too.
        let leap_day = at(2024, 2, 29, 0);
        assert_eq!(period_containing(leap_day, at(2025, 2, 28, 0)), (at(2025, 2, 28, 0), at(2025, 3, 29, 0)));
        assert_eq!(period_containing(leap_day, at(2028, 3, 1, 0)), (at(2028, 2, 29, 0), at(2028, 3, 29, 0)));
        assert_eq!(period_containing(leap_day, leap_day - 1), (at(2024, 1, 29, 0), leap_day));
        assert_eq!(period_containing(leap_day, at(2023, 3, 1, 0)), (at(2023, 2, 28, 0), at(2023, 3, 29, 0)));
        // An anchor at 23:59:59.999 on the 31st: the instant before it is in the period ending at it.
        let late = at(2026, 1, 31, LAST_MS_OF_DAY);
        assert_eq!(period_containing(late, late - 1), (at(2025, 12, 31, LAST_MS_OF_DAY), late));
        assert_eq!(period_containing(late, late), (late, at(2026, 2, 28, LAST_MS_OF_DAY)));
        assert_eq!(
            period_containing(late, at(2026, 3, 1, 0)),
            (at(2026, 2, 28, LAST_MS_OF_DAY), at(2026, 3, 31, LAST_MS_OF_DAY))
        );
    }

    #[test]
    fn indexed_rates_are_the_ones_the_scan_finds() {
        let unit = |price: i128| PricedCurve::new(Curve::Unit { price, per_units: 1 }, None);
        let rate = |required: Vec<(usize, Sym)>, price| Rate { required, priced: unit(price) };
        // Product 9: a rate on position 0 alone listed before the exact one for (1, 2), an exact one
        // with its positions in another order, and a rate naming position 0 twice.
        let rates = vec![
            rate(vec![(0, 1)], 10),
            rate(vec![(0, 1), (1, 2)], 20),
            rate(vec![(1, 4), (0, 3)], 30),
            rate(vec![(0, 5), (0, 5)], 40),
        ];
        let mut version =
            Version { rate_card: 0, number: 1, rates: [(9, rates)].into_iter().collect(), exact: FxHashMap::default() };
        version.index_rates();
        let price =
            |product: Sym, key: &[Option<Sym>]| version.rate_for(product, key).map(|r| r.priced.picos(1_000_000));
        assert_eq!(price(9, &[Some(1), Some(2)]), Some(Some(10)), "the first match in order, as the scan");
        assert_eq!(price(9, &[Some(3), Some(4)]), Some(Some(30)));
        assert_eq!(price(9, &[Some(3), None]), None);
        assert_eq!(price(9, &[Some(5), Some(7)]), Some(Some(40)));
        assert_eq!(price(8, &[Some(1), Some(2)]), None);
        assert_eq!(price(9, &[Some(1)]), Some(Some(10)));
        assert_eq!(version.exact.len(), 3, "only rates naming each position once are indexed");
    }

    #[test]
    fn utc_text_names_an_instant_to_the_second_and_its_milliseconds_when_any() {
        assert_eq!(utc_text(1_769_941_800_000), "2026-02-01T10:30:00Z");
        assert_eq!(utc_text(1_769_941_800_007), "2026-02-01T10:30:00.007Z");
        assert_eq!(utc_text(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_484, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2026, 1, 31) * DAY_MS, JAN_31_2026);
    }
}
