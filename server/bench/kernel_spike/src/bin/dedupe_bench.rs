//! Timings of the kernel's dedupe table (not a test: figures to report, nothing asserted).
//!
//! `cargo run --release --bin dedupe_bench -- MODE [IDS | PATH]` in server/bench/kernel_spike, MODE
//! one of `restore` (restore a kernel snapshot holding IDS dedupe ids, or the snapshot file at
//! PATH), `snapshot` (restore, then snapshot it again) or `ops` (ns per lookup and insert against a
//! table of IDS ids, the kernel's table and a hash map, twice each, in one run; the thread's CPU
//! time, as the machine is shared and wall time misleads there). Run it under `/usr/bin/time -v`
//! for the peak RSS.

use std::time::Instant;

use _kernel::dedupe::{Held, Key, Seen, Table};
use _kernel::kernel::Kernel;
use _kernel::snapshot::{encode, Stored, FORMAT};
use rustc_hash::FxHashMap;

/// xorshift64*: the ids are hashes, so uniform random keys stand for them.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn key(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn snapshot_of(ids: usize) -> Vec<u8> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut dedupe: Vec<(u128, Seen)> =
        (0..ids).map(|i| (random.key(), Seen { digest: random.key(), at_ms: i as i64 })).collect();
    dedupe.sort_unstable_by_key(|(k, _)| *k);
    encode(&Stored {
        format: FORMAT,
        strings: vec![],
        accounts: vec![],
        dedupe,
        clock_ms: 0,
        dedupe_in_segments: false,
    })
}

/// The dedupe table's operations as the kernel uses them.
trait Dedupe: Default {
    fn name() -> &'static str;
    fn contains(&self, key: Key) -> bool;
    /// The ack path: look the key up, then record the acceptance where it was found.
    fn accept(&mut self, key: Key, held: Held) -> bool;
    fn len(&self) -> usize;
}

impl Dedupe for FxHashMap<Key, Held> {
    fn name() -> &'static str {
        "FxHashMap"
    }
    fn contains(&self, key: Key) -> bool {
        self.contains_key(&key)
    }
    fn accept(&mut self, key: Key, held: Held) -> bool {
        match self.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(held);
                true
            }
        }
    }
    fn len(&self) -> usize {
        self.len()
    }
}

impl Dedupe for Table {
    fn name() -> &'static str {
        "dedupe::Table"
    }
    fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }
    fn accept(&mut self, key: Key, held: Held) -> bool {
        let place = self.place(key);
        let new = self.held(place).is_none();
        if new {
            self.put(key, place, held);
        }
        new
    }
    fn len(&self) -> usize {
        self.len()
    }
}

/// CPU time of this thread, in ns.
fn cpu_ns() -> u128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread CPU clock is readable");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

fn per(started_cpu_ns: u128, count: usize) -> f64 {
    (cpu_ns() - started_cpu_ns) as f64 / count as f64
}

fn ops<T: Dedupe>(ids: usize) {
    let mut random = Random(7);
    let keys: Vec<Key> = (0..ids).map(|_| random.key().into()).collect();
    let held = Held::from(Seen { digest: 1, at_ms: 2 });
    let mut table = T::default();
    let started = cpu_ns();
    for &k in &keys {
        table.accept(k, held);
    }
    let fill = per(started, ids);
    let probes = 1_000_000.min(ids);
    let mut found = 0u64;
    let started = cpu_ns();
    for i in 0..probes {
        found += u64::from(table.contains(keys[(i * 7919) % ids]));
    }
    let hit = per(started, probes);
    let fresh: Vec<Key> = (0..probes).map(|_| random.key().into()).collect();
    let started = cpu_ns();
    for &k in &fresh {
        found += u64::from(table.contains(k));
    }
    let miss = per(started, probes);
    let started = cpu_ns();
    for &k in &fresh {
        found += u64::from(table.accept(k, held));
    }
    let insert = per(started, probes);
    println!(
        "{:>14} {ids} ids: fill {fill:.1} ns/insert CPU, hit {hit:.1} ns, miss {miss:.1} ns, accept new {insert:.1} ns ({found}, {})",
        T::name(),
        table.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("restore", String::as_str);
    let arg = args.get(2).map_or("10000000", String::as_str);
    if mode == "ops" {
        let ids = arg.parse().expect("a count of ids");
        ops::<FxHashMap<Key, Held>>(ids);
        ops::<Table>(ids);
        ops::<FxHashMap<Key, Held>>(ids);
        ops::<Table>(ids);
        return;
    }
    // IDS, or the path of a snapshot file.
    let bytes = match arg.parse() {
        Ok(ids) => snapshot_of(ids),
        Err(_) => std::fs::read(arg).expect("a snapshot file"),
    };
    let started = Instant::now();
    let kernel = Kernel::restore(&bytes).expect("restores");
    println!("restore ({} MB): {:.2} s", bytes.len() >> 20, started.elapsed().as_secs_f64());
    if mode == "snapshot" {
        drop(bytes);
        let started = Instant::now();
        let again = kernel.snapshot();
        println!("snapshot: {:.2} s ({} MB)", started.elapsed().as_secs_f64(), again.len() >> 20);
    }
}
