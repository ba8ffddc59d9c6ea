//! Process wiring: runtimes, storage, listeners, metrics, shutdown.
//!
//! Two kinds of threads: a multi-thread tokio runtime for the replicated
//! store (openraft), the metrics exporter and the admin socket; and one
//! actix arbiter per core for the sessions (each a current-thread runtime),
//! fed by accept loops on the actix system thread.

use crate::admin::{self, Request, Response};
use crate::config::Config;
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::storage::Storage;
use anyhow::Context as _;
use starling_cluster::{Store, StoreConfig, StoreOptions};
use std::sync::Arc;

pub fn init_tracing(json: bool) {
    use tracing_subscriber::filter::{EnvFilter, filter_fn};
    use tracing_subscriber::prelude::*;
    let env = EnvFilter::try_from_env("STARLING_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    // The env filter for the whole subscriber (a callsite it disables costs
    // nothing); the call-site filter, also decided once per call site, on
    // the output only.
    tracing_subscriber::registry()
        .with(env)
        .with(fmt.with_filter(filter_fn(|m| !late_follower_line(m))))
        .init();
}

/// openraft's ERROR line for each follower that did not confirm the
/// leadership within one heartbeat interval (`timeout while confirming
/// leadership for read request`, openraft 0.9.25's `core/raft_core.rs`
/// line 383). A late follower is not an error: the leader asks again
/// (`starling_cluster::raft::confirm_leadership`), which warns itself
/// when a majority never answers. A join storm on a small machine printed
/// hundreds of them. Another openraft version moves the line, and it shows
/// again (`test_cluster_failover.py` then fails).
fn late_follower_line(m: &tracing::Metadata<'_>) -> bool {
    *m.level() == tracing::Level::ERROR
        && m.target() == "openraft::core::raft_core"
        && m.file().is_some_and(|f| f.ends_with("raft_core.rs"))
        && m.line() == Some(383)
}

/// The runtime of the replicated store (openraft, the batcher, applying,
/// gRPC between nodes): `cluster.store_threads` workers.
fn store_runtime(cfg: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.cluster.store_threads())
        .thread_name("starling-store")
        .enable_all()
        .build()?)
}

fn store_config(cfg: &Config) -> StoreConfig {
    StoreConfig {
        data_dir: cfg.data_dir.join("store"),
        node_id: cfg.cluster.node_id,
        raft_addr: cfg.cluster.advertised(),
    }
}

fn store_options(cfg: &Config) -> StoreOptions {
    StoreOptions {
        tls: cfg.cluster.tls(),
        write_linger_us: cfg.cluster.write_linger_us,
        behind_linger_us: cfg.cluster.behind_linger_us,
        ..StoreOptions::default()
    }
}

/// Opens the store: a node with `cluster.join` that is not a voter yet
/// joins that cluster (again, if an earlier join did not complete), any
/// other fresh node starts a cluster of one, a known node recovers.
/// With cluster TLS configured, the node serves its gRPC port so that
/// others can join and replicate.
async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    // With `join`, never bootstrap a cluster of one: a node whose earlier
    // join failed half-way must try again, not come up on its own.
    let fresh = !cfg.data_dir.join("store").exists();
    let store = match &cfg.cluster.join {
        Some(_) => Store::open_joining_with(store_config(cfg), store_options(cfg)).await?,
        None => Store::open_with(store_config(cfg), store_options(cfg)).await?,
    };
    if cfg.cluster.tls().is_some() {
        let addr: std::net::SocketAddr = format!("{}:{}", cfg.cluster.bind, cfg.cluster.port)
            .parse()
            .context("cluster.bind / cluster.port")?;
        let s = store.clone();
        tokio::spawn(async move {
            if let Err(e) = s.serve_grpc(addr).await {
                tracing::error!(error = %e, "cluster gRPC server failed");
            }
        });
        tracing::info!(%addr, node_id = cfg.cluster.node_id, "cluster port listening (mutual TLS)");
    }
    if let Some(seed) = &cfg.cluster.join
        && (fresh || !store.is_voter(std::time::Duration::from_secs(2)).await)
    {
        if let Err(e) = join_with_retries(&store, seed).await {
            let _ = store.shutdown().await;
            return Err(e).with_context(|| format!("joining the cluster through {seed}"));
        }
        tracing::info!(%seed, "joined the cluster");
    }
    Ok(store)
}

/// Joins through `seed`, retrying for a minute: the seed may not be up
/// yet (nodes started together), or another node's join may be changing
/// the membership right now (one change at a time).
async fn join_with_retries(store: &Store, seed: &str) -> Result<(), starling_cluster::StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match store.join(seed).await {
            Ok(()) => return Ok(()),
            Err(e) if retriable(&e) && std::time::Instant::now() + pause < deadline => {
                tracing::warn!(%seed, error = %e, "could not join yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A refused certificate will not become valid by waiting.
fn retriable(e: &starling_cluster::StoreError) -> bool {
    let msg = e.to_string().to_ascii_lowercase();
    !["certificate", "handshake", "tls"]
        .iter()
        .any(|w| msg.contains(w))
}

/// Runs a node until SIGINT or SIGTERM.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let rt = store_runtime(&cfg)?;
    if cfg.metrics.port != 0 {
        let _guard = rt.enter();
        let addr: std::net::SocketAddr = format!("{}:{}", cfg.metrics.bind, cfg.metrics.port)
            .parse()
            .context("metrics.bind")?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ])?
            .install()
            .context("starting the metrics exporter")?;
    }
    crate::metrics::describe();
    let store = rt.block_on(open_store(&cfg)).context("opening the store")?;
    let tls = crate::net::tls::server_config(&cfg)?;
    let server = Arc::new(Server::new(cfg, Storage::new(store.clone()), tls));
    store.set_local_delivery(Arc::new(crate::routing::NodeDelivery(Arc::downgrade(
        &server,
    ))));
    store.set_cluster_events(Arc::new(crate::session::cluster_events::NodeEvents(
        Arc::downgrade(&server),
    )));
    rt.block_on(async {
        // Catch up before taking logins, so that what happened while this
        // node was away (its own expiry, say) is applied before any
        // session binds here.
        if server.storage.store.has_peers()
            && let Err(e) = server.storage.store.read_barrier().await
        {
            tracing::warn!(error = %e, "could not catch up with the cluster before serving");
        }
        // Sessions are published in the registry from the first login on
        // (and this node's previous routes are gone before it): wait for
        // the registry group, a while.
        if server.storage.store.has_peers()
            && !server
                .storage
                .store
                .registry_wait(std::time::Duration::from_secs(10))
                .await
        {
            tracing::warn!(
                "not in a registry group yet; serving, sessions are published when it is"
            );
        }
        Ok::<_, starling_cluster::StoreError>(())
    })
    .context("clearing the routes of this node's previous run")?;
    {
        let s = server.clone();
        rt.spawn(async move {
            if let Err(e) = admin::serve(s).await {
                tracing::error!(error = %e, "admin socket failed");
            }
        });
    }
    rt.spawn(flush_last_activity_periodically(server.clone()));
    rt.spawn(crate::modules::mam::run_retention(server.clone()));
    rt.spawn(crate::session::resume::run_sweeper(server.clone()));
    if server.config.mam.enabled {
        // Before any message: archive ids start above the previous runs'.
        if let Err(e) = rt.block_on(crate::modules::mam::reserve_ids(&server)) {
            tracing::warn!(error = %e, "archive ids not reserved yet; writes check for taken ids");
        }
        rt.spawn(crate::modules::mam::run_reservations(server.clone()));
    }
    rt.spawn(crate::http::upload::run_cleanup(server.clone()));
    let system = actix_rt::System::new();
    let result = system.block_on(run_listeners(server.clone()));
    // Let the streams see their errors before the store goes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    rt.block_on(async {
        if let Err(e) = server.storage.flush_last_activity().await {
            tracing::warn!(error = %e, "last activity not written at shutdown");
        }
        if let Err(e) = store.shutdown().await {
            tracing::error!(error = %e, "store shutdown");
        }
    });
    let _ = std::fs::remove_file(admin::socket_path(&server.config.data_dir));
    tracing::info!("stopped");
    result
}

async fn run_listeners(server: Arc<Server>) -> anyhow::Result<()> {
    let arbiters: Vec<actix_rt::Arbiter> = (0..server.config.c2s.arbiters())
        .map(|_| actix_rt::Arbiter::new())
        .collect();
    let handles = Arc::new(arbiters.iter().map(|a| a.handle()).collect::<Vec<_>>());
    // Rooms (and other services' actors) run on the same arbiters.
    server
        .services
        .init(Arc::downgrade(&server), handles.clone());
    let c2s = &server.config.c2s;
    use crate::net::Listener;
    let mut ports = vec![(c2s.port, Listener::Starttls)];
    if c2s.tls_port != 0 {
        ports.push((c2s.tls_port, Listener::DirectTls));
    }
    if server.config.websocket.enabled {
        ports.push((server.config.websocket.port, Listener::WebSocket));
    }
    for (port, kind) in ports {
        let addr = format!("{}:{}", c2s.bind, port);
        let listener = crate::net::bind(&addr).await?;
        tracing::info!(%addr, ?kind, domains = ?server.config.domains, "c2s listening");
        actix_rt::spawn(crate::net::accept_loop(
            server.clone(),
            listener,
            kind,
            handles.clone(),
        ));
    }
    crate::s2s::start_listener(server.clone()).await;
    let components = &server.config.components;
    if components.enabled {
        let addr = format!("{}:{}", components.bind, components.port);
        let listener = crate::net::bind(&addr).await?;
        tracing::info!(%addr, components = ?components.secrets.keys().collect::<Vec<_>>(), "component listener (XEP-0114)");
        actix_rt::spawn(crate::net::accept_components(
            server.clone(),
            listener,
            handles.clone(),
        ));
    }
    let upload = crate::http::upload::start(server.clone()).await?;
    let bosh = crate::http::bosh::start(server.clone(), handles.clone()).await?;
    actix_rt::spawn(crate::services::proxy65::start(server.clone()));
    shutdown_signal().await;
    if let Some(h) = upload {
        h.stop(true).await;
    }
    if let Some(h) = bosh {
        h.stop(true).await;
    }
    tracing::info!(sessions = server.router.session_count(), "shutting down");
    // Alone, this node's rooms go with it: their occupants are told
    // (XEP-0045 status 332) before the sessions close. In a cluster the
    // rooms run on again elsewhere.
    if !server.storage.store.has_peers() && server.services.muc.shutdown() {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    for bare in server.router.users() {
        server
            .router
            .close_all(&bare, StreamCondition::SystemShutdown);
    }
    for (domain, _) in server.services.components.connected() {
        if let Some(h) = server.services.components.handle(&domain) {
            h.close(StreamCondition::SystemShutdown);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for a in arbiters {
        a.stop();
    }
    Ok(())
}

/// Writes the last-activity records of the past second (XEP-0012), all in
/// a few durable writes (`Storage::record_last_activity`).
async fn flush_last_activity_periodically(server: Arc<Server>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = server.storage.flush_last_activity().await {
            tracing::debug!(error = %e, "writing last activity; retried next second");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs an admin request against the running node, or against the store
/// directly when no node runs on this data directory.
pub fn admin_request(cfg: Config, req: Request) -> anyhow::Result<Response> {
    let rt = store_runtime(&cfg)?;
    rt.block_on(async {
        if let Some(r) = admin::call(&cfg.data_dir, &req).await {
            return r;
        }
        std::fs::create_dir_all(&cfg.data_dir)?;
        let store = Store::open_with(store_config(&cfg), store_options(&cfg))
            .await
            .context("opening the store (is a node running with another data directory?)")?;
        let storage = Storage::new(store.clone());
        let resp = admin::execute(&storage, &cfg, None, req).await;
        store.shutdown().await?;
        Ok(resp)
    })
}

/// `starling cluster status --addr`: asks any member over mutual TLS.
pub fn remote_status(cfg: &Config, addr: &str) -> anyhow::Result<starling_cluster::ClusterStatus> {
    let rt = store_runtime(cfg)?;
    let tls = cfg.cluster.tls();
    rt.block_on(async { Ok(starling_cluster::query_status(addr, tls.as_ref()).await?) })
}
