"""Torch RetinaFace vs the onnxruntime detector on the CPU: parity figures and speed.

    python benchmarks/torch_detector.py [--threads 1] [--repeat 20]

Parity: on the astronaut photo and the generated 640x360 face ladder
(:func:`gimefive.pipeline.bench.scenes.face_ladder`: faces of 20..120 px), also shrunk
from 1280x720 (area resize) and enlarged to 1280 (``upscale``, linear resize): faces found
by each, smallest IoU of matched pairs, largest box / landmark difference (px) and score
difference. Speed: median ms per call, whole ``detect`` (resize, network, decoding, NMS),
640x360 frames, batch 1 and 4, both on ``--threads`` CPU threads.

CPU only: the GPU speed of the torch detector is NOT measured here (no GPU on the machine
this was written on); a GPU run belongs in ``benchmarks/gpu_check.sh``. Figures taken on a
shared, loaded machine are provisional.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch
from gimefive.pipeline.bench.scenes import face_ladder

from gimefive.detector import FaceDetector, box_iou
from gimefive.torch_detector import TorchFaceDetector


def parity_cases() -> list[tuple[str, np.ndarray, dict]]:
    from skimage import data

    ladder = face_ladder()
    return [("astronaut 512x512", np.ascontiguousarray(data.astronaut()[:, :, ::-1]), {}),
            ("ladder 640x360", ladder, {}),
            ("ladder 1280x720 -> 640", cv2.resize(ladder, (1280, 720)), {}),
            ("ladder 640x360 -> 1280 upscale", ladder, {"max_side": 1280, "upscale": True})]


def compare(name: str, frame: np.ndarray, options: dict, threads: int) -> str:
    """One table row: counts and the largest differences between the two detectors."""
    (o,) = FaceDetector(threads=threads, **options).detect([frame])
    (t,) = TorchFaceDetector(**options).detect([frame])
    row = f"| {name} | {len(o)} | {len(t)} |"
    if len(o) != len(t) or not len(o):
        return row + " - | - | - | - |"
    iou = np.diag(box_iou(o.boxes, t.boxes)).min()
    return (row + f" {iou:.4f} | {np.abs(o.boxes - t.boxes).max():.3f} | "
            f"{np.abs(o.landmarks - t.landmarks).max():.3f} | "
            f"{np.abs(o.scores - t.scores).max():.1e} |")


def median_ms(detector, frames: list[np.ndarray], repeat: int) -> float:
    detector.detect(frames)  # warm-up: sessions, caches, first-call allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        detector.detect(frames)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| scene | faces ORT | faces torch | min IoU | max box diff px "
          "| max landmark diff px | max score diff |")
    print("|---|---|---|---|---|---|---|")
    for name, frame, options in parity_cases():
        print(compare(name, frame, options, args.threads))
    ort = FaceDetector(threads=args.threads)
    tdet = TorchFaceDetector(threads=args.threads)
    frame = face_ladder()
    print(f"\nspeed, 640x360, {args.threads} threads, median of {args.repeat} "
          f"(torch {torch.__version__}):")
    for batch in (1, 4):
        frames = [frame] * batch
        a, b = median_ms(ort, frames, args.repeat), median_ms(tdet, frames, args.repeat)
        print(f"  batch {batch}: onnxruntime {a:.1f} ms ({batch * 1e3 / a:.0f} frames/s), "
              f"torch {b:.1f} ms ({batch * 1e3 / b:.0f} frames/s)")


if __name__ == "__main__":
    main()
