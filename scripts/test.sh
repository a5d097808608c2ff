#!/usr/bin/env bash
# Runs every test: lints, unit tests of every crate, the extension's #[pg_test]s, then the
# client, end-to-end and gateway tests against a real cluster with the worker running, and a
# smoke run of the benchmarks (so they keep working; its figures are not published).
# Idempotent; works as root (test clusters run as the postgres user).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_deps
cd "$ROOT"

log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

log "unit tests of every crate (no database)"
cargo test -q --workspace --exclude dunetrace

log "extension tests (cargo pgrx test, cluster run as postgres)"
pgdata="$(mktemp -d /tmp/dunetrace-pgrx-test.XXXXXX)"
chown postgres:postgres "$pgdata"
trap 'rm -rf "$pgdata"' EXIT
unlink_installed_library   # cargo pgrx test installs the library too
cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$pgdata"

log "starting the end-to-end cluster"
eval "$(bash "$ROOT/scripts/test-cluster.sh")"
trap 'rm -rf "$pgdata"; $DUNETRACE_TEST_PGCTL stop >/dev/null 2>&1 || true' EXIT

log "client tests against the cluster"
cargo test -q -p dunetrace-client -- --include-ignored --test-threads=1

log "end-to-end tests (worker, alerts, retries, crash recovery, digest, fixes)"
cargo test -q -p dunetrace-e2e -- --include-ignored --test-threads=1

log "HTTP gateway tests (including the original Python SDK from PyPI)"
cargo test -q -p dunetrace-gateway -- --include-ignored --test-threads=1

log "benchmark smoke run (bench/run.sh --quick with the debug build installed above: it checks the bench runs, its figures are not judged)"
bash "$ROOT/bench/run.sh" --quick --skip-install

log "all tests passed"
