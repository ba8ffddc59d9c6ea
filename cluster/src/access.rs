//! Reading and writing the replicated key spaces through a `Store`: writes
//! (queued to the batcher, answered once applied on this replica), reads of
//! this replica, the read barrier, write-path counters (`StoreStats`) and log
//! compaction.
//!
//! Must not change sled directly: every change is an `Op` through the batcher
//! and Raft; sled is only read here.

use std::sync::atomic::Ordering;

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::batcher;
use crate::error::{StoreError, fatal, leader_error, storage};
use crate::handle::{START_TIMEOUT, Store};
use crate::kv::{self, Kv, KvTree};
use crate::op::{Op, OpResult};
use crate::registry::{self, is_registry_space};
use crate::store::with_space_tree;

/// How long a write waits for this replica to apply what the leader
/// committed.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a follower waits for the leader's read index before it falls
/// back to a barrier by an empty write.
const READ_INDEX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A key space's tree in the group that holds it.
enum Tree {
    Durable(kv::SledTree),
    Registry(kv::MemTree),
    /// A registry space while this node is in no registry group.
    None,
}

impl Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Tree::Durable(t) => t.get(key).map_err(storage),
            Tree::Registry(t) => t.get(key).map_err(storage),
            Tree::None => Ok(None),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<kv::Pairs, StoreError> {
        match self {
            Tree::Durable(t) => t.scan_prefix(prefix).map_err(storage),
            Tree::Registry(t) => t.scan_prefix(prefix).map_err(storage),
            Tree::None => Ok(Vec::new()),
        }
    }

    fn range_limited(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<kv::Pairs, StoreError> {
        match self {
            Tree::Durable(t) => t.range_limited(start, end, reverse, limit),
            Tree::Registry(t) => t.range_limited(start, end, reverse, limit),
            Tree::None => Ok(Vec::new()),
        }
        .map_err(storage)
    }

    fn count_range(&self, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
        match self {
            Tree::Durable(t) => t.count_range(start, end),
            Tree::Registry(t) => t.count_range(start, end),
            Tree::None => Ok(0),
        }
        .map_err(storage)
    }

    fn count_prefix(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        match self {
            Tree::Durable(t) => t.count_prefix(prefix).map_err(storage),
            Tree::Registry(t) => t.count_prefix(prefix).map_err(storage),
            Tree::None => Ok(0),
        }
    }
}

/// A write queued by [`Store::write_behind`].
pub struct QueuedWrite {
    reply: batcher::Reply,
    store: Store,
}

impl QueuedWrite {
    /// The write's results, once committed and applied on this replica.
    pub async fn done(self) -> Result<Vec<OpResult>, StoreError> {
        let (results, index) = self.reply.await.map_err(|_| StoreError::Shutdown)??;
        self.store.applied_here(index).await;
        Ok(results)
    }
}

/// Write-path counters since `open` (diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Raft entries proposed by the write batcher.
    pub raft_entries: u64,
    /// `Store::write` calls carried by those entries.
    pub writes: u64,
    /// The same for the registry group this node is in (since it joined
    /// that epoch).
    pub registry_entries: u64,
    pub registry_writes: u64,
}

impl Store {
    /// Queues `ops` for the batcher and waits for the applied result.
    async fn submit(
        &self,
        ops: Vec<Op>,
        internal: bool,
    ) -> Result<(Vec<OpResult>, u64), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Shutdown);
        }
        self.inner.writes.submit(ops, internal).await
    }

    /// The index of the last log entry this replica has applied.
    pub fn applied_index(&self) -> u64 {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Replicates and applies one write. Concurrent writes are batched into
    /// one Raft entry. Returns once committed and applied, one result per op.
    ///
    /// A write whose ops all touch registry spaces (routes, presence:
    /// [`is_registry_space`](crate::is_registry_space)) goes to the
    /// registry group (memory, no fsync), and fails with `Unavailable`
    /// while this node is not a member of one (check
    /// [`Store::registry_active`]); other writes go to the durable group.
    /// One write may not mix the two.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        match registry::write_group(&ops) {
            Some(false) => Ok(self.write_at(ops).await?.0),
            Some(true) => {
                if self.inner.closed.load(Ordering::SeqCst) {
                    return Err(StoreError::Shutdown);
                }
                let g = self.inner.registry.active().ok_or_else(|| {
                    StoreError::Unavailable("this node is not in a registry group".into())
                })?;
                Ok(g.write(ops).await?.0)
            }
            None => Err(StoreError::Storage(
                "a write may not mix registry and durable key spaces".into(),
            )),
        }
    }

    /// Whether this node is a member of a registry group, so that routes
    /// and presence written now are seen by the other nodes. False on a
    /// node without peers (nothing to share) and while the registry is
    /// being founded or joined: the node's sessions are written when it
    /// becomes true (`ClusterEvents::registry_reset`).
    pub fn registry_active(&self) -> bool {
        self.inner.registry.active().is_some()
    }

    /// Waits up to `within` for this node to be in a registry group (true)
    /// or to have no peers. A node that starts in a cluster calls it before
    /// it takes logins, so its sessions are published from the first one
    /// and what its previous run left is gone first.
    pub async fn registry_wait(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.registry_active() {
                return true;
            }
            if !self.has_peers() || std::time::Instant::now() >= deadline {
                return !self.has_peers();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Returns at once once this node has seen every live node publish its
    /// sessions in the current registry epoch; before that (right after
    /// this node joined or the registry was re-founded) waits like
    /// `registry_barrier`. Call it before a decision that needs every
    /// session of the cluster, where a full barrier each time would cost
    /// too much (a presence broadcast).
    pub async fn registry_settled(&self) -> Result<(), StoreError> {
        if self.inner.registry.settled() {
            return Ok(());
        }
        self.registry_barrier().await
    }

    /// The members whose lease is current (this node always).
    pub fn live_nodes(&self) -> Vec<u64> {
        self.inner.registry.live_nodes()
    }

    /// The nodes whose members vote in the registry group this node is in,
    /// as its replica sees the group's membership (empty: in none).
    pub fn registry_voters(&self) -> Vec<u64> {
        self.inner.registry.active().map_or_else(Vec::new, |g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .map(crate::registry::member_node)
                .collect()
        })
    }

    /// The registry epoch this node is in (0: none).
    pub fn registry_epoch(&self) -> u64 {
        self.inner.registry.active().map_or(0, |g| g.epoch)
    }

    /// Marks this node's sessions as all written in registry `epoch` (the
    /// end of `ClusterEvents::registry_reset`).
    pub async fn registry_ready(&self, epoch: u64) -> Result<(), StoreError> {
        let reg = &self.inner.registry;
        let g = reg
            .active()
            .filter(|g| g.epoch == epoch)
            .ok_or_else(|| StoreError::Unavailable(format!("not in registry epoch {epoch}")))?;
        g.write(reg.ready_ops(epoch)).await?;
        reg.mark_ready(epoch);
        Ok(())
    }

    /// The registry's read barrier: waits until this replica applied every
    /// route write committed before the call and every live node has
    /// written its sessions in the current epoch (bounded: after 5 s it
    /// answers on what it has). Call it before taking a user for offline.
    pub async fn registry_barrier(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Shutdown);
        }
        if !self.inner.registry.barrier().await? {
            tracing::debug!("registry barrier: not every node is ready; reading what is there");
        }
        Ok(())
    }

    /// `write`, also returning the log index of the entry that carried it.
    /// Returns once this replica has applied it too, so that reads here
    /// after a write see it (read-your-writes on a follower, whose writes
    /// the leader commits before this replica hears of the commit).
    async fn write_at(&self, ops: Vec<Op>) -> Result<(Vec<OpResult>, u64), StoreError> {
        let (results, index) = self.submit(ops, false).await?;
        self.applied_here(index).await;
        Ok((results, index))
    }

    /// Queues a write to the durable group now and returns at once: it is
    /// proposed whether or not its [`QueuedWrite`] is awaited, in an entry
    /// that may wait longer for company (`behind_linger_us`). For a caller
    /// that learns of the commit later (the message archive, whose
    /// sender's session acknowledges the message only then). The ops come
    /// back when they are not for the durable group or its queue is full
    /// (then `write` them).
    pub fn write_behind(&self, ops: Vec<Op>) -> Result<QueuedWrite, Vec<Op>> {
        if self.inner.closed.load(Ordering::SeqCst) || registry::write_group(&ops) != Some(false) {
            return Err(ops);
        }
        let reply = self.inner.writes.queue(ops)?;
        Ok(QueuedWrite {
            reply,
            store: self.clone(),
        })
    }

    /// Returns once every write this node queued behind so far
    /// ([`Store::write_behind`]) is committed (or failed): a read of what
    /// they wrote (the message archive) then sees them. Free while none
    /// is in flight; otherwise an empty write ends their entry's linger
    /// and waits for it (entries commit in order).
    pub async fn sync_behind(&self) {
        if !self.inner.writes.behind_in_flight() {
            return;
        }
        if let Err(e) = self.write_at(Vec::new()).await {
            tracing::debug!(error = %e, "could not wait for the writes queued behind");
        }
    }

    /// Waits (bounded) until this replica applied the entry at `index`.
    async fn applied_here(&self, index: u64) {
        if self.applied_index() < index {
            let waited = self
                .inner
                .raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(Some(index), "a write applied locally")
                .await;
            if let Err(e) = waited {
                // Committed all the same: only this replica lags.
                tracing::warn!(index, error = %e, "write committed but not yet applied here");
            }
        }
    }

    fn space(&self, space: &str) -> Result<Tree, StoreError> {
        if is_registry_space(space) {
            return Ok(match self.inner.registry.active() {
                Some(g) => Tree::Registry(g.tree(space)?),
                None => Tree::None,
            });
        }
        let tree = with_space_tree(space, |name| self.inner.kv.tree(name));
        Ok(Tree::Durable(tree.map_err(storage)?))
    }

    /// Reads one key from the local replica (of the registry group for a
    /// registry space: nothing while this node is in none).
    pub fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.space(space)?.get(key)
    }

    /// All keys and values under `prefix`, in key order, from the local replica.
    #[allow(clippy::type_complexity)] // the signature is the fixed public API
    pub fn scan_prefix(
        &self,
        space: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.space(space)?.scan_prefix(prefix)
    }

    /// At most `limit` keys and values with `start <= key < end`, from the
    /// local replica: ascending from `start`, or with `reverse` descending
    /// from the greatest key below `end`. Reads only what it returns, so
    /// the newest page of a long per-user range costs one page.
    #[allow(clippy::type_complexity)] // the same pairs as `scan_prefix`
    pub fn scan_range(
        &self,
        space: &str,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.space(space)?.range_limited(start, end, reverse, limit)
    }

    /// Number of keys with `start <= key < end` in the local replica
    /// (reads every such key).
    pub fn count_range(&self, space: &str, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
        self.space(space)?.count_range(start, end)
    }

    /// Number of keys under `prefix` in the local replica.
    pub fn count_prefix(&self, space: &str, prefix: &[u8]) -> Result<u64, StoreError> {
        self.space(space)?.count_prefix(prefix)
    }

    /// Waits until the local replica has applied everything committed
    /// before this call (a linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Shutdown);
        }
        let raft = &self.inner.raft;
        match crate::raft::confirm_leadership(raft).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                // A follower: the leader's read index, once applied here,
                // covers every write committed before this call, without
                // a log entry.
                if let Some(leader) = f.leader_node {
                    match self.leader_read_index(&leader.addr).await {
                        Ok(index) => {
                            return raft
                                .wait(Some(START_TIMEOUT))
                                .applied_index_at_least(Some(index), "read barrier")
                                .await
                                .map(|_| ())
                                .map_err(|e| StoreError::Unavailable(e.to_string()));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "read index failed; barrier by an empty write");
                        }
                    }
                }
                // Else (no leader known, or one without `ReadIndex`): an
                // empty write through the leader marks a point at or after
                // every write committed before this call; once applied
                // here, reads see all of them. It rides in a batch with
                // other writes, so it rarely costs an fsync of its own.
                let (_, index) = self.write_at(Vec::new()).await?;
                raft.wait(Some(START_TIMEOUT))
                    .applied_index_at_least(Some(index), "read barrier")
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(())
            }
            Err(e) => Err(leader_error(e)),
        }
    }

    /// Asks the durable leader at `addr` for its read index (a client kept
    /// per leader address: a new one would cost a TLS handshake).
    async fn leader_read_index(&self, addr: &str) -> Result<u64, StoreError> {
        let cached = {
            let slot = self
                .inner
                .read_index
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            slot.as_ref()
                .filter(|(a, _)| a == addr)
                .map(|(_, c)| c.clone())
        };
        let mut client = match cached {
            Some(c) => c,
            None => {
                let ch = self
                    .inner
                    .shared
                    .transport
                    .channel(addr)
                    .map_err(StoreError::Unavailable)?;
                let c = starling_proto::cluster::admin_client::AdminClient::new(ch);
                *self
                    .inner
                    .read_index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((addr.to_string(), c.clone()));
                c
            }
        };
        crate::raft::admin_client::read_index(&mut client, addr, READ_INDEX_TIMEOUT).await
    }

    /// Write-path counters since `open`: how many Raft entries carried how
    /// many writes.
    pub fn stats(&self) -> StoreStats {
        let reg = self.inner.registry.active();
        let reg = reg.as_ref().map(|g| &g.counters);
        StoreStats {
            raft_entries: self.inner.counters.entries.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
            registry_entries: reg.map_or(0, |c| c.entries.load(Ordering::Relaxed)),
            registry_writes: reg.map_or(0, |c| c.writes.load(Ordering::Relaxed)),
        }
    }

    /// Builds a snapshot of the state machine now and purges the log it
    /// covers. Raft also does this by itself every 10 000 entries.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let applied = raft.metrics().borrow().last_applied;
        let Some(applied) = applied else {
            return Ok(());
        };
        raft.trigger().snapshot().await.map_err(fatal)?;
        raft.wait(Some(START_TIMEOUT))
            .snapshot(applied, "snapshot built")
            .await
            .or_else(|_| {
                // A later entry may have been included: accept any snapshot
                // at or past `applied`.
                let snap = raft.metrics().borrow().snapshot;
                if snap.is_some_and(|s| s.index >= applied.index) {
                    Ok(raft.metrics().borrow().clone())
                } else {
                    Err(StoreError::Storage("snapshot not built in time".into()))
                }
            })?;
        raft.trigger()
            .purge_log(applied.index)
            .await
            .map_err(fatal)?;
        raft.wait(Some(START_TIMEOUT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= applied.index),
                "log purged",
            )
            .await
            .map_err(storage)?;
        Ok(())
    }
}
