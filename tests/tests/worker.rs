//! The background worker is visible in pg_stat_activity and comes back after being terminated.

use dunetrace_e2e::*;
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn worker_shows_in_pg_stat_activity_and_returns_after_terminate() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    add_destination(&mut c, "webhook", &hook.url("/worker"), None, None);

    let pid = worker_pid(&mut c).expect("the dunetrace worker is in pg_stat_activity");
    let row = c
        .query_one(
            "SELECT application_name, datname = current_database(), usename \
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .expect("the worker's row");
    assert_eq!(row.get::<_, String>(0), "dunetrace worker");
    assert!(
        row.get::<_, bool>(1),
        "the worker runs in the test database"
    );

    let terminated: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("pg_terminate_backend")
        .get(0);
    assert!(terminated);
    let started = Instant::now();
    let new_pid = wait_new_worker(&mut c, Some(pid), Duration::from_secs(15));
    let back = started.elapsed();
    println!("worker {pid} terminated; worker {new_pid} running {back:?} later");
    assert!(
        back < Duration::from_secs(12),
        "the worker took {back:?} to come back"
    );

    // And it still works.
    let agent = Agent::new(&mut c, "e2e-worker");
    let run = agent.loop_run(&mut c);
    let got = hook.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    println!(
        "latency commit → arrival after the restart: {:?}",
        got[0].at.duration_since(run.committed_at)
    );
    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(5));
    let ds = deliveries_for_signal(&mut c, signal_id);
    assert_eq!(ds.len(), 1);
    wait_until(
        Duration::from_secs(5),
        "the delivery to be recorded",
        || {
            deliveries_for_signal(&mut c, signal_id)
                .into_iter()
                .find(|d| d.status == "delivered")
        },
    );
}
