//! Mutual TLS between nodes: members replicate over TLS; a client without
//! a certificate signed by the cluster CA is refused by the server.

mod common;

use std::time::Duration;

use common::*;
use starling_cluster::{ClusterTls, OpResult, Store, StoreOptions};
use starling_proto::cluster::StatusRequest;
use starling_proto::cluster::admin_client::AdminClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn opts(tls: ClusterTls) -> StoreOptions {
    StoreOptions {
        tls: Some(tls),
        ..Default::default()
    }
}

/// Asks `addr` for its status with a raw client: `ca` to trust, `id` to
/// present (`None`: no client certificate).
async fn raw_status(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    id: Option<&ClusterTls>,
) -> Result<u64, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("starling-node");
    if let Some(id) = id {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&id.cert).unwrap(),
            std::fs::read(&id.key).unwrap(),
        ));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut c = AdminClient::new(ch);
    let r = tokio::time::timeout(Duration::from_secs(5), c.status(StatusRequest {}))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|s| format!("status: {s}"))?;
    Ok(r.into_inner().leader_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_over_mtls_and_strangers_are_refused() {
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(&pkidir.path().join("ca"));
    let foreign = Pki::new(&pkidir.path().join("foreign"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();

    let mut stores: Vec<Store> = Vec::new();
    for i in 0..3 {
        let id = i as u64 + 1;
        let c = cfg(dirs[i].path(), id, addrs[i]);
        let o = opts(ca.node(&format!("n{id}")));
        let s = if i == 0 {
            Store::open_with(c, o).await.unwrap()
        } else {
            Store::open_joining_with(c, o).await.unwrap()
        };
        tokio::spawn({
            let s = s.clone();
            let a = addrs[i];
            async move { s.serve_grpc(a).await }
        });
        if i > 0 {
            stores[0]
                .add_member(id, &addrs[i].to_string())
                .await
                .unwrap();
        }
        stores.push(s);
    }
    let r = stores[2].write(vec![put("k")]).await.unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    for s in &stores {
        eventually("replicated over TLS", 10, || {
            s.get("s", b"k").unwrap().is_some()
        })
        .await;
    }

    // A node certificate of the cluster CA is accepted.
    let member = ca.node("member");
    assert_eq!(raw_status(addrs[1], &ca.ca, Some(&member)).await, Ok(1));
    // No client certificate: refused.
    let r = raw_status(addrs[1], &ca.ca, None).await;
    assert!(r.is_err(), "no client certificate accepted: {r:?}");
    // A certificate from another CA: refused even when it trusts ours.
    let stranger = foreign.node("stranger");
    let r = raw_status(addrs[1], &ca.ca, Some(&stranger)).await;
    assert!(r.is_err(), "foreign certificate accepted: {r:?}");
    // And a node of the other CA does not trust our servers either.
    let r = raw_status(addrs[1], &foreign.ca, Some(&stranger)).await;
    assert!(r.is_err(), "server of another CA trusted: {r:?}");
    // Plain HTTP/2 gets nothing.
    let plain = Endpoint::from_shared(format!("http://{}", addrs[1]))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        AdminClient::new(plain).status(StatusRequest {}),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "plaintext accepted");

    // Unreadable or malformed TLS files fail at open.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = ca.node("bad");
    bad.key = pkidir.path().join("missing.pem");
    let r = Store::open_with(cfg(dir.path(), 9, free_addr()), opts(bad.clone())).await;
    assert!(r.is_err(), "missing key accepted");
    bad.key = bad.ca_cert.clone(); // a certificate where the key should be
    let r = Store::open_with(cfg(dir.path(), 9, free_addr()), opts(bad)).await;
    assert!(r.is_err(), "certificate accepted as a key");

    for s in stores.iter().rev() {
        s.shutdown().await.unwrap();
    }
}
