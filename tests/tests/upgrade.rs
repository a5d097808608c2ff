//! Versioned upgrades: the released 0.1.0 schema, with data in it, updated by
//! `ALTER EXTENSION dunetrace UPDATE`, keeps every row and ends up identical to a fresh install
//! of the current version; nothing is executable by PUBLIC before or after.

use dunetrace_e2e::*;
use postgres::Client;
use serde_json::json;

/// A description of everything the extension owns in a database, one line per fact, sorted:
/// tables and their columns, defaults, identities, constraints, indexes, views, sequences,
/// functions with their attributes and privileges, comments, and the dump configuration.
const DESCRIBE: &str = "
WITH ns AS (SELECT 'dunetrace'::regnamespace AS oid)
SELECT line FROM (
  SELECT format('relation %s kind=%s options=%s acl=%s comment=%s', c.relname, c.relkind,
                c.reloptions, c.relacl, obj_description(c.oid, 'pg_class')) AS line
  FROM pg_class c, ns WHERE c.relnamespace = ns.oid
  UNION ALL
  SELECT format('column %s.%s type=%s notnull=%s default=%s identity=%s generated=%s acl=%s',
                c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attacl)
  FROM ns, pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = ns.oid AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('column-order %s: %s', c.relname,
                string_agg(a.attname, ', ' ORDER BY a.attnum))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, ns
  WHERE c.relnamespace = ns.oid AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
  GROUP BY c.relname
  UNION ALL
  SELECT format('constraint %s.%s %s', c.relname, k.conname, pg_get_constraintdef(k.oid))
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid, ns WHERE c.relnamespace = ns.oid
  UNION ALL
  SELECT format('index %s', pg_get_indexdef(i.indexrelid))
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid, ns WHERE c.relnamespace = ns.oid
  UNION ALL
  SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid))
  FROM pg_class c, ns WHERE c.relnamespace = ns.oid AND c.relkind = 'v'
  UNION ALL
  SELECT format('sequence %s type=%s inc=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
                c.relname, format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax,
                s.seqcache, s.seqcycle,
                (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid || '/' || d.deptype::text
                 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.deptype IN ('a', 'i')))
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid, ns WHERE c.relnamespace = ns.oid
  UNION ALL
  SELECT format('function %s returns=%s secdef=%s volatile=%s parallel=%s strict=%s leakproof=%s '
                'cost=%s rows=%s config=%s lang=%s src=%s bin=%s acl=%s comment=%s',
                p.oid::regprocedure, pg_get_function_result(p.oid), p.prosecdef, p.provolatile,
                p.proparallel, p.proisstrict, p.proleakproof, p.procost, p.prorows, p.proconfig,
                l.lanname, p.prosrc, p.probin, p.proacl, obj_description(p.oid, 'pg_proc'))
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, ns WHERE p.pronamespace = ns.oid
  UNION ALL
  SELECT format('function-defaults %s %s', p.oid::regprocedure,
                pg_get_function_arguments(p.oid))
  FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
  UNION ALL
  SELECT format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
  WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'dunetrace' AND d.deptype = 'e'
  UNION ALL
  SELECT format('dumped %s condition=%s', x.rel, x.cond)
  FROM pg_extension e,
       unnest(e.extconfig::regclass[]::text[], e.extcondition) AS x(rel, cond)
  WHERE e.extname = 'dunetrace'
  UNION ALL
  SELECT format('extension version=%s relocatable=%s schema=%s', e.extversion,
                e.extrelocatable, e.extnamespace::regnamespace)
  FROM pg_extension e WHERE e.extname = 'dunetrace'
) facts ORDER BY line";

fn describe(c: &mut Client) -> Vec<String> {
    c.query(DESCRIBE, &[])
        .expect("describe the schema")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn recreate(admin: &mut Client, db: &str) {
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A finished run that loops a tool (TOOL_LOOP) for `agent`.
fn looping(agent: &str, run: &str) -> serde_json::Value {
    let mut events = vec![
        json!({"event_type": "run.started", "run_id": run, "agent_id": agent,
                                 "agent_version": "v1", "step_index": 0, "timestamp": 1000.0,
                                 "payload": {"tools": ["search"]}}),
    ];
    for i in 1..=5 {
        events.push(json!({"event_type": "tool.called", "run_id": run, "agent_id": agent,
                           "agent_version": "v1", "step_index": i, "timestamp": 1000.0 + f64::from(i),
                           "payload": {"tool_name": "search", "args_hash": LOOP_ARGS_HASH}}));
    }
    events.push(
        json!({"event_type": "run.completed", "run_id": run, "agent_id": agent,
                       "agent_version": "v1", "step_index": 5, "timestamp": 1010.0,
                       "payload": {"exit_reason": "completed"}}),
    );
    json!(events)
}

fn ingest(c: &mut Client, key: &str, events: &serde_json::Value) {
    c.execute(
        "SELECT dunetrace.ingest($1, $2::text::jsonb)",
        &[&key, &events.to_string()],
    )
    .expect("ingest");
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn upgrade_from_0_1_0_keeps_the_data_and_equals_a_fresh_install() {
    let mut admin = connect_to("postgres");
    recreate(&mut admin, "dunetrace_upgrade");
    recreate(&mut admin, "dunetrace_fresh");

    // The released schema, with data in every kind of table.
    let mut old = connect_to("dunetrace_upgrade");
    old.batch_execute("CREATE EXTENSION dunetrace VERSION '0.1.0'")
        .expect("install 0.1.0");
    assert_eq!(public_privileges(&mut old), Vec::<String>::new());
    let key: String = old
        .query_one("SELECT dunetrace.create_api_key('upgrade-bot')", &[])
        .expect("create a key")
        .get(0);
    old.batch_execute(
        "SELECT dunetrace.add_destination('webhook', 'http://127.0.0.1:9/unreachable', 's3cret');
         SELECT dunetrace.add_destination('slack', 'http://127.0.0.1:9/slack', NULL, 'LOW');
         SELECT dunetrace.configure_detector('upgrade-bot', 'tool_loop', '{\"threshold\": 3}');
         SELECT dunetrace.configure_langfuse('http://127.0.0.1:9', 'pk', 'sk');",
    )
    .expect("settings and destinations");
    for i in 0..3 {
        ingest(
            &mut old,
            &key,
            &looping("upgrade-bot", &format!("old-run-{i}")),
        );
    }
    // The new library does not process runs on the old tables: it asks for the update
    // (ingest goes on, as above).
    let err = old
        .query_one("SELECT dunetrace.process_runs()", &[])
        .expect_err("process_runs waits for the update");
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");
    assert!(
        format!("{err:?}").contains("ALTER EXTENSION dunetrace UPDATE"),
        "{err:?}"
    );
    // What 0.1.0 itself had written: a processed run, a signal, an issue, queued alerts, a
    // fix, a digest.
    old.batch_execute(
        "INSERT INTO dunetrace.processed_runs (run_id, agent_id, agent_version, signal_count,
                                               trigger, completed)
         VALUES ('old-run-0', 'upgrade-bot', 'v1', 1, 'run.completed', true);
         UPDATE dunetrace.runs SET processed_trigger = 'run.completed' WHERE run_id = 'old-run-0';
         INSERT INTO dunetrace.failure_signals (failure_type, severity, run_id, agent_id,
                                                agent_version, step_index, confidence, evidence,
                                                shadow)
         VALUES ('TOOL_LOOP', 'HIGH', 'old-run-0', 'upgrade-bot', 'v1', 3, 0.9,
                 '{\"tool\": \"search\", \"count\": 5}', false);
         INSERT INTO dunetrace.issues (agent_id, failure_type) VALUES ('upgrade-bot', 'TOOL_LOOP');
         INSERT INTO dunetrace.deliveries (destination_id, signal_id, webhook_id, body)
         SELECT d.id, s.id, 'msg_' || d.id, '{}' FROM dunetrace.destinations d,
                dunetrace.failure_signals s;
         INSERT INTO dunetrace.digest_log DEFAULT VALUES;",
    )
    .expect("0.1.0's own rows");
    old.batch_execute(
        "SELECT dunetrace.record_fix(min(id), 'Stop repeating searches.', 'manual')
         FROM dunetrace.failure_signals",
    )
    .expect("a fix");
    let before = table_counts(&mut old);
    for table in [
        "api_keys",
        "events",
        "runs",
        "processed_runs",
        "failure_signals",
        "issues",
        "fixes",
        "destinations",
        "deliveries",
        "detector_settings",
        "langfuse_settings",
        "digest_log",
    ] {
        assert!(
            !before.contains(&format!("{table}=0")),
            "{table} has rows before the upgrade: {before:?}"
        );
    }

    old.batch_execute("ALTER EXTENSION dunetrace UPDATE")
        .expect("ALTER EXTENSION dunetrace UPDATE");
    let version: String = old
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'dunetrace'",
            &[],
        )
        .expect("version")
        .get(0);
    let default_version: String = old
        .query_one(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'dunetrace'",
            &[],
        )
        .expect("default version")
        .get(0);
    assert_eq!(version, default_version);
    assert_ne!(version, "0.1.0");

    // Every row is still there, and the old key and data keep working.
    let after: Vec<String> = table_counts(&mut old)
        .into_iter()
        .filter(|t| {
            before
                .iter()
                .any(|b| b.split('=').next() == t.split('=').next())
        })
        .collect();
    assert_eq!(after, before, "every table of 0.1.0 keeps its rows");
    ingest(&mut old, &key, &looping("upgrade-bot", "new-run"));
    let processed: i32 = old
        .query_one("SELECT dunetrace.process_runs()", &[])
        .expect("process after the upgrade")
        .get(0);
    assert_eq!(
        processed, 3,
        "the two runs that waited for the update, and the new one"
    );
    let signals: i64 = old
        .query_one(
            "SELECT count(*) FROM dunetrace.failure_signals WHERE run_id = 'new-run'",
            &[],
        )
        .expect("signals")
        .get(0);
    assert!(signals >= 1);
    assert_eq!(public_privileges(&mut old), Vec::<String>::new());

    // The schema is the one a fresh install of this version gets.
    let mut fresh = connect_to("dunetrace_fresh");
    fresh
        .batch_execute("CREATE EXTENSION dunetrace")
        .expect("fresh install");
    let upgraded = describe(&mut old);
    let installed = describe(&mut fresh);
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|l| !installed.contains(l)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|l| !upgraded.contains(l)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgraded schema differs from a fresh install\nonly after the upgrade:\n{}\nonly in a fresh install:\n{}",
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
    assert!(upgraded.len() > 100, "the description covers the schema");
    assert_eq!(public_privileges(&mut fresh), Vec::<String>::new());

    drop(old);
    drop(fresh);
    for db in ["dunetrace_upgrade", "dunetrace_fresh"] {
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .expect("drop the database");
    }
}
