//! process_runs, configure_detector, explain and the views.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::{self, count, ev, ingest, looping_run, process};
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    fn key() -> String {
        support::key("*")
    }

    #[pg_test]
    fn batch_functions_run_without_jit() {
        for f in ["process_runs", "dispatch", "send_digest"] {
            let n = count(&format!(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'dunetrace'::regnamespace \
                 AND proname = '{f}' AND 'jit=off' = ANY(proconfig)"
            ));
            assert_eq!(n, 1, "{f}");
        }
    }

    #[pg_test]
    fn completed_run_is_processed_once_with_signals() {
        let k = key();
        ingest(&k, &looping_run("loop-1", "bot", 5, true));
        assert_eq!(process(), 1);
        let (t, sev) = Spi::get_two::<String, String>(
            "SELECT failure_type, severity FROM dunetrace.failure_signals WHERE run_id = 'loop-1' AND failure_type = 'TOOL_LOOP'",
        )
        .unwrap();
        assert_eq!(t.as_deref(), Some("TOOL_LOOP"));
        assert_eq!(sev.as_deref(), Some("HIGH"));
        let evidence = Spi::get_one::<pgrx::JsonB>(
            "SELECT evidence FROM dunetrace.failure_signals WHERE run_id = 'loop-1' AND failure_type = 'TOOL_LOOP'",
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(evidence["tool"], "search");
        assert_eq!(evidence["count"], 5);
        assert_eq!(evidence["args_identical"], true);
        let (n, trigger) = Spi::get_two::<i32, String>(
            "SELECT signal_count, trigger FROM dunetrace.processed_runs WHERE run_id = 'loop-1'",
        )
        .unwrap();
        assert_eq!(trigger.as_deref(), Some("run.completed"));
        assert_eq!(
            i64::from(n.unwrap()),
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'loop-1'")
        );
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE shadow"),
            0
        );
        // Never twice.
        assert_eq!(process(), 0);
        ingest(
            &k,
            &json!([ev(
                "loop-1",
                "bot",
                "external.signal",
                5,
                1010.0,
                json!({"signal_name": "late"})
            )]),
        );
        assert_eq!(process(), 0);
        assert_eq!(count("SELECT count(*) FROM dunetrace.processed_runs"), 1);
    }

    #[pg_test]
    fn healthy_run_has_no_signals() {
        let k = key();
        ingest(&k, &looping_run("ok-1", "bot", 2, true));
        assert_eq!(process(), 1);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals"), 0);
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT signal_count FROM dunetrace.processed_runs WHERE run_id = 'ok-1'"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn stalled_runs_wait_for_the_timeout_then_reevaluate_on_completion() {
        let k = key();
        let mut events = looping_run("stall-1", "bot", 5, false);
        // Four LLM steps after the last tool call: GOAL_ABANDONMENT on a stalled run.
        for i in 6..=9 {
            events.as_array_mut().unwrap().push(ev(
                "stall-1",
                "bot",
                "llm.called",
                i,
                1000.0 + f64::from(i),
                json!({"prompt_tokens": 10}),
            ));
        }
        ingest(&k, &events);
        ingest(
            &k,
            &json!([ev(
                "never-started",
                "bot",
                "tool.called",
                1,
                1.0,
                json!({"tool_name": "x"})
            )]),
        );
        // Default timeout (90 s): not yet.
        assert_eq!(process(), 0);
        Spi::run("SET LOCAL dunetrace.stall_timeout = 0").unwrap();
        assert_eq!(process(), 1);
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT trigger FROM dunetrace.processed_runs WHERE run_id = 'stall-1'"
            )
            .unwrap()
            .as_deref(),
            Some("stalled")
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'stall-1' AND failure_type = 'GOAL_ABANDONMENT'"), 1);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'stall-1' AND failure_type = 'TOOL_LOOP'"), 1);
        let before =
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'stall-1'");
        assert_eq!(process(), 0);
        // The run completes later: evaluated again, only new types added.
        ingest(
            &k,
            &json!([ev(
                "stall-1",
                "bot",
                "run.errored",
                9,
                1011.0,
                json!({"error_type": "Timeout"})
            )]),
        );
        assert_eq!(process(), 1);
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT trigger FROM dunetrace.processed_runs WHERE run_id = 'stall-1'"
            )
            .unwrap()
            .as_deref(),
            Some("run.errored")
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'stall-1' AND failure_type = 'TOOL_LOOP'"), 1);
        assert!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'stall-1'")
                >= before
        );
        assert_eq!(count("SELECT count(*) FROM (SELECT failure_type FROM dunetrace.failure_signals WHERE run_id = 'stall-1' GROUP BY 1 HAVING count(*) > 1) d"), 0);
        assert_eq!(process(), 0);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.processed_runs WHERE run_id = 'never-started'"),
            0
        );
    }

    #[pg_test]
    fn per_agent_config_changes_a_threshold() {
        let k = key();
        let out = Spi::get_one::<pgrx::JsonB>(
            "SELECT dunetrace.configure_detector('strict-bot', 'tool_loop', '{\"threshold\": 2, \"window\": 3}')",
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(out, json!({"threshold": 2, "window": 3}));
        ingest(&k, &looping_run("lenient", "bot", 3, true));
        ingest(&k, &looping_run("strict", "strict-bot", 3, true));
        // 3 calls: below the default window of 5, within strict-bot's window of 3.
        assert_eq!(process(), 2);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP' AND run_id = 'lenient'"), 0);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP' AND run_id = 'strict'"), 1);
        // Removing an override with null.
        let out = Spi::get_one::<pgrx::JsonB>(
            "SELECT dunetrace.configure_detector('strict-bot', 'TOOL_LOOP', '{\"window\": null}')",
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(out, json!({"threshold": 2}));
    }

    #[pg_test]
    fn shadow_detectors_store_shadow_signals() {
        let k = key();
        Spi::run(
            "SELECT dunetrace.configure_detector('default', 'tool_loop', '{\"live\": false}')",
        )
        .unwrap();
        ingest(&k, &looping_run("shadowed", "bot", 5, true));
        assert_eq!(process(), 1);
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT shadow FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP'"
            )
            .unwrap(),
            Some(true)
        );
    }

    #[pg_test]
    fn configure_detector_rejects_unknown_names() {
        let got = support::try_sql(
            "SELECT dunetrace.configure_detector('default', 'no_such', '{}')",
            None,
        );
        assert!(
            got.starts_with("22023") && got.contains("unknown detector"),
            "{got}"
        );
        let got = support::try_sql(
            "SELECT dunetrace.configure_detector('default', 'tool_loop', '{\"treshold\": 3}')",
            None,
        );
        assert!(
            got.starts_with("22023") && got.contains("unknown parameter \"treshold\""),
            "{got}"
        );
        let got = support::try_sql(
            "SELECT dunetrace.configure_detector('default', 'tool_loop', '{\"threshold\": -3}')",
            None,
        );
        assert!(got.starts_with("22023"), "{got}");
        let got = support::try_sql(
            "SELECT dunetrace.configure_detector('default', 'tool_loop', '[]')",
            None,
        );
        assert!(got.starts_with("22023"), "{got}");
        assert_eq!(count("SELECT count(*) FROM dunetrace.detector_settings"), 0);
    }

    #[pg_test]
    fn explain_and_views() {
        let k = key();
        ingest(&k, &looping_run("loop-2", "bot", 5, true));
        process();
        let id = Spi::get_one::<i64>(
            "SELECT id FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP'",
        )
        .unwrap()
        .unwrap();
        let e = Spi::get_one_with_args::<pgrx::JsonB>("SELECT dunetrace.explain($1)", &[id.into()])
            .unwrap()
            .unwrap()
            .0;
        assert!(e["title"].as_str().unwrap().contains("search"), "{e}");
        assert!(!e["suggested_fixes"].as_array().unwrap().is_empty());
        assert_eq!(e["fix_type"], "prompt_addition");
        assert_eq!(e["run_id"], "loop-2");
        let got = support::try_sql("SELECT dunetrace.explain(-1)", None);
        assert!(got.starts_with("P0002"), "{got}");
        assert_eq!(count("SELECT count(*) FROM dunetrace.run_overview WHERE run_id = 'loop-2' AND tool_calls = 5 AND exit_reason = 'completed' AND signal_count > 0"), 1);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.signal_overview WHERE title LIKE '%search%'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.agent_overview WHERE agent_id = 'bot' AND runs_7d = 1 AND signal_rate_7d = 1"), 1);
    }

    #[pg_test]
    fn baselines_from_history_enable_step_count_inflation() {
        let k = key();
        // 20 short completed runs of the same agent version, then a long one.
        for i in 0..20 {
            ingest(&k, &looping_run(&format!("h-{i:02}"), "hist-bot", 2, true));
        }
        assert_eq!(process(), 20);
        ingest(&k, &looping_run("long", "hist-bot", 5, true));
        assert_eq!(process(), 1);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'long' AND failure_type = 'STEP_COUNT_INFLATION'"), 1);
        // With 19 prior runs there is no baseline.
        for i in 0..19 {
            ingest(&k, &looping_run(&format!("g-{i:02}"), "young-bot", 2, true));
        }
        ingest(&k, &looping_run("long-2", "young-bot", 5, true));
        assert_eq!(process(), 20);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'long-2' AND failure_type = 'STEP_COUNT_INFLATION'"), 0);
    }

    #[pg_test]
    fn runs_of_one_batch_are_processed_in_arrival_order() {
        let k = key();
        // One batch: 20 short runs, then a long run whose id sorts first.
        let mut all = Vec::new();
        for i in 0..20 {
            all.extend(
                looping_run(&format!("z-{i:02}"), "batch-bot", 2, true)
                    .as_array()
                    .unwrap()
                    .clone(),
            );
        }
        all.extend(
            looping_run("a-long", "batch-bot", 5, true)
                .as_array()
                .unwrap()
                .clone(),
        );
        ingest(&k, &Value::Array(all));
        assert_eq!(process(), 21);
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT run_id FROM dunetrace.processed_runs ORDER BY seq DESC LIMIT 1"
            )
            .unwrap()
            .as_deref(),
            Some("a-long")
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'a-long' AND failure_type = 'STEP_COUNT_INFLATION'"), 1);
    }

    #[pg_test]
    fn one_call_over_several_chunks_carries_baselines_across_them() {
        let k = key();
        // 20 short runs of one agent version, 990 runs of another, then a long run of the
        // first: one call claims all 1011 and evaluates the long run in its second chunk.
        for i in 0..20 {
            ingest(&k, &looping_run(&format!("c-{i:02}"), "chunk-bot", 2, true));
        }
        for b in 0..10 {
            let mut all = Vec::new();
            for i in 0..99 {
                let run = looping_run(&format!("f-{b}-{i:02}"), "filler-bot", 1, true);
                all.extend(run.as_array().unwrap().clone());
            }
            ingest(&k, &Value::Array(all));
        }
        ingest(&k, &looping_run("c-long", "chunk-bot", 5, true));
        assert_eq!(
            Spi::get_one::<i32>("SELECT dunetrace.process_runs(5000)").unwrap(),
            Some(1011)
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.processed_runs"), 1011);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.runs WHERE processed_trigger IS NULL"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'c-long' AND failure_type = 'STEP_COUNT_INFLATION'"), 1);
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT run_id FROM dunetrace.processed_runs ORDER BY seq DESC LIMIT 1"
            )
            .unwrap()
            .as_deref(),
            Some("c-long")
        );
    }
}
