//! Post-processing after all detectors ran: the hard override and the co-occurrence boost.

use super::{Severity, Signal};
use crate::pyround::round;
use crate::run::RunState;

/// Minimum calls of the most-called tool for the loop override.
const LOOP_MIN_CALLS: usize = 8;
/// Minimum share of those calls with its most common args_hash.
const LOOP_MIN_SHARE: f64 = 0.9;
/// Minimum trailing failed tool calls for the failure override.
const FAILURE_MIN_TRAILING: usize = 5;

/// Counts in first-seen order: `(item, count)`.
fn counts<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut out: Vec<(&str, usize)> = Vec::new();
    for s in items {
        match out.iter_mut().find(|(k, _)| *k == s) {
            Some(e) => e.1 += 1,
            None => out.push((s, 1)),
        }
    }
    out
}

/// The entry with the strictly greatest count, the first seen on ties.
fn most_common<'a>(c: &[(&'a str, usize)]) -> Option<(&'a str, usize)> {
    let mut best: Option<(&str, usize)> = None;
    for &(k, n) in c {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((k, n));
        }
    }
    best
}

/// True when the run's most-called tool has ≥ 8 calls and ≥ 90 % of them share that tool's
/// most common args_hash.
fn is_tight_loop(run: &RunState) -> bool {
    let by_tool = counts(run.tool_calls.iter().map(|c| c.tool_name.as_str()));
    let Some((tool, total)) = most_common(&by_tool) else {
        return false;
    };
    if total < LOOP_MIN_CALLS {
        return false;
    }
    let by_args = counts(
        run.tool_calls
            .iter()
            .filter(|c| c.tool_name == tool)
            .map(|c| c.args_hash.as_str()),
    );
    let top = most_common(&by_args).map_or(0, |(_, n)| n);
    top as f64 / total as f64 >= LOOP_MIN_SHARE
}

/// The RiskEngine hard override (the original's post-processing, step 2).
///
/// (a) A tight loop (see [`is_tight_loop`]) makes every signal CRITICAL at 0.98; otherwise
/// (b) ≥ 5 trailing tool calls with `success == Some(false)` make every signal HIGH at 0.95.
/// Nothing happens when there are no signals.
pub fn hard_override(run: &RunState, signals: &mut [Signal]) {
    if signals.is_empty() {
        return;
    }
    let (severity, confidence) = if is_tight_loop(run) {
        (Severity::Critical, 0.98)
    } else if super::tools::trailing_failures(&run.tool_calls).len() >= FAILURE_MIN_TRAILING {
        (Severity::High, 0.95)
    } else {
        return;
    };
    for s in signals {
        s.severity = severity;
        s.confidence = confidence;
    }
}

/// The co-occurrence boost and `co_signal_count` (the original's post-processing, step 3).
///
/// With n ≥ 2 signals each confidence becomes `round(min(1, conf × m), 4)`, m = 1.15 (n = 2),
/// 1.30 (n = 3), 1.40 (n ≥ 4), and `co_signal_count` = n; otherwise nothing changes and
/// `co_signal_count` is 0.
pub fn co_occurrence_boost(signals: &mut [Signal]) {
    let n = signals.len();
    let m = match n {
        0 | 1 => {
            for s in signals {
                s.co_signal_count = 0;
            }
            return;
        }
        2 => 1.15,
        3 => 1.30,
        _ => 1.40,
    };
    let count = i32::try_from(n).unwrap_or(i32::MAX);
    for s in signals {
        s.confidence = round(f64::min(1.0, s.confidence * m), 4);
        s.co_signal_count = count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FailureType;
    use crate::evidence;
    use crate::run::ToolCall;

    fn sig(t: FailureType, sev: Severity, conf: f64) -> Signal {
        Signal::new(t, sev, 3, conf, evidence! {"k" => 1})
    }

    fn tc(name: &str, args: &str, success: Option<bool>) -> ToolCall {
        ToolCall {
            tool_name: name.into(),
            args_hash: args.into(),
            success,
            ..ToolCall::default()
        }
    }

    fn run(tool_calls: Vec<ToolCall>) -> RunState {
        RunState {
            tool_calls,
            ..RunState::default()
        }
    }

    fn two() -> Vec<Signal> {
        vec![
            sig(FailureType::ToolLoop, Severity::High, 0.5),
            sig(FailureType::ContextBloat, Severity::Medium, 0.7),
        ]
    }

    fn loop_calls(same: usize, other: usize) -> Vec<ToolCall> {
        let mut v: Vec<ToolCall> = (0..same).map(|_| tc("search", "h1", Some(true))).collect();
        v.extend((0..other).map(|i| tc("search", &format!("x{i}"), Some(true))));
        v
    }

    #[test]
    fn override_loop_branch_at_threshold() {
        // 8 calls, all the same args: CRITICAL 0.98.
        let mut s = two();
        hard_override(&run(loop_calls(8, 0)), &mut s);
        for x in &s {
            assert_eq!(x.severity, Severity::Critical);
            assert_eq!(x.confidence, 0.98);
        }
        // 9 of 10 share a hash: exactly 90 % → fires.
        let mut s = two();
        hard_override(&run(loop_calls(9, 1)), &mut s);
        assert_eq!(s[1].severity, Severity::Critical);
        assert_eq!(s[1].confidence, 0.98);
    }

    #[test]
    fn override_loop_branch_below_threshold() {
        // 7 identical calls: too few.
        let mut s = two();
        hard_override(&run(loop_calls(7, 0)), &mut s);
        assert_eq!(s, two());
        // 8 of 9 share a hash (88.9 %): below 90 %.
        let mut s = two();
        hard_override(&run(loop_calls(8, 1)), &mut s);
        assert_eq!(s, two());
        // 17 of 19 (89.5 %): below.
        let mut s = two();
        hard_override(&run(loop_calls(17, 2)), &mut s);
        assert_eq!(s, two());
        // 18 of 20: exactly 90 %.
        let mut s = two();
        hard_override(&run(loop_calls(18, 2)), &mut s);
        assert_eq!(s[0].confidence, 0.98);
    }

    #[test]
    fn override_uses_most_called_tool_first_seen_on_ties() {
        // "a" (8 calls, all different args) and "b" (8 identical) tie; "a" is seen first and
        // is not a loop, so no override.
        let mut calls: Vec<ToolCall> = (0..8)
            .map(|i| tc("a", &format!("h{i}"), Some(true)))
            .collect();
        calls.extend((0..8).map(|_| tc("b", "same", Some(true))));
        let mut s = two();
        hard_override(&run(calls.clone()), &mut s);
        assert_eq!(s, two());
        // One more "b" makes it strictly the most called: override.
        calls.push(tc("b", "same", Some(true)));
        let mut s = two();
        hard_override(&run(calls), &mut s);
        assert_eq!(s[0].severity, Severity::Critical);
    }

    #[test]
    fn override_failure_branch() {
        let mut calls = vec![tc("a", "1", Some(true))];
        calls.extend((0..5).map(|i| tc(if i % 2 == 0 { "a" } else { "b" }, "x", Some(false))));
        let mut s = two();
        hard_override(&run(calls.clone()), &mut s);
        for x in &s {
            assert_eq!(x.severity, Severity::High);
            assert_eq!(x.confidence, 0.95);
        }
        // Four trailing failures: nothing.
        calls.remove(1);
        let mut s = two();
        hard_override(&run(calls.clone()), &mut s);
        assert_eq!(s, two());
        // A trailing None breaks the run of failures.
        let mut calls: Vec<ToolCall> = (0..6).map(|_| tc("a", "x", Some(false))).collect();
        calls.push(tc("a", "y", None));
        let mut s = two();
        hard_override(&run(calls), &mut s);
        assert_eq!(s, two());
    }

    #[test]
    fn override_loop_checked_before_failures() {
        // 8 identical failed calls: both rules hold; the loop rule wins.
        let calls: Vec<ToolCall> = (0..8).map(|_| tc("a", "x", Some(false))).collect();
        let mut s = two();
        hard_override(&run(calls), &mut s);
        assert_eq!(s[0].severity, Severity::Critical);
        assert_eq!(s[0].confidence, 0.98);
    }

    #[test]
    fn override_needs_signals() {
        let mut s: Vec<Signal> = vec![];
        hard_override(&run(loop_calls(10, 0)), &mut s);
        assert!(s.is_empty());
        // No tool calls: nothing.
        let mut s = two();
        hard_override(&run(vec![]), &mut s);
        assert_eq!(s, two());
    }

    #[test]
    fn boost_multipliers_and_rounding() {
        // n = 1: unchanged, co_signal_count 0.
        let mut s = vec![sig(FailureType::ToolLoop, Severity::High, 0.123456789)];
        co_occurrence_boost(&mut s);
        assert_eq!(s[0].confidence, 0.123456789);
        assert_eq!(s[0].co_signal_count, 0);
        // n = 2: × 1.15, rounded to 4 places.
        let mut s = two();
        co_occurrence_boost(&mut s);
        assert_eq!(s[0].confidence, 0.575);
        assert_eq!(s[1].confidence, 0.805);
        assert!(s.iter().all(|x| x.co_signal_count == 2));
        // n = 3: × 1.30; capped at 1.
        let mut s = vec![
            sig(FailureType::ToolLoop, Severity::High, 0.5),
            sig(FailureType::RetryStorm, Severity::High, 0.9),
            sig(FailureType::SlowStep, Severity::Medium, 0.61234),
        ];
        co_occurrence_boost(&mut s);
        assert_eq!(s[0].confidence, 0.65);
        assert_eq!(s[1].confidence, 1.0);
        assert_eq!(s[2].confidence, round(0.61234 * 1.3, 4));
        assert_eq!(s[2].confidence, 0.796);
        assert!(s.iter().all(|x| x.co_signal_count == 3));
        // n = 5: × 1.40.
        let mut s: Vec<Signal> = (0..5)
            .map(|_| sig(FailureType::ToolLoop, Severity::High, 0.5))
            .collect();
        co_occurrence_boost(&mut s);
        assert!(s
            .iter()
            .all(|x| x.confidence == 0.7 && x.co_signal_count == 5));
        // n = 4: × 1.40.
        let mut s: Vec<Signal> = (0..4)
            .map(|_| sig(FailureType::ToolLoop, Severity::High, 0.25))
            .collect();
        co_occurrence_boost(&mut s);
        assert!(s
            .iter()
            .all(|x| x.confidence == 0.35 && x.co_signal_count == 4));
        // Empty: fine.
        let mut s: Vec<Signal> = vec![];
        co_occurrence_boost(&mut s);
    }

    #[test]
    fn override_then_boost_gives_one() {
        let r = run(loop_calls(8, 0));
        let mut s = two();
        hard_override(&r, &mut s);
        co_occurrence_boost(&mut s);
        for x in &s {
            assert_eq!(x.severity, Severity::Critical);
            assert_eq!(x.confidence, 1.0);
            assert_eq!(x.co_signal_count, 2);
        }
        // A single overridden signal stays at 0.98.
        let mut s = vec![sig(FailureType::ToolLoop, Severity::High, 0.5)];
        hard_override(&r, &mut s);
        co_occurrence_boost(&mut s);
        assert_eq!(s[0].confidence, 0.98);
        assert_eq!(s[0].co_signal_count, 0);
        // The failure override (0.95) boosted: n = 2 → min(1, 1.0925) = 1.0.
        let calls: Vec<ToolCall> = (0..5)
            .map(|i| tc(&format!("t{i}"), "x", Some(false)))
            .collect();
        let mut s = two();
        hard_override(&run(calls), &mut s);
        co_occurrence_boost(&mut s);
        assert_eq!(s[0].severity, Severity::High);
        assert_eq!(s[0].confidence, 1.0);
    }
}
