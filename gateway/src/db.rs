//! The database side: the connection pool, `dunetrace.ingest()` and `dunetrace.record_deploy()`
//! calls, and how their errors are classified. All validation, authentication and storage
//! happen in the extension; this module only carries the batch there and reads the answer.

use crate::config::Config;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Why a database call did not succeed, already sorted by what the HTTP client should hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The request itself was refused by the extension (bad key, wrong agent, invalid batch).
    /// Carries the SQLSTATE and the extension's message, which never repeats content.
    Rejected { sqlstate: String, message: String },
    /// The database cannot be reached or is overloaded or restarting: retry later.
    Unavailable(String),
    /// Anything else (misconfiguration, a bug): logged, answered with a generic message.
    Internal(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Rejected { sqlstate, message } => write!(f, "{sqlstate}: {message}"),
            DbError::Unavailable(m) | DbError::Internal(m) => f.write_str(m),
        }
    }
}

/// Builds the pool. Connections are made lazily, so this succeeds while the database is down.
pub fn make_pool(cfg: &Config) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid connection string: {e}"))?;
    if pg.get_application_name().is_none() {
        pg.application_name("dunetrace-gateway");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(cfg.pool_timeout().max(Duration::from_secs(1)));
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(cfg.pool_size as usize)
        .wait_timeout(Some(cfg.pool_timeout()))
        .create_timeout(Some(cfg.pool_timeout()))
        .recycle_timeout(Some(cfg.pool_timeout()))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("could not build the connection pool: {e}"))
}

/// True for SQLSTATEs that mean "the server cannot serve this now, try again": connection
/// exceptions (08), insufficient resources (53), operator intervention such as shutdown or a
/// statement timeout (57), and serialization failures or deadlocks (40).
fn transient(code: &str) -> bool {
    ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
}

/// Sorts a driver error into what the client should be told.
pub fn classify(e: &tokio_postgres::Error) -> DbError {
    let Some(db) = e.as_db_error() else {
        // No server error: the connection failed, closed, or timed out.
        return DbError::Unavailable(format!("database connection failed: {e}"));
    };
    let code = db.code().code();
    let message = db.message().to_string();
    // Errors raised by the extension for the request itself. A 42501 raised by PostgreSQL
    // (e.g. the gateway's role lacks EXECUTE on ingest) is a deployment problem, not the
    // client's, and is told apart by the extension's "dunetrace." message prefix.
    let from_extension = message.starts_with("dunetrace.");
    match code {
        "28000" => DbError::Rejected {
            sqlstate: code.into(),
            message,
        },
        "42501" if from_extension => DbError::Rejected {
            sqlstate: code.into(),
            message,
        },
        c if c.starts_with("22") => DbError::Rejected {
            sqlstate: code.into(),
            message,
        },
        c if transient(c) => DbError::Unavailable(format!("database unavailable ({c}): {message}")),
        c if *db.code() == SqlState::UNDEFINED_FUNCTION
            || *db.code() == SqlState::INVALID_SCHEMA_NAME =>
        {
            DbError::Unavailable(format!(
                "the dunetrace extension is not installed in this database ({c}): {message}"
            ))
        }
        c => DbError::Internal(format!("database error {c}: {message}")),
    }
}

/// Sorts a pool error.
pub fn classify_pool(e: &PoolError) -> DbError {
    match e {
        PoolError::Timeout(_) => {
            DbError::Unavailable("no database connection became available in time".into())
        }
        PoolError::Backend(e) => classify(e),
        PoolError::Closed => DbError::Unavailable("the connection pool is closed".into()),
        other => DbError::Internal(format!("connection pool error: {other}")),
    }
}

/// True when the connection itself is gone (closed, reset, or terminated by a server
/// shutdown or restart), as opposed to the server refusing the statement.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let c = db.code().code();
            c.starts_with("08") || c == "57P01" || c == "57P02"
        }
    }
}

/// A failure before COMMIT was sent leaves nothing stored; one during COMMIT may or may not
/// have committed.
enum Failure {
    BeforeCommit(tokio_postgres::Error),
    AtCommit(tokio_postgres::Error),
}

/// Runs `sql` (one row, one text column) with text parameters in its own transaction and
/// returns the column only after COMMIT has succeeded. A connection that turns out to be
/// broken before COMMIT (e.g. after a database restart) is replaced once; that is safe
/// because nothing was committed on it.
async fn call_committed(pool: &Pool, sql: &str, params: &[&str]) -> Result<String, DbError> {
    let mut retried = false;
    loop {
        let mut client = pool.get().await.map_err(|e| classify_pool(&e))?;
        match call_once(&mut client, sql, params).await {
            Ok(text) => return Ok(text),
            Err(Failure::BeforeCommit(e)) if !retried && connection_lost(&e) => {
                tracing::warn!(error = %e, "database connection broke before commit; retrying once");
                retried = true;
                // The broken connection is dropped here; the pool discards closed ones.
                drop(client);
            }
            Err(Failure::BeforeCommit(e)) => return Err(classify(&e)),
            Err(Failure::AtCommit(e)) => {
                tracing::error!(error = %e, "COMMIT failed or its outcome is unknown");
                return Err(classify(&e));
            }
        }
    }
}

async fn call_once(client: &mut Object, sql: &str, params: &[&str]) -> Result<String, Failure> {
    let tx = client.transaction().await.map_err(Failure::BeforeCommit)?;
    let stmt = tx
        .prepare_cached(sql)
        .await
        .map_err(Failure::BeforeCommit)?;
    let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = tx
        .query_one(&stmt, &args)
        .await
        .map_err(Failure::BeforeCommit)?;
    let text: String = row.try_get(0).map_err(Failure::BeforeCommit)?;
    tx.commit().await.map_err(Failure::AtCommit)?;
    Ok(text)
}

/// What `dunetrace.ingest()` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub accepted: u64,
    pub batch_id: String,
}

/// Stores a batch with `dunetrace.ingest(api_key, events)`; returns once it has committed.
/// `events_json` is passed on verbatim (as text, cast to jsonb in the database) so numbers
/// keep their exact spelling.
pub async fn ingest(pool: &Pool, api_key: &str, events_json: &str) -> Result<Ingested, DbError> {
    let text = call_committed(
        pool,
        "SELECT dunetrace.ingest($1::text, $2::text::jsonb)::text",
        &[api_key, events_json],
    )
    .await?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| DbError::Internal(format!("unexpected answer from dunetrace.ingest: {e}")))?;
    match (v["accepted"].as_u64(), v["batch_id"].as_str()) {
        (Some(accepted), Some(batch_id)) => Ok(Ingested {
            accepted,
            batch_id: batch_id.to_string(),
        }),
        _ => Err(DbError::Internal(
            "unexpected answer from dunetrace.ingest: no accepted/batch_id".into(),
        )),
    }
}

/// The signature of the deploy-marker function, as `to_regprocedure` spells it.
const RECORD_DEPLOY: &str = "dunetrace.record_deploy(text,text,text,jsonb)";

/// Records a deploy marker with `dunetrace.record_deploy()` when the installed extension has
/// it; `Ok(None)` when it does not (nothing is stored then).
pub async fn record_deploy(
    pool: &Pool,
    api_key: &str,
    agent_id: &str,
    version: &str,
    meta_json: &str,
) -> Result<Option<Value>, DbError> {
    {
        let client = pool.get().await.map_err(|e| classify_pool(&e))?;
        let stmt = client
            .prepare_cached("SELECT to_regprocedure($1::text) IS NOT NULL")
            .await
            .map_err(|e| classify(&e))?;
        let row = client
            .query_one(&stmt, &[&RECORD_DEPLOY])
            .await
            .map_err(|e| classify(&e))?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
    }
    let text = call_committed(
        pool,
        "SELECT to_jsonb(dunetrace.record_deploy($1::text, $2::text, $3::text, $4::text::jsonb))::text",
        &[api_key, agent_id, version, meta_json],
    )
    .await?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DbError::Internal(format!("unexpected answer from record_deploy: {e}")))
}

/// What `/health` reports about the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reachable and the extension is installed (its version).
    Ok(String),
    /// Reachable, but `CREATE EXTENSION dunetrace` has not been run in this database.
    NoExtension,
}

/// Checks that the database answers and has the extension.
pub async fn health(pool: &Pool) -> Result<Health, DbError> {
    let client = pool.get().await.map_err(|e| classify_pool(&e))?;
    let stmt = client
        .prepare_cached(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'dunetrace'",
        )
        .await
        .map_err(|e| classify(&e))?;
    let rows = client.query(&stmt, &[]).await.map_err(|e| classify(&e))?;
    Ok(match rows.first() {
        Some(r) => Health::Ok(r.get(0)),
        None => Health::NoExtension,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classes() {
        for c in [
            "08006", "08001", "53300", "57P01", "57P03", "57014", "40001", "40P01",
        ] {
            assert!(transient(c), "{c}");
        }
        for c in ["22023", "28000", "42501", "XX000", "42883"] {
            assert!(!transient(c), "{c}");
        }
    }

    #[test]
    fn bad_url_is_reported() {
        let cfg = <Config as clap::Parser>::try_parse_from([
            "gw",
            "--database-url",
            "postgres://[not a url",
        ])
        .unwrap();
        let err = make_pool(&cfg).unwrap_err();
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!err.contains("not a url"), "must not echo the URL: {err}");
    }
}
