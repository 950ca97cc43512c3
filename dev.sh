#!/usr/bin/env bash
# Set up and run kachery-jupyter on a fresh machine.
#   bash dev.sh start   set up .venv, then run the quickstart on the embedded default
#   bash dev.sh test    set up .venv, then run the whole test suite (extra args go to pytest)
#   bash dev.sh setup   only set up
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"

pick_python() {
    for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    echo "kachery-jupyter needs Python 3.10 or newer on PATH" >&2
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

cmd=${1:-start}
shift || true
case "$cmd" in
setup)
    setup
    ;;
start)
    setup
    exec "$VENV/bin/python" notebooks/run.py "$@"
    ;;
test)
    setup
    setup_js
    echo "==> front-end tests (node --test js/tests/)"
    (cd js && node --test tests/)
    setup_e2e
    echo "==> Python tests (pytest)"
    exec "$VENV/bin/python" -m pytest tests "$@"
    ;;
*)
    echo "usage: bash dev.sh [start|test|setup]" >&2
    exit 2
    ;;
esac
