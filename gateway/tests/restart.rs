//! A database restart under a running gateway: pooled connections die, the next batch still
//! succeeds (a connection found broken before COMMIT is replaced), and while the database is
//! down the answer is 503 with Retry-After. Its own test binary, because it restarts the
//! shared test cluster.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn pg_ctl(action: &str) {
    let prefix = std::env::var("DUNETRACE_TEST_PGCTL").expect(
        "DUNETRACE_TEST_PGCTL is not set; run `eval \"$(bash scripts/test-cluster.sh)\"` first",
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix} {action}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn database_restart_and_outage() {
    let agent = unique("gw-restart");
    let key = new_key(&mut db(), &agent);
    let gw = Gateway::start(&["--pool-size", "2", "--pool-timeout-ms", "2000"]);
    let send = |step: i64| {
        let run = unique("run");
        let body = batch(
            &key,
            &agent,
            &[event("run.started", &run, &agent, step, json!({}))],
        );
        (run, post(&gw.url("/v1/ingest"), &body, &[]))
    };
    let (_, (status, _, v)) = send(0);
    assert_eq!(status, 202, "{v}");

    // Restart: the pooled connection is dead; the next request must not fail because of it.
    pg_ctl("restart");
    let (run, (status, _, v)) = send(0);
    assert_eq!(status, 202, "after a restart: {v}");
    assert_eq!(stored_events(&mut db(), &run), 1);

    // Down: 503 with Retry-After, and /health says so.
    pg_ctl("stop");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (_, (status, headers, v)) = send(0);
        assert_eq!(status, 503, "{v}");
        assert!(headers.get("retry-after").is_some());
        let (status, _, _) = get(&gw.url("/health"));
        assert_eq!(status, 503);
    }));
    pg_ctl("start");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // Back: answered again without restarting the gateway.
    let (run, (status, _, v)) = wait_for(Duration::from_secs(30), "ingest to work again", || {
        let r = send(0);
        (r.1 .0 == 202).then_some(r)
    });
    assert_eq!(status, 202, "{v}");
    assert_eq!(stored_events(&mut db(), &run), 1);
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"500\"}"),
        0.0
    );
}
