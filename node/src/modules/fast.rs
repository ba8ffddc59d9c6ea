//! XEP-0484 Fast Authentication Streamlining Tokens, with the
//! `HT-SHA-256-ENDP` and `HT-SHA-256-NONE` mechanisms of
//! draft-schmaus-kitten-sasl-ht: a client that logged in with its password
//! asks, inside SASL2, for a token, and logs in with it in one round trip
//! afterwards. `-ENDP` binds the proof to the TLS channel with RFC 5929's
//! `tls-server-end-point` (the hash of this server's certificate: all
//! rustls gives us, it exports no keying material from the connection
//! type the streams use), offered where the certificate defines one.
//!
//! Tokens are per account and per SASL2 user-agent id, in the replicated
//! store (`user_fast`), hashed: a token is 80 characters, longer than
//! SHA-256's 64-byte HMAC block, so HMAC keyed with the token is HMAC keyed
//! with its SHA-256 (RFC 2104 §2), which is all that is kept. Two slots
//! (§Implementation Notes): a new token waits in `new` until its first use
//! moves it to `current` (dropping the older one); issuing one replaces an
//! unused `new`. A token lives `TOKEN_LIFETIME`, and one used in the last
//! half of its life is rotated (a new one comes with `<success/>`). The
//! digests of tokens no longer trusted (invalidated, replaced) are kept
//! until they would have expired, so that using one fails with
//! `<credentials-expired/>` (§Server responsibilities) rather than
//! `<not-authorized/>`, and the client falls back to its password.

use super::Module;
use crate::auth::SaslFailure;
use crate::server::Server;
use crate::storage::{FAST, FastToken, FastTokens};
use crate::xml::Element;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const NS_FAST: &str = "urn:xmpp:fast:0";
/// Without channel binding.
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";
/// Bound to the TLS channel by `tls-server-end-point` (RFC 5929).
pub const HT_SHA_256_ENDP: &str = "HT-SHA-256-ENDP";
/// The mechanisms' `<fast/>` list inside SASL2's feature, with and without
/// a channel binding to offer (`modules::sasl2` has the latter).
pub const MECHANISMS_ENDP: &str =
    "<mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism>";
pub const MECHANISMS_NONE: &str = "<mechanism>HT-SHA-256-NONE</mechanism>";
/// Digests of tokens no longer trusted kept per client (the newest).
const REVOKED_KEPT: usize = 4;
/// How long a token is valid.
pub const TOKEN_LIFETIME: u64 = 14 * 24 * 3600;

pub static MODULE: Module = Module {
    name: "fast",
    spec: "XEP-0484 v0.2 (HT-SHA-256-ENDP, HT-SHA-256-NONE)",
    spaces: &[FAST],
    ..Module::EMPTY
};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Digests as stored: unpadded URL-safe base64.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// The record key of a client: its user-agent id, hashed.
pub fn client_key(ua_id: &str) -> String {
    b64(&Sha256::digest(ua_id.as_bytes()))
}

/// The SASL2 user-agent id of an `<authenticate/>`, if any.
pub fn user_agent_id(auth: &Element) -> Option<&str> {
    auth.get_child("user-agent", crate::stream::sasl::NS_SASL2)
        .and_then(|ua| ua.get_attr("id"))
        .filter(|id| !id.is_empty())
}

/// What a successful token login leaves to do after `<success/>`.
pub struct Used {
    /// Due for rotation: a new token goes with `<success/>`.
    pub rotate: bool,
}

/// Whether `m` is one of the token mechanisms.
pub fn is_mechanism(m: &str) -> bool {
    matches!(m, HT_SHA_256_NONE | HT_SHA_256_ENDP)
}

/// The channel binding a mechanism offered on this connection needs:
/// `Some(data)` (empty for `-NONE`), or `None` when it is not offered here.
pub fn binding<'a>(mechanism: &str, end_point: Option<&'a [u8]>) -> Option<&'a [u8]> {
    match mechanism {
        HT_SHA_256_NONE => Some(&[]),
        HT_SHA_256_ENDP => end_point,
        _ => None,
    }
}

/// `HMAC(token, label || channel binding)`, from the token's digest.
fn ht_mac(hash: &str, label: &[u8], cb: &[u8]) -> Option<Hmac<Sha256>> {
    let key = unb64(hash)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(label);
    mac.update(cb);
    Some(mac)
}

/// Verifies an `HT-SHA-256-*` initial response (`authcid NUL HMAC(token,
/// "Initiator" || cb)`, `cb` the channel binding of `mechanism`); on
/// success the authenticated account, the server's `HMAC(token,
/// "Responder" || cb)`, and whether to rotate.
pub async fn login(
    server: &Server,
    auth: &Element,
    (mechanism, cb): (&str, &[u8]),
    data: &[u8],
    domain: &str,
    account: &mut Option<String>,
) -> Result<(jid::BareJid, Vec<u8>, Used), SaslFailure> {
    // §Client authenticates using FAST: a client providing a token says so
    // with `<fast/>`; §Business Rules: a FAST client always names itself.
    let Some(ua) = user_agent_id(auth).filter(|_| auth.has_child("fast", NS_FAST)) else {
        return Err(SaslFailure::MalformedRequest);
    };
    let nul = data
        .iter()
        .position(|b| *b == 0)
        .ok_or(SaslFailure::MalformedRequest)?;
    let (user, proof) = (&data[..nul], &data[nul + 1..]);
    let user = std::str::from_utf8(user).map_err(|_| SaslFailure::MalformedRequest)?;
    if user.is_empty() || user.contains('@') || proof.len() != 32 {
        return Err(SaslFailure::NotAuthorized);
    }
    let (bare, stored) = crate::stream::sasl::locked_or_read(server, user, domain, account)?;
    let Some(acct) = stored else {
        return Err(SaslFailure::NotAuthorized);
    };
    let client = client_key(ua);
    let mut tokens = server
        .storage
        .fast_tokens(bare.as_str(), &client)
        .map_err(|_| SaslFailure::TemporaryAuthFailure)?;
    let now = now();
    // Constant time (XEP-0484 §Security Considerations).
    let proves = |t: &FastToken| {
        ht_mac(&t.hash, b"Initiator", cb).is_some_and(|m| m.verify_slice(proof).is_ok())
    };
    let (token, was_new) = match (&tokens.new, &tokens.current) {
        (Some(t), _) if proves(t) => (t.clone(), true),
        (_, Some(t)) if proves(t) => (t.clone(), false),
        // No longer trusted: the client falls back to its password.
        _ if tokens.revoked.iter().any(proves) => return Err(SaslFailure::CredentialsExpired),
        _ => return Err(SaslFailure::NotAuthorized),
    };
    // Bound to the mechanism it was issued for.
    if token.mechanism != mechanism {
        return Err(SaslFailure::NotAuthorized);
    }
    if token.expiry <= now {
        return Err(SaslFailure::CredentialsExpired);
    }
    if acct.disabled {
        return Err(SaslFailure::AccountDisabled);
    }
    if was_new {
        // First use of the new token: the older one is not trusted now
        // (§Server initiates token rotation).
        let old = tokens.current.take();
        tokens.current = tokens.new.take();
        tokens.revoke(old, now);
        server
            .storage
            .put_fast_tokens(bare.as_str(), &client, &tokens)
            .await
            .map_err(|_| SaslFailure::TemporaryAuthFailure)?;
    }
    let responder = ht_mac(&token.hash, b"Responder", cb)
        .ok_or(SaslFailure::TemporaryAuthFailure)?
        .finalize()
        .into_bytes()
        .to_vec();
    let rotate = token.expiry.saturating_sub(now) < TOKEN_LIFETIME / 2;
    Ok((bare, responder, Used { rotate }))
}

impl FastTokens {
    /// Keeps `old`'s digest as no longer trusted, until it would have
    /// expired; drops the expired ones and all but the newest few.
    fn revoke(&mut self, old: Option<FastToken>, now: u64) {
        self.revoked.extend(old);
        self.revoked.retain(|t| t.expiry > now);
        self.revoked.sort_by_key(|t| std::cmp::Reverse(t.expiry));
        self.revoked.truncate(REVOKED_KEPT);
    }
}

/// Issues a token for `ua` and `mechanism` (into the `new` slot, replacing
/// an unused one); the `<token/>` for `<success/>`.
pub async fn issue(server: &Server, bare: &str, ua: &str, mechanism: &str) -> Option<String> {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 60];
    rand::rng().fill_bytes(&mut raw);
    // 80 characters: longer than the HMAC block (see the module's doc).
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let now = now();
    let expiry = now + TOKEN_LIFETIME;
    let client = client_key(ua);
    let mut tokens = server.storage.fast_tokens(bare, &client).ok()?;
    let unused = tokens.new.replace(FastToken {
        hash: b64(&Sha256::digest(token.as_bytes())),
        mechanism: mechanism.to_owned(),
        expiry,
    });
    tokens.revoke(unused, now);
    if let Err(e) = server.storage.put_fast_tokens(bare, &client, &tokens).await {
        tracing::warn!(error = %e, "could not store a FAST token");
        return None;
    }
    metrics::counter!("starling_fast_tokens_issued_total").increment(1);
    let expiry = chrono::DateTime::from_timestamp(expiry as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ");
    Some(format!(
        "<token xmlns='{NS_FAST}' expiry='{expiry}' token='{token}'/>"
    ))
}

/// `<fast invalidate='true'/>`: the client's tokens are no longer trusted.
pub async fn invalidate(server: &Server, bare: &str, ua: &str) {
    let client = client_key(ua);
    let Ok(mut tokens) = server.storage.fast_tokens(bare, &client) else {
        return;
    };
    let now = now();
    let (current, new) = (tokens.current.take(), tokens.new.take());
    tokens.revoke(current, now);
    tokens.revoke(new, now);
    if let Err(e) = server.storage.put_fast_tokens(bare, &client, &tokens).await {
        tracing::warn!(error = %e, "could not invalidate a FAST token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lets the server keep only the digest: HMAC keyed with a token
    /// longer than the block is HMAC keyed with the token's SHA-256.
    #[test]
    fn hmac_with_the_digest_equals_hmac_with_the_token() {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 60]);
        assert_eq!(token.len(), 80);
        let mac = |key: &[u8]| {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(b"Initiator");
            m.finalize().into_bytes()
        };
        let digest = unb64(&b64(&Sha256::digest(token.as_bytes()))).unwrap();
        assert_eq!(mac(token.as_bytes()), mac(&digest));
        // Not so for a key within the block: tokens must stay long.
        assert_ne!(mac(b"short"), mac(&Sha256::digest(b"short")));
    }

    /// Replaced and invalidated tokens are remembered until they would
    /// have expired, the newest few.
    #[test]
    fn revoked_tokens_are_kept_until_they_expire() {
        let t = |n: u64| FastToken {
            hash: format!("h{n}"),
            mechanism: HT_SHA_256_NONE.into(),
            expiry: n,
        };
        let mut tokens = FastTokens::default();
        tokens.revoke(None, 100);
        assert!(tokens.revoked.is_empty());
        for n in [90, 150, 160, 170, 180, 190] {
            tokens.revoke(Some(t(n)), 100);
        }
        let kept: Vec<u64> = tokens.revoked.iter().map(|t| t.expiry).collect();
        assert_eq!(kept, [190, 180, 170, 160]);
        tokens.revoke(None, 175);
        let kept: Vec<u64> = tokens.revoked.iter().map(|t| t.expiry).collect();
        assert_eq!(kept, [190, 180]);
    }

    /// `HMAC(token, label || binding)` from the digest, as the client
    /// computes it from the token.
    #[test]
    fn proofs_cover_the_channel_binding() {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([9u8; 60]);
        let hash = b64(&Sha256::digest(token.as_bytes()));
        let client = |label: &[u8], cb: &[u8]| {
            let mut m = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
            m.update(label);
            m.update(cb);
            m.finalize().into_bytes()
        };
        let cb = [1u8; 32];
        let ours = ht_mac(&hash, b"Initiator", &cb)
            .unwrap()
            .finalize()
            .into_bytes();
        assert_eq!(ours, client(b"Initiator", &cb));
        assert_ne!(ours, client(b"Initiator", &[]));
        assert_eq!(binding(HT_SHA_256_ENDP, None), None);
        assert_eq!(binding(HT_SHA_256_ENDP, Some(&cb)), Some(&cb[..]));
        assert_eq!(binding(HT_SHA_256_NONE, None), Some(&[][..]));
        assert_eq!(binding("HT-SHA-256-EXPR", Some(&cb)), None);
    }

    #[test]
    fn client_keys_hide_the_user_agent_id() {
        let k = client_key("d4565fa7-4d72-4749-b3d3-740edbf87770");
        assert!(!k.contains("d4565fa7"));
        assert_eq!(k, client_key("d4565fa7-4d72-4749-b3d3-740edbf87770"));
        assert_ne!(k, client_key("other"));
    }
}
