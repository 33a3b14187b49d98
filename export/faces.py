"""Real faces for export verification, INT8 calibration and accuracy checks.

The FER data is found by :func:`gimefive.dataset.find_dataset` (``$GIMEFIVE_DATA``, else
beside the checkout); when it is absent, verification falls back to the
astronaut photo that scikit-image ships plus seeded synthetic crops, so export still
verifies itself everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gimefive.dataset import find_dataset, read_faces, require_dataset, split_rows
from gimefive.errors import DataError
from gimefive.preprocess import preprocess_faces


@dataclass
class FaceSet:
    """Preprocessed faces ``x [N,3,64,64]``, labels (-1 when unknown) and where they came from."""

    x: np.ndarray
    labels: np.ndarray
    source: str


def load_split(split: str, limit: int | None = None, seed: int = 0,
               root: Path | None = None) -> FaceSet:
    """Faces of ``splits/<split>.csv`` (e.g. ``rafdb_test``), a seeded subset when ``limit``."""
    folder, rows = split_rows(split, root)
    if limit is not None and limit < len(rows):
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    crops = read_faces(folder, [name for name, _ in rows])
    return FaceSet(preprocess_faces(crops), np.array([label for _, label in rows], np.int64),
                   f"{split}.csv ({len(rows)})")


def fallback_faces(n: int, seed: int = 0) -> FaceSet:
    """The astronaut's face (plus shifted/scaled crops of it) and seeded noise crops.

    scikit-image (which ships the photo) is a dev dependency; without it, noise only.
    """
    try:
        from skimage import data

        photo = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    except ImportError:
        photo = None
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        if i % 2 == 0 and photo is not None:  # the face sits around x 150..260, y 60..190
            d = int(rng.integers(-12, 13))
            s = int(rng.integers(100, 140))
            crops.append(photo[70 + d:70 + d + s, 150 + d:150 + d + s])
        else:
            crops.append(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    what = "astronaut + synthetic" if photo is not None else "synthetic"
    return FaceSet(preprocess_faces(crops), np.full(n, -1, np.int64), f"{what} ({n})")


def verification_faces(n: int = 64, seed: int = 0) -> FaceSet:
    """Real RAF-DB test faces when the data is here, else :func:`fallback_faces`."""
    if find_dataset() is not None:
        try:
            return load_split("rafdb_test", limit=n, seed=seed)
        except DataError:
            pass
    return fallback_faces(n, seed)


def calibration_faces(n: int = 512, seed: int = 0) -> FaceSet:
    """Training-set face crops for INT8 calibration (never test faces)."""
    root = require_dataset("INT8 calibration")
    return load_split("rafdb_train", limit=n, seed=seed, root=root)
