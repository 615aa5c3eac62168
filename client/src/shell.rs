//! The non-interactive `raftsql` shell: split SQL text into statements, send reads as queries
//! and everything else as writes, print results as a table or as JSON lines.
//!
//! The JSON contract (stable): one object per statement and line,
//! `{"columns":[..],"rows":[[..]],"rows_affected":N,"receipt":{"node":N,"term":N,"index":N,"token":".."}}`,
//! or `{"error":{"code":"CONSTRAINT","message":".."}}` for a failed statement.

use crate::{Client, Error, QueryOptions, Receipt, Value};
use serde_json::json;
use std::io::Write;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
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

fn first_keyword(stmt: &str) -> String {
    stmt.split(|c: char| c.is_whitespace() || c == '(')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// True when the statement is read-only and goes out as a query.
pub fn is_query(stmt: &str) -> bool {
    matches!(first_keyword(stmt).as_str(), "SELECT" | "WITH" | "VALUES" | "EXPLAIN")
}

/// One unit of work: a query, or a write request of one or more statements.
#[derive(Debug, PartialEq)]
pub enum Unit {
    Query(String),
    Write { statements: Vec<String>, transaction: bool },
}

/// Groups statements: queries alone, each write alone, BEGIN ... COMMIT as one transaction.
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
            (None, _) if is_query(&s) => units.push(Unit::Query(s)),
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
        Value::Blob(b) => json!(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())),
        Value::Boolean(b) => json!(b),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Text(s) => s.clone(),
        other => value_json(other).to_string().trim_matches('"').to_string(),
    }
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    json!({"node": r.node_id, "term": r.term, "index": r.index, "token": r.session_token})
}

/// Parses `strong`, `ryw` (or `read_your_writes`), `bounded:DURATION` (e.g. `bounded:500ms`,
/// `bounded:2s`) and `any`.
pub fn parse_consistency(s: &str) -> Result<crate::Consistency, String> {
    use crate::Consistency;
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
    match (format, result) {
        (Format::Json, Ok(p)) => {
            let rows: Vec<Vec<serde_json::Value>> =
                p.rows.iter().map(|r| r.iter().map(value_json).collect()).collect();
            let obj = json!({"columns": p.columns, "rows": rows, "rows_affected": p.rows_affected, "receipt": receipt_json(&p.receipt)});
            writeln!(out, "{obj}")
        }
        (Format::Json, Err(e)) => {
            writeln!(out, "{}", json!({"error": {"code": e.code(), "message": e.to_string()}}))
        }
        (Format::Table, Ok(p)) if p.is_query || !p.columns.is_empty() => {
            let cells: Vec<Vec<String>> = p.rows.iter().map(|r| r.iter().map(value_text).collect()).collect();
            let mut widths: Vec<usize> = p.columns.iter().map(|c| c.chars().count()).collect();
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |vals: &[String]| {
                vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join(" | ")
            };
            writeln!(out, "{}", line(&p.columns))?;
            writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"))?;
            for row in &cells {
                writeln!(out, "{}", line(row))?;
            }
            writeln!(out, "({} row{})", p.rows.len(), if p.rows.len() == 1 { "" } else { "s" })
        }
        (Format::Table, Ok(p)) => writeln!(
            out,
            "OK, {} row{} affected",
            p.rows_affected,
            if p.rows_affected == 1 { "" } else { "s" }
        ),
        (Format::Table, Err(_)) => Ok(()), // errors go to stderr
    }
}

/// Runs SQL text; prints each statement's outcome; returns how many statements failed.
pub async fn run_text(
    client: &Client,
    text: &str,
    format: Format,
    opts: &QueryOptions,
    out: &mut dyn Write,
) -> usize {
    let mut failed = 0;
    for unit in plan(split_statements(text)) {
        let printed: Vec<Result<Printed, Error>> = match unit {
            Unit::Query(sql) => vec![client.query(&sql, &[], opts.clone()).await.map(|r| Printed {
                columns: r.columns,
                rows: r.rows,
                rows_affected: 0,
                receipt: r.receipt,
                is_query: true,
            })],
            Unit::Write { statements, transaction } => {
                let n = statements.len().max(1);
                let batch = statements.into_iter().map(|s| (s, vec![])).collect();
                match client.execute_batch(batch, transaction).await {
                    Ok(res) => res
                        .results
                        .into_iter()
                        .map(|r| {
                            r.map(|s| Printed {
                                columns: s.columns,
                                rows: s.rows,
                                rows_affected: s.rows_affected,
                                receipt: res.receipt.clone(),
                                is_query: false,
                            })
                        })
                        .collect(),
                    Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
                }
            }
        };
        for p in printed {
            if let Err(e) = &p {
                failed += 1;
                eprintln!("error ({}): {e}", e.code());
            }
            let _ = print(out, format, &p);
        }
    }
    failed
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
        let units = plan(split_statements("SELECT 1; INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2); DELETE FROM t; COMMIT; with x as (select 1) select * from x"));
        assert_eq!(units.len(), 4);
        assert_eq!(units[0], Unit::Query("SELECT 1".into()));
        assert!(matches!(&units[1], Unit::Write { statements, transaction: false } if statements.len() == 1));
        assert!(matches!(&units[2], Unit::Write { statements, transaction: true } if statements.len() == 2));
        assert!(matches!(&units[3], Unit::Query(_)));
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
}
