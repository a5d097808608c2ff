//! Issues, destinations and the outbox, digest and fixes — what needs no worker or network.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::support::{self, count, one};
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    fn key() -> String {
        support::key("*")
    }

    fn ev(run: &str, agent: &str, t: &str, step: i32, payload: Value) -> Value {
        support::ev(run, agent, t, step, 1000.0 + f64::from(step), payload)
    }

    /// A finished run; `loops` makes it call `search` five times with identical arguments.
    fn run(k: &str, run: &str, agent: &str, loops: bool) {
        let mut v = vec![ev(run, agent, "run.started", 0, json!({}))];
        let calls = if loops { 5 } else { 1 };
        for i in 1..=calls {
            v.push(ev(
                run,
                agent,
                "tool.called",
                i,
                json!({"tool_name": "search", "args_hash": "0123456789abcdef"}),
            ));
        }
        v.push(ev(run, agent, "run.completed", calls, json!({})));
        support::ingest(k, &Value::Array(v));
        support::process();
    }

    #[pg_test]
    fn issue_lifecycle_open_resolve_reopen() {
        let k = key();
        run(&k, "l1", "bot", true);
        assert_eq!(
            one::<String>("SELECT status FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'")
                .as_deref(),
            Some("open")
        );
        for i in 0..4 {
            run(&k, &format!("c{i}"), "bot", false);
        }
        assert_eq!(
            one::<i32>(
                "SELECT clean_runs_since FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'"
            ),
            Some(4)
        );
        assert_eq!(
            one::<String>("SELECT status FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'")
                .as_deref(),
            Some("open")
        );
        run(&k, "c4", "bot", false);
        assert_eq!(
            one::<String>("SELECT status FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'")
                .as_deref(),
            Some("resolved")
        );
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.issues WHERE resolved_at IS NOT NULL"),
            1
        );
        run(&k, "l2", "bot", true);
        assert_eq!(
            one::<String>("SELECT status FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'")
                .as_deref(),
            Some("reopened")
        );
        assert_eq!(
            one::<i32>(
                "SELECT affected_runs FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'"
            ),
            Some(2)
        );
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.issues WHERE resolved_at IS NULL"),
            1
        );
        // Another agent's runs do not touch this issue.
        run(&k, "o1", "other-bot", false);
        assert_eq!(one::<i32>("SELECT clean_runs_since FROM dunetrace.issues WHERE agent_id = 'bot' AND failure_type = 'TOOL_LOOP'"), Some(0));
    }

    #[pg_test]
    fn live_signals_queue_deliveries_in_the_same_transaction() {
        let k = key();
        let hook = one::<i32>(
            "SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook', 'topsecret')",
        )
        .unwrap();
        let slack =
            one::<i32>("SELECT dunetrace.add_destination('slack', 'http://127.0.0.1:9/slack')")
                .unwrap();
        let critical_only = one::<i32>(
            "SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/c', NULL, 'critical')",
        )
        .unwrap();
        run(&k, "l1", "bot", true);
        // TOOL_LOOP is HIGH: the webhook (LOW) and Slack (HIGH) get it, the CRITICAL-only one not.
        assert_eq!(count(&format!("SELECT count(*) FROM dunetrace.deliveries WHERE destination_id = {hook} AND status = 'pending'")), 1);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM dunetrace.deliveries WHERE destination_id = {slack}"
            )),
            1
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM dunetrace.deliveries WHERE destination_id = {critical_only}"
            )),
            0
        );
        let body: Value = serde_json::from_str(
            &one::<String>(&format!(
                "SELECT body FROM dunetrace.deliveries WHERE destination_id = {hook}"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(body["event"], "failure_signal");
        assert_eq!(body["failure_type"], "TOOL_LOOP");
        assert_eq!(body["run_id"], "l1");
        let slack_body: Value = serde_json::from_str(
            &one::<String>(&format!(
                "SELECT body FROM dunetrace.deliveries WHERE destination_id = {slack}"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(slack_body["attachments"][0]["color"], "#FF6B00");
        assert!(slack_body.to_string().contains("1/1 runs"), "{slack_body}");
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE alerted"),
            0
        );
        assert_eq!(
            count("SELECT count(DISTINCT webhook_id) FROM dunetrace.deliveries"),
            2
        );
    }

    #[pg_test]
    fn grouped_destinations_get_the_first_signal_of_an_issue_and_fold_the_rest() {
        let k = key();
        let slack = one::<i32>(
            "SELECT dunetrace.add_destination('slack', 'http://127.0.0.1:9/slack', NULL, 'LOW')",
        )
        .unwrap();
        let hook =
            one::<i32>("SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook')")
                .unwrap();
        for i in 0..4 {
            run(&k, &format!("g{i}"), "bot", true);
        }
        // Slack groups by issue: one message, three runs folded; the webhook gets every one.
        let by = |d: i32| {
            count(&format!(
                "SELECT count(*) FROM dunetrace.deliveries WHERE destination_id = {d}"
            ))
        };
        assert_eq!(by(slack), 1);
        assert_eq!(by(hook), 4);
        assert_eq!(
            one::<i32>(&format!(
                "SELECT folded_runs FROM dunetrace.alert_groups WHERE destination_id = {slack}"
            )),
            Some(3)
        );
        // Not before the repeat interval (default one hour) ...
        assert_eq!(crate::alerts::queue_followups().unwrap(), 0);
        // ... then one summary of the folded runs.
        Spi::run(&format!(
            "SELECT dunetrace.configure_destination({slack}, '{{\"repeat_interval\": 1}}');
             UPDATE dunetrace.alert_groups SET last_sent_at = now() - interval '2 seconds'"
        ))
        .unwrap();
        assert_eq!(crate::alerts::queue_followups().unwrap(), 1);
        let body: Value = serde_json::from_str(
            &one::<String>("SELECT body FROM dunetrace.deliveries WHERE kind = 'followup'")
                .unwrap(),
        )
        .unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("3 more runs of bot hit TOOL_LOOP since"),
            "{text}"
        );
        assert_eq!(
            one::<i32>(&format!(
                "SELECT folded_runs FROM dunetrace.alert_groups WHERE destination_id = {slack}"
            )),
            Some(0)
        );
        // Webhooks can be grouped too.
        let got = one::<pgrx::JsonB>(&format!(
            "SELECT dunetrace.configure_destination({hook}, '{{\"group_by_issue\": true}}')"
        ))
        .unwrap();
        assert_eq!(got.0["group_by_issue"], true);
        // The first signal after that is a message (the webhook was never told in a group),
        // the next is folded.
        run(&k, "g8", "bot", true);
        assert_eq!(by(hook), 5);
        run(&k, "g9", "bot", true);
        assert_eq!(by(hook), 5, "folded into the webhook's follow-up");
    }

    #[pg_test]
    fn configure_destination_and_snooze_issue_validate_their_input() {
        let hook =
            one::<i32>("SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook')")
                .unwrap();
        for (params, state) in [
            (r#"{"retries": 3}"#, "22023"),
            (r#"{"rate_limit": -1}"#, "22023"),
            (r#"{"concurrency": 1000}"#, "22023"),
            ("[1]", "22023"),
        ] {
            let got = support::try_sql(
                &format!("SELECT dunetrace.configure_destination({hook}, '{params}')"),
                None,
            );
            assert!(got.starts_with(state), "{params}: {got}");
        }
        let got = support::try_sql("SELECT dunetrace.configure_destination(999999, '{}')", None);
        assert!(
            got.starts_with("22023") && got.contains("no destination"),
            "{got}"
        );
        let p = one::<pgrx::JsonB>(&format!(
            "SELECT dunetrace.configure_destination({hook}, '{{\"rate_limit\": 5, \"concurrency\": 2}}')"
        ))
        .unwrap();
        assert_eq!(p.0["rate_limit"], 5.0);
        let p = one::<pgrx::JsonB>(&format!(
            "SELECT dunetrace.configure_destination({hook}, '{{\"rate_limit\": null}}')"
        ))
        .unwrap();
        assert_eq!(p.0["rate_limit"], 0.0, "null restores the default");
        assert_eq!(p.0["concurrency"], 2);
        let got = support::try_sql("SELECT dunetrace.snooze_issue(1, interval '0')", None);
        assert!(got.starts_with("22023"), "{got}");
        assert_eq!(
            one::<bool>("SELECT dunetrace.snooze_issue(424242, interval '1 hour')"),
            Some(false)
        );
    }

    #[pg_test]
    fn signals_without_a_destination_are_consumed_and_shadow_ones_never_queue() {
        let k = key();
        run(&k, "l1", "bot", true);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.failure_signals WHERE NOT alerted"),
            0
        );
        Spi::run("SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook')").unwrap();
        Spi::run(
            "SELECT dunetrace.configure_detector('default', 'tool_loop', '{\"live\": false}')",
        )
        .unwrap();
        run(&k, "l2", "bot", true);
        assert_eq!(count("SELECT count(*) FROM dunetrace.deliveries"), 0);
        assert_eq!(count("SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'l2' AND shadow AND NOT alerted"), 1);
    }

    #[pg_test]
    fn ignored_issues_send_nothing_until_reopened() {
        let k = key();
        Spi::run("SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook')").unwrap();
        run(&k, "l1", "bot", true);
        let id =
            one::<i64>("SELECT id FROM dunetrace.issues WHERE failure_type = 'TOOL_LOOP'").unwrap();
        assert_eq!(
            one::<bool>(&format!("SELECT dunetrace.ignore_issue({id})")),
            Some(true)
        );
        let before = count("SELECT count(*) FROM dunetrace.deliveries");
        run(&k, "l2", "bot", true);
        assert_eq!(count("SELECT count(*) FROM dunetrace.deliveries"), before);
        assert_eq!(
            one::<String>(&format!(
                "SELECT status FROM dunetrace.issues WHERE id = {id}"
            ))
            .as_deref(),
            Some("ignored")
        );
        assert_eq!(
            one::<i32>(&format!(
                "SELECT affected_runs FROM dunetrace.issues WHERE id = {id}"
            )),
            Some(2)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT dunetrace.reopen_issue({id})")),
            Some(true)
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT status FROM dunetrace.issues WHERE id = {id}"
            ))
            .as_deref(),
            Some("open")
        );
        run(&k, "l3", "bot", true);
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.deliveries"),
            before + 1
        );
        assert_eq!(
            one::<bool>("SELECT dunetrace.ignore_issue(-1)"),
            Some(false)
        );
    }

    #[pg_test]
    fn add_destination_validates_and_hides_secrets() {
        for (sql, state) in [
            (
                "SELECT dunetrace.add_destination('email', 'http://x')",
                "22023",
            ),
            (
                "SELECT dunetrace.add_destination('slack', 'ftp://x')",
                "22023",
            ),
            (
                "SELECT dunetrace.add_destination('webhook', 'http://x', NULL, 'urgent')",
                "22023",
            ),
            (
                "SELECT dunetrace.add_destination('webhook', 'http://x', '')",
                "22023",
            ),
            (
                "SELECT dunetrace.add_destination('webhook', 'http://x', 'whsec_!!!')",
                "22023",
            ),
        ] {
            let got = support::try_sql(sql, None);
            assert!(got.starts_with(state), "{sql}: {got}");
        }
        let id = one::<i32>(
            "SELECT dunetrace.add_destination('slack', 'https://hooks.slack.com/services/T/B/X')",
        )
        .unwrap();
        assert_eq!(
            one::<String>(&format!(
                "SELECT min_severity FROM dunetrace.destinations WHERE id = {id}"
            ))
            .as_deref(),
            Some("HIGH")
        );
        assert_eq!(
            one::<bool>(&format!("SELECT dunetrace.remove_destination({id})")),
            Some(true)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT dunetrace.remove_destination({id})")),
            Some(false)
        );
    }

    #[pg_test]
    fn dispatch_records_a_failed_attempt_and_schedules_a_retry() {
        let k = key();
        // Port 9 (discard) on loopback: connection refused, no answer.
        Spi::run("SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/hook')").unwrap();
        run(&k, "l1", "bot", true);
        assert_eq!(one::<i32>("SELECT dunetrace.dispatch()"), Some(1));
        let (status, attempts) =
            Spi::get_two::<String, i32>("SELECT status, attempts FROM dunetrace.deliveries")
                .unwrap();
        assert_eq!(status.as_deref(), Some("pending"));
        assert_eq!(attempts, Some(1));
        assert_eq!(count("SELECT count(*) FROM dunetrace.deliveries WHERE last_error IS NOT NULL AND next_attempt_at > clock_timestamp()"), 1);
        // Not due yet: nothing to send.
        assert_eq!(one::<i32>("SELECT dunetrace.dispatch()"), Some(0));
        assert!(support::try_sql("SELECT dunetrace.dispatch(-1)", None).starts_with("22023"));
    }

    #[pg_test]
    fn digest_is_queued_once_per_window_with_real_rates() {
        let k = key();
        Spi::run("SELECT dunetrace.add_destination('slack', 'http://127.0.0.1:9/slack')").unwrap();
        run(&k, "l1", "bot", true);
        for i in 0..3 {
            run(&k, &format!("c{i}"), "bot", false);
        }
        Spi::run("DELETE FROM dunetrace.deliveries").unwrap();
        // Not the scheduled hour: nothing.
        Spi::run("SELECT set_config('dunetrace.digest_day', ((extract(isodow FROM now() AT TIME ZONE 'UTC')::int + 1) % 7)::text, true)").unwrap();
        assert_eq!(one::<bool>("SELECT dunetrace.send_digest()"), Some(false));
        Spi::run("SELECT set_config('dunetrace.digest_day', (extract(isodow FROM now() AT TIME ZONE 'UTC')::int - 1)::text, true)").unwrap();
        Spi::run("SELECT set_config('dunetrace.digest_hour', extract(hour FROM now() AT TIME ZONE 'UTC')::int::text, true)").unwrap();
        assert_eq!(one::<bool>("SELECT dunetrace.send_digest()"), Some(true));
        assert_eq!(one::<bool>("SELECT dunetrace.send_digest()"), Some(false));
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.deliveries WHERE kind = 'digest'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM dunetrace.digest_log"), 1);
        let body =
            one::<String>("SELECT body FROM dunetrace.deliveries WHERE kind = 'digest'").unwrap();
        assert!(body.contains("1/4 runs (25%)"), "{body}");
        assert!(body.contains("Weekly Agent Health Digest"), "{body}");
        // force ignores schedule and guard.
        assert_eq!(
            one::<bool>("SELECT dunetrace.send_digest(true)"),
            Some(true)
        );
        assert_eq!(
            count("SELECT count(*) FROM dunetrace.deliveries WHERE kind = 'digest'"),
            2
        );
    }

    #[pg_test]
    fn fixes_are_classified_and_judged() {
        let k = key();
        run(&k, "l1", "bot", true);
        let sid =
            one::<i64>("SELECT id FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP'")
                .unwrap();
        let st =
            Spi::get_one_with_args::<pgrx::JsonB>("SELECT dunetrace.fix_status($1)", &[sid.into()])
                .unwrap()
                .unwrap()
                .0;
        assert_eq!(st["fix_applied"], false);
        let fid = Spi::get_one_with_args::<i64>(
            "SELECT dunetrace.record_fix($1, 'Never call the same tool with the same arguments twice.', 'clipboard')",
            &[sid.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            one::<String>(&format!(
                "SELECT fix_type FROM dunetrace.fixes WHERE id = {fid}"
            ))
            .as_deref(),
            Some("prompt_addition")
        );
        let status = |expect: &str| {
            let st = Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT dunetrace.fix_status($1)",
                &[sid.into()],
            )
            .unwrap()
            .unwrap()
            .0;
            assert_eq!(st["verdict"], expect, "{st}");
        };
        status("insufficient_data");
        // Fixes applied "in the past" so that this transaction's runs count as after them.
        Spi::run(&format!(
            "UPDATE dunetrace.fixes SET applied_at = now() - interval '1 minute' WHERE id = {fid}"
        ))
        .unwrap();
        Spi::run("UPDATE dunetrace.failure_signals SET detected_at = now() - interval '2 minutes'")
            .unwrap();
        Spi::run("UPDATE dunetrace.runs SET last_received_at = now() - interval '2 minutes'")
            .unwrap();
        for i in 0..5 {
            run(&k, &format!("c{i}"), "bot", false);
        }
        status("likely_fixed");
        for i in 5..10 {
            run(&k, &format!("c{i}"), "bot", false);
        }
        status("verified");
        run(&k, "l2", "bot", true);
        status("still_occurring");
        assert!(
            support::try_sql("SELECT dunetrace.record_fix(-5, 'x', 'manual')", None)
                .starts_with("P0002")
        );
        assert!(support::try_sql(
            &format!("SELECT dunetrace.record_fix({sid}, '  ', 'manual')"),
            None
        )
        .starts_with("22023"));
    }

    #[pg_test]
    fn apply_fix_refuses_what_it_must_not_apply() {
        let k = key();
        let events = json!([
            ev(
                "inj",
                "bot",
                "run.started",
                0,
                json!({"injection_signal": {"matched_pattern_count": 2, "matched_patterns": ["jailbreak", "act_as"], "input_length": 50}})
            ),
            ev("inj", "bot", "run.completed", 0, json!({})),
        ]);
        Spi::run_with_args(
            "SELECT dunetrace.ingest($1, $2::jsonb)",
            &[k.as_str().into(), events.to_string().into()],
        )
        .unwrap();
        Spi::run("SELECT dunetrace.process_runs()").unwrap();
        let inj = one::<i64>("SELECT id FROM dunetrace.failure_signals WHERE failure_type = 'PROMPT_INJECTION_SIGNAL'").unwrap();
        let got = support::try_sql(
            &format!("SELECT dunetrace.apply_fix({inj}, 'p', 'x')"),
            None,
        );
        assert!(got.starts_with("0A000"), "{got}");
        run(&k, "l1", "bot", true);
        let sid =
            one::<i64>("SELECT id FROM dunetrace.failure_signals WHERE failure_type = 'TOOL_LOOP'")
                .unwrap();
        let got = support::try_sql(
            &format!("SELECT dunetrace.apply_fix({sid}, 'p', 'x')"),
            None,
        );
        assert!(got.starts_with("55000"), "{got}");
        let got = support::try_sql(
            "SELECT dunetrace.configure_langfuse('langfuse.local', 'pk', 'sk')",
            None,
        );
        assert!(got.starts_with("22023"), "{got}");
        assert_eq!(count("SELECT count(*) FROM dunetrace.fixes"), 0);
    }
}
