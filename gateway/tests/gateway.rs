//! End-to-end tests of the gateway binary against a real cluster: the SDK's request shape,
//! every error mapping (and that a refused request stores nothing), policies, deploys,
//! health, metrics, logs and graceful shutdown.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn detail(v: &Value) -> &str {
    v["detail"].as_str().unwrap_or_default()
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn ingest_answers_202_after_commit_with_the_sdk_shape() {
    let mut db = db();
    let agent = unique("gw-ok");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let run = unique("run");
    let marker = "feedfacecafebeef0123456789abcdef";
    let events = [
        event(
            "run.started",
            &run,
            &agent,
            0,
            json!({"input_hash": H16, "model": "gpt-4o", "tools": ["search"]}),
        ),
        event(
            "tool.called",
            &run,
            &agent,
            1,
            json!({"tool_name": "search", "args_hash": marker}),
        ),
        event(
            "tool.responded",
            &run,
            &agent,
            1,
            json!({"tool_name": "search", "success": true, "output_length": 12, "latency_ms": 4}),
        ),
    ];
    let before = now();
    let (status, _, v) = post(
        &gw.url("/v1/ingest"),
        &batch(&key, &agent, &events),
        &[("X-Dunetrace-Agent", agent.as_str())],
    );
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 3);
    let batch_id = v["batch_id"].as_str().expect("batch_id").to_string();
    let queued_at = v["queued_at"].as_f64().expect("queued_at");
    assert!(queued_at >= before - 1.0 && queued_at <= now() + 1.0, "{v}");
    // Committed before the answer: visible at once, no waiting.
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM dunetrace.events WHERE batch_id::text = $1 AND run_id = $2",
            &[&batch_id, &run],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // The key may also come as a Bearer token (the body's api_key empty, as the SDK sends
    // it when no key is configured).
    let run2 = unique("run");
    let (status, _, v) = post(
        &gw.url("/v1/ingest"),
        &batch(
            "",
            &agent,
            &[event("run.started", &run2, &agent, 0, json!({}))],
        ),
        &[("Authorization", &format!("Bearer {key}"))],
    );
    assert_eq!(status, 202, "{v}");
    assert_eq!(stored_events(&mut db, &run2), 1);

    // Structured logs: one line per request, with the batch id but never a payload value
    // or the key.
    let logs = gw.logs();
    let line = logs
        .iter()
        .find(|l| l.contains(&batch_id))
        .expect("a log line for the batch");
    let l: Value = serde_json::from_str(line).unwrap();
    assert_eq!(l["route"], "/v1/ingest");
    assert_eq!(l["status"], 202);
    assert_eq!(l["events"], 3);
    assert_eq!(l["agent_id"], agent.as_str());
    for l in &logs {
        assert!(!l.contains(marker), "a payload value was logged: {l}");
        assert!(!l.contains(&key), "the API key was logged: {l}");
    }
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn bad_revoked_and_missing_keys_are_401_and_store_nothing() {
    let mut db = db();
    let agent = unique("gw-auth");
    let key = new_key(&mut db, &agent);
    let revoked = new_key(&mut db, &agent);
    db.execute("SELECT dunetrace.revoke_api_key($1)", &[&revoked])
        .unwrap();
    let gw = Gateway::start(&[]);
    let run = unique("run");
    let body = |k: &str| {
        batch(
            k,
            &agent,
            &[event("run.started", &run, &agent, 0, json!({}))],
        )
    };
    let unknown = format!("dt_{}", "x".repeat(43));
    let cases = [
        (body(&unknown), vec![], "invalid API key"),
        (body("not-a-key"), vec![], "invalid API key"),
        (body(""), vec![], "API key is required"),
        (body(&revoked), vec![], "revoked"),
        (
            body(""),
            vec![("Authorization".to_string(), format!("Bearer {revoked}"))],
            "revoked",
        ),
        (
            body(&key),
            vec![("Authorization".to_string(), format!("Bearer {unknown}"))],
            "differ",
        ),
    ];
    for (b, headers, want) in cases {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, _, v) = post(&gw.url("/v1/ingest"), &b, &h);
        assert_eq!(status, 401, "{v}");
        assert!(detail(&v).contains(want), "{want}: {v}");
    }
    assert_eq!(stored_events(&mut db, &run), 0);
    assert_eq!(
        gw.metric("dunetrace_gateway_events_rejected_total{reason=\"unauthorized\"}"),
        6.0
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn another_agents_events_are_403_and_store_nothing() {
    let mut db = db();
    let agent = unique("gw-own");
    let other = unique("gw-other");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let run = unique("run");
    let events = [
        event("run.started", &run, &agent, 0, json!({})),
        event("run.started", &run, &other, 0, json!({})),
    ];
    let (status, _, v) = post(&gw.url("/v1/ingest"), &batch(&key, &agent, &events), &[]);
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["sqlstate"], "42501");
    assert!(detail(&v).contains("event 1"), "{v}");
    assert_eq!(stored_events(&mut db, &run), 0);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn invalid_batches_are_422_with_the_extensions_message_and_store_nothing() {
    let mut db = db();
    let agent = unique("gw-422");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let run = unique("run");
    let good = event("run.started", &run, &agent, 0, json!({"input_hash": H16}));
    let ev = |t: &str, p: Value| event(t, &run, &agent, 1, p);

    // An SDK that sends raw text (e.g. a newer, unhashed release) is told why.
    let (status, _, v) = post(
        &gw.url("/v1/ingest"),
        &batch(
            &key,
            &agent,
            &[
                good.clone(),
                ev(
                    "run.started",
                    json!({"input_text": "What is the weather in Paris?"}),
                ),
            ],
        ),
        &[],
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["sqlstate"], "22023");
    let d = detail(&v);
    assert!(
        d.contains("nothing stored: event 1: payload.input_text: unknown key"),
        "{d}"
    );
    assert!(d.contains("this server accepts hashed events only"), "{d}");
    assert!(
        !d.contains("Paris"),
        "the refused value must not be echoed: {d}"
    );

    let cases: Vec<(String, &str, &str)> = vec![
        (
            batch(
                &key,
                &agent,
                &[
                    good.clone(),
                    ev(
                        "llm.responded",
                        json!({"output_hash": "Paris is the capital"}),
                    ),
                ],
            ),
            "22023",
            "event 1: payload.output_hash",
        ),
        (
            batch(
                &key,
                &agent,
                &[
                    good.clone(),
                    ev("tool.called", json!({"tool_name": "look up the weather"})),
                ],
            ),
            "22023",
            "event 1: payload.tool_name",
        ),
        (
            batch(
                &key,
                &agent,
                &[
                    good.clone(),
                    ev("llm.called", json!({"prompt_tokens": "12"})),
                ],
            ),
            "22P02",
            "event 1: payload.prompt_tokens",
        ),
        (
            json!({"api_key": key, "agent_id": agent, "events": "not events"}).to_string(),
            "22P02",
            "events",
        ),
        (
            json!({"api_key": key, "agent_id": agent, "events": []}).to_string(),
            "22023",
            "at least one event",
        ),
    ];
    for (body, sqlstate, want) in cases {
        let (status, _, v) = post(&gw.url("/v1/ingest"), &body, &[]);
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["sqlstate"], sqlstate, "{v}");
        assert!(detail(&v).contains(want), "{want}: {v}");
        assert!(!detail(&v).contains("Paris"), "{v}");
    }
    // Refused by the gateway before the database: not JSON, not an object, no events.
    for body in ["{\"api_key\": ", "[1, 2, 3]", "{\"api_key\": \"k\"}"] {
        let (status, _, v) = post(&gw.url("/v1/ingest"), body, &[]);
        assert_eq!(status, 422, "{body}: {v}");
        assert!(v["detail"].is_string(), "{v}");
    }
    assert_eq!(stored_events(&mut db, &run), 0);
    // Counted: the 2-event batches (4 of them); the others had no countable events.
    assert_eq!(
        gw.metric("dunetrace_gateway_events_rejected_total{reason=\"invalid\"}"),
        8.0
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn oversize_bodies_are_413_and_store_nothing() {
    let mut db = db();
    let agent = unique("gw-413");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&["--max-body-bytes", "2048"]);
    let run = unique("run");
    let events: Vec<Value> = (0..30)
        .map(|i| {
            event(
                "tool.called",
                &run,
                &agent,
                i,
                json!({"tool_name": "t", "args_hash": H16}),
            )
        })
        .collect();
    let body = batch(&key, &agent, &events);
    assert!(body.len() > 2048);
    let (status, _, v) = post(&gw.url("/v1/ingest"), &body, &[]);
    assert_eq!(status, 413, "{v}");
    assert!(detail(&v).contains("at most 2048 bytes"), "{v}");
    assert_eq!(stored_events(&mut db, &run), 0);
    // A batch under the limit still goes through.
    let (status, _, v) = post(
        &gw.url("/v1/ingest"),
        &batch(&key, &agent, &events[..3]),
        &[],
    );
    assert_eq!(status, 202, "{v}");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn database_unavailable_is_503_with_retry_after() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start_with_db(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=none"),
        &["--retry-after-secs", "3", "--pool-timeout-ms", "2000"],
    );
    let agent = unique("gw-503");
    let body = batch(
        "dt_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &agent,
        &[event("run.started", &unique("run"), &agent, 0, json!({}))],
    );
    let (status, headers, v) = post(&gw.url("/v1/ingest"), &body, &[]);
    assert_eq!(status, 503, "{v}");
    assert_eq!(headers.get("retry-after").unwrap(), "3");
    assert!(detail(&v).contains("retry later"), "{v}");
    let (status, headers, v) = get(&gw.url("/health"));
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["database"], "unavailable");
    assert!(headers.get("retry-after").is_some());
    let (status, _, v) = post(
        &gw.url("/v1/deploy"),
        &json!({"api_key": "dt_x", "agent_id": agent, "version": "v1", "meta": {}}).to_string(),
        &[],
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        gw.metric("dunetrace_gateway_events_rejected_total{reason=\"unavailable\"}"),
        1.0
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn the_sdks_other_calls_health_and_metrics() {
    let mut db = db();
    let agent = unique("gw-misc");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);

    let (status, _, v) = get(&gw.url(&format!("/v1/policies?agent_id={agent}&api_key={key}")));
    assert_eq!(status, 200);
    assert_eq!(v, json!({"policies": []}));
    // The query string holds the key: it must not reach the log.
    assert!(gw.logs().iter().all(|l| !l.contains(&key)));

    let has_record_deploy: bool = db
        .query_one(
            "SELECT to_regprocedure('dunetrace.record_deploy(text,text,text,jsonb)') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    let deploy = json!({"api_key": key, "agent_id": agent, "version": "v1.4.2",
                        "meta": {"commit": "abc1234", "env": "production"}})
    .to_string();
    let (status, _, v) = post(&gw.url("/v1/deploy"), &deploy, &[]);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["stored"], has_record_deploy, "{v}");
    if has_record_deploy {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM dunetrace.deploy_events WHERE agent_id = $1 AND version = 'v1.4.2'",
                &[&agent],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let (status, _, v) = post(
            &gw.url("/v1/deploy"),
            &json!({"api_key": "dt_nope_nope_nope", "agent_id": agent, "version": "v2"})
                .to_string(),
            &[],
        );
        assert_eq!(status, 401, "{v}");
    }

    let (status, _, v) = get(&gw.url("/health"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ok");
    assert!(v["extension"].is_string(), "{v}");

    let run = unique("run");
    let (status, _, _) = post(
        &gw.url("/v1/ingest"),
        &batch(
            &key,
            &agent,
            &[event("run.started", &run, &agent, 0, json!({}))],
        ),
        &[],
    );
    assert_eq!(status, 202);
    let (status, _, _) = post(&gw.url("/v1/ingest"), "{}", &[]);
    assert_eq!(status, 422);
    let (status, headers, body) = get(&gw.url("/metrics"));
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = body.as_str().unwrap();
    for family in [
        "dunetrace_gateway_http_requests_total counter",
        "dunetrace_gateway_http_request_duration_seconds histogram",
        "dunetrace_gateway_events_accepted_total counter",
        "dunetrace_gateway_events_rejected_total counter",
        "dunetrace_gateway_db_pool_connections gauge",
        "dunetrace_gateway_db_pool_max_connections gauge",
        "dunetrace_gateway_db_pool_waiting gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family}\n{text}"
        );
    }
    assert_eq!(gw.metric("dunetrace_gateway_events_accepted_total"), 1.0);
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"202\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"422\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("dunetrace_gateway_http_request_duration_seconds_count{route=\"/v1/ingest\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/policies\",status=\"200\"}"),
        1.0
    );
    assert_eq!(gw.metric("dunetrace_gateway_db_pool_max_connections"), 10.0);
    assert!(gw.metric("dunetrace_gateway_db_pool_connections{state=\"idle\"}") >= 1.0);
}

/// Payloads of the hashed SDK releases' integrations that the original allowlist lacked.
#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn sdk_integration_payloads_are_accepted() {
    let mut db = db();
    let agent = unique("gw-keys");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let run = unique("run");
    let ev = |t: &str, step: i64, p: Value| event(t, &run, &agent, step, p);
    let events = [
        ev(
            "run.started",
            0,
            json!({"input_hash": "", "model": "gpt-4o", "tools": []}),
        ),
        ev(
            "llm.called",
            1,
            json!({"model": "gpt-4o", "prompt_tokens": 10}),
        ),
        ev(
            "llm.responded",
            1,
            json!({"completion_tokens": 3, "reasoning_tokens": 64, "latency_ms": 9,
                   "finish_reason": "stop", "output_hash": H16, "output_length": 5}),
        ),
        ev(
            "llm.responded",
            1,
            json!({"finish_reason": "error", "output_hash": "", "output_length": 0,
                   "latency_ms": 0, "error_hash": H16}),
        ),
        ev(
            "retrieval.responded",
            2,
            json!({"result_count": 0, "top_score": null, "error_hash": H16}),
        ),
        ev(
            "policy.triggered",
            2,
            json!({"policy_name": "loop_fix", "action_type": "log", "trigger": "signal",
                   "value": ["TOOL_LOOP"]}),
        ),
        ev(
            "run.completed",
            2,
            json!({"exit_reason": "final_answer", "total_steps": 2, "latency_ms": 40,
                   "duration_ms": 40, "interrupted": false}),
        ),
        ev(
            "run.errored",
            2,
            json!({"error_type": "PolicyViolation", "error_hash": H16,
                   "exit_reason": "policy_violation", "policy_name": "cap_tool_calls",
                   "step_index": 2}),
        ),
    ];
    let (status, _, v) = post(&gw.url("/v1/ingest"), &batch(&key, &agent, &events), &[]);
    assert_eq!(status, 202, "{v}");
    assert_eq!(stored_events(&mut db, &run), events.len() as i64);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn sigterm_lets_in_flight_requests_finish() {
    let mut db = db();
    let agent = unique("gw-term");
    let key = new_key(&mut db, &agent);
    let mut gw = Gateway::start(&[]);
    let run = unique("run");
    let (status, _, _) = post(
        &gw.url("/v1/ingest"),
        &batch(
            &key,
            &agent,
            &[event("run.started", &run, &agent, 0, json!({}))],
        ),
        &[],
    );
    assert_eq!(status, 202);

    // Hold the run's tracking row so that the next batch for it waits inside ingest().
    let mut holder = common::db();
    let mut tx = holder.transaction().unwrap();
    tx.query(
        "SELECT 1 FROM dunetrace.runs WHERE run_id = $1 FOR UPDATE",
        &[&run],
    )
    .unwrap();
    let url = gw.url("/v1/ingest");
    let body = batch(
        &key,
        &agent,
        &[event(
            "tool.called",
            &run,
            &agent,
            1,
            json!({"tool_name": "t", "args_hash": H16}),
        )],
    );
    let in_flight = std::thread::spawn(move || post(&url, &body, &[]));
    wait_for(
        Duration::from_secs(20),
        "the batch to wait on the lock",
        || {
            let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dunetrace-gateway' \
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
            (n > 0).then_some(())
        },
    );

    gw.terminate();
    wait_for(Duration::from_secs(10), "the shutdown log line", || {
        gw.logs()
            .iter()
            .any(|l| l.contains("shutting down"))
            .then_some(())
    });
    assert!(
        !in_flight.is_finished(),
        "the request must still be waiting"
    );
    tx.rollback().unwrap();

    let (status, _, v) = in_flight.join().unwrap();
    assert_eq!(status, 202, "the in-flight request must complete: {v}");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(stored_events(&mut db, &run), 2);
    assert!(gw
        .logs()
        .iter()
        .any(|l| l.contains("all requests finished")));
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_run_past_the_event_cap_is_413_with_the_extensions_message() {
    let mut db = db();
    let agent = unique("gw-cap");
    let key = new_key(&mut db, &agent);
    // The test role is a superuser, so its sessions may lower the cap.
    let database_url = format!("{} options='-c dunetrace.max_events_per_run=3'", dsn());
    let gw = Gateway::start_with_db(&database_url, &[]);
    let run = unique("run");
    let events: Vec<Value> = (0..4)
        .map(|i| event("llm.called", &run, &agent, i + 1, json!({"model": "m"})))
        .collect();
    let (status, headers, v) = post(&gw.url("/v1/ingest"), &batch(&key, &agent, &events), &[]);
    assert_eq!(status, 413, "{v}");
    assert!(headers.get("retry-after").is_none(), "not worth retrying");
    assert_eq!(v["sqlstate"], "54000");
    assert!(detail(&v).contains("max_events_per_run"), "{v}");
    assert_eq!(stored_events(&mut db, &run), 0);
    assert_eq!(
        gw.metric("dunetrace_gateway_events_rejected_total{reason=\"too_large\"}"),
        4.0
    );
    // Within the cap, the same run is accepted.
    let (status, _, v) = post(
        &gw.url("/v1/ingest"),
        &batch(&key, &agent, &events[..3]),
        &[],
    );
    assert_eq!(status, 202, "{v}");
    assert_eq!(stored_events(&mut db, &run), 3);
}
