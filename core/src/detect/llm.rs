//! Detectors that read LLM calls and token counts: LLM_TRUNCATION_LOOP, CONTEXT_BLOAT,
//! EMPTY_LLM_RESPONSE, REASONING_STALL, COST_SPIKE.
//!
//! Rules follow the original's V4 detectors, with our
//! `observed / max(threshold, 1)` ratio for COST_SPIKE. Evidence keys are inserted in the
//! documented order; integers stay JSON integers and rounded ratios stay JSON floats.

use super::config::*;
use super::{scale, FailureType, Severity, Signal};
use crate::event::EventType;
use crate::evidence;
use crate::pyround::round;
use crate::run::{LlmCall, RunState};
use serde_json::{json, Value};

fn finish_is(c: &LlmCall, reason: &str) -> bool {
    c.finish_reason.as_deref() == Some(reason)
}

/// LLM_TRUNCATION_LOOP: at least `threshold` responses cut off with finish_reason "length".
pub fn llm_truncation_loop(run: &RunState, p: &LlmTruncationLoopParams) -> Option<Signal> {
    let truncated: Vec<&LlmCall> = run
        .llm_calls
        .iter()
        .filter(|c| finish_is(c, "length"))
        .collect();
    let count = truncated.len() as i64;
    if count < p.threshold {
        return None;
    }
    let (first, last) = (truncated.first()?, truncated.last()?);
    let tokens: Vec<i64> = truncated.iter().filter_map(|c| c.prompt_tokens).collect();
    // `sorted({c.model for c in truncated if c.model})`: empty names are falsy and left out.
    let mut models: Vec<&str> = truncated
        .iter()
        .filter_map(|c| c.model.as_deref())
        .filter(|m| !m.is_empty())
        .collect();
    models.sort_unstable();
    models.dedup();
    let confidence = scale(count as f64 / p.threshold as f64);
    Some(Signal::new(
        FailureType::LlmTruncationLoop,
        Severity::High,
        run.current_step,
        confidence,
        evidence! {
            "truncation_count" => count,
            "total_llm_calls" => run.llm_calls.len(),
            "first_truncation_step" => first.step_index,
            "last_truncation_step" => last.step_index,
            "token_counts_at_truncation" => tokens,
            "models" => models,
        },
    ))
}

/// CONTEXT_BLOAT: the prompt grew from the first to the last call (those with tokens > 0) by at
/// least the growth threshold (static, or P75 growth × inflation factor).
pub fn context_bloat(run: &RunState, p: &ContextBloatParams) -> Option<Signal> {
    let calls: Vec<(i32, i64)> = run
        .llm_calls
        .iter()
        .filter_map(|c| match c.prompt_tokens {
            Some(t) if t > 0 => Some((c.step_index, t)),
            _ => None,
        })
        .collect();
    if (calls.len() as i64) < p.min_calls {
        return None;
    }
    let (&(first_step, first), &(last_step, last)) = (calls.first()?, calls.last()?);
    if first < 10 || last < p.min_last_tokens {
        return None;
    }
    let growth = last as f64 / first as f64;
    let baseline = run.baselines.token_growth;
    let threshold = match baseline {
        Some(b) => b * p.inflation_factor,
        None => p.growth_factor,
    };
    if growth < threshold {
        return None;
    }
    let sequence: Vec<Value> = calls
        .iter()
        .map(|(step, tokens)| json!({"step": step, "tokens": tokens}))
        .collect();
    let mut ev = evidence! {
        "first_tokens" => first,
        "last_tokens" => last,
        "growth_factor" => round(growth, 2),
        "threshold_factor" => round(threshold, 2),
        "llm_call_count" => calls.len(),
        "first_call_step" => first_step,
        "last_call_step" => last_step,
        "token_growth_sequence" => sequence,
    };
    if let Some(b) = baseline {
        ev.insert("baseline_p75".into(), json!(round(b, 2)));
    }
    Some(Signal::new(
        FailureType::ContextBloat,
        Severity::Medium,
        run.current_step,
        scale(growth / threshold),
        ev,
    ))
}

/// EMPTY_LLM_RESPONSE: a response that stopped normally with exactly zero output.
pub fn empty_llm_response(run: &RunState, _p: &EmptyLlmResponseParams) -> Option<Signal> {
    let empties: Vec<&LlmCall> = run
        .llm_calls
        .iter()
        .filter(|c| finish_is(c, "stop") && c.output_length == Some(0))
        .collect();
    let first = empties.first()?;
    Some(Signal::new(
        FailureType::EmptyLlmResponse,
        Severity::High,
        first.step_index,
        0.95,
        evidence! {
            "occurrences" => empties.len(),
            "first_step" => first.step_index,
            "finish_reason" => "stop",
        },
    ))
}

/// REASONING_STALL: many LLM calls per tool call (ratio ≥ static threshold, or P75 ratio ×
/// inflation factor). Errored runs are skipped.
pub fn reasoning_stall(run: &RunState, p: &ReasoningStallParams) -> Option<Signal> {
    let exit = run.exit_reason.as_deref();
    if exit == Some("error") {
        return None;
    }
    let llm = run.llm_calls.len();
    let tools = run.tool_calls.len();
    if (llm as i64) < p.min_llm_calls {
        return None;
    }
    let ratio = llm as f64 / tools.max(1) as f64;
    let baseline = run.baselines.llm_tool_ratio;
    let threshold = match baseline {
        Some(b) => b * p.inflation_factor,
        None => p.ratio_threshold,
    };
    if ratio < threshold {
        return None;
    }
    let sequence: Vec<&str> = run
        .events
        .iter()
        .filter_map(|e| match e.event_type {
            EventType::LlmCalled => Some("llm"),
            EventType::ToolCalled => Some("tool"),
            _ => None,
        })
        .collect();
    let severity = if exit == Some("final_answer") {
        Severity::Medium
    } else {
        Severity::High
    };
    let mut ev = evidence! {
        "llm_calls" => llm,
        "tool_calls" => tools,
        "ratio" => round(ratio, 2),
        "threshold" => round(threshold, 2),
        "exit_reason" => exit,
        "event_sequence" => sequence,
    };
    if let Some(b) = baseline {
        ev.insert("baseline_p75".into(), json!(round(b, 2)));
    }
    Some(Signal::new(
        FailureType::ReasoningStall,
        severity,
        run.current_step,
        scale(ratio / threshold),
        ev,
    ))
}

/// COST_SPIKE: total prompt + completion tokens ≥ the token threshold (static, or P75 total ×
/// inflation factor). The comparison and the ratio use the threshold as a float; only the
/// evidence reports `int(threshold)` (and `int(p75)`).
pub fn cost_spike(run: &RunState, p: &CostSpikeParams) -> Option<Signal> {
    if (run.llm_calls.len() as i64) < p.min_llm_calls {
        return None;
    }
    let total: i64 = run
        .llm_calls
        .iter()
        .map(|c| {
            c.prompt_tokens
                .unwrap_or(0)
                .saturating_add(c.completion_tokens.unwrap_or(0))
        })
        .fold(0i64, i64::saturating_add);
    if total == 0 {
        return None;
    }
    let baseline = run.baselines.total_tokens;
    let threshold: f64 = match baseline {
        Some(b) => b * p.inflation_factor,
        None => p.static_threshold_tokens as f64,
    };
    if (total as f64) < threshold {
        return None;
    }
    let ratio = total as f64 / threshold.max(1.0);
    let mut ev = evidence! {
        "total_tokens" => total,
        // Python int(): truncation toward zero (saturating here).
        "threshold" => threshold as i64,
        "inflation_ratio" => round(ratio, 2),
        "llm_calls" => run.llm_calls.len(),
    };
    if let Some(b) = baseline {
        ev.insert("baseline_p75".into(), json!(b as i64));
    }
    Some(Signal::new(
        FailureType::CostSpike,
        Severity::Medium,
        run.current_step,
        scale(ratio),
        ev,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{test_event, Event};
    use crate::run::{Baselines, ToolCall};
    use serde_json::Map;

    fn event(t: EventType, step: i32) -> Event {
        test_event(t, step, 1000.0 + step as f64, Value::Object(Map::new()))
    }

    /// Whole-object comparison plus a textual one, which also checks key order and int/float.
    fn assert_evidence(sig: &Signal, expected: Value) {
        assert_eq!(Value::Object(sig.evidence.clone()), expected);
        assert_eq!(
            serde_json::to_string(&sig.evidence).unwrap(),
            expected.to_string()
        );
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    fn call(step: i32, prompt: Option<i64>, finish: &str) -> LlmCall {
        LlmCall {
            model: Some("gpt-4o".into()),
            prompt_tokens: prompt,
            completion_tokens: Some(10),
            finish_reason: Some(finish.into()),
            latency_ms: Some(100),
            output_length: Some(50),
            step_index: step,
            timestamp: 1000.0 + step as f64,
        }
    }

    fn tool(step: i32) -> ToolCall {
        ToolCall {
            tool_name: "search".into(),
            args_hash: "abcd".into(),
            step_index: step,
            timestamp: 1000.0 + step as f64,
            success: Some(true),
            error_hash: None,
        }
    }

    fn run_with(llm_calls: Vec<LlmCall>, current_step: i32) -> RunState {
        RunState {
            run_id: "r".into(),
            agent_id: "a".into(),
            agent_version: "v".into(),
            exit_reason: Some("completed".into()),
            llm_calls,
            current_step,
            ..Default::default()
        }
    }

    // ---------------------------------------------------------------- LLM_TRUNCATION_LOOP

    #[test]
    fn truncation_fires_above_threshold() {
        let mut calls = vec![
            call(1, Some(500), "length"),
            call(2, Some(800), "stop"),
            call(3, None, "length"),
            call(4, Some(1200), "length"),
            call(5, Some(1500), "length"),
        ];
        calls[0].model = Some("zeta".into());
        calls[2].model = None;
        calls[3].model = Some("alpha".into());
        calls[4].model = Some("zeta".into());
        let run = run_with(calls, 7);
        let s = llm_truncation_loop(&run, &LlmTruncationLoopParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::LlmTruncationLoop);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 7);
        // 4 truncations / threshold 2 → r = 2 → 0.9.
        close(s.confidence, 0.9);
        assert_evidence(
            &s,
            json!({
                "truncation_count": 4,
                "total_llm_calls": 5,
                "first_truncation_step": 1,
                "last_truncation_step": 5,
                "token_counts_at_truncation": [500, 1200, 1500],
                "models": ["alpha", "zeta"],
            }),
        );
    }

    #[test]
    fn truncation_models_skip_empty_names() {
        // `if c.model`: an empty name is falsy; "unknown" (the builder's default) is kept.
        let mut calls = vec![
            call(1, Some(10), "length"),
            call(2, Some(10), "length"),
            call(3, Some(10), "length"),
        ];
        calls[0].model = Some(String::new());
        calls[1].model = Some("unknown".into());
        calls[2].model = None;
        let s =
            llm_truncation_loop(&run_with(calls, 3), &LlmTruncationLoopParams::default()).unwrap();
        assert_eq!(s.evidence["models"], json!(["unknown"]));
    }

    #[test]
    fn truncation_at_threshold() {
        let run = run_with(
            vec![call(1, Some(100), "length"), call(2, Some(200), "length")],
            2,
        );
        let s = llm_truncation_loop(&run, &LlmTruncationLoopParams::default()).unwrap();
        close(s.confidence, 0.5);
        assert_evidence(
            &s,
            json!({
                "truncation_count": 2,
                "total_llm_calls": 2,
                "first_truncation_step": 1,
                "last_truncation_step": 2,
                "token_counts_at_truncation": [100, 200],
                "models": ["gpt-4o"],
            }),
        );
    }

    #[test]
    fn truncation_below_threshold() {
        let run = run_with(
            vec![call(1, Some(100), "length"), call(2, Some(200), "stop")],
            2,
        );
        assert!(llm_truncation_loop(&run, &LlmTruncationLoopParams::default()).is_none());
        // Case matters: "LENGTH" is not a truncation.
        let run = run_with(
            vec![call(1, Some(100), "length"), call(2, Some(200), "LENGTH")],
            2,
        );
        assert!(llm_truncation_loop(&run, &LlmTruncationLoopParams::default()).is_none());
        assert!(
            llm_truncation_loop(&run_with(vec![], 0), &LlmTruncationLoopParams::default())
                .is_none()
        );
    }

    #[test]
    fn truncation_custom_threshold_and_cap() {
        let p = LlmTruncationLoopParams { threshold: 1 };
        let run = run_with(vec![call(3, Some(100), "length")], 3);
        let s = llm_truncation_loop(&run, &p).unwrap();
        close(s.confidence, 0.5);
        let calls = (1..=5).map(|i| call(i, Some(100), "length")).collect();
        let s = llm_truncation_loop(&run_with(calls, 5), &p).unwrap();
        close(s.confidence, 1.0);
    }

    // ---------------------------------------------------------------- CONTEXT_BLOAT

    fn bloat_run(tokens: &[Option<i64>]) -> RunState {
        let calls = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| call(i as i32 * 2 + 1, *t, "stop"))
            .collect();
        run_with(calls, tokens.len() as i32 * 2)
    }

    #[test]
    fn context_bloat_fires_without_baseline() {
        // Zero / null prompt tokens are skipped; first/last are in list order.
        let run = bloat_run(&[Some(500), None, Some(0), Some(1500), Some(2500)]);
        let s = context_bloat(&run, &ContextBloatParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::ContextBloat);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 10);
        // growth 5.0 / 3.0 → scale(1.6667) = 0.76667
        close(s.confidence, 0.5 + (5.0 / 3.0 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "first_tokens": 500,
                "last_tokens": 2500,
                "growth_factor": 5.0,
                "threshold_factor": 3.0,
                "llm_call_count": 3,
                "first_call_step": 1,
                "last_call_step": 9,
                "token_growth_sequence": [
                    {"step": 1, "tokens": 500},
                    {"step": 7, "tokens": 1500},
                    {"step": 9, "tokens": 2500},
                ],
            }),
        );
    }

    #[test]
    fn context_bloat_exactly_at_threshold() {
        let run = bloat_run(&[Some(1000), Some(2000), Some(3000)]);
        let s = context_bloat(&run, &ContextBloatParams::default()).unwrap();
        close(s.confidence, 0.5);
        assert_eq!(s.evidence["growth_factor"], json!(3.0));
    }

    #[test]
    fn context_bloat_just_below_threshold() {
        let run = bloat_run(&[Some(1000), Some(2000), Some(2999)]);
        assert!(context_bloat(&run, &ContextBloatParams::default()).is_none());
    }

    #[test]
    fn context_bloat_gates() {
        let p = ContextBloatParams::default();
        // Too few calls with tokens.
        assert!(context_bloat(&bloat_run(&[Some(100), None, Some(5000)]), &p).is_none());
        // First below 10.
        assert!(context_bloat(&bloat_run(&[Some(9), Some(100), Some(5000)]), &p).is_none());
        // First exactly 10 is allowed.
        assert!(context_bloat(&bloat_run(&[Some(10), Some(100), Some(5000)]), &p).is_some());
        // Last below min_last_tokens (growth is huge but last < 2000).
        assert!(context_bloat(&bloat_run(&[Some(10), Some(100), Some(1999)]), &p).is_none());
        // Last exactly min_last_tokens.
        assert!(context_bloat(&bloat_run(&[Some(10), Some(100), Some(2000)]), &p).is_some());
        // List order, not min/max: last smaller than a middle value.
        assert!(context_bloat(&bloat_run(&[Some(1000), Some(9000), Some(2500)]), &p).is_none());
    }

    #[test]
    fn context_bloat_with_baseline() {
        let mut run = bloat_run(&[Some(400), Some(1000), Some(2400)]);
        // growth 6.0; threshold = 2.5 × 2.0 = 5.0 (static 3.0 ignored).
        run.baselines = Baselines {
            token_growth: Some(2.5),
            ..Default::default()
        };
        let s = context_bloat(&run, &ContextBloatParams::default()).unwrap();
        close(s.confidence, 0.5 + (6.0 / 5.0 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "first_tokens": 400,
                "last_tokens": 2400,
                "growth_factor": 6.0,
                "threshold_factor": 5.0,
                "llm_call_count": 3,
                "first_call_step": 1,
                "last_call_step": 5,
                "token_growth_sequence": [
                    {"step": 1, "tokens": 400},
                    {"step": 3, "tokens": 1000},
                    {"step": 5, "tokens": 2400},
                ],
                "baseline_p75": 2.5,
            }),
        );
        // Exactly at the baseline threshold: 2400/480 = 5.0.
        let mut at = bloat_run(&[Some(480), Some(1000), Some(2400)]);
        at.baselines.token_growth = Some(2.5);
        close(
            context_bloat(&at, &ContextBloatParams::default())
                .unwrap()
                .confidence,
            0.5,
        );
        // Just below: growth 4.8 fires statically but not against the baseline threshold.
        let mut below = bloat_run(&[Some(500), Some(1000), Some(2400)]);
        assert!(context_bloat(&below, &ContextBloatParams::default()).is_some());
        below.baselines.token_growth = Some(2.5);
        assert!(context_bloat(&below, &ContextBloatParams::default()).is_none());
    }

    #[test]
    fn context_bloat_rounds_like_python() {
        // growth = 2345/700 = 3.35, threshold 1.1 × 2.0 = 2.2 (2.2000000000000002 in f64).
        let mut run = bloat_run(&[Some(700), Some(1000), Some(2345)]);
        run.baselines.token_growth = Some(1.1);
        let s = context_bloat(&run, &ContextBloatParams::default()).unwrap();
        assert_eq!(s.evidence["growth_factor"], json!(3.35));
        assert_eq!(s.evidence["threshold_factor"], json!(2.2));
        assert_eq!(s.evidence["baseline_p75"], json!(1.1));
        close(
            s.confidence,
            f64::min(1.0, 0.5 + (2345.0 / 700.0 / 2.2 - 1.0) * 0.4),
        );
    }

    #[test]
    fn baseline_p75_evidence_is_rounded_to_two_places() {
        // The original reports round(p75, 2) for CONTEXT_BLOAT and REASONING_STALL.
        let mut run = bloat_run(&[Some(100), Some(1000), Some(5000)]);
        run.baselines.token_growth = Some(2.456789);
        let s = context_bloat(&run, &ContextBloatParams::default()).unwrap();
        assert_eq!(s.evidence["baseline_p75"], json!(2.46));
        assert_eq!(s.evidence["threshold_factor"], json!(4.91));

        let mut run = stall_run(10, 3, Some("final_answer"));
        run.baselines.llm_tool_ratio = Some(1.23456);
        let s = reasoning_stall(&run, &ReasoningStallParams::default()).unwrap();
        assert_eq!(s.evidence["baseline_p75"], json!(1.23));
        assert_eq!(s.evidence["threshold"], json!(2.47));
    }

    // ---------------------------------------------------------------- EMPTY_LLM_RESPONSE

    #[test]
    fn empty_response_fires_on_first() {
        let mut calls = vec![
            call(1, Some(10), "stop"),
            call(3, Some(10), "stop"),
            call(5, Some(10), "length"),
            call(7, Some(10), "stop"),
            call(9, Some(10), "stop"),
        ];
        calls[0].output_length = None; // null never equals 0
        calls[1].output_length = Some(0);
        calls[2].output_length = Some(0); // not "stop"
        calls[3].output_length = Some(1);
        calls[4].output_length = Some(0);
        let run = run_with(calls, 10);
        let s = empty_llm_response(&run, &EmptyLlmResponseParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::EmptyLlmResponse);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 3);
        assert_eq!(s.confidence, 0.95);
        assert_evidence(
            &s,
            json!({"occurrences": 2, "first_step": 3, "finish_reason": "stop"}),
        );
    }

    #[test]
    fn empty_response_boundaries() {
        let p = EmptyLlmResponseParams::default();
        // Exactly 0 fires.
        let mut c = call(0, None, "stop");
        c.output_length = Some(0);
        let s = empty_llm_response(&run_with(vec![c], 0), &p).unwrap();
        assert_eq!(s.step_index, 0);
        assert_evidence(
            &s,
            json!({"occurrences": 1, "first_step": 0, "finish_reason": "stop"}),
        );
        // Length 1, null length, null finish reason: nothing.
        let mut c = call(0, None, "stop");
        c.output_length = Some(1);
        assert!(empty_llm_response(&run_with(vec![c.clone()], 0), &p).is_none());
        c.output_length = None;
        assert!(empty_llm_response(&run_with(vec![c.clone()], 0), &p).is_none());
        c.output_length = Some(0);
        c.finish_reason = None;
        assert!(empty_llm_response(&run_with(vec![c], 0), &p).is_none());
    }

    // ---------------------------------------------------------------- REASONING_STALL

    /// A run of `n_llm` LLM calls then `n_tool` tool calls, events interleaved as given.
    fn stall_run(n_llm: usize, n_tool: usize, exit: Option<&str>) -> RunState {
        let mut events = vec![event(EventType::RunStarted, 0)];
        let mut llm_calls = vec![];
        let mut tool_calls = vec![];
        let mut step = 0;
        for i in 0..n_llm.max(n_tool) {
            if i < n_llm {
                step += 1;
                events.push(event(EventType::LlmCalled, step));
                events.push(event(EventType::LlmResponded, step));
                llm_calls.push(call(step, Some(100), "stop"));
            }
            if i < n_tool {
                step += 1;
                events.push(event(EventType::ToolCalled, step));
                events.push(event(EventType::ToolResponded, step));
                tool_calls.push(tool(step));
            }
        }
        RunState {
            exit_reason: exit.map(str::to_string),
            llm_calls,
            tool_calls,
            events,
            current_step: step,
            ..Default::default()
        }
    }

    #[test]
    fn reasoning_stall_fires_without_baseline() {
        let run = stall_run(9, 2, Some("final_answer"));
        let s = reasoning_stall(&run, &ReasoningStallParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::ReasoningStall);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 11);
        close(s.confidence, 0.5 + (4.5 / 4.0 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "llm_calls": 9,
                "tool_calls": 2,
                "ratio": 4.5,
                "threshold": 4.0,
                "exit_reason": "final_answer",
                "event_sequence": ["llm", "tool", "llm", "tool", "llm", "llm", "llm", "llm",
                                   "llm", "llm", "llm"],
            }),
        );
    }

    #[test]
    fn reasoning_stall_severity_by_exit_reason() {
        let p = ReasoningStallParams::default();
        let s = reasoning_stall(&stall_run(5, 0, Some("completed")), &p).unwrap();
        assert_eq!(s.severity, Severity::High);
        // zero tools: ratio = 5 / max(0, 1) = 5.0
        assert_eq!(s.evidence["ratio"], json!(5.0));
        assert_eq!(s.evidence["tool_calls"], json!(0));
        let s = reasoning_stall(&stall_run(5, 0, None), &p).unwrap();
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.evidence["exit_reason"], Value::Null);
        assert!(reasoning_stall(&stall_run(50, 0, Some("error")), &p).is_none());
    }

    #[test]
    fn reasoning_stall_boundaries() {
        let p = ReasoningStallParams::default();
        // Exactly at the ratio threshold: 8 / 2 = 4.0.
        let s = reasoning_stall(&stall_run(8, 2, Some("final_answer")), &p).unwrap();
        close(s.confidence, 0.5);
        // Just below: 7 / 2 = 3.5.
        assert!(reasoning_stall(&stall_run(7, 2, Some("final_answer")), &p).is_none());
        // min_llm_calls: 4 LLM calls with no tools is ratio 4.0 but below MIN 5.
        assert!(reasoning_stall(&stall_run(4, 0, Some("final_answer")), &p).is_none());
    }

    #[test]
    fn reasoning_stall_with_baseline() {
        let mut run = stall_run(10, 3, Some("completed"));
        // ratio 3.3333 < static 4.0, but the baseline 1.5 × 2 = 3.0 lowers the threshold.
        assert!(reasoning_stall(&run, &ReasoningStallParams::default()).is_none());
        run.baselines.llm_tool_ratio = Some(1.5);
        let s = reasoning_stall(&run, &ReasoningStallParams::default()).unwrap();
        assert_eq!(s.severity, Severity::High);
        close(s.confidence, 0.5 + (10.0 / 3.0 / 3.0 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "llm_calls": 10,
                "tool_calls": 3,
                "ratio": 3.33,
                "threshold": 3.0,
                "exit_reason": "completed",
                "event_sequence": ["llm", "tool", "llm", "tool", "llm", "tool", "llm", "llm",
                                   "llm", "llm", "llm", "llm", "llm"],
                "baseline_p75": 1.5,
            }),
        );
        // Exactly at the baseline threshold (9 / 3 = 3.0) and just below (8 / 3).
        let mut at = stall_run(9, 3, Some("completed"));
        at.baselines.llm_tool_ratio = Some(1.5);
        close(
            reasoning_stall(&at, &ReasoningStallParams::default())
                .unwrap()
                .confidence,
            0.5,
        );
        let mut below = stall_run(8, 3, Some("completed"));
        below.baselines.llm_tool_ratio = Some(1.5);
        assert!(reasoning_stall(&below, &ReasoningStallParams::default()).is_none());
    }

    #[test]
    fn reasoning_stall_counts_llm_calls_not_events() {
        // A pending llm.called with no response is in event_sequence but not in llm_calls.
        let mut run = stall_run(5, 0, None);
        run.events.push(event(EventType::LlmCalled, 6));
        run.current_step = 6;
        let s = reasoning_stall(&run, &ReasoningStallParams::default()).unwrap();
        assert_eq!(s.evidence["llm_calls"], json!(5));
        assert_eq!(s.evidence["event_sequence"].as_array().unwrap().len(), 6);
        assert_eq!(s.step_index, 6);
    }

    // ---------------------------------------------------------------- COST_SPIKE

    fn cost_run(tokens: &[(Option<i64>, Option<i64>)]) -> RunState {
        let calls = tokens
            .iter()
            .enumerate()
            .map(|(i, (p, c))| LlmCall {
                prompt_tokens: *p,
                completion_tokens: *c,
                ..call(i as i32 + 1, None, "stop")
            })
            .collect();
        run_with(calls, tokens.len() as i32 + 2)
    }

    #[test]
    fn cost_spike_fires_without_baseline() {
        let run = cost_run(&[
            (Some(30_000), Some(5_000)),
            (None, Some(1_000)),
            (Some(40_000), None),
        ]);
        let s = cost_spike(&run, &CostSpikeParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::CostSpike);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 5);
        // 76,000 / 50,000 = 1.52
        close(s.confidence, 0.5 + (1.52 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "total_tokens": 76_000,
                "threshold": 50_000,
                "inflation_ratio": 1.52,
                "llm_calls": 3,
            }),
        );
    }

    #[test]
    fn cost_spike_static_boundaries() {
        let p = CostSpikeParams::default();
        let s = cost_spike(&cost_run(&[(Some(49_000), Some(1_000))]), &p).unwrap();
        close(s.confidence, 0.5);
        assert_evidence(
            &s,
            json!({
                "total_tokens": 50_000,
                "threshold": 50_000,
                "inflation_ratio": 1.0,
                "llm_calls": 1,
            }),
        );
        assert!(cost_spike(&cost_run(&[(Some(49_000), Some(999))]), &p).is_none());
        // No tokens at all, or no calls: nothing.
        assert!(cost_spike(&cost_run(&[(None, None), (Some(0), Some(0))]), &p).is_none());
        assert!(cost_spike(&cost_run(&[]), &p).is_none());
    }

    #[test]
    fn cost_spike_with_baseline() {
        let mut run = cost_run(&[(Some(9_000), Some(1_000)), (Some(9_000), Some(1_000))]);
        // Below the static 50,000 but above 4,000.5 × 3 = 12,001.5.
        assert!(cost_spike(&run, &CostSpikeParams::default()).is_none());
        run.baselines.total_tokens = Some(4_000.5);
        let s = cost_spike(&run, &CostSpikeParams::default()).unwrap();
        // The ratio divides by the float threshold, not by int(threshold).
        close(s.confidence, 0.5 + (20_000.0 / 12_001.5 - 1.0) * 0.4);
        assert_evidence(
            &s,
            json!({
                "total_tokens": 20_000,
                "threshold": 12_001,
                "inflation_ratio": 1.67,
                "llm_calls": 2,
                "baseline_p75": 4_000,
            }),
        );
        // The comparison is against the float threshold 12,001.5: 12,001 tokens (which would
        // reach int(12,001.5)) do not fire, 12,002 do.
        let mut below = cost_run(&[(Some(12_000), Some(1))]);
        below.baselines.total_tokens = Some(4_000.5);
        assert!(cost_spike(&below, &CostSpikeParams::default()).is_none());
        let mut above = cost_run(&[(Some(12_000), Some(2))]);
        above.baselines.total_tokens = Some(4_000.5);
        let s = cost_spike(&above, &CostSpikeParams::default()).unwrap();
        close(s.confidence, 0.5 + (12_002.0 / 12_001.5 - 1.0) * 0.4);
        assert_eq!(s.evidence["threshold"], json!(12_001));
        assert_eq!(s.evidence["inflation_ratio"], json!(1.0));
        // Exactly at an integral threshold fires.
        let mut at = cost_run(&[(Some(12_000), None)]);
        at.baselines.total_tokens = Some(4_000.0);
        close(
            cost_spike(&at, &CostSpikeParams::default())
                .unwrap()
                .confidence,
            0.5,
        );
    }

    #[test]
    fn cost_spike_min_calls_and_cap() {
        let p = CostSpikeParams {
            min_llm_calls: 3,
            ..Default::default()
        };
        let run = cost_run(&[(Some(200_000), Some(0)), (Some(1), Some(0))]);
        assert!(cost_spike(&run, &p).is_none());
        let s = cost_spike(&run, &CostSpikeParams::default()).unwrap();
        close(s.confidence, 1.0);
        assert_eq!(s.evidence["inflation_ratio"], json!(4.0));
        // A tiny baseline: int(0.2 × 3) = 0, ratio divides by max(0, 1).
        let mut tiny = cost_run(&[(Some(2), Some(1))]);
        tiny.baselines.total_tokens = Some(0.2);
        let s = cost_spike(&tiny, &CostSpikeParams::default()).unwrap();
        assert_evidence(
            &s,
            json!({
                "total_tokens": 3,
                "threshold": 0,
                "inflation_ratio": 3.0,
                "llm_calls": 1,
                "baseline_p75": 0,
            }),
        );
    }
}
