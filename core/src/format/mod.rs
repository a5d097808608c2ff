//! Alert formats: Slack Block Kit (`slack.rs`), the signed generic webhook (`webhook.rs`) and
//! the weekly digest (`digest.rs`).
//!
//! This module holds what they share: the dashboard base URL, Python-compatible percentage and
//! JSON rendering, and small Block Kit builders. Everything here is pure.

pub mod digest;
pub mod followup;
pub mod slack;
pub mod webhook;

use crate::pyround::py_str;
use serde_json::{json, Value};

/// Dashboard base used when none is configured.
pub const DEFAULT_DASHBOARD_URL: &str = "https://app.dunetrace.io";

/// The dashboard base without trailing slashes; an empty (or all-slash) value means
/// [`DEFAULT_DASHBOARD_URL`].
pub fn dashboard_base(url: &str) -> &str {
    let trimmed = url.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        DEFAULT_DASHBOARD_URL
    } else {
        trimmed
    }
}

/// Python's `f"{rate:.0%}"`: the rate times 100 (in double precision), rounded to an integer
/// the way `format(x, ".0f")` rounds (exact binary value, ties to even), then `%`.
pub fn percent(rate: f64) -> String {
    if rate.is_nan() {
        return "nan%".into();
    }
    if rate.is_infinite() {
        return if rate > 0.0 { "inf%" } else { "-inf%" }.into();
    }
    format!("{:.0}%", rate * 100.0)
}

/// `n word` with an `s` appended unless `n` is 1.
pub(crate) fn plural(n: i64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

// ---------------------------------------------------------------------------------------------
// Block Kit builders
// ---------------------------------------------------------------------------------------------

pub(crate) fn header_block(text: &str) -> Value {
    json!({"type": "header", "text": {"type": "plain_text", "text": text, "emoji": true}})
}

pub(crate) fn context_block(mrkdwn: &str) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn}]})
}

pub(crate) fn divider_block() -> Value {
    json!({"type": "divider"})
}

pub(crate) fn section_block(mrkdwn: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}})
}

/// An actions block with one primary link button.
pub(crate) fn link_button_block(label: &str, url: &str) -> Value {
    json!({
        "type": "actions",
        "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": label, "emoji": true},
            "url": url,
            "style": "primary",
        }],
    })
}

/// `{"attachments": [{"color": colour, "blocks": blocks}]}`.
pub(crate) fn attachment(color: &str, blocks: Vec<Value>) -> Value {
    json!({"attachments": [{"color": color, "blocks": blocks}]})
}

// ---------------------------------------------------------------------------------------------
// JSON as Python's json.dumps writes it with separators (",", ":")
// ---------------------------------------------------------------------------------------------

/// Appends a float the way `json.dumps` writes it: `repr(x)` (`1.0`, `1e+16`), and `NaN`,
/// `Infinity`, `-Infinity` for non-finite values.
pub(crate) fn push_py_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&py_str(x));
    }
}

/// Appends a JSON string literal escaped as `json.dumps` does with `ensure_ascii=True`: `\"`,
/// `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, and every other character outside space..`~` as
/// lowercase `\uXXXX` (UTF-16 surrogate pairs above U+FFFF).
pub(crate) fn push_py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Appends a JSON value in compact Python style: object keys in stored order, integers as
/// integers, other numbers as Python float reprs.
pub(crate) fn push_py_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                push_py_float(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => push_py_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_py_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_py_str(out, k);
                out.push(':');
                push_py_json(out, item);
            }
            out.push('}');
        }
    }
}

/// `json.dumps(v, separators=(",", ":"))` for a JSON value.
pub fn py_json_compact(v: &Value) -> String {
    let mut out = String::new();
    push_py_json(&mut out, v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_base_trims_and_defaults() {
        assert_eq!(dashboard_base("https://x.example/"), "https://x.example");
        assert_eq!(dashboard_base("https://x.example//"), "https://x.example");
        assert_eq!(dashboard_base("https://x.example"), "https://x.example");
        assert_eq!(dashboard_base(""), DEFAULT_DASHBOARD_URL);
        assert_eq!(dashboard_base("/"), DEFAULT_DASHBOARD_URL);
    }

    #[test]
    fn percent_matches_python_format() {
        // Checked against CPython: f"{r:.0%}".
        assert_eq!(percent(0.125), "12%");
        assert_eq!(percent(0.135), "14%");
        assert_eq!(percent(0.105), "10%");
        assert_eq!(percent(0.005), "0%");
        assert_eq!(percent(1.0 / 3.0), "33%");
        assert_eq!(percent(2.0 / 3.0), "67%");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(0.995), "100%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(f64::NAN), "nan%");
    }

    #[test]
    fn plural_forms() {
        assert_eq!(plural(1, "run"), "1 run");
        assert_eq!(plural(0, "run"), "0 runs");
        assert_eq!(plural(2, "signal"), "2 signals");
    }

    #[test]
    fn py_json_matches_python_dumps() {
        // CPython: json.dumps({...}, separators=(",", ":")).
        let v = json!({
            "t": "caf\u{e9} \u{1F600} \u{7f} \u{1} \"q\" \\ /\n\t",
            "f": 1.0,
            "g": 1700000000.123,
            "h": 1e16,
            "i": 1e-5,
        });
        assert_eq!(
            py_json_compact(&v),
            r#"{"t":"caf\u00e9 \ud83d\ude00 \u007f \u0001 \"q\" \\ /\n\t","f":1.0,"g":1700000000.123,"h":1e+16,"i":1e-05}"#
        );
        let mut s = String::new();
        push_py_float(&mut s, f64::NAN);
        push_py_float(&mut s, f64::NEG_INFINITY);
        assert_eq!(s, "NaN-Infinity");
    }

    #[test]
    fn py_json_nested_and_scalars() {
        let v = json!({"a": [1, -2, true, null, {"b": []}], "c": {}, "u": u64::MAX});
        assert_eq!(
            py_json_compact(&v),
            r#"{"a":[1,-2,true,null,{"b":[]}],"c":{},"u":18446744073709551615}"#
        );
    }
}
