"""Detect stage: RetinaFace on batches of frames; with ``detect_every`` N, boxes in between.

Frames to detect on are batched (``detect_batch`` frames or ``detect_max_wait_ms``).
With N > 1 only every Nth frame of a stream is detected; the frames in between carry
the last detections moved at each face's velocity, measured by matching consecutive
detections by IoU (``detected`` is False on those frames). Output order = input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from gimefive.pipeline import degrade, devices
from gimefive.pipeline.messages import DetectionsMsg, FrameMsg, Message
from gimefive.pipeline.stage import BatchWindow, Stage
from gimefive.pipeline.tracking import match_centers

from gimefive.detector import Detections, FaceDetector

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

    def info(self) -> dict:
        return {"detector": self.detector_name}

    def _needs_detection(self, msg: FrameMsg) -> bool:
        last = self.last_detected.get(msg.stream)
        every = self.config.detect_every * degrade.multipliers(msg.extra)[0]
        if last is None or msg.index - last >= every or msg.index < last:
            self.last_detected[msg.stream] = msg.index
            return True
        return False

    def process(self, msg: FrameMsg) -> list[Message]:
        msg.extra = msg.extra | {"_detect": self._needs_detection(msg)}
        self.pending.add(msg)
        if sum(m.extra["_detect"] for m in self.pending.items) >= self.config.detect_batch:
            return self.flush()
        return []

    def wait_ms(self) -> float | None:
        return self.pending.wait_ms()

    def flush(self) -> list[Message]:
        pending = self.pending.take()
        todo = [m for m in pending if m.extra["_detect"]]
        if todo:
            with self.timed("detector"):
                found = self.detector.detect([m.image for m in todo])
            self.count("detector_calls")
            self.count("detected_frames", len(todo))
        by_id = {id(m): d for m, d in zip(todo, found, strict=True)} if todo else {}
        out = []
        for m in pending:
            detected = m.extra.pop("_detect")
            motion = self.motion.setdefault(m.stream, _StreamMotion())
            if detected:
                det = by_id[id(m)]
                motion.update(m.index, det)
            else:
                det = motion.predict(m.index, m.image.shape[1], m.image.shape[0])
            self.count("faces", len(det))
            out.append(DetectionsMsg(**m.frame_fields(), detected=detected, boxes=det.boxes,
                                     scores=det.scores, landmarks=det.landmarks))
        return out
