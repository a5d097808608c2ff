//! Harness for dunetrace's end-to-end tests: a running cluster (`scripts/test-cluster.sh`), agents
//! that ingest runs through `dunetrace.ingest()`, a scripted HTTP receiver standing in for
//! Slack, webhooks and Langfuse, and waits with deadlines.
//!
//! Environment (printed by `eval "$(bash scripts/test-cluster.sh)"`):
//! - `DUNETRACE_TEST_DSN`: superuser DSN of database `dunetrace_test`, extension created, the
//!   background worker running in it;
//! - `DUNETRACE_TEST_PGCTL`: a `pg_ctl` command prefix (`… -D … -w -m fast`) for the cluster.
//!
//! Destinations are global to the database and the worker is shared, so tests run serially
//! (`--test-threads=1`), start from [`reset_destinations`] and use unique agent ids.

pub mod receiver;

pub use receiver::{Receiver, Reply, Request};

use dunetrace_core::sign::{
    signing_key, timestamp_within, verify_dunetrace_signature, verify_standard_webhooks,
};
use postgres::{Client, NoTls};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why every test is ignored by a plain `cargo test`.
pub const NEEDS_CLUSTER: &str = "needs a cluster: scripts/test.sh runs it";

/// The args hash every looping tool call repeats.
pub const LOOP_ARGS_HASH: &str = "0123456789abcdef";

/// The superuser DSN of the test database.
pub fn dsn() -> String {
    std::env::var("DUNETRACE_TEST_DSN").unwrap_or_else(|_| {
        panic!(
            "DUNETRACE_TEST_DSN is not set; run `eval \"$(bash scripts/test-cluster.sh)\"` first"
        )
    })
}

/// The `pg_ctl` prefix for the test cluster.
pub fn pgctl() -> String {
    std::env::var("DUNETRACE_TEST_PGCTL").unwrap_or_else(|_| {
        panic!(
            "DUNETRACE_TEST_PGCTL is not set; run `eval \"$(bash scripts/test-cluster.sh)\"` first"
        )
    })
}

/// Runs `$DUNETRACE_TEST_PGCTL <action>` (e.g. `restart`) and panics if it fails.
pub fn pg_ctl(action: &str) {
    let cmd = format!("{} {action}", pgctl());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects, retrying for up to `timeout` (the cluster may be restarting or in crash
/// recovery).
pub fn connect_within(timeout: Duration) -> Client {
    let mut config: postgres::Config = dsn().parse().expect("DUNETRACE_TEST_DSN parses");
    config.connect_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + timeout;
    loop {
        match config.connect(NoTls) {
            Ok(mut c) => {
                // Connected is not enough during recovery; make sure queries run.
                if c.simple_query("SELECT 1").is_ok() {
                    return c;
                }
            }
            Err(e) if Instant::now() >= deadline => {
                panic!("could not connect to the test cluster within {timeout:?}: {e}")
            }
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the test cluster did not answer queries within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects (retrying briefly).
pub fn connect() -> Client {
    connect_within(Duration::from_secs(30))
}

/// The DSN of another database of the test cluster.
pub fn dsn_for(db: &str) -> String {
    let base: Vec<String> = dsn()
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .map(str::to_string)
        .collect();
    format!("{} dbname={db}", base.join(" "))
}

/// Connects to another database of the test cluster.
pub fn connect_to(db: &str) -> Client {
    let mut config: postgres::Config = dsn_for(db).parse().expect("the DSN parses");
    config.connect_timeout(Duration::from_secs(5));
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// The name of the database the tests (and the worker) use.
pub fn test_db() -> String {
    dsn()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname=").map(str::to_string))
        .expect("the DSN names a database")
}

/// Runs a PostgreSQL client program (`pg_dump`, `pg_restore`, …) of the server's major version
/// against the test cluster as `postgres`; `args` follow the connection options. Panics with its
/// output if it fails; returns its standard output.
pub fn pg_tool(tool: &str, db: &str, args: &[&str]) -> String {
    let get = |k: &str| {
        dsn()
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).map(str::to_string))
            .unwrap_or_default()
    };
    let bin = format!("/usr/lib/postgresql/15/bin/{tool}");
    let out = std::process::Command::new(&bin)
        .args([
            "-h",
            &get("host="),
            "-p",
            &get("port="),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Row counts of every table of schema `dunetrace`, as `table=count` lines.
pub fn table_counts(c: &mut Client) -> Vec<String> {
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'dunetrace'::regnamespace AND c.relkind IN ('r', 'p') \
             ORDER BY 1",
            &[],
        )
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .iter()
        .map(|t| {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM dunetrace.{t}"), &[])
                .expect("count rows")
                .get(0);
            format!("{t}={n}")
        })
        .collect()
}

/// What PUBLIC may do with the extension's objects, as `kind name` lines (empty = nothing).
pub fn public_privileges(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT kind || ' ' || name FROM ( \
             SELECT 'function' AS kind, p.oid::regprocedure::text AS name \
             FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace = 'dunetrace'::regnamespace \
               AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') \
             UNION ALL \
             SELECT 'relation', c.oid::regclass::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'dunetrace'::regnamespace AND c.relkind IN ('r', 'v', 'p') \
               AND (pg_catalog.has_table_privilege('public', c.oid, \
                        'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') \
                    OR pg_catalog.has_any_column_privilege('public', c.oid, \
                        'SELECT, INSERT, UPDATE, REFERENCES')) \
             UNION ALL \
             SELECT 'sequence', c.oid::regclass::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'dunetrace'::regnamespace AND c.relkind = 'S' \
               AND CASE WHEN c.relkind = 'S' \
                   THEN pg_catalog.has_sequence_privilege('public', c.oid, 'USAGE, SELECT, UPDATE') END \
         ) x ORDER BY 1",
        &[],
    )
    .expect("read privileges")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Connects and waits until the background worker runs (after `scripts/test-cluster.sh`
/// recreates the database, or after an earlier test stopped it, it takes up to its 5 s restart
/// interval to come back).
pub fn connect_ready() -> Client {
    let mut c = connect();
    wait_new_worker(&mut c, None, Duration::from_secs(20));
    c
}

/// A fresh identifier `prefix-<time>-<counter>` (letters, digits and dashes only).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{nanos:x}-{n}")
}

/// Epoch seconds now.
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Polls `probe` every 25 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` otherwise.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// Deactivates every destination (their queued deliveries are not sent).
pub fn reset_destinations(c: &mut Client) {
    c.execute(
        "SELECT dunetrace.remove_destination(id) FROM dunetrace.destinations",
        &[],
    )
    .expect("remove destinations");
}

/// `dunetrace.add_destination(kind, url, secret, min_severity)`.
pub fn add_destination(
    c: &mut Client,
    kind: &str,
    url: &str,
    secret: Option<&str>,
    min_severity: Option<&str>,
) -> i32 {
    c.query_one(
        "SELECT dunetrace.add_destination($1, $2, $3, $4)",
        &[&kind, &url, &secret, &min_severity],
    )
    .expect("add_destination")
    .get(0)
}

/// Runs a query returning one `jsonb` (or `json`) value and parses it.
pub fn query_json(
    c: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Value {
    let text: String = c
        .query_one(&format!("SELECT ({sql})::text"), params)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    serde_json::from_str(&text).expect("the database returned JSON")
}

/// `dunetrace.explain(signal_id)`.
pub fn explain(c: &mut Client, signal_id: i64) -> Value {
    query_json(c, "dunetrace.explain($1)", &[&signal_id])
}

// ---------------------------------------------------------------------------------------------
// Agents and runs
// ---------------------------------------------------------------------------------------------

/// An agent with its own API key.
pub struct Agent {
    pub id: String,
    pub version: String,
    key: String,
}

/// A run that was ingested and committed.
pub struct Ingested {
    pub run_id: String,
    /// When the committing `ingest()` call returned.
    pub committed_at: Instant,
}

fn event(
    agent: &Agent,
    run_id: &str,
    event_type: &str,
    step: i32,
    ts: f64,
    payload: Value,
) -> Value {
    json!({
        "event_type": event_type,
        "run_id": run_id,
        "agent_id": agent.id,
        "agent_version": agent.version,
        "step_index": step,
        "timestamp": ts,
        "payload": payload,
    })
}

impl Agent {
    /// A new agent `prefix-<unique>` with version `v1` and an API key.
    pub fn new(c: &mut Client, prefix: &str) -> Agent {
        let id = unique(prefix);
        let key: String = c
            .query_one("SELECT dunetrace.create_api_key($1)", &[&id])
            .expect("create_api_key")
            .get(0);
        Agent {
            id,
            version: "v1".into(),
            key,
        }
    }

    /// Ingests `events` (one autocommitted call) and returns when the commit was seen.
    pub fn ingest(&self, c: &mut Client, events: &Value) -> Instant {
        let text = events.to_string();
        let accepted: String = c
            .query_one(
                "SELECT dunetrace.ingest($1, $2::text::jsonb)::text",
                &[&self.key, &text],
            )
            .unwrap_or_else(|e| panic!("ingest failed: {e}"))
            .get(0);
        let at = Instant::now();
        assert!(
            accepted.contains("\"accepted\""),
            "ingest answered {accepted}"
        );
        at
    }

    /// The events of a run that loops a tool: `run.started`, 5 × `tool.called search` with the
    /// same args hash at steps 1..5, `run.completed` → TOOL_LOOP (HIGH).
    pub fn loop_events(&self, run_id: &str) -> Value {
        let t0 = now_epoch() - 10.0;
        let mut evs = vec![event(
            self,
            run_id,
            "run.started",
            0,
            t0,
            json!({"input_hash": LOOP_ARGS_HASH, "model": "gpt-4o", "tools": ["search"]}),
        )];
        for step in 1..=5 {
            evs.push(event(
                self,
                run_id,
                "tool.called",
                step,
                t0 + f64::from(step),
                json!({"tool_name": "search", "args_hash": LOOP_ARGS_HASH}),
            ));
        }
        evs.push(event(
            self,
            run_id,
            "run.completed",
            6,
            t0 + 6.0,
            json!({"total_steps": 6, "exit_reason": "done", "tool_call_count": 5}),
        ));
        Value::Array(evs)
    }

    /// The events of a run no detector fires on: an LLM call, one successful tool call, a
    /// second LLM call, completed.
    pub fn clean_events(&self, run_id: &str) -> Value {
        let t0 = now_epoch() - 5.0;
        Value::Array(vec![
            event(
                self,
                run_id,
                "run.started",
                0,
                t0,
                json!({"input_hash": LOOP_ARGS_HASH, "model": "gpt-4o", "tools": ["search"]}),
            ),
            event(
                self,
                run_id,
                "llm.called",
                1,
                t0 + 1.0,
                json!({"model": "gpt-4o", "prompt_tokens": 100}),
            ),
            event(
                self,
                run_id,
                "llm.responded",
                1,
                t0 + 1.5,
                json!({"completion_tokens": 20, "latency_ms": 500, "finish_reason": "stop", "output_length": 80}),
            ),
            event(
                self,
                run_id,
                "tool.called",
                2,
                t0 + 2.0,
                json!({"tool_name": "search", "args_hash": "fedcba9876543210"}),
            ),
            event(
                self,
                run_id,
                "tool.responded",
                2,
                t0 + 2.5,
                json!({"tool_name": "search", "success": true, "output_length": 50, "latency_ms": 500}),
            ),
            event(
                self,
                run_id,
                "llm.called",
                3,
                t0 + 3.0,
                json!({"model": "gpt-4o", "prompt_tokens": 150}),
            ),
            event(
                self,
                run_id,
                "llm.responded",
                3,
                t0 + 3.5,
                json!({"completion_tokens": 30, "latency_ms": 500, "finish_reason": "stop", "output_length": 120}),
            ),
            event(
                self,
                run_id,
                "run.completed",
                4,
                t0 + 4.0,
                json!({"total_steps": 4, "exit_reason": "done", "tool_call_count": 1}),
            ),
        ])
    }

    /// The events of a clean run whose input the client flagged for prompt injection →
    /// PROMPT_INJECTION_SIGNAL (CRITICAL).
    pub fn injection_events(&self, run_id: &str) -> Value {
        let mut evs = self.clean_events(run_id);
        evs[0]["payload"]["injection_signal"] = json!({
            "matched_pattern_count": 2,
            "matched_patterns": ["ignore_previous", "jailbreak"],
            "input_length": 80,
        });
        evs
    }

    /// Ingests a looping run.
    pub fn loop_run(&self, c: &mut Client) -> Ingested {
        let run_id = unique("run-loop");
        let committed_at = self.ingest(c, &self.loop_events(&run_id));
        Ingested {
            run_id,
            committed_at,
        }
    }

    /// Ingests a clean run.
    pub fn clean_run(&self, c: &mut Client) -> Ingested {
        let run_id = unique("run-clean");
        let committed_at = self.ingest(c, &self.clean_events(&run_id));
        Ingested {
            run_id,
            committed_at,
        }
    }

    /// Ingests a run flagged for prompt injection.
    pub fn injection_run(&self, c: &mut Client) -> Ingested {
        let run_id = unique("run-inject");
        let committed_at = self.ingest(c, &self.injection_events(&run_id));
        Ingested {
            run_id,
            committed_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Observing what the worker did
// ---------------------------------------------------------------------------------------------

/// Waits until the worker has processed `run_id` (it has a `processed_runs` row).
pub fn wait_processed(c: &mut Client, run_id: &str, timeout: Duration) {
    wait_until(timeout, &format!("run {run_id} to be processed"), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM dunetrace.processed_runs WHERE run_id = $1",
                &[&run_id],
            )
            .expect("query processed_runs")
            .get(0);
        (n > 0).then_some(())
    });
}

/// Waits until the agent has `n` processed runs.
pub fn wait_processed_count(c: &mut Client, agent_id: &str, n: i64, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{n} processed runs of {agent_id}"),
        || {
            let got: i64 = c
                .query_one(
                    "SELECT count(*) FROM dunetrace.processed_runs WHERE agent_id = $1",
                    &[&agent_id],
                )
                .expect("query processed_runs")
                .get(0);
            (got >= n).then_some(())
        },
    );
}

/// The id of the run's signal of `failure_type`, once it exists.
pub fn wait_signal(c: &mut Client, run_id: &str, failure_type: &str, timeout: Duration) -> i64 {
    wait_until(
        timeout,
        &format!("a {failure_type} signal for run {run_id}"),
        || {
            c.query_opt(
                "SELECT id FROM dunetrace.failure_signals WHERE run_id = $1 AND failure_type = $2",
                &[&run_id, &failure_type],
            )
            .expect("query failure_signals")
            .map(|r| r.get(0))
        },
    )
}

/// One row of `dunetrace.deliveries` (`Debug` leaves out the body).
#[derive(Clone)]
pub struct Delivery {
    pub id: i64,
    pub destination_id: i32,
    pub signal_id: Option<i64>,
    pub kind: String,
    pub webhook_id: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered: bool,
}

impl Delivery {
    /// Everything but the body, for messages.
    pub fn summary(&self) -> String {
        format!(
            "delivery {} (destination {}, signal {:?}, {}, webhook-id {}): {} after {} attempt(s), \
             last HTTP status {:?}, last error {:?}",
            self.id,
            self.destination_id,
            self.signal_id,
            self.kind,
            self.webhook_id,
            self.status,
            self.attempts,
            self.last_http_status,
            self.last_error
        )
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

const DELIVERY_COLUMNS: &str = "id, destination_id, signal_id, kind, webhook_id, body, status, \
     attempts, last_http_status, last_error, delivered_at IS NOT NULL";

fn delivery_from(r: &postgres::Row) -> Delivery {
    Delivery {
        id: r.get(0),
        destination_id: r.get(1),
        signal_id: r.get(2),
        kind: r.get(3),
        webhook_id: r.get(4),
        body: r.get(5),
        status: r.get(6),
        attempts: r.get(7),
        last_http_status: r.get(8),
        last_error: r.get(9),
        delivered: r.get(10),
    }
}

/// The deliveries queued for `signal_id`, by id.
pub fn deliveries_for_signal(c: &mut Client, signal_id: i64) -> Vec<Delivery> {
    c.query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM dunetrace.deliveries WHERE signal_id = $1 ORDER BY id"
        ),
        &[&signal_id],
    )
    .expect("query deliveries")
    .iter()
    .map(delivery_from)
    .collect()
}

/// The deliveries queued for any signal of `run_id`, by id.
pub fn deliveries_for_run(c: &mut Client, run_id: &str) -> Vec<Delivery> {
    c.query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM dunetrace.deliveries \
             WHERE signal_id IN (SELECT id FROM dunetrace.failure_signals WHERE run_id = $1) \
             ORDER BY id"
        ),
        &[&run_id],
    )
    .expect("query deliveries")
    .iter()
    .map(delivery_from)
    .collect()
}

/// The deliveries to `destination_id`, by id.
pub fn deliveries_to(c: &mut Client, destination_id: i32) -> Vec<Delivery> {
    c.query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM dunetrace.deliveries WHERE destination_id = $1 \
             ORDER BY id"
        ),
        &[&destination_id],
    )
    .expect("query deliveries")
    .iter()
    .map(delivery_from)
    .collect()
}

/// Waits until the delivery of `signal_id` to `destination_id` satisfies `done`.
pub fn wait_delivery(
    c: &mut Client,
    signal_id: i64,
    destination_id: i32,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Delivery) -> bool,
) -> Delivery {
    let mut last = None;
    let deadline = Instant::now() + timeout;
    loop {
        let d = deliveries_for_signal(c, signal_id)
            .into_iter()
            .find(|d| d.destination_id == destination_id);
        if let Some(d) = &d {
            if done(d) {
                return d.clone();
            }
        }
        last = d.or(last);
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {}",
            last.as_ref()
                .map(Delivery::summary)
                .unwrap_or_else(|| "no delivery".into())
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn try_worker_pid(c: &mut Client) -> Result<Option<i32>, postgres::Error> {
    c.execute("SELECT pg_stat_clear_snapshot()", &[])?;
    Ok(c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dunetrace'",
        &[],
    )?
    .map(|r| r.get(0)))
}

/// The pid of the dunetrace background worker, from a fresh `pg_stat_activity` snapshot.
pub fn worker_pid(c: &mut Client) -> Option<i32> {
    try_worker_pid(c).expect("query pg_stat_activity")
}

/// Waits until a worker other than `old` runs and returns its pid.
pub fn wait_new_worker(c: &mut Client, old: Option<i32>, timeout: Duration) -> i32 {
    wait_until(timeout, "the dunetrace worker to (re)start", || {
        worker_pid(c).filter(|p| Some(*p) != old)
    })
}

/// Waits until backend `pid` has exited (a fresh `pg_stat_activity` snapshot each time).
pub fn wait_exited(c: &mut Client, pid: i32, timeout: Duration) {
    wait_until(timeout, "the process to exit", || {
        let alive: bool = c
            .query_one(
                "SELECT pg_stat_clear_snapshot() IS NULL AND EXISTS \
                 (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .expect("look for the process")
            .get(0);
        (!alive).then_some(())
    });
}

/// After the cluster was made to restart (a backend killed, or pg_ctl): connects again and
/// waits until a worker other than `old` runs. Connections made in the moment before the
/// postmaster notices a crash are dropped with everything else, so any error reconnects.
pub fn reconnect_after_restart(old: Option<i32>, timeout: Duration) -> (Client, i32) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut c = connect_within(left.max(Duration::from_secs(1)));
        loop {
            match try_worker_pid(&mut c) {
                Ok(Some(p)) if Some(p) != old => return (c, p),
                Ok(_) => {}
                Err(_) => break,
            }
            assert!(
                Instant::now() < deadline,
                "no new dunetrace worker within {timeout:?} of the restart"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not come back within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The blocks of a Slack payload (`attachments[0].blocks`).
pub fn slack_blocks(payload: &Value) -> Vec<Value> {
    payload["attachments"][0]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("not a Slack attachment payload: {payload}"))
        .clone()
}

/// The text of a block: header/section `text.text`, or the context's first element.
pub fn block_text(block: &Value) -> String {
    block["text"]["text"]
        .as_str()
        .or_else(|| block["elements"][0]["text"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Asserts both signatures of a webhook request verify with `secret`, and that they would not
/// verify for another body.
pub fn assert_webhook_signed(req: &Request, secret: &str) {
    let key = signing_key(secret).expect("valid secret");
    let sig = req
        .header("x-dunetrace-signature")
        .expect("X-Dunetrace-Signature header");
    assert!(
        verify_dunetrace_signature(&key, &req.body, sig),
        "X-Dunetrace-Signature {sig} does not verify for the body"
    );
    let id = req.header("webhook-id").expect("webhook-id header");
    let ts: i64 = req
        .header("webhook-timestamp")
        .expect("webhook-timestamp header")
        .parse()
        .expect("webhook-timestamp is an integer");
    let now = now_epoch() as i64;
    assert!(
        timestamp_within(ts, now, 300),
        "webhook-timestamp {ts} is not near now ({now})"
    );
    let header = req
        .header("webhook-signature")
        .expect("webhook-signature header");
    assert!(
        verify_standard_webhooks(&key, id, ts, &req.body, header),
        "webhook-signature {header} does not verify (id {id}, timestamp {ts})"
    );
    let mut tampered = req.body.clone();
    tampered.push(b' ');
    assert!(!verify_dunetrace_signature(&key, &tampered, sig));
    assert!(!verify_standard_webhooks(&key, id, ts, &tampered, header));
}

/// Standard base64 (with padding), for building `Authorization: Basic` values.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn receiver_records_and_answers_by_policy() {
        let r = Receiver::statuses(&[500, 200]);
        for expected in [500u16, 200, 200] {
            let mut s = std::net::TcpStream::connect(r.base_url().trim_start_matches("http://"))
                .expect("connect");
            use std::io::{Read, Write};
            s.write_all(
                b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Test: Yes\r\nContent-Length: 5\r\n\r\nhello",
            )
            .expect("write");
            let mut answer = String::new();
            s.read_to_string(&mut answer).expect("read");
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {expected} ")),
                "{answer}"
            );
        }
        let got = r.wait_for(Duration::from_secs(5), "3 requests", |rs| rs.len() == 3);
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/x?y=1");
        assert_eq!(got[0].header("x-test"), Some("Yes"));
        assert_eq!(got[0].body, b"hello");
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
