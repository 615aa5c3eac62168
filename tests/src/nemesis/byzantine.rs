//! The byzantine-client schedule's fault (issue 16): while the workloads run, one client sends
//! what no well-behaved client or peer sends — forged and malformed peer messages and
//! pathological SQL — to random nodes, on their real (unproxied) client ports.
//!
//! Every forged peer message here must be refused (`PermissionDenied` or `InvalidArgument`)
//! before openraft sees it, and every pathological request must get a typed answer (never
//! `INTERNAL`, never a dropped connection), while the history checkers of the other workloads
//! stay valid and the cluster recovers after the fault like after any other.
//!
//! What it does not send without peer TLS: a well-formed message with a sender's real identity
//! in a plausible term. Without peer authentication such a message is indistinguishable from
//! the real peer's; that is what peer certificates are for. With peer TLS (`--tls`) the forger
//! is the stolen-certificate attacker: it reaches each node's real peer port through mutual TLS
//! with a valid certificate of a member node other than the leader it claims to be, so every
//! message passes the handshake and must be refused by the certificate-to-sender check (or by
//! `peer_check` after it).

use crate::Cluster;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StoredMembership, Vote};
use raftsql_client::{pb, Client, Value};
use raftsql_server::typ::{Entry, TypeConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// What the byzantine client saw, for the run's notes and problems.
#[derive(Debug, Default)]
pub struct Tally {
    /// Forged or malformed peer messages refused as they must be.
    pub peer_refused: u64,
    /// Pathological client requests that got a typed answer.
    pub sql_answered: u64,
    /// Messages that could not be sent (the node was unreachable): not judged.
    pub unsent: u64,
    /// Anything that was accepted or answered in a way it must not be.
    pub problems: Vec<String>,
}

impl Tally {
    pub fn note(&self) -> String {
        format!(
            "byzantine client: {} forged peer messages refused, {} pathological requests answered with \
             typed errors, {} not sent (node unreachable), {} wrongly handled",
            self.peer_refused,
            self.sql_answered,
            self.unsent,
            self.problems.len()
        )
    }
}

/// A node's identity as a forger learns it from its Status.
struct Target {
    addr: String,
    /// Peer TLS: trust the peer CA and present a certificate of another member.
    tls: Option<tonic::transport::ClientTlsConfig>,
    id: u64,
    cluster_id: String,
    term: u64,
    last_log_index: u64,
    leader: u64,
    incarnations: BTreeMap<u64, u64>,
}

async fn target(cluster: &Cluster, id: u64) -> Option<Target> {
    let s = cluster.status(id).await.ok()?;
    let (addr, tls) = match cluster.pki() {
        None => (cluster.listen(id).to_string(), None),
        Some(pki) => {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            // A real certificate of a member that is not the leader (the forged messages
            // claim to come from the leader), issued by the cluster's own CA.
            let holder = s.members.iter().map(|m| m.id).find(|&m| m != s.leader_id).unwrap_or(id);
            let names = [format!("node-{holder}.{}", crate::pki::DOMAIN), "127.0.0.1".to_string()];
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let stolen = pki.peer_ca.issue(&pki.dir, &format!("stolen-node-{holder}"), &names, false);
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&pki.peer_ca.cert).ok()?))
                .identity(Identity::from_pem(
                    std::fs::read(&stolen.cert).ok()?,
                    std::fs::read(&stolen.key).ok()?,
                ))
                .domain_name(format!("node-{id}.{}", crate::pki::DOMAIN))
                .timeout(Duration::from_secs(2));
            (cluster.peer_listen(id)?.to_string(), Some(tls))
        }
    };
    Some(Target {
        addr,
        tls,
        id,
        cluster_id: s.cluster_id,
        term: s.term,
        last_log_index: s.last_log_index,
        leader: s.leader_id,
        incarnations: s.members.iter().map(|m| (m.id, m.incarnation)).collect(),
    })
}

/// Sends forged peer messages and pathological requests until `until`, a few dozen a second.
pub async fn burst(cluster: &Cluster, client: &Client, rng: &mut StdRng, until: Instant, tally: &mut Tally) {
    let mut n = 0u64;
    while Instant::now() < until && n < 2_000 {
        n += 1;
        let ids = cluster.running();
        let Some(&id) = ids.choose(rng) else { break };
        let kind = rng.gen_range(0..12);
        if kind < 6 {
            let Some(t) = target(cluster, id).await else {
                tally.unsent += 1;
                continue;
            };
            forged(&t, kind, rng, tally).await;
        } else {
            pathological(cluster, client, id, kind, rng, tally).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
    }
}

/// An encoded AppendEntries from `leader` in `term` with blank entries at the (term, index)
/// pairs given.
pub fn append(term: u64, leader: u64, prev: Option<LogId<u64>>, entries: &[(u64, u64)]) -> Vec<u8> {
    let rpc: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: prev,
        entries: entries
            .iter()
            .map(|&(t, i)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(t, leader), i),
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: None,
    };
    bincode::serialize(&rpc).expect("encode")
}

/// One forged peer message of kind `kind` (0..6) to `t`; it must be refused.
async fn forged(t: &Target, kind: u32, rng: &mut StdRng, tally: &mut Tally) {
    let from = if t.leader != 0 && t.leader != t.id { t.leader } else { t.id % 9 + 1 };
    let inc = |id: u64| t.incarnations.get(&id).copied().unwrap_or(0);
    let mut msg = pb::RaftMessage {
        payload: vec![],
        cluster_id: t.cluster_id.clone(),
        from,
        to: t.id,
        from_incarnation: inc(from),
        to_incarnation: inc(t.id),
    };
    let prev = Some(LogId::new(CommittedLeaderId::new(t.term, from), t.last_log_index));
    let (what, rpc) = match kind {
        0 => {
            msg.payload = append(u64::MAX - rng.gen_range(0..3), from, None, &[]);
            ("a heartbeat in a term near 2^64", "append")
        }
        1 => {
            msg.payload = append(t.term + 1, from, prev, &[(t.term + 1, t.last_log_index + 1)]);
            msg.to_incarnation ^= rng.gen_range(1..u64::MAX);
            ("an append for another incarnation of the receiver", "append")
        }
        2 => {
            let vote = VoteRequest { vote: Vote::new(t.term + (1 << 41), from), last_log_id: None };
            msg.payload = bincode::serialize(&vote).expect("encode");
            ("a vote request 2^41 terms ahead", "vote")
        }
        3 => {
            let len = rng.gen_range(0..4096);
            msg.payload = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                ("a garbage vote payload", "vote")
            } else {
                ("a garbage append payload", "append")
            }
        }
        4 => {
            let rpc: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
                vote: Vote::new_committed(t.term, from),
                meta: SnapshotMeta {
                    last_log_id: Some(LogId::new(CommittedLeaderId::new(t.term, from), t.last_log_index + 5)),
                    last_membership: StoredMembership::default(),
                    snapshot_id: format!("forged-{}", rng.gen::<u32>()),
                },
                offset: 0,
                data: (0..rng.gen_range(0..8192)).map(|_| rng.gen()).collect(),
                done: true,
            };
            msg.payload = bincode::serialize(&rpc).expect("encode");
            ("a one-chunk garbage snapshot", "snapshot")
        }
        _ => {
            msg.cluster_id = format!("not-{}", t.cluster_id);
            msg.payload = append(t.term, from, prev, &[]);
            ("a heartbeat from another cluster", "append")
        }
    };
    let scheme = if t.tls.is_some() { "https" } else { "http" };
    let channel = match tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", t.addr)) {
        Ok(e) => match &t.tls {
            Some(tls) => match e.connect_timeout(Duration::from_secs(1)).tls_config(tls.clone()) {
                Ok(e) => e.connect_lazy(),
                Err(_) => return,
            },
            None => e.connect_timeout(Duration::from_secs(1)).connect_lazy(),
        },
        Err(_) => return,
    };
    let mut raft = pb::raft_client::RaftClient::new(channel);
    let mut req = tonic::Request::new(msg);
    req.set_timeout(Duration::from_secs(2));
    let reply = match rpc {
        "append" => raft.append_entries(req).await,
        "vote" => raft.vote(req).await,
        _ => raft.install_snapshot(req).await,
    };
    match reply {
        Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument) => {
            tally.peer_refused += 1
        }
        Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
            tally.unsent += 1
        }
        Err(s) => tally.problems.push(format!("{what} to node {} was answered {s:?}", t.id)),
        Ok(_) => tally.problems.push(format!("{what} to node {} was ACCEPTED", t.id)),
    }
}

/// One pathological request of kind `kind` (6..12) to node `id`; it must get a typed answer.
async fn pathological(
    cluster: &Cluster,
    client: &Client,
    id: u64,
    kind: u32,
    rng: &mut StdRng,
    tally: &mut Tally,
) {
    let short = client.with_deadline(Duration::from_millis(500));
    let on_node = crate::pinned(cluster, id);
    let (what, result): (&str, Result<(), raftsql_client::Error>) = match kind {
        6 => {
            let sql = format!("SELECT 1{}", "+1".repeat(50_000));
            ("a 50,000-term expression", client.query(&sql, &[], on_node).await.map(drop))
        }
        7 => {
            let like = format!("SELECT '{}' LIKE '{}%c'", "a".repeat(64), "%a".repeat(30));
            ("a pathological LIKE", short.query(&like, &[], on_node).await.map(drop))
        }
        8 => {
            // Bytes that are SQL-ish but mostly not SQL.
            let words =
                ["SELECT", "FROM", "(", ")", "'", "WHERE", "la", "?", ";", "--", "/*", "x'00'", "9e999"];
            let sql: Vec<&str> =
                (0..rng.gen_range(1..30)).map(|_| *words.choose(rng).unwrap_or(&";")).collect();
            ("random SQL tokens", short.execute(&sql.join(" "), &[]).await.map(drop))
        }
        9 => {
            let params: Vec<Value> = (0..40_000).map(Value::Integer).collect();
            ("40,000 parameters", short.execute("SELECT ?", &params).await.map(drop))
        }
        10 => {
            // A request id reused for another request: the second must be refused.
            let seq = rng.gen_range(1..1_000_000u64);
            let client_id = format!("byzantine-{}", rng.gen::<u32>());
            let insert =
                |v: i64| vec![("INSERT INTO probe (v) VALUES (?)".to_string(), vec![Value::Integer(v)])];
            let first = short.execute_as(&client_id, seq, insert(-2), false).await;
            let second = short.execute_as(&client_id, seq, insert(-3), false).await;
            match (first, second) {
                (Ok(_), Ok(_)) => (
                    "a reused request id",
                    Err(raftsql_client::Error::Internal {
                        message: "the reuse was answered as if it were a retry".into(),
                    }),
                ),
                (_, r) => ("a reused request id", r.map(drop)),
            }
        }
        _ => {
            let sql = "SELECT count(*) FROM la a, la b, la c, la d";
            ("a huge cross join", short.query(sql, &[], on_node).await.map(drop))
        }
    };
    match result {
        Ok(()) => tally.sql_answered += 1,
        Err(e) if matches!(e.code(), "INTERNAL") => {
            tally.problems.push(format!("{what} on node {id} got INTERNAL: {e}"))
        }
        Err(e) if matches!(e.code(), "TRANSPORT") && !e.to_string().contains("deadline") => tally.unsent += 1,
        Err(_) => tally.sql_answered += 1,
    }
}
