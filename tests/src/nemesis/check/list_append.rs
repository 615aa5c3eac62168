//! [`check_list_append`]: strict serializability of list-append transactions, with `adya`
//! (Elle); what it checks and how is in the parent module's doc.

use super::{kind_name, operations, Counts, Op, Verdict};
use crate::nemesis::history::{Event, EventType};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
enum Mop {
    Append {
        key: i64,
        value: i64,
    },
    /// `None`: not known (an invocation, or an indeterminate completion).
    Read {
        key: i64,
        value: Option<Vec<i64>>,
    },
}

impl Mop {
    fn to_json(&self) -> Value {
        match self {
            Mop::Append { key, value } => json!(["append", key, value]),
            Mop::Read { key, value } => json!(["r", key, value]),
        }
    }

    /// The same micro-op with its read result forgotten.
    fn unread(&self) -> Mop {
        match self {
            Mop::Read { key, .. } => Mop::Read { key: *key, value: None },
            m => m.clone(),
        }
    }
}

fn parse_txn(v: &Value) -> Result<Vec<Mop>, String> {
    let mops = v.as_array().ok_or_else(|| format!("value {v} is not an array of micro-ops"))?;
    mops.iter().map(parse_mop).collect()
}

fn parse_mop(m: &Value) -> Result<Mop, String> {
    let parts =
        m.as_array().filter(|a| a.len() == 3).ok_or_else(|| format!("micro-op {m} is not [f, k, v]"))?;
    let key = parts[1].as_i64().ok_or_else(|| format!("micro-op {m}: the key is not an integer"))?;
    match parts[0].as_str() {
        Some("append") => {
            let value = parts[2]
                .as_i64()
                .ok_or_else(|| format!("micro-op {m}: appends an element that is not an integer"))?;
            Ok(Mop::Append { key, value })
        }
        Some("r") => {
            let value = match &parts[2] {
                Value::Null => None,
                Value::Array(xs) => Some(
                    xs.iter()
                        .map(|x| x.as_i64().ok_or_else(|| format!("micro-op {m}: read a non-integer {x}")))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                x => return Err(format!("micro-op {m}: read {x}, not a list or null")),
            };
            Ok(Mop::Read { key, value })
        }
        _ => Err(format!("micro-op {m}: unknown function {} (want \"append\" or \"r\")", parts[0])),
    }
}

/// A completion's transaction, if it is well formed and matches the invocation's micro-ops.
fn completed_txn(invoked: &[Mop], v: &Value) -> Result<Vec<Mop>, String> {
    let done = parse_txn(v)?;
    let same = done.len() == invoked.len()
        && done.iter().zip(invoked).all(|(d, i)| match (d, i) {
            (Mop::Read { key: a, .. }, Mop::Read { key: b, .. }) => a == b,
            (d, i) => d == i,
        });
    if !same {
        return Err(format!("completion {v} does not match its invocation's micro-ops"));
    }
    Ok(done)
}

/// Checks list-append transactions (`f = "txn"`) for strict serializability; see the module
/// doc.
pub fn check_list_append(events: &[Event]) -> Verdict {
    const CHECKER: &str = "list-append";
    let ops = match operations(CHECKER, events, &["txn"]) {
        Ok(ops) => ops,
        Err(v) => return v,
    };
    let counts = Counts::of(&ops);

    // Each operation's transaction as the checker sees it: the completion's for ok (reads
    // known), the invocation's otherwise (reads unknown: an indeterminate transaction's reads
    // prove nothing, even if the client recorded some).
    let mut errors = Vec::new();
    let mut txns: Vec<Vec<Mop>> = Vec::with_capacity(ops.len());
    for op in &ops {
        let invoked = match parse_txn(&op.invoke.value) {
            Ok(t) => t.iter().map(Mop::unread).collect::<Vec<_>>(),
            Err(e) => {
                errors.push(format!("event {}: {e}", op.invoke.index));
                txns.push(Vec::new());
                continue;
            }
        };
        let txn = match op.completion {
            Some(c) if c.kind == EventType::Ok => match completed_txn(&invoked, &c.value) {
                // On an ok completion a null read is the initial, empty list (Elle's reading).
                Ok(t) => t
                    .into_iter()
                    .map(|m| match m {
                        Mop::Read { key, value: None } => Mop::Read { key, value: Some(Vec::new()) },
                        m => m,
                    })
                    .collect(),
                Err(e) => {
                    errors.push(format!("event {}: {e}", c.index));
                    invoked
                }
            },
            _ => invoked,
        };
        txns.push(txn);
    }

    // Unique appends: the premise every inference rests on.
    let mut appender: HashMap<(i64, i64), u64> = HashMap::new();
    for (op, txn) in ops.iter().zip(&txns) {
        for m in txn {
            if let Mop::Append { key, value } = m {
                if let Some(first) = appender.insert((*key, *value), op.invoke.index) {
                    errors.push(format!(
                        "event {}: appends {value} to key {key}, already appended by event {first}; appends must be unique",
                        op.invoke.index
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Verdict::malformed(CHECKER, counts.completed(), errors);
    }

    // What adya does not check: garbage, and duplicates within one read (which adya reports
    // too, but only on a history it fully accepts).
    let mut anomalies = Vec::new();
    let mut duplicates = Vec::new();
    for (op, txn) in ops.iter().zip(&txns) {
        for m in txn {
            let Mop::Read { key, value: Some(list) } = m else { continue };
            let at = op.completion.map_or(op.invoke.index, |c| c.index);
            let mut seen = HashSet::new();
            let dups: Vec<i64> = list.iter().filter(|e| !seen.insert(**e)).copied().collect();
            if !dups.is_empty() {
                duplicates.push(format!(
                    "duplicate-elements: {} read key {key} as {list:?}, which holds {dups:?} more than once",
                    op.span()
                ));
            }
            let garbage: Vec<i64> =
                list.iter().filter(|e| !appender.contains_key(&(*key, **e))).copied().collect();
            if !garbage.is_empty() {
                anomalies.push(format!(
                    "garbage-read: event {at} read key {key} as {list:?}, but no operation ever appended {garbage:?} to it"
                ));
            }
        }
    }

    let report = match adya_check(events, &ops, &txns) {
        Ok(r) => r,
        Err(e) => return Verdict::malformed(CHECKER, counts.completed(), vec![e]),
    };
    if !report.anomalies.contains_key("duplicate-elements") {
        anomalies.append(&mut duplicates);
    }
    let mut summary = format!("{} txns: {counts}", ops.len());
    match report.valid {
        adya::Valid::True => summary.push_str("; strict-serializable per adya"),
        adya::Valid::False => {
            summary.push_str(&format!("; not strict-serializable: {}", report.anomaly_types.join(", ")));
            if !report.not.is_empty() {
                summary.push_str(&format!(" (not {})", report.not.join(", ")));
            }
        }
        adya::Valid::Unknown => {
            let why: Vec<&str> =
                report.anomalies.values().flatten().map(|a| a.explanation.as_str()).collect();
            summary.push_str(&format!("; unknown: {}", why.join("; ")));
            if report.anomalies.contains_key("cycle-search-timeout") {
                anomalies.push(format!(
                    "cycle-search-timeout: adya gave up; the history cannot be vouched for: {}",
                    why.join("; ")
                ));
            }
        }
    }
    if report.valid == adya::Valid::False {
        for (kind, list) in &report.anomalies {
            for a in list {
                let mut ids: Vec<String> = a.ops.iter().take(10).map(|i| i.to_string()).collect();
                if a.ops.len() > 10 {
                    ids.push(format!("... {} in all", a.ops.len()));
                }
                let at = if ids.is_empty() { String::new() } else { format!(" (events {})", ids.join(", ")) };
                anomalies.push(format!("{kind}{at}: {}", a.explanation.trim_end()));
            }
        }
    }
    if !anomalies.is_empty() && report.valid != adya::Valid::False {
        summary.push_str(&format!("; {} anomalies found by this checker", anomalies.len()));
    }
    Verdict::new(CHECKER, counts.completed(), summary, anomalies)
}

/// Renders the history as `adya` wants it (fail and info completions carry the invocation's
/// transaction; unanswered invocations get an info completion at the end) and checks it.
fn adya_check(events: &[Event], ops: &[Op], txns: &[Vec<Mop>]) -> Result<adya::Report, String> {
    let mut by_pos: HashMap<usize, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_pos.insert(op.inv_pos, i);
        if let Some(p) = op.end_pos {
            by_pos.insert(p, i);
        }
    }
    let txn_json = |i: usize, known: bool| -> Value {
        Value::Array(txns[i].iter().map(|m| if known { m.to_json() } else { m.unread().to_json() }).collect())
    };
    let process = |p: u64| i64::try_from(p).map_err(|_| format!("process id {p} is too large"));
    let mut lines = Vec::with_capacity(events.len() + 8);
    for (pos, e) in events.iter().enumerate() {
        let i = by_pos[&pos];
        let value = txn_json(i, e.kind != EventType::Invoke);
        lines.push(json!({"index": e.index, "type": kind_name(e.kind), "process": process(e.process)?,
                          "f": "txn", "value": value}));
    }
    let first_free = events.iter().map(|e| e.index + 1).max().unwrap_or(0);
    let open = ops.iter().enumerate().filter(|(_, op)| op.completion.is_none());
    for (index, (i, op)) in (first_free..).zip(open) {
        lines.push(json!({"index": index, "type": "info", "process": process(op.invoke.process)?,
                          "f": "txn", "value": txn_json(i, false)}));
    }
    let h = adya::History::from_json(&Value::Array(lines).to_string()).map_err(|e| format!("adya: {e}"))?;
    let opts = adya::Opts {
        models: vec!["strict-serializable".into()],
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    Ok(adya::check(&h, adya::Workload::ListAppend, &opts))
}
