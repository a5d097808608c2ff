//! The wire model: event types and the envelope one event travels in.
//!
//! One definition serves the extension (validation, storage, run reconstruction) and the
//! client crate (building events), so both sides always agree on the shape.

use serde_json::{Map, Value};

/// Every event type the extension accepts (V4 core set plus `policy.triggered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    RunStarted,
    RunCompleted,
    RunErrored,
    LlmCalled,
    LlmResponded,
    ToolCalled,
    ToolResponded,
    RetrievalCalled,
    RetrievalResponded,
    ExternalSignal,
    PolicyTriggered,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::RunStarted,
        EventType::RunCompleted,
        EventType::RunErrored,
        EventType::LlmCalled,
        EventType::LlmResponded,
        EventType::ToolCalled,
        EventType::ToolResponded,
        EventType::RetrievalCalled,
        EventType::RetrievalResponded,
        EventType::ExternalSignal,
        EventType::PolicyTriggered,
    ];

    /// The wire string, e.g. `"tool.called"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunStarted => "run.started",
            EventType::RunCompleted => "run.completed",
            EventType::RunErrored => "run.errored",
            EventType::LlmCalled => "llm.called",
            EventType::LlmResponded => "llm.responded",
            EventType::ToolCalled => "tool.called",
            EventType::ToolResponded => "tool.responded",
            EventType::RetrievalCalled => "retrieval.called",
            EventType::RetrievalResponded => "retrieval.responded",
            EventType::ExternalSignal => "external.signal",
            EventType::PolicyTriggered => "policy.triggered",
        }
    }

    /// Parses a wire string; `None` for anything not in the accepted set.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.as_str() == s)
    }

    /// `run.completed` or `run.errored`.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventType::RunCompleted | EventType::RunErrored)
    }

    /// True for the event types whose wire string starts with `llm.`.
    pub fn is_llm(self) -> bool {
        matches!(self, EventType::LlmCalled | EventType::LlmResponded)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated event: the envelope fields plus its payload object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_type: EventType,
    pub run_id: String,
    pub agent_id: String,
    pub agent_version: String,
    pub step_index: i32,
    /// Unix epoch seconds (the agent's clock).
    pub timestamp: f64,
    pub payload: Map<String, Value>,
    pub parent_run_id: Option<String>,
}

impl Event {
    /// Payload value as an integer, when present and integral.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.payload.get(key).and_then(Value::as_i64)
    }

    /// Payload value as a float (integers widen), when present and numeric.
    pub fn float(&self, key: &str) -> Option<f64> {
        self.payload.get(key).and_then(Value::as_f64)
    }

    /// Payload value as a string, when present and a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(Value::as_str)
    }

    /// Payload value as a bool, when present and a bool.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.payload.get(key).and_then(Value::as_bool)
    }
}

/// An event of run `r`, agent `a`, version `v`, for the core's unit tests.
#[cfg(test)]
pub(crate) fn test_event(t: EventType, step: i32, ts: f64, payload: Value) -> Event {
    Event {
        event_type: t,
        run_id: "r".into(),
        agent_id: "a".into(),
        agent_version: "v".into(),
        step_index: step,
        timestamp: ts,
        payload: payload.as_object().cloned().unwrap_or_default(),
        parent_run_id: None,
    }
}
