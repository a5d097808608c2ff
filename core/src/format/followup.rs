//! Follow-ups of a grouped issue: when a destination groups alerts by issue, the runs that hit
//! an open issue after its first message are folded into one summary per repeat interval
//! ("12 more runs of support-bot hit TOOL_LOOP since 14:02 UTC").

use super::{context_block, dashboard_base, link_button_block, plural, section_block};
use super::{push_py_float, push_py_str};
use serde_json::{json, Value};

/// `event` of a webhook follow-up body.
pub const EVENT: &str = "issue_followup";

/// What a follow-up reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded<'a> {
    pub agent_id: &'a str,
    pub failure_type: &'a str,
    /// Runs folded since the last message.
    pub runs: i64,
    /// When the first of them was folded, epoch seconds.
    pub since: f64,
    /// The newest folded run, for the link.
    pub run_id: Option<&'a str>,
}

/// `HH:MM` (UTC) of an epoch time.
pub fn clock(epoch: f64) -> String {
    let secs = epoch.max(0.0) as i64 % 86_400;
    format!("{:02}:{:02}", secs / 3600, (secs % 3600) / 60)
}

/// The summary line.
pub fn line(f: &Folded<'_>) -> String {
    format!(
        "{} more {} of {} hit {} since {} UTC",
        f.runs,
        if f.runs == 1 { "run" } else { "runs" },
        f.agent_id,
        f.failure_type,
        clock(f.since)
    )
}

/// The Slack message of a follow-up.
pub fn slack(f: &Folded<'_>, dashboard_url: &str) -> Value {
    let text = line(f);
    let mut blocks = vec![
        section_block(&format!(":repeat: {text}")),
        context_block(&format!(
            "Grouped: one message per issue and repeat interval ({} folded)",
            plural(f.runs, "run")
        )),
    ];
    if let Some(run) = f.run_id {
        blocks.push(link_button_block(
            "View Latest Run",
            &format!("{}/runs/{run}", dashboard_base(dashboard_url)),
        ));
    }
    json!({"text": text, "blocks": blocks})
}

/// The webhook body of a follow-up, compact like the signal body: `schema_version`, `event`,
/// `sent_at`, `agent_id`, `failure_type`, `runs`, `since`, `run_id`, `summary`.
pub fn webhook(f: &Folded<'_>, sent_at: f64) -> String {
    let mut out = String::from("{");
    let mut first = true;
    let mut key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_py_str(out, k);
        out.push(':');
    };
    key(&mut out, "schema_version");
    push_py_str(&mut out, super::webhook::SCHEMA_VERSION);
    key(&mut out, "event");
    push_py_str(&mut out, EVENT);
    key(&mut out, "sent_at");
    push_py_float(&mut out, sent_at);
    key(&mut out, "agent_id");
    push_py_str(&mut out, f.agent_id);
    key(&mut out, "failure_type");
    push_py_str(&mut out, f.failure_type);
    key(&mut out, "runs");
    out.push_str(&f.runs.to_string());
    key(&mut out, "since");
    push_py_float(&mut out, f.since);
    key(&mut out, "run_id");
    match f.run_id {
        Some(r) => push_py_str(&mut out, r),
        None => out.push_str("null"),
    }
    key(&mut out, "summary");
    push_py_str(&mut out, &line(f));
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded() -> Folded<'static> {
        Folded {
            agent_id: "support-bot",
            failure_type: "TOOL_LOOP",
            runs: 12,
            since: 1_764_770_520.0, // 14:02 UTC
            run_id: Some("run-9"),
        }
    }

    #[test]
    fn the_summary_names_runs_agent_type_and_time() {
        assert_eq!(
            line(&folded()),
            "12 more runs of support-bot hit TOOL_LOOP since 14:02 UTC"
        );
        let one = Folded {
            runs: 1,
            ..folded()
        };
        assert!(line(&one).starts_with("1 more run of"));
    }

    #[test]
    fn slack_and_webhook_bodies() {
        let s = slack(&folded(), "http://dash.test/");
        assert_eq!(
            s["text"],
            "12 more runs of support-bot hit TOOL_LOOP since 14:02 UTC"
        );
        assert!(s.to_string().contains("http://dash.test/runs/run-9"));
        let w: Value = serde_json::from_str(&webhook(&folded(), 1.5)).unwrap();
        assert_eq!(w["event"], EVENT);
        assert_eq!(w["runs"], 12);
        assert_eq!(w["run_id"], "run-9");
    }
}
