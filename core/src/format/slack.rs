//! The Slack Incoming Webhook payload for one failure signal (the original's layout): a single
//! attachment coloured by severity, holding Block Kit blocks.

use super::{
    attachment, context_block, dashboard_base, divider_block, header_block, link_button_block,
    percent, section_block,
};
use crate::detect::Severity;
use crate::explain::{Explanation, SignalView};
use serde_json::Value;

/// A rate at or above this share of runs is reported as a systemic pattern.
pub const SYSTEMIC_RATE: f64 = 0.10;

/// Fix code is shown in the alert only when it has fewer characters than this.
pub const MAX_FIX_CODE_CHARS: usize = 800;

/// The default `min_severity` for Slack destinations.
pub const DEFAULT_MIN_SEVERITY: &str = "HIGH";

/// How often this (agent, failure type) occurred in the last 7 days: runs with the signal out of
/// all processed runs of the agent (a real rate, README "What it detects").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateContext {
    pub affected_runs: i64,
    pub total_runs: i64,
}

impl RateContext {
    /// `affected / total`, or 0 when there are no runs.
    pub fn rate(&self) -> f64 {
        if self.total_runs <= 0 {
            0.0
        } else {
            self.affected_runs as f64 / self.total_runs as f64
        }
    }

    /// `rate ≥ 0.10`.
    pub fn is_systemic(&self) -> bool {
        self.rate() >= SYSTEMIC_RATE
    }

    /// The rate line of the alert. The systemic rule is checked first, so a single affected
    /// run out of fewer than ten is reported as systemic, not as a first occurrence.
    pub fn line(&self) -> String {
        let (a, t) = (self.affected_runs, self.total_runs);
        let p = percent(self.rate());
        if self.is_systemic() {
            format!(
                ":warning: *Systemic pattern* — {a}/{t} runs affected ({p} of runs in the last 7 days)"
            )
        } else if a == 1 {
            ":information_source: First occurrence of this pattern in the last 7 days".to_string()
        } else {
            format!(":bar_chart: {a}/{t} runs affected ({p}) in the last 7 days")
        }
    }
}

/// Order of a severity for the Slack filter: LOW 0, MEDIUM 1, HIGH 2, CRITICAL 3
/// (case-insensitive), `None` when unknown.
pub fn severity_rank(severity: &str) -> Option<u8> {
    Severity::parse(severity.trim()).map(|s| match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    })
}

/// Whether a signal of `severity` goes to a Slack destination with minimum `min`: an unknown
/// severity counts as LOW (0) and an unknown minimum as HIGH (2).
pub fn passes_min_severity(severity: &str, min: &str) -> bool {
    severity_rank(severity).unwrap_or(0) >= severity_rank(min).unwrap_or(2)
}

/// Attachment colour: CRITICAL `#FF0000`, HIGH `#FF6B00`, MEDIUM `#FFB800`, LOW `#36A64F`,
/// anything else `#CCCCCC`.
pub fn severity_color(severity: &str) -> &'static str {
    match Severity::parse(severity.trim()) {
        Some(Severity::Critical) => "#FF0000",
        Some(Severity::High) => "#FF6B00",
        Some(Severity::Medium) => "#FFB800",
        Some(Severity::Low) => "#36A64F",
        None => "#CCCCCC",
    }
}

/// Header emoji: CRITICAL `:red_circle:`, HIGH `:large_orange_circle:`, MEDIUM
/// `:large_yellow_circle:`, LOW and anything else `:white_circle:`.
pub fn severity_emoji(severity: &str) -> &'static str {
    match Severity::parse(severity.trim()) {
        Some(Severity::Critical) => ":red_circle:",
        Some(Severity::High) => ":large_orange_circle:",
        Some(Severity::Medium) => ":large_yellow_circle:",
        Some(Severity::Low) | None => ":white_circle:",
    }
}

/// `int(confidence × 100)`, truncating; NaN gives 0.
fn confidence_pct(confidence: f64) -> i64 {
    (confidence * 100.0).trunc() as i64
}

/// The link to the run in the dashboard.
pub fn run_url(dashboard_url: &str, run_id: &str) -> String {
    format!("{}/runs/{run_id}", dashboard_base(dashboard_url))
}

/// The Slack payload for one signal: `{"attachments": [{"color", "blocks"}]}` with header,
/// context, divider, optional rate line, what happened, why it matters, evidence, the first
/// suggested fix (if any) and a "View Run" button.
pub fn alert(
    s: &SignalView,
    e: &Explanation,
    rate: Option<&RateContext>,
    dashboard_url: &str,
) -> Value {
    let mut blocks = Vec::with_capacity(12);
    blocks.push(header_block(&format!(
        "{}  {}",
        severity_emoji(s.severity),
        e.title
    )));
    blocks.push(context_block(&format!(
        "*Agent:* `{}`  *Version:* `{}`  *Run:* `{}`  *Step:* {}  *Confidence:* {}%",
        s.agent_id,
        s.agent_version,
        s.run_id,
        s.step_index,
        confidence_pct(s.confidence)
    )));
    blocks.push(divider_block());
    if let Some(r) = rate {
        blocks.push(section_block(&r.line()));
    }
    blocks.push(section_block(&format!("*What happened*\n{}", e.what)));
    blocks.push(section_block(&format!(
        "*Why it matters*\n{}",
        e.why_it_matters
    )));
    blocks.push(section_block(&format!(
        "*Evidence*\n```{}```",
        e.evidence_summary
    )));
    if let Some(fix) = e.suggested_fixes.first() {
        let mut text = format!("*Suggested fix:* {}", fix.description);
        let len = fix.code.chars().count();
        if len > 0 && len < MAX_FIX_CODE_CHARS {
            text.push_str(&format!("\n```{}```", fix.code));
        }
        blocks.push(divider_block());
        blocks.push(section_block(&text));
    }
    blocks.push(divider_block());
    blocks.push(link_button_block(
        "View Run",
        &run_url(dashboard_url, s.run_id),
    ));
    attachment(severity_color(s.severity), blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::SuggestedFix;
    use serde_json::{json, Map};

    fn view<'a>(severity: &'a str, evidence: &'a Map<String, Value>) -> SignalView<'a> {
        SignalView {
            failure_type: "TOOL_LOOP",
            severity,
            run_id: "run-42",
            agent_id: "support-bot",
            agent_version: "a1b2c3",
            step_index: 7,
            confidence: 0.876,
            evidence,
        }
    }

    fn explanation(fixes: Vec<SuggestedFix>) -> Explanation {
        Explanation {
            title: "Tool Loop Detected".into(),
            what: "The agent called `search` 5 times.".into(),
            why_it_matters: "Loops burn tokens.".into(),
            evidence_summary: "Tool: search\nCalls: 5".into(),
            suggested_fixes: fixes,
        }
    }

    fn fix(code: &str) -> SuggestedFix {
        SuggestedFix {
            description: "Cap repeated tool calls.".into(),
            language: "python".into(),
            code: code.into(),
        }
    }

    fn texts(payload: &Value) -> Vec<Value> {
        payload["attachments"][0]["blocks"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn full_payload_for_a_sample_signal() {
        let ev = Map::new();
        let s = view("HIGH", &ev);
        let e = explanation(vec![fix("max_calls = 3"), fix("ignored")]);
        let rate = RateContext {
            affected_runs: 3,
            total_runs: 40,
        };
        let got = alert(&s, &e, Some(&rate), "https://dash.example/");
        let want = json!({"attachments": [{
            "color": "#FF6B00",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text",
                    "text": ":large_orange_circle:  Tool Loop Detected", "emoji": true}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "*Agent:* `support-bot`  *Version:* `a1b2c3`  *Run:* `run-42`  *Step:* 7  *Confidence:* 87%"}]},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": ":bar_chart: 3/40 runs affected (8%) in the last 7 days"}},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*What happened*\nThe agent called `search` 5 times."}},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Why it matters*\nLoops burn tokens."}},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Evidence*\n```Tool: search\nCalls: 5```"}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Suggested fix:* Cap repeated tool calls.\n```max_calls = 3```"}},
                {"type": "divider"},
                {"type": "actions", "elements": [{"type": "button",
                    "text": {"type": "plain_text", "text": "View Run", "emoji": true},
                    "url": "https://dash.example/runs/run-42", "style": "primary"}]},
            ],
        }]});
        assert_eq!(got, want);
        // Key order is part of the shape (serde_json keeps insertion order).
        assert_eq!(
            got.to_string(),
            serde_json::to_string(&want).unwrap(),
            "serialised payload"
        );
    }

    #[test]
    fn no_rate_and_no_fixes() {
        let ev = Map::new();
        let s = view("CRITICAL", &ev);
        let got = alert(&s, &explanation(vec![]), None, "");
        let blocks = texts(&got);
        let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "header", "context", "divider", "section", "section", "section", "divider",
                "actions"
            ]
        );
        assert_eq!(
            blocks[7]["elements"][0]["url"],
            "https://app.dunetrace.io/runs/run-42"
        );
        assert_eq!(got["attachments"][0]["color"], "#FF0000");
        assert_eq!(
            blocks[0]["text"]["text"],
            ":red_circle:  Tool Loop Detected"
        );
    }

    #[test]
    fn severity_colours_and_emoji() {
        let cases = [
            ("CRITICAL", "#FF0000", ":red_circle:"),
            ("HIGH", "#FF6B00", ":large_orange_circle:"),
            ("MEDIUM", "#FFB800", ":large_yellow_circle:"),
            ("LOW", "#36A64F", ":white_circle:"),
            ("BOGUS", "#CCCCCC", ":white_circle:"),
        ];
        let ev = Map::new();
        for (sev, colour, emoji) in cases {
            assert_eq!(severity_color(sev), colour);
            assert_eq!(severity_emoji(sev), emoji);
            let got = alert(&view(sev, &ev), &explanation(vec![]), None, "");
            assert_eq!(got["attachments"][0]["color"], colour);
            assert_eq!(
                got["attachments"][0]["blocks"][0]["text"]["text"],
                format!("{emoji}  Tool Loop Detected")
            );
        }
    }

    fn fix_text(code: &str) -> String {
        let ev = Map::new();
        let got = alert(&view("HIGH", &ev), &explanation(vec![fix(code)]), None, "");
        let blocks = texts(&got);
        // header, context, divider, what, why, evidence, divider, fix, divider, actions
        assert_eq!(blocks.len(), 10);
        assert_eq!(blocks[6]["type"], "divider");
        blocks[7]["text"]["text"].as_str().unwrap().to_string()
    }

    #[test]
    fn fix_code_fencing_boundaries() {
        let c799 = "x".repeat(799);
        assert_eq!(
            fix_text(&c799),
            format!("*Suggested fix:* Cap repeated tool calls.\n```{c799}```")
        );
        assert_eq!(
            fix_text(&"x".repeat(800)),
            "*Suggested fix:* Cap repeated tool calls."
        );
        assert_eq!(fix_text(""), "*Suggested fix:* Cap repeated tool calls.");
        // Characters, not bytes: 799 two-byte characters are still shown.
        let wide = "é".repeat(799);
        assert!(fix_text(&wide).ends_with(&format!("```{wide}```")));
    }

    #[test]
    fn rate_lines() {
        let first = RateContext {
            affected_runs: 1,
            total_runs: 50,
        };
        assert_eq!(
            first.line(),
            ":information_source: First occurrence of this pattern in the last 7 days"
        );
        let systemic = RateContext {
            affected_runs: 5,
            total_runs: 40,
        };
        assert_eq!(
            systemic.line(),
            ":warning: *Systemic pattern* — 5/40 runs affected (12% of runs in the last 7 days)"
        );
        let boundary = RateContext {
            affected_runs: 4,
            total_runs: 40,
        };
        assert!(boundary.is_systemic());
        assert!(boundary
            .line()
            .starts_with(":warning: *Systemic pattern* — 4/40 "));
        let ordinary = RateContext {
            affected_runs: 3,
            total_runs: 40,
        };
        assert_eq!(
            ordinary.line(),
            ":bar_chart: 3/40 runs affected (8%) in the last 7 days"
        );
        // Systemic is checked before first occurrence.
        let one_of_few = RateContext {
            affected_runs: 1,
            total_runs: 5,
        };
        assert_eq!(
            one_of_few.line(),
            ":warning: *Systemic pattern* — 1/5 runs affected (20% of runs in the last 7 days)"
        );
        let none = RateContext {
            affected_runs: 0,
            total_runs: 0,
        };
        assert_eq!(none.rate(), 0.0);
        assert_eq!(
            none.line(),
            ":bar_chart: 0/0 runs affected (0%) in the last 7 days"
        );
    }

    #[test]
    fn min_severity_filter() {
        assert!(passes_min_severity("HIGH", "HIGH"));
        assert!(passes_min_severity("CRITICAL", "HIGH"));
        assert!(!passes_min_severity("MEDIUM", "HIGH"));
        assert!(passes_min_severity("LOW", "LOW"));
        assert!(passes_min_severity("medium", "Medium"));
        // Unknown severity counts as 0, unknown minimum as 2.
        assert!(passes_min_severity("WHATEVER", "LOW"));
        assert!(!passes_min_severity("WHATEVER", "MEDIUM"));
        assert!(passes_min_severity("HIGH", "nonsense"));
        assert!(!passes_min_severity("MEDIUM", "nonsense"));
        assert!(!passes_min_severity("LOW", DEFAULT_MIN_SEVERITY));
    }

    #[test]
    fn confidence_is_truncated() {
        assert_eq!(confidence_pct(0.999), 99);
        assert_eq!(confidence_pct(1.0), 100);
        assert_eq!(confidence_pct(0.29), 28); // 0.29 × 100 = 28.999999999999996
        assert_eq!(confidence_pct(f64::NAN), 0);
    }

    #[test]
    fn works_with_explain_output() {
        let ev = crate::evidence! {"tool" => "search", "count" => 5};
        let s = view("HIGH", &ev);
        let e = crate::explain::explain(&s);
        let got = alert(&s, &e, None, "https://d.example");
        let blocks = texts(&got);
        assert!(blocks[0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with(":large_orange_circle:  "));
        assert_eq!(
            blocks.last().unwrap()["elements"][0]["url"],
            "https://d.example/runs/run-42"
        );
    }
}
