//! TLS configuration: one certificate per served domain, chosen by SNI
//! (the first domain's when the client sends none). A domain without a
//! configured certificate gets a self-signed one generated at first start
//! and kept under `data_dir/certs/` so restarts present the same key: a
//! certificate *for the domain* (subject CN and DNS subjectAltName), valid
//! for a year, so a client that trusts it can also check the name. At
//! start, one that is about to expire, unreadable, or of the kind older
//! versions made (CN "rcgen self signed cert", valid until 4096) is made
//! anew; certificates from `[tls] certs` are never touched.
//!
//! A generated certificate also names the host names of the domain's HTTP
//! services ([`service_hosts`]: `upload.<domain>` and the host of
//! `[upload] public_url`), which appear in the URLs clients are handed
//! (XEP-0363 slots) and are checked against it; one that lacks a name is
//! made anew at start. A configured certificate should name them too.

use crate::config::Config;
use crate::net::pki::provider;
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

/// Builds the server TLS configuration for every domain of `cfg`.
pub fn server_config(cfg: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let by_domain = certified_keys(cfg)?;
    let default = by_domain[&cfg.domains[0]].clone();
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    // XEP-0178: with client CAs configured, clients are asked for a
    // certificate (naming those CAs); any is taken, and checked after.
    let client_trust = cfg
        .c2s
        .client_ca_file
        .as_deref()
        .and_then(|path| crate::auth::external::ClientTrust::load(path, None, false));
    let builder = match client_trust {
        Some(trust) => builder.with_client_cert_verifier(Arc::new(
            crate::net::pki::AnyCertificate::new(trust.hints()),
        )),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { by_domain, default }));
    // XEP-0368: direct TLS clients announce "xmpp-client".
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of `config` for HTTP clients (WebSocket, BOSH): ALPN
/// `http/1.1` (a client that offers no ALPN is served too), and no client
/// certificate asked for (a browser would ask its user to pick one).
pub fn for_http(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut http = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(config.cert_resolver.clone());
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(http)
}

/// The certificate and key files of every domain of `cfg` (configured, or
/// generated on first use), the first domain's first; and of each service
/// host ([`service_hosts`]) that `[tls] certs` gives its own certificate.
fn certificate_files(cfg: &Config) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    let mut files: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for domain in &cfg.domains {
        let (cert, key) = match cfg.tls.certs.iter().find(|c| &c.domain == domain) {
            Some(c) => (c.cert.clone(), c.key.clone()),
            None => self_signed(&cfg.data_dir, &names(cfg, domain))?,
        };
        files.push((domain.clone(), cert, key));
    }
    let hosts: Vec<String> = cfg
        .domains
        .iter()
        .flat_map(|d| service_hosts(cfg, d))
        .collect();
    for c in &cfg.tls.certs {
        let name = c.domain.to_ascii_lowercase();
        if !files.iter().any(|(n, ..)| *n == name) && hosts.contains(&name) {
            files.push((name, c.cert.clone(), c.key.clone()));
        }
    }
    Ok(files)
}

fn read_chain(cert: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))
}

/// The certificate chain and key of every domain of `cfg` (configured, or
/// generated on first use), by domain; and of each service host
/// ([`service_hosts`]) that `[tls] certs` gives its own certificate.
pub fn certified_keys(cfg: &Config) -> anyhow::Result<HashMap<String, Arc<CertifiedKey>>> {
    let provider = provider();
    let mut by_domain = HashMap::new();
    for (name, cert, key) in certificate_files(cfg)? {
        let chain = read_chain(&cert)?;
        let key_der = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading key {}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, key_der, &provider)
            .with_context(|| format!("certificate for {name}"))?;
        by_domain.insert(name, Arc::new(certified));
    }
    Ok(by_domain)
}

/// RFC 5929 `tls-server-end-point` channel-binding data of the
/// certificates [`server_config`] presents, chosen as its resolver
/// chooses: by SNI, else the first domain's.
#[derive(Debug, Default)]
pub struct EndPoints {
    by_name: HashMap<String, Vec<u8>>,
    default: Option<Vec<u8>>,
}

impl EndPoints {
    /// From the certificate files of `cfg` (read again: only the chains).
    /// A certificate whose signature names no single hash (Ed25519,
    /// RSASSA-PSS) has none (RFC 5929 §4.1 leaves it undefined).
    pub fn load(cfg: &Config) -> anyhow::Result<EndPoints> {
        let mut eps = EndPoints::default();
        for (i, (name, cert, _)) in certificate_files(cfg)?.into_iter().enumerate() {
            let Some(hash) = read_chain(&cert)?.first().and_then(|c| end_point(c)) else {
                continue;
            };
            if i == 0 {
                eps.default = Some(hash.clone());
            }
            eps.by_name.insert(name, hash);
        }
        Ok(eps)
    }

    /// The data of a connection whose client sent `sni`.
    pub fn get(&self, sni: Option<&str>) -> Option<&[u8]> {
        match sni.map(str::to_ascii_lowercase) {
            Some(n) if self.by_name.contains_key(&n) => self.by_name.get(&n),
            _ => self.default.as_ref(),
        }
        .map(Vec::as_slice)
    }
}

/// RFC 5929 §4.1: the certificate hashed with its signature's hash, SHA-256
/// for MD5 and SHA-1; `None` for a signature without a single hash.
pub fn end_point(cert: &CertificateDer) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let der = cert.as_ref();
    Some(
        match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
            // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, dsa-with-sha1 (all to
            // SHA-256), sha256WithRSA, ecdsa-with-SHA256, dsa-with-sha256
            "1.2.840.113549.1.1.4"
            | "1.2.840.113549.1.1.5"
            | "1.2.840.10045.4.1"
            | "1.2.840.10040.4.3"
            | "1.2.840.113549.1.1.11"
            | "1.2.840.10045.4.3.2"
            | "2.16.840.1.101.3.4.3.2" => sha2::Sha256::digest(der).to_vec(),
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(der).to_vec(),
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(der).to_vec(),
            _ => return None,
        },
    )
}

/// The names a generated certificate for `domain` carries: the domain,
/// then its [`service_hosts`].
fn names(cfg: &Config, domain: &str) -> Vec<String> {
    let mut names = vec![domain.to_owned()];
    for h in service_hosts(cfg, domain) {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    names
}

/// The host names (not IP addresses) other than `domain` under which its
/// HTTP services are reached: with `[upload] enabled`, `upload.<domain>`
/// (the service JID, the host of the default slot URLs) and the host of
/// `public_url` for that domain. Lower case.
pub fn service_hosts(cfg: &Config, domain: &str) -> Vec<String> {
    let up = &cfg.upload;
    if !up.enabled {
        return Vec::new();
    }
    let mut hosts = vec![format!("{}.{domain}", up.subdomain).to_ascii_lowercase()];
    let public = up
        .public_url
        .as_deref()
        .map(|u| u.replace("{domain}", domain))
        .and_then(|u| u.parse::<hyper::Uri>().ok())
        .and_then(|u| u.host().map(str::to_ascii_lowercase));
    if let Some(h) = public
        && h != domain
        && !hosts.contains(&h)
        && h.parse::<std::net::IpAddr>().is_err()
        && !h.starts_with('[')
    {
        hosts.push(h);
    }
    hosts
}

/// How long a generated certificate is valid.
const GENERATED_VALID_DAYS: i64 = 365;
/// A generated certificate that expires within this many days is made anew
/// at start.
const RENEW_WITHIN_DAYS: i64 = 30;

/// Returns the paths of the self-signed certificate for `names[0]` (the
/// domain; the other names are its service hosts), making it on first use
/// and again when [`renewal_reason`] finds one.
fn self_signed(data_dir: &Path, names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let domain = names[0].as_str();
    let dir = data_dir.join("certs");
    let cert = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));
    let now = time::OffsetDateTime::now_utc();
    if cert.exists() && key.exists() {
        let reason = match std::fs::read(&cert) {
            Ok(pem) => renewal_reason(&pem, names, now),
            Err(e) => Some(format!("unreadable: {e}")),
        };
        let Some(reason) = reason else {
            return Ok((cert, key));
        };
        tracing::warn!(%domain, path = %cert.display(), %reason, "renewing the generated certificate");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_pem, key_pem) = generate(names, now)?;
    // Each file is replaced whole (write, then rename), key first: a crash
    // in between leaves an old certificate, which is renewed at next start.
    let tmp = |p: &Path| p.with_extension("tmp");
    write_private(&tmp(&key), key_pem.as_bytes())?;
    std::fs::rename(tmp(&key), &key)?;
    std::fs::write(tmp(&cert), cert_pem)?;
    std::fs::rename(tmp(&cert), &cert)?;
    tracing::warn!(%domain, path = %cert.display(), days = GENERATED_VALID_DAYS, "generated a self-signed certificate");
    Ok((cert, key))
}

/// A self-signed certificate and its key (PEM) for `names[0]` (the
/// domain): subject CN the domain, a DNS subjectAltName for each name,
/// valid from a day before `now` (clients with a slow clock) for
/// [`GENERATED_VALID_DAYS`].
fn generate(names: &[String], now: time::OffsetDateTime) -> anyhow::Result<(String, String)> {
    let domain = names[0].as_str();
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, domain);
    params.distinguished_name = name;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(GENERATED_VALID_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Why the certificate file `pem` in `data_dir/certs/` must be generated
/// again for `names` (the domain first), or `None` to keep it. A
/// certificate someone put there that is not self-signed (issued by a CA)
/// is kept whatever it says.
fn renewal_reason(pem: &[u8], names: &[String], now: time::OffsetDateTime) -> Option<String> {
    let domain = names[0].as_str();
    let der = match CertificateDer::from_pem_slice(pem) {
        Ok(der) => der,
        Err(e) => return Some(format!("not a PEM certificate: {e}")),
    };
    let cert = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => cert,
        Err(e) => return Some(format!("not a certificate: {e}")),
    };
    let not_after = cert.validity().not_after.timestamp();
    let days_left = (not_after - now.unix_timestamp()).div_euclid(86_400);
    if cert.issuer().as_raw() != cert.subject().as_raw() {
        if days_left < RENEW_WITHIN_DAYS {
            tracing::warn!(%domain, days_left, "the CA-issued certificate in the certificate directory expires soon; replace it");
        }
        return None;
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if cn != Some(domain) {
        return Some(format!("subject CN is {cn:?}, not the domain"));
    }
    let san = cert.subject_alternative_name().ok().flatten();
    let named = |name: &str| {
        san.as_ref().is_some_and(|san| {
            san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name)),
            )
        })
    };
    if let Some(missing) = names.iter().find(|n| !named(n)) {
        return Some(format!("no DNS subjectAltName for {missing}"));
    }
    if days_left < RENEW_WITHIN_DAYS {
        return Some(format!("expires in {days_left} days"));
    }
    if cert.validity().not_before.timestamp() > now.unix_timestamp() {
        return Some("not valid yet".into());
    }
    if days_left > GENERATED_VALID_DAYS {
        return Some(format!(
            "valid for {days_left} more days, more than a generated one"
        ));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    fn n(domain: &str) -> Vec<String> {
        vec![domain.to_owned()]
    }

    fn parse(pem: &[u8]) -> (Option<String>, Vec<String>, i64, i64) {
        let der = CertificateDer::from_pem_slice(pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = c
            .subject()
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str().unwrap().to_owned());
        let sans = c
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        let v = c.validity();
        (cn, sans, v.not_before.timestamp(), v.not_after.timestamp())
    }

    #[test]
    fn generated_certificate_names_the_domain_for_a_year() {
        let now = OffsetDateTime::now_utc();
        let (cert, _) = generate(&n("example.org"), now).unwrap();
        let (cn, sans, from, until) = parse(cert.as_bytes());
        assert_eq!(cn.as_deref(), Some("example.org"));
        assert_eq!(sans, ["DNSName(example.org)"]);
        let t = now.unix_timestamp();
        assert!(
            (t - 86_400 - 1..=t - 86_400 + 1).contains(&from),
            "{from} vs {t}"
        );
        assert!((until - t - 365 * 86_400).abs() <= 1);
        assert_eq!(
            renewal_reason(cert.as_bytes(), &n("example.org"), now),
            None
        );
        // another domain's certificate is not this domain's
        assert!(renewal_reason(cert.as_bytes(), &n("example.net"), now).is_some());
    }

    #[test]
    fn generated_certificate_names_the_upload_hosts() {
        let mut cfg = Config {
            domains: vec!["example.org".into()],
            ..Default::default()
        };
        assert_eq!(names(&cfg, "example.org"), ["example.org"]);
        cfg.upload.enabled = true;
        assert_eq!(
            names(&cfg, "example.org"),
            ["example.org", "upload.example.org"]
        );
        cfg.upload.public_url = Some("https://files.{domain}:8443/up".into());
        assert_eq!(
            names(&cfg, "example.org"),
            ["example.org", "upload.example.org", "files.example.org"]
        );
        // IP addresses are not DNS names.
        cfg.upload.public_url = Some("https://127.0.0.1:5443".into());
        assert_eq!(
            names(&cfg, "example.org"),
            ["example.org", "upload.example.org"]
        );
        let now = OffsetDateTime::now_utc();
        let all = names(&cfg, "example.org");
        let (cert, _) = generate(&all, now).unwrap();
        let (cn, sans, _, _) = parse(cert.as_bytes());
        assert_eq!(cn.as_deref(), Some("example.org"));
        assert_eq!(
            sans,
            ["DNSName(example.org)", "DNSName(upload.example.org)"]
        );
        assert_eq!(renewal_reason(cert.as_bytes(), &all, now), None);
        // One made before upload was enabled lacks the name: made anew.
        let (old, _) = generate(&n("example.org"), now).unwrap();
        let reason = renewal_reason(old.as_bytes(), &all, now).unwrap();
        assert!(reason.contains("upload.example.org"), "{reason}");
    }

    #[test]
    fn renewed_when_expiring_unreadable_or_of_the_old_kind() {
        let now = OffsetDateTime::now_utc();
        let (cert, _) = generate(&n("localhost"), now).unwrap();
        // 336 days later, 29 left: renewed; at 31 left, kept.
        assert!(
            renewal_reason(cert.as_bytes(), &n("localhost"), now + Duration::days(336)).is_some()
        );
        assert_eq!(
            renewal_reason(cert.as_bytes(), &n("localhost"), now + Duration::days(334)),
            None
        );
        assert!(renewal_reason(b"garbage", &n("localhost"), now).is_some());
        let old = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let reason = renewal_reason(old.cert.pem().as_bytes(), &n("localhost"), now).unwrap();
        assert!(reason.contains("CN"), "{reason}");
    }

    #[test]
    fn a_ca_issued_certificate_is_kept_even_when_expiring() {
        let now = OffsetDateTime::now_utc();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = now + Duration::days(2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        assert_eq!(
            renewal_reason(cert.pem().as_bytes(), &n("localhost"), now),
            None
        );
    }

    #[test]
    fn server_config_renews_an_expiring_generated_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            domains: vec!["localhost".into()],
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        server_config(&cfg).unwrap();
        let path = dir.path().join("certs/localhost.crt");
        let first = std::fs::read(&path).unwrap();
        server_config(&cfg).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "a good certificate is kept"
        );
        let (old, key) = generate(
            &n("localhost"),
            OffsetDateTime::now_utc() - Duration::days(350),
        )
        .unwrap();
        std::fs::write(&path, &old).unwrap();
        std::fs::write(dir.path().join("certs/localhost.key"), key).unwrap();
        server_config(&cfg).unwrap();
        let renewed = std::fs::read(&path).unwrap();
        assert_ne!(renewed, old.as_bytes());
        let until = parse(&renewed).3;
        assert!(until - OffsetDateTime::now_utc().unix_timestamp() > 364 * 86_400);
    }

    /// RFC 5929 §4.1 by the certificate's signature: the generated one
    /// (ecdsa-with-SHA256) hashes with SHA-256, SHA-384 signatures with
    /// SHA-384; Ed25519 names no hash, so no binding.
    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        use sha2::Digest;
        let der = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["example.org".to_owned()]).unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let p256 = der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point(&p256), Some(sha2::Sha256::digest(&p256).to_vec()));
        let p384 = der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point(&p384), Some(sha2::Sha384::digest(&p384).to_vec()));
        assert_eq!(end_point(&der(&rcgen::PKCS_ED25519)), None);
    }

    /// The certificate a connection was given, as the resolver picks it:
    /// by SNI (any case), else the first domain's.
    #[test]
    fn end_points_are_chosen_as_the_certificates_are() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            domains: vec!["a.example".into(), "b.example".into()],
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        server_config(&cfg).unwrap();
        let hash = |name: &str| {
            let pem = std::fs::read(dir.path().join(format!("certs/{name}.crt"))).unwrap();
            sha2::Sha256::digest(CertificateDer::from_pem_slice(&pem).unwrap()).to_vec()
        };
        let eps = EndPoints::load(&cfg).unwrap();
        assert_eq!(eps.get(Some("b.example")), Some(&hash("b.example")[..]));
        assert_eq!(eps.get(Some("B.Example")), Some(&hash("b.example")[..]));
        assert_eq!(eps.get(Some("a.example")), Some(&hash("a.example")[..]));
        assert_eq!(eps.get(None), Some(&hash("a.example")[..]));
        assert_eq!(eps.get(Some("other.example")), Some(&hash("a.example")[..]));
        assert_ne!(hash("a.example"), hash("b.example"));
    }
}

/// A TLS client configuration for talking to other servers whose
/// certificates no public CA vouches for: with `pins`, only a certificate
/// whose SHA-256 (hex) is one of them (another node's upload listener,
/// published through the replicated store); without, any certificate
/// (federation: the domain is proved by dialback, not by the certificate).
/// The handshake's signatures are checked either way.
pub fn client_config(pins: Option<Vec<String>>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with(pins, None)
}

/// As [`client_config`], presenting the certificate `own` resolves (a
/// served domain's, to another server: SASL EXTERNAL).
pub fn client_config_with(
    pins: Option<Vec<String>>,
    own: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = PeerCertificate {
        pins,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match own {
        Some(own) => builder.with_client_cert_resolver(own),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PeerCertificate {
    pins: Option<Vec<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let pinned = |pins: &Vec<String>| {
            let digest = sha2::Sha256::digest(end_entity.as_ref());
            let fp: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            pins.contains(&fp)
        };
        match &self.pins {
            Some(pins) if !pinned(pins) => Err(rustls::Error::General(
                "the certificate is not the one published".into(),
            )),
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
