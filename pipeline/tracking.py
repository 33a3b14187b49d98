"""IoU tracking of faces across frames, and per-track smoothing of the six probabilities.

Faces are matched greedily, best IoU first, above a threshold. Each track keeps an EMA
(or a sliding window mean) of its probabilities, so that the shown label does not
flicker from frame to frame; the label itself changes only when another class leads
the shown one by ``hysteresis``. A face is *uncertain* when its smoothed top
probability is below ``uncertain_threshold`` (the weights' metadata, else
:data:`gimefive.labels.UNCERTAIN_THRESHOLD`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gimefive.detector import box_iou
from gimefive.labels import UNCERTAIN_THRESHOLD


def match_boxes(new: np.ndarray, old: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: pairs ``(new_index, old_index)``, best IoU first."""
    if len(new) == 0 or len(old) == 0:
        return []
    iou = box_iou(new, old)
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_new, used_old, pairs = set(), set(), []
    for r, c in zip(rows[order], cols[order], strict=True):
        if r not in used_new and c not in used_old:
            used_new.add(r)
            used_old.add(c)
            pairs.append((int(r), int(c)))
    return pairs


def match_centers(new: np.ndarray, old: np.ndarray, max_distance: float = 1.0
                  ) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by centre distance, in units of the boxes' mean side.

    Used across the gap between detections (``detect_every``), where a fast face may no
    longer overlap its old box enough for IoU matching.
    """
    if len(new) == 0 or len(old) == 0:
        return []
    c_new, c_old = (new[:, :2] + new[:, 2:]) / 2, (old[:, :2] + old[:, 2:]) / 2
    s_new = (new[:, 2:] - new[:, :2]).mean(axis=1)
    s_old = (old[:, 2:] - old[:, :2]).mean(axis=1)
    scale = np.maximum((s_new[:, None] + s_old[None, :]) / 2, 1e-6)
    dist = np.linalg.norm(c_new[:, None] - c_old[None], axis=2) / scale
    rows, cols = np.nonzero(dist <= max_distance)
    order = np.argsort(dist[rows, cols], kind="stable")
    used_new, used_old, pairs = set(), set(), []
    for r, c in zip(rows[order], cols[order], strict=True):
        if r not in used_new and c not in used_old:
            used_new.add(r)
            used_old.add(c)
            pairs.append((int(r), int(c)))
    return pairs


@dataclass(eq=False)
class Track:
    track_id: int
    box: np.ndarray
    last_index: int
    label: int = -1
    smoothed: np.ndarray | None = None
    history: deque = field(default_factory=deque)
    hits: int = 0


@dataclass
class TrackResult:
    track_ids: np.ndarray   # int64 [K]
    smoothed: np.ndarray    # float32 [K,6]
    labels: np.ndarray      # int64 [K]
    uncertain: np.ndarray   # bool [K]


class IoUTracker:
    """Tracks of one stream. Call :meth:`update` once per frame, in frame order."""

    def __init__(self, min_iou: float = 0.3, max_age: int = 15, smoothing: str = "ema",
                 alpha: float = 0.35, window: int = 8, hysteresis: float = 0.1,
                 uncertain_threshold: float = UNCERTAIN_THRESHOLD) -> None:
        if smoothing not in ("ema", "window"):
            raise ValueError(f"smoothing must be ema or window, got {smoothing!r}")
        self.min_iou, self.max_age = min_iou, max_age
        self.smoothing, self.alpha, self.window = smoothing, alpha, max(1, window)
        self.hysteresis = hysteresis
        self.uncertain_threshold = uncertain_threshold
        self.tracks: list[Track] = []
        self.next_id = 1

    def update(self, index: int, boxes: np.ndarray, probs: np.ndarray) -> TrackResult:
        """Assign ids to this frame's faces and return their smoothed state."""
        self.tracks = [t for t in self.tracks if index - t.last_index <= self.max_age]
        old = np.stack([t.box for t in self.tracks]) if self.tracks else np.zeros((0, 4))
        matched = dict(match_boxes(boxes, old, self.min_iou))
        k = len(boxes)
        result = TrackResult(np.zeros(k, np.int64), np.zeros((k, probs.shape[1] if k else 6),
                             np.float32), np.zeros(k, np.int64), np.zeros(k, bool))
        current = []
        for i in range(k):
            if i in matched:
                track = self.tracks[matched[i]]
            else:
                track = Track(self.next_id, boxes[i], index)
                self.next_id += 1
            track.box, track.last_index = np.asarray(boxes[i], np.float32), index
            self._smooth(track, np.asarray(probs[i], np.float32))
            current.append(track)
            result.track_ids[i] = track.track_id
            result.smoothed[i] = track.smoothed
            result.labels[i] = track.label
            result.uncertain[i] = track.smoothed[track.label] < self.uncertain_threshold
        seen = {id(t) for t in current}
        kept = [t for t in self.tracks if id(t) not in seen]
        self.tracks = kept + current
        return result

    def _smooth(self, track: Track, p: np.ndarray) -> None:
        track.hits += 1
        if self.smoothing == "window":
            track.history.append(p)
            while len(track.history) > self.window:
                track.history.popleft()
            track.smoothed = np.mean(track.history, axis=0).astype(np.float32)
        elif track.smoothed is None:
            track.smoothed = p.copy()
        else:
            track.smoothed = (self.alpha * p + (1 - self.alpha) * track.smoothed).astype(
                np.float32)
        best = int(np.argmax(track.smoothed))
        if track.label < 0 or track.smoothed[best] >= track.smoothed[track.label] + self.hysteresis:
            track.label = best
