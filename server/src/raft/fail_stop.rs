//! Fail-stop on a local storage failure (issue 21, item 6).
//!
//! Only deterministic errors may enter the log or an exactly-once record: the same statement on
//! the same state fails alike on every node. A failure of this node's own store (sled returning
//! an I/O error while the sequencer evaluates a write, or while a read is served) says nothing
//! about the request, and a node whose disk fails cannot be trusted to lead, to answer reads or
//! to vote. So, as etcd and CockroachDB do (both exit on a storage error and leave the restart
//! to their supervisor), such a node stops:
//!
//! 1. whoever met the failure calls [`FailStop::trip`] with its cause (the store recorded it:
//!    `StateMachine::storage_fault`); the request is answered `UNAVAILABLE` with a message that
//!    says what happened and what to do, and nothing of it is proposed;
//! 2. from then on every request is answered the same way (`Core::ensure_running`, the
//!    sequencer's `Task::process`) and readiness is NOT_SERVING (`service::health`);
//! 3. `node::run` sees [`FailStop::tripped`]; a leader hands leadership to a caught-up voter
//!    (`handoff`, at most a second; should that fail, the others elect a leader after an
//!    election timeout); then it shuts openraft down (no more proposals, heartbeats or votes),
//!    lets the answers already decided reach their callers for up to a second, and exits
//!    non-zero with one line naming the cause, for systemd or Kubernetes to restart it.
//!
//! The restart recovers as after any crash: the log and vote are durable (fsynced before every
//! acknowledgement), the state machine resumes from its last durable applied index, and the
//! leader sends what the node missed. The client library treats `UNAVAILABLE` as retryable and
//! tries the other nodes with the same request id.
//!
//! A failure inside openraft's storage calls (append, apply, snapshot) needs none of this:
//! openraft stops its core on any `StorageError` (`Fatal::StorageError`, metrics'
//! `running_state`), and `node::run` exits on that the same way.

use super::Error;
use crate::typ::NodeId;
use std::sync::Arc;
use tokio::sync::watch;

/// Set once, when this node's store failed; shared by the sequencer, the read path, readiness
/// and `node::run`.
#[derive(Clone)]
pub struct FailStop {
    node: NodeId,
    cause: Arc<watch::Sender<Option<String>>>,
}

impl FailStop {
    pub fn new(node: NodeId) -> FailStop {
        FailStop { node, cause: Arc::new(watch::channel(None).0) }
    }

    /// Records `cause` (the first one wins), logs it once, and returns the error to answer with.
    pub fn trip(&self, cause: &str) -> Error {
        let first = self.cause.send_if_modified(|c| {
            if c.is_some() {
                return false;
            }
            *c = Some(cause.to_string());
            true
        });
        if first {
            tracing::error!(
                %cause,
                "local storage failed: this node stops serving and exits; check the disk, then restart it"
            );
        }
        // The first cause recorded, which may be an earlier one than `cause`.
        self.answer(&self.cause().unwrap_or_else(|| cause.to_string()))
    }

    /// The cause, once tripped.
    pub fn cause(&self) -> Option<String> {
        self.cause.borrow().clone()
    }

    /// The answer to every request once tripped.
    pub fn error(&self) -> Option<Error> {
        self.cause().map(|cause| self.answer(&cause))
    }

    fn answer(&self, cause: &str) -> Error {
        Error::Unavailable(format!(
            "node {} stopped serving: its local storage failed ({cause}). Nothing of this request \
             was applied; retry it at another node (the client library does). Operator: check the \
             node's disk and log, then restart it (it exits for its supervisor to restart it); it \
             recovers from its log and catches up from the others",
            self.node
        ))
    }

    /// Resolves with the cause once tripped.
    pub async fn tripped(&self) -> String {
        let mut rx = self.cause.subscribe();
        loop {
            if let Some(cause) = rx.borrow_and_update().clone() {
                return cause;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: unreachable while this future runs.
                std::future::pending::<()>().await;
            }
        }
    }

    /// `e`, unless it is this node's storage failing: then the node is stopped (see the module
    /// doc) and the answer is `UNAVAILABLE`. `storage_fault` is what the store recorded
    /// (`StateMachine::storage_fault`); a read error without one is a pinned read stopped on
    /// purpose or a damaged value, which stay as they are. So does a damaged exactly-once record
    /// or cluster id: damage is persistent, a restart would not cure it, and it is answered
    /// INTERNAL naming the recovery, as a damaged row is.
    pub fn check(&self, e: Error, storage_fault: Option<String>) -> Error {
        use crate::store::Error as Store;
        match (&e, storage_fault) {
            (Error::Storage(Store::Damaged { .. } | Store::Decode { .. }), _) => e,
            (Error::Storage(s), _) => self.trip(&s.to_string()),
            (Error::Sql(crate::sql::Error::Read(_)), Some(cause)) => self.trip(&cause),
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_cause_stops_the_node_and_answers_every_request() {
        let stop = FailStop::new(3);
        assert!(stop.cause().is_none() && stop.error().is_none());
        // A read stopped on purpose (no storage fault recorded) is not a storage failure.
        let pin = Error::Sql(crate::sql::Error::Read("pinned read stopped: retry".into()));
        assert!(matches!(stop.check(pin, None), Error::Sql(_)));
        assert!(stop.cause().is_none());
        let e = stop.check(Error::Sql(crate::sql::Error::Read("x".into())), Some("sled: disk gone".into()));
        let text = e.to_string();
        assert!(matches!(e, Error::Unavailable(_)), "{text}");
        assert!(text.contains("node 3 stopped serving") && text.contains("sled: disk gone"), "{text}");
        assert!(text.contains("check the node's disk") && text.contains("restart"), "{text}");
        stop.trip("a later failure");
        assert_eq!(stop.cause().as_deref(), Some("sled: disk gone"));
        assert_eq!(stop.tripped().await, "sled: disk gone");
        // SQL errors pass.
        let sql = Error::Sql(crate::sql::Error::NoSuchTable("t".into()));
        assert!(matches!(stop.check(sql, None), Error::Sql(crate::sql::Error::NoSuchTable(_))));
    }

    #[test]
    fn damage_is_not_a_fail_stop_but_a_failing_store_is() {
        let stop = FailStop::new(1);
        let damaged = crate::store::Error::Damaged { what: "request record".into(), reason: "crc".into() };
        assert!(matches!(stop.check(Error::Storage(damaged), None), Error::Storage(_)));
        assert!(stop.cause().is_none());
        let io =
            crate::store::Error::Io { context: "read a record".into(), source: std::io::Error::other("EIO") };
        assert!(matches!(stop.check(Error::Storage(io), None), Error::Unavailable(_)));
        assert!(stop.cause().is_some_and(|c| c.contains("EIO")), "{:?}", stop.cause());
    }
}
