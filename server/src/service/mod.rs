//! gRPC handlers: decode, call `raft`, map errors to codes.
