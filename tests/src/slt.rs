//! A sqllogictest runner: SQLite's `.test` format, run through the raftsql client against a
//! cluster, judged the way SQLite's reference runner (`sqllogictest.c` with `slt_sqlite.c`)
//! judges SQLite.
//!
//! # The format
//!
//! A file is a sequence of records separated by blank lines (a line of only whitespace is
//! blank); a line starting with `#` is a comment wherever it stands and is dropped; a trailing
//! `\r` is removed. A record is one of:
//!
//! - `statement ok` / `statement error`, then the SQL (every line up to the blank line);
//! - `query <types> [nosort|rowsort|valuesort] [label]`, the SQL, `----`, the expected values one
//!   per line (one *value* per line, not one row); `query error` expects the query to fail;
//! - `hash-threshold N`: from here on, a result of more than N values is expected as the one
//!   line `K values hashing to <md5>` (the reference's default threshold is 8; 0 never hashes);
//! - `halt`: the rest of the file is not run (its records count as skipped).
//!
//! `skipif ENGINE` / `onlyif ENGINE` lines before a record skip it for (or for all but) that
//! engine; ours is [`ENGINE`] (`raftsql`), compared case-insensitively.
//!
//! # Judging a query
//!
//! Each value is rendered by its column's type letter ([`render`]): `I` as a 64-bit integer, `R`
//! with `%.3f`, `T` as text, NULL as `NULL`, an empty text as `(empty)`, in `T` every byte outside
//! printable ASCII as `@` (per byte, as the reference does it: `é` becomes `@@`). `rowsort`
//! sorts the rows and `valuesort` all values, by byte-wise comparison of the rendered text. The
//! rendered lines (or the hash line, over the threshold) must equal the expected lines exactly —
//! stricter than the reference, which compares only as many values as both sides have. A
//! result whose column count differs from the type string fails. Labels are not cross-checked:
//! every record with a label is compared with its own expected values, which is what a label
//! would have guaranteed.
//!
//! # Counting
//!
//! Per file: records *run* (statements and queries reached and not skipped, including the
//! [`SKIP_LIST`] ones, which count as failed without being sent), *passed*, *failed* (run =
//! passed + failed) and *skipped* (by `skipif`/`onlyif`, and everything after `halt`). A failing
//! record never stops the file; each has a timeout ([`RunOptions::record_timeout`]). If the
//! database stops answering (three records in a row fail with transport, unavailable, timeout
//! or indeterminate errors) the rest of the file is counted as failed without being sent, so a
//! dead cluster costs seconds, not hours.
//!
//! Consecutive read queries (no statement between them) are sent concurrently, up to
//! [`RunOptions::concurrency`] at a time: they see the same state, and a query round trip is
//! mostly waiting. Statements, and queries whose SQL is not a SELECT/VALUES/WITH (sent with
//! `execute`), are barriers run alone, in file order.
//!
//! # Why a hand-written parser
//!
//! The `sqllogictest` crate (0.29) was considered for its record parser and rejected: its parser
//! refuses the corpus's `onlyif mysql # comment` lines and treats a whitespace-only line as
//! content, and a parse error loses the whole file; and it would bring libtest-mimic, educe,
//! regex, similar, subst, humantime, owo-colors and more into the tree for ~150 lines of
//! parsing. The only new dependency is `md-5` for the result hashes.

use crate::{Cluster, ClusterOptions};
use futures::stream::{self, StreamExt};
use md5::{Digest, Md5};
use raftsql_client::{is_read_only, Client, QueryOptions, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Our engine name for `skipif` / `onlyif`.
pub const ENGINE: &str = "raftsql";

/// The reference runner's hash threshold before a file sets one.
pub const DEFAULT_HASH_THRESHOLD: usize = 8;

/// A record that cannot pass by design: not sent, counted as failed with its reason (the
/// corpus README asks for them to be listed here and counted in the totals).
#[derive(Clone, Copy, Debug)]
pub struct KnownFailure {
    /// The end of the file's path, e.g. `evidence/slt_lang_replace.test`.
    pub file: &'static str,
    /// Which record of that file.
    pub at: At,
    pub reason: &'static str,
}

/// How a [`KnownFailure`] names its record.
#[derive(Clone, Copy, Debug)]
pub enum At {
    /// The line of the record's `statement` / `query` line (1-based).
    Line(usize),
    /// Every record whose SQL contains this text.
    Sql(&'static str),
}

/// Records of the corpus that cannot pass by design. Empty while the SQL engine is being
/// written: an entry belongs here only once its reason is a decision, not a missing feature.
pub const SKIP_LIST: &[KnownFailure] = &[];

/// How results are sorted before comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortMode {
    NoSort,
    RowSort,
    ValueSort,
}

/// A `skipif` / `onlyif` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    SkipIf(String),
    OnlyIf(String),
}

/// What a record asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Directive {
    Statement {
        ok: bool,
        sql: String,
    },
    Query {
        types: String,
        sort: SortMode,
        label: Option<String>,
        sql: String,
        expected: Vec<String>,
    },
    /// `query error`: the query must fail.
    QueryError {
        sql: String,
    },
    HashThreshold(usize),
    Halt,
    /// A record the parser does not understand; it counts as a failed record.
    Invalid {
        message: String,
        text: String,
    },
}

/// One record of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Line (1-based) of the record's `statement` / `query` / ... line.
    pub line: usize,
    pub conditions: Vec<Condition>,
    pub directive: Directive,
}

impl Record {
    /// Whether the conditions skip this record for `engine`.
    pub fn skipped_for(&self, engine: &str) -> bool {
        self.conditions.iter().any(|c| match c {
            Condition::SkipIf(e) => e.eq_ignore_ascii_case(engine),
            Condition::OnlyIf(e) => !e.eq_ignore_ascii_case(engine),
        })
    }

    /// Statements and queries (and records that failed to parse) are what the counts count.
    pub fn is_test(&self) -> bool {
        !matches!(self.directive, Directive::HashThreshold(_) | Directive::Halt)
    }

    /// The SQL of a statement or query.
    pub fn sql(&self) -> &str {
        match &self.directive {
            Directive::Statement { sql, .. }
            | Directive::Query { sql, .. }
            | Directive::QueryError { sql } => sql,
            Directive::Invalid { text, .. } => text,
            Directive::HashThreshold(_) | Directive::Halt => "",
        }
    }
}

/// Parses a file's text into records. Never fails: what it cannot read becomes
/// [`Directive::Invalid`].
pub fn parse(text: &str) -> Vec<Record> {
    // (line number, content) with `\r` removed, blank lines emptied and comment lines dropped.
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            if l.starts_with('#') {
                None
            } else if l.trim().is_empty() {
                Some((i + 1, ""))
            } else {
                Some((i + 1, l))
            }
        })
        .collect();
    let mut records = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].1.is_empty() {
            i += 1;
            continue;
        }
        let end = lines[i..].iter().position(|(_, l)| l.is_empty()).map_or(lines.len(), |p| i + p);
        let block = &lines[i..end];
        i = end;
        let mut conditions = Vec::new();
        let mut k = 0;
        while k < block.len() {
            let mut tokens = block[k].1.split_whitespace();
            match (tokens.next(), tokens.next()) {
                (Some("skipif"), Some(e)) => conditions.push(Condition::SkipIf(e.to_string())),
                (Some("onlyif"), Some(e)) => conditions.push(Condition::OnlyIf(e.to_string())),
                _ => break,
            }
            k += 1;
        }
        let Some(&(line, header)) = block.get(k) else {
            records.push(Record {
                line: block[0].0,
                conditions,
                directive: Directive::Invalid {
                    message: "skipif/onlyif with no record after it".into(),
                    text: join(block),
                },
            });
            continue;
        };
        let body = &block[k + 1..];
        let directive = parse_directive(header, body);
        records.push(Record { line, conditions, directive });
    }
    records
}

fn join(lines: &[(usize, &str)]) -> String {
    lines.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
}

fn parse_directive(header: &str, body: &[(usize, &str)]) -> Directive {
    let tokens: Vec<&str> = header.split_whitespace().collect();
    let invalid = |message: String| Directive::Invalid {
        message,
        text: std::iter::once(header).chain(body.iter().map(|(_, l)| *l)).collect::<Vec<_>>().join("\n"),
    };
    match tokens.as_slice() {
        ["statement", "ok", ..] => Directive::Statement { ok: true, sql: join(body) },
        ["statement", "error", ..] => Directive::Statement { ok: false, sql: join(body) },
        ["statement", ..] => invalid(format!("unknown statement expectation: {header}")),
        ["query", "error", ..] => {
            let sql_end = body.iter().position(|(_, l)| *l == "----").unwrap_or(body.len());
            Directive::QueryError { sql: join(&body[..sql_end]) }
        }
        ["query", types, rest @ ..] => {
            if !types.chars().all(|c| matches!(c, 'I' | 'R' | 'T')) {
                return invalid(format!("unknown type letter in {types:?}"));
            }
            let sort = match rest.first() {
                None | Some(&"nosort") => SortMode::NoSort,
                Some(&"rowsort") => SortMode::RowSort,
                Some(&"valuesort") => SortMode::ValueSort,
                Some(other) => return invalid(format!("unknown sort mode {other:?}")),
            };
            let label = rest.get(1).map(|l| l.to_string());
            let sql_end = body.iter().position(|(_, l)| *l == "----").unwrap_or(body.len());
            let expected =
                body.get(sql_end + 1..).unwrap_or(&[]).iter().map(|(_, l)| l.to_string()).collect();
            Directive::Query { types: types.to_string(), sort, label, sql: join(&body[..sql_end]), expected }
        }
        ["query"] => invalid("query without a type string".into()),
        ["hash-threshold", n, ..] => match n.parse() {
            Ok(n) => Directive::HashThreshold(n),
            Err(_) => invalid(format!("bad hash-threshold {n:?}")),
        },
        ["halt", ..] => Directive::Halt,
        _ => invalid(format!("unknown record type {:?}", tokens.first().copied().unwrap_or(""))),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Renders a value as the reference runner does for a column of type letter `ty`.
pub fn render(v: &Value, ty: char) -> String {
    match (v, ty) {
        (Value::Null, _) => "NULL".into(),
        (_, 'I') => int_value(v).to_string(),
        (_, 'R') => format!("{:.3}", real_value(v)),
        _ => {
            let text = match v {
                Value::Null => unreachable!("NULL is rendered above"),
                Value::Integer(i) => i.to_string(),
                Value::Real(r) => sqlite_real_text(*r),
                Value::Text(s) => s.clone(),
                Value::Blob(b) => return printable(b),
                Value::Boolean(b) => (*b as i64).to_string(),
            };
            printable(text.as_bytes())
        }
    }
}

/// `(empty)` for nothing, `@` for every byte outside printable ASCII.
fn printable(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(empty)".into();
    }
    bytes.iter().map(|&b| if (0x20..=0x7e).contains(&b) { b as char } else { '@' }).collect()
}

/// `sqlite3_column_int64`: reals truncate toward zero (saturating), text and blobs give their
/// leading integer (after whitespace and a sign), else 0.
fn int_value(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::Integer(i) => *i,
        Value::Real(r) => *r as i64,
        Value::Boolean(b) => *b as i64,
        Value::Text(s) => int_prefix(s.as_bytes()),
        Value::Blob(b) => int_prefix(b),
    }
}

fn int_prefix(s: &[u8]) -> i64 {
    let mut i = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let negative = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut n: i64 = 0;
    for &b in s[i..].iter().take_while(|b| b.is_ascii_digit()) {
        let d = (b - b'0') as i64;
        n = match n.checked_mul(10).and_then(|n| if negative { n.checked_sub(d) } else { n.checked_add(d) }) {
            Some(n) => n,
            None => return if negative { i64::MIN } else { i64::MAX },
        };
    }
    n
}

/// `sqlite3_column_double`: text and blobs give their leading number, else 0.
fn real_value(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Integer(i) => *i as f64,
        Value::Real(r) => *r,
        Value::Boolean(b) => *b as i64 as f64,
        Value::Text(s) => real_prefix(s.as_bytes()),
        Value::Blob(b) => real_prefix(b),
    }
}

fn real_prefix(s: &[u8]) -> f64 {
    let start = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let digits = |from: usize| s[from.min(s.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut end = start;
    if matches!(s.get(end), Some(b'-' | b'+')) {
        end += 1;
    }
    let int_digits = digits(end);
    end += int_digits;
    let mut frac_digits = 0;
    if s.get(end) == Some(&b'.') {
        frac_digits = digits(end + 1);
        end += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return 0.0;
    }
    if matches!(s.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(end + 1), Some(b'-' | b'+')));
        let exp_digits = digits(end + 1 + sign);
        if exp_digits > 0 {
            end += 1 + sign + exp_digits;
        }
    }
    std::str::from_utf8(&s[start..end]).ok().and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

/// A real as SQLite prints it as text (`%!.15g`): 15 significant digits, trailing zeros
/// dropped but one kept after the point (`100.0`, `1.5`, `1.0e+20`).
pub fn sqlite_real_text(r: f64) -> String {
    if r.is_nan() {
        return "NaN".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if r == 0.0 {
        return "0.0".into();
    }
    let sci = format!("{r:.14e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    let trim = |s: &str| {
        if !s.contains('.') {
            return format!("{s}.0");
        }
        let s = s.trim_end_matches('0');
        if s.ends_with('.') {
            format!("{s}0")
        } else {
            s.to_string()
        }
    };
    if !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        trim(&format!("{r:.*}", (14 - exp) as usize))
    }
}

/// The md5 of every value followed by `\n`, in lowercase hex.
pub fn md5_hex(values: &[String]) -> String {
    let mut h = Md5::new();
    for v in values {
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders a result by the type string and sorts it; `Err` if a row's width does not match.
pub fn render_result(types: &str, sort: SortMode, rows: &[Vec<Value>]) -> Result<Vec<String>, String> {
    let types: Vec<char> = types.chars().collect();
    let mut rendered: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for row in rows {
        if row.len() != types.len() {
            return Err(format!(
                "wrong number of result columns: expected {} but got {}",
                types.len(),
                row.len()
            ));
        }
        rendered.push(row.iter().zip(&types).map(|(v, t)| render(v, *t)).collect());
    }
    if sort == SortMode::RowSort {
        rendered.sort();
    }
    let mut values: Vec<String> = rendered.into_iter().flatten().collect();
    if sort == SortMode::ValueSort {
        values.sort();
    }
    Ok(values)
}

/// The lines a result is compared with: the values, or the hash line over the threshold.
pub fn result_lines(values: Vec<String>, hash_threshold: usize) -> Vec<String> {
    if hash_threshold > 0 && values.len() > hash_threshold {
        vec![format!("{} values hashing to {}", values.len(), md5_hex(&values))]
    } else {
        values
    }
}

/// The table a `CREATE [TEMP] TABLE [IF NOT EXISTS] name` statement creates.
pub fn created_table(sql: &str) -> Option<String> {
    let mut words = sql.split(|c: char| c.is_whitespace() || c == '(').filter(|w| !w.is_empty());
    if !words.next()?.eq_ignore_ascii_case("CREATE") {
        return None;
    }
    let mut w = words.next()?;
    if w.eq_ignore_ascii_case("TEMP") || w.eq_ignore_ascii_case("TEMPORARY") {
        w = words.next()?;
    }
    if !w.eq_ignore_ascii_case("TABLE") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("IF") {
        words.next()?; // NOT
        words.next()?; // EXISTS
        name = words.next()?;
    }
    Some(name.to_string())
}

// ---------------------------------------------------------------------------------------------
// Running

/// A failure of the database, as the runner sees it.
#[derive(Clone, Debug)]
pub struct DbError {
    pub message: String,
    /// The database did not answer (transport, unavailable, timeout, indeterminate): a run of
    /// these means the cluster is gone, not that the SQL is wrong.
    pub unavailable: bool,
}

impl DbError {
    pub fn sql(message: impl Into<String>) -> DbError {
        DbError { message: message.into(), unavailable: false }
    }
}

impl From<raftsql_client::Error> for DbError {
    fn from(e: raftsql_client::Error) -> DbError {
        use raftsql_client::Error as E;
        let unavailable = matches!(
            e,
            E::NotLeader { .. }
                | E::Indeterminate { .. }
                | E::Timeout { .. }
                | E::Unavailable { .. }
                | E::Transport { .. }
                | E::NoAddress
        );
        DbError { message: format!("{}: {e}", e.code()), unavailable }
    }
}

/// A query's answer: its column count when the database says it, and its rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryOutput {
    pub columns: Option<usize>,
    pub rows: Vec<Vec<Value>>,
}

/// What the runner needs from a database. [`ClientDb`] is raftsql through its client; the
/// unit tests use a scripted double.
pub trait Database {
    /// Runs one statement: `Ok` if it succeeded.
    fn statement(&self, sql: &str) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Runs one query and returns its rows.
    fn query(&self, sql: &str) -> impl Future<Output = Result<QueryOutput, DbError>> + Send;
}

/// raftsql through [`Client`]: statements with `execute` (a failure in the request or in the
/// statement's own result both count), queries with `query` at the default (STRONG)
/// consistency — or, when their SQL is not a read, with `execute`, taking the first result.
#[derive(Clone)]
pub struct ClientDb {
    client: Client,
}

impl ClientDb {
    pub fn new(client: Client) -> ClientDb {
        ClientDb { client }
    }
}

impl Database for ClientDb {
    async fn statement(&self, sql: &str) -> Result<(), DbError> {
        let r = self.client.execute(sql, &[]).await?;
        match r.results.into_iter().find_map(|r| r.err()) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn query(&self, sql: &str) -> Result<QueryOutput, DbError> {
        if is_read_only(sql) {
            let r = self.client.query(sql, &[], QueryOptions::default()).await?;
            let columns = (!r.columns.is_empty()).then_some(r.columns.len());
            return Ok(QueryOutput { columns, rows: r.rows });
        }
        let r = self.client.execute(sql, &[]).await?;
        match r.results.into_iter().next() {
            None => Ok(QueryOutput::default()),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(s)) => {
                let columns = (!s.columns.is_empty()).then_some(s.columns.len());
                Ok(QueryOutput { columns, rows: s.rows })
            }
        }
    }
}

/// How records are run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Longest a record may take; then it fails as timed out.
    pub record_timeout: Duration,
    /// Read queries in flight at once between two statements.
    pub concurrency: usize,
    /// Failures kept in a [`FileReport`] (all are counted).
    pub keep_failures: usize,
    /// Characters of SQL, expected and actual output kept per failure.
    pub truncate: usize,
    pub skip_list: &'static [KnownFailure],
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            record_timeout: Duration::from_secs(30),
            concurrency: 8,
            keep_failures: 100,
            truncate: 400,
            skip_list: SKIP_LIST,
        }
    }
}

/// One failed record.
#[derive(Clone, Debug)]
pub struct Failure {
    pub line: usize,
    pub sql: String,
    pub expected: String,
    pub got: String,
}

/// The outcome of one file.
#[derive(Clone, Debug, Default)]
pub struct FileReport {
    pub name: String,
    pub run: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Of `failed`: records in the skip list.
    pub known: usize,
    /// The first failures, in file order.
    pub failures: Vec<Failure>,
    /// Tables the file created (for cleaning up a shared cluster).
    pub created_tables: Vec<String>,
    /// Set when the file could not be run to its end (no cluster, or it stopped answering).
    pub error: Option<String>,
    /// [`Target::InProcess`]: statements, queries and tables on which the engine's two backends
    /// disagreed (see [`crate::engine`]), each listed in `failures` (at line 0 when found by
    /// the comparison at the file's end). Counted apart from `run`, `passed` and `failed` (the
    /// record got the in-memory answer and was judged on it), and never tolerated.
    pub differences: usize,
    pub elapsed: Duration,
}

impl FileReport {
    /// `<name>: N passed, N failed, N skipped` (and `, N backend differences` when there are any)
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} passed, {} failed, {} skipped",
            self.name, self.passed, self.failed, self.skipped
        );
        if self.differences > 0 {
            s.push_str(&format!(", {} backend differences", self.differences));
        }
        s
    }

    fn fail(&mut self, opts: &RunOptions, record: &Record, expected: &str, got: &str) {
        self.failed += 1;
        if self.failures.len() < opts.keep_failures {
            self.failures.push(Failure {
                line: record.line,
                sql: truncate(record.sql(), opts.truncate),
                expected: truncate(expected, opts.truncate),
                got: truncate(got, opts.truncate),
            });
        }
    }
}

/// Cuts `s` to at most `max` characters, saying how much was cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} more chars)", &s[..i], s[i..].chars().count()),
    }
}

/// What was expected of a record, for a failure message.
fn expectation(d: &Directive) -> String {
    match d {
        Directive::Statement { ok: true, .. } => "statement ok".into(),
        Directive::Statement { ok: false, .. } | Directive::QueryError { .. } => "an error".into(),
        Directive::Query { expected, .. } => preview(expected),
        Directive::Invalid { message, .. } => format!("a valid record ({message})"),
        Directive::HashThreshold(_) | Directive::Halt => String::new(),
    }
}

fn preview(lines: &[String]) -> String {
    const SHOWN: usize = 16;
    let mut s = lines.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n");
    if lines.len() > SHOWN {
        s.push_str(&format!("\n… ({} values in all)", lines.len()));
    }
    if lines.is_empty() {
        s.push_str("(no values)");
    }
    s
}

enum Outcome {
    Pass,
    Fail { got: String, unavailable: bool },
}

/// Judges a query's output against its record.
pub fn check_query(
    types: &str,
    sort: SortMode,
    expected: &[String],
    hash_threshold: usize,
    out: &QueryOutput,
) -> Result<(), String> {
    if let Some(n) = out.columns {
        if n != types.len() {
            return Err(format!("wrong number of result columns: expected {} but got {n}", types.len()));
        }
    }
    let values = render_result(types, sort, &out.rows)?;
    let lines = result_lines(values.clone(), hash_threshold);
    if lines == expected {
        return Ok(());
    }
    let mut got = preview(&lines);
    if lines.len() == 1 && values.len() > 1 {
        got.push_str(&format!("\nvalues: {}", preview(&values).replace('\n', " ")));
    }
    Err(got)
}

async fn timed<T>(timeout: Duration, f: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(DbError { message: format!("no answer within {timeout:?}"), unavailable: true }),
    }
}

async fn run_one<D: Database>(db: &D, d: &Directive, threshold: usize, timeout: Duration) -> Outcome {
    let fail =
        |e: DbError| Outcome::Fail { got: format!("error: {}", e.message), unavailable: e.unavailable };
    match d {
        Directive::Statement { ok, sql } => match (timed(timeout, db.statement(sql)).await, ok) {
            (Ok(()), true) => Outcome::Pass,
            (Ok(()), false) => Outcome::Fail { got: "success".into(), unavailable: false },
            (Err(e), false) if !e.unavailable => Outcome::Pass,
            (Err(e), _) => fail(e),
        },
        Directive::QueryError { sql } => match timed(timeout, db.query(sql)).await {
            Ok(out) => {
                Outcome::Fail { got: format!("success with {} rows", out.rows.len()), unavailable: false }
            }
            Err(e) if !e.unavailable => Outcome::Pass,
            Err(e) => fail(e),
        },
        Directive::Query { types, sort, sql, expected, .. } => match timed(timeout, db.query(sql)).await {
            Err(e) => fail(e),
            Ok(out) => match check_query(types, *sort, expected, threshold, &out) {
                Ok(()) => Outcome::Pass,
                Err(got) => Outcome::Fail { got, unavailable: false },
            },
        },
        Directive::Invalid { message, .. } => {
            Outcome::Fail { got: format!("unreadable record: {message}"), unavailable: false }
        }
        Directive::HashThreshold(_) | Directive::Halt => Outcome::Pass,
    }
}

/// Consecutive unanswered records after which the database is taken for gone.
const UNAVAILABLE_STREAK: usize = 3;

struct State<'a> {
    name: &'a str,
    opts: &'a RunOptions,
    report: FileReport,
    streak: usize,
    gone: Option<String>,
}

impl State<'_> {
    fn record(&mut self, rec: &Record, outcome: Outcome) {
        match outcome {
            Outcome::Pass => {
                self.streak = 0;
                self.report.passed += 1;
                if let Directive::Statement { ok: true, sql } = &rec.directive {
                    if let Some(t) = created_table(sql) {
                        self.report.created_tables.push(t);
                    }
                }
            }
            Outcome::Fail { got, unavailable } => {
                self.streak = if unavailable { self.streak + 1 } else { 0 };
                if self.streak >= UNAVAILABLE_STREAK && self.gone.is_none() {
                    self.gone = Some(format!(
                        "the database stopped answering at line {} of {}: {got}",
                        rec.line, self.name
                    ));
                }
                let expected = expectation(&rec.directive);
                self.report.fail(self.opts, rec, &expected, &got);
            }
        }
    }

    async fn flush<D: Database>(&mut self, db: &D, batch: &mut Vec<(&Record, usize)>) {
        let timeout = self.opts.record_timeout;
        let outcomes: Vec<Outcome> = stream::iter(batch.iter())
            .map(|(rec, threshold)| run_one(db, &rec.directive, *threshold, timeout))
            .buffered(self.opts.concurrency.max(1))
            .collect()
            .await;
        for ((rec, _), outcome) in batch.drain(..).zip(outcomes) {
            self.record(rec, outcome);
        }
    }
}

/// Whether the skip list names this record; its reason.
pub fn known_failure(list: &[KnownFailure], file: &str, rec: &Record) -> Option<&'static str> {
    let file = file.replace('\\', "/");
    list.iter()
        .find(|k| {
            (file == k.file || file.ends_with(&format!("/{}", k.file)))
                && match k.at {
                    At::Line(l) => l == rec.line,
                    At::Sql(s) => rec.sql().contains(s),
                }
        })
        .map(|k| k.reason)
}

/// Runs a script's text against a database. `name` is used in messages and to match the skip
/// list (by suffix).
pub async fn run_script<D: Database>(db: &D, name: &str, text: &str, opts: &RunOptions) -> FileReport {
    run_records(db, name, &parse(text), opts, None).await
}

async fn run_records<D: Database>(
    db: &D,
    name: &str,
    records: &[Record],
    opts: &RunOptions,
    gone: Option<String>,
) -> FileReport {
    let started = Instant::now();
    let mut st = State {
        name,
        opts,
        report: FileReport { name: name.to_string(), ..Default::default() },
        streak: 0,
        gone,
    };
    let mut threshold = DEFAULT_HASH_THRESHOLD;
    let mut halted = false;
    let mut batch: Vec<(&Record, usize)> = Vec::new();
    for rec in records {
        if halted || rec.skipped_for(ENGINE) {
            if rec.is_test() {
                st.report.skipped += 1;
            }
            continue;
        }
        match &rec.directive {
            Directive::HashThreshold(n) => {
                threshold = *n;
                continue;
            }
            Directive::Halt => {
                halted = true;
                continue;
            }
            _ => {}
        }
        st.report.run += 1;
        if let Some(reason) = known_failure(opts.skip_list, name, rec) {
            st.report.known += 1;
            let expected = expectation(&rec.directive);
            st.report.fail(opts, rec, &expected, &format!("not run: in the skip list: {reason}"));
            continue;
        }
        if let Some(gone) = &st.gone {
            let got = format!("not run: {gone}");
            let expected = expectation(&rec.directive);
            st.report.fail(opts, rec, &expected, &got);
            continue;
        }
        let concurrent = matches!(&rec.directive, Directive::Query { sql, .. } if is_read_only(sql));
        if concurrent {
            batch.push((rec, threshold));
            if batch.len() >= 256 {
                st.flush(db, &mut batch).await;
            }
        } else {
            st.flush(db, &mut batch).await;
            if st.gone.is_some() {
                let got = format!("not run: {}", st.gone.as_deref().unwrap_or_default());
                st.report.fail(opts, rec, &expectation(&rec.directive), &got);
                continue;
            }
            let outcome = run_one(db, &rec.directive, threshold, opts.record_timeout).await;
            st.record(rec, outcome);
        }
    }
    st.flush(db, &mut batch).await;
    let mut report = st.report;
    if report.error.is_none() {
        report.error = st.gone;
    }
    report.elapsed = started.elapsed();
    report
}

// ---------------------------------------------------------------------------------------------
// Files and clusters

/// Where files are run.
#[derive(Clone, Debug)]
pub enum Target {
    /// A fresh 3-node cluster of real server processes per file (the harness's [`Cluster`]).
    FreshCluster,
    /// A running cluster at these addresses; tables a file created are dropped after it.
    Addrs(Vec<String>),
    /// The SQL engine in this process over two storage backends at once, a fresh pair per
    /// file ([`crate::engine::EngineDb`]): no cluster, and any disagreement between the
    /// backends is a [`FileReport::differences`].
    InProcess,
}

/// Several files' outcome.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub files: Vec<FileReport>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn run(&self) -> usize {
        self.files.iter().map(|f| f.run).sum()
    }
    pub fn passed(&self) -> usize {
        self.files.iter().map(|f| f.passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.files.iter().map(|f| f.failed).sum()
    }
    pub fn skipped(&self) -> usize {
        self.files.iter().map(|f| f.skipped).sum()
    }
    pub fn known(&self) -> usize {
        self.files.iter().map(|f| f.known).sum()
    }
    /// Disagreements between the engine's two backends ([`Target::InProcess`]).
    pub fn differences(&self) -> usize {
        self.files.iter().map(|f| f.differences).sum()
    }

    /// Passed records in percent of those run (100 when none ran).
    pub fn pass_rate(&self) -> f64 {
        let run = self.run();
        if run == 0 {
            100.0
        } else {
            100.0 * self.passed() as f64 / run as f64
        }
    }

    /// The closing lines: skipped, pass rate and time, then `N passed, N failed` last.
    pub fn totals(&self) -> String {
        format!(
            "skipped: {} records (skipif/onlyif and after halt)\n\
             differences between the in-process backends: {}\n\
             pass rate: {:.2}% of {} records run in {} files ({} failed by the skip list), {:.1} s\n\
             {} passed, {} failed",
            self.skipped(),
            self.differences(),
            self.pass_rate(),
            self.run(),
            self.files.len(),
            self.known(),
            self.elapsed.as_secs_f64(),
            self.passed(),
            self.failed()
        )
    }
}

/// Every `*.test` / `*.slt` file under the given files and directories: directories are
/// walked recursively in sorted order; files named directly are taken as they are.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "test" || e == "slt") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{}", p.display())));
        }
    }
    Ok(out)
}

/// A database that never answers: for a file whose cluster could not start.
struct NoDb;

impl Database for NoDb {
    async fn statement(&self, _: &str) -> Result<(), DbError> {
        Err(DbError { message: "no database".into(), unavailable: true })
    }
    async fn query(&self, _: &str) -> Result<QueryOutput, DbError> {
        Err(DbError { message: "no database".into(), unavailable: true })
    }
}

/// Runs one file against the target.
pub async fn run_file(path: &Path, target: &Target, opts: &RunOptions) -> FileReport {
    let name = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            return FileReport {
                name,
                error: Some(format!("cannot read: {e}")),
                failed: 1,
                ..Default::default()
            }
        }
    };
    let records = parse(&text);
    match target {
        Target::FreshCluster => {
            let cluster = match start_cluster().await {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("no cluster: {e}");
                    return run_records(&NoDb, &name, &records, opts, Some(why)).await;
                }
            };
            let client = cluster.client().await.with_deadline(opts.record_timeout + Duration::from_secs(1));
            let mut report = run_records(&ClientDb::new(client), &name, &records, opts, None).await;
            if let Some(e) = &mut report.error {
                for id in cluster.ids() {
                    e.push_str(&format!("\n--- node {id} log ends:\n{}", cluster.log_tail(id)));
                }
            }
            report
        }
        Target::InProcess => {
            let db = match crate::engine::EngineDb::start(opts.record_timeout) {
                Ok(db) => db,
                Err(e) => return run_records(&NoDb, &name, &records, opts, Some(e)).await,
            };
            let mut report = run_records(&db, &name, &records, opts, None).await;
            db.finish().await;
            for d in db.differences() {
                report.differences += 1;
                report.failures.push(Failure {
                    line: records.iter().find(|r| r.is_test() && r.sql() == d.what).map_or(0, |r| r.line),
                    sql: truncate(&format!("the backends differ on: {}", d.what), opts.truncate),
                    expected: truncate(&format!("in memory: {}", d.memory), opts.truncate),
                    got: truncate(&format!("in sled: {}", d.store), opts.truncate),
                });
            }
            report
        }
        Target::Addrs(addrs) => {
            let client = match Client::connect(addrs).await {
                Ok(c) => c.with_deadline(opts.record_timeout + Duration::from_secs(1)),
                Err(e) => return run_records(&NoDb, &name, &records, opts, Some(e.to_string())).await,
            };
            let db = ClientDb::new(client);
            let mut report = run_records(&db, &name, &records, opts, None).await;
            for t in report.created_tables.iter().rev() {
                if let Err(e) = db.statement(&format!("DROP TABLE IF EXISTS {t}")).await {
                    let msg = format!("cleaning up: DROP TABLE {t}: {}", e.message);
                    report.error.get_or_insert(msg);
                }
            }
            report
        }
    }
}

async fn start_cluster() -> crate::Result<Cluster> {
    let cluster = Cluster::start(3, ClusterOptions::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    Ok(cluster)
}

/// Runs files in order, `jobs` at a time (each on its own cluster with
/// [`Target::FreshCluster`]; one at a time on a shared cluster), calling `each` with every
/// file's report in file order as soon as it and those before it are done.
pub async fn run_files(
    files: &[PathBuf],
    target: &Target,
    opts: &RunOptions,
    jobs: usize,
    mut each: impl FnMut(&FileReport),
) -> Summary {
    let started = Instant::now();
    let jobs = if matches!(target, Target::Addrs(_)) { 1 } else { jobs.max(1) };
    let mut reports = stream::iter(files).map(|f| run_file(f, target, opts)).buffered(jobs);
    let mut summary = Summary::default();
    while let Some(r) = reports.next().await {
        each(&r);
        summary.files.push(r);
    }
    summary.elapsed = started.elapsed();
    summary
}

/// A file's report as text: its line, then up to `max` failures.
pub fn describe(report: &FileReport, max: usize) -> String {
    let mut s = report.line();
    for f in report.failures.iter().take(max) {
        s.push_str(&format!(
            "\n  line {}: {}\n    expected: {}\n    got:      {}",
            f.line,
            f.sql.replace('\n', " "),
            f.expected.replace('\n', " | "),
            f.got.replace('\n', " | ")
        ));
    }
    let shown = max.min(report.failures.len());
    if shown > 0 && report.failed > shown {
        s.push_str(&format!("\n  … {} failures in all", report.failed));
    }
    if let Some(e) = &report.error {
        s.push_str(&format!("\n  stopped early: {}", e.replace('\n', "\n    ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn v_i(i: i64) -> Value {
        Value::Integer(i)
    }
    fn v_t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn integers_render_by_type_letter() {
        assert_eq!(render(&v_i(42), 'I'), "42");
        assert_eq!(render(&v_i(-7), 'R'), "-7.000");
        assert_eq!(render(&v_i(42), 'T'), "42");
        assert_eq!(render(&v_i(i64::MIN), 'I'), "-9223372036854775808");
    }

    #[test]
    fn reals_render_by_type_letter() {
        // I truncates toward zero, R has three decimals, T is SQLite's %!.15g.
        assert_eq!(render(&Value::Real(2.9), 'I'), "2");
        assert_eq!(render(&Value::Real(-2.9), 'I'), "-2");
        assert_eq!(render(&Value::Real(1e300), 'I'), i64::MAX.to_string());
        assert_eq!(render(&Value::Real(1.5), 'R'), "1.500");
        assert_eq!(render(&Value::Real(-0.0004), 'R'), "-0.000");
        assert_eq!(render(&Value::Real(2.0 / 3.0), 'R'), "0.667");
        assert_eq!(render(&Value::Real(1.5), 'T'), "1.5");
        assert_eq!(render(&Value::Real(100.0), 'T'), "100.0");
        assert_eq!(render(&Value::Real(-0.25), 'T'), "-0.25");
        assert_eq!(render(&Value::Real(0.1 + 0.2), 'T'), "0.3");
        assert_eq!(render(&Value::Real(1.0 / 3.0), 'T'), "0.333333333333333");
        assert_eq!(render(&Value::Real(1e20), 'T'), "1.0e+20");
        assert_eq!(render(&Value::Real(1.25e-7), 'T'), "1.25e-07");
        assert_eq!(render(&Value::Real(0.0001), 'T'), "0.0001");
        assert_eq!(render(&Value::Real(123456789012345.0), 'T'), "123456789012345.0");
        assert_eq!(render(&Value::Real(1234567890123456.0), 'T'), "1.23456789012346e+15");
        assert_eq!(render(&Value::Real(100000000000000.0), 'T'), "100000000000000.0");
        assert_eq!(render(&Value::Real(1e15), 'T'), "1.0e+15");
        assert_eq!(render(&Value::Real(0.00001), 'T'), "1.0e-05");
        assert_eq!(render(&Value::Real(9.999999999999999e14), 'T'), "1.0e+15");
    }

    #[test]
    fn text_renders_by_type_letter() {
        assert_eq!(render(&v_t("abc"), 'T'), "abc");
        assert_eq!(render(&v_t("12abc"), 'I'), "12");
        assert_eq!(render(&v_t("  -3.7x"), 'I'), "-3");
        assert_eq!(render(&v_t("abc"), 'I'), "0");
        assert_eq!(render(&v_t("99999999999999999999"), 'I'), i64::MAX.to_string());
        assert_eq!(render(&v_t("3.25e1xyz"), 'R'), "32.500");
        assert_eq!(render(&v_t(".5"), 'R'), "0.500");
        assert_eq!(render(&v_t("-"), 'R'), "0.000");
        assert_eq!(render(&v_t("1e"), 'R'), "1.000");
        assert_eq!(render(&v_t("abc"), 'R'), "0.000");
    }

    #[test]
    fn null_empty_booleans_and_unprintables() {
        for t in ['I', 'R', 'T'] {
            assert_eq!(render(&Value::Null, t), "NULL");
        }
        assert_eq!(render(&v_t(""), 'T'), "(empty)");
        assert_eq!(render(&Value::Blob(vec![]), 'T'), "(empty)");
        assert_eq!(render(&v_t("a\tb\u{7f}"), 'T'), "a@b@");
        // Per byte, as the reference runner replaces them: é is two bytes in UTF-8.
        assert_eq!(render(&v_t("caf\u{e9}"), 'T'), "caf@@");
        assert_eq!(render(&Value::Blob(b"x\x00y".to_vec()), 'T'), "x@y");
        assert_eq!(render(&Value::Boolean(true), 'I'), "1");
        assert_eq!(render(&Value::Boolean(false), 'T'), "0");
        assert_eq!(render(&Value::Boolean(true), 'R'), "1.000");
    }

    fn rows(r: &[&[i64]]) -> Vec<Vec<Value>> {
        r.iter().map(|row| row.iter().map(|&i| v_i(i)).collect()).collect()
    }

    #[test]
    fn sort_modes_compare_rendered_text() {
        let r = rows(&[&[10, 2], &[9, 30], &[10, 1]]);
        assert_eq!(render_result("II", SortMode::NoSort, &r).unwrap(), ["10", "2", "9", "30", "10", "1"]);
        // Rows compare as lists of strings: "10" < "9".
        assert_eq!(render_result("II", SortMode::RowSort, &r).unwrap(), ["10", "1", "10", "2", "9", "30"]);
        assert_eq!(render_result("II", SortMode::ValueSort, &r).unwrap(), ["1", "10", "10", "2", "30", "9"]);
        let mixed = vec![vec![Value::Null, v_t("b")], vec![v_i(-1), v_t("")]];
        assert_eq!(render_result("IT", SortMode::RowSort, &mixed).unwrap(), ["-1", "(empty)", "NULL", "b"]);
        assert!(render_result("III", SortMode::NoSort, &r).unwrap_err().contains("expected 3 but got 2"));
    }

    #[test]
    fn hash_threshold_hashes_like_the_corpus() {
        // random/select/slt_good_0.test: `query III rowsort` / `SELECT * FROM tab0 AS cor0` over
        // the rows (89,91,82), (35,97,1), (24,86,33) expects this line.
        let r = rows(&[&[89, 91, 82], &[35, 97, 1], &[24, 86, 33]]);
        let values = render_result("III", SortMode::RowSort, &r).unwrap();
        assert_eq!(result_lines(values.clone(), 8), ["9 values hashing to 38a1673e2e09d694c8cec45c797034a7"]);
        assert_eq!(result_lines(values.clone(), 9).len(), 9, "at the threshold: values");
        assert_eq!(result_lines(values, 0).len(), 9, "0: never hash");
        assert_eq!(md5_hex(&[]), "d41d8cd98f00b204e9800998ecf8427e");
    }

    const SCRIPT: &str = "hash-threshold 3\r\n\
\r\n\
statement ok\r\n\
CREATE TABLE t1(a INTEGER,\r\n\
 b INTEGER)\r\n\
\r\n\
# a comment\r\n\
onlyif mysql # a comment after the engine\r\n\
query I rowsort label-1\r\n\
SELECT a DIV b FROM t1\r\n\
----\r\n\
1\r\n\
   \r\n\
skipif mysql\r\n\
query II valuesort\r\n\
SELECT a,\r\n\
# dropped\r\n\
b FROM t1\r\n\
----\r\n\
4 values hashing to 0123\r\n\
\r\n\
statement error\r\n\
DROP TABLE nope\r\n\
\r\n\
query T\r\n\
SELECT 'x'\r\n\
\r\n\
frobnicate\r\n\
\r\n\
onlyif raftsql\r\n\
halt\r\n\
\r\n\
statement ok\r\n\
SELECT 1\r\n";

    #[test]
    fn parses_records() {
        let r = parse(SCRIPT);
        assert_eq!(r.len(), 9, "{r:#?}");
        assert_eq!(r[0].directive, Directive::HashThreshold(3));
        assert_eq!(
            r[1].directive,
            Directive::Statement { ok: true, sql: "CREATE TABLE t1(a INTEGER,\nb INTEGER)".into() }
        );
        assert_eq!(r[1].line, 3);
        assert_eq!(r[2].conditions, [Condition::OnlyIf("mysql".into())]);
        assert_eq!(
            r[2].directive,
            Directive::Query {
                types: "I".into(),
                sort: SortMode::RowSort,
                label: Some("label-1".into()),
                sql: "SELECT a DIV b FROM t1".into(),
                expected: vec!["1".into()],
            }
        );
        assert_eq!(r[2].line, 9);
        assert!(r[2].skipped_for(ENGINE));
        assert!(!r[3].skipped_for(ENGINE));
        match &r[3].directive {
            Directive::Query { sort, sql, expected, label, .. } => {
                assert_eq!(*sort, SortMode::ValueSort);
                assert_eq!(sql, "SELECT a,\nb FROM t1");
                assert_eq!(expected, &["4 values hashing to 0123"]);
                assert_eq!(label, &None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r[4].directive, Directive::Statement { ok: false, sql: "DROP TABLE nope".into() });
        assert!(matches!(&r[5].directive, Directive::Query { expected, .. } if expected.is_empty()));
        assert!(
            matches!(&r[6].directive, Directive::Invalid { message, .. } if message.contains("frobnicate"))
        );
        assert_eq!(r[7].directive, Directive::Halt);
        assert!(!r[7].skipped_for(ENGINE), "onlyif raftsql is for us");
        assert!(matches!(r[8].directive, Directive::Statement { ok: true, .. }));
        assert!(parse("query error\nSELECT nope\n")
            .iter()
            .all(|r| matches!(r.directive, Directive::QueryError { .. })));
        assert!(matches!(parse("query X\nSELECT 1\n")[0].directive, Directive::Invalid { .. }));
        assert!(matches!(parse("query I sideways\nSELECT 1\n")[0].directive, Directive::Invalid { .. }));
        assert!(matches!(
            parse("skipif mysql\n\nquery I\nSELECT 1\n")[0].directive,
            Directive::Invalid { .. }
        ));
    }

    #[test]
    fn finds_created_tables() {
        assert_eq!(created_table("CREATE TABLE t1(a INT)").as_deref(), Some("t1"));
        assert_eq!(created_table("create temp table IF NOT EXISTS t2 (a)").as_deref(), Some("t2"));
        assert_eq!(created_table("CREATE INDEX i ON t(a)"), None);
    }

    /// A scripted database: queries answer from a table of SQL → result, statements succeed
    /// unless their SQL contains "nope"; "stall" never answers; "down" is unavailable.
    #[derive(Default)]
    struct Scripted {
        answers: HashMap<&'static str, Result<QueryOutput, DbError>>,
        seen: Mutex<Vec<String>>,
    }

    impl Database for Scripted {
        async fn statement(&self, sql: &str) -> Result<(), DbError> {
            self.seen.lock().unwrap().push(sql.to_string());
            if sql.contains("stall") {
                std::future::pending::<()>().await;
            }
            if sql.contains("down") {
                return Err(DbError { message: "TRANSPORT: down".into(), unavailable: true });
            }
            if sql.contains("nope") {
                return Err(DbError::sql("NOT_FOUND: no such table"));
            }
            Ok(())
        }
        async fn query(&self, sql: &str) -> Result<QueryOutput, DbError> {
            self.seen.lock().unwrap().push(sql.to_string());
            self.answers.get(sql).cloned().unwrap_or_else(|| Err(DbError::sql("SYNTAX: unknown")))
        }
    }

    fn out(rows: Vec<Vec<Value>>, columns: usize) -> Result<QueryOutput, DbError> {
        Ok(QueryOutput { columns: Some(columns), rows })
    }

    fn opts() -> RunOptions {
        RunOptions { record_timeout: Duration::from_millis(200), ..Default::default() }
    }

    #[tokio::test]
    async fn runs_and_counts_a_script() {
        let mut db = Scripted::default();
        db.answers.insert("SELECT a,\nb FROM t1", out(rows(&[&[1, 2], &[3, 4]]), 2));
        db.answers.insert("SELECT 'x'", out(vec![], 1));
        let report = run_script(&db, "x/script.test", SCRIPT, &opts()).await;
        // Run: CREATE (pass), the valuesort query (hash mismatch: fails), the statement error
        // (passes), SELECT 'x' (passes: no rows expected), frobnicate (fails). Skipped: the
        // onlyif mysql query and the statement after halt.
        assert_eq!((report.run, report.passed, report.failed, report.skipped), (5, 3, 2, 2), "{report:#?}");
        assert_eq!(report.failures[0].line, 15);
        assert!(report.failures[0].got.starts_with("4 values hashing to "), "{:?}", report.failures[0]);
        assert!(report.failures[0].got.contains("values: 1 2 3 4"), "{:?}", report.failures[0]);
        assert_eq!(report.failures[1].line, 28);
        assert_eq!(report.created_tables, ["t1"]);
        assert!(!db.seen.lock().unwrap().iter().any(|s| s.contains("DIV") || s == "SELECT 1"));
        assert_eq!(report.line(), "x/script.test: 3 passed, 2 failed, 2 skipped");
    }

    #[tokio::test]
    async fn judges_statements_and_queries() {
        let mut db = Scripted::default();
        db.answers.insert("SELECT 1", out(vec![vec![v_i(1)]], 1));
        db.answers.insert("SELECT 2", out(vec![vec![v_i(2), v_i(2)]], 2));
        let script = "statement ok\nINSERT nope\n\nstatement error\nINSERT fine\n\n\
                      query I\nSELECT 1\n----\n1\n\nquery I\nSELECT 1\n----\n2\n\n\
                      query I\nSELECT 2\n----\n2\n2\n\nquery error\nSELECT 1\n\n\
                      query error\nSELECT 3\n\nquery I\nSELECT 1\n----\n1\n1\n";
        let report = run_script(&db, "judge.test", script, &opts()).await;
        let lines: Vec<usize> = report.failures.iter().map(|f| f.line).collect();
        assert_eq!((report.passed, report.failed), (2, 6), "{report:#?}");
        assert_eq!(lines, [1, 4, 12, 17, 23, 29]);
        assert!(report.failures[3].got.contains("wrong number of result columns"));
        assert!(report.failures[0].got.contains("NOT_FOUND"));
    }

    #[tokio::test]
    async fn known_failures_are_failed_without_being_sent() {
        static LIST: &[KnownFailure] = &[
            KnownFailure { file: "dir/k.test", at: At::Line(4), reason: "by design" },
            KnownFailure { file: "k.test", at: At::Sql("REINDEX"), reason: "no REINDEX" },
        ];
        let db = Scripted::default();
        let script = "statement ok\nCREATE TABLE a(x)\n\nstatement ok\nCREATE TABLE b(x)\n\n\
                      statement ok\nREINDEX a\n";
        let o = RunOptions { skip_list: LIST, ..opts() };
        let report = run_script(&db, "/some/dir/k.test", script, &o).await;
        assert_eq!((report.run, report.passed, report.failed, report.known), (3, 1, 2, 2));
        assert!(report.failures[0].got.contains("by design"));
        assert_eq!(*db.seen.lock().unwrap(), ["CREATE TABLE a(x)"]);
        let report = run_script(&db, "other.test", script, &o).await;
        assert_eq!(report.known, 0);
    }

    #[tokio::test]
    async fn a_dead_database_ends_the_file_quickly() {
        let db = Scripted::default();
        let mut script = String::from("statement ok\nINSERT stall\n\n");
        for i in 0..50 {
            script.push_str(&format!("statement ok\nINSERT down {i}\n\n"));
        }
        script.push_str("skipif raftsql\nstatement ok\nINSERT x\n\nhalt\n\nstatement ok\nINSERT y\n");
        let started = Instant::now();
        let report = run_script(&db, "dead.test", &script, &opts()).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!((report.run, report.failed, report.skipped), (51, 51, 2));
        assert!(report.failures[0].got.contains("no answer within"), "{:?}", report.failures[0]);
        assert!(report.failures[3].got.starts_with("not run: the database stopped answering at line 7"));
        assert_eq!(db.seen.lock().unwrap().len(), 3);
        assert!(report.error.is_some());
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé… (3 more chars)");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn summary_ends_with_the_plain_line() {
        let s = Summary {
            files: vec![
                FileReport { run: 3, passed: 2, failed: 1, skipped: 4, ..Default::default() },
                FileReport { run: 1, passed: 1, ..Default::default() },
            ],
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(s.pass_rate(), 75.0);
        let t = s.totals();
        assert_eq!(t.lines().last(), Some("3 passed, 1 failed"));
        assert!(t.contains("skipped: 4 records"));
        assert!(t.contains("pass rate: 75.00%"));
    }
}
