//! SQL behaviour of keys, ingest and privileges. Each test runs in a transaction that is
//! rolled back.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::{count, key, try_sql};
    use pgrx::prelude::*;

    const H16: &str = "0123456789abcdef";

    fn try_ingest(key: &str, events: serde_json::Value) -> String {
        try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, {}::jsonb)",
                pgrx::spi::quote_literal(key),
                pgrx::spi::quote_literal(events.to_string())
            ),
            None,
        )
    }

    fn ev(t: &str, step: i32, payload: serde_json::Value) -> serde_json::Value {
        crate::tests::support::ev(
            "run-1",
            "agent-a",
            t,
            step,
            1700000000.25 + step as f64,
            payload,
        )
    }

    fn all_types() -> serde_json::Value {
        use serde_json::json;
        json!([
            ev(
                "run.started",
                0,
                json!({"input_hash": H16, "model": "gpt-4o", "tools": ["search"]})
            ),
            ev(
                "llm.called",
                1,
                json!({"model": "gpt-4o", "prompt_tokens": 100})
            ),
            ev(
                "llm.responded",
                1,
                json!({"completion_tokens": 5, "latency_ms": 10, "finish_reason": "stop", "output_hash": H16, "output_length": 12})
            ),
            ev(
                "tool.called",
                2,
                json!({"tool_name": "search", "args_hash": H16})
            ),
            ev(
                "tool.responded",
                2,
                json!({"tool_name": "search", "success": true, "output_length": 3, "latency_ms": 7})
            ),
            ev(
                "retrieval.called",
                3,
                json!({"index_name": "docs", "query_hash": H16})
            ),
            ev(
                "retrieval.responded",
                3,
                json!({"index_name": "docs", "result_count": 2, "top_score": 0.8, "latency_ms": 4})
            ),
            ev(
                "external.signal",
                3,
                json!({"signal_name": "rate_limited", "source": "openai"})
            ),
            ev(
                "policy.triggered",
                3,
                json!({"policy_name": "p", "action_type": "warn", "trigger": "steps", "value": 3})
            ),
            ev(
                "run.errored",
                3,
                json!({"error_type": "ValueError", "error_hash": H16, "step_index": 3})
            ),
            ev(
                "run.completed",
                3,
                json!({"total_steps": 3, "exit_reason": "final_answer", "tool_call_count": 1})
            ),
        ])
    }

    #[pg_test]
    fn valid_batch_of_every_type_is_stored() {
        let k = key("agent-a");
        assert!(k.starts_with("dt_") && k.len() == 46, "{k}");
        let out = Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT dunetrace.ingest($1, $2::jsonb)",
            &[k.as_str().into(), all_types().to_string().into()],
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(out["accepted"], 11);
        assert_eq!(out["batch_id"].as_str().unwrap().len(), 36);
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), 11);
        assert_eq!(
            count("SELECT count(DISTINCT batch_id) FROM dunetrace.events"),
            1
        );
        let row = Spi::get_two::<String, f64>(
            "SELECT payload->>'tool_name', \"timestamp\" FROM dunetrace.events WHERE event_type = 'tool.called'",
        )
        .unwrap();
        assert_eq!(row, (Some("search".into()), Some(1700000002.25)));
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.events WHERE received_at = now() AND agent_id = 'agent-a' AND agent_version = 'v1' AND run_id = 'run-1'"),
            11
        );
        // Run tracking: one row, started, terminal = the first terminal event of the batch.
        let (terminal, events) = Spi::get_two::<String, i32>(
            "SELECT terminal_event, event_count FROM dunetrace.runs WHERE run_id = 'run-1' AND has_started",
        )
        .unwrap();
        assert_eq!(terminal.as_deref(), Some("run.errored"));
        assert_eq!(events, Some(11));
    }

    #[pg_test]
    fn stored_payloads_are_the_ones_sent_in_order() {
        use serde_json::json;
        let k = key("agent-a");
        let batch = all_types();
        assert_eq!(try_ingest(&k, batch.clone()), "ok");
        let stored = Spi::get_one::<pgrx::JsonB>(
            "SELECT jsonb_agg(payload ORDER BY id) FROM dunetrace.events",
        )
        .unwrap()
        .unwrap()
        .0;
        let sent: Vec<serde_json::Value> = batch
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["payload"].clone())
            .collect();
        assert_eq!(stored, serde_json::Value::Array(sent));
        // A single object, a null payload and a missing one.
        let one = json!({"event_type": "tool.called", "run_id": "r9", "agent_id": "agent-a",
                         "agent_version": "v1", "step_index": 1,
                         "payload": {"tool_name": "search", "args_hash": H16}});
        assert_eq!(try_ingest(&k, one), "ok");
        let mut null_payload = ev("tool.called", 4, json!(null));
        null_payload["run_id"] = json!("r10");
        let mut missing = ev("tool.called", 5, json!(null));
        missing["run_id"] = json!("r10");
        missing.as_object_mut().unwrap().remove("payload");
        assert_eq!(try_ingest(&k, json!([null_payload, missing])), "ok");
        let got = Spi::get_one::<pgrx::JsonB>(
            "SELECT jsonb_agg(payload ORDER BY id) FROM dunetrace.events WHERE run_id IN ('r9', 'r10')",
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(
            got,
            json!([{"tool_name": "search", "args_hash": H16}, {}, {}])
        );
    }

    #[pg_test]
    fn missing_timestamp_defaults_to_now_and_single_object_accepted() {
        let k = key("agent-a");
        let e = serde_json::json!({"event_type": "run.started", "run_id": "r2", "agent_id": "agent-a",
                                   "agent_version": "v1", "step_index": 0});
        assert_eq!(try_ingest(&k, e), "ok");
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.events WHERE abs(\"timestamp\" - extract(epoch FROM clock_timestamp())::float8) < 60"),
            1
        );
    }

    #[pg_test]
    fn rejections_have_precise_errors_and_store_nothing() {
        use serde_json::json;
        let k = key("agent-a");
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (
                json!([
                    ev("run.started", 0, json!({})),
                    ev(
                        "llm.responded",
                        1,
                        json!({"output_hash": "The capital of France is Paris"})
                    )
                ]),
                "22023",
                "event 1: payload.output_hash",
            ),
            (
                json!([ev(
                    "llm.called",
                    1,
                    json!({"prompt": "What is the capital of France?"})
                )]),
                "22023",
                "event 0: payload.prompt: unknown key",
            ),
            (
                json!([ev("bogus.type", 0, json!({}))]),
                "22023",
                "event 0: event_type",
            ),
            (
                json!([ev("run.started", -1, json!({}))]),
                "22023",
                "event 0: step_index: must not be negative",
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "agent-a", "agent_version": "v", "step_index": "0"}]),
                "22P02",
                "event 0: step_index",
            ),
            (
                json!([ev("llm.called", 1, json!({"prompt_tokens": "many"}))]),
                "22P02",
                "event 0: payload.prompt_tokens",
            ),
            (
                json!([ev(
                    "tool.called",
                    1,
                    json!({"tool_name": "please search the web"})
                )]),
                "22023",
                "event 0: payload.tool_name",
            ),
            (
                json!([
                    ev("run.started", 0, json!({"extra": 1})),
                    ev("run.started", 0, json!({}))
                ]),
                "22023",
                "event 0: payload.extra",
            ),
            (
                json!([]),
                "22023",
                "events: must contain at least one event",
            ),
            (
                json!(42),
                "22P02",
                "events: must be an event object or an array of events",
            ),
            (
                serde_json::Value::Array(vec![ev("llm.called", 1, json!({})); 1001]),
                "22023",
                "at most 1000 events",
            ),
        ];
        for (events, state, text) in cases {
            let got = try_ingest(&k, events.clone());
            assert!(got.starts_with(state), "{events}: {got}");
            assert!(got.contains(text), "{events}: {got}");
            assert!(
                !got.contains("Paris"),
                "errors must not echo content: {got}"
            );
        }
        let huge = try_sql(
            &format!(
                "SELECT dunetrace.ingest({}, '{{\"event_type\":\"run.started\",\"run_id\":\"r\",\"agent_id\":\"agent-a\",\"agent_version\":\"v\",\"step_index\":0,\"timestamp\":1e400}}'::jsonb)",
                pgrx::spi::quote_literal(&k)
            ),
            None,
        );
        assert!(huge.starts_with("22P02"), "{huge}");
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), 0);
        assert_eq!(count("SELECT count(*) FROM dunetrace.runs"), 0);
    }

    #[pg_test]
    fn bad_revoked_and_foreign_keys_are_refused() {
        let k = key("agent-a");
        let batch = serde_json::json!([ev("run.started", 0, serde_json::json!({}))]);
        assert!(try_ingest(
            "dt_not-a-real-key-at-all-000000000000000000000",
            batch.clone()
        )
        .starts_with("28000: dunetrace.ingest: invalid API key"));
        assert!(try_ingest("", batch.clone()).starts_with("28000"));
        assert!(try_ingest("hello", batch.clone()).starts_with("28000"));

        let other = key("agent-b");
        let got = try_ingest(&other, batch.clone());
        assert!(
            got.starts_with("42501") && got.contains("does not match"),
            "{got}"
        );

        let star = key("*");
        assert_eq!(try_ingest(&star, batch.clone()), "ok");

        assert!(Spi::get_one_with_args::<bool>(
            "SELECT dunetrace.revoke_api_key($1)",
            &[k.as_str().into()]
        )
        .unwrap()
        .unwrap());
        let got = try_ingest(&k, batch.clone());
        assert!(got.starts_with("28000") && got.contains("revoked"), "{got}");
        assert!(!Spi::get_one_with_args::<bool>(
            "SELECT dunetrace.revoke_api_key($1)",
            &[k.as_str().into()]
        )
        .unwrap()
        .unwrap());

        // Revoking by prefix.
        assert!(Spi::get_one_with_args::<bool>(
            "SELECT dunetrace.revoke_api_key(left($1, 12))",
            &[other.as_str().into()]
        )
        .unwrap()
        .unwrap());
        assert!(try_ingest(&other, batch).starts_with("28000"));
        assert_eq!(count("SELECT count(*) FROM dunetrace.events"), 1);
    }

    #[pg_test]
    fn keys_are_stored_hashed() {
        let k = key("agent-a");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM dunetrace.api_keys WHERE key_hash = sha256(convert_to({}, 'UTF8')) AND key_prefix = left({0}, 12)",
                pgrx::spi::quote_literal(&k)
            )),
            1
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM dunetrace.api_keys t WHERE t::text LIKE '%' || {} || '%'",
                pgrx::spi::quote_literal(&k[12..])
            )),
            0
        );
        let bad = try_sql("SELECT dunetrace.create_api_key('has spaces')", None);
        assert!(bad.starts_with("22023"), "{bad}");
    }

    #[pg_test]
    fn ingest_role_may_only_ingest() {
        let k = key("agent-a");
        let call = format!(
            "SELECT dunetrace.ingest({}, {}::jsonb)",
            pgrx::spi::quote_literal(&k),
            pgrx::spi::quote_literal(all_types().to_string())
        );
        assert_eq!(try_sql(&call, Some("dunetrace_ingest")), "ok");
        for table in [
            "events",
            "runs",
            "failure_signals",
            "processed_runs",
            "api_keys",
            "issues",
            "digest_log",
            "fixes",
            "detector_settings",
            "destinations",
            "deliveries",
        ] {
            let got = try_sql(
                &format!("SELECT 1 FROM dunetrace.{table}"),
                Some("dunetrace_ingest"),
            );
            assert!(got.starts_with("42501"), "{table}: {got}");
        }
        let got = try_sql("SELECT dunetrace.process_runs()", Some("dunetrace_ingest"));
        assert!(got.starts_with("42501"), "{got}");
        let got = try_sql(
            "SELECT dunetrace.create_api_key('x')",
            Some("dunetrace_ingest"),
        );
        assert!(got.starts_with("42501"), "{got}");
    }

    #[pg_test]
    fn reader_role_reads_data_but_not_secrets() {
        key("agent-a");
        assert_eq!(
            try_sql(
                "SELECT count(*) FROM dunetrace.events",
                Some("dunetrace_reader")
            ),
            "ok"
        );
        assert_eq!(
            try_sql(
                "SELECT key_prefix, agent_id FROM dunetrace.api_keys",
                Some("dunetrace_reader")
            ),
            "ok"
        );
        for q in [
            "SELECT key_hash FROM dunetrace.api_keys",
            "SELECT * FROM dunetrace.api_keys",
            "SELECT url FROM dunetrace.destinations",
            "SELECT secret FROM dunetrace.destinations",
            "SELECT dunetrace.create_api_key('x')",
        ] {
            let got = try_sql(q, Some("dunetrace_reader"));
            assert!(got.starts_with("42501"), "{q}: {got}");
        }
        // What PUBLIC may do is tested with a fresh role in safety.rs.
    }

    #[pg_test]
    fn deploy_markers_are_key_checked_and_content_free() {
        let k = key("agent-a");
        let call = |agent: &str, version: &str, meta: &str| {
            try_sql(
                &format!(
                    "SELECT dunetrace.record_deploy({}, {}, {}, {}::jsonb)",
                    pgrx::spi::quote_literal(&k),
                    pgrx::spi::quote_literal(agent),
                    pgrx::spi::quote_literal(version),
                    pgrx::spi::quote_literal(meta)
                ),
                Some("dunetrace_ingest"),
            )
        };
        assert_eq!(
            call(
                "agent-a",
                "v1.2.3",
                r#"{"commit": "abc123", "canary": true}"#
            ),
            "ok"
        );
        assert!(call("agent-b", "v1", "{}").starts_with("42501"));
        assert!(call("agent-a", "version one", "{}").starts_with("22023"));
        assert!(
            call("agent-a", "v2", r#"{"note": "shipped the new prompt"}"#).starts_with("22023")
        );
        assert!(call("agent-a", "v2", "[]").starts_with("22P02"));
        assert_eq!(count("SELECT count(*) FROM dunetrace.deploy_events WHERE agent_id = 'agent-a' AND version = 'v1.2.3'"), 1);
        assert_eq!(count("SELECT count(*) FROM dunetrace.deploy_events"), 1);
    }
}
