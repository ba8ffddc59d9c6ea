//! Client side of SASL PLAIN and SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677), no channel binding.
//! SCRAM is the server crate's own client ([`starling::auth::ScramClient`]); this file only picks
//! the mechanism, base64-encodes, and caches salted passwords.
//!
//! The salted password is cached per (password, salt, iterations, hash), as real clients do, so the
//! load generator does not spend its CPU on PBKDF2 at every login and the server's cost stays visible.

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use starling::auth::{ScramClient, ScramHash};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A SASL mechanism the bench can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mech {
    /// Strongest offered: SCRAM-SHA-256, then SCRAM-SHA-1, then PLAIN.
    Auto,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "PLAIN")]
    Plain,
}

impl Mech {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Mech::Auto => "auto",
            Mech::ScramSha256 => "SCRAM-SHA-256",
            Mech::ScramSha1 => "SCRAM-SHA-1",
            Mech::Plain => "PLAIN",
        }
    }

    /// Pick the mechanism to use from the `<mechanisms>` the server offered.
    pub fn choose(self, offered: &[String]) -> Result<Mech> {
        let has = |m: Mech| offered.iter().any(|o| o == m.name());
        let order: &[Mech] = match self {
            Mech::Auto => &[Mech::ScramSha256, Mech::ScramSha1, Mech::Plain],
            Mech::ScramSha256 => &[Mech::ScramSha256],
            Mech::ScramSha1 => &[Mech::ScramSha1],
            Mech::Plain => &[Mech::Plain],
        };
        order
            .iter()
            .copied()
            .find(|&m| has(m))
            .ok_or_else(|| anyhow!("server offers {offered:?}, wanted {}", self.name()))
    }
}

/// The initial response for PLAIN.
pub fn plain(user: &str, pass: &str) -> String {
    B64.encode(format!("\0{user}\0{pass}"))
}

type SaltKey = (String, Vec<u8>, u32, &'static str);

fn cached_salted_password(hash: ScramHash, pass: &str, salt: &[u8], iter: u32) -> Vec<u8> {
    static CACHE: OnceLock<Mutex<HashMap<SaltKey, Vec<u8>>>> = OnceLock::new();
    let key = (pass.to_string(), salt.to_vec(), iter, hash.mechanism());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().expect("cache lock").get(&key) {
        return v.clone();
    }
    let v = ScramClient::salted_password(hash, pass, salt, iter);
    cache.lock().expect("cache lock").insert(key, v.clone());
    v
}

/// One SCRAM exchange in progress.
pub struct Scram {
    client: ScramClient,
    hash: ScramHash,
    pass: String,
}

impl Scram {
    /// Start: returns the state and the base64 client-first message.
    pub fn start(mech: Mech, user: &str, pass: &str) -> (Scram, String) {
        let hash = match mech {
            Mech::ScramSha1 => ScramHash::Sha1,
            _ => ScramHash::Sha256,
        };
        let (client, first) = ScramClient::start(hash, user, pass);
        let s = Scram {
            client,
            hash,
            pass: pass.to_string(),
        };
        (s, B64.encode(first))
    }

    /// Answer the server-first challenge (base64): returns the base64 client-final message.
    pub fn respond(&mut self, challenge_b64: &str) -> Result<String> {
        let sf = B64
            .decode(challenge_b64.trim())
            .context("challenge is not base64")?;
        let (hash, pass) = (self.hash, &self.pass);
        let fin = self.client.client_final_with(&sf, |salt, iter| {
            cached_salted_password(hash, pass, salt, iter)
        })?;
        Ok(B64.encode(fin))
    }

    /// Check the server-final message (base64 `v=...`) that came with `<success>`.
    pub fn verify(&self, final_b64: &str) -> Result<()> {
        let f = B64
            .decode(final_b64.trim())
            .map_err(|e| anyhow!("server final message is not base64: {e}"))?;
        Ok(self.client.verify_server_final(&f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling::auth::{ScramCredentials, ScramServer, ScramStep};

    /// A whole exchange through the base64 wrapper, against the server's side.
    #[test]
    fn login_against_the_server_side() {
        for mech in [Mech::ScramSha1, Mech::ScramSha256] {
            let hash = ScramHash::from_mechanism(mech.name()).unwrap();
            let creds = ScramCredentials::derive(hash, "perfpass1", b"0123456789abcdef", 4096);
            let mut server = ScramServer::new(hash);
            let (mut c, first) = Scram::start(mech, "user1", "perfpass1");
            server.client_first(&B64.decode(first).unwrap()).unwrap();
            let sf = B64.encode(server.server_first(Some(&creds)));
            let fin = B64.decode(c.respond(&sf).unwrap()).unwrap();
            let ScramStep::Success { server_final, .. } = server.client_final(&fin).unwrap() else {
                panic!("{mech:?}: not authenticated");
            };
            c.verify(&B64.encode(server_final)).unwrap();
            assert!(c.verify(&B64.encode("v=AAAA")).is_err());
        }
    }
}
