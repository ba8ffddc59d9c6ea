//! Listeners: accept TCP connections and spread them over the session
//! arbiters (one actix arbiter per core), negotiate (`stream::negotiate`),
//! and start the session actor of each bound stream (`session::c2s`).

pub mod shaping;
pub mod tls;
pub mod tls_conn;
pub mod transport;

use crate::server::Server;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// Accepts connections on `listener` until the process ends.
pub async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    direct_tls: bool,
    arbiters: Arc<Vec<actix_rt::ArbiterHandle>>,
) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        // A login storm waits in the listen backlog, not in slow handshakes.
        server.shaper.admit_node().await;
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Move the socket to an arbiter's own reactor.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(_) => continue,
        };
        let server = server.clone();
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % arbiters.len();
        arbiters[i].spawn(async move {
            let Ok(tcp) = tokio::net::TcpStream::from_std(std) else {
                return;
            };
            let negotiated =
                crate::stream::negotiate::serve_connection(server.clone(), tcp, peer, direct_tls);
            // Negotiation ends by handing over a bound stream; the session
            // actor takes it from there on this same arbiter.
            if let Some(bound) = negotiated.await {
                crate::session::c2s::start(server, bound);
            }
        });
    }
}
