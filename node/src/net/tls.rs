//! TLS configuration: one certificate per served domain, chosen by SNI
//! (the first domain's when the client sends none). A domain without a
//! configured certificate gets a self-signed one generated at first start
//! and kept under `data_dir/certs/` so restarts present the same key.

use crate::config::Config;
use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
struct SniResolver {
    by_domain: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = hello
            .server_name()
            .and_then(|n| self.by_domain.get(&n.to_ascii_lowercase()))
            .unwrap_or(&self.default);
        Some(key.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server TLS configuration for every domain of `cfg`.
pub fn server_config(cfg: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let mut by_domain = HashMap::new();
    for domain in &cfg.domains {
        let (cert, key) = match cfg.tls.certs.iter().find(|c| &c.domain == domain) {
            Some(c) => (c.cert.clone(), c.key.clone()),
            None => self_signed(&cfg.data_dir, domain)?,
        };
        let chain = CertificateDer::pem_file_iter(&cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        let key_der = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading key {}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, key_der, &provider)
            .with_context(|| format!("certificate for {domain}"))?;
        by_domain.insert(domain.clone(), Arc::new(certified));
    }
    let default = by_domain[&cfg.domains[0]].clone();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_domain, default }));
    // XEP-0368: direct TLS clients announce "xmpp-client".
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(Arc::new(config))
}

/// Returns the paths of a self-signed certificate for `domain`, making it
/// on first use.
fn self_signed(data_dir: &Path, domain: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("certs");
    let cert = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(vec![domain.to_owned()])?;
    std::fs::write(&cert, generated.cert.pem())?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    tracing::warn!(%domain, path = %cert.display(), "generated a self-signed certificate");
    Ok((cert, key))
}

/// Writes a file only its owner can read (keys, secrets).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
