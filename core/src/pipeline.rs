//! One run, start to finish: reconstruct, attach baselines, detect, post-process.
//!
//! The shell loads a run's events, its agent-version's recent metrics and its detector
//! configuration, calls [`evaluate`], and writes what comes back.

use crate::baseline::{self, RunMetrics};
use crate::detect::{self, DetectorConfig, Signal};
use crate::event::Event;
use crate::run::build_run;

/// What processing one run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub run_id: String,
    pub agent_id: String,
    pub agent_version: String,
    /// Signals to store (already-signalled failure types removed).
    pub signals: Vec<Signal>,
    /// The run's own contribution to its agent-version's baselines.
    pub metrics: RunMetrics,
}

/// Evaluates one run.
///
/// `recent`: metrics of the agent-version's most recent processed runs, newest first, this run
/// excluded. `already_signalled`: failure types stored for this run by an earlier evaluation
/// (a stalled run that completed later); only new types are returned (README "What it detects").
pub fn evaluate(
    events: Vec<Event>,
    recent: &[RunMetrics],
    cfg: &DetectorConfig,
    already_signalled: &[String],
) -> Evaluation {
    let mut run = build_run(events);
    run.baselines = baseline::baselines(recent);
    let signals = detect::detect(&run, cfg)
        .into_iter()
        .filter(|s| {
            !already_signalled
                .iter()
                .any(|t| t == s.failure_type.as_str())
        })
        .collect();
    let metrics = baseline::metrics(&run);
    Evaluation {
        run_id: run.run_id,
        agent_id: run.agent_id,
        agent_version: run.agent_version,
        signals,
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{test_event as ev, EventType};
    use serde_json::{json, Value};

    fn looping_run() -> Vec<Event> {
        let mut v = vec![ev(
            EventType::RunStarted,
            0,
            0.0,
            json!({"tools": ["search"]}),
        )];
        for i in 1..=5 {
            v.push(ev(
                EventType::ToolCalled,
                i,
                f64::from(i),
                json!({"tool_name": "search", "args_hash": "0123456789abcdef"}),
            ));
        }
        v.push(ev(
            EventType::RunCompleted,
            5,
            6.0,
            json!({"exit_reason": "completed"}),
        ));
        v
    }

    #[test]
    fn detects_and_reports_metrics() {
        let e = evaluate(looping_run(), &[], &DetectorConfig::default(), &[]);
        assert_eq!(e.run_id, "r");
        assert!(e
            .signals
            .iter()
            .any(|s| s.failure_type.as_str() == "TOOL_LOOP"));
        assert!(e.metrics.completed);
        assert_eq!(e.metrics.steps, 5);
    }

    #[test]
    fn post_processing_order_injection_override_boost_shadow() {
        // 8 identical search calls (TOOL_LOOP, hard-override loop rule) and an injection
        // signal on run.started; RETRY_STORM-free. TOOL_LOOP is switched to shadow.
        let mut evs = vec![ev(
            EventType::RunStarted,
            0,
            0.0,
            json!({"tools": ["search"], "injection_signal":
                   {"matched_pattern_count": 1, "matched_patterns": ["jailbreak"], "input_length": 9}}),
        )];
        for i in 1..=8 {
            evs.push(ev(
                EventType::ToolCalled,
                i,
                f64::from(i),
                json!({"tool_name": "search", "args_hash": "0123456789abcdef"}),
            ));
        }
        evs.push(ev(EventType::RunCompleted, 8, 9.0, json!({})));
        let mut cfg = DetectorConfig::default();
        cfg.set_live(detect::FailureType::ToolLoop, false);
        let e = evaluate(evs, &[], &cfg, &[]);
        let types: Vec<&str> = e.signals.iter().map(|s| s.failure_type.as_str()).collect();
        assert_eq!(types, ["TOOL_LOOP", "PROMPT_INJECTION_SIGNAL"]);
        for s in &e.signals {
            // Override to CRITICAL/0.98 for every signal, then the n = 2 boost (shadow
            // signal counted): round(min(1, 0.98 × 1.15), 4) = 1.0.
            assert_eq!(s.severity, detect::Severity::Critical);
            assert_eq!(s.confidence, 1.0);
            assert_eq!(s.co_signal_count, 2);
        }
        assert!(e.signals[0].shadow);
        assert!(!e.signals[1].shadow);
        assert_eq!(e.signals[1].step_index, 0);
    }

    #[test]
    fn already_signalled_types_are_not_repeated() {
        let e = evaluate(
            looping_run(),
            &[],
            &DetectorConfig::default(),
            &["TOOL_LOOP".to_string()],
        );
        assert!(e
            .signals
            .iter()
            .all(|s| s.failure_type.as_str() != "TOOL_LOOP"));
    }

    #[test]
    fn baselines_switch_on_from_history() {
        let history: Vec<RunMetrics> = (0..20)
            .map(|_| RunMetrics {
                completed: true,
                steps: 2,
                ..Default::default()
            })
            .collect();
        let e = evaluate(looping_run(), &history, &DetectorConfig::default(), &[]);
        // 5 steps > 2 × P75(2) = 4: STEP_COUNT_INFLATION needs the baseline to fire.
        assert!(e
            .signals
            .iter()
            .any(|s| s.failure_type.as_str() == "STEP_COUNT_INFLATION"));
        let e = evaluate(
            looping_run(),
            &history[..19],
            &DetectorConfig::default(),
            &[],
        );
        assert!(e
            .signals
            .iter()
            .all(|s| s.failure_type.as_str() != "STEP_COUNT_INFLATION"));
    }

    /// The same behaviour numbered with the V0 convention (every event advances the step)
    /// and the V4 one (only `*.called` advances; responses share their call's step).
    /// A call, its response, and their payloads.
    type Step = (EventType, EventType, Value, Value);

    fn both_conventions(calls: &[Step], end: EventType) -> (Vec<Event>, Vec<Event>) {
        let mut v0 = vec![ev(
            EventType::RunStarted,
            0,
            0.0,
            json!({"tools": ["search", "fetch"]}),
        )];
        let mut v4 = v0.clone();
        let (mut s0, mut s4, mut ts) = (0, 0, 0.0);
        for (call, resp, cp, rp) in calls {
            ts += 1.0;
            s0 += 1;
            s4 += 1;
            v0.push(ev(*call, s0, ts, cp.clone()));
            v4.push(ev(*call, s4, ts, cp.clone()));
            ts += 0.5;
            s0 += 1;
            v0.push(ev(*resp, s0, ts, rp.clone()));
            v4.push(ev(*resp, s4, ts, rp.clone()));
        }
        ts += 1.0;
        v0.push(ev(end, s0, ts, json!({})));
        v4.push(ev(end, s4, ts, json!({})));
        (v0, v4)
    }

    fn kinds(events: Vec<Event>) -> Vec<(String, String)> {
        let mut k: Vec<(String, String)> = evaluate(events, &[], &DetectorConfig::default(), &[])
            .signals
            .iter()
            .map(|s| {
                (
                    s.failure_type.as_str().to_string(),
                    s.severity.as_str().to_string(),
                )
            })
            .collect();
        k.sort();
        k
    }

    #[test]
    fn both_step_conventions_give_the_same_signals() {
        use EventType::*;
        let tool = |name: &str, ok: bool| {
            (
                ToolCalled,
                ToolResponded,
                json!({"tool_name": name, "args_hash": "0123456789abcdef"}),
                json!({"tool_name": name, "success": ok}),
            )
        };
        let llm = |finish: &str, out: i64, tokens: i64| {
            (
                LlmCalled,
                LlmResponded,
                json!({"model": "m", "prompt_tokens": tokens}),
                json!({"finish_reason": finish, "output_length": out, "completion_tokens": 5}),
            )
        };
        let scenarios: Vec<(Vec<Step>, EventType, &[&str])> = vec![
            // A loop on one tool.
            (vec![tool("search", true); 6], RunCompleted, &["TOOL_LOOP"]),
            // A retry storm ending the run in error.
            (vec![tool("fetch", false); 4], RunErrored, &["RETRY_STORM"]),
            // Two tools alternating.
            (
                (0..6)
                    .map(|i| tool(if i % 2 == 0 { "search" } else { "fetch" }, true))
                    .collect(),
                RunCompleted,
                &["TOOL_THRASHING"],
            ),
            // Truncated answers with a growing prompt.
            (
                vec![
                    llm("length", 10, 500),
                    llm("length", 10, 1600),
                    llm("length", 10, 4000),
                ],
                RunCompleted,
                &["LLM_TRUNCATION_LOOP", "CONTEXT_BLOAT"],
            ),
        ];
        for (calls, end, expected) in scenarios {
            let (v0, v4) = both_conventions(&calls, end);
            let (k0, k4) = (kinds(v0), kinds(v4));
            assert_eq!(k0, k4, "V0 and V4 numbering disagree");
            for t in expected {
                assert!(k0.iter().any(|(x, _)| x == t), "{t} missing from {k0:?}");
            }
        }
    }
}
