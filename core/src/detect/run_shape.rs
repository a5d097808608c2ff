//! Detectors that read the run's shape, timing and ending: GOAL_ABANDONMENT, SLOW_STEP,
//! STEP_COUNT_INFLATION, FIRST_STEP_FAILURE, SESSION_LATENCY.

use super::config::*;
use super::Signal;
use crate::run::RunState;

pub fn goal_abandonment(_run: &RunState, _p: &GoalAbandonmentParams) -> Option<Signal> {
    None
}

pub fn slow_step(_run: &RunState, _p: &SlowStepParams) -> Option<Signal> {
    None
}

pub fn step_count_inflation(_run: &RunState, _p: &StepCountInflationParams) -> Option<Signal> {
    None
}

pub fn first_step_failure(_run: &RunState, _p: &FirstStepFailureParams) -> Option<Signal> {
    None
}

pub fn session_latency(_run: &RunState, _p: &SessionLatencyParams) -> Option<Signal> {
    None
}
