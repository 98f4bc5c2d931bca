#!/usr/bin/env bash
# Sets up (scripts/setup_env.sh) and runs the default test suite (slow tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
python3 -m pytest -q --durations=15 "$@"
