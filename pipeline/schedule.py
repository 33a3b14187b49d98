"""Per-track classification: which faces the classifier sees on a frame, and what the
others show (issue 13).

A face's emotion does not change in 40 ms and the tracker already knows which face is
which, so the classify stage measures a face only when its track needs it:

* a new track;
* a track whose box moved (centre) or changed size by more than ``move`` of its side
  since it was last measured;
* a track whose last result is ``every`` frames old (the first re-measurement of a new
  track comes after 1..``every`` frames, by its id: tracks that appear together are
  re-measured on different frames, so the work spreads evenly);
* a track whose face looks different from when it was last measured (an 8x8 grey
  thumbnail, :func:`thumbnails`, correlates below ``look``): another expression, a turn
  of the head, someone else stepping into the same place;
* a contested track (its two best classes within ``margin``, or its top class below
  the uncertain threshold): re-measured twice as often.

Grad-CAM is computed only on frames where the face is measured, at most every
``cam_every`` frames per track. A face not measured carries its track's last
probabilities and Grad-CAM map (the map is placed on the face's current box).
Smoothing and the stable label's hysteresis work on measured values only: each frame
adds the track's last measurement (repeated between measurements, so the smoothing's
time constant stays in frames, as with every face classified on every frame).

Decisions are a function of the input and the measured results alone, never of timing,
so a file gives the same JSON on every run: where a decision depends on a result still
in the classifier's batch, :meth:`StreamSchedule.needs_results` asks for it first.
``scale`` and ``cam_scale`` (a live run that falls behind, see
:mod:`gimefive.pipeline.degrade`) multiply the classify and Grad-CAM intervals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

#: classification state kept for at most this many tracks per stream (the tracker keeps
#: 256; ids arrive over the wire, so the bound does not rely on the sender)
MAX_STATES = 1024
#: side of the grey thumbnail that tells whether a face still looks the same
THUMB_SIDE = 8


@dataclass
class ScheduleSettings:
    every: int = 5             # re-measure a track at least every N frames
    move: float = 0.3          # ... or once it moved / resized by this share of its side
    look: float = 0.8          # ... or once its thumbnail correlates below this (0: off)
    margin: float = 0.15       # contested: the two best classes closer than this
    cam: bool = True
    cam_every: int = 1         # Grad-CAM at most every N frames per track
    uncertain_threshold: float = 0.5
    smoothing: str = "ema"     # ema or window, over measured values
    alpha: float = 0.35
    window: int = 8
    hysteresis: float = 0.1
    keep_frames: int = 60      # a track unseen this long is forgotten


@dataclass(eq=False)
class TrackState:
    """What the classify stage knows of one track."""

    first: int                       # frame of its first measurement
    seen: int                        # last frame it was in
    measured: int                    # frame of its last measurement
    box: np.ndarray                  # its box then
    look: np.ndarray | None = None   # its thumbnail then
    contested: bool | None = None    # of the last measurement; None: still being measured
    probs: np.ndarray | None = None  # the last measured probabilities
    smoothed: np.ndarray | None = None
    history: deque = field(default_factory=deque)
    label: int = -1
    cam: np.ndarray | None = None
    cam_from: int = -1


@dataclass
class FacePlan:
    """One frame's decisions: which faces are measured, and which with Grad-CAM."""

    measure: np.ndarray  # bool [K]
    cam: np.ndarray      # bool [K]
    measured_at: np.ndarray  # int64 [K]: the frame whose result each face shows
    cam_at: np.ndarray       # int64 [K]: the frame its Grad-CAM map is from (-1: none)


@dataclass
class FaceResults:
    probs: np.ndarray       # float32 [K,6], measured now or carried
    smoothed: np.ndarray    # float32 [K,6]
    labels: np.ndarray      # int64 [K]
    uncertain: np.ndarray   # bool [K]
    result_age: np.ndarray  # int64 [K]
    cam: np.ndarray | None  # float32 [K,h,w], None when Grad-CAM is off
    cam_from: np.ndarray    # int64 [K]


def _centre_and_side(box: np.ndarray) -> tuple[np.ndarray, float]:
    box = np.asarray(box, np.float64)
    return (box[:2] + box[2:]) / 2, max(float((box[2:] - box[:2]).mean()), 1e-6)


def moved(old: np.ndarray, new: np.ndarray, share: float) -> bool:
    """True when ``new`` is more than ``share`` of the old side away from ``old``, or its
    side differs by more than that share."""
    (c_old, s_old), (c_new, s_new) = _centre_and_side(old), _centre_and_side(new)
    return (float(np.linalg.norm(c_new - c_old)) > share * s_old
            or max(s_new, s_old) / min(s_new, s_old) > 1 + share)


def thumbnails(image: np.ndarray, boxes: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Each face's grey ``THUMB_SIDE``-square thumbnail, zero mean and unit length: the dot
    product of two is their correlation. Measured on the real-faces bench scene (480 RAF-DB
    faces, 6 a frame; ``python benchmarks/thumbnail_looks.py``): the same face with each box
    side moved by a normal 4% of its length >= 0.79 in 95% (median 0.95); another face in
    the same place <= 0.68 in 95% (median 0.21). 8 px beat 12 and 16 px on both counts.
    A box outside the image or a flat patch gives zeros (it never looks new)."""
    out = np.zeros((len(boxes), side * side), np.float32)
    h, w = image.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        c1, r1, c2, r2 = int(max(0, x1)), int(max(0, y1)), int(min(w, x2)), int(min(h, y2))
        if c2 - c1 < 2 or r2 - r1 < 2:
            continue
        grey = cv2.cvtColor(np.ascontiguousarray(image[r1:r2, c1:c2]), cv2.COLOR_BGR2GRAY)
        t = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA)
        t = t.astype(np.float32).ravel()
        t -= t.mean()
        norm = float(np.linalg.norm(t))
        if norm > 1e-3:  # a flat patch has no shape to compare
            out[i] = t / norm
    return out


class LazyThumbnails:
    """The faces' :func:`thumbnails`, each made when first asked for (``self(i)``).

    A face needs its thumbnail when it is measured (to compare with later) or may be
    re-measured for a new look; a live run that fell behind waits for tens of frames
    between those, so most faces of most frames never need one."""

    def __init__(self, image: np.ndarray, boxes: np.ndarray) -> None:
        self.image, self.boxes = image, boxes
        self.made: dict[int, np.ndarray] = {}

    def __call__(self, i: int) -> np.ndarray:
        look = self.made.get(i)
        if look is None:
            look = self.made[i] = thumbnails(self.image, self.boxes[i:i + 1])[0]
        return look


def contested(probs: np.ndarray, margin: float, uncertain_threshold: float) -> bool:
    top2 = np.sort(np.asarray(probs, np.float64))[-2:]
    return bool(top2[1] - top2[0] < margin or top2[1] < uncertain_threshold)


class StreamSchedule:
    """Per-track classification state of one stream. :meth:`plan` each frame in order as
    it arrives, then :meth:`record` the frames in the same order once measured."""

    def __init__(self, settings: ScheduleSettings) -> None:
        self.s = settings
        self.states: dict[int, TrackState] = {}

    # -- intervals
    def _interval(self, track_id: int, st: TrackState, scale: int) -> tuple[int, int]:
        """(interval if the last result is contested, interval otherwise), frames."""
        every = max(1, self.s.every * scale)
        normal = 1 + track_id % every if st.measured == st.first else every
        return min(normal, max(1, every // 2)), normal

    def needs_results(self, index: int, track_ids: np.ndarray, scale: int = 1) -> bool:
        """True when a decision for frame ``index`` depends on a result still being
        measured (the classifier must finish its batch first)."""
        for tid in track_ids.tolist():
            st = self.states.get(tid)
            if st is not None and st.contested is None:
                short, normal = self._interval(tid, st, scale)
                if short <= index - st.measured < normal:
                    return True
        return False

    # -- decisions
    def plan(self, index: int, track_ids: np.ndarray, boxes: np.ndarray,
             scale: int = 1, looks: np.ndarray | Callable[[int], np.ndarray] | None = None,
             cam_scale: int = 1) -> FacePlan:
        """Decide which faces of frame ``index`` are measured (and with Grad-CAM);
        ``looks``: the faces' :func:`thumbnails`, or a function of the face's row that
        makes one (:class:`LazyThumbnails`: only the faces that need one pay for it);
        None: that rule is off."""
        if looks is not None and not callable(looks):
            looks = looks.__getitem__
        k = len(track_ids)
        measure, cam = np.zeros(k, bool), np.zeros(k, bool)
        measured_at, cam_at = np.zeros(k, np.int64), np.full(k, -1, np.int64)
        for i, tid in enumerate(track_ids.tolist()):
            st = self.states.get(tid)
            if st is None or index < st.seen:  # new, or the stream started again
                st = self.states[tid] = TrackState(index, index, index, boxes[i].copy())
                measure[i] = True
            else:
                measure[i] = self._due(index, tid, st, boxes[i], scale) or (
                    looks is not None and index - st.measured >= self._event_gap(scale)
                    and self._looks_new(st, looks(i)))
            st.seen = index
            if measure[i]:
                st.measured, st.box, st.contested = index, boxes[i].copy(), None
                st.look = None if looks is None else looks(i).copy()
                cam_every = max(1, self.s.cam_every * cam_scale)
                cam[i] = self.s.cam and (st.cam_from < 0 or index - st.cam_from >= cam_every)
                if cam[i]:
                    st.cam_from = index
            measured_at[i], cam_at[i] = st.measured, st.cam_from
        self._forget(index)
        return FacePlan(measure, cam, measured_at, cam_at)

    def _due(self, index: int, tid: int, st: TrackState, box: np.ndarray,
             scale: int) -> bool:
        if st.probs is None and st.contested is None and index == st.measured:
            return False  # the same frame twice (a repeated id): measured once
        short, normal = self._interval(tid, st, scale)
        age = index - st.measured
        if age >= normal or (st.contested and age >= short):
            return True
        return age >= self._event_gap(scale) and moved(st.box, box, self.s.move)

    def _event_gap(self, scale: int) -> int:
        """Frames a move or a new look waits after a measurement: none normally; degraded
        (``scale`` > 1, a live run behind) half the raised interval. Faces on the move
        would otherwise be re-measured on every frame the rules allow and keep the
        classifier as busy as before (measured: 0.85 faces a frame at the ladder's top)."""
        return 1 if scale <= 1 else max(1, self.s.every * scale // 2)

    def _looks_new(self, st: TrackState, look: np.ndarray | None) -> bool:
        if self.s.look <= 0 or look is None or st.look is None:
            return False
        return bool(look.any() and st.look.any()) and float(look @ st.look) < self.s.look

    def _forget(self, index: int) -> None:
        """Tracks unseen for ``keep_frames`` go; at most MAX_STATES are kept."""
        gone = [t for t, st in self.states.items() if index - st.seen > self.s.keep_frames]
        for tid in gone:
            del self.states[tid]
        if len(self.states) > MAX_STATES:
            oldest = sorted(self.states, key=lambda t: self.states[t].seen)
            for tid in oldest[:len(self.states) - MAX_STATES]:
                del self.states[tid]

    # -- results
    def record(self, index: int, track_ids: np.ndarray, plan: FacePlan,
               probs: np.ndarray, cams: np.ndarray | None) -> FaceResults:
        """Take the measured faces' results (rows for ``plan.measure`` faces, in order;
        ``cams``: rows for ``plan.cam`` faces) and give every face what it shows."""
        k = len(track_ids)
        out = FaceResults(np.zeros((k, 6), np.float32), np.zeros((k, 6), np.float32),
                          np.zeros(k, np.int64), np.zeros(k, bool), np.zeros(k, np.int64),
                          None, np.full(k, -1, np.int64))
        row = cam_row = 0
        cam_maps: list[np.ndarray | None] = []
        for i, tid in enumerate(track_ids.tolist()):
            st = self.states.get(tid)
            if st is None:  # forgotten while in flight (over MAX_STATES): shown, not kept
                st = TrackState(index, index, index, np.zeros(4, np.float32))
            if plan.measure[i]:
                self._measured(st, probs[row])
                row += 1
                if plan.cam[i] and cams is not None:
                    st.cam = np.asarray(cams[cam_row], np.float32)
                    cam_row += 1
            if st.probs is None:  # a repeated id on one frame: its first face's result
                st.probs = np.full(6, 1 / 6, np.float32)
            self._smooth(st)
            out.probs[i], out.smoothed[i], out.labels[i] = st.probs, st.smoothed, st.label
            out.uncertain[i] = st.smoothed[st.label] < self.s.uncertain_threshold
            out.result_age[i] = max(0, index - int(plan.measured_at[i]))
            out.cam_from[i] = plan.cam_at[i] if st.cam is not None else -1
            cam_maps.append(st.cam)
        if self.s.cam:
            out.cam = _stack_cams(cam_maps, cams)
        return out

    def _measured(self, st: TrackState, p: np.ndarray) -> None:
        p = np.asarray(p, np.float32)
        st.probs, st.contested = p, contested(p, self.s.margin, self.s.uncertain_threshold)

    def _smooth(self, st: TrackState) -> None:
        """One frame of smoothing: the last measured value, repeated on the frames between
        measurements (never an invented one), so ``alpha`` and ``window`` keep meaning
        frames whatever the classify interval."""
        p = st.probs
        if self.s.smoothing == "window":
            st.history.append(p)
            while len(st.history) > max(1, self.s.window):
                st.history.popleft()
            st.smoothed = np.mean(st.history, axis=0).astype(np.float32)
        elif st.smoothed is None:
            st.smoothed = p.copy()
        else:
            st.smoothed = (self.s.alpha * p + (1 - self.s.alpha) * st.smoothed).astype(np.float32)
        best = int(np.argmax(st.smoothed))
        if st.label < 0 or st.smoothed[best] >= st.smoothed[st.label] + self.s.hysteresis:
            st.label = best


def _stack_cams(maps: list[np.ndarray | None], fresh: np.ndarray | None) -> np.ndarray:
    """[K,h,w] maps; a face without a map yet (never the case once measured with
    Grad-CAM on) gets zeros of the run's map shape."""
    shape = next((m.shape for m in maps if m is not None), None)
    if shape is None:
        shape = fresh.shape[1:] if fresh is not None and fresh.ndim == 3 else (4, 4)
    return np.stack([m if m is not None and m.shape == shape else np.zeros(shape, np.float32)
                     for m in maps]).astype(np.float32) if maps else \
        np.zeros((0, *shape), np.float32)
