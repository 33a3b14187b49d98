"""Measure where RetinaFace puts its five landmarks inside the dataset's face crops.

The result is ``FACE_TEMPLATE`` in ``pipeline/crops.py``: the classify stage
fits it to each detected face's landmarks so that its crop frames the face as the
training crops did. Faces come from a *train* split (never test), each pasted at 64, 96
and 128 px with the blurred border the synthetic scenes use, in the middle of a plain
gray canvas twice its size; the landmarks of the best detection are expressed as
fractions of the crop side.

    python benchmarks/face_template.py [--split rafdb_train] [--faces 800]
"""

from __future__ import annotations

import argparse

import numpy as np
from gimefive.pipeline.bench.scenes import load_dataset_faces, padded_face

from gimefive.detector import FaceDetector

SIZES = (64, 96, 128)


def landmarks_in_crops(faces: list[tuple], size: int, detector: FaceDetector) -> np.ndarray:
    """``[K,5,2]`` landmarks of the faces found, as fractions of the crop side."""
    pad = size // 4
    canvases = []
    for image, _ in faces:
        canvas = np.full((2 * size, 2 * size, 3), 110, np.uint8)
        patch = padded_face(image, size, pad)
        at = size // 2 - pad
        canvas[at:at + patch.shape[0], at:at + patch.shape[1]] = patch
        canvases.append(canvas)
    found = [d.landmarks[0] for d in detector.detect(canvases) if len(d)]
    return (np.array(found, np.float32).reshape(-1, 5, 2) - size / 2) / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="rafdb_train")
    parser.add_argument("--faces", type=int, default=800)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    faces = load_dataset_faces(args.faces, args.split, seed=args.seed)
    detector = FaceDetector(max_side=640)
    points = np.concatenate([landmarks_in_crops(faces, s, detector) for s in SIZES])
    print(f"{args.split}: {len(points)} detections of {len(faces) * len(SIZES)} pastes")
    names = ("right eye", "left eye", "nose", "mouth right", "mouth left")
    for name, mean, std in zip(names, points.mean(0), points.std(0), strict=True):
        print(f"{name:12s} x {mean[0]:.4f} y {mean[1]:.4f}   spread {std[0]:.3f} {std[1]:.3f}")


if __name__ == "__main__":
    main()
