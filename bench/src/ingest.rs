//! Measurement 1: ingest throughput through `dunetrace.ingest()` against a plain
//! `INSERT … SELECT FROM jsonb_to_recordset(…)` of the same rows into a table of the same shape
//! and indexes.

use crate::db::{send_batches, Ctx, Path};
use crate::gen;
use postgres::Client;

pub const DB: &str = "bench_ingest";

/// One (batch size, clients) cell.
#[derive(Clone, Debug)]
pub struct Cell {
    pub batch: usize,
    pub clients: usize,
    pub events: usize,
    /// events/s
    pub dunetrace: f64,
    pub plain: f64,
}

impl Cell {
    pub fn ratio(&self) -> f64 {
        self.dunetrace / self.plain
    }
}

/// Empties the ingest targets and checkpoints, so both paths start from the same state.
pub fn reset(c: &mut Client) {
    c.batch_execute("TRUNCATE dunetrace.events, dunetrace.runs, bench.events_plain; CHECKPOINT")
        .expect("reset the ingest tables");
}

/// Per client: the runs generated, and their events as (JSON text, event count) batches.
pub type Workload = (Vec<Vec<gen::Run>>, Vec<Vec<(String, usize)>>);

/// Per-client batches of `batch` events from `events_per_client` events of runs of `lo..=hi`
/// events (4 runs in flight per client, interleaved as a client sends them).
pub fn workload(
    seed: u64,
    clients: usize,
    events_per_client: usize,
    lo: usize,
    hi: usize,
    batch: usize,
) -> Workload {
    let avg = (lo + hi) / 2;
    let runs_per_client = (events_per_client / avg).max(1);
    let runs: Vec<Vec<gen::Run>> = (0..clients)
        .map(|i| gen::runs(seed * 100 + i as u64, runs_per_client, lo, hi))
        .collect();
    let batches = runs
        .iter()
        .map(|rs| gen::batches(&gen::stream(rs, 4), batch))
        .collect();
    (runs, batches)
}

/// Runs both paths over the same batches (`reps` times, alternating which goes first, tables
/// emptied before each); returns events/s for (dunetrace, plain).
pub fn compare(
    ctx: &Ctx,
    db: &str,
    key: &str,
    c: &mut Client,
    batches: &[Vec<(String, usize)>],
    reps: usize,
    reset_between: bool,
) -> (f64, f64) {
    let events: usize = batches.iter().flatten().map(|(_, n)| n).sum();
    let (mut td, mut tp) = (0.0, 0.0);
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [Path::Dunetrace, Path::Plain]
        } else {
            [Path::Plain, Path::Dunetrace]
        };
        if reset_between {
            reset(c);
        }
        for p in order {
            if !path_enabled(p) {
                continue;
            }
            let took = send_batches(ctx, db, key, p, batches).as_secs_f64();
            match p {
                Path::Dunetrace => td += took,
                Path::Plain => tp += took,
            }
        }
    }
    let n = (events * reps) as f64;
    (n / td, n / tp)
}

/// Profiling aid: `DUNETRACE_BENCH_PATHS=dunetrace` (or `plain`) runs only that path of each
/// comparison, so a profiler sees one path alone (the other figure is then meaningless).
fn path_enabled(p: Path) -> bool {
    match std::env::var("DUNETRACE_BENCH_PATHS") {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .any(|x| x.eq_ignore_ascii_case(&format!("{p:?}"))),
        _ => true,
    }
}

pub fn measure(ctx: &Ctx) -> Vec<Cell> {
    let key = ctx.fresh_db(DB);
    let mut c = ctx.connect(DB);
    let mut out = Vec::new();
    let reps = if ctx.quick { 1 } else { 2 };
    for &batch in &ctx.batches {
        // Events per client: enough for a few seconds at the expected rate.
        let per_client = match (batch, ctx.quick) {
            (1, true) => 400,
            (1, false) => 4_000,
            (10, true) => 2_000,
            (10, false) => 25_000,
            (_, true) => 8_000,
            (_, false) => 100_000,
        };
        for &clients in &ctx.clients {
            let (_, batches) = workload(
                batch as u64 * 10 + clients as u64,
                clients,
                per_client,
                20,
                60,
                batch,
            );
            let (d, p) = compare(ctx, DB, &key, &mut c, &batches, reps, true);
            let cell = Cell {
                batch,
                clients,
                events: per_client * clients,
                dunetrace: d,
                plain: p,
            };
            eprintln!(
                "  ingest batch {batch:>3} × {clients} client(s): dunetrace {:>9.0} ev/s, plain {:>9.0} ev/s, ratio {:.2}",
                cell.dunetrace,
                cell.plain,
                cell.ratio()
            );
            out.push(cell);
        }
    }
    out
}
