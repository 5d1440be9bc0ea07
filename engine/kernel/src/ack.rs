//! The batch's answer: the IngestAck bytes, and a digest of everything the batch did.
//!
//! The digest (XXH3-128) covers each event's outcome and every ledger change (product, version,
//! charge, credits per grant, overage), so a replay that rates differently is caught.

use prost::Message;
use xxhash_rust::xxh3::xxh3_128;

use crate::decode::{wire, Reason, Refusal};
use crate::money::Picos;

pub struct AckBuilder {
    ack: wire::IngestAck,
    /// What the digest covers, hashed once at the end (cheaper than many small streaming updates).
    digest: Vec<u8>,
}

impl AckBuilder {
    /// `events`: how many the batch holds, to size the digest's buffer once.
    pub fn new(batch_id: &str, journal_seq: u64, events: usize) -> AckBuilder {
        let ack = wire::IngestAck { batch_id: batch_id.to_owned(), journal_seq, ..wire::IngestAck::default() };
        // About 9 bytes per outcome and 60 per product's ledger change.
        AckBuilder { ack, digest: Vec::with_capacity(events * 160) }
    }

    pub fn accepted(&mut self, index: usize) {
        self.ack.accepted += 1;
        self.digest.extend_from_slice(b"a");
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
    }

    pub fn duplicate(&mut self, index: usize) {
        self.ack.duplicates += 1;
        self.digest.extend_from_slice(b"d");
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
    }

    pub fn rejected(&mut self, index: usize, transaction_id: &str, refusal: Refusal) {
        self.digest.extend_from_slice(&[b'r', refusal.reason as u8]);
        self.digest.extend_from_slice(&(index as u64).to_le_bytes());
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
    pub fn finish(self) -> (Vec<u8>, [u8; 16]) {
        (self.ack.encode_to_vec(), xxh3_128(&self.digest).to_be_bytes())
    }
}
