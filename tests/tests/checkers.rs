//! The history checkers (`nemesis::check`) on hand-written and simulated histories, no cluster:
//! each must accept valid histories — concurrency, failed and indeterminate operations
//! included — and catch the known anomalies, and no malformed history may make one panic.

use raftsql_tests::nemesis::check::{
    check_bank, check_list_append, check_register, check_register_within, check_sessions, Verdict,
};
use raftsql_tests::nemesis::history::{to_json_lines, Event, EventType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Builds a history event by event.
#[derive(Default)]
struct H {
    events: Vec<Event>,
}

impl H {
    fn push(&mut self, kind: EventType, process: u64, f: &str, value: Value) -> &mut H {
        let index = self.events.len() as u64;
        let event = Event { index, kind, process, f: f.into(), value, time: index * 1000, error: None };
        self.events.push(event);
        self
    }
    fn invoke(&mut self, p: u64, f: &str, v: Value) -> &mut H {
        self.push(EventType::Invoke, p, f, v)
    }
    fn ok(&mut self, p: u64, f: &str, v: Value) -> &mut H {
        self.push(EventType::Ok, p, f, v)
    }
    fn fail(&mut self, p: u64, f: &str, v: Value) -> &mut H {
        self.push(EventType::Fail, p, f, v)
    }
    fn info(&mut self, p: u64, f: &str, v: Value) -> &mut H {
        self.push(EventType::Info, p, f, v)
    }
    /// A transaction invoked and completed ok at once.
    fn txn(&mut self, p: u64, invoked: Value, done: Value) -> &mut H {
        self.invoke(p, "txn", invoked).ok(p, "txn", done)
    }
}

#[track_caller]
fn assert_valid(v: &Verdict) {
    println!("{v}");
    assert!(v.valid, "expected a valid history:\n{v}");
    assert!(v.anomalies.is_empty());
}

/// Asserts the verdict is invalid and some anomaly mentions every one of `words`.
#[track_caller]
fn assert_caught(v: &Verdict, words: &[&str]) {
    println!("{v}");
    assert!(!v.valid, "expected an invalid history:\n{v}");
    assert!(
        v.anomalies.iter().any(|a| words.iter().all(|w| a.contains(w))),
        "no anomaly mentions {words:?}:\n{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// List append.

#[test]
fn list_append_accepts_concurrency_failures_and_info() {
    let mut h = H::default();
    h.invoke(0, "txn", json!([["append", 1, 1]]))
        .invoke(1, "txn", json!([["r", 1, null]]))
        .ok(1, "txn", json!([["r", 1, []]]))
        .ok(0, "txn", json!([["append", 1, 1]]))
        // Indeterminate, and visible later: fine.
        .invoke(2, "txn", json!([["append", 1, 2], ["append", 2, 1]]))
        .info(2, "txn", Value::Null)
        // Failed, and never visible: fine.
        .invoke(3, "txn", json!([["append", 1, 3]]))
        .fail(3, "txn", json!([["append", 1, 3]]))
        // Indeterminate and never visible: fine too.
        .invoke(4, "txn", json!([["append", 2, 2]]))
        .info(4, "txn", json!([["append", 2, 2]]))
        .txn(5, json!([["r", 1, null], ["append", 3, 1]]), json!([["r", 1, [1, 2]], ["append", 3, 1]]))
        .txn(6, json!([["r", 2, null], ["r", 3, null]]), json!([["r", 2, [1]], ["r", 3, [1]]]))
        // Left open when the run ended.
        .invoke(7, "txn", json!([["append", 3, 2]]));
    let v = check_list_append(&h.events);
    assert_valid(&v);
    assert_eq!(v.ops, 7);
    assert!(!v.summary.contains("unknown"), "{v}");
}

#[test]
fn list_append_says_when_a_history_proves_nothing() {
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]));
    let v = check_list_append(&h.events);
    assert_valid(&v);
    assert!(v.summary.contains("unknown"), "{v}");
}

#[test]
fn list_append_catches_lost_update() {
    let mut h = H::default();
    h.invoke(0, "txn", json!([["r", 1, null], ["append", 1, 1]]))
        .invoke(1, "txn", json!([["r", 1, null], ["append", 1, 2]]))
        .ok(0, "txn", json!([["r", 1, []], ["append", 1, 1]]))
        .ok(1, "txn", json!([["r", 1, []], ["append", 1, 2]]))
        .txn(2, json!([["r", 1, null]]), json!([["r", 1, [1, 2]]]));
    assert_caught(&check_list_append(&h.events), &["lost-update"]);
}

#[test]
fn list_append_catches_write_skew() {
    let mut h = H::default();
    h.invoke(0, "txn", json!([["r", 1, null], ["r", 2, null], ["append", 1, 1]]))
        .invoke(1, "txn", json!([["r", 1, null], ["r", 2, null], ["append", 2, 1]]))
        .ok(0, "txn", json!([["r", 1, []], ["r", 2, []], ["append", 1, 1]]))
        .ok(1, "txn", json!([["r", 1, []], ["r", 2, []], ["append", 2, 1]]));
    assert_caught(&check_list_append(&h.events), &["G2-item"]);
}

#[test]
fn list_append_catches_g1c() {
    // Each transaction reads the other's append: a write-read cycle.
    let mut h = H::default();
    h.invoke(0, "txn", json!([["append", 1, 1], ["r", 2, null]]))
        .invoke(1, "txn", json!([["append", 2, 1], ["r", 1, null]]))
        .ok(0, "txn", json!([["append", 1, 1], ["r", 2, [1]]]))
        .ok(1, "txn", json!([["append", 2, 1], ["r", 1, [1]]]));
    assert_caught(&check_list_append(&h.events), &["G1c"]);
}

#[test]
fn list_append_catches_g0() {
    // Two transactions' appends land in opposite orders on two keys.
    let mut h = H::default();
    h.invoke(0, "txn", json!([["append", 1, 1], ["append", 2, 1]]))
        .invoke(1, "txn", json!([["append", 1, 2], ["append", 2, 2]]))
        .ok(0, "txn", json!([["append", 1, 1], ["append", 2, 1]]))
        .ok(1, "txn", json!([["append", 1, 2], ["append", 2, 2]]))
        .txn(2, json!([["r", 1, null], ["r", 2, null]]), json!([["r", 1, [1, 2]], ["r", 2, [2, 1]]]));
    assert_caught(&check_list_append(&h.events), &["G0"]);
}

#[test]
fn list_append_catches_a_stale_read() {
    // The second read, invoked after the first returned [1, 2], misses 2.
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]))
        .txn(1, json!([["append", 1, 2]]), json!([["append", 1, 2]]))
        .txn(2, json!([["r", 1, null]]), json!([["r", 1, [1, 2]]]))
        .txn(3, json!([["r", 1, null]]), json!([["r", 1, [1]]]));
    assert_caught(&check_list_append(&h.events), &["realtime"]);
}

#[test]
fn list_append_catches_a_lost_append() {
    // Two reads that cannot both be prefixes of one order: 2 vanished, 3 took its place.
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]))
        .txn(0, json!([["append", 1, 2]]), json!([["append", 1, 2]]))
        .txn(1, json!([["r", 1, null]]), json!([["r", 1, [1, 2]]]))
        .txn(0, json!([["append", 1, 3]]), json!([["append", 1, 3]]))
        .txn(1, json!([["r", 1, null]]), json!([["r", 1, [1, 3]]]));
    assert_caught(&check_list_append(&h.events), &["incompatible-order"]);
}

#[test]
fn list_append_catches_an_acknowledged_append_missing_from_a_later_read() {
    // 2 was acknowledged before 3 was invoked, yet a read holds 3 and not 2.
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]))
        .txn(0, json!([["append", 1, 2]]), json!([["append", 1, 2]]))
        .txn(0, json!([["append", 1, 3]]), json!([["append", 1, 3]]))
        .txn(1, json!([["r", 1, null]]), json!([["r", 1, [1, 3]]]));
    assert_caught(&check_list_append(&h.events), &["realtime", "T3 appended 2 after T5 appended 3"]);
}

#[test]
fn list_append_catches_duplicates() {
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]])).txn(
        1,
        json!([["r", 1, null]]),
        json!([["r", 1, [1, 1]]]),
    );
    assert_caught(&check_list_append(&h.events), &["duplicate-elements", "3"]);
}

#[test]
fn list_append_catches_a_read_of_a_failed_append() {
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]))
        .invoke(1, "txn", json!([["append", 1, 2]]))
        .fail(1, "txn", Value::Null)
        .txn(2, json!([["r", 1, null]]), json!([["r", 1, [1, 2]]]));
    assert_caught(&check_list_append(&h.events), &["G1a", "5"]);
}

#[test]
fn list_append_catches_garbage() {
    let mut h = H::default();
    h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]])).txn(
        1,
        json!([["r", 1, null]]),
        json!([["r", 1, [1, 99]]]),
    );
    assert_caught(&check_list_append(&h.events), &["garbage-read", "[99]", "event 3"]);
    // An element appended to another key is garbage here too.
    let mut h = H::default();
    h.txn(0, json!([["append", 2, 7]]), json!([["append", 2, 7]])).txn(
        1,
        json!([["r", 1, null]]),
        json!([["r", 1, [7]]]),
    );
    assert_caught(&check_list_append(&h.events), &["garbage-read", "[7]"]);
}

#[test]
fn list_append_rejects_malformed_histories() {
    let cases: Vec<(&str, H)> = vec![
        ("not an array", {
            let mut h = H::default();
            h.txn(0, json!({"append": 1}), json!(null));
            h
        }),
        ("unknown function", {
            let mut h = H::default();
            h.txn(0, json!([["w", 1, 1]]), json!([["w", 1, 1]]));
            h
        }),
        ("not an integer", {
            let mut h = H::default();
            h.txn(0, json!([["append", "x", 1]]), json!([["append", "x", 1]]));
            h
        }),
        ("does not match", {
            let mut h = H::default();
            h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 2]]));
            h
        }),
        ("no open invocation", {
            let mut h = H::default();
            h.ok(0, "txn", json!([]));
            h
        }),
        ("still open", {
            let mut h = H::default();
            h.invoke(0, "txn", json!([])).invoke(0, "txn", json!([]));
            h
        }),
        ("must be unique", {
            let mut h = H::default();
            h.txn(0, json!([["append", 1, 1]]), json!([["append", 1, 1]]));
            h.txn(1, json!([["append", 1, 1]]), json!([["append", 1, 1]]));
            h
        }),
        ("unexpected operation", {
            let mut h = H::default();
            h.invoke(0, "read", json!([])).ok(0, "read", json!([]));
            h
        }),
    ];
    for (want, h) in cases {
        let v = check_list_append(&h.events);
        assert_caught(&v, &[want]);
        assert!(v.summary.starts_with("malformed"), "{v}");
    }
}

#[test]
fn adya_parses_recorded_json_lines() {
    // The recorder's lines carry f, time and error besides Elle's fields; adya ignores them.
    let mut h = H::default();
    h.invoke(0, "txn", json!([["append", 1, 1], ["r", 1, null]]));
    h.events.push(Event {
        index: 1,
        kind: EventType::Info,
        process: 0,
        f: "txn".into(),
        value: json!([["append", 1, 1], ["r", 1, null]]),
        time: 99,
        error: Some("timeout".into()),
    });
    let parsed = adya::History::from_json(&to_json_lines(&h.events)).expect("adya parses our lines");
    assert_eq!(parsed.ops.len(), 2);
    assert_eq!(parsed.pair[0], Some(1));
}

#[test]
fn list_append_accepts_a_large_simulated_history() {
    let events = simulate_list_append(7, 3000);
    let start = Instant::now();
    let v = check_list_append(&events);
    println!("list-append: {} events checked in {:?}", events.len(), start.elapsed());
    assert_valid(&v);
}

// ---------------------------------------------------------------------------------------------
// Registers.

fn w(key: i64, value: i64) -> Value {
    json!({"key": key, "value": value})
}

fn r(key: i64, value: Option<i64>) -> Value {
    json!({"key": key, "value": value})
}

#[test]
fn register_accepts_concurrency_failures_and_info() {
    let mut h = H::default();
    h.invoke(0, "read", r(1, None))
        .ok(0, "read", r(1, None))
        .invoke(1, "write", w(1, 10))
        .invoke(2, "read", r(1, None))
        // Concurrent with the write: either value is fine.
        .ok(2, "read", r(1, None))
        .ok(1, "write", w(1, 10))
        .invoke(3, "write", w(1, 11))
        .info(3, "write", w(1, 11))
        .invoke(4, "read", r(1, None))
        .ok(4, "read", r(1, Some(10)))
        // The indeterminate write takes effect late, observed by a later read.
        .invoke(5, "read", r(1, None))
        .ok(5, "read", r(1, Some(11)))
        .invoke(6, "write", w(1, 12))
        .fail(6, "write", w(1, 12))
        .invoke(7, "read", r(1, None))
        .info(7, "read", r(1, None))
        // Another key, interleaved; a never-observed info write and an open one.
        .invoke(8, "write", w(2, 1))
        .ok(8, "write", w(2, 1))
        .invoke(9, "write", w(2, 2))
        .info(9, "write", Value::Null)
        .invoke(10, "read", r(2, None))
        .ok(10, "read", r(2, Some(1)))
        .invoke(11, "write", w(2, 3))
        .invoke(12, "read", r(1, None))
        .ok(12, "read", r(1, Some(11)));
    let v = check_register(&h.events);
    assert_valid(&v);
    assert_eq!(v.ops, 12);
}

#[test]
fn register_catches_a_stale_read() {
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    h.invoke(0, "write", w(1, 2)).ok(0, "write", w(1, 2));
    h.invoke(1, "read", r(1, None)).ok(1, "read", r(1, Some(1)));
    assert_caught(&check_register(&h.events), &["key 1", "read → 1 #4→#5"]);
}

#[test]
fn register_catches_a_missing_row_after_a_write() {
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    h.invoke(1, "read", r(1, None)).ok(1, "read", r(1, None));
    assert_caught(&check_register(&h.events), &["key 1", "read → null"]);
}

#[test]
fn register_catches_a_value_never_written() {
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    h.invoke(1, "read", r(1, None)).ok(1, "read", r(1, Some(5)));
    assert_caught(&check_register(&h.events), &["key 1", "returned 5", "no operation ever wrote it"]);
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).fail(0, "write", w(1, 1));
    h.invoke(1, "read", r(1, None)).ok(1, "read", r(1, Some(1)));
    assert_caught(&check_register(&h.events), &["key 1", "failed"]);
}

#[test]
fn register_catches_a_new_then_old_read() {
    // Write 2 is slow; one read sees it, a later read (not overlapping the first) sees 1 again.
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    h.invoke(0, "write", w(1, 2));
    h.invoke(1, "read", r(1, None)).ok(1, "read", r(1, Some(2)));
    h.invoke(2, "read", r(1, None)).ok(2, "read", r(1, Some(1)));
    h.ok(0, "write", w(1, 2));
    let v = check_register(&h.events);
    assert_caught(&v, &["key 1", "» read → 1 #5→#6", "write 2 #2→#7"]);
}

#[test]
fn register_reports_unknown_when_the_search_runs_out() {
    // 24 concurrent indeterminate writes, read one after another, then the first again: no
    // order explains it, and proving so visits every subset of the writes.
    let n = 24;
    let mut h = H::default();
    for i in 0..n {
        h.invoke(i, "write", w(1, i as i64)).info(i, "write", Value::Null);
    }
    for i in 0..n {
        h.invoke(100, "read", r(1, None)).ok(100, "read", r(1, Some(i as i64)));
    }
    h.invoke(100, "read", r(1, None)).ok(100, "read", r(1, Some(0)));
    let start = Instant::now();
    let v = check_register_within(&h.events, Duration::from_millis(100));
    println!("gave up after {:?}", start.elapsed());
    assert_caught(&v, &["key 1", "unknown"]);
}

#[test]
fn register_rejects_malformed_histories() {
    let mut h = H::default();
    h.invoke(0, "write", json!({"key": 1})).ok(0, "write", json!({"key": 1}));
    assert_caught(&check_register(&h.events), &["event 0", "value"]);
    let mut h = H::default();
    h.invoke(0, "write", json!(5)).ok(0, "write", json!(5));
    assert_caught(&check_register(&h.events), &["event 0", "key"]);
    let mut h = H::default();
    h.invoke(0, "read", r(1, None)).ok(0, "read", json!({"key": 1, "value": "x"}));
    assert_caught(&check_register(&h.events), &["event 1", "not an integer"]);
    let mut h = H::default();
    h.invoke(0, "read", r(1, None)).ok(0, "read", json!({"key": 1}));
    assert_caught(&check_register(&h.events), &["event 1", "without \"value\""]);
    let mut h = H::default();
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    h.invoke(0, "write", w(1, 1)).ok(0, "write", w(1, 1));
    assert_caught(&check_register(&h.events), &["unique"]);
    let mut h = H::default();
    h.invoke(0, "cas", w(1, 1)).ok(0, "cas", w(1, 1));
    assert_caught(&check_register(&h.events), &["unexpected operation"]);
}

#[test]
fn register_accepts_a_large_simulated_history() {
    let events = simulate_register(11, 6000);
    let start = Instant::now();
    let v = check_register(&events);
    println!("register: {} events checked in {:?}", events.len(), start.elapsed());
    assert_valid(&v);
}

// ---------------------------------------------------------------------------------------------
// Bank.

fn balances(b: &[(&str, i64)]) -> Value {
    let map: serde_json::Map<String, Value> = b.iter().map(|(a, x)| (a.to_string(), json!(x))).collect();
    json!({ "balances": map })
}

fn transfer(from: i64, to: i64, amount: i64) -> Value {
    json!({"from": from, "to": to, "amount": amount})
}

#[test]
fn bank_accepts_conserving_reads() {
    let mut h = H::default();
    h.invoke(0, "transfer", transfer(0, 1, 5))
        .invoke(1, "read", Value::Null)
        .ok(1, "read", balances(&[("0", 10), ("1", 10)]))
        .ok(0, "transfer", transfer(0, 1, 5))
        .invoke(0, "transfer", transfer(0, 1, 50))
        .fail(0, "transfer", transfer(0, 1, 50))
        .invoke(2, "transfer", transfer(1, 0, 1))
        .info(2, "transfer", Value::Null)
        .invoke(1, "read", Value::Null)
        .info(1, "read", Value::Null)
        .invoke(3, "read", Value::Null)
        .ok(3, "read", balances(&[("0", 6), ("1", 14)]));
    assert_valid(&check_bank(&h.events, 2, 20));
}

#[test]
fn bank_catches_drift_negative_and_missing_accounts() {
    let read = |b: Value| {
        let mut h = H::default();
        h.invoke(0, "transfer", transfer(0, 1, 5)).ok(0, "transfer", transfer(0, 1, 5));
        h.invoke(1, "read", Value::Null).ok(1, "read", b);
        h.events
    };
    let v = check_bank(&read(balances(&[("0", 5), ("1", 16)])), 2, 20);
    assert_caught(&v, &["#2→#3", "total 21 instead of 20", "\"1\": 16"]);
    let v = check_bank(&read(balances(&[("0", -5), ("1", 25)])), 2, 20);
    assert_caught(&v, &["#2→#3", "negative balance in [\"0\"]"]);
    let v = check_bank(&read(balances(&[("1", 20)])), 2, 20);
    assert_caught(&v, &["#2→#3", "1 accounts instead of 2"]);
}

#[test]
fn bank_rejects_malformed_histories() {
    let mut h = H::default();
    h.invoke(0, "read", Value::Null).ok(0, "read", json!({"balance": {}}));
    assert_caught(&check_bank(&h.events, 2, 20), &["event 1", "balances"]);
    let mut h = H::default();
    h.invoke(0, "read", Value::Null).ok(0, "read", json!({"balances": {"0": 1.5}}));
    assert_caught(&check_bank(&h.events, 2, 20), &["event 1", "1.5"]);
    let mut h = H::default();
    h.invoke(0, "transfer", json!({"from": 0})).ok(0, "transfer", Value::Null);
    assert_caught(&check_bank(&h.events, 2, 20), &["event 0", "transfer"]);
}

#[test]
fn bank_accepts_a_large_simulated_history() {
    let events = simulate_bank(5, 5000);
    let start = Instant::now();
    let v = check_bank(&events, 5, 500);
    println!("bank: {} events checked in {:?}", events.len(), start.elapsed());
    assert_valid(&v);
}

// ---------------------------------------------------------------------------------------------
// Sessions.

fn sw(session: i64, value: i64) -> Value {
    json!({"session": session, "key": session * 10, "value": value})
}

fn sr(session: i64, value: Option<i64>, index: Option<i64>) -> Value {
    json!({"session": session, "key": session * 10, "value": value, "index": index})
}

#[test]
fn sessions_accept_valid_histories() {
    let mut h = H::default();
    h.invoke(0, "read", sr(1, None, None))
        .ok(0, "read", sr(1, None, Some(3)))
        .invoke(0, "write", sw(1, 1))
        .ok(0, "write", sw(1, 1))
        // Indeterminate: the session carries on as process 1, and may or may not see it.
        .invoke(0, "write", sw(1, 2))
        .info(0, "write", Value::Null)
        .invoke(1, "read", sr(1, None, None))
        .ok(1, "read", sr(1, Some(1), Some(4)))
        .invoke(1, "read", sr(1, None, None))
        .ok(1, "read", sr(1, Some(2), Some(9)))
        // Failed, never seen.
        .invoke(1, "write", sw(1, 3))
        .fail(1, "write", sw(1, 3))
        .invoke(1, "read", sr(1, None, None))
        .ok(1, "read", sr(1, Some(2), None))
        // Another session, interleaved with a write of its own in flight.
        .invoke(2, "write", sw(2, 5))
        .invoke(3, "read", sr(2, None, None))
        .ok(3, "read", sr(2, Some(5), Some(12)))
        .ok(2, "write", sw(2, 5));
    assert_valid(&check_sessions(&h.events));
}

#[test]
fn sessions_catch_a_missing_own_write() {
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 1)).ok(0, "write", sw(1, 1));
    h.invoke(0, "write", sw(1, 2)).ok(0, "write", sw(1, 2));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(1), Some(7)));
    assert_caught(&check_sessions(&h.events), &["session 1", "#4→#5", "read-your-writes"]);
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 1)).ok(0, "write", sw(1, 1));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, None, Some(7)));
    assert_caught(&check_sessions(&h.events), &["returned null", "read-your-writes"]);
}

#[test]
fn sessions_catch_a_read_going_back() {
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 1)).ok(0, "write", sw(1, 1));
    h.invoke(0, "write", sw(1, 2)).info(0, "write", Value::Null);
    h.invoke(1, "read", sr(1, None, None)).ok(1, "read", sr(1, Some(2), Some(5)));
    h.invoke(1, "read", sr(1, None, None)).ok(1, "read", sr(1, Some(1), Some(6)));
    assert_caught(&check_sessions(&h.events), &["#6→#7", "monotonic reads"]);
}

#[test]
fn sessions_catch_an_index_going_back() {
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 1)).ok(0, "write", sw(1, 1));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(1), Some(8)));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(1), None));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(1), Some(7)));
    assert_caught(&check_sessions(&h.events), &["#6→#7", "index 7", "index 8", "monotonic receipts"]);
}

#[test]
fn sessions_catch_values_never_written() {
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 1)).fail(0, "write", sw(1, 1));
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(1), None));
    assert_caught(&check_sessions(&h.events), &["#2→#3", "failed"]);
    let mut h = H::default();
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", sr(1, Some(4), None));
    h.invoke(0, "write", sw(1, 4)).ok(0, "write", sw(1, 4));
    assert_caught(&check_sessions(&h.events), &["#0→#1", "invoked only afterwards"]);
}

#[test]
fn sessions_reject_malformed_histories() {
    let mut h = H::default();
    h.invoke(0, "write", json!({"key": 1, "value": 1})).ok(0, "write", Value::Null);
    assert_caught(&check_sessions(&h.events), &["event 0", "session"]);
    let mut h = H::default();
    h.invoke(0, "write", sw(1, 2)).ok(0, "write", sw(1, 2));
    h.invoke(0, "write", sw(1, 1)).ok(0, "write", sw(1, 1));
    assert_caught(&check_sessions(&h.events), &["event 2", "must increase"]);
    let mut h = H::default();
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", json!({"session": 1, "value": [1]}));
    assert_caught(&check_sessions(&h.events), &["event 1", "not an integer"]);
    let mut h = H::default();
    h.invoke(0, "read", sr(1, None, None)).ok(0, "read", json!({"session": 1, "index": 3}));
    assert_caught(&check_sessions(&h.events), &["event 1", "without \"value\""]);
}

#[test]
fn sessions_accept_a_large_simulated_history() {
    let events = simulate_sessions(3, 6000);
    let start = Instant::now();
    let v = check_sessions(&events);
    println!("sessions: {} events checked in {:?}", events.len(), start.elapsed());
    assert_valid(&v);
}

#[test]
fn checkers_never_panic_on_garbage() {
    let mut rng = StdRng::seed_from_u64(1);
    let shapes = [
        Value::Null,
        json!(1),
        json!("x"),
        json!([]),
        json!([1, 2, 3]),
        json!([["append"]]),
        json!([["r", 1, "x"]]),
        json!({}),
        json!({"key": [1], "value": {}}),
        json!({"balances": []}),
        json!({"session": null, "key": 1}),
        json!({"from": 1, "to": 2, "amount": "x"}),
    ];
    let kinds = [EventType::Invoke, EventType::Ok, EventType::Fail, EventType::Info];
    let fs = ["txn", "read", "write", "transfer", "other"];
    let pick = |rng: &mut StdRng| shapes[rng.gen_range(0..shapes.len())].clone();
    for round in 0..600u64 {
        let mut h = H::default();
        for p in 0..rng.gen_range(1..12) {
            let f = fs[rng.gen_range(0..fs.len())];
            if round % 2 == 0 {
                // Anything goes, pairing included.
                let kind = kinds[rng.gen_range(0..kinds.len())];
                h.push(kind, rng.gen_range(0..3), f, pick(&mut rng));
            } else {
                // Well paired, badly shaped.
                let kind = kinds[rng.gen_range(1..kinds.len())];
                h.invoke(p, f, pick(&mut rng)).push(kind, p, f, pick(&mut rng));
            }
        }
        for v in [
            check_list_append(&h.events),
            check_register(&h.events),
            check_bank(&h.events, 2, 10),
            check_sessions(&h.events),
        ] {
            assert!(v.valid || !v.anomalies.is_empty(), "an invalid verdict says why: {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated valid histories: clients run operations against an in-memory store that applies
// each one atomically at some instant between its invocation and completion (linearizable).
// Some operations fail before taking effect; some end `info`, having taken effect or not (a
// list-append or register operation may even take effect later), and the client carries on
// under a new process id.

/// One client's operation in flight.
struct Pending<Op> {
    process: u64,
    f: &'static str,
    op: Op,
    /// The completion's value, once the operation took effect.
    result: Option<Value>,
}

/// Drives `clients` concurrent clients for `steps` steps. `new_op` makes an operation for a
/// client; `apply` makes it take effect on the store, returning the completion's value or
/// `None` if it is refused (completed as `fail`).
struct Sim<S, Op> {
    rng: StdRng,
    h: H,
    store: S,
    next_process: u64,
    /// Indeterminate operations that have not taken effect yet (and may never).
    late: Vec<Op>,
}

impl<S, Op: Clone> Sim<S, Op> {
    fn run(
        seed: u64,
        clients: usize,
        steps: usize,
        store: S,
        late_ok: bool,
        mut new_op: impl FnMut(&mut StdRng, &mut S, usize) -> (&'static str, Op, Value),
        mut apply: impl FnMut(&mut S, &Op) -> Option<Value>,
    ) -> Vec<Event> {
        let mut sim =
            Sim { rng: StdRng::seed_from_u64(seed), h: H::default(), store, next_process: 0, late: vec![] };
        let mut pending: Vec<Option<Pending<Op>>> = (0..clients).map(|_| None).collect();
        let mut processes: Vec<u64> = (0..clients as u64).collect();
        sim.next_process = clients as u64;
        for _ in 0..steps {
            if !sim.late.is_empty() && sim.rng.gen_bool(0.02) {
                let op = sim.late.swap_remove(sim.rng.gen_range(0..sim.late.len()));
                apply(&mut sim.store, &op);
            }
            let c = sim.rng.gen_range(0..clients);
            let roll: f64 = sim.rng.gen();
            match pending[c].take() {
                None => {
                    let (f, op, value) = new_op(&mut sim.rng, &mut sim.store, c);
                    sim.h.invoke(processes[c], f, value);
                    pending[c] = Some(Pending { process: processes[c], f, op, result: None });
                }
                Some(mut p) if p.result.is_none() => {
                    if roll < 0.03 {
                        // Indeterminate before taking effect: maybe later, maybe never.
                        sim.h.info(p.process, p.f, Value::Null);
                        if late_ok {
                            sim.late.push(p.op);
                        }
                        processes[c] = sim.next_process;
                        sim.next_process += 1;
                    } else if roll < 0.06 {
                        sim.h.fail(p.process, p.f, Value::Null);
                    } else {
                        match apply(&mut sim.store, &p.op) {
                            Some(v) => {
                                p.result = Some(v);
                                pending[c] = Some(p);
                            }
                            None => {
                                sim.h.fail(p.process, p.f, Value::Null);
                            }
                        }
                    }
                }
                Some(p) => {
                    if roll < 0.03 {
                        sim.h.info(p.process, p.f, Value::Null);
                        processes[c] = sim.next_process;
                        sim.next_process += 1;
                    } else {
                        sim.h.ok(p.process, p.f, p.result.expect("applied"));
                    }
                }
            }
        }
        // Whatever is still in flight stays open, as when a run ends.
        sim.h.events
    }
}

fn simulate_list_append(seed: u64, steps: usize) -> Vec<Event> {
    let mut next: HashMap<i64, i64> = HashMap::new();
    let events = Sim::run(
        seed,
        5,
        steps,
        HashMap::<i64, Vec<i64>>::new(),
        true,
        |rng, _, _| {
            let mops: Vec<Value> = (0..rng.gen_range(1..4))
                .map(|_| {
                    let key = rng.gen_range(0..6);
                    if rng.gen_bool(0.5) {
                        let n = next.entry(key).or_insert(0);
                        *n += 1;
                        json!(["append", key, *n])
                    } else {
                        json!(["r", key, null])
                    }
                })
                .collect();
            let v = Value::Array(mops);
            ("txn", v.clone(), v)
        },
        |store, txn| {
            let done = txn
                .as_array()
                .expect("a txn")
                .iter()
                .map(|m| {
                    let key = m[1].as_i64().expect("key");
                    let list = store.entry(key).or_default();
                    match m[0].as_str() {
                        Some("append") => {
                            list.push(m[2].as_i64().expect("element"));
                            m.clone()
                        }
                        _ => json!(["r", key, list.clone()]),
                    }
                })
                .collect();
            Some(Value::Array(done))
        },
    );
    assert!(events.len() > steps / 2);
    events
}

fn simulate_register(seed: u64, steps: usize) -> Vec<Event> {
    let mut next = 0;
    Sim::run(
        seed,
        6,
        steps,
        HashMap::<i64, i64>::new(),
        true,
        |rng, _, _| {
            let key = rng.gen_range(0..8);
            if rng.gen_bool(0.4) {
                next += 1;
                ("write", (key, Some(next)), w(key, next))
            } else {
                ("read", (key, None), r(key, None))
            }
        },
        |store, &(key, write)| match write {
            Some(v) => {
                store.insert(key, v);
                Some(w(key, v))
            }
            None => Some(r(key, store.get(&key).copied())),
        },
    )
}

fn simulate_bank(seed: u64, steps: usize) -> Vec<Event> {
    let store: BTreeMap<i64, i64> = (0..5).map(|a| (a, 100)).collect();
    Sim::run(
        seed,
        5,
        steps,
        store,
        true,
        |rng, _, _| {
            if rng.gen_bool(0.6) {
                let (from, to, amount) = (rng.gen_range(0..5), rng.gen_range(0..5), rng.gen_range(1..60));
                ("transfer", Some((from, to, amount)), transfer(from, to, amount))
            } else {
                ("read", None, Value::Null)
            }
        },
        |store, op| match *op {
            // Refused overdrafts complete as fail, or as ok without effect.
            Some((from, _, amount)) if store[&from] < amount => (amount % 2 == 0).then(|| json!({})),
            Some((from, to, amount)) => {
                *store.get_mut(&from).expect("account") -= amount;
                *store.get_mut(&to).expect("account") += amount;
                Some(transfer(from, to, amount))
            }
            None => {
                let b: serde_json::Map<String, Value> =
                    store.iter().map(|(a, b)| (a.to_string(), json!(b))).collect();
                Some(json!({ "balances": b }))
            }
        },
    )
}

fn simulate_sessions(seed: u64, steps: usize) -> Vec<Event> {
    // Session = client slot; each writes increasing values to its own key. The store keeps
    // (value, receipt index) per key and a global index, bumped by every write.
    let mut next = [0i64; 6];
    Sim::run(
        seed,
        6,
        steps,
        (HashMap::<i64, i64>::new(), 0i64),
        // A late write would overwrite a newer one of the same session: not what a session
        // sees from a database that orders its writes, so indeterminate writes here take
        // effect before their completion or never.
        false,
        |rng, _, c| {
            let session = c as i64;
            if rng.gen_bool(0.4) {
                next[c] += 1 + rng.gen_range(0..3);
                ("write", (session, Some(next[c])), sw(session, next[c]))
            } else {
                ("read", (session, None), sr(session, None, None))
            }
        },
        |(store, index), &(session, write)| match write {
            Some(v) => {
                store.insert(session * 10, v);
                *index += 1;
                Some(sw(session, v))
            }
            None => Some(sr(session, store.get(&(session * 10)).copied(), Some(*index))),
        },
    )
}
