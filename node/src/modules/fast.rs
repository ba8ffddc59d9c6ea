//! XEP-0484 Fast Authentication Streamlining Tokens, with the
//! `HT-SHA-256-NONE` mechanism of draft-schmaus-kitten-sasl-ht: a client
//! that logged in with its password asks, inside SASL2, for a token, and
//! logs in with it in one round trip afterwards.
//!
//! Tokens are per account and per SASL2 user-agent id, in the replicated
//! store (`user_fast`), hashed: a token is 80 characters, longer than
//! SHA-256's 64-byte HMAC block, so HMAC keyed with the token is HMAC keyed
//! with its SHA-256 (RFC 2104 §2), which is all that is kept. Two slots
//! (§Implementation Notes): a new token waits in `new` until its first use
//! moves it to `current` (dropping the older one); issuing one replaces an
//! unused `new`. A token lives `TOKEN_LIFETIME`, and one used in the last
//! half of its life is rotated (a new one comes with `<success/>`).

use super::Module;
use crate::auth::SaslFailure;
use crate::server::Server;
use crate::storage::{FAST, FastToken, FastTokens};
use crate::xml::Element;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const NS_FAST: &str = "urn:xmpp:fast:0";
/// The one mechanism offered (no channel binding: see ARCHITECTURE on -PLUS).
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";
/// How long a token is valid.
pub const TOKEN_LIFETIME: u64 = 14 * 24 * 3600;

pub static MODULE: Module = Module {
    name: "fast",
    spec: "XEP-0484 v0.2 (HT-SHA-256-NONE)",
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

/// Verifies an `HT-SHA-256-NONE` initial response (`authcid NUL
/// HMAC(token, "Initiator")`); on success the authenticated account, the
/// server's `HMAC(token, "Responder")`, and whether to rotate.
pub async fn login(
    server: &Server,
    auth: &Element,
    data: &[u8],
    domain: &str,
    account: &mut Option<String>,
) -> Result<(jid::BareJid, Vec<u8>, Used), SaslFailure> {
    let Some(ua) = user_agent_id(auth) else {
        // §Business Rules: a FAST client always names itself.
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
    let matches = |t: &Option<FastToken>| {
        t.as_ref().and_then(|t| {
            let key = unb64(&t.hash)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
            mac.update(b"Initiator");
            // Constant time (XEP-0484 §Security Considerations).
            mac.verify_slice(proof).ok()?;
            Some(t.clone())
        })
    };
    let (token, was_new) = match (matches(&tokens.new), matches(&tokens.current)) {
        (Some(t), _) => (t, true),
        (None, Some(t)) => (t, false),
        (None, None) => return Err(SaslFailure::NotAuthorized),
    };
    // Bound to the mechanism it was issued for; expired: the client falls
    // back to its password (§Business Rules: credentials-expired).
    if token.mechanism != HT_SHA_256_NONE {
        return Err(SaslFailure::NotAuthorized);
    }
    if token.expiry <= now {
        return Err(SaslFailure::CredentialsExpired);
    }
    if acct.disabled {
        return Err(SaslFailure::AccountDisabled);
    }
    if was_new {
        // First use of the new token: the older one is invalid now.
        tokens.current = tokens.new.take();
        server
            .storage
            .put_fast_tokens(bare.as_str(), &client, &tokens)
            .await
            .map_err(|_| SaslFailure::TemporaryAuthFailure)?;
    }
    let key = unb64(&token.hash).ok_or(SaslFailure::TemporaryAuthFailure)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SaslFailure::TemporaryAuthFailure)?;
    mac.update(b"Responder");
    let responder = mac.finalize().into_bytes().to_vec();
    let rotate = token.expiry.saturating_sub(now) < TOKEN_LIFETIME / 2;
    Ok((bare, responder, Used { rotate }))
}

/// Issues a token for `ua` (into the `new` slot, replacing an unused one);
/// the `<token/>` for `<success/>`.
pub async fn issue(server: &Server, bare: &str, ua: &str) -> Option<String> {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 60];
    rand::rng().fill_bytes(&mut raw);
    // 80 characters: longer than the HMAC block (see the module's doc).
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let expiry = now() + TOKEN_LIFETIME;
    let client = client_key(ua);
    let mut tokens = server.storage.fast_tokens(bare, &client).ok()?;
    tokens.new = Some(FastToken {
        hash: b64(&Sha256::digest(token.as_bytes())),
        mechanism: HT_SHA_256_NONE.to_owned(),
        expiry,
    });
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

/// `<fast invalidate='true'/>`: the client's tokens are dropped.
pub async fn invalidate(server: &Server, bare: &str, ua: &str) {
    let client = client_key(ua);
    let none = FastTokens::default();
    if let Err(e) = server.storage.put_fast_tokens(bare, &client, &none).await {
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

    #[test]
    fn client_keys_hide_the_user_agent_id() {
        let k = client_key("d4565fa7-4d72-4749-b3d3-740edbf87770");
        assert!(!k.contains("d4565fa7"));
        assert_eq!(k, client_key("d4565fa7-4d72-4749-b3d3-740edbf87770"));
        assert_ne!(k, client_key("other"));
    }
}
