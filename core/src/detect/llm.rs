//! Detectors that read LLM calls and token counts: LLM_TRUNCATION_LOOP, CONTEXT_BLOAT,
//! EMPTY_LLM_RESPONSE, REASONING_STALL, COST_SPIKE.

use super::config::*;
use super::Signal;
use crate::run::RunState;

pub fn llm_truncation_loop(_run: &RunState, _p: &LlmTruncationLoopParams) -> Option<Signal> {
    None
}

pub fn context_bloat(_run: &RunState, _p: &ContextBloatParams) -> Option<Signal> {
    None
}

pub fn empty_llm_response(_run: &RunState, _p: &EmptyLlmResponseParams) -> Option<Signal> {
    None
}

pub fn reasoning_stall(_run: &RunState, _p: &ReasoningStallParams) -> Option<Signal> {
    None
}

pub fn cost_spike(_run: &RunState, _p: &CostSpikeParams) -> Option<Signal> {
    None
}
