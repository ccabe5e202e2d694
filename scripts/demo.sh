#!/usr/bin/env bash
# The demo command: install what is missing, then run the main job end to
# end on this machine (SeaweedFS, two systemd-nspawn hosts, real SSH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python demo/run_demo.py
