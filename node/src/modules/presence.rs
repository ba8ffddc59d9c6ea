//! RFC 6121 §3 and §4: presence subscriptions (with §3.4 pre-approval) and
//! presence broadcast. The state machine lives in the stanza path
//! (`session::im`); this module only declares what the server implements
//! and the key space of pending inbound subscription requests.

use super::{Module, Stage, StreamFeature};
use crate::storage::PENDING_IN;

pub static MODULE: Module = Module {
    name: "presence",
    spec: "RFC 6121 §3 (subscriptions, §3.4 pre-approval), §4 (presence)",
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: "<sub xmlns='urn:xmpp:features:pre-approval'/>",
        when: None,
    }],
    spaces: &[PENDING_IN],
    ..Module::EMPTY
};
