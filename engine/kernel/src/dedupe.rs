//! Dedupe on (customer_id, transaction_id): a content digest per accepted transaction id, in one
//! table for the whole kernel keyed by a 128-bit hash of the pair (no string kept per event).
//!
//! An identical resend inside the window is a duplicate; a different payload under the same id
//! is a DUPLICATE_CONFLICT. The digest is XXH3-128 (a fixed, documented algorithm over a canonical encoding, so digests
//! in a snapshot stay valid across releases) over a canonical encoding of the event apart from
//! its transaction id: map order and repeated keys do not change it. The table keeps and compares
//! its low 64 bits (`kept_digest`).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::decode::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub digest: u128,
    /// The server's receive time of the batch that accepted it.
    pub at_ms: i64,
}

/// The bytes of a canonical encoding written into a buffer sized for them once. Appending each field
/// to a Vec was a capacity check and a `memcpy` call per few bytes, which cost more than hashing the
/// result; here a short field is two overlapping word copies.
struct Canonical<'b> {
    rest: &'b mut [u8],
}

impl<'b> Canonical<'b> {
    /// The first `len` bytes of `canonical`, to be written in full. The scratch only grows: zeroing it
    /// to size for each event cost as much as the copies saved.
    fn sized(canonical: &'b mut Vec<u8>, len: usize) -> Canonical<'b> {
        if canonical.len() < len {
            canonical.resize(len, 0);
        }
        Canonical { rest: &mut canonical[..len] }
    }

    fn bytes(&mut self, src: &[u8]) {
        let (head, tail) = std::mem::take(&mut self.rest).split_at_mut(src.len());
        copy_short(head, src);
        self.rest = tail;
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    /// A string as its length (u64, little-endian) and its bytes.
    fn text(&mut self, value: &str) {
        self.u64(value.len() as u64);
        self.bytes(value.as_bytes());
    }

    fn done(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Bytes a `Canonical::text` of `value` takes.
fn text_len(value: &str) -> usize {
    8 + value.len()
}

/// `dst.copy_from_slice(src)` for slices of one length: up to 32 bytes as two overlapping copies of a
/// fixed size (a load and a store each), not a call.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    match len {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[len / 2] = src[len / 2];
            dst[len - 1] = src[len - 1];
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[len - 4..].copy_from_slice(&src[len - 4..]);
        }
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[len - 8..].copy_from_slice(&src[len - 8..]);
        }
        17..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[len - 16..].copy_from_slice(&src[len - 16..]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// The dedupe key of (customer_id, transaction_id): XXH3-128 over both, length-prefixed (so no
/// two pairs share an encoding). `canonical` is scratch space, reused between events.
///
/// Why 128 bits are safe as the key itself: two distinct pairs collide with probability 2^-128
/// for a good hash, so among n ids the chance of any collision is about n^2 / 2^129: at 10^8 ids,
/// 10^16 / 6.8 x 10^38, about 1.5 x 10^-23, far below the odds of an undetected memory error. (A
/// collision would make a new event look like a resend of another; 64 bits would give 2.7 x 10^-4
/// at 10^8 ids, which is why the key is not a u64.)
///
/// Always inline: `Kernel::warm` keys every event in a loop of its own, where the call was some 20
/// instructions of the key's 150.
#[inline(always)]
pub fn key(customer_id: &str, transaction_id: &str, canonical: &mut Vec<u8>) -> u128 {
    let len = text_len(customer_id) + text_len(transaction_id);
    let mut out = Canonical::sized(canonical, len);
    out.text(customer_id);
    out.text(transaction_id);
    debug_assert!(out.done(), "sized exactly");
    xxh3_128(&canonical[..len])
}

/// A dedupe key as the kernel's table holds it, in halves: a u128 is aligned to 16 bytes, which
/// pads a (u128, Seen) entry to 48 bytes; a (Key, Held) entry takes 32 (`Held` keeps half the
/// digest), a third less memory and cache traffic in the kernel's largest table. The snapshot still
/// stores u128 and `Seen`.
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

/// `Seen` as the kernel's table holds it: the digest's low 64 bits (`kept_digest`), a 16-byte entry.
/// A 32-byte slot instead of 40: the table is the kernel's largest, and on a VM whose host takes back
/// the pages a guest frees, each new page its growth touches cost 14-21 µs here (touching 2 GB of
/// new memory a page at a time), more than the rating of the events that filled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    digest: u64,
    at_ms: i64,
}

impl Held {
    /// The server's receive time of the batch that accepted it.
    pub fn at_ms(&self) -> i64 {
        self.at_ms
    }
}

impl From<Seen> for Held {
    fn from(seen: Seen) -> Held {
        Held { digest: seen.digest as u64, at_ms: seen.at_ms }
    }
}

impl From<Held> for Seen {
    fn from(held: Held) -> Seen {
        Seen { digest: u128::from(held.digest), at_ms: held.at_ms }
    }
}

/// The part of a content digest the table keeps and compares: its low 64 bits. Two payloads under one
/// transaction id are then told apart unless their digests agree there, a chance of 2^-64 per resend
/// with a different payload (which would be answered as a duplicate, not a DUPLICATE_CONFLICT).
/// Snapshots still store 128 bits: those of earlier releases load as their low half, and this
/// release's hold it with the high half zero.
pub fn kept_digest(digest: u128) -> u128 {
    u128::from(digest as u64)
}

/// `canonical` is scratch space, reused between events.
pub fn content_digest(event: &Event, canonical: &mut Vec<u8>) -> u128 {
    let dimensions_len: usize = event.dimensions.iter().map(|(key, value)| text_len(key) + text_len(value)).sum();
    let values_len: usize = event.values.iter().map(|(key, _)| text_len(key) + 16).sum();
    let len = text_len(event.customer_id)
        + text_len(event.event_type)
        + 8
        + 8
        + dimensions_len
        + 8
        + values_len
        + text_len(event.reservation_id);
    let mut out = Canonical::sized(canonical, len);
    out.text(event.customer_id);
    out.text(event.event_type);
    out.bytes(&event.timestamp_ms.to_le_bytes());
    // The event's maps are already sorted by key (decode::check_event).
    out.u64(event.dimensions.len() as u64);
    for (key, value) in &event.dimensions {
        out.text(key);
        out.text(value);
    }
    out.u64(event.values.len() as u64);
    for (key, value) in &event.values {
        out.text(key);
        out.bytes(&value.to_le_bytes());
    }
    out.text(event.reservation_id);
    debug_assert!(out.done(), "sized exactly");
    xxh3_128(&canonical[..len])
}

/// What a transaction id seen before means now: None if unseen or out of the window.
pub fn prior(seen: Option<&Seen>, received_ms: i64, window_ms: i64) -> Option<u128> {
    seen.filter(|s| received_ms.saturating_sub(s.at_ms) < window_ms).map(|s| s.digest)
}

/// How long past the window an entry is kept before pruning may drop it: received_ms is the server's
/// wall clock, which may step back; an entry dropped at received_ms would be out of the window (`prior`
/// None, so the id accepted as new anyway) at any later batch whose clock is less than this far behind.
pub const PRUNE_SLACK_MS: i64 = 86_400_000;

/// Whether pruning at `received_ms` may drop an entry accepted at `at_ms`: `prior`'s rule (the window
/// runs from the accepting batch's receive time, not the event's timestamp) plus PRUNE_SLACK_MS.
pub fn expired(at_ms: i64, received_ms: i64, window_ms: i64) -> bool {
    received_ms.saturating_sub(at_ms) >= window_ms.saturating_add(PRUNE_SLACK_MS)
}

/// The kernel's dedupe table: 2^SHARD_BITS shards by the key's top bits, each an ordered hash table
/// (`Shard`). Shards grow one at a time: growing one table of 100 M ids in one go held the writer (and
/// every read waiting for the kernel lock) for 10 s or more, where a shard of 1/4096 of them grows in a
/// few ms. Each shard grows at its own fill (`limit`, from 3/8 to 3/4 by shard index): with one
/// threshold for all, the uniform keys brought every shard to it within about 1% of the table's growth,
/// and ingest in that band paid a whole doubling's copying; staggered, each put pays the same small share
/// at any size. The shards in order are the keys in order, so a snapshot still walks them with no sort,
/// and pruning sweeps one shard per journaled batch.
#[derive(Default)]
pub struct Table {
    /// Empty until the first put (an empty table allocates nothing), then 2^SHARD_BITS of them.
    shards: Vec<Shard>,
    /// Entries in the shards (not counting `zero`).
    len: usize,
    /// The entry of key 0, which marks an empty slot and so lives here (a real key is 0 with
    /// probability 2^-128, but a snapshot may hold it).
    zero: Option<Held>,
    /// Every put and removal since the log was last taken, in order, while recording (`record_changes`):
    /// a snapshot stores these (a segment, crate::snapshot::segment), not the whole table.
    changes: Option<Vec<Change>>,
    /// An empty log whose room (pages the process already touched) the next `take_changes` starts the
    /// log in (`give_back_changes`): a fresh log took a new page every 85 changes, and on this
    /// project's VM a new page cost more than the rating of the events that filled it.
    spare_changes: Vec<Change>,
}

/// One shard: open addressing with linear probing, each key's home slot the `bits` bits after the
/// shard's, and every run of occupied slots kept in key order, so the whole slot array is sorted by
/// key (an "ordered hash table": a lookup stops at the first greater key, hit or miss).
///
/// Why this shape: a snapshot stores the entries sorted by key, and restoring 10 M of them as
/// random inserts into a hash map cost seconds in cache misses; here restoring is one streaming
/// pass (each entry goes to its home or just after the one before), growing is one streaming
/// pass (`grow`), and encoding a snapshot walks the slots in order with no sort. Keys and entries are in
/// two arrays: a lookup reads a run of adjacent 16-byte keys, usually one cache line, and a hit one
/// entry (with 40-byte slots a miss read about two lines, and measured slower than a hash map's).
#[derive(Default)]
struct Shard {
    /// The keys in order; an empty slot holds `EMPTY`. Holds the 2^bits home slots and a tail for
    /// the runs that pass the last one (no wrap-around, which would break the order).
    keys: Vec<Key>,
    /// The entry of the key in the same slot.
    helds: Vec<Held>,
    bits: u32,
    /// Entries in `keys`.
    len: usize,
    /// At or before the acceptance time of every entry (exact after a sweep, a restore or a growth): a sweep
    /// finds nothing to drop when this is not expired, and reads nothing (at 100 M ids a shard's sweep reads
    /// about 1 MB, each batch, while the window is filling and nothing in it is old enough).
    oldest_ms: i64,
}

/// A change to the table: the key's new entry, or None for its removal (pruned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Key,
    pub held: Option<Held>,
}

/// The most room a spare log keeps (`Table::give_back_changes`): a log of the server's default
/// snapshot cadence (about 1,000,000 changes of 40 B, in a Vec of 2^20 or, a little past it, 2^21) is
/// kept; a longer one is freed, so that a server snapshotting seldom does not hold two large logs for good.
pub const SPARE_CHANGES_BYTES_MAX: usize = 128 << 20;

const EMPTY: Key = Key { low: 0, high: 0 };
const NOTHING: Held = Held { digest: 0, at_ms: 0 };
/// The shards are 2^SHARD_BITS key ranges by the key's top bits: at 100 M ids a shard holds about
/// 24,000 (a 2.6 MB array to grow), and the shards' fixed part is 4096 × 72 bytes.
pub const SHARD_BITS: u32 = 12;
const SHARDS: usize = 1 << SHARD_BITS;
/// Slots past a shard's 2^bits home slots, so a run near the end rarely needs the arrays to grow.
const TAIL_SLOTS: usize = 4;
const MIN_BITS: u32 = 2;
/// Pruning sweeps the table one key range at a time, 2^PRUNE_RANGE_BITS ranges by the key's top bits:
/// one shard (the kernel sweeps one range per journaled batch: at 10 M ids about 2,400 entries, 100 KB read).
pub const PRUNE_RANGE_BITS: u32 = SHARD_BITS;

/// Where `Table::place` found a key: its shard and slot, or where it would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Found(usize, usize),
    Free(usize, usize),
    Zero,
}

/// The entries shard `shard` holds with 2^`bits` home slots before it grows: a fill from 3/8 (shard 0) to
/// just under 3/4 (the last shard) of its home slots, linear in the shard's index. At most 3/4 keeps runs
/// short (a miss reads about 2.5 slots at 3/4). The spread is one doubling wide, so the fills at which
/// the shards of one size grow, [3/8, 3/4) x 2^bits, meet those of the next size, [3/4, 3/2) x 2^bits: as
/// the table fills, the shards' growths come at an even rate, each put paying the same share of them
/// (about 5 slot copies) at any size. The cost is RAM: the home slots are 41% full on average where one
/// threshold of 3/4 averaged 54%, at 40 bytes a slot.
fn limit(bits: u32, shard: usize) -> usize {
    debug_assert!(shard < SHARDS);
    ((3usize << bits) * (SHARDS + shard)) / (8 * SHARDS)
}

/// The home-slot bits for shard `shard` holding `len` entries: the fewest within its `limit`.
fn bits_for(len: usize, shard: usize) -> u32 {
    let mut bits = MIN_BITS;
    while len > limit(bits, shard) {
        bits += 1;
    }
    bits
}

fn shard_of(key: Key) -> usize {
    (key.high >> (64 - SHARD_BITS)) as usize
}

impl Table {
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `key` is, or where it would be inserted (valid until the table next changes).
    pub fn place(&self, key: Key) -> Place {
        if key == EMPTY {
            return Place::Zero;
        }
        let shard = shard_of(key);
        match self.shards.get(shard).map_or(Err(0), |s| s.place(key)) {
            Ok(at) => Place::Found(shard, at),
            Err(at) => Place::Free(shard, at),
        }
    }

    /// The entry at a place `place` returned.
    pub fn held(&self, place: Place) -> Option<Held> {
        match place {
            Place::Found(shard, at) => Some(self.shards[shard].helds[at]),
            Place::Free(..) => None,
            Place::Zero => self.zero,
        }
    }

    pub fn get(&self, key: Key) -> Option<Held> {
        self.held(self.place(key))
    }

    /// Asks for the cache lines of `key`'s shard (its arrays' places and sizes, which `prefetch` and
    /// `place` read first), without waiting for them: a pass that does this for a slice's keys lets
    /// the next pass find the shards in cache (4096 of them, 72 bytes each, on two lines).
    pub fn prefetch_shard(&self, key: Key) {
        crate::prefetch::lines(&self.shards, shard_of(key));
    }

    /// Asks for the cache lines of `key`'s home slot and its entry, where `place(key)` starts
    /// reading, without waiting for them or branching on them: the kernel's first warming pass
    /// asks for a slice's keys at once, so their misses overlap.
    pub fn prefetch(&self, key: Key) {
        if let Some(shard) = self.shards.get(shard_of(key)) {
            if !shard.keys.is_empty() {
                let at = shard.home(key);
                crate::prefetch::line(&shard.keys, at);
                crate::prefetch::line(&shard.helds, at);
            }
        }
    }

    /// Reads what `place(key)` reads and the entry slot at the place found, which a hit reads and
    /// an insert shifts (the entries are an array apart from the keys, so another cache line): for
    /// the kernel's prefetching pass, whose misses overlap. Returns a value derived from both.
    pub fn warm(&self, key: Key) -> u64 {
        match self.place(key) {
            Place::Found(shard, at) | Place::Free(shard, at) => {
                self.shards.get(shard).and_then(|s| s.helds.get(at)).map_or(0, |held| held.at_ms as u64)
            }
            Place::Zero => 0,
        }
    }

    /// Sets `key`'s entry; `place` is what `place(key)` returned, with no change to the table since.
    pub fn put(&mut self, key: Key, place: Place, held: Held) {
        if let Some(changes) = &mut self.changes {
            changes.push(Change { key, held: Some(held) });
        }
        match place {
            Place::Found(shard, at) => self.shards[shard].replace(at, held),
            Place::Zero => self.zero = Some(held),
            Place::Free(shard, at) => {
                if self.shards.is_empty() {
                    self.shards.resize_with(SHARDS, Shard::default);
                }
                self.shards[shard].put_new(shard, key, at, held);
                self.len += 1;
            }
        }
    }

    pub fn insert(&mut self, key: Key, held: Held) {
        self.put(key, self.place(key), held);
    }

    /// Starts (or stops) logging every change, for the next `take_changes`; starting empties the log.
    pub fn record_changes(&mut self, on: bool) {
        self.changes = on.then(Vec::new);
    }

    /// The changes since the last call (or since recording started), in order, leaving none: the log
    /// goes on in the spare given back, if any.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let Some(changes) = &mut self.changes else { return Vec::new() };
        std::mem::replace(changes, std::mem::take(&mut self.spare_changes))
    }

    /// A log `take_changes` gave, once read: kept (emptied) for the next `take_changes`, if it holds
    /// more room than the spare already kept and no more than SPARE_CHANGES_BYTES_MAX.
    pub fn give_back_changes(&mut self, mut changes: Vec<Change>) {
        changes.clear();
        let room_bytes = changes.capacity() * std::mem::size_of::<Change>();
        if changes.capacity() > self.spare_changes.capacity() && room_bytes <= SPARE_CHANGES_BYTES_MAX {
            self.spare_changes = changes;
        }
    }

    /// Whether `record_changes` is on.
    pub fn recording(&self) -> bool {
        self.changes.is_some()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Held)> + '_ {
        let zero = self.zero.map(|held| (EMPTY, held));
        let held = self.shards.iter().flat_map(|s| s.keys.iter().copied().zip(s.helds.iter().copied()));
        zero.into_iter().chain(held.filter(|(k, _)| *k != EMPTY))
    }

    /// Drops the entries of key range `range` (of the 2^PRUNE_RANGE_BITS ranges by the key's top
    /// bits, one shard) that `expired` says are expired; returns how many. `expired` must hold for an
    /// entry if it holds for a later one (it is asked first about the shard's oldest time).
    pub fn prune_range(&mut self, range: u64, expired: impl Fn(Held) -> bool) -> usize {
        let mut dropped = 0;
        if range == 0 && self.zero.is_some_and(&expired) {
            self.zero = None;
            dropped += 1;
            if let Some(changes) = &mut self.changes {
                changes.push(Change { key: EMPTY, held: None });
            }
        }
        if let Some(shard) = self.shards.get_mut(range as usize) {
            let removed = shard.prune(expired, &mut self.changes);
            self.len -= removed;
            dropped += removed;
        }
        dropped
    }

    /// The table of a snapshot's entries. Sorted entries (as every snapshot stores them) fill each
    /// shard in one streaming pass, sized for its own entries; others are inserted one by one, a later
    /// entry replacing an earlier one of its key (as collecting them into a map did).
    pub fn from_entries(entries: impl ExactSizeIterator<Item = (u128, Seen)> + Clone) -> Table {
        let mut table = Table::default();
        let mut previous = None;
        // One shard's entries at a time: its size is known once the next shard's first key comes.
        let mut pending: Vec<(Key, Held)> = Vec::new();
        for (key, seen) in entries.clone() {
            if previous.is_some_and(|p| p >= key) {
                let mut table = Table::default();
                entries.for_each(|(key, seen)| table.insert(key.into(), seen.into()));
                return table;
            }
            previous = Some(key);
            let (key, held) = (Key::from(key), Held::from(seen));
            if key == EMPTY {
                table.zero = Some(held);
                continue;
            }
            if pending.last().is_some_and(|(last, _)| shard_of(*last) != shard_of(key)) {
                table.fill_shard(&mut pending);
            }
            pending.push((key, held));
        }
        table.fill_shard(&mut pending);
        table
    }

    /// Fills the shard of `entries` (sorted, one shard's, not yet in the table), leaving `entries` empty.
    fn fill_shard(&mut self, entries: &mut Vec<(Key, Held)>) {
        let Some(&(first, _)) = entries.first() else { return };
        if self.shards.is_empty() {
            self.shards.resize_with(SHARDS, Shard::default);
        }
        // Sized by the rule puts grow it by, so a restored table's next puts grow no more shards than
        // the same puts would without the restart (sized at 3/4, every shard whose limit is lower grew
        // at its first put after a restore, a burst of growth).
        let index = shard_of(first);
        let shard = &mut self.shards[index];
        debug_assert_eq!(shard.len, 0, "each shard is filled once");
        *shard = Shard::with_bits(bits_for(entries.len(), index));
        let mut next = 0;
        for (key, held) in entries.drain(..) {
            shard.append(&mut next, key, held);
        }
        self.len += shard.len;
    }
}

impl Shard {
    fn home(&self, key: Key) -> usize {
        ((key.high << SHARD_BITS) >> (64 - self.bits)) as usize
    }

    /// Ok(the slot of `key`), or Err(the slot it would be inserted at).
    fn place(&self, key: Key) -> Result<usize, usize> {
        if self.keys.is_empty() {
            return Err(0);
        }
        let mut at = self.home(key);
        while let Some(held_key) = self.keys.get(at) {
            if *held_key == EMPTY {
                return Err(at);
            }
            match held_key.cmp(&key) {
                std::cmp::Ordering::Less => at += 1,
                std::cmp::Ordering::Equal => return Ok(at),
                std::cmp::Ordering::Greater => return Err(at),
            }
        }
        Err(at)
    }

    /// Puts a key that is not in shard number `index` at `at`, where `place` said it would go.
    fn put_new(&mut self, index: usize, key: Key, mut at: usize, held: Held) {
        if self.len >= limit(self.bits, index) {
            self.grow(bits_for(self.len + 1, index));
            at = self.place(key).expect_err("a new key");
        }
        self.shift_in(at, key, held);
    }

    /// Sets the entry at `at`, a slot `place` found its key in.
    fn replace(&mut self, at: usize, held: Held) {
        self.helds[at] = held;
        self.oldest_ms = self.oldest_ms.min(held.at_ms);
    }

    fn with_bits(bits: u32) -> Shard {
        let slots = (1usize << bits) + TAIL_SLOTS;
        Shard { keys: vec![EMPTY; slots], helds: vec![NOTHING; slots], bits, len: 0, oldest_ms: i64::MAX }
    }

    /// Appends an entry whose key is greater than every key held (and not 0): it goes to its home or
    /// just after the last entry (`next`), one streaming pass for entries in order. Always inline:
    /// growing calls it for every entry, and as a call it spent about a third of its instructions
    /// saving and restoring registers (with the hint alone it stayed a call).
    #[inline(always)]
    fn append(&mut self, next: &mut usize, key: Key, held: Held) {
        let at = self.home(key).max(*next);
        if at == self.keys.len() {
            self.keys.push(EMPTY);
            self.helds.push(NOTHING);
        }
        (self.keys[at], self.helds[at]) = (key, held);
        *next = at + 1;
        self.len += 1;
        self.oldest_ms = self.oldest_ms.min(held.at_ms);
    }

    /// Grows to `bits`: a fresh shard of that size filled in one streaming pass from this one's slots
    /// in order (`append`), which gives the one layout the invariants allow. A shard is small (about
    /// 24,000 entries at 100 M ids), so holding both for the pass costs little; growing in place
    /// (extend the arrays, then move each entry up from the last) paid `realloc`'s copy as well,
    /// measured slower.
    fn grow(&mut self, bits: u32) {
        let mut grown = Shard::with_bits(bits);
        let mut next = 0;
        for (&key, &held) in self.keys.iter().zip(&self.helds) {
            if key != EMPTY {
                grown.append(&mut next, key, held);
            }
        }
        debug_assert_eq!(grown.len, self.len);
        *self = grown;
    }

    /// Puts `key` at `at`, moving the run from `at` on one slot up (each entry stays at or after its
    /// home); `at` is where the order puts it.
    fn shift_in(&mut self, at: usize, key: Key, held: Held) {
        let mut end = at;
        while self.keys.get(end).is_some_and(|k| *k != EMPTY) {
            end += 1;
        }
        if end == self.keys.len() {
            self.keys.push(EMPTY);
            self.helds.push(NOTHING);
        }
        // Runs are short (at most 3/4 of the home slots full, and usually `at` is empty): moving them
        // slot by slot costs less than two memmove calls, which were most of an insert's instructions.
        let (keys, helds) = (&mut self.keys[at..=end], &mut self.helds[at..=end]);
        for slot in (1..keys.len()).rev() {
            keys[slot] = keys[slot - 1];
            helds[slot] = helds[slot - 1];
        }
        (keys[0], helds[0]) = (key, held);
        self.len += 1;
        self.oldest_ms = self.oldest_ms.min(held.at_ms);
    }

    fn remove_at(&mut self, mut at: usize, changes: &mut Option<Vec<Change>>) {
        if let Some(changes) = changes {
            changes.push(Change { key: self.keys[at], held: None });
        }
        // Backward shift: the entries after it that sit past their home move one slot down, which
        // keeps the order and leaves no empty slot between an entry and its home.
        while let Some(&key) = self.keys.get(at + 1) {
            if key == EMPTY || self.home(key) > at {
                break;
            }
            (self.keys[at], self.helds[at]) = (key, self.helds[at + 1]);
            at += 1;
        }
        (self.keys[at], self.helds[at]) = (EMPTY, NOTHING);
        self.len -= 1;
    }

    /// Drops the entries `expired` says are expired, logging each removal in `changes` (when recording);
    /// returns how many.
    fn prune(&mut self, expired: impl Fn(Held) -> bool, changes: &mut Option<Vec<Change>>) -> usize {
        if !expired(Held { digest: 0, at_ms: self.oldest_ms }) {
            return 0;
        }
        let before = self.len;
        let mut oldest_ms = i64::MAX;
        let mut at = 0;
        while let Some(&key) = self.keys.get(at) {
            if key != EMPTY && expired(self.helds[at]) {
                self.remove_at(at, changes); // the next entry, if any moved, is now at `at`
            } else {
                if key != EMPTY {
                    oldest_ms = oldest_ms.min(self.helds[at].at_ms);
                }
                at += 1;
            }
        }
        self.oldest_ms = oldest_ms;
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_log_given_back_takes_the_changes_after_the_next_take_in_its_room() {
        let mut table = Table::default();
        table.record_changes(true);
        let held = |at_ms| Held { digest: 7, at_ms };
        let change = |n: u64| Change { key: Key { low: n, high: n << 40 }, held: Some(held(n as i64)) };
        for n in 1..=1000 {
            table.insert(change(n).key, held(n as i64));
        }
        let first = table.take_changes();
        assert_eq!(first.len(), 1000);
        let room = first.capacity();
        // The log goes on meanwhile (the server encodes a segment while rating goes on).
        table.insert(change(1001).key, held(1001));
        table.give_back_changes(first);
        assert_eq!(table.take_changes(), vec![change(1001)]);
        table.insert(change(1002).key, held(1002));
        let third = table.take_changes();
        assert_eq!(third, vec![change(1002)]);
        assert_eq!(third.capacity(), room, "logged in the room given back");
        // A smaller log given back keeps the larger spare; one past the limit is not kept.
        table.give_back_changes(third);
        table.give_back_changes(Vec::with_capacity(2));
        table.give_back_changes(Vec::with_capacity(SPARE_CHANGES_BYTES_MAX / std::mem::size_of::<Change>() + 1));
        table.take_changes();
        assert_eq!(table.take_changes().capacity(), room);
    }

    #[test]
    fn held_entries_are_smaller_and_keep_the_digests_low_half() {
        assert_eq!(std::mem::size_of::<(Key, Held)>(), 32);
        assert_eq!(std::mem::size_of::<(u128, Seen)>(), 48);
        assert_eq!(std::mem::size_of::<Change>(), 40);
        for key in
            [0, 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
        {
            assert_eq!(u128::from(Key::from(key)), key);
            let seen = Seen { digest: key, at_ms: -7 };
            let kept = Seen { digest: kept_digest(key), at_ms: -7 };
            assert_eq!(Seen::from(Held::from(seen)), kept);
            assert_eq!(Seen::from(Held::from(kept)), kept, "a kept digest converts back exactly");
        }
        assert_eq!(kept_digest(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210), 0xfedc_ba98_7654_3210);
        assert_ne!(Key::from(1), Key::from(1 << 64), "the halves are not confused");
    }

    /// The table's invariants: each shard holds the keys of its range, its slots sorted by key, each
    /// entry at or after its home with no empty slot between, `len` counting them.
    fn check(table: &Table) {
        assert!(table.shards.is_empty() || table.shards.len() == SHARDS);
        let mut count = 0;
        for (index, shard) in table.shards.iter().enumerate() {
            check_shard(shard);
            assert!(shard.keys.iter().all(|&k| k == EMPTY || shard_of(k) == index), "shard {index} holds its keys");
            assert!(shard.len <= limit(shard.bits, index), "shard {index} within its limit");
            let at_ms = shard.keys.iter().zip(&shard.helds).filter(|(k, _)| **k != EMPTY).map(|(_, h)| h.at_ms);
            assert!(at_ms.min().is_none_or(|oldest_ms| shard.oldest_ms <= oldest_ms), "shard {index}'s oldest");
            count += shard.len;
        }
        assert_eq!(count, table.len);
    }

    fn check_shard(shard: &Shard) {
        let mut previous: Option<Key> = None;
        let mut run_start = 0;
        let mut count = 0;
        assert_eq!(shard.keys.len(), shard.helds.len());
        for (at, &key) in shard.keys.iter().enumerate() {
            if key == EMPTY {
                run_start = at + 1;
                continue;
            }
            count += 1;
            assert!(previous.is_none_or(|p| p < key), "slot {at} out of order");
            let home = shard.home(key);
            assert!(run_start <= home && home <= at, "slot {at}: home {home}, its run from {run_start}");
            previous = Some(key);
        }
        assert_eq!(count, shard.len);
    }

    fn held(at_ms: i64) -> Held {
        Held::from(Seen { digest: at_ms as u128, at_ms })
    }

    /// The encodings as first defined, appended field by field: keys and digests are stored in
    /// snapshots and journals, so `key` and `content_digest` must hash exactly these bytes.
    fn appended_text(canonical: &mut Vec<u8>, value: &str) {
        canonical.extend_from_slice(&(value.len() as u64).to_le_bytes());
        canonical.extend_from_slice(value.as_bytes());
    }

    fn appended_key(customer_id: &str, transaction_id: &str) -> u128 {
        let mut canonical = Vec::new();
        appended_text(&mut canonical, customer_id);
        appended_text(&mut canonical, transaction_id);
        xxh3_128(&canonical)
    }

    fn appended_digest(event: &Event) -> u128 {
        let mut canonical = Vec::new();
        appended_text(&mut canonical, event.customer_id);
        appended_text(&mut canonical, event.event_type);
        canonical.extend_from_slice(&event.timestamp_ms.to_le_bytes());
        canonical.extend_from_slice(&(event.dimensions.len() as u64).to_le_bytes());
        for (key, value) in &event.dimensions {
            appended_text(&mut canonical, key);
            appended_text(&mut canonical, value);
        }
        canonical.extend_from_slice(&(event.values.len() as u64).to_le_bytes());
        for (key, value) in &event.values {
            appended_text(&mut canonical, key);
            canonical.extend_from_slice(&value.to_le_bytes());
        }
        appended_text(&mut canonical, event.reservation_id);
        xxh3_128(&canonical)
    }

    /// Texts of every length `copy_short` treats apart (0 to 40 bytes and a long one), some not ASCII.
    fn texts() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9-]{0,40}", "[a-zé€]{0,12}", "[a-z]{200,260}"]
    }

    proptest! {
        #![proptest_config(crate::test_config())]

        #[test]
        fn keys_and_digests_hash_the_bytes_first_defined(
            ids in (texts(), texts(), texts(), texts(), any::<i64>()),
            dimensions in proptest::collection::vec((texts(), texts()), 0..5),
            values in proptest::collection::vec((texts(), any::<i128>()), 0..5),
        ) {
            let (customer_id, transaction_id, event_type, reservation_id, timestamp_ms) = ids;
            let mut canonical = vec![7; 3]; // scratch left over from an earlier event
            prop_assert_eq!(key(&customer_id, &transaction_id, &mut canonical), appended_key(&customer_id, &transaction_id));
            let event = Event {
                transaction_id: &transaction_id,
                customer_id: &customer_id,
                event_type: &event_type,
                timestamp_ms,
                dimensions: dimensions.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                values: values.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
                reservation_id: &reservation_id,
            };
            prop_assert_eq!(content_digest(&event, &mut canonical), appended_digest(&event));
        }
    }

    /// Keys in few top-bit ranges (so collisions, runs and prune ranges are exercised) and a few zeros.
    fn keys() -> impl Strategy<Value = u128> {
        prop_oneof![
            Just(0u128),
            any::<u128>(),
            (0u128..8, any::<u64>()).prop_map(|(top, low)| (top << 125) | u128::from(low)),
        ]
    }

    #[test]
    fn the_shards_grow_at_fills_spread_over_one_doubling() {
        let slots = 1usize << 20;
        assert_eq!(limit(20, 0), slots * 3 / 8);
        assert_eq!(limit(20, SHARDS / 2), slots * 9 / 16);
        assert_eq!(limit(20, SHARDS - 1), slots * 3 / 4 - slots * 3 / 4 / (2 * SHARDS));
        // The last shard of one size grows at the first one's fill of the next: no gap, no overlap.
        assert!(limit(20, SHARDS - 1) < limit(21, 0) && limit(21, 0) - limit(20, SHARDS - 1) <= slots / 4096);
        assert!((1..SHARDS).all(|shard| limit(20, shard - 1) <= limit(20, shard)));
        for shard in [0, 1, SHARDS / 2, SHARDS - 1] {
            assert_eq!(bits_for(0, shard), MIN_BITS);
            assert_eq!(bits_for(limit(20, shard), shard), 20);
            assert_eq!(bits_for(limit(20, shard) + 1, shard), 21);
        }
    }

    /// The prune ranges `keys` falls in most.
    fn ranges() -> impl Strategy<Value = u64> {
        (0u64..8).prop_map(|r| r << (PRUNE_RANGE_BITS - 3))
    }

    proptest! {
        #![proptest_config(crate::test_config())]

        #[test]
        fn the_table_holds_what_a_map_holds_in_key_order(
            ops in proptest::collection::vec((keys(), 0i64..100, 0u8..8), 0..600),
        ) {
            let mut table = Table::default();
            let mut model = std::collections::BTreeMap::new();
            for (key, at_ms, op) in ops {
                if op == 0 {
                    // Prune the range the key is in, dropping entries older than at_ms.
                    let range = (key >> (128 - PRUNE_RANGE_BITS)) as u64;
                    let dropped = table.prune_range(range, |h| h.at_ms() < at_ms);
                    let before = model.len();
                    model.retain(|k: &u128, h: &mut Held| (k >> (128 - PRUNE_RANGE_BITS)) as u64 != range || h.at_ms() >= at_ms);
                    prop_assert_eq!(dropped, before - model.len());
                } else {
                    prop_assert_eq!(table.get(key.into()), model.get(&key).copied());
                    table.insert(key.into(), held(at_ms));
                    model.insert(key, held(at_ms));
                }
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

        /// Restoring a table sizes each shard as the puts that filled it did, so the puts after a
        /// restart grow no shard the same puts would not have grown without it.
        #[test]
        fn a_restored_shard_has_the_size_its_puts_gave_it(keys in proptest::collection::vec(keys(), 0..2000)) {
            let mut table = Table::default();
            for (at_ms, &key) in (0..).zip(&keys) {
                table.insert(key.into(), held(at_ms));
            }
            let entries: Vec<(u128, Seen)> = table.iter().map(|(k, h)| (k.into(), h.into())).collect();
            let restored = Table::from_entries(entries.into_iter());
            check(&restored);
            let sizes = |t: &Table| t.shards.iter().map(|s| (s.len, s.bits)).filter(|&(len, _)| len > 0).collect::<Vec<_>>();
            prop_assert_eq!(sizes(&restored), sizes(&table));
        }

        /// Growing by any number of bits keeps the entries and gives exactly the layout inserting them
        /// one by one into a shard of that size gives (the layout the invariants allow is unique).
        #[test]
        fn growing_gives_the_layout_of_inserting_into_a_shard_of_that_size(
            keys in proptest::collection::vec(keys(), 0..400),
            more_bits in 1u32..4,
        ) {
            // All in one shard (the first): its home bits are what `keys` varies least, so runs are long.
            let keys: Vec<Key> = keys.into_iter().map(|k| Key::from(k & (u128::MAX >> SHARD_BITS))).collect();
            let mut shard = Shard::default();
            for (at_ms, &key) in (0..).zip(&keys) {
                if let (false, Err(at)) = (key == EMPTY, shard.place(key)) {
                    shard.put_new(0, key, at, held(at_ms));
                }
            }
            let bits = shard.bits.max(MIN_BITS) + more_bits;
            let mut inserted = Shard::with_bits(bits);
            for (at_ms, &key) in (0..).zip(&keys) {
                if let (false, Err(at)) = (key == EMPTY, inserted.place(key)) {
                    inserted.shift_in(at, key, held(at_ms));
                }
            }
            shard.grow(bits);
            check_shard(&shard);
            prop_assert_eq!(shard.len, inserted.len);
            // The same slots (a tail grown by a long run may be longer in one of them).
            let used = shard.keys.len().min(inserted.keys.len());
            prop_assert!(shard.keys[used..].iter().chain(&inserted.keys[used..]).all(|k| *k == EMPTY));
            prop_assert_eq!(&shard.keys[..used], &inserted.keys[..used]);
            prop_assert_eq!(&shard.helds[..used], &inserted.helds[..used]);
        }

        /// The kernel's rule, modelled: an id is a resend when `prior` finds it. Pruning one range per
        /// batch (as the kernel does) never changes that answer, with a wall clock that steps back less
        /// than PRUNE_SLACK_MS behind the latest time seen.
        #[test]
        fn pruning_never_changes_whether_an_id_is_new(
            batches in proptest::collection::vec(
                (proptest::collection::vec(keys(), 1..6), -PRUNE_SLACK_MS + 1..3 * 86_400_000i64, ranges()),
                1..200,
            ),
            window_ms in 0i64..5 * 86_400_000,
        ) {
            let mut pruned = Table::default();
            let mut kept = std::collections::HashMap::new();
            let mut latest_ms = 0i64;
            for (ids, step_ms, range) in batches {
                let received_ms = latest_ms + step_ms;
                latest_ms = latest_ms.max(received_ms);
                for key in ids {
                    let seen = pruned.get(key.into()).map(Seen::from);
                    let answer = prior(seen.as_ref(), received_ms, window_ms);
                    prop_assert_eq!(answer, prior(kept.get(&key), received_ms, window_ms));
                    if answer.is_none() {
                        let accepted = Seen { digest: key, at_ms: received_ms };
                        pruned.insert(key.into(), accepted.into());
                        kept.insert(key, accepted);
                    }
                }
                pruned.prune_range(range, |h| expired(h.at_ms(), received_ms, window_ms));
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

/// Pruning through the kernel: what a snapshot holds after sweeps, and replay giving the same bytes.
#[cfg(test)]
mod pruning_tests {
    use prost::Message;

    use super::*;
    use crate::authorize::tests::{calls_customer, calls_tables, SCALE};
    use crate::decode::wire;
    use crate::kernel::Kernel;
    use crate::snapshot;
    use crate::tables;

    /// calls_tables' dedupe window.
    const WINDOW_MS: i64 = 1_000_000;
    const RANGES: u64 = 1 << PRUNE_RANGE_BITS;

    fn tables() -> Vec<u8> {
        let customer = calls_customer("c", "k", false, format!("1000000{SCALE}"), None);
        let tables = calls_tables(format!("1{SCALE}"), vec![customer]);
        assert_eq!(tables.dedupe_window_ms, WINDOW_MS);
        tables::encode(&tables)
    }

    fn batch(seq: u64, transaction_id: &str, at_ms: i64) -> Vec<u8> {
        let event = wire::UsageEvent {
            transaction_id: transaction_id.into(),
            customer_id: "c".into(),
            event_type: "call".into(),
            timestamp_ms: at_ms,
            ..wire::UsageEvent::default()
        };
        wire::UsageBatch { batch_id: format!("b{seq}"), events: vec![event] }.encode_to_vec()
    }

    fn held_ids(kernel: &Kernel) -> Vec<u128> {
        snapshot::decode(&kernel.snapshot()).expect("decodes").dedupe.iter().map(|(k, _)| *k).collect()
    }

    /// The journal of the test: "old" at 1_000, "recent" just inside the prune horizon of the later
    /// batches, then one fresh id per batch for a whole sweep of the table at `late_ms`.
    fn journal() -> Vec<(Vec<u8>, i64)> {
        let late_ms = 1_000 + WINDOW_MS + PRUNE_SLACK_MS;
        let mut records = vec![(batch(1, "old", 1_000), 1_000), (batch(2, "recent", 1_001), 1_001)];
        for seq in 3..RANGES + 3 {
            records.push((batch(seq, &format!("t{seq}"), late_ms), late_ms));
        }
        records
    }

    fn fresh() -> Kernel {
        let mut kernel = Kernel::default();
        kernel.load_tables(&tables()).expect("valid tables");
        kernel
    }

    fn ingest(kernel: &mut Kernel, batch: &[u8], at_ms: i64, seq: u64) -> u32 {
        kernel.ingest_checked(batch, at_ms, seq, usize::MAX, None).expect("a batch").accepted
    }

    #[test]
    fn a_sweep_drops_the_ids_past_the_window_and_keeps_the_others() {
        let mut kernel = fresh();
        let mut canonical = Vec::new();
        let old = key("c", "old", &mut canonical);
        let recent = key("c", "recent", &mut canonical);
        for (seq, (batch, at_ms)) in (1..).zip(journal()) {
            assert_eq!(ingest(&mut kernel, &batch, at_ms, seq), 1);
        }
        let ids = held_ids(&kernel);
        assert!(!ids.contains(&old), "1_000 + window + slack <= the late time: dropped");
        assert!(ids.contains(&recent), "1_001 is one ms inside: kept");
        assert_eq!(ids.len() as u64, RANGES + 1, "every fresh id and the recent one");
        // The old id is new again, as it was before it was dropped; the recent one is still a resend.
        let late_ms = 1_001 + WINDOW_MS - 1;
        assert_eq!(ingest(&mut kernel, &batch(1, "old", 1_000), late_ms, RANGES + 3), 1);
        assert_eq!(ingest(&mut kernel, &batch(2, "recent", 1_001), late_ms, RANGES + 4), 0);
    }

    /// A release before this one kept each id's whole 128-bit digest and stored it in snapshots; this one
    /// keeps the low half (`kept_digest`). Ids restored from such a snapshot still tell an identical
    /// resend (a duplicate) from a changed payload (a conflict).
    #[test]
    fn ids_restored_from_whole_digests_still_tell_a_resend_from_a_conflict() {
        let mut kernel = fresh();
        assert_eq!(ingest(&mut kernel, &batch(1, "t1", 1_000), 1_000, 1), 1);
        let mut stored = snapshot::decode(&kernel.snapshot()).expect("decodes");
        assert_eq!(stored.dedupe.len(), 1);
        for (_, seen) in &mut stored.dedupe {
            assert_eq!(seen.digest >> 64, 0, "this release stores the kept half");
            seen.digest |= 0x9e37_79b9_7f4a_7c15_u128 << 64; // an earlier release's high half
        }
        let mut restored = Kernel::restore(&snapshot::encode(&stored)).expect("restores");
        restored.load_tables(&tables()).expect("valid tables");
        let resent = restored.ingest_checked(&batch(1, "t1", 1_000), 2_000, 2, usize::MAX, None).expect("a batch");
        assert_eq!((resent.accepted, resent.duplicates, resent.rejected.len()), (0, 1, 0));
        let changed = restored.ingest_checked(&batch(1, "t1", 1_001), 2_000, 3, usize::MAX, None).expect("a batch");
        assert_eq!((changed.accepted, changed.duplicates), (0, 0));
        assert_eq!(changed.rejected, [crate::decode::Reason::DuplicateConflict]);
    }

    #[test]
    fn a_batch_that_accepts_nothing_does_not_sweep() {
        // It takes no journal record, so replay would not run its sweep.
        let mut kernel = fresh();
        assert_eq!(ingest(&mut kernel, &batch(1, "old", 1_000), 1_000, 1), 1);
        let old = key("c", "old", &mut Vec::new());
        let range = (old >> (128 - PRUNE_RANGE_BITS)) as u64;
        let late_ms = 1_000 + WINDOW_MS + PRUNE_SLACK_MS;
        let unknown = wire::UsageBatch {
            batch_id: "x".into(),
            events: vec![wire::UsageEvent {
                transaction_id: "u".into(),
                customer_id: "nobody".into(),
                ..Default::default()
            }],
        };
        assert_eq!(ingest(&mut kernel, &unknown.encode_to_vec(), late_ms, range), 0);
        assert!(held_ids(&kernel).contains(&old));
        assert_eq!(ingest(&mut kernel, &batch(2, "new", late_ms), late_ms, range), 1);
        assert!(!held_ids(&kernel).contains(&old), "swept by the batch that is journal record `range`");
    }

    #[test]
    fn replay_from_a_snapshot_or_from_the_start_gives_the_same_state_bytes() {
        let journal = journal();
        let mut live = fresh();
        let mut midway = Vec::new();
        for (seq, (batch, at_ms)) in (1..).zip(&journal) {
            ingest(&mut live, batch, *at_ms, seq);
            if seq == RANGES / 2 {
                midway = live.snapshot();
            }
        }
        let mut restored = Kernel::restore(&midway).expect("restores");
        restored.load_tables(&tables()).expect("valid tables");
        for (seq, (batch, at_ms)) in (1..).zip(&journal).skip(RANGES as usize / 2) {
            ingest(&mut restored, batch, *at_ms, seq);
        }
        let mut replayed = fresh();
        for (seq, (batch, at_ms)) in (1..).zip(&journal) {
            ingest(&mut replayed, batch, *at_ms, seq);
        }
        let state = live.snapshot();
        assert!(held_ids(&live).len() < journal.len(), "something was pruned");
        assert!(restored.snapshot() == state, "snapshot + replay");
        assert!(replayed.snapshot() == state, "replay from the start");
    }

    /// The server's snapshots in segments: a base, then each snapshot's changes (prunes among them), restored
    /// at any point and replayed on, give the live state's bytes; a head without its segments is refused.
    #[test]
    fn segmented_snapshots_restore_the_same_state_bytes() {
        let journal = journal();
        let mut live = fresh();
        let mut segments = vec![live.dedupe_base_segment(7).concat()];
        live.record_dedupe_changes(true);
        let mut taken = Vec::new();
        for (seq, (batch, at_ms)) in (1..).zip(&journal) {
            ingest(&mut live, batch, *at_ms, seq);
            if seq % 1000 == 0 || seq == 2 {
                segments.push(snapshot::segment::from_changes(&mut live.take_dedupe_changes(), 1 << 20).concat());
                taken.push((seq as usize, live.snapshot_head(), segments.clone(), live.snapshot()));
            }
        }
        assert!(taken.len() >= 4);
        for (seq, head, segments, state) in taken {
            let slices: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
            let mut restored = Kernel::restore_segmented(&head, &slices).expect("restores");
            assert!(restored.snapshot() == state, "restored at {seq}");
            restored.load_tables(&tables()).expect("valid tables");
            for (seq, (batch, at_ms)) in (1..).zip(&journal).skip(seq) {
                ingest(&mut restored, batch, *at_ms, seq);
            }
            assert!(restored.snapshot() == live.snapshot(), "replayed on from {seq}");
            assert!(Kernel::restore(&head).err().expect("refused").contains("in segments"));
            let both = Kernel::restore_segmented(&state, &slices);
            assert!(both.err().expect("refused").contains("segments were given"));
        }
        assert!(held_ids(&live).len() < journal.len(), "something was pruned");
    }
}
