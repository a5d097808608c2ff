//! The weekly digest: built from the last 7 days, queued to every Slack destination through
//! the outbox, guarded by `digest_log` so no second digest goes out within 6 days, even with
//! several workers or restarts (an advisory lock serialises the check and the log insert).

use crate::alerts::new_webhook_id;
use crate::{settings, wake};
use dunetrace_core::format::digest::{self, AgentStat, DigestData, SystemicPattern, TypeStat};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

/// Builds the digest and queues it for Slack now. Without `force`, only at the configured
/// `dunetrace.digest_day` / `digest_hour` (UTC) and not within 6 days of the last one.
/// Returns true when a digest was queued.
#[pg_extern(name = "send_digest", security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn send_digest_sql(force: default!(bool, false)) -> bool {
    send(force)
}

/// Shared by the SQL function and the worker; runs in the current transaction.
pub fn send(force: bool) -> bool {
    Spi::connect_mut(|client| send_in(client, force)).unwrap_or_else(|e| {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("send_digest: {e}"),
        )
    })
}

fn send_in(client: &mut SpiClient<'_>, force: bool) -> Result<bool, SpiError> {
    if !force {
        let row = client
            .select(
                "SELECT (extract(isodow FROM now() AT TIME ZONE 'UTC') - 1)::int4, \
                        extract(hour FROM now() AT TIME ZONE 'UTC')::int4",
                Some(1),
                &[],
            )?
            .first();
        let (dow, hour): (i32, i32) = (row.get(1)?.unwrap_or(-1), row.get(2)?.unwrap_or(-1));
        if dow != settings::DIGEST_DAY.get() || hour != settings::DIGEST_HOUR.get() {
            return Ok(false);
        }
    }
    let slack: Vec<i32> = {
        let rows = client.select(
            "SELECT id FROM dunetrace.destinations WHERE active AND kind = 'slack' ORDER BY id",
            None,
            &[],
        )?;
        let mut v = Vec::new();
        for r in rows {
            v.push(r.get::<i32>(1)?.unwrap_or_default());
        }
        v
    };
    if slack.is_empty() {
        return Ok(false);
    }
    client.update(
        "SELECT pg_advisory_xact_lock(hashtext('dunetrace.digest'))",
        None,
        &[],
    )?;
    if !force {
        let recent = client
            .select(
                "SELECT EXISTS ( \
                     SELECT 1 FROM dunetrace.digest_log l \
                     WHERE l.digest_type = 'weekly' AND l.sent_at >= now() - interval '6 days' \
                       AND (NOT EXISTS (SELECT 1 FROM dunetrace.deliveries d WHERE d.digest_id = l.id) \
                            OR EXISTS (SELECT 1 FROM dunetrace.deliveries d \
                                       WHERE d.digest_id = l.id AND d.status <> 'failed')))",
                Some(1),
                &[],
            )?
            .first()
            .get::<bool>(1)?
            .unwrap_or(false);
        if recent {
            return Ok(false);
        }
    }
    let data = collect(client)?;
    // A digest counts for the 6-day guard unless every delivery of it failed (then the next
    // check within the scheduled hour tries again). A week without runs is logged and skipped.
    let log_id: i64 = client
        .update(
            "INSERT INTO dunetrace.digest_log (digest_type) VALUES ('weekly') RETURNING id",
            None,
            &[],
        )?
        .first()
        .get(1)?
        .unwrap_or_default();
    if data.total_runs == 0 {
        // Nothing happened this week: remember the week, send nothing.
        return Ok(false);
    }
    let body = digest::slack_digest(&data, &settings::dashboard_url()).to_string();
    let ids: Vec<String> = slack.iter().map(|_| new_webhook_id()).collect();
    client.update(
        "INSERT INTO dunetrace.deliveries (destination_id, kind, webhook_id, body, digest_id) \
         SELECT d, 'digest', w, $3, $4 FROM unnest($1::int4[], $2::text[]) AS u(d, w)",
        None,
        &[slack.into(), ids.into(), body.into(), log_id.into()],
    )?;
    wake::wake_worker_on_commit();
    Ok(true)
}

/// The last 7 days, live signals only, with real rates.
fn collect(client: &SpiClient<'_>) -> Result<DigestData, SpiError> {
    let totals = client
        .select(
            "SELECT extract(epoch FROM now() - interval '7 days')::int8, \
                    extract(epoch FROM now())::int8, \
                    (SELECT count(*) FROM dunetrace.processed_runs \
                     WHERE processed_at >= now() - interval '7 days'), \
                    (SELECT count(DISTINCT agent_id) FROM dunetrace.processed_runs \
                     WHERE processed_at >= now() - interval '7 days'), \
                    (SELECT count(*) FROM dunetrace.failure_signals \
                     WHERE NOT shadow AND detected_at >= now() - interval '7 days'), \
                    (SELECT count(*) FROM dunetrace.issues \
                     WHERE first_seen >= now() - interval '7 days'), \
                    (SELECT count(*) FROM dunetrace.issues \
                     WHERE resolved_at >= now() - interval '7 days')",
            Some(1),
            &[],
        )?
        .first();
    let mut d = DigestData {
        window_start: totals.get(1)?.unwrap_or_default(),
        window_end: totals.get(2)?.unwrap_or_default(),
        total_runs: totals.get(3)?.unwrap_or_default(),
        total_agents: totals.get(4)?.unwrap_or_default(),
        total_signals: totals.get(5)?.unwrap_or_default(),
        issues_opened: totals.get(6)?.unwrap_or_default(),
        issues_resolved: totals.get(7)?.unwrap_or_default(),
        ..Default::default()
    };
    for row in client.select(
        "SELECT failure_type, count(DISTINCT run_id) FROM dunetrace.failure_signals \
         WHERE NOT shadow AND detected_at >= now() - interval '7 days' \
         GROUP BY failure_type ORDER BY 2 DESC, 1 LIMIT 5",
        None,
        &[],
    )? {
        d.top_failure_types.push(TypeStat {
            failure_type: row.get(1)?.unwrap_or_default(),
            affected_runs: row.get(2)?.unwrap_or_default(),
            total_runs: d.total_runs,
        });
    }
    for row in client.select(
        "SELECT agent_id, count(*), count(DISTINCT run_id), \
                mode() WITHIN GROUP (ORDER BY failure_type) \
         FROM dunetrace.failure_signals \
         WHERE NOT shadow AND detected_at >= now() - interval '7 days' \
         GROUP BY agent_id ORDER BY 2 DESC, 1 LIMIT 5",
        None,
        &[],
    )? {
        d.top_agents.push(AgentStat {
            agent_id: row.get(1)?.unwrap_or_default(),
            signal_count: row.get(2)?.unwrap_or_default(),
            run_count: row.get(3)?.unwrap_or_default(),
            dominant_type: row.get(4)?,
        });
    }
    for row in client.select(
        "WITH runs AS (SELECT agent_id, count(*) AS total FROM dunetrace.processed_runs \
                       WHERE processed_at >= now() - interval '7 days' GROUP BY agent_id), \
              hit AS (SELECT agent_id, failure_type, count(DISTINCT run_id) AS affected \
                      FROM dunetrace.failure_signals \
                      WHERE NOT shadow AND detected_at >= now() - interval '7 days' \
                      GROUP BY agent_id, failure_type) \
         SELECT h.agent_id, h.failure_type, h.affected, r.total \
         FROM hit h JOIN runs r USING (agent_id) \
         WHERE h.affected::float8 / r.total >= 0.10 \
         ORDER BY h.affected::float8 / r.total DESC, h.affected DESC, 1, 2 LIMIT 10",
        None,
        &[],
    )? {
        d.systemic.push(SystemicPattern {
            agent_id: row.get(1)?.unwrap_or_default(),
            failure_type: row.get(2)?.unwrap_or_default(),
            affected_runs: row.get(3)?.unwrap_or_default(),
            total_runs: row.get(4)?.unwrap_or_default(),
        });
    }
    Ok(d)
}
