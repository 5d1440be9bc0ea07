//! A UsageBatch read in place: events whose strings borrow the batch bytes, and every map entry
//! of the batch in two shared vectors, so reading a batch allocates three times, not per event.
//!
//! The walker reads the encoding protobuf libraries write: the known fields with their declared
//! wire types, unknown fields of the common wire types skipped. On anything else (a group, a
//! known field with another wire type, text that is not UTF-8, a truncated field, a malformed
//! varint) it steps aside and prost decodes the batch, so what is accepted, and the message a
//! malformed batch is refused with, stay prost's (with the event and field it refused:
//! crate::undecodable). Like prost, the last of a repeated scalar wins.

use std::ops::Range;

use crate::decode::{decode_batch, wire, EventView};
use crate::undecodable::NotABatch;

struct RawEvent<'a> {
    transaction_id: &'a str,
    customer_id: &'a str,
    event_type: &'a str,
    timestamp_ms: i64,
    reservation_id: &'a str,
    dimensions: Range<usize>,
    values: Range<usize>,
}

pub struct Batch<'a> {
    pub batch_id: &'a str,
    events: Vec<RawEvent<'a>>,
    dimensions: Vec<(&'a str, &'a str)>,
    values: Vec<(&'a str, f64)>,
}

/// Either a batch read in place or, when the walker stepped aside, the one prost decoded (which
/// the caller keeps alive in `owned`).
pub fn read<'a>(bytes: &'a [u8], owned: &'a mut Option<wire::UsageBatch>) -> Result<Batch<'a>, Box<NotABatch>> {
    if let Some(batch) = Batch::walk(bytes) {
        return Ok(batch);
    }
    Ok(Batch::of_wire(owned.insert(decode_batch(bytes)?)))
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn events(&self) -> impl Iterator<Item = EventView<'_, 'a>> {
        self.events_from(0)
    }

    /// The events from index `start` on: reached directly (skipping on `events()` would build a
    /// view of each event passed over).
    pub fn events_from(&self, start: usize) -> impl Iterator<Item = EventView<'_, 'a>> + Clone {
        self.events[start.min(self.events.len())..].iter().map(|e| EventView {
            transaction_id: e.transaction_id,
            customer_id: e.customer_id,
            event_type: e.event_type,
            timestamp_ms: e.timestamp_ms,
            dimensions: &self.dimensions[e.dimensions.clone()],
            values: &self.values[e.values.clone()],
            reservation_id: e.reservation_id,
        })
    }

    /// (customer_id, transaction_id, timestamp_ms) of the events from index `start` on: what
    /// `Kernel::warm`'s first pass reads, without the view's slicing of each event's entries (bounds
    /// checks paid even when the entries go unread).
    pub fn ids_from(&self, start: usize) -> impl Iterator<Item = (&'a str, &'a str, i64)> + '_ {
        self.events[start.min(self.events.len())..].iter().map(|e| (e.customer_id, e.transaction_id, e.timestamp_ms))
    }

    fn empty() -> Batch<'a> {
        Batch { batch_id: "", events: Vec::new(), dimensions: Vec::new(), values: Vec::new() }
    }

    /// The batch read in place, or None when prost must decide.
    pub fn walk(bytes: &'a [u8]) -> Option<Batch<'a>> {
        let mut batch = Batch::empty();
        // Sized once (events counted; most carry a few entries), not grown a dozen times.
        let events = count_events(bytes)?;
        batch.events.reserve_exact(events);
        batch.dimensions.reserve(events * 2);
        batch.values.reserve(events * 3);
        let mut reader = Reader { bytes, at: 0 };
        while !reader.done() {
            match reader.key()? {
                (1, LEN) => batch.batch_id = reader.text()?,
                (2, LEN) => batch.event(reader.len_delimited()?)?,
                (1..=2, _) => return None,
                (_, wire_type) => reader.skip(wire_type)?,
            }
        }
        Some(batch)
    }

    fn event(&mut self, bytes: &'a [u8]) -> Option<()> {
        let (dimensions_from, values_from) = (self.dimensions.len(), self.values.len());
        let mut event = RawEvent {
            transaction_id: "",
            customer_id: "",
            event_type: "",
            timestamp_ms: 0,
            reservation_id: "",
            dimensions: 0..0,
            values: 0..0,
        };
        let mut reader = Reader { bytes, at: 0 };
        while !reader.done() {
            match reader.key()? {
                (1, LEN) => event.transaction_id = reader.text()?,
                (2, LEN) => event.customer_id = reader.text()?,
                (3, LEN) => event.event_type = reader.text()?,
                (4, VARINT) => event.timestamp_ms = reader.varint()? as i64,
                (5, LEN) => self.dimensions.push(dimension_entry(reader.len_delimited()?)?),
                (6, LEN) => self.values.push(value_entry(reader.len_delimited()?)?),
                (7, LEN) => event.reservation_id = reader.text()?,
                (1..=7, _) => return None,
                (_, wire_type) => reader.skip(wire_type)?,
            }
        }
        event.dimensions = dimensions_from..self.dimensions.len();
        event.values = values_from..self.values.len();
        self.events.push(event);
        Some(())
    }

    /// A view of a batch prost decoded.
    pub fn of_wire(batch: &'a wire::UsageBatch) -> Batch<'a> {
        let mut view = Batch { batch_id: &batch.batch_id, ..Batch::empty() };
        for event in &batch.events {
            let (dimensions_from, values_from) = (view.dimensions.len(), view.values.len());
            view.dimensions.extend(event.dimensions.iter().map(|e| (e.key.as_str(), e.value.as_str())));
            view.values.extend(event.values.iter().map(|e| (e.key.as_str(), e.value)));
            view.events.push(RawEvent {
                transaction_id: &event.transaction_id,
                customer_id: &event.customer_id,
                event_type: &event.event_type,
                timestamp_ms: event.timestamp_ms,
                reservation_id: &event.reservation_id,
                dimensions: dimensions_from..view.dimensions.len(),
                values: values_from..view.values.len(),
            });
        }
        view
    }
}

/// How many events the batch holds (None: the walker steps aside).
fn count_events(bytes: &[u8]) -> Option<usize> {
    let mut events = 0;
    let mut reader = Reader { bytes, at: 0 };
    while !reader.done() {
        let (field, wire_type) = reader.key()?;
        events += usize::from(field == 2);
        // An event (LEN) is skipped here, not by a call of `skip` (some 30 instructions an event).
        if wire_type == LEN {
            reader.len_delimited()?;
        } else {
            reader.skip(wire_type)?;
        }
    }
    Some(events)
}

/// The key of a map entry as protobuf libraries write a short one: its tag (field 1, LEN) and a
/// one-byte length first. Some((key, the bytes after it)); None for any other layout (the entry is
/// then walked field by field).
fn short_key(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let [KEY_TAG, key_len, ref rest @ ..] = *bytes else { return None };
    if key_len >= 0x80 {
        return None;
    }
    rest.split_at_checked(usize::from(key_len))
}

const KEY_TAG: u8 = 1 << 3 | LEN;

/// A dimension entry's (key, value) when it is exactly a short key then a short value (field 2,
/// LEN), all ASCII (as tags and one-byte lengths are: one check covers both strings).
fn short_dimension(bytes: &[u8]) -> Option<(&str, &str)> {
    let (key, rest) = short_key(bytes)?;
    let [VALUE_TAG, value_len, ref value @ ..] = *rest else { return None };
    if value.len() != usize::from(value_len) || !is_ascii(bytes) {
        return None;
    }
    const VALUE_TAG: u8 = 2 << 3 | LEN;
    // SAFETY: ASCII bytes are valid UTF-8.
    Some(unsafe { (std::str::from_utf8_unchecked(key), std::str::from_utf8_unchecked(value)) })
}

/// A value entry's (key, value) when it is exactly a short ASCII key then the double (field 2, I64).
fn short_value(bytes: &[u8]) -> Option<(&str, f64)> {
    let (key, rest) = short_key(bytes)?;
    let [VALUE_TAG, ref value @ ..] = *rest else { return None };
    let value: [u8; 8] = value.try_into().ok()?;
    if !is_ascii(key) {
        return None;
    }
    const VALUE_TAG: u8 = 2 << 3 | I64;
    // SAFETY: ASCII bytes are valid UTF-8.
    Some((unsafe { std::str::from_utf8_unchecked(key) }, f64::from_le_bytes(value)))
}

/// A dimension entry's (key, value). Inline: the usual layout (`short_dimension`) is read in a few
/// instructions, and as a call (two an event) saving and restoring registers was a large part of them.
#[inline]
pub(crate) fn dimension_entry(bytes: &[u8]) -> Option<(&str, &str)> {
    if let Some(entry) = short_dimension(bytes) {
        return Some(entry); // the usual layout, read without walking its fields
    }
    walked_dimension_entry(bytes)
}

/// `dimension_entry` of another layout, field by field.
#[inline(never)]
fn walked_dimension_entry(bytes: &[u8]) -> Option<(&str, &str)> {
    let (mut key, mut value) = ("", "");
    let mut reader = Reader { bytes, at: 0 };
    while !reader.done() {
        match reader.key()? {
            (1, LEN) => key = reader.text()?,
            (2, LEN) => value = reader.text()?,
            (1..=2, _) => return None,
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    Some((key, value))
}

/// A value entry's (key, value); inline for the usual layout, as `dimension_entry`.
#[inline]
pub(crate) fn value_entry(bytes: &[u8]) -> Option<(&str, f64)> {
    if let Some(entry) = short_value(bytes) {
        return Some(entry);
    }
    walked_value_entry(bytes)
}

/// `value_entry` of another layout, field by field.
#[inline(never)]
fn walked_value_entry(bytes: &[u8]) -> Option<(&str, f64)> {
    let (mut key, mut value) = ("", 0.0);
    let mut reader = Reader { bytes, at: 0 };
    while !reader.done() {
        match reader.key()? {
            (1, LEN) => key = reader.text()?,
            (2, I64) => value = f64::from_bits(u64::from_le_bytes(reader.take(8)?.try_into().ok()?)),
            (1..=2, _) => return None,
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    Some((key, value))
}

/// `bytes.is_ascii()` for the short texts events carry (ids, map keys and values, entries of both):
/// up to 32 bytes as a few overlapping words OR-ed together and tested once, no loop. The standard
/// check aligns and loops even over 13 bytes, and it ran five times an event, about 220 instructions.
/// Always inline: with the hint alone it stayed a call, seven an event (some 17 instructions each).
#[inline(always)]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let len = bytes.len();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    match len {
        17..=32 => (word(0) | word(8) | word(len - 16) | word(len - 8)) & HIGH_BITS == 0,
        8..=16 => (word(0) | word(len - 8)) & HIGH_BITS == 0,
        4..=7 => (half(0) | half(len - 4)) & HIGH_BITS as u32 == 0,
        // The first, middle and last byte are every byte of a text this short.
        1..=3 => (bytes[0] | bytes[len / 2] | bytes[len - 1]) < 0x80,
        0 => true,
        _ => bytes.is_ascii(),
    }
}

pub(crate) const VARINT: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const I32: u8 = 5;

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// At most ten bytes, the tenth 0 or 1, as prost accepts.
    #[inline]
    pub(crate) fn varint(&mut self) -> Option<u64> {
        // Keys and lengths are almost always one byte.
        if let Some(&byte) = self.bytes.get(self.at) {
            if byte < 0x80 {
                self.at += 1;
                return Some(u64::from(byte));
            }
        }
        self.varint_long()
    }

    /// `varint` past its first byte. A varint of up to eight bytes with eight bytes readable (a
    /// timestamp's six, in the middle of an event) is read as one word: its terminator found by the
    /// bytes' high bits, its 7-bit groups packed by three shifts, some 20 instructions where the loop
    /// took about 70. Longer ones, and those near the end, take the loop (`varint_bytewise`). Never
    /// inline: inlined into `varint`, it made that too large to inline into `key` and `len_delimited`,
    /// which then stayed calls (some 250 instructions an event more).
    #[inline(never)]
    fn varint_long(&mut self) -> Option<u64> {
        const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
        let Some(word) = self.at.checked_add(8).and_then(|end| self.bytes.get(self.at..end)) else {
            return self.varint_bytewise();
        };
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let ends = !word & HIGH_BITS;
        if ends == 0 {
            return self.varint_bytewise(); // nine or ten bytes
        }
        // The terminator's high bit is bit 8n - 1 of the word, for a varint of n bytes.
        let bits = ends.trailing_zeros() + 1;
        let kept = if bits == 64 { word } else { word & ((1u64 << bits) - 1) };
        let mut value = kept & !HIGH_BITS;
        value = ((value & 0x7f00_7f00_7f00_7f00) >> 1) | (value & 0x007f_007f_007f_007f);
        value = ((value & 0x3fff_0000_3fff_0000) >> 2) | (value & 0x0000_3fff_0000_3fff);
        value = ((value & 0x0fff_ffff_0000_0000) >> 4) | (value & 0x0000_0000_0fff_ffff);
        self.at += (bits / 8) as usize;
        Some(value)
    }

    /// `varint` a byte at a time: at most ten bytes, the tenth 0 or 1, as prost accepts.
    fn varint_bytewise(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in 0..10 {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            if shift == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// (field number, wire type); None for what prost refuses (field 0, a key past 32 bits).
    pub(crate) fn key(&mut self) -> Option<(u32, u8)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let field = key >> 3;
        (field != 0).then_some((field, (key & 7) as u8))
    }

    pub(crate) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(count)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    pub(crate) fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let count = usize::try_from(self.varint()?).ok()?;
        self.take(count)
    }

    /// Always inline: with the hint alone it stayed a call, three an event.
    #[inline(always)]
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        let bytes = self.len_delimited()?;
        // Ids and keys are almost always ASCII, which a word at a time checks several times faster.
        if is_ascii(bytes) {
            // SAFETY: ASCII bytes are valid UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).ok()
    }

    /// An unknown field; groups (wire types 3 and 4) are left to prost.
    pub(crate) fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => self.take(4).map(drop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
        let decoded = decode_batch(bytes);
        // Stepping aside (None) is always allowed: prost then decides.
        if let Some(walked) = Batch::walk(bytes) {
            let decoded = decoded.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = Batch::of_wire(&decoded);
            prop_assert_eq!(walked.batch_id, expected.batch_id);
            let shown = |batch: &Batch| batch.events().map(|e| format!("{e:?}")).collect::<Vec<_>>();
            prop_assert_eq!(shown(&walked), shown(&expected));
        }
        Ok(())
    }

    fn event_strategy() -> impl Strategy<Value = wire::UsageEvent> {
        let text = "[a-zé]{0,3}";
        (
            (text, text, text, any::<i64>(), text),
            proptest::collection::vec((text, text), 0..3),
            proptest::collection::vec((text, any::<f64>()), 0..3),
        )
            .prop_map(|((transaction_id, customer_id, event_type, timestamp_ms, reservation_id), d, v)| {
                wire::UsageEvent {
                    transaction_id,
                    customer_id,
                    event_type,
                    timestamp_ms,
                    dimensions: d.into_iter().map(|(key, value)| wire::DimensionEntry { key, value }).collect(),
                    values: v.into_iter().map(|(key, value)| wire::ValueEntry { key, value }).collect(),
                    reservation_id,
                }
            })
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn a_varint_read_as_a_word_is_read_as_byte_by_byte(
            bytes in proptest::collection::vec(any::<u8>(), 0..14),
            continued in 0usize..12,
            at in 0usize..3,
        ) {
            // `continued` bytes with the continuation bit, then one without: varints of every length, too
            // long ones, and ones cut off by the end.
            let mut bytes = bytes;
            for (index, byte) in bytes.iter_mut().enumerate().skip(at) {
                *byte = if index - at < continued { *byte | 0x80 } else { *byte & 0x7f };
            }
            let (mut word, mut bytewise) = (Reader { bytes: &bytes, at }, Reader { bytes: &bytes, at });
            prop_assert_eq!(word.varint_long(), bytewise.varint_bytewise());
            prop_assert_eq!(word.at, bytewise.at);
        }

        #[test]
        fn walks_what_prost_decodes(events in proptest::collection::vec(event_strategy(), 0..4), id in "[a-z]{0,4}") {
            let bytes = wire::UsageBatch { batch_id: id, events }.encode_to_vec();
            prop_assert!(Batch::walk(&bytes).is_some(), "a batch prost encodes is walked");
            same_as_prost(&bytes)?;
        }

        #[test]
        fn damaged_bytes_are_walked_as_prost_decodes_them_or_left_to_prost(
            events in proptest::collection::vec(event_strategy(), 1..3),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = wire::UsageBatch { batch_id: "b".into(), events }.encode_to_vec();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            same_as_prost(&bytes)?;
            let cut = cut.index(bytes.len());
            same_as_prost(&bytes[..cut])?;
        }
    }

    #[test]
    fn the_short_ascii_check_finds_a_high_byte_at_every_position_of_every_length() {
        for len in 0..=40 {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(is_ascii(&text), "{len} ASCII bytes");
            for at in 0..len {
                for high in [0x80, 0xc3, 0xff] {
                    let mut text = text.clone();
                    text[at] = high;
                    assert!(!is_ascii(&text), "byte {at} of {len} is {high:#x}");
                }
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_repeated_scalars_last_wins() {
        // batch_id "a", an unknown varint field 9, batch_id "b"; an event with an unknown fixed32 and two timestamps.
        let event = [0x20, 0x05, 0x4d, 1, 2, 3, 4, 0x20, 0x07, 0x12, 0x01, b'c'];
        let mut bytes = vec![0x0a, 0x01, b'a', 0x48, 0x96, 0x01, 0x0a, 0x01, b'b', 0x12, event.len() as u8];
        bytes.extend_from_slice(&event);
        let walked = Batch::walk(&bytes).expect("walked");
        assert_eq!(walked.batch_id, "b");
        let view = walked.events().next().expect("one event");
        assert_eq!((view.timestamp_ms, view.customer_id), (7, "c"));
        same_as_prost(&bytes).unwrap();
    }

    #[test]
    fn groups_and_wrong_wire_types_are_left_to_prost() {
        assert!(Batch::walk(&[0x0b, 0x0c]).is_none()); // a group
        assert!(Batch::walk(&[0x08, 0x01]).is_none()); // batch_id as a varint
        assert!(Batch::walk(&[0x0a, 0x01, 0xff]).is_none()); // not UTF-8
        assert!(read(&[0x0a, 0x05], &mut None).is_err());
    }
}
