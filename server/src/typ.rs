//! openraft's type configuration for raftsql and short aliases for its generic types, in one
//! place (as openraft's examples keep them).

use crate::changeset::{Applied, EncodedChangeSet};

pub type NodeId = u64;

/// A member as the membership records it: where it is reached, and which data dir it is.
///
/// The incarnation is a random id a data dir gets when it is created (`store::open`); it never
/// changes for the life of that dir, and is never 0. The membership records each member's
/// incarnation when it is added (bootstrap asks every initial member for its own; a join
/// carries it), and every peer message names the incarnations of its sender and of the member
/// it means to reach (`raft::peer_check`). So a node whose data dir was lost and recreated is a
/// different incarnation: its peers refuse its votes and acknowledgements and it refuses theirs,
/// and it cannot come back as its old self with an empty log (the lost-write scenario of issue
/// 16; etcd refuses the same with its member ids).
///
/// A member has two addresses: `addr` for clients (Sql, Admin; what redirects name) and
/// `peer_addr` for other nodes (Raft). They are the same in single-port mode; a node started
/// with `--peer-listen` advertises a separate peer address, and peers dial only that.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub addr: String,
    pub incarnation: u64,
    pub peer_addr: String,
}

impl Member {
    /// A single-port member: peers reach it at its client address.
    pub fn new(addr: impl Into<String>, incarnation: u64) -> Member {
        let addr = addr.into();
        Member { peer_addr: addr.clone(), addr, incarnation }
    }

    /// A member with a separate peer address.
    pub fn with_peer(addr: impl Into<String>, peer_addr: impl Into<String>, incarnation: u64) -> Member {
        Member { addr: addr.into(), incarnation, peer_addr: peer_addr.into() }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", Incarnation(self.incarnation), self.addr)?;
        if self.peer_addr != self.addr {
            write!(f, " (peers: {})", self.peer_addr)?;
        }
        Ok(())
    }
}

/// An incarnation id as operators see it: 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation(pub u64);

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

openraft::declare_raft_types!(
    /// raftsql's Raft types: the log entry is a [`ChangeSet`](crate::changeset::ChangeSet),
    /// carried encoded ([`EncodedChangeSet`]); a node is known by its address
    /// and incarnation ([`Member`]); a snapshot is a file on disk, streamed in chunks.
    pub TypeConfig:
        D = EncodedChangeSet,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;
