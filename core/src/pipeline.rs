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
/// (a stalled run that completed later); only new types are returned (contract §3.7).
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
    use crate::event::EventType;
    use serde_json::{json, Map, Value};

    fn ev(t: EventType, step: i32, ts: f64, payload: Value) -> Event {
        Event {
            event_type: t,
            run_id: "r".into(),
            agent_id: "a".into(),
            agent_version: "v".into(),
            step_index: step,
            timestamp: ts,
            payload: payload.as_object().cloned().unwrap_or_else(Map::new),
            parent_run_id: None,
        }
    }

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
}
