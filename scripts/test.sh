#!/usr/bin/env bash
# The test command: install what is missing, lint, then run every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
python -m ruff check .
python -m ruff format --check .
exec python -m pytest "$@"
