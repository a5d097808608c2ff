//! Sending queued deliveries: claim due rows (SKIP LOCKED) → send over HTTP → record.
//!
//! The worker claims in one transaction and commits before any network I/O; the outcome is
//! recorded in another. A claimed row carries a visibility deadline, so a worker killed between
//! claim and send leaves a row that is claimed again once the deadline passes: at-least-once,
//! with the same `webhook-id` on every attempt.

use crate::errors::invalid;
use crate::http;
use crate::settings;
use dunetrace_core::format::webhook;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// A claimed delivery with what sending it needs.
pub struct Claimed {
    pub id: i64,
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
    pub signal_id: Option<i64>,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

impl Outcome {
    /// A failed attempt that never reached a server.
    pub fn failed(c: &Claimed, error: &str) -> Outcome {
        Outcome {
            id: c.id,
            signal_id: c.signal_id,
            attempts: c.attempts,
            http_status: None,
            error: Some(error.to_string()),
        }
    }

    fn delivered(&self) -> bool {
        self.error.is_none()
    }
}

/// Claims up to `limit` due deliveries (inside the current transaction).
pub fn claim(limit: i32) -> Result<Vec<Claimed>, SpiError> {
    let visibility = settings::http_timeout().as_secs_f64() + 5.0;
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
             SET status = 'sending', attempts = d.attempts + 1, \
                 next_attempt_at = clock_timestamp() + make_interval(secs => $2) \
             FROM dunetrace.destinations t \
             WHERE t.id = d.destination_id \
               AND d.id IN (SELECT q.id FROM dunetrace.deliveries q \
                            JOIN dunetrace.destinations qt ON qt.id = q.destination_id AND qt.active \
                            WHERE q.status IN ('pending', 'sending') \
                              AND q.next_attempt_at <= clock_timestamp() \
                              AND q.attempts < $3 \
                            ORDER BY q.next_attempt_at, q.id \
                            LIMIT $1 \
                            FOR UPDATE OF q SKIP LOCKED) \
             RETURNING d.id, d.signal_id, t.kind, t.url, t.secret, d.webhook_id, d.body, d.attempts",
            None,
            &[limit.into(), visibility.into(), max_attempts.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Claimed {
                id: row.get(1)?.unwrap_or_default(),
                signal_id: row.get(2)?,
                kind: row.get(3)?.unwrap_or_default(),
                url: row.get(4)?.unwrap_or_default(),
                secret: row.get(5)?,
                webhook_id: row.get(6)?.unwrap_or_default(),
                body: row.get(7)?.unwrap_or_default(),
                attempts: row.get(8)?.unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

/// Sends one delivery. Touches no database state and no Postgres function, so it may run on
/// another thread.
pub fn send(c: &Claimed, timeout: std::time::Duration) -> Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Retries resend the queued bytes: `sent_at` in a webhook body is when it was queued.
    let body = &c.body;
    let headers = if c.kind == "webhook" {
        match webhook::headers(body, c.secret.as_deref(), &c.webhook_id, now as i64) {
            Ok(h) => h,
            Err(e) => return Outcome::failed(c, &format!("bad secret: {e}")),
        }
    } else {
        vec![("Content-Type".to_string(), "application/json".to_string())]
    };
    let (http_status, error) = match http::post(&c.url, &headers, body, timeout) {
        Ok(r) if (200..300).contains(&r.status) => (Some(i32::from(r.status)), None),
        Ok(r) => (
            Some(i32::from(r.status)),
            Some(http::status_error(r.status)),
        ),
        Err(e) => (None, Some(e)),
    };
    Outcome {
        id: c.id,
        signal_id: c.signal_id,
        attempts: c.attempts,
        http_status,
        error,
    }
}

/// Records outcomes (inside the current transaction): delivered, retry later with
/// exponential backoff, or failed after the attempt limit.
pub fn record(outcomes: &[Outcome]) -> Result<(), SpiError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let max_attempts = settings::HTTP_MAX_ATTEMPTS.get();
    let backoff_ms = f64::from(settings::HTTP_RETRY_BACKOFF_MS.get());
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut statuses = Vec::new();
    let mut codes = Vec::new();
    let mut errors = Vec::new();
    let mut delays = Vec::new();
    let mut alerted = Vec::new();
    let history = (
        outcomes.iter().map(|o| o.id).collect::<Vec<i64>>(),
        outcomes.iter().map(|o| o.attempts).collect::<Vec<i32>>(),
        outcomes
            .iter()
            .map(|o| o.http_status)
            .collect::<Vec<Option<i32>>>(),
        outcomes
            .iter()
            .map(|o| o.error.clone())
            .collect::<Vec<Option<String>>>(),
    );
    for o in outcomes {
        ids.push(o.id);
        attempts.push(o.attempts);
        codes.push(o.http_status);
        errors.push(o.error.clone());
        let status = if o.delivered() {
            if let Some(s) = o.signal_id {
                alerted.push(s);
            }
            "delivered"
        } else if o.attempts >= max_attempts {
            "failed"
        } else {
            "pending"
        };
        statuses.push(status.to_string());
        let exp = (o.attempts - 1).clamp(0, 30);
        delays.push(backoff_ms * f64::from(1u32 << exp) / 1000.0);
    }
    Spi::connect_mut(|client| {
        client.update(
            "UPDATE dunetrace.deliveries d \
             SET status = u.st, last_http_status = u.code, last_error = u.err, \
                 delivered_at = CASE WHEN u.st = 'delivered' THEN clock_timestamp() END, \
                 next_attempt_at = CASE WHEN u.st = 'pending' \
                                        THEN clock_timestamp() + make_interval(secs => u.delay) \
                                        ELSE d.next_attempt_at END \
             FROM unnest($1::int8[], $2::int4[], $3::text[], $4::int4[], $5::text[], $6::float8[]) \
                  AS u(id, att, st, code, err, delay) \
             WHERE d.id = u.id AND d.attempts = u.att AND d.status = 'sending'",
            None,
            &[
                ids.into(),
                attempts.into(),
                statuses.into(),
                codes.into(),
                errors.into(),
                delays.into(),
            ],
        )?;
        client.update(
            "INSERT INTO dunetrace.delivery_attempts (delivery_id, attempt, http_status, error) \
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[]) \
             ON CONFLICT DO NOTHING",
            None,
            &[
                history.0.into(),
                history.1.into(),
                history.2.into(),
                history.3.into(),
            ],
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
