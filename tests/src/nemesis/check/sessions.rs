//! [`check_sessions`]: read-your-writes, monotonic reads and monotonic receipts per session;
//! what it checks is in the parent module's doc.

use super::{field, int_field, name_of, operations, opt_int, Counts, Verdict};
use crate::nemesis::history::{Event, EventType};
use std::collections::{BTreeMap, HashMap};

/// One operation of a session.
struct SessionOp {
    op: usize,
    write: bool,
    /// The written value, or the value read (ok reads only).
    value: Option<i64>,
    /// The read's receipt index.
    index: Option<i64>,
}

/// Checks read-your-writes, monotonic reads and monotonic receipt indexes per session; see the
/// module doc.
pub fn check_sessions(events: &[Event]) -> Verdict {
    const CHECKER: &str = "sessions";
    let ops = match operations(CHECKER, events, &["read", "write"]) {
        Ok(ops) => ops,
        Err(v) => return v,
    };
    let counts = Counts::of(&ops);
    let mut sessions: BTreeMap<String, (String, Vec<SessionOp>)> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (at, v) = (op.invoke.index, &op.invoke.value);
        let (Some(session), Some(key)) = (name_of(field(v, "session")), name_of(field(v, "key"))) else {
            errors.push(format!("event {at}: value {v} lacks a \"session\" or \"key\""));
            continue;
        };
        let mut s = SessionOp { op: i, write: op.invoke.f == "write", value: None, index: None };
        if s.write {
            match int_field(v, "value") {
                Ok(x) => s.value = Some(x),
                Err(e) => errors.push(format!("event {at}: {e}")),
            }
        } else if let Some(c) = op.completion.filter(|c| c.kind == EventType::Ok) {
            if name_of(field(&c.value, "session")).is_some_and(|x| x != session) {
                errors.push(format!("event {}: completion names another session than event {at}", c.index));
            }
            match (opt_int(&c.value, "value"), opt_int(&c.value, "index")) {
                _ if field(&c.value, "value").is_none() => {
                    errors.push(format!("event {}: read returned {}, without \"value\"", c.index, c.value))
                }
                (Ok(x), Ok(index)) => (s.value, s.index) = (x, index),
                (Err(e), _) | (_, Err(e)) => errors.push(format!("event {}: {e}", c.index)),
            }
        }
        let entry = sessions.entry(session.clone()).or_insert_with(|| (key.clone(), Vec::new()));
        if entry.0 != key {
            errors.push(format!("event {at}: session {session} uses key {key}, but it owns key {}", entry.0));
        }
        entry.1.push(s);
    }
    for (session, (_, list)) in &sessions {
        let mut last: Option<(i64, u64)> = None;
        for s in list.iter().filter(|s| s.write) {
            let (v, at) = (s.value.unwrap_or(i64::MIN), ops[s.op].invoke.index);
            if let Some((prev, prev_at)) = last.filter(|(prev, _)| v <= *prev) {
                errors.push(format!(
                    "event {at}: session {session} writes {v} after writing {prev} at event {prev_at}; its values must increase"
                ));
            }
            last = Some((v, at));
        }
    }
    if !errors.is_empty() {
        return Verdict::malformed(CHECKER, counts.completed(), errors);
    }

    let show = |v: Option<i64>| v.map_or("null".to_string(), |v| v.to_string());
    let mut anomalies = Vec::new();
    let mut reads_checked = 0;
    for (session, (key, list)) in &sessions {
        let writes: Vec<&SessionOp> = list.iter().filter(|s| s.write).collect();
        let by_value: HashMap<i64, &SessionOp> = writes.iter().filter_map(|w| Some((w.value?, *w))).collect();
        // Ok writes by completion, each with the largest one completed by then.
        let mut acked: Vec<(usize, &SessionOp)> =
            writes.iter().filter(|w| ops[w.op].is(EventType::Ok)).map(|w| (ops[w.op].end(), *w)).collect();
        acked.sort_by_key(|(end, _)| *end);
        for i in 1..acked.len() {
            if acked[i].1.value < acked[i - 1].1.value {
                acked[i].1 = acked[i - 1].1;
            }
        }
        let mut reads: Vec<&SessionOp> =
            list.iter().filter(|s| !s.write && ops[s.op].is(EventType::Ok)).collect();
        reads.sort_by_key(|s| ops[s.op].end());
        // The largest value and receipt index read so far, with the read that returned them.
        let mut top_value: Option<(Option<i64>, usize)> = None;
        let mut top_index: Option<(i64, usize)> = None;
        for r in reads {
            reads_checked += 1;
            let read = &ops[r.op];
            let name =
                || format!("session {session} (key {key}): read {} returned {}", read.span(), show(r.value));
            let done = acked.partition_point(|(end, _)| *end < read.inv_pos);
            if let Some((_, w)) = done.checked_sub(1).map(|i| acked[i]).filter(|(_, w)| r.value < w.value) {
                anomalies.push(format!(
                    "{}, missing its own write of {} {} (read-your-writes)",
                    name(),
                    show(w.value),
                    ops[w.op].span()
                ));
            }
            if let Some(v) = r.value {
                let possible =
                    |w: &SessionOp| ops[w.op].may_have_happened() && ops[w.op].inv_pos < read.end();
                if !by_value.get(&v).is_some_and(|w| possible(w)) {
                    let why = match by_value.get(&v) {
                        Some(w) if ops[w.op].is(EventType::Fail) => {
                            format!("its write {} failed", ops[w.op].span())
                        }
                        Some(w) => format!("its write {} was invoked only afterwards", ops[w.op].span()),
                        None => {
                            let max = writes.iter().filter(|w| possible(w)).filter_map(|w| w.value).max();
                            match max {
                                Some(m) if v < m => "the session never wrote it".to_string(),
                                _ => format!("the session had written at most {} by then", show(max)),
                            }
                        }
                    };
                    anomalies.push(format!("{}, but {why}", name()));
                }
            }
            match top_value {
                Some((v, at)) if r.value < v => anomalies.push(format!(
                    "{}, after its read {} returned {} (monotonic reads)",
                    name(),
                    ops[at].span(),
                    show(v)
                )),
                _ => top_value = Some((r.value, r.op)),
            }
            if let Some(i) = r.index {
                match top_index {
                    Some((top, at)) if i < top => anomalies.push(format!(
                        "{} at receipt index {i}, after its read {} at index {top} (monotonic receipts)",
                        name(),
                        ops[at].span()
                    )),
                    _ => top_index = Some((i, r.op)),
                }
            }
        }
    }
    let summary = format!(
        "{} sessions, {reads_checked} ok reads checked: {counts}; {} violation(s)",
        sessions.len(),
        anomalies.len()
    );
    Verdict::new(CHECKER, counts.completed(), summary, anomalies)
}
