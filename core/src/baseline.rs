//! Per-run baseline metrics and the P75 math over an agent's recent runs.
//!
//! Each processed run stores its [`RunMetrics`] (as jsonb); the next run of the same agent
//! and version gets its [`Baselines`] from the newest completed rows (the original's
//! seven baselines). A deliberate difference: the tool and LLM latency baselines are the P75 of step durations
//! (steps whose first event is `tool.called` / `llm.called`), not the original's
//! gap-to-the-next-call-of-the-same-type.

use crate::event::{EventType, Payload};
use crate::run::{Baselines, RunState};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The numbers one run contributes to its agent-version's baselines.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunMetrics {
    /// The run has a `run.completed` event (only such runs feed baselines).
    pub completed: bool,
    /// `current_step` (MAX(step_index)).
    pub steps: i32,
    /// Durations of the steps whose first event (ignoring `external.signal`) is `tool.called`.
    pub tool_step_ms: Vec<i64>,
    /// Same for `llm.called`.
    pub llm_step_ms: Vec<i64>,
    /// MAX/MIN of `prompt_tokens` over `llm.called` payloads with `prompt_tokens > 0`; only
    /// with at least 3 such calls, min ≥ 10 and max ≥ 2000.
    pub token_growth: Option<f64>,
    /// count(`llm.called`) / max(count(`tool.called`), 1); only with at least 5 `llm.called`.
    pub llm_tool_ratio: Option<f64>,
    /// Σ (prompt_tokens or 0) + (completion_tokens or 0) over `llm.called` and
    /// `llm.responded`; only when the prompt-token part is positive.
    pub total_tokens: Option<f64>,
    /// max(timestamp) − min(timestamp) over all events; only when positive.
    pub duration_s: Option<f64>,
}

/// Baselines need at least this many contributing runs; below it the static thresholds apply.
pub const MIN_BASELINE_RUNS: usize = 20;
/// Only this many of the newest completed runs are looked at.
pub const BASELINE_WINDOW: usize = 50;

const TOKEN_GROWTH_MIN_CALLS: usize = 3;
const TOKEN_GROWTH_MIN_TOKENS: f64 = 10.0;
const TOKEN_GROWTH_MIN_MAX_TOKENS: f64 = 2000.0;
const LLM_TOOL_RATIO_MIN_LLM_CALLS: usize = 5;

fn num(payload: &Payload, key: &str) -> Option<f64> {
    payload
        .get(key)
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite())
}

/// The metrics of one reconstructed run.
pub fn metrics(run: &RunState) -> RunMetrics {
    let mut m = RunMetrics {
        completed: run
            .events
            .iter()
            .any(|e| e.event_type == EventType::RunCompleted),
        steps: run.current_step,
        ..RunMetrics::default()
    };

    let first_types: HashMap<i32, EventType> = run.step_first_types().into_iter().collect();
    for &(step, ms) in &run.step_durations_ms {
        match first_types.get(&step) {
            Some(EventType::ToolCalled) => m.tool_step_ms.push(ms),
            Some(EventType::LlmCalled) => m.llm_step_ms.push(ms),
            _ => {}
        }
    }

    let mut llm_called = 0usize;
    let mut tool_called = 0usize;
    let mut call_tokens: Vec<f64> = Vec::new();
    let mut prompt_sum = 0.0;
    let mut token_sum = 0.0;
    for e in &run.events {
        match e.event_type {
            EventType::LlmCalled => {
                llm_called += 1;
                if let Some(t) = num(&e.payload, "prompt_tokens").filter(|t| *t > 0.0) {
                    call_tokens.push(t);
                }
            }
            EventType::ToolCalled => tool_called += 1,
            _ => {}
        }
        if e.event_type.is_llm() {
            let prompt = num(&e.payload, "prompt_tokens").unwrap_or(0.0);
            let completion = num(&e.payload, "completion_tokens").unwrap_or(0.0);
            prompt_sum += prompt;
            token_sum += prompt + completion;
        }
    }

    if call_tokens.len() >= TOKEN_GROWTH_MIN_CALLS {
        let min = call_tokens.iter().copied().fold(f64::INFINITY, f64::min);
        let max = call_tokens
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if min >= TOKEN_GROWTH_MIN_TOKENS && max >= TOKEN_GROWTH_MIN_MAX_TOKENS {
            m.token_growth = Some(max / min);
        }
    }
    if llm_called >= LLM_TOOL_RATIO_MIN_LLM_CALLS {
        m.llm_tool_ratio = Some(llm_called as f64 / tool_called.max(1) as f64);
    }
    if prompt_sum > 0.0 {
        m.total_tokens = Some(token_sum);
    }

    let mut times = run.events.iter().map(|e| e.timestamp);
    if let Some(first) = times.next() {
        let (lo, hi) = times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let d = hi - lo;
        if d > 0.0 && d.is_finite() {
            m.duration_s = Some(d);
        }
    }
    m
}

/// `PERCENTILE_CONT(0.75)` as Postgres computes it: sort, then interpolate linearly between
/// the values at ranks `floor(pos)` and `ceil(pos)`, `pos = 0.75 * (n - 1)`. `None` when empty.
/// Sorts `values` in place.
pub fn p75(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = 0.75 * (values.len() - 1) as f64;
    let lo = pos.floor();
    let hi = pos.ceil();
    let a = values[lo as usize];
    if lo == hi {
        return Some(a);
    }
    let b = values[hi as usize];
    Some(a + (b - a) * (pos - lo))
}

/// [`p75`] by selection instead of a full sort: the same two order statistics (under
/// `f64::total_cmp`), so the same result, in linear time. Reorders `values`.
fn p75_select(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let pos = 0.75 * (values.len() - 1) as f64;
    let lo = pos.floor();
    let hi = pos.ceil();
    let (_, a, above) = values.select_nth_unstable_by(lo as usize, f64::total_cmp);
    let a = *a;
    if lo == hi {
        return Some(a);
    }
    // The next order statistic is the smallest value above rank `lo`.
    let b = above
        .iter()
        .copied()
        .min_by(f64::total_cmp)
        .expect("hi < len, so something lies above lo");
    Some(a + (b - a) * (pos - lo))
}

fn gated(mut values: Vec<f64>, contributors: usize) -> Option<f64> {
    if contributors >= MIN_BASELINE_RUNS {
        p75_select(&mut values)
    } else {
        None
    }
}

fn scalar(runs: &[&RunMetrics], f: impl Fn(&RunMetrics) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|m| f(m)).collect();
    let n = values.len();
    gated(values, n)
}

fn pooled(runs: &[&RunMetrics], f: impl Fn(&RunMetrics) -> &[i64]) -> Option<f64> {
    let mut contributors = 0;
    let mut values = Vec::new();
    for m in runs {
        let v = f(m);
        if !v.is_empty() {
            contributors += 1;
            values.extend(v.iter().map(|&x| x as f64));
        }
    }
    gated(values, contributors)
}

/// The seven baselines from the agent-version's recent runs.
///
/// `recent`: metrics of the most recent runs, newest first, the current run excluded. Runs
/// not `completed` are skipped, and of the rest only the first [`BASELINE_WINDOW`] are used.
/// A baseline is `Some(p75)` only when at least [`MIN_BASELINE_RUNS`] of those runs
/// contribute to it: for the scalar metrics the runs whose value is `Some` (every run for
/// `steps`); for tool/LLM latency the runs with at least one duration, the percentile being
/// over all their durations pooled.
pub fn baselines(recent: &[RunMetrics]) -> Baselines {
    let runs: Vec<&RunMetrics> = recent
        .iter()
        .filter(|m| m.completed)
        .take(BASELINE_WINDOW)
        .collect();
    Baselines {
        steps: scalar(&runs, |m| Some(f64::from(m.steps))),
        latency_tool: pooled(&runs, |m| &m.tool_step_ms),
        latency_llm: pooled(&runs, |m| &m.llm_step_ms),
        token_growth: scalar(&runs, |m| m.token_growth),
        llm_tool_ratio: scalar(&runs, |m| m.llm_tool_ratio),
        total_tokens: scalar(&runs, |m| m.total_tokens),
        duration_s: scalar(&runs, |m| m.duration_s),
    }
}

fn opt_f64(v: Option<f64>) -> Value {
    v.and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn int_list(v: Option<&Value>) -> Vec<i64> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    x.as_i64()
                        .or_else(|| x.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl RunMetrics {
    /// The jsonb form: an object with the field names above, arrays of integers for the step
    /// durations and `null` for absent values.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("completed".into(), Value::Bool(self.completed));
        o.insert("steps".into(), Value::from(self.steps));
        o.insert(
            "tool_step_ms".into(),
            Value::from(self.tool_step_ms.clone()),
        );
        o.insert("llm_step_ms".into(), Value::from(self.llm_step_ms.clone()));
        o.insert("token_growth".into(), opt_f64(self.token_growth));
        o.insert("llm_tool_ratio".into(), opt_f64(self.llm_tool_ratio));
        o.insert("total_tokens".into(), opt_f64(self.total_tokens));
        o.insert("duration_s".into(), opt_f64(self.duration_s));
        Value::Object(o)
    }

    /// [`RunMetrics::to_json`] as JSON text, written directly (one per processed run).
    pub fn to_json_text(&self) -> String {
        use std::fmt::Write;
        fn num(out: &mut String, v: Option<f64>) {
            match v.filter(|f| f.is_finite()) {
                // Debug prints the shortest text that reads back as the same f64, and valid
                // JSON for every finite value ("1.0", "0.25", "1e21").
                Some(f) => {
                    let _ = write!(out, "{f:?}");
                }
                None => out.push_str("null"),
            }
        }
        fn ints(out: &mut String, v: &[i64]) {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{x}");
            }
            out.push(']');
        }
        let mut out =
            String::with_capacity(160 + 8 * (self.tool_step_ms.len() + self.llm_step_ms.len()));
        let _ = write!(
            out,
            "{{\"completed\":{},\"steps\":{},\"tool_step_ms\":",
            self.completed, self.steps
        );
        ints(&mut out, &self.tool_step_ms);
        out.push_str(",\"llm_step_ms\":");
        ints(&mut out, &self.llm_step_ms);
        out.push_str(",\"token_growth\":");
        num(&mut out, self.token_growth);
        out.push_str(",\"llm_tool_ratio\":");
        num(&mut out, self.llm_tool_ratio);
        out.push_str(",\"total_tokens\":");
        num(&mut out, self.total_tokens);
        out.push_str(",\"duration_s\":");
        num(&mut out, self.duration_s);
        out.push('}');
        out
    }

    /// Reads the jsonb form back. `None` if `v` is not an object; a missing or mistyped field
    /// takes its default (`false`, 0, empty, `None`).
    pub fn from_json(v: &Value) -> Option<RunMetrics> {
        let o = v.as_object()?;
        let f = |k: &str| o.get(k).and_then(Value::as_f64).filter(|f| f.is_finite());
        Some(RunMetrics {
            completed: o.get("completed").and_then(Value::as_bool).unwrap_or(false),
            steps: o
                .get("steps")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok())
                .unwrap_or(0),
            tool_step_ms: int_list(o.get("tool_step_ms")),
            llm_step_ms: int_list(o.get("llm_step_ms")),
            token_growth: f("token_growth"),
            llm_tool_ratio: f("llm_tool_ratio"),
            total_tokens: f("total_tokens"),
            duration_s: f("duration_s"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{test_event as ev, Event};
    use crate::run::build_run;
    use serde_json::json;

    #[test]
    fn selection_p75_matches_the_sorted_one() {
        let mut seed = 7u64;
        for n in 1..200usize {
            let mut v: Vec<f64> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) % 1000) as f64 / 7.0
                })
                .collect();
            let mut w = v.clone();
            assert_eq!(p75_select(&mut v), p75(&mut w), "n = {n}");
        }
        assert_eq!(p75_select(&mut []), None);
    }

    fn completed_run(steps: i32) -> RunMetrics {
        RunMetrics {
            completed: true,
            steps,
            ..RunMetrics::default()
        }
    }

    #[test]
    fn p75_matches_postgres_percentile_cont() {
        assert_eq!(p75(&mut []), None);
        assert_eq!(p75(&mut [10.0]), Some(10.0));
        assert_eq!(p75(&mut [1.0, 2.0, 3.0, 4.0]), Some(3.25));
        assert_eq!(p75(&mut [4.0, 1.0, 3.0, 2.0]), Some(3.25));
        assert_eq!(p75(&mut [1.0, 2.0, 3.0, 4.0, 5.0]), Some(4.0));
        assert_eq!(p75(&mut [0.0, 10.0]), Some(7.5));
        assert_eq!(p75(&mut [5.0, 5.0, 5.0]), Some(5.0));
        // 1..=20: pos = 14.25 → 15 + 0.25 * (16 - 15).
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p75(&mut v), Some(15.25));
    }

    #[test]
    fn baselines_switch_on_at_twenty_runs() {
        let nineteen: Vec<RunMetrics> = (0..19).map(completed_run).collect();
        assert_eq!(baselines(&nineteen).steps, None);
        let twenty: Vec<RunMetrics> = (0..20).map(completed_run).collect();
        // 0..=19: pos 14.25 → 14.25.
        assert_eq!(baselines(&twenty).steps, Some(14.25));
        assert_eq!(baselines(&[]), Baselines::default());
    }

    #[test]
    fn baselines_skip_incomplete_runs() {
        let mut runs: Vec<RunMetrics> = (0..20).map(completed_run).collect();
        runs[3].completed = false;
        assert_eq!(baselines(&runs).steps, None);
        runs.push(completed_run(100));
        assert!(baselines(&runs).steps.is_some());
    }

    #[test]
    fn only_the_newest_fifty_are_used() {
        // 50 newest runs all have 10 steps; 30 older ones have 1000.
        let mut runs: Vec<RunMetrics> = (0..50).map(|_| completed_run(10)).collect();
        runs.extend((0..30).map(|_| completed_run(1000)));
        assert_eq!(baselines(&runs).steps, Some(10.0));
        // Scalar metrics count only runs with a value, within the window.
        for r in runs.iter_mut().skip(35) {
            r.duration_s = Some(2.0);
        }
        // 15 runs in the window have a value (35..50): not enough, though 45 have one overall.
        assert_eq!(baselines(&runs).duration_s, None);
        for r in runs.iter_mut().take(5) {
            r.duration_s = Some(4.0);
        }
        // Now 20 within the window: 15 × 2.0, 5 × 4.0 → pos 14.25 → 2.0 + 0.25 × 2.0.
        assert_eq!(baselines(&runs).duration_s, Some(2.5));
    }

    #[test]
    fn latency_baselines_pool_values_and_count_runs() {
        let mut runs: Vec<RunMetrics> = (0..19)
            .map(|_| RunMetrics {
                completed: true,
                tool_step_ms: vec![100, 300],
                ..RunMetrics::default()
            })
            .collect();
        // A run without tool steps does not count.
        runs.push(completed_run(3));
        assert_eq!(baselines(&runs).latency_tool, None);
        runs.push(RunMetrics {
            completed: true,
            tool_step_ms: vec![1000],
            llm_step_ms: vec![5],
            ..RunMetrics::default()
        });
        let b = baselines(&runs);
        // 19 × 100, 19 × 300, 1 × 1000: n = 39, pos = 28.5 → 300.
        assert_eq!(b.latency_tool, Some(300.0));
        assert_eq!(b.latency_llm, None);
        assert_eq!(b.steps, Some(0.0));
    }

    fn llm_called(step: i32, ts: f64, tokens: Option<i64>) -> Event {
        let p = match tokens {
            Some(t) => json!({"model": "m", "prompt_tokens": t}),
            None => json!({"model": "m"}),
        };
        ev(EventType::LlmCalled, step, ts, p)
    }

    fn growth(tokens: &[i64]) -> Option<f64> {
        let events = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| llm_called(i as i32 + 1, i as f64, Some(t)))
            .collect();
        metrics(&build_run(events)).token_growth
    }

    #[test]
    fn token_growth_filters() {
        // min/max, not first/last.
        assert_eq!(growth(&[3000, 100, 2000]), Some(30.0));
        // Zero-token calls are ignored, so only two qualifying calls.
        assert_eq!(growth(&[100, 0, 2000]), None);
        assert_eq!(growth(&[100, 0, 500, 2000]), Some(20.0));
        // min < 10.
        assert_eq!(growth(&[9, 100, 2000]), None);
        assert_eq!(growth(&[10, 100, 2000]), Some(200.0));
        // max < 2000.
        assert_eq!(growth(&[10, 100, 1999]), None);
    }

    fn ratio(llm: usize, tools: usize) -> Option<f64> {
        let mut events = Vec::new();
        for i in 0..llm {
            events.push(llm_called(i as i32 + 1, 0.0, None));
        }
        for i in 0..tools {
            events.push(ev(
                EventType::ToolCalled,
                (llm + i) as i32 + 1,
                0.0,
                json!({}),
            ));
        }
        metrics(&build_run(events)).llm_tool_ratio
    }

    #[test]
    fn llm_tool_ratio_filters() {
        assert_eq!(ratio(4, 0), None);
        assert_eq!(ratio(5, 0), Some(5.0));
        assert_eq!(ratio(6, 4), Some(1.5));
    }

    #[test]
    fn total_tokens_and_duration_filters() {
        let run = build_run(vec![
            ev(EventType::RunStarted, 0, 10.0, json!({})),
            llm_called(1, 11.0, Some(100)),
            ev(
                EventType::LlmResponded,
                1,
                12.0,
                json!({"completion_tokens": 20, "prompt_tokens": 5}),
            ),
            llm_called(2, 13.0, None),
            ev(
                EventType::LlmResponded,
                2,
                14.0,
                json!({"completion_tokens": 7}),
            ),
            ev(EventType::ExternalSignal, 2, 20.5, json!({})),
            ev(EventType::RunCompleted, 2, 15.0, json!({})),
        ]);
        let m = metrics(&run);
        assert!(m.completed);
        assert_eq!(m.steps, 2);
        assert_eq!(m.total_tokens, Some(132.0));
        // The external signal's timestamp counts for the run's span.
        assert_eq!(m.duration_s, Some(10.5));
        assert_eq!(m.llm_step_ms, vec![1000, 1000]);
        assert!(m.tool_step_ms.is_empty());

        // Completion tokens alone do not make a total.
        let no_prompt = build_run(vec![
            llm_called(1, 5.0, Some(0)),
            ev(
                EventType::LlmResponded,
                1,
                5.0,
                json!({"completion_tokens": 50}),
            ),
        ]);
        let m = metrics(&no_prompt);
        assert_eq!(m.total_tokens, None);
        // Zero span: no duration. No run.completed: not completed.
        assert_eq!(m.duration_s, None);
        assert!(!m.completed);
        assert_eq!(metrics(&build_run(vec![])), RunMetrics::default());
    }

    #[test]
    fn step_latencies_use_first_event_type_of_each_step() {
        // V0 numbering: responses get their own steps and do not count as tool/LLM steps.
        let run = build_run(vec![
            ev(EventType::RunStarted, 0, 0.0, json!({})),
            ev(EventType::ExternalSignal, 1, 0.5, json!({})),
            ev(EventType::ToolCalled, 1, 1.0, json!({"tool_name": "t"})),
            ev(EventType::ToolResponded, 2, 4.0, json!({"tool_name": "t"})),
            llm_called(3, 4.25, Some(1)),
            ev(EventType::LlmResponded, 4, 6.0, json!({})),
            ev(EventType::RunCompleted, 4, 6.5, json!({})),
        ]);
        let m = metrics(&run);
        assert_eq!(m.tool_step_ms, vec![3000]);
        assert_eq!(m.llm_step_ms, vec![1750]);
    }

    #[test]
    fn json_round_trip() {
        let m = RunMetrics {
            completed: true,
            steps: 7,
            tool_step_ms: vec![1, 2000],
            llm_step_ms: vec![],
            token_growth: Some(3.5),
            llm_tool_ratio: None,
            total_tokens: Some(1234.0),
            duration_s: Some(0.1),
        };
        let v = m.to_json();
        assert_eq!(
            v,
            json!({
                "completed": true, "steps": 7, "tool_step_ms": [1, 2000], "llm_step_ms": [],
                "token_growth": 3.5, "llm_tool_ratio": null, "total_tokens": 1234.0,
                "duration_s": 0.1
            })
        );
        assert_eq!(RunMetrics::from_json(&v), Some(m.clone()));
        let text = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(RunMetrics::from_json(&back), RunMetrics::from_json(&v));
        // The directly written text is the same JSON and reads back the same, for odd floats too.
        let direct: Value = serde_json::from_str(&m.to_json_text()).unwrap();
        assert_eq!(direct, v);
        for f in [1e21, 1e-7, 0.1 + 0.2, 123456.789, f64::MAX, 5e-324] {
            let odd = RunMetrics {
                duration_s: Some(f),
                token_growth: Some(f64::NAN),
                ..m.clone()
            };
            let back: Value = serde_json::from_str(&odd.to_json_text()).unwrap();
            let read = RunMetrics::from_json(&back).unwrap();
            assert_eq!(read.duration_s, Some(f));
            assert_eq!(read.token_growth, None);
        }
        assert_eq!(RunMetrics::from_json(&json!(3)), None);
        assert_eq!(
            RunMetrics::from_json(&json!({"completed": true, "total_tokens": 5})),
            Some(RunMetrics {
                completed: true,
                total_tokens: Some(5.0),
                ..RunMetrics::default()
            })
        );
    }
}
