//! The `Admin` service: status (like Redis `INFO replication`), join, remove, snapshot,
//! leadership transfer and backup. It translates between gRPC and the raft layer: the status
//! comes from `Core::status`, membership policy lives in `raft::membership`, and a change asked
//! of a node that does not lead is passed on to the leader by `service::forward`.

use super::auth::{Auth, Permission};
use super::{forward, forwarded, status_from, FORWARDED};
use crate::raft::membership::{Members, REMOVE_TIMEOUT};
use crate::raft::{Core, Error};
use raftsql_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

pub struct AdminService {
    pub core: Arc<Core>,
    pub auth: Arc<Auth>,
    /// One backup at a time on this node ([`super::backup`]).
    pub backups: Arc<tokio::sync::Semaphore>,
}

impl AdminService {
    pub fn new(core: Arc<Core>, auth: Arc<Auth>) -> Self {
        AdminService { core, auth, backups: Arc::new(tokio::sync::Semaphore::new(1)) }
    }
}

/// This node's status as the protocol reports it: the raft layer's report, with the
/// authentication failures only this layer counts.
pub fn status(core: &Core) -> pb::StatusResponse {
    pb::StatusResponse { auth_failures: super::auth::total_failures(), ..core.status() }
}

/// A node's request to leave (`Raft.Leave`), from the node itself: forwarded to the leader by
/// a node that does not lead, carried out there by [`Members::leave_on_leader`].
pub async fn leave(
    core: &Arc<Core>,
    req: pb::LeaveRequest,
    was_forwarded: bool,
) -> Result<tonic::Response<pb::RemoveResponse>, tonic::Status> {
    if req.node_id == 0 {
        return Err(super::invalid("node ids start at 1"));
    }
    if !core.is_leader() {
        let addr = forward::leader_target(core, was_forwarded)?;
        let mut request = forwarded(req, &tonic::metadata::MetadataMap::new(), None);
        request.set_timeout(REMOVE_TIMEOUT + Duration::from_secs(5));
        return forward::client(core, &addr)?.leave(request).await.map_err(|s| forward::failed(&addr, s));
    }
    Members { core }.leave_on_leader(req.node_id, req.incarnation).await.map_err(status_from)?;
    Ok(tonic::Response::new(pb::RemoveResponse { leader: Some(status(core)) }))
}

/// A join, as both services take it: any member accepts it and forwards it to the leader over
/// the peer service (a joining node holds no client credentials).
pub(super) async fn join(
    core: &Arc<Core>,
    req: pb::JoinRequest,
    was_forwarded: bool,
) -> Result<tonic::Response<pb::JoinResponse>, tonic::Status> {
    if req.node_id == 0 {
        return Err(super::invalid("node ids start at 1"));
    }
    if req.addr.is_empty() {
        return Err(super::invalid("the joining node's address is empty"));
    }
    if !core.is_leader() {
        let addr = forward::leader_target(core, was_forwarded)?;
        let request = forwarded(req, &tonic::metadata::MetadataMap::new(), None);
        return forward::client(core, &addr)?.join(request).await.map_err(|s| forward::failed(&addr, s));
    }
    Members { core }.join_on_leader(req).await.map_err(status_from)?;
    Ok(tonic::Response::new(pb::JoinResponse { leader: Some(status(core)) }))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::AdminStatus, "read the node status")?;
        Ok(tonic::Response::new(status(&self.core)))
    }

    async fn join(
        &self,
        request: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::AdminMembership, "add members")?;
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        join(&self.core, request.into_inner(), was_forwarded).await
    }

    async fn remove(
        &self,
        request: tonic::Request<pb::RemoveRequest>,
    ) -> Result<tonic::Response<pb::RemoveResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::AdminMembership, "remove members")?;
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let (metadata, _, req) = request.into_parts();
        if req.node_id == 0 {
            return Err(super::invalid("node ids start at 1: there is no node 0 to remove"));
        }
        if !self.core.is_leader() {
            // Forward to the leader, so any member accepts a removal.
            let addr = forward::leader_target(&self.core, was_forwarded)?;
            let mut request = forwarded(req, &metadata, Some(&caller));
            request.set_timeout(REMOVE_TIMEOUT + Duration::from_secs(5));
            return forward::client(&self.core, &addr)?
                .forward_remove(request)
                .await
                .map_err(|s| forward::failed(&addr, s));
        }
        Members { core: &self.core }.remove_on_leader(req.node_id, req.force).await.map_err(status_from)?;
        Ok(tonic::Response::new(pb::RemoveResponse { leader: Some(status(&self.core)) }))
    }

    async fn snapshot(
        &self,
        request: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<pb::SnapshotResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::Backup, "build snapshots")?;
        let snapshot_index = self.core.snapshot_now(Duration::from_secs(60)).await.map_err(status_from)?;
        Ok(tonic::Response::new(pb::SnapshotResponse { snapshot_index }))
    }

    async fn transfer_leader(
        &self,
        request: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::AdminMembership, "move leadership")?;
        let target = (request.get_ref().target != 0).then_some(request.get_ref().target);
        let (leader_id, term) =
            crate::raft::handoff::transfer(&self.core, target, TRANSFER_BUDGET).await.map_err(status_from)?;
        Ok(tonic::Response::new(pb::TransferLeaderResponse { leader_id, term }))
    }

    type BackupStream = super::backup::BackupStream;

    async fn backup(
        &self,
        request: tonic::Request<pb::BackupRequest>,
    ) -> Result<tonic::Response<Self::BackupStream>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::Backup, "take backups")?;
        let slot = self.backups.clone().try_acquire_owned().map_err(|_| {
            status_from(Error::Overloaded(
                "a backup is already running on this node: wait for it to finish, or back up from another node"
                    .into(),
            ))
        })?;
        super::backup::start(&self.core, slot).await.map(tonic::Response::new)
    }
}

/// How long Admin.TransferLeader may take before the leader gives up and goes on leading.
const TRANSFER_BUDGET: Duration = Duration::from_secs(5);
