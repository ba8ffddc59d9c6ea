//! XEP-0352 Client State Indication for one session: while its client says
//! it is inactive, the presence updates of its contacts wait, so a phone's
//! radio is not woken for each of them.
//!
//! A [`Csi`] filter is owned by the session actor and sits in front of its
//! outbox. While the client is active it hands every stanza straight on
//! (one branch). While inactive it looks at the start tag of each
//! serialised stanza:
//! - available and unavailable presence is held (but for the client's own,
//!   reflected back to it): only the latest per sender full JID, in the order the senders were first held, at most
//!   `csi.max_held` senders (one more sends them all);
//! - what the client must see at once and in order (a message with a body,
//!   also inside a carbon; an IQ; a subscription request or answer, or any
//!   other presence) first sends what is held, then itself;
//! - a message without a body (chat states, receipts, markers) goes on at
//!   once and leaves the held presence waiting (§2 leaves this to the
//!   server: such messages say nothing the presence they overtake changes);
//! - `<active/>` sends what is held.
//!
//! Held stanzas keep the room they took in the session's admission gate, so
//! the gate still bounds all the session holds; a held presence that a newer
//! one from the same sender replaces gives its room back. Presence held when
//! the session ends is dropped, as presence to a gone session is
//! (RFC 6121 §4.6.4 has no storage for it).

use crate::router::Gate;
use crate::stanza::StreamCondition;
use crate::xml::Element;
use crate::xml::scan::raw_attr;
use std::collections::HashMap;
use std::sync::Arc;

pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// What the client says of itself (§3): the session's stream task tells
/// its actor, which owns the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub enum ClientState {
    Active,
    Inactive,
}

impl ClientState {
    /// The state a top-level element of the CSI namespace names. Any other
    /// element of it is not something the server supports:
    /// `<unsupported-stanza-type/>` (RFC 6120 §4.9.3.24).
    pub fn of(el: &Element) -> Result<ClientState, StreamCondition> {
        match el.name.as_str() {
            "active" => Ok(ClientState::Active),
            "inactive" => Ok(ClientState::Inactive),
            _ => Err(StreamCondition::UnsupportedStanzaType),
        }
    }
}

/// The filter in front of one session's outbox. While its client is
/// active (the usual state) it is a pointer and a count: nothing is
/// allocated until the client says it is inactive.
#[derive(Debug)]
pub struct Csi {
    gate: Arc<Gate>,
    max_held: usize,
    /// The session's own full JID as serialised in a `from`: the client's
    /// own presence, reflected back to it, is never held (it caused it).
    me: Box<str>,
    /// Present while the client is inactive.
    inactive: Option<Box<Held>>,
}

/// What an inactive client's session holds.
#[derive(Debug, Default)]
struct Held {
    /// Held presence, in the order its senders were first held.
    order: Vec<Arc<str>>,
    /// Sender (the `from` attribute as serialised) → its place in `order`.
    by_sender: HashMap<Box<str>, usize>,
}

/// What an inactive client's session does with a stanza.
#[derive(Debug, PartialEq, Eq)]
enum Class<'a> {
    /// Available or unavailable presence from this sender: held.
    Presence(&'a str),
    /// Sends what is held, then itself.
    Urgent,
    /// Goes on at once; what is held keeps waiting.
    Other,
}

impl Csi {
    pub fn new(gate: Arc<Gate>, max_held: usize, full: &str) -> Self {
        Csi {
            gate,
            max_held,
            me: crate::xml::escape(full).into(),
            inactive: None,
        }
    }

    /// Hands `xml` to `out` now, or holds it for later.
    #[inline]
    pub fn pass(&mut self, xml: Arc<str>, mut out: impl FnMut(Arc<str>)) {
        match &mut self.inactive {
            None => out(xml),
            Some(held) => held.filter(xml, &self.gate, self.max_held, &self.me, &mut out),
        }
    }

    /// The client's new state; becoming active sends what was held.
    pub fn set(&mut self, state: ClientState, mut out: impl FnMut(Arc<str>)) {
        match state {
            ClientState::Inactive => {
                self.inactive.get_or_insert_default();
            }
            ClientState::Active => {
                if let Some(mut held) = self.inactive.take() {
                    held.flush(&mut out);
                }
            }
        }
    }
}

impl Held {
    fn filter(
        &mut self,
        xml: Arc<str>,
        gate: &Gate,
        max_held: usize,
        me: &str,
        out: &mut impl FnMut(Arc<str>),
    ) {
        let sender = match classify(&xml) {
            Class::Presence(from) if from == me => {
                out(xml);
                return;
            }
            Class::Presence(from) => Box::<str>::from(from),
            Class::Urgent => {
                self.flush(out);
                out(xml);
                return;
            }
            Class::Other => {
                out(xml);
                return;
            }
        };
        metrics::counter!("starling_csi_presence_held_total").increment(1);
        if let Some(&i) = self.by_sender.get(&sender) {
            let old = std::mem::replace(&mut self.order[i], xml);
            // Superseded: it will never be written, so its room is free.
            gate.release(1, old.len());
            metrics::counter!("starling_csi_presence_superseded_total").increment(1);
            return;
        }
        self.by_sender.insert(sender, self.order.len());
        self.order.push(xml);
        if self.order.len() > max_held {
            self.flush(out);
        }
    }

    /// Sends everything held, oldest sender first, and lets go of the
    /// memory that held it.
    fn flush(&mut self, out: &mut impl FnMut(Arc<str>)) {
        if self.order.is_empty() {
            return;
        }
        metrics::counter!("starling_csi_flushes_total").increment(1);
        self.by_sender = HashMap::new();
        for xml in std::mem::take(&mut self.order) {
            out(xml);
        }
    }
}

/// Classifies a serialised stanza by its start tag (and, for a message,
/// whether it has a body anywhere), without parsing it.
fn classify(xml: &str) -> Class<'_> {
    if let Some(rest) = xml.strip_prefix("<presence") {
        // Attribute values are escaped ('>' included): the start tag ends
        // at the first '>'.
        let tag = rest.split_once('>').map_or(rest, |(t, _)| t);
        return match raw_attr(tag, "type") {
            None | Some("unavailable") => {
                Class::Presence(raw_attr(tag, "from").unwrap_or_default())
            }
            Some(_) => Class::Urgent,
        };
    }
    if xml.starts_with("<message") {
        return if xml.contains("<body") {
            Class::Urgent
        } else {
            Class::Other
        };
    }
    Class::Urgent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, status: &str) -> Arc<str> {
        format!("<presence from=\"{from}\" to=\"me@x/r\"><status>{status}</status></presence>")
            .into()
    }

    /// Runs `f` against a filter and collects what it handed on.
    fn run(csi: &mut Csi, f: impl FnOnce(&mut Csi, &mut dyn FnMut(Arc<str>))) -> Vec<String> {
        let mut got = Vec::new();
        f(csi, &mut |x: Arc<str>| got.push(x.to_string()));
        got
    }

    fn csi(max_held: usize) -> Csi {
        Csi::new(Arc::new(Gate::new(1024, 1 << 20)), max_held, "me@x/r")
    }

    #[test]
    fn classifies_by_start_tag() {
        assert_eq!(classify(&presence("a@b/c", "x")), Class::Presence("a@b/c"));
        assert_eq!(
            classify("<presence type=\"unavailable\" from=\"a@b/c\"/>"),
            Class::Presence("a@b/c")
        );
        for urgent in [
            "<presence from=\"a@b\" type=\"subscribe\"/>",
            "<presence type=\"error\" from=\"a@b\"><error/></presence>",
            "<message from=\"a@b/c\" type=\"chat\"><body>hi</body></message>",
            "<message from=\"me@x\"><received xmlns=\"urn:xmpp:carbons:2\"><forwarded \
             xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\"><body>hi</body>\
             </message></forwarded></received></message>",
            "<iq type=\"get\" id=\"1\"/>",
        ] {
            assert_eq!(classify(urgent), Class::Urgent, "{urgent}");
        }
        let composing = "<message from=\"a@b/c\" type=\"chat\">\
             <composing xmlns=\"http://jabber.org/protocol/chatstates\"/></message>";
        assert_eq!(classify(composing), Class::Other);
        // A '>' in a value is escaped, so it does not end the tag early.
        assert_eq!(
            classify("<presence from=\"a&gt;b@c/d\" type=\"subscribed\"/>"),
            Class::Urgent
        );
    }

    #[test]
    fn inactive_keeps_the_latest_per_sender_until_active() {
        let mut c = csi(10);
        let gate = c.gate.clone();
        run(&mut c, |c, out| c.set(ClientState::Inactive, out));
        for i in 0..5 {
            assert!(gate.admit(presence("a@b/c", &i.to_string()).len()));
            let got = run(&mut c, |c, out| {
                c.pass(presence("a@b/c", &i.to_string()), out)
            });
            assert!(got.is_empty());
        }
        let got = run(&mut c, |c, out| c.pass(presence("z@b/c", "z"), out));
        assert!(got.is_empty());
        let got = run(&mut c, |c, out| c.set(ClientState::Active, out));
        assert_eq!(got, [&*presence("a@b/c", "4"), &*presence("z@b/c", "z")]);
        assert!(c.inactive.is_none());
    }

    #[test]
    fn urgent_stanzas_flush_first_others_pass() {
        let mut c = csi(10);
        run(&mut c, |c, out| c.set(ClientState::Inactive, out));
        run(&mut c, |c, out| c.pass(presence("a@b/c", "1"), out));
        let state = "<message from=\"a@b/c\"><gone xmlns=\"http://jabber.org/protocol/chatstates\"/></message>";
        let got = run(&mut c, |c, out| c.pass(state.into(), out));
        assert_eq!(got, [state]);
        let msg = "<message from=\"a@b/c\"><body>hi</body></message>";
        let got = run(&mut c, |c, out| c.pass(msg.into(), out));
        assert_eq!(got, [&*presence("a@b/c", "1"), msg]);
    }

    #[test]
    fn the_clients_own_presence_is_not_held() {
        let mut c = csi(10);
        run(&mut c, |c, out| c.set(ClientState::Inactive, out));
        let got = run(&mut c, |c, out| c.pass(presence("me@x/r", "mine"), out));
        assert_eq!(got, [&*presence("me@x/r", "mine")]);
        assert!(run(&mut c, |c, out| c.pass(presence("me@x/other", "x"), out)).is_empty());
    }

    #[test]
    fn one_sender_past_the_bound_sends_everything() {
        let mut c = csi(2);
        run(&mut c, |c, out| c.set(ClientState::Inactive, out));
        for s in ["a@b/1", "a@b/2"] {
            assert!(run(&mut c, |c, out| c.pass(presence(s, "x"), out)).is_empty());
        }
        let got = run(&mut c, |c, out| c.pass(presence("a@b/3", "x"), out));
        assert_eq!(got.len(), 3);
        let held = c.inactive.as_ref().expect("still inactive");
        assert!(held.order.capacity() == 0 && held.by_sender.capacity() == 0);
    }
}
