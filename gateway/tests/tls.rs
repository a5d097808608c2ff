//! TLS between the gateway and PostgreSQL: `DATABASE_URL` with libpq's `sslmode` and
//! `sslrootcert`, against a throwaway cluster with `ssl = on` (started and stopped here, with
//! the client's test helper; no extension needed).
//!
//! Needs PostgreSQL 15's binaries (`/usr/lib/postgresql/15/bin`, or `DUNETRACE_TEST_PG_BIN`)
//! and the `openssl` command. Run with `cargo test -p dunetrace-gateway --test tls -- --ignored`.

mod common;
#[path = "../../client/tests/support/tls_cluster.rs"]
mod tls_cluster;

use clap::Parser;
use common::{get, Gateway};
use dunetrace_core::sqlstate::ErrorClass;
use dunetrace_gateway::config::Config;
use dunetrace_gateway::db;
use tls_cluster::TlsCluster;

const PASSWORD: &str = "hunter2-never-shown";

fn config(database_url: &str) -> Config {
    Config::try_parse_from([
        "gw",
        "--database-url",
        database_url,
        "--pool-timeout-ms",
        "10000",
    ])
    .unwrap()
}

/// Whether a pooled connection made from `database_url` is encrypted, or why none was made.
async fn encrypted(database_url: &str) -> Result<bool, db::DbError> {
    let pool = db::make_pool(&config(database_url)).map_err(db::DbError::internal)?;
    let client = pool.get().await.map_err(|e| db::classify_pool(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| db::classify(&e))?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local PostgreSQL: scripts/test.sh runs it"]
async fn the_pool_connects_as_the_database_urls_sslmode_says() {
    let cl = TlsCluster::start();
    let ca = cl.ca().display().to_string();
    let other = cl.other_ca().display().to_string();
    let pw = format!("password={PASSWORD}");
    let url = |host: &str, query: &str| {
        format!(
            "postgresql://postgres:{PASSWORD}@{host}:{}/postgres{query}",
            cl.port
        )
    };

    for dsn in [
        cl.dsn("localhost", &format!("{pw} sslmode=require")),
        url("127.0.0.1", "?sslmode=require"),
        cl.dsn(
            "localhost",
            &format!("{pw} sslmode=verify-ca sslrootcert={ca}"),
        ),
        url(
            "localhost",
            &format!("?sslmode=verify-full&sslrootcert={ca}"),
        ),
    ] {
        assert_eq!(encrypted(&dsn).await, Ok(true), "{dsn}");
    }
    for dsn in [
        cl.dsn("localhost", &pw),
        url("localhost", "?sslmode=disable"),
    ] {
        assert_eq!(encrypted(&dsn).await, Ok(false), "{dsn}");
    }

    // A failed verification is a misconfiguration (500, logged), never the request's fault,
    // and its message says why without the password.
    for (dsn, why) in [
        (
            url(
                "127.0.0.1",
                &format!("?sslmode=verify-full&sslrootcert={ca}"),
            ),
            "does not name the host",
        ),
        (
            cl.dsn(
                "localhost",
                &format!("{pw} sslmode=verify-ca sslrootcert={other}"),
            ),
            "could not be verified against sslrootcert",
        ),
    ] {
        let err = encrypted(&dsn).await.expect_err(&dsn);
        assert_eq!(err.class, ErrorClass::Internal, "{dsn}: {err}");
        assert!(err.message.contains(why), "{dsn}: {err}");
        assert!(!err.to_string().contains(PASSWORD), "{err}");
    }

    // Unusable TLS settings stop the gateway at start-up, without echoing the URL.
    let err = db::make_pool(&config(&url(
        "localhost",
        "?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    )))
    .unwrap_err();
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[test]
#[ignore = "needs a local PostgreSQL: scripts/test.sh runs it"]
fn the_gateway_binary_reaches_the_database_over_verified_tls() {
    let cl = TlsCluster::start();
    let ca = cl.ca().display().to_string();

    // Reachable over verify-full: /health says the database answers (and that the extension
    // is not installed in this throwaway cluster).
    let gw = Gateway::start_with_db(
        &cl.dsn(
            "localhost",
            &format!("password={PASSWORD} sslmode=verify-full sslrootcert={ca}"),
        ),
        &["--pool-timeout-ms", "10000"],
    );
    let (status, _, v) = get(&gw.url("/health"));
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["database"], "ok", "{v}");
    drop(gw);

    // The certificate does not name 127.0.0.1: unavailable, and the log says why, without
    // the password.
    let gw = Gateway::start_with_db(
        &cl.dsn(
            "127.0.0.1",
            &format!("password={PASSWORD} sslmode=verify-full sslrootcert={ca}"),
        ),
        &["--pool-timeout-ms", "10000"],
    );
    let (status, _, v) = get(&gw.url("/health"));
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["database"], "unavailable", "{v}");
    let logs = gw.logs().join("\n");
    assert!(logs.contains("does not name the host"), "{logs}");
    assert!(!logs.contains(PASSWORD), "{logs}");
}
