//! Alerts end to end: a committed run → the worker → signed webhook and Slack requests at local
//! receivers, with no SQL call in between; retries and failures per destination.

use dunetrace_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A Standard Webhooks secret (the specification's example key).
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn signal_alerted(c: &mut postgres::Client, signal_id: i64) -> bool {
    c.query_one(
        "SELECT alerted FROM dunetrace.failure_signals WHERE id = $1",
        &[&signal_id],
    )
    .expect("query signal")
    .get(0)
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn looping_run_sends_signed_webhook_and_slack_alert_without_manual_calls() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    let slack = Receiver::ok();
    let hook_dest = add_destination(
        &mut c,
        "webhook",
        &hook.url("/hooks/dunetrace"),
        Some(WHSEC),
        None,
    );
    let slack_dest = add_destination(
        &mut c,
        "slack",
        &slack.url("/services/T000/B000/XXXX"),
        None,
        None,
    );
    let agent = Agent::new(&mut c, "e2e-alert");

    // Ingest and commit; from here on only the receivers are watched until both requests are in.
    let run = agent.loop_run(&mut c);
    let hooks = hook.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    let slacks = slack.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    let (wh, sl) = (&hooks[0], &slacks[0]);
    println!(
        "latency commit → arrival: webhook {:?}, slack {:?}",
        wh.at.duration_since(run.committed_at),
        sl.at.duration_since(run.committed_at)
    );

    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(5));
    let ex = explain(&mut c, signal_id);
    assert_eq!(ex["severity"], "HIGH");
    let title = ex["title"].as_str().expect("title");

    // ---- webhook: headers and both signatures
    assert_eq!(wh.method, "POST");
    assert_eq!(wh.path, "/hooks/dunetrace");
    assert_eq!(wh.header("content-type"), Some("application/json"));
    assert_eq!(wh.header("x-dunetrace-event"), Some("failure_signal"));
    assert_eq!(wh.header("x-dunetrace-version"), Some("1.0"));
    assert_webhook_signed(wh, WHSEC);

    // ---- webhook: body (compact, keys in the original's order, the signal's explanation)
    let body = wh.json();
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "schema_version",
            "event",
            "sent_at",
            "failure_type",
            "severity",
            "confidence",
            "run_id",
            "agent_id",
            "agent_version",
            "step_index",
            "detected_at",
            "title",
            "what",
            "why_it_matters",
            "evidence_summary",
            "evidence",
            "suggested_fixes"
        ]
    );
    assert!(wh
        .text()
        .starts_with(r#"{"schema_version":"1.0","event":"failure_signal","sent_at":"#));
    assert_eq!(body["failure_type"], "TOOL_LOOP");
    assert_eq!(body["severity"], "HIGH");
    assert_eq!(body["run_id"], run.run_id.as_str());
    assert_eq!(body["agent_id"], agent.id.as_str());
    assert_eq!(body["agent_version"], "v1");
    assert_eq!(body["step_index"], ex["step_index"]);
    assert_eq!(body["confidence"], ex["confidence"]);
    for k in [
        "title",
        "what",
        "why_it_matters",
        "evidence_summary",
        "suggested_fixes",
        "evidence",
    ] {
        assert_eq!(body[k], ex[k], "webhook body field {k}");
    }
    assert_eq!(body["evidence"]["tool"], "search");
    assert_eq!(body["evidence"]["count"], 5);

    // ---- Slack: Block Kit layout
    assert_eq!(sl.method, "POST");
    assert_eq!(sl.path, "/services/T000/B000/XXXX");
    assert_eq!(sl.header("content-type"), Some("application/json"));
    assert!(
        sl.header("x-dunetrace-signature").is_none(),
        "Slack requests are not signed"
    );
    let payload = sl.json();
    assert_eq!(payload["attachments"][0]["color"], "#FF6B00");
    let blocks = slack_blocks(&payload);
    let types: Vec<&str> = blocks
        .iter()
        .map(|b| b["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "header", "context", "divider", "section", "section", "section", "section", "divider",
            "section", "divider", "actions"
        ],
        "Slack blocks: {payload}"
    );
    let header = block_text(&blocks[0]);
    assert!(
        header.contains(title),
        "header {header:?} lacks the title {title:?}"
    );
    assert_eq!(header, format!(":large_orange_circle:  {title}"));
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    let confidence_pct = (ex["confidence"].as_f64().expect("confidence") * 100.0).trunc() as i64;
    assert_eq!(
        block_text(&blocks[1]),
        format!(
            "*Agent:* `{}`  *Version:* `v1`  *Run:* `{}`  *Step:* {}  *Confidence:* {confidence_pct}%",
            agent.id, run.run_id, ex["step_index"]
        )
    );
    // First looping run of a new agent: 1 of its 1 processed runs → a real rate of 100%.
    assert_eq!(
        block_text(&blocks[3]),
        ":warning: *Systemic pattern* — 1/1 runs affected (100% of runs in the last 7 days)"
    );
    assert_eq!(
        block_text(&blocks[4]),
        format!("*What happened*\n{}", ex["what"].as_str().unwrap())
    );
    assert_eq!(
        block_text(&blocks[5]),
        format!(
            "*Why it matters*\n{}",
            ex["why_it_matters"].as_str().unwrap()
        )
    );
    assert_eq!(
        block_text(&blocks[6]),
        format!(
            "*Evidence*\n```{}```",
            ex["evidence_summary"].as_str().unwrap()
        )
    );
    let fix = &ex["suggested_fixes"][0];
    let fix_text = block_text(&blocks[8]);
    assert!(
        fix_text.starts_with(&format!(
            "*Suggested fix:* {}",
            fix["description"].as_str().unwrap()
        )),
        "{fix_text}"
    );
    assert!(
        fix_text.contains(fix["code"].as_str().unwrap()),
        "{fix_text}"
    );
    let button = &blocks[10]["elements"][0];
    assert_eq!(button["text"]["text"], "View Run");
    assert_eq!(
        button["url"],
        Value::from(format!("http://dashboard.test/runs/{}", run.run_id))
    );
    assert_eq!(button["style"], "primary");

    // ---- the outbox: both delivered on the first attempt, the signal alerted
    let d = wait_delivery(
        &mut c,
        signal_id,
        hook_dest,
        Duration::from_secs(5),
        "webhook delivered",
        |d| d.status == "delivered",
    );
    assert_eq!((d.attempts, d.last_http_status), (1, Some(200)));
    assert_eq!(Some(d.webhook_id.as_str()), wh.header("webhook-id"));
    assert_eq!(
        d.body.as_bytes(),
        wh.body.as_slice(),
        "the stored body is what was signed and sent"
    );
    let d = wait_delivery(
        &mut c,
        signal_id,
        slack_dest,
        Duration::from_secs(5),
        "slack delivered",
        |d| d.status == "delivered",
    );
    assert_eq!((d.attempts, d.last_http_status), (1, Some(200)));
    wait_until(Duration::from_secs(5), "the signal to be alerted", || {
        signal_alerted(&mut c, signal_id).then_some(())
    });
    assert_eq!(hook.requests_containing(&run.run_id).len(), 1);
    assert_eq!(slack.requests_containing(&run.run_id).len(), 1);
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn retries_keep_the_webhook_id_and_a_failing_destination_does_not_hold_up_others() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let flaky = Receiver::statuses(&[500, 500, 200]);
    // Always 500, and slowly, so its attempts take a while.
    let dead = Receiver::start(|_| Reply::Status(500).after(Duration::from_millis(1000)));
    let healthy = Receiver::ok();
    let flaky_dest = add_destination(
        &mut c,
        "webhook",
        &flaky.url("/flaky"),
        Some("flaky-secret"),
        None,
    );
    let dead_dest = add_destination(
        &mut c,
        "webhook",
        &dead.url("/dead"),
        Some("dead-secret"),
        None,
    );
    let healthy_dest = add_destination(
        &mut c,
        "webhook",
        &healthy.url("/healthy"),
        Some("healthy-secret"),
        None,
    );
    let agent = Agent::new(&mut c, "e2e-retry");
    let run = agent.loop_run(&mut c);

    // The healthy destination gets the alert at once and its delivery is recorded while the
    // failing one is still being retried.
    let h = healthy.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
    println!(
        "latency commit → arrival (healthy destination next to failing ones): {:?}",
        h[0].at.duration_since(run.committed_at)
    );
    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(5));
    let hd = wait_delivery(
        &mut c,
        signal_id,
        healthy_dest,
        Duration::from_secs(5),
        "healthy delivered",
        |d| d.status == "delivered",
    );
    let recorded_at = Instant::now();
    assert_eq!(hd.attempts, 1);
    let dd = deliveries_for_signal(&mut c, signal_id)
        .into_iter()
        .find(|d| d.destination_id == dead_dest)
        .expect("a delivery to the failing destination");
    assert!(
        dd.status != "failed" && dd.attempts < 3,
        "the healthy delivery waited for the failing one: {dd:?}"
    );
    println!(
        "healthy delivery recorded {:?} after commit (failing destination at attempt {})",
        recorded_at.duration_since(run.committed_at),
        dd.attempts
    );

    // 500, 500, 200: three requests with one webhook-id, each validly signed; delivered.
    let fr = flaky.wait_for_containing(&run.run_id, 3, Duration::from_secs(20));
    let id = fr[0].header("webhook-id").expect("webhook-id").to_string();
    for r in &fr {
        assert_eq!(
            r.header("webhook-id"),
            Some(id.as_str()),
            "webhook-id changed on retry"
        );
        assert_eq!(r.body, fr[0].body, "the body changed on retry");
        assert_webhook_signed(r, "flaky-secret");
    }
    let fd = wait_delivery(
        &mut c,
        signal_id,
        flaky_dest,
        Duration::from_secs(10),
        "flaky delivered",
        |d| d.status == "delivered",
    );
    assert_eq!(fd.attempts, 3);
    assert_eq!(fd.last_http_status, Some(200));
    assert_eq!(fd.webhook_id, id);
    assert_eq!(
        flaky.requests().len(),
        3,
        "no request after the successful one"
    );

    // Always 500: failed after 3 attempts, and nothing more is sent.
    let dd = wait_delivery(
        &mut c,
        signal_id,
        dead_dest,
        Duration::from_secs(20),
        "dead failed",
        |d| d.status == "failed",
    );
    assert_eq!(dd.attempts, 3);
    assert_eq!(dd.last_http_status, Some(500));
    assert!(
        dd.last_error.as_deref().unwrap_or("").contains("500"),
        "{dd:?}"
    );
    let dr = dead.requests();
    assert_eq!(dr.len(), 3, "a failed delivery was sent again");
    assert!(dr
        .iter()
        .all(|r| r.header("webhook-id") == Some(dd.webhook_id.as_str())));
    assert!(
        h[0].at < dr[1].at,
        "the healthy destination got the alert only after the failing one's first retry"
    );
    assert_eq!(healthy.requests().len(), 1);
    assert!(
        signal_alerted(&mut c, signal_id),
        "a signal with a successful delivery is alerted"
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn destinations_get_only_the_severities_they_asked_for() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let slack_high = Receiver::ok();
    let slack_critical = Receiver::ok();
    let hook_critical = Receiver::ok();
    let hook_plain = Receiver::ok();
    let d_slack_high = add_destination(&mut c, "slack", &slack_high.url("/s1"), None, None);
    let d_slack_critical = add_destination(
        &mut c,
        "slack",
        &slack_critical.url("/s2"),
        None,
        Some("CRITICAL"),
    );
    let d_hook_critical = add_destination(
        &mut c,
        "webhook",
        &hook_critical.url("/h1"),
        Some("critical-secret"),
        Some("CRITICAL"),
    );
    let d_hook_plain = add_destination(&mut c, "webhook", &hook_plain.url("/h2"), None, None);
    let agent = Agent::new(&mut c, "e2e-severity");

    // HIGH: the default Slack (HIGH) and the LOW webhook, not the CRITICAL-only ones.
    let high = agent.loop_run(&mut c);
    // CRITICAL: everyone.
    let critical = agent.injection_run(&mut c);
    let s_high = wait_signal(&mut c, &high.run_id, "TOOL_LOOP", Duration::from_secs(10));
    let s_crit = wait_signal(
        &mut c,
        &critical.run_id,
        "PROMPT_INJECTION_SIGNAL",
        Duration::from_secs(10),
    );
    for r in [&slack_high, &slack_critical, &hook_critical, &hook_plain] {
        r.wait_for_containing(&critical.run_id, 1, Duration::from_secs(10));
    }
    slack_high.wait_for_containing(&high.run_id, 1, Duration::from_secs(10));
    hook_plain.wait_for_containing(&high.run_id, 1, Duration::from_secs(10));
    let mut dests: Vec<i32> = deliveries_for_signal(&mut c, s_high)
        .iter()
        .map(|d| d.destination_id)
        .collect();
    dests.sort_unstable();
    assert_eq!(
        dests,
        vec![d_slack_high, d_hook_plain],
        "HIGH signal deliveries"
    );
    let mut dests: Vec<i32> = deliveries_for_signal(&mut c, s_crit)
        .iter()
        .map(|d| d.destination_id)
        .collect();
    dests.sort_unstable();
    assert_eq!(
        dests,
        vec![
            d_slack_high,
            d_slack_critical,
            d_hook_critical,
            d_hook_plain
        ]
    );
    assert!(slack_critical.requests_containing(&high.run_id).is_empty());
    assert!(hook_critical.requests_containing(&high.run_id).is_empty());

    // The CRITICAL Slack alert: red.
    let payload = slack_critical.requests_containing(&critical.run_id)[0].json();
    assert_eq!(payload["attachments"][0]["color"], "#FF0000");
    assert!(block_text(&slack_blocks(&payload)[0]).starts_with(":red_circle:  "));

    // A webhook without a secret: ids and timestamps, no signatures.
    let plain = &hook_plain.requests_containing(&high.run_id)[0];
    assert!(plain.header("webhook-id").is_some());
    assert!(plain.header("webhook-timestamp").is_some());
    assert!(plain.header("x-dunetrace-signature").is_none());
    assert!(plain.header("webhook-signature").is_none());
    assert_webhook_signed(
        &hook_critical.requests_containing(&critical.run_id)[0],
        "critical-secret",
    );
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_signal_without_a_matching_destination_is_consumed() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let slack = Receiver::ok();
    // Slack for CRITICAL only: a HIGH signal matches nothing.
    add_destination(
        &mut c,
        "slack",
        &slack.url("/only-critical"),
        None,
        Some("CRITICAL"),
    );
    let agent = Agent::new(&mut c, "e2e-nodest");
    let run = agent.loop_run(&mut c);
    let signal_id = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(10));
    assert!(deliveries_for_signal(&mut c, signal_id).is_empty());
    assert!(
        signal_alerted(&mut c, signal_id),
        "a signal no destination wants is marked alerted in the same transaction"
    );
    assert!(slack.requests().is_empty());
}
