//! [`check_register`]: linearizability of single-key registers, with `todc_utils`' WGL search;
//! what it checks and how is in the parent module's doc.

use super::{field, int_field, name_of, operations, opt_int, Counts, Op, Verdict};
use crate::nemesis::history::{Event, EventType};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::{Specification, WGLChecker};

/// How long [`check_register`] searches one key before calling it unknown.
pub const REGISTER_KEY_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for `todc_utils`' memo of explored states (a bitmap per state): the step cap per key.
const WGL_CACHE_BYTES: u64 = 1 << 29;

/// A register operation as the WGL search sees it: a read with the value it returned (`None`:
/// the row did not exist), or a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegisterOp {
    Read(Option<i64>),
    Write(i64),
}

/// A register holding nothing (the row does not exist) until the first write.
struct RegisterSpec;

thread_local! {
    /// The running search's budget: (deadline, steps left, exhausted). `Specification::apply`
    /// takes no `self`, so this is how a search learns it must stop: once exhausted, every
    /// operation is refused and the search unwinds to "not linearizable", which
    /// [`wgl`] then reports as unknown.
    static BUDGET: Cell<(Option<Instant>, u64, bool)> = const { Cell::new((None, u64::MAX, false)) };
}

fn budget_exhausted() -> bool {
    BUDGET.with(|b| {
        let (deadline, left, exhausted) = b.get();
        if exhausted {
            return true;
        }
        let late = left % 1024 == 0 && deadline.is_some_and(|d| Instant::now() > d);
        if left == 0 || late {
            b.set((deadline, left, true));
            return true;
        }
        b.set((deadline, left - 1, false));
        false
    })
}

impl Specification for RegisterSpec {
    type State = Option<i64>;
    type Operation = RegisterOp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &RegisterOp, state: &Option<i64>) -> (bool, Option<i64>) {
        if budget_exhausted() {
            return (false, *state);
        }
        match op {
            RegisterOp::Read(v) => (v == state, *state),
            RegisterOp::Write(v) => (true, Some(*v)),
        }
    }
}

enum Linearizable {
    Yes,
    No,
    Unknown(String),
}

/// Runs the WGL search over `actions` within a deadline and a step cap.
fn wgl(actions: Vec<(usize, Action<RegisterOp>)>, deadline: Instant) -> Linearizable {
    if actions.is_empty() {
        return Linearizable::Yes;
    }
    let steps = WGL_CACHE_BYTES / (actions.len() as u64 + 64);
    let start = Instant::now();
    BUDGET.with(|b| b.set((Some(deadline), steps, false)));
    let result = std::panic::catch_unwind(|| {
        WGLChecker::<RegisterSpec>::is_linearizable(History::from_actions(actions))
    });
    let (_, left, exhausted) = BUDGET.with(|b| b.replace((None, u64::MAX, false)));
    match result {
        Err(_) => Linearizable::Unknown("the WGL search panicked".into()),
        Ok(true) => Linearizable::Yes,
        Ok(false) if exhausted => Linearizable::Unknown(format!(
            "the search gave up after {} steps in {:.1?}",
            steps - left,
            start.elapsed()
        )),
        Ok(false) => Linearizable::No,
    }
}

/// One register operation of a key: the index into the operations, and what it did.
#[derive(Clone, Copy)]
struct KeyOp {
    op: usize,
    f: RegisterOp,
}

/// The WGL history of one key, cut at history position `cut`: operations invoked at or after
/// it are left out; those not completed ok before it count as pending (writes may take effect
/// at any later point, reads are dropped). Fail is dropped, and so is a pending write whose
/// value no read returned.
fn key_history(
    ops: &[Op],
    key_ops: &[KeyOp],
    cut: usize,
    observed: &HashSet<i64>,
) -> Vec<(usize, Action<RegisterOp>)> {
    // (position, tiebreak, process, action); pending responses go after everything.
    let mut entries: Vec<(usize, usize, usize, Action<RegisterOp>)> = Vec::new();
    for (pid, k) in key_ops.iter().enumerate() {
        let op = &ops[k.op];
        if op.inv_pos >= cut || op.is(EventType::Fail) {
            continue;
        }
        let done = op.is(EventType::Ok) && op.end() < cut;
        let response = match (k.f, done) {
            (_, true) => op.end(),
            (RegisterOp::Write(v), false) if observed.contains(&v) => usize::MAX,
            _ => continue,
        };
        entries.push((op.inv_pos, 0, pid, Action::Call(k.f)));
        entries.push((response, pid, pid, Action::Response(k.f)));
    }
    entries.sort_by_key(|e| (e.0, e.1));
    entries.into_iter().map(|(_, _, pid, action)| (pid, action)).collect()
}

/// Checks every key's register operations for linearizability; see the module doc.
pub fn check_register(events: &[Event]) -> Verdict {
    check_register_within(events, REGISTER_KEY_TIMEOUT)
}

/// [`check_register`] with a search deadline per key (and as much again to diagnose a key
/// found not linearizable).
pub fn check_register_within(events: &[Event], key_timeout: Duration) -> Verdict {
    const CHECKER: &str = "register";
    let ops = match operations(CHECKER, events, &["read", "write"]) {
        Ok(ops) => ops,
        Err(v) => return v,
    };
    let counts = Counts::of(&ops);
    let mut keys: BTreeMap<String, Vec<KeyOp>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let at = op.invoke.index;
        let Some(key) = name_of(field(&op.invoke.value, "key")) else {
            errors.push(format!("event {at}: value {} has no integer or string \"key\"", op.invoke.value));
            continue;
        };
        let f = if op.invoke.f == "write" {
            match int_field(&op.invoke.value, "value") {
                Ok(v) => RegisterOp::Write(v),
                Err(e) => {
                    errors.push(format!("event {at}: {e}"));
                    continue;
                }
            }
        } else {
            let mut value = None;
            if let Some(c) = op.completion.filter(|c| c.kind == EventType::Ok) {
                if name_of(field(&c.value, "key")).is_some_and(|k| k != key) {
                    errors.push(format!(
                        "event {}: read answers a different key than event {at} asked",
                        c.index
                    ));
                }
                match opt_int(&c.value, "value") {
                    Ok(v) if field(&c.value, "value").is_some() => value = v,
                    Ok(_) => errors
                        .push(format!("event {}: read returned {}, without \"value\"", c.index, c.value)),
                    Err(e) => errors.push(format!("event {}: {e}", c.index)),
                }
            }
            RegisterOp::Read(value)
        };
        keys.entry(key).or_default().push(KeyOp { op: i, f });
    }
    for (key, key_ops) in &keys {
        let mut writer = HashMap::new();
        for k in key_ops {
            if let RegisterOp::Write(v) = k.f {
                if let Some(first) = writer.insert(v, ops[k.op].invoke.index) {
                    errors.push(format!(
                        "event {}: writes {v} to key {key}, as event {first} did; written values must be unique per key",
                        ops[k.op].invoke.index
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Verdict::malformed(CHECKER, counts.completed(), errors);
    }

    let mut anomalies = Vec::new();
    let mut unknown = Vec::new();
    let mut bad_keys = 0;
    for (key, key_ops) in &keys {
        let found = anomalies.len();
        let writes: HashMap<i64, &Op> = key_ops
            .iter()
            .filter_map(|k| match k.f {
                RegisterOp::Write(v) => Some((v, &ops[k.op])),
                RegisterOp::Read(_) => None,
            })
            .collect();
        let mut observed = HashSet::new();
        for k in key_ops.iter().filter(|k| ops[k.op].is(EventType::Ok)) {
            let RegisterOp::Read(Some(v)) = k.f else { continue };
            observed.insert(v);
            let read = &ops[k.op];
            let why = match writes.get(&v) {
                None => "no operation ever wrote it".to_string(),
                Some(w) if w.is(EventType::Fail) => format!("its write {} failed", w.span()),
                Some(w) if w.inv_pos > read.end() => {
                    format!("its write {} was invoked only afterwards", w.span())
                }
                Some(_) => continue,
            };
            anomalies.push(format!("key {key}: read {} returned {v}, but {why}", read.span()));
        }
        if anomalies.len() > found {
            bad_keys += 1;
            continue;
        }
        let deadline = Instant::now() + key_timeout;
        match wgl(key_history(&ops, key_ops, usize::MAX, &observed), deadline) {
            Linearizable::Yes => {}
            Linearizable::Unknown(why) => unknown.push(format!("key {key}: unknown: {why}")),
            Linearizable::No => {
                bad_keys += 1;
                let deadline = Instant::now() + key_timeout;
                anomalies.push(match first_violation(&ops, key_ops, &observed, deadline) {
                    Some(culprit) => excerpt(key, &ops, key_ops, culprit),
                    None => format!(
                        "key {key}: not linearizable ({} operations; locating the first violation ran out of time)",
                        key_ops.len()
                    ),
                });
            }
        }
    }
    let mut summary = format!("{} ops on {} keys: {counts}", ops.len(), keys.len());
    if anomalies.is_empty() && unknown.is_empty() {
        summary.push_str("; every key linearizable");
    }
    if bad_keys > 0 {
        summary.push_str(&format!("; {bad_keys} key(s) not linearizable"));
    }
    if !unknown.is_empty() {
        summary.push_str(&format!("; {} key(s) unknown (search budget exhausted)", unknown.len()));
    }
    anomalies.extend(unknown);
    Verdict::new(CHECKER, counts.completed(), summary, anomalies)
}

/// The key operation whose ok completion first makes the key's history non-linearizable
/// (binary search over prefixes; non-linearizability is prefix-closed).
fn first_violation(
    ops: &[Op],
    key_ops: &[KeyOp],
    observed: &HashSet<i64>,
    deadline: Instant,
) -> Option<usize> {
    let mut ends: Vec<(usize, usize)> = key_ops
        .iter()
        .enumerate()
        .filter(|(_, k)| ops[k.op].is(EventType::Ok))
        .map(|(i, k)| (ops[k.op].end(), i))
        .collect();
    ends.sort_unstable();
    let (mut lo, mut hi) = (0, ends.len().checked_sub(1)?);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match wgl(key_history(ops, key_ops, ends[mid].0 + 1, observed), deadline) {
            Linearizable::No => hi = mid,
            Linearizable::Yes => lo = mid + 1,
            Linearizable::Unknown(_) => return None,
        }
    }
    Some(ends[lo].1)
}

/// The anomaly for a key whose history first fails at `culprit`: that operation, the key's
/// operations concurrent with it, and the last few completed before it.
fn excerpt(key: &str, ops: &[Op], key_ops: &[KeyOp], culprit: usize) -> String {
    let c = &ops[key_ops[culprit].op];
    let describe = |k: &KeyOp| {
        let op = &ops[k.op];
        let what = match k.f {
            RegisterOp::Write(v) => format!("write {v}"),
            RegisterOp::Read(_) if !op.is(EventType::Ok) => "read".to_string(),
            RegisterOp::Read(Some(v)) => format!("read → {v}"),
            RegisterOp::Read(None) => "read → null".to_string(),
        };
        format!("{what} {}", op.span())
    };
    let before: Vec<&KeyOp> = key_ops.iter().filter(|k| ops[k.op].end() < c.inv_pos).collect();
    let earlier_writes: Vec<&KeyOp> = before
        .iter()
        .copied()
        .filter(|k| matches!(k.f, RegisterOp::Write(_)) && ops[k.op].is(EventType::Ok))
        .collect();
    let earlier_reads: Vec<&KeyOp> = before
        .iter()
        .copied()
        .filter(|k| matches!(k.f, RegisterOp::Read(_)) && ops[k.op].is(EventType::Ok))
        .collect();
    let mut shown: Vec<&KeyOp> = Vec::new();
    shown.extend(&earlier_writes[earlier_writes.len().saturating_sub(3)..]);
    shown.extend(&earlier_reads[earlier_reads.len().saturating_sub(2)..]);
    let concurrent = key_ops.iter().filter(|k| {
        let op = &ops[k.op];
        op.end() >= c.inv_pos && op.inv_pos <= c.end() && !op.is(EventType::Fail)
    });
    shown.extend(concurrent.take(12));
    shown.sort_by_key(|k| ops[k.op].inv_pos);
    shown.dedup_by_key(|k| k.op);
    let lines: Vec<String> = shown
        .iter()
        .map(|k| format!("{}{}", if k.op == key_ops[culprit].op { "» " } else { "  " }, describe(k)))
        .collect();
    format!(
        "key {key}: not linearizable: no order of its operations explains {} (the first such completion); around it:\n{}",
        describe(&key_ops[culprit]),
        lines.join("\n")
    )
}
