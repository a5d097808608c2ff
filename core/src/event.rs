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

    /// A payload of `entries`, in order, each repeated key keeping its first position and its
    /// last value (what [`Payload::insert`] gives one entry at a time). Linear in the number of
    /// entries: an object of 100,000 keys, which validation then refuses, must not cost
    /// 100,000² comparisons to read first.
    pub fn from_entries(entries: Vec<(String, Value)>) -> Payload {
        if entries.len() <= 16 {
            let mut p = Payload(Vec::with_capacity(entries.len()));
            for (k, v) in entries {
                p.insert(k, v);
            }
            return p;
        }
        // For each key's first entry, the index of its last one (usize::MAX: not a first entry).
        let mut last = vec![usize::MAX; entries.len()];
        {
            let mut first: std::collections::HashMap<&str, usize> =
                std::collections::HashMap::with_capacity(entries.len());
            for (i, (k, _)) in entries.iter().enumerate() {
                let f = *first.entry(k.as_str()).or_insert(i);
                last[f] = i;
            }
        }
        let (keys, mut values): (Vec<String>, Vec<Value>) = entries.into_iter().unzip();
        let mut out = Vec::with_capacity(keys.len());
        for (k, l) in keys.into_iter().zip(last) {
            if l != usize::MAX {
                out.push((k, std::mem::take(&mut values[l])));
            }
        }
        Payload(out)
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
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(8).min(64));
                while let Some(entry) = access.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Payload::from_entries(entries))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_entries_is_insert_one_at_a_time() {
        for n in [0usize, 1, 5, 16, 17, 40, 300] {
            for modulus in [1usize, 3, 7, 1000] {
                let entries: Vec<(String, Value)> = (0..n)
                    .map(|i| (format!("k{}", (i * 7919) % modulus.min(n.max(1))), json!(i)))
                    .collect();
                let mut one_by_one = Payload::new();
                for (k, v) in entries.clone() {
                    one_by_one.insert(k, v);
                }
                assert_eq!(Payload::from_entries(entries), one_by_one, "{n} {modulus}");
            }
        }
    }

    /// Regression: a 100,000-key object took 100,000²/2 key comparisons to read (seconds of
    /// CPU per request in release builds, minutes for a few megabytes).
    #[test]
    fn reading_many_keys_is_linear() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", keys.join(","));
        let start = std::time::Instant::now();
        let p: Payload = serde_json::from_str(&text).unwrap();
        assert_eq!(p.len(), 100_000);
        assert_eq!(p.get("k99999"), Some(&json!(99999)));
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    }
}
