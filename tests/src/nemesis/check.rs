//! Checkers: decide, from a recorded history alone, whether what the clients saw is consistent.
//!
//! Each checker takes the events of one workload (see [`super::history`]) and returns a
//! [`Verdict`]: valid or not, how many completed operations it looked at, a one-line summary,
//! and readable anomalies naming the event indexes involved. No checker panics on a history it
//! does not understand: a malformed history (an event of the wrong shape, a completion without
//! an invocation, a workload premise broken, such as an appended value used twice) is an
//! invalid verdict whose anomalies say what is wrong, since the harness cannot vouch for it.
//!
//! ## Operations and their outcomes
//!
//! Every checker first pairs each `invoke` with the next completion of the same process (a
//! process runs one operation at a time; a second invoke before a completion is malformed).
//! Outcomes are read as Jepsen reads them:
//!
//! - `ok`: the operation took effect, exactly once, at some instant between its invocation and
//!   its completion, with the completion's value.
//! - `fail`: it never took effect. Observing its effect (a read of a failed append or write) is
//!   an anomaly.
//! - `info`, or no completion at all (the run ended): it may have taken effect at any instant
//!   after its invocation — including after the run's other operations — or never. Its reads
//!   prove nothing and are ignored.
//!
//! ## [`check_list_append`]: strict serializability of list-append transactions (Elle)
//!
//! Transactions (`f = "txn"`) append unique integers to integer-keyed lists and read whole
//! lists. Every read reveals the order of all appends before it, so the `adya` crate (an
//! Elle-style checker) infers each key's version order, builds the write-write, write-read and
//! read-write dependency graph plus real-time order, and searches it for the cycles
//! strict-serializability forbids (G0, G1c, G-single, G2, and their `-realtime` forms), next
//! to the direct anomalies: G1a (a read of a failed append), G1b (an intermediate read),
//! internal inconsistency, lost updates, dirty updates, incompatible orders (two reads of a key
//! neither a prefix of the other: a lost or reordered append) and duplicate elements. A stale
//! read — one missing an append that an earlier, already completed read had seen — shows up
//! as a G-single-realtime cycle. This checker adds what `adya` does not check: a read holding
//! a value that no invocation ever appended to that key (garbage), duplicates within one read
//! (also here, since `adya` silently accepts some malformed histories), and the workload's
//! premises (well-formed micro-ops, unique appends, completions matching their invocations).
//! Fail and info completions are given their invocation's transaction (reads unknown), as
//! Elle does; an unanswered invocation gets a synthetic `info` completion at the end.
//! `adya`'s verdict "unknown" has two causes: `empty-transaction-graph` (the history is too
//! small or too disjoint to relate any two transactions — the database did nothing wrong, but
//! the run proved nothing, which the summary says) stays valid; `cycle-search-timeout` (the
//! search gave up) is invalid, as the harness cannot vouch for the history.
//!
//! ## [`check_register`]: linearizability of single-key registers (Wing–Gong–Lowe)
//!
//! `write {key, value}` sets a key (values unique per key); `read {key}` returns its value, or
//! `null` before the first write. Linearizability is compositional, so each key is checked on
//! its own with `todc_utils`' WGL search. Fail: dropped. Info (or unanswered) write: its
//! response is put after every other event, so it may take effect at any point after its
//! invocation or never. Info read: dropped. A pending write whose value no read ever returned
//! is dropped too: placing it anywhere never helps explain a read, and each pending write
//! doubles the states the search may explore. Before searching, a read of a value that no
//! write of the key produced (never written, failed, or invoked only after the read returned)
//! is reported directly. When a key is not linearizable, a binary search over history prefixes
//! (non-linearizability is prefix-closed) finds the first completion that no order can
//! explain, and the anomaly shows that operation and the key's operations around it.
//!
//! WGL is exponential in the worst case and `todc_utils` keeps, per explored state, a copy of
//! the key's "linearized" bitmap (memory grows with steps × history length). So each key's
//! search runs with a budget: a deadline (default [`REGISTER_KEY_TIMEOUT`]) and a step cap
//! keeping that cache near 512 MiB. A key whose search runs out is "unknown", and the verdict is
//! then invalid, as for list-append timeouts: a nemesis test should use more keys, fewer
//! operations per key or fewer indeterminate ones rather than pass unchecked.
//!
//! ## [`check_bank`]: conservation of money
//!
//! `transfer {from, to, amount}` moves money between accounts (the workload's SQL refuses an
//! overdraft); `read` returns `{"balances": {account: balance}}`. Every ok read must list
//! exactly the expected number of accounts, sum to the expected total, and hold no negative
//! balance. This proves snapshot reads and atomic transfers, not ordering (no realtime check).
//!
//! ## [`check_sessions`]: session guarantees
//!
//! Each session (`"session"` in every value, stable across the process ids a client uses after
//! an `info`) owns one key and writes strictly increasing integers to it. For each ok read of a
//! session, in completion order: its value is at least the largest value of the session's
//! writes that completed ok before the read was invoked (read-your-writes); it is a value of a
//! non-failed write of the session invoked before the read completed (nothing from the future,
//! nothing failed, nothing invented); it never decreases along the session (monotonic reads);
//! and the receipt `index`, where present, never decreases. `null` is below every value.
//!
//! ## Known gaps
//!
//! - The register checker's diagnosis names the first unexplainable completion, not a minimal
//!   set of operations; the excerpt is the operations of the key concurrent with it plus the
//!   last few completed before it.
//! - Bank and session checks are per read and per session; they do not relate sessions.

use super::history::{Event, EventType};
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::{Specification, WGLChecker};

/// At most this many anomalies are listed in a verdict; the summary gives the total.
pub const MAX_ANOMALIES: usize = 20;

/// How long [`check_register`] searches one key before calling it unknown.
pub const REGISTER_KEY_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for `todc_utils`' memo of explored states (a bitmap per state): the step cap per key.
const WGL_CACHE_BYTES: u64 = 1 << 29;

/// What a checker concluded about one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub checker: &'static str,
    pub valid: bool,
    /// Completed (ok, fail or info) operations checked.
    pub ops: usize,
    /// One line: counts of ok / fail / info and what was found.
    pub summary: String,
    /// Readable findings, each naming the event indexes involved; at most [`MAX_ANOMALIES`].
    pub anomalies: Vec<String>,
}

impl Verdict {
    fn new(checker: &'static str, ops: usize, mut summary: String, mut anomalies: Vec<String>) -> Verdict {
        if anomalies.len() > MAX_ANOMALIES {
            summary.push_str(&format!(" ({} anomalies, the first {MAX_ANOMALIES} listed)", anomalies.len()));
            anomalies.truncate(MAX_ANOMALIES);
        }
        Verdict { checker, valid: anomalies.is_empty(), ops, summary, anomalies }
    }

    fn malformed(checker: &'static str, ops: usize, errors: Vec<String>) -> Verdict {
        let summary = format!("malformed history: {} problem(s); nothing was checked", errors.len());
        Verdict::new(checker, ops, summary, errors)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.valid { "valid" } else { "INVALID" };
        write!(f, "{}: {state} ({} ops): {}", self.checker, self.ops, self.summary)?;
        for a in &self.anomalies {
            write!(f, "\n  - {}", a.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Operations: invocations paired with their completions.

/// One operation: an invocation and its completion, if the history has one.
struct Op<'e> {
    invoke: &'e Event,
    /// Position of the invocation in the history.
    inv_pos: usize,
    completion: Option<&'e Event>,
    /// Position of the completion in the history.
    end_pos: Option<usize>,
}

impl Op<'_> {
    fn kind(&self) -> Option<EventType> {
        self.completion.map(|c| c.kind)
    }

    fn is(&self, kind: EventType) -> bool {
        self.kind() == Some(kind)
    }

    /// Anything but a failed operation may have taken effect.
    fn may_have_happened(&self) -> bool {
        !self.is(EventType::Fail)
    }

    /// Where the operation ended, or past the history's end if it did not.
    fn end(&self) -> usize {
        self.end_pos.unwrap_or(usize::MAX)
    }

    /// "#12→#15 (p3, ok)", for anomalies.
    fn span(&self) -> String {
        match self.completion {
            Some(c) => format!("#{}→#{} (p{}, {})", self.invoke.index, c.index, c.process, kind_name(c.kind)),
            None => format!("#{}→? (p{}, no completion)", self.invoke.index, self.invoke.process),
        }
    }
}

fn kind_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Invoke => "invoke",
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
    }
}

/// Pairs invocations with completions, in invocation order.
fn pair(events: &[Event]) -> Result<Vec<Op<'_>>, Vec<String>> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (pos, e) in events.iter().enumerate() {
        if e.kind == EventType::Invoke {
            if let Some(&i) = open.get(&e.process) {
                errors.push(format!(
                    "event {}: process {} invoked {:?} while its operation invoked at event {} is still open",
                    e.index, e.process, e.f, ops[i].invoke.index
                ));
            }
            open.insert(e.process, ops.len());
            ops.push(Op { invoke: e, inv_pos: pos, completion: None, end_pos: None });
            continue;
        }
        match open.remove(&e.process) {
            None => errors.push(format!(
                "event {}: {} completion of process {} that has no open invocation",
                e.index,
                kind_name(e.kind),
                e.process
            )),
            Some(i) => {
                if ops[i].invoke.f != e.f {
                    errors.push(format!(
                        "event {}: completion of {:?} answers invocation {} of {:?}",
                        e.index, e.f, ops[i].invoke.index, ops[i].invoke.f
                    ));
                }
                ops[i].completion = Some(e);
                ops[i].end_pos = Some(pos);
            }
        }
    }
    if errors.is_empty() {
        Ok(ops)
    } else {
        Err(errors)
    }
}

#[derive(Default)]
struct Counts {
    ok: usize,
    fail: usize,
    info: usize,
    open: usize,
}

impl Counts {
    fn of(ops: &[Op]) -> Counts {
        let mut c = Counts::default();
        for op in ops {
            match op.kind() {
                Some(EventType::Ok) => c.ok += 1,
                Some(EventType::Fail) => c.fail += 1,
                Some(EventType::Info) => c.info += 1,
                _ => c.open += 1,
            }
        }
        c
    }

    fn completed(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ok, {} fail, {} info", self.ok, self.fail, self.info)?;
        if self.open > 0 {
            write!(f, ", {} without completion", self.open)?;
        }
        Ok(())
    }
}

/// Pairs `events` and checks every operation is `f` one of `fs`; the error is a verdict.
fn operations<'e>(checker: &'static str, events: &'e [Event], fs: &[&str]) -> Result<Vec<Op<'e>>, Verdict> {
    let ops = pair(events).map_err(|errors| Verdict::malformed(checker, 0, errors))?;
    let errors: Vec<String> = ops
        .iter()
        .filter(|op| !fs.contains(&op.invoke.f.as_str()))
        .map(|op| {
            format!("event {}: unexpected operation {:?} (want one of {fs:?})", op.invoke.index, op.invoke.f)
        })
        .collect();
    if errors.is_empty() {
        Ok(ops)
    } else {
        Err(Verdict::malformed(checker, Counts::of(&ops).completed(), errors))
    }
}

fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    v.as_object().and_then(|o| o.get(name))
}

/// A key or account name: an integer or a string, rendered as JSON ("3", "\"a\"").
fn name_of(v: Option<&Value>) -> Option<String> {
    v.filter(|v| v.is_i64() || v.is_string()).map(Value::to_string)
}

/// An integer field; `Ok(None)` for null or absent.
fn opt_int(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_i64().map(Some).ok_or_else(|| format!("{name:?} is {x}, not an integer or null")),
    }
}

fn int_field(v: &Value, name: &str) -> Result<i64, String> {
    opt_int(v, name)?.ok_or_else(|| format!("value {v} has no integer {name:?}"))
}

// ---------------------------------------------------------------------------------------------
// List append.

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

// ---------------------------------------------------------------------------------------------
// Registers.

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

// ---------------------------------------------------------------------------------------------
// Bank.

/// Checks that every ok read of a bank history shows `accounts` accounts summing to `total`
/// with no negative balance; see the module doc.
pub fn check_bank(events: &[Event], accounts: usize, total: i64) -> Verdict {
    const CHECKER: &str = "bank";
    let ops = match operations(CHECKER, events, &["transfer", "read"]) {
        Ok(ops) => ops,
        Err(v) => return v,
    };
    let counts = Counts::of(&ops);
    let mut errors = Vec::new();
    let mut reads = Vec::new();
    for op in &ops {
        let v = &op.invoke.value;
        if op.invoke.f == "transfer" {
            let from = name_of(field(v, "from"));
            let to = name_of(field(v, "to"));
            if from.is_none() || to.is_none() || !field(v, "amount").is_some_and(Value::is_i64) {
                errors.push(format!("event {}: transfer {v} is not {{from, to, amount}}", op.invoke.index));
            }
            continue;
        }
        let Some(c) = op.completion.filter(|c| c.kind == EventType::Ok) else { continue };
        let Some(balances) = field(&c.value, "balances").and_then(Value::as_object) else {
            errors
                .push(format!("event {}: read returned {}, not {{\"balances\": {{..}}}}", c.index, c.value));
            continue;
        };
        let mut parsed = BTreeMap::new();
        for (account, b) in balances {
            match b.as_i64() {
                Some(b) => {
                    parsed.insert(account.clone(), b);
                }
                None => errors.push(format!("event {}: account {account:?} has balance {b}", c.index)),
            }
        }
        reads.push((op, parsed));
    }
    if !errors.is_empty() {
        return Verdict::malformed(CHECKER, counts.completed(), errors);
    }
    let mut anomalies = Vec::new();
    for (op, balances) in &reads {
        let mut problems = Vec::new();
        if balances.len() != accounts {
            problems.push(format!("{} accounts instead of {accounts}", balances.len()));
        }
        let sum: i128 = balances.values().map(|&b| b as i128).sum();
        if sum != total as i128 {
            problems.push(format!("total {sum} instead of {total}"));
        }
        let negative: Vec<&String> = balances.iter().filter(|(_, &b)| b < 0).map(|(a, _)| a).collect();
        if !negative.is_empty() {
            problems.push(format!("negative balance in {negative:?}"));
        }
        if !problems.is_empty() {
            anomalies.push(format!("read {}: {}; balances {balances:?}", op.span(), problems.join(", ")));
        }
    }
    let summary = format!(
        "{} reads, {} transfers: {counts}; {} read(s) break conservation ({accounts} accounts, total {total})",
        reads.len(),
        ops.iter().filter(|op| op.invoke.f == "transfer").count(),
        anomalies.len()
    );
    Verdict::new(CHECKER, counts.completed(), summary, anomalies)
}

// ---------------------------------------------------------------------------------------------
// Sessions.

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
