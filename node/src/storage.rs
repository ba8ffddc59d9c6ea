//! Typed access to the replicated store: every durable thing Starling
//! keeps, each in its own key space so a space can later move to its own
//! Raft group without changing callers. Reads come from the local replica;
//! writes go through Raft (batched by the store).
//!
//! Keys start with the bare JID (`node@domain`) and a NUL, so one prefix
//! scan finds everything of one user.

use crate::auth::scram::StoredCredentials;
use serde::{Deserialize, Serialize};
use starling_cluster::{Op, OpResult, Store, StoreError, routes};

pub mod upload;

pub const ACCOUNTS: &str = "user_account";
pub const ROSTER: &str = "user_roster";
pub const ROSTER_VER: &str = "user_roster_ver";
pub const PENDING_IN: &str = "user_pending_in";
pub const OFFLINE: &str = "user_offline";
pub const VCARD: &str = "user_vcard";
pub const PRIVATE: &str = "user_private";
pub const LAST: &str = "user_last";
pub const ARCHIVE: &str = "user_archive";
pub const ARCHIVE_PREFS: &str = "user_archive_prefs";
/// XEP-0191 blocklists: `bare` -> a marker rewritten by every change (only
/// while the list has items), `bare \0 jid` -> an item.
pub const BLOCKLIST: &str = "user_blocklist";
/// XEP-0357 push registrations: `bare \0 jid \0 node` -> [`PushRegistration`].
pub const PUSH: &str = "user_push";
/// XEP-0163 PEP nodes: `bare \0 node` -> [`PepNode`] (configuration and
/// the item ids, oldest first).
pub const PEP_NODE: &str = "user_pep_node";
/// PEP items: `bare \0 node \0 id` -> the `<item/>` as published.
pub const PEP_ITEM: &str = "user_pep_item";
/// Explicit pubsub subscriptions (XEP-0060 §6.1), of PEP nodes and of the
/// `pubsub.<domain>` services alike: `service \0 node \0 jid \0 subid`
/// -> [`PepSub`]. Kept out of the node record, which every publish
/// rewrites.
pub const PEP_SUB: &str = "user_pep_sub";
/// Temporary subscriptions (XEP-0060 §12.4, `pubsub#expire` =
/// `presence`) by subscriber: `subscriber bare \0 service \0 node \0 jid
/// \0 subid` -> empty. Written and removed with the subscription; read
/// when one of the subscriber's sessions goes unavailable (usually an
/// empty prefix).
pub const PEP_TEMP: &str = "user_pep_temp";
/// The SHA-1 of each account's avatar (XEP-0153 / XEP-0398): `bare` ->
/// hex, absent without one. One lookup of a small key per broadcast
/// presence.
pub const AVATAR_HASH: &str = "user_avatar_hash";
/// XEP-0484 FAST tokens: `bare \0 client` (the SHA-256 of the SASL2
/// user-agent id) -> [`FastTokens`]: the token's SHA-256, never the token.
pub const FAST: &str = "user_fast";
/// XEP-0115 capabilities, verified, shared by every user: `hash \0 ver`
/// -> the features (MessagePack list).
pub const CAPS: &str = "caps";

/// Every per-user space, for account deletion.
const USER_SPACES: &[&str] = &[
    ROSTER,
    ROSTER_VER,
    PENDING_IN,
    OFFLINE,
    VCARD,
    PRIVATE,
    LAST,
    ARCHIVE,
    ARCHIVE_PREFS,
    BLOCKLIST,
    PUSH,
    PEP_NODE,
    PEP_ITEM,
    PEP_SUB,
    PEP_TEMP,
    AVATAR_HASH,
    FAST,
];

/// How often a per-user read-modify-write is tried against concurrent
/// writers before giving up.
const MAX_TXN_ATTEMPTS: usize = 64;

pub fn user_prefix(bare: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bare.len() + 1);
    k.extend_from_slice(bare.as_bytes());
    k.push(0);
    k
}

pub fn user_key(bare: &str, rest: &str) -> Vec<u8> {
    let mut k = user_prefix(bare);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// An account as stored: SCRAM keys only, never the password.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub credentials: StoredCredentials,
    pub created: i64,
    /// Disabled by an administrator (XEP-0133 §4.3): the account keeps
    /// its data but cannot log in until re-enabled. Absent in accounts
    /// written before it existed.
    #[serde(default)]
    pub disabled: bool,
}

/// A XEP-0357 push registration of one account: where to publish a
/// notification and what to publish it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app server (any JID).
    pub jid: String,
    pub node: String,
    /// The `<x/>` publish-options form the client gave, serialised.
    #[serde(default)]
    pub options: Option<String>,
    /// The resource whose client enabled it: a session of that resource
    /// waiting for resumption notifies this registration.
    #[serde(default)]
    pub resource: String,
}

/// One XEP-0484 token as stored: its SHA-256 (the token is longer than
/// the HMAC block, so HMAC keyed with it equals HMAC keyed with this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastToken {
    /// Unpadded URL-safe base64.
    pub hash: String,
    pub mechanism: String,
    /// Unix seconds.
    pub expiry: u64,
}

/// A client's FAST tokens: the one in use and one issued and not yet used
/// (XEP-0484 §Implementation Notes: two slots), and the digests of a few
/// no longer trusted (invalidated or replaced) that have not expired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastTokens {
    pub current: Option<FastToken>,
    pub new: Option<FastToken>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<FastToken>,
}

/// `bare \0 jid \0 node`, or the prefix of all of `jid`'s nodes.
fn push_key(bare: &str, jid: &str, node: Option<&str>) -> Vec<u8> {
    let mut k = user_key(bare, jid);
    k.push(0);
    if let Some(node) = node {
        k.extend_from_slice(node.as_bytes());
    }
    k
}

/// Subscription state of a roster item (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// The user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    /// The contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    pub fn with(to: bool, from: bool) -> Self {
        match (to, from) {
            (true, true) => Subscription::Both,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (false, false) => Subscription::None,
        }
    }
}

/// One roster item with the server-side subscription flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RosterItem {
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// Pending-out: the user asked to subscribe to the contact.
    pub ask: bool,
    /// Pre-approved: a subscribe from the contact is accepted at once.
    pub approved: bool,
}

/// Records are MessagePack with field names: compact (an account with
/// three hashes' SCRAM keys is ~350 bytes, against ~1.5 KB as JSON), and
/// fields can be added with `#[serde(default)]`.
fn de<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(v).map_err(|e| StoreError::Storage(format!("corrupt record: {e}")))
}

fn ser<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("records serialise")
}

/// [`ser`] into a buffer of about the record's size (no doublings of a
/// growing one for a record of a few hundred bytes).
fn ser_sized<T: Serialize>(v: &T, size: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size);
    rmp_serde::encode::write_named(&mut buf, v).expect("records serialise");
    buf
}

/// Typed facade over the [`Store`].
#[derive(Clone)]
pub struct Storage {
    pub store: Store,
    /// Last-activity records not yet written (`flush_last_activity`).
    last_pending: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, LastActivity>>>,
    /// The change counter of [`BLOCKLIST`] on this replica, for the lists
    /// kept by the router's user entries (`modules::blocking::UserBlocks`).
    blocklist_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The change counter of [`ARCHIVE_PREFS`] on this replica, for the
    /// preferences kept by the router's user entries
    /// (`modules::mam::PrefsCache`).
    archive_prefs_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Last-activity records per durable write.
const LAST_BATCH: usize = 512;

impl Storage {
    pub fn new(store: Store) -> Self {
        Storage {
            blocklist_version: store.space_version(BLOCKLIST),
            archive_prefs_version: store.space_version(ARCHIVE_PREFS),
            store,
            last_pending: Default::default(),
        }
    }

    // --- accounts ---

    pub fn account(&self, bare: &str) -> Result<Option<Account>, StoreError> {
        self.store
            .get(ACCOUNTS, bare.as_bytes())?
            .map(|v| de(&v))
            .transpose()
    }

    pub fn account_exists(&self, bare: &str) -> Result<bool, StoreError> {
        Ok(self.store.get(ACCOUNTS, bare.as_bytes())?.is_some())
    }

    /// Creates an account; `Ok(false)` if it already exists.
    pub async fn create_account(&self, bare: &str, account: &Account) -> Result<bool, StoreError> {
        let r = self
            .store
            .write(vec![Op::Insert {
                space: ACCOUNTS.into(),
                key: bare.as_bytes().to_vec(),
                value: ser(account),
            }])
            .await?;
        Ok(r.first() == Some(&OpResult::Done))
    }

    /// Replaces an account's record (a new password, disabled or not): its
    /// XEP-0484 tokens go in the same write, so a token outlives neither.
    pub async fn set_account(&self, bare: &str, account: &Account) -> Result<(), StoreError> {
        self.store
            .write(vec![
                Op::Put {
                    space: ACCOUNTS.into(),
                    key: bare.as_bytes().to_vec(),
                    value: ser(account),
                },
                Op::DeletePrefix {
                    space: FAST.into(),
                    prefix: user_prefix(bare),
                },
            ])
            .await?;
        Ok(())
    }

    /// Deletes an account and everything stored for it, in one write.
    pub async fn delete_account(&self, bare: &str) -> Result<(), StoreError> {
        let mut ops = vec![Op::Delete {
            space: ACCOUNTS.into(),
            key: bare.as_bytes().to_vec(),
        }];
        for space in USER_SPACES {
            // Keyed `bare` alone or `bare\0...`.
            ops.push(Op::Delete {
                space: (*space).into(),
                key: bare.as_bytes().to_vec(),
            });
            ops.push(Op::DeletePrefix {
                space: (*space).into(),
                prefix: user_prefix(bare),
            });
        }
        self.pending_last().remove(bare);
        self.store.write(ops).await?;
        Ok(())
    }

    /// The disabled accounts of `domain`.
    pub fn disabled_accounts(&self, domain: &str) -> Result<Vec<String>, StoreError> {
        let all = self.store.scan_prefix(ACCOUNTS, b"")?;
        let mut out = Vec::new();
        for (k, v) in all {
            let Ok(j) = String::from_utf8(k) else {
                continue;
            };
            if j.rsplit('@').next() == Some(domain) && de::<Account>(&v)?.disabled {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Bare JIDs of all accounts, optionally of one domain.
    pub fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>, StoreError> {
        let all = self.store.scan_prefix(ACCOUNTS, b"")?;
        Ok(all
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k).ok())
            .filter(|j| domain.is_none_or(|d| j.rsplit('@').next() == Some(d)))
            .collect())
    }

    // --- roster ---

    pub fn roster(&self, bare: &str) -> Result<Vec<RosterItem>, StoreError> {
        self.store
            .scan_prefix(ROSTER, &user_prefix(bare))?
            .iter()
            .map(|(_, v)| de(v))
            .collect()
    }

    pub fn roster_item(&self, bare: &str, contact: &str) -> Result<Option<RosterItem>, StoreError> {
        self.store
            .get(ROSTER, &user_key(bare, contact))?
            .map(|v| de(&v))
            .transpose()
    }

    pub fn roster_version(&self, bare: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get(ROSTER_VER, bare.as_bytes())?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Runs a read-modify-write of `bare`'s roster and subscription state
    /// (items, roster version, pending inbound requests) as a
    /// compare-and-set: `f` reads through the [`UserTxn`] and stages
    /// changes; the write commits only if everything `f` read is still
    /// current when the leader applies it, and otherwise `f` runs again on
    /// the newer state. So two nodes acting for one user (a roster set here,
    /// a subscription from a contact there) never lose each other's update,
    /// and the roster version stays one sequence.
    pub async fn update_user<T>(
        &self,
        bare: &str,
        mut f: impl FnMut(&mut UserTxn<'_>) -> Result<T, TxnError>,
    ) -> Result<(T, Committed), TxnError> {
        let mut confirmed = !self.store.has_peers();
        for attempt in 0..MAX_TXN_ATTEMPTS {
            let mut txn = UserTxn {
                storage: self,
                bare,
                checks: Vec::new(),
                checked: Vec::new(),
                ops: Vec::new(),
                bump_at: None,
            };
            let out = f(&mut txn);
            if !confirmed && (out.is_err() || txn.ops.is_empty()) {
                // A decision to write nothing (an item not found, a
                // request already answered) is not checked by a write:
                // on a replica that may lag (a write through another
                // node), catch up first and decide again.
                self.store.read_barrier().await?;
                confirmed = true;
                continue;
            }
            let out = out?;
            if txn.ops.is_empty() {
                return Ok((out, Committed { roster_ver: None }));
            }
            let bump_at = txn.bump_at.map(|i| i + txn.checks.len());
            let mut ops = txn.checks;
            ops.append(&mut txn.ops);
            let results = self.store.write(ops).await?;
            if !results.contains(&OpResult::Mismatch) {
                let roster_ver = bump_at.and_then(|i| match results.get(i) {
                    Some(OpResult::Seq(v)) => Some(*v),
                    _ => None,
                });
                return Ok((out, Committed { roster_ver }));
            }
            // Another write changed a record we read. On a node with peers
            // the write was decided on the leader, and this replica may not
            // have applied the change yet: catch up before reading again,
            // or the next attempt is decided on the same stale state.
            // Many writers for one record mostly land in one Raft entry
            // where only the first wins: after two lost rounds, step aside
            // for a random moment so every writer gets its turn.
            metrics::counter!("starling_storage_txn_retries_total").increment(1);
            tracing::debug!(bare, attempt, "per-user write raced another; retrying");
            if self.store.has_peers() {
                self.store.read_barrier().await?;
            }
            if attempt >= 1 {
                let cap_ms = (2u64 << attempt.min(5)).min(50);
                let pause = rand::random_range(1..=cap_ms);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
        }
        Err(TxnError::Store(StoreError::Unavailable(
            "too much contention on one user's records".into(),
        )))
    }

    // --- pending inbound subscription requests ---

    pub fn pending_in(&self, bare: &str) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = user_prefix(bare);
        Ok(self
            .store
            .scan_prefix(PENDING_IN, &prefix)?
            .into_iter()
            .filter_map(|(k, v)| {
                let contact = String::from_utf8(k[prefix.len()..].to_vec()).ok()?;
                Some((contact, String::from_utf8(v).ok()?))
            })
            .collect())
    }

    pub fn has_pending_in(&self, bare: &str, contact: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(PENDING_IN, &user_key(bare, contact))?
            .is_some())
    }

    // --- offline messages ---

    /// Stores a message under a new key, returned; `Ok(None)` when the
    /// user's quota is full.
    pub async fn store_offline(
        &self,
        bare: &str,
        xml: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut prefix = user_prefix(bare);
        let r = self
            .store
            .write(vec![Op::Append {
                space: OFFLINE.into(),
                prefix: prefix.clone(),
                value: xml.as_bytes().to_vec(),
                max,
            }])
            .await?;
        Ok(match r.first() {
            Some(OpResult::Seq(seq)) => {
                prefix.extend_from_slice(&seq.to_be_bytes());
                Some(prefix)
            }
            _ => None,
        })
    }

    /// How many messages wait in `bare`'s offline storage.
    pub fn offline_count(&self, bare: &str) -> Result<u64, StoreError> {
        self.store.count_prefix(OFFLINE, &user_prefix(bare))
    }

    /// The stored messages with their keys, oldest first.
    pub fn offline(&self, bare: &str) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
        Ok(self
            .store
            .scan_prefix(OFFLINE, &user_prefix(bare))?
            .into_iter()
            .filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
            .collect())
    }

    pub async fn delete_offline(&self, keys: Vec<Vec<u8>>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ops = keys
            .into_iter()
            .map(|key| Op::Delete {
                space: OFFLINE.into(),
                key,
            })
            .collect();
        self.store.write(ops).await?;
        Ok(())
    }

    /// Claims stored messages for delivery: removes those of `keys` that
    /// are still stored and returns them, oldest first, in one write. Of
    /// flushes racing for a message (two resources logging in on two
    /// nodes, a sender that found the user online right after storing),
    /// exactly one gets it.
    pub async fn take_offline(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ops = keys
            .into_iter()
            .map(|key| Op::Take {
                space: OFFLINE.into(),
                key,
            })
            .collect();
        let results = self.store.write(ops).await?;
        Ok(results
            .into_iter()
            .flat_map(|r| match r {
                OpResult::Removed(pairs) => pairs,
                _ => Vec::new(),
            })
            .filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
            .collect())
    }

    /// Puts claimed messages that could not be handed on back where they
    /// were (their keys are never reused: the sequence only grows), so
    /// they keep their place for the next flush.
    pub async fn restore_offline(&self, msgs: &[(Vec<u8>, String)]) -> Result<(), StoreError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let ops = msgs
            .iter()
            .map(|(key, xml)| Op::Put {
                space: OFFLINE.into(),
                key: key.clone(),
                value: xml.as_bytes().to_vec(),
            })
            .collect();
        self.store.write(ops).await?;
        Ok(())
    }

    // --- simple per-user documents (vCard, private XML, last activity) ---

    pub fn doc(&self, space: &str, key: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get(space, key)?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    pub async fn put_doc(
        &self,
        space: &str,
        key: Vec<u8>,
        value: String,
    ) -> Result<(), StoreError> {
        self.store
            .write(vec![Op::Put {
                space: space.into(),
                key,
                value: value.into_bytes(),
            }])
            .await?;
        Ok(())
    }

    /// A private XML fragment (XEP-0049), serialised.
    pub fn private(&self, bare: &str, name_ns: &str) -> Result<Option<String>, StoreError> {
        self.doc(PRIVATE, &user_key(bare, name_ns))
    }

    /// Stores private XML fragments (XEP-0049), each under its element
    /// name and namespace, in one write.
    pub async fn put_private(
        &self,
        bare: &str,
        fragments: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let ops = fragments
            .into_iter()
            .map(|(name_ns, xml)| Op::Put {
                space: PRIVATE.into(),
                key: user_key(bare, &name_ns),
                value: xml.into_bytes(),
            })
            .collect();
        self.write(ops).await.map(drop)
    }

    // --- blocklists (XEP-0191) ---

    /// Whether `bare` blocks anyone: the one lookup (of an absent key, for
    /// most users) a stanza costs before any item is looked at.
    pub fn blocks_anyone(&self, bare: &str) -> Result<bool, StoreError> {
        Ok(self.store.get(BLOCKLIST, bare.as_bytes())?.is_some())
    }

    /// The change counter of the blocklist space on this replica.
    pub fn blocklist_version(&self) -> u64 {
        self.blocklist_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `jid` (normalised) is an item of `bare`'s blocklist.
    pub fn blocklist_has(&self, bare: &str, jid: &str) -> Result<bool, StoreError> {
        Ok(self.store.get(BLOCKLIST, &user_key(bare, jid))?.is_some())
    }

    /// `bare`'s blocklist, sorted (in key order).
    pub fn blocklist(&self, bare: &str) -> Result<Vec<String>, StoreError> {
        let prefix = user_prefix(bare);
        Ok(self
            .store
            .scan_prefix(BLOCKLIST, &prefix)?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k[prefix.len()..].to_vec()).ok())
            .collect())
    }

    // --- push registrations (XEP-0357) ---

    /// `bare`'s push registrations, in key order (by app server, then node).
    pub fn push_registrations(&self, bare: &str) -> Result<Vec<PushRegistration>, StoreError> {
        self.store
            .scan_prefix(PUSH, &user_prefix(bare))?
            .into_iter()
            .map(|(_, v)| de(&v))
            .collect()
    }

    /// Stores (or replaces) the registration of `reg.jid` and `reg.node`.
    pub async fn put_push(&self, bare: &str, reg: &PushRegistration) -> Result<(), StoreError> {
        self.write(vec![Op::Put {
            space: PUSH.into(),
            key: push_key(bare, &reg.jid, Some(&reg.node)),
            value: ser(reg),
        }])
        .await
        .map(drop)
    }

    /// Removes the registration of `jid` and `node`, or every one of
    /// `jid`'s when `node` is `None`.
    pub async fn delete_push(
        &self,
        bare: &str,
        jid: &str,
        node: Option<&str>,
    ) -> Result<(), StoreError> {
        let op = match node {
            Some(node) => Op::Delete {
                space: PUSH.into(),
                key: push_key(bare, jid, Some(node)),
            },
            None => Op::DeletePrefix {
                space: PUSH.into(),
                prefix: push_key(bare, jid, None),
            },
        };
        self.write(vec![op]).await.map(drop)
    }

    // --- XEP-0484 FAST tokens ---

    pub fn fast_tokens(&self, bare: &str, client: &str) -> Result<FastTokens, StoreError> {
        match self.store.get(FAST, &user_key(bare, client))? {
            Some(v) => de(&v),
            None => Ok(FastTokens::default()),
        }
    }

    /// Replaces a client's tokens (removes the record when all are empty).
    pub async fn put_fast_tokens(
        &self,
        bare: &str,
        client: &str,
        tokens: &FastTokens,
    ) -> Result<(), StoreError> {
        let key = user_key(bare, client);
        let op = if tokens.current.is_none() && tokens.new.is_none() && tokens.revoked.is_empty() {
            Op::Delete {
                space: FAST.into(),
                key,
            }
        } else {
            Op::Put {
                space: FAST.into(),
                key,
                value: ser(tokens),
            }
        };
        self.write(vec![op]).await.map(drop)
    }

    // --- the routing table (layout in `starling_cluster::routes`) ---

    /// Records `bare/resource`'s route: this node, then `payload`. Routes
    /// live in the registry group; a node in none (no peers, or while it
    /// joins one) writes nothing and publishes its sessions when it joins
    /// (`routing::republish`).
    pub async fn put_route(
        &self,
        bare: &str,
        resource: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        if !self.store.registry_active() {
            return Ok(());
        }
        let ops = routes::put(self.store.node_id(), bare, resource, payload);
        self.write(ops).await.map(drop)
    }

    /// Replaces the payload of `bare/resource`'s route if the route still
    /// begins with `owner` (a newer session elsewhere may have taken it);
    /// false when it did not.
    pub async fn update_route(
        &self,
        bare: &str,
        resource: &str,
        owner: Vec<u8>,
        payload: &[u8],
    ) -> Result<bool, StoreError> {
        if !self.store.registry_active() {
            return Ok(true);
        }
        let key = routes::route_key(bare, resource);
        let ops = vec![
            Op::Expect {
                space: routes::ROUTES.into(),
                key: key.clone(),
                prefix: owner,
            },
            Op::Put {
                space: routes::ROUTES.into(),
                key,
                value: routes::route_value(self.store.node_id(), payload),
            },
        ];
        Ok(self.write(ops).await?.first() != Some(&OpResult::Mismatch))
    }

    /// Removes `bare/resource`'s route if it still begins with `owner`;
    /// `index` also removes this node's index entry for it. The user's
    /// last activity, when given, is recorded (`record_last_activity`).
    pub async fn remove_route(
        &self,
        bare: &str,
        resource: &str,
        owner: Vec<u8>,
        index: bool,
        last: Option<LastActivity>,
    ) -> Result<(), StoreError> {
        let route = async {
            if !self.store.registry_active() {
                return Ok(());
            }
            let mut ops = vec![Op::DeleteIf {
                space: routes::ROUTES.into(),
                key: routes::route_key(bare, resource),
                prefix: owner,
            }];
            if index {
                ops.push(routes::delete_index(self.store.node_id(), bare, resource));
            }
            self.write(ops).await.map(drop)
        };
        if let Some(l) = last {
            self.record_last_activity(bare, l);
        }
        route.await
    }

    // --- component routes (XEP-0114; layout in `starling_cluster::routes`) ---

    /// Claims `domain` for this node's component connection `session`:
    /// false when another connection holds it anywhere in the cluster.
    /// Nothing is written without a registry group (this node alone).
    pub async fn claim_component(&self, domain: &str, session: u64) -> Result<bool, StoreError> {
        if !self.store.registry_active() {
            return Ok(true);
        }
        let ops = routes::claim_component(self.store.node_id(), domain, session);
        let results = self.write(ops).await?;
        Ok(results.first() != Some(&OpResult::Exists))
    }

    /// Lets `domain` go if this node's connection `session` still holds it.
    pub async fn release_component(&self, domain: &str, session: u64) -> Result<(), StoreError> {
        if !self.store.registry_active() {
            return Ok(());
        }
        let ops = routes::release_component(self.store.node_id(), domain, session);
        self.write(ops).await.map(drop)
    }

    /// The node and connection holding the component `domain`, from this
    /// node's replica of the registry.
    pub fn component_route(&self, domain: &str) -> Option<(u64, u64)> {
        self.store
            .get(routes::COMPONENTS, domain.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| routes::parse_component_value(&v))
    }

    fn pending_last(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, LastActivity>> {
        self.last_pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the time and status of a user's last unavailable presence
    /// (XEP-0012). Written behind: `flush_last_activity` (every second, and
    /// at shutdown) stores every record kept since in a few durable writes,
    /// so a logout costs no Raft write of its own and a reconnect storm's
    /// logouts share a handful of fsyncs. A crash loses at most the last
    /// second's records (the user then shows the logout before).
    pub fn record_last_activity(&self, bare: &str, last: LastActivity) {
        self.pending_last().insert(bare.to_string(), last);
    }

    /// The user's last activity: a record not yet written, else the stored one.
    pub fn last_activity(&self, bare: &str) -> Result<Option<LastActivity>, StoreError> {
        if let Some(l) = self.pending_last().get(bare) {
            return Ok(Some(l.clone()));
        }
        let Some(doc) = self.store.get(LAST, bare.as_bytes())? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap_or_default();
        Ok(Some(LastActivity {
            time: v["time"].as_i64().unwrap_or(0),
            status: v["status"].as_str().unwrap_or_default().to_string(),
        }))
    }

    /// Writes the last-activity records kept since the last call. Records
    /// a failed write held go back (unless a newer one came meanwhile).
    pub async fn flush_last_activity(&self) -> Result<(), StoreError> {
        let pending: Vec<(String, LastActivity)> = self.pending_last().drain().collect();
        let mut result = Ok(());
        for chunk in pending.chunks(LAST_BATCH) {
            let ops = chunk.iter().map(|(bare, l)| l.op(bare)).collect();
            if let Err(e) = self.write(ops).await {
                let mut map = self.pending_last();
                for (bare, l) in chunk {
                    map.entry(bare.clone()).or_insert_with(|| l.clone());
                }
                result = Err(e);
            }
        }
        result
    }

    async fn write(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.store.write(ops).await
    }
}

/// An error from the closure of [`Storage::update_user`] or its write.
#[derive(Debug)]
pub enum TxnError {
    Store(StoreError),
    /// The closure refused the change (e.g. an item that does not exist):
    /// nothing was written.
    Stanza(crate::stanza::StanzaError),
}

impl From<StoreError> for TxnError {
    fn from(e: StoreError) -> Self {
        TxnError::Store(e)
    }
}

impl From<crate::stanza::StanzaError> for TxnError {
    fn from(e: crate::stanza::StanzaError) -> Self {
        TxnError::Stanza(e)
    }
}

impl From<crate::stanza::Condition> for TxnError {
    fn from(c: crate::stanza::Condition) -> Self {
        TxnError::Stanza(c.into())
    }
}

impl From<TxnError> for crate::stanza::StanzaError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Store(e) => e.into(),
            TxnError::Stanza(e) => e,
        }
    }
}

/// What a committed [`Storage::update_user`] changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    /// The new roster version, when the roster changed (for the pushes).
    pub roster_ver: Option<u64>,
}

/// One attempt of a per-user read-modify-write: reads go to the local
/// replica and are remembered as conditions of the write; changes are
/// staged until the closure returns.
pub struct UserTxn<'a> {
    storage: &'a Storage,
    bare: &'a str,
    /// `ExpectValue` conditions: the records as they were read.
    checks: Vec<Op>,
    /// The (space, key) pairs already in `checks`.
    checked: Vec<(&'static str, Vec<u8>)>,
    ops: Vec<Op>,
    /// Where in `ops` the roster version is bumped, if the roster changes.
    bump_at: Option<usize>,
}

impl UserTxn<'_> {
    /// Reads a record and makes the write depend on its staying as read.
    fn read(&mut self, space: &'static str, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.storage.store.get(space, &key)?;
        if !self.checked.iter().any(|(s, k)| *s == space && *k == key) {
            self.checked.push((space, key.clone()));
            self.checks.push(Op::ExpectValue {
                space: space.into(),
                key,
                value: value.clone(),
            });
        }
        Ok(value)
    }

    /// One roster item of the user; the write depends on that item only
    /// (changes to other items commute with it: the roster version is
    /// bumped by the write itself, `Op::Incr`, not read and checked).
    pub fn roster_item(&mut self, contact: &str) -> Result<Option<RosterItem>, StoreError> {
        self.read(ROSTER, user_key(self.bare, contact))?
            .map(|v| de(&v))
            .transpose()
    }

    /// Whether `contact` has a subscription request waiting for the user.
    pub fn has_pending_in(&mut self, contact: &str) -> Result<bool, StoreError> {
        Ok(self
            .read(PENDING_IN, user_key(self.bare, contact))?
            .is_some())
    }

    /// Stores `item` (or, with `remove`, deletes it) and bumps the roster
    /// version once per transaction.
    pub fn save_item(&mut self, item: &RosterItem, remove: bool) -> Result<(), StoreError> {
        let key = user_key(self.bare, &item.jid);
        self.ops.push(if remove {
            Op::Delete {
                space: ROSTER.into(),
                key,
            }
        } else {
            Op::Put {
                space: ROSTER.into(),
                key,
                value: ser(item),
            }
        });
        if self.bump_at.is_none() {
            self.bump_at = Some(self.ops.len());
            self.ops.push(Op::Incr {
                space: ROSTER_VER.into(),
                key: self.bare.as_bytes().to_vec(),
            });
        }
        Ok(())
    }

    /// The user's blocklist (XEP-0191) as read: the write depends on its
    /// marker, which every change rewrites, so it covers every item.
    pub fn blocklist(&mut self) -> Result<Vec<String>, StoreError> {
        if self
            .read(BLOCKLIST, self.bare.as_bytes().to_vec())?
            .is_none()
        {
            return Ok(Vec::new());
        }
        self.storage.blocklist(self.bare)
    }

    /// Replaces the blocklist `old` (as read with [`UserTxn::blocklist`])
    /// with `new`, both sorted (as the store keeps them): only the items
    /// that differ are written, and the marker
    /// gets a fresh random value (a value it never had, so a writer that
    /// read an older list cannot match it), or goes with the last item.
    pub fn save_blocklist(&mut self, old: &[String], new: &[String]) {
        let added = new.iter().filter(|j| old.binary_search(j).is_err());
        let removed = old.iter().filter(|j| new.binary_search(j).is_err());
        let mut changed = false;
        for jid in added {
            changed = true;
            self.ops.push(Op::Put {
                space: BLOCKLIST.into(),
                key: user_key(self.bare, jid),
                value: Vec::new(),
            });
        }
        for jid in removed {
            changed = true;
            self.ops.push(Op::Delete {
                space: BLOCKLIST.into(),
                key: user_key(self.bare, jid),
            });
        }
        if !changed {
            return;
        }
        let key = self.bare.as_bytes().to_vec();
        self.ops.push(if new.is_empty() {
            Op::Delete {
                space: BLOCKLIST.into(),
                key,
            }
        } else {
            Op::Put {
                space: BLOCKLIST.into(),
                key,
                value: rand::random::<u64>().to_be_bytes().to_vec(),
            }
        });
    }

    /// Keeps an inbound subscription request (serialised) until the user
    /// answers it, or (`None`) forgets it.
    pub fn set_pending_in(&mut self, contact: &str, stanza: Option<String>) {
        let key = user_key(self.bare, contact);
        self.ops.push(match stanza {
            Some(s) => Op::Put {
                space: PENDING_IN.into(),
                key,
                value: s.into_bytes(),
            },
            None => Op::Delete {
                space: PENDING_IN.into(),
                key,
            },
        });
    }
}

/// XEP-0012 for a user with no available resource: when its last one went
/// unavailable, and with what status.
#[derive(Clone, Debug, PartialEq)]
pub struct LastActivity {
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub status: String,
}

impl LastActivity {
    fn op(&self, bare: &str) -> Op {
        let value = serde_json::json!({ "time": self.time, "status": self.status });
        Op::Put {
            space: LAST.into(),
            key: bare.as_bytes().to_vec(),
            value: value.to_string().into_bytes(),
        }
    }
}

// ------------------------------------------------------------ message archive

/// One message in one user's archive (XEP-0313). Keyed `bare\0` + the
/// archive id as 8 bytes big-endian, so a user's archive is one ordered
/// range and a page of it one bounded read. The message's time is the
/// id's (`modules::mam` makes ids from the clock), so it is not stored
/// again; field names are one letter because there is one record per
/// archived message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedMessage {
    /// Sent by the archive's owner (else received).
    #[serde(rename = "o")]
    pub outgoing: bool,
    /// The other party's bare JID (the recipient of a sent message, the
    /// sender of a received one), for `with` queries.
    #[serde(rename = "w")]
    pub with: String,
    /// Its resource, when the message named one, for `with` queries on a
    /// full JID.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub with_resource: Option<String>,
    /// The message as delivered (with its stanza-id), serialised with its
    /// `jabber:client` namespace declared so it can be embedded as it is.
    #[serde(rename = "x")]
    pub xml: String,
    /// In a room's archive: the sender's real (full) JID, shown only to
    /// who may see real JIDs (XEP-0313 §5.1.2).
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<String>,
}

/// A user's archiving preferences (XEP-0441); absent: the configured
/// default and empty lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePrefs {
    pub default: crate::config::ArchivePolicy,
    /// JIDs (bare or full, normalised) always archived.
    pub always: Vec<String>,
    /// JIDs never archived (this list wins over `always`).
    pub never: Vec<String>,
}

/// The writes that archive `entries` (owner, id, record); `checked`,
/// each fails with `Exists` where its id is taken (otherwise blind `Put`s,
/// for ids no record can hold yet).
pub fn archive_ops(entries: &[(&str, u64, &ArchivedMessage)], checked: bool) -> Vec<Op> {
    entries
        .iter()
        .map(|(bare, id, m)| {
            let size = m.xml.len()
                + m.with.len()
                + m.with_resource.as_ref().map_or(0, String::len)
                + m.jid.as_ref().map_or(0, String::len)
                + 32;
            let (space, key, value) = (ARCHIVE.into(), archive_key(bare, *id), ser_sized(m, size));
            if checked {
                Op::Insert { space, key, value }
            } else {
                Op::Put { space, key, value }
            }
        })
        .collect()
}

fn archive_key(bare: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(bare.len() + 9);
    k.extend_from_slice(bare.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The key after every archive key of `bare` up to `id`: the range end
/// (exclusive) of ids `..=id`.
fn archive_end(bare: &str, id: u64) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => archive_key(bare, next),
        None => {
            let mut k = bare.as_bytes().to_vec();
            k.push(1);
            k
        }
    }
}

fn archive_id(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl Storage {
    /// Stores archived messages, each `(owner, id, record)`, in one write
    /// (a message's copies in its sender's and recipient's archives are
    /// one Raft entry). Returns once committed and applied.
    /// `Ok(false)`: an id was taken already, nothing was written (ids are
    /// never reused, XEP-0313 §5.2).
    pub async fn archive(
        &self,
        entries: &[(&str, u64, &ArchivedMessage)],
    ) -> Result<bool, StoreError> {
        self.archive_ops(archive_ops(entries, true)).await
    }

    /// Writes [`archive_ops`]: false when an id was taken already.
    pub async fn archive_ops(&self, ops: Vec<Op>) -> Result<bool, StoreError> {
        Ok(!self.write(ops).await?.contains(&OpResult::Exists))
    }

    /// At most `limit` archived messages of `bare` with ids in `lo..=hi`,
    /// oldest first, or with `reverse` newest first.
    pub fn archive_range(
        &self,
        bare: &str,
        lo: u64,
        hi: u64,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(u64, ArchivedMessage)>, StoreError> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let pairs = self.store.scan_range(
            ARCHIVE,
            &archive_key(bare, lo),
            &archive_end(bare, hi),
            reverse,
            limit,
        )?;
        pairs
            .into_iter()
            .map(|(k, v)| {
                let id = archive_id(&k)
                    .ok_or_else(|| StoreError::Storage("corrupt archive key".into()))?;
                Ok((id, de(&v)?))
            })
            .collect()
    }

    /// Number of archived messages of `bare` with ids in `lo..=hi` (reads
    /// their keys).
    pub fn archive_count(&self, bare: &str, lo: u64, hi: u64) -> Result<u64, StoreError> {
        if lo > hi {
            return Ok(0);
        }
        self.store
            .count_range(ARCHIVE, &archive_key(bare, lo), &archive_end(bare, hi))
    }

    /// One archived message.
    pub fn archived(&self, bare: &str, id: u64) -> Result<Option<ArchivedMessage>, StoreError> {
        self.store
            .get(ARCHIVE, &archive_key(bare, id))?
            .map(|v| de(&v))
            .transpose()
    }

    /// The first user after `after` (exclusive; `None`: from the start)
    /// that has an archive: one seek, for retention passes that visit
    /// users without reading their messages.
    pub fn next_archive_owner(&self, after: Option<&str>) -> Result<Option<String>, StoreError> {
        let start = after.map_or_else(Vec::new, |b| {
            let mut k = b.as_bytes().to_vec();
            k.push(1);
            k
        });
        // No UTF-8 string starts with 0xff: the end of every key.
        let first = self.store.scan_range(ARCHIVE, &start, &[0xff], false, 1)?;
        Ok(first.into_iter().next().and_then(|(k, _)| {
            let nul = k.iter().position(|&b| b == 0)?;
            String::from_utf8(k[..nul].to_vec()).ok()
        }))
    }

    /// Deletes archived messages of `bare`, in one write.
    pub async fn delete_archived(&self, bare: &str, ids: &[u64]) -> Result<(), StoreError> {
        let ops = ids
            .iter()
            .map(|id| Op::Delete {
                space: ARCHIVE.into(),
                key: archive_key(bare, *id),
            })
            .collect();
        self.write(ops).await.map(drop)
    }

    /// The change counter of the archive preferences space on this replica.
    pub fn archive_prefs_version(&self) -> u64 {
        self.archive_prefs_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn archive_prefs(&self, bare: &str) -> Result<Option<ArchivePrefs>, StoreError> {
        self.store
            .get(ARCHIVE_PREFS, bare.as_bytes())?
            .map(|v| de(&v))
            .transpose()
    }

    pub async fn set_archive_prefs(
        &self,
        bare: &str,
        prefs: &ArchivePrefs,
    ) -> Result<(), StoreError> {
        self.write(vec![Op::Put {
            space: ARCHIVE_PREFS.into(),
            key: bare.as_bytes().to_vec(),
            value: ser(prefs),
        }])
        .await
        .map(drop)
    }
}

// ------------------------------------------------------------ PEP (XEP-0163)

/// One PEP node of one account: its configuration (the module's own
/// record, serialised by it) and its item ids, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PepNode {
    /// The node configuration as the PEP module keeps it.
    pub config: Vec<u8>,
    pub items: Vec<String>,
    /// XEP-0060 §4.1 affiliations set explicitly: (bare JID, affiliation
    /// name as the XEP spells it). A PEP node's owner is its account and
    /// is not listed.
    pub affiliations: Vec<(String, String)>,
}

/// One explicit subscription to a pubsub node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PepSub {
    /// The subscribed JID (bare or full, normalised).
    pub jid: String,
    pub subid: String,
    /// `pubsub#deliver` of its options: notifications are sent.
    pub deliver: bool,
    /// Awaiting an owner's approval (access model `authorize`).
    pub pending: bool,
    /// `pubsub#show-values` of its options: notifications only to
    /// resources whose presence shows one of these (`online`: no
    /// `<show/>`); empty: whatever they show.
    pub show_values: Vec<String>,
    /// `pubsub#expire` = `presence` (XEP-0060 §12.4): ends when the
    /// subscribed JID goes unavailable (indexed in [`PEP_TEMP`]).
    pub temporary: bool,
}

/// A temporary subscription as indexed by its subscriber: (service, node,
/// jid, subid).
pub type TempSub = (String, String, String, String);

fn pep_temp_key(service: &str, node: &str, jid: &str, subid: &str) -> Vec<u8> {
    let bare = jid.split('/').next().unwrap_or(jid);
    let mut k = user_prefix(bare);
    for part in [service, node, jid] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(subid.as_bytes());
    k
}

fn pep_node_key(bare: &str, node: &str) -> Vec<u8> {
    user_key(bare, node)
}

fn pep_sub_prefix(bare: &str, node: &str) -> Vec<u8> {
    let mut k = user_key(bare, node);
    k.push(0);
    k
}

fn pep_sub_key(bare: &str, node: &str, jid: &str, subid: &str) -> Vec<u8> {
    let mut k = pep_sub_prefix(bare, node);
    k.extend_from_slice(jid.as_bytes());
    k.push(0);
    k.extend_from_slice(subid.as_bytes());
    k
}

fn pep_item_key(bare: &str, node: &str, id: &str) -> Vec<u8> {
    let mut k = user_key(bare, node);
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// What a [`PepChange`] does to the node record.
pub enum NodeWrite {
    /// Leave it as read (the change only depends on it).
    Keep,
    Put(PepNode),
    /// Delete the node with its items and subscriptions.
    Delete,
}

/// A change to one PEP node, written as one compare-and-set on the node
/// record as it was read.
pub struct PepChange<'a> {
    pub bare: &'a str,
    pub node: &'a str,
    /// The node record as read (`None`: absent).
    pub read: Option<Vec<u8>>,
    pub write: NodeWrite,
    /// Items to store: (id, serialised `<item/>`).
    pub put: Vec<(String, String)>,
    /// Item ids to remove.
    pub remove: Vec<String>,
    /// Subscriptions to store (new or changed).
    pub subs_put: Vec<PepSub>,
    /// Subscriptions to remove: (jid, subid).
    pub subs_remove: Vec<(String, String)>,
}

impl<'a> PepChange<'a> {
    /// A change that removes one subscription and leaves the node record
    /// and its items as they are.
    pub fn unsubscribe(
        bare: &'a str,
        node: &'a str,
        read: Option<Vec<u8>>,
        jid: String,
        subid: String,
    ) -> Self {
        PepChange {
            bare,
            node,
            read,
            write: NodeWrite::Keep,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put: Vec::new(),
            subs_remove: vec![(jid, subid)],
        }
    }
}

impl Storage {
    /// A PEP node record, raw (for a later compare-and-set) and decoded.
    pub fn pep_node(
        &self,
        bare: &str,
        node: &str,
    ) -> Result<Option<(Vec<u8>, PepNode)>, StoreError> {
        match self.store.get(PEP_NODE, &pep_node_key(bare, node))? {
            Some(raw) => {
                let n = de(&raw)?;
                Ok(Some((raw, n)))
            }
            None => Ok(None),
        }
    }

    /// Every PEP node of `bare`: (node id, record).
    pub fn pep_nodes(&self, bare: &str) -> Result<Vec<(String, PepNode)>, StoreError> {
        let prefix = user_prefix(bare);
        self.store
            .scan_prefix(PEP_NODE, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, de(&v)?))
            })
            .collect()
    }

    /// How many PEP nodes `bare` has (reads their keys only).
    pub fn pep_node_count(&self, bare: &str) -> Result<u64, StoreError> {
        let mut end = bare.as_bytes().to_vec();
        end.push(1);
        self.store.count_range(PEP_NODE, &user_prefix(bare), &end)
    }

    /// The explicit subscriptions to one node, by JID then SubID.
    pub fn pep_subs(&self, bare: &str, node: &str) -> Result<Vec<PepSub>, StoreError> {
        self.store
            .scan_prefix(PEP_SUB, &pep_sub_prefix(bare, node))?
            .into_iter()
            .map(|(_, v)| de(&v))
            .collect()
    }

    /// The temporary subscriptions of `bare`'s JIDs (bare or full), from
    /// the local replica.
    pub fn pep_temp_subs(&self, bare: &str) -> Result<Vec<TempSub>, StoreError> {
        let prefix = user_prefix(bare);
        Ok(self
            .store
            .scan_prefix(PEP_TEMP, &prefix)?
            .into_iter()
            .filter_map(|(k, _)| {
                let rest = String::from_utf8(k[prefix.len()..].to_vec()).ok()?;
                let mut it = rest.split('\0').map(str::to_owned);
                Some((it.next()?, it.next()?, it.next()?, it.next()?))
            })
            .collect())
    }

    /// Drops index entries of temporary subscriptions that no longer
    /// exist (their node was deleted).
    pub async fn pep_temp_forget(&self, gone: &[TempSub]) -> Result<(), StoreError> {
        let ops = gone
            .iter()
            .map(|(service, node, jid, subid)| Op::Delete {
                space: PEP_TEMP.into(),
                key: pep_temp_key(service, node, jid, subid),
            })
            .collect();
        self.store.write(ops).await.map(drop)
    }

    /// The subscriptions of exactly `jid` to one node.
    pub fn pep_subs_of(
        &self,
        bare: &str,
        node: &str,
        jid: &str,
    ) -> Result<Vec<PepSub>, StoreError> {
        let mut prefix = pep_sub_prefix(bare, node);
        prefix.extend_from_slice(jid.as_bytes());
        prefix.push(0);
        self.store
            .scan_prefix(PEP_SUB, &prefix)?
            .into_iter()
            .map(|(_, v)| de(&v))
            .collect()
    }

    /// The subscriptions to one node of `bare`'s JIDs (bare or full).
    pub fn pep_service_subs_of_node_bare(
        &self,
        service: &str,
        node: &str,
        bare: &str,
    ) -> Result<Vec<PepSub>, StoreError> {
        let mut prefix = pep_sub_prefix(service, node);
        prefix.extend_from_slice(bare.as_bytes());
        Ok(self
            .store
            .scan_prefix(PEP_SUB, &prefix)?
            .into_iter()
            .map(|(_, v)| de::<PepSub>(&v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|s| s.jid.split('/').next() == Some(bare))
            .collect())
    }

    /// How many subscriptions a node has (reads their keys only).
    pub fn pep_sub_count(&self, bare: &str, node: &str) -> Result<u64, StoreError> {
        self.store
            .count_prefix(PEP_SUB, &pep_sub_prefix(bare, node))
    }

    /// Every subscription to every node of `bare`'s service: (node, sub).
    pub fn pep_service_subs(&self, bare: &str) -> Result<Vec<(String, PepSub)>, StoreError> {
        let prefix = user_prefix(bare);
        self.store
            .scan_prefix(PEP_SUB, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let rest = &k[prefix.len()..];
                let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                Ok((String::from_utf8_lossy(&rest[..end]).into_owned(), de(&v)?))
            })
            .collect()
    }

    /// One stored PEP item, serialised.
    pub fn pep_item(&self, bare: &str, node: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.doc(PEP_ITEM, &pep_item_key(bare, node, id))
    }

    /// Applies a PEP change; `Ok(false)` when the node record changed since
    /// it was read (nothing was written: read again and retry).
    pub async fn pep_write(&self, c: PepChange<'_>) -> Result<bool, StoreError> {
        let key = pep_node_key(c.bare, c.node);
        let mut ops = vec![Op::ExpectValue {
            space: PEP_NODE.into(),
            key: key.clone(),
            value: c.read,
        }];
        match c.write {
            NodeWrite::Keep => {}
            NodeWrite::Put(n) => ops.push(Op::Put {
                space: PEP_NODE.into(),
                key,
                value: ser(&n),
            }),
            NodeWrite::Delete => {
                ops.push(Op::Delete {
                    space: PEP_NODE.into(),
                    key,
                });
                let mut prefix = user_key(c.bare, c.node);
                prefix.push(0);
                ops.push(Op::DeletePrefix {
                    space: PEP_ITEM.into(),
                    prefix: prefix.clone(),
                });
                ops.push(Op::DeletePrefix {
                    space: PEP_SUB.into(),
                    prefix,
                });
            }
        }
        for (jid, subid) in c.subs_remove {
            ops.push(Op::Delete {
                space: PEP_SUB.into(),
                key: pep_sub_key(c.bare, c.node, &jid, &subid),
            });
            ops.push(Op::Delete {
                space: PEP_TEMP.into(),
                key: pep_temp_key(c.bare, c.node, &jid, &subid),
            });
        }
        for sub in c.subs_put {
            let temp = pep_temp_key(c.bare, c.node, &sub.jid, &sub.subid);
            ops.push(if sub.temporary {
                Op::Put {
                    space: PEP_TEMP.into(),
                    key: temp,
                    value: Vec::new(),
                }
            } else {
                Op::Delete {
                    space: PEP_TEMP.into(),
                    key: temp,
                }
            });
            ops.push(Op::Put {
                space: PEP_SUB.into(),
                key: pep_sub_key(c.bare, c.node, &sub.jid, &sub.subid),
                value: ser(&sub),
            });
        }
        for id in c.remove {
            ops.push(Op::Delete {
                space: PEP_ITEM.into(),
                key: pep_item_key(c.bare, c.node, &id),
            });
        }
        for (id, xml) in c.put {
            ops.push(Op::Put {
                space: PEP_ITEM.into(),
                key: pep_item_key(c.bare, c.node, &id),
                value: xml.into_bytes(),
            });
        }
        Ok(!self.store.write(ops).await?.contains(&OpResult::Mismatch))
    }

    /// The account's avatar hash (hex SHA-1), if it has one.
    pub fn avatar_hash(&self, bare: &str) -> Result<Option<String>, StoreError> {
        self.doc(AVATAR_HASH, bare.as_bytes())
    }

    pub async fn set_avatar_hash(&self, bare: &str, hash: Option<&str>) -> Result<(), StoreError> {
        let key = bare.as_bytes().to_vec();
        let op = match hash {
            Some(h) => Op::Put {
                space: AVATAR_HASH.into(),
                key,
                value: h.as_bytes().to_vec(),
            },
            None => Op::Delete {
                space: AVATAR_HASH.into(),
                key,
            },
        };
        self.write(vec![op]).await.map(drop)
    }

    /// The features of a verified XEP-0115 `ver`.
    pub fn caps(&self, hash: &str, ver: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.store
            .get(CAPS, &user_key(hash, ver))?
            .map(|v| de(&v))
            .transpose()
    }

    pub async fn put_caps(
        &self,
        hash: &str,
        ver: &str,
        features: &[String],
    ) -> Result<(), StoreError> {
        self.write(vec![Op::Put {
            space: CAPS.into(),
            key: user_key(hash, ver),
            value: ser(&features),
        }])
        .await
        .map(drop)
    }
}

// ------------------------------------------------------------ MUC rooms

/// XEP-0045 rooms: room bare JID -> the room's record (configuration,
/// affiliations, subject), a MessagePack document the MUC service defines.
pub const MUC_ROOMS: &str = "muc_room";
/// A room's occupants: `room \0 nick` -> the occupant's record (real JID,
/// role, presence), so a room restarted on another node has them.
pub const MUC_OCCUPANTS: &str = "muc_occupant";

impl Storage {
    /// A room's record.
    pub fn muc_room<T: for<'a> Deserialize<'a>>(
        &self,
        room: &str,
    ) -> Result<Option<T>, StoreError> {
        self.store
            .get(MUC_ROOMS, room.as_bytes())?
            .map(|v| de(&v))
            .transpose()
    }

    /// Every room of the service `service` (by its domain), with its record.
    pub fn muc_rooms<T: for<'a> Deserialize<'a>>(
        &self,
        service: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let suffix = format!("@{service}");
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(MUC_ROOMS, &[])? {
            if let Ok(room) = String::from_utf8(k)
                && room.ends_with(&suffix)
            {
                out.push((room, de(&v)?));
            }
        }
        Ok(out)
    }

    /// A room's occupant records, by nick.
    pub fn muc_occupants<T: for<'a> Deserialize<'a>>(
        &self,
        room: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let prefix = user_prefix(room);
        self.store
            .scan_prefix(MUC_OCCUPANTS, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let nick = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((nick, de(&v)?))
            })
            .collect()
    }

    /// Number of occupants of a room (keys only).
    pub fn muc_occupant_count(&self, room: &str) -> Result<u64, StoreError> {
        self.store.count_prefix(MUC_OCCUPANTS, &user_prefix(room))
    }

    /// Writes a room's record (when given) and occupant changes (`None`
    /// removes the nick) in one write.
    pub async fn muc_write<R: Serialize, O: Serialize>(
        &self,
        room: &str,
        record: Option<&R>,
        occupants: &[(&str, Option<&O>)],
    ) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(occupants.len() + 1);
        if let Some(r) = record {
            ops.push(Op::Put {
                space: MUC_ROOMS.into(),
                key: room.as_bytes().to_vec(),
                value: ser(r),
            });
        }
        for (nick, o) in occupants {
            let key = user_key(room, nick);
            ops.push(match o {
                Some(o) => Op::Put {
                    space: MUC_OCCUPANTS.into(),
                    key,
                    value: ser(o),
                },
                None => Op::Delete {
                    space: MUC_OCCUPANTS.into(),
                    key,
                },
            });
        }
        self.write(ops).await.map(drop)
    }

    /// Removes a room: its record, occupants and archive, in one write.
    pub async fn muc_destroy(&self, room: &str) -> Result<(), StoreError> {
        let prefix = user_prefix(room);
        self.write(vec![
            Op::Delete {
                space: MUC_ROOMS.into(),
                key: room.as_bytes().to_vec(),
            },
            Op::DeletePrefix {
                space: MUC_OCCUPANTS.into(),
                prefix: prefix.clone(),
            },
            Op::DeletePrefix {
                space: ARCHIVE.into(),
                prefix,
            },
        ])
        .await
        .map(drop)
    }
}
