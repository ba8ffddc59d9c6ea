//! XEP-0388 SASL2 and XEP-0386 Bind2: the stream feature is declared here;
//! both are stream negotiation (`stream::negotiate`, `stream::sasl`), with
//! what Bind2 asks inline done by the session (`session::c2s`), and FAST
//! tokens in `modules::fast`.

use super::{Module, Stage, StreamFeature};
use crate::config::Config;

/// `<authentication/>` up to what depends on the configuration: the same
/// mechanisms as `<mechanisms/>` (`stream::sasl::MECHANISMS`, checked by a
/// test), Bind2 with its inline features.
macro_rules! head {
    () => {
        concat!(
            "<authentication xmlns='urn:xmpp:sasl:2'>",
            "<mechanism>SCRAM-SHA-512</mechanism><mechanism>SCRAM-SHA-256</mechanism>",
            "<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>",
            "<inline><bind xmlns='urn:xmpp:bind:0'><inline>",
            "<feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:csi:0'/>"
        )
    };
}

macro_rules! tail {
    () => {
        "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast></inline></authentication>"
    };
}

fn resumable(c: &Config) -> bool {
    c.sm.enabled && c.sm.resume_timeout_secs > 0
}

pub static MODULE: Module = Module {
    name: "sasl2",
    spec: "XEP-0388 v0.4 (no <continue/> tasks or upgrades), XEP-0386 v1.0, XEP-0198 §SASL2",
    // XEP-0198 is offered inline as on the stream: enabling with Bind2
    // when `[sm]` is on, resuming (`<sm/>`) when sessions can be resumed.
    stream_features: &[
        StreamFeature {
            stage: Stage::PreAuth,
            xml: concat!(
                head!(),
                "<feature var='urn:xmpp:sm:3'/></inline></bind><sm xmlns='urn:xmpp:sm:3'/>",
                tail!()
            ),
            when: Some(resumable),
        },
        StreamFeature {
            stage: Stage::PreAuth,
            xml: concat!(
                head!(),
                "<feature var='urn:xmpp:sm:3'/></inline></bind>",
                tail!()
            ),
            when: Some(|c| c.sm.enabled && !resumable(c)),
        },
        StreamFeature {
            stage: Stage::PreAuth,
            xml: concat!(head!(), "</inline></bind>", tail!()),
            when: Some(|c| !c.sm.enabled),
        },
    ],
    ..Module::EMPTY
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fast;

    #[test]
    fn the_same_mechanisms_as_legacy_sasl() {
        let mut want = String::from("<authentication xmlns='urn:xmpp:sasl:2'>");
        for m in crate::stream::sasl::MECHANISMS {
            want.push_str(&format!("<mechanism>{m}</mechanism>"));
        }
        want.push_str("<inline>");
        for f in MODULE.stream_features {
            assert!(f.xml.starts_with(&want), "{}", f.xml);
        }
    }

    /// What `stream::negotiate` replaces to offer `HT-SHA-256-ENDP` too.
    #[test]
    fn fast_mechanisms_listed_once() {
        let want = format!(
            "<fast xmlns='urn:xmpp:fast:0'>{}</fast>",
            fast::MECHANISMS_NONE
        );
        for f in MODULE.stream_features {
            assert_eq!(f.xml.matches(&want).count(), 1, "{}", f.xml);
            assert_eq!(f.xml.matches(fast::MECHANISMS_NONE).count(), 1, "{}", f.xml);
        }
    }

    #[test]
    fn one_variant_for_every_configuration() {
        for (enabled, timeout) in [(true, 300), (true, 0), (false, 300), (false, 0)] {
            let mut c = Config::default();
            c.sm.enabled = enabled;
            c.sm.resume_timeout_secs = timeout;
            let n = MODULE
                .stream_features
                .iter()
                .filter(|f| f.when.is_some_and(|w| w(&c)))
                .count();
            assert_eq!(n, 1, "sm enabled {enabled}, resume {timeout}");
        }
    }
}
