//! SQL: parse (sqlparser) → evaluate on a [`ReadView`](crate::changeset::ReadView) into row-image changes and results.
//!
//! This layer knows nothing of Raft, sled or gRPC: it reads through `ReadView` and returns
//! `Change`s. The sequencer runs an [`Executor`] per batch on the leader; [`query`] serves reads
//! on any replica.
//!
//! Modules: `eval` holds value semantics (SQLite's ordering, arithmetic, CAST, LIKE);
//! `plan` binds the AST into plans with positional column references and chooses access paths
//! (primary key, secondary index, hash probe for equi-joins); `run` executes plans; `exec` turns
//! DDL and DML into `Change`s over an `overlay` of the batch's earlier writes.
//!
//! Semantics follow SQLite where SQL leaves room (integer division truncates, NULLs sort first,
//! division by zero is NULL, mixed integer/real comparison), with one deliberate difference:
//! a value that does not fit its column's declared type is a `Type` error, not stored as is.
//! Anything not supported is refused with an `Unsupported` error, never a wrong answer.

mod catalog;
mod eval;
mod exec;
mod overlay;
mod plan;
mod run;

pub use exec::{query, Executor};
pub use overlay::MemoryView;

use crate::changeset::{ErrorKind, StatementError};

/// Leader-side context for non-deterministic functions, evaluated once on the leader.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// Unix time in milliseconds, from the leader's clock.
    pub now_millis: i64,
    /// Seed for RANDOM().
    pub seed: u64,
}

/// Why a statement failed. Every variant is deterministic: the same statement on the same state
/// fails the same way on every node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("syntax error at line {line}, column {column}: {message}")]
    Parse { message: String, line: u32, column: u32 },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Type(String),
    #[error("{0}")]
    Constraint(String),
    #[error("no such table: {0}")]
    NoSuchTable(String),
    #[error("no such index: {0}")]
    NoSuchIndex(String),
    #[error("no such column: {0}")]
    NoSuchColumnName(String),
    #[error("table {table:?} has no column {column:?}")]
    NoSuchColumn { table: String, column: String },
    #[error("table {0:?} already exists")]
    TableExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Read(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse { .. } => ErrorKind::Syntax,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Type(_) => ErrorKind::Type,
            Error::Constraint(_) | Error::TableExists(_) => ErrorKind::Constraint,
            Error::NoSuchTable(_)
            | Error::NoSuchIndex(_)
            | Error::NoSuchColumn { .. }
            | Error::NoSuchColumnName(_) => ErrorKind::NotFound,
            Error::Invalid(_) | Error::Read(_) => ErrorKind::Invalid,
        }
    }
}

impl From<crate::changeset::ReadError> for Error {
    fn from(e: crate::changeset::ReadError) -> Self {
        Error::Read(e.0)
    }
}

impl From<Error> for StatementError {
    fn from(e: Error) -> Self {
        let position = match &e {
            Error::Parse { line, column, .. } if *line > 0 => Some((*line, *column)),
            _ => None,
        };
        StatementError { kind: e.kind(), message: e.to_string(), position }
    }
}

/// True when `sql` holds only read-only statements, judged by each statement's first keyword.
pub fn is_read_only(sql: &str) -> bool {
    let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    !statements.is_empty()
        && statements.iter().all(|s| {
            let first = s.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            matches!(first.as_str(), "SELECT" | "VALUES" | "WITH" | "EXPLAIN")
        })
}

/// How deeply a statement may nest (parentheses, subqueries, operator chains) before it is
/// refused with a syntax error.
pub const MAX_NESTING: usize = 256;

/// The stack size for threads that run SQL: enough for a statement nested `MAX_NESTING` deep in
/// a debug build.
pub const STACK_BYTES: usize = 64 << 20;

/// Numbers bare `?` placeholders in text order (`?1`, `?2`, ...), so that binding does not depend
/// on the order in which the planner visits expressions.
fn number_placeholders(sql: &str) -> String {
    use sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return sql.to_string();
    }
    let dialect = sqlparser::dialect::SQLiteDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else { return sql.to_string() };
    if !tokens.iter().any(|t| matches!(t, Token::Placeholder(p) if p == "?")) {
        return sql.to_string();
    }
    let mut n = 0;
    tokens
        .into_iter()
        .map(|t| match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                format!("?{n}")
            }
            other => other.to_string(),
        })
        .collect()
}

/// Parses SQL text into statements, turning parser errors into positioned `Parse` errors.
pub(crate) fn parse(sql: &str) -> Result<Vec<sqlparser::ast::Statement>, Error> {
    let dialect = sqlparser::dialect::SQLiteDialect {};
    let sql = number_placeholders(sql);
    sqlparser::parser::Parser::new(&dialect)
        .with_recursion_limit(MAX_NESTING)
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let text = match e {
                sqlparser::parser::ParserError::ParserError(s)
                | sqlparser::parser::ParserError::TokenizerError(s) => s,
                sqlparser::parser::ParserError::RecursionLimitExceeded => {
                    format!("statement nested more than {MAX_NESTING} levels deep")
                }
            };
            // sqlparser appends " at Line: L, Column: C".
            let (message, line, column) = match text.rfind(" at Line: ") {
                Some(i) => {
                    let pos = &text[i + " at Line: ".len()..];
                    let mut it = pos.split(", Column: ");
                    let line = it.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
                    let column = it.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
                    (text[..i].to_string(), line, column)
                }
                None => (text, 0, 0),
            };
            Error::Parse { message, line, column }
        })
}
