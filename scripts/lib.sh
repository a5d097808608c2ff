# Shared helpers for the set-up, demo and test scripts. Source it; do not run it.
# Everything here is idempotent and works as root on a fresh Debian 12 machine.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PGRX_VERSION="0.18.1"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1;34m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# System packages, cargo-pgrx and its Postgres registration.
ensure_deps() {
    local pkgs="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pkg-config libssl-dev openssl sudo python3 python3-venv curl"
    local missing=""
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing system packages:$missing"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    command -v cargo >/dev/null || die "cargo is required (install Rust with rustup first)"
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
    fi
    if ! grep -q "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
        log "registering PostgreSQL $PG_MAJOR with pgrx"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

# Unlinks the installed library so the next install writes a new file: processes of running
# clusters keep the old one mapped instead of crashing on a file rewritten in place.
unlink_installed_library() {
    as_root rm -f "$("$PG_CONFIG" --pkglibdir)/dunetrace.so"
}

# Installs the released versions' install scripts (sql/dunetrace--X.sql), which
# `cargo pgrx install` leaves out (it copies only the current one and the upgrade steps), so
# `CREATE EXTENSION dunetrace VERSION '0.1.0'` works, as the upgrade test needs.
install_released_scripts() {
    local dir
    dir="$("$PG_CONFIG" --sharedir)/extension"
    for f in "$ROOT"/sql/dunetrace--[0-9]*.[0-9]*.[0-9]*.sql; do
        case "$(basename "$f")" in *--*--*) continue ;; esac
        as_root install -m 644 "$f" "$dir/"
    done
}

# Builds the extension and installs it into the system PostgreSQL.
install_extension() {
    log "building and installing the dunetrace extension"
    unlink_installed_library
    (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
    install_released_scripts
}

# start_cluster DIR PORT [extra postgresql.conf lines...]: a local cluster owned by postgres,
# listening on 127.0.0.1:PORT and a socket in DIR, with dunetrace preloaded. Reuses a running one.
start_cluster() {
    local dir="$1" port="$2"; shift 2
    as_root install -d -o postgres -g postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        log "creating a cluster in $dir/data"
        as_root runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    fi
    as_root tee "$dir/data/postgresql.auto.conf" >/dev/null <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'dunetrace'
dunetrace.database = 'dunetrace'
$(printf '%s\n' "$@")
CONF
    if as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "restarting the cluster on port $port"
        as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -m fast restart >/dev/null
    else
        log "starting the cluster on port $port"
        as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
    fi
}

stop_cluster() {
    local dir="$1"
    as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -w -m fast stop >/dev/null 2>&1 || true
}

# psql against a cluster started by start_cluster: dpsql DIR PORT DB [psql args...]
dpsql() {
    local dir="$1" port="$2" db="$3"; shift 3
    psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}
