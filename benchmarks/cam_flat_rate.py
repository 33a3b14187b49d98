"""How often Grad-CAM (as the paper defines it) is flat: all zeros after the ReLU.

    python benchmarks/cam_flat_rate.py [--faces 128] [--weights W]

Uses the first N faces of RAF-DB test in a fixed random order
(``gimefive.pipeline.bench.scenes.load_dataset_faces``), the torch backend's autograd Grad-CAM for
the predicted class at conv5 and at conv4.
"""

from __future__ import annotations

import argparse

import numpy as np
from gimefive.pipeline.bench.scenes import load_dataset_faces

from gimefive.backends import create_backend
from gimefive.preprocess import preprocess_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=128)
    parser.add_argument("--weights", default=None, help="default: the shipped weights")
    args = parser.parse_args()
    faces = load_dataset_faces(args.faces, "rafdb_test", seed=0)
    x = preprocess_faces([f[0] for f in faces])
    for layer in ("conv5", "conv4"):
        with create_backend("torch", weights=args.weights, cam_layer=layer) as backend:
            _, cam = backend(x, cam=True)
        flat = int(np.sum(cam.reshape(len(cam), -1).max(axis=1) <= 0))
        print(f"{layer}: {flat} of {len(cam)} maps flat ({flat / len(cam):.1%})")


if __name__ == "__main__":
    main()
