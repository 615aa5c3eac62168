//! gRPC handlers: decode the request, call `raft`, map results and errors to the protocol.
//!
//! - [`sql`]: the `Sql` service (Execute, Query).
//! - [`admin`]: the `Admin` service (Status, Join, Remove, Snapshot).
//! - [`peer`]: the `Raft` service that carries openraft's peer RPCs and what nodes ask of each
//!   other (status, join).
//! - [`auth`]: who is calling and may they (`--users-file`); the `Sql` and `Admin` handlers
//!   authenticate every call before they do anything else.
//! - [`health`]: the gRPC health service's statuses (liveness, readiness) and the readiness rule.
//! - [`metrics`]: Prometheus metrics, counted in the handlers and read at scrape time.
//! - [`http`]: the HTTP side port (`--http`): `/healthz`, `/readyz`, `/metrics`.
//!
//! Every request-level failure leaves through [`status_from`], the one mapping from internal
//! errors to `ErrorCode` + tonic code (style.md §4); statement failures travel inside results
//! through [`statement_error`]. Handlers hold no logic a test would want without gRPC.

pub mod admin;
pub mod auth;
pub mod backup;
mod forward;
pub mod health;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod sql;

use crate::changeset::{ErrorKind, StatementError, Value};
use crate::raft::{Error, Receipt, Role};
use prost::Message;
use raftsql_proto::v1 as pb;

/// Maps a request-level error to a tonic status whose details carry a `pb::Error`.
pub fn status_from(err: Error) -> tonic::Status {
    let mut e = pb::Error { message: err.to_string(), ..Default::default() };
    let (code, tonic_code) = match err {
        Error::NotLeader { leader_id, leader_addr, term } => {
            e.leader_id = leader_id.unwrap_or(0);
            e.leader_addr = leader_addr.unwrap_or_default();
            e.term = term;
            (pb::ErrorCode::NotLeader, tonic::Code::FailedPrecondition)
        }
        Error::Indeterminate { leader_id, leader_addr, term, .. } => {
            e.leader_id = leader_id.unwrap_or(0);
            e.leader_addr = leader_addr.unwrap_or_default();
            e.term = term;
            (pb::ErrorCode::Indeterminate, tonic::Code::Unknown)
        }
        Error::Timeout(_) => (pb::ErrorCode::Timeout, tonic::Code::DeadlineExceeded),
        Error::Unavailable(_) => (pb::ErrorCode::Unavailable, tonic::Code::Unavailable),
        Error::Overloaded(_) => (pb::ErrorCode::ResourceExhausted, tonic::Code::ResourceExhausted),
        Error::Token(_) => (pb::ErrorCode::Token, tonic::Code::InvalidArgument),
        Error::InvalidArgument(_) => (pb::ErrorCode::InvalidArgument, tonic::Code::InvalidArgument),
        Error::NotFound(_) => (pb::ErrorCode::NotFound, tonic::Code::NotFound),
        Error::Precondition(_) => (pb::ErrorCode::InvalidArgument, tonic::Code::FailedPrecondition),
        // A storage failure met while reading (a damaged value, an I/O error) is this node's
        // fault, not the statement's.
        Error::Sql(crate::sql::Error::Read(_)) => (pb::ErrorCode::Internal, tonic::Code::Internal),
        Error::Sql(s) => {
            let se = StatementError::from(s);
            let pe = statement_error(&se);
            let tonic_code = match se.kind {
                ErrorKind::Syntax | ErrorKind::Type | ErrorKind::Invalid => tonic::Code::InvalidArgument,
                ErrorKind::Unsupported => tonic::Code::Unimplemented,
                ErrorKind::Constraint => tonic::Code::FailedPrecondition,
                ErrorKind::NotFound => tonic::Code::NotFound,
                ErrorKind::Limit => tonic::Code::ResourceExhausted,
                ErrorKind::Interrupted => tonic::Code::DeadlineExceeded,
            };
            e = pe;
            (e.code(), tonic_code)
        }
        Error::Storage(_) => (pb::ErrorCode::Internal, tonic::Code::Internal),
    };
    e.code = code as i32;
    tonic::Status::with_details(tonic_code, e.message.clone(), e.encode_to_vec().into())
}

/// Marks a request (a write, a removal, a join) forwarded by a follower, so it is never
/// forwarded twice. A client that sets it only stops its own request from being forwarded.
pub(crate) const FORWARDED: &str = "x-raftsql-forwarded";

/// Marks a write that is part of a restore (`raftsql restore`, the client library's
/// `RESTORE_HEADER`): it also needs the `backup` permission. Kept when forwarded.
pub(crate) const RESTORE: &str = "x-raftsql-restore";

/// `message` as a request forwarded to the leader: marked [`FORWARDED`], and carrying the
/// original caller's credentials, so the leader authenticates and authorizes the caller (and
/// scopes its request ids) itself.
/// A caller a client certificate authenticated has no credentials to copy: the forwarding
/// member names the user ([`auth::CERT_USER_HEADER`]), which the leader believes only from a
/// node whose peer certificate it verified (`peer::PeerService`).
pub(crate) fn forwarded<T>(
    message: T,
    original: &tonic::metadata::MetadataMap,
    caller: Option<&auth::Caller>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(marker) = original.get(RESTORE) {
        request.metadata_mut().insert(RESTORE, marker.clone());
    }
    if let Some(credentials) = original.get("authorization") {
        request.metadata_mut().insert("authorization", credentials.clone());
    } else if let Some(user) = caller.filter(|c| c.by_certificate).and_then(|c| c.user.as_deref()) {
        if let Ok(v) = user.parse() {
            request.metadata_mut().insert(auth::CERT_USER_HEADER, v);
        }
    }
    request
}

/// A bad request, rejected before it reaches the Raft layer.
pub fn invalid(message: impl Into<String>) -> tonic::Status {
    status_from(Error::InvalidArgument(message.into()))
}

/// A statement's failure as the protocol carries it.
pub fn statement_error(e: &StatementError) -> pb::Error {
    let code = match e.kind {
        ErrorKind::Syntax => pb::ErrorCode::Syntax,
        ErrorKind::Unsupported => pb::ErrorCode::Unsupported,
        ErrorKind::Type => pb::ErrorCode::Type,
        ErrorKind::Constraint => pb::ErrorCode::Constraint,
        ErrorKind::NotFound => pb::ErrorCode::NotFound,
        ErrorKind::Invalid => pb::ErrorCode::InvalidArgument,
        ErrorKind::Limit => pb::ErrorCode::ResourceExhausted,
        ErrorKind::Interrupted => pb::ErrorCode::Timeout,
    };
    let (line, column) = e.position.unwrap_or((0, 0));
    pb::Error { code: code as i32, message: e.message.clone(), line, column, ..Default::default() }
}

pub fn row_to_pb(row: &[Value]) -> pb::Row {
    pb::Row { values: row.iter().map(Value::to_pb).collect() }
}

pub fn role_to_pb(r: Role) -> pb::Role {
    r.to_pb()
}

pub fn receipt_to_pb(r: &Receipt) -> pb::Receipt {
    pb::Receipt {
        node_id: r.node_id,
        role: role_to_pb(r.role) as i32,
        term: r.term,
        index: r.index,
        level: r.level.to_pb() as i32,
        applied_index: r.applied_index,
        session_token: r.session_token.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &tonic::Status) -> pb::Error {
        pb::Error::decode(s.details()).expect("details hold a pb::Error")
    }

    /// Every request-level error maps to its documented code (style.md §4's table).
    #[test]
    fn every_error_maps_to_its_code() {
        let cases: Vec<(Error, pb::ErrorCode, tonic::Code)> = vec![
            (
                Error::NotLeader { leader_id: Some(2), leader_addr: Some("h:1".into()), term: 7 },
                pb::ErrorCode::NotLeader,
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::Indeterminate { reason: "x".into(), leader_id: None, leader_addr: None, term: 3 },
                pb::ErrorCode::Indeterminate,
                tonic::Code::Unknown,
            ),
            (Error::Timeout("t".into()), pb::ErrorCode::Timeout, tonic::Code::DeadlineExceeded),
            (Error::Unavailable("u".into()), pb::ErrorCode::Unavailable, tonic::Code::Unavailable),
            (Error::Overloaded("o".into()), pb::ErrorCode::ResourceExhausted, tonic::Code::ResourceExhausted),
            (Error::Token("k".into()), pb::ErrorCode::Token, tonic::Code::InvalidArgument),
            (
                Error::InvalidArgument("i".into()),
                pb::ErrorCode::InvalidArgument,
                tonic::Code::InvalidArgument,
            ),
            (Error::NotFound("n".into()), pb::ErrorCode::NotFound, tonic::Code::NotFound),
            (
                Error::Sql(crate::sql::Error::Limit("l".into())),
                pb::ErrorCode::ResourceExhausted,
                tonic::Code::ResourceExhausted,
            ),
            (
                Error::Sql(crate::sql::Error::RequestTooLarge("r".into())),
                pb::ErrorCode::ResourceExhausted,
                tonic::Code::ResourceExhausted,
            ),
            (
                Error::Sql(crate::sql::Error::Interrupted("i".into())),
                pb::ErrorCode::Timeout,
                tonic::Code::DeadlineExceeded,
            ),
            (
                Error::Sql(crate::sql::Error::Parse { message: "p".into(), line: 0, column: 0 }),
                pb::ErrorCode::Syntax,
                tonic::Code::InvalidArgument,
            ),
        ];
        for (err, code, tonic_code) in cases {
            let text = err.to_string();
            let s = status_from(err);
            assert_eq!(s.code(), tonic_code, "{text}");
            let d = decode(&s);
            assert_eq!(d.code(), code, "{text}");
            assert_eq!(d.message, text);
        }
        let s =
            status_from(Error::NotLeader { leader_id: Some(2), leader_addr: Some("h:1".into()), term: 7 });
        let d = decode(&s);
        assert_eq!((d.leader_id, d.leader_addr.as_str(), d.term), (2, "h:1", 7));
        assert_eq!(d.message, "not the leader: node 2 (h:1) leads term 7");
    }

    #[test]
    fn statement_errors_keep_kind_and_position() {
        let e = StatementError { kind: ErrorKind::Syntax, message: "bad".into(), position: Some((1, 8)) };
        let p = statement_error(&e);
        assert_eq!((p.code(), p.line, p.column), (pb::ErrorCode::Syntax, 1, 8));
        for (kind, code) in [
            (ErrorKind::Unsupported, pb::ErrorCode::Unsupported),
            (ErrorKind::Type, pb::ErrorCode::Type),
            (ErrorKind::Constraint, pb::ErrorCode::Constraint),
            (ErrorKind::NotFound, pb::ErrorCode::NotFound),
            (ErrorKind::Invalid, pb::ErrorCode::InvalidArgument),
            (ErrorKind::Limit, pb::ErrorCode::ResourceExhausted),
            (ErrorKind::Interrupted, pb::ErrorCode::Timeout),
        ] {
            let e = StatementError { kind, message: String::new(), position: None };
            assert_eq!(statement_error(&e).code(), code);
        }
    }
}
