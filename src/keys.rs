//! API keys: created once, stored as SHA-256 + prefix, checked in constant time.

use crate::errors::{bad_key, invalid};
use dunetrace_core::ids;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use pgrx::PgOid;
use std::cell::Cell;

/// A statement planned once per backend and kept for the backend's life (`SPI_keepplan`), so
/// each call only binds and runs it. Postgres' plan cache re-plans it by itself when an object
/// it uses changes (the extension dropped and created again, an index added, new statistics)
/// or when the search_path differs. Declare one per statement in a `thread_local!`.
pub struct Kept {
    sql: &'static str,
    args: &'static [PgOid],
    plan: Cell<Option<&'static OwnedPreparedStatement>>,
}

impl Kept {
    /// `args`: the parameter types, as the values passed would report them.
    pub const fn new(sql: &'static str, args: &'static [PgOid]) -> Kept {
        Kept {
            sql,
            args,
            plan: Cell::new(None),
        }
    }

    /// The kept plan, prepared on first use. Execute it with `client.select`/`client.update`
    /// exactly as the SQL text would be: read-only-ness is decided the same way.
    pub fn get(&self, client: &SpiClient<'_>) -> Result<&'static OwnedPreparedStatement, SpiError> {
        if let Some(p) = self.plan.get() {
            return Ok(p);
        }
        let stmt = client.prepare(self.sql, self.args)?.keep();
        // Never freed: the plan lives as long as the backend (a destructor at process exit
        // could run after Postgres has torn its caches down).
        let p: &'static OwnedPreparedStatement = Box::leak(Box::new(stmt));
        self.plan.set(Some(p));
        Ok(p)
    }
}

/// Parameter type shorthands for [`Kept`].
pub mod oid {
    use pgrx::pg_sys::BuiltinOid as B;
    use pgrx::PgOid;
    pub const TEXT: PgOid = PgOid::BuiltIn(B::TEXTOID);
    pub const INT4: PgOid = PgOid::BuiltIn(B::INT4OID);
    pub const INT8: PgOid = PgOid::BuiltIn(B::INT8OID);
    pub const FLOAT8: PgOid = PgOid::BuiltIn(B::FLOAT8OID);
    pub const TEXT_ARRAY: PgOid = PgOid::BuiltIn(B::TEXTARRAYOID);
    pub const INT4_ARRAY: PgOid = PgOid::BuiltIn(B::INT4ARRAYOID);
    pub const INT8_ARRAY: PgOid = PgOid::BuiltIn(B::INT8ARRAYOID);
    pub const FLOAT8_ARRAY: PgOid = PgOid::BuiltIn(B::FLOAT8ARRAYOID);
    pub const JSONB: PgOid = PgOid::BuiltIn(B::JSONBOID);
    pub const UUID: PgOid = PgOid::BuiltIn(B::UUIDOID);
    pub const BOOL_ARRAY: PgOid = PgOid::BuiltIn(B::BOOLARRAYOID);
}

thread_local! {
    static KEY_LOOKUP: Kept = const {
        Kept::new(
            "SELECT key_hash, agent_id, active FROM dunetrace.api_keys WHERE key_prefix = $1",
            &[oid::TEXT],
        )
    };
}

/// Fills `buf` from Postgres' strong random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), N) };
    if !ok {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate random bytes",
        );
    }
    buf
}

fn check_agent_id(agent_id: &str) {
    if agent_id == "*" {
        return;
    }
    let v = serde_json::Value::String(agent_id.to_string());
    let probe = serde_json::json!({"event_type": "run.started", "run_id": "r", "agent_id": v,
                                   "agent_version": "v", "step_index": 0});
    if let Err(e) = dunetrace_core::validate::parse_event(&probe, 0.0) {
        invalid(format!("agent_id {}", e.message));
    }
}

/// Creates an API key for `agent_id` (`'*'` = any agent) and returns it. The key is shown
/// only here: only its SHA-256 and first 12 characters are stored.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_api_key(agent_id: &str, customer_id: default!(&str, "'default'")) -> String {
    check_agent_id(agent_id);
    if customer_id.is_empty() || customer_id.len() > 128 {
        invalid("customer_id must be 1-128 characters");
    }
    let key = ids::api_key(&random_bytes::<32>());
    let prefix = ids::key_prefix(&key).expect("generated keys have a prefix");
    Spi::run_with_args(
        "INSERT INTO dunetrace.api_keys (key_prefix, key_hash, agent_id, customer_id) \
         VALUES ($1, $2, $3, $4)",
        &[
            prefix.into(),
            ids::key_hash(&key).to_vec().into(),
            agent_id.into(),
            customer_id.into(),
        ],
    )
    .unwrap_or_else(|e| invalid(format!("could not store the key: {e}")));
    key
}

/// Deactivates a key given in full or by its 12-character prefix. Returns false when no
/// active key matched.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn revoke_api_key(key_or_prefix: &str) -> bool {
    let is_full = key_or_prefix.len() > ids::STORED_PREFIX_LEN;
    let prefix = if is_full {
        match ids::key_prefix(key_or_prefix) {
            Some(p) => p,
            None => invalid("not a dunetrace key: keys start with \"dt_\""),
        }
    } else if key_or_prefix.len() == ids::STORED_PREFIX_LEN && key_or_prefix.starts_with("dt_") {
        key_or_prefix
    } else {
        invalid("give the whole key or its first 12 characters (\"dt_\" + 9)");
    };
    let ids_matching: Vec<i64> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT id, key_hash FROM dunetrace.api_keys WHERE key_prefix = $1 AND active",
            None,
            &[prefix.into()],
        )?;
        let wanted = is_full.then(|| ids::key_hash(key_or_prefix));
        let mut out = Vec::new();
        for row in rows {
            let id: i64 = row.get(1)?.unwrap_or_default();
            let hash: Vec<u8> = row.get(2)?.unwrap_or_default();
            if wanted.is_none_or(|w| ids::constant_time_eq(&w, &hash)) {
                out.push(id);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| invalid(format!("could not look up the key: {e}")));
    if ids_matching.len() > 1 {
        invalid("that prefix matches several keys: give the whole key");
    }
    let Some(id) = ids_matching.first() else {
        return false;
    };
    Spi::run_with_args(
        "UPDATE dunetrace.api_keys SET active = false, revoked_at = now() WHERE id = $1",
        &[(*id).into()],
    )
    .unwrap_or_else(|e| invalid(format!("could not revoke the key: {e}")));
    true
}

/// The agent a key may write for (`"*"` = any). Raises 28000 for an unknown, malformed or
/// revoked key.
pub fn authenticate(key: Option<&str>) -> String {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        bad_key("dunetrace.ingest: an API key is required");
    };
    let Some(prefix) = ids::key_prefix(key) else {
        bad_key("dunetrace.ingest: invalid API key");
    };
    let hash = ids::key_hash(key);
    let found = Spi::connect(|client| {
        let stmt = KEY_LOOKUP.with(|k| k.get(client))?;
        let rows = client.select(stmt, None, &[prefix.into()])?;
        let mut found: Option<(String, bool)> = None;
        for row in rows {
            let stored: Vec<u8> = row.get(1)?.unwrap_or_default();
            if ids::constant_time_eq(&stored, &hash) {
                found = Some((
                    row.get(2)?.unwrap_or_default(),
                    row.get(3)?.unwrap_or(false),
                ));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(found)
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| {
        // Not an authentication failure: the lookup itself broke.
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("dunetrace.ingest: the API key could not be looked up: {e}"),
        )
    });
    match found {
        Some((agent, true)) => agent,
        Some((_, false)) => bad_key("dunetrace.ingest: API key has been revoked"),
        None => bad_key("dunetrace.ingest: invalid API key"),
    }
}
