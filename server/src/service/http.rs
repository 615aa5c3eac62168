//! The HTTP side port (`--http HOST:PORT`, design.md §7 and §9, issue 19): what Kubernetes
//! probes and a Prometheus scraper need, on plain HTTP/1.1.
//!
//! - `GET /healthz`: 200 `ok` while the process is up (liveness: never depends on quorum).
//! - `GET /readyz`: 200 when this node is ready by the rule of gRPC readiness
//!   ([`super::health::ready`]: a leader known, apply within `--ready-max-lag` of commit), else
//!   503 with the reason on one line; `/readyz?noleader` drops the leader condition.
//! - `GET /metrics`: every metric in Prometheus text format ([`super::metrics`]).
//! - Anything else: 404 (405 for a method other than GET or HEAD).
//!
//! Why a port of its own: probes cannot present client certificates or credentials, and gRPC
//! probes cannot speak TLS, so the client port (TLS, `--users-file`) cannot serve them. This
//! port has neither TLS nor authentication, and serves nothing but the above: whether the node
//! is up and ready, and its metrics (ids, indexes, terms, request counts — no rows, no SQL, no
//! credentials). It must not be reachable from outside the cluster (docs/security.md).
//!
//! Bounded, so a slow or hostile client cannot pin it: at most [`MAX_CONNECTIONS`] at once
//! (more are closed on accept), one request per connection (no keep-alive), the request
//! head within [`HEADER_TIMEOUT`], and the whole connection within [`CONNECTION_TIMEOUT`]. It
//! runs on the Raft runtime (`node::Runtimes`), so a client runtime saturated by SQL does not
//! make a node look dead to its liveness probe.

use super::health;
use super::metrics::{self, Metrics};
use crate::raft::Core;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers read.
pub struct Http {
    pub core: Arc<Core>,
    pub metrics: Arc<Metrics>,
    /// `--ready-max-lag`.
    pub ready_max_lag: u64,
}

/// Serves `listener` for as long as the runtime runs.
pub async fn serve(listener: TcpListener, http: Arc<Http>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "the HTTP port could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the limit: dropping the stream closes it
        };
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| answer(http.clone(), req));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A client that never finishes is cut off; errors only end this one connection.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn answer(
    http: Arc<Http>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            let require_leader = !req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "noleader"));
            match health::readiness(&http.core, http.ready_max_lag, require_leader) {
                Ok(()) => reply(StatusCode::OK, TEXT, "ready\n"),
                Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
            }
        }
        "/metrics" => {
            let m = http.metrics.clone();
            match tokio::task::spawn_blocking(move || m.render()).await {
                Ok(text) => reply(StatusCode::OK, metrics::CONTENT_TYPE, text),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("metrics failed: {e}\n")),
            }
        }
        _ => {
            reply(StatusCode::NOT_FOUND, TEXT, "not found: this port serves /healthz, /readyz and /metrics\n")
        }
    })
}
