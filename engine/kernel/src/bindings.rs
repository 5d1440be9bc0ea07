//! The Python binding, `engine._kernel`: the one module that knows PyO3.
//!
//! `Kernel` is frozen with a lock inside, since grpcio calls handlers from several threads;
//! batch work runs with the GIL released. Amounts cross as Python ints (picos), never floats.
//!
//! The lock is parking_lot's read-write lock. Changes (ingestion, table loads) take it to write;
//! reads (Authorize, GetBalance, usage, snapshots) share it, so a snapshot being encoded never
//! keeps a decision waiting. Ingestion offers the lock to a waiting read every few dozen events
//! (`RwLockWriteGuard::bump`, a fair hand-over), so a decision waits for those, not for a whole
//! batch, nor for the next batch the rating thread would otherwise grab first. Reads take it with
//! `read_recursive`, which does not queue behind a waiting writer while other reads hold it. Reads
//! keep the GIL while they wait and decide (microseconds): handing the GIL to another thread and
//! taking it back can cost the event loop a whole switch interval (5 ms).

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};

use prost::Message;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::authorize::{self, Refused};
use crate::balance_wire::GrantPart;
use crate::credits::{self, HoldTtl, Made, ReleaseRefusal, RolloverIds, RolloverWindow, Rollovers, TopUpPolicy};
use crate::decode::{wire, with_view};
use crate::holds;
use crate::invoice::{CreditWanted, GrantCredit, NoLines, PeriodLines};
use crate::kernel::{self, BatchRefusal};
use crate::snapshot::segment::Chunks;
use crate::tables::VersionTable;
use crate::undecodable::NotABatch;

pyo3::create_exception!(_kernel, BatchTooLarge, PyValueError, "A batch with more events than the server takes.");
pyo3::create_exception!(_kernel, BatchIdTooLong, PyValueError, "A batch whose batch_id is over 256 bytes.");
pyo3::create_exception!(
    _kernel,
    BatchNotDecodable,
    PyValueError,
    "Bytes that are not a UsageBatch or an AuthorizeBatch: args (field, message), the field prost refused (empty: the \
     message's framing)."
);
pyo3::create_exception!(
    _kernel,
    CustomerNotAllowed,
    PyValueError,
    "A batch naming a customer the caller's key may not touch."
);
pyo3::create_exception!(
    _kernel,
    RequestIdMissing,
    PyValueError,
    "An AuthorizeBatch request without the request_id its answer is correlated by."
);
pyo3::create_exception!(
    _kernel,
    RequestIdTooLong,
    PyValueError,
    "An AuthorizeBatch request whose request_id is longer than an id may be."
);
pyo3::create_exception!(
    _kernel,
    ReservationConflict,
    PyValueError,
    "A reservation id the customer already used for a different request."
);
pyo3::create_exception!(_kernel, ReservationNotFound, PyValueError, "The customer has no such reservation.");
pyo3::create_exception!(_kernel, ReservationEnded, PyValueError, "The reservation was settled or expired.");

/// An Authorize refusal as the Python exception the server maps to a status.
fn refused(refusal: Refused) -> PyErr {
    match refusal {
        Refused::NotDecodable(refused) => {
            let NotABatch { field, message } = *refused;
            BatchNotDecodable::new_err((field, message))
        }
        Refused::TooManyRequests(count) => BatchTooLarge::new_err(count),
        Refused::CustomerNotAllowed(index, customer) => CustomerNotAllowed::new_err((index, customer)),
        Refused::NoRequestId(index) => RequestIdMissing::new_err(index),
        Refused::RequestIdTooLong(index) => RequestIdTooLong::new_err(index),
    }
}

#[pyclass(frozen, module = "engine._kernel")]
struct Kernel {
    inner: RwLock<kernel::Kernel>,
    /// A change panicked half-way: the state may be half changed, so every later call is refused.
    poisoned: AtomicBool,
}

/// Marks the kernel poisoned if dropped, i.e. when a change unwinds instead of finishing.
struct Unfinished<'a>(&'a AtomicBool);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Kernel {
    fn wrap(kernel: kernel::Kernel) -> Kernel {
        Kernel { inner: RwLock::new(kernel), poisoned: AtomicBool::new(false) }
    }

    fn check_poisoned(&self) -> PyResult<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("the kernel was poisoned by a panic"));
        }
        Ok(())
    }

    /// The state for reading, shared with other reads.
    fn read(&self) -> PyResult<RwLockReadGuard<'_, kernel::Kernel>> {
        let guard = self.inner.read_recursive();
        self.check_poisoned()?;
        Ok(guard)
    }

    /// What `answer` makes of the state (read, shared with other reads) and a version (`version`, a VersionTable's
    /// msgpack, decoded), with the GIL released: a version that does not decode, or an Err of `answer`, is a
    /// ValueError.
    fn read_with_version<T: Send>(
        &self,
        py: Python<'_>,
        version: &[u8],
        answer: impl FnOnce(&kernel::Kernel, VersionTable) -> Result<T, String> + Send,
    ) -> PyResult<T> {
        let table = crate::rerate::decode_version(version).map_err(PyValueError::new_err)?;
        py.detach(|| answer(&*self.read()?, table).map_err(PyValueError::new_err))
    }

    /// Runs a change of the kernel's state under the lock, alone.
    fn change<R>(&self, change: impl FnOnce(&mut RwLockWriteGuard<'_, kernel::Kernel>) -> R) -> PyResult<R> {
        let mut guard = self.inner.write();
        self.check_poisoned()?;
        let armed = Unfinished(&self.poisoned);
        let result = change(&mut guard);
        std::mem::forget(armed);
        Ok(result)
    }
}

fn big_int<'py>(py: Python<'py>, value: ethnum::I256) -> PyResult<Bound<'py, PyAny>> {
    py.import("builtins")?.getattr("int")?.call1((value.to_string(),))
}

/// A balance's totals, as `Kernel.balance` names them.
fn set_balance_totals(
    py: Python<'_>,
    dict: &Bound<'_, PyDict>,
    view: &kernel::BalanceView,
    held: i128,
) -> PyResult<()> {
    dict.set_item("remaining", view.remaining)?;
    dict.set_item("period", view.period)?;
    dict.set_item("period_charges", view.period_charges)?;
    dict.set_item("overage", view.overage)?;
    dict.set_item("overage_due_e30", big_int(py, view.overage_due_e30)?)?;
    dict.set_item("held", held)
}

/// A line of `Kernel.invoice_read`: (product_id, dimension values, quantity_e18, events, amount_picos,
/// overage_picos, [(grant_id, credits_picos)], [(rate_card_id, version, quantity_e18, events, amount_picos)]).
type LineTuple = (String, Vec<String>, i128, u64, i128, i128, Vec<(String, i128)>, Vec<(String, u32, i128, u64, i128)>);
/// `Kernel.invoice_read`'s lines: (period_start_ms, period_end_ms, overage_price_e18, closed, lines, grants),
/// a grant as (grant_id, amount_picos, drawn_picos through the period, expires_at_ms, (rolled at the period end
/// in ms, credits_picos moved into its ROLLOVER grant) or None).
type GrantTuple = (String, i128, i128, Option<i64>, Option<(i64, i128)>);
type PeriodTuple = (i64, i64, i128, bool, Vec<LineTuple>, Vec<GrantTuple>);

#[pymethods]
impl Kernel {
    #[new]
    fn new() -> Kernel {
        Kernel::wrap(kernel::Kernel::default())
    }

    /// Replaces the compiled control plane (msgpack from engine/tables.py). Raises ValueError
    /// when the tables are malformed, having changed nothing.
    fn load_tables(&self, py: Python<'_>, tables: &[u8]) -> PyResult<()> {
        py.detach(|| {
            // Compiled under an upgradable read, which lets reads (Authorize, balances) go on and keeps
            // every change out, so the state is the one compiled against when the lock is upgraded to
            // install: a read waits for the install, not for the compile.
            let guard = self.inner.upgradable_read();
            self.check_poisoned()?;
            let prepared = guard.prepare_tables(tables).map_err(PyValueError::new_err)?;
            let mut guard = RwLockUpgradableReadGuard::upgrade(guard);
            let armed = Unfinished(&self.poisoned);
            let retired = guard.install_tables(prepared);
            std::mem::forget(armed);
            drop(guard);
            drop(retired); // freed with the lock let go: a read need not wait for it
            Ok(())
        })
    }

    /// Loads some customers' routes and grants (msgpack from engine/tables.py) against the tables
    /// already loaded. Raises ValueError when they are malformed or were compiled against other
    /// tables, having changed nothing.
    fn load_customers(&self, py: Python<'_>, customers: &[u8]) -> PyResult<()> {
        py.detach(|| self.change(|k| k.load_customers(customers))?.map_err(PyValueError::new_err))
    }

    // -- A publish appended to the tables loaded (issue 11: engine/kernel/src/append.rs) -----------

    /// Adds a published version to the tables loaded (msgpack VersionAppend from engine/tables.py),
    /// under the lock alone for as long as the version and its card's timelines take, not the
    /// customers. Raises ValueError when it is malformed or was compiled against other tables,
    /// having changed nothing.
    fn append_version(&self, py: Python<'_>, append: &[u8]) -> PyResult<()> {
        py.detach(|| self.change(|k| k.append_version(append))?.map_err(PyValueError::new_err))
    }

    /// Each contract's timeline as (effective_from_ms, rate_card_id, version), in the order the
    /// customer's tables list its contracts; None for a customer the tables do not name.
    #[allow(clippy::type_complexity)]
    fn contract_timelines(&self, py: Python<'_>, customer_id: &str) -> PyResult<Option<Vec<Vec<(i64, String, u32)>>>> {
        py.detach(|| self.read().map(|k| k.contract_timelines(customer_id)))
    }

    /// The customers (sorted) holding an open reservation whose TTL ran out by now_ms: those
    /// `expire_holds` changes, which a pending re-rating must reach first (re-rate on touch).
    fn holds_due_by(&self, py: Python<'_>, now_ms: i64) -> PyResult<Vec<String>> {
        py.detach(|| Ok(self.read()?.holds_due_by(now_ms)))
    }

    /// AdvanceClock while a publish's re-rating is pending (a journaled change): expires the
    /// reservations whose TTL ran out by now_ms and nothing else (no breakage, no rollover, the
    /// clock stays). Returns how many expired.
    fn expire_holds(&self, py: Python<'_>, now_ms: i64) -> PyResult<u32> {
        py.detach(|| self.change(|k| k.expire_holds(now_ms)))
    }

    // -- end of the publish block --------------------------------------------------------------------

    /// Rates a UsageBatch given as its wire bytes: (IngestAck bytes, 16-byte digest). Raises
    /// ValueError, having changed nothing, when the bytes are not a UsageBatch. Every rule flag off, as
    /// batches journaled by the first releases, but `refunds_netted` (`ingest_checked`'s) when given.
    #[pyo3(signature = (batch, received_ms, journal_seq, refunds_netted = false))]
    fn ingest<'py>(
        &self,
        py: Python<'py>,
        batch: &[u8],
        received_ms: i64,
        journal_seq: u64,
        refunds_netted: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let (ack, digest) = py.detach(|| {
            self.change(|k| {
                k.top_ups_in_billed_period = false;
                k.returned_expired_credit_breaks = false;
                k.returned_rolled_credit_breaks = false;
                k.reservation_ids_bounded = false;
                k.duplicates_before_skew = false;
                k.refunds_netted = refunds_netted;
                k.ingest(batch, received_ms, journal_seq)
            })?
            .map_err(PyValueError::new_err)
        })?;
        Ok((PyBytes::new(py, &ack), PyBytes::new(py, &digest)))
    }

    /// The server's ingest: (IngestAck bytes, digest, accepted, duplicates, reject reason names).
    /// Refuses the whole batch, having changed nothing: BatchNotDecodable(field, message) when the bytes
    /// are not a UsageBatch (field: where prost refused them, `events[3].customer_id`; empty for the
    /// batch's own framing), BatchTooLarge(events) past `events_max`, CustomerNotAllowed(index, customer_id)
    /// for a customer outside `allowed` (None: every customer). A batch that accepts nothing
    /// reports `next_seq - 1`. `top_ups_in_billed_period`: a top-up an event dated in a later billing
    /// period buys starts in that period (false: at the purchase, as batches journaled before it).
    /// `returned_expired_credit_breaks`: what an event's settled hold or refund gives back to a grant
    /// already broken at its expiry, and the event does not draw, breaks at once (false: at the next AdvanceClock, as
    /// batches journaled before it). `reservation_ids_bounded`: an event whose reservation_id is over
    /// 256 bytes is INVALID_EVENT (false: rated, as batches journaled before it).
    /// `returned_rolled_credit_breaks`: what an event's refund gives back to a grant that has rolled over
    /// already breaks at once (false: it stays in the grant, as batches journaled before it).
    /// `duplicates_before_skew`: an identical resend of an accepted event is a duplicate whatever the
    /// future skew is now (false: TIMESTAMP_OUT_OF_RANGE past it, as batches journaled before it).
    /// `batch_ids_bounded`: BatchIdTooLong(bytes) for a batch_id over 256 bytes (false: taken, as on
    /// replay of batches journaled before it). `refunds_netted`: an event's charges take back first what its
    /// refunds gave back (`draw::settle`; false: they draw in burn order, as batches journaled before it).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    #[pyo3(signature = (
        batch, received_ms, next_seq, events_max, allowed, top_ups_in_billed_period = false,
        returned_expired_credit_breaks = false, reservation_ids_bounded = false,
        returned_rolled_credit_breaks = false, duplicates_before_skew = false, batch_ids_bounded = false,
        refunds_netted = false
    ))]
    fn ingest_checked<'py>(
        &self,
        py: Python<'py>,
        batch: &[u8],
        received_ms: i64,
        next_seq: u64,
        events_max: usize,
        allowed: Option<Vec<String>>,
        top_ups_in_billed_period: bool,
        returned_expired_credit_breaks: bool,
        reservation_ids_bounded: bool,
        returned_rolled_credit_breaks: bool,
        duplicates_before_skew: bool,
        batch_ids_bounded: bool,
        refunds_netted: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, u32, u32, Vec<&'static str>)> {
        let done = py.detach(|| {
            self.change(|kernel| {
                kernel.batch_ids_bounded = batch_ids_bounded;
                kernel.refunds_netted = refunds_netted;
                kernel.top_ups_in_billed_period = top_ups_in_billed_period;
                kernel.returned_expired_credit_breaks = returned_expired_credit_breaks;
                kernel.reservation_ids_bounded = reservation_ids_bounded;
                kernel.returned_rolled_credit_breaks = returned_rolled_credit_breaks;
                kernel.duplicates_before_skew = duplicates_before_skew;
                let allowed = allowed.as_deref();
                kernel::ingest_checked_pausing(kernel, batch, received_ms, next_seq, events_max, allowed, |held| {
                    RwLockWriteGuard::bump(held)
                })
            })
        })?;
        match done {
            Ok(i) => {
                let reasons = i.rejected.iter().map(|r| r.name()).collect();
                Ok((PyBytes::new(py, &i.ack), PyBytes::new(py, &i.digest), i.accepted, i.duplicates, reasons))
            }
            Err(BatchRefusal::NotABatch(refused)) => {
                let NotABatch { field, message } = *refused;
                Err(BatchNotDecodable::new_err((field, message)))
            }
            Err(BatchRefusal::TooManyEvents(events)) => Err(BatchTooLarge::new_err(events)),
            Err(BatchRefusal::BatchIdTooLong(bytes)) => Err(BatchIdTooLong::new_err(bytes)),
            Err(BatchRefusal::CustomerNotAllowed(index, customer)) => {
                Err(CustomerNotAllowed::new_err((index, customer)))
            }
        }
    }

    /// Hours (Unix ms / 3,600,000) from `from_hour` on in which usage was priced by a version of
    /// the rate card, ascending.
    fn rated_hours(&self, py: Python<'_>, rate_card_id: &str, from_hour: i64) -> PyResult<Vec<i64>> {
        py.detach(|| self.read().map(|k| k.rated_hours(rate_card_id, from_hour)))
    }

    /// (allowed, reason, message, estimated_cost_picos, available_picos) for usage described as
    /// an event at now_ms, priced exactly as ingesting it would be; commits nothing.
    fn authorize(
        &self,
        customer_id: String,
        event_type: String,
        dimensions: Vec<(String, String)>,
        values: Vec<(String, f64)>,
        now_ms: i64,
    ) -> PyResult<(bool, &'static str, String, i128, i128)> {
        let event = wire::UsageEvent {
            transaction_id: "authorize".into(),
            customer_id,
            event_type,
            timestamp_ms: now_ms,
            dimensions: dimensions.into_iter().map(|(key, value)| wire::DimensionEntry { key, value }).collect(),
            values: values.into_iter().map(|(key, value)| wire::ValueEntry { key, value }).collect(),
            reservation_id: String::new(),
        };
        let decision = with_view(&event, |view| self.read().map(|k| k.authorize_read(view, now_ms)))?;
        Ok((decision.allowed, decision.reason, decision.message, decision.cost, decision.available))
    }

    /// The customer's balance at now_ms as a dict of ints (picos), or None for an unknown customer. With
    /// `projected` (GetBalance, WatchBalance), as the clock's due work at now_ms leaves it (Kernel::account_read),
    /// the grants the kernel made then under "made" (as `made_grants` lists them); without, the kernel's own state
    /// (what journaled changes read: alerts).
    #[pyo3(signature = (customer_id, now_ms, projected = false))]
    fn balance<'py>(
        &self,
        py: Python<'py>,
        customer_id: &str,
        now_ms: i64,
        projected: bool,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let kernel = self.read()?;
        let account = if projected {
            kernel.account_read(customer_id, now_ms)
        } else {
            kernel.accounts.get(customer_id).map(|a| std::borrow::Cow::Borrowed(&**a))
        };
        let Some(account) = account else { return Ok(None) };
        let Some(view) = kernel::Kernel::balance_of(&account, now_ms) else { return Ok(None) };
        let dict = PyDict::new(py);
        if projected {
            dict.set_item("made", made_rows(credits::made_grants_of(&account)))?;
        }
        let grants: Vec<(String, i128, i128, i128, i128)> =
            view.grants.iter().map(|g| (g.id.clone(), g.amount, g.remaining, g.expired, g.drawn)).collect();
        dict.set_item("grants", grants)?;
        let held = credits::held_by_grant_of(&account);
        set_balance_totals(py, &dict, &view, held.iter().sum())?;
        dict.set_item("grants_held", held)?;
        Ok(Some(dict))
    }

    /// `balance(customer_id, now_ms, projected=True)` with the top-ups encoded (balance_wire.rs): "grants" in burn
    /// order, each a row (grant_id, amount, remaining, expired, drawn, held) or the bytes of a run of top-ups as
    /// tariff.v1.Balance `grants` entries; "top_ups_spent" where each run's spent entries lie (`EncodedRun::spent`'s
    /// bytes, a run's each); "top_ups_count" the entries of every run; "made" the ROLLOVER grants only;
    /// "top_ups_next_change_ms". None for an unknown customer; False where the rows must all be built from
    /// `balance` (`encoded_balance`'s None).
    fn balance_encoded<'py>(
        &self,
        py: Python<'py>,
        customer_id: &str,
        now_ms: i64,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let kernel = self.read()?;
        let Some(account) = kernel.account_read(customer_id, now_ms) else { return Ok(None) };
        let Some(view) = kernel::Kernel::balance_of(&account, now_ms) else { return Ok(None) };
        let Some(encoded) = crate::balance_wire::encoded_balance(&account, view, now_ms) else {
            return Ok(Some(false.into_pyobject(py)?.to_owned().into_any()));
        };
        let dict = PyDict::new(py);
        dict.set_item("made", made_rows(credits::made_rollovers_of(&account)))?;
        let list = PyList::empty(py);
        let spent = PyList::empty(py);
        let mut top_ups = 0;
        for part in encoded.parts {
            match part {
                GrantPart::Row(g, held) => {
                    list.append((g.id, g.amount, g.remaining, g.expired, g.drawn, held))?;
                }
                GrantPart::Encoded(run) => {
                    list.append(PyBytes::new(py, &run.bytes))?;
                    spent.append(PyBytes::new(py, &run.spent))?;
                    top_ups += run.count;
                }
            }
        }
        dict.set_item("grants", list)?;
        dict.set_item("top_ups_spent", spent)?;
        dict.set_item("top_ups_count", top_ups)?;
        dict.set_item("top_ups_next_change_ms", encoded.top_ups_next_change_ms)?;
        set_balance_totals(py, &dict, &encoded.view, encoded.held)?;
        Ok(Some(dict.into_any()))
    }

    /// The customer's usage, sorted: (aggregates, hour buckets). An aggregate is
    /// (period_start_ms, product_id, dimension values, quantity_e18, events, amount_picos,
    /// overage_picos, [(grant_id, drawn_picos)]); a bucket is (hour, product_id, dimension
    /// values, [(rate_card_id, version, quantity_e18, events, amount_picos)]).
    #[allow(clippy::type_complexity)]
    fn usage(&self, customer_id: &str) -> PyResult<Option<(Vec<AggregateRow>, Vec<BucketRow>)>> {
        let kernel = self.read()?;
        Ok(usage_rows(&kernel, customer_id))
    }

    /// The account state's bytes: the same state always encodes to the same bytes.
    /// The account state's bytes: the same state always encodes to the same bytes.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let encoded = py.detach(|| self.read().map(|k| k.snapshot()))?;
        Ok(PyBytes::new(py, &encoded))
    }

    /// `snapshot()` as consecutive parts of at most `part_bytes_max` bytes, for the server. Encoded under a
    /// shared lock, so reads go on meanwhile, and copied into the parts, with the GIL released (see
    /// `bytes_copied_detached`).
    fn snapshot_parts<'py>(&self, py: Python<'py>, part_bytes_max: usize) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        if part_bytes_max == 0 {
            return Err(PyValueError::new_err("part_bytes_max must be positive"));
        }
        let encoded = py.detach(|| self.read().map(|k| k.snapshot()))?;
        let parts = encoded.chunks(part_bytes_max).collect::<Vec<_>>();
        let copied = bytes_copied_detached(py, &parts, None)?;
        drop(parts);
        py.detach(|| drop(encoded));
        Ok(copied)
    }

    /// Turns on (or off) the listing of the customers accepted events touch (`take_touched`). The
    /// server turns it on only while someone watches a balance or an alert rule exists: off, ingestion
    /// does not even compare.
    fn track_touched(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        py.detach(|| self.change(|k| k.track_touched(on)))
    }

    /// The distinct customers with an accepted event since the last call, in first-touch order.
    fn take_touched(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.change(|k| k.take_touched()))
    }

    /// Records, from now on, what each accepted event of a batch rated as journal seq >= `from_seq`
    /// did, for ExplainLineItem (None stops): one record per product charged (see `take_explain`).
    fn set_explain(&self, py: Python<'_>, from_seq: Option<u64>) -> PyResult<()> {
        py.detach(|| self.change(|k| k.set_explain(from_seq)))
    }

    /// The explain records since the last call, as one bytes (layout in explain.rs), leaving none.
    fn take_explain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let records = py.detach(|| self.change(|k| k.take_explain()))?;
        let mut copied = bytes_copied_detached(py, &[&records], None)?;
        py.detach(|| drop(records));
        Ok(copied.pop().expect("one part"))
    }

    /// The index entries of explain records (of any number of batches, in journal order), leaving out
    /// seqs <= `after_seq`: (key, value) pairs sorted by key, one per (customer, period, line); key =
    /// explain_line_key(...) + the first seq it holds (8 bytes, big-endian), value = that line's event
    /// parts in journal order. ValueError for bytes that are not explain records.
    #[staticmethod]
    #[pyo3(signature = (records, after_seq = 0))]
    fn explain_entries<'py>(
        py: Python<'py>,
        records: &[u8],
        after_seq: u64,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let entries = py.detach(|| crate::explain::entries(records, after_seq)).map_err(PyValueError::new_err)?;
        Ok(entries.iter().map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v))).collect())
    }

    /// The 16-byte prefix of the index keys of one line's events: a digest of (customer, period start, line id).
    #[staticmethod]
    fn explain_line_key<'py>(
        py: Python<'py>,
        customer_id: &str,
        period_start_ms: i64,
        line_id: &str,
    ) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &crate::explain::line_key(customer_id, period_start_ms, line_id))
    }

    /// A kernel holding a snapshot's state (load tables before rating with it); `segments`, oldest first, the
    /// dedupe segments stored beside a snapshot made by `snapshot_segmented` (ValueError without them).
    #[staticmethod]
    #[pyo3(signature = (snapshot, segments = None))]
    fn restore(py: Python<'_>, snapshot: &[u8], segments: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<Kernel> {
        let views = Views::get(&segments.unwrap_or_default())?;
        let slices = views.slices();
        let kernel =
            py.detach(|| kernel::Kernel::restore_segmented(snapshot, &slices)).map_err(PyValueError::new_err)?;
        Ok(Kernel::wrap(kernel))
    }

    /// Starts (or stops) logging the dedupe table's changes, for `snapshot_segmented`; starting empties the log.
    fn record_dedupe_changes(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        py.detach(|| self.change(|k| k.record_dedupe_changes(on)))
    }

    /// The server's snapshot: the state without the dedupe table (`Kernel::snapshot_head`) in parts of at most
    /// `part_bytes_max` bytes, and this snapshot's dedupe segment, still to encode (`DedupeSegment.write_to`, on
    /// another thread): the table's changes since the last call, or with `base` the whole table (and the table
    /// logs its changes from then on; without `base`, RuntimeError if it does not). The changes
    /// are taken under the lock alone, the rest encoded under a shared lock (reads go on), the GIL released.
    fn snapshot_segmented<'py>(
        &self,
        py: Python<'py>,
        part_bytes_max: usize,
        base: bool,
    ) -> PyResult<(Vec<Bound<'py, PyBytes>>, DedupeSegment)> {
        if part_bytes_max == 0 {
            return Err(PyValueError::new_err("part_bytes_max must be positive"));
        }
        // A base starts the log the next snapshots' changes come from; changes need a log.
        let changes = py.detach(|| {
            self.change(|k| match base {
                true => {
                    k.record_dedupe_changes(true);
                    Ok(Vec::new())
                }
                false if k.dedupe_recording() => Ok(k.take_dedupe_changes()),
                false => Err(PyRuntimeError::new_err("the dedupe table's changes are not logged: a base is due")),
            })
        })??;
        let (head, segment, table_base_bytes) = py.detach(|| {
            self.read().map(|k| {
                let segment = if base {
                    Pending::Encoded(k.dedupe_base_segment(part_bytes_max))
                } else {
                    Pending::Changes(changes)
                };
                (k.snapshot_head(), segment, crate::snapshot::segment::base_bytes(k.dedupe_ids()))
            })
        })?;
        let parts = head.chunks(part_bytes_max).collect::<Vec<_>>();
        let copied = bytes_copied_detached(py, &parts, None)?;
        let spent = parking_lot::Mutex::new(None);
        Ok((copied, DedupeSegment { pending: parking_lot::Mutex::new(Some(segment)), spent, table_base_bytes }))
    }

    /// Takes back the log of changes an encoded `segment` was made from (nothing before its `write_to`, or for a
    /// base): the dedupe table's next changes are logged in its room, already in memory, instead of in pages
    /// new to the process.
    fn give_back_dedupe_log(&self, py: Python<'_>, segment: &DedupeSegment) -> PyResult<()> {
        let Some(changes) = segment.spent.lock().take() else { return Ok(()) };
        py.detach(|| self.change(|k| k.give_back_dedupe_changes(changes)))
    }

    /// Customers (sorted) with usage priced by the rate card from `from_hour` (Unix ms / 3,600,000)
    /// on: those a publish effective then re-rates.
    fn rerate_customers(&self, py: Python<'_>, rate_card_id: &str, from_hour: i64) -> PyResult<Vec<String>> {
        py.detach(|| self.read().map(|k| k.rerate_customers(rate_card_id, from_hour)))
    }

    /// Raises ValueError (naming the product and why) when these customers' usage cannot be
    /// re-rated once `version` (a VersionTable's msgpack) is published effective from `from_hour`;
    /// with `split_hours_refused`, also when it is in an hour holding a period boundary off the hour
    /// (naming the customer, the product and the hour); with `override_hours_refused`, also when it
    /// is in an hour holding the start or end of a matching override off the hour; `in_contract` as
    /// `rerate` will re-rate. Changes nothing.
    #[allow(clippy::too_many_arguments)]
    fn rerate_check(
        &self,
        py: Python<'_>,
        customers: Vec<String>,
        version: &[u8],
        from_hour: i64,
        split_hours_refused: bool,
        override_hours_refused: bool,
        in_contract: bool,
    ) -> PyResult<()> {
        self.read_with_version(py, version, |kernel, table| {
            kernel.rerate_check(&customers, table, from_hour, split_hours_refused, override_hours_refused, in_contract)
        })
    }

    /// A publish's plan a slice of customers at a time: those of `customers` (in the order given)
    /// with usage of the version's rate card from `from_hour` on, each checked as `rerate_check`
    /// checks (ValueError naming the product and why, `split_hours_refused` and
    /// `override_hours_refused` as there); changes
    /// nothing.
    #[allow(clippy::too_many_arguments)]
    fn rerate_plan_slice(
        &self,
        py: Python<'_>,
        customers: Vec<String>,
        version: &[u8],
        from_hour: i64,
        split_hours_refused: bool,
        override_hours_refused: bool,
        in_contract: bool,
    ) -> PyResult<Vec<String>> {
        self.read_with_version(py, version, |kernel, table| {
            kernel.rerate_plan_slice(
                &customers,
                table,
                from_hour,
                split_hours_refused,
                override_hours_refused,
                in_contract,
            )
        })
    }

    /// Re-rates these customers (rerate.rs) as record `seq`, one customer at a time under the lock,
    /// offering it to a waiting read between customers, with the GIL released. Returns (customers,
    /// buckets, events, amount_delta_picos, closed_buckets, closed_events, closed_amount_picos,
    /// the customers whose charges or draws changed, in the order given). `in_contract`: a period's
    /// run ends at its contract's end too (the server's publishes; reprice.rs `reprice`).
    /// `holds_in_time`: open holds are taken again at their place in time (resettle.rs `resettle`).
    /// `top_ups_in_time`: a top-up pays only its period's charges beyond those at which it was
    /// bought (resettle.rs `resettle`). `earlier_hours_carried`: an aggregate's first re-rated bucket
    /// carries what the hours before it were charged less than in time order (rerate.rs
    /// `earlier_hours_shortfall`). `closed_events_once`: closed_events counts an event feeding several
    /// products once, as events does (rerate.rs `Rerated::closed_events_once`); without it, once per
    /// product it fed, as publishes stored before it answered. `rolled_credit_breaks`: credit settling
    /// again gives back to a grant that has rolled over already breaks at once (rerate.rs
    /// `rerate_customer`); without it (publishes journaled before) it stays in the grant.
    /// `holds_final_at_ms` (the publish's time, under its rerate_holds_off_final_grants): a hold taken again
    /// takes from a grant that has rolled over, or expired by then, no more than it held there, and takes back
    /// its share on the ROLLOVER grant (resettle.rs `retake_hold`); None (publishes journaled before): as then.
    /// `unchanged_draws_kept` (the publish's rerate_keeps_unchanged_draws): a customer none of whose buckets
    /// changes amount keeps its draws as rated, not settled again (rerate.rs `rerate_customer`); without it
    /// (publishes journaled before) it is settled again by buckets, as then.
    /// ValueError: a customer that cannot be re-rated (those before it were); check first.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    #[pyo3(signature = (
        customers, rate_card_id, from_hour, seq, in_contract, holds_in_time, top_ups_in_time,
        earlier_hours_carried, closed_events_once, rolled_credit_breaks = false, holds_final_at_ms = None,
        unchanged_draws_kept = false
    ))]
    fn rerate<'py>(
        &self,
        py: Python<'py>,
        customers: Vec<String>,
        rate_card_id: &str,
        from_hour: i64,
        seq: u64,
        in_contract: bool,
        holds_in_time: bool,
        top_ups_in_time: bool,
        earlier_hours_carried: bool,
        closed_events_once: bool,
        rolled_credit_breaks: bool,
        holds_final_at_ms: Option<i64>,
        unchanged_draws_kept: bool,
    ) -> PyResult<(u64, u64, u64, Bound<'py, PyAny>, u64, u64, Bound<'py, PyAny>, Vec<String>)> {
        let (done, changed) = py
            .detach(|| {
                self.change(|kernel| {
                    kernel.returned_rolled_credit_breaks = rolled_credit_breaks;
                    kernel.rerate_holds_final_at_ms = holds_final_at_ms;
                    kernel.rerate_keeps_unchanged_draws = unchanged_draws_kept;
                    let mut done = crate::rerate::Rerated::default();
                    let mut changed = Vec::new();
                    for customer in &customers {
                        let one = kernel.rerate_customer(
                            customer,
                            rate_card_id,
                            from_hour,
                            seq,
                            in_contract,
                            holds_in_time,
                            top_ups_in_time,
                            earlier_hours_carried,
                        )?;
                        if one.amounts_changed > 0 {
                            changed.push(customer.clone());
                        }
                        done.add(&one);
                        RwLockWriteGuard::bump(kernel);
                    }
                    Ok::<_, String>((done, changed))
                })
            })?
            .map_err(PyValueError::new_err)?;
        let d = done;
        Ok((
            d.customers,
            d.buckets,
            d.events,
            big_int(py, d.amount_delta)?,
            d.closed_buckets,
            if closed_events_once { d.closed_events_once } else { d.closed_events },
            big_int(py, d.closed_amount)?,
            changed,
        ))
    }

    /// What `version` (a VersionTable's msgpack from engine/tables.py; a draft too) gives the usage
    /// of its rate card recorded in [start_ms, end_ms) for these customers (all when None): a list
    /// of (customer_id, product_id, current_picos, simulated_picos), sorted (the amounts as ints: summed over
    /// the window's periods, they may pass 128 bits). Changes nothing; read
    /// under the shared lock with the GIL released. ValueError names usage it cannot price.
    #[allow(clippy::type_complexity)]
    fn simulate<'py>(
        &self,
        py: Python<'py>,
        version: &[u8],
        start_ms: i64,
        end_ms: i64,
        customers: Option<Vec<String>>,
    ) -> PyResult<Vec<(String, String, Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let lines = self.read_with_version(py, version, |kernel, table| {
            kernel.simulate(table, start_ms, end_ms, customers.as_deref())
        })?;
        lines
            .into_iter()
            .map(|l| Ok((l.customer_id, l.product_id, big_int(py, l.current)?, big_int(py, l.simulated)?)))
            .collect()
    }

    /// The customer's adjustment entries, oldest first: (seq, hour, product_id, dimension values,
    /// rate_card_id, old versions, new version, quantity_e18, events, old_amount_picos,
    /// new_amount_picos).
    #[allow(clippy::type_complexity)]
    fn adjustments(&self, customer_id: &str) -> PyResult<Vec<AdjustmentRow>> {
        let kernel = self.read()?;
        Ok(adjustment_rows(&kernel, customer_id))
    }

    /// `usage` and `adjustments` of one customer under one lock: ExplainLineItem's read of a line and its
    /// adjustments, so that a re-rating slice applied meanwhile shows in both or in neither.
    fn usage_adjusted(&self, customer_id: &str) -> PyResult<(Option<UsageRows>, Vec<AdjustmentRow>)> {
        let kernel = self.read()?;
        Ok((usage_rows(&kernel, customer_id), adjustment_rows(&kernel, customer_id)))
    }
    /// The lines of the customer's period containing `at_ms`, from its buckets: (period_start_ms,
    /// period_end_ms, overage_price_e18, closed, lines sorted by product and dimension values, the grants
    /// started before the period's end with what usage through the period drew from them), None for a
    /// customer the tables do not name, ValueError when no contract of it covers `at_ms`; with them the customer's
    /// `adjustments` and `top_up_purchases`, all under one lock: an invoice's read (a draft's, off the writer, and a
    /// close's), so that a batch rated or a re-rating slice applied meanwhile shows in all of them or in none.
    /// `in_contract`: the version parts count the hours before the contract's end only (`Kernel::period_lines`).
    /// `read_ms`: a draft read at that time, which sees what the clock's record of what fell due by then will make.
    /// With
    /// `grant_credit` (first_rollover_ms, expiring) (`invoice::CreditWanted`), also the customer's grants'
    /// [(grant_id, credit_picos, breakage_picos)] in burn order (`invoice::grant_credit_of`) when the period's grants
    /// want them, from the same account as the lines; None otherwise.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (customer_id, at_ms, in_contract, read_ms=None, grant_credit=None))]
    fn invoice_read(
        &self,
        customer_id: &str,
        at_ms: i64,
        in_contract: bool,
        read_ms: Option<i64>,
        grant_credit: Option<(i64, bool)>,
    ) -> PyResult<(Option<PeriodTuple>, Vec<AdjustmentRow>, Vec<PurchaseRow>, Option<Vec<(String, i128, i128)>>)> {
        let kernel = self.read()?;
        let wanted = grant_credit.map(|(first_rollover_ms, expiring)| CreditWanted { first_rollover_ms, expiring });
        let found =
            period_found(kernel.period_read(customer_id, at_ms, in_contract, read_ms, wanted), customer_id, at_ms)?;
        let credit_rows = |rows: Vec<GrantCredit>| rows.into_iter().map(|g| (g.id, g.credit, g.breakage)).collect();
        let (period, credit) = found.map_or((None, None), |(p, c)| (Some(period_tuple(p)), c.map(credit_rows)));
        Ok((period, adjustment_rows(&kernel, customer_id), purchase_rows(&kernel, customer_id), credit))
    }

    /// Authorize with a hold (a change: the server journals it first). Returns (allowed, reason,
    /// message, estimated_cost, available, held, repeated, expires_at_ms). Raises
    /// ReservationConflict(message) when the id is known with another request (nothing changed).
    /// `ttl_defaulted`: the request named no TTL and `ttl_ms` is the one the server gave it, no part of the
    /// request (`credits::HoldTtl`); false, as Reserves stored before it, takes `ttl_ms` as named.
    /// `refunds_netted`: the usage's refunds netted with its charges (`Kernel::refunds_netted`; false, as
    /// Reserves stored before it).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[pyo3(signature = (
        customer_id, reservation_id, event_type, dimensions, values, now_ms, ttl_ms, ttl_defaulted = false,
        refunds_netted = false
    ))]
    fn reserve(
        &self,
        py: Python<'_>,
        customer_id: String,
        reservation_id: &str,
        event_type: String,
        dimensions: Vec<(String, String)>,
        values: Vec<(String, f64)>,
        now_ms: i64,
        ttl_ms: i64,
        ttl_defaulted: bool,
        refunds_netted: bool,
    ) -> PyResult<(bool, &'static str, String, i128, i128, i128, bool, i64)> {
        let event = wire::UsageEvent {
            transaction_id: "authorize".into(),
            customer_id,
            event_type,
            timestamp_ms: now_ms,
            dimensions: dimensions.into_iter().map(|(key, value)| wire::DimensionEntry { key, value }).collect(),
            values: values.into_iter().map(|(key, value)| wire::ValueEntry { key, value }).collect(),
            reservation_id: String::new(),
        };
        let ttl = if ttl_defaulted { HoldTtl::Defaulted(ttl_ms) } else { HoldTtl::Named(ttl_ms) };
        let done = py.detach(|| {
            self.change(|k| {
                k.refunds_netted = refunds_netted;
                k.reserve(reservation_id, &event, now_ms, ttl)
            })
        })?;
        let r = done.map_err(ReservationConflict::new_err)?;
        let d = r.decision;
        Ok((d.allowed, d.reason, d.message, d.cost, d.available, r.held, r.repeated, r.expires_at_ms))
    }

    /// Frees an open reservation: (credits given back, repeated). Raises ReservationNotFound or
    /// ReservationEnded(message), having changed nothing. `expired_credit_breaks`: as
    /// `Kernel::release`'s (false: as releases stored before it).
    #[pyo3(signature = (customer_id, reservation_id, now_ms, expired_credit_breaks = false))]
    fn release(
        &self,
        py: Python<'_>,
        customer_id: &str,
        reservation_id: &str,
        now_ms: i64,
        expired_credit_breaks: bool,
    ) -> PyResult<(i128, bool)> {
        let breaks = expired_credit_breaks;
        match py.detach(|| self.change(|k| k.release(customer_id, reservation_id, now_ms, breaks)))? {
            Ok(done) => Ok(done),
            Err(ReleaseRefusal::NotFound(message)) => Err(ReservationNotFound::new_err(message)),
            Err(ReleaseRefusal::Ended(message)) => Err(ReservationEnded::new_err(message)),
        }
    }

    /// Sets the customer's top-up policy (threshold and recharge_to in picos, price per credit at
    /// 10^-18), or clears it with None. False for a customer the kernel does not know.
    fn set_top_up(&self, py: Python<'_>, customer_id: &str, policy: Option<(i128, i128, i128, u32)>) -> PyResult<bool> {
        let policy = policy.map(|(threshold, recharge_to, price_per_credit_e18, max_per_period)| TopUpPolicy {
            threshold,
            recharge_to,
            price_per_credit_e18,
            max_per_period,
        });
        py.detach(|| self.change(|k| k.set_top_up(customer_id, policy)))
    }

    /// Moves one grant's expiry to `expires_at_ms` and reschedules what is due (ExpireGrant: engine/grants.py
    /// checks its rules). False, changing nothing, for an unknown customer or grant.
    fn set_grant_expiry(
        &self,
        py: Python<'_>,
        customer_id: &str,
        grant_id: &str,
        expires_at_ms: i64,
    ) -> PyResult<bool> {
        py.detach(|| self.change(|k| k.set_grant_expiry(customer_id, grant_id, expires_at_ms)))
    }

    /// The customer's top-up policy (threshold, recharge_to, price_per_credit_e18, max_per_period) or None.
    fn top_up_policy(&self, customer_id: &str) -> PyResult<Option<(i128, i128, i128, u32)>> {
        let kernel = self.read()?;
        let policy = kernel.account_credits(customer_id).and_then(|c| c.top_up);
        Ok(policy.map(|p| (p.threshold, p.recharge_to, p.price_per_credit_e18, p.max_per_period)))
    }

    /// Top-ups bought: [(period_start_ms, grant_id, credits_picos, price_per_credit_e18, cost_e30, at_ms)].
    #[allow(clippy::type_complexity)]
    fn top_up_purchases(&self, customer_id: &str) -> PyResult<Vec<PurchaseRow>> {
        let kernel = self.read()?;
        Ok(purchase_rows(&kernel, customer_id))
    }

    /// Grants the kernel made: [(grant_id, kind, amount, priority, starts_at_ms, expires_at_ms, cost_e30,
    /// rolled_from, made_at_ms)]; kind "TOP_UP" (cost_e30: what it cost; rolled_from "") or "ROLLOVER"
    /// (cost_e30 0: its cost basis is the grant it rolled from).
    #[allow(clippy::type_complexity)]
    fn made_grants(
        &self,
        customer_id: &str,
    ) -> PyResult<Vec<(String, &'static str, i128, i64, i64, Option<i64>, i128, String, i64)>> {
        let kernel = self.read()?;
        Ok(made_rows(kernel.made_grants(customer_id)))
    }

    /// Breakage recorded: [(customer_id, grant_id, period_start_ms, breakage_picos, at_ms)], for one
    /// customer or (None) all, customers sorted, each in the order recorded.
    #[allow(clippy::type_complexity)]
    fn breakage(&self, customer_id: Option<&str>) -> PyResult<Vec<(String, String, i64, i128, i64)>> {
        let kernel = self.read()?;
        let mut customers: Vec<&str> = match customer_id {
            Some(id) => kernel.accounts.get_key_value(id).map(|(k, _)| k.as_str()).into_iter().collect(),
            None => kernel.accounts.keys().map(|k| k.as_str()).collect(),
        };
        customers.sort_unstable();
        let mut rows = Vec::new();
        for customer in customers {
            for b in kernel.account_credits(customer).map_or(&[][..], |c| &c.breakage) {
                rows.push((customer.to_owned(), b.grant_id.to_string(), b.period_start_ms, b.credits, b.at_ms));
            }
        }
        Ok(rows)
    }

    /// (`made_grants`, `breakage`) of one customer as a read at now_ms sees them (Kernel::account_read): with the
    /// rollovers and expiries due by then and not recorded yet as the clock's AdvanceClock will record them (the
    /// revenue report's, so that it counts them as GetBalance shows them). Empty for an unknown customer.
    #[allow(clippy::type_complexity)]
    fn credits_read(&self, customer_id: &str, now_ms: i64) -> PyResult<(Vec<MadeRow>, Vec<BreakageRow>)> {
        let kernel = self.read()?;
        Ok(credits_rows(&kernel, customer_id, now_ms))
    }

    /// A customer's `usage` aggregates and `credits_read` at now_ms under one lock: the revenue report's read of
    /// it, so that a batch rated meanwhile (its draws, the top-ups it bought) shows in all of it or in none.
    fn revenue_read(
        &self,
        customer_id: &str,
        now_ms: i64,
    ) -> PyResult<(Vec<AggregateRow>, Vec<MadeRow>, Vec<BreakageRow>)> {
        let kernel = self.read()?;
        let aggregates = usage_rows(&kernel, customer_id).map_or_else(Vec::new, |(aggregates, _)| aggregates);
        let (made, breakage) = credits_rows(&kernel, customer_id, now_ms);
        Ok((aggregates, made, breakage))
    }

    /// Open reservations of a customer: [(reservation_id, amount, held, made_at_ms, expires_at_ms)].
    #[allow(clippy::type_complexity)]
    fn reservations(&self, customer_id: &str) -> PyResult<Vec<(String, i128, i128, i64, i64)>> {
        let kernel = self.read()?;
        let Some(credits) = kernel.account_credits(customer_id) else { return Ok(Vec::new()) };
        Ok(credits
            .open
            .iter()
            .map(|(id, r)| (id.to_string(), r.amount, r.held_total(), r.made_at_ms, r.expires_at_ms))
            .collect())
    }

    /// Moves the kernel's clock to now_ms (a journaled change): expires reservations whose TTL ran
    /// out and records breakage of expired grants. Returns (reservations expired, breakage entries,
    /// the customers, sorted, of which a grant expired or rolled over).
    /// Offers the lock to a waiting read every few dozen accounts, as ingestion does every few dozen
    /// events. `rollover_ids_distinct`, `rollover_lasts_next_period`: the AdvanceClock record's
    /// (engine/commands.py); False names the ROLLOVER grants it makes, and bounds their use, as records of
    /// earlier releases did (crate::credits::RolloverIds, RolloverWindow).
    fn advance_clock(
        &self,
        py: Python<'_>,
        now_ms: i64,
        rollover_ids_distinct: bool,
        rollover_lasts_next_period: bool,
    ) -> PyResult<(u32, u32, Vec<String>)> {
        let ids = if rollover_ids_distinct { RolloverIds::Distinct } else { RolloverIds::AsRecordedBefore };
        let window =
            if rollover_lasts_next_period { RolloverWindow::NextPeriod } else { RolloverWindow::AsRecordedBefore };
        let rules = Rollovers { ids, window };
        py.detach(|| {
            // The accounts are found under an upgradable read (reads go on, no change comes between),
            // then advanced under the lock alone.
            let guard = self.inner.upgradable_read();
            self.check_poisoned()?;
            let Some(due) = guard.due_accounts(now_ms) else { return Ok((0, 0, Vec::new())) };
            let mut guard = RwLockUpgradableReadGuard::upgrade(guard);
            let armed = Unfinished(&self.poisoned);
            let advanced = crate::credits::advance_clock_pausing(&mut guard, now_ms, due, rules, |held| {
                RwLockWriteGuard::bump(held)
            });
            std::mem::forget(armed);
            let customers = advanced.grants_ended.into_iter().map(String::from).collect();
            Ok((advanced.reservations_expired, advanced.breakage_entries, customers))
        })
    }

    /// (the kernel's clock, the earliest time something is due or None).
    /// The GIL is released while waiting for the lock: the server's clock driver asks this on the event
    /// loop every few tens of ms, and a batch being rated holds the lock for milliseconds.
    fn clock(&self, py: Python<'_>) -> PyResult<(i64, Option<i64>)> {
        py.detach(|| {
            let kernel = self.read()?;
            let due = kernel.clock_due_ms();
            Ok((kernel.clock.now_ms, (due != i64::MAX).then_some(due)))
        })
    }

    /// The earliest time something is due, exactly, from the index of due times (None: nothing), in
    /// O(log n): the server's clock driver journals an AdvanceClock once this time has come. `clock()`
    /// may answer earlier (a lower bound: a hold settled since, for one), when an AdvanceClock would still
    /// be applied.
    fn next_due(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        py.detach(|| Ok(self.read()?.next_due_ms()))
    }

    /// The earliest time an ended reservation leaves the dedupe window, exactly (None: none ended), in
    /// O(log n): an AdvanceClock then forgets it (the server's clock driver journals one once this time has
    /// come, as for `next_due`; `clock()` counts it).
    fn next_forget(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        py.detach(|| Ok(self.read()?.next_forget_ms()))
    }

    /// The earlier of `next_due()` and, with `forget`, `next_forget()`, in one call (the writer asks before
    /// every group: one hand-over of the GIL, not two).
    fn next_clock_work(&self, py: Python<'_>, forget: bool) -> PyResult<Option<i64>> {
        py.detach(|| Ok(self.read()?.next_clock_work_ms(forget)))
    }

    /// Raises ValueError when the index of due times differs from a walk of every account (tests).
    fn check_due_index(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.read()?.check_due_index().map_err(PyValueError::new_err))
    }

    /// The notices since the last call, oldest first: [(kind, customer_id, details)], kind
    /// "TOP_UP_EXECUTED" (details: grant_id, credits_picos, period_start_ms, at_ms) or
    /// "RESERVATION_EXPIRED" (details: reservation_id, released_picos, period_start_ms, at_ms); and
    /// how many were dropped because more than NOTICES_MAX waited.
    #[allow(clippy::type_complexity)]
    fn drain_notices<'py>(&self, py: Python<'py>) -> PyResult<(Vec<(&'static str, String, Bound<'py, PyDict>)>, u64)> {
        let (notices, dropped) = self.change(|k| k.drain_notices())?;
        let mut out = Vec::with_capacity(notices.len());
        for n in notices {
            let details = PyDict::new(py);
            let (id_key, amount_key) = if n.kind == "TOP_UP_EXECUTED" {
                ("grant_id", "credits_picos")
            } else {
                ("reservation_id", "released_picos")
            };
            details.set_item(id_key, n.id)?;
            details.set_item(amount_key, n.amount)?;
            details.set_item("period_start_ms", n.period_start_ms)?;
            details.set_item("at_ms", n.at_ms)?;
            out.push((n.kind, n.customer_id, details));
        }
        Ok((out, dropped))
    }

    /// The distinct customer ids a UsageBatch's events name, in the order first named (touch.rs), read
    /// with the GIL released; changes nothing. ValueError when the bytes are not a UsageBatch.
    fn batch_customers(&self, py: Python<'_>, batch: &[u8]) -> PyResult<Vec<String>> {
        py.detach(|| crate::touch::batch_customers(batch)).map_err(PyValueError::new_err)
    }

    /// AuthorizeBatches on raw bytes at now_ms, one decision per request, priced as `authorize`. A message
    /// without a hold request gives (AuthorizeBatchResult bytes, decisions). A message with one gives
    /// (HoldingBatch, decisions): the other requests decided now, the holds (TTL checked against
    /// `ttl_max_ms`, an unnamed one named from `id_seed` and `message_number`) for the server to journal as
    /// one command and apply with `reserve_batch`. Refuses the whole message, deciding nothing:
    /// BatchNotDecodable(field, message) when the bytes are not an AuthorizeBatch (field: where prost refused
    /// them, `requests[2].customer_id`; empty for the message's framing), CustomerNotAllowed(index,
    /// customer_id) for a customer outside `allowed` (None: every customer), BatchTooLarge(requests) past
    /// `requests_max`, RequestIdMissing(index), RequestIdTooLong(index).
    #[allow(clippy::too_many_arguments)]
    fn authorize_batch_holding<'py>(
        &self,
        py: Python<'py>,
        batch: &[u8],
        now_ms: i64,
        requests_max: usize,
        allowed: Option<Vec<String>>,
        ttl_max_ms: i64,
        id_seed: &[u8],
        message_number: u64,
    ) -> PyResult<(Bound<'py, PyAny>, usize)> {
        // A message that asks for no hold is read in place and answered as it is decided.
        let plain = authorize::answer_plain(&*self.read()?, batch, requests_max, allowed.as_deref(), now_ms);
        if let Some(answered) = plain {
            let (result, decisions) = answered.map_err(refused)?;
            return Ok((PyBytes::new(py, &result).into_any(), decisions));
        }
        let requests = holds::decode(batch, requests_max, allowed.as_deref()).map_err(refused)?;
        let decisions = requests.len();
        let rules = holds::HoldRules { ttl_max_ms, id_seed, message_number };
        let split = holds::split(&*self.read()?, requests, now_ms, &rules);
        if split.holds.is_empty() {
            let responses = split.answers.into_iter().map(|a| a.expect("no hold, so every request is answered"));
            let result = PyBytes::new(py, &authorize::encode_result(responses.collect()));
            return Ok((result.into_any(), decisions));
        }
        let holding = HoldingBatch {
            result_bytes_most: holds::result_bytes_most(&split.answers, &split.holds),
            requests: holds::encode_holds(split.holds),
            ttl_default_ms: split.ttl_default_ms,
            answers: parking_lot::Mutex::new(Some(split.answers)),
        };
        Ok((Bound::new(py, holding)?.into_any(), decisions))
    }

    /// The distinct customer ids of a ReserveBatch's `requests` (an AuthorizeBatch), first named first:
    /// the customers a pending re-rating re-rates before the holds apply. ValueError when the bytes are
    /// not an AuthorizeBatch; changes nothing.
    fn hold_customers(&self, requests: &[u8]) -> PyResult<Vec<String>> {
        let mut customers: Vec<String> = Vec::new();
        for request in holds::decode_holds(requests).map_err(PyValueError::new_err)? {
            if !customers.contains(&request.customer_id) {
                customers.push(request.customer_id);
            }
        }
        Ok(customers)
    }

    /// Applies a HoldingBatch's `requests` (a change: the server journals it first) at now_ms, each as
    /// `reserve` applies one, in order: (the holds' AuthorizeBatchResult bytes, holds placed, their customers
    /// in first-appearance order). A request that cannot hold is answered in-band. `ttl_default_ms`: the
    /// HoldingBatch's, the TTL of a request naming none (0, as ReserveBatches stored before it: each request
    /// names its own). ValueError (nothing changed) when the bytes are not an AuthorizeBatch.
    /// `refunds_netted`: as `reserve`'s (false, as ReserveBatches stored before it).
    #[pyo3(signature = (requests, now_ms, ttl_default_ms = 0, refunds_netted = false))]
    fn reserve_batch<'py>(
        &self,
        py: Python<'py>,
        requests: &[u8],
        now_ms: i64,
        ttl_default_ms: i64,
        refunds_netted: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, u32, Vec<String>)> {
        let requests = holds::decode_holds(requests).map_err(PyValueError::new_err)?;
        let done = py.detach(|| {
            self.change(|k| {
                k.refunds_netted = refunds_netted;
                k.reserve_batch(requests, now_ms, ttl_default_ms)
            })
        })?;
        let result = PyBytes::new(py, &authorize::encode_result(done.responses));
        Ok((result, done.placed, done.customers))
    }
}

/// An AuthorizeBatch whose hold requests wait for the writer: `requests` (an AuthorizeBatch of them, as
/// journaled), and the other requests' answers, already decided.
/// A snapshot's dedupe segment (`Kernel.snapshot_segmented`), encoded once by `write_to`.
#[pyclass(frozen, module = "engine._kernel")]
struct DedupeSegment {
    pending: parking_lot::Mutex<Option<Pending>>,
    /// The log of changes once encoded, for `Kernel.give_back_dedupe_log`.
    spent: parking_lot::Mutex<Option<Vec<crate::dedupe::Change>>>,
    /// The bytes a base of the whole table would take at this snapshot: what the stored segments are weighed
    /// against before they are merged.
    #[pyo3(get)]
    table_base_bytes: usize,
}

enum Pending {
    Changes(Vec<crate::dedupe::Change>),
    /// A base, in `snapshot_segmented`'s parts.
    Encoded(Vec<Vec<u8>>),
}

#[pymethods]
impl DedupeSegment {
    /// The segment handed to `write` (a Python callable) a part of at most `part_bytes_max` bytes at a time, as
    /// each is made, the GIL released in between (sorting the changes and encoding); the segment's bytes. One
    /// part is in memory at a time, in room reused from part to part: a whole segment built, then copied into
    /// bytes, took pages new to the process for twice the segment at every snapshot (40 MB a million changes).
    /// What `write` raises ends it and is raised here; RuntimeError on a second call.
    fn write_to(&self, py: Python<'_>, write: Bound<'_, PyAny>, part_bytes_max: usize) -> PyResult<usize> {
        if part_bytes_max == 0 {
            return Err(PyValueError::new_err("part_bytes_max must be positive"));
        }
        let pending = self.pending.lock().take().ok_or_else(|| PyRuntimeError::new_err("written already"))?;
        let write = write.unbind();
        let send = python_sink(&write);
        match pending {
            Pending::Changes(mut changes) => {
                let written = py.detach(|| {
                    crate::snapshot::segment::write_changes(&mut changes, &mut Chunks::new(part_bytes_max, send))
                });
                *self.spent.lock() = Some(changes);
                written
            }
            Pending::Encoded(parts) => py.detach(|| {
                let mut out = Chunks::new(part_bytes_max, send);
                parts.iter().try_for_each(|part| out.put(part))?;
                out.finish()
            }),
        }
    }
}

/// A segment's sink that hands each part to `write` (a Python callable) as bytes, taking the GIL for the call:
/// the encoding around it runs with the GIL released.
fn python_sink(write: &Py<PyAny>) -> impl FnMut(&mut Vec<u8>) -> PyResult<()> + '_ {
    |part| Python::attach(|py| write.bind(py).call1((PyBytes::new(py, part),)).map(drop))
}

/// Read-only views of bytes-like objects (bytes, or the server's read-only maps of segment files), read with the
/// GIL released: a segment file is read through the page cache, not copied onto the heap.
struct Views(Vec<pyo3::buffer::PyBuffer<u8>>);

impl Views {
    fn get(objects: &[Bound<'_, PyAny>]) -> PyResult<Views> {
        let mut buffers = Vec::with_capacity(objects.len());
        for object in objects {
            let buffer = pyo3::buffer::PyBuffer::<u8>::get(object)?;
            if !buffer.is_c_contiguous() {
                return Err(PyValueError::new_err("a dedupe segment must be one contiguous buffer"));
            }
            buffers.push(buffer);
        }
        Ok(Views(buffers))
    }

    fn slices(&self) -> Vec<&[u8]> {
        let slice = |buffer: &pyo3::buffer::PyBuffer<u8>| {
            // SAFETY: the buffer is C-contiguous (checked in `get`), of `len_bytes` bytes, and held by `self`, so
            // its memory stays valid and in place while the slice (which borrows `self`) lives. Nothing writes it
            // meanwhile: the server passes bytes (immutable) or read-only maps of segment files, which are written
            // once, before any snapshot lists them, and never again.
            unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) }
        };
        self.0.iter().map(slice).collect()
    }
}

/// Dedupe segments (oldest first) merged into one, the server's compaction: with `base` (the oldest is a base)
/// removals are dropped. Each part of at most `part_bytes_max` bytes is handed to `write` (a Python callable) as
/// it is made, the GIL released in between, so the merged segment (the whole table, at a compaction after a base)
/// is never in memory whole. Returns its bytes; ValueError for bytes that are not segments; what `write` raises
/// ends it and is raised here.
#[pyfunction]
fn merge_dedupe_segments_to<'py>(
    py: Python<'py>,
    segments: Vec<Bound<'py, PyAny>>,
    base: bool,
    part_bytes_max: usize,
    write: Bound<'py, PyAny>,
) -> PyResult<usize> {
    if part_bytes_max == 0 {
        return Err(PyValueError::new_err("part_bytes_max must be positive"));
    }
    let views = Views::get(&segments)?;
    let slices = views.slices();
    let layers = crate::snapshot::segment::read_all(&slices).map_err(PyValueError::new_err)?;
    let write = write.unbind();
    let send = python_sink(&write);
    py.detach(|| crate::snapshot::segment::write_merged(&layers, base, &mut Chunks::new(part_bytes_max, send)))
}

#[pyclass(frozen, module = "engine._kernel")]
struct HoldingBatch {
    #[pyo3(get)]
    requests: Vec<u8>,
    /// The TTL its requests naming none hold for (they are journaled naming none), for ReserveBatch to journal.
    #[pyo3(get)]
    ttl_default_ms: i64,
    /// The most bytes `finish`'s result can take with every answer's message left out (`holds::result_bytes_most`):
    /// the server refuses a message whose answer might not fit its gRPC message limit before journaling its holds.
    #[pyo3(get)]
    result_bytes_most: usize,
    answers: parking_lot::Mutex<Option<Vec<Option<wire::AuthorizeResponse>>>>,
}

#[pymethods]
impl HoldingBatch {
    /// The message's AuthorizeBatchResult bytes, the holds' answers (`reserve_batch`'s result bytes) put
    /// in their places. Once only: a second call raises RuntimeError.
    fn finish<'py>(&self, py: Python<'py>, held: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let held = wire::AuthorizeBatchResult::decode(held).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let answers = self.answers.lock().take().ok_or_else(|| PyRuntimeError::new_err("already finished"))?;
        let result = holds::merge(answers, held.responses).map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, &result))
    }
}

/// (start_ms, end_ms) of the monthly period anchored on `anchor_ms` that contains `ts_ms` (before the anchor
/// too, the calendar extrapolated backwards; see `route::period_containing` for its domain): the calendar the
/// kernel rates by.
#[pyfunction]
fn period_containing(anchor_ms: i64, ts_ms: i64) -> (i64, i64) {
    crate::route::period_containing(anchor_ms, ts_ms)
}

/// The explain index's block of explain records buffers (in journal order; records of seqs <= `after_seq` left
/// out), layout in explain_block.rs: (block number, chunks, periods), the lists of (key, value) sorted by key,
/// ready for LMDB puts; block 0 and empty lists when no record is left. Built and copied into the answer's bytes
/// with the GIL released, by a builder kept across calls (its working arrays reused; a second caller at the same
/// time builds with one of its own); `pause`, when given, is called every PAUSE_EVERY_OBJECTS objects made (see
/// `bytes_copied_detached`). ValueError for bytes that are not explain records.
#[pyfunction]
#[pyo3(signature = (records, after_seq, chunk_bytes, pause = None))]
#[allow(clippy::type_complexity)]
fn explain_block<'py>(
    py: Python<'py>,
    records: Vec<Bound<'py, PyBytes>>,
    after_seq: u64,
    chunk_bytes: usize,
    pause: Option<Bound<'py, PyAny>>,
) -> PyResult<(u64, Bound<'py, PyList>, Bound<'py, PyList>)> {
    static SHARED: parking_lot::Mutex<crate::explain_block::Builder> =
        parking_lot::const_mutex(crate::explain_block::Builder::new());
    let buffers: Vec<&[u8]> = records.iter().map(|b| b.as_bytes()).collect();
    // try_lock with the GIL held: waiting for the builder here could wait on a holder that waits for the GIL.
    let mut own = None;
    let mut shared = SHARED.try_lock();
    let builder = match shared.as_deref_mut() {
        Some(builder) => builder,
        None => own.insert(crate::explain_block::Builder::new()),
    };
    let block = py.detach(|| builder.build(&buffers, after_seq, chunk_bytes)).inspect_err(|_| builder.trim());
    let block = block.map_err(PyValueError::new_err)?;
    // Keys and values alternate, chunks first: about 10 MB for a second of ingest at 150,000 events/s, copied
    // (and the builder trimmed) with the GIL released; only the objects are made with it held.
    let sources: Vec<&[u8]> = builder.chunks().chain(builder.periods()).flat_map(|(k, v)| [k, v]).collect();
    let chunks = builder.chunks().count();
    let mut copied = bytes_copied_detached(py, &sources, pause.as_ref())?.into_iter();
    drop(sources);
    let mut pairs = |count: usize| -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        while list.len() < count {
            let (Some(key), Some(value)) = (copied.next(), copied.next()) else { break };
            list.append((key, value))?;
            if let Some(pause) = pause.as_ref().filter(|_| list.len() % PAUSE_EVERY_OBJECTS == 0) {
                pause.call0()?;
            }
        }
        Ok(list)
    };
    let built = (block, pairs(chunks)?, pairs(usize::MAX)?);
    py.detach(|| builder.trim());
    Ok(built)
}

/// How many Python objects `explain_block` makes between two calls of its `pause`.
const PAUSE_EVERY_OBJECTS: usize = 256;

/// Python bytes holding copies of `sources`, copied with the GIL released: the objects are allocated with it
/// held (no page of them touched yet), and filled without it. Copying megabytes into Python objects faults their
/// pages in, milliseconds in which no other thread runs Python: the event loop would wait for the GIL (and
/// offering it between copies does not hand it over: a thread that gives the GIL up and takes it back at once
/// keeps it, as a waiter takes tens of microseconds to wake). Making ten thousand objects still holds it for a
/// millisecond or more: `pause` (a Python callable) is called every PAUSE_EVERY_OBJECTS objects, to hand it over.
fn bytes_copied_detached<'py>(
    py: Python<'py>,
    sources: &[&[u8]],
    pause: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let mut copies = Vec::with_capacity(sources.len());
    let mut targets = Vec::with_capacity(sources.len());
    for (index, source) in sources.iter().enumerate() {
        if let Some(pause) = pause.filter(|_| index % PAUSE_EVERY_OBJECTS == PAUSE_EVERY_OBJECTS - 1) {
            pause.call0()?;
        }
        let size = ffi::Py_ssize_t::try_from(source.len()).map_err(|_| PyValueError::new_err("too large"))?;
        // SAFETY: a new bytes object of `size` bytes, contents uninitialised; owned here (or an error raised).
        let copy = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))? };
        // SAFETY: the object is a bytes object (just made): its buffer holds `size` bytes.
        targets.push(unsafe { ffi::PyBytes_AsString(copy.as_ptr()) } as usize);
        // SAFETY: PyBytes_FromStringAndSize made a bytes object.
        copies.push(unsafe { copy.cast_into_unchecked::<PyBytes>() });
    }
    py.detach(|| {
        for (source, target) in sources.iter().zip(targets) {
            // SAFETY: each target is the buffer of a bytes object made above, of the source's length, kept alive
            // by `copies` and seen by no other thread until returned: nothing reads it while it is written.
            unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), target as *mut u8, source.len()) };
        }
    });
    Ok(copies)
}

/// The 16-byte prefix of the explain index's entries of one customer's period (explain_block.rs).
#[pyfunction]
fn explain_period_key<'py>(py: Python<'py>, customer_id: &str, period_start_ms: i64) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &crate::explain_block::period_key(customer_id, period_start_ms))
}

/// The event parts of one line (its 16-byte key) in an explain index chunk: (parts concatenated, how many, whether
/// the chunk goes on past the line). `period`: for a chunk of layout 2, the value of its block's entry for the
/// line's (customer, period); None for layout 1 (explain_chunk.rs). ValueError for bytes that are not a chunk.
#[pyfunction]
#[pyo3(signature = (chunk, line_key, period = None))]
fn explain_chunk_line<'py>(
    py: Python<'py>,
    chunk: &[u8],
    line_key: &[u8],
    period: Option<&[u8]>,
) -> PyResult<(Bound<'py, PyBytes>, u32, bool)> {
    let found = crate::explain_chunk::chunk_line(chunk, line_key, period).map_err(PyValueError::new_err)?;
    let (parts, count, past) = found;
    Ok((PyBytes::new(py, &parts), count, past))
}

#[pymodule]
fn _kernel(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Kernel>()?;
    module.add("BatchTooLarge", module.py().get_type::<BatchTooLarge>())?;
    module.add("BatchIdTooLong", module.py().get_type::<BatchIdTooLong>())?;
    module.add("BatchNotDecodable", module.py().get_type::<BatchNotDecodable>())?;
    module.add("CustomerNotAllowed", module.py().get_type::<CustomerNotAllowed>())?;
    module.add("RequestIdMissing", module.py().get_type::<RequestIdMissing>())?;
    module.add("RequestIdTooLong", module.py().get_type::<RequestIdTooLong>())?;
    module.add("ReservationConflict", module.py().get_type::<ReservationConflict>())?;
    module.add("ReservationNotFound", module.py().get_type::<ReservationNotFound>())?;
    module.add("ReservationEnded", module.py().get_type::<ReservationEnded>())?;
    module.add_function(wrap_pyfunction!(period_containing, module)?)?;
    module.add_class::<HoldingBatch>()?;
    module.add_class::<DedupeSegment>()?;
    module.add_function(wrap_pyfunction!(merge_dedupe_segments_to, module)?)?;
    module.add_function(wrap_pyfunction!(explain_block, module)?)?;
    module.add_function(wrap_pyfunction!(explain_period_key, module)?)?;
    module.add_function(wrap_pyfunction!(explain_chunk_line, module)?)?;
    Ok(())
}

/// `Kernel.usage`'s rows: (period_start_ms, product_id, dimension values, quantity_e18, events, amount_picos,
/// overage_picos, [(grant_id, drawn_picos)]) and (hour, product_id, dimension values, [(rate_card_id, version,
/// quantity_e18, events, amount_picos)]).
type AggregateRow = (i64, String, Vec<String>, i128, u64, i128, i128, Vec<(String, i128)>);
type BucketRow = (i64, String, Vec<String>, Vec<(String, u32, i128, u64, i128)>);
type UsageRows = (Vec<AggregateRow>, Vec<BucketRow>);
/// `made_grants`' and `breakage`'s rows.
type MadeRow = (String, &'static str, i128, i64, i64, Option<i64>, i128, String, i64);
type BreakageRow = (String, String, i64, i128, i64);

/// A period read's answer: None for a customer the tables do not name, ValueError when no contract covers `at_ms`.
fn period_found<T>(read: Result<T, NoLines>, customer_id: &str, at_ms: i64) -> PyResult<Option<T>> {
    match read {
        Ok(found) => Ok(Some(found)),
        Err(NoLines::UnknownCustomer) => Ok(None),
        Err(NoLines::NoContract) => {
            Err(PyValueError::new_err(format!("no contract of {customer_id:?} covers {at_ms}")))
        }
    }
}

/// `Kernel.invoice_read`'s tuple of a period's lines.
fn period_tuple(period: PeriodLines) -> PeriodTuple {
    let lines = period
        .lines
        .into_iter()
        .map(|l| {
            let parts = l.parts.into_iter().map(|p| (p.rate_card, p.version, p.quantity, p.events, p.amount)).collect();
            (l.product_id, l.dimensions, l.quantity, l.events, l.amount, l.overage, l.credits, parts)
        })
        .collect();
    let grants = period.grants.into_iter().map(|g| (g.id, g.amount, g.drawn, g.expires_at_ms, g.rolled)).collect();
    (period.period_start_ms, period.period_end_ms, period.overage_price, period.closed, lines, grants)
}

/// `Kernel.top_up_purchases`' rows: (period_start_ms, grant_id, credits, price_per_credit_e18, cost_e30, at_ms).
type PurchaseRow = (i64, String, i128, i128, i128, i64);

/// `Kernel.top_up_purchases`' rows of one customer, read under the caller's lock.
fn purchase_rows(kernel: &kernel::Kernel, customer_id: &str) -> Vec<PurchaseRow> {
    let Some(credits) = kernel.account_credits(customer_id) else { return Vec::new() };
    credits
        .purchases
        .iter()
        .map(|p| (p.period_start_ms, p.grant_id.to_string(), p.credits, p.price_per_credit_e18, p.cost_e30, p.at_ms))
        .collect()
}

/// `Kernel.adjustments`' rows: (seq, hour, product_id, dimension values, rate_card_id, old versions, new version,
/// quantity_e18, events, old_amount_picos, new_amount_picos).
type AdjustmentRow = (u64, i64, String, Vec<String>, String, Vec<u32>, u32, i128, u64, i128, i128);

/// `Kernel.adjustments`' rows of one customer (see it), read under the caller's lock.
fn adjustment_rows(kernel: &kernel::Kernel, customer_id: &str) -> Vec<AdjustmentRow> {
    let text = |sym: u32| kernel.text(sym).to_owned();
    kernel
        .adjustments(customer_id)
        .iter()
        .map(|a| {
            let dimensions = a.dimensions.iter().map(|s| text(*s)).collect();
            (
                a.seq,
                a.hour,
                text(a.product),
                dimensions,
                text(a.rate_card),
                a.old_versions.clone(),
                a.new_version,
                a.quantity,
                a.events,
                a.old_amount,
                a.new_amount,
            )
        })
        .collect()
}

/// `Kernel.usage`'s rows of one customer (see it), read under the caller's lock.
fn usage_rows(kernel: &kernel::Kernel, customer_id: &str) -> Option<(Vec<AggregateRow>, Vec<BucketRow>)> {
    let (aggregates, buckets) = kernel.usage(customer_id)?;
    let texts = |syms: &[u32]| syms.iter().map(|s| kernel.text(*s).to_owned()).collect::<Vec<_>>();
    let grants = kernel.grant_ids(customer_id);
    let aggregates = aggregates
        .into_iter()
        .map(|(k, a)| {
            let drawn = a.drawn_by_grant.iter().map(|(g, c)| (grants[*g as usize].clone(), *c)).collect();
            (
                k.period_start_ms,
                kernel.text(k.product).to_owned(),
                texts(&k.dimensions),
                a.quantity,
                a.events,
                a.amount,
                a.overage,
                drawn,
            )
        })
        .collect();
    let buckets = buckets
        .into_iter()
        .map(|(k, usages)| {
            let usages = usages
                .into_iter()
                .map(|u| (kernel.text(u.rate_card).to_owned(), u.version, u.quantity, u.events, u.amount))
                .collect();
            (k.hour, kernel.text(k.product).to_owned(), texts(&k.dimensions), usages)
        })
        .collect();
    Some((aggregates, buckets))
}

/// `Kernel.credits_read`'s rows of one customer (see it), read under the caller's lock.
fn credits_rows(kernel: &kernel::Kernel, customer_id: &str, now_ms: i64) -> (Vec<MadeRow>, Vec<BreakageRow>) {
    let Some(account) = kernel.account_read(customer_id, now_ms) else { return (Vec::new(), Vec::new()) };
    let broken = account.credits.as_deref().map_or(&[][..], |c| &c.breakage);
    let breakage = broken
        .iter()
        .map(|b| (customer_id.to_owned(), b.grant_id.to_string(), b.period_start_ms, b.credits, b.at_ms))
        .collect();
    (made_rows(credits::made_grants_of(&account)), breakage)
}

/// `made_grants`' rows.
#[allow(clippy::type_complexity)]
fn made_rows(
    made: Vec<(&crate::draw::Grant, Made<'_>)>,
) -> Vec<(String, &'static str, i128, i64, i64, Option<i64>, i128, String, i64)> {
    made.into_iter()
        .map(|(g, made)| {
            let (kind, cost_e30, from, at_ms) = match made {
                Made::TopUp(p) => ("TOP_UP", p.cost_e30, String::new(), p.at_ms),
                Made::Rollover(r) => ("ROLLOVER", 0, r.from.to_string(), r.at_ms),
            };
            (g.id.to_string(), kind, g.amount, g.priority, g.starts_at_ms, g.expires_at_ms, cost_e30, from, at_ms)
        })
        .collect()
}
