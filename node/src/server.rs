//! The state every session shares: configuration, storage, router, TLS,
//! the module registry and the authentication throttle. Built once at
//! start.

use crate::config::Config;
use crate::modules::Registry;
use crate::router::Router;
use crate::storage::Storage;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

pub struct Server {
    pub config: Config,
    pub storage: Storage,
    pub router: Router,
    pub tls: Arc<rustls::ServerConfig>,
    /// The same certificates for HTTP clients (the WebSocket listener):
    /// ALPN `http/1.1` instead of XEP-0368's `xmpp-client`.
    pub tls_http: Arc<rustls::ServerConfig>,
    /// What the modules declared: IQ dispatch, hooks, disco and stream
    /// features.
    pub modules: Registry,
    pub started: Instant,
    pub throttle: Throttle,
    /// Secret for SCRAM's fake salts of unknown users.
    pub scram_secret: Vec<u8>,
    /// Connections that have not yet authenticated.
    pub unauthenticated: AtomicUsize,
    /// New connections per second, for the node and per address.
    pub shaper: crate::net::shaping::Shaper,
    /// This node's resumable sessions (XEP-0198), by SM-ID.
    pub resumable: crate::session::sm::Resumable,
    /// Services hosted on subdomains (MUC), and the rooms this node runs.
    pub services: crate::services::Services,
    /// XEP-0363 file upload: the shared token key (read once) and the
    /// slot-request windows.
    pub upload: crate::modules::upload::State,
    /// XEP-0050 command sessions in progress on this node.
    pub adhoc: crate::modules::adhoc::Sessions,
    /// Federation: this node's links to other domains' servers.
    pub s2s: crate::s2s::S2s,
    /// Archive writes behind deliveries that no session waits for.
    pub archive_followups: crate::modules::mam::Followups,
    /// XEP-0178: the CAs of `[c2s] client_ca_file`, when set and usable.
    pub client_trust: Option<crate::auth::external::ClientTrust>,
    /// The `tls-server-end-point` channel bindings of the certificates
    /// `tls` presents (XEP-0484's `HT-SHA-256-ENDP`).
    pub end_points: crate::net::tls::EndPoints,
}

impl Server {
    pub fn new(config: Config, storage: Storage, tls: Arc<rustls::ServerConfig>) -> Self {
        Server::with_modules(config, storage, tls, Registry::default())
    }

    /// Like [`Server::new`] with another set of modules (tests add their
    /// own to the built-in ones with [`Registry::new`]).
    pub fn with_modules(
        config: Config,
        storage: Storage,
        tls: Arc<rustls::ServerConfig>,
        modules: Registry,
    ) -> Self {
        let scram_secret = load_or_make_secret(&config.data_dir);
        let config_services = config.clone();
        let client_trust = config.c2s.client_ca_file.as_deref().and_then(|path| {
            let crls = config.c2s.client_crl_file.as_deref();
            crate::auth::external::ClientTrust::load(path, crls, true)
        });
        let end_points = crate::net::tls::EndPoints::load(&config).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no tls-server-end-point channel binding");
            Default::default()
        });
        Server {
            throttle: Throttle::new(&config),
            shaper: crate::net::shaping::Shaper::new(
                config.c2s.connect_rate,
                config.c2s.connect_rate_per_ip,
            ),
            config,
            router: Router::new(storage.store.clone()),
            storage,
            tls_http: crate::net::tls::for_http(&tls),
            tls,
            modules,
            started: Instant::now(),
            scram_secret,
            unauthenticated: AtomicUsize::new(0),
            resumable: Default::default(),
            services: crate::services::Services::new(&config_services),
            upload: Default::default(),
            adhoc: Default::default(),
            s2s: Default::default(),
            archive_followups: Default::default(),
            client_trust,
            end_points,
        }
    }

    /// Whether `domain` is served here.
    pub fn is_local(&self, domain: &str) -> bool {
        self.config.serves(domain)
    }
}

fn load_or_make_secret(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("scram-secret");
    if let Ok(s) = std::fs::read(&path)
        && s.len() == 32
    {
        return s;
    }
    let s: [u8; 32] = rand::random();
    let _ = std::fs::create_dir_all(dir);
    if let Err(e) = crate::net::tls::write_private(&path, &s) {
        tracing::warn!(error = %e, path = %path.display(), "could not keep the SCRAM secret; unknown users' fake salts will change at restart");
    }
    s.to_vec()
}

/// Counts failed authentications per account and per client address in a
/// window: an account past its limit is locked until the window passes; an
/// address past its limit gets longer delays.
pub struct Throttle {
    failures: DashMap<String, (u32, Instant)>,
    window: Duration,
    per_account: u32,
    per_ip: u32,
    base_delay: Duration,
}

impl Throttle {
    fn new(cfg: &Config) -> Self {
        Throttle {
            failures: DashMap::new(),
            window: Duration::from_secs(cfg.auth.failure_window_secs),
            per_account: cfg.auth.max_failures_per_account,
            per_ip: cfg.auth.max_failures_per_ip,
            base_delay: Duration::from_millis(cfg.auth.failure_delay_ms),
        }
    }

    fn count(&self, key: &str) -> u32 {
        match self.failures.get(key) {
            Some(e) if e.1.elapsed() < self.window => e.0,
            _ => 0,
        }
    }

    /// Whether `account` is locked out for now (too many failures). A
    /// client address is never refused outright: behind a load balancer or
    /// NAT one address carries many users; it is slowed down instead.
    pub fn locked(&self, account: Option<&str>) -> bool {
        account.is_some_and(|a| self.count(a) >= self.per_account)
    }

    /// How long to wait before answering a failed attempt from `ip` on
    /// `account` (the failure already recorded): it grows with repeated
    /// failures on the account and, more slowly, from the address, up to 6
    /// times the base delay; past the address limit it is 4 times that.
    pub fn failure_delay(&self, ip: &str, account: Option<&str>) -> Duration {
        let by_account = account.map_or(1, |a| self.count(a));
        let by_ip = self.count(ip);
        let factor = by_account.max(by_ip / 2).clamp(1, 6);
        let ip_factor = if by_ip >= self.per_ip { 4 } else { 1 };
        self.base_delay * factor * ip_factor
    }

    pub fn record_failure(&self, ip: &str, account: Option<&str>) {
        for key in std::iter::once(ip).chain(account) {
            let mut e = self
                .failures
                .entry(key.to_owned())
                .or_insert((0, Instant::now()));
            if e.1.elapsed() >= self.window {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
        if self.failures.len() > 100_000 {
            let window = self.window;
            self.failures.retain(|_, v| v.1.elapsed() < window);
        }
    }
}
