-- Installed last by CREATE EXTENSION: the public ingest entry point, views, and privileges.

-- The agents' entry point, dunetrace.ingest(text, jsonb), is a C function (src/ingest.rs):
-- SECURITY DEFINER so the ingest role needs no table privileges, with a pinned search_path.
COMMENT ON FUNCTION dunetrace.ingest(text, jsonb) IS
    'Stores a batch of hashed, structural agent events (one object or an array); all-or-nothing.';

-- The batch functions run many short statements: JIT compilation (chosen by estimated cost
-- once tables grow) would cost more than it saves, so they run without it (the worker too).
ALTER FUNCTION dunetrace.process_runs(integer) SET jit = off;
ALTER FUNCTION dunetrace.dispatch(integer) SET jit = off;
ALTER FUNCTION dunetrace.send_digest(boolean) SET jit = off;

-- Views for people and dashboards.

-- One row per run: identity, timing, size, how it ended, how many signals it produced.
CREATE VIEW dunetrace.run_overview AS
SELECT r.run_id,
       r.agent_id,
       r.agent_version,
       r.parent_run_id,
       to_timestamp(e.started) AS started_at,
       e.duration_s,
       r.max_step AS steps,
       e.tool_calls,
       e.llm_calls,
       e.total_tokens,
       CASE r.terminal_event
           WHEN 'run.errored' THEN 'error'
           WHEN 'run.completed' THEN COALESCE(e.exit_reason, 'completed')
       END AS exit_reason,
       p.trigger AS processed_as,
       p.processed_at,
       COALESCE(p.signal_count, 0) AS signal_count,
       p.error AS processing_error,
       r.event_count,
       r.last_received_at
FROM dunetrace.runs r
LEFT JOIN dunetrace.processed_runs p ON p.run_id = r.run_id
LEFT JOIN LATERAL (
    SELECT min(ev."timestamp") AS started,
           max(ev."timestamp") - min(ev."timestamp") AS duration_s,
           count(*) FILTER (WHERE ev.event_type = 'tool.called') AS tool_calls,
           count(*) FILTER (WHERE ev.event_type = 'llm.called') AS llm_calls,
           sum(COALESCE((ev.payload->>'prompt_tokens')::bigint, 0)
               + COALESCE((ev.payload->>'completion_tokens')::bigint, 0))
               FILTER (WHERE ev.event_type IN ('llm.called', 'llm.responded')) AS total_tokens,
           min(ev.payload->>'exit_reason') FILTER (WHERE ev.event_type = 'run.completed') AS exit_reason
    FROM dunetrace.events ev
    WHERE ev.run_id = r.run_id
) e ON true;

-- Signals with their explanation title.
CREATE VIEW dunetrace.signal_overview AS
SELECT s.id,
       s.detected_at,
       s.agent_id,
       s.agent_version,
       s.run_id,
       s.failure_type,
       s.severity,
       s.confidence,
       s.step_index,
       dunetrace.signal_title(s.failure_type, s.evidence) AS title,
       s.shadow,
       s.alerted,
       s.co_signal_count,
       s.evidence
FROM dunetrace.failure_signals s;

-- Per agent, the last 7 days: processed runs, share of runs with a live signal, top types.
CREATE VIEW dunetrace.agent_overview AS
SELECT a.agent_id,
       a.runs_7d,
       a.runs_with_signals_7d,
       round(a.runs_with_signals_7d::numeric / NULLIF(a.runs_7d, 0), 4) AS signal_rate_7d,
       COALESCE(t.top_failure_types, '[]'::jsonb) AS top_failure_types,
       a.last_processed_at
FROM (
    SELECT p.agent_id,
           count(*) AS runs_7d,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM dunetrace.failure_signals s
               WHERE s.run_id = p.run_id AND NOT s.shadow)) AS runs_with_signals_7d,
           max(p.processed_at) AS last_processed_at
    FROM dunetrace.processed_runs p
    WHERE p.processed_at > now() - interval '7 days'
    GROUP BY p.agent_id
) a
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('failure_type', x.failure_type, 'runs', x.runs)
                     ORDER BY x.runs DESC, x.failure_type) AS top_failure_types
    FROM (
        SELECT s.failure_type, count(DISTINCT s.run_id) AS runs
        FROM dunetrace.failure_signals s
        WHERE s.agent_id = a.agent_id AND NOT s.shadow
          AND s.detected_at > now() - interval '7 days'
        GROUP BY s.failure_type
        ORDER BY runs DESC, s.failure_type
        LIMIT 3
    ) x
) t ON true;

-- For operators: the worker's backlog in one row (see docs/operations.md, "Monitoring").
CREATE VIEW dunetrace.worker_status AS
SELECT (SELECT count(*) FROM dunetrace.runs r
        WHERE r.processed_trigger IS NULL
           OR (r.processed_trigger = 'stalled' AND r.terminal_event IS NOT NULL)) AS runs_pending,
       (SELECT count(*) FROM dunetrace.runs r
        WHERE (r.processed_trigger IS NULL
               OR (r.processed_trigger = 'stalled' AND r.terminal_event IS NOT NULL))
          AND r.terminal_event IS NOT NULL) AS runs_finished_waiting,
       (SELECT now() - min(r.last_received_at) FROM dunetrace.runs r
        WHERE (r.processed_trigger IS NULL
               OR (r.processed_trigger = 'stalled' AND r.terminal_event IS NOT NULL))
          AND r.terminal_event IS NOT NULL) AS oldest_finished_waiting,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.status IN ('pending', 'sending') AND d.next_attempt_at <= now()) AS deliveries_due,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.status IN ('pending', 'sending')) AS deliveries_queued,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.status = 'failed' AND d.created_at > now() - interval '24 hours') AS deliveries_failed_24h,
       (SELECT count(*) FROM dunetrace.processed_runs p
        WHERE p.error IS NOT NULL AND p.processed_at > now() - interval '24 hours') AS runs_errored_24h,
       (SELECT a.pid FROM pg_catalog.pg_stat_activity a
        WHERE a.application_name = 'dunetrace worker' AND a.datname = pg_catalog.current_database()
        LIMIT 1) AS worker_pid;

-- Each destination's delivery state, without its URL or secret.
CREATE VIEW dunetrace.destination_status AS
SELECT t.id,
       t.kind,
       t.active,
       t.min_severity,
       t.params,
       t.last_success_at,
       t.last_error_at,
       t.last_error,
       t.rate_limited_until,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.destination_id = t.id AND d.status IN ('pending', 'sending')) AS queued,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.destination_id = t.id AND d.status = 'sending'
          AND d.next_attempt_at > now()) AS in_flight,
       (SELECT count(*) FROM dunetrace.deliveries d
        WHERE d.destination_id = t.id AND d.status = 'failed'
          AND d.created_at > now() - interval '24 hours') AS failed_24h
FROM dunetrace.destinations t;

-- Privileges: nothing for PUBLIC; the ingest role may only call ingest(); the reader role
-- reads data and views but never key hashes or alert destinations.
REVOKE ALL ON ALL TABLES IN SCHEMA dunetrace FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dunetrace FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dunetrace FROM PUBLIC;

GRANT USAGE ON SCHEMA dunetrace TO dunetrace_ingest, dunetrace_reader;
GRANT EXECUTE ON FUNCTION dunetrace.ingest(text, jsonb),
                         dunetrace.record_deploy(text, text, text, jsonb)
    TO dunetrace_ingest;

GRANT EXECUTE ON FUNCTION dunetrace.explain(bigint),
                         dunetrace.signal_title(text, jsonb)
    TO dunetrace_reader;
GRANT SELECT ON dunetrace.run_overview, dunetrace.signal_overview, dunetrace.agent_overview,
                dunetrace.worker_status, dunetrace.destination_status
    TO dunetrace_reader;
GRANT SELECT ON dunetrace.events, dunetrace.runs, dunetrace.failure_signals,
                dunetrace.processed_runs, dunetrace.issues, dunetrace.fixes,
                dunetrace.digest_log, dunetrace.detector_settings, dunetrace.deploy_events
    TO dunetrace_reader;
GRANT SELECT (id, key_prefix, agent_id, customer_id, active, created_at, revoked_at, rate_limit_rpm)
    ON dunetrace.api_keys TO dunetrace_reader;

-- The worker's role (used when dunetrace.worker_role is set): what its statements read and
-- write, nothing else; never API keys or Langfuse credentials.
GRANT USAGE ON SCHEMA dunetrace TO dunetrace_worker;
GRANT SELECT ON dunetrace.events, dunetrace.detector_settings, dunetrace.destinations
    TO dunetrace_worker;
GRANT UPDATE (rate_limited_until, last_success_at, last_error_at, last_error)
    ON dunetrace.destinations TO dunetrace_worker;
GRANT SELECT, INSERT, UPDATE ON dunetrace.alert_groups TO dunetrace_worker;
GRANT SELECT, UPDATE ON dunetrace.runs TO dunetrace_worker;
GRANT SELECT, INSERT, UPDATE ON dunetrace.processed_runs, dunetrace.failure_signals,
                                dunetrace.issues, dunetrace.deliveries
    TO dunetrace_worker;
GRANT SELECT, INSERT ON dunetrace.delivery_attempts, dunetrace.digest_log TO dunetrace_worker;
GRANT USAGE ON SEQUENCE dunetrace.failure_signals_id_seq, dunetrace.processed_runs_seq,
                        dunetrace.issues_id_seq, dunetrace.deliveries_id_seq,
                        dunetrace.digest_log_id_seq
    TO dunetrace_worker;

-- Backups: every table and sequence holds user data, so pg_dump dumps their rows and
-- positions along with CREATE EXTENSION (docs/operations.md, "Backup and restore").
-- (One statement each: the function updates the extension's catalog row.)
SELECT pg_catalog.pg_extension_config_dump('dunetrace.api_keys', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.events', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.runs', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.processed_runs', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.failure_signals', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.issues', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.digest_log', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.fixes', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.detector_settings', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.destinations', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.delivery_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.langfuse_settings', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.deploy_events', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.alert_groups', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.runs_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.processed_runs_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.api_keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.failure_signals_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.issues_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.digest_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.fixes_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.destinations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.deliveries_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dunetrace.deploy_events_id_seq', '');
