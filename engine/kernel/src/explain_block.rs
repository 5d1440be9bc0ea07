//! The explain index's unit of writing: one block per write, built off the ack path from the kernel's explain
//! records (explain.rs), so that the server makes a handful of puts per write instead of one per line.
//!
//! A block holds the records' event parts sorted by line key (journal order within a line),
//! cut into chunks of at most `chunk_bytes` (a part larger than that is a chunk of its own). A block is numbered by the first journal seq it may hold, and a
//! chunk's key is block u64 BE | line key (16 bytes) of its first part | that part's ordinal among the line's
//! parts in the block (u32 BE): a block's chunks are one key range, and blocks follow journal order, so LMDB
//! appends them without touching an older page.
//! The chunks' layout (explain_chunk.rs, layout 2): the block's base timestamp, then per part a flags byte, its line
//! key unless it is the previous part's, its packed body (quantities in whole units and amounts without their
//! trailing decimal zeros where they allow, a timestamp from the base, a grant id as an index into its
//! (customer, period) entry's table), unpacked back to explain.rs's layout for the one line a page asks for.
//!
//! Alongside, one entry per (customer, period) the block touched: key = the first 8 bytes of `period_key` | block
//! u64 BE, value = varint count | the first 2 bytes of each line key of that customer and period in the block,
//! sorted and distinct | varint count | (varint length | grant id)* of the grants its parts drew on, in order of
//! first draw. Two (customer, period)s whose keys share those 8 bytes share one entry (its lines and grant ids are
//! both's): the entry only tells a reader which blocks to look in, and a part is told from another line's by its
//! whole line key. The key was the whole 16 bytes: the entries go into a table most of whose pages each block
//! rewrites, and on bench records each of their bytes took about four in the file (its pages, and those LMDB freed). A reader walks only the blocks of the line's
//! customer and period, and opens the chunks of those whose value names the line's prefix (a prefix shared by two
//! lines only costs a look that finds nothing).

use xxhash_rust::xxh3::xxh3_128;

use crate::explain::Reader;
use crate::explain_chunk::{pack_part, put_varint, put_zigzag, size_varint_bytes, sized, SAME_LINE};
use crate::prefetch;

/// The 16-byte prefix of the keys of one customer's period among the blocks: a digest of (customer, period).
pub fn period_key(customer_id: &str, period_start_ms: i64) -> [u8; 16] {
    digest(&mut Vec::new(), customer_id.as_bytes(), period_start_ms, None)
}

/// explain::line_key for `Some(line)` (the same canonical bytes), period_key for None; `scratch` is reused.
fn digest(scratch: &mut Vec<u8>, customer_id: &[u8], period_start_ms: i64, line: Option<&[u8]>) -> [u8; 16] {
    scratch.clear();
    scratch.extend_from_slice(&(customer_id.len() as u32).to_le_bytes());
    scratch.extend_from_slice(customer_id);
    scratch.extend_from_slice(&period_start_ms.to_le_bytes());
    if let Some(line) = line {
        scratch.extend_from_slice(&(line.len() as u32).to_le_bytes());
        scratch.extend_from_slice(line);
    }
    xxh3_128(scratch).to_be_bytes()
}

/// A chunk: (28-byte key, value).
pub type Chunk = (Vec<u8>, Vec<u8>);

/// One block's entries, sorted by key within each list.
#[derive(Debug, Default, PartialEq)]
pub struct Block {
    /// Its number: the first journal seq it holds (0 for a block that holds nothing).
    pub block: u64,
    pub chunks: Vec<Chunk>,
    /// (period_key's first 8 bytes | block, its line key prefixes and grant ids: see the module's doc).
    pub periods: Vec<([u8; 16], Vec<u8>)>,
}

/// A record's place in the block: its line key (as two big-endian halves, so that comparing them compares the
/// key's bytes), its flags byte and packed body in the arena, and its (customer, period)'s place in
/// `Builder::period_keys`.
#[derive(Clone, Copy)]
struct Part {
    line: (u64, u64),
    at: usize,
    size: u32,
    period: u32,
}

/// What a builder keeps across blocks, at most (bytes of capacity per working array): a block of FLUSH_BYTES
/// (128 MiB) of records needs about half of that for its arena and for its parts; a larger block (a recovery's)
/// gives back what it took past this once the caller has its entries (`trim`).
pub const KEPT_BYTES_MAX: usize = 64 << 20;

/// Builds blocks, keeping its working arrays and its output across blocks: allocating them afresh for every
/// block cost the kernel zeroing their pages each time. A block's entries are read from the builder
/// (`chunks`, `periods`) until its next build.
pub struct Builder {
    parts: Vec<Part>,
    /// The parts as read, while they are sorted into `parts` (sort_parts).
    spare: Vec<Part>,
    arena: Vec<u8>,
    /// The block's base timestamp (its first record's): each part's is written from it.
    base_ms: i64,
    /// The (customer, period)s the records name, each once, by their key's first half (`PeriodTable`), and those
    /// keys in the order first read (a part's `period` is its place here).
    periods_read: PeriodTable,
    period_keys: Vec<u64>,
    /// The grant ids the parts drew on, per (customer, period) a list linked through `Grant::next`.
    grants: Vec<Grant>,
    grant_ids: Vec<u8>,
    /// (period key's first half, line key prefix, the period's place in `period_keys`), one per line of the block.
    named: Vec<Named>,
    /// The named lines while they are sorted (radix_sort).
    named_spare: Vec<Named>,
    block: u64,
    /// The chunks' values, concatenated; `chunks` holds each chunk's key and end in it.
    values: Vec<u8>,
    chunks: Vec<([u8; 28], usize)>,
    /// The period entries' values, concatenated; `periods` holds each entry's key and end in it.
    prefixes: Vec<u8>,
    periods: Vec<([u8; 16], usize)>,
}

type Named = (u64, [u8; 2], u32);

/// No grant (the end of a period's list).
const NO_GRANT: u32 = u32::MAX;

/// The longest grant id a period keeps in its slot (`PeriodRead::first_id`), so that a slot is one cache line.
const INLINE_GRANT_BYTES: usize = 39;

/// A (customer, period) the block's records name, in its slot of `PeriodTable`: its key's first half (the
/// entry's), its place in `Builder::period_keys`, and its grant ids (first and last in `Builder::grants`), the
/// first of them also here when at most INLINE_GRANT_BYTES long. One cache line: the part of a customer not met
/// just before waits on the miss of its slot, where it waited on four behind one another with the period in a
/// list apart (the map's entry, the period, its first grant, that grant's bytes).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct PeriodRead {
    key: u64,
    index: u32,
    first_grant: u32,
    last_grant: u32,
    grants: u32,
    /// The first grant id's length when it is in `first_id`, else u8::MAX.
    first_size: u8,
    first_id: [u8; INLINE_GRANT_BYTES],
}

impl PeriodRead {
    /// A free slot: no period's place.
    const FREE: Self = Self {
        key: 0,
        index: u32::MAX,
        first_grant: NO_GRANT,
        last_grant: NO_GRANT,
        grants: 0,
        first_size: u8::MAX,
        first_id: [0; INLINE_GRANT_BYTES],
    };

    fn is_free(&self) -> bool {
        self.index == Self::FREE.index
    }
}

/// The block's (customer, period)s by their key's first half: open addressing, probed from the key's low bits (a
/// digest's: spread evenly), at most three quarters full (a slot is a cache line: 16,384 of them, 1 MiB, for the
/// bench's 10,000 customers).
struct PeriodTable {
    slots: Vec<PeriodRead>,
    used: usize,
}

impl PeriodTable {
    /// The slot of `key`: its own, or the free one where it goes.
    #[inline(always)]
    fn find(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = key as usize & mask;
        loop {
            let slot = &self.slots[at];
            if slot.is_free() || slot.key == key {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    /// The slot of `key`, made (as the period at `index`) if the table does not hold it yet; the table grows
    /// first when it would be more than three quarters full.
    fn slot(&mut self, key: u64, index: u32) -> usize {
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            let size = (self.slots.len() * 2).max(1024);
            let old = std::mem::replace(&mut self.slots, vec![PeriodRead::FREE; size]);
            for slot in old.into_iter().filter(|slot| !slot.is_free()) {
                let at = self.find(slot.key);
                self.slots[at] = slot;
            }
        }
        let at = self.find(key);
        if self.slots[at].is_free() {
            self.slots[at] = PeriodRead { key, index, ..PeriodRead::FREE };
            self.used += 1;
        }
        at
    }

    /// The period of `key` (read before).
    fn get(&self, key: u64) -> &PeriodRead {
        &self.slots[self.find(key)]
    }

    fn clear(&mut self) {
        if self.used > 0 {
            self.slots.fill(PeriodRead::FREE);
            self.used = 0;
        }
    }
}

/// A grant id of one (customer, period): its bytes in `Builder::grant_ids`, and the period's next one.
#[derive(Clone, Copy)]
struct Grant {
    at: u32,
    size: u32,
    next: u32,
}

/// The index of `grant` in the period's table (linked through `grants`, its bytes in `ids`), added if new: a
/// customer draws on a grant or two, so the walk is short, and most often ends at the first grant, kept in the
/// period's slot.
#[inline(always)]
fn grant_index(period: &mut PeriodRead, grants: &mut Vec<Grant>, ids: &mut Vec<u8>, grant: &[u8]) -> u32 {
    let mut at = period.first_grant;
    let mut index = 0;
    if period.first_size != u8::MAX {
        let first = &period.first_id[..period.first_size as usize];
        if same_bytes(first, grant) {
            return 0;
        }
        at = grants[at as usize].next;
        index = 1;
    }
    while at != NO_GRANT {
        let known = grants[at as usize];
        if same_bytes(&ids[known.at as usize..(known.at + known.size) as usize], grant) {
            return index;
        }
        at = known.next;
        index += 1;
    }
    let added = grants.len() as u32;
    grants.push(Grant { at: ids.len() as u32, size: grant.len() as u32, next: NO_GRANT });
    ids.extend_from_slice(grant);
    match period.last_grant {
        NO_GRANT => {
            period.first_grant = added;
            if grant.len() <= INLINE_GRANT_BYTES {
                period.first_size = grant.len() as u8;
                period.first_id[..grant.len()].copy_from_slice(grant);
            }
        }
        last => grants[last as usize].next = added,
    }
    period.last_grant = added;
    period.grants += 1;
    index
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub const fn new() -> Self {
        Self {
            parts: Vec::new(),
            spare: Vec::new(),
            arena: Vec::new(),
            base_ms: 0,
            periods_read: PeriodTable { slots: Vec::new(), used: 0 },
            period_keys: Vec::new(),
            grants: Vec::new(),
            grant_ids: Vec::new(),
            named: Vec::new(),
            named_spare: Vec::new(),
            block: 0,
            values: Vec::new(),
            chunks: Vec::new(),
            prefixes: Vec::new(),
            periods: Vec::new(),
        }
    }

    /// Builds the block of records buffers (any number of batches, in journal order), leaving out records of
    /// seqs <= `after_seq` (already indexed); returns its number. Err for bytes that are not explain records
    /// (the builder then holds no entries).
    pub fn build(&mut self, records: &[&[u8]], after_seq: u64, chunk_bytes: usize) -> Result<u64, String> {
        self.clear();
        let built = self.read(records, after_seq);
        if built.is_err() {
            self.clear();
            return built.map(|_| 0);
        }
        sort_parts(&mut self.parts, &mut self.spare);
        self.fill_chunks(chunk_bytes);
        self.fill_periods();
        Ok(self.block)
    }

    /// The block's chunks, (28-byte key, value), sorted by key.
    pub fn chunks(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let starts = std::iter::once(0).chain(self.chunks.iter().map(|&(_, end)| end));
        self.chunks.iter().zip(starts).map(|((key, end), start)| (&key[..], &self.values[start..*end]))
    }

    /// The block's (customer, period) entries, (period_key's first 8 bytes | block, line key prefixes and grant ids),
    /// sorted by key.
    pub fn periods(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let starts = std::iter::once(0).chain(self.periods.iter().map(|&(_, end)| end));
        self.periods.iter().zip(starts).map(|((key, end), start)| (&key[..], &self.prefixes[start..*end]))
    }

    /// Drops the block's entries (read them first), and gives back the capacity past KEPT_BYTES_MAX of each
    /// working array (taken by a block larger than the server's).
    pub fn trim(&mut self) {
        fn cap<T>(items: &mut Vec<T>) {
            let kept = KEPT_BYTES_MAX / std::mem::size_of::<T>().max(1);
            if items.capacity() > kept {
                items.shrink_to(kept);
            }
        }
        self.clear();
        cap(&mut self.parts);
        cap(&mut self.spare);
        cap(&mut self.arena);
        if self.periods_read.slots.len() > KEPT_BYTES_MAX / std::mem::size_of::<PeriodRead>() {
            self.periods_read.slots = Vec::new(); // a table is all slots (free or not): it is made again
        }
        cap(&mut self.period_keys);
        cap(&mut self.grants);
        cap(&mut self.grant_ids);
        cap(&mut self.named);
        cap(&mut self.named_spare);
        cap(&mut self.values);
        cap(&mut self.chunks);
        cap(&mut self.prefixes);
        cap(&mut self.periods);
    }

    fn clear(&mut self) {
        self.parts.clear();
        self.spare.clear();
        self.arena.clear();
        self.base_ms = 0;
        self.periods_read.clear();
        self.period_keys.clear();
        self.grants.clear();
        self.grant_ids.clear();
        self.named.clear();
        self.named_spare.clear();
        self.block = 0;
        self.values.clear();
        self.chunks.clear();
        self.prefixes.clear();
        self.periods.clear();
    }

    /// Reads the records, packing each part as it is read, in order (the records are read once, front to back);
    /// the sort then moves small Part entries, and the chunks copy packed bytes: reading the records in line
    /// order instead missed the cache on nearly every part. Strings are taken as the bytes the kernel wrote
    /// (lengths checked, UTF-8 not: the reader of a page decodes them).
    fn read(&mut self, records: &[&[u8]], after_seq: u64) -> Result<(), String> {
        let total: usize = records.iter().map(|r| r.len()).sum();
        self.parts.reserve(total / 128);
        self.arena.reserve(total / 4);
        // Records come one per product an event charged, so consecutive ones mostly share (customer, period):
        // its digest is computed, and looked up, once for them.
        let mut last: Option<(&[u8], i64, usize)> = None;
        for &bytes in records {
            let mut reader = Reader { bytes, at: 0 };
            let mut prefetched = 0;
            while reader.at < bytes.len() {
                let start = reader.at;
                prefetched = records_ahead(bytes, start, prefetched);
                // Fixed fields next to each other are taken at once (seq and the customer's length, the period and
                // the line's length): each take checks the bounds and carries a Result.
                let (seq, customer_bytes) = seq_and_size(reader.take(12)?);
                let customer = reader.take(customer_bytes)?;
                let (period_start_ms, line_bytes) = seq_and_size(reader.take(12)?);
                let period_start_ms = period_start_ms as i64;
                let period_end = reader.at - 4;
                reader.take(line_bytes)?; // the line
                                          // From the customer's length to the line's end, a record holds digest's canonical bytes (lengths
                                          // u32 and period i64, little-endian): hashed in place instead of copied to a scratch buffer first.
                let line_key = &bytes[start + 8..reader.at];
                if seq <= after_seq {
                    skip_part(&mut reader)?;
                    continue;
                }
                if self.parts.is_empty() {
                    self.block = seq;
                    // The first record's timestamp: the part's, just past its transaction id.
                    let mut ahead = Reader { bytes, at: reader.at };
                    sized(&mut ahead)?;
                    self.base_ms = i64::from_le_bytes(ahead.take(8)?.try_into().expect("8 bytes"));
                } else {
                    self.block = self.block.min(seq);
                }
                let key = xxh3_128(line_key).to_be_bytes();
                let slot = match last {
                    Some((c, p, slot)) if p == period_start_ms && same_bytes(c, customer) => slot,
                    _ => {
                        let key = halves(xxh3_128(&bytes[start + 8..period_end]).to_be_bytes()).0;
                        let next = u32::try_from(self.period_keys.len()).map_err(|e| e.to_string())?;
                        let slot = self.periods_read.slot(key, next);
                        if self.periods_read.slots[slot].index == next {
                            self.period_keys.push(key);
                        }
                        last = Some((customer, period_start_ms, slot));
                        slot
                    }
                };
                let at = self.arena.len();
                let (read, grants, ids) = (&mut self.periods_read.slots[slot], &mut self.grants, &mut self.grant_ids);
                let period = read.index;
                pack_part(
                    &mut reader,
                    &mut self.arena,
                    self.base_ms,
                    #[inline(always)]
                    |grant| grant_index(read, grants, ids, grant),
                )?;
                let size = u32::try_from(self.arena.len() - at).map_err(|e| e.to_string())?;
                self.parts.push(Part { line: halves(key), at, size, period });
            }
        }
        Ok(())
    }

    /// Cuts the sorted parts into chunks of at most `chunk_bytes` (but for a part larger than that), and names each line once for its period
    /// (a line key digests its customer and period: all its parts name the same period).
    fn fill_chunks(&mut self, chunk_bytes: usize) {
        let mut ordinal = 0u32;
        let mut chunk_start = 0;
        for (at, part) in self.parts.iter().enumerate() {
            // The parts are copied in line order from an arena in journal order, larger than the L2: a copy
            // waited for its part's bytes on nearly every part, now they are asked for PREFETCH_PARTS ahead.
            if let Some(ahead) = self.parts.get(at + PREFETCH_PARTS) {
                prefetch::line(&self.arena, ahead.at);
                prefetch::line(&self.arena, (ahead.at + ahead.size as usize).saturating_sub(1));
            }
            let same_line = at > 0 && self.parts[at - 1].line == part.line;
            ordinal = if same_line { ordinal + 1 } else { 0 };
            let line = line_bytes(part.line);
            if !same_line {
                let prefix = line[..2].try_into().expect("2 bytes");
                self.named.push((self.period_keys[part.period as usize], prefix, part.period));
            }
            // A part that would take the chunk past chunk_bytes starts the next one (a part larger than that gets
            // a chunk of its own): an LMDB value takes whole pages, and a chunk cut only once it had passed
            // chunk_bytes took a fifth page for its last part's few hundred bytes (a quarter of the index's file).
            let body = part.size - 1; // past the flags byte
            let part_bytes = 1 + if same_line { 0 } else { 16 } + size_varint_bytes(body) + body as usize;
            let new_chunk = self.chunks.is_empty() || self.values.len() - chunk_start + part_bytes > chunk_bytes;
            if new_chunk {
                if let Some(last) = self.chunks.last_mut() {
                    last.1 = self.values.len();
                }
                chunk_start = self.values.len();
                let mut key = [0u8; 28];
                key[..8].copy_from_slice(&self.block.to_be_bytes());
                key[8..24].copy_from_slice(&line);
                key[24..].copy_from_slice(&ordinal.to_be_bytes());
                self.chunks.push((key, chunk_start));
                put_zigzag(&mut self.values, self.base_ms.into());
            }
            let packed = &self.arena[part.at..part.at + part.size as usize];
            if same_line && !new_chunk {
                self.values.push(packed[0] | SAME_LINE);
            } else {
                self.values.push(packed[0]);
                self.values.extend_from_slice(&line);
            }
            put_varint(&mut self.values, body.into());
            self.values.extend_from_slice(&packed[1..]);
        }
        if let Some(last) = self.chunks.last_mut() {
            last.1 = self.values.len();
        }
    }

    /// Groups the named (period, line prefix) pairs: sorted, distinct, one entry per period, with its grant ids.
    fn fill_periods(&mut self) {
        radix_sort(&mut self.named, &mut self.named_spare, |named| named.0, |&named| named);
        self.named.dedup();
        let mut start = 0;
        while start < self.named.len() {
            let (period, _, read_at) = self.named[start];
            let lines = self.named[start..].iter().take_while(|named| named.0 == period).count();
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&period.to_be_bytes());
            key[8..].copy_from_slice(&self.block.to_be_bytes());
            put_varint(&mut self.prefixes, lines as u128);
            for (_, prefix, _) in &self.named[start..start + lines] {
                self.prefixes.extend_from_slice(prefix);
            }
            let read = *self.periods_read.get(period);
            debug_assert_eq!(read.index, read_at);
            put_varint(&mut self.prefixes, read.grants.into());
            let mut at = read.first_grant;
            while at != NO_GRANT {
                let grant = self.grants[at as usize];
                put_varint(&mut self.prefixes, grant.size.into());
                self.prefixes.extend_from_slice(&self.grant_ids[grant.at as usize..(grant.at + grant.size) as usize]);
                at = grant.next;
            }
            self.periods.push((key, self.prefixes.len()));
            start += lines;
        }
    }
}

/// How far ahead of the record being read `Builder::read` asks for the records' bytes.
const RECORD_PREFETCH_BYTES: usize = 2048;

/// Asks for the records' bytes from `prefetched` up to RECORD_PREFETCH_BYTES past `at`, the record being read;
/// returns how far they are asked for. The records are read front to back, but the CPU's own prefetch does not
/// cross a 4 KiB page.
#[inline(always)]
fn records_ahead(bytes: &[u8], at: usize, mut prefetched: usize) -> usize {
    while prefetched < at + RECORD_PREFETCH_BYTES {
        prefetch::line(bytes, prefetched);
        prefetched += 64;
    }
    prefetched
}

/// How far ahead of the part being copied the chunks ask for a part's bytes: enough copies to cover a miss to
/// the L3.
const PREFETCH_PARTS: usize = 16;

/// Sorts parts by line key, then arena offset (journal order within a line, what a stable sort by line gives).
fn sort_parts(parts: &mut [Part], spare: &mut Vec<Part>) {
    radix_sort(parts, spare, |part| part.line.0, |part| (part.line, part.at));
}

/// Sorts `items` by `key`, whose order follows `top` (the first 64 bits of a digest leading the key: spread
/// evenly): two stable counting passes on the top bits, then each run of items sharing them sorted by the
/// whole key (nearly every run is one item, or one line's parts already in order). It replaced a comparison
/// sort of buckets of about 64 parts, which cost some 500 instructions a part against some 40.
fn radix_sort<T: Copy, K: Ord>(items: &mut [T], spare: &mut Vec<T>, top: impl Fn(&T) -> u64, key: impl Fn(&T) -> K) {
    const DIGIT_BITS_MAX: u32 = 11; // two passes' counts on the stack (32 KiB), their write fronts in the L2
    let count = items.len();
    if count < 64 {
        items.sort_unstable_by_key(key);
        return;
    }
    // About 1 item in 32 shares its top bits with another (at most 22 bits: 1 in 32 up to 130,000 items).
    let bits = ((count.ilog2() + 6) / 2).min(DIGIT_BITS_MAX);
    let low = |item: &T| (top(item) >> (64 - 2 * bits)) as usize & ((1 << bits) - 1);
    let high = |item: &T| (top(item) >> (64 - bits)) as usize;
    let mut starts = [[0usize; 1 << DIGIT_BITS_MAX]; 2];
    for item in items.iter() {
        starts[0][low(item)] += 1;
        starts[1][high(item)] += 1;
    }
    for counts in &mut starts {
        let mut start = 0;
        for slot in &mut counts[..1 << bits] {
            let items_here = *slot;
            *slot = start;
            start += items_here;
        }
    }
    spare.clear();
    spare.extend_from_slice(items);
    for item in items.iter() {
        let at = &mut starts[0][low(item)];
        spare[*at] = *item;
        *at += 1;
    }
    for item in spare.iter() {
        let at = &mut starts[1][high(item)];
        items[*at] = *item;
        *at += 1;
    }
    let group = |item: &T| top(item) >> (64 - 2 * bits);
    let mut start = 0;
    while start < count {
        let first = group(&items[start]);
        let end = items[start + 1..].iter().position(|item| group(item) != first).map_or(count, |n| start + 1 + n);
        let run = &mut items[start..end];
        if run.len() > 1 && !run.is_sorted_by_key(&key) {
            run.sort_unstable_by_key(&key);
        }
        start = end;
    }
}

/// The block of records buffers (any number of batches, in journal order), leaving out records of seqs <=
/// `after_seq` (already indexed), built by a builder of its own. Err for bytes that are not explain records.
pub fn build(records: &[&[u8]], after_seq: u64, chunk_bytes: usize) -> Result<Block, String> {
    let mut builder = Builder::new();
    let block = builder.build(records, after_seq, chunk_bytes)?;
    Ok(Block {
        block,
        chunks: builder.chunks().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
        periods: builder.periods().map(|(k, v)| (k.try_into().expect("16 bytes"), v.to_vec())).collect(),
    })
}

/// Skips an event part (explain.rs's layout).
fn skip_part(reader: &mut Reader) -> Result<(), String> {
    sized(reader)?;
    reader.take(8 + 4 + 16 * 3)?;
    for _ in 0..reader.u32()? {
        sized(reader)?;
        reader.take(16)?;
    }
    Ok(())
}

/// A u64 then a u32 (a seq or a period start, then a string's length), little-endian.
#[inline(always)]
fn seq_and_size(bytes: &[u8]) -> (u64, usize) {
    let (first, size) = bytes.split_at(8);
    (
        u64::from_le_bytes(first.try_into().expect("8 bytes")),
        u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize,
    )
}

/// Whether two short strings (a customer or grant id) are equal, compared eight bytes at a time inline: slice
/// equality called memcmp, whose call and dispatch cost more than comparing a short id.
#[inline(always)]
fn same_bytes(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let (mut left_words, mut right_words) = (left.chunks_exact(8), right.chunks_exact(8));
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    if (&mut left_words).zip(&mut right_words).any(|(l, r)| word(l) != word(r)) {
        return false;
    }
    left_words.remainder().iter().zip(right_words.remainder()).all(|(l, r)| l == r)
}

/// A key's 16 bytes as two big-endian halves: the halves compare as the bytes do.
fn halves(key: [u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(key[8..].try_into().expect("8 bytes")),
    )
}

fn line_bytes(line: (u64, u64)) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&line.0.to_be_bytes());
    bytes[8..].copy_from_slice(&line.1.to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{entries, line_key, Charged, Recorder};
    use crate::explain_chunk::{chunk_line, varint, zigzag};
    use rustc_hash::FxHashMap;

    fn recorded(events: &[(u64, &'static str, &'static str, u32)]) -> Vec<u8> {
        let mut recorder = Recorder::default();
        recorder.enable(Some(1));
        for &(seq, customer, tx, product) in events {
            recorder.begin(seq);
            let charged = Charged {
                customer_id: customer,
                transaction_id: tx,
                timestamp_ms: 5,
                period_start_ms: 0,
                version: 1,
                quantity: 1,
                amount: 10,
                overage: 0,
            };
            recorder.record(&charged, product, 0, || format!("p{product}"), [("g", 10)].iter().copied());
        }
        recorder.take()
    }

    #[test]
    fn digests_match_the_line_keys() {
        assert_eq!(digest(&mut Vec::new(), b"c", 7, Some(b"p;k=v")), line_key("c", 7, "p;k=v"));
        assert_ne!(period_key("c", 7), period_key("c", 8));
    }

    #[test]
    fn parts_sorted_by_their_top_bits_come_in_line_then_journal_order() {
        // Digests as line keys; then keys whose top bits are all equal (one run for the comparison sort),
        // and keys whose first halves are equal but for their lowest bits (runs of lines to order).
        let digested = |n: usize| halves(xxh3_128(&n.to_le_bytes()).to_be_bytes());
        let lines: [&dyn Fn(usize) -> (u64, u64); 3] =
            [&digested, &|n| (n as u64 % 7, digested(n).1), &|n| (digested(n % 3).0 ^ (n as u64 % 5), n as u64)];
        for line_of in lines {
            for count in [0usize, 1, 63, 64, 200, 5_000, 300_000] {
                let mut parts: Vec<Part> = (0..count)
                    .rev() // journal order is not the sort's to rely on
                    .map(|at| Part { line: line_of((at * 7919) % (count / 3 + 1)), at, size: 1, period: 0 })
                    .collect();
                let mut expected: Vec<_> = parts.iter().map(|part| (part.line, part.at)).collect();
                expected.sort_unstable();
                sort_parts(&mut parts, &mut Vec::new());
                assert!(parts.iter().map(|part| (part.line, part.at)).eq(expected), "{count}");
            }
        }
    }

    #[test]
    fn a_builder_reused_across_blocks_builds_what_a_fresh_one_does() {
        let big = recorded(&[(3, "c", "a", 1), (3, "d", "b", 1), (4, "c", "x", 2), (5, "e", "e", 3), (6, "c", "f", 1)]);
        let small = recorded(&[(7, "d", "g", 2), (8, "d", "h", 2)]);
        let mut builder = Builder::new();
        let read = |builder: &Builder, block: u64| Block {
            block,
            chunks: builder.chunks().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            periods: builder.periods().map(|(k, v)| (k.try_into().unwrap(), v.to_vec())).collect(),
        };
        for (records, after_seq, chunk_bytes) in [(&big, 0, 40), (&small, 6, 1 << 20), (&big, 4, 1), (&small, 0, 1)] {
            let block = builder.build(&[records], after_seq, chunk_bytes).unwrap();
            assert_eq!(read(&builder, block), build(&[records], after_seq, chunk_bytes).unwrap());
            builder.trim();
        }
        assert!(builder.build(&[&big[..big.len() - 1]], 0, 64).is_err(), "a record cut short is refused");
        assert_eq!(read(&builder, 0), Block::default(), "nothing left of a refused block");
        assert_eq!(builder.build(&[&small], 8, 64).unwrap(), 0);
        assert_eq!(read(&builder, 0), Block::default(), "every seq already indexed");
    }

    /// A layout-2 chunk's parts: (start, end, whether it names its line by SAME_LINE) of each.
    fn parts_of(chunk: &[u8]) -> Vec<(usize, usize, bool)> {
        let mut reader = Reader { bytes: chunk, at: 0 };
        zigzag(&mut reader).unwrap(); // the base timestamp
        let mut parts = vec![];
        while reader.at < chunk.len() {
            let start = reader.at;
            let same_line = reader.take(1).unwrap()[0] & SAME_LINE != 0;
            if !same_line {
                reader.take(16).unwrap();
            }
            let size = varint(&mut reader).unwrap() as usize;
            reader.take(size).unwrap();
            parts.push((start, reader.at, same_line));
        }
        parts
    }

    /// The parts of customers c, d and e's lines p0 to p3 in a block, read back from its chunks as a page would.
    fn read_back(block: &Block) -> Vec<Vec<u8>> {
        let lines = ["c", "d", "e"].iter().flat_map(|c| (0..4).map(move |p| (c, line_key(c, 0, &format!("p{p}")))));
        let found = lines.map(|(customer, line)| {
            let period = block.periods.iter().find(|(k, _)| k[..8] == period_key(customer, 0)[..8]);
            let Some((_, period)) = period else { return vec![] };
            let chunks = block.chunks.iter().filter(|(key, _)| key[8..24] <= line[..]);
            chunks.flat_map(|(_, chunk)| chunk_line(chunk, &line, Some(period)).unwrap().0).collect()
        });
        found.collect()
    }

    #[test]
    fn chunks_stay_within_chunk_bytes_but_for_a_part_larger_than_that() {
        let events: Vec<_> =
            (0..40).map(|n| (3 + n / 7, ["c", "d", "e"][n as usize % 3], "tx", n as u32 % 4)).collect();
        let records = recorded(&events);
        let whole = build(&[&records], 0, 1 << 20).unwrap();
        assert_eq!(whole.chunks.len(), 1);
        assert_eq!(read_back(&whole).iter().filter(|parts| !parts.is_empty()).count(), 12, "every line read");
        for chunk_bytes in [1, 50, 120, 300, whole.chunks[0].1.len() - 1] {
            let block = build(&[&records], 0, chunk_bytes).unwrap();
            assert_eq!(read_back(&block), read_back(&whole), "{chunk_bytes}");
            for (_, chunk) in &block.chunks {
                let parts = parts_of(chunk);
                assert!(!parts[0].2, "a chunk's first part names its line");
                assert!(chunk.len() <= chunk_bytes || parts.len() == 1, "{chunk_bytes}: {}", chunk.len());
            }
            // Cut only where the next part would not fit: no two neighbours would have fitted in one (the next
            // chunk's first part without its line key when it goes on with the same line).
            for pair in block.chunks.windows(2) {
                let (start, end, _) = parts_of(&pair[1].1)[0];
                let same_line = pair[0].0[8..24] == pair[1].0[8..24]
                    || parts_of(&pair[0].1).len() > 1 && {
                        let last = parts_of(&pair[0].1).into_iter().rev().find(|part| !part.2).unwrap();
                        pair[0].1[last.0 + 1..last.0 + 17] == pair[1].0[8..24]
                    };
                let next_first = end - start - if same_line { 16 } else { 0 };
                assert!(pair[0].1.len() + next_first > chunk_bytes, "{chunk_bytes}");
            }
        }
    }

    #[test]
    fn a_block_holds_each_lines_parts_in_journal_order_across_chunks() {
        let events = [(3, "c", "a", 1), (3, "d", "b", 1), (4, "c", "x", 2), (5, "c", "e", 1), (6, "c", "f", 1)];
        let records = recorded(&events);
        assert!(build(&[&records[..records.len() / 2]], 0, 64).is_err(), "a record cut in two is refused");
        assert_eq!(build(&[&records], 6, 64).unwrap(), Block::default(), "every seq already indexed");
        let block = build(&[&records], 3, 1).unwrap(); // seq 3 already indexed; one part per chunk
        assert_eq!((block.block, block.chunks.len()), (4, 3));
        let line = line_key("c", 0, "p1");
        let of_c =
            |block: &Block| block.periods.iter().find(|(k, _)| k[..8] == period_key("c", 0)[..8]).unwrap().1.clone();
        let mut ordinals = vec![];
        for (key, chunk) in &block.chunks {
            assert_eq!(&key[..8], &4u64.to_be_bytes());
            if key[8..24] == line {
                ordinals.push(u32::from_be_bytes(key[24..].try_into().unwrap()));
                assert_eq!(chunk_line(chunk, &line, Some(&of_c(&block))).unwrap().1, 1);
            }
        }
        assert_eq!(ordinals, vec![0, 1]);
        let whole = build(&[&records[..0], &records], 0, 1 << 20).unwrap();
        assert_eq!(whole.chunks.len(), 1);
        let (parts, count, _) = chunk_line(&whole.chunks[0].1, &line, Some(&of_c(&whole))).unwrap();
        assert_eq!(count, 3);
        let old = entries(&records, 0).unwrap();
        assert_eq!(parts, old.iter().find(|(k, _)| k[..16] == line).unwrap().1);
        assert_eq!(whole.periods.len(), 2);
        let of_c = whole.periods.iter().find(|(k, _)| k[..8] == period_key("c", 0)[..8]).unwrap();
        assert_eq!(&of_c.0[8..], &3u64.to_be_bytes());
        // Two lines' 2-byte prefixes, sorted, then the one grant the period's parts drew on.
        let mut named = [line[..2].to_vec(), line_key("c", 0, "p2")[..2].to_vec()];
        named.sort();
        assert_eq!(of_c.1, [&[2][..], &named.concat(), &[1, 1], b"g"].concat());
    }

    #[test]
    fn grants_read_back_whatever_their_length_count_and_order_across_many_periods() {
        // 3,000 (customer, period)s: the period table grows past its first sizes; grant ids of up to 39 bytes are
        // kept in their period's slot, longer ones are not; periods draw on one to three grants, in varying order.
        let grant_ids: Vec<String> = [1usize, 38, 39, 40, 90].iter().map(|&n| "g".repeat(n)).collect();
        let mut recorder = Recorder::default();
        recorder.enable(Some(1));
        let customers: Vec<String> = (0..1_000).map(|n| format!("c{n}")).collect();
        let mut expected_lines = vec![];
        for n in 0..9_000usize {
            let (customer, period) = (&customers[n % 1_000], (n / 1_000 % 3) as i64 * 1_000);
            let drawn =
                (0..1 + (n * 7) % 3).map(|k| (grant_ids[(n / 3 + k * (1 + n % 2)) % 5].as_str(), 5 + k as i128));
            recorder.begin(1 + n as u64 / 100);
            let charged = Charged {
                customer_id: customer,
                transaction_id: "t",
                timestamp_ms: 5,
                period_start_ms: period,
                version: 1,
                quantity: 1,
                amount: 10,
                overage: 0,
            };
            let product = (n % 2) as u32;
            recorder.record(&charged, product, 0, || format!("p{product}"), drawn.collect::<Vec<_>>().into_iter());
            expected_lines.push((customer.clone(), period, format!("p{product}")));
        }
        let records = recorder.take();
        let block = build(&[&records], 0, 4096).unwrap();
        let lines: FxHashMap<[u8; 16], (&str, i64)> =
            expected_lines.iter().map(|(c, p, l)| (line_key(c, *p, l), (c.as_str(), *p))).collect();
        let read = entries(&records, 0).unwrap();
        assert_eq!(read.len(), lines.len());
        for (key, entry) in read {
            let line: [u8; 16] = key[..16].try_into().unwrap();
            let (customer, period) = lines[&line];
            let of_period = period_key(customer, period);
            let entry_of = block.periods.iter().find(|(k, _)| k[..8] == of_period[..8]).unwrap();
            // The line's parts start in the last chunk keyed before it, or in the first keyed by it.
            let from = block.chunks.partition_point(|(key, _)| key[8..24] < line[..]).saturating_sub(1);
            let chunks = block.chunks[from..].iter().take_while(|(key, _)| key[8..24] <= line[..]);
            let parts: Vec<u8> =
                chunks.flat_map(|(_, chunk)| chunk_line(chunk, &line, Some(&entry_of.1)).unwrap().0).collect();
            assert_eq!(parts, entry, "{customer} {period} {line:?}");
        }
    }

    #[test]
    fn a_lines_key_is_written_once_per_run_of_its_parts_in_a_chunk() {
        let events = [(3, "c", "a", 1), (4, "c", "b", 1), (5, "d", "c", 1), (6, "c", "d", 1)];
        let records = recorded(&events);
        let block = build(&[&records], 0, 1 << 20).unwrap();
        let parts = parts_of(&block.chunks[0].1);
        // c's p1 three times, d's p1 once: two runs, their first parts keyed, in either order of the digests.
        let keyed: Vec<bool> = parts.iter().map(|part| !part.2).collect();
        assert!(keyed == [true, true, false, false] || keyed == [true, false, false, true], "{keyed:?}");
        let line = line_key("c", 0, "p1");
        let of_c = block.periods.iter().find(|(k, _)| k[..8] == period_key("c", 0)[..8]).unwrap();
        let (_, count, _) = chunk_line(&block.chunks[0].1, &line, Some(&of_c.1)).unwrap();
        assert_eq!(count, 3);
        // Cut after each part, every chunk's first part carries the key again.
        for (_, chunk) in &build(&[&records], 0, 1).unwrap().chunks {
            assert_eq!(parts_of(chunk).iter().map(|part| part.2).collect::<Vec<_>>(), [false]);
        }
    }
}
