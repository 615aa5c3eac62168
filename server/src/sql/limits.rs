//! Bounds on one evaluation: the budget (deadline, cancellation, working memory, rows), the
//! cheap pre-scans that refuse an input before a deep tree is built, and the request limits the
//! service checks before anything is evaluated. See the module doc of `sql` for the overview.

use super::Error;
use crate::changeset::Value;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How deep an expression may nest, counting every operator of a chain (`1+1+1` is three
/// levels deep once parsed: a left-deep tree), like SQLite's `SQLITE_MAX_EXPR_DEPTH`.
pub const MAX_EXPR_DEPTH: usize = 1000;

/// The longest LIKE or GLOB pattern, in bytes, like SQLite's `SQLITE_MAX_LIKE_PATTERN_LENGTH`.
pub const MAX_LIKE_PATTERN_BYTES: usize = 50_000;

/// Working memory one statement may use by default (`--max-query-memory`).
pub const DEFAULT_MAX_MEMORY: usize = 256 << 20;

/// Rows one statement may examine (scanned, fetched or joined) before it is stopped.
pub const MAX_ROWS_EXAMINED: u64 = 50_000_000;

/// Working memory all evaluations of one node may hold together, with the query results
/// waiting for their readers (`--max-node-memory`).
pub const DEFAULT_NODE_MEMORY: usize = 1 << 30;

/// One node's memory for evaluations and unread results, shared by every request: each charge
/// of a [`Meter`] takes from it before allocating, and gives back when the statement ends; a
/// query's result takes from it until its stream ends ([`MemoryPool::hold`]). With the
/// per-statement limit this bounds what many concurrent or slow clients can make a node hold.
#[derive(Debug)]
pub struct MemoryPool {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryPool {
    pub fn new(limit: usize) -> Arc<MemoryPool> {
        Arc::new(MemoryPool { limit, used: AtomicUsize::new(0) })
    }

    /// Takes `bytes` if they fit under the limit.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    pub fn give(&self, bytes: usize) {
        let _ =
            self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` until the returned hold is dropped; `Err` names the flag.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Result<PoolHold, Error> {
        if self.try_take(bytes) {
            Ok(PoolHold { pool: self.clone(), bytes })
        } else {
            Err(self.busy())
        }
    }

    fn busy(&self) -> Error {
        Error::Busy(format!(
            "this node's evaluations and unread results together hold {} of memory (--max-node-memory): \
             retry shortly, or at another node",
            human_bytes(self.limit)
        ))
    }
}

/// Memory taken from a [`MemoryPool`], given back when dropped.
#[derive(Debug)]
pub struct PoolHold {
    pool: Arc<MemoryPool>,
    bytes: usize,
}

impl Drop for PoolHold {
    fn drop(&mut self) {
        self.pool.give(self.bytes);
    }
}

/// Work units between two looks at the clock and the cancellation flag: cheap enough to run
/// inside every loop, frequent enough (well under a millisecond of work) to stop promptly.
const CHECK_EVERY: u32 = 256;

/// What one evaluation may spend. Reads get one per query; the sequencer one per request.
#[derive(Clone, Debug)]
pub struct Budget {
    /// When evaluation must stop (`Error::Interrupted`).
    pub deadline: Option<Instant>,
    /// What set the deadline, for the error message: `"--query-timeout (30s)"`.
    pub deadline_source: String,
    /// Set by whoever gives up waiting (a dropped gRPC call); evaluation stops at its next check.
    pub cancel: Arc<AtomicBool>,
    /// Estimated bytes of intermediate state one statement may hold (`--max-query-memory`).
    pub max_memory: usize,
    /// Rows one request may write (`--max-rows-per-request`).
    pub max_rows_written: u64,
    /// The node-wide memory every charge also takes from (`--max-node-memory`); None: no
    /// node-wide bound (tests of the SQL layer alone).
    pub pool: Option<Arc<MemoryPool>>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            deadline: None,
            deadline_source: String::new(),
            cancel: Arc::new(AtomicBool::new(false)),
            max_memory: DEFAULT_MAX_MEMORY,
            max_rows_written: u64::MAX,
            pool: None,
        }
    }
}

impl Budget {
    /// A budget whose deadline is `timeout` from now, named `source` in the error.
    pub fn with_timeout(timeout: Duration, source: impl Into<String>) -> Self {
        Budget {
            deadline: Instant::now().checked_add(timeout),
            deadline_source: source.into(),
            ..Budget::default()
        }
    }
}

/// Sets a cancellation flag when dropped: held by a future that waits for an evaluation, so the
/// evaluation stops when nobody waits for it any more.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The running counts of one evaluation against its [`Budget`]. Single-threaded (`Cell`s).
pub struct Meter {
    budget: Budget,
    ticks: Cell<u32>,
    memory: Cell<usize>,
    /// What this meter took from the budget's pool (equals `memory` when there is a pool).
    pooled: Cell<usize>,
    examined: Cell<u64>,
    written: Cell<u64>,
    /// Bytes of the results the request's finished statements returned: the request holds
    /// them until it ends, so they count against every later statement's working memory.
    held: Cell<usize>,
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

impl Meter {
    pub fn new(budget: Budget) -> Meter {
        Meter {
            budget,
            ticks: Cell::new(0),
            memory: Cell::new(0),
            pooled: Cell::new(0),
            examined: Cell::new(0),
            written: Cell::new(0),
            held: Cell::new(0),
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Starts a statement: memory and examined rows count per statement, from what the
    /// request already holds ([`Meter::keep`]).
    pub fn start_statement(&self) {
        let held = self.held.get();
        self.release_to(held);
        self.memory.set(held);
        self.examined.set(0);
    }

    /// Starts a request: rows written and results held count per request.
    pub fn start_request(&self) {
        self.written.set(0);
        self.held.set(0);
        self.start_statement();
    }

    /// Keeps `bytes` of a finished statement's result until the request ends. A request's
    /// results together may hold no more than one statement's working memory
    /// (--max-query-memory): without this, a request of many SELECTs each within the limit
    /// held the limit times the statement count (found by fuzzing).
    pub fn keep(&self, bytes: usize) -> Result<(), Error> {
        let held = self.held.get().saturating_add(bytes);
        if held > self.budget.max_memory {
            return Err(Error::RequestTooLarge(format!(
                "the results of the request's statements need more than {} of memory together \
                 (--max-query-memory): split it into several requests, or SELECT less in each",
                human_bytes(self.budget.max_memory)
            )));
        }
        self.held.set(held);
        Ok(())
    }

    /// Looks at the clock and the cancellation flag now.
    pub fn check(&self) -> Result<(), Error> {
        if self.budget.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted(
                "the caller gave up on the request (cancelled, disconnected or out of time), so it was stopped"
                    .into(),
            ));
        }
        if let Some(d) = self.budget.deadline {
            if Instant::now() >= d {
                return Err(Error::Interrupted(format!(
                    "the statement ran longer than {} and was stopped",
                    self.budget.deadline_source
                )));
            }
        }
        Ok(())
    }

    /// One unit of work; every `CHECK_EVERY` units, a [`check`](Meter::check).
    pub fn tick(&self) -> Result<(), Error> {
        let t = self.ticks.get().wrapping_add(1);
        self.ticks.set(t);
        if t.is_multiple_of(CHECK_EVERY) {
            self.check()
        } else {
            Ok(())
        }
    }

    /// `n` units of work at once (a long string scanned, a batch of comparisons).
    pub fn ticks(&self, n: usize) -> Result<(), Error> {
        let before = self.ticks.get();
        let t = before.wrapping_add(n.min(u32::MAX as usize) as u32);
        self.ticks.set(t);
        if n >= CHECK_EVERY as usize || t / CHECK_EVERY != before / CHECK_EVERY {
            self.check()
        } else {
            Ok(())
        }
    }

    /// One row examined (scanned, fetched, joined).
    pub fn examine(&self) -> Result<(), Error> {
        let n = self.examined.get() + 1;
        if n > MAX_ROWS_EXAMINED {
            return Err(Error::Limit(format!(
                "the statement examined more than {MAX_ROWS_EXAMINED} rows and was stopped: add a WHERE \
                 clause or an index"
            )));
        }
        self.examined.set(n);
        self.tick()
    }

    /// Reserves `bytes` of working memory before they are allocated.
    pub fn charge(&self, bytes: usize) -> Result<(), Error> {
        let used = self.memory.get().saturating_add(bytes);
        if used > self.budget.max_memory {
            return Err(Error::Limit(format!(
                "the statement needs more than {} of working memory (--max-query-memory): add a WHERE \
                 clause, a LIMIT or an index, or raise the limit",
                human_bytes(self.budget.max_memory)
            )));
        }
        if let Some(pool) = &self.budget.pool {
            if !pool.try_take(bytes) {
                return Err(pool.busy());
            }
            self.pooled.set(self.pooled.get() + bytes);
        }
        self.memory.set(used);
        self.tick()
    }

    /// Gives back to the pool what this meter holds above `bytes`.
    fn release_to(&self, bytes: usize) {
        let pooled = self.pooled.get();
        if pooled > bytes {
            if let Some(pool) = &self.budget.pool {
                pool.give(pooled - bytes);
            }
            self.pooled.set(bytes);
        }
    }

    /// Working memory reserved so far in this statement.
    pub fn memory(&self) -> usize {
        self.memory.get()
    }

    /// Returns working memory: what a finished subquery held is free again.
    pub fn set_memory(&self, bytes: usize) {
        self.release_to(bytes);
        self.memory.set(bytes);
    }

    /// One row inserted, updated or deleted by the request.
    pub fn write_row(&self) -> Result<(), Error> {
        let n = self.written.get() + 1;
        if n > self.budget.max_rows_written {
            return Err(Error::RequestTooLarge(format!(
                "the request writes more than {} rows (--max-rows-per-request): split it into several \
                 requests",
                self.budget.max_rows_written
            )));
        }
        self.written.set(n);
        self.tick()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new(Budget::default())
    }
}

pub fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Estimated bytes a value holds (its slot plus its heap).
pub fn value_bytes(v: &Value) -> usize {
    32 + match v {
        Value::Text(s) => s.len(),
        Value::Blob(b) => b.len(),
        _ => 0,
    }
}

/// Estimated bytes a row holds.
pub fn row_bytes(r: &[Value]) -> usize {
    24 + r.iter().map(value_bytes).sum::<usize>()
}

/// One statement's text inside a larger SQL text, with where it starts (1-based line and
/// column, as the parser counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub line: u32,
    pub column: u32,
}

/// Splits SQL text at the semicolons that end statements (not those inside quotes, quoted
/// identifiers or comments), skipping empty pieces. One pass, no allocation: a request's
/// statements are parsed and evaluated one at a time, so a text of a million statements never
/// holds a million syntax trees.
pub struct Pieces<'a> {
    sql: &'a str,
    pos: usize,
    line: u32,
    column: u32,
}

pub fn pieces(sql: &str) -> Pieces<'_> {
    Pieces { sql, pos: 0, line: 1, column: 1 }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let b = self.sql.as_bytes();
        loop {
            // Skip whitespace (and empty statements) before a piece.
            while self.pos < b.len() && (b[self.pos].is_ascii_whitespace() || b[self.pos] == b';') {
                self.advance(b[self.pos]);
                self.pos += 1;
            }
            if self.pos >= b.len() {
                return None;
            }
            let (start, line, column) = (self.pos, self.line, self.column);
            let mut quote: Option<u8> = None;
            let mut i = self.pos;
            let end = loop {
                if i >= b.len() {
                    break i;
                }
                let c = b[i];
                match quote {
                    Some(q) => {
                        if c == q {
                            quote = None;
                        }
                    }
                    None => match c {
                        b'\'' | b'"' | b'`' => quote = Some(c),
                        b'[' => quote = Some(b']'),
                        b'-' if b.get(i + 1) == Some(&b'-') => quote = Some(b'\n'),
                        b'/' if b.get(i + 1) == Some(&b'*') => {
                            // Block comment: jump past its end (or to the end of the text).
                            let close = self.sql[i + 2..].find("*/").map_or(b.len(), |k| i + 2 + k + 2);
                            while i < close {
                                self.advance(b[i]);
                                i += 1;
                            }
                            continue;
                        }
                        b';' => break i,
                        _ => {}
                    },
                }
                self.advance(c);
                i += 1;
            };
            self.pos = end;
            let text = self.sql[start..end].trim_end();
            if !text.is_empty() {
                return Some(Piece { text, line, column });
            }
        }
    }
}

impl Pieces<'_> {
    fn advance(&mut self, c: u8) {
        if c == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if c & 0xC0 != 0x80 {
            // Count characters, not UTF-8 continuation bytes.
            self.column += 1;
        }
    }
}

/// Memory charged per token (whitespace aside) for the syntax tree a statement becomes, before
/// it is parsed. sqlparser's nodes are large (an `ORDER BY` term holds four `Expr`s): measured
/// in a debug build, `ORDER BY 1,1,…` took ~775 bytes a token, a projection list ~540, an
/// `IN (…)` list ~280; 600 KB of `ORDER BY 1,1,…` held 470 MB before this was charged.
pub const SYNTAX_TREE_BYTES_PER_TOKEN: usize = 1024;

/// Charges the syntax tree `tokens` will become to `meter`, refusing a statement whose tree
/// alone would exceed `--max-query-memory` (or that the node's memory cannot take now).
/// Returns the number of tokens charged for.
pub fn charge_syntax_tree(tokens: &[TokenWithSpan], meter: &Meter) -> Result<usize, Error> {
    let n = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).count();
    charge_tree(n, meter)?;
    Ok(n)
}

/// Charges the syntax tree of a statement of `n` tokens (whitespace aside) to `meter`.
pub fn charge_tree(n: usize, meter: &Meter) -> Result<(), Error> {
    let bytes = n.saturating_mul(SYNTAX_TREE_BYTES_PER_TOKEN);
    let max = meter.budget().max_memory;
    if bytes > max {
        return Err(Error::Limit(format!(
            "the statement is too long: its {n} tokens would take about {} to parse, more than \
             --max-query-memory ({}); split it (several INSERTs instead of one long VALUES list, a \
             table instead of a long IN list)",
            human_bytes(bytes),
            human_bytes(max)
        )));
    }
    meter.charge(bytes)
}

/// Refuses a statement whose expressions would parse into a tree deeper than
/// [`MAX_EXPR_DEPTH`], looking at its tokens only, before any tree exists: a deep tree costs
/// stack in every recursive pass over it (binding, evaluation, printing, even dropping).
///
/// The estimate is an upper bound of the parsed depth: every operator token counts one level at
/// its nesting level (parentheses, brackets, CASE ... END), a comma, WHEN, THEN, ELSE or a
/// clause keyword starts a new sibling expression at that level, and a nested level adds to the
/// levels enclosing it. So `1+1+...+1` with 50,000 terms counts 50,000, while an IN list or
/// a VALUES list of any length stays shallow.
pub fn check_depth(tokens: &[TokenWithSpan]) -> Result<(), Error> {
    // Operators counted per open level; `total` is their sum plus the number of levels.
    let mut levels: Vec<usize> = vec![0];
    let mut total: usize = 1;
    let mut deepest = 0;
    for t in tokens {
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(0);
                total += 1;
            }
            Token::RParen | Token::RBracket | Token::RBrace if levels.len() > 1 => {
                total -= levels.pop().unwrap_or(0) + 1;
            }
            Token::Comma => reset_top(&mut levels, &mut total),
            Token::SemiColon => {
                levels.clear();
                levels.push(0);
                total = 1;
            }
            Token::Word(w) => match w.keyword {
                Keyword::CASE => {
                    levels.push(0);
                    total += 1;
                }
                Keyword::END if levels.len() > 1 => {
                    total -= levels.pop().unwrap_or(0) + 1;
                }
                Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::VALUES
                | Keyword::SET
                | Keyword::ON
                | Keyword::JOIN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::RETURNING => reset_top(&mut levels, &mut total),
                Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::GLOB
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::MATCH
                | Keyword::BETWEEN
                | Keyword::ESCAPE
                | Keyword::COLLATE
                | Keyword::NOTNULL
                | Keyword::AT
                | Keyword::SIMILAR
                | Keyword::DIV
                | Keyword::XOR
                | Keyword::OVERLAPS
                | Keyword::OPERATOR
                | Keyword::MEMBER => bump(&mut levels, &mut total),
                _ => {}
            },
            Token::Whitespace(_)
            | Token::EOF
            | Token::Period
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::HexStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::Placeholder(_) => {}
            // Every other token is an operator of some dialect: count it.
            _ => bump(&mut levels, &mut total),
        }
        deepest = deepest.max(total);
        if deepest > MAX_EXPR_DEPTH {
            return Err(Error::Limit(format!(
                "the expression is nested or chained more than {MAX_EXPR_DEPTH} levels deep (like SQLite's \
                 SQLITE_MAX_EXPR_DEPTH): split a long chain of operators, e.g. into an IN (...) list or \
                 several statements"
            )));
        }
    }
    Ok(())
}

fn bump(levels: &mut [usize], total: &mut usize) {
    if let Some(top) = levels.last_mut() {
        *top += 1;
        *total += 1;
    }
}

fn reset_top(levels: &mut [usize], total: &mut usize) {
    if let Some(top) = levels.last_mut() {
        *total -= *top;
        *top = 0;
    }
}

/// How many parameters a statement's placeholders ask for: bare `?` are numbered in text order,
/// `?N` / `$N` name parameter N; the count is the highest number used.
pub fn placeholder_count(tokens: &[TokenWithSpan]) -> usize {
    let mut bare = 0;
    let mut highest = 0;
    for t in tokens {
        if let Token::Placeholder(p) = &t.token {
            if p == "?" {
                bare += 1;
            } else if let Ok(n) = p.trim_start_matches(['$', '?', ':', '@']).parse::<usize>() {
                highest = highest.max(n);
            }
        }
    }
    bare.max(highest)
}

/// Limits of one client request, checked before anything is evaluated or proposed.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Bytes of SQL text in one request (`--max-sql-bytes`).
    pub max_sql_bytes: usize,
    /// Statements in one request (`--max-statements`).
    pub max_statements: usize,
    /// Parameters of one statement (`--max-params`).
    pub max_params: usize,
}

pub const DEFAULT_MAX_SQL_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_STATEMENTS: usize = 100_000;
/// As SQLite's `SQLITE_MAX_VARIABLE_NUMBER`.
pub const DEFAULT_MAX_PARAMS: usize = 32_766;

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_sql_bytes: DEFAULT_MAX_SQL_BYTES,
            max_statements: DEFAULT_MAX_STATEMENTS,
            max_params: DEFAULT_MAX_PARAMS,
        }
    }
}

/// Checks a request's `(SQL text, parameter count)` pairs against `limits`: sizes are `Limit`
/// errors; parameters that do not match the placeholders of their statement are `Invalid`.
pub fn check_request<'a>(
    texts: impl IntoIterator<Item = (&'a str, usize)> + Clone,
    limits: &RequestLimits,
) -> Result<(), Error> {
    let bytes: usize = texts.clone().into_iter().map(|(s, _)| s.len()).sum();
    if bytes > limits.max_sql_bytes {
        return Err(Error::RequestTooLarge(format!(
            "the request holds {bytes} bytes of SQL, over the limit of {} (--max-sql-bytes): split it \
             into several requests",
            limits.max_sql_bytes
        )));
    }
    let mut statements = 0usize;
    for (sql, params) in texts {
        let mut only = None;
        for (i, piece) in pieces(sql).enumerate() {
            only = (i == 0).then_some(piece.text);
            statements += 1;
        }
        if statements > limits.max_statements {
            return Err(Error::RequestTooLarge(format!(
                "the request holds more than {} statements (--max-statements): split it into several \
                 requests",
                limits.max_statements
            )));
        }
        if params > limits.max_params {
            return Err(Error::RequestTooLarge(format!(
                "a statement was given {params} parameters, over the limit of {} (--max-params)",
                limits.max_params
            )));
        }
        if params > 0 {
            // A one-statement text parsed before needs no tokenizing: its parse is kept with
            // the count (`parse_cache`); comments and blanks around it take no parameters.
            let wanted =
                only.and_then(|text| super::parse_cache::global().placeholders(text)).or_else(|| {
                    let dialect = sqlparser::dialect::SQLiteDialect {};
                    // A text that does not tokenize fails later with a positioned syntax error.
                    let tokens =
                        sqlparser::tokenizer::Tokenizer::new(&dialect, sql).tokenize_with_location().ok()?;
                    Some(placeholder_count(&tokens))
                });
            if let Some(wanted) = wanted {
                if wanted != params {
                    return Err(Error::Invalid(format!(
                        "the statement has {wanted} parameter placeholders but {params} parameters were \
                         given"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(&str, u32, u32)> {
        pieces(sql).map(|p| (p.text, p.line, p.column)).collect()
    }

    #[test]
    fn the_node_pool_is_shared_and_given_back() {
        let pool = MemoryPool::new(1000);
        let budget = Budget { pool: Some(pool.clone()), max_memory: 800, ..Budget::default() };
        let a = Meter::new(budget.clone());
        let b = Meter::new(budget);
        a.charge(600).unwrap();
        assert!(matches!(b.charge(600), Err(Error::Busy(m)) if m.contains("--max-node-memory")));
        assert!(Error::Busy(String::new()).aborts_request(), "never recorded as a statement outcome");
        b.charge(300).unwrap();
        assert_eq!(pool.used(), 900);
        a.set_memory(100); // a subquery's memory returned
        assert_eq!(pool.used(), 400);
        a.start_statement();
        assert_eq!(pool.used(), 300);
        drop(b);
        assert_eq!(pool.used(), 0);
        let held = pool.hold(1000).unwrap();
        assert!(pool.hold(1).is_err());
        drop(held);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn pieces_split_at_statement_ends_only() {
        assert_eq!(texts("SELECT 1; SELECT 2"), [("SELECT 1", 1, 1), ("SELECT 2", 1, 11)]);
        assert_eq!(texts(" ;; \n"), []);
        assert_eq!(
            texts("SELECT ';', \"a;b\", [c;d], `e;f` -- x;y\n; /* ; */ SELECT 'é';\nSELECT 3"),
            [
                ("SELECT ';', \"a;b\", [c;d], `e;f` -- x;y", 1, 1),
                ("/* ; */ SELECT 'é'", 2, 3),
                ("SELECT 3", 3, 1)
            ]
        );
        assert_eq!(texts("SELECT 'it''s;'; x"), [("SELECT 'it''s;'", 1, 1), ("x", 1, 18)]);
        assert_eq!(texts("SELECT 'open;"), [("SELECT 'open;", 1, 1)]);
    }

    fn depth_ok(sql: &str) -> bool {
        let dialect = sqlparser::dialect::SQLiteDialect {};
        let tokens = sqlparser::tokenizer::Tokenizer::new(&dialect, sql).tokenize_with_location().unwrap();
        check_depth(&tokens).is_ok()
    }

    #[test]
    fn depth_counts_chains_and_nesting_not_lists() {
        let chain = |n: usize, op: &str| format!("SELECT {}", vec!["1"; n].join(op));
        assert!(depth_ok(&chain(400, " + ")));
        assert!(!depth_ok(&chain(1001, " + ")));
        assert!(!depth_ok(&chain(1001, " AND ")));
        assert!(depth_ok(&format!("SELECT 1 IN ({})", vec!["1"; 100_000].join(","))));
        assert!(depth_ok(&format!("SELECT CASE {} END", "WHEN 1 = 1 THEN 2 + 2 ".repeat(10_000))));
        assert!(!depth_ok(&format!("SELECT {}1{}", "(".repeat(1001), ")".repeat(1001))));
        assert!(depth_ok(&format!("INSERT INTO t VALUES {}", vec!["(1 + 1, 'a' || 'b')"; 10_000].join(","))));
    }

    #[test]
    fn requests_are_checked_against_their_limits() {
        let limits = RequestLimits { max_sql_bytes: 100, max_statements: 3, max_params: 2 };
        assert!(check_request([("SELECT 1; SELECT 2", 0)], &limits).is_ok());
        assert!(
            matches!(check_request([("SELECT 1;".repeat(20).as_str(), 0)], &limits), Err(Error::RequestTooLarge(m)) if m.contains("--max-sql-bytes"))
        );
        assert!(
            matches!(check_request([("SELECT 1;".repeat(4).as_str(), 0)], &limits), Err(Error::RequestTooLarge(m)) if m.contains("--max-statements"))
        );
        assert!(
            matches!(check_request([("SELECT ?, ?, ?", 3)], &limits), Err(Error::RequestTooLarge(m)) if m.contains("--max-params"))
        );
        assert!(check_request([("SELECT ?, ?", 2)], &limits).is_ok());
        assert!(check_request([("SELECT $2, $1", 2)], &limits).is_ok());
        assert!(matches!(check_request([("SELECT ?", 2)], &limits), Err(Error::Invalid(_))));
        assert!(matches!(check_request([("SELECT ?, ?", 1)], &limits), Err(Error::Invalid(_))));
    }

    /// Parameter counts of texts the parse cache holds come from the cache, and are the counts a
    /// tokenizing check finds: around comments and blanks, and for texts of several statements
    /// (whose first statement alone may be cached) too.
    #[test]
    fn parameter_counts_of_cached_texts_are_checked_as_before() {
        let limits = RequestLimits::default();
        let texts = [
            ("SELECT v FROM kv WHERE k = ? AND v > $3 /* ?, $9 */", 3),
            ("  -- a comment ?\n SELECT ?, ?  ", 2),
            ("SELECT ?; SELECT ?, ?", 3),
            ("SELECT ?", 1),
        ];
        for (text, wanted) in texts {
            for _ in 0..2 {
                assert!(check_request([(text, wanted)], &limits).is_ok(), "{text:?}");
                for wrong in [wanted - 1, wanted + 1].into_iter().filter(|w| *w > 0) {
                    let e = check_request([(text, wrong)], &limits).unwrap_err();
                    assert!(
                        matches!(&e, Error::Invalid(m) if m.contains(&format!("has {wanted} parameter"))),
                        "{text:?}: {e:?}"
                    );
                }
                // Parsed, so the next round finds the first statement in the cache.
                let meter = Meter::new(Budget::default());
                for piece in pieces(text) {
                    crate::sql::parse_piece(piece, &meter).unwrap();
                }
            }
            let first = pieces(text).next().unwrap().text;
            assert!(super::super::parse_cache::global().placeholders(first).is_some(), "{text:?} is cached");
        }
    }
}
