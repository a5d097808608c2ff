//! Accepted events/s through dunetrace-gateway (HTTP, the SDK's request shape) next to direct
//! `dunetrace.ingest()` calls, measured in the same run against the same database.
//!
//! `cargo bench -p dunetrace-gateway --bench gateway` with `DUNETRACE_BENCH_DSN` (or
//! `DUNETRACE_TEST_DSN`) set to a superuser DSN of a database with the extension. See
//! README.md beside this file for the knobs.

use postgres::{Client, NoTls};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Knobs {
    batch: usize,
    batches: usize,
    concurrency: usize,
    rounds: usize,
}

/// One batch of `n` structural events for a fresh run. No run.started and no terminal
/// event, so the worker never processes these runs and only ingest is measured.
fn events(agent: &str, run: &str, n: usize) -> String {
    let evs: Vec<_> = (0..n)
        .map(|i| {
            let (t, payload) = if i % 2 == 0 {
                (
                    "tool.called",
                    json!({"tool_name": "web_search", "args_hash": format!("{:016x}", i)}),
                )
            } else {
                (
                    "tool.responded",
                    json!({"tool_name": "web_search", "success": true, "output_length": 512,
                           "latency_ms": 20}),
                )
            };
            json!({"event_type": t, "run_id": run, "agent_id": agent, "agent_version": "a1b2c3d4",
                   "step_index": i / 2 + 1, "timestamp": 1732550000.0 + i as f64 * 0.01,
                   "payload": payload, "parent_run_id": null})
        })
        .collect();
    serde_json::Value::Array(evs).to_string()
}

/// Runs `work(worker, batch_index)` over `batches` batches on `threads` threads; wall time
/// and per-batch latencies.
fn drive<W>(
    threads: usize,
    batches: usize,
    make: impl Fn() -> W,
    work: impl Fn(&mut W, usize) + Sync,
) -> (Duration, Vec<Duration>)
where
    W: Send,
{
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers: Vec<W> = (0..threads).map(|_| make()).collect();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(batches);
    std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| {
                let next = &next;
                let work = &work;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= batches {
                            break;
                        }
                        let t = Instant::now();
                        work(&mut w, i);
                        mine.push(t.elapsed());
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            lat.extend(h.join().unwrap());
        }
    });
    (start.elapsed(), lat)
}

fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let dsn = match std::env::var("DUNETRACE_BENCH_DSN")
        .or_else(|_| std::env::var("DUNETRACE_TEST_DSN"))
    {
        Ok(d) => d,
        Err(_) => {
            println!(
                "gateway bench skipped: set DUNETRACE_BENCH_DSN (or DUNETRACE_TEST_DSN) to a \
                 superuser DSN of a database with the dunetrace extension"
            );
            return;
        }
    };
    let k = Knobs {
        batch: env_usize("BENCH_BATCH", 100),
        batches: env_usize("BENCH_BATCHES", 200),
        concurrency: env_usize("BENCH_CONCURRENCY", 4),
        rounds: env_usize("BENCH_ROUNDS", 3),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let agent = format!("bench-gw-{}-{nanos}", std::process::id());
    let mut db = Client::connect(&dsn, NoTls).expect("connect");
    let key: String = db
        .query_one("SELECT dunetrace.create_api_key($1)", &[&agent])
        .unwrap()
        .get(0);

    // The gateway, on a free port, with its default logging (one line per request).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_dunetrace-gateway"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--pool-size", &k.concurrency.to_string()])
        .env("DATABASE_URL", &dsn)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(&format!("{base}/health")).call() {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut round_no = 0usize;
    let mut make_batches = |mode: &str| -> Arc<Vec<String>> {
        round_no += 1;
        Arc::new(
            (0..k.batches)
                .map(|i| events(&agent, &format!("{agent}-{mode}-{round_no}-{i}"), k.batch))
                .collect(),
        )
    };

    println!(
        "dunetrace gateway bench: {} rounds × {} batches × {} events, {} concurrent clients, \
         {} cores",
        k.rounds,
        k.batches,
        k.batch,
        k.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<8} {:>6} {:>12} {:>10} {:>10}",
        "mode", "round", "events/s", "p50 ms", "p99 ms"
    );
    let mut direct_rates = Vec::new();
    let mut gw_rates = Vec::new();
    let total = (k.batches * k.batch) as f64;
    // Warm-up: one small round each, not reported.
    for (mode, round) in (0..k.rounds + 1).flat_map(|r| [("direct", r), ("gateway", r)]) {
        let batches = make_batches(mode);
        let n = if round == 0 {
            k.batches.min(20)
        } else {
            k.batches
        };
        let (wall, mut lat) = if mode == "direct" {
            let dsn = dsn.clone();
            let key = key.clone();
            let b = batches.clone();
            drive(
                k.concurrency,
                n,
                || Client::connect(&dsn, NoTls).expect("connect"),
                move |c: &mut Client, i| {
                    c.query_one(
                        "SELECT dunetrace.ingest($1::text, $2::text::jsonb)::text",
                        &[&key, &b[i]],
                    )
                    .expect("direct ingest");
                },
            )
        } else {
            let url = format!("{base}/v1/ingest");
            let agent = agent.clone();
            // The SDK's request body, built before the clock starts.
            let bodies: Vec<String> = batches
                .iter()
                .map(|ev| {
                    format!(
                        "{{\"api_key\":{},\"agent_id\":{},\"events\":{ev}}}",
                        serde_json::Value::String(key.clone()),
                        serde_json::Value::String(agent.clone()),
                    )
                })
                .collect();
            let http = http.clone();
            drive(
                k.concurrency,
                n,
                || http.clone(),
                move |h: &mut ureq::Agent, i| {
                    let r = h
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-dunetrace-agent", &agent)
                        .send(&bodies[i])
                        .expect("POST");
                    assert_eq!(r.status(), 202, "gateway refused a batch");
                },
            )
        };
        if round == 0 {
            continue;
        }
        let rate = total / wall.as_secs_f64();
        println!(
            "{:<8} {:>6} {:>12.0} {:>10.2} {:>10.2}",
            mode,
            round,
            rate,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
        if mode == "direct" {
            direct_rates.push(rate);
        } else {
            gw_rates.push(rate);
        }
    }
    let (d, g) = (median(direct_rates), median(gw_rates));
    println!(
        "median accepted events/s at batch {}: direct dunetrace.ingest() {:.0}, through the \
         gateway {:.0} ({:.0}% of direct)",
        k.batch,
        d,
        g,
        100.0 * g / d
    );

    let _ = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status();
    let _ = gw.wait();
    // Leave nothing behind.
    db.execute(
        "DELETE FROM dunetrace.events WHERE agent_id = $1",
        &[&agent],
    )
    .unwrap();
    db.execute("DELETE FROM dunetrace.runs WHERE agent_id = $1", &[&agent])
        .unwrap();
    db.execute(
        "DELETE FROM dunetrace.api_keys WHERE agent_id = $1",
        &[&agent],
    )
    .unwrap();
}
