//! The one question raftsql asks the Kubernetes API: how many replicas its StatefulSet wants
//! now. A pod asks it when it gets SIGTERM, to tell a scale-down (leave the cluster) from a
//! restart, a rolling update or an eviction (stay a member): `node::leave_if_scaled_down`.
//!
//! Credentials are the pod's ServiceAccount token, CA and namespace (`--kube-sa-dir`, by default
//! where Kubernetes mounts them); the API server is `KUBERNETES_SERVICE_HOST`/`_PORT`
//! (`--kube-api` overrides, for tests). RBAC grants only `get` on this one StatefulSet
//! (deploy/base/rbac.yaml). One plain HTTP/1.1 GET over TLS 1.3 or 1.2 through hyper, bounded
//! in time and in the size of the answer.

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where Kubernetes mounts a pod's ServiceAccount credentials.
pub const DEFAULT_SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest answer read (a StatefulSet object is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// A client of the Kubernetes API as this pod's ServiceAccount.
pub struct Api {
    /// `HOST:PORT` of the API server.
    addr: String,
    host: String,
    token: String,
    namespace: String,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("addr", &self.addr).field("namespace", &self.namespace).finish()
    }
}

impl Api {
    /// The API as the pod sees it: `api` (`https://HOST:PORT`) or `KUBERNETES_SERVICE_HOST` and
    /// `_PORT`, and the credentials in `sa_dir`. `Ok(None)` outside Kubernetes (no API address
    /// or no token file): the caller then cannot tell a scale-down and says so.
    pub fn from_env(api: Option<&str>, sa_dir: &Path) -> anyhow::Result<Option<Api>> {
        let addr = match api {
            Some(url) => url
                .strip_prefix("https://")
                .with_context(|| format!("--kube-api {url:?} must be https://HOST:PORT"))?
                .trim_end_matches('/')
                .to_string(),
            None => {
                match (std::env::var("KUBERNETES_SERVICE_HOST"), std::env::var("KUBERNETES_SERVICE_PORT")) {
                    (Ok(h), Ok(p)) if h.contains(':') => format!("[{h}]:{p}"),
                    (Ok(h), Ok(p)) => format!("{h}:{p}"),
                    _ => return Ok(None),
                }
            }
        };
        let token_path = sa_dir.join("token");
        if !token_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| -> anyhow::Result<String> {
            let bytes =
                crate::tls::read(&sa_dir.join(name), "ServiceAccount file").map_err(anyhow::Error::msg)?;
            Ok(String::from_utf8_lossy(&bytes).trim().to_string())
        };
        let (token, namespace) = (read("token")?, read("namespace")?);
        if token.is_empty() || namespace.is_empty() {
            bail!("the ServiceAccount token or namespace in {} is empty", sa_dir.display());
        }
        let ca_path = sa_dir.join("ca.crt");
        let ca = crate::tls::read(&ca_path, "ServiceAccount CA").map_err(anyhow::Error::msg)?;
        let roots = crate::tls::roots(&ca, &ca_path).map_err(anyhow::Error::msg)?;
        let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS for the Kubernetes API")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => bail!("the Kubernetes API address {addr:?} is not HOST:PORT"),
        };
        Ok(Some(Api { addr, host, token, namespace, tls: Arc::new(tls) }))
    }

    /// `spec.replicas` of StatefulSet `name` in this pod's namespace, asked within `timeout`.
    pub async fn statefulset_replicas(&self, name: &str, timeout: Duration) -> anyhow::Result<u64> {
        let path = format!("/apis/apps/v1/namespaces/{}/statefulsets/{name}", self.namespace);
        let body = tokio::time::timeout(timeout, self.get(&path)).await.with_context(|| {
            format!("the Kubernetes API at {} did not answer within {timeout:?}", self.addr)
        })??;
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("the Kubernetes API's answer is not JSON")?;
        v.pointer("/spec/replicas")
            .and_then(|r| r.as_u64())
            .with_context(|| format!("the StatefulSet {name} has no spec.replicas in the API's answer"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        use tokio_rustls::rustls::pki_types::ServerName;
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("cannot connect to the Kubernetes API at {}", self.addr))?;
        let name = ServerName::try_from(self.host.clone())
            .with_context(|| format!("{:?} is not a server name", self.host))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with the Kubernetes API at {}", self.addr))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .context("HTTP with the Kubernetes API")?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", &self.addr)
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .context("an API request")?;
        let resp = send.send_request(req).await.context("asking the Kubernetes API")?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the Kubernetes API's answer: {e}"))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            bail!(
                "the Kubernetes API answered {status} for {path}: {text} (403: the ServiceAccount needs `get` \
                 on this StatefulSet, deploy/base/rbac.yaml)"
            );
        }
        Ok(body.to_vec())
    }
}
