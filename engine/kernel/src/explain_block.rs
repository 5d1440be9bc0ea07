//! The explain index's unit of writing: one block per write, built off the ack path from the kernel's explain
//! records (explain.rs), so that the server makes a handful of puts per write instead of one per line.
//!
//! A block holds the records' event parts sorted by line key (a stable sort: journal order within a line),
//! cut into chunks of about `chunk_bytes`. A block is numbered by the first journal seq it may hold, and a
//! chunk's key is block u64 BE | line key (16 bytes) of its first part | that part's ordinal among the line's
//! parts in the block (u32 BE): a block's chunks are one key range, and blocks follow journal order, so LMDB
//! appends them without touching an older page.
//! Chunk layout: (line key 16 bytes | part length u32 LE | event part)*, the event part as in explain.rs.
//!
//! Alongside, one entry per (customer, period) the block touched: key = `period_key` | block u64 BE, value =
//! the first 4 bytes of each line key of that customer and period in the block, sorted and distinct. A reader
//! walks only the blocks of the line's customer and period, and opens the chunks of those whose value names
//! the line's prefix (a prefix shared by two lines only costs a look that finds nothing).

use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::xxh3_128;

use crate::explain::Reader;

/// The 16-byte prefix of the keys of one customer's period among the blocks: a digest of (customer, period).
pub fn period_key(customer_id: &str, period_start_ms: i64) -> [u8; 16] {
    digest(&mut Vec::new(), customer_id, period_start_ms, None)
}

/// explain::line_key for `Some(line)` (the same canonical bytes), period_key for None; `scratch` is reused.
fn digest(scratch: &mut Vec<u8>, customer_id: &str, period_start_ms: i64, line: Option<&str>) -> [u8; 16] {
    scratch.clear();
    scratch.extend_from_slice(&(customer_id.len() as u32).to_le_bytes());
    scratch.extend_from_slice(customer_id.as_bytes());
    scratch.extend_from_slice(&period_start_ms.to_le_bytes());
    if let Some(line) = line {
        scratch.extend_from_slice(&(line.len() as u32).to_le_bytes());
        scratch.extend_from_slice(line.as_bytes());
    }
    xxh3_128(scratch).to_be_bytes()
}

/// One block's entries, sorted by key within each list.
#[derive(Debug, Default, PartialEq)]
pub struct Block {
    /// Its number: the first journal seq it holds (0 for a block that holds nothing).
    pub block: u64,
    /// (28-byte key, chunk).
    pub chunks: Vec<(Vec<u8>, Vec<u8>)>,
    /// (period_key | block, sorted distinct 4-byte line key prefixes).
    pub periods: Vec<([u8; 24], Vec<u8>)>,
}

struct Part<'a> {
    line: [u8; 16],
    period: [u8; 16],
    part: &'a [u8],
}

/// The block of records buffers (any number of batches, in journal order), leaving out records of seqs <=
/// `after_seq` (already indexed). Err for bytes that are not explain records.
pub fn build(records: &[&[u8]], after_seq: u64, chunk_bytes: usize) -> Result<Block, String> {
    let mut parts: Vec<Part> = Vec::new();
    let mut block = 0;
    let mut scratch = Vec::with_capacity(128);
    for &bytes in records {
        let mut reader = Reader { bytes, at: 0 };
        while reader.at < bytes.len() {
            let seq = reader.u64()?;
            let customer = reader.text()?;
            let period = i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes"));
            let line = reader.text()?;
            let part = reader.event_part()?;
            if seq > after_seq {
                block = if parts.is_empty() { seq } else { block.min(seq) };
                let line = digest(&mut scratch, customer, period, Some(line));
                parts.push(Part { line, period: digest(&mut scratch, customer, period, None), part });
            }
        }
    }
    parts.sort_by_key(|part| part.line); // stable
    Ok(Block { block, chunks: chunks(&parts, block, chunk_bytes), periods: periods(&parts, block) })
}

fn chunks(parts: &[Part], block: u64, chunk_bytes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut chunks: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut ordinal = 0u32;
    for (at, part) in parts.iter().enumerate() {
        ordinal = if at > 0 && parts[at - 1].line == part.line { ordinal + 1 } else { 0 };
        if chunks.last().is_none_or(|(_, chunk)| chunk.len() >= chunk_bytes) {
            let mut key = Vec::with_capacity(28);
            key.extend_from_slice(&block.to_be_bytes());
            key.extend_from_slice(&part.line);
            key.extend_from_slice(&ordinal.to_be_bytes());
            chunks.push((key, Vec::with_capacity(chunk_bytes + 256)));
        }
        let chunk = &mut chunks.last_mut().expect("pushed above").1;
        chunk.extend_from_slice(&part.line);
        chunk.extend_from_slice(&(part.part.len() as u32).to_le_bytes());
        chunk.extend_from_slice(part.part);
    }
    chunks
}

fn periods(parts: &[Part], block: u64) -> Vec<([u8; 24], Vec<u8>)> {
    let mut prefixes: FxHashMap<[u8; 16], Vec<[u8; 4]>> = FxHashMap::default();
    for part in parts {
        let named = prefixes.entry(part.period).or_default();
        let prefix: [u8; 4] = part.line[..4].try_into().expect("4 bytes");
        if named.last() != Some(&prefix) {
            named.push(prefix);
        }
    }
    let mut periods: Vec<([u8; 24], Vec<u8>)> = prefixes
        .into_iter()
        .map(|(period, mut named)| {
            named.sort_unstable();
            named.dedup();
            let mut key = [0u8; 24];
            key[..16].copy_from_slice(&period);
            key[16..].copy_from_slice(&block.to_be_bytes());
            (key, named.concat())
        })
        .collect();
    periods.sort_unstable_by_key(|entry| entry.0);
    periods
}

/// The event parts of `line` in one chunk, concatenated, how many there are, and whether the chunk goes on past
/// the line (so the line's parts in this block end here).
pub fn chunk_line(chunk: &[u8], line: &[u8]) -> Result<(Vec<u8>, u32, bool), String> {
    let mut reader = Reader { bytes: chunk, at: 0 };
    let mut found = Vec::new();
    let mut count = 0u32;
    while reader.at < chunk.len() {
        let key = reader.take(16)?;
        let size = reader.u32()? as usize;
        let part = reader.take(size)?;
        match key.cmp(line) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                found.extend_from_slice(part);
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
    fn digests_match_the_line_keys() {
        assert_eq!(digest(&mut Vec::new(), "c", 7, Some("p;k=v")), line_key("c", 7, "p;k=v"));
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
