//! raftsql-server: a Raft-replicated, single-leader SQL database node.
//!
//! Layers, each importing only the ones below it (style.md §1):
//! `changeset` (shared vocabulary) · `typ` (openraft types) · `sql` (parse → evaluate, knows
//! nothing of Raft) · `store` (sled: log, vote, state machine, snapshots) · `raft` (network,
//! sequencer, read routing) · `service` (gRPC handlers) · `node` (config, start-up, shutdown).
//! Beside them, `watchdog` watches every layer for work that stopped making progress, and
//! `stats` holds the instruments lower layers update for the service's `/metrics`.

pub mod certs;
pub mod changeset;
pub mod node;
pub mod raft;
pub mod service;
pub mod sql;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod typ;
pub mod watchdog;

/// The message a panic carried (`panic!("...")` with or without arguments), if any: for logs and
/// errors that report a panic caught at a boundary (`catch_unwind`, a joined task).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}
