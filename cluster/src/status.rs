//! The cluster as one node sees it: leader, indexes, members with their
//! replication and lease state. Plain types for callers and for
//! `Admin.Status` (so `starling cluster status --addr` can ask any node),
//! computed by `local`; the `Store` calls that report it (`status`, `leader`,
//! `is_healthy`) and `query_status`, which asks another node.
//!
//! Read-only: must not write; this node's own health comes from `lease`.

use std::time::Duration;

use starling_proto::cluster as pb;

use std::sync::atomic::Ordering;

use crate::config::ClusterTls;
use crate::error::StoreError;
use crate::handle::Store;
use crate::kv::KvTree;
use crate::lease::Leases;
use crate::transport::Transport;
use crate::{lease, raft};

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: u64,
    /// Address its peers reach it on.
    pub addr: String,
    /// A voter (false: a learner still catching up).
    pub voter: bool,
    /// Last log index known replicated to it (answered by the leader
    /// only; the leader's own is its last log index).
    pub matched_index: Option<u64>,
    /// `commit_index - matched_index` (leader only).
    pub lag: Option<u64>,
    /// Renewed its lease within the TTL as this node saw it (for the
    /// answering node itself: `Store::is_healthy`).
    pub healthy: bool,
    /// Since this node applied that node's last lease renewal (`None`:
    /// not since this node started).
    pub last_lease_age_ms: Option<u64>,
    /// Client sessions the routing table places on that node (this
    /// node's replica).
    pub sessions: u64,
}

pub fn local(leases: &Leases) -> ClusterStatus {
    let shared = &leases.shared;
    let m = shared.raft.metrics().borrow().clone();
    let commit_index = shared.committed.load(std::sync::atomic::Ordering::Relaxed);
    let leading = m.current_leader == Some(shared.node_id);
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let ttl = Duration::from_millis(leases.cfg.ttl_ms);
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched = if !leading {
                None
            } else if *id == shared.node_id {
                m.last_log_index
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|l| l.map_or(0, |l| l.index))
            };
            let age = leases.hooks.last_renewal(*id).map(|t| t.elapsed());
            let healthy = if *id == shared.node_id {
                lease::check_health(leases)
            } else if leases.cfg.renew_ms == 0 {
                true
            } else {
                age.is_some_and(|a| a < ttl)
            };
            // Routes each node published in the registry (none without one).
            let sessions = leases
                .registry
                .active()
                .and_then(|g| g.tree(crate::routes::NODE_ROUTES).ok())
                .and_then(|t| t.count_prefix(&id.to_be_bytes()).ok())
                .unwrap_or(0);
            MemberStatus {
                sessions,
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched,
                lag: matched.map(|x| commit_index.saturating_sub(x)),
                healthy,
                last_lease_age_ms: age.map(|a| a.as_millis() as u64),
            }
        })
        .collect();
    ClusterStatus {
        node_id: shared.node_id,
        leader_id: m.current_leader,
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map_or(0, |l| l.index),
        members,
    }
}

impl From<ClusterStatus> for pb::StatusReply {
    fn from(s: ClusterStatus) -> Self {
        pb::StatusReply {
            leader_id: s.leader_id.unwrap_or(0),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            members: s
                .members
                .into_iter()
                .map(|m| pb::NodeStatus {
                    node_id: m.node_id,
                    addr: m.addr,
                    matched_index: m.matched_index.unwrap_or(0),
                    sessions: m.sessions,
                    voter: m.voter,
                    matched: m.matched_index,
                    lag: m.lag,
                    healthy: m.healthy,
                    last_lease_age_ms: m.last_lease_age_ms,
                })
                .collect(),
            node_id: s.node_id,
        }
    }
}

impl From<pb::StatusReply> for ClusterStatus {
    fn from(r: pb::StatusReply) -> Self {
        ClusterStatus {
            node_id: r.node_id,
            leader_id: (r.leader_id != 0).then_some(r.leader_id),
            term: r.term,
            commit_index: r.commit_index,
            applied_index: r.applied_index,
            members: r
                .members
                .into_iter()
                .map(|m| MemberStatus {
                    sessions: m.sessions,
                    node_id: m.node_id,
                    addr: m.addr,
                    voter: m.voter,
                    matched_index: m.matched,
                    lag: m.lag,
                    healthy: m.healthy,
                    last_lease_age_ms: m.last_lease_age_ms,
                })
                .collect(),
        }
    }
}
impl Store {
    /// This node's view of the cluster (replication state on the leader
    /// only). Also served as `Admin.Status`; see [`query_status`].
    pub fn status(&self) -> ClusterStatus {
        local(&self.inner.leases)
    }

    /// The current leader's node id, as far as this node knows.
    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this node can commit: its last lease renewal committed
    /// within the lease TTL (with leases off: a leader is known). A node
    /// on the minority side of a partition turns unhealthy within the TTL;
    /// the node should then refuse logins.
    pub fn is_healthy(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && lease::check_health(&self.inner.leases)
    }
}

/// Asks the node whose cluster gRPC is at `addr` for its view of the
/// cluster (`starling cluster status --addr`). With the cluster's TLS
/// files when it uses mutual TLS (a node certificate of the cluster CA).
pub async fn query_status(
    addr: &str,
    tls: Option<&ClusterTls>,
) -> Result<ClusterStatus, StoreError> {
    let transport = Transport::new(tls, None)?;
    Ok(raft::admin_client::status(&transport, addr).await?.into())
}
