//! AuthorizeBatches on raw bytes: an AuthorizeBatch decoded with the private
//! wire types, each request decided by `Kernel::authorize`, the answers encoded as the public
//! AuthorizeBatchResult (AuthorizeResponse) bytes. No Python object per decision.
//!
//! A message that asks for no hold takes the fast path (`answer_plain`): read in place by
//! crate::batch's walker (strings borrowed from the bytes, no allocation per request), each request
//! decided from that view, its answer appended to the result's bytes at once. Anything else (a hold,
//! bytes prost must judge) goes through `decode_requests` and crate::holds, which answer the same.
//!
//! The checks run in the order the Python servicer ran them, with its messages: a restricted
//! key's customers, the batch limit, request ids, reservations (whole-message refusals, for the
//! server to map to a status), then per request the in-band INVALID_REQUEST answers. Nothing here
//! changes account state: the fast path decides under the kernel's shared lock.

use std::ops::Range;

use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;

use crate::account::{is_id, no_such_customer};
use crate::batch::{dimension_entry, value_entry, Reader, LEN, VARINT};
use crate::decode::{wire, with_view, EventView, TEXT_BYTES_MAX};
use crate::kernel::Kernel;
use crate::money::{Picos, PICOS_PER_UNIT};
use crate::undecodable::NotABatch;

/// Why a whole AuthorizeBatches message is refused; the server maps each to
/// a status and message (server/services/balance.py).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The bytes are not the message: the request and field prost refused (`requests[2].customer_id`), or
    /// none for the message's own framing (crate::undecodable). Boxed: a refusal is rare, and the variant
    /// no wider than the others keeps every Result carrying a Refused as small as before.
    NotDecodable(Box<NotABatch>),
    /// More requests than the server takes in one message.
    TooManyRequests(usize),
    /// requests[index] names a customer outside the caller's key's (empty: none named).
    CustomerNotAllowed(usize, String),
    /// requests[index] has no request_id.
    NoRequestId(usize),
    /// requests[index]'s request_id is longer than TEXT_BYTES_MAX bytes (it is echoed in the answer, and a
    /// hold's journaled with it).
    RequestIdTooLong(usize),
}

/// Decodes an AuthorizeBatch and runs the whole-message checks; changes nothing. A request may ask for
/// a hold (crate::holds answers those).
pub(crate) fn decode_requests(
    bytes: &[u8],
    requests_max: usize,
    allowed: Option<&[String]>,
) -> Result<Vec<wire::AuthorizeRequest>, Refused> {
    let batch = wire::AuthorizeBatch::decode(bytes).map_err(|e| not_decodable(bytes, &e))?;
    let requests = batch.requests;
    let ids = || requests.iter().map(|r| (r.customer_id.as_str(), r.request_id.as_str()));
    check_message(ids, requests.len(), requests_max, allowed)?;
    Ok(requests)
}

/// The refusal of bytes prost refused, naming where (crate::undecodable), off the good path.
#[cold]
#[inline(never)]
fn not_decodable(bytes: &[u8], whole: &prost::DecodeError) -> Refused {
    Refused::NotDecodable(Box::new(NotABatch::of::<wire::AuthorizeBatch>(bytes, whole)))
}

/// The whole-message checks over each request's (customer_id, request_id), in the order the Python servicer
/// ran them: a restricted key's customers, the batch limit, request ids. The decoded path and the fast path
/// both run these, so they refuse the same messages in the same words.
fn check_message<'r, I: Iterator<Item = (&'r str, &'r str)>>(
    ids: impl Fn() -> I,
    count: usize,
    requests_max: usize,
    allowed: Option<&[String]>,
) -> Result<(), Refused> {
    if let Some(allowed) = allowed {
        let foreign = |customer: &str| customer.is_empty() || !allowed.iter().any(|a| a == customer);
        if let Some((index, (customer, _))) = ids().enumerate().find(|(_, (customer, _))| foreign(customer)) {
            return Err(Refused::CustomerNotAllowed(index, customer.to_owned()));
        }
    }
    if count > requests_max {
        return Err(Refused::TooManyRequests(count));
    }
    if let Some(index) = ids().position(|(_, request_id)| request_id.is_empty()) {
        return Err(Refused::NoRequestId(index));
    }
    if let Some(index) = ids().position(|(_, request_id)| request_id.len() > TEXT_BYTES_MAX) {
        return Err(Refused::RequestIdTooLong(index));
    }
    Ok(())
}

/// Why a request cannot be priced, checked before its usage is read, in the unary path's order and words
/// (server/services/balance.py checks the customer_id first): no customer_id, a customer_id breaking the id rule
/// (that no account has: one stored by an earlier release is found as it was), no event_type. Answered
/// INVALID_REQUEST in-band, so that a malformed customer_id is named whatever else the request gets wrong.
pub(crate) fn unpriceable(kernel: &Kernel, customer_id: &str, event_type: &str) -> Option<String> {
    if customer_id.is_empty() {
        return Some("customer_id: is required".into());
    }
    if !is_id(customer_id) && kernel.accounts.get(customer_id).is_none() {
        return Some(no_such_customer(customer_id).message);
    }
    if event_type.is_empty() {
        return Some("event_type: is required".into());
    }
    None
}

/// The usage an authorize (or a hold) asks about, at now_ms: the request's customer, event type, dimensions and
/// values, taken out of it (its request and reservation ids stay).
pub fn asked_usage(request: &mut wire::AuthorizeRequest, now_ms: i64) -> wire::UsageEvent {
    wire::UsageEvent {
        // check_event requires one; Authorize's answer never shows it.
        transaction_id: "authorize".into(),
        customer_id: std::mem::take(&mut request.customer_id),
        event_type: std::mem::take(&mut request.event_type),
        timestamp_ms: now_ms,
        dimensions: std::mem::take(&mut request.dimensions),
        values: std::mem::take(&mut request.values),
        reservation_id: String::new(),
    }
}

/// Decides one request (reservations already refused) at now_ms; reads the kernel, changes nothing.
pub fn answer(kernel: &Kernel, mut request: wire::AuthorizeRequest, now_ms: i64) -> wire::AuthorizeResponse {
    if let Some(message) = unpriceable(kernel, &request.customer_id, &request.event_type) {
        return response(request.request_id, false, "INVALID_REQUEST", message, 0, 0);
    }
    let event = asked_usage(&mut request, now_ms);
    let decision = with_view(&event, |view| kernel.authorize_read(view, now_ms));
    response(request.request_id, decision.allowed, decision.reason, decision.message, decision.cost, decision.available)
}

pub(crate) fn response(
    request_id: String,
    allowed: bool,
    reason: &str,
    message: String,
    cost: Picos,
    available: Picos,
) -> wire::AuthorizeResponse {
    wire::AuthorizeResponse {
        request_id,
        allowed,
        reason: reason.to_owned(),
        estimated_cost: format_picos(cost),
        credits_available: format_picos(available),
        reservation_id: String::new(),
        message,
    }
}

/// The AuthorizeBatchResult bytes for these answers, in order.
pub fn encode_result(responses: Vec<wire::AuthorizeResponse>) -> Vec<u8> {
    wire::AuthorizeBatchResult { responses }.encode_to_vec()
}

/// One request of an AuthorizeBatch read in place: strings borrow the message's bytes, map entries
/// are ranges of the batch's two shared vectors.
struct RequestRef<'a> {
    request_id: &'a str,
    customer_id: &'a str,
    event_type: &'a str,
    dimensions: Range<usize>,
    values: Range<usize>,
}

/// An AuthorizeBatch none of whose requests asks for a hold, read in place by crate::batch's walker:
/// reading it allocates three times, not per request.
struct PlainBatch<'a> {
    requests: Vec<RequestRef<'a>>,
    dimensions: Vec<(&'a str, &'a str)>,
    values: Vec<(&'a str, f64)>,
}

impl<'a> PlainBatch<'a> {
    /// None when the walker steps aside (prost decides, and words the refusal of bytes that are not
    /// the message) or when a request asks for a hold or carries a TTL (crate::holds decides).
    fn walk(bytes: &'a [u8]) -> Option<PlainBatch<'a>> {
        let mut batch = PlainBatch { requests: Vec::new(), dimensions: Vec::new(), values: Vec::new() };
        let mut reader = Reader { bytes, at: 0 };
        while !reader.done() {
            match reader.key()? {
                (1, LEN) => batch.request(reader.len_delimited()?)?,
                (1, _) => return None,
                (_, wire_type) => reader.skip(wire_type)?,
            }
        }
        Some(batch)
    }

    fn request(&mut self, bytes: &'a [u8]) -> Option<()> {
        let (dimensions_from, values_from) = (self.dimensions.len(), self.values.len());
        let (mut request_id, mut customer_id, mut event_type) = ("", "", "");
        let (mut reserve, mut reservation_id) = (false, "");
        let mut reader = Reader { bytes, at: 0 };
        while !reader.done() {
            match reader.key()? {
                (1, LEN) => request_id = reader.text()?,
                (2, LEN) => customer_id = reader.text()?,
                (3, LEN) => event_type = reader.text()?,
                (4, LEN) => self.dimensions.push(dimension_entry(reader.len_delimited()?)?),
                (5, LEN) => self.values.push(value_entry(reader.len_delimited()?)?),
                (6, VARINT) => reserve = reader.varint()? != 0,
                (8, LEN) => reservation_id = reader.text()?,
                // reservation_ttl (7) is a hold's, and a known field of another wire type is prost's.
                (1..=8, _) => return None,
                (_, wire_type) => reader.skip(wire_type)?,
            }
        }
        if reserve || !reservation_id.is_empty() {
            return None;
        }
        let (dimensions, values) = (dimensions_from..self.dimensions.len(), values_from..self.values.len());
        self.requests.push(RequestRef { request_id, customer_id, event_type, dimensions, values });
        Some(())
    }

    /// `decode_requests`' whole-message checks (`check_message`), over the borrowed views.
    fn check(&self, requests_max: usize, allowed: Option<&[String]>) -> Result<(), Refused> {
        let ids = || self.requests.iter().map(|r| (r.customer_id, r.request_id));
        check_message(ids, self.requests.len(), requests_max, allowed)
    }
}

/// AuthorizeBatches' fast path, for a message that asks for no hold: decides every request as `answer`
/// would and encodes the AuthorizeBatchResult as it goes, allocating nothing per request but a refusal's
/// message. None when the message is not read in place (a hold asked, or bytes prost must judge): the
/// caller then takes the path through `decode_requests` and crate::holds, which answers the same.
pub fn answer_plain(
    kernel: &Kernel,
    bytes: &[u8],
    requests_max: usize,
    allowed: Option<&[String]>,
    now_ms: i64,
) -> Option<Result<(Vec<u8>, usize), Refused>> {
    let batch = PlainBatch::walk(bytes)?;
    if let Err(refused) = batch.check(requests_max, allowed) {
        return Some(Err(refused));
    }
    // An answer is about 40 bytes of text with an OK, ids of a dozen.
    let mut out = Vec::with_capacity(batch.requests.len() * 64);
    for request in &batch.requests {
        if let Some(message) = unpriceable(kernel, request.customer_id, request.event_type) {
            put_response(&mut out, request.request_id, false, "INVALID_REQUEST", &message, 0, 0);
            continue;
        }
        let event = EventView {
            // check_event requires one; Authorize's answer never shows it.
            transaction_id: "authorize",
            customer_id: request.customer_id,
            event_type: request.event_type,
            timestamp_ms: now_ms,
            dimensions: &batch.dimensions[request.dimensions.clone()],
            values: &batch.values[request.values.clone()],
            reservation_id: "",
        };
        let d = kernel.authorize_read(&event, now_ms);
        put_response(&mut out, request.request_id, d.allowed, d.reason, &d.message, d.cost, d.available);
    }
    Some(Ok((out, batch.requests.len())))
}

/// Appends one AuthorizeResponse (no reservation) as AuthorizeBatchResult's field 1, encoded as
/// prost encodes `response(..)`: fields in number order, empty ones left out.
fn put_response(
    out: &mut Vec<u8>,
    request_id: &str,
    allowed: bool,
    reason: &str,
    message: &str,
    cost: Picos,
    available: Picos,
) {
    let (cost, available) = (PicosText::of(cost), PicosText::of(available));
    let texts = [(1, request_id), (3, reason), (4, cost.as_str()), (5, available.as_str()), (7, message)];
    let length: usize = texts.iter().map(|(_, text)| text_len(text)).sum::<usize>() + if allowed { 2 } else { 0 };
    out.push(0x0a);
    encode_varint(length as u64, out);
    put_text(out, 1, request_id);
    if allowed {
        out.extend_from_slice(&[0x10, 0x01]);
    }
    for (field, text) in &texts[1..] {
        put_text(out, *field, text);
    }
}

pub(crate) fn text_len(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        1 + encoded_len_varint(text.len() as u64) + text.len()
    }
}

/// A string field (number below 16: a one-byte key), left out when empty (proto3's default).
pub(crate) fn put_text(out: &mut Vec<u8>, field: u8, text: &str) {
    if !text.is_empty() {
        out.push(field << 3 | 2);
        encode_varint(text.len() as u64, out);
        out.extend_from_slice(text.as_bytes());
    }
}

/// Picos as the wire's decimal text: no exponent, no trailing zeros ("49995", "0.03", "-1.5").
pub fn format_picos(picos: Picos) -> String {
    PicosText::of(picos).as_str().to_owned()
}

/// `format_picos` on the stack: two per decision, so it allocates nothing and avoids u128
/// formatting (several times slower than u64's).
pub struct PicosText {
    bytes: [u8; PicosText::CAPACITY],
    len: usize,
}

impl PicosText {
    /// A sign, 27 whole digits (i128::MIN / 10^12), the point and 12 decimals.
    const CAPACITY: usize = 48;

    pub fn of(picos: Picos) -> PicosText {
        use std::fmt::Write;
        let magnitude = picos.unsigned_abs();
        let (whole, fraction) = (magnitude / PICOS_PER_UNIT as u128, (magnitude % PICOS_PER_UNIT as u128) as u64);
        let mut text = PicosText { bytes: [0; PicosText::CAPACITY], len: 0 };
        if picos < 0 {
            text.push(b"-");
        }
        match u64::try_from(whole) {
            Ok(whole) => write!(text, "{whole}"),
            Err(_) => write!(text, "{whole}"),
        }
        .expect("the capacity holds any i128's digits");
        if fraction != 0 {
            let mut digits = [b'0'; 12];
            let mut rest = fraction;
            for digit in digits.iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let kept = 12 - digits.iter().rev().take_while(|d| **d == b'0').count();
            text.push(b".");
            text.push(&digits[..kept]);
        }
        text
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("ASCII digits")
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl std::fmt::Write for PicosText {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        if self.len + text.len() > PicosText::CAPACITY {
            return Err(std::fmt::Error);
        }
        self.push(text.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::ingest_checked_pausing;
    use crate::tables::{
        self, ContractTable, CurveTable, CustomerTable, GrantTable, ProductTable, RateTable, Tables, VersionTable,
    };
    use crate::undecodable::Batched;
    use proptest::prelude::*;

    fn request(request_id: &str, customer_id: &str) -> wire::AuthorizeRequest {
        wire::AuthorizeRequest {
            request_id: request_id.into(),
            customer_id: customer_id.into(),
            event_type: "e".into(),
            ..wire::AuthorizeRequest::default()
        }
    }

    fn batch(requests: Vec<wire::AuthorizeRequest>) -> Vec<u8> {
        wire::AuthorizeBatch { requests }.encode_to_vec()
    }

    #[test]
    fn picos_read_as_the_python_servers_decimal_text() {
        assert_eq!(format_picos(0), "0");
        assert_eq!(format_picos(49_995 * PICOS_PER_UNIT), "49995");
        assert_eq!(format_picos(30_000_000_000), "0.03");
        assert_eq!(format_picos(-1_500_000_000_000), "-1.5");
        assert_eq!(format_picos(1), "0.000000000001");
        assert_eq!(format_picos(-1), "-0.000000000001");
        assert_eq!(format_picos(i128::MIN), "-170141183460469231731687303.715884105728");
        assert_eq!(format_picos(10_i128.pow(30)), "1000000000000000000");
        // Exact at any size (Python's Decimal formatting, in a 28-digit context, rounds these).
        let wide = 123_450_000_000_000_000_000_000_000_000_000_001;
        assert_eq!(format_picos(wide), "123450000000000000000000.000000000001");
        assert_eq!(format_picos(-100_000_000_000), "-0.1");
    }

    #[test]
    fn whole_message_checks_come_in_the_servers_order() {
        let allowed = vec!["a".to_string()];
        let two = batch(vec![request("", "a"), request("r", "b")]);
        assert_eq!(decode_requests(&two, 1, Some(&allowed)), Err(Refused::CustomerNotAllowed(1, "b".into())));
        assert_eq!(decode_requests(&two, 1, None), Err(Refused::TooManyRequests(2)));
        assert_eq!(decode_requests(&two, 2, None), Err(Refused::NoRequestId(0)));
        let unnamed = batch(vec![request("r", "")]);
        assert_eq!(decode_requests(&unnamed, 2, Some(&allowed)), Err(Refused::CustomerNotAllowed(0, String::new())));
        assert_eq!(decode_requests(&batch(vec![request("r", "a")]), 2, Some(&allowed)).map(|r| r.len()), Ok(1));
        let long = "r".repeat(TEXT_BYTES_MAX + 1);
        let over = batch(vec![request(&"r".repeat(TEXT_BYTES_MAX), "a"), request(&long, "a")]);
        assert_eq!(decode_requests(&over, 2, None), Err(Refused::RequestIdTooLong(1)));
        let kernel = Kernel::default();
        assert_eq!(
            answer_plain(&kernel, &over, 2, None, 0).map(|r| r.map(|_| ())),
            Some(Err(Refused::RequestIdTooLong(1)))
        );
    }

    /// Where `decode_requests` says `bytes` do not decode, and why.
    fn not_decodable(bytes: &[u8]) -> NotABatch {
        match decode_requests(bytes, 10, None) {
            Err(Refused::NotDecodable(refused)) => *refused,
            other => panic!("not refused as undecodable: {other:?}"),
        }
    }

    fn text(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut field = vec![number << 3 | 2, bytes.len() as u8];
        field.extend_from_slice(bytes);
        field
    }

    /// A request's bytes: ids, event type `call`, a dimension model, then `tail`.
    fn raw_request(request_id: &[u8], customer_id: &[u8], model: &[u8], tail: &[u8]) -> Vec<u8> {
        let entry = [text(1, b"model"), text(2, model)].concat();
        [text(1, request_id), text(2, customer_id), text(3, b"call"), text(4, &entry), tail.to_vec()].concat()
    }

    fn raw_batch(requests: &[Vec<u8>]) -> Vec<u8> {
        requests.iter().flat_map(|request| text(1, request)).collect()
    }

    #[test]
    fn bytes_that_are_not_the_message_are_refused_naming_the_request_and_field() {
        let good = raw_request(b"r", b"c", b"gpt-4", &[]);
        let bad = raw_request(b"r2", b"c\xff", b"gpt-4", &[]);
        let refused = not_decodable(&raw_batch(&[good.clone(), good.clone(), bad, good.clone()]));
        assert_eq!(refused.field, "requests[2].customer_id");
        assert_eq!(
            refused.message,
            "the request at index 2 does not decode: failed to decode Protobuf message: \
             AuthorizeRequest.customer_id: invalid string value: data is not UTF-8 encoded"
        );
        let latin1 = raw_request(b"r1", b"c", b"caf\xe9", &[]);
        assert_eq!(not_decodable(&raw_batch(&[good.clone(), latin1])).field, "requests[1].dimensions");
        // A value entry whose value is a string, not a double.
        let values = raw_request(b"r1", b"c", b"gpt-4", &text(5, &[text(1, b"n"), text(2, b"x")].concat()));
        assert_eq!(not_decodable(&raw_batch(&[good.clone(), values])).field, "requests[1].values");
        // A TTL whose seconds are a string, not a varint: the TTL is named, not its part.
        let ttl = raw_request(b"r1", b"c", b"gpt-4", &text(7, &text(1, b"30")));
        assert_eq!(not_decodable(&raw_batch(&[good.clone(), ttl])).field, "requests[1].reservation_ttl");
        // A request cut off by the end of the bytes, then a request's key that does not read.
        let cut = [raw_batch(std::slice::from_ref(&good)), vec![0x0a, 40, 0x0a]].concat();
        assert_eq!(not_decodable(&cut).field, "requests[1]");
        assert_eq!(not_decodable(b"\x0a\x05ab").field, "requests[0]");
        assert_eq!(not_decodable(&raw_batch(&[good.clone(), vec![0x80]])).field, "requests[1]");
        // The message's own framing: nothing placed.
        let framing = not_decodable(&[raw_batch(&[good]), vec![0xff]].concat());
        assert_eq!(framing.field, "");
        assert!(framing.message.starts_with("the AuthorizeBatch does not decode: failed to decode Protobuf message"));
    }

    #[test]
    fn names_every_field_of_a_request() {
        let good = raw_request(b"r", b"c", b"gpt-4", &[]);
        for (number, name) in (1u8..).zip(wire::AuthorizeBatch::ITEM_FIELDS) {
            // The field as a fixed32, a wire type it never has.
            let bad = raw_request(b"r", b"c", b"gpt-4", &[vec![number << 3 | 5], vec![0; 4]].concat());
            let refused = not_decodable(&raw_batch(&[good.clone(), good.clone(), bad]));
            assert_eq!(refused.field, format!("requests[2].{name}"));
            assert!(refused.message.starts_with("the request at index 2 does not decode: "), "{}", refused.message);
        }
    }

    #[test]
    fn a_refusal_leaves_the_results_it_travels_in_no_wider() {
        // Boxed, the refusal of bytes is no wider than the widest other refusal (an index and a customer id):
        // the good path's Results are the size they were before it named a field (32 and 40 bytes on a 64-bit
        // target, measured with the refusal a String).
        assert_eq!(std::mem::size_of::<Refused>(), std::mem::size_of::<(usize, String)>());
        assert_eq!(std::mem::size_of::<Result<Vec<wire::AuthorizeRequest>, Refused>>(), 32);
        assert_eq!(std::mem::size_of::<Option<Result<(Vec<u8>, usize), Refused>>>(), 40);
    }

    pub(crate) const SCALE: &str = "000000000000000000"; // 10^-18 fixed point: "1" + SCALE is 1

    /// One COUNT product `calls` at 2.5 a call; customer `c` on a BLOCK contract holding 10 credits (the
    /// holds tests use it too).
    pub(crate) fn kernel() -> Kernel {
        let customer = calls_customer("c", "k", true, "10000000000000".into(), None);
        loaded(calls_tables(format!("25{}", &SCALE[1..]), vec![customer]))
    }

    /// One COUNT product `calls` (event type `call`) at `price` a call on rate card `card`, for `customers`.
    pub(crate) fn calls_tables(price: String, customers: Vec<CustomerTable>) -> Tables {
        let curve = CurveTable {
            kind: "UNIT".into(),
            price,
            per_units: format!("1{SCALE}"),
            package_size: "0".into(),
            tiers: vec![],
        };
        Tables {
            future_skew_ms: 300_000,
            dedupe_window_ms: 1_000_000,
            products: vec![ProductTable {
                id: "calls".into(),
                event_type: "call".into(),
                aggregation: "COUNT".into(),
                value_key: String::new(),
                filters: vec![],
                pricing_dimensions: vec![],
                empty_count_missing: false,
                empty_filter_missing: false,
            }],
            versions: vec![VersionTable {
                rate_card_id: "card".into(),
                number: 1,
                rates: vec![RateTable { product_id: "calls".into(), required: vec![], curve }],
            }],
            timelines: vec![vec![(0, 0)]],
            customers,
        }
    }

    /// Customer `id` on contract `contract_id` for rate card `card` (BLOCK or not, overage at 1), with one
    /// grant `g` of `amount_picos` expiring at `expires_at_ms`.
    pub(crate) fn calls_customer(
        id: &str,
        contract_id: &str,
        block: bool,
        amount_picos: String,
        expires_at_ms: Option<i64>,
    ) -> CustomerTable {
        CustomerTable {
            id: id.into(),
            contracts: vec![ContractTable {
                id: contract_id.into(),
                rate_card_id: "card".into(),
                starting_at_ms: 0,
                ending_before_ms: None,
                block,
                overage_price: format!("1{SCALE}"),
                timeline: 0,
                overrides: vec![],
                top_up_refused: false,
            }],
            grants: vec![GrantTable {
                id: "g".into(),
                amount_picos,
                priority: 0,
                applicable_product_ids: vec![],
                starts_at_ms: 0,
                expires_at_ms,
                creation_order: 0,
                rollover_fraction_e18: String::new(),
                use_ends_at_rollover: false,
                expiring_at_rollover_rolls: false,
            }],
            closed_periods: vec![],
        }
    }

    /// A kernel with these tables loaded.
    pub(crate) fn loaded(tables: Tables) -> Kernel {
        let mut kernel = Kernel::default();
        kernel.load_tables(&tables::encode(&tables)).expect("valid tables");
        kernel
    }

    fn calls(count: usize, at_ms: i64) -> Vec<u8> {
        let events = (0..count)
            .map(|n| wire::UsageEvent {
                transaction_id: format!("t{n}"),
                customer_id: "c".into(),
                event_type: "call".into(),
                timestamp_ms: at_ms,
                ..wire::UsageEvent::default()
            })
            .collect();
        wire::UsageBatch { batch_id: "b".into(), events }.encode_to_vec()
    }

    fn decided(kernel: &Kernel, request_id: &str, customer_id: &str) -> (String, bool, String, String, String) {
        let r = wire::AuthorizeRequest { event_type: "call".into(), ..request(request_id, customer_id) };
        let a = answer(kernel, r, 1_000);
        (a.request_id, a.allowed, a.reason, a.estimated_cost, a.credits_available)
    }

    #[test]
    fn a_decision_prices_as_ingestion_would_and_sees_what_was_ingested() {
        let mut kernel = kernel();
        let answer = |k: &Kernel| decided(k, "r", "c");
        assert_eq!(answer(&kernel), ("r".into(), true, "OK".into(), "2.5".into(), "10".into()));
        kernel.ingest(&calls(3, 1_000), 1_000, 1).expect("a batch");
        assert_eq!(answer(&kernel), ("r".into(), true, "OK".into(), "2.5".into(), "2.5".into()));
        kernel.ingest(&calls(4, 1_000), 1_000, 2).expect("a batch"); // t0-t2 duplicates, t3 accepted
        assert_eq!(answer(&kernel), ("r".into(), false, "INSUFFICIENT_CREDIT".into(), "2.5".into(), "0".into()));
    }

    #[test]
    fn ingestion_pauses_every_few_dozen_events_and_rates_as_without_pauses() {
        let batch = calls(200, 1_000);
        let mut plain = kernel();
        let expected = plain.ingest_checked(&batch, 1_000, 1, usize::MAX, None).expect("a batch");
        let mut paused = kernel();
        let mut seen = Vec::new();
        let done = ingest_checked_pausing(&mut &mut paused, &batch, 1_000, 1, usize::MAX, None, |k| {
            seen.push(k.usage("c").map_or(0, |(aggregates, _)| aggregates[0].1.events));
        })
        .expect("a batch");
        // A reader let in at a pause sees whole events only: 64, 128, then 192 of them.
        assert_eq!(seen, vec![64, 128, 192]);
        assert_eq!((done.ack, done.digest), (expected.ack, expected.digest));
        assert_eq!(paused.snapshot(), plain.snapshot());
    }

    #[test]
    fn a_request_without_customer_or_event_type_is_answered_in_band() {
        let kernel = Kernel::default();
        let answered = answer(&kernel, request("r", ""), 1);
        assert_eq!(
            (answered.reason.as_str(), answered.message.as_str()),
            ("INVALID_REQUEST", "customer_id: is required")
        );
        assert_eq!((answered.estimated_cost.as_str(), answered.credits_available.as_str()), ("0", "0"));
        let untyped = wire::AuthorizeRequest { event_type: String::new(), ..request("r", "c") };
        assert_eq!(answer(&kernel, untyped, 1).message, "event_type: is required");
        let unknown = answer(&kernel, request("r", "nobody"), 1);
        assert_eq!((unknown.request_id.as_str(), unknown.reason.as_str()), ("r", "UNKNOWN_CUSTOMER"));
        assert_eq!(unknown.message, "customer 'nobody' does not exist");
    }

    /// The path through prost and `answer`, which the plain path must answer as.
    fn decoded_path(kernel: &Kernel, bytes: &[u8], allowed: Option<&[String]>) -> Result<(Vec<u8>, usize), Refused> {
        let requests = decode_requests(bytes, 4, allowed)?;
        let count = requests.len();
        Ok((encode_result(requests.into_iter().map(|r| answer(kernel, r, 1_000)).collect()), count))
    }

    fn request_strategy() -> impl Strategy<Value = wire::AuthorizeRequest> {
        let texts = |options: &'static [&'static str]| proptest::sample::select(options).prop_map(String::from);
        let value = proptest::sample::select(&[1.0, 0.5, -1.0, 1e-50, 3e15][..]);
        (
            (texts(&["r", "", "é"]), texts(&["c", "", "nobody"]), texts(&["call", "", "other"])),
            proptest::collection::vec((texts(&["k", "model"]), texts(&["v", ""])), 0..3),
            proptest::collection::vec((texts(&["n", "m"]), value), 0..3),
            proptest::bool::weighted(0.1),
            texts(&["", "", "", "", "h"]),
        )
            .prop_map(|((request_id, customer_id, event_type), d, v, reserve, reservation_id)| {
                wire::AuthorizeRequest {
                    request_id,
                    customer_id,
                    event_type,
                    dimensions: d.into_iter().map(|(key, value)| wire::DimensionEntry { key, value }).collect(),
                    values: v.into_iter().map(|(key, value)| wire::ValueEntry { key, value }).collect(),
                    reserve,
                    reservation_id,
                    ..wire::AuthorizeRequest::default()
                }
            })
    }

    fn same_as_decoded(kernel: &Kernel, bytes: &[u8], allowed: Option<&[String]>) -> Result<bool, TestCaseError> {
        let Some(plain) = answer_plain(kernel, bytes, 4, allowed, 1_000) else { return Ok(false) };
        prop_assert_eq!(plain, decoded_path(kernel, bytes, allowed));
        Ok(true)
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn plain_messages_are_answered_as_the_decoded_path_answers(
            requests in proptest::collection::vec(request_strategy(), 0..6),
            restricted in any::<bool>(),
        ) {
            let kernel = kernel();
            let allowed = vec!["c".to_string()];
            let allowed = restricted.then_some(allowed.as_slice());
            let holds = requests.iter().any(|r| r.reserve || !r.reservation_id.is_empty());
            let bytes = batch(requests);
            prop_assert_eq!(same_as_decoded(&kernel, &bytes, allowed)?, !holds, "read in place unless a hold is asked");
        }

        #[test]
        fn damaged_messages_are_answered_as_the_decoded_path_answers_or_left_to_it(
            requests in proptest::collection::vec(request_strategy(), 1..3),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let kernel = kernel();
            let mut bytes = batch(requests);
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            same_as_decoded(&kernel, &bytes, None)?;
            same_as_decoded(&kernel, &bytes[..cut.index(bytes.len())], None)?;
        }
    }

    #[test]
    fn a_ttl_or_a_group_leaves_the_message_to_the_decoded_path() {
        let kernel = kernel();
        let timed = wire::AuthorizeRequest { reservation_ttl: Some(wire::Duration::default()), ..request("r", "c") };
        assert_eq!(answer_plain(&kernel, &batch(vec![timed]), 4, None, 1_000), None);
        assert_eq!(answer_plain(&kernel, &[0x0b, 0x0c], 4, None, 1_000), None);
        // Unknown fields are skipped, as prost skips them.
        let mut bytes = batch(vec![wire::AuthorizeRequest { event_type: "call".into(), ..request("r", "c") }]);
        bytes.extend_from_slice(&[0x48, 0x96, 0x01]);
        assert!(same_as_decoded(&kernel, &bytes, None).unwrap());
    }

    #[test]
    fn answers_are_encoded_as_prost_encodes_them() {
        let long = "x".repeat(200);
        for (allowed, message) in [(true, ""), (false, "no"), (true, long.as_str())] {
            let mut out = Vec::new();
            put_response(&mut out, "r", allowed, "OK", message, 25 * PICOS_PER_UNIT / 10, -1);
            let expected = response("r".into(), allowed, "OK", message.into(), 25 * PICOS_PER_UNIT / 10, -1);
            assert_eq!(out, encode_result(vec![expected]));
        }
    }
}
