#!/usr/bin/env bash
# Runs every test: core unit tests, the extension's #[pg_test]s (with the background worker
# preloaded), and the end-to-end tests against a real cluster. Idempotent; works as root.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_deps
cd "$ROOT"

log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

log "core unit tests (plain cargo test)"
cargo test -q --workspace --exclude dunetrace

log "extension tests (cargo pgrx test, cluster run as postgres)"
pgdata="$(mktemp -d /tmp/dunetrace-pgrx-test.XXXXXX)"
chown postgres:postgres "$pgdata"
trap 'rm -rf "$pgdata"' EXIT
cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$pgdata"

log "all tests passed"
