//! Read routing per consistency level (design.md §4). The level is decided here and only here.
//!
//! | level | served by | how |
//! | --- | --- | --- |
//! | `Strong` | the leader | `read_index::ReadIndex::confirm` (the leader lease, or else one heartbeat round; either is shared by every read that arrived before it started and confirms leadership), then waits for apply ≥ that index |
//! | `ReadYourWrites` | any node whose applied index ≥ the session token | waits up to `ryw_wait` for apply; otherwise `NotLeader` so the client goes to the leader |
//! | `Bounded(d)` | any node that heard from the current leader within d | the leader counts the last quorum ack; a follower its last accepted AppendEntries |
//! | `Any` | the local replica | no promise |
//!
//! The evaluation itself runs on a consistent view of the applied state
//! (`StateMachine::read`, which holds apply off) on a blocking thread.
//!
//! Session tokens are `"{cluster_id}.{index}"`: opaque to clients, checked here — a token of
//! another cluster or from the future (beyond the leader's last log index) is a `Token` error.

use super::{Core, Error, Receipt};
use crate::changeset::{StatementResult, Value};
use openraft::ServerState;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The consistency level of a read, shared with the client library through raftsql-proto.
pub use raftsql_proto::Consistency;

/// A parsed session token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionToken {
    pub cluster_id: String,
    pub index: u64,
}

impl SessionToken {
    pub fn parse(s: &str) -> Result<SessionToken, Error> {
        let (cluster_id, index) = s
            .rsplit_once('.')
            .ok_or_else(|| Error::Token(format!("{s:?} is not a raftsql session token")))?;
        let index =
            index.parse().map_err(|_| Error::Token(format!("{s:?} is not a raftsql session token")))?;
        if cluster_id.is_empty() {
            return Err(Error::Token(format!("{s:?} names no cluster")));
        }
        Ok(SessionToken { cluster_id: cluster_id.to_string(), index })
    }

    pub fn encode(cluster_id: &str, index: u64) -> String {
        format!("{cluster_id}.{index}")
    }
}

/// A read request.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    pub sql: String,
    pub params: Vec<Value>,
    pub level: Consistency,
    pub session_token: Option<String>,
    /// The caller's deadline (`grpc-timeout`), if it sent one, counted from `arrived`: the
    /// evaluation stops at the earlier of it (less `answer_margin`) and `--query-timeout`.
    pub caller_timeout: Option<Duration>,
    /// When the request reached this node.
    pub arrived: std::time::Instant,
    /// Set when the caller goes away: the evaluation stops at its next check.
    pub cancel: Arc<AtomicBool>,
}

/// How long a read (or the sequencer's evaluation of a batch) may run on the calling worker
/// before it moves to a blocking thread.
pub(super) const INLINE_SLICE: Duration = Duration::from_millis(2);

/// How long a read waits on its worker for an apply that holds the state before it moves to a
/// blocking thread instead (where it waits for the apply too, but holding a thread).
const APPLY_WAIT: Duration = Duration::from_millis(10);

/// How much earlier than its caller's deadline a read stops: a tenth of the caller's timeout,
/// at most a second, time for the node's answer to reach the caller.
pub(crate) fn answer_margin(caller_timeout: Duration) -> Duration {
    (caller_timeout / 10).min(Duration::from_secs(1))
}

/// Serves a read at its level, or says where to go instead.
pub async fn query(core: &Core, req: ReadRequest) -> Result<(StatementResult, Receipt), Error> {
    core.ensure_running()?;
    match req.level {
        Consistency::Strong => strong(core).await?,
        Consistency::ReadYourWrites => read_your_writes(core, req.session_token.as_deref()).await?,
        Consistency::Bounded(max) => bounded(core, max)?,
        Consistency::Any => {}
    }
    // `--query-timeout` counts from here, when evaluation is about to start; the caller's
    // deadline from the request's arrival, since it also covered the wait above, and ends
    // `answer_margin` early, so that this node's TIMEOUT, which says why (the query ran long,
    // it waited for a turn), reaches the caller before its own timer gives up without a reason.
    let own = core.options.query_timeout;
    let caller_left = req.caller_timeout.map(|t| {
        let answer_by = req.arrived + t.saturating_sub(answer_margin(t));
        (t, answer_by.saturating_duration_since(std::time::Instant::now()))
    });
    let mut budget = match caller_left {
        Some((t, left)) if left < own => {
            crate::sql::Budget::with_timeout(left, format!("the caller's deadline ({t:?})"))
        }
        _ => crate::sql::Budget::with_timeout(own, format!("--query-timeout-ms ({own:?})")),
    };
    budget.cancel = req.cancel.clone();
    budget.max_memory = core.options.max_query_memory;
    budget.pool = Some(core.options.memory.clone());
    let sm = core.sm.clone();
    let (sql, params, limit) = (req.sql, req.params, core.options.max_result_bytes);
    // NOW() in a read is this node's time, as in SQLite; RANDOM() is fresh per read.
    let ctx = crate::sql::Context {
        now_millis: super::wall_clock_millis(core.options.clock_offset_ms),
        seed: rand::random(),
    };
    // Most reads are point lookups of some microseconds: handing each to a blocking thread
    // cost two thread switches, more than the lookup. So a read first runs here, on this
    // worker, under a deadline of `INLINE_SLICE`; one that needs longer is stopped by that
    // deadline and runs again from the start on a blocking thread under its whole budget
    // (reads change nothing, so running one twice is harmless). A worker is held at most
    // about one slice per read, and never waits for the state machine's lock.
    // An apply in progress (or waiting) is waited for here, without blocking the worker, for up
    // to `APPLY_WAIT`; one that takes longer sends the read to a blocking thread. The slice
    // starts when the read does.
    let patience = budget
        .deadline
        .map_or(APPLY_WAIT, |d| d.saturating_duration_since(std::time::Instant::now()).min(APPLY_WAIT));
    let inline = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(sm.read_after_apply(
        patience,
        |view| {
            let slice_end = std::time::Instant::now().checked_add(INLINE_SLICE);
            let slice = match (slice_end, budget.deadline) {
                (Some(end), Some(full)) if end < full => crate::sql::Budget {
                    deadline: Some(end),
                    deadline_source: "the inline slice".into(),
                    ..budget.clone()
                },
                // The whole budget is shorter than a slice: its own deadline and message apply.
                _ => budget.clone(),
            };
            (crate::sql::query_with(view, &sql, &params, ctx, slice), sm.applied_index())
        },
    )))
    .await;
    let (result, applied) = match inline {
        Ok(None) | Ok(Some((Err(crate::sql::Error::Interrupted(_)), _)))
            if !budget.cancel.load(Ordering::Relaxed)
                && budget.deadline.is_none_or(|d| std::time::Instant::now() < d) =>
        {
            // At most `MAX_LONG_READS` reads hold blocking threads; this one waits for a turn
            // (without a thread) within its own deadline. The permit goes with the thread.
            let waiting = Waiting::new(&core.long_reads_waiting);
            let turn = core.long_reads.clone().acquire_owned();
            let turn = match budget.deadline {
                Some(d) => tokio::time::timeout_at(d.into(), turn).await.map_err(|_| {
                    Error::Timeout(format!(
                        "{} reads were already running on this node's blocking threads until {} \
                         passed: retry, spread reads over the replicas (ANY, BOUNDED), or make \
                         long queries cheaper",
                        crate::node::MAX_LONG_READS,
                        budget.deadline_source
                    ))
                })?,
                None => turn.await,
            }
            .map_err(|_| Error::Unavailable("this node is shutting down".into()))?;
            drop(waiting);
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                // Pinned, not under the lock: a read that runs long does not hold apply back.
                match sm.read_pinned(|view| crate::sql::query_with(view, &sql, &params, ctx, budget)) {
                    // Stopped on purpose (apply kept too much for it, or a snapshot replaced the
                    // state): no fault of the statement or the store, so UNAVAILABLE, which
                    // clients retry, not INTERNAL.
                    (Err(crate::sql::Error::Read(why)), _, true) => Err(Error::Unavailable(why)),
                    (result, applied, _) => Ok((result, applied)),
                }
            })
            .await
            .map_err(|panic| {
                tracing::error!(error = %panic, "query evaluation panicked");
                Error::Unavailable("internal error while evaluating the query".into())
            })??
        }
        Ok(Some(done)) => done,
        Ok(None) => {
            return Err(Error::Unavailable(
                "the caller went away or its deadline passed before the query could start".into(),
            ))
        }
        Err(_) => {
            tracing::error!("query evaluation panicked");
            return Err(Error::Unavailable("internal error while evaluating the query".into()));
        }
    };
    let result = result?;
    let size = estimate_size(&result);
    if size > limit {
        return Err(Error::InvalidArgument(format!(
            "the result is about {size} bytes, over this node's limit of {limit}: add a LIMIT or a \
             narrower WHERE, or raise --max-result-bytes"
        )));
    }
    let served_at = applied.unwrap_or(0);
    let mut receipt = core.receipt(served_at, req.level);
    // The state the read saw, read under the same lock as the data — not whatever this node has
    // applied since: that is what the session token names and what monotonic reads compare.
    receipt.applied_index = served_at;
    Ok((result, receipt))
}

/// Counts a read waiting for a turn on a blocking thread for as long as it lives, including
/// when the wait is dropped because its caller went away.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn strong(core: &Core) -> Result<(), Error> {
    if core.with_metrics(|m| m.current_leader) != Some(core.id) {
        return Err(core.not_leader());
    }
    match core.read_index.confirm().await {
        super::read_index::Confirmed::Ready { .. } => Ok(()),
        super::read_index::Confirmed::NotLeader => Err(core.not_leader()),
        super::read_index::Confirmed::Timeout => Err(Error::Unavailable(format!(
            "could not confirm leadership within {:?}: is a majority of nodes reachable?",
            core.options.read_timeout
        ))),
    }
}

async fn read_your_writes(core: &Core, token: Option<&str>) -> Result<(), Error> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(()); // a session that has seen nothing: any state is its own past
    };
    let token = SessionToken::parse(token)?;
    match core.sm.cluster_id()? {
        Some(id) if id == token.cluster_id => {}
        Some(id) => {
            return Err(Error::Token(format!(
                "the token belongs to cluster {:?}, this is cluster {id:?}",
                token.cluster_id
            )))
        }
        None => return Err(Error::Unavailable("this node has not learnt the cluster id yet".into())),
    }
    let (is_leader, last_log_index) =
        core.with_metrics(|m| (m.state == ServerState::Leader, m.last_log_index.unwrap_or(0)));
    if is_leader && token.index > last_log_index {
        return Err(Error::Token(format!(
            "the token's index {} is beyond the last log index {last_log_index}: it does not come from \
             this cluster's history",
            token.index,
        )));
    }
    if core.sm.applied_index().unwrap_or(0) >= token.index {
        return Ok(());
    }
    let wait = if is_leader { core.options.read_timeout } else { core.options.ryw_wait };
    match core.raft.wait(Some(wait)).applied_index_at_least(Some(token.index), "read your writes").await {
        Ok(_) => Ok(()),
        Err(_) if is_leader => {
            Err(Error::Timeout(format!("the leader did not apply index {} in time", token.index)))
        }
        Err(_) => Err(core.not_leader()),
    }
}

fn bounded(core: &Core, max: Duration) -> Result<(), Error> {
    let (state, since_quorum_ack) = core.with_metrics(|m| (m.state, m.millis_since_quorum_ack));
    let staleness_ms = if state == ServerState::Leader {
        since_quorum_ack.unwrap_or(u64::MAX)
    } else {
        let last = core.last_leader_contact.load(Ordering::Relaxed);
        if last == 0 {
            u64::MAX
        } else {
            super::monotonic_millis().saturating_sub(last)
        }
    };
    if staleness_ms <= max.as_millis() as u64 {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "this replica last heard from the leader {} ago, more than the {max:?} allowed: read from \
             another node or the leader",
            if staleness_ms == u64::MAX { "never".to_string() } else { format!("{staleness_ms} ms") }
        )))
    }
}

/// A result's size as it is counted against --max-result-bytes and --max-node-memory.
pub(crate) fn estimate_size(r: &StatementResult) -> usize {
    r.rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Text(s) => s.len() + 4,
                    Value::Blob(b) => b.len() + 4,
                    _ => 10,
                })
                .sum::<usize>()
                + 4
        })
        .sum()
}
