"""Classify stage: face crops through a GiMeFive backend in dynamic batches across frames.

Faces of consecutive frames are gathered until ``classify_max_batch`` faces are waiting
or the oldest has waited ``classify_max_wait_ms``; then one engine call (two when only
some frames want Grad-CAM, see ``cam_every``) classifies them all. Crops are squares
framed as ``align`` says (:func:`crop_geometry`) and go through
:func:`gimefive.preprocess.preprocess_faces`, the same preprocessing the model was
trained with. ``classify_workers`` engine calls run at once in threads: the engines
release the GIL, so a second call uses a core the first would leave idle.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from gimefive.pipeline.stage import BatchWindow, Stage
from gimefive.pipeline.tracking import DEFAULT_UNCERTAIN_THRESHOLD
from gimefive.pipeline.wire import ClassifiedMsg, DetectionsMsg, Message

from gimefive.preprocess import preprocess_faces

CAM_SIDE = {"conv5": 4, "conv4": 8}  # Grad-CAM resolution at 64x64 input
MAX_CROP_SIDE = 128  # larger crops are warped to 128 px, then area-resized
MIN_ALIGN_DEGREES = 3.0  # align: eyes leaves a smaller eye roll alone (landmark jitter)


#: Where RetinaFace puts the five landmarks (right eye, left eye, nose, mouth right, mouth
#: left) inside the dataset's crops, as fractions of the crop side: the mean over 2,275
#: detections of 800 RAF-DB *train* faces pasted at 64, 96 and 128 px
#: (``python benchmarks/face_template.py``; per-point spread 0.03..0.06). Fitting a
#: similarity transform from these points to a face's landmarks is meant to frame the crop
#: the way the model saw its training faces; on synthetic scenes it measured level with
#: ``eyes`` or below it (README, pipeline), so it is not the default.
FACE_TEMPLATE = np.array([[0.2560, 0.3286], [0.7222, 0.3257], [0.4851, 0.5646],
                          [0.2926, 0.7367], [0.6883, 0.7345]], np.float32)
ALIGN_MODES = ("landmarks", "eyes", "none")
#: a landmark fit whose square differs from the box's by more than this factor is not
#: trusted (a profile or a landmark gone astray): the face falls back to ``eyes``
MAX_FIT_TO_BOX = 1.6


def crop_geometry(boxes: np.ndarray, landmarks: np.ndarray, scale: float,
                  align: str = "eyes", shift_y: float = 0.0) -> np.ndarray:
    """Per face ``[cx, cy, side, angle_degrees]`` of the square to classify.

    ``align``: ``landmarks`` fits :data:`FACE_TEMPLATE` to the five landmarks (position,
    size and roll in one least-squares fit); ``eyes`` squares the detected box and turns
    it so the eyes are level; ``none`` squares the box. ``scale`` and ``shift_y`` (the
    centre moved down by that fraction of the side) then adjust the square.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"align: expected one of {ALIGN_MODES}, got {align!r}")
    box_sides = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    angles = np.zeros(len(boxes))
    sides = box_sides.astype(np.float64)
    if align != "none" and len(boxes):
        d = landmarks[:, 1] - landmarks[:, 0]  # right eye -> left eye (image left -> right)
        eye_angles = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
        # below 3 degrees it is landmark jitter, above 60 implausible: do not rotate
        angles = np.where((np.abs(eye_angles) >= MIN_ALIGN_DEGREES)
                          & (np.abs(eye_angles) <= 60), eye_angles, 0.0)
    if align == "landmarks" and len(boxes):
        fit = template_fit(landmarks)
        ok = ((fit[:, 2] < box_sides * MAX_FIT_TO_BOX) & (fit[:, 2] > box_sides / MAX_FIT_TO_BOX)
              & (np.abs(fit[:, 3]) <= 60))
        centers = np.where(ok[:, None], fit[:, :2], centers)
        sides = np.where(ok, fit[:, 2], sides)
        angles = np.where(ok, fit[:, 3], angles)
    sides = sides * scale
    centers = centers + np.column_stack([np.zeros_like(sides), sides * shift_y])
    return np.column_stack([centers, sides, angles]).astype(np.float32)


def template_fit(landmarks: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform from :data:`FACE_TEMPLATE` (unit square) to each
    face's landmarks, as ``[cx, cy, side, angle_degrees]`` of the unit square's image.

    With points as complex numbers the fit is closed form: ``a = sum(conj(t) w) /
    sum(|t|^2)`` over centred template ``t`` and landmarks ``w``; ``|a|`` is the side and
    ``arg(a)`` the roll, in the convention of ``cv2.getRotationMatrix2D``.
    """
    t = FACE_TEMPLATE[:, 0] + 1j * FACE_TEMPLATE[:, 1]
    w = landmarks[..., 0].astype(np.float64) + 1j * landmarks[..., 1]
    t_mean, w_mean = t.mean(), w.mean(axis=1)
    tc, wc = t - t_mean, w - w_mean[:, None]
    a = (np.conj(tc)[None] * wc).sum(axis=1) / np.sum(np.abs(tc) ** 2)
    center = w_mean + a * (0.5 + 0.5j - t_mean)
    return np.column_stack([center.real, center.imag, np.abs(a), np.degrees(np.angle(a))])


def crop_matrix(crop: np.ndarray, out_side: int) -> np.ndarray:
    """Affine map from frame pixels to the ``out_side`` x ``out_side`` crop."""
    cx, cy, side, angle = (float(v) for v in crop)
    m = cv2.getRotationMatrix2D((cx, cy), angle, out_side / max(side, 1.0))
    m[:, 2] += (out_side / 2 - cx, out_side / 2 - cy)
    return m


def cut_faces(image: np.ndarray, crops: np.ndarray) -> list[np.ndarray]:
    faces = []
    for crop in crops:
        out_side = int(min(MAX_CROP_SIDE, max(16, math.ceil(float(crop[2])))))
        faces.append(cv2.warpAffine(image, crop_matrix(crop, out_side), (out_side, out_side),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return faces


def uncertain_threshold_of(weights: str | None) -> float:
    """The weights' ``uncertain_threshold`` metadata (0.4 when absent or unreadable)."""
    from gimefive.checkpoint import DEFAULT_WEIGHTS, read_metadata

    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if path.suffix == ".safetensors" and path.is_file():
        value = read_metadata(path).get("uncertain_threshold")
        if isinstance(value, int | float):
            return float(value)
    return DEFAULT_UNCERTAIN_THRESHOLD


class ClassifyStage(Stage):
    name = "classify"
    accepts = (DetectionsMsg,)

    def setup(self) -> None:
        from gimefive.backends import create_backend

        c = self.config
        options = {"weights": c.weights, "cam_layer": c.cam_layer}
        try:
            self.backend = create_backend(c.backend, threads=c.classify_threads, **options)
        except TypeError:  # a backend without a thread setting
            self.backend = create_backend(c.backend, **options)
        self.backend_name = getattr(self.backend, "name", c.backend)
        self.backend(np.zeros((2, 3, 64, 64), np.float32), cam=c.cam)  # warm-up
        self.threshold = (c.uncertain_threshold if c.uncertain_threshold is not None
                          else uncertain_threshold_of(c.weights))
        self.pool = None
        if c.classify_workers > 1:  # engines release the GIL: threads run calls in parallel
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(c.classify_workers, thread_name_prefix="engine")
        self.pending = BatchWindow(c.classify_max_wait_ms)
        self.pending_faces = 0

    def info(self) -> dict:
        return {"backend": self.backend_name, "uncertain_threshold": self.threshold}

    def wants_cam(self, msg: DetectionsMsg) -> bool:
        return self.config.cam and msg.index % self.config.cam_every == 0

    def process(self, msg: DetectionsMsg) -> list[Message]:
        self.pending.add(msg)
        self.pending_faces += len(msg.boxes)
        if self.pending_faces >= self.config.classify_max_batch:
            return self.flush()
        return []

    def wait_ms(self) -> float | None:
        return self.pending.wait_ms()

    def flush(self) -> list[Message]:
        pending, self.pending_faces = self.pending.take(), 0
        crops = [crop_geometry(m.boxes, m.landmarks, self.config.crop_scale, self.config.align,
                               self.config.crop_shift_y)
                 for m in pending]
        with self.timed("crop"):
            batches = {True: [], False: []}
            for m, c in zip(pending, crops, strict=True):
                batches[self.wants_cam(m)].extend(cut_faces(m.image, c))
        results = {want: self._infer(faces, want) for want, faces in batches.items()}
        offsets = {True: 0, False: 0}
        out = []
        for m, c in zip(pending, crops, strict=True):
            want, k = self.wants_cam(m), len(m.boxes)
            probs, cams = results[want]
            start = offsets[want]
            offsets[want] += k
            cam = cams[start:start + k] if cams is not None else None
            out.append(ClassifiedMsg(
                **m.detection_fields(), cam_layer=self.config.cam_layer,
                uncertain_threshold=float(self.threshold),
                probs=np.ascontiguousarray(probs[start:start + k], np.float32),
                cam=None if cam is None else np.ascontiguousarray(cam, np.float32), crops=c))
        return out

    def _infer(self, faces: list[np.ndarray], cam: bool):
        if not faces:
            side = CAM_SIDE.get(self.config.cam_layer, 4)
            return np.zeros((0, 6), np.float32), (np.zeros((0, side, side), np.float32)
                                                  if cam else None)
        with self.timed("preprocess"):
            batch = preprocess_faces(faces, color="bgr")
        size = self.config.classify_max_batch
        workers = self.config.classify_workers
        if workers > 1 and len(batch) > 1:  # equal shares, one engine call per worker thread
            size = min(size, -(-len(batch) // workers))
        chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
        with self.timed("engine_cam" if cam else "engine"):
            if self.pool is not None and len(chunks) > 1:
                results = list(self.pool.map(lambda b: self.backend(b, cam=cam), chunks))
            else:
                results = [self.backend(b, cam=cam) for b in chunks]
        self.count("faces", len(faces))
        self.count("engine_calls", len(results))
        if cam:
            self.count("cam_faces", len(faces))
        probs = np.concatenate([r[0] for r in results])
        return probs, (np.concatenate([r[1] for r in results]) if cam else None)

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()
        if hasattr(self, "backend"):
            self.backend.close()
