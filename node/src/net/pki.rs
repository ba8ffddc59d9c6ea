//! What certificates a peer presents are worth, for servers (s2s) and
//! clients (c2s) alike: the TLS handshake takes any certificate whose key
//! the peer proves ([`AnyCertificate`]), and whom it names is read after
//! ([`other_names`]) once its chain is checked against the CAs configured
//! ([`roots`]).

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// id-on-xmppAddr (RFC 6120 §13.7.1.4): a JID, as a UTF8String.
pub const XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
/// id-on-dnsSRV (RFC 4985): `_service.name`, as an IA5String.
pub const SRV_NAME: &str = "1.3.6.1.5.5.7.8.7";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Adds the certificates of the PEM file `path` to `roots`: how many were
/// added and how many were not usable.
pub fn add_roots(
    roots: &mut rustls::RootCertStore,
    path: &Path,
) -> Result<(usize, usize), rustls::pki_types::pem::Error> {
    let certs = CertificateDer::pem_file_iter(path)?;
    Ok(roots.add_parsable_certificates(certs.filter_map(Result::ok)))
}

/// The certificate revocation lists (RFC 5280) of the PEM file `path`;
/// an error for a file that holds none.
pub fn read_crls(
    path: &Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    use anyhow::Context as _;
    let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!crls.is_empty(), "{}: no revocation list", path.display());
    Ok(crls)
}

/// A verifier built with the revocation lists of a file, built again when
/// the file changes (CAs publish new lists on their own schedules): the
/// callers of [`Revocable::get`] look at the file, at most once a second,
/// so nothing runs while nobody verifies. A file that no longer builds
/// keeps the verifier built before. Without a file, a fixed verifier.
pub struct Revocable<V> {
    crl_file: Option<std::path::PathBuf>,
    build: Build<V>,
    current: std::sync::Mutex<Built<V>>,
}

/// Makes a verifier with the lists of a file, if any.
type Build<V> = Box<dyn Fn(Option<&Path>) -> anyhow::Result<V> + Send + Sync>;

struct Built<V> {
    verifier: V,
    modified: Option<std::time::SystemTime>,
    checked: std::time::Instant,
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl<V: Clone> Revocable<V> {
    /// Builds the verifier once (`build` gets the lists' file, if any).
    pub fn new(
        crl_file: Option<&Path>,
        build: impl Fn(Option<&Path>) -> anyhow::Result<V> + Send + Sync + 'static,
    ) -> anyhow::Result<Revocable<V>> {
        let verifier = build(crl_file)?;
        Ok(Revocable {
            crl_file: crl_file.map(Path::to_owned),
            build: Box::new(build),
            current: std::sync::Mutex::new(Built {
                verifier,
                modified: crl_file.and_then(modified),
                checked: std::time::Instant::now(),
            }),
        })
    }

    /// The verifier of the newest lists.
    pub fn get(&self) -> V {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.crl_file
            && cur.checked.elapsed() >= std::time::Duration::from_secs(1)
        {
            cur.checked = std::time::Instant::now();
            let now = modified(path);
            if now != cur.modified {
                match (self.build)(Some(path)) {
                    Ok(v) => {
                        tracing::info!(path = %path.display(), "certificate revocation lists read again");
                        cur.verifier = v;
                        cur.modified = now;
                    }
                    Err(e) => tracing::error!(
                        path = %path.display(),
                        error = format!("{e:#}"),
                        "certificate revocation lists not read: keeping those read before"
                    ),
                }
            }
        }
        cur.verifier.clone()
    }
}

/// An otherName of a certificate's subjectAltName whose value is a
/// string.
#[derive(Debug, PartialEq, Eq)]
pub struct OtherName {
    /// The type, as a dotted OID.
    pub oid: String,
    /// An IA5String (else a UTF8String).
    pub ia5: bool,
    pub text: String,
}

/// The string-valued otherNames of the certificate `der`'s
/// subjectAltName (nothing for what does not parse).
pub fn other_names(der: &[u8]) -> Vec<OtherName> {
    use x509_parser::der_parser::asn1_rs::{Any, FromDer, Tag};
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| {
            let GeneralName::OtherName(oid, value) = name else {
                return None;
            };
            // `[0] EXPLICIT` around the value.
            let (_, explicit) = Any::from_der(value).ok()?;
            if explicit.tag() != Tag(0) {
                return None;
            }
            let (_, inner) = Any::from_der(explicit.data).ok()?;
            let ia5 = match inner.tag() {
                Tag::Ia5String => true,
                Tag::Utf8String => false,
                _ => return None,
            };
            let text = std::str::from_utf8(inner.data).ok()?.to_owned();
            Some(OtherName {
                oid: oid.to_id_string(),
                ia5,
                text,
            })
        })
        .collect()
}

/// Accepts any client certificate at the TLS level (its handshake
/// signature is checked) without requiring one; what it is worth is
/// decided after. `hints`: the CAs named to the client in the request.
#[derive(Debug)]
pub struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl AnyCertificate {
    pub fn new(hints: Vec<DistinguishedName>) -> AnyCertificate {
        AnyCertificate {
            provider: provider(),
            hints,
        }
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Certificates for tests: self-signed, with the subjectAltNames given.
#[cfg(test)]
pub mod testing {
    use rcgen::{CertificateParams, KeyPair, OtherNameValue, SanType};

    pub fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// An XmppAddr (id-on-xmppAddr, a UTF8String).
    pub fn xmpp_addr(jid: &str) -> SanType {
        SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            OtherNameValue::Utf8String(jid.into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{cert, xmpp_addr};
    use super::*;

    /// Built again when the file changes, not before a second passed, and
    /// a file that does not build keeps what was built.
    #[test]
    fn revocable_is_built_again_when_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists");
        std::fs::write(&path, "1").unwrap();
        let read = |p: Option<&Path>| -> anyhow::Result<u32> {
            Ok(std::fs::read_to_string(p.unwrap())?.trim().parse()?)
        };
        let r = Revocable::new(Some(&path), read).unwrap();
        assert_eq!(r.get(), 1);
        let later = |n: u64| std::time::SystemTime::now() + std::time::Duration::from_secs(n);
        let set = |text: &str, at| {
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(at).unwrap();
        };
        set("2", later(10));
        assert_eq!(r.get(), 1, "looked at once a second at most");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(r.get(), 2);
        set("not a number", later(20));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(r.get(), 2, "kept");
        assert!(
            Revocable::new(Some(&path), read).is_err(),
            "nothing to keep at the start"
        );
        assert_eq!(Revocable::new(None, |_| Ok(7)).unwrap().get(), 7);
    }
    use rcgen::SanType;

    #[test]
    fn string_other_names_are_read() {
        let der = cert(vec![
            SanType::DnsName("example.org".try_into().unwrap()),
            xmpp_addr("juliet@example.org"),
        ]);
        assert_eq!(
            other_names(&der),
            [OtherName {
                oid: XMPP_ADDR.into(),
                ia5: false,
                text: "juliet@example.org".into()
            }]
        );
        assert!(other_names(b"not a certificate").is_empty());
    }
}
