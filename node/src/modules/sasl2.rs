//! XEP-0388 SASL2 and XEP-0386 Bind2: declared here for the compliance
//! list; both are stream negotiation (`stream::negotiate`, `stream::sasl`),
//! with what Bind2 asks inline done by the session (`session::c2s`).

use super::Module;

pub static MODULE: Module = Module {
    name: "sasl2",
    spec: "XEP-0388 v0.4 (no <continue/> tasks or upgrades), XEP-0386 v1.0, XEP-0198 §SASL2",
    ..Module::EMPTY
};
