//! Detectors that read retrievals: RAG_EMPTY_RETRIEVAL.

use super::config::*;
use super::Signal;
use crate::run::RunState;

pub fn rag_empty_retrieval(_run: &RunState, _p: &RagEmptyRetrievalParams) -> Option<Signal> {
    None
}
