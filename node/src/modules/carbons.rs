//! XEP-0280 Message Carbons (`urn:xmpp:carbons:2`, v1.0): every
//! carbons-enabled resource of a user sees both sides of the user's
//! conversations, wherever in the cluster it is bound.
//!
//! - `<enable/>` / `<disable/>` set a per-resource flag through the user
//!   actor, which writes it into the session's route: other nodes read it
//!   from the registry like roster interest.
//! - Sent copies: a `MessageOut` hook (after every other module: blocking
//!   may still refuse the message) wraps an eligible message a client sent
//!   in `<sent/>` for the user's other enabled resources.
//! - Received copies: [`received`], called by `session::im` once a message
//!   to the user was delivered (so the copy holds the message as
//!   delivered), wraps it in `<received/>` for the enabled resources that
//!   did not get it.
//! - Copies travel as any stanza does: `Router::send` to the resource, here
//!   or on its node. They are never copied again, never stored offline and
//!   never bounced (§9.3).
//! - Trust (§11): a carbon is only believed from the user's own bare JID,
//!   which only the server uses. A client that sends one is refused; one
//!   arriving from anyone else loses its wrapper.

use super::{Event, Flow, Hook, HookCtx, IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module};
use crate::router::ToUser;
use crate::server::Server;
use crate::stanza::{Condition, MessageType, NS_CLIENT, StanzaError, split};
use crate::xml::{Element, Node};
use futures::FutureExt;

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints (`<no-copy/>`).
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// Payloads that make a bodiless `normal` message part of a conversation
/// (§6): receipts, chat states, chat markers, direct MUC invitations.
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
    "jabber:x:conference",
];

pub static MODULE: Module = Module {
    name: "carbons",
    spec: "XEP-0280 v1.0 (with XEP-0334 <no-copy/>)",
    features: &[NS_CARBONS],
    iq: &[
        IqHandler {
            ns: NS_CARBONS,
            name: "enable",
            get: None,
            set: Some(enable),
            no_account: false,
        },
        IqHandler {
            ns: NS_CARBONS,
            name: "disable",
            get: None,
            set: Some(disable),
            no_account: false,
        },
    ],
    hooks: &[
        // Before anything else looks at what a client sent.
        Hook {
            event: Event::MessageOut,
            priority: 1000,
            handler: refuse_forged,
        },
        // After everything else: a message another module refuses or
        // takes over is not copied.
        Hook {
            event: Event::MessageOut,
            priority: -1000,
            handler: copy_sent,
        },
        Hook {
            event: Event::MessageIn,
            priority: 1000,
            handler: inbound,
        },
    ],
    ..Module::EMPTY
};

fn enable<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    set(ctx, true).boxed()
}

fn disable<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    set(ctx, false).boxed()
}

/// Turns carbons on or off for the requesting resource (§4, §5). Only the
/// resource itself can, through its own server: anything addressed to
/// another account or another domain is `<not-allowed/>`. Repeating a
/// request is no error (§9.1).
async fn set(ctx: &IqCtx<'_>, enabled: bool) -> IqResult {
    let (bare, session) = (ctx.origin.bare, ctx.origin.session_id);
    let own_domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
    match ctx.target {
        IqTarget::Own => {}
        IqTarget::Server(domain) if domain == own_domain => {}
        _ => return Err(Condition::NotAllowed.into()),
    }
    let server = ctx.server;
    let unchanged = server.router.with_resources(bare, |rs| {
        rs.iter()
            .any(|r| r.handle.id == session && r.carbons == enabled)
    });
    if !unchanged {
        // The user's actor records it here and in the session's route, so
        // copies made on any node see it once the result is sent.
        let user = server
            .router
            .user(bare)
            .ok_or(Condition::InternalServerError)?;
        user.send(ToUser::Carbons { session, enabled })
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))??;
    }
    Ok(IqReply::EMPTY)
}

/// Which way a copied message went, seen from the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The user's resource sent it.
    Sent,
    /// It was delivered to the user.
    Received,
}

impl Direction {
    fn wrapper(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Whether the message carries a carbon wrapper of its own.
fn is_carbon(el: &Element) -> bool {
    el.has_child("sent", NS_CARBONS) || el.has_child("received", NS_CARBONS)
}

/// A MUC private message (XEP-0045 §7.5: marked by `<x/>` of muc#user)
/// rather than a mediated invitation, which carries the same element.
fn is_muc_pm(el: &Element) -> bool {
    el.get_child("x", NS_MUC_USER)
        .is_some_and(|x| !x.has_child("invite", NS_MUC_USER))
}

/// XEP-0280 §6 (v1.0): which messages are copied.
pub fn eligible(el: &Element, dir: Direction) -> bool {
    // §7: the sender asked for no copies (either way; XEP-0334 §4.3 too).
    if el.has_child("private", NS_CARBONS) || el.has_child("no-copy", NS_HINTS) {
        return false;
    }
    // A copy is never copied again.
    if is_carbon(el) {
        return false;
    }
    // §6.1: a private message from a room occupant reaches every joined
    // client from the room already; one the user sends is copied.
    if dir == Direction::Received && is_muc_pm(el) {
        return false;
    }
    match MessageType::of(el) {
        MessageType::Chat => true,
        MessageType::Normal => {
            el.has_child("body", NS_CLIENT)
                || el
                    .elements()
                    .any(|c| IM_PAYLOADS.contains(&c.ns.as_str()) || c.is("x", NS_MUC_USER))
        }
        // Room traffic, notifications and errors (an error would have to
        // be matched to an eligible message, which §6 leaves out) are not
        // conversations.
        MessageType::Groupchat | MessageType::Headline | MessageType::Error => false,
    }
}

/// The copy of `original` for the user `bare`, `to` filled in per
/// recipient: from the bare JID, of the same type, the message inside
/// `<forwarded/>` (XEP-0297).
fn wrap(bare: &str, dir: Direction, original: &Element) -> Element {
    let mut copy = Element::new("message", NS_CLIENT).attr("from", bare);
    if let Some(t) = original.get_attr("type") {
        copy.set_attr("type", t);
    }
    let mut inner = original.clone();
    // XEP-0359: a `<stanza-id/>` naming the user's archive (or server) is
    // only ever the archive's; one the sending client made up is not
    // passed on.
    super::mam::strip_spoofed(&mut inner, bare, bare);
    copy.child(
        Element::new(dir.wrapper(), NS_CARBONS)
            .child(Element::new("forwarded", NS_FORWARD).child(inner)),
    )
}

/// Sends a copy of `el` to every available carbons-enabled resource of
/// `bare` for which `skip` is false, wherever it is bound.
fn copy_to(server: &Server, bare: &str, dir: Direction, el: &Element, skip: impl Fn(&str) -> bool) {
    let mut targets = server.router.bound(bare);
    targets.retain(|b| b.carbons && b.available && !skip(&b.resource));
    if targets.is_empty() {
        return;
    }
    let mut copy = wrap(bare, dir, el);
    for b in &targets {
        copy.set_attr("to", format!("{bare}/{}", b.resource));
        let xml: std::sync::Arc<str> = copy.to_stream_xml(NS_CLIENT).into();
        // No bounce for a copy that cannot be delivered (§9.3).
        server.router.send(bare, &b.resource, &b.at, &xml);
    }
    let label = dir.wrapper();
    metrics::counter!("starling_carbons_copies_total", "direction" => label)
        .increment(targets.len() as u64);
}

/// Whether the recipient of `el` has a resource on another node that gets
/// a received copy of it. That copy goes out with the message, so its
/// archive write must not wait behind the delivery: a query through that
/// node must find what the copy announced (a node waits only for its own
/// writes behind, `Store::sync_behind`).
pub fn copied_elsewhere(server: &Server, el: &Element) -> bool {
    if !server.storage.store.has_peers() || !eligible(el, Direction::Received) {
        return false;
    }
    el.get_attr("to").is_some_and(|to| {
        server
            .router
            .any_remote(split(to).0, |r| r.carbons && r.available)
    })
}

/// §6: an error in answer to an eligible message is eligible too. The
/// error `reply` to `original` (a message the user's resource `to` sent),
/// about to be delivered to it, goes to the user's other enabled
/// resources as a received copy. Only on the error path.
pub fn error_received(server: &Server, to: &str, original: &Element, reply: &Element) {
    let (bare, Some(res)) = split(to) else {
        return;
    };
    if MessageType::of(original) == MessageType::Error
        || !eligible(original, Direction::Sent)
        // A message to the user's own JID was never copied as sent.
        || original.get_attr("to").is_some_and(|t| split(t).0 == bare)
    {
        return;
    }
    copy_to(server, bare, Direction::Received, reply, |r| r == res);
}

/// Received copies (§7): `el`, as delivered to the user `bare`'s resources
/// `recipients`, goes to every other enabled resource. A message the user
/// sent to themselves is not copied back to the resource that sent it.
pub fn received<'a>(
    server: &Server,
    bare: &str,
    el: &Element,
    recipients: impl IntoIterator<Item = &'a str>,
) {
    if !eligible(el, Direction::Received) {
        return;
    }
    let recipients: Vec<&str> = recipients.into_iter().collect();
    let sender = match el.get_attr("from").map(split) {
        Some((b, Some(res))) if b == bare => Some(res),
        _ => None,
    };
    copy_to(server, bare, Direction::Received, el, |res| {
        recipients.contains(&res) || sender == Some(res)
    });
}

/// Sent copies (§8) of what a client sent, to the user's other enabled
/// resources, whether or not the sender enabled carbons. A message to the
/// user's own JID is left to the received side, which reaches every
/// enabled resource that did not get it, so none gets it twice.
fn copy_sent(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    let Some(sender) = ctx.full.and_then(|f| split(f).1) else {
        return Flow::Pass;
    };
    let to_self = el.get_attr("to").is_some_and(|to| split(to).0 == ctx.user);
    if !to_self && eligible(el, Direction::Sent) {
        copy_to(ctx.server, ctx.user, Direction::Sent, el, |res| {
            res == sender
        });
    }
    Flow::Pass
}

/// §11: carbons come from the server only. A client that wraps a message
/// in `<sent/>` or `<received/>` itself is refused with
/// `<not-acceptable/>` (an error message loses the wrapper instead: an
/// error is never answered with one).
fn refuse_forged(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    if !is_carbon(el) {
        return Flow::Pass;
    }
    if MessageType::of(el) == MessageType::Error {
        strip_carbons(el);
        return Flow::Pass;
    }
    metrics::counter!("starling_carbons_forged_total").increment(1);
    let err = StanzaError::with_text(
        Condition::NotAcceptable,
        "message carbons are sent by the server only (XEP-0280 §11)",
    );
    // The refusal leaves the payload out (RFC 6120 §8.3.1 allows it): an
    // error from the user's own bare JID carrying a wrapper would look
    // like the very carbon it refuses.
    let shell = Element {
        name: el.name.clone(),
        ns: el.ns.clone(),
        attrs: el.attrs.clone(),
        children: Vec::new(),
    };
    crate::session::im::bounce_with(ctx.server, &shell, &err);
    Flow::Handled
}

/// Before delivery to the user: a carbon wrapper is only kept from the
/// user's own bare JID (§11), and `<private/>` is removed (§7) and turned
/// into the `<no-copy/>` hint it implies, so the delivered message still
/// tells [`received`] not to copy it.
fn inbound(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    if is_carbon(el) {
        if el.get_attr("from") == Some(ctx.user) {
            // A copy whose session ended before writing it: the user's other
            // resources had their own, so it goes nowhere else.
            return Flow::Handled;
        }
        strip_carbons(el);
    }
    if el.has_child("private", NS_CARBONS) {
        el.remove_children("private", NS_CARBONS);
        if !el.has_child("no-copy", NS_HINTS) {
            el.children
                .push(Node::Element(Element::new("no-copy", NS_HINTS)));
        }
    }
    Flow::Pass
}

fn strip_carbons(el: &mut Element) {
    el.remove_children("sent", NS_CARBONS);
    el.remove_children("received", NS_CARBONS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::parse_serialised;

    fn msg(xml: &str) -> Element {
        parse_serialised(xml).expect("test XML parses")
    }

    #[test]
    fn section_6_chat_and_normal_with_body_are_copied() {
        // §7, Example 5: Juliet's directed message.
        let m = msg("<message from='juliet@capulet.example/balcony' \
             to='romeo@montague.example/garden' type='chat'>\
             <body>What man art thou?</body><thread>0e31</thread></message>");
        assert!(eligible(&m, Direction::Received));
        assert!(eligible(&m, Direction::Sent));
        let normal = msg("<message to='a@b'><body>hi</body></message>");
        assert!(eligible(&normal, Direction::Sent));
        let receipt =
            msg("<message to='a@b'><received xmlns='urn:xmpp:receipts' id='x'/></message>");
        assert!(eligible(&receipt, Direction::Received));
        let bare_normal = msg("<message to='a@b'><thing xmlns='urn:example'/></message>");
        assert!(!eligible(&bare_normal, Direction::Sent));
    }

    #[test]
    fn groupchat_headline_and_error_are_not_copied() {
        for t in ["groupchat", "headline", "error"] {
            let m = msg(&format!(
                "<message type='{t}' to='a@b'><body>x</body></message>"
            ));
            assert!(!eligible(&m, Direction::Received), "{t}");
            assert!(!eligible(&m, Direction::Sent), "{t}");
        }
    }

    #[test]
    fn private_no_copy_and_carbons_themselves_are_not_copied() {
        // §7 Example 9: private with the no-copy hint; either alone counts.
        for extra in [
            "<private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/>",
            "<private xmlns='urn:xmpp:carbons:2'/>",
            "<no-copy xmlns='urn:xmpp:hints'/>",
            "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></sent>",
        ] {
            let m = msg(&format!(
                "<message type='chat' to='a@b'><body>x</body>{extra}</message>"
            ));
            assert!(!eligible(&m, Direction::Sent), "{extra}");
            assert!(!eligible(&m, Direction::Received), "{extra}");
        }
    }

    #[test]
    fn muc_private_messages_are_copied_when_sent_only() {
        let pm = msg(
            "<message type='chat' to='room@muc.example/nick'><body>psst</body>\
             <x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        );
        assert!(eligible(&pm, Direction::Sent));
        assert!(!eligible(&pm, Direction::Received));
        // A mediated invitation carries the same element and is copied.
        let invite = msg("<message from='room@muc.example' to='a@b'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><invite from='c@d'/></x></message>");
        assert!(eligible(&invite, Direction::Received));
    }

    #[test]
    fn the_copy_forwards_the_message_as_it_was() {
        // §8, Example 8: Romeo's other client receives a copy.
        let m = msg("<message from='romeo@montague.example/home' \
             to='juliet@capulet.example/balcony' type='chat'>\
             <body>Neither, fair saint</body></message>");
        let mut copy = wrap("romeo@montague.example", Direction::Sent, &m);
        copy.set_attr("to", "romeo@montague.example/garden");
        let back = msg(&copy.to_stream_xml(NS_CLIENT));
        assert_eq!(back.get_attr("from"), Some("romeo@montague.example"));
        assert_eq!(back.get_attr("type"), Some("chat"));
        let inner = back
            .get_child("sent", NS_CARBONS)
            .and_then(|s| s.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", NS_CLIENT))
            .expect("sent/forwarded/message");
        assert_eq!(inner, &m);
    }
}
