//! Passing a client's request on to the leader, written once for every call that must run there
//! (Execute with `--forward-writes`, Join, Remove): over the peer service, to the leader's peer
//! address, at most once (a forwarded request that meets a non-leader is answered NOT_LEADER,
//! never forwarded again), carrying the caller's credentials ([`super::forwarded`]) so the
//! leader authenticates and authorizes the caller itself.

use super::status_from;
use crate::raft::{Core, Error};
use raftsql_proto::channel::Channel;
use raftsql_proto::v1 as pb;

/// The leader's peer address to forward to; Err is the answer to give instead: no leader known,
/// this node names itself (a stale leader), or the request was forwarded once already.
pub(super) fn leader_target(core: &Core, was_forwarded: bool) -> Result<String, tonic::Status> {
    match core.not_leader() {
        Error::NotLeader { leader_id: Some(l), leader_addr: Some(addr), .. }
            if l != core.id() && !was_forwarded =>
        {
            Ok(core.peer_addr_of(l).unwrap_or(addr))
        }
        e => Err(status_from(e)),
    }
}

/// A peer-service client of the leader at `addr`, carrying messages up to the client limit.
pub(super) fn client(core: &Core, addr: &str) -> Result<pb::raft_client::RaftClient<Channel>, tonic::Status> {
    let channel = core.peer_channel(addr).map_err(|e| failed(addr, tonic::Status::unavailable(e)))?;
    Ok(pb::raft_client::RaftClient::new(channel)
        .max_decoding_message_size(super::sql::MAX_CLIENT_MESSAGE)
        .max_encoding_message_size(super::sql::MAX_CLIENT_MESSAGE))
}

/// What the forwarding node answers when the leader's answer did not come back: the leader's
/// own answer (a raftsql error, a refusal, a limit) passes through unchanged; a transport failure
/// (leader gone, or this node cannot connect, e.g. a `--peer-source-addr` it cannot bind)
/// becomes UNAVAILABLE naming the leader and the cause, so the client retries elsewhere.
pub(super) fn failed(addr: &str, s: tonic::Status) -> tonic::Status {
    use tonic::Code;
    if !s.details().is_empty() || !matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) {
        return s;
    }
    let cause = crate::raft::network::status_text(&s);
    status_from(Error::Unavailable(format!("cannot forward to the leader at {addr}: {cause}")))
}
