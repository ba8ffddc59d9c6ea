//! Serving this node's cluster gRPC through a `Store` (`serve_grpc`), until
//! the store stops.
//!
//! Only starts `raft::grpc::serve` with the handle's parts; must not add
//! services or listeners of its own.

use std::net::SocketAddr;

use crate::error::StoreError;
use crate::handle::Store;
use crate::raft;

impl Store {
    /// Serves this node's cluster gRPC (the Raft and Admin services of
    /// `starling.cluster.v1`; mutual TLS when the options carry
    /// [`ClusterTls`](crate::ClusterTls)) on `addr` until the store shuts down.
    pub async fn serve_grpc(&self, addr: SocketAddr) -> Result<(), StoreError> {
        let mut stop = self.inner.shared.stop.subscribe();
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let inner = &self.inner;
        raft::grpc::serve(
            inner.shared.clone(),
            inner.leases.clone(),
            inner.hub.clone(),
            inner.registry.clone(),
            addr,
            signal,
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("raft gRPC on {addr}: {e}")))
    }
}
