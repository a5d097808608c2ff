//! The failure detectors, their registry and post-processing.
//!
//! Detectors are grouped by what they look at: `tools.rs` (tool-call patterns), `llm.rs` (LLM
//! calls and tokens), `retrieval.rs`, `run_shape.rs` (steps, timing, how the run ended) and
//! `injection.rs`. `post.rs` applies the hard override and co-occurrence boost. Each detector is
//! a plain function `fn(&RunState, &Params) -> Option<Signal>`.

pub mod config;
pub mod injection;
pub mod llm;
pub mod post;
pub mod retrieval;
pub mod run_shape;
pub mod tools;

pub use config::DetectorConfig;

use crate::run::RunState;
use serde_json::{Map, Value};

/// The 17 failure types of V4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureType {
    ToolLoop,
    ToolThrashing,
    ToolAvoidance,
    GoalAbandonment,
    PromptInjectionSignal,
    RagEmptyRetrieval,
    LlmTruncationLoop,
    ContextBloat,
    SlowStep,
    RetryStorm,
    EmptyLlmResponse,
    StepCountInflation,
    CascadingToolFailure,
    FirstStepFailure,
    ReasoningStall,
    CostSpike,
    SessionLatency,
}

impl FailureType {
    pub const ALL: [FailureType; 17] = [
        FailureType::ToolLoop,
        FailureType::ToolThrashing,
        FailureType::ToolAvoidance,
        FailureType::GoalAbandonment,
        FailureType::PromptInjectionSignal,
        FailureType::RagEmptyRetrieval,
        FailureType::LlmTruncationLoop,
        FailureType::ContextBloat,
        FailureType::SlowStep,
        FailureType::RetryStorm,
        FailureType::EmptyLlmResponse,
        FailureType::StepCountInflation,
        FailureType::CascadingToolFailure,
        FailureType::FirstStepFailure,
        FailureType::ReasoningStall,
        FailureType::CostSpike,
        FailureType::SessionLatency,
    ];

    /// The stored string, e.g. `"TOOL_LOOP"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::ToolLoop => "TOOL_LOOP",
            FailureType::ToolThrashing => "TOOL_THRASHING",
            FailureType::ToolAvoidance => "TOOL_AVOIDANCE",
            FailureType::GoalAbandonment => "GOAL_ABANDONMENT",
            FailureType::PromptInjectionSignal => "PROMPT_INJECTION_SIGNAL",
            FailureType::RagEmptyRetrieval => "RAG_EMPTY_RETRIEVAL",
            FailureType::LlmTruncationLoop => "LLM_TRUNCATION_LOOP",
            FailureType::ContextBloat => "CONTEXT_BLOAT",
            FailureType::SlowStep => "SLOW_STEP",
            FailureType::RetryStorm => "RETRY_STORM",
            FailureType::EmptyLlmResponse => "EMPTY_LLM_RESPONSE",
            FailureType::StepCountInflation => "STEP_COUNT_INFLATION",
            FailureType::CascadingToolFailure => "CASCADING_TOOL_FAILURE",
            FailureType::FirstStepFailure => "FIRST_STEP_FAILURE",
            FailureType::ReasoningStall => "REASONING_STALL",
            FailureType::CostSpike => "COST_SPIKE",
            FailureType::SessionLatency => "SESSION_LATENCY",
        }
    }

    /// The configuration key, e.g. `"tool_loop"`.
    pub fn config_key(self) -> &'static str {
        match self {
            FailureType::ToolLoop => "tool_loop",
            FailureType::ToolThrashing => "tool_thrashing",
            FailureType::ToolAvoidance => "tool_avoidance",
            FailureType::GoalAbandonment => "goal_abandonment",
            FailureType::PromptInjectionSignal => "prompt_injection_signal",
            FailureType::RagEmptyRetrieval => "rag_empty_retrieval",
            FailureType::LlmTruncationLoop => "llm_truncation_loop",
            FailureType::ContextBloat => "context_bloat",
            FailureType::SlowStep => "slow_step",
            FailureType::RetryStorm => "retry_storm",
            FailureType::EmptyLlmResponse => "empty_llm_response",
            FailureType::StepCountInflation => "step_count_inflation",
            FailureType::CascadingToolFailure => "cascading_tool_failure",
            FailureType::FirstStepFailure => "first_step_failure",
            FailureType::ReasoningStall => "reasoning_stall",
            FailureType::CostSpike => "cost_spike",
            FailureType::SessionLatency => "session_latency",
        }
    }

    /// Parses either the stored string (`TOOL_LOOP`) or the configuration key (`tool_loop`).
    pub fn parse(s: &str) -> Option<FailureType> {
        FailureType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s || t.config_key() == s)
    }
}

impl std::fmt::Display for FailureType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity, ordered LOW < MEDIUM < HIGH < CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    /// Case-insensitive parse of `LOW`, `MEDIUM`, `HIGH`, `CRITICAL`.
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_uppercase().as_str() {
            "LOW" => Some(Severity::Low),
            "MEDIUM" => Some(Severity::Medium),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detected failure. Run identity (run_id, agent_id, agent_version) comes from the
/// `RunState` it was detected on.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub failure_type: FailureType,
    pub severity: Severity,
    pub step_index: i32,
    pub confidence: f64,
    /// Evidence object; key insertion order is the order documented for the detector.
    pub evidence: Map<String, Value>,
    /// Number of signals in the run when ≥ 2 (set by post-processing), else 0.
    pub co_signal_count: i32,
    /// `true` when the detector is switched to shadow mode (stored, never alerted).
    pub shadow: bool,
}

impl Signal {
    /// A signal with `co_signal_count` 0 and `shadow` false.
    pub fn new(
        failure_type: FailureType,
        severity: Severity,
        step_index: i32,
        confidence: f64,
        evidence: Map<String, Value>,
    ) -> Signal {
        Signal {
            failure_type,
            severity,
            step_index,
            confidence,
            evidence,
            co_signal_count: 0,
            shadow: false,
        }
    }
}

/// Dynamic confidence: `min(1, 0.5 + (r − 1)·0.4)` with `r = observed / threshold`; no lower
/// clamp.
pub fn scale(ratio: f64) -> f64 {
    f64::min(1.0, 0.5 + (ratio - 1.0) * 0.4)
}

/// Builds an evidence object from `(key, value)` pairs, keeping their order.
#[macro_export]
macro_rules! evidence {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = ::serde_json::Map::new();
        $( m.insert(($k).to_string(), ::serde_json::json!($v)); )*
        m
    }};
}

/// Runs every detector in V4 registry order, appends the injection signal, then applies the
/// hard override, the co-occurrence boost and the shadow flags.
pub fn detect(run: &RunState, cfg: &DetectorConfig) -> Vec<Signal> {
    let mut out: Vec<Signal> = [
        tools::tool_loop(run, &cfg.tool_loop),
        tools::tool_thrashing(run, &cfg.tool_thrashing),
        tools::tool_avoidance(run, &cfg.tool_avoidance),
        run_shape::goal_abandonment(run, &cfg.goal_abandonment),
        retrieval::rag_empty_retrieval(run, &cfg.rag_empty_retrieval),
        llm::llm_truncation_loop(run, &cfg.llm_truncation_loop),
        llm::context_bloat(run, &cfg.context_bloat),
        run_shape::slow_step(run, &cfg.slow_step),
        tools::retry_storm(run, &cfg.retry_storm),
        llm::empty_llm_response(run, &cfg.empty_llm_response),
        run_shape::step_count_inflation(run, &cfg.step_count_inflation),
        tools::cascading_tool_failure(run, &cfg.cascading_tool_failure),
        run_shape::first_step_failure(run, &cfg.first_step_failure),
        llm::reasoning_stall(run, &cfg.reasoning_stall),
        llm::cost_spike(run, &cfg.cost_spike),
        run_shape::session_latency(run, &cfg.session_latency),
    ]
    .into_iter()
    .flatten()
    .filter(|s| cfg.enabled(s.failure_type))
    .collect();
    if let Some(s) = injection::prompt_injection_signal(run, &cfg.prompt_injection_signal) {
        if cfg.enabled(s.failure_type) {
            out.push(s);
        }
    }
    post::hard_override(run, &mut out);
    post::co_occurrence_boost(&mut out);
    for s in &mut out {
        s.shadow = !cfg.is_live(s.failure_type);
    }
    out
}
