#!/bin/sh
# SECURITY-TESTS R8: schemathesis against a fresh relay. Not a project dependency:
# schemathesis lives in a throwaway venv under .bench/ (gitignored).
#   python3 -m venv .bench/st && .bench/st/bin/pip install schemathesis
#   tests/relay/schemathesis/run.sh [extra schemathesis args, e.g. -n 1000]
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
HERE="$ROOT/tests/relay/schemathesis"
ST="$ROOT/.bench/st/bin/schemathesis"
DATA=$(mktemp -d)
OUT=$(mktemp)
# Generous rates (the fuzzer is fast); waits capped at 2 s so long polls stay under
# schemathesis's 10 s request timeout (the contract allows 60).
env IMSG_RELAY_SEND_RATE=100000 IMSG_RELAY_REQUEST_RATE=100000 IMSG_RELAY_REQUEST_BURST=100000 \
    IMSG_RELAY_REGISTER_RATE=100000 IMSG_RELAY_REGISTER_BURST=100000 \
    IMSG_RELAY_LOOKUP_RATE=100000 IMSG_RELAY_LOOKUP_BURST=100000 \
    IMSG_RELAY_DISCOVERY_RATE=100000 IMSG_RELAY_DISCOVERY_BURST=100000 \
    IMSG_RELAY_CODE_GUESS_RATE=100000 IMSG_RELAY_CODE_GUESS_BURST=100000 \
    IMSG_RELAY_PROVISIONING_RATE=100000 IMSG_RELAY_PROVISIONING_BURST=100000 \
    IMSG_RELAY_PROVISIONING_GLOBAL_RATE=100000 IMSG_RELAY_PROVISIONING_GLOBAL_BURST=100000 \
    IMSG_RELAY_MAX_WAIT=2 \
    "$ROOT/.venv/bin/imsg-relay" serve --port 0 --data "$DATA" >"$OUT" 2>"$DATA/relay.log" &
RELAY=$!
trap 'kill $RELAY 2>/dev/null; wait $RELAY 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$OUT" && break; sleep 0.1; done
URL=$(sed -n 's/^imsg-relay listening on //p' "$OUT")
eval "$("$ROOT/.venv/bin/python" "$HERE/setup_accounts.py" "$URL")"
export ST_ACCOUNT ST_CHANNEL
cd "$HERE"  # schemathesis.toml is read from the working directory
"$ST" run "$URL/openapi.json" --checks all -n 100 -H "Authorization: Bearer $ST_TOKEN" "$@"
