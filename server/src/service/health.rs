//! Health for probes and load balancers (design.md §7, issue 19): the standard gRPC health
//! service (`grpc.health.v1.Health`) on the client port, and the rule the HTTP side port's
//! `/readyz` answers by ([`readiness`]).
//!
//! Services the gRPC health service reports:
//! - `""` and [`LIVENESS`]: SERVING whenever the process is up. Liveness never depends on
//!   quorum or on a leader: a probe that restarted nodes without a quorum would only make a
//!   bad outage worse.
//! - [`READINESS`]: SERVING only while this node is ready ([`ready`]): it is the leader or knows
//!   one, its Raft core runs, and its applied index is within `--ready-max-lag` entries of its
//!   committed index; a leader must also have heard from a quorum within two maximal election
//!   timeouts (openraft 0.9 keeps a leader cut off from its followers in its role, and it can
//!   then answer nothing); and its store has not failed (`raft::fail_stop`: such a node exits
//!   within a second). A node cut off from the leader or the leader cut off from the others,
//!   or a node far behind on apply, stops receiving client traffic from a load balancer, and a
//!   Kubernetes rollout waits for it.
//!
//! [`watch`] keeps the readiness status current from openraft's metrics watch
//! (`Raft::metrics`), re-checking at least every [`RECHECK`], and logs every change of it.
//! It runs on the Raft runtime, so a client runtime full of work does not delay it.
//!
//! The health service asks for no credentials even with `--users-file` (`service::auth` gates
//! only `Sql` and `Admin`, inside their handlers): probes hold none. It tells who asks no more
//! than whether the node is up and ready (docs/security.md).

use super::metrics::Metrics;
use crate::raft::Core;
use crate::typ::RaftMetrics;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

/// The gRPC health service name of liveness (as `""`): the process is up.
pub const LIVENESS: &str = "liveness";
/// The gRPC health service name of readiness ([`ready`]).
pub const READINESS: &str = "readiness";
/// How often [`watch`] re-checks readiness when openraft's metrics do not change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Whether a node with metrics `m` and committed index `committed` is ready to serve clients:
/// `Ok`, or why not in one line. `require_leader: false` skips the leader conditions (the HTTP
/// port's `/readyz?noleader`: "caught up with what it knows", for a node expected to be alone).
/// `quorum_ms`: the longest a leader may go without hearing from a quorum.
pub fn ready(
    m: &RaftMetrics,
    committed: u64,
    max_lag: u64,
    require_leader: bool,
    quorum_ms: u64,
) -> Result<(), String> {
    if let Err(fatal) = &m.running_state {
        return Err(format!("the Raft core has stopped: {fatal}"));
    }
    if m.state == ServerState::Shutdown {
        return Err("the node is shutting down".into());
    }
    if require_leader && m.current_leader.is_none() {
        return Err(format!("no leader is known in term {} (this node is a {:?})", m.current_term, m.state));
    }
    let quorum_age = m.millis_since_quorum_ack;
    if require_leader && m.state == ServerState::Leader && quorum_age.is_none_or(|ms| ms > quorum_ms) {
        let age = quorum_age.map_or("ever".to_string(), |ms| format!("{ms} ms"));
        return Err(format!(
            "this node leads term {} but has not heard from a quorum for {age} (more than {quorum_ms} ms): it \
             cannot commit or confirm a read",
            m.current_term
        ));
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    let lag = committed.saturating_sub(applied);
    if lag > max_lag {
        return Err(format!(
            "applied index {applied} trails the committed index {committed} by {lag} entries \
             (more than --ready-max-lag {max_lag})"
        ));
    }
    Ok(())
}

/// Not ready once the node's store failed (`raft::fail_stop`): it is on its way out.
fn stopping(core: &Core) -> Result<(), String> {
    match core.fail_stop().cause() {
        Some(cause) => Err(format!("the local storage failed ({cause}): the node is stopping")),
        None => Ok(()),
    }
}

/// [`ready`] for `core` as it is now; not ready either once its store failed.
pub fn readiness(core: &Core, max_lag: u64, require_leader: bool) -> Result<(), String> {
    stopping(core)?;
    let rx = core.metrics_watch();
    let m = rx.borrow();
    ready(&m, core.committed_index(), max_lag, require_leader, core.quorum_ack_limit_ms())
}

/// Marks `""` and [`LIVENESS`] SERVING, then keeps [`READINESS`] current for as long as Raft
/// runs (NOT_SERVING after it stops), and feeds every metrics change to `metrics` (elections).
pub async fn watch(core: Arc<Core>, reporter: HealthReporter, max_lag: u64, metrics: Arc<Metrics>) {
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    let mut rx = core.metrics_watch();
    let mut last: Option<ServingStatus> = None;
    loop {
        let verdict = {
            let m = rx.borrow_and_update();
            metrics.saw_raft(&m);
            stopping(&core)
                .and_then(|()| ready(&m, core.committed_index(), max_lag, true, core.quorum_ack_limit_ms()))
        };
        let status = if verdict.is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            match &verdict {
                Ok(()) => info!("ready: serving clients (gRPC health \"readiness\", /readyz)"),
                // Before the first leader is known a node is simply starting.
                Err(why) if last.is_none() => info!(reason = %why, "not ready yet"),
                Err(why) => warn!(reason = %why, "not ready"),
            }
            reporter.set_service_status(READINESS, status).await;
            last = Some(status);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = core.fail_stop().tripped(), if status == ServingStatus::Serving => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
    reporter.set_service_status(READINESS, ServingStatus::NotServing).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::LogId;

    fn metrics(state: ServerState, leader: Option<u64>, applied: u64) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_leader = leader;
        m.current_term = 3;
        m.last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), applied));
        m.millis_since_quorum_ack = (state == ServerState::Leader).then_some(40);
        m
    }

    #[test]
    fn ready_needs_a_leader_and_a_short_apply_lag() {
        assert_eq!(ready(&metrics(ServerState::Leader, Some(1), 10), 10, 5, true, 1000), Ok(()));
        assert_eq!(ready(&metrics(ServerState::Follower, Some(2), 10), 15, 5, true, 1000), Ok(()));
        assert_eq!(ready(&metrics(ServerState::Learner, Some(2), 10), 12, 5, true, 1000), Ok(()));
        let e = ready(&metrics(ServerState::Candidate, None, 10), 10, 5, true, 1000).unwrap_err();
        assert!(e.contains("no leader is known in term 3"), "{e}");
        assert_eq!(ready(&metrics(ServerState::Candidate, None, 10), 10, 5, false, 1000), Ok(()));
        let e = ready(&metrics(ServerState::Follower, Some(2), 10), 16, 5, true, 1000).unwrap_err();
        assert!(e.contains("trails the committed index 16 by 6 entries"), "{e}");
        assert!(ready(&metrics(ServerState::Shutdown, Some(2), 10), 10, 5, false, 1000).is_err());
        // A leader that has not heard from a quorum for too long is not ready (but is when the
        // leader conditions are dropped).
        let mut cut = metrics(ServerState::Leader, Some(1), 10);
        cut.millis_since_quorum_ack = Some(5_000);
        let e = ready(&cut, 10, 5, true, 1000).unwrap_err();
        assert!(e.contains("has not heard from a quorum for 5000 ms"), "{e}");
        assert_eq!(ready(&cut, 10, 5, false, 1000), Ok(()));
        cut.millis_since_quorum_ack = None;
        assert!(ready(&cut, 10, 5, true, 1000).unwrap_err().contains("for ever"));
    }
}
