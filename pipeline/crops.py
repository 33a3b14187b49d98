"""Crop geometry: which square of the frame a face is classified from, and the map to it.

Shared by the classify stage (which cuts the crops) and the drawing code (which maps the
Grad-CAM of a crop back onto the frame), so it lives in neither.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

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


def crop_side_px(side: float) -> int:
    """Pixels a crop of ``side`` is warped to: its own size, 16..:data:`MAX_CROP_SIDE`."""
    return int(min(MAX_CROP_SIDE, max(16, math.ceil(side))))


def cut_faces(image: np.ndarray, crops: np.ndarray) -> list[np.ndarray]:
    """The ``crops`` squares of ``image``, upright, each at most :data:`MAX_CROP_SIDE` px."""
    faces = []
    for crop in crops:
        out_side = crop_side_px(float(crop[2]))
        faces.append(cv2.warpAffine(image, crop_matrix(crop, out_side), (out_side, out_side),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return faces
