//! SASL authentication mechanisms (RFC 6120 §6): SCRAM-SHA-1, SCRAM-SHA-256,
//! SCRAM-SHA-512 (RFC 5802, RFC 7677) and PLAIN (RFC 4616).
//!
//! EXTERNAL with client certificates (XEP-0178) is in [`external`].
//!
//! This module is pure: no I/O, no account storage. The stream layer base64-decodes
//! the `<auth/>`/`<response/>` payloads with [`decode_b64`], feeds the bytes to the
//! mechanism and maps a [`SaslFailure`] to the `<failure/>` condition element
//! returned by [`SaslFailure::condition`].

pub mod external;
pub mod plain;
pub mod scram;
pub mod scram_client;

pub use plain::{PlainCredentials, parse_plain};
pub use scram::{ScramCredentials, ScramHash, ScramServer, ScramStep, StoredCredentials};
pub use scram_client::{ScramClient, ScramClientError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::borrow::Cow;
use std::fmt;

/// SASL failure conditions of RFC 6120 §6.5 that the mechanisms can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// The local name of the RFC 6120 §6.5 condition element, e.g. `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

impl fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.condition())
    }
}

impl std::error::Error for SaslFailure {}

/// Decode the base64 character data of `<auth/>`, `<response/>` (RFC 6120 §6.4.2).
///
/// A single `"="` is the zero-length response and decodes to an empty vector. An
/// empty string also decodes to an empty vector: for `<auth/>` the caller must
/// itself distinguish "no initial response" (empty element) from `"="`.
/// XML whitespace (space, tab, CR, LF) is ignored; anything else that is not
/// canonical padded base64 (RFC 4648 §4) yields [`SaslFailure::IncorrectEncoding`].
pub fn decode_b64(s: &str) -> Result<Vec<u8>, SaslFailure> {
    let cleaned: Cow<'_, str> = if s.bytes().any(is_xml_whitespace) {
        Cow::Owned(s.chars().filter(|c| !c.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(s)
    };
    if cleaned.is_empty() || cleaned == "=" {
        return Ok(Vec::new());
    }
    STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|_| SaslFailure::IncorrectEncoding)
}

/// Encode challenge / success data as standard padded base64. Empty data gives an
/// empty string; the caller decides whether to send `"="` or an empty element.
pub fn encode_b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

fn is_xml_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// SASLprep (RFC 4013) applied as a *query* string (RFC 5802 §5.1, RFC 4616):
/// unassigned code points are allowed (so post-Unicode-3.2 characters such as most
/// emoji pass), prohibited output and bad bidirectional text are rejected with
/// [`SaslFailure::MalformedRequest`]. The result may be empty (e.g. input made only
/// of characters "mapped to nothing"); callers check that themselves.
///
/// Use this to validate new passwords at registration time: a password for which
/// this fails is still usable (SCRAM and PLAIN then both fall back to the raw
/// UTF-8 bytes, consistently), but clients may prepare it differently.
pub fn saslprep(s: &str) -> Result<Cow<'_, str>, SaslFailure> {
    use stringprep::tables;
    use unicode_normalization::UnicodeNormalization;

    // Fast path: printable ASCII is left unchanged by SASLprep.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(Cow::Borrowed(s));
    }
    // RFC 4013 §2.1 mapping, §2.2 NFKC.
    let normalized: String = s
        .chars()
        .map(|c| {
            if tables::non_ascii_space_character(c) {
                ' '
            } else {
                c
            }
        })
        .filter(|&c| !tables::commonly_mapped_to_nothing(c))
        .nfkc()
        .collect();
    // §2.3 prohibited output.
    let prohibited = normalized.chars().any(|c| {
        tables::non_ascii_space_character(c)
            || tables::ascii_control_character(c)
            || tables::non_ascii_control_character(c)
            || tables::private_use(c)
            || tables::non_character_code_point(c)
            || tables::surrogate_code(c)
            || tables::inappropriate_for_plain_text(c)
            || tables::inappropriate_for_canonical_representation(c)
            || tables::change_display_properties_or_deprecated(c)
            || tables::tagging_character(c)
    });
    if prohibited {
        return Err(SaslFailure::MalformedRequest);
    }
    // §2.4 bidirectional characters (RFC 3454 §6).
    if normalized.chars().any(tables::bidi_r_or_al) {
        let first = normalized.chars().next().is_some_and(tables::bidi_r_or_al);
        let last = normalized
            .chars()
            .next_back()
            .is_some_and(tables::bidi_r_or_al);
        if normalized.chars().any(tables::bidi_l) || !first || !last {
            return Err(SaslFailure::MalformedRequest);
        }
    }
    Ok(Cow::Owned(normalized))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        use SaslFailure::*;
        let all = [
            (Aborted, "aborted"),
            (AccountDisabled, "account-disabled"),
            (CredentialsExpired, "credentials-expired"),
            (EncryptionRequired, "encryption-required"),
            (IncorrectEncoding, "incorrect-encoding"),
            (InvalidAuthzid, "invalid-authzid"),
            (InvalidMechanism, "invalid-mechanism"),
            (MalformedRequest, "malformed-request"),
            (MechanismTooWeak, "mechanism-too-weak"),
            (NotAuthorized, "not-authorized"),
            (TemporaryAuthFailure, "temporary-auth-failure"),
        ];
        for (f, s) in all {
            assert_eq!(f.condition(), s);
            assert_eq!(f.to_string(), s);
        }
    }

    #[test]
    fn b64() {
        assert_eq!(decode_b64("="), Ok(vec![]));
        assert_eq!(decode_b64(""), Ok(vec![]));
        assert_eq!(decode_b64("biws"), Ok(b"n,,".to_vec()));
        assert_eq!(decode_b64(" bi\r\nws\t"), Ok(b"n,,".to_vec()));
        assert_eq!(decode_b64("AA=="), Ok(vec![0]));
        for bad in [
            "==", "b!ws", "biw", "AA", "AB==", "AA=", "A===", "biws=", "b=ws",
        ] {
            assert_eq!(
                decode_b64(bad),
                Err(SaslFailure::IncorrectEncoding),
                "{bad}"
            );
        }
        assert_eq!(encode_b64(b"n,,"), "biws");
        assert_eq!(encode_b64(b""), "");
    }

    #[test]
    fn saslprep_query() {
        // RFC 4013 §3 examples.
        assert_eq!(saslprep("I\u{AD}X").unwrap(), "IX");
        assert_eq!(saslprep("user").unwrap(), "user");
        assert_eq!(saslprep("USER").unwrap(), "USER");
        assert_eq!(saslprep("\u{AA}").unwrap(), "a");
        assert_eq!(saslprep("\u{2168}").unwrap(), "IX");
        assert!(saslprep("\u{7}").is_err());
        assert!(saslprep("\u{627}1").is_err());
        // Non-ASCII space maps to ASCII space.
        assert_eq!(saslprep("a\u{A0}b").unwrap(), "a b");
        // Unassigned in Unicode 3.2 (emoji): allowed in query mode.
        assert_eq!(saslprep("pw\u{1F600}").unwrap(), "pw\u{1F600}");
        assert!(saslprep("a\u{E000}").is_err()); // private use
        assert_eq!(saslprep("\u{AD}").unwrap(), "");
    }
}
