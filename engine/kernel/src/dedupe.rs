//! Dedupe on (customer_id, transaction_id): a content digest per accepted transaction id, in one
//! table for the whole kernel keyed by a 128-bit hash of the pair (no string kept per event).
//!
//! An identical resend inside the window is a duplicate; a different payload under the same id
//! is a DUPLICATE_CONFLICT. The digest is XXH3-128 (a fixed, documented algorithm over a canonical encoding, so digests
//! in a snapshot stay valid across releases) over a canonical encoding of the event apart from
//! its transaction id: map order and repeated keys do not change it.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::decode::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub digest: u128,
    /// The server's receive time of the batch that accepted it.
    pub at_ms: i64,
}

fn text(canonical: &mut Vec<u8>, value: &str) {
    canonical.extend_from_slice(&(value.len() as u64).to_le_bytes());
    canonical.extend_from_slice(value.as_bytes());
}

/// The dedupe key of (customer_id, transaction_id): XXH3-128 over both, length-prefixed (so no
/// two pairs share an encoding). `canonical` is scratch space, reused between events.
///
/// Why 128 bits are safe as the key itself: two distinct pairs collide with probability 2^-128
/// for a good hash, so among n ids the chance of any collision is about n^2 / 2^129: at 10^8 ids,
/// 10^16 / 6.8 x 10^38, about 1.5 x 10^-23, far below the odds of an undetected memory error. (A
/// collision would make a new event look like a resend of another; 64 bits would give 2.7 x 10^-4
/// at 10^8 ids, which is why the key is not a u64.)
pub fn key(customer_id: &str, transaction_id: &str, canonical: &mut Vec<u8>) -> u128 {
    canonical.clear();
    text(canonical, customer_id);
    text(canonical, transaction_id);
    xxh3_128(canonical)
}

/// `canonical` is scratch space, reused between events.
pub fn content_digest(event: &Event, canonical: &mut Vec<u8>) -> u128 {
    canonical.clear();
    text(canonical, event.customer_id);
    text(canonical, event.event_type);
    canonical.extend_from_slice(&event.timestamp_ms.to_le_bytes());
    // The event's maps are already sorted by key (decode::check_event).
    canonical.extend_from_slice(&(event.dimensions.len() as u64).to_le_bytes());
    for (key, value) in &event.dimensions {
        text(canonical, key);
        text(canonical, value);
    }
    canonical.extend_from_slice(&(event.values.len() as u64).to_le_bytes());
    for (key, value) in &event.values {
        text(canonical, key);
        canonical.extend_from_slice(&value.to_le_bytes());
    }
    text(canonical, event.reservation_id);
    xxh3_128(canonical)
}

/// What a transaction id seen before means now: None if unseen or out of the window.
pub fn prior(seen: Option<&Seen>, received_ms: i64, window_ms: i64) -> Option<u128> {
    seen.filter(|s| received_ms.saturating_sub(s.at_ms) < window_ms).map(|s| s.digest)
}
