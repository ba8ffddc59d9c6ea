//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
//!
//! Only offer PLAIN over TLS (RFC 4616 §4, RFC 6120 §6.4.1); check the password
//! with [`super::StoredCredentials::verify_plain`].

use super::{SaslFailure, saslprep};
use std::fmt;

/// The parsed PLAIN message.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Requested authorization identity, as sent (not prepared); `None` when empty.
    /// The caller rejects one that is not the user's own bare JID with
    /// `InvalidAuthzid`.
    pub authzid: Option<String>,
    /// Authentication identity (username), SASLprep'd; never empty.
    pub authcid: String,
    /// Password, SASLprep'd (or raw if SASLprep rejects it, matching how
    /// [`super::ScramCredentials::derive`] treats such passwords); never empty.
    pub password: String,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// PLAIN: parse "authzid\0authcid\0password" (RFC 4616), SASLprep, reject empty
/// authcid/password, a wrong number of NULs or invalid UTF-8 with
/// `MalformedRequest`. An authcid that SASLprep rejects is also `MalformedRequest`.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslFailure> {
    const MALFORMED: SaslFailure = SaslFailure::MalformedRequest;
    let s = std::str::from_utf8(msg).map_err(|_| MALFORMED)?;
    let mut parts = s.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(MALFORMED);
    }
    let authcid = saslprep(authcid)?.into_owned();
    let password = match saslprep(password) {
        Ok(p) => p.into_owned(),
        Err(_) => password.to_owned(),
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(MALFORMED);
    }
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(msg: &[u8]) -> PlainCredentials {
        parse_plain(msg).unwrap_or_else(|e| panic!("{msg:?}: {e}"))
    }

    #[test]
    fn valid() {
        let c = ok(b"\0user\0pencil");
        assert_eq!(c.authzid, None);
        assert_eq!(c.authcid, "user");
        assert_eq!(c.password, "pencil");

        let c = ok(b"juliet@example.com\0juliet\0r0m30myr0m30");
        assert_eq!(c.authzid.as_deref(), Some("juliet@example.com"));
        assert_eq!(c.authcid, "juliet");
        assert_eq!(c.password, "r0m30myr0m30");

        // Spaces and '=' / ',' are ordinary characters in PLAIN.
        let c = ok(b"\0a,b=c\0 pass word ");
        assert_eq!(c.authcid, "a,b=c");
        assert_eq!(c.password, " pass word ");
    }

    #[test]
    fn saslprep_applied() {
        // RFC 4013 §3: soft hyphen mapped to nothing, U+2168 NFKC to "IX",
        // U+00A0 to space.
        let c = ok("\0I\u{AD}X\0\u{2168}".as_bytes());
        assert_eq!(c.authcid, "IX");
        assert_eq!(c.password, "IX");
        let c = ok("\0us\u{E9}r\0pass\u{A0}word".as_bytes());
        assert_eq!(c.authcid, "us\u{E9}r");
        assert_eq!(c.password, "pass word");
        // authzid is not prepared.
        let c = ok("I\u{AD}X\0u\0p".as_bytes());
        assert_eq!(c.authzid.as_deref(), Some("I\u{AD}X"));
        // Emoji (unassigned in Unicode 3.2) allowed: query-string SASLprep.
        let c = ok("\0u\0\u{1F600}".as_bytes());
        assert_eq!(c.password, "\u{1F600}");
        // Password SASLprep rejects: kept raw (consistent with derive).
        let c = ok(b"\0u\0tab\there");
        assert_eq!(c.password, "tab\there");
    }

    #[test]
    fn malformed() {
        let bad: &[&[u8]] = &[
            b"",
            b"\0",
            b"\0\0",
            b"\0\0pencil",
            b"\0user\0",
            b"authz\0\0pencil",
            b"user\0pencil",
            b"userpencil",
            b"\0user\0pencil\0",
            b"\0user\0pen\0cil",
            b"a\0b\0c\0d",
            b"\0\0\0",
            b"\0us\xffer\0pencil",
            b"\0user\0pen\xc3",
            b"\xff\0user\0pencil",
            b"\0us\x07er\0pencil",     // control char in authcid
            b"\0\xc2\xad\0pencil",     // authcid prepares to empty
            b"\0user\0\xc2\xad",       // password prepares to empty
            b"\0\xee\x80\x80\0pencil", // private use in authcid
        ];
        for msg in bad {
            assert_eq!(
                parse_plain(msg),
                Err(SaslFailure::MalformedRequest),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn debug_redacts_password() {
        let c = ok(b"\0user\0hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("user"));
        assert!(!d.contains("hunter2"));
    }
}
