//! A stand-in for the Kubernetes API server, which does not run here: HTTPS on a loopback port
//! with a certificate from its own CA, answering `GET
//! /apis/apps/v1/namespaces/NS/statefulsets/NAME` with a StatefulSet whose `spec.replicas` the
//! test sets, to requests carrying the ServiceAccount token it wrote; 401 without it, 404 for
//! anything else, 403 when told to refuse (an RBAC rule missing). It writes the files a pod's
//! ServiceAccount mount holds (`token`, `ca.crt`, `namespace`) for `--kube-sa-dir`.

use crate::pki::Ca;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const NAMESPACE: &str = "raftsql-test";
const TOKEN: &str = "test-serviceaccount-token";

pub struct FakeKube {
    /// `https://127.0.0.1:PORT`, for `--kube-api`.
    pub url: String,
    /// The ServiceAccount files, for `--kube-sa-dir`.
    pub sa_dir: PathBuf,
    replicas: Arc<AtomicU64>,
    forbidden: Arc<AtomicBool>,
    /// Requests answered with the StatefulSet.
    pub answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    /// Serves StatefulSet `set` with `replicas`; its files go under `dir`.
    pub async fn start(dir: &Path, set: &str, replicas: u64) -> FakeKube {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let sa_dir = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).unwrap();
        let ca = Ca::new(&sa_dir, "kube-ca");
        std::fs::rename(&ca.cert, sa_dir.join("ca.crt")).unwrap();
        std::fs::write(sa_dir.join("token"), TOKEN).unwrap();
        std::fs::write(sa_dir.join("namespace"), NAMESPACE).unwrap();
        let pair = ca.issue(dir, "kube-api", &["127.0.0.1", "localhost"], false);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&pair.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pair.key).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let replicas = Arc::new(AtomicU64::new(replicas));
        let forbidden = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{set}");
        let (r, f, a) = (replicas.clone(), forbidden.clone(), answered.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, path, r, f, a) =
                    (acceptor.clone(), path.clone(), r.clone(), f.clone(), a.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let asked = head.split_whitespace().nth(1).unwrap_or_default();
                    let authorized = head.lines().any(|l| {
                        l.to_ascii_lowercase().starts_with("authorization:")
                            && l.ends_with(&format!("Bearer {TOKEN}"))
                    });
                    let (status, body) = if !authorized {
                        ("401 Unauthorized", r#"{"kind":"Status","code":401}"#.to_string())
                    } else if f.load(Ordering::SeqCst) {
                        ("403 Forbidden", r#"{"kind":"Status","reason":"Forbidden","code":403}"#.to_string())
                    } else if asked == path {
                        a.fetch_add(1, Ordering::SeqCst);
                        let n = r.load(Ordering::SeqCst);
                        (
                            "200 OK",
                            format!(
                                r#"{{"kind":"StatefulSet","spec":{{"replicas":{n}}},"status":{{"replicas":{n}}}}}"#
                            ),
                        )
                    } else {
                        ("404 Not Found", r#"{"kind":"Status","code":404}"#.to_string())
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        FakeKube { url, sa_dir, replicas, forbidden, answered, task }
    }

    /// What `kubectl scale --replicas N` would make the API answer.
    pub fn set_replicas(&self, n: u64) {
        self.replicas.store(n, Ordering::SeqCst);
    }

    /// Answer 403, as an API server does when the RBAC rule is missing.
    pub fn set_forbidden(&self, on: bool) {
        self.forbidden.store(on, Ordering::SeqCst);
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}
