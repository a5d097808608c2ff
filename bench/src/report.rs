//! BENCHMARKS.md: the machine, each measurement with its same-run baseline and ratio, the
//! targets, and the optimisation log (bench/OPTIMISATIONS.md, included verbatim).

use crate::db::{Ctx, Mem};
use crate::{ingest, latency, memory, process, scaling, storm};
use std::fmt::Write;

#[derive(Default)]
pub struct Report {
    pub quick: bool,
    pub machine: Vec<(String, String)>,
    pub ingest: Option<Vec<ingest::Cell>>,
    pub process: Option<process::Result>,
    pub latency: Option<latency::Result>,
    pub memory: Option<memory::Result>,
    pub by_length: Option<Vec<scaling::Point>>,
    pub by_size: Option<Vec<scaling::Point>>,
    pub storm: Option<Vec<storm::Result>>,
    pub seconds: f64,
}

const INGEST_TARGET: f64 = 0.75;
const PROCESS_TARGET: f64 = 5_000.0;
const P50_TARGET: f64 = 100.0;
const P99_TARGET: f64 = 1_000.0;
/// Under the storm: processing lag p99, drain time after the load, deliveries per second.
const STORM_LAG_P99_MS: f64 = 2_000.0;
const STORM_DRAIN_SECS: f64 = 30.0;
const STORM_DELIVERIES_PER_SEC: f64 = 1_000.0;

/// Whether a storm pass meets its targets (the delivery rate only where the receiver answers
/// every attempt at once).
fn storm_ok(x: &storm::Result) -> bool {
    if x.mode == storm::CAPACITY {
        x.drained && x.deliveries_per_sec >= STORM_DELIVERIES_PER_SEC
    } else {
        x.lag_p99_ms < STORM_LAG_P99_MS && x.drained && x.drain_secs <= STORM_DRAIN_SECS
    }
}
/// Private (anonymous) memory may drift by this much over the measured span (after the first,
/// warm-up chunk) without counting as growth: the allocator's arenas and free lists move by a
/// few MiB from one batch to the next.
const RSS_SLACK_KIB: f64 = 4_096.0;

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// CPU, cores, RAM, kernel, PostgreSQL version and settings, commit.
pub fn machine(ctx: &Ctx) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let hv = if cpuinfo.contains(" hypervisor") {
        " (virtual machine)"
    } else {
        ""
    };
    let mut c = ctx.connect("postgres");
    let version: String = c
        .query_one("SELECT version()", &[])
        .expect("version")
        .get(0);
    let when: String = c
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"')",
            &[],
        )
        .expect("now")
        .get(0);
    let settings: Vec<String> = c
        .query(
            "SELECT name || ' = ' || setting || COALESCE(unit, '') FROM pg_settings \
             WHERE name IN ('shared_buffers', 'synchronous_commit', 'max_wal_size', \
                            'checkpoint_timeout', 'wal_level', 'fsync', 'work_mem', \
                            'dunetrace.worker_naptime', 'dunetrace.batch_size') ORDER BY name",
            &[],
        )
        .expect("settings")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let commit =
        sh("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = sh("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let rustc = sh("rustc", &["--version"]).unwrap_or_default();
    vec![
        ("date".into(), when),
        ("CPU".into(), format!("{cpu}{hv}")),
        ("cores".into(), cores.to_string()),
        (
            "RAM".into(),
            format!("{:.1} GiB", mem_kib as f64 / 1048576.0),
        ),
        ("kernel".into(), format!("Linux {kernel}")),
        ("PostgreSQL".into(), version),
        ("settings".into(), settings.join(", ")),
        (
            "commit".into(),
            format!(
                "{commit}{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        ),
        (
            "build".into(),
            format!(
                "{}, {rustc}",
                std::env::var("DUNETRACE_BENCH_BUILD").unwrap_or_else(|_| {
                    "extension as installed (not built by bench/run.sh)".into()
                })
            ),
        ),
    ]
}

fn int(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The verdict column; a smoke run's sizes are too small to judge.
fn yes(quick: bool, ok: bool) -> &'static str {
    if quick {
        "not judged (smoke run)"
    } else if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

fn ingest_at(cells: &[ingest::Cell], batch: usize) -> Vec<&ingest::Cell> {
    cells.iter().filter(|c| c.batch == batch).collect()
}

/// Least-squares trend of the worker's private memory over the points after the first
/// (warm-up) chunk: (KiB per 10,000 runs, KiB over the measured span).
fn rss_trend(m: &memory::Result) -> (f64, f64) {
    let pts: Vec<(f64, f64)> = m
        .points
        .iter()
        .skip(1)
        .map(|p| (p.processed as f64, p.worker.rss_anon as f64))
        .collect();
    if pts.len() < 2 {
        return (0.0, 0.0);
    }
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let span = pts[pts.len() - 1].0 - pts[0].0;
    (slope * 10_000.0, slope * span)
}

fn rss_flat(m: &memory::Result) -> bool {
    rss_trend(m).1 <= RSS_SLACK_KIB
}

/// Human-readable list of the targets this report misses.
pub fn missed_targets(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(cells) = &r.ingest {
        for c in ingest_at(cells, 100) {
            if c.ratio() < INGEST_TARGET {
                out.push(format!(
                    "ingest at batch 100 × {} client(s) is {:.2}× the plain insert (target ≥ {INGEST_TARGET}×)",
                    c.clients,
                    c.ratio()
                ));
            }
        }
    }
    if let Some(p) = &r.process {
        if p.two_sessions < PROCESS_TARGET {
            out.push(format!(
                "processing {:.0} runs/s in two sessions (target ≥ {PROCESS_TARGET} on 2 cores)",
                p.two_sessions
            ));
        }
        if p.looped < PROCESS_TARGET {
            out.push(format!(
                "processing {:.0} runs/s in one session (one call of {}: {:.0})",
                p.looped, p.runs, p.one_call
            ));
        }
    }
    if let Some(l) = &r.latency {
        if !(l.p50_ms < P50_TARGET && l.p99_ms < P99_TARGET) || l.missed > 0 {
            out.push(format!(
                "alert latency p50 {:.1} ms, p99 {:.1} ms, {} missed",
                l.p50_ms, l.p99_ms, l.missed
            ));
        }
    }
    for x in r.storm.iter().flatten() {
        if !storm_ok(x) {
            out.push(format!(
                "alert storm ({}): lag p99 {:.0} ms, drained {} after {:.1} s, {:.0} deliveries/s",
                x.mode,
                x.lag_p99_ms,
                if x.drained { "" } else { "not" },
                x.drain_secs,
                x.deliveries_per_sec
            ));
        }
    }
    if let Some(m) = &r.memory {
        if !rss_flat(m) {
            out.push(format!(
                "worker private memory grows {:.0} KiB per 10,000 runs",
                rss_trend(m).0
            ));
        }
    }
    out
}

fn machine_section(s: &mut String, r: &Report) {
    let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in &r.machine {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    s.push('\n');
}

fn summary(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "## Summary against the targets\n\n\
         | # | measurement | dunetrace | baseline (same run) | ratio | target | |\n\
         |---|---|---|---|---|---|---|"
    );
    if let Some(cells) = &r.ingest {
        for c in ingest_at(cells, 100) {
            let _ = writeln!(
                s,
                "| 1 | ingest, batch 100, {} client(s) | {} events/s | plain INSERT … jsonb_to_recordset: {} events/s | {:.2}× | ≥ {INGEST_TARGET}× | {} |",
                c.clients,
                int(c.dunetrace),
                int(c.plain),
                c.ratio(),
                yes(r.quick, c.ratio() >= INGEST_TARGET)
            );
        }
    }
    if let Some(p) = &r.process {
        let _ = writeln!(
            s,
            "| 2 | process_runs({}) over {} finished runs | {} runs/s | SQL floor (read + summarise): {} runs/s | {:.2}× | ≥ {} runs/s | {} |",
            p.runs,
            int(p.runs as f64),
            int(p.one_call),
            int(p.floor),
            p.one_call / p.floor,
            int(PROCESS_TARGET),
            yes(r.quick, p.one_call >= PROCESS_TARGET)
        );
        let _ = writeln!(
            s,
            "| 2 | process_runs() (batches of 1000) in a loop, one session | {} runs/s | SQL floor: {} runs/s | {:.2}× | ≥ {} runs/s | {} |",
            int(p.looped),
            int(p.floor),
            p.looped / p.floor,
            int(PROCESS_TARGET),
            yes(r.quick, p.looped >= PROCESS_TARGET)
        );
        let _ = writeln!(
            s,
            "| 2 | the same, two sessions at once (2 cores) | {} runs/s | SQL floor (one session): {} runs/s | {:.2}× | ≥ {} runs/s on 2 cores | {} |",
            int(p.two_sessions),
            int(p.floor),
            p.two_sessions / p.floor,
            int(PROCESS_TARGET),
            yes(r.quick, p.two_sessions >= PROCESS_TARGET)
        );
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(
            s,
            "| 3 | alert latency, commit → webhook, p50 / p99 ({} runs) | {:.1} / {:.1} ms | NOTIFY → listener → POST: {:.2} / {:.2} ms | +{:.1} ms at p50 | < 100 / < 1000 ms | {} |",
            l.runs,
            l.p50_ms,
            l.p99_ms,
            l.floor_p50_ms,
            l.floor_p99_ms,
            l.p50_ms - l.floor_p50_ms,
            yes(r.quick, l.p50_ms < P50_TARGET && l.p99_ms < P99_TARGET && l.missed == 0)
        );
    }
    for x in r
        .storm
        .iter()
        .flatten()
        .filter(|x| x.mode == storm::CAPACITY)
    {
        let _ = writeln!(
            s,
            "| 6 | webhook deliveries per second, {} queued at once, receiver answering at once | {} /s | | | ≥ {} /s | {} |",
            int(x.deliveries as f64),
            int(x.deliveries_per_sec),
            int(STORM_DELIVERIES_PER_SEC),
            yes(r.quick, storm_ok(x))
        );
    }
    for x in r
        .storm
        .iter()
        .flatten()
        .filter(|x| x.mode != storm::CAPACITY)
    {
        let floor = r
            .latency
            .as_ref()
            .map(|l| format!("NOTIFY → listener → POST p50 {:.2} ms", l.floor_p50_ms))
            .unwrap_or_else(|| "(latency not measured)".into());
        let _ = writeln!(
            s,
            "| 6 | alert storm, receiver {}: processing lag p99 / drained after / alert p50, p99 | {:.0} ms / {:.1} s / {:.0}, {:.0} ms | {floor} | | < {} ms / ≤ {} s | {} |",
            x.mode,
            x.lag_p99_ms,
            x.drain_secs,
            x.alert_p50_ms,
            x.alert_p99_ms,
            int(STORM_LAG_P99_MS),
            STORM_DRAIN_SECS,
            yes(r.quick, storm_ok(x))
        );
    }
    if let Some(m) = &r.memory {
        if let (Some(a), Some(b)) = (m.points.first(), m.points.last()) {
            let _ = writeln!(
                s,
                "| 4 | worker private memory (RssAnon), {} → {} runs | {} → {} MiB (trend {:+.0} KiB per 10,000 runs) | fresh backend: {} MiB | {:.0}× | no growth with runs | {} |",
                int(a.processed as f64),
                int(b.processed as f64),
                mib(a.worker.rss_anon),
                mib(b.worker.rss_anon),
                rss_trend(m).0,
                mib(m.fresh_backend.rss_anon),
                b.worker.rss_anon as f64 / m.fresh_backend.rss_anon.max(1) as f64,
                yes(r.quick, rss_flat(m))
            );
        }
    }
    if r.by_length.is_some() || r.by_size.is_some() {
        let _ = writeln!(s, "| 5 | scaling with run length and table size | see §5 | plain insert / SQL floor per point | | a curve | |");
    }
    s.push('\n');
}

fn ingest_section(s: &mut String, cells: &[ingest::Cell]) {
    let _ = writeln!(
        s,
        "## 1. Ingest throughput\n\n\
         Realistic runs of 20–60 events (60 % healthy, 40 % failing patterns; four runs in flight \
         per client, their events interleaved) sent as JSON text in batches. **dunetrace**: \
         `SELECT dunetrace.ingest(key, $batch::text::jsonb)` — key check, privacy validation of \
         every field, events stored, run tracking upserted. **Baseline**: `INSERT INTO \
         bench.events_plain … SELECT … FROM jsonb_to_recordset($batch::text::jsonb)` into a table \
         created `LIKE dunetrace.events INCLUDING ALL` (same columns, defaults, identity and \
         indexes) — no validation, no authentication, no run tracking. Prepared statements, one \
         connection per client, autocommit (one transaction per batch, `synchronous_commit = on`). \
         Tables emptied and checkpointed before each cell; each cell runs both paths over the same \
         batches, alternating which goes first.\n\n\
         | batch | clients | events | dunetrace events/s | plain events/s | ratio |\n|---|---|---|---|---|---|"
    );
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2}× |",
            c.batch,
            c.clients,
            int(c.events as f64),
            int(c.dunetrace),
            int(c.plain),
            c.ratio()
        );
    }
    s.push('\n');
}

fn process_section(s: &mut String, p: &process::Result) {
    let _ = writeln!(
        s,
        "## 2. Processing throughput\n\n\
         {} finished runs ({} events, 20–60 per run, eight agent versions, so baselines are active \
         after each version's first 20 runs) ingested into a database where the worker does not \
         run, then processed by `process_runs()`: reconstruction, baselines, the 17 detectors, \
         signals, processed_runs, issues, and one outbox row per live signal for the database's \
         webhook destination. The processing state is reset (and `runs` vacuumed) before each \
         variant. **Baseline (SQL floor)**: per chunk of 1000 runs in the same order, one `INSERT … \
         SELECT … GROUP BY run_id` that reads every event of the chunk's runs through the same index \
         (including their payloads) and writes one summary row per run — what reading and writing \
         the data costs with no detection at all.\n\n\
         | variant | runs/s | events/s | floor runs/s | ratio |\n|---|---|---|---|---|\n\
         | `process_runs({})`, one call | {} | {} | {} | {:.2}× |\n\
         | `process_runs()` (1000 per call) in a loop | {} | {} | {} | {:.2}× |\n\
         | the same loop, destination switched off (no outbox rows) | {} | {} | {} | {:.2}× |\n\
         | the same loop in two sessions at once (`SKIP LOCKED` shares the runs) | {} | {} | {} | {:.2}× |\n\n\
         Output per pass: {} signals, {} deliveries queued, {} runs that failed to process.\n",
        int(p.runs as f64),
        int(p.events as f64),
        p.runs,
        int(p.one_call),
        int(p.one_call * p.events as f64 / p.runs as f64),
        int(p.floor),
        p.one_call / p.floor,
        int(p.looped),
        int(p.looped * p.events as f64 / p.runs as f64),
        int(p.floor),
        p.looped / p.floor,
        int(p.looped_no_dest),
        int(p.looped_no_dest * p.events as f64 / p.runs as f64),
        int(p.floor),
        p.looped_no_dest / p.floor,
        int(p.two_sessions),
        int(p.two_sessions * p.events as f64 / p.runs as f64),
        int(p.floor),
        p.two_sessions / p.floor,
        int(p.signals as f64),
        int(p.deliveries as f64),
        p.failed
    );
}

fn latency_section(s: &mut String, l: &latency::Result) {
    let _ = writeln!(
        s,
        "## 3. Alert latency\n\n\
         The background worker runs in database `dunetrace` with default settings \
         (`worker_naptime` 10 s). One webhook destination (with a signing secret) points to a \
         receiver in the bench process (`std::net::TcpListener`, answers 200 at once). Each run \
         (24 events, a tool loop, so it always alerts) is ingested in two batches; the clock starts \
         right after the terminal batch's `ingest()` returns (autocommit: after its COMMIT) and \
         stops when the first webhook for that run_id has been read by the receiver. Runs are \
         sent one at a time, 5–25 ms apart; 5 warm-up runs are not counted. **Baseline**: the \
         floor of any push design on the same machine and receiver — `SELECT pg_notify(…)` \
         committed, received by a `LISTEN`ing connection in the bench process, which POSTs to \
         the receiver at once.\n\n\
         | | p50 | p90 | p99 | max | runs | missed |\n|---|---|---|---|---|---|---|\n\
         | dunetrace (commit → webhook) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |\n\
         | NOTIFY → listener → POST | {:.2} ms | | {:.2} ms | | {} | |\n\n\
         A polling worker (the original's design) adds half its polling interval on average: \
         5 s at the 10 s default naptime.\n",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms,
        l.runs,
        l.missed,
        l.floor_p50_ms,
        l.floor_p99_ms,
        l.runs
    );
}

fn mem_row(s: &mut String, label: &str, m: &Mem, extra: &str) {
    let _ = writeln!(
        s,
        "| {label} | {} | {} | {} | {} |{extra}",
        mib(m.vm_rss),
        mib(m.rss_anon),
        mib(m.rss_file),
        mib(m.rss_shmem)
    );
}

fn memory_section(s: &mut String, m: &memory::Result) {
    let _ = writeln!(
        s,
        "## 4. Worker footprint\n\n\
         After the latency runs, chunks of runs (20–60 events, 40 % failing) are ingested by two \
         clients while the worker processes them and sends their alerts to the receiver; after \
         each chunk, once every run is processed and every alert delivered, `/proc/<pid>/status` \
         of the worker (`pg_stat_activity.backend_type = 'dunetrace'`) is read once it waits on \
         its latch again. `VmRSS` counts \
         shared-buffer pages the process has touched (`RssShmem`), which grows towards \
         `shared_buffers` in any backend that reads a lot; the worker's own memory is `RssAnon`. \
         **Baseline**: a fresh backend of the same cluster after one query.\n\n\
         | processed runs | VmRSS MiB | RssAnon MiB | RssFile MiB | RssShmem MiB | runs/s end to end | alerts sent |\n\
         |---|---|---|---|---|---|---|"
    );
    mem_row(s, "fresh backend (baseline)", &m.fresh_backend, " | |");
    mem_row(s, "worker, before", &m.start, " | |");
    for p in &m.points {
        mem_row(
            s,
            &int(p.processed as f64),
            &p.worker,
            &format!(" {} | {} |", int(p.runs_per_s), int(p.alerts as f64)),
        );
    }
    let (per_10k, span) = rss_trend(m);
    let _ = writeln!(
        s,
        "\nEach reading is taken once the worker is idle again (waiting on its latch); before it \
         sleeps the worker hands memory freed by the round back to the operating system \
         (`malloc_trim`), so `RssAnon` is what it keeps between bursts, not the peak of its last \
         1000-run batch. The curve: after the first chunk (caches, kept plans, the HTTP client) \
         the least-squares trend is {per_10k:+.0} KiB per 10,000 runs ({span:+.0} KiB over the \
         measured span){}{}.\n",
        if rss_flat(m) {
            " — flat: it does not grow with the number of processed runs"
        } else {
            " — it grows with the number of processed runs"
        },
        if m.pid_changed {
            " (the worker restarted during the run)"
        } else {
            ""
        }
    );
}

/// log-log slope of y against x between the first and last points.
fn exponent(x0: f64, y0: f64, x1: f64, y1: f64) -> f64 {
    (y1 / y0).ln() / (x1 / x0).ln()
}

fn scaling_section(
    s: &mut String,
    by_len: Option<&Vec<scaling::Point>>,
    by_size: Option<&Vec<scaling::Point>>,
) {
    let _ = writeln!(s, "## 5. Scaling\n");
    if let Some(pts) = by_len.filter(|p| !p.is_empty()) {
        let _ = writeln!(
            s,
            "### With run length\n\n\
             Per point: runs of exactly N events, ingested in batches of 100 by one client (against \
             the plain insert, tables emptied first), then processed with `process_runs()` in a \
             loop (against the SQL floor over the same runs).\n\n\
             | events/run | runs (events) | ingest events/s | plain events/s | ratio | process runs/s | µs per event | floor runs/s | ratio |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for p in pts {
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {} | {:.2}× | {} | {:.1} | {} | {:.2}× |",
                p.x,
                int(p.runs as f64),
                int(p.events as f64),
                int(p.ingest),
                int(p.ingest_plain),
                p.ingest / p.ingest_plain,
                int(p.process),
                1e6 / (p.process * p.x as f64),
                int(p.floor),
                p.process / p.floor
            );
        }
        let (a, b) = (&pts[0], &pts[pts.len() - 1]);
        let run_cost = exponent(a.x as f64, 1.0 / a.process, b.x as f64, 1.0 / b.process);
        let floor_cost = exponent(a.x as f64, 1.0 / a.floor, b.x as f64, 1.0 / b.floor);
        let _ = writeln!(
            s,
            "\nThe curve: from {} to {} events per run, processing time per run grows as \
             N^{:.2} (1.00 = linear; the floor grows as N^{:.2}), i.e. the cost per event goes \
             from {:.1} µs to {:.1} µs; ingest throughput per event changes by {:+.0} % \
             (plain insert {:+.0} %).\n",
            a.x,
            b.x,
            run_cost,
            floor_cost,
            1e6 / (a.process * a.x as f64),
            1e6 / (b.process * b.x as f64),
            (b.ingest / a.ingest - 1.0) * 100.0,
            (b.ingest_plain / a.ingest_plain - 1.0) * 100.0
        );
    }
    if let Some(pts) = by_size.filter(|p| !p.is_empty()) {
        let _ = writeln!(
            s,
            "### With table size\n\n\
             `dunetrace.events` and the baseline table are filled with finished, processed runs of \
             40 events of another agent (with their `runs` and `processed_runs` rows), vacuumed, \
             analysed and checkpointed; then at each size fresh runs (20–60 events) are ingested \
             in batches of 100 by one client (against the plain insert into the equally filled \
             baseline table) and processed (against the SQL floor).\n\n\
             | events in table | table + indexes | ingest events/s | plain events/s | ratio | process runs/s | floor runs/s | ratio |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for p in pts {
            let _ = writeln!(
                s,
                "| {} | {:.2} GB | {} | {} | {:.2}× | {} | {} | {:.2}× |",
                int(p.x as f64),
                p.table_bytes as f64 / 1e9,
                int(p.ingest),
                int(p.ingest_plain),
                p.ingest / p.ingest_plain,
                int(p.process),
                int(p.floor),
                p.process / p.floor
            );
        }
        let (a, b) = (&pts[0], &pts[pts.len() - 1]);
        let _ = writeln!(
            s,
            "\nThe curve: from {} to {} events in the table ({:.1}× larger), ingest throughput \
             changes by {:+.0} % (plain insert {:+.0} %) and processing throughput by {:+.0} % \
             (floor {:+.0} %): lookups go through b-tree indexes (events by run_id, pending runs \
             through a partial index, baselines through the newest 50 rows of the agent version), \
             so cost grows with the index depth (logarithmically) and with how much of the indexes \
             still fits in memory, not with the number of rows.\n",
            int(a.x as f64),
            int(b.x as f64),
            b.x as f64 / a.x as f64,
            (b.ingest / a.ingest - 1.0) * 100.0,
            (b.ingest_plain / a.ingest_plain - 1.0) * 100.0,
            (b.process / a.process - 1.0) * 100.0,
            (b.floor / a.floor - 1.0) * 100.0
        );
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         Generated by `bash bench/run.sh{}` in {:.0} s. Every figure below is measured against \
         its baseline in the same run on the machine described. Reproduce with `bash bench/run.sh` \
         (full run, about 20 minutes) or `bash bench/run.sh --quick` (smoke run, under a minute \
         once the extension is built, small sizes: its figures are not comparable). \
         The bench is the `dunetrace-bench` crate in `bench/`; it starts its own cluster in \
         `/var/tmp/dunetrace-bench` on port 54350.\n",
        if r.quick { " --quick" } else { "" },
        r.seconds
    );
    if r.quick {
        let _ = writeln!(
            s,
            "> **Smoke run (`--quick`)**: sizes are far below the targets' conditions, so no figure is judged against them.\n"
        );
    }
    machine_section(&mut s, r);
    summary(&mut s, r);
    if let Some(c) = &r.ingest {
        ingest_section(&mut s, c);
    }
    if let Some(p) = &r.process {
        process_section(&mut s, p);
    }
    if let Some(l) = &r.latency {
        latency_section(&mut s, l);
    }
    if let Some(m) = &r.memory {
        memory_section(&mut s, m);
    }
    if r.by_length.is_some() || r.by_size.is_some() {
        scaling_section(&mut s, r.by_length.as_ref(), r.by_size.as_ref());
    }
    if let Some(st) = &r.storm {
        storm_section(&mut s, st, r.latency.as_ref());
    }
    // Read when the report is written, so the log can be edited without rebuilding.
    let log = concat!(env!("CARGO_MANIFEST_DIR"), "/OPTIMISATIONS.md");
    match std::fs::read_to_string(log) {
        Ok(text) => s.push_str(&text),
        Err(e) => {
            let _ = writeln!(s, "## Optimisations\n\n(could not read {log}: {e})");
        }
    }
    s
}

fn storm_section(s: &mut String, st: &[storm::Result], l: Option<&latency::Result>) {
    let _ = writeln!(
        s,
        "## 6. Alert storm\n\n\
         A bad deploy: several clients ingest realistic runs (about 20 events, 60 % failing in \
         one of eight patterns) at about 110–130 runs per second each for the period below, \
         with the worker running and one signed webhook destination (one delivery per live \
         signal, 8 requests in flight on kept connections) to a local receiver: once answering \
         every request at once, once refusing each delivery's first attempt with 503 (retried \
         after `dunetrace.http_retry_backoff` = 200 ms). Processing lag is a run's last batch \
         committed → the run processed (server clock), over the runs processed while the load \
         ran; alert latency is the last batch committed → the alert accepted by the receiver; \
         drain is the load's end → no finished run waiting and no delivery queued. Baseline: \
         the alert-latency floor of measurement 3{}.\n\n\
         | receiver | clients × s | runs (failing) | lag p50 / p99 | deliveries | deliveries/s | alert p50 / p99 | drained after |\n\
         |---|---|---|---|---|---|---|---|",
        l.map(|l| format!(
            " (NOTIFY → listener → POST: p50 {:.2} ms, p99 {:.2} ms)",
            l.floor_p50_ms, l.floor_p99_ms
        ))
        .unwrap_or_default()
    );
    for x in st.iter().filter(|x| x.mode != storm::CAPACITY) {
        let _ = writeln!(
            s,
            "| {} | {} × {:.0} | {} ({:.0} %) | {:.0} / {:.0} ms | {} | {} | {:.0} / {:.0} ms | {} |",
            x.mode,
            x.clients,
            x.seconds,
            int(x.runs as f64),
            x.failing_share * 100.0,
            x.lag_p50_ms,
            x.lag_p99_ms,
            int(x.deliveries as f64),
            int(x.deliveries_per_sec),
            x.alert_p50_ms,
            x.alert_p99_ms,
            if x.drained {
                format!("{:.1} s", x.drain_secs)
            } else {
                format!("not within {:.0} s", x.drain_secs)
            }
        );
    }
    for x in st.iter().filter(|x| x.mode == storm::CAPACITY) {
        let _ = writeln!(
            s,
            "\nDelivery capacity: {} webhook deliveries queued at once (the backlog a storm leaves) \
             were all received {:.1} s after the worker was woken: **{} deliveries/s** from the \
             first to the last recorded, on kept connections, 8 in flight.",
            int(x.deliveries as f64),
            x.drain_secs,
            int(x.deliveries_per_sec)
        );
    }
    s.push('\n');
}
