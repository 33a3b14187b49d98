#!/usr/bin/env bash
# Builds the paper baseline's OpenCV 4 venv; the script ships in the package
# (pipeline/bench/setup_baseline_venv.sh), this keeps the documented command working.
#
# Usage: bash benchmarks/setup_baseline_venv.sh [VENV_DIR]   (default benchmarks/.venv-baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash pipeline/bench/setup_baseline_venv.sh "${1:-benchmarks/.venv-baseline}"
