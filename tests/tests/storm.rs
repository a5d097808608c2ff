//! Alerts under a storm: a 429 holds one destination back for its `Retry-After`, a dead
//! destination never delays another, grouped destinations get one message per issue and a
//! follow-up per repeat interval, snoozed issues send nothing, and a worker restart in the
//! middle loses and duplicates nothing.

use dunetrace_e2e::*;
use postgres::Client;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn configure(c: &mut Client, dest: i32, params: &str) {
    c.execute(
        "SELECT dunetrace.configure_destination($1, $2::text::jsonb)",
        &[&dest, &params],
    )
    .expect("configure_destination");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_429_with_retry_after_holds_the_destination_back_until_then() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::start(|r| {
        if r.seq == 0 {
            Reply::WithHeaders(429, vec![("Retry-After".into(), "2".into())])
        } else {
            Reply::ok()
        }
    });
    let dest = add_destination(&mut c, "webhook", &hook.url("/limited"), None, None);
    let agent = Agent::new(&mut c, "e2e-429");
    let first = agent.loop_run(&mut c);
    let got = hook.wait_for_containing(&first.run_id, 1, Duration::from_secs(20));
    let refused_at = got[0].at;
    // More alerts for the same destination while it is held back.
    let second = agent.loop_run(&mut c);
    let s1 = wait_signal(&mut c, &first.run_id, "TOOL_LOOP", Duration::from_secs(10));
    let s2 = wait_signal(&mut c, &second.run_id, "TOOL_LOOP", Duration::from_secs(10));
    for s in [s1, s2] {
        wait_delivery(
            &mut c,
            s,
            dest,
            Duration::from_secs(20),
            "delivery after the hold",
            |d| d.status == "delivered",
        );
    }
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 3, "one refused, then both: {reqs:?}");
    for r in &reqs[1..] {
        let after = r.at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(1900),
            "request {} came {after:?} after the 429",
            r.seq
        );
    }
    reset_destinations(&mut c);
}

/// Sets `dunetrace.http_timeout` (and reloads) for one test; puts the cluster's value back
/// however the test ends.
struct HttpTimeout {
    before: String,
}

impl HttpTimeout {
    fn set(c: &mut Client, ms: u32) -> HttpTimeout {
        let before: String = c
            .query_one("SHOW dunetrace.http_timeout", &[])
            .expect("show")
            .get(0);
        c.batch_execute(&format!("ALTER SYSTEM SET dunetrace.http_timeout = {ms}"))
            .expect("set http_timeout");
        c.batch_execute("SELECT pg_reload_conf()").expect("reload");
        let want = format!("{}s", ms / 1000);
        wait_until(Duration::from_secs(10), "the reload", || {
            let v: String = connect()
                .query_one("SHOW dunetrace.http_timeout", &[])
                .expect("show")
                .get(0);
            (v == want).then_some(())
        });
        HttpTimeout { before }
    }
}

impl Drop for HttpTimeout {
    fn drop(&mut self) {
        let mut c = connect();
        let _ = c.batch_execute(&format!(
            "ALTER SYSTEM SET dunetrace.http_timeout = '{}'",
            self.before
        ));
        let _ = c.batch_execute("SELECT pg_reload_conf()");
    }
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_dead_destination_does_not_delay_another() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    // The dead destination's attempts cannot end (time out) while the test runs.
    let _timeout = HttpTimeout::set(&mut c, 30_000);
    // Holds every connection without answering.
    let dead = Receiver::start(|_| Reply::Hang(Duration::from_secs(60)));
    let alive = Receiver::ok();
    let dead_id = add_destination(&mut c, "webhook", &dead.url("/dead"), None, None);
    let alive_id = add_destination(&mut c, "webhook", &alive.url("/alive"), None, None);
    let agent = Agent::new(&mut c, "e2e-dead");
    let runs: Vec<Ingested> = (0..5).map(|_| agent.loop_run(&mut c)).collect();
    for r in &runs {
        let s = wait_signal(&mut c, &r.run_id, "TOOL_LOOP", Duration::from_secs(20));
        wait_delivery(
            &mut c,
            s,
            alive_id,
            Duration::from_secs(20),
            "the live destination's delivery",
            |d| d.status == "delivered",
        );
    }
    // Every live delivery is done while the dead destination's first attempts still hang.
    let finished: i64 = c
        .query_one(
            "SELECT count(*) FROM dunetrace.delivery_attempts a \
             JOIN dunetrace.deliveries d ON d.id = a.delivery_id WHERE d.destination_id = $1",
            &[&dead_id],
        )
        .expect("count attempts")
        .get(0);
    reset_destinations(&mut c);
    assert_eq!(
        finished, 0,
        "the dead destination's attempts had not ended yet"
    );
    assert!(
        !dead.requests().is_empty(),
        "the dead destination was tried"
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn grouped_slack_sends_one_message_per_issue_then_a_follow_up() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let slack = Receiver::ok();
    let dest = add_destination(&mut c, "slack", &slack.url("/slack"), None, Some("LOW"));
    configure(&mut c, dest, r#"{"repeat_interval": 3, "rate_limit": 0}"#);
    let agent = Agent::new(&mut c, "e2e-group");
    let started = Instant::now();
    let runs: Vec<Ingested> = (0..50).map(|_| agent.loop_run(&mut c)).collect();
    let ingested_in = started.elapsed();
    let last = runs.last().expect("runs");
    wait_signal(&mut c, &last.run_id, "TOOL_LOOP", Duration::from_secs(30));
    let first = slack.wait_for(Duration::from_secs(20), "the first message", |r| {
        !r.is_empty()
    });
    // The follow-up(s) after the repeat interval fold every other run.
    let mut folded = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 1;
    while folded < 49 {
        assert!(
            Instant::now() < deadline,
            "only {folded} of 49 runs were reported in follow-ups: {:?}",
            slack.requests()
        );
        let reqs = slack.wait_for(Duration::from_secs(20), "a follow-up", |r| r.len() > seen);
        let r = &reqs[seen];
        let text = r.json()["text"].as_str().unwrap_or_default().to_string();
        let n: i64 = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a follow-up: {text}"));
        assert!(
            text.contains(&format!("of {} hit TOOL_LOOP since", agent.id)),
            "{text}"
        );
        assert!(
            r.at.duration_since(reqs[seen - 1].at) >= Duration::from_millis(2500),
            "a follow-up came before the repeat interval"
        );
        folded += n;
        seen += 1;
    }
    println!("50 runs ingested in {ingested_in:?}: {seen} Slack messages");
    assert_eq!(folded, 49);
    assert!(
        first[0].json().to_string().contains(&agent.id),
        "the issue's first message"
    );
    reset_destinations(&mut c);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_snoozed_issue_sends_nothing_until_the_snooze_ends() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    add_destination(&mut c, "webhook", &hook.url("/snooze"), None, None);
    let agent = Agent::new(&mut c, "e2e-snooze");
    let first = agent.loop_run(&mut c);
    hook.wait_for_containing(&first.run_id, 1, Duration::from_secs(20));
    let issue: i64 = c
        .query_one(
            "SELECT id FROM dunetrace.issues WHERE agent_id = $1 AND failure_type = 'TOOL_LOOP'",
            &[&agent.id],
        )
        .expect("the issue")
        .get(0);
    let snoozed: bool = c
        .query_one(
            "SELECT dunetrace.snooze_issue($1, interval '3 seconds')",
            &[&issue],
        )
        .expect("snooze")
        .get(0);
    assert!(snoozed);
    let until = Instant::now() + Duration::from_secs(3);
    let quiet = agent.loop_run(&mut c);
    wait_signal(&mut c, &quiet.run_id, "TOOL_LOOP", Duration::from_secs(20));
    assert!(deliveries_for_run(&mut c, &quiet.run_id).is_empty());
    wait_until(Duration::from_secs(10), "the snooze to end", || {
        (Instant::now() >= until).then_some(())
    });
    let loud = agent.loop_run(&mut c);
    hook.wait_for_containing(&loud.run_id, 1, Duration::from_secs(20));
    assert!(hook.requests_containing(&quiet.run_id).is_empty());
    let bad = c
        .query_one(
            "SELECT dunetrace.snooze_issue($1, interval '-1 minute')",
            &[&issue],
        )
        .expect_err("a negative snooze is refused");
    assert_eq!(sqlstate(&bad).as_deref(), Some("22023"));
    reset_destinations(&mut c);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_restart_mid_storm_loses_and_duplicates_nothing() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    // Slow answers keep deliveries in flight when the worker is stopped.
    let hook = Receiver::start(|_| Reply::ok().after(Duration::from_millis(40)));
    let dest = add_destination(&mut c, "webhook", &hook.url("/storm"), Some("s3cret"), None);
    let agent = Agent::new(&mut c, "e2e-storm");
    let runs: Vec<Ingested> = (0..150).map(|_| agent.loop_run(&mut c)).collect();
    hook.wait_for(Duration::from_secs(30), "20 alerts", |r| r.len() >= 20);
    let pid = worker_pid(&mut c).expect("the worker");
    let sent = Instant::now();
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("SIGTERM");
    wait_exited(&mut c, pid, Duration::from_secs(10));
    let stopped_in = sent.elapsed();
    wait_new_worker(&mut c, Some(pid), Duration::from_secs(20));
    // Every run's alert arrives, each under one webhook-id.
    let mut ids: HashMap<i64, String> = HashMap::new();
    for r in &runs {
        let s = wait_signal(&mut c, &r.run_id, "TOOL_LOOP", Duration::from_secs(60));
        let d = wait_delivery(
            &mut c,
            s,
            dest,
            Duration::from_secs(60),
            "every delivery",
            |d| d.status == "delivered",
        );
        assert_eq!(deliveries_for_signal(&mut c, s).len(), 1);
        ids.insert(s, d.webhook_id);
    }
    let reqs = hook.requests();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in &reqs {
        *by_id
            .entry(r.header("webhook-id").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    reset_destinations(&mut c);
    println!(
        "worker stopped {stopped_in:?} after SIGTERM; {} requests for {} alerts",
        reqs.len(),
        ids.len()
    );
    assert!(
        stopped_in < Duration::from_secs(2),
        "SIGTERM took {stopped_in:?}"
    );
    for (signal, id) in &ids {
        assert!(
            by_id.contains_key(id),
            "signal {signal}'s alert never arrived"
        );
    }
    assert_eq!(
        by_id.len(),
        ids.len(),
        "every request carries the webhook-id of one of the alerts"
    );
}
