//! `Kernel::period_lines`: lines grouped by product and pricing-dimension values, each split by the
//! rate card versions that priced its hours, its credits and overage adding up to its amount.

use prost::Message;

use _kernel::decode::wire;
use _kernel::invoice::{CreditWanted, GrantCredit, NoLines};
use _kernel::kernel::Kernel;
use _kernel::tables::{
    self, ContractTable, CurveTable, CustomerTable, GrantTable, ProductTable, RateTable, Tables, VersionTable,
};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, the contract's start
const HOUR: i64 = 3_600_000;
const ONE: &str = "1000000000000000000"; // 1 at 10^-18
const PICOS: i128 = 1_000_000_000_000;

fn version(number: u32, price_e18: &str) -> VersionTable {
    let curve = CurveTable {
        kind: "UNIT".into(),
        price: price_e18.into(),
        per_units: ONE.into(),
        package_size: ONE.into(),
        tiers: vec![],
    };
    VersionTable {
        rate_card_id: "card".into(),
        number,
        rates: vec![RateTable { product_id: "tokens".into(), required: vec![], curve }],
    }
}

fn tables() -> Tables {
    Tables {
        future_skew_ms: 300_000,
        dedupe_window_ms: 35 * 86_400_000,
        products: vec![ProductTable {
            id: "tokens".into(),
            event_type: "ai".into(),
            aggregation: "SUM".into(),
            value_key: "n".into(),
            filters: vec![],
            pricing_dimensions: vec!["model".into()],
            empty_count_missing: false,
            empty_filter_missing: false,
        }],
        // Version 1 prices 2 a token, version 2 (from hour 3) 3 a token.
        versions: vec![version(1, "2000000000000000000"), version(2, "3000000000000000000")],
        timelines: vec![vec![(0, 0), (T0 + 3 * HOUR, 1)]],
        customers: vec![CustomerTable {
            id: "acme".into(),
            contracts: vec![ContractTable {
                id: "c".into(),
                rate_card_id: "card".into(),
                starting_at_ms: T0,
                ending_before_ms: None,
                block: false,
                overage_price: "1500000000000000000".into(),
                timeline: 0,
                overrides: vec![],
                top_up_refused: false,
            }],
            grants: vec![GrantTable {
                id: "prepaid".into(),
                amount_picos: (10 * PICOS).to_string(),
                priority: 0,
                applicable_product_ids: vec![],
                starts_at_ms: 0,
                expires_at_ms: None,
                rollover_fraction_e18: String::new(),
                use_ends_at_rollover: false,
                expiring_at_rollover_rolls: false,
                creation_order: 0,
            }],
            closed_periods: vec![],
        }],
    }
}

fn batch(events: &[(&str, i64, &str, f64)]) -> Vec<u8> {
    let events = events
        .iter()
        .map(|(tx, ts, model, n)| wire::UsageEvent {
            transaction_id: (*tx).into(),
            customer_id: "acme".into(),
            event_type: "ai".into(),
            timestamp_ms: *ts,
            dimensions: vec![wire::DimensionEntry { key: "model".into(), value: (*model).into() }],
            values: vec![wire::ValueEntry { key: "n".into(), value: *n }],
            reservation_id: String::new(),
        })
        .collect();
    wire::UsageBatch { batch_id: "b".into(), events }.encode_to_vec()
}

fn kernel() -> Kernel {
    let mut kernel = Kernel::default();
    kernel.load_tables(&tables::encode(&tables())).expect("tables load");
    let usage = batch(&[
        ("t1", T0 + 10, "gpt4", 2.0),       // version 1: 4
        ("t2", T0 + HOUR, "gpt4", 1.0),     // version 1: 2
        ("t3", T0 + 4 * HOUR, "gpt4", 2.0), // version 2: 6 (credits run out at 10: 2 of overage)
        ("t4", T0 + 5 * HOUR, "claude", 1.0),
        ("t5", T0 + 40 * 24 * HOUR, "gpt4", 1.0), // the next period
    ]);
    kernel.ingest(&usage, T0 + 41 * 24 * HOUR, 1).expect("a batch");
    kernel
}

#[test]
fn lines_group_by_dimension_values_and_split_by_version() {
    let period = kernel().period_lines("acme", T0 + 7 * 24 * HOUR, true, None).expect("lines");
    assert_eq!((period.period_start_ms, period.period_end_ms), (T0, T0 + 31 * 24 * HOUR));
    assert_eq!(period.overage_price, 1_500_000_000_000_000_000);
    let lines: Vec<(&str, &[String])> =
        period.lines.iter().map(|l| (l.product_id.as_str(), &l.dimensions[..])).collect();
    assert_eq!(lines, vec![("tokens", &["claude".to_string()][..]), ("tokens", &["gpt4".to_string()][..])]);
    let gpt4 = &period.lines[1];
    assert_eq!((gpt4.quantity, gpt4.events, gpt4.amount), (5 * 10i128.pow(18), 3, 12 * PICOS));
    let parts: Vec<(u32, i128, u64, i128)> =
        gpt4.parts.iter().map(|p| (p.version, p.quantity, p.events, p.amount)).collect();
    assert_eq!(parts, vec![(1, 3 * 10i128.pow(18), 2, 6 * PICOS), (2, 2 * 10i128.pow(18), 1, 6 * PICOS)]);
    assert_eq!(gpt4.credits, vec![("prepaid".to_string(), 10 * PICOS)]);
    assert_eq!(gpt4.overage, 2 * PICOS);
    // Credit ran out on gpt4: claude's 3 is all overage.
    let claude = &period.lines[0];
    assert_eq!((claude.amount, claude.overage, claude.credits.len()), (3 * PICOS, 3 * PICOS, 0));
    let grants: Vec<(&str, i128, i128)> = period.grants.iter().map(|g| (g.id.as_str(), g.amount, g.drawn)).collect();
    assert_eq!(grants, vec![("prepaid", 10 * PICOS, 10 * PICOS)]);
    for line in &period.lines {
        assert_eq!(line.parts.iter().map(|p| p.amount).sum::<i128>(), line.amount);
        assert_eq!(line.overage + line.credits.iter().map(|c| c.1).sum::<i128>(), line.amount);
    }
}

#[test]
fn a_period_read_takes_the_grant_credit_only_when_a_grant_of_the_period_wants_it() {
    // prepaid (no expiry, no rollover) is all drawn: credit 0, no breakage, when asked for; the lines as period_lines'.
    let kernel = kernel();
    let at = T0 + 7 * 24 * HOUR;
    let end = T0 + 31 * 24 * HOUR;
    let read = |wanted| kernel.period_read("acme", at, true, None, wanted).expect("a read");
    let (lines, credit) = read(None);
    assert_eq!((lines, credit), (kernel.period_lines("acme", at, true, None).expect("lines"), None));
    let no_rollover = CreditWanted { first_rollover_ms: i64::MAX, expiring: true };
    assert_eq!(read(Some(no_rollover)).1, None); // no grant expires or rolls over by the period's end
    let rolls_after = CreditWanted { first_rollover_ms: end + 1, expiring: true };
    assert_eq!(read(Some(rolls_after)).1, None);
    let rolls_by_end = CreditWanted { first_rollover_ms: end, expiring: false };
    let credit = vec![GrantCredit { id: "prepaid".into(), credit: 0, breakage: 0 }];
    assert_eq!(read(Some(rolls_by_end)).1, Some(credit));
    assert_eq!(kernel.period_read("nobody", at, true, None, Some(rolls_by_end)), Err(NoLines::UnknownCustomer));
}

#[test]
fn the_next_period_holds_only_its_own_usage_and_unknowns_say_why() {
    let kernel = kernel();
    let next = kernel.period_lines("acme", T0 + 40 * 24 * HOUR, true, None).expect("lines");
    assert_eq!(next.period_start_ms, T0 + 31 * 24 * HOUR);
    assert_eq!(next.lines.len(), 1);
    assert_eq!((next.lines[0].amount, next.lines[0].parts.len()), (3 * PICOS, 1));
    assert!(!next.closed);
    assert_eq!(kernel.period_lines("nobody", T0, true, None), Err(NoLines::UnknownCustomer));
    assert_eq!(kernel.period_lines("acme", T0 - 1, true, None), Err(NoLines::NoContract));
}

#[test]
fn a_switched_contracts_last_period_prices_its_own_hours_in_contract() {
    // Contract c ends on day 10 (its last period keeps its monthly end), d starts then: c's 2 tokens on day 1,
    // d's 1 on day 12, both at version 2 (3 a token).
    let mut switched = tables();
    let contracts = &mut switched.customers[0].contracts;
    contracts[0].ending_before_ms = Some(T0 + 10 * 24 * HOUR);
    contracts.push(ContractTable {
        id: "d".into(),
        rate_card_id: "card".into(),
        starting_at_ms: T0 + 10 * 24 * HOUR,
        ending_before_ms: None,
        block: false,
        overage_price: "1500000000000000000".into(),
        timeline: 0,
        overrides: vec![],
        top_up_refused: false,
    });
    let mut kernel = Kernel::default();
    kernel.load_tables(&tables::encode(&switched)).expect("tables load");
    let usage = batch(&[("c1", T0 + 24 * HOUR, "gpt4", 2.0), ("d1", T0 + 12 * 24 * HOUR, "gpt4", 1.0)]);
    kernel.ingest(&usage, T0 + 13 * 24 * HOUR, 1).expect("a batch");
    let parts = |in_contract: bool| {
        let period = kernel.period_lines("acme", T0, in_contract, None).expect("lines");
        assert_eq!((period.period_end_ms, period.lines[0].amount), (T0 + 31 * 24 * HOUR, 6 * PICOS));
        period.lines[0].parts.iter().map(|p| (p.version, p.quantity, p.amount)).collect::<Vec<_>>()
    };
    assert_eq!(parts(true), vec![(2, 2 * 10i128.pow(18), 6 * PICOS)]);
    // Without: every hour of the period, d's day 12 included (as closes of earlier releases were built).
    assert_eq!(parts(false), vec![(2, 3 * 10i128.pow(18), 9 * PICOS)]);
}
