//! What a node reports of itself (`Admin.Status`, and `Raft.Status` between nodes), assembled
//! in one place from openraft's metrics and this node's own counters.

use super::{Core, Role};
use raftsql_proto::v1 as pb;
use std::collections::BTreeSet;

impl Role {
    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Leader => pb::Role::Leader,
            Role::Follower => pb::Role::Follower,
            Role::Candidate => pb::Role::Candidate,
            Role::Learner => pb::Role::Learner,
            Role::Shutdown => pb::Role::Shutdown,
        }
    }
}

impl Core {
    /// This node's status as the protocol reports it (`Admin.Status`, `Raft.Status`): role, term,
    /// leader, indexes, members, followers' progress, counters. `auth_failures` is left 0: the
    /// service layer, which authenticates, fills it in.
    pub fn status(&self) -> pb::StatusResponse {
        let m = self.metrics();
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
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| pb::FollowerProgress {
                        id: *id,
                        matched_index: matched.map_or(0, |l| l.index),
                        has_matched: matched.is_some(),
                        lag: last_log.saturating_sub(matched.map_or(0, |l| l.index)),
                        lag_millis: self.append_times.lag_millis(matched.map_or(0, |l| l.index), last_log),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let applied = m.last_applied.map_or(0, |l| l.index);
        pb::StatusResponse {
            node_id: self.id,
            addr: self.addr.clone(),
            incarnation: self.sm.incarnation(),
            role: Role::from(m.state).to_pb() as i32,
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr: m
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
            last_log_index: last_log,
            // openraft 0.9's metrics do not publish the commit index; the log store is told it.
            committed_index: self.committed.get().max(applied),
            applied_index: applied,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            cluster_id: self.sm.cluster_id().ok().flatten().unwrap_or_default(),
            watchdog_stalls: crate::watchdog::stalls(),
            auth_failures: 0,
            tls_handshake_failures: crate::tls::handshake_failures(),
            read_index_reads: self.read_index.reads(),
            read_index_rounds: self.read_index.rounds(),
            read_lease_rounds: self.read_index.leased(),
            stalled: crate::watchdog::stalled(),
            members,
            followers,
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
            peer_addr: self.peer_addr.clone(),
        }
    }
}
