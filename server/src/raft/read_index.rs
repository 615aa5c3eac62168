//! Batched ReadIndex: one leadership confirmation serves every linearizable read that arrived
//! before it started (issue 18).
//!
//! A linearizable read on the leader needs a read index: an index the state machine must reach,
//! taken *after* the read arrived, while a quorum still acknowledges this node as leader in its
//! term (openraft's `get_read_log_id`, one heartbeat round). Asking once per read made STRONG
//! reads cost a heartbeat round each and held them at about 5,500/s whatever the concurrency.
//!
//! Here readers queue; one driver task confirms for the whole queue and hands every reader the
//! same answer. A reader that arrives while a round is in flight waits for the *next* round,
//! because the round in flight may have taken its index before the reader arrived — serving it
//! from that round could miss a write acknowledged in between. So every read is served by a
//! round that started after it arrived, which is exactly the ReadIndex condition, and the
//! number of rounds is bounded by round-trip time, not by the number of readers.
//!
//! Bounds: the queue is bounded by the in-flight request limit (`Core::admit` runs first); each
//! round has a deadline (`timeout`); the driver exits when the queue is empty, and a waiter whose
//! caller went away is simply dropped.
//!
//! ## The leader lease
//!
//! Most rounds need no heartbeats. Every voter that accepts a request from its leader refuses
//! every vote request for openraft's leader lease after it (`election_timeout_max`, twice
//! `--election-timeout-ms`), and a restarted voter does the same from its start. So if a
//! quorum accepted requests this leader sent at time `t` in its term, no other leader can be
//! elected before `t + election_timeout_max` as the followers' clocks count it, and until then
//! the leader's committed index is the cluster's. A round asks openraft's core (patched:
//! `Raft::get_read_log_id_by_lease`, vendor/openraft/PATCHES.md) for the read index if such a
//! `t` lies within `lease` (`--read-lease-ms`, by default the election timeout, half the
//! followers' lease) before now; only otherwise does it send heartbeats. The regular
//! heartbeats (every `--heartbeat-ms`) keep `t` fresh, so an idle-of-writes leader serves
//! STRONG reads without a round trip, like etcd's and TiKV's lease reads.
//!
//! The leader counts itself in that quorum, and it is not bound by a lease of its own: openraft
//! lets it grant a newer candidate its vote (once its own vote is older than the lease). But
//! granting it makes it a follower at once, in the core's memory, before the candidate hears
//! the answer; the core checks the lease at the moment of each request, so every lease read it
//! answered came before this node's vote could help another leader, and none comes after.
//!
//! What it assumes: the nodes' monotonic clocks (`CLOCK_MONOTONIC`) advance at rates that
//! differ by less than 2× between any two nodes, and keep advancing while a process or its
//! machine is paused. A paused leader is safe because its clock goes on: when it wakes, its
//! lease has expired. `--read-lease-ms 0` turns lease reads off (a round per batch, as before).
//!
//! A leadership transfer (`handoff`) ends the followers' leases on purpose, so while one runs
//! no lease read is served (`suspend_lease`), and afterwards only acknowledgements of requests
//! sent after it ended count (`resume_lease`). A read compares the transfer generation before
//! and after asking the core: if a transfer started in between, it runs a round instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::typ::{LogId, Raft};

/// A read log id and the applied log id, as openraft answers a read index request.
type ReadIds = (Option<LogId>, Option<LogId>);

/// What a confirmation round found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// Leadership held when the round ran, and the state machine has applied `index`:
    /// a read of the applied state now is linearizable.
    Ready { index: u64 },
    /// A higher term exists or this node is not the leader.
    NotLeader,
    /// No quorum answered (or apply did not reach the index) within the round's deadline.
    Timeout,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<oneshot::Sender<Confirmed>>,
    /// A driver task is running; it takes `waiting` at the start of each round.
    driving: bool,
    reads: u64,
    rounds: u64,
    /// Rounds answered from the leader lease, without heartbeats (a subset of `rounds`).
    leased: u64,
}

/// Whether the leader lease may answer a round (see the module doc).
#[derive(Clone, Copy)]
struct LeaseGate {
    /// A leadership transfer is under way: the followers' leases may have been ended.
    suspended: bool,
    /// Bumped when a transfer starts and when it ends.
    generation: u64,
    /// Only acknowledgements of requests sent at or after this count.
    not_before: Instant,
}

/// One per node; cheap to clone.
#[derive(Clone)]
pub struct ReadIndex {
    raft: Raft,
    timeout: Duration,
    /// `None`: every round sends heartbeats (`--read-lease-ms 0`).
    lease: Option<Duration>,
    queue: Arc<Mutex<Queue>>,
    gate: Arc<Mutex<LeaseGate>>,
}

impl ReadIndex {
    /// `lease` must be at most half of openraft's `election_timeout_max` (the config checks it);
    /// zero turns lease reads off.
    pub fn new(raft: Raft, timeout: Duration, lease: Duration) -> ReadIndex {
        let gate = LeaseGate { suspended: false, generation: 0, not_before: Instant::now() };
        ReadIndex {
            raft,
            timeout,
            lease: Some(lease).filter(|l| !l.is_zero()),
            queue: Default::default(),
            gate: Arc::new(Mutex::new(gate)),
        }
    }

    /// No lease read until `resume_lease`: a leadership transfer is about to end the
    /// followers' leases. Reads already past their gate check notice it and run a round.
    pub fn suspend_lease(&self) {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        g.suspended = true;
        g.generation += 1;
    }

    /// Lease reads again, counting only acknowledgements of requests sent from now on.
    pub fn resume_lease(&self) {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        g.suspended = false;
        g.generation += 1;
        g.not_before = Instant::now();
    }

    fn gate(&self) -> LeaseGate {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a confirmation round that starts after this call, then for apply to reach its
    /// read index.
    pub async fn confirm(&self) -> Confirmed {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push(tx);
            q.reads += 1;
            !std::mem::replace(&mut q.driving, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.drive().await });
        }
        // The driver answers every waiter it took; a dropped sender means the runtime is going
        // down, which is no leadership to speak of.
        rx.await.unwrap_or(Confirmed::NotLeader)
    }

    /// Confirmations asked for since the node started (`Status.read_index_reads`).
    pub fn reads(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).reads
    }

    /// Rounds run since the node started (`Status.read_index_rounds`).
    pub fn rounds(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).rounds
    }

    /// Rounds the leader lease answered, without heartbeats (`Status.read_lease_rounds`).
    pub fn leased(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).leased
    }

    async fn drive(self) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.driving = false;
                    return;
                }
                q.rounds += 1;
                std::mem::take(&mut q.waiting)
            };
            let outcome = self.round().await;
            tracing::trace!(readers = batch.len(), ?outcome, "read index round");
            for tx in batch {
                let _ = tx.send(outcome);
            }
        }
    }

    /// The read index from the leader lease, if it covers now and no leadership transfer
    /// began meanwhile; `Err` when this node does not lead.
    async fn by_lease(&self) -> Result<Option<ReadIds>, ()> {
        let Some(lease) = self.lease else { return Ok(None) };
        let before = self.gate();
        if before.suspended {
            return Ok(None);
        }
        let ids = self.raft.get_read_log_id_by_lease(lease, before.not_before).await.map_err(|_| ())?;
        // A transfer that started after `before` may have ended leases before the core looked.
        Ok(ids.filter(|_| self.gate().generation == before.generation))
    }

    async fn round(&self) -> Confirmed {
        let confirm = async {
            let (read, applied) = match self.by_lease().await {
                Ok(Some(ids)) => {
                    self.queue.lock().unwrap_or_else(|p| p.into_inner()).leased += 1;
                    ids
                }
                Ok(None) => match self.raft.get_read_log_id().await {
                    Ok(ids) => ids,
                    Err(_) => return Confirmed::NotLeader,
                },
                Err(()) => return Confirmed::NotLeader,
            };
            let index = read.map_or(0, |l| l.index);
            if index > applied.map_or(0, |l| l.index)
                && self.raft.wait(None).applied_index_at_least(Some(index), "read index").await.is_err()
            {
                return Confirmed::NotLeader; // shutting down
            }
            Confirmed::Ready { index }
        };
        tokio::time::timeout(self.timeout, confirm).await.unwrap_or(Confirmed::Timeout)
    }
}
