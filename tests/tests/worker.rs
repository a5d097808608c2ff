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

/// Puts `dunetrace.worker_role` back (and restarts) however the test ends.
struct WorkerRoleReset;

impl Drop for WorkerRoleReset {
    fn drop(&mut self) {
        let mut c = connect();
        let _ = c.batch_execute("ALTER SYSTEM RESET dunetrace.worker_role");
        pg_ctl("restart");
    }
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn the_worker_runs_without_superuser_as_dunetrace_worker_role() {
    let mut c = connect_ready();
    c.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dt_worker_login') THEN
                 CREATE ROLE dt_worker_login LOGIN IN ROLE dunetrace_worker;
             END IF;
         END $$",
    )
    .expect("a login role in dunetrace_worker");
    c.batch_execute("ALTER SYSTEM SET dunetrace.worker_role = 'dt_worker_login'")
        .expect("set dunetrace.worker_role");
    let _reset = WorkerRoleReset;
    let old = worker_pid(&mut c);
    drop(c);
    pg_ctl("restart");
    let (mut c, pid) = reconnect_after_restart(old, Duration::from_secs(30));
    let row = c
        .query_one(
            "SELECT a.usename::text, r.rolsuper FROM pg_stat_activity a \
             JOIN pg_roles r ON r.oid = a.usesysid WHERE a.pid = $1",
            &[&pid],
        )
        .expect("the worker's role");
    assert_eq!(row.get::<_, String>(0), "dt_worker_login");
    assert!(
        !row.get::<_, bool>(1),
        "the worker's role is not a superuser"
    );

    // Everything the worker does still works: processing, issues, alerts with a retry, the
    // digest check.
    reset_destinations(&mut c);
    let hook = Receiver::statuses(&[500, 200]);
    let dest = add_destination(
        &mut c,
        "webhook",
        &hook.url("/as-role"),
        Some("s3cret"),
        None,
    );
    let agent = Agent::new(&mut c, "e2e-worker-role");
    let run = agent.loop_run(&mut c);
    let signal = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(20));
    let d = wait_delivery(
        &mut c,
        signal,
        dest,
        Duration::from_secs(20),
        "the delivery after one retry",
        |d| d.status == "delivered",
    );
    assert_eq!(d.attempts, 2);
    let issues: i64 = c
        .query_one(
            "SELECT count(*) FROM dunetrace.issues WHERE agent_id = $1",
            &[&agent.id],
        )
        .expect("issues")
        .get(0);
    assert_eq!(issues, 1);
    reset_destinations(&mut c);
}
