//! PROMPT_INJECTION_SIGNAL, materialised from `run.started.payload.injection_signal`.

use super::config::*;
use super::{FailureType, Severity, Signal};
use crate::run::RunState;

/// PROMPT_INJECTION_SIGNAL: the SDK scanned the raw input and put its evidence object in
/// `run.started`; the signal carries that object unchanged as its evidence. Confidence is
/// `min(1, 0.5 + (matched_pattern_count − 1)·0.4)`, a missing count counting as 1.
pub fn prompt_injection_signal(run: &RunState, _p: &PromptInjectionParams) -> Option<Signal> {
    let evidence = run.injection_signal.as_ref().filter(|m| !m.is_empty())?;
    let count = evidence
        .get("matched_pattern_count")
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    Some(Signal::new(
        FailureType::PromptInjectionSignal,
        Severity::Critical,
        0,
        f64::min(1.0, 0.5 + (count - 1.0) * 0.4),
        evidence.clone(),
    ))
}
