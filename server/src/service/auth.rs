//! Who is calling, and may they: client authentication and permissions (issue 17; the design
//! and the threat model are in docs/security.md).
//!
//! With `--users-file`, every call on the client services (`Sql`, `Admin`) carries the gRPC
//! metadata `authorization`, checked before the handler does any work:
//! - `Basic base64(user:password)`: the password is checked against the user's argon2id hash.
//!   Argon2 is slow on purpose (tens of milliseconds). A credential that verified once is
//!   remembered as a keyed SHA-256 digest until the users file changes, so a user's first request
//!   pays for it and later ones do not; wrong passwords always do. At most [`MAX_VERIFYING`]
//!   verifications run at once, on blocking threads, so a flood of guesses costs those threads
//!   and never the async workers, Raft or other clients; a guess that cannot start within
//!   [`VERIFY_QUEUE_WAIT`] is refused with RESOURCE_EXHAUSTED.
//! - `Bearer TOKEN`: a random token (`raftsql-server hash-password --token` makes one) whose
//!   SHA-256 the users file lists under its user. A fast hash suffices for a random secret.
//!
//! Missing or wrong credentials: UNAUTHENTICATED, with one message for an unknown user and a wrong
//! password. A known user without the permission the call needs: PERMISSION_DENIED, naming
//! it. Failures are logged with the caller's address (at most one line per second, with a count
//! of the rest) and counted ([`Auth::failures`]); no password, token, hash or header is ever
//! logged.
//!
//! The users file (TOML) is read at start (a bad file stops the node) and polled every
//! [`RELOAD_EVERY`]: a changed file takes effect for new requests, and forgets every remembered
//! credential; a file that became unreadable or invalid is reported and the last good one stays.
//!
//! ```toml
//! [[user]]
//! name = "app"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # raftsql-server hash-password
//! permissions = ["read", "write"]
//!
//! [[user]]
//! name = "ops"
//! tokens = ["sha256:9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"]
//! permissions = ["all"]
//! ```
//!
//! Without a users file every caller may do everything: local development (`raftsql demo`),
//! announced at start. The peer service (`Raft`) is not checked here: peers are authenticated
//! by mutual TLS on the peer port (issue 17, not built yet).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// How often the users file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Password verifications (argon2) running at once on one node.
pub const MAX_VERIFYING: usize = 2;
/// How long a password check waits for a verification slot before it is refused.
pub const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The largest users file read, bytes.
pub const MAX_USERS_FILE: u64 = 1 << 20;
/// The longest `authorization` value looked at, bytes.
const MAX_HEADER: usize = 4096;
/// The longest user name; names are letters, digits and `._@-` (no `/`: request ids are
/// scoped as `user/client id`).
pub const MAX_USER_NAME: usize = 64;
/// Bounds on an argon2 hash's cost parameters, so a users file cannot make one verification
/// take minutes or gigabytes: memory in KiB and iterations.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_ITERATIONS: u32 = 16;

/// What a call may need. A user holds a set of them ([`Permissions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Sql.Query, and the reading statements of Sql.Execute.
    Read,
    /// Sql.Execute of INSERT, UPDATE, DELETE (without DDL).
    Write,
    /// Sql.Execute of CREATE, DROP, ALTER.
    Ddl,
    /// Admin.Status.
    AdminStatus,
    /// Admin.Join, Admin.Remove, Admin.TransferLeader.
    AdminMembership,
    /// Admin.Snapshot (and backup and restore, once they exist).
    Backup,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::Read,
        Permission::Write,
        Permission::Ddl,
        Permission::AdminStatus,
        Permission::AdminMembership,
        Permission::Backup,
    ];

    /// The name the users file and error messages use.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Ddl => "ddl",
            Permission::AdminStatus => "admin-status",
            Permission::AdminMembership => "admin-membership",
            Permission::Backup => "backup",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    pub fn all() -> Permissions {
        Permissions(Permission::ALL.iter().fold(0, |b, p| b | p.bit()))
    }

    pub fn of(ps: &[Permission]) -> Permissions {
        Permissions(ps.iter().fold(0, |b, p| b | p.bit()))
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Parses the users file's names; `"all"` is every permission.
    fn parse(names: &[String]) -> Result<Permissions, String> {
        let mut set = Permissions::default();
        for n in names {
            if n == "all" {
                set = Permissions::all();
                continue;
            }
            let p = Permission::ALL.into_iter().find(|p| p.name() == n).ok_or_else(|| {
                let known: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
                format!("unknown permission {n:?} (known: {}, all)", known.join(", "))
            })?;
            set.0 |= p.bit();
        }
        Ok(set)
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Permission::ALL.iter().filter(|p| self.contains(**p)).map(|p| p.name()))
            .finish()
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None` when the node has no users file (everyone may do everything).
    pub user: Option<Arc<str>>,
    pub permissions: Permissions,
    /// Authenticated by a client certificate (not by the authorization header): a write a
    /// follower forwards must then name the user to the leader itself ([`CertUser`]).
    pub by_certificate: bool,
}

/// The user a client certificate authenticated on the member that forwarded a request; set
/// by the peer service (only on a peer port with TLS, so only a node can claim it), never read
/// from what a client sends.
#[derive(Clone, Debug)]
pub struct CertUser(pub String);

/// The header a forwarding member names a certificate-authenticated user in.
pub const CERT_USER_HEADER: &str = "x-raftsql-cert-user";

impl Caller {
    fn open() -> Caller {
        Caller { user: None, permissions: Permissions::all(), by_certificate: false }
    }

    /// PERMISSION_DENIED unless the caller holds `p`.
    pub fn require(&self, p: Permission, what: &str) -> Result<(), tonic::Status> {
        if self.permissions.contains(p) {
            return Ok(());
        }
        let user = self.user.as_deref().unwrap_or("");
        Err(denied(format!(
            "user {user:?} may not {what}: that needs the {p} permission, which the users file does not \
             give this user"
        )))
    }

    /// The client id a request id is stored under: with users, `user/client id`, so one user
    /// can neither replay, read nor lock out another's request ids.
    pub fn scoped_client_id(&self, client_id: &str) -> String {
        match &self.user {
            Some(u) => format!("{u}/{client_id}"),
            None => client_id.to_string(),
        }
    }
}

/// UNAUTHENTICATED with a raftsql error in its details.
fn unauthenticated(message: String) -> tonic::Status {
    typed(tonic::Code::Unauthenticated, raftsql_proto::v1::ErrorCode::Unauthenticated, message)
}

fn denied(message: String) -> tonic::Status {
    typed(tonic::Code::PermissionDenied, raftsql_proto::v1::ErrorCode::PermissionDenied, message)
}

fn typed(code: tonic::Code, error: raftsql_proto::v1::ErrorCode, message: String) -> tonic::Status {
    use prost::Message;
    let e = raftsql_proto::v1::Error { code: error as i32, message: message.clone(), ..Default::default() };
    tonic::Status::with_details(code, message, e.encode_to_vec().into())
}

/// One user as the users file gives it.
struct User {
    name: Arc<str>,
    /// The argon2id hash, in PHC form.
    password: Option<String>,
    permissions: Permissions,
}

/// A parsed users file.
struct Users {
    by_name: HashMap<String, User>,
    /// SHA-256 of each bearer token → user name.
    by_token: HashMap<[u8; 32], String>,
    /// SHA-256 of the file's bytes, to notice changes.
    digest: [u8; 32],
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    user: Vec<FileUser>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
    permissions: Vec<String>,
}

pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("user name {name:?} must be 1 to {MAX_USER_NAME} letters, digits or . _ @ -"))
    }
}

/// Checks an argon2id PHC string and its cost parameters.
fn check_hash(phc: &str) -> Result<(), String> {
    let h = PasswordHash::new(phc).map_err(|e| format!("the password is not an argon2id hash ({e})"))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the password hash uses {}, not argon2id: make one with `raftsql-server hash-password`",
            h.algorithm
        ));
    }
    let params = argon2::Params::try_from(&h).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_ITERATIONS {
        return Err(format!(
            "the hash's cost (m={} KiB, t={}) is above the limit (m <= {MAX_ARGON2_MEMORY_KIB}, t <= \
             {MAX_ARGON2_ITERATIONS}): every login would be that slow",
            params.m_cost(),
            params.t_cost()
        ));
    }
    Ok(())
}

fn parse_token_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| "a token hash starts with \"sha256:\"".to_string())?;
    let bytes = decode_hex(hex).filter(|b| b.len() == 32).ok_or_else(|| {
        "a token hash is \"sha256:\" and 64 hex digits (`raftsql-server hash-password --token`)".to_string()
    })?;
    let mut out = [0; 32];
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Users {
    fn parse(text: &[u8]) -> Result<Users, String> {
        let digest: [u8; 32] = Sha256::digest(text).into();
        let text = std::str::from_utf8(text).map_err(|_| "the file is not UTF-8".to_string())?;
        let doc: FileDoc = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = HashMap::new();
        let mut by_token = HashMap::new();
        for u in doc.user {
            let err = |e: String| format!("user {:?}: {e}", u.name);
            check_user_name(&u.name)?;
            if let Some(p) = &u.password {
                check_hash(p).map_err(err)?;
            }
            // A user with neither a password nor a token logs in with a client certificate only.
            for t in &u.tokens {
                let h = parse_token_hash(t).map_err(err)?;
                if by_token.insert(h, u.name.clone()).is_some() {
                    return Err(err("lists a token another user (or this one) already has".into()));
                }
            }
            let permissions = Permissions::parse(&u.permissions).map_err(err)?;
            let user = User { name: u.name.as_str().into(), password: u.password, permissions };
            if by_name.insert(u.name.clone(), user).is_some() {
                return Err(format!("user {:?} is listed twice", u.name));
            }
        }
        Ok(Users { by_name, by_token, digest })
    }

    fn load(path: &Path) -> Result<Users, String> {
        let text = read_bounded(path)?;
        Users::parse(&text).map_err(|e| format!("users file {}: {e}", path.display()))
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    let mut text = Vec::new();
    f.take(MAX_USERS_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_USERS_FILE {
        return Err(format!("users file {} is larger than {MAX_USERS_FILE} bytes", path.display()));
    }
    Ok(text)
}

/// The node's authenticator; cheap to share.
pub struct Auth {
    users: Option<Checked>,
    failures: AtomicU64,
    /// When a failure was last logged, and how many were not logged since.
    last_logged: crate::throttle::LogThrottle,
}

/// The users and what was verified against them.
struct Checked {
    path: PathBuf,
    current: RwLock<Arc<Users>>,
    /// user → keyed digest of the password that verified, for the users file of `current`.
    remembered: Mutex<HashMap<Arc<str>, [u8; 32]>>,
    /// A random key, so remembered digests are worthless outside this process.
    key: [u8; 32],
    verifying: Arc<tokio::sync::Semaphore>,
}

impl Auth {
    /// No users file: every caller may do everything.
    pub fn open() -> Arc<Auth> {
        Arc::new(Auth { users: None, failures: AtomicU64::new(0), last_logged: Default::default() })
    }

    /// Reads the users file (an error names what is wrong in it) and starts polling it on the
    /// current runtime.
    pub fn from_file(path: &Path) -> Result<Arc<Auth>, String> {
        let users = Users::load(path)?;
        info!(users = users.by_name.len(), file = %path.display(), "users file loaded: clients must authenticate");
        let auth = Arc::new(Auth {
            users: Some(Checked {
                path: path.to_path_buf(),
                current: RwLock::new(Arc::new(users)),
                remembered: Mutex::new(HashMap::new()),
                key: rand::random(),
                verifying: Arc::new(tokio::sync::Semaphore::new(MAX_VERIFYING)),
            }),
            failures: AtomicU64::new(0),
            last_logged: Default::default(),
        });
        let weak = Arc::downgrade(&auth);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(auth) = weak.upgrade() else { return };
                auth.reload();
            }
        });
        Ok(auth)
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        self.users.is_some()
    }

    /// Failed authentications since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Re-reads the users file if it changed.
    fn reload(&self) {
        let Some(c) = &self.users else { return };
        let text = match read_bounded(&c.path) {
            Ok(t) => t,
            Err(e) => {
                warn!("{e}; keeping the users loaded before");
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&text).into();
        if digest == c.current.read().unwrap_or_else(|e| e.into_inner()).digest {
            return;
        }
        match Users::parse(&text) {
            Ok(users) => {
                info!(users = users.by_name.len(), file = %c.path.display(), "users file changed: reloaded");
                // Forget first: a remembered password must not outlive a file that changed it.
                let mut remembered = c.remembered.lock().unwrap_or_else(|e| e.into_inner());
                remembered.clear();
                *c.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
            }
            Err(e) => warn!(
                file = %c.path.display(),
                "the users file changed but is not valid ({e}); keeping the users loaded before"
            ),
        }
    }

    /// Who sent `request`: its authorization header, or else the user its client certificate
    /// names (the certificate's first DNS name; the TLS handshake verified it against
    /// `--tls-ca`), or the certificate user a forwarding member vouches for ([`CertUser`]).
    pub async fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        // The certificate is parsed only when it would decide: with a users file and no
        // authorization header (not on every request of an open node or a password user).
        let by_certificate = self.users.is_some() && !request.metadata().contains_key("authorization");
        let cert_user = match request.extensions().get::<CertUser>() {
            _ if !by_certificate => None,
            Some(u) => Some(u.0.clone()),
            None => request.peer_certs().and_then(|c| crate::tls::client_user(&c)),
        };
        self.authenticate(request.metadata(), request.remote_addr(), cert_user.as_deref()).await
    }

    /// Who is calling: the caller's credentials from `metadata` (or, without them, the user a
    /// verified client certificate names), checked. `peer` is for the log.
    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<std::net::SocketAddr>,
        cert_user: Option<&str>,
    ) -> Result<Caller, tonic::Status> {
        let Some(c) = &self.users else { return Ok(Caller::open()) };
        let result = match (metadata.contains_key("authorization"), cert_user) {
            (false, Some(name)) => {
                let users = c.current.read().unwrap_or_else(|e| e.into_inner()).clone();
                match users.by_name.get(name) {
                    Some(user) => Ok(Caller {
                        user: Some(user.name.clone()),
                        permissions: user.permissions,
                        by_certificate: true,
                    }),
                    None => Err((Some(name.to_string()), Failure::CertUser)),
                }
            }
            _ => self.check(c, metadata).await,
        };
        if let Err((user, why)) = &result {
            self.failed(peer, user.as_deref(), why);
        }
        result.map_err(|(_, why)| match why {
            Failure::Busy => {
                let mut s = typed(
                    tonic::Code::ResourceExhausted,
                    raftsql_proto::v1::ErrorCode::ResourceExhausted,
                    format!(
                        "{MAX_VERIFYING} password checks are already running on this node; retry \
                         shortly (a correct password is remembered after its first check)"
                    ),
                );
                s.metadata_mut().insert("retry-after-ms", crate::raft::RETRY_AFTER_MS.into());
                s
            }
            other => unauthenticated(other.to_string()),
        })
    }

    async fn check(
        &self,
        c: &Checked,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, (Option<String>, Failure)> {
        let value = metadata.get("authorization").ok_or((None, Failure::Missing))?;
        let value = value.to_str().map_err(|_| (None, Failure::Malformed))?;
        if value.len() > MAX_HEADER {
            return Err((None, Failure::Malformed));
        }
        let (scheme, rest) = value.split_once(' ').ok_or((None, Failure::Malformed))?;
        let users = c.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if scheme.eq_ignore_ascii_case("bearer") {
            let digest: [u8; 32] = Sha256::digest(rest.trim().as_bytes()).into();
            let name = users.by_token.get(&digest).ok_or((None, Failure::BadToken))?;
            let user = &users.by_name[name];
            return Ok(Caller {
                user: Some(user.name.clone()),
                permissions: user.permissions,
                by_certificate: false,
            });
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err((None, Failure::Malformed));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| (None, Failure::Malformed))?;
        let decoded = String::from_utf8(decoded).map_err(|_| (None, Failure::Malformed))?;
        let (name, password) = decoded.split_once(':').ok_or((None, Failure::Malformed))?;
        let fail = |f| Err((Some(name.to_string()), f));
        let Some(user) = users.by_name.get(name) else { return fail(Failure::BadPassword) };
        let Some(hash) = user.password.clone() else { return fail(Failure::BadPassword) };
        let caller =
            Caller { user: Some(user.name.clone()), permissions: user.permissions, by_certificate: false };
        let digest = remembered_digest(&c.key, name, password);
        let known = c.remembered.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied();
        if known.is_some_and(|k| constant_time_eq(&k, &digest)) {
            return Ok(caller);
        }
        let Ok(Ok(_slot)) =
            tokio::time::timeout(VERIFY_QUEUE_WAIT, c.verifying.clone().acquire_owned()).await
        else {
            return fail(Failure::Busy);
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            // Parsed when the users file was loaded; should it not parse, the password fails.
            PasswordHash::new(&hash)
                .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        if !ok {
            return fail(Failure::BadPassword);
        }
        // Remember it only if the file has not changed meanwhile (reload clears under this lock
        // before it swaps the users in).
        let mut remembered = c.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&users, &c.current.read().unwrap_or_else(|e| e.into_inner())) {
            remembered.insert(user.name.clone(), digest);
        }
        Ok(caller)
    }

    fn failed(&self, peer: Option<std::net::SocketAddr>, user: Option<&str>, why: &Failure) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        TOTAL_FAILURES.fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.last_logged.allow() else { return };
        // The user name is what the caller claimed; never the password, token or header.
        warn!(
            peer = %peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
            user = user.unwrap_or(""),
            reason = why.reason(),
            not_logged_since_last = suppressed,
            total = self.failures(),
            "client authentication failed"
        );
    }
}

/// Failed authentications in this process (one node per process), for the status call.
static TOTAL_FAILURES: AtomicU64 = AtomicU64::new(0);

pub fn total_failures() -> u64 {
    TOTAL_FAILURES.load(Ordering::Relaxed)
}

/// Why a caller was not authenticated; the Display text is what the caller is told.
enum Failure {
    Missing,
    Malformed,
    BadPassword,
    BadToken,
    Busy,
    CertUser,
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Missing => "no authorization header",
            Failure::Malformed => "malformed authorization header",
            Failure::BadPassword => "unknown user or wrong password",
            Failure::BadToken => "unknown token",
            Failure::Busy => "too many password checks at once",
            Failure::CertUser => "client certificate names an unknown user",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Missing => {
                "this cluster requires authentication: give a user (raftsql --user NAME, the password in \
                 RAFTSQL_PASSWORD or at the prompt) or a bearer token (RAFTSQL_BEARER_TOKEN)"
            }
            Failure::Malformed => {
                "the authorization header is not \"Basic base64(user:password)\" or \"Bearer TOKEN\""
            }
            Failure::BadPassword => "unknown user or wrong password",
            Failure::BadToken => "unknown bearer token",
            Failure::Busy => "too many password checks at once",
            Failure::CertUser => {
                "the client certificate is valid, but the user its first DNS name names is not in the \
                 users file: add that user, or authenticate with a password or token"
            }
        })
    }
}

fn remembered_digest(key: &[u8; 32], user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An argon2id hash of `password` in PHC form, for the users file (argon2's default cost:
/// 19 MiB, 2 iterations, as OWASP recommends).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// A new random bearer token and the line the users file lists for it.
pub fn new_token() -> (String, String) {
    let token = format!("rsq_{}", hex(&rand::random::<[u8; 32]>()));
    let digest = Sha256::digest(token.as_bytes());
    (token, format!("sha256:{}", hex(&digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        md.insert("authorization", format!("Basic {v}").parse().unwrap());
        md
    }

    fn header(v: &str) -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", v.parse().unwrap());
        md
    }

    /// A cheap hash for tests (the default cost is for real use).
    fn quick_hash(password: &str) -> String {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("users.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[tokio::test]
    async fn passwords_tokens_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (token, token_hash) = new_token();
        let path = write(
            dir.path(),
            &format!(
                "[[user]]\nname = \"app\"\npassword = \"{}\"\npermissions = [\"read\", \"write\"]\n\n\
                 [[user]]\nname = \"ops\"\ntokens = [\"{token_hash}\"]\npermissions = [\"all\"]\n",
                quick_hash("s3cret")
            ),
        );
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth.required());
        let app = auth.authenticate(&basic("app", "s3cret"), None, None).await.unwrap();
        assert_eq!(app.user.as_deref(), Some("app"));
        assert!(app.require(Permission::Read, "read").is_ok());
        let e = app.require(Permission::Ddl, "change the schema").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("ddl"), "{}", e.message());
        assert_eq!(app.scoped_client_id("c1"), "app/c1");
        // Remembered: the second check of the same password does not need argon2 (no way to
        // see that from here but the result, which must be the same).
        assert!(auth.authenticate(&basic("app", "s3cret"), None, None).await.is_ok());

        let ops = auth.authenticate(&header(&format!("Bearer {token}")), None, None).await.unwrap();
        assert_eq!(ops.permissions, Permissions::all());

        let before = auth.failures();
        for md in [
            tonic::metadata::MetadataMap::new(),
            basic("app", "wrong"),
            basic("nobody", "s3cret"),
            basic("ops", ""),
            header("Bearer rsq_not_a_token"),
            header("Basic !!!"),
            header("Basic"),
            header("Digest abc"),
            header(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("no-colon"))),
        ] {
            let e = auth.authenticate(&md, None, None).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{md:?}: {}", e.message());
            assert!(!e.message().contains("s3cret"));
        }
        assert_eq!(auth.failures(), before + 9);
        // A remembered password is not a skeleton key: another one still fails.
        assert!(auth.authenticate(&basic("app", "s3cret2"), None, None).await.is_err());

        // Open mode: everyone may do everything, ids are not scoped.
        let open = Auth::open().authenticate(&tonic::metadata::MetadataMap::new(), None, None).await.unwrap();
        assert_eq!((open.user, open.permissions), (None, Permissions::all()));
    }

    #[tokio::test]
    async fn a_changed_file_takes_effect_and_a_bad_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let one = format!(
            "[[user]]\nname = \"a\"\npassword = \"{}\"\npermissions = [\"read\"]\n",
            quick_hash("p1")
        );
        let path = write(dir.path(), &one);
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth.authenticate(&basic("a", "p1"), None, None).await.is_ok());
        // The password changes: the remembered one stops working at once.
        write(
            dir.path(),
            &format!(
                "[[user]]\nname = \"a\"\npassword = \"{}\"\npermissions = [\"read\"]\n",
                quick_hash("p2")
            ),
        );
        auth.reload();
        assert!(auth.authenticate(&basic("a", "p1"), None, None).await.is_err());
        assert!(auth.authenticate(&basic("a", "p2"), None, None).await.is_ok());
        // A broken file is reported and the last good users stay.
        write(dir.path(), "[[user]\nname = ");
        auth.reload();
        assert!(auth.authenticate(&basic("a", "p2"), None, None).await.is_ok());
    }

    #[test]
    fn bad_users_files_are_refused_with_the_reason() {
        let h = quick_hash("x");
        for (text, needle) in [
            (format!("[[user]]\nname = \"a/b\"\npassword = \"{h}\"\npermissions = []\n").as_str(), "user name"),
            (format!("[[user]]\nname = \"a\"\npassword = \"{h}\"\npermissions = [\"root\"]\n").as_str(), "unknown permission"),
            ("[[user]]\nname = \"a\"\npassword = \"hunter2\"\npermissions = []\n", "not an argon2id hash"),
            (
                "[[user]]\nname = \"a\"\npassword = \"$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA\"\npermissions = []\n",
                "above the limit",
            ),
            ("[[user]]\nname = \"a\"\ntokens = [\"md5:00\"]\npermissions = []\n", "sha256:"),
            (&format!("[[user]]\nname = \"a\"\npassword = \"{h}\"\npermissions = []\nrole = \"x\"\n"), "unknown field"),
            (
                &format!(
                    "[[user]]\nname = \"a\"\npassword = \"{h}\"\npermissions = []\n[[user]]\nname = \"a\"\npassword = \"{h}\"\npermissions = []\n"
                ),
                "listed twice",
            ),
            ("user = 5", "invalid type"),
        ] {
            let e = Users::parse(text.as_bytes()).err().unwrap_or_else(|| panic!("{text:?} must be refused"));
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(Users::parse(b"").unwrap().by_name.is_empty());
    }

    #[test]
    fn hashes_and_tokens_round_trip() {
        let h = hash_password("correct horse").unwrap();
        check_hash(&h).unwrap();
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        let (token, line) = new_token();
        assert_eq!(parse_token_hash(&line).unwrap(), <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
    }
}
