//! Decoding a UsageBatch and validating each event, with the Python engine's reject messages.
//!
//! The wire types come from the kernel's private `proto/usage_wire.proto`, which declares the
//! event's maps as repeated entries (wire-identical). Validation resolves repeated keys (the
//! last value wins, at the key's first position) and converts every value to an exact quantity
//! at 10^-18, refusing the event when a value cannot be held exactly.

use prost::Message;
use smallvec::SmallVec;

use crate::money::{fixed_from_f64, python_repr, Fixed, SCALE_DIGITS, USAGE_VALUE_MAX};
use crate::undecodable::NotABatch;

pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/tariff.kernel.rs"));
}

pub const TEXT_BYTES_MAX: usize = 256;
pub const EVENT_MAP_ENTRIES_MAX: usize = 64;

/// RejectReason numbers of tariff.v1 (usage.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    InvalidEvent = 1,
    UnknownCustomer = 2,
    NoActiveContract = 3,
    TimestampOutOfRange = 4,
    PeriodClosed = 5,
    DuplicateConflict = 6,
    NoApplicableRate = 7,
}

impl Reason {
    pub fn from_wire(number: i32) -> Option<Reason> {
        const ALL: [Reason; 7] = [
            Reason::InvalidEvent,
            Reason::UnknownCustomer,
            Reason::NoActiveContract,
            Reason::TimestampOutOfRange,
            Reason::PeriodClosed,
            Reason::DuplicateConflict,
            Reason::NoApplicableRate,
        ];
        ALL.into_iter().find(|r| *r as i32 == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::InvalidEvent => "INVALID_EVENT",
            Reason::UnknownCustomer => "UNKNOWN_CUSTOMER",
            Reason::NoActiveContract => "NO_ACTIVE_CONTRACT",
            Reason::TimestampOutOfRange => "TIMESTAMP_OUT_OF_RANGE",
            Reason::PeriodClosed => "PERIOD_CLOSED",
            Reason::DuplicateConflict => "DUPLICATE_CONFLICT",
            Reason::NoApplicableRate => "NO_APPLICABLE_RATE",
        }
    }
}

/// Why one event is not rated: it becomes an EventRejection, never a request error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::InvalidEvent, message)
    }
}

/// A validated event: maps resolved (sorted by key), values exact. Held inline for the usual few
/// entries, so validating an event allocates nothing.
pub struct Event<'a> {
    pub transaction_id: &'a str,
    pub customer_id: &'a str,
    pub event_type: &'a str,
    pub timestamp_ms: i64,
    pub dimensions: SmallVec<[(&'a str, &'a str); 4]>,
    pub values: SmallVec<[(&'a str, Fixed); 4]>,
    pub reservation_id: &'a str,
}

impl<'a> Event<'a> {
    /// An event to check into (`check_into`).
    pub fn empty() -> Event<'a> {
        Event {
            transaction_id: "",
            customer_id: "",
            event_type: "",
            timestamp_ms: 0,
            dimensions: SmallVec::new(),
            values: SmallVec::new(),
            reservation_id: "",
        }
    }
    pub fn dimension(&self, key: &str) -> Option<&'a str> {
        find(&self.dimensions, key)
    }
    #[inline]
    pub fn value(&self, key: &str) -> Option<Fixed> {
        find(&self.values, key)
    }
}

/// The value under `key` in entries sorted by key. A few are scanned (string equality compares
/// lengths first, so most cost no memcmp); many are bisected.
fn find<V: Copy>(entries: &[(&str, V)], key: &str) -> Option<V> {
    if entries.len() <= 8 {
        return entries.iter().find(|(k, _)| same_text(k, key)).map(|(_, v)| *v);
    }
    entries.binary_search_by(|(k, _)| (*k).cmp(key)).ok().map(|at| entries[at].1)
}

/// `a == b` for the short keys events carry: the lengths, then up to 16 bytes compared as two
/// overlapping words (up to 3 as their first, middle and last byte) in place of a call to memcmp.
/// Short texts too: an event type such as "ai", compared for every event, called memcmp.
#[inline]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let len = a.len();
    if len != b.len() {
        return false;
    }
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    match len {
        8..=16 => word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
        // The first, middle and last byte are every byte of a text this short.
        1..=3 => a[0] == b[0] && a[len / 2] == b[len / 2] && a[len - 1] == b[len - 1],
        0 => true,
        _ => a == b,
    }
}

/// `a < b` for an event's map keys: keys sent in order mostly differ in their first byte, which
/// decides without a call to memcmp; a shared first byte (or an empty key) compares the strings.
#[inline]
fn text_less(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// One event as it arrived: strings borrowed from the batch bytes (`'a`), its map entries as
/// they came, repeats included, from storage the view borrows (`'s`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventView<'s, 'a> {
    pub transaction_id: &'a str,
    pub customer_id: &'a str,
    pub event_type: &'a str,
    pub timestamp_ms: i64,
    pub dimensions: &'s [(&'a str, &'a str)],
    pub values: &'s [(&'a str, f64)],
    pub reservation_id: &'a str,
}

impl<'a> EventView<'_, 'a> {
    /// The value under `key` as checking resolves it (a repeated key's last entry), for reading
    /// ahead of checking (`Kernel::warm`).
    pub fn dimension(&self, key: &str) -> Option<&'a str> {
        self.dimensions.iter().rev().find(|(k, _)| same_text(k, key)).map(|(_, v)| *v)
    }
}

/// The whole batch as prost reads it: the slow path, and what decides a malformed batch's error (which
/// names the event and field prost refused: crate::undecodable). Boxed: a refusal is rare, and a
/// Result no larger than before keeps `batch::read`'s good path as short as it was (the kernel spike,
/// 60 batches, 10,000 customers, 2 regions: 7,115 instructions an event, 7,133 with it inline).
pub fn decode_batch(bytes: &[u8]) -> Result<wire::UsageBatch, Box<NotABatch>> {
    wire::UsageBatch::decode(bytes).map_err(|e| Box::new(NotABatch::of::<wire::UsageBatch>(bytes, &e)))
}

/// Python's repr of a string, for messages ('key', or "it's"), every character Python's repr escapes escaped as it
/// escapes it ('acme\\n', '\\x00', 'acme\\u200b', 'acme\\xa0'), so a message quoting what a client sent stays on
/// one line, shows the invisible character that breaks an id, and quotes it as the control plane's messages do
/// (engine/control.py quoted_id: Authorize and a usage event quote one customer_id alike).
pub fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push(quote);
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' if quote == '\'' => quoted.push_str("\\'"),
            '\t' => quoted.push_str("\\t"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c if !python_printable(c) => quoted.push_str(&python_escape(c)),
            c => quoted.push(c),
        }
    }
    quoted.push(quote);
    quoted
}

/// Whether Python's repr shows `c` as it is (str.isprintable): all but Unicode's "Other" and "Separator"
/// categories (Cc, Cf, Cs, Co, Cn, Zl, Zp, Zs), the space excepted. std's escape_debug escapes exactly those (core's
/// printable table is built from the same categories), and also a grapheme extender (U+0301, which Python shows),
/// but a str's escape_debug escapes an extender only at its start: after a letter, `c` is escaped iff Python
/// escapes it. (A character assigned after Python's Unicode database is Cn to Python alone, which escapes it.)
fn python_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    let mut pair = [0u8; 8];
    pair[0] = b'a';
    let len = 1 + c.encode_utf8(&mut pair[1..]).len();
    let text = std::str::from_utf8(&pair[..len]).expect("two characters");
    text.escape_debug().nth(1) == Some(c)
}

/// How Python's repr writes a character it does not show: `\xhh`, `\uhhhh` or `\Uhhhhhhhh`, by its code point.
fn python_escape(c: char) -> String {
    match u32::from(c) {
        code @ 0..=0xff => format!("\\x{code:02x}"),
        code @ 0x100..=0xffff => format!("\\u{code:04x}"),
        code => format!("\\U{code:08x}"),
    }
}

/// Python's repr of a dict of strings, for messages ({'model': 'gpt4'}).
pub fn py_dict<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let items: Vec<String> = entries.map(|(k, v)| format!("{}: {}", py_repr(k), py_repr(v))).collect();
    format!("{{{}}}", items.join(", "))
}

fn first_chars(text: &str, count: usize) -> &str {
    text.char_indices().nth(count).map_or(text, |(at, _)| &text[..at])
}

/// What a quoted value a client sent (a customer_id that breaks the id rule) is cut to: the id rule's most
/// characters, so every id within that length shows whole.
pub const QUOTED_CHARS_MAX: usize = 128;

/// `py_repr` of at most QUOTED_CHARS_MAX characters of `text`, "…" after the quote when it was cut: at most
/// 2 + 10 × 128 + 3 bytes whatever the client sent (`\U000e0001` is the longest escape), as engine/control.py
/// quoted_id, so that an answer quoting many values stays bounded (acks cut their messages past the message limit).
pub fn py_repr_cut(text: &str) -> String {
    let shown = first_chars(text, QUOTED_CHARS_MAX);
    let quoted = py_repr(shown);
    if shown.len() == text.len() {
        return quoted;
    }
    quoted + "…"
}

/// Repeated keys resolved as a protobuf map would be: the last value wins, at the key's first
/// position. None if more than EVENT_MAP_ENTRIES_MAX distinct keys; else whether they are sorted.
fn resolve<'a, V: Copy, A: smallvec::Array<Item = (&'a str, V)>>(
    entries: &[(&'a str, V)],
    resolved: &mut SmallVec<A>,
) -> Option<bool> {
    resolved.clear();
    if let Some(sorted) = ascending(entries) {
        // One copy of the slice: pushed one at a time, each entry checked the vector's capacity.
        resolved.extend_from_slice(sorted);
        return Some(true);
    }
    resolve_unsorted(entries, resolved)
}

/// The entries themselves when their keys are in ascending order, as most clients send a map: none
/// repeats and none needs sorting, so they are taken as they are (one comparison per entry, where
/// resolving and sorting took several). None when unsorted or more than EVENT_MAP_ENTRIES_MAX.
fn ascending<'s, 'a, V>(entries: &'s [(&'a str, V)]) -> Option<&'s [(&'a str, V)]> {
    let sorted = entries.windows(2).all(|pair| text_less(pair[0].0, pair[1].0));
    (sorted && entries.len() <= EVENT_MAP_ENTRIES_MAX).then_some(entries)
}

/// `resolve` of entries `ascending` did not take (unsorted, or too many).
fn resolve_unsorted<'a, V: Copy, A: smallvec::Array<Item = (&'a str, V)>>(
    entries: &[(&'a str, V)],
    resolved: &mut SmallVec<A>,
) -> Option<bool> {
    for &(key, value) in entries {
        if let Some(slot) = resolved.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if resolved.len() == EVENT_MAP_ENTRIES_MAX {
            return None;
        } else {
            resolved.push((key, value));
        }
    }
    Some(false)
}

/// `check_view` for a decoded wire event (Authorize's path).
pub fn check_event(event: &wire::UsageEvent, now_ms: i64, future_skew_ms: i64) -> Result<Event<'_>, Refusal> {
    let dimensions: SmallVec<[(&str, &str); 4]> =
        event.dimensions.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    let values: SmallVec<[(&str, f64); 4]> = event.values.iter().map(|e| (e.key.as_str(), e.value)).collect();
    check_view(&view_of(event, &dimensions, &values), now_ms, future_skew_ms)
}

/// `f` on the view of a decoded wire event, its map entries gathered on the stack.
pub fn with_view<R>(event: &wire::UsageEvent, f: impl FnOnce(&EventView<'_, '_>) -> R) -> R {
    let dimensions: SmallVec<[(&str, &str); 4]> =
        event.dimensions.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    let values: SmallVec<[(&str, f64); 4]> = event.values.iter().map(|e| (e.key.as_str(), e.value)).collect();
    f(&view_of(event, &dimensions, &values))
}

fn view_of<'s, 'a>(
    event: &'a wire::UsageEvent,
    dimensions: &'s [(&'a str, &'a str)],
    values: &'s [(&'a str, f64)],
) -> EventView<'s, 'a> {
    EventView {
        transaction_id: &event.transaction_id,
        customer_id: &event.customer_id,
        event_type: &event.event_type,
        timestamp_ms: event.timestamp_ms,
        dimensions,
        values,
        reservation_id: &event.reservation_id,
    }
}

/// Validates an event as the Python engine does, in the same order and with the same messages.
pub fn check_view<'a>(view: &EventView<'_, 'a>, now_ms: i64, future_skew_ms: i64) -> Result<Event<'a>, Refusal> {
    let mut event = Event::empty();
    check_into(view, now_ms, future_skew_ms, &mut event)?;
    Ok(event)
}

/// TIMESTAMP_OUT_OF_RANGE for an event dated more than `future_skew_ms` after `now_ms`.
pub fn within_skew(timestamp_ms: i64, now_ms: i64, future_skew_ms: i64) -> Result<(), Refusal> {
    if timestamp_ms > now_ms.saturating_add(future_skew_ms) {
        return Err(Refusal::new(
            Reason::TimestampOutOfRange,
            format!("timestamp_ms {timestamp_ms} is more than {} s in the future", future_skew_ms / 1000),
        ));
    }
    Ok(())
}

/// `check_view` into the caller's `event` (reused between events: nothing is moved per event).
pub fn check_into<'a>(
    view: &EventView<'_, 'a>,
    now_ms: i64,
    future_skew_ms: i64,
    event: &mut Event<'a>,
) -> Result<(), Refusal> {
    check_scalars(view)?;
    let too_long = |text: &str| text.len() > TEXT_BYTES_MAX;
    let too_many = |map: &str| Refusal::invalid(format!("{map}: at most {EVENT_MAP_ENTRIES_MAX} entries"));
    // Sorted values are read from the view itself, not copied into `raw_values` first.
    let mut raw_values: SmallVec<[(&'a str, f64); 4]> = SmallVec::new();
    let values = match ascending(view.values) {
        Some(sorted) => Some((sorted, true)),
        None => resolve_unsorted(view.values, &mut raw_values).map(|sorted| (&raw_values[..], sorted)),
    };
    // Both holding too many: dimensions are named.
    let Some(dimensions_sorted) = resolve(view.dimensions, &mut event.dimensions) else {
        return Err(too_many("dimensions"));
    };
    let Some((values, values_sorted)) = values else { return Err(too_many("values")) };
    for (key, text) in &event.dimensions {
        if too_long(key) || too_long(text) {
            let key = py_repr(first_chars(key, 32));
            return Err(Refusal::invalid(format!(
                "dimensions[{key}]: keys and values are at most {TEXT_BYTES_MAX} bytes"
            )));
        }
    }
    event.values.clear();
    for &(key, value) in values {
        event.values.push((key, exact_value(key, value)?));
    }
    within_skew(view.timestamp_ms, now_ms, future_skew_ms)?;
    // Sorted by key once valid (checked in their first-position order, which names the same entry
    // first as the Python engine): the digest needs a canonical order, and lookups can bisect.
    if !dimensions_sorted {
        event.dimensions.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    if !values_sorted {
        event.values.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    event.transaction_id = view.transaction_id;
    event.customer_id = view.customer_id;
    event.event_type = view.event_type;
    event.timestamp_ms = view.timestamp_ms;
    event.reservation_id = view.reservation_id;
    Ok(())
}

/// The checks on the event's ids and timestamp, in the Python engine's order.
fn check_scalars(view: &EventView) -> Result<(), Refusal> {
    if view.transaction_id.is_empty() {
        return Err(Refusal::invalid("transaction_id is required"));
    }
    if view.transaction_id.len() > TEXT_BYTES_MAX {
        return Err(Refusal::invalid(format!("transaction_id is longer than {TEXT_BYTES_MAX} bytes")));
    }
    if view.customer_id.is_empty() {
        return Err(Refusal::invalid("customer_id is required"));
    }
    if view.event_type.is_empty() {
        return Err(Refusal::invalid("event_type is required"));
    }
    if view.timestamp_ms == 0 {
        return Err(Refusal::invalid("timestamp_ms is required (Unix milliseconds, UTC)"));
    }
    if view.timestamp_ms < 0 {
        let message = format!("timestamp_ms {} must be positive (Unix milliseconds, UTC)", view.timestamp_ms);
        return Err(Refusal::invalid(message));
    }
    Ok(())
}

/// One value as an exact quantity, or why it is refused.
fn exact_value(key: &str, value: f64) -> Result<Fixed, Refusal> {
    if key.len() > TEXT_BYTES_MAX {
        let key = py_repr(first_chars(key, 32));
        return Err(Refusal::invalid(format!("values[{key}]: keys are at most {TEXT_BYTES_MAX} bytes")));
    }
    let shown = || format!("values[{}] is {}", py_repr(key), python_repr(value));
    if !(0.0..USAGE_VALUE_MAX).contains(&value) {
        let why = if !value.is_finite() {
            "must be a finite number".to_string()
        } else if value < 0.0 {
            "must not be negative".to_string()
        } else {
            format!("must be below {}", "1e+15")
        };
        return Err(Refusal::invalid(format!("{}: {why}", shown())));
    }
    fixed_from_f64(value).ok_or_else(|| {
        Refusal::invalid(format!("{}: more than {SCALE_DIGITS} decimal places cannot be held exactly", shown()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(values: Vec<(&str, f64)>) -> wire::UsageEvent {
        wire::UsageEvent {
            transaction_id: "t".into(),
            customer_id: "c".into(),
            event_type: "e".into(),
            timestamp_ms: 1,
            dimensions: vec![],
            values: values.into_iter().map(|(k, v)| wire::ValueEntry { key: k.into(), value: v }).collect(),
            reservation_id: String::new(),
        }
    }

    #[test]
    fn values_are_exact_or_refused() {
        let refused = |v: f64| check_event(&event(vec![("n", v)]), 0, 300_000).err().map(|r| r.message);
        assert_eq!(refused(-1.0).as_deref(), Some("values['n'] is -1.0: must not be negative"));
        assert_eq!(refused(f64::NAN).as_deref(), Some("values['n'] is nan: must be a finite number"));
        assert_eq!(refused(1e15).as_deref(), Some("values['n'] is 1000000000000000.0: must be below 1e+15"));
        assert!(refused(1e-50).unwrap().contains("cannot be held exactly"));
        assert_eq!(refused(0.1), None);
    }

    #[test]
    fn a_quoted_value_escapes_what_python_repr_escapes() {
        assert_eq!(py_repr("acme\n"), "'acme\\n'");
        // As Python's repr: format, separator and private-use characters escaped, combining marks shown.
        assert_eq!(py_repr("a\u{200b}\u{a0}\u{2028}\u{202e}\u{e000}"), "'a\\u200b\\xa0\\u2028\\u202e\\ue000'");
        assert_eq!(py_repr("\u{e0001}x"), "'\\U000e0001x'");
        assert_eq!(py_repr("\u{301}x"), "'\u{301}x'");
        assert_eq!(py_repr("e\u{301}\u{301}é ａ😀"), "'e\u{301}\u{301}é ａ😀'");
        assert_eq!(py_repr("a\r\n\t\u{0}\u{1f}\u{7f}\u{85}é"), "'a\\r\\n\\t\\x00\\x1f\\x7f\\x85é'");
        assert_eq!(py_repr("it's\n"), "\"it's\\n\"");
        assert_eq!(py_repr("'\"\\"), "'\\'\"\\\\'");
        assert_eq!(py_repr_cut(&"\n".repeat(129)), format!("'{}'…", "\\n".repeat(128)));
    }

    #[test]
    fn a_quoted_value_is_cut_to_128_characters_and_says_so() {
        assert_eq!(py_repr_cut(&"a".repeat(128)), format!("'{}'", "a".repeat(128)));
        assert_eq!(py_repr_cut(&"\\".repeat(129)), format!("'{}'…", "\\\\".repeat(128)));
        assert!(py_repr_cut(&"😀".repeat(1_000_000)).len() <= 2 + 10 * QUOTED_CHARS_MAX + 3);
        assert!(py_repr_cut(&"\u{e0001}".repeat(1_000_000)).len() <= 2 + 10 * QUOTED_CHARS_MAX + 3);
    }

    #[test]
    fn maps_come_out_sorted_in_any_order_and_are_checked_in_the_order_sent() {
        let sorted = event(vec![("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        let shuffled = event(vec![("c", 3.0), ("a", 1.0), ("b", 2.0)]);
        let (sorted, shuffled) =
            (check_event(&sorted, 0, 300_000).unwrap(), check_event(&shuffled, 0, 300_000).unwrap());
        assert_eq!(sorted.values.as_slice(), shuffled.values.as_slice());
        assert_eq!(sorted.values.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["a", "b", "c"]);
        // Two bad values: the one sent first is named, sorted keys or not.
        for (first, second) in [("b", "a"), ("a", "b")] {
            let bad = event(vec![(first, -1.0), (second, -2.0)]);
            let message = check_event(&bad, 0, 300_000).err().unwrap().message;
            assert!(message.starts_with(&format!("values['{first}']")), "{message}");
        }
        assert!(check_event(&event(vec![("k", 1.0); 65]), 0, 300_000).is_ok(), "one key repeated is one entry");
        let keys: Vec<String> = (0..65).map(|i| format!("k{i:02}")).collect();
        for ascending in [true, false] {
            let mut entries: Vec<(&str, f64)> = keys.iter().map(|k| (k.as_str(), 1.0)).collect();
            if !ascending {
                entries.reverse();
            }
            let refused = check_event(&event(entries), 0, 300_000).err().unwrap();
            assert_eq!(refused.message, "values: at most 64 entries");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn short_keys_compare_as_strings(
            a in "[ab]{0,20}",
            other in "[ab]{0,20}",
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            // The same length with one byte changed (at every position the words cover), and any other string.
            let mut changed = a.clone().into_bytes();
            if !changed.is_empty() {
                let at = flip.index(changed.len());
                changed[at] = if changed[at] == b'a' { b'b' } else { b'a' };
            }
            let changed = String::from_utf8(changed).expect("ASCII");
            for b in [&a, &changed, &other] {
                proptest::prop_assert_eq!(same_text(&a, b), a == *b, "{:?} {:?}", a, b);
                proptest::prop_assert_eq!(text_less(&a, b), a < *b, "{:?} {:?}", a, b);
                proptest::prop_assert_eq!(text_less(b, &a), *b < a, "{:?} {:?}", b, a);
            }
        }
    }

    #[test]
    fn the_last_of_repeated_keys_wins() {
        let e = event(vec![("n", 1.0), ("m", 2.0), ("n", 3.0)]);
        let checked = check_event(&e, 0, 300_000).unwrap();
        assert_eq!(checked.values.as_slice(), &[("m", 2 * crate::money::SCALE), ("n", 3 * crate::money::SCALE)]);
    }
}
