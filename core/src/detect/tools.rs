//! Detectors that read the tool-call sequence: TOOL_LOOP, TOOL_THRASHING, TOOL_AVOIDANCE,
//! RETRY_STORM, CASCADING_TOOL_FAILURE.
//!
//! Rules follow the original's V4 detectors with one deliberate difference (TOOL_THRASHING's
//! `tool_a` is the tool that appears first in the window).

use super::config::*;
use super::{scale, FailureType, Severity, Signal};
use crate::evidence;
use crate::run::{RunState, ToolCall};
use serde_json::Value;

/// A count parameter as a `usize`; negative values (never valid) count as 0.
fn as_len(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

/// Number of distinct values, keeping no order.
fn distinct_count<'a>(items: impl Iterator<Item = &'a str>) -> usize {
    let mut seen: Vec<&str> = Vec::new();
    for s in items {
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.len()
}

/// TOOL_LOOP: among the last `window` tool calls, the first tool (in first-appearance order
/// within the window) called at least `threshold` times. Everything reported about that tool
/// (count, first/last step, step list, hashes, success rate) covers the whole run.
pub fn tool_loop(run: &RunState, p: &ToolLoopParams) -> Option<Signal> {
    let calls = &run.tool_calls;
    let window = as_len(p.window);
    if window == 0 || calls.len() < window {
        return None;
    }
    let win = &calls[calls.len() - window..];

    // Counts by name, in first-appearance order within the window.
    let mut counts: Vec<(&str, i64)> = Vec::new();
    for c in win {
        match counts.iter_mut().find(|(n, _)| *n == c.tool_name) {
            Some(e) => e.1 += 1,
            None => counts.push((c.tool_name.as_str(), 1)),
        }
    }
    let tool = counts.iter().find(|(_, n)| *n >= p.threshold)?.0;

    let of_tool: Vec<&ToolCall> = calls.iter().filter(|c| c.tool_name == tool).collect();
    let count = of_tool.len() as i64;
    let first_step = of_tool.first().map_or(0, |c| c.step_index);
    let last_step = of_tool.last().map_or(0, |c| c.step_index);
    let step_indices: Vec<i32> = of_tool.iter().map(|c| c.step_index).collect();
    let args_hashes: Vec<&str> = of_tool.iter().map(|c| c.args_hash.as_str()).collect();
    let distinct_args = distinct_count(args_hashes.iter().copied());

    let known = of_tool.iter().filter(|c| c.success.is_some()).count();
    let succeeded = of_tool.iter().filter(|c| c.success == Some(true)).count();
    let success_rate = if known == 0 {
        Value::Null
    } else {
        Value::from(succeeded as f64 / known as f64)
    };

    let wasted: i64 = run
        .llm_calls
        .iter()
        .filter(|l| l.step_index > first_step && l.step_index <= last_step)
        .map(|l| l.prompt_tokens.unwrap_or(0))
        .fold(0i64, i64::saturating_add);
    let wasted_tokens = if wasted == 0 {
        Value::Null
    } else {
        Value::from(wasted)
    };

    let step_index = win.last().map_or(run.current_step, |c| c.step_index);
    let confidence = scale(count as f64 / p.threshold as f64);
    Some(Signal::new(
        FailureType::ToolLoop,
        Severity::High,
        step_index,
        confidence,
        evidence! {
            "tool" => tool,
            "count" => count,
            "window" => p.window,
            "first_step" => first_step,
            "last_step" => last_step,
            "step_indices" => step_indices,
            "args_hashes" => args_hashes,
            "args_identical" => distinct_args == 1,
            "args_similar" => distinct_args <= 2,
            "success_rate" => success_rate,
            "wasted_tokens" => wasted_tokens,
        },
    ))
}

/// TOOL_THRASHING: the last `window` tool names hold exactly two distinct tools and no two
/// adjacent names are equal.
pub fn tool_thrashing(run: &RunState, p: &ToolThrashingParams) -> Option<Signal> {
    let calls = &run.tool_calls;
    let window = as_len(p.window);
    if window == 0 || calls.len() < window {
        return None;
    }
    let names: Vec<&str> = calls[calls.len() - window..]
        .iter()
        .map(|c| c.tool_name.as_str())
        .collect();
    let mut distinct: Vec<&str> = Vec::new();
    for n in &names {
        if !distinct.contains(n) {
            distinct.push(n);
        }
    }
    if distinct.len() != 2 || names.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    Some(Signal::new(
        FailureType::ToolThrashing,
        Severity::High,
        run.current_step,
        0.90,
        evidence! {
            "tool_a" => distinct[0],
            "tool_b" => distinct[1],
            "pattern" => names,
            "count" => p.window,
        },
    ))
}

/// TOOL_AVOIDANCE: a final answer with tools available, none called, and at least
/// `min_llm_calls` LLM calls.
pub fn tool_avoidance(run: &RunState, p: &ToolAvoidanceParams) -> Option<Signal> {
    if run.exit_reason.as_deref() != Some("final_answer")
        || run.available_tools.is_empty()
        || !run.tool_calls.is_empty()
        || (run.llm_calls.len() as i64) < p.min_llm_calls
    {
        return None;
    }
    Some(Signal::new(
        FailureType::ToolAvoidance,
        Severity::Medium,
        run.current_step,
        0.75,
        evidence! {
            "available_tools" => run.available_tools,
            "tool_calls_made" => 0,
            "llm_calls" => run.llm_calls.len(),
        },
    ))
}

/// RETRY_STORM: the longest run of consecutive failed calls (`success == Some(false)`) of one
/// tool, scanning newest → oldest, of at least `threshold` calls (the first found wins ties).
///
/// Upstream quirk kept: when a streak stops at index `j` (the call that broke it), scanning
/// resumes at `j − 1`, so call `j` never starts a streak. V3+ self-correction: nothing is
/// reported when that tool later succeeds at a step after the streak's last failure.
pub fn retry_storm(run: &RunState, p: &RetryStormParams) -> Option<Signal> {
    let calls = &run.tool_calls;
    // Best streak as the chronological index range [start, end].
    let mut best: Option<(usize, usize)> = None;
    let mut i = calls.len() as isize - 1;
    while i >= 0 {
        let end = i as usize;
        if calls[end].success != Some(false) {
            i -= 1;
            continue;
        }
        let tool = &calls[end].tool_name;
        let mut j = i - 1;
        while j >= 0 {
            let c = &calls[j as usize];
            if c.tool_name != *tool || c.success != Some(false) {
                break;
            }
            j -= 1;
        }
        let start = (j + 1) as usize;
        let len = end - start + 1;
        if len as i64 >= p.threshold && best.is_none_or(|(s, e)| len > e - s + 1) {
            best = Some((start, end));
        }
        i = j - 1;
    }
    let (start, end) = best?;
    let streak = &calls[start..=end];
    let tool = streak[0].tool_name.as_str();
    let last_fail_step = streak[streak.len() - 1].step_index;
    if calls
        .iter()
        .any(|c| c.tool_name == tool && c.success == Some(true) && c.step_index > last_fail_step)
    {
        return None;
    }

    let step_indices: Vec<i32> = streak.iter().map(|c| c.step_index).collect();
    let args_identical = distinct_count(streak.iter().map(|c| c.args_hash.as_str())) == 1;
    let error_hashes: Vec<Option<&str>> = streak.iter().map(|c| c.error_hash.as_deref()).collect();
    let shared = match error_hashes[0] {
        Some(h) if error_hashes.iter().all(|e| *e == Some(h)) => Some(h),
        _ => None,
    };
    let n = streak.len() as i64;
    Some(Signal::new(
        FailureType::RetryStorm,
        Severity::High,
        run.current_step,
        scale(n as f64 / p.threshold as f64),
        evidence! {
            "tool" => tool,
            "consecutive_fails" => n,
            "threshold" => p.threshold,
            "first_fail_step" => streak[0].step_index,
            "step_indices" => step_indices,
            "args_identical" => args_identical,
            "error_hashes" => error_hashes,
            "failure_reason_hash" => shared,
            "reason_identical" => shared.is_some(),
        },
    ))
}

/// CASCADING_TOOL_FAILURE: the trailing failed tool calls (`success == Some(false)`; `None`
/// or `Some(true)` ends the run) number at least `threshold` and span at least two tools.
pub fn cascading_tool_failure(run: &RunState, p: &CascadingToolFailureParams) -> Option<Signal> {
    let trailing = trailing_failures(&run.tool_calls);
    let n = trailing.len();
    if n == 0 || (n as i64) < p.threshold {
        return None;
    }
    let mut tools: Vec<&str> = Vec::new();
    for c in trailing {
        if !tools.contains(&c.tool_name.as_str()) {
            tools.push(c.tool_name.as_str());
        }
    }
    if tools.len() < 2 {
        return None;
    }
    tools.sort_unstable();
    Some(Signal::new(
        FailureType::CascadingToolFailure,
        Severity::High,
        run.current_step,
        scale(n as f64 / p.threshold as f64),
        evidence! {
            "consecutive_failures" => n,
            "distinct_tools" => tools,
            "threshold" => p.threshold,
            "first_fail_step" => trailing[0].step_index,
        },
    ))
}

/// The trailing tool calls with `success == Some(false)`, in chronological order.
pub(crate) fn trailing_failures(calls: &[ToolCall]) -> &[ToolCall] {
    let n = calls
        .iter()
        .rev()
        .take_while(|c| c.success == Some(false))
        .count();
    &calls[calls.len() - n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::LlmCall;
    use serde_json::{json, Map};

    fn tc(name: &str, args: &str, step: i32, success: Option<bool>) -> ToolCall {
        ToolCall {
            tool_name: name.into(),
            args_hash: args.into(),
            step_index: step,
            timestamp: step as f64,
            success,
            error_hash: None,
        }
    }

    fn fail(name: &str, step: i32, err: Option<&str>) -> ToolCall {
        ToolCall {
            error_hash: err.map(String::from),
            ..tc(name, "aa", step, Some(false))
        }
    }

    fn llm(step: i32, prompt: Option<i64>) -> LlmCall {
        LlmCall {
            prompt_tokens: prompt,
            step_index: step,
            ..LlmCall::default()
        }
    }

    fn run(tool_calls: Vec<ToolCall>, current_step: i32) -> RunState {
        RunState {
            run_id: "r".into(),
            agent_id: "a".into(),
            tool_calls,
            current_step,
            ..RunState::default()
        }
    }

    fn keys(m: &Map<String, Value>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // ---------------------------------------------------------------- TOOL_LOOP

    #[test]
    fn tool_loop_fires_v4_steps_with_full_evidence() {
        // V4: only *.called advance; llm calls and tool calls alternate.
        // steps: llm 1, search 2, llm 3, search 4, calc 5, llm 6, search 7, calc 8
        let mut r = run(
            vec![
                tc("search", "h1", 2, Some(true)),
                tc("search", "h1", 4, Some(false)),
                tc("calc", "c1", 5, Some(true)),
                tc("search", "h2", 7, None),
                tc("calc", "c1", 8, Some(true)),
            ],
            9,
        );
        r.llm_calls = vec![
            llm(1, Some(100)),
            llm(3, Some(200)),
            llm(6, None),
            llm(9, Some(50)),
        ];
        let s = tool_loop(&r, &ToolLoopParams::default()).expect("fires");
        assert_eq!(s.failure_type, FailureType::ToolLoop);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 8, "step of the last call in the window");
        assert!(close(s.confidence, 0.5));
        assert_eq!(s.co_signal_count, 0);
        assert_eq!(
            Value::Object(s.evidence.clone()),
            json!({
                "tool": "search",
                "count": 3,
                "window": 5,
                "first_step": 2,
                "last_step": 7,
                "step_indices": [2, 4, 7],
                "args_hashes": ["h1", "h1", "h2"],
                "args_identical": false,
                "args_similar": true,
                "success_rate": 0.5,
                "wasted_tokens": 200,
            })
        );
        assert_eq!(
            keys(&s.evidence),
            [
                "tool",
                "count",
                "window",
                "first_step",
                "last_step",
                "step_indices",
                "args_hashes",
                "args_identical",
                "args_similar",
                "success_rate",
                "wasted_tokens"
            ]
        );
        // Value types: success_rate a float, counts ints.
        assert!(s.evidence["success_rate"].is_f64());
        assert!(s.evidence["count"].is_i64());
    }

    #[test]
    fn tool_loop_v0_steps_whole_run_count_and_wasted_tokens() {
        // V0: every event advances: llm.called 1, llm.responded 2, tool.called 3, tool.responded 4 …
        let mut calls = Vec::new();
        let mut llms = Vec::new();
        let mut step = 0;
        for i in 0..6 {
            llms.push(llm(step + 1, Some(1000 + i)));
            calls.push(tc("search", "same", step + 3, Some(true)));
            step += 4;
        }
        let mut r = run(calls, step);
        r.llm_calls = llms;
        let s = tool_loop(&r, &ToolLoopParams::default()).expect("fires");
        // scale(6/3) = 0.9
        assert!(close(s.confidence, 0.9));
        assert_eq!(s.step_index, 23);
        // LLM calls at steps 5, 9, 13, 17, 21 are in (3, 23].
        let wasted: i64 = (1..6).map(|i| 1000 + i).sum();
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "tool": "search",
                "count": 6,
                "window": 5,
                "first_step": 3,
                "last_step": 23,
                "step_indices": [3, 7, 11, 15, 19, 23],
                "args_hashes": ["same", "same", "same", "same", "same", "same"],
                "args_identical": true,
                "args_similar": true,
                "success_rate": 1.0,
                "wasted_tokens": wasted,
            })
        );
    }

    #[test]
    fn tool_loop_huge_token_counts_do_not_overflow() {
        let mut r = run(
            (1..=5)
                .map(|i| tc("search", "h", i * 2, Some(true)))
                .collect(),
            10,
        );
        r.llm_calls = vec![llm(3, Some(i64::MAX)), llm(5, Some(i64::MAX))];
        let s = tool_loop(&r, &ToolLoopParams::default()).expect("fires");
        assert_eq!(s.evidence["wasted_tokens"], json!(i64::MAX));
    }

    #[test]
    fn tool_loop_threshold_boundary() {
        let p = ToolLoopParams::default();
        // Exactly 3 of one tool in the window of 5: fires.
        let r = run(
            vec![
                tc("a", "x", 1, None),
                tc("b", "y", 2, None),
                tc("a", "x", 3, None),
                tc("c", "z", 4, None),
                tc("a", "x", 5, None),
            ],
            5,
        );
        let s = tool_loop(&r, &p).expect("3 >= 3");
        assert_eq!(s.evidence["success_rate"], Value::Null);
        assert_eq!(s.evidence["wasted_tokens"], Value::Null);
        assert_eq!(s.evidence["args_identical"], json!(true));
        // Only 2 of any tool in the window (the run has a third, older `a`): nothing.
        let r = run(
            vec![
                tc("a", "x", 1, None),
                tc("a", "x", 2, None),
                tc("b", "y", 3, None),
                tc("c", "z", 4, None),
                tc("a", "x", 5, None),
                tc("b", "y", 6, None),
            ],
            6,
        );
        assert!(tool_loop(&r, &p).is_none());
    }

    #[test]
    fn tool_loop_needs_a_full_window() {
        let p = ToolLoopParams::default();
        let four: Vec<ToolCall> = (1..=4).map(|i| tc("a", "x", i, None)).collect();
        assert!(tool_loop(&run(four.clone(), 4), &p).is_none());
        let mut five = four;
        five.push(tc("a", "x", 5, None));
        let s = tool_loop(&run(five, 5), &p).expect("five calls");
        assert!(close(s.confidence, scale(5.0 / 3.0)));
    }

    #[test]
    fn tool_loop_first_appearance_order_wins() {
        // Both b and a reach 3 in the window [b, a, b, a, b, a]; b appears first.
        let calls: Vec<ToolCall> = ["a", "b", "a", "b", "a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| tc(n, "x", i as i32 + 1, None))
            .collect();
        let p = ToolLoopParams {
            threshold: 3,
            window: 6,
        };
        let s = tool_loop(&run(calls, 6), &p).expect("fires");
        assert_eq!(s.evidence["tool"], json!("a"));
        let p = ToolLoopParams {
            threshold: 2,
            window: 5,
        };
        let calls: Vec<ToolCall> = ["a", "b", "a", "b", "a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| tc(n, "x", i as i32 + 1, None))
            .collect();
        let s = tool_loop(&run(calls, 6), &p).expect("fires");
        assert_eq!(
            s.evidence["tool"],
            json!("b"),
            "window starts at the first b"
        );
        assert_eq!(s.evidence["count"], json!(3));
        // success_rate: 1 of 3 known; more than two distinct hashes.
        let calls = vec![
            tc("a", "1", 1, Some(true)),
            tc("a", "2", 2, Some(false)),
            tc("a", "3", 3, Some(false)),
        ];
        let p = ToolLoopParams {
            threshold: 3,
            window: 3,
        };
        let s = tool_loop(&run(calls, 3), &p).expect("fires");
        assert_eq!(s.evidence["success_rate"], json!(1.0 / 3.0));
        assert_eq!(s.evidence["args_similar"], json!(false));
        assert_eq!(s.evidence["args_identical"], json!(false));
    }

    // ---------------------------------------------------------------- TOOL_THRASHING

    #[test]
    fn tool_thrashing_fires_tool_a_first_in_window() {
        let names = ["x", "search", "calc", "search", "calc", "search", "calc"];
        let calls: Vec<ToolCall> = names
            .iter()
            .enumerate()
            .map(|(i, n)| tc(n, "h", i as i32 + 1, Some(true)))
            .collect();
        let s = tool_thrashing(&run(calls, 9), &ToolThrashingParams::default()).expect("fires");
        assert_eq!(s.failure_type, FailureType::ToolThrashing);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 9);
        assert_eq!(s.confidence, 0.90);
        assert_eq!(
            Value::Object(s.evidence.clone()),
            json!({
                "tool_a": "search",
                "tool_b": "calc",
                "pattern": ["search", "calc", "search", "calc", "search", "calc"],
                "count": 6,
            })
        );
        assert_eq!(keys(&s.evidence), ["tool_a", "tool_b", "pattern", "count"]);
    }

    #[test]
    fn tool_thrashing_boundaries() {
        let p = ToolThrashingParams::default();
        let mk = |names: &[&str]| -> RunState {
            run(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| tc(n, "h", i as i32 + 1, None))
                    .collect(),
                names.len() as i32,
            )
        };
        // Exactly WINDOW calls: fires.
        assert!(tool_thrashing(&mk(&["a", "b", "a", "b", "a", "b"]), &p).is_some());
        // One short of the window: nothing.
        assert!(tool_thrashing(&mk(&["a", "b", "a", "b", "a"]), &p).is_none());
        // Two adjacent equal names: nothing.
        assert!(tool_thrashing(&mk(&["a", "b", "a", "a", "b", "a"]), &p).is_none());
        // Three distinct tools: nothing.
        assert!(tool_thrashing(&mk(&["a", "b", "a", "b", "c", "b"]), &p).is_none());
        // One tool only: nothing.
        assert!(tool_thrashing(&mk(&["a", "a", "a", "a", "a", "a"]), &p).is_none());
    }

    // ---------------------------------------------------------------- TOOL_AVOIDANCE

    fn avoidance_run(llm_calls: usize) -> RunState {
        RunState {
            exit_reason: Some("final_answer".into()),
            available_tools: vec!["web_search".into(), "calculator".into()],
            llm_calls: (0..llm_calls)
                .map(|i| llm(i as i32 + 1, Some(10)))
                .collect(),
            current_step: llm_calls as i32,
            ..RunState::default()
        }
    }

    #[test]
    fn tool_avoidance_fires_at_threshold() {
        let s = tool_avoidance(&avoidance_run(2), &ToolAvoidanceParams::default()).expect("fires");
        assert_eq!(s.failure_type, FailureType::ToolAvoidance);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.confidence, 0.75);
        assert_eq!(s.step_index, 2);
        assert_eq!(
            Value::Object(s.evidence.clone()),
            json!({
                "available_tools": ["web_search", "calculator"],
                "tool_calls_made": 0,
                "llm_calls": 2,
            })
        );
        assert_eq!(
            keys(&s.evidence),
            ["available_tools", "tool_calls_made", "llm_calls"]
        );
    }

    #[test]
    fn tool_avoidance_conditions() {
        let p = ToolAvoidanceParams::default();
        assert!(
            tool_avoidance(&avoidance_run(1), &p).is_none(),
            "below min_llm_calls"
        );
        let mut r = avoidance_run(3);
        r.exit_reason = Some("completed".into());
        assert!(tool_avoidance(&r, &p).is_none());
        r.exit_reason = None;
        assert!(tool_avoidance(&r, &p).is_none());
        let mut r = avoidance_run(3);
        r.available_tools.clear();
        assert!(tool_avoidance(&r, &p).is_none());
        let mut r = avoidance_run(3);
        r.tool_calls.push(tc("web_search", "h", 4, Some(true)));
        assert!(tool_avoidance(&r, &p).is_none());
        let p0 = ToolAvoidanceParams { min_llm_calls: 0 };
        assert!(tool_avoidance(&avoidance_run(0), &p0).is_some());
    }

    // ---------------------------------------------------------------- RETRY_STORM

    #[test]
    fn retry_storm_fires_v0_steps_full_evidence() {
        // V0: tool.called at odd steps, responses at the even ones.
        let r = run(
            vec![
                tc("search", "h", 1, Some(true)),
                fail("api", 3, Some("e1")),
                fail("api", 5, Some("e1")),
                fail("api", 7, Some("e1")),
                fail("api", 9, Some("e1")),
            ],
            11,
        );
        let s = retry_storm(&r, &RetryStormParams::default()).expect("fires");
        assert_eq!(s.failure_type, FailureType::RetryStorm);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 11);
        assert!(close(s.confidence, scale(4.0 / 3.0)));
        assert_eq!(
            Value::Object(s.evidence.clone()),
            json!({
                "tool": "api",
                "consecutive_fails": 4,
                "threshold": 3,
                "first_fail_step": 3,
                "step_indices": [3, 5, 7, 9],
                "args_identical": true,
                "error_hashes": ["e1", "e1", "e1", "e1"],
                "failure_reason_hash": "e1",
                "reason_identical": true,
            })
        );
        assert_eq!(
            keys(&s.evidence),
            [
                "tool",
                "consecutive_fails",
                "threshold",
                "first_fail_step",
                "step_indices",
                "args_identical",
                "error_hashes",
                "failure_reason_hash",
                "reason_identical"
            ]
        );
    }

    #[test]
    fn retry_storm_threshold_boundary_v4_steps() {
        let p = RetryStormParams::default();
        let mut r = run(
            vec![
                ToolCall {
                    args_hash: "b1".into(),
                    ..fail("api", 1, None)
                },
                fail("api", 2, Some("e1")),
                fail("api", 3, Some("e2")),
            ],
            3,
        );
        let s = retry_storm(&r, &p).expect("3 >= 3");
        assert!(close(s.confidence, 0.5));
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "tool": "api",
                "consecutive_fails": 3,
                "threshold": 3,
                "first_fail_step": 1,
                "step_indices": [1, 2, 3],
                "args_identical": false,
                "error_hashes": [null, "e1", "e2"],
                "failure_reason_hash": null,
                "reason_identical": false,
            })
        );
        r.tool_calls.remove(0);
        assert!(retry_storm(&r, &p).is_none(), "2 < 3");
    }

    #[test]
    fn retry_storm_all_null_errors_are_not_identical() {
        let r = run((1..=3).map(|i| fail("api", i, None)).collect(), 3);
        let s = retry_storm(&r, &RetryStormParams::default()).expect("fires");
        assert_eq!(s.evidence["failure_reason_hash"], Value::Null);
        assert_eq!(s.evidence["reason_identical"], json!(false));
        assert_eq!(s.evidence["error_hashes"], json!([null, null, null]));
    }

    #[test]
    fn retry_storm_none_and_other_tools_break_streaks() {
        let p = RetryStormParams::default();
        // A None (no response) in the middle breaks the streak.
        let r = run(
            vec![
                fail("api", 1, None),
                fail("api", 2, None),
                tc("api", "aa", 3, None),
                fail("api", 4, None),
                fail("api", 5, None),
            ],
            5,
        );
        assert!(retry_storm(&r, &p).is_none());
        // Interleaved tools: each tool's failures are not consecutive.
        let r = run(
            vec![
                fail("a", 1, None),
                fail("b", 2, None),
                fail("a", 3, None),
                fail("b", 4, None),
            ],
            4,
        );
        assert!(retry_storm(&r, &p).is_none());
    }

    #[test]
    fn retry_storm_resume_quirk_skips_the_breaking_call() {
        let p = RetryStormParams::default();
        // [a✗ a✗ a✗ b✗ b✗]: the b streak stops at index 2 (an a failure), scanning resumes at
        // index 1, so the a streak is seen as length 2 only: nothing.
        let r = run(
            vec![
                fail("a", 1, None),
                fail("a", 2, None),
                fail("a", 3, None),
                fail("b", 4, None),
                fail("b", 5, None),
            ],
            5,
        );
        assert!(retry_storm(&r, &p).is_none());
        // With one more a failure the a streak is seen as 3 (indices 0..=2), first_fail_step 1.
        let r = run(
            vec![
                fail("a", 1, None),
                fail("a", 2, None),
                fail("a", 3, None),
                fail("a", 4, None),
                fail("b", 5, None),
            ],
            5,
        );
        let s = retry_storm(&r, &p).expect("fires");
        assert_eq!(s.evidence["tool"], json!("a"));
        assert_eq!(s.evidence["consecutive_fails"], json!(3));
        assert_eq!(s.evidence["step_indices"], json!([1, 2, 3]));
        // A success breaking the streak is also skipped, harmlessly.
        let r = run(
            vec![
                fail("a", 1, None),
                fail("a", 2, None),
                fail("a", 3, None),
                tc("c", "h", 4, Some(true)),
                fail("b", 5, None),
            ],
            5,
        );
        assert_eq!(
            retry_storm(&r, &p).unwrap().evidence["consecutive_fails"],
            json!(3)
        );
    }

    #[test]
    fn retry_storm_longest_wins_first_found_on_ties() {
        let p = RetryStormParams::default();
        // Older streak of 4 beats newer streak of 3.
        let mut calls: Vec<ToolCall> = (1..=4).map(|i| fail("a", i, None)).collect();
        calls.push(tc("ok", "h", 5, Some(true)));
        calls.extend((6..=8).map(|i| fail("b", i, None)));
        let s = retry_storm(&run(calls, 8), &p).expect("fires");
        assert_eq!(s.evidence["tool"], json!("a"));
        // Equal lengths: the newest (first found) wins.
        let mut calls: Vec<ToolCall> = (1..=3).map(|i| fail("a", i, None)).collect();
        calls.push(tc("ok", "h", 4, Some(true)));
        calls.extend((5..=7).map(|i| fail("b", i, None)));
        let s = retry_storm(&run(calls, 7), &p).expect("fires");
        assert_eq!(s.evidence["tool"], json!("b"));
        assert_eq!(s.evidence["first_fail_step"], json!(5));
    }

    #[test]
    fn retry_storm_self_correction() {
        let p = RetryStormParams::default();
        // The tool later succeeds: nothing.
        let mut calls: Vec<ToolCall> = (1..=3).map(|i| fail("api", i, None)).collect();
        calls.push(tc("other", "h", 4, Some(true)));
        calls.push(tc("api", "h", 5, Some(true)));
        assert!(retry_storm(&run(calls.clone(), 5), &p).is_none());
        // A later call that failed or never answered does not count as a correction.
        calls[4].success = None;
        assert!(retry_storm(&run(calls.clone(), 5), &p).is_some());
        // A success of another tool does not count either.
        calls[4].tool_name = "third".into();
        calls[4].success = Some(true);
        assert!(retry_storm(&run(calls, 5), &p).is_some());
        // Self-correction drops the signal, even if an older streak also qualified.
        let mut calls: Vec<ToolCall> = (1..=3).map(|i| fail("a", i, None)).collect();
        calls.push(tc("x", "h", 4, Some(true)));
        calls.extend((5..=8).map(|i| fail("b", i, None)));
        calls.push(tc("b", "h", 9, Some(true)));
        assert!(retry_storm(&run(calls, 9), &p).is_none());
    }

    // ---------------------------------------------------------------- CASCADING_TOOL_FAILURE

    #[test]
    fn cascading_fires_v4_steps() {
        let r = run(
            vec![
                tc("search", "h", 1, Some(true)),
                fail("web", 2, None),
                fail("db", 3, None),
                fail("api", 4, None),
                fail("db", 5, None),
            ],
            6,
        );
        let s = cascading_tool_failure(&r, &CascadingToolFailureParams::default()).expect("fires");
        assert_eq!(s.failure_type, FailureType::CascadingToolFailure);
        assert_eq!(s.severity, Severity::High);
        assert_eq!(s.step_index, 6);
        assert!(close(s.confidence, scale(4.0 / 3.0)));
        assert_eq!(
            Value::Object(s.evidence.clone()),
            json!({
                "consecutive_failures": 4,
                "distinct_tools": ["api", "db", "web"],
                "threshold": 3,
                "first_fail_step": 2,
            })
        );
        assert_eq!(
            keys(&s.evidence),
            [
                "consecutive_failures",
                "distinct_tools",
                "threshold",
                "first_fail_step"
            ]
        );
    }

    #[test]
    fn cascading_boundaries_v0_steps() {
        let p = CascadingToolFailureParams::default();
        // V0 steps: calls at 1, 3, 5, 7.
        let r = run(
            vec![
                tc("a", "h", 1, Some(true)),
                fail("a", 3, None),
                fail("b", 5, None),
                fail("a", 7, None),
            ],
            8,
        );
        let s = cascading_tool_failure(&r, &p).expect("3 >= 3");
        assert!(close(s.confidence, 0.5));
        assert_eq!(s.evidence["first_fail_step"], json!(3));
        assert_eq!(s.evidence["distinct_tools"], json!(["a", "b"]));
        // Two trailing failures: nothing.
        let r = run(
            vec![
                tc("a", "h", 1, Some(true)),
                fail("a", 3, None),
                fail("b", 5, None),
            ],
            6,
        );
        assert!(cascading_tool_failure(&r, &p).is_none());
        // A trailing None breaks the run.
        let r = run(
            vec![
                fail("a", 1, None),
                fail("b", 3, None),
                fail("a", 5, None),
                tc("b", "h", 7, None),
            ],
            8,
        );
        assert!(cascading_tool_failure(&r, &p).is_none());
        // One tool only: nothing (RETRY_STORM's territory).
        let r = run((1..=5).map(|i| fail("a", i, None)).collect(), 5);
        assert!(cascading_tool_failure(&r, &p).is_none());
        // No tool calls at all.
        assert!(cascading_tool_failure(&run(vec![], 0), &p).is_none());
    }
}
