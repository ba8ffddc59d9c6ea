//! The SASL exchange of RFC 6120 §6 over an XML stream: SCRAM-SHA-512,
//! -256, -1 and PLAIN (PLAIN is reached only over TLS, since the plain
//! phase offers nothing but STARTTLS), and EXTERNAL for a client
//! certificate (XEP-0178) where `[c2s] client_ca_file` is set. Failed attempts are delayed and
//! counted per account and per client address.

use super::xmlstream::XmlStream;
use super::xmlstream::read_failed;
use crate::auth::scram::{ScramHash, ScramServer, ScramStep};
use crate::auth::{SaslFailure, decode_b64, encode_b64, plain::parse_plain};
use crate::modules::fast;
use crate::net::transport::Transport;
use crate::server::Server;
use crate::stanza::NS_SASL;
use crate::stanza::StreamCondition;
use crate::xml::{Element, StreamEvent};
use tokio::time::Instant;

/// Offered mechanisms, strongest first.
pub const MECHANISMS: [&str; 4] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"];

/// Which SASL profile an exchange speaks: RFC 6120's, or XEP-0388's
/// (SASL2: `<authenticate/>`, the initial response in its own element,
/// `<success/>` composed by the caller with what was done inline).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Legacy,
    Sasl2,
}

impl Profile {
    fn ns(self) -> &'static str {
        match self {
            Profile::Legacy => NS_SASL,
            Profile::Sasl2 => NS_SASL2,
        }
    }
}

/// How the client is waited for, and in which profile.
#[derive(Clone, Copy)]
struct Turn {
    deadline: Instant,
    profile: Profile,
}

/// XEP-0388's namespace.
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";

pub enum SaslOutcome {
    /// Authenticated. With the legacy profile `<success/>` was sent; with
    /// SASL2 the caller sends it, with this additional data (the SCRAM
    /// server-final) in it.
    /// The last field: logged in with a XEP-0484 token due for rotation.
    Success(jid::BareJid, Option<Vec<u8>>, bool),
    /// A `<failure/>` was sent; the client may try again.
    Failure,
    /// The stream was closed.
    StreamEnded,
}

/// What the client sent during an exchange.
enum Reply {
    Data(Vec<u8>),
    Abort,
}

/// What an exchange is about besides the client's element.
pub struct Exchange<'a> {
    /// The stream's domain.
    pub domain: &'a str,
    /// The client's address (failures are throttled by it).
    pub ip: &'a str,
    pub deadline: Instant,
    pub profile: Profile,
    /// The accounts the client's certificate names, if any (XEP-0178):
    /// EXTERNAL was offered for them.
    pub external: &'a [jid::BareJid],
    /// The connection's `tls-server-end-point`, when XEP-0484's `-ENDP`
    /// was offered.
    pub end_point: Option<&'a [u8]>,
}

/// Runs one exchange that starts with `auth`.
pub async fn authenticate<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
    auth: &Element,
    exchange: Exchange<'_>,
) -> SaslOutcome {
    let Exchange {
        domain,
        ip,
        deadline,
        profile,
        external,
        end_point,
    } = exchange;
    let mechanism = auth.get_attr("mechanism").unwrap_or("");
    if profile == Profile::Sasl2 {
        // Whitespace before `<authenticate/>` is fine; from here on none.
        xs.forget_whitespace();
    }
    let mut account: Option<String> = None;
    let turn = Turn { deadline, profile };
    // A node cut off from its cluster's majority cannot commit: it takes
    // no new logins until it can (clients retry, or go elsewhere).
    let healthy = server.storage.store.is_healthy();
    if !healthy {
        tracing::warn!("refusing a login: this node cannot commit to the cluster");
    }
    let mut rotate = false;
    // A XEP-0484 token mechanism offered here: its channel binding.
    let token_binding = match profile {
        Profile::Sasl2 => fast::binding(mechanism, end_point),
        Profile::Legacy => None,
    };
    let result = match mechanism {
        _ if !healthy => Err(SaslFailure::TemporaryAuthFailure),
        // XEP-0484: offered inside SASL2's feature only, one round trip.
        m if token_binding.is_some() => {
            let cb = token_binding.unwrap_or_default();
            match initial_response(auth, profile) {
                Ok(Some(data)) => fast::login(server, auth, (m, cb), &data, domain, &mut account)
                    .await
                    .map(|(bare, responder, used)| {
                        rotate = used.rotate;
                        Some((bare, Some(responder)))
                    }),
                Ok(None) => Err(SaslFailure::MalformedRequest),
                Err(e) => Err(e),
            }
        }
        "EXTERNAL" if !external.is_empty() => {
            certificate(server, xs, auth, external, turn, &mut account).await
        }
        "PLAIN" => plain(server, xs, auth, domain, turn, &mut account).await,
        m => match ScramHash::from_mechanism(m) {
            Some(h) => scram(server, xs, auth, h, domain, turn, &mut account).await,
            None => Err(SaslFailure::InvalidMechanism),
        },
    };
    match result {
        Ok(Some((bare, additional))) if profile == Profile::Sasl2 => {
            metrics::counter!("starling_auth_success_total", "mechanism" => mechanism_label(mechanism))
                .increment(1);
            SaslOutcome::Success(bare, additional, rotate)
        }
        Ok(Some((bare, additional))) => {
            let msg = match additional {
                Some(data) => format!("<success xmlns='{NS_SASL}'>{}</success>", encode_b64(&data)),
                None => format!("<success xmlns='{NS_SASL}'/>"),
            };
            if xs.send_raw(&msg).await.is_err() {
                return SaslOutcome::StreamEnded;
            }
            metrics::counter!("starling_auth_success_total", "mechanism" => mechanism_label(mechanism))
                .increment(1);
            SaslOutcome::Success(bare, None, false)
        }
        Ok(None) => SaslOutcome::StreamEnded,
        Err(failure) => {
            metrics::counter!("starling_auth_failures_total", "mechanism" => mechanism_label(mechanism))
                .increment(1);
            if matches!(
                failure,
                SaslFailure::NotAuthorized | SaslFailure::InvalidAuthzid
            ) {
                server.throttle.record_failure(ip, account.as_deref());
            }
            if failure != SaslFailure::Aborted {
                // Slow down guessing (RFC 6120 §13.8 on dictionary attacks),
                // more so for an address that keeps failing.
                tokio::time::sleep(server.throttle.failure_delay(ip, account.as_deref())).await;
            }
            let msg = match profile {
                Profile::Legacy => format!(
                    "<failure xmlns='{NS_SASL}'><{}/></failure>",
                    failure.condition()
                ),
                // XEP-0388 §Failure: RFC 6120's condition, in its namespace.
                Profile::Sasl2 => format!(
                    "<failure xmlns='{NS_SASL2}'><{} xmlns='{NS_SASL}'/></failure>",
                    failure.condition()
                ),
            };
            if xs.send_raw(&msg).await.is_err() {
                return SaslOutcome::StreamEnded;
            }
            SaslOutcome::Failure
        }
    }
}

fn mechanism_label(m: &str) -> &'static str {
    for ht in [fast::HT_SHA_256_NONE, fast::HT_SHA_256_ENDP] {
        if m == ht {
            return ht;
        }
    }
    if m == "EXTERNAL" {
        return "EXTERNAL";
    }
    MECHANISMS
        .iter()
        .find(|x| **x == m)
        .copied()
        .unwrap_or("other")
}

/// The payload of `<auth>`; `None` when it carried none (the client waits
/// for an empty challenge), per RFC 6120 §6.4.2. With SASL2 it is the
/// `<initial-response/>` child, absent when there is none (XEP-0388).
fn initial_response(auth: &Element, profile: Profile) -> Result<Option<Vec<u8>>, SaslFailure> {
    if profile == Profile::Sasl2 {
        return match auth.get_child("initial-response", NS_SASL2) {
            None => Ok(None),
            Some(el) => decode_b64(&el.text_content()).map(Some),
        };
    }
    let text = auth.text_content();
    if text.trim().is_empty() {
        return Ok(None);
    }
    decode_b64(&text).map(Some)
}

/// The client's first message: the initial response, or else its
/// response to an empty challenge. `None`: the stream ended.
async fn first_message<S: Transport>(
    xs: &mut XmlStream<S>,
    auth: &Element,
    turn: Turn,
) -> Result<Option<Vec<u8>>, SaslFailure> {
    if let Some(data) = initial_response(auth, turn.profile)? {
        return Ok(Some(data));
    }
    match challenge(xs, &[], turn).await? {
        Some(Reply::Data(d)) => Ok(Some(d)),
        Some(Reply::Abort) => Err(SaslFailure::Aborted),
        None => Ok(None),
    }
}

/// Sends a challenge and waits for the response (or abort).
async fn challenge<S: Transport>(
    xs: &mut XmlStream<S>,
    data: &[u8],
    turn: Turn,
) -> Result<Option<Reply>, SaslFailure> {
    let Turn { deadline, profile } = turn;
    let ns = profile.ns();
    let msg = if data.is_empty() {
        format!("<challenge xmlns='{ns}'/>")
    } else {
        format!("<challenge xmlns='{ns}'>{}</challenge>", encode_b64(data))
    };
    if xs.send_raw(&msg).await.is_err() {
        return Ok(None);
    }
    let next = match profile {
        Profile::Legacy => xs.next(Some(deadline)).await,
        Profile::Sasl2 => xs.next_unspaced(Some(deadline)).await,
    };
    match next {
        Ok(StreamEvent::Stanza(el)) if el.is("response", ns) => {
            let text = el.text_content();
            let data = if text.trim().is_empty() {
                Vec::new()
            } else {
                decode_b64(&text)?
            };
            Ok(Some(Reply::Data(data)))
        }
        Ok(StreamEvent::Stanza(el)) if el.is("abort", ns) => Ok(Some(Reply::Abort)),
        // XEP-0388 §During Authentication: anything else disconnects.
        Ok(StreamEvent::Stanza(_)) if profile == Profile::Sasl2 => {
            xs.fail(StreamCondition::PolicyViolation, None).await;
            Ok(None)
        }
        Ok(StreamEvent::Stanza(_)) => Err(SaslFailure::MalformedRequest),
        Ok(StreamEvent::End) => {
            xs.close().await;
            Ok(None)
        }
        Ok(StreamEvent::Header(_)) => {
            xs.fail(StreamCondition::BadFormat, None).await;
            Ok(None)
        }
        Err(e) => {
            read_failed(xs, e).await;
            Ok(None)
        }
    }
}

type Authenticated = Option<(jid::BareJid, Option<Vec<u8>>)>;

/// The account JID for a SASL username: the localpart at this domain.
fn account_jid(username: &str, domain: &str) -> Result<jid::BareJid, SaslFailure> {
    if username.contains('@') {
        return Err(SaslFailure::NotAuthorized);
    }
    jid::BareJid::new(&format!("{username}@{domain}")).map_err(|_| SaslFailure::NotAuthorized)
}

/// The account a SASL `username` names at `domain`, as stored: noted in
/// `account` first (throttling counts failures by it), refused for now
/// while that account is locked out.
pub(crate) fn locked_or_read(
    server: &Server,
    username: &str,
    domain: &str,
    account: &mut Option<String>,
) -> Result<(jid::BareJid, Option<crate::storage::Account>), SaslFailure> {
    let bare = account_jid(username, domain)?;
    *account = Some(bare.to_string());
    if server.throttle.locked(account.as_deref()) {
        return Err(SaslFailure::TemporaryAuthFailure);
    }
    let stored = server
        .storage
        .account(bare.as_str())
        .map_err(|_| SaslFailure::TemporaryAuthFailure)?;
    Ok((bare, stored))
}

/// An authzid, if any, must name the authenticated account itself.
fn check_authzid(authzid: Option<&str>, bare: &jid::BareJid) -> Result<(), SaslFailure> {
    match authzid {
        None | Some("") => Ok(()),
        Some(z) => match jid::BareJid::new(z) {
            Ok(j) if &j == bare => Ok(()),
            _ => Err(SaslFailure::InvalidAuthzid),
        },
    }
}

async fn plain<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
    auth: &Element,
    domain: &str,
    turn: Turn,
    account: &mut Option<String>,
) -> Result<Authenticated, SaslFailure> {
    let Some(data) = first_message(xs, auth, turn).await? else {
        return Ok(None);
    };
    let creds = parse_plain(&data)?;
    let (bare, stored) = locked_or_read(server, &creds.authcid, domain, account)?;
    let password = creds.password.clone();
    let disabled = stored.as_ref().is_some_and(|a| a.disabled);
    // PBKDF2 is CPU work: keep it off the session threads.
    let ok = tokio::task::spawn_blocking(move || {
        stored.is_some_and(|a| a.credentials.verify_plain(&password))
    })
    .await
    .unwrap_or(false);
    if !ok {
        return Err(SaslFailure::NotAuthorized);
    }
    // Only once the password is right: a wrong one learns nothing.
    if disabled {
        return Err(SaslFailure::AccountDisabled);
    }
    check_authzid(creds.authzid.as_deref(), &bare)?;
    Ok(Some((bare, None)))
}

/// EXTERNAL (XEP-0178 §2): the payload is the authorization identity
/// (empty, or `=` on the wire, for none), which picks among the accounts
/// the certificate names; that account must exist and be enabled.
async fn certificate<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
    auth: &Element,
    named: &[jid::BareJid],
    turn: Turn,
    account: &mut Option<String>,
) -> Result<Authenticated, SaslFailure> {
    let Some(data) = first_message(xs, auth, turn).await? else {
        return Ok(None);
    };
    let authzid = std::str::from_utf8(&data).map_err(|_| SaslFailure::InvalidAuthzid)?;
    let bare = crate::auth::external::authorize(authzid, named)?;
    *account = Some(bare.to_string());
    if server.throttle.locked(account.as_deref()) {
        return Err(SaslFailure::TemporaryAuthFailure);
    }
    match server.storage.account(bare.as_str()) {
        Err(_) => Err(SaslFailure::TemporaryAuthFailure),
        Ok(None) => Err(SaslFailure::NotAuthorized),
        Ok(Some(a)) if a.disabled => Err(SaslFailure::AccountDisabled),
        Ok(Some(_)) => Ok(Some((bare, None))),
    }
}

async fn scram<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
    auth: &Element,
    hash: ScramHash,
    domain: &str,
    turn: Turn,
    account: &mut Option<String>,
) -> Result<Authenticated, SaslFailure> {
    let Some(first) = first_message(xs, auth, turn).await? else {
        return Ok(None);
    };
    let mut scram = ScramServer::with_secret(hash, &server.scram_secret)
        .fake_iterations(server.config.auth.scram_iterations);
    let username = scram.client_first(&first)?;
    let bare = account_jid(&username, domain);
    if let Ok(b) = &bare {
        *account = Some(b.to_string());
    }
    if server.throttle.locked(account.as_deref()) {
        return Err(SaslFailure::TemporaryAuthFailure);
    }
    let stored = match &bare {
        Ok(b) => server
            .storage
            .account(b.as_str())
            .map_err(|_| SaslFailure::TemporaryAuthFailure)?,
        Err(_) => None,
    };
    let server_first = scram.server_first(stored.as_ref().map(|a| a.credentials.get(hash)));
    let client_final = match challenge(xs, &server_first, turn).await? {
        Some(Reply::Data(d)) => d,
        Some(Reply::Abort) => return Err(SaslFailure::Aborted),
        None => return Ok(None),
    };
    match scram.client_final(&client_final)? {
        ScramStep::Success { server_final, .. } => {
            let bare = bare?;
            match &stored {
                None => return Err(SaslFailure::NotAuthorized),
                Some(a) if a.disabled => return Err(SaslFailure::AccountDisabled),
                Some(_) => {}
            }
            check_authzid(scram.authzid(), &bare)?;
            Ok(Some((bare, Some(server_final))))
        }
        ScramStep::Challenge(_) => Err(SaslFailure::MalformedRequest),
    }
}
