//! The weekly digest Slack payload (the original's content), with real rates.

use super::slack::SYSTEMIC_RATE;
use super::{
    attachment, context_block, dashboard_base, divider_block, header_block, link_button_block,
    percent, plural, section_block,
};
use serde_json::Value;

/// Attachment colour of the digest.
pub const DIGEST_COLOR: &str = "#4a9ede";
/// At most this many failure types are listed.
pub const MAX_TYPES: usize = 5;
/// At most this many agents are listed.
pub const MAX_AGENTS: usize = 5;
/// At most this many systemic patterns are listed.
pub const MAX_SYSTEMIC: usize = 10;

/// One failure type of the week: runs that had it out of all processed runs in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStat {
    pub failure_type: String,
    pub affected_runs: i64,
    pub total_runs: i64,
}

/// One agent of the week by live-signal count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStat {
    pub agent_id: String,
    pub signal_count: i64,
    /// Runs of the agent with at least one live signal.
    pub run_count: i64,
    /// The failure type with the most signals, if any.
    pub dominant_type: Option<String>,
}

/// One (agent, failure type) pair: runs of the agent that had it out of all its processed runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemicPattern {
    pub agent_id: String,
    pub failure_type: String,
    pub affected_runs: i64,
    pub total_runs: i64,
}

fn rate(affected: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        affected as f64 / total as f64
    }
}

impl TypeStat {
    pub fn rate(&self) -> f64 {
        rate(self.affected_runs, self.total_runs)
    }
}

impl SystemicPattern {
    pub fn rate(&self) -> f64 {
        rate(self.affected_runs, self.total_runs)
    }
}

/// Everything the digest shows, gathered for the window `[window_start, window_end]`
/// (epoch seconds, UTC).
///
/// Lists are shown in the order given (callers sort: types by affected runs, agents by signal
/// count), cut to 5 types and 5 agents. Systemic patterns are filtered to rate ≥ 0.10, sorted
/// by rate (stable, highest first) and cut to 10 here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DigestData {
    pub window_start: i64,
    pub window_end: i64,
    /// Distinct processed runs in the window.
    pub total_runs: i64,
    /// Distinct agents with processed runs in the window.
    pub total_agents: i64,
    /// Live signals in the window.
    pub total_signals: i64,
    pub top_failure_types: Vec<TypeStat>,
    pub top_agents: Vec<AgentStat>,
    pub systemic: Vec<SystemicPattern>,
    pub issues_opened: i64,
    pub issues_resolved: i64,
}

/// Emoji for a failure type in the digest: `:red_circle:` for the loop, thrashing, truncation,
/// retry, empty-response, cascading and slow-step types; `:rotating_light:` for prompt
/// injection; `:large_yellow_circle:` for the other original types; `:white_circle:` for
/// anything else (including COST_SPIKE and SESSION_LATENCY).
pub fn emoji_for_type(t: &str) -> &'static str {
    match t {
        "TOOL_LOOP"
        | "TOOL_THRASHING"
        | "LLM_TRUNCATION_LOOP"
        | "RETRY_STORM"
        | "EMPTY_LLM_RESPONSE"
        | "CASCADING_TOOL_FAILURE"
        | "SLOW_STEP" => ":red_circle:",
        "PROMPT_INJECTION_SIGNAL" => ":rotating_light:",
        "TOOL_AVOIDANCE"
        | "GOAL_ABANDONMENT"
        | "RAG_EMPTY_RETRIEVAL"
        | "CONTEXT_BLOAT"
        | "STEP_COUNT_INFLATION"
        | "FIRST_STEP_FAILURE"
        | "REASONING_STALL" => ":large_yellow_circle:",
        _ => ":white_circle:",
    }
}

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `(year, month 1–12, day 1–31)` of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The UTC date of an epoch-seconds timestamp.
pub fn utc_date(epoch_secs: i64) -> (i64, u32, u32) {
    civil_from_days(epoch_secs.div_euclid(86_400))
}

/// `5 Jan` (day without padding, English month abbreviation), UTC.
pub fn day_month(epoch_secs: i64) -> String {
    let (_, m, d) = utc_date(epoch_secs);
    format!("{d} {}", MONTHS[(m - 1) as usize])
}

/// `5 Jan 2026`, UTC.
pub fn day_month_year(epoch_secs: i64) -> String {
    let (y, _, _) = utc_date(epoch_secs);
    format!("{} {y}", day_month(epoch_secs))
}

/// `29 Dec–5 Jan 2026`: the start without a year, an en dash, the end with its year.
pub fn date_range(start: i64, end: i64) -> String {
    format!("{}–{}", day_month(start), day_month_year(end))
}

// ---------------------------------------------------------------------------------------------
// Payload
// ---------------------------------------------------------------------------------------------

/// The digest payload: `{"attachments": [{"color": "#4a9ede", "blocks": [...]}]}` with header,
/// totals, top failure types (or a no-failures line), agents, systemic patterns, issues and an
/// "Open Dashboard" button.
pub fn slack_digest(d: &DigestData, dashboard_url: &str) -> Value {
    let mut blocks = Vec::with_capacity(11);
    blocks.push(header_block(&format!(
        ":bar_chart: Weekly Agent Health Digest — {}",
        date_range(d.window_start, d.window_end)
    )));
    blocks.push(context_block(&format!(
        "*{}* {} · *{}* runs · *{}* {} in the last 7 days",
        d.total_agents,
        if d.total_agents == 1 {
            "agent"
        } else {
            "agents"
        },
        d.total_runs,
        d.total_signals,
        if d.total_signals == 1 {
            "signal"
        } else {
            "signals"
        },
    )));
    blocks.push(divider_block());

    if d.top_failure_types.is_empty() {
        blocks.push(section_block(
            ":white_check_mark: No failures detected this week.",
        ));
    } else {
        let lines: Vec<String> = d
            .top_failure_types
            .iter()
            .take(MAX_TYPES)
            .map(|t| {
                format!(
                    "{} *{}* — {} affected ({})",
                    emoji_for_type(&t.failure_type),
                    t.failure_type,
                    plural(t.affected_runs, "run"),
                    percent(t.rate())
                )
            })
            .collect();
        blocks.push(section_block(&format!(
            "*Top failure types*\n{}",
            lines.join("\n")
        )));
    }

    if !d.top_agents.is_empty() {
        let lines: Vec<String> = d
            .top_agents
            .iter()
            .take(MAX_AGENTS)
            .map(|a| {
                let dominant = match a.dominant_type.as_deref() {
                    Some(t) if !t.is_empty() => format!(" _(dominant: {t})_"),
                    _ => String::new(),
                };
                format!(
                    "`{}` — {} across {} runs{dominant}",
                    a.agent_id,
                    plural(a.signal_count, "signal"),
                    a.run_count
                )
            })
            .collect();
        blocks.push(divider_block());
        blocks.push(section_block(&format!(
            "*Agents by signal volume*\n{}",
            lines.join("\n")
        )));
    }

    let mut systemic: Vec<&SystemicPattern> = d
        .systemic
        .iter()
        .filter(|p| p.rate() >= SYSTEMIC_RATE)
        .collect();
    systemic.sort_by(|a, b| b.rate().total_cmp(&a.rate()));
    systemic.truncate(MAX_SYSTEMIC);
    if !systemic.is_empty() {
        let lines: Vec<String> = systemic
            .iter()
            .map(|p| {
                format!(
                    ":warning: *{}* on `{}` — {}/{} runs ({})",
                    p.failure_type,
                    p.agent_id,
                    p.affected_runs,
                    p.total_runs,
                    percent(p.rate())
                )
            })
            .collect();
        blocks.push(divider_block());
        blocks.push(section_block(&format!(
            "*Systemic patterns* _(≥10% of runs affected)_\n{}",
            lines.join("\n")
        )));
    }

    blocks.push(divider_block());
    blocks.push(section_block(&format!(
        ":ticket: *Issues* — *{}* opened this week · *{}* resolved",
        d.issues_opened, d.issues_resolved
    )));
    blocks.push(link_button_block(
        "Open Dashboard",
        dashboard_base(dashboard_url),
    ));
    attachment(DIGEST_COLOR, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FailureType;
    use serde_json::json;

    // 2025-12-29T09:00:00Z and 2026-01-05T09:00:00Z (checked with CPython's datetime).
    const START: i64 = 1_766_998_800;
    const END: i64 = 1_767_603_600;

    #[test]
    fn dates_across_month_and_year() {
        assert_eq!(utc_date(0), (1970, 1, 1));
        assert_eq!(utc_date(-1), (1969, 12, 31));
        assert_eq!(utc_date(951_782_400), (2000, 2, 29));
        assert_eq!(utc_date(1_766_966_400), (2025, 12, 29));
        assert_eq!(utc_date(1_767_571_200), (2026, 1, 5));
        assert_eq!(utc_date(1_767_225_599), (2025, 12, 31));
        assert_eq!(utc_date(1_767_225_600), (2026, 1, 1));
        assert_eq!(date_range(START, END), "29 Dec–5 Jan 2026");
        // Month boundary inside one year: 2026-02-24 → 2026-03-03.
        assert_eq!(
            date_range(1_771_891_200, 1_772_496_000),
            "24 Feb–3 Mar 2026"
        );
        assert_eq!(day_month_year(1_709_164_800), "29 Feb 2024");
    }

    #[test]
    fn civil_from_days_round_trips_a_long_span() {
        // Consecutive days advance the date by exactly one day.
        let mut prev = civil_from_days(-800_000);
        for days in -799_999..800_000 {
            let cur = civil_from_days(days);
            let next_expected = if cur.2 == 1 {
                cur.1 == prev.1 % 12 + 1 && (cur.1 != 1 || cur.0 == prev.0 + 1)
            } else {
                cur.0 == prev.0 && cur.1 == prev.1 && cur.2 == prev.2 + 1
            };
            assert!(next_expected, "{days}: {prev:?} -> {cur:?}");
            prev = cur;
        }
    }

    #[test]
    fn emoji_per_type() {
        use FailureType::*;
        for t in FailureType::ALL {
            let want = match t {
                ToolLoop | ToolThrashing | LlmTruncationLoop | RetryStorm | EmptyLlmResponse
                | CascadingToolFailure | SlowStep => ":red_circle:",
                PromptInjectionSignal => ":rotating_light:",
                CostSpike | SessionLatency => ":white_circle:",
                _ => ":large_yellow_circle:",
            };
            assert_eq!(emoji_for_type(t.as_str()), want, "{t}");
        }
        assert_eq!(emoji_for_type("SOMETHING_NEW"), ":white_circle:");
    }

    fn sample() -> DigestData {
        DigestData {
            window_start: START,
            window_end: END,
            total_runs: 120,
            total_agents: 3,
            total_signals: 17,
            top_failure_types: vec![
                TypeStat {
                    failure_type: "TOOL_LOOP".into(),
                    affected_runs: 9,
                    total_runs: 120,
                },
                TypeStat {
                    failure_type: "PROMPT_INJECTION_SIGNAL".into(),
                    affected_runs: 1,
                    total_runs: 120,
                },
            ],
            top_agents: vec![
                AgentStat {
                    agent_id: "support-bot".into(),
                    signal_count: 12,
                    run_count: 8,
                    dominant_type: Some("TOOL_LOOP".into()),
                },
                AgentStat {
                    agent_id: "etl".into(),
                    signal_count: 1,
                    run_count: 1,
                    dominant_type: None,
                },
            ],
            systemic: vec![
                SystemicPattern {
                    agent_id: "etl".into(),
                    failure_type: "TOOL_LOOP".into(),
                    affected_runs: 1,
                    total_runs: 20,
                },
                SystemicPattern {
                    agent_id: "support-bot".into(),
                    failure_type: "TOOL_LOOP".into(),
                    affected_runs: 8,
                    total_runs: 64,
                },
                SystemicPattern {
                    agent_id: "triage".into(),
                    failure_type: "CONTEXT_BLOAT".into(),
                    affected_runs: 5,
                    total_runs: 10,
                },
            ],
            issues_opened: 2,
            issues_resolved: 1,
        }
    }

    #[test]
    fn digest_with_failures() {
        let got = slack_digest(&sample(), "https://dash.example/");
        let want = json!({"attachments": [{
            "color": "#4a9ede",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text",
                    "text": ":bar_chart: Weekly Agent Health Digest — 29 Dec–5 Jan 2026",
                    "emoji": true}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "*3* agents · *120* runs · *17* signals in the last 7 days"}]},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Top failure types*\n:red_circle: *TOOL_LOOP* — 9 runs affected (8%)\n:rotating_light: *PROMPT_INJECTION_SIGNAL* — 1 run affected (1%)"}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Agents by signal volume*\n`support-bot` — 12 signals across 8 runs _(dominant: TOOL_LOOP)_\n`etl` — 1 signal across 1 runs"}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*Systemic patterns* _(≥10% of runs affected)_\n:warning: *CONTEXT_BLOAT* on `triage` — 5/10 runs (50%)\n:warning: *TOOL_LOOP* on `support-bot` — 8/64 runs (12%)"}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": ":ticket: *Issues* — *2* opened this week · *1* resolved"}},
                {"type": "actions", "elements": [{"type": "button",
                    "text": {"type": "plain_text", "text": "Open Dashboard", "emoji": true},
                    "url": "https://dash.example", "style": "primary"}]},
            ],
        }]});
        assert_eq!(got, want);
        assert_eq!(got.to_string(), serde_json::to_string(&want).unwrap());
    }

    #[test]
    fn digest_without_failures() {
        let d = DigestData {
            window_start: 1_771_891_200,
            window_end: 1_772_496_000,
            total_runs: 1,
            total_agents: 1,
            total_signals: 0,
            ..DigestData::default()
        };
        let got = slack_digest(&d, "");
        let want = json!({"attachments": [{
            "color": "#4a9ede",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text",
                    "text": ":bar_chart: Weekly Agent Health Digest — 24 Feb–3 Mar 2026",
                    "emoji": true}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "*1* agent · *1* runs · *0* signals in the last 7 days"}]},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": ":white_check_mark: No failures detected this week."}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": ":ticket: *Issues* — *0* opened this week · *0* resolved"}},
                {"type": "actions", "elements": [{"type": "button",
                    "text": {"type": "plain_text", "text": "Open Dashboard", "emoji": true},
                    "url": "https://app.dunetrace.io", "style": "primary"}]},
            ],
        }]});
        assert_eq!(got, want);
    }

    #[test]
    fn lists_are_capped() {
        let mut d = sample();
        d.top_failure_types = (0..8)
            .map(|i| TypeStat {
                failure_type: format!("T{i}"),
                affected_runs: 10 - i,
                total_runs: 100,
            })
            .collect();
        d.top_agents = (0..8)
            .map(|i| AgentStat {
                agent_id: format!("a{i}"),
                signal_count: 10,
                run_count: 2,
                dominant_type: None,
            })
            .collect();
        d.systemic = (0..15)
            .map(|i| SystemicPattern {
                agent_id: format!("a{i}"),
                failure_type: "TOOL_LOOP".into(),
                affected_runs: 10 + i,
                total_runs: 100,
            })
            .collect();
        let got = slack_digest(&d, "");
        let blocks = got["attachments"][0]["blocks"].as_array().unwrap();
        let count = |i: usize| blocks[i]["text"]["text"].as_str().unwrap().lines().count();
        assert_eq!(count(3), 1 + MAX_TYPES);
        assert_eq!(count(5), 1 + MAX_AGENTS);
        assert_eq!(count(7), 1 + MAX_SYSTEMIC);
        let systemic = blocks[7]["text"]["text"].as_str().unwrap();
        // Highest rate first.
        assert!(systemic
            .lines()
            .nth(1)
            .unwrap()
            .contains("on `a14` — 24/100 runs (24%)"));
    }
}
