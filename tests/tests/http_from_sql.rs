//! Outbound HTTP: redirects are never followed, and `dunetrace.dispatch()` called from SQL has
//! a total time budget and honours cancellation between requests.

use dunetrace_e2e::*;
use postgres::Client;
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn redirects_are_recorded_as_failures_and_never_followed() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let elsewhere = Receiver::ok();
    let target = elsewhere.url("/stolen");
    let hook = Receiver::start(move |_| Reply::Redirect(307, target.clone()));
    let dest = add_destination(&mut c, "webhook", &hook.url("/hook"), Some("s3cret"), None);
    let agent = Agent::new(&mut c, "e2e-redirect");
    let run = agent.loop_run(&mut c);
    let signal = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(20));
    let d = wait_delivery(
        &mut c,
        signal,
        dest,
        Duration::from_secs(30),
        "the delivery to fail",
        |d| d.status == "failed",
    );
    reset_destinations(&mut c);
    assert_eq!(d.last_http_status, Some(307), "{d:?}");
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|e| e.contains("redirects are not followed")),
        "{d:?}"
    );
    assert!(
        hook.requests().len() >= 2,
        "every attempt reached the destination"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect target got {:?}",
        elsewhere.requests()
    );
}

/// In one open transaction (so the worker cannot see them): a looping run processed, and its
/// alert queued for `n` webhook destinations pointing at `hook`.
fn queued_in_transaction<'c>(
    c: &'c mut Client,
    hook: &Receiver,
    n: usize,
) -> postgres::Transaction<'c> {
    reset_destinations(c);
    let agent = Agent::new(c, "e2e-dispatch");
    let events = agent.loop_events(&unique("dispatch-run")).to_string();
    let key: String = c
        .query_one("SELECT dunetrace.create_api_key($1)", &[&agent.id])
        .expect("a key")
        .get(0);
    let mut tx = c.transaction().expect("begin");
    for i in 0..n {
        tx.execute(
            "SELECT dunetrace.add_destination('webhook', $1)",
            &[&hook.url(&format!("/slow-{i}"))],
        )
        .expect("add a destination");
    }
    tx.execute(
        "SELECT dunetrace.ingest($1, $2::text::jsonb)",
        &[&key, &events],
    )
    .expect("ingest");
    tx.batch_execute("SELECT dunetrace.process_runs()")
        .expect("process");
    tx
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn dispatch_from_sql_stops_at_its_total_budget() {
    let mut c = connect_ready();
    // Every answer takes 800 ms; five deliveries would take 4 s.
    let hook = Receiver::start(|_| Reply::ok().after(Duration::from_millis(800)));
    let mut tx = queued_in_transaction(&mut c, &hook, 5);
    tx.batch_execute("SET LOCAL dunetrace.http_total_timeout = 1500")
        .expect("set the budget");
    let started = Instant::now();
    let attempted: i32 = tx
        .query_one("SELECT dunetrace.dispatch()", &[])
        .expect("dispatch")
        .get(0);
    let took = started.elapsed();
    let left: i64 = tx
        .query_one(
            "SELECT count(*) FROM dunetrace.deliveries WHERE status = 'pending' AND attempts = 0",
            &[],
        )
        .expect("count untouched deliveries")
        .get(0);
    tx.rollback().expect("rollback");
    reset_destinations(&mut c);
    println!("dispatch attempted {attempted} of 5 in {took:?}; {left} left queued");
    assert!((1..5).contains(&attempted), "attempted {attempted}");
    assert_eq!(left, 5 - i64::from(attempted));
    assert!(took < Duration::from_millis(2500), "dispatch took {took:?}");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn dispatch_from_sql_honours_statement_timeout_between_requests() {
    let mut c = connect_ready();
    let hook = Receiver::start(|_| Reply::ok().after(Duration::from_millis(800)));
    let mut tx = queued_in_transaction(&mut c, &hook, 5);
    tx.batch_execute("SET LOCAL statement_timeout = 1200")
        .expect("set statement_timeout");
    let started = Instant::now();
    let err = tx
        .query_one("SELECT dunetrace.dispatch()", &[])
        .expect_err("statement_timeout cancels dispatch");
    let took = started.elapsed();
    drop(tx);
    reset_destinations(&mut c);
    println!("dispatch cancelled after {took:?}: {err}");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(took < Duration::from_millis(2500), "cancel took {took:?}");
    assert!(hook.requests().len() < 5, "it went on after the cancel");
}
