//! XEP-0045 multi-user chat: the service at `<subdomain>.<domain>` and its
//! rooms. Each room is an actix actor ([`room::Room`]) on the one node that
//! owns it (`services::owner`); [`Rooms`] is this node's map of the rooms
//! it runs. What any node can answer from the replicated store is answered
//! where the requester is: the service's own disco (its public rooms are
//! the directory) and a room's archive (XEP-0313 on the room JID, through
//! `modules::mam`'s query code).
//!
//! Durable state (config, affiliations, subject, occupants) is in the
//! key spaces `storage::MUC_ROOMS` and `storage::MUC_OCCUPANTS`; the
//! room's messages are in the message archive under the room's JID, which
//! is its history too.

pub mod room;

use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::server::Server;
use crate::session::im::{bounce, bounce_with, deliver_to_full};
use crate::stanza::{Condition, NS_CLIENT, StanzaError, iq_result, split};
use crate::xml::Element;
use actix::{Actor, Addr};
use dashmap::DashMap;
use room::{Room, RoomRecord, RoomStanza, Stop};
use std::sync::atomic::{AtomicU64, Ordering};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0045 §10.1.4: unique room names.
pub const NS_MUC_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

/// The attribute a client's presence to a room carries from its session
/// to the room when resourceprep changed the nick it asked for (the room
/// then sends status 210, XEP-0045 §7.2.3); sessions strip it from what
/// clients send.
pub const REQUESTED_NICK: &str = "starling-requested-nick";

/// Marks a presence whose `to` (as sent, before normalisation) names an
/// occupant JID of a room of this server with the nick asked for.
pub fn note_requested_nick(server: &Server, el: &mut Element, to: &jid::Jid) {
    let Some(raw) = el.get_attr("to") else {
        return;
    };
    let Some((_, asked)) = raw.split_once('/') else {
        return;
    };
    let to_room = server
        .services
        .get(to.domain().as_str())
        .is_some_and(|h| h.kind == crate::services::ServiceKind::Muc);
    if to_room && to.resource().is_some() {
        let asked = asked.to_owned();
        el.set_attr(REQUESTED_NICK, asked);
    }
}

/// The rooms this node runs, by room bare JID.
#[derive(Default)]
pub struct Rooms {
    map: DashMap<String, (u64, Addr<Room>)>,
    /// Sessions of a lost node that their clients may still resume on
    /// another node (XEP-0198), by full JID, with the end of their
    /// resumption window: until then a room keeps their occupants without
    /// a route (`session::cluster_events`). Every node with the service
    /// derives the same entries from the same registry events, so a room
    /// that moves meanwhile keeps them too. Empty but after a node died.
    held: DashMap<String, std::time::Instant>,
    /// How many entries `held` has (read per delivery, so not the map's
    /// own `is_empty`, which locks every shard); moved only by an insert
    /// or removal that changed the map, so concurrent ones keep it exact.
    held_count: std::sync::atomic::AtomicUsize,
}

static NEXT_ROOM: AtomicU64 = AtomicU64::new(1);

impl Rooms {
    /// Hands a stanza to the room's actor, starting it if it is not
    /// running here (it loads its state from the store first); false when
    /// this node runs no actors yet.
    pub fn deliver(&self, server: &Server, room: &str, el: Element) -> bool {
        if let Some(e) = self.map.get(room)
            && e.1.connected()
        {
            e.1.do_send(RoomStanza(el));
            return true;
        }
        let Some(server) = server.services.server() else {
            return false;
        };
        if server.services.arbiter(room).is_none() {
            return false;
        }
        let mut entry = self.map.entry(room.to_owned()).or_insert_with(|| {
            let id = NEXT_ROOM.fetch_add(1, Ordering::Relaxed);
            (id, start(server.clone(), room.to_owned(), id))
        });
        if !entry.1.connected() {
            let id = NEXT_ROOM.fetch_add(1, Ordering::Relaxed);
            *entry = (id, start(server.clone(), room.to_owned(), id));
        }
        entry.1.do_send(RoomStanza(el));
        true
    }

    /// Stops the room's actor here, if it runs here (it moved).
    pub fn stop(&self, room: &str) {
        if self.map.is_empty() {
            return;
        }
        if let Some((_, (_, addr))) = self.map.remove(room) {
            addr.do_send(Stop);
        }
    }

    /// The room's actor `id` stopped: forget it unless a newer one runs.
    pub fn forget(&self, room: &str, id: u64) {
        self.map.remove_if(room, |_, (i, _)| *i == id);
    }

    /// Whether no room runs here.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Holds the session `full` of a lost node until `until` (it may be
    /// resumed elsewhere meanwhile).
    pub fn hold(&self, full: &str, until: std::time::Instant) {
        if self.held.insert(full.to_owned(), until).is_none() {
            self.held_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Ends the hold of `full` (resumed, or its window is over).
    pub fn unhold(&self, full: &str) {
        if self.held_count.load(Ordering::Acquire) > 0 && self.held.remove(full).is_some() {
            self.held_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the session `full`, which has no route, is held: a room
    /// keeps its occupant.
    pub fn held(&self, full: &str) -> bool {
        self.held_count.load(Ordering::Acquire) > 0
            && self
                .held
                .get(full)
                .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Sessions that ended without a word (their node died): every room
    /// here lets their occupants go.
    pub fn sessions_gone(&self, full_jids: Vec<String>) {
        if full_jids.is_empty() || self.map.is_empty() {
            return;
        }
        let list = std::sync::Arc::new(full_jids);
        for e in self.map.iter() {
            e.value().1.do_send(room::SessionsGone(list.clone()));
        }
    }

    /// The node shuts down: every room here tells its occupants (332).
    /// Whether any room runs here.
    pub fn shutdown(&self) -> bool {
        for e in self.map.iter() {
            e.value().1.do_send(room::Shutdown);
        }
        !self.map.is_empty()
    }

    /// Number of rooms running here.
    pub fn running(&self) -> usize {
        self.map.len()
    }
}

fn start(server: std::sync::Arc<Server>, jid: String, id: u64) -> Addr<Room> {
    let arbiter = server
        .services
        .arbiter(&jid)
        .expect("checked by the caller")
        .clone();
    let room = Room::new(server, jid, id);
    Room::start_in_arbiter(&arbiter, |_| room)
}

// ------------------------------------------------------------ the service

/// A stanza to the service domain itself: disco, ping; the rest is
/// `<service-unavailable/>` (or `<feature-not-implemented/>` for IQs).
pub async fn service_stanza(server: &Server, el: Element) {
    if el.name != "iq" {
        if el.name == "message" && el.get_attr("type") != Some("error") {
            bounce(server, &el, Condition::ServiceUnavailable);
        }
        return;
    }
    if !matches!(el.get_attr("type"), Some("get" | "set")) {
        return;
    }
    let payload = el.elements().next().cloned();
    let reply = match payload {
        Some(p) if p.is("query", NS_INFO) && el.get_attr("type") == Some("get") => {
            if p.get_attr("node").is_some() {
                Err(Condition::ItemNotFound)
            } else {
                Ok(Some(service_info(server, &el)))
            }
        }
        Some(p) if p.is("query", NS_ITEMS) && el.get_attr("type") == Some("get") => {
            match service_items(server, &el, &p).await {
                Ok(items) => Ok(Some(items)),
                Err(e) => {
                    bounce_with(server, &el, &e);
                    return;
                }
            }
        }
        Some(p) if p.is("ping", "urn:xmpp:ping") && el.get_attr("type") == Some("get") => Ok(None),
        // XEP-0045 §10.1.4: a room name nobody has, for a room the
        // requester is about to create (128 random bits: never reused).
        Some(p) if p.is("unique", NS_MUC_UNIQUE) && el.get_attr("type") == Some("get") => {
            let name = format!("{:032x}", rand::random::<u128>());
            Ok(Some(Element::new("unique", NS_MUC_UNIQUE).text(name)))
        }
        _ => Err(Condition::ServiceUnavailable),
    };
    match reply {
        Ok(payload) => {
            let r = iq_result(&el, payload);
            if let Some(to) = r.get_attr("to").map(str::to_owned) {
                let _ = deliver_to_full(server, &to, r);
            }
        }
        Err(c) => bounce(server, &el, c),
    }
}

fn service_info(server: &Server, el: &Element) -> Element {
    let domain = el.get_attr("to").unwrap_or_default();
    let name = server
        .services
        .get(domain)
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let mut q = Element::new("query", NS_INFO).child(
        Element::new("identity", NS_INFO)
            .attr("category", "conference")
            .attr("type", "text")
            .attr("name", name),
    );
    for f in [
        NS_INFO,
        NS_ITEMS,
        NS_MUC,
        NS_OCCUPANT_ID,
        "urn:xmpp:ping",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        NS_MUC_UNIQUE,
        crate::rsm::NS_RSM,
    ] {
        q = q.child(Element::new("feature", NS_INFO).attr("var", f));
    }
    q
}

/// The public rooms of the service (XEP-0045 §6.3), read from the store;
/// a page of them when the request holds a XEP-0059 `<set/>` (a
/// service's list can be long), by room JID.
async fn service_items(server: &Server, el: &Element, q: &Element) -> Result<Element, StanzaError> {
    if q.get_attr("node").is_some() {
        return Err(Condition::ItemNotFound.into());
    }
    let service = el.get_attr("to").unwrap_or_default();
    if server.storage.store.has_peers() {
        let _ = server.storage.store.read_barrier().await;
    }
    let rooms: Vec<(String, RoomRecord)> = server
        .storage
        .muc_rooms(service)
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    let mut items = Vec::new();
    for (jid, r) in rooms {
        if !r.config.public || r.locked {
            continue;
        }
        let name = if r.config.name.is_empty() {
            split(&jid)
                .0
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            r.config.name.clone()
        };
        items.push(
            Element::new("item", NS_ITEMS)
                .attr("jid", jid)
                .attr("name", name),
        );
    }
    let (items, set) = crate::rsm::page_items(q, items, "jid")?;
    let mut out = Element::new("query", NS_ITEMS);
    for item in items {
        out = out.child(item);
    }
    if let Some(set) = set {
        out = out.child(set);
    }
    Ok(out)
}

/// What the requester's node answers for a room from the replicated
/// store (the room's archive, XEP-0313); hands back what goes to the room.
pub async fn answer_here(server: &Server, el: Element) -> Option<Element> {
    let to = el.get_attr("to").unwrap_or_default();
    if el.name != "iq"
        || split(to).1.is_some()
        || !matches!(el.get_attr("type"), Some("get" | "set"))
    {
        return Some(el);
    }
    let is_mam = el.elements().next().is_some_and(|p| {
        p.ns == crate::modules::mam::NS_MAM && matches!(p.name.as_str(), "query" | "metadata")
    });
    if !is_mam {
        return Some(el);
    }
    let room = to.to_owned();
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    if server.storage.store.has_peers() {
        let _ = server.storage.store.read_barrier().await;
    }
    let rec: Option<RoomRecord> = match server.storage.muc_room(&room) {
        Ok(r) => r,
        Err(_) => {
            bounce(server, &el, Condition::InternalServerError);
            return None;
        }
    };
    let Some(rec) = rec else {
        bounce(server, &el, Condition::ItemNotFound);
        return None;
    };
    // XEP-0313 §5.1.2: who has the right to enter the room now may read
    // its archive. Members-only rooms show it to members; a password
    // protected one to members and its occupants (who gave the password);
    // others to anyone who could join (not outcasts).
    let aff = rec.affiliation(server, split(&from).0);
    let needs_occupant = rec.config.password.is_some() && aff < room::Affiliation::Member;
    let needs_role = !rec.config.whois_anyone && aff < room::Affiliation::Admin;
    // The requester's role when it is an occupant (read only when it
    // decides something).
    let role = if needs_occupant || needs_role {
        match occupant_role(server, &room, &from) {
            Ok(r) => r,
            Err(_) => {
                bounce(server, &el, Condition::InternalServerError);
                return None;
            }
        }
    } else {
        None
    };
    let allowed = aff != room::Affiliation::Outcast
        && (!rec.config.members_only || aff >= room::Affiliation::Member)
        && (!needs_occupant || role.is_some())
        && !rec.locked;
    if !allowed {
        bounce(server, &el, Condition::Forbidden);
        return None;
    }
    // Real JIDs in the results (XEP-0313 §5.1.2): in a non-anonymous room,
    // to admins and owners, and to occupants who are moderators now.
    let reveal = !needs_role || role == Some(room::Role::Moderator);
    crate::modules::mam::query_archive(server, &el, &room, reveal).await;
    None
}

/// The role of the occupant of `room` with the session `full`, if any
/// (from the replicated store).
fn occupant_role(
    server: &Server,
    room: &str,
    full: &str,
) -> Result<Option<room::Role>, starling_cluster::StoreError> {
    let occupants: Vec<(String, room::OccupantRecord)> = server.storage.muc_occupants(room)?;
    Ok(occupants
        .into_iter()
        .find(|(_, o)| o.jid == full || o.more.iter().any(|m| m == full))
        .map(|(_, o)| o.role))
}

/// Sends a serialised stanza to a full JID wherever it is bound; false
/// when no such session is known.
pub fn send_raw(server: &Server, full: &str, xml: &std::sync::Arc<str>) -> bool {
    if crate::s2s::is_remote(server, full) {
        // An occupant of another domain: over federation.
        return match crate::stanza::parse_serialised(xml) {
            Some(el) => {
                crate::s2s::send(server, el);
                true
            }
            None => false,
        };
    }
    let (bare, Some(res)) = split(full) else {
        return false;
    };
    match server.router.find(bare, res) {
        Some(at) => server.router.send(bare, res, &at, xml),
        // An occupant at a XEP-0114 component (a gateway's user).
        None => crate::services::component::send_serialised(server, full, xml),
    }
}

/// Sends an element to a full JID (`to` set here).
pub fn send_el(server: &Server, full: &str, mut el: Element) {
    el.set_attr("to", full);
    let xml: std::sync::Arc<str> = el.to_stream_xml(NS_CLIENT).into();
    send_raw(server, full, &xml);
}
