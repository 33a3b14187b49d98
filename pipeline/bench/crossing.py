"""A generated scene for identity tracking: faces that cross, hide and leave the frame.

:func:`make_crossing_scene_video` writes a clip (640x360, 25 fps, 8 s by default) of five
real faces, 48..110 px, on hand-laid paths: two pairs cross each other (the later face
pasted over the earlier one, so one is hidden for part of a second), one passes behind a
pillar drawn over the scene, and one walks out of the frame and comes back about a
second later. Its ground truth has the same layout as
:func:`gimefive.pipeline.bench.scenes.make_scene_video`'s; a face counts as shown in a
frame only when at least half of its box is visible (inside the frame, not covered).

:func:`score_identities` measures what a tracker made of it from the pipeline's JSON
lines: identity switches, fragmentations and distinct track ids per true face.
``benchmarks/track_switches.py`` prints them with re-linking off and on.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from gimefive.pipeline.bench.scenes import (
    FaceItem,
    _as_bgr,
    _open_video_stream,
    make_background,
    padded_face,
)
from gimefive.pipeline.tracking import match_boxes

from gimefive.errors import GimefiveError

#: per face (paste order = list order, later on top): side at 360p, and waypoints
#: (time s, centre x, centre y) in 640x360 coordinates, linear in between
PATHS: tuple[tuple[int, tuple[tuple[float, float, float], ...]], ...] = (
    (110, ((0, 90, 120), (8, 550, 130))),                       # crosses the next one at 4 s
    (90, ((0, 560, 160), (8, 80, 140))),
    (75, ((0, 420, 280), (5, 100, 290), (8, 330, 285))),        # crosses the next twice
    (60, ((0, 120, 295), (5, 440, 280), (8, 150, 295))),
    (48, ((0, 520, 55), (2, 700, 55), (3.33, 520, 60), (8, 430, 70))),  # leaves ~1.1 s
)
#: a pillar drawn over the faces, (x1, y1, x2, y2) at 640x360: the lower pair passes it
PILLAR = (196, 200, 236, 360)
#: least visible share of a face's box for it to count as shown
MIN_VISIBLE = 0.5


def _position(waypoints, t: float) -> tuple[float, float]:
    times = [w[0] for w in waypoints]
    x = float(np.interp(t, times, [w[1] for w in waypoints]))
    y = float(np.interp(t, times, [w[2] for w in waypoints]))
    return x, y


def _paste(frame: np.ndarray, cover: np.ndarray, item: np.ndarray, x1: int, y1: int,
           layer: int) -> None:
    """Paste ``item`` with its top-left at (x1, y1), clipped to the frame; mark ``cover``."""
    h, w = frame.shape[:2]
    ih, iw = item.shape[:2]
    fx1, fy1, fx2, fy2 = max(0, x1), max(0, y1), min(w, x1 + iw), min(h, y1 + ih)
    if fx1 >= fx2 or fy1 >= fy2:
        return
    frame[fy1:fy2, fx1:fx2] = item[fy1 - y1:fy2 - y1, fx1 - x1:fx2 - x1]
    cover[fy1:fy2, fx1:fx2] = layer


def _frames(crops, labels, width, height, fps, n_frames, pad, background):
    """Yield (BGR frame, truth of the frame)."""
    sx, sy = width / 640, height / 360
    items = []
    for k, (side, _) in enumerate(PATHS):
        size = max(16, int(round(side * sy)))
        items.append((size, int(round(size * pad)), padded_face(crops[k], size, int(round(
            size * pad)))))
    px1, py1, px2, py2 = (int(round(v * s)) for v, s in zip(PILLAR, (sx, sy, sx, sy),
                                                              strict=True))
    for i in range(n_frames):
        t = i / fps
        frame, cover = background.copy(), np.full((height, width), -1, np.int16)
        boxes = []
        for k, ((_, waypoints), (size, p, item)) in enumerate(zip(PATHS, items, strict=True)):
            cx, cy = _position(waypoints, t)
            x1, y1 = int(round(cx * sx - size / 2)), int(round(cy * sy - size / 2))
            _paste(frame, cover, item, x1 - p, y1 - p, k)
            boxes.append((x1, y1, x1 + size, y1 + size))
        frame[py1:py2, px1:px2] = (70, 90, 110)
        cover[py1:py2, px1:px2] = len(PATHS)
        shown, ids, labs = [], [], []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            area = (x2 - x1) * (y2 - y1)
            seen = cover[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] == k
            if seen.sum() >= MIN_VISIBLE * area:
                shown.append([max(0, x1), max(0, y1), min(width, x2), min(height, y2)])
                ids.append(k)
                labs.append(labels[k])
        yield frame, {"index": i, "pts": i, "time_s": round(t, 6), "boxes": shown,
                      "labels": labs, "ids": ids}


def make_crossing_scene_video(path: str | Path, faces: Sequence[FaceItem], width: int = 640,
                              height: int = 360, fps: int = 25, seconds: float = 8.0,
                              seed: int = 0, pad: float = 0.25) -> dict:
    """Write the crossing scene with the first five ``faces``; return its ground truth.

    ``faces``: ``(BGR uint8 image, label or None[, name])`` as from
    :func:`gimefive.pipeline.bench.scenes.default_faces`. Truth: the scene, ``faces``
    (id, label, name) and per frame the boxes, labels and ids of the faces shown.
    """
    import av

    path = Path(path)
    if not path.parent.is_dir():
        raise GimefiveError(f"output folder does not exist: {path.parent}")
    if len(faces) < len(PATHS):
        raise GimefiveError(f"the crossing scene needs {len(PATHS)} faces, got {len(faces)}")
    if width < 64 or height < 64 or fps < 1 or seconds <= 0:
        raise GimefiveError(f"need at least 64x64, fps >= 1 and seconds > 0, got "
                            f"{width}x{height}, {fps}, {seconds}")
    crops = [_as_bgr(f[0], i) for i, f in enumerate(faces[:len(PATHS)])]
    labels = [None if f[1] is None else int(f[1]) for f in faces[:len(PATHS)]]
    names = [str(f[2]) if len(f) > 2 else f"face{i}" for i, f in enumerate(faces[:len(PATHS)])]
    n_frames = max(1, int(round(seconds * fps)))
    background = make_background(width, height, np.random.default_rng(seed))
    truth_frames = []
    with av.open(str(path), "w") as container:
        stream, codec = _open_video_stream(container, width, height, fps)
        for frame, truth in _frames(crops, labels, width, height, fps, n_frames, pad,
                                    background):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = truth["pts"], Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
            truth_frames.append(truth)
        for packet in stream.encode():
            container.mux(packet)
    return {"width": width, "height": height, "fps": fps, "n_frames": n_frames, "seed": seed,
            "pad": pad, "codec": codec, "path": str(path),
            "faces": [{"id": k, "label": labels[k], "name": names[k]}
                      for k in range(len(PATHS))],
            "frames": truth_frames}


def score_identities(truth: dict, records: Sequence[dict], iou_threshold: float = 0.5) -> dict:
    """Identity switches and fragmentations of the tracks in ``records`` (JSON lines).

    Per true face, each frame it is shown is matched (IoU >= ``iou_threshold``, greedy,
    one to one) to a reported face. A *switch*: the face's matched track id differs from
    the one it was last matched to. A *fragmentation*: the face is matched again after
    frames where it was shown but not matched. ``ids_per_face``: distinct track ids each
    true face was matched to (1 is perfect).
    """
    frames = truth["frames"]
    if len(records) != len(frames):
        raise GimefiveError(f"expected {len(frames)} JSON records, got {len(records)}")
    last: dict[int, int] = {}
    gap: dict[int, bool] = {}
    ids: dict[int, set] = {}
    switches = fragments = matched = shown = 0
    for gt, record in zip(frames, records, strict=True):
        found = np.array([f["box"] for f in record["faces"]], np.float64).reshape(-1, 4)
        pairs = dict(match_boxes(np.asarray(gt["boxes"], np.float64).reshape(-1, 4), found,
                                 iou_threshold))
        for g, face in enumerate(gt["ids"]):
            shown += 1
            if g not in pairs:
                gap[face] = face in last
                continue
            matched += 1
            track = int(record["faces"][pairs[g]]["track_id"])
            switches += face in last and last[face] != track
            fragments += gap.get(face, False)
            last[face], gap[face] = track, False
            ids.setdefault(face, set()).add(track)
    per_face = {face: len(v) for face, v in sorted(ids.items())}
    return {"faces": len(truth["faces"]), "shown": shown, "matched": matched,
            "switches": switches, "fragmentations": fragments, "ids_per_face": per_face,
            "track_ids": len(set().union(*ids.values())) if ids else 0}
