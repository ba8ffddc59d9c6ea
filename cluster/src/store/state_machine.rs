//! The replicated state machine on the key-value seam.
//!
//! One tree per key space (`space/<name>`, created on demand) holds the
//! data callers read. Tree `sm_meta` holds the last applied log id, the last
//! membership and each space's `Append` sequence; tree `raft_snapshot` holds
//! the current snapshot. Data and applied log id change in one atomic batch,
//! so after a crash the state is some prefix of the log and openraft
//! re-applies the rest from the durable log.
//!
//! It must not evaluate ops itself (`apply` does) nor call the node: what
//! applying reveals goes to `events`.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::events::{Hooks, Observed};
use crate::kv::{Change, Kv, KvResult, KvTree, Pairs};
use crate::metrics;
use crate::op::Op;
use crate::raft::{Entry, LogId, Node, NodeId, Response, StorageError, TypeConfig};
use crate::store::apply::{Base, Overlay};

const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
const SEQ_PREFIX: &[u8] = b"seq/";
const SNAPSHOT_COUNTER: &[u8] = b"snapshot_counter";
/// Set while a received snapshot replaces the state; found at open, the
/// replacement is redone from the stored snapshot.
const INSTALLING: &[u8] = b"installing";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

const SPACE_TREE_PREFIX: &str = "space/";

/// The tree holding key space `space`.
pub fn space_tree(space: &str) -> String {
    format!("{SPACE_TREE_PREFIX}{space}")
}

/// Runs `f` with the name of `space`'s tree, built on the stack when it is
/// short (every key space's is): a read of the store, done per stanza on
/// hot paths, then allocates nothing to find its tree.
pub fn with_space_tree<T>(space: &str, f: impl FnOnce(&str) -> T) -> T {
    let mut buf = [0u8; 64];
    let prefix = SPACE_TREE_PREFIX.as_bytes();
    let len = prefix.len() + space.len();
    if len > buf.len() {
        return f(&space_tree(space));
    }
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(space.as_bytes());
    // Two `str`s joined: valid UTF-8.
    f(std::str::from_utf8(&buf[..len]).expect("joined strs are UTF-8"))
}

fn seq_key(space: &str) -> Vec<u8> {
    let mut k = SEQ_PREFIX.to_vec();
    k.extend_from_slice(space.as_bytes());
    k
}

type Meta = SnapshotMeta<NodeId, Node>;

/// The whole state as a snapshot carries it.
#[derive(Serialize, Deserialize, Default)]
struct SnapshotData {
    spaces: Vec<(String, Pairs)>,
    seqs: Vec<(String, u64)>,
}

fn rd(e: impl ToString) -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn wr(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl ToString) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

async fn flush<K: Kv>(kv: &K) -> Result<(), StorageError> {
    if !K::DURABLE {
        return Ok(());
    }
    let kv = kv.clone();
    tokio::task::spawn_blocking(move || kv.flush())
        .await
        .map_err(wr)?
        .map_err(wr)
}

pub struct StateMachine<K: Kv> {
    kv: K,
    meta: K::Tree,
    snap: K::Tree,
    hooks: Option<Arc<Hooks>>,
}

impl<K: Kv> Base for StateMachine<K> {
    fn get(&self, space: &str, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.kv.tree(&space_tree(space))?.get(key)
    }

    fn keys_with_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<Vec<Vec<u8>>> {
        Ok(self
            .kv
            .tree(&space_tree(space))?
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn count_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<u64> {
        self.kv.tree(&space_tree(space))?.count_prefix(prefix)
    }

    fn seq(&self, space: &str) -> KvResult<u64> {
        Ok(self
            .meta
            .get(&seq_key(space))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }
}

impl<K: Kv> StateMachine<K> {
    /// Opens the state machine, finishing a snapshot install that a crash
    /// interrupted.
    pub fn new(kv: K) -> Result<Self, StorageError> {
        let sm = StateMachine {
            meta: kv.tree("sm_meta").map_err(rd)?,
            snap: kv.tree("raft_snapshot").map_err(rd)?,
            kv,
            hooks: None,
        };
        if sm.meta.get(INSTALLING).map_err(rd)?.is_some() {
            let (meta, data) = sm
                .stored_snapshot()?
                .ok_or_else(|| rd("snapshot install marker without snapshot"))?;
            sm.restore(&meta, &data)?;
        }
        Ok(sm)
    }

    /// Reports lease writes to `hooks` as they apply.
    pub fn with_hooks(mut self, hooks: Arc<Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    fn space_trees(&self) -> KvResult<Vec<(String, K::Tree)>> {
        let mut out = Vec::new();
        for name in self.kv.tree_names()? {
            if let Some(space) = name.strip_prefix(SPACE_TREE_PREFIX) {
                out.push((space.to_string(), self.kv.tree(&name)?));
            }
        }
        Ok(out)
    }

    fn last_applied(&self) -> Result<Option<LogId>, StorageError> {
        match self.meta.get(LAST_APPLIED).map_err(rd)? {
            Some(b) => Ok(Some(decode(&b).map_err(rd)?)),
            None => Ok(None),
        }
    }

    fn membership(&self) -> Result<StoredMembership<NodeId, Node>, StorageError> {
        match self.meta.get(MEMBERSHIP).map_err(rd)? {
            Some(b) => decode(&b).map_err(rd),
            None => Ok(StoredMembership::default()),
        }
    }

    fn dump(&self) -> KvResult<SnapshotData> {
        let mut data = SnapshotData::default();
        for (space, tree) in self.space_trees()? {
            data.spaces.push((space, tree.scan_prefix(b"")?));
        }
        for (k, v) in self.meta.scan_prefix(SEQ_PREFIX)? {
            let space = String::from_utf8_lossy(&k[SEQ_PREFIX.len()..]).into_owned();
            let seq = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_be_bytes);
            data.seqs.push((space, seq));
        }
        Ok(data)
    }

    fn stored_snapshot(&self) -> Result<Option<(Meta, Vec<u8>)>, StorageError> {
        let meta = self.snap.get(SNAP_META).map_err(rd)?;
        let data = self.snap.get(SNAP_DATA).map_err(rd)?;
        match (meta, data) {
            (Some(m), Some(d)) => Ok(Some((decode(&m).map_err(rd)?, d))),
            _ => Ok(None),
        }
    }

    /// Replaces the whole state with a snapshot's.
    fn restore(&self, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
        let data: SnapshotData = decode(data).map_err(snap_err)?;
        for (_, tree) in self.space_trees().map_err(wr)? {
            tree.clear().map_err(wr)?;
        }
        self.meta
            .remove_range(SEQ_PREFIX, Some(b"seq0"))
            .map_err(wr)?;
        for (space, pairs) in data.spaces {
            let tree = self.kv.tree(&space_tree(&space)).map_err(wr)?;
            tree.write(pairs.into_iter().map(|(k, v)| (k, Some(v))).collect())
                .map_err(wr)?;
        }
        let mut changes: Vec<Change> = data
            .seqs
            .iter()
            .map(|(s, q)| (seq_key(s), Some(q.to_be_bytes().to_vec())))
            .collect();
        let applied = match &meta.last_log_id {
            Some(l) => Some(encode(l).map_err(wr)?),
            None => None,
        };
        changes.push((LAST_APPLIED.to_vec(), applied));
        changes.push((
            MEMBERSHIP.to_vec(),
            Some(encode(&meta.last_membership).map_err(wr)?),
        ));
        changes.push((INSTALLING.to_vec(), None));
        self.meta.write(changes).map_err(wr)
    }
}

impl<K: Kv> RaftStateMachine<TypeConfig> for StateMachine<K> {
    type SnapshotBuilder = SnapshotBuilder<K>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, Node>), StorageError> {
        Ok((self.last_applied()?, self.membership()?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut overlay = Overlay::default();
        let mut replies = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        let mut observed = Observed::default();
        // Whether every op is a blind `Put` or `Delete`: see `write_in_order`.
        let mut blind = true;
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Response::default()),
                EntryPayload::Normal(mut req) => {
                    blind &= req.writes.iter().flatten().all(Op::is_blind);
                    let mut results = Vec::with_capacity(req.writes.len());
                    for w in &mut req.writes {
                        let r = overlay.apply_write_owned(self, w).map_err(|e| {
                            StorageIOError::apply(entry.log_id, openraft::AnyError::error(e))
                        })?;
                        observed.write(w, &r);
                        results.push(r);
                    }
                    replies.push(Response {
                        results,
                        index: entry.log_id.index,
                    });
                }
                EntryPayload::Membership(m) => {
                    blind = false;
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    replies.push(Response::default());
                }
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(replies);
        };
        let mut changes = Vec::new();
        // Counters of followed spaces this batch changes, moved on once the
        // change is written (`Hooks::space_version`).
        let mut changed = Vec::new();
        for (space, m) in overlay.spaces {
            if !m.is_empty() {
                if let Some(v) = self.hooks.as_ref().and_then(|h| h.followed(&space)) {
                    changed.push(v);
                }
                let tree = self.kv.tree(&space_tree(&space)).map_err(wr)?;
                changes.push((tree, m.into_iter().collect()));
            }
        }
        let mut meta: Vec<Change> = overlay
            .seqs
            .into_iter()
            .map(|(s, q)| (seq_key(&s), Some(q.to_be_bytes().to_vec())))
            .collect();
        meta.push((
            LAST_APPLIED.to_vec(),
            Some(encode(&last_applied).map_err(wr)?),
        ));
        if let Some(m) = membership {
            meta.push((MEMBERSHIP.to_vec(), Some(encode(&m).map_err(wr)?)));
        }
        // The applied log id goes last.
        changes.push((self.meta.clone(), meta));
        if blind {
            // No journal record: a crash leaves a prefix of these changes,
            // and with it the previous applied log id, from which openraft
            // applies the same entries again (kept in the log: it is purged
            // only up to a snapshot). Blind sets and removals end in the
            // same state whatever part of them was already made.
            self.kv.write_in_order(changes).map_err(wr)?;
        } else {
            self.kv.write_multi(changes).map_err(wr)?;
        }
        for v in changed {
            v.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if let Some(h) = &self.hooks {
            h.fire(observed);
        }
        metrics::apply_seconds(K::DURABLE, started.elapsed());
        Ok(replies)
    }

    /// Copies the state now, while nothing applies, so the snapshot is
    /// consistent even though it is encoded and written after more entries
    /// applied.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let prepared = (|| {
            let last_applied = self.last_applied()?;
            let membership = self.membership()?;
            // Only the copy happens here, while nothing applies; encoding
            // it (the slow part) is the builder's, off the apply path.
            let data = self.dump().map_err(rd)?;
            let counter = self
                .meta
                .get(SNAPSHOT_COUNTER)
                .map_err(rd)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_be_bytes)
                + 1;
            self.meta
                .insert(SNAPSHOT_COUNTER, &counter.to_be_bytes())
                .map_err(wr)?;
            let snapshot_id = match &last_applied {
                Some(l) => format!("{}-{}-{counter}", l.leader_id.term, l.index),
                None => format!("0-0-{counter}"),
            };
            Ok((
                Meta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                },
                data,
            ))
        })();
        SnapshotBuilder {
            kv: self.kv.clone(),
            snap: self.snap.clone(),
            prepared: Some(prepared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        decode::<SnapshotData>(&data).map_err(snap_err)?;
        if K::DURABLE {
            metrics::snapshot_bytes(data.len());
        }
        self.snap
            .write(vec![
                (SNAP_META.to_vec(), Some(encode(meta).map_err(snap_err)?)),
                (SNAP_DATA.to_vec(), Some(data.clone())),
            ])
            .map_err(snap_err)?;
        self.meta.insert(INSTALLING, b"1").map_err(wr)?;
        flush(&self.kv).await?;
        self.restore(meta, &data)?;
        if let Some(h) = &self.hooks {
            h.all_changed();
        }
        flush(&self.kv).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.stored_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Writes a snapshot prepared by `get_snapshot_builder` as the current one.
pub struct SnapshotBuilder<K: Kv> {
    kv: K,
    snap: K::Tree,
    prepared: Option<Result<(Meta, SnapshotData), StorageError>>,
}

impl<K: Kv> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<K> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = self
            .prepared
            .take()
            .ok_or_else(|| snap_err("snapshot builder used twice"))??;
        let data = encode(&data).map_err(snap_err)?;
        if K::DURABLE {
            metrics::snapshot_bytes(data.len());
        }
        self.snap
            .write(vec![
                (SNAP_META.to_vec(), Some(encode(&meta).map_err(snap_err)?)),
                (SNAP_DATA.to_vec(), Some(data.clone())),
            ])
            .map_err(snap_err)?;
        flush(&self.kv).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            space: "s".into(),
            key: key.into(),
            value: value.into(),
        }
    }

    fn entry(index: u64, ops: Vec<Op>) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Request { writes: vec![ops] }),
        }
    }

    fn entries() -> Vec<Entry> {
        vec![
            entry(1, vec![put("a", "1"), put("b", "1")]),
            entry(
                2,
                vec![
                    put("a", "2"),
                    Op::Delete {
                        space: "s".into(),
                        key: b"b".to_vec(),
                    },
                    put("c", "3"),
                ],
            ),
        ]
    }

    fn contents(sm: &StateMachine<crate::kv::SledKv>) -> Pairs {
        sm.kv
            .tree(&space_tree("s"))
            .unwrap()
            .scan_prefix(b"")
            .unwrap()
    }

    /// A batch of only `Put`s and `Delete`s is applied without a journal
    /// record: a crash can leave part of its changes with the previous
    /// applied log id, and applying the same entries again from there
    /// (openraft does, from the log) ends where applying them once did.
    #[tokio::test]
    async fn a_blind_batch_cut_short_by_a_crash_applies_again_to_the_same_state() {
        let whole = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new(crate::kv::SledKv::open(whole.path()).unwrap()).unwrap();
        sm.apply(entries()).await.unwrap();
        let want = contents(&sm);
        assert_eq!(want.len(), 2);

        let cut = tempfile::tempdir().unwrap();
        {
            let kv = crate::kv::SledKv::open(cut.path()).unwrap();
            let mut sm = StateMachine::new(kv.clone()).unwrap();
            let mut all = entries();
            let second = all.pop().unwrap();
            sm.apply(all).await.unwrap();
            // What a crash in the middle of the second entry may leave:
            // some of its changes, not its applied log id.
            sm.kv
                .tree(&space_tree("s"))
                .unwrap()
                .write(vec![
                    (b"b".to_vec(), None),
                    (b"a".to_vec(), Some(b"2".to_vec())),
                ])
                .unwrap();
            kv.flush().unwrap();
            drop(second);
        }
        let mut sm = StateMachine::new(crate::kv::SledKv::open(cut.path()).unwrap()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
        sm.apply(entries().into_iter().skip(1)).await.unwrap();
        assert_eq!(contents(&sm), want);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
    }

    #[test]
    fn a_tree_name_built_on_the_stack_is_the_same_name() {
        for space in ["user_blocklist", "", &"x".repeat(200)] {
            assert_eq!(with_space_tree(space, str::to_owned), space_tree(space));
        }
    }
}
