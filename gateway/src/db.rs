//! The database side: the connection pool, `dunetrace.ingest()` and `dunetrace.record_deploy()`
//! calls, and how their errors are classified. All validation, authentication and storage
//! happen in the extension; this module only carries the batch there and reads the answer.

use crate::config::Config;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use dunetrace_client::tls::{describe_error, is_tls_error, PgConfig};
use dunetrace_core::sqlstate::{self, ErrorClass};
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Why a database call did not succeed, sorted by the table shared with the Rust client
/// ([`dunetrace_core::sqlstate`]); the HTTP status follows from the class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// What the failure means (and so which status the HTTP client hears).
    pub class: ErrorClass,
    /// The SQLSTATE, when the server raised the error.
    pub sqlstate: Option<String>,
    /// The server's message (the extension's messages never repeat content), or a
    /// description of the failure. Told to the HTTP client only for a refused request.
    pub message: String,
}

impl DbError {
    /// A failure of the given class without a SQLSTATE.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> DbError {
        DbError {
            class,
            sqlstate: None,
            message: message.into(),
        }
    }

    /// The database cannot take the request now: retry later.
    pub fn unavailable(message: impl Into<String>) -> DbError {
        DbError::new(ErrorClass::Transient, message)
    }

    /// Anything unexpected (misconfiguration, a bug).
    pub fn internal(message: impl Into<String>) -> DbError {
        DbError::new(ErrorClass::Internal, message)
    }

    /// An error the server raised, classified by the shared table.
    pub fn raised(sqlstate: &str, message: &str) -> DbError {
        DbError {
            class: sqlstate::classify_error(sqlstate, message),
            sqlstate: Some(sqlstate.to_string()),
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} ({code}): {}", self.class, self.message),
            None => write!(f, "{}: {}", self.class, self.message),
        }
    }
}

/// Builds the pool from `DATABASE_URL` (libpq-style, with `sslmode` and `sslrootcert` for
/// TLS; see [`PgConfig`]). Connections are made lazily, so this succeeds while the database
/// is down; errors never repeat the URL.
pub fn make_pool(cfg: &Config) -> Result<Pool, String> {
    let mut pg = PgConfig::parse(&cfg.database_url)
        .map_err(|e| format!("DATABASE_URL cannot be used: {e}"))?;
    let timeout = cfg.pool_timeout().max(Duration::from_secs(1));
    let driver = pg.config_mut();
    if driver.get_application_name().is_none() {
        driver.application_name("dunetrace-gateway");
    }
    if driver.get_connect_timeout().is_none() {
        driver.connect_timeout(timeout);
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let driver = pg.config().clone();
    let manager = match pg.tls() {
        Some(tls) => Manager::from_config(driver, tls.clone(), manager_config),
        None => Manager::from_config(driver, NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(cfg.pool_size as usize)
        .wait_timeout(Some(cfg.pool_timeout()))
        .create_timeout(Some(cfg.pool_timeout()))
        .recycle_timeout(Some(cfg.pool_timeout()))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("could not build the connection pool: {e}"))
}

/// Sorts a driver error by the shared table. An error without a SQLSTATE (the connection
/// failed, closed or timed out) is transient.
pub fn classify(e: &tokio_postgres::Error) -> DbError {
    let Some(db) = e.as_db_error() else {
        return DbError::unavailable(format!("database connection failed: {}", describe_error(e)));
    };
    classify_raised(db.code().code(), db.message())
}

/// [`classify`] for an error the server raised: the shared table, with a clearer message when
/// the extension is missing (3F000, 42883: transient, since installing it fixes the call).
pub fn classify_raised(sqlstate: &str, message: &str) -> DbError {
    let mut err = DbError::raised(sqlstate, message);
    if matches!(sqlstate, "3F000" | "42883") {
        err.message = format!(
            "the dunetrace extension is not installed in this database: {}",
            err.message
        );
    }
    err
}

/// Sorts an error from opening a connection. The request is not at fault whatever the server
/// said (a refused login is the gateway's own role or password): transient failures are
/// answered 503, anything else (wrong password, no such database, a certificate that fails
/// verification) is a misconfiguration, 500.
fn classify_connect(e: &tokio_postgres::Error) -> DbError {
    let what = format!("could not connect to the database: {}", describe_error(e));
    match e.as_db_error() {
        Some(db) => {
            let class = match sqlstate::classify(db.code().code()) {
                ErrorClass::Transient => ErrorClass::Transient,
                _ => ErrorClass::Internal,
            };
            DbError {
                class,
                sqlstate: Some(db.code().code().to_string()),
                message: what,
            }
        }
        // TLS failures are configuration problems; the others (refused, timed out) transient.
        None if is_tls_error(e) => DbError::internal(what),
        None => DbError::unavailable(what),
    }
}

/// Sorts a pool error.
pub fn classify_pool(e: &PoolError) -> DbError {
    match e {
        PoolError::Timeout(_) => {
            DbError::unavailable("no database connection became available in time")
        }
        PoolError::Backend(e) => classify_connect(e),
        PoolError::Closed => DbError::unavailable("the connection pool is closed"),
        other => DbError::internal(format!("connection pool error: {other}")),
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
        .map_err(|e| DbError::internal(format!("unexpected answer from dunetrace.ingest: {e}")))?;
    match (v["accepted"].as_u64(), v["batch_id"].as_str()) {
        (Some(accepted), Some(batch_id)) => Ok(Ingested {
            accepted,
            batch_id: batch_id.to_string(),
        }),
        _ => Err(DbError::internal(
            "unexpected answer from dunetrace.ingest: no accepted/batch_id",
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
        .map_err(|e| DbError::internal(format!("unexpected answer from record_deploy: {e}")))
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
    fn server_errors_follow_the_shared_table() {
        for c in [
            "08006", "08001", "53300", "57P01", "57P03", "57014", "40001", "40P01",
        ] {
            assert_eq!(DbError::raised(c, "x").class, ErrorClass::Transient, "{c}");
        }
        let cases = [
            (
                "28000",
                "dunetrace.ingest: invalid API key",
                ErrorClass::Auth,
            ),
            (
                "42501",
                "dunetrace.ingest: batch rejected",
                ErrorClass::Forbidden,
            ),
            (
                "42501",
                "permission denied for function ingest",
                ErrorClass::Internal,
            ),
            (
                "22023",
                "dunetrace.ingest: batch rejected",
                ErrorClass::Invalid,
            ),
            ("22P02", "dunetrace.ingest: wrong type", ErrorClass::Invalid),
            (
                "54000",
                "dunetrace.ingest: run would hold",
                ErrorClass::TooLarge,
            ),
            ("38000", "apply_fix: Langfuse failed", ErrorClass::External),
            (
                "XX000",
                "dunetrace.ingest: could not store",
                ErrorClass::Internal,
            ),
            (
                "42883",
                "function dunetrace.ingest does not exist",
                ErrorClass::Transient,
            ),
        ];
        for (code, message, class) in cases {
            let e = DbError::raised(code, message);
            assert_eq!(e.class, class, "{code}");
            assert_eq!(e.sqlstate.as_deref(), Some(code));
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

        for url in [
            "postgres://u:hunter2@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
            "host=db password=hunter2 sslmode=verify-everything",
        ] {
            let cfg =
                <Config as clap::Parser>::try_parse_from(["gw", "--database-url", url]).unwrap();
            let err = make_pool(&cfg).unwrap_err();
            assert!(err.contains("DATABASE_URL"), "{err}");
            assert!(
                !err.contains("hunter2"),
                "must not echo the password: {err}"
            );
        }
    }
}
