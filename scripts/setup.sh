#!/usr/bin/env bash
# Everything a fresh machine needs: the CPU torch wheel first (pip finds it on disk,
# so the multi-GB CUDA build is never fetched), then the package with its dev extra,
# then the system tools the RTSP tests use (skipped where apt-get is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
