//! `dunetrace.process_runs()`: claim finished runs, evaluate them in the core, write results.
//!
//! One call is one batch in the caller's transaction: claim (SKIP LOCKED), then per chunk of
//! runs: load events, the agents' detector settings and recent metrics → `pipeline::evaluate`
//! per run → insert signals, upsert processed_runs, mark runs processed. Runs are evaluated in
//! the order they finished, and each run's baselines include the runs evaluated before it in
//! the same batch.

use crate::errors::{invalid, raise};
use crate::explain::StoredSignal;
use crate::keys::{oid, Kept};
use crate::{alerts, issues, rows, settings, subxact, wake};
use dunetrace_core::baseline::{RunMetrics, BASELINE_WINDOW};
use dunetrace_core::detect::DetectorConfig;
use dunetrace_core::event::{Event, EventType};
use dunetrace_core::jsonb;
use dunetrace_core::pipeline::{self, Evaluation};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};

thread_local! {
    static CLAIM: Kept = const {
        Kept::new(
            "SELECT run_id, \
                    COALESCE(terminal_event, CASE WHEN has_started THEN 'stalled' ELSE 'orphaned' END), \
                    processed_trigger IS NOT NULL, agent_id, agent_version, event_count \
             FROM dunetrace.runs \
             WHERE (processed_trigger IS NULL \
                    OR (processed_trigger = 'stalled' AND terminal_event IS NOT NULL)) \
               AND (terminal_event IS NOT NULL \
                    OR (has_started AND last_received_at <= now() - make_interval(secs => $2)) \
                    OR (NOT has_started \
                        AND last_received_at <= now() - make_interval(secs => $3))) \
             ORDER BY last_seq, last_pos \
             LIMIT $1 \
             FOR UPDATE SKIP LOCKED",
            &[oid::INT4, oid::FLOAT8, oid::FLOAT8],
        )
    };
    // No ORDER BY: sorting every event of the batch (payloads included) in the executor costs
    // more than ordering each run's few events by id here.
    static LOAD_EVENTS: Kept = const {
        Kept::new(
            "SELECT run_id, event_type, step_index, \"timestamp\", payload, agent_id, \
                    agent_version, parent_run_id, id \
             FROM dunetrace.events WHERE run_id = ANY($1)",
            &[oid::TEXT_ARRAY],
        )
    };
    static PRIOR_SIGNALS: Kept = const {
        Kept::new(
            "SELECT run_id, failure_type FROM dunetrace.failure_signals WHERE run_id = ANY($1)",
            &[oid::TEXT_ARRAY],
        )
    };
    static LOAD_CONFIG: Kept = const {
        Kept::new(
            "SELECT detector, params::text FROM dunetrace.detector_settings \
             WHERE agent_id IN ('default', $1) ORDER BY agent_id <> 'default', detector",
            &[oid::TEXT],
        )
    };
    static LOAD_RECENT: Kept = const {
        Kept::new(
            "SELECT metrics::text FROM dunetrace.processed_runs \
             WHERE agent_id = $1 AND agent_version = $2 AND completed AND run_id <> ALL($3) \
             ORDER BY seq DESC LIMIT $4",
            &[oid::TEXT, oid::TEXT, oid::TEXT_ARRAY, oid::INT8],
        )
    };
    static SIGNAL_IDS: Kept = const {
        Kept::new(
            "SELECT array_agg(nextval('dunetrace.failure_signals_id_seq')), \
                    extract(epoch FROM now())::float8 \
             FROM generate_series(1, $1)",
            &[oid::INT8],
        )
    };
    static INSERT_SIGNALS: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.failure_signals (id, failure_type, severity, run_id, agent_id, \
                 agent_version, step_index, confidence, evidence, shadow, co_signal_count) \
             OVERRIDING SYSTEM VALUE \
             SELECT id, t, sv, r, a, v, st, c, e::jsonb, sh, co \
             FROM unnest($11::int8[], $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::int4[], $7::float8[], $8::text[], $9::bool[], $10::int4[]) \
                  AS u(id, t, sv, r, a, v, st, c, e, sh, co)",
            &[
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::INT4_ARRAY,
                oid::FLOAT8_ARRAY,
                oid::TEXT_ARRAY,
                oid::BOOL_ARRAY,
                oid::INT4_ARRAY,
                oid::INT8_ARRAY,
            ],
        )
    };
    static UPSERT_PROCESSED: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.processed_runs AS p (run_id, agent_id, agent_version, \
                 signal_count, trigger, error, completed, metrics) \
             SELECT r, a, v, n, t, err, c, m::jsonb \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], \
                         $6::text[], $7::bool[], $8::text[]) AS u(r, a, v, n, t, err, c, m) \
             ON CONFLICT (run_id) DO UPDATE SET \
                 processed_at = now(), \
                 signal_count = p.signal_count + excluded.signal_count, \
                 trigger = excluded.trigger, \
                 error = excluded.error, \
                 completed = excluded.completed, \
                 metrics = excluded.metrics, \
                 seq = nextval('dunetrace.processed_runs_seq')",
            &[
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::INT4_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::BOOL_ARRAY,
                oid::TEXT_ARRAY,
            ],
        )
    };
    static MARK_PROCESSED: Kept = const {
        Kept::new(
            "UPDATE dunetrace.runs AS r SET processed_trigger = u.t \
             FROM unnest($1::text[], $2::text[]) AS u(id, t) WHERE r.run_id = u.id",
            &[oid::TEXT_ARRAY, oid::TEXT_ARRAY],
        )
    };
}

/// A run claimed for processing.
struct Claimed {
    run_id: String,
    /// `run.completed`, `run.errored`, `stalled` or `orphaned`.
    trigger: String,
    /// Processed before (as stalled): only new failure types are added.
    reevaluated: bool,
    /// The run's owner (the agent of its first event) and first agent version.
    agent_id: String,
    agent_version: String,
    /// Events stored for the run.
    events: i32,
}

impl Claimed {
    /// The outcome of a run that is recorded without loading its events: orphaned, or over
    /// `max_events` (stored before the cap). `None` for a run to evaluate.
    fn not_evaluated(&self, max_events: i32) -> Option<Outcome> {
        if self.trigger == "orphaned" {
            Some(Outcome::Orphaned)
        } else if self.events > max_events {
            Some(Outcome::Errored(format!(
                "the run holds {} events, more than dunetrace.max_events_per_run ({max_events}); \
                 it is not evaluated",
                self.events
            )))
        } else {
            None
        }
    }
}

/// Processes up to `max_runs` finished runs now: completed or errored, or started and silent
/// for `dunetrace.stall_timeout` seconds. Returns how many runs were processed.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn process_runs(max_runs: default!(i32, 1000)) -> i32 {
    if max_runs < 0 {
        invalid("max_runs must not be negative");
    }
    crate::schema::require("process_runs");
    process_batch(max_runs, settings::STALL_TIMEOUT.get()).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("dunetrace.process_runs: {e}"),
        )
    })
}

/// Most runs read, evaluated and written together. A call claims all its runs at once (their
/// locks are held to the end of the transaction) but works through them in chunks, each in
/// its own SPI connection, so the events and results held in memory stay bounded however
/// large `max_runs` is: one call over 10,000 runs costs what ten calls of 1,000 do.
const CHUNK: usize = 1000;
/// Most events loaded for one chunk (a chunk ends early when its runs hold more; a run
/// larger than this is a chunk of its own, and no run holds more than
/// `dunetrace.max_events_per_run`).
const CHUNK_EVENTS: i64 = 100_000;

/// One batch; shared by the SQL function and the background worker. `Err` only when the batch
/// as a whole cannot go on (the caller rolls its transaction back); a run that cannot be
/// evaluated or written is recorded as errored and the others go on.
pub fn process_batch(max_runs: i32, stall_timeout_secs: i32) -> Result<i32, String> {
    if max_runs == 0 {
        return Ok(0);
    }
    let (claimed, again, prior) = Spi::connect_mut(|client| {
        let claimed = claim(client, max_runs, stall_timeout_secs)?;
        // Of the batch, only runs processed before (as stalled) have a processed_runs row that
        // the baselines must not count twice, and signals that must not be stored again.
        let again: Vec<String> = claimed
            .iter()
            .filter(|c| c.reevaluated)
            .map(|c| c.run_id.clone())
            .collect();
        let prior = prior_signal_types(client, &again)?;
        Ok::<_, SpiError>((claimed, again, prior))
    })
    .map_err(|e| e.to_string())?;
    if claimed.is_empty() {
        return Ok(0);
    }
    // Kept across chunks: each run's baselines include the runs evaluated before it.
    let mut batch = Batch {
        again,
        prior,
        configs: HashMap::new(),
        recent: HashMap::new(),
        max_events: settings::MAX_EVENTS_PER_RUN.get(),
    };
    for chunk in chunks(&claimed) {
        // Cancellation (statement_timeout, pg_cancel_backend) and the worker's SIGTERM.
        pg_sys::check_for_interrupts!();
        process_chunk(chunk, &mut batch)?;
    }
    Ok(claimed.len() as i32)
}

/// Splits the claimed runs, in order, into chunks of at most [`CHUNK`] runs and about
/// [`CHUNK_EVENTS`] events.
fn chunks(claimed: &[Claimed]) -> Vec<&[Claimed]> {
    let mut out = Vec::new();
    let (mut start, mut events) = (0usize, 0i64);
    for (i, c) in claimed.iter().enumerate() {
        let n = i64::from(c.events.max(0));
        if i > start && (i - start >= CHUNK || events + n > CHUNK_EVENTS) {
            out.push(&claimed[start..i]);
            start = i;
            events = 0;
        }
        events += n;
    }
    out.push(&claimed[start..]);
    out
}

/// What a call reads once and every chunk uses.
struct Batch {
    /// Runs of the batch processed before (as stalled).
    again: Vec<String>,
    /// Their stored failure types, by run.
    prior: HashMap<String, Vec<String>>,
    /// Detector settings by agent.
    configs: HashMap<String, DetectorConfig>,
    /// Each agent version's baseline window, newest first, updated as runs are evaluated.
    recent: HashMap<(String, String), VecDeque<RunMetrics>>,
    /// `dunetrace.max_events_per_run`: a larger run (stored before the cap) is not loaded.
    max_events: i32,
}

/// What processing decided for one claimed run.
enum Outcome {
    Evaluated(Evaluation),
    /// Could not be evaluated (or its results not stored): recorded with this error.
    Errored(String),
    /// Neither started nor finished, silent past `dunetrace.orphan_timeout`.
    Orphaned,
}

/// Evaluates one chunk of claimed runs, in order, then writes the results: all together in a
/// subtransaction, or, when that fails, run by run, so that a run whose results cannot be
/// stored is recorded as errored and the others are kept.
fn process_chunk(claimed: &[Claimed], batch: &mut Batch) -> Result<(), String> {
    let outcomes = Spi::connect_mut(|client| evaluate_chunk(client, claimed, batch))
        .map_err(|e| e.to_string())?;
    let all = Writes::of(claimed.iter().zip(&outcomes));
    if subxact::run(|| Spi::connect_mut(|client| all.write(client))).is_ok() {
        return Ok(());
    }
    for (c, o) in claimed.iter().zip(&outcomes) {
        let one = Writes::of(std::iter::once((c, o)));
        if let Err(msg) = subxact::run(|| Spi::connect_mut(|client| one.write(client))) {
            pgrx::warning!(
                "dunetrace: could not store the results of run {}: {msg}",
                c.run_id
            );
            let failed = Outcome::Errored(format!("could not store the results: {msg}"));
            let record = Writes::of(std::iter::once((c, &failed)));
            subxact::run(|| Spi::connect_mut(|client| record.write(client)))
                .map_err(|e| format!("could not record run {} as errored: {e}", c.run_id))?;
        }
    }
    Ok(())
}

/// Loads and evaluates one chunk; reads only.
fn evaluate_chunk(
    client: &mut SpiClient<'_>,
    claimed: &[Claimed],
    batch: &mut Batch,
) -> Result<Vec<Outcome>, SpiError> {
    let max_events = batch.max_events;
    let ids: Vec<String> = claimed
        .iter()
        .filter(|c| c.not_evaluated(max_events).is_none())
        .map(|c| c.run_id.clone())
        .collect();
    let mut events = load_events(client, &ids)?;
    let Batch {
        again,
        prior,
        configs,
        recent,
        ..
    } = batch;
    let mut out = Vec::with_capacity(claimed.len());
    for c in claimed {
        if let Some(o) = c.not_evaluated(max_events) {
            out.push(o);
            continue;
        }
        let mut evs = events.remove(&c.run_id).unwrap_or_default();
        // A run is its owner's: events another agent stored under its run_id (possible only
        // before 0.2.0 refused them) take no part in its evaluation.
        evs.retain(|e| e.agent_id == c.agent_id);
        let Some(first) = evs.first() else {
            out.push(Outcome::Errored("the run has no events".into()));
            continue;
        };
        let key = (first.agent_id.clone(), first.agent_version.clone());
        if !configs.contains_key(&key.0) {
            let cfg = load_config(client, &key.0)?;
            configs.insert(key.0.clone(), cfg);
        }
        if !recent.contains_key(&key) {
            let r = load_recent(client, &key.0, &key.1, again)?;
            recent.insert(key.clone(), r);
        }
        let cfg = &configs[&key.0];
        let history = recent.get_mut(&key).expect("inserted above");
        let already = prior.get(&c.run_id).map(Vec::as_slice).unwrap_or(&[]);
        let hist = history.make_contiguous();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pipeline::evaluate(evs, hist, cfg, already)
        }));
        match result {
            Ok(eval) => {
                if eval.metrics.completed {
                    history.push_front(eval.metrics.clone());
                    history.truncate(BASELINE_WINDOW);
                }
                out.push(Outcome::Evaluated(eval));
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into());
                pgrx::warning!("dunetrace: could not process run {}: {msg}", c.run_id);
                out.push(Outcome::Errored(format!("evaluation failed: {msg}")));
            }
        }
    }
    Ok(out)
}

fn claim(
    client: &mut SpiClient<'_>,
    max_runs: i32,
    stall_timeout_secs: i32,
) -> Result<Vec<Claimed>, SpiError> {
    let stmt = CLAIM.with(|k| k.get(client))?;
    let rows = client.update(
        stmt,
        None,
        &[
            max_runs.into(),
            f64::from(stall_timeout_secs).into(),
            f64::from(settings::ORPHAN_TIMEOUT.get()).into(),
        ],
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(Claimed {
            run_id: row.get(1)?.unwrap_or_default(),
            trigger: row.get(2)?.unwrap_or_default(),
            reevaluated: row.get(3)?.unwrap_or(false),
            agent_id: row.get(4)?.unwrap_or_default(),
            agent_version: row.get(5)?.unwrap_or_default(),
            events: row.get(6)?.unwrap_or_default(),
        });
    }
    Ok(out)
}

fn load_events(
    client: &mut SpiClient<'_>,
    ids: &[String],
) -> Result<HashMap<String, Vec<Event>>, SpiError> {
    let stmt = LOAD_EVENTS.with(|k| k.get(client))?;
    let rows = client.select(stmt, None, &[ids.to_vec().into()])?;
    let mut by_run: HashMap<String, Vec<(i64, Event)>> = HashMap::with_capacity(ids.len());
    use rows::Col::*;
    let cols = [Text, Text, Int4, Float8, Jsonb, Text, Text, Text, Int8];
    rows::each_row(&rows, &cols, |row| {
        // Borrowed from the SPI tuple: only what an Event keeps is copied.
        let run_id = row.text(0).unwrap_or_default();
        let Some(event_type) = row.text(1).and_then(EventType::parse) else {
            return;
        };
        let payload = row
            .jsonb(4)
            .and_then(|b| jsonb::read_payload(b).ok())
            .unwrap_or_default();
        let id = row.int8(8).unwrap_or_default();
        let event = Event {
            event_type,
            run_id: run_id.to_string(),
            agent_id: row.text(5).unwrap_or_default().to_string(),
            agent_version: row.text(6).unwrap_or_default().to_string(),
            step_index: row.int4(2).unwrap_or_default(),
            timestamp: row.float8(3).unwrap_or_default(),
            payload,
            parent_run_id: row.text(7).map(str::to_string),
        };
        match by_run.get_mut(run_id) {
            Some(evs) => evs.push((id, event)),
            None => {
                by_run.insert(run_id.to_string(), vec![(id, event)]);
            }
        }
    })?;
    // Each run's events in id order (ids are unique, so the order is total).
    let out = by_run
        .into_iter()
        .map(|(run, mut evs)| {
            evs.sort_unstable_by_key(|(id, _)| *id);
            (run, evs.into_iter().map(|(_, e)| e).collect())
        })
        .collect();
    Ok(out)
}

/// The failure types already stored for runs processed before (`again`), by run.
fn prior_signal_types(
    client: &mut SpiClient<'_>,
    again: &[String],
) -> Result<HashMap<String, Vec<String>>, SpiError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if again.is_empty() {
        return Ok(out);
    }
    let stmt = PRIOR_SIGNALS.with(|k| k.get(client))?;
    let rows = client.select(stmt, None, &[again.to_vec().into()])?;
    for row in rows {
        let run: String = row.get(1)?.unwrap_or_default();
        out.entry(run)
            .or_default()
            .push(row.get(2)?.unwrap_or_default());
    }
    Ok(out)
}

/// The agent's effective detector configuration: `'default'` rows, then the agent's own.
pub fn load_config(client: &SpiClient<'_>, agent_id: &str) -> Result<DetectorConfig, SpiError> {
    let stmt = LOAD_CONFIG.with(|k| k.get(client))?;
    let rows = client.select(stmt, None, &[agent_id.into()])?;
    let mut layers: Vec<(String, Map<String, Value>)> = Vec::new();
    for row in rows {
        let detector: String = row.get(1)?.unwrap_or_default();
        let text: String = row.get(2)?.unwrap_or_default();
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) {
            layers.push((detector, m));
        }
    }
    Ok(DetectorConfig::from_layers(
        layers.iter().map(|(d, m)| (d.as_str(), m)),
    ))
}

fn load_recent(
    client: &SpiClient<'_>,
    agent_id: &str,
    agent_version: &str,
    exclude: &[String],
) -> Result<VecDeque<RunMetrics>, SpiError> {
    let stmt = LOAD_RECENT.with(|k| k.get(client))?;
    let rows = client.select(
        stmt,
        None,
        &[
            agent_id.into(),
            agent_version.into(),
            exclude.to_vec().into(),
            (BASELINE_WINDOW as i64).into(),
        ],
    )?;
    let mut out = VecDeque::new();
    for row in rows {
        let text: Option<String> = row.get(1)?;
        if let Some(m) = text
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| RunMetrics::from_json(&v))
        {
            out.push_back(m);
        }
    }
    Ok(out)
}

/// Everything one batch writes, as column arrays for `unnest`.
#[derive(Default)]
struct Writes {
    // failure_signals
    s_type: Vec<String>,
    s_severity: Vec<String>,
    s_run: Vec<String>,
    s_agent: Vec<String>,
    s_version: Vec<String>,
    s_step: Vec<i32>,
    s_conf: Vec<f64>,
    s_evidence: Vec<String>,
    /// The same evidence as objects, for the outbox (no need to parse back what was printed).
    s_evidence_map: Vec<Map<String, Value>>,
    s_shadow: Vec<bool>,
    s_co: Vec<i32>,
    // processed_runs
    p_run: Vec<String>,
    p_agent: Vec<String>,
    p_version: Vec<String>,
    p_count: Vec<i32>,
    p_trigger: Vec<String>,
    p_error: Vec<Option<String>>,
    p_completed: Vec<bool>,
    p_metrics: Vec<Option<String>>,
    // issues: (agent, live types) per successfully evaluated run, in processing order
    issue_runs: Vec<(String, Vec<String>)>,
}

impl Writes {
    /// The writes for these runs' outcomes, in order.
    fn of<'a>(runs: impl Iterator<Item = (&'a Claimed, &'a Outcome)>) -> Writes {
        let mut w = Writes::default();
        for (c, o) in runs {
            match o {
                Outcome::Evaluated(e) => w.push(c, e),
                Outcome::Errored(msg) => w.push_run(c, Some(msg.clone())),
                Outcome::Orphaned => w.push_run(c, None),
            }
        }
        w
    }

    fn push(&mut self, c: &Claimed, e: &Evaluation) {
        self.issue_runs.push((
            e.agent_id.clone(),
            e.signals
                .iter()
                .filter(|s| !s.shadow)
                .map(|s| s.failure_type.as_str().to_string())
                .collect(),
        ));
        for s in &e.signals {
            self.s_type.push(s.failure_type.as_str().into());
            self.s_severity.push(s.severity.as_str().into());
            self.s_run.push(e.run_id.clone());
            self.s_agent.push(e.agent_id.clone());
            self.s_version.push(e.agent_version.clone());
            self.s_step.push(s.step_index);
            self.s_conf.push(s.confidence);
            self.s_shadow.push(s.shadow);
            self.s_co.push(s.co_signal_count);
            self.s_evidence
                .push(serde_json::to_string(&s.evidence).expect("a JSON map serialises"));
            self.s_evidence_map.push(s.evidence.clone());
        }
        self.p_run.push(c.run_id.clone());
        self.p_agent.push(e.agent_id.clone());
        self.p_version.push(e.agent_version.clone());
        self.p_count.push(e.signals.len() as i32);
        self.p_trigger.push(c.trigger.clone());
        self.p_error.push(None);
        self.p_completed.push(e.metrics.completed);
        self.p_metrics.push(Some(e.metrics.to_json_text()));
    }

    /// A processed_runs row with no evaluation: an errored or orphaned run.
    fn push_run(&mut self, c: &Claimed, error: Option<String>) {
        self.p_run.push(c.run_id.clone());
        self.p_agent.push(c.agent_id.clone());
        self.p_version.push(c.agent_version.clone());
        self.p_count.push(0);
        self.p_trigger.push(c.trigger.clone());
        self.p_error.push(error);
        self.p_completed.push(false);
        self.p_metrics.push(None);
    }

    fn write(mut self, client: &mut SpiClient<'_>) -> Result<(), SpiError> {
        if self.p_run.is_empty() {
            return Ok(());
        }
        let mut stored: Vec<StoredSignal> = Vec::new();
        if !self.s_type.is_empty() {
            let n = self.s_type.len() as i64;
            let stmt = SIGNAL_IDS.with(|k| k.get(client))?;
            let row = client.select(stmt, Some(1), &[n.into()])?.first();
            let ids: Vec<i64> = row.get(1)?.unwrap_or_default();
            let now: f64 = row.get(2)?.unwrap_or_default();
            let mut evidence = std::mem::take(&mut self.s_evidence_map).into_iter();
            for (i, id) in ids.iter().enumerate() {
                stored.push(StoredSignal {
                    id: *id,
                    failure_type: self.s_type[i].clone(),
                    severity: self.s_severity[i].clone(),
                    run_id: self.s_run[i].clone(),
                    agent_id: self.s_agent[i].clone(),
                    agent_version: self.s_version[i].clone(),
                    step_index: self.s_step[i],
                    confidence: self.s_conf[i],
                    evidence: evidence.next().unwrap_or_default(),
                    detected_at: now,
                    shadow: self.s_shadow[i],
                    alerted: false,
                    co_signal_count: self.s_co[i],
                });
            }
            let stmt = INSERT_SIGNALS.with(|k| k.get(client))?;
            client.update(
                stmt,
                None,
                &[
                    self.s_type.into(),
                    self.s_severity.into(),
                    self.s_run.into(),
                    self.s_agent.into(),
                    self.s_version.into(),
                    self.s_step.into(),
                    self.s_conf.into(),
                    self.s_evidence.into(),
                    self.s_shadow.into(),
                    self.s_co.into(),
                    ids.into(),
                ],
            )?;
        }
        let stmt = UPSERT_PROCESSED.with(|k| k.get(client))?;
        client.update(
            stmt,
            None,
            &[
                self.p_run.clone().into(),
                self.p_agent.into(),
                self.p_version.into(),
                self.p_count.into(),
                self.p_trigger.clone().into(),
                self.p_error.into(),
                self.p_completed.into(),
                self.p_metrics.into(),
            ],
        )?;
        let stmt = MARK_PROCESSED.with(|k| k.get(client))?;
        client.update(stmt, None, &[self.p_run.into(), self.p_trigger.into()])?;
        let effects = issues::update(client, &self.issue_runs)?;
        if stored.iter().any(|s| !s.shadow) {
            alerts::enqueue(client, &stored, &effects)?;
            wake::wake_worker_on_commit();
        }
        Ok(())
    }
}
