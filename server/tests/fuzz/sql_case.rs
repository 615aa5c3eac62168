//! One SQL case: a request run the way the server runs it, over a small fixed database, with
//! every property checked.
//!
//! 1. `sql::check_request` with the service's default request limits: a request it refuses
//!    ends there, as in the service.
//! 2. The write path: an [`Executor`] over the database evaluates the request under a small
//!    [`Budget`] (a deadline, 4 MiB of working memory, 2,000 rows written).
//! 3. The read path: each text alone through [`query_with`] under the same budget.
//!
//! Properties: no panic and no stack overflow (the harness runs cases on a thread with the server's
//! SQL stack size); every error typed, and none that an in-memory database cannot cause (`Read`), nor an
//! interruption before the deadline; the deadline kept; the memory held within a bound of the
//! budget; result rows as wide as their columns; and nothing half applied: after a request
//! fails (`Err`), the executor's overlay reads exactly as the database did, and after it
//! succeeds, the overlay reads exactly as the database with the returned changes applied (so a
//! failed statement left nothing behind, and a failed transaction nothing at all).

use crate::{alloc, harness};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use raftsql_server::changeset::{ErrorKind, ReadView, StatementOutcome, Value};
use raftsql_server::sql::{self, Budget, Context, Executor, MemoryView, RequestLimits};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 16 };

/// Each case's deadline: a case that takes longer is stopped with `Interrupted`.
const DEADLINE: Duration = Duration::from_millis(200);
/// How far past its deadline a case may finish (a debug build on a loaded machine).
const GRACE: Duration = Duration::from_secs(5);
/// Working memory per statement in the fuzz budget.
const MAX_MEMORY: usize = 4 << 20;
/// Memory a whole case may hold at its peak: the statement budget is an estimate charged
/// before allocating (not a measure), a request holds its changes and results besides, and the
/// database itself is cloned once per model check.
const MAX_PEAK: usize = 64 << 20;
/// Memory per byte of SQL on top of that: a statement is tokenized whole before its depth is
/// checked, and sqlparser's tokens with their spans take ~45 bytes per byte of text for
/// operator chains (`x IS NULL IS NULL ...`): bounded by `--max-sql-bytes`, not charged to
/// the statement's working memory (see docs/testing.md, "Fuzzing").
const TOKEN_BYTES: usize = 64;

#[derive(Clone, Debug)]
pub struct Request {
    /// `(sql text, parameters)` pairs, as `ExecuteRequest.statements` carries them.
    pub texts: Vec<(String, Vec<Value>)>,
    /// `ExecuteRequest.transaction`.
    pub transaction: bool,
}

/// The fixed database: `t1` as SQLite's sqllogictest select files build it (no primary key),
/// `users` (integer key, a UNIQUE column, an index), `orders` (composite key, a two-column
/// index), `kv` (text key, blobs including invalid UTF-8).
pub fn database() -> &'static MemoryView {
    thread_local! {
        // Built once per fuzzing thread (a `MemoryView` is not `Sync`) and kept for the run.
        static DB: &'static MemoryView = Box::leak(Box::new(build_database()));
    }
    DB.with(|db| *db)
}

fn build_database() -> MemoryView {
    {
        let mut sql = vec![
            "CREATE TABLE t1(a INTEGER, b INTEGER, c INTEGER, d INTEGER, e INTEGER)".to_string(),
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, data BLOB, \
             active BOOLEAN DEFAULT TRUE, email TEXT UNIQUE)"
                .into(),
            "CREATE INDEX users_name ON users (name)".into(),
            "CREATE TABLE orders (user_id INTEGER, seq INTEGER, amount REAL NOT NULL DEFAULT 0, note TEXT, \
             PRIMARY KEY (user_id, seq))"
                .into(),
            "CREATE INDEX orders_amount ON orders (amount, note)".into(),
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)".into(),
        ];
        for i in 0..30i64 {
            let v =
                |k: i64| if (i + k) % 7 == 0 { "NULL".to_string() } else { (100 + i * 5 + k).to_string() };
            sql.push(format!("INSERT INTO t1 VALUES ({}, {}, {}, {}, {})", v(0), v(1), v(2), v(3), v(4)));
        }
        for i in 0..12i64 {
            let score = if i % 5 == 0 { "NULL".to_string() } else { format!("{}.{}", i * 7 % 10, i) };
            sql.push(format!(
                "INSERT INTO users VALUES ({i}, 'user{}', {score}, X'{:02x}ff', {}, {})",
                i % 4,
                i,
                i % 2 == 0,
                if i % 3 == 0 { "NULL".into() } else { format!("'u{i}@x'") }
            ));
        }
        for i in 0..30i64 {
            sql.push(format!(
                "INSERT INTO orders VALUES ({}, {}, {}, {})",
                i % 12,
                i,
                (i * 37 % 100) as f64 / 4.0,
                if i % 4 == 0 { "NULL".into() } else { format!("'n%{}_'", i % 5) }
            ));
        }
        for (k, v) in [("a", "X'00'"), ("b", "X'c328'"), ("é", "X''"), ("", "NULL"), ("%", "X'ffd800'")] {
            sql.push(format!("INSERT INTO kv VALUES ('{k}', {v})"));
        }
        let mut db = MemoryView::new();
        for s in sql {
            let (changes, outcomes) =
                Executor::new(&db.clone(), CTX).execute(&[(s.clone(), vec![])], false).expect("the fixture");
            assert!(outcomes.iter().all(|o| o.is_ok()), "{s}: {outcomes:?}");
            changes.iter().for_each(|c| db.apply(c));
        }
        db
    }
}

/// The parameters a statement asks for: its placeholders counted the way the server counts
/// them, values taken from `values`.
pub fn params_for(sql: &str, values: &mut impl Iterator<Item = Value>) -> Vec<Value> {
    let dialect = sqlparser::dialect::SQLiteDialect {};
    let wanted = match sqlparser::tokenizer::Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(tokens) => sql::limits::placeholder_count(&tokens).min(64),
        Err(_) => 0,
    };
    (0..wanted).map(|_| values.next().unwrap_or(Value::Null)).collect()
}

fn budget() -> Budget {
    let mut b = Budget::with_timeout(DEADLINE, "the fuzz case deadline");
    b.max_memory = MAX_MEMORY;
    b.max_rows_written = 2_000;
    b
}

pub fn check(req: &Request) -> Result<(), TestCaseError> {
    harness::current(|| format!("{req:?}"));
    check_here(req)
}

fn check_here(req: &Request) -> Result<(), TestCaseError> {
    let db = database();
    let mark = alloc::start();
    // As the service: a request over its limits is refused before anything is parsed.
    let texts = || req.texts.iter().map(|(s, p)| (s.as_str(), p.len()));
    if let Err(e) = sql::check_request(texts(), &RequestLimits::default()) {
        prop_assert!(matches!(e, sql::Error::RequestTooLarge(_) | sql::Error::Invalid(_)), "{e:?}");
        return Ok(());
    }
    let max_peak = MAX_PEAK + TOKEN_BYTES * req.texts.iter().map(|(s, _)| s.len()).sum::<usize>();

    let mut ex = Executor::new(db, CTX);
    ex.set_budget(budget());
    let started = (Instant::now(), harness::pauses());
    let result = ex.execute(&req.texts, req.transaction);
    timely(started, "the request")?;
    let (expected, tables) = match &result {
        Err(e) => {
            typed(e)?;
            prop_assert!(e.aborts_request(), "Executor::execute returned a statement error: {e:?}");
            (db.clone(), touched(db, &req.texts))
        }
        Ok((changes, outcomes)) => {
            prop_assert!(!outcomes.is_empty(), "a request without outcomes");
            for o in outcomes {
                outcome(o)?;
            }
            if req.transaction && outcomes.iter().any(|o| o.is_err()) {
                prop_assert!(changes.is_empty(), "a failed transaction kept changes: {changes:?}");
            }
            if req.texts.len() == 1 && outcomes.len() == 1 && outcomes[0].is_err() {
                prop_assert!(changes.is_empty(), "a failed statement kept changes: {changes:?}");
            }
            let mut model = db.clone();
            changes.iter().for_each(|c| model.apply(c));
            let tables = touched(&model, &req.texts);
            (model, tables)
        }
    };
    let peak = alloc::peak_since(mark);
    prop_assert!(
        peak <= max_peak,
        "the case held {} MiB at its peak (bound {} MiB; statement budget {} MiB)",
        peak >> 20,
        max_peak >> 20,
        MAX_MEMORY >> 20
    );
    // Nothing half applied: the overlay reads as the database with exactly the changes returned.
    ex.set_budget(Budget::default());
    for (what, sql) in dump_queries(&tables) {
        let seen = render(&ex.execute(&[(sql.clone(), vec![])], false).map(|(_, mut o)| o.remove(0)));
        let want = render(&Ok(sql::query(&expected, &sql, &[], CTX).map_err(Into::into)));
        prop_assert_eq!(seen, want, "the executor's view of {} differs from the changes it returned", what);
    }

    for (sql, params) in &req.texts {
        let started = (Instant::now(), harness::pauses());
        let mark = alloc::start();
        match sql::query_with(db, sql, params, CTX, budget()) {
            Ok(r) => rows_fit(&r)?,
            Err(e) => typed(&e)?,
        }
        timely(started, "the query")?;
        let peak = alloc::peak_since(mark);
        prop_assert!(peak <= max_peak, "the query held {} MiB at its peak", peak >> 20);
    }
    Ok(())
}

/// Statement outcomes by kind over the run (printed at its end), to see how deep the
/// generators reach: a run of syntax errors only would test little.
static OUTCOMES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn count(kind: String) {
    if let Ok(mut m) = OUTCOMES.lock() {
        *m.entry(kind).or_default() += 1;
    }
}

/// The outcome counts so far, as `ok 812, Syntax 95, ...`, and resets them.
pub fn outcomes() -> String {
    let Ok(mut m) = OUTCOMES.lock() else { return String::new() };
    let s = m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    m.clear();
    s
}

/// An error is one of `sql::Error`'s kinds (the type says so) and one this evaluation can have.
fn typed(e: &sql::Error) -> Result<(), TestCaseError> {
    prop_assert!(!matches!(e, sql::Error::Read(_)), "a storage error from an in-memory view: {e:?}");
    prop_assert!(!e.to_string().trim().is_empty(), "an error without a message: {e:?}");
    Ok(())
}

fn outcome(o: &StatementOutcome) -> Result<(), TestCaseError> {
    count(match o {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{:?}", e.kind),
    });
    match o {
        Ok(r) => rows_fit(r),
        Err(e) => {
            prop_assert!(e.kind != ErrorKind::Interrupted, "an interruption recorded as an outcome: {e:?}");
            prop_assert!(!e.message.trim().is_empty(), "an error without a message: {e:?}");
            Ok(())
        }
    }
}

fn rows_fit(r: &raftsql_server::changeset::StatementResult) -> Result<(), TestCaseError> {
    if let Some(row) = r.rows.iter().find(|row| row.len() != r.columns.len()) {
        return Err(TestCaseError::fail(format!(
            "a row of {} values under {} columns: {row:?}",
            row.len(),
            r.columns.len()
        )));
    }
    Ok(())
}

/// The deadline kept: `started` is when the evaluation began and the watchdog's pause count
/// then. Wall time the whole process spent stopped (SIGSTOP) or starved is not the case's: the
/// watchdog notices such a pause within a tick of its end, so an overrun is a finding only if it
/// saw none.
fn timely((started, pauses): (Instant, u64), what: &str) -> Result<(), TestCaseError> {
    let took = started.elapsed();
    if took <= DEADLINE + GRACE {
        return Ok(());
    }
    std::thread::sleep(Duration::from_millis(600));
    if harness::pauses() != pauses {
        return Ok(());
    }
    Err(TestCaseError::fail(format!("{what} ran {took:?}, past its {DEADLINE:?} deadline")))
}

/// The tables a request may have changed: those of `view` whose names its texts mention, and
/// those it may have created or dropped (the catalog is always compared).
fn touched(view: &MemoryView, texts: &[(String, Vec<Value>)]) -> Vec<String> {
    let text = texts.iter().map(|(s, _)| s.to_lowercase()).collect::<Vec<_>>().join(" ");
    let mut names: Vec<String> = view.tables().expect("in memory").into_iter().map(|t| t.name).collect();
    names.extend(database().tables().expect("in memory").into_iter().map(|t| t.name));
    names.sort();
    names.dedup();
    names.retain(|n| text.contains(&n.to_lowercase()));
    names
}

fn dump_queries(tables: &[String]) -> Vec<(String, String)> {
    let mut q = vec![(
        "the catalog".to_string(),
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name".to_string(),
    )];
    for t in tables {
        q.push((format!("table {t}"), format!("SELECT * FROM \"{}\"", t.replace('"', "\"\""))));
    }
    q
}

/// A result as text: `Value`'s `PartialEq` says NaN differs from itself.
fn render(r: &Result<StatementOutcome, sql::Error>) -> String {
    format!("{r:?}")
}
