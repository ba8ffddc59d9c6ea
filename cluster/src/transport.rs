//! How this node reaches its peers and is reached by them: plain HTTP/2, or
//! mutual TLS with the cluster CA (rustls on ring through tonic). Every
//! gRPC client of this crate (Raft, write forwarding, join, leave, status,
//! delivery) gets its channel here, and the server its TLS, so no RPC can
//! skip the certificate check.
//!
//! It must not know what travels over the channels it makes.

use std::net::IpAddr;
use std::time::Duration;

use tonic::transport::ServerTlsConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

use crate::config::ClusterTls;
use crate::error::StoreError;
use crate::pki::NODE_NAME;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Transport {
    server: Option<ServerTlsConfig>,
    client: Option<ClientTlsConfig>,
    source_ip: Option<IpAddr>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Storage(format!("cluster TLS: reading {}: {e}", path.display())))
}

impl Transport {
    pub fn new(tls: Option<&ClusterTls>, source_ip: Option<IpAddr>) -> Result<Self, StoreError> {
        let Some(tls) = tls else {
            return Ok(Transport {
                server: None,
                client: None,
                source_ip,
            });
        };
        let ca = Certificate::from_pem(read(&tls.ca_cert)?);
        let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        // A client certificate signed by the CA is required (tonic makes
        // it mandatory once a client CA root is set).
        let server = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(ca.clone())
            .client_auth_optional(false);
        // Peers are checked against the CA and the name every node
        // certificate carries, whatever address they are reached on.
        let client = ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(identity)
            .domain_name(NODE_NAME);
        // Checked now, so a bad certificate or key fails `open`, not the
        // first connection.
        let bad = |e: tonic::transport::Error| {
            StoreError::Storage(format!("cluster TLS: {e:?} (check {})", tls.cert.display()))
        };
        Server::builder().tls_config(server.clone()).map_err(bad)?;
        Endpoint::from_static("https://starling-node")
            .tls_config(client.clone())
            .map_err(bad)?;
        Ok(Transport {
            server: Some(server),
            client: Some(client),
            source_ip,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.client.is_some()
    }

    /// An endpoint for `addr` (`host:port`), lazily connected.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let hostport = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let scheme = if self.is_tls() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{hostport}"))
            .map_err(|e| format!("address {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .local_address(self.source_ip);
        if let Some(tls) = &self.client {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS for {addr}: {e}"))?;
        }
        Ok(ep)
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        Ok(self.endpoint(addr)?.connect_lazy())
    }

    /// A server builder with this node's TLS settings.
    pub fn server(&self) -> Result<Server, tonic::transport::Error> {
        let mut b = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(3)));
        if let Some(tls) = &self.server {
            b = b.tls_config(tls.clone())?;
        }
        Ok(b)
    }
}
