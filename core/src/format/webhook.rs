//! The generic webhook (the original's body, plus Standard Webhooks headers): a compact JSON body written exactly as
//! the original's `json.dumps(..., separators=(",", ":"))`, and its headers, signed with both
//! `X-Dunetrace-Signature` and Standard Webhooks.

use super::{push_py_float, push_py_json, push_py_str};
use crate::explain::{Explanation, SignalView};
use crate::sign::{dunetrace_signature, signing_key, standard_webhooks_signature};

/// `schema_version` of the body.
pub const SCHEMA_VERSION: &str = "1.0";
/// `event` of the body and the `X-Dunetrace-Event` header.
pub const EVENT: &str = "failure_signal";

struct Obj {
    out: String,
    first: bool,
}

impl Obj {
    fn new() -> Obj {
        Obj {
            out: String::from("{"),
            first: true,
        }
    }

    fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_py_str(&mut self.out, k);
        self.out.push(':');
        &mut self.out
    }

    fn str(&mut self, k: &str, v: &str) {
        push_py_str(self.key(k), v);
    }

    fn float(&mut self, k: &str, v: f64) {
        push_py_float(self.key(k), v);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// The webhook body. Keys in order: `schema_version`, `event`, `sent_at`, `failure_type`,
/// `severity`, `confidence`, `run_id`, `agent_id`, `agent_version`, `step_index`,
/// `detected_at`, `title`, `what`, `why_it_matters`, `evidence_summary`, `evidence`,
/// `suggested_fixes` (`[{description, language, code}]`). No spaces; non-ASCII as `\uXXXX`;
/// floats as Python reprs (`1.0`). `sent_at` and `detected_at` are epoch seconds.
pub fn body(s: &SignalView, e: &Explanation, sent_at: f64, detected_at: f64) -> String {
    let mut o = Obj::new();
    o.str("schema_version", SCHEMA_VERSION);
    o.str("event", EVENT);
    o.float("sent_at", sent_at);
    o.str("failure_type", s.failure_type);
    o.str("severity", s.severity);
    o.float("confidence", s.confidence);
    o.str("run_id", s.run_id);
    o.str("agent_id", s.agent_id);
    o.str("agent_version", s.agent_version);
    o.key("step_index").push_str(&s.step_index.to_string());
    o.float("detected_at", detected_at);
    o.str("title", &e.title);
    o.str("what", &e.what);
    o.str("why_it_matters", &e.why_it_matters);
    o.str("evidence_summary", &e.evidence_summary);
    {
        let out = o.key("evidence");
        out.push('{');
        for (i, (k, v)) in s.evidence.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_py_str(out, k);
            out.push(':');
            push_py_json(out, v);
        }
        out.push('}');
    }
    {
        let out = o.key("suggested_fixes");
        out.push('[');
        for (i, f) in e.suggested_fixes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut fo = Obj::new();
            fo.str("description", &f.description);
            fo.str("language", &f.language);
            fo.str("code", &f.code);
            out.push_str(&fo.finish());
        }
        out.push(']');
    }
    o.finish()
}

/// The request headers for `body`, in this order: `Content-Type`, `X-Dunetrace-Event`,
/// `X-Dunetrace-Version`, `webhook-id`, `webhook-timestamp`, and, when `secret` is set and
/// non-empty, `X-Dunetrace-Signature` and `webhook-signature`.
///
/// `webhook-id` (stable across retries of one delivery) and `webhook-timestamp` (epoch seconds
/// of this attempt) are sent even without a secret: they cost nothing and let receivers
/// deduplicate. The error is a `whsec_` secret that is not valid base64.
pub fn headers(
    body: &str,
    secret: Option<&str>,
    webhook_id: &str,
    timestamp: i64,
) -> Result<Vec<(String, String)>, String> {
    let mut h: Vec<(String, String)> = vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Dunetrace-Event".into(), EVENT.into()),
        ("X-Dunetrace-Version".into(), SCHEMA_VERSION.into()),
        ("webhook-id".into(), webhook_id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
    ];
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        let key = signing_key(secret)?;
        h.push((
            "X-Dunetrace-Signature".into(),
            dunetrace_signature(&key, body.as_bytes()),
        ));
        h.push((
            "webhook-signature".into(),
            standard_webhooks_signature(&key, webhook_id, timestamp, body.as_bytes()),
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::SuggestedFix;
    use crate::sign::{verify_dunetrace_signature, verify_standard_webhooks};
    use serde_json::{json, Map, Value};

    fn sample_evidence() -> Map<String, Value> {
        let v = json!({
            "tool": "web_search",
            "count": 5,
            "ratio": 1.0,
            "note": "naïve — ok",
            "steps": [1, 2, 3],
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn sample_explanation() -> Explanation {
        Explanation {
            title: "Tool Loop".into(),
            what: "Called \"web_search\" 5×.".into(),
            why_it_matters: "Costs €.".into(),
            evidence_summary: "Tool: web_search\nCalls: 5".into(),
            suggested_fixes: vec![SuggestedFix {
                description: "Cap calls".into(),
                language: "python".into(),
                code: "if n > 3:\n\tbreak".into(),
            }],
        }
    }

    #[test]
    fn body_byte_for_byte() {
        let ev = sample_evidence();
        let s = SignalView {
            failure_type: "TOOL_LOOP",
            severity: "HIGH",
            run_id: "run-1",
            agent_id: "agent-\u{1F600}",
            agent_version: "v1",
            step_index: 7,
            confidence: 1.0,
            evidence: &ev,
        };
        let got = body(&s, &sample_explanation(), 1700000000.123, 1699999999.5);
        let want = concat!(
            r#"{"schema_version":"1.0","event":"failure_signal","sent_at":1700000000.123,"#,
            r#""failure_type":"TOOL_LOOP","severity":"HIGH","confidence":1.0,"run_id":"run-1","#,
            r#""agent_id":"agent-\ud83d\ude00","agent_version":"v1","step_index":7,"#,
            r#""detected_at":1699999999.5,"title":"Tool Loop","#,
            r#""what":"Called \"web_search\" 5\u00d7.","why_it_matters":"Costs \u20ac.","#,
            r#""evidence_summary":"Tool: web_search\nCalls: 5","#,
            r#""evidence":{"tool":"web_search","count":5,"ratio":1.0,"note":"na\u00efve \u2014 ok","steps":[1,2,3]},"#,
            r#""suggested_fixes":[{"description":"Cap calls","language":"python","code":"if n > 3:\n\tbreak"}]}"#,
        );
        assert_eq!(got, want);
        assert!(got.is_ascii());
        // It is valid JSON with the same content.
        let parsed: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(parsed["what"], "Called \"web_search\" 5×.");
        let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "schema_version",
                "event",
                "sent_at",
                "failure_type",
                "severity",
                "confidence",
                "run_id",
                "agent_id",
                "agent_version",
                "step_index",
                "detected_at",
                "title",
                "what",
                "why_it_matters",
                "evidence_summary",
                "evidence",
                "suggested_fixes"
            ]
        );
    }

    #[test]
    fn body_with_empty_evidence_and_no_fixes() {
        let ev = Map::new();
        let s = SignalView {
            failure_type: "X",
            severity: "LOW",
            run_id: "r",
            agent_id: "a",
            agent_version: "",
            step_index: -1,
            confidence: 0.85,
            evidence: &ev,
        };
        let e = Explanation {
            title: String::new(),
            what: String::new(),
            why_it_matters: String::new(),
            evidence_summary: String::new(),
            suggested_fixes: vec![],
        };
        let got = body(&s, &e, 2.0, 1e16);
        assert!(got.contains(r#""sent_at":2.0,"#));
        assert!(got.contains(r#""confidence":0.85,"#));
        assert!(got.contains(r#""step_index":-1,"#));
        assert!(got.contains(r#""detected_at":1e+16,"#));
        assert!(got.ends_with(r#""evidence":{},"suggested_fixes":[]}"#));
    }

    fn names(h: &[(String, String)]) -> Vec<&str> {
        h.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn get<'a>(h: &'a [(String, String)], k: &str) -> &'a str {
        &h.iter().find(|(n, _)| n == k).unwrap().1
    }

    #[test]
    fn headers_without_secret() {
        for secret in [None, Some("")] {
            let h = headers("{}", secret, "wh_1", 1700000000).unwrap();
            assert_eq!(
                names(&h),
                [
                    "Content-Type",
                    "X-Dunetrace-Event",
                    "X-Dunetrace-Version",
                    "webhook-id",
                    "webhook-timestamp"
                ]
            );
            assert_eq!(get(&h, "Content-Type"), "application/json");
            assert_eq!(get(&h, "X-Dunetrace-Event"), "failure_signal");
            assert_eq!(get(&h, "X-Dunetrace-Version"), "1.0");
            assert_eq!(get(&h, "webhook-id"), "wh_1");
            assert_eq!(get(&h, "webhook-timestamp"), "1700000000");
        }
    }

    #[test]
    fn headers_with_plain_secret() {
        let b = r#"{"x":1}"#;
        let h = headers(b, Some("plain-secret"), "wh_1", 1700000000).unwrap();
        assert_eq!(
            names(&h),
            [
                "Content-Type",
                "X-Dunetrace-Event",
                "X-Dunetrace-Version",
                "webhook-id",
                "webhook-timestamp",
                "X-Dunetrace-Signature",
                "webhook-signature"
            ]
        );
        // Computed with CPython's hmac module.
        assert_eq!(
            get(&h, "webhook-signature"),
            "v1,T/qB/4CVbjixjjDorZpn6GXg7Y8/GKWjHnkvCGqulqU="
        );
        assert!(verify_dunetrace_signature(
            b"plain-secret",
            b.as_bytes(),
            get(&h, "X-Dunetrace-Signature")
        ));
    }

    #[test]
    fn headers_with_whsec_secret() {
        let b = r#"{"test": 2432232314}"#;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let h = headers(b, Some(secret), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330).unwrap();
        assert_eq!(
            get(&h, "webhook-signature"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Both signatures use the decoded whsec_ key.
        let key = signing_key(secret).unwrap();
        assert_eq!(
            get(&h, "X-Dunetrace-Signature"),
            dunetrace_signature(&key, b.as_bytes())
        );
        assert_ne!(
            get(&h, "X-Dunetrace-Signature"),
            dunetrace_signature(secret.as_bytes(), b.as_bytes())
        );
        assert!(verify_standard_webhooks(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b.as_bytes(),
            get(&h, "webhook-signature")
        ));
    }

    #[test]
    fn headers_reject_bad_whsec() {
        assert!(headers("{}", Some("whsec_***"), "wh_1", 1).is_err());
    }
}
