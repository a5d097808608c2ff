//! Deploy markers (`POST /v1/deploy` of the original SDK, through the gateway).

use crate::errors::{raise, rejected};
use crate::keys::authenticate;
use dunetrace_core::validate;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::Value;

/// Records that `agent_id` was deployed as `version`. The key is checked like `ingest()`
/// checks it; names follow the ingest rules and `meta` holds only identifiers, numbers and
/// flags. Returns the marker's id.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn record_deploy(
    api_key: Option<&str>,
    agent_id: Option<&str>,
    version: Option<&str>,
    meta: default!(Option<pgrx::JsonB>, "'{}'"),
) -> i64 {
    let key_agent = authenticate(api_key);
    let agent_id = crate::errors::required("record_deploy", "agent_id", agent_id);
    let version = crate::errors::required("record_deploy", "version", version);
    let meta = meta.map(|m| m.0).unwrap_or(Value::Null);
    let meta = if meta.is_null() {
        serde_json::json!({})
    } else {
        meta
    };
    let checks = validate::identifier("agent_id", &Value::String(agent_id.into()))
        .and_then(|_| validate::identifier("version", &Value::String(version.into())))
        .and_then(|_| validate::meta_object("meta", &meta));
    if let Err(e) = checks {
        rejected(&e);
    }
    if key_agent != "*" && key_agent != agent_id {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "dunetrace.record_deploy: agent_id \"{agent_id}\" does not match the API key's \
                 agent \"{key_agent}\""
            ),
        );
    }
    Spi::get_one_with_args::<i64>(
        "INSERT INTO dunetrace.deploy_events (agent_id, version, meta) VALUES ($1, $2, $3::jsonb) \
         RETURNING id",
        &[agent_id.into(), version.into(), meta.to_string().into()],
    )
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("dunetrace.record_deploy: {e}"),
        )
    })
    .unwrap_or_default()
}
