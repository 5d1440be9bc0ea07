//! Pins the ack bytes and batch digests of a fixed sequence of batches, as computed by the kernel
//! before its ingest path was optimised: the journal stores each batch's digest and replay asserts
//! it, so an optimisation that changed either would refuse every existing data directory.
//!
//! The batches cover several products (SUM, COUNT, MAX, UNIQUE_COUNT, LATEST with a filter), every
//! price model, two versions, an override, restricted and unrestricted grants, refunds (a VOLUME
//! price falling), duplicates within and across batches, a conflict, and each kind of rejection.

use prost::Message;

use _kernel::decode::wire;
use _kernel::kernel::Kernel;
use _kernel::tables::{
    self, ContractTable, CurveTable, CustomerTable, GrantTable, OverrideTable, ProductTable, RateTable, Tables,
    VersionTable,
};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;
const ONE: &str = "1000000000000000000"; // 1 at 10^-18

fn curve(kind: &str, price: &str, tiers: Vec<(&str, &str, &str)>) -> CurveTable {
    CurveTable {
        kind: kind.into(),
        price: price.into(),
        per_units: ONE.into(),
        package_size: "10000000000000000000".into(),
        tiers: tiers.into_iter().map(|(a, b, c)| (a.into(), b.into(), c.into())).collect(),
    }
}

fn product(
    id: &str,
    aggregation: &str,
    value_key: &str,
    dimensions: &[&str],
    filters: &[(&str, &str)],
) -> ProductTable {
    ProductTable {
        id: id.into(),
        event_type: "ai".into(),
        aggregation: aggregation.into(),
        value_key: value_key.into(),
        filters: filters.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        pricing_dimensions: dimensions.iter().map(|d| (*d).into()).collect(),
        empty_count_missing: false,
        empty_filter_missing: false,
    }
}

fn rate(product_id: &str, required: &[(u32, &str)], curve: CurveTable) -> RateTable {
    RateTable {
        product_id: product_id.into(),
        required: required.iter().map(|(p, v)| (*p, (*v).into())).collect(),
        curve,
    }
}

fn version(number: u32, input_price: &str) -> VersionTable {
    let volume = vec![("100000000000000000000", ONE, "0"), ("", "500000000000000000", "0")];
    let graduated =
        vec![("5000000000000000000", "20000000000000000", "1000000000000000000"), ("", "10000000000000000", "0")];
    VersionTable {
        rate_card_id: "ai".into(),
        number,
        rates: vec![
            rate("input", &[(0, "gpt4"), (1, "eu")], curve("UNIT", "30000000000000000", vec![])),
            rate("input", &[(0, "gpt4")], curve("UNIT", input_price, vec![])),
            rate("input", &[(0, "claude")], curve("UNIT", "20000000000000000", vec![])),
            rate("output", &[], curve("GRADUATED", "", graduated)),
            rate("calls", &[], curve("PACKAGE", "70000000000000000", vec![])),
            rate("peak", &[], curve("UNIT", "1500000000000000000", vec![])),
            rate("compute", &[], curve("VOLUME", "", volume)),
            rate("users", &[], curve("FLAT", "3000000000000000000", vec![])),
            rate("seats", &[], curve("UNIT", "2500000000000000000", vec![])),
        ],
    }
}

fn grant(id: &str, amount: &str, priority: i64, applicable: &[&str], expires: Option<i64>, order: i64) -> GrantTable {
    GrantTable {
        id: id.into(),
        amount_picos: amount.into(),
        priority,
        applicable_product_ids: applicable.iter().map(|p| (*p).into()).collect(),
        starts_at_ms: 0,
        expires_at_ms: expires,
        creation_order: order,
        rollover_fraction_e18: String::new(),
        use_ends_at_rollover: false,
        expiring_at_rollover_rolls: false,
    }
}

fn customer(id: &str, block: bool, grants: Vec<GrantTable>, overrides: Vec<OverrideTable>) -> CustomerTable {
    CustomerTable {
        id: id.into(),
        contracts: vec![ContractTable {
            id: format!("contract-{id}"),
            rate_card_id: "ai".into(),
            starting_at_ms: T0 - 86_400_000,
            ending_before_ms: None,
            block,
            overage_price: "1000000000001000000".into(),
            timeline: 0,
            overrides,
            top_up_refused: false,
        }],
        grants,
        closed_periods: vec![],
    }
}

fn tables() -> Tables {
    let discount = OverrideTable {
        product_id: "input".into(),
        matches: vec![("model".into(), "claude".into())],
        starting_at_ms: 0,
        ending_before_ms: None,
        price: None,
        multiplier: "800000000000000000".to_string().into(),
        multiplier_reduced: false,
    };
    Tables {
        future_skew_ms: 300_000,
        dedupe_window_ms: 35 * 86_400_000,
        products: vec![
            product("output", "SUM", "output_tokens", &[], &[]),
            product("input", "SUM", "input_tokens", &["model", "region"], &[]),
            product("calls", "COUNT", "", &["model"], &[]),
            product("peak", "MAX", "gpu", &[], &[]),
            product("compute", "SUM", "gpu", &[], &[]),
            product("users", "UNIQUE_COUNT", "user", &[], &[]),
            product("seats", "LATEST", "seats", &[], &[("region", "eu")]),
        ],
        versions: vec![version(1, "10000000000000000"), version(2, "40000000000000000")],
        timelines: vec![vec![(0, 0), (T0 + 2 * HOUR, 1)]],
        customers: vec![
            customer(
                "acme",
                false,
                vec![
                    grant("promo", "5000000000000", 0, &["output"], Some(T0 + 3 * HOUR), 0),
                    grant("prepaid", "150000000000000", 1, &[], None, 1),
                ],
                vec![discount],
            ),
            customer("globex", true, vec![grant("small", "2000000000000", 0, &[], None, 0)], vec![]),
            CustomerTable { id: "initech".into(), contracts: vec![], grants: vec![], closed_periods: vec![] },
        ],
    }
}

type Entries<'a> = &'a [(&'a str, &'a str)];
type Values<'a> = &'a [(&'a str, f64)];

fn event(tx: &str, customer: &str, ts: i64, dimensions: Entries, values: Values) -> wire::UsageEvent {
    wire::UsageEvent {
        transaction_id: tx.into(),
        customer_id: customer.into(),
        event_type: "ai".into(),
        timestamp_ms: ts,
        dimensions: dimensions
            .iter()
            .map(|(k, v)| wire::DimensionEntry { key: (*k).into(), value: (*v).into() })
            .collect(),
        values: values.iter().map(|(k, v)| wire::ValueEntry { key: (*k).into(), value: *v }).collect(),
        reservation_id: String::new(),
    }
}

fn batches() -> Vec<Vec<u8>> {
    let full: Values = &[("input_tokens", 1200.0), ("output_tokens", 0.5), ("gpu", 60.0), ("seats", 3.0)];
    let gpt4_eu: Entries = &[("model", "gpt4"), ("region", "eu"), ("user", "u1")];
    let first = vec![
        event("t1", "acme", T0 + 10, gpt4_eu, full),
        event(
            "t2",
            "acme",
            T0 + 20,
            &[("model", "claude"), ("user", "u2")],
            &[("input_tokens", 300.25), ("output_tokens", 7000.0), ("gpu", 40.0)],
        ),
        event("t1", "acme", T0 + 10, &[("user", "u1"), ("region", "eu"), ("model", "gpt4")], full), // duplicate, maps reordered
        event("t1", "acme", T0 + 11, gpt4_eu, full),                                                // conflict
        event("t3", "nobody", T0, &[], &[]),
        event("t4", "acme", T0, &[("model", "gpt4")], &[("input_tokens", -1.0)]),
        event(
            "t5",
            "acme",
            T0 + HOUR,
            &[("model", "mistral"), ("user", "u1")],
            &[("input_tokens", 1.0), ("output_tokens", 1.0), ("gpu", 1.0)],
        ),
        event("t6", "initech", T0, &[], &[]),
        event("t7", "acme", T0 + 10 * HOUR, &[], &[]),
        event("", "acme", T0, &[], &[]),
        event(
            "t8",
            "globex",
            T0 + 5,
            &[("model", "gpt4"), ("user", "x")],
            &[("input_tokens", 100.0), ("output_tokens", 1e-7), ("gpu", 0.1)],
        ),
        event(
            "t9",
            "acme",
            T0 + 30,
            &[("model", "claude"), ("user", "u2")],
            &[("input_tokens", 0.1), ("output_tokens", 1.0), ("gpu", 1.0)],
        ),
        event("t14", "acme", T0 + 31, &[("model", "claude")], &[("output_tokens", 1.0), ("gpu", 1.0)]),
    ];
    let second = vec![
        event(
            "t2",
            "acme",
            T0 + 20,
            &[("user", "u2"), ("model", "claude")],
            &[("output_tokens", 7000.0), ("gpu", 40.0), ("input_tokens", 300.25)],
        ),
        event(
            "t10",
            "acme",
            T0 + 2 * HOUR + 5,
            &[("model", "gpt4"), ("user", "u3")],
            &[("input_tokens", 1000.0), ("output_tokens", 10.0), ("gpu", 200.0)],
        ),
        event(
            "t11",
            "acme",
            T0 + 2 * HOUR + 6,
            gpt4_eu,
            &[("input_tokens", 1.0), ("output_tokens", 1.0), ("gpu", 150.0), ("seats", 1.5)],
        ),
        event(
            "t12",
            "globex",
            T0 + 2 * HOUR,
            &[("model", "claude"), ("user", "y")],
            &[("input_tokens", 5000.0), ("output_tokens", 1.0), ("gpu", 1.0)],
        ),
        event(
            "t13",
            "acme",
            T0 + 2 * HOUR + 7,
            &[("model", "gpt4"), ("user", "u1"), ("user", "u4")],
            &[("input_tokens", 2.0), ("input_tokens", 3.0), ("output_tokens", 0.0), ("gpu", 0.0)],
        ),
    ];
    [("b1", first), ("b2", second)]
        .into_iter()
        .map(|(id, events)| wire::UsageBatch { batch_id: id.into(), events }.encode_to_vec())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (ack hex, digest hex) per batch, computed by the kernel before the ingest path was optimised.
// The acks' messages are not in the digests: a message reworded changes an ack's bytes here, never a digest
// (NO_ACTIVE_CONTRACT naming timestamp_ms changed the first ack's bytes; its digest is the one pinned before).
const PINNED: [(&str, &str); 2] = [
    (
        "0a0262311004180122490803120274311806223f7472616e73616374696f6e5f696420277431272077617320616c7265616479206163636570746564207769746820646966666572656e7420636f6e74656e74222a08041202743318022220637573746f6d657220276e6f626f64792720646f6573206e6f74206578697374223e0805120274341801223476616c7565735b27696e7075745f746f6b656e73275d206973202d312e303a206d757374206e6f74206265206e65676174697665226a0806120274351807226072617465206361726420276169272076657273696f6e203120686173206e6f207261746520666f722070726f647563742027696e707574272077697468207b276d6f64656c273a20276d69737472616c272c2027726567696f6e273a2027277d225008071202743618032246637573746f6d65722027696e69746563682720686173206e6f20636f6e747261637420636f766572696e672074696d657374616d705f6d73203137363732323536303030303022450808120274371804223b74696d657374616d705f6d732031373637323631363030303030206973206d6f7265207468616e20333030207320696e2074686520667574757265222008091801221a7472616e73616374696f6e5f69642069732072657175697265642240080c12037431341801223576616c7565735b27696e7075745f746f6b656e73275d2069732072657175697265642062792070726f647563742027696e707574272801",
        "30ab9a3fe1b4543dfe351598b0162ff3",
    ),
    ("0a026232100418012802", "6d7acc3fbe4886be5f450dddcbce9049"),
];

/// XXH3-128 of the Debug text of every customer's usage and balance after the batches (same code).
const PINNED_STATE: &str = "0085e2c59f4b89fdc11f09a4e8853b1e";

/// (ack hex, digest hex) of the second batch sent again to a kernel restored from a snapshot.
const PINNED_AGAIN: (&str, &str) = ("0a02623218052802", "aa822fd0c19b14471bba7a63130a2f61");

fn state(kernel: &Kernel, now_ms: i64) -> String {
    let text: String = ["acme", "globex", "initech"]
        .iter()
        .map(|c| format!("{:?}{:?}{:?}", kernel.usage(c), kernel.balance(c, now_ms), kernel.grant_ids(c)))
        .collect();
    hex(&xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_be_bytes())
}

#[test]
fn acks_and_digests_are_unchanged() {
    let mut kernel = Kernel::default();
    kernel.load_tables(&tables::encode(&tables())).expect("the tables load");
    let received = T0 + 2 * HOUR + 60_000;
    let got: Vec<(String, String)> = batches()
        .iter()
        .enumerate()
        .map(|(seq, bytes)| {
            let (ack, digest) = kernel.ingest(bytes, received, seq as u64 + 1).expect("a batch");
            (hex(&ack), hex(&digest))
        })
        .collect();
    for (at, ((ack, digest), (pinned_ack, pinned_digest))) in got.iter().zip(PINNED).enumerate() {
        assert_eq!(ack, pinned_ack, "batch {at}: ack bytes");
        assert_eq!(digest, pinned_digest, "batch {at}: digest");
    }
    assert_eq!(state(&kernel, received), PINNED_STATE, "usage and balances");
    let mut restored = Kernel::restore(&kernel.snapshot()).expect("a snapshot restores");
    restored.load_tables(&tables::encode(&tables())).expect("the tables load");
    assert_eq!(state(&restored, received), PINNED_STATE, "usage and balances after a snapshot");
    // Dedupe survives the snapshot: the second batch again is five duplicates, and changes nothing.
    let (ack, digest) = restored.ingest(&batches()[1], received, 3).expect("a batch");
    assert_eq!((hex(&ack).as_str(), hex(&digest).as_str()), PINNED_AGAIN);
    assert_eq!(state(&restored, received), PINNED_STATE, "duplicates change nothing");
}

/// The snapshot of the state after the batches, as the kernel wrote it in format 1 (dedupe entries by
/// transaction id per account): a data directory from that release restores with its dedupe intact.
#[test]
fn a_format_1_snapshot_restores() {
    let text = include_str!("snapshot_format1.hex").trim();
    let bytes: Vec<u8> =
        (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap()).collect();
    let mut restored = Kernel::restore(&bytes).expect("a format-1 snapshot restores");
    restored.load_tables(&tables::encode(&tables())).expect("the tables load");
    let received = T0 + 2 * HOUR + 60_000;
    assert_eq!(state(&restored, received), PINNED_STATE, "usage and balances");
    let (ack, digest) = restored.ingest(&batches()[1], received, 3).expect("a batch");
    assert_eq!((hex(&ack).as_str(), hex(&digest).as_str()), PINNED_AGAIN, "its dedupe entries survive");
}
