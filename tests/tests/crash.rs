//! Nothing is lost when the worker dies: killed with SIGKILL between claiming a delivery and
//! getting the answer (the postmaster restarts the whole cluster in crash recovery), or stopped
//! by a clean restart of the cluster while a request is in flight.

use dunetrace_e2e::*;
use std::time::{Duration, Instant};

const SECRET: &str = "crash-secret";

/// A receiver that records the first request and never answers it (the connection is held for
/// 30 s), then answers 200.
fn stalling_receiver() -> Receiver {
    Receiver::start(|r| {
        if r.seq == 0 {
            Reply::Hang(Duration::from_secs(30))
        } else {
            Reply::ok()
        }
    })
}

fn kill_9(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// After the first (unanswered) request: the same alert arrives again with the same
/// webhook-id, validly signed, and its delivery ends delivered on the second attempt.
fn assert_redelivered(hook: &Receiver, run: &Ingested, dest: i32, started: Instant) {
    let reqs = hook.wait_for_containing(&run.run_id, 2, Duration::from_secs(60));
    println!(
        "redelivered {:?} after the first attempt",
        reqs[1].at.duration_since(reqs[0].at)
    );
    assert_eq!(
        reqs[0].header("webhook-id"),
        reqs[1].header("webhook-id"),
        "the redelivery must carry the same webhook-id"
    );
    assert!(reqs[0].header("webhook-id").is_some());
    assert_eq!(reqs[0].body, reqs[1].body);
    assert_webhook_signed(&reqs[1], SECRET);

    let mut c = connect_within(Duration::from_secs(60));
    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(10));
    let d = wait_delivery(
        &mut c,
        signal_id,
        dest,
        Duration::from_secs(30),
        "the delivery to end delivered",
        |d| d.status == "delivered",
    );
    assert_eq!(d.attempts, 2, "{}", d.summary());
    assert_eq!(d.last_http_status, Some(200));
    assert_eq!(Some(d.webhook_id.as_str()), reqs[1].header("webhook-id"));
    let all = deliveries_for_run(&mut c, &run.run_id);
    assert_eq!(all.len(), 1, "exactly one delivery for the alert: {all:?}");
    let alerted: bool = c
        .query_one(
            "SELECT alerted FROM dunetrace.failure_signals WHERE id = $1",
            &[&signal_id],
        )
        .expect("query signal")
        .get(0);
    assert!(alerted);
    assert_eq!(
        hook.requests_containing(&run.run_id).len(),
        2,
        "no further copies"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn worker_killed_between_claim_and_send_redelivers_the_same_alert() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = stalling_receiver();
    let dest = add_destination(&mut c, "webhook", &hook.url("/crash"), Some(SECRET), None);
    let agent = Agent::new(&mut c, "e2e-kill9");
    worker_pid(&mut c).expect("the dunetrace worker runs");

    let run = agent.loop_run(&mut c);
    hook.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    // The worker has claimed the delivery (committed) and is waiting for the answer.
    let pid = worker_pid(&mut c).expect("the dunetrace worker runs");
    let started = Instant::now();
    kill_9(pid);
    drop(c);

    // The postmaster restarts every backend after a crash; wait for the new worker.
    let (c, new_pid) = reconnect_after_restart(Some(pid), Duration::from_secs(60));
    println!(
        "cluster back and worker {new_pid} running {:?} after kill -9 of {pid}",
        started.elapsed()
    );
    drop(c);
    assert_redelivered(&hook, &run, dest, started);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn clean_restart_during_a_send_loses_nothing() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = stalling_receiver();
    let dest = add_destination(&mut c, "webhook", &hook.url("/restart"), Some(SECRET), None);
    let agent = Agent::new(&mut c, "e2e-restart");
    let old = worker_pid(&mut c);

    let run = agent.loop_run(&mut c);
    hook.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    let started = Instant::now();
    drop(c);
    pg_ctl("restart");

    let (c, new_pid) = reconnect_after_restart(old, Duration::from_secs(60));
    println!(
        "cluster restarted, worker {new_pid} running {:?} later",
        started.elapsed()
    );
    drop(c);
    assert_redelivered(&hook, &run, dest, started);
}

/// Contract §3.9: a bounded number of attempts. A delivery whose send never completes because
/// the worker dies each time must stop after `dunetrace.http_max_attempts` (3 on the test
/// cluster) instead of being claimed, and crashing the cluster, again and again.
#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn attempts_stay_bounded_when_the_worker_dies_during_every_send() {
    const MAX_ATTEMPTS: usize = 3;
    let mut c = connect_ready();
    reset_destinations(&mut c);
    // Never answers; every request is held open.
    let hook = Receiver::start(|_| Reply::Hang(Duration::from_secs(30)));
    let dest = add_destination(&mut c, "webhook", &hook.url("/poison"), Some(SECRET), None);
    let agent = Agent::new(&mut c, "e2e-poison");
    let run = agent.loop_run(&mut c);
    for attempt in 1..=MAX_ATTEMPTS {
        hook.wait_for_containing(&run.run_id, attempt, Duration::from_secs(60));
        let p = worker_pid(&mut c).expect("the dunetrace worker runs");
        kill_9(p);
        drop(c);
        c = reconnect_after_restart(Some(p), Duration::from_secs(60)).0;
        println!("attempt {attempt}: killed worker {p} during the send");
    }
    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(10));
    // The visibility deadline is http_timeout + 5 s = 7 s: well within 20 s either the
    // delivery is given up or a further attempt arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let extra = hook.requests_containing(&run.run_id).len();
        assert!(
            extra <= MAX_ATTEMPTS,
            "attempt {extra} was sent although dunetrace.http_max_attempts = {MAX_ATTEMPTS}: {}",
            deliveries_for_signal(&mut c, signal_id)[0].summary()
        );
        let d = deliveries_for_signal(&mut c, signal_id)
            .into_iter()
            .find(|d| d.destination_id == dest)
            .expect("the delivery");
        assert!(d.attempts <= MAX_ATTEMPTS as i32, "{}", d.summary());
        if d.status == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery was neither given up nor retried: {}",
            d.summary()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
