//! The kernel's accounts by customer id, each also reachable by its place (`AccountAt`).
//!
//! `Kernel::warm` looks each event's account up ahead of rating it; rating then takes the account
//! by the place warm found, not by hashing and comparing the customer id a second time. The map
//! holds each id's place in a list of the accounts, which only grows (an account is never
//! removed), so a place stays valid for the kernel's life. Iterating the map, as every walk of the
//! accounts does, gives the order a map of the accounts themselves gave (the same keys in the same
//! map, in the same order of insertion).

use std::borrow::Borrow;
use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::account::Account;
use crate::customer_key::CustomerKey;

/// Where an account is in `Accounts`, valid for as long as the accounts are (none is removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AccountAt(u32);

/// The accounts by customer id. Boxed: a list slot holds a pointer, not the whole account, so the
/// list's spare capacity (up to half of it after a growth) costs 8 bytes a slot rather than the
/// account's size, and growing it moves pointers, not accounts.
#[derive(Default)]
pub struct Accounts {
    /// Each customer's place in `list`. A slot is the key and a u32: 32 bytes, as the key and a box were.
    places: FxHashMap<CustomerKey, u32>,
    /// The accounts, in the order they were added.
    #[allow(clippy::vec_box)] // boxed on purpose: see the type's comment
    list: Vec<Box<Account>>,
}

impl Accounts {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Where the account of `customer_id` is, if there is one.
    #[inline]
    pub(crate) fn find<Q>(&self, customer_id: &Q) -> Option<AccountAt>
    where
        CustomerKey: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.places.get(customer_id).map(|&at| AccountAt(at))
    }

    /// The account at a place `find` gave.
    #[inline]
    pub(crate) fn at(&self, at: AccountAt) -> &Account {
        &self.list[at.0 as usize]
    }

    /// The account at a place `find` gave, to change.
    #[inline]
    pub(crate) fn at_mut(&mut self, at: AccountAt) -> &mut Account {
        &mut self.list[at.0 as usize]
    }

    /// The account of `customer_id`, as a map of the boxes gave it (so its callers read as they did).
    #[allow(clippy::borrowed_box)]
    pub(crate) fn get<Q>(&self, customer_id: &Q) -> Option<&Box<Account>>
    where
        CustomerKey: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.places.get(customer_id).map(|&at| &self.list[at as usize])
    }

    pub(crate) fn get_mut<Q>(&mut self, customer_id: &Q) -> Option<&mut Account>
    where
        CustomerKey: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.places.get(customer_id).map(|&at| &mut *self.list[at as usize])
    }

    pub(crate) fn get_key_value<Q>(&self, customer_id: &Q) -> Option<(&CustomerKey, &Account)>
    where
        CustomerKey: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.places.get_key_value(customer_id).map(|(key, &at)| (key, &*self.list[at as usize]))
    }

    /// The account of `customer_id`, added (empty) if there is none.
    pub(crate) fn get_or_insert_default(&mut self, customer_id: &str) -> &mut Account {
        let at = match self.places.get(customer_id) {
            Some(&at) => at,
            None => self.push(CustomerKey::from(customer_id), Box::default()),
        };
        &mut self.list[at as usize]
    }

    /// Sets the account of `customer_id`, replacing any it had (in its place).
    pub(crate) fn insert(&mut self, customer_id: CustomerKey, account: Box<Account>) {
        match self.places.get(&customer_id) {
            Some(&at) => self.list[at as usize] = account,
            None => {
                self.push(customer_id, account);
            }
        }
    }

    fn push(&mut self, customer_id: CustomerKey, account: Box<Account>) -> u32 {
        let at = u32::try_from(self.list.len()).expect("fewer than 2^32 accounts");
        self.places.insert(customer_id, at);
        self.list.push(account);
        at
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &CustomerKey> + '_ {
        self.places.keys()
    }

    /// The accounts in the order they were added.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Account> + '_ {
        self.list.iter().map(|a| &**a)
    }

    /// The accounts in the order they were added.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Account> + '_ {
        self.list.iter_mut().map(|a| &mut **a)
    }

    /// (id, account) in the map's order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&CustomerKey, &Account)> + '_ {
        self.places.iter().map(|(key, &at)| (key, &*self.list[at as usize]))
    }

    /// (id, account) in the map's order, to change the accounts.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&CustomerKey, &mut Account)> + '_ {
        let mut accounts: Vec<Option<&mut Account>> = self.list.iter_mut().map(|a| Some(&mut **a)).collect();
        self.places.iter().map(move |(key, &at)| (key, accounts[at as usize].take().expect("each place once")))
    }
}

impl<'a> IntoIterator for &'a Accounts {
    type Item = (&'a CustomerKey, &'a Account);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::PeriodKey;

    /// Marks an account with `n`, to tell accounts apart.
    fn mark(account: &mut Account, n: u64) {
        account.aggregates.insert(PeriodKey { period_start_ms: n as i64, product: 0, combo: 0 }, Default::default());
    }

    fn marked(account: &Account) -> u64 {
        account.aggregates.keys().next().map_or(u64::MAX, |k| k.period_start_ms as u64)
    }

    #[test]
    fn places_stay_and_walks_follow_the_map() {
        let mut accounts = Accounts::default();
        let ids = ["acme", "globex", "initech", "umbrella"];
        for (n, id) in ids.iter().enumerate() {
            mark(accounts.get_or_insert_default(id), n as u64);
        }
        let acme = accounts.find("acme").expect("added");
        mark(accounts.get_or_insert_default("hooli"), 4);
        assert_eq!(accounts.len(), 5);
        assert_eq!(accounts.find("acme"), Some(acme), "a place stays as accounts are added");
        assert_eq!(marked(accounts.at(acme)), 0);
        assert_eq!(accounts.get("initech").map(|a| marked(a.as_ref())), Some(2));
        assert!(accounts.find("nobody").is_none());
        let mut plain: FxHashMap<CustomerKey, u64> = FxHashMap::default();
        for (n, id) in ids.iter().chain(&["hooli"]).enumerate() {
            plain.insert(CustomerKey::from(*id), n as u64);
        }
        let order: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(accounts.keys().map(|k| k.as_str()).collect::<Vec<_>>(), order, "the map's order");
        assert_eq!(accounts.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), order);
        for (key, account) in accounts.iter_mut() {
            assert_eq!(marked(account), plain[key], "each id walks with its own account");
        }
    }
}
