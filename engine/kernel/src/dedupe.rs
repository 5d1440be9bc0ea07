//! Dedupe on (customer_id, transaction_id): a content digest per accepted transaction id.
//!
//! An identical resend inside the window is a duplicate; a different payload under the same id
//! is a DUPLICATE_CONFLICT. The digest is XXH3-128 (a fixed, documented algorithm, so digests
//! in a snapshot stay valid across releases) over a canonical encoding of the event apart from
//! its transaction id: map order and repeated keys do not change it.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::decode::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub digest: u128,
    /// The server's receive time of the batch that accepted it.
    pub at_ms: i64,
}

fn text(hasher: &mut Xxh3, value: &str) {
    hasher.update(&(value.len() as u64).to_le_bytes());
    hasher.update(value.as_bytes());
}

pub fn content_digest(event: &Event) -> u128 {
    let mut hasher = Xxh3::new();
    text(&mut hasher, event.customer_id);
    text(&mut hasher, event.event_type);
    hasher.update(&event.timestamp_ms.to_le_bytes());
    let mut dimensions = event.dimensions.clone();
    dimensions.sort_unstable();
    hasher.update(&(dimensions.len() as u64).to_le_bytes());
    for (key, value) in dimensions {
        text(&mut hasher, key);
        text(&mut hasher, value);
    }
    let mut values = event.values.clone();
    values.sort_unstable();
    hasher.update(&(values.len() as u64).to_le_bytes());
    for (key, value) in values {
        text(&mut hasher, key);
        hasher.update(&value.to_le_bytes());
    }
    text(&mut hasher, event.reservation_id);
    hasher.digest128()
}

/// What a transaction id seen before means now: None if unseen or out of the window.
pub fn prior(seen: Option<&Seen>, received_ms: i64, window_ms: i64) -> Option<u128> {
    seen.filter(|s| received_ms.saturating_sub(s.at_ms) < window_ms).map(|s| s.digest)
}
