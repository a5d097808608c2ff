//! Detector tunables: V4 defaults, per-agent overrides merged over `'default'`, and the
//! live/shadow switch.
//!
//! Settings are stored as one JSON object per (agent, detector), e.g.
//! `{"threshold": 4, "live": false}`. Every detector also takes `live` (false = shadow mode:
//! stored, never alerted, not counted into issues) and `enabled` (false = not run at all).

use super::FailureType;
use serde_json::{Map, Value};

/// A tunable's kind and its allowed range.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An integer ≥ the given minimum.
    Int(i64),
    /// A finite float > 0.
    Pos,
    /// A finite float ≥ 0.
    NonNeg,
}

macro_rules! params {
    ($( $(#[$doc:meta])* $name:ident { $( $field:ident : $ty:ty = $default:expr, $kind:expr; )* } )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $name { $( pub $field: $ty, )* }

            impl Default for $name {
                fn default() -> Self { $name { $( $field: $default, )* } }
            }

            impl $name {
                const FIELDS: &'static [(&'static str, Kind)] = &[ $( (stringify!($field), $kind), )* ];

                #[allow(unused_variables)]
                fn set(&mut self, key: &str, v: &Value) {
                    $( if key == stringify!($field) { self.$field = FromJson::from_json(v); } )*
                }
            }
        )*
    };
}

trait FromJson {
    fn from_json(v: &Value) -> Self;
}
impl FromJson for i64 {
    fn from_json(v: &Value) -> i64 {
        v.as_i64().unwrap_or_default()
    }
}
impl FromJson for f64 {
    fn from_json(v: &Value) -> f64 {
        v.as_f64().unwrap_or_default()
    }
}

params! {
    /// TOOL_LOOP: `threshold` calls of one tool within the last `window` calls.
    ToolLoopParams { threshold: i64 = 3, Kind::Int(1); window: i64 = 5, Kind::Int(1); }
    /// TOOL_THRASHING: two tools alternating over the last `window` calls.
    ToolThrashingParams { window: i64 = 6, Kind::Int(2); }
    /// TOOL_AVOIDANCE: a final answer with tools available, none used, ≥ `min_llm_calls`.
    ToolAvoidanceParams { min_llm_calls: i64 = 2, Kind::Int(0); }
    /// GOAL_ABANDONMENT: the last `stall_steps` events of a stalled run are LLM events.
    GoalAbandonmentParams { stall_steps: i64 = 4, Kind::Int(1); }
    /// PROMPT_INJECTION_SIGNAL: no tunables.
    PromptInjectionParams {}
    /// RAG_EMPTY_RETRIEVAL: a retrieval below `min_results` results or `min_score`.
    RagEmptyRetrievalParams { min_score: f64 = 0.3, Kind::NonNeg; min_results: i64 = 1, Kind::Int(0); }
    /// LLM_TRUNCATION_LOOP: ≥ `threshold` responses with finish_reason "length".
    LlmTruncationLoopParams { threshold: i64 = 2, Kind::Int(1); }
    /// CONTEXT_BLOAT: prompt growth first → last.
    ContextBloatParams {
        min_calls: i64 = 3, Kind::Int(1);
        growth_factor: f64 = 3.0, Kind::Pos;
        min_last_tokens: i64 = 2000, Kind::Int(0);
        inflation_factor: f64 = 2.0, Kind::Pos;
    }
    /// SLOW_STEP: a step slower than its static threshold or `inflation_factor` × P75.
    SlowStepParams { inflation_factor: f64 = 2.0, Kind::Pos; }
    /// RETRY_STORM: ≥ `threshold` consecutive failures of one tool.
    RetryStormParams { threshold: i64 = 3, Kind::Int(1); }
    /// EMPTY_LLM_RESPONSE: no tunables.
    EmptyLlmResponseParams {}
    /// STEP_COUNT_INFLATION: steps > P75 × `inflation_factor`.
    StepCountInflationParams { inflation_factor: f64 = 2.0, Kind::Pos; }
    /// CASCADING_TOOL_FAILURE: ≥ `threshold` trailing failures across ≥ 2 tools.
    CascadingToolFailureParams { threshold: i64 = 3, Kind::Int(1); }
    /// FIRST_STEP_FAILURE: a failure at or before `max_step`.
    FirstStepFailureParams { max_step: i64 = 2, Kind::Int(0); }
    /// REASONING_STALL: LLM/tool call ratio.
    ReasoningStallParams {
        min_llm_calls: i64 = 5, Kind::Int(1);
        ratio_threshold: f64 = 4.0, Kind::Pos;
        inflation_factor: f64 = 2.0, Kind::Pos;
    }
    /// COST_SPIKE: total tokens ≥ P75 × `inflation_factor` or the static threshold.
    CostSpikeParams {
        inflation_factor: f64 = 3.0, Kind::Pos;
        static_threshold_tokens: i64 = 50_000, Kind::Int(1);
        min_llm_calls: i64 = 1, Kind::Int(0);
    }
    /// SESSION_LATENCY: wall-clock duration ≥ P75 × `inflation_factor` or the static threshold.
    SessionLatencyParams {
        inflation_factor: f64 = 3.0, Kind::Pos;
        static_threshold_secs: f64 = 300.0, Kind::Pos;
        min_events: i64 = 2, Kind::Int(0);
    }
}

/// Per-detector switches common to every detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Switches {
    pub live: bool,
    pub enabled: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            live: true,
            enabled: true,
        }
    }
}

/// The effective configuration for one agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DetectorConfig {
    pub tool_loop: ToolLoopParams,
    pub tool_thrashing: ToolThrashingParams,
    pub tool_avoidance: ToolAvoidanceParams,
    pub goal_abandonment: GoalAbandonmentParams,
    pub prompt_injection_signal: PromptInjectionParams,
    pub rag_empty_retrieval: RagEmptyRetrievalParams,
    pub llm_truncation_loop: LlmTruncationLoopParams,
    pub context_bloat: ContextBloatParams,
    pub slow_step: SlowStepParams,
    pub retry_storm: RetryStormParams,
    pub empty_llm_response: EmptyLlmResponseParams,
    pub step_count_inflation: StepCountInflationParams,
    pub cascading_tool_failure: CascadingToolFailureParams,
    pub first_step_failure: FirstStepFailureParams,
    pub reasoning_stall: ReasoningStallParams,
    pub cost_spike: CostSpikeParams,
    pub session_latency: SessionLatencyParams,
    switches: [Switches; 17],
}

fn fields(t: FailureType) -> &'static [(&'static str, Kind)] {
    match t {
        FailureType::ToolLoop => ToolLoopParams::FIELDS,
        FailureType::ToolThrashing => ToolThrashingParams::FIELDS,
        FailureType::ToolAvoidance => ToolAvoidanceParams::FIELDS,
        FailureType::GoalAbandonment => GoalAbandonmentParams::FIELDS,
        FailureType::PromptInjectionSignal => PromptInjectionParams::FIELDS,
        FailureType::RagEmptyRetrieval => RagEmptyRetrievalParams::FIELDS,
        FailureType::LlmTruncationLoop => LlmTruncationLoopParams::FIELDS,
        FailureType::ContextBloat => ContextBloatParams::FIELDS,
        FailureType::SlowStep => SlowStepParams::FIELDS,
        FailureType::RetryStorm => RetryStormParams::FIELDS,
        FailureType::EmptyLlmResponse => EmptyLlmResponseParams::FIELDS,
        FailureType::StepCountInflation => StepCountInflationParams::FIELDS,
        FailureType::CascadingToolFailure => CascadingToolFailureParams::FIELDS,
        FailureType::FirstStepFailure => FirstStepFailureParams::FIELDS,
        FailureType::ReasoningStall => ReasoningStallParams::FIELDS,
        FailureType::CostSpike => CostSpikeParams::FIELDS,
        FailureType::SessionLatency => SessionLatencyParams::FIELDS,
    }
}

fn index(t: FailureType) -> usize {
    FailureType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// The names a detector accepts in `params`, tunables first, then `live` and `enabled`.
pub fn param_names(t: FailureType) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = fields(t).iter().map(|(n, _)| *n).collect();
    v.push("live");
    v.push("enabled");
    v
}

/// Checks a detector name and its parameter object; the error names the offending key.
pub fn validate(detector: &str, params: &Value) -> Result<FailureType, String> {
    let t = FailureType::parse(detector).ok_or_else(|| {
        let known: Vec<&str> = FailureType::ALL.iter().map(|t| t.config_key()).collect();
        format!(
            "unknown detector \"{detector}\"; known detectors: {}",
            known.join(", ")
        )
    })?;
    let obj = params
        .as_object()
        .ok_or_else(|| "params must be a JSON object".to_string())?;
    for (k, v) in obj {
        if k == "live" || k == "enabled" {
            if !v.is_boolean() {
                return Err(format!(
                    "parameter \"{k}\" of {} must be a boolean",
                    t.config_key()
                ));
            }
            continue;
        }
        let kind = fields(t)
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                format!(
                    "unknown parameter \"{k}\" for detector {}; accepted: {}",
                    t.config_key(),
                    param_names(t).join(", ")
                )
            })?;
        match kind {
            Kind::Int(min) => match v.as_i64() {
                Some(n) if n >= min => {}
                _ => {
                    return Err(format!(
                        "parameter \"{k}\" of {} must be an integer >= {min}",
                        t.config_key()
                    ))
                }
            },
            Kind::Pos | Kind::NonNeg => match v.as_f64() {
                Some(x)
                    if x.is_finite() && (x > 0.0 || (x == 0.0 && matches!(kind, Kind::NonNeg))) => {
                }
                _ => {
                    let bound = if matches!(kind, Kind::Pos) {
                        "> 0"
                    } else {
                        ">= 0"
                    };
                    return Err(format!(
                        "parameter \"{k}\" of {} must be a number {bound}",
                        t.config_key()
                    ));
                }
            },
        }
    }
    Ok(t)
}

impl DetectorConfig {
    /// The configuration from stored settings rows `(detector, params)`, applied in order
    /// over the defaults: give the `'default'` agent's rows first, then the agent's own.
    /// Rows naming an unknown detector are skipped (they were validated when stored).
    pub fn from_layers<'a>(
        layers: impl IntoIterator<Item = (&'a str, &'a Map<String, Value>)>,
    ) -> DetectorConfig {
        let mut cfg = DetectorConfig::default();
        for (detector, params) in layers {
            if let Some(t) = FailureType::parse(detector) {
                cfg.apply(t, params);
            }
        }
        cfg
    }

    /// Applies one validated parameter object for detector `t` over the current values.
    pub fn apply(&mut self, t: FailureType, params: &Map<String, Value>) {
        for (k, v) in params {
            match k.as_str() {
                "live" => self.switches[index(t)].live = v.as_bool().unwrap_or(true),
                "enabled" => self.switches[index(t)].enabled = v.as_bool().unwrap_or(true),
                _ => self.set(t, k, v),
            }
        }
    }

    fn set(&mut self, t: FailureType, k: &str, v: &Value) {
        match t {
            FailureType::ToolLoop => self.tool_loop.set(k, v),
            FailureType::ToolThrashing => self.tool_thrashing.set(k, v),
            FailureType::ToolAvoidance => self.tool_avoidance.set(k, v),
            FailureType::GoalAbandonment => self.goal_abandonment.set(k, v),
            FailureType::PromptInjectionSignal => self.prompt_injection_signal.set(k, v),
            FailureType::RagEmptyRetrieval => self.rag_empty_retrieval.set(k, v),
            FailureType::LlmTruncationLoop => self.llm_truncation_loop.set(k, v),
            FailureType::ContextBloat => self.context_bloat.set(k, v),
            FailureType::SlowStep => self.slow_step.set(k, v),
            FailureType::RetryStorm => self.retry_storm.set(k, v),
            FailureType::EmptyLlmResponse => self.empty_llm_response.set(k, v),
            FailureType::StepCountInflation => self.step_count_inflation.set(k, v),
            FailureType::CascadingToolFailure => self.cascading_tool_failure.set(k, v),
            FailureType::FirstStepFailure => self.first_step_failure.set(k, v),
            FailureType::ReasoningStall => self.reasoning_stall.set(k, v),
            FailureType::CostSpike => self.cost_spike.set(k, v),
            FailureType::SessionLatency => self.session_latency.set(k, v),
        }
    }

    /// Live (alerted, counted into issues) unless switched to shadow.
    pub fn is_live(&self, t: FailureType) -> bool {
        self.switches[index(t)].live
    }

    /// Run unless switched off.
    pub fn enabled(&self, t: FailureType) -> bool {
        self.switches[index(t)].enabled
    }

    /// Sets the live/shadow switch of `t`.
    pub fn set_live(&mut self, t: FailureType, live: bool) {
        self.switches[index(t)].live = live;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_v4() {
        let c = DetectorConfig::default();
        assert_eq!(c.tool_loop.threshold, 3);
        assert_eq!(c.tool_loop.window, 5);
        assert_eq!(c.context_bloat.growth_factor, 3.0);
        assert_eq!(c.cost_spike.static_threshold_tokens, 50_000);
        assert!(FailureType::ALL
            .iter()
            .all(|t| c.is_live(*t) && c.enabled(*t)));
    }

    #[test]
    fn overrides_merge_in_order() {
        let mut c = DetectorConfig::default();
        let t = validate("tool_loop", &json!({"threshold": 4})).unwrap();
        c.apply(t, json!({"threshold": 4}).as_object().unwrap());
        let t = validate("TOOL_LOOP", &json!({"window": 7, "live": false})).unwrap();
        c.apply(t, json!({"window": 7, "live": false}).as_object().unwrap());
        assert_eq!(c.tool_loop.threshold, 4);
        assert_eq!(c.tool_loop.window, 7);
        assert!(!c.is_live(FailureType::ToolLoop));
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(validate("nope", &json!({}))
            .unwrap_err()
            .contains("unknown detector \"nope\""));
        assert!(validate("tool_loop", &json!({"treshold": 1}))
            .unwrap_err()
            .contains("unknown parameter \"treshold\""));
        assert!(validate("tool_loop", &json!({"threshold": 2.5})).is_err());
        assert!(validate("tool_loop", &json!({"threshold": 0})).is_err());
        assert!(validate("context_bloat", &json!({"growth_factor": -1})).is_err());
        assert!(validate("tool_loop", &json!({"live": "yes"})).is_err());
        assert!(validate("tool_loop", &json!([1])).is_err());
        assert!(validate("rag_empty_retrieval", &json!({"min_score": 0})).is_ok());
    }
}
