//! Checks on every peer message before openraft sees it (issue 16).
//!
//! openraft trusts its network: it assumes every AppendEntries, Vote and InstallSnapshot comes
//! from a member of the cluster and is well formed, and some malformed ones panic its core or
//! wedge it for good (a vote in term 2^64−1 moved every node to that term, and the next
//! election panicked on the term overflow, on every restart). Peer messages arrive on a port
//! clients can reach, so each one is checked here first, and refused with a reason the sender's
//! log shows:
//!
//! - **Addressing**: the envelope names the sender and the receiver; a message meant for
//!   another node id (a stale address after a node was replaced) or claiming to come from node 0
//!   or from this node itself is refused.
//! - **Incarnation**: the envelope names the incarnation (data-dir id, see
//!   [`crate::typ::Member`]) of the sender and the one the sender's membership records for the
//!   receiver. A message meant for another incarnation of this node is refused: this node lost
//!   its data and was started again, and must not vote or acknowledge entries as its old self
//!   (an empty log voting for a candidate that lacks acknowledged writes loses them). A message
//!   from a member whose incarnation differs from the one this node's membership records is
//!   refused for the same reason, seen from the other side. A sender this node's membership
//!   does not know yet (a node that joined while this one lagged) is not checked: its identity
//!   is checked by the members that admitted it.
//! - **Cluster**: once both sides know their cluster id (from the first leader's entry), they
//!   must agree: a node of another cluster at a reused address cannot talk to this one.
//! - **Consistency with the payload**: the vote in an AppendEntries or InstallSnapshot is the
//!   leader's and in a Vote request the candidate's: it must name the envelope's sender.
//! - **Terms**: a term may not run more than [`MAX_TERM_JUMP`] (2^40) past this node's own term,
//!   nor reach [`MAX_TERM`] (2^62), so `term + 1` can never overflow. Elections raise the term by
//!   one each: a node cut off for a year, calling an election every second, gains 2^25; only a
//!   forged term jumps 2^40. (The bound must stay far above any real gap: a node whose term ran
//!   ahead and that others refused could never rejoin.)
//! - **Shape**: entries must be consecutive, follow `prev_log_id`, and carry no term above the
//!   leader's; a snapshot's last log id may not carry a term above the leader's either.
//!
//! What this does not do: authenticate. Anyone who knows a cluster's id (session tokens carry
//! it) and its node ids can still write a well-formed message; that needs the peer port and the
//! peer certificates of the security issue (17).

use super::Core;
use crate::typ::{Entry, Incarnation, LogId, NodeId, StoredMembership, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

/// The furthest a peer message's term may run ahead of this node's current term.
pub const MAX_TERM_JUMP: u64 = 1 << 40;

/// No peer message may carry a term at or above this (2^62): at one election per millisecond a
/// real cluster takes 146 million years to get there, and `term + 1` stays far from overflow.
pub const MAX_TERM: u64 = 1 << 62;

/// Who sent a peer message, to whom, in which cluster (the `RaftMessage` envelope).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
    pub from_incarnation: u64,
    pub to_incarnation: u64,
}

/// Why a peer message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer message refused by node {me}: {reason}")]
pub struct Refused {
    pub me: NodeId,
    pub reason: String,
}

/// What a node knows about itself when it checks a message.
#[derive(Clone, Debug)]
pub struct Local {
    pub id: NodeId,
    pub incarnation: u64,
    pub cluster_id: Option<String>,
    pub term: u64,
    /// The membership this node goes by now (the effective one, committed or not), shared
    /// with openraft's metrics rather than copied per message.
    pub membership: std::sync::Arc<StoredMembership>,
}

impl Local {
    pub fn of(core: &Core) -> Local {
        let cluster_id = core.sm.cluster_id().ok().flatten();
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        Local {
            id: core.id,
            incarnation: core.sm.incarnation(),
            cluster_id,
            term: m.current_term,
            membership: m.membership_config.clone(),
        }
    }

    fn refuse(&self, reason: String) -> Refused {
        Refused { me: self.id, reason }
    }

    fn envelope(&self, env: &Envelope, sender_vote: &Vote, what: &str) -> Result<(), Refused> {
        if env.to != self.id {
            return Err(self.refuse(format!(
                "it is addressed to node {}, this is node {}: a peer address points at the wrong node",
                env.to, self.id
            )));
        }
        if env.from == 0 || env.from == self.id {
            return Err(self.refuse(format!("it claims to come from node {}", env.from)));
        }
        if env.to_incarnation != self.incarnation {
            return Err(self.refuse(format!(
                "it is meant for incarnation {} of node {}, and this node's data dir is incarnation \
                 {}: node {} lost its data and was started again, so it must not act as its old \
                 self. Stop it, remove node {} (`.remove {}` through any member), wipe its data \
                 dir and join it again with --join under a new --id",
                Incarnation(env.to_incarnation),
                self.id,
                Incarnation(self.incarnation),
                self.id,
                self.id,
                self.id
            )));
        }
        if let Some(member) = self.membership.membership().get_node(&env.from) {
            if member.incarnation != env.from_incarnation {
                return Err(self.refuse(format!(
                    "it comes from incarnation {} of node {}, but the membership admitted node {} as \
                     incarnation {}: that node lost its data and was started again. Stop it, remove \
                     node {} and join it again under a new --id",
                    Incarnation(env.from_incarnation),
                    env.from,
                    env.from,
                    Incarnation(member.incarnation),
                    env.from
                )));
            }
        }
        if let Some(mine) = &self.cluster_id {
            if !env.cluster_id.is_empty() && env.cluster_id != *mine {
                return Err(self.refuse(format!(
                    "it comes from cluster {}, this node belongs to cluster {mine}",
                    env.cluster_id
                )));
            }
        }
        let named = sender_vote.leader_id().voted_for();
        if named != Some(env.from) {
            return Err(
                self.refuse(format!("the {what} is from node {} but its vote names {named:?}", env.from))
            );
        }
        self.term(sender_vote.leader_id().term, what)
    }

    fn term(&self, term: u64, what: &str) -> Result<(), Refused> {
        if term >= MAX_TERM || term > self.term.saturating_add(MAX_TERM_JUMP) {
            return Err(self.refuse(format!(
                "the {what} is in term {term}, this node is in term {}: no real election jumps that far",
                self.term
            )));
        }
        Ok(())
    }

    pub fn append_entries(
        &self,
        env: &Envelope,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), Refused> {
        self.envelope(env, &rpc.vote, "AppendEntries")?;
        let term = rpc.vote.leader_id().term;
        let mut prev: Option<LogId> = rpc.prev_log_id;
        for (i, e) in rpc.entries.iter().enumerate() {
            check_entry(e, prev, term)
                .map_err(|r| self.refuse(format!("entry {i} of the AppendEntries: {r}")))?;
            prev = Some(e.log_id);
        }
        if let Some(p) = rpc.prev_log_id {
            if p.leader_id.term > term {
                return Err(self.refuse(format!("prev_log_id {p} is newer than the leader's term {term}")));
            }
        }
        if let Some(c) = rpc.leader_commit {
            if c.leader_id.term > term {
                return Err(self.refuse(format!("commit {c} is newer than the leader's term {term}")));
            }
        }
        Ok(())
    }

    pub fn vote(&self, env: &Envelope, rpc: &VoteRequest<NodeId>) -> Result<(), Refused> {
        self.envelope(env, &rpc.vote, "Vote request")?;
        if let Some(l) = rpc.last_log_id {
            if l.leader_id.term > rpc.vote.leader_id().term {
                return Err(self.refuse(format!("its last log id {l} is newer than its own vote")));
            }
        }
        Ok(())
    }

    pub fn install_snapshot(
        &self,
        env: &Envelope,
        rpc: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), Refused> {
        self.envelope(env, &rpc.vote, "InstallSnapshot")?;
        if let Some(l) = rpc.meta.last_log_id {
            if l.leader_id.term > rpc.vote.leader_id().term {
                return Err(
                    self.refuse(format!("the snapshot's last log id {l} is newer than the leader's term"))
                );
            }
        }
        Ok(())
    }
}

/// An entry must directly follow `prev` and carry no term above the leader's.
fn check_entry(e: &Entry, prev: Option<LogId>, term: u64) -> Result<(), String> {
    let want = prev.map_or(0, |p| p.index + 1);
    if e.log_id.index != want {
        return Err(format!(
            "it has index {}, the entry before it {prev:?}: entries must be consecutive",
            e.log_id.index
        ));
    }
    if e.log_id.leader_id.term > term {
        return Err(format!("its log id {} is newer than the leader's term {term}", e.log_id));
    }
    if prev.is_some_and(|p| e.log_id.leader_id.term < p.leader_id.term) {
        return Err(format!("its log id {} goes back in term from {prev:?}", e.log_id));
    }
    if let openraft::EntryPayload::Normal(cs) = &e.payload {
        cs.verify().map_err(|err| format!("entry {}: {err}", e.log_id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::{Member, Membership};
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::collections::{BTreeMap, BTreeSet};

    /// Node 2 (incarnation 20) in a cluster of nodes 1, 2, 3 (incarnations 10, 20, 30).
    fn local() -> Local {
        let nodes: BTreeMap<NodeId, Member> =
            (1..=3).map(|id| (id, Member::new(format!("h:{id}"), id * 10))).collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let membership = std::sync::Arc::new(StoredMembership::new(None, membership));
        Local { id: 2, incarnation: 20, cluster_id: Some("c1".into()), term: 5, membership }
    }

    fn env(from: NodeId, to: NodeId) -> Envelope {
        Envelope { cluster_id: "c1".into(), from, to, from_incarnation: from * 10, to_incarnation: to * 10 }
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(term: u64, prev: Option<LogId>, entries: Vec<LogId>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev,
            entries: entries
                .into_iter()
                .map(|log_id| Entry { log_id, payload: EntryPayload::Blank })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn a_well_formed_heartbeat_and_append_pass() {
        let l = local();
        assert_eq!(l.append_entries(&env(1, 2), &append(6, Some(log_id(5, 9)), vec![])), Ok(()));
        let a = append(6, Some(log_id(5, 9)), vec![log_id(5, 10), log_id(6, 11)]);
        assert_eq!(l.append_entries(&env(1, 2), &a), Ok(()));
        // Before the cluster id is known (bootstrap), an empty one passes on either side.
        let fresh = Local { cluster_id: None, ..local() };
        assert_eq!(fresh.append_entries(&Envelope { cluster_id: String::new(), ..env(1, 2) }, &a), Ok(()));
    }

    #[test]
    fn forged_and_misrouted_messages_are_refused() {
        let l = local();
        let ok = append(6, None, vec![]);
        let refused =
            |e: &Envelope, a: &AppendEntriesRequest<TypeConfig>| l.append_entries(e, a).unwrap_err().reason;
        assert!(refused(&Envelope { to_incarnation: 30, ..env(1, 3) }, &ok).contains("addressed to node 3"));
        assert!(refused(&env(0, 2), &ok).contains("from node 0"));
        assert!(refused(&env(2, 2), &ok).contains("from node 2"));
        let other = Envelope { cluster_id: "c2".into(), ..env(1, 2) };
        assert!(refused(&other, &ok).contains("cluster c2"));
        assert!(refused(&env(3, 2), &ok).contains("vote names Some(1)"), "sender and vote disagree");
        // The brick: a heartbeat in term 2^64 - 1, any term from 2^62, and any jump past
        // MAX_TERM_JUMP.
        assert!(refused(&env(1, 2), &append(MAX_TERM, None, vec![])).contains("no real election"));
        let far = Local { term: MAX_TERM - 2, ..local() };
        assert!(far.append_entries(&env(1, 2), &append(MAX_TERM, None, vec![])).is_err());
        assert!(refused(&env(1, 2), &append(u64::MAX, None, vec![])).contains("no real election"));
        assert!(
            refused(&env(1, 2), &append(5 + MAX_TERM_JUMP + 1, None, vec![])).contains("no real election")
        );
        assert_eq!(l.append_entries(&env(1, 2), &append(5 + MAX_TERM_JUMP, None, vec![])), Ok(()));
    }

    #[test]
    fn messages_between_other_incarnations_are_refused() {
        let l = local();
        let ok = append(6, None, vec![]);
        // Meant for an earlier incarnation of node 2: node 2 lost its data and was restarted.
        let stale = Envelope { to_incarnation: 21, ..env(1, 2) };
        let r = l.append_entries(&stale, &ok).unwrap_err().reason;
        assert!(r.contains("meant for incarnation 0000000000000015 of node 2"), "{r}");
        assert!(r.contains("lost its data"), "{r}");
        assert!(l.vote(&stale, &VoteRequest { vote: Vote::new(6, 1), last_log_id: None }).is_err());
        // From another incarnation of member 1 (its data dir was replaced).
        let replaced = Envelope { from_incarnation: 11, ..env(1, 2) };
        let r = l.append_entries(&replaced, &ok).unwrap_err().reason;
        assert!(r.contains("admitted node 1 as incarnation 000000000000000a"), "{r}");
        // A sender this node's membership does not know yet is not checked here.
        let newcomer = Envelope { from: 4, from_incarnation: 99, ..env(1, 2) };
        let vote4 = VoteRequest { vote: Vote::new(6, 4), last_log_id: None };
        assert_eq!(l.vote(&newcomer, &vote4), Ok(()));
    }

    #[test]
    fn malformed_entries_are_refused() {
        let l = local();
        let refused =
            |a: AppendEntriesRequest<TypeConfig>| l.append_entries(&env(1, 2), &a).unwrap_err().reason;
        assert!(refused(append(6, Some(log_id(5, 9)), vec![log_id(5, 11)])).contains("consecutive"));
        assert!(refused(append(6, None, vec![log_id(6, 0), log_id(6, 2)])).contains("consecutive"));
        assert!(refused(append(6, Some(log_id(5, 9)), vec![log_id(7, 10)])).contains("newer than the leader"));
        assert!(refused(append(6, Some(log_id(6, 9)), vec![log_id(5, 10)])).contains("goes back in term"));
        assert!(refused(append(6, Some(log_id(7, 9)), vec![])).contains("prev_log_id"));
        // A change set damaged on the way (or forged without its checksum) never reaches openraft.
        let cs = crate::changeset::ChangeSet::new(vec![]);
        let good = crate::changeset::EncodedChangeSet::encode(&cs);
        let mut bytes = bincode::serialize(&good).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        let damaged: crate::changeset::EncodedChangeSet = bincode::deserialize(&bytes).unwrap();
        let mut a = append(6, Some(log_id(5, 9)), vec![log_id(6, 10)]);
        a.entries[0].payload = EntryPayload::Normal(good);
        assert_eq!(l.append_entries(&env(1, 2), &a), Ok(()));
        a.entries[0].payload = EntryPayload::Normal(damaged);
        assert!(refused(a).contains("fails its checksum"));
    }

    #[test]
    fn vote_requests_are_checked_too() {
        let l = local();
        let vote = |term: u64, from: NodeId, last: Option<LogId>| VoteRequest {
            vote: Vote::new(term, from),
            last_log_id: last,
        };
        assert_eq!(l.vote(&env(3, 2), &vote(6, 3, Some(log_id(5, 9)))), Ok(()));
        assert!(l.vote(&env(3, 2), &vote(6, 1, None)).is_err(), "candidate is not the sender");
        assert!(l.vote(&env(3, 2), &vote(u64::MAX, 3, None)).is_err(), "overflowing term");
        assert!(l.vote(&env(3, 2), &vote(6, 3, Some(log_id(9, 9)))).is_err(), "log newer than the vote");
    }
}
