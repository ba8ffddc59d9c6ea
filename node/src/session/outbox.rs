//! A session actor's outbox: the serialised stanzas waiting for its socket.
//!
//! Bounded in count and in bytes, so a client that does not read cannot
//! make the server buffer without limit; unlike a channel it allocates
//! nothing while empty. Only the session actor touches it: its message
//! handlers push, its stream task drains.

use crate::stanza::StreamCondition;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the stream task takes out of the outbox.
#[derive(Debug)]
pub enum Outgoing {
    /// Serialised stanzas to write to the client as they are, oldest first.
    Stanzas(VecDeque<Arc<str>>),
    /// Close the stream with this stream error condition.
    Close(StreamCondition),
}

/// Why a stanza was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session is ending: nothing more is written.
    Ended,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_count: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Arc<str>>,
    bytes: usize,
    /// Stanzas that arrived while the outbox was full: kept (they are owed
    /// to the user) and routed again when the session ends.
    overflow: Vec<Arc<str>>,
    close: Option<StreamCondition>,
    ended: bool,
}

impl Outbox {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_count,
            max_bytes,
        }
    }

    /// Waits for stanzas or a close request.
    pub async fn recv(&self) -> Outgoing {
        loop {
            {
                let mut st = self.state.lock().expect("outbox lock");
                if let Some(c) = st.close.take() {
                    return Outgoing::Close(c);
                }
                if !st.queue.is_empty() {
                    st.bytes = 0;
                    // Taking the deque leaves one with no allocation.
                    return Outgoing::Stanzas(std::mem::take(&mut st.queue));
                }
            }
            self.notify.notified().await;
        }
    }

    /// Queues `xml`. A full outbox means the client does not read: the
    /// session is told to close with `<resource-constraint/>` and the
    /// stanza is kept for [`Outbox::end`] to hand back.
    pub fn push(&self, xml: Arc<str>) -> Result<(), Refused> {
        {
            let mut st = self.state.lock().expect("outbox lock");
            if st.ended {
                return Err(Refused::Ended);
            }
            if st.queue.len() >= self.max_count || st.bytes + xml.len() > self.max_bytes {
                st.close.get_or_insert(StreamCondition::ResourceConstraint);
                st.overflow.push(xml);
                drop(st);
                self.notify.notify_one();
                metrics::counter!("starling_router_mailbox_full_total").increment(1);
                return Ok(());
            }
            st.bytes += xml.len();
            st.queue.push_back(xml);
        }
        self.notify.notify_one();
        metrics::counter!("starling_router_delivered_total").increment(1);
        Ok(())
    }

    /// Asks the stream task to close with `condition` (the first asked wins).
    pub fn close(&self, condition: StreamCondition) {
        self.state
            .lock()
            .expect("outbox lock")
            .close
            .get_or_insert(condition);
        self.notify.notify_one();
    }

    /// Refuses everything from now on (the session is ending) and returns
    /// what was queued but not written, for the caller to route again.
    pub fn end(&self) -> Vec<Arc<str>> {
        let mut st = self.state.lock().expect("outbox lock");
        st.ended = true;
        st.bytes = 0;
        let mut rest: Vec<Arc<str>> = std::mem::take(&mut st.queue).into();
        rest.append(&mut st.overflow);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_keeps_the_stanza_and_asks_to_close() {
        let o = Outbox::new(1, 1024);
        o.push("<a/>".into()).unwrap();
        o.push("<b/>".into()).unwrap();
        let rest = o.end();
        assert_eq!(
            rest.iter().map(|s| &**s).collect::<Vec<_>>(),
            ["<a/>", "<b/>"]
        );
        assert_eq!(o.push("<c/>".into()), Err(Refused::Ended));
        assert_eq!(
            o.state.lock().unwrap().close,
            Some(StreamCondition::ResourceConstraint)
        );
    }

    #[test]
    fn byte_bound() {
        let o = Outbox::new(100, 6);
        o.push("<aaaa/>".into()).unwrap();
        assert_eq!(o.state.lock().unwrap().overflow.len(), 1);
    }
}
