//! StatefulSet identity (issue 19; deploy/README.md): a node that takes who it is from its
//! hostname, so a Kubernetes StatefulSet (or Compose with the same names) runs every pod from
//! one configuration, with no per-pod flags and no shell in the image.
//!
//! With `--statefulset-replicas N` (`RAFTSQL_STATEFULSET_REPLICAS`):
//! - the hostname (`--hostname`, else the system's) is `SET-ORDINAL`, such as `raftsql-2`, and
//!   the node id is `ORDINAL + 1` (`--id`, if also given, must agree);
//! - every pod's address is `--statefulset-host-template` (default `{name}`; in Kubernetes
//!   `{name}.raftsql-peers`, the headless service) with the pod's name put in, and the port of
//!   `--listen` (clients) or `--peer-listen` (peers), which every pod shares; so the listen
//!   addresses may be wildcards. Addresses stay names: a pod back with a new IP is found again
//!   when a connection is re-established;
//! - `{id}` in the TLS file options becomes the node id, so one setting names every node's
//!   certificate (`/tls/node-{id}-peer.pem`).
//!
//! On a data dir with Raft state nothing more happens: the membership is in the log. On an
//! empty one ([`start`]):
//! - ordinals below N are the founders. A founder asks the other founders for their status:
//!   once every one answers and none belongs to a cluster, the lowest id initializes the
//!   cluster with all N (as `--bootstrap` does) and the others wait to be contacted; if any
//!   already belongs to a cluster, the cluster exists and this node lost its data, so it joins
//!   (below) instead of founding a second cluster;
//! - higher ordinals (scaled up) join through the founders, trying each in turn, as learners
//!   promoted once caught up (`--learner` keeps them learners).
//!
//! A node whose volume was lost comes back with a new incarnation under its old id, and the
//! cluster refuses it while its old self is still a member (its empty log must never count as
//! the log it had). It keeps asking, slowly, and says in its log what to do: remove the old
//! member (`.remove ID` through any node); its next attempt then joins as a fresh learner.
//!
//! `--statefulset-test-addrs` (tests only, hidden) maps pod names straight to addresses
//! (`raftsql-0=127.0.0.1:7000/127.0.0.1:7001,...`), so a loopback test runs pods with the
//! flags a StatefulSet gives them, each on its own ports.

use super::{parse_members, status_of, Config, Listed};
use crate::raft::Core;
use crate::typ::{Member, NodeId};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Largest ordinal accepted: a hostname with a larger number is more likely a mistake than a
/// StatefulSet of a million pods.
const MAX_ORDINAL: u64 = 100_000;

/// What StatefulSet identity decided for this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The pod's name, such as `raftsql-2`.
    pub name: String,
    /// The founders (ordinals below the initial replica count) by node id.
    pub founders: BTreeMap<NodeId, Listed>,
}

/// Splits a pod name `SET-ORDINAL` into its set name and ordinal.
pub fn parse_hostname(hostname: &str) -> anyhow::Result<(String, u64)> {
    let bad = || {
        anyhow::anyhow!(
            "StatefulSet identity (--statefulset-replicas) takes the node id from a hostname \
             NAME-ORDINAL such as raftsql-0, but this host is called {hostname:?}. Run it as a \
             StatefulSet pod, set --hostname (RAFTSQL_HOSTNAME), or give --id with --bootstrap or \
             --join instead"
        )
    };
    // A pod's hostname is its name; a FQDN's first label is.
    let name = hostname.split('.').next().unwrap_or_default();
    let (set, ordinal) = name.rsplit_once('-').ok_or_else(bad)?;
    if set.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ordinal: u64 = ordinal.parse().map_err(|_| bad())?;
    if ordinal > MAX_ORDINAL {
        bail!("the hostname {hostname:?} has ordinal {ordinal}, above the {MAX_ORDINAL} raftsql accepts");
    }
    Ok((set.to_string(), ordinal))
}

/// The system's hostname.
fn system_hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        bail!("cannot read this host's name: {}", std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).context("this host's name is not UTF-8")
}

/// The port of a `HOST:PORT` listen address.
fn port_of(listen: &str, flag: &str) -> anyhow::Result<u16> {
    let (_, port) = listen.rsplit_once(':').with_context(|| format!("{flag} {listen:?} is not HOST:PORT"))?;
    port.parse().with_context(|| format!("{flag} {listen:?} has no valid port"))
}

/// In StatefulSet mode, fills in `cfg`'s id, advertised addresses and TLS file names from the
/// hostname and returns the plan; otherwise returns `cfg` as it is and `None`.
pub fn apply(mut cfg: Config) -> anyhow::Result<(Config, Option<Plan>)> {
    let Some(replicas) = cfg.statefulset_replicas else {
        return Ok((cfg, None));
    };
    if replicas == 0 {
        bail!("--statefulset-replicas must be at least 1 (the StatefulSet's initial replica count)");
    }
    if cfg.bootstrap.is_some() || cfg.join.is_some() {
        bail!(
            "--statefulset-replicas decides by itself whether this node founds the cluster or \
             joins it: drop --bootstrap and --join"
        );
    }
    if cfg.advertise.is_some() || cfg.peer_advertise.is_some() {
        bail!(
            "--statefulset-replicas derives the advertised addresses from \
             --statefulset-host-template: drop --advertise and --peer-advertise"
        );
    }
    let hostname = match &cfg.hostname {
        Some(h) => h.clone(),
        None => system_hostname()?,
    };
    let (set, ordinal) = parse_hostname(&hostname)?;
    let id = ordinal + 1;
    if let Some(given) = cfg.id {
        if given != id {
            bail!("--id {given} contradicts the hostname {hostname:?}, which makes this node {id} (ordinal + 1)");
        }
    }
    let name = |ordinal: u64| format!("{set}-{ordinal}");
    let address_of: Box<dyn Fn(u64) -> anyhow::Result<Listed>> = match &cfg.statefulset_test_addrs {
        Some(map) => {
            let map = parse_test_addrs(map)?;
            Box::new(move |ordinal| {
                let n = name(ordinal);
                map.get(&n).cloned().with_context(|| format!("--statefulset-test-addrs does not list {n}"))
            })
        }
        None => {
            let template = cfg.statefulset_host_template.clone();
            if !template.contains("{name}") && !template.contains("{ordinal}") {
                bail!(
                    "--statefulset-host-template {template:?} names no pod: it must contain {{name}} \
                     (or {{ordinal}}), as in {{name}}.raftsql-peers"
                );
            }
            if template.contains(':') || template.contains('/') {
                bail!("--statefulset-host-template {template:?} must be a host name only: the ports come from --listen and --peer-listen");
            }
            let client_port = port_of(&cfg.listen, "--listen")?;
            let peer_port = match &cfg.peer_listen {
                Some(l) => Some(port_of(l, "--peer-listen")?),
                None => None,
            };
            Box::new(move |ordinal| {
                let host =
                    template.replace("{name}", &name(ordinal)).replace("{ordinal}", &ordinal.to_string());
                let addr = format!("{host}:{client_port}");
                let peer_addr = peer_port.map(|p| format!("{host}:{p}")).unwrap_or_else(|| addr.clone());
                Ok(Listed { addr, peer_addr })
            })
        }
    };
    let me = address_of(ordinal)?;
    let mut founders = BTreeMap::new();
    for o in 0..replicas {
        founders.insert(o + 1, address_of(o)?);
    }
    cfg.id = Some(id);
    cfg.advertise = Some(me.addr.clone());
    if cfg.peer_listen.is_some() {
        cfg.peer_advertise = Some(me.peer_addr.clone());
    }
    let with_id = |p: &mut Option<PathBuf>| {
        if let Some(path) = p {
            *path = PathBuf::from(path.to_string_lossy().replace("{id}", &id.to_string()));
        }
    };
    with_id(&mut cfg.tls_cert);
    with_id(&mut cfg.tls_key);
    with_id(&mut cfg.peer_tls_cert);
    with_id(&mut cfg.peer_tls_key);
    Ok((cfg, Some(Plan { name: name(ordinal), founders })))
}

/// Parses `--statefulset-test-addrs`: `NAME=HOST:PORT[/PEER_HOST:PORT],...`.
fn parse_test_addrs(s: &str) -> anyhow::Result<BTreeMap<String, Listed>> {
    let mut map = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addrs) = part.split_once('=').with_context(|| {
            format!("bad --statefulset-test-addrs entry {part:?}: expected NAME=HOST:PORT[/PEER_HOST:PORT]")
        })?;
        // parse_members checks the addresses; a placeholder id stands in for the name.
        let listed = parse_members(&format!("1={addrs}"))
            .with_context(|| format!("bad --statefulset-test-addrs entry {part:?}"))?
            .remove(&1)
            .expect("one member parsed");
        map.insert(name.trim().to_string(), listed);
    }
    Ok(map)
}

/// How often a founder asks the others again while some do not answer yet.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// On a node with no Raft state: found the cluster with the other founders, or join it
/// (module doc).
pub(super) async fn start(core: Arc<Core>, plan: Plan, as_learner: bool) {
    let id = core.id();
    if !plan.founders.contains_key(&id) {
        let seeds = plan.founders.values().map(|l| l.peer_addr.clone()).collect();
        return super::join(core, seeds, as_learner, true).await;
    }
    let lowest = *plan.founders.keys().next().expect("replicas >= 1");
    let mut logged = false;
    loop {
        if core.metrics().membership_config.membership().voter_ids().next().is_some() {
            // Contacted by the founder that initialized the cluster (or a leader since).
            return;
        }
        let mut missing = Vec::new();
        let mut existing = None;
        let mut nodes = BTreeMap::from([(
            id,
            Member::with_peer(core.addr().to_string(), core.peer_addr().to_string(), core.sm().incarnation()),
        )]);
        for (&m, listed) in plan.founders.iter().filter(|(&m, _)| m != id) {
            match status_of(&core, &listed.peer_addr).await {
                None => missing.push(m),
                Some(s) if s.node_id != m => {
                    warn!(
                        node = m,
                        addr = %listed.peer_addr,
                        answered = s.node_id,
                        "node {} answers at the address of node {m}: a pod of another StatefulSet, or \
                         names that resolve wrongly; waiting",
                        s.node_id
                    );
                    missing.push(m);
                }
                Some(s) if !s.members.is_empty() || !s.cluster_id.is_empty() => {
                    existing = Some(listed.peer_addr.clone());
                }
                Some(s) => {
                    nodes.insert(
                        m,
                        Member::with_peer(listed.addr.clone(), listed.peer_addr.clone(), s.incarnation),
                    );
                }
            }
        }
        if let Some(seed) = existing {
            info!(%seed, "the cluster exists already (this node's data dir is new): joining it");
            let mut seeds: Vec<String> =
                plan.founders.iter().filter(|(&m, _)| m != id).map(|(_, l)| l.peer_addr.clone()).collect();
            seeds.sort_by_key(|s| *s != seed);
            return super::join(core, seeds, as_learner, true).await;
        }
        if missing.is_empty() {
            if id != lowest {
                info!(
                    initializer = lowest,
                    "every founder answered; waiting for node {lowest} to initialize the cluster"
                );
            } else {
                match core.initialize(nodes).await {
                    Ok(()) => {
                        info!(members = ?plan.founders.keys().collect::<Vec<_>>(), "cluster initialized")
                    }
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::InitializeError::NotAllowed(_),
                    )) => info!("cluster was already initialized"),
                    Err(e) => error!(error = %e, "initializing the cluster failed; retrying"),
                }
            }
        } else if !logged {
            info!(?missing, "waiting for every founding pod to answer");
            logged = true;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["raftsql-server", "--data-dir", "/tmp/x", "--listen", "0.0.0.0:7000"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("valid flags")
    }

    #[test]
    fn hostnames_give_ordinals_and_bad_ones_are_refused() {
        assert_eq!(parse_hostname("raftsql-0").unwrap(), ("raftsql".into(), 0));
        assert_eq!(parse_hostname("my-db-12").unwrap(), ("my-db".into(), 12));
        assert_eq!(parse_hostname("raftsql-2.raftsql-peers.ns.svc").unwrap(), ("raftsql".into(), 2));
        for bad in
            ["raftsql", "raftsql-", "-1", "raftsql-x", "raftsql-1a", "", "raftsql-999999999999999999999"]
        {
            assert!(parse_hostname(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_pod_takes_its_id_and_addresses_from_its_name() {
        let cfg = config(&[
            "--statefulset-replicas",
            "3",
            "--hostname",
            "raftsql-2",
            "--peer-listen",
            "0.0.0.0:7001",
            "--statefulset-host-template",
            "{name}.raftsql-peers",
            "--peer-tls-cert",
            "/tls/node-{id}-peer.pem",
            "--peer-tls-key",
            "/tls/node-{id}-peer-key.pem",
            "--peer-tls-ca",
            "/tls/peer-ca.pem",
        ]);
        let (cfg, plan) = apply(cfg).unwrap();
        let plan = plan.unwrap();
        assert_eq!(cfg.id, Some(3));
        assert_eq!(cfg.advertise.as_deref(), Some("raftsql-2.raftsql-peers:7000"));
        assert_eq!(cfg.peer_advertise.as_deref(), Some("raftsql-2.raftsql-peers:7001"));
        assert_eq!(cfg.peer_tls_cert, Some(PathBuf::from("/tls/node-3-peer.pem")));
        assert_eq!(plan.name, "raftsql-2");
        assert_eq!(plan.founders.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(plan.founders[&1].peer_addr, "raftsql-0.raftsql-peers:7001");
        // A scaled-up pod is not a founder.
        let (cfg, plan) = apply(config(&["--statefulset-replicas", "3", "--hostname", "raftsql-3"])).unwrap();
        assert_eq!(cfg.id, Some(4));
        assert!(!plan.unwrap().founders.contains_key(&4));
    }

    #[test]
    fn contradictions_are_refused_with_the_reason() {
        let refused = |args: &[&str], says: &str| {
            let e = apply(config(args)).expect_err("must be refused").to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(&["--statefulset-replicas", "3", "--hostname", "raftsql-1", "--id", "5"], "contradicts");
        refused(&["--statefulset-replicas", "0", "--hostname", "raftsql-1"], "at least 1");
        refused(&["--statefulset-replicas", "3", "--hostname", "db"], "NAME-ORDINAL");
        refused(
            &["--statefulset-replicas", "3", "--hostname", "raftsql-1", "--join", "h:1"],
            "drop --bootstrap and --join",
        );
        refused(
            &["--statefulset-replicas", "3", "--hostname", "raftsql-1", "--statefulset-host-template", "db"],
            "names no pod",
        );
        refused(
            &[
                "--statefulset-replicas",
                "2",
                "--hostname",
                "raftsql-1",
                "--statefulset-test-addrs",
                "raftsql-0=h:1",
            ],
            "does not list raftsql-1",
        );
    }
}
