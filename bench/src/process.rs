//! Measurement 2: processing throughput of `process_runs()` over finished runs, against a
//! plain-SQL floor that reads the same events run by run and writes one row per run.
//!
//! Runs are ingested into a database where the extension exists but the background worker does
//! not run (`dunetrace.database` points elsewhere), so nothing is processed before the clock
//! starts. The database has one webhook destination, so live signals are rendered and queued in
//! the outbox as in production (nothing sends them here).

use crate::db::{send_batches, Ctx, Path};
use crate::ingest::workload;
use postgres::Client;
use std::time::Instant;

pub const DB: &str = "bench_process";

#[derive(Clone, Debug, Default)]
pub struct Result {
    pub runs: usize,
    pub events: usize,
    /// `process_runs(runs)` in one call: runs/s.
    pub one_call: f64,
    /// `process_runs()` (batch 1000) in a loop until it returns 0: runs/s.
    pub looped: f64,
    /// The same loop with the destination switched off (signals only, no outbox rows).
    pub looped_no_dest: f64,
    /// Two sessions running the loop at once (SKIP LOCKED shares the runs): runs/s.
    pub two_sessions: f64,
    /// The SQL floor, in chunks of 1000 runs: runs/s.
    pub floor: f64,
    pub signals: i64,
    pub deliveries: i64,
    pub failed: i64,
}

/// Forgets every processing result, so the same runs can be processed again.
pub fn unprocess(c: &mut Client) {
    c.batch_execute(
        "UPDATE dunetrace.runs SET processed_trigger = NULL WHERE processed_trigger IS NOT NULL;
         TRUNCATE dunetrace.processed_runs, dunetrace.failure_signals, dunetrace.issues,
                  dunetrace.deliveries, bench.floor_out CASCADE;",
    )
    .expect("reset processing");
    c.batch_execute("VACUUM ANALYZE dunetrace.runs")
        .expect("vacuum runs");
    c.batch_execute("CHECKPOINT").expect("checkpoint");
}

/// Calls `process_runs(max)` until it returns 0; returns (runs, seconds).
pub fn process_loop(c: &mut Client, max: Option<i32>) -> (i64, f64) {
    let start = Instant::now();
    let mut total = 0i64;
    loop {
        let n: i32 = match max {
            Some(m) => c.query_one("SELECT dunetrace.process_runs($1)", &[&m]),
            None => c.query_one("SELECT dunetrace.process_runs()", &[]),
        }
        .expect("process_runs")
        .get(0);
        total += i64::from(n);
        if n == 0 {
            break;
        }
    }
    (total, start.elapsed().as_secs_f64())
}

/// Two sessions call `process_runs()` until it returns 0; returns the wall time.
fn two_sessions(ctx: &Ctx, runs: usize) -> f64 {
    let barrier = std::sync::Barrier::new(3);
    let (secs, n) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut c = ctx.connect(DB);
                    barrier.wait();
                    process_loop(&mut c, None).0
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let n: i64 = hs.into_iter().map(|h| h.join().expect("session")).sum();
        (start.elapsed().as_secs_f64(), n)
    });
    assert_eq!(n as usize, runs, "two sessions processed {n}");
    secs
}

/// The floor: per chunk of 1000 runs (in processing order), one statement reads every event of
/// the chunk's runs through the same index and writes one summary row per run. Returns
/// seconds.
pub fn floor(c: &mut Client, run_ids: &[String]) -> f64 {
    let stmt = c
        .prepare(
            "INSERT INTO bench.floor_out \
             SELECT run_id, min(agent_id), min(agent_version), count(*), max(step_index), \
                    sum(COALESCE((payload->>'prompt_tokens')::bigint, 0) \
                        + COALESCE((payload->>'completion_tokens')::bigint, 0)), \
                    max(\"timestamp\") - min(\"timestamp\") \
             FROM dunetrace.events WHERE run_id = ANY($1) GROUP BY run_id",
        )
        .expect("prepare the floor");
    let start = Instant::now();
    for chunk in run_ids.chunks(1000) {
        c.execute(&stmt, &[&chunk]).expect("floor chunk");
    }
    start.elapsed().as_secs_f64()
}

/// Run ids of the finished runs, in processing order.
pub fn finished_runs(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT run_id FROM dunetrace.runs WHERE terminal_event IS NOT NULL ORDER BY last_seq, last_pos",
        &[],
    )
    .expect("list runs")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Ingests `runs` finished runs of `lo..=hi` events (2 clients, batches of 500).
pub fn load(ctx: &Ctx, db: &str, key: &str, seed: u64, runs: usize, lo: usize, hi: usize) -> usize {
    let avg = (lo + hi) / 2;
    let (_, batches) = workload(seed, 2, runs * avg / 2, lo, hi, 500);
    send_batches(ctx, db, key, Path::Dunetrace, &batches);
    batches.iter().flatten().map(|(_, n)| n).sum()
}

pub fn measure(ctx: &Ctx) -> Result {
    let key = ctx.fresh_db(DB);
    let mut c = ctx.connect(DB);
    c.batch_execute(
        "SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/unused', \
                'whsec_ZHVuZXRyYWNlLWJlbmNoLXNpZ25pbmcta2V5')",
    )
    .expect("add a destination");
    let target = if ctx.quick { 1_000 } else { 10_000 };
    let events = load(ctx, DB, &key, 42, target, 20, 60);
    c.batch_execute("VACUUM ANALYZE").expect("analyze");
    let ids = finished_runs(&mut c);
    let runs = ids.len();
    let mut r = Result {
        runs,
        events,
        ..Result::default()
    };
    unprocess(&mut c);
    let (n, secs) = process_loop(&mut c, Some(runs as i32));
    assert_eq!(n as usize, runs, "process_runs({runs}) processed {n}");
    r.one_call = n as f64 / secs;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM dunetrace.failure_signals), \
                    (SELECT count(*) FROM dunetrace.deliveries), \
                    (SELECT count(*) FROM dunetrace.processed_runs WHERE error IS NOT NULL)",
            &[],
        )
        .expect("count results");
    r.signals = row.get(0);
    r.deliveries = row.get(1);
    r.failed = row.get(2);
    unprocess(&mut c);
    let (n, secs) = process_loop(&mut c, None);
    assert_eq!(n as usize, runs);
    r.looped = n as f64 / secs;
    unprocess(&mut c);
    c.batch_execute("UPDATE dunetrace.destinations SET active = false")
        .expect("switch the destination off");
    let (n, secs) = process_loop(&mut c, None);
    assert_eq!(n as usize, runs);
    r.looped_no_dest = n as f64 / secs;
    c.batch_execute("UPDATE dunetrace.destinations SET active = true")
        .expect("switch the destination on");
    unprocess(&mut c);
    r.two_sessions = runs as f64 / two_sessions(ctx, runs);
    r.floor = runs as f64 / floor(&mut c, &ids);
    eprintln!(
        "  process_runs: {runs} runs ({events} events): one call {:.0} runs/s, batches of 1000 {:.0} runs/s \
         (no destination {:.0}, two sessions {:.0}), SQL floor {:.0} runs/s; {} signals, {} deliveries \
         queued, {} failed",
        r.one_call, r.looped, r.looped_no_dest, r.two_sessions, r.floor, r.signals, r.deliveries, r.failed
    );
    r
}
