//! `raftsql-server make-certs`: a cluster's CAs, node and user certificates, a users file with
//! an admin token, and the Kubernetes Secrets that carry them (docs/security.md, deploy/).
//!
//! Two CAs, kept apart: the **peer CA** signs each node's peer certificate (`node-<id>.<domain>`
//! and the pod's DNS names), the **client CA** signs each node's client-port certificate (the
//! Service and pod names, `localhost`, any `--host`) and the users' client certificates (first
//! DNS name = the user). ECDSA P-256, made with rcgen: no openssl needed.
//!
//! Layout of `--out DIR`:
//! - `ca/peer-ca.{pem,key,cn}`, `ca/client-ca.{pem,key,cn}`: the CAs (`.cn`: common name). Their keys never go into a
//!   Secret: keep them offline. An existing `ca/` is never overwritten; `--renew` re-issues
//!   every other certificate from it (rotation before expiry).
//! - `tls/`: `peer-ca.pem`, `client-ca.pem`, `node-<id>-peer.{pem,key}`,
//!   `node-<id>-client.{pem,key}` for ids 1..=replicas (pod ordinal + 1): the `<name>-tls`
//!   Secret.
//! - `users/<user>.{pem,key}` for each `--user`.
//! - `users.toml` (user `admin` with a bearer token, a password and every permission, and each
//!   `--user` with `read` and `write`), `admin.token` and `admin.password`; `users.toml` is the
//!   `<name>-users` Secret.
//! - `secrets.yaml`: both Secrets, for `kubectl apply -f`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Flags of `raftsql-server make-certs`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raftsql-server make-certs",
    about = "Make a cluster's CAs, certificates, users file and Kubernetes Secrets"
)]
pub struct MakeCerts {
    /// Directory to write into (created; an existing CA in it is never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Nodes to make certificates for: ids 1..=N (StatefulSet ordinals 0..N-1).
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// The StatefulSet's name (pods are NAME-0, NAME-1, ...) and its client Service's.
    #[arg(long, default_value = "raftsql")]
    pub name: String,
    /// The headless Service that gives the pods their DNS names, POD.SERVICE (default:
    /// NAME-peers, as deploy/ names it).
    #[arg(long)]
    pub service: Option<String>,
    /// The Kubernetes namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The domain of node names in peer certificates (the nodes' --peer-tls-domain).
    #[arg(long, default_value = "raftsql")]
    pub domain: String,
    /// Days node and user certificates stay valid (CAs: ten years).
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Another name or IP address clients dial the nodes at (repeatable), e.g. a load balancer.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// A user to make a client certificate for (repeatable).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Re-issue every certificate from the CAs already in --out/ca (rotation).
    #[arg(long)]
    pub renew: bool,
}

/// A CA that issues certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    /// The CA's common name: certificates it issues name it as their issuer.
    common_name: String,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Ca {
    /// A new self-signed CA valid for ten years.
    pub fn new(common_name: &str) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(err("generating a CA key"))?;
        let params = Self::params(common_name)?;
        let cert = params.self_signed(&key).map_err(err("self-signing the CA"))?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
            common_name: common_name.into(),
        })
    }

    fn params(common_name: &str) -> Result<CertificateParams, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("CA parameters"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time_now();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        Ok(params)
    }

    /// A CA from its certificate, key (PEM) and common name, as [`make`] stored them. (An
    /// issued certificate names its issuer by the CA's distinguished name, which rcgen encodes
    /// the same way from the same common name; reading it back from the certificate would need
    /// an X.509 parser.)
    pub fn from_pem(cert_pem: &str, key_pem: &str, common_name: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(err("reading the CA key"))?;
        let issuer = Issuer::new(Self::params(common_name)?, key);
        let key_pem = issuer.key().serialize_pem();
        Ok(Ca { issuer, cert_pem: cert_pem.to_string(), key_pem, common_name: common_name.into() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `names` (DNS names or IP addresses; the first DNS name is the
    /// user of a client certificate), valid from yesterday for `days` days, or — `days` negative
    /// — one that expired that many days ago (for tests).
    pub fn issue(&self, names: &[String], days: i64) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err("generating a key"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(err("certificate names"))?;
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        if days >= 0 {
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(days);
        } else {
            params.not_before = now + time::Duration::days(days - 30);
            params.not_after = now + time::Duration::days(days);
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(err("signing a certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The headless Service's name.
fn service(a: &MakeCerts) -> String {
    a.service.clone().unwrap_or_else(|| format!("{}-peers", a.name))
}

/// The names in node `id`'s peer certificate.
pub fn peer_names(a: &MakeCerts, id: u64) -> Vec<String> {
    let pod = format!("{}-{}", a.name, id - 1);
    let service = service(a);
    vec![
        crate::tls::node_name(id, &a.domain),
        format!("{pod}.{service}.{}.svc.cluster.local", a.namespace),
        format!("{pod}.{service}"),
    ]
}

/// The names in node `id`'s client-port certificate.
pub fn client_names(a: &MakeCerts, id: u64) -> Vec<String> {
    let pod = format!("{}-{}", a.name, id - 1);
    let service = service(a);
    let mut names = vec![
        a.name.clone(),
        format!("{}.{}.svc", a.name, a.namespace),
        format!("{}.{}.svc.cluster.local", a.name, a.namespace),
        format!("{pod}.{service}.{}.svc.cluster.local", a.namespace),
        format!("{pod}.{service}"),
        "localhost".into(),
    ];
    names.extend(a.hosts.iter().cloned());
    names
}

/// Writes a private file (mode 0600 for keys and tokens).
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--{what} {s:?} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

/// Does what `raftsql-server make-certs` says; returns what it wrote, for the operator.
pub fn make(a: &MakeCerts) -> Result<String, String> {
    check_name("name", &a.name)?;
    check_name("namespace", &a.namespace)?;
    if a.replicas == 0 || a.replicas > 250 {
        return Err("--replicas must be 1 to 250".into());
    }
    for u in &a.users {
        crate::service::auth::check_user_name(u)?;
    }
    let ca_dir = a.out.join("ca");
    let (peer_ca, client_ca) = if a.renew {
        let read = |f: &str| {
            std::fs::read_to_string(ca_dir.join(f))
                .map_err(|e| format!("--renew needs the CA in {}: {f}: {e}", ca_dir.display()))
        };
        let ca = |f: &str| {
            Ca::from_pem(
                &read(&format!("{f}.pem"))?,
                &read(&format!("{f}.key"))?,
                read(&format!("{f}.cn"))?.trim(),
            )
        };
        (ca("peer-ca")?, ca("client-ca")?)
    } else {
        if ca_dir.exists() {
            return Err(format!(
                "{} exists: a CA is never overwritten. Re-issue certificates from it with --renew, or \
                 choose another --out",
                ca_dir.display()
            ));
        }
        mkdir(&ca_dir)?;
        let peer = Ca::new(&format!("{} peer CA", a.name))?;
        let client = Ca::new(&format!("{} client CA", a.name))?;
        for (ca, f) in [(&peer, "peer-ca"), (&client, "client-ca")] {
            write(&ca_dir.join(format!("{f}.pem")), &ca.cert_pem, false)?;
            write(&ca_dir.join(format!("{f}.key")), &ca.key_pem, true)?;
            write(&ca_dir.join(format!("{f}.cn")), &format!("{}\n", ca.common_name), false)?;
        }
        (peer, client)
    };
    let days = i64::from(a.days.max(1));
    let tls_dir = a.out.join("tls");
    mkdir(&tls_dir)?;
    let mut tls_files = vec![("peer-ca.pem".to_string(), peer_ca.cert_pem.clone())];
    tls_files.push(("client-ca.pem".to_string(), client_ca.cert_pem.clone()));
    for id in 1..=a.replicas {
        let peer = peer_ca.issue(&peer_names(a, id), days)?;
        let client = client_ca.issue(&client_names(a, id), days)?;
        tls_files.push((format!("node-{id}-peer.pem"), peer.cert_pem));
        tls_files.push((format!("node-{id}-peer.key"), peer.key_pem));
        tls_files.push((format!("node-{id}-client.pem"), client.cert_pem));
        tls_files.push((format!("node-{id}-client.key"), client.key_pem));
    }
    for (f, text) in &tls_files {
        write(&tls_dir.join(f), text, f.ends_with(".key"))?;
    }
    if !a.users.is_empty() {
        mkdir(&a.out.join("users"))?;
    }
    for u in &a.users {
        let c = client_ca.issue(std::slice::from_ref(u), days)?;
        write(&a.out.join("users").join(format!("{u}.pem")), &c.cert_pem, false)?;
        write(&a.out.join("users").join(format!("{u}.key")), &c.key_pem, true)?;
    }
    let (token, token_line) = crate::service::auth::new_token();
    // A password too, for a shell inside a pod (`kubectl exec -it ... --user admin` asks for
    // it): kubectl exec passes no environment variable, so the token cannot reach it there.
    let password = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
    };
    let hash = crate::service::auth::hash_password(&password)?;
    let mut users = String::from(
        "# raftsql users (docs/security.md). admin's bearer token is in admin.token, its password in\n\
         # admin.password; users listed without a password or token log in with their client\n\
         # certificate (users/NAME.pem).\n\
         [[user]]\nname = \"admin\"\n",
    );
    let _ = writeln!(users, "password = \"{hash}\"\ntokens = [\"{token_line}\"]\npermissions = [\"all\"]");
    for u in &a.users {
        let _ = writeln!(users, "\n[[user]]\nname = \"{u}\"\npermissions = [\"read\", \"write\"]");
    }
    write(&a.out.join("users.toml"), &users, true)?;
    write(&a.out.join("admin.token"), &format!("{token}\n"), true)?;
    write(&a.out.join("admin.password"), &format!("{password}\n"), true)?;

    let mut yaml = String::new();
    let secret = |yaml: &mut String, name: &str, files: &[(String, String)]| {
        use base64::Engine as _;
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {}\n  labels:\n    app.kubernetes.io/name: raftsql\ntype: Opaque\ndata:\n",
            a.namespace
        );
        for (f, text) in files {
            let _ = writeln!(yaml, "  {f}: {}", base64::engine::general_purpose::STANDARD.encode(text));
        }
    };
    secret(&mut yaml, &format!("{}-tls", a.name), &tls_files);
    yaml.push_str("---\n");
    secret(&mut yaml, &format!("{}-users", a.name), &[("users.toml".to_string(), users)]);
    write(&a.out.join("secrets.yaml"), &yaml, true)?;

    Ok(format!(
        "wrote to {out}:\n  ca/        the peer and client CAs (keep the .key files offline; --renew re-issues from them)\n  \
         tls/       node certificates for ids 1..={r} and both CA certificates (Secret {n}-tls)\n  \
         users.toml admin (token in admin.token, password in admin.password){u} (Secret {n}-users)\n  \
         secrets.yaml  both Secrets: kubectl apply -f {out}/secrets.yaml\n\
         Node N runs with --tls-cert tls/node-N-client.pem --tls-key tls/node-N-client.key --tls-ca tls/client-ca.pem\n  \
         --peer-tls-cert tls/node-N-peer.pem --peer-tls-key tls/node-N-peer.key --peer-tls-ca tls/peer-ca.pem\n  \
         --peer-tls-domain {d} --users-file users.toml\n\
         Clients: raftsql --ca {out}/tls/client-ca.pem (and RAFTSQL_BEARER_TOKEN=$(cat {out}/admin.token))",
        out = a.out.display(),
        r = a.replicas,
        n = a.name,
        d = a.domain,
        u = if a.users.is_empty() { String::new() } else { format!(", {}", a.users.join(", ")) },
    ))
}

#[cfg(test)]
mod names {
    use super::*;
    use clap::Parser;

    #[test]
    fn node_certificates_name_the_pods_by_the_headless_service() {
        let a = MakeCerts::parse_from(["make-certs", "--out", "x"]);
        assert!(peer_names(&a, 1).contains(&"raftsql-0.raftsql-peers".to_string()));
        let client = client_names(&a, 3);
        for name in
            ["raftsql", "raftsql-2.raftsql-peers", "raftsql-2.raftsql-peers.default.svc.cluster.local"]
        {
            assert!(client.contains(&name.to_string()), "{name} missing from {client:?}");
        }
        let a = MakeCerts::parse_from(["make-certs", "--out", "x", "--name", "db", "--service", "db-hl"]);
        assert!(client_names(&a, 1).contains(&"db-0.db-hl".to_string()));
    }
}
