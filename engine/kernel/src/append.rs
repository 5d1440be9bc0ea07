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
