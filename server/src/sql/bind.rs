//! Binding: a parsed query (sqlparser's AST) resolved against the schema into a [`Query`] whose
//! expressions name columns by position ([`BExpr::Col`]), with conjuncts attached to the levels
//! of its joins and each level's access path and join order chosen ([`super::access`]).

use super::access::{choose_access, ordered_read, place};
use super::eval::{literal, parse_number_exact, Arith, CastTo};
use super::func::{self, ScalarFn};
use super::plan::*;
use super::Error;
use crate::changeset::{DataType, ReadView, TableSchema, Value};
use sqlparser::ast::{self, BinaryOperator as B, Expr, SelectItem, SetExpr, TableFactor, UnaryOperator as U};
use std::cell::{Cell, RefCell};

/// Name resolution scope of one query level.
pub struct Scope<'p> {
    /// (table alias, column name, declared type) per column of the joined row.
    pub cols: Vec<(String, String, Option<DataType>)>,
    pub outer: Option<&'p Scope<'p>>,
    /// Outer columns this scope (or its subqueries) referenced: (depth from this scope, index).
    pub refs: RefCell<Vec<(usize, usize)>>,
    pub correlated: Cell<bool>,
    transparent: bool,
}

impl<'p> Scope<'p> {
    pub fn new(cols: Vec<(String, String, Option<DataType>)>, outer: Option<&'p Scope<'p>>) -> Self {
        Scope {
            cols,
            outer,
            refs: RefCell::new(Vec::new()),
            correlated: Cell::new(false),
            transparent: false,
        }
    }

    /// The scope of one table's row, as UPDATE, DELETE and RETURNING see it.
    pub fn of_table(schema: &TableSchema, outer: &'p Scope<'p>) -> Self {
        let cols =
            schema.columns.iter().map(|c| (schema.name.clone(), c.name.clone(), Some(c.data_type))).collect();
        Scope::new(cols, Some(outer))
    }

    /// The declared type of the column a bound reference names.
    fn col_type(&self, depth: usize, index: usize) -> Option<DataType> {
        let mut s = self;
        let mut d = depth;
        loop {
            if !s.transparent {
                if d == 0 {
                    return s.cols.get(index).and_then(|c| c.2);
                }
                d -= 1;
            }
            s = s.outer?;
        }
    }

    /// A scope with no columns of its own that does not count as a query level: it marks where
    /// a subquery begins, collecting the enclosing columns the subquery reads.
    pub fn marker(outer: Option<&'p Scope<'p>>) -> Self {
        Scope { transparent: true, ..Scope::new(vec![], outer) }
    }

    fn resolve(
        &self,
        qualifier: Option<&str>,
        name: &str,
    ) -> Result<(usize, usize, Option<DataType>), Error> {
        let mut scope = Some(self);
        let mut depth = 0;
        let mut chain: Vec<(&Scope, usize)> = Vec::new();
        while let Some(s) = scope {
            if !s.transparent {
                let hits: Vec<usize> = s
                    .cols
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, c, _))| {
                        c.eq_ignore_ascii_case(name) && qualifier.is_none_or(|q| t.eq_ignore_ascii_case(q))
                    })
                    .map(|(i, _)| i)
                    .collect();
                match hits.as_slice() {
                    [i] => {
                        // Every scope between here and the one holding the column reads outside itself.
                        for (inner, at) in &chain {
                            inner.correlated.set(true);
                            inner.refs.borrow_mut().push((depth - at, *i));
                        }
                        return Ok((depth, *i, s.cols[*i].2));
                    }
                    [] => {}
                    _ => return Err(Error::Invalid(format!("ambiguous column name: {name}"))),
                }
            }
            chain.push((s, depth));
            if !s.transparent {
                depth += 1;
            }
            scope = s.outer;
        }
        Err(match qualifier {
            Some(q) if !self.has_table(q) => Error::NoSuchColumnName(format!("{q}.{name}")),
            Some(q) => Error::NoSuchColumn { table: q.to_string(), column: name.to_string() },
            None => Error::NoSuchColumnName(name.to_string()),
        })
    }

    fn has_table(&self, q: &str) -> bool {
        self.cols.iter().any(|(t, _, _)| t.eq_ignore_ascii_case(q))
            || self.outer.is_some_and(|o| o.has_table(q))
    }
}

/// A bound SELECT: its plan, output column names and ORDER BY (output position, descending).
type BoundSelect = (SelectPlan, Vec<String>, Vec<(usize, bool)>);

/// A scope's columns: (table alias, column name, declared type if a table's).
type ScopeColumns = Vec<(String, String, Option<DataType>)>;

/// A FROM clause's join conditions, by the level they join: ON conditions (with whether the
/// join is a LEFT JOIN) and USING/NATURAL column names.
struct Joins<'q> {
    on: Vec<(usize, &'q Expr, bool)>,
    using: Vec<(usize, Vec<String>)>,
}

/// Binds expressions and queries.
///
/// Parameters are bound as slots ([`BExpr::Param`]), never as their values, so a plan depends
/// only on the statement's text and the schema it was bound against: the values are read when
/// it runs, and a plan may run again with others (`plan_cache`). Binding still checks that every
/// parameter the text names has a value.
pub struct Binder<'a> {
    pub view: &'a dyn ReadView,
    pub params: &'a [Value],
    /// What the plan being bound takes from outside its text, for `plan_cache`.
    pub(super) notes: Notes,
}

/// What binding saw besides the text: the parameters the plan reads, whether it holds
/// subqueries (their per-run result caches make it single-use), and an estimate of the schemas
/// it copied.
#[derive(Default)]
pub(super) struct Notes {
    /// One past the highest parameter index the plan reads.
    pub params: Cell<usize>,
    pub subqueries: Cell<bool>,
    pub schema_bytes: Cell<usize>,
}

/// Collects aggregate calls while binding an aggregate query's expressions.
struct AggCollector {
    aggs: Vec<AggSpec>,
}

impl<'a> Binder<'a> {
    pub fn new(view: &'a dyn ReadView, params: &'a [Value]) -> Self {
        Binder { view, params, notes: Notes::default() }
    }

    pub fn expr(&self, e: &Expr, scope: &Scope) -> Result<BExpr, Error> {
        self.bind(e, scope, &mut None)
    }

    #[recursive::recursive]
    fn bind(&self, e: &Expr, scope: &Scope, aggs: &mut Option<&mut AggCollector>) -> Result<BExpr, Error> {
        let b = |x: &Expr, aggs: &mut Option<&mut AggCollector>| self.bind(x, scope, aggs).map(Box::new);
        Ok(match e {
            Expr::Value(v) => match &v.value {
                ast::Value::Placeholder(p) => BExpr::Param { index: self.param(p)?, numeric: false },
                other => BExpr::Const(literal(other)?),
            },
            Expr::Identifier(id) => {
                if id.quote_style == Some('\'') {
                    BExpr::Const(Value::Text(id.value.clone()))
                } else {
                    let (depth, index, _) = scope.resolve(None, &id.value)?;
                    BExpr::Col { depth, index }
                }
            }
            Expr::CompoundIdentifier(ids) => match ids.as_slice() {
                [t, c] => {
                    let (depth, index, _) = scope.resolve(Some(&t.value), &c.value)?;
                    BExpr::Col { depth, index }
                }
                _ => return Err(Error::Unsupported(format!("qualified name {e}"))),
            },
            Expr::Nested(x) => self.bind(x, scope, aggs)?,
            Expr::UnaryOp { op, expr } => match op {
                U::Minus => match self.bind(expr, scope, aggs)? {
                    BExpr::Const(Value::Integer(i)) if i != i64::MIN => BExpr::Const(Value::Integer(-i)),
                    BExpr::Const(Value::Real(r)) => BExpr::Const(Value::Real(-r)),
                    x => BExpr::Neg(Box::new(x)),
                },
                U::Plus => self.bind(expr, scope, aggs)?,
                U::Not => BExpr::Not(b(expr, aggs)?),
                U::BitwiseNot => BExpr::BitNot(b(expr, aggs)?),
                other => return Err(Error::Unsupported(format!("operator {other}"))),
            },
            Expr::IsNull(x) => BExpr::IsNull(b(x, aggs)?, false),
            Expr::IsNotNull(x) => BExpr::IsNull(b(x, aggs)?, true),
            Expr::IsNotDistinctFrom(x, y) => BExpr::Is(b(x, aggs)?, b(y, aggs)?, false),
            Expr::IsDistinctFrom(x, y) => BExpr::Is(b(x, aggs)?, b(y, aggs)?, true),
            Expr::IsTrue(x) => BExpr::Is(b(x, aggs)?, Box::new(BExpr::Const(Value::Integer(1))), false),
            Expr::IsFalse(x) => BExpr::Is(b(x, aggs)?, Box::new(BExpr::Const(Value::Integer(0))), false),
            Expr::BinaryOp { left, op, right } => {
                let (l, r) = (self.bind(left, scope, aggs)?, self.bind(right, scope, aggs)?);
                let cmp = |c: Cmp, l: BExpr, r: BExpr| {
                    let (l, r) = affinity(l, r, scope);
                    BExpr::Cmp(c, Box::new(l), Box::new(r))
                };
                match op {
                    B::Plus => BExpr::Arith(Arith::Add, Box::new(l), Box::new(r)),
                    B::Minus => BExpr::Arith(Arith::Sub, Box::new(l), Box::new(r)),
                    B::Multiply => BExpr::Arith(Arith::Mul, Box::new(l), Box::new(r)),
                    B::Divide => BExpr::Arith(Arith::Div, Box::new(l), Box::new(r)),
                    B::Modulo => BExpr::Arith(Arith::Mod, Box::new(l), Box::new(r)),
                    B::StringConcat => BExpr::Concat(Box::new(l), Box::new(r)),
                    B::And => BExpr::And(Box::new(l), Box::new(r)),
                    B::Or => BExpr::Or(Box::new(l), Box::new(r)),
                    B::Eq => cmp(Cmp::Eq, l, r),
                    B::NotEq => cmp(Cmp::Ne, l, r),
                    B::Lt => cmp(Cmp::Lt, l, r),
                    B::LtEq => cmp(Cmp::Le, l, r),
                    B::Gt => cmp(Cmp::Gt, l, r),
                    B::GtEq => cmp(Cmp::Ge, l, r),
                    B::BitwiseAnd => BExpr::Bit(Bit::And, Box::new(l), Box::new(r)),
                    B::BitwiseOr => BExpr::Bit(Bit::Or, Box::new(l), Box::new(r)),
                    B::PGBitwiseShiftLeft => BExpr::Bit(Bit::Shl, Box::new(l), Box::new(r)),
                    B::PGBitwiseShiftRight => BExpr::Bit(Bit::Shr, Box::new(l), Box::new(r)),
                    B::Glob => BExpr::Like {
                        expr: Box::new(l),
                        pattern: Box::new(r),
                        escape: None,
                        negated: false,
                        glob: true,
                    },
                    other => return Err(Error::Unsupported(format!("operator {other}"))),
                }
            }
            Expr::InList { expr, list, negated } => {
                let x = b(expr, aggs)?;
                let list = list.iter().map(|e| self.bind(e, scope, aggs)).collect::<Result<_, _>>()?;
                BExpr::InList(x, list, *negated)
            }
            Expr::InSubquery { expr, subquery, negated } => {
                let x = b(expr, aggs)?;
                let sub = self.sub(subquery, scope)?;
                if sub.query.columns.len() != 1 {
                    return Err(Error::Invalid(format!(
                        "sub-select returns {} columns - expected 1",
                        sub.query.columns.len()
                    )));
                }
                BExpr::InSub(x, Box::new(sub), *negated)
            }
            Expr::Exists { subquery, negated } => {
                BExpr::Exists(Box::new(self.sub(subquery, scope)?), *negated)
            }
            Expr::Subquery(q) => {
                let sub = self.sub(q, scope)?;
                if sub.query.columns.len() != 1 {
                    return Err(Error::Invalid(format!(
                        "sub-select returns {} columns - expected 1",
                        sub.query.columns.len()
                    )));
                }
                BExpr::Scalar(Box::new(sub))
            }
            Expr::Between { expr, negated, low, high } => {
                BExpr::Between(b(expr, aggs)?, b(low, aggs)?, b(high, aggs)?, *negated)
            }
            Expr::Like { negated, any: false, expr, pattern, escape_char } => BExpr::Like {
                expr: b(expr, aggs)?,
                pattern: b(pattern, aggs)?,
                escape: escape_char.as_ref().map(|e| b(e, aggs)).transpose()?,
                negated: *negated,
                glob: false,
            },
            Expr::Case { operand, conditions, else_result, .. } => BExpr::Case {
                operand: operand.as_ref().map(|o| b(o, aggs)).transpose()?,
                whens: conditions
                    .iter()
                    .map(|w| Ok((self.bind(&w.condition, scope, aggs)?, self.bind(&w.result, scope, aggs)?)))
                    .collect::<Result<_, Error>>()?,
                otherwise: else_result.as_ref().map(|o| b(o, aggs)).transpose()?,
            },
            Expr::Cast { expr, data_type, .. } => BExpr::Cast(b(expr, aggs)?, cast_target(data_type)?),
            Expr::Function(f) => self.function(f, scope, aggs)?,
            Expr::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.bind(expr, scope, aggs)?];
                args.push(match substring_from {
                    Some(f) => self.bind(f, scope, aggs)?,
                    None => BExpr::Const(Value::Integer(1)),
                });
                if let Some(f) = substring_for {
                    args.push(self.bind(f, scope, aggs)?);
                }
                BExpr::Func(builtin("substr")?, args)
            }
            Expr::Trim { expr, trim_where, trim_what, trim_characters } => {
                let mut args = vec![self.bind(expr, scope, aggs)?];
                if let Some(w) = trim_what {
                    args.push(self.bind(w, scope, aggs)?);
                } else if let Some(cs) = trim_characters {
                    if let Some(c) = cs.first() {
                        args.push(self.bind(c, scope, aggs)?);
                    }
                }
                let f = match trim_where {
                    Some(ast::TrimWhereField::Leading) => builtin("ltrim")?,
                    Some(ast::TrimWhereField::Trailing) => builtin("rtrim")?,
                    _ => builtin("trim")?,
                };
                BExpr::Func(f, args)
            }
            Expr::TypedString(ts) => match &ts.value.value {
                ast::Value::SingleQuotedString(s) => BExpr::Const(Value::Text(s.clone())),
                other => BExpr::Const(literal(other)?),
            },
            other => return Err(Error::Unsupported(format!("expression {}", short(other)))),
        })
    }

    /// The slot of placeholder `p` (0-based), once its value is known to be given.
    fn param(&self, p: &str) -> Result<usize, Error> {
        let number = p
            .trim_start_matches(['$', '?', ':'])
            .parse::<usize>()
            .map_err(|_| Error::Unsupported(format!("parameter {p}: use $1, ?1 or ?")))?;
        let index = number.wrapping_sub(1);
        if index >= self.params.len() {
            return Err(Error::Invalid(format!("parameter {p} has no value: {} given", self.params.len())));
        }
        self.notes.params.set(self.notes.params.get().max(number));
        Ok(index)
    }

    #[recursive::recursive]
    fn sub(&self, q: &ast::Query, scope: &Scope) -> Result<Sub, Error> {
        self.notes.subqueries.set(true);
        let inner = Scope::marker(Some(scope));
        let query = self.query_in(q, &inner)?;
        let outer_refs: Vec<(usize, usize)> = inner.refs.borrow().clone();
        Ok(Sub { query, correlated: inner.correlated.get(), outer_refs, cache: RefCell::new(None) })
    }

    fn function(
        &self,
        f: &ast::Function,
        scope: &Scope,
        aggs: &mut Option<&mut AggCollector>,
    ) -> Result<BExpr, Error> {
        let name = f.name.to_string().to_ascii_lowercase();
        if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
            return Err(Error::Unsupported(format!("FILTER / OVER / WITHIN GROUP in {name}()")));
        }
        let (args, distinct, star) = match &f.args {
            ast::FunctionArguments::None => (vec![], false, false),
            ast::FunctionArguments::Subquery(_) => {
                return Err(Error::Unsupported(format!("subquery as the argument of {name}()")))
            }
            ast::FunctionArguments::List(list) => {
                let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
                let mut args = Vec::new();
                let mut star = false;
                for a in &list.args {
                    match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => args.push(e),
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard) => star = true,
                        other => return Err(Error::Unsupported(format!("function argument {other}"))),
                    }
                }
                (args, distinct, star)
            }
        };
        let agg = match (name.as_str(), args.len()) {
            ("count", 0) if star => Some(AggFunc::CountStar),
            ("count", 1) => Some(AggFunc::Count),
            ("sum", 1) => Some(AggFunc::Sum),
            ("total", 1) => Some(AggFunc::Total),
            ("avg", 1) => Some(AggFunc::Avg),
            ("min", 1) => Some(AggFunc::Min),
            ("max", 1) => Some(AggFunc::Max),
            ("group_concat" | "string_agg", 1 | 2) => Some(AggFunc::GroupConcat),
            _ => None,
        };
        if let Some(func) = agg {
            let Some(collector) = aggs.as_deref_mut() else {
                return Err(Error::Invalid(format!("misuse of aggregate function {name}()")));
            };
            // Arguments of an aggregate are evaluated per row: no nested aggregates.
            let arg = args.first().map(|a| self.bind(a, scope, &mut None)).transpose()?;
            let separator = args.get(1).map(|a| self.bind(a, scope, &mut None)).transpose()?;
            collector.aggs.push(AggSpec { func, arg, separator, distinct });
            return Ok(BExpr::Agg(collector.aggs.len() - 1));
        }
        if distinct || star {
            return Err(Error::Invalid(format!("DISTINCT or * in the non-aggregate function {name}()")));
        }
        let bound = args.iter().map(|a| self.bind(a, scope, aggs)).collect::<Result<Vec<_>, _>>()?;
        let Some(func) = func::lookup(&name) else {
            return Err(Error::Unsupported(format!("function {name}()")));
        };
        if !func.takes(bound.len()) {
            return Err(Error::Invalid(format!("wrong number of arguments to function {name}()")));
        }
        Ok(BExpr::Func(func, bound))
    }

    /// The one-table plan of the rows `selection` picks (what UPDATE and DELETE change), with the
    /// same access paths as a SELECT.
    pub fn table_filter(&self, schema: &TableSchema, selection: Option<&Expr>) -> Result<SelectPlan, Error> {
        let top = Scope::marker(None);
        let scope = Scope::of_table(schema, &top);
        let width = schema.columns.len();
        let mut level = Level {
            source: Source::Table { schema: Box::new(schema.clone()), access: Access::Scan },
            alias: schema.name.clone(),
            offset: 0,
            width,
            left: false,
            local: vec![],
            on: vec![],
            filters: vec![],
            probe: None,
        };
        let mut constant_filters = Vec::new();
        for c in selection.map(split_and).unwrap_or_default() {
            let e = self.expr(c, &scope)?;
            if e.local_cols().is_empty() {
                constant_filters.push(e);
            } else {
                level.local.push(e);
            }
        }
        choose_access(&mut level);
        Ok(SelectPlan {
            levels: vec![level],
            width,
            constant_filters,
            aggregate: false,
            group_by: vec![],
            aggs: vec![],
            having: None,
            projection: vec![],
            visible: 0,
            distinct: false,
            ordered: false,
        })
    }

    /// Binds a whole query (SELECT, VALUES, compound) at the top level.
    pub fn query(&self, q: &ast::Query) -> Result<Query, Error> {
        let top = Scope::marker(None);
        self.query_in(q, &top)
    }

    /// Binds a query whose enclosing scope is `outer` (a subquery's own empty scope, whose outer
    /// is the enclosing query).
    #[recursive::recursive]
    fn query_in(&self, q: &ast::Query, outer: &Scope) -> Result<Query, Error> {
        if q.with.is_some() {
            return Err(Error::Unsupported("WITH (common table expressions)".into()));
        }
        if q.fetch.is_some() || !q.locks.is_empty() {
            return Err(Error::Unsupported("FETCH / FOR UPDATE".into()));
        }
        let order_items: Vec<&ast::OrderByExpr> = match &q.order_by {
            None => vec![],
            Some(ob) => match &ob.kind {
                ast::OrderByKind::Expressions(v) => v.iter().collect(),
                ast::OrderByKind::All(_) => return Err(Error::Unsupported("ORDER BY ALL".into())),
            },
        };
        for o in &order_items {
            if matches!(o.options.sort, Some(ast::OrderBySort::Using(_))) || o.with_fill.is_some() {
                return Err(Error::Unsupported("ORDER BY USING / WITH FILL".into()));
            }
        }
        let (limit, offset) = match &q.limit_clause {
            None => (None, None),
            Some(ast::LimitClause::LimitOffset { limit, offset, limit_by }) => {
                if !limit_by.is_empty() {
                    return Err(Error::Unsupported("LIMIT BY".into()));
                }
                (limit.as_ref(), offset.as_ref().map(|o| &o.value))
            }
            Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => (Some(limit), Some(offset)),
        };
        let constant = |e: Option<&Expr>| -> Result<Option<BExpr>, Error> {
            e.map(|e| self.expr(e, &Scope::marker(Some(outer)))).transpose()
        };
        let limit = constant(limit)?;
        let offset = constant(offset)?;
        match q.body.as_ref() {
            SetExpr::Select(s) => {
                let (plan, columns, order_by) = self.select(s, &order_items, outer)?;
                Ok(Query { body: Body::Select(Box::new(plan)), columns, order_by, limit, offset })
            }
            body => {
                let mut query = self.set_expr(body, outer)?;
                query.order_by = self.positional_order(&order_items, &query, body)?;
                query.limit = limit;
                query.offset = offset;
                Ok(query)
            }
        }
    }

    #[recursive::recursive]
    fn set_expr(&self, body: &SetExpr, outer: &Scope) -> Result<Query, Error> {
        match body {
            SetExpr::Select(s) => {
                let (plan, columns, _) = self.select(s, &[], outer)?;
                Ok(Query {
                    body: Body::Select(Box::new(plan)),
                    columns,
                    order_by: vec![],
                    limit: None,
                    offset: None,
                })
            }
            SetExpr::Query(q) => self.query_in(q, outer),
            SetExpr::Values(v) => {
                let scope = Scope::marker(Some(outer));
                let rows: Vec<Vec<BExpr>> = v
                    .rows
                    .iter()
                    .map(|r| r.iter().map(|e| self.expr(e, &scope)).collect::<Result<Vec<_>, _>>())
                    .collect::<Result<_, _>>()?;
                let width = rows.first().map_or(0, |r| r.len());
                if rows.iter().any(|r| r.len() != width) {
                    return Err(Error::Invalid("all VALUES must have the same number of terms".into()));
                }
                Ok(Query {
                    body: Body::Values(rows),
                    columns: (1..=width).map(|i| format!("column{i}")).collect(),
                    order_by: vec![],
                    limit: None,
                    offset: None,
                })
            }
            SetExpr::SetOperation { .. } => {
                // SQLite gives UNION, UNION ALL, INTERSECT and EXCEPT one precedence and runs
                // them left to right; sqlparser binds INTERSECT tighter (standard SQL). The
                // operands and operators are taken in text order and folded from the left.
                let (terms, ops) = compound_chain(body);
                let mut acc = self.set_expr(terms[0], outer)?;
                for (term, (op, quantifier)) in terms[1..].iter().zip(ops) {
                    let op = match op {
                        ast::SetOperator::Union => SetOp::Union,
                        ast::SetOperator::Intersect => SetOp::Intersect,
                        ast::SetOperator::Except | ast::SetOperator::Minus => SetOp::Except,
                    };
                    let all = match quantifier {
                        ast::SetQuantifier::All => true,
                        ast::SetQuantifier::Distinct | ast::SetQuantifier::None => false,
                        other => return Err(Error::Unsupported(format!("set quantifier {other}"))),
                    };
                    let right = self.set_expr(term, outer)?;
                    if acc.columns.len() != right.columns.len() {
                        return Err(Error::Invalid(format!(
                            "SELECTs to the left and right of {op:?} do not have the same number of result columns"
                        )));
                    }
                    let columns = acc.columns.clone();
                    acc = Query {
                        body: Body::Compound { op, all, left: Box::new(acc), right: Box::new(right) },
                        columns,
                        order_by: vec![],
                        limit: None,
                        offset: None,
                    };
                }
                Ok(acc)
            }
            other => Err(Error::Unsupported(format!("query {}", short_set(other)))),
        }
    }

    /// ORDER BY of a compound or VALUES: output positions, names, or the text of an output
    /// expression of the first SELECT.
    fn positional_order(
        &self,
        items: &[&ast::OrderByExpr],
        query: &Query,
        body: &SetExpr,
    ) -> Result<Vec<(usize, bool)>, Error> {
        let first_projection = first_select(body).map(|s| &s.projection);
        items
            .iter()
            .map(|o| {
                let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
                if let Some(k) = position(&o.expr, query.columns.len())? {
                    return Ok((k, desc));
                }
                let text = o.expr.to_string();
                let name = match &o.expr {
                    Expr::Identifier(id) => Some(id.value.as_str()),
                    Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.as_str()),
                    _ => None,
                };
                if let Some(n) = name {
                    if let Some(i) = query.columns.iter().position(|c| c.eq_ignore_ascii_case(n)) {
                        return Ok((i, desc));
                    }
                }
                if let Some(p) = first_projection {
                    for (i, item) in p.iter().enumerate() {
                        let e = match item {
                            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                            _ => continue,
                        };
                        if e.to_string().eq_ignore_ascii_case(&text) {
                            return Ok((i, desc));
                        }
                    }
                }
                Err(Error::Invalid(format!(
                    "ORDER BY term {text} does not match any column in the result set"
                )))
            })
            .collect()
    }

    /// Binds one SELECT with its ORDER BY (which may name source columns).
    fn select(
        &self,
        s: &ast::Select,
        order_items: &[&ast::OrderByExpr],
        outer: &Scope,
    ) -> Result<BoundSelect, Error> {
        if s.top.is_some()
            || s.into.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || !s.named_window.is_empty()
            || s.qualify.is_some()
            || !s.connect_by.is_empty()
        {
            return Err(Error::Unsupported(format!("SELECT clause in {}", short_select(s))));
        }
        let distinct = match &s.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(other) => return Err(Error::Unsupported(format!("{other}"))),
        };

        let (levels, cols, joins) = self.bind_from(&s.from, outer)?;
        let width = cols.len();
        let scope = Scope::new(cols, Some(outer));
        let conjuncts = self.conjuncts(s.selection.as_ref(), joins, &levels, &scope)?;
        let (mut levels, constant_filters) = place(levels, conjuncts)?;

        // Projection.
        let mut collector = AggCollector { aggs: Vec::new() };
        let mut projection = Vec::new();
        let mut columns = Vec::new();
        let mut aliases: Vec<Option<String>> = Vec::new();
        let mut proj_ast: Vec<Option<&Expr>> = Vec::new();
        for item in &s.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    if width == 0 {
                        return Err(Error::Invalid("no tables specified".into()));
                    }
                    for i in 0..width {
                        projection.push(BExpr::Col { depth: 0, index: i });
                        columns.push(scope.cols[i].1.clone());
                        aliases.push(None);
                        proj_ast.push(None);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let q = match kind {
                        ast::SelectItemQualifiedWildcardKind::ObjectName(n) => n.to_string(),
                        ast::SelectItemQualifiedWildcardKind::Expr(e) => e.to_string(),
                    };
                    let q = q.trim_matches('"').to_string();
                    let mut any = false;
                    for i in 0..width {
                        if scope.cols[i].0.eq_ignore_ascii_case(&q) {
                            projection.push(BExpr::Col { depth: 0, index: i });
                            columns.push(scope.cols[i].1.clone());
                            aliases.push(None);
                            proj_ast.push(None);
                            any = true;
                        }
                    }
                    if !any {
                        return Err(Error::NoSuchTable(q));
                    }
                }
                SelectItem::UnnamedExpr(e) => {
                    projection.push(self.bind(e, &scope, &mut Some(&mut collector))?);
                    columns.push(column_name(e));
                    aliases.push(None);
                    proj_ast.push(Some(e));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    projection.push(self.bind(expr, &scope, &mut Some(&mut collector))?);
                    columns.push(alias.value.clone());
                    aliases.push(Some(alias.value.clone()));
                    proj_ast.push(Some(expr));
                }
                other => return Err(Error::Unsupported(format!("select item {other}"))),
            }
        }
        let visible = projection.len();

        // GROUP BY terms may name output positions or aliases.
        let group_exprs: Vec<&Expr> = match &s.group_by {
            ast::GroupByExpr::Expressions(v, mods) if mods.is_empty() => v.iter().collect(),
            _ => return Err(Error::Unsupported("GROUP BY ALL / ROLLUP / CUBE".into())),
        };
        let mut group_by = Vec::new();
        for g in group_exprs {
            let target = match position(g, visible)? {
                Some(k) => Some(proj_ast[k].ok_or_else(|| Error::Invalid("GROUP BY a * column".into()))?),
                None => match g {
                    Expr::Identifier(id) if scope.resolve(None, &id.value).is_err() => aliases
                        .iter()
                        .position(|a| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(&id.value)))
                        .and_then(|k| proj_ast[k]),
                    _ => None,
                },
            };
            let e = self.expr(target.unwrap_or(g), &scope)?;
            group_by.push(e);
        }
        let having =
            s.having.as_ref().map(|h| self.bind(h, &scope, &mut Some(&mut collector))).transpose()?;

        // ORDER BY: output positions, aliases, or expressions (hidden columns).
        let mut order_by = Vec::new();
        for o in order_items {
            let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
            if let Some(k) = position(&o.expr, visible)? {
                order_by.push((k, desc));
                continue;
            }
            if let Expr::Identifier(id) = &o.expr {
                if let Some(k) = aliases
                    .iter()
                    .position(|a| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(&id.value)))
                {
                    order_by.push((k, desc));
                    continue;
                }
            }
            let text = o.expr.to_string();
            if let Some(k) = proj_ast.iter().position(|p| p.is_some_and(|p| p.to_string() == text)) {
                order_by.push((k, desc));
                continue;
            }
            projection.push(self.bind(&o.expr, &scope, &mut Some(&mut collector))?);
            order_by.push((projection.len() - 1, desc));
        }

        let aggregate = !collector.aggs.is_empty() || !group_by.is_empty() || having.is_some();
        if !aggregate && projection.iter().any(|p| p.has_agg()) {
            return Err(Error::Invalid("misuse of aggregate function".into()));
        }
        // A one-table query ordered by one column ascending, not grouped: read in that order.
        let ordered = match (levels.as_mut_slice(), aggregate, distinct, order_by.first()) {
            ([level], false, false, Some(&(k, false))) => ordered_read(level, &projection[k]),
            _ => false,
        };
        let plan = SelectPlan {
            ordered,
            levels,
            width,
            constant_filters,
            aggregate,
            group_by,
            aggs: collector.aggs,
            having,
            projection,
            visible,
            distinct,
        };
        Ok((plan, columns, order_by))
    }

    /// FROM: its levels in the written order, the scope's columns, and each join's ON
    /// conjuncts and USING/NATURAL columns, by level.
    fn bind_from<'q>(
        &self,
        from: &'q [ast::TableWithJoins],
        outer: &Scope,
    ) -> Result<(Vec<Level>, ScopeColumns, Joins<'q>), Error> {
        let mut levels: Vec<Level> = Vec::new();
        let mut cols: Vec<(String, String, Option<DataType>)> = Vec::new();
        let mut on_exprs: Vec<(usize, &Expr, bool)> = Vec::new(); // (level, expr, left join)
        let mut using: Vec<(usize, Vec<String>)> = Vec::new();
        for twj in from {
            self.add_level(&twj.relation, false, &mut levels, &mut cols, outer)?;
            for j in &twj.joins {
                let (left, constraint) = match &j.join_operator {
                    ast::JoinOperator::Join(c) | ast::JoinOperator::Inner(c) => (false, c),
                    ast::JoinOperator::CrossJoin(c) => (false, c),
                    ast::JoinOperator::Left(c) | ast::JoinOperator::LeftOuter(c) => (true, c),
                    other => {
                        return Err(Error::Unsupported(format!(
                            "join {}",
                            format!("{other:?}").split('(').next().unwrap_or("")
                        )))
                    }
                };
                self.add_level(&j.relation, left, &mut levels, &mut cols, outer)?;
                let level = levels.len() - 1;
                match constraint {
                    ast::JoinConstraint::On(e) => on_exprs.push((level, e, left)),
                    ast::JoinConstraint::None => {}
                    ast::JoinConstraint::Using(names) => using.push((
                        level,
                        names.iter().map(|n| n.to_string().trim_matches('"').to_string()).collect(),
                    )),
                    ast::JoinConstraint::Natural => {
                        let this = &levels[level];
                        let names: Vec<String> = cols[this.offset..this.offset + this.width]
                            .iter()
                            .filter(|(_, c, _)| {
                                cols[..this.offset].iter().any(|(_, p, _)| p.eq_ignore_ascii_case(c))
                            })
                            .map(|(_, c, _)| c.clone())
                            .collect();
                        using.push((level, names));
                    }
                }
            }
        }
        Ok((levels, cols, Joins { on: on_exprs, using }))
    }

    /// WHERE and join conditions as bound conjuncts: `(conjunct, Some(level))` for a LEFT
    /// JOIN's ON (which decides that level's NULL rows), `None` for the rest.
    fn conjuncts(
        &self,
        selection: Option<&Expr>,
        joins: Joins<'_>,
        levels: &[Level],
        scope: &Scope,
    ) -> Result<Vec<(BExpr, Option<usize>)>, Error> {
        let Joins { on: on_exprs, using } = joins;
        let mut conjuncts: Vec<(BExpr, Option<usize>)> = Vec::new(); // (expr, Some(level) for LEFT ON)
        if let Some(w) = selection {
            for c in split_and(w) {
                let e = self.expr(c, scope)?;
                if e.has_agg() {
                    return Err(Error::Invalid("misuse of aggregate function in WHERE".into()));
                }
                conjuncts.push((e, None));
            }
        }
        for (level, e, left) in on_exprs {
            for c in split_and(e) {
                conjuncts.push((self.expr(c, scope)?, left.then_some(level)));
            }
        }
        for (level, names) in using {
            let this = (levels[level].offset, levels[level].width);
            for n in names {
                let right = (this.0..this.0 + this.1)
                    .find(|&i| scope.cols[i].1.eq_ignore_ascii_case(&n))
                    .ok_or_else(|| Error::Invalid(format!("cannot join using column {n}")))?;
                let left = (0..this.0)
                    .find(|&i| scope.cols[i].1.eq_ignore_ascii_case(&n))
                    .ok_or_else(|| Error::Invalid(format!("cannot join using column {n}")))?;
                let e = BExpr::Cmp(
                    Cmp::Eq,
                    Box::new(BExpr::Col { depth: 0, index: left }),
                    Box::new(BExpr::Col { depth: 0, index: right }),
                );
                conjuncts.push((e, levels[level].left.then_some(level)));
            }
        }
        Ok(conjuncts)
    }

    fn add_level(
        &self,
        relation: &TableFactor,
        left: bool,
        levels: &mut Vec<Level>,
        cols: &mut Vec<(String, String, Option<DataType>)>,
        outer: &Scope,
    ) -> Result<(), Error> {
        let offset = cols.len();
        let (source, alias, names): (Source, String, Vec<(String, Option<DataType>)>) = match relation {
            TableFactor::Table { name, alias, args: None, .. }
                if object_name(name).is_ok_and(|n| {
                    (n.eq_ignore_ascii_case("sqlite_schema") || n.eq_ignore_ascii_case("sqlite_master"))
                        && self.view.table(&n).ok().flatten().is_none()
                }) =>
            {
                let name = object_name(name)?;
                let alias = alias.as_ref().map_or(name, |a| a.name.value.clone());
                let names = CATALOG_COLUMNS.iter().map(|c| (c.to_string(), Some(DataType::Text))).collect();
                (Source::Catalog, alias, names)
            }
            TableFactor::Table { name, alias, args: None, .. } => {
                let name = object_name(name)?;
                let schema = self.view.table(&name)?.ok_or(Error::NoSuchTable(name.clone()))?;
                self.notes
                    .schema_bytes
                    .set(self.notes.schema_bytes.get().saturating_add(schema_bytes(&schema)));
                let alias = alias.as_ref().map_or(schema.name.clone(), |a| a.name.value.clone());
                let names = schema.columns.iter().map(|c| (c.name.clone(), Some(c.data_type))).collect();
                (Source::Table { schema: Box::new(schema), access: Access::Scan }, alias, names)
            }
            TableFactor::Derived { lateral: false, subquery, alias, .. } => {
                // A FROM subquery sees the enclosing query's outer scope, not its siblings.
                let q = self.query_in(subquery, outer)?;
                let alias = alias.as_ref().map_or(String::new(), |a| a.name.value.clone());
                let names = q.columns.iter().map(|c| (c.clone(), None)).collect();
                (Source::Derived(Box::new(q)), alias, names)
            }
            TableFactor::NestedJoin { table_with_joins, alias: None } if !left && levels.is_empty() => {
                // `(a CROSS JOIN b)` first in FROM is the same left-deep join without parentheses.
                self.add_level(&table_with_joins.relation, false, levels, cols, outer)?;
                for j in &table_with_joins.joins {
                    match &j.join_operator {
                        ast::JoinOperator::CrossJoin(ast::JoinConstraint::None)
                        | ast::JoinOperator::Join(ast::JoinConstraint::None)
                        | ast::JoinOperator::Inner(ast::JoinConstraint::None) => {
                            self.add_level(&j.relation, false, levels, cols, outer)?
                        }
                        _ => {
                            return Err(Error::Unsupported(
                                "parenthesized joins with ON or outer joins".into(),
                            ))
                        }
                    }
                }
                return Ok(());
            }
            TableFactor::NestedJoin { .. } => {
                return Err(Error::Unsupported("parenthesized joins other than first in FROM".into()))
            }
            other => return Err(Error::Unsupported(format!("FROM {other}"))),
        };
        if levels.iter().any(|l| !alias.is_empty() && l.alias.eq_ignore_ascii_case(&alias)) {
            return Err(Error::Invalid(format!("ambiguous table name {alias}: give each an alias")));
        }
        let width = names.len();
        for (n, t) in names {
            cols.push((alias.clone(), n, t));
        }
        levels.push(Level {
            source,
            alias,
            offset,
            width,
            left,
            local: vec![],
            on: vec![],
            filters: vec![],
            probe: None,
        });
        Ok(())
    }
}

/// An estimate of the bytes a copy of `schema` takes in a plan.
fn schema_bytes(schema: &TableSchema) -> usize {
    let columns: usize = schema.columns.iter().map(|c| c.name.len() + 64).sum();
    let indexes: usize = schema.indexes.iter().map(|i| i.name.len() + 8 * i.columns.len() + 64).sum();
    128 + schema.name.len() + columns + indexes
}

/// A function the SQL syntax itself calls (`SUBSTRING(x FROM 2)`, `TRIM(LEADING …)`).
fn builtin(name: &str) -> Result<&'static ScalarFn, Error> {
    func::lookup(name).ok_or_else(|| Error::Unsupported(format!("function {name}()")))
}

/// Binds a text constant compared with a numeric column as a number (SQLite's column affinity).
fn affinity(l: BExpr, r: BExpr, scope: &Scope) -> (BExpr, BExpr) {
    let numeric_col = |e: &BExpr| match e {
        BExpr::Col { depth, index } => {
            matches!(scope.col_type(*depth, *index), Some(DataType::Integer | DataType::Real))
        }
        _ => false,
    };
    let conv = |e: BExpr| match e {
        BExpr::Const(Value::Text(s)) => match parse_number_exact(&s) {
            Some(v) => BExpr::Const(v),
            None => BExpr::Const(Value::Text(s)),
        },
        // The same conversion, when the value arrives.
        BExpr::Param { index, .. } => BExpr::Param { index, numeric: true },
        other => other,
    };
    if numeric_col(&l) {
        (l, conv(r))
    } else if numeric_col(&r) {
        (conv(l), r)
    } else {
        (l, r)
    }
}

#[recursive::recursive]
fn split_and(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryOp { left, op: B::And, right } => {
            let mut v = split_and(left);
            v.extend(split_and(right));
            v
        }
        Expr::Nested(inner) if matches!(inner.as_ref(), Expr::BinaryOp { op: B::And, .. }) => {
            split_and(inner)
        }
        other => vec![other],
    }
}

/// An ORDER BY / GROUP BY term that is an integer literal names an output column (1-based).
fn position(e: &Expr, width: usize) -> Result<Option<usize>, Error> {
    if let Expr::Value(v) = e {
        if let ast::Value::Number(n, _) = &v.value {
            let k: i64 =
                n.parse().map_err(|_| Error::Invalid(format!("ORDER BY term {n} is not an integer")))?;
            if k < 1 || k as usize > width {
                return Err(Error::Invalid(format!(
                    "ORDER BY term {k} out of range - should be between 1 and {width}"
                )));
            }
            return Ok(Some(k as usize - 1));
        }
    }
    Ok(None)
}

/// The operands of a compound select in text order, and the operators between them: the
/// `SetOperation` nodes of `body` flattened in order, without entering a parenthesized query.
/// Iterative, so a long chain does not deepen the stack.
fn compound_chain(body: &SetExpr) -> (Vec<&SetExpr>, Vec<(ast::SetOperator, ast::SetQuantifier)>) {
    enum Item<'a> {
        Node(&'a SetExpr),
        Op(ast::SetOperator, ast::SetQuantifier),
    }
    let (mut terms, mut ops) = (Vec::new(), Vec::new());
    let mut stack = vec![Item::Node(body)];
    while let Some(item) = stack.pop() {
        match item {
            Item::Node(SetExpr::SetOperation { left, op, set_quantifier, right }) => {
                stack.push(Item::Node(right));
                stack.push(Item::Op(*op, *set_quantifier));
                stack.push(Item::Node(left));
            }
            Item::Node(term) => terms.push(term),
            Item::Op(op, quantifier) => ops.push((op, quantifier)),
        }
    }
    (terms, ops)
}

fn first_select(body: &SetExpr) -> Option<&ast::Select> {
    match body {
        SetExpr::Select(s) => Some(s),
        SetExpr::SetOperation { left, .. } => first_select(left),
        SetExpr::Query(q) => first_select(&q.body),
        _ => None,
    }
}

fn column_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(ids) => ids.last().map_or(e.to_string(), |i| i.value.clone()),
        _ => e.to_string(),
    }
}

pub fn object_name(name: &ast::ObjectName) -> Result<String, Error> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(id)] => Ok(id.value.clone()),
        _ => Err(Error::Unsupported(format!("qualified name {name}"))),
    }
}

fn cast_target(t: &ast::DataType) -> Result<CastTo, Error> {
    let name = t.to_string().to_ascii_uppercase();
    let base = name.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "INT2" | "INT4" | "INT8" | "SIGNED"
        | "UNSIGNED" | "MEDIUMINT" => CastTo::Integer,
        "REAL" | "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT4" | "FLOAT8" => CastTo::Real,
        "NUMERIC" | "DECIMAL" => CastTo::Numeric,
        "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" | "STRING" | "CHARACTER VARYING" | "NVARCHAR" | "CLOB" => {
            CastTo::Text
        }
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" => CastTo::Blob,
        "BOOLEAN" | "BOOL" => CastTo::Boolean,
        _ => return Err(Error::Unsupported(format!("CAST to {name}"))),
    })
}

fn short(e: &Expr) -> String {
    let s = e.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

fn short_set(e: &SetExpr) -> String {
    e.to_string().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn short_select(s: &ast::Select) -> String {
    s.to_string().split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}
