#!/usr/bin/env bash
# Builds the separate virtual environment that the paper-script baseline runs in.
#
# Why a second venv: the paper's video script detects faces with OpenCV's Haar cascade
# (cv2.CascadeClassifier), which OpenCV 5 (the project's own opencv-python) no longer has.
# The baseline therefore runs in its own interpreter with OpenCV 4, the same torch release
# and the same weights, as a subprocess that reports JSON (paper_baseline.py beside this).
# Shipped in the package so that `gimefive bench` can run it from a wheel install.
#
# Usage: bash setup_baseline_venv.sh [VENV_DIR]   (default: benchmarks/.venv-baseline,
# relative to the working directory; in a checkout: bash benchmarks/setup_baseline_venv.sh)
set -euo pipefail
VENV="${1:-benchmarks/.venv-baseline}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU wheel on disk, exactly the project's torch release.
"$VENV/bin/python" -m pip install -q torch==2.13.0
# OpenCV 4: the last major release with the Haar cascade and its XML files.
"$VENV/bin/python" -m pip install -q "opencv-python-headless>=4.8,<5" "numpy>=1.24" \
    "pillow>=9" "safetensors>=0.4"
"$VENV/bin/python" - <<'PY'
import cv2, torch
assert hasattr(cv2, "CascadeClassifier"), "OpenCV in the baseline venv lacks CascadeClassifier"
print(f"baseline venv ready: opencv {cv2.__version__}, torch {torch.__version__}")
PY
