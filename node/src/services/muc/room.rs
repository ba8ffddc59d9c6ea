//! One XEP-0045 room: an actix actor on the node that owns the room. Its
//! mailbox runs the room's stanzas one at a time (the handler waits for the
//! room's durable writes before taking the next), so every occupant sees
//! one order. State it must not lose (configuration, affiliations,
//! subject, occupants) is written to the store when it changes; a
//! groupchat message is archived (the room's archive is its history and
//! its XEP-0313 archive) before it is reflected. An actor started on a new
//! owner (its node died, the membership changed) loads all of it back.
//!
//! The fan-out is serialised once: the reflected message's text before and
//! after its `to` (`services::Spliced`), spliced per occupant; occupants of
//! this node get it straight into their session's mailbox (their handle
//! is cached), those of other nodes in one envelope per node carrying the
//! list of recipients. A room holds no timer.

use super::{NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, NS_MUC_USER, NS_OCCUPANT_ID, send_el, send_raw};
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::modules::mam;
use crate::router::At;
use crate::server::Server;
use crate::services::{KIND_FANOUT, Spliced};
use crate::session::im::bounce_with;
use crate::stanza::{Condition, NS_CLIENT, NS_DELAY, NS_STANZAS, StanzaError, iq_result, split};
use crate::storage::ArchivedMessage;
use crate::xml::{Element, Node};
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use serde::{Deserialize, Serialize};
use starling_cluster::Envelope;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

const NS_DATA: &str = "jabber:x:data";
const NS_PING: &str = "urn:xmpp:ping";
const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";
const NS_REGISTER: &str = "jabber:iq:register";
const NS_MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";
const NS_VCARD: &str = crate::modules::vcard::NS_VCARD;

// ------------------------------------------------------------ records

/// A user's long-lived standing in a room (XEP-0045 §5.2), ordered by
/// privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn name(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// An occupant's role while in the room (XEP-0045 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    fn name(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }
}

/// A room's configuration (`muc#roomconfig`, XEP-0045 §15.5.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub desc: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// `Some`: password-protected.
    pub password: Option<String>,
    /// 0: no limit.
    pub max_users: u32,
    /// Real JIDs visible to anyone (non-anonymous), else to moderators.
    pub whois_anyone: bool,
    pub change_subject: bool,
    pub allow_pm: AllowPm,
    pub allow_invites: bool,
    /// Public logging (status 170); the room archives either way.
    pub logging: bool,
    /// Roles whose presence goes to the others
    /// (`muc#roomconfig_presencebroadcast`).
    #[serde(default = "all_roles")]
    pub presence_broadcast: Vec<Role>,
    /// Roles of occupants that may get the member list besides admins and
    /// owners (`muc#roomconfig_getmemberlist`; none by default).
    #[serde(default)]
    pub get_member_list: Vec<Role>,
    /// The room's language (`muc#roomconfig_lang`), "" when unset.
    #[serde(default)]
    pub lang: String,
    /// The room's associated pubsub node (`muc#roomconfig_pubsub`).
    #[serde(default)]
    pub pubsub: String,
    /// Most history messages sent on joining (`muc#maxhistoryfetch`);
    /// `None`: the service's limit.
    #[serde(default)]
    pub max_history: Option<u32>,
}

fn all_roles() -> Vec<Role> {
    vec![Role::Moderator, Role::Participant, Role::Visitor]
}

impl RoomConfig {
    fn new(server: &Server) -> Self {
        RoomConfig {
            name: String::new(),
            desc: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            max_users: server.config.muc.default_max_users,
            whois_anyone: false,
            change_subject: false,
            allow_pm: AllowPm::Anyone,
            allow_invites: false,
            logging: false,
            presence_broadcast: all_roles(),
            get_member_list: Vec::new(),
            lang: String::new(),
            pubsub: String::new(),
            max_history: None,
        }
    }
}

/// What the store keeps of a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub config: RoomConfig,
    /// Bare JID -> affiliation other than `none`.
    pub affiliations: BTreeMap<String, Affiliation>,
    pub subject: String,
    /// The nick that set the subject ("" : the room).
    pub subject_by: String,
    /// Created and not configured yet (XEP-0045 §10.1.2): only owners enter.
    pub locked: bool,
    /// Salt of the XEP-0421 occupant ids.
    pub salt: u64,
    /// Registered (reserved) nicks, bare JID -> nick (XEP-0045 §7.10).
    #[serde(default)]
    pub nicks: BTreeMap<String, String>,
    /// The room's vCard (XEP-0486 MUC avatars), as sent by an owner.
    #[serde(default)]
    pub vcard: Option<String>,
}

impl RoomRecord {
    /// The bare JID that registered `nick`, if one did.
    fn nick_owner(&self, nick: &str) -> Option<&str> {
        self.nicks
            .iter()
            .find(|(_, n)| n.as_str() == nick)
            .map(|(b, _)| b.as_str())
    }
}

impl RoomRecord {
    /// The affiliation of a bare JID (the service's admins own every room).
    pub fn affiliation(&self, server: &Server, bare: &str) -> Affiliation {
        if server.config.muc.admins.iter().any(|a| a == bare) {
            return Affiliation::Owner;
        }
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }
}

/// What the store keeps of an occupant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OccupantRecord {
    /// The real full JID (of its first session).
    pub jid: String,
    pub role: Role,
    /// The payload of its last presence (show, status, ...), serialised.
    pub presence: String,
    /// Its other sessions under the same nick (full JIDs of the same bare
    /// JID, XEP-0045 §7.2: one occupant, several clients).
    #[serde(default)]
    pub more: Vec<String>,
}

/// One client session of an occupant.
struct Session {
    /// Its real full JID.
    jid: String,
    /// Where it is (resolved at join; again after a failed send).
    at: Option<At>,
    /// A user of another domain: reached over federation.
    remote: bool,
    /// What the room sent while the session was held without a route (its
    /// node died; its client may resume it elsewhere): sent, in order,
    /// once it has a route again. At most `MISSED_MAX`, the latest.
    missed: VecDeque<Arc<str>>,
}

/// Stanzas a held session keeps (`Session::missed`); older ones are in
/// the room's archive.
const MISSED_MAX: usize = 100;

/// Where the session `full` of a lost node is now: its route, unless that
/// is still the route on a node whose lease lapsed (whose delivery stream
/// would drop what is sent).
fn live_route(server: &Server, full: &str) -> Option<At> {
    let (b, r) = split(full);
    let at = server.router.find(b, r?)?;
    match at {
        At::Node { node, .. } if !server.storage.store.live_nodes().contains(&node) => None,
        at => Some(at),
    }
}

impl Session {
    fn new(server: &Server, jid: String) -> Self {
        let (b, r) = split(&jid);
        let at = r.and_then(|r| server.router.find(b, r));
        let remote = crate::s2s::is_remote(server, &jid);
        Session {
            jid,
            at,
            remote,
            missed: VecDeque::new(),
        }
    }

    /// Keeps `xml` for a session held without a route; false if it is not
    /// held (nobody gets it).
    fn keep_missed(&mut self, server: &Server, xml: Arc<str>) -> bool {
        if !server.services.muc.held(&self.jid) {
            self.missed = VecDeque::new();
            return false;
        }
        if self.missed.len() == MISSED_MAX {
            self.missed.pop_front();
            metrics::counter!("starling_muc_held_dropped_total").increment(1);
        }
        self.missed.push_back(xml);
        true
    }

    /// Sends what the session missed while held, now that it has a route.
    fn send_missed(&mut self, server: &Server) {
        if self.missed.is_empty() {
            return;
        }
        let n = self.missed.len();
        for xml in std::mem::take(&mut self.missed) {
            super::send_raw(server, &self.jid, &xml);
        }
        tracing::info!(jid = %self.jid, n, "room stanzas held for a resumed session sent");
    }
}

/// An occupant in the room's memory: one nick, one bare JID, one or more
/// sessions (the first one's full JID is the one the room shows).
struct Occupant {
    /// Never empty.
    sessions: Vec<Session>,
    role: Role,
    /// Its last presence's payload (what others see), without MUC's `<x/>`.
    presence: Vec<Element>,
    /// Its XEP-0421 occupant id (a hash: made once).
    oid: String,
}

impl Occupant {
    /// The real full JID the room shows (its first session's).
    fn jid(&self) -> &str {
        &self.sessions[0].jid
    }

    fn bare(&self) -> &str {
        split(self.jid()).0
    }

    fn has(&self, full: &str) -> bool {
        self.sessions.iter().any(|s| s.jid == full)
    }

    fn record(&self) -> OccupantRecord {
        let mut p = String::new();
        for e in &self.presence {
            e.write_to(&mut p, "");
        }
        OccupantRecord {
            jid: self.jid().to_owned(),
            role: self.role,
            presence: p,
            more: self.sessions[1..].iter().map(|s| s.jid.clone()).collect(),
        }
    }
}

/// Sends `el` to every session of an occupant (serialised once when it
/// has several).
fn send_occ(server: &Server, o: &Occupant, el: Element) {
    match o.sessions.as_slice() {
        [one] => send_el(server, &one.jid, el),
        many => {
            let s = Spliced::of(&el);
            for one in many {
                send_raw(server, &one.jid, &s.to(&one.jid));
            }
        }
    }
}

// ------------------------------------------------------------ the actor

/// A stanza for the room (`to` the room or an occupant JID, `from` the
/// sender's real full JID).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct RoomStanza(pub Element);

/// Sessions that ended without telling the room (their node died).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct SessionsGone(pub Arc<Vec<String>>);

/// The node shuts down (and has no peers to run the room on).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Stop: the room moved to another node.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Stop;

pub struct Room {
    server: Arc<Server>,
    id: u64,
    /// Out while a batch is being handled.
    state: Option<Box<State>>,
    /// What arrived and waits for the room, in order: the mailbox is read
    /// while a batch runs, so what queues meanwhile is the next batch.
    queue: Vec<Work>,
    busy: bool,
    /// Asked to stop (moved away): stops once idle, handing on its queue.
    stopping: bool,
    /// A look for the routes of held sessions that missed stanzas is
    /// scheduled (`Work::Missed`).
    missed_check: bool,
}

/// One thing for the room to do, in arrival order.
pub enum Work {
    Stanza(Element),
    Gone(Arc<Vec<String>>),
    Shutdown,
    /// Sends held sessions that have a route again what they missed.
    Missed,
}

/// How often a room looks for the routes of held sessions that missed
/// stanzas (a resumed session gets them within this, or with the room's
/// next stanza).
const MISSED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The most stanzas one batch takes (one archive write for its run of
/// messages).
const MAX_BATCH: usize = 256;

impl Room {
    pub fn new(server: Arc<Server>, jid: String, id: u64) -> Self {
        Room {
            server,
            id,
            state: Some(Box::new(State {
                jid,
                actor: id,
                rec: None,
                occupants: BTreeMap::new(),
                by_jid: HashMap::new(),
                loaded: false,
                epoch: 0,
                gone: false,
                missed: false,
            })),
            queue: Vec::new(),
            busy: false,
            stopping: false,
            missed_check: false,
        }
    }

    /// Runs what is queued, one batch at a time, unless a batch runs.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        if self.stopping || self.state.as_ref().is_some_and(|s| s.gone) {
            self.hand_on(ctx);
            return;
        }
        if self.queue.is_empty() {
            return;
        }
        let Some(mut state) = self.state.take() else {
            return;
        };
        let n = self.queue.len().min(MAX_BATCH);
        let batch: Vec<Work> = self.queue.drain(..n).collect();
        self.busy = true;
        let server = self.server.clone();
        ctx.spawn(
            async move {
                state.run(&server, batch).await;
                state
            }
            .into_actor(self)
            .map(|state, act, ctx| {
                if state.missed && !act.missed_check {
                    act.missed_check = true;
                    ctx.run_later(MISSED_EVERY, |act, ctx| {
                        act.missed_check = false;
                        act.queue.push(Work::Missed);
                        act.kick(ctx);
                    });
                }
                act.state = Some(state);
                act.busy = false;
                act.kick(ctx);
            }),
        );
    }

    /// Stops: this actor is forgotten (nothing new reaches it), what it
    /// still holds goes to the room's current actor, here or on its owner.
    fn hand_on(&mut self, ctx: &mut Context<Self>) {
        let server = self.server.clone();
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let jid = state.jid.clone();
        server.services.muc.forget(&jid, self.id);
        let queued = std::mem::take(&mut self.queue);
        if !queued.is_empty() {
            let owner = crate::services::owner(&server, &jid);
            let me = server.storage.store.node_id();
            for w in queued {
                if let Work::Stanza(el) = w {
                    if owner == me {
                        server.services.muc.deliver(&server, &jid, el);
                    } else {
                        crate::services::forward(&server, owner, &el);
                    }
                }
            }
        }
        ctx.stop();
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(s) = &self.state {
            self.server.services.muc.forget(&s.jid, self.id);
        }
    }
}

impl Handler<RoomStanza> for Room {
    type Result = ();

    fn handle(&mut self, msg: RoomStanza, ctx: &mut Context<Self>) {
        self.queue.push(Work::Stanza(msg.0));
        self.kick(ctx);
    }
}

impl Handler<SessionsGone> for Room {
    type Result = ();

    fn handle(&mut self, msg: SessionsGone, ctx: &mut Context<Self>) {
        self.queue.push(Work::Gone(msg.0));
        self.kick(ctx);
    }
}

impl Handler<Shutdown> for Room {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.queue.push(Work::Shutdown);
        self.kick(ctx);
    }
}

impl Handler<Stop> for Room {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopping = true;
        self.kick(ctx);
    }
}

// ------------------------------------------------------------ state

struct State {
    /// The room's bare JID.
    jid: String,
    /// The id of the actor that holds it.
    actor: u64,
    /// `None`: the room does not exist (yet).
    rec: Option<RoomRecord>,
    occupants: BTreeMap<String, Occupant>,
    /// Real full JID -> nick.
    by_jid: HashMap<String, String>,
    loaded: bool,
    /// The membership epoch (`Services::live_epoch`) the state was loaded in.
    epoch: u64,
    /// Destroyed: the actor stops.
    gone: bool,
    /// Some held session keeps what it missed (`Session::missed`).
    missed: bool,
}

fn err(c: Condition) -> StanzaError {
    StanzaError::new(c)
}

/// The status codes that announce a configuration change (XEP-0045
/// §10.2.1): 170/171 logging on/off and 172/173 non-/semi-anonymous for
/// what touches privacy, 104 for any other change; none when nothing
/// changed. (The room has no fully-anonymous mode (174) and no setting
/// for showing unavailable members (102/103).)
fn config_change_codes(old: &RoomConfig, new: &RoomConfig) -> Vec<u16> {
    let mut codes = Vec::new();
    let privacy_aside = RoomConfig {
        whois_anyone: old.whois_anyone,
        logging: old.logging,
        ..new.clone()
    };
    if privacy_aside != *old {
        codes.push(104);
    }
    if new.logging != old.logging {
        codes.push(if new.logging { 170 } else { 171 });
    }
    if new.whois_anyone != old.whois_anyone {
        codes.push(if new.whois_anyone { 172 } else { 173 });
    }
    codes
}

fn status(code: u16) -> Element {
    Element::new("status", NS_MUC_USER).attr("code", code.to_string())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl State {
    /// Runs a batch in order. Consecutive groupchat messages that pass
    /// the room's checks are archived together (one durable write), then
    /// reflected in order; everything else runs one by one.
    async fn run(&mut self, server: &Server, batch: Vec<Work>) {
        let mut run: Vec<Element> = Vec::new();
        for w in batch {
            if self.gone {
                self.flush(server, &mut run).await;
                if let Work::Stanza(el) = w {
                    self.redirect(server, el);
                }
                continue;
            }
            match w {
                Work::Gone(list) => {
                    self.flush(server, &mut run).await;
                    self.sessions_gone(server, &list).await;
                }
                Work::Shutdown => {
                    self.flush(server, &mut run).await;
                    self.system_shutdown(server);
                }
                Work::Missed => {
                    self.flush(server, &mut run).await;
                    self.send_missed(server);
                }
                Work::Stanza(el) => {
                    if self.loaded
                        && server.services.live_epoch() == self.epoch
                        && self.plain_groupchat(&el)
                    {
                        run.push(el);
                        continue;
                    }
                    self.flush(server, &mut run).await;
                    self.handle(server, el).await;
                }
            }
        }
        self.flush(server, &mut run).await;
    }

    /// Sends the held sessions that have a route again what they missed;
    /// forgets it for those no longer held.
    fn send_missed(&mut self, server: &Server) {
        let mut left = false;
        for one in self
            .occupants
            .values_mut()
            .flat_map(|o| o.sessions.iter_mut())
            .filter(|one| !one.missed.is_empty())
        {
            one.at = live_route(server, &one.jid);
            if one.at.is_some() {
                one.send_missed(server);
            } else if server.services.muc.held(&one.jid) {
                left = true;
            } else {
                one.missed = VecDeque::new();
            }
        }
        self.missed = left;
    }

    /// A stanza that reached this room after it was destroyed or moved:
    /// to the room's current actor, here or on its owner.
    fn redirect(&self, server: &Server, el: Element) {
        let owner = crate::services::owner(server, &self.jid);
        if owner == server.storage.store.node_id() {
            server.services.muc.forget(&self.jid, self.actor);
            server.services.muc.deliver(server, &self.jid, el);
        } else {
            crate::services::forward(server, owner, &el);
        }
    }

    /// Every occupant leaves with status 332 (the service shuts down).
    fn system_shutdown(&mut self, server: &Server) {
        for (nick, o) in &self.occupants {
            let aff = self.affiliation(server, o.bare());
            let mut p = self.unavailable_item(nick, None, aff, &[332], &o.oid);
            if let Some(x) = p.get_child_mut("x", NS_MUC_USER) {
                x.children.push(Node::Element(status(110)));
            }
            send_occ(server, o, p);
        }
        self.occupants.clear();
        self.by_jid.clear();
        self.loaded = false;
    }

    async fn sessions_gone(&mut self, server: &Server, list: &[String]) {
        if !self.loaded {
            return;
        }
        for jid in list {
            if let Some(nick) = self.by_jid.get(jid).cloned() {
                let un = Element::new("presence", NS_CLIENT)
                    .attr("from", jid.as_str())
                    .attr("type", "unavailable");
                if let Err(e) = self.leave_session(server, &nick, &un, &[]).await {
                    tracing::debug!(error = ?e.condition, "occupant of a lost node not let go");
                }
            }
            if self.gone {
                return;
            }
        }
    }

    /// A groupchat message with a body from an occupant who may speak
    /// (what the batch archives together); not one that asks not to be
    /// stored (XEP-0334), which takes the path that honours that.
    fn plain_groupchat(&self, el: &Element) -> bool {
        el.name == "message"
            && el.get_attr("type") == Some("groupchat")
            && el.get_attr("to").is_some_and(|t| !t.contains('/'))
            && el.has_child("body", NS_CLIENT)
            && mam::archivable_payload(el)
            && el
                .get_attr("from")
                .and_then(|f| self.by_jid.get(f))
                .and_then(|n| self.occupants.get(n))
                .is_some_and(|o| o.role >= Role::Participant)
    }

    /// Archives a run of plain groupchat messages in one write, then
    /// reflects them in order.
    async fn flush(&mut self, server: &Server, run: &mut Vec<Element>) {
        if run.is_empty() {
            return;
        }
        let msgs = std::mem::take(run);
        let mut outs: Vec<(Element, String, Option<&str>)> = Vec::with_capacity(msgs.len());
        for el in &msgs {
            let from = el.get_attr("from").unwrap_or_default();
            let Some(nick) = self.by_jid.get(from).cloned() else {
                continue;
            };
            let mut out = reflected(el, &self.occupant_jid(&nick));
            out.children.push(Node::Element(
                Element::new("occupant-id", NS_OCCUPANT_ID)
                    .attr("id", self.occupants[&nick].oid.as_str()),
            ));
            outs.push((out, nick, Some(from)));
        }
        match self.archive_all(server, &mut outs).await {
            Ok(spliced) => {
                for s in &spliced {
                    self.fan_out(server, s);
                }
                crate::hot_counter!("starling_muc_messages_total").increment(spliced.len() as u64);
            }
            Err(e) => {
                for el in &msgs {
                    bounce_with(server, el, &e);
                }
            }
        }
    }

    async fn handle(&mut self, server: &Server, el: Element) {
        let epoch = server.services.live_epoch();
        if self.loaded && epoch != self.epoch {
            // The membership changed since the state was loaded: the room
            // may have run on another node meanwhile, or run there now.
            let owner = crate::services::owner(server, &self.jid);
            if owner != server.storage.store.node_id() {
                crate::services::forward(server, owner, &el);
                self.gone = true;
                return;
            }
            self.occupants.clear();
            self.by_jid.clear();
            self.rec = None;
            self.loaded = false;
        }
        if !self.loaded {
            self.epoch = epoch;
            if let Err(e) = self.load(server).await {
                tracing::warn!(room = %self.jid, error = %e, "room state not loaded");
                bounce_with(server, &el, &e.into());
                return;
            }
            self.loaded = true;
        }
        let r = match el.name.as_str() {
            "presence" => self.presence(server, &el).await,
            "message" => self.message(server, &el).await,
            "iq" => self.iq(server, &el).await,
            _ => Ok(()),
        };
        if let Err(e) = r {
            bounce_with(server, &el, &e);
        }
    }

    /// Reads the room and its occupants from the store (this replica
    /// caught up first); occupants whose session is gone are let go.
    async fn load(&mut self, server: &Server) -> Result<(), starling_cluster::StoreError> {
        let store = &server.storage.store;
        if store.has_peers() {
            store.read_barrier().await?;
        }
        self.rec = server.storage.muc_room(&self.jid)?;
        if self.rec.is_none() {
            return Ok(());
        }
        let stored: Vec<(String, OccupantRecord)> = server.storage.muc_occupants(&self.jid)?;
        let mut gone = Vec::new();
        let mut fewer: Vec<String> = Vec::new();
        for (nick, o) in stored {
            let bare = split(&o.jid).0.to_owned();
            let known = 1 + o.more.len();
            let sessions: Vec<Session> = std::iter::once(o.jid)
                .chain(o.more)
                .map(|j| Session::new(server, j))
                // A session of a lost node that may be resumed elsewhere
                // stays (found again once it has a route).
                .filter(|s| s.at.is_some() || server.services.muc.held(&s.jid))
                .collect();
            if sessions.is_empty() {
                let oid = self.occupant_id(&bare);
                gone.push((nick, oid));
                continue;
            }
            if sessions.len() < known {
                fewer.push(nick.clone());
            }
            let presence = parse_payload(&o.presence);
            let oid = self.occupant_id(&bare);
            for s in &sessions {
                self.by_jid.insert(s.jid.clone(), nick.clone());
            }
            self.occupants.insert(
                nick,
                Occupant {
                    sessions,
                    role: o.role,
                    presence,
                    oid,
                },
            );
        }
        if !fewer.is_empty() {
            let records: Vec<(String, OccupantRecord)> = fewer
                .iter()
                .map(|n| (n.clone(), self.occupants[n].record()))
                .collect();
            let changes: Vec<(&str, Option<&OccupantRecord>)> =
                records.iter().map(|(n, r)| (n.as_str(), Some(r))).collect();
            server
                .storage
                .muc_write::<RoomRecord, _>(&self.jid, None, &changes)
                .await?;
        }
        if !gone.is_empty() {
            tracing::info!(room = %self.jid, n = gone.len(), "occupants whose sessions are gone left");
            let changes: Vec<(&str, Option<&OccupantRecord>)> =
                gone.iter().map(|(n, _)| (n.as_str(), None)).collect();
            server
                .storage
                .muc_write::<RoomRecord, _>(&self.jid, None, &changes)
                .await?;
            for (nick, oid) in &gone {
                let un = self.unavailable_item(nick, None, Affiliation::None, &[], oid);
                self.broadcast_el(server, un);
            }
            if self.occupants.is_empty() && self.rec.as_ref().is_some_and(|r| !r.config.persistent)
            {
                server.storage.muc_destroy(&self.jid).await?;
                self.rec = None;
            }
        }
        Ok(())
    }

    fn affiliation(&self, server: &Server, bare: &str) -> Affiliation {
        self.rec
            .as_ref()
            .map_or(Affiliation::None, |r| r.affiliation(server, bare))
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    fn occupant_id(&self, bare: &str) -> String {
        use sha2::Digest;
        let salt = self.rec.as_ref().map_or(0, |r| r.salt);
        let mut h = sha2::Sha256::new();
        h.update(salt.to_be_bytes());
        h.update(self.jid.as_bytes());
        h.update([0]);
        h.update(bare.as_bytes());
        b64(&h.finalize()[..18])
    }

    fn config(&self) -> Option<&RoomConfig> {
        self.rec.as_ref().map(|r| &r.config)
    }

    fn whois_anyone(&self) -> bool {
        self.config().is_some_and(|c| c.whois_anyone)
    }

    /// Whether the presence of an occupant of `role` goes to the others
    /// (`muc#roomconfig_presencebroadcast`).
    fn broadcasts(&self, role: Role) -> bool {
        self.config()
            .is_none_or(|c| c.presence_broadcast.contains(&role))
    }

    /// The role a user of `aff` gets on entering.
    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config().is_some_and(|c| c.moderated) => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    async fn save(
        &self,
        server: &Server,
        record: bool,
        occupants: &[(&str, Option<OccupantRecord>)],
    ) -> Result<(), StanzaError> {
        let changes: Vec<(&str, Option<&OccupantRecord>)> =
            occupants.iter().map(|(n, o)| (*n, o.as_ref())).collect();
        server
            .storage
            .muc_write(
                &self.jid,
                if record { self.rec.as_ref() } else { None },
                &changes,
            )
            .await
            .map_err(StanzaError::from)
    }

    // -------------------------------------------------------- presence

    /// An occupant's presence as `to_mod` (a moderator, or anyone in a
    /// non-anonymous room: with the real JID) or not sees it.
    fn presence_of(&self, server: &Server, nick: &str, with_jid: bool) -> Element {
        let occ = &self.occupants[nick];
        let aff = self.affiliation(server, occ.bare());
        let mut p = Element::new("presence", NS_CLIENT).attr("from", self.occupant_jid(nick));
        p.children = occ.presence.iter().cloned().map(Node::Element).collect();
        let mut item = Element::new("item", NS_MUC_USER)
            .attr("affiliation", aff.name())
            .attr("role", occ.role.name());
        if with_jid {
            item.set_attr("jid", occ.jid());
        }
        p = p.child(Element::new("x", NS_MUC_USER).child(item));
        p.child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", occ.oid.as_str()))
    }

    /// Sends `nick`'s presence (with `codes`, and `extra` in its `<x/>`) to
    /// every occupant; its own copy gets 110 (and `self_codes`).
    fn broadcast_presence(
        &self,
        server: &Server,
        nick: &str,
        codes: &[u16],
        self_codes: &[u16],
        extra: Option<Element>,
    ) {
        let shown = self.broadcasts(self.occupants[nick].role);
        for (n, o) in &self.occupants {
            if n != nick && !shown {
                continue;
            }
            let with_jid = self.whois_anyone() || o.role == Role::Moderator;
            let mut p = self.presence_of(server, nick, with_jid);
            if let Some(x) = p.get_child_mut("x", NS_MUC_USER) {
                if let Some(e) = &extra
                    && let Some(Node::Element(item)) = x.children.first_mut()
                {
                    item.children.push(Node::Element(e.clone()));
                }
                for c in codes {
                    x.children.push(Node::Element(status(*c)));
                }
                if n == nick {
                    for c in self_codes {
                        x.children.push(Node::Element(status(*c)));
                    }
                    x.children.push(Node::Element(status(110)));
                }
            }
            send_occ(server, o, p);
        }
    }

    /// The unavailable presence of a leaving occupant `nick` (already
    /// removed or not) with `codes`; XEP-0421 §4: every presence the room
    /// sends carries the occupant's id, so does this one.
    fn unavailable_item(
        &self,
        nick: &str,
        jid: Option<&str>,
        aff: Affiliation,
        codes: &[u16],
        oid: &str,
    ) -> Element {
        let mut item = Element::new("item", NS_MUC_USER)
            .attr("affiliation", aff.name())
            .attr("role", "none");
        if let Some(j) = jid {
            item.set_attr("jid", j);
        }
        let mut x = Element::new("x", NS_MUC_USER).child(item);
        for c in codes {
            x = x.child(status(*c));
        }
        Element::new("presence", NS_CLIENT)
            .attr("from", self.occupant_jid(nick))
            .attr("type", "unavailable")
            .child(x)
            .child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", oid))
    }

    /// Sends `el` (no `to`) to every occupant.
    fn broadcast_el(&self, server: &Server, el: Element) {
        let s = Spliced::of(&el);
        for o in self.occupants.values() {
            for one in &o.sessions {
                send_raw(server, &one.jid, &s.to(&one.jid));
            }
        }
    }

    async fn presence(&mut self, server: &Server, el: &Element) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let to = el.get_attr("to").unwrap_or_default();
        let nick = split(to).1.map(str::to_owned);
        let current = self.by_jid.get(&from).cloned();
        match el.get_attr("type") {
            None => {}
            Some("unavailable") => {
                if let Some(cur) = current {
                    self.leave_session(server, &cur, el, &[]).await?;
                }
                return Ok(());
            }
            Some("error") => {
                // XEP-0045 §7.2.? : an error from an occupant's client means
                // it is gone (status 333).
                if let Some(cur) = current {
                    self.leave_session(server, &cur, el, &[333]).await?;
                }
                return Ok(());
            }
            // Subscriptions and probes to a room: nothing to do.
            _ => return Ok(()),
        }
        let Some(nick) = nick.filter(|n| valid_nick(n)) else {
            return Err(StanzaError::with_text(
                Condition::JidMalformed,
                "a room nickname is required",
            ));
        };
        match current {
            Some(cur) if cur == nick && el.has_child("x", NS_MUC) => {
                self.rejoin(server, &from, &nick, el).await
            }
            Some(cur) if cur == nick => self.update_presence(server, &nick, el).await,
            Some(cur) => self.change_nick(server, &cur, &nick, el).await,
            None => self.join(server, &from, &nick, el).await,
        }
    }

    async fn join(
        &mut self,
        server: &Server,
        from: &str,
        nick: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let bare = split(from).0.to_owned();
        let x = el.get_child("x", NS_MUC);
        let mut created = false;
        if self.rec.is_none() {
            let allowed = match server.config.muc.create {
                crate::config::MucCreate::Anyone => {
                    let domain = bare.rsplit_once('@').map_or("", |(_, d)| d);
                    server.is_local(domain)
                }
                crate::config::MucCreate::Admins => server.config.muc.admins.contains(&bare),
            };
            if !allowed {
                return Err(StanzaError::with_text(
                    Condition::NotAllowed,
                    "room creation is restricted",
                ));
            }
            let mut affiliations = BTreeMap::new();
            affiliations.insert(bare.clone(), Affiliation::Owner);
            self.rec = Some(RoomRecord {
                config: RoomConfig::new(server),
                affiliations,
                subject: String::new(),
                subject_by: String::new(),
                // A client that does not speak MUC gets an instant room
                // (XEP-0045 §10.1.1); others configure it first.
                locked: x.is_some(),
                salt: rand::random(),
                nicks: BTreeMap::new(),
                vcard: None,
            });
            created = true;
        }
        let rec = self.rec.as_ref().expect("room exists");
        let aff = rec.affiliation(server, &bare);
        if rec.locked && !created && aff != Affiliation::Owner {
            return Err(StanzaError::with_text(
                Condition::ItemNotFound,
                "the room is locked until its owner configures it",
            ));
        }
        if aff == Affiliation::Outcast {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "you are banned",
            ));
        }
        if rec.config.members_only && aff < Affiliation::Member {
            return Err(StanzaError::with_text(
                Condition::RegistrationRequired,
                "the room is members-only",
            ));
        }
        if let Some(pw) = &rec.config.password
            && !created
        {
            let given = x.and_then(|x| x.child_text("password", NS_MUC));
            if given.as_deref() != Some(pw.as_str()) {
                return Err(StanzaError::with_text(
                    Condition::NotAuthorized,
                    "a password is required",
                ));
            }
        }
        // Another client of the occupant's own bare JID joins under its
        // nick: one more session of the same occupant (as ejabberd and
        // Prosody allow); anyone else gets <conflict/>.
        match self.occupants.get(nick) {
            Some(o) if o.bare() == bare => {
                return self.join_session(server, from, nick, el).await;
            }
            Some(_) => {
                return Err(StanzaError::with_text(
                    Condition::Conflict,
                    "that nickname is taken",
                ));
            }
            None => {}
        }
        if rec.nick_owner(nick).is_some_and(|b| b != bare) {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "that nickname is reserved",
            ));
        }
        if rec.config.max_users > 0
            && self.occupants.len() >= rec.config.max_users as usize
            && aff < Affiliation::Admin
        {
            // XEP-0045 §7.2.10: of type "wait" (someone may leave).
            let mut e = StanzaError::with_text(Condition::ServiceUnavailable, "the room is full");
            e.kind = Some("wait");
            return Err(e);
        }
        let role = self.default_role(aff);
        let occ = Occupant {
            sessions: vec![Session::new(server, from.to_owned())],
            role,
            presence: presence_payload(el),
            oid: self.occupant_id(&bare),
        };
        let record = occ.record();
        self.occupants.insert(nick.to_owned(), occ);
        self.by_jid.insert(from.to_owned(), nick.to_owned());
        if let Err(e) = self.save(server, created, &[(nick, Some(record))]).await {
            self.occupants.remove(nick);
            self.by_jid.remove(from);
            if created {
                self.rec = None;
            }
            return Err(e);
        }
        metrics::counter!("starling_muc_joins_total").increment(1);
        // Existing occupants to the newcomer first.
        self.send_occupants_to(server, from, nick);
        // Its own presence to everyone, itself last with its codes.
        let self_codes = self.self_codes(created, renamed(el, nick));
        self.broadcast_presence(server, nick, &[], &self_codes, None);
        if !created {
            self.send_history(server, from, x.and_then(|x| x.get_child("history", NS_MUC)))?;
        }
        self.send_subject(server, from);
        Ok(())
    }

    /// The presence of every other occupant, to the session `to` of
    /// `nick` (the first thing a joining session gets, XEP-0045 §7.2.3).
    fn send_occupants_to(&self, server: &Server, to: &str, nick: &str) {
        let moderator = self
            .occupants
            .get(nick)
            .is_some_and(|o| o.role == Role::Moderator);
        for (n, o) in &self.occupants {
            if n != nick && self.broadcasts(o.role) {
                let p = self.presence_of(server, n, moderator || self.whois_anyone());
                send_el(server, to, p);
            }
        }
    }

    /// `nick` became a moderator or stopped being one (its role was
    /// `before`): in a room where only moderators see real JIDs, its
    /// sessions get every other occupant's presence again, with or
    /// without them (as Prosody does; what a moderator sees changed).
    fn moderator_view_changed(&self, server: &Server, nick: &str, before: Role) {
        let Some(o) = self.occupants.get(nick) else {
            return;
        };
        if self.whois_anyone() || (before == Role::Moderator) == (o.role == Role::Moderator) {
            return;
        }
        for s in &o.sessions {
            self.send_occupants_to(server, &s.jid, nick);
        }
    }

    /// The status codes of a joining occupant's own presence (besides 110);
    /// `renamed`: its nick is not the one it asked for (210).
    fn self_codes(&self, created: bool, renamed: bool) -> Vec<u16> {
        let mut self_codes = Vec::new();
        if self.whois_anyone() {
            self_codes.push(100);
        }
        if self.config().is_some_and(|c| c.logging) {
            self_codes.push(170);
        }
        if created {
            self_codes.push(201);
        }
        if renamed {
            self_codes.push(210);
        }
        self_codes
    }

    /// Another session of the occupant `nick` joins it: it gets what a
    /// joining user gets (the others' presence, its own with 110, history,
    /// subject); the others see no change (the occupant is the same).
    async fn join_session(
        &mut self,
        server: &Server,
        from: &str,
        nick: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let x = el.get_child("x", NS_MUC);
        let occ = self.occupants.get_mut(nick).expect("occupant");
        occ.sessions.push(Session::new(server, from.to_owned()));
        let record = occ.record();
        self.by_jid.insert(from.to_owned(), nick.to_owned());
        if let Err(e) = self.save(server, false, &[(nick, Some(record))]).await {
            if let Some(o) = self.occupants.get_mut(nick) {
                o.sessions.retain(|s| s.jid != from);
            }
            self.by_jid.remove(from);
            return Err(e);
        }
        metrics::counter!("starling_muc_joins_total").increment(1);
        self.send_occupants_to(server, from, nick);
        let occ = &self.occupants[nick];
        let mut p = self.presence_of(server, nick, true);
        if let Some(x) = p.get_child_mut("x", NS_MUC_USER) {
            for c in self.self_codes(false, renamed(el, nick)) {
                x.children.push(Node::Element(status(c)));
            }
            x.children.push(Node::Element(status(110)));
        }
        debug_assert!(occ.has(from));
        send_el(server, from, p);
        self.send_history(server, from, x.and_then(|x| x.get_child("history", NS_MUC)))?;
        self.send_subject(server, from);
        Ok(())
    }

    /// The subject, to a joining session, always (XEP-0045 §7.2.15), even
    /// an empty one.
    fn send_subject(&self, server: &Server, from: &str) {
        let rec = self.rec.as_ref().expect("room exists");
        let subject_from = if rec.subject_by.is_empty() {
            self.jid.clone()
        } else {
            self.occupant_jid(&rec.subject_by)
        };
        let subj = Element::new("message", NS_CLIENT)
            .attr("type", "groupchat")
            .attr("from", subject_from)
            .attr("id", crate::stream::new_id())
            .child(Element::new("subject", NS_CLIENT).text(rec.subject.clone()));
        send_el(server, from, subj);
    }

    /// A session already in the room under `nick` joins it again (a client
    /// that lost track, e.g. after a reconnection the server did not
    /// notice): it gets the whole join answer again (the others'
    /// presence, its own with its codes and 110, history, subject) and the
    /// others its presence as an update, as Prosody and ejabberd do.
    async fn rejoin(
        &mut self,
        server: &Server,
        from: &str,
        nick: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let occ = self.occupants.get_mut(nick).expect("occupant");
        occ.presence = presence_payload(el);
        if let Some(one) = occ.sessions.iter_mut().find(|s| s.jid == from) {
            one.at = None;
        }
        let record = occ.record();
        self.save(server, false, &[(nick, Some(record))]).await?;
        self.send_occupants_to(server, from, nick);
        let codes = self.self_codes(false, renamed(el, nick));
        self.broadcast_presence(server, nick, &[], &codes, None);
        let x = el.get_child("x", NS_MUC);
        self.send_history(server, from, x.and_then(|x| x.get_child("history", NS_MUC)))?;
        self.send_subject(server, from);
        Ok(())
    }

    async fn update_presence(
        &mut self,
        server: &Server,
        nick: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let payload = presence_payload(el);
        let from = el.get_attr("from").unwrap_or_default();
        let occ = self.occupants.get_mut(nick).expect("occupant");
        occ.presence = payload;
        // Where the session is gets looked up again at the next fan-out
        // (it may have moved to another node, XEP-0198).
        if let Some(one) = occ.sessions.iter_mut().find(|s| s.jid == from) {
            one.at = None;
        }
        let record = occ.record();
        self.save(server, false, &[(nick, Some(record))]).await?;
        self.broadcast_presence(server, nick, &[], &[], None);
        Ok(())
    }

    async fn change_nick(
        &mut self,
        server: &Server,
        old: &str,
        new: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default();
        let reserved = self.rec.as_ref().and_then(|r| r.nick_owner(new));
        if self.occupants.contains_key(new) || reserved.is_some_and(|b| b != split(from).0) {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "that nickname is taken",
            ));
        }
        if self
            .occupants
            .get(old)
            .is_some_and(|o| o.sessions.len() > 1)
        {
            return self.split_session(server, old, new, el).await;
        }
        let mut occ = self.occupants.remove(old).expect("occupant");
        occ.presence = presence_payload(el);
        let aff = self.affiliation(server, occ.bare());
        let jid = occ.jid().to_owned();
        let record = occ.record();
        let shown = self.broadcasts(occ.role);
        // Unavailable from the old nick with 303 and the new nick.
        for o in self.occupants.values().chain(std::iter::once(&occ)) {
            let own = o.has(&jid);
            if !own && !shown {
                continue;
            }
            let with_jid = self.whois_anyone() || o.role == Role::Moderator;
            let mut item = Element::new("item", NS_MUC_USER)
                .attr("affiliation", aff.name())
                .attr("role", occ.role.name())
                .attr("nick", new);
            if with_jid {
                item.set_attr("jid", jid.as_str());
            }
            let mut x = Element::new("x", NS_MUC_USER)
                .child(item)
                .child(status(303));
            if own {
                x = x.child(status(110));
            }
            let p = Element::new("presence", NS_CLIENT)
                .attr("from", self.occupant_jid(old))
                .attr("type", "unavailable")
                .child(x)
                .child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", occ.oid.as_str()));
            send_occ(server, o, p);
        }
        self.occupants.insert(new.to_owned(), occ);
        self.by_jid.insert(jid, new.to_owned());
        self.save(server, false, &[(old, None), (new, Some(record))])
            .await?;
        // The new nick as the service made it (§7.6): 210 when it is not
        // the one asked for.
        let codes: &[u16] = if renamed(el, new) { &[210] } else { &[] };
        self.broadcast_presence(server, new, &[], codes, None);
        Ok(())
    }

    /// One session of an occupant with several takes another nick: it
    /// leaves the old one (to it: 303, 110), which stays with the other
    /// sessions, and is a new occupant under the new nick.
    async fn split_session(
        &mut self,
        server: &Server,
        old: &str,
        new: &str,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let occ = self.occupants.get_mut(old).expect("occupant");
        let Some(i) = occ.sessions.iter().position(|s| s.jid == from) else {
            return Err(err(Condition::InternalServerError));
        };
        let session = occ.sessions.remove(i);
        let (role, oid) = (occ.role, occ.oid.clone());
        let old_record = occ.record();
        let aff = self.affiliation(server, split(&from).0);
        let moved = Occupant {
            sessions: vec![session],
            role,
            presence: presence_payload(el),
            oid: oid.clone(),
        };
        let new_record = moved.record();
        self.occupants.insert(new.to_owned(), moved);
        self.by_jid.insert(from.clone(), new.to_owned());
        self.save(
            server,
            false,
            &[(old, Some(old_record)), (new, Some(new_record))],
        )
        .await?;
        let item = Element::new("item", NS_MUC_USER)
            .attr("affiliation", aff.name())
            .attr("role", role.name())
            .attr("nick", new)
            .attr("jid", from.as_str());
        let p = Element::new("presence", NS_CLIENT)
            .attr("from", self.occupant_jid(old))
            .attr("type", "unavailable")
            .child(
                Element::new("x", NS_MUC_USER)
                    .child(item)
                    .child(status(303))
                    .child(status(110)),
            )
            .child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", oid));
        send_el(server, &from, p);
        // The new nick as the service made it (§7.6): 210 when it is not
        // the one asked for.
        let codes: &[u16] = if renamed(el, new) { &[210] } else { &[] };
        self.broadcast_presence(server, new, &[], codes, None);
        Ok(())
    }

    /// The session `el` is from leaves `nick`: the occupant leaves with
    /// its last session; before that only the session is told (110).
    async fn leave_session(
        &mut self,
        server: &Server,
        nick: &str,
        el: &Element,
        codes: &[u16],
    ) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default();
        let Some(occ) = self.occupants.get_mut(nick) else {
            return Ok(());
        };
        if occ.sessions.len() < 2 {
            return self.leave(server, nick, el, codes).await;
        }
        let Some(i) = occ.sessions.iter().position(|s| s.jid == from) else {
            return Ok(());
        };
        let gone = occ.sessions.remove(i);
        let record = occ.record();
        let oid = occ.oid.clone();
        self.by_jid.remove(&gone.jid);
        let aff = self.affiliation(server, split(&gone.jid).0);
        let mut p = self.unavailable_item(nick, Some(&gone.jid), aff, codes, &oid);
        if let Some(x) = p.get_child_mut("x", NS_MUC_USER) {
            x.children.push(Node::Element(status(110)));
        }
        send_el(server, &gone.jid, p);
        self.save(server, false, &[(nick, Some(record))]).await
    }

    /// `nick` leaves (its own unavailable presence, or `codes` say why).
    async fn leave(
        &mut self,
        server: &Server,
        nick: &str,
        el: &Element,
        codes: &[u16],
    ) -> Result<(), StanzaError> {
        let Some(occ) = self.occupants.remove(nick) else {
            return Ok(());
        };
        for s in &occ.sessions {
            self.by_jid.remove(&s.jid);
        }
        let aff = self.affiliation(server, occ.bare());
        let payload: Vec<Element> = el
            .elements()
            .filter(|e| e.is("status", NS_CLIENT))
            .cloned()
            .collect();
        let shown = self.broadcasts(occ.role);
        for (o, own) in self
            .occupants
            .values()
            .map(|o| (o, false))
            .chain(std::iter::once((&occ, true)))
        {
            if !own && !shown {
                continue;
            }
            let with_jid = own || self.whois_anyone() || o.role == Role::Moderator;
            let mut p =
                self.unavailable_item(nick, with_jid.then_some(occ.jid()), aff, codes, &occ.oid);
            for s in &payload {
                p.children.insert(0, Node::Element(s.clone()));
            }
            if own && let Some(x) = p.get_child_mut("x", NS_MUC_USER) {
                x.children.push(Node::Element(status(110)));
            }
            send_occ(server, o, p);
        }
        self.after_leave(server, &[nick]).await
    }

    /// Writes occupants' departures; an empty temporary room goes.
    async fn after_leave(&mut self, server: &Server, nicks: &[&str]) -> Result<(), StanzaError> {
        if self.occupants.is_empty() && self.config().is_some_and(|c| !c.persistent) {
            server.storage.muc_destroy(&self.jid).await?;
            self.rec = None;
            self.gone = true;
            return Ok(());
        }
        let changes: Vec<(&str, Option<OccupantRecord>)> =
            nicks.iter().map(|n| (*n, None)).collect();
        self.save(server, false, &changes).await
    }

    // -------------------------------------------------------- history

    fn send_history(
        &self,
        server: &Server,
        to: &str,
        history: Option<&Element>,
    ) -> Result<(), StanzaError> {
        let max = self
            .config()
            .and_then(|c| c.max_history)
            .map_or(server.config.muc.max_history, |m| {
                (m as usize).min(server.config.muc.max_history)
            });
        let attr_num = |name: &str| -> Option<usize> {
            history
                .and_then(|h| h.get_attr(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let maxstanzas = attr_num("maxstanzas").map_or(max, |n| n.min(max));
        if maxstanzas == 0 {
            return Ok(());
        }
        let maxchars = attr_num("maxchars");
        if maxchars == Some(0) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_micros();
        // Saturating: a huge `seconds` means "all of it", not an overflow.
        let mut lo_micros = attr_num("seconds").map(|s| {
            now.saturating_sub(
                i64::try_from(s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            )
        });
        if let Some(since) = history.and_then(|h| h.get_attr("since"))
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(since)
        {
            let t = t.timestamp_micros();
            lo_micros = Some(lo_micros.map_or(t, |l| l.max(t)));
        }
        // The archive also keeps subject changes (XEP-0313 §5.1.2), which
        // are not history (the subject comes after it): read on past them,
        // a few pages at most.
        let mut chosen: Vec<String> = Vec::new();
        let mut chars = 0usize;
        let mut hi = u64::MAX;
        let mut items = Vec::new();
        for _ in 0..4 {
            let page = server
                .storage
                .archive_range(&self.jid, 0, hi, true, maxstanzas)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            let short = page.len() < maxstanzas;
            items.extend(page.into_iter().filter(|(_, m)| m.xml.contains("<body")));
            match last.checked_sub(1) {
                Some(h) if !short && items.len() < maxstanzas => hi = h,
                _ => break,
            }
        }
        items.truncate(maxstanzas);
        for (id, m) in items {
            if lo_micros.is_some_and(|lo| mam::id_micros(id) < lo) {
                break;
            }
            let Some(mut el) = crate::stanza::parse_serialised(&m.xml) else {
                continue;
            };
            if !el.has_child("body", NS_CLIENT) {
                continue;
            }
            el.set_attr("to", to);
            el.children.push(Node::Element(
                Element::new("delay", NS_DELAY)
                    .attr("from", self.jid.as_str())
                    .attr("stamp", mam::stamp(id)),
            ));
            let xml = el.to_stream_xml(NS_CLIENT);
            if let Some(mc) = maxchars {
                chars += xml.chars().count();
                if chars > mc {
                    break;
                }
            }
            chosen.push(xml);
        }
        for xml in chosen.into_iter().rev() {
            send_raw(server, to, &xml.into());
        }
        Ok(())
    }

    // -------------------------------------------------------- messages

    async fn message(&mut self, server: &Server, el: &Element) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let to = el.get_attr("to").unwrap_or_default();
        let mtype = el.get_attr("type").unwrap_or("normal");
        if mtype == "error" {
            // An occupant's client that bounces what the room sent it is
            // gone: its session leaves with 333 (XEP-0045 §7.2, status
            // codes; as for presence errors). Errors about private
            // messages (to an occupant JID) only concern that message.
            if split(to).1.is_none()
                && kickable(el)
                && let Some(cur) = self.by_jid.get(&from).cloned()
            {
                self.leave_session(server, &cur, el, &[333]).await?;
            }
            return Ok(());
        }
        if self.rec.is_none() {
            return Err(err(Condition::ItemNotFound));
        }
        let sender = self.by_jid.get(&from).cloned();
        if let Some(target) = split(to).1 {
            return self.private_message(server, el, sender.as_deref(), target);
        }
        if mtype == "groupchat" {
            let Some(nick) = sender else {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "only occupants may send messages to the room",
                ));
            };
            return self.groupchat(server, el, &nick).await;
        }
        if let Some(x) = el.get_child("x", NS_MUC_USER) {
            if let Some(inv) = x.get_child("invite", NS_MUC_USER) {
                return self.invite(server, el, inv, sender.as_deref()).await;
            }
            if let Some(dec) = x.get_child("decline", NS_MUC_USER) {
                return self.decline(server, &from, dec);
            }
        }
        if let Some(form) = el.get_child("x", NS_DATA)
            && form_type(form).as_deref() == Some(NS_REQUEST)
        {
            let Some(nick) = sender else {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "only occupants may ask for voice",
                ));
            };
            return self.voice_request(server, &nick, form).await;
        }
        Err(StanzaError::with_text(
            Condition::BadRequest,
            "messages to the room are of type groupchat",
        ))
    }

    async fn groupchat(
        &mut self,
        server: &Server,
        el: &Element,
        nick: &str,
    ) -> Result<(), StanzaError> {
        let role = self.occupants[nick].role;
        if role < Role::Participant {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "visitors may not speak in a moderated room",
            ));
        }
        let has_body = el.has_child("body", NS_CLIENT);
        if let Some(subject) = el.get_child("subject", NS_CLIENT)
            && !has_body
        {
            let allowed =
                role == Role::Moderator || self.config().is_some_and(|c| c.change_subject);
            if !allowed {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "you may not change the subject",
                ));
            }
            let text = subject.text_content();
            {
                let rec = self.rec.as_mut().expect("room");
                rec.subject = text;
                rec.subject_by = nick.to_owned();
            }
            self.save(server, true, &[]).await?;
            let mut out = reflected(el, &self.occupant_jid(nick));
            out.children
                .retain(|c| matches!(c, Node::Element(e) if e.is("subject", NS_CLIENT)));
            // XEP-0421 §4: on every message the room sends.
            out.children.push(Node::Element(
                Element::new("occupant-id", NS_OCCUPANT_ID)
                    .attr("id", self.occupants[nick].oid.as_str()),
            ));
            // The room's archive keeps subject changes too (XEP-0313
            // §5.1.2), with a stanza-id like any message it reflects.
            let mut outs = [(out, nick.to_owned(), el.get_attr("from"))];
            for sp in &self.archive_all(server, &mut outs).await? {
                self.fan_out(server, sp);
            }
            return Ok(());
        }
        let mut out = reflected(el, &self.occupant_jid(nick));
        out.children.push(Node::Element(
            Element::new("occupant-id", NS_OCCUPANT_ID)
                .attr("id", self.occupants[nick].oid.as_str()),
        ));
        if !mam::archivable_payload(el) {
            // Chat states and the like: reflected, not archived (XEP-0313
            // §5.1.2 stores messages with a body, and subject changes).
            self.broadcast_el(server, out);
            return Ok(());
        }
        // Archived (durably) before anyone gets it: it is the history and
        // the room's XEP-0313 archive, and survives the node.
        let mut outs = [(out, nick.to_owned(), el.get_attr("from"))];
        let spliced = self.archive_all(server, &mut outs).await?;
        for sp in &spliced {
            self.fan_out(server, sp);
        }
        crate::hot_counter!("starling_muc_messages_total").increment(1);
        Ok(())
    }

    /// Archives reflected messages (each with its sender's nick and real
    /// full JID: the session that sent it, of an occupant that may have
    /// several) under the room's JID, each with a new stanza-id, in one
    /// durable write; returns them serialised for the fan-out.
    async fn archive_all(
        &self,
        server: &Server,
        outs: &mut [(Element, String, Option<&str>)],
    ) -> Result<Vec<Spliced>, StanzaError> {
        for _ in 0..8 {
            let node = server.storage.store.node_id();
            let mut ids = Vec::with_capacity(outs.len());
            let mut spliced = Vec::with_capacity(outs.len());
            let mut records = Vec::with_capacity(outs.len());
            for (out, nick, sender) in outs.iter_mut() {
                let id = mam::next_id(node);
                out.children.push(Node::Element(
                    Element::new("stanza-id", mam::NS_SID)
                        .attr("by", self.jid.as_str())
                        .attr("id", mam::encode_id(id)),
                ));
                let s = Spliced::of(out);
                records.push(ArchivedMessage {
                    outgoing: false,
                    with: self.jid.clone(),
                    with_resource: Some(nick.clone()),
                    xml: s.without_to(),
                    jid: sender.map(str::to_owned).or_else(|| {
                        self.occupants
                            .get(nick.as_str())
                            .map(|o| o.jid().to_owned())
                    }),
                });
                ids.push(id);
                spliced.push(s);
            }
            let entries: Vec<(&str, u64, &ArchivedMessage)> = ids
                .iter()
                .zip(&records)
                .map(|(id, r)| (self.jid.as_str(), *id, r))
                .collect();
            // Reserved ids (the usual case): no record can hold them yet,
            // so no existence check, and the write is blind (applied
            // without a journal record, `Kv::write_in_order`).
            let checked = !ids.iter().all(|id| mam::reserved(*id));
            let ops = crate::storage::archive_ops(&entries, checked);
            if server.storage.archive_ops(ops).await? {
                metrics::counter!("starling_muc_archive_writes_total").increment(1);
                return Ok(spliced);
            }
            for (out, ..) in outs.iter_mut() {
                out.children.pop();
            }
        }
        Err(err(Condition::InternalServerError))
    }

    /// Sends one serialised message to every occupant: into the mailbox of
    /// this node's sessions, one envelope per other node.
    fn fan_out(&mut self, server: &Server, s: &Spliced) {
        let mut remote: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for one in self
            .occupants
            .values_mut()
            .flat_map(|o| o.sessions.iter_mut())
        {
            if one.remote {
                send_raw(server, &one.jid, &s.to(&one.jid));
                continue;
            }
            if server.services.muc.held(&one.jid) {
                // Its node was lost: it is where its client resumed it, or
                // it keeps what it misses meanwhile.
                one.at = live_route(server, &one.jid);
                if one.at.is_none() {
                    self.missed |= one.keep_missed(server, s.to(&one.jid));
                    continue;
                }
            }
            if one.at.is_none() {
                let (b, r) = split(&one.jid);
                one.at = r.and_then(|r| server.router.find(b, r));
            }
            if one.at.is_some() && !one.missed.is_empty() {
                one.send_missed(server);
            }
            let mut sent = match &one.at {
                Some(At::Here(h)) => h.send_shared(&s.to(&one.jid)),
                Some(At::Node { node, .. }) => {
                    // That node finds the session again if it moved on
                    // (`services::fanout_from_node`).
                    remote.entry(*node).or_default().push(one.jid.clone());
                    true
                }
                // No session: an occupant at a XEP-0114 component (a
                // gateway's user) gets it there; a session held for its
                // client to resume keeps it; else nobody gets it.
                None => {
                    if crate::services::component::domain_of(server, &one.jid).is_some() {
                        crate::services::component::send_serialised(
                            server,
                            &one.jid,
                            &s.to(&one.jid),
                        );
                    } else {
                        self.missed |= one.keep_missed(server, s.to(&one.jid));
                    }
                    true
                }
            };
            if !sent {
                // The session may continue under another handle or on
                // another node (resumed, XEP-0198): find it again, once.
                let (b, r) = split(&one.jid);
                one.at = r.and_then(|r| server.router.find(b, r));
                sent = match &one.at {
                    Some(At::Here(h)) => h.send_shared(&s.to(&one.jid)),
                    Some(At::Node { node, .. }) => {
                        remote.entry(*node).or_default().push(one.jid.clone());
                        true
                    }
                    None => false,
                };
            }
            if !sent {
                one.at = None;
                self.missed |= one.keep_missed(server, s.to(&one.jid));
            }
        }
        let mut failed: Vec<u64> = Vec::new();
        for (node, recipients) in remote {
            let env = Envelope {
                kind: KIND_FANOUT,
                stanza: s.prefix.as_bytes().to_vec(),
                suffix: s.suffix.as_bytes().to_vec(),
                recipients,
                ..Envelope::default()
            };
            if let Err(e) = server.storage.store.deliver(node, env) {
                tracing::debug!(node, error = %e, "room fan-out to a node failed");
                failed.push(node);
            }
        }
        if failed.is_empty() {
            return;
        }
        // The sessions of a node that took nothing (gone?) may be elsewhere
        // now (resumed, XEP-0198): looked up again, each sent on its own.
        for one in self
            .occupants
            .values_mut()
            .flat_map(|o| o.sessions.iter_mut())
        {
            if !matches!(&one.at, Some(At::Node { node, .. }) if failed.contains(node)) {
                continue;
            }
            let (b, r) = split(&one.jid);
            one.at = r.and_then(|r| server.router.find(b, r));
            match &one.at {
                Some(At::Node { node, .. }) if failed.contains(node) => {
                    one.at = None;
                    self.missed |= one.keep_missed(server, s.to(&one.jid));
                }
                Some(at) => {
                    server
                        .router
                        .send(b, r.unwrap_or_default(), at, &s.to(&one.jid));
                }
                None => {
                    self.missed |= one.keep_missed(server, s.to(&one.jid));
                }
            }
        }
    }

    fn private_message(
        &self,
        server: &Server,
        el: &Element,
        sender: Option<&str>,
        target: &str,
    ) -> Result<(), StanzaError> {
        let Some(sender) = sender else {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "only occupants may send private messages",
            ));
        };
        if el.get_attr("type") == Some("groupchat") {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "a private message is not of type groupchat",
            ));
        }
        let Some(t) = self.occupants.get(target) else {
            return Err(err(Condition::ItemNotFound));
        };
        let role = self.occupants[sender].role;
        let allowed = match self.config().map_or(AllowPm::Anyone, |c| c.allow_pm) {
            AllowPm::Anyone => true,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::Nobody => false,
        };
        if !allowed {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "private messages are not allowed here",
            ));
        }
        let mut out = el.clone();
        out.set_attr("from", self.occupant_jid(sender));
        // XEP-0421: the sender's occupant id, never one the client made.
        out.remove_children("occupant-id", NS_OCCUPANT_ID);
        out.children.push(Node::Element(
            Element::new("occupant-id", NS_OCCUPANT_ID)
                .attr("id", self.occupants[sender].oid.as_str()),
        ));
        if !out.has_child("x", NS_MUC_USER) {
            out.children
                .push(Node::Element(Element::new("x", NS_MUC_USER)));
        }
        send_occ(server, t, out);
        Ok(())
    }

    /// A mediated invitation (XEP-0045 §7.8.2).
    async fn invite(
        &mut self,
        server: &Server,
        el: &Element,
        inv: &Element,
        sender: Option<&str>,
    ) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default();
        if sender.is_none() {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "only occupants may invite",
            ));
        }
        let Some(to) = inv.get_attr("to").and_then(|t| jid::Jid::new(t).ok()) else {
            return Err(StanzaError::with_text(
                Condition::JidMalformed,
                "invite to whom?",
            ));
        };
        let to = to.to_string();
        let bare = split(from).0;
        let aff = self.affiliation(server, bare);
        let cfg = self.config().expect("room").clone();
        if cfg.members_only && !cfg.allow_invites && aff < Affiliation::Admin {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "only admins may invite to this room",
            ));
        }
        // In a members-only room the invitee becomes a member.
        let invitee = split(&to).0.to_owned();
        if cfg.members_only && self.affiliation(server, &invitee) == Affiliation::None {
            self.rec
                .as_mut()
                .expect("room")
                .affiliations
                .insert(invitee, Affiliation::Member);
            self.save(server, true, &[]).await?;
        }
        let mut i = Element::new("invite", NS_MUC_USER).attr("from", from);
        if let Some(r) = inv.get_child("reason", NS_MUC_USER) {
            i = i.child(r.clone());
        }
        let mut x = Element::new("x", NS_MUC_USER).child(i);
        if let Some(pw) = &cfg.password {
            x = x.child(Element::new("password", NS_MUC_USER).text(pw.clone()));
        }
        let mut m = Element::new("message", NS_CLIENT)
            .attr("from", self.jid.as_str())
            .attr("to", to.as_str())
            .child(x);
        if let Some(id) = el.get_attr("id") {
            m.set_attr("id", id);
        }
        route_out(server, m).await;
        Ok(())
    }

    fn decline(&self, server: &Server, from: &str, dec: &Element) -> Result<(), StanzaError> {
        let Some(to) = dec.get_attr("to").and_then(|t| jid::Jid::new(t).ok()) else {
            return Err(StanzaError::with_text(
                Condition::JidMalformed,
                "decline to whom?",
            ));
        };
        let mut d = Element::new("decline", NS_MUC_USER).attr("from", split(from).0);
        if let Some(r) = dec.get_child("reason", NS_MUC_USER) {
            d = d.child(r.clone());
        }
        let m = Element::new("message", NS_CLIENT)
            .attr("from", self.jid.as_str())
            .attr("to", to.to_string())
            .child(Element::new("x", NS_MUC_USER).child(d));
        let server_ptr = server.services.server();
        if let Some(s) = server_ptr {
            actix_rt::spawn(async move { route_out(&s, m).await });
        }
        Ok(())
    }

    /// A voice request (XEP-0045 §7.13) goes to the moderators as a form;
    /// a moderator's approval (§8.6) gives the occupant voice.
    async fn voice_request(
        &mut self,
        server: &Server,
        nick: &str,
        form: &Element,
    ) -> Result<(), StanzaError> {
        let fields: HashMap<String, String> = form
            .elements()
            .filter(|f| f.is("field", NS_DATA))
            .filter_map(|f| Some((f.get_attr("var")?.to_owned(), one(f, "").ok()?)))
            .collect();
        let me = &self.occupants[nick];
        // The approval names the occupant by nick, or (a client that
        // kept only that) by the real JID of the request (§8.6).
        let target = fields.get("muc#roomnick").cloned().or_else(|| {
            fields
                .get("muc#jid")
                .and_then(|j| self.by_jid.get(j.trim()))
                .cloned()
        });
        if me.role == Role::Moderator
            && form.get_attr("type") == Some("submit")
            && let Some(target) = target
            && fields.contains_key("muc#request_allow")
        {
            let allow = matches!(
                fields.get("muc#request_allow").map(|v| v.trim()),
                Some("1" | "true")
            );
            if !allow {
                return Ok(());
            }
            let Some(o) = self.occupants.get(&target) else {
                return Err(err(Condition::ItemNotFound));
            };
            if o.role != Role::Visitor {
                return Ok(());
            }
            let change = Change::Role {
                nick: target,
                role: Role::Participant,
                reason: None,
            };
            let actor = me.bare().to_owned();
            return self.apply_changes(server, &actor, vec![change], 321).await;
        }
        if me.role != Role::Visitor {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "you have voice already",
            ));
        }
        let x = Element::new("x", NS_DATA)
            .attr("type", "form")
            .child(Element::new("title", NS_DATA).text("Voice request"))
            .child(hidden_field("FORM_TYPE", NS_REQUEST))
            .child(list_field(
                "muc#role",
                "Requested role",
                "participant",
                &["participant"],
            ))
            .child(
                Element::new("field", NS_DATA)
                    .attr("var", "muc#jid")
                    .attr("type", "jid-single")
                    .attr("label", "User ID")
                    .child(value(me.jid())),
            )
            .child(text_field("muc#roomnick", "Room nickname", nick))
            .child(bool_field(
                "muc#request_allow",
                "Grant voice to this person?",
                false,
            ));
        let m = Element::new("message", NS_CLIENT)
            .attr("from", self.jid.as_str())
            .attr("id", crate::stream::new_id())
            .child(x);
        for o in self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
        {
            send_occ(server, o, m.clone());
        }
        Ok(())
    }

    /// Nick registration (XEP-0045 §7.10): the form, a submission (the
    /// user becomes a member with the nick reserved), or `<remove/>`.
    async fn register(
        &mut self,
        server: &Server,
        from: &str,
        q: &Element,
        set: bool,
    ) -> Result<Element, StanzaError> {
        let bare = split(from).0.to_owned();
        let aff = self.affiliation(server, &bare);
        if aff == Affiliation::Outcast {
            return Err(err(Condition::Forbidden));
        }
        let rec = self.rec.as_ref().expect("room");
        if !set {
            if let Some(n) = rec.nicks.get(&bare) {
                return Ok(Element::new("query", NS_REGISTER)
                    .child(Element::new("registered", NS_REGISTER))
                    .child(Element::new("username", NS_REGISTER).text(n.clone())));
            }
            let x = Element::new("x", NS_DATA)
                .attr("type", "form")
                .child(Element::new("title", NS_DATA).text("Nickname registration"))
                .child(hidden_field("FORM_TYPE", NS_MUC_REGISTER))
                .child(
                    Element::new("field", NS_DATA)
                        .attr("var", "muc#register_roomnick")
                        .attr("type", "text-single")
                        .attr("label", "Nickname")
                        .child(Element::new("required", NS_DATA)),
                );
            return Ok(Element::new("query", NS_REGISTER)
                .child(
                    Element::new("instructions", NS_REGISTER)
                        .text("Reserve a nickname in this room"),
                )
                .child(x));
        }
        let mut rec = rec.clone();
        if q.has_child("remove", NS_REGISTER) {
            if rec.nicks.remove(&bare).is_none() {
                return Err(err(Condition::ItemNotFound));
            }
            if rec.affiliations.get(&bare) == Some(&Affiliation::Member) {
                rec.affiliations.remove(&bare);
            }
            self.rec = Some(rec);
            self.save(server, true, &[]).await?;
            return Ok(Element::new("query", NS_REGISTER));
        }
        let Some(x) = q.get_child("x", NS_DATA) else {
            return Err(err(Condition::BadRequest));
        };
        if x.get_attr("type") == Some("cancel") {
            return Ok(Element::new("query", NS_REGISTER));
        }
        if form_type(x)
            .as_deref()
            .is_some_and(|t| t != NS_MUC_REGISTER)
        {
            return Err(bad("FORM_TYPE is not muc#register"));
        }
        let nick = x
            .elements()
            .find(|f| f.is("field", NS_DATA) && f.get_attr("var") == Some("muc#register_roomnick"))
            .map(|f| one(f, "muc#register_roomnick"))
            .transpose()?
            .unwrap_or_default();
        let nick = match jid::ResourcePart::new(nick.trim()) {
            Ok(n) if !n.as_str().trim().is_empty() => n.as_str().to_owned(),
            _ => {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "not a valid nickname",
                ));
            }
        };
        let taken = rec.nick_owner(&nick).is_some_and(|b| b != bare)
            || self.occupants.get(&nick).is_some_and(|o| o.bare() != bare);
        if taken {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "that nickname is taken",
            ));
        }
        rec.nicks.insert(bare.clone(), nick);
        if aff < Affiliation::Member {
            rec.affiliations.insert(bare, Affiliation::Member);
        }
        self.rec = Some(rec);
        self.save(server, true, &[]).await?;
        Ok(Element::new("query", NS_REGISTER))
    }

    // -------------------------------------------------------- IQ

    async fn iq(&mut self, server: &Server, el: &Element) -> Result<(), StanzaError> {
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let to = el.get_attr("to").unwrap_or_default();
        let itype = el.get_attr("type").unwrap_or_default();
        let request = matches!(itype, "get" | "set");
        let sender = self.by_jid.get(&from).cloned();
        if let Some(target) = split(to).1 {
            return self.occupant_iq(server, el, sender.as_deref(), target, request);
        }
        if !request {
            return Ok(());
        }
        let Some(payload) = el.elements().next() else {
            return Err(err(Condition::BadRequest));
        };
        let set = itype == "set";
        if self.rec.is_none() {
            return Err(err(Condition::ItemNotFound));
        }
        let reply = match (payload.name.as_str(), payload.ns.as_str(), set) {
            ("query", NS_INFO, false) => match payload.get_attr("node") {
                // XEP-0045 §7.12: the requester's registered nick.
                Some("x-roomuser-item") => {
                    let mut q = Element::new("query", NS_INFO).attr("node", "x-roomuser-item");
                    if let Some(n) = self.rec.as_ref().and_then(|r| r.nicks.get(split(&from).0)) {
                        q = q.child(
                            Element::new("identity", NS_INFO)
                                .attr("category", "conference")
                                .attr("type", "text")
                                .attr("name", n.as_str()),
                        );
                    }
                    Some(q)
                }
                Some(_) => return Err(err(Condition::ItemNotFound)),
                None => Some(self.disco_info(server)),
            },
            ("query", NS_REGISTER, _) => Some(self.register(server, &from, payload, set).await?),
            ("query", NS_ITEMS, false) => Some(self.disco_items(payload)),
            ("ping", NS_PING, false) => None,
            ("query", NS_MUC_OWNER, _) => match self.owner_iq(server, &from, payload, set).await? {
                Reply::Sent => return Ok(()),
                Reply::Payload(p) => p,
            },
            ("query", NS_MUC_ADMIN, _) => self.admin_iq(server, &from, payload, set).await?,
            ("vCard", NS_VCARD, _) => self.vcard_iq(server, &from, payload, set).await?,
            _ => return Err(err(Condition::ServiceUnavailable)),
        };
        send_el(server, &from, iq_result(el, reply));
        Ok(())
    }

    /// XEP-0486 MUC avatars: anyone reads the room's vCard (an empty one
    /// when none is set); only an owner writes it, and an empty vCard
    /// removes it (§3.2).
    async fn vcard_iq(
        &mut self,
        server: &Server,
        from: &str,
        payload: &Element,
        set: bool,
    ) -> Result<Option<Element>, StanzaError> {
        let rec = self.rec.as_ref().expect("room");
        if !set {
            let scope = [(String::new(), NS_CLIENT.to_owned())];
            let limits = crate::xml::Limits {
                max_stanza_bytes: usize::MAX,
                ..Default::default()
            };
            let stored = rec
                .vcard
                .as_ref()
                .and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok());
            return Ok(Some(
                stored.unwrap_or_else(|| Element::new("vCard", NS_VCARD)),
            ));
        }
        if self.affiliation(server, split(from).0) != Affiliation::Owner {
            return Err(err(Condition::Forbidden));
        }
        let vcard = payload
            .elements()
            .next()
            .is_some()
            .then(|| payload.to_stream_xml(NS_CLIENT));
        let mut rec = rec.clone();
        rec.vcard = vcard;
        self.rec = Some(rec);
        self.save(server, true, &[]).await?;
        Ok(None)
    }

    /// An IQ to an occupant JID: XEP-0410 self-ping, or passed on to the
    /// occupant (requests from occupants, and the answers to them).
    fn occupant_iq(
        &self,
        server: &Server,
        el: &Element,
        sender: Option<&str>,
        target: &str,
        request: bool,
    ) -> Result<(), StanzaError> {
        let Some(sender) = sender else {
            // XEP-0045 §6.6: a disco request from a non-occupant to an
            // occupant JID MUST get <bad-request/>; anything else (a
            // XEP-0410 self-ping among them) <not-acceptable/>.
            let disco = el.has_child("query", NS_INFO) || el.has_child("query", NS_ITEMS);
            return if request {
                Err(StanzaError::with_text(
                    if disco {
                        Condition::BadRequest
                    } else {
                        Condition::NotAcceptable
                    },
                    "you are not an occupant of this room",
                ))
            } else {
                Ok(())
            };
        };
        let Some(t) = self.occupants.get(target) else {
            return if request {
                Err(err(Condition::ItemNotFound))
            } else {
                Ok(())
            };
        };
        if target == sender && request && el.has_child("ping", NS_PING) {
            // XEP-0410: the room answers a ping to one's own occupant JID.
            send_el(
                server,
                el.get_attr("from").unwrap_or_default(),
                iq_result(el, None),
            );
            return Ok(());
        }
        let mut out = el.clone();
        out.set_attr("from", self.occupant_jid(sender));
        send_el(server, t.jid(), out);
        Ok(())
    }

    /// XEP-0045 §6.5: the room's items. A public room lists its occupants'
    /// room JIDs (nicks are what any visitor sees on entering anyway); a
    /// hidden room, or a request for a node, gets an empty list.
    fn disco_items(&self, payload: &Element) -> Element {
        let mut q = Element::new("query", NS_ITEMS);
        let public = self.rec.as_ref().is_some_and(|r| r.config.public);
        if public && payload.get_attr("node").is_none() {
            // Those whose presence the room does not broadcast stay unlisted.
            let shown = self
                .occupants
                .iter()
                .filter(|(_, o)| self.broadcasts(o.role));
            for (nick, _) in shown {
                q = q.child(
                    Element::new("item", NS_ITEMS)
                        .attr("jid", self.occupant_jid(nick))
                        .attr("name", nick.as_str()),
                );
            }
        }
        q
    }

    fn disco_info(&self, server: &Server) -> Element {
        let rec = self.rec.as_ref().expect("room");
        let c = &rec.config;
        let name = if c.name.is_empty() {
            self.jid.split('@').next().unwrap_or_default().to_owned()
        } else {
            c.name.clone()
        };
        let mut q = Element::new("query", NS_INFO).child(
            Element::new("identity", NS_INFO)
                .attr("category", "conference")
                .attr("type", "text")
                .attr("name", name.clone()),
        );
        let mut features = vec![
            NS_MUC,
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.whois_anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
            NS_OCCUPANT_ID,
            "http://jabber.org/protocol/muc#self-ping-optimization",
            "http://jabber.org/protocol/muc#stable_id",
            mam::NS_SID,
            NS_INFO,
            NS_VCARD,
            // Nick registration (§7.10) and voice requests (§7.13), which
            // clients look for before offering them.
            NS_REGISTER,
            NS_MUC_REGISTER,
            NS_REQUEST,
        ];
        if server.config.mam.enabled {
            features.push(mam::NS_MAM);
            features.push(mam::NS_MAM_EXTENDED);
        }
        for f in features {
            q = q.child(Element::new("feature", NS_INFO).attr("var", f));
        }
        let count = self.occupants.len().to_string();
        let x = Element::new("x", NS_DATA)
            .attr("type", "result")
            .child(hidden_field("FORM_TYPE", NS_ROOMINFO))
            .child(text_field(
                "muc#roominfo_description",
                "Description",
                &c.desc,
            ))
            .child(text_field("muc#roominfo_subject", "Subject", &rec.subject))
            .child(text_field(
                "muc#roominfo_occupants",
                "Number of occupants",
                &count,
            ))
            .child(text_field("muc#roomconfig_roomname", "Name", &name))
            .child(bool_field(
                "muc#roominfo_subjectmod",
                "Occupants may change the subject",
                c.change_subject,
            ))
            .child(text_field(
                "muc#roominfo_lang",
                "Natural language of the room",
                &c.lang,
            ))
            .child(text_field(
                "muc#maxhistoryfetch",
                "Most history messages sent on joining",
                &c.max_history
                    .map_or(server.config.muc.max_history, |m| {
                        (m as usize).min(server.config.muc.max_history)
                    })
                    .to_string(),
            ))
            .child(list_field(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                c.allow_pm.name(),
                &["anyone", "participants", "moderators", "none"],
            ))
            .child(bool_field(
                "muc#roomconfig_allowinvites",
                "Occupants may invite",
                c.allow_invites,
            ));
        // The owners as contacts, where real JIDs are no secret anyway
        // (a non-anonymous room).
        let x = if c.whois_anyone {
            x.child(jid_multi(
                "muc#roominfo_contactjid",
                "Contact addresses",
                &rec.affiliations
                    .iter()
                    .filter(|(_, a)| **a == Affiliation::Owner)
                    .map(|(j, _)| j.clone())
                    .collect::<Vec<_>>(),
            ))
        } else {
            x
        };
        let x = if c.pubsub.is_empty() {
            x
        } else {
            x.child(text_field(
                "muc#roominfo_pubsub",
                "Associated pubsub node",
                &c.pubsub,
            ))
        };
        q.child(x)
    }

    // -------------------------------------------------------- owner

    async fn owner_iq(
        &mut self,
        server: &Server,
        from: &str,
        q: &Element,
        set: bool,
    ) -> Result<Reply, StanzaError> {
        let bare = split(from).0;
        if self.affiliation(server, bare) != Affiliation::Owner {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "only owners may configure the room",
            ));
        }
        if !set {
            return Ok(Reply::Payload(Some(
                Element::new("query", NS_MUC_OWNER).child(self.config_form(server)),
            )));
        }
        if let Some(d) = q.get_child("destroy", NS_MUC_OWNER) {
            self.destroy(server, d).await?;
            return Ok(Reply::Payload(None));
        }
        let Some(x) = q.get_child("x", NS_DATA) else {
            return Err(err(Condition::BadRequest));
        };
        match x.get_attr("type") {
            Some("submit") => {
                let was_locked = self.rec.as_ref().is_some_and(|r| r.locked);
                let old = self.config().cloned().expect("room");
                let old_affs = self.rec.as_ref().expect("room").affiliations.clone();
                let mut rec = self.rec.clone().expect("room");
                apply_form(server, &mut rec, x)?;
                rec.locked = false;
                let now_private = rec.config.whois_anyone != old.whois_anyone;
                let now_members_only = rec.config.members_only && !old.members_only;
                let new_cfg = rec.config.clone();
                let before: Vec<(String, Affiliation)> = self
                    .occupants
                    .iter()
                    .map(|(n, o)| (n.clone(), self.affiliation(server, o.bare())))
                    .collect();
                self.rec = Some(rec);
                // XEP-0045 §10.2: occupants who gained or lost owner or admin
                // status through the form (roomowners / roomadmins) get the
                // role of their new affiliation, and everyone is told.
                let mut changed: Vec<(String, Role)> = Vec::new();
                let mut writes: Vec<(String, Option<OccupantRecord>)> = Vec::new();
                for (nick, was) in before {
                    let bare = self.occupants[&nick].bare().to_owned();
                    let now = self.affiliation(server, &bare);
                    if now == was || (now_members_only && now < Affiliation::Member) {
                        continue;
                    }
                    let role = self.default_role(now);
                    let mut was_role = role;
                    if let Some(o) = self.occupants.get_mut(&nick) {
                        was_role = std::mem::replace(&mut o.role, role);
                        writes.push((nick.clone(), Some(o.record())));
                    }
                    changed.push((nick, was_role));
                }
                let refs: Vec<(&str, Option<OccupantRecord>)> = writes
                    .iter()
                    .map(|(n, r)| (n.as_str(), r.clone()))
                    .collect();
                self.save(server, true, &refs).await?;
                drop(refs);
                // Owners and admins the form added or removed who are not
                // in the room hear of it as with the admin IQ.
                let now_affs = &self.rec.as_ref().expect("room").affiliations;
                let touched: std::collections::BTreeSet<&String> = old_affs
                    .keys()
                    .chain(now_affs.keys())
                    .filter(|j| old_affs.get(*j) != now_affs.get(*j))
                    .filter(|j| self.by_jid_bare(j).is_none())
                    .collect();
                let absent: Vec<(String, Affiliation, Option<String>)> = touched
                    .into_iter()
                    .map(|j| {
                        let aff = now_affs.get(j).copied().unwrap_or(Affiliation::None);
                        (j.clone(), aff, None)
                    })
                    .collect();
                self.notify_absent(server, absent).await;
                for (nick, was) in &changed {
                    self.broadcast_presence(server, nick, &[], &[], None);
                    self.moderator_view_changed(server, nick, *was);
                }
                let codes = config_change_codes(&old, &new_cfg);
                if !was_locked && !codes.is_empty() {
                    let mut x = Element::new("x", NS_MUC_USER);
                    for c in codes {
                        x = x.child(status(c));
                    }
                    let m = Element::new("message", NS_CLIENT)
                        .attr("type", "groupchat")
                        .attr("from", self.jid.as_str())
                        .attr("id", crate::stream::new_id())
                        .child(x);
                    self.broadcast_el(server, m);
                }
                if now_private {
                    // Who sees real JIDs changed (172/173): the occupants
                    // who are not moderators get the others' presence again,
                    // with or without them.
                    for (nick, o) in &self.occupants {
                        if o.role != Role::Moderator {
                            for s in &o.sessions {
                                self.send_occupants_to(server, &s.jid, nick);
                            }
                        }
                    }
                }
                if now_members_only {
                    // Those who are not members leave (XEP-0045 §10.2, 322).
                    let out: Vec<Change> = self
                        .occupants
                        .values()
                        .filter(|o| self.affiliation(server, o.bare()) < Affiliation::Member)
                        .map(|o| Change::Affiliation {
                            jid: o.bare().to_owned(),
                            aff: Affiliation::None,
                            reason: None,
                        })
                        .collect();
                    if !out.is_empty() {
                        self.apply_changes(server, split(from).0, out, 322).await?;
                    }
                }
                Ok(Reply::Payload(None))
            }
            Some("cancel") => {
                // Cancelling the initial configuration destroys the room
                // (XEP-0045 §10.1.3).
                if self.rec.as_ref().is_some_and(|r| r.locked) {
                    let d = Element::new("destroy", NS_MUC_OWNER);
                    self.destroy(server, &d).await?;
                }
                Ok(Reply::Payload(None))
            }
            _ => Err(err(Condition::BadRequest)),
        }
    }

    fn config_form(&self, server: &Server) -> Element {
        let rec = self.rec.as_ref().expect("room");
        let c = &rec.config;
        let jids = |a: Affiliation| -> Vec<String> {
            rec.affiliations
                .iter()
                .filter(|(_, x)| **x == a)
                .map(|(j, _)| j.clone())
                .collect()
        };
        let maxusers = if c.max_users == 0 {
            "none".to_owned()
        } else {
            c.max_users.to_string()
        };
        let mut max_opts: Vec<String> = [
            "1", "2", "5", "10", "20", "30", "50", "100", "200", "500", "1000",
        ]
        .iter()
        .filter(|v| v.parse::<u32>().unwrap_or(0) <= server.config.muc.max_users_limit)
        .map(|v| v.to_string())
        .collect();
        if !max_opts.contains(&maxusers) && maxusers != "none" {
            max_opts.push(maxusers.clone());
        }
        Element::new("x", NS_DATA)
            .attr("type", "form")
            .child(Element::new("title", NS_DATA).text(format!("Configuration of {}", self.jid)))
            .child(hidden_field("FORM_TYPE", NS_ROOMCONFIG))
            .child(text_field("muc#roomconfig_roomname", "Name", &c.name))
            .child(text_field(
                "muc#roomconfig_roomdesc",
                "Description",
                &c.desc,
            ))
            .child(bool_field(
                "muc#roomconfig_persistentroom",
                "Persistent",
                c.persistent,
            ))
            .child(bool_field(
                "muc#roomconfig_publicroom",
                "Public (listed)",
                c.public,
            ))
            .child(bool_field(
                "muc#roomconfig_membersonly",
                "Members only",
                c.members_only,
            ))
            .child(bool_field(
                "muc#roomconfig_moderatedroom",
                "Moderated",
                c.moderated,
            ))
            .child(bool_field(
                "muc#roomconfig_passwordprotectedroom",
                "Password protected",
                c.password.is_some(),
            ))
            .child(
                Element::new("field", NS_DATA)
                    .attr("var", "muc#roomconfig_roomsecret")
                    .attr("type", "text-private")
                    .attr("label", "Password")
                    .child(value(c.password.as_deref().unwrap_or_default())),
            )
            .child(list_field(
                "muc#roomconfig_maxusers",
                "Maximum occupants",
                &maxusers,
                &max_opts
                    .iter()
                    .map(String::as_str)
                    .chain(["none"])
                    .collect::<Vec<_>>(),
            ))
            .child(list_field(
                "muc#roomconfig_whois",
                "Who may discover real JIDs",
                if c.whois_anyone {
                    "anyone"
                } else {
                    "moderators"
                },
                &["moderators", "anyone"],
            ))
            .child(bool_field(
                "muc#roomconfig_changesubject",
                "Occupants may change the subject",
                c.change_subject,
            ))
            .child(list_field(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                c.allow_pm.name(),
                &["anyone", "participants", "moderators", "none"],
            ))
            .child(bool_field(
                "muc#roomconfig_allowinvites",
                "Occupants may invite",
                c.allow_invites,
            ))
            .child(bool_field(
                "muc#roomconfig_enablelogging",
                "Public logging",
                c.logging,
            ))
            .child(roles_field(
                "muc#roomconfig_presencebroadcast",
                "Roles whose presence is broadcast",
                &c.presence_broadcast,
            ))
            .child(roles_field(
                "muc#roomconfig_getmemberlist",
                "Roles that may get the member list",
                &c.get_member_list,
            ))
            .child(text_field(
                "muc#roomconfig_lang",
                "Natural language of the room",
                &c.lang,
            ))
            .child(text_field(
                "muc#roomconfig_pubsub",
                "Associated pubsub node",
                &c.pubsub,
            ))
            .child(text_field(
                "muc#maxhistoryfetch",
                "Most history messages sent on joining",
                &c.max_history
                    .unwrap_or(server.config.muc.max_history as u32)
                    .to_string(),
            ))
            .child(jid_multi(
                "muc#roomconfig_roomowners",
                "Owners",
                &jids(Affiliation::Owner),
            ))
            .child(jid_multi(
                "muc#roomconfig_roomadmins",
                "Admins",
                &jids(Affiliation::Admin),
            ))
    }

    async fn destroy(&mut self, server: &Server, d: &Element) -> Result<(), StanzaError> {
        let mut dest = Element::new("destroy", NS_MUC_USER);
        if let Some(j) = d.get_attr("jid") {
            let j = jid::Jid::new(j).map_err(|_| err(Condition::JidMalformed))?;
            dest.set_attr("jid", j.to_string());
        }
        if let Some(r) = d.get_child("reason", NS_MUC_OWNER) {
            dest = dest.child(Element::new("reason", NS_MUC_USER).text(r.text_content()));
        }
        if let Some(p) = d.get_child("password", NS_MUC_OWNER) {
            dest = dest.child(Element::new("password", NS_MUC_USER).text(p.text_content()));
        }
        server.storage.muc_destroy(&self.jid).await?;
        for (nick, o) in &self.occupants {
            let aff = self.affiliation(server, o.bare());
            let mut x = Element::new("x", NS_MUC_USER)
                .child(
                    Element::new("item", NS_MUC_USER)
                        .attr("affiliation", aff.name())
                        .attr("role", "none"),
                )
                .child(dest.clone());
            x = x.child(status(110));
            let p = Element::new("presence", NS_CLIENT)
                .attr("from", self.occupant_jid(nick))
                .attr("type", "unavailable")
                .child(x)
                .child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", o.oid.as_str()));
            send_occ(server, o, p);
        }
        self.occupants.clear();
        self.by_jid.clear();
        self.rec = None;
        self.gone = true;
        metrics::counter!("starling_muc_destroyed_total").increment(1);
        Ok(())
    }

    // -------------------------------------------------------- admin

    async fn admin_iq(
        &mut self,
        server: &Server,
        from: &str,
        q: &Element,
        set: bool,
    ) -> Result<Option<Element>, StanzaError> {
        let bare = split(from).0.to_owned();
        let my_aff = self.affiliation(server, &bare);
        let my_role = self
            .by_jid
            .get(from)
            .map_or(Role::None, |n| self.occupants[n].role);
        let items: Vec<&Element> = q
            .elements()
            .filter(|e| e.is("item", NS_MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(err(Condition::BadRequest));
        }
        if !set {
            let [item] = items.as_slice() else {
                return Err(err(Condition::BadRequest));
            };
            return self.admin_list(server, item, my_aff, my_role).map(Some);
        }
        // Checked all first, then applied together.
        let mut changes: Vec<Change> = Vec::new();
        for item in &items {
            changes.push(self.check_change(server, item, &bare, my_aff, my_role)?);
        }
        self.apply_changes(server, &bare, changes, 321).await?;
        Ok(None)
    }

    fn admin_list(
        &self,
        server: &Server,
        item: &Element,
        my_aff: Affiliation,
        my_role: Role,
    ) -> Result<Element, StanzaError> {
        let mut q = Element::new("query", NS_MUC_ADMIN);
        if let Some(a) = item.get_attr("affiliation") {
            let a = Affiliation::parse(a).ok_or_else(|| err(Condition::BadRequest))?;
            if a == Affiliation::None {
                return Err(err(Condition::BadRequest));
            }
            // The member list also goes to occupants of the roles
            // `muc#roomconfig_getmemberlist` names.
            let by_role = a == Affiliation::Member
                && my_role != Role::None
                && self
                    .config()
                    .is_some_and(|c| c.get_member_list.contains(&my_role));
            if my_aff < Affiliation::Admin && !by_role {
                return Err(err(Condition::Forbidden));
            }
            let rec = self.rec.as_ref().expect("room");
            for (j, x) in &rec.affiliations {
                if *x == a {
                    let mut it = Element::new("item", NS_MUC_ADMIN)
                        .attr("affiliation", a.name())
                        .attr("jid", j.as_str());
                    // The registered nick if there is one (XEP-0045 §9.5
                    // shows it on the member list), else the one in use.
                    let present = self.occupants.iter().find(|(_, o)| o.bare() == j);
                    if let Some(n) = rec.nicks.get(j).or(present.map(|(n, _)| n)) {
                        it.set_attr("nick", n.as_str());
                    }
                    if let Some((_, o)) = present {
                        it.set_attr("role", o.role.name());
                    }
                    q = q.child(it);
                }
            }
            return Ok(q);
        }
        if let Some(r) = item.get_attr("role") {
            let r = Role::parse(r).ok_or_else(|| err(Condition::BadRequest))?;
            if my_role != Role::Moderator {
                return Err(err(Condition::Forbidden));
            }
            for (n, o) in &self.occupants {
                if o.role == r {
                    q = q.child(
                        Element::new("item", NS_MUC_ADMIN)
                            .attr("role", r.name())
                            .attr("nick", n.as_str())
                            .attr("jid", o.jid())
                            .attr("affiliation", self.affiliation(server, o.bare()).name()),
                    );
                }
            }
            return Ok(q);
        }
        Err(err(Condition::BadRequest))
    }

    fn check_change(
        &self,
        server: &Server,
        item: &Element,
        me: &str,
        my_aff: Affiliation,
        my_role: Role,
    ) -> Result<Change, StanzaError> {
        let reason = item.child_text("reason", NS_MUC_ADMIN);
        if let Some(r) = item.get_attr("role") {
            let role = Role::parse(r).ok_or_else(|| err(Condition::BadRequest))?;
            let Some(nick) = item.get_attr("nick") else {
                return Err(err(Condition::BadRequest));
            };
            // Privileges first: who may not change roles learns nothing
            // about who is in the room (XEP-0045 §8: moderators only).
            if my_role != Role::Moderator {
                return Err(err(Condition::Forbidden));
            }
            let Some(o) = self.occupants.get(nick) else {
                return Err(err(Condition::ItemNotFound));
            };
            let target_aff = self.affiliation(server, o.bare());
            if role == Role::Moderator {
                if my_aff < Affiliation::Admin {
                    return Err(err(Condition::Forbidden));
                }
            } else if target_aff >= Affiliation::Admin
                || target_aff > my_aff
                || (o.role == Role::Moderator && my_aff < Affiliation::Admin)
            {
                // A moderator may not kick, silence or demote an admin or
                // owner, nor a moderator unless it is an admin (XEP-0045
                // §8.2, §8.4, §9.7).
                return Err(err(Condition::NotAllowed));
            }
            return Ok(Change::Role {
                nick: nick.to_owned(),
                role,
                reason,
            });
        }
        if let Some(a) = item.get_attr("affiliation") {
            let aff = Affiliation::parse(a).ok_or_else(|| err(Condition::BadRequest))?;
            // Affiliations are changed by admins and owners (XEP-0045 §9,
            // §10): anyone else is refused before the target is looked up.
            if my_aff < Affiliation::Admin {
                return Err(err(Condition::Forbidden));
            }
            let jid = match (item.get_attr("jid"), item.get_attr("nick")) {
                (Some(j), _) => {
                    let j = jid::Jid::new(j).map_err(|_| err(Condition::JidMalformed))?;
                    j.to_bare().to_string()
                }
                (None, Some(n)) => match self.occupants.get(n) {
                    Some(o) => o.bare().to_owned(),
                    None => return Err(err(Condition::ItemNotFound)),
                },
                (None, None) => return Err(err(Condition::BadRequest)),
            };
            // XEP-0045 §9.1: "If an admin or owner attempts to ban himself,
            // the service MUST deny the request and return a <conflict/>".
            if aff == Affiliation::Outcast && jid == me {
                return Err(err(Condition::Conflict));
            }
            let current = self.affiliation(server, &jid);
            let needed = match (aff, current) {
                (Affiliation::Owner, _) | (_, Affiliation::Owner) => Affiliation::Owner,
                (Affiliation::Admin, _) | (_, Affiliation::Admin) => Affiliation::Owner,
                _ => Affiliation::Admin,
            };
            if my_aff < needed {
                // Granting owner or admin status, i.e. changing the owner or
                // admin list, is for owners: anyone else gets <forbidden/>
                // (XEP-0045 §10.3, §10.5, §10.6, §10.8). An admin acting on
                // someone of a higher affiliation otherwise gets
                // <not-allowed/> (§9.1: banning an owner).
                let granting_high = matches!(aff, Affiliation::Owner | Affiliation::Admin);
                return Err(err(if my_aff >= Affiliation::Admin && !granting_high {
                    Condition::NotAllowed
                } else {
                    Condition::Forbidden
                }));
            }
            if server.config.muc.admins.contains(&jid) && aff != Affiliation::Owner {
                return Err(err(Condition::NotAllowed));
            }
            return Ok(Change::Affiliation { jid, aff, reason });
        }
        Err(err(Condition::BadRequest))
    }

    async fn apply_changes(
        &mut self,
        server: &Server,
        actor: &str,
        changes: Vec<Change>,
        members_only_code: u16,
    ) -> Result<(), StanzaError> {
        let mut rec = self.rec.clone().expect("room");
        // Owners left after the changes: at least one (XEP-0045 §10.6).
        for c in &changes {
            if let Change::Affiliation { jid, aff, .. } = c {
                if *aff == Affiliation::Outcast {
                    // §9.1: a ban also removes the outcast's registered nick.
                    rec.nicks.remove(jid);
                }
                if *aff == Affiliation::None {
                    rec.affiliations.remove(jid);
                } else {
                    rec.affiliations.insert(jid.clone(), *aff);
                }
            }
        }
        let had_owner = self
            .rec
            .as_ref()
            .is_some_and(|r| r.affiliations.values().any(|a| *a == Affiliation::Owner));
        if had_owner && !rec.affiliations.values().any(|a| *a == Affiliation::Owner) {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "the room must keep an owner",
            ));
        }
        self.rec = Some(rec);
        // What happens to occupants: new roles, or removal.
        let mut removed: Vec<(String, Vec<u16>, Option<String>)> = Vec::new();
        // (nick, reason, role before)
        let mut changed: Vec<(String, Option<String>, Role)> = Vec::new();
        // Affiliations changed of users not in the room (bare JID, new one).
        let mut absent: Vec<(String, Affiliation, Option<String>)> = Vec::new();
        for c in changes {
            match c {
                Change::Role { nick, role, reason } => {
                    if role == Role::None {
                        removed.push((nick, vec![307], reason));
                    } else if let Some(o) = self.occupants.get_mut(&nick) {
                        let before = std::mem::replace(&mut o.role, role);
                        changed.push((nick, reason, before));
                    }
                }
                Change::Affiliation { jid, aff, reason } => {
                    let nicks: Vec<String> = self
                        .occupants
                        .iter()
                        .filter(|(_, o)| o.bare() == jid)
                        .map(|(n, _)| n.clone())
                        .collect();
                    let members_only = self.config().is_some_and(|c| c.members_only);
                    if nicks.is_empty() {
                        absent.push((jid.clone(), aff, reason.clone()));
                    }
                    for n in nicks {
                        if aff == Affiliation::Outcast {
                            removed.push((n, vec![301], reason.clone()));
                        } else if members_only && aff < Affiliation::Member {
                            removed.push((n, vec![members_only_code], reason.clone()));
                        } else {
                            let role = self.default_role(aff);
                            if let Some(o) = self.occupants.get_mut(&n) {
                                let before = std::mem::replace(&mut o.role, role);
                                changed.push((n, reason.clone(), before));
                            }
                        }
                    }
                }
            }
        }
        let actor_nick = self.by_jid_bare(actor).map(str::to_owned);
        let actor_el = |_: &Option<String>| -> Element {
            let mut e = Element::new("actor", NS_MUC_USER);
            if let Some(n) = &actor_nick {
                e.set_attr("nick", n.as_str());
            }
            e
        };
        let mut writes: Vec<(String, Option<OccupantRecord>)> = Vec::new();
        for (nick, reason, before) in &changed {
            let Some(o) = self.occupants.get(nick) else {
                continue;
            };
            writes.push((nick.clone(), Some(o.record())));
            let mut extra = actor_el(reason);
            if let Some(r) = reason {
                extra = Element::new("reason", NS_MUC_USER).text(r.clone());
            }
            self.broadcast_presence(server, nick, &[], &[], Some(extra));
            self.moderator_view_changed(server, nick, *before);
            if self.broadcasts(*before) && !self.broadcasts(o.role) {
                // Its presence is no longer broadcast: to the others it
                // is gone.
                let aff = self.affiliation(server, o.bare());
                let un = self.unavailable_item(nick, None, aff, &[], &o.oid);
                for (n, other) in &self.occupants {
                    if n != nick {
                        send_occ(server, other, un.clone());
                    }
                }
            }
        }
        for (nick, codes, reason) in &removed {
            let Some(occ) = self.occupants.remove(nick) else {
                continue;
            };
            for s in &occ.sessions {
                self.by_jid.remove(&s.jid);
            }
            let aff = self.affiliation(server, occ.bare());
            for o in self.occupants.values().chain(std::iter::once(&occ)) {
                let with_jid = self.whois_anyone() || o.role == Role::Moderator;
                let mut p = self.unavailable_item(
                    nick,
                    with_jid.then_some(occ.jid()),
                    aff,
                    codes,
                    &occ.oid,
                );
                if let Some(x) = p.get_child_mut("x", NS_MUC_USER)
                    && let Some(Node::Element(item)) = x.children.first_mut()
                {
                    item.children.push(Node::Element(actor_el(reason)));
                    if let Some(r) = reason {
                        item.children.push(Node::Element(
                            Element::new("reason", NS_MUC_USER).text(r.clone()),
                        ));
                    }
                    if o.jid() == occ.jid() {
                        x.children.push(Node::Element(status(110)));
                    }
                }
                send_occ(server, o, p);
            }
            writes.push((nick.clone(), None));
        }
        let w: Vec<(&str, Option<OccupantRecord>)> = writes
            .iter()
            .map(|(n, o)| (n.as_str(), o.clone()))
            .collect();
        self.save(server, true, &w).await?;
        self.notify_absent(server, absent).await;
        Ok(())
    }

    /// Affiliations changed of users not in the room (bare JID, new
    /// affiliation, reason): who may see real JIDs in the room is told,
    /// and the user (status 101).
    async fn notify_absent(
        &self,
        server: &Server,
        absent: Vec<(String, Affiliation, Option<String>)>,
    ) {
        for (jid, aff, reason) in absent {
            // XEP-0045 (1.34.7 on) "Notifications of Changes": the
            // occupants who may see real JIDs learn of the change of a user
            // who is not in the room from a message of the room.
            let note = Element::new("message", NS_CLIENT)
                .attr("from", self.jid.as_str())
                .attr("id", crate::stream::new_id())
                .child(
                    Element::new("x", NS_MUC_USER).child(
                        Element::new("item", NS_MUC_USER)
                            .attr("affiliation", aff.name())
                            .attr("jid", jid.as_str())
                            .attr("role", Role::None.name()),
                    ),
                );
            let s = Spliced::of(&note);
            for o in self.occupants.values() {
                if self.whois_anyone() || o.role == Role::Moderator {
                    for one in &o.sessions {
                        send_raw(server, &one.jid, &s.to(&one.jid));
                    }
                }
            }
            // XEP-0045 status code 101: the user hears of it out of band,
            // a message from the room to its bare JID.
            let mut it = Element::new("item", NS_MUC_USER)
                .attr("affiliation", aff.name())
                .attr("jid", jid.as_str());
            if let Some(r) = reason {
                it = it.child(Element::new("reason", NS_MUC_USER).text(r));
            }
            let m = Element::new("message", NS_CLIENT)
                .attr("from", self.jid.as_str())
                .attr("to", jid.as_str())
                .attr("id", crate::stream::new_id())
                .child(Element::new("x", NS_MUC_USER).child(it).child(status(101)));
            route_out(server, m).await;
        }
    }

    fn by_jid_bare(&self, bare: &str) -> Option<&str> {
        self.occupants
            .iter()
            .find(|(_, o)| o.bare() == bare)
            .map(|(n, _)| n.as_str())
    }
}

enum Change {
    Role {
        nick: String,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: String,
        aff: Affiliation,
        reason: Option<String>,
    },
}

enum Reply {
    Payload(Option<Element>),
    #[allow(dead_code)]
    Sent,
}

/// Routes a stanza the room originates to a user (any domain path).
async fn route_out(server: &Server, m: Element) {
    if let Err(b) = crate::session::im::route_message(server, m).await {
        tracing::debug!(error = ?b.0, "room message not delivered");
    }
}

/// Whether an error from an occupant's client means it can no longer take
/// the room's traffic (a delivery failure), not a complaint about one
/// stanza.
fn kickable(el: &Element) -> bool {
    const GONE: &[&str] = &[
        "gone",
        "internal-server-error",
        "item-not-found",
        "jid-malformed",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    ];
    match el.get_child("error", NS_CLIENT) {
        Some(e) => e
            .elements()
            .any(|c| c.ns == NS_STANZAS && GONE.contains(&c.name.as_str())),
        None => false,
    }
}

/// Whether the service changed the nick a joining client asked for
/// (resourceprep did, in its session: `muc::REQUESTED_NICK`).
fn renamed(el: &Element, nick: &str) -> bool {
    el.get_attr(super::REQUESTED_NICK)
        .is_some_and(|asked| asked != nick)
}

/// Whether a nick is acceptable: non-empty, a valid resourcepart.
fn valid_nick(n: &str) -> bool {
    !n.trim().is_empty() && jid::ResourcePart::new(n).is_ok()
}

/// A groupchat message as the room reflects it.
fn reflected(el: &Element, from: &str) -> Element {
    let mut out = Element::new("message", NS_CLIENT);
    out.attrs.push(("from".into(), from.to_owned()));
    for (k, v) in &el.attrs {
        if k != "from" && k != "to" {
            out.attrs.push((k.clone(), v.clone()));
        }
    }
    out.children = el
        .children
        .iter()
        // What only the room may say about the sender: its stanza-id, its
        // occupant id (XEP-0421) and muc#user data such as a real JID
        // (XEP-0313 §5.1.2: pre-existing <x/> elements are stripped).
        .filter(|c| {
            !matches!(c, Node::Element(e) if e.is("stanza-id", mam::NS_SID)
                || e.is("occupant-id", NS_OCCUPANT_ID)
                || e.is("x", NS_MUC_USER))
        })
        .cloned()
        .collect();
    out
}

/// The payload of a presence others see (its MUC `<x/>` removed).
fn presence_payload(el: &Element) -> Vec<Element> {
    el.elements()
        .filter(|e| !(e.name == "x" && (e.ns == NS_MUC || e.ns == NS_MUC_USER)))
        .filter(|e| !e.is("occupant-id", NS_OCCUPANT_ID))
        .cloned()
        .collect()
}

fn parse_payload(xml: &str) -> Vec<Element> {
    if xml.is_empty() {
        return Vec::new();
    }
    let wrapped = format!("<presence xmlns=\"jabber:client\">{xml}</presence>");
    crate::stanza::parse_serialised(&wrapped)
        .map(|p| p.elements().cloned().collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------ forms

fn value(v: &str) -> Element {
    Element::new("value", NS_DATA).text(v)
}

fn hidden_field(var: &str, v: &str) -> Element {
    Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "hidden")
        .child(value(v))
}

fn text_field(var: &str, label: &str, v: &str) -> Element {
    Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "text-single")
        .attr("label", label)
        .child(value(v))
}

fn bool_field(var: &str, label: &str, v: bool) -> Element {
    Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "boolean")
        .attr("label", label)
        .child(value(if v { "1" } else { "0" }))
}

fn list_field(var: &str, label: &str, v: &str, options: &[&str]) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "list-single")
        .attr("label", label)
        .child(value(v));
    for o in options {
        f = f.child(
            Element::new("option", NS_DATA)
                .attr("label", *o)
                .child(value(o)),
        );
    }
    f
}

fn roles_field(var: &str, label: &str, v: &[Role]) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "list-multi")
        .attr("label", label);
    for r in v {
        f = f.child(value(r.name()));
    }
    for o in [Role::Moderator, Role::Participant, Role::Visitor] {
        f = f.child(
            Element::new("option", NS_DATA)
                .attr("label", o.name())
                .child(value(o.name())),
        );
    }
    f
}

fn jid_multi(var: &str, label: &str, v: &[String]) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", "jid-multi")
        .attr("label", label);
    for j in v {
        f = f.child(value(j));
    }
    f
}

/// The FORM_TYPE of a data form.
fn form_type(x: &Element) -> Option<String> {
    x.elements()
        .find(|f| f.is("field", NS_DATA) && f.get_attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.child_text("value", NS_DATA))
}

fn bad(text: &str) -> StanzaError {
    StanzaError::with_text(Condition::BadRequest, text)
}

fn values(f: &Element) -> Vec<String> {
    f.elements()
        .filter(|e| e.is("value", NS_DATA))
        .map(Element::text_content)
        .collect()
}

fn one(f: &Element, var: &str) -> Result<String, StanzaError> {
    let v = values(f);
    match v.as_slice() {
        [] => Ok(String::new()),
        [x] => Ok(x.clone()),
        _ => Err(bad(&format!("{var} takes one value"))),
    }
}

/// The roles of a list-multi field (`presencebroadcast`, `getmemberlist`).
fn roles(f: &Element, var: &str) -> Result<Vec<Role>, StanzaError> {
    let mut out = Vec::new();
    for v in values(f) {
        match Role::parse(v.trim()) {
            Some(r) if r != Role::None => {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            _ => {
                return Err(bad(&format!(
                    "{var} takes moderator, participant and visitor"
                )));
            }
        }
    }
    Ok(out)
}

/// Whether `v` looks like an RFC 5646 language tag (subtags of 1 to 8
/// letters or digits, the first of letters).
fn language_tag(v: &str) -> bool {
    v.len() <= 64
        && v.split('-').enumerate().all(|(i, t)| {
            (1..=8).contains(&t.len())
                && if i == 0 {
                    t.chars().all(|c| c.is_ascii_alphabetic())
                } else {
                    t.chars().all(|c| c.is_ascii_alphanumeric())
                }
        })
}

fn boolean(f: &Element, var: &str) -> Result<bool, StanzaError> {
    match one(f, var)?.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(bad(&format!("{var} is a boolean"))),
    }
}

/// Applies a submitted `muc#roomconfig` form (an empty one: the defaults,
/// an instant room). Values of the wrong type are `<bad-request/>`, values
/// the room cannot take `<not-acceptable/>`; nothing is applied then.
fn apply_form(server: &Server, rec: &mut RoomRecord, x: &Element) -> Result<(), StanzaError> {
    let mut c = rec.config.clone();
    let mut secret: Option<String> = None;
    let mut protected: Option<bool> = None;
    let mut owners: Option<Vec<String>> = None;
    let mut admins: Option<Vec<String>> = None;
    for f in x.elements().filter(|e| e.is("field", NS_DATA)) {
        let Some(var) = f.get_attr("var") else {
            continue;
        };
        match var {
            "FORM_TYPE" => {
                let v = one(f, var)?;
                if v != NS_ROOMCONFIG {
                    return Err(bad("FORM_TYPE is not muc#roomconfig"));
                }
            }
            "muc#roomconfig_roomname" => c.name = one(f, var)?,
            "muc#roomconfig_roomdesc" => c.desc = one(f, var)?,
            "muc#roomconfig_persistentroom" => c.persistent = boolean(f, var)?,
            "muc#roomconfig_publicroom" => c.public = boolean(f, var)?,
            "muc#roomconfig_membersonly" => c.members_only = boolean(f, var)?,
            "muc#roomconfig_moderatedroom" => c.moderated = boolean(f, var)?,
            "muc#roomconfig_changesubject" => c.change_subject = boolean(f, var)?,
            "muc#roomconfig_allowinvites" => c.allow_invites = boolean(f, var)?,
            "muc#roomconfig_enablelogging" => c.logging = boolean(f, var)?,
            "muc#roomconfig_passwordprotectedroom" => protected = Some(boolean(f, var)?),
            "muc#roomconfig_roomsecret" => secret = Some(one(f, var)?),
            "muc#roomconfig_maxusers" => {
                let v = one(f, var)?;
                let v = v.trim();
                c.max_users = if v == "none" || v.is_empty() {
                    0
                } else {
                    let n: u32 = v
                        .parse()
                        .map_err(|_| bad("maxusers is a number or 'none'"))?;
                    if n == 0 || n > server.config.muc.max_users_limit {
                        return Err(StanzaError::with_text(
                            Condition::NotAcceptable,
                            "maxusers is out of range",
                        ));
                    }
                    n
                };
                if c.max_users == 0 {
                    // "none" still means the service's limit.
                    c.max_users = server.config.muc.max_users_limit;
                }
            }
            "muc#roomconfig_whois" => {
                c.whois_anyone = match one(f, var)?.trim() {
                    "anyone" => true,
                    "moderators" => false,
                    _ => return Err(bad("whois is 'moderators' or 'anyone'")),
                }
            }
            "muc#roomconfig_allowpm" => {
                c.allow_pm = AllowPm::parse(one(f, var)?.trim())
                    .ok_or_else(|| bad("allowpm is anyone, participants, moderators or none"))?;
            }
            "muc#roomconfig_presencebroadcast" => c.presence_broadcast = roles(f, var)?,
            "muc#roomconfig_getmemberlist" => c.get_member_list = roles(f, var)?,
            "muc#roomconfig_lang" => {
                let v = one(f, var)?;
                let v = v.trim();
                if !v.is_empty() && !language_tag(v) {
                    return Err(bad("lang is a language tag (RFC 5646)"));
                }
                c.lang = v.to_owned();
            }
            "muc#roomconfig_pubsub" => {
                let v = one(f, var)?;
                if v.chars().any(char::is_control) {
                    return Err(bad("pubsub is a node URI"));
                }
                c.pubsub = v.trim().to_owned();
            }
            "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                let v = one(f, var)?;
                let v = v.trim();
                c.max_history = if v.is_empty() {
                    None
                } else {
                    Some(
                        v.parse::<u32>()
                            .map_err(|_| bad("maxhistoryfetch is a number"))?,
                    )
                };
            }
            "muc#roomconfig_roomowners" | "muc#roomconfig_roomadmins" => {
                let mut list = Vec::new();
                for v in values(f) {
                    // A value that is no JID in a jid-multi field: the
                    // wrong type, like the other fields' (bad-request).
                    let j = jid::BareJid::new(v.trim())
                        .map_err(|_| bad(&format!("{var} takes bare JIDs")))?;
                    list.push(j.to_string());
                }
                if var.ends_with("owners") {
                    owners = Some(list);
                } else {
                    admins = Some(list);
                }
            }
            // Fields this service does not know are left alone.
            _ => {}
        }
    }
    match (protected, secret) {
        (Some(true), Some(s)) if !s.is_empty() => c.password = Some(s),
        (Some(true), _) if c.password.is_some() => {}
        (Some(true), _) => {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "a password-protected room needs a password",
            ));
        }
        (Some(false), _) => c.password = None,
        (None, Some(s)) => c.password = (!s.is_empty()).then_some(s),
        (None, None) => {}
    }
    if let Some(list) = owners {
        if list.is_empty() {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "the room must keep an owner",
            ));
        }
        rec.affiliations.retain(|_, a| *a != Affiliation::Owner);
        for j in list {
            rec.affiliations.insert(j, Affiliation::Owner);
        }
    }
    if let Some(list) = admins {
        rec.affiliations.retain(|_, a| *a != Affiliation::Admin);
        for j in list {
            rec.affiliations.entry(j).or_insert(Affiliation::Admin);
        }
    }
    rec.config = c;
    Ok(())
}
