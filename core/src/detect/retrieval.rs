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
        .filter(|r| {
            r.result_count < p.min_results
                || r.top_score
                    .as_ref()
                    .and_then(serde_json::Number::as_f64)
                    .is_some_and(|s| s < p.min_score)
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Retrieval;
    use serde_json::{json, Value};

    fn ret(index: &str, count: i64, score: Option<f64>, step: i32) -> Retrieval {
        Retrieval {
            index_name: index.into(),
            result_count: count,
            top_score: score.and_then(serde_json::Number::from_f64),
            step_index: step,
        }
    }

    fn answered(retrievals: Vec<Retrieval>) -> RunState {
        RunState {
            exit_reason: Some("final_answer".into()),
            retrievals,
            current_step: 9,
            ..RunState::default()
        }
    }

    #[test]
    fn fires_on_the_emptiest_bad_retrieval() {
        let r = answered(vec![
            ret("docs", 5, Some(0.9), 1),
            ret("faq", 3, Some(0.1), 3),
            ret("kb", 0, None, 5),
            ret("kb2", 0, Some(0.0), 7),
        ]);
        let s = rag_empty_retrieval(&r, &RagEmptyRetrievalParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::RagEmptyRetrieval);
        assert_eq!(s.severity, Severity::Medium);
        assert_eq!(s.step_index, 9);
        assert!((s.confidence - 0.88).abs() < 1e-12);
        assert_eq!(
            Value::Object(s.evidence),
            json!({"index_name": "kb", "result_count": 0, "top_score": null, "bad_retrievals": 3})
        );
    }

    #[test]
    fn low_score_only() {
        let r = answered(vec![
            ret("docs", 4, Some(0.25), 2),
            ret("docs", 2, Some(0.29), 4),
        ]);
        let s = rag_empty_retrieval(&r, &RagEmptyRetrievalParams::default()).unwrap();
        assert_eq!(
            Value::Object(s.evidence),
            json!({"index_name": "docs", "result_count": 2, "top_score": 0.29, "bad_retrievals": 2})
        );
    }

    #[test]
    fn boundaries_are_strict() {
        let p = RagEmptyRetrievalParams::default();
        // Exactly min_results and exactly min_score are fine.
        assert!(rag_empty_retrieval(&answered(vec![ret("docs", 1, Some(0.3), 1)]), &p).is_none());
        assert!(rag_empty_retrieval(&answered(vec![ret("docs", 1, None, 1)]), &p).is_none());
        // Just below either one fires.
        assert!(
            rag_empty_retrieval(&answered(vec![ret("docs", 1, Some(0.2999), 1)]), &p).is_some()
        );
        assert!(rag_empty_retrieval(&answered(vec![ret("docs", 0, Some(0.9), 1)]), &p).is_some());
    }

    #[test]
    fn tunables() {
        let r = answered(vec![
            ret("docs", 2, Some(0.5), 1),
            ret("web", 1, Some(0.6), 2),
        ]);
        assert!(rag_empty_retrieval(&r, &RagEmptyRetrievalParams::default()).is_none());
        let p = RagEmptyRetrievalParams {
            min_results: 3,
            ..RagEmptyRetrievalParams::default()
        };
        let s = rag_empty_retrieval(&r, &p).unwrap();
        assert_eq!(s.evidence["index_name"], json!("web"));
        assert_eq!(s.evidence["bad_retrievals"], json!(2));
        let p = RagEmptyRetrievalParams {
            min_score: 0.55,
            ..RagEmptyRetrievalParams::default()
        };
        let s = rag_empty_retrieval(&r, &p).unwrap();
        assert_eq!(s.evidence["index_name"], json!("docs"));
        assert_eq!(s.evidence["top_score"], json!(0.5));
        assert_eq!(s.evidence["bad_retrievals"], json!(1));
    }

    #[test]
    fn integer_top_score_stays_an_integer() {
        // The original copies the payload's top_score into the evidence, so an integer score
        // (here 0) is reported as the JSON integer 0, not 0.0.
        let r = answered(vec![Retrieval {
            index_name: "kb".into(),
            result_count: 2,
            top_score: Some(0.into()),
            step_index: 1,
        }]);
        let s = rag_empty_retrieval(&r, &RagEmptyRetrievalParams::default()).unwrap();
        assert_eq!(
            serde_json::to_string(&s.evidence).unwrap(),
            r#"{"index_name":"kb","result_count":2,"top_score":0,"bad_retrievals":1}"#
        );
    }

    #[test]
    fn ties_keep_the_first() {
        let r = answered(vec![ret("a", 0, Some(0.1), 1), ret("b", 0, None, 2)]);
        let s = rag_empty_retrieval(&r, &RagEmptyRetrievalParams::default()).unwrap();
        assert_eq!(s.evidence["index_name"], json!("a"));
        assert_eq!(s.evidence["top_score"], json!(0.1));
    }

    #[test]
    fn only_final_answer_runs_with_retrievals() {
        let p = RagEmptyRetrievalParams::default();
        let mut r = answered(vec![ret("kb", 0, None, 1)]);
        for exit in [None, Some("completed"), Some("error")] {
            r.exit_reason = exit.map(str::to_owned);
            assert!(rag_empty_retrieval(&r, &p).is_none());
        }
        assert!(rag_empty_retrieval(&answered(vec![]), &p).is_none());
    }
}
