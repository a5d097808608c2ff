//! In-process hashing: content digests, `agent_version`, canonical JSON, and names.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt::Write as _;

/// Content the client hashes before anything leaves the process: text as given, or a JSON
/// value as canonical JSON text (see [`canonical_json`]).
///
/// Implemented for `str`, `String`, [`serde_json::Value`] and references to them, so a
/// method taking `impl Content` accepts `"text"`, `&my_string`, `&json!({...})` alike.
pub trait Content {
    /// The exact text that is hashed.
    fn text(&self) -> Cow<'_, str>;
}

impl Content for str {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl Content for String {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.as_str())
    }
}

impl Content for Value {
    fn text(&self) -> Cow<'_, str> {
        Cow::Owned(canonical_json(self))
    }
}

impl<T: Content + ?Sized> Content for &T {
    fn text(&self) -> Cow<'_, str> {
        (**self).text()
    }
}

/// Lowercase hex SHA-256 (all 64 characters) of `text` as UTF-8, or `""` for empty text.
///
/// ```
/// use dunetrace_client::hash_content;
/// assert_eq!(
///     hash_content("hello"),
///     "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
/// );
/// assert_eq!(hash_content(""), "");
/// ```
pub fn hash_content(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    sha256_hex(text)
}

pub(crate) fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The agent's version: the first 8 hex characters of SHA-256 over
/// `"<system_prompt>:<model>:<sorted tools as a Python list>"`, e.g.
/// `":gpt-4o:['calculator', 'web_search']"`. The same inputs give the same version as the
/// original Python SDK, so baselines stay per (agent, version).
///
/// ```
/// use dunetrace_client::agent_version;
/// assert_eq!(agent_version("", "gpt-4o", &["web_search", "calculator"]), "e76b2ca1");
/// ```
pub fn agent_version<S: AsRef<str>>(system_prompt: &str, model: &str, tools: &[S]) -> String {
    let mut sorted: Vec<&str> = tools.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let list: Vec<String> = sorted.iter().map(|t| py_str_repr(t)).collect();
    let text = format!("{system_prompt}:{model}:[{}]", list.join(", "));
    sha256_hex(&text)[..8].to_string()
}

/// Python's `repr()` of a string: single quotes unless the text holds a single quote and no
/// double quote; backslash, the quote and control characters escaped. Non-ASCII characters
/// are kept except the non-printable ones listed in [`py_unprintable`].
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_unprintable(c) => {
                let n = c as u32;
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Characters Python's `str.isprintable()` rejects, as far as a table-free check can tell:
/// controls, separators other than the ASCII space, common format characters and private
/// use. Tool names are identifiers, so this only matters for unusual inputs.
fn py_unprintable(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x1680
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f
        | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0xf0000..=0x10ffff)
}

/// Canonical JSON text: object keys sorted (by code point) at every level, no whitespace.
/// Two argument objects that differ only in key order hash the same.
///
/// ```
/// use dunetrace_client::canonical_json;
/// use serde_json::json;
/// assert_eq!(canonical_json(&json!({"b": [true, null, "x"], "a": 1})), r#"{"a":1,"b":[true,null,"x"]}"#);
/// ```
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Longest name the server accepts.
const MAX_NAME: usize = dunetrace_core::validate::MAX_NAME_LEN;

/// Makes `s` a name the server accepts: characters outside letters, digits and `_-.:/@+=#~`
/// become `_`, and the result is cut to 128 characters. Names (tools, models, indexes,
/// signals) are stored in clear: they must never carry content.
pub(crate) fn name(s: &str) -> String {
    s.chars()
        .take(MAX_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:/@+=#~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// 16 random bytes: from the OS, or, failing that, SHA-256 of time, process, thread and a
/// counter (unique, if not unpredictable).
pub(crate) fn random16() -> [u8; 16] {
    use std::io::Read;
    let mut buf = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return buf;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!(
        "{now}:{}:{:?}:{n}:{:p}",
        std::process::id(),
        std::thread::current().id(),
        &buf
    );
    let digest = Sha256::digest(seed.as_bytes());
    buf.copy_from_slice(&digest[..16]);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_hashes_are_full_sha256() {
        assert_eq!(
            hash_content("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hash_content("The answer is 4."),
            "ae758477f843049bd252ceb5498aa33f190326589ee92cbe5a1ab563f54bc05b"
        );
        assert_eq!(hash_content(""), "");
        assert!(dunetrace_core::validate::is_digest(&hash_content("x")));
    }

    #[test]
    fn json_content_is_canonical() {
        let a = json!({"b": [true, null, "x"], "a": 1});
        let b: Value = serde_json::from_str(r#"{"a": 1, "b": [true, null, "x"]}"#).unwrap();
        assert_eq!(a.text(), b.text());
        assert_eq!(
            hash_content(&a.text()),
            "eca8cfb31ab74533e1eb2f4c74d2d55dfe3c79ac704787e54be8647ea7777eb1"
        );
        assert_eq!(
            canonical_json(&json!({"z": {"y": 1, "x": [{"b": 2, "a": "\n"}]}})),
            r#"{"z":{"x":[{"a":"\n","b":2}],"y":1}}"#
        );
        assert_eq!("plain".text(), "plain");
        assert_eq!(String::from("s").text(), "s");
    }

    #[test]
    fn agent_version_known_values() {
        // Reference values: Python hashlib over the same strings.
        assert_eq!(
            agent_version("", "gpt-4o", &["web_search", "calculator"]),
            "e76b2ca1"
        );
        assert_eq!(
            agent_version::<&str>("You are a helpful assistant.", "claude-3-5-sonnet", &[]),
            "140d5bfe"
        );
        assert_eq!(agent_version("sp", "m", &["b", "a", "B"]), "ffe09a1b");
        let odd = [
            "it's",
            "say \"hi\"",
            "both'\"",
            "back\\slash",
            "nl\n",
            "tab\t",
            "é",
            "\u{7f}",
            "\u{a0}",
        ];
        assert_eq!(agent_version("sp", "m", &odd), "9f14d09a");
        let owned: Vec<String> = vec!["web_search".into(), "calculator".into()];
        assert_eq!(agent_version("", "gpt-4o", &owned), "e76b2ca1");
    }

    #[test]
    fn python_repr_of_strings() {
        assert_eq!(py_str_repr("calc"), "'calc'");
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(py_str_repr("both'\""), "'both\\'\"'");
        assert_eq!(
            py_str_repr("a\u{1}\u{2028}\u{10ffff}"),
            "'a\\x01\\u2028\\U0010ffff'"
        );
    }

    #[test]
    fn names_are_made_acceptable() {
        assert_eq!(name("gpt-4o mini"), "gpt-4o_mini");
        assert_eq!(name("web_search"), "web_search");
        assert_eq!(name("é"), "_");
        assert_eq!(name(&"x".repeat(300)).len(), 128);
        assert_eq!(name(""), "");
    }

    #[test]
    fn random_bytes_differ() {
        assert_ne!(random16(), random16());
    }
}
