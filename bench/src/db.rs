//! Connections, databases and the small SQL helpers every measurement shares.

use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// Where the bench cluster listens and how big the run is.
#[derive(Clone)]
pub struct Ctx {
    pub host: String,
    pub port: u16,
    pub quick: bool,
    /// Batch sizes and client counts of measurement 1.
    pub batches: Vec<usize>,
    pub clients: Vec<usize>,
}

impl Ctx {
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db} application_name=dunetrace-bench",
            self.host, self.port
        )
    }

    pub fn connect(&self, db: &str) -> Client {
        Client::connect(&self.dsn(db), NoTls)
            .unwrap_or_else(|e| panic!("connect to database {db} on port {}: {e}", self.port))
    }

    /// Drops and creates `db` from [`TEMPLATE`] (the extension as installed when the cluster
    /// started), with a `bench` schema holding the baseline table (`bench.events_plain`: the
    /// shape and indexes of `dunetrace.events`) and an API key for any agent. Returns the key.
    pub fn fresh_db(&self, db: &str) -> String {
        let mut admin = self.connect("postgres");
        ensure_template(&mut admin, self);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .expect("drop database");
        admin
            .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE {TEMPLATE}"))
            .expect("create database");
        let mut c = self.connect(db);
        bench_objects(&mut c)
    }
}

/// A database with the extension created, made by bench/run.sh right after the cluster starts.
/// Every bench database is copied from it, so none depends on the extension's SQL files still
/// matching the library the cluster loaded (other builds may install over them meanwhile).
pub const TEMPLATE: &str = "dunetrace_bench_template";

/// Creates [`TEMPLATE`] when missing (the bench run without bench/run.sh).
pub fn ensure_template(admin: &mut Client, ctx: &Ctx) {
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&TEMPLATE],
        )
        .expect("look up the template")
        .get(0);
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
            .expect("create the template");
        ctx.connect(TEMPLATE)
            .batch_execute("CREATE EXTENSION dunetrace")
            .expect("create the extension in the template");
    }
}

/// The baseline tables and an API key, in a database that has the extension.
pub fn bench_objects(c: &mut Client) -> String {
    c.batch_execute(
        "DROP SCHEMA IF EXISTS bench CASCADE;
         CREATE SCHEMA bench;
         CREATE TABLE bench.events_plain (LIKE dunetrace.events INCLUDING ALL);
         CREATE TABLE bench.floor_out (run_id text PRIMARY KEY, agent_id text, agent_version text,
                                       events int, steps int, tokens bigint, duration float8);",
    )
    .expect("create the baseline tables");
    api_key(c)
}

pub fn api_key(c: &mut Client) -> String {
    c.query_one("SELECT dunetrace.create_api_key('*')", &[])
        .expect("create an API key")
        .get(0)
}

/// `dunetrace.ingest()` as the thin client calls it.
pub const INGEST_SQL: &str = "SELECT dunetrace.ingest($1::text, $2::text::jsonb)::text";

/// The baseline: the same rows into a table of the same shape and indexes, no validation, no
/// authentication, no run tracking.
pub const PLAIN_SQL: &str =
    "INSERT INTO bench.events_plain (batch_id, event_type, run_id, agent_id, \
        agent_version, step_index, \"timestamp\", payload, parent_run_id) \
     SELECT (SELECT gen_random_uuid()), x.event_type, x.run_id, x.agent_id, x.agent_version, \
            x.step_index, COALESCE(x.\"timestamp\", extract(epoch FROM now())), \
            COALESCE(x.payload, '{}'), x.parent_run_id \
     FROM jsonb_to_recordset($1::text::jsonb) AS x(event_type text, run_id text, agent_id text, \
          agent_version text, step_index int, \"timestamp\" float8, payload jsonb, \
          parent_run_id text)";

/// Which path a batch goes through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Dunetrace,
    Plain,
}

/// Sends every client's batches concurrently (one connection per client, opened before the
/// clock starts). Returns the wall time from the first send to the last answer.
pub fn send_batches(
    ctx: &Ctx,
    db: &str,
    key: &str,
    path: Path,
    per_client: &[Vec<(String, usize)>],
) -> Duration {
    let barrier = std::sync::Barrier::new(per_client.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = per_client
            .iter()
            .map(|batches| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut c = ctx.connect(db);
                    let sql = if path == Path::Dunetrace {
                        INGEST_SQL
                    } else {
                        PLAIN_SQL
                    };
                    let stmt = c.prepare(sql).expect("prepare");
                    barrier.wait();
                    for (text, _) in batches {
                        let r = if path == Path::Dunetrace {
                            c.execute(&stmt, &[&key, text])
                        } else {
                            c.execute(&stmt, &[text])
                        };
                        if let Err(e) = r {
                            panic!("{path:?} batch failed: {e}");
                        }
                    }
                    barrier.wait();
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        let took = start.elapsed();
        for h in handles {
            h.join().expect("client thread");
        }
        took
    })
}

/// Waits (polling) until `sql` returns true; panics after `timeout`.
pub fn wait_until(c: &mut Client, sql: &str, timeout: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let done: bool = c.query_one(sql, &[]).expect(what).get(0);
        if done {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `/proc/<pid>/status` memory reading, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
}

pub fn mem_of(pid: i32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "VmRSS:" => m.vm_rss = v,
            "RssAnon:" => m.rss_anon = v,
            "RssFile:" => m.rss_file = v,
            "RssShmem:" => m.rss_shmem = v,
            _ => {}
        }
    }
    Some(m)
}
