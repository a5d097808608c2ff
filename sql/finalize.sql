-- Installed last by CREATE EXTENSION: the public ingest entry point, views, and privileges.

-- The agents' entry point. SECURITY DEFINER so the ingest role needs no table privileges;
-- the search_path is pinned. The JSON is handed to the Rust code as text so that it parses
-- numbers with correct rounding and turns every malformed input into a precise SQL error.
CREATE FUNCTION dunetrace.ingest(api_key text, events jsonb) RETURNS jsonb
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT dunetrace._ingest(api_key, events::text) $$;
COMMENT ON FUNCTION dunetrace.ingest(text, jsonb) IS
    'Stores a batch of hashed, structural agent events (one object or an array); all-or-nothing.';

-- Privileges: nothing for PUBLIC; the ingest role may only call ingest(); the reader role
-- reads data and views but never key hashes or alert destinations.
REVOKE ALL ON ALL TABLES IN SCHEMA dunetrace FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dunetrace FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dunetrace FROM PUBLIC;

GRANT USAGE ON SCHEMA dunetrace TO dunetrace_ingest, dunetrace_reader;
GRANT EXECUTE ON FUNCTION dunetrace.ingest(text, jsonb) TO dunetrace_ingest;

GRANT SELECT ON dunetrace.events, dunetrace.runs, dunetrace.failure_signals,
                dunetrace.processed_runs, dunetrace.issues, dunetrace.fixes,
                dunetrace.digest_log, dunetrace.detector_settings
    TO dunetrace_reader;
GRANT SELECT (id, key_prefix, agent_id, customer_id, active, created_at, revoked_at, rate_limit_rpm)
    ON dunetrace.api_keys TO dunetrace_reader;
