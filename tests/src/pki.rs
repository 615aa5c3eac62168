//! Certificates made at test time (rcgen), written as PEM files for the nodes and clients.
//!
//! Two CAs, as a deployment would have them: the **peer CA** signs the nodes' peer
//! certificates (DNS name `node-<id>.raftsql`, plus `localhost` and 127.0.0.1), the **client
//! CA** signs the nodes' client-port certificates and the users' client certificates (first
//! DNS name = the user). Any number of further certificates — from another CA, expired,
//! naming another node — can be issued for the tests that must see them refused.

use raftsql_server::certs;
use std::path::{Path, PathBuf};

/// The domain of node names (`--peer-tls-domain`'s default).
pub const DOMAIN: &str = "raftsql";

/// A certificate and key as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that can issue certificates (`raftsql_server::certs::Ca`, as `make-certs` uses it).
pub struct Ca {
    ca: certs::Ca,
    /// The CA's own certificate (PEM file).
    pub cert: PathBuf,
}

impl Ca {
    /// A new self-signed CA, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let ca = certs::Ca::new(&format!("raftsql test {name}")).expect("making a CA");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, ca.cert_pem()).expect("writing the CA certificate");
        Ca { ca, cert: path }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses; the first DNS name is the
    /// user of a client certificate), written to `dir/<file>.pem` and `dir/<file>.key`.
    /// `expired`: it expired yesterday.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let issued = self.ca.issue(&names, if expired { -1 } else { 30 }).expect("issuing a certificate");
        let pair = Pair { cert: dir.join(format!("{file}.pem")), key: dir.join(format!("{file}.key")) };
        write_pair(&pair, &issued.cert_pem, &issued.key_pem);
        pair
    }
}

/// Writes a certificate and key so that a node polling them never reads a half-written file:
/// each is written beside and renamed into place (as Kubernetes swaps a Secret's files).
pub fn write_pair(pair: &Pair, cert_pem: &str, key_pem: &str) {
    for (path, text) in [(&pair.key, key_pem), (&pair.cert, cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("writing a PEM file");
        std::fs::rename(&tmp, path).expect("renaming a PEM file into place");
    }
}

/// The certificates of one test cluster.
pub struct Pki {
    pub dir: PathBuf,
    pub peer_ca: Ca,
    pub client_ca: Ca,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("creating the pki dir");
        Pki { dir: dir.to_path_buf(), peer_ca: Ca::new(dir, "peer-ca"), client_ca: Ca::new(dir, "client-ca") }
    }

    /// Node `id`'s peer certificate (`node-<id>.raftsql`).
    pub fn peer(&self, id: u64) -> Pair {
        let name = format!("node-{id}.{DOMAIN}");
        self.peer_ca.issue(&self.dir, &format!("node-{id}-peer"), &[&name, "localhost", "127.0.0.1"], false)
    }

    /// Node `id`'s client-port certificate (localhost, 127.0.0.1).
    pub fn server(&self, id: u64) -> Pair {
        self.client_ca.issue(&self.dir, &format!("node-{id}-client"), &["localhost", "127.0.0.1"], false)
    }

    /// A client certificate for `user`.
    pub fn user(&self, user: &str) -> Pair {
        self.client_ca.issue(&self.dir, &format!("user-{user}"), &[user], false)
    }

    /// The flags that give node `id` TLS on both ports (its certificates issued now).
    pub fn node_args(&self, id: u64) -> Vec<String> {
        let (peer, server) = (self.peer(id), self.server(id));
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls-cert".into(),
            p(&server.cert),
            "--tls-key".into(),
            p(&server.key),
            "--tls-ca".into(),
            p(&self.client_ca.cert),
            "--peer-tls-cert".into(),
            p(&peer.cert),
            "--peer-tls-key".into(),
            p(&peer.key),
            "--peer-tls-ca".into(),
            p(&self.peer_ca.cert),
        ]
    }

    /// What a client needs to trust the nodes (no client certificate).
    pub fn client_tls(&self) -> raftsql_client::Tls {
        raftsql_client::Tls {
            ca: Some(std::fs::read(&self.client_ca.cert).expect("reading the client CA")),
            ..Default::default()
        }
    }
}
