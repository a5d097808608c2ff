//! The wire model: event types and the envelope one event travels in.
//!
//! One definition serves the extension (validation, storage, run reconstruction) and the
//! client crate (building events), so both sides always agree on the shape.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
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

/// An event's payload object: its keys in the order they were sent (a repeated key keeps its
/// first position and its last value, as a JSON object read by serde_json does). A payload has
/// a handful of keys, so looking one up along a short list is cheaper than hashing it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload(Vec<(String, Value)>);

impl Payload {
    pub fn new() -> Payload {
        Payload(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` (replacing its value when present).
    pub fn insert(&mut self, key: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl From<Map<String, Value>> for Payload {
    fn from(map: Map<String, Value>) -> Payload {
        Payload(map.into_iter().collect())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// A JSON object; anything else is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Payload, A::Error> {
                let mut p = Payload(Vec::with_capacity(access.size_hint().unwrap_or(8)));
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    p.insert(k, v);
                }
                Ok(p)
            }
        }
        deserializer.deserialize_map(PayloadVisitor)
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
    pub payload: Payload,
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
        payload: payload.as_object().cloned().unwrap_or_default().into(),
        parent_run_id: None,
    }
}
