"""Pack a training split into one small file, and unpack it elsewhere (e.g. on a GPU box).

The aggregate train split is 55,072 JPEG files (about 108 MB of colour JPEGs). The
network only ever sees each face as a 64x64 gray uint8 image, so a pack stores exactly
those images, tiled 16 x 16 into 1024 x 1024 gray mosaics and JPEG-compressed: tiles
sit on the 8x8 DCT grid (64 is a multiple of 8), so faces never bleed into each other,
and one JPEG header serves 256 faces. On the 55,072-face aggregate train split, quality
88 gave 57.8 MB with a mean absolute error of 1.21 gray levels (``pack`` prints both).

``unpack`` writes every face back as a lossless PNG under its original file name, next
to a byte-identical copy of the labels CSV, so ``gimefive train --data-dir`` reads it
like the original folder and the checkpoint records the same CSV hash.

    gimefive pack-data --data-dir DIR --csv CSV -o train.pack.npz
    gimefive unpack-data train.pack.npz -o DIR   # prints the CSV path
"""

from __future__ import annotations

from pathlib import Path

import click
import cv2
import numpy as np
from gimefive.train.data import load_split, read_labels_csv

from gimefive.errors import DataError
from gimefive.preprocess import INPUT_SIZE

TILES = 16  # faces per mosaic side
PACK_VERSION = 1


def _mosaics(images: np.ndarray) -> np.ndarray:
    """[N,S,S] faces to [M, 16*S, 16*S] mosaics, the last one padded with black."""
    n, s, _ = images.shape
    per = TILES * TILES
    padded = np.zeros((-(-n // per) * per, s, s), np.uint8)
    padded[:n] = images
    m = len(padded) // per
    return padded.reshape(m, TILES, TILES, s, s).transpose(0, 1, 3, 2, 4).reshape(
        m, TILES * s, TILES * s)


def _faces(mosaics: np.ndarray, n: int, s: int) -> np.ndarray:
    m = len(mosaics)
    faces = mosaics.reshape(m, TILES, s, TILES, s).transpose(0, 1, 3, 2, 4)
    return faces.reshape(m * TILES * TILES, s, s)[:n]


def pack(data_dir: str | Path, csv_path: str | Path, out: str | Path,
         quality: int = 92) -> dict:
    """Write the pack; returns its summary (faces, bytes, mean absolute pixel error)."""
    if not 50 <= quality <= 100:
        raise DataError(f"JPEG quality must be 50..100, got {quality}")
    # strict: every CSV row is packed, in CSV order, so unpack needs no file-name list
    split = load_split(data_dir, csv_path, strict=True, progress=True)
    mosaics = _mosaics(split.images)
    encoded = []
    for mosaic in mosaics:
        ok, buf = cv2.imencode(".jpg", mosaic, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                                cv2.IMWRITE_JPEG_OPTIMIZE, 1,
                                                cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
        if not ok:
            raise DataError("OpenCV could not JPEG-encode a mosaic")
        encoded.append(buf.ravel())
    decoded = np.stack([cv2.imdecode(b, cv2.IMREAD_GRAYSCALE) for b in encoded])
    error = float(np.abs(_faces(decoded, len(split), INPUT_SIZE).astype(np.int16)
                         - split.images).mean())
    offsets = np.cumsum([0] + [len(b) for b in encoded]).astype(np.int64)
    out = Path(out)
    with open(out, "wb") as f:  # np.savez on a file object: no ".npz" appended to the name
        np.savez(f, version=np.int64(PACK_VERSION), jpeg=np.concatenate(encoded),
                 offsets=offsets, csv_name=np.array(Path(csv_path).name),
                 csv_bytes=np.frombuffer(Path(csv_path).read_bytes(), np.uint8),
                 size=np.int64(INPUT_SIZE), quality=np.int64(quality))
    return {"faces": len(split), "mosaics": len(mosaics), "bytes": out.stat().st_size,
            "mean_abs_error": error, "quality": quality}


def unpack(pack_path: str | Path, out_dir: str | Path) -> Path:
    """Write every face as PNG plus the labels CSV into ``out_dir``; returns the CSV path."""
    pack_path, out_dir = Path(pack_path), Path(out_dir)
    if not pack_path.is_file():
        raise DataError(f"pack not found: {pack_path}")
    with np.load(pack_path, allow_pickle=False) as z:
        if int(z["version"]) != PACK_VERSION:
            raise DataError(f"{pack_path}: pack version {int(z['version'])}, expected "
                            f"{PACK_VERSION}")
        jpeg, offsets, size = z["jpeg"], z["offsets"], int(z["size"])
        csv_name, csv_bytes = str(z["csv_name"]), z["csv_bytes"].tobytes()
    mosaics = np.stack([cv2.imdecode(jpeg[a:b], cv2.IMREAD_GRAYSCALE)
                        for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / csv_name
    csv_path.write_bytes(csv_bytes)
    filenames = [name for name, _ in read_labels_csv(csv_path)]  # packed in CSV order
    for name, face in zip(filenames, _faces(mosaics, len(filenames), size), strict=True):
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", face)
        if not ok:
            raise DataError(f"OpenCV could not PNG-encode {name}")
        buf.tofile(path)
    return csv_path


@click.command("pack-data", context_settings={"show_default": True})
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path))
@click.option("--quality", default=92, type=click.IntRange(50, 100), help="JPEG quality.")
def pack_command(data_dir: Path, csv_path: Path, out: Path, quality: int) -> None:
    """Pack the faces of CSV (as the network sees them: 64x64 gray) into one file."""
    summary = pack(data_dir, csv_path, out, quality)
    click.echo(f"packed {summary['faces']} faces in {summary['mosaics']} mosaics: "
               f"{summary['bytes'] / 1e6:.1f} MB, mean abs error "
               f"{summary['mean_abs_error']:.3f} gray levels (quality {quality}) -> {out}")


@click.command("unpack-data")
@click.argument("pack_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path))
def unpack_command(pack_path: Path, out_dir: Path) -> None:
    """Write a pack's faces (PNG) and labels CSV into a folder; prints the CSV path."""
    click.echo(unpack(pack_path, out_dir))

