//! Prometheus metrics in the text exposition format (version 0.0.4), kept in memory.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Every `reason` label of `dunetrace_gateway_events_rejected_total`, one per error class.
pub const REJECTION_REASONS: [&str; 7] = [
    "unauthorized",
    "forbidden",
    "invalid",
    "too_large",
    "unavailable",
    "external",
    "internal",
];

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    events_accepted: u64,
    events_rejected: BTreeMap<&'static str, u64>,
    deploys: BTreeMap<bool, u64>,
}

/// The state of the connection pool at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolState {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

/// All counters; cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters, so a poisoned lock is simply reused.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// One finished HTTP request.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.with(|m| {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            m.latency
                .entry(route.to_string())
                .or_default()
                .observe(elapsed.as_secs_f64());
        });
    }

    pub fn events_accepted(&self, n: u64) {
        self.with(|m| m.events_accepted += n);
    }

    /// Events in a refused request, by reason (one of [`REJECTION_REASONS`]).
    pub fn events_rejected(&self, reason: &'static str, n: u64) {
        self.with(|m| *m.events_rejected.entry(reason).or_default() += n);
    }

    pub fn deploy(&self, stored: bool) {
        self.with(|m| *m.deploys.entry(stored).or_default() += 1);
    }

    /// The exposition text.
    pub fn render(&self, pool: PoolState) -> String {
        let m = self.with(|m| {
            (
                m.requests.clone(),
                m.latency.clone(),
                m.events_accepted,
                m.events_rejected.clone(),
                m.deploys.clone(),
            )
        });
        let (requests, latency, accepted, rejected, deploys) = m;
        let mut out = String::with_capacity(4096);
        let o = &mut out;

        header(
            o,
            "dunetrace_gateway_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for ((route, status), n) in &requests {
            let _ = writeln!(
                o,
                "dunetrace_gateway_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }

        header(
            o,
            "dunetrace_gateway_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to answering it, by route.",
        );
        for (route, h) in &latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    o,
                    "dunetrace_gateway_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                o,
                "dunetrace_gateway_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "dunetrace_gateway_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "dunetrace_gateway_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }

        header(
            o,
            "dunetrace_gateway_events_accepted_total",
            "counter",
            "Events stored by dunetrace.ingest() and committed.",
        );
        let _ = writeln!(o, "dunetrace_gateway_events_accepted_total {accepted}");

        header(
            o,
            "dunetrace_gateway_events_rejected_total",
            "counter",
            "Events in requests that were refused (nothing of them stored), by reason.",
        );
        for reason in REJECTION_REASONS {
            let n = rejected.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "dunetrace_gateway_events_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }

        header(
            o,
            "dunetrace_gateway_deploys_total",
            "counter",
            "Deploy markers received, by whether the database stored them.",
        );
        for stored in [true, false] {
            let n = deploys.get(&stored).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "dunetrace_gateway_deploys_total{{stored=\"{stored}\"}} {n}"
            );
        }

        header(
            o,
            "dunetrace_gateway_db_pool_connections",
            "gauge",
            "Open database connections, idle or in use.",
        );
        let idle = pool.available.min(pool.size);
        let _ = writeln!(
            o,
            "dunetrace_gateway_db_pool_connections{{state=\"idle\"}} {idle}"
        );
        let _ = writeln!(
            o,
            "dunetrace_gateway_db_pool_connections{{state=\"in_use\"}} {}",
            pool.size - idle
        );
        header(
            o,
            "dunetrace_gateway_db_pool_max_connections",
            "gauge",
            "Most database connections the pool may open.",
        );
        let _ = writeln!(
            o,
            "dunetrace_gateway_db_pool_max_connections {}",
            pool.max_size
        );
        header(
            o,
            "dunetrace_gateway_db_pool_waiting",
            "gauge",
            "Requests waiting for a database connection.",
        );
        let _ = writeln!(o, "dunetrace_gateway_db_pool_waiting {}", pool.waiting);
        out
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix} in\n{text}"))
    }

    #[test]
    fn renders_counters_histogram_and_pool() {
        let m = Metrics::default();
        m.request("/v1/ingest", 202, Duration::from_millis(3));
        m.request("/v1/ingest", 202, Duration::from_millis(40));
        m.request("/v1/ingest", 422, Duration::from_secs(100));
        m.events_accepted(200);
        m.events_rejected("invalid", 7);
        m.deploy(false);
        let text = m.render(PoolState {
            max_size: 10,
            size: 4,
            available: 3,
            waiting: 0,
        });
        assert_eq!(
            line(
                &text,
                "dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"202\"}"
            ),
            "dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"202\"} 2"
        );
        let b = "dunetrace_gateway_http_request_duration_seconds_bucket{route=\"/v1/ingest\",";
        assert!(line(&text, &format!("{b}le=\"0.005\"}}")).ends_with(" 1"));
        assert!(line(&text, &format!("{b}le=\"0.05\"}}")).ends_with(" 2"));
        assert!(line(&text, &format!("{b}le=\"30\"}}")).ends_with(" 2"));
        assert!(line(&text, &format!("{b}le=\"+Inf\"}}")).ends_with(" 3"));
        assert!(line(
            &text,
            "dunetrace_gateway_http_request_duration_seconds_count{route=\"/v1/ingest\"}"
        )
        .ends_with(" 3"));
        assert!(line(&text, "dunetrace_gateway_events_accepted_total ").ends_with(" 200"));
        assert!(line(
            &text,
            "dunetrace_gateway_events_rejected_total{reason=\"invalid\"}"
        )
        .ends_with(" 7"));
        assert!(line(
            &text,
            "dunetrace_gateway_events_rejected_total{reason=\"unauthorized\"}"
        )
        .ends_with(" 0"));
        assert!(line(&text, "dunetrace_gateway_deploys_total{stored=\"false\"}").ends_with(" 1"));
        assert!(line(
            &text,
            "dunetrace_gateway_db_pool_connections{state=\"idle\"}"
        )
        .ends_with(" 3"));
        assert!(line(
            &text,
            "dunetrace_gateway_db_pool_connections{state=\"in_use\"}"
        )
        .ends_with(" 1"));
        assert!(line(&text, "dunetrace_gateway_db_pool_max_connections").ends_with(" 10"));
        // Every sample has a TYPE line for its family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE for {name}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
