//! The `raftsql` shell's core: split SQL text into statements, send reads as queries and
//! everything else as writes, print results as a table, CSV, `column = value` lines or JSON.
//!
//! Layering (a `use` only points down): `shell` (this core: [`Shell`], [`Format`], statement
//! splitting and printing) ← `meta` (the `.` commands) ← `repl` (the interactive prompt) ←
//! `demo` (a local cluster); `bench` uses only this core. What the lower layers need of the demo
//! is the [`DemoCommands`] trait, defined here and implemented by `demo`.
//!
//! The JSON contract (stable): one object per statement and line,
//! `{"columns":[..],"rows":[[..]],"rows_affected":N,"receipt":{"node":N,"term":N,"index":N,"token":".."}}`,
//! or `{"error":{"code":"CONSTRAINT","message":".."}}` for a failed statement.

use raftsql_client::{is_read_only, Client, Consistency, Error, QueryOptions, Receipt, Session, Value};
use serde_json::json;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

/// Output formats (`--format` and `.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header and a row count; NULL shown as `NULL`.
    Table,
    /// RFC 4180 CSV with a header line; NULL is an empty field.
    Csv,
    /// One JSON object per statement (the stable contract above).
    Json,
    /// One `column = value` line per column, a blank line between rows.
    Line,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "box" | "column" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "line" => Some(Format::Line),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Line => "line",
        }
    }
}

/// Splits SQL text at `;` outside quotes and comments; returns trimmed, non-empty statements.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' | '`' => {
                cur.push(c);
                i += 1;
                while i < chars.len() {
                    cur.push(chars[i]);
                    if chars[i] == c {
                        if i + 1 < chars.len() && chars[i + 1] == c {
                            cur.push(c); // doubled quote
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                cur.push('\n');
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 1;
                cur.push(' ');
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// True when `text` ends with a `;` outside quotes and comments (a statement is complete) and
/// every `BEGIN` has its `COMMIT`/`END`: the REPL and line-based readers run the buffer then.
pub fn input_complete(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut last_significant: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' | '`' => {
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        closed = true;
                        break;
                    }
                    i += 1;
                }
                if !closed {
                    return false;
                }
                last_significant = Some(c);
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                if i >= chars.len() {
                    return false;
                }
                i += 1;
            }
            c if c.is_whitespace() => {}
            c => last_significant = Some(c),
        }
        i += 1;
    }
    if last_significant != Some(';') {
        return false;
    }
    let mut open = false;
    for stmt in split_statements(text) {
        match first_keyword(&stmt).as_str() {
            "BEGIN" => open = true,
            "COMMIT" | "END" | "ROLLBACK" => open = false,
            _ => {}
        }
    }
    !open
}

fn first_keyword(stmt: &str) -> String {
    stmt.split(|c: char| c.is_whitespace() || c == '(')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// One unit of work: a query, or a write request of one or more statements.
#[derive(Debug, PartialEq)]
pub enum Unit {
    Query(String),
    Write { statements: Vec<String>, transaction: bool },
}

/// Groups statements: queries alone, each write alone, BEGIN ... COMMIT as one transaction. A
/// statement is a query when [`is_read_only`] says so, as the server judges it.
pub fn plan(statements: Vec<String>) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut txn: Option<Vec<String>> = None;
    for s in statements {
        let kw = first_keyword(&s);
        match (&mut txn, kw.as_str()) {
            (None, "BEGIN") => txn = Some(vec![]),
            (Some(body), "COMMIT" | "END") => {
                units.push(Unit::Write { statements: std::mem::take(body), transaction: true });
                txn = None;
            }
            (Some(body), _) => body.push(s),
            (None, _) if is_read_only(&s) => units.push(Unit::Query(s)),
            (None, _) => units.push(Unit::Write { statements: vec![s], transaction: false }),
        }
    }
    if let Some(body) = txn {
        // An unterminated transaction is sent as one: it commits or fails as a whole.
        units.push(Unit::Write { statements: body, transaction: true });
    }
    units
}

pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        Value::Real(r) => json!(r),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(format!("\\x{}", hex(b))),
        Value::Boolean(b) => json!(b),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value for people: `NULL` for NULL, text as is, reals in their shortest exact form.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Text(s) => s.clone(),
        Value::Real(r) => real_text(*r),
        Value::Blob(b) => format!("\\x{}", hex(b)),
        other => value_json(other).to_string(),
    }
}

/// The shortest text that parses back to exactly `r`, always with a `.` or an exponent so it
/// stays a REAL.
pub fn real_text(r: f64) -> String {
    if r.is_nan() {
        return "NULL".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "1e999".into() } else { "-1e999".into() };
    }
    let s = format!("{r:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A SQL literal that evaluates back to exactly `v` (for `.dump`).
pub fn sql_literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => real_text(*r),
        Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Blob(b) => format!("X'{}'", hex(b)),
        Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.into(),
    }
}

/// An identifier, double-quoted unless it is a plain lower-case-safe name.
pub fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !is_keyword(name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn is_keyword(name: &str) -> bool {
    const KW: &[&str] = &[
        "ADD",
        "ALL",
        "AND",
        "AS",
        "ASC",
        "BEGIN",
        "BETWEEN",
        "BY",
        "CASE",
        "CHECK",
        "COLUMN",
        "COMMIT",
        "CONSTRAINT",
        "CREATE",
        "CROSS",
        "DEFAULT",
        "DELETE",
        "DESC",
        "DISTINCT",
        "DROP",
        "ELSE",
        "END",
        "EXCEPT",
        "EXISTS",
        "FROM",
        "FULL",
        "GROUP",
        "HAVING",
        "IN",
        "INDEX",
        "INNER",
        "INSERT",
        "INTERSECT",
        "INTO",
        "IS",
        "JOIN",
        "KEY",
        "LEFT",
        "LIKE",
        "LIMIT",
        "NOT",
        "NULL",
        "OFFSET",
        "ON",
        "OR",
        "ORDER",
        "OUTER",
        "PRIMARY",
        "REFERENCES",
        "RIGHT",
        "ROLLBACK",
        "SELECT",
        "SET",
        "TABLE",
        "THEN",
        "TO",
        "UNION",
        "UNIQUE",
        "UPDATE",
        "USING",
        "VALUES",
        "WHEN",
        "WHERE",
        "WITH",
    ];
    KW.iter().any(|k| k.eq_ignore_ascii_case(name))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    json!({"node": r.node_id, "term": r.term, "index": r.index, "token": r.session_token})
}

/// Parses `strong`, `ryw` (or `read_your_writes`), `bounded:DURATION` (e.g. `bounded:500ms`,
/// `bounded:2s`) and `any`.
pub fn parse_consistency(s: &str) -> Result<raftsql_client::Consistency, String> {
    use raftsql_client::Consistency;
    let lower = s.trim().to_ascii_lowercase();
    match lower.as_str() {
        "strong" => Ok(Consistency::Strong),
        "ryw" | "read_your_writes" | "read-your-writes" => Ok(Consistency::ReadYourWrites),
        "any" => Ok(Consistency::Any),
        _ => match lower.strip_prefix("bounded:") {
            Some(d) => parse_duration(d).map(Consistency::Bounded),
            None => Err(format!("unknown consistency level {s:?}: use strong, ryw, bounded:DURATION or any")),
        },
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("bad duration {s:?}: use e.g. 500ms, 2s or 1m (positive)");
    let (num, unit) =
        s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A statement's printed outcome.
pub struct Printed {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    pub receipt: Receipt,
    pub is_query: bool,
}

pub fn print(out: &mut dyn Write, format: Format, result: &Result<Printed, Error>) -> std::io::Result<()> {
    let p = match (format, result) {
        (Format::Json, Ok(p)) => {
            let rows: Vec<Vec<serde_json::Value>> =
                p.rows.iter().map(|r| r.iter().map(value_json).collect()).collect();
            let obj = json!({"columns": p.columns, "rows": rows, "rows_affected": p.rows_affected, "receipt": receipt_json(&p.receipt)});
            return writeln!(out, "{obj}");
        }
        (Format::Json, Err(e)) => {
            return writeln!(out, "{}", json!({"error": {"code": e.code(), "message": e.to_string()}}));
        }
        (_, Err(_)) => return Ok(()), // errors go to stderr
        (_, Ok(p)) => p,
    };
    if !p.is_query && p.columns.is_empty() {
        return match format {
            Format::Csv => Ok(()),
            _ => writeln!(
                out,
                "OK, {} row{} affected",
                p.rows_affected,
                if p.rows_affected == 1 { "" } else { "s" }
            ),
        };
    }
    match format {
        Format::Csv => {
            writeln!(out, "{}", p.columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","))?;
            for row in &p.rows {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| if *v == Value::Null { String::new() } else { csv_field(&value_text(v)) })
                    .collect();
                writeln!(out, "{}", cells.join(","))?;
            }
            Ok(())
        }
        Format::Line => {
            let w = p.columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
            for (i, row) in p.rows.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                for (c, v) in p.columns.iter().zip(row) {
                    writeln!(out, "{c:>w$} = {}", value_text(v))?;
                }
            }
            if p.rows.is_empty() {
                writeln!(out, "(0 rows)")?;
            }
            Ok(())
        }
        _ => {
            let cells: Vec<Vec<String>> = p.rows.iter().map(|r| r.iter().map(value_text).collect()).collect();
            let mut widths: Vec<usize> = p.columns.iter().map(|c| c.chars().count()).collect();
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |vals: &[String]| {
                vals.iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(&p.columns))?;
            writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"))?;
            for row in &cells {
                writeln!(out, "{}", line(row))?;
            }
            writeln!(out, "({} row{})", p.rows.len(), if p.rows.len() == 1 { "" } else { "s" })
        }
    }
}

/// An error for people: `error (CODE): message`, and for a syntax error the statement line it
/// points at with a caret under the column.
pub fn render_error(e: &Error, statement: Option<&str>) -> String {
    let mut s = format!("error ({}): {e}", e.code());
    if let (Error::Syntax { line, column, .. }, Some(stmt)) = (e, statement) {
        if *line >= 1 {
            if let Some(text) = stmt.lines().nth(*line as usize - 1) {
                let prefix = format!("LINE {line}: ");
                let col = (*column as usize).max(1) - 1;
                let pad: String =
                    text.chars().take(col).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                s.push_str(&format!("\n{prefix}{text}\n{}{pad}^", " ".repeat(prefix.len())));
            }
        }
    }
    s
}

/// What to do after a command.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Flow {
    Continue,
    Quit,
}

/// The `.demo` commands of `raftsql demo`. The `demo` module, above this one, implements it and
/// sets [`Shell::demo`]; `meta` dispatches `.demo` and `.help` through it without naming `demo`.
pub trait DemoCommands: Send + Sync {
    /// The help text `.help` prints after the shell's own.
    fn help(&self) -> &'static str;
    /// Every node's address, in id order (`.status` and `.nodes` ask these too).
    fn addrs(&self) -> Vec<String>;
    /// Runs `.demo ARGS` (the words after `.demo`); an error is printed as `error: ...`.
    fn run<'a>(
        &'a self,
        shell: &'a mut Shell,
        args: &'a [&'a str],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
}

/// The shell's state: connection, session, output settings. Both the REPL and the
/// non-interactive paths (`-e`, `-f`, stdin, `.read`) go through it.
pub struct Shell {
    pub client: Client,
    /// Carries the newest session token, so `ryw` reads see this shell's own writes.
    pub session: Session,
    pub format: Format,
    pub consistency: Consistency,
    pub timer: bool,
    pub receipts: bool,
    pub out: Box<dyn Write + Send>,
    /// Statements and commands that failed so far (the exit status is 1 when non-zero).
    pub failed: usize,
    /// Set by `raftsql demo`: the cluster behind `.demo` commands.
    pub demo: Option<Arc<dyn DemoCommands>>,
    pub(crate) read_depth: usize,
}

impl Shell {
    pub fn new(client: Client, format: Format) -> Shell {
        Shell {
            session: client.session(),
            client,
            format,
            consistency: Consistency::Strong,
            timer: false,
            receipts: false,
            out: Box::new(std::io::stdout()),
            failed: 0,
            demo: None,
            read_depth: 0,
        }
    }

    pub(crate) fn error(&mut self, message: impl std::fmt::Display) {
        self.failed += 1;
        let _ = self.out.flush();
        eprintln!("{message}");
    }

    /// Runs SQL text (one or more statements, `;`-separated); prints each outcome.
    pub async fn run_sql(&mut self, text: &str) {
        let opts = QueryOptions { consistency: self.consistency, ..Default::default() };
        for unit in plan(split_statements(text)) {
            let started = std::time::Instant::now();
            let outcomes: Vec<(String, Result<Printed, Error>)> = match unit {
                Unit::Query(sql) => {
                    let r = self.session.query(&sql, &[], opts.clone()).await.map(|r| Printed {
                        columns: r.columns,
                        rows: r.rows,
                        rows_affected: 0,
                        receipt: r.receipt,
                        is_query: true,
                    });
                    vec![(sql, r)]
                }
                Unit::Write { statements, transaction } => {
                    let batch = statements.iter().map(|s| (s.clone(), vec![])).collect();
                    match self.session.execute_batch(batch, transaction).await {
                        Ok(res) => statements
                            .into_iter()
                            .zip(res.results)
                            .map(|(sql, r)| {
                                let r = r.map(|s| Printed {
                                    columns: s.columns,
                                    rows: s.rows,
                                    rows_affected: s.rows_affected,
                                    receipt: res.receipt.clone(),
                                    is_query: false,
                                });
                                (sql, r)
                            })
                            .collect(),
                        Err(e) => {
                            let n = statements.len().max(1);
                            let first = statements.into_iter().next().unwrap_or_default();
                            (0..n).map(|_| (first.clone(), Err(e.clone()))).collect()
                        }
                    }
                }
            };
            let elapsed = started.elapsed();
            for (sql, p) in outcomes {
                if let Err(e) = &p {
                    self.error(render_error(e, Some(&sql)));
                }
                let _ = print(&mut self.out, self.format, &p);
                if let (Ok(p), true) = (&p, self.receipts && self.format != Format::Json) {
                    let r = &p.receipt;
                    let level = if p.is_query { r.level.as_str() } else { "write" };
                    let _ = writeln!(
                        self.out,
                        "receipt: node {} ({}), term {}, index {}, level {}",
                        r.node_id, r.role, r.term, r.index, level
                    );
                }
            }
            if self.timer && self.format != Format::Json {
                let _ = writeln!(self.out, "Time: {:.3} ms", elapsed.as_secs_f64() * 1000.0);
            }
        }
        let _ = self.out.flush();
    }

    /// Runs one `-e` argument: a meta command when it starts with `.`, else SQL.
    pub async fn run_arg(&mut self, text: &str) -> Flow {
        if text.trim_start().starts_with('.') {
            let mut flow = Flow::Continue;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                flow = self.run_command(line.trim()).await;
                if flow == Flow::Quit {
                    break;
                }
            }
            flow
        } else {
            self.run_sql(text).await;
            Flow::Continue
        }
    }

    /// Runs a script (a file, standard input, `.read`): meta commands on lines of their own
    /// between statements, statements run as soon as their `;` is read.
    pub async fn run_script(&mut self, text: &str) -> Flow {
        let mut buffer = String::new();
        for line in text.lines() {
            if buffer.trim().is_empty() && line.trim_start().starts_with('.') {
                buffer.clear();
                if self.run_command(line.trim()).await == Flow::Quit {
                    return Flow::Quit;
                }
                continue;
            }
            buffer.push_str(line);
            buffer.push('\n');
            if input_complete(&buffer) {
                let text = std::mem::take(&mut buffer);
                self.run_sql(&text).await;
            }
        }
        if !buffer.trim().is_empty() {
            self.run_sql(&buffer).await;
        }
        Flow::Continue
    }
}

/// Runs SQL text with a plain client; prints each statement's outcome; returns how many
/// statements failed.
pub async fn run_text(
    client: &Client,
    text: &str,
    format: Format,
    opts: &QueryOptions,
    out: &mut dyn Write,
) -> usize {
    let mut shell = Shell::new(client.clone(), format);
    shell.consistency = opts.consistency;
    if let Some(t) = &opts.session_token {
        shell.session = client.session_from(t);
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    shell.out = Box::new(SharedBuf(buf.clone()));
    shell.run_sql(text).await;
    let _ = out.write_all(&buf.lock().expect("buffer"));
    shell.failed
}

/// A `Write` into a shared buffer (for capturing a shell's output).
#[derive(Clone)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_respects_quotes_and_comments() {
        let s = split_statements("SELECT 'a;b'; -- c;d\nINSERT INTO t VALUES (\"x;\"); /* ; */ SELECT 1;;");
        assert_eq!(s, ["SELECT 'a;b'", "INSERT INTO t VALUES (\"x;\")", "SELECT 1"]);
        assert_eq!(split_statements("SELECT 'it''s;'"), ["SELECT 'it''s;'"]);
        assert!(split_statements("  ;; -- nothing\n").is_empty());
    }

    #[test]
    fn statements_are_planned_into_queries_writes_and_transactions() {
        let units = plan(split_statements("SELECT 1; INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2); DELETE FROM t; COMMIT; with x as (select 1) select * from x; WITH x AS (SELECT 1) DELETE FROM t; (EXPLAIN SELECT 1)"));
        assert_eq!(units.len(), 6);
        assert_eq!(units[0], Unit::Query("SELECT 1".into()));
        assert!(matches!(&units[1], Unit::Write { statements, transaction: false } if statements.len() == 1));
        assert!(matches!(&units[2], Unit::Write { statements, transaction: true } if statements.len() == 2));
        assert!(matches!(&units[3], Unit::Query(_)));
        assert!(matches!(&units[4], Unit::Write { statements, transaction: false } if statements.len() == 1));
        assert!(matches!(&units[5], Unit::Query(_)));
    }

    #[test]
    fn json_output_follows_the_contract() {
        let p = Printed {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![Value::Integer(1), Value::Null], vec![Value::Real(1.5), Value::Blob(vec![0xab])]],
            rows_affected: 0,
            receipt: Receipt { node_id: 2, term: 3, index: 9, ..Default::default() },
            is_query: true,
        };
        let mut out = Vec::new();
        print(&mut out, Format::Json, &Ok(p)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"columns":["a","b"],"rows":[[1,null],[1.5,"\\xab"]],"rows_affected":0,"receipt":{"node":2,"term":3,"index":9,"token":""}})
        );
        let mut out = Vec::new();
        print(&mut out, Format::Json, &Err(Error::Constraint { message: "dup".into() })).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap().trim(),
            r#"{"error":{"code":"CONSTRAINT","message":"dup"}}"#
        );
    }

    #[test]
    fn input_is_complete_at_a_semicolon_outside_quotes_comments_and_transactions() {
        assert!(input_complete("SELECT 1;"));
        assert!(input_complete("SELECT 1; -- trailing comment\n"));
        assert!(!input_complete("SELECT 1"));
        assert!(!input_complete("SELECT 'a;"));
        assert!(!input_complete("SELECT 1 /* ; */"));
        assert!(input_complete("SELECT 'it''s;';"));
        assert!(!input_complete("BEGIN; INSERT INTO t VALUES (1);"));
        assert!(input_complete("BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;"));
    }

    #[test]
    fn literals_round_trip() {
        assert_eq!(sql_literal(&Value::Text("it's".into())), "'it''s'");
        assert_eq!(sql_literal(&Value::Blob(vec![0, 0xab])), "X'00ab'");
        assert_eq!(sql_literal(&Value::Null), "NULL");
        assert_eq!(sql_literal(&Value::Real(3.0)), "3.0");
        for r in [0.1, 1.0 / 3.0, 1e-300, -2.5e300, 0.30000000000000004, f64::MIN_POSITIVE] {
            assert_eq!(real_text(r).parse::<f64>().unwrap().to_bits(), r.to_bits(), "{r}");
        }
        assert_eq!(quote_ident("users"), "users");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("my \"t\""), "\"my \"\"t\"\"\"");
    }

    #[test]
    fn syntax_errors_point_at_their_column() {
        let e = Error::Syntax { message: "bad".into(), line: 2, column: 6 };
        let text = render_error(&e, Some("SELECT 1\nFROM  x"));
        assert_eq!(text, "error (SYNTAX): bad\nLINE 2: FROM  x\n             ^");
    }

    #[test]
    fn csv_and_line_modes() {
        let p = || {
            Ok(Printed {
                columns: vec!["a".into(), "bb".into()],
                rows: vec![vec![Value::Text("x,\"y\"".into()), Value::Null]],
                rows_affected: 0,
                receipt: Receipt::default(),
                is_query: true,
            })
        };
        let mut out = Vec::new();
        print(&mut out, Format::Csv, &p()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a,bb\n\"x,\"\"y\"\"\",\n");
        let mut out = Vec::new();
        print(&mut out, Format::Line, &p()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), " a = x,\"y\"\nbb = NULL\n");
    }
}
