//! The SQL engine in process, on two storage backends at once (issue 21): no cluster, no
//! sockets, so SQLite's whole sqllogictest corpus runs in CI in seconds, and every statement
//! also checks that the engine behaves the same over its two implementations of
//! [`ReadView`].
//!
//! # Design
//!
//! An [`EngineDb`] owns, on one worker thread of its own:
//!
//! - a [`MemoryView`]: the in-memory backend (the leader's overlay, the fuzz tests' database);
//! - a real sled store ([`raftsql_server::store::open`] in a temp dir), written only through
//!   [`RaftStateMachine::apply`] with log entries holding [`ChangeSet`]s, as a node applies
//!   committed entries. Nothing is fsynced (`flush_every: None`): this is about the engine,
//!   not durability.
//!
//! A statement is evaluated by [`Executor`] over each backend; the two results (changes,
//! outcomes or the error) must be identical, and the changes are then applied to both. A read
//! query runs through [`sql::query_with`] on each, and the two answers must be identical. At
//! the end of a file, [`EngineDb::finish`] compares every table, row for row in scan order,
//! and the catalog. Any disagreement is a *difference*: the record still gets the in-memory
//! answer (so a file's pass rate is the engine's), and the difference is counted apart
//! ([`crate::slt::FileReport::differences`]) so no pass-rate tolerance can hide one.
//!
//! What this does not cover, and the cluster runs still do: the service's decoding and
//! limits other than [`sql::check_request`], the sequencer's batching and budgets, the client
//! library's value conversions, replication.
//!
//! `MemoryView` is neither `Send` nor `Sync` (it holds a `&dyn ReadView`), so the backends live
//! on the worker thread and the async [`crate::slt::Database`] methods send it jobs over a channel; the
//! thread ends when the `EngineDb` is dropped.

use crate::slt::{DbError, QueryOutput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use raftsql_server::changeset::{
    Change, ChangeSet, EncodedChangeSet, ReadView, RequestEffects, StatementOutcome, StatementResult, Value,
};
use raftsql_server::sql::{self, Budget, Context, Executor, MemoryView, RequestLimits};
use raftsql_server::store::{self, LogStore, StateMachine};
use raftsql_server::typ::{Entry, LogId};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The clock and RANDOM() seed every statement sees: fixed, so both backends and every run
/// evaluate alike.
const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 21 };

/// Where the two backends disagreed.
#[derive(Clone, Debug)]
pub struct Difference {
    /// The statement or query, or what [`EngineDb::finish`] compared.
    pub what: String,
    pub memory: String,
    pub store: String,
}

enum Job {
    Statement(String, oneshot::Sender<Result<(), DbError>>),
    Query(String, oneshot::Sender<Result<QueryOutput, DbError>>),
    Finish(oneshot::Sender<()>),
    /// Tests of the harness itself: evaluates a statement and applies its changes to the
    /// in-memory backend only, so the backends diverge.
    #[cfg(test)]
    MemoryOnly(String, oneshot::Sender<()>),
}

/// The engine in process over a [`MemoryView`] and a sled store; see the module doc.
pub struct EngineDb {
    jobs: mpsc::Sender<Job>,
    differences: Arc<Mutex<Vec<Difference>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl EngineDb {
    /// Opens a fresh sled store in a temp dir and starts the worker thread. `timeout` bounds
    /// each statement's and query's evaluation, as `--write-eval-timeout-ms` and
    /// `--query-timeout-ms` do on a node.
    pub fn start(timeout: Duration) -> Result<EngineDb, String> {
        let differences = Arc::new(Mutex::new(Vec::new()));
        let (jobs, rx) = mpsc::channel();
        let (ready, opened) = mpsc::channel();
        let worker = {
            let differences = differences.clone();
            std::thread::Builder::new()
                .name("engine".into())
                // The server evaluates SQL on threads of this stack size.
                .stack_size(sql::STACK_BYTES)
                .spawn(move || match Engine::open_with(timeout, differences) {
                    Ok(backends) => {
                        let _ = ready.send(Ok(()));
                        backends.serve(rx)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                })
                .map_err(|e| format!("cannot start the engine thread: {e}"))?
        };
        match opened.recv() {
            Ok(Ok(())) => Ok(EngineDb { jobs, differences, worker: Some(worker) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the engine thread ended before opening its backends".into()),
        }
    }

    /// Compares the whole state of the two backends (every table in scan order, and the
    /// catalog), recording any difference.
    pub async fn finish(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Finish(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Every difference recorded so far.
    pub fn differences(&self) -> Vec<Difference> {
        self.differences.lock().map(|d| d.clone()).unwrap_or_default()
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, DbError> {
        let gone = || DbError { message: "the engine thread has stopped".into(), unavailable: true };
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

impl Drop for EngineDb {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl crate::slt::Database for EngineDb {
    async fn statement(&self, sql: &str) -> Result<(), DbError> {
        self.ask(|tx| Job::Statement(sql.to_string(), tx)).await?
    }

    async fn query(&self, sql: &str) -> Result<QueryOutput, DbError> {
        self.ask(|tx| Job::Query(sql.to_string(), tx)).await?
    }
}

/// Runs a golden script (see `tests/golden/README.md`) on both backends and returns its
/// transcript: comments as they are, then per request its SQL after `>`, the change set it
/// produced (one `change:` line per [`Change`], as the log entry carries it) and each
/// statement's outcome, or a read's columns and rows. A disagreement between the backends shows
/// as a `!! the backends differ` line. Blocks: call it from a plain thread, not a runtime.
pub fn run_script(script: &str) -> Result<String, String> {
    let differences = Arc::new(Mutex::new(Vec::new()));
    let mut b = Engine::open_with(Duration::from_secs(30), differences.clone())?;
    let mut out = String::new();
    let mut seen = 0;
    for paragraph in script.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let (comments, sql): (Vec<&str>, Vec<&str>) = paragraph.lines().partition(|l| l.starts_with("--"));
        comments.iter().for_each(|c| out.push_str(&format!("{c}\n")));
        let sql = sql.join("\n");
        if sql.trim().is_empty() {
            out.push('\n');
            continue;
        }
        for (i, line) in sql.lines().enumerate() {
            out.push_str(&format!("{} {line}\n", if i == 0 { ">" } else { " " }));
        }
        if raftsql_client::is_read_only(&sql) {
            match b.read(&sql) {
                Ok(r) => transcribe_rows(&mut out, r.columns.unwrap_or(0), &r.rows),
                Err(e) => out.push_str(&format!("error: {}\n", e.message)),
            }
        } else {
            match b.execute(&sql) {
                Ok((changes, outcomes)) => {
                    changes.iter().for_each(|c| out.push_str(&format!("change: {c:?}\n")));
                    for o in outcomes {
                        match o {
                            Err(e) => out.push_str(&format!("error: {:?}: {}\n", e.kind, e.message)),
                            Ok(r) => {
                                let id = r
                                    .last_insert_id
                                    .map(|i| format!(", last insert id {i}"))
                                    .unwrap_or_default();
                                out.push_str(&format!("ok: rows affected {}{id}\n", r.rows_affected));
                                if !r.columns.is_empty() {
                                    transcribe_rows(&mut out, r.columns.len(), &r.rows);
                                }
                            }
                        }
                    }
                }
                Err(e) => out.push_str(&format!("request error: {}\n", e.message)),
            }
        }
        let d = differences.lock().map(|d| d.clone()).unwrap_or_default();
        for d in &d[seen..] {
            out.push_str(&format!("!! the backends differ: in memory {}, in sled {}\n", d.memory, d.store));
        }
        seen = d.len();
        out.push('\n');
    }
    b.compare_all();
    let d = differences.lock().map(|d| d.clone()).unwrap_or_default();
    for d in &d[seen..] {
        out.push_str(&format!(
            "!! the backends differ on {}: in memory {}, in sled {}\n",
            d.what, d.memory, d.store
        ));
    }
    Ok(out)
}

fn transcribe_rows(out: &mut String, columns: usize, rows: &[Vec<Value>]) {
    out.push_str(&format!("{columns} columns, {} rows\n", rows.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        out.push_str(&format!("  {}\n", cells.join(" | ")));
    }
}

/// The engine over its two backends, used from one thread (a `MemoryView` stays on the thread
/// it was made on): what [`EngineDb`] runs on its worker thread, and what synchronous callers
/// (golden scripts, the differential tests) use directly.
pub struct Engine {
    memory: MemoryView,
    store: StateMachine,
    /// Kept open beside the state machine, as on a node.
    _log: LogStore,
    /// Runs the state machine's async `apply` (which hands the work to a blocking thread).
    rt: tokio::runtime::Runtime,
    next_index: u64,
    timeout: Duration,
    differences: Arc<Mutex<Vec<Difference>>>,
    /// The sled database's dir; removed when the backends are dropped (after the store).
    _dir: tempfile::TempDir,
}

impl Engine {
    /// A fresh sled store in a temp dir and an empty in-memory view; `timeout` bounds each
    /// evaluation. Not for use inside an async context: the store is written through a runtime
    /// of its own.
    pub fn open(timeout: Duration) -> Result<Engine, String> {
        Engine::open_with(timeout, Arc::new(Mutex::new(Vec::new())))
    }

    /// Every disagreement between the backends so far.
    pub fn differences(&self) -> Vec<Difference> {
        self.differences.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn open_with(timeout: Duration, differences: Arc<Mutex<Vec<Difference>>>) -> Result<Engine, String> {
        let dir = tempfile::Builder::new()
            .prefix("raftsql-engine-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for the sled backend: {e}"))?;
        let opts = store::Options {
            data_dir: dir.path().join("data"),
            node_id: 1,
            flush_every: None,
            cache_bytes: 64 << 20,
        };
        let (log, sm) = store::open(&opts).map_err(|e| format!("cannot open the sled backend: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the engine's runtime: {e}"))?;
        Ok(Engine {
            memory: MemoryView::new(),
            store: sm,
            _log: log,
            rt,
            next_index: 1,
            timeout,
            differences,
            _dir: dir,
        })
    }

    fn serve(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Statement(sql, reply) => {
                    let r =
                        self.execute(&sql).map(|(_, outcomes)| outcomes).and_then(|outcomes| match outcomes
                            .into_iter()
                            .find_map(|o| o.err())
                        {
                            Some(e) => Err(DbError::sql(format!("{:?}: {}", e.kind, e.message))),
                            None => Ok(()),
                        });
                    let _ = reply.send(r);
                }
                Job::Query(sql, reply) => {
                    let r = if raftsql_client::is_read_only(&sql) {
                        self.read(&sql)
                    } else {
                        self.execute(&sql).and_then(|(_, outcomes)| match outcomes.into_iter().next() {
                            None => Ok(QueryOutput::default()),
                            Some(Err(e)) => Err(DbError::sql(format!("{:?}: {}", e.kind, e.message))),
                            Some(Ok(r)) => Ok(output(r)),
                        })
                    };
                    let _ = reply.send(r);
                }
                Job::Finish(reply) => {
                    self.compare_all();
                    let _ = reply.send(());
                }
                #[cfg(test)]
                Job::MemoryOnly(sql, reply) => {
                    let mut ex = Executor::new(&self.memory, CTX);
                    if let Ok((changes, _)) = ex.execute(&[(sql, Vec::new())], false) {
                        changes.iter().for_each(|c| self.memory.apply(c));
                    }
                    let _ = reply.send(());
                }
            }
        }
    }

    fn budget(&self) -> Budget {
        Budget::with_timeout(self.timeout, format!("the record timeout ({:?})", self.timeout))
    }

    /// Evaluates a request of one text over both backends, compares, and applies the changes
    /// to both; returns them with the outcomes.
    pub fn execute(&mut self, sql: &str) -> Result<(Vec<Change>, Vec<StatementOutcome>), DbError> {
        sql::check_request([(sql, 0)], &RequestLimits::default()).map_err(error)?;
        let texts = [(sql.to_string(), Vec::new())];
        let evaluate = |view: &dyn ReadView| {
            let mut ex = Executor::new(view, CTX);
            ex.set_budget(self.budget());
            ex.execute(&texts, false)
        };
        let on_memory = evaluate(&self.memory);
        let on_store = self.store.read(evaluate);
        let (m, s) = (format!("{on_memory:?}"), format!("{on_store:?}"));
        if m != s {
            self.differ(sql, m, s);
        }
        let (changes, outcomes) = on_memory.map_err(error)?;
        if !changes.is_empty() {
            self.apply(sql, &changes);
        }
        Ok((changes, outcomes))
    }

    fn apply(&mut self, sql: &str, changes: &[Change]) {
        changes.iter().for_each(|c| self.memory.apply(c));
        let cs = ChangeSet::new(vec![RequestEffects {
            request_id: None,
            changes: changes.to_vec(),
            outcomes: vec![],
        }]);
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index),
            payload: EntryPayload::Normal(EncodedChangeSet::encode(&cs)),
        };
        self.next_index += 1;
        if let Err(e) = self.rt.block_on(RaftStateMachine::apply(&mut self.store, [entry])) {
            self.differ(sql, "applied".into(), format!("the store refused the entry: {e}"));
        }
    }

    /// Runs a read query over both backends, compares, and returns the in-memory answer.
    pub fn read(&mut self, sql: &str) -> Result<QueryOutput, DbError> {
        sql::check_request([(sql, 0)], &RequestLimits::default()).map_err(error)?;
        let on_memory = sql::query_with(&self.memory, sql, &[], CTX, self.budget());
        let on_store = self.store.read(|v| sql::query_with(v, sql, &[], CTX, self.budget()));
        let (m, s) = (format!("{on_memory:?}"), format!("{on_store:?}"));
        if m != s {
            self.differ(sql, m, s);
        }
        on_memory.map(output).map_err(error)
    }

    /// Compares every table of either backend, row for row in scan order, and the catalog,
    /// recording any difference.
    pub fn compare_all(&mut self) {
        let catalog = |v: &dyn ReadView| v.tables().map(|t| format!("{t:?}")).map_err(|e| e.to_string());
        let (m, s) = (catalog(&self.memory), self.store.read(catalog));
        if m != s {
            self.differ("the catalog", format!("{m:?}"), format!("{s:?}"));
        }
        let mut names: Vec<String> =
            self.memory.tables().unwrap_or_default().into_iter().map(|t| t.name).collect();
        names.extend(self.store.read(|v| v.tables().unwrap_or_default()).into_iter().map(|t| t.name));
        names.sort();
        names.dedup();
        for name in names {
            let dump = |v: &dyn ReadView| {
                v.scan(&name, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
                    .map(|r| r.map(|(key, row)| format!("{key:?} {row:?}")).map_err(|e| e.to_string()))
                    .collect::<Vec<_>>()
            };
            let (m, s) = (dump(&self.memory), self.store.read(dump));
            if m != s {
                let first = m.iter().zip(&s).position(|(a, b)| a != b).unwrap_or(m.len().min(s.len()));
                self.differ(
                    &format!(
                        "table {name}: {} rows in memory, {} in sled, first difference at row {first}",
                        m.len(),
                        s.len()
                    ),
                    format!("{:?}", m.get(first)),
                    format!("{:?}", s.get(first)),
                );
            }
        }
    }

    fn differ(&self, what: &str, memory: String, store: String) {
        if let Ok(mut d) = self.differences.lock() {
            d.push(Difference { what: what.to_string(), memory, store });
        }
    }
}

fn error(e: sql::Error) -> DbError {
    DbError::sql(format!("{:?}: {e}", e.kind()))
}

fn output(r: StatementResult) -> QueryOutput {
    let columns = (!r.columns.is_empty()).then_some(r.columns.len());
    QueryOutput { columns, rows: r.rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slt::Database;

    #[tokio::test]
    async fn the_backends_agree_and_answer_like_a_node() {
        let db = EngineDb::start(Duration::from_secs(10)).expect("start");
        db.statement("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)").await.expect("create");
        db.statement("INSERT INTO t VALUES (1, 'a'), (2, NULL)").await.expect("insert");
        let e = db.statement("INSERT INTO t VALUES (1, 'again')").await.expect_err("a duplicate key");
        assert!(e.message.contains("UNIQUE"), "{}", e.message);
        let out = db.query("SELECT v, k FROM t ORDER BY k DESC").await.expect("select");
        assert_eq!(out.columns, Some(2));
        assert_eq!(
            out.rows,
            vec![vec![Value::Null, Value::Integer(2)], vec![Value::Text("a".into()), Value::Integer(1)]]
        );
        // Not a read: evaluated as a statement, its RETURNING rows answered.
        let out = db.query("DELETE FROM t WHERE k = 1 RETURNING v").await.expect("delete");
        assert_eq!(out.rows, vec![vec![Value::Text("a".into())]]);
        db.finish().await;
        assert!(db.differences().is_empty(), "{:?}", db.differences());
    }

    #[tokio::test]
    async fn a_divergence_between_the_backends_is_found_by_a_query_and_at_the_end() {
        let db = EngineDb::start(Duration::from_secs(10)).expect("start");
        db.statement("CREATE TABLE t (k INTEGER PRIMARY KEY)").await.expect("create");
        db.statement("INSERT INTO t VALUES (1)").await.expect("insert");
        let (tx, rx) = oneshot::channel();
        db.jobs.send(Job::MemoryOnly("INSERT INTO t VALUES (2)".into(), tx)).expect("send");
        rx.await.expect("the engine thread");
        assert!(db.differences().is_empty());

        // The answer is the in-memory one; the difference is recorded.
        let out = db.query("SELECT count(*) FROM t").await.expect("count");
        assert_eq!(out.rows, vec![vec![Value::Integer(2)]]);
        let d = db.differences();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].what, "SELECT count(*) FROM t");
        assert!(d[0].memory.contains("Integer(2)") && d[0].store.contains("Integer(1)"), "{d:?}");

        db.finish().await;
        let d = db.differences();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[1].what.starts_with("table t: 2 rows in memory, 1 in sled, first difference at row 1"),
            "{d:?}"
        );
    }

    /// Each `tests/golden/*.sql` script's transcript must equal its `.out` file;
    /// `RAFTSQL_BLESS=1` writes the transcripts instead (then review the diff).
    #[test]
    fn golden_scripts_match_their_transcripts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
        let bless = std::env::var_os("RAFTSQL_BLESS").is_some();
        let mut scripts: Vec<_> = std::fs::read_dir(&dir)
            .expect("tests/golden")
            .map(|e| e.expect("a dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        scripts.sort();
        assert!(!scripts.is_empty(), "no scripts in {}", dir.display());
        let mut wrong = Vec::new();
        for script in scripts {
            let text = std::fs::read_to_string(&script).expect("read the script");
            let got = run_script(&text).expect("run the script");
            assert!(!got.contains("!! the backends differ"), "{}:\n{got}", script.display());
            let golden = script.with_extension("out");
            if bless {
                std::fs::write(&golden, &got).expect("write the transcript");
                continue;
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != got {
                let line = want.lines().zip(got.lines()).position(|(a, b)| a != b).unwrap_or(0) + 1;
                wrong.push(format!(
                    "{} differs from its transcript from line {line}:\n  want: {}\n  got:  {}",
                    golden.display(),
                    want.lines().nth(line - 1).unwrap_or("(end)"),
                    got.lines().nth(line - 1).unwrap_or("(end)")
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{}\n(if the change is intended: RAFTSQL_BLESS=1, then review the diff)",
            wrong.join("\n")
        );
    }

    #[test]
    fn a_golden_transcript_shows_the_change_set_and_the_outcome() {
        let t =
            run_script("CREATE TABLE t (k INTEGER PRIMARY KEY)\n\nINSERT INTO t VALUES (1)").expect("run");
        assert!(t.contains("> INSERT INTO t VALUES (1)\nchange: Insert { table: \"t\", key: [Integer(1)], row: [Integer(1)] }\nok: rows affected 1, last insert id 1\n"), "{t}");
        assert!(!t.contains("!!"), "{t}");
    }

    #[tokio::test]
    async fn a_request_over_the_service_limits_is_refused_as_a_node_refuses_it() {
        let db = EngineDb::start(Duration::from_secs(10)).expect("start");
        let huge = format!("SELECT {}", "1+".repeat(RequestLimits::default().max_sql_bytes) + "1");
        let e = db.query(&huge).await.expect_err("over --max-sql-bytes");
        assert!(e.message.contains("max-sql-bytes"), "{}", e.message);
        assert!(db.differences().is_empty());
    }
}
