//! Shared by the gateway's end-to-end tests: the test database, a gateway process started on
//! an ephemeral port, an HTTP client, and waits with deadlines.
//!
//! Environment: `DUNETRACE_TEST_DSN`, the superuser DSN of a database with the extension
//! created and the background worker running in it (`eval "$(bash scripts/test-cluster.sh)"`).

#![allow(dead_code)]

use postgres::{Client, NoTls};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why every end-to-end test is ignored by a plain `cargo test`.
pub const NEEDS_CLUSTER: &str = "needs a cluster: scripts/test.sh runs it";

/// A 16-hex-character digest, as the SDK sends.
pub const H16: &str = "0123456789abcdef";

pub fn dsn() -> String {
    std::env::var("DUNETRACE_TEST_DSN").unwrap_or_else(|_| {
        panic!(
            "DUNETRACE_TEST_DSN is not set; run `eval \"$(bash scripts/test-cluster.sh)\"` first"
        )
    })
}

pub fn db() -> Client {
    Client::connect(&dsn(), NoTls).expect("connect to DUNETRACE_TEST_DSN")
}

/// An id no other test run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh API key for `agent`.
pub fn new_key(db: &mut Client, agent: &str) -> String {
    db.query_one("SELECT dunetrace.create_api_key($1)", &[&agent])
        .unwrap()
        .get(0)
}

/// Events stored for a run.
pub fn stored_events(db: &mut Client, run_id: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM dunetrace.events WHERE run_id = $1",
        &[&run_id],
    )
    .unwrap()
    .get(0)
}

/// Events stored for an agent.
pub fn stored_for_agent(db: &mut Client, agent: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM dunetrace.events WHERE agent_id = $1",
        &[&agent],
    )
    .unwrap()
    .get(0)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An envelope as the SDK sends it.
pub fn event(t: &str, run: &str, agent: &str, step: i64, payload: Value) -> Value {
    serde_json::json!({
        "event_type": t, "run_id": run, "agent_id": agent, "agent_version": "a1b2c3d4",
        "step_index": step, "timestamp": 1732550000.25 + step as f64, "payload": payload,
        "parent_run_id": null,
    })
}

/// The SDK's request body.
pub fn batch(key: &str, agent: &str, events: &[Value]) -> String {
    serde_json::json!({"api_key": key, "agent_id": agent, "events": events}).to_string()
}

/// A running `dunetrace-gateway` process on an ephemeral port; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway against the test database.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with_db(&dsn(), args)
    }

    /// Starts the gateway with `DATABASE_URL` = `database_url` and extra flags.
    pub fn start_with_db(database_url: &str, args: &[&str]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dunetrace-gateway"))
            .args(["--bind", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dunetrace-gateway");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the gateway did not start listening; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Gateway {
            child: Some(child),
            addr,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let status = wait_for(timeout, "the gateway to exit", || child.try_wait().unwrap());
        self.child = None;
        status.code()
    }

    /// The value of one sample in `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, _, body) = get(&self.url("/metrics"));
        assert_eq!(status, 200);
        let text = body.as_str().unwrap().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response body as JSON, or as a JSON string when it is not JSON.
fn read(mut resp: ureq::http::Response<ureq::Body>) -> (u16, ureq::http::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// POSTs `body` with extra headers.
pub fn post(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, ureq::http::HeaderMap, Value) {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.send(body).expect("POST"))
}

pub fn get(url: &str) -> (u16, ureq::http::HeaderMap, Value) {
    read(agent().get(url).call().expect("GET"))
}
