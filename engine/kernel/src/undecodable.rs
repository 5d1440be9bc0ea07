//! Where a batch message that prost refuses goes wrong: the item and its field (a UsageBatch's
//! `events[3].customer_id`, an AuthorizeBatch's `requests[2].customer_id`), so that a sender of thousands of
//! events or checks learns which one to fix. Runs only once prost has refused the message: one that decodes
//! never comes here.
//!
//! A message's fields are merged in order, each on its own (a string replaces, an item is pushed
//! new), so the field prost refuses in the whole message is the first one it refuses decoded alone:
//! each field is stepped over with the walker's reader (crate::batch) and decoded alone, the message's
//! top-level fields, then the refused item's fields (each as the one item of a message of its own).

use std::fmt;

use prost::encoding::encode_varint;
use prost::Message;

use crate::batch::{Reader, LEN};
use crate::decode::wire;

/// Why bytes are not a batch message (a UsageBatch, an AuthorizeBatch). `field` is the path of what prost
/// refused within it: `batch_id`, `events[3]` (an event cut off, or not a message), `events[3].customer_id`,
/// `events[3].dimensions` (one of its entries), `requests[2].reservation_ttl`; empty when the bad bytes are
/// the message's own framing (a key that does not read, an unknown field that cannot be stepped over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotABatch {
    pub field: String,
    pub message: String,
}

impl fmt::Display for NotABatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A message of many items (a repeated message field) and its refusal's words: its fields' and its item's
/// fields' names by number, from 1, as the server names them.
pub trait Batched: Message + Default {
    type Item: Message + Default;
    /// The message's name ("UsageBatch"), said when its framing is what does not decode.
    const NAME: &'static str;
    /// Its fields by number (`batch_id`, `events`).
    const FIELDS: &'static [&'static str];
    /// The number of its repeated item field (`events`: 2), and what one item is called ("event").
    const ITEMS: u32;
    const ITEM: &'static str;
    /// The item's fields by number.
    const ITEM_FIELDS: &'static [&'static str];
}

impl Batched for wire::UsageBatch {
    type Item = wire::UsageEvent;
    const NAME: &'static str = "UsageBatch";
    const FIELDS: &'static [&'static str] = &["batch_id", "events"];
    const ITEMS: u32 = 2;
    const ITEM: &'static str = "event";
    // usage_wire.proto's UsageEvent.
    const ITEM_FIELDS: &'static [&'static str] =
        &["transaction_id", "customer_id", "event_type", "timestamp_ms", "dimensions", "values", "reservation_id"];
}

impl Batched for wire::AuthorizeBatch {
    type Item = wire::AuthorizeRequest;
    const NAME: &'static str = "AuthorizeBatch";
    const FIELDS: &'static [&'static str] = &["requests"];
    const ITEMS: u32 = 1;
    const ITEM: &'static str = "request";
    // balance.proto's AuthorizeRequest.
    const ITEM_FIELDS: &'static [&'static str] = &[
        "request_id",
        "customer_id",
        "event_type",
        "dimensions",
        "values",
        "reserve",
        "reservation_ttl",
        "reservation_id",
    ];
}

impl NotABatch {
    /// The refusal of `bytes`, a `B` that prost refused with `whole`, naming where it refused them.
    #[cold]
    #[inline(never)]
    pub fn of<B: Batched>(bytes: &[u8], whole: &prost::DecodeError) -> NotABatch {
        let unplaced =
            || NotABatch { field: String::new(), message: format!("the {} does not decode: {whole}", B::NAME) };
        let Some(refused) = first_refused(bytes, B::FIELDS.len() as u32, |field| B::decode(field).is_err()) else {
            return unplaced();
        };
        let rest = &bytes[refused.at..];
        let error = B::decode(rest).err().map_or_else(|| whole.to_string(), |e| e.to_string());
        let name = B::FIELDS[refused.number as usize - 1];
        if refused.number != B::ITEMS {
            return NotABatch { field: name.into(), message: format!("the {name} does not decode: {error}") };
        }
        let index = refused.before;
        let mut item = NotABatch {
            field: format!("{name}[{index}]"),
            message: format!("the {} at index {index} does not decode: {error}", B::ITEM),
        };
        let mut reader = Reader { bytes: rest, at: 0 };
        let Some(payload) = reader.key().and_then(|_| reader.len_delimited()) else { return item };
        // The item's fields are judged inside a one-item B, never as a B::Item alone: decoding a B::Item from a
        // second place stopped the compiler inlining its fields' decoding into B's, on the good path too (an
        // AuthorizeBatch of 250 holds through `decode_requests`: 157 instructions more a request, under callgrind).
        let alone = |fields: &[u8]| B::decode(one_item::<B>(fields).as_slice());
        if let Some(inner) = first_refused(payload, B::ITEM_FIELDS.len() as u32, |field| alone(field).is_err()) {
            if let Err(error) = alone(&payload[inner.at..]) {
                // prost names the one-item B after the item's field: dropped, the words are the item's alone.
                let error = error.to_string().replacen(&format!("{}.{name}: ", B::NAME), "", 1);
                item.field = format!("{name}[{index}].{}", B::ITEM_FIELDS[inner.number as usize - 1]);
                item.message = format!("the {} at index {index} does not decode: {error}", B::ITEM);
            }
        }
        item
    }
}

/// A B whose one item is `fields`.
fn one_item<B: Batched>(fields: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(fields.len() + 16);
    encode_varint(u64::from(B::ITEMS << 3 | u32::from(LEN)), &mut bytes);
    encode_varint(fields.len() as u64, &mut bytes);
    bytes.extend_from_slice(fields);
    bytes
}

/// A field prost refuses: its number, how many fields of that number came before it, and where its
/// key starts.
pub(crate) struct Refused {
    pub(crate) number: u32,
    pub(crate) before: usize,
    pub(crate) at: usize,
}

/// The first field numbered 1 to `last_known` in the message `bytes` that prost refuses (`refuses`, given
/// the field's bytes, says whether prost refuses the message they make). None when a key does not read or an
/// unknown field cannot be stepped over (a group, or one cut off): the refused bytes are then the message's own
/// framing, or lie past what this steps over. Any message whose fields are numbered from 1.
pub(crate) fn first_refused(bytes: &[u8], last_known: u32, refuses: impl Fn(&[u8]) -> bool) -> Option<Refused> {
    let mut seen = vec![0usize; last_known as usize + 1];
    let mut reader = Reader { bytes, at: 0 };
    while !reader.done() {
        let at = reader.at;
        let (number, wire_type) = reader.key()?;
        let known = number <= last_known;
        let stepped = reader.skip(wire_type);
        // A known field the reader cannot step over is one prost refuses too: a group or another
        // wire type where it expects its own, or bytes cut off.
        if known && (stepped.is_none() || refuses(&bytes[at..reader.at])) {
            return Some(Refused { number, before: seen[number as usize], at });
        }
        stepped?;
        if known {
            seen[number as usize] += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::decode_batch;

    fn wire_event((transaction_id, customer_id, model): (String, String, String)) -> wire::UsageEvent {
        let dimensions = vec![wire::DimensionEntry { key: "model".into(), value: model }];
        wire::UsageEvent { transaction_id, customer_id, timestamp_ms: 7, dimensions, ..wire::UsageEvent::default() }
    }

    /// Whether the field found is where prost's merge stops: the fields before it decode, and from it on
    /// the bytes fail at once.
    fn splits_where_prost_stops<M: Message + Default>(bytes: &[u8], last_known: u32) -> Result<(), TestCaseError> {
        if let Some(refused) = first_refused(bytes, last_known, |field| M::decode(field).is_err()) {
            prop_assert!(M::decode(&bytes[..refused.at]).is_ok(), "the fields before field {}", refused.number);
            prop_assert!(M::decode(&bytes[refused.at..]).is_err(), "field {} on", refused.number);
        }
        Ok(())
    }

    /// `splits_where_prost_stops` for a batch message and for the item it finds refused; and the refusal names
    /// that item's field in the words of the item decoded alone (`NotABatch::of` judges it in a one-item batch).
    fn splits_a_batch_where_prost_stops<B: Batched>(bytes: &[u8]) -> Result<(), TestCaseError> {
        let last_known = B::FIELDS.len() as u32;
        splits_where_prost_stops::<B>(bytes, last_known)?;
        let refuses = |field: &[u8]| B::decode(field).is_err();
        let Some(refused) = first_refused(bytes, last_known, refuses).filter(|r| r.number == B::ITEMS) else {
            return Ok(());
        };
        let mut reader = Reader { bytes: &bytes[refused.at..], at: 0 };
        let Some(payload) = reader.key().and_then(|_| reader.len_delimited()) else { return Ok(()) };
        splits_where_prost_stops::<B::Item>(payload, B::ITEM_FIELDS.len() as u32)?;
        let named = NotABatch::of::<B>(bytes, &B::decode(bytes).err().expect("an item is refused"));
        let (index, item) = (refused.before, format!("{}[{}]", B::FIELDS[B::ITEMS as usize - 1], refused.before));
        let alone = |field: &[u8]| B::Item::decode(field).is_err();
        match first_refused(payload, B::ITEM_FIELDS.len() as u32, alone) {
            Some(inner) => {
                let error = B::Item::decode(&payload[inner.at..]).err().expect("refused");
                prop_assert_eq!(named.field, format!("{item}.{}", B::ITEM_FIELDS[inner.number as usize - 1]));
                prop_assert_eq!(named.message, format!("the {} at index {index} does not decode: {error}", B::ITEM));
            }
            None => prop_assert_eq!(named.field, item),
        }
        Ok(())
    }

    fn damaged(mut bytes: Vec<u8>, edits: Vec<(prop::sample::Index, u8)>) -> Vec<u8> {
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        bytes
    }

    fn wire_request(
        (request_id, customer_id, model, reserve): (String, String, String, bool),
    ) -> wire::AuthorizeRequest {
        wire::AuthorizeRequest {
            request_id,
            customer_id,
            event_type: "call".into(),
            dimensions: vec![wire::DimensionEntry { key: "model".into(), value: model }],
            values: vec![wire::ValueEntry { key: "n".into(), value: 2.0 }],
            reserve,
            reservation_ttl: reserve.then_some(wire::Duration { seconds: 30, nanos: 0 }),
            ..wire::AuthorizeRequest::default()
        }
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn the_field_found_is_where_prost_stops_in_damaged_bytes(
            events in proptest::collection::vec(("[a-zé]{0,3}", "[a-z]{0,3}", "[a-zé]{0,2}"), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let events = events.into_iter().map(wire_event).collect();
            let bytes = damaged(wire::UsageBatch { batch_id: "b".into(), events }.encode_to_vec(), edits);
            splits_a_batch_where_prost_stops::<wire::UsageBatch>(&bytes)?;
        }

        #[test]
        fn the_field_found_is_where_prost_stops_in_a_damaged_authorize_batch(
            requests in proptest::collection::vec(("[a-zé]{0,3}", "[a-z]{0,3}", "[a-zé]{0,2}", any::<bool>()), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let requests = requests.into_iter().map(wire_request).collect();
            let bytes = damaged(wire::AuthorizeBatch { requests }.encode_to_vec(), edits);
            splits_a_batch_where_prost_stops::<wire::AuthorizeBatch>(&bytes)?;
        }
    }

    fn text(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut field = vec![number << 3 | 2, bytes.len() as u8];
        field.extend_from_slice(bytes);
        field
    }

    fn event(customer_id: &[u8], model: &[u8]) -> Vec<u8> {
        let entry = [text(1, b"model"), text(2, model)].concat();
        [text(1, b"t"), text(2, customer_id), text(3, b"call"), vec![0x20, 0x07], text(5, &entry)].concat()
    }

    fn batch(batch_id: &[u8], events: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = text(1, batch_id);
        for event in events {
            bytes.extend(text(2, event));
        }
        bytes
    }

    fn refusal(bytes: &[u8]) -> NotABatch {
        *decode_batch(bytes).expect_err("refused")
    }

    #[test]
    fn names_the_event_and_its_field() {
        let good = event(b"acme", b"gpt-4");
        let bytes = batch(b"b", &[good.clone(), good.clone(), good.clone(), event(b"acme\xff", b"gpt-4"), good]);
        let refused = refusal(&bytes);
        assert_eq!(refused.field, "events[3].customer_id");
        assert_eq!(
            refused.message,
            "the event at index 3 does not decode: failed to decode Protobuf message: UsageEvent.customer_id: \
             invalid string value: data is not UTF-8 encoded"
        );
    }

    #[test]
    fn names_the_map_of_an_entry_that_does_not_decode() {
        let bytes = batch(b"b", &[event(b"acme", b"gpt-4"), event(b"acme", b"caf\xe9")]);
        assert_eq!(refusal(&bytes).field, "events[1].dimensions");
    }

    #[test]
    fn names_every_field_of_an_event() {
        for (number, name) in (1u8..).zip(wire::UsageBatch::ITEM_FIELDS) {
            // The field as a fixed32, a wire type it never has.
            let bad = [vec![number << 3 | 5], vec![0; 4]].concat();
            let bytes = batch(b"b", &[event(b"acme", b"gpt-4"), [text(1, b"t"), bad].concat()]);
            assert_eq!(refusal(&bytes).field, format!("events[1].{name}"));
        }
    }

    #[test]
    fn names_batch_id_an_event_cut_off_or_the_batch_itself() {
        let good = event(b"acme", b"gpt-4");
        assert_eq!(refusal(&batch(b"b\xff", std::slice::from_ref(&good))).field, "batch_id");
        // A batch_id that is not UTF-8 after the events: the first field refused is still the batch_id.
        let late = [batch(b"b", std::slice::from_ref(&good)), text(1, b"\xc3")].concat();
        assert_eq!(refusal(&late).field, "batch_id");
        let cut = [batch(b"b", std::slice::from_ref(&good)), vec![0x12, 40, 0x0a]].concat();
        assert_eq!(refusal(&cut).field, "events[1]");
        // An event's key that does not read: the event is named, not a field of it.
        assert_eq!(refusal(&batch(b"b", &[vec![0x80]])).field, "events[0]");
        let framing = [batch(b"b", &[good]), vec![0xff]].concat();
        let refused = refusal(&framing);
        assert_eq!(refused.field, "");
        assert!(refused.message.starts_with("the UsageBatch does not decode: failed to decode Protobuf message"));
    }

    #[test]
    fn an_unknown_field_is_stepped_over_and_an_unknown_group_leaves_the_batch_unplaced() {
        let bad = event(b"\xff", b"gpt-4");
        let unknown = [vec![0x48, 0x96, 0x01], text(9, b"\xff")].concat(); // a varint and a LEN field 9
        assert_eq!(
            refusal(&[unknown, batch(b"b", std::slice::from_ref(&bad))].concat()).field,
            "events[0].customer_id"
        );
        // A group (field 9, start then end) prost steps over and the reader does not.
        let group = vec![0x4b, 0x4c];
        assert_eq!(refusal(&[group, batch(b"b", &[bad])].concat()).field, "");
    }
}
