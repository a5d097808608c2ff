//! Backups: `pg_dump` + `pg_restore` carry every row of the extension's tables and every
//! sequence position; keys keep working, identities continue without collisions, and the
//! worker resumes in the restored database.

use dunetrace_e2e::*;
use std::time::Duration;

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn dump_and_restore_keep_every_row_and_the_worker_resumes() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    add_destination(
        &mut c,
        "webhook",
        &hook.url("/backup"),
        Some("whsec_c2VjcmV0"),
        None,
    );
    let agent = Agent::new(&mut c, "e2e-backup");
    c.batch_execute(&format!(
        "SELECT dunetrace.configure_detector('{}', 'tool_loop', '{{\"threshold\": 4}}');
         SELECT dunetrace.configure_langfuse('http://127.0.0.1:9', 'pk-lf', 'sk-lf')",
        agent.id
    ))
    .expect("settings");
    let run = agent.loop_run(&mut c);
    let signal = wait_signal(&mut c, &run.run_id, "TOOL_LOOP", Duration::from_secs(20));
    hook.wait_for_containing(&run.run_id, 1, Duration::from_secs(20));
    c.execute(
        "SELECT dunetrace.record_fix($1, 'Stop repeating searches.', 'manual')",
        &[&signal],
    )
    .expect("a fix");
    let before = table_counts(&mut c);
    let max_ids = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT max(id) FROM dunetrace.failure_signals), \
                        (SELECT max(id) FROM dunetrace.api_keys)",
                &[],
            )
            .expect("max ids");
        (r.get(0), r.get(1))
    };
    let (max_signal, max_key) = max_ids(&mut c);

    let db = test_db();
    let dump = std::env::temp_dir().join(format!("{}.dump", unique("dunetrace-backup")));
    let dump = dump.to_str().expect("a UTF-8 path").to_string();
    pg_tool("pg_dump", &db, &["-Fc", "-f", &dump]);

    // Into a new database: every row, working keys, sequences that continue.
    let mut admin = connect_to("postgres");
    admin
        .batch_execute("DROP DATABASE IF EXISTS dunetrace_restored WITH (FORCE)")
        .expect("drop an old copy");
    admin
        .batch_execute("CREATE DATABASE dunetrace_restored")
        .expect("create the target database");
    pg_tool(
        "pg_restore",
        "dunetrace_restored",
        &["--exit-on-error", "--single-transaction", &dump],
    );
    let mut restored = connect_to("dunetrace_restored");
    assert_eq!(table_counts(&mut restored), before);
    let second = agent.loop_events(&unique("restored-run"));
    agent.ingest(&mut restored, &second);
    restored
        .batch_execute("SELECT dunetrace.process_runs()")
        .expect("process in the restored database");
    let (new_signal, _) = max_ids(&mut restored);
    assert!(
        new_signal > max_signal,
        "signal ids continue after {max_signal}"
    );
    restored
        .execute("SELECT dunetrace.create_api_key('after-restore')", &[])
        .expect("a new key");
    let (_, new_key) = max_ids(&mut restored);
    assert!(new_key > max_key, "key ids continue after {max_key}");
    drop(restored);
    admin
        .batch_execute("DROP DATABASE dunetrace_restored WITH (FORCE)")
        .expect("drop the copy");

    // Into the worker's own database, recreated empty: the worker resumes there.
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .expect("drop the worker's database");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create the worker's database again");
    pg_tool(
        "pg_restore",
        &db,
        &["--exit-on-error", "--single-transaction", &dump],
    );
    let _ = std::fs::remove_file(&dump);
    let mut c = connect_ready();
    assert_eq!(table_counts(&mut c), before);
    let after = agent.loop_run(&mut c);
    wait_signal(&mut c, &after.run_id, "TOOL_LOOP", Duration::from_secs(30));
    hook.wait_for_containing(&after.run_id, 1, Duration::from_secs(20));
    reset_destinations(&mut c);
}
