//! Scalar SQL functions: one table, [`SCALARS`], holds each function's names, arity and
//! evaluator, so adding a function is one entry here. The planner looks a call up by name
//! ([`lookup`]) and refuses a wrong argument count; the runner calls the entry's evaluator with
//! exactly that many arguments, so an evaluator may index its arguments up to `min`.
//!
//! Aggregates (count, sum, …) are not here: they keep state across rows (`run.rs`, `Group`).

use super::eval::{
    compare, int_or_trunc, numeric, real_of, round_real, text_of, timestamp, type_name, ROUND_TEXT_BYTES,
};
use super::limits::value_bytes;
use super::Error;
use crate::changeset::Value;
use std::cmp::Ordering;
use std::fmt;

/// What an evaluator may ask of the statement running it.
pub trait Host {
    /// Reserves room for a text of `bytes` before building it (the statement's memory bound).
    fn charge_text(&self, bytes: usize) -> Result<(), Error>;
    /// The statement's next pseudo-random number (seeded by the leader, so replicas agree).
    fn random(&self) -> i64;
    /// The statement's clock, in milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;
    /// Evaluates argument `i` of the call (for functions that skip some of their arguments).
    fn arg(&self, i: usize) -> Result<Value, Error>;
}

/// How a function computes its value.
#[derive(Clone, Copy)]
pub enum Body {
    /// From all its arguments, evaluated first, left to right.
    Values(fn(&dyn Host, &[Value]) -> Result<Value, Error>),
    /// Evaluating only the arguments it needs, through [`Host::arg`] (`coalesce` stops at the
    /// first value that is not NULL).
    Lazy(fn(&dyn Host, usize) -> Result<Value, Error>),
}

/// One scalar function.
pub struct ScalarFn {
    /// Its SQL names, lowercase; the first is its own.
    pub names: &'static [&'static str],
    /// Fewest arguments.
    pub min: usize,
    /// Most arguments (`None`: any number).
    pub max: Option<usize>,
    /// Whether equal arguments always give equal results (not `random()`, not `now()`): only
    /// such calls may be evaluated once and reused, e.g. as an access path's key.
    pub deterministic: bool,
    pub body: Body,
}

impl ScalarFn {
    pub fn name(&self) -> &'static str {
        self.names[0]
    }

    pub fn takes(&self, n: usize) -> bool {
        n >= self.min && self.max.is_none_or(|max| n <= max)
    }
}

impl fmt::Debug for ScalarFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The function called `name` (any case), if there is one.
pub fn lookup(name: &str) -> Option<&'static ScalarFn> {
    let name = name.to_ascii_lowercase();
    SCALARS.iter().find(|f| f.names.contains(&name.as_str()))
}

const fn pure(names: &'static [&'static str], min: usize, max: Option<usize>, body: Body) -> ScalarFn {
    ScalarFn { names, min, max, deterministic: true, body }
}

fn is_null(v: &[Value], i: usize) -> bool {
    matches!(v.get(i), Some(Value::Null))
}

/// Every scalar function, in alphabetical order of its own name.
pub static SCALARS: &[ScalarFn] = &[
    pure(
        &["abs"],
        1,
        Some(1),
        Body::Values(|_, v| match numeric(&v[0]) {
            Value::Integer(i) => {
                Ok(Value::Integer(i.checked_abs().ok_or_else(|| Error::Invalid("integer overflow".into()))?))
            }
            Value::Real(r) => Ok(Value::Real(r.abs())),
            other => Ok(other),
        }),
    ),
    pure(&["coalesce"], 2, None, Body::Lazy(first_not_null)),
    pure(
        &["hex"],
        1,
        Some(1),
        Body::Values(|host, v| {
            host.charge_text(2 * value_bytes(&v[0]))?;
            Ok(Value::Text(match &v[0] {
                Value::Blob(b) => b.iter().map(|x| format!("{x:02X}")).collect(),
                Value::Null => String::new(),
                other => text_of(other).bytes().map(|x| format!("{x:02X}")).collect(),
            }))
        }),
    ),
    pure(&["ifnull"], 2, Some(2), Body::Lazy(first_not_null)),
    pure(
        &["instr"],
        2,
        Some(2),
        Body::Values(|_, v| {
            if is_null(v, 0) || is_null(v, 1) {
                return Ok(Value::Null);
            }
            let (h, n) = (text_of(&v[0]), text_of(&v[1]));
            Ok(Value::Integer(h.find(&n).map_or(0, |i| h[..i].chars().count() as i64 + 1)))
        }),
    ),
    pure(
        &["length", "char_length"],
        1,
        Some(1),
        Body::Values(|_, v| {
            Ok(match &v[0] {
                Value::Null => Value::Null,
                Value::Blob(b) => Value::Integer(b.len() as i64),
                other => Value::Integer(text_of(other).chars().count() as i64),
            })
        }),
    ),
    // ASCII letters only, as SQLite without ICU (and as LIKE's case folding here): upper('é')
    // is 'é'.
    pure(&["lower"], 1, Some(1), Body::Values(|host, v| change_case(host, v, str::to_ascii_lowercase))),
    pure(&["ltrim"], 1, Some(2), Body::Values(|_, v| trim(v, |s, p| s.trim_start_matches(p)))),
    // With one argument min() and max() are aggregates (`run.rs`).
    pure(&["max"], 2, None, Body::Values(|_, v| Ok(extreme(v, Ordering::Greater)))),
    pure(&["min"], 2, None, Body::Values(|_, v| Ok(extreme(v, Ordering::Less)))),
    ScalarFn {
        names: &["now", "current_timestamp"],
        min: 0,
        max: Some(0),
        deterministic: false,
        body: Body::Values(|host, _| Ok(Value::Text(timestamp(host.now_millis())))),
    },
    pure(
        &["nullif"],
        2,
        Some(2),
        Body::Values(|_, v| {
            Ok(if !is_null(v, 0) && !is_null(v, 1) && compare(&v[0], &v[1]) == Ordering::Equal {
                Value::Null
            } else {
                v[0].clone()
            })
        }),
    ),
    ScalarFn {
        names: &["random"],
        min: 0,
        max: Some(0),
        deterministic: false,
        body: Body::Values(|host, _| Ok(Value::Integer(host.random()))),
    },
    pure(
        &["replace"],
        3,
        Some(3),
        Body::Values(|host, v| {
            // In SQLite's order: an empty pattern gives the first argument back as it is, even
            // when the replacement is NULL.
            if is_null(v, 0) || is_null(v, 1) {
                return Ok(Value::Null);
            }
            let from = text_of(&v[1]);
            if from.is_empty() {
                return Ok(v[0].clone());
            }
            if is_null(v, 2) {
                return Ok(Value::Null);
            }
            let (s, to) = (text_of(&v[0]), text_of(&v[2]));
            // At most every occurrence replaced: reserve for that before building it.
            host.charge_text(s.len() + (s.len() / from.len()) * to.len().saturating_sub(from.len()))?;
            Ok(Value::Text(s.replace(&from, &to)))
        }),
    ),
    pure(
        &["round"],
        1,
        Some(2),
        Body::Values(|host, v| {
            if is_null(v, 0) || is_null(v, 1) {
                return Ok(Value::Null);
            }
            let x = real_of(&numeric(&v[0]));
            let digits = v.get(1).map_or(0, |d| int_or_trunc(&numeric(d))).clamp(0, 30);
            // The exact decimal expansion it reads is at most ~1,100 characters.
            host.charge_text(ROUND_TEXT_BYTES)?;
            Ok(Value::Real(round_real(x, digits as usize)))
        }),
    ),
    pure(&["rtrim"], 1, Some(2), Body::Values(|_, v| trim(v, |s, p| s.trim_end_matches(p)))),
    pure(
        &["sign"],
        1,
        Some(1),
        Body::Values(|_, v| {
            Ok(match numeric(&v[0]) {
                Value::Null => Value::Null,
                x => Value::Integer(match real_of(&x) {
                    r if r > 0.0 => 1,
                    r if r < 0.0 => -1,
                    _ => 0,
                }),
            })
        }),
    ),
    pure(&["substr", "substring"], 2, Some(3), Body::Values(|_, v| Ok(substr(v)))),
    pure(&["trim"], 1, Some(2), Body::Values(|_, v| trim(v, |s, p| s.trim_matches(p)))),
    pure(
        &["typeof"],
        1,
        Some(1),
        Body::Values(|_, v| Ok(Value::Text(type_name(&v[0]).to_ascii_lowercase()))),
    ),
    pure(&["upper"], 1, Some(1), Body::Values(|host, v| change_case(host, v, str::to_ascii_uppercase))),
];

fn first_not_null(host: &dyn Host, n: usize) -> Result<Value, Error> {
    for i in 0..n {
        let v = host.arg(i)?;
        if !matches!(v, Value::Null) {
            return Ok(v);
        }
    }
    Ok(Value::Null)
}

fn change_case(host: &dyn Host, v: &[Value], change: fn(&str) -> String) -> Result<Value, Error> {
    if is_null(v, 0) {
        return Ok(Value::Null);
    }
    let s = text_of(&v[0]);
    host.charge_text(s.len())?;
    Ok(Value::Text(change(&s)))
}

/// trim/ltrim/rtrim: `strip` removes the characters of the set (default a space) from one or
/// both ends.
fn trim(v: &[Value], strip: for<'s> fn(&'s str, &dyn Fn(char) -> bool) -> &'s str) -> Result<Value, Error> {
    if is_null(v, 0) || is_null(v, 1) {
        return Ok(Value::Null);
    }
    let s = text_of(&v[0]);
    let set: Vec<char> = v.get(1).map_or(vec![' '], |c| text_of(c).chars().collect());
    Ok(Value::Text(strip(&s, &|c| set.contains(&c)).to_string()))
}

/// Scalar min() and max(): NULL if any argument is; among equal values (2 and 2.0) SQLite's
/// min() takes the last and max() the first.
fn extreme(v: &[Value], want: Ordering) -> Value {
    if v.iter().any(|x| matches!(x, Value::Null)) {
        return Value::Null;
    }
    let mut best = &v[0];
    for x in &v[1..] {
        let o = compare(x, best);
        if o == want || (want == Ordering::Less && o == Ordering::Equal) {
            best = x;
        }
    }
    best.clone()
}

fn substr(v: &[Value]) -> Value {
    if v.iter().any(|x| matches!(x, Value::Null)) {
        return Value::Null;
    }
    let chars: Vec<char> = text_of(&v[0]).chars().collect();
    // In i128: start and length are any i64, and `start + len` or `len + start` must not
    // overflow (it panicked in debug builds and wrapped in release).
    let n = chars.len() as i128;
    let mut start = i128::from(int_or_trunc(&numeric(&v[1])));
    let mut len = v.get(2).map(|x| i128::from(int_or_trunc(&numeric(x))));
    if start < 0 {
        start += n + 1;
        if start < 1 {
            len = len.map(|l| l + start - 1);
            start = 1;
        }
    } else if start == 0 {
        start = 1;
        len = len.map(|l| l - 1);
    }
    let (from, to) = match len {
        Some(l) if l < 0 => ((start - 1 + l).max(0), start - 1),
        Some(l) => (start - 1, start - 1 + l),
        None => (start - 1, n),
    };
    let (from, to) = (from.clamp(0, n) as usize, to.clamp(0, n) as usize);
    Value::Text(if from < to { chars[from..to].iter().collect() } else { String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A host with fixed arguments that counts how many were evaluated.
    struct Fixed {
        args: Vec<Value>,
        evaluated: Cell<usize>,
    }

    impl Host for Fixed {
        fn charge_text(&self, _: usize) -> Result<(), Error> {
            Ok(())
        }
        fn random(&self) -> i64 {
            4
        }
        fn now_millis(&self) -> i64 {
            0
        }
        fn arg(&self, i: usize) -> Result<Value, Error> {
            self.evaluated.set(self.evaluated.get() + 1);
            Ok(self.args[i].clone())
        }
    }

    fn call(name: &str, args: Vec<Value>) -> (Value, usize) {
        let f = lookup(name).expect("a function");
        assert!(f.takes(args.len()), "{name}/{}", args.len());
        let host = Fixed { args, evaluated: Cell::new(0) };
        let v = match f.body {
            Body::Values(eval) => eval(&host, &host.args),
            Body::Lazy(eval) => eval(&host, host.args.len()),
        };
        (v.expect("evaluates"), host.evaluated.get())
    }

    #[test]
    fn the_table_is_sorted_and_names_are_unique() {
        let own: Vec<&str> = SCALARS.iter().map(|f| f.name()).collect();
        let mut sorted = own.clone();
        sorted.sort();
        assert_eq!(own, sorted);
        let mut all: Vec<&str> = SCALARS.iter().flat_map(|f| f.names.iter().copied()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a name used twice");
        for f in SCALARS {
            assert!(f.names.iter().all(|n| *n == n.to_ascii_lowercase()), "{f:?}");
            assert!(f.max.is_none_or(|max| max >= f.min), "{f:?}");
        }
    }

    #[test]
    fn lookup_ignores_case_and_knows_aliases() {
        assert_eq!(lookup("SUBSTRING").map(ScalarFn::name), Some("substr"));
        assert_eq!(lookup("Current_Timestamp").map(ScalarFn::name), Some("now"));
        assert!(lookup("count").is_none(), "aggregates are not scalar functions");
        assert!(lookup("").is_none());
        assert!(!lookup("replace").expect("replace").takes(2));
        assert!(lookup("coalesce").expect("coalesce").takes(9));
        assert!(!lookup("random").expect("random").deterministic);
    }

    #[test]
    fn coalesce_evaluates_only_what_it_needs() {
        let (v, evaluated) = call("coalesce", vec![Value::Null, Value::Integer(2), Value::Integer(3)]);
        assert_eq!((v, evaluated), (Value::Integer(2), 2));
        assert_eq!(call("ifnull", vec![Value::Null, Value::Null]).0, Value::Null);
    }

    /// Each checked against SQLite 3.51.
    #[test]
    fn evaluators_at_their_edges() {
        let t = |s: &str| Value::Text(s.into());
        assert_eq!(call("substr", vec![t("hello"), Value::Integer(-3), Value::Integer(2)]).0, t("ll"));
        assert_eq!(
            call("substr", vec![t("hello"), Value::Integer(i64::MIN), Value::Integer(i64::MAX)]).0,
            t("hell")
        );
        assert_eq!(call("trim", vec![t("xxaxx"), t("x")]).0, t("a"));
        assert_eq!(call("ltrim", vec![t("  a ")]).0, t("a "));
        assert_eq!(call("rtrim", vec![t("  a "), Value::Null]).0, Value::Null);
        assert_eq!(call("min", vec![Value::Real(2.0), Value::Integer(2)]).0, Value::Integer(2));
        assert_eq!(call("max", vec![Value::Integer(2), Value::Real(2.0)]).0, Value::Integer(2));
        assert_eq!(call("replace", vec![t("abc"), t(""), Value::Null]).0, t("abc"));
        assert_eq!(call("upper", vec![t("é-a")]).0, t("é-A"));
        assert_eq!(call("instr", vec![t("héllo"), t("l")]).0, Value::Integer(3));
        assert_eq!(call("hex", vec![Value::Blob(vec![0, 255])]).0, t("00FF"));
        assert_eq!(call("sign", vec![t("-0.5")]).0, Value::Integer(-1));
        assert_eq!(call("random", vec![]).0, Value::Integer(4));
        assert!(matches!(
            lookup("abs").map(|f| f.body),
            Some(Body::Values(abs)) if abs(&Fixed { args: vec![], evaluated: Cell::new(0) }, &[Value::Integer(i64::MIN)]).is_err()
        ));
    }
}
