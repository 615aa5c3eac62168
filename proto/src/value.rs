//! The vocabulary both ends of the protocol speak in Rust: a SQL [`Value`] and a read's
//! [`Consistency`]. The server's log carries `Value` (serde; its bincode bytes are durable and
//! pinned by a test in raftsql-server's `changeset`), the client library hands both to programs.
//! Conversions to and from the protobuf messages are in [`crate::convert`], and only there.

// Written by hand: clippy's lints apply (the crate allows them for its generated code).
#![warn(clippy::all)]

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A single SQL value. `Integer` is 64-bit; `Real` is an IEEE double.
///
/// The variants' order is part of the log format: never reorder, insert or remove one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Boolean(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

/// The consistency level of a read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Consistency {
    /// Linearizable: served by the leader after it confirms its leadership.
    #[default]
    Strong,
    /// Sees at least the state of the session token.
    ReadYourWrites,
    /// Any node that heard from the leader within the duration.
    Bounded(Duration),
    /// The local replica, no promise.
    Any,
}
