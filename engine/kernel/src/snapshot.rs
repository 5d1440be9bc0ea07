//! The kernel's own state encoding: postcard over plain, sorted structures, so the same state
//! always encodes to the same bytes (snapshot -> restore -> snapshot is the identity).

use serde::{Deserialize, Serialize};

use crate::buckets::{Aggregate, AggregateKey, BucketKey, VersionUsage};
use crate::credits::AccountCredits;
use crate::dedupe::{key, Seen};
use crate::draw::Grant;
use crate::money::Picos;
use crate::rerate::Adjustment;

/// Format version: bump when the encoding changes. Format 1 (dedupe entries by transaction id
/// per account), format 2 (no adjustment entries, reservations, top-ups, breakage or clock) and format 3
/// (dedupe entries as postcard varints) are still read.
pub const FORMAT: u32 = 4;

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
    /// Since format 3: reservations, top-up policy and purchases, breakage.
    pub credits: Option<AccountCredits>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct Stored {
    pub format: u32,
    pub strings: Vec<String>,
    pub accounts: Vec<StoredAccount>,
    /// Keyed by `dedupe::key(customer_id, transaction_id)`, sorted by key. Since format 4 one byte string
    /// of fixed-width entries (`dedupe_entries`): a window of 10 M ids took seconds to restore as varints.
    #[serde(with = "dedupe_entries")]
    pub dedupe: Vec<(u128, Seen)>,
    /// The latest AdvanceClock's time (since format 3).
    pub clock_ms: i64,
}

/// Dedupe entries as one byte string, each ENTRY_BYTES wide: key, digest (little-endian u128) and
/// acceptance time (little-endian i64). Fixed width, so decoding is a walk over the bytes, with no
/// per-field varint.
pub mod dedupe_entries {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    use crate::dedupe::Seen;

    pub const ENTRY_BYTES: usize = 40;

    pub fn write(bytes: &mut Vec<u8>, (key, seen): (u128, Seen)) {
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&seen.digest.to_le_bytes());
        bytes.extend_from_slice(&seen.at_ms.to_le_bytes());
    }

    /// The entries a byte string holds, read as they are walked.
    pub fn read(bytes: &[u8]) -> Result<impl ExactSizeIterator<Item = (u128, Seen)> + Clone + '_, String> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(format!("{} bytes of dedupe entries, not a multiple of {ENTRY_BYTES}", bytes.len()));
        }
        let u128_at = |entry: &[u8], at: usize| u128::from_le_bytes(entry[at..at + 16].try_into().expect("16 bytes"));
        Ok(bytes.chunks_exact(ENTRY_BYTES).map(move |entry| {
            let at_ms = i64::from_le_bytes(entry[32..40].try_into().expect("8 bytes"));
            (u128_at(entry, 0), Seen { digest: u128_at(entry, 16), at_ms })
        }))
    }

    pub fn serialize<S: Serializer>(entries: &[(u128, Seen)], serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY_BYTES);
        for entry in entries {
            write(&mut bytes, *entry);
        }
        serializer.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(u128, Seen)>, D::Error> {
        deserializer.deserialize_bytes(EntriesVisitor)
    }

    struct EntriesVisitor;

    impl Visitor<'_> for EntriesVisitor {
        type Value = Vec<(u128, Seen)>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "dedupe entries of {ENTRY_BYTES} bytes each")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
            Ok(read(bytes).map_err(E::custom)?.collect())
        }
    }
}

/// Format 3: as format 4 with the dedupe entries as a postcard sequence of varints.
#[derive(Deserialize)]
struct StoredV3 {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccount>,
    dedupe: Vec<(u128, Seen)>,
    clock_ms: i64,
}

impl StoredV3 {
    fn upgrade(self) -> Stored {
        debug_assert_eq!(self.format, 3);
        let Self { strings, accounts, dedupe, clock_ms, .. } = self;
        Stored { format: FORMAT, strings, accounts, dedupe, clock_ms }
    }
}

/// Format 2: as format 3 without adjustment entries, credits and clock.
#[derive(Deserialize)]
struct StoredV2 {
    format: u32,
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

impl StoredV2 {
    fn upgrade(self) -> Stored {
        debug_assert_eq!(self.format, 2);
        let accounts = (self.accounts.into_iter())
            .map(|a| StoredAccount {
                customer_id: a.customer_id,
                grants: a.grants,
                aggregates: a.aggregates,
                buckets: a.buckets,
                period_charges: a.period_charges,
                period_overage: a.period_overage,
                adjustments: Vec::new(),
                credits: None,
            })
            .collect();
        Stored { format: FORMAT, strings: self.strings, accounts, dedupe: self.dedupe, clock_ms: i64::MIN }
    }
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
                credits: None,
            });
        }
        dedupe.sort_unstable_by_key(|(k, _)| *k);
        Stored { format: FORMAT, strings: self.strings, accounts, dedupe, clock_ms: i64::MIN }
    }
}

/// Format 4 as the kernel restores it: the dedupe entries left in the snapshot's bytes (`dedupe_entries::read`).
#[derive(Deserialize)]
struct StoredBorrowing<'a> {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccount>,
    #[serde(borrow)]
    dedupe: &'a [u8],
    clock_ms: i64,
}

pub fn encode(stored: &Stored) -> Vec<u8> {
    let dedupe = stored.dedupe.iter().copied();
    encode_parts(stored.format, &stored.strings, &stored.accounts, stored.dedupe.len(), dedupe, stored.clock_ms)
}

/// `encode` of the `Stored` these parts make, the `count` dedupe entries (in key order) written from the
/// iterator straight into the output: the table's entries are not copied into a list, then a byte
/// string, then the output (at 10 M ids each copy is 400 MB or more).
pub fn encode_parts(
    format: u32,
    strings: &[String],
    accounts: &[StoredAccount],
    count: usize,
    dedupe: impl Iterator<Item = (u128, Seen)>,
    clock_ms: i64,
) -> Vec<u8> {
    let encodes = "plain structures always encode";
    // A postcard struct is its fields one after another; a byte string is its length (a varint, as
    // a u64's) then the bytes.
    let mut out = postcard::to_extend(&(format, strings, accounts), Vec::new()).expect(encodes);
    let entry_bytes = count * dedupe_entries::ENTRY_BYTES;
    out.reserve_exact(2 * 10 + entry_bytes);
    out = postcard::to_extend(&(entry_bytes as u64), out).expect(encodes);
    let start = out.len();
    dedupe.for_each(|entry| dedupe_entries::write(&mut out, entry));
    assert_eq!(out.len() - start, entry_bytes, "{count} dedupe entries");
    postcard::to_extend(&clock_ms, out).expect(encodes)
}

/// `decode` for a restore: the format-4 dedupe entries are left in `bytes`, for the caller to read
/// straight into its table (`dedupe_entries::read`); other formats' are in the `Stored`.
pub fn decode_borrowing(bytes: &[u8]) -> Result<(Stored, Option<&[u8]>), String> {
    let broken = |e: postcard::Error| format!("the kernel snapshot does not decode: {e}");
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
    if format != FORMAT {
        return decode(bytes).map(|stored| (stored, None));
    }
    let StoredBorrowing { format, strings, accounts, dedupe, clock_ms } =
        postcard::from_bytes(bytes).map_err(broken)?;
    Ok((Stored { format, strings, accounts, dedupe: Vec::new(), clock_ms }, Some(dedupe)))
}

pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let broken = |e: postcard::Error| format!("the kernel snapshot does not decode: {e}");
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
    match format {
        FORMAT => postcard::from_bytes(bytes).map_err(broken),
        3 => postcard::from_bytes::<StoredV3>(bytes).map_err(broken).map(StoredV3::upgrade),
        2 => postcard::from_bytes::<StoredV2>(bytes).map_err(broken).map(StoredV2::upgrade),
        1 => postcard::from_bytes::<StoredV1>(bytes).map_err(broken).map(|v1| {
            debug_assert_eq!(v1.format, 1);
            v1.upgrade()
        }),
        other => Err(format!("kernel snapshot format {other} is not {FORMAT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credits::TopUpPolicy;
    use serde::Serialize;

    /// Format 2's layout, written as the release before credits wrote it.
    #[derive(Serialize)]
    struct WrittenV2 {
        format: u32,
        strings: Vec<String>,
        accounts: Vec<WrittenAccountV2>,
        dedupe: Vec<(u128, Seen)>,
    }

    #[derive(Serialize)]
    struct WrittenAccountV2 {
        customer_id: String,
        grants: Vec<Grant>,
        aggregates: Vec<(AggregateKey, Aggregate)>,
        buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
        period_charges: Vec<(i64, Picos)>,
        period_overage: Vec<(i64, Picos)>,
    }

    fn grant() -> Grant {
        Grant {
            id: "g".into(),
            amount: 100,
            remaining: 40,
            priority: 0,
            applicable: vec![],
            starts_at_ms: 0,
            expires_at_ms: Some(5),
            creation_order: 0,
        }
    }

    #[test]
    fn a_format_2_snapshot_reads_as_the_current_format_without_credits() {
        let account = WrittenAccountV2 {
            customer_id: "acme".into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: vec![(0, 60)],
            period_overage: vec![(0, 0)],
        };
        let seen = Seen { digest: 7, at_ms: 3 };
        let written =
            WrittenV2 { format: 2, strings: vec!["p".into()], accounts: vec![account], dedupe: vec![(9, seen)] };
        let stored = decode(&postcard::to_allocvec(&written).unwrap()).expect("format 2 reads");
        assert_eq!(stored.format, FORMAT);
        assert_eq!(stored.accounts[0].grants, vec![grant()]);
        assert_eq!(stored.accounts[0].credits, None);
        assert!(stored.accounts[0].adjustments.is_empty());
        assert_eq!(stored.accounts[0].period_charges, vec![(0, 60)]);
        assert_eq!(stored.dedupe, vec![(9, seen)]);
        assert_eq!(stored.clock_ms, i64::MIN);
    }

    #[test]
    fn format_4_round_trips_credits_and_the_clock() {
        let policy = TopUpPolicy { threshold: 1, recharge_to: 2, price_per_credit_e18: 3, max_per_period: 4 };
        let credits = AccountCredits { top_up: Some(policy), ..AccountCredits::default() };
        let account = StoredAccount {
            customer_id: "acme".into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: vec![],
            period_overage: vec![],
            adjustments: vec![],
            credits: Some(credits),
        };
        let stored = Stored { format: FORMAT, strings: vec![], accounts: vec![account], dedupe: vec![], clock_ms: 42 };
        assert_eq!(decode(&encode(&stored)).expect("format 4 reads"), stored);
    }

    /// Format 3's layout: as format 4, the dedupe entries a postcard sequence.
    #[derive(Serialize)]
    struct WrittenV3 {
        format: u32,
        strings: Vec<String>,
        accounts: Vec<StoredAccount>,
        dedupe: Vec<(u128, Seen)>,
        clock_ms: i64,
    }

    fn extreme_entries() -> Vec<(u128, Seen)> {
        vec![
            (0, Seen { digest: u128::MAX, at_ms: i64::MIN }),
            (7, Seen { digest: 0, at_ms: -1 }),
            (u128::MAX, Seen { digest: 1 << 127, at_ms: i64::MAX }),
        ]
    }

    #[test]
    fn a_format_3_snapshot_reads_as_format_4_with_the_same_dedupe_entries() {
        let written = WrittenV3 {
            format: 3,
            strings: vec!["p".into()],
            accounts: vec![],
            dedupe: extreme_entries(),
            clock_ms: 9,
        };
        let stored = decode(&postcard::to_allocvec(&written).unwrap()).expect("format 3 reads");
        assert_eq!(stored.format, FORMAT);
        assert_eq!((stored.dedupe, stored.clock_ms, stored.strings), (extreme_entries(), 9, vec!["p".to_string()]));
    }

    #[test]
    fn format_4_keeps_dedupe_entries_exactly_in_fixed_width_bytes() {
        let stored =
            Stored { format: FORMAT, strings: vec![], accounts: vec![], dedupe: extreme_entries(), clock_ms: 0 };
        let bytes = encode(&stored);
        assert_eq!(decode(&bytes).expect("format 4 reads"), stored);
        let empty = encode(&Stored { dedupe: vec![], ..stored });
        assert_eq!(
            bytes.len() - empty.len(),
            3 * dedupe_entries::ENTRY_BYTES,
            "fixed width, plus no length growth here"
        );
    }

    #[test]
    fn encoding_from_parts_gives_serdes_bytes_and_a_borrowing_decode_the_same_entries() {
        let credits = AccountCredits::default();
        let account = StoredAccount {
            customer_id: "acme".into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: vec![(0, 60)],
            period_overage: vec![(0, 1)],
            adjustments: vec![],
            credits: Some(credits),
        };
        let stored = Stored {
            format: FORMAT,
            strings: vec!["p".into(), "q".into()],
            accounts: vec![account],
            dedupe: extreme_entries(),
            clock_ms: -3,
        };
        let bytes = encode(&stored);
        assert_eq!(bytes, postcard::to_allocvec(&stored).unwrap(), "the derived encoding, byte for byte");
        let (head, entries) = decode_borrowing(&bytes).expect("format 4 reads");
        let entries: Vec<(u128, Seen)> = dedupe_entries::read(entries.expect("format 4")).unwrap().collect();
        assert_eq!(Stored { dedupe: entries, ..head }, stored);
        // Another format's entries come decoded.
        let v3 = WrittenV3 { format: 3, strings: vec![], accounts: vec![], dedupe: extreme_entries(), clock_ms: 9 };
        let v3 = postcard::to_allocvec(&v3).unwrap();
        let (v3, none) = decode_borrowing(&v3).expect("format 3 reads");
        assert_eq!((v3.dedupe, none), (extreme_entries(), None));
    }

    #[test]
    fn dedupe_bytes_not_a_whole_number_of_entries_are_refused() {
        let stored =
            Stored { format: FORMAT, strings: vec![], accounts: vec![], dedupe: extreme_entries(), clock_ms: 0 };
        let mut bytes = encode(&stored);
        // The blob's length prefix is the byte before its first entry: one byte short of three entries.
        let at = bytes.len() - 3 * dedupe_entries::ENTRY_BYTES - 1 - 1;
        assert_eq!(bytes[at] as usize, 3 * dedupe_entries::ENTRY_BYTES);
        bytes[at] -= 1;
        bytes.remove(at + 1);
        // postcard keeps no message of a custom error: the refusal says only that the snapshot does not decode.
        assert!(decode(&bytes).unwrap_err().contains("does not decode"));
        bytes[at] += 1;
        bytes.insert(at + 1, 0);
        assert_eq!(decode(&bytes).expect("whole entries again").dedupe.len(), 3);
    }
}
