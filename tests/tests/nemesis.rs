//! The CI set of nemesis schedules: each schedule for 25 s of faults with a fixed seed against a
//! fresh proxied cluster of real servers; the history checkers and end-state checks decide.
//! Longer runs: `cargo run -p raftsql-tests --bin nemesis -- --schedule NAME --time SECS --seed N`.

use raftsql_tests::nemesis::{run, SCHEDULES};
use std::time::Duration;

const CI_SECS: u64 = 25;
const CI_SEED: u64 = 1;

async fn schedule(name: &str) {
    assert!(SCHEDULES.iter().any(|s| s.name == name), "{name} is not a schedule");
    let outcome = run::run(name, Duration::from_secs(CI_SECS), CI_SEED, false)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{outcome}");
    assert!(outcome.passed, "{outcome}");
}

macro_rules! schedules {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                schedule($name).await;
            }
        )*

        /// Every schedule has a CI test.
        #[test]
        fn every_schedule_runs_in_ci() {
            let tested = [$($name),*];
            for s in SCHEDULES {
                assert!(tested.contains(&s.name), "schedule {} has no CI test", s.name);
            }
        }
    };
}

schedules! {
    isolate_leader => "isolate-leader",
    partition_majority_minority => "partition-majority-minority",
    one_way_leader_deaf => "one-way-leader-deaf",
    majorities_ring => "majorities-ring",
    kill_random => "kill-random",
    kill_all => "kill-all",
    kill_majority => "kill-majority",
    pause_leader => "pause-leader",
    membership_under_partition => "membership-under-partition",
    lossy_node => "lossy-node",
    slow_follower => "slow-follower",
    lost_response => "lost-response",
    clock_skew => "clock-skew",
}
