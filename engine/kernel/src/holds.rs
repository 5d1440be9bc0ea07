//! AuthorizeBatches with holds: a message's `reserve` requests become one journaled command.
//!
//! `split` runs when a message arrives (the kernel's lock shared): requests without `reserve` are
//! decided at once as `authorize::answer` decides them (the fast path, no journal), and each request
//! with `reserve` is checked (customer, event type, TTL) and completed (a reservation id when it has
//! none) or answered INVALID_REQUEST in-band. The completed requests are what the server journals, as
//! one `ReserveBatch` command for the whole message (a request naming no TTL journaled so, beside the
//! TTL such a request is given: its TTL is no part of the request, `credits::HoldTtl`);
//! `Kernel::reserve_batch` then applies them in order through `Kernel::reserve`, so each hold is
//! decided against the holds before it (in the same message too) exactly as one `Authorize
//! (reserve=true)` would be, and replay applies the same bytes to the same state with the same
//! result. A request that cannot hold (denied, a conflicting id) is answered in-band and never sinks
//! the others.

use prost::Message;
use xxhash_rust::xxh3::xxh3_128;

use crate::authorize::{answer, asked_usage, response, text_len, unpriceable, Refused};
use crate::credits::HoldTtl;
use crate::decode::{wire, TEXT_BYTES_MAX};
use crate::kernel::Kernel;

/// A hold's TTL when the request gives none (the unary path's RESERVATION_TTL_DEFAULT_MS), unless the server's
/// maximum is shorter (then that: `prepare`).
pub const TTL_DEFAULT_MS: i64 = 60_000;

/// `AuthorizeResponse.reason` of a request whose reservation_id the customer already used for a
/// different request (unary Authorize answers ALREADY_EXISTS).
pub const RESERVATION_CONFLICT: &str = "RESERVATION_CONFLICT";

/// What the server allows a hold, and where the ids it makes come from.
pub struct HoldRules<'a> {
    pub ttl_max_ms: i64,
    /// Random per server process: with the message's number and the request's index it names a
    /// reservation the request left unnamed, `r-<32 hex>` (as unary Authorize names one).
    pub id_seed: &'a [u8],
    pub message_number: u64,
}

/// A message split in two: the answers decided now, and the holds the writer must decide.
#[derive(Debug, PartialEq)]
pub struct Split {
    /// One per request, in order; None where a hold waits for `reserve_batch`.
    pub answers: Vec<Option<wire::AuthorizeResponse>>,
    /// The holds, in request order, ids filled in, TTLs as named.
    pub holds: Vec<wire::AuthorizeRequest>,
    /// The TTL of the holds naming none: the default, or the server's maximum when shorter.
    pub ttl_default_ms: i64,
}

/// What `reserve_batch` did.
#[derive(Debug, PartialEq)]
pub struct HeldBatch {
    /// One per hold request, in order.
    pub responses: Vec<wire::AuthorizeResponse>,
    /// Requests that placed a new hold (0: the state did not change, nothing to journal).
    pub placed: u32,
    /// The customers of those holds, first appearance first.
    pub customers: Vec<String>,
}

/// Decodes an AuthorizeBatch with the whole-message checks of `authorize::decode_requests`.
pub fn decode(
    bytes: &[u8],
    requests_max: usize,
    allowed: Option<&[String]>,
) -> Result<Vec<wire::AuthorizeRequest>, Refused> {
    crate::authorize::decode_requests(bytes, requests_max, allowed)
}

/// Decides the requests without `reserve` at now_ms and prepares the others; changes nothing.
pub fn split(kernel: &Kernel, requests: Vec<wire::AuthorizeRequest>, now_ms: i64, rules: &HoldRules<'_>) -> Split {
    let mut answers = Vec::with_capacity(requests.len());
    let mut holds = Vec::new();
    let ttl_default_ms = TTL_DEFAULT_MS.min(rules.ttl_max_ms);
    for (index, mut request) in requests.into_iter().enumerate() {
        if !request.reserve {
            answers.push(Some(if request.reservation_id.is_empty() {
                answer(kernel, request, now_ms)
            } else {
                invalid(request.request_id, "reservation_id: is only read with reserve=true".into())
            }));
            continue;
        }
        match prepare(kernel, &mut request, index, rules, ttl_default_ms) {
            Ok(()) => {
                answers.push(None);
                holds.push(request);
            }
            Err(message) => answers.push(Some(invalid(request.request_id, message))),
        }
    }
    Split { answers, holds, ttl_default_ms }
}

/// Completes a hold request (its id), or says what is wrong with it, in the unary path's
/// order and words: a customer_id breaking the id rule (that no account has) comes first, as there.
fn prepare(
    kernel: &Kernel,
    request: &mut wire::AuthorizeRequest,
    index: usize,
    rules: &HoldRules<'_>,
    ttl_default_ms: i64,
) -> Result<(), String> {
    if let Some(message) = unpriceable(kernel, &request.customer_id, &request.event_type) {
        return Err(message);
    }
    // A request naming no TTL asked for none: it gets the default, or the server's maximum when that is shorter,
    // and is journaled naming none (`reserve_batch` gives it `ttl_default_ms`).
    let ttl_ms = if request.reservation_ttl.is_none() { ttl_default_ms } else { ttl_ms(request)? };
    if ttl_ms > rules.ttl_max_ms {
        let most = seconds_text(rules.ttl_max_ms);
        return Err(format!("reservation_ttl: must be at most {most} s (the server's --reservation-ttl-max-s)"));
    }
    if request.reservation_id.len() > TEXT_BYTES_MAX {
        return Err(format!("reservation_id: must be at most {TEXT_BYTES_MAX} bytes"));
    }
    if request.reservation_id.is_empty() {
        let mut named = Vec::with_capacity(rules.id_seed.len() + 16);
        named.extend_from_slice(rules.id_seed);
        named.extend_from_slice(&rules.message_number.to_le_bytes());
        named.extend_from_slice(&(index as u64).to_le_bytes());
        request.reservation_id = format!("r-{:032x}", xxh3_128(&named));
    }
    Ok(())
}

/// The request's TTL in milliseconds (TTL_DEFAULT_MS when unset), or why it is refused.
fn ttl_ms(request: &wire::AuthorizeRequest) -> Result<i64, String> {
    let Some(ttl) = &request.reservation_ttl else { return Ok(TTL_DEFAULT_MS) };
    // Valid as google/protobuf/duration.proto defines it (server/convert.py duration_ms words it the same).
    if !(-999_999_999..=999_999_999).contains(&ttl.nanos) {
        return Err(format!("reservation_ttl: nanos must be from -999,999,999 to 999,999,999, not {}", ttl.nanos));
    }
    if (ttl.seconds > 0 && ttl.nanos < 0) || (ttl.seconds < 0 && ttl.nanos > 0) {
        return Err(format!(
            "reservation_ttl: seconds ({}) and nanos ({}) must not have different signs",
            ttl.seconds, ttl.nanos
        ));
    }
    if ttl.nanos % 1_000_000 != 0 {
        return Err("reservation_ttl: must be a whole number of milliseconds".into());
    }
    let ttl_ms = ttl.seconds.saturating_mul(1000).saturating_add(i64::from(ttl.nanos / 1_000_000));
    if ttl_ms <= 0 {
        return Err("reservation_ttl: must be positive".into());
    }
    Ok(ttl_ms)
}

/// Milliseconds as seconds, the decimals it needs and no more ("3600", "1.5", "0.001").
pub fn seconds_text(ms: i64) -> String {
    let text = format!("{}.{:03}", ms / 1000, (ms % 1000).abs());
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn invalid(request_id: String, message: String) -> wire::AuthorizeResponse {
    response(request_id, false, "INVALID_REQUEST", message, 0, 0)
}

/// The AuthorizeBatchResult bytes for a split message once its holds are answered: `held` fills
/// the holes, in order.
pub fn merge(
    answers: Vec<Option<wire::AuthorizeResponse>>,
    held: Vec<wire::AuthorizeResponse>,
) -> Result<Vec<u8>, String> {
    let mut held = held.into_iter();
    let responses: Option<Vec<_>> = answers.into_iter().map(|a| a.or_else(|| held.next())).collect();
    match (responses, held.next()) {
        (Some(responses), None) => Ok(crate::authorize::encode_result(responses)),
        _ => Err("the holds' answers do not match the message's hold requests".into()),
    }
}

impl Kernel {
    /// Applies a message's hold requests (as `split` completed them) at now_ms, in order, each as
    /// `reserve` applies one: a request that cannot hold is answered in-band (INVALID_REQUEST,
    /// RESERVATION_CONFLICT, or the denial) and the others go on. A request naming no TTL holds for
    /// `ttl_default_ms` (`Split.ttl_default_ms`), its TTL no part of its request (`HoldTtl`); 0, in the
    /// records of earlier releases (whose requests all had theirs filled in by `split`), applies each
    /// request's TTL as named, as then.
    pub fn reserve_batch(
        &mut self,
        requests: Vec<wire::AuthorizeRequest>,
        now_ms: i64,
        ttl_default_ms: i64,
    ) -> HeldBatch {
        let mut done = HeldBatch { responses: Vec::with_capacity(requests.len()), placed: 0, customers: Vec::new() };
        for mut request in requests {
            let asked = match request.reservation_ttl {
                None if ttl_default_ms > 0 => Ok(HoldTtl::Defaulted(ttl_default_ms)),
                _ => ttl_ms(&request).map(HoldTtl::Named),
            };
            let ttl = match asked {
                Ok(ttl) if !request.reservation_id.is_empty() && !request.customer_id.is_empty() => ttl,
                Ok(_) => {
                    let message = "reservation_id and customer_id: are required to hold".to_string();
                    done.responses.push(invalid(request.request_id, message));
                    continue;
                }
                Err(message) => {
                    done.responses.push(invalid(request.request_id, message));
                    continue;
                }
            };
            let event = asked_usage(&mut request, now_ms);
            let answered = match self.reserve(&request.reservation_id, &event, now_ms, ttl) {
                Ok(r) => {
                    let d = r.decision;
                    if d.allowed && !r.repeated {
                        done.placed += 1;
                        if !done.customers.contains(&event.customer_id) {
                            done.customers.push(event.customer_id.clone());
                        }
                    }
                    let mut answered =
                        response(request.request_id, d.allowed, d.reason, d.message, d.cost, d.available);
                    if d.allowed {
                        answered.reservation_id = request.reservation_id;
                    }
                    answered
                }
                Err(conflict) => {
                    let message = format!("{conflict}; nothing was held");
                    response(request.request_id, false, RESERVATION_CONFLICT, message, 0, 0)
                }
            };
            done.responses.push(answered);
        }
        done
    }
}

/// What an answer's reason takes at most: TIMESTAMP_OUT_OF_RANGE, the longest reason the kernel answers (22
/// characters), with its key and length.
const REASON_BYTES_MOST: usize = 24;
/// What an amount's text takes at most (`format_picos`: an i128's 41 characters), with its key and length.
const AMOUNT_BYTES_MOST: usize = 43;

/// The most bytes a split message's AuthorizeBatchResult can take once every answer's message is left out (how
/// the server fits an answer that would not fit its gRPC message limit otherwise): the answers decided now as
/// they are, each hold at its largest answer, as it is decided only when its command applies (a request_id and
/// the reservation_id `prepare` completed echoed, `allowed`, the longest reason, two amounts of the longest
/// text). The server refuses a message past its limit so before any hold is placed.
pub fn result_bytes_most(answers: &[Option<wire::AuthorizeResponse>], holds: &[wire::AuthorizeRequest]) -> usize {
    let entry = |body: usize| 1 + prost::encoding::encoded_len_varint(body as u64) + body;
    let decided: usize =
        answers.iter().flatten().map(|answer| entry(answer.encoded_len() - text_len(&answer.message))).sum();
    let held: usize = holds
        .iter()
        .map(|hold| {
            let ids = text_len(&hold.request_id) + text_len(&hold.reservation_id);
            entry(ids + 2 + REASON_BYTES_MOST + 2 * AMOUNT_BYTES_MOST)
        })
        .sum();
    decided + held
}

/// The hold requests as journaled: an AuthorizeBatch holding only them.
pub fn encode_holds(holds: Vec<wire::AuthorizeRequest>) -> Vec<u8> {
    wire::AuthorizeBatch { requests: holds }.encode_to_vec()
}

/// A journaled hold message back to its requests.
pub fn decode_holds(bytes: &[u8]) -> Result<Vec<wire::AuthorizeRequest>, String> {
    wire::AuthorizeBatch::decode(bytes).map(|b| b.requests).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Picos;
    // One COUNT product `calls` at 2.5 a call; customer `c` on a BLOCK contract holding 10 credits.
    use crate::authorize::encode_result;
    use crate::authorize::tests::kernel;

    const NOW: i64 = 1_000;
    const RULES: HoldRules<'static> = HoldRules { ttl_max_ms: 3_600_000, id_seed: b"seed", message_number: 7 };

    /// A hold of one call for customer `c` under `reservation_id` (empty: the server names it).
    fn hold(request_id: &str, reservation_id: &str) -> wire::AuthorizeRequest {
        wire::AuthorizeRequest {
            request_id: request_id.into(),
            customer_id: "c".into(),
            event_type: "call".into(),
            reserve: true,
            reservation_id: reservation_id.into(),
            ..wire::AuthorizeRequest::default()
        }
    }

    fn ttl(request: wire::AuthorizeRequest, seconds: i64, nanos: i32) -> wire::AuthorizeRequest {
        wire::AuthorizeRequest { reservation_ttl: Some(wire::Duration { seconds, nanos }), ..request }
    }

    /// The message split, its holds applied, the answers merged: what AuthorizeBatches answers.
    fn through(
        kernel: &mut Kernel,
        requests: Vec<wire::AuthorizeRequest>,
    ) -> (Vec<wire::AuthorizeResponse>, HeldBatch) {
        let split = split(kernel, requests, NOW, &RULES);
        let journaled = encode_holds(split.holds);
        let held = kernel.reserve_batch(decode_holds(&journaled).expect("our own bytes"), NOW, split.ttl_default_ms);
        let merged = merge(split.answers, held.responses.clone()).expect("as many answers as holds");
        (wire::AuthorizeBatchResult::decode(&merged[..]).expect("our own bytes").responses, held)
    }

    fn summary(answers: &[wire::AuthorizeResponse]) -> Vec<(&str, bool, &str, &str)> {
        answers
            .iter()
            .map(|a| (a.request_id.as_str(), a.allowed, a.reason.as_str(), a.credits_available.as_str()))
            .collect()
    }

    fn held_now(kernel: &Kernel) -> Vec<(String, Picos)> {
        let open = &kernel.account_credits("c").expect("holds were made").open;
        open.iter().map(|(id, r)| (id.to_string(), r.held_total())).collect()
    }

    #[test]
    fn result_bytes_most_takes_answers_decided_now_as_they_are_and_holds_at_their_largest() {
        let mut kernel = kernel();
        let plain = wire::AuthorizeRequest { reserve: false, ..hold("p", "") };
        let requests = vec![hold("q0", "h0"), plain, hold("q1", "")];
        let split = split(&kernel, requests.clone(), NOW, &RULES);
        let most = result_bytes_most(&split.answers, &split.holds);
        let (answers, _) = through(&mut kernel, requests);
        let bare: Vec<_> =
            answers.into_iter().map(|a| wire::AuthorizeResponse { message: String::new(), ..a }).collect();
        let plain_bytes = encode_result(vec![bare[1].clone()]).len();
        // q0: its entry (1 + 1) and request_id (4), reservation_id (4), allowed (2), the longest reason (24) and two
        // amounts (86): 122. q1: its entry (1 + 2), request_id (4), the id the server made, r- and 32 hex (36), and
        // the same 112: 155. The plain answer counts as it is, its message left out.
        assert_eq!(most, 122 + 155 + plain_bytes);
        assert!(encode_result(bare).len() <= most);
    }

    #[test]
    fn holds_in_one_message_never_exceed_the_credit_under_block() {
        let mut kernel = kernel();
        let requests = (0..6).map(|n| hold(&format!("q{n}"), &format!("h{n}"))).collect();
        let (answers, held) = through(&mut kernel, requests);
        // 10 credits hold four calls of 2.5; the fifth and sixth find nothing left, whatever the message.
        assert_eq!(
            summary(&answers),
            vec![
                ("q0", true, "OK", "7.5"),
                ("q1", true, "OK", "5"),
                ("q2", true, "OK", "2.5"),
                ("q3", true, "OK", "0"),
                ("q4", false, "INSUFFICIENT_CREDIT", "0"),
                ("q5", false, "INSUFFICIENT_CREDIT", "0"),
            ]
        );
        assert_eq!(
            answers.iter().map(|a| a.reservation_id.as_str()).collect::<Vec<_>>(),
            ["h0", "h1", "h2", "h3", "", ""]
        );
        assert_eq!((held.placed, held.customers.clone()), (4, vec!["c".to_string()]));
        let holds = held_now(&kernel);
        assert_eq!(holds.len(), 4);
        assert!(holds.iter().all(|(_, credits)| *credits == 2_500_000_000_000));
        assert_eq!(kernel.balance("c", NOW).expect("known").remaining, 0);
    }

    #[test]
    fn a_message_of_holds_changes_the_state_exactly_as_the_same_holds_one_at_a_time() {
        let requests: Vec<_> = (0..5).map(|n| ttl(hold(&format!("q{n}"), &format!("h{n}")), 30, 0)).collect();
        let mut batched = kernel();
        let (answers, _) = through(&mut batched, requests.clone());
        let mut single = kernel();
        for (request, answer) in requests.into_iter().zip(&answers) {
            let event = wire::UsageEvent {
                transaction_id: "authorize".into(),
                customer_id: request.customer_id,
                event_type: request.event_type,
                timestamp_ms: NOW,
                ..wire::UsageEvent::default()
            };
            let one =
                single.reserve(&request.reservation_id, &event, NOW, HoldTtl::Named(30_000)).expect("no conflict");
            assert_eq!((one.decision.allowed, one.decision.reason), (answer.allowed, answer.reason.as_str()));
        }
        assert_eq!(batched.snapshot(), single.snapshot());
    }

    #[test]
    fn a_repeated_id_in_one_message_holds_once_and_a_conflicting_one_holds_nothing() {
        let mut kernel = kernel();
        let requests = vec![
            hold("a", "same"),
            hold("b", "same"),            // identical: answered again, nothing more held
            ttl(hold("c", "same"), 5, 0), // another TTL is another request: a conflict
            hold("d", "other"),
        ];
        let (answers, held) = through(&mut kernel, requests);
        assert_eq!(
            summary(&answers),
            vec![
                ("a", true, "OK", "7.5"),
                ("b", true, "OK", "7.5"),
                ("c", false, RESERVATION_CONFLICT, "0"),
                ("d", true, "OK", "5")
            ]
        );
        assert!(answers[1].message.starts_with("already held"), "{}", answers[1].message);
        assert_eq!(
            answers[2].message,
            "reservation_id 'same' is already used by a different request of this customer; nothing was held"
        );
        assert_eq!((answers[1].reservation_id.as_str(), answers[2].reservation_id.as_str()), ("same", ""));
        assert_eq!(held.placed, 2);
        assert_eq!(held_now(&kernel), vec![("other".into(), 2_500_000_000_000), ("same".into(), 2_500_000_000_000)]);
    }

    #[test]
    fn a_reservation_id_beyond_256_bytes_is_answered_in_band_and_a_journaled_one_still_holds() {
        let mut kernel = kernel();
        let (longest, too_long) = ("r".repeat(256), "r".repeat(257));
        let (answers, held) = through(&mut kernel, vec![hold("a", &longest), hold("b", &too_long)]);
        let messages: Vec<_> = answers.iter().map(|a| (a.reason.as_str(), a.message.as_str())).collect();
        assert_eq!(messages, vec![("OK", ""), ("INVALID_REQUEST", "reservation_id: must be at most 256 bytes")]);
        assert_eq!(held.placed, 1);
        // A hold journaled before the limit (split lets none through now) replays as it applied: it holds.
        let done = kernel.reserve_batch(vec![ttl(hold("old", &too_long), 60, 0)], NOW, 60_000);
        assert_eq!((done.placed, done.responses[0].reason.as_str()), (1, "OK"));
    }

    #[test]
    fn a_bad_ttl_mid_message_is_answered_in_band_and_the_others_hold() {
        let mut kernel = kernel();
        let requests = vec![
            hold("a", "h0"),
            ttl(hold("zero", "h1"), 0, 0),
            ttl(hold("negative", "h2"), -1, 0),
            ttl(hold("partial-ms", "h3"), 1, 500),
            ttl(hold("too-long", "h4"), 3_601, 0),
            ttl(hold("b", "h5"), 3_600, 0),
            ttl(hold("mixed-signs", "m1"), 1, -1_000_000),
            ttl(hold("mixed-signs-too", "m2"), -1, 999_000_000),
            ttl(hold("a-second-of-nanos", "m3"), 0, 1_000_000_000),
        ];
        let (answers, held) = through(&mut kernel, requests);
        let messages: Vec<_> = answers.iter().map(|a| (a.reason.as_str(), a.message.as_str())).collect();
        assert_eq!(
            messages,
            vec![
                ("OK", ""),
                ("INVALID_REQUEST", "reservation_ttl: must be positive"),
                ("INVALID_REQUEST", "reservation_ttl: must be positive"),
                ("INVALID_REQUEST", "reservation_ttl: must be a whole number of milliseconds"),
                ("INVALID_REQUEST", "reservation_ttl: must be at most 3600 s (the server's --reservation-ttl-max-s)"),
                ("OK", ""),
                ("INVALID_REQUEST", "reservation_ttl: seconds (1) and nanos (-1000000) must not have different signs"),
                (
                    "INVALID_REQUEST",
                    "reservation_ttl: seconds (-1) and nanos (999000000) must not have different signs"
                ),
                ("INVALID_REQUEST", "reservation_ttl: nanos must be from -999,999,999 to 999,999,999, not 1000000000"),
            ]
        );
        assert_eq!(held.placed, 2);
        let expiries: Vec<i64> =
            kernel.account_credits("c").expect("held").open.values().map(|r| r.expires_at_ms).collect();
        assert_eq!(expiries, vec![NOW + 60_000, NOW + 3_600_000]); // h0 took the default TTL
                                                                   // A journaled hold whose TTL the kernel would refuse (written by hand: split never lets one through)
                                                                   // is answered in-band when applied, and holds nothing.
        let done = kernel.reserve_batch(vec![ttl(hold("late", "h6"), 0, 0)], NOW, 60_000);
        assert_eq!((done.placed, done.responses[0].reason.as_str()), (0, "INVALID_REQUEST"));
    }

    #[test]
    fn a_hold_naming_no_ttl_gets_the_servers_maximum_when_that_is_below_the_default() {
        let kernel = kernel();
        let rules = HoldRules { ttl_max_ms: 1_500, ..RULES };
        let split = split(&kernel, vec![hold("h0", "h0"), ttl(hold("h1", "h1"), 2, 0)], NOW, &rules);
        let ttls: Vec<_> =
            split.holds.iter().map(|h| h.reservation_ttl.as_ref().map(|d| (d.seconds, d.nanos))).collect();
        // Journaled naming none, and the TTL it is given beside it (ReserveBatch.ttl_default_ms), so replay reads it.
        assert_eq!((ttls, split.ttl_default_ms), (vec![None], 1_500));
        let refused = split.answers[1].as_ref().expect("answered at once");
        assert_eq!(refused.message, "reservation_ttl: must be at most 1.5 s (the server's --reservation-ttl-max-s)");
    }

    #[test]
    fn a_hold_naming_no_ttl_is_retried_alike_after_a_start_with_a_shorter_maximum() {
        let mut kernel = kernel();
        let (first, _) = through(&mut kernel, vec![hold("a", "h0")]); // 60 s: the default
        let shorter = HoldRules { ttl_max_ms: 30_000, ..RULES };
        let retry = |kernel: &mut Kernel, requests: Vec<wire::AuthorizeRequest>| {
            let split = split(kernel, requests, NOW + 5, &shorter);
            assert_eq!(split.ttl_default_ms, 30_000);
            let journaled = decode_holds(&encode_holds(split.holds)).expect("our own bytes");
            kernel.reserve_batch(journaled, NOW + 5, split.ttl_default_ms)
        };
        let again = retry(&mut kernel, vec![hold("b", "h0"), ttl(hold("c", "h0"), 30, 0)]);
        let seen: Vec<_> = again.responses.iter().map(|a| (a.reason.as_str(), a.reservation_id.as_str())).collect();
        // Naming none, it is the same request; naming the 30 s that none now gives, it is another.
        assert_eq!(seen, vec![("OK", "h0"), (RESERVATION_CONFLICT, "")]);
        assert!(again.responses[0].message.starts_with("already held"), "{}", again.responses[0].message);
        assert_eq!(again.responses[0].estimated_cost, first[0].estimated_cost);
        assert_eq!(again.placed, 0);
        // A hold made by a unary Authorize naming no TTL is the same hold for a message naming none.
        let event = wire::UsageEvent {
            transaction_id: "authorize".into(),
            customer_id: "c".into(),
            event_type: "call".into(),
            timestamp_ms: NOW,
            ..wire::UsageEvent::default()
        };
        kernel.reserve("u", &event, NOW, HoldTtl::Defaulted(60_000)).expect("holds");
        let unary = retry(&mut kernel, vec![hold("d", "u")]);
        assert!(unary.responses[0].message.starts_with("already held"), "{}", unary.responses[0].message);
        assert_eq!(held_now(&kernel), vec![("h0".into(), 2_500_000_000_000), ("u".into(), 2_500_000_000_000)]);
    }

    #[test]
    fn a_message_journaled_with_its_ttls_filled_in_replays_as_it_applied() {
        // Before `ttl_default_ms`, split filled the default into a request naming none: it applies as named.
        let mut kernel = kernel();
        let done = kernel.reserve_batch(vec![ttl(hold("a", "h0"), 60, 0)], NOW, 0);
        assert_eq!(done.placed, 1);
        let open = &kernel.account_credits("c").expect("held").open["h0"];
        assert_eq!(open.digest, crate::credits::request_digest(&asked(&hold("a", "h0")), HoldTtl::Named(60_000)));
        // One written by hand naming none, without a default beside it, takes TTL_DEFAULT_MS as then.
        let done = kernel.reserve_batch(vec![hold("b", "h1")], NOW, 0);
        let open = &kernel.account_credits("c").expect("held").open["h1"];
        assert_eq!((done.placed, open.expires_at_ms), (1, NOW + TTL_DEFAULT_MS));
        assert_eq!(open.digest, crate::credits::request_digest(&asked(&hold("b", "h1")), HoldTtl::Named(60_000)));
    }

    /// The usage a hold request asks about, as `reserve_batch` builds it.
    fn asked(request: &wire::AuthorizeRequest) -> wire::UsageEvent {
        asked_usage(&mut request.clone(), NOW)
    }

    #[test]
    fn requests_without_reserve_are_decided_at_once_and_holds_wait() {
        let kernel = kernel();
        let plain = wire::AuthorizeRequest { reserve: false, reservation_id: String::new(), ..hold("plain", "") };
        let named = wire::AuthorizeRequest { reserve: false, ..hold("named", "x") };
        let nobody = wire::AuthorizeRequest { customer_id: String::new(), ..hold("nobody", "") };
        let untyped = wire::AuthorizeRequest { event_type: String::new(), ..hold("untyped", "") };
        let split = split(
            &kernel,
            vec![plain, hold("held", ""), named, nobody, untyped, hold("named-hold", "mine")],
            NOW,
            &RULES,
        );
        let answered: Vec<_> =
            split.answers.iter().map(|a| a.as_ref().map(|a| (a.reason.as_str(), a.message.as_str()))).collect();
        assert_eq!(
            answered,
            vec![
                Some(("OK", "")),
                None,
                Some(("INVALID_REQUEST", "reservation_id: is only read with reserve=true")),
                Some(("INVALID_REQUEST", "customer_id: is required")),
                Some(("INVALID_REQUEST", "event_type: is required")),
                None,
            ]
        );
        let ids: Vec<_> = split.holds.iter().map(|h| h.reservation_id.clone()).collect();
        assert_eq!(ids[1], "mine");
        assert!(ids[0].starts_with("r-") && ids[0].len() == 34 && ids[0][2..].bytes().all(|b| b.is_ascii_hexdigit()));
        // The same request at another index, or in another message, is named otherwise; the same message
        // number and index name it alike (the seed is what differs between server processes).
        let first = |rules: &HoldRules<'_>| {
            super::split(&kernel, vec![hold("held", "")], NOW, rules).holds[0].reservation_id.clone()
        };
        assert_ne!(first(&RULES), ids[0]);
        assert_ne!(first(&HoldRules { message_number: 8, ..RULES }), first(&RULES));
        assert_ne!(first(&HoldRules { id_seed: b"other", ..RULES }), first(&RULES));
        assert_eq!(first(&RULES), first(&RULES));
        assert_eq!((&split.holds[0].reservation_ttl, split.ttl_default_ms), (&None, 60_000));
    }

    #[test]
    fn an_unknown_customer_is_answered_in_band_and_holds_nothing() {
        let mut kernel = kernel();
        let stranger = wire::AuthorizeRequest { customer_id: "nobody".into(), ..hold("s", "h0") };
        let (answers, held) = through(&mut kernel, vec![stranger, hold("c", "h1")]);
        assert_eq!(summary(&answers), vec![("s", false, "UNKNOWN_CUSTOMER", "0"), ("c", true, "OK", "7.5")]);
        assert_eq!(answers[0].message, "customer 'nobody' does not exist");
        assert_eq!((held.placed, held.customers), (1, vec!["c".to_string()]));
    }

    #[test]
    fn a_malformed_customer_id_is_named_before_whatever_else_is_wrong_and_is_not_journaled() {
        let mut kernel = kernel();
        let named = "customer_id: 'bad id!' must be 1-128 characters of letters, digits and ._:@-";
        let malformed =
            |request: wire::AuthorizeRequest| wire::AuthorizeRequest { customer_id: "bad id!".into(), ..request };
        let requests = vec![
            malformed(ttl(hold("zero-ttl", "a"), 0, 0)),
            malformed(hold("long-id", &"x".repeat(TEXT_BYTES_MAX + 1))),
            malformed(wire::AuthorizeRequest { event_type: String::new(), ..hold("no-event-type", "b") }),
            malformed(hold("only-that", "c")),
        ];
        let split = split(&kernel, requests.clone(), NOW, &RULES);
        assert!(split.holds.is_empty(), "{:?}", split.holds);
        let (answers, held) = through(&mut kernel, requests);
        let seen: Vec<_> = answers.iter().map(|a| (a.reason.as_str(), a.message.as_str())).collect();
        assert_eq!(seen, vec![("INVALID_REQUEST", named); 4]);
        assert_eq!(held.placed, 0);
    }

    #[test]
    fn a_message_whose_holds_all_fail_places_nothing() {
        let mut kernel = kernel();
        through(&mut kernel, (0..4).map(|n| hold("q", &format!("h{n}"))).collect());
        let before = kernel.snapshot();
        let (_, held) = through(&mut kernel, vec![hold("denied", "h9"), hold("again", "h0")]);
        assert_eq!((held.placed, held.customers.len()), (0, 0));
        assert_eq!(kernel.snapshot(), before);
    }

    #[test]
    fn merging_needs_one_answer_per_hold() {
        let answer = |id: &str| response(id.into(), true, "OK", String::new(), 0, 0);
        let merged =
            merge(vec![Some(answer("a")), None, Some(answer("c"))], vec![answer("b")]).expect("one hole, one answer");
        let ids: Vec<_> = wire::AuthorizeBatchResult::decode(&merged[..])
            .expect("bytes")
            .responses
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(merge(vec![None, None], vec![answer("b")]).is_err());
        assert!(merge(vec![None], vec![answer("b"), answer("x")]).is_err());
    }

    #[test]
    fn seconds_read_as_the_unary_path_words_them() {
        assert_eq!(seconds_text(3_600_000), "3600");
        assert_eq!(seconds_text(1_500), "1.5");
        assert_eq!(seconds_text(1), "0.001");
        assert_eq!(seconds_text(10_000), "10");
    }
}
