//! The worker under attack and under load: functions planted in `public` are never called by
//! it, SIGTERM stops it promptly during a large backlog, and a failing step is rolled back
//! whole and retried.

use dunetrace_e2e::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// The server log from byte `from` on.
fn log_since(from: u64) -> String {
    let path = std::env::var("DUNETRACE_TEST_LOG").expect("DUNETRACE_TEST_LOG is set");
    let bytes = std::fs::read(path).expect("read the server log");
    String::from_utf8_lossy(&bytes[(from as usize).min(bytes.len())..]).into_owned()
}

fn log_len() -> u64 {
    let path = std::env::var("DUNETRACE_TEST_LOG").expect("DUNETRACE_TEST_LOG is set");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Takes the test's configuration-file settings back (and reloads) however the test ends.
/// The cluster's own settings live in the same file (postgresql.auto.conf), so the attempt
/// limit is set back to what it was, not reset.
struct ReloadReset {
    max_attempts: String,
}

impl Drop for ReloadReset {
    fn drop(&mut self) {
        let mut c = connect();
        let _ = c.batch_execute("ALTER SYSTEM RESET search_path");
        let _ = c.batch_execute(&format!(
            "ALTER SYSTEM SET dunetrace.http_max_attempts = {}",
            self.max_attempts
        ));
        let _ = c.batch_execute("SELECT pg_reload_conf()");
    }
}

fn drop_planter(c: &mut Client) {
    c.batch_execute(
        "DO $$ BEGIN
             IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dt_planter') THEN
                 DROP OWNED BY dt_planter;
                 DROP ROLE dt_planter;
             END IF;
         END $$",
    )
    .expect("drop the planter role");
}

/// Functions named like those the worker's and process_runs' statements call, for the array
/// and argument types they pass: each records who called it and, when that is a superuser,
/// makes the planter one.
const PLANTED: &str = "
CREATE TABLE public.dt_calls (who text, fn text);
GRANT INSERT ON public.dt_calls TO PUBLIC;
CREATE FUNCTION public.dt_escalate(f text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.dt_calls VALUES (current_user, f);
    BEGIN
        ALTER ROLE dt_planter SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(integer[]) RETURNS SETOF integer LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('unnest(int4[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('unnest(int8[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(double precision[]) RETURNS SETOF double precision LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('unnest(float8[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(boolean[]) RETURNS SETOF boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('unnest(bool[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.nextval(text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('nextval(text)'); RETURN pg_catalog.nextval($1::regclass); END $$;
CREATE FUNCTION public.make_interval(secs double precision) RETURNS interval LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('make_interval'); RETURN pg_catalog.make_interval(secs => secs); END $$;
CREATE FUNCTION public.generate_series(integer, bigint) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('generate_series'); RETURN QUERY SELECT pg_catalog.generate_series($1::bigint, $2); END $$;
CREATE FUNCTION public.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('jsonb_build_object'); RETURN pg_catalog.jsonb_build_object($1, $2); END $$;
CREATE FUNCTION public.extract(text, timestamptz) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN PERFORM public.dt_escalate('extract'); RETURN pg_catalog.extract($1, $2); END $$;
";

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn functions_planted_in_public_are_never_called_by_the_worker() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    add_destination(
        &mut c,
        "webhook",
        &hook.url("/planted"),
        Some("s3cret"),
        None,
    );
    drop_planter(&mut c);
    // A role that may only create objects in schema public.
    c.batch_execute(
        "CREATE ROLE dt_planter LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO dt_planter",
    )
    .expect("create the planter");
    let mut planter = {
        let dsn = dsn().replace("user=postgres", "user=dt_planter");
        postgres::Client::connect(&dsn, postgres::NoTls).expect("connect as dt_planter")
    };
    planter.batch_execute(PLANTED).expect("plant the functions");
    // The same statements, resolved with a user's search_path, would call them: the trap works.
    let caught: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT unnest($1::text[])) x",
            &[&vec!["a".to_string()]],
        )
        .expect("unnest through public")
        .get(0);
    assert_eq!(caught, 1);
    let trapped: i64 = c
        .query_one("SELECT count(*) FROM public.dt_calls", &[])
        .expect("count calls")
        .get(0);
    assert!(
        trapped >= 1,
        "the planted unnest is reachable from a default search_path"
    );
    c.batch_execute("ALTER ROLE dt_planter NOSUPERUSER; TRUNCATE public.dt_calls")
        .expect("reset the trap");

    // A new worker (it reads everything afresh) processes runs and sends their alerts.
    let old = worker_pid(&mut c);
    if let Some(pid) = old {
        c.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate the worker");
    }
    wait_new_worker(&mut c, old, Duration::from_secs(20));
    let agent = Agent::new(&mut c, "e2e-planted");
    let looping = agent.loop_run(&mut c);
    let clean = agent.clean_run(&mut c);
    wait_signal(
        &mut c,
        &looping.run_id,
        "TOOL_LOOP",
        Duration::from_secs(20),
    );
    wait_processed(&mut c, &clean.run_id, Duration::from_secs(20));
    hook.wait_for_containing(&looping.run_id, 1, Duration::from_secs(20));
    // The SQL entry points too (SECURITY DEFINER, pinned search_path).
    let again = agent.loop_run(&mut c);
    c.batch_execute(
        "SET search_path = public, pg_catalog; \
         SELECT dunetrace.process_runs(); SELECT dunetrace.dispatch(); \
         SELECT dunetrace.send_digest(true); RESET search_path",
    )
    .expect("SQL entry points with public first in search_path");
    wait_signal(&mut c, &again.run_id, "TOOL_LOOP", Duration::from_secs(20));

    // A reload (SIGHUP) is applied between batches and never unpins the search_path, even
    // when the configuration file puts public first.
    let max_attempts: String = c
        .query_one("SHOW dunetrace.http_max_attempts", &[])
        .expect("show")
        .get(0);
    let _reset = ReloadReset { max_attempts };
    c.batch_execute("ALTER SYSTEM SET search_path = 'public, pg_catalog'")
        .expect("a search_path in the configuration file");
    c.batch_execute("ALTER SYSTEM SET dunetrace.http_max_attempts = 1")
        .expect("one attempt per delivery");
    c.batch_execute("SELECT pg_reload_conf()").expect("reload");
    wait_until(Duration::from_secs(10), "the reload", || {
        let mut fresh = connect();
        let v: String = fresh
            .query_one("SHOW dunetrace.http_max_attempts", &[])
            .expect("show")
            .get(0);
        (v == "1").then_some(())
    });
    reset_destinations(&mut c);
    let failing = Receiver::statuses(&[500]);
    let dest = add_destination(&mut c, "webhook", &failing.url("/reload"), None, None);
    let after = agent.loop_run(&mut c);
    let signal = wait_signal(&mut c, &after.run_id, "TOOL_LOOP", Duration::from_secs(20));
    let d = wait_delivery(
        &mut c,
        signal,
        dest,
        Duration::from_secs(20),
        "the delivery to fail",
        |d| d.status == "failed",
    );
    assert_eq!(d.attempts, 1, "the reloaded attempt limit applies");

    let calls: Vec<String> = c
        .query("SELECT who || ': ' || fn FROM public.dt_calls", &[])
        .expect("read calls")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let superuser: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_planter'",
            &[],
        )
        .expect("read the role")
        .get(0);
    drop(planter);
    drop_planter(&mut c);
    reset_destinations(&mut c);
    assert!(calls.is_empty(), "planted functions were called: {calls:?}");
    assert!(!superuser, "the planter became a superuser");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn sigterm_stops_the_worker_within_two_seconds_during_a_large_backlog() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let agent = unique("e2e-backlog");
    // 50,000 finished runs at once, written directly (as an ingest of that size would be).
    c.execute(
        "INSERT INTO dunetrace.events (batch_id, event_type, run_id, agent_id, agent_version, \
                                       step_index, \"timestamp\", payload) \
         SELECT gen_random_uuid(), t.e, $1 || '-' || i, $1, 'v1', 0, 1000.0 + i, '{}' \
         FROM generate_series(1, 50000) i, (VALUES ('run.started'), ('run.completed')) t(e)",
        &[&agent],
    )
    .expect("insert the backlog's events");
    c.execute(
        "INSERT INTO dunetrace.runs (run_id, agent_id, agent_version, has_started, \
                                     terminal_event, event_count, max_step) \
         SELECT $1 || '-' || i, $1, 'v1', true, 'run.completed', 2, 0 \
         FROM generate_series(1, 50000) i",
        &[&agent],
    )
    .expect("insert the backlog's runs");
    let processed = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM dunetrace.processed_runs WHERE agent_id = $1",
            &[&agent],
        )
        .expect("count processed")
        .get(0)
    };
    // The worker is busy with it (it polls every second in the test cluster).
    wait_until(
        Duration::from_secs(20),
        "the worker to start on the backlog",
        || (processed(&mut c) > 0).then_some(()),
    );
    let pid = worker_pid(&mut c).expect("the worker runs");
    let sent = Instant::now();
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("SIGTERM the worker");
    wait_exited(&mut c, pid, Duration::from_secs(10));
    let took = sent.elapsed();
    let done = processed(&mut c);
    println!("worker {pid} exited {took:?} after SIGTERM with {done} of 50000 runs processed");
    // Leave nothing for later tests: the rest of the backlog is marked done.
    c.execute(
        "UPDATE dunetrace.runs SET processed_trigger = 'run.completed' \
         WHERE agent_id = $1 AND processed_trigger IS NULL",
        &[&agent],
    )
    .expect("drop the backlog");
    assert!(done < 50_000, "the backlog was gone before SIGTERM arrived");
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_failing_worker_step_is_rolled_back_whole_and_retried() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let agent = Agent::new(&mut c, "e2e-stuck");
    // Every write of this agent's processed runs fails, error rows included: the whole
    // batch fails, so nothing of it may be committed.
    c.batch_execute(&format!(
        "CREATE FUNCTION public.dt_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.agent_id = '{}' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER dt_refuse BEFORE INSERT OR UPDATE ON dunetrace.processed_runs
             FOR EACH ROW EXECUTE FUNCTION public.dt_refuse()",
        agent.id
    ))
    .expect("install the refusing trigger");
    let from = log_len();
    let run = agent.loop_run(&mut c);
    wait_until(Duration::from_secs(20), "a failed processing step", || {
        log_since(from)
            .contains("processing runs failed")
            .then_some(())
    });
    let state: (i64, i64, Option<String>) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = $1), \
                        (SELECT count(*) FROM dunetrace.processed_runs WHERE run_id = $1), \
                        (SELECT processed_trigger FROM dunetrace.runs WHERE run_id = $1)",
                &[&run.run_id],
            )
            .expect("read the run's state");
        (r.get(0), r.get(1), r.get(2))
    };
    c.batch_execute(
        "DROP TRIGGER dt_refuse ON dunetrace.processed_runs; DROP FUNCTION public.dt_refuse()",
    )
    .expect("remove the trigger");
    assert_eq!(state, (0, 0, None), "a failed step left part of its work");
    // Retried: processed once, with one signal.
    let signal = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(20));
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = $1",
            &[&run.run_id],
        )
        .expect("count signals")
        .get(0);
    assert_eq!(n, 1, "signal {signal} and no duplicates");
}
