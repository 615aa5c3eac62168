//! The `Sql` service: Execute (writes through the sequencer) and Query (reads at a level).

use super::auth::{Auth, Caller, Permission};
use super::{forwarded, invalid, receipt_to_pb, row_to_pb, statement_error, status_from};
use crate::changeset::{RequestId, Value};
use crate::raft::read::{self, ReadRequest};
use crate::raft::sequencer::WriteRequest;
use crate::raft::{Consistency, Core};
use raftsql_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tracing::Instrument;

/// The largest client message the server accepts (16 MiB): a larger one is refused by tonic
/// with a clear `OutOfRange` status before it is decoded.
pub const MAX_CLIENT_MESSAGE: usize = 16 << 20;
/// Rows per streamed page unless the request asks otherwise.
const DEFAULT_PAGE_ROWS: usize = 1000;
/// The longest client id accepted in a request id.
const MAX_CLIENT_ID: usize = 64;

/// The caller's deadline from the `grpc-timeout` header ("<digits><H|M|S|m|u|n>").
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// PERMISSION_DENIED unless `caller` may run every statement of the request: reading
/// statements need `read`, writing ones `write`, schema changes `ddl` (judged from the tokens,
/// before anything is evaluated: [`crate::sql::effects`]). A request of only BEGIN/COMMIT still
/// needs `write`: Execute is the write call.
fn authorize_execute<'a>(caller: &Caller, texts: impl Iterator<Item = &'a str>) -> Result<(), tonic::Status> {
    // A caller holding every permission (always, without a users file) needs no look at the
    // statements: the write path does not tokenize them an extra time.
    if caller.permissions == super::auth::Permissions::all() {
        return Ok(());
    }
    let effects = texts.map(crate::sql::effects).fold(Default::default(), crate::sql::Effects::union);
    if effects.reads {
        caller.require(Permission::Read, "read rows")?;
    }
    if effects.ddl {
        caller.require(Permission::Ddl, "change the schema (CREATE, DROP, ALTER)")?;
    }
    if effects.writes || effects == Default::default() {
        caller.require(Permission::Write, "change rows (INSERT, UPDATE, DELETE)")?;
    }
    Ok(())
}

/// An ExecuteRequest's request id, checked: a client id of 1 to 64 bytes, a sequence from 1.
/// A request id's client id and sequence number, checked (the digest is added once the
/// statements are decoded: [`RequestId::new`]).
pub fn request_id_from_pb(r: Option<pb::RequestId>) -> Result<Option<(String, u64)>, tonic::Status> {
    match r {
        None => Ok(None),
        Some(r) if r.client_id.is_empty() || r.client_id.len() > MAX_CLIENT_ID => Err(invalid(format!(
            "request_id.client_id must be 1 to {MAX_CLIENT_ID} bytes, got {}",
            r.client_id.len()
        ))),
        Some(r) if r.seq == 0 => Err(invalid("request_id.seq must be at least 1")),
        Some(r) => Ok(Some((r.client_id, r.seq))),
    }
}

/// A QueryRequest's consistency level, checked: a known level, BOUNDED with a staleness.
pub fn consistency_from_pb(consistency: i32, max_staleness_ms: u64) -> Result<Consistency, tonic::Status> {
    Consistency::from_pb(consistency, max_staleness_ms).map_err(invalid)
}

pub struct SqlService {
    pub core: Arc<Core>,
    pub auth: Arc<Auth>,
    /// Counts every answer by outcome and its latency (`/metrics`).
    pub metrics: Arc<super::metrics::Metrics>,
}

/// A shed request: RESOURCE_EXHAUSTED with the pause to wait in `retry-after-ms`.
fn overloaded(e: crate::raft::Error) -> tonic::Status {
    let mut status = status_from(e);
    status.metadata_mut().insert("retry-after-ms", crate::raft::RETRY_AFTER_MS.into());
    status
}

fn term_now(core: &Core) -> u64 {
    core.with_metrics(|m| m.current_term)
}

/// The stream of a query's pages.
pub type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::QueryResponse, tonic::Status>> + Send>>;

/// Each call is counted by its outcome, with its latency (`service::metrics`).
#[tonic::async_trait]
impl pb::sql_server::Sql for SqlService {
    async fn execute(
        &self,
        request: tonic::Request<pb::ExecuteRequest>,
    ) -> Result<tonic::Response<pb::ExecuteResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        let result = self.execute_uncounted(request).await;
        self.metrics.write_done(super::metrics::outcome(&result), started.elapsed());
        result
    }

    type QueryStream = QueryStream;

    async fn query(
        &self,
        request: tonic::Request<pb::QueryRequest>,
    ) -> Result<tonic::Response<QueryStream>, tonic::Status> {
        let started = std::time::Instant::now();
        let r = request.get_ref();
        // The level asked for (an invalid one counts as the default, STRONG).
        let level =
            consistency_from_pb(r.consistency, r.max_staleness_ms.max(1)).unwrap_or(Consistency::Strong);
        let result = self.query_uncounted(request).await;
        self.metrics.read_done(level, super::metrics::outcome(&result), started.elapsed());
        result
    }
}

impl SqlService {
    async fn execute_uncounted(
        &self,
        request: tonic::Request<pb::ExecuteRequest>,
    ) -> Result<tonic::Response<pb::ExecuteResponse>, tonic::Status> {
        let caller = self.auth.caller(&request).await?;
        let _admitted = self.core.admit().map_err(overloaded)?;
        let started = std::time::Instant::now();
        let caller_timeout = grpc_timeout(request.metadata());
        let was_forwarded = request.metadata().contains_key(super::FORWARDED);
        let (metadata, _, req) = request.into_parts();
        let original = (self.core.options().forward_writes && !was_forwarded).then(|| req.clone());
        // Stored under the caller's name: one user cannot replay or lock out another's ids.
        let request_id =
            request_id_from_pb(req.request_id.clone())?.map(|(c, seq)| (caller.scoped_client_id(&c), seq));
        if req.statements.is_empty() {
            return Err(invalid("the request has no statements"));
        }
        // Request limits, before anything is evaluated or proposed; then what the statements
        // may do, against what the caller may.
        crate::sql::check_request(
            req.statements.iter().map(|s| (s.sql.as_str(), s.params.len())),
            &self.core.options().request_limits,
        )
        .map_err(|e| status_from(e.into()))?;
        authorize_execute(&caller, req.statements.iter().map(|s| s.sql.as_str()))?;
        if metadata.contains_key(super::RESTORE) {
            caller.require(Permission::Backup, "restore a backup")?;
        }
        let span = tracing::info_span!(
            "execute",
            node_id = self.core.id(),
            term = term_now(&self.core),
            user = caller.user.as_deref().unwrap_or(""),
            client_id = request_id.as_ref().map(|r| r.0.as_str()).unwrap_or(""),
            request_id = request_id.as_ref().map(|r| r.1).unwrap_or(0),
        );
        let statements: Vec<(String, Vec<crate::changeset::Value>)> = req
            .statements
            .into_iter()
            .map(|s| (s.sql, s.params.into_iter().map(Value::from_pb).collect()))
            .collect();
        if req.min_replicas > 1 {
            self.core.check_min_replicas(req.min_replicas as usize).map_err(status_from)?;
        }
        let request_id = request_id.map(|(c, seq)| RequestId::new(c, seq, &statements, req.transaction));
        let write = WriteRequest { statements, transaction: req.transaction, request_id };
        let reply = match self.core.write(write).instrument(span.clone()).await {
            Ok(r) => r,
            Err(crate::raft::Error::NotLeader { leader_id: Some(_), .. }) if original.is_some() => {
                let addr = super::forward::leader_target(&self.core, was_forwarded)?;
                tracing::debug!(parent: &span, leader = %addr, "forwarding the write to the leader");
                let request = forwarded(original.expect("checked above"), &metadata, Some(&caller));
                return super::forward::client(&self.core, &addr)?
                    .forward_execute(request)
                    .await
                    .map_err(|s| super::forward::failed(&addr, s));
            }
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, "execute failed");
                return Err(status_from(e));
            }
        };
        if req.min_replicas > 1 {
            // Answer within the caller's deadline (with a margin), so a shortfall arrives as a
            // TIMEOUT that says how many nodes applied the write, not as a cut connection.
            let budget = caller_timeout.map_or(self.core.options().write_timeout, |t| {
                t.mul_f64(0.8).min(self.core.options().write_timeout)
            });
            let timeout = budget.saturating_sub(started.elapsed());
            self.core
                .wait_replicas(reply.receipt.index, req.min_replicas as usize, timeout)
                .await
                .map_err(status_from)?;
        }
        let results = reply
            .outcomes
            .into_iter()
            .map(|o| match o {
                Ok(r) => pb::StatementResult {
                    columns: r.columns,
                    rows: r.rows.iter().map(|row| row_to_pb(row)).collect(),
                    rows_affected: r.rows_affected,
                    last_insert_id: r.last_insert_id,
                    error: None,
                },
                Err(e) => pb::StatementResult { error: Some(statement_error(&e)), ..Default::default() },
            })
            .collect();
        Ok(tonic::Response::new(pb::ExecuteResponse {
            results,
            receipt: Some(receipt_to_pb(&reply.receipt)),
        }))
    }

    async fn query_uncounted(
        &self,
        request: tonic::Request<pb::QueryRequest>,
    ) -> Result<tonic::Response<QueryStream>, tonic::Status> {
        let arrived = std::time::Instant::now();
        let caller = self.auth.caller(&request).await?;
        caller.require(Permission::Read, "read rows")?;
        // Held by the response stream below, so a slow reader still counts as in flight.
        let admitted = self.core.admit().map_err(overloaded)?;
        let caller_timeout = grpc_timeout(request.metadata());
        let req = request.into_inner();
        crate::sql::check_request(
            [(req.sql.as_str(), req.params.len())],
            &self.core.options().request_limits,
        )
        .map_err(|e| status_from(e.into()))?;
        let level = consistency_from_pb(req.consistency, req.max_staleness_ms)?;
        let span = tracing::info_span!(
            "query",
            node_id = self.core.id(),
            term = term_now(&self.core),
            level = ?level,
            user = caller.user.as_deref().unwrap_or("")
        );
        // tonic drops this future when the caller cancels, disconnects or runs out of time; the
        // guard then stops the evaluation, which also frees the state machine's read lock.
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _stop_when_dropped = crate::sql::CancelOnDrop(cancel.clone());
        let read = ReadRequest {
            sql: req.sql,
            params: req.params.into_iter().map(Value::from_pb).collect(),
            level,
            session_token: Some(req.session_token).filter(|t| !t.is_empty()),
            caller_timeout,
            arrived,
            cancel,
        };
        let (result, receipt) =
            read::query(&self.core, read).instrument(span.clone()).await.map_err(|e| {
                tracing::debug!(parent: &span, error = %e, "query failed");
                // This node's store failing is not the query's answer: the node stops.
                status_from(self.core.storage_checked(e))
            })?;
        // The result stays in memory until the reader has taken it all: it is held against the
        // node's memory (--max-node-memory), so slow readers cannot pile results up unbounded.
        let held = self
            .core
            .options()
            .memory
            .hold(crate::raft::read::estimate_size(&result))
            .map_err(|e| status_from(e.into()))?;
        let page = if req.page_rows == 0 { DEFAULT_PAGE_ROWS } else { req.page_rows as usize };
        let mut pages: Vec<pb::QueryResponse> = result
            .rows
            .chunks(page)
            .map(|rows| pb::QueryResponse {
                rows: rows.iter().map(|r| row_to_pb(r)).collect(),
                ..Default::default()
            })
            .collect();
        if pages.is_empty() {
            pages.push(pb::QueryResponse::default());
        }
        pages[0].columns = result.columns;
        pages.last_mut().expect("at least one page").receipt = Some(receipt_to_pb(&receipt));
        // One page has nothing to pace: the task below would put it in its channel and end at
        // once, letting go of both holds. The same without a task and a wake-up per read (a
        // point SELECT's case).
        let pages = match <[pb::QueryResponse; 1]>::try_from(pages) {
            Ok([page]) => {
                drop((admitted, held));
                return Ok(tonic::Response::new(Box::pin(futures::stream::once(async move { Ok(page) }))));
            }
            Err(pages) => pages,
        };
        // A reader must take each page within --query-timeout: one that stops reading (and
        // neither closes nor resets its stream) would otherwise keep its in-flight slot and its
        // result forever. Past it, the rest of the result and both holds are dropped, and the
        // reader gets DEADLINE_EXCEEDED after the pages already on their way.
        let idle = self.core.options().query_timeout;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = finished.clone();
        tokio::spawn(
            async move {
                let _held_until_the_stream_ends = (admitted, held);
                for p in pages {
                    match tokio::time::timeout(idle, tx.send(p)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return, // the reader went away
                        Err(_) => {
                            tracing::warn!(?idle, "a query's reader took no page within --query-timeout-ms: its result was dropped");
                            return;
                        }
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            }
            .instrument(span),
        );
        Ok(tonic::Response::new(Box::pin(Pages { rx, finished, idle, ended: false })))
    }
}

/// A query's pages as the sending task hands them over; ends with DEADLINE_EXCEEDED if the task
/// gave up on a reader that stopped reading.
struct Pages {
    rx: tokio::sync::mpsc::Receiver<pb::QueryResponse>,
    finished: Arc<std::sync::atomic::AtomicBool>,
    idle: Duration,
    ended: bool,
}

impl Stream for Pages {
    type Item = Result<pb::QueryResponse, tonic::Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(p)) => Poll::Ready(Some(Ok(p))),
            Poll::Ready(None) => {
                self.ended = true;
                if self.finished.load(std::sync::atomic::Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                        "the reader took no page of this result for {:?} (--query-timeout-ms): the rest \
                         of it was dropped; read a result as it arrives, or ask for fewer rows",
                        self.idle
                    )))))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in [
            ("9999m", Duration::from_millis(9999)),
            ("2S", Duration::from_secs(2)),
            ("5u", Duration::from_micros(5)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d));
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
