//! The explain index's unit of writing: one block per write, built off the ack path from the kernel's explain
//! records (explain.rs), so that the server makes a handful of puts per write instead of one per line.
//!
//! A block holds the records' event parts sorted by line key (journal order within a line),
//! cut into chunks of about `chunk_bytes`. A block is numbered by the first journal seq it may hold, and a
//! chunk's key is block u64 BE | line key (16 bytes) of its first part | that part's ordinal among the line's
//! parts in the block (u32 BE): a block's chunks are one key range, and blocks follow journal order, so LMDB
//! appends them without touching an older page.
//! Chunk layout: (line key 16 bytes | packed length | packed event part)*: the event part of explain.rs with
//! every length and count a LEB128 varint and every integer a zigzag varint (a quantity, amount or credit of a
//! few units takes a few bytes instead of 16; an index write costs about what its bytes cost), unpacked back to
//! explain.rs's layout for the one line a page asks for.
//!
//! Alongside, one entry per (customer, period) the block touched: key = `period_key` | block u64 BE, value =
//! the first 4 bytes of each line key of that customer and period in the block, sorted and distinct. A reader
//! walks only the blocks of the line's customer and period, and opens the chunks of those whose value names
//! the line's prefix (a prefix shared by two lines only costs a look that finds nothing).

use xxhash_rust::xxh3::xxh3_128;

use crate::explain::Reader;

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
    /// (period_key | block, sorted distinct 4-byte line key prefixes).
    pub periods: Vec<([u8; 24], Vec<u8>)>,
}

/// A record's place in the block: its line key (as two big-endian halves, so that comparing them compares the
/// key's bytes), and its event part packed in the arena.
struct Part {
    line: (u64, u64),
    at: usize,
    size: u32,
}

/// The (customer, period) entries of a block being built: a (period key, line key prefix) pair per record, sorted
/// and grouped at the end (a pair list is written in order; a map of lists missed the cache on nearly every record).
/// Records come one per product an event charged, so consecutive ones mostly share (customer, period): its
/// digest is computed once for them.
#[derive(Default)]
struct Periods<'a> {
    named: Vec<((u64, u64), [u8; 4])>,
    last: Option<(&'a [u8], i64, (u64, u64))>, // (customer, period, its key)
}

/// The block of records buffers (any number of batches, in journal order), leaving out records of seqs <=
/// `after_seq` (already indexed). Err for bytes that are not explain records.
pub fn build(records: &[&[u8]], after_seq: u64, chunk_bytes: usize) -> Result<Block, String> {
    // Parts are packed as they are read, in order (the records are read once, front to back); the sort then
    // moves small Part entries, and the chunks copy packed bytes: reading the records in line order instead
    // missed the cache on nearly every part. Strings are taken as the bytes the kernel wrote (lengths checked,
    // UTF-8 not: the reader of a page decodes them).
    let total: usize = records.iter().map(|r| r.len()).sum();
    let mut parts: Vec<Part> = Vec::with_capacity(total / 128);
    let mut arena: Vec<u8> = Vec::with_capacity(total / 2);
    let mut periods = Periods::default();
    let mut block = 0;
    let mut scratch = Vec::with_capacity(128);
    for &bytes in records {
        let mut reader = Reader { bytes, at: 0 };
        while reader.at < bytes.len() {
            let seq = reader.u64()?;
            let customer = sized(&mut reader)?;
            let period = i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes"));
            let line = sized(&mut reader)?;
            if seq <= after_seq {
                skip_part(&mut reader)?;
                continue;
            }
            block = if parts.is_empty() { seq } else { block.min(seq) };
            let key = digest(&mut scratch, customer, period, Some(line));
            let at = arena.len();
            pack_part(&mut reader, &mut arena)?;
            let size = u32::try_from(arena.len() - at).map_err(|e| e.to_string())?;
            let period = periods.key(&mut scratch, customer, period);
            periods.named.push((period, key[..4].try_into().expect("4 bytes")));
            parts.push(Part { line: halves(key), at, size });
        }
    }
    // Unstable but ordered by arena offset within a line, which is journal order: what a stable sort gives.
    parts.sort_unstable_by_key(|part| (part.line, part.at));
    Ok(Block { block, chunks: chunks(&parts, &arena, block, chunk_bytes), periods: periods.entries(block) })
}

/// A string field's bytes (u32 length first).
fn sized<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], String> {
    let size = reader.u32()? as usize;
    reader.take(size)
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

impl<'a> Periods<'a> {
    /// The period key of (customer, period): the previous record's when it names the same.
    fn key(&mut self, scratch: &mut Vec<u8>, customer: &'a [u8], period: i64) -> (u64, u64) {
        if let Some((last_customer, last_period, key)) = self.last {
            if last_period == period && last_customer == customer {
                return key;
            }
        }
        let key = halves(digest(scratch, customer, period, None));
        self.last = Some((customer, period, key));
        key
    }

    /// (period_key | block, sorted distinct 4-byte line key prefixes), sorted by key.
    fn entries(mut self, block: u64) -> Vec<([u8; 24], Vec<u8>)> {
        self.named.sort_unstable();
        self.named.dedup();
        let mut periods: Vec<([u8; 24], Vec<u8>)> = Vec::new();
        for (period, prefix) in self.named {
            let mut key = [0u8; 24];
            key[..16].copy_from_slice(&line_bytes(period));
            key[16..].copy_from_slice(&block.to_be_bytes());
            if periods.last().is_none_or(|(last, _)| *last != key) {
                periods.push((key, Vec::with_capacity(8)));
            }
            periods.last_mut().expect("pushed above").1.extend_from_slice(&prefix);
        }
        periods
    }
}

/// A key's 16 bytes as two big-endian halves: the halves compare as the bytes do.
fn halves(key: [u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(key[8..].try_into().expect("8 bytes")),
    )
}

fn chunks(parts: &[Part], arena: &[u8], block: u64, chunk_bytes: usize) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut ordinal = 0u32;
    for (at, part) in parts.iter().enumerate() {
        ordinal = if at > 0 && parts[at - 1].line == part.line { ordinal + 1 } else { 0 };
        let line = line_bytes(part.line);
        if chunks.last().is_none_or(|(_, chunk)| chunk.len() >= chunk_bytes) {
            let mut key = Vec::with_capacity(28);
            key.extend_from_slice(&block.to_be_bytes());
            key.extend_from_slice(&line);
            key.extend_from_slice(&ordinal.to_be_bytes());
            chunks.push((key, Vec::with_capacity(chunk_bytes + 256)));
        }
        let chunk = &mut chunks.last_mut().expect("pushed above").1;
        chunk.extend_from_slice(&line);
        put_varint(chunk, part.size.into());
        chunk.extend_from_slice(&arena[part.at..part.at + part.size as usize]);
    }
    chunks
}

fn line_bytes(line: (u64, u64)) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&line.0.to_be_bytes());
    bytes[8..].copy_from_slice(&line.1.to_be_bytes());
    bytes
}

fn put_varint(out: &mut Vec<u8>, value: u128) {
    // Most values fit 64 bits: their loop runs on one register instead of two.
    if let Ok(mut narrow) = u64::try_from(value) {
        while narrow >= 0x80 {
            out.push((narrow as u8) | 0x80);
            narrow >>= 7;
        }
        out.push(narrow as u8);
        return;
    }
    let mut wide = value;
    while wide >= 0x80 {
        out.push((wide as u8) | 0x80);
        wide >>= 7;
    }
    out.push(wide as u8);
}

fn put_zigzag(out: &mut Vec<u8>, value: i128) {
    put_varint(out, ((value << 1) ^ (value >> 127)) as u128);
}

fn varint(reader: &mut Reader) -> Result<u128, String> {
    let mut value = 0u128;
    for shift in (0..128).step_by(7) {
        let byte = reader.take(1)?[0];
        value |= u128::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(format!("a varint runs past 128 bits at byte {}", reader.at))
}

fn zigzag(reader: &mut Reader) -> Result<i128, String> {
    let value = varint(reader)?;
    Ok(((value >> 1) as i128) ^ -((value & 1) as i128))
}

fn i128_at(reader: &mut Reader) -> Result<i128, String> {
    Ok(i128::from_le_bytes(reader.take(16)?.try_into().expect("16 bytes")))
}

/// The event part at the reader (explain.rs's layout), packed.
fn pack_part(reader: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
    let put_text = |out: &mut Vec<u8>, reader: &mut Reader| -> Result<(), String> {
        let size = reader.u32()?;
        put_varint(out, size.into());
        out.extend_from_slice(reader.take(size as usize)?); // the kernel's UTF-8, decoded by the page's reader
        Ok(())
    };
    put_text(out, reader)?;
    put_zigzag(out, i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes")).into());
    put_varint(out, reader.u32()?.into());
    for _ in 0..3 {
        put_zigzag(out, i128_at(reader)?); // quantity, amount, overage
    }
    let draws = reader.u32()?;
    put_varint(out, draws.into());
    for _ in 0..draws {
        put_text(out, reader)?;
        put_zigzag(out, i128_at(reader)?);
    }
    Ok(())
}

/// A packed event part, appended to `out` in explain.rs's layout.
fn unpack_part(reader: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
    fn text(reader: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
        let size = u32::try_from(varint(reader)?).map_err(|e| e.to_string())?;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(reader.take(size as usize)?);
        Ok(())
    }
    let small = |value: u128| u32::try_from(value).map_err(|e| e.to_string());
    text(reader, out)?;
    out.extend_from_slice(&i64::try_from(zigzag(reader)?).map_err(|e| e.to_string())?.to_le_bytes());
    out.extend_from_slice(&small(varint(reader)?)?.to_le_bytes());
    for _ in 0..3 {
        out.extend_from_slice(&zigzag(reader)?.to_le_bytes());
    }
    let draws = small(varint(reader)?)?;
    out.extend_from_slice(&draws.to_le_bytes());
    for _ in 0..draws {
        text(reader, out)?;
        out.extend_from_slice(&zigzag(reader)?.to_le_bytes());
    }
    Ok(())
}

/// The event parts of `line` in one chunk, concatenated, how many there are, and whether the chunk goes on past
/// the line (so the line's parts in this block end here).
pub fn chunk_line(chunk: &[u8], line: &[u8]) -> Result<(Vec<u8>, u32, bool), String> {
    let mut reader = Reader { bytes: chunk, at: 0 };
    let mut found = Vec::new();
    let mut count = 0u32;
    while reader.at < chunk.len() {
        let key = reader.take(16)?;
        let size = usize::try_from(varint(&mut reader)?).map_err(|e| e.to_string())?;
        let packed = reader.take(size)?;
        match key.cmp(line) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                let mut part = Reader { bytes: packed, at: 0 };
                unpack_part(&mut part, &mut found)?;
                if part.at != packed.len() {
                    return Err(format!("a packed event part has {} bytes past its end", packed.len() - part.at));
                }
                count += 1;
            }
            std::cmp::Ordering::Greater => return Ok((found, count, true)),
        }
    }
    Ok((found, count, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{entries, line_key, Charged, Recorder};

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
    fn packed_parts_unpack_to_the_same_bytes_at_the_extremes() {
        let mut part = Vec::new();
        for tx in ["", "tx-é"] {
            part.clear();
            part.extend_from_slice(&(tx.len() as u32).to_le_bytes());
            part.extend_from_slice(tx.as_bytes());
            part.extend_from_slice(&i64::MIN.to_le_bytes());
            part.extend_from_slice(&u32::MAX.to_le_bytes());
            for value in [i128::MAX, i128::MIN, -1] {
                part.extend_from_slice(&value.to_le_bytes());
            }
            part.extend_from_slice(&2u32.to_le_bytes());
            for (grant, credits) in [("g", 0i128), ("", i128::MIN + 1)] {
                part.extend_from_slice(&(grant.len() as u32).to_le_bytes());
                part.extend_from_slice(grant.as_bytes());
                part.extend_from_slice(&credits.to_le_bytes());
            }
            let mut packed = Vec::new();
            pack_part(&mut Reader { bytes: &part, at: 0 }, &mut packed).unwrap();
            let mut unpacked = Vec::new();
            unpack_part(&mut Reader { bytes: &packed, at: 0 }, &mut unpacked).unwrap();
            assert_eq!(unpacked, part);
        }
        assert!(varint(&mut Reader { bytes: &[0xff; 20], at: 0 }).is_err(), "past 128 bits");
    }

    #[test]
    fn digests_match_the_line_keys() {
        assert_eq!(digest(&mut Vec::new(), b"c", 7, Some(b"p;k=v")), line_key("c", 7, "p;k=v"));
        assert_ne!(period_key("c", 7), period_key("c", 8));
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
        let mut ordinals = vec![];
        for (key, chunk) in &block.chunks {
            assert_eq!(&key[..8], &4u64.to_be_bytes());
            if key[8..24] == line {
                ordinals.push(u32::from_be_bytes(key[24..].try_into().unwrap()));
                assert_eq!(chunk_line(chunk, &line).unwrap().1, 1);
            }
        }
        assert_eq!(ordinals, vec![0, 1]);
        let whole = build(&[&records[..0], &records], 0, 1 << 20).unwrap();
        assert_eq!(whole.chunks.len(), 1);
        let (parts, count, _) = chunk_line(&whole.chunks[0].1, &line).unwrap();
        assert_eq!(count, 3);
        let old = entries(&records, 0).unwrap();
        assert_eq!(parts, old.iter().find(|(k, _)| k[..16] == line).unwrap().1);
        assert_eq!(whole.periods.len(), 2);
        let of_c = whole.periods.iter().find(|(k, _)| k[..16] == period_key("c", 0)).unwrap();
        assert_eq!(&of_c.0[16..], &3u64.to_be_bytes());
        let mut named = [line[..4].to_vec(), line_key("c", 0, "p2")[..4].to_vec()];
        named.sort();
        assert_eq!(of_c.1, named.concat());
    }
}
