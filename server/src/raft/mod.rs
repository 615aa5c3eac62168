//! Raft glue: peer network, the write sequencer, read routing per consistency level.
