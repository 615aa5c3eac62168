//! Leadership transfer (issue 19): the leader hands its role to a caught-up voter in about one
//! round trip, for `Admin.TransferLeader` and for a leader that got SIGTERM, instead of leaving
//! the cluster leaderless for an election timeout.
//!
//! openraft 0.9 has no transfer, and its leader lease is what stops a naive one: a follower
//! that heard from its leader within the lease refuses every vote, so a target told to
//! campaign loses. The steps, on the leader:
//!
//! 1. Stop taking writes ([`WritePause`]): the sequencer refuses new batches with UNAVAILABLE
//!    (clients retry, and find the new leader) and proposes nothing more, not even a batch it
//!    was evaluating; and stop the heartbeats, so nothing renews the lease.
//! 2. Wait until the target holds the leader's whole log, read from openraft's core after the
//!    pause (so every entry ever proposed in the term is in it), so that it can win and nothing
//!    acknowledged is at risk. A target missing one entry loses its election to the longer
//!    logs, and the cluster goes through more elections with writes stalled.
//! 3. `TimeoutNow { elect: false }` to every other voter and to itself: each ends the lease it
//!    grants (a vendored openraft patch, `Trigger::expire_leader_lease`), acting only on its
//!    current leader's request in its current term. Their election timers still give the
//!    target an election timeout before they would campaign themselves.
//! 4. `TimeoutNow { elect: true }` to the target: it ends its lease and campaigns in the next
//!    term; the others grant it, the old leader steps down on the higher term.
//!
//! Whatever the outcome, heartbeats and writes resume here afterwards (a failed transfer leaves
//! this node leading). The whole is bounded by the caller's budget. Safety never depends on it:
//! it is an ordinary election that the target wins because its log is complete and the leases
//! ended. Because it ends leases, no STRONG read is served from this leader's lease while a
//! transfer runs, nor afterwards from acknowledgements older than its end
//! (`ReadIndex::suspend_lease` / `resume_lease`).

use super::{Core, Error};
use crate::typ::NodeId;
use raftsql_proto::v1 as pb;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// Writes paused for a leadership transfer. The sequencer checks [`WritePause::is_paused`]
/// as it takes a batch (an early refusal) and again as it hands an entry to openraft, holding
/// [`WritePause::proposal`] across that hand-over; [`WritePause::pause`] returns only once no
/// proposal that missed the pause is still under way. So after `pause`, openraft's log holds
/// every entry this leader will propose until [`WritePause::resume`]; without the second check
/// a batch evaluated while the transfer began was proposed after the transfer read the log.
#[derive(Clone, Debug, Default)]
pub struct WritePause {
    paused: Arc<AtomicBool>,
    proposing: Arc<tokio::sync::Mutex<()>>,
    /// One transfer at a time: the end of one resumes writes and heartbeats, which would undo
    /// another still running (its target short of entries, leases renewed under it).
    transfers: Arc<tokio::sync::Mutex<()>>,
}

impl WritePause {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Pauses writes; returns once every proposal that began before is in openraft's queue.
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        drop(self.proposing.lock().await);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Leave to propose: `None` while paused. Hold the guard until openraft has the entry.
    pub async fn proposal(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.proposing.lock().await;
        (!self.is_paused()).then_some(guard)
    }
}

/// How long one TimeoutNow call may take.
const CALL: Duration = Duration::from_millis(500);

/// Moves leadership from this node (the leader) to `target`, or to the voter holding most of
/// its log; returns the new leader and its term. Bounded by `budget`.
pub async fn transfer(
    core: &Arc<Core>,
    target: Option<NodeId>,
    budget: Duration,
) -> Result<(NodeId, u64), Error> {
    let deadline = Instant::now() + budget;
    // A transfer already running here (an operator's, a SIGTERM's) is waited for, within the
    // budget; this one then finds whether this node still leads.
    let _one =
        tokio::time::timeout_at(deadline, core.options.writes.transfers.lock()).await.map_err(|_| {
            Error::Unavailable(format!(
                "another leadership transfer on this node did not end within {budget:?}; retry"
            ))
        })?;
    let m = core.metrics();
    if m.current_leader != Some(core.id) {
        return Err(core.not_leader());
    }
    let term = m.current_term;
    let membership = m.membership_config.membership().clone();
    let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != core.id).collect();
    let matched = |m: &crate::typ::RaftMetrics, id: NodeId| {
        m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map_or(0, |l| l.index)
    };
    let target = match target {
        Some(t) if t == core.id => return Ok((core.id, term)),
        Some(t) if others.contains(&t) => t,
        Some(t) => {
            return Err(Error::Precondition(format!(
                "node {t} is not a voter of this cluster (voters: {:?}): only a voter can lead",
                membership.voter_ids().collect::<Vec<_>>()
            )))
        }
        None => *others.iter().max_by_key(|id| matched(&m, **id)).ok_or_else(|| {
            Error::Precondition("this node is the only voter: there is nobody to hand leadership to".into())
        })?,
    };
    let peer_addr = |id: NodeId| membership.get_node(&id).map(|n| n.peer_addr.clone());
    info!(target, term, "handing leadership over: writes paused, heartbeats stopped");
    core.options.writes.pause().await;
    // Before any lease ends: a lease read from here on would count on leases step 3 ends.
    core.read_index.suspend_lease();
    core.raft.runtime_config().heartbeat(false);
    let result = async {
        // 2. The target holds everything the leader has. The core takes requests in order, so
        //    its answer comes after every proposal the pause waited for.
        let last = core
            .raft
            .with_raft_state(|s| s.log_ids.last().map_or(0, |l| l.index))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        loop {
            let m = core.metrics();
            if m.current_leader != Some(core.id) || m.current_term != term {
                return Err(core.not_leader());
            }
            if matched(&m, target) >= last {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "node {target} did not catch up with the leader's log (index {last}) in time; leadership stays here"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 3. Leases end everywhere but at the target.
        let calls = others.iter().filter(|v| **v != target).filter_map(|v| peer_addr(*v)).map(|addr| {
            let core = core.clone();
            async move { timeout_now(&core, &addr, term, false).await }
        });
        for r in futures::future::join_all(calls).await {
            if let Err(e) = r {
                // A voter that did not hear it may refuse the target its vote for the rest of
                // its lease; the others can still make a majority.
                warn!(error = %e, "a voter did not end its leader lease");
            }
        }
        core.raft.trigger().expire_leader_lease().await.map_err(|e| Error::Unavailable(e.to_string()))?;
        // 4. The target campaigns.
        let addr = peer_addr(target).ok_or_else(|| Error::Unavailable(format!("node {target} has no address")))?;
        timeout_now(core, &addr, term, true).await?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let moved = core
            .raft
            .wait(Some(left))
            .metrics(|m| m.current_term > term, "a newer term")
            .await
            .map_err(|_| Error::Timeout(format!("node {target} did not take over in time; leadership stays here")))?;
        // The answer names the leader this node hears from, not the one it asked for: a newer
        // term alone may be a lost election. (Not knowing it by the deadline, it names the
        // target: leadership has left this node either way.)
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let known = core
            .raft
            .wait(Some(left))
            .metrics(|m| m.current_term > term && m.current_leader.is_some(), "a new leader")
            .await
            .unwrap_or(moved);
        Ok((known.current_leader.unwrap_or(target), known.current_term))
    }
    .await;
    core.raft.runtime_config().heartbeat(true);
    // If this node still leads, its lease counts again from heartbeats sent from now on.
    core.read_index.resume_lease();
    core.options.writes.resume();
    match &result {
        Ok((leader, new_term)) => info!(leader, term = new_term, "handed leadership over"),
        Err(e) => warn!(error = %e, "leadership transfer failed"),
    }
    result
}

/// Asks the node at `addr` to end its leader lease (and, with `elect`, to campaign).
async fn timeout_now(core: &Core, addr: &str, term: u64, elect: bool) -> Result<(), Error> {
    let channel = core.peer_channel(addr).map_err(|e| Error::Unavailable(format!("{addr}: {e}")))?;
    let mut client = pb::raft_client::RaftClient::new(channel);
    let mut req = tonic::Request::new(pb::TimeoutNowRequest { from: core.id, term, elect });
    req.set_timeout(CALL);
    match tokio::time::timeout(CALL, client.timeout_now(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(Error::Unavailable(format!("{addr}: {}", super::network::status_text(&s)))),
        Err(_) => Err(Error::Unavailable(format!("{addr} did not answer TimeoutNow within {CALL:?}"))),
    }
}

/// A node's side of TimeoutNow: only its current leader, in its current term, may end its
/// lease or have it campaign.
pub async fn on_timeout_now(core: &Core, req: &pb::TimeoutNowRequest) -> Result<(), Error> {
    let m = core.metrics();
    if m.current_leader != Some(req.from) || m.current_term != req.term || req.from == core.id {
        return Err(Error::Precondition(format!(
            "TimeoutNow from node {} in term {}, but this node follows {:?} in term {}: ignored",
            req.from, req.term, m.current_leader, m.current_term
        )));
    }
    let fatal = |e: openraft::error::Fatal<NodeId>| Error::Unavailable(e.to_string());
    core.raft.trigger().expire_leader_lease().await.map_err(fatal)?;
    if req.elect {
        info!(from = req.from, term = req.term, "campaigning at the leader's request (leadership transfer)");
        core.raft.trigger().elect().await.map_err(fatal)?;
    }
    Ok(())
}
