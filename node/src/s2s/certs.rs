//! Certificates between servers, for SASL EXTERNAL (RFC 6120 §6.4,
//! §13.7.1.2, §13.8.4; XEP-0178):
//! - streams we accept ask for the other server's certificate in the TLS
//!   handshake without requiring one and without refusing one no CA
//!   vouches for (dialback is there for those): the handshake proves the
//!   key, [`Trust::verify`] then checks the chain to a trusted CA and the
//!   domain (a DNS name of the certificate, RFC 6125) before EXTERNAL is
//!   offered;
//! - links we open present the served domain's certificate.
//!
//! Trusted CAs: the system's (`[s2s] system_roots`) and `[s2s] ca_file`;
//! revoked certificates: the lists of `[s2s] crl_file`.

use crate::net::pki;
use crate::server::Server;
use rustls::SignatureScheme;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The CAs other servers' certificates are checked against (and the
/// revocation lists of `[s2s] crl_file`, read again when the file
/// changes: [`pki::Revocable`]).
pub struct Trust {
    verifier: Option<pki::Revocable<Arc<WebPkiServerVerifier>>>,
}

impl Trust {
    pub fn load(cfg: &crate::config::S2sConfig) -> Trust {
        let mut roots = rustls::RootCertStore::empty();
        if cfg.system_roots {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, "system certificate authorities for s2s");
        }
        if let Some(path) = &cfg.ca_file {
            match pki::add_roots(&mut roots, path) {
                Ok((added, ignored)) => {
                    tracing::info!(path = %path.display(), added, ignored, "s2s certificate authorities")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "s2s.ca_file not read")
                }
            }
        }
        if roots.is_empty() {
            return Trust { verifier: None };
        }
        let roots = Arc::new(roots);
        let build = move |crls: Option<&std::path::Path>| {
            let builder =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), pki::provider());
            let builder = match crls {
                None => builder,
                Some(path) => builder
                    .with_crls(pki::read_crls(path)?)
                    .allow_unknown_revocation_status(),
            };
            Ok(builder.build()?)
        };
        let verifier = match pki::Revocable::new(cfg.crl_file.as_deref(), build) {
            Ok(v) => Some(v),
            Err(e) => {
                // No server is trusted without the lists it was meant to be
                // checked against: dialback only.
                tracing::error!(
                    error = format!("{e:#}"),
                    "s2s certificates: SASL EXTERNAL is off"
                );
                None
            }
        };
        Trust { verifier }
    }

    /// Whether `chain` (end entity first) is a certificate for `domain`
    /// that a trusted CA issued, valid now.
    pub fn verify(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let (Some(v), Some((end, intermediates))) = (&self.verifier, chain.split_first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        match v
            .get()
            .verify_server_cert(end, intermediates, &name, &[], UnixTime::now())
        {
            Ok(_) => true,
            // The chain is checked before the name (rustls' WebPKI
            // verifier): a trusted certificate that names the domain other
            // than by a DNS name.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if names_server_by_other_name(end, domain) => true,
            Err(e) => {
                tracing::debug!(%domain, error = %e, "s2s peer certificate not trusted");
                false
            }
        }
    }
}

/// Whether the certificate `der` names the server of `domain` by an
/// otherName of its subjectAltName: an SRV-ID `_xmpp-server.<domain>`
/// (an IA5String) or an XmppAddr `<domain>` (a UTF8String). Compared as
/// DNS names are, without regard to ASCII case (RFC 6125 §6.4.1, §6.5.1);
/// an SRV-ID of another service (`_xmpp-client`) does not name a server.
fn names_server_by_other_name(der: &[u8], domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    pki::other_names(der).iter().any(|n| match n.oid.as_str() {
        pki::XMPP_ADDR if !n.ia5 => n.text.eq_ignore_ascii_case(domain),
        pki::SRV_NAME if n.ia5 => n.text.split_once('.').is_some_and(|(service, name)| {
            service.eq_ignore_ascii_case("_xmpp-server")
                && name.trim_end_matches('.').eq_ignore_ascii_case(domain)
        }),
        _ => false,
    })
}

/// TLS for the streams other servers open to us: the domains'
/// certificates, and the other server's asked for.
pub fn server_config(server: &Server) -> Arc<rustls::ServerConfig> {
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(pki::AnyCertificate::new(Vec::new()));
    let config = rustls::ServerConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server.tls.cert_resolver.clone());
    Arc::new(config)
}

/// TLS for a link of the served domain `local`: its certificate is
/// presented to the other server (for SASL EXTERNAL); the other server's
/// certificate is not checked (the domain is proved by SASL or dialback).
pub fn client_config(server: &Server, local: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = server.s2s.certified_key(server, local);
    crate::net::tls::client_config_with(
        None,
        key.map(|k| Arc::new(OwnCertificate(k)) as Arc<dyn ResolvesClientCert>),
    )
}

/// The served domain's certificate, as a TLS client's.
#[derive(Debug)]
struct OwnCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::testing::{cert, xmpp_addr};
    use rcgen::{OtherNameValue, SanType};

    #[test]
    fn an_xmpp_addr_of_the_domain_names_its_server() {
        let c = cert(vec![xmpp_addr("Example.ORG")]);
        assert!(names_server_by_other_name(&c, "example.org"));
        assert!(names_server_by_other_name(&c, "example.org."));
        assert!(!names_server_by_other_name(&c, "example.com"));
        assert!(!names_server_by_other_name(&c, "sub.example.org"));
    }

    #[test]
    fn other_identities_do_not_name_a_server() {
        let dns = cert(vec![SanType::DnsName("example.org".try_into().unwrap())]);
        assert!(!names_server_by_other_name(&dns, "example.org"));
        // A user's address is not the server's.
        let user = cert(vec![xmpp_addr("juliet@example.org")]);
        assert!(!names_server_by_other_name(&user, "example.org"));
        // Another otherName type carrying the domain.
        let other = cert(vec![SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
            OtherNameValue::Utf8String("example.org".into()),
        ))]);
        assert!(!names_server_by_other_name(&other, "example.org"));
        assert!(!names_server_by_other_name(
            b"not a certificate",
            "example.org"
        ));
    }
}
