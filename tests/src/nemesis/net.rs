//! The fault-injecting network: loopback TCP proxies that carry every peer and client link of a
//! test cluster, so a nemesis can cut a link one way or both, slow it, make it lossy and heal it,
//! without root and without touching the nodes.
//!
//! # Model
//!
//! Node `id` (1..=250) listens on its *upstream* address. [`Net::register`] opens an *entry*
//! listener on `127.0.0.1:<free port>` for it; the entry is what the node advertises to peers and
//! clients. Every node binds its outgoing sockets to [`source_ip`]`(id)` = `127.0.1.<id>`
//! (`--peer-source-addr`), so the entry proxy of `dst` tells who is calling from the peer address
//! of each accepted connection: `127.0.1.<i>` is node `i`, anything else is a client, node
//! [`CLIENT`] (0). Each directed pair `(src, dst)` is thus a logical link, multiplexed on `dst`'s
//! entry port: it has its own faults, live connections and counters ([`LinkStats`]).
//!
//! # Faults, at the byte level
//!
//! Faults behave like `iptables -j DROP` on messages, not like refused connections.
//!
//! - **Cut** `a → b` ([`Net::cut`]): bytes sent by `a` towards `b` are read and discarded, so
//!   `a`'s writes succeed and nothing arrives. On a connection from `src` to `dst` the requests
//!   (`src → dst` bytes) obey `blocked(src, dst)` and the replies (`dst → src` bytes) obey
//!   `blocked(dst, src)`; a one-way cut "b cannot hear a" therefore swallows `a`'s requests on
//!   `a → b` connections *and* `a`'s replies on `b → a` connections. Connections are still
//!   accepted while blocked (connect succeeds, nothing flows), so RPCs time out as under packet
//!   loss. When the request direction is cut no upstream connection is made at all (the SYN
//!   would have been lost), and a FIN in a cut direction is swallowed like data.
//! - **Every change of a pair's cut state resets its connections.** Discarding bytes in the middle
//!   of an HTTP/2 stream corrupts it, and so would letting bytes through again after a gap. So
//!   when `blocked(a, b)` changes (cut or heal), every live connection between `a` and `b`, in
//!   either direction, is reset (`SO_LINGER` 0, both sockets). A connection's cut state is taken
//!   when it is accepted and never changes: clients reconnect and start clean under the new state.
//! - **Latency** `a → b` ([`Net::set_latency`]): each chunk is stamped when the proxy reads it
//!   and written once `stamp + latency` has passed, in order, nothing lost. The latency is read
//!   per chunk, so changing it needs no reset. At most [`IN_FLIGHT`] bytes per direction wait in
//!   the queue; beyond that the proxy stops reading, which pushes back on the sender.
//! - **Loss** on node `n` with share `s` ([`Net::set_loss`]): every link touching `n` (to or from
//!   it, peers and clients) refuses a share `s` of new connections (accepted, then reset at
//!   once), and every [`LOSS_TICK`] (250 ms) each live connection touching `n` is reset with
//!   probability `s / 4`: on average once every `1 / s` seconds. At 30 % that is three refused
//!   connects in ten and a reset every ~3.3 s per connection: elections and retries, not a total
//!   outage. Two lossy endpoints combine as independent losses. Decisions come from one
//!   `StdRng` seeded by [`Net::new`], so a schedule replays as far as thread timing allows.
//! - **Upstream down** (node killed): the proxy's connect to the upstream fails (or takes more
//!   than 2 s) and the accepted connection is reset at once, as a dead host's RST would, so the
//!   harness sees kills fail fast.
//!
//! # Lifetime
//!
//! [`Net`] is a cheap `Clone`. Dropping the last clone, or [`Net::shutdown`] on any, drops every
//! listener's and connection's stop signal; each task then resets its sockets and ends at its
//! next poll. No lock is held across an `.await`. I/O errors are never panics: they end the one
//! connection and are visible in the counters.
//!
//! # Known gaps
//!
//! Loss is per connection, not per packet; a cut still completes the TCP handshake; faults on a
//! removed node stay until healed; [`Net::isolate`] cuts the nodes registered at the time of the
//! call only.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// The node id of every connection that does not come from a `127.0.1.<id>` source address.
pub const CLIENT: u64 = 0;
/// The highest node id: ids are the last octet of [`source_ip`].
pub const MAX_NODE: u64 = 250;
/// How often live connections touching a lossy node are considered for a reset.
pub const LOSS_TICK: Duration = Duration::from_millis(250);
/// Bytes that may wait per connection direction (behind a latency) before reading stops.
pub const IN_FLIGHT: usize = 1 << 20;
/// The read size of the copy loops.
const CHUNK: usize = 64 * 1024;
/// How long the proxy waits for an upstream connect before it treats the node as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The source address node `id` binds its outgoing connections to: `127.0.1.<id>`.
pub fn source_ip(id: u64) -> IpAddr {
    assert!((1..=MAX_NODE).contains(&id), "node ids are 1..={MAX_NODE}, got {id}");
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, id as u8))
}

/// The node a connection comes from, by its peer address: the inverse of [`source_ip`], and
/// [`CLIENT`] for any other address.
pub fn source_node(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => match v4.octets() {
            [127, 0, 1, id] if (1..=MAX_NODE).contains(&u64::from(id)) => u64::from(id),
            _ => CLIENT,
        },
        IpAddr::V6(_) => CLIENT,
    }
}

/// Counters of one link `src → dst`: the connections `src` opened to `dst`'s entry and the bytes
/// they carried. "Up" bytes flow `src → dst` (requests), "down" bytes `dst → src` (replies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections accepted on the entry port, refused ones included.
    pub accepted: u64,
    /// Connections reset at once by loss.
    pub refused: u64,
    /// Connections reset because the upstream could not be reached.
    pub upstream_failed: u64,
    /// Live connections reset by the net: a cut or heal, a loss tick, removal, shutdown.
    pub reset: u64,
    /// Connections that ended, for any reason (all of the above included).
    pub closed: u64,
    /// Request bytes written to the upstream.
    pub bytes_up: u64,
    /// Request bytes discarded by a cut.
    pub dropped_up: u64,
    /// Reply bytes written back to the source.
    pub bytes_down: u64,
    /// Reply bytes discarded by a cut.
    pub dropped_down: u64,
}

impl LinkStats {
    /// Connections accepted and not yet ended.
    pub fn live(&self) -> u64 {
        self.accepted.saturating_sub(self.closed) // the two are read one after the other
    }
}

/// The fault-injecting network; see the module doc. Clones share one network.
#[derive(Clone)]
pub struct Net {
    handle: Arc<Handle>,
}

/// Shuts the network down when the last [`Net`] clone goes; tasks hold only the state.
struct Handle {
    shared: Arc<Mutex<State>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shared).shutdown();
    }
}

struct State {
    closed: bool,
    rng: StdRng,
    nodes: BTreeMap<u64, Node>,
    /// Directed pairs whose bytes are discarded.
    blocked: BTreeSet<(u64, u64)>,
    /// Latency and counters per directed pair, created on first use.
    links: BTreeMap<(u64, u64), Arc<Link>>,
    /// Loss share per node, only non-zero entries.
    loss: BTreeMap<u64, f64>,
    /// Live connections by id (in accept order, so loss ticks draw in a stable order).
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Dropping it stops the loss ticker.
    ticker: Option<oneshot::Sender<()>>,
}

struct Node {
    entry: SocketAddr,
    upstream: SocketAddr,
    /// Dropping it stops the entry listener.
    _stop: oneshot::Sender<()>,
    /// The node's peer port, when it has one ([`Net::register_peer`]): a second entry with
    /// its own upstream, on the same links (faults between two nodes apply to both ports).
    peer: Option<(SocketAddr, SocketAddr, oneshot::Sender<()>)>,
}

struct Conn {
    src: u64,
    dst: u64,
    kill: oneshot::Sender<()>,
}

#[derive(Default)]
struct Link {
    latency_us: AtomicU64,
    c: Counters,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
    reset: AtomicU64,
    closed: AtomicU64,
    bytes_up: AtomicU64,
    dropped_up: AtomicU64,
    bytes_down: AtomicU64,
    dropped_down: AtomicU64,
}

impl Link {
    fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn stats(&self) -> LinkStats {
        let c = &self.c;
        LinkStats {
            accepted: c.accepted.load(Relaxed),
            refused: c.refused.load(Relaxed),
            upstream_failed: c.upstream_failed.load(Relaxed),
            reset: c.reset.load(Relaxed),
            closed: c.closed.load(Relaxed),
            bytes_up: c.bytes_up.load(Relaxed),
            dropped_up: c.dropped_up.load(Relaxed),
            bytes_down: c.bytes_down.load(Relaxed),
            dropped_down: c.dropped_down.load(Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

/// A poisoned lock only means a test panicked elsewhere; the state is still consistent
/// (every critical section is a handful of map operations that cannot panic halfway).
fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn name(id: u64) -> String {
    if id == CLIENT {
        "client".to_string()
    } else {
        id.to_string()
    }
}

/// The probability that at least one of two independent events happens.
fn either(p: f64, q: f64) -> f64 {
    1.0 - (1.0 - p) * (1.0 - q)
}

impl State {
    fn link(&mut self, src: u64, dst: u64) -> Arc<Link> {
        self.links.entry((src, dst)).or_default().clone()
    }

    fn loss(&self, node: u64) -> f64 {
        self.loss.get(&node).copied().unwrap_or(0.0)
    }

    /// Resets every live connection whose `(src, dst)` matches.
    fn kill_where(&mut self, matches: impl Fn(u64, u64) -> bool) {
        let ids: Vec<u64> =
            self.conns.iter().filter(|(_, c)| matches(c.src, c.dst)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                let _ = conn.kill.send(());
            }
        }
    }

    /// Sets whether `a → b` bytes are discarded; a change resets the connections between them.
    fn set_blocked(&mut self, a: u64, b: u64, blocked: bool) {
        let changed = if blocked { self.blocked.insert((a, b)) } else { self.blocked.remove(&(a, b)) };
        if changed {
            self.kill_where(|s, d| (s, d) == (a, b) || (s, d) == (b, a));
        }
    }

    /// Decides on a connection accepted on `dst`'s entry from `src`: `None` to reset it at once.
    fn admit(&mut self, src: u64, dst: u64, peer_port: bool) -> Option<Admitted> {
        let node = self.nodes.get(&dst).filter(|_| !self.closed)?;
        let upstream = if peer_port { node.peer.as_ref()?.1 } else { node.upstream };
        let up = self.link(src, dst);
        bump(&up.c.accepted, 1);
        let p = either(self.loss(src), self.loss(dst));
        if p > 0.0 && self.rng.gen_bool(p) {
            bump(&up.c.refused, 1);
            bump(&up.c.closed, 1);
            return None;
        }
        let (kill, killed) = oneshot::channel();
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn { src, dst, kill });
        Some(Admitted {
            id,
            upstream,
            up_blocked: self.blocked.contains(&(src, dst)),
            down_blocked: self.blocked.contains(&(dst, src)),
            down: self.link(dst, src),
            up,
            killed,
        })
    }

    fn loss_tick(&mut self) {
        if self.loss.is_empty() {
            return;
        }
        let k = LOSS_TICK.as_secs_f64();
        let per_tick = |s: &State, node: u64| (s.loss(node) * k).min(1.0);
        let mut victims = Vec::new();
        let conns: Vec<(u64, u64, u64)> = self.conns.iter().map(|(id, c)| (*id, c.src, c.dst)).collect();
        for (id, src, dst) in conns {
            let p = either(per_tick(self, src), per_tick(self, dst));
            if p > 0.0 && self.rng.gen_bool(p) {
                victims.push(id);
            }
        }
        for id in victims {
            if let Some(conn) = self.conns.remove(&id) {
                let _ = conn.kill.send(());
            }
        }
    }

    fn shutdown(&mut self) {
        self.closed = true;
        self.nodes.clear();
        self.ticker = None;
        // Dropping the senders wakes every connection task, which resets its sockets.
        self.conns.clear();
    }
}

impl Net {
    /// An empty network whose loss decisions draw from `StdRng::seed_from_u64(seed)`.
    pub fn new(seed: u64) -> Net {
        let state = State {
            closed: false,
            rng: StdRng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            blocked: BTreeSet::new(),
            links: BTreeMap::new(),
            loss: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            ticker: None,
        };
        Net { handle: Arc::new(Handle { shared: Arc::new(Mutex::new(state)) }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.handle.shared)
    }

    /// Proxies node `id`, listening on `upstream`; returns the entry address to advertise.
    /// Registering a known id again keeps its entry address, points it at the new upstream and
    /// resets the connections to the old one.
    pub async fn register(&self, id: u64, upstream: SocketAddr) -> io::Result<SocketAddr> {
        assert!((1..=MAX_NODE).contains(&id), "node ids are 1..={MAX_NODE}, got {id}");
        if let Some(entry) = self.reregister(id, upstream)? {
            return Ok(entry);
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let entry = listener.local_addr()?;
        let shared = self.handle.shared.clone();
        let mut state = self.state();
        if let Some(entry) = Self::update(&mut state, id, upstream)? {
            return Ok(entry); // a concurrent register won; ours closes here
        }
        let (stop, stopped) = oneshot::channel();
        state.nodes.insert(id, Node { entry, upstream, _stop: stop, peer: None });
        if state.ticker.is_none() {
            let (stop, stopped) = oneshot::channel();
            state.ticker = Some(stop);
            tokio::spawn(tick(shared.clone(), stopped));
        }
        drop(state);
        tokio::spawn(listen(shared, id, listener, stopped, false));
        Ok(entry)
    }

    /// Opens a second entry for node `id` (registered already), forwarding to its peer port
    /// `upstream`; returns the entry, which the node advertises as its peer address.
    pub async fn register_peer(&self, id: u64, upstream: SocketAddr) -> io::Result<SocketAddr> {
        {
            let mut state = self.state();
            let node = state
                .nodes
                .get_mut(&id)
                .ok_or_else(|| io::Error::other(format!("node {id} is not registered")))?;
            if let Some((entry, up, _)) = node.peer.as_mut() {
                let entry = *entry;
                if *up != upstream {
                    *up = upstream;
                    state.kill_where(|_, dst| dst == id);
                }
                return Ok(entry);
            }
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let entry = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let mut state = self.state();
        let node = state
            .nodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other(format!("node {id} is not registered")))?;
        if let Some((entry, _, _)) = &node.peer {
            return Ok(*entry); // a concurrent register won; ours closes here
        }
        node.peer = Some((entry, upstream, stop));
        drop(state);
        tokio::spawn(listen(self.handle.shared.clone(), id, listener, stopped, true));
        Ok(entry)
    }

    fn reregister(&self, id: u64, upstream: SocketAddr) -> io::Result<Option<SocketAddr>> {
        Self::update(&mut self.state(), id, upstream)
    }

    fn update(state: &mut State, id: u64, upstream: SocketAddr) -> io::Result<Option<SocketAddr>> {
        if state.closed {
            return Err(io::Error::other("the nemesis net is shut down"));
        }
        let Some(node) = state.nodes.get_mut(&id) else { return Ok(None) };
        let entry = node.entry;
        if node.upstream != upstream {
            node.upstream = upstream;
            state.kill_where(|_, dst| dst == id);
        }
        Ok(Some(entry))
    }

    /// Closes node `id`'s entry listener and resets every connection to or from it. Its faults
    /// stay until healed.
    pub fn remove_node(&self, id: u64) {
        let mut state = self.state();
        state.nodes.remove(&id);
        state.kill_where(|src, dst| src == id || dst == id);
    }

    /// The registered node ids, ascending.
    pub fn nodes(&self) -> Vec<u64> {
        self.state().nodes.keys().copied().collect()
    }

    /// The entry address of node `id`, if registered.
    pub fn entry_addr(&self, id: u64) -> Option<SocketAddr> {
        self.state().nodes.get(&id).map(|n| n.entry)
    }

    /// Whether bytes sent by `from` towards `to` are discarded.
    pub fn blocked(&self, from: u64, to: u64) -> bool {
        self.state().blocked.contains(&(from, to))
    }

    /// Cuts one way: `to` no longer hears `from`.
    pub fn cut(&self, from: u64, to: u64) {
        self.state().set_blocked(from, to, true);
    }

    /// Cuts both ways between `a` and `b`.
    pub fn cut_both(&self, a: u64, b: u64) {
        let mut state = self.state();
        state.set_blocked(a, b, true);
        state.set_blocked(b, a, true);
    }

    /// Removes cuts and latency both ways between `a` and `b` (loss is per node: see
    /// [`Net::set_loss`]).
    pub fn heal(&self, a: u64, b: u64) {
        let mut state = self.state();
        state.set_blocked(a, b, false);
        state.set_blocked(b, a, false);
        for pair in [(a, b), (b, a)] {
            if let Some(link) = state.links.get(&pair) {
                link.latency_us.store(0, Relaxed);
            }
        }
    }

    /// Removes every cut, latency and loss.
    pub fn heal_all(&self) {
        let mut state = self.state();
        let cuts: Vec<(u64, u64)> = state.blocked.iter().copied().collect();
        for (a, b) in cuts {
            state.set_blocked(a, b, false);
        }
        for link in state.links.values() {
            link.latency_us.store(0, Relaxed);
        }
        state.loss.clear();
    }

    /// Cuts both ways between every two nodes in different groups; adds to the existing cuts
    /// (call [`Net::heal_all`] first for a fresh partition). Clients and unlisted nodes are left
    /// alone.
    pub fn partition(&self, groups: &[Vec<u64>]) {
        let mut state = self.state();
        for (i, left) in groups.iter().enumerate() {
            for right in &groups[i + 1..] {
                for &a in left {
                    for &b in right {
                        state.set_blocked(a, b, true);
                        state.set_blocked(b, a, true);
                    }
                }
            }
        }
    }

    /// Cuts node `id` off from every other registered node, both ways; clients still reach it.
    pub fn isolate(&self, id: u64) {
        let mut state = self.state();
        let others: Vec<u64> = state.nodes.keys().copied().filter(|&n| n != id).collect();
        for other in others {
            state.set_blocked(id, other, true);
            state.set_blocked(other, id, true);
        }
    }

    /// Cuts node `id` off from every client, both ways; its peers still reach it.
    pub fn isolate_from_clients(&self, id: u64) {
        self.cut_both(id, CLIENT);
    }

    /// Delays every chunk sent `from → to` by `latency` (zero removes it).
    pub fn set_latency(&self, from: u64, to: u64, latency: Duration) {
        let link = self.state().link(from, to);
        // At least 1 µs, so a sub-microsecond latency is not read back as none.
        let us = if latency.is_zero() { 0 } else { latency.as_micros().clamp(1, u64::MAX.into()) as u64 };
        link.latency_us.store(us, Relaxed);
    }

    /// Makes every link touching `node` lossy with `share` in 0.0..=1.0 (0.0 removes it): see the
    /// module doc for the rates.
    pub fn set_loss(&self, node: u64, share: f64) {
        assert!((0.0..=1.0).contains(&share), "a loss share is in 0.0..=1.0, got {share}");
        let mut state = self.state();
        if share == 0.0 {
            state.loss.remove(&node);
        } else {
            state.loss.insert(node, share);
        }
    }

    /// The current faults, for logs: `cut 1→2, 2→1; latency 3→1 200ms; loss node 2 30%`, or
    /// `no faults`.
    pub fn describe(&self) -> String {
        let state = self.state();
        let arrow = |(a, b): (u64, u64)| format!("{}→{}", name(a), name(b));
        let mut parts = Vec::new();
        if !state.blocked.is_empty() {
            let cuts: Vec<String> = state.blocked.iter().map(|&p| arrow(p)).collect();
            parts.push(format!("cut {}", cuts.join(", ")));
        }
        let slow: Vec<String> = state
            .links
            .iter()
            .filter_map(|(&p, link)| link.latency().map(|d| format!("{} {d:?}", arrow(p))))
            .collect();
        if !slow.is_empty() {
            parts.push(format!("latency {}", slow.join(", ")));
        }
        if !state.loss.is_empty() {
            let lossy: Vec<String> =
                state.loss.iter().map(|(&n, s)| format!("node {} {:.0}%", name(n), s * 100.0)).collect();
            parts.push(format!("loss {}", lossy.join(", ")));
        }
        if parts.is_empty() {
            "no faults".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// Counters of every link that has accepted a connection, by `(src, dst)`.
    pub fn stats(&self) -> BTreeMap<(u64, u64), LinkStats> {
        let state = self.state();
        state.links.iter().map(|(&p, link)| (p, link.stats())).filter(|(_, s)| s.accepted > 0).collect()
    }

    /// Counters of the link `src → dst` (zero if it never carried a connection).
    pub fn link_stats(&self, src: u64, dst: u64) -> LinkStats {
        self.state().links.get(&(src, dst)).map(|l| l.stats()).unwrap_or_default()
    }

    /// Stops every listener and resets every connection, for all clones; later registers fail.
    pub fn shutdown(&self) {
        self.state().shutdown();
    }
}

/// A connection admitted on an entry port, with its fixed cut state.
struct Admitted {
    id: u64,
    upstream: SocketAddr,
    up_blocked: bool,
    down_blocked: bool,
    /// The connection's link `src → dst`: request latency and every counter.
    up: Arc<Link>,
    /// The link `dst → src`: reply latency.
    down: Arc<Link>,
    killed: oneshot::Receiver<()>,
}

/// Resets a socket when it is dropped.
fn set_reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn tick(shared: Arc<Mutex<State>>, mut stopped: oneshot::Receiver<()>) {
    let mut interval = tokio::time::interval(LOSS_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            _ = interval.tick() => lock(&shared).loss_tick(),
        }
    }
}

async fn listen(
    shared: Arc<Mutex<State>>,
    dst: u64,
    listener: TcpListener,
    mut stopped: oneshot::Receiver<()>,
    peer_port: bool,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors or similar: pause rather than spin.
            tokio::select! {
                biased;
                _ = &mut stopped => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
            }
        };
        let admitted = lock(&shared).admit(source_node(peer.ip()), dst, peer_port);
        match admitted {
            Some(admitted) => {
                tokio::spawn(connection(shared.clone(), admitted, stream));
            }
            None => set_reset(&stream),
        }
    }
}

enum End {
    /// Both directions ended on their own.
    Done,
    /// Reset by the net.
    Killed,
    /// The upstream could not be reached.
    Unreachable,
    /// An I/O error on either side.
    Broken,
}

async fn connection(shared: Arc<Mutex<State>>, admitted: Admitted, mut client: TcpStream) {
    let Admitted { id, upstream, up_blocked, down_blocked, up, down, mut killed } = admitted;
    let _ = client.set_nodelay(true);
    let mut server = None;
    let end = tokio::select! {
        biased;
        _ = &mut killed => End::Killed,
        end = forward(&mut client, &mut server, upstream, (up_blocked, down_blocked), &up, &down) => end,
    };
    let c = &up.c;
    let reason = match end {
        // An I/O error ends the connection without an RST, which could discard replies
        // already handed to the kernel but not yet sent.
        End::Done | End::Broken => None,
        End::Killed => Some(&c.reset),
        End::Unreachable => Some(&c.upstream_failed),
    };
    if let Some(counter) = reason {
        bump(counter, 1);
        set_reset(&client);
        if let Some(server) = &server {
            set_reset(server);
        }
    }
    drop((client, server));
    bump(&c.closed, 1);
    lock(&shared).conns.remove(&id);
}

async fn forward(
    client: &mut TcpStream,
    server: &mut Option<TcpStream>,
    upstream: SocketAddr,
    (up_blocked, down_blocked): (bool, bool),
    up: &Link,
    down: &Link,
) -> End {
    let c = &up.c;
    if up_blocked {
        // The SYN would have been lost: no upstream connection, swallow what the source sends.
        let mut buf = vec![0u8; CHUNK];
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return End::Done,
                Ok(n) => bump(&c.dropped_up, n),
                Err(_) => return End::Broken,
            }
        }
    }
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(stream)) => stream,
        _ => return End::Unreachable,
    };
    let _ = stream.set_nodelay(true);
    let stream = server.insert(stream);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = stream.split();
    let requests = pump(client_read, server_write, false, up, &c.bytes_up, &c.dropped_up);
    let replies = pump(server_read, client_write, down_blocked, down, &c.bytes_down, &c.dropped_down);
    match tokio::try_join!(requests, replies) {
        Ok(_) => End::Done,
        Err(_) => End::Broken,
    }
}

enum Chunk {
    Data(Option<Instant>, Vec<u8>),
    Eof,
}

/// Copies one direction: a reader that stamps chunks (or discards them if `blocked`) and a
/// writer that holds each until its stamp plus the link's latency, joined in one future so the
/// connection task owns both.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    blocked: bool,
    link: &Link,
    forwarded: &AtomicU64,
    dropped: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let budget = Semaphore::new(IN_FLIGHT);
    let budget = &budget;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if blocked {
                if n == 0 {
                    return Ok(()); // the FIN is lost too
                }
                bump(dropped, n);
                continue;
            }
            if n == 0 {
                let _ = tx.send(Chunk::Eof);
                return Ok(());
            }
            let due = link.latency().map(|d| Instant::now() + d);
            // n <= CHUNK < IN_FLIGHT, and the semaphore is never closed.
            budget.acquire_many(n as u32).await.map_err(io::Error::other)?.forget();
            let _ = tx.send(Chunk::Data(due, buf[..n].to_vec()));
        }
    };
    let write = async move {
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Chunk::Data(due, bytes) => {
                    if let Some(due) = due {
                        tokio::time::sleep_until(due).await;
                    }
                    to.write_all(&bytes).await?;
                    bump(forwarded, bytes.len());
                    budget.add_permits(bytes.len());
                }
                // The peer may have gone already; the other direction decides about errors.
                Chunk::Eof => {
                    let _ = to.shutdown().await;
                }
            }
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpSocket;
    use tokio::time::timeout;

    const DEADLINE: Duration = Duration::from_secs(10);
    /// How long a test watches for something that must not happen.
    const QUIET: Duration = Duration::from_millis(300);

    /// An echo server that reports the size of every chunk it receives before echoing it.
    async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        let _ = tx.send(n);
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// An address nothing listens on.
    async fn dead_addr() -> SocketAddr {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap()
    }

    async fn connect_from(id: u64, entry: SocketAddr) -> TcpStream {
        if id == CLIENT {
            return TcpStream::connect(entry).await.unwrap();
        }
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source_ip(id), 0)).unwrap();
        socket.connect(entry).await.unwrap()
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        timeout(DEADLINE, stream.read_exact(&mut back)).await.expect("the echo comes back").unwrap();
        back
    }

    /// Waits until the peer closes or resets `stream` (data before that is skipped).
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        timeout(DEADLINE, async { while let Ok(1..) = stream.read(&mut buf).await {} })
            .await
            .expect("the connection is closed");
    }

    /// Asserts that nothing arrives on `stream` for a while (and that it is not closed).
    async fn assert_silent(stream: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        let read = timeout(QUIET, stream.read(&mut buf)).await;
        assert!(read.is_err(), "expected silence, got {read:?}");
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn drain(seen: &mut mpsc::UnboundedReceiver<usize>) {
        while seen.try_recv().is_ok() {}
    }

    #[test]
    fn source_addresses_map_to_nodes() {
        assert_eq!(source_ip(2), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2)));
        for id in [1, 2, 250] {
            assert_eq!(source_node(source_ip(id)), id);
        }
        assert_eq!(source_node(IpAddr::V4(Ipv4Addr::LOCALHOST)), CLIENT);
        assert_eq!(source_node(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 0))), CLIENT);
        assert!(std::panic::catch_unwind(|| source_ip(0)).is_err());
        assert!(std::panic::catch_unwind(|| source_ip(251)).is_err());
    }

    #[tokio::test]
    async fn pass_through_classifies_by_source() {
        let net = Net::new(1);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        assert_eq!(net.entry_addr(1), Some(entry));
        assert_eq!(net.nodes(), vec![1]);

        let mut client = connect_from(CLIENT, entry).await;
        let mut peer = connect_from(2, entry).await;
        assert_eq!(round_trip(&mut client, b"from a client").await, b"from a client");
        assert_eq!(round_trip(&mut peer, b"from node 2").await, b"from node 2");

        eventually("both links count their bytes", || {
            let s = net.stats();
            s.get(&(CLIENT, 1)).is_some_and(|s| s.bytes_up == 13 && s.bytes_down == 13)
                && s.get(&(2, 1)).is_some_and(|s| s.bytes_up == 11 && s.bytes_down == 11)
        })
        .await;
        let stats = net.stats();
        assert_eq!(stats.keys().copied().collect::<Vec<_>>(), vec![(CLIENT, 1), (2, 1)]);
        assert_eq!(stats[&(2, 1)].accepted, 1);
        assert_eq!(stats[&(2, 1)].live(), 1);
        assert_eq!(net.describe(), "no faults");

        drop(peer);
        eventually("the closed connection is counted", || net.link_stats(2, 1).closed == 1).await;
        assert_eq!(net.link_stats(2, 1).reset, 0);
    }

    #[tokio::test]
    async fn cut_discards_requests_and_resets_connections() {
        let net = Net::new(2);
        let (up, mut seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        let mut conn = connect_from(2, entry).await;
        assert_eq!(round_trip(&mut conn, b"hello").await, b"hello");
        drain(&mut seen);

        net.cut(2, 1);
        assert!(net.blocked(2, 1) && !net.blocked(1, 2));
        assert_closed(&mut conn).await;
        eventually("the cut counts a reset", || net.link_stats(2, 1).reset == 1).await;

        // A black hole: the connect and the write succeed, nothing arrives, nothing comes back.
        let mut conn = connect_from(2, entry).await;
        conn.write_all(b"lost").await.unwrap();
        assert!(timeout(QUIET, seen.recv()).await.is_err(), "a cut request reached the upstream");
        assert_silent(&mut conn).await;
        eventually("the request is counted as dropped", || net.link_stats(2, 1).dropped_up == 4).await;

        // Clients are not cut.
        let mut client = connect_from(CLIENT, entry).await;
        assert_eq!(round_trip(&mut client, b"ok").await, b"ok");
    }

    #[tokio::test]
    async fn one_way_cut_discards_replies() {
        let net = Net::new(3);
        let (up, mut seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();

        // 2 cannot hear 1: on a connection from 2 to 1 the requests arrive, the replies do not.
        net.cut(1, 2);
        let mut conn = connect_from(2, entry).await;
        conn.write_all(b"ping").await.unwrap();
        let got = timeout(DEADLINE, seen.recv()).await.expect("the request arrives upstream");
        assert_eq!(got, Some(4));
        assert_silent(&mut conn).await;
        eventually("the reply is counted as dropped", || net.link_stats(2, 1).dropped_down == 4).await;
        assert_eq!(net.link_stats(2, 1).bytes_up, 4);
        assert_eq!(net.link_stats(2, 1).bytes_down, 0);
    }

    #[tokio::test]
    async fn heal_resets_connections_and_lets_new_ones_pass() {
        let net = Net::new(4);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        net.cut_both(1, 2);
        let mut blackholed = connect_from(2, entry).await;
        blackholed.write_all(b"lost").await.unwrap();
        assert_silent(&mut blackholed).await;

        net.heal(2, 1);
        assert!(!net.blocked(1, 2) && !net.blocked(2, 1));
        assert_closed(&mut blackholed).await;
        let mut conn = connect_from(2, entry).await;
        assert_eq!(round_trip(&mut conn, b"healed").await, b"healed");

        // heal_all also clears latency and loss; of these only a change of a cut resets, and
        // only connections between the two ends of that cut.
        net.cut(CLIENT, 1);
        net.set_latency(1, 2, Duration::from_millis(5));
        net.set_loss(1, 0.5);
        assert_eq!(net.describe(), "cut client→1; latency 1→2 5ms; loss node 1 50%");
        net.heal_all();
        assert_eq!(net.describe(), "no faults");
        assert_eq!(round_trip(&mut conn, b"still up").await, b"still up");
        assert_eq!(net.link_stats(2, 1).reset, 1);
    }

    #[tokio::test]
    async fn latency_delays_and_preserves_order() {
        let net = Net::new(5);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        net.set_latency(2, 1, Duration::from_millis(150));
        net.set_latency(1, 2, Duration::from_millis(100));
        assert_eq!(net.describe(), "latency 1→2 100ms, 2→1 150ms");

        let mut conn = connect_from(2, entry).await;
        let start = std::time::Instant::now();
        assert_eq!(round_trip(&mut conn, b"x").await, b"x");
        assert!(start.elapsed() >= Duration::from_millis(250), "round trip took {:?}", start.elapsed());

        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(7) % 251) as u8).collect();
        let (mut read, mut write) = conn.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move { write.write_all(&sent).await.map(|_| write) });
        let mut back = vec![0u8; data.len()];
        timeout(Duration::from_secs(60), read.read_exact(&mut back))
            .await
            .expect("1 MiB comes back")
            .unwrap();
        assert!(back == data, "the echo differs from what was sent");
        let _write = writer.await.unwrap().unwrap();
        assert_eq!(net.link_stats(2, 1).dropped_up, 0);
    }

    #[tokio::test]
    async fn loss_refuses_all_or_nothing_at_the_extremes() {
        let net = Net::new(6);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        net.set_loss(1, 1.0);
        assert_eq!(net.describe(), "loss node 1 100%");
        for _ in 0..10 {
            let mut conn = connect_from(2, entry).await;
            let _ = conn.write_all(b"x").await;
            assert_closed(&mut conn).await;
        }
        eventually("ten refusals are counted", || net.link_stats(2, 1).refused == 10).await;

        net.set_loss(1, 0.0);
        for _ in 0..10 {
            let mut conn = connect_from(CLIENT, entry).await;
            assert_eq!(round_trip(&mut conn, b"y").await, b"y");
        }
        assert_eq!(net.link_stats(CLIENT, 1).refused, 0);
    }

    #[tokio::test]
    async fn loss_resets_live_connections() {
        let net = Net::new(7);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        let mut conn = connect_from(CLIENT, entry).await;
        assert_eq!(round_trip(&mut conn, b"z").await, b"z");
        // At share 1.0 a live connection is reset with probability 1/4 per 250 ms tick; within the
        // 10 s deadline it survives with probability 0.75^40 ≈ 1e-5 (and the seed fixes the draws).
        net.set_loss(1, 1.0);
        assert_closed(&mut conn).await;
        eventually("the reset is counted", || net.link_stats(CLIENT, 1).reset == 1).await;
    }

    #[tokio::test]
    async fn upstream_down_closes_fast_and_reregister_recovers() {
        let net = Net::new(8);
        let entry = net.register(1, dead_addr().await).await.unwrap();
        let mut conn = connect_from(2, entry).await;
        assert_closed(&mut conn).await;
        eventually("the failure is counted", || net.link_stats(2, 1).upstream_failed == 1).await;

        // The node comes back on another port: the entry address stays.
        let (up, _seen) = upstream().await;
        assert_eq!(net.register(1, up).await.unwrap(), entry);
        let mut conn = connect_from(2, entry).await;
        assert_eq!(round_trip(&mut conn, b"back").await, b"back");
    }

    #[tokio::test]
    async fn partitions_and_descriptions() {
        let net = Net::new(9);
        for id in 1..=3 {
            let (up, _seen) = upstream().await;
            net.register(id, up).await.unwrap();
        }
        net.partition(&[vec![1], vec![2, 3]]);
        assert!(net.blocked(1, 2) && net.blocked(3, 1) && !net.blocked(2, 3));
        assert!(!net.blocked(CLIENT, 1));
        net.set_latency(3, 1, Duration::from_millis(200));
        net.set_loss(2, 0.3);
        assert_eq!(net.describe(), "cut 1→2, 1→3, 2→1, 3→1; latency 3→1 200ms; loss node 2 30%");

        net.heal_all();
        net.isolate(2);
        assert!(net.blocked(2, 1) && net.blocked(3, 2) && !net.blocked(1, 3));
        net.isolate_from_clients(3);
        assert!(net.blocked(CLIENT, 3) && net.blocked(3, CLIENT));
        assert_eq!(net.describe(), "cut client→3, 1→2, 2→1, 2→3, 3→client, 3→2");

        net.remove_node(3);
        assert_eq!(net.nodes(), vec![1, 2]);
        assert_eq!(net.entry_addr(3), None);
    }

    #[tokio::test]
    async fn drop_closes_the_entry_port_and_connections() {
        let net = Net::new(10);
        let (up, _seen) = upstream().await;
        let entry = net.register(1, up).await.unwrap();
        let mut conn = connect_from(2, entry).await;
        assert_eq!(round_trip(&mut conn, b"bye").await, b"bye");

        let clone = net.clone();
        drop(net);
        assert_eq!(clone.nodes(), vec![1], "a clone keeps the net alive");
        drop(clone);
        assert_closed(&mut conn).await;
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(entry).await.is_ok() {
            assert!(Instant::now() < deadline, "the entry port still accepts connections");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
