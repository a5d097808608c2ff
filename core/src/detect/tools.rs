//! Detectors that read the tool-call sequence: TOOL_LOOP, TOOL_THRASHING, TOOL_AVOIDANCE,
//! RETRY_STORM, CASCADING_TOOL_FAILURE.

use super::config::*;
use super::Signal;
use crate::run::RunState;

pub fn tool_loop(_run: &RunState, _p: &ToolLoopParams) -> Option<Signal> {
    None
}

pub fn tool_thrashing(_run: &RunState, _p: &ToolThrashingParams) -> Option<Signal> {
    None
}

pub fn tool_avoidance(_run: &RunState, _p: &ToolAvoidanceParams) -> Option<Signal> {
    None
}

pub fn retry_storm(_run: &RunState, _p: &RetryStormParams) -> Option<Signal> {
    None
}

pub fn cascading_tool_failure(_run: &RunState, _p: &CascadingToolFailureParams) -> Option<Signal> {
    None
}
