"""Face datasets: an image folder plus a ``filename,label`` CSV (no header).

Images are decoded by content (``cv2.imdecode`` on the file's bytes), so a PNG saved
under a ``.jpg`` name still loads. Every decoded face goes through
:func:`gimefive.preprocess.to_gray64` once and is kept as a uint8 64x64 array; the
arrays are cached on disk (keyed by the CSV's hash, the folder and the input size) so
later runs and later epochs never decode a JPEG again. Augmentation works on those
uint8 arrays, and :func:`gimefive.preprocess.normalize_gray` turns a batch into the
network input, so training and inference share one preprocessing path.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from gimefive.dataset import read_labels_csv
from gimefive.digest import file_sha256
from gimefive.errors import DataError
from gimefive.labels import NUM_CLASSES
from gimefive.preprocess import INPUT_SIZE, normalize_gray, to_gray64


def default_cache_dir() -> Path:
    """``$GIMEFIVE_CACHE``, else ``~/.cache/gimefive`` (read at call time)."""
    return Path(os.environ.get("GIMEFIVE_CACHE") or Path.home() / ".cache" / "gimefive")

_CACHE_VERSION = 1


def decode_face(path: Path, size: int = INPUT_SIZE) -> np.ndarray | None:
    """File bytes to a uint8 gray ``size`` x ``size`` face, or None if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return to_gray64(image, "bgr", size)


@dataclass
class FaceSplit:
    """Decoded faces of one CSV: uint8 gray [N,S,S], labels [N], file names, skips."""

    images: np.ndarray
    labels: np.ndarray
    filenames: list[str]
    csv_path: Path
    csv_sha256: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> FaceSplit:
        return FaceSplit(self.images[indices], self.labels[indices],
                         [self.filenames[i] for i in indices], self.csv_path, self.csv_sha256)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


def _cache_path(cache_dir: Path, csv_sha: str, data_dir: Path, size: int) -> Path:
    key = hashlib.sha256(f"{_CACHE_VERSION}|{csv_sha}|{data_dir.resolve()}|{size}".encode())
    return cache_dir / "decoded" / f"{key.hexdigest()[:24]}.npz"


def load_split(data_dir: str | Path, csv_path: str | Path, *, strict: bool = False,
               cache_dir: str | Path | None = "auto", size: int = INPUT_SIZE,
               progress: bool = False) -> FaceSplit:
    """Decode (or load from cache) every face named in ``csv_path`` under ``data_dir``.

    A missing or unreadable image is skipped and counted (``FaceSplit.skipped``), or
    raises :class:`DataError` naming it when ``strict``. ``cache_dir="auto"`` means
    :func:`default_cache_dir`; ``None`` disables the cache. The cache only stores
    successfully decoded faces and is keyed by the CSV's content, so editing the CSV or
    the folder path invalidates it.
    """
    data_dir, csv_path = Path(data_dir), Path(csv_path)
    if not data_dir.is_dir():
        raise DataError(f"image folder not found: {data_dir}")
    rows = read_labels_csv(csv_path)
    csv_sha = file_sha256(csv_path)
    if cache_dir == "auto":
        cache_dir = default_cache_dir()
    cache = _cache_path(Path(cache_dir), csv_sha, data_dir, size) if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            skipped = [str(s) for s in z["skipped"]]
            if not (strict and skipped):
                return FaceSplit(z["images"], z["labels"], [str(s) for s in z["filenames"]],
                                 csv_path, csv_sha, skipped)
    faces = _decode_all(data_dir, rows, progress)
    skipped = [name for (name, _), face in zip(rows, faces, strict=True) if face is None]
    if strict and skipped:
        raise DataError(f"missing or unreadable image: {data_dir / skipped[0]}"
                        f" ({len(skipped)} of {len(rows)} in {csv_path.name})")
    keep = [i for i, face in enumerate(faces) if face is not None]
    if not keep:
        raise DataError(f"no readable images: {len(rows)} rows of {csv_path} "
                        f"point into {data_dir}, none decodes")
    split = FaceSplit(np.stack([faces[i] for i in keep]),
                      np.array([rows[i][1] for i in keep], dtype=np.int64),
                      [rows[i][0] for i in keep], csv_path, csv_sha, skipped)
    if cache is not None:
        _write_cache(cache, split)
    return split


def _decode_all(data_dir: Path, rows: list[tuple[str, int]], progress: bool
                ) -> list[np.ndarray | None]:
    # OpenCV releases the GIL while decoding, so two threads use both cores.
    from tqdm import tqdm

    paths = [data_dir / name for name, _ in rows]
    with ThreadPoolExecutor(max_workers=2) as pool:
        it = pool.map(decode_face, paths, chunksize=64)
        return list(tqdm(it, total=len(paths), desc="decoding", unit="img",
                         disable=not progress, mininterval=2.0))


def _write_cache(cache: Path, split: FaceSplit) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, images=split.images, labels=split.labels,
             filenames=np.array(split.filenames), skipped=np.array(split.skipped, dtype=str))
    tmp.replace(cache)


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, val_indices) with ``fraction`` of every class held out."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) > 1:
            n = max(n, 1)
        val.append(idx[:n])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


@dataclass(frozen=True)
class Augment:
    """Random horizontal flip and a small affine jitter (shift, rotation, scale)."""

    flip: bool = True
    max_shift: float = 0.0  # pixels
    max_rotate: float = 0.0  # degrees
    max_scale: float = 0.0  # fraction, e.g. 0.1 -> 0.9..1.1

    @property
    def active(self) -> bool:
        return self.flip or self.max_shift > 0 or self.max_rotate > 0 or self.max_scale > 0

    def __call__(self, gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.flip and rng.random() < 0.5:
            gray = gray[:, ::-1]
        if self.max_shift > 0 or self.max_rotate > 0 or self.max_scale > 0:
            h, w = gray.shape
            angle = rng.uniform(-self.max_rotate, self.max_rotate)
            scale = 1.0 + rng.uniform(-self.max_scale, self.max_scale)
            matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
            matrix[:, 2] += rng.uniform(-self.max_shift, self.max_shift, size=2)
            gray = cv2.warpAffine(np.ascontiguousarray(gray), matrix, (w, h),
                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return np.ascontiguousarray(gray)


class FaceDataset(torch.utils.data.Dataset):
    """Items are (uint8 gray face, label); augmentation seeded by (seed, epoch, index).

    Seeding per item makes an epoch's augmentations identical whatever the number of
    loader workers and after a resume.
    """

    def __init__(self, split: FaceSplit, augment: Augment | None = None, seed: int = 0) -> None:
        self.split = split
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        gray = self.split.images[index]
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            gray = self.augment(gray, rng)
        return gray, int(self.split.labels[index])


def collate_faces(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 faces and normalise them exactly as inference does."""
    grays = np.stack([g for g, _ in items])
    labels = torch.tensor([y for _, y in items], dtype=torch.int64)
    return torch.from_numpy(normalize_gray(grays)), labels
