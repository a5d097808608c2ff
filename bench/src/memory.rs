//! Measurement 4: the worker's resident memory as it processes runs (and sends their alerts),
//! read from `/proc/<pid>/status` after each chunk. Baseline: a fresh backend of the same
//! cluster, read the same way.

use crate::db::{mem_of, send_batches, wait_until, Ctx, Mem, Path};
use crate::ingest::workload;
use crate::latency::{worker_pid, DB};
use crate::receiver::Receiver;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Point {
    pub processed: i64,
    pub worker: Mem,
    /// Runs/s the worker kept up with over the chunk (ingest and processing overlap).
    pub runs_per_s: f64,
    pub alerts: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Result {
    pub points: Vec<Point>,
    pub fresh_backend: Mem,
    pub start: Mem,
    pub pid_changed: bool,
}

pub fn measure(ctx: &Ctx, receiver: &Receiver, key: &str) -> Result {
    let (chunks, per_chunk) = if ctx.quick { (3, 500) } else { (20, 10_000) };
    let mut c = ctx.connect(DB);
    let pid = worker_pid(&mut c, Duration::from_secs(30));
    let mut fresh = ctx.connect(DB);
    let fresh_pid: i32 = fresh
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("backend pid")
        .get(0);
    let mut r = Result {
        fresh_backend: mem_of(fresh_pid).unwrap_or_default(),
        start: mem_of(pid).unwrap_or_default(),
        ..Result::default()
    };
    drop(fresh);
    for i in 0..chunks {
        let (_, batches) = workload(9_000 + i as u64, 2, per_chunk * 40 / 2, 20, 60, 500);
        let alerts_before = receiver.requests();
        let start = Instant::now();
        send_batches(ctx, DB, key, Path::Dunetrace, &batches);
        wait_until(
            &mut c,
            "SELECT NOT EXISTS (SELECT 1 FROM dunetrace.runs WHERE processed_trigger IS NULL \
                                AND terminal_event IS NOT NULL) \
                AND NOT EXISTS (SELECT 1 FROM dunetrace.deliveries \
                                WHERE status IN ('pending', 'sending'))",
            Duration::from_secs(600),
            "the worker to process every run and send every alert",
        );
        let secs = start.elapsed().as_secs_f64();
        let processed: i64 = c
            .query_one("SELECT count(*) FROM dunetrace.processed_runs", &[])
            .expect("count")
            .get(0);
        let now_pid = worker_pid(&mut c, Duration::from_secs(30));
        r.pid_changed |= now_pid != pid;
        // Read once the worker is idle again (waiting on its latch), as an operator would see
        // it between bursts of traffic.
        wait_until(
            &mut c,
            &format!(
                "SELECT COALESCE((SELECT wait_event_type = 'Extension' FROM pg_stat_activity \
                                  WHERE pid = {now_pid}), false)"
            ),
            Duration::from_secs(60),
            "the worker to be idle",
        );
        let p = Point {
            processed,
            worker: mem_of(now_pid).unwrap_or_default(),
            runs_per_s: per_chunk as f64 / secs,
            alerts: receiver.requests() - alerts_before,
        };
        eprintln!(
            "  worker after {:>7} runs: VmRSS {:>7} KiB, RssAnon {:>6} KiB, RssShmem {:>7} KiB \
             ({:.0} runs/s end to end, {} alerts)",
            p.processed,
            p.worker.vm_rss,
            p.worker.rss_anon,
            p.worker.rss_shmem,
            p.runs_per_s,
            p.alerts
        );
        r.points.push(p);
    }
    r
}
