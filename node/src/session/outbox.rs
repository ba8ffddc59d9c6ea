//! A session actor's outbox: the serialised stanzas waiting for its socket.
//!
//! Only the session actor touches it: its message handler pushes, its
//! stream task drains. It allocates nothing while empty. Its bound is the
//! session's admission [`Gate`] (count and bytes, checked by senders before
//! they send): taking stanzas out to write them gives their room back.

use super::sm::Takeover;
use crate::router::Gate;
use crate::stanza::StreamCondition;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the stream task takes out of the outbox.
pub enum Outgoing {
    /// Serialised stanzas to write to the client as they are, oldest first.
    Stanzas(VecDeque<Arc<str>>),
    /// Close the stream with this stream error condition.
    Close(StreamCondition),
    /// Another connection resumes this session (XEP-0198).
    Takeover(Takeover),
    /// Another node resumes it; its client handled this many stanzas.
    Released(u32),
    /// Write the stream management record again.
    Checkpoint,
}

/// What a detached session waits for (it writes nothing meanwhile).
pub enum Control {
    Close,
    Takeover(Takeover),
    Released(u32),
    Checkpoint,
}

/// Why a stanza was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session is ending: nothing more is written.
    Ended,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Arc<str>>,
    close: Option<StreamCondition>,
    takeover: Option<Takeover>,
    release: Option<u32>,
    checkpoint: bool,
    ended: bool,
}

impl Outbox {
    pub fn new(gate: Arc<Gate>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            gate,
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
                if let Some(t) = st.takeover.take() {
                    return Outgoing::Takeover(t);
                }
                if let Some(h) = st.release.take() {
                    return Outgoing::Released(h);
                }
                if std::mem::take(&mut st.checkpoint) {
                    return Outgoing::Checkpoint;
                }
                if !st.queue.is_empty() {
                    // Taking the deque leaves one with no allocation.
                    let batch = std::mem::take(&mut st.queue);
                    drop(st);
                    let bytes = batch.iter().map(|x| x.len()).sum();
                    self.gate.release(batch.len(), bytes);
                    return Outgoing::Stanzas(batch);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Copies of the stanzas queued now (they stay queued).
    pub fn peek(&self) -> Vec<Arc<str>> {
        self.state
            .lock()
            .expect("outbox lock")
            .queue
            .iter()
            .cloned()
            .collect()
    }

    /// The stanzas queued now, without waiting (`None` if there are none).
    pub fn take_stanzas(&self) -> Option<VecDeque<Arc<str>>> {
        let batch = {
            let mut st = self.state.lock().expect("outbox lock");
            if st.queue.is_empty() {
                return None;
            }
            // Taking the deque leaves one with no allocation.
            std::mem::take(&mut st.queue)
        };
        let bytes = batch.iter().map(|x| x.len()).sum();
        self.gate.release(batch.len(), bytes);
        Some(batch)
    }

    /// Waits for a close request or a takeover, leaving stanzas queued (a
    /// detached session: the gate still bounds them). With `Some(seen)`,
    /// also returns (copies of) the stanzas queued after the first `seen`,
    /// which stay queued.
    pub async fn control_or_queued(&self, seen: Option<usize>) -> Result<Control, Vec<Arc<str>>> {
        loop {
            {
                let mut st = self.state.lock().expect("outbox lock");
                if st.close.take().is_some() {
                    return Ok(Control::Close);
                }
                if let Some(t) = st.takeover.take() {
                    return Ok(Control::Takeover(t));
                }
                if let Some(h) = st.release.take() {
                    return Ok(Control::Released(h));
                }
                if std::mem::take(&mut st.checkpoint) {
                    return Ok(Control::Checkpoint);
                }
                // Control first: a resumption taking the session over
                // needs no notification of what it takes with it.
                if let Some(seen) = seen
                    && st.queue.len() > seen
                {
                    return Err(st.queue.iter().skip(seen).cloned().collect());
                }
            }
            self.notify.notified().await;
        }
    }

    /// Hands a resumption request to the stream task; gives it back when
    /// the session has ended (it cannot be resumed any more).
    pub fn takeover(&self, t: Takeover) -> Result<(), Takeover> {
        {
            let mut st = self.state.lock().expect("outbox lock");
            if st.ended {
                return Err(t);
            }
            st.takeover = Some(t);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the stream task to let the session go (resumed on another node).
    pub fn release(&self, h: u32) {
        self.state
            .lock()
            .expect("outbox lock")
            .release
            .get_or_insert(h);
        self.notify.notify_one();
    }

    /// Asks the stream task to write its stream management record again.
    pub fn checkpoint(&self) {
        self.state.lock().expect("outbox lock").checkpoint = true;
        self.notify.notify_one();
    }

    /// Whether the session has ended (nothing is queued any more).
    pub fn is_ended(&self) -> bool {
        self.state.lock().expect("outbox lock").ended
    }

    /// A resumption request that arrived but was not taken yet.
    pub fn take_takeover(&self) -> Option<Takeover> {
        self.state.lock().expect("outbox lock").takeover.take()
    }

    /// Gives back the room `xml` took in the gate when it was sent: it
    /// will not be written (filtered out before the outbox).
    pub fn discard(&self, xml: &str) {
        self.gate.release(1, xml.len());
    }

    /// Queues `xml` (admitted by the gate when it was sent).
    pub fn push(&self, xml: Arc<str>) -> Result<(), Refused> {
        {
            let mut st = self.state.lock().expect("outbox lock");
            if st.ended {
                return Err(Refused::Ended);
            }
            st.queue.push_back(xml);
        }
        self.notify.notify_one();
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

    /// Refuses everything from now on (the session is ending; senders are
    /// refused at the gate) and returns what was queued but not written,
    /// for the caller to route again.
    pub fn end(&self) -> VecDeque<Arc<str>> {
        self.gate.end();
        let mut st = self.state.lock().expect("outbox lock");
        st.ended = true;
        std::mem::take(&mut st.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_bounds_what_waits_and_taking_it_out_gives_room_back() {
        let gate = Arc::new(Gate::new(2, 1024));
        let o = Outbox::new(gate.clone());
        let h = |xml: &str| xml.to_owned();
        for x in ["<a/>", "<b/>"] {
            assert!(gate_admit(&gate, x));
            o.push(h(x).into()).unwrap();
        }
        assert!(
            !gate_admit(&gate, "<c/>"),
            "a third stanza is over the count"
        );
        let Outgoing::Stanzas(batch) = futures::executor::block_on(o.recv()) else {
            panic!("stanzas expected")
        };
        assert_eq!(batch.len(), 2);
        assert!(gate_admit(&gate, "<c/>"), "room is given back once written");
        let rest = o.end();
        assert!(rest.is_empty());
        assert_eq!(o.push("<d/>".into()), Err(Refused::Ended));
        assert!(
            !gate_admit(&gate, "<e/>"),
            "an ended session admits nothing"
        );
    }

    fn gate_admit(gate: &Gate, xml: &str) -> bool {
        gate.admit(xml.len())
    }
}
