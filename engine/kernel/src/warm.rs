//! Warming a slice of a batch before rating it: looking up each event's dedupe slot, account, grants,
//! contract and period aggregates in passes whose cache misses overlap, so that rating, which waits on each
//! lookup in turn, finds them in cache. Apart from rating (rater.rs) because it changes nothing and is
//! measured for speed alone: what it keys must match what planning keys, which its tests hold.

use crate::account::Account;
use crate::buckets::{Aggregate, HourKey, PeriodKey};
use crate::decode::EventView;
use crate::dedupe;
use crate::kernel::{Kernel, PAUSE_EVERY_EVENTS};
use crate::rater::{Keyed, Rater};
use crate::route::{Interner, Sym, Text};

/// Warming a batch's lookups before rating it.
impl Kernel {
    /// Looks up each event's dedupe slot, account, first grant, covering contract, period
    /// aggregates and hour buckets, and drops what it found. Rating an event waits on these cache
    /// misses one after another, each behind a chain of work that depends on the one before; here
    /// the lookups do not depend on each other, so the processor overlaps their misses, and rating
    /// then finds them in cache. Called on PAUSE_EVERY_EVENTS events at a time, few enough that what
    /// it brought in is still cached when they are rated (a whole batch at once measured no gain;
    /// with 10,000 customers, a 64-event slice about 7% less CPU per event in the kernel spike). The
    /// aggregates and hour buckets are keyed as planning keys them (`Rater::entry_keys`), and
    /// planning starts from that keying: some 520 instructions an event more, for about 11% less
    /// CPU an event in the spike (its rating took no LL miss on them after). A lookup that branches
    /// on what it loads holds the processor's window until its miss is served, and a pass that also
    /// hashes or keys each event leaves room in that window for two or three lookups; so the dedupe
    /// slots are asked for by prefetch while the keys are hashed, and the aggregates are looked up
    /// in a pass of their own after the keying (together about 10% less CPU an event in the spike
    /// at 3,000,000 ids, and on the server's rating thread). The dedupe keys are hashed in a pass of
    /// their own, which asks for each key's shard by prefetch, and the accounts are found (and the
    /// dedupe slots asked for) in the next: hashing a key is a few hundred instructions, so a pass
    /// that also looked up the account and read the shard waited on those misses one event at a time
    /// (the spike at 600 batches, 10,000 customers, 2 regions: about 8% less CPU an event, and the
    /// server's rating thread about 7% less). Measured with no gain, so not done:
    /// asking for each account's lines by prefetch as its place is found (spike, 600 batches,
    /// 10,000 customers: 0.98 ± 0.02 of the CPU an event over 22 alternating runs; the server's
    /// rating thread as before), and for its first grant's and contract's lines in the pass that
    /// reads its fields, merging that pass with the next, or asking for the aggregates' and hour
    /// buckets' lines instead of reading them. Reads only; the dedupe keys, the accounts' places
    /// and the keying are kept for rating (`warmed_keys`, `warmed_accounts`, `warmed_keyed`).
    pub(crate) fn warm<'s, 'a: 's>(
        &mut self,
        ids: impl Iterator<Item = (&'a str, &'a str, i64)>,
        events: impl Iterator<Item = EventView<'s, 'a>>,
    ) {
        let Kernel {
            accounts,
            dedupe,
            canonical,
            warmed_keys,
            warmed_accounts,
            warmed_keyed,
            warmed_entries,
            rater,
            ..
        } = self;
        warmed_keys.clear();
        warmed_accounts.clear();
        warmed_keyed.clear();
        let mut found = 0u64;
        // Passes over the slice: each pass's reads start from what the one before found, and
        // within a pass the lookups do not depend on each other, so their misses overlap.
        // An array, not a SmallVec: every access to a SmallVec first asks whether it spilled.
        let mut slots: [(i64, Option<&Account>); PAUSE_EVERY_EVENTS] = [(0, None); PAUSE_EVERY_EVENTS];
        let mut customers: [&str; PAUSE_EVERY_EVENTS] = [""; PAUSE_EVERY_EVENTS];
        let mut len = 0;
        for ((customer_id, transaction_id, timestamp_ms), slot) in ids.zip(&mut slots) {
            let key = dedupe::Key::from(dedupe::key(customer_id, transaction_id, canonical));
            dedupe.prefetch_shard(key);
            warmed_keys.push(key);
            customers[len] = customer_id;
            slot.0 = timestamp_ms;
            len += 1;
        }
        // Apart from the hashing, so that the processor holds many of these lookups at once.
        for ((&key, customer_id), slot) in warmed_keys.iter().zip(customers).zip(&mut slots[..len]) {
            dedupe.prefetch(key);
            let at = accounts.find(Text::of(customer_id));
            warmed_accounts.push(at);
            slot.1 = at.map(|at| accounts.at(at));
        }
        let slice = &slots[..len];
        for &key in warmed_keys.iter() {
            found += dedupe.warm(key);
        }
        for &(_, account) in slice {
            found += account.map_or(0, Account::warm_fields);
        }
        for &(ts_ms, account) in slice {
            found += account.map_or(0, |a| a.warm_grant_and_contract(ts_ms));
        }
        warmed_entries.clear();
        let mut symbols = Symbols::default();
        for (number, (event, &(_, account))) in events.zip(slice).enumerate() {
            // Keyed in its place in `warmed_keyed`: returned, the keying was moved twice more.
            warmed_keyed.push(None);
            let keyed = warmed_keyed.last_mut().expect("just pushed");
            // An account with no aggregate yet has nothing to read, and would walk the calendar for a
            // period it has not cached yet.
            if let Some(account) = account.filter(|a| !a.aggregates.is_empty()) {
                rater.entry_keys(account, &event, &mut symbols, keyed, |key| warmed_entries.push((number, key)));
            }
        }
        // Apart from the keying, so that the processor holds many of these lookups at once: keying
        // is a few hundred instructions an event, which left it room for two or three.
        for &(number, key) in warmed_entries.iter() {
            let (ts_ms, account) = slice[number];
            found ^= account.map_or(0, |a| warm_entry(a, key, ts_ms));
        }
        std::hint::black_box(found);
    }
}

impl Rater {
    /// Passes `found` the key of each period aggregate the event's products would be rated
    /// against, keyed as `plan` keys them (`product_key`): those of the products an event that
    /// plans feeds, whose combination exists. Sets `keyed` (None) to what its first product was
    /// keyed by, where `plan_keyed` starts. Read ahead of checking: an event checking or
    /// planning will refuse may name keys nothing comes of. `symbols` is the slice's (`Symbols`).
    fn entry_keys<'a>(
        &self,
        account: &Account,
        event: &EventView<'_, 'a>,
        symbols: &mut Symbols<'a>,
        keyed: &mut Option<Keyed>,
        mut found: impl FnMut(PeriodKey),
    ) {
        let Some(period_start_ms) = account.last_period_covering(event.timestamp_ms) else { return };
        let mut first = None;
        for index in self.catalog.feeding(event.event_type, |d| event.dimension(d)) {
            let product = &self.catalog.products[index];
            // The first product's keying is kept (moved, not copied) before a product of another
            // class replaces it.
            if first.is_none() && keyed.as_ref().is_some_and(|k: &Keyed| k.class != product.dimensions_class) {
                first = keyed.take();
            }
            let symbol = |text| symbols.get(text, &self.interner);
            if let (_, Some(key)) = self.product_key(product, period_start_ms, |d| event.dimension(d), symbol, keyed) {
                found(key);
            }
        }
        if first.is_some() {
            *keyed = first;
        }
    }
}

/// Reads the period aggregate of `key` and the hour bucket an event at `ts_ms` adds to beside it,
/// for `Kernel::warm`; returns what it read.
fn warm_entry(account: &Account, key: PeriodKey, ts_ms: i64) -> u64 {
    let aggregate = account.aggregates.get(&key).map_or(0, Aggregate::warm);
    aggregate ^ account.buckets.get(&key.hour_key(ts_ms)).map_or(0, crate::buckets::warm_hour)
}

/// The symbols of the dimension values `Kernel::warm` looked up in one slice of events: the few values
/// a pricing dimension takes come up again and again, and are found here in a slot chosen by the
/// text's length and end bytes and checked by one short comparison (about 25 instructions), where the
/// interner hashed the text and probed (about 85). The interner cannot change while a slice is warmed
/// (warm only reads the rater), so an entry stays exact; a new slice starts empty. Texts that share a
/// slot replace each other, and are then looked up again.
struct Symbols<'a> {
    slots: [Option<(&'a str, Option<Sym>)>; SYMBOL_SLOTS],
}

const SYMBOL_SLOTS: usize = 16;

impl Default for Symbols<'_> {
    fn default() -> Self {
        Symbols { slots: [None; SYMBOL_SLOTS] }
    }
}

impl<'a> Symbols<'a> {
    /// `interner.get(text)`, remembered. Inline, with the lookup in the interner apart (`miss`): the
    /// whole as one function was either a call saving and restoring six registers (about 20 of its
    /// 55 instructions) or, inlined, too large for the closure keying a product's dimensions to be
    /// inlined into `Kernel::warm`.
    #[inline]
    fn get(&mut self, text: &'a str, interner: &Interner) -> Option<Sym> {
        let bytes = text.as_bytes();
        let ends = match bytes {
            [] => 0,
            [first, .., last] => u32::from(*first) * 31 + u32::from(*last),
            [only] => u32::from(*only),
        };
        let mixed = (bytes.len() as u32).wrapping_mul(0x9e37_79b9) ^ ends.wrapping_mul(0x85eb_ca6b);
        let slot = (mixed >> 28) as usize % SYMBOL_SLOTS;
        match self.slots[slot] {
            Some((known, symbol)) if crate::decode::same_text(known, text) => symbol,
            _ => self.miss(slot, text, interner),
        }
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, slot: usize, text: &'a str, interner: &Interner) -> Option<Sym> {
        let symbol = interner.get(text);
        self.slots[slot] = Some((text, symbol));
        symbol
    }
}

impl Account {
    /// Reads the fields rating reads (the account spans several cache lines), for `Kernel::warm`.
    fn warm_fields(&self) -> u64 {
        let lengths = self.grants.len()
            + self.order.len()
            + self.aggregates.len()
            + self.buckets.len()
            + usize::from(self.route.is_some())
            + usize::from(self.credits.is_some());
        let period = self.periods.iter().next().map_or(0, |(start_ms, _)| start_ms);
        std::hint::black_box(self.due);
        lengths as u64 + period as u64 + self.last_period.0 as u64 + self.touched_epoch
    }

    /// Reads the account's first grant, the contract covering ts_ms and the control bytes of its
    /// period aggregates and hour buckets, for `Kernel::warm`: its last pass reads the event's own
    /// entries from there (`Rater::warm_entries`). The first entry found reads all the control
    /// bytes of a map of up to 16 slots, a cache line, a pass ahead of the entries' lookups; without
    /// it each lookup waited on the control bytes and then on its entry, and the spike took about
    /// 16% more CPU an event, though with 1.5 LL misses fewer (the first entry is often not one
    /// the event rates, so its slot is found, not read).
    fn warm_grant_and_contract(&self, ts_ms: i64) -> u64 {
        let grant = self.grants.first().map_or(0, |g| {
            g.remaining as u64 + g.expires_at_ms.unwrap_or(g.starts_at_ms) as u64 + g.applicable.len() as u64
        });
        let contract = self.contract_at(ts_ms).map_or(0, |c| c.starting_at_ms as u64);
        // Where the first entry is, not what it holds: finding it reads the control bytes only.
        let aggregate = self.aggregates.keys().next().map_or(0, |key| key as *const PeriodKey as u64);
        let hour = self.buckets.keys().next().map_or(0, |key| key as *const HourKey as u64);
        grant ^ contract ^ aggregate ^ hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{check_view, wire, with_view};
    use crate::kernel::tests::{dimensional_kernel, event_strategy, RECEIVED_MS};
    use crate::money::{Fixed, Picos};
    use crate::rater::Plan;
    use proptest::prelude::*;
    use prost::Message;

    /// What plans charge which aggregate.
    fn summary(plans: &[Plan]) -> Vec<(usize, Option<PeriodKey>, Fixed, Picos)> {
        plans.iter().map(|p| (p.product, p.aggregate, p.after, p.charge)).collect()
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn warm_finds_each_value_s_symbol_as_the_interner_does(
            interned in proptest::collection::vec("[a-c]{0,3}", 0..6),
            looked_up in proptest::collection::vec("[a-c]{0,3}", 0..40),
        ) {
            // More distinct texts than it has slots, looked up again and again: remembered or not, the same symbol.
            let interner = Interner::from_strings(interned);
            let mut symbols = Symbols::default();
            for text in &looked_up {
                prop_assert_eq!(symbols.get(text, &interner), interner.get(text), "{:?}", text);
            }
        }

        #[test]
        fn warm_reads_the_aggregates_plan_keys(
            rated in proptest::collection::vec(event_strategy(), 0..24),
            probes in proptest::collection::vec(event_strategy(), 1..8),
        ) {
            let mut kernel = dimensional_kernel();
            let batch = wire::UsageBatch { batch_id: "b".into(), events: rated }.encode_to_vec();
            kernel.ingest(&batch, RECEIVED_MS, 1).expect("decodes");
            let account = kernel.account("c").expect("a known customer");
            let mut plans = Vec::new();
            for probe in probes {
                with_view(&probe, |view| -> Result<(), TestCaseError> {
                    let mut warmed = Vec::new();
                    let mut keyed = None;
                    let mut symbols = Symbols::default();
                    kernel.rater.entry_keys(account, view, &mut symbols, &mut keyed, |key| warmed.push(key));
                    let Ok(event) = check_view(view, RECEIVED_MS, 300_000) else { return Ok(()) };
                    if event.customer_id != "c" {
                        return Ok(());
                    }
                    let rater = &kernel.rater;
                    let planned = rater.plan(account, &event, &mut plans).map(|_| summary(&plans));
                    let from_warm = rater.plan_keyed(account, &event, &mut plans, &mut keyed).map(|_| summary(&plans));
                    prop_assert_eq!(&from_warm, &planned, "planning from warm's keying plans as from scratch");
                    if let Ok(planned) = planned {
                        // Warm keys only events in the period the account last rated in (its cached one).
                        let keys: Vec<PeriodKey> = planned.iter().filter_map(|p| p.1).collect();
                        let cached = account.last_period_covering(event.timestamp_ms).is_some();
                        prop_assert_eq!(warmed, if cached { keys } else { Vec::new() });
                    }
                    Ok(())
                })?;
            }
        }
    }
}
