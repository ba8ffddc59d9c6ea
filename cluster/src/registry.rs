//! The registry group: routes and presence (the key spaces of
//! [`is_registry_space`]) in a second Raft group whose log and state
//! machine live in memory ([`MemKv`]): replicated and consistent like the
//! durable group, but never fsynced. Accounts, rosters and offline messages
//! stay in the durable group (sled, every entry fsynced).
//!
//! Soft state, with the nodes' own sessions as the source of truth: a route
//! names a session that exists only in its node's memory, so after every
//! node restarted there is nothing to route to, and whatever the registry
//! loses can be written again by the nodes that hold the sessions.
//!
//! Why it is safe without a disk. A Raft member that forgets its log and
//! vote must never vote or count toward a quorum under its old identity
//! again. So a member's id is `node_id << 16 | incarnation`, with a new
//! incarnation for every group this process joins (a counter in the local
//! sled tree `local`, fsynced once per join); the gRPC service refuses any
//! request addressed to another member id or epoch. A restarted node joins
//! as a new member (learner, then voter, added by the group's leader), and
//! its previous member is removed. When the group cannot reach a quorum
//! (a majority of its members restarted, or the whole cluster did), it is
//! re-founded: a node writes epoch E+1 to the durable group
//! (compare-and-set on `registry_epoch/current`, so one founder wins),
//! starts a group of one, and every node moves to it, joins, and
//! re-publishes its own sessions (`ClusterEvents::registry_reset`), then
//! marks itself ready in the group (`READY`). A reader that is about to
//! take a user for offline first waits until every live node is ready in
//! the current epoch (`Store::registry_barrier`).
//!
//! A single node (no peers in the durable membership) runs no registry at
//! all: its router answers from memory and nothing needs to be shared. The
//! first peer that appears makes the nodes found epoch 1 and publish.
//!
//! Owns `Registry` (the active group, the one being joined, the epoch
//! supervision) and `Group`. Writes to the durable group only the epoch
//! record, through the durable batcher.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::batcher::{self, Counters};
use crate::codec::{decode, encode};
use crate::config::LeaseConfig;
use crate::error::{StoreError, client_write_error, storage};
use crate::events::{Event, Hooks};
use crate::kv::{Kv, KvTree, MemKv, MemTree};
use crate::op::{Op, OpResult};
use crate::raft::{self, GroupTag, Raft};
use crate::shared::Shared;
use crate::store::{LogStore, StateMachine, space_tree};
use crate::{metrics, routes};

/// Space (durable group) of the registry epoch record, key [`CURRENT`].
pub const EPOCH_SPACE: &str = "registry_epoch";
const CURRENT: &[u8] = b"current";
/// Space (registry group): node id (u64 big-endian) -> the epoch (u64
/// big-endian) in which that node has re-published all its sessions.
pub const READY: &str = "registry_ready";
/// Space (registry group): SM-ID -> a resumable session's stream
/// management record (XEP-0198; written and read by the node).
pub const SM_SESSIONS: &str = "sm_session";
/// Local (not replicated) tree of this node's own counters.
const LOCAL_TREE: &str = "local";
const INCARNATION: &[u8] = b"registry_incarnation";

/// `group` of Raft RPCs and forwarded writes for the registry.
pub const GROUP_REGISTRY: u32 = 1;

/// How long a node tries to join the current epoch (or waits for its
/// group to elect a leader) before it re-founds the registry.
const FOUND_AFTER: Duration = Duration::from_secs(5);
/// How long a node that finds a majority of the cluster outside the
/// current epoch keeps trying before it re-founds (the epoch's founder
/// starts its group right after recording it).
const ORPHAN_GRACE: Duration = Duration::from_secs(1);
/// How long a registry write waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How often the supervisor looks at the epoch record and the group.
const TICK: Duration = Duration::from_millis(200);
/// How long a member's node must be out of the cluster before the
/// registry leader removes the member (`Registry::prune_departed`).
const PRUNE_AFTER: Duration = Duration::from_secs(3);
/// How long `registry_barrier` waits for every live node to be ready.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Whether `space` lives in the registry group.
pub fn is_registry_space(space: &str) -> bool {
    matches!(
        space,
        routes::ROUTES
            | routes::NODE_ROUTES
            | routes::COMPONENTS
            | routes::NODE_COMPONENTS
            | READY
            | SM_SESSIONS
    )
}

/// Whether every op of a write touches a registry space (`Some(true)`),
/// none does (`Some(false)`), or both kinds are mixed (`None`: refused,
/// one write is one group's atomic entry). An empty write is durable.
pub fn write_group(ops: &[Op]) -> Option<bool> {
    let mut registry = None;
    for op in ops {
        let r = is_registry_space(op_space(op));
        match registry {
            None => registry = Some(r),
            Some(prev) if prev != r => return None,
            _ => {}
        }
    }
    Some(registry.unwrap_or(false))
}

fn op_space(op: &Op) -> &str {
    match op {
        Op::Put { space, .. }
        | Op::Insert { space, .. }
        | Op::Delete { space, .. }
        | Op::DeletePrefix { space, .. }
        | Op::DeleteIf { space, .. }
        | Op::Expect { space, .. }
        | Op::DeleteIndexed { space, .. }
        | Op::Append { space, .. }
        | Op::ExpectValue { space, .. }
        | Op::Incr { space, .. }
        | Op::Take { space, .. } => space,
    }
}

/// The node a member id belongs to.
pub fn member_node(member: u64) -> u64 {
    member >> 16
}

/// The largest node id a cluster with a registry accepts (member ids keep
/// 16 bits for the incarnation).
pub const MAX_NODE_ID: u64 = (1 << 48) - 1;

/// What a node serving no group of the epoch asked for answers (in the
/// error of `RegistryJoin`): a joining node counts these.
pub const NOT_IN_EPOCH: &str = "not in registry epoch";

/// How an attempt to join an epoch ended.
enum JoinOutcome {
    Joined,
    /// A majority of the cluster's nodes are in no group of that epoch:
    /// it has no quorum; re-found at once.
    Orphaned,
}

/// The durable record of the current epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct EpochRecord {
    epoch: u64,
    founder: u64,
}

/// Raft timing of the registry: as the durable group's, with the log in
/// memory. A snapshot copies the whole state while nothing applies and
/// then encodes it (off the apply path, but on the same cores): at 100,000
/// routes on three nodes sharing two cores that stalls writes ~250 ms
/// (p99 1 ms without), so snapshots come every 20,000 entries (a log of
/// a few writes per entry: tens of MB at most).
fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "starling-registry".into(),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1000,
        ..raft::config()
    }
}

/// One registry group this node is a member of (or joining).
pub struct Group {
    pub epoch: u64,
    /// This node's member id in the group.
    pub member: u64,
    pub raft: Raft,
    pub kv: MemKv,
    pub writes: batcher::Writes,
    pub counters: Arc<Counters>,
    /// The trees of `routes::ROUTES`, `routes::NODE_ROUTES` and `READY`.
    trees: [MemTree; 3],
}

impl Group {
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.member) && m.state == ServerState::Leader
    }

    fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.member)
            .is_some()
    }

    /// A registry space's tree (opened once: lookups run per stanza).
    pub fn tree(&self, space: &str) -> Result<MemTree, StoreError> {
        match space {
            routes::ROUTES => Ok(self.trees[0].clone()),
            routes::NODE_ROUTES => Ok(self.trees[1].clone()),
            READY => Ok(self.trees[2].clone()),
            other => self.kv.tree(&space_tree(other)).map_err(storage),
        }
    }

    /// Queues a write for this group's batcher and waits for its result
    /// and log index.
    pub async fn submit(
        &self,
        ops: Vec<Op>,
        internal: bool,
    ) -> Result<(Vec<OpResult>, u64), StoreError> {
        if self.leader().is_none() {
            // Right after an election or a healed partition: a leader is
            // usually known within a heartbeat or two.
            let _ = self
                .raft
                .wait(Some(LEADER_WAIT))
                .metrics(|m| m.current_leader.is_some(), "a registry leader")
                .await;
        }
        self.writes.submit(ops, internal).await
    }

    /// `submit`, returning once this replica applied the write too.
    pub async fn write(&self, ops: Vec<Op>) -> Result<(Vec<OpResult>, u64), StoreError> {
        let (results, index) = self.submit(ops, false).await?;
        if self.applied_index() < index {
            let _ = self
                .raft
                .wait(Some(Duration::from_secs(5)))
                .applied_index_at_least(Some(index), "a registry write applied locally")
                .await;
        }
        Ok((results, index))
    }

    /// Waits until this replica applied everything the group committed
    /// before the call.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        if self.raft.ensure_linearizable().await.is_ok() {
            return Ok(());
        }
        let (_, index) = self.write(Vec::new()).await?;
        self.raft
            .wait(Some(READY_WAIT))
            .applied_index_at_least(Some(index), "registry read barrier")
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

/// This node's view of the registry.
pub struct Registry {
    pub shared: Arc<Shared>,
    hooks: Arc<Hooks>,
    /// The group reads and writes go to: set once this node is a member.
    active: RwLock<Option<Arc<Group>>>,
    /// A group this node is joining: it already answers Raft RPCs.
    joining: RwLock<Option<Arc<Group>>>,
    durable_writes: batcher::Writes,
    lease: LeaseConfig,
    /// Set after this process dropped what an earlier run of the node left
    /// in the registry (its first activation).
    cleaned: AtomicBool,
    /// When the active group last had a leader.
    last_leader: std::sync::Mutex<Instant>,
    /// The epoch this node last marked itself ready in (reported by the
    /// node through `Store::registry_ready`).
    ready_epoch: AtomicU64,
    /// The epoch in which this node saw every live node ready: from then
    /// on its replica has every session of the cluster.
    settled_epoch: AtomicU64,
}

fn read_lock<T: Clone>(l: &RwLock<Option<T>>) -> Option<T> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_lock<T>(l: &RwLock<Option<T>>, v: Option<T>) -> Option<T> {
    std::mem::replace(&mut *l.write().unwrap_or_else(|e| e.into_inner()), v)
}

impl Registry {
    pub fn new(
        shared: Arc<Shared>,
        hooks: Arc<Hooks>,
        durable_writes: batcher::Writes,
        lease: LeaseConfig,
    ) -> Registry {
        Registry {
            shared,
            hooks,
            active: RwLock::new(None),
            joining: RwLock::new(None),
            durable_writes,
            lease,
            cleaned: AtomicBool::new(false),
            last_leader: std::sync::Mutex::new(Instant::now()),
            ready_epoch: AtomicU64::new(0),
            settled_epoch: AtomicU64::new(0),
        }
    }

    /// The group reads and writes go to, once this node is a member.
    pub fn active(&self) -> Option<Arc<Group>> {
        read_lock(&self.active)
    }

    /// Whether the store is stopping (its groups stop with it).
    pub fn stopping(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// (epoch, member) of the active group and of the one being joined.
    pub fn members(&self) -> [Option<(u64, u64)>; 2] {
        [read_lock(&self.active), read_lock(&self.joining)].map(|g| g.map(|g| (g.epoch, g.member)))
    }

    /// The group (active or being joined) that is member `member` of
    /// `epoch`, for Raft RPCs and forwarded writes.
    pub fn find(&self, epoch: u64, member: Option<u64>) -> Option<Arc<Group>> {
        [read_lock(&self.active), read_lock(&self.joining)]
            .into_iter()
            .flatten()
            .find(|g| g.epoch == epoch && member.is_none_or(|m| m == g.member))
    }

    /// The active epoch, if this node has not marked itself ready in it.
    pub fn unpublished_epoch(&self) -> Option<u64> {
        let g = self.active()?;
        (self.ready_epoch.load(Ordering::SeqCst) != g.epoch).then_some(g.epoch)
    }

    pub fn mark_ready(&self, epoch: u64) {
        self.ready_epoch.store(epoch, Ordering::SeqCst);
        tracing::info!(epoch, "registry: this node's sessions are published");
    }

    fn durable_has_peers(&self) -> bool {
        self.shared.has_peers()
    }

    fn durable_members(&self) -> Vec<(u64, String)> {
        self.shared.members()
    }

    fn record(&self) -> Option<EpochRecord> {
        let tree = self.shared.kv.tree(&space_tree(EPOCH_SPACE)).ok()?;
        let v = tree.get(CURRENT).ok()??;
        decode(&v).ok()
    }

    /// A new member id: this node's id and the next incarnation (kept in
    /// the local tree, durable before the id is used).
    async fn next_member(&self) -> Result<u64, StoreError> {
        let kv = self.shared.kv.clone();
        let tree = kv.tree(LOCAL_TREE).map_err(storage)?;
        let last = tree
            .get(INCARNATION)
            .map_err(storage)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut next = last.wrapping_add(1);
        if next & 0xffff == 0 {
            next = next.wrapping_add(1);
        }
        tree.insert(INCARNATION, &next.to_be_bytes())
            .map_err(storage)?;
        tokio::task::spawn_blocking(move || kv.flush())
            .await
            .map_err(storage)?
            .map_err(storage)?;
        Ok((self.shared.node_id << 16) | (next & 0xffff))
    }

    /// Starts a Raft node for `epoch` under a new member id (not yet a
    /// member of anything).
    async fn new_group(&self, epoch: u64) -> Result<Arc<Group>, StoreError> {
        let member = self.next_member().await?;
        let kv = MemKv::default();
        let log = LogStore::new(kv.clone()).map_err(storage)?;
        let sm = StateMachine::new(kv.clone())
            .map_err(storage)?
            .with_hooks(self.hooks.clone());
        let cfg = Arc::new(config().validate().map_err(storage)?);
        let tag = GroupTag {
            group: GROUP_REGISTRY,
            epoch,
        };
        let raft = Raft::new(
            member,
            cfg,
            raft::network::Network::new(self.shared.transport.clone(), tag),
            log,
            sm,
        )
        .await
        .map_err(storage)?;
        let (tx, rx) = batcher::channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(batcher::run(
            raft.clone(),
            self.shared.transport.clone(),
            rx,
            counters.clone(),
            self.shared.write_timeout,
            // The registry's entries are cheap (no fsync): no linger.
            Duration::ZERO,
            Duration::ZERO,
            tag,
        ));
        let open = |space: &str| kv.tree(&space_tree(space)).map_err(storage);
        let trees = [
            open(routes::ROUTES)?,
            open(routes::NODE_ROUTES)?,
            open(READY)?,
        ];
        Ok(Arc::new(Group {
            epoch,
            member,
            raft,
            kv,
            writes: tx,
            counters,
            trees,
        }))
    }

    /// Replaces the active group (the previous one, and a group being
    /// joined that is not this one, stop).
    async fn activate(self: &Arc<Self>, group: Arc<Group>) {
        // What an earlier run of this node left (it crashed, or the cluster
        // kept the group while it restarted): gone before this run's
        // sessions are published, and their contacts are told.
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            let me = self.shared.node_id;
            let _ = group.barrier().await;
            let left = |index| {
                group
                    .tree(index)
                    .and_then(|t| t.count_prefix(&me.to_be_bytes()).map_err(storage))
                    .unwrap_or(0)
            };
            if left(routes::NODE_ROUTES) + left(routes::NODE_COMPONENTS) > 0
                && let Err(e) = group.write(routes::drop_node_all(me)).await
            {
                tracing::warn!(error = %e, "registry: dropping this node's old routes failed");
            }
        }
        // The group stays reachable (as the one being joined) until it is
        // the active one: the cleanup above needs its leader.
        let old = set_lock(&self.active, Some(group.clone()));
        if let Some(j) = set_lock(&self.joining, None)
            && j.member != group.member
        {
            let _ = j.raft.shutdown().await;
        }
        *self.last_leader.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        metrics::registry_epoch(group.epoch);
        metrics::registry_switch();
        tracing::info!(
            epoch = group.epoch,
            member = group.member,
            "registry: serving epoch"
        );
        if let Some(old) = old {
            let _ = old.raft.shutdown().await;
            // Routes of other nodes that the old group held: those that no
            // live node publishes again in the new one belonged to sessions
            // that are gone (their node died with the old group's quorum),
            // and their contacts are told, as when a node expires.
            let me = self.shared.node_id;
            let before: Vec<(Vec<u8>, Vec<u8>)> = old
                .tree(routes::ROUTES)
                .and_then(|t| t.scan_prefix(b"").map_err(storage))
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, v)| routes::parse_route_value(v).is_some_and(|(n, _)| n != me))
                .collect();
            if !before.is_empty() {
                let registry = self.clone();
                let epoch = group.epoch;
                tokio::spawn(async move { registry.report_lost(epoch, before).await });
            }
        }
        self.hooks.send(Event::RegistryReset(group.epoch));
    }

    /// Founds epoch `next` if the record still says `expected`: one node
    /// wins; it starts a group of one.
    async fn found(self: &Arc<Self>, expected: Option<&EpochRecord>) -> Result<bool, StoreError> {
        let epoch = expected.map_or(1, |r| r.epoch + 1);
        let group = self.new_group(epoch).await?;
        let record = EpochRecord {
            epoch,
            founder: group.member,
        };
        let expect = match expected {
            Some(r) => Some(encode(r).map_err(StoreError::Storage)?),
            None => None,
        };
        let ops = vec![
            Op::ExpectValue {
                space: EPOCH_SPACE.into(),
                key: CURRENT.to_vec(),
                value: expect,
            },
            Op::Put {
                space: EPOCH_SPACE.into(),
                key: CURRENT.to_vec(),
                value: encode(&record).map_err(StoreError::Storage)?,
            },
        ];
        let (results, _) = self.durable_writes.submit(ops, true).await?;
        if results.contains(&OpResult::Mismatch) {
            let _ = group.raft.shutdown().await;
            return Ok(false);
        }
        let members = std::collections::BTreeMap::from([(
            group.member,
            BasicNode::new(&self.shared.raft_addr),
        )]);
        group.raft.initialize(members).await.map_err(storage)?;
        group
            .raft
            .wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "registry founder leads")
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        tracing::warn!(epoch, "registry: founded a new epoch");
        self.activate(group).await;
        Ok(true)
    }

    /// Joins epoch `epoch` under a new member id through any other node.
    async fn join(self: &Arc<Self>, epoch: u64) -> Result<JoinOutcome, StoreError> {
        let group = match read_lock(&self.joining).filter(|g| g.epoch == epoch) {
            Some(g) => g,
            None => {
                let g = self.new_group(epoch).await?;
                if let Some(old) = set_lock(&self.joining, Some(g.clone())) {
                    let _ = old.raft.shutdown().await;
                }
                tracing::debug!(epoch, member = g.member, "registry: joining");
                g
            }
        };
        let me = self.shared.node_id;
        let members = self.durable_members();
        let mut last = StoreError::Unavailable("no other node".into());
        // Nodes that answered that they are not in `epoch` (this one
        // neither): when they are a majority of the cluster, the epoch's
        // group cannot have a quorum any more.
        let mut outside = 1;
        for (id, addr) in &members {
            let (id, addr) = (*id, addr.as_str());
            if id == me {
                continue;
            }
            match raft::admin_client::registry_join(
                &self.shared.transport,
                addr,
                epoch,
                group.member,
                me,
                &self.shared.raft_addr,
            )
            .await
            {
                Ok(()) => {
                    group
                        .raft
                        .wait(Some(Duration::from_secs(10)))
                        .metrics(
                            |m| {
                                m.membership_config
                                    .membership()
                                    .get_node(&group.member)
                                    .is_some()
                            },
                            "a member of the registry",
                        )
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    self.activate(group).await;
                    return Ok(JoinOutcome::Joined);
                }
                Err(e) => {
                    if e.to_string().contains(NOT_IN_EPOCH) {
                        outside += 1;
                    }
                    last = e;
                }
            }
        }
        if outside * 2 > members.len() {
            return Ok(JoinOutcome::Orphaned);
        }
        Err(last)
    }

    /// Adds member `member` of node `node` to the active group of `epoch`,
    /// and removes the node's earlier members and members of nodes that
    /// left the cluster. Leader only.
    pub async fn add_member(
        &self,
        epoch: u64,
        member: u64,
        node: u64,
        addr: &str,
    ) -> Result<(), StoreError> {
        let g = self.active().filter(|g| g.epoch == epoch).ok_or_else(|| {
            StoreError::Unavailable(format!("not serving registry epoch {epoch}"))
        })?;
        if member_node(member) != node || node > MAX_NODE_ID {
            return Err(StoreError::Storage(
                "member id does not name the node".into(),
            ));
        }
        if !g.is_member() || !g.is_leader() {
            return Err(StoreError::Unavailable("not the registry leader".into()));
        }
        g.raft
            .add_learner(member, BasicNode::new(addr), true)
            .await
            .map_err(client_write_error)?;
        g.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([member])), false)
            .await
            .map_err(client_write_error)?;
        let nodes: BTreeSet<u64> = self.durable_members().iter().map(|(id, _)| *id).collect();
        let (voters, learners): (BTreeSet<u64>, BTreeSet<u64>) = {
            let m = g.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            let voters: BTreeSet<u64> = mem.voter_ids().collect();
            let learners = mem.learner_ids().collect();
            (voters, learners)
        };
        let stale = |id: &u64| {
            *id != member
                && *id != g.member
                && (member_node(*id) == node || !nodes.contains(&member_node(*id)))
        };
        let old_voters: BTreeSet<u64> = voters.iter().copied().filter(stale).collect();
        if !old_voters.is_empty() {
            g.raft
                .change_membership(ChangeMembers::RemoveVoters(old_voters.clone()), false)
                .await
                .map_err(client_write_error)?;
        }
        let old_nodes: BTreeSet<u64> = learners
            .iter()
            .copied()
            .chain(old_voters)
            .filter(stale)
            .collect();
        if !old_nodes.is_empty() {
            let _ = g
                .raft
                .change_membership(ChangeMembers::RemoveNodes(old_nodes), false)
                .await;
        }
        Ok(())
    }

    /// Removes from the active group the members of nodes that are no
    /// longer in the cluster (a node that left): as voters they would
    /// count toward the group's quorum until the next join. A member is
    /// removed once its node has been out of this replica's view of the
    /// cluster for `PRUNE_AFTER` (`gone_since`): a node that has just
    /// joined may ask to be a member before this replica has its join.
    /// Leader only; nothing to do most of the time (no write then).
    async fn prune_departed(
        &self,
        g: &Group,
        gone_since: &mut HashMap<u64, Instant>,
    ) -> Result<(), StoreError> {
        if !g.is_leader() {
            gone_since.clear();
            return Ok(());
        }
        let nodes: BTreeSet<u64> = self.durable_members().iter().map(|(id, _)| *id).collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let gone = |id: &u64| *id != g.member && !nodes.contains(&member_node(*id));
        let (voters, others): (BTreeSet<u64>, BTreeSet<u64>) = {
            let m = g.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            (
                mem.voter_ids().filter(gone).collect(),
                mem.learner_ids().filter(gone).collect(),
            )
        };
        let now = Instant::now();
        gone_since.retain(|id, _| voters.contains(id) || others.contains(id));
        let mut due =
            |id: &u64| now.duration_since(*gone_since.entry(*id).or_insert(now)) >= PRUNE_AFTER;
        let voters: BTreeSet<u64> = voters.into_iter().filter(&mut due).collect();
        let others: BTreeSet<u64> = others.into_iter().filter(&mut due).collect();
        if voters.is_empty() && others.is_empty() {
            return Ok(());
        }
        tracing::info!(?voters, learners = ?others, epoch = g.epoch, "registry: removing the members of nodes that left");
        if !voters.is_empty() {
            g.raft
                .change_membership(ChangeMembers::RemoveVoters(voters.clone()), false)
                .await
                .map_err(client_write_error)?;
        }
        let nodes: BTreeSet<u64> = voters.into_iter().chain(others).collect();
        g.raft
            .change_membership(ChangeMembers::RemoveNodes(nodes), false)
            .await
            .map_err(client_write_error)?;
        Ok(())
    }

    /// Whether the active group has had a leader within `FOUND_AFTER`,
    /// counting only the time the durable group had one: a node cut off
    /// from the others cannot tell a dead registry from its own isolation,
    /// and must not re-found it the moment the partition heals.
    fn group_alive(&self, g: &Group) -> bool {
        let mut last = self.last_leader.lock().unwrap_or_else(|e| e.into_inner());
        if g.leader().is_some() || !self.durable_has_leader() {
            *last = Instant::now();
        }
        last.elapsed() < FOUND_AFTER
    }

    fn durable_has_leader(&self) -> bool {
        self.shared.raft.metrics().borrow().current_leader.is_some()
    }

    /// Nodes whose registry state this node waits for before it takes a
    /// user for offline: the durable members that renewed their lease
    /// lately (a dead node's sessions are gone anyway).
    pub(crate) fn live_nodes(&self) -> Vec<u64> {
        let ttl = Duration::from_millis(self.lease.ttl_ms.max(1));
        let me = self.shared.node_id;
        self.durable_members()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| {
                *id == me
                    || self.lease.renew_ms == 0
                    || self
                        .hooks
                        .last_renewal(*id)
                        .is_some_and(|t| t.elapsed() < ttl)
            })
            .collect()
    }

    /// Waits (bounded) until every live node re-published its sessions in
    /// the active epoch and this replica applied everything committed
    /// before the call. `Ok(false)`: gave up waiting (the caller decides
    /// on what it has).
    pub async fn barrier(&self) -> Result<bool, StoreError> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(g) = self.active() {
                g.barrier().await?;
                let ready = g.tree(READY)?;
                let all = self.live_nodes().into_iter().all(|id| {
                    ready
                        .get(&id.to_be_bytes())
                        .ok()
                        .flatten()
                        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                        .is_some_and(|e| u64::from_be_bytes(e) == g.epoch)
                });
                if all {
                    self.settled_epoch.fetch_max(g.epoch, Ordering::SeqCst);
                    return Ok(true);
                }
            } else if !self.durable_has_peers() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Once every live node re-published in `epoch`, reports the routes of
    /// `before` (the previous group's, other nodes') that nobody wrote
    /// again as dropped.
    async fn report_lost(&self, epoch: u64, before: Vec<(Vec<u8>, Vec<u8>)>) {
        if !matches!(self.barrier().await, Ok(true)) {
            tracing::warn!(epoch, "registry: not every node re-published in time");
        }
        let Some(g) = self.active().filter(|g| g.epoch == epoch) else {
            return;
        };
        let Ok(now) = g.tree(routes::ROUTES) else {
            return;
        };
        let lost: Vec<routes::Route> = before
            .into_iter()
            .filter(|(k, _)| now.get(k).ok().flatten().is_none())
            .filter_map(|(k, v)| routes::Route::parse(&k, &v))
            .collect();
        if !lost.is_empty() {
            tracing::info!(
                epoch,
                routes = lost.len(),
                "registry: routes not re-published in the new epoch are gone"
            );
            self.hooks.send(Event::RoutesDropped(lost));
        }
    }

    /// Whether this node saw every live node ready in the active epoch.
    pub fn settled(&self) -> bool {
        match self.active() {
            Some(g) => self.settled_epoch.load(Ordering::SeqCst) >= g.epoch,
            None => !self.durable_has_peers(),
        }
    }

    /// The ops that mark this node ready in `epoch`.
    pub fn ready_ops(&self, epoch: u64) -> Vec<Op> {
        vec![Op::Put {
            space: READY.into(),
            key: self.shared.node_id.to_be_bytes().to_vec(),
            value: epoch.to_be_bytes().to_vec(),
        }]
    }

    /// Stops the groups (the store is shutting down).
    pub async fn shutdown(&self) {
        for g in [set_lock(&self.active, None), set_lock(&self.joining, None)]
            .into_iter()
            .flatten()
        {
            let _ = g.raft.shutdown().await;
        }
    }
}

/// Keeps this node in the current registry epoch until the store stops:
/// founds epoch 1 when a peer first appears, joins the epoch the durable
/// record names, re-founds when the group has no quorum.
pub async fn supervise(registry: Arc<Registry>) {
    let mut stop = registry.shared.stop.subscribe();
    let mut trying_since: HashMap<u64, Instant> = HashMap::new();
    let mut gone_since: HashMap<u64, Instant> = HashMap::new();
    // Changes only with the node's state and membership (not with each
    // entry applied): a node alone waits on it instead of waking every
    // tick for nothing.
    let mut server = registry.shared.raft.server_metrics();
    loop {
        let alone = registry.active().is_none() && !registry.durable_has_peers();
        tokio::select! {
            _ = tokio::time::sleep(TICK), if !alone => {}
            changed = server.changed(), if alone => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let active = registry.active();
        if active.is_none() && !registry.durable_has_peers() {
            continue;
        }
        let record = registry.record();
        if !registry.durable_has_leader() {
            // Cut off (or the cluster is electing): no time counts toward
            // re-founding while this node cannot tell.
            trying_since.clear();
        }
        let res = match (&active, &record) {
            (Some(g), Some(r)) if g.epoch == r.epoch => {
                if registry.group_alive(g) {
                    trying_since.clear();
                    registry.prune_departed(g, &mut gone_since).await
                } else {
                    tracing::warn!(epoch = g.epoch, "registry: no leader; re-founding it");
                    registry.found(Some(r)).await.map(drop)
                }
            }
            (Some(g), Some(r)) if g.epoch > r.epoch => Ok(()), // our record is not applied yet
            (_, None) => registry.found(None).await.map(drop),
            (_, Some(r)) => {
                let since = *trying_since.entry(r.epoch).or_insert_with(Instant::now);
                match registry.join(r.epoch).await {
                    Ok(JoinOutcome::Joined) => {
                        trying_since.clear();
                        Ok(())
                    }
                    Ok(JoinOutcome::Orphaned) if since.elapsed() >= ORPHAN_GRACE => {
                        tracing::warn!(
                            epoch = r.epoch,
                            "registry: a majority of the nodes is in no group of the current epoch; re-founding it"
                        );
                        registry.found(Some(r)).await.map(drop)
                    }
                    Ok(JoinOutcome::Orphaned) => Ok(()), // its founder may be starting it
                    Err(e) if since.elapsed() >= FOUND_AFTER => {
                        tracing::warn!(
                            epoch = r.epoch,
                            error = %e,
                            "registry: cannot join the current epoch; re-founding it"
                        );
                        registry.found(Some(r)).await.map(drop)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "registry supervision");
        }
    }
    registry.shutdown().await;
}
