//! The one place that fsyncs the sled database: a dedicated thread doing group fsync.
//!
//! sled 0.34.7 can deadlock when several `flush_async` calls run at once, and every flush
//! persists *all* earlier writes of the whole database anyway. So every caller that needs its
//! writes durable sends a [`Done`] to this thread; the thread takes every request waiting, calls
//! `Db::flush` once, and completes them all with its result. One fsync covers many appends.
//!
//! Ordering: a request is sent after its writes were made, so the flush that completes it was
//! started after them and covers them.

use crate::typ::TypeConfig;
use openraft::storage::LogFlushed;
use std::io;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Who to tell when a flush finished.
pub(crate) enum Done {
    /// openraft's append callback.
    Log(LogFlushed<TypeConfig>),
    /// An async caller awaiting the flush.
    Async(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// A caller on a blocking thread.
    Blocking(mpsc::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, result: io::Result<()>) {
        match self {
            Done::Log(cb) => cb.log_io_completed(result),
            // A caller that went away no longer needs the answer.
            Done::Async(tx) => drop(tx.send(result)),
            Done::Blocking(tx) => drop(tx.send(result)),
        }
    }
}

/// Handle to the flusher thread; dropping the last one stops and joins the thread, so the
/// database is closed once every store handle is gone.
pub(crate) struct Flusher {
    tx: Mutex<Option<mpsc::Sender<Done>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts the flusher thread. After each successful fsync it advances `mark` (see
    /// `watermark`) to what was durable at the fsync's start.
    pub(crate) fn start(db: sled::Db, mut mark: super::watermark::Keeper) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new().name("raftsql-flush".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                super::fault::hold_fsync();
                let durable = mark.before_flush();
                let result = {
                    let _busy = crate::watchdog::FSYNC.enter(waiting.len() as u64);
                    let started = std::time::Instant::now();
                    let r = db.flush();
                    crate::stats::since(&crate::stats::FSYNC_SECONDS, started);
                    r
                };
                if result.is_ok() {
                    mark.after_flush(durable);
                }
                tracing::trace!(requests = waiting.len(), ok = result.is_ok(), "group fsync");
                for done in waiting {
                    let r = match &result {
                        Ok(_) => Ok(()),
                        Err(e) => Err(io::Error::other(format!("fsync of the sled database failed: {e}"))),
                    };
                    done.complete(r);
                }
            }
        })?;
        Ok(Flusher { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Flushes every write made before this call, then completes `done` (maybe on another
    /// thread, maybe before this returns).
    pub(crate) fn flush_then(&self, done: Done) {
        let tx = self.tx.lock().expect("flusher lock: no code panics while holding it").clone();
        let unsent = match tx {
            Some(tx) => match tx.send(done) {
                Ok(()) => return,
                Err(mpsc::SendError(done)) => done,
            },
            None => done,
        };
        unsent.complete(Err(io::Error::other("the sled flusher thread has stopped")));
    }

    /// Flushes every write made before this call; returns when they are durable.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush_then(Done::Async(tx));
        rx.await.unwrap_or_else(|_| Err(io::Error::other("the sled flusher thread has stopped")))
    }

    /// Like [`Flusher::flush`], for blocking threads.
    pub(crate) fn flush_blocking(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.flush_then(Done::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err(io::Error::other("the sled flusher thread has stopped")))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            // The thread ends when the channel closes; it holds a `Db` handle until then.
            let _ = thread.join();
        }
    }
}
