//! Re-rating on touch: the customers a UsageBatch names, so that the writer can re-rate those a
//! publish still has pending before the batch is rated (engine/pending.py). Reads the batch in
//! place (batch.rs), changes nothing.

use rustc_hash::FxHashSet;

use crate::batch;

/// The distinct customer ids the batch's events name, in the order first named; Err when the bytes
/// are not a UsageBatch (ingestion then refuses it, naming the event and field prost refused).
pub fn batch_customers(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut owned = None;
    let batch = batch::read(bytes, &mut owned).map_err(|e| e.to_string())?;
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    Ok(batch.events().filter(|e| seen.insert(e.customer_id)).map(|e| e.customer_id.to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::decode::wire;

    fn event(transaction_id: &str, customer_id: &str) -> wire::UsageEvent {
        wire::UsageEvent {
            transaction_id: transaction_id.into(),
            customer_id: customer_id.into(),
            event_type: "ai".into(),
            timestamp_ms: 0,
            dimensions: vec![],
            values: vec![],
            reservation_id: String::new(),
        }
    }

    #[test]
    fn names_each_customer_once_in_the_order_first_named() {
        let events = vec![event("1", "b"), event("2", "a"), event("3", "b"), event("4", "c")];
        let bytes = wire::UsageBatch { batch_id: "x".into(), events }.encode_to_vec();
        assert_eq!(batch_customers(&bytes).unwrap(), ["b", "a", "c"]);
        assert!(batch_customers(&[0xff, 0xff]).is_err());
    }
}
