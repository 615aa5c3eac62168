//! Mutated SQL: a valid statement (built in, from SQLite's sqllogictest select files when
//! they are beside the repository, or generated) cut into tokens, then edited: tokens deleted,
//! duplicated, swapped, replaced or inserted from a pool of keywords, punctuation, quotes,
//! comment openers and odd characters; characters replaced; the text truncated or repeated;
//! deep nesting and long operator chains spliced in.

use crate::grammar;
use crate::sql_case::{params_for, Request};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::path::Path;
use std::sync::{Arc, OnceLock};

const BUILT_IN: &[&str] = &[
    "SELECT a, b FROM t1 WHERE a > 110 ORDER BY b DESC LIMIT 3",
    "SELECT count(*), sum(amount), avg(amount) FROM orders GROUP BY user_id HAVING count(*) > 1",
    "SELECT u.name, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE o.note LIKE 'n%' ESCAPE '\\'",
    "SELECT CASE WHEN a < b THEN 'lt' WHEN a = b THEN 'eq' ELSE 'gt' END FROM t1",
    "SELECT CAST(score AS INTEGER), CAST(name AS BLOB), hex(data) FROM users WHERE email IS NOT NULL",
    "SELECT (SELECT max(a) FROM t1 WHERE t1.b > users.id), EXISTS (SELECT 1 FROM kv) FROM users",
    "SELECT 9223372036854775807 + 1, -9223372036854775808 - 1, 1 / 0, 5 % 0, 1e308 * 10",
    "SELECT k GLOB '[a-c]*', k LIKE '_', typeof(v), length(v) FROM kv",
    "SELECT a FROM t1 UNION SELECT id FROM users EXCEPT SELECT seq FROM orders ORDER BY 1",
    "SELECT DISTINCT substr(name, 2, 3), replace(name, 'user', ''), instr(name, 'r') FROM users",
    "INSERT INTO users (id, name, score) VALUES (100, 'new', 1.5), (101, 'newer', NULL)",
    "INSERT INTO orders SELECT id, id + 100, 2.5, name FROM users WHERE id < 5",
    "INSERT OR REPLACE INTO kv VALUES ('a', X'01') RETURNING k, v",
    "UPDATE users SET score = score * 2, name = upper(name) WHERE id IN (SELECT user_id FROM orders)",
    "DELETE FROM orders WHERE amount BETWEEN 5 AND 10 OR note IS NULL",
    "CREATE TABLE t2 (id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT 'x', w REAL UNIQUE)",
    "CREATE UNIQUE INDEX users_email2 ON users (email)",
    "DROP INDEX orders_amount",
    "DROP TABLE IF EXISTS kv",
    "SELECT ?, ?2, $1, :name FROM t1 WHERE a = ?",
    "EXPLAIN SELECT * FROM users WHERE id = 3",
    "BEGIN; INSERT INTO kv VALUES ('z', NULL); COMMIT",
    "SELECT coalesce(NULL, nullif(1, 1), ifnull(NULL, 3)), round(2.5), abs(-9223372036854775808)",
    "SELECT group_concat(name, ', ') FROM (SELECT name FROM users ORDER BY name DESC)",
    "VALUES (1, 'a'), (2, 'b')",
];

/// The seeds: the built-in statements, then the SQL of SQLite's select1-3.test records when
/// `../shared/sqllogictest` is there (their table `t1` is the fixture's `t1`).
fn seeds() -> Arc<Vec<String>> {
    static SEEDS: OnceLock<Arc<Vec<String>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let mut seeds: Vec<String> = BUILT_IN.iter().map(|s| s.to_string()).collect();
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/sqllogictest");
            for file in ["select1.test", "select2.test", "select3.test"] {
                if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                    seeds.extend(slt_statements(&text));
                }
            }
            Arc::new(seeds)
        })
        .clone()
}

/// The SQL of each `statement` and `query` record of a sqllogictest file.
fn slt_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let mut lines = record
            .lines()
            .skip_while(|l| l.starts_with('#') || l.starts_with("skipif") || l.starts_with("onlyif"));
        let Some(head) = lines.next() else { continue };
        if head.starts_with("statement") || head.starts_with("query") {
            let sql: Vec<&str> = lines.take_while(|l| *l != "----").collect();
            if !sql.is_empty() {
                out.push(sql.join("\n"));
            }
        }
    }
    out
}

/// Tokens for insertions and replacements, besides the grammar's binary operators.
const POOL: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "NOT",
    "NULL",
    "IS",
    "IN",
    "LIKE",
    "GLOB",
    "ESCAPE",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "AS",
    "INTEGER",
    "TEXT",
    "JOIN",
    "LEFT",
    "ON",
    "USING",
    "GROUP",
    "BY",
    "HAVING",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "DISTINCT",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "TABLE",
    "INDEX",
    "DROP",
    "PRIMARY",
    "KEY",
    "UNIQUE",
    "DEFAULT",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "RETURNING",
    "EXISTS",
    "COLLATE",
    "WITH",
    "RECURSIVE",
    "OVER",
    "FILTER",
    "(",
    ")",
    ",",
    ";",
    ".",
    "<<",
    ">>",
    "~",
    "?",
    "?1",
    "?99999",
    "$1",
    ":a",
    "@a",
    "'",
    "\"",
    "`",
    "[",
    "]",
    "/*",
    "*/",
    "--",
    "\n",
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "1e308",
    "1e999",
    "0x",
    "0xffffffffffffffffff",
    "'x'",
    "X'00'",
    "x'zz'",
    "X'0'",
    "t1",
    "users",
    "orders",
    "kv",
    "a",
    "b",
    "id",
    "name",
    "sqlite_schema",
    "rowid",
    "count(*)",
    "sum(",
    "abs(",
    "\u{0}",
    "é",
    "漢",
    "\u{feff}",
    "\u{202e}",
    "\u{10ffff}",
    "\\",
    "#",
    "{",
    "}",
];

/// Every token a mutation may insert.
fn pool() -> Vec<&'static str> {
    POOL.iter().chain(grammar::BINARY).copied().collect()
}

#[derive(Clone, Debug)]
enum Op {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Insert(Index, &'static str),
    Replace(Index, &'static str),
    Char(Index, char),
    Truncate(Index),
    /// `n` openers before a token and `n` closers after it: `(`/`)`, `CASE WHEN 1 THEN`/`END`,
    /// `NOT`, `-`, `abs(`/`)`, `(SELECT`/`)`.
    Nest(Index, usize, usize),
    /// `n` repetitions of an operator and operand after a token: `+1`, ` AND 1`, `||'a'`, ...
    Chain(Index, usize, usize),
    /// The whole text `n` times, separated by `;`.
    Repeat(usize),
}

const NESTS: &[(&str, &str)] = &[
    ("(", ")"),
    ("CASE WHEN 1 THEN ", " END"),
    ("NOT ", ""),
    ("- ", ""),
    ("abs(", ")"),
    ("(SELECT ", ")"),
    ("[", "]"),
];
const CHAINS: &[&str] =
    &["+1", " AND 1", "||'a'", " = 1", " IS NULL", ",1", " OR a", "*2", " COLLATE NOCASE"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<Index>().prop_map(Op::Delete),
        2 => any::<Index>().prop_map(Op::Duplicate),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Op::Swap(a, b)),
        4 => (any::<Index>(), select(pool())).prop_map(|(i, t)| Op::Insert(i, t)),
        3 => (any::<Index>(), select(pool())).prop_map(|(i, t)| Op::Replace(i, t)),
        2 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Op::Char(i, c)),
        1 => any::<Index>().prop_map(Op::Truncate),
        1 => (any::<Index>(), prop_oneof![1usize..50, 900usize..1100, 1usize..5000], 0..NESTS.len())
            .prop_map(|(i, n, k)| Op::Nest(i, n, k)),
        1 => (any::<Index>(), prop_oneof![1usize..50, 900usize..1100, 1usize..20_000], 0..CHAINS.len())
            .prop_map(|(i, n, k)| Op::Chain(i, n, k)),
        1 => (2usize..40).prop_map(Op::Repeat),
    ]
}

/// Cuts SQL into tokens: runs of word characters, quoted strings, runs of whitespace, and
/// single other characters. Concatenating the tokens gives the text back.
pub fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut end = start + c.len_utf8();
        let same = |d: char| {
            if c.is_alphanumeric() || c == '_' {
                d.is_alphanumeric() || d == '_'
            } else {
                c.is_whitespace() && d.is_whitespace()
            }
        };
        if c == '\'' || c == '"' {
            for (i, d) in chars.by_ref() {
                end = i + d.len_utf8();
                if d == c {
                    break;
                }
            }
        } else {
            while let Some(&(i, d)) = chars.peek() {
                if !same(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
        }
        out.push(sql[start..end].to_string());
    }
    out
}

fn apply(sql: &str, ops: &[Op]) -> String {
    let mut t = tokens(sql);
    for op in ops {
        let at = |i: &Index, t: &Vec<String>| if t.is_empty() { 0 } else { i.index(t.len()) };
        match op {
            Op::Delete(i) if !t.is_empty() => {
                let i = at(i, &t);
                t.remove(i);
            }
            Op::Duplicate(i) if !t.is_empty() => {
                let i = at(i, &t);
                t.insert(i, t[i].clone());
            }
            Op::Swap(a, b) if !t.is_empty() => {
                let (a, b) = (at(a, &t), at(b, &t));
                t.swap(a, b);
            }
            Op::Insert(i, s) => {
                let i = if t.is_empty() { 0 } else { i.index(t.len() + 1) };
                t.insert(i, format!(" {s} "));
            }
            Op::Replace(i, s) if !t.is_empty() => {
                let i = at(i, &t);
                t[i] = s.to_string();
            }
            Op::Char(i, c) => {
                let mut text: Vec<char> = t.concat().chars().collect();
                if !text.is_empty() {
                    let i = i.index(text.len());
                    text[i] = *c;
                }
                t = tokens(&text.into_iter().collect::<String>());
            }
            Op::Truncate(i) if !t.is_empty() => {
                let i = at(i, &t);
                t.truncate(i);
            }
            Op::Nest(i, n, k) if !t.is_empty() => {
                let i = at(i, &t);
                let (open, close) = NESTS[*k];
                t.insert(i + 1, close.repeat(*n));
                t.insert(i, open.repeat(*n));
            }
            Op::Chain(i, n, k) if !t.is_empty() => {
                let i = at(i, &t);
                t.insert(i + 1, CHAINS[*k].repeat(*n));
            }
            Op::Repeat(n) => {
                let text = t.concat();
                if text.len() < MAX_TEXT / 64 {
                    t = vec![vec![text; *n].join("; ")];
                }
            }
            _ => {}
        }
    }
    let mut text = t.concat();
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The longest mutated text: the server's default `--max-sql-bytes` (4 MiB) refuses longer
/// ones before anything is parsed, and repeated chains would otherwise reach tens of MB.
const MAX_TEXT: usize = 1 << 20;

/// A mutated statement as a one-text request, with as many parameters as it has placeholders
/// (its placeholders may be mutated too).
pub fn request() -> BoxedStrategy<Request> {
    let seeds = seeds();
    let seed = prop_oneof![3 => select(seeds.to_vec()), 1 => grammar::statement()];
    (seed, vec(op(), 1..6), vec(grammar::value(), 0..4), any::<bool>())
        .prop_map(|(sql, ops, values, transaction)| {
            let sql = apply(&sql, &ops);
            let params = params_for(&sql, &mut values.into_iter().cycle());
            Request { texts: vec![(sql, params)], transaction }
        })
        .boxed()
}

#[test]
fn tokens_give_the_text_back() {
    for s in BUILT_IN {
        assert_eq!(tokens(s).concat(), *s);
    }
    assert_eq!(tokens("SELECT 'a b', x+1"), ["SELECT", " ", "'a b'", ",", " ", "x", "+", "1"]);
}
