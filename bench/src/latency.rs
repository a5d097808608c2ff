//! Measurement 3: alert latency, from the commit of a run's terminal batch to the webhook
//! arriving at a local receiver, with the background worker running in database `dunetrace`.
//!
//! Baseline (same run, same receiver): the floor of any push design — a `NOTIFY` committed by
//! the client, received by a listening connection that POSTs to the receiver at once.

use crate::db::{self, Ctx, INGEST_SQL};
use crate::gen::{self, Pattern, Rng};
use crate::receiver::{self, Receiver};
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

/// The worker's database (set by scripts/lib.sh's start_cluster).
pub const DB: &str = "dunetrace";
pub const SECRET: &str = "whsec_ZHVuZXRyYWNlLWJlbmNoLXNpZ25pbmcta2V5";

#[derive(Clone, Debug, Default)]
pub struct Result {
    pub runs: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub floor_p50_ms: f64,
    pub floor_p99_ms: f64,
    pub missed: usize,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The worker's pid, waiting for it to be connected to `DB`.
pub fn worker_pid(c: &mut postgres::Client, timeout: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let row = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dunetrace' AND datname = $1",
                &[&DB],
            )
            .expect("find the worker");
        if let Some(r) = row {
            return r.get(0);
        }
        assert!(
            start.elapsed() < timeout,
            "the dunetrace worker is not running in database {DB}: is the extension preloaded \
             and dunetrace.database = '{DB}'?"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prepares the worker's database: the extension recreated (the worker stays connected), a
/// webhook destination to `receiver`. Returns an API key.
pub fn setup(ctx: &Ctx, receiver: &Receiver) -> String {
    let mut admin = ctx.connect("postgres");
    db::ensure_template(&mut admin, ctx);
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&DB],
        )
        .expect("look up the database")
        .get(0);
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {DB} TEMPLATE {}", db::TEMPLATE))
            .expect("create the worker's database");
    }
    let mut c = ctx.connect(DB);
    c.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'dunetrace') THEN
                 CREATE EXTENSION dunetrace;
             END IF;
         END $$;
         TRUNCATE dunetrace.events, dunetrace.runs, dunetrace.processed_runs,
                  dunetrace.failure_signals, dunetrace.issues, dunetrace.deliveries,
                  dunetrace.destinations, dunetrace.api_keys CASCADE;",
    )
    .expect("empty the worker's database");
    let key = db::bench_objects(&mut c);
    c.execute(
        "SELECT dunetrace.add_destination('webhook', $1, $2)",
        &[&receiver.url, &SECRET],
    )
    .expect("add the webhook destination");
    worker_pid(&mut admin, Duration::from_secs(30));
    key
}

pub fn measure(ctx: &Ctx, receiver: &Receiver, key: &str) -> Result {
    let n = if ctx.quick { 40 } else { 250 };
    let warmup = 5;
    let mut c = ctx.connect(DB);
    let stmt = c.prepare(INGEST_SQL).expect("prepare ingest");
    let agents = gen::agents();
    let mut rng = Rng::new(77);
    let mut lat = Vec::new();
    let mut missed = 0;
    for i in 0..(n + warmup) {
        let agent = &agents[i % agents.len()];
        let run = gen::run(
            &mut rng,
            agent,
            Pattern::ToolLoop,
            24,
            1_764_000_000.0 + i as f64,
        );
        let (body, last) = run.events.split_at(run.events.len() - 2);
        let body = serde_json::to_string(body).expect("json");
        let last = serde_json::to_string(last).expect("json");
        c.execute(&stmt, &[&key, &body]).expect("ingest the run");
        std::thread::sleep(Duration::from_millis(rng.range(5, 25)));
        c.execute(&stmt, &[&key, &last])
            .expect("ingest the terminal batch");
        let committed = Instant::now();
        match receiver.wait_for(&run.run_id, Duration::from_secs(15)) {
            Some(at) if i >= warmup => {
                lat.push(at.saturating_duration_since(committed).as_secs_f64() * 1000.0)
            }
            Some(_) => {}
            None => missed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);

    // The floor: NOTIFY → listening connection → POST.
    let url = receiver.url.clone();
    let mut listener = ctx.connect(DB);
    listener
        .batch_execute("LISTEN bench_floor")
        .expect("listen");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let mut n = listener.notifications();
            let mut it = n.timeout_iter(Duration::from_millis(200));
            while let Ok(Some(nf)) = it.next() {
                let _ = receiver::post_run_id(&url, nf.payload());
            }
        }
    });
    let notify = c
        .prepare("SELECT pg_notify('bench_floor', $1)")
        .expect("prepare notify");
    let mut floor = Vec::new();
    for i in 0..(n + warmup) {
        let id = format!("floor-{i}-{}", rng.hex(8));
        c.execute(&notify, &[&id]).expect("notify");
        let committed = Instant::now();
        if let Some(at) = receiver.wait_for(&id, Duration::from_secs(5)) {
            if i >= warmup {
                floor.push(at.saturating_duration_since(committed).as_secs_f64() * 1000.0);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 25)));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = t.join();
    floor.sort_by(f64::total_cmp);
    let r = Result {
        runs: lat.len(),
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        floor_p50_ms: percentile(&floor, 0.5),
        floor_p99_ms: percentile(&floor, 0.99),
        missed,
    };
    eprintln!(
        "  alert latency over {} runs: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         ({} missed); NOTIFY+POST floor p50 {:.2} ms, p99 {:.2} ms",
        r.runs, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.missed, r.floor_p50_ms, r.floor_p99_ms
    );
    r
}
