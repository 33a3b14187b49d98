"""Detector recall by face size, for several detector settings, on one generated scene.

Why: RetinaFace misses small faces, and enlarging the frame before detection
(``detect_upscale``) trades detector time for them. This prints, per face size, the
recall at IoU 0.5 of each setting and its time per frame, on a 640x360 scene of 12 RAF-DB
test faces from 16 to 120 px (``gimefive bench`` measures the same scene kind as
"640x360 wide", there against the paper script's Haar cascade).

    python benchmarks/detect_sizes.py [--frames 40] [--settings 640,1280+up]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
from gimefive.pipeline.bench.scenes import load_dataset_faces, make_scene_video, score_detections

from gimefive.detector import FaceDetector


def parse_setting(text: str) -> tuple[int, bool]:
    """``1280+up``: max side 1280, frames enlarged to it; ``640``: shrunk only."""
    side, _, flag = text.partition("+")
    return int(side), flag == "up"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--settings", default="640,1280+up",
                        help="comma list of MAX_SIDE[+up]")
    args = parser.parse_args()
    faces = load_dataset_faces(200, "rafdb_test", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.mp4"
        truth = make_scene_video(path, faces, 640, 360, n_frames=args.frames, fps=25,
                                 seed=0, faces_per_frame=12, sizes=(16, 120))
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    rows = {}
    for text in args.settings.split(","):
        side, upscale = parse_setting(text.strip())
        detector = FaceDetector(max_side=side, upscale=upscale, threads=1)
        detector.detect(frames[:1])  # warm-up
        start = time.process_time()
        found = [d.boxes for d in detector.detect(frames)]
        cpu_ms = 1000 * (time.process_time() - start) / len(frames)
        scored = score_detections(truth, found)
        rows[text] = scored["by_size"]
        print(f"{text:>10}: recall {scored['recall']:.3f}, precision "
              f"{scored['precision']:.3f}, {cpu_ms:.0f} CPU ms per frame")
    print("face px  " + "  ".join(f"{t:>10}" for t in rows))
    for size in truth["sizes"]:
        print(f"{size:7d}  " + "  ".join(f"{m / n:10.2f}" for m, n in
                                        (rows[t][size] for t in rows)))


if __name__ == "__main__":
    main()
