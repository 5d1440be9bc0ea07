//! The kernel's own state encoding: postcard over plain, sorted structures, so the same state
//! always encodes to the same bytes (snapshot -> restore -> snapshot is the identity).

use serde::{Deserialize, Serialize};

use crate::buckets::{Aggregate, AggregateKey, BucketKey, VersionUsage};
use crate::dedupe::Seen;
use crate::draw::Grant;
use crate::money::Picos;

/// Format version: bump when the encoding changes.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct StoredAccount {
    pub customer_id: String,
    pub grants: Vec<Grant>,
    pub aggregates: Vec<(AggregateKey, Aggregate)>,
    pub buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
    pub period_charges: Vec<(i64, Picos)>,
    pub period_overage: Vec<(i64, Picos)>,
    pub dedupe: Vec<(String, Seen)>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct Stored {
    pub format: u32,
    pub strings: Vec<String>,
    pub accounts: Vec<StoredAccount>,
}

pub fn encode(stored: &Stored) -> Vec<u8> {
    postcard::to_allocvec(stored).expect("plain structures always encode")
}

pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let stored: Stored =
        postcard::from_bytes(bytes).map_err(|e| format!("the kernel snapshot does not decode: {e}"))?;
    if stored.format != FORMAT {
        return Err(format!("kernel snapshot format {} is not {FORMAT}", stored.format));
    }
    Ok(stored)
}
