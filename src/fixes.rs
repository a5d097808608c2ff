//! Fix tracking (README.md, "Fixes"): record fixes, judge whether they
//! worked, and publish prompt fixes to Langfuse.

use crate::errors::{invalid, raise};
use crate::explain::StoredSignal;
use crate::{http, settings};
use base64::Engine;
use dunetrace_core::explain;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{json, Value};

fn load_signal(signal_id: i64) -> StoredSignal {
    StoredSignal::load(signal_id).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("no signal with id {signal_id}"),
        )
    })
}

fn insert_fix(
    s: &StoredSignal,
    fix_content: &str,
    applied_via: &str,
    prompt_name: Option<&str>,
    prompt_version: Option<i32>,
) -> i64 {
    Spi::get_one_with_args::<i64>(
        "INSERT INTO dunetrace.fixes (run_id, signal_id, fix_content, fix_type, applied_via, \
                                      langfuse_prompt_name, langfuse_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            s.run_id.as_str().into(),
            s.id.into(),
            fix_content.into(),
            explain::fix_type(&s.failure_type).into(),
            applied_via.into(),
            prompt_name.into(),
            prompt_version.into(),
        ],
    )
    .unwrap_or_else(|e| invalid(format!("could not record the fix: {e}")))
    .unwrap_or_default()
}

/// Records that a fix was applied for a signal; `fix_type` is classified from the signal's
/// failure type. Returns the fix id.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn record_fix(
    signal_id: Option<i64>,
    fix_content: Option<&str>,
    applied_via: Option<&str>,
    prompt_name: default!(Option<&str>, "NULL"),
    prompt_version: default!(Option<i32>, "NULL"),
) -> i64 {
    let signal_id = crate::errors::required("record_fix", "signal_id", signal_id);
    let fix_content = crate::errors::required("record_fix", "fix_content", fix_content);
    let applied_via = crate::errors::required("record_fix", "applied_via", applied_via);
    if fix_content.trim().is_empty() {
        invalid("record_fix: fix_content must not be empty");
    }
    if applied_via.is_empty() || applied_via.len() > 64 {
        invalid("record_fix: applied_via must be 1-64 characters (e.g. 'langfuse', 'clipboard', 'manual')");
    }
    let s = load_signal(signal_id);
    insert_fix(&s, fix_content, applied_via, prompt_name, prompt_version)
}

/// Whether the earliest fix for a signal worked: `verified` (≥ 10 runs since, no recurrence),
/// `likely_fixed` (≥ 5, none), `still_occurring` (any recurrence of the same agent and failure
/// type) or `insufficient_data`.
#[pg_extern(stable, security_definer, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn fix_status(signal_id: i64) -> pgrx::JsonB {
    let s = load_signal(signal_id);
    let row = Spi::connect(|client| {
        let t = client.select(
            "SELECT f.id, f.applied_via, f.fix_type, extract(epoch FROM f.applied_at)::float8, \
                    (SELECT count(*) FROM dunetrace.runs r \
                     WHERE r.agent_id = $2 AND r.last_received_at > f.applied_at), \
                    (SELECT count(*) FROM dunetrace.failure_signals x \
                     WHERE x.agent_id = $2 AND x.failure_type = $3 AND x.detected_at > f.applied_at) \
             FROM dunetrace.fixes f WHERE f.signal_id = $1 ORDER BY f.applied_at, f.id LIMIT 1",
            Some(1),
            &[signal_id.into(), s.agent_id.as_str().into(), s.failure_type.as_str().into()],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<i64>(1)?.unwrap_or_default(),
            r.get::<String>(2)?.unwrap_or_default(),
            r.get::<String>(3)?.unwrap_or_default(),
            r.get::<f64>(4)?.unwrap_or_default(),
            r.get::<i64>(5)?.unwrap_or_default(),
            r.get::<i64>(6)?.unwrap_or_default(),
        )))
    })
    .unwrap_or_else(|e| invalid(format!("fix_status: {e}")));
    let Some((fix_id, via, fix_type, applied_at, runs_after, recurrences)) = row else {
        return pgrx::JsonB(json!({"signal_id": signal_id, "fix_applied": false}));
    };
    let verdict = if recurrences > 0 {
        "still_occurring"
    } else if runs_after >= 10 {
        "verified"
    } else if runs_after >= 5 {
        "likely_fixed"
    } else {
        "insufficient_data"
    };
    pgrx::JsonB(json!({
        "signal_id": signal_id,
        "fix_applied": true,
        "fix_id": fix_id,
        "failure_type": s.failure_type,
        "agent_id": s.agent_id,
        "fix_type": fix_type,
        "applied_via": via,
        "applied_at": applied_at,
        "runs_after": runs_after,
        "recurrences": recurrences,
        "verdict": verdict,
    }))
}

/// Stores the Langfuse host and API keys used by `apply_fix` (readable only by the owner).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn configure_langfuse(host: &str, public_key: &str, secret_key: &str) {
    if !(host.starts_with("http://") || host.starts_with("https://")) {
        invalid("configure_langfuse: host must be an http:// or https:// URL");
    }
    if public_key.is_empty() || secret_key.is_empty() {
        invalid("configure_langfuse: public_key and secret_key must not be empty");
    }
    Spi::run_with_args(
        "INSERT INTO dunetrace.langfuse_settings (host, public_key, secret_key) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, public_key = excluded.public_key, \
             secret_key = excluded.secret_key, updated_at = now()",
        &[host.trim_end_matches('/').into(), public_key.into(), secret_key.into()],
    )
    .unwrap_or_else(|e| invalid(format!("configure_langfuse: {e}")));
}

/// Langfuse failed: class 38 (an external routine), never class 08, which drivers and pools
/// read as a broken database connection.
fn langfuse_error(what: &str, e: String) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        format!("apply_fix: Langfuse {what} failed: {e}"),
    )
}

/// Publishes `fix_content` appended to the Langfuse prompt `prompt_name` as a new version and
/// records the fix. Refuses failure types whose fixes are code changes or must not be applied
/// automatically (PROMPT_INJECTION_SIGNAL).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn apply_fix(signal_id: i64, prompt_name: &str, fix_content: &str) -> pgrx::JsonB {
    if fix_content.trim().is_empty() {
        invalid("apply_fix: fix_content must not be empty");
    }
    if prompt_name.is_empty() || prompt_name.len() > 256 {
        invalid("apply_fix: prompt_name must be 1-256 characters");
    }
    let s = load_signal(signal_id);
    let fix_type = explain::fix_type(&s.failure_type);
    if fix_type != "prompt_addition" {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "apply_fix: {} fixes are {fix_type} and are not applied automatically; \
                 record a manual fix with dunetrace.record_fix()",
                s.failure_type
            ),
        );
    }
    let creds = Spi::get_three::<String, String, String>(
        "SELECT host, public_key, secret_key FROM dunetrace.langfuse_settings",
    )
    .unwrap_or((None, None, None));
    let (Some(host), Some(public), Some(secret)) = creds else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "apply_fix: Langfuse is not configured; call dunetrace.configure_langfuse() first",
        );
    };
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{public}:{secret}"))
    );
    let headers = vec![
        ("Authorization".to_string(), auth),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    let budget = http::Budget::new(settings::http_total_timeout());
    let timeout = || {
        budget.next(settings::http_timeout()).unwrap_or_else(|| {
            langfuse_error(
                "call",
                "dunetrace.http_total_timeout was spent before it finished".into(),
            )
        })
    };
    let name = http::path_segment(prompt_name);
    let current = http::get(
        &format!("{host}/api/public/prompts/{name}"),
        &headers,
        timeout(),
    )
    .unwrap_or_else(|e| langfuse_error("prompt fetch", e));
    if current.status == 404 {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("apply_fix: Langfuse has no prompt named \"{prompt_name}\""),
        );
    }
    if !(200..300).contains(&current.status) {
        langfuse_error("prompt fetch", http::status_error(current.status));
    }
    let prompt: Value = serde_json::from_str(&current.body)
        .unwrap_or_else(|_| langfuse_error("prompt fetch", "the answer is not JSON".into()));
    let Some(old_text) = prompt.get("prompt").and_then(Value::as_str) else {
        invalid("apply_fix: only text prompts can be extended (this prompt is not text)");
    };
    let kind = prompt.get("type").and_then(Value::as_str).unwrap_or("text");
    let new_text = format!("{}\n\n{}", old_text.trim_end(), fix_content);
    // apply_fix publishes before it records, in the caller's transaction. If that transaction
    // failed after publishing, the newest version (Langfuse's `latest` label) is already this
    // text: record it against that version instead of publishing it a second time.
    let latest = http::get(
        &format!("{host}/api/public/prompts/{name}?label=latest"),
        &headers,
        timeout(),
    )
    .unwrap_or_else(|e| langfuse_error("prompt fetch", e));
    if (200..300).contains(&latest.status) {
        let latest: Value = serde_json::from_str(&latest.body).unwrap_or_default();
        if latest.get("prompt").and_then(Value::as_str) == Some(new_text.as_str()) {
            let version = latest
                .get("version")
                .and_then(Value::as_i64)
                .and_then(|v| i32::try_from(v).ok());
            let fix_id = insert_fix(&s, fix_content, "langfuse", Some(prompt_name), version);
            return pgrx::JsonB(json!({
                "fix_id": fix_id,
                "signal_id": signal_id,
                "new_version": version,
                "published": false,
                "prompt_url": format!("{host}/prompts/{name}"),
                "old_text": old_text,
                "new_text": new_text,
            }));
        }
    }
    let body = json!({"name": prompt_name, "prompt": new_text, "type": kind}).to_string();
    let created = http::post(
        &format!("{host}/api/public/prompts"),
        &headers,
        &body,
        timeout(),
    )
    .unwrap_or_else(|e| langfuse_error("publishing the new version", e));
    if !(200..300).contains(&created.status) {
        langfuse_error(
            "publishing the new version",
            http::status_error(created.status),
        );
    }
    let version = serde_json::from_str::<Value>(&created.body)
        .ok()
        .and_then(|v| v.get("version").and_then(Value::as_i64))
        .and_then(|v| i32::try_from(v).ok());
    let fix_id = insert_fix(&s, fix_content, "langfuse", Some(prompt_name), version);
    pgrx::JsonB(json!({
        "fix_id": fix_id,
        "signal_id": signal_id,
        "new_version": version,
        "published": true,
        "prompt_url": format!("{host}/prompts/{name}"),
        "old_text": old_text,
        "new_text": new_text,
    }))
}
