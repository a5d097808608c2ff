#!/usr/bin/env bash
# Starts (or restarts) the cluster the end-to-end tests run against, with the extension freshly
# installed in database dunetrace_test and the worker tuned for fast tests, then prints the
# environment the tests read. Usage: eval "$(bash scripts/test-cluster.sh)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="${DUNETRACE_TEST_DIR:-/var/tmp/dunetrace-test}"
PORT="${DUNETRACE_TEST_PORT:-54330}"
DB=dunetrace_test

{
    stop_cluster "$DIR"
    unlink_installed_library
    (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null)
    install_released_scripts
    start_cluster "$DIR" "$PORT" \
        "dunetrace.database = '$DB'" \
        "dunetrace.worker_naptime = 1" \
        "dunetrace.http_timeout = 2000" \
        "dunetrace.http_retry_backoff = 200" \
        "dunetrace.http_max_attempts = 3" \
        "dunetrace.dashboard_url = 'http://dashboard.test'"
    dpsql "$DIR" "$PORT" postgres -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
    dpsql "$DIR" "$PORT" "$DB" -q -c "CREATE EXTENSION dunetrace"
} >&2

cat <<ENV
export DUNETRACE_TEST_DSN='host=127.0.0.1 port=$PORT user=postgres dbname=$DB'
export DUNETRACE_TEST_PGCTL='runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data -l $DIR/log -w -m fast'
export DUNETRACE_TEST_LOG='$DIR/log'
ENV
