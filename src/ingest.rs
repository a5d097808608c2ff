//! `dunetrace.ingest()`: authenticate, validate (core), store events and track runs.
//!
//! The public `dunetrace.ingest(api_key text, events jsonb)` is a SECURITY DEFINER SQL
//! wrapper (sql/finalize.sql) around `dunetrace._ingest(text, text)`: the JSON text is parsed
//! here with correctly rounded floats and every malformed input becomes an SQL error.

use crate::errors::{invalid, raise, rejected};
use crate::keys::{authenticate, oid, random_bytes, Kept};
use dunetrace_core::{batch, ids, validate};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

thread_local! {
    static INSERT_EVENTS: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.events (batch_id, event_type, run_id, agent_id, agent_version, \
                                           step_index, \"timestamp\", payload, parent_run_id) \
             SELECT $1::uuid, t, r, a, v, s, ts, p::jsonb, pr \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
                         $7::float8[], $8::text[], $9::text[]) AS u(t, r, a, v, s, ts, p, pr)",
            &[
                oid::TEXT,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::INT4_ARRAY,
                oid::FLOAT8_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
            ],
        )
    };
    static UPSERT_RUNS: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.runs AS r (run_id, agent_id, agent_version, parent_run_id, \
                                              has_started, terminal_event, event_count, max_step, \
                                              last_pos, last_seq) \
             SELECT u.*, (SELECT nextval('dunetrace.runs_seq')) \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], \
                         $6::text[], $7::int4[], $8::int4[], $9::int4[]) AS u \
             ON CONFLICT (run_id) DO UPDATE SET \
                 has_started = r.has_started OR excluded.has_started, \
                 terminal_event = COALESCE(r.terminal_event, excluded.terminal_event), \
                 event_count = r.event_count + excluded.event_count, \
                 max_step = GREATEST(r.max_step, excluded.max_step), \
                 parent_run_id = COALESCE(r.parent_run_id, excluded.parent_run_id), \
                 last_received_at = now(), \
                 last_seq = excluded.last_seq, \
                 last_pos = excluded.last_pos",
            &[
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::TEXT_ARRAY,
                oid::BOOL_ARRAY,
                oid::TEXT_ARRAY,
                oid::INT4_ARRAY,
                oid::INT4_ARRAY,
                oid::INT4_ARRAY,
            ],
        )
    };
}

/// Epoch seconds of the server clock.
fn now_epoch() -> f64 {
    // SAFETY: plain read of the current time.
    let ts = unsafe { pg_sys::GetCurrentTimestamp() };
    ts as f64 / 1e6 + 946_684_800.0
}

#[pg_extern(name = "_ingest", volatile, parallel_unsafe)]
fn ingest_text(api_key: Option<&str>, events: Option<&str>) -> pgrx::JsonB {
    let key_agent = authenticate(api_key);
    let Some(text) = events else {
        invalid("dunetrace.ingest: events must not be null");
    };
    let events = validate::parse_batch_text(text, now_epoch()).unwrap_or_else(|e| rejected(&e));
    if key_agent != "*" {
        if let Some((i, e)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.agent_id != key_agent)
        {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "dunetrace.ingest: batch rejected, nothing stored: event {i}: agent_id \"{}\" \
                     does not match the API key's agent \"{key_agent}\"",
                    e.agent_id
                ),
            );
        }
    }
    let batch_id = ids::uuid_v4(&random_bytes::<16>());
    store(&batch_id, &events);
    if events.iter().any(|e| e.event_type.is_terminal()) {
        crate::wake::wake_worker_on_commit();
    }
    pgrx::JsonB(serde_json::json!({"accepted": events.len(), "batch_id": batch_id}))
}

fn store(batch_id: &str, events: &[dunetrace_core::event::Event]) {
    let n = events.len();
    let mut types = Vec::with_capacity(n);
    let mut run_ids = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut steps = Vec::with_capacity(n);
    let mut stamps = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut parents = Vec::with_capacity(n);
    for e in events {
        // Borrowed: the arrays below copy them into Postgres memory anyway.
        types.push(e.event_type.as_str());
        run_ids.push(e.run_id.as_str());
        agents.push(e.agent_id.as_str());
        versions.push(e.agent_version.as_str());
        steps.push(e.step_index);
        stamps.push(e.timestamp);
        payloads.push(serde_json::to_string(&e.payload).expect("a JSON map serialises"));
        parents.push(e.parent_run_id.as_deref());
    }
    let touches = batch::summarize(events);
    let mut t_run = Vec::with_capacity(touches.len());
    let mut t_agent = Vec::with_capacity(touches.len());
    let mut t_version = Vec::with_capacity(touches.len());
    let mut t_parent = Vec::with_capacity(touches.len());
    let mut t_started = Vec::with_capacity(touches.len());
    let mut t_terminal = Vec::with_capacity(touches.len());
    let mut t_count = Vec::with_capacity(touches.len());
    let mut t_max = Vec::with_capacity(touches.len());
    let mut t_pos = Vec::with_capacity(touches.len());
    for t in touches {
        t_run.push(t.run_id);
        t_agent.push(t.agent_id);
        t_version.push(t.agent_version);
        t_parent.push(t.parent_run_id);
        t_started.push(t.has_started);
        t_terminal.push(t.terminal.map(|x| x.as_str().to_string()));
        t_count.push(t.events);
        t_max.push(t.max_step);
        t_pos.push(t.last_pos);
    }
    let result = Spi::connect_mut(|client| {
        let insert_events = INSERT_EVENTS.with(|k| k.get(client))?;
        client.update(
            insert_events,
            None,
            &[
                batch_id.into(),
                types.into(),
                run_ids.into(),
                agents.into(),
                versions.into(),
                steps.into(),
                stamps.into(),
                payloads.into(),
                parents.into(),
            ],
        )?;
        let upsert_runs = UPSERT_RUNS.with(|k| k.get(client))?;
        client.update(
            upsert_runs,
            None,
            &[
                t_run.into(),
                t_agent.into(),
                t_version.into(),
                t_parent.into(),
                t_started.into(),
                t_terminal.into(),
                t_count.into(),
                t_max.into(),
                t_pos.into(),
            ],
        )?;
        Ok::<_, pgrx::spi::SpiError>(())
    });
    if let Err(e) = result {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("dunetrace.ingest: could not store the batch: {e}"),
        );
    }
}
