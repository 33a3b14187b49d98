"""Does the torch backend on CUDA give the CPU's probabilities and Grad-CAM?

Runs on a machine with an NVIDIA GPU (the device tool's H200 here); no dataset needed:
64 face crops are cut from ``skimage.data.astronaut()`` with random shifts, zooms and
flips. Compares CUDA fp32 and fp16 with CPU fp32, for autograd and in-graph CAM, and
writes ``gpu_parity.json`` to ``$OUT`` (or the current folder).

    python benchmarks/gpu_parity.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from gimefive.backends import create_backend
from gimefive.preprocess import preprocess_faces

FACE = (180, 60, 272, 175)  # the astronaut's face in the 512x512 photo


def faces(n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    photo = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    x1, y1, x2, y2 = FACE
    crops = []
    for _ in range(n):
        side = (x2 - x1) * rng.uniform(0.9, 1.4)
        cx = (x1 + x2) / 2 + rng.uniform(-12, 12)
        cy = (y1 + y2) / 2 + rng.uniform(-12, 12)
        a, b = int(cx - side / 2), int(cy - side / 2)
        crop = photo[max(b, 0):int(b + side), max(a, 0):int(a + side)]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return preprocess_faces([cv2.resize(c, (64, 64)) for c in crops])


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_parity: no CUDA device", file=sys.stderr)
        return 3
    x = faces()
    result = {"faces": len(x), "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for method in ("autograd", "graph"):
        with create_backend("torch", device="cpu", cam_method=method) as cpu:
            ref_p, ref_c = cpu(x, cam=True)
        for precision in ("fp32", "fp16"):
            with create_backend("torch", device="cuda", precision=precision,
                                cam_method=method) as gpu:
                p, c = gpu(x, cam=True)
            result[f"{method}_{precision}"] = {
                "probs_max_abs_diff": float(np.abs(p - ref_p).max()),
                "cam_max_abs_diff": float(np.abs(c - ref_c).max()),
                "cam_mean_abs_diff": float(np.abs(c - ref_c).mean()),
                "top1_agreement": float(np.mean(p.argmax(1) == ref_p.argmax(1))),
            }
            print(method, precision, result[f"{method}_{precision}"], flush=True)
    out = Path(os.environ.get("OUT") or ".")
    (out / "gpu_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
