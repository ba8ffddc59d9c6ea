//! RFC 6121 §2 roster management: get (with §2.6 versioning), set, remove,
//! pushes to interested resources. Subscription states change only through
//! presence stanzas (see `session::im`); a remove cancels both directions.

use super::{IqCtx, IqHandler, IqReply, IqResult, Module, Stage, StreamFeature, own_only};
use crate::router::ToUser;
use crate::session::im::{self, Origin};
use crate::stanza::{Condition, NS_CLIENT, StanzaError};
use crate::storage::{ROSTER, ROSTER_VER, RosterItem};
use crate::xml::Element;
use futures::FutureExt;

pub use crate::stanza::NS_ROSTER;
/// Longest item name or group name accepted.
const MAX_NAME: usize = 1024;

pub static MODULE: Module = Module {
    name: "roster",
    spec: "RFC 6121 §2 (with §2.6 versioning)",
    features: &[NS_ROSTER],
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: "<ver xmlns='urn:xmpp:features:rosterver'/>",
        when: None,
    }],
    iq: &[IqHandler {
        ns: NS_ROSTER,
        name: "query",
        get: Some(get),
        set: Some(set),
        no_account: false,
    }],
    spaces: &[ROSTER, ROSTER_VER],
    ..Module::EMPTY
};

fn get<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        roster_get(ctx).await
    }
    .boxed()
}

fn set<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        roster_set(ctx).await
    }
    .boxed()
}

async fn roster_get(ctx: &IqCtx<'_>) -> IqResult {
    let server = ctx.server;
    let bare = ctx.origin.bare;
    let id = ctx.origin.session_id;
    let newly = server.router.with_resources(bare, |rs| {
        rs.iter().any(|r| r.handle.id == id && !r.interested)
    });
    if newly && let Some(user) = server.router.user(bare) {
        // Roster pushes reach it from any node from now on: the user's
        // actor records the interest (here and in the routing table).
        let msg = ToUser::Interested { session: id };
        user.send(msg)
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))??;
    }
    let ver = server.storage.roster_version(bare)?;
    // §2.6.3: an unchanged roster is an empty result; pushes follow.
    if ctx.payload.get_attr("ver") == Some(ver.to_string().as_str()) {
        return Ok(IqReply::EMPTY);
    }
    let mut q = Element::new("query", NS_ROSTER).attr("ver", ver.to_string());
    for item in server.storage.roster(bare)? {
        q = q.child(im::item_element(&item, false));
    }
    Ok(q.into())
}

async fn roster_set(ctx: &IqCtx<'_>) -> IqResult {
    let items: Vec<&Element> = ctx.payload.elements().collect();
    let [item] = items.as_slice() else {
        return Err(StanzaError::with_text(
            Condition::BadRequest,
            "exactly one item",
        ));
    };
    if !item.is("item", NS_ROSTER) {
        return Err(Condition::BadRequest.into());
    }
    let jid_attr = item.get_attr("jid").ok_or(Condition::BadRequest)?;
    let jid = jid::Jid::new(jid_attr).map_err(|_| Condition::JidMalformed)?;
    if jid.resource().is_some() {
        return Err(Condition::JidMalformed.into());
    }
    let contact = jid.to_string();
    let server = ctx.server;
    let bare = ctx.origin.bare;
    if contact == bare {
        // The user's own JID is not a contact (RFC 6121 §2.3.3).
        return Err(Condition::NotAllowed.into());
    }
    if item.get_attr("subscription") == Some("remove") {
        return remove(ctx.server, ctx.origin, &contact).await;
    }
    let name = item.get_attr("name").map(str::to_owned);
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(Condition::NotAcceptable.into());
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.elements().filter(|g| g.is("group", NS_ROSTER)) {
        let g = g.text_content();
        if g.is_empty() || g.len() > MAX_NAME {
            return Err(Condition::NotAcceptable.into());
        }
        if groups.contains(&g) {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "duplicate group",
            ));
        }
        groups.push(g);
    }
    let name = name.filter(|n| !n.is_empty());
    let (entry, committed) = server
        .storage
        .update_user(bare, |txn| {
            let mut entry = txn.roster_item(&contact)?.unwrap_or_else(|| RosterItem {
                jid: contact.clone(),
                ..Default::default()
            });
            entry.name = name.clone();
            entry.groups = groups.clone();
            txn.save_item(&entry, false)?;
            Ok(entry)
        })
        .await?;
    im::push_committed(server, bare, Some(&entry), false, committed);
    Ok(IqReply::EMPTY)
}

/// §2.5: removing an item cancels the subscriptions both ways.
async fn remove(server: &crate::server::Server, origin: &Origin<'_>, contact: &str) -> IqResult {
    let (existing, committed) = server
        .storage
        .update_user(origin.bare, |txn| {
            let existing = txn.roster_item(contact)?.ok_or(Condition::ItemNotFound)?;
            txn.save_item(&existing, true)?;
            txn.set_pending_in(contact, None);
            Ok(existing)
        })
        .await?;
    im::push_committed(server, origin.bare, Some(&existing), true, committed);
    let presence = |t: &str| {
        Element::new("presence", NS_CLIENT)
            .attr("from", origin.bare)
            .attr("to", contact)
            .attr("type", t)
    };
    if existing.subscription.to() || existing.ask {
        im::deliver_subscription(
            server,
            origin.bare,
            contact,
            "unsubscribe",
            presence("unsubscribe"),
        )
        .await?;
    }
    if existing.subscription.from() {
        im::unavailable_to(server, origin.bare, contact);
        im::deliver_subscription(
            server,
            origin.bare,
            contact,
            "unsubscribed",
            presence("unsubscribed"),
        )
        .await?;
    }
    Ok(IqReply::EMPTY)
}
