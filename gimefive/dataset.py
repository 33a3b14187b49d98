"""Where the FER dataset is, its named splits, and the one reader of its label CSVs.

The data lives outside the repository: ``$GIMEFIVE_DATA``, else ``../shared/data/
fer-gimefive`` beside the checkout. Export verification, INT8 calibration, the bench's
scenes, training and the tests all find it here, so they agree on which folder counts
and say the same thing when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from gimefive.errors import DataError
from gimefive.labels import NUM_CLASSES

#: an environment variable naming the dataset folder; it wins over the checkout's sibling
DATA_ENV = "GIMEFIVE_DATA"
#: the dataset beside the checkout (gimefive/dataset.py -> checkout -> its parent)
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer-gimefive"
#: what to tell a user whose machine has no dataset
WHERE = f"set {DATA_ENV} or place ../shared/data/fer-gimefive beside the checkout"

#: split name -> (labels CSV relative to the dataset root, image folder)
SPLITS: dict[str, tuple[str, str]] = {
    "rafdb_test": ("splits/rafdb_test.csv", "test"),
    "fer2013_test": ("splits/fer2013_test.csv", "test"),
    "test": ("test_labels.csv", "test"),
    "rafdb_train": ("splits/rafdb_train.csv", "train"),
    "fer2013_train": ("splits/fer2013_train.csv", "train"),
    "train": ("train_labels.csv", "train"),
}


def is_dataset(root: Path) -> bool:
    """Whether ``root`` looks like fer-gimefive (both label CSVs and the splits folder)."""
    return ((root / "splits").is_dir() and (root / "test_labels.csv").is_file()
            and (root / "train_labels.csv").is_file())


def find_dataset() -> Path | None:
    """The dataset folder (``$GIMEFIVE_DATA``, else beside the checkout), None if absent."""
    env = os.environ.get(DATA_ENV)
    for root in ([Path(env)] if env else []) + [CHECKOUT_DATA]:
        if is_dataset(root):
            return root
    return None


def require_dataset(purpose: str) -> Path:
    """:func:`find_dataset`, or a :class:`DataError` saying what needed it and how to fix."""
    root = find_dataset()
    if root is None:
        raise DataError(f"{purpose} needs the FER dataset, which was not found ({WHERE})")
    return root


def read_labels_csv(csv_path: str | Path) -> list[tuple[str, int]]:
    """Rows ``filename,label``; a bad row is an error naming the file and row number."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return parse_labels_csv(f, csv_path)


def parse_labels_csv(lines: Iterable[str], csv_path: str | Path) -> list[tuple[str, int]]:
    """The rows of :func:`read_labels_csv` from lines already read (e.g. a pack's CSV bytes,
    checked before anything is written); ``csv_path`` only names the CSV in errors."""
    rows: list[tuple[str, int]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, label_text = line.rpartition(",")
        name = name.strip().strip('"')
        if not sep or not name:
            raise DataError(f"{csv_path} row {number}: expected 'filename,label', got {line!r}")
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{csv_path} row {number} ({name}): label {label_text.strip()!r} "
                            f"is not an integer 0..{NUM_CLASSES - 1}") from None
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{csv_path} row {number} ({name}): label {label} is outside "
                            f"0..{NUM_CLASSES - 1}")
        rows.append((name, label))
    if not rows:
        raise DataError(f"labels CSV is empty: {csv_path}")
    return rows


def split_rows(split: str, root: Path | None = None) -> tuple[Path, list[tuple[str, int]]]:
    """``(image folder, [(file name, label), ...])`` of a named split of :data:`SPLITS`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root = Path(root) if root is not None else require_dataset(f"the {split} split")
    csv_rel, folder = SPLITS[split]
    return root / folder, read_labels_csv(root / csv_rel)


def read_faces(folder: Path, names: Iterable[str]) -> list[np.ndarray]:
    """The named face crops of ``folder`` as BGR uint8 images."""
    faces = []
    for name in names:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"unreadable image: {folder / name}")
        faces.append(image)
    return faces
