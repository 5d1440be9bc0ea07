//! Per-event records for ExplainLineItem ("why was I charged this?").
//!
//! The journal keeps each batch as received plus a digest, not what each event did, so the
//! kernel, when asked (`Recorder::enable`), appends one compact record per product an accepted
//! event charged to one reused buffer: customer, period start, invoice line id, transaction id,
//! timestamp, version, the quantity it added to the line, the amount, the overage and the credits
//! per grant. The server takes the buffer once per run of batches (one Python bytes) and, off the
//! ack path, `entries` groups it into index entries: one per (customer, period, line, journal
//! seq), keyed by a 128-bit digest of (customer, period, line) followed by the seq, so one line's
//! events are one contiguous key range in journal order, and a key is 24 bytes whatever the ids.
//!
//! Record layout (little-endian; strings as u32 length + UTF-8 bytes):
//! seq u64 | customer | period_start_ms i64 | line | event part, where the event part (the index
//! entry's value is a run of them) is: transaction_id | timestamp_ms i64 | version u32 |
//! quantity i128 (10^-18) | amount i128 (picos) | overage i128 | draws u32 | (grant_id | credits i128)*.

use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::xxh3_128;

use crate::money::{Fixed, Picos};
use crate::route::Sym;

/// The text of an invoice line id: the product id, then `;key=value` per pricing dimension in
/// key order, `%`, `;`, `=` and every byte outside printable ASCII percent-escaped (uppercase
/// hex of the UTF-8 bytes). Identical to engine/lines.py's `line_id`.
pub fn line_id(product_id: &str, dimensions: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = dimensions.to_vec();
    pairs.sort_unstable();
    let mut out = String::with_capacity(product_id.len() + 16 * pairs.len());
    escape_into(product_id, &mut out);
    for (key, value) in pairs {
        out.push(';');
        escape_into(key, &mut out);
        out.push('=');
        escape_into(value, &mut out);
    }
    out
}

fn escape_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        if (0x20..0x7f).contains(&b) && !matches!(b, b'%' | b';' | b'=') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// The index key's first 16 bytes: a digest of (customer, period start, line).
pub fn line_key(customer_id: &str, period_start_ms: i64, line: &str) -> [u8; 16] {
    let mut canonical = Vec::with_capacity(customer_id.len() + line.len() + 16);
    put_str(&mut canonical, customer_id);
    canonical.extend_from_slice(&period_start_ms.to_le_bytes());
    put_str(&mut canonical, line);
    xxh3_128(&canonical).to_be_bytes()
}

fn put_str(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(&(text.len() as u32).to_le_bytes());
    buf.extend_from_slice(text.as_bytes());
}

/// One product's part of an accepted event, as the record holds it.
pub struct Charged<'a> {
    pub customer_id: &'a str,
    pub transaction_id: &'a str,
    pub timestamp_ms: i64,
    pub period_start_ms: i64,
    pub version: u32,
    pub quantity: Fixed,
    pub amount: Picos,
    pub overage: Picos,
}

/// The buffer of records and what it needs to write them; off unless enabled.
#[derive(Default)]
pub struct Recorder {
    /// Records batches rated as journal seq >= this; None: records nothing.
    from_seq: Option<u64>,
    /// The seq of the batch being rated.
    seq: u64,
    buf: Vec<u8>,
    /// Line ids by (product, dimension combination), computed once each.
    lines: FxHashMap<(Sym, u32), Box<str>>,
}

impl Recorder {
    /// Records the batches rated as seq >= from_seq from now on; None stops recording.
    pub fn enable(&mut self, from_seq: Option<u64>) {
        self.from_seq = from_seq;
    }

    /// Called before each batch: the seq it would take.
    pub fn begin(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Whether the batch being rated is recorded.
    pub fn on(&self) -> bool {
        self.from_seq.is_some_and(|from| self.seq >= from)
    }

    /// The records so far, leaving the buffer empty (its capacity kept for the next batches).
    pub fn take(&mut self) -> Vec<u8> {
        let capacity = self.buf.capacity();
        std::mem::replace(&mut self.buf, Vec::with_capacity(capacity))
    }

    /// Appends one record. `line` gives the line id text of (product, combo) the first time.
    pub fn record<'g>(
        &mut self,
        charged: &Charged,
        product: Sym,
        combo: u32,
        line: impl FnOnce() -> String,
        draws: impl Iterator<Item = (&'g str, Picos)> + Clone,
    ) {
        let line = self.lines.entry((product, combo)).or_insert_with(|| line().into_boxed_str());
        let buf = &mut self.buf;
        // The fixed fields between two strings are gathered and appended at once: each append checks the
        // buffer's capacity, and a record's fifteen appends were most of what recording cost.
        let size = |text: &str| (text.len() as u32).to_le_bytes();
        buf.extend_from_slice(&fields::<12, 2>([&self.seq.to_le_bytes(), &size(charged.customer_id)]));
        buf.extend_from_slice(charged.customer_id.as_bytes());
        buf.extend_from_slice(&fields::<12, 2>([&charged.period_start_ms.to_le_bytes(), &size(line)]));
        buf.extend_from_slice(line.as_bytes());
        put_str(buf, charged.transaction_id);
        let tail: [u8; 64] = fields([
            &charged.timestamp_ms.to_le_bytes(),
            &charged.version.to_le_bytes(),
            &charged.quantity.to_le_bytes(),
            &charged.amount.to_le_bytes(),
            &charged.overage.to_le_bytes(),
            &(draws.clone().count() as u32).to_le_bytes(),
        ]);
        buf.extend_from_slice(&tail);
        for (grant_id, credits) in draws {
            put_str(buf, grant_id);
            buf.extend_from_slice(&credits.to_le_bytes());
        }
    }
}

/// The fields' bytes one after another, exactly filling N bytes.
fn fields<const N: usize, const M: usize>(parts: [&[u8]; M]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    assert_eq!(at, N, "the fields fill the array");
    out
}

/// Reads a records buffer.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("explain records end inside a field at byte {}", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }
    #[inline(always)]
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    #[inline(always)]
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub(crate) fn text(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
    /// Skips an event part, returning it whole.
    pub(crate) fn event_part(&mut self) -> Result<&'a [u8], String> {
        let start = self.at;
        self.text()?;
        self.take(8 + 4 + 16 * 3)?;
        for _ in 0..self.u32()? {
            self.text()?;
            self.take(16)?;
        }
        Ok(&self.bytes[start..self.at])
    }
}

/// An index entry: (24-byte key, value).
pub type Entry = ([u8; 24], Vec<u8>);

/// The index entries of a records buffer (the records of any number of batches, in journal order), leaving out
/// records of seqs <= `after_seq` (already indexed): one per (customer, period, line), key = line_key ++ the
/// first seq among its records (big-endian), value = the line's event parts in journal order; sorted by key. A
/// later call for the same line starts at a later seq, so its entry sorts after this one.
pub fn entries(records: &[u8], after_seq: u64) -> Result<Vec<Entry>, String> {
    let mut reader = Reader { bytes: records, at: 0 };
    let mut at_line: FxHashMap<[u8; 16], usize> = FxHashMap::default();
    let mut grouped: Vec<Entry> = Vec::new();
    while reader.at < records.len() {
        let seq = reader.u64()?;
        let customer = reader.text()?;
        let period = i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes"));
        let line = reader.text()?;
        let part = reader.event_part()?;
        if seq <= after_seq {
            continue;
        }
        let line = line_key(customer, period, line);
        let at = *at_line.entry(line).or_insert_with(|| {
            let mut key = [0u8; 24];
            key[..16].copy_from_slice(&line);
            key[16..].copy_from_slice(&seq.to_be_bytes());
            grouped.push((key, Vec::new()));
            grouped.len() - 1
        });
        grouped[at].1.extend_from_slice(part);
    }
    grouped.sort_unstable_by_key(|entry| entry.0);
    Ok(grouped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ids_escape_like_engine_lines() {
        // engine/lines.py: line_id("ai;x", {"model": "gpt=4", "region": "eu%"}) and a non-ASCII value.
        assert_eq!(line_id("ai;x", &[("region", "eu%"), ("model", "gpt=4")]), "ai%3Bx;model=gpt%3D4;region=eu%25");
        assert_eq!(line_id("p", &[("k", "é\n")]), "p;k=%C3%A9%0A");
        assert_eq!(line_id("p", &[]), "p");
    }

    #[test]
    fn entries_group_a_lines_events_of_one_batch_in_order() {
        let mut recorder = Recorder::default();
        recorder.enable(Some(1));
        recorder.begin(7);
        let event = |tx: &'static str, amount| Charged {
            customer_id: "c",
            transaction_id: tx,
            timestamp_ms: 5,
            period_start_ms: 0,
            version: 1,
            quantity: 1,
            amount,
            overage: 0,
        };
        for (tx, product, amount) in [("a", 1, 10), ("b", 2, 20), ("c", 1, 30)] {
            let draws = [("g", amount)];
            recorder.record(&event(tx, amount), product, 0, || format!("p{product}"), draws.iter().copied());
        }
        assert!(recorder.on());
        let records = recorder.take();
        assert_eq!(entries(&records, 7).unwrap(), vec![]);
        let found = entries(&records, 6).unwrap();
        assert_eq!(found.len(), 2);
        let p1 = found.iter().find(|(k, _)| k[..16] == line_key("c", 0, "p1")).unwrap();
        assert_eq!(&p1.0[16..], &7u64.to_be_bytes());
        let mut reader = Reader { bytes: &p1.1, at: 0 };
        assert_eq!(reader.text().unwrap(), "a");
        reader.at = 0;
        reader.event_part().unwrap();
        assert_eq!(reader.text().unwrap(), "c");
        assert!(entries(&[1, 2, 3], 0).is_err());
        assert!(recorder.take().is_empty());
    }
}
