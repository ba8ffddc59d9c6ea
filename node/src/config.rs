//! Typed configuration: one struct per section, every field with a default,
//! so `starling serve` with no file starts a working server for `localhost`.
//! Sources, later wins: defaults, the TOML file, `STARLING_*` environment
//! variables (`STARLING_C2S__PORT=5222`), command-line flags. Checked once
//! at start by [`Config::check`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Domains this node serves (virtual hosting). Each has its own
    /// accounts and certificate.
    pub domains: Vec<String>,
    /// Where the replicated store, generated certificates and the admin
    /// socket live.
    pub data_dir: PathBuf,
    pub c2s: C2sConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub registration: RegistrationConfig,
    pub csi: CsiConfig,
    pub offline: OfflineConfig,
    pub push: PushConfig,
    pub sm: SmConfig,
    pub mam: MamConfig,
    pub muc: MucConfig,
    pub pep: PepConfig,
    pub pubsub: PubsubConfig,
    pub metrics: MetricsConfig,
    pub cluster: ClusterConfig,
    pub upload: UploadConfig,
    pub websocket: WebSocketConfig,
    pub bosh: BoshConfig,
    pub proxy65: Proxy65Config,
    pub s2s: S2sConfig,
    /// XEP-0114 external components (gateways, bridges).
    pub components: ComponentsConfig,
    /// Server administrators (XEP-0133 service administration).
    pub admin: AdminConfig,
    /// XEP-0215 external services (STUN/TURN) announced to clients.
    pub external_services: Vec<ExternalService>,
    /// XEP-0157 contact addresses, in each served domain's disco#info.
    pub contact: ContactConfig,
}

/// XEP-0157: whom to contact about a served domain (URIs: `mailto:`,
/// `xmpp:`, `https:`); `{domain}` stands for the domain. Empty lists are
/// left out; `admin` empty means the domain's `[admin]` administrators.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContactConfig {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl Default for ContactConfig {
    fn default() -> Self {
        ContactConfig {
            // RFC 2142: every domain's abuse mailbox.
            abuse: vec!["mailto:abuse@{domain}".into()],
            admin: Vec::new(),
            feedback: Vec::new(),
            sales: Vec::new(),
            security: Vec::new(),
            status: Vec::new(),
            support: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domains: vec!["localhost".into()],
            data_dir: PathBuf::from("./starling-data"),
            c2s: C2sConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            registration: RegistrationConfig::default(),
            csi: CsiConfig::default(),
            offline: OfflineConfig::default(),
            push: PushConfig::default(),
            sm: SmConfig::default(),
            mam: MamConfig::default(),
            muc: MucConfig::default(),
            pep: PepConfig::default(),
            pubsub: PubsubConfig::default(),
            metrics: MetricsConfig::default(),
            cluster: ClusterConfig::default(),
            upload: UploadConfig::default(),
            websocket: WebSocketConfig::default(),
            bosh: BoshConfig::default(),
            proxy65: Proxy65Config::default(),
            s2s: S2sConfig::default(),
            components: ComponentsConfig::default(),
            admin: AdminConfig::default(),
            external_services: Vec::new(),
            contact: ContactConfig::default(),
        }
    }
}

/// Server administrators: who may run the XEP-0133 commands (add, delete
/// and kick users, count them, announce) at a served domain, and the
/// XEP-0050 command sessions they open.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bare JIDs, each an administrator of its own domain.
    pub admins: Vec<String>,
    /// More administrators per served domain (`[admin.domains]`,
    /// `"example.net" = ["root@example.org"]`): they administer that
    /// domain besides their own.
    pub domains: std::collections::BTreeMap<String, Vec<String>>,
    /// Seconds a multi-stage command session waits for its next step
    /// before it expires.
    pub session_timeout_secs: u64,
    /// Command sessions one requester (full JID) may have open at once;
    /// starting another ends its oldest.
    pub max_sessions: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admins: Vec::new(),
            domains: Default::default(),
            session_timeout_secs: 600,
            max_sessions: 8,
        }
    }
}

/// Normalises a list of bare JIDs from the configuration (`key` names it
/// in the error).
fn bare_jids(key: &str, list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let j = jid::BareJid::new(a)
            .map_err(|e| anyhow::anyhow!("{key}: {a:?} is not a bare JID: {e}"))?;
        if j.node().is_none() {
            anyhow::bail!("{key}: {a:?} is not a user's bare JID");
        }
        let j = j.to_string();
        if !out.contains(&j) {
            out.push(j);
        }
    }
    Ok(out)
}

/// Client-to-server listeners and stream limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C2sConfig {
    /// Address to listen on.
    pub bind: String,
    /// STARTTLS port (RFC 6120). TLS is required before authentication.
    pub port: u16,
    /// Direct TLS port (XEP-0368); 0 disables it.
    pub tls_port: u16,
    /// Largest stanza accepted, in bytes; larger ones end the stream with
    /// `<policy-violation/>`.
    pub max_stanza_size: usize,
    /// Deepest element nesting accepted inside a stanza.
    pub max_depth: usize,
    /// Most attributes accepted on one element.
    pub max_attributes: usize,
    /// Seconds a connection has to authenticate and bind.
    pub handshake_timeout_secs: u64,
    /// Seconds without any data from the client before the stream is
    /// closed with `<connection-timeout/>`.
    pub idle_timeout_secs: u64,
    /// Seconds between whitespace keepalives sent to a quiet client.
    pub keepalive_secs: u64,
    /// Stanzas queued for one session before it counts as stalled.
    pub mailbox_size: usize,
    /// Bytes queued for one session before it counts as stalled.
    pub mailbox_bytes: usize,
    /// Seconds a write to the client may block before the session is closed.
    pub write_timeout_secs: u64,
    /// Most simultaneous connections that have not yet authenticated.
    pub max_unauthenticated: usize,
    /// New connections accepted per second on this node (a token bucket
    /// with a burst of one second's worth); beyond it, connections wait in
    /// the listen backlog instead of all being served slowly at once.
    /// 0: no limit. Default: 1,000 per core, about half of what a core
    /// logs in (STARTTLS, SCRAM, bind) when it does nothing else, so that a
    /// reconnect storm leaves room for the sessions already back.
    pub connect_rate: u32,
    /// New connections accepted per second from one client address (same
    /// bucket shape); beyond it the stream is refused with
    /// `<policy-violation/>` (on the direct TLS port: closed). 0: no limit.
    pub connect_rate_per_ip: u32,
    /// Single-threaded arbiters the sessions (and rooms) are spread over.
    /// 0: one per core.
    pub arbiters: usize,
    /// XEP-0178: PEM file of the certificate authorities whose client
    /// certificates log in with SASL EXTERNAL. When set, the TLS handshake
    /// asks clients for a certificate (they may send none), and a client
    /// whose certificate one of these CAs issued, valid now, with an
    /// XmppAddr of an account of the stream's domain, is offered EXTERNAL.
    /// Unset: no client is asked for a certificate.
    pub client_ca_file: Option<PathBuf>,
    /// PEM file of certificate revocation lists (RFC 5280) of those CAs: a
    /// certificate a list revokes is not offered EXTERNAL. Read again when
    /// the file changes (a CA publishes new lists on its schedule; a file
    /// that does not parse keeps the lists read before). A CA without a
    /// list here is not checked. Unset: no revocation check.
    pub client_crl_file: Option<PathBuf>,
}

/// `c2s.connect_rate` when the configuration does not set it.
pub fn default_connect_rate() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 1000).unwrap_or(u32::MAX)
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            bind: "0.0.0.0".into(),
            port: 5222,
            tls_port: 5223,
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            handshake_timeout_secs: 30,
            idle_timeout_secs: 600,
            keepalive_secs: 120,
            mailbox_size: 1024,
            mailbox_bytes: 4 * 1024 * 1024,
            write_timeout_secs: 30,
            max_unauthenticated: 10_000,
            connect_rate: default_connect_rate(),
            connect_rate_per_ip: 0,
            arbiters: 0,
            client_ca_file: None,
            client_crl_file: None,
        }
    }
}

impl C2sConfig {
    /// The session arbiters to start (`arbiters`, 0: one per core).
    pub fn arbiters(&self) -> usize {
        match self.arbiters {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Certificates. Domains without an entry get a self-signed certificate
/// generated at first start under `data_dir/certs/`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub certs: Vec<CertConfig>,
}

/// A PEM certificate chain and key for one domain.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Authentication policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// PBKDF2 iterations for new SCRAM credentials.
    pub scram_iterations: u32,
    /// Delay before answering a failed attempt, in milliseconds.
    pub failure_delay_ms: u64,
    /// Failed attempts per account within `failure_window_secs` before
    /// further attempts are refused with `<temporary-auth-failure/>`.
    pub max_failures_per_account: u32,
    /// Failed attempts per client address within the window before each
    /// further failure is answered 8 times slower.
    pub max_failures_per_ip: u32,
    pub failure_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 4096,
            failure_delay_ms: 300,
            max_failures_per_account: 10,
            max_failures_per_ip: 30,
            failure_window_secs: 60,
        }
    }
}

/// XEP-0077 in-band registration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Lets anyone create an account over XMPP. Off by default.
    pub enabled: bool,
}

/// XEP-0163 personal eventing (PEP): what one account may keep.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PepConfig {
    /// Nodes per account; creating another is `<policy-violation/>`.
    pub max_nodes: usize,
    /// Items a node keeps at most: what `pubsub#max_items = max` means;
    /// a larger number is `<not-acceptable/>`.
    pub max_items: usize,
    /// Largest item (serialised), in bytes; larger ones are
    /// `<not-acceptable/>` with `<payload-too-big/>` (XEP-0060 §7.1.3.4).
    pub max_item_bytes: usize,
}

impl Default for PepConfig {
    fn default() -> Self {
        PepConfig {
            max_nodes: 256,
            max_items: 1000,
            max_item_bytes: 128 * 1024,
        }
    }
}

/// XEP-0060 publish-subscribe: the `pubsub.<domain>` service of every
/// served domain. Item limits are `[pep]`'s (`max_items`,
/// `max_item_bytes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PubsubConfig {
    pub enabled: bool,
    /// The service JID is `<subdomain>.<domain>`.
    pub subdomain: String,
    /// Its name in the domain's disco#items and its identity.
    pub name: String,
    /// Who creates nodes (explicitly or by publishing to a missing one).
    pub create: PubsubCreate,
    /// Bare JIDs that may create nodes and own every node.
    pub admins: Vec<String>,
    /// Nodes per service; creating another is `<policy-violation/>`.
    pub max_nodes: usize,
}

/// Who may create nodes on a domain's pubsub service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubsubCreate {
    /// Users of that domain.
    Domain,
    /// Users of any served domain.
    Server,
    /// Only `admins`.
    Admins,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        PubsubConfig {
            enabled: true,
            subdomain: "pubsub".into(),
            name: "Publish-Subscribe".into(),
            create: PubsubCreate::Domain,
            admins: Vec::new(),
            max_nodes: 10_000,
        }
    }
}

/// XEP-0352 client state indication: what an inactive client is spared.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsiConfig {
    /// Presence stanzas held back per inactive session (the latest of each
    /// sender); one more sender sends them all. They wait in the session's
    /// queue, so at most half of `c2s.mailbox_size` are held whatever this
    /// says.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 512 }
    }
}

/// Offline message storage (RFC 6121 §8.5.2.1.1, XEP-0160).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Messages kept per user; more are refused with `<service-unavailable/>`.
    pub max_messages: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { max_messages: 1000 }
    }
}

/// XMPP over WebSocket (RFC 7395), for web clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Off by default: it opens one more port.
    pub enabled: bool,
    /// Port of the WebSocket listener, on `c2s.bind`.
    pub port: u16,
    /// `wss` with the domains' certificates. Off only behind a proxy that
    /// terminates TLS: STARTTLS does not exist over WebSocket, so a plain
    /// listener authenticates clients over whatever reached it.
    pub tls: bool,
    /// The HTTP path of the endpoint.
    pub path: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: false,
            port: 5280,
            tls: true,
            path: "/xmpp-websocket".into(),
        }
    }
}

/// XEP-0065 SOCKS5 bytestreams proxy at `proxy.<domain>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Proxy65Config {
    /// Off by default: it opens one more port.
    pub enabled: bool,
    pub subdomain: String,
    /// Address and port of the SOCKS5 listener.
    pub bind: String,
    pub port: u16,
    /// The address clients are told to connect to (this node's: in a
    /// cluster, each node its own). Default: the served domain.
    pub host: Option<String>,
    /// Proxy connections open at most on this node.
    pub max_connections: usize,
    /// Bytes per second each way of one transfer may move, at most (a
    /// proxy's bandwidth is the operator's: a client that relays a film
    /// does not get all of it). 0: no limit.
    pub max_bytes_per_second: u64,
}

impl Default for Proxy65Config {
    fn default() -> Self {
        Proxy65Config {
            enabled: false,
            subdomain: "proxy".into(),
            bind: "0.0.0.0".into(),
            port: 7777,
            host: None,
            max_connections: 10_000,
            max_bytes_per_second: 0,
        }
    }
}

/// XMPP over BOSH (XEP-0124, XEP-0206) for web clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoshConfig {
    /// Off by default: it opens one more port.
    pub enabled: bool,
    /// Port of the HTTP listener, on `c2s.bind`.
    pub port: u16,
    /// HTTPS with the domains' certificates. Off only behind a proxy that
    /// terminates TLS.
    pub tls: bool,
    /// The HTTP path of the endpoint.
    pub path: String,
    /// The longest a request is held open (the client's `wait`, at most
    /// this).
    pub max_wait_secs: u64,
    /// A session with no request for this long ends.
    pub inactivity_secs: u64,
    /// BOSH sessions at most on this node.
    pub max_sessions: usize,
}

impl Default for BoshConfig {
    fn default() -> Self {
        BoshConfig {
            enabled: false,
            port: 5281,
            tls: true,
            path: "/http-bind".into(),
            max_wait_secs: 60,
            inactivity_secs: 60,
            max_sessions: 100_000,
        }
    }
}

/// Server-to-server federation (RFC 6120 §3, §5, XEP-0220 dialback): the
/// listener other domains' servers connect to, and the links this node
/// opens to them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S2sConfig {
    /// Federation with other domains. Off: stanzas to them bounce with
    /// `<remote-server-not-found/>` and no port is opened.
    pub enabled: bool,
    /// Address of the listener.
    pub bind: String,
    /// Port other servers connect to (RFC 6120 §14.7: 5269). A port that
    /// cannot be bound is logged and the node runs without incoming
    /// federation (its outgoing links still work).
    pub port: u16,
    /// Port for other servers' direct TLS (XEP-0368, `_xmpps-server._tcp`
    /// SRV records; 5270 is usual). 0: none.
    pub tls_port: u16,
    /// Streams must be encrypted (STARTTLS) before dialback, both ways
    /// (RFC 7590). Off only on a private network.
    pub require_tls: bool,
    /// Find other domains' servers in DNS (`_xmpp-server._tcp` SRV
    /// records, then the domain itself on port 5269). Off: only `hosts`.
    pub dns: bool,
    /// Fixed addresses (`"host:port"`) of other domains' servers, tried
    /// before DNS (`[s2s.hosts] "example.net" = "10.0.0.5:5269"`).
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Seconds to find, connect to and authenticate with a server before
    /// what waits for it bounces with `<remote-server-timeout/>`.
    pub connect_timeout_secs: u64,
    /// Seconds a link with no traffic either way stays open.
    pub idle_timeout_secs: u64,
    /// Stanzas queued for one remote domain while its link is made; more
    /// bounce with `<resource-constraint/>`.
    pub max_queue: usize,
    /// Dialback secret (XEP-0185). Unset: one random secret, made by the
    /// first node that needs it and kept in the replicated store, so every
    /// node of a cluster answers for the links of the others.
    pub secret: Option<String>,
    /// SASL EXTERNAL with certificates (RFC 6120 §6.4, §13.8.4; XEP-0178):
    /// offered to a server whose TLS client certificate a trusted CA
    /// issued for the domain it claims, and used on our links when the
    /// other server offers it (presenting the domain's certificate), with
    /// dialback when either side cannot.
    pub sasl_external: bool,
    /// Trust the operating system's certificate authorities
    /// (`/etc/ssl/certs`) for other servers' certificates.
    pub system_roots: bool,
    /// More certificate authorities (a PEM file) to trust for other
    /// servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM file of certificate revocation lists (RFC 5280) of those CAs: a
    /// server whose certificate a list revokes is not offered SASL
    /// EXTERNAL (dialback still proves its domain). Read again when the
    /// file changes; a CA without a list here is not checked. Unset: no
    /// revocation check.
    pub crl_file: Option<PathBuf>,
    /// Domains (and their subdomains) federation refuses, both ways.
    pub blocked_domains: Vec<String>,
    /// When not empty, the only domains (and their subdomains) federation
    /// talks to.
    pub allowed_domains: Vec<String>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            enabled: true,
            bind: "0.0.0.0".into(),
            port: 5269,
            tls_port: 0,
            require_tls: true,
            dns: true,
            hosts: Default::default(),
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            max_queue: 1000,
            secret: None,
            sasl_external: true,
            system_roots: true,
            ca_file: None,
            crl_file: None,
            blocked_domains: Vec::new(),
            allowed_domains: Vec::new(),
        }
    }
}

/// XEP-0114 external components: a listener where gateways and bridges
/// (Slidge, Biboumi, Spectrum2) log in with a shared secret as a domain of
/// their own, and the secret of each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentsConfig {
    /// Off by default: the port logs in with a shared secret only.
    pub enabled: bool,
    /// Port of the component listener (`jabber:component:accept`).
    pub port: u16,
    /// Address it listens on: loopback by default (the stream is not
    /// encrypted; failed handshakes are only slowed down).
    pub bind: String,
    /// Component JID (a domain) -> its shared secret. Each must be a
    /// subdomain of a served domain (listed in that domain's
    /// disco#items) or be named in `other_domains`.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Component domains allowed although they are no subdomain of a
    /// served domain (listed in no domain's disco#items).
    pub other_domains: Vec<String>,
    /// Stanzas and bytes waiting for one component's socket at most (its
    /// connection carries a whole gateway's traffic).
    pub mailbox_size: usize,
    pub mailbox_bytes: usize,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            enabled: false,
            port: 5347,
            bind: "127.0.0.1".into(),
            secrets: Default::default(),
            other_domains: Vec::new(),
            mailbox_size: 10_000,
            mailbox_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// Normalises the component domains and checks each is allowed: a
    /// subdomain of a served domain or listed in `other_domains`, and
    /// neither a served domain nor another service's.
    fn check_components(&mut self) -> anyhow::Result<()> {
        let normalise = |key: &str, d: &str| -> anyhow::Result<String> {
            let jid = jid::BareJid::new(d)
                .ok()
                .filter(|j| j.node().is_none())
                .ok_or_else(|| anyhow::anyhow!("{key}: {d:?} is not a domain"))?;
            Ok(jid.domain().as_str().to_owned())
        };
        let mut others = Vec::new();
        for d in &self.components.other_domains {
            others.push(normalise("components.other_domains", d)?);
        }
        self.components.other_domains = others;
        let mut secrets = std::collections::BTreeMap::new();
        for (d, secret) in &self.components.secrets {
            let domain = normalise("components.secrets", d)?;
            if secret.is_empty() {
                anyhow::bail!("components.secrets: {d:?} has an empty secret");
            }
            if self.serves(&domain) {
                anyhow::bail!("components.secrets: {d:?} is a served domain");
            }
            let services = [
                (self.muc.enabled, &self.muc.subdomain),
                (self.upload.enabled, &self.upload.subdomain),
                (self.pubsub.enabled, &self.pubsub.subdomain),
                (self.proxy65.enabled, &self.proxy65.subdomain),
            ];
            for (on, sub) in services {
                if on && self.domains.iter().any(|p| domain == format!("{sub}.{p}")) {
                    anyhow::bail!("components.secrets: {d:?} is a hosted service's domain");
                }
            }
            if self.component_parent(&domain).is_none()
                && !self.components.other_domains.contains(&domain)
            {
                anyhow::bail!(
                    "components.secrets: {d:?} is no subdomain of a served domain \
                     (list it in components.other_domains to allow it)"
                );
            }
            secrets.insert(domain, secret.clone());
        }
        self.components.secrets = secrets;
        if self.components.enabled {
            if self.components.port == 0 {
                anyhow::bail!("components.port must not be 0");
            }
            if [self.c2s.port, self.c2s.tls_port, self.cluster.port].contains(&self.components.port)
                || self.websocket.enabled && self.websocket.port == self.components.port
            {
                anyhow::bail!("components.port is taken by another listener");
            }
            if self.components.mailbox_size == 0
                || self.components.mailbox_bytes < self.c2s.max_stanza_size
            {
                anyhow::bail!(
                    "components.mailbox_size must be positive and components.mailbox_bytes \
                     must hold one stanza of c2s.max_stanza_size"
                );
            }
        }
        Ok(())
    }

    /// The served domain `domain` is a subdomain of (the longest), if any.
    pub fn component_parent(&self, domain: &str) -> Option<&str> {
        self.domains
            .iter()
            .filter(|p| {
                domain
                    .strip_suffix(p.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            })
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }
}

/// XEP-0357 push notifications: what the server publishes to a client's
/// app server while the client cannot be reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Offer `urn:xmpp:push:0` on accounts and send notifications.
    pub enabled: bool,
    /// Put the sender's JID (`last-message-sender`) in the summary.
    pub include_sender: bool,
    /// Put the message body (`last-message-body`) in the summary. Off by
    /// default: the app server and the push service in between are third
    /// parties.
    pub include_body: bool,
    /// Registrations one account may hold; another `<enable/>` beyond
    /// them is `<resource-constraint/>`.
    pub max_registrations: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            include_sender: false,
            include_body: false,
            max_registrations: 20,
        }
    }
}

/// XEP-0198 stream management.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmConfig {
    /// Offer stream management (`urn:xmpp:sm:3`).
    pub enabled: bool,
    /// Seconds a resumable session whose connection was lost waits for its
    /// client to resume it; a client's `max` may ask for less, not more.
    pub resume_timeout_secs: u32,
    /// Ask the client for an ack (`<r/>`) after this many stanzas...
    pub request_every: u32,
    /// ...or this many bytes written since the last request...
    pub request_bytes: usize,
    /// ...or this many milliseconds after a stanza was written that no
    /// request covers yet (so the last of a burst is acked too).
    pub request_after_ms: u64,
    /// Seconds the `h` of a resumable session that ended (timed out,
    /// replaced, closed) is kept, so that a late `<resume/>` gets it in its
    /// `<failed/>` (XEP-0198 §5); 0: not kept.
    pub ended_retention_secs: u64,
}

/// The longest `sm.ended_retention_secs` (30 days): tombstones live in
/// memory (the registry group, or the node's table).
pub const MAX_SM_ENDED_RETENTION_SECS: u64 = 30 * 24 * 3600;

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            enabled: true,
            resume_timeout_secs: 300,
            request_every: 5,
            request_bytes: 64 * 1024,
            request_after_ms: 1000,
            ended_retention_secs: 3600,
        }
    }
}

/// XEP-0313 message archive (with XEP-0441 preferences): what is kept
/// and for how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MamConfig {
    /// Archives chat and normal messages of local accounts. Off: nothing is
    /// archived, no stanza-id is added and the features are not advertised.
    pub enabled: bool,
    /// What a user who never set preferences gets (XEP-0441 `default`).
    pub default_policy: ArchivePolicy,
    /// Most results in one page; a larger RSM `max` is clamped to it, and
    /// it is the page size when the client gives none.
    pub max_page: usize,
    /// Archived messages older than this many days are deleted; 0 keeps
    /// them forever.
    pub max_age_days: u64,
    /// Most archived messages per user (the oldest go first); 0: no limit.
    pub max_messages: u64,
    /// Seconds between two retention passes (run by the node that leads
    /// the durable group).
    pub cleanup_interval_secs: u64,
    /// Per-domain retention overrides (`[mam.domains."example.org"]`).
    pub domains: std::collections::BTreeMap<String, MamRetention>,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            enabled: true,
            default_policy: ArchivePolicy::Always,
            max_page: 250,
            max_age_days: 0,
            max_messages: 0,
            cleanup_interval_secs: 3600,
            domains: Default::default(),
        }
    }
}

impl MamConfig {
    /// The retention that applies to accounts of `domain`:
    /// (max_age_days, max_messages), 0 meaning unlimited.
    pub fn retention(&self, domain: &str) -> (u64, u64) {
        let own = self.domains.get(domain);
        (
            own.and_then(|r| r.max_age_days)
                .unwrap_or(self.max_age_days),
            own.and_then(|r| r.max_messages)
                .unwrap_or(self.max_messages),
        )
    }
}

/// XEP-0045 multi-user chat, hosted at `<subdomain>.<domain>` of every
/// served domain; its rooms live in the cluster (one node each).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MucConfig {
    /// Hosts the service (listed in each domain's disco#items).
    pub enabled: bool,
    /// The service's domain is `<subdomain>.<served domain>`.
    pub subdomain: String,
    /// The service's name in disco (identity and item).
    pub name: String,
    /// Who may create rooms: `"anyone"` (any local user) or `"admins"`
    /// (only the JIDs of `admins`).
    pub create: MucCreate,
    /// Bare JIDs that own every room (may create rooms when `create =
    /// "admins"`).
    pub admins: Vec<String>,
    /// Messages a joining occupant gets as history at most (and the
    /// default when it asks for none); 0: no history.
    pub max_history: usize,
    /// Default `muc#roomconfig_maxusers` of a new room (0: no limit).
    pub default_max_users: u32,
    /// Most occupants any room may allow.
    pub max_users_limit: u32,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            subdomain: "conference".into(),
            name: "Chatrooms".into(),
            create: MucCreate::Anyone,
            admins: Vec::new(),
            max_history: 20,
            default_max_users: 200,
            max_users_limit: 1000,
        }
    }
}

/// Who may create MUC rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MucCreate {
    Anyone,
    Admins,
}

/// Archive retention for one domain; an absent key keeps the `[mam]` value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MamRetention {
    pub max_age_days: Option<u64>,
    pub max_messages: Option<u64>,
}

/// Which messages are archived by default (XEP-0441 §2.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchivePolicy {
    Always,
    Never,
    /// Only with contacts in the user's roster.
    Roster,
}

impl ArchivePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchivePolicy::Always => "always",
            ArchivePolicy::Never => "never",
            ArchivePolicy::Roster => "roster",
        }
    }

    pub fn parse(s: &str) -> Option<ArchivePolicy> {
        match s {
            "always" => Some(ArchivePolicy::Always),
            "never" => Some(ArchivePolicy::Never),
            "roster" => Some(ArchivePolicy::Roster),
            _ => None,
        }
    }
}

/// Prometheus exporter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub bind: String,
    /// Port of `/metrics`; 0 disables it.
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            bind: "127.0.0.1".into(),
            port: 9090,
        }
    }
}

/// This node's identity in the Raft group and its node-to-node listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique per node; 1 for the embedded default.
    pub node_id: u64,
    /// gRPC port for node-to-node traffic (never the c2s port).
    pub port: u16,
    pub bind: String,
    /// Address other nodes reach this one on (default: bind:port).
    pub advertise: Option<String>,
    /// Any member's cluster address, for a fresh node to join through.
    pub join: Option<String>,
    /// Mutual TLS between nodes (all three, or none: a single node).
    /// `starling cluster ca` and `starling cluster cert` make them.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Where clients are sent when this node leaves the cluster
    /// (`<see-other-host>HOST[:PORT]</see-other-host>`, RFC 6120
    /// §4.9.3.19), normally the load balancer's name. Unset: their streams
    /// end with `<system-shutdown/>` and they reconnect as configured.
    pub see_other_host: Option<String>,
    /// Under load (a durable write arriving within this many microseconds
    /// of the previous entry's commit), wait up to this long for more
    /// writes to share one Raft entry: one fsync and one round of thread
    /// hand-offs for many. At 1,000 archived messages a second, 2 ms
    /// halves the server CPU per message for ~2 ms more latency. 0: never.
    pub write_linger_us: u64,
    /// How long an entry holding only archive writes of messages already
    /// delivered (to sessions of this node, from a session with stream
    /// management: `session::im::route_message_behind`) waits for more
    /// before it is proposed. It delays only the sender's acknowledgement
    /// (`h`), not the delivery; a write somebody waits for ends it early.
    pub behind_linger_us: u64,
    /// Worker threads of the store's runtime (Raft, applying entries, gRPC
    /// between nodes). 0: one on a machine of up to two cores, where a
    /// second worker mostly adds thread wake-ups to every durable write
    /// (tokio wakes an idle worker to steal each task handed over), else
    /// two.
    pub store_threads: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 1,
            port: 7070,
            bind: "127.0.0.1".into(),
            advertise: None,
            join: None,
            ca_cert: None,
            cert: None,
            key: None,
            see_other_host: None,
            write_linger_us: 2000,
            behind_linger_us: 25_000,
            store_threads: 0,
        }
    }
}

impl ClusterConfig {
    /// The store runtime's worker threads (`store_threads`, 0: by cores).
    pub fn store_threads(&self) -> usize {
        match self.store_threads {
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cores <= 2 { 1 } else { 2 }
            }
            n => n,
        }
    }

    /// The mutual-TLS files, when configured.
    pub fn tls(&self) -> Option<starling_cluster::ClusterTls> {
        Some(starling_cluster::ClusterTls {
            ca_cert: self.ca_cert.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }

    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.bind, self.port))
    }
}

/// XEP-0363 HTTP file upload: the `upload.<domain>` service of every
/// served domain and the HTTP listener that takes and serves the files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Off by default: it opens an HTTP(S) port.
    pub enabled: bool,
    /// The service's JID is `<subdomain>.<domain>` for each served domain.
    pub subdomain: String,
    /// Address and port of the HTTP listener.
    pub bind: String,
    pub port: u16,
    /// HTTPS with the domains' certificates (those of the c2s listener);
    /// false: plain HTTP, for a TLS-terminating proxy in front.
    pub tls: bool,
    /// The base of the URLs put in slots; `{domain}` is replaced by the
    /// served domain. Default: `https://<subdomain>.{domain}:<port>`
    /// (`http://` when `tls` is off).
    pub public_url: Option<String>,
    /// How the other nodes of a cluster reach this node's listener to
    /// fetch a file stored here. Default: `<scheme>://<host of
    /// cluster.advertise>:<port>`.
    pub internal_url: Option<String>,
    /// Where this node keeps files. Default: `<data_dir>/upload`.
    pub path: Option<PathBuf>,
    /// A directory every node of the cluster mounts (NFS and the like):
    /// files are stored there and every node reads them directly instead
    /// of fetching them from the node that took the upload.
    pub shared_path: Option<PathBuf>,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Bytes each user may keep stored (all their files); 0: no limit.
    pub quota_bytes: u64,
    /// Files are deleted this many seconds after upload (and their bytes
    /// leave the owner's quota); 0: kept forever.
    pub expire_after_secs: u64,
    /// Seconds between two expiry passes.
    pub cleanup_interval_secs: u64,
    /// Seconds a slot's PUT URL stays valid.
    pub slot_lifetime_secs: u64,
    /// Slot requests one user may make per minute on one node (a window
    /// per node, like the authentication throttle); 0: no limit.
    pub slots_per_minute: u32,
    /// Content types accepted (`image/*` matches a whole family); empty:
    /// any.
    pub allowed_types: Vec<String>,
    /// Key of the upload tokens, shared by every node. Unset: a random key
    /// is made once and kept in the replicated store.
    pub secret: Option<String>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: false,
            subdomain: "upload".into(),
            bind: "0.0.0.0".into(),
            port: 5443,
            tls: true,
            public_url: None,
            internal_url: None,
            path: None,
            shared_path: None,
            max_file_size: 10 * 1024 * 1024,
            quota_bytes: 100 * 1024 * 1024,
            expire_after_secs: 7 * 86_400,
            cleanup_interval_secs: 600,
            slot_lifetime_secs: 300,
            slots_per_minute: 30,
            allowed_types: Vec::new(),
            secret: None,
        }
    }
}

impl Config {
    fn check_s2s(&mut self) -> anyhow::Result<()> {
        let s2s = &mut self.s2s;
        if !s2s.enabled {
            return Ok(());
        }
        if s2s.connect_timeout_secs == 0 || s2s.max_queue == 0 {
            anyhow::bail!("s2s.connect_timeout_secs and s2s.max_queue must be positive");
        }
        let mut hosts = std::collections::BTreeMap::new();
        for (domain, addr) in &s2s.hosts {
            let d = jid::BareJid::new(domain)
                .ok()
                .filter(|j| j.node().is_none())
                .map(|j| j.domain().as_str().to_owned())
                .ok_or_else(|| anyhow::anyhow!("s2s.hosts: {domain:?} is not a domain"))?;
            let port_ok = addr
                .strip_prefix("tls://")
                .unwrap_or(addr)
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                anyhow::bail!("s2s.hosts: {domain:?} = {addr:?} is not \"host:port\"");
            }
            hosts.insert(d, addr.clone());
        }
        s2s.hosts = hosts;
        for list in [&mut s2s.blocked_domains, &mut s2s.allowed_domains] {
            for d in list.iter_mut() {
                *d = jid::BareJid::new(d)
                    .ok()
                    .filter(|j| j.node().is_none())
                    .map(|j| j.domain().as_str().to_owned())
                    .ok_or_else(|| anyhow::anyhow!("s2s: {d:?} is not a domain"))?;
            }
        }
        if s2s.tls_port != 0
            && [
                s2s.port,
                self.c2s.port,
                self.c2s.tls_port,
                self.cluster.port,
            ]
            .contains(&s2s.tls_port)
        {
            anyhow::bail!(
                "s2s.tls_port {} is also another listener's port",
                s2s.tls_port
            );
        }
        if s2s.port != 0
            && [self.c2s.port, self.c2s.tls_port, self.cluster.port].contains(&s2s.port)
        {
            anyhow::bail!("s2s.port {} is also a c2s or cluster port", s2s.port);
        }
        Ok(())
    }

    fn check_websocket(&self) -> anyhow::Result<()> {
        let ws = &self.websocket;
        if !ws.enabled {
            return Ok(());
        }
        if ws.port == 0 {
            anyhow::bail!("websocket.port must not be 0");
        }
        let taken = [
            ("c2s.port", self.c2s.port),
            ("c2s.tls_port", self.c2s.tls_port),
            (
                "upload.port",
                if self.upload.enabled {
                    self.upload.port
                } else {
                    0
                },
            ),
        ];
        if let Some((name, _)) = taken.iter().find(|(_, p)| *p == ws.port) {
            anyhow::bail!("websocket.port {} is also {name}", ws.port);
        }
        if !ws.path.starts_with('/') || ws.path.contains(['?', '#', ' ']) {
            anyhow::bail!("websocket.path must be an absolute path such as /xmpp-websocket");
        }
        Ok(())
    }

    fn check_bosh(&self) -> anyhow::Result<()> {
        let b = &self.bosh;
        if !b.enabled {
            return Ok(());
        }
        if b.port == 0 || b.max_wait_secs == 0 || b.inactivity_secs == 0 {
            anyhow::bail!(
                "bosh.port, bosh.max_wait_secs and bosh.inactivity_secs must be positive"
            );
        }
        let on = |enabled: bool, port: u16| if enabled { port } else { 0 };
        let taken = [
            ("c2s.port", self.c2s.port),
            ("c2s.tls_port", self.c2s.tls_port),
            ("upload.port", on(self.upload.enabled, self.upload.port)),
            (
                "websocket.port",
                on(self.websocket.enabled, self.websocket.port),
            ),
        ];
        if let Some((name, _)) = taken.iter().find(|(_, p)| *p == b.port) {
            anyhow::bail!("bosh.port {} is also {name}", b.port);
        }
        if !b.path.starts_with('/') || b.path.contains(['?', '#', ' ']) {
            anyhow::bail!("bosh.path must be an absolute path such as /http-bind");
        }
        Ok(())
    }
}

impl UploadConfig {
    fn check(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.port == 0 {
            anyhow::bail!("upload.port must not be 0");
        }
        if self.subdomain.is_empty() || self.subdomain.contains(['.', '@', '/']) {
            anyhow::bail!("upload.subdomain must be one DNS label");
        }
        if self.slot_lifetime_secs == 0 || self.cleanup_interval_secs == 0 {
            anyhow::bail!(
                "upload.slot_lifetime_secs and upload.cleanup_interval_secs must be positive"
            );
        }
        for (key, url) in [
            ("public_url", &self.public_url),
            ("internal_url", &self.internal_url),
        ] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                anyhow::bail!("upload.{key} must start with http:// or https://");
            }
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 16) {
            anyhow::bail!("upload.secret must be at least 16 characters");
        }
        Ok(())
    }
}

/// One STUN/TURN service announced by XEP-0215.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    pub host: String,
    pub port: Option<u16>,
    /// `stun`, `turn`, `stuns` or `turns`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `udp` or `tcp`.
    pub transport: Option<String>,
    /// A human-readable name.
    pub name: Option<String>,
    /// Needs credentials: with `secret`, time-limited ones of the TURN
    /// REST scheme (coturn's `use-auth-secret`); else `username` and
    /// `password` as given.
    #[serde(default)]
    pub restricted: bool,
    pub secret: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Lifetime of generated credentials, in seconds.
    #[serde(default = "default_credentials_ttl")]
    pub ttl_secs: u64,
}

fn default_credentials_ttl() -> u64 {
    86_400
}

impl ExternalService {
    fn check(&self) -> anyhow::Result<()> {
        if !matches!(self.kind.as_str(), "stun" | "stuns" | "turn" | "turns") {
            anyhow::bail!(
                "external_services: type {:?} is not stun, stuns, turn or turns",
                self.kind
            );
        }
        if let Some(t) = &self.transport
            && !matches!(t.as_str(), "udp" | "tcp")
        {
            anyhow::bail!("external_services: transport {t:?} is not udp or tcp");
        }
        if self.host.is_empty() {
            anyhow::bail!("external_services: host is required");
        }
        if self.restricted && self.secret.is_none() && self.username.is_none() {
            anyhow::bail!(
                "external_services: a restricted service needs a secret or a username and password"
            );
        }
        Ok(())
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `STARLING_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        use figment::providers::{Env, Format, Serialized, Toml};
        let mut fig = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only variables that name a config key: STARLING_LOG, STARLING_CONFIG
        // and the like belong to other parts of the program or its tooling.
        const SECTIONS: &[&str] = &[
            "domains",
            "data_dir",
            "c2s",
            "tls",
            "auth",
            "registration",
            "csi",
            "offline",
            "push",
            "sm",
            "mam",
            "muc",
            "pep",
            "pubsub",
            "metrics",
            "cluster",
            "upload",
            "websocket",
            "s2s",
            "admin",
            "external_services",
        ];
        let env = Env::prefixed("STARLING_")
            .filter(|k| {
                let first = k.as_str().split("__").next().unwrap_or_default();
                SECTIONS.iter().any(|s| first.eq_ignore_ascii_case(s))
            })
            .split("__");
        fig = fig.merge(env);
        Ok(fig.extract()?)
    }

    /// Rejects settings that cannot work, with a message naming the key.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.domains.is_empty() {
            anyhow::bail!("domains: at least one domain is required");
        }
        let mut normalized = Vec::new();
        for d in &self.domains {
            let jid = jid::BareJid::new(d)
                .map_err(|e| anyhow::anyhow!("domains: {d:?} is not a valid domain: {e}"))?;
            if jid.node().is_some() {
                anyhow::bail!("domains: {d:?} is not a bare domain");
            }
            let d = jid.domain().as_str().to_owned();
            if !normalized.contains(&d) {
                normalized.push(d);
            }
        }
        self.domains = normalized;
        if self.c2s.max_stanza_size < 10_000 {
            anyhow::bail!("c2s.max_stanza_size must be at least 10000 (RFC 6120 §13.12)");
        }
        if self.c2s.port == 0 {
            anyhow::bail!("c2s.port must not be 0");
        }
        if self.c2s.client_crl_file.is_some() && self.c2s.client_ca_file.is_none() {
            anyhow::bail!("c2s.client_crl_file needs c2s.client_ca_file (the CAs it revokes for)");
        }
        if self.sm.ended_retention_secs > MAX_SM_ENDED_RETENTION_SECS {
            anyhow::bail!(
                "sm.ended_retention_secs must be at most {MAX_SM_ENDED_RETENTION_SECS} (30 days)"
            );
        }
        if self.c2s.port == self.cluster.port || self.c2s.tls_port == self.cluster.port {
            anyhow::bail!("cluster.port must differ from the c2s ports");
        }
        let tls_parts = [&self.cluster.ca_cert, &self.cluster.cert, &self.cluster.key];
        if tls_parts.iter().any(|p| p.is_some()) && tls_parts.iter().any(|p| p.is_none()) {
            anyhow::bail!("cluster.ca_cert, cluster.cert and cluster.key go together");
        }
        if self.cluster.join.is_some() && self.cluster.tls().is_none() {
            anyhow::bail!(
                "cluster.join needs cluster.ca_cert, cluster.cert and cluster.key: nodes talk over mutual TLS"
            );
        }
        if self.cluster.node_id == 0 {
            anyhow::bail!("cluster.node_id must be positive");
        }
        self.check_s2s()?;
        if self.auth.scram_iterations < 4096 {
            anyhow::bail!("auth.scram_iterations must be at least 4096 (RFC 7677)");
        }
        if self.c2s.mailbox_size == 0 || self.c2s.handshake_timeout_secs == 0 {
            anyhow::bail!("c2s.mailbox_size and c2s.handshake_timeout_secs must be positive");
        }
        // Held presence waits in the session's queue: half of it at most, so
        // what the client must see at once always has room.
        self.csi.max_held = self.csi.max_held.min(self.c2s.mailbox_size / 2);
        if self.pep.max_items == 0 || self.pep.max_nodes == 0 || self.pep.max_item_bytes == 0 {
            anyhow::bail!("pep.max_items, pep.max_nodes and pep.max_item_bytes must be at least 1");
        }
        if self.c2s.mailbox_bytes < self.c2s.max_stanza_size {
            anyhow::bail!("c2s.mailbox_bytes must hold at least one stanza of c2s.max_stanza_size");
        }
        if !(1..=10_000).contains(&self.mam.max_page) {
            anyhow::bail!("mam.max_page must be between 1 and 10000");
        }
        if self.mam.cleanup_interval_secs == 0 {
            anyhow::bail!("mam.cleanup_interval_secs must be positive");
        }
        if self.muc.enabled {
            let sub = &self.muc.subdomain;
            if sub.is_empty() || sub.contains(['.', '@', '/']) {
                anyhow::bail!("muc.subdomain must be one non-empty DNS label");
            }
            if self.muc.max_users_limit == 0 {
                anyhow::bail!("muc.max_users_limit must be positive");
            }
            self.muc.default_max_users = self.muc.default_max_users.min(self.muc.max_users_limit);
            for d in &self.domains {
                if self.domains.contains(&format!("{sub}.{d}")) {
                    anyhow::bail!("muc.subdomain: {sub}.{d} is a served domain");
                }
            }
        }
        if self.pubsub.enabled {
            let sub = &self.pubsub.subdomain;
            if sub.is_empty() || sub.contains(['.', '@', '/']) {
                anyhow::bail!("pubsub.subdomain must be one non-empty DNS label");
            }
            if self.muc.enabled && *sub == self.muc.subdomain
                || self.upload.enabled && *sub == self.upload.subdomain
            {
                anyhow::bail!("pubsub.subdomain is taken by another service");
            }
            if self.pubsub.max_nodes == 0 {
                anyhow::bail!("pubsub.max_nodes must be positive");
            }
            for d in &self.domains {
                if self.domains.contains(&format!("{sub}.{d}")) {
                    anyhow::bail!("pubsub.subdomain: {sub}.{d} is a served domain");
                }
            }
            self.pubsub.admins = bare_jids("pubsub.admins", &self.pubsub.admins)?;
        }
        if self.proxy65.enabled {
            let sub = &self.proxy65.subdomain;
            if sub.is_empty() || sub.contains(['.', '@', '/']) {
                anyhow::bail!("proxy65.subdomain must be one non-empty DNS label");
            }
            let others = [
                (self.muc.enabled, &self.muc.subdomain),
                (self.upload.enabled, &self.upload.subdomain),
                (self.pubsub.enabled, &self.pubsub.subdomain),
            ];
            if others.iter().any(|(on, o)| *on && *o == sub) {
                anyhow::bail!("proxy65.subdomain is taken by another service");
            }
            if self.proxy65.port == 0 || self.proxy65.max_connections == 0 {
                anyhow::bail!("proxy65.port and proxy65.max_connections must be positive");
            }
            for d in &self.domains {
                if self.domains.contains(&format!("{sub}.{d}")) {
                    anyhow::bail!("proxy65.subdomain: {sub}.{d} is a served domain");
                }
            }
        }
        self.muc.admins = bare_jids("muc.admins", &self.muc.admins)?;
        self.admin.admins = bare_jids("admin.admins", &self.admin.admins)?;
        if let Some(a) = self
            .admin
            .admins
            .iter()
            .find(|a| !a.rsplit_once('@').is_some_and(|(_, d)| self.serves(d)))
        {
            anyhow::bail!(
                "admin.admins: {a:?} is not at a served domain (an admin of its own domain; \
                 [admin.domains] names admins of a domain)"
            );
        }
        let mut by_domain = std::collections::BTreeMap::new();
        for (d, list) in &self.admin.domains {
            let domain = jid::BareJid::new(d)
                .ok()
                .filter(|j| j.node().is_none())
                .map(|j| j.domain().as_str().to_owned())
                .filter(|d| self.serves(d))
                .ok_or_else(|| anyhow::anyhow!("admin.domains: {d:?} is not a served domain"))?;
            by_domain.insert(domain, bare_jids(&format!("admin.domains.{d}"), list)?);
        }
        self.admin.domains = by_domain;
        if self.admin.session_timeout_secs == 0 || self.admin.max_sessions == 0 {
            anyhow::bail!("admin.session_timeout_secs and admin.max_sessions must be positive");
        }
        if let Some(d) = self.mam.domains.keys().find(|d| !self.serves(d)) {
            anyhow::bail!("mam.domains: {d:?} is not one of the served domains");
        }
        self.upload.check()?;
        self.check_websocket()?;
        self.check_bosh()?;
        self.check_components()?;
        for s in &self.external_services {
            s.check()?;
        }
        Ok(())
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    /// Whether the bare JID `who` administers the served domain `domain`
    /// (`[admin]`: an admin of its own domain, or listed for it).
    pub fn is_admin(&self, who: &str, domain: &str) -> bool {
        if !self.serves(domain) {
            return false;
        }
        let own = who.rsplit_once('@').is_some_and(|(_, d)| d == domain)
            && self.admin.admins.iter().any(|a| a == who);
        own || self
            .admin
            .domains
            .get(domain)
            .is_some_and(|l| l.iter().any(|a| a == who))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(f: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let mut c = Config {
            domains: vec!["a.example".into(), "b.example".into()],
            ..Config::default()
        };
        f(&mut c);
        c.check().map(|()| c)
    }

    #[test]
    fn sm_ended_retention_is_bounded() {
        assert!(checked(|c| c.sm.ended_retention_secs = 0).is_ok());
        assert!(checked(|c| c.sm.ended_retention_secs = MAX_SM_ENDED_RETENTION_SECS).is_ok());
        assert!(checked(|c| c.sm.ended_retention_secs = u64::MAX).is_err());
    }

    #[test]
    fn websocket_listener_settings_are_checked() {
        assert!(checked(|c| c.websocket.enabled = true).is_ok());
        let same_port = checked(|c| {
            c.websocket.enabled = true;
            c.websocket.port = c.c2s.port;
        });
        assert!(same_port.unwrap_err().to_string().contains("c2s.port"));
        let relative = checked(|c| {
            c.websocket.enabled = true;
            c.websocket.path = "xmpp".into();
        });
        assert!(relative.is_err());
        let off = checked(|c| c.websocket.port = c.c2s.port);
        assert!(off.is_ok(), "not checked while off");
    }

    #[test]
    fn federation_settings_are_checked() {
        let c = checked(|c| {
            c.s2s
                .hosts
                .insert("Example.NET".into(), "10.0.0.5:5269".into());
        })
        .unwrap();
        assert_eq!(
            c.s2s.hosts["example.net"], "10.0.0.5:5269",
            "domains normalised"
        );
        let direct = checked(|c| {
            c.s2s
                .hosts
                .insert("example.net".into(), "tls://10.0.0.5:5270".into());
        });
        assert_eq!(
            direct.unwrap().s2s.hosts["example.net"],
            "tls://10.0.0.5:5270"
        );
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            ":5269",
            "host:port",
            "tls://",
            "tls://h",
        ] {
            let r = checked(|c| {
                c.s2s.hosts.insert("example.net".into(), bad.into());
            });
            assert!(r.is_err(), "{bad:?} accepted");
        }
        let user = checked(|c| {
            c.s2s.hosts.insert("u@example.net".into(), "h:1".into());
        });
        assert!(user.is_err(), "a JID with a node is not a domain");
        let clash = checked(|c| c.s2s.port = c.c2s.port);
        assert!(clash.unwrap_err().to_string().contains("s2s.port"));
        assert!(checked(|c| c.s2s.port = 0).is_ok(), "0: no listener");
        let same = checked(|c| c.s2s.tls_port = c.s2s.port);
        assert!(same.unwrap_err().to_string().contains("s2s.tls_port"));
    }

    #[test]
    fn component_domains_are_checked() {
        let secret = |c: &mut Config, d: &str| {
            c.components.secrets.insert(d.into(), "s".into());
        };
        let c = checked(|c| secret(c, "GW.a.example")).unwrap();
        assert!(
            c.components.secrets.contains_key("gw.a.example"),
            "normalised"
        );
        assert_eq!(c.component_parent("gw.a.example"), Some("a.example"));
        assert_eq!(c.component_parent("x.gw.b.example"), Some("b.example"));
        assert_eq!(c.component_parent("xa.example"), None, "no subdomain");
        let outside = checked(|c| secret(c, "irc.other.net"));
        assert!(outside.unwrap_err().to_string().contains("other_domains"));
        assert!(
            checked(|c| {
                secret(c, "irc.other.net");
                c.components.other_domains = vec!["IRC.other.net".into()];
            })
            .is_ok()
        );
        assert!(
            checked(|c| secret(c, "a.example")).is_err(),
            "a served domain"
        );
        assert!(
            checked(|c| secret(c, "conference.a.example")).is_err(),
            "a MUC service"
        );
        assert!(checked(|c| secret(c, "user@gw.a.example")).is_err());
        assert!(
            checked(|c| {
                secret(c, "gw.a.example");
                c.components
                    .secrets
                    .insert("gw.b.example".into(), String::new());
            })
            .is_err(),
            "an empty secret"
        );
        let taken = checked(|c| {
            c.components.enabled = true;
            c.components.port = c.c2s.port;
        });
        assert!(taken.is_err());
        assert!(checked(|c| c.components.enabled = true).is_ok());
    }

    #[test]
    fn administrators_by_domain() {
        let c = checked(|c| {
            c.admin.admins = vec!["Root@A.example".into()];
            c.admin
                .domains
                .insert("b.example".into(), vec!["root@a.example".into()]);
        })
        .unwrap();
        assert_eq!(c.admin.admins, ["root@a.example"], "normalised");
        assert!(c.is_admin("root@a.example", "a.example"));
        assert!(c.is_admin("root@a.example", "b.example"), "[admin.domains]");
        assert!(!c.is_admin("root@a.example", "c.example"), "not served");
        assert!(!c.is_admin("other@a.example", "a.example"));
        let own_only = checked(|c| c.admin.admins = vec!["boss@b.example".into()]).unwrap();
        assert!(own_only.is_admin("boss@b.example", "b.example"));
        assert!(
            !own_only.is_admin("boss@b.example", "a.example"),
            "an admin of its own domain only"
        );
    }

    #[test]
    fn administrator_configuration_is_checked() {
        assert!(checked(|c| c.admin.admins = vec!["not a jid@@".into()]).is_err());
        assert!(checked(|c| c.admin.admins = vec!["a.example".into()]).is_err());
        assert!(checked(|c| c.admin.admins = vec!["x@elsewhere.example".into()]).is_err());
        assert!(
            checked(|c| {
                c.admin
                    .domains
                    .insert("elsewhere.example".into(), vec!["x@a.example".into()]);
            })
            .is_err()
        );
        assert!(checked(|c| c.admin.max_sessions = 0).is_err());
        assert!(checked(|c| c.admin.session_timeout_secs = 0).is_err());
    }

    #[test]
    fn store_threads_by_cores_unless_set() {
        use figment::providers::{Format, Toml};
        let parse = |s: &str| -> ClusterConfig {
            figment::Figment::from(Toml::string(s)).extract().unwrap()
        };
        assert_eq!(parse("store_threads = 3").store_threads(), 3);
        let c = parse("node_id = 2");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.store_threads(), if cores <= 2 { 1 } else { 2 });
    }

    #[test]
    fn revocation_lists_need_their_authorities() {
        let crl = Some(PathBuf::from("/etc/ssl/client-crls.pem"));
        assert!(checked(|c| c.c2s.client_crl_file = crl.clone()).is_err());
        assert!(
            checked(|c| {
                c.c2s.client_crl_file = crl.clone();
                c.c2s.client_ca_file = Some(PathBuf::from("/etc/ssl/client-cas.pem"));
            })
            .is_ok()
        );
    }

    #[test]
    fn arbiters_one_per_core_unless_set() {
        use figment::providers::{Format, Toml};
        let parse =
            |s: &str| -> C2sConfig { figment::Figment::from(Toml::string(s)).extract().unwrap() };
        assert_eq!(parse("arbiters = 1").arbiters(), 1);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(parse("port = 5222").arbiters(), cores);
    }
}
