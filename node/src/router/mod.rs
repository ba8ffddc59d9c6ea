//! The router: which sessions are bound on this node, and delivery to them.
//!
//! A concurrent map from bare JID to the user's bound resources, not an
//! actor everything funnels through: a sender looks the recipient up and
//! sends to the recipient session actor's address itself. Each entry
//! also holds what RFC 6121 delivery needs per resource (availability,
//! priority, last presence, whether it asked for the roster).
//!
//! This map holds only the sessions of this node; sessions on other nodes
//! are found in the replicated routing table (`crate::routing`).

use crate::xml::Element;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What other parts of the server send a session actor: its address
/// (behind a [`SessionHandle`]) is the only way into a bound session.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A serialised stanza to write to the client as it is. Serialised
    /// once by the sender, so one broadcast is shared by every recipient.
    Stanza(Arc<str>),
    /// Close the stream with this stream error condition.
    Close(&'static str),
}

/// The sending side of one session: its id and the session actor's
/// address, typed by message rather than by actor so that the router
/// does not depend on the session module.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    /// Shared: cloning an actix address allocates, cloning this does not.
    to: Arc<actix::Recipient<ToSession>>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl SessionHandle {
    pub fn new(to: actix::Recipient<ToSession>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionHandle {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            to: Arc::new(to),
        }
    }

    /// Queues a stanza; hands it back when the session has ended or its
    /// mailbox is full, so the caller can store or bounce it.
    pub fn send(&self, el: Element) -> Result<(), Element> {
        let xml: Arc<str> = el.to_stream_xml(crate::stanza::NS_CLIENT).into();
        if self.send_shared(&xml) {
            Ok(())
        } else {
            Err(el)
        }
    }

    /// Queues an already serialised stanza (shared by many recipients);
    /// false when the session has ended or its mailbox is full.
    pub fn send_shared(&self, xml: &Arc<str>) -> bool {
        match self.to.try_send(ToSession::Stanza(xml.clone())) {
            Ok(()) => true,
            Err(_) => {
                metrics::counter!("starling_router_mailbox_full_total").increment(1);
                false
            }
        }
    }

    /// Asks the session to close its stream with `condition`.
    pub fn close(&self, condition: &'static str) {
        self.to.do_send(ToSession::Close(condition));
    }
}

/// One bound resource of a user.
#[derive(Clone, Debug)]
pub struct Resource {
    pub resource: String,
    pub handle: SessionHandle,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i32,
    /// The last available presence it broadcast.
    pub presence: Option<Element>,
    /// Requested the roster (RFC 6121 §2.1.6 "interested resource").
    pub interested: bool,
}

#[derive(Default)]
pub struct Router {
    users: DashMap<String, Vec<Resource>>,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    /// Binds `resource` for `bare`. An existing session with the same
    /// resource is returned so the caller can close it with `<conflict/>`
    /// (RFC 6120 §7.7.2.2: the older session is replaced).
    pub fn bind(&self, bare: &str, resource: &str, handle: SessionHandle) -> Option<SessionHandle> {
        let mut entry = self.users.entry(bare.to_owned()).or_default();
        let old = entry
            .iter()
            .position(|r| r.resource == resource)
            .map(|i| entry.remove(i).handle);
        entry.push(Resource {
            resource: resource.to_owned(),
            handle,
            available: false,
            priority: 0,
            presence: None,
            interested: false,
        });
        metrics::gauge!("starling_c2s_sessions").increment(1.0);
        if old.is_some() {
            metrics::gauge!("starling_c2s_sessions").decrement(1.0);
        }
        old
    }

    /// Removes the session `id`; returns whether it was still bound.
    pub fn unbind(&self, bare: &str, id: u64) -> bool {
        let mut removed = false;
        self.users.remove_if_mut(bare, |_, list| {
            if let Some(i) = list.iter().position(|r| r.handle.id == id) {
                list.remove(i);
                removed = true;
            }
            list.is_empty()
        });
        if removed {
            metrics::gauge!("starling_c2s_sessions").decrement(1.0);
        }
        removed
    }

    /// Changes one resource's state under the map's lock.
    pub fn update(&self, bare: &str, id: u64, f: impl FnOnce(&mut Resource)) {
        if let Some(mut list) = self.users.get_mut(bare)
            && let Some(r) = list.iter_mut().find(|r| r.handle.id == id)
        {
            f(r);
        }
    }

    /// A snapshot of the user's resources on this node.
    pub fn resources(&self, bare: &str) -> Vec<Resource> {
        self.users.get(bare).map(|l| l.clone()).unwrap_or_default()
    }

    /// Runs `f` over the user's resources without copying them.
    pub fn with_resources<T>(&self, bare: &str, f: impl FnOnce(&[Resource]) -> T) -> T {
        match self.users.get(bare) {
            Some(list) => f(&list),
            None => f(&[]),
        }
    }

    pub fn handle(&self, bare: &str, resource: &str) -> Option<SessionHandle> {
        self.with_resources(bare, |rs| {
            rs.iter()
                .find(|r| r.resource == resource)
                .map(|r| r.handle.clone())
        })
    }

    /// Ends every session of `bare` with `condition`.
    pub fn close_all(&self, bare: &str, condition: &'static str) {
        for r in self.resources(bare) {
            r.handle.close(condition);
        }
    }

    /// Bare JIDs with sessions on this node.
    pub fn users(&self) -> Vec<String> {
        self.users.iter().map(|e| e.key().clone()).collect()
    }

    /// Number of bound sessions on this node.
    pub fn session_count(&self) -> usize {
        self.users.iter().map(|e| e.value().len()).sum()
    }
}
