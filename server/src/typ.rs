//! openraft's type configuration for raftsql and short aliases for its generic types, in one
//! place (as openraft's examples keep them).

use crate::changeset::{Applied, ChangeSet};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// raftsql's Raft types: the log entry is a [`ChangeSet`]; a node is known by its address;
    /// a snapshot is a file on disk, streamed in chunks.
    pub TypeConfig:
        D = ChangeSet,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
