//! The one place [`Value`] and [`Consistency`] are converted to and from the protobuf messages
//! ([`pb::Value`], [`pb::Consistency`] with a `QueryRequest`'s `max_staleness_ms`), for the
//! server and the client alike.

// Written by hand: clippy's lints apply (the crate allows them for its generated code).
#![warn(clippy::all)]

use crate::v1 as pb;
use crate::{Consistency, Value};
use std::time::Duration;

impl Value {
    pub fn to_pb(&self) -> pb::Value {
        use pb::value::Kind;
        let kind = match self {
            Value::Null => Kind::Null(true),
            Value::Integer(i) => Kind::Integer(*i),
            Value::Real(r) => Kind::Real(*r),
            Value::Text(s) => Kind::Text(s.clone()),
            Value::Blob(b) => Kind::Blob(b.clone()),
            Value::Boolean(b) => Kind::Boolean(*b),
        };
        pb::Value { kind: Some(kind) }
    }

    /// A message without a kind is NULL.
    pub fn from_pb(v: pb::Value) -> Value {
        use pb::value::Kind;
        match v.kind {
            None | Some(Kind::Null(_)) => Value::Null,
            Some(Kind::Integer(i)) => Value::Integer(i),
            Some(Kind::Real(r)) => Value::Real(r),
            Some(Kind::Text(s)) => Value::Text(s),
            Some(Kind::Blob(b)) => Value::Blob(b),
            Some(Kind::Boolean(b)) => Value::Boolean(b),
        }
    }
}

impl Consistency {
    /// The level as the protocol names it; BOUNDED's staleness travels apart, as
    /// [`max_staleness_ms`](Self::max_staleness_ms).
    pub fn to_pb(self) -> pb::Consistency {
        match self {
            Consistency::Strong => pb::Consistency::Strong,
            Consistency::ReadYourWrites => pb::Consistency::ReadYourWrites,
            Consistency::Bounded(_) => pb::Consistency::Bounded,
            Consistency::Any => pb::Consistency::Any,
        }
    }

    /// A `QueryRequest`'s `max_staleness_ms`: BOUNDED's staleness in whole milliseconds, at
    /// least 1 (0 would mean none was given); 0 for the other levels.
    pub fn max_staleness_ms(self) -> u64 {
        match self {
            Consistency::Bounded(d) => d.as_millis().max(1) as u64,
            _ => 0,
        }
    }

    /// A `QueryRequest`'s level, checked: a known level (UNSPECIFIED is STRONG), and BOUNDED
    /// with a staleness. The error says what was wrong, for an INVALID_ARGUMENT.
    pub fn from_pb(level: i32, max_staleness_ms: u64) -> Result<Consistency, String> {
        match pb::Consistency::try_from(level) {
            Ok(pb::Consistency::Unspecified | pb::Consistency::Strong) => Ok(Consistency::Strong),
            Ok(pb::Consistency::ReadYourWrites) => Ok(Consistency::ReadYourWrites),
            Ok(pb::Consistency::Bounded) if max_staleness_ms == 0 => {
                Err("BOUNDED reads need max_staleness_ms > 0".into())
            }
            Ok(pb::Consistency::Bounded) => Ok(Consistency::Bounded(Duration::from_millis(max_staleness_ms))),
            Ok(pb::Consistency::Any) => Ok(Consistency::Any),
            Err(_) => Err(format!(
                "unknown consistency level {level}: use STRONG, READ_YOUR_WRITES, BOUNDED or ANY"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Null,
            Value::Integer(-5),
            Value::Real(1.5),
            Value::Text("é".into()),
            Value::Blob(vec![0, 255]),
            Value::Boolean(true),
            "x".into(),
            false.into(),
        ] {
            assert_eq!(Value::from_pb(v.to_pb()), v);
        }
        assert_eq!(Value::from_pb(pb::Value { kind: None }), Value::Null);
    }

    #[test]
    fn levels_round_trip_and_bad_ones_are_refused() {
        for c in [
            Consistency::Strong,
            Consistency::ReadYourWrites,
            Consistency::Bounded(Duration::from_millis(250)),
            Consistency::Any,
        ] {
            assert_eq!(Consistency::from_pb(c.to_pb() as i32, c.max_staleness_ms()), Ok(c));
        }
        // Under a millisecond still asks for a bound.
        assert_eq!(Consistency::Bounded(Duration::from_micros(10)).max_staleness_ms(), 1);
        assert_eq!(Consistency::from_pb(pb::Consistency::Unspecified as i32, 0), Ok(Consistency::Strong));
        let e = Consistency::from_pb(pb::Consistency::Bounded as i32, 0).unwrap_err();
        assert!(e.contains("max_staleness_ms"), "{e}");
        let e = Consistency::from_pb(99, 0).unwrap_err();
        assert!(e.contains("unknown consistency level 99"), "{e}");
    }
}
