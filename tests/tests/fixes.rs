//! `apply_fix` against a local stand-in for the Langfuse prompt API.

use dunetrace_e2e::*;
use postgres::Client;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PUBLIC_KEY: &str = "pk-lf-e2e";
const SECRET_KEY: &str = "sk-lf-e2e";
/// A prompt in a Langfuse folder: the slash must be percent-encoded in the GET path.
const PROMPT: &str = "support-bot/system";
const PROMPT_PATH: &str = "/api/public/prompts/support-bot%2Fsystem";
const OLD_TEXT: &str = "You are a support agent.\nAnswer briefly.  \n\n";
const FIX: &str = "Never call the same tool twice with identical arguments.";

/// The stand-in: GET the prompt (version 7, label production) and POST a new version (8),
/// which `?label=latest` then returns; 404 otherwise.
fn langfuse(delay: Duration) -> Receiver {
    let published: Arc<Mutex<Option<String>>> = Arc::default();
    Receiver::start(move |r| {
        let latest = format!("{PROMPT_PATH}?label=latest");
        let reply = match (r.method.as_str(), r.path.as_str()) {
            ("GET", PROMPT_PATH) => Reply::Json(
                200,
                json!({"name": PROMPT, "prompt": OLD_TEXT, "type": "text", "version": 7,
                       "labels": ["production"], "config": {}}),
            ),
            ("GET", p) if p == latest => match published.lock().unwrap().clone() {
                Some(text) => Reply::Json(
                    200,
                    json!({"name": PROMPT, "prompt": text, "type": "text", "version": 8,
                           "labels": ["latest"], "config": {}}),
                ),
                None => Reply::Json(
                    200,
                    json!({"name": PROMPT, "prompt": OLD_TEXT, "type": "text", "version": 7,
                           "labels": ["production", "latest"], "config": {}}),
                ),
            },
            ("POST", "/api/public/prompts") => {
                let text = r.json()["prompt"].as_str().unwrap_or_default().to_string();
                *published.lock().unwrap() = Some(text);
                Reply::Json(
                    201,
                    json!({"name": PROMPT, "prompt": "", "type": "text", "version": 8, "labels": []}),
                )
            }
            _ => Reply::Status(404),
        };
        reply.after(delay)
    })
}

fn configure(c: &mut Client, lf: &Receiver) {
    c.execute(
        "SELECT dunetrace.configure_langfuse($1, $2, $3)",
        &[&lf.base_url(), &PUBLIC_KEY, &SECRET_KEY],
    )
    .expect("configure_langfuse");
}

fn fix_count(c: &mut Client, signal_id: i64) -> i64 {
    c.query_one(
        "SELECT count(*) FROM dunetrace.fixes WHERE signal_id = $1",
        &[&signal_id],
    )
    .expect("count fixes")
    .get(0)
}

fn looping_signal(c: &mut Client, prefix: &str) -> (Agent, Ingested, i64) {
    let agent = Agent::new(c, prefix);
    let run = agent.loop_run(c);
    let id = wait_signal(c, &run.run_id, "TOOL_LOOP", Duration::from_secs(15));
    (agent, run, id)
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn apply_fix_publishes_a_new_langfuse_version_and_records_it() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let lf = langfuse(Duration::ZERO);
    configure(&mut c, &lf);
    let (_agent, run, signal_id) = looping_signal(&mut c, "e2e-fix");

    let out = query_json(
        &mut c,
        "dunetrace.apply_fix($1, $2, $3)",
        &[&signal_id, &PROMPT, &FIX],
    );
    let new_text = format!("{}\n\n{FIX}", OLD_TEXT.trim_end());

    // What the stand-in saw: GET the prompt, GET the newest version (not this text yet), then
    // POST the new version, all authenticated.
    let reqs = lf.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let auth = format!(
        "Basic {}",
        base64(format!("{PUBLIC_KEY}:{SECRET_KEY}").as_bytes())
    );
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("GET", PROMPT_PATH)
    );
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].path.as_str()),
        ("GET", format!("{PROMPT_PATH}?label=latest").as_str())
    );
    assert_eq!(
        (reqs[2].method.as_str(), reqs[2].path.as_str()),
        ("POST", "/api/public/prompts")
    );
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some(auth.as_str()));
    }
    assert_eq!(
        reqs[2].json(),
        json!({"name": PROMPT, "prompt": new_text, "type": "text"}),
        "the published prompt"
    );

    // The answer and the stored fix.
    assert_eq!(out["new_version"], 8);
    assert_eq!(out["signal_id"], signal_id);
    assert_eq!(out["old_text"], OLD_TEXT);
    assert_eq!(out["new_text"], new_text.as_str());
    let fix_id = out["fix_id"].as_i64().expect("fix_id");
    let row = c
        .query_one(
            "SELECT run_id, signal_id, fix_content, fix_type, applied_via, langfuse_prompt_name, \
                    langfuse_version FROM dunetrace.fixes WHERE id = $1",
            &[&fix_id],
        )
        .expect("the fix row");
    assert_eq!(row.get::<_, String>(0), run.run_id);
    assert_eq!(row.get::<_, i64>(1), signal_id);
    assert_eq!(row.get::<_, String>(2), FIX);
    assert_eq!(row.get::<_, String>(3), "prompt_addition");
    assert_eq!(row.get::<_, String>(4), "langfuse");
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some(PROMPT));
    assert_eq!(row.get::<_, Option<i32>>(6), Some(8));
    assert_eq!(fix_count(&mut c, signal_id), 1);

    let status = query_json(&mut c, "dunetrace.fix_status($1)", &[&signal_id]);
    assert_eq!(status["fix_applied"], true);
    assert_eq!(status["fix_id"], fix_id);
    assert_eq!(status["applied_via"], "langfuse");
    assert_eq!(status["verdict"], "insufficient_data");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn apply_fix_refuses_prompt_injection_signals() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let lf = langfuse(Duration::ZERO);
    configure(&mut c, &lf);
    let agent = Agent::new(&mut c, "e2e-fix-inject");
    let run = agent.injection_run(&mut c);
    let signal_id = wait_signal(
        &mut c,
        &run.run_id,
        "PROMPT_INJECTION_SIGNAL",
        Duration::from_secs(15),
    );
    let err = c
        .query_one(
            "SELECT dunetrace.apply_fix($1, $2, $3)::text",
            &[&signal_id, &PROMPT, &FIX],
        )
        .expect_err("apply_fix on a PROMPT_INJECTION_SIGNAL must fail");
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err:?}");
    assert!(lf.requests().is_empty(), "Langfuse was contacted");
    assert_eq!(fix_count(&mut c, signal_id), 0);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn apply_fix_fails_cleanly_when_langfuse_does_not_answer_in_time() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    // Answers after 3 s; dunetrace.http_timeout is 2 s.
    let lf = langfuse(Duration::from_secs(3));
    configure(&mut c, &lf);
    let (_agent, _run, signal_id) = looping_signal(&mut c, "e2e-fix-timeout");
    let worker = worker_pid(&mut c);

    let started = Instant::now();
    let err = c
        .query_one(
            "SELECT dunetrace.apply_fix($1, $2, $3)::text",
            &[&signal_id, &PROMPT, &FIX],
        )
        .expect_err("apply_fix must fail when Langfuse times out");
    let took = started.elapsed();
    println!(
        "apply_fix gave up after {took:?}: {}",
        err.as_db_error().map(|e| e.message()).unwrap_or_default()
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("38000"), "{err:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "apply_fix took {took:?}"
    );

    // A clean error: the same session goes on, nothing was recorded or published, and the
    // cluster did not restart (the worker is the same process).
    let one: i32 = c.query_one("SELECT 1", &[]).expect("session alive").get(0);
    assert_eq!(one, 1);
    assert_eq!(fix_count(&mut c, signal_id), 0);
    let reqs = lf.requests();
    assert_eq!(reqs.len(), 1, "only the prompt fetch was tried: {reqs:?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(worker_pid(&mut c), worker);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn apply_fix_reports_langfuse_errors_without_recording_anything() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    // The prompt exists but publishing fails; any other prompt is unknown.
    let lf = Receiver::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", PROMPT_PATH) => Reply::Json(
            200,
            json!({"name": PROMPT, "prompt": OLD_TEXT, "type": "text", "version": 7}),
        ),
        ("POST", _) => Reply::Status(500),
        _ => Reply::Status(404),
    });
    configure(&mut c, &lf);
    let (_agent, _run, signal_id) = looping_signal(&mut c, "e2e-fix-errors");

    let err = c
        .query_one(
            "SELECT dunetrace.apply_fix($1, $2, $3)::text",
            &[&signal_id, &PROMPT, &FIX],
        )
        .expect_err("a failed publish is an error");
    assert_eq!(sqlstate(&err).as_deref(), Some("38000"), "{err:?}");
    let err = c
        .query_one(
            "SELECT dunetrace.apply_fix($1, 'no-such-prompt', $2)::text",
            &[&signal_id, &FIX],
        )
        .expect_err("an unknown prompt is an error");
    assert_eq!(sqlstate(&err).as_deref(), Some("P0002"), "{err:?}");
    assert_eq!(fix_count(&mut c, signal_id), 0);
    let paths: Vec<(String, String)> = lf
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("GET".to_string(), PROMPT_PATH.to_string()),
            ("GET".to_string(), format!("{PROMPT_PATH}?label=latest")),
            ("POST".to_string(), "/api/public/prompts".to_string()),
            (
                "GET".to_string(),
                "/api/public/prompts/no-such-prompt".to_string()
            ),
        ]
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn apply_fix_retried_after_a_rollback_does_not_publish_twice() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let lf = langfuse(Duration::ZERO);
    configure(&mut c, &lf);
    let (_agent, _run, signal_id) = looping_signal(&mut c, "e2e-fix-retry");

    // Published, then the caller's transaction fails: the fix row is gone, the version stays.
    let mut tx = c.transaction().expect("begin");
    tx.query_one(
        "SELECT dunetrace.apply_fix($1, $2, $3)::text",
        &[&signal_id, &PROMPT, &FIX],
    )
    .expect("apply_fix");
    tx.rollback().expect("rollback");
    assert_eq!(fix_count(&mut c, signal_id), 0);

    let out = query_json(
        &mut c,
        "dunetrace.apply_fix($1, $2, $3)",
        &[&signal_id, &PROMPT, &FIX],
    );
    assert_eq!(out["published"], false, "{out}");
    assert_eq!(out["new_version"], 8);
    assert_eq!(fix_count(&mut c, signal_id), 1);
    let posts = lf.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1, "the prompt was published once");
}
