//! raftsql-server: a Raft-replicated, single-leader SQL database node.
//!
//! Layers, each importing only the ones below it (style.md §1):
//! `changeset` (shared vocabulary) · `typ` (openraft types) · `sql` (parse → evaluate, knows
//! nothing of Raft) · `store` (sled: log, vote, state machine, snapshots) · `raft` (network,
//! sequencer, read routing) · `service` (gRPC handlers) · `node` (config, start-up, shutdown).

pub mod changeset;
// `node` is a temporary feature while store/ and sql/ are being written: the layers above them
// compile only once their APIs exist.
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod raft;
#[cfg(feature = "node")]
pub mod service;
pub mod sql;
pub mod store;
pub mod typ;
