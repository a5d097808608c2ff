#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md: builds and installs the extension (release),
# starts a cluster of its own in /var/tmp/dunetrace-bench on 127.0.0.1:54350 (the worker runs in
# database `dunetrace`), runs the `dunetrace-bench` binary, and stops the cluster.
#
#   bash bench/run.sh            # full run (about 20 minutes), writes BENCHMARKS.md
#   bash bench/run.sh --quick    # smoke run (under a minute once built), writes
#                                #   /var/tmp/dunetrace-bench/BENCHMARKS.quick.md
#   bash bench/run.sh --only ingest,process   # a subset (also: latency, memory, scaling, storm)
#
# Options: --quick, --only LIST, --out FILE, --keep (leave the cluster running),
# --skip-install (use the extension already installed), --batches LIST and --clients LIST
# (narrow measurement 1, e.g. --batches 100 --clients 1).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DIR="${DUNETRACE_BENCH_DIR:-/var/tmp/dunetrace-bench}"
PORT="${DUNETRACE_BENCH_PORT:-54350}"
quick=0 keep=0 install=1 out="" pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; pass+=(--quick) ;;
        --keep) keep=1 ;;
        --skip-install) install=0 ;;
        --out) out="$2"; shift ;;
        --only|--batches|--clients) pass+=("$1" "$2"); shift ;;
        *) die "unknown option $1 (see the header of bench/run.sh)" ;;
    esac
    shift
done
if [ -z "$out" ]; then
    if [ $quick = 1 ]; then out="$DIR/BENCHMARKS.quick.md"; else out="$ROOT/BENCHMARKS.md"; fi
fi

PKGLIB="$("$PG_CONFIG" --pkglibdir)"
SHARE="$("$PG_CONFIG" --sharedir)/extension"
# The install script of the version this tree builds.
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"

# The extension's files are shared by every cluster of this PostgreSQL installation, and other
# builds (tests, demos) may install over them at any time. The bench therefore installs the
# release build, restarts its cluster at once (the postmaster keeps the library it preloaded),
# creates the template every bench database is copied from, and checks that the library the
# cluster runs and the SQL the template was made with are still this build's; if another
# install slipped in between, it starts over.
install_and_start() {
    local try
    for try in 1 2 3; do
        if [ $install = 1 ]; then
            log "building and installing the extension (release)"
            # The default target dir (a CARGO_TARGET_DIR meant for other builds is ignored).
            env -u CARGO_TARGET_DIR cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
        fi
        cp "$SHARE/dunetrace--$VERSION.sql" "$DIR.sql"
        cp "$PKGLIB/dunetrace.so" "$DIR.so"
        start_cluster "$DIR" "$PORT" \
            "shared_buffers = '2GB'" \
            "max_wal_size = '8GB'" \
            "checkpoint_timeout = '30min'" \
            "max_connections = 50" \
            "log_min_messages = warning"
        dpsql "$DIR" "$PORT" postgres -q \
            -c "DROP DATABASE IF EXISTS dunetrace WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS dunetrace_bench_template WITH (FORCE)" \
            -c "CREATE DATABASE dunetrace_bench_template"
        dpsql "$DIR" "$PORT" dunetrace_bench_template -q -c "CREATE EXTENSION dunetrace"
        dpsql "$DIR" "$PORT" postgres -q \
            -c "CREATE DATABASE dunetrace TEMPLATE dunetrace_bench_template"
        local pm inode
        pm="$(head -1 "$DIR/data/postmaster.pid")"
        inode="$(awk '/\/dunetrace\.so/ {print $5; exit}' "/proc/$pm/maps")"
        if cmp -s "$SHARE/dunetrace--$VERSION.sql" "$DIR.sql" && cmp -s "$PKGLIB/dunetrace.so" "$DIR.so" \
            && [ "$inode" = "$(stat -c %i "$PKGLIB/dunetrace.so")" ]; then
            return 0
        fi
        log "another build installed the extension meanwhile; again ($try)"
    done
    die "could not get a consistent install of the extension (another build keeps installing it)"
}

ensure_deps
cd "$ROOT"
log "building the bench"
cargo build -q --release -p dunetrace-bench
install_and_start
if [ $keep = 0 ]; then
    trap 'stop_cluster "$DIR"' EXIT
fi
if [ $install = 1 ] && ! cmp -s "$DIR.so" "$ROOT/target/release/libdunetrace.so"; then
    die "the installed library is not target/release/libdunetrace.so"
fi

if [ $install = 1 ]; then
    export DUNETRACE_BENCH_BUILD="extension built by \`cargo pgrx install --release\` (fat LTO)"
else
    export DUNETRACE_BENCH_BUILD="extension as installed before the run (\`--skip-install\`: its build, release or debug, is not checked)"
fi
log "running the benchmarks"
cargo run -q --release -p dunetrace-bench -- --port "$PORT" --out "$out" "${pass[@]}"
log "results in $out"
