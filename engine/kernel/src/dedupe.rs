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

/// A dedupe key as the kernel's table holds it, in halves: a u128 is aligned to 16 bytes, which
/// pads a (u128, Seen) entry to 48 bytes; a (Key, Held) entry takes 40, a sixth less memory and
/// cache traffic in the kernel's largest table. The snapshot still stores u128 and `Seen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    low: u64,
    high: u64,
}

impl From<u128> for Key {
    fn from(key: u128) -> Key {
        Key { low: key as u64, high: (key >> 64) as u64 }
    }
}

impl From<Key> for u128 {
    fn from(key: Key) -> u128 {
        (u128::from(key.high) << 64) | u128::from(key.low)
    }
}

/// `Seen` as the kernel's table holds it: the digest in halves, for the reason `Key` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    digest: Key,
    at_ms: i64,
}

impl From<Seen> for Held {
    fn from(seen: Seen) -> Held {
        Held { digest: seen.digest.into(), at_ms: seen.at_ms }
    }
}

impl From<Held> for Seen {
    fn from(held: Held) -> Seen {
        Seen { digest: held.digest.into(), at_ms: held.at_ms }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_entries_are_smaller_and_convert_back_exactly() {
        assert_eq!(std::mem::size_of::<(Key, Held)>(), 40);
        assert_eq!(std::mem::size_of::<(u128, Seen)>(), 48);
        for key in
            [0, 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
        {
            assert_eq!(u128::from(Key::from(key)), key);
            let seen = Seen { digest: key, at_ms: -7 };
            assert_eq!(Seen::from(Held::from(seen)), seen);
        }
        assert_ne!(Key::from(1), Key::from(1 << 64), "the halves are not confused");
    }
}
