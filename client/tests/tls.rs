//! TLS to PostgreSQL: libpq's `sslmode`/`sslrootcert` against a throwaway cluster with
//! `ssl = on` (started and stopped here; no extension needed).
//!
//! Needs PostgreSQL 15's binaries (`/usr/lib/postgresql/15/bin`, or `DUNETRACE_TEST_PG_BIN`)
//! and the `openssl` command. Run with `cargo test -p dunetrace-client --test tls -- --ignored`.

#[path = "support/tls_cluster.rs"]
mod tls_cluster;

use dunetrace_client::tls::{describe_error, PgConfig, SslMode};
use dunetrace_client::{Dunetrace, ErrorClass, NO_TOOLS};
use std::time::{Duration, Instant};
use tls_cluster::TlsCluster;

/// In every connection string, to check that no error repeats it.
const PASSWORD: &str = "hunter2-never-shown";

/// Connects with `dsn` and asks the server whether the session is encrypted.
fn encrypted(dsn: &str) -> Result<bool, String> {
    let pg = PgConfig::parse(dsn).map_err(|e| e.to_string())?;
    let mut c = pg.connect().map_err(|e| describe_error(&e))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| describe_error(&e))?;
    Ok(row.get(0))
}

/// `%`-encodes a path for a URL's query.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
#[ignore = "needs a local PostgreSQL: scripts/test.sh runs it"]
fn sslmodes_against_a_cluster_with_tls() {
    let cl = TlsCluster::start();
    let ca = cl.ca().display().to_string();
    let other = cl.other_ca().display().to_string();
    let pw = format!("password={PASSWORD}");

    // Encrypted, as each mode promises.
    let url = format!(
        "postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cl.port,
        url_encode(&ca)
    );
    let encrypted_cases = [
        cl.dsn("localhost", &format!("{pw} sslmode=require")),
        // require checks nothing: any host name, no CA.
        cl.dsn("127.0.0.1", &format!("{pw} sslmode=require")),
        cl.dsn("localhost", &format!("{pw} sslmode=prefer")),
        cl.dsn(
            "localhost",
            &format!("{pw} sslmode=verify-ca sslrootcert={ca}"),
        ),
        // verify-ca does not check the host name.
        cl.dsn(
            "127.0.0.1",
            &format!("{pw} sslmode=verify-ca sslrootcert={ca}"),
        ),
        cl.dsn(
            "localhost",
            &format!("{pw} sslmode=verify-full sslrootcert={ca}"),
        ),
        // The name checked is host's, whatever address hostaddr connects to.
        cl.dsn(
            "localhost",
            &format!("{pw} hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
        ),
        cl.dsn(
            "localhost",
            &format!("{pw} sslmode='verify-full' sslrootcert='{ca}'"),
        ),
        // As libpq: require with a root certificate verifies the chain.
        cl.dsn(
            "127.0.0.1",
            &format!("{pw} sslmode=require sslrootcert={ca}"),
        ),
        url,
    ];
    for dsn in &encrypted_cases {
        assert_eq!(encrypted(dsn), Ok(true), "{dsn}");
    }

    // Plain: no sslmode (as before TLS support), disable, and a Unix socket (libpq ignores
    // sslmode there).
    let socket = cl.dir.display().to_string();
    let plain_cases = [
        cl.dsn("localhost", &pw),
        cl.dsn("localhost", &format!("{pw} sslmode=disable")),
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=disable",
            cl.port
        ),
        cl.dsn(&socket, &format!("sslmode=verify-full sslrootcert={ca}")),
    ];
    for dsn in &plain_cases {
        assert_eq!(encrypted(dsn), Ok(false), "{dsn}");
    }

    // Refused: a host name the certificate does not hold, or a CA that did not sign it.
    let refused = [
        (
            cl.dsn("127.0.0.1", &format!("{pw} sslmode=verify-full sslrootcert={ca}")),
            "does not name the host",
        ),
        (
            cl.dsn("localhost", &format!("{pw} sslmode=verify-ca sslrootcert={other}")),
            "could not be verified against sslrootcert",
        ),
        (
            cl.dsn("localhost", &format!("{pw} sslmode=verify-full sslrootcert={other}")),
            "could not be verified against sslrootcert",
        ),
        (
            cl.dsn("127.0.0.1", &format!("{pw} sslmode=require sslrootcert={other}")),
            "could not be verified against sslrootcert",
        ),
        // A host name other than the certificate's (reached at the cluster's address).
        (
            cl.dsn(
                "db.invalid",
                &format!("{pw} hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
            ),
            "does not name the host",
        ),
        (
            format!(
                "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres?sslrootcert={}&sslmode=verify-full",
                cl.port,
                url_encode(&ca)
            ),
            "does not name the host",
        ),
    ];
    for (dsn, why) in &refused {
        let err = encrypted(dsn).expect_err(dsn);
        assert!(err.contains(why), "{dsn}: {err}");
        assert!(!err.contains(PASSWORD), "{dsn}: {err}");
    }

    // verify-* without any root certificate: refused before connecting (unless this machine
    // has a ~/.postgresql/root.crt, which libpq would use too).
    let home_root = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
        .filter(|p| p.exists());
    if home_root.is_none() {
        for mode in ["verify-ca", "verify-full"] {
            let dsn = cl.dsn("localhost", &format!("{pw} sslmode={mode}"));
            let err = PgConfig::parse(&dsn).unwrap_err().to_string();
            assert!(err.contains("sslrootcert"), "{err}");
            assert!(!err.contains(PASSWORD), "{err}");
        }
    }
    let pg =
        PgConfig::parse(&cl.dsn("localhost", "sslmode=verify-full sslrootcert=system")).unwrap();
    assert_eq!(pg.ssl_mode(), Some(SslMode::VerifyFull));
    // The test CA is not among the system's roots.
    let err = pg.connect().map(|_| ()).unwrap_err();
    assert!(
        describe_error(&err).contains("could not be verified"),
        "{}",
        describe_error(&err)
    );
}

/// Waits until the client reports a failure.
fn wait_for_error(dt: &Dunetrace) -> dunetrace_client::Stats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = dt.stats();
        if s.last_error.is_some() {
            return s;
        }
        assert!(Instant::now() < deadline, "no error reported: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs a local PostgreSQL: scripts/test.sh runs it"]
fn the_client_connects_with_the_dsns_tls_options() {
    let cl = TlsCluster::start();
    let ca = cl.ca().display().to_string();
    let key = "dt_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    let client = |dsn: &str| {
        Dunetrace::builder()
            .dsn(dsn)
            .api_key(key)
            .linger(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(200))
            .flush_timeout(Duration::from_millis(200))
            .build()
            .unwrap()
    };

    // Verified TLS: the connection is made; the server then answers that the extension is
    // not installed here (3F000), a transient condition, so the events wait.
    let dt = client(&cl.dsn(
        "localhost",
        &format!("password={PASSWORD} sslmode=verify-full sslrootcert={ca}"),
    ));
    dt.run("tls-agent", "question", "m", NO_TOOLS).finish();
    let s = wait_for_error(&dt);
    let err = s.last_error.clone().unwrap();
    assert!(err.contains("3F000"), "{err}");
    assert_eq!(s.last_error_class, Some(ErrorClass::Transient));
    assert_eq!((s.sent, s.dropped_rejected), (0, 0), "{s:?}");
    drop(dt);

    // The certificate does not name 127.0.0.1: no connection, a clear reason, no password,
    // and the events wait (a failure to connect is always retried).
    let dt = client(&cl.dsn(
        "127.0.0.1",
        &format!("password={PASSWORD} sslmode=verify-full sslrootcert={ca}"),
    ));
    dt.run("tls-agent", "question", "m", NO_TOOLS).finish();
    let s = wait_for_error(&dt);
    let err = s.last_error.clone().unwrap();
    assert!(err.starts_with("could not connect"), "{err}");
    assert!(err.contains("does not name the host"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    assert_eq!(s.last_error_class, Some(ErrorClass::Transient));
    assert_eq!(s.pending, 2, "{s:?}");
    assert!(!s.connected);
    let end = dt.shutdown();
    assert_eq!(end.dropped_shutdown, 2, "{end:?}");
}
