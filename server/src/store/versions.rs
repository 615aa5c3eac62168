//! Old values kept for long reads, so that apply never waits for a read (issue 16).
//!
//! A read must see one applied state, between two entries. Short reads get that by holding the
//! state machine's lock ([`StateMachine::read`](super::StateMachine::read)), which apply waits
//! for; a read that may run long (up to `--query-timeout-ms`) would then hold apply — and with
//! it every write acknowledged through this node, and every later read — for as long as it
//! runs. Such a read instead **pins** the applied state ([`Versions::pin`], under the lock for
//! a moment) and reads without the lock. While any pin is held, apply saves the value each key
//! had before the entry that changes it ([`Versions::save`], before the entry's batch reaches
//! sled), tagged with that entry's index. A pinned read resolves every key it reads: the first
//! saved value tagged at or after its pin is the value it had at the pin; with none, sled's
//! value is still that value. Range reads merge sled's keys with the saved ones, so rows deleted
//! after the pin are still seen and rows inserted after it are not.
//!
//! Order matters and makes it race-free: a reader reads sled first and then asks for saved
//! values; apply saves before it writes. So a value read from sled that has changed since the
//! pin always has its saved predecessor by the time the reader asks.
//!
//! Bounds: a saved value is kept only while a pin older than it is held, and at most one per key
//! per pin ([`Versions::save`] skips a key whose newest saved value already serves every pin).
//! When the saved values exceed [`MAX_SAVED_BYTES`] (a long read under a write storm, or a
//! table dropped under it), every read pinned until then is stopped at its next access with a
//! "retry" error; the values go when those reads do. A snapshot install retires the whole
//! generation: its pinned reads stop at their next access, and the install waits only for
//! accesses in progress ([`Versions::retire`]), never for a whole read.

use crate::changeset::ReadError;
use sled::IVec;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Saved values past which pinned reads are stopped (keys and values, bytes).
pub(crate) const MAX_SAVED_BYTES: usize = 128 << 20;

/// The versions of one state-machine generation.
#[derive(Default)]
pub(crate) struct Versions {
    inner: Mutex<Inner>,
    /// Saved values held now: 0 lets a reader skip the lock (nothing changed since any pin).
    saved: AtomicUsize,
    /// Pins below this are stopped: their next access is an error.
    stopped_below: AtomicU64,
    /// False once the generation is retired (snapshot install): held for reading around every
    /// pinned access to the tree, so the retirement waits for accesses in progress.
    alive: RwLock<bool>,
    /// [`MAX_SAVED_BYTES`], lower in tests.
    max_bytes: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Active pins: pinned position → readers.
    pins: BTreeMap<u64, usize>,
    /// Key → (index of the entry that changed it, the value before that entry), by index.
    old: BTreeMap<Vec<u8>, Vec<(u64, Option<IVec>)>>,
    bytes: usize,
    /// Why pins below `stopped_below` were stopped.
    why: String,
}

/// Whether `from..hi` can hold a key (`BTreeMap::range` panics on an inverted range).
fn nonempty(from: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    use Bound::*;
    match (from, hi) {
        (Unbounded, _) | (_, Unbounded) => true,
        (Included(a), Included(b)) => a <= b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => a < b,
    }
}

/// A value as it was at a pin: the first saved one changed at or after the pin.
fn value_at(list: &[(u64, Option<IVec>)], pos: u64) -> Option<&Option<IVec>> {
    list.iter().find(|(i, _)| *i >= pos).map(|(_, v)| v)
}

fn cost(key: &[u8], value: &Option<IVec>) -> usize {
    key.len() + value.as_ref().map_or(0, |v| v.len()) + 48
}

impl Versions {
    pub(crate) fn new() -> Arc<Versions> {
        Arc::new(Versions {
            alive: RwLock::new(true),
            max_bytes: AtomicUsize::new(MAX_SAVED_BYTES),
            ..Default::default()
        })
    }

    /// Pins the applied state whose next entry is `pos` (the last applied index + 1, or 0).
    /// Call with the state machine's lock held, so no entry is being applied.
    pub(crate) fn pin(self: &Arc<Self>, pos: u64) -> Pin {
        let mut inner = self.inner.lock().expect("versions lock");
        *inner.pins.entry(pos).or_default() += 1;
        Pin { versions: self.clone(), pos }
    }

    /// Whether apply must save old values (some read is pinned).
    pub(crate) fn has_pins(&self) -> bool {
        !self.inner.lock().expect("versions lock").pins.is_empty()
    }

    /// Records the values `olds` held before entry `index` changes them. Call before the
    /// entry's batch reaches sled, with the state machine's lock held for writing.
    pub(crate) fn save(&self, index: u64, olds: Vec<(Vec<u8>, Option<IVec>)>) {
        let mut inner = self.inner.lock().expect("versions lock");
        let Some(&newest_pin) = inner.pins.keys().next_back() else { return };
        for (key, value) in olds {
            let list = inner.old.entry(key.clone()).or_default();
            // A saved value changed at or after the newest pin already serves every pin.
            if list.last().is_some_and(|(i, _)| *i >= newest_pin) {
                continue;
            }
            let c = cost(&key, &value);
            list.push((index, value));
            inner.bytes += c;
            self.saved.fetch_add(1, Ordering::SeqCst);
        }
        let max = self.max_bytes.load(Ordering::Relaxed);
        if inner.bytes > max {
            inner.why = format!(
                "the read was stopped: the node saved over {} MiB of old values for reads pinned \
                 while entries were applied; retry it, or narrow it so it runs shorter",
                max >> 20
            );
            self.stopped_below.store(newest_pin + 1, Ordering::SeqCst);
        }
    }

    /// Stops every pinned read of this generation at its next access and waits for accesses
    /// in progress: after it returns, no pinned read touches the generation's tree again.
    pub(crate) fn retire(&self, why: &str) {
        self.inner.lock().expect("versions lock").why = why.to_string();
        self.stopped_below.store(u64::MAX, Ordering::SeqCst);
        *self.alive.write().expect("versions alive lock") = false;
    }

    /// Active pins and saved values (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("versions lock");
        (inner.pins.values().sum(), self.saved.load(Ordering::SeqCst))
    }

    #[cfg(test)]
    pub(crate) fn set_max_bytes(&self, max: usize) {
        self.max_bytes.store(max, Ordering::Relaxed);
    }

    fn unpin(&self, pos: u64) {
        let mut inner = self.inner.lock().expect("versions lock");
        if let Some(n) = inner.pins.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                inner.pins.remove(&pos);
            }
        }
        let Some(&oldest) = inner.pins.keys().next() else {
            inner.old.clear();
            inner.bytes = 0;
            self.saved.store(0, Ordering::SeqCst);
            return;
        };
        if oldest <= pos {
            return;
        }
        // Values changed before the oldest pin serve no pin.
        let (mut freed, mut count) = (0, 0);
        inner.old.retain(|key, list| {
            list.retain(|(i, v)| {
                let keep = *i >= oldest;
                if !keep {
                    freed += cost(key, v);
                    count += 1;
                }
                keep
            });
            !list.is_empty()
        });
        inner.bytes -= freed;
        self.saved.fetch_sub(count, Ordering::SeqCst);
    }
}

/// A read's hold on one applied state; dropping it lets the saved values go.
pub(crate) struct Pin {
    versions: Arc<Versions>,
    pos: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.versions.unpin(self.pos);
    }
}

impl Pin {
    /// Runs one access to the generation's tree, unless this read was stopped.
    pub(crate) fn access<R>(&self, f: impl FnOnce() -> Result<R, ReadError>) -> Result<R, ReadError> {
        let alive = self.versions.alive.read().expect("versions alive lock");
        if !*alive || self.pos < self.versions.stopped_below.load(Ordering::SeqCst) {
            let why = self.versions.inner.lock().expect("versions lock").why.clone();
            return Err(ReadError(why));
        }
        f()
    }

    /// Whether this read was stopped (see [`Pin::access`]).
    pub(crate) fn stopped(&self) -> bool {
        self.pos < self.versions.stopped_below.load(Ordering::SeqCst)
    }

    /// The value `key` had at the pin, given `current`, the value read from sled just now.
    pub(crate) fn resolve(&self, key: &[u8], current: Option<IVec>) -> Option<IVec> {
        if self.versions.saved.load(Ordering::SeqCst) == 0 {
            return current;
        }
        let inner = self.versions.inner.lock().expect("versions lock");
        match inner.old.get(key).and_then(|list| value_at(list, self.pos)) {
            Some(v) => v.clone(),
            None => current,
        }
    }

    /// The first key after `from` and inside `hi` that changed since the pin, with its value at
    /// the pin (None: it did not exist then).
    pub(crate) fn next_changed(
        &self,
        from: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Option<(Vec<u8>, Option<IVec>)> {
        if self.versions.saved.load(Ordering::SeqCst) == 0 || !nonempty(from, hi) {
            return None;
        }
        let inner = self.versions.inner.lock().expect("versions lock");
        inner
            .old
            .range::<[u8], _>((from, hi))
            .find_map(|(k, list)| value_at(list, self.pos).map(|v| (k.clone(), v.clone())))
    }

    /// The last key inside `lo..hi` that existed at the pin and changed since, with its value.
    pub(crate) fn last_changed(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Option<(Vec<u8>, IVec)> {
        if self.versions.saved.load(Ordering::SeqCst) == 0 || !nonempty(lo, hi) {
            return None;
        }
        let inner = self.versions.inner.lock().expect("versions lock");
        inner
            .old
            .range::<[u8], _>((lo, hi))
            .rev()
            .find_map(|(k, list)| value_at(list, self.pos).and_then(|v| v.clone()).map(|v| (k.clone(), v)))
    }
}

/// Key/value pairs of one key range as they were at a pin: sled's live range merged with the
/// saved values (a key changed since the pin has its old value; one deleted since is still
/// there; one created since is not).
pub(crate) struct PinnedRange<'a> {
    pub(crate) pin: &'a Pin,
    pub(crate) sled: sled::Iter,
    pub(crate) peeked: Option<(IVec, IVec)>,
    pub(crate) sled_done: bool,
    pub(crate) lo: Bound<Vec<u8>>,
    pub(crate) hi: Bound<Vec<u8>>,
    /// The last key returned (or skipped).
    pub(crate) pos: Option<Vec<u8>>,
    /// Where a failure of sled itself is recorded (`store::fault`).
    pub(crate) fault: &'a super::fault::Fault,
}

impl Iterator for PinnedRange<'_> {
    type Item = Result<(Vec<u8>, IVec), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let step = self.pin.access(|| {
                if self.peeked.is_none() && !self.sled_done {
                    match self.sled.next() {
                        Some(Ok(kv)) => self.peeked = Some(kv),
                        Some(Err(e)) => return Err(ReadError(self.fault.record(format!("sled: {e}")))),
                        None => self.sled_done = true,
                    }
                }
                let from = match &self.pos {
                    Some(p) => Bound::Excluded(p.as_slice()),
                    None => self.lo.as_ref().map(Vec::as_slice),
                };
                let changed = self.pin.next_changed(from, self.hi.as_ref().map(Vec::as_slice));
                Ok(match (self.peeked.take(), changed) {
                    (None, None) => None,
                    (None, Some(c)) => Some(c),
                    (Some((k, v)), Some((ck, cv))) if ck.as_slice() <= &*k => {
                        if ck.as_slice() < &*k {
                            self.peeked = Some((k, v));
                        }
                        Some((ck, cv))
                    }
                    (Some((k, v)), _) => {
                        let v = self.pin.resolve(&k, Some(v));
                        Some((k.to_vec(), v))
                    }
                })
            });
            match step {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some((k, v))) => {
                    self.pos = Some(k.clone());
                    if let Some(v) = v {
                        return Some(Ok((k, v)));
                    }
                }
            }
        }
    }
}
