//! Detectors that read the run's shape, timing and ending: GOAL_ABANDONMENT, SLOW_STEP,
//! STEP_COUNT_INFLATION, FIRST_STEP_FAILURE, SESSION_LATENCY.

use super::config::*;
use super::{scale, FailureType, Severity, Signal};
use crate::event::EventType;
use crate::evidence;
use crate::pyround::round;
use crate::run::RunState;
use serde_json::{Map, Value};

/// GOAL_ABANDONMENT: a stalled run (no terminal event) that used a tool and whose last
/// `stall_steps` events are all `llm.*` events.
pub fn goal_abandonment(run: &RunState, p: &GoalAbandonmentParams) -> Option<Signal> {
    if run.exit_reason.is_some() {
        return None;
    }
    let last_tool = run.tool_calls.last()?;
    let n = usize::try_from(p.stall_steps).ok().filter(|n| *n >= 1)?;
    if run.events.len() < n {
        return None;
    }
    let recent = &run.events[run.events.len() - n..];
    if !recent.iter().all(|e| e.event_type.is_llm()) {
        return None;
    }
    let since = i64::from(run.current_step) - i64::from(last_tool.step_index);
    let sequence: Vec<&str> = recent.iter().map(|e| e.event_type.as_str()).collect();
    Some(Signal::new(
        FailureType::GoalAbandonment,
        Severity::Medium,
        run.current_step,
        scale(since as f64 / p.stall_steps as f64),
        evidence! {
            "stall_steps" => p.stall_steps,
            "last_tool_step" => last_tool.step_index,
            "last_tool_used" => last_tool.tool_name,
            "current_step" => run.current_step,
            "steps_since_last_tool" => since,
            "stall_event_sequence" => sequence,
        },
    ))
}

/// SLOW_STEP static thresholds (ms) for `tool.called`, `llm.called` and any other step.
const TOOL_STATIC_MS: i64 = 15_000;
const LLM_STATIC_MS: i64 = 30_000;
const OTHER_STATIC_MS: i64 = 60_000;

/// Threshold (ms) and label for a step whose first event has type `t` (`None`: no event).
/// Tool and LLM steps use `int(p75 × inflation_factor)` when the baseline exists.
fn slow_threshold(run: &RunState, p: &SlowStepParams, t: Option<EventType>) -> (i64, &'static str) {
    let from_baseline = |b: Option<f64>, fallback: i64| match b {
        Some(p75) => (p75 * p.inflation_factor).trunc() as i64,
        None => fallback,
    };
    match t {
        Some(EventType::ToolCalled) => (
            from_baseline(run.baselines.latency_tool, TOOL_STATIC_MS),
            "tool execution",
        ),
        Some(EventType::LlmCalled) => (
            from_baseline(run.baselines.latency_llm, LLM_STATIC_MS),
            "LLM call",
        ),
        _ => (OTHER_STATIC_MS, "step"),
    }
}

/// Python truthiness of a JSON value (`null`, `false`, 0, `""`, `[]`, `{}` are falsy).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// SLOW_STEP: the step with the largest duration/threshold ratio among those slower than
/// their threshold (strict). Each step takes the type of its first event (external signals
/// ignored: a deliberate difference from the original).
pub fn slow_step(run: &RunState, p: &SlowStepParams) -> Option<Signal> {
    if run.step_durations_ms.is_empty() || run.events.is_empty() {
        return None;
    }
    let first_types: std::collections::HashMap<i32, EventType> =
        run.step_first_types().into_iter().collect();
    let type_of = |step: i32| first_types.get(&step).copied();

    // (step, duration, threshold, label, type)
    let mut worst: Option<(i32, i64, i64, &'static str, Option<EventType>)> = None;
    let mut best_ratio = 0.0_f64;
    let mut all_slow = Map::new();
    for &(step, duration) in &run.step_durations_ms {
        let t = type_of(step);
        let (threshold, label) = slow_threshold(run, p, t);
        if duration <= threshold {
            continue;
        }
        all_slow.insert(step.to_string(), Value::from(duration));
        // A threshold can only fall below 1 ms through a tiny baseline; keep the ratio finite.
        let ratio = duration as f64 / threshold.max(1) as f64;
        if ratio > best_ratio {
            best_ratio = ratio;
            worst = Some((step, duration, threshold, label, t));
        }
    }
    let (step, duration, threshold, label, t) = worst?;
    let ratio = duration as f64 / threshold.max(1) as f64;
    let event_type = t.map(EventType::as_str).unwrap_or("");

    let mut ev = evidence! {
        "step_index" => step,
        "duration_ms" => duration,
        "threshold_ms" => threshold,
        "event_type" => event_type,
        "step_label" => label,
        "ratio" => round(ratio, 1),
        "all_slow_steps" => Value::Object(all_slow),
    };
    let baseline = match t {
        Some(EventType::ToolCalled) => run.baselines.latency_tool,
        Some(EventType::LlmCalled) => run.baselines.latency_llm,
        _ => None,
    };
    if let Some(p75) = baseline {
        ev.insert("baseline_p75".into(), Value::from(round(p75, 1)));
    }

    // External signals that fall inside the step: [start, start + duration], where the start
    // is the timestamp of the step's first (non-signal) event.
    let start = run
        .events
        .iter()
        .find(|e| e.step_index == step && e.event_type != EventType::ExternalSignal)
        .map(|e| e.timestamp)
        .unwrap_or(0.0);
    let end = start + duration as f64 / 1000.0;
    let coincident: Vec<Value> = run
        .external_signals
        .iter()
        .filter(|s| start <= s.timestamp && s.timestamp <= end)
        .map(|s| {
            let mut o = Map::new();
            if !s.signal_name.is_empty() {
                o.insert("signal_name".into(), Value::from(s.signal_name.clone()));
            }
            if let Some(src) = s.source.as_ref().filter(|x| !x.is_empty()) {
                o.insert("source".into(), Value::from(src.clone()));
            }
            if let Some(meta) = s.meta.as_ref().filter(|m| truthy(m)) {
                o.insert("meta".into(), meta.clone());
            }
            Value::Object(o)
        })
        .collect();
    if !coincident.is_empty() {
        ev.insert("coincident_signals".into(), Value::Array(coincident));
    }

    let severity = if ratio >= 5.0 {
        Severity::High
    } else {
        Severity::Medium
    };
    Some(Signal::new(
        FailureType::SlowStep,
        severity,
        step,
        scale(ratio),
        ev,
    ))
}

/// STEP_COUNT_INFLATION: `current_step > p75_steps × inflation_factor` (needs the baseline).
pub fn step_count_inflation(run: &RunState, p: &StepCountInflationParams) -> Option<Signal> {
    let p75 = run.baselines.steps?;
    let current = f64::from(run.current_step);
    let threshold = p75 * p.inflation_factor;
    // A zero baseline would divide by zero (the original raised and lost the run's signals).
    if current <= threshold || p75 <= 0.0 {
        return None;
    }
    Some(Signal::new(
        FailureType::StepCountInflation,
        Severity::Medium,
        run.current_step,
        scale(current / threshold),
        evidence! {
            "current_steps" => run.current_step,
            "baseline_p75" => round(p75, 1),
            "inflation_ratio" => round(current / p75, 2),
            "threshold_factor" => p.inflation_factor,
        },
    ))
}

/// FIRST_STEP_FAILURE: an early failure; the first matching branch wins: (a) the run errored
/// at or before `max_step`, (b) an empty "stop" LLM response, (c) a failed tool call.
pub fn first_step_failure(run: &RunState, p: &FirstStepFailureParams) -> Option<Signal> {
    let early = |step: i32| i64::from(step) <= p.max_step;
    let signal = |step: i32, confidence: f64, ev: Map<String, Value>| {
        Signal::new(
            FailureType::FirstStepFailure,
            Severity::Medium,
            step,
            confidence,
            ev,
        )
    };
    if run.exit_reason.as_deref() == Some("error") && early(run.current_step) {
        return Some(signal(
            run.current_step,
            0.90,
            evidence! {
                "trigger" => "run_errored",
                "failed_step" => run.current_step,
                "max_step" => p.max_step,
            },
        ));
    }
    if let Some(c) = run.llm_calls.iter().find(|c| {
        early(c.step_index)
            && c.output_length == Some(0)
            && c.finish_reason.as_deref() == Some("stop")
    }) {
        return Some(signal(
            c.step_index,
            0.88,
            evidence! {
                "trigger" => "empty_llm_response",
                "failed_step" => c.step_index,
                "max_step" => p.max_step,
            },
        ));
    }
    if let Some(t) = run
        .tool_calls
        .iter()
        .find(|t| early(t.step_index) && t.success == Some(false))
    {
        return Some(signal(
            t.step_index,
            0.85,
            evidence! {
                "trigger" => "tool_failure",
                "failed_step" => t.step_index,
                "tool" => t.tool_name,
                "max_step" => p.max_step,
            },
        ));
    }
    None
}

/// SESSION_LATENCY: wall-clock duration (max − min timestamp over all events) ≥ the P75
/// duration × inflation_factor, or the static threshold without a baseline.
pub fn session_latency(run: &RunState, p: &SessionLatencyParams) -> Option<Signal> {
    if (run.events.len() as i64) < p.min_events || run.events.is_empty() {
        return None;
    }
    let (lo, hi) = run
        .events
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| {
            (lo.min(e.timestamp), hi.max(e.timestamp))
        });
    let duration = hi - lo;
    if duration.is_nan() || duration <= 0.0 {
        return None;
    }
    let baseline = run.baselines.duration_s;
    let threshold = match baseline {
        Some(p75) => p75 * p.inflation_factor,
        None => p.static_threshold_secs,
    };
    if duration < threshold {
        return None;
    }
    let ratio = duration / threshold.max(1.0);
    let mut ev = evidence! {
        "duration_s" => round(duration, 1),
        "threshold_s" => round(threshold, 1),
        "inflation_ratio" => round(ratio, 2),
    };
    if let Some(p75) = baseline {
        ev.insert("baseline_p75_s".into(), Value::from(round(p75, 1)));
    }
    Some(Signal::new(
        FailureType::SessionLatency,
        Severity::Medium,
        run.current_step,
        scale(ratio),
        ev,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::run::{Baselines, ExternalSignal, LlmCall, ToolCall};
    use serde_json::json;
    use EventType::*;

    fn ev(t: EventType, step: i32, ts: f64) -> Event {
        Event {
            event_type: t,
            run_id: "run-1".into(),
            agent_id: "agent".into(),
            agent_version: "v1".into(),
            step_index: step,
            timestamp: ts,
            payload: crate::event::Payload::new(),
            parent_run_id: None,
        }
    }

    fn run_of(events: Vec<Event>) -> RunState {
        let current_step = events.iter().map(|e| e.step_index).max().unwrap_or(0);
        RunState {
            run_id: "run-1".into(),
            agent_id: "agent".into(),
            agent_version: "v1".into(),
            events,
            current_step,
            ..RunState::default()
        }
    }

    fn tool(name: &str, step: i32, success: Option<bool>) -> ToolCall {
        ToolCall {
            tool_name: name.into(),
            args_hash: "".into(),
            step_index: step,
            success,
            ..ToolCall::default()
        }
    }

    fn llm(step: i32, finish: Option<&str>, output_length: Option<i64>) -> LlmCall {
        LlmCall {
            step_index: step,
            finish_reason: finish.map(str::to_owned),
            output_length,
            ..LlmCall::default()
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    // ── GOAL_ABANDONMENT ────────────────────────────────────────────────────

    /// V0: every event advances the step.
    fn stalled_v0() -> RunState {
        let mut r = run_of(vec![
            ev(RunStarted, 0, 100.0),
            ev(LlmCalled, 1, 101.0),
            ev(LlmResponded, 2, 102.0),
            ev(ToolCalled, 3, 103.0),
            ev(ToolResponded, 4, 104.0),
            ev(LlmCalled, 5, 105.0),
            ev(LlmResponded, 6, 106.0),
            ev(LlmCalled, 7, 107.0),
            ev(LlmResponded, 8, 108.0),
        ]);
        r.tool_calls = vec![tool("search", 3, Some(true))];
        r
    }

    /// V4: only `*.called` advance, responses share the call's step.
    fn stalled_v4() -> RunState {
        let mut r = run_of(vec![
            ev(RunStarted, 0, 100.0),
            ev(LlmCalled, 1, 101.0),
            ev(LlmResponded, 1, 102.0),
            ev(ToolCalled, 2, 103.0),
            ev(ToolResponded, 2, 104.0),
            ev(LlmCalled, 3, 105.0),
            ev(LlmResponded, 3, 106.0),
            ev(LlmCalled, 4, 107.0),
            ev(LlmResponded, 4, 108.0),
        ]);
        r.tool_calls = vec![tool("search", 2, Some(true))];
        r
    }

    #[test]
    fn goal_abandonment_fires_v0() {
        let s = goal_abandonment(&stalled_v0(), &GoalAbandonmentParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::GoalAbandonment);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 8);
        close(s.confidence, 0.6); // scale(5 / 4)
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "stall_steps": 4,
                "last_tool_step": 3,
                "last_tool_used": "search",
                "current_step": 8,
                "steps_since_last_tool": 5,
                "stall_event_sequence": ["llm.called", "llm.responded", "llm.called", "llm.responded"],
            })
        );
    }

    #[test]
    fn goal_abandonment_fires_v4_below_half_confidence() {
        let s = goal_abandonment(&stalled_v4(), &GoalAbandonmentParams::default()).unwrap();
        assert_eq!(s.step_index, 4);
        close(s.confidence, 0.3); // scale(2 / 4): no lower clamp
        assert_eq!(s.evidence["last_tool_step"], json!(2));
        assert_eq!(s.evidence["current_step"], json!(4));
        assert_eq!(s.evidence["steps_since_last_tool"], json!(2));
    }

    #[test]
    fn goal_abandonment_boundary_needs_all_last_events_llm() {
        // Only the last 3 events are LLM events: the 4th from the end is tool.responded.
        let mut r = stalled_v4();
        r.events.truncate(r.events.len() - 1);
        r.current_step = 4;
        assert!(goal_abandonment(&r, &GoalAbandonmentParams::default()).is_none());
        // With stall_steps 3 the same run fires.
        let p = GoalAbandonmentParams { stall_steps: 3 };
        let s = goal_abandonment(&r, &p).unwrap();
        assert_eq!(s.evidence["stall_steps"], json!(3));
        assert_eq!(
            s.evidence["stall_event_sequence"],
            json!(["llm.called", "llm.responded", "llm.called"])
        );
        close(s.confidence, scale(2.0 / 3.0));
    }

    #[test]
    fn goal_abandonment_silent_cases() {
        let p = GoalAbandonmentParams::default();
        // Completed or errored runs.
        let mut r = stalled_v0();
        r.exit_reason = Some("completed".into());
        assert!(goal_abandonment(&r, &p).is_none());
        // No tool call.
        let mut r = stalled_v0();
        r.tool_calls.clear();
        assert!(goal_abandonment(&r, &p).is_none());
        // An external signal among the last events breaks the stall.
        let mut r = stalled_v0();
        r.events.push(ev(ExternalSignal, 8, 108.5));
        assert!(goal_abandonment(&r, &p).is_none());
        // Fewer events than stall_steps.
        let mut r = run_of(vec![
            ev(LlmCalled, 1, 1.0),
            ev(LlmResponded, 1, 2.0),
            ev(LlmCalled, 2, 3.0),
        ]);
        r.tool_calls = vec![tool("t", 0, None)];
        assert!(goal_abandonment(&r, &p).is_none());
        // Exactly stall_steps events, all LLM: fires.
        r.events.push(ev(LlmResponded, 2, 4.0));
        let s = goal_abandonment(&r, &p).unwrap();
        assert_eq!(s.evidence["steps_since_last_tool"], json!(2));
    }

    // ── SLOW_STEP ───────────────────────────────────────────────────────────

    /// V4 run: step 1 is a tool call taking `tool_ms`, step 2 an LLM call taking `llm_ms`.
    fn slow_v4(tool_ms: i64, llm_ms: i64) -> RunState {
        let t1 = 1000.0;
        let t2 = t1 + tool_ms as f64 / 1000.0;
        let t3 = t2 + 0.5;
        let t4 = t3 + llm_ms as f64 / 1000.0;
        let mut r = run_of(vec![
            ev(RunStarted, 0, 999.0),
            ev(ToolCalled, 1, t1),
            ev(ToolResponded, 1, t2),
            ev(LlmCalled, 2, t3),
            ev(LlmResponded, 2, t4),
            ev(RunCompleted, 2, t4 + 0.1),
        ]);
        r.step_durations_ms = vec![(0, 1000), (1, tool_ms), (2, llm_ms)];
        r
    }

    #[test]
    fn slow_step_tool_boundary() {
        let p = SlowStepParams::default();
        assert!(slow_step(&slow_v4(15_000, 100), &p).is_none());
        let s = slow_step(&slow_v4(15_001, 100), &p).unwrap();
        assert_eq!(s.failure_type, FailureType::SlowStep);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 1);
        close(s.confidence, scale(15_001.0 / 15_000.0));
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "step_index": 1,
                "duration_ms": 15001,
                "threshold_ms": 15000,
                "event_type": "tool.called",
                "step_label": "tool execution",
                "ratio": 1.0,
                "all_slow_steps": {"1": 15001},
            })
        );
    }

    #[test]
    fn slow_step_llm_and_other_boundaries() {
        let p = SlowStepParams::default();
        assert!(slow_step(&slow_v4(100, 30_000), &p).is_none());
        let s = slow_step(&slow_v4(100, 30_001), &p).unwrap();
        assert_eq!(s.step_index, 2);
        assert_eq!(s.evidence["event_type"], json!("llm.called"));
        assert_eq!(s.evidence["step_label"], json!("LLM call"));
        assert_eq!(s.evidence["threshold_ms"], json!(30_000));

        // Step 0 starts with run.started: the 60 s catch-all.
        let mut r = slow_v4(100, 100);
        r.step_durations_ms[0].1 = 60_000;
        assert!(slow_step(&r, &p).is_none());
        r.step_durations_ms[0].1 = 60_001;
        let s = slow_step(&r, &p).unwrap();
        assert_eq!(s.step_index, 0);
        assert_eq!(s.evidence["event_type"], json!("run.started"));
        assert_eq!(s.evidence["step_label"], json!("step"));
        assert_eq!(s.evidence["threshold_ms"], json!(60_000));
    }

    #[test]
    fn slow_step_picks_largest_ratio_and_lists_all() {
        let p = SlowStepParams::default();
        // Tool 45 s (3.0×) and LLM 120 s (4.0×): the LLM step wins.
        let s = slow_step(&slow_v4(45_000, 120_000), &p).unwrap();
        assert_eq!(s.step_index, 2);
        assert_eq!(s.evidence["ratio"], json!(4.0));
        close(s.confidence, 1.0);
        assert_eq!(
            s.evidence["all_slow_steps"],
            json!({"1": 45_000, "2": 120_000})
        );
        let keys: Vec<&String> = s.evidence["all_slow_steps"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["1", "2"]);
        // Equal ratios (2.0× each): the first in step_durations order wins.
        let s = slow_step(&slow_v4(30_000, 60_000), &p).unwrap();
        assert_eq!(s.step_index, 1);
        assert_eq!(s.evidence["ratio"], json!(2.0));
        close(s.confidence, 0.9);
    }

    #[test]
    fn slow_step_high_severity_from_five_times() {
        let p = SlowStepParams::default();
        let s = slow_step(&slow_v4(74_999, 100), &p).unwrap();
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.evidence["ratio"], json!(5.0)); // rounded for display only
        let s = slow_step(&slow_v4(75_000, 100), &p).unwrap();
        assert_eq!(s.severity, Severity::High);
        close(s.confidence, 1.0);
    }

    #[test]
    fn slow_step_v0_steps() {
        // V0: tool.called at step 1, tool.responded at step 2; step 1's gap is the tool time
        // and step 2 (first event tool.responded) falls into the 60 s catch-all.
        let mut r = run_of(vec![
            ev(RunStarted, 0, 0.0),
            ev(ToolCalled, 1, 1.0),
            ev(ToolResponded, 2, 21.0),
            ev(LlmCalled, 3, 61.5),
            ev(LlmResponded, 4, 62.0),
        ]);
        r.step_durations_ms = vec![(0, 1000), (1, 20_000), (2, 40_500), (3, 500)];
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        assert_eq!(s.step_index, 1);
        assert_eq!(s.evidence["event_type"], json!("tool.called"));
        assert_eq!(s.evidence["all_slow_steps"], json!({"1": 20_000}));
        assert_eq!(s.evidence["ratio"], json!(1.3));
    }

    #[test]
    fn slow_step_type_is_first_event_ignoring_signals() {
        // Step 1 opens with an external signal, then the tool call and its response.
        let mut r = run_of(vec![
            ev(RunStarted, 0, 0.0),
            ev(ExternalSignal, 1, 0.5),
            ev(ToolCalled, 1, 1.0),
            ev(ToolResponded, 1, 17.0),
        ]);
        r.step_durations_ms = vec![(0, 1000), (1, 16_000)];
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        assert_eq!(s.evidence["event_type"], json!("tool.called"));
        assert_eq!(s.evidence["threshold_ms"], json!(15_000));
    }

    #[test]
    fn slow_step_with_baselines() {
        let mut r = slow_v4(8_000, 100);
        r.baselines = Baselines {
            latency_tool: Some(4_000.4),
            ..Baselines::default()
        };
        let p = SlowStepParams::default();
        // int(4000.4 × 2) = 8000: strict.
        assert!(slow_step(&r, &p).is_none());
        r.step_durations_ms[1].1 = 8_001;
        let s = slow_step(&r, &p).unwrap();
        assert_eq!(s.step_index, 1);
        close(s.confidence, scale(8_001.0 / 8_000.0));
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "step_index": 1,
                "duration_ms": 8001,
                "threshold_ms": 8000,
                "event_type": "tool.called",
                "step_label": "tool execution",
                "ratio": 1.0,
                "all_slow_steps": {"1": 8001},
                "baseline_p75": 4000.4,
            })
        );
        // LLM threshold int(20.26 × 2) = 40; the 100 ms LLM step is 2.5× over and wins.
        r.baselines.latency_llm = Some(20.26);
        let s = slow_step(&r, &p).unwrap();
        assert_eq!(s.step_index, 2);
        assert_eq!(s.severity, Severity::Medium);
        close(s.confidence, 1.0);
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "step_index": 2,
                "duration_ms": 100,
                "threshold_ms": 40,
                "event_type": "llm.called",
                "step_label": "LLM call",
                "ratio": 2.5,
                "all_slow_steps": {"1": 8001, "2": 100},
                "baseline_p75": 20.3,
            })
        );
        // A custom inflation factor: 12001 and 60 ms thresholds.
        let p = SlowStepParams {
            inflation_factor: 3.0,
        };
        let s = slow_step(&r, &p).unwrap();
        assert_eq!(s.step_index, 2);
        assert_eq!(s.evidence["threshold_ms"], json!(60));
        assert_eq!(s.evidence["all_slow_steps"], json!({"2": 100}));
        let p = SlowStepParams {
            inflation_factor: 5.0,
        };
        assert!(slow_step(&r, &p).is_none());
    }

    #[test]
    fn slow_step_catch_all_has_no_baseline_key() {
        let mut r = slow_v4(100, 100);
        r.step_durations_ms[0].1 = 70_000;
        r.baselines.latency_tool = Some(10.0);
        r.baselines.latency_llm = Some(10.0);
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        // Tool 100 ms over 20 ms (5×) beats step 0 at 70 s / 60 s.
        assert_eq!(s.step_index, 1);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.evidence["baseline_p75"], json!(10.0));
        r.baselines = Baselines::default();
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        assert_eq!(s.step_index, 0);
        assert!(!s.evidence.contains_key("baseline_p75"));
        assert!(!s.evidence.contains_key("coincident_signals"));
    }

    #[test]
    fn slow_step_coincident_signals() {
        let mut r = slow_v4(20_000, 100); // step 1 from 1000.0 to 1020.0
        let sig = |name: &str, ts: f64, source: Option<&str>, meta: Option<Value>| ExternalSignal {
            signal_name: name.into(),
            source: source.map(str::to_owned),
            meta,
            step_index: 1,
            timestamp: ts,
        };
        r.external_signals = vec![
            sig("before", 999.999, None, None),
            sig("at_start", 1000.0, Some("k8s"), Some(json!({"pod": "a"}))),
            sig("middle", 1010.0, Some(""), Some(json!({}))),
            sig("at_end", 1020.0, None, None),
            sig("after", 1020.001, None, None),
        ];
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "step_index": 1,
                "duration_ms": 20000,
                "threshold_ms": 15000,
                "event_type": "tool.called",
                "step_label": "tool execution",
                "ratio": 1.3,
                "all_slow_steps": {"1": 20000},
                "coincident_signals": [
                    {"signal_name": "at_start", "source": "k8s", "meta": {"pod": "a"}},
                    {"signal_name": "middle"},
                    {"signal_name": "at_end"},
                ],
            })
        );
        // No signal inside the step: no key at all.
        r.external_signals
            .retain(|s| s.signal_name == "before" || s.signal_name == "after");
        let s = slow_step(&r, &SlowStepParams::default()).unwrap();
        assert!(!s.evidence.contains_key("coincident_signals"));
    }

    #[test]
    fn slow_step_needs_durations() {
        let mut r = slow_v4(90_000, 100);
        r.step_durations_ms.clear();
        assert!(slow_step(&r, &SlowStepParams::default()).is_none());
        assert!(slow_step(&RunState::default(), &SlowStepParams::default()).is_none());
    }

    // ── STEP_COUNT_INFLATION ────────────────────────────────────────────────

    fn steps_run(current: i32, p75: Option<f64>) -> RunState {
        RunState {
            current_step: current,
            baselines: Baselines {
                steps: p75,
                ..Baselines::default()
            },
            ..RunState::default()
        }
    }

    #[test]
    fn step_count_inflation_boundary() {
        let p = StepCountInflationParams::default();
        assert!(step_count_inflation(&steps_run(10, Some(5.0)), &p).is_none());
        let s = step_count_inflation(&steps_run(11, Some(5.0)), &p).unwrap();
        assert_eq!(s.failure_type, FailureType::StepCountInflation);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 11);
        close(s.confidence, 0.54); // scale(11 / 10)
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "current_steps": 11,
                "baseline_p75": 5.0,
                "inflation_ratio": 2.2,
                "threshold_factor": 2.0,
            })
        );
    }

    #[test]
    fn step_count_inflation_rounding_and_factor() {
        let p = StepCountInflationParams::default();
        let s = step_count_inflation(&steps_run(20, Some(3.25)), &p).unwrap();
        assert_eq!(s.evidence["baseline_p75"], json!(3.2)); // ties to even
        assert_eq!(s.evidence["inflation_ratio"], json!(6.15));
        close(s.confidence, 1.0);
        let p = StepCountInflationParams {
            inflation_factor: 1.5,
        };
        let s = step_count_inflation(&steps_run(8, Some(5.0)), &p).unwrap();
        assert_eq!(s.evidence["threshold_factor"], json!(1.5));
        close(s.confidence, scale(8.0 / 7.5));
    }

    #[test]
    fn step_count_inflation_needs_baseline() {
        let p = StepCountInflationParams::default();
        assert!(step_count_inflation(&steps_run(500, None), &p).is_none());
        assert!(step_count_inflation(&steps_run(5, Some(0.0)), &p).is_none());
    }

    // ── FIRST_STEP_FAILURE ──────────────────────────────────────────────────

    #[test]
    fn first_step_failure_run_errored() {
        let p = FirstStepFailureParams::default();
        let mut r = steps_run(2, None);
        r.exit_reason = Some("error".into());
        let s = first_step_failure(&r, &p).unwrap();
        assert_eq!(s.failure_type, FailureType::FirstStepFailure);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 2);
        close(s.confidence, 0.90);
        assert_eq!(
            Value::Object(s.evidence),
            json!({"trigger": "run_errored", "failed_step": 2, "max_step": 2})
        );
        r.current_step = 3;
        assert!(first_step_failure(&r, &p).is_none());
        r.current_step = 1;
        r.exit_reason = Some("completed".into());
        assert!(first_step_failure(&r, &p).is_none());
    }

    #[test]
    fn first_step_failure_empty_llm_response() {
        let p = FirstStepFailureParams::default();
        // V0: llm.called at 1, llm.responded at 2; the call's step is what counts.
        let mut r = steps_run(9, None);
        r.llm_calls = vec![
            llm(1, Some("stop"), Some(12)),
            llm(2, Some("stop"), Some(0)),
        ];
        let s = first_step_failure(&r, &p).unwrap();
        assert_eq!(s.step_index, 2);
        close(s.confidence, 0.88);
        assert_eq!(
            Value::Object(s.evidence),
            json!({"trigger": "empty_llm_response", "failed_step": 2, "max_step": 2})
        );
        // Just past max_step, a null length, or another finish reason: nothing.
        r.llm_calls = vec![
            llm(3, Some("stop"), Some(0)),
            llm(1, Some("stop"), None),
            llm(1, Some("length"), Some(0)),
            llm(1, None, Some(0)),
        ];
        assert!(first_step_failure(&r, &p).is_none());
    }

    #[test]
    fn first_step_failure_tool_failure() {
        let p = FirstStepFailureParams::default();
        // V4: the first tool call sits at step 2.
        let mut r = steps_run(6, None);
        r.tool_calls = vec![
            tool("ok", 1, Some(true)),
            tool("unknown_result", 1, None),
            tool("db", 2, Some(false)),
            tool("api", 2, Some(false)),
        ];
        let s = first_step_failure(&r, &p).unwrap();
        assert_eq!(s.step_index, 2);
        close(s.confidence, 0.85);
        assert_eq!(
            Value::Object(s.evidence),
            json!({"trigger": "tool_failure", "failed_step": 2, "tool": "db", "max_step": 2})
        );
        // V0: the same failure lands at step 3, past max_step.
        r.tool_calls = vec![tool("db", 3, Some(false))];
        assert!(first_step_failure(&r, &p).is_none());
        // max_step 3 catches it.
        let s = first_step_failure(&r, &FirstStepFailureParams { max_step: 3 }).unwrap();
        assert_eq!(s.evidence["max_step"], json!(3));
    }

    #[test]
    fn first_step_failure_branch_order() {
        let p = FirstStepFailureParams::default();
        let mut r = steps_run(2, None);
        r.exit_reason = Some("error".into());
        r.tool_calls = vec![tool("db", 1, Some(false))];
        r.llm_calls = vec![llm(2, Some("stop"), Some(0))];
        assert_eq!(
            first_step_failure(&r, &p).unwrap().evidence["trigger"],
            json!("run_errored")
        );
        r.exit_reason = None;
        // The empty response wins over an earlier tool failure.
        let s = first_step_failure(&r, &p).unwrap();
        assert_eq!(s.evidence["trigger"], json!("empty_llm_response"));
        assert_eq!(s.step_index, 2);
        r.llm_calls.clear();
        let s = first_step_failure(&r, &p).unwrap();
        assert_eq!(s.evidence["trigger"], json!("tool_failure"));
        assert_eq!(s.step_index, 1);
        // max_step 0.
        assert!(first_step_failure(&r, &FirstStepFailureParams { max_step: 0 }).is_none());
    }

    // ── SESSION_LATENCY ─────────────────────────────────────────────────────

    fn timed(ts: &[f64]) -> RunState {
        let mut r = run_of(
            ts.iter()
                .enumerate()
                .map(|(i, t)| ev(LlmCalled, i as i32, *t))
                .collect(),
        );
        r.current_step = 7;
        r
    }

    #[test]
    fn session_latency_exactly_static_threshold_fires() {
        let p = SessionLatencyParams::default();
        let s = session_latency(
            &timed(&[1_714_000_000.0, 1_714_000_100.0, 1_714_000_300.0]),
            &p,
        )
        .unwrap();
        assert_eq!(s.failure_type, FailureType::SessionLatency);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 7);
        close(s.confidence, 0.5);
        assert_eq!(
            Value::Object(s.evidence),
            json!({"duration_s": 300.0, "threshold_s": 300.0, "inflation_ratio": 1.0})
        );
        assert!(session_latency(&timed(&[1_714_000_000.0, 1_714_000_299.9]), &p).is_none());
    }

    #[test]
    fn session_latency_duration_over_all_events() {
        // Out of timestamp order (sorted by step), an external signal included.
        let mut r = timed(&[1000.0, 1100.0]);
        r.events.push(ev(ExternalSignal, 1, 900.0));
        r.events.push(ev(RunCompleted, 1, 1350.25));
        let s = session_latency(&r, &SessionLatencyParams::default()).unwrap();
        assert_eq!(s.evidence["duration_s"], json!(450.2)); // 450.25 rounds to even
        assert_eq!(s.evidence["inflation_ratio"], json!(1.5));
        close(s.confidence, scale(450.25 / 300.0));
    }

    #[test]
    fn session_latency_with_baseline() {
        let p = SessionLatencyParams::default();
        let mut r = timed(&[0.0, 150.5]);
        r.baselines.duration_s = Some(40.04);
        let s = session_latency(&r, &p).unwrap();
        close(s.confidence, scale(150.5 / (40.04 * 3.0)));
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "duration_s": 150.5,
                "threshold_s": 120.1,
                "inflation_ratio": 1.25,
                "baseline_p75_s": 40.0,
            })
        );
        // Just below the baseline threshold.
        r.baselines.duration_s = Some(50.2);
        assert!(session_latency(&r, &p).is_none());
    }

    #[test]
    fn session_latency_ratio_uses_threshold_at_least_one() {
        let mut r = timed(&[10.0, 10.9]);
        r.baselines.duration_s = Some(0.2); // threshold 0.6 s
        let s = session_latency(&r, &SessionLatencyParams::default()).unwrap();
        assert_eq!(s.evidence["threshold_s"], json!(0.6));
        assert_eq!(s.evidence["inflation_ratio"], json!(0.9));
        close(s.confidence, scale(0.9000000000000004));
    }

    #[test]
    fn session_latency_skips() {
        let p = SessionLatencyParams::default();
        assert!(session_latency(&timed(&[]), &p).is_none());
        // Fewer events than min_events.
        let mut r = timed(&[0.0]);
        r.baselines.duration_s = Some(0.001);
        assert!(session_latency(&r, &p).is_none());
        let three = SessionLatencyParams {
            min_events: 3,
            ..SessionLatencyParams::default()
        };
        assert!(session_latency(&timed(&[0.0, 1000.0]), &three).is_none());
        assert!(session_latency(&timed(&[0.0, 500.0, 1000.0]), &three).is_some());
        // Zero duration.
        let mut r = timed(&[5.0, 5.0]);
        r.baselines.duration_s = Some(0.0);
        assert!(session_latency(&r, &p).is_none());
        // Custom static threshold.
        let p = SessionLatencyParams {
            static_threshold_secs: 60.0,
            ..SessionLatencyParams::default()
        };
        let s = session_latency(&timed(&[0.0, 90.0]), &p).unwrap();
        assert_eq!(s.evidence["threshold_s"], json!(60.0));
        assert!(!s.evidence.contains_key("baseline_p75_s"));
    }
}
