//! Loading the compiled control plane into the kernel: `load_tables` (all the tables, prepared off the lock by
//! `prepare_tables`, then installed) and `load_customers` (some customers' routes and grants against the tables
//! loaded). Apart from the batch entry points (kernel.rs) because it runs only when the control plane changes,
//! and merges each customer's grants with what its account has drawn.

use crate::accounts::Accounts;
use crate::credits;
use crate::draw::{Grant, NEVER_MS};
use crate::kernel::Kernel;
use crate::money::parse_i128;
use crate::route::{Catalog, Interner, Route};
use crate::tables;

impl Kernel {
    /// Replaces the compiled control plane. Accounts keep their state; a grant keeps its balance
    /// by id, new grants start full; an account the tables do not name loses its route. Changes
    /// nothing when the tables are malformed.
    pub fn load_tables(&mut self, bytes: &[u8]) -> Result<(), String> {
        let prepared = self.prepare_tables(bytes)?;
        drop(self.install_tables(prepared));
        Ok(())
    }

    /// The first half of `load_tables`, reading the state only: the tables decoded and compiled,
    /// against a copy of the interner. It is the long half (tens of ms at 10,000 customers), so the
    /// binding runs it while reads go on, and takes the lock alone only for `install_tables`.
    pub fn prepare_tables(&self, bytes: &[u8]) -> Result<PreparedTables, String> {
        let tables = tables::decode(bytes)?;
        let mut interner = self.rater.interner.clone();
        let catalog = Catalog::compile(&tables, &mut interner)?;
        let timelines = catalog.timelines.len();
        let compiled = compile_customers(&self.accounts, &catalog, &tables.customers, timelines, &mut interner)?;
        Ok(PreparedTables { customers: tables.customers, catalog, compiled, interner })
    }

    /// The second half of `load_tables`: installs what `prepare_tables` compiled from this same state
    /// (the caller guarantees no change came between; the interner it extended replaces this one).
    /// Returns what it replaced (catalog, interner, every route and grant list) and the decoded
    /// tables, for the caller to free once it has let go of the lock: freeing them here, a few
    /// allocations per customer, was a good part of the time a read waits for the install.
    pub fn install_tables(&mut self, prepared: PreparedTables) -> RetiredTables {
        debug_assert!(prepared.interner.strings().len() >= self.rater.interner.strings().len());
        // Each account holds its route (the one copy), so rating an event looks its customer up once.
        let mut routes = Vec::with_capacity(self.accounts.len());
        for account in self.accounts.values_mut() {
            routes.extend(account.route.take());
        }
        let window_before_ms = self.rater.catalog.dedupe_window_ms;
        let catalog = std::mem::replace(&mut self.rater.catalog, prepared.catalog);
        let interner = std::mem::replace(&mut self.rater.interner, prepared.interner);
        let grants = self.install(&prepared.customers, prepared.compiled);
        self.refresh_due_after_tables(window_before_ms); // routes were replaced, the window may have changed
        RetiredTables {
            _catalog: catalog,
            _interner: interner,
            _routes: routes,
            _grants: grants,
            _tables: prepared.customers,
        }
    }

    /// Loads some customers' routes and grants (`CustomerTables` from engine/tables.py) against the
    /// tables already loaded: the same state `load_tables` would give with those customers' tables
    /// changed, without recompiling the others. Changes nothing when the tables are malformed or
    /// were compiled against other shared tables.
    pub fn load_customers(&mut self, bytes: &[u8]) -> Result<(), String> {
        let tables = tables::decode_customers(bytes)?;
        let catalog = &self.rater.catalog;
        if tables.first_timeline as usize != catalog.timelines.len() {
            return Err(format!(
                "customer tables follow {} timelines, the kernel holds {}: load the whole tables",
                tables.first_timeline,
                catalog.timelines.len()
            ));
        }
        let timelines = catalog.checked_timelines(&tables.timelines)?;
        let held = catalog.timelines.len() + timelines.len();
        let catalog = std::mem::take(&mut self.rater.catalog);
        let compiled = self.compile_customers(&catalog, &tables.customers, held);
        self.rater.catalog = catalog;
        let compiled = compiled?;
        self.rater.catalog.timelines.extend(timelines);
        drop(self.install(&tables.customers, compiled));
        Ok(())
    }

    /// Each customer's route and grants (see the free function of that name); changes no account.
    fn compile_customers(
        &mut self,
        catalog: &Catalog,
        customers: &[tables::CustomerTable],
        timelines: usize,
    ) -> Result<Vec<(Route, Vec<Grant>)>, String> {
        compile_customers(&self.accounts, catalog, customers, timelines, &mut self.rater.interner)
    }

    /// Installs each customer's route and grants; returns the grant lists replaced, to free later.
    fn install(&mut self, customers: &[tables::CustomerTable], compiled: Vec<(Route, Vec<Grant>)>) -> Vec<Vec<Grant>> {
        let mut replaced = Vec::with_capacity(customers.len());
        for (customer, (route, grants)) in customers.iter().zip(compiled) {
            let account = self.accounts.get_or_insert_default(customer.id.as_str());
            for grant in grants.iter().filter(|g| g.remaining > 0) {
                if let Some(end) = grant.expires_at_ms {
                    self.clock.note_due(end);
                }
            }
            replaced.push(std::mem::replace(&mut account.grants, grants));
            account.index_grants();
            account.route = Some(route);
            credits::note_rollovers(account, &customer.grants, &mut self.clock);
            self.due.refresh(&customer.id, account, self.rater.catalog.dedupe_window_ms);
        }
        replaced
    }
}

/// What `install_tables` took out of the kernel, freed when dropped (by the binding, after the lock).
pub struct RetiredTables {
    _catalog: Catalog,
    _interner: Interner,
    _routes: Vec<Route>,
    _grants: Vec<Vec<Grant>>,
    _tables: Vec<tables::CustomerTable>,
}

/// Tables decoded and compiled against the kernel's state, ready to install (`Kernel::prepare_tables`).
pub struct PreparedTables {
    customers: Vec<tables::CustomerTable>,
    catalog: Catalog,
    compiled: Vec<(Route, Vec<Grant>)>,
    interner: Interner,
}

/// Each customer's route and grants (merged with the account's: a known grant keeps what was
/// drawn), checked; changes no account, only interns into `interner`.
fn compile_customers(
    accounts: &Accounts,
    catalog: &Catalog,
    customers: &[tables::CustomerTable],
    timelines: usize,
    interner: &mut Interner,
) -> Result<Vec<(Route, Vec<Grant>)>, String> {
    let mut compiled = Vec::with_capacity(customers.len());
    for customer in customers {
        let route = catalog.route(customer, timelines, interner)?;
        let mut grants = accounts.get(customer.id.as_str()).map_or_else(Vec::new, |a| a.grants.clone());
        for table in &customer.grants {
            let amount = parse_i128(&table.amount_picos)?;
            if amount <= 0 {
                return Err(format!("grant {:?}: the amount must be positive", table.id));
            }
            let applicable = table.applicable_product_ids.iter().map(|p| interner.intern(p)).collect();
            let fresh = Grant {
                id: table.id.as_str().into(),
                amount,
                remaining: amount,
                priority: table.priority,
                applicable,
                starts_at_ms: table.starts_at_ms,
                expires_at_ms: table.expires_at_ms,
                creation_order: table.creation_order,
                usable_before_ms: NEVER_MS, // bounded at install (credits::note_rollovers)
                expiring_at_rollover_rolls: table.expiring_at_rollover_rolls,
            };
            match grants.iter_mut().find(|g| g.id == fresh.id) {
                Some(known) => {
                    let drawn = known.drawn();
                    if drawn > amount {
                        return Err(format!("grant {:?}: {drawn} picos drawn exceed its amount", table.id));
                    }
                    *known = Grant { remaining: amount - drawn, ..fresh };
                }
                None => grants.push(fresh),
            }
        }
        grants.shrink_to_fit(); // a Vec grows by doubling from 4: one grant would hold room for four
        compiled.push((route, grants));
    }
    Ok(compiled)
}
