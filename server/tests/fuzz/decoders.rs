//! Request decoders: random bytes, and valid encodings with their bytes mutated, decoded as
//! the server decodes them, then checked the way the service checks a decoded request.
//!
//! - Client messages (`ExecuteRequest`, `QueryRequest`, `JoinRequest`, `RemoveRequest`,
//!   `StatusRequest`, `SnapshotRequest`, `BackupRequest`, `LeaveRequest`,
//!   `TransferLeaderRequest`, `RaftMessage`) through `prost::Message::decode`; a
//!   decoded ExecuteRequest goes through `request_id_from_pb`, the empty-request check,
//!   `sql::check_request`, and when those pass, the whole SQL case (`sql_case::check`); a
//!   QueryRequest through `check_request`, `consistency_from_pb`, `SessionToken::parse` and
//!   a read.
//! - Peer payloads (bincode `AppendEntriesRequest`, `VoteRequest`, `InstallSnapshotRequest`)
//!   through the peer service's `decode_payload` (bincode bounded by the payload's length) and
//!   `raft::peer_check::Local`'s checks, against a random local node.
//!
//! Property: no panic; every failure a typed `tonic::Status` with the code the service sends
//! (`InvalidArgument` for what does not decode) or a `Refused`.

use crate::grammar;
use crate::sql_case::{self, Request};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StoredMembership, Vote};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;
use raftsql_proto::v1 as pb;
use raftsql_server::changeset::{Change, ChangeSet, EncodedChangeSet, RequestEffects, Value};
use raftsql_server::raft::peer_check::{Envelope, Local};
use raftsql_server::raft::read::SessionToken;
use raftsql_server::service::{peer::decode_payload, sql as service};
use raftsql_server::sql::{self, RequestLimits};
use raftsql_server::typ::{Entry, Member, Membership, NodeId, TypeConfig};
use std::collections::BTreeSet;

/// Byte-level edits of an encoding.
#[derive(Clone, Debug)]
enum ByteOp {
    Flip(proptest::sample::Index, u8),
    Set(proptest::sample::Index, u8),
    Insert(proptest::sample::Index, Vec<u8>),
    Delete(proptest::sample::Index, usize),
    Truncate(proptest::sample::Index),
    /// A varint that claims a huge length or a huge field number.
    Varint(proptest::sample::Index, u64),
    Duplicate(proptest::sample::Index, usize),
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    use proptest::sample::Index;
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, b)| ByteOp::Flip(i, b)),
        2 => (any::<Index>(), prop_oneof![any::<u8>(), Just(0xff), Just(0x80), Just(0xc3), Just(0)]).prop_map(|(i, b)| ByteOp::Set(i, b)),
        2 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| ByteOp::Insert(i, b)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| ByteOp::Delete(i, n)),
        1 => any::<Index>().prop_map(ByteOp::Truncate),
        2 => (any::<Index>(), prop_oneof![any::<u64>(), Just(u64::MAX), Just(u32::MAX as u64), Just(1 << 31), Just(0x7f)])
            .prop_map(|(i, v)| ByteOp::Varint(i, v)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| ByteOp::Duplicate(i, n)),
    ]
}

fn mutate(mut b: Vec<u8>, ops: &[ByteOp]) -> Vec<u8> {
    for op in ops {
        let at = |i: &proptest::sample::Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match op {
            ByteOp::Flip(i, x) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] ^= x;
            }
            ByteOp::Set(i, x) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] = *x;
            }
            ByteOp::Insert(i, bytes) => {
                let i = at(i, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            ByteOp::Delete(i, n) if !b.is_empty() => {
                let i = at(i, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            ByteOp::Truncate(i) => {
                let i = at(i, b.len());
                b.truncate(i);
            }
            ByteOp::Varint(i, v) => {
                let i = at(i, b.len() + 1);
                let mut enc = Vec::new();
                prost::encoding::encode_varint(*v, &mut enc);
                b.splice(i..i, enc);
            }
            ByteOp::Duplicate(i, n) if !b.is_empty() => {
                let i = at(i, b.len());
                let end = (i + n).min(b.len());
                let copy = b[i..end].to_vec();
                b.splice(end..end, copy);
            }
            _ => {}
        }
    }
    b
}

/// Which client message the bytes are fed to.
const CLIENT_KINDS: &[&str] = &[
    "Execute",
    "Query",
    "Join",
    "Remove",
    "Status",
    "Snapshot",
    "RaftMessage",
    "Backup",
    "Leave",
    "TransferLeader",
];

#[derive(Clone, Debug)]
pub struct ClientInput {
    kind: usize,
    bytes: Vec<u8>,
}

fn execute_request() -> impl Strategy<Value = pb::ExecuteRequest> {
    (
        grammar::request(),
        option::of((
            prop_oneof![Just(String::new()), "[a-z0-9-]{1,70}"],
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        )),
        0u32..5,
    )
        .prop_map(|(req, id, min_replicas)| pb::ExecuteRequest {
            statements: req
                .texts
                .into_iter()
                .map(|(sql, params)| pb::Statement { sql, params: params.iter().map(Value::to_pb).collect() })
                .collect(),
            transaction: req.transaction,
            request_id: id.map(|(client_id, seq)| pb::RequestId { client_id, seq }),
            min_replicas,
        })
}

fn query_request() -> impl Strategy<Value = pb::QueryRequest> {
    (
        grammar::statement(),
        vec(grammar::value(), 0..3),
        -1i32..6,
        prop_oneof![Just(0u64), any::<u64>()],
        ".{0,12}",
        any::<u32>(),
    )
        .prop_map(|(sql, params, consistency, staleness, token, page_rows)| pb::QueryRequest {
            sql,
            params: params.iter().map(Value::to_pb).collect(),
            consistency,
            max_staleness_ms: staleness,
            session_token: token,
            page_rows,
        })
}

fn valid_client_message() -> impl Strategy<Value = (usize, Vec<u8>)> {
    prop_oneof![
        4 => execute_request().prop_map(|m| (0, m.encode_to_vec())),
        3 => query_request().prop_map(|m| (1, m.encode_to_vec())),
        1 => (any::<u64>(), ".{0,20}", any::<bool>())
            .prop_map(|(node_id, addr, as_learner)| (2, pb::JoinRequest { node_id, addr, as_learner, incarnation: node_id ^ 7, peer_addr: String::new() }.encode_to_vec())),
        1 => any::<(u64, bool)>().prop_map(|(node_id, force)| (3, pb::RemoveRequest { node_id, force }.encode_to_vec())),
        1 => any::<(u64, u64)>().prop_map(|(node_id, incarnation)| (8, pb::LeaveRequest { node_id, incarnation }.encode_to_vec())),
        1 => any::<u64>().prop_map(|target| (9, pb::TransferLeaderRequest { target }.encode_to_vec())),
        1 => (vec(any::<u8>(), 0..64), ".{0,8}", any::<u64>(), any::<u64>())
            .prop_map(|(payload, cluster_id, from, to)| {
                let msg = pb::RaftMessage { payload, cluster_id, from, to, from_incarnation: from, to_incarnation: to };
                (6, msg.encode_to_vec())
            }),
    ]
}

pub fn client_input() -> BoxedStrategy<ClientInput> {
    prop_oneof![
        1 => (0..CLIENT_KINDS.len(), vec(any::<u8>(), 0..128)).prop_map(|(kind, bytes)| ClientInput { kind, bytes }),
        3 => (valid_client_message(), vec(byte_op(), 0..5), 0..10usize).prop_map(|((kind, bytes), ops, other)| {
            // Now and then a valid encoding of one message is fed to another.
            let kind = if other == 0 { (kind + 1) % CLIENT_KINDS.len() } else { kind };
            ClientInput { kind, bytes: mutate(bytes, &ops) }
        }),
    ]
    .boxed()
}

fn status_is_typed(s: &tonic::Status, codes: &[tonic::Code]) -> Result<(), TestCaseError> {
    prop_assert!(codes.contains(&s.code()), "status {:?} not among {:?}: {}", s.code(), codes, s.message());
    prop_assert!(!s.message().is_empty(), "a status without a message");
    Ok(())
}

/// A message the service hands to its handler as decoded, with nothing to check before.
fn decodes<M: Message + Default>(b: &[u8]) -> Result<(), TestCaseError> {
    let _ = M::decode(b);
    Ok(())
}

/// The service's default request limits.
fn limits() -> RequestLimits {
    RequestLimits::default()
}

pub fn check_client(input: ClientInput) -> Result<(), TestCaseError> {
    let b = input.bytes.as_slice();
    match CLIENT_KINDS[input.kind] {
        "Execute" => {
            let Ok(req) = pb::ExecuteRequest::decode(b) else { return Ok(()) };
            if let Err(s) = service::request_id_from_pb(req.request_id.clone()) {
                return status_is_typed(&s, &[tonic::Code::InvalidArgument]);
            }
            if req.statements.is_empty() {
                return Ok(());
            }
            if let Err(e) =
                sql::check_request(req.statements.iter().map(|s| (s.sql.as_str(), s.params.len())), &limits())
            {
                prop_assert!(matches!(e, sql::Error::RequestTooLarge(_) | sql::Error::Invalid(_)), "{e:?}");
                return Ok(());
            }
            let texts = req
                .statements
                .into_iter()
                .map(|s| (s.sql, s.params.into_iter().map(Value::from_pb).collect::<Vec<Value>>()))
                .collect();
            sql_case::check(&Request { texts, transaction: req.transaction })
        }
        "Query" => {
            let Ok(req) = pb::QueryRequest::decode(b) else { return Ok(()) };
            if let Err(s) = service::consistency_from_pb(req.consistency, req.max_staleness_ms) {
                status_is_typed(&s, &[tonic::Code::InvalidArgument])?;
            }
            if !req.session_token.is_empty() {
                let _ = SessionToken::parse(&req.session_token);
            }
            if sql::check_request([(req.sql.as_str(), req.params.len())], &limits()).is_err() {
                return Ok(());
            }
            let params: Vec<Value> = req.params.into_iter().map(Value::from_pb).collect();
            sql_case::check(&Request { texts: vec![(req.sql, params)], transaction: false })
        }
        "Join" => decodes::<pb::JoinRequest>(b),
        "Remove" => decodes::<pb::RemoveRequest>(b),
        "Status" => decodes::<pb::StatusRequest>(b),
        "Snapshot" => decodes::<pb::SnapshotRequest>(b),
        "Backup" => decodes::<pb::BackupRequest>(b),
        "Leave" => decodes::<pb::LeaveRequest>(b),
        "TransferLeader" => decodes::<pb::TransferLeaderRequest>(b),
        _ => {
            let Ok(m) = pb::RaftMessage::decode(b) else { return Ok(()) };
            check_peer(PeerInput {
                kind: (m.from % 3) as usize,
                payload: m.payload,
                env: Envelope {
                    cluster_id: m.cluster_id,
                    from: m.from,
                    to: m.to,
                    from_incarnation: m.from_incarnation,
                    to_incarnation: m.to_incarnation,
                },
                local: Local {
                    id: 2,
                    incarnation: 2,
                    cluster_id: Some("c".into()),
                    term: 5,
                    membership: std::sync::Arc::new(StoredMembership::new(None, members())),
                },
            })
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerInput {
    /// 0: AppendEntries, 1: Vote, 2: InstallSnapshot.
    kind: usize,
    payload: Vec<u8>,
    env: Envelope,
    local: Local,
}

fn log_id() -> impl Strategy<Value = LogId<NodeId>> {
    (prop_oneof![0u64..8, any::<u64>()], 0u64..5, prop_oneof![0u64..10, any::<u64>()])
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn vote() -> impl Strategy<Value = Vote<NodeId>> {
    (prop_oneof![0u64..8, Just(u64::MAX), Just(1 << 62), any::<u64>()], 0u64..5, any::<bool>()).prop_map(
        |(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        },
    )
}

/// Nodes 1..=3, each of incarnation equal to its id.
fn members() -> Membership {
    let nodes = (1..=3u64).map(|n| (n, Member::new(format!("127.0.0.1:{}", 7000 + n), n)));
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes.collect::<std::collections::BTreeMap<_, _>>())
}

fn membership() -> impl Strategy<Value = Membership> {
    vec(proptest::collection::btree_set(0u64..6, 0..4), 1..3).prop_map(|configs| {
        let nodes: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
        let nodes = nodes.into_iter().map(|n| (n, Member::new(format!("127.0.0.1:{}", 7000 + n), n)));
        Membership::new(configs, nodes.collect::<std::collections::BTreeMap<_, _>>())
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    let change = prop_oneof![
        (".{0,6}", vec(grammar::value(), 0..3), vec(grammar::value(), 0..3))
            .prop_map(|(table, key, row)| Change::Insert { table, key, row }),
        (".{0,6}", vec(grammar::value(), 0..3)).prop_map(|(table, key)| Change::Delete { table, key }),
        ".{0,6}".prop_map(|table| Change::DropTable { table }),
    ];
    let changeset = (any::<u16>(), option::of(".{0,8}"), vec(vec(change, 0..3), 0..3)).prop_map(
        |(version, cid, reqs)| {
            let mut cs = ChangeSet::new(
                reqs.into_iter()
                    .map(|changes| RequestEffects { request_id: None, changes, outcomes: vec![] })
                    .collect(),
            );
            cs.version = version % 3;
            cs.init_cluster_id = cid;
            cs
        },
    );
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        changeset.prop_map(|cs| EntryPayload::Normal(EncodedChangeSet::encode(&cs))),
        membership().prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn valid_peer_payload() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let append = (vote(), option::of(log_id()), vec(entry(), 0..4), option::of(log_id())).prop_map(
        |(vote, prev_log_id, entries, leader_commit)| {
            let rpc: AppendEntriesRequest<TypeConfig> =
                AppendEntriesRequest { vote, prev_log_id, entries, leader_commit };
            (0, bincode::serialize(&rpc).expect("serializes"))
        },
    );
    let vote_rpc = (vote(), option::of(log_id())).prop_map(|(vote, last_log_id)| {
        let rpc: VoteRequest<NodeId> = VoteRequest { vote, last_log_id };
        (1, bincode::serialize(&rpc).expect("serializes"))
    });
    let snapshot = (
        vote(),
        option::of(log_id()),
        option::of(log_id()),
        membership(),
        ".{0,10}",
        any::<u64>(),
        vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(vote, last_log_id, membership_log_id, m, snapshot_id, offset, data, done)| {
            let meta = SnapshotMeta {
                last_log_id,
                last_membership: StoredMembership::new(membership_log_id, m),
                snapshot_id,
            };
            let rpc: InstallSnapshotRequest<TypeConfig> =
                InstallSnapshotRequest { vote, meta, offset, data, done };
            (2, bincode::serialize(&rpc).expect("serializes"))
        });
    prop_oneof![3 => append, 1 => vote_rpc, 1 => snapshot]
}

pub fn peer_input() -> BoxedStrategy<PeerInput> {
    let payload = prop_oneof![
        1 => (0usize..3, vec(any::<u8>(), 0..96)),
        4 => (valid_peer_payload(), vec(byte_op(), 0..4), 0..8usize).prop_map(|((kind, bytes), ops, other)| {
            let kind = if other == 0 { (kind + 1) % 3 } else { kind };
            (kind, mutate(bytes, &ops))
        }),
    ];
    let env = (prop_oneof![Just(String::new()), Just("c".to_string()), ".{0,4}"], 0u64..5, 0u64..5).prop_map(
        |(cluster_id, from, to)| Envelope {
            cluster_id,
            from,
            to,
            from_incarnation: from,
            to_incarnation: to,
        },
    );
    let local = (
        1u64..4,
        option::of(prop_oneof![Just("c".to_string()), ".{0,4}"]),
        prop_oneof![0u64..10, any::<u64>()],
    )
        .prop_map(|(id, cluster_id, term)| Local {
            id,
            incarnation: id,
            cluster_id,
            term,
            membership: std::sync::Arc::new(StoredMembership::new(None, members())),
        });
    (payload, env, local)
        .prop_map(|((kind, payload), env, local)| PeerInput { kind, payload, env, local })
        .boxed()
}

pub fn check_peer(input: PeerInput) -> Result<(), TestCaseError> {
    let PeerInput { kind, payload, env, local } = input;
    let invalid = [tonic::Code::InvalidArgument];
    let refused = |r: raftsql_server::raft::peer_check::Refused| -> Result<(), TestCaseError> {
        prop_assert_eq!(r.me, local.id);
        prop_assert!(!r.reason.is_empty(), "a refusal without a reason");
        Ok(())
    };
    match kind {
        0 => match decode_payload::<AppendEntriesRequest<TypeConfig>>(&payload, "AppendEntries") {
            Err(s) => status_is_typed(&s, &invalid),
            Ok(rpc) => local.append_entries(&env, &rpc).or_else(refused),
        },
        1 => match decode_payload::<VoteRequest<NodeId>>(&payload, "Vote") {
            Err(s) => status_is_typed(&s, &invalid),
            Ok(rpc) => local.vote(&env, &rpc).or_else(refused),
        },
        _ => match decode_payload::<InstallSnapshotRequest<TypeConfig>>(&payload, "InstallSnapshot") {
            Err(s) => status_is_typed(&s, &invalid),
            Ok(rpc) => local.install_snapshot(&env, &rpc).or_else(refused),
        },
    }
}
