//! The kernel's own state encoding: postcard over plain, sorted structures, so the same state
//! always encodes to the same bytes (snapshot -> restore -> snapshot is the identity).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::buckets::{Aggregate, AggregateKey, BucketKey, VersionUsage};
use crate::credits::{AccountCredits, Breakage, Ended, Ending, HoldReason, Purchase, Reservation, Rolled, TopUpPolicy};
use crate::dedupe::{key, Seen};
use crate::draw::Grant;
use crate::money::Picos;
use crate::rerate::Adjustment;

/// Format version: bump when the encoding changes. Format 1 (dedupe entries by transaction id
/// per account), format 2 (no adjustment entries, reservations, top-ups, breakage or clock), format 3
/// (dedupe entries as postcard varints), format 4 (no `dedupe_in_segments`), format 5 (reservations
/// without the reason they were allowed for) and format 6 (top-up purchases without their period's
/// charges when bought) are still read.
pub const FORMAT: u32 = 7;

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

/// `StoredAccount` borrowing the kernel's account instead of copying it, for encoding a snapshot: the same fields
/// in the same order, each serialized as its owned form is (a slice or a SmallVec as a sequence, a reference as
/// its value), so the bytes are `StoredAccount`'s (`check_owned_form` compares them).
#[derive(Serialize)]
pub struct StoredAccountRef<'a> {
    pub customer_id: &'a str,
    pub grants: &'a [Grant],
    pub aggregates: Vec<(KeyRef<'a>, &'a Aggregate)>,
    pub buckets: Vec<(KeyRef<'a>, &'a [VersionUsage])>,
    pub period_charges: Vec<(i64, Picos)>,
    pub period_overage: Vec<(i64, Picos)>,
    pub adjustments: &'a [Adjustment],
    pub credits: Option<&'a AccountCredits>,
}

/// `AggregateKey` or `BucketKey` (the same fields: a time, the product, the dimensions), borrowing the dimensions;
/// ordered as they are.
#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyRef<'a> {
    pub at_ms: i64,
    pub product: crate::route::Sym,
    pub dimensions: &'a [crate::route::Sym],
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
    /// Since format 5: the dedupe table is not in `dedupe` (empty) but in segments stored beside the snapshot
    /// (`segment`), so a snapshot costs the changes since the previous one, not the whole window. Restoring
    /// such a snapshot without its segments is refused: an empty table would accept every resend as new.
    pub dedupe_in_segments: bool,
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

    pub fn write(bytes: &mut Vec<u8>, entry: (u128, Seen)) {
        bytes.extend_from_slice(&encoded(entry));
    }

    /// One entry's bytes.
    pub fn encoded((key, seen): (u128, Seen)) -> [u8; ENTRY_BYTES] {
        let mut bytes = [0u8; ENTRY_BYTES];
        bytes[..16].copy_from_slice(&key.to_le_bytes());
        bytes[16..32].copy_from_slice(&seen.digest.to_le_bytes());
        bytes[32..].copy_from_slice(&seen.at_ms.to_le_bytes());
        bytes
    }

    /// The entry in the first ENTRY_BYTES of `entry`.
    pub fn entry(entry: &[u8]) -> (u128, Seen) {
        let u128_at = |at: usize| u128::from_le_bytes(entry[at..at + 16].try_into().expect("16 bytes"));
        let at_ms = i64::from_le_bytes(entry[32..40].try_into().expect("8 bytes"));
        (u128_at(0), Seen { digest: u128_at(16), at_ms })
    }

    /// The entries a byte string holds, read as they are walked.
    pub fn read(bytes: &[u8]) -> Result<impl ExactSizeIterator<Item = (u128, Seen)> + Clone + '_, String> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(format!("{} bytes of dedupe entries, not a multiple of {ENTRY_BYTES}", bytes.len()));
        }
        Ok(bytes.chunks_exact(ENTRY_BYTES).map(entry))
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

/// Formats 5 and 6: as format 7 with accounts of their format's shape (`StoredAccountV5`, `StoredAccountV6`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredOf<A> {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<A>,
    #[serde(with = "dedupe_entries")]
    dedupe: Vec<(u128, Seen)>,
    clock_ms: i64,
    dedupe_in_segments: bool,
}

type StoredV6 = StoredOf<StoredAccountV6>;
type StoredV5 = StoredOf<StoredAccountV5>;

impl<A> StoredOf<A> {
    fn upgrade(self, format: u32, upgrade: impl Fn(A) -> StoredAccount) -> Stored {
        debug_assert_eq!(self.format, format);
        let Self { strings, accounts, dedupe, clock_ms, dedupe_in_segments, .. } = self;
        let accounts = accounts.into_iter().map(upgrade).collect();
        Stored { format: FORMAT, strings, accounts, dedupe, clock_ms, dedupe_in_segments }
    }
}

/// An account of formats 3 to 6, with the credits of its format (`C`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredAccountOf<C> {
    customer_id: String,
    grants: Vec<Grant>,
    aggregates: Vec<(AggregateKey, Aggregate)>,
    buckets: Vec<(BucketKey, Vec<VersionUsage>)>,
    period_charges: Vec<(i64, Picos)>,
    period_overage: Vec<(i64, Picos)>,
    adjustments: Vec<Adjustment>,
    credits: Option<C>,
}

/// An account of format 6: its top-up purchases without their period's charges when bought.
type StoredAccountV6 = StoredAccountOf<AccountCreditsV6>;
/// An account of formats 3 to 5: also its reservations (open and ended) without the reason they were allowed for.
type StoredAccountV5 = StoredAccountOf<AccountCreditsV5>;

impl<C> StoredAccountOf<C> {
    fn upgrade(self, credits: impl FnOnce(C) -> AccountCredits) -> StoredAccount {
        StoredAccount {
            customer_id: self.customer_id,
            grants: self.grants,
            aggregates: self.aggregates,
            buckets: self.buckets,
            period_charges: self.period_charges,
            period_overage: self.period_overage,
            adjustments: self.adjustments,
            credits: self.credits.map(credits),
        }
    }
}

/// `AccountCredits` of formats 3 to 6, with open and ended holds of their format (`R`, `E`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct AccountCreditsOf<R, E> {
    open: BTreeMap<Box<str>, R>,
    ended: BTreeMap<Box<str>, E>,
    top_up: Option<TopUpPolicy>,
    purchases: Vec<PurchaseV6>,
    breakage: Vec<Breakage>,
    rollover: BTreeMap<Box<str>, i128>,
    rolled: Vec<Rolled>,
}

type AccountCreditsV6 = AccountCreditsOf<Reservation, Ended>;
type AccountCreditsV5 = AccountCreditsOf<ReservationV5, EndedV5>;

impl<R, E> AccountCreditsOf<R, E> {
    fn upgrade(self, open: impl Fn(R) -> Reservation, ended: impl Fn(E) -> Ended) -> AccountCredits {
        AccountCredits {
            open: self.open.into_iter().map(|(id, r)| (id, open(r))).collect(),
            ended: self.ended.into_iter().map(|(id, e)| (id, ended(e))).collect(),
            top_up: self.top_up,
            purchases: self.purchases.into_iter().map(PurchaseV6::upgrade).collect(),
            breakage: self.breakage,
            rollover: self.rollover,
            rolled: self.rolled,
        }
    }
}

/// `Purchase` of formats 3 to 6: restored without its period's charges when bought (None), so a
/// re-rating treats it as it did then.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct PurchaseV6 {
    period_start_ms: i64,
    grant_id: Box<str>,
    credits: Picos,
    price_per_credit_e18: i128,
    cost_e30: i128,
    at_ms: i64,
}

impl PurchaseV6 {
    fn upgrade(self) -> Purchase {
        let Self { period_start_ms, grant_id, credits, price_per_credit_e18, cost_e30, at_ms } = self;
        let period_charges_when_bought = None;
        Purchase {
            period_start_ms,
            grant_id,
            credits,
            price_per_credit_e18,
            cost_e30,
            at_ms,
            period_charges_when_bought,
        }
    }
}

/// A format-6 account as format 7 holds it.
fn upgrade_v6(account: StoredAccountV6) -> StoredAccount {
    account.upgrade(|credits| credits.upgrade(|r| r, |e| e))
}

/// A format-3-to-5 account as format 7 holds it: its holds' reason `HoldReason::Ok`, what their retries answered then.
fn upgrade_v5(account: StoredAccountV5) -> StoredAccount {
    let reason = HoldReason::Ok;
    account.upgrade(|credits| {
        credits.upgrade(
            |ReservationV5 { digest, amount, held, made_at_ms, expires_at_ms }| Reservation {
                digest,
                amount,
                held,
                made_at_ms,
                expires_at_ms,
                reason,
            },
            |EndedV5 { ending, digest, amount, released, at_ms }| Ended {
                ending,
                digest,
                amount,
                released,
                at_ms,
                reason,
            },
        )
    })
}

fn upgrade_accounts(accounts: Vec<StoredAccountV5>) -> Vec<StoredAccount> {
    accounts.into_iter().map(upgrade_v5).collect()
}

/// `Reservation` of formats 3 to 5: restored with `HoldReason::Ok`, what its retry answered then.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ReservationV5 {
    digest: u64,
    amount: Picos,
    held: Vec<(u32, Picos)>,
    made_at_ms: i64,
    expires_at_ms: i64,
}

/// `Ended` of formats 3 to 5 (its reason `HoldReason::Ok`, as `ReservationV5`'s).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EndedV5 {
    ending: Ending,
    digest: u64,
    amount: Picos,
    released: Picos,
    at_ms: i64,
}

/// Format 4: as format 5 without `dedupe_in_segments` (the table always in `dedupe`).
#[derive(Deserialize)]
struct StoredV4 {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccountV5>,
    #[serde(with = "dedupe_entries")]
    dedupe: Vec<(u128, Seen)>,
    clock_ms: i64,
}

impl StoredV4 {
    fn upgrade(self) -> Stored {
        debug_assert_eq!(self.format, 4);
        let Self { strings, accounts, dedupe, clock_ms, .. } = self;
        let accounts = upgrade_accounts(accounts);
        Stored { format: FORMAT, strings, accounts, dedupe, clock_ms, dedupe_in_segments: false }
    }
}

/// Format 3: as format 4 with the dedupe entries as a postcard sequence of varints.
#[derive(Deserialize)]
struct StoredV3 {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccountV5>,
    dedupe: Vec<(u128, Seen)>,
    clock_ms: i64,
}

impl StoredV3 {
    /// As the format-4 snapshot of the same state upgrades: the two differ only in how the dedupe entries are written.
    fn upgrade(self) -> Stored {
        debug_assert_eq!(self.format, 3);
        let Self { strings, accounts, dedupe, clock_ms, .. } = self;
        StoredV4 { format: 4, strings, accounts, dedupe, clock_ms }.upgrade()
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

impl StoredAccountV2 {
    /// As format 7 holds it: no adjustment entries, no credits.
    fn upgrade(self) -> StoredAccount {
        let Self { customer_id, grants, aggregates, buckets, period_charges, period_overage } = self;
        let (adjustments, credits) = (Vec::new(), None);
        StoredAccount { customer_id, grants, aggregates, buckets, period_charges, period_overage, adjustments, credits }
    }
}

impl StoredV2 {
    fn upgrade(self) -> Stored {
        debug_assert_eq!(self.format, 2);
        let accounts = self.accounts.into_iter().map(StoredAccountV2::upgrade).collect();
        let dedupe = self.dedupe;
        Stored {
            format: FORMAT,
            strings: self.strings,
            accounts,
            dedupe,
            clock_ms: i64::MIN,
            dedupe_in_segments: false,
        }
    }
}

/// Format 1: the dedupe entries per account, by transaction id. (Serialize only for the test that writes one.)
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredV1 {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccountV1>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
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
            let StoredAccountV1 {
                customer_id,
                grants,
                aggregates,
                buckets,
                period_charges,
                period_overage,
                dedupe: seen,
            } = account;
            for (transaction_id, seen) in seen {
                dedupe.push((key(&customer_id, &transaction_id, &mut canonical), seen));
            }
            accounts.push(StoredAccountV2 { customer_id, grants, aggregates, buckets, period_charges, period_overage });
        }
        dedupe.sort_unstable_by_key(|(k, _)| *k);
        // Format 2 is format 1 with the dedupe entries in one table, by key.
        StoredV2 { format: 2, strings: self.strings, accounts, dedupe }.upgrade()
    }
}

/// Formats 5 to 7 as the kernel restores them, with accounts of their format's shape: the dedupe entries left in
/// the snapshot's bytes (`dedupe_entries::read`).
#[derive(Deserialize)]
struct StoredBorrowing<'a, A> {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<A>,
    #[serde(borrow)]
    dedupe: &'a [u8],
    clock_ms: i64,
    dedupe_in_segments: bool,
}

/// Format 4 as the kernel restores it (`StoredBorrowing` of format 5 without `dedupe_in_segments`).
#[derive(Deserialize)]
struct StoredBorrowingV4<'a> {
    format: u32,
    strings: Vec<String>,
    accounts: Vec<StoredAccountV5>,
    #[serde(borrow)]
    dedupe: &'a [u8],
    clock_ms: i64,
}

pub fn encode(stored: &Stored) -> Vec<u8> {
    let dedupe = stored.dedupe.iter().copied();
    let Stored { format, strings, accounts, clock_ms, dedupe_in_segments, .. } = stored;
    let tail = Tail { clock_ms: *clock_ms, dedupe_in_segments: *dedupe_in_segments };
    encode_parts(*format, strings, accounts, stored.dedupe.len(), dedupe, tail)
}

/// The fields after the dedupe entries.
#[derive(Clone, Copy, Debug)]
pub struct Tail {
    pub clock_ms: i64,
    pub dedupe_in_segments: bool,
}

/// `encode` of the `Stored` these parts make, the `count` dedupe entries (in key order) written from the
/// iterator straight into the output: the table's entries are not copied into a list, then a byte
/// string, then the output (at 10 M ids each copy is 400 MB or more).
pub fn encode_parts<A: Serialize>(
    format: u32,
    strings: &[String],
    accounts: &[A],
    count: usize,
    dedupe: impl Iterator<Item = (u128, Seen)>,
    tail: Tail,
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
    postcard::to_extend(&(tail.clock_ms, tail.dedupe_in_segments), out).expect(encodes)
}

/// `decode` for a restore: the format-4 to -7 dedupe entries are left in `bytes`, for the caller to read
/// straight into its table (`dedupe_entries::read`); other formats' are in the `Stored`.
pub fn decode_borrowing(bytes: &[u8]) -> Result<(Stored, Option<&[u8]>), String> {
    let broken = |e: postcard::Error| format!("the kernel snapshot does not decode: {e}");
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
    let (strings, accounts, dedupe, clock_ms, dedupe_in_segments) = match format {
        FORMAT => {
            let StoredBorrowing::<StoredAccount> { format, strings, accounts, dedupe, clock_ms, dedupe_in_segments } =
                postcard::from_bytes(bytes).map_err(broken)?;
            debug_assert_eq!(format, FORMAT);
            (strings, accounts, dedupe, clock_ms, dedupe_in_segments)
        }
        6 => {
            let StoredBorrowing::<StoredAccountV6> { format, strings, accounts, dedupe, clock_ms, dedupe_in_segments } =
                postcard::from_bytes(bytes).map_err(broken)?;
            debug_assert_eq!(format, 6);
            (strings, accounts.into_iter().map(upgrade_v6).collect(), dedupe, clock_ms, dedupe_in_segments)
        }
        5 => {
            let StoredBorrowing::<StoredAccountV5> { format, strings, accounts, dedupe, clock_ms, dedupe_in_segments } =
                postcard::from_bytes(bytes).map_err(broken)?;
            debug_assert_eq!(format, 5);
            (strings, upgrade_accounts(accounts), dedupe, clock_ms, dedupe_in_segments)
        }
        4 => {
            let StoredBorrowingV4 { format, strings, accounts, dedupe, clock_ms } =
                postcard::from_bytes(bytes).map_err(broken)?;
            debug_assert_eq!(format, 4);
            (strings, upgrade_accounts(accounts), dedupe, clock_ms, false)
        }
        _ => return decode(bytes).map(|stored| (stored, None)),
    };
    let stored = Stored { format: FORMAT, strings, accounts, dedupe: Vec::new(), clock_ms, dedupe_in_segments };
    Ok((stored, Some(dedupe)))
}

pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let broken = |e: postcard::Error| format!("the kernel snapshot does not decode: {e}");
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
    match format {
        FORMAT => postcard::from_bytes(bytes).map_err(broken),
        6 => postcard::from_bytes::<StoredV6>(bytes).map_err(broken).map(|v6| v6.upgrade(6, upgrade_v6)),
        5 => postcard::from_bytes::<StoredV5>(bytes).map_err(broken).map(|v5| v5.upgrade(5, upgrade_v5)),
        4 => postcard::from_bytes::<StoredV4>(bytes).map_err(broken).map(StoredV4::upgrade),
        3 => postcard::from_bytes::<StoredV3>(bytes).map_err(broken).map(StoredV3::upgrade),
        2 => postcard::from_bytes::<StoredV2>(bytes).map_err(broken).map(StoredV2::upgrade),
        1 => postcard::from_bytes::<StoredV1>(bytes).map_err(broken).map(|v1| {
            debug_assert_eq!(v1.format, 1);
            v1.upgrade()
        }),
        other => Err(format!("kernel snapshot format {other} is not {FORMAT}")),
    }
}

/// Dedupe segments: the dedupe table of a snapshot whose `dedupe_in_segments` is set, as byte strings stored
/// beside it (server/journal.py keeps the files; the kernel only makes and reads bytes). A segment holds either
/// the whole table (a base) or the changes since the previous snapshot: the entries put (inserted or
/// overwritten) and the keys removed (pruned). The table is the segments merged in order, a later segment's
/// entry or removal of a key winning over an earlier one's; a removal in the oldest segment removes nothing.
///
/// Layout: postcard of (FORMAT, entries, removed): `entries` a byte string of `dedupe_entries::ENTRY_BYTES`-wide
/// entries sorted by key, `removed` a byte string of 16-byte keys (little-endian u128) sorted by key, no key in
/// both. Why removals are stored: a segment's entries stay in the files after the table prunes them, and a
/// restore that brought them back would hold a different table from the one snapshotted (and so different state
/// bytes after a replay); with removals the merged segments are exactly the table.
pub mod segment {
    use std::convert::Infallible;

    use crate::dedupe::{Change, Seen, Table};
    use crate::snapshot::dedupe_entries::{self, ENTRY_BYTES};

    pub const FORMAT: u32 = 1;
    const KEY_BYTES: usize = 16;

    /// The segment of a log of changes (`Table::take_changes`): each key's last change, in chunks of at most
    /// `chunk_bytes`. Sorts the log in place (by key, each key's changes in the order made).
    pub fn from_changes(changes: &mut [Change], chunk_bytes: usize) -> Vec<Vec<u8>> {
        collected(chunk_bytes, |out| write_changes(changes, out))
    }

    /// `from_changes`, each chunk handed to `out`'s sink as it is made (its bytes once sent, one chunk's
    /// memory for the whole segment); the segment's bytes, or the sink's error.
    pub fn write_changes<E, S: FnMut(&mut Vec<u8>) -> Result<(), E>>(
        changes: &mut [Change],
        out: &mut Chunks<S>,
    ) -> Result<usize, E> {
        // A stable sort: one key's changes stay in the order made, its last one last.
        changes.sort_by_key(|change| change.key);
        let last = |at: usize| changes.get(at + 1).is_none_or(|next| next.key != changes[at].key);
        let kept = || (0..changes.len()).filter(|&at| last(at)).map(|at| changes[at]);
        let puts = kept().filter(|change| change.held.is_some()).count();
        out.put_head(puts)?;
        for change in kept() {
            if let Some(held) = change.held {
                out.put_entry((change.key.into(), held.into()))?;
            }
        }
        out.put_length((kept().count() - puts) * KEY_BYTES)?;
        for change in kept().filter(|change| change.held.is_none()) {
            out.put(&u128::from(change.key).to_le_bytes())?;
        }
        out.finish()
    }

    /// The base segment of a whole table (its entries, no removals), in chunks of at most `chunk_bytes`.
    pub fn from_table(table: &Table, chunk_bytes: usize) -> Vec<Vec<u8>> {
        collected(chunk_bytes, |out| {
            out.put_head(table.len())?;
            for (key, held) in table.iter() {
                out.put_entry((key.into(), held.into()))?;
            }
            out.put_length(0)?;
            out.finish()
        })
    }

    /// The bytes of a base segment of a table of `entries` entries (`from_table`'s): what the server weighs the
    /// stored segments against, to merge them once they hold more than the table by some fraction.
    pub fn base_bytes(entries: usize) -> usize {
        let head = collected(32, |out| {
            out.put_head(entries)?;
            out.put_length(0)?;
            out.finish()
        });
        head.iter().map(Vec::len).sum::<usize>() + entries * ENTRY_BYTES
    }

    /// What `write` puts in chunks of at most `chunk_bytes`, each chunk a Vec of its own.
    fn collected(
        chunk_bytes: usize,
        write: impl FnOnce(&mut Chunks<&mut dyn FnMut(&mut Vec<u8>) -> Result<(), Infallible>>) -> Result<usize, Infallible>,
    ) -> Vec<Vec<u8>> {
        let mut parts = Vec::new();
        let mut keep = |part: &mut Vec<u8>| {
            parts.push(std::mem::take(part));
            Ok(())
        };
        let written = write(&mut Chunks::new(chunk_bytes, &mut keep));
        written.unwrap_or_else(|never| match never {});
        parts
    }

    /// A segment made in chunks of at most `max` bytes, each handed to `sink` once full (and the last at
    /// `finish`): the server writes each to the segment's file as it comes, so a segment (40 MB for a million
    /// changes, 400 MB for a base at 10,000,000 ids) is never in memory whole, and the one chunk's room is
    /// reused. The sink may take the chunk's Vec (`from_changes` keeps each) or leave it to be cleared.
    pub struct Chunks<S> {
        part: Vec<u8>,
        max: usize,
        written: usize,
        sink: S,
    }

    impl<E, S: FnMut(&mut Vec<u8>) -> Result<(), E>> Chunks<S> {
        pub fn new(max: usize, sink: S) -> Chunks<S> {
            assert!(max > 0, "chunks of at least a byte");
            Chunks { part: Vec::new(), max, written: 0, sink }
        }

        /// `bytes` as they are (the segment's own fields, or a base's parts already encoded), chunked anew.
        pub fn put(&mut self, mut bytes: &[u8]) -> Result<(), E> {
            while !bytes.is_empty() {
                if self.part.len() == self.max {
                    self.send()?;
                }
                if self.part.capacity() == 0 {
                    self.part.reserve_exact(self.max);
                }
                let (now, later) = bytes.split_at((self.max - self.part.len()).min(bytes.len()));
                self.part.extend_from_slice(now);
                bytes = later;
            }
            Ok(())
        }

        fn send(&mut self) -> Result<(), E> {
            self.written += self.part.len();
            (self.sink)(&mut self.part)?;
            self.part.clear();
            Ok(())
        }

        /// Sends the last chunk; the segment's bytes.
        pub fn finish(&mut self) -> Result<usize, E> {
            if !self.part.is_empty() {
                self.send()?;
            }
            Ok(self.written)
        }

        /// A byte string's length prefix (a postcard varint).
        fn put_length(&mut self, length: usize) -> Result<(), E> {
            let mut varint = [0u8; 10];
            let encoded = postcard::to_slice(&(length as u64), &mut varint).expect("a u64 takes at most 10 bytes");
            self.put(encoded)
        }

        /// The format and the length prefix of `entries` entries.
        fn put_head(&mut self, entries: usize) -> Result<(), E> {
            let mut format = [0u8; 5];
            self.put(postcard::to_slice(&FORMAT, &mut format).expect("a u32 takes at most 5 bytes"))?;
            self.put_length(entries * ENTRY_BYTES)
        }

        fn put_entry(&mut self, entry: (u128, Seen)) -> Result<(), E> {
            self.put(&dedupe_entries::encoded(entry))
        }
    }

    /// One segment's two sorted lists, left in its bytes.
    #[derive(Clone, Copy, Debug)]
    pub struct Layer<'a> {
        entries: &'a [u8],
        removed: &'a [u8],
    }

    /// A segment's lists, checked: its format, whole entries and keys, each list strictly in key order.
    pub fn read(bytes: &[u8]) -> Result<Layer<'_>, String> {
        let broken = |e: postcard::Error| format!("a dedupe segment does not decode: {e}");
        let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(broken)?;
        if format != FORMAT {
            return Err(format!("dedupe segment format {format} is not {FORMAT}"));
        }
        let (_, entries, removed): (u32, &[u8], &[u8]) = postcard::from_bytes(bytes).map_err(broken)?;
        if !removed.len().is_multiple_of(KEY_BYTES) {
            return Err(format!("{} bytes of removed dedupe keys, not a multiple of {KEY_BYTES}", removed.len()));
        }
        let keys = dedupe_entries::read(entries)?.map(|(key, _)| key);
        if !strictly_increasing(keys) || !strictly_increasing(removed.chunks_exact(KEY_BYTES).map(key_at)) {
            return Err("a dedupe segment's keys are not in order".into());
        }
        Ok(Layer { entries, removed })
    }

    fn strictly_increasing(mut keys: impl Iterator<Item = u128>) -> bool {
        let Some(mut previous) = keys.next() else { return true };
        keys.all(|key| std::mem::replace(&mut previous, key) < key)
    }

    fn key_at(bytes: &[u8]) -> u128 {
        u128::from_le_bytes(bytes[..KEY_BYTES].try_into().expect("16 bytes"))
    }

    /// One of a layer's lists being walked: the rest of it, its first key read once.
    #[derive(Clone)]
    struct Cursor<'a> {
        rest: &'a [u8],
        width: usize,
        layer: usize,
        key: u128,
    }

    impl<'a> Cursor<'a> {
        fn new(rest: &'a [u8], width: usize, layer: usize) -> Option<Cursor<'a>> {
            (!rest.is_empty()).then(|| Cursor { rest, width, layer, key: key_at(rest) })
        }

        /// Steps past its first entry; false once it is empty.
        fn advance(&mut self) -> bool {
            self.rest = &self.rest[self.width..];
            if self.rest.is_empty() {
                return false;
            }
            self.key = key_at(self.rest);
            true
        }
    }

    /// Segments merged in key order: each key once, as (key, its entry or None if removed) from the newest
    /// segment holding it. Few segments are merged (the server compacts them), so each step scans every list.
    #[derive(Clone)]
    pub struct Merged<'a> {
        cursors: Vec<Cursor<'a>>,
    }

    /// `layers` oldest first.
    pub fn merged<'a>(layers: &[Layer<'a>]) -> Merged<'a> {
        let lists = layers.iter().enumerate().flat_map(|(layer, l)| {
            [Cursor::new(l.entries, ENTRY_BYTES, layer), Cursor::new(l.removed, KEY_BYTES, layer)]
        });
        Merged { cursors: lists.flatten().collect() }
    }

    impl Iterator for Merged<'_> {
        type Item = (u128, Option<Seen>);

        fn next(&mut self) -> Option<(u128, Option<Seen>)> {
            let mut best: Option<(u128, usize)> = None;
            for (at, cursor) in self.cursors.iter().enumerate() {
                let here = cursor.key;
                if best.is_none_or(|(key, n)| here < key || (here == key && cursor.layer > self.cursors[n].layer)) {
                    best = Some((here, at));
                }
            }
            let (key, at) = best?;
            let winner = &self.cursors[at];
            let found = match winner.width {
                ENTRY_BYTES => Some(dedupe_entries::entry(&winner.rest[..ENTRY_BYTES]).1),
                _ => None,
            };
            self.cursors.retain_mut(|cursor| cursor.key != key || cursor.advance());
            Some((key, found))
        }
    }

    /// The entries of merged segments that are in the table (not removed), counted, for `Table::from_entries`.
    pub fn table_entries<'a>(layers: &[Layer<'a>]) -> impl ExactSizeIterator<Item = (u128, Seen)> + Clone + 'a {
        let live = merged(layers).filter_map(|(key, seen)| seen.map(|seen| (key, seen)));
        Counted { left: live.clone().count(), inner: live }
    }

    #[derive(Clone)]
    struct Counted<I> {
        inner: I,
        left: usize,
    }

    impl<I: Iterator> Iterator for Counted<I> {
        type Item = I::Item;

        fn next(&mut self) -> Option<I::Item> {
            let item = self.inner.next()?;
            self.left -= 1;
            Some(item)
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.left, Some(self.left))
        }
    }

    impl<I: Iterator> ExactSizeIterator for Counted<I> {}

    /// Segments (oldest first) merged into one, for compaction, in chunks of at most `chunk_bytes`. With `base`
    /// (the oldest segment is a base, or there is none older) removals are dropped, since they remove nothing any
    /// more; otherwise they are kept.
    pub fn merge(segments: &[&[u8]], base: bool, chunk_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        let layers = read_all(segments)?;
        Ok(collected(chunk_bytes, |out| write_merged(&layers, base, out)))
    }

    /// Each segment's lists, checked (`read`).
    pub fn read_all<'a>(segments: &[&'a [u8]]) -> Result<Vec<Layer<'a>>, String> {
        segments.iter().map(|bytes| read(bytes)).collect()
    }

    /// `merge` of segments already read, each chunk handed to `out`'s sink as it is made; the merged segment's
    /// bytes, or the sink's error.
    pub fn write_merged<E, S: FnMut(&mut Vec<u8>) -> Result<(), E>>(
        layers: &[Layer<'_>],
        base: bool,
        out: &mut Chunks<S>,
    ) -> Result<usize, E> {
        let puts = merged(layers).filter(|(_, seen)| seen.is_some()).count();
        out.put_head(puts)?;
        for (key, seen) in merged(layers) {
            if let Some(seen) = seen {
                out.put_entry((key, seen))?;
            }
        }
        let removals = || merged(layers).filter(|(_, seen)| seen.is_none());
        out.put_length(if base { 0 } else { removals().count() * KEY_BYTES })?;
        if !base {
            for (key, _) in removals() {
                out.put(&key.to_le_bytes())?;
            }
        }
        out.finish()
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

    /// Customer acme's stored account with one grant (`grant`), no usage, the period totals given and `credits`.
    fn acme_account(charges: &[(i64, Picos)], overage: &[(i64, Picos)], credits: AccountCredits) -> StoredAccount {
        StoredAccount {
            customer_id: "acme".into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: charges.to_vec(),
            period_overage: overage.to_vec(),
            adjustments: vec![],
            credits: Some(credits),
        }
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
            usable_before_ms: crate::draw::NEVER_MS,
            expiring_at_rollover_rolls: false,
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
    fn a_format_1_snapshot_reads_with_its_accounts_dedupe_entries_in_one_table_by_key() {
        let account = |customer_id: &str, charges: Picos, seen: Vec<(String, Seen)>| StoredAccountV1 {
            customer_id: customer_id.into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: vec![(0, charges)],
            period_overage: vec![(0, 1)],
            dedupe: seen,
        };
        let (a, b, c) = (Seen { digest: 1, at_ms: 10 }, Seen { digest: 2, at_ms: 20 }, Seen { digest: 3, at_ms: 30 });
        let accounts = vec![
            account("acme", 60, vec![("t1".into(), a), ("t2".into(), b)]),
            account("globex", 5, vec![("t1".into(), c)]),
        ];
        let written = StoredV1 { format: 1, strings: vec!["p".into()], accounts };
        let stored = decode(&postcard::to_allocvec(&written).unwrap()).expect("format 1 reads");
        let mut canonical = Vec::new();
        let mut dedupe = vec![
            (crate::dedupe::key("acme", "t1", &mut canonical), a),
            (crate::dedupe::key("acme", "t2", &mut canonical), b),
            (crate::dedupe::key("globex", "t1", &mut canonical), c),
        ];
        dedupe.sort_unstable_by_key(|(k, _)| *k);
        let stored_account = |customer_id: &str, charges: Picos| StoredAccount {
            customer_id: customer_id.into(),
            grants: vec![grant()],
            aggregates: vec![],
            buckets: vec![],
            period_charges: vec![(0, charges)],
            period_overage: vec![(0, 1)],
            adjustments: vec![],
            credits: None,
        };
        let expected = Stored {
            format: FORMAT,
            strings: vec!["p".into()],
            accounts: vec![stored_account("acme", 60), stored_account("globex", 5)],
            dedupe,
            clock_ms: i64::MIN,
            dedupe_in_segments: false,
        };
        assert_eq!(stored, expected);
    }

    /// A purchase as formats 3 to 6 wrote it: without its period's charges when bought.
    pub(super) fn as_format_6(purchase: Purchase) -> PurchaseV6 {
        let Purchase { period_start_ms, grant_id, credits, price_per_credit_e18, cost_e30, at_ms, .. } = purchase;
        PurchaseV6 { period_start_ms, grant_id, credits, price_per_credit_e18, cost_e30, at_ms }
    }

    /// The account as format 6 wrote it: its purchases without their period's charges when bought.
    fn as_format_6_account(account: StoredAccount) -> StoredAccountV6 {
        as_format_of(account, |r| r, |e| e)
    }

    /// The account as formats 3 to 6 wrote it, its holds as `open` and `ended` make them, its purchases without
    /// their period's charges when bought.
    pub(super) fn as_format_of<R, E>(
        account: StoredAccount,
        open: impl Fn(Reservation) -> R,
        ended: impl Fn(Ended) -> E,
    ) -> StoredAccountOf<AccountCreditsOf<R, E>> {
        let credits = account.credits.map(|c| AccountCreditsOf {
            open: c.open.into_iter().map(|(id, r)| (id, open(r))).collect(),
            ended: c.ended.into_iter().map(|(id, e)| (id, ended(e))).collect(),
            top_up: c.top_up,
            purchases: c.purchases.into_iter().map(as_format_6).collect(),
            breakage: c.breakage,
            rollover: c.rollover,
            rolled: c.rolled,
        });
        StoredAccountOf {
            customer_id: account.customer_id,
            grants: account.grants,
            aggregates: account.aggregates,
            buckets: account.buckets,
            period_charges: account.period_charges,
            period_overage: account.period_overage,
            adjustments: account.adjustments,
            credits,
        }
    }

    #[test]
    fn a_format_6_snapshot_restores_its_purchases_without_their_periods_charges_when_bought() {
        let purchase = Purchase {
            period_start_ms: 0,
            grant_id: "top-up-0-1".into(),
            credits: 4,
            price_per_credit_e18: 5,
            cost_e30: 20,
            at_ms: 7,
            period_charges_when_bought: Some(3),
        };
        let credits = AccountCredits { purchases: vec![purchase.clone()], ..AccountCredits::default() };
        let account = || acme_account(&[(0, 3)], &[(0, 3)], credits.clone());
        let current = Stored {
            format: FORMAT,
            strings: vec![],
            accounts: vec![account()],
            dedupe: extreme_entries(),
            clock_ms: 9,
            dedupe_in_segments: false,
        };
        assert_eq!(decode(&encode(&current)).expect("format 7 reads"), current, "kept when stored since format 7");
        let accounts = vec![as_format_6_account(account())];
        let written = StoredV6 {
            format: 6,
            strings: vec![],
            accounts,
            dedupe: extreme_entries(),
            clock_ms: 9,
            dedupe_in_segments: false,
        };
        let bytes = postcard::to_allocvec(&written).expect("encodes");
        let unrecorded = Purchase { period_charges_when_bought: None, ..purchase };
        for (stored, entries) in [(decode(&bytes).expect("format 6 reads"), None), {
            let (head, entries) = decode_borrowing(&bytes).expect("format 6 reads");
            (head, Some(dedupe_entries::read(entries.expect("format 6")).unwrap().collect::<Vec<_>>()))
        }] {
            assert_eq!(stored.format, FORMAT);
            let credits = stored.accounts[0].credits.as_ref().expect("credits");
            assert_eq!(credits.purchases, vec![unrecorded.clone()]);
            assert_eq!(entries.unwrap_or(stored.dedupe), extreme_entries());
        }
    }

    #[test]
    fn format_4_round_trips_credits_and_the_clock() {
        let policy = TopUpPolicy { threshold: 1, recharge_to: 2, price_per_credit_e18: 3, max_per_period: 4 };
        let credits = AccountCredits { top_up: Some(policy), ..AccountCredits::default() };
        let account = acme_account(&[], &[], credits);
        let stored = Stored {
            format: FORMAT,
            strings: vec![],
            accounts: vec![account],
            dedupe: vec![],
            clock_ms: 42,
            dedupe_in_segments: false,
        };
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
        let stored = Stored {
            format: FORMAT,
            strings: vec![],
            accounts: vec![],
            dedupe: extreme_entries(),
            clock_ms: 0,
            dedupe_in_segments: false,
        };
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
        let account = acme_account(&[(0, 60)], &[(0, 1)], credits);
        let stored = Stored {
            format: FORMAT,
            strings: vec!["p".into(), "q".into()],
            accounts: vec![account],
            dedupe: extreme_entries(),
            clock_ms: -3,
            dedupe_in_segments: true,
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
        let stored = Stored {
            format: FORMAT,
            strings: vec![],
            accounts: vec![],
            dedupe: extreme_entries(),
            clock_ms: 0,
            dedupe_in_segments: false,
        };
        let mut bytes = encode(&stored);
        // The blob's length prefix is the byte before its first entry (then the clock's varint and the bool): one
        // byte short of three entries.
        let at = bytes.len() - 3 * dedupe_entries::ENTRY_BYTES - 1 - 1 - 1;
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

/// That a kernel snapshot's bytes are what the owned `Stored` of them encodes to, its accounts' aggregates and
/// buckets in their keys' order: the borrowed encoding (`StoredAccountRef`) writes what copying did.
#[cfg(test)]
pub(crate) fn check_owned_form(bytes: &[u8]) {
    let stored = decode(bytes).expect("decodes");
    assert!(!stored.accounts.is_empty(), "some account to check");
    for account in &stored.accounts {
        assert!(account.aggregates.is_sorted_by(|a, b| a.0 < b.0), "{}", account.customer_id);
        assert!(account.buckets.is_sorted_by(|a, b| a.0 < b.0), "{}", account.customer_id);
    }
    assert!(stored.accounts.is_sorted_by(|a, b| a.customer_id < b.customer_id));
    assert!(encode(&stored) == bytes, "the owned form encodes to the same bytes");
}

#[cfg(test)]
mod segment_tests {
    use super::segment::{self, merge, merged, read, table_entries};
    use super::*;
    use crate::dedupe::{Held, Table, PRUNE_RANGE_BITS};
    use proptest::prelude::*;

    /// Format 4's layout: as format 5 without `dedupe_in_segments`, written as the release before segments wrote it.
    #[derive(Serialize)]
    struct WrittenV4 {
        format: u32,
        strings: Vec<String>,
        accounts: Vec<StoredAccount>,
        #[serde(with = "dedupe_entries")]
        dedupe: Vec<(u128, Seen)>,
        clock_ms: i64,
    }

    fn entries() -> Vec<(u128, Seen)> {
        vec![(0, Seen { digest: 3, at_ms: i64::MIN }), (7, Seen { digest: 0, at_ms: 5 })]
    }

    #[test]
    fn a_format_4_snapshot_reads_as_format_5_with_its_dedupe_table_in_it() {
        let written =
            WrittenV4 { format: 4, strings: vec!["p".into()], accounts: vec![], dedupe: entries(), clock_ms: 9 };
        let bytes = postcard::to_allocvec(&written).unwrap();
        let stored = decode(&bytes).expect("format 4 reads");
        assert_eq!((stored.format, stored.dedupe_in_segments, stored.clock_ms), (FORMAT, false, 9));
        assert_eq!(stored.dedupe, entries());
        let (head, borrowed) = decode_borrowing(&bytes).expect("format 4 reads");
        let borrowed: Vec<(u128, Seen)> = dedupe_entries::read(borrowed.expect("left in the bytes")).unwrap().collect();
        assert_eq!((borrowed, head.dedupe_in_segments, head.strings), (entries(), false, vec!["p".to_string()]));
        let kernel = crate::kernel::Kernel::restore(&bytes).expect("restores");
        assert_eq!(decode(&kernel.snapshot()).unwrap().dedupe, entries());
    }

    #[test]
    fn segments_that_are_not_whole_or_not_in_order_are_refused() {
        let mut table = Table::default();
        table.record_changes(true);
        for key in [3u128, 9] {
            table.insert(key.into(), Seen { digest: 1, at_ms: 1 }.into());
        }
        let bytes = segment::from_changes(&mut table.take_changes(), 1 << 20).concat();
        assert!(read(&bytes).is_ok());
        let mut swapped = bytes.clone();
        let first = swapped.len() - 1 - 2 * dedupe_entries::ENTRY_BYTES;
        let (a, b) = swapped[first..].split_at_mut(dedupe_entries::ENTRY_BYTES);
        a.swap_with_slice(&mut b[..dedupe_entries::ENTRY_BYTES]);
        assert!(read(&swapped).unwrap_err().contains("not in order"));
        assert!(read(&bytes[..bytes.len() - 2]).is_err(), "cut short");
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(read(&other).unwrap_err().contains("format 2"));
    }

    fn held(at_ms: i64) -> Held {
        Seen { digest: at_ms as u128 * 31, at_ms }.into()
    }

    /// Keys in few prune ranges, so puts, overwrites and removals of one key meet within and across segments.
    fn keys() -> impl Strategy<Value = u128> {
        prop_oneof![Just(0u128), (0u128..4, 0u128..40).prop_map(|(top, low)| (top << 126) | low)]
    }

    proptest! {
        #![proptest_config(crate::test_config())]

        /// A base segment, then each interval's changes as a segment: merged, they are exactly the table, and so
        /// is any compaction of them (all into a base, or the newer ones into one keeping their removals).
        #[test]
        fn merged_segments_are_exactly_the_table(
            ops in proptest::collection::vec((keys(), 0i64..100, 0u8..10), 0..400),
            compact_from in 0usize..6,
            chunk_bytes in prop_oneof![1usize..50, Just(1 << 20)],
        ) {
            let mut table = Table::default();
            let mut segments = vec![segment::from_table(&table, 1 << 20).concat()];
            table.record_changes(true);
            for (key, at_ms, op) in ops {
                match op {
                    0 => drop(table.prune_range((key >> (128 - PRUNE_RANGE_BITS)) as u64, |h| h.at_ms() < at_ms)),
                    1 => segments.push(segment::from_changes(&mut table.take_changes(), chunk_bytes).concat()),
                    _ => table.insert(key.into(), held(at_ms)),
                }
            }
            segments.push(segment::from_changes(&mut table.take_changes(), chunk_bytes).concat());
            prop_assert_eq!(segment::base_bytes(table.len()), segment::from_table(&table, chunk_bytes).concat().len());
            let expected: Vec<(u128, Seen)> = table.iter().map(|(k, h)| (k.into(), h.into())).collect();
            let slices: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
            let layers: Vec<_> = slices.iter().map(|s| read(s).unwrap()).collect();
            let restored: Vec<(u128, Seen)> = table_entries(&layers).collect();
            prop_assert_eq!(&restored, &expected);
            prop_assert_eq!(table_entries(&layers).len(), expected.len());
            let restored = Table::from_entries(table_entries(&layers));
            prop_assert!(restored.iter().map(|(k, h)| (u128::from(k), Seen::from(h))).eq(expected.iter().copied()));
            // Compacted whole: no removals left.
            let whole = merge(&slices, true, chunk_bytes).unwrap().concat();
            prop_assert!(merged(&[read(&whole).unwrap()]).all(|(_, seen)| seen.is_some()));
            prop_assert_eq!(table_entries(&[read(&whole).unwrap()]).collect::<Vec<_>>(), expected.clone());
            // The newer segments compacted, the older kept before them.
            let from = compact_from.min(slices.len());
            let tail = merge(&slices[from..], from == 0, chunk_bytes).unwrap().concat();
            let mut kept: Vec<&[u8]> = slices[..from].to_vec();
            kept.push(&tail);
            let layers: Vec<_> = kept.iter().map(|s| read(s).unwrap()).collect();
            prop_assert_eq!(table_entries(&layers).collect::<Vec<_>>(), expected);
        }
    }
}

#[cfg(test)]
mod hold_reason_tests {
    use super::*;
    use crate::authorize::tests::{calls_customer, calls_tables, SCALE};
    use crate::decode::wire;
    use crate::kernel::Kernel;
    use crate::tables::{self, Tables};

    const NOW: i64 = 1_000;

    /// Calls at 2.5 each; customer `c` on an ALLOW contract holding 10 credits.
    fn allow_tables() -> Tables {
        let customer = calls_customer("c", "k", false, "10000000000000".into(), None);
        calls_tables(format!("25{}", &SCALE[1..]), vec![customer])
    }

    fn with_tables(mut kernel: Kernel) -> Kernel {
        kernel.load_tables(&tables::encode(&allow_tables())).expect("valid tables");
        kernel
    }

    /// The answer's (reason, message) to a hold of one call under `reservation_id`.
    fn hold(kernel: &mut Kernel, reservation_id: &str) -> (&'static str, String) {
        let call = wire::UsageEvent {
            transaction_id: "authorize".into(),
            customer_id: "c".into(),
            event_type: "call".into(),
            timestamp_ms: NOW,
            ..wire::UsageEvent::default()
        };
        let decision = kernel
            .reserve(reservation_id, &call, NOW, crate::credits::HoldTtl::Named(60_000))
            .expect("no conflict")
            .decision;
        (decision.reason, decision.message)
    }

    /// Open holds `h0`-`h2` (OK) and `h4` (OVERAGE_ALLOWED: the credit is all held); `h3` (OK) and `h5`
    /// (OVERAGE_ALLOWED) released.
    fn holding() -> Kernel {
        let mut kernel = with_tables(Kernel::default());
        let reasons: Vec<_> = (0..6).map(|n| hold(&mut kernel, &format!("h{n}")).0).collect();
        assert_eq!(reasons, ["OK", "OK", "OK", "OK", "OVERAGE_ALLOWED", "OVERAGE_ALLOWED"]);
        for id in ["h5", "h3"] {
            kernel.release("c", id, NOW, true).expect("open");
        }
        kernel
    }

    fn retried(kernel: &mut Kernel) -> Vec<&'static str> {
        ["h0", "h3", "h4", "h5"].iter().map(|id| hold(kernel, id).0).collect()
    }

    #[test]
    fn a_retry_answers_why_the_hold_was_allowed_open_or_ended_and_a_snapshot_keeps_it() {
        let mut kernel = holding();
        assert_eq!(retried(&mut kernel), ["OK", "OK", "OVERAGE_ALLOWED", "OVERAGE_ALLOWED"]);
        let (_, open) = hold(&mut kernel, "h4");
        let (_, ended) = hold(&mut kernel, "h5");
        let note = "allowed beyond available credit: billed as overage";
        assert_eq!(open, format!("already held: this reservation was made by an earlier identical request; {note}"));
        assert_eq!(ended, format!("this reservation was already released at {NOW}; nothing is held; {note}"));
        let bytes = kernel.snapshot();
        let stored = decode(&bytes).expect("decodes");
        assert_eq!(stored.format, FORMAT);
        let credits = stored.accounts[0].credits.as_ref().expect("holds");
        assert_eq!(credits.open["h4"].reason, HoldReason::OverageAllowed);
        assert_eq!(
            (credits.ended["h5"].reason, credits.ended["h3"].reason),
            (HoldReason::OverageAllowed, HoldReason::Ok)
        );
        let mut restored = with_tables(Kernel::restore(&bytes).expect("restores"));
        assert_eq!(restored.snapshot(), bytes);
        assert_eq!(retried(&mut restored), ["OK", "OK", "OVERAGE_ALLOWED", "OVERAGE_ALLOWED"]);
        assert_eq!(restored.snapshot(), bytes, "a retry changes nothing");
    }

    /// The account as format 5 wrote it: its reservations without their reason.
    fn as_format_5(account: StoredAccount) -> StoredAccountV5 {
        super::tests::as_format_of(
            account,
            |Reservation { digest, amount, held, made_at_ms, expires_at_ms, .. }| ReservationV5 {
                digest,
                amount,
                held,
                made_at_ms,
                expires_at_ms,
            },
            |Ended { ending, digest, amount, released, at_ms, .. }| EndedV5 { ending, digest, amount, released, at_ms },
        )
    }

    #[test]
    fn a_format_5_snapshot_restores_its_holds_answering_ok_as_they_did() {
        let stored = decode(&holding().snapshot()).expect("decodes");
        let Stored { strings, accounts, dedupe, clock_ms, dedupe_in_segments, .. } = stored;
        let accounts = accounts.into_iter().map(as_format_5).collect();
        let written = StoredV5 { format: 5, strings, accounts, dedupe, clock_ms, dedupe_in_segments };
        let bytes = postcard::to_allocvec(&written).expect("encodes");
        let upgraded = decode(&bytes).expect("format 5 reads");
        assert_eq!(upgraded.format, FORMAT);
        let credits = upgraded.accounts[0].credits.as_ref().expect("holds");
        assert_eq!(credits.open.keys().map(|id| &**id).collect::<Vec<_>>(), ["h0", "h1", "h2", "h4"]);
        assert!(credits.open.values().all(|r| r.reason == HoldReason::Ok));
        assert!(credits.ended.values().all(|e| e.reason == HoldReason::Ok));
        let mut restored = with_tables(Kernel::restore(&bytes).expect("restores"));
        assert_eq!(decode(&restored.snapshot()).expect("decodes"), upgraded);
        assert_eq!(retried(&mut restored), ["OK", "OK", "OK", "OK"], "as a format-5 hold's retry answered");
        // Holds made since remember their reason: h6 takes the 2.5 h3 gave back, h7 finds none.
        assert_eq!([hold(&mut restored, "h6").0, hold(&mut restored, "h7").0], ["OK", "OVERAGE_ALLOWED"]);
        assert_eq!([hold(&mut restored, "h6").0, hold(&mut restored, "h7").0], ["OK", "OVERAGE_ALLOWED"]);
    }
}
