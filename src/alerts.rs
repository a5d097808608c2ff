//! Alert destinations and the outbox: storing a live signal queues one delivery per matching
//! destination in the same transaction (the outbox); `dispatch.rs` sends them.

use crate::errors::invalid;
use crate::explain::StoredSignal;
use crate::keys::{oid, random_bytes, Kept};
use crate::settings;
use dunetrace_core::explain;
use dunetrace_core::format::{slack, webhook};
use dunetrace_core::ids;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use std::collections::HashMap;

thread_local! {
    static INSERT_DELIVERIES: Kept = const {
        Kept::new(
            "INSERT INTO dunetrace.deliveries (destination_id, signal_id, kind, webhook_id, body) \
             SELECT d, s, 'signal', w, b \
             FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[]) AS u(d, s, w, b)",
            &[oid::INT4_ARRAY, oid::INT8_ARRAY, oid::TEXT_ARRAY, oid::TEXT_ARRAY],
        )
    };
}

/// Adds a destination: `slack` (an Incoming Webhook URL; default minimum severity HIGH) or
/// `webhook` (any URL; signed with `secret` when given; default minimum LOW). Returns its id.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn add_destination(
    kind: &str,
    url: &str,
    secret: default!(Option<&str>, "NULL"),
    min_severity: default!(Option<&str>, "NULL"),
) -> i32 {
    let default_min = match kind {
        "slack" => "HIGH",
        "webhook" => "LOW",
        _ => invalid(format!(
            "add_destination: kind must be 'slack' or 'webhook', got '{kind}'"
        )),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        invalid("add_destination: url must be an http:// or https:// URL");
    }
    let min = match min_severity {
        None => default_min.to_string(),
        Some(m) => match dunetrace_core::detect::Severity::parse(m) {
            Some(s) => s.as_str().to_string(),
            None => invalid("add_destination: min_severity must be LOW, MEDIUM, HIGH or CRITICAL"),
        },
    };
    if let Some(s) = secret {
        if s.is_empty() {
            invalid("add_destination: secret must not be empty (pass NULL for none)");
        }
        if let Err(e) = dunetrace_core::sign::signing_key(s) {
            invalid(format!("add_destination: {e}"));
        }
    }
    Spi::get_one_with_args::<i32>(
        "INSERT INTO dunetrace.destinations (kind, url, secret, min_severity) \
         VALUES ($1, $2, $3, $4) RETURNING id",
        &[kind.into(), url.into(), secret.into(), min.into()],
    )
    .unwrap_or_else(|e| invalid(format!("add_destination: {e}")))
    .unwrap_or_default()
}

/// Deactivates a destination; its queued deliveries are not sent. False if unknown.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn remove_destination(id: i32) -> bool {
    Spi::get_one_with_args::<bool>(
        "WITH d AS (UPDATE dunetrace.destinations SET active = false WHERE id = $1 AND active \
                    RETURNING id), \
              q AS (UPDATE dunetrace.deliveries SET status = 'failed', \
                           last_error = 'destination removed' \
                    WHERE destination_id IN (SELECT id FROM d) AND status IN ('pending', 'sending')) \
         SELECT EXISTS (SELECT 1 FROM d)",
        &[id.into()],
    )
    .unwrap_or_else(|e| invalid(format!("remove_destination: {e}")))
    .unwrap_or(false)
}

struct Destination {
    id: i32,
    kind: String,
    min_severity: String,
}

fn destinations(client: &SpiClient<'_>) -> Result<Vec<Destination>, SpiError> {
    let rows = client.select(
        "SELECT id, kind, min_severity FROM dunetrace.destinations WHERE active ORDER BY id",
        None,
        &[],
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(Destination {
            id: row.get(1)?.unwrap_or_default(),
            kind: row.get(2)?.unwrap_or_default(),
            min_severity: row.get(3)?.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Live, affected runs / all processed runs of the agent in the last 7 days (a real rate).
pub fn rate_context(
    client: &SpiClient<'_>,
    agent_id: &str,
    failure_type: &str,
) -> Result<slack::RateContext, SpiError> {
    let row = client
        .select(
            "SELECT (SELECT count(DISTINCT run_id) FROM dunetrace.failure_signals \
                     WHERE agent_id = $1 AND failure_type = $2 AND NOT shadow \
                       AND detected_at > now() - interval '7 days'), \
                    (SELECT count(*) FROM dunetrace.processed_runs \
                     WHERE agent_id = $1 AND processed_at > now() - interval '7 days')",
            Some(1),
            &[agent_id.into(), failure_type.into()],
        )?
        .first();
    Ok(slack::RateContext {
        affected_runs: row.get(1)?.unwrap_or(0),
        total_runs: row.get(2)?.unwrap_or(0),
    })
}

/// A new id for a delivery, stable across its retries (the Standard Webhooks `webhook-id`).
pub fn new_webhook_id() -> String {
    format!("msg_{}", ids::hex(&random_bytes::<16>()))
}

/// Queues deliveries for freshly stored live signals whose issue is not ignored, and marks
/// the signals that match no destination as alerted. `muted`: (agent, type) pairs whose issue
/// is ignored.
pub fn enqueue(
    client: &mut SpiClient<'_>,
    signals: &[StoredSignal],
    muted: &[(String, String)],
) -> Result<(), SpiError> {
    let live: Vec<&StoredSignal> = signals.iter().filter(|s| !s.shadow).collect();
    if live.is_empty() {
        return Ok(());
    }
    let dests = destinations(client)?;
    let dashboard = settings::dashboard_url();
    let mut rates: HashMap<(String, String), slack::RateContext> = HashMap::new();
    let (mut d_dest, mut d_signal, mut d_id, mut d_body) = (vec![], vec![], vec![], vec![]);
    let mut consumed: Vec<i64> = Vec::new();
    for s in live {
        let is_muted = muted
            .iter()
            .any(|(a, t)| *a == s.agent_id && *t == s.failure_type);
        let matching: Vec<&Destination> = if is_muted {
            Vec::new()
        } else {
            dests
                .iter()
                .filter(|d| slack::passes_min_severity(&s.severity, &d.min_severity))
                .collect()
        };
        if matching.is_empty() {
            if !is_muted {
                consumed.push(s.id);
            }
            continue;
        }
        let view = s.view();
        let explanation = explain::explain(&view);
        for d in matching {
            let body = if d.kind == "slack" {
                let key = (s.agent_id.clone(), s.failure_type.clone());
                if !rates.contains_key(&key) {
                    let r = rate_context(client, &s.agent_id, &s.failure_type)?;
                    rates.insert(key.clone(), r);
                }
                slack::alert(&view, &explanation, rates.get(&key), &dashboard).to_string()
            } else {
                webhook::body(&view, &explanation, s.detected_at, s.detected_at)
            };
            d_dest.push(d.id);
            d_signal.push(s.id);
            d_id.push(new_webhook_id());
            d_body.push(body);
        }
    }
    if !d_dest.is_empty() {
        let stmt = INSERT_DELIVERIES.with(|k| k.get(client))?;
        client.update(
            stmt,
            None,
            &[d_dest.into(), d_signal.into(), d_id.into(), d_body.into()],
        )?;
    }
    if !consumed.is_empty() {
        client.update(
            "UPDATE dunetrace.failure_signals SET alerted = true WHERE id = ANY($1)",
            None,
            &[consumed.into()],
        )?;
    }
    Ok(())
}
