//! The cluster's certificate authority: a CA made once per cluster, and
//! node certificates it signs (rcgen on ring). Node certificates carry the
//! SAN `starling-node`, which every node checks its peers against, plus
//! the node's own names and addresses. `starling cluster ca|cert` call
//! these; nothing here runs while a node serves.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The SAN every node certificate carries and every node verifies.
pub const NODE_NAME: &str = "starling-node";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(String);

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> PkiError + '_ {
    move |e| PkiError(format!("{what}: {e}"))
}

/// Writes `path` with mode 0600 (a private key) or default mode.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts
        .open(path)
        .map_err(|e| err(&format!("writing {}", path.display()))(&e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| err(&format!("writing {}", path.display()))(&e))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| err(&format!("reading {}", path.display()))(&e))
}

/// Creates a cluster CA in `dir` (`ca.pem`, `ca-key.pem`, ten years).
/// Returns the paths of the certificate and of its key.
pub fn make_ca(dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| err("creating the CA directory")(&e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA")(&e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Starling cluster CA");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let key = KeyPair::generate().map_err(|e| err("CA key")(&e))?;
    let cert = params.self_signed(&key).map_err(|e| err("CA")(&e))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// Certificates are valid from the start of the current year, which
/// tolerates clock skew between nodes.
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

/// Signs a node certificate (`<name>.pem`, `<name>-key.pem` in `out_dir`,
/// two years) valid for client and server authentication. Its SANs are
/// `starling-node` plus `sans` (host names or IP addresses).
pub fn make_node_cert(
    ca_cert: &Path,
    ca_key: &Path,
    out_dir: &Path,
    name: &str,
    sans: &[String],
) -> Result<(PathBuf, PathBuf), PkiError> {
    std::fs::create_dir_all(out_dir).map_err(|e| err("creating the output directory")(&e))?;
    let ca_key = KeyPair::from_pem(&read(ca_key)?).map_err(|e| err("CA key")(&e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(ca_cert)?, ca_key).map_err(|e| err("CA certificate")(&e))?;
    let mut names = vec![NODE_NAME.to_string()];
    names.extend(sans.iter().filter(|s| *s != NODE_NAME).cloned());
    let mut params = CertificateParams::new(names).map_err(|e| err("SANs")(&e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let key = KeyPair::generate().map_err(|e| err("node key")(&e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| err("signing")(&e))?;
    let cert_path = out_dir.join(format!("{name}.pem"));
    let key_path = out_dir.join(format!("{name}-key.pem"));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}
