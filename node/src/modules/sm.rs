//! XEP-0198 stream management: declared here (its stream feature), done
//! by the session itself (`session::sm`, `session::c2s`), since acks and
//! resumption are about the stream, not about stanzas.

use super::{Module, Stage, StreamFeature};

pub static MODULE: Module = Module {
    name: "sm",
    spec: "XEP-0198",
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: "<sm xmlns='urn:xmpp:sm:3'/>",
        when: Some(|c| c.sm.enabled),
    }],
    config_section: Some("sm"),
    ..Module::EMPTY
};
