"""Real faces for export verification, INT8 calibration and accuracy checks.

The FER data lives outside the repository (``../shared/data/fer-gimefive`` beside the
checkout, or ``$GIMEFIVE_DATA``); when it is absent, verification falls back to the
astronaut photo that scikit-image ships plus seeded synthetic crops, so export still
verifies itself everywhere.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gimefive.errors import DataError
from gimefive.preprocess import preprocess_faces

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """The fer-gimefive folder, or None when this machine does not have it."""
    env = os.environ.get("GIMEFIVE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "fer-gimefive")
    for root in candidates:
        if (root / "splits").is_dir():
            return root
    return None


@dataclass
class FaceSet:
    """Preprocessed faces ``x [N,3,64,64]``, labels (-1 when unknown) and where they came from."""

    x: np.ndarray
    labels: np.ndarray
    source: str


def read_split(csv_path: Path) -> list[tuple[str, int]]:
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="") as f:
        return [(row[0], int(row[1])) for row in csv.reader(f) if row and row[1].strip().isdigit()]


def load_split(split: str, limit: int | None = None, seed: int = 0,
               root: Path | None = None) -> FaceSet:
    """Faces of ``splits/<split>.csv`` (e.g. ``rafdb_test``), a seeded subset when ``limit``."""
    root = root or data_root()
    if root is None:
        raise DataError("FER data not found (set GIMEFIVE_DATA or place ../shared/data beside "
                        "the checkout)")
    rows = read_split(root / "splits" / f"{split}.csv")
    folder = root / ("test" if split.endswith("test") else "train")
    if limit is not None and limit < len(rows):
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    crops, labels = [], []
    for name, label in rows:
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"unreadable image {folder / name}")
        crops.append(img)
        labels.append(label)
    return FaceSet(preprocess_faces(crops), np.array(labels, np.int64),
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
    if data_root() is not None:
        try:
            return load_split("rafdb_test", limit=n, seed=seed)
        except DataError:
            pass
    return fallback_faces(n, seed)


def calibration_faces(n: int = 512, seed: int = 0) -> FaceSet:
    """Training-set face crops for INT8 calibration (never test faces)."""
    root = data_root()
    if root is None:
        raise DataError("INT8 calibration needs training face crops: FER data not found "
                        "(set GIMEFIVE_DATA or place ../shared/data beside the checkout)")
    return load_split("rafdb_train", limit=n, seed=seed, root=root)
