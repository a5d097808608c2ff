//! What makes the extension safe to install in a production database: nothing for PUBLIC,
//! runs owned by one agent, bounded runs, orphaned runs, poison runs isolated.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::{count, ev, ingest, key, looping_run, one, process, try_sql};
    use pgrx::prelude::*;
    use serde_json::json;

    /// Every privilege a role with no grants of its own (so only what PUBLIC has) holds on
    /// the extension's objects, as `kind name` lines. Empty when nothing leaks.
    fn public_privileges(role: &str) -> Vec<String> {
        let sql = format!(
            "SELECT kind || ' ' || name FROM (
                 SELECT 'function' AS kind, p.oid::regprocedure::text AS name
                 FROM pg_catalog.pg_proc p
                 WHERE p.pronamespace = 'dunetrace'::regnamespace
                   AND pg_catalog.has_function_privilege({r}, p.oid, 'EXECUTE')
                 UNION ALL
                 SELECT 'relation', c.oid::regclass::text
                 FROM pg_catalog.pg_class c
                 WHERE c.relnamespace = 'dunetrace'::regnamespace AND c.relkind IN ('r', 'v', 'p')
                   AND (pg_catalog.has_table_privilege({r}, c.oid,
                            'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                        OR pg_catalog.has_any_column_privilege({r}, c.oid,
                            'SELECT, INSERT, UPDATE, REFERENCES'))
                 UNION ALL
                 SELECT 'sequence', c.oid::regclass::text
                 FROM pg_catalog.pg_class c
                 WHERE c.relnamespace = 'dunetrace'::regnamespace AND c.relkind = 'S'
                   AND CASE WHEN c.relkind = 'S'
                            THEN pg_catalog.has_sequence_privilege({r}, c.oid, 'USAGE, SELECT, UPDATE') END
             ) x ORDER BY 1",
            r = pgrx::spi::quote_literal(role)
        );
        Spi::connect(|c| {
            let rows = c.select(&sql, None, &[])?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.get::<String>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .unwrap()
    }

    #[pg_test]
    fn public_may_use_nothing() {
        // A fresh role holds only what PUBLIC holds. Schema usage is given so that only the
        // objects' own privileges stand in the way.
        Spi::run("CREATE ROLE dunetrace_test_nobody NOLOGIN").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA dunetrace TO dunetrace_test_nobody").unwrap();
        assert_eq!(
            public_privileges("dunetrace_test_nobody"),
            Vec::<String>::new()
        );
        for q in [
            "SELECT 1 FROM dunetrace.events",
            "SELECT 1 FROM dunetrace.run_overview",
            "SELECT dunetrace.process_runs()",
            "SELECT dunetrace.create_api_key('x')",
            "SELECT dunetrace.ingest('dt_x', '[]')",
            "SELECT nextval('dunetrace.runs_seq')",
        ] {
            let got = try_sql(q, Some("dunetrace_test_nobody"));
            assert!(got.starts_with("42501"), "{q}: {got}");
        }
        // The check can fail: a grant to PUBLIC is seen at once.
        Spi::run("GRANT EXECUTE ON FUNCTION dunetrace.process_runs(integer) TO PUBLIC").unwrap();
        Spi::run("GRANT SELECT ON dunetrace.issues TO PUBLIC").unwrap();
        assert_eq!(
            public_privileges("dunetrace_test_nobody"),
            vec![
                "function dunetrace.process_runs(integer)".to_string(),
                "relation dunetrace.issues".to_string()
            ]
        );
        assert_eq!(
            try_sql(
                "SELECT count(*) FROM dunetrace.issues",
                Some("dunetrace_test_nobody")
            ),
            "ok"
        );
    }

    #[pg_test]
    fn a_run_belongs_to_the_agent_of_its_first_event() {
        let a = key("agent-a");
        let b = key("agent-b");
        let star = key("*");
        ingest(
            &a,
            &json!([ev("run-a", "agent-a", "run.started", 0, 1000.0, json!({}))]),
        );
        let events = count("SELECT count(*) FROM dunetrace.events");
        let intruder = json!([
            ev("run-b", "agent-b", "run.started", 0, 1000.0, json!({})),
            ev(
                "run-a",
                "agent-b",
                "tool.called",
                1,
                1001.0,
                json!({"tool_name": "search", "args_hash": "0123456789abcdef"})
            )
        ]);
        for k in [&b, &star] {
            let got = try_sql(
                &format!(
                    "SELECT dunetrace.ingest({}, {}::jsonb)",
                    pgrx::spi::quote_literal(k),
                    pgrx::spi::quote_literal(intruder.to_string())
                ),
                None,
            );
            assert!(
                got.starts_with("42501") && got.contains("event 1") && !got.contains("agent-a"),
                "{got}"
            );
        }
        // Within one batch too, for a key that may write any agent.
        let mixed = json!([
            ev("run-c", "agent-a", "run.started", 0, 1000.0, json!({})),
            ev("run-c", "agent-b", "run.completed", 1, 1001.0, json!({}))
        ]);
        let got = try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, {}::jsonb)",
                pgrx::spi::quote_literal(&star),
                pgrx::spi::quote_literal(mixed.to_string())
            ),
            None,
        );
        assert!(got.starts_with("42501") && got.contains("event 1"), "{got}");
        // Nothing of the refused batches was stored; agent a's run is untouched.
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), events);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.runs WHERE run_id IN ('run-b', 'run-c')"),
            0
        );
        assert_eq!(
            one::<String>(
                "SELECT agent_id || ':' || event_count FROM dunetrace.runs WHERE run_id = 'run-a'"
            ),
            Some("agent-a:1".to_string())
        );
        // The run's own agent goes on as usual.
        ingest(
            &a,
            &json!([ev(
                "run-a",
                "agent-a",
                "run.completed",
                0,
                1002.0,
                json!({})
            )]),
        );
        assert_eq!(process(), 1);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE agent_id <> 'agent-a'"),
            0
        );
    }

    #[pg_test]
    fn events_stored_under_another_agents_run_take_no_part_in_detection() {
        // Such rows can only predate 0.2.0; detection reads the run's owner's events only.
        let k = key("*");
        ingest(&k, &looping_run("run-x", "agent-a", 1, true));
        Spi::run(
            "INSERT INTO dunetrace.events (batch_id, event_type, run_id, agent_id, agent_version,
                                           step_index, \"timestamp\", payload)
             SELECT gen_random_uuid(), 'tool.called', 'run-x', 'agent-b', 'v1', i, 1001.0 + i,
                    '{\"tool_name\": \"search\", \"args_hash\": \"0123456789abcdef\"}'
             FROM generate_series(2, 9) i",
        )
        .unwrap();
        assert_eq!(process(), 1);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'run-x'"),
            0
        );
    }

    #[pg_test]
    fn a_run_over_the_event_cap_is_refused_with_54000() {
        let k = key("agent-a");
        Spi::run("SET dunetrace.max_events_per_run = 5").unwrap();
        let three = |from: i32| {
            json!((from..from + 3)
                .map(|i| ev(
                    "run-big",
                    "agent-a",
                    "llm.called",
                    i,
                    1000.0 + f64::from(i),
                    json!({})
                ))
                .collect::<Vec<_>>())
        };
        ingest(&k, &three(0));
        let got = try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, {}::jsonb)",
                pgrx::spi::quote_literal(&k),
                pgrx::spi::quote_literal(three(3).to_string())
            ),
            None,
        );
        assert!(
            got.starts_with("54000") && got.contains("max_events_per_run (5)"),
            "{got}"
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), 3);
        // An agent cannot lift the cap for its own session.
        let got = try_sql(
            "SET dunetrace.max_events_per_run = 1000000",
            Some("dunetrace_ingest"),
        );
        assert!(got.starts_with("42501"), "{got}");
    }

    #[pg_test]
    fn orphaned_runs_expire_and_are_recorded() {
        let k = key("agent-a");
        // Neither run.started nor a terminal event.
        ingest(
            &k,
            &json!([ev("run-o", "agent-a", "llm.called", 1, 1000.0, json!({}))]),
        );
        Spi::run("SET dunetrace.stall_timeout = 0").unwrap();
        assert_eq!(process(), 0, "not before dunetrace.orphan_timeout");
        Spi::run("SET dunetrace.orphan_timeout = 0").unwrap();
        assert_eq!(process(), 1);
        assert_eq!(
            one::<String>(
                "SELECT trigger || ':' || signal_count || ':' || (error IS NULL)
                 FROM dunetrace.processed_runs WHERE run_id = 'run-o'"
            ),
            Some("orphaned:0:true".to_string())
        );
        assert_eq!(
            one::<String>("SELECT processed_trigger FROM dunetrace.runs WHERE run_id = 'run-o'"),
            Some("orphaned".to_string())
        );
        assert_eq!(process(), 0, "recorded once");
    }

    #[pg_test]
    fn a_poison_run_is_recorded_and_the_others_are_processed() {
        let k = key("*");
        // A run whose results cannot be stored: its processed_runs row is refused (the error
        // row, which carries an error, is let through).
        Spi::run(
            "CREATE FUNCTION pg_temp.poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.run_id = 'poison' AND NEW.error IS NULL THEN
                     RAISE EXCEPTION 'poisoned row';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON dunetrace.processed_runs
                 FOR EACH ROW EXECUTE FUNCTION pg_temp.poison()",
        )
        .unwrap();
        ingest(&k, &looping_run("healthy-1", "agent-p", 5, true));
        ingest(&k, &looping_run("poison", "agent-p", 5, true));
        ingest(&k, &looping_run("healthy-2", "agent-p", 5, true));
        assert_eq!(process(), 3);
        assert_eq!(
            one::<String>("SELECT error FROM dunetrace.processed_runs WHERE run_id = 'poison'")
                .unwrap_or_default(),
            "could not store the results: poisoned row"
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM dunetrace.failure_signals
                 WHERE failure_type = 'TOOL_LOOP' AND run_id IN ('healthy-1', 'healthy-2')"
            ),
            2
        );
        // The poison run's own writes were rolled back with it.
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'poison'"),
            0
        );
        assert_eq!(
            one::<i32>(
                "SELECT affected_runs FROM dunetrace.issues
                 WHERE agent_id = 'agent-p' AND failure_type = 'TOOL_LOOP'"
            ),
            Some(2)
        );
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.runs WHERE processed_trigger IS NULL"),
            0
        );
        // Later runs go on.
        ingest(&k, &looping_run("healthy-3", "agent-p", 5, true));
        assert_eq!(process(), 1);
    }

    #[pg_test]
    fn errors_echo_no_content_and_no_key() {
        let k = key("agent-a");
        let long_key = format!("my secret prompt: {}\n\"quoted\"", "x".repeat(10_000));
        let mut payload = serde_json::Map::new();
        payload.insert(long_key.clone(), json!("The capital of France is Paris"));
        let batch = json!([ev(
            "run-e",
            "agent-a",
            "run.started",
            0,
            1000.0,
            serde_json::Value::Object(payload)
        )]);
        let got = try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, {}::jsonb)",
                pgrx::spi::quote_literal(&k),
                pgrx::spi::quote_literal(batch.to_string())
            ),
            None,
        );
        assert!(got.starts_with("22023"), "{got}");
        assert!(got.len() < 400, "{} characters: {got}", got.len());
        for raw in ["my secret prompt", "Paris", "\"quoted\"", "\n"] {
            assert!(!got.contains(raw), "{raw:?} echoed: {got}");
        }
        // A wrong key is never repeated.
        let wrong = format!("dt_{}", "Q".repeat(43));
        let got = try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, '[]'::jsonb)",
                pgrx::spi::quote_literal(&wrong)
            ),
            None,
        );
        assert!(got.starts_with("28000") && !got.contains("QQQQ"), "{got}");
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), 0);
    }
}
