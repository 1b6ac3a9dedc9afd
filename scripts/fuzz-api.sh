#!/usr/bin/env bash
# Schema fuzzing: schemathesis against a running service's /openapi.json, every
# operation, authenticated; fails when any answer is a 5xx.
#
# Usage (from anywhere inside the repository, with the service running):
#   AUTH_TOKEN=<the service's token> scripts/fuzz-api.sh [BASE_URL]
#   (BASE_URL defaults to http://127.0.0.1:8080; MAX_EXAMPLES, default 50, per operation)
#
# schemathesis is a test tool, not a dependency of the service: it is installed into a
# throwaway venv, within constraints.txt, so the service's own install stays untouched.
set -euo pipefail

url="${1:-http://127.0.0.1:8080}"
: "${AUTH_TOKEN:?set AUTH_TOKEN to the token of the service under test}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${FUZZ_PYTHON:-python3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --constraint "$repo/constraints.txt" schemathesis
"$work/venv/bin/st" run "$url/openapi.json" \
    --header "X-Auth-Token: $AUTH_TOKEN" \
    --checks not_a_server_error \
    --max-examples "${MAX_EXAMPLES:-50}"
