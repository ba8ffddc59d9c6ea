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
//! Trusted CAs: the system's (`[s2s] system_roots`) and `[s2s] ca_file`.

use crate::server::Server;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier as _};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CAs other servers' certificates are checked against.
pub struct Trust {
    verifier: Option<Arc<WebPkiServerVerifier>>,
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
            match CertificateDer::pem_file_iter(path) {
                Ok(certs) => {
                    let (added, ignored) =
                        roots.add_parsable_certificates(certs.filter_map(Result::ok));
                    tracing::info!(path = %path.display(), added, ignored, "s2s certificate authorities");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "s2s.ca_file not read")
                }
            }
        }
        let verifier = (!roots.is_empty())
            .then(|| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .ok()
            })
            .flatten();
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
        match v.verify_server_cert(end, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%domain, error = %e, "s2s peer certificate not trusted");
                false
            }
        }
    }
}

/// TLS for the streams other servers open to us: the domains'
/// certificates, and the other server's asked for.
pub fn server_config(server: &Server) -> Arc<rustls::ServerConfig> {
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(AnyCertificate(provider()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
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

/// Accepts any client certificate at the TLS level (its handshake
/// signature is checked); what it is worth is decided after.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
