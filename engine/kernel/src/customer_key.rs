//! A customer id as the kernel's accounts map holds it: inline when short, as ids almost always are.
//!
//! Held as a `String`, the id was a heap block of its own: looking an account up compared the id
//! against that block, one more dependent cache miss per event (at 10,000 customers) between the
//! map's slot and the account, and an allocation per customer. Hashing, equality and order are
//! the string's, so the map is still looked up with a `&str`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU8;
use std::ops::Deref;

use crate::route::Text;

/// Ids up to this many bytes are held inline, with their length, in the 24 bytes a `String` took
/// (the length is stored plus one, so that its zero tells the longer ids apart at no extra byte).
const INLINE_BYTES: usize = 22;

#[derive(Clone)]
pub struct CustomerKey(Repr);

/// Private, so that only `From<&str>` makes one: the inline bytes are always a whole str's.
#[derive(Clone)]
enum Repr {
    Inline { bytes: [u8; INLINE_BYTES], len_plus_one: NonZeroU8 },
    Heap(Box<str>),
}

/// A map slot is the key and the account's box: 32 bytes, so two share a cache line and none straddles one.
const _: () = assert!(std::mem::size_of::<CustomerKey>() == 24);

impl CustomerKey {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { bytes, len_plus_one } => {
                let len = usize::from(len_plus_one.get() - 1);
                // SAFETY: `from` copied the first `len` bytes from a whole str, and nothing changes them
                // (the representation is private): they are valid UTF-8. Checking them again cost an
                // account lookup a UTF-8 validation each time it compared its key.
                unsafe { std::str::from_utf8_unchecked(&bytes[..len]) }
            }
            Repr::Heap(id) => id,
        }
    }
}

impl From<&str> for CustomerKey {
    fn from(id: &str) -> CustomerKey {
        if id.len() > INLINE_BYTES {
            return CustomerKey(Repr::Heap(id.into()));
        }
        let mut bytes = [0; INLINE_BYTES];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        let len_plus_one = NonZeroU8::new(id.len() as u8 + 1).expect("at most INLINE_BYTES + 1");
        CustomerKey(Repr::Inline { bytes, len_plus_one })
    }
}

impl From<String> for CustomerKey {
    fn from(id: String) -> CustomerKey {
        CustomerKey::from(id.as_str())
    }
}

impl Deref for CustomerKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for CustomerKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// The id as rating looks accounts up (`Kernel::warm`, for every event): hashed as the str, and
/// compared without a call to memcmp (`decode::same_text`), which an id of 13 bytes made.
impl Borrow<Text> for CustomerKey {
    fn borrow(&self) -> &Text {
        Text::of(self.as_str())
    }
}

/// The str's hash, as `Borrow<str>` and `Borrow<Text>` (hashed as the str) require: the map is
/// looked up with a `&str` or a `&Text`.
impl Hash for CustomerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for CustomerKey {
    fn eq(&self, other: &CustomerKey) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CustomerKey {}

impl PartialOrd for CustomerKey {
    fn partial_cmp(&self, other: &CustomerKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CustomerKey {
    fn cmp(&self, other: &CustomerKey) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustc_hash::FxHashMap;

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn a_key_is_its_string_in_hash_order_and_lookups(ids in proptest::collection::vec("[a-zé0-9-]{0,30}", 1..8)) {
            let mut map: FxHashMap<CustomerKey, usize> = FxHashMap::default();
            for (i, id) in ids.iter().enumerate() {
                let key = CustomerKey::from(id.as_str());
                prop_assert_eq!(&*key, id.as_str());
                prop_assert_eq!(format!("{key:?}"), format!("{id:?}"));
                map.insert(key, i);
            }
            for id in &ids {
                let last = ids.iter().rposition(|other| other == id).unwrap();
                prop_assert_eq!(map.get(id.as_str()), Some(&last));
                prop_assert_eq!(map.get(Text::of(id)), Some(&last));
            }
            let mut keys: Vec<&CustomerKey> = map.keys().collect();
            keys.sort();
            let mut strings: Vec<&str> = ids.iter().map(String::as_str).collect();
            strings.sort_unstable();
            strings.dedup();
            prop_assert_eq!(keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(), strings);
        }
    }
}
