//! Values and expressions: SQLite's ordering of values, coercion into column types, and the
//! evaluation of an expression against one row.

use super::Error;
use crate::changeset::{DataType, Value};
use sqlparser::ast;
use std::cmp::Ordering;

/// SQLite's order of values: NULL < numbers (integers, reals and booleans compared exactly by
/// value) < text < blob; the one order the store's keys follow too
/// ([`crate::changeset::compare_values`]).
pub fn compare(a: &Value, b: &Value) -> Ordering {
    crate::changeset::compare_values(a, b)
}

pub fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Boolean(b) => Some(*b as i64),
        _ => None,
    }
}

pub fn real_of(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Real(r) => *r,
        Value::Boolean(b) => *b as i64 as f64,
        _ => f64::NAN,
    }
}

pub fn compare_tuples(a: &[Value], b: &[Value]) -> Ordering {
    crate::changeset::compare_tuples(a, b)
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

/// Parses a SQL literal (parameters are bound by the planner, not here).
pub fn literal(v: &ast::Value) -> Result<Value, Error> {
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
        other => return Err(Error::Unsupported(format!("literal {other}"))),
    })
}

/// SQLite's truth of a value: NULL is unknown, numbers are true when non-zero, text by its
/// numeric prefix.
pub fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Null => None,
        Value::Boolean(b) => Some(*b),
        Value::Integer(i) => Some(*i != 0),
        Value::Real(r) => Some(*r != 0.0),
        Value::Text(_) | Value::Blob(_) => Some(real_of(&numeric(v)) != 0.0),
    }
}

pub fn is_true(v: &Value) -> bool {
    truth(v) == Some(true)
}

pub fn bool_value(b: Option<bool>) -> Value {
    b.map_or(Value::Null, |b| Value::Integer(b as i64))
}

/// The longest numeric prefix of a text, as SQLite converts text in arithmetic: `'12abc'` is
/// 12, `'1.5e2x'` is 150.0, `'abc'` is 0.
pub fn numeric_prefix(s: &str) -> Value {
    let t = s.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut is_real = false;
    let mut end = i;
    if i < b.len() && b[i] == b'.' {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > i + 1 || i > digits_start {
            is_real = true;
            i = j;
            end = j;
        }
    }
    if end == digits_start {
        return Value::Integer(0);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let exp_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_start {
            is_real = true;
            end = j;
        }
    }
    let text = &t[..end];
    if !is_real {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Integer(i);
        }
    }
    Value::Real(text.parse::<f64>().unwrap_or(0.0))
}

/// A value as a number for arithmetic: NULL stays NULL, text and blobs by numeric prefix.
pub fn numeric(v: &Value) -> Value {
    match v {
        Value::Text(s) => numeric_prefix(s),
        Value::Blob(b) => numeric_prefix(&String::from_utf8_lossy(b)),
        Value::Boolean(b) => Value::Integer(*b as i64),
        other => other.clone(),
    }
}

/// An integer for bitwise operators and function arguments: reals truncate, text and blobs read
/// their numeric prefix (0 without one).
pub fn int_or_trunc(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        Value::Real(r) => *r as i64,
        Value::Boolean(b) => *b as i64,
        _ => int_of(v).unwrap_or(0),
    }
}

/// Text that is wholly a number (used for column affinity on comparisons).
pub fn parse_number_exact(s: &str) -> Option<Value> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::Integer(i));
    }
    if t.is_empty() || t.eq_ignore_ascii_case("inf") || t.to_ascii_lowercase().contains("nan") {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite()).map(Value::Real)
}

/// The binary arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// SQLite arithmetic: integers stay integers (overflow becomes real), division truncates,
/// division or modulo by zero is NULL.
pub fn arith(op: Arith, a: &Value, b: &Value) -> Value {
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        return Value::Null;
    }
    let (a, b) = (numeric(a), numeric(b));
    if let (Value::Integer(x), Value::Integer(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let r = match op {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
            Arith::Mul => x.checked_mul(y),
            Arith::Div if y == 0 => return Value::Null,
            Arith::Div => x.checked_div(y),
            Arith::Mod if y == 0 => return Value::Null,
            Arith::Mod => Some(x.wrapping_rem(y)),
        };
        if let Some(r) = r {
            return Value::Integer(r);
        }
    }
    let (x, y) = (real_of(&a), real_of(&b));
    match op {
        Arith::Add => Value::Real(x + y),
        Arith::Sub => Value::Real(x - y),
        Arith::Mul => Value::Real(x * y),
        Arith::Div if y == 0.0 => Value::Null,
        Arith::Div => Value::Real(x / y),
        Arith::Mod => {
            let (xi, yi) = (x as i64, y as i64);
            if yi == 0 {
                Value::Null
            } else {
                Value::Real(xi.wrapping_rem(yi) as f64)
            }
        }
    }
}

/// A real as SQLite prints it (`%!.15g`): `1.0`, `0.5`, `1.0e+20`.
pub fn real_text(r: f64) -> String {
    if r.is_nan() {
        return "NULL".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if r == 0.0 {
        // SQLite prints -0.0 as 0.0 (its printf tests `r < 0.0` for the sign).
        return "0.0".into();
    }
    if r == r.trunc() && r.abs() < 1e15 {
        return format!("{r:.1}");
    }
    // 15 significant digits: one before the point, 14 after.
    let s = format!("{:.14e}", r);
    // Shortest of 15 significant digits.
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    if (-4..15).contains(&exp) {
        let v: f64 = format!("{mantissa}e{exp}").parse().unwrap_or(r);
        let mut t = format!("{v}");
        if !t.contains('.') && !t.contains('e') {
            t.push_str(".0");
        }
        t
    } else {
        let m = if mantissa.contains('.') { mantissa.to_string() } else { format!("{mantissa}.0") };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// Bytes [`round_real`] builds at most: a real's exact decimal expansion to 1,100 places.
pub const ROUND_TEXT_BYTES: usize = 1_500;

/// `round(x, digits)` as SQLite 3.43 and later compute it: with no digits, `(i64)(|x| + 0.5)`
/// (for |x| below 2^63); else the exact decimal value of the double, cut after `digits`
/// decimals and rounded half away from zero on its digits. So `round(0.35, 1)` is 0.3 (0.35 is
/// 0.34999999999999997… as a double) and `round(0.125, 2)` is 0.13 (an exact tie).
pub fn round_real(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let neg = x < 0.0;
    let a = x.abs();
    let r = if digits == 0 && a < i64::MAX as f64 {
        (a + 0.5).trunc()
    } else {
        // A double has at most 1,074 decimal places: this expansion is exact.
        let exact = format!("{a:.1100}");
        let point = exact.find('.').unwrap_or(exact.len());
        let cut = (point + 1 + digits).min(exact.len());
        let up = exact.as_bytes().get(cut).is_some_and(|&d| d >= b'5');
        let mut kept: Vec<u8> = exact.as_bytes()[..cut].iter().copied().filter(|&c| c != b'.').collect();
        if up {
            // Add one in the last kept place, carrying leftwards.
            let mut i = kept.len();
            loop {
                if i == 0 {
                    kept.insert(0, b'1');
                    break;
                }
                i -= 1;
                if kept[i] == b'9' {
                    kept[i] = b'0';
                } else {
                    kept[i] += 1;
                    break;
                }
            }
        }
        let int_len = kept.len() - digits;
        let text = format!(
            "{}.{}",
            std::str::from_utf8(&kept[..int_len]).unwrap_or("0"),
            std::str::from_utf8(&kept[int_len..]).unwrap_or("0")
        );
        text.parse().unwrap_or(a)
    };
    if neg {
        -r
    } else {
        r
    }
}

/// CAST targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastTo {
    Integer,
    Real,
    Text,
    Blob,
    Numeric,
    Boolean,
}

/// SQLite's CAST: never an error; text converts by numeric prefix.
pub fn cast(v: &Value, to: CastTo) -> Value {
    if matches!(v, Value::Null) {
        return Value::Null;
    }
    match to {
        CastTo::Integer => match v {
            Value::Text(s) => Value::Integer(integer_prefix(s.as_bytes())),
            Value::Blob(b) => Value::Integer(integer_prefix(b)),
            other => match numeric(other) {
                Value::Real(r) => Value::Integer(if r.is_nan() {
                    0
                } else if r >= 9.223_372_036_854_776e18 {
                    i64::MAX
                } else if r <= -9.223_372_036_854_776e18 {
                    i64::MIN
                } else {
                    r as i64
                }),
                other => other,
            },
        },
        CastTo::Real => Value::Real(real_of(&numeric(v))),
        CastTo::Text => Value::Text(text_of(v)),
        CastTo::Blob => match v {
            Value::Blob(b) => Value::Blob(b.clone()),
            other => Value::Blob(text_of(other).into_bytes()),
        },
        CastTo::Numeric => match v {
            Value::Text(s) => match numeric_prefix(s) {
                Value::Real(r) if r == r.trunc() && r.abs() < 9.2e18 => Value::Integer(r as i64),
                other => other,
            },
            other => numeric(other),
        },
        CastTo::Boolean => bool_value(truth(v)),
    }
}

/// `CAST(text AS INTEGER)` as SQLite does it: the longest integer prefix after ASCII
/// whitespace (so `'2.5e3'` is 2 and `'1e5'` is 1, not 2500 and 100000), 0 when there is
/// none, clamped to the i64 range when the digits overflow it.
pub fn integer_prefix(b: &[u8]) -> i64 {
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let negative = b.get(i) == Some(&b'-');
    if matches!(b.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    // Accumulated toward the sign, so i64::MIN is reachable and overflow clamps.
    let mut n: i64 = 0;
    for &d in b[i..].iter().take_while(|d| d.is_ascii_digit()) {
        let d = i64::from(d - b'0');
        let next = n.checked_mul(10).and_then(|n| if negative { n.checked_sub(d) } else { n.checked_add(d) });
        match next {
            Some(x) => n = x,
            None => return if negative { i64::MIN } else { i64::MAX },
        }
    }
    n
}

/// One element of a compiled LIKE or GLOB pattern.
#[derive(Debug, PartialEq)]
enum Elem {
    /// `%` or `*`: any run of characters.
    Star,
    /// `_` or `?`: any one character.
    One,
    /// One character (case-insensitive for ASCII under LIKE).
    Lit(char),
    /// GLOB's `[...]`: one character in (or, negated, not in) the ranges.
    Class { ranges: Vec<(char, char)>, negated: bool },
    /// What matches nothing: an ESCAPE at the end, an unterminated `[`.
    Never,
}

fn compile(pattern: &str, escape: Option<char>, glob: bool) -> Vec<Elem> {
    let (many, one) = if glob { ('*', '?') } else { ('%', '_') };
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let e = if !glob && Some(c) == escape {
            chars.next().map_or(Elem::Never, Elem::Lit)
        } else if c == many {
            if out.last() == Some(&Elem::Star) {
                continue;
            }
            Elem::Star
        } else if c == one {
            Elem::One
        } else if glob && c == '[' {
            let mut ranges = Vec::new();
            let negated = chars.next_if_eq(&'^').is_some();
            let mut first = true;
            let mut closed = false;
            while let Some(x) = chars.next() {
                if x == ']' && !first {
                    closed = true;
                    break;
                }
                first = false;
                if chars.peek() == Some(&'-') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    match ahead.peek() {
                        Some(&hi) if hi != ']' => {
                            chars.next();
                            chars.next();
                            ranges.push((x, hi));
                            continue;
                        }
                        _ => {}
                    }
                }
                ranges.push((x, x));
            }
            if closed {
                Elem::Class { ranges, negated }
            } else {
                Elem::Never
            }
        } else {
            Elem::Lit(c)
        };
        out.push(e);
    }
    out
}

impl Elem {
    /// Whether this one-character element matches `c`.
    fn matches(&self, c: char, glob: bool) -> bool {
        match self {
            Elem::One => true,
            Elem::Lit(l) => *l == c || (!glob && l.eq_ignore_ascii_case(&c)),
            Elem::Class { ranges, negated } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
            Elem::Star | Elem::Never => false,
        }
    }
}

/// SQL LIKE (ASCII case-insensitive, `%`, `_`, ESCAPE) or GLOB (case-sensitive, `*`, `?`,
/// `[...]` classes with ranges and `^`), as SQLite matches them.
///
/// Greedy matching that backtracks only to the last `%`/`*`: every other element matches
/// exactly one character, so if the part after the last star cannot match here, giving an
/// earlier star more characters cannot help either. O(text × pattern) time in the worst case,
/// O(pattern) extra space, never exponential; `tick` is called as the work goes so a deadline
/// can stop a long match.
pub fn like(
    text: &str,
    pattern: &str,
    escape: Option<char>,
    glob: bool,
    tick: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<bool, Error> {
    if pattern.len() > super::limits::MAX_LIKE_PATTERN_BYTES {
        return Err(Error::Limit(format!(
            "the {} pattern is {} bytes long, over the limit of {} (like SQLite's \
             SQLITE_MAX_LIKE_PATTERN_LENGTH)",
            if glob { "GLOB" } else { "LIKE" },
            pattern.len(),
            super::limits::MAX_LIKE_PATTERN_BYTES
        )));
    }
    let p = compile(pattern, escape, glob);
    let (mut pi, mut ti) = (0usize, 0usize);
    // After the last star seen: (pattern position after it, text position it matched up to).
    let mut star: Option<(usize, usize)> = None;
    // Positions are byte offsets; characters are decoded where the match stands.
    let t_at = |i: usize| -> Option<char> { text.get(i..).and_then(|s| s.chars().next()) };
    let mut work = 0usize;
    loop {
        work += 1;
        if work == 4096 {
            tick(work)?;
            work = 0;
        }
        let c = t_at(ti);
        match (p.get(pi), c) {
            (Some(Elem::Star), _) => {
                pi += 1;
                if pi == p.len() {
                    return Ok(true); // a trailing star takes the rest
                }
                star = Some((pi, ti));
            }
            (Some(e), Some(ch)) if e.matches(ch, glob) => {
                pi += 1;
                ti += ch.len_utf8();
            }
            (None, None) => return Ok(true),
            _ => match star {
                // Let the last star take one more character and retry what follows it.
                Some((sp, st)) => match t_at(st) {
                    Some(ch) => {
                        let next = st + ch.len_utf8();
                        star = Some((sp, next));
                        pi = sp;
                        ti = next;
                    }
                    None => return Ok(false),
                },
                None => return Ok(false),
            },
        }
    }
}

pub fn text_of(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => real_text(*r),
        Value::Boolean(b) => (*b as i64).to_string(),
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
    use crate::sql::MAX_LIKE_PATTERN_BYTES;

    /// Each checked against SQLite 3.51.
    #[test]
    fn cast_to_integer_takes_the_integer_prefix() {
        for (text, want) in [
            ("1.0e-11", 1),
            ("2.5e3", 2),
            ("-0.5e1", 0),
            (" \t\n\x0b\x0c\r-12x", -12),
            ("+7", 7),
            ("00012", 12),
            ("9223372036854775807", i64::MAX),
            ("9223372036854775808", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("-9223372036854775809", i64::MIN),
            ("99999999999999999999999999.5", i64::MAX),
            ("", 0),
            ("-", 0),
            ("+-3", 0),
            (".5", 0),
            ("0x10", 0),
            ("\u{a0}5", 0),
        ] {
            assert_eq!(cast(&Value::Text(text.into()), CastTo::Integer), Value::Integer(want), "{text:?}");
            assert_eq!(cast(&Value::Blob(text.into()), CastTo::Integer), Value::Integer(want), "{text:?}");
        }
        assert_eq!(cast(&Value::Real(-1.9), CastTo::Integer), Value::Integer(-1));
        assert_eq!(cast(&Value::Real(1e300), CastTo::Integer), Value::Integer(i64::MAX));
    }

    proptest::proptest! {
        /// On every integer's own text, the prefix is the integer.
        #[test]
        fn integer_prefix_reads_back_every_integer(n: i64, tail in "[.eE0-9a-z ]{0,4}") {
            let text = format!("{n}{}", if tail.starts_with(|c: char| c.is_ascii_digit()) { "" } else { &tail });
            proptest::prop_assert_eq!(integer_prefix(text.as_bytes()), n);
        }
    }

    /// Each checked against SQLite 3.51.
    #[test]
    fn round_is_sqlites_on_the_exact_value() {
        for (x, digits, want) in [
            (0.125, 2, 0.13),
            (0.375, 2, 0.38),
            (-0.125, 2, -0.13),
            (2.5, 0, 3.0),
            (-2.5, 0, -3.0),
            (0.49999999999999994, 0, 1.0),
            (-0.35, 1, -0.3),
            (0.35, 1, 0.3),
            (2.675, 2, 2.67),
            (1.005, 2, 1.0),
            (0.45, 1, 0.5),
            (5.55, 1, 5.5),
            (9.99, 1, 10.0),
            (99.96, 1, 100.0),
            (1e300, 2, 1e300),
            (123.456, 0, 123.0),
            (f64::INFINITY, 2, f64::INFINITY),
        ] {
            assert_eq!(round_real(x, digits), want, "round({x}, {digits})");
        }
    }

    /// As SQLite's `CAST(r AS TEXT)` prints them (each checked against SQLite 3.40 and 3.50).
    #[test]
    fn reals_print_as_sqlite_with_15_significant_digits() {
        for (r, want) in [
            (1e10 / -41.0, "-243902439.02439"),
            (0.1 + 0.2, "0.3"),
            (123456789012345678.0, "1.23456789012346e+17"),
            (1e15, "1.0e+15"),
            (1e-5, "1.0e-05"),
            (0.0001, "0.0001"),
            (2.0, "2.0"),
            (-0.0, "0.0"),
            (0.0, "0.0"),
            (1.0 / 3.0, "0.333333333333333"),
            (-7.5, "-7.5"),
        ] {
            assert_eq!(real_text(r), want, "{r:?}");
        }
    }

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

    fn m(text: &str, pattern: &str, escape: Option<char>, glob: bool) -> bool {
        like(text, pattern, escape, glob, &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn like_and_glob_match_as_sqlite() {
        assert!(m("Hello", "h%O", None, false));
        assert!(m("Hello", "_ell_", None, false));
        assert!(!m("Hello", "_ell", None, false));
        assert!(m("", "%", None, false));
        assert!(!m("", "_", None, false));
        assert!(m("a%b", "a!%b", Some('!'), false));
        assert!(!m("axb", "a!%b", Some('!'), false));
        assert!(!m("a", "a!", Some('!'), false));
        assert!(m("ÉTÉ", "%T%", None, false));
        assert!(!m("été", "ÉTÉ", None, false), "LIKE folds ASCII case only");
        assert!(m("abcabd", "%abd", None, false));
        assert!(m("mississippi", "%iss%ppi", None, false));
        assert!(!m("Hello", "h*", None, true), "GLOB is case-sensitive");
        assert!(m("Hello", "H*o", None, true));
        assert!(m("Hello", "H?llo", None, true));
        assert!(m("Hello", "[A-Z]ell[aeiou]", None, true));
        assert!(!m("hello", "[A-Z]*", None, true));
        assert!(m("hello", "[^A-Z]*", None, true));
        assert!(m("]x", "[]]x", None, true));
        assert!(m("-", "[a-]", None, true));
        assert!(!m("a", "[a", None, true));
        assert!(m("a*b", "a[*]b", None, true));
        assert!(m("100%", "100%", None, true));
    }

    /// The pattern that made the old backtracking matcher run for ever: 30 × `%a` then `c`.
    #[test]
    fn pathological_patterns_match_in_polynomial_time() {
        let text = "a".repeat(64);
        let pattern = format!("{}%c", "%a".repeat(30));
        assert!(!m(&text, &pattern, None, false));
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(2_000));
        assert!(!m(&text, &pattern, None, true));
        assert!(m(&format!("{text}b"), &pattern, None, true));
        let long = "%".repeat(MAX_LIKE_PATTERN_BYTES + 1);
        assert!(matches!(like("x", &long, None, false, &mut |_| Ok(())), Err(Error::Limit(_))));
        // The work is reported, so a deadline stops a long match.
        let stop = like(&text, &pattern, None, true, &mut |_| Err(Error::Interrupted("t".into())));
        assert!(matches!(stop, Err(Error::Interrupted(_))));
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
