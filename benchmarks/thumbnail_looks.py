"""How well a grey thumbnail tells "the same face, box jittered" from "another face in the
same place", on the real-faces bench scene (the numbers behind ``classify_look`` and
``THUMB_SIDE`` in pipeline/schedule.py).

    python benchmarks/thumbnail_looks.py [--data ../shared/data/fer-gimefive]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np
from gimefive.pipeline.bench.scenes import load_dataset_faces, make_scene_video
from gimefive.pipeline.schedule import thumbnails

JITTER = 0.04  # each box side moved by a normal of this share of its length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fer-gimefive")
    args = parser.parse_args()
    faces = load_dataset_faces(480, "rafdb_test", root=Path(args.data), seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.mp4"
        truth = make_scene_video(path, faces, 640, 360, n_frames=160, fps=25, seed=0,
                                 faces_per_frame=6)
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    rng = np.random.default_rng(0)
    print(f"{'side':>4}  same face, box jittered {JITTER:.0%}: p1 p5 p50   "
          "another face: p50 p95 p99")
    for side in (8, 12, 16):
        same, other = [], []
        for k in range(1, len(frames)):
            before, now = truth["frames"][k - 1], truth["frames"][k]
            for slot in range(len(now["boxes"])):
                box = np.array(before["boxes"][slot], np.float64)
                jittered = box + rng.normal(0, JITTER * (box[2] - box[0]), 4)
                a = thumbnails(frames[k - 1], np.array([box, jittered], np.float32), side)
                b = thumbnails(frames[k], np.array([now["boxes"][slot]], np.float32), side)
                same.append(float(a[0] @ a[1]))
                if before["ids"][slot] != now["ids"][slot]:
                    other.append(float(a[0] @ b[0]))
        s, o = np.percentile(same, [1, 5, 50]), np.percentile(other, [50, 95, 99])
        print(f"{side:>4}  {s[0]:.3f} {s[1]:.3f} {s[2]:.3f}{'':>24}{o[0]:.3f} {o[1]:.3f} "
              f"{o[2]:.3f}  ({len(same)} / {len(other)} pairs)")


if __name__ == "__main__":
    main()
