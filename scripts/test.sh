#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite on two workers (one per core; each
# test file stays on one worker). Extra arguments go to pytest, e.g. -m "not slow" for the fast loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
