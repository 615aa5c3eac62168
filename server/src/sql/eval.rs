//! Values and expressions: SQLite's ordering of values, coercion into column types, and the
//! evaluation of an expression against one row.

use super::{Context, Error};
use crate::changeset::{DataType, Row, TableSchema, Value};
use sqlparser::ast::{self, BinaryOperator, Expr, UnaryOperator};
use std::cmp::Ordering;

/// SQLite's order of values: NULL < numbers (integers, reals and booleans compared numerically)
/// < text < blob.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    fn class(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) | Value::Boolean(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        (x, y) if class(x) == 1 && class(y) == 1 => match (int_of(x), int_of(y)) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ => real_of(x).total_cmp(&real_of(y)),
        },
        (x, y) => class(x).cmp(&class(y)),
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Boolean(b) => Some(*b as i64),
        _ => None,
    }
}

fn real_of(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Real(r) => *r,
        Value::Boolean(b) => *b as i64 as f64,
        _ => f64::NAN,
    }
}

pub fn compare_tuples(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = compare(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Integer(_) => "INTEGER",
        Value::Real(_) => "REAL",
        Value::Text(_) => "TEXT",
        Value::Blob(_) => "BLOB",
        Value::Boolean(_) => "BOOLEAN",
    }
}

/// Converts a value for storage in a column of type `ty`, as SQLite's type affinity would, but
/// strictly: a value that does not represent a value of the type is a `Type` error.
pub fn coerce(v: Value, ty: DataType, table: &str, column: &str) -> Result<Value, Error> {
    let bad = |v: &Value| {
        Error::Type(format!(
            "cannot store {} value {} in {:?} column {table}.{column}",
            type_name(v),
            display(v),
            ty
        ))
    };
    Ok(match (ty, v) {
        (_, Value::Null) => Value::Null,
        (DataType::Integer, Value::Integer(i)) => Value::Integer(i),
        (DataType::Integer, Value::Boolean(b)) => Value::Integer(b as i64),
        (DataType::Integer, Value::Real(r)) if r.fract() == 0.0 && r.abs() < 9.2e18 => {
            Value::Integer(r as i64)
        }
        (DataType::Integer, Value::Text(s)) => match s.trim().parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => return Err(bad(&Value::Text(s))),
        },
        (DataType::Real, Value::Real(r)) => Value::Real(r),
        (DataType::Real, Value::Integer(i)) => Value::Real(i as f64),
        (DataType::Real, Value::Text(s)) => match s.trim().parse::<f64>() {
            Ok(r) => Value::Real(r),
            Err(_) => return Err(bad(&Value::Text(s))),
        },
        (DataType::Text, Value::Text(s)) => Value::Text(s),
        (DataType::Text, Value::Integer(i)) => Value::Text(i.to_string()),
        (DataType::Text, Value::Real(r)) => Value::Text(r.to_string()),
        (DataType::Blob, Value::Blob(b)) => Value::Blob(b),
        (DataType::Blob, Value::Text(s)) => Value::Blob(s.into_bytes()),
        (DataType::Boolean, Value::Boolean(b)) => Value::Boolean(b),
        (DataType::Boolean, Value::Integer(i)) if i == 0 || i == 1 => Value::Boolean(i == 1),
        (_, v) => return Err(bad(&v)),
    })
}

pub fn display(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(s) => format!("'{s}'"),
        Value::Blob(b) => format!("x'{}'", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Boolean(b) => b.to_string(),
    }
}

/// What an expression may refer to: the columns of one table's row (none for VALUES).
pub struct Scope<'a> {
    pub table: Option<&'a TableSchema>,
    /// The alias or name the query used for the table.
    pub name: Option<&'a str>,
    pub row: Option<&'a Row>,
    pub params: &'a [Value],
    pub ctx: Option<Context>,
}

impl Scope<'_> {
    fn column(&self, qualifier: Option<&str>, name: &str) -> Result<Value, Error> {
        let table = self.table.ok_or_else(|| Error::Invalid(format!("no such column: {name}")))?;
        if let Some(q) = qualifier {
            let matches =
                q.eq_ignore_ascii_case(&table.name) || self.name.is_some_and(|n| n.eq_ignore_ascii_case(q));
            if !matches {
                return Err(Error::NoSuchTable(q.to_string()));
            }
        }
        let i = table
            .column_index(name)
            .ok_or_else(|| Error::NoSuchColumn { table: table.name.clone(), column: name.to_string() })?;
        Ok(self.row.map_or(Value::Null, |r| r[i].clone()))
    }
}

pub fn literal(v: &ast::Value, params: &[Value], next_param: &mut usize) -> Result<Value, Error> {
    Ok(match v {
        ast::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Real(n.parse().map_err(|_| Error::Type(format!("bad number {n}")))?),
        },
        ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => Value::Text(s.clone()),
        ast::Value::HexStringLiteral(h) => {
            let bytes: Result<Vec<u8>, _> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2).unwrap_or("x"), 16))
                .collect();
            Value::Blob(bytes.map_err(|_| Error::Type(format!("bad blob literal x'{h}'")))?)
        }
        ast::Value::Boolean(b) => Value::Boolean(*b),
        ast::Value::Null => Value::Null,
        ast::Value::Placeholder(p) => {
            let index = if p == "?" {
                *next_param += 1;
                *next_param
            } else {
                p.trim_start_matches(['$', '?', ':'])
                    .parse::<usize>()
                    .map_err(|_| Error::Unsupported(format!("parameter {p}: use $1, ?1 or ?")))?
            };
            params.get(index.wrapping_sub(1)).cloned().ok_or_else(|| {
                Error::Invalid(format!("parameter {p} has no value: {} given", params.len()))
            })?
        }
        other => return Err(Error::Unsupported(format!("literal {other}"))),
    })
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Null => None,
        Value::Boolean(b) => Some(*b),
        Value::Integer(i) => Some(*i != 0),
        Value::Real(r) => Some(*r != 0.0),
        Value::Text(s) => Some(s.trim().parse::<f64>().is_ok_and(|f| f != 0.0)),
        Value::Blob(_) => Some(false),
    }
}

pub fn is_true(v: &Value) -> bool {
    truth(v) == Some(true)
}

fn bool_value(b: Option<bool>) -> Value {
    b.map_or(Value::Null, |b| Value::Integer(b as i64))
}

fn arith(op: &BinaryOperator, a: Value, b: Value) -> Result<Value, Error> {
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        return Ok(Value::Null);
    }
    let num = |v: &Value| match v {
        Value::Text(s) => s
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .or_else(|_| s.trim().parse::<f64>().map(Value::Real))
            .unwrap_or(Value::Integer(0)),
        Value::Boolean(b) => Value::Integer(*b as i64),
        Value::Blob(_) => Value::Integer(0),
        other => other.clone(),
    };
    let (a, b) = (num(&a), num(&b));
    if let (Value::Integer(x), Value::Integer(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let r = match op {
            BinaryOperator::Plus => x.checked_add(y),
            BinaryOperator::Minus => x.checked_sub(y),
            BinaryOperator::Multiply => x.checked_mul(y),
            BinaryOperator::Divide => {
                if y == 0 {
                    return Ok(Value::Null);
                }
                x.checked_div(y)
            }
            BinaryOperator::Modulo => {
                if y == 0 {
                    return Ok(Value::Null);
                }
                x.checked_rem(y)
            }
            _ => unreachable!("arith is called for arithmetic operators only"),
        };
        if let Some(r) = r {
            return Ok(Value::Integer(r));
        }
    }
    let (x, y) = (real_of(&a), real_of(&b));
    Ok(match op {
        BinaryOperator::Plus => Value::Real(x + y),
        BinaryOperator::Minus => Value::Real(x - y),
        BinaryOperator::Multiply => Value::Real(x * y),
        BinaryOperator::Divide if y == 0.0 => Value::Null,
        BinaryOperator::Divide => Value::Real(x / y),
        BinaryOperator::Modulo if y == 0.0 => Value::Null,
        BinaryOperator::Modulo => Value::Real(x % y),
        _ => unreachable!("arith is called for arithmetic operators only"),
    })
}

/// Evaluates an expression in a scope.
pub fn eval(expr: &Expr, scope: &Scope, next_param: &mut usize) -> Result<Value, Error> {
    Ok(match expr {
        Expr::Value(v) => literal(&v.value, scope.params, next_param)?,
        Expr::Identifier(id) => scope.column(None, &id.value)?,
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
            scope.column(Some(&ids[0].value), &ids[1].value)?
        }
        Expr::Nested(e) => eval(e, scope, next_param)?,
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match eval(expr, scope, next_param)? {
            Value::Integer(i) => i.checked_neg().map_or(Value::Real(-(i as f64)), Value::Integer),
            Value::Real(r) => Value::Real(-r),
            Value::Null => Value::Null,
            v => arith(&BinaryOperator::Minus, Value::Integer(0), v)?,
        },
        Expr::UnaryOp { op: UnaryOperator::Plus, expr } => eval(expr, scope, next_param)?,
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => {
            bool_value(truth(&eval(expr, scope, next_param)?).map(|b| !b))
        }
        Expr::IsNull(e) => Value::Integer(matches!(eval(e, scope, next_param)?, Value::Null) as i64),
        Expr::IsNotNull(e) => Value::Integer(!matches!(eval(e, scope, next_param)?, Value::Null) as i64),
        Expr::BinaryOp { left, op, right } => {
            let a = eval(left, scope, next_param)?;
            let b = eval(right, scope, next_param)?;
            match op {
                BinaryOperator::And => bool_value(match (truth(&a), truth(&b)) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }),
                BinaryOperator::Or => bool_value(match (truth(&a), truth(&b)) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }),
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    if matches!(a, Value::Null) || matches!(b, Value::Null) {
                        Value::Null
                    } else {
                        let o = compare(&a, &b);
                        let r = match op {
                            BinaryOperator::Eq => o == Ordering::Equal,
                            BinaryOperator::NotEq => o != Ordering::Equal,
                            BinaryOperator::Lt => o == Ordering::Less,
                            BinaryOperator::LtEq => o != Ordering::Greater,
                            BinaryOperator::Gt => o == Ordering::Greater,
                            _ => o != Ordering::Less,
                        };
                        Value::Integer(r as i64)
                    }
                }
                BinaryOperator::Plus
                | BinaryOperator::Minus
                | BinaryOperator::Multiply
                | BinaryOperator::Divide
                | BinaryOperator::Modulo => arith(op, a, b)?,
                BinaryOperator::StringConcat => match (a, b) {
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    (a, b) => Value::Text(format!("{}{}", text_of(&a), text_of(&b))),
                },
                other => return Err(Error::Unsupported(format!("operator {other}"))),
            }
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_uppercase();
            match (name.as_str(), scope.ctx) {
                ("NOW" | "CURRENT_TIMESTAMP", Some(ctx)) => Value::Text(timestamp(ctx.now_millis)),
                ("NOW" | "CURRENT_TIMESTAMP", None) => {
                    return Err(Error::Unsupported(format!(
                        "{name}() in a read: it is evaluated by the leader on write"
                    )))
                }
                _ => return Err(Error::Unsupported(format!("function {name}"))),
            }
        }
        other => return Err(Error::Unsupported(format!("expression {other}"))),
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Null => String::new(),
        other => display(other),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as SQLite's CURRENT_TIMESTAMP.
pub fn timestamp(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_order_as_sqlite() {
        let ordered = [
            Value::Null,
            Value::Integer(-5),
            Value::Real(-0.5),
            Value::Integer(0),
            Value::Real(1.5),
            Value::Integer(2),
            Value::Text(String::new()),
            Value::Text("a".into()),
            Value::Blob(vec![]),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(compare(&Value::Integer(1), &Value::Real(1.0)), Ordering::Equal);
    }

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn coercion_is_strict() {
        assert_eq!(coerce(Value::Text("5".into()), DataType::Integer, "t", "a").unwrap(), Value::Integer(5));
        assert!(matches!(
            coerce(Value::Text("abc".into()), DataType::Integer, "t", "a"),
            Err(Error::Type(_))
        ));
        assert_eq!(coerce(Value::Integer(2), DataType::Real, "t", "a").unwrap(), Value::Real(2.0));
    }
}
