//! Client side of SASL PLAIN and SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677), no channel binding.
//!
//! The salted password is cached per (password, salt, iterations, hash), as real clients do, so the
//! load generator does not spend its CPU on PBKDF2 at every login and the server's cost stays visible.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha1::Sha1;
use sha2::{Digest, Sha256};
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

fn hmac(m: Mech, key: &[u8], data: &[u8]) -> Vec<u8> {
    match m {
        Mech::ScramSha1 => {
            let mut h = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
            h.update(data);
            h.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
            h.update(data);
            h.finalize().into_bytes().to_vec()
        }
    }
}

fn hash(m: Mech, data: &[u8]) -> Vec<u8> {
    match m {
        Mech::ScramSha1 => Sha1::digest(data).to_vec(),
        _ => Sha256::digest(data).to_vec(),
    }
}

type SaltKey = (String, Vec<u8>, u32, bool);

fn salted_password(m: Mech, pass: &str, salt: &[u8], iter: u32) -> Vec<u8> {
    static CACHE: OnceLock<Mutex<HashMap<SaltKey, Vec<u8>>>> = OnceLock::new();
    let key = (pass.to_string(), salt.to_vec(), iter, m == Mech::ScramSha1);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().expect("cache lock").get(&key) {
        return v.clone();
    }
    let v = match m {
        Mech::ScramSha1 => {
            pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(pass.as_bytes(), salt, iter).to_vec()
        }
        _ => pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(pass.as_bytes(), salt, iter).to_vec(),
    };
    cache.lock().expect("cache lock").insert(key, v.clone());
    v
}

/// One SCRAM exchange in progress.
pub struct Scram {
    mech: Mech,
    pass: String,
    first_bare: String,
    nonce: String,
    server_sig: Vec<u8>,
}

impl Scram {
    /// Start: returns the state and the base64 client-first message.
    pub fn start(mech: Mech, user: &str, pass: &str) -> (Scram, String) {
        let raw: [u8; 18] = rand::rng().random();
        let nonce = B64.encode(raw);
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={user},r={nonce}");
        let msg = B64.encode(format!("n,,{first_bare}"));
        let s = Scram {
            mech,
            pass: pass.to_string(),
            first_bare,
            nonce,
            server_sig: Vec::new(),
        };
        (s, msg)
    }

    /// Answer the server-first challenge (base64): returns the base64 client-final message.
    pub fn respond(&mut self, challenge_b64: &str) -> Result<String> {
        let sf = B64
            .decode(challenge_b64.trim())
            .context("challenge is not base64")?;
        let sf = String::from_utf8(sf).context("challenge is not UTF-8")?;
        let (mut r, mut s, mut i) = (None, None, None);
        for part in sf.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => s = Some(v),
                Some(("i=", v)) => i = Some(v),
                _ => {}
            }
        }
        let r = r.ok_or_else(|| anyhow!("no nonce in {sf}"))?;
        if !r.starts_with(&self.nonce) {
            bail!("server nonce does not extend ours");
        }
        let salt = B64.decode(s.ok_or_else(|| anyhow!("no salt in {sf}"))?)?;
        let iter: u32 = i.ok_or_else(|| anyhow!("no iteration count"))?.parse()?;
        if !(1..=1_000_000).contains(&iter) {
            bail!("iteration count {iter} out of range");
        }
        let salted = salted_password(self.mech, &self.pass, &salt, iter);
        let client_key = hmac(self.mech, &salted, b"Client Key");
        let stored_key = hash(self.mech, &client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_msg = format!("{},{sf},{without_proof}", self.first_bare);
        let client_sig = hmac(self.mech, &stored_key, auth_msg.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_sig)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(self.mech, &salted, b"Server Key");
        self.server_sig = hmac(self.mech, &server_key, auth_msg.as_bytes());
        Ok(B64.encode(format!("{without_proof},p={}", B64.encode(proof))))
    }

    /// Check the server-final message (base64 `v=...`) that came with `<success>`.
    pub fn verify(&self, final_b64: &str) -> Result<()> {
        let f = String::from_utf8(B64.decode(final_b64.trim())?)?;
        let v = f
            .strip_prefix("v=")
            .ok_or_else(|| anyhow!("server final message {f:?}"))?;
        if B64.decode(v)? != self.server_sig {
            bail!("server signature mismatch");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 section 5 example (SCRAM-SHA-1, user "user", password "pencil").
    #[test]
    fn rfc5802_vector() {
        let (mut s, _) = Scram::start(Mech::ScramSha1, "user", "pencil");
        s.nonce = "fyko+d2lbbFgONRv9qkxdawL".into();
        s.first_bare = "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into();
        let sf = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let out = s.respond(&B64.encode(sf)).unwrap();
        assert_eq!(
            String::from_utf8(B64.decode(out).unwrap()).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        s.verify(&B64.encode("v=rmF9pqV8S7suAoZWja4dJRkFsKQ="))
            .unwrap();
    }

    /// RFC 7677 section 3 example (SCRAM-SHA-256).
    #[test]
    fn rfc7677_vector() {
        let (mut s, _) = Scram::start(Mech::ScramSha256, "user", "pencil");
        s.nonce = "rOprNGfwEbeRWgbNEkqO".into();
        s.first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let out = s.respond(&B64.encode(sf)).unwrap();
        assert_eq!(
            String::from_utf8(B64.decode(out).unwrap()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify(&B64.encode("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
            .unwrap();
    }
}
