//! The kernel's reads: Authorize's decision on a hypothetical event (planned and settled as rating would,
//! committing nothing), a customer's balance and usage, and the account as a read at a later time sees it.
//! Apart from the batch entry points (kernel.rs) because they only read the state; the server answers them
//! between batches, or while a batch pauses (`ingest_checked_pausing`).

use smallvec::SmallVec;

use crate::account::{no_such_customer, Account};
use crate::buckets::{Aggregate, AggregateKey, BucketKey, VersionUsage};
use crate::credits;
use crate::decode::{check_view, py_repr, wire, with_view, EventView, Reason};
use crate::draw::{Changed, Outcomes};
use crate::kernel::Kernel;
use crate::money::Picos;
use crate::route::{period_containing, Sym};

/// Authorize's answer. `reason` is OK, OVERAGE_ALLOWED, INSUFFICIENT_CREDIT, INVALID_REQUEST or
/// an ingestion reject reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: &'static str,
    pub message: String,
    pub cost: Picos,
    pub available: Picos,
}

#[derive(Debug, PartialEq, Eq)]
pub struct GrantView {
    pub id: String,
    pub amount: Picos,
    pub remaining: Picos,
    pub expired: Picos,
    pub drawn: Picos,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BalanceView {
    /// Credits usable now.
    pub remaining: Picos,
    pub grants: Vec<GrantView>,
    /// The period of the contract covering now, if any.
    pub period: Option<(i64, i64)>,
    pub period_charges: Picos,
    pub overage: Picos,
    /// overage x the contract's overage price, exactly, at 10^-30 of the currency.
    pub overage_due_e30: ethnum::I256,
}

impl Kernel {
    /// Prices a hypothetical event at now_ms exactly as ingesting it would (as the server rates a batch now:
    /// its refunds netted, `refunds_netted`), and decides.
    pub fn authorize(&self, event: &wire::UsageEvent, now_ms: i64) -> Decision {
        with_view(event, |view| self.authorize_view(view, now_ms))
    }

    /// `authorize` for an event read in place (AuthorizeBatches decides each request from a view of the
    /// message's bytes, allocating nothing per request to read it).
    pub fn authorize_view(&self, event: &EventView<'_, '_>, now_ms: i64) -> Decision {
        self.authorize_settled(event, now_ms, true)
    }

    /// `authorize_view`, its event settled `netted` or not (a hold journaled before that rule decides without).
    pub(crate) fn authorize_settled(&self, event: &EventView<'_, '_>, now_ms: i64, netted: bool) -> Decision {
        self.authorize_on(self.accounts.get(event.customer_id).map(|a| &**a), event, now_ms, netted)
    }

    /// `authorize` for a read (Authorize without a hold, AuthorizeBatches' requests without one): decided on the
    /// account as the clock's due work at `now_ms` leaves it (`account_read`), as ingesting the usage then
    /// would find it once the writer applied that AdvanceClock. A hold decides on the kernel's own state
    /// (`authorize`), after the writer applied it.
    pub fn authorize_read(&self, event: &EventView<'_, '_>, now_ms: i64) -> Decision {
        match self.account_read(event.customer_id, now_ms) {
            Some(account) => self.authorize_on(Some(&account), event, now_ms, true),
            None => self.authorize_on(None, event, now_ms, true),
        }
    }

    fn authorize_on(
        &self,
        account: Option<&Account>,
        event: &EventView<'_, '_>,
        now_ms: i64,
        netted: bool,
    ) -> Decision {
        let available_for = |products: Option<&[Sym]>| -> Picos {
            let Some(account) = account else { return 0 };
            // Grants without credit add nothing: only the payable ones are walked.
            (account.payable.iter().map(|&g| &account.grants[g as usize]))
                .filter(|g| g.usable_at(now_ms) && products.is_none_or(|ps| ps.iter().any(|p| g.applies_to(*p))))
                .map(|g| g.remaining)
                .sum()
        };
        let mut plans = Vec::new();
        // The customer is found before the usage is read, as unary Authorize(reserve=true) finds it
        // (engine/credits.py): an unknown one is UNKNOWN_CUSTOMER whatever else the request gets wrong, on every
        // form, with a hold or without.
        let planned = match account {
            Some(account) => check_view(event, now_ms, self.rater.catalog.future_skew_ms)
                .and_then(|e| self.rater.plan(account, &e, &mut plans)),
            None => Err(no_such_customer(event.customer_id)),
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(refusal) => {
                let reason =
                    if refusal.reason == Reason::InvalidEvent { "INVALID_REQUEST" } else { refusal.reason.name() };
                // A request has no timestamp_ms: it is decided now.
                let message = if refusal.reason == Reason::NoActiveContract {
                    format!("customer {} has no contract covering now ({now_ms})", py_repr(event.customer_id))
                } else {
                    refusal.message
                };
                return Decision { allowed: false, reason, message, cost: 0, available: available_for(None) };
            }
        };
        let products: SmallVec<[Sym; 4]> = plans.iter().map(|p| self.rater.catalog.products[p.product].id).collect();
        let available = available_for(if products.is_empty() { None } else { Some(&products) });
        let cost: Picos = plans.iter().map(|p| p.charge).sum();
        let account = account.expect("planned, so the account exists");
        let mut outcomes = Outcomes::new();
        self.rater.settle(account, &plans, now_ms, netted, &mut outcomes, &mut Changed::new());
        // Overage the usage would add. Netted, that is the event's overage in all, as its charges take back what
        // its refunds gave back before they cause any; otherwise, the overage its positive parts would leave: a
        // refund elsewhere in the event does not pay for them. Either way a refund to a grant that cannot pay a
        // charge does not lower it.
        let uncovered: Picos = if netted {
            outcomes.iter().map(|o| o.overage).sum::<Picos>().max(0)
        } else {
            outcomes.iter().map(|o| o.overage.max(0)).sum()
        };
        if plan.block && (uncovered > 0 || available <= 0) {
            let message = "available credit does not cover this usage".to_string();
            return Decision { allowed: false, reason: "INSUFFICIENT_CREDIT", message, cost, available };
        }
        if uncovered > 0 {
            let message = "beyond available credit: billed as overage".to_string();
            return Decision { allowed: true, reason: "OVERAGE_ALLOWED", message, cost, available };
        }
        Decision { allowed: true, reason: "OK", message: String::new(), cost, available }
    }

    /// The customer's balance at `now_ms` from the kernel's state as it is (the clock's due work done up to
    /// its last AdvanceClock): what journaled changes read (alerts), so replay reads the same.
    pub fn balance(&self, customer_id: &str, now_ms: i64) -> Option<BalanceView> {
        Self::balance_of(self.accounts.get(customer_id)?, now_ms)
    }

    /// The account a read at `now_ms` answers from: the kernel's own, or, when something of it fell due after
    /// the clock's last AdvanceClock and by `now_ms`, what that AdvanceClock will make of it (credits::projected).
    pub fn account_read(&self, customer_id: &str, now_ms: i64) -> Option<std::borrow::Cow<'_, Account>> {
        let account = self.accounts.get(customer_id)?;
        Some(match credits::projected(account, customer_id, self.clock.now_ms, now_ms) {
            Some(projected) => std::borrow::Cow::Owned(projected),
            None => std::borrow::Cow::Borrowed(&**account),
        })
    }

    pub fn balance_of(account: &Account, now_ms: i64) -> Option<BalanceView> {
        let mut view = BalanceView {
            remaining: 0,
            grants: Vec::new(),
            period: None,
            period_charges: 0,
            overage: 0,
            overage_due_e30: ethnum::I256::ZERO,
        };
        let extras = credits::GrantExtras::of(account);
        for &g in &account.order {
            let grant = &account.grants[g as usize];
            let (held, broken) = extras.of_grant(account, g);
            let expired = if grant.expired_at(now_ms) { grant.remaining } else { 0 };
            if grant.usable_at(now_ms) {
                view.remaining += grant.remaining;
            }
            view.grants.push(GrantView {
                id: grant.id.to_string(),
                amount: grant.amount,
                remaining: grant.remaining - expired,
                expired: expired + broken,
                // Held credits are in neither `remaining` nor `drawn` (Kernel::held_by_grant).
                drawn: grant.drawn() - held - broken,
            });
        }
        let route = account.route.as_ref()?;
        if let Some(contract) = route.contracts.iter().find(|c| c.covers(now_ms)) {
            let period = period_containing(contract.starting_at_ms, now_ms);
            view.period = Some(period);
            let totals = account.periods.get(period.0).unwrap_or_default();
            (view.period_charges, view.overage) = (totals.charges, totals.overage);
            view.overage_due_e30 = ethnum::I256::new(view.overage) * ethnum::I256::new(contract.overage_price);
        }
        Some(view)
    }

    /// Every aggregate and hour bucket of a customer, sorted (for reads and tests).
    #[allow(clippy::type_complexity)]
    pub fn usage(
        &self,
        customer_id: &str,
    ) -> Option<(Vec<(AggregateKey, Aggregate)>, Vec<(BucketKey, Vec<VersionUsage>)>)> {
        let account = self.accounts.get(customer_id)?;
        let tuple = |combo: u32| Box::<[Sym]>::from(self.rater.combos.tuple(combo));
        let mut aggregates: Vec<_> = account
            .aggregates
            .iter()
            .map(|(k, v)| {
                let key =
                    AggregateKey { period_start_ms: k.period_start_ms, product: k.product, dimensions: tuple(k.combo) };
                (key, v.clone())
            })
            .collect();
        aggregates.sort_by(|a, b| a.0.cmp(&b.0));
        let mut buckets: Vec<_> = account
            .buckets
            .iter()
            .map(|(k, v)| (BucketKey { hour: k.hour, product: k.product, dimensions: tuple(k.combo) }, v.to_vec()))
            .collect();
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        Some((aggregates, buckets))
    }

    /// The customer's grant ids by grant index.
    pub fn grant_ids(&self, customer_id: &str) -> Vec<String> {
        self.accounts.get(customer_id).map_or_else(Vec::new, |a| a.grants.iter().map(|g| g.id.to_string()).collect())
    }

    pub fn text(&self, sym: Sym) -> &str {
        self.rater.interner.text(sym)
    }
}

/// Reads other modules of the crate make of the account state (engine/kernel/src/invoice.rs).
impl Kernel {
    pub(crate) fn account(&self, customer_id: &str) -> Option<&Account> {
        self.accounts.get(customer_id).map(|a| &**a)
    }

    /// The pricing-dimension values of an interned combination.
    pub(crate) fn combo(&self, combo: u32) -> &[Sym] {
        self.rater.combos.tuple(combo)
    }
}
