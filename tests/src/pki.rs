//! Certificates made at test time (rcgen), written as PEM files for the nodes and clients.
//!
//! Two CAs, as a deployment would have them: the **peer CA** signs the nodes' peer
//! certificates (DNS name `node-<id>.raftsql`, plus `localhost` and 127.0.0.1), the **client
//! CA** signs the nodes' client-port certificates and the users' client certificates (first
//! DNS name = the user). Any number of further certificates — from another CA, expired,
//! naming another node — can be issued for the tests that must see them refused.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// The domain of node names (`--peer-tls-domain`'s default).
pub const DOMAIN: &str = "raftsql";

/// A certificate and key as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate (PEM file).
    pub cert: PathBuf,
}

impl Ca {
    /// A new self-signed CA, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().expect("generating a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("raftsql test {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).expect("writing the CA certificate");
        Ca { issuer: Issuer::new(params, key), cert: path }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses; the first DNS name is the
    /// user of a client certificate), written to `dir/<file>.pem` and `dir/<file>.key`.
    /// `expired`: valid only in the year 2000.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Pair {
        let key = KeyPair::generate().expect("generating a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signing a certificate");
        let pair = Pair { cert: dir.join(format!("{file}.pem")), key: dir.join(format!("{file}.key")) };
        write_pair(&pair, &cert.pem(), &key.serialize_pem());
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
