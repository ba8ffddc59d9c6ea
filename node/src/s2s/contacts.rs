//! What this node knows of other domains' users from the presence their
//! servers sent it: which of their resources are available to which local
//! user, and with what caps (XEP-0115). PEP needs it to notify contacts on
//! other domains (XEP-0163 §4.3): a local contact's presence is in the
//! registry, a remote one's only in the stanzas its server sends.
//!
//! Kept by the node whose incoming stream took the presence (any node of
//! a cluster may hold a remote server's stream). A publish on another node
//! therefore asks every node to notify from what it knows
//! (`pep::remote`). Only resources of the user's roster contacts are
//! taken, while the user is available somewhere in the cluster; per local
//! user, at most [`MAX_PER_OWNER`] (the oldest go first); a user none of
//! whose resources has been available anywhere in the cluster for a sweep
//! period is forgotten (its contacts' servers answer its probes again
//! when it logs in).

use dashmap::DashMap;
use std::time::{Duration, Instant};

/// Remote resources remembered per local user.
pub const MAX_PER_OWNER: usize = 256;
/// Local users remembered on a node.
pub const MAX_OWNERS: usize = 1_000_000;
/// How often owners are checked, and how long a fresh one is kept
/// whatever its presence (its login may not be visible here yet).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One available resource of another domain's user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub full: String,
    /// (hash algorithm, ver) of its `<c/>`, if any.
    pub caps: Option<(&'static str, String)>,
    /// Its priority is not negative (XEP-0163 §4.3.1).
    pub non_negative: bool,
}

struct Owner {
    since: Instant,
    resources: Vec<Remote>,
}

/// What an available presence changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A resource not known before.
    New,
    /// A known resource with other caps (the old ones).
    Changed(Option<(&'static str, String)>),
    /// Nothing PEP cares about (same caps).
    Same,
}

/// `starling_s2s_remote_contacts`: the remote resources nodes remember.
fn gauge() -> metrics::Gauge {
    metrics::gauge!("starling_s2s_remote_contacts")
}

#[derive(Default)]
pub struct Contacts {
    owners: DashMap<String, Owner>,
}

impl Contacts {
    /// `remote` sent available presence to `owner` (a local bare JID).
    pub fn available(&self, owner: &str, remote: Remote) -> Seen {
        if !self.owners.contains_key(owner) && self.owners.len() >= MAX_OWNERS {
            return Seen::Same;
        }
        let mut o = self
            .owners
            .entry(owner.to_owned())
            .or_insert_with(|| Owner {
                since: Instant::now(),
                resources: Vec::new(),
            });
        o.since = Instant::now();
        if let Some(r) = o.resources.iter_mut().find(|r| r.full == remote.full) {
            let seen = if r.caps == remote.caps {
                Seen::Same
            } else {
                Seen::Changed(r.caps.take())
            };
            *r = remote;
            return seen;
        }
        if o.resources.len() >= MAX_PER_OWNER {
            o.resources.remove(0);
        } else {
            gauge().increment(1.0);
        }
        o.resources.push(remote);
        Seen::New
    }

    /// `from` went unavailable for `owner`: that resource, or every
    /// resource of a bare JID.
    pub fn unavailable(&self, owner: &str, from: &str) {
        let bare = !from.contains('/');
        let gone = match self.owners.get_mut(owner) {
            Some(mut o) => {
                let before = o.resources.len();
                o.resources.retain(|r| {
                    if bare {
                        crate::stanza::split(&r.full).0 != from
                    } else {
                        r.full != from
                    }
                });
                gauge().decrement((before - o.resources.len()) as f64);
                o.resources.is_empty()
            }
            None => false,
        };
        if gone {
            self.owners.remove_if(owner, |_, o| o.resources.is_empty());
        }
    }

    /// Whether `full` is known as available to `owner`.
    pub fn has(&self, owner: &str, full: &str) -> bool {
        self.owners
            .get(owner)
            .is_some_and(|o| o.resources.iter().any(|r| r.full == full))
    }

    /// The remote resources available to `owner`.
    pub fn of(&self, owner: &str) -> Vec<Remote> {
        self.owners
            .get(owner)
            .map(|o| o.resources.clone())
            .unwrap_or_default()
    }

    /// The owners `full` is available to, with its caps `ver`.
    pub fn owners_of(&self, full: &str, ver: &str) -> Vec<String> {
        self.owners
            .iter()
            .filter(|o| {
                o.resources
                    .iter()
                    .any(|r| r.full == full && r.caps.as_ref().is_some_and(|(_, v)| v == ver))
            })
            .map(|o| o.key().clone())
            .collect()
    }

    /// Forgets the owners `keep` refuses that were not refreshed for a
    /// sweep period.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) {
        self.owners.retain(|owner, o| {
            let kept = o.since.elapsed() < SWEEP_EVERY || keep(owner);
            if !kept {
                gauge().decrement(o.resources.len() as f64);
            }
            kept
        });
    }

    pub fn resources(&self) -> usize {
        self.owners.iter().map(|o| o.resources.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(full: &str, ver: Option<&str>) -> Remote {
        Remote {
            full: full.into(),
            caps: ver.map(|v| ("sha-1", v.to_owned())),
            non_negative: true,
        }
    }

    #[test]
    fn new_changed_same_and_gone() {
        let c = Contacts::default();
        assert_eq!(c.available("u@a", r("x@b/1", Some("v1"))), Seen::New);
        assert_eq!(c.available("u@a", r("x@b/1", Some("v1"))), Seen::Same);
        assert_eq!(
            c.available("u@a", r("x@b/1", Some("v2"))),
            Seen::Changed(Some(("sha-1", "v1".into())))
        );
        assert_eq!(c.available("u@a", r("x@b/2", None)), Seen::New);
        assert!(c.has("u@a", "x@b/2") && !c.has("u@a", "x@b/3") && !c.has("v@a", "x@b/2"));
        assert_eq!(c.owners_of("x@b/1", "v2"), vec!["u@a".to_owned()]);
        assert!(c.owners_of("x@b/1", "v1").is_empty());
        c.unavailable("u@a", "x@b/1");
        assert_eq!(c.of("u@a"), vec![r("x@b/2", None)]);
        c.unavailable("u@a", "x@b");
        assert!(c.of("u@a").is_empty());
        assert_eq!(c.resources(), 0);
    }

    #[test]
    fn bounded_per_owner() {
        let c = Contacts::default();
        for i in 0..MAX_PER_OWNER + 10 {
            c.available("u@a", r(&format!("x@b/{i}"), None));
        }
        let kept = c.of("u@a");
        assert_eq!(kept.len(), MAX_PER_OWNER);
        assert_eq!(kept[0].full, "x@b/10");
    }

    #[test]
    fn sweep_keeps_fresh_and_wanted_owners() {
        let c = Contacts::default();
        c.available("u@a", r("x@b/1", None));
        c.sweep(|_| false);
        assert_eq!(c.of("u@a").len(), 1, "fresh: kept");
        c.owners.get_mut("u@a").unwrap().since = Instant::now() - SWEEP_EVERY * 2;
        c.sweep(|o| o == "u@a");
        assert_eq!(c.of("u@a").len(), 1);
        c.sweep(|_| false);
        assert!(c.of("u@a").is_empty());
    }
}
