#!/usr/bin/env bash
# Make a virtual environment hold exactly one lock file (creating it if absent), then reweigh itself, editable.
#
#   bash scripts/setup_env.sh VENV LOCK [PACKAGE ...]   (the scripts/setup*.sh call this)
#
# 1. pip installs the lock's uv (its pinned version and hashes), so the machine's pip configuration (an index
#    mirror, find-links, a constraints file) is what fetches it;
# 2. `uv pip sync` makes the environment the lock: every package at its locked version, each file checked against
#    the lock's sha256, nothing resolved (the lock already holds the whole tree), and anything not in the lock
#    removed (packages installed by hand too). An sdist in the lock builds with the lock's pins as its build
#    constraints. uv reads its index from UV_DEFAULT_INDEX (default PyPI), not from pip's configuration.
#    Bytecode is compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set (these machines set it)
#    Python would otherwise compile every module at every start (`import composer, transformers` took 19.5 s
#    instead of 7.1 s, and the test suite half as long again);
# 3. reweigh itself, editable, without build isolation (its build back-end is in the lock); then `uv pip check`.
# 4. It prints the installed versions of the PACKAGEs named (what the environment is for).
# Safe to re-run: what already matches the lock is kept. The lock installed is recorded in VENV/reweigh-lock.json,
# which tests/test_locks.py compares with the installed packages and with the lock in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ] || [ ! -f "$2" ]; then
    echo "usage: bash scripts/setup_env.sh VENV LOCK [PACKAGE ...] (LOCK: one of requirements/*.txt)" >&2
    exit 2
fi
venv="$1"
lock="$2"
shift 2
PYTHON="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "reweigh setup: creating $venv with $($PYTHON --version)"
    "$PYTHON" -m venv "$venv"
fi
uv_pin=$(mktemp)
trap 'rm -f "$uv_pin"' EXIT
# The lock's uv entry: its `uv==VERSION \` line and the --hash lines under it.
sed -n '/^uv==/,/^[^ ]/{/^uv==/p;/^ *--hash/p;}' "$lock" > "$uv_pin"
if ! grep -q -- '--hash' "$uv_pin"; then
    echo "reweigh setup: $lock pins no uv; bash scripts/lock.sh writes it from requirements/tools.in" >&2
    exit 1
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$uv_pin" 2>&1 \
    | { grep -v "^WARNING: Location 'file:.*' is ignored: it is neither a file nor a directory\.$" || true; }
uv=("$venv/bin/uv" pip)
packages=$(grep -c "^[A-Za-z0-9]" "$lock")
echo "reweigh setup: installing $lock into $venv ($packages packages pinned across platforms, hash-checked)"
"${uv[@]}" sync --python "$venv/bin/python" --require-hashes --compile-bytecode --build-constraints "$lock" "$lock"
"${uv[@]}" install --python "$venv/bin/python" --no-deps --no-build-isolation --editable .
if ! report=$("${uv[@]}" check --python "$venv/bin/python" 2>&1); then
    echo "$report" >&2
    echo "reweigh setup: $venv does not hold a consistent set of packages (above); bash scripts/lock.sh refreshes $lock" >&2
    exit 1
fi
"$venv/bin/python" - "$lock" "$venv/reweigh-lock.json" <<'EOF'
import hashlib, json, sys
lock, record = sys.argv[1], sys.argv[2]
with open(lock, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
with open(record, "w") as f:
    json.dump({"lock": lock, "sha256": digest}, f)
EOF
if [ $# -gt 0 ]; then
    "$venv/bin/python" - "$venv" "$@" <<'EOF'
import sys
from importlib.metadata import version
print(f'reweigh setup: {sys.argv[1]} done (' + ', '.join(f'{name} {version(name)}' for name in sys.argv[2:]) + ')')
EOF
fi
