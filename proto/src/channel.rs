//! A gRPC channel over one HTTP/2 connection, driven by the `h2` crate directly.
//!
//! tonic's `Channel` puts four tasks between a caller and the socket: a `tower::Buffer` worker,
//! hyper's dispatcher, a task per request that waits for the response, and a task per request
//! body; each hop is a wake-up, often on the other core, and the request's HEADERS and DATA
//! frames leave in two writes. Here the caller's own task opens the stream, queues the headers
//! and the (already encoded, unary) body together and awaits the response itself; the only
//! other task is the connection's, which writes and reads the socket. Every RPC of raftsql
//! sends one message (`Query` and `Backup` stream only their answers), so the body is collected
//! before the stream opens; its size is bounded by tonic's encoding limit before it gets here.
//!
//! The connection is opened on first use and again after it closed (the peer went away, a
//! keep-alive ping went unanswered, the runtime that drove it ended); a call that finds its
//! connection already closed before sending dials once more, so a request never fails on a
//! connection that died while idle. Flow-control windows are hyper's client defaults (2 MiB per
//! stream, 5 MiB per connection): what an answer may buffer here before it is read.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codegen::http;
use tonic::{Code, Status};

/// A connected byte stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens the byte stream under a new connection (e.g. a TLS handshake over TCP).
pub type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>> + Send + Sync>;

/// How a [`Channel`] connects and keeps its connection.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long resolving the address, the TCP connect and the HTTP/2 handshake may take.
    pub connect_timeout: Duration,
    /// Ping every `.0` when idle; close the connection when a ping is not answered in `.1`.
    pub keep_alive: Option<(Duration, Duration)>,
    /// The local IP to connect from.
    pub local_addr: Option<IpAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options { connect_timeout: Duration::from_secs(1), keep_alive: None, local_addr: None }
    }
}

const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_SEND_BUFFER: usize = 400 << 10;

/// A lazily connected gRPC channel to one address; cheap to clone (clones share the
/// connection).
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("addr", &self.shared.addr).finish()
    }
}

struct Shared {
    /// "host:port", as given.
    addr: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    options: Options,
    /// Opens the stream instead of plain TCP (TLS), when set.
    connector: Option<Connector>,
    /// The open connection, if any, and the number it was opened as.
    slot: Mutex<Slot>,
    /// Held while dialling, so that concurrent callers wait for one dial.
    dialling: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    send: Option<h2::client::SendRequest<Bytes>>,
    generation: u64,
}

impl Channel {
    /// A channel to `addr` ("host:port") over plain TCP; nothing is dialled until first use.
    pub fn lazy(addr: &str, options: Options) -> Result<Channel, String> {
        Self::build(addr, http::uri::Scheme::HTTP, options, None)
    }

    /// A channel whose connections are opened by `connector` (e.g. TLS), addressed as
    /// `https://addr`.
    pub fn with_connector(addr: &str, options: Options, connector: Connector) -> Result<Channel, String> {
        Self::build(addr, http::uri::Scheme::HTTPS, options, Some(connector))
    }

    fn build(
        addr: &str,
        scheme: http::uri::Scheme,
        options: Options,
        connector: Option<Connector>,
    ) -> Result<Channel, String> {
        let authority: http::uri::Authority =
            addr.parse().map_err(|e| format!("{addr:?} is not a host:port: {e}"))?;
        if authority.port_u16().is_none() {
            return Err(format!("{addr:?} has no port"));
        }
        Ok(Channel {
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                scheme,
                authority,
                options,
                connector,
                slot: Mutex::new(Slot::default()),
                dialling: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The open connection's sender, dialling if there is none. `stale` names a generation
    /// found closed: it is dropped rather than handed out again.
    async fn sender(&self, stale: Option<u64>) -> Result<(h2::client::SendRequest<Bytes>, u64), Status> {
        if let Some(found) = self.shared.cached(stale) {
            return Ok(found);
        }
        let _dialling = self.shared.dialling.lock().await;
        if let Some(found) = self.shared.cached(stale) {
            return Ok(found);
        }
        let timeout = self.shared.options.connect_timeout;
        let (send, conn) = tokio::time::timeout(timeout, self.shared.dial())
            .await
            .map_err(|_| self.unavailable(format!("no connection within {timeout:?}")))?
            .map_err(|e| self.unavailable(e))?;
        let generation = {
            let mut slot = self.shared.slot.lock().expect("channel slot lock");
            slot.generation += 1;
            slot.send = Some(send.clone());
            slot.generation
        };
        tokio::spawn(drive(conn, Arc::downgrade(&self.shared), generation, self.shared.options.keep_alive));
        Ok((send, generation))
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> Status {
        Status::unavailable(format!("transport error: connection to {}: {why}", self.shared.addr))
    }

    async fn call(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        let (mut parts, body) = req.into_parts();
        // The caller's deadline (`grpc-timeout`, from `tonic::Request::set_timeout`) bounds the
        // wait for the answer's headers here too, as tonic's own channel does: expired, the call
        // ends as CANCELLED "Timeout expired" and the stream is reset.
        let deadline = parts.headers.get("grpc-timeout").and_then(|v| grpc_timeout(v.to_str().ok()?));
        let started = tokio::time::Instant::now();
        let body = body.collect().await?.to_bytes();
        let path =
            parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme(self.shared.scheme.clone())
            .authority(self.shared.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        let request = http::Request::from_parts(parts, ());
        let mut stale = None;
        let deadline_left = |d: Duration| d.saturating_sub(started.elapsed());
        let mut send = loop {
            let (send, generation) = self.sender(stale).await?;
            match send.ready().await {
                Ok(send) => break send,
                // Closed before anything was sent on it: dial once more.
                Err(_) if stale.is_none() => stale = Some(generation),
                Err(e) => return Err(self.unavailable(e)),
            }
        };
        let (response, mut stream) =
            send.send_request(request, body.is_empty()).map_err(|e| status_of(&self, e))?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(|e| status_of(&self, e))?;
        }
        let response = match deadline.map(deadline_left) {
            None => response.await,
            Some(d) => {
                tokio::time::timeout(d, response).await.map_err(|_| Status::cancelled("Timeout expired"))?
            }
        };
        let response = response.map_err(|e| status_of(&self, e))?;
        Ok(response.map(|recv| tonic::body::Body::new(RecvBody { recv, data_done: false, done: false })))
    }
}

impl Shared {
    fn cached(&self, stale: Option<u64>) -> Option<(h2::client::SendRequest<Bytes>, u64)> {
        let mut slot = self.slot.lock().expect("channel slot lock");
        if stale.is_some() && stale == Some(slot.generation) {
            slot.send = None;
        }
        Some((slot.send.clone()?, slot.generation))
    }

    async fn dial(
        &self,
    ) -> io::Result<(h2::client::SendRequest<Bytes>, h2::client::Connection<Box<dyn Io>, Bytes>)> {
        let io: Box<dyn Io> = match &self.connector {
            Some(connect) => connect().await?,
            None => Box::new(tcp(&self.addr, self.options.local_addr).await?),
        };
        h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .handshake(io)
            .await
            .map_err(|e| io::Error::other(format!("HTTP/2 handshake: {e}")))
    }
}

/// A TCP connection to `addr` ("host:port", resolved here; each address it resolves to is tried
/// in turn) from `local` (if given), with Nagle off.
pub async fn tcp(addr: &str, local: Option<IpAddr>) -> io::Result<tokio::net::TcpStream> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("resolving {addr}: {e}")))?;
    let mut last = None;
    for target in resolved {
        match connect(target, local).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolved to no address"))))
}

/// A TCP connection to `addr` from `local` (if given and of the same family), with Nagle off.
pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<tokio::net::TcpStream> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    let step = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(ip) = local.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0)).map_err(step(format!("bind to the source address {ip}")))?;
    }
    let stream = socket.connect(addr).await.map_err(step(format!("tcp connect to {addr}")))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs one connection until it closes, pinging it when `keep_alive` says; then forgets it, so
/// the next call dials again. Also forgets it if this task is dropped (its runtime ended).
async fn drive(
    mut conn: h2::client::Connection<Box<dyn Io>, Bytes>,
    shared: std::sync::Weak<Shared>,
    generation: u64,
    keep_alive: Option<(Duration, Duration)>,
) {
    struct Forget(std::sync::Weak<Shared>, u64);
    impl Drop for Forget {
        fn drop(&mut self) {
            if let Some(shared) = self.0.upgrade() {
                let mut slot = shared.slot.lock().expect("channel slot lock");
                if slot.generation == self.1 {
                    slot.send = None;
                }
            }
        }
    }
    let _forget = Forget(shared, generation);
    let ping = keep_alive.and_then(|k| Some((conn.ping_pong()?, k)));
    match ping {
        None => {
            let _ = conn.await;
        }
        Some((mut ping, (every, within))) => {
            let pings = async move {
                loop {
                    tokio::time::sleep(every).await;
                    match tokio::time::timeout(within, ping.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                _ = &mut conn => {}
                _ = pings => {}
            }
        }
    }
}

/// The status a failed HTTP/2 call maps to, as tonic maps hyper's (gRPC's PROTOCOL-HTTP2.md):
/// a connection that broke is UNAVAILABLE; a stream the server reset, by its reason.
fn status_of(channel: &Channel, e: h2::Error) -> Status {
    let code = match e.reason() {
        _ if e.is_io() || e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) => {
            return channel.unavailable(e);
        }
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        None => return channel.unavailable(e),
    };
    Status::new(code, format!("h2 protocol error: {} from {}", e, channel.shared.addr))
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().call(req))
    }
}

/// An answer's body as it arrives: data frames (their flow-control capacity given back as each
/// is taken), then the trailers that carry the gRPC status.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl tonic::codegen::Body for RecvBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(body_status(e)))),
                None => this.data_done = true,
            }
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(body_status(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A `grpc-timeout` value ("100m", "5S"): digits and a unit.
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn body_status(e: h2::Error) -> Status {
    let code = match e.reason() {
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(_) => Code::Internal,
    };
    Status::new(code, format!("transport error: h2 protocol error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    /// A tonic server with the health service on `listener`, until `stop` fires.
    fn serve(
        listener: tokio::net::TcpListener,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
                .expect("test server runs");
        })
    }

    async fn listen(addr: &str) -> tokio::net::TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr.parse().unwrap()).unwrap();
        socket.listen(64).unwrap()
    }

    async fn check(channel: &Channel, timeout: Option<Duration>) -> Result<ServingStatus, Status> {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let answer = HealthClient::new(channel.clone()).check(request).await?.into_inner();
        Ok(answer.status())
    }

    #[tokio::test]
    async fn calls_are_answered_and_a_restarted_server_is_dialled_again() {
        let listener = listen("127.0.0.1:0").await;
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = serve(listener, stopped);
        let channel = Channel::lazy(&addr, Options::default()).unwrap();
        for _ in 0..3 {
            assert_eq!(check(&channel, Some(Duration::from_secs(5))).await.unwrap(), ServingStatus::Serving);
        }
        // The server goes away while the connection is idle, and comes back on the same port:
        // the next call dials again instead of failing on the dead connection.
        stop.send(()).unwrap();
        server.await.unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let _server = serve(listen(&addr).await, stopped);
        assert_eq!(check(&channel, Some(Duration::from_secs(5))).await.unwrap(), ServingStatus::Serving);
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_names_the_address() {
        let addr = listen("127.0.0.1:0").await.local_addr().unwrap().to_string(); // closed again
        let channel = Channel::lazy(&addr, Options::default()).unwrap();
        let e = check(&channel, None).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        let m = e.message();
        assert!(m.contains(&addr) && m.contains("tcp connect") && m.contains("refused"), "{e:?}");
        for bad in ["", "no-port", "a b:1"] {
            assert!(Channel::lazy(bad, Options::default()).is_err(), "{bad:?} is refused");
        }
    }

    #[tokio::test]
    async fn a_silent_peer_ends_calls_at_their_deadline_and_keep_alive_drops_it() {
        // Accepts connections and never says a word.
        let listener = listen("127.0.0.1:0").await;
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let options = Options {
            keep_alive: Some((Duration::from_millis(100), Duration::from_millis(200))),
            ..Options::default()
        };
        let channel = Channel::lazy(&addr, options).unwrap();
        let e = check(&channel, Some(Duration::from_millis(200))).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Cancelled, "Timeout expired"), "{e:?}");
        // Without a deadline only the unanswered ping ends the call (the bound is the test's).
        let e = tokio::time::timeout(Duration::from_secs(10), check(&channel, None))
            .await
            .expect("keep-alive ends the call")
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        held.abort();
    }

    #[test]
    fn grpc_timeouts_parse_and_nonsense_does_not() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "m", "5", "5x", "-5S", "99999999999999999999H", "\u{e9}"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
