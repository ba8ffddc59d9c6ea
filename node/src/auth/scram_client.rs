//! SCRAM client side (RFC 5802; RFC 7677 for SHA-256), without channel
//! binding: the one client implementation in the workspace, for the load
//! generator (`starling-bench`) and the micro-benchmarks. It shares the
//! hash functions and password preparation with the server side
//! ([`super::scram`]), so both ends derive keys the same way.
//!
//! Messages are passed as plain text; base64 for `<auth/>`/`<response/>`
//! is the caller's (see [`super::encode_b64`], [`super::decode_b64`]).

use super::scram::{ScramHash, normalize_password};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Highest iteration count the client accepts from a server (a hostile
/// server could otherwise make it spin).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why the client gave up on an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramClientError {
    #[error("malformed server message: {0}")]
    Malformed(&'static str),
    #[error("the server nonce does not extend the client's")]
    Nonce,
    #[error("iteration count {0} out of range 1..={MAX_ITERATIONS}")]
    Iterations(u32),
    #[error("the server signature does not match: not the server that holds the password")]
    ServerSignature,
    #[error("server-final-message before the client-final-message")]
    OutOfOrder,
}

/// Client side of one SCRAM exchange.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// Set once the client-final-message is made.
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange with a random nonce: the client and its
    /// client-first-message (`n,,n=user,r=nonce`).
    pub fn start(hash: ScramHash, username: &str, password: &str) -> (Self, String) {
        let raw: [u8; 18] = rand::random();
        Self::with_nonce(hash, username, password, &STANDARD.encode(raw))
    }

    /// [`ScramClient::start`] with a given nonce (printable, no `,`): for
    /// the RFC test vectors.
    pub fn with_nonce(
        hash: ScramHash,
        username: &str,
        password: &str,
        nonce: &str,
    ) -> (Self, String) {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={nonce}");
        let msg = format!("n,,{client_first_bare}");
        let client = ScramClient {
            hash,
            password: password.to_owned(),
            client_first_bare,
            nonce: nonce.to_owned(),
            server_signature: None,
        };
        (client, msg)
    }

    /// SaltedPassword = Hi(Normalize(password), salt, i) (RFC 5802 §3): the
    /// expensive step, which a client may compute once and keep.
    pub fn salted_password(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Vec<u8> {
        hash.hi(normalize_password(password).as_bytes(), salt, iterations)
    }

    /// Answers the server-first-message with the client-final-message,
    /// computing the salted password.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramClientError> {
        let (hash, password) = (self.hash, self.password.clone());
        self.client_final_with(server_first, |salt, i| {
            Self::salted_password(hash, &password, salt, i)
        })
    }

    /// [`ScramClient::client_final`] with the salted password from
    /// `salted(salt, iterations)`, e.g. from a cache of
    /// [`ScramClient::salted_password`] results.
    pub fn client_final_with(
        &mut self,
        server_first: &[u8],
        salted: impl FnOnce(&[u8], u32) -> Vec<u8>,
    ) -> Result<String, ScramClientError> {
        let sf = std::str::from_utf8(server_first)
            .map_err(|_| ScramClientError::Malformed("not UTF-8"))?;
        let (mut r, mut s, mut i) = (None, None, None);
        for part in sf.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => s = Some(v),
                Some(("i=", v)) => i = Some(v),
                // A mandatory extension this client does not know (§5.1).
                Some(("m=", _)) => return Err(ScramClientError::Malformed("m= extension")),
                _ => {}
            }
        }
        let r = r.ok_or(ScramClientError::Malformed("no nonce"))?;
        if r.len() <= self.nonce.len() || !r.starts_with(&self.nonce) {
            return Err(ScramClientError::Nonce);
        }
        let salt = STANDARD
            .decode(s.ok_or(ScramClientError::Malformed("no salt"))?)
            .map_err(|_| ScramClientError::Malformed("salt is not base64"))?;
        let i: u32 = i
            .ok_or(ScramClientError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramClientError::Malformed("iteration count"))?;
        if !(1..=MAX_ITERATIONS).contains(&i) {
            return Err(ScramClientError::Iterations(i));
        }
        let salted = salted(&salt, i);
        let h = self.hash;
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        let client_signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final-message (`v=...`): the server proved that it
    /// knows the password's keys.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramClientError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramClientError::OutOfOrder)?;
        let v = std::str::from_utf8(server_final)
            .ok()
            .and_then(|f| f.strip_prefix("v="))
            .ok_or(ScramClientError::Malformed("server-final-message"))?;
        match STANDARD.decode(v) {
            Ok(sig) if &sig == expected => Ok(()),
            _ => Err(ScramClientError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ScramCredentials, ScramServer, ScramStep};

    /// RFC 5802 §5 (SCRAM-SHA-1, user "user", password "pencil").
    #[test]
    fn rfc5802_vector() {
        let (mut c, first) = ScramClient::with_nonce(
            ScramHash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(first, "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let sf = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        assert_eq!(
            c.client_final(sf).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert_eq!(
            c.verify_server_final(b"v=AAAApqV8S7suAoZWja4dJRkFsKQ="),
            Err(ScramClientError::ServerSignature)
        );
    }

    /// RFC 7677 §3 (SCRAM-SHA-256).
    #[test]
    fn rfc7677_vector() {
        let (mut c, _) =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let sf = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final(sf).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn against_the_server_for_every_hash() {
        for hash in ScramHash::ALL {
            let creds = ScramCredentials::derive(hash, "s3cret", b"salt-salt-salt", 64);
            let mut server = ScramServer::new(hash);
            let (mut client, first) = ScramClient::start(hash, "al,ice", "s3cret");
            assert_eq!(server.client_first(first.as_bytes()).unwrap(), "al,ice");
            let sf = server.server_first(Some(&creds));
            let cached = ScramClient::salted_password(hash, "s3cret", b"salt-salt-salt", 64);
            let fin = client.client_final_with(&sf, |_, _| cached).unwrap();
            let ScramStep::Success { server_final, .. } =
                server.client_final(fin.as_bytes()).unwrap()
            else {
                panic!("{hash:?}: not authenticated");
            };
            client.verify_server_final(&server_final).unwrap();
        }
    }

    #[test]
    fn refuses_bad_server_messages() {
        let (mut c, _) = ScramClient::with_nonce(ScramHash::Sha256, "u", "p", "abc");
        assert_eq!(
            c.verify_server_final(b"v="),
            Err(ScramClientError::OutOfOrder)
        );
        assert_eq!(
            c.client_final(b"r=xyz123,s=AAAA,i=1"),
            Err(ScramClientError::Nonce)
        );
        assert_eq!(
            c.client_final(b"r=abc,s=AAAA,i=1"),
            Err(ScramClientError::Nonce)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=AAAA,i=0"),
            Err(ScramClientError::Iterations(0))
        );
        assert!(c.client_final(b"m=x,r=abcd,s=AAAA,i=1").is_err());
        assert!(c.client_final(b"r=abcd,i=1").is_err());
    }
}
