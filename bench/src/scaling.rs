//! Measurement 5: how ingest and processing cost grows with run length (10 → 1,000 events per
//! run) and with table size (1 M → 10 M events), each point against its baseline.

use crate::db::Ctx;
use crate::ingest::{compare, workload};
use crate::process::{floor, process_loop};
use postgres::Client;

#[derive(Clone, Debug, Default)]
pub struct Point {
    /// Events per run, or events in the table before the point was measured.
    pub x: i64,
    pub runs: usize,
    pub events: usize,
    pub ingest: f64,
    pub ingest_plain: f64,
    pub process: f64,
    pub floor: f64,
    /// dunetrace.events with its indexes, bytes (table-size points).
    pub table_bytes: i64,
}

/// Finished runs not processed yet, in processing order.
fn pending(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT run_id FROM dunetrace.runs WHERE processed_trigger IS NULL \
            AND terminal_event IS NOT NULL ORDER BY last_seq, last_pos",
        &[],
    )
    .expect("pending runs")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Where a point is measured.
struct Target<'a> {
    ctx: &'a Ctx,
    db: &'a str,
    key: &'a str,
}

/// Ingest (batch 100, 1 client) of `events` events of runs of `lo..=hi` events against the
/// plain insert, then processing of those runs against the floor.
fn point(
    t: &Target<'_>,
    c: &mut Client,
    x: i64,
    seed: u64,
    events: usize,
    (lo, hi): (usize, usize),
    reset: bool,
) -> Point {
    let (ctx, db, key) = (t.ctx, t.db, t.key);
    let (runs, batches) = workload(seed, 1, events, lo, hi, 100);
    let events: usize = batches.iter().flatten().map(|(_, n)| n).sum();
    let (ingest, plain) = compare(ctx, db, key, c, &batches, 1, reset);
    c.batch_execute("ANALYZE dunetrace.events, dunetrace.runs")
        .expect("analyze");
    let ids = pending(c);
    let (n, secs) = process_loop(c, None);
    assert_eq!(n as usize, ids.len());
    let floor_secs = floor(c, &ids);
    Point {
        x,
        runs: runs[0].len(),
        events,
        ingest,
        ingest_plain: plain,
        process: n as f64 / secs,
        floor: ids.len() as f64 / floor_secs,
        table_bytes: 0,
    }
}

pub fn by_run_length(ctx: &Ctx) -> Vec<Point> {
    const DB: &str = "bench_len";
    let key = ctx.fresh_db(DB);
    let mut c = ctx.connect(DB);
    let lengths: &[usize] = if ctx.quick {
        &[10, 100, 1000]
    } else {
        &[10, 30, 100, 300, 1000]
    };
    let events = if ctx.quick { 20_000 } else { 200_000 };
    let mut out = Vec::new();
    for &len in lengths {
        c.batch_execute(
            "TRUNCATE dunetrace.processed_runs, dunetrace.failure_signals, dunetrace.issues, \
                      dunetrace.deliveries, bench.floor_out CASCADE",
        )
        .expect("reset");
        let t = Target {
            ctx,
            db: DB,
            key: &key,
        };
        let p = point(
            &t,
            &mut c,
            len as i64,
            500 + len as u64,
            events,
            (len, len),
            true,
        );
        eprintln!(
            "  {len:>4} events/run: ingest {:>8.0} ev/s (plain {:>8.0}, ratio {:.2}); \
             process {:>7.0} runs/s = {:>8.0} ev/s (floor {:>7.0} runs/s)",
            p.ingest,
            p.ingest_plain,
            p.ingest / p.ingest_plain,
            p.process,
            p.process * len as f64,
            p.floor
        );
        out.push(p);
    }
    out
}

/// Adds filler events `lo..hi` (finished, processed runs of 40 events of another agent) to
/// both `dunetrace.events` and the baseline table, with their runs and processed_runs rows.
fn fill(c: &mut Client, lo: i64, hi: i64) {
    const ROWS: &str = "SELECT '00000000-0000-4000-8000-000000000000'::uuid, \
            (ARRAY['llm.called','llm.responded','tool.called','tool.responded'])[1 + (g % 4)::int], \
            md5('fill' || (g / 40))::uuid::text, 'filler-agent', 'f0f0f0f0', ((g % 40) / 2)::int, \
            1700000000 + g * 0.5, \
            CASE g % 4 \
              WHEN 0 THEN jsonb_build_object('model', 'gpt-4o', 'prompt_tokens', 500 + g % 700) \
              WHEN 1 THEN jsonb_build_object('output_hash', md5(g::text) || md5((g + 1)::text), \
                   'output_length', 200, 'finish_reason', 'tool_calls', 'completion_tokens', 40, \
                   'latency_ms', 900) \
              WHEN 2 THEN jsonb_build_object('tool_name', 'search_orders', \
                   'args_hash', md5(g::text) || md5((g + 7)::text)) \
              ELSE jsonb_build_object('tool_name', 'search_orders', 'success', true, \
                   'output_length', 300, 'latency_ms', 120) END \
         FROM generate_series($1::int8, $2::int8 - 1) g";
    const COLS: &str =
        "(batch_id, event_type, run_id, agent_id, agent_version, step_index, \"timestamp\", payload)";
    let step = 500_000;
    let mut at = lo;
    while at < hi {
        let to = (at + step).min(hi);
        for table in ["dunetrace.events", "bench.events_plain"] {
            c.execute(&format!("INSERT INTO {table} {COLS} {ROWS}"), &[&at, &to])
                .expect("fill events");
        }
        let (r0, r1) = (at / 40, to / 40);
        c.execute(
            "INSERT INTO dunetrace.runs (run_id, agent_id, agent_version, has_started, \
                 terminal_event, event_count, max_step, processed_trigger, last_seq) \
             SELECT md5('fill' || r)::uuid::text, 'filler-agent', 'f0f0f0f0', true, \
                    'run.completed', 40, 19, 'run.completed', 0 \
             FROM generate_series($1::int8, $2::int8 - 1) r ON CONFLICT DO NOTHING",
            &[&r0, &r1],
        )
        .expect("fill runs");
        c.execute(
            "INSERT INTO dunetrace.processed_runs (run_id, agent_id, agent_version, trigger, \
                 completed) \
             SELECT md5('fill' || r)::uuid::text, 'filler-agent', 'f0f0f0f0', 'run.completed', true \
             FROM generate_series($1::int8, $2::int8 - 1) r ON CONFLICT DO NOTHING",
            &[&r0, &r1],
        )
        .expect("fill processed_runs");
        at = to;
    }
}

pub fn by_table_size(ctx: &Ctx) -> Vec<Point> {
    const DB: &str = "bench_size";
    let key = ctx.fresh_db(DB);
    let mut c = ctx.connect(DB);
    let sizes: &[i64] = if ctx.quick {
        &[100_000, 200_000]
    } else {
        &[1_000_000, 2_000_000, 5_000_000, 10_000_000]
    };
    let events = if ctx.quick { 4_000 } else { 100_000 };
    let mut filled = 0i64;
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let have: i64 = c
            .query_one("SELECT count(*) FROM dunetrace.events", &[])
            .expect("count")
            .get(0);
        if have < size {
            fill(&mut c, filled, filled + (size - have));
            filled += size - have;
        }
        c.batch_execute("VACUUM ANALYZE").expect("vacuum");
        c.batch_execute("CHECKPOINT").expect("checkpoint");
        let rows: i64 = c
            .query_one("SELECT count(*) FROM dunetrace.events", &[])
            .expect("count")
            .get(0);
        let bytes: i64 = c
            .query_one("SELECT pg_total_relation_size('dunetrace.events')", &[])
            .expect("size")
            .get(0);
        let t = Target {
            ctx,
            db: DB,
            key: &key,
        };
        let mut p = point(&t, &mut c, rows, 700 + i as u64, events, (20, 60), false);
        p.table_bytes = bytes;
        eprintln!(
            "  {rows:>9} events ({:.1} GB): ingest {:>8.0} ev/s (plain {:>8.0}, ratio {:.2}); \
             process {:>6.0} runs/s (floor {:>6.0})",
            bytes as f64 / 1e9,
            p.ingest,
            p.ingest_plain,
            p.ingest / p.ingest_plain,
            p.process,
            p.floor
        );
        out.push(p);
    }
    drop(c);
    // Several GB: not worth keeping between runs.
    ctx.connect("postgres")
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .expect("drop the table-size database");
    out
}
