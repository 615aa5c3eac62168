//! The workloads: concurrent clients that record what they invoked and what came back.
//!
//! Every workload runs `workers` tasks until its deadline, each one operation at a time, through
//! the nodes' advertised (proxied) addresses, so the nemesis's faults hit them. Each has its own
//! table, so the four can run side by side against one cluster:
//!
//! | workload | table | operations | checker |
//! | --- | --- | --- | --- |
//! | list-append | `la(k, v)` | transactions of 1–4 appends/reads on a few hot keys | strict serializability ([`check::check_list_append`]) |
//! | register | `reg(k, v)` | single-key writes, `STRONG` reads on any node | linearizability per key ([`check::check_register`]) |
//! | bank | `bank(id, bal)` | transfers in transactions, reads of every balance at `STRONG` or `ANY` | total constant, none negative ([`check::check_bank`]) |
//! | sessions | `sess(k, v)` | a session writes its own key, reads it at `READ_YOUR_WRITES` on any node | read-your-writes, monotonic ([`check::check_sessions`]) |
//!
//! Outcomes: `ok` on success; `fail` only for errors that prove nothing was applied (the SQL was
//! refused: syntax, type, constraint, unknown table, bad argument); anything else — timeout,
//! lost connection, no leader, `INDETERMINATE` — is `info`, and the worker continues under a new
//! process id. Reads, having no effect, are `fail` on any error.
//!
//! [`check::check_list_append`]: super::check::check_list_append
//! [`check::check_register`]: super::check::check_register
//! [`check::check_bank`]: super::check::check_bank
//! [`check::check_sessions`]: super::check::check_sessions

use super::history::{EventType, Recorder};
use raftsql_client::{Client, Consistency, Error, QueryOptions, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long one client operation may take before it is indeterminate.
pub const OP_DEADLINE: Duration = Duration::from_secs(3);

/// Accounts in the bank workload, and the money in it.
pub const BANK_ACCOUNTS: usize = 5;
pub const BANK_TOTAL: i64 = 500;

/// Hot keys of the list-append workload, and of the register workload.
const LA_KEYS: i64 = 5;
const REG_KEYS: i64 = 3;

/// The tables every workload needs, created before the nemesis starts.
pub const SETUP: &str = "CREATE TABLE la (k INTEGER PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE reg (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE bank (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
CREATE TABLE sess (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE clock (id INTEGER PRIMARY KEY, node_time TEXT NOT NULL);";

/// The bank's opening balances (SQL).
pub fn bank_setup() -> String {
    let per = BANK_TOTAL / BANK_ACCOUNTS as i64;
    let rows: Vec<String> = (0..BANK_ACCOUNTS).map(|i| format!("({i}, {per})")).collect();
    format!("INSERT INTO bank (id, bal) VALUES {}", rows.join(", "))
}

/// Whether an error proves the request had no effect.
pub fn definite(e: &Error) -> bool {
    matches!(
        e,
        Error::Syntax { .. }
            | Error::Unsupported { .. }
            | Error::Type { .. }
            | Error::Constraint { .. }
            | Error::NotFound { .. }
            | Error::InvalidArgument { .. }
            | Error::Token { .. }
            | Error::NoAddress
    )
}

fn outcome_of_write(e: &Error) -> EventType {
    if definite(e) {
        EventType::Fail
    } else {
        EventType::Info
    }
}

/// Records the completion of a write; returns the process to go on under (a fresh one after
/// `info`: the indeterminate operation may still take effect, so this process never completes).
fn complete<T>(rec: &Recorder, process: u64, f: &str, value: Json, result: Result<T, Error>) -> u64 {
    match result {
        Ok(_) => {
            rec.record(EventType::Ok, process, f, value, None);
            process
        }
        Err(e) => {
            let kind = outcome_of_write(&e);
            rec.record(kind, process, f, value, Some(format!("{}: {e}", e.code())));
            if kind == EventType::Info {
                rec.new_process()
            } else {
                process
            }
        }
    }
}

/// What every worker shares.
#[derive(Clone)]
pub struct Env {
    /// A client over the advertised (proxied) addresses, with [`OP_DEADLINE`].
    pub client: Client,
    /// The advertised addresses, to pin reads to one node.
    pub addrs: Vec<String>,
    pub deadline: Instant,
    pub seed: u64,
    /// The level of the register workload's reads: `Strong`, unless a run weakens it on
    /// purpose to show that the checker catches the stale reads that follow.
    pub register_reads: Consistency,
}

impl Env {
    fn rng(&self, worker: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(worker))
    }

    fn done(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn any_node(&self, rng: &mut StdRng) -> Option<String> {
        (!self.addrs.is_empty()).then(|| self.addrs[rng.gen_range(0..self.addrs.len())].clone())
    }
}

/// A small pause between operations so a handful of workers do not saturate two cores.
async fn think(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..8))).await;
}

fn parse_list(text: &str) -> Json {
    Json::Array(text.split_whitespace().filter_map(|t| t.parse::<i64>().ok()).map(Json::from).collect())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// List-append (Elle): each transaction appends unique values to, and reads, a few hot keys.
pub async fn list_append(env: Env, rec: Recorder, worker: u64, next_value: Arc<AtomicI64>) {
    let mut rng = env.rng(worker);
    let mut process = rec.new_process();
    while !env.done() {
        let n = rng.gen_range(1..=4);
        let mut mops = Vec::new();
        for _ in 0..n {
            let k = rng.gen_range(0..LA_KEYS);
            if rng.gen_bool(0.5) {
                mops.push(json!(["append", k, next_value.fetch_add(1, Ordering::Relaxed)]));
            } else {
                mops.push(json!(["r", k, null]));
            }
        }
        rec.invoke(process, "txn", Json::Array(mops.clone()));
        let only_read = mops.len() == 1 && mops[0][0] == "r";
        let result = if only_read && rng.gen_bool(0.5) {
            // A lone read also goes through the query path, at STRONG on any node.
            let k = mops[0][1].as_i64().unwrap_or(0);
            let opts = QueryOptions {
                consistency: Consistency::Strong,
                node: env.any_node(&mut rng),
                ..Default::default()
            };
            env.client.query("SELECT v FROM la WHERE k = ?", &[Value::Integer(k)], opts).await.map(|r| {
                let list = r.rows.first().and_then(|row| row.first()).map(|v| match v {
                    Value::Text(t) => parse_list(t),
                    _ => json!([]),
                });
                vec![json!(["r", k, list.unwrap_or_else(|| json!([]))])]
            })
        } else {
            run_la_txn(&env.client, &mops).await
        };
        match result {
            Ok(done) => {
                rec.record(EventType::Ok, process, "txn", Json::Array(done), None);
            }
            Err(e) => {
                let kind =
                    if mops.iter().all(|m| m[0] == "r") { EventType::Fail } else { outcome_of_write(&e) };
                rec.record(kind, process, "txn", Json::Array(mops), Some(format!("{}: {e}", e.code())));
                if kind == EventType::Info {
                    process = rec.new_process();
                }
            }
        }
        think(&mut rng).await;
    }
}

/// Runs one list-append transaction as one atomic request; returns the micro-ops with reads
/// filled in.
async fn run_la_txn(client: &Client, mops: &[Json]) -> Result<Vec<Json>, Error> {
    let mut statements = Vec::new();
    // For each micro-op, the index of the statement whose result it reads (reads only).
    let mut read_at = Vec::new();
    for m in mops {
        let k = m[1].as_i64().unwrap_or(0);
        if m[0] == "append" {
            let v = m[2].as_i64().unwrap_or(0);
            statements.push((
                "INSERT OR IGNORE INTO la (k, v) VALUES (?, '')".to_string(),
                vec![Value::Integer(k)],
            ));
            statements.push((
                "UPDATE la SET v = v || ' ' || ? WHERE k = ?".to_string(),
                vec![Value::Text(v.to_string()), Value::Integer(k)],
            ));
            read_at.push(None);
        } else {
            read_at.push(Some(statements.len()));
            statements.push(("SELECT v FROM la WHERE k = ?".to_string(), vec![Value::Integer(k)]));
        }
    }
    let r = client.execute_batch(statements, true).await?;
    let mut out = Vec::new();
    for (m, at) in mops.iter().zip(read_at) {
        match at {
            None => out.push(m.clone()),
            Some(i) => {
                let res = match r.results.get(i) {
                    Some(Ok(res)) => res,
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err(Error::Internal { message: format!("no result for statement {i}") }),
                };
                let list = match res.rows.first().and_then(|row| row.first()) {
                    Some(Value::Text(t)) => parse_list(t),
                    _ => json!([]),
                };
                out.push(json!(["r", m[1], list]));
            }
        }
    }
    Ok(out)
}

/// Registers: unique writes per key, `STRONG` reads pinned to a random node (which redirects).
pub async fn register(env: Env, rec: Recorder, worker: u64, next_value: Arc<AtomicI64>) {
    let mut rng = env.rng(worker + 100);
    let mut process = rec.new_process();
    while !env.done() {
        let k = rng.gen_range(0..REG_KEYS);
        if rng.gen_bool(0.5) {
            let v = next_value.fetch_add(1, Ordering::Relaxed);
            rec.invoke(process, "write", json!({"key": k, "value": v}));
            let r = env
                .client
                .execute(
                    "INSERT OR REPLACE INTO reg (k, v) VALUES (?, ?)",
                    &[Value::Integer(k), Value::Integer(v)],
                )
                .await;
            process = complete(&rec, process, "write", json!({"key": k, "value": v}), r);
        } else {
            rec.invoke(process, "read", json!({"key": k, "value": null}));
            let opts = QueryOptions {
                consistency: env.register_reads,
                node: env.any_node(&mut rng),
                ..Default::default()
            };
            match env.client.query("SELECT v FROM reg WHERE k = ?", &[Value::Integer(k)], opts).await {
                Ok(r) => {
                    let v = r.rows.first().and_then(|row| row.first()).and_then(int);
                    rec.record(EventType::Ok, process, "read", json!({"key": k, "value": v}), None);
                }
                Err(e) => {
                    rec.record(
                        EventType::Fail,
                        process,
                        "read",
                        json!({"key": k, "value": null}),
                        Some(format!("{}: {e}", e.code())),
                    );
                }
            }
        }
        think(&mut rng).await;
    }
}

/// Bank: transfers that refuse to overdraw (the debit sets NULL into a NOT NULL column, which
/// aborts the whole transaction), and reads of every balance.
pub async fn bank(env: Env, rec: Recorder, worker: u64) {
    let mut rng = env.rng(worker + 200);
    let mut process = rec.new_process();
    while !env.done() {
        if rng.gen_bool(0.6) {
            let from = rng.gen_range(0..BANK_ACCOUNTS as i64);
            let to = (from + rng.gen_range(1..BANK_ACCOUNTS as i64)) % BANK_ACCOUNTS as i64;
            let amount = rng.gen_range(1..=30);
            let value = json!({"from": from, "to": to, "amount": amount});
            rec.invoke(process, "transfer", value.clone());
            let statements = vec![
                (
                    "UPDATE bank SET bal = CASE WHEN bal >= ? THEN bal - ? ELSE NULL END WHERE id = ?"
                        .to_string(),
                    vec![Value::Integer(amount), Value::Integer(amount), Value::Integer(from)],
                ),
                (
                    "UPDATE bank SET bal = bal + ? WHERE id = ?".to_string(),
                    vec![Value::Integer(amount), Value::Integer(to)],
                ),
            ];
            // A refused debit fails the transaction as a whole: nothing applied.
            let r = env.client.execute_batch(statements, true).await.and_then(|r| {
                match r.results.into_iter().find_map(|s| s.err()) {
                    None => Ok(()),
                    Some(e) => Err(e),
                }
            });
            process = complete(&rec, process, "transfer", value, r);
        } else {
            rec.invoke(process, "read", Json::Null);
            let consistency = if rng.gen_bool(0.5) { Consistency::Strong } else { Consistency::Any };
            let opts = QueryOptions { consistency, node: env.any_node(&mut rng), ..Default::default() };
            match env.client.query("SELECT id, bal FROM bank", &[], opts).await {
                Ok(r) => {
                    let mut balances = serde_json::Map::new();
                    for row in &r.rows {
                        let (Some(id), Some(bal)) = (row.first().and_then(int), row.get(1).and_then(int))
                        else {
                            continue;
                        };
                        balances.insert(id.to_string(), json!(bal));
                    }
                    rec.record(EventType::Ok, process, "read", json!({"balances": balances}), None);
                }
                Err(e) => {
                    rec.record(
                        EventType::Fail,
                        process,
                        "read",
                        Json::Null,
                        Some(format!("{}: {e}", e.code())),
                    );
                }
            }
        }
        think(&mut rng).await;
    }
}

/// Sessions: session `s` owns key `s`, writes 1, 2, 3, ... to it and reads it back at
/// `READ_YOUR_WRITES` from random nodes, carrying its token across indeterminate outcomes.
pub async fn sessions(env: Env, rec: Recorder, session: u64) {
    let mut rng = env.rng(session + 300);
    let mut process = rec.new_process();
    let s = env.client.session();
    let k = session as i64;
    let mut next = 1i64;
    while !env.done() {
        if rng.gen_bool(0.4) {
            let v = next;
            next += 1;
            let value = json!({"session": session, "key": k, "value": v});
            rec.invoke(process, "write", value.clone());
            let r = s
                .execute(
                    "INSERT OR REPLACE INTO sess (k, v) VALUES (?, ?)",
                    &[Value::Integer(k), Value::Integer(v)],
                )
                .await;
            process = complete(&rec, process, "write", value, r);
        } else {
            rec.invoke(process, "read", json!({"session": session, "key": k, "value": null, "index": null}));
            let opts = QueryOptions {
                consistency: Consistency::ReadYourWrites,
                node: env.any_node(&mut rng),
                ..Default::default()
            };
            match s.query("SELECT v FROM sess WHERE k = ?", &[Value::Integer(k)], opts).await {
                Ok(r) => {
                    let v = r.rows.first().and_then(|row| row.first()).and_then(int);
                    let value = json!({"session": session, "key": k, "value": v, "index": r.receipt.index});
                    rec.record(EventType::Ok, process, "read", value, None);
                }
                Err(e) => {
                    let value = json!({"session": session, "key": k, "value": null, "index": null});
                    rec.record(EventType::Fail, process, "read", value, Some(format!("{}: {e}", e.code())));
                }
            }
        }
        think(&mut rng).await;
    }
}

/// Rows stamped with `NOW()` by whichever node leads (the clock-skew schedule compares them
/// across replicas). Not checked against a history: only convergence matters.
pub async fn clock_rows(env: Env, worker: u64) -> u64 {
    let mut rng = env.rng(worker + 400);
    let mut written = 0;
    while !env.done() {
        if env.client.execute("INSERT INTO clock (node_time) VALUES (NOW())", &[]).await.is_ok() {
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..60))).await;
    }
    written
}
