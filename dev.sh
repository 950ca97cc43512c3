#!/usr/bin/env bash
# Set up and run kachery-jupyter on a fresh machine.
#   bash dev.sh start       set up .venv, start a hub on the embedded default (SQLite + a folder,
#                           data and serve.log in .kachery-hub/, port $KACHERY_HUB_PORT or 8555) and
#                           JupyterLab signed in to it as the hub's admin, opening quickstart.ipynb,
#                           on copies of notebooks/ in .kachery-work/notebooks (git-ignored; a copy
#                           is refreshed when its original is newer); extra args go to JupyterLab
#                           (e.g. --port 8900 --no-browser); the hub stops with it
#   bash dev.sh quickstart  set up .venv and run notebooks/quickstart.ipynb headless against a
#                           throwaway hub (and kachery directory), printing it
#   bash dev.sh test        set up .venv, then run the whole test suite (extra args go to pytest)
#   bash dev.sh setup       only set up (also PostgreSQL, redis-server, haproxy and nginx, for bench/ and the replica
#                           and reverse-proxy tests)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"

# The lowest Python that pyproject.toml's requires-python admits comes first, so that the tests
# (and .ci/run) prove the package installs and works there.
pick_python() {
    for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    echo "kachery-jupyter needs Python 3.11 or newer on PATH" >&2
    exit 1
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$(pick_python)" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed.
    local stamp="$VENV/.kachery-setup-stamp"
    local want
    want=$(sha1sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing kachery-jupyter and its test dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[hub,jupyter,test]"
        echo "$want" >"$stamp"
    fi
}

setup_js() {
    if ! command -v node >/dev/null 2>&1; then
        echo "==> installing Node.js (for the widgets' front-end tests)"
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    fi
    if [ ! -d js/node_modules ] || [ js/package-lock.json -nt js/node_modules ]; then
        echo "==> installing the widgets' front-end test dependencies (js/)"
        (cd js && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Browser and sign-in tests need Chromium (a Debian package; playwright cannot download its own
# here) and npm oidc-provider. Install them when missing and possible; otherwise those tests skip
# and say why.
setup_e2e() {
    if [ ! -x /usr/bin/chromium ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing chromium (for the browser tests)"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
                echo "==> could not install chromium: browser tests will be skipped" >&2
        else
            echo "==> no /usr/bin/chromium and no root apt-get: browser tests will be skipped" >&2
        fi
    fi
    if [ ! -d tests/oidc/node_modules ] || [ tests/oidc/package-lock.json -nt tests/oidc/node_modules ]; then
        echo "==> installing the test OpenID provider (tests/oidc)"
        (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error) ||
            echo "==> npm ci failed in tests/oidc: sign-in tests will be skipped" >&2
    fi
}

setup_postgres() {
    if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing PostgreSQL (for the hub's PostgreSQL tests)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; } >/dev/null ||
            echo "==> could not install PostgreSQL: its tests will be skipped" >&2
    fi
}

# bench/bench_feeds.py runs Debian's redis-server as an anchor (started and stopped by the benchmark).
setup_redis() {
    if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing redis-server (an anchor of bench/bench_feeds.py)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >/dev/null ||
            echo "==> could not install redis-server: bench/bench_feeds.py needs it" >&2
    fi
}

# tests/test_replicas.py puts Debian's HAProxy in front of two hub replicas (started and stopped by the tests).
setup_haproxy() {
    if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ] && [ "$(id -u)" = 0 ] &&
        command -v apt-get >/dev/null 2>&1; then
        echo "==> installing haproxy (the load balancer of the replica tests)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; } >/dev/null ||
            echo "==> could not install haproxy: the replica tests will be skipped" >&2
    fi
}

# tests/test_reverse_proxy.py puts Debian's nginx (TLS, a path prefix) in front of a hub (started and stopped by the tests).
setup_nginx() {
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && [ "$(id -u)" = 0 ] &&
        command -v apt-get >/dev/null 2>&1; then
        echo "==> installing nginx (the reverse proxy of the reverse-proxy tests)"
        # nginx-light where Debian still has it (bookworm), else nginx.
        { apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }; } >/dev/null 2>&1 ||
            echo "==> could not install nginx: the reverse-proxy tests will be skipped" >&2
    fi
}

# The hub dev.sh start runs; a global because the EXIT trap runs after start() has returned.
HUB_PID=""

stop_hub() {
    if [ -n "$HUB_PID" ]; then
        kill "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
        HUB_PID=""
    fi
}

# Copies of notebooks/ for JupyterLab to run and save: the originals stay output-free. A copy is
# replaced only when its original is newer, so work done in a copy survives the next start.
copy_notebooks() {
    local work=$1 src dst
    mkdir -p "$work"
    for src in notebooks/*; do
        [ -f "$src" ] || continue
        dst="$work/$(basename "$src")"
        if [ ! -e "$dst" ] || [ "$src" -nt "$dst" ]; then
            cp "$src" "$dst"
        fi
    done
}

# The compatibility tests compare with kachery-cloud 0.4.10 itself, from a venv of its own (the one
# bench/bench_store_local.py uses). Without PyPI those tests skip and say why.
setup_kachery_cloud() {
    if ! "$VENV/bin/python" -c 'import sys; sys.path.insert(0, "bench"); import bench_store_local as b; b.kachery_cloud_python()' >/dev/null; then
        echo "==> could not install kachery-cloud 0.4.10 into bench/.venv-kachery-cloud: its comparisons will be skipped" >&2
    fi
}

# Starts the hub on the embedded default with its data in $1 on port $2, stopped when this script
# exits; sets HUB_URL and HUB_TOKEN (its admin's sign-in token) from what it prints.
HUB_URL=""
HUB_TOKEN=""
start_hub() {
    local data=$1 port=$2
    mkdir -p "$data"
    echo "==> starting the hub (embedded default: SQLite and a folder in $data; log in $data/serve.log)"
    "$VENV/bin/kachery-hub" serve --data "$data" --port "$port" >"$data/serve.log" 2>&1 &
    HUB_PID=$!
    trap stop_hub EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local url="" token=""
    for _ in $(seq 100); do
        url=$(sed -n 's/.*KACHERY_HUB_URL=\([^ ]*\).*/\1/p' "$data/serve.log" | head -n 1)
        [ -n "$url" ] && break
        kill -0 "$HUB_PID" 2>/dev/null || { cat "$data/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$url" ] || { echo "the hub did not start; see $data/serve.log" >&2; exit 1; }
    token=$(sed -n 's/.*KACHERY_HUB_TOKEN=\([^ ]*\).*/\1/p' "$data/serve.log" | head -n 1)
    cat "$data/serve.log"
    HUB_URL=$url
    HUB_TOKEN=$token
}

start() {
    local data="${KACHERY_HUB_DATA:-$ROOT/.kachery-hub}" port="${KACHERY_HUB_PORT:-8555}"
    local work="$ROOT/.kachery-work/notebooks"
    start_hub "$data" "$port"
    local url=$HUB_URL token=$HUB_TOKEN
    copy_notebooks "$work"
    echo "==> hub: $url (data: $data, log: $data/serve.log)"
    echo "==> JupyterLab on $work (copies of notebooks/), opening quickstart.ipynb; its kernels are signed in to $url as the hub's admin"
    echo "==> to let someone else in, give them a sign-in token made with:"
    echo "    $VENV/bin/kachery-hub token create --data $data --user EMAIL"
    local as_root=()
    [ "$(id -u)" = 0 ] && as_root=(--allow-root)
    KACHERY_HUB_URL="$url" KACHERY_HUB_TOKEN="$token" \
        "$VENV/bin/jupyter" lab --notebook-dir="$work" --LabApp.default_url=/lab/tree/quickstart.ipynb \
        "${as_root[@]}" "$@"
}

# The quickstart needs a hub: a throwaway one, with a throwaway kachery directory, so that the
# user's own ~/.kachery-cloud is not signed in to a hub that is gone afterwards.
quickstart() {
    local scratch port
    scratch=$(mktemp -d)
    port=${KACHERY_HUB_PORT:-$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    start_hub "$scratch/hub" "$port"
    KACHERY_HUB_URL="$HUB_URL" KACHERY_HUB_TOKEN="$HUB_TOKEN" KACHERY_CLOUD_DIR="$scratch/kachery-cloud" \
        "$VENV/bin/python" notebooks/run.py "$@"
}

cmd=${1:-start}
shift || true
case "$cmd" in
setup)
    setup
    setup_postgres
    setup_redis
    setup_haproxy
    setup_nginx
    ;;
start)
    setup
    start "$@"
    ;;
quickstart)
    setup
    quickstart "$@"
    ;;
test)
    setup
    setup_js
    echo "==> front-end tests (node --test js/tests/)"
    (cd js && node --test tests/)
    setup_e2e
    setup_postgres
    setup_haproxy
    setup_nginx
    setup_kachery_cloud
    echo "==> Python tests (pytest)"
    exec "$VENV/bin/python" -m pytest tests "$@"
    ;;
*)
    echo "usage: bash dev.sh [start|quickstart|test|setup]" >&2
    exit 2
    ;;
esac
