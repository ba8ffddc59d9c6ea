//! SASL EXTERNAL for clients with certificates (XEP-0178 §2, RFC 6120
//! §13.7.1.4): the TLS handshake asks for a certificate without requiring
//! one and takes any ([`crate::net::pki::AnyCertificate`]); after it,
//! [`ClientTrust::jids`] checks the chain against `[c2s] client_ca_file`
//! (and the revocation lists of `[c2s] client_crl_file`) and reads the
//! certificate's XmppAddrs, and [`authorize`] picks the account the
//! exchange logs in.

use super::SaslFailure;
use crate::net::pki;
use rustls::DistinguishedName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::path::Path;
use std::sync::Arc;

/// The certificate authorities of `[c2s] client_ca_file`, and the
/// revocation lists of `[c2s] client_crl_file` (read again when the file
/// changes: [`pki::Revocable`]).
pub struct ClientTrust {
    verifier: pki::Revocable<Arc<dyn ClientCertVerifier>>,
}

/// A verifier for `roots`, with the CRLs of the PEM file `crl_file`: a
/// certificate one of them revokes is not trusted; one whose issuer has
/// no list here is (lists are the CAs' to publish, not all may).
fn verifier(
    roots: &Arc<rustls::RootCertStore>,
    crl_file: Option<&Path>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), pki::provider());
    let builder = match crl_file {
        None => builder,
        Some(path) => builder
            .with_crls(pki::read_crls(path)?)
            .allow_unknown_revocation_status(),
    };
    Ok(builder.build()?)
}

impl ClientTrust {
    /// The CAs of the PEM file `path` (and the CRLs of `crl_file`);
    /// `None` when it holds none usable, or the CRLs cannot be read (no
    /// certificate is trusted without the lists it was meant to be checked
    /// against). Errors are logged when `log` (once per start: the TLS
    /// configuration reads the file too, for [`ClientTrust::hints`]).
    pub fn load(path: &Path, crl_file: Option<&Path>, log: bool) -> Option<ClientTrust> {
        let mut roots = rustls::RootCertStore::empty();
        match pki::add_roots(&mut roots, path) {
            Ok((added, ignored)) if log => {
                tracing::info!(path = %path.display(), added, ignored, "c2s client certificate authorities (SASL EXTERNAL)")
            }
            Err(e) if log => {
                tracing::error!(path = %path.display(), error = %e, "c2s.client_ca_file not read")
            }
            _ => {}
        }
        if roots.is_empty() {
            if log {
                tracing::error!(path = %path.display(), "c2s.client_ca_file: no CA certificate; SASL EXTERNAL is off");
            }
            return None;
        }
        let roots = Arc::new(roots);
        match pki::Revocable::new(crl_file, move |crls| verifier(&roots, crls)) {
            Ok(verifier) => Some(ClientTrust { verifier }),
            Err(e) => {
                if log {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "c2s client certificates: SASL EXTERNAL is off"
                    );
                }
                None
            }
        }
    }

    /// The CAs a client is told its certificate should come from.
    pub fn hints(&self) -> Vec<DistinguishedName> {
        self.verifier.get().root_hint_subjects().to_vec()
    }

    /// The accounts of `domain` that the certificate `chain` (end entity
    /// first) names by XmppAddr, if one of the CAs issued it for client
    /// authentication, it is valid now and not revoked; empty otherwise.
    pub fn jids(&self, chain: &[CertificateDer<'_>], domain: &str) -> Vec<jid::BareJid> {
        let Some((end, intermediates)) = chain.split_first() else {
            return Vec::new();
        };
        if let Err(e) = self
            .verifier
            .get()
            .verify_client_cert(end, intermediates, UnixTime::now())
        {
            tracing::debug!(error = %e, "client certificate not trusted");
            return Vec::new();
        }
        accounts_named(end, domain)
    }
}

/// The bare JIDs of accounts of `domain` among the XmppAddrs of the
/// certificate `der`.
fn accounts_named(der: &[u8], domain: &str) -> Vec<jid::BareJid> {
    let mut out: Vec<jid::BareJid> = Vec::new();
    for name in pki::other_names(der) {
        if name.oid != pki::XMPP_ADDR || name.ia5 {
            continue;
        }
        let Ok(j) = jid::Jid::new(&name.text) else {
            continue;
        };
        let bare = j.to_bare();
        if bare.node().is_some() && bare.domain().as_str() == domain && !out.contains(&bare) {
            out.push(bare);
        }
    }
    out
}

/// XEP-0178 §2 steps 7-8: the account an EXTERNAL exchange logs in, given
/// the authorization identity the client sent (`""` for none) and the
/// accounts its certificate names. Without one, the certificate must name
/// exactly one; with one, it must be one of them (as a bare JID).
pub fn authorize(authzid: &str, named: &[jid::BareJid]) -> Result<jid::BareJid, SaslFailure> {
    if authzid.is_empty() {
        return match named {
            [one] => Ok(one.clone()),
            _ => Err(SaslFailure::InvalidAuthzid),
        };
    }
    let Ok(wanted) = jid::BareJid::new(authzid) else {
        return Err(SaslFailure::InvalidAuthzid);
    };
    named
        .iter()
        .find(|n| **n == wanted)
        .cloned()
        .ok_or(SaslFailure::InvalidAuthzid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::testing::{cert, xmpp_addr};

    fn with_xmpp_addrs(addrs: &[&str]) -> Vec<u8> {
        cert(addrs.iter().map(|a| xmpp_addr(a)).collect())
    }

    fn b(s: &str) -> jid::BareJid {
        jid::BareJid::new(s).unwrap()
    }

    #[test]
    fn accounts_of_the_domain_are_read_from_xmpp_addrs() {
        let der = with_xmpp_addrs(&[
            "juliet@example.org",
            "Romeo@Example.org/balcony",
            "example.org",
            "nurse@example.com",
            "juliet@example.org",
        ]);
        assert_eq!(
            accounts_named(&der, "example.org"),
            [b("juliet@example.org"), b("romeo@example.org")]
        );
        assert!(accounts_named(&der, "example.net").is_empty());
    }

    #[test]
    fn the_authzid_picks_among_the_accounts_named() {
        let one = [b("juliet@example.org")];
        let two = [b("juliet@example.org"), b("romeo@example.org")];
        assert_eq!(authorize("", &one), Ok(b("juliet@example.org")));
        assert_eq!(
            authorize("Juliet@example.org", &one),
            Ok(b("juliet@example.org"))
        );
        assert_eq!(authorize("", &two), Err(SaslFailure::InvalidAuthzid));
        assert_eq!(
            authorize("romeo@example.org", &two),
            Ok(b("romeo@example.org"))
        );
        assert_eq!(
            authorize("nurse@example.org", &two),
            Err(SaslFailure::InvalidAuthzid)
        );
        assert_eq!(authorize("@@", &one), Err(SaslFailure::InvalidAuthzid));
        assert_eq!(authorize("", &[]), Err(SaslFailure::InvalidAuthzid));
    }
}
