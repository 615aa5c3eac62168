//! Membership policy, as the leader carries it out (design.md §6): who may join and how (the
//! addresses must be addresses, the node answering there must be the one asking, one cluster
//! per node, a lost data dir cannot rejoin as itself), when a learner becomes a voter (once it
//! holds the whole log), and which removals are refused (the last voter; a voter whose removal
//! would leave the cluster unable to commit, unless forced).
//!
//! `service::admin` and `service::peer` translate the gRPC calls into these and forward them to
//! the leader (`service::forward`).
//!
//! Membership changes run on the leader; any other member forwards them there (once: a
//! forwarded request that meets a non-leader is answered `NOT_LEADER`, never forwarded again).
//! - Join: add the node as a learner, wait until it has caught up, then promote it to voter
//!   (unless it asked to stay a learner).
//! - Remove: a voter leaves through openraft's two-step change (joint config, then the new
//!   config) with `retain = false`, so it does not stay behind as a learner; a learner just
//!   leaves the node list. Removing the leader works: it keeps leading until the config without
//!   it has committed and applied, then steps down, and the remaining voters elect a new leader
//!   after their election timeout (`.transfer` first avoids that pause). The last voter is never
//!   removed.
//!
//! A removed node is not told, and its process keeps running outside the cluster. A removed
//! follower usually misses the final config (the leader stops replicating to it as soon as that
//! config is appended), so it still counts itself a voter and calls elections in rising terms;
//! the members refuse them (their logs are longer) and keep their leader, but its own status
//! stays misleading. The operator stops it and must not restart it on the same data dir: it
//! would still believe it is a member. To bring the machine back, wipe its data dir and join it
//! under a new id.

use super::{Core, Error};
use crate::typ::{Incarnation, Member, NodeId};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
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
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removal waits for the remaining voters to answer before it counts them down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Membership changes as the leader carries them out, for both services that ask for them
/// (Admin from clients, Raft from joining nodes). The services forward a change to the leader
/// first ([`Core::is_leader`]); these refuse it with `NotLeader` if leadership moved meanwhile.
pub struct Members<'a> {
    pub core: &'a Arc<Core>,
}

impl Members<'_> {
    /// Adds the node as a learner, waits until it holds the leader's log, then makes it a
    /// voter unless it asked to stay a learner.
    pub async fn join_on_leader(&self, mut req: pb::JoinRequest) -> Result<(), Error> {
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

    /// Removes node `id` at its own request: only the incarnation the membership records for it
    /// may ask (a node whose data dir was replaced is someone else), and never by force.
    pub async fn leave_on_leader(&self, id: NodeId, incarnation: u64) -> Result<(), Error> {
        let m = self.core.metrics();
        let recorded = m.membership_config.membership().get_node(&id).map(|n| n.incarnation);
        match recorded {
            None => Err(Error::NotFound(format!("node {id} is not a member of this cluster (it may have left already)"))),
            Some(r) if r != incarnation => Err(Error::InvalidArgument(format!(
                "node {id} asks to leave as incarnation {}, but the member is incarnation {}: only the member \
                 itself may ask",
                Incarnation(incarnation),
                Incarnation(r)
            ))),
            Some(_) => {
                info!(node = id, "the node asks to leave the cluster (its StatefulSet was scaled down)");
                self.remove_on_leader(id, false).await
            }
        }
    }

    /// Removes a member; a voter only if the voters left could commit, unless `force`.
    pub async fn remove_on_leader(&self, id: NodeId, force: bool) -> Result<(), Error> {
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
