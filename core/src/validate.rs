//! The privacy rules: what an event may contain (README, "The privacy model").
//!
//! Ingest accepts structure only: SHA-256 digests, counts, timings and short names. Every
//! payload key must be known for its event type, every hashed field must be `""` or lowercase
//! hex, and names are short identifiers without whitespace, so a prompt or a completion cannot
//! be smuggled in. One bad event rejects the whole batch; the error names the event's index and
//! field but never echoes the offending value (it may be the very content we refuse to store).

use crate::envelope::{Batch, Envelope, Node};
use crate::event::{Event, EventType, Payload};
use serde_json::{Map, Value};

/// Most events one `ingest()` call accepts.
pub const MAX_BATCH: usize = 1000;
/// Longest identifier (run_id, agent_id, agent_version, parent_run_id) or name.
pub const MAX_NAME_LEN: usize = 128;
/// Most entries in `run.started.payload.tools`.
pub const MAX_TOOLS: usize = 256;
/// Most keys in `external.signal.payload.meta`.
pub const MAX_META_KEYS: usize = 32;
/// Most labels in `injection_signal.matched_patterns`.
pub const MAX_PATTERNS: usize = 32;

/// What kind of mistake the input made; the shell maps it to an SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value of the wrong JSON type, or input that is not JSON (22P02).
    InvalidType,
    /// A value of the right type that breaks a rule (22023).
    InvalidValue,
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub kind: ErrorKind,
    /// Index of the offending event in the batch, when the error concerns one event.
    pub index: Option<usize>,
    /// Dotted path of the offending field, e.g. `payload.output_hash`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.index, self.field.is_empty()) {
            (Some(i), false) => write!(f, "event {i}: {}: {}", self.field, self.message),
            (Some(i), true) => write!(f, "event {i}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.field, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ValidationError {}

type Res<T> = Result<T, ValidationError>;

fn err<T>(kind: ErrorKind, field: &str, message: impl Into<String>) -> Res<T> {
    Err(ValidationError {
        kind,
        index: None,
        field: field.to_string(),
        message: message.into(),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type<T>(field: &str, expected: &str, got: &Value) -> Res<T> {
    err(
        ErrorKind::InvalidType,
        field,
        format!("must be {expected}, got {}", type_name(got)),
    )
}

/// Longest key name [`echo_name`] repeats, in characters.
pub const ECHO_MAX_CHARS: usize = 40;

/// A user-supplied key name made safe to repeat in an error message, a field path or a log
/// line: at most [`ECHO_MAX_CHARS`] characters (then `…`), each kept only when it is an ASCII
/// letter or digit or one of `_ - . : / @`, anything else (whitespace, quotes, control and
/// non-ASCII characters) shown as `?`. Every key a message names goes through here, so an
/// error never carries more than a short, inert hint of what was sent.
pub fn echo_name(key: &str) -> String {
    let mut out = String::with_capacity(ECHO_MAX_CHARS + 3);
    for (i, c) in key.chars().enumerate() {
        if i == ECHO_MAX_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_ascii_alphanumeric() || "_-.:/@".contains(c) {
            c
        } else {
            '?'
        });
    }
    out
}

/// True for characters allowed in identifiers and names: ASCII letters and digits and
/// `_ - . : / @ + = # ~`. No whitespace, so free text cannot pass as a name.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.:/@+=#~".contains(c)
}

fn name_str<'v>(field: &str, v: &'v Value, allow_empty: bool) -> Res<&'v str> {
    let s = match v.as_str() {
        Some(s) => s,
        None => return wrong_type(field, "a string", v),
    };
    if s.is_empty() {
        if allow_empty {
            return Ok("");
        }
        return err(ErrorKind::InvalidValue, field, "must not be empty");
    }
    let n = s.chars().count();
    if n > MAX_NAME_LEN {
        return err(
            ErrorKind::InvalidValue,
            field,
            format!("must be at most {MAX_NAME_LEN} characters, got {n}"),
        );
    }
    if !s.chars().all(name_char) {
        return err(
            ErrorKind::InvalidValue,
            field,
            "must be a short identifier (letters, digits and _-.:/@+=#~, no spaces); \
             free text is not accepted",
        );
    }
    Ok(s)
}

fn check_name(field: &str, v: &Value, allow_empty: bool) -> Res<String> {
    name_str(field, v, allow_empty).map(str::to_string)
}

/// Checks a short identifier (no whitespace, at most [`MAX_NAME_LEN`] characters).
pub fn identifier(field: &str, v: &Value) -> Res<String> {
    check_name(field, v, false)
}

/// Checks a `meta`-style object: at most [`MAX_META_KEYS`] identifier keys with numbers,
/// booleans, nulls or short names as values.
pub fn meta_object(field: &str, v: &Value) -> Res<()> {
    check_meta(field, v)
}

/// `""` or 16–64 lowercase hex characters.
pub fn is_digest(s: &str) -> bool {
    s.is_empty()
        || ((16..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn check_digest(field: &str, v: &Value) -> Res<()> {
    match v.as_str() {
        Some(s) if is_digest(s) => Ok(()),
        Some(s) => err(
            ErrorKind::InvalidValue,
            field,
            format!(
                "must be \"\" or 16-64 lowercase hex characters (a SHA-256 digest computed by \
                 the client), got a {}-character value that is not; raw content is never \
                 accepted",
                s.chars().count()
            ),
        ),
        None => wrong_type(field, "a hex digest string", v),
    }
}

fn check_count(field: &str, v: &Value) -> Res<()> {
    if v.as_u64().is_some() && v.as_i64().is_some() {
        return Ok(());
    }
    match v {
        Value::Number(n) if n.as_i64().is_some_and(|x| x < 0) => {
            err(ErrorKind::InvalidValue, field, "must not be negative")
        }
        Value::Number(_) => err(
            ErrorKind::InvalidValue,
            field,
            "must be a non-negative integer",
        ),
        _ => wrong_type(field, "a non-negative integer", v),
    }
}

fn check_float(field: &str, v: &Value) -> Res<()> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(()),
        Some(_) => err(ErrorKind::InvalidValue, field, "must be finite"),
        None => wrong_type(field, "a number", v),
    }
}

fn check_bool(field: &str, v: &Value) -> Res<()> {
    if v.is_boolean() {
        Ok(())
    } else {
        wrong_type(field, "a boolean", v)
    }
}

/// A scalar that carries no content: null, bool, number, or a short name.
fn check_scalar(field: &str, v: &Value) -> Res<()> {
    match v {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(_) => check_float(field, v),
        Value::String(_) => name_str(field, v, true).map(|_| ()),
        _ => wrong_type(field, "a number, boolean, null or short name", v),
    }
}

fn check_names_list(field: &str, v: &Value, max: usize) -> Res<()> {
    let items = match v.as_array() {
        Some(a) => a,
        None => return wrong_type(field, "an array of names", v),
    };
    if items.len() > max {
        return err(
            ErrorKind::InvalidValue,
            field,
            format!("must have at most {max} entries, got {}", items.len()),
        );
    }
    for (i, item) in items.iter().enumerate() {
        // The item's path is only spelled out for an error.
        name_str("", item, false).map_err(|mut e| {
            e.field = format!("{field}[{i}]");
            e
        })?;
    }
    Ok(())
}

fn check_meta(field: &str, v: &Value) -> Res<()> {
    let obj = match v.as_object() {
        Some(o) => o,
        None => return wrong_type(field, "an object", v),
    };
    if obj.len() > MAX_META_KEYS {
        return err(
            ErrorKind::InvalidValue,
            field,
            format!("must have at most {MAX_META_KEYS} keys, got {}", obj.len()),
        );
    }
    for (k, val) in obj {
        check_name(&format!("{field} key"), &Value::String(k.clone()), false)?;
        check_scalar(&format!("{field}.{}", echo_name(k)), val)?;
    }
    Ok(())
}

fn check_injection(field: &str, v: &Value) -> Res<()> {
    let obj = match v {
        Value::Object(o) => o,
        _ => return wrong_type(field, "an object", v),
    };
    for (k, val) in obj {
        let f = format!("{field}.{}", echo_name(k));
        match k.as_str() {
            "matched_pattern_count" | "input_length" => check_count(&f, val)?,
            "matched_patterns" => check_names_list(&f, val, MAX_PATTERNS)?,
            _ => {
                return unknown_key(
                    field,
                    k,
                    "matched_pattern_count, matched_patterns, input_length",
                )
            }
        }
    }
    Ok(())
}

/// An unknown key: its path names the key only through [`echo_name`].
fn unknown_key<T>(field: &str, key: &str, accepted: &str) -> Res<T> {
    let key = echo_name(key);
    let path = if field.is_empty() {
        key
    } else {
        format!("{field}.{key}")
    };
    err(
        ErrorKind::InvalidValue,
        &path,
        format!("unknown key; accepted keys here: {accepted}"),
    )
}

/// How one payload field is checked.
#[derive(Clone, Copy)]
enum Field {
    Digest,
    Name,
    Count,
    Float,
    Bool,
    Names,
    Meta,
    Injection,
    /// A content-free scalar (null, boolean, number or short name) or a list of short names:
    /// `policy.triggered.value` carries the metric that fired the policy, which for the SDK's
    /// `signal` trigger is the list of failure types detected so far.
    ScalarOrNames,
}

/// The payload keys each event type may carry: what the hashed SDK releases (0.3.x) and their
/// framework integrations (LangChain, Haystack, Hermes, CrewAI, AutoGen, OTel) emit. Only
/// structural keys (digests, counts, timings, flags, names) belong here, never raw text.
fn schema(t: EventType) -> &'static [(&'static str, Field)] {
    use Field::*;
    match t {
        EventType::RunStarted => &[
            ("input_hash", Digest),
            ("model", Name),
            ("tools", Names),
            ("injection_signal", Injection),
        ],
        EventType::LlmCalled => &[("model", Name), ("prompt_tokens", Count)],
        EventType::LlmResponded => &[
            ("completion_tokens", Count),
            ("latency_ms", Count),
            ("finish_reason", Name),
            ("output_hash", Digest),
            ("output_length", Count),
            ("prompt_tokens", Count),
            ("reasoning_tokens", Count),
            ("model", Name),
            // LangChain on_llm_error, Haystack: digest of the exception text.
            ("error_hash", Digest),
        ],
        EventType::ToolCalled => &[("tool_name", Name), ("args_hash", Digest)],
        EventType::ToolResponded => &[
            ("tool_name", Name),
            ("success", Bool),
            ("output_length", Count),
            ("latency_ms", Count),
            ("error_hash", Digest),
        ],
        EventType::RetrievalCalled => &[("index_name", Name), ("query_hash", Digest)],
        EventType::RetrievalResponded => &[
            ("index_name", Name),
            ("result_count", Count),
            ("top_score", Float),
            ("latency_ms", Count),
            // LangChain on_retriever_error, Haystack: digest of the exception text.
            ("error_hash", Digest),
        ],
        EventType::ExternalSignal => &[("signal_name", Name), ("source", Name), ("meta", Meta)],
        EventType::RunCompleted => &[
            ("total_steps", Count),
            ("exit_reason", Name),
            ("tool_call_count", Count),
            // Haystack: run wall-clock time.
            ("latency_ms", Count),
            // Hermes: run wall-clock time and whether the user interrupted it.
            ("duration_ms", Count),
            ("interrupted", Bool),
        ],
        EventType::RunErrored => &[
            ("error_type", Name),
            ("error_hash", Digest),
            ("step_index", Count),
            // The SDK's run() when a stop policy raises PolicyViolation:
            // exit_reason "policy_violation" and the policy's name.
            ("exit_reason", Name),
            ("policy_name", Name),
            // Hermes: as on run.completed.
            ("duration_ms", Count),
            ("interrupted", Bool),
        ],
        EventType::PolicyTriggered => &[
            ("policy_name", Name),
            ("action_type", Name),
            ("trigger", Name),
            ("value", ScalarOrNames),
        ],
    }
}

/// The payload keys accepted for `t`, for documentation and error messages.
pub fn payload_keys(t: EventType) -> Vec<&'static str> {
    schema(t).iter().map(|(k, _)| *k).collect()
}

fn check_payload<'a>(t: EventType, payload: impl Iterator<Item = (&'a str, &'a Value)>) -> Res<()> {
    let fields = schema(t);
    for (k, v) in payload {
        let kind = match fields.iter().find(|(name, _)| *name == k) {
            Some((_, kind)) => *kind,
            None => {
                return unknown_key(
                    "payload",
                    k,
                    &format!("{} (for {t})", payload_keys(t).join(", ")),
                )
            }
        };
        // null carries nothing and reads as "absent" everywhere.
        if v.is_null() {
            continue;
        }
        // Checked under the bare key; the `payload.` path is only spelled out for an error.
        let checked = match kind {
            Field::Digest => check_digest(k, v),
            Field::Name => name_str(k, v, true).map(|_| ()),
            Field::Count => check_count(k, v),
            Field::Float => check_float(k, v),
            Field::Bool => check_bool(k, v),
            Field::Names => check_names_list(k, v, MAX_TOOLS),
            Field::Meta => check_meta(k, v),
            Field::Injection => check_injection(k, v),
            Field::ScalarOrNames if v.is_array() => check_names_list(k, v, MAX_PATTERNS),
            Field::ScalarOrNames => check_scalar(k, v),
        };
        checked.map_err(|mut e| {
            e.field = format!("payload.{}", e.field);
            e
        })?;
    }
    Ok(())
}

const ENVELOPE: [&str; 8] = [
    "event_type",
    "run_id",
    "agent_id",
    "agent_version",
    "step_index",
    "timestamp",
    "payload",
    "parent_run_id",
];

/// The envelope fields other than `payload`, as [`check_event`] reads them: from a JSON map
/// (an event built in memory) or from a [`Payload`] list (a batch read from text).
trait Fields {
    fn field(&self, key: &str) -> Option<&Value>;
    /// The first key, in order, that an envelope may not have.
    fn unknown_key(&self) -> Option<&str>;
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
    fn unknown_key(&self) -> Option<&str> {
        self.keys()
            .map(String::as_str)
            .find(|k| !ENVELOPE.contains(k))
    }
}

impl Fields for Payload {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
    fn unknown_key(&self) -> Option<&str> {
        self.iter().map(|(k, _)| k).find(|k| !ENVELOPE.contains(k))
    }
}

/// An envelope's `payload`, wherever it was read from.
enum PayloadRef<'a> {
    /// Missing or `null`.
    Absent,
    Map(&'a Map<String, Value>),
    List(&'a Payload),
    Other(&'a Value),
}

impl<'a> PayloadRef<'a> {
    fn of_value(v: Option<&'a Value>) -> PayloadRef<'a> {
        match v {
            None | Some(Value::Null) => PayloadRef::Absent,
            Some(Value::Object(m)) => PayloadRef::Map(m),
            Some(other) => PayloadRef::Other(other),
        }
    }

    fn of_node(n: Option<&'a Node<Payload>>) -> PayloadRef<'a> {
        match n {
            None | Some(Node::Other(Value::Null)) => PayloadRef::Absent,
            Some(Node::Object(p)) => PayloadRef::List(p),
            Some(Node::Other(other)) => PayloadRef::Other(other),
        }
    }
}

fn required<'a>(obj: &'a impl Fields, key: &str) -> Res<&'a Value> {
    match obj.field(key) {
        Some(v) if !v.is_null() => Ok(v),
        _ => err(ErrorKind::InvalidValue, key, "is required"),
    }
}

/// Validates one envelope; `now` (epoch seconds) fills a missing timestamp.
pub fn parse_event(v: &Value, now: f64) -> Res<Event> {
    let obj = match v.as_object() {
        Some(o) => o,
        None => return wrong_type("", "an event object", v),
    };
    let mut event = check_event(obj, PayloadRef::of_value(obj.get("payload")), now)?;
    if let Some(Value::Object(p)) = obj.get("payload") {
        event.payload = p.clone().into();
    }
    Ok(event)
}

/// [`parse_event`] for an envelope read from text: its payload is moved, not copied.
fn parse_envelope(e: Envelope, now: f64) -> Res<Event> {
    let mut event = check_event(&e.fields, PayloadRef::of_node(e.payload.as_ref()), now)?;
    if let Some(Node::Object(p)) = e.payload {
        event.payload = p;
    }
    Ok(event)
}

/// Checks an envelope; the event returned has an empty payload (the payload is checked).
fn check_event(obj: &impl Fields, payload: PayloadRef<'_>, now: f64) -> Res<Event> {
    if let Some(k) = obj.unknown_key() {
        return unknown_key("", k, &ENVELOPE.join(", "));
    }
    let et = required(obj, "event_type")?;
    let et_str = match et.as_str() {
        Some(s) => s,
        None => return wrong_type("event_type", "a string", et),
    };
    let event_type = match EventType::parse(et_str) {
        Some(t) => t,
        None => {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            return err(
                ErrorKind::InvalidValue,
                "event_type",
                format!("unknown event type; accepted: {}", known.join(", ")),
            );
        }
    };
    let run_id = check_name("run_id", required(obj, "run_id")?, false)?;
    let agent_id = check_name("agent_id", required(obj, "agent_id")?, false)?;
    let agent_version = check_name("agent_version", required(obj, "agent_version")?, false)?;
    let step = required(obj, "step_index")?;
    let step_index = match step.as_i64() {
        Some(s) if s < 0 => {
            return err(
                ErrorKind::InvalidValue,
                "step_index",
                "must not be negative",
            )
        }
        Some(s) if s > i64::from(i32::MAX) => {
            return err(ErrorKind::InvalidValue, "step_index", "is too large")
        }
        Some(s) => s as i32,
        None if step.is_number() => {
            return err(ErrorKind::InvalidValue, "step_index", "must be an integer")
        }
        None => return wrong_type("step_index", "an integer", step),
    };
    let timestamp = match obj.field("timestamp") {
        None | Some(Value::Null) => now,
        Some(t) => match t.as_f64() {
            Some(x) if x.is_finite() => x,
            Some(_) => return err(ErrorKind::InvalidValue, "timestamp", "must be finite"),
            None => return wrong_type("timestamp", "a number (unix epoch seconds)", t),
        },
    };
    match payload {
        PayloadRef::Absent => {}
        PayloadRef::Map(m) => check_payload(event_type, m.iter().map(|(k, v)| (k.as_str(), v)))?,
        PayloadRef::List(p) => check_payload(event_type, p.iter())?,
        PayloadRef::Other(p) => return wrong_type("payload", "an object", p),
    }
    let parent_run_id = match obj.field("parent_run_id") {
        None | Some(Value::Null) => None,
        Some(p) => Some(check_name("parent_run_id", p, false)?),
    };
    Ok(Event {
        event_type,
        run_id,
        agent_id,
        agent_version,
        step_index,
        timestamp,
        payload: Payload::new(),
        parent_run_id,
    })
}

/// Validates a batch: one envelope object or an array of 1..=`MAX_BATCH` envelopes.
pub fn parse_batch(v: &Value, now: f64) -> Res<Vec<Event>> {
    // The same path as text, so both always agree.
    parse_batch_text(&v.to_string(), now)
}

/// Why text is not a batch. serde_json's syntax errors are fixed phrases with a position; its
/// data errors may quote what they met (`invalid type: string "…"`), so only their position
/// is kept.
fn json_error_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("is not valid JSON ({e})"),
        Category::Data | Category::Io => format!(
            "is not valid JSON (unexpected value at line {} column {})",
            e.line(),
            e.column()
        ),
    }
}

/// Parses JSON text and validates it as a batch.
pub fn parse_batch_text(text: &str, now: f64) -> Res<Vec<Event>> {
    let batch: Batch = serde_json::from_str(text).map_err(|e| ValidationError {
        kind: ErrorKind::InvalidType,
        index: None,
        field: "events".into(),
        message: json_error_message(&e),
    })?;
    validate_batch(batch, now)
}

/// Validates a batch already read into envelopes (from JSON text, or from a jsonb value by
/// the extension).
pub fn validate_batch(batch: Batch, now: f64) -> Res<Vec<Event>> {
    let items = match batch {
        Batch::One(e) => vec![Node::Object(e)],
        Batch::Many(items) => items,
        Batch::Other(v) => {
            return wrong_type("events", "an event object or an array of events", &v)
        }
    };
    if items.is_empty() {
        return err(
            ErrorKind::InvalidValue,
            "events",
            "must contain at least one event",
        );
    }
    if items.len() > MAX_BATCH {
        return err(
            ErrorKind::InvalidValue,
            "events",
            format!(
                "a batch holds at most {MAX_BATCH} events, got {}; split it",
                items.len()
            ),
        );
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let parsed = match item {
                Node::Object(e) => parse_envelope(e, now),
                Node::Other(v) => wrong_type("", "an event object", &v),
            };
            parsed.map_err(|mut e| {
                e.index = Some(i);
                e
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const H16: &str = "0123456789abcdef";

    fn ev(t: &str, payload: Value) -> Value {
        json!({"event_type": t, "run_id": "r-1", "agent_id": "a", "agent_version": "v1",
               "step_index": 1, "timestamp": 1700000000.5, "payload": payload})
    }

    fn fails(v: Value) -> ValidationError {
        parse_batch(&v, 0.0).unwrap_err()
    }

    #[test]
    fn every_event_type_is_accepted() {
        let batch = json!([
            ev(
                "run.started",
                json!({"input_hash": H16, "model": "gpt-4o", "tools": ["search", "calc"],
                "injection_signal": {"matched_pattern_count": 2, "matched_patterns": ["ignore_previous", "jailbreak"], "input_length": 80}})
            ),
            ev(
                "llm.called",
                json!({"model": "gpt-4o", "prompt_tokens": 120})
            ),
            ev(
                "llm.responded",
                json!({"completion_tokens": 5, "latency_ms": 300, "finish_reason": "stop",
                "output_hash": "a".repeat(64), "output_length": 17, "prompt_tokens": 120, "reasoning_tokens": 0})
            ),
            ev(
                "tool.called",
                json!({"tool_name": "search", "args_hash": H16})
            ),
            ev(
                "tool.responded",
                json!({"tool_name": "search", "success": false, "output_length": 0, "latency_ms": 12, "error_hash": H16})
            ),
            ev(
                "retrieval.called",
                json!({"index_name": "docs", "query_hash": ""})
            ),
            ev(
                "retrieval.responded",
                json!({"index_name": "docs", "result_count": 0, "top_score": null, "latency_ms": 3})
            ),
            ev(
                "external.signal",
                json!({"signal_name": "rate_limited", "source": "openai", "meta": {"retry_after": 2.5, "region": "eu-west-1"}})
            ),
            ev(
                "policy.triggered",
                json!({"policy_name": "max_steps", "action_type": "stop", "trigger": "step_count", "value": 20})
            ),
            ev(
                "run.completed",
                json!({"total_steps": 4, "exit_reason": "final_answer", "tool_call_count": 1})
            ),
            ev(
                "run.errored",
                json!({"error_type": "TimeoutError", "error_hash": H16, "step_index": 4})
            ),
        ]);
        let events = parse_batch(&batch, 0.0).unwrap();
        assert_eq!(events.len(), 11);
        assert_eq!(events[0].event_type, EventType::RunStarted);
        assert_eq!(events[10].event_type, EventType::RunErrored);
        assert_eq!(events[1].timestamp, 1700000000.5);
    }

    #[test]
    fn single_object_and_defaults() {
        let v = json!({"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 0});
        let e = parse_batch(&v, 42.0).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].timestamp, 42.0);
        assert!(e[0].payload.is_empty());
    }

    #[test]
    fn raw_content_is_refused() {
        let e = fails(json!([
            ev("run.started", json!({})),
            ev(
                "llm.responded",
                json!({"output_hash": "The capital of France is Paris"})
            )
        ]));
        assert_eq!(e.index, Some(1));
        assert_eq!(e.field, "payload.output_hash");
        assert_eq!(e.kind, ErrorKind::InvalidValue);
        assert!(
            !e.to_string().contains("Paris"),
            "error must not echo content: {e}"
        );

        let e = fails(json!([ev(
            "llm.called",
            json!({"prompt": "What is the capital of France?"})
        )]));
        assert_eq!(e.field, "payload.prompt");
        assert!(e.message.contains("unknown key"));

        let e = fails(json!([ev(
            "tool.called",
            json!({"tool_name": "look up the weather in Paris"})
        )]));
        assert_eq!(e.field, "payload.tool_name");

        let e = fails(json!([ev("run.started", json!({"input_text": "hello"}))]));
        assert_eq!(e.field, "payload.input_text");
    }

    fn echoed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_-.:/@?…".contains(c)
    }

    #[test]
    fn echo_name_caps_length_and_characters() {
        assert_eq!(echo_name("tool_name"), "tool_name");
        assert_eq!(echo_name("a-b.c:d/e@f"), "a-b.c:d/e@f");
        assert_eq!(echo_name(""), "");
        assert_eq!(echo_name("a b\n\"c'é😀+="), "a?b??c?????");
        let exact = "k".repeat(ECHO_MAX_CHARS);
        assert_eq!(echo_name(&exact), exact);
        let long = echo_name(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), ECHO_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
        // Multi-byte characters are cut on a character boundary.
        let wide = echo_name(&"é".repeat(100));
        assert_eq!(wide, format!("{}…", "?".repeat(ECHO_MAX_CHARS)));
    }

    /// Unknown keys, wherever they appear, are echoed only through `echo_name`.
    #[test]
    fn unknown_keys_are_echoed_short_and_inert() {
        let huge = "k".repeat(10_000);
        let nasty = "dt_secretkey_0123456789abcdef\n\"'; DROP TABLE x; -- ünïcødé 😀 \u{0}\t end"
            .to_string()
            + &"z".repeat(500);
        for key in [huge.as_str(), nasty.as_str()] {
            let cases = [
                json!([ev("llm.called", json!({ key: 1 }))]),
                {
                    let mut e = ev("llm.called", json!({}));
                    e[key] = json!("value");
                    json!([e])
                },
                json!([ev("run.started", json!({"injection_signal": { key: 1 }}))]),
            ];
            for case in cases {
                let e = fails(case);
                let shown = e.to_string();
                assert!(e.message.contains("unknown key"), "{shown}");
                let echo = ["payload.injection_signal.", "payload.", ""]
                    .iter()
                    .find_map(|p| e.field.strip_prefix(p))
                    .unwrap();
                assert_eq!(echo, echo_name(key), "{shown}");
                assert!(echo.chars().count() <= ECHO_MAX_CHARS + 1, "{shown}");
                assert!(echo.chars().all(echoed), "{shown}");
                assert!(
                    shown.chars().count() < 400,
                    "{} chars",
                    shown.chars().count()
                );
                assert!(!shown.contains('\n') && !shown.contains('"') && !shown.contains('ü'));
                assert!(!shown.contains("end") && !shown.contains("zzz"), "{shown}");
                assert!(!shown.contains("value"), "{shown}");
            }
        }
        // A meta key that is a valid name but long: its path is capped too.
        let long_name = "m".repeat(MAX_NAME_LEN);
        let e = fails(json!([ev(
            "external.signal",
            json!({"meta": { long_name.as_str(): "a secret sentence" }})
        )]));
        assert_eq!(
            e.field,
            format!("payload.meta.{}…", "m".repeat(ECHO_MAX_CHARS))
        );
        assert!(!e.to_string().contains("sentence"));
        // A meta key that is not a name is refused without being echoed.
        let e = fails(json!([ev(
            "external.signal",
            json!({"meta": { nasty.as_str(): 1 }})
        )]));
        assert_eq!(e.field, "payload.meta key");
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn errors_never_carry_values() {
        let secret = "dt_secretkey_do_not_log";
        let cases = [
            json!([ev(
                "tool.called",
                json!({"tool_name": format!("{secret} with spaces")})
            )]),
            json!([ev("llm.responded", json!({"output_hash": secret}))]),
            json!([ev(
                "run.started",
                json!({"tools": ["ok", format!("{secret}!")]})
            )]),
            json!([ev(
                "external.signal",
                json!({"meta": {"k": format!("{secret} x")}})
            )]),
            json!([ev("nope", json!({}))]),
            json!([{"event_type": secret, "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 0}]),
            json!([{"event_type": "run.started", "run_id": format!("{secret} "), "agent_id": "a", "agent_version": "v", "step_index": 0}]),
            json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 0, "parent_run_id": format!("{secret}\n")}]),
            json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": secret}]),
        ];
        for case in cases {
            let e = fails(case.clone());
            assert!(!e.to_string().contains("secret"), "{case} -> {e}");
        }
        // serde_json's data errors quote what they met; only their position is kept.
        let data = serde_json::from_str::<u8>(&format!("\"{secret}\"")).unwrap_err();
        assert!(data.to_string().contains(secret));
        let msg = json_error_message(&data);
        assert!(!msg.contains("secret"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        let e = parse_batch_text(&format!("{{\"{secret}\": tru"), 0.0).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    /// Regression: envelopes and payloads of very many keys are read in linear time (then
    /// refused for their first unknown key).
    #[test]
    fn many_keys_are_read_in_linear_time() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("\"k{i}\":1")).collect();
        let keys = keys.join(",");
        let start = std::time::Instant::now();
        let e = parse_batch_text(
            &format!(r#"[{{"event_type":"llm.called","payload":{{{keys}}}}}]"#),
            0.0,
        )
        .unwrap_err();
        assert_eq!(e.field, "run_id");
        let e = parse_batch_text(&format!("[{{{keys}}}]"), 0.0).unwrap_err();
        assert_eq!(e.field, "k0");
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    }

    #[test]
    fn digests_must_be_lowercase_hex_16_to_64() {
        assert!(is_digest(""));
        assert!(is_digest(H16));
        assert!(is_digest(&"f".repeat(64)));
        assert!(!is_digest(&"f".repeat(15)));
        assert!(!is_digest(&"f".repeat(65)));
        assert!(!is_digest("0123456789ABCDEF"));
        assert!(!is_digest("0123456789abcdeg"));
    }

    #[test]
    fn rejections_name_index_field_and_kind() {
        let cases: Vec<(Value, &str, ErrorKind)> = vec![
            (
                json!([ev("nope", json!({}))]),
                "event_type",
                ErrorKind::InvalidValue,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": -1}]),
                "step_index",
                ErrorKind::InvalidValue,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": "1"}]),
                "step_index",
                ErrorKind::InvalidType,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 1.5}]),
                "step_index",
                ErrorKind::InvalidValue,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 0, "timestamp": "now"}]),
                "timestamp",
                ErrorKind::InvalidType,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "", "agent_id": "a", "agent_version": "v", "step_index": 0}]),
                "run_id",
                ErrorKind::InvalidValue,
            ),
            (
                json!([{"event_type": "run.started", "agent_id": "a", "agent_version": "v", "step_index": 0}]),
                "run_id",
                ErrorKind::InvalidValue,
            ),
            (
                json!([{"event_type": "run.started", "run_id": "r", "agent_id": "a", "agent_version": "v", "step_index": 0, "extra": 1}]),
                "extra",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("llm.called", json!({"prompt_tokens": -5}))]),
                "payload.prompt_tokens",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("llm.called", json!({"prompt_tokens": "5"}))]),
                "payload.prompt_tokens",
                ErrorKind::InvalidType,
            ),
            (
                json!([ev("tool.responded", json!({"success": "yes"}))]),
                "payload.success",
                ErrorKind::InvalidType,
            ),
            (
                json!([ev("run.started", json!({"tools": "search"}))]),
                "payload.tools",
                ErrorKind::InvalidType,
            ),
            (
                json!([ev(
                    "run.started",
                    json!({"injection_signal": {"raw_input": "x"}})
                )]),
                "payload.injection_signal.raw_input",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev(
                    "external.signal",
                    json!({"meta": {"note": "a long sentence here"}})
                )]),
                "payload.meta.note",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("run.started", json!([]))]),
                "payload",
                ErrorKind::InvalidType,
            ),
            (json!("x"), "events", ErrorKind::InvalidType),
            (json!([]), "events", ErrorKind::InvalidValue),
        ];
        for (v, field, kind) in cases {
            let e = parse_batch(&v, 0.0).unwrap_err();
            assert_eq!(e.field, field, "{v} -> {e}");
            assert_eq!(e.kind, kind, "{v} -> {e}");
        }
    }

    #[test]
    fn oversize_batches_are_refused() {
        let one = ev("llm.called", json!({}));
        let batch = Value::Array(vec![one; MAX_BATCH + 1]);
        let e = parse_batch(&batch, 0.0).unwrap_err();
        assert_eq!(e.field, "events");
        assert!(e.message.contains("at most 1000"));
        let ok = Value::Array(vec![ev("llm.called", json!({})); MAX_BATCH]);
        assert_eq!(parse_batch(&ok, 0.0).unwrap().len(), MAX_BATCH);
    }

    #[test]
    fn non_json_and_out_of_range_numbers() {
        let e = parse_batch_text("{not json", 0.0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidType);
        let e = parse_batch_text(r#"{"event_type":"run.started","run_id":"r","agent_id":"a","agent_version":"v","step_index":0,"timestamp":1e400}"#, 0.0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidType);
        let e = parse_batch_text(r#"{"event_type":"run.started","run_id":"r","agent_id":"a","agent_version":"v","step_index":99999999999}"#, 0.0).unwrap_err();
        assert_eq!(e.field, "step_index");
    }

    #[test]
    fn timestamps_parse_with_correct_rounding() {
        let e = parse_batch_text(r#"{"event_type":"run.started","run_id":"r","agent_id":"a","agent_version":"v","step_index":0,"timestamp":1732550000.123456789}"#, 0.0).unwrap();
        assert_eq!(
            e[0].timestamp,
            "1732550000.123456789".parse::<f64>().unwrap()
        );
    }

    /// Payloads exactly as the hashed SDK releases (0.3.x) and their integrations emit them.
    #[test]
    fn text_batches_and_in_memory_events_are_checked_alike() {
        let base = || {
            json!({"event_type": "tool.called", "run_id": "r", "agent_id": "a",
                   "agent_version": "v", "step_index": 1, "timestamp": 5.5,
                   "payload": {"tool_name": "search", "args_hash": H16}})
        };
        let mut cases = vec![base()];
        for (k, v) in [
            ("payload", json!(null)),
            ("payload", json!([1])),
            ("payload", json!("x")),
            ("payload", json!({"tool_name": "has space"})),
            ("payload", json!({"tool_name": "s", "prompt": "hi"})),
            ("extra", json!(1)),
            ("step_index", json!(1.5)),
            ("timestamp", json!("now")),
            ("run_id", json!(null)),
            ("parent_run_id", json!("p")),
        ] {
            let mut e = base();
            e[k] = v;
            cases.push(e);
        }
        let mut no_payload = base();
        no_payload.as_object_mut().unwrap().remove("payload");
        cases.push(no_payload);
        cases.push(json!(7));
        for case in cases {
            let in_memory = parse_event(&case, 0.0).map_err(|mut e| {
                e.index = Some(0);
                e
            });
            let text = parse_batch_text(&json!([case]).to_string(), 0.0);
            assert_eq!(text, in_memory.map(|e| vec![e]), "{case}");
        }
        // A repeated key keeps its last value, as a JSON map does.
        let dup = r#"[{"event_type":"tool.called","run_id":"r","agent_id":"a","agent_version":"v",
                      "step_index":1,"payload":{"tool_name":"a b","tool_name":"ok"}}]"#;
        let e = parse_batch_text(dup, 0.0).unwrap();
        assert_eq!(e[0].str("tool_name"), Some("ok"));
    }

    #[test]
    fn sdk_0_3_payloads_are_accepted() {
        let cases = [
            // client.run(): a stop policy raised PolicyViolation.
            ev(
                "run.errored",
                json!({"error_type": "PolicyViolation", "error_hash": H16,
                       "exit_reason": "policy_violation", "policy_name": "cap_tool_calls",
                       "step_index": 3}),
            ),
            // RunContext.llm_responded() with reasoning tokens (auto-instrumented OpenAI).
            ev(
                "llm.responded",
                json!({"completion_tokens": 12, "latency_ms": 800, "finish_reason": "stop",
                       "output_hash": H16, "output_length": 40, "prompt_tokens": 300,
                       "reasoning_tokens": 128}),
            ),
            // LangChain on_llm_error / Haystack LLM component error.
            ev(
                "llm.responded",
                json!({"finish_reason": "error", "output_hash": "", "output_length": 0,
                       "latency_ms": 0, "error_hash": H16}),
            ),
            // Haystack LLM reply with the model.
            ev(
                "llm.responded",
                json!({"finish_reason": "stop", "output_hash": H16, "output_length": 9,
                       "latency_ms": 5, "model": "gpt-4o-mini", "prompt_tokens": 10,
                       "completion_tokens": 3}),
            ),
            // LangChain on_retriever_error / Haystack retriever error.
            ev(
                "retrieval.responded",
                json!({"result_count": 0, "top_score": null, "error_hash": H16}),
            ),
            // Haystack pipeline end.
            ev(
                "run.completed",
                json!({"exit_reason": "final_answer", "total_steps": 4, "latency_ms": 1200}),
            ),
            // Hermes session end, completed and interrupted.
            ev(
                "run.completed",
                json!({"duration_ms": 5300, "interrupted": false}),
            ),
            ev(
                "run.errored",
                json!({"duration_ms": 5300, "interrupted": true}),
            ),
            // policy.triggered: the value of each SDK trigger.
            ev(
                "policy.triggered",
                json!({"policy_name": "loop_fix", "action_type": "inject_prompt",
                       "trigger": "signal", "value": ["TOOL_LOOP", "RETRY_STORM"]}),
            ),
            ev(
                "policy.triggered",
                json!({"policy_name": "cost_cap", "action_type": "switch_model",
                       "trigger": "cost_usd", "value": 0.51}),
            ),
            ev(
                "policy.triggered",
                json!({"policy_name": "no_truncation", "action_type": "log",
                       "trigger": "finish_reason", "value": "length"}),
            ),
            ev(
                "policy.triggered",
                json!({"policy_name": "p", "action_type": "log", "trigger": null, "value": null}),
            ),
        ];
        for (i, case) in cases.iter().enumerate() {
            if let Err(e) = parse_batch(case, 0.0) {
                panic!("case {i} refused: {e}");
            }
        }
    }

    #[test]
    fn widened_keys_still_refuse_content() {
        let cases: Vec<(Value, &str, ErrorKind)> = vec![
            (
                json!([ev(
                    "llm.responded",
                    json!({"error_hash": "Rate limit exceeded"})
                )]),
                "payload.error_hash",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("retrieval.responded", json!({"error": "index missing"}))]),
                "payload.error",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev(
                    "run.errored",
                    json!({"exit_reason": "the user asked to stop"})
                )]),
                "payload.exit_reason",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("run.errored", json!({"error_message": "boom"}))]),
                "payload.error_message",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("run.completed", json!({"interrupted": "yes"}))]),
                "payload.interrupted",
                ErrorKind::InvalidType,
            ),
            (
                json!([ev("run.completed", json!({"duration_ms": -1}))]),
                "payload.duration_ms",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev(
                    "policy.triggered",
                    json!({"value": ["TOOL_LOOP", "free text here"]})
                )]),
                "payload.value[1]",
                ErrorKind::InvalidValue,
            ),
            (
                json!([ev("policy.triggered", json!({"value": {"nested": 1}}))]),
                "payload.value",
                ErrorKind::InvalidType,
            ),
            (
                json!([ev("llm.responded", json!({"output_text": "Paris"}))]),
                "payload.output_text",
                ErrorKind::InvalidValue,
            ),
        ];
        for (v, field, kind) in cases {
            let e = parse_batch(&v, 0.0).unwrap_err();
            assert_eq!(e.field, field, "{v} -> {e}");
            assert_eq!(e.kind, kind, "{v} -> {e}");
        }
    }
}
