//! The database goes away and comes back: the agent never waits, and nothing is lost.
//!
//! Needs `DUNETRACE_TEST_DSN` and `DUNETRACE_TEST_PGCTL`, a shell command prefix that stops or
//! starts that cluster when followed by `stop` or `start`, e.g.
//! `runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /path/data -l /path/log -w -m fast`.
//! Its own test binary, so stopping the cluster cannot disturb the other tests.

mod common;

use common::{admin, dsn, events, new_agent};
use dunetrace_client::{Dunetrace, LlmResponse, ToolResult};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pg_ctl(action: &str) {
    let prefix = std::env::var("DUNETRACE_TEST_PGCTL").expect(
        "DUNETRACE_TEST_PGCTL must be a command prefix that stops/starts the test cluster \
         (scripts/test.sh sets it)",
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix} {action}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run DUNETRACE_TEST_PGCTL");
    assert!(status.success(), "pg_ctl {action} failed: {status}");
}

/// Starts the cluster again even if the test fails half-way.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            pg_ctl("start");
        }
    }
}

fn client(key: &str) -> Dunetrace {
    Dunetrace::builder()
        .dsn(&dsn())
        .api_key(key)
        .linger(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(500))
        .flush_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reports a typical run; returns its id and how long the agent spent in the client.
fn a_run(dt: &Dunetrace, agent_id: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let run = dt.run(
        agent_id,
        "What's the weather in Oslo?",
        "gpt-4o",
        &["weather"],
    );
    for i in 0..5 {
        run.llm_called("gpt-4o", 100 + i);
        run.llm_responded(
            LlmResponse::new()
                .output("calling weather")
                .finish_reason("tool_calls"),
        );
        run.tool_called("weather", format!("{{\"city\": \"Oslo\", \"n\": {i}}}"));
        run.tool_responded(ToolResult::ok("weather").output("rain"));
    }
    run.final_answer();
    let id = run.run_id().to_string();
    run.finish();
    (id, t0.elapsed())
}

#[test]
#[ignore = "needs a cluster; scripts/test.sh runs it"]
fn events_wait_while_the_database_is_down_and_arrive_after_it_restarts() {
    let mut db = admin();
    let (agent_id, key) = new_agent(&mut db, "restart");
    drop(db);

    // A client that is connected when the database goes away...
    let connected = client(&key);
    let (warm_id, _) = a_run(&connected, &agent_id);
    assert!(connected.flush());
    assert!(connected.stats().connected);

    let guard = Restart;
    pg_ctl("stop");

    let (down_id, spent) = a_run(&connected, &agent_id);
    assert!(
        spent < Duration::from_millis(100),
        "22 events took {spent:?} with the database down"
    );
    // ...and one created while it is down.
    let t0 = Instant::now();
    let fresh = client(&key);
    let (fresh_id, spent_fresh) = a_run(&fresh, &agent_id);
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    assert!(spent_fresh < Duration::from_millis(100), "{spent_fresh:?}");

    // Nothing can be delivered: a bounded flush says so, and the events stay pending.
    assert!(!connected.flush_timeout(Duration::from_millis(1500)));
    let s = connected.stats();
    assert_eq!(s.pending, 22, "{s:?}");
    assert_eq!(s.sent, 22);
    assert_eq!(s.dropped_overflow + s.dropped_rejected, 0);
    assert!(!s.connected);
    assert!(s.last_error.is_some());
    assert_eq!(fresh.stats().pending, 22);

    pg_ctl("start");
    drop(guard);

    assert!(connected.flush(), "{:?}", connected.stats());
    assert!(fresh.flush(), "{:?}", fresh.stats());
    for dt in [&connected, &fresh] {
        let s = dt.stats();
        assert_eq!(s.pending, 0, "{s:?}");
        assert_eq!(
            s.dropped_overflow + s.dropped_rejected + s.dropped_shutdown,
            0,
            "{s:?}"
        );
        assert!(s.connected);
    }
    let mut db = admin();
    for id in [&warm_id, &down_id, &fresh_id] {
        let evs = events(&mut db, id);
        // Everything was sent after the stop (or flushed before it), so nothing can have
        // been stored twice: exactly the run's 22 events, in step order.
        let steps: Vec<i32> = evs.iter().map(|e| e.1).collect();
        let mut want = vec![0];
        for i in 0..5 {
            want.extend([2 * i + 1, 2 * i + 1, 2 * i + 2, 2 * i + 2]);
        }
        want.push(10);
        assert_eq!(steps, want, "run {id}");
        assert_eq!(evs[0].0, "run.started");
        assert_eq!(evs[21].0, "run.completed");
        assert_eq!(evs[21].3["exit_reason"], "final_answer");
    }
}
