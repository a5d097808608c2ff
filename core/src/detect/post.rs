//! Post-processing after all detectors ran: the hard override and the co-occurrence boost.

use super::Signal;
use crate::run::RunState;

/// The RiskEngine hard override (upstream-behaviour.md §3.2 step 2).
pub fn hard_override(_run: &RunState, _signals: &mut [Signal]) {}

/// The co-occurrence boost and `co_signal_count` (upstream-behaviour.md §3.2 step 3).
pub fn co_occurrence_boost(_signals: &mut [Signal]) {}
