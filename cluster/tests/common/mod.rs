//! Helpers shared by the multi-node tests: addresses, certificates,
//! configurations and bounded waiting.
#![allow(dead_code)]

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
