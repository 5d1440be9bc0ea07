//! The kernel's own state encoding: postcard over plain, sorted structures, so the same state
//! always encodes to the same bytes (snapshot -> restore -> snapshot is the identity).

use serde::{Deserialize, Serialize};

use crate::buckets::{Aggregate, AggregateKey, BucketKey, VersionUsage};
use crate::dedupe::{key, Seen};
use crate::draw::Grant;
use crate::money::Picos;
use crate::rerate::Adjustment;

/// Format version: bump when the encoding changes. Format 1 (dedupe entries by transaction id
/// per account) and format 2 (no adjustment entries) are still read.
pub const FORMAT: u32 = 3;

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct StoredAccount {
    pub customer_id: String,
    pub grants: Vec<Grant>,
    pub aggregates: Vec<(AggregateKey, Aggregate)>,
    pub buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
    pub period_charges: Vec<(i64, Picos)>,
    pub period_overage: Vec<(i64, Picos)>,
    /// Since format 3: re-ratings' adjustment entries, oldest first.
    pub adjustments: Vec<Adjustment>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct Stored {
    pub format: u32,
    pub strings: Vec<String>,
    pub accounts: Vec<StoredAccount>,
    /// Keyed by `dedupe::key(customer_id, transaction_id)`, sorted by key.
    pub dedupe: Vec<(u128, Seen)>,
}

/// Format 1: the dedupe entries per account, by transaction id.
#[derive(Deserialize)]
struct StoredV1 {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccountV1>,
}

#[derive(Deserialize)]
struct StoredAccountV1 {
    customer_id: String,
    grants: Vec<Grant>,
    aggregates: Vec<(AggregateKey, Aggregate)>,
    buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
    period_charges: Vec<(i64, Picos)>,
    period_overage: Vec<(i64, Picos)>,
    dedupe: Vec<(String, Seen)>,
}

impl StoredV1 {
    fn upgrade(self) -> Stored {
        let mut canonical = Vec::new();
        let mut dedupe = Vec::new();
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for account in self.accounts {
            for (transaction_id, seen) in account.dedupe {
                dedupe.push((key(&account.customer_id, &transaction_id, &mut canonical), seen));
            }
            accounts.push(StoredAccount {
                customer_id: account.customer_id,
                grants: account.grants,
                aggregates: account.aggregates,
                buckets: account.buckets,
                period_charges: account.period_charges,
                period_overage: account.period_overage,
                adjustments: Vec::new(),
            });
        }
        dedupe.sort_unstable_by_key(|(k, _)| *k);
        Stored { format: FORMAT, strings: self.strings, accounts, dedupe }
    }
}

/// Format 2: accounts without adjustment entries.
#[derive(Deserialize)]
struct StoredV2 {
    strings: Vec<String>,
    accounts: Vec<StoredAccountV2>,
    dedupe: Vec<(u128, Seen)>,
}

#[derive(Deserialize)]
struct StoredAccountV2 {
    customer_id: String,
    grants: Vec<Grant>,
    aggregates: Vec<(AggregateKey, Aggregate)>,
    buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
    period_charges: Vec<(i64, Picos)>,
    period_overage: Vec<(i64, Picos)>,
}

fn upgrade_v2(format: u32, v2: StoredV2) -> Stored {
    debug_assert_eq!(format, 2);
    let accounts = (v2.accounts.into_iter())
        .map(|a| StoredAccount {
            customer_id: a.customer_id,
            grants: a.grants,
            aggregates: a.aggregates,
            buckets: a.buckets,
            period_charges: a.period_charges,
            period_overage: a.period_overage,
            adjustments: Vec::new(),
        })
        .collect();
    Stored { format: FORMAT, strings: v2.strings, accounts, dedupe: v2.dedupe }
}

pub fn encode(stored: &Stored) -> Vec<u8> {
    postcard::to_allocvec(stored).expect("plain structures always encode")
}

pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let broken = |e: postcard::Error| format!("the kernel snapshot does not decode: {e}");
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
    match format {
        FORMAT => postcard::from_bytes(bytes).map_err(broken),
        2 => postcard::from_bytes::<(u32, StoredV2)>(bytes).map_err(broken).map(|(f, v2)| upgrade_v2(f, v2)),
        1 => postcard::from_bytes::<StoredV1>(bytes).map_err(broken).map(|v1| {
            debug_assert_eq!(v1.format, 1);
            v1.upgrade()
        }),
        other => Err(format!("kernel snapshot format {other} is not {FORMAT}")),
    }
}
