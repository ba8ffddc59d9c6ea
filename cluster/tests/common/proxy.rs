//! A TCP proxy in front of each node that can cut a node off: every node
//! is reached through its proxy and connects out from its own loopback
//! address (127.0.0.1x), so a proxy knows which node a connection comes
//! from. `partition(k)` drops every connection to or from node `k` and
//! refuses new ones until `heal`. `pause` holds every byte in flight
//! (connections stay open: a hung peer) until `resume`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + id as u8])
}

#[derive(Default)]
struct State {
    /// Nodes cut off.
    cut: HashSet<u64>,
    /// Live connections: (from node, to node, pipe task).
    conns: Vec<(Option<u64>, u64, JoinHandle<()>)>,
}

pub struct Net {
    state: Mutex<State>,
    ips: Mutex<HashMap<IpAddr, u64>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    paused: watch::Sender<bool>,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            state: Mutex::default(),
            ips: Mutex::default(),
            tasks: Mutex::default(),
            paused: watch::channel(false).0,
        }
    }
}

/// Copies `from` to `to`, holding the bytes while paused.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Net {
    /// Starts the proxy for node `id`, forwarding to `target`; returns
    /// the address other nodes should use.
    pub async fn proxy(self: &Arc<Self>, id: u64, target: SocketAddr) -> SocketAddr {
        self.ips.lock().unwrap().insert(node_ip(id), id);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let net = self.clone();
        let t = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = l.accept().await else {
                    return;
                };
                let from = net.ips.lock().unwrap().get(&peer.ip()).copied();
                let mut st = net.state.lock().unwrap();
                if st.cut.contains(&id) || from.is_some_and(|f| st.cut.contains(&f)) {
                    drop(inbound);
                    continue;
                }
                let paused = net.paused.subscribe();
                let pipe = tokio::spawn(async move {
                    if let Ok(out) = TcpStream::connect(target).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = out.into_split();
                        tokio::join!(pipe(ir, ow, paused.clone()), pipe(or, iw, paused));
                    }
                });
                st.conns.retain(|(_, _, h)| !h.is_finished());
                st.conns.push((from, id, pipe));
            }
        });
        self.tasks.lock().unwrap().push(t);
        addr
    }

    pub fn partition(&self, k: u64) {
        let mut st = self.state.lock().unwrap();
        st.cut.insert(k);
        for (from, to, h) in &st.conns {
            if *to == k || *from == Some(k) {
                h.abort();
            }
        }
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().cut.clear();
    }

    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for (_, _, h) in self.state.lock().unwrap().conns.drain(..) {
            h.abort();
        }
    }
}
