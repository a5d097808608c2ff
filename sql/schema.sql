-- dunetrace schema: tables, indexes and roles. Installed first by CREATE EXTENSION.
-- Functions are generated from the Rust sources; sql/finalize.sql adds views and grants.

-- Roles are cluster-wide: create them once, keep them across DROP EXTENSION.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dunetrace_ingest') THEN
        CREATE ROLE dunetrace_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dunetrace_reader') THEN
        CREATE ROLE dunetrace_reader NOLOGIN;
    END IF;
    -- What the background worker needs, for running it without superuser
    -- (dunetrace.worker_role names a LOGIN member of this role).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dunetrace_worker') THEN
        CREATE ROLE dunetrace_worker NOLOGIN;
    END IF;
END
$roles$;

-- API keys: only the SHA-256 of a key and a short prefix are stored.
CREATE TABLE dunetrace.api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_prefix      text        NOT NULL,
    key_hash        bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    agent_id        text        NOT NULL,
    customer_id     text        NOT NULL DEFAULT 'default',
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    rate_limit_rpm  integer     NOT NULL DEFAULT 600
);
CREATE INDEX api_keys_prefix_idx ON dunetrace.api_keys (key_prefix);

-- Raw structural events, exactly as accepted by dunetrace.ingest().
CREATE TABLE dunetrace.events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id        uuid             NOT NULL,
    event_type      text             NOT NULL,
    run_id          text             NOT NULL,
    agent_id        text             NOT NULL,
    agent_version   text             NOT NULL,
    step_index      integer          NOT NULL CHECK (step_index >= 0),
    "timestamp"     double precision NOT NULL,
    payload         jsonb            NOT NULL DEFAULT '{}',
    parent_run_id   text,
    received_at     timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX events_run_idx ON dunetrace.events (run_id);
CREATE INDEX events_agent_received_idx ON dunetrace.events (agent_id, received_at DESC);

-- Run tracking, maintained by ingest: the worker finds finished and stalled runs here and
-- never scans events to do so.
CREATE SEQUENCE dunetrace.runs_seq;

CREATE TABLE dunetrace.runs (
    run_id             text        PRIMARY KEY,
    agent_id           text        NOT NULL,
    agent_version      text        NOT NULL,
    parent_run_id      text,
    has_started        boolean     NOT NULL DEFAULT false,
    terminal_event     text        CHECK (terminal_event IN ('run.completed', 'run.errored')),
    event_count        integer     NOT NULL DEFAULT 0,
    max_step           integer     NOT NULL DEFAULT 0,
    first_received_at  timestamptz NOT NULL DEFAULT now(),
    last_received_at   timestamptz NOT NULL DEFAULT now(),
    -- Ingest order: the run's latest batch, then the position of its last event in that
    -- batch. Runs are processed in this order.
    last_seq           bigint      NOT NULL DEFAULT nextval('dunetrace.runs_seq'),
    last_pos           integer     NOT NULL DEFAULT 0,
    -- NULL until processed; then the trigger it was processed under ('orphaned': neither
    -- started nor finished, silent past dunetrace.orphan_timeout, never evaluated).
    processed_trigger  text        CHECK (processed_trigger IN ('run.completed', 'run.errored', 'stalled', 'orphaned'))
);
-- The pending set: never processed, or processed as stalled and finished since.
CREATE INDEX runs_pending_idx ON dunetrace.runs (last_received_at)
    WHERE processed_trigger IS NULL
       OR (processed_trigger = 'stalled' AND terminal_event IS NOT NULL);
ALTER SEQUENCE dunetrace.runs_seq OWNED BY dunetrace.runs.last_seq;
CREATE INDEX runs_agent_idx ON dunetrace.runs (agent_id, first_received_at DESC);

CREATE SEQUENCE dunetrace.processed_runs_seq;

CREATE TABLE dunetrace.processed_runs (
    run_id         text        PRIMARY KEY,
    agent_id       text        NOT NULL,
    agent_version  text        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    signal_count   integer     NOT NULL DEFAULT 0,
    trigger        text        NOT NULL CHECK (trigger IN ('run.completed', 'run.errored', 'stalled', 'orphaned')),
    -- Set when the run could not be evaluated or its results not stored: the run is recorded
    -- with the error and the others go on (docs/operations.md, "Poison runs").
    error          text,
    -- Processing order: baselines use the most recent runs by this.
    seq            bigint      NOT NULL DEFAULT nextval('dunetrace.processed_runs_seq'),
    -- The run ended with run.completed (only such runs feed baselines).
    completed      boolean     NOT NULL DEFAULT false,
    -- Per-run metrics the baselines are computed from (see core/src/baseline.rs).
    metrics        jsonb
);
ALTER SEQUENCE dunetrace.processed_runs_seq OWNED BY dunetrace.processed_runs.seq;
CREATE INDEX processed_runs_baseline_idx
    ON dunetrace.processed_runs (agent_id, agent_version, seq DESC) WHERE completed;
CREATE INDEX processed_runs_agent_idx
    ON dunetrace.processed_runs (agent_id, processed_at DESC);

CREATE TABLE dunetrace.failure_signals (
    id               bigint GENERATED ALWAYS AS IDENTITY
                         (SEQUENCE NAME dunetrace.failure_signals_id_seq) PRIMARY KEY,
    failure_type     text             NOT NULL,
    severity         text             NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    run_id           text             NOT NULL,
    agent_id         text             NOT NULL,
    agent_version    text             NOT NULL,
    step_index       integer          NOT NULL,
    confidence       double precision NOT NULL,
    evidence         jsonb            NOT NULL DEFAULT '{}',
    detected_at      timestamptz      NOT NULL DEFAULT now(),
    alerted          boolean          NOT NULL DEFAULT false,
    shadow           boolean          NOT NULL DEFAULT true,
    co_signal_count  integer          NOT NULL DEFAULT 0
);
CREATE INDEX failure_signals_agent_idx
    ON dunetrace.failure_signals (agent_id, detected_at DESC);
CREATE INDEX failure_signals_run_idx ON dunetrace.failure_signals (run_id);
CREATE INDEX failure_signals_type_idx
    ON dunetrace.failure_signals (agent_id, failure_type, detected_at DESC);
CREATE INDEX failure_signals_unalerted_idx
    ON dunetrace.failure_signals (detected_at) WHERE NOT alerted AND NOT shadow;

-- One row per (agent, failure type): open, resolved after clean runs, reopened, or ignored.
CREATE TABLE dunetrace.issues (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id          text        NOT NULL,
    failure_type      text        NOT NULL,
    status            text        NOT NULL DEFAULT 'open'
                                  CHECK (status IN ('open', 'resolved', 'reopened', 'ignored')),
    first_seen        timestamptz NOT NULL DEFAULT now(),
    last_seen         timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    affected_runs     integer     NOT NULL DEFAULT 1,
    clean_runs_since  integer     NOT NULL DEFAULT 0,
    UNIQUE (agent_id, failure_type),
    -- dunetrace.snooze_issue(): no alerts until then.
    snoozed_until     timestamptz
);

CREATE TABLE dunetrace.digest_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest_type  text        NOT NULL DEFAULT 'weekly',
    sent_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX digest_log_sent_idx ON dunetrace.digest_log (digest_type, sent_at DESC);

CREATE TABLE dunetrace.fixes (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id                text        NOT NULL,
    signal_id             bigint      NOT NULL,
    fix_content           text        NOT NULL,
    fix_type              text        NOT NULL DEFAULT 'prompt_addition'
                                      CHECK (fix_type IN ('prompt_addition', 'code_change', 'no_auto_apply')),
    applied_via           text        NOT NULL,
    langfuse_prompt_name  text,
    langfuse_version      integer,
    applied_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fixes_signal_idx ON dunetrace.fixes (signal_id);
CREATE INDEX fixes_run_idx ON dunetrace.fixes (run_id, applied_at DESC);

-- Per-agent detector settings, merged over agent_id = 'default' (see configure_detector).
CREATE TABLE dunetrace.detector_settings (
    agent_id    text        NOT NULL,
    detector    text        NOT NULL,
    params      jsonb       NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, detector)
);

-- Where alerts go. url and secret are credentials: only the extension owner reads them.
CREATE TABLE dunetrace.destinations (
    id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('slack', 'webhook')),
    url           text        NOT NULL,
    secret        text,
    min_severity  text        NOT NULL CHECK (min_severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    active        boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Overrides of the kind's delivery policy (dunetrace.configure_destination): rate_limit,
    -- concurrency, group_by_issue, repeat_interval.
    params              jsonb       NOT NULL DEFAULT '{}',
    -- State kept by the worker: a 429 holds the destination back until rate_limited_until.
    rate_limited_until  timestamptz,
    last_success_at     timestamptz,
    last_error_at       timestamptz,
    last_error          text
);

-- The durable delivery outbox: one row per (alert, destination), written in the transaction
-- that stores the signal, sent by the worker after commit.
CREATE TABLE dunetrace.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination_id   integer     NOT NULL REFERENCES dunetrace.destinations (id) ON DELETE CASCADE,
    signal_id        bigint,
    kind             text        NOT NULL DEFAULT 'signal' CHECK (kind IN ('signal', 'digest', 'followup')),
    -- The digest_log row a digest delivery belongs to.
    digest_id        bigint      REFERENCES dunetrace.digest_log (id) ON DELETE SET NULL,
    webhook_id       text        NOT NULL,
    body             text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_http_status integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    -- The backend that claimed it (the worker releases claims of processes that are gone).
    claimed_by       integer
)
-- Bodies of a few KB (2-4 KB is typical) stay in the row uncompressed: compressing each one
-- when it is queued (pglz) costs more time than the space it saves is worth.
WITH (toast_tuple_target = 8160);
CREATE INDEX deliveries_due_idx ON dunetrace.deliveries (next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX deliveries_signal_idx ON dunetrace.deliveries (signal_id);
CREATE INDEX deliveries_digest_idx ON dunetrace.deliveries (digest_id) WHERE digest_id IS NOT NULL;
CREATE INDEX deliveries_failed_idx ON dunetrace.deliveries (created_at) WHERE status = 'failed';

-- Alert grouping for destinations that group by issue (Slack by default): one row per
-- (destination, agent, failure type): when its last message was queued, and the runs folded
-- into the next follow-up since.
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

-- The outcome of every attempt of every delivery.
CREATE TABLE dunetrace.delivery_attempts (
    delivery_id   bigint      NOT NULL REFERENCES dunetrace.deliveries (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    http_status   integer,
    error         text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Langfuse credentials for apply_fix(). Only the extension owner reads this table.
CREATE TABLE dunetrace.langfuse_settings (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    host        text        NOT NULL,
    public_key  text        NOT NULL,
    secret_key  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Deploy markers (the original SDK's mark_deploy, through the gateway): one row per deploy.
CREATE TABLE dunetrace.deploy_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id     text        NOT NULL,
    version      text        NOT NULL,
    deployed_at  timestamptz NOT NULL DEFAULT now(),
    meta         jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX deploy_events_agent_idx ON dunetrace.deploy_events (agent_id, deployed_at DESC);
