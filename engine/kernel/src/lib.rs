//! Tariff's rating kernel: the usage hot path over raw UsageBatch bytes.
//!
//! One module per stage; none but `bindings` knows Python, so `cargo test` covers the money
//! arithmetic on its own. Pure: no file, network, clock, thread or randomness; time comes in
//! with each call. See README.md for the API and the tables' format.

pub mod account;
pub mod accounts;
pub mod ack;
pub mod append;
pub mod authorize;
pub mod balance_wire;
pub mod batch;
pub mod buckets;
pub mod credits;
pub mod customer_key;
pub mod decode;
pub mod dedupe;
pub mod draw;
pub mod due;
pub mod explain;
pub mod explain_block;
pub mod explain_chunk;
pub mod holds;
pub mod invoice;
pub mod kernel;
pub mod kernel_snapshot;
pub mod load_tables;
pub mod money;
pub mod prefetch;
pub mod price;
pub mod rater;
pub mod reads;
pub mod reprice;
pub mod rerate;
pub mod resettle;
pub mod rollover;
pub mod route;
pub mod snapshot;
pub mod split_hours;
pub mod tables;
pub mod touch;
pub mod undecodable;
pub mod warm;

mod bindings;

/// Proptest's case count: small by default (make test), TARIFF_PROPTEST_CASES for the soak.
#[cfg(test)]
pub(crate) fn test_config() -> proptest::test_runner::Config {
    let cases = std::env::var("TARIFF_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    proptest::test_runner::Config { cases, failure_persistence: None, ..proptest::test_runner::Config::default() }
}
