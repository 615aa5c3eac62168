//! Expression evaluation: a bound expression ([`BExpr`]) over the rows an [`Env`] holds, with
//! SQL's NULL rules, scalar functions from [`func::SCALARS`] and subqueries (run through
//! [`Runner::query`], cached when uncorrelated).

use super::eval::{
    arith, bool_value, cast, compare, int_or_trunc, like, numeric, parse_number_exact, text_of, truth,
};
use super::func::{self, ScalarFn};
use super::limits::{row_bytes, value_bytes};
use super::overlay::OrdKey;
use super::plan::{BExpr, Bit, Cmp, Sub, SubResult};
use super::run::Runner;
use super::Error;
use crate::changeset::Value;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::rc::Rc;

/// The rows an expression can see: its query's current row, the enclosing queries' rows, and
/// (in an aggregate query) the aggregate values of the current group.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub row: &'a [Value],
    pub aggs: &'a [Value],
    pub outer: Option<&'a Env<'a>>,
}

impl<'a> Env<'a> {
    pub const EMPTY: Env<'static> = Env { row: &[], aggs: &[], outer: None };

    fn at(&self, depth: usize) -> &Env<'a> {
        let mut e = self;
        for _ in 0..depth {
            e = e.outer.expect("the planner bound a column of an enclosing query that exists");
        }
        e
    }
}

/// One call of a scalar function: what its evaluator may ask of the statement.
struct Call<'r, 'v> {
    runner: &'r Runner<'v>,
    args: &'r [BExpr],
    env: &'r Env<'r>,
}

impl func::Host for Call<'_, '_> {
    fn charge_text(&self, bytes: usize) -> Result<(), Error> {
        self.runner.text(bytes)
    }

    fn random(&self) -> i64 {
        self.runner.random()
    }

    fn now_millis(&self) -> i64 {
        match self.runner.ctx {
            Some(c) => c.now_millis,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    fn arg(&self, i: usize) -> Result<Value, Error> {
        self.runner.eval(&self.args[i], self.env)
    }
}

impl Runner<'_> {
    #[recursive::recursive]
    pub fn eval(&self, e: &BExpr, env: &Env) -> Result<Value, Error> {
        Ok(match e {
            BExpr::Const(v) => v.clone(),
            BExpr::Param { index, numeric } => {
                // The binder checked that every parameter the plan reads has a value, and a
                // cached plan runs only with at least as many (`plan_cache`).
                let v = self.params.get(*index).cloned().unwrap_or(Value::Null);
                match v {
                    Value::Text(s) if *numeric => parse_number_exact(&s).unwrap_or(Value::Text(s)),
                    v => v,
                }
            }
            BExpr::Col { depth, index } => env.at(*depth).row.get(*index).cloned().unwrap_or(Value::Null),
            BExpr::Agg(i) => env.aggs.get(*i).cloned().unwrap_or(Value::Null),
            BExpr::Neg(a) => match numeric(&self.eval(a, env)?) {
                Value::Integer(i) => i.checked_neg().map_or(Value::Real(-(i as f64)), Value::Integer),
                // SQLite negates a value as `0 - x`: -(0.0) at run time is 0.0, not -0.0
                // (a negative literal such as -0.0 is folded when planned, and keeps its sign).
                Value::Real(r) => Value::Real(0.0 - r),
                other => other,
            },
            BExpr::Not(a) => bool_value(truth(&self.eval(a, env)?).map(|b| !b)),
            BExpr::BitNot(a) => match numeric(&self.eval(a, env)?) {
                Value::Null => Value::Null,
                v => Value::Integer(!int_or_trunc(&v)),
            },
            BExpr::Arith(op, a, b) => arith(*op, &self.eval(a, env)?, &self.eval(b, env)?),
            BExpr::Cmp(op, a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                compare_op(*op, &x, &y)
            }
            BExpr::Bit(op, a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                if matches!(x, Value::Null) || matches!(y, Value::Null) {
                    Value::Null
                } else {
                    let (x, y) = (int_or_trunc(&numeric(&x)), int_or_trunc(&numeric(&y)));
                    Value::Integer(match op {
                        Bit::And => x & y,
                        Bit::Or => x | y,
                        Bit::Shl => shift(x, y),
                        Bit::Shr => shift(x, y.saturating_neg()),
                    })
                }
            }
            BExpr::Concat(a, b) => match (self.eval(a, env)?, self.eval(b, env)?) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (x, y) => {
                    let (x, y) = (text_of(&x), text_of(&y));
                    self.text(x.len() + y.len())?;
                    let mut s = x;
                    s.push_str(&y);
                    Value::Text(s)
                }
            },
            BExpr::And(a, b) => {
                let x = truth(&self.eval(a, env)?);
                if x == Some(false) {
                    return Ok(Value::Integer(0));
                }
                let y = truth(&self.eval(b, env)?);
                bool_value(match (x, y) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                })
            }
            BExpr::Or(a, b) => {
                let x = truth(&self.eval(a, env)?);
                if x == Some(true) {
                    return Ok(Value::Integer(1));
                }
                let y = truth(&self.eval(b, env)?);
                bool_value(match (x, y) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                })
            }
            BExpr::IsNull(a, negated) => {
                Value::Integer((matches!(self.eval(a, env)?, Value::Null) != *negated) as i64)
            }
            BExpr::Is(a, b, negated) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                let same = match (&x, &y) {
                    (Value::Null, Value::Null) => true,
                    (Value::Null, _) | (_, Value::Null) => false,
                    _ => compare(&x, &y) == Ordering::Equal,
                };
                Value::Integer((same != *negated) as i64)
            }
            BExpr::InList(a, list, negated) => {
                let x = self.eval(a, env)?;
                if list.is_empty() {
                    return Ok(Value::Integer(*negated as i64));
                }
                if matches!(x, Value::Null) {
                    return Ok(Value::Null);
                }
                let mut saw_null = false;
                for item in list {
                    let v = self.eval(item, env)?;
                    if matches!(v, Value::Null) {
                        saw_null = true;
                    } else if compare(&x, &v) == Ordering::Equal {
                        return Ok(Value::Integer(!*negated as i64));
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Integer(*negated as i64)
                }
            }
            BExpr::InSub(a, sub, negated) => {
                let x = self.eval(a, env)?;
                let result = self.subquery(sub, env)?;
                if result.rows.is_empty() {
                    return Ok(Value::Integer(*negated as i64));
                }
                if matches!(x, Value::Null) {
                    return Ok(Value::Null);
                }
                let mut set = result.set.borrow_mut();
                if set.is_none() {
                    let mut s = BTreeSet::new();
                    let mut has_null = false;
                    for r in &result.rows {
                        match r.first() {
                            Some(Value::Null) | None => has_null = true,
                            Some(v) => {
                                self.meter.charge(value_bytes(v) + 24)?;
                                s.insert(OrdKey(vec![v.clone()]));
                            }
                        }
                    }
                    *set = Some((s, has_null));
                }
                let Some((values, has_null)) = set.as_ref() else { return Ok(Value::Null) };
                if values.contains(&OrdKey(vec![x])) {
                    Value::Integer(!*negated as i64)
                } else if *has_null {
                    Value::Null
                } else {
                    Value::Integer(*negated as i64)
                }
            }
            BExpr::Exists(sub, negated) => {
                let r = self.subquery(sub, env)?;
                Value::Integer((r.rows.is_empty() == *negated) as i64)
            }
            BExpr::Scalar(sub) => {
                let r = self.subquery(sub, env)?;
                r.rows.first().and_then(|row| row.first().cloned()).unwrap_or(Value::Null)
            }
            BExpr::Between(x, lo, hi, negated) => {
                let (v, l, h) = (self.eval(x, env)?, self.eval(lo, env)?, self.eval(hi, env)?);
                let ge = truth(&compare_op(Cmp::Ge, &v, &l));
                let le = truth(&compare_op(Cmp::Le, &v, &h));
                let r = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                bool_value(if *negated { r.map(|b| !b) } else { r })
            }
            BExpr::Like { expr, pattern, escape, negated, glob } => {
                let (t, p) = (self.eval(expr, env)?, self.eval(pattern, env)?);
                let esc = match escape {
                    Some(e) => match self.eval(e, env)? {
                        Value::Null => return Ok(Value::Null),
                        v => {
                            let s = text_of(&v);
                            let mut chars = s.chars();
                            match (chars.next(), chars.next()) {
                                (Some(c), None) => Some(c),
                                _ => {
                                    return Err(Error::Invalid(
                                        "ESCAPE expression must be a single character".into(),
                                    ))
                                }
                            }
                        }
                    },
                    None => None,
                };
                if matches!(t, Value::Null) || matches!(p, Value::Null) {
                    Value::Null
                } else {
                    let mut tick = |n: usize| self.meter.ticks(n);
                    let hit = like(&text_of(&t), &text_of(&p), esc, *glob, &mut tick)?;
                    Value::Integer((hit != *negated) as i64)
                }
            }
            BExpr::Case { operand, whens, otherwise } => {
                let base = operand.as_ref().map(|o| self.eval(o, env)).transpose()?;
                for (w, then) in whens {
                    let c = self.eval(w, env)?;
                    let hit = match &base {
                        Some(b) => truth(&compare_op(Cmp::Eq, b, &c)) == Some(true),
                        None => truth(&c) == Some(true),
                    };
                    if hit {
                        return self.eval(then, env);
                    }
                }
                match otherwise {
                    Some(o) => self.eval(o, env)?,
                    None => Value::Null,
                }
            }
            BExpr::Cast(a, to) => cast(&self.eval(a, env)?, *to),
            BExpr::Func(f, args) => self.function(f, args, env)?,
        })
    }

    /// A scalar function's value: its evaluator from [`func::SCALARS`] over its arguments (all
    /// evaluated first, or only those it asks for).
    fn function(&self, f: &ScalarFn, args: &[BExpr], env: &Env) -> Result<Value, Error> {
        let call = Call { runner: self, args, env };
        match f.body {
            func::Body::Values(eval) => {
                let v: Vec<Value> = args.iter().map(|a| self.eval(a, env)).collect::<Result<_, _>>()?;
                eval(&call, &v)
            }
            func::Body::Lazy(eval) => eval(&call, args.len()),
        }
    }

    fn subquery(&self, sub: &Sub, env: &Env) -> Result<Rc<SubResult>, Error> {
        if !sub.correlated {
            if let Some(r) = sub.cache.borrow().as_ref() {
                return Ok(r.clone());
            }
        }
        // What the subquery held while it ran is freed when it returns; only a cached result
        // stays for the rest of the statement.
        let before = self.meter.memory();
        let (rows, _) = self.query(&sub.query, env)?;
        self.meter.set_memory(before);
        if !sub.correlated {
            self.meter.charge(rows.iter().map(|r| row_bytes(r)).sum())?;
        }
        let r = Rc::new(SubResult { rows, set: Default::default() });
        if !sub.correlated {
            *sub.cache.borrow_mut() = Some(r.clone());
        }
        Ok(r)
    }
}

fn shift(x: i64, by: i64) -> i64 {
    if by >= 64 {
        0
    } else if by >= 0 {
        x << by
    } else if by <= -64 {
        if x < 0 {
            -1
        } else {
            0
        }
    } else {
        x >> (-by)
    }
}

/// A comparison with SQL's NULL rule, as 1/0/NULL.
pub fn compare_op(op: Cmp, x: &Value, y: &Value) -> Value {
    if matches!(x, Value::Null) || matches!(y, Value::Null) {
        return Value::Null;
    }
    let o = compare(x, y);
    Value::Integer(match op {
        Cmp::Eq => o == Ordering::Equal,
        Cmp::Ne => o != Ordering::Equal,
        Cmp::Lt => o == Ordering::Less,
        Cmp::Le => o != Ordering::Greater,
        Cmp::Gt => o == Ordering::Greater,
        Cmp::Ge => o != Ordering::Less,
    } as i64)
}
