//! Run reconstruction: from a run's stored events to the `RunState` every detector reads.
//!
//! Semantics follow the original's run model with two deliberate differences
//! (first-write-wins step durations; external signals collected and kept out of durations).

use crate::event::{Event, EventType, Payload};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// One LLM call: an `llm.responded`, paired with the most recent pending `llm.called` (LIFO).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LlmCall {
    /// The paired call's `model` (the response's when unpaired); `"unknown"` when that payload
    /// has no `model` key, `None` when it is an explicit `null` (the original's
    /// `payload.get("model", "unknown")`).
    pub model: Option<String>,
    /// The call's `prompt_tokens` if non-zero, else the response's, else `None`.
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub finish_reason: Option<String>,
    pub latency_ms: Option<i64>,
    pub output_length: Option<i64>,
    /// Step and timestamp of the paired call (of the response when unpaired).
    pub step_index: i32,
    pub timestamp: f64,
}

/// One tool call (`tool.called`), with its outcome back-filled from `tool.responded`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall {
    /// Defaults to `"unknown"`.
    pub tool_name: String,
    /// Defaults to `""`.
    pub args_hash: String,
    pub step_index: i32,
    pub timestamp: f64,
    /// `None` until a `tool.responded` with `success` is seen.
    pub success: Option<bool>,
    pub error_hash: Option<String>,
}

/// One retrieval (`retrieval.responded`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retrieval {
    /// Defaults to `"unknown"`.
    pub index_name: String,
    /// Defaults to 0.
    pub result_count: i64,
    /// The payload's number as sent: an integer stays a JSON integer in evidence, as it did in
    /// the original (which copied the payload value).
    pub top_score: Option<serde_json::Number>,
    pub step_index: i32,
}

/// One `external.signal` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExternalSignal {
    pub signal_name: String,
    pub source: Option<String>,
    pub meta: Option<Value>,
    pub step_index: i32,
    pub timestamp: f64,
}

/// The seven per-agent P75 baselines (the original's seven baselines). `None` = use the static
/// threshold (fewer than 20 qualifying prior runs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Baselines {
    pub steps: Option<f64>,
    pub latency_tool: Option<f64>,
    pub latency_llm: Option<f64>,
    pub token_growth: Option<f64>,
    pub llm_tool_ratio: Option<f64>,
    pub total_tokens: Option<f64>,
    pub duration_s: Option<f64>,
}

/// A reconstructed run: what the detectors look at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunState {
    pub run_id: String,
    pub agent_id: String,
    pub agent_version: String,
    /// `run.started.payload.tools` (default empty); the last `run.started` wins.
    pub available_tools: Vec<String>,
    /// `run.started.payload.input_hash`; the last `run.started` wins.
    pub input_hash: Option<String>,
    /// `run.completed` → payload `exit_reason` (default `"completed"`, `None` for an explicit
    /// `null`); `run.errored` → `"error"`; the last terminal event in load order wins, as in
    /// the original's builder. No terminal event → `None` (stalled runs).
    pub exit_reason: Option<String>,
    pub llm_calls: Vec<LlmCall>,
    pub tool_calls: Vec<ToolCall>,
    pub retrievals: Vec<Retrieval>,
    /// Every event in load order (sorted by step, then timestamp; stable).
    pub events: Vec<Event>,
    pub external_signals: Vec<ExternalSignal>,
    /// Max `step_index` over all events (0 for an empty run).
    pub current_step: i32,
    /// Step → duration in ms, in first-insertion order, first write wins.
    pub step_durations_ms: Vec<(i32, i64)>,
    /// The first `run.started` (in load order) whose `injection_signal` is a non-empty object.
    pub injection_signal: Option<Map<String, Value>>,
    pub baselines: Baselines,
}

impl RunState {
    /// Duration recorded for `step`, if any.
    pub fn step_duration(&self, step: i32) -> Option<i64> {
        self.step_durations_ms
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, d)| *d)
    }

    /// Each step mapped to the type of its first event in load order, ignoring
    /// `external.signal` (a deliberate difference from the original), in first-appearance order.
    pub fn step_first_types(&self) -> Vec<(i32, EventType)> {
        let mut seen = HashSet::new();
        let mut out: Vec<(i32, EventType)> = Vec::new();
        for e in &self.events {
            if e.event_type != EventType::ExternalSignal && seen.insert(e.step_index) {
                out.push((e.step_index, e.event_type));
            }
        }
        out
    }
}

/// A payload number as an integer: integers as they are, other finite numbers truncated
/// (saturating). `null`, strings and the like give `None`.
fn int_value(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if let Some(u) = v.as_u64() {
        return Some(i64::try_from(u).unwrap_or(i64::MAX));
    }
    v.as_f64()
        .filter(|f| f.is_finite())
        .map(|f| f.trunc() as i64)
}

fn str_value(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// `payload.get("model", "unknown")`: a missing key gives `"unknown"`, `null` gives `None`.
fn model_of(p: &Payload) -> Option<String> {
    match p.get("model") {
        None => Some("unknown".to_owned()),
        Some(v) => str_value(Some(v)),
    }
}

/// The gap between two timestamps in whole milliseconds, truncated toward zero.
fn gap_ms(from: f64, to: f64) -> i64 {
    ((to - from) * 1000.0).trunc() as i64
}

/// Builds the run state from a run's events (any order; they are sorted here).
///
/// Events are sorted stably by `(step_index, timestamp)`, so ties keep the input (ingest)
/// order. The rules are in README, "What it detects".
pub fn build_run(mut events: Vec<Event>) -> RunState {
    events.sort_by(|a, b| {
        a.step_index
            .cmp(&b.step_index)
            .then(a.timestamp.total_cmp(&b.timestamp))
    });

    let mut run = RunState::default();
    if let Some(first) = events.first() {
        run.run_id = first.run_id.clone();
        run.agent_id = first.agent_id.clone();
        run.agent_version = first.agent_version.clone();
    }

    // Indices into `events` of the `llm.called` events still waiting for a response.
    let mut pending_llm: Vec<usize> = Vec::new();

    for (idx, e) in events.iter().enumerate() {
        let p = &e.payload;
        match e.event_type {
            EventType::RunStarted => {
                // The original's builder overwrites these on every run.started (last wins);
                // its worker takes the injection evidence from the first run.started that
                // carries a non-empty one.
                run.available_tools = p
                    .get("tools")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                run.input_hash = str_value(p.get("input_hash"));
                if run.injection_signal.is_none() {
                    run.injection_signal = p
                        .get("injection_signal")
                        .and_then(Value::as_object)
                        .filter(|m| !m.is_empty())
                        .cloned();
                }
            }
            EventType::RunCompleted => {
                run.exit_reason = match p.get("exit_reason") {
                    None => Some("completed".to_owned()),
                    Some(v) => str_value(Some(v)),
                };
            }
            EventType::RunErrored => run.exit_reason = Some("error".to_owned()),
            EventType::LlmCalled => pending_llm.push(idx),
            EventType::LlmResponded => {
                let call = pending_llm.pop().map(|i| &events[i]);
                let call_tokens = call
                    .and_then(|c| int_value(c.payload.get("prompt_tokens")))
                    .filter(|t| *t != 0);
                run.llm_calls.push(LlmCall {
                    model: model_of(call.map_or(p, |c| &c.payload)),
                    prompt_tokens: call_tokens.or_else(|| int_value(p.get("prompt_tokens"))),
                    completion_tokens: int_value(p.get("completion_tokens")),
                    finish_reason: str_value(p.get("finish_reason")),
                    latency_ms: int_value(p.get("latency_ms")),
                    output_length: int_value(p.get("output_length")),
                    step_index: call.map_or(e.step_index, |c| c.step_index),
                    timestamp: call.map_or(e.timestamp, |c| c.timestamp),
                });
            }
            EventType::ToolCalled => run.tool_calls.push(ToolCall {
                tool_name: str_value(p.get("tool_name")).unwrap_or_else(|| "unknown".to_owned()),
                args_hash: str_value(p.get("args_hash")).unwrap_or_default(),
                step_index: e.step_index,
                timestamp: e.timestamp,
                success: None,
                error_hash: None,
            }),
            EventType::ToolResponded => {
                let Some(success) = p.get("success").and_then(Value::as_bool) else {
                    continue;
                };
                // The original defaults a response's name to "" (not "unknown"), so a
                // response without `tool_name` back-fills only a call named "".
                let name = p.get("tool_name").and_then(Value::as_str).unwrap_or("");
                if let Some(tc) = run
                    .tool_calls
                    .iter_mut()
                    .rev()
                    .find(|tc| tc.tool_name == name && tc.success.is_none())
                {
                    tc.success = Some(success);
                    tc.error_hash = str_value(p.get("error_hash"));
                }
            }
            EventType::RetrievalResponded => run.retrievals.push(Retrieval {
                index_name: str_value(p.get("index_name")).unwrap_or_else(|| "unknown".to_owned()),
                result_count: int_value(p.get("result_count")).unwrap_or(0),
                top_score: p.get("top_score").and_then(|v| match v {
                    Value::Number(n) => Some(n.clone()),
                    _ => None,
                }),
                step_index: e.step_index,
            }),
            EventType::ExternalSignal => run.external_signals.push(ExternalSignal {
                signal_name: str_value(p.get("signal_name")).unwrap_or_default(),
                source: str_value(p.get("source")),
                meta: p.get("meta").filter(|v| !v.is_null()).cloned(),
                step_index: e.step_index,
                timestamp: e.timestamp,
            }),
            EventType::RetrievalCalled | EventType::PolicyTriggered => {}
        }
    }

    run.current_step = events.iter().map(|e| e.step_index).max().unwrap_or(0);

    // Step durations: external signals never end a step (deliberate difference); first write wins
    // per step (deliberate difference); negative gaps are skipped.
    let timed: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type != EventType::ExternalSignal)
        .collect();
    let mut seen_steps = HashSet::new();
    for pair in timed.windows(2) {
        let gap = gap_ms(pair[0].timestamp, pair[1].timestamp);
        if gap >= 0 && seen_steps.insert(pair[0].step_index) {
            run.step_durations_ms.push((pair[0].step_index, gap));
        }
    }

    run.events = events;
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: EventType, step: i32, ts: f64, payload: Value) -> Event {
        Event {
            event_type: t,
            run_id: "run-1".into(),
            agent_id: "agent".into(),
            agent_version: "abcd1234".into(),
            step_index: step,
            timestamp: ts,
            payload: payload.as_object().cloned().unwrap_or_default().into(),
            parent_run_id: None,
        }
    }

    use EventType::{
        LlmCalled, LlmResponded, PolicyTriggered, RetrievalCalled, RetrievalResponded,
        RunCompleted, RunErrored, RunStarted, ToolCalled, ToolResponded,
    };

    fn started(tools: Value) -> Event {
        ev(
            RunStarted,
            0,
            100.0,
            json!({"input_hash": "0123456789abcdef", "model": "m", "tools": tools}),
        )
    }

    #[test]
    fn empty_run() {
        let run = build_run(vec![]);
        assert_eq!(run, RunState::default());
        assert_eq!(run.current_step, 0);
    }

    /// The same behaviour (one LLM call, one tool call) numbered the V4 way (responses share
    /// the call's step) and the V0 way (every event advances) gives the same calls and the
    /// same LLM/tool step durations.
    #[test]
    fn v4_and_v0_step_conventions() {
        let v4 = vec![
            started(json!(["search"])),
            ev(
                LlmCalled,
                1,
                101.0,
                json!({"model": "gpt", "prompt_tokens": 50}),
            ),
            ev(
                LlmResponded,
                1,
                102.5,
                json!({"completion_tokens": 7, "finish_reason": "stop", "latency_ms": 1500, "output_length": 30}),
            ),
            ev(
                ToolCalled,
                2,
                103.0,
                json!({"tool_name": "search", "args_hash": "aaaaaaaaaaaaaaaa"}),
            ),
            ev(
                ToolResponded,
                2,
                107.0,
                json!({"tool_name": "search", "success": true}),
            ),
            ev(
                RunCompleted,
                2,
                108.0,
                json!({"exit_reason": "final_answer"}),
            ),
        ];
        let v0 = vec![
            started(json!(["search"])),
            ev(
                LlmCalled,
                1,
                101.0,
                json!({"model": "gpt", "prompt_tokens": 50}),
            ),
            ev(
                LlmResponded,
                2,
                102.5,
                json!({"completion_tokens": 7, "finish_reason": "stop", "latency_ms": 1500, "output_length": 30}),
            ),
            ev(
                ToolCalled,
                3,
                103.0,
                json!({"tool_name": "search", "args_hash": "aaaaaaaaaaaaaaaa"}),
            ),
            ev(
                ToolResponded,
                4,
                107.0,
                json!({"tool_name": "search", "success": true}),
            ),
            ev(
                RunCompleted,
                4,
                108.0,
                json!({"exit_reason": "final_answer"}),
            ),
        ];
        let a = build_run(v4);
        let b = build_run(v0);
        for run in [&a, &b] {
            assert_eq!(run.run_id, "run-1");
            assert_eq!(run.agent_id, "agent");
            assert_eq!(run.agent_version, "abcd1234");
            assert_eq!(run.available_tools, vec!["search".to_string()]);
            assert_eq!(run.input_hash.as_deref(), Some("0123456789abcdef"));
            assert_eq!(run.exit_reason.as_deref(), Some("final_answer"));
            assert_eq!(run.events.len(), 6);
            assert_eq!(run.llm_calls.len(), 1);
            let c = &run.llm_calls[0];
            assert_eq!(c.model.as_deref(), Some("gpt"));
            assert_eq!(c.prompt_tokens, Some(50));
            assert_eq!(c.completion_tokens, Some(7));
            assert_eq!(c.finish_reason.as_deref(), Some("stop"));
            assert_eq!(c.latency_ms, Some(1500));
            assert_eq!(c.output_length, Some(30));
            assert_eq!((c.step_index, c.timestamp), (1, 101.0));
            assert_eq!(run.tool_calls.len(), 1);
            assert_eq!(run.tool_calls[0].success, Some(true));
            assert!(run.injection_signal.is_none());
        }
        assert_eq!(a.current_step, 2);
        assert_eq!(b.current_step, 4);
        assert_eq!(a.step_durations_ms, vec![(0, 1000), (1, 1500), (2, 4000)]);
        assert_eq!(
            b.step_durations_ms,
            vec![(0, 1000), (1, 1500), (2, 500), (3, 4000), (4, 1000)]
        );
        assert_eq!(a.tool_calls[0].step_index, 2);
        assert_eq!(b.tool_calls[0].step_index, 3);
        assert_eq!(
            a.step_first_types(),
            vec![(0, RunStarted), (1, LlmCalled), (2, ToolCalled)]
        );
        assert_eq!(
            b.step_first_types(),
            vec![
                (0, RunStarted),
                (1, LlmCalled),
                (2, LlmResponded),
                (3, ToolCalled),
                (4, ToolResponded)
            ]
        );
    }

    #[test]
    fn llm_pairing_is_lifo() {
        let run = build_run(vec![
            ev(
                LlmCalled,
                1,
                1.0,
                json!({"model": "outer", "prompt_tokens": 100}),
            ),
            ev(
                LlmCalled,
                2,
                2.0,
                json!({"model": "inner", "prompt_tokens": 200}),
            ),
            ev(LlmResponded, 3, 3.0, json!({"completion_tokens": 2})),
            ev(LlmResponded, 4, 4.0, json!({"completion_tokens": 1})),
            // Unpaired response: model, step and timestamp from the response itself.
            ev(
                LlmResponded,
                5,
                5.0,
                json!({"model": "lone", "prompt_tokens": 9}),
            ),
            // Unpaired call: no LlmCall.
            ev(LlmCalled, 6, 6.0, json!({"model": "dangling"})),
        ]);
        let got: Vec<_> = run
            .llm_calls
            .iter()
            .map(|c| {
                (
                    c.model.clone().unwrap(),
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.step_index,
                    c.timestamp,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("inner".to_string(), Some(200), Some(2), 2, 2.0),
                ("outer".to_string(), Some(100), Some(1), 1, 1.0),
                ("lone".to_string(), Some(9), None, 5, 5.0),
            ]
        );
    }

    #[test]
    fn paired_call_model_comes_from_the_call() {
        // Paired: the call's model, "unknown" when the call has none (the response's is
        // ignored), None for an explicit null. Unpaired: the response's, same defaults.
        let run = build_run(vec![
            ev(LlmCalled, 1, 1.0, json!({"prompt_tokens": 5})),
            ev(LlmResponded, 1, 2.0, json!({"model": "resp-model"})),
            ev(LlmCalled, 2, 3.0, json!({"model": null})),
            ev(LlmResponded, 2, 4.0, json!({"model": "resp-model"})),
            ev(LlmResponded, 3, 5.0, json!({})),
            ev(LlmResponded, 4, 6.0, json!({"model": null})),
            ev(LlmResponded, 5, 7.0, json!({"model": "own"})),
        ]);
        let models: Vec<Option<&str>> = run.llm_calls.iter().map(|c| c.model.as_deref()).collect();
        assert_eq!(
            models,
            vec![Some("unknown"), None, Some("unknown"), None, Some("own")]
        );
    }

    fn tokens(call: Value, resp: Value) -> Option<i64> {
        build_run(vec![
            ev(LlmCalled, 1, 1.0, call),
            ev(LlmResponded, 1, 2.0, resp),
        ])
        .llm_calls[0]
            .prompt_tokens
    }

    #[test]
    fn prompt_tokens_fallback() {
        assert_eq!(
            tokens(json!({"prompt_tokens": 0}), json!({"prompt_tokens": 120})),
            Some(120)
        );
        assert_eq!(tokens(json!({"prompt_tokens": 0}), json!({})), None);
        assert_eq!(
            tokens(json!({"prompt_tokens": 500}), json!({"prompt_tokens": 120})),
            Some(500)
        );
        assert_eq!(tokens(json!({"prompt_tokens": 500}), json!({})), Some(500));
        assert_eq!(tokens(json!({}), json!({"prompt_tokens": 7})), Some(7));
        assert_eq!(
            tokens(
                json!({"prompt_tokens": null}),
                json!({"prompt_tokens": null})
            ),
            None
        );
        assert_eq!(tokens(json!({}), json!({})), None);
        // The response's own value is taken as it is, zero included.
        assert_eq!(
            tokens(json!({"prompt_tokens": 0}), json!({"prompt_tokens": 0})),
            Some(0)
        );
    }

    #[test]
    fn tool_backfill_picks_most_recent_unresolved_same_name() {
        let run = build_run(vec![
            ev(
                ToolCalled,
                1,
                1.0,
                json!({"tool_name": "a", "args_hash": "1111111111111111"}),
            ),
            ev(
                ToolCalled,
                2,
                2.0,
                json!({"tool_name": "a", "args_hash": "2222222222222222"}),
            ),
            ev(ToolCalled, 3, 3.0, json!({"tool_name": "b"})),
            ev(
                ToolResponded,
                4,
                4.0,
                json!({"tool_name": "a", "success": false, "error_hash": "eeeeeeeeeeeeeeee"}),
            ),
            ev(
                ToolResponded,
                5,
                5.0,
                json!({"tool_name": "a", "success": true}),
            ),
            // A third response for "a" finds no unresolved call.
            ev(
                ToolResponded,
                6,
                6.0,
                json!({"tool_name": "a", "success": false}),
            ),
            // No `success`: ignored.
            ev(ToolResponded, 7, 7.0, json!({"tool_name": "b"})),
            // Unknown name matches nothing.
            ev(
                ToolResponded,
                8,
                8.0,
                json!({"tool_name": "zzz", "success": true}),
            ),
            // Defaults: the call is named "unknown", a response without a name is "" and
            // back-fills nothing here.
            ev(ToolCalled, 9, 9.0, json!({})),
            ev(ToolResponded, 9, 9.5, json!({"success": false})),
            // A response named "unknown" does match it.
            ev(
                ToolResponded,
                9,
                9.6,
                json!({"tool_name": "unknown", "success": true}),
            ),
        ]);
        let tc = &run.tool_calls;
        assert_eq!(tc.len(), 4);
        assert_eq!(tc[0].args_hash, "1111111111111111");
        assert_eq!(tc[0].success, Some(true));
        assert_eq!(tc[0].error_hash, None);
        assert_eq!(tc[1].success, Some(false));
        assert_eq!(tc[1].error_hash.as_deref(), Some("eeeeeeeeeeeeeeee"));
        assert_eq!(tc[2].tool_name, "b");
        assert_eq!(tc[2].args_hash, "");
        assert_eq!(tc[2].success, None);
        assert_eq!(tc[3].tool_name, "unknown");
        assert_eq!(tc[3].success, Some(true));
        assert_eq!((tc[3].step_index, tc[3].timestamp), (9, 9.0));
    }

    #[test]
    fn durations_first_write_wins_and_negative_gaps_skipped() {
        let run = build_run(vec![
            ev(RunStarted, 0, 10.0, json!({})),
            ev(LlmCalled, 1, 11.0, json!({})),
            ev(LlmResponded, 1, 13.0, json!({})),
            // Step 2 has a clock going backwards between its two events.
            ev(ToolCalled, 2, 20.0, json!({})),
            ev(ToolResponded, 3, 19.0, json!({})),
            ev(RunCompleted, 3, 19.0004, json!({})),
        ]);
        // Step 1: 2000 ms (call → response), not the 7000 ms after the response.
        // Step 2: 20.0 → 19.0 is negative: no entry. Step 3: 0.4 ms truncates to 0.
        assert_eq!(run.step_durations_ms, vec![(0, 1000), (1, 2000), (3, 0)]);
        assert_eq!(run.step_duration(1), Some(2000));
        assert_eq!(run.step_duration(2), None);
    }

    #[test]
    fn gap_truncates_toward_zero() {
        let run = build_run(vec![
            ev(ToolCalled, 1, 0.1, json!({})),
            ev(ToolCalled, 2, 15.1, json!({})),
            ev(ToolCalled, 3, 15.1 + 0.0009, json!({})),
        ]);
        assert_eq!(run.step_durations_ms, vec![(1, gap_ms(0.1, 15.1)), (2, 0)]);
        assert_eq!(gap_ms(1.0, 2.9999), 1999);
        assert_eq!(gap_ms(2.0, 1.9995), 0);
    }

    #[test]
    fn external_signal_collected_but_not_in_durations() {
        let run = build_run(vec![
            ev(RunStarted, 0, 0.0, json!({})),
            ev(ToolCalled, 1, 1.0, json!({"tool_name": "slow"})),
            ev(
                EventType::ExternalSignal,
                1,
                5.0,
                json!({"signal_name": "cpu_high", "source": "prom", "meta": {"v": 1}}),
            ),
            ev(EventType::ExternalSignal, 1, 6.0, json!({})),
            ev(
                ToolResponded,
                1,
                41.0,
                json!({"tool_name": "slow", "success": true}),
            ),
            ev(RunCompleted, 1, 41.5, json!({})),
        ]);
        assert_eq!(run.step_durations_ms, vec![(0, 1000), (1, 40000)]);
        assert_eq!(run.events.len(), 6);
        assert_eq!(run.exit_reason.as_deref(), Some("completed"));
        assert_eq!(
            run.external_signals,
            vec![
                ExternalSignal {
                    signal_name: "cpu_high".into(),
                    source: Some("prom".into()),
                    meta: Some(json!({"v": 1})),
                    step_index: 1,
                    timestamp: 5.0,
                },
                ExternalSignal {
                    signal_name: String::new(),
                    source: None,
                    meta: None,
                    step_index: 1,
                    timestamp: 6.0,
                },
            ]
        );
    }

    #[test]
    fn external_signal_first_at_step_is_ignored_for_step_type() {
        let run = build_run(vec![
            ev(
                EventType::ExternalSignal,
                1,
                0.5,
                json!({"signal_name": "x"}),
            ),
            ev(ToolCalled, 1, 1.0, json!({})),
            ev(
                EventType::ExternalSignal,
                2,
                1.5,
                json!({"signal_name": "only"}),
            ),
        ]);
        assert_eq!(run.step_first_types(), vec![(1, ToolCalled)]);
        assert_eq!(run.current_step, 2);
        assert!(run.step_durations_ms.is_empty());
    }

    #[test]
    fn unsorted_input_is_sorted_stably() {
        let run = build_run(vec![
            ev(RunCompleted, 2, 9.0, json!({})),
            ev(ToolCalled, 2, 5.0, json!({"tool_name": "t"})),
            ev(LlmResponded, 1, 3.0, json!({})),
            ev(RunStarted, 0, 1.0, json!({"tools": ["t", 3, "u"]})),
            ev(LlmCalled, 1, 2.0, json!({"model": "m"})),
            // Same (step, timestamp) as the tool call: stays after it (ingest order).
            ev(PolicyTriggered, 2, 5.0, json!({"policy_name": "p"})),
        ]);
        let order: Vec<_> = run.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            order,
            vec![
                RunStarted,
                LlmCalled,
                LlmResponded,
                ToolCalled,
                PolicyTriggered,
                RunCompleted
            ]
        );
        assert_eq!(run.available_tools, vec!["t".to_string(), "u".to_string()]);
        assert_eq!(run.llm_calls.len(), 1);
        assert_eq!(run.llm_calls[0].model.as_deref(), Some("m"));
        assert_eq!(run.step_durations_ms, vec![(0, 1000), (1, 1000), (2, 0)]);
    }

    #[test]
    fn exit_reason_from_last_terminal_and_errored() {
        // The original's builder overwrites exit_reason on every terminal event, so the last
        // one in load order wins.
        let errored_then_completed = build_run(vec![
            ev(RunStarted, 0, 0.0, json!({})),
            ev(RunErrored, 1, 2.0, json!({"error_type": "E"})),
            ev(RunCompleted, 1, 3.0, json!({"exit_reason": "final_answer"})),
        ]);
        assert_eq!(
            errored_then_completed.exit_reason.as_deref(),
            Some("final_answer")
        );
        let completed_then_errored = build_run(vec![
            ev(RunCompleted, 1, 1.0, json!({"exit_reason": "final_answer"})),
            ev(RunErrored, 1, 2.0, json!({})),
        ]);
        assert_eq!(completed_then_errored.exit_reason.as_deref(), Some("error"));
        let errored = build_run(vec![ev(RunErrored, 1, 2.0, json!({}))]);
        assert_eq!(errored.exit_reason.as_deref(), Some("error"));
        let stalled = build_run(vec![started(json!([]))]);
        assert_eq!(stalled.exit_reason, None);
        // Missing exit_reason defaults to "completed"; an explicit null stays None
        // (`payload.get("exit_reason", "completed")`).
        let default = build_run(vec![ev(RunCompleted, 1, 1.0, json!({}))]);
        assert_eq!(default.exit_reason.as_deref(), Some("completed"));
        let null = build_run(vec![ev(RunCompleted, 1, 1.0, json!({"exit_reason": null}))]);
        assert_eq!(null.exit_reason, None);
    }

    #[test]
    fn last_run_started_sets_tools_first_injection_wins() {
        let run = build_run(vec![
            ev(
                RunStarted,
                0,
                0.0,
                json!({"tools": ["a"], "input_hash": "1111111111111111"}),
            ),
            ev(
                RunStarted,
                0,
                0.5,
                json!({"tools": ["b"], "input_hash": "2222222222222222",
                       "injection_signal": {"matched_pattern_count": 1}}),
            ),
            ev(
                RunStarted,
                0,
                0.7,
                json!({"tools": ["c"], "injection_signal": {"matched_pattern_count": 3}}),
            ),
        ]);
        assert_eq!(run.available_tools, vec!["c".to_string()]);
        assert_eq!(run.input_hash, None);
        assert_eq!(
            run.injection_signal
                .as_ref()
                .and_then(|m| m.get("matched_pattern_count")),
            Some(&json!(1))
        );
    }

    #[test]
    fn injection_signal_only_when_non_empty_object() {
        let sig = |v: Value| {
            build_run(vec![ev(RunStarted, 0, 0.0, json!({"injection_signal": v}))]).injection_signal
        };
        assert_eq!(sig(Value::Null), None);
        assert_eq!(sig(json!({})), None);
        assert_eq!(sig(json!("x")), None);
        let got = sig(json!({"matched_pattern_count": 2})).unwrap();
        assert_eq!(got.get("matched_pattern_count"), Some(&json!(2)));
        assert!(build_run(vec![ev(RunStarted, 0, 0.0, json!({}))])
            .injection_signal
            .is_none());
    }

    #[test]
    fn retrievals() {
        let run = build_run(vec![
            ev(RetrievalCalled, 1, 1.0, json!({"index_name": "docs"})),
            ev(
                RetrievalResponded,
                1,
                2.0,
                json!({"index_name": "docs", "result_count": 4, "top_score": 0.75}),
            ),
            ev(RetrievalResponded, 2, 3.0, json!({"top_score": null})),
            ev(RetrievalResponded, 3, 4.0, json!({"top_score": 1})),
        ]);
        assert_eq!(
            run.retrievals,
            vec![
                Retrieval {
                    index_name: "docs".into(),
                    result_count: 4,
                    top_score: serde_json::Number::from_f64(0.75),
                    step_index: 1
                },
                Retrieval {
                    index_name: "unknown".into(),
                    result_count: 0,
                    top_score: None,
                    step_index: 2
                },
                Retrieval {
                    index_name: "unknown".into(),
                    result_count: 0,
                    top_score: Some(1.into()),
                    step_index: 3
                },
            ]
        );
        // An integer score stays an integer (the original copied the payload value).
        assert!(run.retrievals[2].top_score.as_ref().unwrap().is_i64());
    }
}
