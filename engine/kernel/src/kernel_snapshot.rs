//! The kernel's state to and from bytes: `Kernel::snapshot` (whole, or its head with the dedupe table in
//! segments beside it), the dedupe table's change log those segments are made from, and `Kernel::restore`.
//! Apart from the batch entry points (kernel.rs) because only the server's snapshotting and a restart use it;
//! the snapshot format itself is snapshot.rs.

use crate::account::Account;
use crate::buckets::{HourKey, HourUsage, PeriodKey, PeriodTotals};
use crate::dedupe;
use crate::draw::BurnOrder;
use crate::kernel::Kernel;
use crate::money::Picos;
use crate::rater::Rater;
use crate::route::{Interner, Sym};
use crate::snapshot::{self, KeyRef, StoredAccountRef};

impl Kernel {
    /// The whole state's bytes, the dedupe table included: the same state always encodes to the same bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let (strings, accounts) = self.stored_accounts();
        let (count, dedupe) = (self.dedupe.len(), self.dedupe.iter().map(|(k, v)| (k.into(), v.into())));
        let tail = snapshot::Tail { clock_ms: self.clock.now_ms, dedupe_in_segments: false };
        snapshot::encode_parts(snapshot::FORMAT, &strings, &accounts, count, dedupe, tail)
    }

    /// The state's bytes without the dedupe table, which is in segments stored beside them (snapshot::segment):
    /// the segments of the snapshots before, and `take_dedupe_changes` (or `dedupe_base_segment`) for this one.
    pub fn snapshot_head(&self) -> Vec<u8> {
        let (strings, accounts) = self.stored_accounts();
        let tail = snapshot::Tail { clock_ms: self.clock.now_ms, dedupe_in_segments: true };
        snapshot::encode_parts(snapshot::FORMAT, &strings, &accounts, 0, std::iter::empty(), tail)
    }

    /// Starts (or stops) logging the dedupe table's changes for `take_dedupe_changes`; starting empties the log.
    pub fn record_dedupe_changes(&mut self, on: bool) {
        self.dedupe.record_changes(on);
    }

    /// How many ids the dedupe window holds.
    pub fn dedupe_ids(&self) -> usize {
        self.dedupe.len()
    }

    /// Whether `record_dedupe_changes` is on.
    pub fn dedupe_recording(&self) -> bool {
        self.dedupe.recording()
    }

    /// The dedupe table's changes since the last call (or since recording started), leaving none: made into a
    /// segment by `snapshot::segment::from_changes`, off the writer (it sorts them).
    pub fn take_dedupe_changes(&mut self) -> Vec<dedupe::Change> {
        self.dedupe.take_changes()
    }

    /// A log `take_dedupe_changes` gave, once made into a segment: its room is kept for the log's next
    /// changes (`dedupe::Table::give_back_changes`).
    pub fn give_back_dedupe_changes(&mut self, changes: Vec<dedupe::Change>) {
        self.dedupe.give_back_changes(changes);
    }

    /// The whole dedupe table as a base segment (the first snapshot in segments, or after one was lost), in
    /// chunks of at most `chunk_bytes`.
    pub fn dedupe_base_segment(&self, chunk_bytes: usize) -> Vec<Vec<u8>> {
        snapshot::segment::from_table(&self.dedupe, chunk_bytes)
    }

    /// The accounts as a snapshot stores them, sorted by customer id, borrowed from the kernel's (copying every
    /// account's grants, usage and credits first took most of a snapshot's encode once the dedupe table was out of it).
    fn stored_accounts(&self) -> (Vec<String>, Vec<StoredAccountRef<'_>>) {
        let mut customers: Vec<(&str, &Account)> = self.accounts.iter().map(|(id, a)| (id.as_str(), a)).collect();
        customers.sort_unstable_by_key(|(id, _)| *id);
        let accounts = customers.into_iter().map(|(id, account)| self.stored_account(id, account)).collect();
        (self.rater.interner.strings(), accounts)
    }

    fn stored_account<'a>(&'a self, id: &'a str, account: &'a Account) -> StoredAccountRef<'a> {
        let key = |at_ms: i64, product: Sym, combo: u32| KeyRef {
            at_ms,
            product,
            dimensions: self.rater.combos.tuple(combo),
        };
        let mut aggregates: Vec<_> =
            account.aggregates.iter().map(|(k, v)| (key(k.period_start_ms, k.product, k.combo), v)).collect();
        aggregates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut buckets: Vec<_> =
            account.buckets.iter().map(|(k, v)| (key(k.hour, k.product, k.combo), v.as_slice())).collect();
        buckets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        StoredAccountRef {
            customer_id: id,
            grants: &account.grants,
            aggregates,
            buckets,
            period_charges: account.periods.iter().map(|(start, t)| (start, t.charges)).collect(),
            period_overage: account.periods.iter().map(|(start, t)| (start, t.overage)).collect(),
            adjustments: &account.adjustments,
            credits: account.credits.as_deref(),
        }
    }

    /// A kernel holding a snapshot's state; load tables before rating with it. A snapshot whose dedupe table is
    /// in segments is refused (`restore_segmented`).
    pub fn restore(bytes: &[u8]) -> Result<Kernel, String> {
        Kernel::restore_segmented(bytes, &[])
    }

    /// `restore` of a snapshot and the dedupe segments stored beside it (oldest first), merged into the table
    /// in one streaming pass. Segments must be given exactly when the snapshot says its table is in them.
    pub fn restore_segmented(bytes: &[u8], segments: &[&[u8]]) -> Result<Kernel, String> {
        let (stored, entry_bytes) = snapshot::decode_borrowing(bytes)?;
        let rater = Rater { interner: Interner::from_strings(stored.strings), ..Rater::default() };
        let dedupe = match (stored.dedupe_in_segments, entry_bytes) {
            (true, _) if segments.is_empty() => {
                return Err("the snapshot's dedupe table is in segments, and none were given".into())
            }
            (true, _) => {
                let layers = segments.iter().map(|s| snapshot::segment::read(s)).collect::<Result<Vec<_>, _>>()?;
                dedupe::Table::from_entries(snapshot::segment::table_entries(&layers))
            }
            (false, _) if !segments.is_empty() => {
                return Err("the snapshot holds its dedupe table, and segments were given".into())
            }
            (false, Some(entry_bytes)) => dedupe::Table::from_entries(snapshot::dedupe_entries::read(entry_bytes)?),
            (false, None) => dedupe::Table::from_entries(stored.dedupe.iter().copied()),
        };
        let mut kernel = Kernel { rater, dedupe, ..Kernel::default() };
        let combos = &mut kernel.rater.combos;
        for stored in stored.accounts {
            let mut account = Account {
                order: BurnOrder::new(),
                payable: BurnOrder::new(),
                made: None,
                grants: stored.grants,
                aggregates: (stored.aggregates.into_iter())
                    .map(|(k, v)| {
                        let combo = combos.intern(&k.dimensions);
                        (PeriodKey { period_start_ms: k.period_start_ms, product: k.product, combo }, v)
                    })
                    .collect(),
                buckets: (stored.buckets.into_iter())
                    .map(|(k, v)| {
                        let key = HourKey { hour: k.hour, product: k.product, combo: combos.intern(&k.dimensions) };
                        (key, HourUsage::from_vec(v))
                    })
                    .collect(),
                periods: period_totals(&stored.period_charges, &stored.period_overage),
                last_period: (0, 0, 0),
                route: None,
                adjustments: stored.adjustments,
                touched_epoch: 0,
                credits: stored.credits.map(Box::new),
                due: crate::due::DueKeys::default(),
            };
            account.index_grants();
            kernel.accounts.insert(stored.customer_id.into(), Box::new(account));
        }
        kernel.clock.now_ms = stored.clock_ms;
        kernel.recompute_due();
        Ok(kernel)
    }
}

/// An account's period totals from a snapshot's two lists (which hold the same periods).
fn period_totals(charges: &[(i64, Picos)], overage: &[(i64, Picos)]) -> PeriodTotals {
    let mut totals = PeriodTotals::default();
    for &(start, amount) in charges {
        totals.slot(start).charges = amount;
    }
    for &(start, amount) in overage {
        totals.slot(start).overage = amount;
    }
    totals
}
