//! `Store`'s delivery calls: registering the node's `LocalDelivery` and
//! sending envelopes to other nodes (`deliver`, `deliver_acked`).
//!
//! Only a front: the queues, streams and receiving service are
//! `delivery.rs`, and this module must not keep delivery state of its own.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::delivery::{self, DeliveryError, DeliveryResult, Envelope, LocalDelivery};
use crate::handle::Store;
use crate::metrics;

impl Store {
    /// Registers the node's handler for stanzas other nodes route here
    /// (replacing any earlier one). Until then they are refused.
    pub fn set_local_delivery(&self, handler: Arc<dyn LocalDelivery>) {
        *self
            .inner
            .hub
            .local
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Sends `env` to node `node_id` over its delivery stream without
    /// waiting (callable from any thread or runtime): `Ok` means queued.
    /// A full queue to that node is `Backpressure` at once. Whether it was delivered is only counted
    /// (`starling_cluster_delivered_total`); use `deliver_acked` to know.
    pub fn deliver(&self, node_id: u64, env: Envelope) -> Result<(), DeliveryError> {
        delivery::send(&self.inner.hub, node_id, env, None)
    }

    /// Sends `env` to node `node_id` and waits for that node's answer, so
    /// the caller can fall back (offline storage) when it was not
    /// delivered. Queueing fails as `deliver` does; a stream that breaks
    /// before the ack, or no ack within 10 s, is `Unavailable`. The future
    /// may be awaited on any executor.
    pub async fn deliver_acked(
        &self,
        node_id: u64,
        env: Envelope,
    ) -> Result<DeliveryResult, DeliveryError> {
        let (tx, rx) = oneshot::channel();
        delivery::send(&self.inner.hub, node_id, env, Some(tx))?;
        // The timer runs on the store's runtime: callers may be anywhere.
        let wait = self
            .inner
            .shared
            .rt
            .spawn(async move { tokio::time::timeout(delivery::ACK_TIMEOUT, rx).await });
        match wait.await.map_err(|_| DeliveryError::Shutdown)? {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DeliveryError::Shutdown),
            Err(_) => {
                metrics::delivery_error("timeout");
                Err(DeliveryError::Unavailable(format!(
                    "no ack from node {node_id}"
                )))
            }
        }
    }
}
