//! Shared helpers for the tests that need a cluster.
//!
//! `DUNETRACE_TEST_DSN`: a superuser DSN to a database where `CREATE EXTENSION dunetrace` has
//! been run. Each test makes its own API key for its own agent id, so tests do not interfere.

#![allow(dead_code)]

use postgres::{Client, NoTls};
use std::io::Read;

pub fn dsn() -> String {
    std::env::var("DUNETRACE_TEST_DSN").expect(
        "DUNETRACE_TEST_DSN must name a database with the dunetrace extension \
         (scripts/test.sh sets it)",
    )
}

pub fn admin() -> Client {
    Client::connect(&dsn(), NoTls).expect("connect to DUNETRACE_TEST_DSN")
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh agent id and an API key for it.
pub fn new_agent(admin: &mut Client, name: &str) -> (String, String) {
    let agent_id = format!("client-test-{name}-{}", random_hex(6));
    let key: String = admin
        .query_one("SELECT dunetrace.create_api_key($1)", &[&agent_id])
        .expect("create_api_key")
        .get(0);
    (agent_id, key)
}

/// Every stored event of a run, in insertion order: (type, step, agent_version, payload).
pub fn events(admin: &mut Client, run_id: &str) -> Vec<(String, i32, String, serde_json::Value)> {
    admin
        .query(
            "SELECT event_type, step_index, agent_version, payload::text \
             FROM dunetrace.events WHERE run_id = $1 ORDER BY id",
            &[&run_id],
        )
        .expect("read events")
        .iter()
        .map(|r| {
            let p: String = r.get(3);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                serde_json::from_str(&p).unwrap(),
            )
        })
        .collect()
}

/// Processes every started run now, when this version of the extension has
/// `dunetrace.process_runs()`. Returns whether it did.
pub fn process_runs(admin: &mut Client) -> bool {
    let has: bool = admin
        .query_one(
            "SELECT to_regprocedure('dunetrace.process_runs(integer)') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    if has {
        admin
            .batch_execute(
                "SET dunetrace.stall_timeout = 0; SELECT dunetrace.process_runs(100000); \
                 RESET dunetrace.stall_timeout;",
            )
            .expect("process_runs");
    }
    has
}

/// Processes runs until `run_id` has been processed (another session — the background worker
/// or a concurrent test — may be processing it at the same moment). Returns false when this
/// version of the extension cannot process runs.
pub fn wait_processed(admin: &mut Client, run_id: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if !process_runs(admin) {
            return false;
        }
        let done: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM dunetrace.processed_runs WHERE run_id = $1)",
                &[&run_id],
            )
            .unwrap()
            .get(0);
        if done {
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {run_id} was never processed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
