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

mod bank;
mod list_append;
mod register;
mod sessions;

pub use bank::check_bank;
pub use list_append::check_list_append;
pub use register::{check_register, check_register_within, REGISTER_KEY_TIMEOUT};
pub use sessions::check_sessions;

use super::history::{Event, EventType};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

/// At most this many anomalies are listed in a verdict; the summary gives the total.
pub const MAX_ANOMALIES: usize = 20;

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
