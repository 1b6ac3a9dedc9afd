#!/usr/bin/env bash
# Regenerate requirements.txt, the hash-pinned lock of the service.
#
# Usage (from anywhere inside the repository):
#   scripts/lock.sh            # re-resolve; keeps the current pins where still allowed
#   scripts/lock.sh --upgrade  # move every package to the newest version allowed
#
# What it does, and why:
#   1. Creates a throwaway venv with Python 3.12 (the deployment Python) and installs a
#      pinned pip and pip-tools into it, so the result does not depend on whatever is
#      installed on the machine running it.
#   2. Runs pip-compile --generate-hashes over requirements.in + constraints.txt against
#      PyPI only (local pip configuration, find-links and extra indexes are ignored so
#      the lock is the same on every machine). For PyPI, pip-compile records the sha256
#      of every file of each pinned version, so the one lock installs on Python
#      3.11-3.13, Linux x86_64/aarch64 and macOS (Apple silicon).
#   3. mega.py is not in requirements.in because its metadata pins tenacity<6 and the
#      `pathlib` backport, which no resolver accepts together with a working tenacity.
#      mega.py==1.0.8 is appended afterwards with the hashes of all its files (read
#      from the same index); installs use --no-deps, so its broken pins are never followed.
#   4. Checks the result (no `pathlib`, tenacity >= 8, a hash on every requirement) and
#      only then replaces requirements.txt.
#
# Environment:
#   LOCK_PYTHON     interpreter to use (default: python3.12, else pyenv's newest 3.12)
#   LOCK_INDEX_URL  simple index (default https://pypi.org/simple)
set -euo pipefail

PIP_VERSION=26.3
PIP_TOOLS_VERSION=7.6.2
MEGA_VERSION=1.0.8
INDEX_URL="${LOCK_INDEX_URL:-https://pypi.org/simple}"

upgrade=()
case "${1:-}" in
    "") ;;
    --upgrade|-U) upgrade=(--upgrade) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "lock.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

find_python312() {
    if [[ -n "${LOCK_PYTHON:-}" ]]; then
        echo "$LOCK_PYTHON"; return 0
    fi
    # A pyenv shim named python3.12 can exist yet refuse to run, so try it first.
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' >/dev/null 2>&1; then
        command -v python3.12; return 0
    fi
    if command -v pyenv >/dev/null 2>&1; then
        local candidate
        candidate="$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python 2>/dev/null \
            | sort -V | tail -n 1 || true)"
        if [[ -n "$candidate" ]]; then echo "$candidate"; return 0; fi
    fi
    return 1
}

python312="$(find_python312)" || {
    echo "lock.sh: Python 3.12 not found (install it or set LOCK_PYTHON)" >&2
    exit 1
}
"$python312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || {
    echo "lock.sh: $python312 is not Python 3.12" >&2
    exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Ignore the caller's pip configuration: a local wheel directory or extra index would
# add hashes of files that PyPI does not serve and make the lock machine-dependent.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX PIP_CONSTRAINT \
    PIP_REQUIRE_HASHES PIP_ONLY_BINARY PIP_NO_BINARY || true
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "lock.sh: throwaway venv with $("$python312" --version)"
"$python312" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --index-url "$INDEX_URL" \
    "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"

# Work on copies so that the paths pip-compile writes into "# via" comments are the
# plain file names, and seed the output with the current pins (minus the parts this
# script adds itself) so that a plain re-lock does not move versions.
cp requirements.in constraints.txt "$work/"
if [[ -f requirements.txt && ${#upgrade[@]} -eq 0 ]]; then
    awk '/^# ---- mega.py/ { exit } /^-c / { next } { print }' requirements.txt \
        > "$work/requirements.txt"
fi

echo "lock.sh: resolving requirements.in with constraints.txt"
(
    cd "$work"
    "$work/venv/bin/pip-compile" --quiet --no-header --generate-hashes --strip-extras \
        --no-emit-index-url --no-emit-find-links --resolver=backtracking \
        --index-url "$INDEX_URL" --constraint constraints.txt \
        ${upgrade[@]+"${upgrade[@]}"} \
        --output-file requirements.txt requirements.in
)

echo "lock.sh: adding mega.py==$MEGA_VERSION with its hashes"
mega_hashes="$("$work/venv/bin/python" - "$INDEX_URL" "$MEGA_VERSION" <<'PY'
# Read the hashes from the same simple index (PEP 503) pip installs from; every file
# link there carries its sha256 in the URL fragment.
import re
import sys
import urllib.request

base, version = sys.argv[1].rstrip("/"), sys.argv[2]
with urllib.request.urlopen(f"{base}/mega-py/", timeout=60) as response:
    page = response.read().decode("utf-8")
files = {}
for href in re.findall(r'href="([^"]+)"', page):
    name, _, fragment = href.rpartition("/")[2].partition("#")
    wheel = name.startswith(f"mega.py-{version}-") and name.endswith(".whl")
    if (wheel or name == f"mega.py-{version}.tar.gz") and fragment.startswith("sha256="):
        files[name] = fragment.removeprefix("sha256=")
if not any(name.endswith(".whl") for name in files):
    sys.exit(f"lock.sh: no mega.py {version} wheel with a sha256 on {base}")
print(" \\\n".join(f"    --hash=sha256:{d}" for d in sorted(set(files.values()))))
PY
)"

out="$work/requirements.lock"
{
    cat <<HEADER
# requirements.txt: the complete, hash-pinned dependency set of Paimon-server.
# GENERATED by scripts/lock.sh from requirements.in and constraints.txt; do not edit.
#
# Install with exactly this command (README, DEPLOYMENT.md, Dockerfile, render.yaml and
# .ci/run all use it):
#
#   python -m pip install --no-deps --only-binary :all: --require-hashes --constraint constraints.txt -r requirements.txt
#
# --no-deps: mega.py $MEGA_VERSION declares tenacity>=5.1.5,<6 (fails on Python 3.11+
#   with "module 'asyncio' has no attribute 'coroutine'") and pathlib==1.0.1 (a PyPI
#   backport that shadows the standard library). A constraints file cannot override a
#   dependency's own pins, so this file is resolved without mega.py, mega.py is added
#   at the end, and pip installs exactly this list without following declared
#   dependencies. Everything mega.py needs at run time is pinned here instead.
# --require-hashes: every pin carries the sha256 of every file published for that
#   version, so the same file installs on Python 3.11-3.13, Linux x86_64/aarch64 and
#   macOS on Apple silicon (cryptography 49+ ships no Intel-macOS wheels), and a
#   substituted download is refused.
# --only-binary :all:: installing never compiles anything (no Rust or C toolchain).
# Afterwards \`pip check\` reports only mega.py's two unmet metadata pins (tenacity and
# pathlib); see TROUBLESHOOTING.md.
#
# Regenerate: scripts/lock.sh (keep current pins) or scripts/lock.sh --upgrade.

# The floors and ceilings that keep known-broken versions out; keep them in force.
-c constraints.txt

HEADER
    cat "$work/requirements.txt"
    cat <<MEGA

# ---- mega.py: added by scripts/lock.sh, outside the resolver (see header) ----
mega.py==$MEGA_VERSION \\
$mega_hashes
MEGA
} > "$out"

# Refuse to write a lock that would bring back a known breakage.
"$work/venv/bin/python" - "$out" <<'PY'
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
logical = re.sub(r"\\\n", " ", text).splitlines()
reqs = [line.split("#")[0].strip() for line in logical]
reqs = [r for r in reqs if r and not r.startswith("-")]
problems = []
names = {}
for req in reqs:
    match = re.match(r"([A-Za-z0-9._-]+)==([^\s;]+)", req)
    if not match:
        problems.append(f"not pinned with ==: {req}")
        continue
    names[match.group(1).lower().replace("_", "-")] = match.group(2)
    if "--hash=sha256:" not in req:
        problems.append(f"no hash: {match.group(1)}")
if "pathlib" in names:
    problems.append("pathlib must never be installed")
if int(names.get("tenacity", "0").split(".")[0]) < 8:
    problems.append("tenacity must be >= 8")
if names.get("mega.py") is None:
    problems.append("mega.py missing")
if problems:
    sys.exit("lock.sh: refusing to write requirements.txt:\n  " + "\n  ".join(problems))
print(f"lock.sh: {len(names)} pinned distributions, all hashed")
PY

cp "$out" requirements.txt
echo "lock.sh: wrote requirements.txt"
