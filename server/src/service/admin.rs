//! The `Admin` service: status (like Redis `INFO replication`), join, snapshot.

use super::{role_to_pb, status_from};
use crate::raft::{Core, Error};
use openraft::{BasicNode, ChangeMembers};
use raftsql_proto::v1 as pb;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// How long a join may take: the new node must catch up by snapshot and log first.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct AdminService {
    pub core: Arc<Core>,
}

/// This node's status as the protocol reports it.
pub fn status(core: &Core) -> pb::StatusResponse {
    let m = core.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| pb::Member { id: *id, addr: node.addr.clone(), voter: voters.contains(id) })
        .collect();
    let last_log = m.last_log_index.unwrap_or(0);
    let followers = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != core.id)
                .map(|(id, matched)| pb::FollowerProgress {
                    id: *id,
                    matched_index: matched.map_or(0, |l| l.index),
                    has_matched: matched.is_some(),
                    lag: last_log.saturating_sub(matched.map_or(0, |l| l.index)),
                    lag_millis: core.append_times.lag_millis(matched.map_or(0, |l| l.index), last_log),
                })
                .collect()
        })
        .unwrap_or_default();
    let applied = m.last_applied.map_or(0, |l| l.index);
    pb::StatusResponse {
        node_id: core.id,
        addr: core.addr.clone(),
        role: role_to_pb(m.state.into()) as i32,
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        leader_addr: m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
        last_log_index: last_log,
        // openraft 0.9 does not publish the commit index; everything applied is committed.
        committed_index: applied,
        applied_index: applied,
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        cluster_id: core.sm.cluster_id().ok().flatten().unwrap_or_default(),
        members,
        followers,
        millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
    }
}

impl AdminService {
    async fn join_on_leader(&self, req: pb::JoinRequest) -> Result<(), Error> {
        let m = self.core.metrics();
        let membership = m.membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&req.node_id) {
            if existing.addr != req.addr {
                return Err(Error::InvalidArgument(format!(
                    "node {} is already a member at {}; a different node needs a new id",
                    req.node_id, existing.addr
                )));
            }
        }
        let is_voter = membership.voter_ids().any(|v| v == req.node_id);
        if !is_voter {
            info!(node = req.node_id, addr = %req.addr, "adding learner; waiting for it to catch up");
            let add = self.core.raft.add_learner(req.node_id, BasicNode { addr: req.addr.clone() }, true);
            match tokio::time::timeout(JOIN_TIMEOUT, add).await {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "node {} did not catch up within {JOIN_TIMEOUT:?}",
                        req.node_id
                    )))
                }
                Ok(Err(e)) => return Err(join_error(&self.core, e)),
                Ok(Ok(_)) => {}
            }
            if !req.as_learner {
                info!(node = req.node_id, "promoting learner to voter");
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id]));
                match tokio::time::timeout(JOIN_TIMEOUT, self.core.raft.change_membership(change, false))
                    .await
                {
                    Err(_) => {
                        return Err(Error::Timeout(format!("promoting node {} did not commit", req.node_id)))
                    }
                    Ok(Err(e)) => return Err(join_error(&self.core, e)),
                    Ok(Ok(_)) => {}
                }
            }
        }
        Ok(())
    }
}

fn join_error(
    core: &Core,
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
) -> Error {
    match e.forward_to_leader() {
        Some(_) => core.not_leader(),
        None => Error::Unavailable(format!("membership change failed: {e}")),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(status(&self.core)))
    }

    async fn join(
        &self,
        request: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinResponse>, tonic::Status> {
        let req = request.into_inner();
        if req.node_id == 0 {
            return Err(super::invalid("node ids start at 1"));
        }
        if req.addr.is_empty() {
            return Err(super::invalid("the joining node's address is empty"));
        }
        let m = self.core.metrics();
        if m.current_leader != Some(self.core.id) {
            // Forward to the leader, so any member accepts a join.
            let Error::NotLeader { leader_addr: Some(addr), .. } = self.core.not_leader() else {
                return Err(status_from(self.core.not_leader()));
            };
            let channel = crate::raft::network::channel(&addr)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = pb::admin_client::AdminClient::new(channel);
            return client.join(req).await;
        }
        self.join_on_leader(req).await.map_err(status_from)?;
        Ok(tonic::Response::new(pb::JoinResponse { leader: Some(status(&self.core)) }))
    }

    async fn snapshot(
        &self,
        _request: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<pb::SnapshotResponse>, tonic::Status> {
        let applied = self.core.metrics().last_applied.map(|l| l.index);
        self.core.raft.trigger().snapshot().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let m = self
            .core
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
            .await
            .map_err(|e| status_from(Error::Timeout(format!("snapshot not built: {e}"))))?;
        Ok(tonic::Response::new(pb::SnapshotResponse { snapshot_index: m.snapshot.map_or(0, |l| l.index) }))
    }
}
