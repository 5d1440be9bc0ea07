//! Invoice lines: one customer's period read from its buckets, never from events.
//!
//! A line is a period aggregate (product x pricing-dimension values): its quantity, events,
//! amount, and where the amount went (credits per grant, overage). Its parts per rate card
//! version come from the hour buckets whose hour starts inside the period (and before its
//! contract's end, for a switched contract's last period). The read costs one
//! pass over the customer's aggregates and hour buckets, whatever the number of events.

use rustc_hash::FxHashMap;

use crate::account::Account;
use crate::buckets::HOUR_MS;
use crate::credits::GrantExtras;
use crate::kernel::Kernel;
use crate::money::{Fixed, Picos};
use crate::route::{period_containing, Sym};

/// One rate card version's part of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionPart {
    pub rate_card: String,
    pub version: u32,
    pub quantity: Fixed,
    pub events: u64,
    pub amount: Picos,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceLine {
    pub product_id: String,
    /// Values in the product's pricing-dimension order.
    pub dimensions: Vec<String>,
    pub quantity: Fixed,
    pub events: u64,
    pub amount: Picos,
    pub overage: Picos,
    /// (grant id, credits drawn), in the order the grants were first drawn.
    pub credits: Vec<(String, Picos)>,
    /// Ascending by (rate card, version).
    pub parts: Vec<VersionPart>,
}

/// A grant as it stood at the period's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantAtEnd {
    pub id: String,
    pub amount: Picos,
    /// Drawn by the usage of this period and every earlier one (net of refunds).
    pub drawn: Picos,
    pub expires_at_ms: Option<i64>,
    /// When the grant rolled over (the period end it rolled at) and the credits it moved into its ROLLOVER
    /// grant; None while it has not (or has no rollover fraction).
    pub rolled: Option<(i64, Picos)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodLines {
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// The contract's overage price, at 10^-18 of the currency per pricing unit.
    pub overage_price: Fixed,
    pub closed: bool,
    /// Sorted by (product id, dimension values).
    pub lines: Vec<InvoiceLine>,
    /// The customer's grants started before the period's end, in the order the tables gave them.
    pub grants: Vec<GrantAtEnd>,
}

/// A grant's credit as an invoice reads it to show a rolled-over or expired grant's breakage (engine/invoices.py).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantCredit {
    pub id: String,
    /// What it still has: its remainder and what open reservations hold on it.
    pub credit: Picos,
    /// The breakage recorded from it.
    pub breakage: Picos,
}

/// When a period read also reads the customer's grant credit (`Kernel::period_read`): only when one of the
/// period's grants shows it, as reading it walks every grant of the customer (tens of ms at 11,000 grants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditWanted {
    /// The earliest instant a grant of the customer rolls over, by the control plane's reckoning (it knows each
    /// grant's rollover fraction; i64::MAX: none rolls): a grant rolling over by the period's end shows it.
    pub first_rollover_ms: i64,
    /// A grant expiring by the period's end shows it too.
    pub expiring: bool,
}

impl CreditWanted {
    fn by(&self, period: &PeriodLines) -> bool {
        let end = period.period_end_ms;
        self.first_rollover_ms <= end
            || period
                .grants
                .iter()
                .any(|g| g.rolled.is_some() || (self.expiring && g.expires_at_ms.is_some_and(|e| e <= end)))
    }
}

/// Why there are no lines to read.
#[derive(Debug, PartialEq, Eq)]
pub enum NoLines {
    UnknownCustomer,
    /// No contract of the customer covers the instant asked for.
    NoContract,
}

impl Kernel {
    /// The lines of the customer's period that contains `at_ms` (under the contract covering it).
    /// `in_contract`: the version parts count the hours before the contract's end only (a switched
    /// contract's last period keeps its monthly end: the hours past the switch are the next contract's);
    /// without it, every hour of the period (as final invoices closed by earlier releases were built).
    /// `read_ms` (a draft read): the account as the clock's AdvanceClock at that time will leave it
    /// (`Kernel::account_read`), so a ROLLOVER grant due but not yet recorded is listed as its close will list it;
    /// None (a close, applied after the writer recorded what was due): the kernel's own account.
    pub fn period_lines(
        &self,
        customer_id: &str,
        at_ms: i64,
        in_contract: bool,
        read_ms: Option<i64>,
    ) -> Result<PeriodLines, NoLines> {
        self.period_read(customer_id, at_ms, in_contract, read_ms, None).map(|(period, _)| period)
    }

    /// `period_lines`, and with them, when `credit` wants it for the period's grants, the customer's
    /// `grant_credit_of` from the same account: one read, so a batch rated or a re-rating slice applied between
    /// two calls cannot show in the credit and not in the lines.
    pub fn period_read(
        &self,
        customer_id: &str,
        at_ms: i64,
        in_contract: bool,
        read_ms: Option<i64>,
        credit: Option<CreditWanted>,
    ) -> Result<(PeriodLines, Option<Vec<GrantCredit>>), NoLines> {
        let read = match read_ms {
            Some(now_ms) => self.account_read(customer_id, now_ms),
            None => self.account(customer_id).map(std::borrow::Cow::Borrowed),
        };
        let read = read.ok_or(NoLines::UnknownCustomer)?;
        let period = self.lines_of(&read, at_ms, in_contract)?;
        let credit = credit.filter(|wanted| wanted.by(&period)).map(|_| grant_credit_of(&read));
        Ok((period, credit))
    }

    /// `period_lines` of an account as the caller read it.
    fn lines_of(&self, account: &Account, at_ms: i64, in_contract: bool) -> Result<PeriodLines, NoLines> {
        let route = account.route().ok_or(NoLines::UnknownCustomer)?;
        let contract = route.contracts.iter().find(|c| c.covers(at_ms)).ok_or(NoLines::NoContract)?;
        let (start, end) = period_containing(contract.starting_at_ms, at_ms);
        let mut by_key = self.lines_without_parts(account, start);
        // An hour belongs to the period its start falls in (periods start on the hour when contracts do).
        let hours_end = if in_contract { end.min(contract.ending_before_ms.unwrap_or(i64::MAX)) } else { end };
        let hours = start.div_euclid(HOUR_MS) + i64::from(start.rem_euclid(HOUR_MS) != 0)
            ..hours_end.div_euclid(HOUR_MS) + i64::from(hours_end.rem_euclid(HOUR_MS) != 0);
        self.add_version_parts(account, &mut by_key, hours);
        let grants = grants_at_end(account, start, end);
        let mut lines: Vec<InvoiceLine> = by_key.into_values().collect();
        for line in &mut lines {
            line.parts.sort_by(|a, b| (&a.rate_card, a.version).cmp(&(&b.rate_card, b.version)));
        }
        lines.sort_by(|a, b| (&a.product_id, &a.dimensions).cmp(&(&b.product_id, &b.dimensions)));
        Ok(PeriodLines {
            period_start_ms: start,
            period_end_ms: end,
            overage_price: contract.overage_price,
            closed: route.is_closed(start),
            lines,
            grants,
        })
    }

    /// The period's lines by (product, dimension values) from its aggregates, their version parts not yet read.
    fn lines_without_parts(&self, account: &Account, start: i64) -> FxHashMap<(Sym, u32), InvoiceLine> {
        let mut by_key: FxHashMap<(Sym, u32), InvoiceLine> = FxHashMap::default();
        for (key, aggregate) in account.aggregates.iter().filter(|(k, _)| k.period_start_ms == start) {
            let credits = aggregate
                .drawn_by_grant
                .iter()
                .map(|(g, c)| (account.grants[*g as usize].id.to_string(), *c))
                .collect();
            by_key.insert(
                (key.product, key.combo),
                InvoiceLine {
                    product_id: self.text(key.product).to_owned(),
                    dimensions: self.combo(key.combo).iter().map(|s| self.text(*s).to_owned()).collect(),
                    quantity: aggregate.quantity,
                    events: aggregate.events,
                    amount: aggregate.amount,
                    overage: aggregate.overage,
                    credits,
                    parts: Vec::new(),
                },
            );
        }
        by_key
    }

    /// Sums the hour buckets of `hours` into their lines' parts, one per (rate card, version).
    fn add_version_parts(
        &self,
        account: &Account,
        by_key: &mut FxHashMap<(Sym, u32), InvoiceLine>,
        hours: std::ops::Range<i64>,
    ) {
        for (key, usages) in account.buckets.iter().filter(|(k, _)| hours.contains(&k.hour)) {
            let Some(line) = by_key.get_mut(&(key.product, key.combo)) else { continue };
            for usage in usages {
                let rate_card = self.text(usage.rate_card);
                match line.parts.iter_mut().find(|p| p.version == usage.version && p.rate_card == rate_card) {
                    Some(part) => {
                        part.quantity += usage.quantity;
                        part.events += usage.events;
                        part.amount += usage.amount;
                    }
                    None => line.parts.push(VersionPart {
                        rate_card: rate_card.to_owned(),
                        version: usage.version,
                        quantity: usage.quantity,
                        events: usage.events,
                        amount: usage.amount,
                    }),
                }
            }
        }
    }
}

/// The customer's grants started before the period's end, each with what this period's usage and every earlier
/// period's drew from it.
/// Each grant's credit, in burn order (as the balance lists grants). The balance's remaining + expired less the
/// breakage recorded from the grant is its remainder, whatever instant the balance is read at: `remaining`.
pub fn grant_credit_of(account: &Account) -> Vec<GrantCredit> {
    let extras = GrantExtras::of(account);
    account
        .order
        .iter()
        .map(|&g| {
            let grant = &account.grants[g as usize];
            let (held, broken) = extras.of_grant(account, g);
            GrantCredit { id: grant.id.to_string(), credit: grant.remaining + held, breakage: broken }
        })
        .collect()
}

fn grants_at_end(account: &Account, start: i64, end: i64) -> Vec<GrantAtEnd> {
    let mut drawn: Vec<Picos> = vec![0; account.grants.len()];
    for aggregate in account.aggregates.iter().filter(|(k, _)| k.period_start_ms <= start).map(|(_, a)| a) {
        for &(grant, credits) in &aggregate.drawn_by_grant {
            drawn[grant as usize] += credits;
        }
    }
    let rolled = account.credits.as_deref().map_or(&[][..], |c| &c.rolled[..]);
    (account.grants.iter().zip(drawn))
        .filter(|(g, _)| g.starts_at_ms < end)
        .map(|(g, drawn)| GrantAtEnd {
            id: g.id.to_string(),
            amount: g.amount,
            drawn,
            expires_at_ms: g.expires_at_ms,
            rolled: rolled.iter().find(|r| *r.from == *g.id).map(|r| (r.at_period_end_ms, r.credits)),
        })
        .collect()
}
