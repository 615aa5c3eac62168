//! The watchdog: notices when a part of the node stops making progress, says so in the log and
//! in `Status`, and dumps what each part and each thread is waiting on.
//!
//! A node that is alive but answers nothing and logs nothing is the worst failure to diagnose
//! (issue 23: a deadlock inside sled froze a node's Raft core, apply and both tokio workers).
//! So the parts that must keep moving report here, and one plain OS thread — not a tokio task,
//! which a starved runtime would never run — checks them every second:
//!
//! - **Activities** ([`Activity`]): a piece of work that must finish in bounded time marks itself
//!   busy while it runs ([`Activity::enter`]): the sled fsync, a log append, applying entries,
//!   building or installing a snapshot, evaluating a write batch. Busy for longer than its
//!   limit is a stall.
//! - **The RPC runtime**: a tokio task bumps a heartbeat every 250 ms ([`spawn_probes`]); a
//!   heartbeat older than [`RUNTIME_LIMIT`] means every worker is blocked or starved.
//! - **The Raft core**: a tokio task asks openraft's core a trivial question every second
//!   through the `raft core` activity; openraft answers it from its main loop, so a core stuck
//!   in a storage call or a lock shows up as that activity staying busy.
//!
//! On the first check that finds a stall the watchdog logs one `error` naming every stalled
//! part, how long it has been stuck and the log index it was at, then a dump: every watched
//! activity, the runtime's worker and task counts, and every OS thread of the process with its
//! name, state and kernel wait channel (`/proc/self/task`). It repeats the line every 30 s while
//! the stall lasts and logs `info` when it clears. [`stalls`] (episodes so far) and
//! [`stalled`] (what is stuck now) are reported by `Status` (`watchdog_stalls`, `stalled`).
//!
//! A freeze of the whole process (SIGSTOP, a paused VM or container) stops the watchdog too;
//! when its own one-second sleep took far longer, it logs the pause and checks nothing for
//! [`RUNTIME_LIMIT`], so a freeze is not reported as a stall. It only observes: it never
//! kills, restarts or unblocks anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the runtime heartbeat may be silent before the runtime counts as stalled.
pub const RUNTIME_LIMIT: Duration = Duration::from_secs(5);

/// A piece of work that must finish in bounded time.
pub struct Activity {
    pub name: &'static str,
    /// Longer than this while busy is a stall.
    pub limit: Duration,
    /// When the current run started ([`now_ms`]), 0 while idle.
    since: AtomicU64,
    /// What the current run is about (a log index), for the dump.
    arg: AtomicU64,
}

impl Activity {
    pub const fn new(name: &'static str, limit: Duration) -> Activity {
        Activity { name, limit, since: AtomicU64::new(0), arg: AtomicU64::new(0) }
    }

    /// Marks the activity busy until the guard is dropped; `arg` says what it works on.
    #[must_use = "the activity is busy only while the guard lives"]
    pub fn enter(&'static self, arg: u64) -> Busy {
        self.arg.store(arg, Ordering::Relaxed);
        self.since.store(now_ms(), Ordering::Release);
        Busy(self)
    }

    /// How long the current run has taken, if one is under way.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }
}

/// Marks an [`Activity`] idle again when dropped (also on an early return or a panic).
pub struct Busy(&'static Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.since.store(0, Ordering::Release);
    }
}

/// The sled fsync (the one flusher thread's `Db::flush`).
pub static FSYNC: Activity = Activity::new("sled fsync", Duration::from_secs(5));
/// Writing appended entries into the log tree (arg: first index).
pub static LOG_APPEND: Activity = Activity::new("log append", Duration::from_secs(5));
/// Applying committed entries to the state machine (arg: first index).
pub static APPLY: Activity = Activity::new("apply", Duration::from_secs(10));
/// Building a snapshot (arg: last applied index).
pub static SNAPSHOT_BUILD: Activity = Activity::new("snapshot build", Duration::from_secs(120));
/// Installing a received snapshot (arg: its last index).
pub static SNAPSHOT_INSTALL: Activity = Activity::new("snapshot install", Duration::from_secs(120));
/// The sequencer evaluating one batch of writes (arg: requests in the batch).
pub static EVALUATE: Activity = Activity::new("write evaluation", Duration::from_secs(30));
/// openraft's core answering a trivial question (see the module doc).
pub static RAFT_CORE: Activity = Activity::new("raft core", Duration::from_secs(5));

static ACTIVITIES: [&Activity; 7] =
    [&FSYNC, &LOG_APPEND, &APPLY, &SNAPSHOT_BUILD, &SNAPSHOT_INSTALL, &EVALUATE, &RAFT_CORE];

/// Last beat of the runtime heartbeat ([`now_ms`]); 0 before the first.
static HEARTBEAT: AtomicU64 = AtomicU64::new(0);
static STALLS: AtomicU64 = AtomicU64::new(0);
static STALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Milliseconds on a monotonic clock, never 0.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Stall episodes seen since the process started.
pub fn stalls() -> u64 {
    STALLS.load(Ordering::Relaxed)
}

/// What is stalled now ("apply for 12.3 s at index 4100", ...), empty when all is well.
pub fn stalled() -> Vec<String> {
    STALLED.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Starts the runtime heartbeat and the Raft core probe on the current tokio runtime. They end
/// with the runtime.
pub fn spawn_probes(raft: crate::typ::Raft) {
    tokio::spawn(async {
        loop {
            HEARTBEAT.store(now_ms(), Ordering::Release);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let answered = {
                let _busy = RAFT_CORE.enter(0);
                raft.with_raft_state(|_| ()).await.is_ok()
            };
            if !answered {
                return; // the core has shut down
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// The watchdog thread; stops (and is joined) when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts checking every `every`; `runtime` is the node's tokio runtime, for the dump.
    pub fn start(every: Duration, runtime: tokio::runtime::Handle) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("raftsql-watchdog".into()).spawn(move || {
            let mut last_report: Option<Instant> = None;
            let mut quiet_until = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let slept = Instant::now();
                std::thread::sleep(every);
                let overslept = slept.elapsed().saturating_sub(every);
                if overslept > Duration::from_secs(2) {
                    // The whole process was frozen (SIGSTOP, a paused VM or container): every
                    // part looks stuck for as long as the freeze. Give them time to catch up.
                    tracing::info!(
                        paused_ms = overslept.as_millis() as u64,
                        "watchdog: this process was paused"
                    );
                    quiet_until = Instant::now() + RUNTIME_LIMIT;
                }
                if Instant::now() >= quiet_until {
                    check(&ACTIVITIES, &runtime, &mut last_report);
                }
            }
        })?;
        Ok(Watchdog { stop, thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round: finds what is stalled, reports a new or lasting stall, notes when it clears.
fn check(activities: &[&Activity], runtime: &tokio::runtime::Handle, last_report: &mut Option<Instant>) {
    let stuck = stuck_now(activities);
    if let Ok(mut s) = STALLED.lock() {
        s.clone_from(&stuck);
    }
    match (stuck.is_empty(), *last_report) {
        (true, None) => {}
        (true, Some(_)) => {
            tracing::info!("watchdog: every part of the node is making progress again");
            *last_report = None;
        }
        (false, None) => {
            STALLS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                stalled = %stuck.join("; "),
                "watchdog: part of this node has made no progress (a deadlock, a blocked runtime or \
                 a stuck disk); it may stop answering. Dump follows; report it with the node's log"
            );
            tracing::error!("watchdog dump:\n{}", dump(runtime));
            *last_report = Some(Instant::now());
        }
        (false, Some(at)) if at.elapsed() >= Duration::from_secs(30) => {
            tracing::error!(stalled = %stuck.join("; "), "watchdog: still no progress");
            *last_report = Some(Instant::now());
        }
        (false, Some(_)) => {}
    }
}

fn stuck_now(activities: &[&Activity]) -> Vec<String> {
    let mut stuck = Vec::new();
    for a in activities {
        if let Some(d) = a.busy_for().filter(|d| *d > a.limit) {
            stuck.push(format!(
                "{} for {:.1} s at {}",
                a.name,
                d.as_secs_f64(),
                a.arg.load(Ordering::Relaxed)
            ));
        }
    }
    let beat = HEARTBEAT.load(Ordering::Acquire);
    if beat != 0 {
        let silent = Duration::from_millis(now_ms().saturating_sub(beat));
        if silent > RUNTIME_LIMIT {
            stuck.push(format!(
                "tokio runtime for {:.1} s (no worker ran the heartbeat)",
                silent.as_secs_f64()
            ));
        }
    }
    stuck
}

/// Every activity, the runtime's counters, and every thread with its state and wait channel.
fn dump(runtime: &tokio::runtime::Handle) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in ACTIVITIES {
        let _ = match a.busy_for() {
            Some(d) => writeln!(
                out,
                "  activity {:<17} busy {:>8.1} s (limit {} s) at {}",
                a.name,
                d.as_secs_f64(),
                a.limit.as_secs(),
                a.arg.load(Ordering::Relaxed)
            ),
            None => writeln!(out, "  activity {:<17} idle", a.name),
        };
    }
    let m = runtime.metrics();
    let _ = writeln!(
        out,
        "  tokio: {} workers, {} live tasks, {} tasks in the global queue",
        m.num_workers(),
        m.num_alive_tasks(),
        m.global_queue_depth()
    );
    let mut threads: Vec<(u64, String)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        // Bounded by the process's thread count.
        for entry in dir.flatten() {
            let path = entry.path();
            let tid = entry.file_name().to_string_lossy().parse::<u64>().unwrap_or(0);
            let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
            let name = read("comm").trim().to_string();
            // `stat` is "tid (comm) S ...": the state follows the last ')'.
            let stat = read("stat");
            let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?");
            let wchan = read("wchan");
            threads.push((tid, format!("  thread {tid:<7} {name:<16} state {state} waiting in {wchan}")));
        }
    }
    threads.sort();
    for (_, line) in threads {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static SLOW: Activity = Activity::new("test activity", Duration::from_millis(50));

    #[test]
    fn a_busy_activity_past_its_limit_is_a_stall_and_clears_when_done() {
        assert!(SLOW.busy_for().is_none());
        {
            let _busy = SLOW.enter(42);
            std::thread::sleep(Duration::from_millis(80));
            let d = SLOW.busy_for().expect("busy");
            assert!(d > SLOW.limit, "{d:?}");
        }
        assert!(SLOW.busy_for().is_none(), "the guard marks it idle again");
    }

    #[test]
    fn a_stall_is_counted_once_reported_in_status_and_cleared() {
        static STUCK: Activity = Activity::new("stuck activity", Duration::from_millis(20));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let mut last = None;
        let before = stalls();
        check(&[&STUCK], rt.handle(), &mut last);
        assert!(stalled().is_empty() && last.is_none(), "idle is not a stall");
        let busy = STUCK.enter(4100);
        std::thread::sleep(Duration::from_millis(40));
        check(&[&STUCK], rt.handle(), &mut last);
        check(&[&STUCK], rt.handle(), &mut last);
        assert_eq!(stalls(), before + 1, "one episode, however many checks see it");
        let now = stalled();
        assert!(
            now.len() == 1 && now[0].starts_with("stuck activity for ") && now[0].ends_with("at 4100"),
            "{now:?}"
        );
        drop(busy);
        check(&[&STUCK], rt.handle(), &mut last);
        assert!(stalled().is_empty() && last.is_none(), "cleared once it finished");
    }

    #[test]
    fn the_dump_lists_activities_and_this_thread() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let d = dump(rt.handle());
        assert!(d.contains("activity sled fsync"), "{d}");
        assert!(d.contains("tokio: 1 workers") || d.contains("tokio: 0 workers"), "{d}");
        assert!(d.contains("thread "), "{d}");
    }
}
