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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn with(sig: Option<Value>) -> RunState {
        RunState {
            current_step: 6,
            injection_signal: sig.map(|v| v.as_object().unwrap().clone()),
            ..RunState::default()
        }
    }

    fn check(count: Option<i64>, confidence: f64) {
        let mut ev = Map::new();
        if let Some(c) = count {
            ev.insert("matched_pattern_count".into(), json!(c));
        }
        ev.insert(
            "matched_patterns".into(),
            json!(["ignore_instructions", "jailbreak"]),
        );
        ev.insert("input_length".into(), json!(120));
        let r = with(Some(Value::Object(ev.clone())));
        let s = prompt_injection_signal(&r, &PromptInjectionParams::default()).unwrap();
        assert_eq!(s.failure_type, FailureType::PromptInjectionSignal);
        assert_eq!(s.severity, Severity::Critical);
        assert_eq!(s.step_index, 0);
        assert!(
            (s.confidence - confidence).abs() < 1e-12,
            "{}",
            s.confidence
        );
        assert_eq!(s.evidence, ev);
    }

    #[test]
    fn confidence_from_pattern_count() {
        check(Some(1), 0.5);
        check(Some(2), 0.9);
        check(Some(3), 1.0);
        check(Some(7), 1.0);
        check(None, 0.5);
    }

    #[test]
    fn evidence_is_the_sdk_object() {
        let r = with(Some(json!({
            "matched_pattern_count": 2,
            "matched_patterns": ["you_are_now", "act_as"],
            "input_length": 57,
        })));
        let s = prompt_injection_signal(&r, &PromptInjectionParams::default()).unwrap();
        assert_eq!(
            Value::Object(s.evidence),
            json!({
                "matched_pattern_count": 2,
                "matched_patterns": ["you_are_now", "act_as"],
                "input_length": 57,
            })
        );
    }

    #[test]
    fn nothing_without_a_signal() {
        let p = PromptInjectionParams::default();
        assert!(prompt_injection_signal(&with(None), &p).is_none());
        assert!(prompt_injection_signal(&with(Some(json!({}))), &p).is_none());
    }
}
