"""Detect stage: RetinaFace on batches of frames; with ``detect_every`` N, boxes in between.

Frames to detect on are batched (``detect_batch`` frames or ``detect_max_wait_ms``).
With N > 1 only every Nth frame of a stream is detected; the frames in between carry
the last detections moved at each face's velocity, measured by matching consecutive
detections by IoU (``detected`` is False on those frames). Output order = input order.

With ``detect_upscale`` (small frames enlarged for small faces, several times the
network's cost), only every ``detect_upscale_every``-th detected frame gets the enlarged
pass; the others are detected at their own size and keep the faces found before that
this cheaper pass misses (mostly the smallest), moved at their speed, until the next
enlarged pass replaces them all. Which pass a frame gets depends on its index only, so
files stay deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from gimefive.pipeline import degrade, devices
from gimefive.pipeline.messages import DetectionsMsg, FrameMsg, Message
from gimefive.pipeline.stage import BatchWindow, Stage
from gimefive.pipeline.tracking import match_centers

from gimefive.detector import Detections, FaceDetector, box_iou

if TYPE_CHECKING:
    from gimefive.torch_detector import TorchFaceDetector


@dataclass
class _StreamMotion:
    """Last detections of one stream and the per-face velocity (px per frame)."""

    index: int = -1
    det: Detections = field(default_factory=Detections.empty)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def update(self, index: int, det: Detections) -> None:
        velocity = np.zeros((len(det), 2), np.float32)
        if self.index >= 0 and len(det) and len(self.det):
            gap = max(1, index - self.index)
            for new, old in match_centers(det.boxes, self.det.boxes, 1.0):
                velocity[new] = (_centers(det.boxes[new]) - _centers(self.det.boxes[old])) / gap
        self.index, self.det, self.velocity = index, det, velocity

    def predict(self, index: int, width: int, height: int) -> Detections:
        if not len(self.det):
            return Detections.empty()
        shift = self.velocity * max(0, index - self.index)
        boxes = self.det.boxes + np.tile(shift, 2)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return Detections(boxes.astype(np.float32), self.det.scores.copy(),
                          (self.det.landmarks + shift[:, None, :]).astype(np.float32))


def _centers(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


#: a carried face and a detection overlapping this much (IoU) are the same face
CARRY_IOU = 0.3
#: below this side (px at the network's input) a detection of the own-size pass yields to
#: the carried face it overlaps: the enlarged pass saw that face with four times the
#: pixels, and its box, moved, matches the face better. On the bench's wide scene with
#: every 3rd detected frame enlarged, faces matched: 1005 without the rule, 1007 (32 px),
#: 1011 (40 and 48 px), 1010 (64 px); 1006 enlarging every frame (``python
#: benchmarks/two_scale_detect.py --every 3 --small-side 0,32,40,48,64``)
SMALL_SIDE = 40
#: ``extra["_detect"]`` values: not detected, the detector's own setting, own size only
SKIP, DETECT, OWN_SIZE = 0, 1, 2


def _subset(det: Detections, keep: np.ndarray) -> Detections:
    return Detections(det.boxes[keep], det.scores[keep], det.landmarks[keep])


def with_carried(found: Detections, carried: Detections, small_side: float) -> Detections:
    """One frame's faces from a cheap pass (``found``) and the faces carried from the
    last enlarged pass: a found face under ``small_side`` px that overlaps a carried one
    gives way to it; a carried face overlapped by a remaining found face gives way to
    that; the rest of both are kept, best score first."""
    if not len(carried) or not len(found):
        return found if len(found) else carried
    overlap = box_iou(carried.boxes, found.boxes) >= CARRY_IOU
    sides = np.minimum(found.boxes[:, 2] - found.boxes[:, 0],
                       found.boxes[:, 3] - found.boxes[:, 1])
    keep_found = ~(overlap.any(axis=0) & (sides < small_side))
    keep_carried = ~overlap[:, keep_found].any(axis=1)
    found, carried = _subset(found, keep_found), _subset(carried, keep_carried)
    scores = np.concatenate([found.scores, carried.scores])
    order = np.argsort(-scores, kind="stable")
    return Detections(np.concatenate([found.boxes, carried.boxes])[order], scores[order],
                      np.concatenate([found.landmarks, carried.landmarks])[order])


def make_detector(c) -> tuple[FaceDetector | TorchFaceDetector, str]:
    """The detector ``c.device`` asks for and its name for the summary: onnxruntime on the
    CPU (faster there than torch), RetinaFace in torch (fp16) where the stages run on CUDA."""
    settings = dict(max_side=c.detect_max_side, score_threshold=c.detect_score,
                    nms_threshold=c.detect_nms, min_size=c.min_face, threads=c.detect_threads,
                    max_batch=c.detect_batch, upscale=c.detect_upscale)
    device = devices.torch_device(c.device)
    if device is None:
        return FaceDetector(**settings), "onnxruntime cpu"
    from gimefive.torch_detector import TorchFaceDetector

    detector = TorchFaceDetector(device=device, **settings)
    return detector, f"torch {detector.device.type} {'fp16' if detector.half else 'fp32'}"


class DetectStage(Stage):
    name = "detect"
    accepts = (FrameMsg,)

    def setup(self) -> None:
        self.detector, self.detector_name = make_detector(self.config)
        self.detector.detect([np.zeros((64, 64, 3), np.uint8)])  # warm-up, outside timing
        self.pending = BatchWindow(self.config.detect_max_wait_ms)
        self.motion: dict[str, _StreamMotion] = {}
        self.last_detected: dict[str, int] = {}
        self.passes: dict[str, int] = {}  # detected frames per stream (detect_upscale_every)
        self.enlarged: dict[str, _StreamMotion] = {}  # faces of the last enlarged pass

    def info(self) -> dict:
        return {"detector": self.detector_name}

    def _needs_detection(self, msg: FrameMsg) -> bool:
        last = self.last_detected.get(msg.stream)
        every = self.config.detect_every * degrade.multipliers(msg.extra)[0]
        if last is None or msg.index - last >= every or msg.index < last:
            self.last_detected[msg.stream] = msg.index
            return True
        return False

    def _pass(self, msg: FrameMsg) -> int:
        """SKIP, DETECT or OWN_SIZE (``detect_upscale_every``: not this frame's turn for
        the enlarged pass; a frame the detector would not enlarge anyway gets DETECT)."""
        if not self._needs_detection(msg):
            return SKIP
        c, (height, width) = self.config, msg.image.shape[:2]
        if not c.detect_upscale or c.detect_upscale_every <= 1 or min(height, width) < 1 \
                or self.detector.input_size(height, width) == \
                self.detector.input_size(height, width, upscale=False):
            return DETECT
        turn = self.passes.get(msg.stream, 0)
        self.passes[msg.stream] = turn + 1
        return DETECT if turn % c.detect_upscale_every == 0 else OWN_SIZE

    def process(self, msg: FrameMsg) -> list[Message]:
        msg.extra = msg.extra | {"_detect": self._pass(msg)}
        self.pending.add(msg)
        if sum(m.extra["_detect"] != SKIP for m in self.pending.items) \
                >= self.config.detect_batch:
            return self.flush()
        return []

    def wait_ms(self) -> float | None:
        return self.pending.wait_ms()

    def _run_detector(self, pending: list[FrameMsg]) -> dict[int, Detections]:
        """Detections of the frames that need them, by ``id`` of the message."""
        found: dict[int, Detections] = {}
        for kind, upscale, counter in ((DETECT, None, "detected_frames"),
                                       (OWN_SIZE, False, "own_size_frames")):
            todo = [m for m in pending if m.extra["_detect"] == kind]
            if not todo:
                continue
            with self.timed("detector"):
                dets = self.detector.detect([m.image for m in todo], upscale=upscale)
            self.count("detector_calls")
            self.count(counter, len(todo))
            found.update(zip(map(id, todo), dets, strict=True))
        return found

    def flush(self) -> list[Message]:
        pending = self.pending.take()
        found = self._run_detector(pending)
        out = []
        for m in pending:
            kind = m.extra.pop("_detect")
            motion = self.motion.setdefault(m.stream, _StreamMotion())
            width, height = m.image.shape[1], m.image.shape[0]
            if kind == DETECT:
                det = found[id(m)]
                if self.config.detect_upscale and self.config.detect_upscale_every > 1:
                    self.enlarged.setdefault(m.stream, _StreamMotion()).update(m.index, det)
            elif kind == OWN_SIZE:
                # speeds from enlarged pass to enlarged pass: a carried face's own
                # predictions never feed its speed, so their errors do not grow
                carried = self.enlarged[m.stream].predict(m.index, width, height)
                in_width = self.detector.input_size(height, width, upscale=False)[1]
                det = with_carried(found[id(m)], carried, SMALL_SIDE * width / in_width)
            else:
                det = motion.predict(m.index, width, height)
            detected = kind != SKIP
            if detected:
                motion.update(m.index, det)
            self.count("faces", len(det))
            out.append(DetectionsMsg(**m.frame_fields(), detected=detected, boxes=det.boxes,
                                     scores=det.scores, landmarks=det.landmarks))
        return out
