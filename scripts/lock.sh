#!/usr/bin/env bash
# Refresh the lock files: requirements/NAME.txt from requirements/NAME.in for every environment below, with
# uv's resolver (about 10 s an environment). A lock pins every package to one version with the sha256 of each
# of its files on PyPI, for every platform and Python >= 3.11 (--universal), so that scripts/setup*.sh install
# the same packages everywhere without resolving anything.
#
#   bash scripts/lock.sh                                 # after changing pyproject.toml or an .in file:
#                                                        #   keeps every pin that still fits, resolves the rest
#   bash scripts/lock.sh --upgrade                       # every package to the newest release the ranges allow
#   bash scripts/lock.sh --upgrade-package transformers  # one package (and what it needs) only
#
# Any arguments go to `uv pip compile`. tests/test_locks.py fails while a lock no longer satisfies pyproject.toml
# or its .in file. A new environment is a requirements/NAME.in, its name in ENVIRONMENTS and a setup script that
# calls scripts/setup_env.sh with requirements/NAME.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVIRONMENTS=(main foundry today olmo)
# The resolver is pinned too (another uv may write the same resolution differently): the uv that setup installs.
UV_VERSION=$(sed -n 's/^uv==//p' requirements/tools.in)
PYTHON="${PYTHON:-python3}"
if [ "$(.venv-lock/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "reweigh lock: installing uv $UV_VERSION into .venv-lock"
    [ -x .venv-lock/bin/python ] || "$PYTHON" -m venv .venv-lock
    .venv-lock/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" 2>&1 \
        | { grep -v "^WARNING: Location 'file:.*' is ignored: it is neither a file nor a directory\.$" || true; }
fi
for name in "${ENVIRONMENTS[@]}"; do
    echo "reweigh lock: requirements/$name.in -> requirements/$name.txt"
    # uv reads the pins already in the output file as preferences, so without --upgrade nothing moves needlessly.
    .venv-lock/bin/uv pip compile --quiet "requirements/$name.in" -o "requirements/$name.txt" \
        --universal --python-version 3.11 --generate-hashes --index-url https://pypi.org/simple \
        --no-emit-package reweigh --custom-compile-command "bash scripts/lock.sh" "$@"
done
echo "reweigh lock: done; re-run scripts/setup.sh, setup_foundry.sh, setup_today.sh and setup_olmo.sh to install the new locks"
