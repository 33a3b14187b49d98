"""``gimefive explain``: per-face scores CSV and Grad-CAM figures for still images.

Every image is read and checked before anything is written, so one bad path fails the
run with one line and no half-finished output. Images that are not already face crops
(larger than ``crop_max_side``) go through the RetinaFace detector; each face found is
explained on its own, and an image where none is found is explained whole (the CSV
says which).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS, UNCERTAIN
from gimefive.preprocess import preprocess_faces

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
CSV_FIELDS = ["image", "face", "source", "x1", "y1", "x2", "y2", "label", "uncertain",
              "confidence", *EMOTIONS]


@dataclass
class Face:
    image: Path
    index: int
    source: str          # "crop", "detected" or "whole image"
    box: tuple[int, int, int, int]
    crop: np.ndarray     # BGR uint8


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus image files (by suffix) inside named folders, sorted."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise GimefiveError(f"{p}: folder holds no image files "
                                    f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise GimefiveError(f"{p}: no such file or folder")
    if not paths:
        raise GimefiveError("no images given")
    return paths


def read_image(path: Path) -> np.ndarray:
    """BGR uint8, decoded by content (the suffix does not matter)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise GimefiveError(f"{path}: not an image OpenCV can decode")
    return img


def square_box(box: np.ndarray, scale: float, width: int, height: int) -> tuple[int, ...]:
    """A square around a detection, ``scale`` times its longer side, clipped to the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * scale / 2
    x1, y1 = max(0, int(round(cx - half))), max(0, int(round(cy - half)))
    x2, y2 = min(width, int(round(cx + half))), min(height, int(round(cy + half)))
    return x1, y1, x2, y2


def find_faces(images: dict[Path, np.ndarray], detect: str = "auto", crop_max_side: int = 128,
               crop_scale: float = 1.2, detector=None) -> list[Face]:
    """Faces to explain: crops as they are, detected faces, or whole images as a fallback."""
    faces: list[Face] = []
    for path, img in images.items():
        h, w = img.shape[:2]
        whole = Face(path, 0, "whole image", (0, 0, w, h), img)
        if detect == "never" or (detect == "auto" and max(h, w) <= crop_max_side):
            whole.source = "crop"
            faces.append(whole)
            continue
        if detector is None:
            from gimefive.detector import FaceDetector

            detector = FaceDetector()
        found = detector.detect([img])[0]
        if len(found) == 0:
            faces.append(whole)
            continue
        for k, box in enumerate(found.boxes):
            x1, y1, x2, y2 = square_box(box, crop_scale, w, h)
            faces.append(Face(path, k, "detected", (x1, y1, x2, y2), img[y1:y2, x1:x2]))
    return faces


def heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A feature-resolution CAM (0..1) upsampled to ``size`` (w, h), still 0..1."""
    return np.clip(cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_CUBIC), 0, 1)


def save_figure(path: Path, face: Face, probs: np.ndarray, cam: np.ndarray, label: str) -> None:
    """Original | heatmap | overlay, as in the paper's Fig. 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = cv2.cvtColor(face.crop, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    heat = heatmap(cam, (w, h))
    colored = (plt.get_cmap("jet")(heat)[:, :, :3] * 255).astype(np.uint8)
    overlay = (0.55 * rgb + 0.45 * colored).astype(np.uint8)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, img, title in zip(axes, (rgb, colored, overlay),
                              ("original", "Grad-CAM", "overlay"), strict=True):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    top = int(np.argmax(probs))
    fig.suptitle(f"{face.image.name} face {face.index}: {label} ({probs[top]:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_activations(path: Path, model, x: np.ndarray, per_layer: int = 8) -> None:
    """The paper's other view: the most active feature maps of each conv block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    layers = [f"conv{i}" for i in range(1, 6)]
    with torch.no_grad():
        _, kept = model.forward_with(torch.from_numpy(x[None]), keep=tuple(layers))
    fig, axes = plt.subplots(len(layers), per_layer, figsize=(per_layer * 1.2, len(layers) * 1.3))
    for row, name in enumerate(layers):
        bn = getattr(model, name.replace("conv", "bn"))
        with torch.no_grad():
            act = F.relu(bn(kept[name]))[0]
        order = act.mean(dim=(1, 2)).argsort(descending=True)[:per_layer]
        for col in range(per_layer):
            ax = axes[row, col]
            ax.imshow(act[order[col]].numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{name}\n{tuple(act.shape[1:])}", fontsize=7)
    fig.suptitle("most active feature maps per block (after BN + ReLU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def output_stem(face: Face, used: set[str]) -> str:
    stem = f"{face.image.stem}_face{face.index}"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def explain(inputs: Iterable[str | Path], out_dir: str | Path, backend, threshold: float,
            detect: str = "auto", activations_model=None, figures: bool = True,
            progress=None, crop_max_side: int = 128) -> dict:
    """Write ``scores.csv`` and the figures; returns a summary (images, faces, paths)."""
    paths = collect_images(inputs)
    images = {p: read_image(p) for p in paths}  # every input checked before any output
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GimefiveError(f"cannot create output folder {out} ({exc.strerror})") from None
    faces = find_faces(images, detect, crop_max_side)
    x = preprocess_faces([f.crop for f in faces])
    probs, cams = backend(x, cam=figures)
    used: set[str] = set()
    csv_path = out / "scores.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for i, face in enumerate(progress(faces) if progress else faces):
            top = int(np.argmax(probs[i]))
            uncertain = bool(probs[i, top] < threshold)
            label = UNCERTAIN if uncertain else EMOTIONS[top]
            writer.writerow([str(face.image), face.index, face.source, *face.box, label,
                             int(uncertain), f"{probs[i, top]:.4f}",
                             *(f"{p:.6f}" for p in probs[i])])
            stem = output_stem(face, used)
            if figures:
                save_figure(out / f"{stem}.png", face, probs[i], cams[i], label)
            if activations_model is not None:
                save_activations(out / f"{stem}_activations.png", activations_model, x[i])
    return {"images": len(paths), "faces": len(faces), "csv": str(csv_path),
            "detected": sum(f.source == "detected" for f in faces)}
