//! At most one log line a second for an event a remote party can cause at will (a failed
//! authentication, a failed TLS handshake): the count goes on, the log does not flood.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct LogThrottle(Mutex<(Option<Instant>, u64)>);

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle(Mutex::new((None, 0)))
    }

    /// `Some(n)` when this event may be logged, `n` being how many were not logged since the
    /// last one that was; `None` when it must not be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.0.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            last.1 += 1;
            return None;
        }
        last.0 = Some(now);
        Some(std::mem::take(&mut last.1))
    }
}
