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
//!
//! # Bounded evaluation
//! Every evaluation is bounded, interruptible and linear in its input; exceeding a bound is a
//! typed error, never a crash or a stall (`limits` holds the mechanisms; docs/sql.md the flags).
//! - **Size of the request** ([`RequestLimits`], [`check_request`]): SQL bytes, statements,
//!   parameters (and their count against the placeholders), checked by the service before
//!   anything is evaluated or proposed. Request-level: `Error::RequestTooLarge`.
//! - **Shape of an expression**: [`limits::check_depth`] scans a statement's tokens before it is
//!   parsed and refuses any expression deeper than [`MAX_EXPR_DEPTH`], counting operator chains
//!   (a flat `1+1+...` parses into a left-deep tree); so no syntax tree is ever deep enough to
//!   overflow a stack in binding, evaluation, printing, cloning or dropping. The recursive passes
//!   of this layer also grow their stack on the heap when it runs low (`#[recursive]`).
//! - **Time** ([`Budget`]): a deadline and a cancellation flag, looked at every few hundred units
//!   of work ([`limits::Meter::tick`]) inside every loop that can run long: scans, index reads,
//!   joins, sorts, grouping, DISTINCT, set operations, LIKE/GLOB (linear-space, O(text×pattern)
//!   matching, pattern length bounded by [`MAX_LIKE_PATTERN_BYTES`]), string building, the
//!   statements of a request. `Error::Interrupted`.
//! - **Working memory**: intermediate rows and built strings are charged in estimated bytes
//!   *before* they are allocated, per statement (`--max-query-memory`); a finished subquery's
//!   working memory is returned. Rows examined per statement are bounded too. `Error::Limit`.
//!   Every charge also takes from the node's [`limits::MemoryPool`] (`--max-node-memory`),
//!   shared by all requests and by results waiting for slow readers: `Error::Busy`.
//! - **Rows written per request** (`--max-rows-per-request`): `Error::RequestTooLarge`.
//! - **Linear batches**: statements are parsed one at a time (`limits::pieces` splits a text
//!   without tokenizing it all) and a failed statement is undone through the overlay's undo log,
//!   not by copying the overlay, so a request of n statements costs O(n).
//!
//! Errors that say something about this evaluation rather than about the statement
//! (`Interrupted`, `RequestTooLarge`, `Read`, `Busy`: [`Error::aborts_request`]) end the whole request:
//! the [`Executor`] undoes all of it and returns `Err`, and the sequencer answers it directly
//! without recording an outcome, so an exactly-once record never replays a timeout.

mod access;
mod bind;
pub mod catalog;
mod eval;
mod exec;
mod explain;
mod expr;
mod func;
pub mod limits;
mod overlay;
pub mod parse_cache;
mod plan;
pub mod plan_cache;
mod run;

pub use exec::{query, query_with, Executor};
pub use limits::{
    check_request, Budget, CancelOnDrop, MemoryPool, PoolHold, RequestLimits, MAX_EXPR_DEPTH,
    MAX_LIKE_PATTERN_BYTES,
};
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

/// Why a statement failed. Every variant but `Interrupted`, `RequestTooLarge`, `Read` and `Busy` is
/// deterministic: the same statement on the same state fails the same way on every node, so the
/// failure can be recorded as the statement's outcome (see [`Error::aborts_request`]).
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
    /// A bound of evaluation was reached: expression depth, pattern length, working memory, rows
    /// examined. Deterministic for the same limits.
    #[error("limit reached: {0}")]
    Limit(String),
    /// A bound of the whole request was reached (`--max-sql-bytes`, `--max-statements`,
    /// `--max-params`, `--max-rows-per-request`).
    #[error("request too large: {0}")]
    RequestTooLarge(String),
    /// The deadline passed or the caller went away: not a property of the statement.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The node's shared memory for evaluations (`--max-node-memory`) is in use by other
    /// requests: not a property of the statement.
    #[error("node busy: {0}")]
    Busy(String),
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
            Error::Limit(_) | Error::RequestTooLarge(_) | Error::Busy(_) => ErrorKind::Limit,
            Error::Interrupted(_) => ErrorKind::Interrupted,
        }
    }

    /// Whether this error ends the whole request, with nothing of it applied and nothing of it
    /// recorded: it says something about this evaluation (the time it took, who waited, a local
    /// storage read, the request's size), not about a statement, so a retry may well succeed and
    /// must not be answered from an exactly-once record.
    pub fn aborts_request(&self) -> bool {
        matches!(self, Error::Interrupted(_) | Error::RequestTooLarge(_) | Error::Read(_) | Error::Busy(_))
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

pub use raftsql_proto::sql::Effects;

/// The [`Effects`] of every statement in `sql`, judged by the one scanner shared with the shell
/// and the client ([`raftsql_proto::sql::effects`]), piece by piece as [`limits::pieces`]
/// splits the text for evaluation: whatever a piece the executor runs may do is counted, even
/// where the scanner alone would have read two pieces as one statement.
pub fn effects(sql: &str) -> Effects {
    limits::pieces(sql).map(|p| raftsql_proto::sql::effects(p.text)).fold(Effects::default(), Effects::union)
}

/// How deeply a statement may nest (parentheses, subqueries, operator chains) before it is
/// refused with a syntax error by the parser.
pub const MAX_NESTING: usize = 256;

/// The stack size for threads that run SQL. Evaluation needs far less: expression trees are at
/// most [`MAX_EXPR_DEPTH`] deep and every recursive pass grows its stack on the heap when it runs
/// low (the `recursive` crate), so this is headroom, not a bound.
pub const STACK_BYTES: usize = 64 << 20;

/// Parses one statement text (a [`Piece`](limits::Piece) of a request) into statements: tokenize,
/// number bare `?` placeholders in text order (`?1`, `?2`, ...) so binding does not depend on
/// the order in which the planner visits expressions, refuse over-deep expressions before a
/// tree exists ([`limits::check_depth`]), charge the tree about to be built to `meter`
/// ([`limits::charge_syntax_tree`]), then parse. Error positions are those of the whole
/// request text.
///
/// A text parsed before comes from the [`parse_cache`], charged to `meter` as if parsed.
pub(crate) fn parse_piece(
    piece: limits::Piece<'_>,
    meter: &limits::Meter,
) -> Result<std::sync::Arc<[sqlparser::ast::Statement]>, Error> {
    parse_piece_with(parse_cache::global(), piece, meter)
}

/// [`parse_piece`] through `cache`.
pub(crate) fn parse_piece_with(
    cache: &parse_cache::ParseCache,
    piece: limits::Piece<'_>,
    meter: &limits::Meter,
) -> Result<std::sync::Arc<[sqlparser::ast::Statement]>, Error> {
    if let Some(parsed) = cache.get(piece.text) {
        limits::charge_tree(parsed.tokens, meter)?;
        return Ok(parsed.statements);
    }
    let (statements, tokens, placeholders) = parse_uncached(piece, meter)?;
    let statements: std::sync::Arc<[sqlparser::ast::Statement]> = statements.into();
    cache.put(piece.text, parse_cache::Parsed { statements: statements.clone(), tokens, placeholders });
    Ok(statements)
}

/// [`parse_piece`] without the cache; also returns the tokens charged for and the parameters
/// the text takes.
fn parse_uncached(
    piece: limits::Piece<'_>,
    meter: &limits::Meter,
) -> Result<(Vec<sqlparser::ast::Statement>, usize, usize), Error> {
    use sqlparser::parser::{Parser, ParserError};
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = sqlparser::dialect::SQLiteDialect {};
    let shift = |line: u32, column: u32| {
        if line <= 1 {
            (piece.line, column + piece.column - 1)
        } else {
            (line + piece.line - 1, column)
        }
    };
    let mut tokens = Tokenizer::new(&dialect, piece.text).tokenize_with_location().map_err(|e| {
        let (line, column) = shift(e.location.line as u32, e.location.column as u32);
        Error::Parse { message: e.message, line, column }
    })?;
    let placeholders = limits::placeholder_count(&tokens);
    let mut n = 0;
    for t in &mut tokens {
        if matches!(&t.token, Token::Placeholder(p) if p == "?") {
            n += 1;
            t.token = Token::Placeholder(format!("?{n}"));
        }
    }
    limits::check_depth(&tokens)?;
    let charged = limits::charge_syntax_tree(&tokens, meter)?;
    let statements = Parser::new(&dialect)
        .with_recursion_limit(MAX_NESTING)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| {
            let text = match e {
                ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
                ParserError::RecursionLimitExceeded => {
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
                    let (line, column) = if line > 0 { shift(line, column) } else { (0, 0) };
                    (text[..i].to_string(), line, column)
                }
                None => (text, 0, 0),
            };
            Error::Parse { message, line, column }
        })?;
    Ok((statements, charged, placeholders))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_count_every_piece_the_executor_runs() {
        let e = |reads, writes, ddl| Effects { reads, writes, ddl };
        assert_eq!(effects("SELECT 1; INSERT INTO t VALUES ('a;b')"), e(true, true, false));
        assert_eq!(effects(""), e(false, false, false));
        // A text that stops scanning still counts what its earlier pieces do.
        assert_eq!(effects("DROP TABLE t; SELECT 'unterminated"), e(false, true, true));
        // `]]` closes a bracketed identifier and the `;` after it ends a piece, whatever a
        // tokenizer that reads `]]` as an escaped `]` would say.
        let pieces: Vec<&str> = limits::pieces("SELECT [a]]; DROP TABLE t; --]").map(|p| p.text).collect();
        assert_eq!(pieces[1].trim(), "DROP TABLE t");
        assert_eq!(effects("SELECT [a]]; DROP TABLE t; --]"), e(true, false, true));
    }
}
