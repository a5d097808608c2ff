//! Helpers shared by the `#[pg_test]` files.

use pgrx::prelude::*;
use serde_json::{json, Value};

/// Runs `sql` (as `role`, when given) inside a subtransaction; returns "ok" or
/// "SQLSTATE: message". Nothing the statement did survives an error.
pub fn try_sql(sql: &str, role: Option<&str>) -> String {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.try_sql(q text, r text) RETURNS text
         LANGUAGE plpgsql AS $f$
         BEGIN
             IF r IS NOT NULL THEN EXECUTE format('SET LOCAL ROLE %I', r); END IF;
             EXECUTE q;
             RESET ROLE;
             RETURN 'ok';
         EXCEPTION WHEN OTHERS THEN
             RETURN SQLSTATE || ': ' || SQLERRM;
         END $f$",
    )
    .unwrap();
    Spi::get_one_with_args::<String>(
        "SELECT pg_temp.try_sql($1, $2)",
        &[sql.into(), role.map(str::to_string).into()],
    )
    .unwrap()
    .unwrap()
}

/// A `count(*)`-style query's single bigint.
pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).unwrap().unwrap()
}

/// A query's single value.
pub fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap()
}

/// A new API key for `agent` (`"*"` = any agent).
pub fn key(agent: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT dunetrace.create_api_key($1)", &[agent.into()])
        .unwrap()
        .unwrap()
}

/// One event envelope (agent_version "v1").
pub fn ev(run: &str, agent: &str, t: &str, step: i32, ts: f64, payload: Value) -> Value {
    json!({"event_type": t, "run_id": run, "agent_id": agent, "agent_version": "v1",
           "step_index": step, "timestamp": ts, "payload": payload})
}

/// Ingests a batch; panics if it is refused.
pub fn ingest(key: &str, events: &Value) {
    Spi::run_with_args(
        "SELECT dunetrace.ingest($1, $2::jsonb)",
        &[key.into(), events.to_string().into()],
    )
    .unwrap();
}

/// `dunetrace.process_runs()`.
pub fn process() -> i32 {
    Spi::get_one::<i32>("SELECT dunetrace.process_runs()")
        .unwrap()
        .unwrap()
}

/// The args hash every looping tool call repeats.
pub const ARGS: &str = "0123456789abcdef";

/// A run that calls `search` `calls` times with identical arguments (V4 steps).
pub fn looping_run(run: &str, agent: &str, calls: i32, finish: bool) -> Value {
    let mut v = vec![ev(
        run,
        agent,
        "run.started",
        0,
        1000.0,
        json!({"tools": ["search"]}),
    )];
    for i in 1..=calls {
        let ts = 1000.0 + f64::from(i);
        v.push(ev(
            run,
            agent,
            "tool.called",
            i,
            ts,
            json!({"tool_name": "search", "args_hash": ARGS}),
        ));
        v.push(ev(
            run,
            agent,
            "tool.responded",
            i,
            ts + 0.5,
            json!({"tool_name": "search", "success": true}),
        ));
    }
    if finish {
        v.push(ev(
            run,
            agent,
            "run.completed",
            calls,
            1000.0 + f64::from(calls) + 1.0,
            json!({"exit_reason": "completed", "total_steps": calls}),
        ));
    }
    Value::Array(v)
}
