//! Delivery policy: how each kind of destination is sent to by default, what one attempt's
//! outcome means (delivered, retry after a delay, give up), and per-destination rate limits.
//! The shell sends and records; every decision is made here.

use serde_json::{Map, Value};
use std::time::Duration;

/// How alerts reach one destination. Configured per destination
/// (`dunetrace.configure_destination`), with defaults by kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Requests per second at most; 0 = no limit.
    pub rate_per_sec: f64,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// One message when an issue opens or reopens, then at most one summary per
    /// `repeat_interval_secs` for the runs folded into it (Slack's default), instead of one
    /// delivery per live signal (webhooks' default).
    pub group_by_issue: bool,
    pub repeat_interval_secs: i64,
}

/// The parameter names `configure_destination` accepts.
pub const PARAMS: &[&str] = &[
    "rate_limit",
    "concurrency",
    "group_by_issue",
    "repeat_interval",
];

impl Policy {
    /// The defaults of a destination kind: Slack accepts about one message per second and
    /// people read it, so it is grouped and limited; machines behind a webhook take every
    /// signal as fast as they answer.
    pub fn defaults(kind: &str) -> Policy {
        if kind == "slack" {
            Policy {
                rate_per_sec: 1.0,
                concurrency: 1,
                group_by_issue: true,
                repeat_interval_secs: 3600,
            }
        } else {
            Policy {
                rate_per_sec: 0.0,
                concurrency: 8,
                group_by_issue: false,
                repeat_interval_secs: 3600,
            }
        }
    }

    /// The defaults of `kind` with the stored overrides `params` applied (unknown or invalid
    /// entries are ignored here; `check` refuses them when they are set).
    pub fn effective(kind: &str, params: &Map<String, Value>) -> Policy {
        let mut p = Policy::defaults(kind);
        if let Some(v) = params.get("rate_limit").and_then(Value::as_f64) {
            if v >= 0.0 && v.is_finite() {
                p.rate_per_sec = v;
            }
        }
        if let Some(v) = params.get("concurrency").and_then(Value::as_u64) {
            if (1..=64).contains(&v) {
                p.concurrency = v as u32;
            }
        }
        if let Some(v) = params.get("group_by_issue").and_then(Value::as_bool) {
            p.group_by_issue = v;
        }
        if let Some(v) = params.get("repeat_interval").and_then(Value::as_i64) {
            if v >= 1 {
                p.repeat_interval_secs = v;
            }
        }
        p
    }

    /// Checks overrides given to `configure_destination`: names and values. `null` removes an
    /// override. Returns a message naming the offending parameter.
    pub fn check(params: &Map<String, Value>) -> Result<(), String> {
        for (k, v) in params {
            if v.is_null() && PARAMS.contains(&k.as_str()) {
                continue;
            }
            let ok = match k.as_str() {
                "rate_limit" => v.as_f64().is_some_and(|x| (0.0..=100_000.0).contains(&x)),
                "concurrency" => v.as_u64().is_some_and(|x| (1..=64).contains(&x)),
                "group_by_issue" => v.is_boolean(),
                "repeat_interval" => v.as_i64().is_some_and(|x| (1..=30 * 86_400).contains(&x)),
                _ => {
                    return Err(format!(
                        "unknown parameter \"{}\"; accepted: {}",
                        crate::validate::echo_name(k),
                        PARAMS.join(", ")
                    ))
                }
            };
            if !ok {
                return Err(format!(
                    "{k} must be {}",
                    match k.as_str() {
                        "rate_limit" => "a number of requests per second, 0 (no limit) to 100000",
                        "concurrency" => "an integer from 1 to 64",
                        "group_by_issue" => "true or false",
                        _ => "a number of seconds from 1 to 2592000 (30 days)",
                    }
                ));
            }
        }
        Ok(())
    }
}

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    /// Try again after this long. `throttled`: the destination asked us to slow down (429);
    /// nothing else is sent to it before then.
    Retry {
        after: Duration,
        throttled: bool,
    },
    /// Give up: the attempt limit is reached.
    Failed,
}

/// Longest wait a `Retry-After` may impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` header given in seconds (the form Slack and most APIs send). An HTTP
/// date or garbage gives `None` (the normal backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Judges attempt number `attempt` (1-based) of a delivery allowed `max_attempts`: `status`
/// is the HTTP status when a server answered (`None`: refused, timed out, TLS failed),
/// `retry_after` its `Retry-After` header. Failures wait `backoff × 2^(attempt−1)`, stretched
/// by up to a quarter by `jitter` (0 ≤ jitter < 1), so retries of many deliveries spread out.
pub fn judge(
    status: Option<u16>,
    retry_after: Option<&str>,
    attempt: i32,
    max_attempts: i32,
    backoff: Duration,
    jitter: f64,
) -> Verdict {
    if status.is_some_and(|s| (200..300).contains(&s)) {
        return Verdict::Delivered;
    }
    if attempt >= max_attempts {
        return Verdict::Failed;
    }
    let exp = (attempt - 1).clamp(0, 30) as u32;
    let base = backoff.saturating_mul(1u32 << exp.min(20));
    let spread = base.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 0.999));
    if status == Some(429) {
        let after = retry_after.and_then(parse_retry_after).unwrap_or(spread);
        return Verdict::Retry {
            after,
            throttled: true,
        };
    }
    Verdict::Retry {
        after: spread,
        throttled: false,
    }
}

/// A token bucket: at most `rate` requests per second on average, bursts up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// Seconds (any monotonic origin) of the last refill.
    at: f64,
}

impl Bucket {
    /// A full bucket. `rate` 0 = unlimited.
    pub fn new(rate: f64, now: f64) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes up to `want` tokens at time `now`; returns how many were granted.
    pub fn take(&mut self, want: usize, now: f64) -> usize {
        if self.rate <= 0.0 {
            return want;
        }
        self.tokens = (self.tokens + (now - self.at).max(0.0) * self.rate).min(self.burst);
        self.at = now;
        let granted = (self.tokens.floor() as usize).min(want);
        self.tokens -= granted as f64;
        granted
    }

    /// Returns `n` tokens taken but not used.
    pub fn give_back(&mut self, n: usize) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + n as f64).min(self.burst);
        }
    }

    /// Seconds until the next token, from `now` (0 when one is there or unlimited).
    pub fn wait(&self, now: f64) -> f64 {
        if self.rate <= 0.0 {
            return 0.0;
        }
        let tokens = (self.tokens + (now - self.at).max(0.0) * self.rate).min(self.burst);
        if tokens >= 1.0 {
            0.0
        } else {
            (1.0 - tokens) / self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const B: Duration = Duration::from_secs(2);

    #[test]
    fn a_2xx_is_delivered_whatever_the_attempt() {
        assert_eq!(judge(Some(204), None, 9, 3, B, 0.0), Verdict::Delivered);
    }

    #[test]
    fn failures_back_off_exponentially_with_bounded_jitter_until_the_limit() {
        assert_eq!(
            judge(Some(500), None, 1, 3, B, 0.0),
            Verdict::Retry {
                after: B,
                throttled: false
            }
        );
        assert_eq!(
            judge(None, None, 2, 3, B, 0.0),
            Verdict::Retry {
                after: B * 2,
                throttled: false
            }
        );
        let Verdict::Retry { after, .. } = judge(Some(503), None, 2, 3, B, 0.99) else {
            panic!("a retry")
        };
        assert!(after > B * 2 && after < B * 2 + B / 2, "{after:?}");
        assert_eq!(judge(Some(500), None, 3, 3, B, 0.0), Verdict::Failed);
    }

    #[test]
    fn a_429_waits_what_retry_after_says() {
        assert_eq!(
            judge(Some(429), Some("2"), 1, 3, B, 0.5),
            Verdict::Retry {
                after: Duration::from_secs(2),
                throttled: true
            }
        );
        // An HTTP date is not understood: the normal backoff, still throttled.
        assert_eq!(
            judge(
                Some(429),
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                1,
                3,
                B,
                0.0
            ),
            Verdict::Retry {
                after: B,
                throttled: true
            }
        );
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(judge(Some(429), Some("1"), 3, 3, B, 0.0), Verdict::Failed);
    }

    #[test]
    fn buckets_grant_the_rate_and_refill() {
        let mut b = Bucket::new(1.0, 0.0);
        assert_eq!(b.take(5, 0.0), 1);
        assert_eq!(b.take(5, 0.5), 0);
        assert!((b.wait(0.5) - 0.5).abs() < 1e-9);
        assert_eq!(b.take(5, 1.0), 1);
        assert_eq!(b.take(5, 10.0), 1, "the burst is one token at 1/s");
        let mut fast = Bucket::new(100.0, 0.0);
        assert_eq!(fast.take(500, 0.0), 100);
        assert_eq!(fast.take(500, 0.5), 50);
        let mut none = Bucket::new(0.0, 0.0);
        assert_eq!(none.take(1000, 0.0), 1000);
        assert_eq!(none.wait(0.0), 0.0);
    }

    #[test]
    fn policies_default_by_kind_and_take_checked_overrides() {
        assert!(Policy::defaults("slack").group_by_issue);
        assert_eq!(Policy::defaults("slack").rate_per_sec, 1.0);
        assert!(!Policy::defaults("webhook").group_by_issue);
        let p = json!({"rate_limit": 5, "group_by_issue": true, "repeat_interval": 60});
        let p = p.as_object().unwrap();
        assert!(Policy::check(p).is_ok());
        let e = Policy::effective("webhook", p);
        assert_eq!(
            (e.rate_per_sec, e.group_by_issue, e.repeat_interval_secs),
            (5.0, true, 60)
        );
        for bad in [
            json!({"rate_limit": -1}),
            json!({"concurrency": 0}),
            json!({"group_by_issue": "yes"}),
            json!({"repeat_interval": 0}),
            json!({"retries": 3}),
        ] {
            assert!(Policy::check(bad.as_object().unwrap()).is_err(), "{bad}");
        }
        assert!(Policy::check(json!({"rate_limit": null}).as_object().unwrap()).is_ok());
    }
}
