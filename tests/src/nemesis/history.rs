//! Histories: what each client process invoked and how it completed, as JSON lines.
//!
//! The format is Elle's (and so `adya`'s): one object per line with `index`, `type` (`invoke`,
//! `ok`, `fail`, `info`), `process`, `f` and `value`, plus `time` (ns since the run started) and,
//! on completions, `error` when there was one. An `invoke` is always followed, later in the file,
//! by exactly one completion of the same process — unless the run ended first, in which case the
//! operation stays open (as Elle treats it: indeterminate).
//!
//! - `ok`: the operation happened, with the completion's `value`.
//! - `fail`: it certainly did not happen (the server refused it before proposing anything: a
//!   SQL error, a constraint). Nothing of it may be visible.
//! - `info`: unknown — a timeout, a lost connection, a leader change mid-flight. It may or may
//!   not have happened, at any time after its invocation.
//!
//! A process performs one operation at a time. A process that saw `info` is retired and its
//! client continues under a fresh process id, as in Jepsen, so that "one operation at a time per
//! process" holds even though the indeterminate operation may still take effect later.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The kind of a history event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub process: u64,
    /// The operation's name within its workload ("txn", "read", "write", "transfer", ...).
    pub f: String,
    pub value: serde_json::Value,
    /// Nanoseconds since the recorder was created.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records one workload's history, in memory and (line by line, so a crash keeps what was
/// recorded) in a JSON-lines file. Cheap to clone; clones append to the same history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    start: Instant,
    events: Vec<Event>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    path: Option<PathBuf>,
    next_process: u64,
}

impl Recorder {
    /// A recorder writing to `path` (created or truncated).
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder::with(Some(std::io::BufWriter::new(file)), Some(path.to_path_buf())))
    }

    /// A recorder that only keeps events in memory (checker tests).
    pub fn in_memory() -> Recorder {
        Recorder::with(None, None)
    }

    fn with(file: Option<std::io::BufWriter<std::fs::File>>, path: Option<PathBuf>) -> Recorder {
        let inner = Inner { start: Instant::now(), events: Vec::new(), file, path, next_process: 0 };
        Recorder { inner: Arc::new(Mutex::new(inner)) }
    }

    /// A fresh process id (never reused within this history).
    pub fn new_process(&self) -> u64 {
        let mut inner = self.inner.lock().expect("recorder lock");
        inner.next_process += 1;
        inner.next_process - 1
    }

    /// Appends an event and returns its index.
    pub fn record(
        &self,
        kind: EventType,
        process: u64,
        f: &str,
        value: serde_json::Value,
        error: Option<String>,
    ) -> u64 {
        let mut inner = self.inner.lock().expect("recorder lock");
        let index = inner.events.len() as u64;
        let time = inner.start.elapsed().as_nanos() as u64;
        let event = Event { index, kind, process, f: f.to_string(), value, time, error };
        if let Some(file) = inner.file.as_mut() {
            // Best effort: a full disk must not stop the run; the in-memory copy is what is checked.
            let _ = serde_json::to_writer(&mut *file, &event);
            let _ = file.write_all(b"\n");
        }
        inner.events.push(event);
        index
    }

    pub fn invoke(&self, process: u64, f: &str, value: serde_json::Value) -> u64 {
        self.record(EventType::Invoke, process, f, value, None)
    }

    /// Flushes the file (call before checking and before the run's end).
    pub fn flush(&self) {
        let mut inner = self.inner.lock().expect("recorder lock");
        if let Some(file) = inner.file.as_mut() {
            let _ = file.flush();
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().expect("recorder lock").events.clone()
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.inner.lock().expect("recorder lock").path.clone()
    }
}

/// Renders events as JSON lines (what `adya` parses).
pub fn to_json_lines(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&serde_json::to_string(e).expect("events serialize"));
        out.push('\n');
    }
    out
}

/// Reads a JSON-lines history.
pub fn read_json_lines(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("history line {}: {e}", i + 1)))
        .collect()
}
