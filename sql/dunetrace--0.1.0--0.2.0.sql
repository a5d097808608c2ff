-- dunetrace 0.1.0 -> 0.2.0 (ALTER EXTENSION dunetrace UPDATE). Keeps every row.
-- The result equals a fresh 0.2.0 install (tests/tests/upgrade.rs compares the two).
\echo Use "ALTER EXTENSION dunetrace UPDATE TO '0.2.0'" to load this file. \quit

-- Runs with neither run.started nor a terminal event are recorded as 'orphaned' once silent
-- past dunetrace.orphan_timeout.
ALTER TABLE dunetrace.runs
    DROP CONSTRAINT runs_processed_trigger_check,
    ADD CONSTRAINT runs_processed_trigger_check
        CHECK (processed_trigger IN ('run.completed', 'run.errored', 'stalled', 'orphaned'));
ALTER TABLE dunetrace.processed_runs
    DROP CONSTRAINT processed_runs_trigger_check,
    ADD CONSTRAINT processed_runs_trigger_check
        CHECK (trigger IN ('run.completed', 'run.errored', 'stalled', 'orphaned'));

-- Alerts that hold up under a storm: per-destination delivery policy and state, snoozed
-- issues, grouped alerts with follow-ups, claims that name their process.
ALTER TABLE dunetrace.issues ADD COLUMN snoozed_until timestamptz;
ALTER TABLE dunetrace.destinations
    ADD COLUMN params jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN rate_limited_until timestamptz,
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN last_error_at timestamptz,
    ADD COLUMN last_error text;
ALTER TABLE dunetrace.deliveries
    DROP CONSTRAINT deliveries_kind_check,
    ADD CONSTRAINT deliveries_kind_check CHECK (kind IN ('signal', 'digest', 'followup')),
    ADD COLUMN claimed_by integer;
CREATE INDEX deliveries_failed_idx ON dunetrace.deliveries (created_at) WHERE status = 'failed';
CREATE TABLE dunetrace.alert_groups (
    destination_id  integer     NOT NULL REFERENCES dunetrace.destinations (id) ON DELETE CASCADE,
    agent_id        text        NOT NULL,
    failure_type    text        NOT NULL,
    last_sent_at    timestamptz NOT NULL DEFAULT now(),
    folded_runs     integer     NOT NULL DEFAULT 0,
    folded_since    timestamptz,
    last_signal_id  bigint,
    PRIMARY KEY (destination_id, agent_id, failure_type)
);
REVOKE ALL ON dunetrace.alert_groups FROM PUBLIC;

-- New functions (as the Rust sources declare them).
CREATE FUNCTION dunetrace."configure_destination"(
	"id" INT,
	"params" jsonb
) RETURNS jsonb
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'configure_destination_wrapper';

CREATE FUNCTION dunetrace."snooze_issue"(
	"id" bigint,
	"duration" interval
) RETURNS bool
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'snooze_issue_wrapper';

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

GRANT SELECT ON dunetrace.worker_status, dunetrace.destination_status TO dunetrace_reader;

-- A role with exactly what the background worker needs, so it can run without superuser
-- (dunetrace.worker_role).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dunetrace_worker') THEN
        CREATE ROLE dunetrace_worker NOLOGIN;
    END IF;
END
$roles$;
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
-- positions along with CREATE EXTENSION.
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

-- Functions an upgrade adds are revoked from PUBLIC like the rest (none in this step; kept so
-- later steps start from a script that does it).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dunetrace FROM PUBLIC;
