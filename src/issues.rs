//! Issues: the lifecycle (core/src/issues.rs) applied to stored rows after each batch, and the
//! manual mute/unmute switches.

use crate::errors::invalid;
use dunetrace_core::issues::{self, Issue, Status};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use std::collections::BTreeMap;

/// What a batch's runs did to their issues, as the alerts need it.
#[derive(Default)]
pub struct Effects {
    /// (agent, failure type) pairs whose issue is ignored or snoozed: their signals send no
    /// alerts.
    pub muted: Vec<(String, String)>,
    /// Pairs whose issue opened or reopened in this batch (grouped destinations get a message).
    pub opened: Vec<(String, String)>,
}

impl Effects {
    pub fn is_muted(&self, agent: &str, failure_type: &str) -> bool {
        self.muted
            .iter()
            .any(|(a, t)| a == agent && t == failure_type)
    }

    pub fn opened(&self, agent: &str, failure_type: &str) -> bool {
        self.opened
            .iter()
            .any(|(a, t)| a == agent && t == failure_type)
    }
}

/// Applies processed runs, in processing order, to their agents' issues. `runs`: (agent_id,
/// live failure types signalled for the run).
pub fn update(
    client: &mut SpiClient<'_>,
    runs: &[(String, Vec<String>)],
) -> Result<Effects, SpiError> {
    if runs.is_empty() {
        return Ok(Effects::default());
    }
    let mut agents: BTreeMap<String, Vec<Issue>> = BTreeMap::new();
    for (a, _) in runs {
        agents.entry(a.clone()).or_default();
    }
    let names: Vec<String> = agents.keys().cloned().collect();
    // Serialise read-modify-write per agent across concurrent batches (sorted: no deadlock).
    client.update(
        "SELECT pg_advisory_xact_lock(hashtext('dunetrace.issues'), hashtext(a)) \
         FROM unnest($1::text[]) AS a ORDER BY a",
        None,
        &[names.clone().into()],
    )?;
    let rows = client.select(
        "SELECT agent_id, failure_type, status, affected_runs, clean_runs_since, \
                COALESCE(snoozed_until > now(), false) \
         FROM dunetrace.issues WHERE agent_id = ANY($1)",
        None,
        &[names.into()],
    )?;
    let mut effects = Effects::default();
    for row in rows {
        let agent: String = row.get(1)?.unwrap_or_default();
        let t: String = row.get(2)?.unwrap_or_default();
        if row.get::<bool>(6)?.unwrap_or(false) {
            effects.muted.push((agent.clone(), t.clone()));
        }
        let status =
            Status::parse(&row.get::<String>(3)?.unwrap_or_default()).unwrap_or(Status::Open);
        if let Some(list) = agents.get_mut(&agent) {
            list.push(Issue::stored(
                &t,
                status,
                row.get(4)?.unwrap_or(0),
                row.get(5)?.unwrap_or(0),
            ));
        }
    }
    for (agent, fired) in runs {
        let list = agents.get_mut(agent).expect("collected above");
        let fired: Vec<&str> = fired.iter().map(String::as_str).collect();
        issues::apply_run(list, &fired);
    }
    let mut new = (vec![], vec![], vec![], vec![], vec![]);
    let mut upd = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for (agent, list) in &agents {
        for i in list {
            if i.status == Status::Ignored {
                effects.muted.push((agent.clone(), i.failure_type.clone()));
            }
            if i.is_new || i.reopened_now {
                effects.opened.push((agent.clone(), i.failure_type.clone()));
            }
            if !i.dirty {
                continue;
            }
            if i.is_new {
                new.0.push(agent.clone());
                new.1.push(i.failure_type.clone());
                new.2.push(i.status.as_str().to_string());
                new.3.push(i.affected_runs);
                new.4.push(i.clean_runs_since);
            } else {
                upd.0.push(agent.clone());
                upd.1.push(i.failure_type.clone());
                upd.2.push(i.status.as_str().to_string());
                upd.3.push(i.affected_runs);
                upd.4.push(i.clean_runs_since);
                upd.5.push(i.seen);
                upd.6.push(i.resolved_now);
                upd.7.push(i.reopened_now);
            }
        }
    }
    if !new.0.is_empty() {
        client.update(
            "INSERT INTO dunetrace.issues (agent_id, failure_type, status, affected_runs, \
                                           clean_runs_since) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[])",
            None,
            &[
                new.0.into(),
                new.1.into(),
                new.2.into(),
                new.3.into(),
                new.4.into(),
            ],
        )?;
    }
    if !upd.0.is_empty() {
        client.update(
            "UPDATE dunetrace.issues i SET status = u.st, affected_runs = u.aff, \
                 clean_runs_since = u.clean, \
                 last_seen = CASE WHEN u.seen THEN now() ELSE i.last_seen END, \
                 resolved_at = CASE WHEN u.res THEN now() WHEN u.reo THEN NULL \
                                    ELSE i.resolved_at END \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], \
                         $6::bool[], $7::bool[], $8::bool[]) \
                  AS u(a, t, st, aff, clean, seen, res, reo) \
             WHERE i.agent_id = u.a AND i.failure_type = u.t",
            None,
            &[
                upd.0.into(),
                upd.1.into(),
                upd.2.into(),
                upd.3.into(),
                upd.4.into(),
                upd.5.into(),
                upd.6.into(),
                upd.7.into(),
            ],
        )?;
    }
    Ok(effects)
}

fn set_status(id: i64, sql: &str) -> bool {
    Spi::get_one_with_args::<bool>(sql, &[id.into()])
        .unwrap_or_else(|e| invalid(format!("{e}")))
        .unwrap_or(false)
}

/// Mutes an issue: its (agent, failure type) sends no alerts until `reopen_issue`. False when
/// there is no such issue.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn ignore_issue(id: i64) -> bool {
    set_status(
        id,
        "WITH u AS (UPDATE dunetrace.issues SET status = 'ignored' WHERE id = $1 RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM u)",
    )
}

/// Unmutes an ignored issue (it becomes `open`, counting clean runs afresh) or reopens a
/// resolved one. False when there is no such issue.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reopen_issue(id: i64) -> bool {
    set_status(
        id,
        "WITH u AS (UPDATE dunetrace.issues \
                    SET status = CASE status WHEN 'resolved' THEN 'reopened' \
                                             WHEN 'ignored' THEN 'open' ELSE status END, \
                        clean_runs_since = CASE WHEN status IN ('resolved', 'ignored') THEN 0 \
                                                ELSE clean_runs_since END, \
                        resolved_at = NULL, snoozed_until = NULL \
                    WHERE id = $1 RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM u)",
    )
}

/// Snoozes an issue: its (agent, failure type) sends no alerts until `now() + duration`
/// (`reopen_issue` ends it early). False when there is no such issue.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn snooze_issue(id: i64, duration: pgrx::datum::Interval) -> bool {
    Spi::get_one_with_args::<bool>(
        "WITH u AS (UPDATE dunetrace.issues SET snoozed_until = now() + $2 \
                    WHERE id = $1 AND $2 > interval '0' RETURNING 1) \
         SELECT CASE WHEN $2 <= interval '0' THEN NULL ELSE EXISTS (SELECT 1 FROM u) END",
        &[id.into(), duration.into()],
    )
    .unwrap_or_else(|e| invalid(format!("snooze_issue: {e}")))
    .unwrap_or_else(|| invalid("snooze_issue: the duration must be positive"))
}
