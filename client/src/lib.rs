//! The raftsql client library: connect to a cluster, write with exactly-once request ids, read
//! at an explicit consistency level. Leader discovery, redirects and retries are hidden inside
//! a deadline.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftsql_client::Error> {
//! use raftsql_client::{Client, Consistency, QueryOptions, Value};
//! let client = Client::connect(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]).await?;
//! let session = client.session(); // tracks the session token for you
//! session.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", &[]).await?;
//! session.execute("INSERT INTO users VALUES ($1, $2)", &[Value::Integer(1), "ada".into()]).await?;
//! let ryw = QueryOptions { consistency: Consistency::ReadYourWrites, ..Default::default() };
//! let r = session.query("SELECT name FROM users WHERE id = 1", &[], ryw).await?; // any caught-up node
//! let token = session.token(); // hand it to another process: client.session_from(&token)
//! let safe = client.with_min_replicas(3); // writes return once all three nodes applied them
//! # assert_eq!(r.rows, vec![vec![Value::Text("ada".into())]]);
//! # let _ = (token, safe);
//! # Ok(()) }
//! ```
//!
//! The same lines are the README's "client library in ten lines"; keep them in step.
//!
//! # Exactly once
//! Every write carries a request id (client id, sequence number). The server keeps, per client
//! id, the highest applied sequence number and its outcome, so a retry of a committed write
//! returns the original outcome instead of applying twice. One client id must never have two
//! requests in flight, so each concurrently running request takes its own *lane*: client id
//! `{random}-{lane}` with its own sequence counter.
//!
//! # Credentials
//! A cluster started with `--users-file` wants every call authenticated:
//! [`Client::with_credentials`] adds a user and password ([`Credentials::Basic`]) or a bearer
//! token to every request. Missing or wrong credentials fail with [`Error::Unauthenticated`]; a
//! call the user's permissions do not allow, with [`Error::PermissionDenied`]. Neither is
//! retried. Request ids are kept per user on the server, so two users' ids never meet.
//!
//! # TLS
//! A cluster whose client port has TLS (`--tls-cert`) is reached with [`Client::with_tls`] or
//! with `https://` in front of an address. [`Tls`] names the CA to trust (without one, the
//! system's roots), an optional client certificate (which, on a node given `--tls-ca`,
//! authenticates the user its first DNS name names, instead of a password) and the name to
//! verify the servers' certificates against when the addresses do not carry it. A server whose
//! certificate does not verify, or that speaks plain text, fails with [`Error::Transport`]
//! naming the cause.
//!
//! # Retries
//! `NOT_LEADER` → the named leader, same request id; transport failure, `UNAVAILABLE` or
//! `INDETERMINATE` → back off (50 ms doubling to 1 s) and try again, same request id, until the
//! deadline (10 s by default). Each attempt is bounded by the time left, including the time to
//! connect (TCP 1 s, a TLS handshake 2 s): a network that swallows replies cannot hold a call. Statement errors are returned, never retried.

pub mod backup;

pub use raftsql_proto::v1 as pb;

/// A SQL value and a read's consistency level: the server's own types, shared through
/// raftsql-proto (which also converts them to and from the messages: `to_pb`, `from_pb`).
pub use raftsql_proto::{Consistency, Value};

/// Whether SQL text only reads, so that it may be sent with [`Client::query`]: the one decision
/// the server, the shell and the test runners share (see [`raftsql_proto::sql`]).
pub use raftsql_proto::sql::is_read_only;

/// The metadata that marks a write as part of a restore ([`Client::restore`]): the server then
/// requires the `backup` permission besides what the statements need.
pub const RESTORE_HEADER: &str = "x-raftsql-restore";
/// One node's connection: HTTP/2 from the `h2` crate, driven by the calling task and one task
/// per connection ([`raftsql_proto::channel`]; tonic's own channel wakes four tasks per call).
use raftsql_proto::channel::Channel;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Options of one query.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    pub consistency: Consistency,
    /// Send the query to this address only ("host:port"); redirects are still followed for
    /// `Strong` and `ReadYourWrites`.
    pub node: Option<String>,
    pub session_token: Option<String>,
    /// Rows per streamed page; 0 = the server's default.
    pub page_rows: u32,
}

/// Where and when a request was served.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Receipt {
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub index: u64,
    pub level: String,
    pub applied_index: u64,
    /// Opaque token of this receipt's index in its cluster; see [`Session`].
    pub session_token: String,
}

impl Receipt {
    fn from_pb(r: Option<pb::Receipt>) -> Receipt {
        let r = r.unwrap_or_default();
        Receipt {
            node_id: r.node_id,
            role: r.role().as_str_name().to_ascii_lowercase(),
            term: r.term,
            index: r.index,
            level: r.level().as_str_name().to_ascii_lowercase(),
            applied_index: r.applied_index,
            session_token: r.session_token,
        }
    }
}

/// One statement's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatementResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    pub last_insert_id: Option<i64>,
}

/// The result of a write request: one result or error per statement.
#[derive(Debug)]
pub struct ExecuteResult {
    pub results: Vec<Result<StatementResult, Error>>,
    pub receipt: Receipt,
}

/// The result of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub receipt: Receipt,
}

/// Everything that can go wrong, by the server's error codes plus the transport.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    NotLeader { leader_id: u64, leader_addr: String, term: u64, message: String },
    #[error("{message}")]
    Syntax { message: String, line: u32, column: u32 },
    #[error("{message}")]
    Unsupported { message: String },
    #[error("{message}")]
    Type { message: String },
    #[error("{message}")]
    Constraint { message: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("{message}")]
    Indeterminate { message: String },
    #[error("{message}")]
    Timeout { message: String },
    #[error("{message}")]
    Token { message: String },
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    InvalidArgument { message: String },
    #[error("{message}")]
    Internal { message: String },
    /// A limit of the request or of its evaluation (the message names the server flag), or a
    /// node shedding load: then `retry_after` is the pause it suggests before trying again.
    #[error("{message}")]
    ResourceExhausted { message: String, retry_after: Option<Duration> },
    /// No credentials, or wrong ones, for a cluster that requires them.
    #[error("{message}")]
    Unauthenticated { message: String },
    /// The user may not make this call (the message names the permission it needs).
    #[error("{message}")]
    PermissionDenied { message: String },
    #[error("cannot reach {addr}: {message}")]
    Transport { addr: String, message: String },
    #[error("no server address given")]
    NoAddress,
    /// A backup file that cannot be written, read or trusted, or a restore that cannot go on
    /// (the message says what happened to the cluster).
    #[error("{message}")]
    Backup { message: String },
}

impl Error {
    /// The server's error code name (`NOT_LEADER`, `SYNTAX`, ...), or `TRANSPORT`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotLeader { .. } => "NOT_LEADER",
            Error::Syntax { .. } => "SYNTAX",
            Error::Unsupported { .. } => "UNSUPPORTED",
            Error::Type { .. } => "TYPE",
            Error::Constraint { .. } => "CONSTRAINT",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::Indeterminate { .. } => "INDETERMINATE",
            Error::Timeout { .. } => "TIMEOUT",
            Error::Token { .. } => "TOKEN",
            Error::Unavailable { .. } => "UNAVAILABLE",
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::Internal { .. } => "INTERNAL",
            Error::ResourceExhausted { .. } => "RESOURCE_EXHAUSTED",
            Error::Unauthenticated { .. } => "UNAUTHENTICATED",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::Transport { .. } => "TRANSPORT",
            Error::NoAddress => "INVALID_ARGUMENT",
            Error::Backup { .. } => "BACKUP",
        }
    }

    pub fn from_pb(e: pb::Error) -> Error {
        let message = e.message.clone();
        match e.code() {
            pb::ErrorCode::NotLeader => {
                Error::NotLeader { leader_id: e.leader_id, leader_addr: e.leader_addr, term: e.term, message }
            }
            pb::ErrorCode::Syntax => Error::Syntax { message, line: e.line, column: e.column },
            pb::ErrorCode::Unsupported => Error::Unsupported { message },
            pb::ErrorCode::Type => Error::Type { message },
            pb::ErrorCode::Constraint => Error::Constraint { message },
            pb::ErrorCode::NotFound => Error::NotFound { message },
            pb::ErrorCode::Indeterminate => Error::Indeterminate { message },
            pb::ErrorCode::Timeout => Error::Timeout { message },
            pb::ErrorCode::Token => Error::Token { message },
            pb::ErrorCode::Unavailable => Error::Unavailable { message },
            pb::ErrorCode::InvalidArgument => Error::InvalidArgument { message },
            pb::ErrorCode::Internal | pb::ErrorCode::Unspecified => Error::Internal { message },
            pb::ErrorCode::ResourceExhausted => Error::ResourceExhausted { message, retry_after: None },
            pb::ErrorCode::Unauthenticated => Error::Unauthenticated { message },
            pb::ErrorCode::PermissionDenied => Error::PermissionDenied { message },
        }
    }

    /// Decodes a tonic status: the server puts a `pb::Error` in its details.
    pub fn from_status(addr: &str, s: tonic::Status) -> Error {
        use prost::Message;
        if let Ok(e) = pb::Error::decode(s.details()) {
            if e.code != 0 {
                return match Error::from_pb(e) {
                    // A shedding node says when to come back (`retry-after-ms`); bounded here,
                    // since the header is the server's word only.
                    Error::ResourceExhausted { message, .. } => Error::ResourceExhausted {
                        message,
                        retry_after: s
                            .metadata()
                            .get("retry-after-ms")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .map(|ms| Duration::from_millis(ms.min(10_000))),
                    },
                    other => other,
                };
            }
        }
        match s.code() {
            // tonic reports its own request deadline passing as Cancelled "Timeout expired".
            tonic::Code::Cancelled if s.message().contains("Timeout expired") => Error::Timeout {
                message: format!(
                    "no answer from {addr} before the deadline; if this was a write, it may or may not have \
                     been applied: retry it with the same request id"
                ),
            },
            tonic::Code::Unavailable | tonic::Code::Cancelled => {
                Error::Transport { addr: addr.to_string(), message: raftsql_proto::status_text(&s) }
            }
            // A request on a cached connection to a node that has just died fails in hyper,
            // which tonic reports as Unknown/Internal "transport error", with no raftsql error
            // in the details: the server never saw it, so it is a transport failure to retry.
            tonic::Code::Unknown | tonic::Code::Internal
                if s.details().is_empty()
                    && (s.message().contains("transport error")
                        || s.message().contains("connection")
                        // TLS 1.3: a server that refuses the client's certificate says so
                        // after the client finished its handshake, on the HTTP/2 connection.
                        || s.message().contains("h2 protocol error")) =>
            {
                Error::Transport { addr: addr.to_string(), message: raftsql_proto::status_text(&s) }
            }
            tonic::Code::DeadlineExceeded => Error::Timeout { message: format!("{addr}: {}", s.message()) },
            tonic::Code::Unauthenticated => {
                Error::Unauthenticated { message: format!("{addr}: {}", s.message()) }
            }
            tonic::Code::PermissionDenied => {
                Error::PermissionDenied { message: format!("{addr}: {}", s.message()) }
            }
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                Error::InvalidArgument { message: s.message().to_string() }
            }
            _ => Error::Internal { message: format!("{addr}: {}", s.message()) },
        }
    }

    /// Worth retrying with the same request id elsewhere or later.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Indeterminate { .. }
                | Error::Unavailable { .. }
                | Error::Transport { .. }
        )
    }
}

struct Inner {
    addrs: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    client_id: String,
    /// Free lanes with their last used sequence number.
    lanes: Mutex<Vec<(u32, u64)>>,
    next_lane: Mutex<u32>,
    deadline: Duration,
    /// Writes return once this many nodes applied them (0: once committed).
    min_replicas: u32,
    /// The `authorization` value every request carries, if any.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS for every connection, if on.
    tls: Option<Arc<TlsSetup>>,
    /// Where the next unpinned READ_YOUR_WRITES, BOUNDED or ANY read goes first: they rotate
    /// over every address, leaving the leader's CPU to writes and STRONG reads.
    next_read: std::sync::atomic::AtomicUsize,
}

/// How a client reaches a cluster whose client port has TLS ([`Client::with_tls`]).
#[derive(Clone, Default)]
pub struct Tls {
    /// The CA certificates (PEM) that signed the servers' certificates; `None`: the system's.
    pub ca: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM), for nodes that authenticate clients by
    /// certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the servers' certificates must carry (default: each address's host).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("identity", &self.identity.as_ref().map(|_| "(key hidden)"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Tls {
    /// Reads the CA, the client certificate and its key from PEM files (each optional; a
    /// certificate needs its key).
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        server_name: Option<String>,
    ) -> Result<Tls, Error> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument {
                message: format!("cannot read the {what} {}: {e}", p.display()),
            })
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c, "client certificate")?, read(k, "client key")?)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument {
                    message: "a client certificate needs its key: give both --cert and --key".into(),
                })
            }
        };
        Ok(Tls { ca: ca.map(|p| read(p, "CA file")).transpose()?, identity, server_name })
    }

    /// The rustls configuration every TLS connection of a client uses, built once; a CA or
    /// identity that does not parse is reported by every call that would have used it.
    fn setup(&self) -> TlsSetup {
        TlsSetup { config: self.rustls().map(Arc::new), server_name: self.server_name.clone() }
    }

    fn rustls(&self) -> Result<tokio_rustls::rustls::ClientConfig, String> {
        use tokio_rustls::rustls::{
            self,
            pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|e| format!("the CA file holds no readable PEM certificate: {e}"))?;
                    roots.add(cert).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the CA file holds no PEM certificate".into());
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        // ring, as the nodes use (server/src/tls.rs says why; rustls marks it deprecated for
        // lacking post-quantum key exchange).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("the client key is not a PEM key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate and key do not go together: {e}"))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A client's TLS, ready to connect with.
struct TlsSetup {
    config: Result<Arc<tokio_rustls::rustls::ClientConfig>, String>,
    server_name: Option<String>,
}

impl TlsSetup {
    /// A connector for `addr` ("host:port"): TCP, then a TLS handshake within
    /// [`TLS_HANDSHAKE_TIMEOUT`] verifying the server as `server_name` or as the address's host.
    fn connector(&self, addr: &str) -> Result<raftsql_proto::channel::Connector, String> {
        use tokio_rustls::rustls::pki_types::ServerName;
        let config = self.config.clone()?;
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let authority: tonic::codegen::http::uri::Authority =
                    addr.parse().map_err(|e| format!("not a host:port: {e}"))?;
                authority.host().trim_start_matches('[').trim_end_matches(']').to_string()
            }
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|e| format!("{host:?} is no server name: {e}"))?;
        let addr = addr.to_string();
        Ok(Arc::new(move || {
            let (config, name, addr) = (config.clone(), name.clone(), addr.clone());
            Box::pin(async move {
                let tcp = raftsql_proto::channel::tcp(&addr, None).await?;
                let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
                let stream =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no TLS handshake with {addr} within {TLS_HANDSHAKE_TIMEOUT:?}"),
                        )
                    })??;
                Ok(Box::new(stream) as Box<dyn raftsql_proto::channel::Io>)
            })
        }))
    }
}

/// How long a TLS handshake with a node may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// `addr` without an `http://` or `https://` in front, and whether it asked for TLS.
fn strip_scheme(addr: &str) -> (String, bool) {
    let a = addr.trim();
    if let Some(rest) = a.strip_prefix("https://") {
        return (rest.trim_end_matches('/').to_string(), true);
    }
    (a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/').to_string(), false)
}

/// How a client proves who it is to a cluster started with `--users-file`.
#[derive(Clone)]
pub enum Credentials {
    /// A user name and its password (sent as HTTP Basic credentials; use TLS off loopback).
    Basic { user: String, password: String },
    /// A bearer token from `raftsql-server hash-password --token`.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, password hidden)"),
            Credentials::Bearer(_) => f.write_str("Bearer(token hidden)"),
        }
    }
}

impl Credentials {
    fn header(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Error> {
        use base64::Engine as _;
        let text = match self {
            Credentials::Basic { user, password } => {
                if user.contains(':') {
                    return Err(Error::InvalidArgument {
                        message: format!("user name {user:?} contains ':'"),
                    });
                }
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                )
            }
            Credentials::Bearer(token) => format!("Bearer {}", token.trim()),
        };
        let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            text.parse().map_err(|_| Error::InvalidArgument {
                message: "the bearer token holds characters a header cannot carry".into(),
            })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// A connection to a raftsql cluster. Cheap to clone; clones share connections and lanes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

const MAX_MESSAGE: usize = 64 << 20;

impl Client {
    /// Connects (lazily) to the given "host:port" addresses of one cluster.
    pub async fn connect<I, S>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs: Vec<(String, bool)> =
            addrs.into_iter().map(|a| strip_scheme(a.as_ref())).filter(|(a, _)| !a.is_empty()).collect();
        if addrs.is_empty() {
            return Err(Error::NoAddress);
        }
        // One https:// address puts every connection on TLS (with the system's roots until
        // `with_tls` says otherwise): a cluster's nodes are all configured alike.
        let tls = addrs.iter().any(|(_, https)| *https).then(|| Arc::new(Tls::default().setup()));
        let addrs = addrs.into_iter().map(|(a, _)| a).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                addrs,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                client_id: format!("{:016x}", rand::random::<u64>()),
                lanes: Mutex::new(Vec::new()),
                next_lane: Mutex::new(0),
                deadline: Duration::from_secs(10),
                min_replicas: 0,
                authorization: None,
                tls,
                next_read: std::sync::atomic::AtomicUsize::new(rand::random::<u32>() as usize),
            }),
        })
    }

    /// The same client with another overall deadline per call.
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        let i = &self.inner;
        Client {
            inner: Arc::new(Inner {
                addrs: i.addrs.clone(),
                channels: Mutex::new(i.channels.lock().expect("lock").clone()),
                leader: Mutex::new(i.leader.lock().expect("lock").clone()),
                client_id: format!("{:016x}", rand::random::<u64>()),
                lanes: Mutex::new(Vec::new()),
                next_lane: Mutex::new(0),
                deadline,
                min_replicas: i.min_replicas,
                authorization: i.authorization.clone(),
                tls: i.tls.clone(),
                next_read: std::sync::atomic::AtomicUsize::new(rand::random::<u32>() as usize),
            }),
        }
    }

    /// The same client, whose writes return only once `k` nodes (the leader included) have
    /// applied them — or fail with `Timeout` saying how many did (like Redis's `WAIT`).
    pub fn with_min_replicas(&self, k: u32) -> Client {
        let c = self.with_deadline(self.inner.deadline);
        Client {
            inner: Arc::new(Inner {
                min_replicas: k,
                ..Arc::into_inner(c.inner).expect("a fresh client has one owner")
            }),
        }
    }

    /// The same client, sending `credentials` with every request (see the module docs).
    pub fn with_credentials(&self, credentials: &Credentials) -> Result<Client, Error> {
        let header = credentials.header()?;
        let c = self.with_deadline(self.inner.deadline);
        Ok(Client {
            inner: Arc::new(Inner {
                authorization: Some(header),
                ..Arc::into_inner(c.inner).expect("a fresh client has one owner")
            }),
        })
    }

    /// The same client (credentials, TLS, deadline) with connections of its own: load spread
    /// over several HTTP/2 connections (`raftsql bench --conns`).
    pub fn with_own_connections(&self) -> Client {
        let c = self.with_deadline(self.inner.deadline);
        let inner = Arc::into_inner(c.inner).expect("a fresh client has one owner");
        inner.channels.lock().expect("channel map lock").clear();
        Client { inner: Arc::new(inner) }
    }

    /// The same client, reaching every node through TLS as `tls` says (see the module docs).
    pub fn with_tls(&self, tls: &Tls) -> Client {
        // Connections made before were made without this configuration.
        let c = self.with_own_connections();
        let inner = Arc::into_inner(c.inner).expect("a fresh client has one owner");
        Client { inner: Arc::new(Inner { tls: Some(Arc::new(tls.setup())), ..inner }) }
    }

    /// `message` as a request with this client's credentials.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(a) = &self.inner.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req
    }

    /// How long one call may take (`with_deadline`; 10 s by default).
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// The address the client currently sends writes to first (diagnostics).
    pub fn cached_leader(&self) -> Option<String> {
        self.inner.leader.lock().expect("leader lock").clone()
    }

    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.inner.channels.lock().expect("channel map lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let options =
            raftsql_proto::channel::Options { connect_timeout: Duration::from_secs(1), ..Default::default() };
        let c = match &self.inner.tls {
            None => Channel::lazy(addr, options)
                .map_err(|e| Error::InvalidArgument { message: format!("bad address {addr:?}: {e}") })?,
            Some(tls) => tls
                .connector(addr)
                .and_then(|connector| Channel::with_connector(addr, options, connector))
                .map_err(|e| Error::InvalidArgument {
                    message: format!("cannot reach {addr} over TLS: {e}"),
                })?,
        };
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn take_lane(&self) -> (u32, u64) {
        if let Some(l) = self.inner.lanes.lock().expect("lanes lock").pop() {
            return l;
        }
        let mut next = self.inner.next_lane.lock().expect("lanes lock");
        *next += 1;
        (*next, 0)
    }

    fn release_lane(&self, lane: (u32, u64)) {
        self.inner.lanes.lock().expect("lanes lock").push(lane);
    }

    fn leader_guess(&self, attempt: usize) -> String {
        if attempt == 0 {
            if let Some(l) = self.inner.leader.lock().expect("leader lock").clone() {
                return l;
            }
        }
        self.inner.addrs[attempt % self.inner.addrs.len()].clone()
    }

    fn set_leader(&self, addr: &str) {
        *self.inner.leader.lock().expect("leader lock") = Some(addr.to_string());
    }

    /// Runs `sql` (one or more statements) as one write request.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<ExecuteResult, Error> {
        self.execute_batch(vec![(sql.to_string(), params.to_vec())], false).await
    }

    /// Runs several statements as one request; `transaction`: all or nothing.
    pub async fn execute_batch(
        &self,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
    ) -> Result<ExecuteResult, Error> {
        self.execute_on_lane(statements, transaction, false).await
    }

    /// One request under the next sequence number of a free lane (a client id of this client's
    /// that has no request in flight).
    async fn execute_on_lane(
        &self,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
        restoring: bool,
    ) -> Result<ExecuteResult, Error> {
        let (lane, seq) = self.take_lane();
        let seq = seq + 1;
        let client_id = format!("{}-{lane}", self.inner.client_id);
        let result = self.execute_marked(&client_id, seq, statements, transaction, restoring).await;
        self.release_lane((lane, seq));
        result
    }

    /// Runs a request under a request id the caller chose: `client_id` (1 to 64 bytes) and a
    /// `seq` that the caller increases by one per new request and reuses for a retry. For
    /// applications that keep their own ids, e.g. to retry after their own restart: a request
    /// whose id was already applied returns its original outcome and has no second effect.
    /// The caller must not have two requests of one client id in flight.
    pub async fn execute_as(
        &self,
        client_id: &str,
        seq: u64,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
    ) -> Result<ExecuteResult, Error> {
        self.execute_marked(client_id, seq, statements, transaction, false).await
    }

    /// [`Client::execute_batch`] marked as part of a restore (`x-raftsql-restore`): the server
    /// then also requires the `backup` permission.
    pub(crate) async fn execute_restoring(
        &self,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
    ) -> Result<ExecuteResult, Error> {
        self.execute_on_lane(statements, transaction, true).await
    }

    async fn execute_marked(
        &self,
        client_id: &str,
        seq: u64,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
        restoring: bool,
    ) -> Result<ExecuteResult, Error> {
        let request = pb::ExecuteRequest {
            statements: statements
                .into_iter()
                .map(|(sql, params)| pb::Statement { sql, params: params.iter().map(Value::to_pb).collect() })
                .collect(),
            request_id: Some(pb::RequestId { client_id: client_id.to_string(), seq }),
            transaction,
            min_replicas: self.inner.min_replicas,
        };
        let resp = self
            .retrying(None, Route::Leader, |addr, channel, timeout| {
                let mut req = self.request(request.clone());
                req.set_timeout(timeout);
                if restoring {
                    req.metadata_mut()
                        .insert(RESTORE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
                }
                async move {
                    let mut client =
                        pb::sql_client::SqlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
                    client
                        .execute(req)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| Error::from_status(&addr, s))
                }
            })
            .await?;
        let results = resp
            .results
            .into_iter()
            .map(|r| match r.error {
                Some(e) => Err(Error::from_pb(e)),
                None => Ok(StatementResult {
                    columns: r.columns,
                    rows: r
                        .rows
                        .into_iter()
                        .map(|row| row.values.into_iter().map(Value::from_pb).collect())
                        .collect(),
                    rows_affected: r.rows_affected,
                    last_insert_id: r.last_insert_id,
                }),
            })
            .collect();
        Ok(ExecuteResult { results, receipt: Receipt::from_pb(resp.receipt) })
    }

    /// Runs a read-only query at the level the options name.
    pub async fn query(&self, sql: &str, params: &[Value], opts: QueryOptions) -> Result<QueryResult, Error> {
        let (consistency, max_staleness_ms) = (opts.consistency.to_pb(), opts.consistency.max_staleness_ms());
        let request = pb::QueryRequest {
            sql: sql.to_string(),
            params: params.iter().map(Value::to_pb).collect(),
            consistency: consistency as i32,
            session_token: opts.session_token.clone().unwrap_or_default(),
            max_staleness_ms,
            page_rows: opts.page_rows,
        };
        // STRONG goes to the leader. The other levels rotate over the nodes; a node that cannot
        // serve READ_YOUR_WRITES yet names the leader, and the read follows.
        let route = match opts.consistency {
            Consistency::Strong => Route::Leader,
            Consistency::ReadYourWrites => Route::Spread { follow: true },
            Consistency::Bounded(_) | Consistency::Any => Route::Spread { follow: false },
        };
        self.retrying(opts.node.clone(), route, |addr, channel, timeout| {
            let mut req = self.request(request.clone());
            req.set_timeout(timeout);
            async move {
                let mut client =
                    pb::sql_client::SqlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
                let mut stream =
                    client.query(req).await.map_err(|s| Error::from_status(&addr, s))?.into_inner();
                let mut out = QueryResult { columns: vec![], rows: vec![], receipt: Receipt::default() };
                while let Some(page) = stream.message().await.map_err(|s| Error::from_status(&addr, s))? {
                    if !page.columns.is_empty() {
                        out.columns = page.columns;
                    }
                    out.rows.extend(
                        page.rows.into_iter().map(|r| r.values.into_iter().map(Value::from_pb).collect()),
                    );
                    if page.receipt.is_some() {
                        out.receipt = Receipt::from_pb(page.receipt);
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    /// A new causal session over this client's connections.
    pub fn session(&self) -> Session {
        Session { client: self.clone(), token: Arc::new(Mutex::new(None)) }
    }

    /// A node's status.
    pub async fn status(&self, addr: &str) -> Result<pb::StatusResponse, Error> {
        let mut client = pb::admin_client::AdminClient::new(self.channel(addr)?);
        let mut req = self.request(pb::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        client.status(req).await.map(|r| r.into_inner()).map_err(|s| Error::from_status(addr, s))
    }

    /// Removes node `node_id` from the cluster: sent to the node believed to lead (any member
    /// forwards it to the leader), with the same redirects and retries as writes. Returns the
    /// status of the node that carried out the change. Errors: `InvalidArgument` for id 0 or the
    /// last voter, `NotFound` for an id that is not a member — also one already removed, so a
    /// `NotFound` after a retried attempt may mean that attempt succeeded.
    ///
    /// The removed node's process keeps running outside the cluster: stop it, and do not
    /// restart it on its data dir. To bring the machine back, wipe the data dir and join it
    /// under a new id.
    ///
    /// A voter is removed only if a majority of the voters that would remain answer the leader
    /// now; otherwise the answer is `InvalidArgument` (gRPC FAILED_PRECONDITION) naming them.
    /// [`Client::remove_member_forced`] skips that check.
    pub async fn remove_member(&self, node_id: u64) -> Result<pb::StatusResponse, Error> {
        self.remove(node_id, false).await
    }

    /// [`Client::remove_member`] without the check that the remaining voters can commit: the
    /// change may then wait until enough of them are back, and nothing else commits meanwhile.
    pub async fn remove_member_forced(&self, node_id: u64) -> Result<pb::StatusResponse, Error> {
        self.remove(node_id, true).await
    }

    async fn remove(&self, node_id: u64, force: bool) -> Result<pb::StatusResponse, Error> {
        let resp = self
            .retrying(None, Route::Leader, |addr, channel, timeout| {
                let mut req = self.request(pb::RemoveRequest { node_id, force });
                req.set_timeout(timeout);
                async move {
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    client.remove(req).await.map(|r| r.into_inner()).map_err(|s| Error::from_status(&addr, s))
                }
            })
            .await?;
        // The leader may have been the node removed: find the leader afresh next time.
        *self.inner.leader.lock().expect("leader lock") = None;
        Ok(resp.leader.unwrap_or_default())
    }

    /// Moves leadership to voter `target`, or (None) to the voter that holds most of the
    /// leader's log, and returns the new leader's id and term. The leader pauses writes (they
    /// are retried) for about a round trip. Errors: `InvalidArgument` (FAILED_PRECONDITION)
    /// for a target that is not a voter or a cluster of one voter; `Timeout` when leadership
    /// did not move within the leader's budget (it then goes on leading).
    pub async fn transfer_leader(&self, target: Option<u64>) -> Result<(u64, u64), Error> {
        let resp = self
            .retrying(None, Route::Leader, |addr, channel, timeout| {
                let mut req = self.request(pb::TransferLeaderRequest { target: target.unwrap_or(0) });
                req.set_timeout(timeout);
                async move {
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    client
                        .transfer_leader(req)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| Error::from_status(&addr, s))
                }
            })
            .await?;
        *self.inner.leader.lock().expect("leader lock") = None;
        Ok((resp.leader_id, resp.term))
    }

    /// The next node an unpinned spread read tries.
    fn next_reader(&self) -> String {
        let i = self.inner.next_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.addrs[i % self.inner.addrs.len()].clone()
    }

    /// Sends one call, following redirects and retrying retryable failures until the deadline.
    async fn retrying<T, F, Fut>(&self, pinned: Option<String>, route: Route, call: F) -> Result<T, Error>
    where
        F: Fn(String, Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let (follow, spread) = match route {
            Route::Leader => (true, false),
            Route::Spread { follow } => (follow, pinned.is_none()),
        };
        let deadline = Instant::now() + self.inner.deadline;
        let mut attempt = 0;
        let mut target = match &pinned {
            Some(p) => p.clone(),
            None if spread => self.next_reader(),
            None => self.leader_guess(0),
        };
        // Whether `target` is a leader's address: where a call goes first for writes and STRONG
        // reads, or where a redirect pointed. Only its success teaches the client who leads.
        let mut at_leader = !spread;
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining =
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            // The call carries `remaining` as its gRPC timeout, but the channel applies that only
            // once a connection is ready: a request queued behind a connection that never completes
            // (replies swallowed by the network during a TLS or HTTP/2 handshake) would wait
            // forever. So the attempt is bounded here too, a little later than the server's.
            let attempt_bound = remaining + Duration::from_millis(250);
            let result = match tokio::time::timeout(
                attempt_bound,
                call(target.clone(), self.channel(&target)?, remaining),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    message: format!(
                        "no answer from {target} before the deadline (no connection could be completed); if \
                         this was a write, it may or may not have been applied: retry it with the \
                         same request id"
                    ),
                }),
            };
            let err = match result {
                Ok(v) => {
                    if pinned.is_none() && at_leader {
                        self.set_leader(&target);
                    }
                    return Ok(v);
                }
                Err(e) if !e.retryable() => return Err(e),
                // A read pinned to one node at a level that does not redirect (BOUNDED, ANY)
                // answers at once: that node's refusal (too stale, say) is the answer.
                Err(e) if pinned.is_some() && !follow => return Err(e),
                Err(e) => e,
            };
            attempt += 1;
            match &err {
                // A redirect is not a failure: no back-off, and it is followed while time
                // remains, so a caller near its deadline gets the leader's answer, not the
                // follower's redirect.
                Error::NotLeader { leader_addr, .. }
                    if follow
                        && !leader_addr.is_empty()
                        && *leader_addr != target
                        && Instant::now() < deadline =>
                {
                    target = leader_addr.clone();
                    at_leader = true;
                    continue;
                }
                Error::NotLeader { .. } if !follow => return Err(err),
                _ => {}
            }
            if Instant::now() + backoff >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if spread {
                target = self.next_reader();
                at_leader = false;
            } else if pinned.is_none() || follow {
                target = self.leader_guess(attempt);
                at_leader = true;
            }
        }
    }
}

/// Where a call goes first.
#[derive(Clone, Copy)]
enum Route {
    /// The node believed to lead (writes, STRONG reads, membership changes); `NOT_LEADER` is
    /// followed.
    Leader,
    /// The next node in rotation; `NOT_LEADER` is followed when `follow`.
    Spread { follow: bool },
}

/// A causal session: it remembers the highest session token its requests have seen and sends
/// it with `ReadYourWrites` reads, so its reads see its own writes and never go back in time —
/// on any node, without sending every read to the leader. Clones share the token (and so the
/// causality); [`Session::token`] and [`Client::session_from`] carry it between processes.
#[derive(Clone)]
pub struct Session {
    client: Client,
    /// (index, token) of the highest token seen.
    token: Arc<Mutex<Option<(u64, String)>>>,
}

fn token_index(token: &str) -> Option<u64> {
    token.rsplit_once('.').and_then(|(_, i)| i.parse().ok())
}

impl Client {
    /// A session that continues the causality of `token` (from [`Session::token`], possibly
    /// of another process).
    pub fn session_from(&self, token: &str) -> Session {
        let s = self.session();
        s.observe(token);
        s
    }
}

impl Session {
    /// The highest session token seen, to hand to another process.
    pub fn token(&self) -> Option<String> {
        self.token.lock().expect("token lock").as_ref().map(|(_, t)| t.clone())
    }

    /// Takes a token into account (keeps the highest).
    pub fn observe(&self, token: &str) {
        let Some(index) = token_index(token) else { return };
        let mut t = self.token.lock().expect("token lock");
        if t.as_ref().is_none_or(|(i, _)| index > *i) {
            *t = Some((index, token.to_string()));
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<ExecuteResult, Error> {
        self.execute_batch(vec![(sql.to_string(), params.to_vec())], false).await
    }

    pub async fn execute_batch(
        &self,
        statements: Vec<(String, Vec<Value>)>,
        transaction: bool,
    ) -> Result<ExecuteResult, Error> {
        let r = self.client.execute_batch(statements, transaction).await?;
        self.observe(&r.receipt.session_token);
        Ok(r)
    }

    /// A query; at `ReadYourWrites` it carries the session's token unless `opts` names one.
    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        mut opts: QueryOptions,
    ) -> Result<QueryResult, Error> {
        if opts.consistency == Consistency::ReadYourWrites && opts.session_token.is_none() {
            opts.session_token = self.token();
        }
        let r = self.client.query(sql, params, opts).await?;
        self.observe(&r.receipt.session_token);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[tokio::test]
    async fn unusable_tls_material_is_an_invalid_argument_naming_it() {
        let junk = Tls { ca: Some(b"not a certificate".to_vec()), ..Default::default() };
        let c = Client::connect(["https://127.0.0.1:1"]).await.unwrap().with_tls(&junk);
        let e = c.query("SELECT 1", &[], QueryOptions::default()).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { message } if message.contains("CA file") && message.contains("127.0.0.1:1")),
            "{e:?}"
        );
        let half = Tls { identity: Some((b"junk".to_vec(), b"junk".to_vec())), ..Default::default() };
        let e = half.rustls().unwrap_err();
        assert!(e.contains("client certificate") || e.contains("client key"), "{e}");
        // The system's roots, no client certificate: usable as is.
        assert!(Tls::default().rustls().is_ok());
    }

    #[tokio::test]
    async fn sessions_keep_the_highest_token_and_share_it_when_cloned() {
        let c = Client::connect(["127.0.0.1:1"]).await.unwrap();
        let s = c.session();
        assert_eq!(s.token(), None);
        s.observe("abc.5");
        s.observe("abc.3");
        s.observe("garbage");
        let clone = s.clone();
        clone.observe("abc.9");
        assert_eq!(s.token().as_deref(), Some("abc.9"));
        assert_eq!(c.session_from("abc.4").token().as_deref(), Some("abc.4"));
    }

    #[test]
    fn a_dead_connection_is_a_retryable_transport_error() {
        for code in [tonic::Code::Unknown, tonic::Code::Internal] {
            let e = Error::from_status("h:1", tonic::Status::new(code, "transport error"));
            assert!(matches!(e, Error::Transport { .. }) && e.retryable(), "{e:?}");
        }
        let e = Error::from_status("h:1", tonic::Status::internal("something else"));
        assert!(matches!(e, Error::Internal { .. }), "{e:?}");
    }

    #[test]
    fn errors_decode_from_status_details() {
        let e = pb::Error {
            code: pb::ErrorCode::NotLeader as i32,
            message: "not the leader: node 2 (h:1) leads term 7".into(),
            leader_id: 2,
            leader_addr: "h:1".into(),
            term: 7,
            ..Default::default()
        };
        let s = tonic::Status::with_details(tonic::Code::FailedPrecondition, "x", e.encode_to_vec().into());
        match Error::from_status("a:1", s) {
            Error::NotLeader { leader_id: 2, leader_addr, term: 7, .. } => assert_eq!(leader_addr, "h:1"),
            other => panic!("{other:?}"),
        }
        let plain = tonic::Status::unavailable("connection refused");
        assert_eq!(Error::from_status("a:1", plain).code(), "TRANSPORT");
    }

    #[test]
    fn a_shedding_node_s_pause_is_read_and_bounded() {
        let shed = |hint: Option<&str>| {
            let e = pb::Error {
                code: pb::ErrorCode::ResourceExhausted as i32,
                message: "node 1 is serving 8 requests already".into(),
                ..Default::default()
            };
            let mut s =
                tonic::Status::with_details(tonic::Code::ResourceExhausted, "x", e.encode_to_vec().into());
            if let Some(h) = hint {
                s.metadata_mut().insert("retry-after-ms", h.parse().unwrap());
            }
            match Error::from_status("a:1", s) {
                Error::ResourceExhausted { retry_after, .. } => retry_after,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(shed(Some("100")), Some(Duration::from_millis(100)));
        assert_eq!(shed(Some("99999999999")), Some(Duration::from_secs(10)), "a hostile hint is capped");
        assert_eq!(shed(Some("soon")), None);
        assert_eq!(shed(None), None);
    }

    #[tokio::test]
    async fn concurrent_requests_never_share_a_lane() {
        let c = Client::connect(["127.0.0.1:1"]).await.unwrap();
        let a = c.take_lane();
        let b = c.take_lane();
        assert_ne!(a.0, b.0);
        c.release_lane((a.0, 5));
        assert_eq!(c.take_lane(), (a.0, 5), "a freed lane is reused with its sequence number");
        assert!(Client::connect(Vec::<String>::new()).await.is_err());
    }
}
