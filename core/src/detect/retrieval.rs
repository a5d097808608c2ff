//! Detectors that read retrievals: RAG_EMPTY_RETRIEVAL.

use super::config::*;
use super::{FailureType, Severity, Signal};
use crate::evidence;
use crate::run::RunState;

/// RAG_EMPTY_RETRIEVAL: the run ended with a final answer although some retrieval came back
/// with fewer than `min_results` results or a top score below `min_score`.
pub fn rag_empty_retrieval(run: &RunState, p: &RagEmptyRetrievalParams) -> Option<Signal> {
    if run.exit_reason.as_deref() != Some("final_answer") || run.retrievals.is_empty() {
        return None;
    }
    let bad: Vec<_> = run
        .retrievals
        .iter()
        .filter(|r| r.result_count < p.min_results || r.top_score.is_some_and(|s| s < p.min_score))
        .collect();
    // The bad retrieval with the fewest results; the first one on ties.
    let worst = bad.iter().copied().reduce(|best, r| {
        if r.result_count < best.result_count {
            r
        } else {
            best
        }
    })?;
    Some(Signal::new(
        FailureType::RagEmptyRetrieval,
        Severity::Medium,
        run.current_step,
        0.88,
        evidence! {
            "index_name" => worst.index_name,
            "result_count" => worst.result_count,
            "top_score" => worst.top_score,
            "bad_retrievals" => bad.len(),
        },
    ))
}
