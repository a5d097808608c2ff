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
