#!/usr/bin/env bash
# The test command: install what is missing, lint, then run every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
python3 -m ruff check .
python3 -m ruff format --check .
exec python3 -m pytest "$@"
