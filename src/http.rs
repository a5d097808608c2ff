//! Outbound HTTP (alerts, Langfuse) with ureq. Never called while the worker holds locks the
//! user could wait on.

use std::time::Duration;

/// The outcome of one request that reached a server.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// The `Retry-After` header, when the server sent one.
    pub retry_after: Option<String>,
}

fn config(timeout: Duration, connections: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // A redirect is answered, never followed: a destination or Langfuse host cannot send
        // a signed alert or credentials on to another address.
        .max_redirects(0)
        .max_idle_connections_per_host(connections.max(1))
        .max_idle_connections(connections.max(1) * 4)
        .user_agent("dunetrace")
        .build()
        .into()
}

/// Kept connections to one destination (HTTP keep-alive, TLS sessions set up once), shared by
/// the threads that send to it.
pub struct Agent {
    inner: ureq::Agent,
}

impl Agent {
    /// `connections`: how many idle connections to keep (the destination's concurrency).
    pub fn new(timeout: Duration, connections: usize) -> Agent {
        Agent {
            inner: config(timeout, connections),
        }
    }

    /// POSTs `body` with `headers`; `Err` when no HTTP answer arrived (refused, timeout, TLS).
    pub fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = self.inner.post(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.send(body).map(read).map_err(describe)
    }
}

/// Reads at most 64 KiB of a response body.
fn read(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect());
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        body,
        retry_after,
    }
}

/// POSTs `body` with `headers` on a fresh connection.
pub fn post(
    url: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<Reply, String> {
    Agent::new(timeout, 1).post(url, headers, body)
}

/// GETs `url` with `headers`.
pub fn get(url: &str, headers: &[(String, String)], timeout: Duration) -> Result<Reply, String> {
    let mut req = config(timeout, 1).get(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.call().map(read).map_err(describe)
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// Why a status that is not 2xx failed, as recorded for an attempt.
pub fn status_error(status: u16) -> String {
    if (300..400).contains(&status) {
        format!("HTTP {status} (redirects are not followed)")
    } else {
        format!("HTTP {status}")
    }
}

/// A time budget shared by the requests of one SQL call (`dunetrace.http_total_timeout`).
pub struct Budget {
    deadline: std::time::Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget {
            deadline: std::time::Instant::now() + total,
        }
    }

    /// The timeout for the next request: `per_request`, cut to what is left of the budget;
    /// `None` once it is spent. Also honours a pending cancel (`statement_timeout`,
    /// `pg_cancel_backend`) by raising it here, between requests.
    pub fn next(&self, per_request: Duration) -> Option<Duration> {
        pgrx::pg_sys::check_for_interrupts!();
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        (!left.is_zero()).then(|| left.min(per_request))
    }
}

/// Percent-encodes a URL path segment (everything but unreserved characters).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
