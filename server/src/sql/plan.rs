//! The plan: what a bound query is made of ([`Query`], [`SelectPlan`], its [`Level`]s and
//! their [`Access`] paths, expressions as [`BExpr`]), with the expression helpers the planner's
//! passes share. The passes live beside it: `bind.rs` binds the parsed query against the schema,
//! `access.rs` picks access paths, probes and join order, `explain.rs` prints a plan; `run.rs`
//! runs one and `expr.rs` evaluates its expressions.
//!
//! # Shape of a plan
//!
//! A SELECT becomes a [`SelectPlan`]: FROM items are *levels* of a left-deep nested-loop join,
//! each filling the slots of the joined row its FROM position gives, read in the join order.
//! Every conjunct of WHERE (and of an inner join's ON) is placed at the first level in that order
//! where all the columns it names are bound; one that names a single table is applied while that
//! table's rows are fetched. A table's rows come from its best access path: a primary-key get or
//! range, a secondary-index lookup or range (equality, IN lists, `<`/`>`/BETWEEN against values
//! known before the table is read, including an outer query's columns), or a scan. A later level
//! that is joined by equality to earlier ones is probed through a hash table built on first use.
//!
//! Expressions ([`BExpr`]) name columns as `(depth, index)`: depth 0 is the current row of the
//! query being evaluated, depth 1 its enclosing query's row (correlated subqueries), and so on.
//! Aggregate queries collect their aggregate calls into slots that expressions read as
//! [`BExpr::Agg`]; bare columns there read the group's representative row.
//!
//! Sort keys that are not output columns are appended to the projection as hidden columns and
//! cut off after sorting, so sorting, DISTINCT and LIMIT work on output rows alone.

use super::eval::{Arith, CastTo};
use super::func::ScalarFn;
use crate::changeset::{TableSchema, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bit {
    And,
    Or,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    CountStar,
    Count,
    Sum,
    Total,
    Avg,
    Min,
    Max,
    GroupConcat,
}

/// An aggregate call of an aggregate query.
#[derive(Debug)]
pub struct AggSpec {
    pub func: AggFunc,
    pub arg: Option<BExpr>,
    pub separator: Option<BExpr>,
    pub distinct: bool,
}

/// A bound expression.
#[derive(Debug)]
pub enum BExpr {
    Const(Value),
    /// The statement's parameter `index` (0-based), read when the plan runs. `numeric`: the
    /// value is compared with a numeric column, so a text that is exactly a number is taken as
    /// that number (SQLite's column affinity, which a literal gets when bound).
    Param {
        index: usize,
        numeric: bool,
    },
    Col {
        depth: usize,
        index: usize,
    },
    Agg(usize),
    Neg(Box<BExpr>),
    Not(Box<BExpr>),
    BitNot(Box<BExpr>),
    Arith(Arith, Box<BExpr>, Box<BExpr>),
    Cmp(Cmp, Box<BExpr>, Box<BExpr>),
    Bit(Bit, Box<BExpr>, Box<BExpr>),
    Concat(Box<BExpr>, Box<BExpr>),
    And(Box<BExpr>, Box<BExpr>),
    Or(Box<BExpr>, Box<BExpr>),
    IsNull(Box<BExpr>, bool),
    /// `a IS b` (negated: `IS NOT`): NULL-safe equality.
    Is(Box<BExpr>, Box<BExpr>, bool),
    InList(Box<BExpr>, Vec<BExpr>, bool),
    InSub(Box<BExpr>, Box<Sub>, bool),
    Exists(Box<Sub>, bool),
    Scalar(Box<Sub>),
    Between(Box<BExpr>, Box<BExpr>, Box<BExpr>, bool),
    Like {
        expr: Box<BExpr>,
        pattern: Box<BExpr>,
        escape: Option<Box<BExpr>>,
        negated: bool,
        glob: bool,
    },
    Case {
        operand: Option<Box<BExpr>>,
        whens: Vec<(BExpr, BExpr)>,
        otherwise: Option<Box<BExpr>>,
    },
    Cast(Box<BExpr>, CastTo),
    Func(&'static ScalarFn, Vec<BExpr>),
}

impl BExpr {
    /// Visits every column reference at `depth` relative to this expression's query, including
    /// those its subqueries make to it.
    fn cols_at(&self, depth: usize, f: &mut dyn FnMut(usize)) {
        self.walk(&mut |e| match e {
            BExpr::Col { depth: d, index } if *d == depth => f(*index),
            BExpr::InSub(_, sub, _) | BExpr::Exists(sub, _) | BExpr::Scalar(sub) => {
                sub.outer_refs.iter().filter(|(d, _)| *d == depth).for_each(|(_, i)| f(*i))
            }
            _ => {}
        });
    }

    /// The columns of the current row this expression reads.
    pub fn local_cols(&self) -> Vec<usize> {
        let mut v = Vec::new();
        self.cols_at(0, &mut |i| v.push(i));
        v
    }

    pub(super) fn has_agg(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| found |= matches!(e, BExpr::Agg(_)));
        found
    }

    #[recursive::recursive]
    pub(super) fn walk(&self, f: &mut dyn FnMut(&BExpr)) {
        f(self);
        match self {
            BExpr::Neg(a) | BExpr::Not(a) | BExpr::BitNot(a) | BExpr::IsNull(a, _) | BExpr::Cast(a, _) => {
                a.walk(f)
            }
            BExpr::Arith(_, a, b)
            | BExpr::Cmp(_, a, b)
            | BExpr::Bit(_, a, b)
            | BExpr::Concat(a, b)
            | BExpr::And(a, b)
            | BExpr::Or(a, b)
            | BExpr::Is(a, b, _) => {
                a.walk(f);
                b.walk(f);
            }
            BExpr::InList(a, l, _) => {
                a.walk(f);
                l.iter().for_each(|e| e.walk(f));
            }
            BExpr::InSub(a, _, _) => a.walk(f),
            BExpr::Between(a, b, c, _) => {
                a.walk(f);
                b.walk(f);
                c.walk(f);
            }
            BExpr::Like { expr, pattern, escape, .. } => {
                expr.walk(f);
                pattern.walk(f);
                if let Some(e) = escape {
                    e.walk(f);
                }
            }
            BExpr::Case { operand, whens, otherwise } => {
                if let Some(o) = operand {
                    o.walk(f);
                }
                for (w, t) in whens {
                    w.walk(f);
                    t.walk(f);
                }
                if let Some(o) = otherwise {
                    o.walk(f);
                }
            }
            BExpr::Func(_, args) => args.iter().for_each(|e| e.walk(f)),
            BExpr::Const(_)
            | BExpr::Param { .. }
            | BExpr::Col { .. }
            | BExpr::Agg(_)
            | BExpr::Exists(..)
            | BExpr::Scalar(_) => {}
        }
    }
}

/// A subquery inside an expression. Uncorrelated ones run once per statement and are cached.
#[derive(Debug)]
pub struct Sub {
    pub query: Query,
    pub correlated: bool,
    /// Columns of enclosing queries it reads, as (depth relative to the enclosing query, index).
    pub outer_refs: Vec<(usize, usize)>,
    pub cache: RefCell<Option<Rc<SubResult>>>,
}

/// A subquery's rows, with the set of first-column values built on first use by IN.
#[derive(Debug, Default)]
pub struct SubResult {
    pub rows: Vec<Vec<Value>>,
    pub set: RefCell<Option<(std::collections::BTreeSet<super::overlay::OrdKey>, bool)>>,
}

/// A bound query: a body, then ORDER BY over output positions, OFFSET, LIMIT.
#[derive(Debug)]
pub struct Query {
    pub body: Body,
    pub columns: Vec<String>,
    /// (position in the body's rows, descending).
    pub order_by: Vec<(usize, bool)>,
    pub limit: Option<BExpr>,
    pub offset: Option<BExpr>,
}

#[derive(Debug)]
pub enum Body {
    Select(Box<SelectPlan>),
    Values(Vec<Vec<BExpr>>),
    Compound { op: SetOp, all: bool, left: Box<Query>, right: Box<Query> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp {
    Union,
    Intersect,
    Except,
}

#[derive(Debug)]
pub struct SelectPlan {
    pub levels: Vec<Level>,
    /// Width of a joined row.
    pub width: usize,
    /// Conjuncts naming no column of this query: checked once before any row is read.
    pub constant_filters: Vec<BExpr>,
    pub aggregate: bool,
    pub group_by: Vec<BExpr>,
    pub aggs: Vec<AggSpec>,
    pub having: Option<BExpr>,
    /// Output expressions: visible columns, then hidden sort keys.
    pub projection: Vec<BExpr>,
    pub visible: usize,
    pub distinct: bool,
    /// Rows come out ordered by the first ORDER BY key (primary key or index order), so a LIMIT
    /// can stop reading once it has enough.
    pub ordered: bool,
}

#[derive(Debug)]
pub struct Level {
    pub source: Source,
    pub alias: String,
    pub offset: usize,
    pub width: usize,
    /// LEFT JOIN: rows of this level are NULL when nothing matches.
    pub left: bool,
    /// Conjuncts naming only this level's columns (and outer/constant values), applied while its
    /// rows are fetched. Evaluated on a joined-width row.
    pub local: Vec<BExpr>,
    /// LEFT JOIN ON conjuncts naming earlier levels.
    pub on: Vec<BExpr>,
    /// WHERE conjuncts checked once this level is bound (after NULL padding for LEFT JOIN).
    pub filters: Vec<BExpr>,
    /// Equi-join probe: (column of this level, expression over earlier levels).
    pub probe: Option<(usize, BExpr)>,
}

impl Level {
    /// Whether this level is read through a path that yields rows in key or index order, one
    /// row at a time (so a LIMIT can stop the read itself).
    pub fn is_ordered_path(&self) -> bool {
        matches!(
            &self.source,
            Source::Table {
                access: Access::Scan
                    | Access::PkRange { .. }
                    | Access::IndexOrder { .. }
                    | Access::IndexRange { .. },
                ..
            }
        )
    }
}

#[derive(Debug)]
pub enum Source {
    Table {
        schema: Box<TableSchema>,
        access: Access,
    },
    Derived(Box<Query>),
    /// `sqlite_schema` (alias `sqlite_master`): one row per table and index, with the SQL that
    /// recreates it.
    Catalog,
}

/// The columns of the catalog table.
pub const CATALOG_COLUMNS: [&str; 4] = ["type", "name", "tbl_name", "sql"];

/// How a table's rows are fetched.
#[derive(Debug)]
pub enum Access {
    Scan,
    /// Every entry of an index, NULLs first: rows in the order of its first column (ORDER BY).
    IndexOrder {
        index: String,
    },
    /// Primary-key gets (one per value; a single-column key or the first column of a composite).
    PkEq(Vec<BExpr>),
    PkRange {
        lo: Option<(BExpr, bool)>,
        hi: Option<(BExpr, bool)>,
    },
    IndexEq {
        index: String,
        values: Vec<BExpr>,
    },
    IndexRange {
        index: String,
        lo: Option<(BExpr, bool)>,
        hi: Option<(BExpr, bool)>,
    },
}

/// A range bound: the constant and whether it is inclusive.
pub type RangeBound = Option<(BExpr, bool)>;

/// Whether `e` reads no column of the current query (constant for one execution).
pub(super) fn is_constant(e: &BExpr) -> bool {
    e.local_cols().is_empty() && !e.has_agg()
}

/// Deep copy of a constant expression (subqueries are not copied: they are never constants
/// used for access paths).
#[recursive::recursive]
pub(super) fn clone_expr(e: &BExpr) -> BExpr {
    match e {
        BExpr::Const(v) => BExpr::Const(v.clone()),
        BExpr::Param { index, numeric } => BExpr::Param { index: *index, numeric: *numeric },
        BExpr::Col { depth, index } => BExpr::Col { depth: *depth, index: *index },
        BExpr::Neg(a) => BExpr::Neg(Box::new(clone_expr(a))),
        BExpr::Not(a) => BExpr::Not(Box::new(clone_expr(a))),
        BExpr::BitNot(a) => BExpr::BitNot(Box::new(clone_expr(a))),
        BExpr::Arith(o, a, b) => BExpr::Arith(*o, Box::new(clone_expr(a)), Box::new(clone_expr(b))),
        BExpr::Cmp(o, a, b) => BExpr::Cmp(*o, Box::new(clone_expr(a)), Box::new(clone_expr(b))),
        BExpr::Bit(o, a, b) => BExpr::Bit(*o, Box::new(clone_expr(a)), Box::new(clone_expr(b))),
        BExpr::Concat(a, b) => BExpr::Concat(Box::new(clone_expr(a)), Box::new(clone_expr(b))),
        BExpr::Cast(a, t) => BExpr::Cast(Box::new(clone_expr(a)), *t),
        BExpr::Func(f, args) => BExpr::Func(f, args.iter().map(clone_expr).collect()),
        BExpr::Case { operand, whens, otherwise } => BExpr::Case {
            operand: operand.as_ref().map(|o| Box::new(clone_expr(o))),
            whens: whens.iter().map(|(a, b)| (clone_expr(a), clone_expr(b))).collect(),
            otherwise: otherwise.as_ref().map(|o| Box::new(clone_expr(o))),
        },
        // Anything else is not used as an access-path constant (see `cloneable`).
        _ => BExpr::Const(Value::Null),
    }
}

pub(super) fn cloneable(e: &BExpr) -> bool {
    let mut ok = true;
    e.walk(&mut |x| {
        ok &= !matches!(
            x,
            BExpr::InSub(..)
                | BExpr::Exists(..)
                | BExpr::Scalar(_)
                | BExpr::Agg(_)
                | BExpr::And(..)
                | BExpr::Or(..)
                | BExpr::IsNull(..)
                | BExpr::Is(..)
                | BExpr::InList(..)
                | BExpr::Between(..)
                | BExpr::Like { .. }
        ) || matches!(x, BExpr::Func(f, _) if !f.deterministic)
    });
    ok
}
