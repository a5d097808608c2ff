//! Property ("fuzz") tests of everything that reads untrusted input: the batch validator
//! (`validate::parse_batch`, `parse_batch_text`, `parse_event`, `validate_batch`) and the jsonb
//! binary reader (`jsonb::read_batch`, `jsonb::read_payload`).
//!
//! No input may panic, abort, recurse without bound or allocate without bound: every refusal
//! is an `Err`. Accepted input satisfies the documented limits and validates again, and error
//! messages never carry a value from the batch.
//!
//! Deterministic by default (a fixed seed, no persisted failure files), so CI is reproducible.
//! `DUNETRACE_FUZZ_CASES=N` runs N cases per property, `DUNETRACE_FUZZ_SEED=S` picks another
//! seed, e.g. for a long local run:
//!
//! ```text
//! DUNETRACE_FUZZ_CASES=200000 DUNETRACE_FUZZ_SEED=7 cargo test --release -p dunetrace-core --test fuzz
//! ```
//!
//! The jsonb inputs are made by a small encoder below ([`jb`]) that follows the layout
//! described at the top of `core/src/jsonb.rs` (PostgreSQL's `jsonb.h`): container headers,
//! JEntries with an offset every 32nd entry, 4-byte alignment of numerics and containers, and
//! numerics as `numeric` varlenas (short and long formats, 1- and 4-byte varlena headers). It
//! is checked first against the serde text path on known batches, then used to produce valid
//! encodings that are mutated (bit flips, truncations, corrupted counts, lengths and offsets)
//! so the fuzzing reaches past the first bounds check.

use dunetrace_core::envelope::{Batch, Envelope, Node};
use dunetrace_core::event::{Event, EventType, Payload};
use dunetrace_core::jsonb::{self, ReadError};
use dunetrace_core::validate::{
    echo_name, is_digest, parse_batch, parse_batch_text, parse_event, payload_keys, validate_batch,
    ValidationError, ECHO_MAX_CHARS, MAX_BATCH, MAX_NAME_LEN,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// ---------------------------------------------------------------------------------------------
// Harness: case counts, seed, and a bound on every single allocation.

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// A runner: `default_cases` cases (or `DUNETRACE_FUZZ_CASES`), a fixed seed, nothing persisted.
fn runner(default_cases: u32, salt: u64) -> TestRunner {
    let cases = env_u64("DUNETRACE_FUZZ_CASES").map_or(default_cases, |n| n as u32);
    let seed = env_u64("DUNETRACE_FUZZ_SEED").unwrap_or(0x6475_6e65_7472_6163);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed ^ salt),
        max_shrink_iters: 512,
        // A failure is reported within seconds, even when its input is big.
        max_shrink_time: 20_000,
        ..Config::default()
    })
}

fn run<S: Strategy>(
    mut r: TestRunner,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = r.run(&strategy, test) {
        let text = format!("{e}");
        let cut: String = text.chars().take(4000).collect();
        panic!("property failed: {cut}");
    }
}

/// Records, per thread, the largest single allocation requested, so a test can check that
/// no input makes the code under test ask for memory out of proportion to its size (a
/// corrupt count must not become a multi-gigabyte `Vec::with_capacity`).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f`, failing the case if any single allocation it made exceeded `limit` bytes.
fn bounded<R>(limit: usize, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    LARGEST.with(|c| c.set(0));
    let r = f();
    let largest = LARGEST.with(|c| c.get());
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "allocated {largest} bytes at once (limit {limit})"
        )));
    }
    Ok(r)
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Generators of JSON shaped like batches.

const NOW: f64 = 1_700_000_000.0;
/// Every generated string value that is not a valid name carries this marker; no error
/// message may contain it (messages never echo values).
const VALMARK: &str = "VALMARK";

fn all_keys() -> Vec<&'static str> {
    let mut keys = vec![
        "event_type",
        "run_id",
        "agent_id",
        "agent_version",
        "step_index",
        "timestamp",
        "payload",
        "parent_run_id",
        "matched_pattern_count",
        "matched_patterns",
        "input_length",
    ];
    for t in EventType::ALL {
        keys.extend(payload_keys(t));
    }
    keys.sort();
    keys.dedup();
    keys
}

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => "[A-Za-z0-9_.:/@+=#~-]{1,24}",
        1 => "[a-z]{100,128}",
    ]
    .boxed()
}

fn digest() -> BoxedStrategy<String> {
    prop_oneof![Just(String::new()), "[0-9a-f]{16,64}"].boxed()
}

/// Any key: known ones, identifiers, unicode, control characters, very long ones.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(all_keys()).prop_map(str::to_string),
        2 => "[a-z_]{1,12}",
        1 => any::<String>(),
        1 => "\\PC{0,8}[\n\t\"\\\\' ]\\PC{0,8}",
        1 => (41usize..12_000).prop_map(|n| format!("KEYMARK{}", "k".repeat(n))),
        1 => Just(String::new()),
    ]
    .boxed()
}

/// Any string value; the ones that are not names carry [`VALMARK`].
fn string_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => name(),
        2 => digest(),
        1 => Just(String::new()),
        2 => any::<String>().prop_map(|s| format!("{VALMARK}{s}")),
        1 => "[A-Z]{0,5}[\n \"\\\\]{1,3}\\PC{0,20}".prop_map(|s| format!("{VALMARK} {s}")),
        1 => (1usize..20_000).prop_map(|n| format!("{VALMARK} {}", "é".repeat(n))),
        1 => "[0-9A-Fa-fg]{10,70}".prop_map(|s| format!("{VALMARK}{s}")),
    ]
    .boxed()
}

fn finite_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.1,
            1.5,
            1e-7,
            5e-324,
            f64::MIN_POSITIVE,
            1e15,
            1e21,
            1e308,
            -1e308,
            f64::MAX,
            1_700_000_000.5,
            2_147_483_647.0,
            2_147_483_648.0,
            -1.0,
        ]),
        (-1e12f64..1e12f64),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..40).prop_map(Value::from),
        prop::sample::select(vec![
            i64::MIN,
            i64::MAX,
            i32::MAX as i64,
            i32::MAX as i64 + 1,
            -1,
            0
        ])
        .prop_map(Value::from),
        finite_f64().prop_map(Value::from),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string_value().prop_map(Value::String),
    ]
    .boxed()
}

/// Arbitrary JSON: nested arrays and objects of any keys and leaves.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(5, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A content-free scalar: null, bool, number or short name.
fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        prop_oneof![Just(String::new()), name()].prop_map(Value::String),
    ]
    .boxed()
}

/// A value the schema accepts for payload key `key`.
fn valid_value(key: &'static str) -> BoxedStrategy<Value> {
    let names = |max: usize| prop::collection::vec(name().prop_map(Value::String), 0..max);
    let count = || {
        prop_oneof![0u64..1000, 0..=i64::MAX as u64]
            .prop_map(Value::from)
            .boxed()
    };
    let v = match key {
        k if k.ends_with("_hash") => digest().prop_map(Value::String).boxed(),
        "model" | "finish_reason" | "tool_name" | "index_name" | "signal_name" | "source"
        | "exit_reason" | "error_type" | "policy_name" | "action_type" | "trigger" => {
            prop_oneof![Just(String::new()), name()]
                .prop_map(Value::String)
                .boxed()
        }
        "top_score" => finite_f64().prop_map(Value::from).boxed(),
        "success" | "interrupted" => any::<bool>().prop_map(Value::Bool).boxed(),
        "tools" => names(6).prop_map(Value::Array).boxed(),
        "meta" => prop::collection::vec((name(), scalar()), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
            .boxed(),
        "injection_signal" => (
            prop::option::of(count()),
            prop::option::of(names(4)),
            prop::option::of(count()),
        )
            .prop_map(|(c, p, l)| {
                let mut m = Map::new();
                if let Some(c) = c {
                    m.insert("matched_pattern_count".into(), c);
                }
                if let Some(p) = p {
                    m.insert("matched_patterns".into(), Value::Array(p));
                }
                if let Some(l) = l {
                    m.insert("input_length".into(), l);
                }
                Value::Object(m)
            })
            .boxed(),
        "value" => prop_oneof![scalar(), names(4).prop_map(Value::Array)].boxed(),
        _ => count(),
    };
    prop_oneof![9 => v, 1 => Just(Value::Null)].boxed()
}

/// One event the validator must accept.
fn valid_event() -> BoxedStrategy<Value> {
    (0..EventType::ALL.len())
        .prop_flat_map(|i| {
            let t = EventType::ALL[i];
            let keys = payload_keys(t);
            let n = keys.len();
            let payload = prop::sample::subsequence(keys, 0..=n)
                .prop_flat_map(|ks| {
                    ks.into_iter()
                        .map(|k| valid_value(k).prop_map(move |v| (k.to_string(), v)))
                        .collect::<Vec<_>>()
                })
                .prop_map(|kv| Value::Object(kv.into_iter().collect()));
            (
                Just(t),
                (name(), name(), name()),
                prop_oneof![0i64..50, 0..=i32::MAX as i64],
                prop::option::of(finite_f64()),
                prop::option::of(name()),
                prop_oneof![3 => payload.prop_map(Some), 1 => Just(None)],
            )
        })
        .prop_map(|(t, (run, agent, version), step, ts, parent, payload)| {
            let mut m = Map::new();
            m.insert("event_type".into(), json!(t.as_str()));
            m.insert("run_id".into(), json!(run));
            m.insert("agent_id".into(), json!(agent));
            m.insert("agent_version".into(), json!(version));
            m.insert("step_index".into(), json!(step));
            if let Some(ts) = ts {
                m.insert("timestamp".into(), json!(ts));
            }
            if let Some(p) = parent {
                m.insert("parent_run_id".into(), json!(p));
            }
            if let Some(p) = payload {
                m.insert("payload".into(), p);
            }
            Value::Object(m)
        })
        .boxed()
}

fn valid_batch() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => valid_event(),
        3 => prop::collection::vec(valid_event(), 1..8).prop_map(Value::Array),
    ]
    .boxed()
}

/// One change to a batch.
#[derive(Debug, Clone)]
enum Mutation {
    SetField(Index, String, Value),
    RemoveField(Index, String),
    SetPayloadKey(Index, String, Value),
    ReplacePayload(Index, Value),
    ReplaceEvent(Index, Value),
    /// Wraps a field's value (or the payload's) in `n` arrays or objects.
    Nest(Index, String, usize, bool),
    LongString(Index, String, usize),
    /// Repeats the first event until the batch has `n` items (fewer if that is over 1 MB).
    Grow(usize),
    /// The batch becomes its first item (a single object, or whatever it was).
    Single,
    Empty,
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => (any::<Index>(), key(), json_value()).prop_map(|(i, k, v)| Mutation::SetField(i, k, v)),
        2 => (any::<Index>(), key()).prop_map(|(i, k)| Mutation::RemoveField(i, k)),
        4 => (any::<Index>(), key(), json_value())
            .prop_map(|(i, k, v)| Mutation::SetPayloadKey(i, k, v)),
        1 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::ReplacePayload(i, v)),
        1 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::ReplaceEvent(i, v)),
        1 => (any::<Index>(), key(), 1usize..300, any::<bool>())
            .prop_map(|(i, k, n, o)| Mutation::Nest(i, k, n, o)),
        1 => (any::<Index>(), key(), 1usize..50_000)
            .prop_map(|(i, k, n)| Mutation::LongString(i, k, n)),
        1 => prop_oneof![2usize..50, (MAX_BATCH - 2)..(MAX_BATCH + 3)].prop_map(Mutation::Grow),
        1 => Just(Mutation::Single),
        1 => Just(Mutation::Empty),
    ]
    .boxed()
}

fn item(batch: &mut Value, at: usize) -> &mut Value {
    match batch {
        Value::Array(a) => &mut a[at],
        other => other,
    }
}

fn apply(batch: &mut Value, m: Mutation) {
    let index_of = |batch: &Value, i: &Index| -> Option<usize> {
        match batch {
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(i.index(a.len())),
            _ => Some(0),
        }
    };
    match m {
        Mutation::SetField(i, k, v) => {
            if let Some(at) = index_of(batch, &i) {
                if let Value::Object(o) = item(batch, at) {
                    o.insert(k, v);
                }
            }
        }
        Mutation::RemoveField(i, k) => {
            if let Some(at) = index_of(batch, &i) {
                if let Value::Object(o) = item(batch, at) {
                    o.remove(&k);
                }
            }
        }
        Mutation::SetPayloadKey(i, k, v) => {
            if let Some(at) = index_of(batch, &i) {
                if let Some(Value::Object(p)) = item(batch, at).get_mut("payload") {
                    p.insert(k, v);
                }
            }
        }
        Mutation::ReplacePayload(i, v) => {
            if let Some(at) = index_of(batch, &i) {
                if let Value::Object(o) = item(batch, at) {
                    o.insert("payload".into(), v);
                }
            }
        }
        Mutation::ReplaceEvent(i, v) => {
            if let Some(at) = index_of(batch, &i) {
                *item(batch, at) = v;
            }
        }
        Mutation::Nest(i, k, n, as_object) => {
            if let Some(at) = index_of(batch, &i) {
                let ev = item(batch, at);
                let slot = match ev.get_mut("payload") {
                    Some(Value::Object(p)) if !p.is_empty() => {
                        let first = p.keys().next().cloned().unwrap();
                        p.get_mut(&first).unwrap()
                    }
                    _ => match ev {
                        Value::Object(o) => o.entry(k).or_insert(Value::Null),
                        other => other,
                    },
                };
                let mut v = slot.take();
                for _ in 0..n {
                    v = if as_object {
                        json!({ "k": v })
                    } else {
                        json!([v])
                    };
                }
                *slot = v;
            }
        }
        Mutation::LongString(i, k, n) => {
            if let Some(at) = index_of(batch, &i) {
                if let Value::Object(o) = item(batch, at) {
                    o.insert(k, Value::String(format!("{VALMARK}{}", "x".repeat(n))));
                }
            }
        }
        Mutation::Grow(n) => {
            let first = match &*batch {
                Value::Array(a) => a.first().cloned(),
                other => Some(other.clone()),
            };
            if let Some(first) = first {
                // Huge, within reason: about 1 MB of JSON at most.
                let size = first.to_string().len().max(1);
                *batch = Value::Array(vec![first; n.min((1 << 20) / size).max(1)]);
            }
        }
        Mutation::Single => {
            if let Value::Array(a) = batch {
                if let Some(first) = a.first().cloned() {
                    *batch = first;
                }
            }
        }
        Mutation::Empty => *batch = json!([]),
    }
}

fn mutated_batch() -> BoxedStrategy<Value> {
    (valid_batch(), prop::collection::vec(mutation(), 0..4))
        .prop_map(|(mut b, ms)| {
            for m in ms {
                apply(&mut b, m);
            }
            b
        })
        .boxed()
}

/// Any batch-like input: arbitrary JSON, valid batches, and valid batches with mutations.
fn batch_like() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => json_value(),
        1 => prop::collection::vec(json_value(), 0..5).prop_map(Value::Array),
        2 => valid_batch(),
        6 => mutated_batch(),
    ]
    .boxed()
}

/// Container nesting depth (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties.

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/@+=#~".contains(c))
}

fn event_value(e: &Event) -> Value {
    let mut m = Map::new();
    m.insert("event_type".into(), json!(e.event_type.as_str()));
    m.insert("run_id".into(), json!(e.run_id));
    m.insert("agent_id".into(), json!(e.agent_id));
    m.insert("agent_version".into(), json!(e.agent_version));
    m.insert("step_index".into(), json!(e.step_index));
    m.insert("timestamp".into(), json!(e.timestamp));
    m.insert("payload".into(), serde_json::to_value(&e.payload).unwrap());
    if let Some(p) = &e.parent_run_id {
        m.insert("parent_run_id".into(), json!(p));
    }
    Value::Object(m)
}

/// Accepted events keep the documented limits and are accepted again, unchanged.
fn check_events(events: &[Event]) -> Result<(), TestCaseError> {
    ensure!(
        (1..=MAX_BATCH).contains(&events.len()),
        "{} events",
        events.len()
    );
    for e in events {
        ensure!(is_name(&e.run_id), "run_id {:?}", e.run_id);
        ensure!(is_name(&e.agent_id), "agent_id {:?}", e.agent_id);
        ensure!(is_name(&e.agent_version), "agent_version");
        ensure!(
            e.parent_run_id.as_deref().is_none_or(is_name),
            "parent_run_id"
        );
        ensure!(e.step_index >= 0, "step_index {}", e.step_index);
        ensure!(e.timestamp.is_finite(), "timestamp");
        let keys = payload_keys(e.event_type);
        for (k, v) in e.payload.iter() {
            ensure!(keys.contains(&k), "payload key {k:?} kept");
            if k.ends_with("_hash") && !v.is_null() {
                ensure!(v.as_str().is_some_and(is_digest), "{k} = {v}");
            }
            if let Value::String(s) = v {
                ensure!(!s.contains(VALMARK), "{k} kept a value with content");
            }
        }
        let again = parse_event(&event_value(e), 0.0);
        ensure!(
            again.as_ref() == Ok(e),
            "re-validating {e:?} gave {again:?}"
        );
    }
    Ok(())
}

/// Errors name a field and a rule, never a value, and stay short.
fn check_error(e: &ValidationError, items: Option<usize>) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    ensure!(!shown.contains(VALMARK), "error echoes a value: {shown}");
    ensure!(
        shown.chars().count() <= 400,
        "error of {} characters: {shown:.500}",
        shown.chars().count()
    );
    ensure!(
        e.field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/@?…[] ".contains(c)),
        "field {:?}",
        e.field
    );
    ensure!(
        !e.field.contains("KEYMARK") || e.field.contains('…'),
        "a long key echoed whole: {:?}",
        e.field
    );
    // A key is echoed as at most ECHO_MAX_CHARS characters and "…".
    for part in e.field.split('.') {
        ensure!(
            part.chars().count() <= ECHO_MAX_CHARS + 1 || part == echo_name(part),
            "field part {part:?}"
        );
    }
    if let (Some(i), Some(n)) = (e.index, items) {
        ensure!(i < n, "index {i} of {n}");
    }
    Ok(())
}

fn check_validation(batch: &Value) -> Result<(), TestCaseError> {
    let items = match batch {
        Value::Array(a) => Some(a.len()),
        _ => None,
    };
    let limit = 64 * batch.to_string().len() + (1 << 20);
    match bounded(limit, || parse_batch(batch, NOW))? {
        Ok(events) => check_events(&events)?,
        Err(e) => check_error(&e, items)?,
    }
    // One event in memory and the same event read from text are checked alike (below the
    // text path's nesting limit, where only the text path refuses).
    if depth(batch) < 100 {
        let single: Vec<&Value> = match batch {
            Value::Array(a) => a.iter().take(3).collect(),
            other => vec![other],
        };
        for item in single {
            let in_memory = parse_event(item, NOW).map(|e| vec![e]).map_err(|mut e| {
                e.index = Some(0);
                e
            });
            let text = parse_batch(&Value::Array(vec![item.clone()]), NOW);
            ensure!(
                in_memory == text,
                "in memory {in_memory:?} vs text {text:?}"
            );
            if let Err(e) = &in_memory {
                check_error(e, Some(1))?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties of the validator.

#[test]
fn valid_batches_are_accepted() {
    run(runner(500, 1), valid_batch(), |b| {
        match parse_batch(&b, NOW) {
            Ok(events) => check_events(&events)?,
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
        }
        Ok(())
    });
}

#[test]
fn batch_like_json_never_panics_and_errors_carry_no_content() {
    run(runner(1000, 2), batch_like(), |b| check_validation(&b));
}

#[test]
fn mutated_batch_text_never_panics() {
    let strategy = (
        valid_batch(),
        prop::collection::vec((any::<Index>(), any::<char>(), 0u8..4), 1..6),
    );
    run(runner(1000, 3), strategy, |(b, edits)| {
        let mut text: Vec<char> = b.to_string().chars().collect();
        for (at, c, op) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            match op {
                0 => text[i] = c,
                1 => text.insert(i, c),
                2 => {
                    text.remove(i);
                }
                _ => text.truncate(i),
            }
        }
        let text: String = text.into_iter().collect();
        match bounded(64 << 20, || parse_batch_text(&text, NOW))? {
            Ok(events) => check_events(&events)?,
            Err(e) => {
                let shown = e.to_string();
                ensure!(shown.chars().count() <= 400, "long error {shown:.500}");
            }
        }
        Ok(())
    });
}

/// Nesting far beyond serde_json's limit is refused, not a stack overflow.
#[test]
fn deep_nesting_is_refused() {
    for n in [127, 128, 129, 500, 100_000] {
        let text = format!(
            r#"[{{"event_type":"run.started","run_id":"r","agent_id":"a","agent_version":"v","step_index":0,"payload":{{"tools":{}{}}}}}]"#,
            "[".repeat(n),
            "]".repeat(n)
        );
        let e = parse_batch_text(&text, NOW).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// A test-only jsonb encoder (PostgreSQL's binary layout, see core/src/jsonb.rs).

mod jb {
    use serde_json::{Number, Value};

    pub const JB_FSCALAR: u32 = 0x1000_0000;
    pub const JB_FOBJECT: u32 = 0x2000_0000;
    pub const JB_FARRAY: u32 = 0x4000_0000;
    pub const LENMASK: u32 = 0x0FFF_FFFF;
    pub const TYPEMASK: u32 = 0x7000_0000;
    pub const HAS_OFF: u32 = 0x8000_0000;
    pub const ISSTRING: u32 = 0x0000_0000;
    pub const ISNUMERIC: u32 = 0x1000_0000;
    pub const ISBOOL_FALSE: u32 = 0x2000_0000;
    pub const ISBOOL_TRUE: u32 = 0x3000_0000;
    pub const ISNULL: u32 = 0x4000_0000;
    pub const ISCONTAINER: u32 = 0x5000_0000;

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Opts {
        /// Numerics with a 1-byte varlena header where they fit (as packed datums are).
        pub short_varlena: bool,
    }

    /// A number as PostgreSQL's `numeric_in` keeps it: sign, integer digits without leading
    /// zeros, and exactly `dscale` fraction digits.
    #[derive(Debug)]
    pub struct Decimal {
        pub neg: bool,
        pub int: String,
        pub frac: String,
    }

    pub fn decimal(n: &Number) -> Decimal {
        let s = n.to_string();
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest.to_string()),
            None => (false, s),
        };
        let (mant, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().unwrap()),
            None => (s.as_str(), 0),
        };
        let (ip, fp) = mant.split_once('.').unwrap_or((mant, ""));
        let mut digits = format!("{ip}{fp}");
        let mut point = ip.len() as i64 + exp;
        if point < 0 {
            digits = "0".repeat((-point) as usize) + &digits;
            point = 0;
        }
        let point = point as usize;
        if point > digits.len() {
            digits += &"0".repeat(point - digits.len());
        }
        Decimal {
            neg,
            int: digits[..point].trim_start_matches('0').to_string(),
            frac: digits[point..].to_string(),
        }
    }

    impl Decimal {
        /// What `numeric_out` prints.
        pub fn text(&self) -> String {
            let zero = self.int.is_empty() && self.frac.bytes().all(|b| b == b'0');
            let mut out = String::new();
            if self.neg && !zero {
                out.push('-');
            }
            out += if self.int.is_empty() { "0" } else { &self.int };
            if !self.frac.is_empty() {
                out.push('.');
                out += &self.frac;
            }
            out
        }

        /// The `numeric` varlena.
        pub fn varlena(&self, opts: Opts) -> Vec<u8> {
            let int = "0".repeat((4 - self.int.len() % 4) % 4) + &self.int;
            let frac = self.frac.clone() + &"0".repeat((4 - self.frac.len() % 4) % 4);
            let all = int.clone() + &frac;
            let mut groups: Vec<u16> = all
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
                .collect();
            let mut weight = (int.len() / 4) as i32 - 1;
            while groups.first() == Some(&0) {
                groups.remove(0);
                weight -= 1;
            }
            while groups.last() == Some(&0) {
                groups.pop();
            }
            let neg = self.neg && !groups.is_empty();
            if groups.is_empty() {
                weight = 0;
            }
            let dscale = self.frac.len();
            let mut body: Vec<u8> = Vec::new();
            if dscale <= 0x3F && (-64..=63).contains(&weight) {
                let mut h: u16 = 0x8000 | ((dscale as u16) << 7) | (weight as u16 & 0x3F);
                if neg {
                    h |= 0x2000;
                }
                if weight < 0 {
                    h |= 0x0040;
                }
                body.extend(h.to_ne_bytes());
            } else {
                assert!(dscale <= 0x3FFF && (-32768..=32767).contains(&weight));
                let h: u16 = if neg { 0x4000 } else { 0 } | dscale as u16;
                body.extend(h.to_ne_bytes());
                body.extend((weight as i16).to_ne_bytes());
            }
            for g in groups {
                body.extend(g.to_ne_bytes());
            }
            let mut out = Vec::new();
            let total1 = body.len() + 1;
            if opts.short_varlena && total1 <= 127 {
                if cfg!(target_endian = "little") {
                    out.push(((total1 as u8) << 1) | 1);
                } else {
                    out.push(0x80 | total1 as u8);
                }
            } else {
                let total = (body.len() + 4) as u32;
                let word = if cfg!(target_endian = "little") {
                    total << 2
                } else {
                    total
                };
                out.extend(word.to_ne_bytes());
            }
            out.extend(body);
            out
        }
    }

    fn pad(buf: &mut Vec<u8>) {
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
    }

    enum Item<'a> {
        Key(&'a str),
        Val(&'a Value),
    }

    /// Object keys in jsonb's storage order: shorter first, then bytewise.
    pub fn sorted(m: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
        let mut kv: Vec<_> = m.iter().collect();
        kv.sort_by(|a, b| {
            a.0.len()
                .cmp(&b.0.len())
                .then(a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        kv
    }

    fn items(buf: &mut Vec<u8>, header: u32, its: Vec<Item<'_>>, o: Opts) {
        debug_assert_eq!(buf.len() % 4, 0);
        buf.extend(header.to_ne_bytes());
        let jentries = buf.len();
        buf.resize(buf.len() + 4 * its.len(), 0);
        let mut total = 0u32;
        for (i, it) in its.iter().enumerate() {
            let meta = match it {
                Item::Key(s) => {
                    buf.extend(s.as_bytes());
                    ISSTRING | s.len() as u32
                }
                Item::Val(v) => elem(buf, v, o),
            };
            total += meta & LENMASK;
            let meta = if i % 32 == 0 {
                (meta & TYPEMASK) | total | HAS_OFF
            } else {
                meta
            };
            buf[jentries + 4 * i..jentries + 4 * i + 4].copy_from_slice(&meta.to_ne_bytes());
        }
    }

    fn container(buf: &mut Vec<u8>, v: &Value, o: Opts) {
        match v {
            Value::Array(a) => items(
                buf,
                a.len() as u32 | JB_FARRAY,
                a.iter().map(Item::Val).collect(),
                o,
            ),
            Value::Object(m) => {
                let kv = sorted(m);
                let mut its: Vec<Item> = kv.iter().map(|(k, _)| Item::Key(k)).collect();
                its.extend(kv.iter().map(|(_, v)| Item::Val(v)));
                items(buf, m.len() as u32 | JB_FOBJECT, its, o)
            }
            _ => unreachable!(),
        }
    }

    fn elem(buf: &mut Vec<u8>, v: &Value, o: Opts) -> u32 {
        let start = buf.len();
        let kind = match v {
            Value::Null => ISNULL,
            Value::Bool(false) => ISBOOL_FALSE,
            Value::Bool(true) => ISBOOL_TRUE,
            Value::String(s) => {
                buf.extend(s.as_bytes());
                ISSTRING
            }
            Value::Number(n) => {
                pad(buf);
                buf.extend(decimal(n).varlena(o));
                ISNUMERIC
            }
            _ => {
                pad(buf);
                container(buf, v, o);
                ISCONTAINER
            }
        };
        kind | (buf.len() - start) as u32
    }

    /// The data of a jsonb varlena holding `v` (what follows its length word).
    pub fn encode(v: &Value, o: Opts) -> Vec<u8> {
        let mut buf = Vec::new();
        match v {
            Value::Array(_) | Value::Object(_) => container(&mut buf, v, o),
            scalar => items(
                &mut buf,
                1 | JB_FARRAY | JB_FSCALAR,
                vec![Item::Val(scalar)],
                o,
            ),
        }
        buf
    }

    /// `v` as `jsonb_out` prints it: keys in storage order, numbers as `numeric_out` spells
    /// them (then read back by serde, as the extension's text path does).
    pub fn as_postgres(v: &Value) -> Value {
        match v {
            Value::Number(n) => {
                Value::Number(serde_json::from_str(&decimal(n).text()).expect("numeric_out text"))
            }
            Value::Array(a) => Value::Array(a.iter().map(as_postgres).collect()),
            Value::Object(m) => Value::Object(
                sorted(m)
                    .into_iter()
                    .map(|(k, v)| (k.clone(), as_postgres(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// A `Batch` (which has no `Debug`/`PartialEq`) spelled out as JSON, keeping key order.
fn batch_repr(b: &Batch) -> Value {
    fn pairs(p: &Payload) -> Value {
        Value::Array(p.iter().map(|(k, v)| json!([k, v])).collect())
    }
    fn envelope(e: &Envelope) -> Value {
        json!({
            "fields": pairs(&e.fields),
            "payload": match &e.payload {
                None => json!("absent"),
                Some(Node::Object(p)) => json!({"object": pairs(p)}),
                Some(Node::Other(v)) => json!({"other": v}),
            }
        })
    }
    match b {
        Batch::One(e) => json!({"one": envelope(e)}),
        Batch::Many(items) => json!({"many": items.iter().map(|n| match n {
            Node::Object(e) => json!({"object": envelope(e)}),
            Node::Other(v) => json!({"other": v}),
        }).collect::<Vec<_>>()}),
        Batch::Other(v) => json!({"other": v}),
    }
}

fn payload_repr(p: &Payload) -> Value {
    Value::Array(p.iter().map(|(k, v)| json!([k, v])).collect())
}

/// The binary path (encode, `read_batch`, `validate_batch`) against the text path
/// (`jsonb_out`'s text, serde, `validate_batch`) for one value.
fn check_roundtrip(v: &Value, opts: jb::Opts) -> Result<(), TestCaseError> {
    let bytes = jb::encode(v, opts);
    let pg = jb::as_postgres(v);
    let text = pg.to_string();
    let read = bounded(64 * bytes.len() + (1 << 20), || jsonb::read_batch(&bytes))?;
    let serde: Result<Batch, _> = serde_json::from_str(&text);
    match (&read, &serde) {
        (Ok(a), Ok(b)) => {
            ensure!(
                batch_repr(a) == batch_repr(b),
                "binary {} vs text {}",
                batch_repr(a),
                batch_repr(b)
            );
        }
        (Err(ReadError::TooDeep), Err(_)) => {}
        _ => {
            return Err(TestCaseError::fail(format!(
                "binary {:?} vs text {:?}",
                read.as_ref().map(batch_repr),
                serde.as_ref().map(batch_repr).map_err(|e| e.to_string())
            )))
        }
    }
    if let (Ok(a), Ok(_)) = (read, serde) {
        let binary = validate_batch(a, NOW);
        let text = parse_batch_text(&text, NOW);
        ensure!(binary == text, "validated: {binary:?} vs {text:?}");
    }
    let payload = jsonb::read_payload(&bytes);
    let expected = match &pg {
        Value::Object(m) if depth(&pg) < 128 => Some(Payload::from(m.clone())),
        Value::Object(_) => None,
        _ => Some(Payload::new()),
    };
    if let Some(expected) = expected {
        ensure!(
            payload.as_ref().map(payload_repr) == Ok(payload_repr(&expected)),
            "read_payload {:?}",
            payload.map(|p| payload_repr(&p))
        );
    }
    Ok(())
}

fn opts() -> BoxedStrategy<jb::Opts> {
    any::<bool>()
        .prop_map(|short_varlena| jb::Opts { short_varlena })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Properties of the jsonb reader.

#[test]
fn encoder_round_trips_known_batches() {
    let h = "0123456789abcdef";
    let ev = |i: usize, t: &str, p: Value| {
        json!({"event_type": t, "run_id": format!("run-{}", i % 3), "agent_id": "agent-a",
               "agent_version": "v1", "step_index": i, "timestamp": 1700000000.125 + i as f64,
               "payload": p})
    };
    let many: Vec<Value> = (0..70)
        .map(|i| {
            ev(
                i,
                "tool.called",
                json!({"tool_name": format!("t{i}"), "args_hash": h}),
            )
        })
        .collect();
    let wide: Map<String, Value> = (0..70).map(|i| (format!("k{i}"), json!(i))).collect();
    let cases = vec![
        ev(
            0,
            "run.started",
            json!({"input_hash": h, "model": "gpt-4o", "tools": ["a", "b"],
            "injection_signal": {"matched_pattern_count": 2, "matched_patterns": ["x"], "input_length": 80}}),
        ),
        json!([
            ev(
                0,
                "llm.responded",
                json!({"completion_tokens": 5, "latency_ms": 300,
            "finish_reason": "stop", "output_hash": "", "output_length": 17})
            ),
            ev(
                1,
                "retrieval.responded",
                json!({"top_score": 0.000012, "result_count": 0})
            ),
            ev(
                2,
                "external.signal",
                json!({"meta": {"retry_after": 2.5, "region": "eu", "n": null, "ok": true}})
            ),
            ev(
                3,
                "policy.triggered",
                json!({"value": -1e300, "trigger": "cost_usd"})
            ),
            ev(
                4,
                "policy.triggered",
                json!({"value": 18446744073709551615u64})
            ),
            ev(5, "policy.triggered", json!({"value": i64::MIN})),
            ev(6, "policy.triggered", json!({"value": 5e-324})),
            ev(7, "policy.triggered", json!({"value": f64::MAX})),
            ev(8, "policy.triggered", json!({"value": -0.0})),
            ev(9, "policy.triggered", json!({"value": 1e15}))
        ]),
        Value::Array(many),
        json!([ev(
            0,
            "external.signal",
            json!({"meta": Value::Object(wide.clone())})
        )]),
        Value::Object(wide),
        json!(7),
        json!("x"),
        json!(null),
        json!([]),
        json!({}),
        json!([1, "a", null, true, false, [], {}, [[[]]]]),
        json!({"payload": 3, "event_type": "run.started"}),
        json!([{"payload": null}, {"payload": []}, {"payload": {"a": {"b": [1.5]}}}]),
    ];
    for case in &cases {
        for short_varlena in [false, true] {
            let opts = jb::Opts { short_varlena };
            if let Err(e) = check_roundtrip(case, opts) {
                panic!("{case}: {e}");
            }
        }
    }
    // The accepted batches are accepted by both paths.
    let bytes = jb::encode(&cases[1], jb::Opts::default());
    let events = validate_batch(jsonb::read_batch(&bytes).unwrap(), NOW).unwrap();
    assert_eq!(events.len(), 10);
    assert_eq!(events[3].float("value"), Some(-1e300));
    // Numbers spelled as numeric_out spells them, read by the core's own numeric reader.
    for (n, text) in [
        (json!(0), "0"),
        (json!(-0.0), "0.0"),
        (json!(1.5), "1.5"),
        (json!(0.05), "0.05"),
        (json!(1e-7), "0.0000001"),
        (json!(-12345678.9), "-12345678.9"),
        (json!(1e21), "1000000000000000000000"),
        (json!(10000), "10000"),
        (json!(u64::MAX), "18446744073709551615"),
    ] {
        let d = jb::decimal(n.as_number().unwrap());
        assert_eq!(d.text(), text);
        for short_varlena in [false, true] {
            let varlena = d.varlena(jb::Opts { short_varlena });
            assert_eq!(jsonb::numeric_text(&varlena).unwrap(), text);
        }
    }
}

#[test]
fn jsonb_reader_agrees_with_the_text_path() {
    let strategy = (prop_oneof![2 => batch_like(), 1 => json_value()], opts());
    run(runner(500, 4), strategy, |(v, o)| {
        if depth(&v) >= 120 {
            return Ok(());
        }
        check_roundtrip(&v, o)
    });
}

/// The reader's depth limit is the text path's: a payload nested just short of serde_json's
/// limit reads on both paths, one level more is refused by both, whether the batch is an
/// array of envelopes, one envelope, or a stored payload.
#[test]
fn jsonb_depth_limit_matches_the_text_path() {
    for n in 118..=130 {
        let mut v = json!(1);
        for _ in 0..n {
            v = json!([v]);
        }
        let event = json!({"event_type": "run.started", "run_id": "r", "agent_id": "a",
                           "agent_version": "v", "step_index": 0, "payload": {"tools": v}});
        let payload = event["payload"].clone();
        let shapes = [
            ("array", json!([event.clone()])),
            ("object", event),
            ("payload", payload),
        ];
        for (shape, value) in shapes {
            let bytes = jb::encode(&value, jb::Opts::default());
            let binary = if shape == "payload" {
                jsonb::read_payload(&bytes).map(|_| ())
            } else {
                jsonb::read_batch(&bytes).map(|_| ())
            };
            let text = serde_json::from_str::<Batch>(&value.to_string()).map(|_| ());
            assert_eq!(
                binary.is_ok(),
                text.is_ok(),
                "{shape}, {} levels: binary {binary:?}, text {:?}",
                depth(&value),
                text.map_err(|e| e.to_string())
            );
        }
    }
}

// How the mutated inputs fared, to show the fuzzing gets past the first bounds check (per
// thread: each test runs its cases on its own thread).
thread_local! {
    static READ_OK: Cell<usize> = const { Cell::new(0) };
    static READ_ERR: Cell<usize> = const { Cell::new(0) };
    static VALIDATED: Cell<usize> = const { Cell::new(0) };
}

fn bump(counter: &'static std::thread::LocalKey<Cell<usize>>) {
    counter.with(|c| c.set(c.get() + 1));
}

/// Reads `bytes` both ways; whatever reads is validated. Nothing may panic or allocate out of
/// proportion to the input.
fn check_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limit = 64 * bytes.len() + (1 << 20);
    let read = bounded(limit, || jsonb::read_batch(bytes))?;
    bounded(limit, || jsonb::read_payload(bytes))?.ok();
    match read {
        Ok(batch) => {
            bump(&READ_OK);
            let items = match &batch {
                Batch::Many(items) => Some(items.len()),
                _ => None,
            };
            match bounded(limit, || validate_batch(batch, NOW))? {
                Ok(events) => {
                    bump(&VALIDATED);
                    check_events(&events)?
                }
                Err(e) => check_error(&e, items)?,
            }
        }
        Err(_) => {
            bump(&READ_ERR);
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic() {
    let interesting = prop::sample::select(vec![
        0u32,
        1,
        2,
        0x0FFF_FFFF,
        0xFFFF_FFFF,
        jb::JB_FARRAY | 1,
        jb::JB_FARRAY | jb::JB_FSCALAR | 1,
        jb::JB_FOBJECT | 1,
        jb::JB_FOBJECT | 0x0FFF_FFFF,
        jb::JB_FARRAY | 0x0FFF_FFFF,
        jb::ISCONTAINER | 4,
        jb::ISNUMERIC | jb::HAS_OFF | 8,
    ]);
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            interesting.clone(),
            prop::collection::vec(interesting, 0..8),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(h, entries, tail)| {
                let mut b: Vec<u8> = h.to_ne_bytes().to_vec();
                for e in entries {
                    b.extend(e.to_ne_bytes());
                }
                b.extend(tail);
                b
            }),
    ];
    run(runner(4000, 5), strategy, |bytes| check_bytes(&bytes));
}

/// One corruption of an encoding.
#[derive(Debug, Clone)]
enum Corruption {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrites an aligned word (a header, a JEntry, a varlena length...).
    SetWord(Index, u32),
    /// Changes the length/offset field of an aligned word, keeping its flags.
    ShiftLength(Index, i32),
    Truncate(Index),
    Append(Vec<u8>),
    Remove(Index, usize),
    Duplicate(Index, usize),
}

fn corruption() -> BoxedStrategy<Corruption> {
    let word = prop_oneof![
        any::<u32>(),
        prop::sample::select(vec![
            0,
            1,
            0x0FFF_FFFF,
            0xFFFF_FFFF,
            jb::HAS_OFF,
            jb::ISCONTAINER,
            jb::ISNUMERIC | 3,
            jb::JB_FOBJECT | 3,
            jb::JB_FARRAY | jb::JB_FSCALAR | 2,
            0x8000_0000 | 0x0FFF_FFFF,
        ]),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Corruption::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Corruption::SetByte(i, b)),
        2 => (any::<Index>(), word).prop_map(|(i, w)| Corruption::SetWord(i, w)),
        3 => (any::<Index>(), prop_oneof![-8i32..8, any::<i32>()])
            .prop_map(|(i, d)| Corruption::ShiftLength(i, d)),
        1 => any::<Index>().prop_map(Corruption::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Corruption::Append),
        1 => (any::<Index>(), 1usize..12).prop_map(|(i, n)| Corruption::Remove(i, n)),
        1 => (any::<Index>(), 1usize..12).prop_map(|(i, n)| Corruption::Duplicate(i, n)),
    ]
    .boxed()
}

fn corrupt(bytes: &mut Vec<u8>, c: &Corruption) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    let word_at = |i: &Index| -> Option<usize> { (n >= 4).then(|| i.index(n / 4) * 4) };
    match c {
        Corruption::FlipBit(i, b) => bytes[i.index(n)] ^= 1 << b,
        Corruption::SetByte(i, b) => bytes[i.index(n)] = *b,
        Corruption::SetWord(i, w) => {
            if let Some(at) = word_at(i) {
                bytes[at..at + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        Corruption::ShiftLength(i, d) => {
            if let Some(at) = word_at(i) {
                let w = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
                let len = (w & 0x0FFF_FFFF).wrapping_add(*d as u32) & 0x0FFF_FFFF;
                let w = (w & !0x0FFF_FFFF) | len;
                bytes[at..at + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        Corruption::Truncate(i) => bytes.truncate(i.index(n)),
        Corruption::Append(tail) => bytes.extend(tail),
        Corruption::Remove(i, k) => {
            let at = i.index(n);
            let end = (at + k).min(n);
            bytes.drain(at..end);
        }
        Corruption::Duplicate(i, k) => {
            let at = i.index(n);
            let end = (at + k).min(n);
            let part: Vec<u8> = bytes[at..end].to_vec();
            bytes.splice(at..at, part);
        }
    }
}

#[test]
fn corrupted_encodings_never_panic() {
    let strategy = (
        prop_oneof![3 => valid_batch(), 1 => batch_like(), 1 => json_value()],
        opts(),
        prop::collection::vec(corruption(), 1..4),
    );
    run(runner(2500, 6), strategy, |(v, o, cs)| {
        if depth(&v) >= 120 {
            return Ok(());
        }
        let mut bytes = jb::encode(&v, o);
        for c in &cs {
            corrupt(&mut bytes, c);
        }
        check_bytes(&bytes)
    });
    let ok = READ_OK.with(Cell::get);
    let err = READ_ERR.with(Cell::get);
    let validated = VALIDATED.with(Cell::get);
    eprintln!("corrupted jsonb: {ok} read ({validated} of them valid batches), {err} refused");
    // Single corruptions of valid encodings often still read (a flipped bit in a string),
    // so the reader is exercised well past its first check.
    assert!(ok > 0 && err > 0 && validated > 0, "{ok} {err} {validated}");
}

/// Regression: a header claiming 2^28-1 elements in a few bytes is refused without first
/// reserving room for them.
#[test]
fn a_huge_element_count_allocates_nothing_big() {
    for header in [
        jb::JB_FARRAY | 0x0FFF_FFFF,
        jb::JB_FOBJECT | 0x0FFF_FFFF,
        jb::JB_FARRAY | jb::JB_FSCALAR | 0x0FFF_FFFF,
    ] {
        let mut bytes = header.to_ne_bytes().to_vec();
        bytes.extend([0u8; 12]);
        let r = bounded(1 << 20, || {
            (
                jsonb::read_batch(&bytes).map(|_| ()),
                jsonb::read_payload(&bytes).map(|_| ()),
            )
        })
        .unwrap();
        assert_eq!(r.0, Err(ReadError::Corrupt));
    }
}

/// Regression: an envelope or payload of very many keys is read in linear time.
#[test]
fn many_keys_are_read_in_linear_time() {
    let wide: Map<String, Value> = (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let event = json!({"event_type": "llm.called", "payload": Value::Object(wide.clone())});
    let start = std::time::Instant::now();
    for v in [json!([event]), Value::Object(wide)] {
        let bytes = jb::encode(&v, jb::Opts::default());
        jsonb::read_batch(&bytes).unwrap();
        jsonb::read_payload(&bytes).unwrap();
    }
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}
