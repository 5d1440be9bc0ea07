//! Dedupe on (customer_id, transaction_id): a content digest per accepted transaction id, in one
//! table for the whole kernel keyed by a 128-bit hash of the pair (no string kept per event).
//!
//! An identical resend inside the window is a duplicate; a different payload under the same id
//! is a DUPLICATE_CONFLICT. The digest is XXH3-128 (a fixed, documented algorithm over a canonical encoding, so digests
//! in a snapshot stay valid across releases) over a canonical encoding of the event apart from
//! its transaction id: map order and repeated keys do not change it.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::decode::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub digest: u128,
    /// The server's receive time of the batch that accepted it.
    pub at_ms: i64,
}

fn text(canonical: &mut Vec<u8>, value: &str) {
    canonical.extend_from_slice(&(value.len() as u64).to_le_bytes());
    canonical.extend_from_slice(value.as_bytes());
}

/// The dedupe key of (customer_id, transaction_id): XXH3-128 over both, length-prefixed (so no
/// two pairs share an encoding). `canonical` is scratch space, reused between events.
///
/// Why 128 bits are safe as the key itself: two distinct pairs collide with probability 2^-128
/// for a good hash, so among n ids the chance of any collision is about n^2 / 2^129: at 10^8 ids,
/// 10^16 / 6.8 x 10^38, about 1.5 x 10^-23, far below the odds of an undetected memory error. (A
/// collision would make a new event look like a resend of another; 64 bits would give 2.7 x 10^-4
/// at 10^8 ids, which is why the key is not a u64.)
pub fn key(customer_id: &str, transaction_id: &str, canonical: &mut Vec<u8>) -> u128 {
    canonical.clear();
    text(canonical, customer_id);
    text(canonical, transaction_id);
    xxh3_128(canonical)
}

/// A dedupe key as the kernel's table holds it, in halves: a u128 is aligned to 16 bytes, which
/// pads a (u128, Seen) entry to 48 bytes; a (Key, Held) entry takes 40, a sixth less memory and
/// cache traffic in the kernel's largest table. The snapshot still stores u128 and `Seen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    low: u64,
    high: u64,
}

/// The order of the u128 the key halves hold: the order of the table's slots and of the snapshot.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        (self.high, self.low).cmp(&(other.high, other.low))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl From<u128> for Key {
    fn from(key: u128) -> Key {
        Key { low: key as u64, high: (key >> 64) as u64 }
    }
}

impl From<Key> for u128 {
    fn from(key: Key) -> u128 {
        (u128::from(key.high) << 64) | u128::from(key.low)
    }
}

/// `Seen` as the kernel's table holds it: the digest in halves, for the reason `Key` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    digest: Key,
    at_ms: i64,
}

impl From<Seen> for Held {
    fn from(seen: Seen) -> Held {
        Held { digest: seen.digest.into(), at_ms: seen.at_ms }
    }
}

impl From<Held> for Seen {
    fn from(held: Held) -> Seen {
        Seen { digest: held.digest.into(), at_ms: held.at_ms }
    }
}

/// `canonical` is scratch space, reused between events.
pub fn content_digest(event: &Event, canonical: &mut Vec<u8>) -> u128 {
    canonical.clear();
    text(canonical, event.customer_id);
    text(canonical, event.event_type);
    canonical.extend_from_slice(&event.timestamp_ms.to_le_bytes());
    // The event's maps are already sorted by key (decode::check_event).
    canonical.extend_from_slice(&(event.dimensions.len() as u64).to_le_bytes());
    for (key, value) in &event.dimensions {
        text(canonical, key);
        text(canonical, value);
    }
    canonical.extend_from_slice(&(event.values.len() as u64).to_le_bytes());
    for (key, value) in &event.values {
        text(canonical, key);
        canonical.extend_from_slice(&value.to_le_bytes());
    }
    text(canonical, event.reservation_id);
    xxh3_128(canonical)
}

/// What a transaction id seen before means now: None if unseen or out of the window.
pub fn prior(seen: Option<&Seen>, received_ms: i64, window_ms: i64) -> Option<u128> {
    seen.filter(|s| received_ms.saturating_sub(s.at_ms) < window_ms).map(|s| s.digest)
}

/// The kernel's dedupe table: open addressing with linear probing, each key's home slot its top
/// `bits` bits, and every run of occupied slots kept in key order, so the whole slot array is
/// sorted by key (an "ordered hash table": a lookup stops at the first greater key, hit or miss).
///
/// Why this shape: a snapshot stores the entries sorted by key, and restoring 10 M of them as
/// random inserts into a hash map cost seconds in cache misses; here restoring is one streaming
/// pass (each entry goes to its home or just after the one before), as is growing, and encoding
/// a snapshot walks the slots in order with no sort. Keys and entries are in two arrays: a lookup
/// reads a run of adjacent 16-byte keys, usually one cache line, and a hit one entry (with 40-byte
/// slots a miss read about two lines, and measured slower than a hash map's).
#[derive(Default)]
pub struct Table {
    /// The keys in order; an empty slot holds `EMPTY`. Holds the 2^bits home slots and a tail for
    /// the runs that pass the last one (no wrap-around, which would break the order).
    keys: Vec<Key>,
    /// The entry of the key in the same slot.
    helds: Vec<Held>,
    bits: u32,
    /// Entries in `keys` (not counting `zero`).
    len: usize,
    /// The entry of key 0, which marks an empty slot and so lives here (a real key is 0 with
    /// probability 2^-128, but a snapshot may hold it).
    zero: Option<Held>,
}

const EMPTY: Key = Key { low: 0, high: 0 };
const NOTHING: Held = Held { digest: EMPTY, at_ms: 0 };
/// Slots past the 2^bits home slots, so a run near the end rarely needs the array to grow.
const TAIL_SLOTS: usize = 64;
const MIN_BITS: u32 = 4;

/// Where `Table::place` found a key: its slot, or where it would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Found(usize),
    Free(usize),
    Zero,
}

/// The home-slot bits for `len` entries: at most 3/4 of the home slots full, which keeps runs short
/// (a miss reads about 2.5 slots at 3/4, the same memory as hashbrown's table at 7/8 and 41 bytes a slot).
fn bits_for(len: usize) -> u32 {
    let mut bits = MIN_BITS;
    while len > (3usize << bits) / 4 {
        bits += 1;
    }
    bits
}

impl Table {
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn home(&self, key: Key) -> usize {
        (key.high >> (64 - self.bits)) as usize
    }

    /// Where `key` is, or where it would be inserted (valid until the table next changes).
    pub fn place(&self, key: Key) -> Place {
        if key == EMPTY {
            return Place::Zero;
        }
        if self.keys.is_empty() {
            return Place::Free(0);
        }
        let mut at = self.home(key);
        while let Some(held_key) = self.keys.get(at) {
            if *held_key == EMPTY {
                return Place::Free(at);
            }
            match held_key.cmp(&key) {
                std::cmp::Ordering::Less => at += 1,
                std::cmp::Ordering::Equal => return Place::Found(at),
                std::cmp::Ordering::Greater => return Place::Free(at),
            }
        }
        Place::Free(at)
    }

    /// The entry at a place `place` returned.
    pub fn held(&self, place: Place) -> Option<Held> {
        match place {
            Place::Found(at) => Some(self.helds[at]),
            Place::Free(_) => None,
            Place::Zero => self.zero,
        }
    }

    pub fn get(&self, key: Key) -> Option<Held> {
        self.held(self.place(key))
    }

    /// Sets `key`'s entry; `place` is what `place(key)` returned, with no change to the table since.
    pub fn put(&mut self, key: Key, place: Place, held: Held) {
        match place {
            Place::Found(at) => self.helds[at] = held,
            Place::Zero => self.zero = Some(held),
            Place::Free(_) if self.len >= (3usize << self.bits) / 4 => {
                self.grow(bits_for(self.len + 1));
                let place = self.place(key);
                self.put(key, place, held);
            }
            Place::Free(at) => {
                // The run from `at` on moves one slot up (each entry stays at or after its home).
                let mut end = at;
                while self.keys.get(end).is_some_and(|k| *k != EMPTY) {
                    end += 1;
                }
                if end == self.keys.len() {
                    self.keys.push(EMPTY);
                    self.helds.push(NOTHING);
                }
                self.keys.copy_within(at..end, at + 1);
                self.helds.copy_within(at..end, at + 1);
                (self.keys[at], self.helds[at]) = (key, held);
                self.len += 1;
            }
        }
    }

    pub fn insert(&mut self, key: Key, held: Held) {
        self.put(key, self.place(key), held);
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Held)> + '_ {
        let zero = self.zero.map(|held| (EMPTY, held));
        let held = self.keys.iter().copied().zip(self.helds.iter().copied());
        zero.into_iter().chain(held.filter(|(k, _)| *k != EMPTY))
    }

    fn with_bits(bits: u32) -> Table {
        let slots = (1usize << bits) + TAIL_SLOTS;
        Table { keys: vec![EMPTY; slots], helds: vec![NOTHING; slots], bits, len: 0, zero: None }
    }

    /// Appends an entry whose key is greater than every key held (and not 0): it goes to its home or
    /// just after the last entry (`next`), one streaming pass for entries in order.
    fn append(&mut self, next: &mut usize, key: Key, held: Held) {
        let at = self.home(key).max(*next);
        if at == self.keys.len() {
            self.keys.push(EMPTY);
            self.helds.push(NOTHING);
        }
        (self.keys[at], self.helds[at]) = (key, held);
        *next = at + 1;
        self.len += 1;
    }

    fn grow(&mut self, bits: u32) {
        let old = std::mem::replace(self, Table::with_bits(bits));
        self.zero = old.zero;
        let mut next = 0;
        for (key, held) in old.keys.into_iter().zip(old.helds).filter(|(k, _)| *k != EMPTY) {
            self.append(&mut next, key, held);
        }
    }

    /// The table of a snapshot's entries. Sorted entries (as every snapshot stores them) fill it in
    /// one streaming pass; others are inserted one by one, a later entry replacing an earlier one of
    /// its key (as collecting them into a map did).
    pub fn from_entries(entries: impl ExactSizeIterator<Item = (u128, Seen)> + Clone) -> Table {
        let mut table = Table::with_bits(bits_for(entries.len()));
        let (mut next, mut previous) = (0, None);
        for (key, seen) in entries.clone() {
            if previous.is_some_and(|p| p >= key) {
                let mut table = Table::default();
                entries.for_each(|(key, seen)| table.insert(key.into(), seen.into()));
                return table;
            }
            previous = Some(key);
            match key {
                0 => table.zero = Some(seen.into()),
                _ => table.append(&mut next, key.into(), seen.into()),
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn held_entries_are_smaller_and_convert_back_exactly() {
        assert_eq!(std::mem::size_of::<(Key, Held)>(), 40);
        assert_eq!(std::mem::size_of::<(u128, Seen)>(), 48);
        for key in
            [0, 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
        {
            assert_eq!(u128::from(Key::from(key)), key);
            let seen = Seen { digest: key, at_ms: -7 };
            assert_eq!(Seen::from(Held::from(seen)), seen);
        }
        assert_ne!(Key::from(1), Key::from(1 << 64), "the halves are not confused");
    }

    /// The table's invariants: slots sorted by key, each entry at or after its home with no empty
    /// slot between, `len` counting them.
    fn check(table: &Table) {
        let mut previous: Option<Key> = None;
        let mut run_start = 0;
        let mut count = 0;
        assert_eq!(table.keys.len(), table.helds.len());
        for (at, &key) in table.keys.iter().enumerate() {
            if key == EMPTY {
                run_start = at + 1;
                continue;
            }
            count += 1;
            assert!(previous.is_none_or(|p| p < key), "slot {at} out of order");
            let home = table.home(key);
            assert!(run_start <= home && home <= at, "slot {at}: home {home}, its run from {run_start}");
            previous = Some(key);
        }
        assert_eq!(count, table.len);
    }

    fn held(at_ms: i64) -> Held {
        Held::from(Seen { digest: at_ms as u128, at_ms })
    }

    /// Keys in few top-bit ranges (so long runs are exercised) and a few zeros.
    fn keys() -> impl Strategy<Value = u128> {
        prop_oneof![
            Just(0u128),
            any::<u128>(),
            (0u128..8, any::<u64>()).prop_map(|(top, low)| (top << 125) | u128::from(low)),
        ]
    }

    proptest! {
        #![proptest_config(crate::test_config())]

        #[test]
        fn the_table_holds_what_a_map_holds_in_key_order(
            ops in proptest::collection::vec((keys(), 0i64..100), 0..600),
        ) {
            let mut table = Table::default();
            let mut model = std::collections::BTreeMap::new();
            for (key, at_ms) in ops {
                prop_assert_eq!(table.get(key.into()), model.get(&key).copied());
                table.insert(key.into(), held(at_ms));
                model.insert(key, held(at_ms));
                check(&table);
            }
            let listed: Vec<(u128, Held)> = table.iter().map(|(k, h)| (k.into(), h)).collect();
            let expected: Vec<(u128, Held)> = model.into_iter().collect();
            prop_assert_eq!(table.len(), expected.len());
            prop_assert_eq!(&listed, &expected);
            // Restoring the sorted entries fills a table holding the same, in the same order.
            let entries: Vec<(u128, Seen)> = expected.iter().map(|&(k, h)| (k, h.into())).collect();
            let restored = Table::from_entries(entries.iter().copied());
            check(&restored);
            prop_assert!(restored.iter().map(|(k, h)| (u128::from(k), h)).eq(expected.iter().copied()));
            for &(key, h) in &expected {
                prop_assert_eq!(restored.get(key.into()), Some(h));
            }
        }
    }

    #[test]
    fn unsorted_entries_restore_one_by_one_the_later_one_winning() {
        let seen = |at_ms| Seen { digest: 1, at_ms };
        let table = Table::from_entries([(5, seen(1)), (3, seen(2)), (5, seen(3)), (0, seen(4))].into_iter());
        check(&table);
        let listed: Vec<(u128, Seen)> = table.iter().map(|(k, h)| (k.into(), h.into())).collect();
        assert_eq!(listed, vec![(0, seen(4)), (3, seen(2)), (5, seen(3))]);
    }
}
