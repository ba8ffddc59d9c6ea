//! XEP-0215 External Service Discovery: the STUN/TURN servers of
//! `[[external_services]]`, announced by the server to its users. A
//! restricted service with a `secret` gets time-limited credentials of the
//! TURN REST scheme that coturn's `use-auth-secret` checks: username
//! `<expiry unix time>:<bare JID>`, password
//! `base64(HMAC-SHA1(secret, username))`, and the `expires` attribute.

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module};
use crate::config::ExternalService;
use crate::stanza::Condition;
use crate::xml::Element;
use base64::Engine as _;
use futures::FutureExt;
use hmac::{KeyInit, Mac};

pub const NS_EXTDISCO: &str = "urn:xmpp:extdisco:2";

pub static MODULE: Module = Module {
    name: "extdisco",
    spec: "XEP-0215",
    features: &[NS_EXTDISCO],
    iq: &[
        IqHandler {
            ns: NS_EXTDISCO,
            name: "services",
            get: Some(services),
            set: None,
            no_account: false,
        },
        IqHandler {
            ns: NS_EXTDISCO,
            name: "credentials",
            get: Some(credentials),
            set: None,
            no_account: false,
        },
    ],
    config_section: Some("external_services"),
    ..Module::EMPTY
};

fn to_server(ctx: &IqCtx<'_>) -> Result<(), Condition> {
    match ctx.target {
        IqTarget::Server(_) | IqTarget::Own => Ok(()),
        _ => Err(Condition::ServiceUnavailable),
    }
}

/// TURN REST credentials for `user`, valid until `expires` (unix seconds).
pub fn rest_credentials(secret: &str, user: &str, expires: i64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("any key size");
    m.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    (username, password)
}

/// A `<service/>` element for `s`, with credentials for `user` when it is
/// restricted.
fn service_element(s: &ExternalService, user: &str) -> Element {
    let mut el = Element::new("service", NS_EXTDISCO)
        .attr("host", s.host.clone())
        .attr("type", s.kind.clone());
    if let Some(p) = s.port {
        el.set_attr("port", p.to_string());
    }
    if let Some(t) = &s.transport {
        el.set_attr("transport", t.clone());
    }
    if let Some(n) = &s.name {
        el.set_attr("name", n.clone());
    }
    if s.restricted {
        el.set_attr("restricted", "1");
        if let Some(secret) = &s.secret {
            let expires =
                chrono::Utc::now().timestamp() + i64::try_from(s.ttl_secs).unwrap_or(i64::MAX / 4);
            let (u, p) = rest_credentials(secret, user, expires);
            el.set_attr("username", u);
            el.set_attr("password", p);
            if let Some(t) = chrono::DateTime::from_timestamp(expires, 0) {
                el.set_attr("expires", t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
        } else {
            if let Some(u) = &s.username {
                el.set_attr("username", u.clone());
            }
            if let Some(p) = &s.password {
                el.set_attr("password", p.clone());
            }
        }
    }
    el
}

/// `<services [type]/>` (XEP-0215 §3): every configured service, or those
/// of one type.
fn services<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        to_server(ctx)?;
        let kind = ctx.payload.get_attr("type");
        let mut out = Element::new("services", NS_EXTDISCO);
        if let Some(k) = kind {
            out.set_attr("type", k);
        }
        for s in &ctx.server.config.external_services {
            if kind.is_none_or(|k| k == s.kind) {
                out = out.child(service_element(s, ctx.origin.bare));
            }
        }
        Ok(out.into())
    }
    .boxed()
}

/// `<credentials><service host type [port]/></credentials>` (XEP-0215
/// §3.3): credentials for the services of that host and type (every port
/// unless one is named: several may match); `host` and `type` are
/// required (`bad-request`), and a service not configured is
/// `item-not-found`.
fn credentials<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        to_server(ctx)?;
        let Some(want) = ctx.payload.get_child("service", NS_EXTDISCO) else {
            return Err(Condition::BadRequest.into());
        };
        let (Some(host), Some(kind)) = (want.get_attr("host"), want.get_attr("type")) else {
            return Err(Condition::BadRequest.into());
        };
        let port = match want.get_attr("port").map(str::parse::<u16>) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => return Err(Condition::BadRequest.into()),
        };
        let mut out = Element::new("credentials", NS_EXTDISCO);
        for s in ctx.server.config.external_services.iter().filter(|s| {
            s.host.eq_ignore_ascii_case(host)
                && s.kind == kind
                && port.is_none_or(|p| s.port == Some(p))
        }) {
            out = out.child(service_element(s, ctx.origin.bare));
        }
        if out.elements().next().is_none() {
            return Err(Condition::ItemNotFound.into());
        }
        Ok(out.into())
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rest_credentials_match_coturn() {
        // coturn's use-auth-secret: password = base64(HMAC-SHA1(secret,
        // "expiry:user")); the expected value computed with Python's hmac.
        let (u, p) = super::rest_credentials("north", "a@b", 1_700_000_000);
        assert_eq!(u, "1700000000:a@b");
        assert_eq!(p, "uSNJwY+BhWt12+CIwwq4YiYgXyg=");
    }
}
