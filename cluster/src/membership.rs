//! Who is in the cluster, through a `Store`: adding and removing members
//! (on the leader), joining through any member, leaving, removing a dead
//! node, whether this node votes or has peers, and registering the node's
//! `ClusterEvents`.
//!
//! The membership changes only through Raft (`raft::admin` on the leader,
//! `raft::admin_client` to reach it). Must not end the node's sessions: the
//! node does that when `ClusterEvents` tells it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::StoreError;
use crate::events::ClusterEvents;
use crate::handle::{START_TIMEOUT, Store};
use crate::lease;
use crate::raft;

impl Store {
    /// Adds a node to the cluster as a voter: first as a learner that
    /// catches up over gRPC, then into the voting membership. Call it on
    /// the leader; the new node must already serve gRPC on `raft_addr`.
    pub async fn add_member(&self, node_id: u64, raft_addr: &str) -> Result<(), StoreError> {
        raft::admin::add_member(&self.inner.raft, node_id, raft_addr).await
    }

    /// Removes a node from the cluster. Call it on the leader.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), StoreError> {
        raft::admin::remove_member(&self.inner.raft, node_id).await
    }

    /// Joins the cluster that the member at `seed_addr` (any member; a
    /// follower forwards to the leader) belongs to: this node is added as
    /// a learner, catches up, and becomes a voter before this returns.
    /// Open the store with `open_joining[_with]` and serve gRPC first (the
    /// leader must reach this node at its `raft_addr`).
    pub async fn join(&self, seed_addr: &str) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        raft::admin_client::join(&s.transport, seed_addr, s.node_id, &s.raft_addr).await?;
        // Learn the new membership before returning.
        self.inner
            .raft
            .wait(Some(START_TIMEOUT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == s.node_id)
                },
                "joined as a voter",
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // The membership is known once appended; reads should also see
        // everything committed before the join returned.
        self.read_barrier().await
    }

    /// Leaves the cluster for good: expires this node (its routes go and
    /// every node's `ClusterEvents::node_expired` runs), has the leader
    /// remove it from the membership, then shuts down. End local sessions
    /// first.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        let (leader, members) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let members: Vec<(u64, String)> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (m.current_leader, members)
        };
        if members.iter().all(|(id, _)| *id == s.node_id) {
            return Err(StoreError::Unavailable(
                "the only member cannot leave its cluster".into(),
            ));
        }
        let leaving = &self.inner.leases.leaving;
        leaving.store(true, Ordering::SeqCst);
        if let Err(e) = lease::expire(
            &self.inner.registry,
            &self.inner.writes,
            s.node_id,
            s.write_timeout,
        )
        .await
        {
            leaving.store(false, Ordering::SeqCst);
            return Err(e);
        }
        if leader == Some(s.node_id) {
            raft::admin::remove_member(&self.inner.raft, s.node_id).await?;
        } else {
            // Through any other member: a follower forwards to the leader.
            let mut last = StoreError::Unavailable("no other member".into());
            let mut done = false;
            let order = members
                .iter()
                .filter(|(id, _)| *id != s.node_id)
                .map(|(id, a)| (Some(*id) != leader, a));
            let mut order: Vec<_> = order.collect();
            order.sort();
            for (_, addr) in order {
                match raft::admin_client::leave(&s.transport, addr, s.node_id).await {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            if !done {
                return Err(last);
            }
        }
        self.shutdown().await
    }

    /// Removes another member that is gone for good (its machine or disk
    /// was lost) from the membership: its routes are dropped (contacts
    /// are told, as on expiry) and the leader removes it. A node that can
    /// still run should `leave` instead.
    pub async fn remove_node(&self, node_id: u64) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        if node_id == s.node_id {
            return Err(StoreError::Unavailable(
                "a node removes itself with leave".into(),
            ));
        }
        let (leader, leader_addr) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let addr = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l))
                .map(|n| n.addr.clone());
            (m.current_leader, addr)
        };
        lease::expire(
            &self.inner.registry,
            &self.inner.writes,
            node_id,
            s.write_timeout,
        )
        .await?;
        match (leader, leader_addr) {
            (Some(l), _) if l == s.node_id => {
                raft::admin::remove_member(&self.inner.raft, node_id).await
            }
            (_, Some(addr)) => raft::admin_client::leave(&s.transport, &addr, node_id).await,
            _ => Err(StoreError::Unavailable("no leader known".into())),
        }
    }

    /// Whether this node is a voting member of the cluster it knows (false
    /// for a fresh joining node, or one whose join never completed, or one
    /// that left). Right after `open` the Raft core may not have reported
    /// the stored membership yet: this waits up to `within` for it.
    pub async fn is_voter(&self, within: Duration) -> bool {
        let me = self.inner.shared.node_id;
        self.inner
            .raft
            .wait(Some(within))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|id| id == me)
                },
                "this node among the voters",
            )
            .await
            .is_ok()
    }

    /// Whether the cluster has members besides this node (from the latest
    /// membership this node knows): only then can a user have sessions
    /// elsewhere.
    pub fn has_peers(&self) -> bool {
        self.inner.shared.has_peers()
    }

    /// Registers the node's handler of cluster events (node expiry),
    /// replacing any earlier one. Register it right after `open`.
    pub fn set_cluster_events(&self, handler: Arc<dyn ClusterEvents>) {
        *self
            .inner
            .leases
            .events
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(handler.clone());
        // A registry epoch joined before the handler was there (while the
        // node joined the cluster): its reset was not heard; run it now.
        if let Some(epoch) = self.inner.registry.unpublished_epoch() {
            self.inner
                .shared
                .rt
                .spawn(async move { handler.registry_reset(epoch) });
        }
    }
}
