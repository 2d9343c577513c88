# Shared set-up for scripts/test and scripts/demo: install what is missing, start what is
# not running, and say clearly what went wrong. Every step is safe to run again.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
RUN_DIR="$ROOT/.run"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install $* by hand (this script supports Debian/Ubuntu)"
    say "installing $* with apt-get"
    if [ -z "${ULOS_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq || die "apt-get update failed"
        ULOS_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || die "apt-get install $* failed"
}

ensure_python() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11 or newer is needed (found $(python3 --version 2>&1))"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
}

ensure_venv() {
    ensure_python
    [ -x "$PY" ] || { say "creating $VENV"; python3 -m venv "$VENV" || die "cannot create venv"; }
    local stamp="$VENV/.installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing ulos-py and its test tools into $VENV"
        "$PY" -m pip install -q --upgrade pip >/dev/null || die "pip upgrade failed"
        "$PY" -m pip install -q -e "$ROOT[dev]" || die "pip install failed (is PyPI reachable?)"
        echo "$want" > "$stamp"
    fi
}

port_open() { "$PY" - "$1" "$2" <<'PYEOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PYEOF
}

ensure_rabbitmq() {
    if port_open 127.0.0.1 5672; then return; fi
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    say "starting RabbitMQ"
    # There is no systemd on every machine: start the broker directly, in the background.
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 90); do
        port_open 127.0.0.1 5672 && as_root rabbitmqctl -q await_startup >/dev/null 2>&1 && return
        sleep 1
    done
    die "RabbitMQ did not start within 90 s (see /var/log/rabbitmq)"
}

docker_answers() { docker info >/dev/null 2>&1; }

ensure_docker() {
    # DOCKER_HOST may name an engine elsewhere: then it must answer, nothing is started here.
    if docker_answers; then return; fi
    [ -z "${DOCKER_HOST:-}" ] || die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer"
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    if docker_answers; then return; fi
    say "starting the Docker engine (dockerd, log in $RUN_DIR/dockerd.log)"
    mkdir -p "$RUN_DIR"
    # No systemd on every machine: start the daemon directly, detached from this shell.
    as_root setsid dockerd >"$RUN_DIR/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 30); do
        docker_answers && return
        sleep 1
    done
    die "the Docker engine did not start within 30 s (see $RUN_DIR/dockerd.log)"
}

ensure_debootstrap() {
    # Executor images need a base; with no registry, `executors build` makes one with it.
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
}

build_executor_images() {
    ensure_debootstrap
    mkdir -p "$RUN_DIR"
    say "building executor images (ulos-py executors build)"
    "$VENV/bin/ulos-py" executors build --registry "$ROOT/executors/registry.toml" >"$RUN_DIR/build.log" 2>&1 \
        || { tail -n 20 "$RUN_DIR/build.log" >&2; die "building the executor images failed (full log: $RUN_DIR/build.log)"; }
}

ensure_postgres() {
    # The tracker's tests start a private PostgreSQL cluster of their own (tests/support/postgres.py)
    # from the Debian packages; nothing here starts the packaged one.
    local pg_bin="${ULOS_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}"
    [ -x "$pg_bin/initdb" ] || apt_install postgresql
    [ -x "$pg_bin/initdb" ] || die "PostgreSQL is installed but $pg_bin/initdb is missing (set ULOS_TEST_PG_BIN)"
}

ensure_chromium() {
    # The dashboard's browser tests drive Debian's Chromium through its own chromedriver
    # (Selenium): no browser download, which a machine without internet could not do.
    if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then return; fi
    apt_install chromium chromium-driver
}
