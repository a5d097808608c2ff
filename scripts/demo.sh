#!/usr/bin/env bash
# The main job: set everything up from nothing, start a local cluster with the extension and
# show it working. Idempotent; run as root (or a sudoer) on Debian 12.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="${DUNETRACE_DEMO_DIR:-/var/tmp/dunetrace-demo}"
PORT="${DUNETRACE_DEMO_PORT:-54329}"

ensure_deps
[ -f "$DIR/gateway.pid" ] && kill -TERM "$(cat "$DIR/gateway.pid")" 2>/dev/null || true
stop_cluster "$DIR"
install_extension
start_cluster "$DIR" "$PORT" "dunetrace.stall_timeout = 5" "dunetrace.worker_naptime = 1"

dpsql "$DIR" "$PORT" postgres -q -c "SELECT 1" >/dev/null
if ! dpsql "$DIR" "$PORT" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'dunetrace'" | grep -q 1; then
    dpsql "$DIR" "$PORT" postgres -q -c "CREATE DATABASE dunetrace"
fi
log "recreating the extension in database dunetrace"
dpsql "$DIR" "$PORT" dunetrace -q -c "DROP EXTENSION IF EXISTS dunetrace CASCADE" -c "CREATE EXTENSION dunetrace"

log "building the demo agents and the HTTP gateway"
(cd "$ROOT" && cargo build -q -p dunetrace-demo -p dunetrace-gateway)

log "starting the HTTP ingest gateway for the original Python SDK on 127.0.0.1:8001"
DATABASE_URL="host=127.0.0.1 port=$PORT user=postgres dbname=dunetrace" \
    nohup "$ROOT/target/debug/dunetrace-gateway" --bind 127.0.0.1:8001 >"$DIR/gateway.log" 2>&1 &
echo $! >"$DIR/gateway.pid"
curl -fsS --retry 30 --retry-connrefused --retry-delay 1 http://127.0.0.1:8001/health >/dev/null
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
Agents using the original Python SDK (pip install dunetrace==0.3.x) can send here unchanged:
  DUNETRACE_ENDPOINT=http://127.0.0.1:8001 DUNETRACE_API_KEY=<a key from dunetrace.create_api_key()> python agent.py
  (gateway log: $DIR/gateway.log; metrics: curl http://127.0.0.1:8001/metrics)
Stop everything:
  kill \$(cat $DIR/gateway.pid); runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data stop
MSG
