//! The write sequencer (design.md §3): a single task on every node that, while the node leads,
//! turns batches of write requests into one `ChangeSet` log entry each.
//!
//! # One batch in flight
//! The task takes every request queued since the last batch (up to `Options::max_batch_requests`),
//! evaluates them in order with one `sql::Executor` over the applied state (each statement sees
//! the effects of the statements before it), proposes the batch's `ChangeSet` as one entry and
//! waits until openraft reports it applied on this node. Only then does it evaluate the next
//! batch, so evaluation always sees exactly the state the entry will be applied on. Group commit
//! comes for free: while one batch replicates and fsyncs, the next one queues.
//!
//! # Terms fence
//! - The task evaluates nothing in a term before the leader's blank entry of that term is
//!   applied locally (`last_applied.term == current_term`): by then every entry of earlier
//!   terms that will ever commit is applied, so the exactly-once records are complete.
//! - A proposal that does not come back applied (leadership or term changed, or the write
//!   timeout passed) fails as `Indeterminate`: its entry may still commit under another leader.
//!   The client retries with the same request id and the exactly-once record decides.
//! - A proposal abandoned by timeout stays "in flight": the next batch of the same term is not
//!   evaluated until it resolves (it would be evaluated on a state missing that entry); requests
//!   meanwhile fail as `Unavailable` with nothing proposed.
//!
//! # Exactly once
//! Before evaluating, a request whose id is already recorded (same client id, same seq, same
//! digest of its statements) is answered from the record; the same id with another digest, an
//! older seq, or a seq more than [`MAX_SEQ_GAP`] past the record is refused; a second copy inside
//! one batch shares the first one's answer. Apply checks again (`Applied::duplicates`), which covers a retry that
//! raced its original through a leader change.
//!
//! # Reads inside Execute
//! A batch that changes nothing (only SELECTs or only failed statements) proposes no entry; it
//! confirms leadership with `ensure_linearizable` before answering, so its reads are
//! linearizable too.

use super::read_index::{Confirmed, ReadIndex};
use super::{Consistency, Error, Options, Receipt, Role, WriteReply};
use crate::changeset::{ChangeSet, EncodedChangeSet, RequestEffects, RequestId, StatementOutcome, Value};
use crate::store::StateMachine;
use crate::typ::{NodeId, Raft};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::ServerState;
use std::collections::HashMap;
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
    ) -> Sequencer {
        let (tx, rx) = mpsc::channel(options.max_batch_requests * 4);
        let task = Task { id, raft, sm, read_index, options, rx, ready_term: None, in_flight: None };
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

type ProposalResult = Result<
    ClientWriteResponse<crate::typ::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, crate::typ::Member>>,
>;

/// A proposal whose outcome was not awaited to the end.
struct InFlight {
    term: u64,
    done: oneshot::Receiver<ProposalResult>,
}

struct Task {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    read_index: ReadIndex,
    options: Options,
    rx: mpsc::Receiver<Pending>,
    /// The term whose blank entry this node has seen applied while leading it.
    ready_term: Option<u64>,
    in_flight: Option<InFlight>,
}

/// A request to evaluate, with every reply channel waiting on it (duplicates share one).
struct Work {
    request: WriteRequest,
    replies: Vec<(ReplyTx, tracing::Span)>,
    /// The first caller's cancellation flag (duplicates wait on the same evaluation).
    cancel: Arc<AtomicBool>,
}

impl Task {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch_requests {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            crate::stats::BATCH_REQUESTS.observe(batch.len() as f64);
            self.process(batch).await;
        }
        debug!("sequencer stopped");
    }

    fn not_leader(&self) -> Error {
        let m = self.raft.metrics().borrow().clone();
        let leader_addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        Error::NotLeader { leader_id: m.current_leader, leader_addr, term: m.current_term }
    }

    fn indeterminate(&self, reason: String) -> Error {
        match self.not_leader() {
            Error::NotLeader { leader_id, leader_addr, term } => {
                Error::Indeterminate { reason, leader_id, leader_addr, term }
            }
            _ => unreachable!("not_leader always returns NotLeader"),
        }
    }

    fn receipt(&self, term: u64, index: u64) -> Receipt {
        let applied = self.sm.applied_index().unwrap_or(0).max(index);
        Receipt {
            node_id: self.id,
            role: Role::Leader,
            term,
            index,
            level: Consistency::Strong,
            applied_index: applied,
            session_token: super::session_token(&self.sm, index),
        }
    }

    /// The current term if this node leads it, else None.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    async fn process(&mut self, batch: Vec<Pending>) {
        let Some(term) = self.leading_term() else {
            self.ready_term = None;
            for p in batch {
                let _ = p.reply.send(Err(self.not_leader()));
            }
            return;
        };
        if self.options.handing_off.load(std::sync::atomic::Ordering::SeqCst) {
            for p in batch {
                let _ = p.reply.send(Err(Error::Unavailable(
                    "leadership is moving to another node (a transfer, or this node is shutting down); \
                     retry: the new leader takes writes within moments"
                        .into(),
                )));
            }
            return;
        }
        if let Err(e) = self.fence(term).await {
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
        if work.is_empty() {
            return;
        }
        self.evaluate_and_propose(work, term).await;
    }

    /// Waits until this node may evaluate in `term`: the previous proposal of the term has
    /// resolved and the term's blank entry is applied. Also records the cluster id once.
    async fn fence(&mut self, term: u64) -> Result<(), Error> {
        if let Some(flight) = self.in_flight.take() {
            if flight.term == term {
                let mut done = flight.done;
                match tokio::time::timeout(self.options.write_timeout, &mut done).await {
                    Ok(_) => {}
                    Err(_) => {
                        self.in_flight = Some(InFlight { term, done });
                        return Err(Error::Unavailable(format!(
                            "an earlier write of term {term} has not committed within {:?}: is a \
                             majority of nodes reachable?",
                            self.options.write_timeout
                        )));
                    }
                }
            }
        }
        if self.ready_term == Some(term) {
            return Ok(());
        }
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
                    "leader of term {term} could not commit its first entry within {:?}: is a majority \
                     of nodes reachable?",
                    self.options.write_timeout
                )))
            }
        }
        if self.sm.cluster_id()?.is_none() {
            let cluster_id = new_cluster_id();
            info!(%cluster_id, term, "recording the cluster id");
            let mut cs = ChangeSet::new(vec![]);
            cs.init_cluster_id = Some(cluster_id);
            match self.propose(EncodedChangeSet::encode(&cs), term).await {
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        info!(term, "leader ready: the term's first entry is applied; accepting writes");
        self.ready_term = Some(term);
        Ok(())
    }

    /// Answers recorded requests from their records and merges duplicates within the batch;
    /// refuses a request id reused for other statements, and sequence numbers that jump so far
    /// that the client id could never be used again.
    fn dedup(&self, batch: Vec<Pending>, term: u64) -> Result<Vec<Work>, Error> {
        let mut work: Vec<Work> = Vec::with_capacity(batch.len());
        let mut seen: HashMap<(String, u64), usize> = HashMap::new();
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
            let record = match self.sm.request_record(&rid.client_id) {
                Ok(r) => r,
                Err(e) => {
                    let _ = p.reply.send(Err(e.into()));
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
                        receipt: self.receipt(term, applied),
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
        let ctx = crate::sql::Context {
            now_millis: super::wall_clock_millis(self.options.clock_offset_ms),
            seed: rand::random(),
        };
        let evaluated = tokio::task::spawn_blocking(move || {
            let _busy = crate::watchdog::EVALUATE.enter(requests.len() as u64);
            sm.read(|view| {
                let mut executor = crate::sql::Executor::new(view, ctx);
                requests
                    .iter()
                    .map(|(r, cancel)| {
                        // Each request gets its own deadline, so one slow request does not
                        // starve the others of the batch.
                        let mut budget = crate::sql::Budget::with_timeout(
                            limit,
                            format!("--write-eval-timeout-ms ({limit:?})"),
                        );
                        budget.cancel = cancel.clone();
                        budget.max_memory = max_memory;
                        budget.pool = Some(pool.clone());
                        budget.max_rows_written = max_rows;
                        executor.set_budget(budget);
                        executor.execute(&r.statements, r.transaction)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        let evaluated = match evaluated {
            Ok(e) => e,
            Err(panic) => {
                // A bug in evaluation: answer, propose nothing, keep serving.
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

        // A request stopped by a non-deterministic error (deadline, cancellation, request
        // limits, a local read error) is answered now and contributes nothing: neither changes
        // nor an outcome that an exactly-once record would replay.
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
                    for (reply, _) in w.replies {
                        let _ = reply.send(Err(Error::Sql(e.clone())));
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

        // Bounded entries (--max-entry-bytes, --max-entry-rows): a batch over a bound is split and
        // each half evaluated again (nothing was proposed yet, and each half then sees the state
        // the other left); a single request over it is refused. The entry is encoded here, once:
        // the log, the peers and apply all take these bytes.
        let proposal = if effects.is_empty() {
            None
        } else {
            let rows: u64 = effects.iter().map(|e| (e.changes.len() + e.outcomes.len()) as u64).sum();
            let cs = ChangeSet::new(effects);
            let encoded = EncodedChangeSet::encode(&cs);
            let size = encoded.len() as u64;
            let (max, max_rows) = (self.options.max_entry_bytes, self.options.max_entry_rows);
            if size > max || rows > max_rows {
                let mut work = work;
                if work.len() > 1 {
                    debug!(size, rows, requests = work.len(), "batch over the entry bounds: splitting it");
                    let second = work.split_off(work.len() / 2);
                    Box::pin(self.evaluate_and_propose(work, term)).await;
                    Box::pin(self.evaluate_and_propose(second, term)).await;
                    return;
                }
                let over = if size > max {
                    format!("take {size} bytes in the log, over --max-entry-bytes ({max})")
                } else {
                    format!("are {rows} row changes and results, over --max-entry-rows ({max_rows})")
                };
                let e = crate::sql::Error::RequestTooLarge(format!(
                    "the write's changes {over}: nothing was applied; split it into smaller requests"
                ));
                for w in work {
                    for (reply, _) in w.replies {
                        let _ = reply.send(Err(Error::Sql(e.clone())));
                    }
                }
                return;
            }
            debug!(entry = %cs, size, "proposing");
            Some(encoded)
        };

        // The batch was evaluated on the state this node had applied as leader of `term`. If
        // it lost that term meanwhile (an evaluation may take seconds) and leads again in a
        // later one, the entries committed in between are missing from what it evaluated:
        // proposing now would write row images computed from a stale state (a lost update).
        // Nothing was proposed, so NOT_LEADER is exact and the client retries at the leader.
        // (The remaining window, from here until openraft's core takes the proposal, is far
        // shorter than the two elections it would take.)
        if proposal.is_some() && self.leading_term() != Some(term) {
            info!(term, "leadership of the term ended during evaluation; the batch is not proposed");
            self.ready_term = None;
            for w in work {
                for (reply, _) in w.replies {
                    let _ = reply.send(Err(self.not_leader()));
                }
            }
            return;
        }
        let index = match proposal {
            None => match self.confirm_leadership().await {
                Ok(index) => index,
                Err(e) => {
                    for w in work {
                        for (reply, _) in w.replies {
                            let _ = reply.send(Err(clone_error(&e)));
                        }
                    }
                    return;
                }
            },
            Some(encoded) => match self.propose(encoded, term).await {
                Ok(resp) => {
                    for (pos, recorded) in resp.data.duplicates {
                        if let Some(i) = position.iter().position(|p| *p == Some(pos)) {
                            outcomes[i] = recorded;
                        }
                    }
                    resp.log_id.index
                }
                Err(e) => {
                    for (w, pos) in work.into_iter().zip(position) {
                        for (reply, _) in w.replies {
                            // Requests that proposed nothing had no effect: their answer stands.
                            let _ = match pos {
                                Some(_) => reply.send(Err(clone_error(&e))),
                                None => reply.send(Err(self.not_leader())),
                            };
                        }
                    }
                    return;
                }
            },
        };
        let receipt = self.receipt(term, index);
        for (w, outs) in work.into_iter().zip(outcomes) {
            for (reply, span) in w.replies {
                debug!(parent: &span, index, "write answered");
                let _ = reply.send(Ok(WriteReply { outcomes: outs.clone(), receipt: receipt.clone() }));
            }
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

    /// Proposes one entry and waits until it is applied here, leadership or the term changes,
    /// or the write timeout passes. Every failure after the proposal is `Indeterminate`.
    async fn propose(
        &mut self,
        cs: EncodedChangeSet,
        term: u64,
    ) -> Result<ClientWriteResponse<crate::typ::TypeConfig>, Error> {
        let raft = self.raft.clone();
        let (tx, mut done) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(raft.client_write(cs).await);
        });
        let id = self.id;
        let mut metrics = self.raft.metrics();
        let deposed = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.current_term != term || m.current_leader != Some(id) {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        let result = tokio::select! {
            r = &mut done => r.map_err(|_| "the Raft core stopped".to_string()),
            _ = deposed => Err(format!("leadership of term {term} was lost before the write was applied")),
            _ = tokio::time::sleep(self.options.write_timeout) => {
                Err(format!("the write did not commit within {:?}", self.options.write_timeout))
            }
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.ready_term = None;
                Err(self.indeterminate(format!("the proposal failed: {e}")))
            }
            Err(reason) => {
                warn!(term, %reason, "write outcome unknown");
                self.ready_term = None;
                self.in_flight = Some(InFlight { term, done });
                Err(self.indeterminate(reason))
            }
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
        other => Error::Unavailable(other.to_string()),
    }
}
