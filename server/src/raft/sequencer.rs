//! The write sequencer (design.md §3): a single task on every node that, while the node leads,
//! turns batches of write requests into one `ChangeSet` log entry each.
//!
//! # Batches and the pipeline
//! The task takes a request, waits until the pipeline has room, then takes every request queued
//! behind it (up to `Options::max_batch_requests`) and evaluates them in order with one
//! `sql::Executor` over the applied state plus the changes of every entry it has proposed and
//! not yet seen applied (`Executor::assume`). It hands the batch's `ChangeSet` to openraft
//! (`client_write_ff`, from this one task, so the log holds entries in evaluation order) and
//! leaves the answers to the entry's completion task (`Completion::run`), which waits until
//! the entry is applied here. Row images are whole, so a batch sees the state its entry will
//! be applied on whether or not apply has already taken some of the entries in flight.
//!
//! The pipeline holds `--write-pipeline-depth` entries and, beyond the first, at most
//! `--max-entry-bytes` of them. At depth 1 (the default) a batch is evaluated only once the
//! previous entry has applied, and everything that queued meanwhile joins it (group commit).
//! Deeper pipelines evaluate while entries replicate; openraft 0.9 sends one AppendEntries at
//! a time per follower, so they pay only when evaluation takes long against a replication
//! round (measured in docs/performance.md).
//!
//! # Terms fence
//! - The task evaluates nothing in a term before the leader's blank entry of that term is
//!   applied locally (`last_applied.term == current_term`): by then every entry of earlier
//!   terms that will ever commit is applied, so the exactly-once records are complete, and
//!   entries in flight from an earlier term of this node are dropped from the pipeline (each
//!   is applied or never will be).
//! - A proposal that does not come back applied (leadership or term changed, or the write
//!   timeout passed) fails as `Indeterminate`: its entry may still commit under another leader.
//!   The client retries with the same request id and the exactly-once record decides.
//! - Every entry in flight after a failed one was evaluated over it, so after a failure the
//!   task evaluates nothing more in the term until every entry of the term in flight has
//!   resolved. An entry abandoned by timeout stays in flight until it resolves; requests that
//!   cannot get room in the pipeline within the write timeout fail as `Unavailable` with
//!   nothing proposed.
//!
//! # Exactly once
//! Before evaluating, a request whose id is already recorded (same client id, same seq, same
//! digest of its statements) is answered from the record; the same id with another digest, an
//! older seq, or a seq more than [`MAX_SEQ_GAP`] past the record is refused; a second copy inside
//! one batch shares the first one's answer. A copy of a request that is in an entry in flight
//! is held until that entry resolves and then answered from the record, and a seq older than
//! one of the same client in flight or earlier in the batch is refused: apply skips such a
//! request (`Applied::duplicates`), and the batches after it would have been evaluated as if
//! it had applied. Apply checks again, which covers a retry that raced its original through a
//! leader change.
//!
//! # A failing store
//! A read of this node's store that fails because sled failed (not a pinned read stopped on
//! purpose: `StateMachine::storage_fault` tells them apart), during evaluation or while reading
//! the exactly-once records, stops the node (`fail_stop`): the batch is answered `UNAVAILABLE`
//! and nothing of it is proposed, whatever its other requests evaluated to, and every later
//! request is answered the same way until `node::run` has shut the node down.
//!
//! # Reads inside Execute
//! A batch that changes nothing (only SELECTs or only failed statements) proposes no entry. Its
//! reads saw the entries in flight, so it waits until they have applied, then confirms
//! leadership with the `ReadIndex` before answering, so its reads are linearizable too.

use super::fail_stop::FailStop;
use super::read_index::{Confirmed, ReadIndex};
use super::{Consistency, Error, Options, Receipt, Role, WriteReply};
use crate::changeset::{ChangeSet, EncodedChangeSet, RequestEffects, RequestId, StatementOutcome, Value};
use crate::store::StateMachine;
use crate::typ::{NodeId, Raft, TypeConfig};
use openraft::raft::ClientWriteResult;
use openraft::ServerState;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

/// One client write request.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// (SQL text, parameters) pairs; a text may hold several statements.
    pub statements: Vec<(String, Vec<Value>)>,
    /// All or nothing (also implied by BEGIN ... COMMIT in the text).
    pub transaction: bool,
    pub request_id: Option<RequestId>,
}

type ReplyTx = oneshot::Sender<Result<WriteReply, Error>>;

/// How far one request's sequence number may run past its client's last applied one. A client
/// goes up by one per new request (requests refused before they were proposed leave gaps);
/// 2^32 is far beyond any real gap and keeps the top of the range 2^32 writes away, so no single
/// request can lock a client id out.
pub const MAX_SEQ_GAP: u64 = 1 << 32;

struct Pending {
    request: WriteRequest,
    reply: ReplyTx,
    span: tracing::Span,
    /// Set when the caller stops waiting: its evaluation stops at the next check.
    cancel: Arc<AtomicBool>,
}

/// The handle services use to submit writes.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Pending>,
}

impl Sequencer {
    /// Starts the sequencer task for this node.
    pub fn spawn(
        id: NodeId,
        raft: Raft,
        sm: StateMachine,
        read_index: ReadIndex,
        options: Options,
        fail_stop: FailStop,
    ) -> Sequencer {
        let (tx, rx) = mpsc::channel(options.max_batch_requests * 4);
        let task = Task {
            id,
            raft,
            sm,
            read_index,
            options,
            rx,
            ready_term: None,
            in_flight: VecDeque::new(),
            held: Vec::new(),
            fail_stop,
        };
        tokio::spawn(task.run().instrument(tracing::info_span!("sequencer", node_id = id)));
        Sequencer { tx }
    }

    /// Submits a write and waits for its outcome.
    pub async fn write(&self, request: WriteRequest) -> Result<WriteReply, Error> {
        let (reply, rx) = oneshot::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        // Dropped with this future when the caller goes away: the evaluation is stopped.
        let _guard = crate::sql::CancelOnDrop(cancel.clone());
        let pending = Pending { request, reply, span: tracing::Span::current(), cancel };
        self.tx.send(pending).await.map_err(|_| Error::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| Error::Unavailable("the node is shutting down".into()))?
    }
}

/// An entry this leader proposed whose fate on this node is not known yet. Every batch
/// evaluated after it assumes its changes (`sql::Executor::assume`).
struct Flight {
    term: u64,
    entry: Arc<ChangeSet>,
    /// Encoded size (the bytes in flight are bounded by `--max-entry-bytes`).
    bytes: u64,
    /// `true` once the entry is applied here; `false` if its proposal failed or leadership of
    /// its term ended (the entry may still commit under another leader). Resolved by the
    /// entry's completion task (`complete`).
    done: oneshot::Receiver<bool>,
}

struct Task {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    read_index: ReadIndex,
    options: Options,
    rx: mpsc::Receiver<Pending>,
    /// The term in which this node may evaluate over `in_flight`: its blank entry is applied,
    /// and no entry of it has failed since. `None` makes the next batch wait (`fence`).
    ready_term: Option<u64>,
    /// Proposed entries, oldest first; they apply in this order.
    in_flight: VecDeque<Flight>,
    /// Retries of requests that are in an entry in flight: taken up again when it resolves,
    /// and then answered from the exactly-once record.
    held: Vec<Pending>,
    /// Tripped when this node's store fails: nothing more is evaluated or proposed.
    fail_stop: FailStop,
}

/// A request to evaluate, with every reply channel waiting on it (duplicates share one).
struct Work {
    request: WriteRequest,
    replies: Vec<(ReplyTx, tracing::Span)>,
    /// The first caller's cancellation flag (duplicates wait on the same evaluation).
    cancel: Arc<AtomicBool>,
}

/// The answer to writes while leadership moves away (`handoff`): nothing was proposed.
fn handing_off() -> Error {
    Error::Unavailable(
        "leadership is moving to another node (a transfer, or this node is shutting down); nothing \
         was applied; retry: the new leader takes writes within moments"
            .into(),
    )
}

/// Resolves with the oldest entry in flight's fate; never, if none is.
async fn oldest(in_flight: &mut VecDeque<Flight>) -> bool {
    match in_flight.front_mut() {
        Some(f) => (&mut f.done).await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                applied = oldest(&mut self.in_flight) => self.settled(applied),
                next = self.rx.recv() => {
                    let Some(first) = next else { break };
                    self.process(vec![first]).await;
                }
            }
            if !self.held.is_empty() && !self.holds_back(&self.held) {
                let held = std::mem::take(&mut self.held);
                self.process(held).await;
            }
        }
        debug!("sequencer stopped");
    }

    /// The oldest entry in flight resolved.
    fn settled(&mut self, applied: bool) {
        if let Some(f) = self.in_flight.pop_front() {
            if !applied && self.ready_term == Some(f.term) {
                // Every later entry of the term was evaluated over this one: evaluate nothing
                // more until they have all resolved and the state shows what happened.
                info!(
                    term = f.term,
                    "an entry in flight failed; draining the pipeline before evaluating again"
                );
                self.ready_term = None;
            }
        }
    }

    /// Whether any of `requests` retries a request of an entry still in flight.
    fn holds_back(&self, requests: &[Pending]) -> bool {
        requests
            .iter()
            .filter_map(|p| p.request.request_id.as_ref())
            .any(|rid| self.in_flight_seq(&rid.client_id).is_some_and(|(seq, _)| seq == rid.seq))
    }

    /// The newest sequence number (and digest) of `client_id` in an entry in flight.
    fn in_flight_seq(&self, client_id: &str) -> Option<(u64, [u8; 16])> {
        self.in_flight
            .iter()
            .flat_map(|f| f.entry.requests.iter())
            .filter_map(|r| r.request_id.as_ref())
            .filter(|rid| rid.client_id == client_id)
            .map(|rid| (rid.seq, rid.digest))
            .max_by_key(|(seq, _)| *seq)
    }

    fn bytes_in_flight(&self) -> u64 {
        self.in_flight.iter().map(|f| f.bytes).sum()
    }

    fn not_leader(&self) -> Error {
        not_leader(&self.raft)
    }

    /// The current term if this node leads it, else None.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// Takes every request queued behind `batch`, up to `--max-batch-requests` in all.
    fn gather(&mut self, batch: &mut Vec<Pending>) {
        while batch.len() < self.options.max_batch_requests {
            match self.rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
    }

    /// Evaluates and proposes `batch` and the requests queued behind it. They are gathered
    /// only once the pipeline has room, so that requests arriving while it is full join one
    /// entry instead of each starting their own.
    async fn process(&mut self, mut batch: Vec<Pending>) {
        if let Some(cause) = self.sm.storage_fault() {
            // Met elsewhere (a read, a backup's copy): this node proposes nothing more.
            self.fail_stop.trip(&cause);
        }
        if let Some(e) = self.fail_stop.error() {
            self.gather(&mut batch);
            for p in batch {
                let _ = p.reply.send(Err(clone_error(&e)));
            }
            return;
        }
        let Some(term) = self.leading_term() else {
            self.gather(&mut batch);
            self.ready_term = None;
            for p in batch {
                let _ = p.reply.send(Err(self.not_leader()));
            }
            return;
        };
        if self.options.writes.is_paused() {
            self.gather(&mut batch);
            for p in batch {
                let _ = p.reply.send(Err(handing_off()));
            }
            return;
        }
        let fenced = self.fence(term).await;
        self.gather(&mut batch);
        crate::stats::BATCH_REQUESTS.observe(batch.len() as f64);
        if let Err(e) = fenced {
            let e = self.checked(e);
            for p in batch {
                let _ = p.reply.send(Err(clone_error(&e)));
            }
            return;
        }
        let work = match self.dedup(batch, term) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "reading request records failed");
                return;
            }
        };
        if let Some(e) = self.fail_stop.error() {
            // Reading an exactly-once record failed: nothing of the batch is proposed.
            answer_all(work, &e);
            return;
        }
        if work.is_empty() {
            return;
        }
        self.evaluate_and_propose(work, term).await;
    }

    /// `e`, unless it is this node's store failing: then the node stops (`fail_stop`).
    fn checked(&self, e: Error) -> Error {
        self.fail_stop.check(e, self.sm.storage_fault())
    }

    /// Waits until this node may evaluate in `term` over the entries in flight: the term's
    /// blank entry is applied, no entry of the term has failed since (else every entry of the
    /// term resolves first), and the pipeline has room (`--write-pipeline-depth` entries and
    /// `--max-entry-bytes` in flight). Also records the cluster id once.
    async fn fence(&mut self, term: u64) -> Result<(), Error> {
        loop {
            if self.ready_term == Some(term) {
                let deadline = tokio::time::Instant::now() + self.options.write_timeout;
                self.make_room(term, deadline).await?;
                if self.ready_term == Some(term) {
                    return Ok(());
                }
                continue;
            }
            // Entries of earlier terms: once this term's blank entry is applied (below), each
            // of them is applied or never will be, so the state shows them as they are.
            self.in_flight.retain(|f| f.term == term);
            let deadline = tokio::time::Instant::now() + self.options.write_timeout;
            self.drain(term, deadline).await?;
            let id = self.id;
            let waited = self
                .raft
                .wait(Some(self.options.write_timeout))
                .metrics(
                    |m| {
                        m.current_term != term
                            || m.current_leader != Some(id)
                            || m.last_applied.is_some_and(|l| l.leader_id.term == term)
                    },
                    "blank entry of the term applied",
                )
                .await;
            match waited {
                Ok(m) if m.current_term == term && m.current_leader == Some(id) => {}
                Ok(_) => return Err(self.not_leader()),
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "leader of term {term} could not commit its first entry within {:?}: is a \
                         majority of nodes reachable?",
                        self.options.write_timeout
                    )))
                }
            }
            if self.sm.cluster_id()?.is_none() {
                let cluster_id = new_cluster_id();
                info!(%cluster_id, term, "recording the cluster id");
                let mut cs = ChangeSet::new(vec![]);
                cs.init_cluster_id = Some(cluster_id);
                let done = Completion::new(self, term, vec![], vec![], vec![]);
                self.submit(cs, term, done).await?;
                self.drain(term, tokio::time::Instant::now() + self.options.write_timeout).await?;
                if self.sm.cluster_id()?.is_none() {
                    return Err(Error::Unavailable(format!(
                        "leader of term {term} could not record the cluster id; retry"
                    )));
                }
            }
            info!(term, "leader ready: the term's first entry is applied; accepting writes");
            self.ready_term = Some(term);
        }
    }

    /// Waits until the pipeline has room for one more entry, or `deadline`.
    async fn make_room(&mut self, term: u64, deadline: tokio::time::Instant) -> Result<(), Error> {
        while self.in_flight.len() >= self.options.write_pipeline_depth.max(1)
            || (!self.in_flight.is_empty() && self.bytes_in_flight() >= self.options.max_entry_bytes)
        {
            self.wait_oldest(term, deadline).await?;
        }
        Ok(())
    }

    /// Waits until every entry in flight has resolved, or `deadline`.
    async fn drain(&mut self, term: u64, deadline: tokio::time::Instant) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.wait_oldest(term, deadline).await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self, term: u64, deadline: tokio::time::Instant) -> Result<(), Error> {
        match tokio::time::timeout_at(deadline, oldest(&mut self.in_flight)).await {
            Ok(applied) => {
                self.settled(applied);
                Ok(())
            }
            Err(_) => Err(Error::Unavailable(format!(
                "an earlier write of term {term} has not committed within {:?}: is a majority of \
                 nodes reachable?",
                self.options.write_timeout
            ))),
        }
    }

    /// Answers recorded requests from their records and merges duplicates within the batch;
    /// holds back retries of requests in flight; refuses a request id reused for other
    /// statements, a sequence number older than one already taken for its client, and sequence
    /// numbers that jump so far that the client id could never be used again.
    fn dedup(&mut self, batch: Vec<Pending>, term: u64) -> Result<Vec<Work>, Error> {
        let mut work: Vec<Work> = Vec::with_capacity(batch.len());
        let mut seen: HashMap<(String, u64), usize> = HashMap::new();
        // The newest sequence number per client taken in this batch.
        let mut newest: HashMap<String, u64> = HashMap::new();
        for p in batch {
            let Some(rid) = p.request.request_id.clone() else {
                work.push(Work { request: p.request, replies: vec![(p.reply, p.span)], cancel: p.cancel });
                continue;
            };
            if let Some(&i) = seen.get(&(rid.client_id.clone(), rid.seq)) {
                let first = work[i].request.request_id.as_ref().map(|r| r.digest);
                if first != Some(rid.digest) {
                    let _ = p.reply.send(Err(Error::InvalidArgument(rid.reused())));
                } else {
                    work[i].replies.push((p.reply, p.span));
                }
                continue;
            }
            let taken = match (self.in_flight_seq(&rid.client_id), newest.get(&rid.client_id)) {
                (Some((seq, digest)), _) if seq == rid.seq => {
                    if digest == rid.digest {
                        debug!(parent: &p.span, client_id = %rid.client_id, seq = rid.seq, "a retry of a request in flight: held until it resolves");
                        self.held.push(p);
                    } else {
                        let _ = p.reply.send(Err(Error::InvalidArgument(rid.reused())));
                    }
                    continue;
                }
                (a, b) => a.map(|(seq, _)| seq).into_iter().chain(b.copied()).max(),
            };
            if let Some(taken) = taken.filter(|&t| t > rid.seq) {
                let _ = p.reply.send(Err(Error::InvalidArgument(format!(
                    "request {} of client {:?} is older than its request {taken}, which is being \
                     committed: a client id sends one request at a time, with rising sequence numbers",
                    rid.seq, rid.client_id
                ))));
                continue;
            }
            let record = match self.sm.request_record(&rid.client_id) {
                Ok(r) => r,
                Err(e) => {
                    let _ = p.reply.send(Err(self.checked(e.into())));
                    continue;
                }
            };
            let last = record.as_ref().map_or(0, |r| r.seq);
            match record {
                Some(rec) if rec.seq == rid.seq && rec.digest != rid.digest => {
                    let _ = p.reply.send(Err(Error::InvalidArgument(rid.reused())));
                }
                Some(rec) if rec.seq == rid.seq => {
                    debug!(parent: &p.span, client_id = %rid.client_id, seq = rid.seq, "answered from the exactly-once record");
                    let applied = self.sm.applied_index().unwrap_or(0);
                    let _ = p.reply.send(Ok(WriteReply {
                        outcomes: rec.outcomes,
                        receipt: receipt(self.id, &self.sm, term, applied),
                    }));
                }
                Some(rec) if rec.seq > rid.seq => {
                    let _ = p.reply.send(Err(Error::InvalidArgument(format!(
                        "request {} of client {:?} is older than its last applied request {}: its result \
                         is no longer kept (a client must not reuse a sequence number)",
                        rid.seq, rid.client_id, rec.seq
                    ))));
                }
                _ if rid.seq - last > MAX_SEQ_GAP => {
                    let _ = p.reply.send(Err(Error::InvalidArgument(format!(
                        "request {} of client {:?} jumps more than {MAX_SEQ_GAP} past its last applied \
                         request {last}: sequence numbers go up by one per new request (a jump to \
                         the top would lock this client id out for good)",
                        rid.seq, rid.client_id
                    ))));
                }
                _ => {
                    seen.insert((rid.client_id.clone(), rid.seq), work.len());
                    newest.insert(rid.client_id.clone(), rid.seq);
                    work.push(Work {
                        request: p.request,
                        replies: vec![(p.reply, p.span)],
                        cancel: p.cancel,
                    });
                }
            }
        }
        Ok(work)
    }

    async fn evaluate_and_propose(&mut self, work: Vec<Work>, term: u64) {
        let requests: Vec<(WriteRequest, Arc<AtomicBool>)> =
            work.iter().map(|w| (w.request.clone(), w.cancel.clone())).collect();
        let limit = self.options.write_eval_timeout;
        let (max_memory, max_rows) = (self.options.max_query_memory, self.options.max_rows_per_request);
        let pool = self.options.memory.clone();
        let sm = self.sm.clone();
        let assumed: Vec<Arc<ChangeSet>> = self.in_flight.iter().map(|f| f.entry.clone()).collect();
        let assumed_empty = assumed.is_empty();
        let ctx = crate::sql::Context {
            now_millis: super::wall_clock_millis(self.options.clock_offset_ms),
            seed: rand::random(),
        };
        let n = requests.len() as u64;
        // Evaluates the batch, every request under its own budget, none past `slice_end`.
        let evaluate_until = move |view: &dyn crate::changeset::ReadView,
                                   slice_end: Option<std::time::Instant>| {
            let mut executor = crate::sql::Executor::new(view, ctx);
            executor.assume(assumed.iter().flat_map(|e| e.requests.iter()).flat_map(|r| r.changes.iter()));
            requests
                .iter()
                .map(|(r, cancel)| {
                    // Each request gets its own deadline, so one slow request does not
                    // starve the others of the batch.
                    let mut budget = crate::sql::Budget::with_timeout(
                        limit,
                        format!("--write-eval-timeout-ms ({limit:?})"),
                    );
                    if let Some(end) = slice_end.filter(|end| budget.deadline.is_none_or(|d| *end < d)) {
                        budget.deadline = Some(end);
                        budget.deadline_source = "the inline slice".into();
                    }
                    budget.cancel = cancel.clone();
                    budget.max_memory = max_memory;
                    budget.pool = Some(pool.clone());
                    budget.max_rows_written = max_rows;
                    executor.set_budget(budget);
                    executor.execute(&r.statements, r.transaction)
                })
                .collect::<Vec<_>>()
        };
        // A batch of a few single-row writes evaluates in microseconds, less than the two thread
        // switches to a blocking thread and back cost. So, as reads do (`read::INLINE_SLICE`),
        // the batch first runs here on this worker, within the slice, when nothing of this
        // leader's is waiting to apply (then the view is the applied state under the state
        // machine's lock, taken only if no apply holds or waits for it). If any request was
        // stopped (by the slice, or cancelled), the whole batch runs again from the start on a
        // blocking thread under its full budgets: evaluation changes nothing, and the same
        // context (clock, seed) gives the same result.
        let inline = if assumed_empty {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _busy = crate::watchdog::EVALUATE.enter(n);
                let slice_end = std::time::Instant::now().checked_add(super::read::INLINE_SLICE);
                sm.try_read(|view| evaluate_until(view, slice_end))
            }))
        } else {
            Ok(None)
        };
        let evaluated = match inline {
            Ok(Some(results))
                if !results.iter().any(|r| matches!(r, Err(crate::sql::Error::Interrupted(_)))) =>
            {
                Ok((results, false))
            }
            Err(panic) => Err(panic),
            Ok(_) => tokio::task::spawn_blocking(move || {
                let _busy = crate::watchdog::EVALUATE.enter(n);
                let evaluate = |view: &dyn crate::changeset::ReadView| evaluate_until(view, None);
                if assumed_empty {
                    // Nothing of this leader's is waiting to apply: hold apply for the evaluation
                    // (the cheapest consistent view).
                    (sm.read(evaluate), false)
                } else {
                    // Pinned: the entries in flight go on applying while this batch evaluates.
                    let (results, _, stopped) = sm.read_pinned(evaluate);
                    (results, stopped)
                }
            })
            .await
            .map_err(|e| e.try_into_panic().unwrap_or_else(|e| Box::new(e.to_string()))),
        };
        let (evaluated, stopped) = match evaluated {
            Ok(e) => e,
            Err(panic) => {
                // A bug in evaluation: answer, propose nothing, keep serving.
                let panic =
                    crate::panic_message(&*panic).unwrap_or_else(|| "a panic without a message".into());
                tracing::error!(error = %panic, "SQL evaluation panicked; the batch was not proposed");
                for w in work {
                    for (reply, _) in w.replies {
                        let _ = reply.send(Err(Error::Unavailable(
                            "internal error while evaluating the request; nothing was applied".into(),
                        )));
                    }
                }
                return;
            }
        };

        // This node's store failed during the evaluation (`Error::Read` of some request, with
        // a storage fault recorded): the node stops, and nothing of the batch is proposed,
        // whatever its other requests evaluated to.
        if let Some(cause) = self.sm.storage_fault() {
            let e = self.fail_stop.trip(&cause);
            answer_all(work, &e);
            return;
        }

        // A request stopped by a non-deterministic error (deadline, cancellation, request
        // limits, a pinned read stopped on purpose) is answered now and contributes nothing:
        // neither changes nor an outcome that an exactly-once record would replay.
        let mut work_left = Vec::with_capacity(work.len());
        let mut evaluated_left = Vec::with_capacity(work.len());
        for (w, result) in work.into_iter().zip(evaluated) {
            match result {
                Ok(r) => {
                    work_left.push(w);
                    evaluated_left.push(r);
                }
                Err(e) => {
                    debug!(error = %e, "request stopped during evaluation; nothing of it is proposed");
                    // A read error of a pinned view that was stopped on purpose is a retry,
                    // not this node's fault (INTERNAL) nor the statement's.
                    let answer = || match &e {
                        crate::sql::Error::Read(why) if stopped => Error::Unavailable(why.clone()),
                        e => Error::Sql(e.clone()),
                    };
                    for (reply, _) in w.replies {
                        let _ = reply.send(Err(answer()));
                    }
                }
            }
        }
        let work = work_left;
        if work.is_empty() {
            return;
        }
        let mut effects = Vec::new();
        let mut position = Vec::new(); // work index -> position in the ChangeSet
        let mut outcomes: Vec<Vec<StatementOutcome>> = Vec::with_capacity(work.len());
        for (w, (changes, outs)) in work.iter().zip(evaluated_left) {
            if changes.is_empty() {
                position.push(None);
            } else {
                position.push(Some(effects.len()));
                effects.push(RequestEffects {
                    request_id: w.request.request_id.clone(),
                    changes,
                    outcomes: outs.clone(),
                });
            }
            outcomes.push(outs);
        }

        if effects.is_empty() {
            self.answer_reads(work, outcomes, term).await;
            return;
        }

        // Bounded entries (--max-entry-bytes, --max-entry-rows): a batch over a bound is split and
        // each half evaluated again (nothing was proposed yet, and the second half then sees the
        // state the first left); a single request over it is refused. The entry is encoded here,
        // once: the log, the peers and apply all take these bytes.
        let rows: u64 = effects.iter().map(|e| (e.changes.len() + e.outcomes.len()) as u64).sum();
        let cs = ChangeSet::new(effects);
        let encoded_len = EncodedChangeSet::encode(&cs).len() as u64;
        let (max, max_rows) = (self.options.max_entry_bytes, self.options.max_entry_rows);
        if encoded_len > max || rows > max_rows {
            let mut work = work;
            if work.len() > 1 {
                debug!(
                    size = encoded_len,
                    rows,
                    requests = work.len(),
                    "batch over the entry bounds: splitting it"
                );
                let second = work.split_off(work.len() / 2);
                Box::pin(self.evaluate_and_propose(work, term)).await;
                if let Err(e) = self.fence(term).await {
                    answer_all(second, &e);
                    return;
                }
                Box::pin(self.evaluate_and_propose(second, term)).await;
                return;
            }
            let over = if encoded_len > max {
                format!("take {encoded_len} bytes in the log, over --max-entry-bytes ({max})")
            } else {
                format!("are {rows} row changes and results, over --max-entry-rows ({max_rows})")
            };
            let e = crate::sql::Error::RequestTooLarge(format!(
                "the write's changes {over}: nothing was applied; split it into smaller requests"
            ));
            answer_all(work, &Error::Sql(e));
            return;
        }
        debug!(entry = %cs, size = encoded_len, in_flight = self.in_flight.len(), "proposing");

        // The batch was evaluated on the state this node had applied as leader of `term`, plus
        // its entries in flight. If it lost that term meanwhile (an evaluation may take
        // seconds) and leads again in a later one, the entries committed in between are missing
        // from what it evaluated: proposing now would write row images computed from a stale
        // state (a lost update). Nothing was proposed, so NOT_LEADER is exact and the client
        // retries at the leader. (The remaining window, from here until openraft's core takes
        // the proposal, is far shorter than the two elections it would take.)
        if self.leading_term() != Some(term) || self.ready_term != Some(term) {
            info!(term, "leadership of the term ended during evaluation; the batch is not proposed");
            self.ready_term = None;
            let e = self.not_leader();
            answer_all(work, &e);
            return;
        }
        let done = Completion::new(self, term, work, position, outcomes);
        if let Err(e) = self.submit(cs, term, done).await {
            warn!(term, error = %e, "the proposal was not taken");
        }
    }

    /// Hands the entry to openraft, in order, and leaves its answers to its completion task.
    async fn submit(&mut self, cs: ChangeSet, term: u64, done: Completion) -> Result<(), Error> {
        let encoded = EncodedChangeSet::encode(&cs);
        let bytes = encoded.len() as u64;
        let writes = self.options.writes.clone();
        // Held until openraft has the entry: a transfer that pauses writes meanwhile waits for
        // it, and reads the log only after (`handoff::WritePause`).
        let Some(_proposing) = writes.proposal().await else {
            // Leadership is moving: this batch, evaluated before the pause, is not proposed.
            let e = handing_off();
            answer_all(done.work, &e);
            return Err(e);
        };
        let rx = match self.raft.client_write_ff(encoded).await {
            Ok(rx) => rx,
            Err(fatal) => {
                self.ready_term = None;
                let e = Error::Unavailable(format!("the Raft core stopped ({fatal}); nothing was proposed"));
                answer_all(done.work, &e);
                return Err(e);
            }
        };
        let (end, flight_done) = oneshot::channel();
        self.in_flight.push_back(Flight { term, entry: Arc::new(cs), bytes, done: flight_done });
        crate::stats::PIPELINE_ENTRIES.observe(self.in_flight.len() as f64);
        tokio::spawn(done.run(rx, end).instrument(tracing::Span::current()));
        Ok(())
    }

    /// A batch that changed nothing proposes no entry. Its reads saw the entries in flight, so
    /// it is answered once they have applied, and after a leadership confirmation, so its reads
    /// are linearizable.
    async fn answer_reads(&mut self, work: Vec<Work>, outcomes: Vec<Vec<StatementOutcome>>, term: u64) {
        let deadline = tokio::time::Instant::now() + self.options.write_timeout;
        let drained = self.drain(term, deadline).await;
        let result = match drained {
            Err(e) => Err(e),
            Ok(()) if self.ready_term != Some(term) => Err(Error::Unavailable(
                "a write this request's reads saw did not commit; nothing was changed: retry".into(),
            )),
            Ok(()) => self.confirm_leadership().await,
        };
        match result {
            Ok(index) => {
                let receipt = receipt(self.id, &self.sm, term, index);
                for (w, outs) in work.into_iter().zip(outcomes) {
                    for (reply, span) in w.replies {
                        debug!(parent: &span, index, "read-only write request answered");
                        let _ =
                            reply.send(Ok(WriteReply { outcomes: outs.clone(), receipt: receipt.clone() }));
                    }
                }
            }
            Err(e) => answer_all(work, &e),
        }
    }

    async fn confirm_leadership(&self) -> Result<u64, Error> {
        match self.read_index.confirm().await {
            Confirmed::Ready { index } => Ok(index),
            Confirmed::NotLeader => Err(self.not_leader()),
            Confirmed::Timeout => Err(Error::Unavailable(format!(
                "could not confirm leadership within {:?}: is a majority reachable?",
                self.options.read_timeout
            ))),
        }
    }
}

/// What answering one proposed entry needs: its requests' reply channels and outcomes. Runs
/// as its own task, so the sequencer evaluates the next batch meanwhile.
struct Completion {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    term: u64,
    write_timeout: std::time::Duration,
    work: Vec<Work>,
    /// Work index → the request's position in the entry (None: it changed nothing).
    position: Vec<Option<usize>>,
    outcomes: Vec<Vec<StatementOutcome>>,
}

impl Completion {
    fn new(
        task: &Task,
        term: u64,
        work: Vec<Work>,
        position: Vec<Option<usize>>,
        outcomes: Vec<Vec<StatementOutcome>>,
    ) -> Completion {
        Completion {
            id: task.id,
            raft: task.raft.clone(),
            sm: task.sm.clone(),
            term,
            write_timeout: task.options.write_timeout,
            work,
            position,
            outcomes,
        }
    }

    /// Waits until the entry is applied here, leadership or the term changes, or the write
    /// timeout passes, and answers; every failure after the proposal is `Indeterminate`. Then
    /// tells the sequencer the entry's fate (`end`), which after a timeout means waiting on.
    async fn run(mut self, rx: oneshot::Receiver<ClientWriteResult<TypeConfig>>, end: oneshot::Sender<bool>) {
        let (id, term) = (self.id, self.term);
        // The server metrics change with the vote and the leader only (the full metrics are
        // sent on every turn of the core's loop, which woke this task several times per
        // write), and close when the core ends.
        let mut metrics = self.raft.server_metrics();
        let deposed = async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.vote.leader_id().get_term() != term || m.current_leader != Some(id) {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::pin!(deposed, rx);
        let first = tokio::select! {
            r = &mut rx => Some(r),
            _ = &mut deposed => None,
            _ = tokio::time::sleep(self.write_timeout) => None,
        };
        let applied = match first {
            Some(Ok(Ok(resp))) => {
                for (pos, recorded) in resp.data.duplicates {
                    if let Some(i) = self.position.iter().position(|p| *p == Some(pos)) {
                        self.outcomes[i] = recorded;
                    }
                }
                let index = resp.log_id.index;
                let receipt = receipt(self.id, &self.sm, term, index);
                for (w, outs) in
                    std::mem::take(&mut self.work).into_iter().zip(std::mem::take(&mut self.outcomes))
                {
                    for (reply, span) in w.replies {
                        debug!(parent: &span, index, "write answered");
                        let _ =
                            reply.send(Ok(WriteReply { outcomes: outs.clone(), receipt: receipt.clone() }));
                    }
                }
                true
            }
            Some(Ok(Err(e))) => {
                self.fail(format!("the proposal failed: {e}"));
                false
            }
            Some(Err(_)) => {
                self.fail("the Raft core stopped".into());
                false
            }
            None => {
                let reason = if leads(&self.raft, id, term) {
                    format!("the write did not commit within {:?}", self.write_timeout)
                } else {
                    format!("leadership of term {term} was lost before the write was applied")
                };
                warn!(term, %reason, "write outcome unknown");
                self.fail(reason);
                // The entry may still apply in this term: the sequencer must know before it
                // evaluates anything over it again.
                tokio::select! {
                    r = &mut rx => matches!(r, Ok(Ok(_))),
                    _ = &mut deposed => false,
                }
            }
        };
        let _ = end.send(applied);
    }

    /// Answers `Indeterminate` to every request that proposed something; the others had no
    /// effect, and are told to retry at the leader.
    fn fail(&mut self, reason: String) {
        for (w, pos) in std::mem::take(&mut self.work).into_iter().zip(&self.position) {
            for (reply, _) in w.replies {
                let _ = match pos {
                    Some(_) => reply.send(Err(indeterminate(&self.raft, reason.clone()))),
                    None => reply.send(Err(not_leader(&self.raft))),
                };
            }
        }
    }
}

fn leads(raft: &Raft, id: NodeId, term: u64) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.current_term == term && m.current_leader == Some(id)
}

fn not_leader(raft: &Raft) -> Error {
    let m = raft.metrics().borrow().clone();
    let leader_addr =
        m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    Error::NotLeader { leader_id: m.current_leader, leader_addr, term: m.current_term }
}

fn indeterminate(raft: &Raft, reason: String) -> Error {
    match not_leader(raft) {
        Error::NotLeader { leader_id, leader_addr, term } => {
            Error::Indeterminate { reason, leader_id, leader_addr, term }
        }
        _ => unreachable!("not_leader always returns NotLeader"),
    }
}

fn receipt(id: NodeId, sm: &StateMachine, term: u64, index: u64) -> Receipt {
    let applied = sm.applied_index().unwrap_or(0).max(index);
    Receipt {
        node_id: id,
        role: Role::Leader,
        term,
        index,
        level: Consistency::Strong,
        applied_index: applied,
        session_token: super::session_token(sm, index),
    }
}

fn answer_all(work: Vec<Work>, e: &Error) {
    for w in work {
        for (reply, _) in w.replies {
            let _ = reply.send(Err(clone_error(e)));
        }
    }
}

fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Errors are answered to every request of a batch; the enum holds a non-Clone source only in
/// variants that never reach here through this path, so those are rendered as text.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::NotLeader { leader_id, leader_addr, term } => {
            Error::NotLeader { leader_id: *leader_id, leader_addr: leader_addr.clone(), term: *term }
        }
        Error::Indeterminate { reason, leader_id, leader_addr, term } => Error::Indeterminate {
            reason: reason.clone(),
            leader_id: *leader_id,
            leader_addr: leader_addr.clone(),
            term: *term,
        },
        Error::Timeout(s) => Error::Timeout(s.clone()),
        Error::Token(s) => Error::Token(s.clone()),
        Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
        Error::NotFound(s) => Error::NotFound(s.clone()),
        Error::Sql(e) => Error::Sql(e.clone()),
        Error::Unavailable(s) => Error::Unavailable(s.clone()),
        other => Error::Unavailable(other.to_string()),
    }
}
