//! `dunetrace.ingest(api_key text, events jsonb)`: authenticate, validate (core), store events
//! and track runs.
//!
//! A C-language SECURITY DEFINER function with a pinned search_path. The batch is read from the
//! jsonb value's binary form (`jsonb.rs`; numbers as correctly rounded floats) and checked by
//! the core; the rows stored are then read from the same jsonb value (`jsonb_to_recordset`,
//! with the validated timestamps alongside), so nothing is printed and parsed back in.

use crate::errors::{invalid, raise, rejected};
use crate::keys::{authenticate, oid, random_bytes, Kept};
use crate::settings;
use dunetrace_core::envelope::Batch;
use dunetrace_core::jsonb;
use dunetrace_core::{batch, ids, validate};
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;

/// A `jsonb` argument kept as the datum Postgres passed; valid for the call.
pub struct JsonbArg(pg_sys::Datum);

impl FromDatum for JsonbArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(JsonbArg(datum))
    }
}

// SAFETY: declared `jsonb` in SQL, and only ever read as a jsonb datum.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

pgrx::impl_sql_translatable!(JsonbArg, arg_only = "jsonb");

impl JsonbArg {
    /// The batch, read from the value's binary form (see `jsonb.rs`).
    fn batch(&self) -> Result<Batch, jsonb::ReadError> {
        // SAFETY: the datum is a jsonb value for the duration of the call; detoasting gives a
        // varlena with a 4-byte header whose data is the root container.
        unsafe {
            let v = pg_sys::pg_detoast_datum(self.0.cast_mut_ptr());
            jsonb::read_batch(pgrx::varlena::varlena_to_byte_slice(v))
        }
    }

    /// The datum as a `jsonb` statement parameter.
    fn param(&self) -> DatumWithOid<'_> {
        // SAFETY: the datum is a jsonb value that outlives the statement it is bound to.
        unsafe { DatumWithOid::new(self.0, pg_sys::JSONBOID) }
    }
}

thread_local! {
    static INSERT_EVENTS: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.events (batch_id, event_type, run_id, agent_id, agent_version, \
                                           step_index, \"timestamp\", payload, parent_run_id) \
             SELECT $1, e.event_type, e.run_id, e.agent_id, e.agent_version, e.step_index, \
                    e.ts, COALESCE(e.payload, '{}'::jsonb), e.parent_run_id \
             FROM ROWS FROM ( \
                      jsonb_to_recordset(CASE jsonb_typeof($3) WHEN 'array' THEN $3 \
                                                               ELSE jsonb_build_array($3) END) \
                          AS (event_type text, run_id text, agent_id text, agent_version text, \
                              step_index int4, payload jsonb, parent_run_id text), \
                      unnest($2::float8[])) \
                  AS e(event_type, run_id, agent_id, agent_version, step_index, payload, \
                       parent_run_id, ts)",
            &[oid::UUID, oid::FLOAT8_ARRAY, oid::JSONB],
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
                 last_pos = excluded.last_pos \
             WHERE r.agent_id = excluded.agent_id \
             RETURNING r.run_id, r.event_count",
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

/// Refuses a batch that is JSON to Postgres but not to the core (as its text would be).
fn invalid_json(why: &str) -> ! {
    rejected(&validate::ValidationError {
        kind: validate::ErrorKind::InvalidType,
        index: None,
        field: "events".into(),
        message: format!("is not valid JSON ({why})"),
    })
}

/// Epoch seconds of the server clock.
pub(crate) fn now_epoch() -> f64 {
    // SAFETY: plain read of the current time.
    let ts = unsafe { pg_sys::GetCurrentTimestamp() };
    ts as f64 / 1e6 + 946_684_800.0
}

/// Stores a batch of hashed, structural agent events (one object or an array); all-or-nothing.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn ingest(api_key: Option<&str>, events: Option<JsonbArg>) -> pgrx::JsonB {
    let key_agent = authenticate(api_key);
    let Some(batch) = events else {
        invalid("dunetrace.ingest: events must not be null");
    };
    let read = batch.batch().unwrap_or_else(|e| match e {
        jsonb::ReadError::TooDeep => invalid_json("the events are nested too deeply"),
        jsonb::ReadError::Number => invalid_json("a number is out of range"),
        jsonb::ReadError::Corrupt => raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "dunetrace.ingest: the jsonb value could not be read",
        ),
    });
    let events = validate::validate_batch(read, now_epoch()).unwrap_or_else(|e| rejected(&e));
    if let Some(i) = batch::mixed_agent_event(&events) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "dunetrace.ingest: batch rejected, nothing stored: event {i}: its run_id belongs \
                 to another agent earlier in the batch (a run belongs to one agent)"
            ),
        );
    }
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
    let batch_uuid = ids::uuid_v4_bytes(&random_bytes::<16>());
    store(pgrx::Uuid::from_bytes(batch_uuid), &events, &batch);
    let batch_id = ids::uuid_v4(&batch_uuid);
    if events.iter().any(|e| e.event_type.is_terminal()) {
        crate::wake::wake_worker_on_commit();
    }
    pgrx::JsonB(serde_json::json!({"accepted": events.len(), "batch_id": batch_id}))
}

/// Stores the validated `events`; their payloads are taken from `batch`, the same JSON value
/// (in the same order) they were parsed from.
fn store(batch_id: pgrx::Uuid, events: &[dunetrace_core::event::Event], batch: &JsonbArg) {
    // The envelope fields and payloads are read from the caller's jsonb in the INSERT itself:
    // they were validated from the same value. Timestamps come from the validation (a
    // missing one is the server clock).
    let stamps: Vec<f64> = events.iter().map(|e| e.timestamp).collect();
    let touches = batch::summarize(events);
    let firsts: Vec<(String, i32)> = touches
        .iter()
        .map(|t| (t.run_id.clone(), t.first_pos))
        .collect();
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
        // Runs first: the upsert only touches runs of the same agent, so a run it does not
        // return belongs to another agent, and the whole call is refused before any event is
        // stored (the row lock it takes orders concurrent first batches of one run).
        let upsert_runs = UPSERT_RUNS.with(|k| k.get(client))?;
        let rows = client.update(
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
        let mut counts: HashMap<String, i32> = HashMap::with_capacity(firsts.len());
        for row in rows {
            let run: String = row.get(1)?.unwrap_or_default();
            counts.insert(run, row.get(2)?.unwrap_or_default());
        }
        let cap = settings::MAX_EVENTS_PER_RUN.get();
        for (run, first) in &firsts {
            match counts.get(run) {
                None => raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "dunetrace.ingest: batch rejected, nothing stored: event {first}: its \
                         run_id belongs to another agent (a run belongs to the agent of its \
                         first event)"
                    ),
                ),
                Some(n) if *n > cap => raise(
                    PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "dunetrace.ingest: batch rejected, nothing stored: event {first}: its \
                         run would hold {n} events, more than dunetrace.max_events_per_run \
                         ({cap})"
                    ),
                ),
                Some(_) => {}
            }
        }
        let insert_events = INSERT_EVENTS.with(|k| k.get(client))?;
        client.update(
            insert_events,
            None,
            &[batch_id.into(), stamps.into(), batch.param()],
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
