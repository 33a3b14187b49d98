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

import io
import zipfile
from pathlib import Path

import click
import cv2
import numpy as np
from gimefive.train.data import load_split

from gimefive.dataset import parse_labels_csv
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
    """Write every face as PNG plus the labels CSV into ``out_dir``; returns the CSV path.

    A pack comes from another machine, so every name in it is checked (and every face
    decoded) before the first byte is written: a bad pack leaves nothing behind.
    """
    pack_path, out_dir = Path(pack_path), Path(out_dir)
    if not pack_path.is_file():
        raise DataError(f"pack not found: {pack_path}")
    z = _read_pack(pack_path)
    csv_name, csv_bytes = z["csv_name"], z["csv_bytes"]
    csv_path = _inside(out_dir, csv_name, pack_path, "CSV name")
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{pack_path}: its labels CSV is not UTF-8 text") from None
    rows = parse_labels_csv(io.StringIO(text, newline=""), f"{pack_path}: {csv_name}")
    paths = [_inside(out_dir, name, pack_path, "file name") for name, _ in rows]
    if csv_path in paths:
        raise DataError(f"{pack_path}: a face is named like its labels CSV {csv_name!r}")
    faces = _decode_faces(pack_path, z, len(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path.write_bytes(csv_bytes)
    for (name, _), path, face in zip(rows, paths, faces, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", face)
        if not ok:
            raise DataError(f"OpenCV could not PNG-encode {name}")
        buf.tofile(path)
    return csv_path


def _read_pack(pack_path: Path) -> dict:
    """The pack's arrays; anything that is not a version-1 pack is one clear error."""
    try:
        with np.load(pack_path, allow_pickle=False) as z:
            version = int(z["version"])
            if version != PACK_VERSION:
                raise DataError(f"{pack_path}: pack version {version}, expected "
                                f"{PACK_VERSION}")
            return {"jpeg": z["jpeg"], "offsets": z["offsets"], "size": int(z["size"]),
                    "csv_name": str(z["csv_name"]), "csv_bytes": z["csv_bytes"].tobytes()}
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{pack_path}: not a gimefive pack ({type(exc).__name__}: "
                        f"{str(exc)[:80]})") from None


def _inside(out_dir: Path, name: str, pack_path: Path, what: str) -> Path:
    """``out_dir / name``, refused when ``name`` is absolute or resolves outside
    ``out_dir`` (``..``, or a symlink already there): a pack must not write elsewhere."""
    root = out_dir.resolve()
    try:
        target = (root / name).resolve() if name and not Path(name).is_absolute() else None
    except (ValueError, OSError):  # an embedded NUL byte, a symlink loop
        target = None
    if target is None or target == root or not target.is_relative_to(root):
        raise DataError(f"{pack_path}: refusing {what} {name!r:.120}: absolute or outside "
                        f"the output folder {out_dir}")
    return out_dir / name


def _decode_faces(pack_path: Path, z: dict, count: int) -> np.ndarray:
    """The first ``count`` faces of the pack's mosaics, checked before anything is written."""
    jpeg, offsets, size = z["jpeg"], z["offsets"], z["size"]
    side = TILES * size
    if offsets.ndim != 1 or len(offsets) < 1 or np.any(np.diff(offsets) <= 0) or \
            offsets[0] < 0 or offsets[-1] > len(jpeg) or not 8 <= size <= 1024:
        raise DataError(f"{pack_path}: not a gimefive pack (inconsistent mosaic offsets "
                        f"or face size)")
    packed = (len(offsets) - 1) * TILES * TILES
    if count > packed:
        raise DataError(f"{pack_path}: its CSV lists {count} rows but {packed} faces "
                        f"are packed")
    mosaics = [cv2.imdecode(jpeg[a:b], cv2.IMREAD_GRAYSCALE)
               for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    if any(m is None or m.shape != (side, side) for m in mosaics):
        raise DataError(f"{pack_path}: a mosaic is not a {side}x{side} gray JPEG")
    return _faces(np.stack(mosaics), count, size)


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

