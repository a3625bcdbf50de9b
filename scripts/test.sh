#!/usr/bin/env bash
# The whole test suite from a clean machine: installs what the tests need, makes sure a
# PostgreSQL is there, then lint, types and tests. Exit code 0 only if all pass.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[test]" -c constraints.txt
CARELOOP_TEST_PG_URL="$(bash scripts/ensure-postgres.sh)"
export CARELOOP_TEST_PG_URL
# PostgreSQL tests must run, never skip, in this command (CI or not).
export CI="${CI:-true}"

python3 -m ruff check src tests bench
python3 -m mypy
python3 -m pytest "$@"
