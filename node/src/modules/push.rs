//! XEP-0357 Push Notifications (`urn:xmpp:push:0`, v0.4.1), the user's
//! server's side: a client registers an app server (`<enable/>` with its
//! JID, a node and an optional publish-options form) and the server
//! publishes a notification there whenever the client cannot be reached:
//!
//! - a message is put in offline storage: every registration of the
//!   account is notified (`session::im::store_offline`);
//! - a session waiting for XEP-0198 resumption (its connection was lost)
//!   holds or gets an important stanza: the registrations its resource
//!   enabled are notified (`session::c2s`, `wait_detached`). That covers
//!   the messages written to a connection that had silently died, which
//!   its client never acknowledged.
//!
//! Important (as Prosody's `mod_cloud_notify` decides): a message with a
//! body, an OMEMO payload or a Jingle call proposal, or a received carbon
//! of one; never an error, a sent carbon or bare chat states.
//!
//! Registrations are per account in the replicated store (`user_push`,
//! `bare \0 jid \0 node`), so every node sees them. The notification is an
//! IQ from the user's bare JID (XEP-0357 §7) with the summary form
//! (`message-count`; the sender and the body only when the configuration
//! says so: the app server and the push services behind it are third
//! parties). The app server is a session's full JID, a service hosted
//! here, or any JID of another domain (the public app servers are: it is
//! reached over federation, `crate::s2s`); with `[s2s] enabled = false`
//! `<enable/>` refuses one on another domain with
//! `<remote-server-not-found/>` rather than let the client rely on
//! notifications that could never reach it. An error from the app server
//! other than `wait` disables that registration (§8 "the user's server MAY").

use super::{AccountFeature, IqCtx, IqHandler, IqResult, Module, own_only};
use crate::config::Config;
use crate::router::Destination;
use crate::server::Server;
use crate::session::im;
use crate::stanza::{Condition, NS_CLIENT, StanzaError, parse_jid, split};
use crate::storage::{PUSH, PushRegistration};
use crate::xml::Element;
use futures::FutureExt;
use std::sync::atomic::{AtomicU64, Ordering};

pub const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_DATA: &str = "jabber:x:data";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
const SUMMARY: &str = "urn:xmpp:push:summary";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// Payloads that make a bodiless message worth waking a phone for: OMEMO
/// (both versions) and XEP-0353 call proposals.
const IMPORTANT_PAYLOADS: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("propose", "urn:xmpp:jingle-message:0"),
];
/// The notification IQs' ids: `push-<n>-<node>`, so an error names the
/// registration it is about.
const ID_PREFIX: &str = "push-";
/// The largest publish-options form kept (serialised).
const MAX_OPTIONS_BYTES: usize = 4096;

pub static MODULE: Module = Module {
    name: "push",
    spec: "XEP-0357 v0.4.1 (user's server)",
    account_features: &[AccountFeature {
        var: NS_PUSH,
        when: Some(enabled),
    }],
    iq: &[
        IqHandler {
            ns: NS_PUSH,
            name: "enable",
            get: None,
            set: Some(enable),
            no_account: false,
        },
        IqHandler {
            ns: NS_PUSH,
            name: "disable",
            get: None,
            set: Some(disable),
            no_account: false,
        },
    ],
    config_section: Some("push"),
    spaces: &[PUSH],
    ..Module::EMPTY
};

fn enabled(config: &Config) -> bool {
    config.push.enabled
}

fn enable<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    set_enable(ctx).boxed()
}

fn disable<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    set_disable(ctx).boxed()
}

/// The app server's JID of a request, normalised: required (§5, §6).
fn app_jid(payload: &Element) -> Result<String, StanzaError> {
    let raw = payload
        .get_attr("jid")
        .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "a jid is required"))?;
    Ok(parse_jid(raw)?.to_string())
}

fn checked(ctx: &IqCtx<'_>) -> Result<(), StanzaError> {
    if !ctx.server.config.push.enabled {
        return Err(Condition::ServiceUnavailable.into());
    }
    own_only(ctx)
}

/// §5: registers (or registers again, replacing its form) the app server
/// `jid` and `node` for the requesting resource.
async fn set_enable(ctx: &IqCtx<'_>) -> IqResult {
    checked(ctx)?;
    let jid = app_jid(ctx.payload)?;
    let node = ctx
        .payload
        .get_attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "a node is required"))?;
    let forms: Vec<&Element> = ctx
        .payload
        .elements()
        .filter(|e| e.is("x", NS_DATA))
        .collect();
    let options = match forms.as_slice() {
        [] => None,
        [form] => {
            let form_type = form
                .elements()
                .find(|f| f.name == "field" && f.get_attr("var") == Some("FORM_TYPE"))
                .and_then(|f| f.child_text("value", NS_DATA));
            if form_type.as_deref() != Some(PUBLISH_OPTIONS) {
                return Err(StanzaError::with_text(
                    Condition::BadRequest,
                    "the form's FORM_TYPE must be pubsub#publish-options",
                ));
            }
            let xml = form.to_xml();
            if xml.len() > MAX_OPTIONS_BYTES {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "the publish-options form is too large",
                ));
            }
            Some(xml)
        }
        _ => {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "at most one publish-options form",
            ));
        }
    };
    let server = ctx.server;
    deliverable(server, &jid)?;
    let bare = ctx.origin.bare;
    let existing = server.storage.push_registrations(bare)?;
    let replaces = existing.iter().any(|r| r.jid == jid && r.node == node);
    if !replaces && existing.len() >= server.config.push.max_registrations {
        return Err(StanzaError::with_text(
            Condition::ResourceConstraint,
            "too many push registrations for this account",
        ));
    }
    let reg = PushRegistration {
        jid,
        node: node.to_owned(),
        options,
        resource: split(ctx.origin.full).1.unwrap_or_default().to_owned(),
    };
    server.storage.put_push(bare, &reg).await?;
    metrics::counter!("starling_push_enabled_total").increment(1);
    Ok(super::IqReply::EMPTY)
}

/// Refuses an app server no notification could reach, so that the client
/// knows it must not rely on push (and keeps its connection instead): one
/// on another domain while federation is off, or a bare account or a
/// domain served here (the server answers for those itself).
fn deliverable(server: &Server, jid: &str) -> Result<(), StanzaError> {
    match im::destination(server, jid)? {
        Destination::Service { .. }
        | Destination::Account {
            resource: Some(_), ..
        }
        | Destination::Server {
            resource: Some(_), ..
        } => Ok(()),
        Destination::Remote { .. } if server.config.s2s.enabled => Ok(()),
        Destination::Remote { .. } => Err(StanzaError::with_text(
            Condition::RemoteServerNotFound,
            "app servers on other domains need federation, which is off here ([s2s] enabled)",
        )),
        _ => Err(StanzaError::with_text(
            Condition::NotAcceptable,
            "the app server must be a full JID or a service",
        )),
    }
}

/// §6: removes the registration of `jid` and `node`, or all of `jid`'s.
async fn set_disable(ctx: &IqCtx<'_>) -> IqResult {
    checked(ctx)?;
    let jid = app_jid(ctx.payload)?;
    let node = ctx.payload.get_attr("node").filter(|n| !n.is_empty());
    ctx.server
        .storage
        .delete_push(ctx.origin.bare, &jid, node)
        .await?;
    Ok(super::IqReply::EMPTY)
}

/// Whether a stanza is worth a notification (see the module's doc).
pub fn important(el: &Element) -> bool {
    if el.name != "message" || el.get_attr("type") == Some("error") {
        return false;
    }
    if let Some(received) = el.get_child("received", NS_CARBONS) {
        return received
            .get_child("forwarded", NS_FORWARD)
            .and_then(|f| f.elements().find(|m| m.name == "message"))
            .is_some_and(important);
    }
    if el.has_child("sent", NS_CARBONS) {
        return false;
    }
    el.elements().any(|c| {
        (c.name == "body" && c.ns == NS_CLIENT)
            || IMPORTANT_PAYLOADS
                .iter()
                .any(|(name, ns)| c.name == *name && c.ns == *ns)
    })
}

/// `bare`'s registrations (none when push is off or the store cannot
/// be read: a notification is never worth failing a delivery for).
fn registrations(server: &Server, bare: &str) -> Vec<PushRegistration> {
    if !server.config.push.enabled {
        return Vec::new();
    }
    server.storage.push_registrations(bare).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "could not read push registrations");
        Vec::new()
    })
}

/// A message for `bare` went to offline storage: every registration of
/// the account hears of it.
pub async fn offline(server: &Server, bare: &str, el: &Element) {
    if !important(el) {
        return;
    }
    let regs = registrations(server, bare);
    if regs.is_empty() {
        return;
    }
    let count = server.storage.offline_count(bare).unwrap_or(1).max(1);
    for reg in &regs {
        notify(server, bare, reg, count, el).await;
    }
}

/// A session of `bare/resource` waiting for resumption holds `count`
/// important stanzas its client has not had, `last` the newest: the
/// registrations that resource enabled hear of it.
pub async fn detached(server: &Server, bare: &str, resource: &str, count: u64, last: &Element) {
    for reg in registrations(server, bare)
        .iter()
        .filter(|r| r.resource == resource)
    {
        notify(server, bare, reg, count, last).await;
    }
}

/// Whether `bare` has a registration its `resource` enabled (one store
/// read of a usually empty prefix, made once per detachment).
pub fn has_registration(server: &Server, bare: &str, resource: &str) -> bool {
    registrations(server, bare)
        .iter()
        .any(|r| r.resource == resource)
}

/// The notification (§7): a pubsub publish from the user's bare JID to
/// the app server's node, with the summary and the client's
/// publish-options.
fn notification(
    server: &Server,
    bare: &str,
    reg: &PushRegistration,
    count: u64,
    last: &Element,
) -> Element {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let cfg = &server.config.push;
    let field = |var: &str, value: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let mut summary = Element::new("x", NS_DATA)
        .attr("type", "submit")
        .child(field("FORM_TYPE", SUMMARY))
        .child(field("message-count", &count.to_string()));
    // What a received carbon carries is the message the summary is about.
    let msg = last
        .get_child("received", NS_CARBONS)
        .and_then(|r| r.get_child("forwarded", NS_FORWARD))
        .and_then(|f| f.elements().find(|m| m.name == "message"))
        .unwrap_or(last);
    if cfg.include_sender
        && let Some(from) = msg.get_attr("from")
    {
        summary = summary.child(field("last-message-sender", from));
    }
    if cfg.include_body
        && let Some(body) = msg.child_text("body", NS_CLIENT)
    {
        summary = summary.child(field("last-message-body", &body));
    }
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).child(
        Element::new("publish", NS_PUBSUB)
            .attr("node", reg.node.as_str())
            .child(
                Element::new("item", NS_PUBSUB)
                    .child(Element::new("notification", NS_PUSH).child(summary)),
            ),
    );
    if let Some(form) = reg
        .options
        .as_deref()
        .and_then(crate::stanza::parse_serialised)
    {
        pubsub = pubsub.child(Element::new("publish-options", NS_PUBSUB).child(form));
    }
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Element::new("iq", NS_CLIENT)
        .attr("type", "set")
        .attr("from", bare)
        .attr("to", reg.jid.as_str())
        .attr("id", format!("{ID_PREFIX}{n}-{}", reg.node))
        .child(pubsub)
}

async fn notify(server: &Server, bare: &str, reg: &PushRegistration, count: u64, last: &Element) {
    let iq = notification(server, bare, reg, count, last);
    let sent = match im::destination(server, &reg.jid) {
        Ok(Destination::Service { .. }) => {
            crate::services::route(server, iq).await;
            true
        }
        Ok(Destination::Account {
            resource: Some(_), ..
        })
        | Ok(Destination::Server {
            resource: Some(_), ..
        }) => im::deliver_to_full(server, &reg.jid, iq).is_ok(),
        // Another domain's app server, over federation (a failure comes
        // back as an error answer).
        Ok(Destination::Remote { .. }) if server.config.s2s.enabled => {
            crate::s2s::send(server, iq);
            true
        }
        // A bare account or a served domain would answer for itself.
        _ => false,
    };
    if sent {
        metrics::counter!("starling_push_notifications_total").increment(1);
    } else {
        metrics::counter!("starling_push_undeliverable_total").increment(1);
        tracing::debug!(app = %reg.jid, "push notification not deliverable");
    }
}

/// An IQ answer addressed to the local account `to`: an error from one of
/// its app servers about a notification disables that registration,
/// unless the app server only asks to wait. True when it was such an
/// answer.
pub async fn answer(server: &Server, to: &str, from: &str, el: &Element) -> bool {
    let Some(node) = el
        .get_attr("id")
        .and_then(|id| id.strip_prefix(ID_PREFIX))
        .and_then(|rest| rest.split_once('-'))
        .map(|(_, node)| node)
    else {
        return false;
    };
    if el.get_attr("type") != Some("error") {
        return true;
    }
    let wait = el
        .get_child("error", NS_CLIENT)
        .and_then(|e| e.get_attr("type"))
        == Some("wait");
    if wait {
        return true;
    }
    let (bare, _) = split(to);
    let regs = server.storage.push_registrations(bare).unwrap_or_default();
    if regs.iter().any(|r| r.jid == from && r.node == node) {
        tracing::info!(app = %from, "app server refused a push notification; registration disabled");
        metrics::counter!("starling_push_disabled_by_error_total").increment(1);
        if let Err(e) = server.storage.delete_push(bare, from, Some(node)).await {
            tracing::debug!(error = %e, "could not disable a push registration");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        crate::stanza::parse_serialised(xml).expect("xml")
    }

    #[test]
    fn what_is_important() {
        assert!(important(&parse("<message><body>hi</body></message>")));
        assert!(!important(&parse(
            "<message type='error'><body>hi</body></message>"
        )));
        assert!(!important(&parse(
            "<message><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(important(&parse(
            "<message><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"
        )));
        assert!(important(&parse(
            "<message><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>"
        )));
        let received = "<message><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded></received></message>";
        assert!(important(&parse(received)));
        let sent = "<message><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded></sent></message>";
        assert!(!important(&parse(sent)));
        assert!(!important(&parse("<presence/>")));
    }
}
