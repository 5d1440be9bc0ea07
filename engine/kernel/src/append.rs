//! A publish without a whole load of the tables: the published version is compiled alone and
//! inserted into its rate card's timelines (tables::VersionAppend), so what a publish costs the
//! kernel, and what usage waits for, grows with the version and its card's timelines, not with
//! the customers. The result is what `load_tables` of the tables compiled after the publish gives:
//! the same versions and timelines as each contract sees them (indexes may differ, and name
//! nothing outside the catalog), the same symbols interned in the same order (the version's
//! strings are the only new ones either way, interned in the order `Catalog::compile` interns
//! them), and every account untouched but for its contracts' timeline indexes.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::kernel::Kernel;
use crate::route::{Catalog, Interner, Version};
use crate::tables::{self, Tables, VersionAppend, VersionTable};

impl Kernel {
    /// Adds a published version to the tables loaded (msgpack `VersionAppend` from
    /// engine/tables.py). Changes nothing when it is malformed or was compiled against other
    /// tables than those loaded (the caller then loads the whole tables).
    pub fn append_version(&mut self, bytes: &[u8]) -> Result<(), String> {
        let append = tables::decode_append(bytes)?;
        let catalog = &self.rater.catalog;
        if append.versions_held as usize != catalog.versions.len()
            || append.timelines_held as usize != catalog.timelines.len()
        {
            return Err(format!(
                "the version append follows {} versions and {} timelines, the kernel holds {} and {}: load the whole tables",
                append.versions_held,
                append.timelines_held,
                catalog.versions.len(),
                catalog.timelines.len()
            ));
        }
        let held = catalog.timelines.len();
        if append.in_place.iter().chain(&append.split).any(|&t| t as usize >= held) {
            return Err("the version append names a timeline the kernel does not hold".to_string());
        }
        let moves = self.member_moves(&append)?;
        let (effective_from_ms, in_place, split) = (append.effective_from_ms, append.in_place, append.split);
        let alone = alone(append.version, &self.rater.catalog);
        // Checked against a scratch interner first: compiling can fail only on a curve, and then no
        // symbol may have been interned.
        Catalog::compile(&alone, &mut Interner::default())?;
        let mut compiled = Catalog::compile(&alone, &mut self.rater.interner)?;
        let version = compiled.versions.pop().expect("one version compiled");
        self.insert_version(version, effective_from_ms, &in_place, &split);
        for (customer_id, contract, timeline) in moves {
            let account = self.accounts.get_mut(customer_id.as_str()).expect("checked by member_moves");
            let route = account.route.as_mut().expect("checked by member_moves");
            route.contracts[contract].timeline = timeline;
        }
        Ok(())
    }

    /// (customer, contract position, new timeline) for every contract of the card a member holds on
    /// a split timeline (one on an `in_place` timeline stays: the version comes to it); Err,
    /// changing nothing, when a member is unknown or holds a contract of the card on a timeline the
    /// append neither splits nor inserts into. That only members hold an `in_place` timeline of a
    /// cohort's version is the compiler's word (it counts each timeline's contracts): checking it
    /// here would cost a pass over every customer.
    fn member_moves(&self, append: &VersionAppend) -> Result<Vec<(String, usize, u32)>, String> {
        let copies: FxHashMap<u32, u32> =
            append.split.iter().enumerate().map(|(i, &t)| (t, append.timelines_held + i as u32)).collect();
        let stays: FxHashSet<u32> = append.in_place.iter().copied().collect();
        let card = self.rater.interner.get(&append.version.rate_card_id);
        let mut moves = Vec::new();
        for customer_id in &append.members {
            let Some(route) = self.accounts.get(customer_id.as_str()).and_then(|a| a.route.as_ref()) else {
                return Err(format!("the version append names customer {customer_id:?}, whom the tables do not"));
            };
            for (position, contract) in route.contracts.iter().enumerate() {
                if Some(contract.rate_card) != card {
                    continue;
                }
                if stays.contains(&contract.timeline) {
                    continue;
                }
                let Some(&copy) = copies.get(&contract.timeline) else {
                    return Err(format!(
                        "customer {customer_id:?}'s contract names a timeline the append neither splits nor inserts into"
                    ));
                };
                moves.push((customer_id.clone(), position, copy));
            }
        }
        Ok(moves)
    }

    /// The version (compiled) becomes the last held; inserted into the `in_place` timelines and into
    /// copies of the `split` ones, after any entry effective at the same time (a later publish wins).
    fn insert_version(&mut self, version: Version, effective_from_ms: i64, in_place: &[u32], split: &[u32]) {
        let catalog = &mut self.rater.catalog;
        let index = catalog.versions.len();
        catalog.versions.push(version);
        let insert = |timeline: &mut Vec<(i64, usize)>| {
            let place = timeline.partition_point(|(at, _)| *at <= effective_from_ms);
            timeline.insert(place, (effective_from_ms, index));
        };
        for &t in split {
            let mut copy = catalog.timelines[t as usize].clone();
            insert(&mut copy);
            catalog.timelines.push(copy);
        }
        for &t in in_place {
            insert(&mut catalog.timelines[t as usize]);
        }
    }

    /// Each contract's timeline as (effective_from_ms, rate card id, version number), in the order
    /// the customer's tables list its contracts: what a contract prices with, whatever the indexes
    /// (tests hold an append to a whole load with it). None for a customer the tables do not name.
    pub fn contract_timelines(&self, customer_id: &str) -> Option<Vec<Vec<(i64, String, u32)>>> {
        let route = self.accounts.get(customer_id)?.route.as_ref()?;
        let catalog = &self.rater.catalog;
        let timelines = route.contracts.iter().map(|contract| {
            catalog.timelines[contract.timeline as usize]
                .iter()
                .map(|&(at, v)| {
                    let version = &catalog.versions[v];
                    (at, self.rater.interner.text(version.rate_card).to_string(), version.number)
                })
                .collect()
        });
        Some(timelines.collect())
    }
}

/// Tables of one version: `Catalog::compile` compiles it as within whole tables, interning its
/// strings in the same order. A simulation compiles its version the same way.
pub(crate) fn alone(table: VersionTable, catalog: &Catalog) -> Tables {
    Tables {
        future_skew_ms: catalog.future_skew_ms,
        dedupe_window_ms: catalog.dedupe_window_ms,
        products: Vec::new(),
        versions: vec![table],
        timelines: Vec::new(),
        customers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::authorize::tests::{calls_customer, calls_tables, loaded, SCALE};
    use crate::buckets::HOUR_MS;
    use crate::decode::wire;
    use crate::tables::{CurveTable, RateTable};

    const CREDIT: i128 = 1_000_000_000_000;
    const DAY_MS: i64 = 24 * HOUR_MS;

    /// Version `number` of `card`: `calls` at `price_units` a call (1 = 1 currency unit).
    fn version(number: u32, price_units: u32) -> VersionTable {
        let curve = CurveTable {
            kind: "UNIT".into(),
            price: format!("{price_units}{SCALE}"),
            per_units: format!("1{SCALE}"),
            package_size: "0".into(),
            tiers: vec![],
        };
        VersionTable {
            rate_card_id: "card".into(),
            number,
            rates: vec![RateTable { product_id: "calls".into(), required: vec![], curve }],
        }
    }

    /// Customers a, b, c on ALLOW contracts of `card` (timeline `timelines[i]`, versions as given),
    /// each with 10 credits; version 1 is `calls` at 3 a call.
    fn whole(versions: Vec<VersionTable>, timelines: Vec<Vec<(i64, u32)>>, of: [u32; 3]) -> Kernel {
        let customers = ["a", "b", "c"].iter().zip(of).map(|(id, timeline)| {
            let mut customer = calls_customer(id, &format!("k-{id}"), false, (10 * CREDIT).to_string(), None);
            customer.contracts[0].timeline = timeline;
            customer
        });
        let mut tables = calls_tables(format!("3{SCALE}"), customers.collect());
        tables.versions.extend(versions);
        tables.timelines = timelines;
        loaded(tables)
    }

    /// The three customers on version 1 alone (timeline 0).
    fn first() -> Kernel {
        whole(vec![], vec![vec![(0, 0)]], [0, 0, 0])
    }

    fn append(
        held: (u32, u32),
        version: VersionTable,
        effective_from_ms: i64,
        in_place: &[u32],
        split: &[u32],
        members: &[&str],
    ) -> Vec<u8> {
        let append = VersionAppend {
            versions_held: held.0,
            timelines_held: held.1,
            version,
            effective_from_ms,
            in_place: in_place.to_vec(),
            split: split.to_vec(),
            members: members.iter().map(|m| (*m).to_string()).collect(),
        };
        rmp_serde::to_vec_named(&append).expect("encodes")
    }

    /// One call per (customer, hour from 0), each its own batch, as record `seq` on.
    fn ingest(kernel: &mut Kernel, calls: &[(&str, i64)], seq: &mut u64) {
        for (customer_id, hour) in calls {
            *seq += 1;
            let event = wire::UsageEvent {
                transaction_id: format!("t{seq}"),
                customer_id: (*customer_id).into(),
                event_type: "call".into(),
                timestamp_ms: hour * HOUR_MS + 60_000,
                ..wire::UsageEvent::default()
            };
            let batch = wire::UsageBatch { batch_id: format!("b{seq}"), events: vec![event] }.encode_to_vec();
            kernel.ingest(&batch, 2 * DAY_MS, *seq).expect("a batch");
        }
    }

    /// What a customer is charged and holds, and the timeline its contract prices with.
    fn seen(kernel: &Kernel, customer_id: &str) -> String {
        let timelines = kernel.contract_timelines(customer_id);
        let balance = kernel.balance(customer_id, DAY_MS);
        format!("{timelines:?} {balance:?}")
    }

    const CALLS: [(&str, i64); 6] = [("a", 1), ("b", 1), ("c", 1), ("a", 5), ("b", 6), ("c", 7)];

    #[test]
    fn a_publish_to_everyone_gives_what_a_whole_load_gives() {
        let mut appended = first();
        appended.append_version(&append((1, 1), version(2, 1), 4 * HOUR_MS, &[0], &[], &[])).unwrap();
        let mut whole = whole(vec![version(2, 1)], vec![vec![(0, 0), (4 * HOUR_MS, 1)]], [0, 0, 0]);
        let (mut seq_a, mut seq_w) = (0, 0);
        ingest(&mut appended, &CALLS, &mut seq_a);
        ingest(&mut whole, &CALLS, &mut seq_w);
        for customer in ["a", "b", "c"] {
            assert_eq!(seen(&appended, customer), seen(&whole, customer));
        }
        // 3 before the effective hour, 1 after: 6 credits left each.
        let remaining = appended.balance("a", DAY_MS).unwrap().remaining;
        assert_eq!(remaining, 6 * CREDIT);
        assert_eq!(appended.snapshot(), whole.snapshot());
        assert_eq!(appended.rater.catalog.timelines.len(), 1);
    }

    #[test]
    fn a_cohort_publish_moves_its_members_only() {
        let mut appended = first();
        // a alone in the cohort, on the timeline b and c share: a moves to a copy.
        appended.append_version(&append((1, 1), version(2, 1), 4 * HOUR_MS, &[], &[0], &["a"])).unwrap();
        assert_eq!(appended.rater.catalog.timelines.len(), 2);
        // a alone on its copy: a second version for a goes in place, no copy.
        appended.append_version(&append((2, 2), version(3, 2), 6 * HOUR_MS, &[1], &[], &["a"])).unwrap();
        assert_eq!(appended.rater.catalog.timelines.len(), 2);
        let timelines = vec![vec![(0, 0)], vec![(0, 0), (4 * HOUR_MS, 1), (6 * HOUR_MS, 2)]];
        let mut whole = whole(vec![version(2, 1), version(3, 2)], timelines, [1, 0, 0]);
        let (mut seq_a, mut seq_w) = (0, 0);
        ingest(&mut appended, &CALLS, &mut seq_a);
        ingest(&mut whole, &CALLS, &mut seq_w);
        for customer in ["a", "b", "c"] {
            assert_eq!(seen(&appended, customer), seen(&whole, customer));
        }
        let remaining = |k: &Kernel, c: &str| k.balance(c, DAY_MS).unwrap().remaining;
        assert_eq!(remaining(&appended, "a"), 6 * CREDIT); // 3 at hour 1, 1 at hour 5
        assert_eq!(remaining(&appended, "b"), 4 * CREDIT); // 3 and 3: version 1 still
        assert_eq!(appended.contract_timelines("b"), Some(vec![vec![(0, "card".to_string(), 1)]]));
        assert_eq!(appended.snapshot(), whole.snapshot());
    }

    #[test]
    fn a_retroactive_publish_then_rerated_equals_rating_with_it_from_the_start() {
        let mut appended = first();
        let mut seq = 0;
        ingest(&mut appended, &CALLS, &mut seq);
        // Effective from hour 2, usage at hours 5..7 already rated at 3 a call: re-rated at 1.
        appended.append_version(&append((1, 1), version(2, 1), 2 * HOUR_MS, &[0], &[], &[])).unwrap();
        let customers = appended.rerate_customers("card", 2);
        assert_eq!(customers, ["a", "b", "c"]);
        for customer in &customers {
            let done = appended.rerate_customer(customer, "card", 2, 99, true, true, true, true).unwrap();
            assert_eq!((done.customers, done.buckets, done.events), (1, 1, 1));
            assert_eq!(done.amount_delta, ethnum::I256::new(-2 * CREDIT));
        }
        let mut scratch = whole(vec![version(2, 1)], vec![vec![(0, 0), (2 * HOUR_MS, 1)]], [0, 0, 0]);
        ingest(&mut scratch, &CALLS, &mut 0);
        for customer in ["a", "b", "c"] {
            assert_eq!(seen(&appended, customer), seen(&scratch, customer));
            assert_eq!(appended.adjustments(customer).len(), 1);
        }
    }

    #[test]
    fn an_append_it_cannot_take_is_refused_and_changes_nothing() {
        let mut kernel = first();
        ingest(&mut kernel, &CALLS[..3], &mut 0);
        let snapshot = kernel.snapshot();
        let views: Vec<String> = ["a", "b", "c"].iter().map(|c| seen(&kernel, c)).collect();
        let mut bad_curve = version(2, 1);
        bad_curve.rates[0].curve.kind = "NOPE".into();
        bad_curve.rates[0].required = vec![(0, "fresh-symbol".into())];
        let refused = [
            (b"not msgpack".to_vec(), "does not decode"),
            (append((2, 1), version(2, 1), 0, &[0], &[], &[]), "load the whole tables"),
            (append((1, 2), version(2, 1), 0, &[0], &[], &[]), "load the whole tables"),
            (append((1, 1), version(2, 1), 0, &[1], &[], &[]), "does not hold"),
            (append((1, 1), version(2, 1), 0, &[], &[3], &["a"]), "does not hold"),
            (append((1, 1), version(2, 1), 0, &[], &[0], &["nobody"]), "whom the tables do not"),
            // a's contract is on timeline 0, which this append neither splits nor inserts into.
            (append((1, 1), version(2, 1), 0, &[], &[], &["a"]), "neither splits nor inserts"),
            (append((1, 1), bad_curve, 0, &[0], &[], &[]), "unknown price model"),
        ];
        for (bytes, why) in refused {
            let err = kernel.append_version(&bytes).unwrap_err();
            assert!(err.contains(why), "{err:?} does not say {why:?}");
            assert_eq!(kernel.snapshot(), snapshot);
            assert_eq!(["a", "b", "c"].iter().map(|c| seen(&kernel, c)).collect::<Vec<_>>(), views);
            assert_eq!((kernel.rater.catalog.versions.len(), kernel.rater.catalog.timelines.len()), (1, 1));
            assert_eq!(kernel.rater.interner.get("fresh-symbol"), None);
        }
    }
}
