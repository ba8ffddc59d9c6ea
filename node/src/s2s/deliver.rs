//! Stanzas from other domains' servers, `from` and `to` checked and
//! normalised by the stream: routed by the same RFC 6121 rules as a local
//! client's, with the remote sender in the place of the local one.

use crate::modules::{self, IqCtx, IqTarget};
use crate::router::Destination;
use crate::server::Server;
use crate::session::Origin;
use crate::session::im::{self, split};
use crate::stanza::{Condition, PresenceType, iq_result};
use crate::xml::Element;
use std::sync::Arc;

pub async fn incoming(server: &Arc<Server>, el: Element) {
    match el.name.as_str() {
        "message" => {
            if let Err(b) = im::route_message(server, el).await {
                im::bounce_with(server, &b.1, &b.0);
            }
        }
        "presence" => presence(server, el).await,
        "iq" => iq(server, el).await,
        _ => {}
    }
}

async fn presence(server: &Arc<Server>, mut el: Element) {
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let Some(ptype) = PresenceType::of(&el) else {
        return;
    };
    if matches!(
        im::destination(server, &to),
        Ok(Destination::Service { .. })
    ) {
        crate::services::route(server, el).await;
        return;
    }
    let from_bare = split(&from).0.to_owned();
    let to_bare = split(&to).0.to_owned();
    use PresenceType::*;
    let r = match ptype {
        // RFC 6121 §3: subscription stanzas are between bare JIDs.
        Subscribe | Subscribed | Unsubscribe | Unsubscribed => {
            el.set_attr("from", from_bare.as_str());
            el.set_attr("to", to_bare.as_str());
            let t = ptype.attr().unwrap_or_default();
            im::deliver_subscription(server, &from_bare, &to_bare, t, el).await
        }
        // §4.3.2: answered if the user approved the prober.
        Probe => im::probe(server, &from_bare, &from, &to_bare),
        Available | Unavailable | Error => {
            if server.is_local(crate::s2s::domain_of(&to))
                && !modules::blocking::either_blocks(server, &from, &to)
            {
                modules::pep::remote::presence(server, &to, &from, &el, ptype == Available);
            }
            im::presence_in(server, &to, el);
            Ok(())
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = ?e.condition, %from, %to, "presence from another domain not handled");
    }
}

async fn iq(server: &Arc<Server>, el: Element) {
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let request = matches!(el.get_attr("type"), Some("get" | "set"));
    let dest = match im::destination(server, &to) {
        Ok(d) => d,
        Err(e) => {
            if request {
                im::bounce_with(server, &el, &e.into());
            }
            return;
        }
    };
    if let Destination::Service { .. } = dest {
        crate::services::route(server, el).await;
        return;
    }
    // XEP-0191: no IQ passes between a user and a JID either blocks.
    if crate::modules::blocking::either_blocks(server, &from, &to) {
        if request {
            im::bounce(server, &el, Condition::ServiceUnavailable);
        }
        return;
    }
    if split(&to).1.is_some() {
        // To a client: delivered, or answered for it (RFC 6121 §8.5.3.2.3).
        if let Err(el) = im::deliver_to_full_acked(server, &to, el).await
            && request
        {
            im::bounce(server, &el, Condition::ServiceUnavailable);
        }
        return;
    }
    if !request {
        // An answer to something the server (or an account) asked: a caps
        // query (XEP-0115), a push app server's (XEP-0357).
        match dest {
            Destination::Server { .. } => {
                modules::caps::answer(server, &from, &el).await;
            }
            Destination::Account {
                bare,
                resource: None,
                exists: true,
            } => {
                modules::push::answer(server, bare, &from, &el).await;
            }
            _ => {}
        }
        return;
    }
    let payloads: Vec<&Element> = el.elements().collect();
    let [payload] = payloads.as_slice() else {
        im::bounce(server, &el, Condition::BadRequest);
        return;
    };
    let target = match dest {
        Destination::Server { domain, .. } => IqTarget::Server(domain),
        Destination::Account {
            bare, exists: true, ..
        } => IqTarget::Account(bare),
        Destination::Account { bare, .. } => IqTarget::NoAccount(bare),
        Destination::Remote { .. } | Destination::Service { .. } => {
            im::bounce(server, &el, Condition::ServiceUnavailable);
            return;
        }
    };
    let origin = Origin {
        bare: split(&from).0,
        full: &from,
        session_id: 0,
    };
    let ctx = IqCtx {
        server,
        origin: &origin,
        target,
        iq: &el,
        payload,
        set: el.get_attr("type") == Some("set"),
    };
    match modules::handle_iq(&ctx).await {
        Ok(modules::IqReply::Sent) => {}
        Ok(modules::IqReply::Result(payload)) => {
            let mut r = iq_result(&el, payload);
            r.set_attr("to", from.as_str());
            if r.get_attr("from").is_none() {
                r.set_attr("from", to.as_str());
            }
            super::send(server, r);
        }
        Err(e) => im::bounce_with(server, &el, &e),
    }
}
