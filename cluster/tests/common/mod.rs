//! Helpers shared by the multi-node tests: addresses, certificates,
//! configurations and bounded waiting.
#![allow(dead_code)]

pub mod proxy;
pub mod recorder;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use starling_cluster::{ClusterTls, Op, StoreConfig, pki};

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn cfg(dir: &Path, id: u64, addr: impl ToString) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        node_id: id,
        raft_addr: addr.to_string(),
    }
}

pub fn put(key: &str) -> Op {
    Op::Put {
        space: "s".into(),
        key: key.into(),
        value: b"v".to_vec(),
    }
}

/// A CA in `dir` and `n` node certificates signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let (ca, ca_key) = pki::make_ca(dir).unwrap();
        Pki {
            ca,
            ca_key,
            dir: dir.to_path_buf(),
        }
    }

    pub fn node(&self, name: &str) -> ClusterTls {
        let (cert, key) = pki::make_node_cert(
            &self.ca,
            &self.ca_key,
            &self.dir,
            name,
            &["127.0.0.1".to_string(), "localhost".to_string()],
        )
        .unwrap();
        ClusterTls {
            ca_cert: self.ca.clone(),
            cert,
            key,
        }
    }
}

pub async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records the cluster events a node receives: expired nodes, and the
/// routes dropped in bulk.
#[derive(Default)]
pub struct Events(
    pub std::sync::Mutex<Vec<u64>>,
    pub std::sync::Mutex<Vec<starling_cluster::routes::Route>>,
    /// Registry epochs this node was told to re-publish in.
    pub std::sync::Mutex<Vec<u64>>,
);

impl starling_cluster::ClusterEvents for Events {
    fn node_expired(&self, node_id: u64) {
        self.0.lock().unwrap().push(node_id);
    }

    fn routes_dropped(&self, routes: Vec<starling_cluster::routes::Route>) {
        self.1.lock().unwrap().extend(routes);
    }

    fn registry_reset(&self, epoch: u64) {
        self.2.lock().unwrap().push(epoch);
    }
}

impl Events {
    pub fn saw(&self, id: u64) -> bool {
        self.0.lock().unwrap().contains(&id)
    }
}

/// Fast leases for tests.
pub fn fast_lease() -> starling_cluster::LeaseConfig {
    starling_cluster::LeaseConfig {
        renew_ms: 200,
        ttl_ms: 1500,
    }
}

/// One node of a test cluster: its store, its gRPC server task, what it
/// was opened with.
pub struct Node {
    pub id: u64,
    pub store: starling_cluster::Store,
    pub server: tokio::task::JoinHandle<Result<(), starling_cluster::StoreError>>,
    pub events: std::sync::Arc<Events>,
    pub cfg: StoreConfig,
    pub opts: starling_cluster::StoreOptions,
    pub listen: SocketAddr,
}

impl Node {
    /// Opens (joining unless `first`) and serves on `listen`.
    pub async fn start(
        cfg: StoreConfig,
        opts: starling_cluster::StoreOptions,
        listen: SocketAddr,
        first: bool,
    ) -> Node {
        let store = if first {
            starling_cluster::Store::open_with(cfg.clone(), opts.clone()).await
        } else {
            starling_cluster::Store::open_joining_with(cfg.clone(), opts.clone()).await
        }
        .unwrap();
        let events = std::sync::Arc::new(Events::default());
        store.set_cluster_events(events.clone());
        let server = tokio::spawn({
            let s = store.clone();
            async move { s.serve_grpc(listen).await }
        });
        Node {
            id: cfg.node_id,
            store,
            server,
            events,
            cfg,
            opts,
            listen,
        }
    }

    /// Stops the node the way a crash looks to its peers: Raft, server
    /// and streams stop, no leave, no goodbye.
    pub async fn crash(self) -> (StoreConfig, starling_cluster::StoreOptions, SocketAddr) {
        let _ = self.store.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        (self.cfg, self.opts, self.listen)
    }
}

pub fn leader_of(nodes: &[&Node]) -> Option<u64> {
    let l = nodes[0].store.leader()?;
    nodes
        .iter()
        .all(|n| n.store.leader() == Some(l))
        .then_some(l)
}
