//! The kernel tables as Python sends them (msgpack, see engine/tables.py): the compiled control
//! plane. Values wider than 64 bits (prices at 10^-18, amounts in picos) travel as decimal
//! integer text, since msgpack integers stop at 64 bits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Tables {
    pub future_skew_ms: i64,
    pub dedupe_window_ms: i64,
    pub products: Vec<ProductTable>,
    pub versions: Vec<VersionTable>,
    /// Version timelines: (effective_from_ms, index into `versions`), ascending.
    pub timelines: Vec<Vec<(i64, u32)>>,
    pub customers: Vec<CustomerTable>,
}

/// Some customers' routes and grants, compiled against tables already loaded (`Kernel::load_customers`):
/// an admin command that touches one customer recompiles that customer only.
#[derive(Debug, Serialize, Deserialize)]
pub struct CustomerTables {
    /// How many timelines the kernel holds already; `timelines` are appended after them.
    pub first_timeline: u32,
    pub timelines: Vec<Vec<(i64, u32)>>,
    pub customers: Vec<CustomerTable>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProductTable {
    pub id: String,
    pub event_type: String,
    pub aggregation: String,
    pub value_key: String,
    pub filters: Vec<(String, String)>,
    pub pricing_dimensions: Vec<String>,
    /// UNIQUE_COUNT: an empty counted dimension is a missing one (false: counted, as products created
    /// before CreateProduct.empty_count_missing were).
    #[serde(default)]
    pub empty_count_missing: bool,
    /// A filter on "" is met by an event leaving the dimension out, as by one sending it empty (false: only by
    /// one sending it, as products created before CreateProduct.empty_filter_missing were).
    #[serde(default)]
    pub empty_filter_missing: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionTable {
    pub rate_card_id: String,
    pub number: u32,
    /// Per product, most specific first.
    pub rates: Vec<RateTable>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RateTable {
    pub product_id: String,
    /// (position in the product's pricing_dimensions, required value).
    pub required: Vec<(u32, String)>,
    pub curve: CurveTable,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CurveTable {
    /// UNIT, GRADUATED, VOLUME, PACKAGE or FLAT.
    pub kind: String,
    /// At 10^-18: the unit price (UNIT), the package price (PACKAGE), the fee (FLAT).
    pub price: String,
    pub per_units: String,
    pub package_size: String,
    /// (up_to or "" when unbounded, unit_price, flat_price), at 10^-18.
    pub tiers: Vec<(String, String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CustomerTable {
    pub id: String,
    pub contracts: Vec<ContractTable>,
    pub grants: Vec<GrantTable>,
    pub closed_periods: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContractTable {
    pub id: String,
    pub rate_card_id: String,
    pub starting_at_ms: i64,
    pub ending_before_ms: Option<i64>,
    pub block: bool,
    /// Currency per pricing unit of overage, at 10^-18.
    pub overage_price: String,
    /// Index into `Tables::timelines`: the versions in force for this customer (cohorts applied).
    pub timeline: u32,
    pub overrides: Vec<OverrideTable>,
    /// The customer's top-up policy buys nothing in this contract's periods: it was set in another
    /// currency (tables from before it have none: false, it buys in every contract's periods).
    #[serde(default)]
    pub top_up_refused: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OverrideTable {
    pub product_id: String,
    pub matches: Vec<(String, String)>,
    pub starting_at_ms: i64,
    pub ending_before_ms: Option<i64>,
    /// At 10^-18; exactly one of the two is set.
    pub price: Option<String>,
    pub multiplier: Option<String>,
    /// The override's server-set `multiplier_reduced` (engine/contracts.py Override): its multiplier is
    /// reduced by its common factor with 10^18 before pricing (`PricedCurve::with_multiplier`); false (overrides
    /// added before it, and tables without the field) prices as those did, so their journals replay as before.
    #[serde(default)]
    pub multiplier_reduced: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GrantTable {
    pub id: String,
    pub amount_picos: String,
    pub priority: i64,
    pub applicable_product_ids: Vec<String>,
    pub starts_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub creation_order: i64,
    /// At 10^-18, in [0, 10^18]: the share of the remainder that rolls over at the end of the billing
    /// period in which the grant starts (tables from before rollover have none: 0).
    #[serde(default)]
    pub rollover_fraction_e18: String,
    /// With a rollover fraction: usable only for usage dated before the rollover (a grant granted since
    /// GrantCredits carries the flag; tables from before it have none: false, usable until it rolls over).
    #[serde(default)]
    pub use_ends_at_rollover: bool,
    /// With a rollover fraction and expires_at exactly at its rollover: rolls over there, as with no expiry (a
    /// grant granted since GrantCredits carries the flag; tables from before it have none: false, it simply
    /// expires there, its remainder breakage).
    #[serde(default)]
    pub expiring_at_rollover_rolls: bool,
}

pub fn decode(bytes: &[u8]) -> Result<Tables, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("kernel tables do not decode: {e}"))
}

pub fn decode_customers(bytes: &[u8]) -> Result<CustomerTables, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("customer tables do not decode: {e}"))
}

pub fn encode(tables: &Tables) -> Vec<u8> {
    rmp_serde::to_vec_named(tables).expect("tables always encode")
}

/// A published version added to the tables already loaded (`Kernel::append_version`), as
/// engine/tables.py's `TableCompiler.append_version` compiles it: the kernel then holds what a
/// whole load of the tables compiled after the publish would give, without compiling any route.
/// Every timeline belongs to one rate card (engine/tables.py keys them by card), so the version
/// is inserted into its card's timelines, in place when every contract naming one sees it (all of
/// them for a publish to everyone; for a cohort those only members' contracts name), into a copy
/// when only some do (a cohort's members among others); a timeline no member names is left alone.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionAppend {
    /// How many versions and timelines the kernel holds: the version becomes version
    /// `versions_held`, the `split` copies timelines `timelines_held` on.
    pub versions_held: u32,
    pub timelines_held: u32,
    pub version: VersionTable,
    pub effective_from_ms: i64,
    /// Timelines the version is inserted into in place: every one of the card for a publish to
    /// everyone, for a cohort those only its members' contracts name.
    pub in_place: Vec<u32>,
    /// Timelines copied with the version inserted, the copies appended in this order (a cohort):
    /// the members' contracts of the card move from each to its copy, the others' stay.
    pub split: Vec<u32>,
    /// The cohort's members (customer ids) whose contracts of the card move to the copies.
    pub members: Vec<String>,
}

pub fn decode_append(bytes: &[u8]) -> Result<VersionAppend, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("the version append does not decode: {e}"))
}
