//! The batch's answer: the IngestAck bytes, and a digest of everything the batch did.
//!
//! The digest (XXH3-128) covers each event's outcome and every ledger change (product, version,
//! charge, credits per grant, overage), so a replay that rates differently is caught.

use prost::Message;
use xxhash_rust::xxh3::Xxh3Default;

use crate::decode::{wire, Reason, Refusal};
use crate::money::Picos;

pub struct AckBuilder {
    ack: wire::IngestAck,
    /// What the digest covers not yet hashed: the pieces gather here and go to `hasher` a few KiB at a
    /// time (each piece a streaming update cost more than hashing once). Not the whole batch's: that
    /// was a buffer written fresh for every batch (about 135 bytes an event, cache misses) and then
    /// read back from memory to hash; this one is reused, and stays in the cache.
    digest: Vec<u8>,
    hasher: Xxh3Default,
}

/// Bytes gathered before they are hashed.
const DIGEST_CHUNK_BYTES: usize = 4096;

impl AckBuilder {
    pub fn new(batch_id: &str, journal_seq: u64) -> AckBuilder {
        let ack = wire::IngestAck { batch_id: batch_id.to_owned(), journal_seq, ..wire::IngestAck::default() };
        AckBuilder { ack, digest: Vec::with_capacity(2 * DIGEST_CHUNK_BYTES), hasher: Xxh3Default::new() }
    }

    /// Hashes what gathered once it is a chunk's worth: called once an event's pieces are all written.
    fn hash_gathered(&mut self) {
        if self.digest.len() >= DIGEST_CHUNK_BYTES {
            self.hasher.update(&self.digest);
            self.digest.clear();
        }
    }

    /// Inline: once an event, a few stores (a call was about half its instructions).
    #[inline]
    pub fn accepted(&mut self, index: usize) {
        self.ack.accepted += 1;
        self.digest.extend_from_slice(b"a");
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
        self.hash_gathered();
    }

    pub fn duplicate(&mut self, index: usize) {
        self.ack.duplicates += 1;
        self.digest.extend_from_slice(b"d");
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
        self.hash_gathered();
    }

    pub fn rejected(&mut self, index: usize, transaction_id: &str, refusal: Refusal) {
        self.digest.extend_from_slice(&[b'r', refusal.reason as u8]);
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
        self.hash_gathered();
        self.ack.rejected.push(wire::EventRejection {
            index: index as u32,
            transaction_id: transaction_id.to_owned(),
            reason: refusal.reason as i32,
            message: refusal.message,
        });
    }

    /// One product's ledger change for the event just accepted.
    pub fn ledger(&mut self, product_id: &str, version: u32, charge: Picos, draws: &[(u32, Picos)], overage: Picos) {
        // Fixed-width fields gathered on the stack and appended at once: each append checks capacity.
        let mut fixed = [0u8; 21];
        fixed[1..5].copy_from_slice(&version.to_le_bytes()); // fixed[0]: the product id's terminator
        fixed[5..].copy_from_slice(&charge.to_le_bytes());
        self.digest.extend_from_slice(product_id.as_bytes());
        self.digest.extend_from_slice(&fixed);
        for (grant, credits) in draws {
            let mut draw = [0u8; 20];
            draw[..4].copy_from_slice(&grant.to_le_bytes());
            draw[4..].copy_from_slice(&credits.to_le_bytes());
            self.digest.extend_from_slice(&draw);
        }
        self.digest.extend_from_slice(&overage.to_le_bytes());
    }

    /// An accepted event naming a reservation that is not open (`reason`: crate::credits::NOTICE_*).
    /// Not in the digest: before reservations existed such an event was rated the same way, silently.
    pub fn notice(&mut self, index: usize, transaction_id: &str, reservation_id: &str, reason: i32, message: String) {
        self.ack.notices.push(wire::EventNotice {
            index: index as u32,
            transaction_id: transaction_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
            reason,
            message,
        });
    }

    /// A reservation the event settled, and the credits its hold gave back (in the digest).
    pub fn settled(&mut self, reservation_id: &str, released: Picos) {
        self.digest.extend_from_slice(b"s");
        self.digest.extend_from_slice(reservation_id.as_bytes());
        self.digest.extend_from_slice(&[0]);
        self.digest.extend_from_slice(&released.to_le_bytes());
    }

    /// A top-up the kernel executed in this batch (in the digest).
    pub fn topped_up(&mut self, grant_id: &str, credits: Picos) {
        self.digest.extend_from_slice(b"t");
        self.digest.extend_from_slice(grant_id.as_bytes());
        self.digest.extend_from_slice(&[0]);
        self.digest.extend_from_slice(&credits.to_le_bytes());
    }

    /// (accepted, duplicates, the reason of each rejection) so far.
    pub fn counts(&self) -> (u32, u32, Vec<Reason>) {
        let reasons = self.ack.rejected.iter().filter_map(|r| Reason::from_wire(r.reason)).collect();
        (self.ack.accepted, self.ack.duplicates, reasons)
    }

    /// The journal sequence number the ack reports (not part of the digest).
    pub fn set_journal_seq(&mut self, journal_seq: u64) {
        self.ack.journal_seq = journal_seq;
    }

    /// (IngestAck bytes, 16-byte digest).
    pub fn finish(mut self) -> (Vec<u8>, [u8; 16]) {
        self.hasher.update(&self.digest);
        (self.ack.encode_to_vec(), self.hasher.digest128().to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_128;

    #[test]
    fn the_digest_is_xxh3_128_of_everything_written_however_it_was_gathered() {
        for events in [0u32, 1, 40, 300, 2_000] {
            let mut builder = AckBuilder::new("b", 1);
            let mut written = Vec::new();
            for index in 0..events {
                let (charge, overage) = (i128::from(index) * 1_000_003, i128::from(index % 7));
                builder.ledger("product", index % 3, charge, &[(index % 2, charge - overage)], overage);
                written.extend_from_slice(b"product\0");
                written.extend_from_slice(&(index % 3).to_le_bytes());
                written.extend_from_slice(&charge.to_le_bytes());
                written.extend_from_slice(&(index % 2).to_le_bytes());
                written.extend_from_slice(&(charge - overage).to_le_bytes());
                written.extend_from_slice(&overage.to_le_bytes());
                if index % 5 == 4 {
                    builder.duplicate(index as usize);
                    written.push(b'd');
                } else {
                    builder.accepted(index as usize);
                    written.push(b'a');
                }
                written.extend_from_slice(&u64::from(index).to_le_bytes());
            }
            let (_, digest) = builder.finish();
            assert_eq!(digest, xxh3_128(&written).to_be_bytes(), "{events} events");
        }
    }
}
