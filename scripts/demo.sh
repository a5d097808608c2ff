#!/usr/bin/env bash
# The main job: set everything up from nothing, start a local cluster with the extension and
# show it working. Idempotent; run as root (or a sudoer) on Debian 12.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="${DUNETRACE_DEMO_DIR:-/var/tmp/dunetrace-demo}"
PORT="${DUNETRACE_DEMO_PORT:-54329}"

ensure_deps
install_extension
start_cluster "$DIR" "$PORT" "dunetrace.stall_timeout = 5" "dunetrace.worker_naptime = 1"

dpsql "$DIR" "$PORT" postgres -q -c "SELECT 1" >/dev/null
if ! dpsql "$DIR" "$PORT" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'dunetrace'" | grep -q 1; then
    dpsql "$DIR" "$PORT" postgres -q -c "CREATE DATABASE dunetrace"
fi
log "recreating the extension in database dunetrace"
dpsql "$DIR" "$PORT" dunetrace -q -c "DROP EXTENSION IF EXISTS dunetrace CASCADE" -c "CREATE EXTENSION dunetrace"

log "building the demo agents"
(cd "$ROOT" && cargo build -q -p dunetrace-demo)
log "running the demo agents"
"$ROOT/target/debug/dunetrace-demo" "host=127.0.0.1 port=$PORT user=postgres dbname=dunetrace"

cat <<MSG

Explore further:
  psql -h 127.0.0.1 -p $PORT -U postgres dunetrace
    SELECT * FROM dunetrace.run_overview;
    SELECT id, failure_type, title FROM dunetrace.signal_overview;
    SELECT dunetrace.explain(1);
    SELECT * FROM dunetrace.issues;
    SELECT * FROM dunetrace.agent_overview;
    SELECT id, status, attempts, last_http_status FROM dunetrace.deliveries;
Stop the cluster:
  runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data stop
MSG
