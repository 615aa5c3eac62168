//! Storage on sled: the Raft log and vote, the state machine, snapshots.
