#!/usr/bin/env bash
# One call on a machine with an NVIDIA GPU (at most 8 minutes):
#   bash benchmarks/gpu_check.sh            # JSON + Markdown to $OUT (or the current folder)
# Environment report; torch CUDA backend faces/s (batch 1..512, fp32/fp16, no CAM /
# in-graph CAM / autograd CAM); onnxruntime CUDA/TensorRT providers and the TensorRT
# backend where installed (reported absent otherwise); detector fps; annotate fps on a
# generated 1080p clip. See benchmarks/gpu_check.py.
#
# Run on an H200 on 30 Nov 2026 (benchmarks/results/gpu_check/, README results): every
# part except onnxruntime-gpu and TensorRT, which that image lacked (reported absent).
# It fails early and clearly without a GPU (exit 3).
#   bash benchmarks/gpu_check.sh --dry-run  # no GPU needed: every part of the GPU path
#                                           # (issue 14) at tiny sizes on the CPU, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

if [[ "${1:-}" == "--dry-run" || "${*}" == *"--device cpu"* ]]; then
  exec "$PY" benchmarks/gpu_check.py "$@"
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this needs an NVIDIA GPU with its driver" >&2
  exit 3
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi sees no GPU: $(nvidia-smi -L 2>&1 | head -1)" >&2
  exit 3
fi
if ! "$PY" - <<'PY'
import sys
import torch
if torch.version.cuda is None:
    sys.exit(f"gpu_check: torch {torch.__version__} is a CPU-only build; install a CUDA "
             "build of torch to measure the GPU")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
             "usable GPU (driver too old or device hidden?)")
PY
then
  exit 3
fi
nvidia-smi
# 7 minutes for the measurements, leaving room for start-up inside the 8-minute call
export GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
exec timeout --signal=INT 470 "$PY" benchmarks/gpu_check.py "$@"
