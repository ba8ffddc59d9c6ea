//! The router: which sessions are bound on this node, and delivery to them.
//!
//! A concurrent map from bare JID to the user's bound resources, not an
//! actor everything funnels through: a sender looks the recipient up and
//! pushes into the recipient session's bounded mailbox itself. Each entry
//! also holds what RFC 6121 delivery needs per resource (availability,
//! priority, last presence, whether it asked for the roster).
//!
//! This map holds only the sessions of this node; sessions on other nodes
//! are found in the replicated routing table (`crate::routing`).

use crate::xml::Element;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What a session takes out of its mailbox.
#[derive(Debug)]
pub enum SessionMsg {
    /// Serialised stanzas to write to the client as they are, oldest first.
    Stanzas(VecDeque<Arc<str>>),
    /// Close the stream with this stream error condition.
    Close(&'static str),
}

/// A session's bounded mailbox of serialised stanzas. Bounded in count and
/// in bytes, so a client that does not read cannot make the server buffer
/// without limit; and unlike a channel it allocates nothing while empty.
/// Stanzas are serialised once by the sender, so one broadcast is shared
/// by every recipient.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<MailboxState>,
    notify: Notify,
    max_count: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Arc<str>>,
    bytes: usize,
    close: Option<&'static str>,
    /// The session ended: nothing more is accepted.
    ended: bool,
}

impl Mailbox {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Mailbox {
            state: Mutex::new(MailboxState::default()),
            notify: Notify::new(),
            max_count,
            max_bytes,
        }
    }

    /// Waits for stanzas or a close request.
    pub async fn recv(&self) -> SessionMsg {
        loop {
            {
                let mut st = self.state.lock().expect("mailbox lock");
                if let Some(c) = st.close.take() {
                    return SessionMsg::Close(c);
                }
                if !st.queue.is_empty() {
                    st.bytes = 0;
                    // Taking the deque leaves one with no allocation.
                    return SessionMsg::Stanzas(std::mem::take(&mut st.queue));
                }
            }
            self.notify.notified().await;
        }
    }

    /// Refuses everything from now on (the session is ending) and returns
    /// what was queued but not written, for the caller to re-route.
    pub fn end(&self) -> VecDeque<Arc<str>> {
        let mut st = self.state.lock().expect("mailbox lock");
        st.ended = true;
        st.bytes = 0;
        std::mem::take(&mut st.queue)
    }

    /// Queues `xml`; false when the session ended or the mailbox is full
    /// (then the session is told to close: its client does not read).
    fn push(&self, xml: Arc<str>) -> bool {
        {
            let mut st = self.state.lock().expect("mailbox lock");
            if st.ended {
                return false;
            }
            if st.queue.len() >= self.max_count || st.bytes + xml.len() > self.max_bytes {
                st.close.get_or_insert("resource-constraint");
                drop(st);
                self.notify.notify_one();
                metrics::counter!("starling_router_mailbox_full_total").increment(1);
                return false;
            }
            st.bytes += xml.len();
            st.queue.push_back(xml);
        }
        self.notify.notify_one();
        metrics::counter!("starling_router_delivered_total").increment(1);
        true
    }
}

/// The sending side of one session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    pub id: u64,
    mailbox: Arc<Mailbox>,
}

impl SessionHandle {
    pub fn new(mailbox: Arc<Mailbox>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionHandle {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            mailbox,
        }
    }

    /// Queues a stanza; hands it back when the session has ended or its
    /// mailbox is full, so the caller can store or bounce it.
    pub fn send(&self, el: Element) -> Result<(), Element> {
        let xml: Arc<str> = el.to_stream_xml(crate::stanza::NS_CLIENT).into();
        if self.mailbox.push(xml) {
            Ok(())
        } else {
            Err(el)
        }
    }

    /// Queues an already serialised stanza (shared by many recipients).
    pub fn send_shared(&self, xml: &Arc<str>) -> bool {
        self.mailbox.push(xml.clone())
    }

    /// Asks the session to close its stream with `condition`.
    pub fn close(&self, condition: &'static str) {
        self.mailbox
            .state
            .lock()
            .expect("mailbox lock")
            .close
            .get_or_insert(condition);
        self.mailbox.notify.notify_one();
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
