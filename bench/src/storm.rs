//! Measurement 6: an alert storm. Several clients ingest realistic runs (about 60 % failing
//! after a "bad deploy") for a sustained period while the worker processes them and delivers
//! one webhook per live signal to a local receiver that answers at once — and, in a second
//! pass, refuses each delivery's first attempt. Reported: the processing lag (a run's last
//! batch committed → the run processed) p50/p99 while the load runs, deliveries per second,
//! alert latency (last batch committed → the alert at the receiver) p50/p99, and how long the
//! backlog takes to drain after the load stops. The baseline is the alert-latency floor of the
//! same run (NOTIFY → listener → POST, measurement 3).

use crate::db::{Ctx, INGEST_SQL};
use crate::gen::{self, Pattern, Rng};
use crate::latency::{self, percentile, DB};
use crate::receiver::Receiver;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Result {
    /// "answers at once" or "refuses each first attempt".
    pub mode: String,
    pub clients: usize,
    pub seconds: f64,
    pub runs: usize,
    pub failing_share: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub alert_p50_ms: f64,
    pub alert_p99_ms: f64,
    pub drain_secs: f64,
    pub drained: bool,
}

/// The mode of the capacity pass.
pub const CAPACITY: &str = "capacity";

/// Runs both storm passes, then the delivery capacity.
pub fn measure(ctx: &Ctx) -> Vec<Result> {
    let mut out: Vec<Result> = [false, true]
        .into_iter()
        .map(|refuse| {
            let recv = Receiver::start_with(refuse);
            let key = latency::setup(ctx, &recv);
            let mut c = ctx.connect(DB);
            // Retries after a refused first attempt: a short backoff, as a receiver that
            // recovers at once would want.
            set_backoff(&mut c, Some(200));
            let r = pass(ctx, &recv, &key, refuse);
            set_backoff(&mut c, None);
            r
        })
        .collect();
    out.push(capacity(ctx));
    out
}

/// Delivery capacity: a backlog of deliveries queued at once (as a storm leaves behind), sent
/// by the worker to a receiver that answers at once; deliveries per second from the first to
/// the last delivered.
fn capacity(ctx: &Ctx) -> Result {
    let n: i64 = if ctx.quick { 2_000 } else { 20_000 };
    let recv = Receiver::start_with(false);
    let key = latency::setup(ctx, &recv);
    let mut c = ctx.connect(DB);
    c.execute(
        "INSERT INTO dunetrace.deliveries (destination_id, kind, webhook_id, body) \
         SELECT (SELECT id FROM dunetrace.destinations WHERE active ORDER BY id LIMIT 1), \
                'signal', 'msg_capacity_' || i, json_build_object('run_id', 'capacity-' || i)::text \
         FROM generate_series(1, $1::int8) i",
        &[&n],
    )
    .expect("queue the backlog");
    // A finished run's commit wakes the worker.
    let agents = gen::agents();
    let mut rng = Rng::new(5);
    let run = gen::run(&mut rng, &agents[0], Pattern::Healthy, 6, 1_764_000_000.0);
    let body = serde_json::to_string(&run.events).expect("json");
    c.execute(INGEST_SQL, &[&key, &body])
        .expect("wake the worker");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut drained = false;
    while Instant::now() < deadline {
        if recv.accepted() >= n as u64 {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let drain_secs = started.elapsed().as_secs_f64();
    // Recorded a moment after they arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (delivered, span) = loop {
        let row = c
            .query_one(
                "SELECT count(*), extract(epoch FROM max(delivered_at) - min(delivered_at))::float8 \
                 FROM dunetrace.deliveries WHERE status = 'delivered' \
                   AND webhook_id LIKE 'msg\\_capacity\\_%'",
                &[],
            )
            .expect("deliveries");
        let delivered: i64 = row.get(0);
        if delivered >= n || Instant::now() >= deadline {
            break (delivered, row.get::<_, Option<f64>>(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = Result {
        mode: CAPACITY.into(),
        clients: 0,
        seconds: drain_secs,
        runs: 0,
        failing_share: f64::NAN,
        lag_p50_ms: f64::NAN,
        lag_p99_ms: f64::NAN,
        deliveries: delivered as u64,
        deliveries_per_sec: delivered as f64 / span.unwrap_or(0.0).max(1e-3),
        alert_p50_ms: f64::NAN,
        alert_p99_ms: f64::NAN,
        drain_secs,
        drained,
    };
    eprintln!(
        "  delivery capacity: {} deliveries queued at once, all received in {:.1} s, {:.0}/s \
         from the first to the last recorded",
        n, r.drain_secs, r.deliveries_per_sec
    );
    r
}

fn set_backoff(c: &mut postgres::Client, ms: Option<u32>) {
    let sql = match ms {
        Some(ms) => format!("ALTER SYSTEM SET dunetrace.http_retry_backoff = {ms}"),
        None => "ALTER SYSTEM RESET dunetrace.http_retry_backoff".to_string(),
    };
    c.batch_execute(&sql).expect("set the retry backoff");
    c.batch_execute("SELECT pg_reload_conf()").expect("reload");
}

fn pass(ctx: &Ctx, recv: &Receiver, key: &str, refuse: bool) -> Result {
    let clients = if ctx.quick { 2 } else { 4 };
    let secs = if ctx.quick { 4.0 } else { 30.0 };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicUsize::new(0));
    // When each run's last batch committed, by run_id.
    let commits: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, sent, failing, commits) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&failing),
                Arc::clone(&commits),
            );
            let key = key.to_string();
            let mut c = ctx.connect(DB);
            std::thread::spawn(move || {
                let stmt = c.prepare(INGEST_SQL).expect("prepare ingest");
                let agents = gen::agents();
                let mut rng = Rng::new(1000 + i as u64);
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let agent = &agents[n % agents.len()];
                    // A bad deploy: 60 % of runs fail in one of the patterns.
                    let pattern = if rng.range(0, 99) < 60 {
                        failing.fetch_add(1, Ordering::SeqCst);
                        Pattern::draw_failing(&mut rng)
                    } else {
                        Pattern::Healthy
                    };
                    let run = gen::run(&mut rng, agent, pattern, 20, 1_764_000_000.0 + n as f64);
                    let body = serde_json::to_string(&run.events).expect("json");
                    c.execute(&stmt, &[&key, &body]).expect("ingest a run");
                    commits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((run.run_id, Instant::now()));
                    sent.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    // About 110-130 runs per second per client: over 400 runs/s from four.
                    std::thread::sleep(Duration::from_millis(rng.range(3, 9)));
                }
            })
        })
        .collect();
    let mut c = ctx.connect(DB);
    let load_started: f64 = c
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .expect("clock")
        .get(0);
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let load_ended = Instant::now();
    let load_ended_db: f64 = c
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .expect("clock")
        .get(0);
    // Drained: every finished run processed and no delivery left to send.
    let deadline = load_ended + Duration::from_secs(300);
    let mut drained = false;
    while Instant::now() < deadline {
        let left: i64 = c
            .query_one(
                "SELECT runs_finished_waiting + deliveries_queued FROM dunetrace.worker_status",
                &[],
            )
            .expect("worker_status")
            .get(0);
        if left == 0 {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_secs = load_ended.elapsed().as_secs_f64();
    // Processing lag while the load ran: processed_at − the run's last batch.
    let lags: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM p.processed_at - r.last_received_at)::float8 * 1000 \
             FROM dunetrace.processed_runs p JOIN dunetrace.runs r USING (run_id) \
             WHERE p.processed_at <= to_timestamp($1)",
            &[&load_ended_db],
        )
        .expect("lags")
        .iter()
        .map(|r| r.get::<_, f64>(0).max(0.0))
        .collect();
    let mut lags = lags;
    lags.sort_by(f64::total_cmp);
    // Deliveries per second: delivered over the span from the first to the last delivery.
    let row = c
        .query_one(
            "SELECT count(*), extract(epoch FROM max(delivered_at) - min(delivered_at))::float8 \
             FROM dunetrace.deliveries WHERE status = 'delivered' \
               AND delivered_at >= to_timestamp($1)",
            &[&load_started],
        )
        .expect("deliveries");
    let delivered: i64 = row.get(0);
    let span: Option<f64> = row.get(1);
    // Alert latency: last batch committed (client clock) → first accepted arrival.
    let arrivals = recv.arrivals();
    let mut alert: Vec<f64> = commits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(run, at)| arrivals.get(run).map(|a| a.saturating_duration_since(*at)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    alert.sort_by(f64::total_cmp);
    let runs = sent.load(Ordering::SeqCst);
    let r = Result {
        mode: if refuse {
            "refuses each first attempt".into()
        } else {
            "answers at once".into()
        },
        clients,
        seconds: (load_ended - t0).as_secs_f64(),
        runs,
        failing_share: failing.load(Ordering::SeqCst) as f64 / runs.max(1) as f64,
        lag_p50_ms: percentile(&lags, 0.5),
        lag_p99_ms: percentile(&lags, 0.99),
        deliveries: delivered as u64,
        deliveries_per_sec: delivered as f64 / span.unwrap_or(0.0).max(1e-3),
        alert_p50_ms: percentile(&alert, 0.5),
        alert_p99_ms: percentile(&alert, 0.99),
        drain_secs,
        drained,
    };
    eprintln!(
        "  storm, receiver {}: {} clients × {:.0} s, {} runs ({:.0} % failing); lag p50 {:.0} ms, \
         p99 {:.0} ms; {} deliveries at {:.0}/s; alert p50 {:.0} ms, p99 {:.0} ms; drained {} {:.1} s \
         after the load ({} requests received, {} accepted)",
        r.mode,
        r.clients,
        secs,
        r.runs,
        r.failing_share * 100.0,
        r.lag_p50_ms,
        r.lag_p99_ms,
        r.deliveries,
        r.deliveries_per_sec,
        r.alert_p50_ms,
        r.alert_p99_ms,
        if r.drained { "in" } else { "NOT within" },
        r.drain_secs,
        recv.requests(),
        recv.accepted(),
    );
    r
}
