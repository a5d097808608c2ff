//! Alert destinations and the outbox: storing a live signal queues one delivery per matching
//! destination in the same transaction (the outbox); `dispatch.rs` sends them.

use crate::errors::invalid;
use crate::explain::StoredSignal;
use crate::keys::{oid, random_bytes, Kept};
use crate::{issues, settings};
use dunetrace_core::delivery::Policy;
use dunetrace_core::explain;
use dunetrace_core::format::{followup, slack, webhook};
use dunetrace_core::ids;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

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
    kind: Option<&str>,
    url: Option<&str>,
    secret: default!(Option<&str>, "NULL"),
    min_severity: default!(Option<&str>, "NULL"),
) -> i32 {
    let kind = crate::errors::required("add_destination", "kind", kind);
    let url = crate::errors::required("add_destination", "url", url);
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

/// An active destination as alerting and the worker's lanes need it (never its URL or secret).
pub(crate) struct Destination {
    pub id: i32,
    pub kind: String,
    pub min_severity: String,
    /// The kind's defaults with the destination's overrides applied.
    pub policy: Policy,
    /// Held back after a 429 until `rate_limited_until`.
    pub held_back: bool,
}

/// The active destinations, by id.
pub(crate) fn destinations(client: &SpiClient<'_>) -> Result<Vec<Destination>, SpiError> {
    let rows = client.select(
        "SELECT id, kind, min_severity, params::text, \
                COALESCE(rate_limited_until > clock_timestamp(), false) \
         FROM dunetrace.destinations WHERE active ORDER BY id",
        None,
        &[],
    )?;
    let mut out = Vec::new();
    for row in rows {
        let kind: String = row.get(2)?.unwrap_or_default();
        let params: String = row.get(4)?.unwrap_or_default();
        let params: Map<String, Value> = serde_json::from_str(&params).unwrap_or_default();
        out.push(Destination {
            id: row.get(1)?.unwrap_or_default(),
            policy: Policy::effective(&kind, &params),
            kind,
            min_severity: row.get(3)?.unwrap_or_default(),
            held_back: row.get(5)?.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Sets a destination's delivery policy: `rate_limit` (requests per second, 0 = none),
/// `concurrency`, `group_by_issue`, `repeat_interval` (seconds); `null` restores the kind's
/// default. Returns the effective policy.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn configure_destination(id: i32, params: pgrx::JsonB) -> pgrx::JsonB {
    let Value::Object(given) = params.0 else {
        invalid("configure_destination: params must be a JSON object");
    };
    if let Err(e) = Policy::check(&given) {
        invalid(format!("configure_destination: {e}"));
    }
    let row = Spi::connect_mut(|client| {
        let rows = client.update(
            "UPDATE dunetrace.destinations \
             SET params = jsonb_strip_nulls(params || $2) WHERE id = $1 \
             RETURNING kind, params::text",
            None,
            &[id.into(), pgrx::JsonB(Value::Object(given)).into()],
        )?;
        let mut out = None;
        for r in rows {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, SpiError>(out)
    })
    .unwrap_or_else(|e| invalid(format!("configure_destination: {e}")));
    let Some((kind, stored)) = row else {
        invalid(format!(
            "configure_destination: no destination with id {id}"
        ));
    };
    let stored: Map<String, Value> = serde_json::from_str(&stored).unwrap_or_default();
    let p = Policy::effective(&kind, &stored);
    pgrx::JsonB(serde_json::json!({
        "id": id,
        "kind": kind,
        "rate_limit": p.rate_per_sec,
        "concurrency": p.concurrency,
        "group_by_issue": p.group_by_issue,
        "repeat_interval": p.repeat_interval_secs,
    }))
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

/// Queues deliveries for freshly stored live signals whose issue is not ignored or snoozed,
/// and marks the signals that match no destination as alerted. A destination that groups by
/// issue gets a message only for the first signal of an issue that opened or reopened (or that
/// it has never been told about); later ones are folded into its follow-up
/// ([`queue_followups`]).
pub fn enqueue(
    client: &mut SpiClient<'_>,
    signals: &[StoredSignal],
    effects: &issues::Effects,
) -> Result<(), SpiError> {
    let live: Vec<&StoredSignal> = signals.iter().filter(|s| !s.shadow).collect();
    if live.is_empty() {
        return Ok(());
    }
    let dests = destinations(client)?;
    let known = known_groups(client, &dests, &live)?;
    let dashboard = settings::dashboard_url();
    let mut rates: HashMap<(String, String), slack::RateContext> = HashMap::new();
    let (mut d_dest, mut d_signal, mut d_id, mut d_body) = (vec![], vec![], vec![], vec![]);
    let mut consumed: Vec<i64> = Vec::new();
    // Grouped destinations: groups told in this batch, and runs folded per group.
    let mut told: HashSet<(i32, String, String)> = HashSet::new();
    let mut folded: BTreeMap<(i32, String, String), (i32, i64)> = BTreeMap::new();
    for s in live {
        let is_muted = effects.is_muted(&s.agent_id, &s.failure_type);
        let matching: Vec<&Destination> = if is_muted {
            Vec::new()
        } else {
            dests
                .iter()
                .filter(|d| slack::passes_min_severity(&s.severity, &d.min_severity))
                .collect()
        };
        let mut queued = false;
        let mut explanation = None;
        for d in &matching {
            if d.policy.group_by_issue {
                let key = (d.id, s.agent_id.clone(), s.failure_type.clone());
                let tell = !told.contains(&key)
                    && (effects.opened(&s.agent_id, &s.failure_type) || !known.contains(&key));
                if !tell {
                    let f = folded.entry(key).or_insert((0, s.id));
                    f.0 += 1;
                    f.1 = f.1.max(s.id);
                    continue;
                }
                told.insert(key);
            }
            let view = s.view();
            let explanation = explanation.get_or_insert_with(|| explain::explain(&view));
            let body = if d.kind == "slack" {
                let key = (s.agent_id.clone(), s.failure_type.clone());
                if !rates.contains_key(&key) {
                    let r = rate_context(client, &s.agent_id, &s.failure_type)?;
                    rates.insert(key.clone(), r);
                }
                slack::alert(&view, explanation, rates.get(&key), &dashboard).to_string()
            } else {
                webhook::body(&view, explanation, s.detected_at, s.detected_at)
            };
            d_dest.push(d.id);
            d_signal.push(s.id);
            d_id.push(new_webhook_id());
            d_body.push(body);
            queued = true;
        }
        // Nothing will be sent for it (no destination wants it, or every one folded it):
        // it is handled. A muted signal stays unalerted.
        if !queued && !is_muted {
            consumed.push(s.id);
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
    if !told.is_empty() {
        let (g_dest, g_agent, g_type) = split3(told.into_iter());
        client.update(
            "INSERT INTO dunetrace.alert_groups AS g (destination_id, agent_id, failure_type) \
             SELECT * FROM unnest($1::int4[], $2::text[], $3::text[]) \
             ON CONFLICT (destination_id, agent_id, failure_type) DO UPDATE \
             SET last_sent_at = now(), folded_runs = 0, folded_since = NULL, \
                 last_signal_id = NULL",
            None,
            &[g_dest.into(), g_agent.into(), g_type.into()],
        )?;
    }
    if !folded.is_empty() {
        let mut f = (vec![], vec![], vec![], vec![], vec![]);
        for ((d, a, t), (n, sid)) in folded {
            f.0.push(d);
            f.1.push(a);
            f.2.push(t);
            f.3.push(n);
            f.4.push(sid);
        }
        client.update(
            "INSERT INTO dunetrace.alert_groups AS g (destination_id, agent_id, failure_type, \
                                                      folded_runs, folded_since, last_signal_id) \
             SELECT d, a, t, n, now(), s \
             FROM unnest($1::int4[], $2::text[], $3::text[], $4::int4[], $5::int8[]) \
                  AS u(d, a, t, n, s) \
             ON CONFLICT (destination_id, agent_id, failure_type) DO UPDATE \
             SET folded_runs = g.folded_runs + excluded.folded_runs, \
                 folded_since = COALESCE(g.folded_since, excluded.folded_since), \
                 last_signal_id = excluded.last_signal_id",
            None,
            &[f.0.into(), f.1.into(), f.2.into(), f.3.into(), f.4.into()],
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

fn split3(it: impl Iterator<Item = (i32, String, String)>) -> (Vec<i32>, Vec<String>, Vec<String>) {
    let mut out = (vec![], vec![], vec![]);
    for (d, a, t) in it {
        out.0.push(d);
        out.1.push(a);
        out.2.push(t);
    }
    out
}

/// The groups grouped destinations already have for the agents of `live`.
fn known_groups(
    client: &SpiClient<'_>,
    dests: &[Destination],
    live: &[&StoredSignal],
) -> Result<HashSet<(i32, String, String)>, SpiError> {
    let grouped: Vec<i32> = dests
        .iter()
        .filter(|d| d.policy.group_by_issue)
        .map(|d| d.id)
        .collect();
    let mut out = HashSet::new();
    if grouped.is_empty() {
        return Ok(out);
    }
    let agents: Vec<String> = live
        .iter()
        .map(|s| s.agent_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = client.select(
        "SELECT destination_id, agent_id, failure_type FROM dunetrace.alert_groups \
         WHERE destination_id = ANY($1) AND agent_id = ANY($2)",
        None,
        &[grouped.into(), agents.into()],
    )?;
    for row in rows {
        out.insert((
            row.get(1)?.unwrap_or_default(),
            row.get(2)?.unwrap_or_default(),
            row.get(3)?.unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Queues the follow-ups that are due: for each group with folded runs whose destination's
/// repeat interval has passed since its last message, one summary delivery. Returns how many.
pub fn queue_followups() -> Result<usize, SpiError> {
    Spi::connect_mut(|client| {
        let dests: HashMap<i32, Destination> = destinations(client)?
            .into_iter()
            .map(|d| (d.id, d))
            .collect();
        let rows = client.select(
            "SELECT g.destination_id, g.agent_id, g.failure_type, g.folded_runs, \
                    extract(epoch FROM g.folded_since)::float8, g.last_signal_id, \
                    extract(epoch FROM now() - g.last_sent_at)::float8, \
                    (SELECT s.run_id FROM dunetrace.failure_signals s WHERE s.id = g.last_signal_id) \
             FROM dunetrace.alert_groups g \
             WHERE g.folded_runs > 0",
            None,
            &[],
        )?;
        let dashboard = settings::dashboard_url();
        let now = crate::ingest::now_epoch();
        let (mut d_dest, mut d_signal, mut d_id, mut d_body) = (vec![], vec![], vec![], vec![]);
        let mut sent = Vec::new();
        for row in rows {
            let dest: i32 = row.get(1)?.unwrap_or_default();
            // Groups of removed destinations stay as they are.
            let Some(d) = dests.get(&dest) else {
                continue;
            };
            let elapsed: f64 = row.get(7)?.unwrap_or_default();
            if elapsed < d.policy.repeat_interval_secs as f64 {
                continue;
            }
            let agent: String = row.get(2)?.unwrap_or_default();
            let failure_type: String = row.get(3)?.unwrap_or_default();
            let run: Option<String> = row.get(8)?;
            let f = followup::Folded {
                agent_id: &agent,
                failure_type: &failure_type,
                runs: i64::from(row.get::<i32>(4)?.unwrap_or_default()),
                since: row.get(5)?.unwrap_or(now),
                run_id: run.as_deref(),
            };
            let body = if d.kind == "slack" {
                followup::slack(&f, &dashboard).to_string()
            } else {
                followup::webhook(&f, now)
            };
            d_dest.push(dest);
            d_signal.push(row.get::<i64>(6)?);
            d_id.push(new_webhook_id());
            d_body.push(body);
            sent.push((dest, agent, failure_type));
        }
        if sent.is_empty() {
            return Ok(0);
        }
        client.update(
            "INSERT INTO dunetrace.deliveries (destination_id, signal_id, kind, webhook_id, body) \
             SELECT d, s, 'followup', w, b \
             FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[]) AS u(d, s, w, b)",
            None,
            &[d_dest.into(), d_signal.into(), d_id.into(), d_body.into()],
        )?;
        let n = sent.len();
        let (g_dest, g_agent, g_type) = split3(sent.into_iter());
        client.update(
            "UPDATE dunetrace.alert_groups g \
             SET last_sent_at = now(), folded_runs = 0, folded_since = NULL, last_signal_id = NULL \
             FROM unnest($1::int4[], $2::text[], $3::text[]) AS u(d, a, t) \
             WHERE g.destination_id = u.d AND g.agent_id = u.a AND g.failure_type = u.t",
            None,
            &[g_dest.into(), g_agent.into(), g_type.into()],
        )?;
        Ok(n)
    })
}
