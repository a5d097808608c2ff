//! The real original SDK from PyPI (`dunetrace==0.3.21`, installed into a throwaway virtualenv)
//! pointed at the gateway through its environment variables only.
//!
//! Needs `python3` (3.11+; `DUNETRACE_TEST_PYTHON` overrides) with the venv module, and
//! access to PyPI.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SDK: &str = "dunetrace==0.3.21";

/// A virtualenv with the SDK in a temporary directory, removed when dropped.
struct Venv {
    dir: PathBuf,
}

impl Venv {
    fn create() -> Venv {
        let dir = std::env::temp_dir().join(unique("dunetrace-gateway-sdk"));
        std::fs::create_dir_all(&dir).unwrap();
        let python = std::env::var("DUNETRACE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let venv = Venv { dir };
        venv.run(
            Command::new(python)
                .args(["-m", "venv"])
                .arg(venv.dir.join("venv")),
        );
        venv.run(
            Command::new(venv.bin("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", SDK])
                .env("PIP_NO_INPUT", "1"),
        );
        venv
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("venv").join("bin").join(name)
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs one of `tests/sdk/*.py` against the gateway; its last stdout line as JSON.
    fn script(&self, name: &str, gw: &Gateway, key: &str, agent: &str) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sdk")
            .join(name);
        let stdout = self.run(
            Command::new(self.bin("python"))
                .arg(script)
                .env("DUNETRACE_ENDPOINT", format!("http://{}", gw.addr))
                .env("DUNETRACE_API_KEY", key)
                .env("AGENT_ID", agent),
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{name} printed {stdout:?}: {e}"))
    }
}

impl Drop for Venv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until every run is processed (the worker does it when the terminal event commits;
/// `process_runs()` is called too, so a slow worker does not fail the test).
fn wait_processed(db: &mut postgres::Client, runs: &[&str]) {
    let runs: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
    wait_for(Duration::from_secs(60), "the runs to be processed", || {
        db.execute("SELECT dunetrace.process_runs()", &[]).unwrap();
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM dunetrace.processed_runs WHERE run_id = ANY($1)",
                &[&runs],
            )
            .unwrap()
            .get(0);
        (n as usize == runs.len()).then_some(())
    });
}

fn signals(db: &mut postgres::Client, run: &str) -> Vec<String> {
    db.query(
        "SELECT failure_type FROM dunetrace.failure_signals WHERE run_id = $1 ORDER BY id",
        &[&run],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn original_sdk_loop_is_detected_and_healthy_agent_is_clean() {
    let mut db = db();
    let agent = unique("sdk-agent");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let venv = Venv::create();

    let out = venv.script("agents.py", &gw, &key, &agent);
    assert_eq!(out["warnings"], serde_json::json!([]), "{out}");
    let loop_run = out["loop_run"].as_str().unwrap().to_string();
    let healthy_run = out["healthy_run"].as_str().unwrap().to_string();

    // Everything the SDK sent was stored: started + 6 × (llm 2 + tool 2) + llm 2 + completed.
    assert_eq!(stored_events(&mut db, &loop_run), 28);
    assert_eq!(stored_events(&mut db, &healthy_run), 8);

    wait_processed(&mut db, &[&loop_run, &healthy_run]);
    let looped = signals(&mut db, &loop_run);
    assert!(
        looped.iter().any(|s| s == "TOOL_LOOP"),
        "the looping agent must produce TOOL_LOOP, got {looped:?}"
    );
    let healthy = signals(&mut db, &healthy_run);
    assert!(
        healthy.is_empty(),
        "the healthy agent must produce no signal, got {healthy:?}"
    );

    // The SDK's other calls reached the gateway and were answered.
    assert!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/policies\",status=\"200\"}")
            >= 1.0
    );
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/deploy\",status=\"202\"}"),
        1.0
    );
    assert_eq!(gw.metric("dunetrace_gateway_events_accepted_total"), 36.0);
    // mark_deploy(): stored once the extension has dunetrace.record_deploy().
    let has_record_deploy: bool = db
        .query_one(
            "SELECT to_regprocedure('dunetrace.record_deploy(text,text,text,jsonb)') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    if has_record_deploy {
        let meta: String = db
            .query_one(
                "SELECT meta::text FROM dunetrace.deploy_events WHERE agent_id = $1 \
                 AND version = 'v1.4.2'",
                &[&agent],
            )
            .unwrap()
            .get(0);
        let meta: Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({"commit": "abc1234", "env": "production"})
        );
    }
    for l in gw.logs() {
        assert!(!l.contains(&key), "the API key was logged: {l}");
    }
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn original_sdk_integrations_and_policies_are_accepted() {
    let mut db = db();
    let agent = unique("sdk-integrations");
    let key = new_key(&mut db, &agent);
    let gw = Gateway::start(&[]);
    let venv = Venv::create();

    let out = venv.script("integrations.py", &gw, &key, &agent);
    assert_eq!(out["warnings"], serde_json::json!([]), "{out}");
    assert_eq!(
        gw.metric("dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"422\"}"),
        0.0
    );
    let runs: Vec<String> = out["runs"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(runs.len(), 6);
    for run in &runs {
        assert!(stored_events(&mut db, run) > 0, "nothing stored for {run}");
    }
    // The keys the original allowlist lacked arrived as the SDK sent them.
    let keys: Vec<String> = db
        .query(
            "SELECT DISTINCT e.event_type || '.' || k FROM dunetrace.events e, \
                    jsonb_object_keys(e.payload) k WHERE e.agent_id = $1 ORDER BY 1",
            &[&agent],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for want in [
        "llm.responded.reasoning_tokens",
        "llm.responded.error_hash",
        "retrieval.responded.error_hash",
        "run.completed.duration_ms",
        "run.completed.interrupted",
        "run.errored.exit_reason",
        "run.errored.policy_name",
        "run.errored.interrupted",
        "policy.triggered.value",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing from {keys:?}"
        );
    }
    let value: String = db
        .query_one(
            "SELECT (payload->'value')::text FROM dunetrace.events WHERE agent_id = $1 \
             AND event_type = 'policy.triggered' AND payload->>'trigger' = 'signal' LIMIT 1",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let value: Value = serde_json::from_str(&value).unwrap();
    assert!(
        value
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == "TOOL_LOOP")),
        "{value}"
    );
    let exit: Option<String> = db
        .query_one(
            "SELECT payload->>'exit_reason' FROM dunetrace.events WHERE agent_id = $1 \
             AND event_type = 'run.errored' AND payload ? 'policy_name'",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(exit.as_deref(), Some("policy_violation"));
    let refs: Vec<&str> = runs.iter().map(String::as_str).collect();
    wait_processed(&mut db, &refs);
    let failed: i64 = db
        .query_one(
            "SELECT count(*) FROM dunetrace.processed_runs WHERE run_id = ANY($1) AND error IS NOT NULL",
            &[&runs],
        )
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "every run processed without error");
}
