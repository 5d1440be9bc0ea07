//! Measures the kernel on its own: decode, rate and ack 1,000-event batches from bytes, with
//! 10,000 customers, two products per event, a dimensional rate and a prepaid grant each.
//! `cargo run --release -- [batches] [customers] [regions]` in server/bench/kernel_spike (a
//! measurement, not a test). Fewer customers (all hot in the cache) separate the kernel's computing
//! from its cache misses. Regions above 1 price by model x region, as the server's bench does
//! (server/bench/seed.py: 3 models x 2 regions, so 12 aggregates a customer); 1, the default, prices
//! by model alone, the workload earlier figures were measured on. A fourth argument, `explain`,
//! records what each event charged (ExplainLineItem's records, as the server does) and then builds
//! the explain index's block of them (explain_block.rs, chunks of four 4 KiB pages as server/explain_index.py
//! asks), timed apart: `--toggle-collect='*kernel_spike::index_explain*'` counts the block alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use _kernel::decode::wire;
use _kernel::explain_block;
use _kernel::kernel::Kernel;
use _kernel::tables::{
    self, ContractTable, CurveTable, CustomerTable, GrantTable, ProductTable, RateTable, Tables, VersionTable,
};

// The kernel reads no clock: time comes in with each call, fixed here so every run rates the same batches.
const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01
const CUSTOMERS: usize = 10_000; // by default
const BATCH: usize = 1_000;

fn unit(price: &str) -> CurveTable {
    CurveTable {
        kind: "UNIT".into(),
        price: price.into(),
        per_units: "1000000000000000000000".into(),
        package_size: String::new(),
        tiers: vec![],
    }
}

const MODELS: [&str; 3] = ["gpt4", "claude", "llama"];
const REGIONS: [&str; 4] = ["us-east", "eu-west", "ap-south", "sa-east"];

fn product(id: &str, value_key: &str, regions: usize) -> ProductTable {
    let mut pricing_dimensions = vec!["model".into()];
    if regions > 1 {
        pricing_dimensions.push("region".into());
    }
    ProductTable {
        id: id.into(),
        event_type: "ai".into(),
        aggregation: "SUM".into(),
        value_key: value_key.into(),
        filters: vec![],
        pricing_dimensions,
        empty_count_missing: false,
        empty_filter_missing: false,
    }
}

fn tables(customers: usize, regions: usize) -> Tables {
    let mut rates = Vec::new();
    for (index, model) in MODELS.iter().enumerate() {
        for (markup, region) in REGIONS[..regions].iter().enumerate() {
            for product in ["input", "output"] {
                let price = format!("{}", (index as i128 + 1 + markup as i128) * 10_000_000_000_000_000);
                let mut required = vec![(0, (*model).into())];
                if regions > 1 {
                    required.push((1, (*region).into()));
                }
                rates.push(RateTable { product_id: product.into(), required, curve: unit(&price) });
            }
        }
    }
    Tables {
        future_skew_ms: 300_000,
        dedupe_window_ms: 35 * 86_400_000,
        products: vec![product("input", "input_tokens", regions), product("output", "output_tokens", regions)],
        versions: vec![VersionTable { rate_card_id: "ai".into(), number: 1, rates }],
        timelines: vec![vec![(0, 0)]],
        customers: (0..customers)
            .map(|c| CustomerTable {
                id: format!("customer-{c}"),
                contracts: vec![ContractTable {
                    id: format!("contract-{c}"),
                    rate_card_id: "ai".into(),
                    starting_at_ms: NOW_MS - 86_400_000,
                    ending_before_ms: None,
                    block: false,
                    overage_price: "1000000000000000000".into(),
                    timeline: 0,
                    overrides: vec![],
                    top_up_refused: false,
                }],
                grants: vec![GrantTable {
                    id: format!("grant-{c}"),
                    amount_picos: "1000000000000000000".into(),
                    priority: 0,
                    applicable_product_ids: vec![],
                    starts_at_ms: 0,
                    expires_at_ms: None,
                    creation_order: 0,
                    rollover_fraction_e18: String::new(),
                    use_ends_at_rollover: false,
                    expiring_at_rollover_rolls: false,
                }],
                closed_periods: vec![],
            })
            .collect(),
    }
}

fn batch(number: usize, customers: usize, regions: usize) -> Vec<u8> {
    let events = (0..BATCH)
        .map(|i| {
            let n = number * BATCH + i;
            let mut dimensions = vec![wire::DimensionEntry { key: "model".into(), value: MODELS[n % 3].into() }];
            if regions > 1 {
                dimensions
                    .push(wire::DimensionEntry { key: "region".into(), value: REGIONS[(n / 3) % regions].into() });
            }
            wire::UsageEvent {
                transaction_id: format!("tx-{n}"),
                customer_id: format!("customer-{}", (n * 7919) % customers),
                event_type: "ai".into(),
                timestamp_ms: NOW_MS + (n as i64 % 3_600_000),
                dimensions,
                values: vec![
                    wire::ValueEntry { key: "input_tokens".into(), value: (n % 5000) as f64 },
                    wire::ValueEntry { key: "output_tokens".into(), value: (n % 700) as f64 + 0.5 },
                ],
                reservation_id: String::new(),
            }
        })
        .collect();
    wire::UsageBatch { batch_id: format!("b{number}"), events }.encode_to_vec()
}

/// Counts heap allocations, a figure the machine's load does not blur.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed through as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; ptr and layout come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// CPU time of this process, in ns.
fn cpu_ns() -> u128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the process CPU clock is readable");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

/// Minor page faults the process has taken so far: pages it touched for the first time.
fn minor_faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the valid, exclusively borrowed `usage`.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(status, 0, "the process's resource usage is readable");
    usage.ru_minflt
}

/// Rates the batches in order; returns how many events were accepted. Not inlined, so that
/// `valgrind --tool=callgrind --toggle-collect='*kernel_spike::rate*'` counts the rating alone.
/// With `explain`, each batch's records are taken after it, as the server takes them. `acks` hashes
/// each batch's ack bytes and digest, so a change to rating can be checked to leave them as they were.
#[inline(never)]
fn rate(kernel: &mut Kernel, batches: &[Vec<u8>], explain: &mut Option<Vec<Vec<u8>>>, acks: &mut DefaultHasher) -> u32 {
    let mut accepted = 0;
    for (seq, bytes) in batches.iter().enumerate() {
        let (ack, ack_digest) = kernel.ingest(bytes, NOW_MS + 3_600_000, seq as u64 + 1).expect("decodes");
        (&ack, ack_digest).hash(acks);
        accepted += wire::IngestAck::decode(ack.as_slice()).expect("an ack").accepted;
        if let Some(records) = explain {
            records.push(kernel.take_explain());
        }
    }
    accepted
}

/// The explain index's block of the records (one block, as the server builds one per flush);
/// returns its bytes, read as the binding reads them. Not inlined, for callgrind's --toggle-collect.
#[inline(never)]
fn index_explain(builder: &mut explain_block::Builder, records: &[Vec<u8>]) -> usize {
    const CHUNK_BYTES: usize = 4 * 4096 - 16; // server/explain_index.py
    let buffers: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    builder.build(&buffers, 0, CHUNK_BYTES).expect("the kernel's records");
    builder.chunks().chain(builder.periods()).map(|(k, v)| k.len() + v.len()).sum()
}

/// A digest of the records and of the block's entries, so that a change to recording or to the block
/// can be checked to leave their bytes as they were (compare the printed digest before and after).
fn digest(records: &[Vec<u8>], builder: &explain_block::Builder) -> u64 {
    let mut hasher = DefaultHasher::new();
    records.hash(&mut hasher);
    for (key, value) in builder.chunks().chain(builder.periods()) {
        (key, value).hash(&mut hasher);
    }
    hasher.finish()
}

fn main() {
    let mut kernel = Kernel::default();
    let count: usize = std::env::args().nth(1).map_or(200, |n| n.parse().expect("a batch count"));
    let customers: usize = std::env::args().nth(2).map_or(CUSTOMERS, |n| n.parse().expect("a customer count"));
    let regions: usize = std::env::args().nth(3).map_or(1, |n| n.parse().expect("a region count"));
    assert!((1..=REGIONS.len()).contains(&regions), "1 to {} regions", REGIONS.len());
    let mut explain = match std::env::args().nth(4).as_deref() {
        None => None,
        Some("explain") => Some(Vec::new()),
        Some(other) => panic!("the fourth argument is `explain`, not {other:?}"),
    };
    if explain.is_some() {
        kernel.set_explain(Some(1));
    }
    kernel.load_tables(&tables::encode(&tables(customers, regions))).expect("the spike's tables load");
    let batches: Vec<Vec<u8>> = (0..count).map(|number| batch(number, customers, regions)).collect();
    let started = std::time::Instant::now();
    let cpu_started = cpu_ns();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let faults_before = minor_faults();
    let mut acks = DefaultHasher::new();
    let accepted = rate(&mut kernel, &batches, &mut explain, &mut acks);
    let elapsed = started.elapsed();
    let cpu = cpu_ns() - cpu_started;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let faults = minor_faults() - faults_before;
    let indexed = explain.map(|records| {
        let mut builder = explain_block::Builder::new();
        let cpu_started = cpu_ns();
        let bytes = index_explain(&mut builder, &records);
        let cpu = cpu_ns() - cpu_started;
        let digest = digest(&records, &builder);
        builder.trim();
        (cpu, bytes, records.iter().map(Vec::len).sum::<usize>(), digest)
    });
    let events = batches.len() * BATCH;
    assert_eq!(accepted as usize, events, "every spike event is accepted");
    if events == 0 {
        return;
    }
    println!(
        "{} batches of {BATCH} events (2 products each, {customers} customers, {regions} regions): {:.0} ns CPU/event ({:.0} ns wall), {:.2} M events/s of CPU, {:.1} allocations/event, {:.1} minor page faults/1,000 events",
        batches.len(),
        cpu as f64 / events as f64,
        elapsed.as_nanos() as f64 / events as f64,
        events as f64 / (cpu as f64 / 1e9) / 1e6,
        allocations as f64 / events as f64,
        faults as f64 * 1000.0 / events as f64
    );
    // What rating left: the acks and the kernel's state (its snapshot), outside the timing.
    let mut state = DefaultHasher::new();
    kernel.snapshot().hash(&mut state);
    println!("ack digest {:016x}, state digest {:016x}", acks.finish(), state.finish());
    if let Some((cpu, bytes, records, digest)) = indexed {
        println!(
            "explain block: {:.0} ns CPU/event, {records} bytes of records -> {bytes} bytes of entries (digest {digest:016x})",
            cpu as f64 / events as f64
        );
    }
}
