//! XEP-0352 Client State Indication: declared here (the stream feature,
//! the `[csi]` configuration section); the behaviour lives with the
//! session it changes, in `session::csi`.

use super::{Module, Stage, StreamFeature};

pub use crate::session::csi::NS_CSI;

pub static MODULE: Module = Module {
    name: "csi",
    spec: "XEP-0352 v1.0",
    // §3: advertised once the client has authenticated.
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: "<csi xmlns='urn:xmpp:csi:0'/>",
        when: None,
    }],
    config_section: Some("csi"),
    ..Module::EMPTY
};
