//! Sending queued deliveries: claim due rows (SKIP LOCKED) → send over HTTP → record.
//!
//! The worker claims in one transaction and commits before any network I/O; the outcome is
//! recorded in another. A claimed row carries a visibility deadline, so a worker killed between
//! claim and send leaves a row that is claimed again once the deadline passes: at-least-once,
//! with the same `webhook-id` on every attempt.

use crate::errors::invalid;
use crate::http;
use crate::settings;
use dunetrace_core::delivery::{self, Verdict};
use dunetrace_core::format::webhook;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use std::time::Duration;

/// A claimed delivery with what sending it needs.
pub struct Claimed {
    pub id: i64,
    pub destination_id: i32,
    pub signal_id: Option<i64>,
    pub kind: String,
    pub url: String,
    pub secret: Option<String>,
    pub webhook_id: String,
    pub body: String,
    pub attempts: i32,
}

/// What one attempt got.
pub struct Outcome {
    pub id: i64,
    pub destination_id: i32,
    pub signal_id: Option<i64>,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    /// The answer's `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Outcome {
    /// A failed attempt that never reached a server.
    pub fn failed(c: &Claimed, error: &str) -> Outcome {
        Outcome {
            id: c.id,
            destination_id: c.destination_id,
            signal_id: c.signal_id,
            attempts: c.attempts,
            http_status: None,
            error: Some(error.to_string()),
            retry_after: None,
        }
    }

    fn delivered(&self) -> bool {
        self.error.is_none()
    }

    /// What to do next (core policy).
    pub fn verdict(&self, max_attempts: i32, backoff: Duration) -> Verdict {
        if self.delivered() {
            return Verdict::Delivered;
        }
        delivery::judge(
            self.http_status.and_then(|s| u16::try_from(s).ok()),
            self.retry_after.as_deref(),
            self.attempts,
            max_attempts,
            backoff,
            jitter(self.id, self.attempts),
        )
    }
}

/// A jitter in [0, 1) that differs between deliveries and attempts (no randomness needed: it
/// only has to spread retries of many deliveries apart).
fn jitter(id: i64, attempt: i32) -> f64 {
    let mut x = (id as u64) ^ ((attempt as u64) << 48) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Claims up to `limit` due deliveries (inside the current transaction), of one destination
/// when `destination` is given. `queued_ahead`: deliveries of that destination already claimed
/// and not yet sent, so the claim's visibility deadline covers the wait behind them.
pub fn claim_for(
    destination: Option<i32>,
    limit: i32,
    queued_ahead: usize,
    concurrency: usize,
) -> Result<Vec<Claimed>, SpiError> {
    let per_request = settings::http_timeout().as_secs_f64();
    let rounds = (queued_ahead + limit.max(0) as usize).div_ceil(concurrency.max(1)) as f64;
    let visibility = per_request * rounds.max(1.0) + 5.0;
    let max_attempts = settings::HTTP_MAX_ATTEMPTS.get();
    Spi::connect_mut(|client| {
        // A claim that expired after the last allowed attempt: the sender died mid-send
        // (its outcome was never recorded). Give up rather than retry without bound.
        client.update(
            "WITH gone AS ( \
                 UPDATE dunetrace.deliveries \
                 SET status = 'failed', \
                     last_error = 'no outcome recorded for the last attempt (sender stopped)' \
                 WHERE status = 'sending' AND next_attempt_at <= clock_timestamp() \
                   AND attempts >= $1 \
                 RETURNING id, attempts) \
             INSERT INTO dunetrace.delivery_attempts (delivery_id, attempt, error) \
             SELECT id, attempts, 'no outcome recorded (sender stopped)' FROM gone \
             ON CONFLICT DO NOTHING",
            None,
            &[max_attempts.into()],
        )?;
        let rows = client.update(
            "UPDATE dunetrace.deliveries d \
             SET status = 'sending', attempts = d.attempts + 1, claimed_by = pg_backend_pid(), \
                 next_attempt_at = clock_timestamp() + make_interval(secs => $2) \
             FROM dunetrace.destinations t \
             WHERE t.id = d.destination_id \
               AND d.id IN (SELECT q.id FROM dunetrace.deliveries q \
                            JOIN dunetrace.destinations qt ON qt.id = q.destination_id AND qt.active \
                            WHERE q.status IN ('pending', 'sending') \
                              AND q.next_attempt_at <= clock_timestamp() \
                              AND q.attempts < $3 \
                              AND ($4::int4 IS NULL OR q.destination_id = $4) \
                              AND (qt.rate_limited_until IS NULL \
                                   OR qt.rate_limited_until <= clock_timestamp()) \
                            ORDER BY q.next_attempt_at, q.id \
                            LIMIT $1 \
                            FOR UPDATE OF q SKIP LOCKED) \
             RETURNING d.id, d.destination_id, d.signal_id, t.kind, t.url, t.secret, \
                       d.webhook_id, d.body, d.attempts",
            None,
            &[
                limit.into(),
                visibility.into(),
                max_attempts.into(),
                destination.into(),
            ],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Claimed {
                id: row.get(1)?.unwrap_or_default(),
                destination_id: row.get(2)?.unwrap_or_default(),
                signal_id: row.get(3)?,
                kind: row.get(4)?.unwrap_or_default(),
                url: row.get(5)?.unwrap_or_default(),
                secret: row.get(6)?,
                webhook_id: row.get(7)?.unwrap_or_default(),
                body: row.get(8)?.unwrap_or_default(),
                attempts: row.get(9)?.unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

/// Claims up to `limit` due deliveries of any destination.
pub fn claim(limit: i32) -> Result<Vec<Claimed>, SpiError> {
    claim_for(None, limit, 0, limit.max(1) as usize)
}

/// Makes deliveries claimed by a process that no longer runs due again at once (the worker
/// calls it when it starts: what its previous run had claimed but not sent goes out now rather
/// than after the claims' visibility deadlines). Their attempt stays counted.
pub fn release_orphaned_claims() -> Result<(), SpiError> {
    Spi::run(
        "UPDATE dunetrace.deliveries SET next_attempt_at = clock_timestamp() \
         WHERE status = 'sending' AND claimed_by IS NOT NULL \
           AND claimed_by NOT IN (SELECT pid FROM pg_catalog.pg_stat_activity \
                                  WHERE pid IS NOT NULL)",
    )
}

/// The headers of one delivery's request.
fn request_headers(c: &Claimed) -> Result<Vec<(String, String)>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Retries resend the queued bytes: `sent_at` in a webhook body is when it was queued.
    if c.kind == "webhook" {
        webhook::headers(&c.body, c.secret.as_deref(), &c.webhook_id, now as i64)
            .map_err(|e| format!("bad secret: {e}"))
    } else {
        Ok(vec![(
            "Content-Type".to_string(),
            "application/json".to_string(),
        )])
    }
}

/// Sends one delivery with `agent` (a destination's kept connections). Touches no database
/// state and no Postgres function, so it may run on another thread.
pub fn send_with(c: &Claimed, agent: &http::Agent) -> Outcome {
    let headers = match request_headers(c) {
        Ok(h) => h,
        Err(e) => return Outcome::failed(c, &e),
    };
    let (http_status, error, retry_after) = match agent.post(&c.url, &headers, &c.body) {
        Ok(r) if (200..300).contains(&r.status) => (Some(i32::from(r.status)), None, None),
        Ok(r) => (
            Some(i32::from(r.status)),
            Some(http::status_error(r.status)),
            r.retry_after,
        ),
        Err(e) => (None, Some(e), None),
    };
    Outcome {
        id: c.id,
        destination_id: c.destination_id,
        signal_id: c.signal_id,
        attempts: c.attempts,
        http_status,
        error,
        retry_after,
    }
}

/// Sends one delivery on a fresh connection with `timeout`.
pub fn send(c: &Claimed, timeout: Duration) -> Outcome {
    send_with(c, &http::Agent::new(timeout, 1))
}

/// Records outcomes (inside the current transaction): delivered, retry later (exponential
/// backoff with jitter, or what a 429's `Retry-After` asks, which also holds back the whole
/// destination), or failed after the attempt limit; and each destination's last success or
/// error.
pub fn record(outcomes: &[Outcome]) -> Result<(), SpiError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let max_attempts = settings::HTTP_MAX_ATTEMPTS.get();
    let backoff = Duration::from_millis(settings::HTTP_RETRY_BACKOFF_MS.get().max(0) as u64);
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut statuses = Vec::new();
    let mut codes = Vec::new();
    let mut errors = Vec::new();
    let mut delays = Vec::new();
    let mut alerted = Vec::new();
    let (mut t_dest, mut t_ok, mut t_err, mut t_hold) = (vec![], vec![], vec![], vec![]);
    for o in outcomes {
        ids.push(o.id);
        attempts.push(o.attempts);
        codes.push(o.http_status);
        errors.push(o.error.clone());
        let (status, delay, hold) = match o.verdict(max_attempts, backoff) {
            Verdict::Delivered => ("delivered", 0.0, None),
            Verdict::Retry { after, throttled } => (
                "pending",
                after.as_secs_f64(),
                throttled.then_some(after.as_secs_f64()),
            ),
            Verdict::Failed => ("failed", 0.0, None),
        };
        let delivered = status == "delivered";
        if delivered {
            alerted.extend(o.signal_id);
        }
        t_dest.push(o.destination_id);
        t_ok.push(delivered);
        t_err.push(o.error.clone());
        t_hold.push(hold);
        statuses.push(status.to_string());
        delays.push(delay);
    }
    Spi::connect_mut(|client| {
        // Each destination's state, from its last outcome in this batch. Destinations before
        // deliveries, the order remove_destination() locks them in.
        client.update(
            "UPDATE dunetrace.destinations t \
             SET last_success_at = CASE WHEN u.ok THEN clock_timestamp() ELSE t.last_success_at END, \
                 last_error_at = CASE WHEN u.ok THEN t.last_error_at ELSE clock_timestamp() END, \
                 last_error = CASE WHEN u.ok THEN t.last_error ELSE u.err END, \
                 rate_limited_until = CASE WHEN u.hold IS NOT NULL \
                     THEN clock_timestamp() + make_interval(secs => u.hold) \
                     ELSE t.rate_limited_until END \
             FROM (SELECT DISTINCT ON (d) d, ok, err, hold \
                   FROM unnest($1::int4[], $2::bool[], $3::text[], $4::float8[]) \
                        WITH ORDINALITY AS x(d, ok, err, hold, n) \
                   ORDER BY d, n DESC) u \
             WHERE t.id = u.d",
            None,
            &[t_dest.into(), t_ok.into(), t_err.into(), t_hold.into()],
        )?;
        client.update(
            "UPDATE dunetrace.deliveries d \
             SET status = u.st, last_http_status = u.code, last_error = u.err, claimed_by = NULL, \
                 delivered_at = CASE WHEN u.st = 'delivered' THEN clock_timestamp() END, \
                 next_attempt_at = CASE WHEN u.st = 'pending' \
                                        THEN clock_timestamp() + make_interval(secs => u.delay) \
                                        ELSE d.next_attempt_at END \
             FROM unnest($1::int8[], $2::int4[], $3::text[], $4::int4[], $5::text[], $6::float8[]) \
                  AS u(id, att, st, code, err, delay) \
             WHERE d.id = u.id AND d.attempts = u.att AND d.status = 'sending'",
            None,
            &[
                ids.clone().into(),
                attempts.clone().into(),
                statuses.into(),
                codes.clone().into(),
                errors.clone().into(),
                delays.into(),
            ],
        )?;
        client.update(
            "INSERT INTO dunetrace.delivery_attempts (delivery_id, attempt, http_status, error) \
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[]) \
             ON CONFLICT DO NOTHING",
            None,
            &[ids.into(), attempts.into(), codes.into(), errors.into()],
        )?;
        if !alerted.is_empty() {
            client.update(
                "UPDATE dunetrace.failure_signals SET alerted = true WHERE id = ANY($1) AND NOT alerted",
                None,
                &[alerted.into()],
            )?;
        }
        Ok(())
    })
}

/// Sends due alert deliveries now, inside the caller's transaction (the background worker
/// does this continuously, committing before it sends). Returns how many were attempted.
/// Deliveries are claimed and sent one at a time, so a cancel (`statement_timeout`,
/// `pg_cancel_backend`) takes effect between requests, and the call stops starting requests
/// once `dunetrace.http_total_timeout` is spent (what is left stays queued).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn dispatch(max: default!(i32, 100)) -> i32 {
    if max < 0 {
        invalid("max must not be negative");
    }
    crate::schema::require("dispatch");
    let budget = http::Budget::new(settings::http_total_timeout());
    let mut attempted = 0;
    while attempted < max {
        let Some(timeout) = budget.next(settings::http_timeout()) else {
            break;
        };
        let claimed = claim(1).unwrap_or_else(|e| internal(e));
        let Some(c) = claimed.first() else {
            break;
        };
        record(&[send(c, timeout)]).unwrap_or_else(|e| internal(e));
        attempted += 1;
    }
    attempted
}

fn internal(e: SpiError) -> ! {
    crate::errors::raise(
        pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("dispatch: {e}"),
    )
}
