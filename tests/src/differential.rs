//! Differential testing of the SQL engine against SQLite (issue 21): random schemas, data and
//! queries run on raftsql's engine (in process, over both backends: [`crate::engine::Engine`])
//! and on SQLite itself (`rusqlite`, bundled), results compared under SQLite's rules; plus two
//! metamorphic oracles on raftsql alone, after SQLancer:
//!
//! - **TLP** (ternary logic partitioning): the rows of `SELECT … FROM f` are, as a multiset,
//!   those of `… WHERE p`, `… WHERE NOT (p)` and `… WHERE (p) IS NULL` together.
//! - **NoREC**: `SELECT count(*) FROM f WHERE p` equals the number of rows of `f` for which
//!   `CASE WHEN p THEN 1 ELSE 0 END` is 1, which no access path or index can shortcut.
//!
//! # What is generated
//!
//! A *world* is 1–3 tables (INTEGER, REAL and TEXT columns, maybe an INTEGER PRIMARY KEY or a
//! composite one, maybe indexes) holding 0–12 rows each, NULLs included. Then queries over it:
//! projections of typed expressions (arithmetic, `/` and `%` with zeros, CASE, CAST,
//! COALESCE/NULLIF/IFNULL, abs, length, upper, lower, substr, trim, `||`), WHERE with
//! comparisons, AND/OR/NOT, `IS [NOT] NULL`, BETWEEN, IN lists, LIKE, scalar and IN and EXISTS
//! subqueries; joins (inner, cross, LEFT, and three tables written against their chain of
//! equalities, so only a join order that follows it avoids crossing two); DISTINCT; GROUP BY
//! with HAVING over count, sum, total, avg, min, max and count(DISTINCT); ORDER BY all columns
//! with LIMIT/OFFSET; compound selects (UNION, UNION ALL, INTERSECT, EXCEPT). Between queries,
//! writes: an UPDATE of a non-key column, a DELETE, an INSERT of one row; their rows affected
//! (or an error on both) and then the table's rows must be the same on both.
//!
//! Expressions are typed: numbers meet numbers and text meets text. raftsql's one intended
//! difference (a value that does not fit its column's type is an error; docs/sql.md) lies
//! outside that, so any disagreement inside it is a finding.
//!
//! # How results are compared
//!
//! Rows as multisets (sorted), or in order when the query orders by every column. A boolean
//! is the integer 0 or 1, as in SQLite. Integers and reals compare by value (SQLite may
//! answer `3` where raftsql answers `3.0`; sqllogictest renders both alike), reals within a
//! relative 1e-9 (sums may add in another order). An error on both sides agrees. raftsql
//! refusing a statement as `Unsupported` is counted by message, not as a finding: that list is
//! the engine's gaps. Anything else is a [`Finding`], with the world's SQL to replay it.

use crate::engine::Engine;
use raftsql_client::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A disagreement: the statements that built the world, the query, and both answers.
#[derive(Clone, Debug)]
pub struct Finding {
    /// `sqlite`, `tlp` or `norec`.
    pub oracle: &'static str,
    pub setup: Vec<String>,
    pub query: String,
    pub raftsql: String,
    pub expected: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} oracle: {}", self.oracle, self.query)?;
        writeln!(f, "  raftsql:  {}", self.raftsql)?;
        writeln!(f, "  expected: {}", self.expected)?;
        writeln!(f, "  world:")?;
        for s in &self.setup {
            writeln!(f, "    {s};")?;
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub worlds: u64,
    /// Queries compared with SQLite.
    pub compared: u64,
    /// Of those: the same rows on both.
    pub agreed: u64,
    /// Of those: an error on both.
    pub both_failed: u64,
    /// INSERT, UPDATE and DELETE statements compared with SQLite (rows affected, then the
    /// table's rows).
    pub writes: u64,
    /// Refused by raftsql as unsupported, by message (not findings).
    pub unsupported: BTreeMap<String, u64>,
    /// TLP and NoREC checks made on raftsql alone.
    pub oracle_checks: u64,
    /// The first findings (all are counted in `finding_count`).
    pub findings: Vec<Finding>,
    pub finding_count: u64,
    /// Disagreements between raftsql's own two backends.
    pub backend_differences: u64,
    pub elapsed: Duration,
}

impl Report {
    /// `N compared with SQLite (A agreed, E both failed, U unsupported), M oracle checks, F findings, in T s`
    pub fn line(&self) -> String {
        format!(
            "{} worlds, {} queries compared with SQLite ({} agreed, {} failed on both, {} unsupported by raftsql), \
             {} writes compared, {} TLP/NoREC checks, {} findings, {} backend differences, {:.1} s",
            self.worlds,
            self.compared,
            self.agreed,
            self.both_failed,
            self.unsupported.values().sum::<u64>(),
            self.writes,
            self.oracle_checks,
            self.finding_count,
            self.backend_differences,
            self.elapsed.as_secs_f64()
        )
    }
}

/// How long and how wide a run is.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Stop after this many queries compared with SQLite...
    pub queries: u64,
    /// ... or at this deadline, whichever comes first.
    pub time: Duration,
    pub queries_per_world: u64,
    /// Findings kept in the report (all are counted).
    pub keep: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { seed: 21, queries: 2_000, time: Duration::from_secs(600), queries_per_world: 40, keep: 20 }
    }
}

/// Runs worlds until `opts.queries` or `opts.time` is reached. Blocking: call from a plain
/// thread (the engine writes its sled backend through a runtime of its own).
pub fn run(opts: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let mut report = Report::default();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    while report.compared < opts.queries && started.elapsed() < opts.time {
        let world = World::generate(&mut rng);
        let mut w = Running::open(&world)?;
        report.worlds += 1;
        for _ in 0..opts.queries_per_world {
            if report.compared >= opts.queries || started.elapsed() >= opts.time {
                break;
            }
            let mut g = Gen { rng: &mut rng, world: &world, depth: 0, subqueries: true };
            match g.rng.gen_range(0..12) {
                10 | 11 => {
                    let (sql, table) = g.write();
                    if !w.write(&sql, &table, &mut report, opts) {
                        // The two databases no longer hold the same rows: a new world.
                        break;
                    }
                }
                0 => {
                    let from = g.from();
                    let p = g.bool_expr(&from);
                    w.tlp(&from, &p, &mut report, opts);
                }
                1 => {
                    let from = g.from();
                    let p = g.bool_expr(&from);
                    w.norec(&from, &p, &mut report, opts);
                }
                _ => {
                    let q = g.query();
                    w.compare(&q, &mut report, opts);
                }
            }
        }
        w.engine.compare_all();
        report.backend_differences += w.engine.differences().len() as u64;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Worlds

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    Int,
    Real,
    Text,
}

impl Ty {
    fn sql(self) -> &'static str {
        match self {
            Ty::Int => "INTEGER",
            Ty::Real => "REAL",
            Ty::Text => "TEXT",
        }
    }
    fn numeric(self) -> bool {
        self != Ty::Text
    }
}

#[derive(Clone, Debug)]
struct Table {
    name: String,
    columns: Vec<Ty>,
    /// Leading key columns: 1 (INTEGER PRIMARY KEY), 2 (a composite key) or 0.
    keyed: usize,
}

#[derive(Clone, Debug)]
struct World {
    tables: Vec<Table>,
    /// CREATE TABLE, CREATE INDEX and INSERT statements, in order.
    setup: Vec<String>,
}

const TEXTS: &[&str] = &["a", "b", "A", "ab", "abc", "", "B", "ba", " a", "a%", "10", "x_y", "Zz", "é"];

fn int_literal(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "0".into(),
        1 => (1i64 << rng.gen_range(31..40)).to_string(),
        2 => format!("-{}", rng.gen_range(1..50)),
        _ => rng.gen_range(-5i64..20).to_string(),
    }
}

fn real_literal(rng: &mut StdRng) -> String {
    ["0.5", "1.25", "-2.5", "3.0", "0.1", "100.75", "-0.25", "2.0", "1e10", "7.5"][rng.gen_range(0..10)]
        .into()
}

fn text_literal(rng: &mut StdRng) -> String {
    format!("'{}'", TEXTS[rng.gen_range(0..TEXTS.len())])
}

fn literal(rng: &mut StdRng, ty: Ty) -> String {
    match ty {
        Ty::Int => int_literal(rng),
        Ty::Real => real_literal(rng),
        Ty::Text => text_literal(rng),
    }
}

impl World {
    fn generate(rng: &mut StdRng) -> World {
        let mut tables = Vec::new();
        let mut setup = Vec::new();
        for t in 0..rng.gen_range(1..=3) {
            let name = format!("t{t}");
            let n = rng.gen_range(2..=4);
            let columns: Vec<Ty> =
                (0..n).map(|_| [Ty::Int, Ty::Int, Ty::Real, Ty::Text][rng.gen_range(0..4)]).collect();
            let key = match rng.gen_range(0..4) {
                0 if columns[0] == Ty::Int => " PRIMARY KEY".to_string(),
                _ => String::new(),
            };
            let composite = key.is_empty() && rng.gen_bool(0.3);
            let mut cols: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("c{i} {}{}", ty.sql(), if i == 0 { key.as_str() } else { "" }))
                .collect();
            if composite {
                cols.push("PRIMARY KEY (c0, c1)".into());
            }
            setup.push(format!("CREATE TABLE {name} ({})", cols.join(", ")));
            for i in 0..rng.gen_range(0..=2) {
                let c = rng.gen_range(0..n);
                let second = if rng.gen_bool(0.3) { format!(", c{}", (c + 1) % n) } else { String::new() };
                setup.push(format!("CREATE INDEX {name}_i{i} ON {name} (c{c}{second})"));
            }
            let mut rows = Vec::new();
            let mut keys = std::collections::HashSet::new();
            for _ in 0..rng.gen_range(0..=12) {
                let row: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, &ty)| {
                        let keyed = (i == 0 && !key.is_empty()) || (composite && i < 2);
                        if !keyed && rng.gen_bool(0.2) {
                            "NULL".to_string()
                        } else {
                            literal(rng, ty)
                        }
                    })
                    .collect();
                let k = if !key.is_empty() {
                    Some(row[0].clone())
                } else if composite {
                    Some(format!("{},{}", row[0], row[1]))
                } else {
                    None
                };
                if k.is_some_and(|k| !keys.insert(k)) {
                    continue;
                }
                rows.push(format!("({})", row.join(", ")));
            }
            if !rows.is_empty() {
                setup.push(format!("INSERT INTO {name} VALUES {}", rows.join(", ")));
            }
            let keyed = if !key.is_empty() {
                1
            } else if composite {
                2
            } else {
                0
            };
            tables.push(Table { name, columns, keyed });
        }
        World { tables, setup }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

/// A FROM clause and the columns it brings into scope: (qualified name, type).
#[derive(Clone, Debug)]
struct From {
    sql: String,
    scope: Vec<(String, Ty)>,
}

struct Gen<'a> {
    rng: &'a mut StdRng,
    world: &'a World,
    depth: u32,
    /// Off while generating an UPDATE's new value: SQLite evaluates it row by row, so a
    /// subquery over the same table sees the rows updated before; raftsql evaluates every row
    /// against the table as it was before the statement, as the SQL standard does (docs/sql.md).
    subqueries: bool,
}

impl Gen<'_> {
    fn table(&mut self) -> &Table {
        &self.world.tables[self.rng.gen_range(0..self.world.tables.len())]
    }

    fn item(&mut self, alias: &str) -> (String, Vec<(String, Ty)>) {
        let t = self.table().clone();
        let scope = t.columns.iter().enumerate().map(|(i, &ty)| (format!("{alias}.c{i}"), ty)).collect();
        (format!("{} AS {alias}", t.name), scope)
    }

    /// An UPDATE of a non-key column, a DELETE, or an INSERT of one row, with values of the
    /// column's type; and the table it writes.
    fn write(&mut self) -> (String, String) {
        let t = self.table().clone();
        let scope = t.columns.iter().enumerate().map(|(i, &ty)| (format!("{}.c{i}", t.name), ty)).collect();
        let from = From { sql: t.name.clone(), scope };
        let filter = |g: &mut Self| {
            if g.rng.gen_bool(0.85) {
                format!(" WHERE {}", g.bool_expr(&from))
            } else {
                String::new()
            }
        };
        let sql = match self.rng.gen_range(0..3) {
            0 if t.columns.len() > t.keyed => {
                let c = self.rng.gen_range(t.keyed..t.columns.len());
                self.subqueries = false;
                let value = match t.columns[c] {
                    Ty::Int => format!("CAST({} AS INTEGER)", self.num_expr(&from)),
                    Ty::Real => format!("CAST({} AS REAL)", self.num_expr(&from)),
                    Ty::Text => self.text_expr(&from),
                };
                self.subqueries = true;
                format!("UPDATE {} SET c{c} = {value}{}", t.name, filter(self))
            }
            1 => format!("DELETE FROM {}{}", t.name, filter(self)),
            _ => {
                let row: Vec<String> = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, &ty)| {
                        if i >= t.keyed && self.rng.gen_bool(0.2) {
                            "NULL".to_string()
                        } else {
                            literal(self.rng, ty)
                        }
                    })
                    .collect();
                format!("INSERT INTO {} VALUES ({})", t.name, row.join(", "))
            }
        };
        (sql, t.name)
    }

    fn from(&mut self) -> From {
        let (first, mut scope) = self.item("a");
        match self.rng.gen_range(0..7) {
            0 | 1 => {
                let (second, s2) = self.item("b");
                let kind = ["JOIN", "LEFT JOIN", "JOIN"][self.rng.gen_range(0..3)];
                scope.extend(s2);
                let on = From { sql: String::new(), scope: scope.clone() };
                let cond = self.join_condition(&on);
                From { sql: format!("{first} {kind} {second} ON {cond}"), scope }
            }
            2 => {
                let (second, s2) = self.item("b");
                scope.extend(s2);
                From { sql: format!("{first}, {second}"), scope }
            }
            3 => {
                // Three tables written so that the first two are crossed unless the planner
                // reads them along their equalities (c, then b, then a): join order.
                let (second, s2) = self.item("b");
                let (third, s3) = self.item("c");
                scope.extend(s2);
                scope.extend(s3);
                let all = From { sql: String::new(), scope: scope.clone() };
                let (ab, bc) = (self.equality(&all, "a.", "b."), self.equality(&all, "b.", "c."));
                From { sql: format!("{third} CROSS JOIN {first} JOIN {second} ON {ab} AND {bc}"), scope }
            }
            _ => From { sql: first, scope },
        }
    }

    /// `a.x = b.y` for columns of one class, or any predicate over both.
    fn join_condition(&mut self, from: &From) -> String {
        self.equality(from, "a.", "b.")
    }

    /// An equality between a column of the table aliased by prefix `x` and one of `y`, of one
    /// class, or any predicate over the scope.
    fn equality(&mut self, from: &From, x: &str, y: &str) -> String {
        let a: Vec<_> = from.scope.iter().filter(|(n, _)| n.starts_with(x)).collect();
        let b: Vec<_> = from.scope.iter().filter(|(n, _)| n.starts_with(y)).collect();
        for _ in 0..8 {
            let (x, tx) = a[self.rng.gen_range(0..a.len())];
            let (y, ty) = b[self.rng.gen_range(0..b.len())];
            if tx.numeric() == ty.numeric() {
                return format!("{x} = {y}");
            }
        }
        self.bool_expr(from)
    }

    fn column(&mut self, from: &From, want: impl Fn(Ty) -> bool) -> Option<(String, Ty)> {
        let cands: Vec<_> = from.scope.iter().filter(|(_, t)| want(*t)).collect();
        (!cands.is_empty()).then(|| cands[self.rng.gen_range(0..cands.len())].clone())
    }

    fn num_expr(&mut self, from: &From) -> String {
        self.depth += 1;
        let leaf = self.depth > 3 || self.rng.gen_bool(0.4);
        let s = if leaf {
            match self.column(from, Ty::numeric) {
                Some((c, _)) if self.rng.gen_bool(0.7) => c,
                _ => {
                    let ty = if self.rng.gen_bool(0.7) { Ty::Int } else { Ty::Real };
                    literal(self.rng, ty)
                }
            }
        } else {
            match self.rng.gen_range(0..20) {
                14 => format!("round({})", self.num_expr(from)),
                15 => format!("round({}, {})", self.num_expr(from), self.rng.gen_range(-1..4)),
                16 => format!("sign({})", self.num_expr(from)),
                17 => {
                    let f = ["max", "min"][self.rng.gen_range(0..2)];
                    let args: Vec<String> =
                        (0..self.rng.gen_range(2..4)).map(|_| self.num_expr(from)).collect();
                    format!("{f}({})", args.join(", "))
                }
                18 => format!("instr({}, {})", self.text_expr(from), self.text_expr(from)),
                19 => format!("CAST({} AS INTEGER)", self.text_expr(from)),
                0..=3 => {
                    let op = ["+", "-", "*", "/", "%"][self.rng.gen_range(0..5)];
                    format!("({} {op} {})", self.num_expr(from), self.num_expr(from))
                }
                4 => format!("-({})", self.num_expr(from)),
                5 => format!("abs({})", self.num_expr(from)),
                6 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.bool_expr(from),
                    self.num_expr(from),
                    self.num_expr(from)
                ),
                7 => format!("coalesce({}, {})", self.num_expr(from), self.num_expr(from)),
                8 => format!("nullif({}, {})", self.num_expr(from), self.num_expr(from)),
                9 => format!("length({})", self.text_expr(from)),
                10 => format!(
                    "CAST({} AS {})",
                    self.num_expr(from),
                    ["INTEGER", "REAL"][self.rng.gen_range(0..2)]
                ),
                11 => format!("ifnull({}, {})", self.num_expr(from), self.num_expr(from)),
                12 if self.subqueries => format!("({})", self.scalar_subquery(from)),
                12 => format!("abs({})", self.num_expr(from)),
                _ => format!(
                    "CASE {} WHEN {} THEN {} END",
                    self.num_expr(from),
                    self.num_expr(from),
                    self.num_expr(from)
                ),
            }
        };
        self.depth -= 1;
        s
    }

    fn text_expr(&mut self, from: &From) -> String {
        self.depth += 1;
        let leaf = self.depth > 3 || self.rng.gen_bool(0.5);
        let s = if leaf {
            match self.column(from, |t| t == Ty::Text) {
                Some((c, _)) if self.rng.gen_bool(0.7) => c,
                _ => text_literal(self.rng),
            }
        } else {
            match self.rng.gen_range(0..13) {
                8 => format!(
                    "replace({}, {}, {})",
                    self.text_expr(from),
                    self.text_expr(from),
                    self.text_expr(from)
                ),
                9 => {
                    let f = ["ltrim", "rtrim", "trim"][self.rng.gen_range(0..3)];
                    format!("{f}({}, {})", self.text_expr(from), self.text_expr(from))
                }
                10 => format!("typeof({})", self.any_expr(from)),
                11 => format!("CAST({} AS TEXT)", self.num_expr(from)),
                12 => format!("({} || {})", self.text_expr(from), self.num_expr(from)),
                0 => format!("({} || {})", self.text_expr(from), self.text_expr(from)),
                1 => format!("upper({})", self.text_expr(from)),
                2 => format!("lower({})", self.text_expr(from)),
                3 => format!(
                    "substr({}, {}, {})",
                    self.text_expr(from),
                    self.rng.gen_range(-3..5),
                    self.rng.gen_range(0..4)
                ),
                4 => format!("trim({})", self.text_expr(from)),
                5 => format!("coalesce({}, {})", self.text_expr(from), self.text_expr(from)),
                6 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.bool_expr(from),
                    self.text_expr(from),
                    self.text_expr(from)
                ),
                _ => format!("substr({}, {})", self.text_expr(from), self.rng.gen_range(-2..4)),
            }
        };
        self.depth -= 1;
        s
    }

    fn bool_expr(&mut self, from: &From) -> String {
        self.depth += 1;
        let leaf = self.depth > 3;
        let s = match if leaf { self.rng.gen_range(0..4) } else { self.rng.gen_range(0..13) } {
            0 | 1 => {
                let op = ["=", "<>", "<", "<=", ">", ">="][self.rng.gen_range(0..6)];
                format!("{} {op} {}", self.num_expr(from), self.num_expr(from))
            }
            2 => {
                let op = ["=", "<>", "<", "<=", ">", ">="][self.rng.gen_range(0..6)];
                format!("{} {op} {}", self.text_expr(from), self.text_expr(from))
            }
            3 if self.rng.gen_bool(0.3) => {
                // A text constant against a numeric column is read as a number (affinity).
                let op = ["=", "<>", "<", ">="][self.rng.gen_range(0..4)];
                let lit = ["'5'", "'10'", "'-2.5'", "'0'", "'1e10'", "'abc'", "''", "' 7'"]
                    [self.rng.gen_range(0..8)];
                match self.column(from, Ty::numeric) {
                    Some((c, _)) => format!("{c} {op} {lit}"),
                    None => format!("{} {op} {lit}", self.text_expr(from)),
                }
            }
            3 => {
                format!("{} IS {}NULL", self.any_expr(from), if self.rng.gen_bool(0.5) { "NOT " } else { "" })
            }
            4 => format!("NOT ({})", self.bool_expr(from)),
            5 => format!("({}) AND ({})", self.bool_expr(from), self.bool_expr(from)),
            6 => format!("({}) OR ({})", self.bool_expr(from), self.bool_expr(from)),
            7 => format!(
                "{} {}BETWEEN {} AND {}",
                self.num_expr(from),
                if self.rng.gen_bool(0.3) { "NOT " } else { "" },
                self.num_expr(from),
                self.num_expr(from)
            ),
            8 => {
                // A list starting with a parenthesized subquery does not parse here (docs/sql.md).
                let first = self.depth;
                self.depth = 4;
                let mut items = vec![self.num_expr(from)];
                self.depth = first;
                items.extend((1..self.rng.gen_range(1..4)).map(|_| self.num_expr(from)));
                let not = if self.rng.gen_bool(0.3) { "NOT " } else { "" };
                format!("{} {not}IN ({})", self.num_expr(from), items.join(", "))
            }
            9 => {
                let pat = ["a%", "%b", "_", "%", "A_", "%a%", "x\\_y", "1%"][self.rng.gen_range(0..8)];
                format!("{} LIKE '{pat}'", self.text_expr(from))
            }
            10 | 11 if !self.subqueries => format!("NOT ({})", self.bool_expr(from)),
            10 => {
                let (sub, ty) = self.column_subquery(from);
                let probe = if ty.numeric() { self.num_expr(from) } else { self.text_expr(from) };
                format!("{probe} {}IN ({sub})", if self.rng.gen_bool(0.3) { "NOT " } else { "" })
            }
            11 => {
                let (sub, _) = self.column_subquery(from);
                format!("{}EXISTS ({sub})", if self.rng.gen_bool(0.3) { "NOT " } else { "" })
            }
            // SQLite's `x IS y` / `x IS NOT y` do not parse here (docs/sql.md); SQLite also
            // takes the standard spelling.
            _ => format!(
                "{} IS {}DISTINCT FROM {}",
                self.num_expr(from),
                if self.rng.gen_bool(0.5) { "NOT " } else { "" },
                self.num_expr(from)
            ),
        };
        self.depth -= 1;
        s
    }

    fn any_expr(&mut self, from: &From) -> String {
        if self.rng.gen_bool(0.6) {
            self.num_expr(from)
        } else {
            self.text_expr(from)
        }
    }

    /// A subquery's FROM (alias `s<depth>`), and the scope its WHERE sees: its own columns,
    /// and half the time the outer query's too (a correlated subquery).
    fn sub_from(&mut self, outer: &From) -> (From, From) {
        let (item, scope) = self.item(&format!("s{}", self.depth));
        let own = From { sql: item, scope };
        let mut seen = own.clone();
        if self.rng.gen_bool(0.5) {
            seen.scope.extend(outer.scope.iter().cloned());
        }
        (own, seen)
    }

    /// `SELECT x FROM t [WHERE p]`, maybe correlated, and the class of `x`.
    fn column_subquery(&mut self, outer: &From) -> (String, Ty) {
        let (from, seen) = self.sub_from(outer);
        let (c, ty) = from.scope[self.rng.gen_range(0..from.scope.len())].clone();
        let filter =
            if self.rng.gen_bool(0.6) { format!(" WHERE {}", self.bool_expr(&seen)) } else { String::new() };
        (format!("SELECT {c} FROM {}{filter}", from.sql), ty)
    }

    /// An aggregate subquery, maybe correlated: one row, one number.
    fn scalar_subquery(&mut self, outer: &From) -> String {
        let (from, seen) = self.sub_from(outer);
        let agg = ["count(*)", "max", "min", "sum", "count"][self.rng.gen_range(0..5)];
        let e = if agg == "count(*)" {
            agg.to_string()
        } else {
            let x = self.column(&from, Ty::numeric).map(|(c, _)| c).unwrap_or_else(|| "1".into());
            format!("{agg}({x})")
        };
        let filter =
            if self.rng.gen_bool(0.5) { format!(" WHERE {}", self.bool_expr(&seen)) } else { String::new() };
        format!("SELECT {e} FROM {}{filter}", from.sql)
    }

    fn expr_of(&mut self, from: &From, ty: Ty) -> String {
        if ty.numeric() {
            self.num_expr(from)
        } else {
            self.text_expr(from)
        }
    }

    fn query(&mut self) -> Query {
        match self.rng.gen_range(0..10) {
            0 => self.compound(),
            1 | 2 => self.grouped(),
            _ => self.plain(),
        }
    }

    fn plain(&mut self) -> Query {
        let from = self.from();
        let n = self.rng.gen_range(1..4);
        let cols: Vec<String> = (0..n)
            .map(|_| match self.rng.gen_range(0..3) {
                0 => self.bool_expr(&from),
                1 => self.text_expr(&from),
                _ => self.num_expr(&from),
            })
            .collect();
        let distinct = if self.rng.gen_bool(0.15) { "DISTINCT " } else { "" };
        let mut sql = format!("SELECT {distinct}{} FROM {}", cols.join(", "), from.sql);
        if self.rng.gen_bool(0.7) {
            write!(sql, " WHERE {}", self.bool_expr(&from)).ok();
        }
        let ordered = self.rng.gen_bool(0.3);
        if ordered {
            let by: Vec<String> = (1..=n)
                .map(|i| format!("{i}{}", if self.rng.gen_bool(0.3) { " DESC" } else { "" }))
                .collect();
            write!(sql, " ORDER BY {}", by.join(", ")).ok();
            if self.rng.gen_bool(0.6) {
                write!(sql, " LIMIT {}", self.rng.gen_range(0..6)).ok();
                if self.rng.gen_bool(0.4) {
                    write!(sql, " OFFSET {}", self.rng.gen_range(0..4)).ok();
                }
            }
        }
        Query { sql, ordered }
    }

    fn grouped(&mut self) -> Query {
        let from = self.from();
        let keys: Vec<(String, Ty)> = (0..self.rng.gen_range(0..3))
            .map(|_| from.scope[self.rng.gen_range(0..from.scope.len())].clone())
            .collect();
        let mut cols: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        for _ in 0..self.rng.gen_range(1..3) {
            cols.push(self.aggregate(&from));
        }
        let mut sql = format!("SELECT {} FROM {}", cols.join(", "), from.sql);
        if self.rng.gen_bool(0.5) {
            write!(sql, " WHERE {}", self.bool_expr(&from)).ok();
        }
        if !keys.is_empty() {
            let k: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            write!(sql, " GROUP BY {}", k.join(", ")).ok();
            if self.rng.gen_bool(0.4) {
                let agg = self.aggregate(&from);
                let op = ["=", "<>", "<", ">", ">="][self.rng.gen_range(0..5)];
                write!(sql, " HAVING {agg} {op} {}", int_literal(self.rng)).ok();
            }
        }
        Query { sql, ordered: false }
    }

    fn aggregate(&mut self, from: &From) -> String {
        match self.rng.gen_range(0..8) {
            0 => "count(*)".into(),
            1 => format!("count({})", self.any_expr(from)),
            2 => format!("sum({})", self.num_expr(from)),
            3 => format!("total({})", self.num_expr(from)),
            4 => format!("avg({})", self.num_expr(from)),
            5 => format!("min({})", self.any_expr(from)),
            6 => format!("max({})", self.any_expr(from)),
            _ => format!("count(DISTINCT {})", self.any_expr(from)),
        }
    }

    fn compound(&mut self) -> Query {
        let ty = [Ty::Int, Ty::Real, Ty::Text][self.rng.gen_range(0..3)];
        let mut parts = Vec::new();
        for _ in 0..self.rng.gen_range(2..4) {
            let from = self.from();
            let e = self.expr_of(&from, ty);
            let filter = if self.rng.gen_bool(0.5) {
                format!(" WHERE {}", self.bool_expr(&from))
            } else {
                String::new()
            };
            parts.push(format!("SELECT {e} FROM {}{filter}", from.sql));
        }
        let mut sql = parts[0].clone();
        for p in &parts[1..] {
            let op = ["UNION", "UNION ALL", "INTERSECT", "EXCEPT"][self.rng.gen_range(0..4)];
            write!(sql, " {op} {p}").ok();
        }
        Query { sql, ordered: false }
    }
}

struct Query {
    sql: String,
    /// Ordered by every column: compare in order.
    ordered: bool,
}

// ---------------------------------------------------------------------------------------------
// Running and comparing

struct Running {
    engine: Engine,
    sqlite: rusqlite::Connection,
    /// The world's setup and the writes made since, to replay a finding.
    history: Vec<String>,
}

/// A value as compared: numbers by value, booleans as integers.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum Cell {
    Null,
    Num(f64, bool),
    Text(String),
    Blob(Vec<u8>),
}

impl Cell {
    fn same(&self, o: &Cell) -> bool {
        match (self, o) {
            (Cell::Num(a, ai), Cell::Num(b, bi)) => {
                if *ai && *bi {
                    a == b
                } else {
                    // The sign of a real zero is not compared: SQLite keeps it in some paths
                    // and loses it in others (a REAL stored as an integer; which of 0.0 and
                    // -0.0 a UNION keeps), see docs/sql.md.
                    // Relative 1e-9, or 1e-6 absolute: sums and averages that cancel large
                    // terms may differ in low bits between summation orders.
                    a == b
                        || (a.is_nan() && b.is_nan())
                        || (a - b).abs() <= (1e-9 * a.abs().max(b.abs())).max(1e-6)
                }
            }
            (a, b) => a == b,
        }
    }

    /// A total order for sorting rows: NULL, numbers by value, text, blobs.
    fn order(&self, o: &Cell) -> std::cmp::Ordering {
        let rank = |c: &Cell| match c {
            Cell::Null => 0,
            Cell::Num(..) => 1,
            Cell::Text(_) => 2,
            Cell::Blob(_) => 3,
        };
        match (self, o) {
            // -0.0 and 0.0 sort together (they are `same`); NaN last.
            (Cell::Num(a, _), Cell::Num(b, _)) => {
                a.partial_cmp(b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
            }
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
            (Cell::Blob(a), Cell::Blob(b)) => a.cmp(b),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

fn from_raftsql(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Integer(i) => Cell::Num(*i as f64, true),
        Value::Real(r) => Cell::Num(*r, false),
        Value::Boolean(b) => Cell::Num(*b as i64 as f64, true),
        Value::Text(t) => Cell::Text(t.clone()),
        Value::Blob(b) => Cell::Blob(b.clone()),
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Cell {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Num(i as f64, true),
        ValueRef::Real(r) => Cell::Num(r, false),
        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
    }
}

type Rows = Vec<Vec<Cell>>;

fn same_rows(a: &Rows, b: &Rows, ordered: bool) -> bool {
    let sort = |r: &Rows| {
        let mut r = r.clone();
        if !ordered {
            r.sort_by(|x, y| {
                x.iter().zip(y).map(|(p, q)| p.order(q)).find(|o| o.is_ne()).unwrap_or(x.len().cmp(&y.len()))
            });
        }
        r
    };
    let (a, b) = (sort(a), sort(b));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.same(q)))
}

fn show(r: &Result<Rows, String>) -> String {
    let s = match r {
        Err(e) => format!("error: {e}"),
        Ok(rows) => format!("{} rows: {rows:?}", rows.len()),
    };
    crate::slt::truncate(&s, 600)
}

impl Running {
    fn open(world: &World) -> Result<Running, String> {
        let mut engine = Engine::open(Duration::from_secs(10))?;
        let sqlite = rusqlite::Connection::open_in_memory().map_err(|e| format!("SQLite: {e}"))?;
        for s in &world.setup {
            engine.execute(s).map_err(|e| format!("{s}: {}", e.message))?.1.into_iter().try_for_each(
                |o| o.map(|_| ()).map_err(|e| format!("raftsql refused the world's {s}: {}", e.message)),
            )?;
            sqlite.execute_batch(s).map_err(|e| format!("SQLite refused the world's {s}: {e}"))?;
        }
        Ok(Running { engine, sqlite, history: world.setup.clone() })
    }

    fn raftsql(&mut self, sql: &str) -> Result<Rows, String> {
        self.engine
            .read(sql)
            .map(|out| out.rows.iter().map(|r| r.iter().map(from_raftsql).collect()).collect())
            .map_err(|e| e.message)
    }

    fn sqlite(&self, sql: &str) -> Result<Rows, String> {
        let mut stmt = self.sqlite.prepare(sql).map_err(|e| e.to_string())?;
        let n = stmt.column_count();
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            out.push((0..n).map(|i| row.get_ref(i).map(from_sqlite).unwrap_or(Cell::Null)).collect());
            if out.len() > 100_000 {
                return Err("more than 100,000 rows".into());
            }
        }
        Ok(out)
    }

    fn finding(
        &self,
        report: &mut Report,
        opts: &Options,
        oracle: &'static str,
        query: &str,
        got: String,
        want: String,
    ) {
        report.finding_count += 1;
        if report.findings.len() < opts.keep {
            report.findings.push(Finding {
                oracle,
                setup: self.history.clone(),
                query: query.to_string(),
                raftsql: got,
                expected: want,
            });
        }
    }

    /// Whether raftsql refused `r` as unsupported; counts it by message.
    fn unsupported(report: &mut Report, r: &Result<Rows, String>) -> bool {
        match r {
            Err(e) if e.starts_with("Unsupported") => {
                let what = e.split(':').skip(1).collect::<Vec<_>>().join(":");
                let what = what.trim().trim_start_matches("unsupported:").trim();
                let what: String = what.chars().take(80).collect();
                *report.unsupported.entry(what).or_default() += 1;
                true
            }
            _ => false,
        }
    }

    /// Runs a write on both and compares its outcome (rows affected, or an error on both),
    /// then the table's rows. Returns whether the two still hold the same rows.
    fn write(&mut self, sql: &str, table: &str, report: &mut Report, opts: &Options) -> bool {
        let ours: Result<u64, String> = match self.engine.execute(sql) {
            Err(e) => Err(e.message),
            Ok((_, outcomes)) => match outcomes.into_iter().next() {
                Some(Ok(r)) => Ok(r.rows_affected),
                Some(Err(e)) => Err(format!("{:?}: {}", e.kind, e.message)),
                None => Err("no outcome".into()),
            },
        };
        if let Err(e) = &ours {
            if Self::unsupported(report, &Err(e.clone())) {
                // Nothing was applied on our side; keep SQLite in step by not running it.
                return true;
            }
        }
        let theirs = self.sqlite.execute(sql, []).map(|n| n as u64).map_err(|e| e.to_string());
        report.writes += 1;
        let same = match (&ours, &theirs) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        self.history.push(sql.to_string());
        if !same {
            self.finding(report, opts, "sqlite", sql, format!("{ours:?}"), format!("{theirs:?}"));
            return false;
        }
        let dump = format!("SELECT * FROM {table}");
        let (a, b) = (self.raftsql(&dump), self.sqlite(&dump));
        match (&a, &b) {
            (Ok(x), Ok(y)) if same_rows(x, y, false) => true,
            _ => {
                self.finding(
                    report,
                    opts,
                    "sqlite",
                    &format!("{dump} (after the last write)"),
                    show(&a),
                    show(&b),
                );
                false
            }
        }
    }

    fn compare(&mut self, q: &Query, report: &mut Report, opts: &Options) {
        report.compared += 1;
        let ours = self.raftsql(&q.sql);
        if Self::unsupported(report, &ours) {
            return;
        }
        let theirs = self.sqlite(&q.sql);
        match (&ours, &theirs) {
            (Err(_), Err(_)) => report.both_failed += 1,
            (Ok(a), Ok(b)) if same_rows(a, b, q.ordered) => report.agreed += 1,
            _ => self.finding(report, opts, "sqlite", &q.sql, show(&ours), show(&theirs)),
        }
    }

    fn tlp(&mut self, from: &From, p: &str, report: &mut Report, opts: &Options) {
        let cols: Vec<&str> = from.scope.iter().map(|(c, _)| c.as_str()).collect();
        let base = format!("SELECT {} FROM {}", cols.join(", "), from.sql);
        let all = self.raftsql(&base);
        let parts: Vec<_> = [
            format!("{base} WHERE {p}"),
            format!("{base} WHERE NOT ({p})"),
            format!("{base} WHERE ({p}) IS NULL"),
        ]
        .into_iter()
        .map(|q| self.raftsql(&q))
        .collect();
        if Self::unsupported(report, &all) || parts.iter().any(|r| Self::unsupported(report, r)) {
            return;
        }
        report.oracle_checks += 1;
        let (Ok(all), Ok(a), Ok(b), Ok(c)) = (&all, &parts[0], &parts[1], &parts[2]) else {
            // An error on one partition only is a finding; an error everywhere agrees.
            let errors = std::iter::once(&all).chain(&parts).filter(|r| r.is_err()).count();
            if errors != 0 && errors != 4 {
                let got = parts.iter().map(show).collect::<Vec<_>>().join(" / ");
                self.finding(report, opts, "tlp", &format!("{base} WHERE {p}"), got, show(&all));
            }
            return;
        };
        let union: Rows = a.iter().chain(b).chain(c).cloned().collect();
        if !same_rows(&union, all, false) {
            self.finding(
                report,
                opts,
                "tlp",
                &format!("{base} WHERE {p}"),
                format!("p: {} / NOT p: {} / p IS NULL: {} rows", a.len(), b.len(), c.len()),
                format!("{} rows without WHERE", all.len()),
            );
        }
    }

    fn norec(&mut self, from: &From, p: &str, report: &mut Report, opts: &Options) {
        let optimized = format!("SELECT count(*) FROM {} WHERE {p}", from.sql);
        let unoptimized = format!("SELECT CASE WHEN {p} THEN 1 ELSE 0 END FROM {}", from.sql);
        let (a, b) = (self.raftsql(&optimized), self.raftsql(&unoptimized));
        if Self::unsupported(report, &a) || Self::unsupported(report, &b) {
            return;
        }
        report.oracle_checks += 1;
        match (&a, &b) {
            (Err(_), Err(_)) => {}
            (Ok(a), Ok(b)) => {
                let count = a.first().and_then(|r| r.first()).cloned();
                let ones =
                    b.iter().filter(|r| r.first().is_some_and(|c| c.same(&Cell::Num(1.0, true)))).count();
                if count.as_ref().is_none_or(|c| !c.same(&Cell::Num(ones as f64, true))) {
                    self.finding(
                        report,
                        opts,
                        "norec",
                        &optimized,
                        format!("{count:?}"),
                        format!("{ones} rows where p is true"),
                    );
                }
            }
            _ => self.finding(report, opts, "norec", &optimized, show(&a), show(&b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_compare_numbers_by_value_and_booleans_as_integers() {
        assert!(from_raftsql(&Value::Boolean(true)).same(&Cell::Num(1.0, true)));
        assert!(Cell::Num(3.0, true).same(&Cell::Num(3.0, false)));
        assert!(Cell::Num(0.1 + 0.2, false).same(&Cell::Num(0.3, false)));
        assert!(!Cell::Num(1.0, true).same(&Cell::Num(2.0, true)));
        assert!(!Cell::Text("1".into()).same(&Cell::Num(1.0, true)));
        assert!(!Cell::Null.same(&Cell::Num(0.0, true)));
        let rows = |v: &[i64]| v.iter().map(|&i| vec![Cell::Num(i as f64, true)]).collect::<Rows>();
        assert!(same_rows(&rows(&[2, 1, 2]), &rows(&[1, 2, 2]), false));
        assert!(!same_rows(&rows(&[2, 1, 2]), &rows(&[1, 2, 2]), true));
        assert!(!same_rows(&rows(&[1, 2]), &rows(&[1, 2, 2]), false));
    }

    /// A planted difference is found: SQLite answers what raftsql refuses by design.
    #[test]
    fn a_difference_from_sqlite_is_a_finding() {
        let world = World { tables: vec![], setup: vec!["CREATE TABLE t (a INTEGER)".into()] };
        let mut w = Running::open(&world).expect("open");
        let mut report = Report::default();
        let opts = Options::default();
        w.compare(&Query { sql: "SELECT 1 + 1".into(), ordered: false }, &mut report, &opts);
        assert_eq!((report.agreed, report.finding_count), (1, 0));
        w.sqlite
            .execute_batch("INSERT INTO t VALUES ('text in an integer column')")
            .expect("SQLite stores it");
        w.compare(&Query { sql: "SELECT count(*) FROM t".into(), ordered: false }, &mut report, &opts);
        assert_eq!(report.finding_count, 1, "{report:?}");
        assert!(report.findings[0].to_string().contains("SELECT count(*) FROM t"));
    }

    /// The bounded run CI makes (a fixed seed, so it is repeatable): every query agrees with
    /// SQLite, fails on both sides, or is refused as unsupported; TLP and NoREC hold.
    #[test]
    fn raftsql_agrees_with_sqlite_on_generated_queries() {
        let opts = Options { queries: 5_000, time: Duration::from_secs(300), ..Options::default() };
        let report = run(&opts).expect("run");
        println!("{}", report.line());
        for (what, n) in &report.unsupported {
            println!("  unsupported {n}×: {what}");
        }
        for f in &report.findings {
            println!("{f}");
        }
        assert!(report.compared >= 1_000, "{}", report.line());
        assert_eq!(report.finding_count, 0, "findings above");
        assert_eq!(report.backend_differences, 0);
    }
}
