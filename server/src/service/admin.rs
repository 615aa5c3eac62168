//! The `Admin` service: status (like Redis `INFO replication`), join, remove, snapshot.
//!
//! Membership changes run on the leader; any other member forwards them there (once: a
//! forwarded request that meets a non-leader is answered `NOT_LEADER`, never forwarded again).
//! - Join: add the node as a learner, wait until it has caught up, then promote it to voter
//!   (unless it asked to stay a learner).
//! - Remove: a voter leaves through openraft's two-step change (joint config, then the new
//!   config) with `retain = false`, so it does not stay behind as a learner; a learner just
//!   leaves the node list. Removing the leader works: it keeps leading until the config without
//!   it has committed and applied, then steps down, and the remaining voters elect a new leader
//!   after their election timeout (openraft 0.9 has no leadership transfer). The last voter is
//!   never removed.
//!
//! A removed node is not told, and its process keeps running outside the cluster. A removed
//! follower usually misses the final config (the leader stops replicating to it as soon as that
//! config is appended), so it still counts itself a voter and calls elections in rising terms;
//! the members refuse them (their logs are longer) and keep their leader, but its own status
//! stays misleading. The operator stops it and must not restart it on the same data dir: it
//! would still believe it is a member. To bring the machine back, wipe its data dir and join it
//! under a new id.

use super::auth::{Auth, Permission};
use super::{forwarded, role_to_pb, status_from, FORWARDED};
use crate::raft::{Core, Error};
use crate::typ::{Incarnation, Member, NodeId};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use raftsql_proto::v1 as pb;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// How long a join may take: the new node must catch up by snapshot and log first.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the leader waits for a joining node to answer its status call.
const JOINER_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// `HOST:PORT`, as a member's address must be: a host name or IP (IPv6 in brackets) and a port
/// from 1 to 65535.
fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("it is not HOST:PORT")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{port:?} is not a port (1 to 65535)")),
    }
    let ok_host = if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        ip.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    if !ok_host {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(())
}

/// How long a removal may take to commit (two membership entries on a live quorum).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removal waits for the remaining voters to answer before it counts them down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// This node's status as the protocol reports it.
pub fn status(core: &Core) -> pb::StatusResponse {
    let m = core.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| pb::Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            incarnation: node.incarnation,
            peer_addr: node.peer_addr.clone(),
        })
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
        incarnation: core.sm.incarnation(),
        role: role_to_pb(m.state.into()) as i32,
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        leader_addr: m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
        last_log_index: last_log,
        // openraft 0.9's metrics do not publish the commit index; the log store is told it.
        committed_index: core.committed.get().max(applied),
        applied_index: applied,
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        cluster_id: core.sm.cluster_id().ok().flatten().unwrap_or_default(),
        watchdog_stalls: crate::watchdog::stalls(),
        auth_failures: super::auth::total_failures(),
        tls_handshake_failures: crate::tls::handshake_failures(),
        read_index_reads: core.read_index.reads(),
        read_index_rounds: core.read_index.rounds(),
        stalled: crate::watchdog::stalled(),
        members,
        followers,
        millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
        peer_addr: core.peer_addr.clone(),
    }
}

/// Membership changes as the leader carries them out, for both services that ask for them
/// (Admin from clients, Raft from joining nodes).
struct Members<'a> {
    core: &'a Arc<Core>,
}

impl Members<'_> {
    async fn join_on_leader(&self, mut req: pb::JoinRequest) -> Result<(), Error> {
        if req.peer_addr.is_empty() {
            req.peer_addr = req.addr.clone(); // a single-port node
        }
        let m = self.core.metrics();
        let membership = m.membership_config.membership().clone();
        if req.incarnation == 0 {
            return Err(Error::InvalidArgument(format!(
                "node {} sent no incarnation id: it runs an older raftsql; upgrade it before it joins",
                req.node_id
            )));
        }
        if let Some(existing) = membership.get_node(&req.node_id) {
            if existing.addr != req.addr || existing.peer_addr != req.peer_addr {
                return Err(Error::InvalidArgument(format!(
                    "node {} is already a member at {} (peers: {}); a different node needs a new id",
                    req.node_id, existing.addr, existing.peer_addr
                )));
            }
            if existing.incarnation != req.incarnation {
                // etcd refuses a member with a lost data dir the same way: its empty log must
                // never be counted as the log it had.
                return Err(Error::InvalidArgument(format!(
                    "node {} is already a member with another data dir (incarnation {}; this one is \
                     {}): it lost its data and cannot rejoin as itself. Remove it (`.remove {}`) and \
                     join under a new --id",
                    req.node_id,
                    Incarnation(existing.incarnation),
                    Incarnation(req.incarnation),
                    req.node_id
                )));
            }
        }
        self.check_joiner(&req).await?;
        let is_voter = membership.voter_ids().any(|v| v == req.node_id);
        if !is_voter {
            info!(node = req.node_id, addr = %req.addr, peer_addr = %req.peer_addr, "adding learner; waiting for it to catch up");
            let member = Member::with_peer(req.addr.clone(), req.peer_addr.clone(), req.incarnation);
            let add = self.core.raft.add_learner(req.node_id, member, true);
            match tokio::time::timeout(JOIN_TIMEOUT, add).await {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "node {} did not catch up within {JOIN_TIMEOUT:?}",
                        req.node_id
                    )))
                }
                Ok(Err(e)) => return Err(join_error(self.core, e)),
                Ok(Ok(_)) => {}
            }
            // openraft's add_learner counts a learner as caught up once it lags by fewer than
            // `replication_lag_threshold` entries (5,000); an entry here holds up to 8 MiB, so a
            // node 600 MB behind was made a voter 25 ms after it started, and the quorum then
            // counted a member that could not acknowledge anything for 20 s. A learner is
            // promoted only once it holds every entry the leader held when it was added.
            let target = self.core.metrics().last_log_index.unwrap_or(0);
            let (id, me) = (req.node_id, self.core.id);
            let caught_up = self
                .core
                .raft
                .wait(Some(JOIN_TIMEOUT))
                .metrics(
                    |m| {
                        m.current_leader != Some(me)
                            || m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id))
                                .is_some_and(|matched| matched.is_some_and(|l| l.index >= target))
                    },
                    "learner caught up",
                )
                .await;
            match caught_up {
                Ok(m) if m.current_leader == Some(me) => {}
                Ok(_) => return Err(self.core.not_leader()),
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "node {id} did not receive the log up to index {target} within {JOIN_TIMEOUT:?}; it \
                         stays a learner, and joining again resumes the wait"
                    )))
                }
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
                    Ok(Err(e)) => return Err(join_error(self.core, e)),
                    Ok(Ok(_)) => {}
                }
            }
        }
        Ok(())
    }
}

impl Members<'_> {
    /// Before a node enters the membership, its addresses must be addresses and the node that
    /// answers at its peer address must be the one asking: a typo, a dead address or another
    /// node's address would otherwise stay in the membership, and the leader would replicate to
    /// it forever.
    async fn check_joiner(&self, req: &pb::JoinRequest) -> Result<(), Error> {
        for a in [&req.addr, &req.peer_addr] {
            check_addr(a).map_err(|e| {
                Error::InvalidArgument(format!("node {} asks to join at {a:?}: {e}", req.node_id))
            })?;
        }
        // Unreachable now may be reachable later (a partition, a slow start): the joiner retries.
        // With peer TLS the node answering must hold a certificate naming the id it asks for, so
        // not even an admin (Admin.Join) can add a node id nobody holds a certificate for.
        let s = self.core.status_of(&req.peer_addr, JOINER_STATUS_TIMEOUT, Some(req.node_id)).await.map_err(
            |e| {
                Error::Unavailable(format!(
                    "node {} asks to join at {}, but {e}: a joining node must be running and reachable \
                 at the address it gives",
                    req.node_id, req.peer_addr
                ))
            },
        )?;
        if s.node_id != req.node_id || s.incarnation != req.incarnation {
            return Err(Error::InvalidArgument(format!(
                "node {} (incarnation {}) asks to join at {}, but node {} (incarnation {}) answers \
                 there: check the joining node's --advertise and --peer-advertise addresses",
                req.node_id,
                Incarnation(req.incarnation),
                req.peer_addr,
                s.node_id,
                Incarnation(s.incarnation)
            )));
        }
        let ours = self.core.sm.cluster_id().map_err(|e| Error::Unavailable(e.to_string()))?;
        if !s.cluster_id.is_empty() && ours.as_deref().is_some_and(|c| c != s.cluster_id) {
            return Err(Error::InvalidArgument(format!(
                "node {} at {} belongs to cluster {}, not to this one: a node joins one cluster only",
                req.node_id, req.addr, s.cluster_id
            )));
        }
        Ok(())
    }

    async fn remove_on_leader(&self, id: NodeId, force: bool) -> Result<(), Error> {
        let m = self.core.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            let members: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
            return Err(Error::NotFound(format!(
                "node {id} is not a member of this cluster (members: {}); it may have been removed already",
                members.join(", ")
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_voter = voters.contains(&id);
        if is_voter && voters.len() == 1 {
            return Err(last_voter(id));
        }
        if is_voter && !force {
            // The change commits only with a majority of the old and of the new voters, and
            // nothing commits after it without a majority of the new ones: refuse a removal
            // that would leave the cluster unable to commit (etcd and rqlite guard this too).
            let remaining: Vec<(NodeId, String)> = membership
                .nodes()
                .filter(|(v, _)| voters.contains(v) && **v != id)
                .map(|(v, n)| (*v, n.peer_addr.clone()))
                .collect();
            let up = self.core.answering(&remaining, PROBE_TIMEOUT).await;
            let need = remaining.len() / 2 + 1;
            if up.len() < need {
                let down: Vec<String> =
                    remaining.iter().filter(|(v, _)| !up.contains(v)).map(|(v, _)| v.to_string()).collect();
                return Err(Error::Precondition(format!(
                    "removing node {id} would leave {} voters of which only {} answer now (node {} did \
                     not): the cluster could commit neither the removal nor anything after it. Bring \
                     them back first, remove an unreachable node instead, or repeat with --force",
                    remaining.len(),
                    up.len(),
                    down.join(", node ")
                )));
            }
        }
        let change = match is_voter {
            true => ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            false => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        };
        info!(node = id, voter = is_voter, leader_removed = id == self.core.id, "removing member");
        match tokio::time::timeout(REMOVE_TIMEOUT, self.core.raft.change_membership(change, false)).await {
            Err(_) => Err(Error::Timeout(format!(
                "removing node {id} did not commit within {REMOVE_TIMEOUT:?} (is a quorum of the \
                 remaining voters up?); the change may still complete: check the members in the status"
            ))),
            Ok(Err(e)) => Err(remove_error(self.core, id, e)),
            Ok(Ok(_)) => {
                info!(
                    node = id,
                    "member removed; stop its process and do not restart it on the same data dir"
                );
                Ok(())
            }
        }
    }
}

fn last_voter(id: NodeId) -> Error {
    Error::InvalidArgument(format!(
        "node {id} is the only voter, and a cluster cannot remove its last voter: join another node first"
    ))
}

fn join_error(core: &Core, e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match e.forward_to_leader() {
        Some(_) => core.not_leader(),
        None => Error::Unavailable(format!("membership change failed: {e}")),
    }
}

fn remove_error(core: &Core, id: NodeId, e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match e.api_error() {
        Some(ClientWriteError::ForwardToLeader(_)) => core.not_leader(),
        Some(ClientWriteError::ChangeMembershipError(ChangeMembershipError::EmptyMembership(_))) => {
            last_voter(id)
        }
        Some(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            Error::Unavailable(format!("another membership change is still committing ({p}); retry shortly"))
        }
        _ => Error::Unavailable(format!("removing node {id} failed: {e}; retry")),
    }
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
    if core.metrics().current_leader != Some(core.id) {
        let addr = forward_target(core, was_forwarded)?;
        let channel = core.peer_channel(&addr).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = pb::raft_client::RaftClient::new(channel);
        let request = forwarded(req, &tonic::metadata::MetadataMap::new(), None);
        return client.join(request).await.map_err(|s| forward_failed(&addr, s));
    }
    Members { core }.join_on_leader(req).await.map_err(status_from)?;
    Ok(tonic::Response::new(pb::JoinResponse { leader: Some(status(core)) }))
}

/// What a forwarding node answers when the leader's answer did not come back: a raftsql error
/// from the leader passes through unchanged; a transport failure (leader gone, or this node
/// cannot connect, e.g. a `--peer-source-addr` it cannot bind) becomes UNAVAILABLE naming the
/// leader and the cause, so the client retries elsewhere.
fn forward_failed(addr: &str, s: tonic::Status) -> tonic::Status {
    if !s.details().is_empty() {
        return s;
    }
    let cause = crate::raft::network::status_text(&s);
    status_from(Error::Unavailable(format!("cannot forward to the leader at {addr}: {cause}")))
}

/// The leader's peer address, to forward a membership change to over the peer service; Err is
/// the answer to give instead (no leader known, this node is a stale leader, or the request was
/// forwarded once already).
fn forward_target(core: &Core, forwarded: bool) -> Result<String, tonic::Status> {
    match core.not_leader() {
        Error::NotLeader { leader_id: Some(l), leader_addr: Some(addr), .. }
            if l != core.id && !forwarded =>
        {
            Ok(core.peer_addr_of(l).unwrap_or(addr))
        }
        e => Err(status_from(e)),
    }
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
        // The server state, not `current_leader`: a leader that removed itself keeps its vote
        // (and so names itself leader) after it stepped down.
        if self.core.metrics().state != ServerState::Leader {
            // Forward to the leader, so any member accepts a removal.
            let addr = forward_target(&self.core, was_forwarded)?;
            let channel =
                self.core.peer_channel(&addr).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = pb::raft_client::RaftClient::new(channel);
            let mut request = forwarded(req, &metadata, Some(&caller));
            request.set_timeout(REMOVE_TIMEOUT + Duration::from_secs(5));
            return client.forward_remove(request).await.map_err(|s| forward_failed(&addr, s));
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
