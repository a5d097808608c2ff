//! PROMPT_INJECTION_SIGNAL, materialised from `run.started.payload.injection_signal`.

use super::config::*;
use super::Signal;
use crate::run::RunState;

pub fn prompt_injection_signal(_run: &RunState, _p: &PromptInjectionParams) -> Option<Signal> {
    None
}
