//! `dunetrace.configure_detector()`: per-agent detector settings.

use crate::errors::invalid;
use dunetrace_core::detect::config;
use pgrx::prelude::*;

/// Merges `params` into the stored settings of `detector` for `agent_id` (`'default'` = every
/// agent) and returns the stored object. Unknown detectors or parameters are an error (22023).
/// Keys: the detector's tunables, `live` (false = shadow mode) and `enabled`. A key set to
/// `null` removes that override.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn configure_detector(agent_id: &str, detector: &str, params: pgrx::JsonB) -> pgrx::JsonB {
    if agent_id.is_empty() || agent_id.len() > 128 {
        invalid("agent_id must be 1-128 characters ('default' applies to every agent)");
    }
    let Some(obj) = params.0.as_object() else {
        invalid("params must be a JSON object");
    };
    let (removed, set): (Vec<_>, Vec<_>) = obj.iter().partition(|(_, v)| v.is_null());
    let set: serde_json::Map<String, serde_json::Value> = set
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let t = config::validate(detector, &serde_json::Value::Object(set.clone()))
        .unwrap_or_else(|e| invalid(format!("configure_detector: {e}")));
    for (k, _) in &removed {
        if !config::param_names(t).contains(&k.as_str()) {
            invalid(format!(
                "configure_detector: unknown parameter \"{k}\" for detector {}",
                t.config_key()
            ));
        }
    }
    let removed: Vec<String> = removed.into_iter().map(|(k, _)| k.clone()).collect();
    let stored = Spi::get_one_with_args::<pgrx::JsonB>(
        "INSERT INTO dunetrace.detector_settings AS d (agent_id, detector, params) \
         VALUES ($1, $2, $3::jsonb - $4::text[]) \
         ON CONFLICT (agent_id, detector) DO UPDATE \
             SET params = (d.params || excluded.params) - $4::text[], updated_at = now() \
         RETURNING params",
        &[
            agent_id.into(),
            t.config_key().into(),
            serde_json::Value::Object(set).to_string().into(),
            removed.into(),
        ],
    )
    .unwrap_or_else(|e| invalid(format!("configure_detector: {e}")));
    stored.unwrap_or(pgrx::JsonB(serde_json::json!({})))
}
