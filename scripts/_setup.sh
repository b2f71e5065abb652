# Sourced by scripts/demo and scripts/test: make .venv if missing and install the three
# distributions (imsg-oprf, imsg-relay, imsg with its test and dev extras) into it, every
# third-party version pinned by constraints.txt (regenerate: scripts/lock).
# Idempotent and quiet when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
# Reinstall only when a pyproject.toml or the pins changed since the last install.
STAMP="$VENV/.imsg-installed"
stale=0
[ -f "$STAMP" ] || stale=1
for f in "$ROOT/pyproject.toml" "$ROOT/server/pyproject.toml" "$ROOT/oprf/pyproject.toml" "$ROOT/constraints.txt"; do
    [ "$f" -nt "$STAMP" ] && stale=1
done
if [ "$stale" = 1 ]; then
    echo "setup: installing imsg and its dependencies into .venv" >&2
    LOG="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$ROOT/constraints.txt" \
            -e "$ROOT/oprf" -e "$ROOT/server[postgres,redis]" -e "$ROOT[test,dev]" >"$LOG" 2>&1; then
        tail -40 "$LOG" >&2
        echo "setup: pip install failed (full log: $LOG)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
# Private contact discovery needs the system libsodium (>= 1.0.18, for ristretto255):
# pysodium binds it with ctypes. Install it when missing and we may; else say what to do.
if ! "$VENV/bin/python" -c "import imsg_oprf; imsg_oprf.require_libsodium()" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing libsodium23 (apt-get)" >&2
        { apt-get install -y libsodium23 || { apt-get update && apt-get install -y libsodium23; }; } >/dev/null 2>&1 || true
    fi
    "$VENV/bin/python" -c "import imsg_oprf; imsg_oprf.require_libsodium()" || {
        echo "setup: libsodium >= 1.0.18 is missing: apt-get install libsodium23 (Debian/Ubuntu)," \
             "dnf install libsodium, or brew install libsodium" >&2
        exit 1
    }
fi
# The SOCKS5 test (tests/integration/test_private_delivery.py) runs a real SOCKS5 server on
# loopback: Debian's microsocks. Installed when missing and we may; the test skips, saying
# why, only where it cannot be installed.
if ! command -v microsocks >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing microsocks (apt-get)" >&2
    { apt-get install -y microsocks || { apt-get update && apt-get install -y microsocks; }; } >/dev/null 2>&1 || true
fi
export PATH="$VENV/bin:$PATH"
