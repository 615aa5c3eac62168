//! TLS on the client port and the peer port (issue 17, docs/security.md).
//!
//! - **rustls** (ring) under tonic, TLS 1.3 only, ALPN `h2`. Each port has its own [`Tls`]:
//!   its certificate and key, and a CA. On the client port the CA is optional and, when given,
//!   clients *may* present a certificate signed by it (the certificate's first DNS SAN names the
//!   user, `service::auth`); on the peer port the CA is mandatory and every peer *must* present
//!   one (mutual TLS).
//! - **Node identity**: a node's peer certificate carries the DNS SAN `node-<id>.<domain>`
//!   (`--peer-tls-domain`, default `raftsql`). The receiver checks that name against the node id
//!   a message claims to come from ([`Tls::peer_is`]), so node 2's certificate cannot speak as
//!   node 3. Outgoing, replication to node N verifies that the server presents `node-N.<domain>`;
//!   calls made to an address whose node is not known yet (join, bootstrap, status, forwarding)
//!   accept any `node-<id>.<domain>` certificate from the CA.
//! - **Our own accept loop** ([`incoming`]): the TLS handshake runs per connection in its own
//!   task with a [`HANDSHAKE_TIMEOUT`] and at most [`MAX_HANDSHAKES`] at once, so a client that
//!   connects and sends nothing (or plain text) holds no server resource past the timeout and
//!   never delays other connections; finished streams feed tonic's `serve_with_incoming`.
//! - **Reload**: the files are read again every [`RELOAD_EVERY`]; when their bytes changed and
//!   still make a valid configuration, new connections use it (established ones keep theirs, as
//!   with etcd). A change that does not load (a half-written key, a certificate without its key)
//!   is logged and the previous configuration stays, so a Secret rotating in Kubernetes never
//!   takes a port down.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tracing::{debug, info, warn};

/// How long a connection may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes one port runs at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;
/// How often the certificate, key and CA files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// The most bytes a certificate, key or CA file may hold.
const MAX_FILE: u64 = 1 << 20;

/// The files of one port's TLS.
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Which port a [`Tls`] is for.
#[derive(Clone, Debug)]
pub enum Port {
    /// The client port: client certificates optional (only when a CA is given).
    Client,
    /// The peer port of node `node`: mutual TLS; node certificates name `node-<id>.<domain>`,
    /// and this node's own must name `node`.
    Peer { domain: String, node: u64 },
}

/// One port's TLS configuration, reloaded when its files change.
pub struct Tls {
    files: Files,
    port: Port,
    current: RwLock<Arc<Loaded>>,
}

struct Loaded {
    digest: [u8; 32],
    /// This node's own (end-entity) certificate.
    own: CertificateDer<'static>,
    server: Arc<ServerConfig>,
    /// Peer port only: how this node calls other nodes (presenting its own certificate).
    client: Option<Arc<ClientConfig>>,
}

/// ring, as the issue asks (`tls-ring`): aws-lc-rs would add a long C build on 2 cores. rustls
/// 0.23.48 marks ring's provider deprecated because it has no post-quantum key exchange; the
/// classical X25519/P-256 exchanges it has are what etcd and rqlite use today.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot open the {what} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("the {what} {} is larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(bytes)
}

fn certs(pem: &[u8], what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the {what} {} holds no certificate (PEM \"CERTIFICATE\")", path.display()));
    }
    Ok(certs)
}

pub(crate) fn roots(pem: &[u8], path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem, "CA file", path)? {
        roots
            .add(cert)
            .map_err(|e| format!("the CA file {} holds a bad certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

impl Tls {
    /// Loads a port's TLS from its files; the error says which file is wrong and how.
    pub fn load(files: Files, port: Port) -> Result<Arc<Tls>, String> {
        if matches!(port, Port::Peer { .. }) && files.ca.is_none() {
            return Err("peer TLS needs --peer-tls-ca: every node must present a certificate from it".into());
        }
        let loaded = Self::build(&files, &port)?;
        Ok(Arc::new(Tls { files, port, current: RwLock::new(Arc::new(loaded)) }))
    }

    fn build(files: &Files, port: &Port) -> Result<Loaded, String> {
        let cert_pem = read(&files.cert, "certificate file")?;
        let key_pem = read(&files.key, "key file")?;
        let ca_pem = files.ca.as_ref().map(|p| read(p, "CA file")).transpose()?;
        let mut h = Sha256::new();
        for part in [&cert_pem, &key_pem, ca_pem.as_ref().unwrap_or(&Vec::new())] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();

        let chain = certs(&cert_pem, "certificate file", &files.cert)?;
        let own = chain[0].clone();
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("the key file {} holds no usable private key: {e}", files.key.display()))?;
        let roots = match (&ca_pem, &files.ca) {
            (Some(pem), Some(path)) => Some(roots(pem, path)?),
            _ => None,
        };
        let tls13 = |e: rustls::Error| format!("TLS 1.3 with ring: {e}");
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls13)?;
        let builder = match (&roots, port) {
            (None, _) => builder.with_no_client_auth(),
            (Some(r), Port::Client) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(r.clone(), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the CA file cannot verify clients: {e}"))?,
            ),
            (Some(r), Port::Peer { .. }) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(r.clone(), provider())
                    .build()
                    .map_err(|e| format!("the peer CA file cannot verify peers: {e}"))?,
            ),
        };
        let mut server = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| {
            format!(
                "the certificate {} and the key {} do not make a TLS identity: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let client = match (port, roots) {
            (Port::Peer { domain, .. }, Some(roots)) => {
                let verifier = Arc::new(NodeVerifier {
                    inner: rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| format!("the peer CA file cannot verify nodes: {e}"))?,
                    domain: domain.clone(),
                });
                let mut c = ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(tls13)?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the peer certificate cannot be presented to other nodes: {e}"))?;
                c.alpn_protocols = vec![b"h2".to_vec()];
                Some(Arc::new(c))
            }
            _ => None,
        };
        let loaded = Loaded { digest, own, server: Arc::new(server), client };
        if let Port::Peer { domain, node } = port {
            let named = webpki::EndEntityCert::try_from(&loaded.own).is_ok_and(|c| {
                ServerName::try_from(node_name(*node, domain))
                    .is_ok_and(|n| c.verify_is_valid_for_subject_name(&n).is_ok())
            });
            if !named {
                return Err(format!(
                    "the certificate {} does not name this node: its DNS names must include {}",
                    files.cert.display(),
                    node_name(*node, domain)
                ));
            }
        }
        Ok(loaded)
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again; swaps in a configuration that changed and loads.
    fn reload(&self) {
        let result = Self::build(&self.files, &self.port);
        match result {
            Ok(new) if new.digest != self.loaded().digest => {
                info!(cert = %self.files.cert.display(), port = ?self.port, "TLS files changed: new connections use them");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
            }
            Ok(_) => {}
            Err(e) => warn!(port = ?self.port, "TLS files do not load ({e}); keeping the ones loaded before"),
        }
    }

    /// Re-reads the files every [`RELOAD_EVERY`] for as long as this `Tls` is in use.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(tls) = weak.upgrade() else { return };
                // Files are small; reading them is quick, but it is still blocking I/O.
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
        });
    }

    /// The peer domain (`--peer-tls-domain`); empty on the client port.
    pub fn peer_domain(&self) -> &str {
        self.domain().unwrap_or_default()
    }

    /// The peer port's domain, if this is the peer port's TLS.
    fn domain(&self) -> Option<&str> {
        match &self.port {
            Port::Peer { domain, .. } => Some(domain),
            Port::Client => None,
        }
    }

    /// Whether `certs` (a peer's verified chain) names node `id`: its end-entity certificate is
    /// valid for `node-<id>.<domain>`.
    pub fn peer_is(&self, certs: &[CertificateDer<'_>], id: u64) -> bool {
        let (Some(domain), Some(cert)) = (self.domain(), certs.first()) else { return false };
        let Ok(name) = ServerName::try_from(node_name(id, domain)) else { return false };
        webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// The node id `certs` (a peer's verified chain) names, if it names exactly one.
    pub fn peer_node(&self, certs: &[CertificateDer<'_>]) -> Option<u64> {
        let domain = self.domain()?;
        let cert = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
        let mut ids = cert.valid_dns_names().filter_map(|n| node_id_in(n, domain));
        let id = ids.next()?;
        ids.all(|other| other == id).then_some(id)
    }

    /// The peer port's client configuration (this node's certificate, the peer CA).
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.loaded().client.clone()
    }
}

/// The user a verified client certificate names: its first DNS name (subject alternative
/// name), e.g. `alice`.
pub fn client_user(certs: &[CertificateDer<'_>]) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    let name = cert.valid_dns_names().next()?;
    Some(name.to_string())
}

/// The DNS name a node's peer certificate carries.
pub fn node_name(id: u64, domain: &str) -> String {
    format!("node-{id}.{domain}")
}

/// The id in `name` if it is `node-<id>.<domain>`.
fn node_id_in(name: &str, domain: &str) -> Option<u64> {
    let id = name.strip_prefix("node-")?.strip_suffix(domain)?.strip_suffix('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.starts_with('0') {
        return None;
    }
    id.parse().ok()
}

/// The server name an outgoing call verifies when it does not know which node it reaches: any
/// `node-<id>.<domain>` certificate from the CA passes ([`NodeVerifier`]).
const ANY_NODE: &str = "any-node.invalid";

/// Verifies a node's server certificate against the peer CA and a node name.
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    domain: String,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let any = ServerName::try_from(ANY_NODE).expect("a valid DNS name");
        if *server_name != any {
            return self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        // Pick the node name the certificate carries, then let webpki check chain and name.
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                e,
            ))))
        })?;
        let name = cert
            .valid_dns_names()
            .find(|n| node_id_in(n, &self.domain).is_some())
            .map(|n| n.to_string())
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        let name = ServerName::try_from(name)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Failed or timed-out TLS handshakes on either port since the node started.
static HANDSHAKE_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn handshake_failures() -> u64 {
    HANDSHAKE_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A connection that finished its TLS handshake.
pub type Stream = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts connections on `listener` and runs their TLS handshakes (at most
/// [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), yielding the finished
/// streams for tonic. Stops when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Stream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let failures = Arc::new(crate::throttle::LogThrottle::default());
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => p,
                () = tx.closed() => return,
            };
            let Ok(permit) = permit else { return };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Nagle off: a small reply (a row, a heartbeat ack) must not wait for a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.loaded().server.clone());
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        HANDSHAKE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(not_logged) = failures.allow() {
                            warn!(%peer, error = %e, not_logged_since_last = not_logged, "TLS handshake failed");
                        } else {
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                    }
                    Err(_) => {
                        HANDSHAKE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(%peer, "TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Opens a TCP connection to `addr` ("host:port") from `source`, then TLS with this node's peer
/// certificate, verifying the server as node `expect` (or any node of the CA).
pub async fn connect(
    addr: &str,
    source: Option<std::net::IpAddr>,
    config: Arc<ClientConfig>,
    expect: Option<u64>,
    domain: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = match expect {
        Some(id) => node_name(id, domain),
        None => ANY_NODE.to_string(),
    };
    let name = ServerName::try_from(name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad node name: {e}")))?;
    let tcp = raftsql_proto::channel::tcp(addr, source).await?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_strictly() {
        assert_eq!(node_id_in("node-3.raftsql", "raftsql"), Some(3));
        assert_eq!(node_id_in("node-12.a.b", "a.b"), Some(12));
        for bad in [
            "node-.raftsql",
            "node-03.raftsql",
            "node-3raftsql",
            "node-3.other",
            "node-x.raftsql",
            "xnode-3.raftsql",
            "node-3.raftsql.evil",
        ] {
            assert_eq!(node_id_in(bad, "raftsql"), None, "{bad}");
        }
    }
}
