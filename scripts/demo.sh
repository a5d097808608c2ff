#!/usr/bin/env bash
# The main job: set everything up from nothing, start a local cluster with the extension and
# show it working. Idempotent; run as root (or a sudoer) on Debian 12.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="${DUNETRACE_DEMO_DIR:-/var/tmp/dunetrace-demo}"
PORT="${DUNETRACE_DEMO_PORT:-54329}"

ensure_deps
install_extension
start_cluster "$DIR" "$PORT"

dpsql "$DIR" "$PORT" postgres -q -c "SELECT 1" >/dev/null
if ! dpsql "$DIR" "$PORT" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'dunetrace'" | grep -q 1; then
    dpsql "$DIR" "$PORT" postgres -q -c "CREATE DATABASE dunetrace"
fi
log "recreating the extension in database dunetrace"
dpsql "$DIR" "$PORT" dunetrace -q -c "DROP EXTENSION IF EXISTS dunetrace CASCADE" -c "CREATE EXTENSION dunetrace"

log "running the demo agents"
dpsql "$DIR" "$PORT" dunetrace -q -f "$ROOT/scripts/demo.sql"

cat <<MSG

Explore further:
  psql -h 127.0.0.1 -p $PORT -U postgres dunetrace
    SELECT run_id, agent_id, event_count, terminal_event FROM dunetrace.runs;
    SELECT event_type, step_index, payload FROM dunetrace.events ORDER BY id LIMIT 20;
Stop the cluster:
  runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data stop
MSG
