//! Listeners: accept TCP connections and spread them over the session
//! arbiters (one actix arbiter per core), negotiate (`stream::negotiate`),
//! and start the session actor of each bound stream (`session::c2s`).

pub mod pki;
pub mod shaping;
pub mod tls;
pub mod tls_conn;
pub mod transport;
pub mod websocket;

use crate::server::Server;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// Client connections of this process: accepted and not yet closed.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// One open client connection, counted in `OPEN` until it is dropped with
/// the connection (by the negotiation, or by the session that took it).
pub struct ConnSlot(());

impl Drop for ConnSlot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Descriptors kept free for everything that is not a client connection:
/// the store's files, cluster links, the admin and metrics sockets.
const RESERVED_FDS: usize = 1024;

/// Most client connections this process may hold: its descriptor limit
/// less a reserve. A login storm that would take the last descriptors
/// leaves the rest waiting in the listen backlog instead, so the store
/// never fails to open a file (a store that cannot write stops Raft).
pub fn max_connections() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = raise_fd_limit();
        limit.saturating_sub(RESERVED_FDS.min(limit / 4)).max(1)
    })
}

/// Raises the soft limit of open descriptors to the hard limit (as servers
/// do) and returns the soft limit in force.
fn raise_fd_limit() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    usize::try_from(r.rlim_cur).unwrap_or(usize::MAX)
}

/// Pending connections the kernel keeps for a listener while the node is
/// busy (a storm): the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a c2s listener with a backlog for login storms.
/// Resolves `addr` ("host:port") and listens on its first address.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let sock = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    listen(sock).with_context(|| format!("listening on {addr}"))
}

pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a c2s listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// XML stream, STARTTLS required (RFC 6120).
    Starttls,
    /// TLS first (XEP-0368).
    DirectTls,
    /// XMPP over WebSocket (RFC 7395).
    WebSocket,
}

/// Accepts connections on `listener` until the process ends.
pub async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    kind: Listener,
    arbiters: Arc<Vec<actix_rt::ArbiterHandle>>,
) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let max = max_connections();
    loop {
        // A login storm waits in the listen backlog, not in slow handshakes.
        server.shaper.admit_node().await;
        if OPEN.load(Ordering::Relaxed) >= max {
            metrics::counter!("starling_c2s_shaped_total", "reason" => "descriptors").increment(1);
            tracing::warn!(
                max,
                "at the connection limit (descriptors): new connections wait"
            );
            while OPEN.load(Ordering::Relaxed) >= max {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        OPEN.fetch_add(1, Ordering::Relaxed);
        let slot = ConnSlot(());
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
            // On the arbiter's own thread from here: negotiation may hold
            // the context of a session actor it is about to start
            // (XEP-0198 resumption), which never leaves its thread.
            actix_rt::spawn(async move {
                use crate::stream::negotiate::{self, Negotiated};
                // Negotiation ends by handing over a bound stream; the
                // session actor takes it from there on this same arbiter.
                if kind == Listener::WebSocket {
                    match negotiate::serve_websocket(server.clone(), tcp, peer).await {
                        Some(Negotiated::Bound(bound)) => {
                            crate::session::c2s::start(server, bound, slot)
                        }
                        Some(Negotiated::Resumed(stream, r, sasl2)) => {
                            crate::session::c2s::start_resumed(server, stream, r, sasl2, slot)
                        }
                        None => {}
                    }
                    return;
                }
                let direct_tls = kind == Listener::DirectTls;
                match negotiate::serve_connection(server.clone(), tcp, peer, direct_tls).await {
                    Some(Negotiated::Bound(bound)) => {
                        crate::session::c2s::start(server, bound, slot)
                    }
                    Some(Negotiated::Resumed(stream, r, sasl2)) => {
                        crate::session::c2s::start_resumed(server, stream, r, sasl2, slot)
                    }
                    None => {}
                }
            });
        });
    }
}

/// Negotiates and serves a BOSH session (XEP-0206) on one of the
/// arbiters, as [`accept_loop`] does a TCP connection.
pub(crate) fn spawn_bosh(
    server: Arc<Server>,
    arbiters: &[actix_rt::ArbiterHandle],
    conn: crate::http::bosh::BoshConn,
    ip: String,
) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    OPEN.fetch_add(1, Ordering::Relaxed);
    let slot = ConnSlot(());
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % arbiters.len();
    arbiters[i].spawn(async move {
        actix_rt::spawn(async move {
            use crate::stream::negotiate::{self, Negotiated};
            match negotiate::serve_bosh(server.clone(), conn, ip).await {
                Some(Negotiated::Bound(bound)) => crate::session::c2s::start(server, bound, slot),
                Some(Negotiated::Resumed(stream, r, sasl2)) => {
                    crate::session::c2s::start_resumed(server, stream, r, sasl2, slot)
                }
                None => {}
            }
        });
    });
}

/// Accepts XEP-0114 component connections on `listener` until the process
/// ends: each is negotiated (`stream::accept`) and served by its session
/// actor (`session::component`) on one of the arbiters.
pub async fn accept_components(
    server: Arc<Server>,
    listener: TcpListener,
    arbiters: Arc<Vec<actix_rt::ArbiterHandle>>,
) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (components)");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        OPEN.fetch_add(1, Ordering::Relaxed);
        let slot = ConnSlot(());
        let Ok(std) = tcp.into_std() else {
            continue;
        };
        let server = server.clone();
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % arbiters.len();
        arbiters[i].spawn(async move {
            let Ok(tcp) = tokio::net::TcpStream::from_std(std) else {
                return;
            };
            let ip = peer.ip().to_string();
            if let Some(verified) = crate::stream::accept::negotiate(&server, tcp, &ip).await {
                crate::session::component::start(server, verified, slot);
            }
        });
    }
}
