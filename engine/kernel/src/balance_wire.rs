//! GetBalance's and WatchBalance's grants with the top-ups encoded here: a customer's TOP_UP grants are
//! unbounded over its life (up to `max_per_period` a period, kept for good), and building a row, a control-plane
//! record and a GrantBalance message in Python for each cost the event loop about 8 µs a grant (0.1 s for
//! 12,000). A top-up is wholly the kernel's (its amount, dates and cost), so its GrantBalance is encoded here, as
//! tariff.v1.GrantBalance's bytes inside a Balance's `grants` field (5): the control plane builds only the other
//! grants (those GrantCredits gave, at most 1,000 a customer, and ROLLOVER ones) and joins the parts in burn order.

use crate::account::Account;
use crate::authorize::{put_text, PicosText};
use crate::credits::GrantExtras;
use crate::draw::Grant;
use crate::money::{round_half_even, Picos};
use crate::reads::{BalanceView, GrantView};
use ethnum::I256;
use prost::encoding::{encode_varint, encoded_len_varint};
use rustc_hash::{FxHashMap, FxHashSet};

/// tariff.v1.GrantKind TOP_UP.
const TOP_UP_KIND: u64 = 4;
/// About what a spent top-up's entry takes (its id, five amounts, a timestamp).
const TOP_UP_BYTES_TYPICAL: usize = 72;
/// tariff.v1.Balance `grants`: field 5, length-delimited.
const BALANCE_GRANTS_TAG: u8 = 5 << 3 | 2;

/// One grant of the balance in burn order: a view the control plane completes (with the grant's held credits), or
/// top-ups encoded here (a run of consecutive ones, as `grants` field entries).
#[derive(Debug, PartialEq, Eq)]
pub enum GrantPart {
    Row(GrantView, Picos),
    Encoded(EncodedRun),
}

/// A run of consecutive top-ups as `grants` field entries, with where its spent ones lie: a balance too large to
/// send whole leaves spent grants out (balance.proto `grants`), cut from these bytes without parsing them back.
#[derive(Debug, PartialEq, Eq)]
pub struct EncodedRun {
    pub bytes: Vec<u8>,
    /// The entries in `bytes`.
    pub count: usize,
    /// Each spent entry (remaining and held both 0), in order, packed little-endian as SPENT_ENTRY_BYTES: its
    /// offset in `bytes` (u64), its length with its tag and length (u32), and its grant's starts_at_ms (i64).
    pub spent: Vec<u8>,
}

/// One `EncodedRun::spent` entry's bytes (Python's struct format "<QIq").
pub const SPENT_ENTRY_BYTES: usize = 20;

/// A balance with its top-ups encoded: the totals of `Kernel::balance_of`, its grants as parts (the view's
/// `grants` left empty), and the next instant at which a top-up's row changes with nothing recorded (its start, or
/// its expiry while holds keep its whole remainder; as WatchBalance's `_next_grant_start_ms` reads a row).
pub struct EncodedBalance {
    pub view: BalanceView,
    pub parts: Vec<GrantPart>,
    /// Held by open reservations, on every grant.
    pub held: Picos,
    pub top_ups_next_change_ms: Option<i64>,
}

/// The account's balance at now_ms (`view`, `Kernel::balance_of`'s) with its top-ups encoded; None where the control plane's own reading could
/// differ (two grants sharing an id, a grant rolled over from a top-up, a revenue past 128 bits, a priority past
/// int32): the caller builds every row then, as before.
pub fn encoded_balance(account: &Account, mut view: BalanceView, now_ms: i64) -> Option<EncodedBalance> {
    let costs = top_up_costs(account)?;
    let extras = GrantExtras::of(account);
    let mut parts = Vec::new();
    let mut next_ms: Option<i64> = None;
    let mut held_total = 0;
    let mut scratch = Vec::with_capacity(128); // a message's bytes, before its length
    for (row, &g) in std::mem::take(&mut view.grants).into_iter().zip(&account.order) {
        let grant = &account.grants[g as usize];
        let held = extras.of_grant(account, g).0;
        held_total += held;
        let Some(&cost_e30) = costs.get(&*grant.id) else {
            parts.push(GrantPart::Row(row, held));
            continue;
        };
        let usable = grant.expires_at_ms.is_none_or(|end| now_ms < end);
        let remaining = if usable { row.remaining + held } else { row.remaining };
        if let Some(at_ms) = next_change_ms(grant, remaining, held, now_ms) {
            next_ms = Some(next_ms.map_or(at_ms, |next| next.min(at_ms)));
        }
        if !matches!(parts.last(), Some(GrantPart::Encoded(_))) {
            // Sized for every top-up (they are mostly one run, each about 60 bytes): a few megabytes grown by
            // doubling were copied and faulted in again at each step.
            parts.push(GrantPart::Encoded(EncodedRun {
                bytes: Vec::with_capacity(costs.len() * TOP_UP_BYTES_TYPICAL),
                count: 0,
                spent: Vec::new(),
            }));
        }
        let Some(GrantPart::Encoded(run)) = parts.last_mut() else { unreachable!("pushed above") };
        let start = run.bytes.len();
        encode_top_up(&mut run.bytes, &mut scratch, grant, &row, remaining, held, cost_e30)?;
        run.count += 1;
        if remaining == 0 && held == 0 {
            note_spent(&mut run.spent, start, run.bytes.len() - start, grant.starts_at_ms);
        }
    }
    Some(EncodedBalance { view, parts, held: held_total, top_ups_next_change_ms: next_ms })
}

/// cost_e30 by top-up grant id; None when a read by id could take one grant for another (ids shared) or a top-up
/// rolled over (its revenue would leave out what moved).
fn top_up_costs(account: &Account) -> Option<FxHashMap<&str, i128>> {
    let Some(credits) = account.credits.as_deref() else { return Some(FxHashMap::default()) };
    if credits.purchases.is_empty() {
        return Some(FxHashMap::default());
    }
    let mut costs = FxHashMap::with_capacity_and_hasher(credits.purchases.len(), Default::default());
    let mut ids = FxHashSet::with_capacity_and_hasher(account.grants.len(), Default::default());
    if !account.grants.iter().all(|g| ids.insert(&*g.id)) {
        return None;
    }
    for purchase in &credits.purchases {
        if costs.insert(&*purchase.grant_id, purchase.cost_e30).is_some() {
            return None;
        }
    }
    if credits.rolled.iter().any(|r| costs.contains_key(&*r.from)) {
        return None;
    }
    Some(costs)
}

/// A spent entry of `EncodedRun::spent`: its offset, its length (a top-up's entry is far below 4 GiB) and start.
fn note_spent(spent: &mut Vec<u8>, offset: usize, length: usize, starts_at_ms: i64) {
    spent.extend_from_slice(&(offset as u64).to_le_bytes());
    spent.extend_from_slice(&(length as u32).to_le_bytes());
    spent.extend_from_slice(&starts_at_ms.to_le_bytes());
}

/// WatchBalance's next look for this grant's row: its start when after now, or its expiry when after now and open
/// reservations hold its whole (positive) remainder.
fn next_change_ms(grant: &Grant, remaining: Picos, held: Picos, now_ms: i64) -> Option<i64> {
    let start = (grant.starts_at_ms > now_ms).then_some(grant.starts_at_ms);
    let expiry = grant.expires_at_ms.filter(|&end| 0 < held && held == remaining && end > now_ms);
    match (start, expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One top-up's `grants` entry, as the control plane's GrantBalance of it serializes: its TOP_UP record (every
/// product, no rollover), revenue drawn x cost / amount rounded half-even to picos (`Grant.revenue_for_drawn`).
fn encode_top_up(
    out: &mut Vec<u8>,
    message: &mut Vec<u8>,
    grant: &Grant,
    row: &GrantView,
    remaining: Picos,
    held: Picos,
    cost_e30: i128,
) -> Option<()> {
    let denominator = I256::new(grant.amount) * I256::new(1_000_000_000_000_000_000);
    let revenue = round_half_even(I256::new(row.drawn) * I256::new(cost_e30), denominator)?;
    let priority = i32::try_from(grant.priority).ok()?;
    message.clear();
    let message = &mut *message;
    put_text(message, 1, &grant.id);
    put_varint_field(message, 2, TOP_UP_KIND);
    for (field, picos) in [(3, grant.amount), (4, row.drawn), (5, remaining), (6, row.expired)] {
        put_text(message, field, PicosText::of(picos).as_str());
    }
    // int32: a negative one is its 64-bit two's complement, as protobuf encodes it.
    put_varint_field(message, 7, i64::from(priority) as u64);
    put_timestamp(message, 9, grant.starts_at_ms);
    if let Some(expires_at_ms) = grant.expires_at_ms {
        put_timestamp(message, 10, expires_at_ms);
    }
    put_text(message, 11, PicosText::of(revenue).as_str());
    put_text(message, 12, PicosText::of(held).as_str());
    out.push(BALANCE_GRANTS_TAG);
    encode_varint(message.len() as u64, out);
    out.extend_from_slice(message);
    Some(())
}

/// A varint field, left out at 0 (proto3's default).
fn put_varint_field(out: &mut Vec<u8>, field: u8, value: u64) {
    if value != 0 {
        out.push(field << 3);
        encode_varint(value, out);
    }
}

/// A google.protobuf.Timestamp field, present even when zero (the control plane always sets it): seconds floored,
/// nanos in [0, 10^9), as server/convert.py `timestamp` makes it.
fn put_timestamp(out: &mut Vec<u8>, field: u8, ms: i64) {
    let (seconds, nanos) = (ms.div_euclid(1000) as u64, (ms.rem_euclid(1000) * 1_000_000) as u64);
    let length = [seconds, nanos].iter().filter(|&&v| v != 0).map(|&v| 1 + encoded_len_varint(v)).sum::<usize>();
    out.push(field << 3 | 2);
    encode_varint(length as u64, out);
    put_varint_field(out, 1, seconds);
    put_varint_field(out, 2, nanos);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_encode_as_protobuf_does() {
        let mut stamp = Vec::new();
        put_timestamp(&mut stamp, 9, -1);
        // seconds -1 (ten bytes, two's complement), nanos 999,000,000.
        assert_eq!(stamp[0], 9 << 3 | 2);
        assert_eq!(stamp[2..13], [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut zero = Vec::new();
        put_timestamp(&mut zero, 9, 0);
        assert_eq!(zero, [9 << 3 | 2, 0]);
    }

    #[test]
    fn a_spent_entry_is_noted_as_struct_packs_it() {
        let mut spent = Vec::new();
        note_spent(&mut spent, 300, 61, -1);
        assert_eq!(spent.len(), SPENT_ENTRY_BYTES);
        assert_eq!(spent[..8], 300u64.to_le_bytes());
        assert_eq!(spent[8..12], 61u32.to_le_bytes());
        assert_eq!(spent[12..], [0xff; 8]);
    }

    #[test]
    fn an_account_without_top_ups_is_all_rows() {
        assert!(top_up_costs(&Account::default()).is_some_and(|costs| costs.is_empty()));
    }
}
