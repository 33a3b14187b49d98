"""The one preprocessing path: face crop(s) to the network's normalised 64x64 input.

Training, evaluation, export calibration and the pipeline all call
:func:`preprocess_faces`, so a model never sees pixels prepared two different ways.
Grayscale uses ITU-R 601 luma (what OpenCV and PIL's ``L`` mode use), replicated to
three channels and normalised with the ImageNet statistics, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
INPUT_SIZE = 64

# out[c] = gray * GRAY_SCALE[c] + GRAY_OFFSET[c]  ==  (gray / 255 - mean[c]) / std[c]
# (also used by the batched torch path, train/device_augment.py)
GRAY_SCALE = (1.0 / (255.0 * IMAGENET_STD)).reshape(1, 3, 1, 1)
GRAY_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).reshape(1, 3, 1, 1)
_TO_GRAY = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY}


def to_gray64(face: np.ndarray, color: str = "bgr", size: int = INPUT_SIZE) -> np.ndarray:
    """One uint8 crop (HxW gray, HxWx3 colour) to a ``size`` x ``size`` uint8 gray image.

    Shrinking uses area interpolation (no aliasing on large crops), enlarging bilinear.
    """
    if face.dtype != np.uint8:
        raise ValueError(f"face crop must be uint8, got {face.dtype}")
    if face.size == 0:
        raise ValueError(f"face crop is empty (shape {face.shape})")
    if face.ndim == 3 and face.shape[2] == 1:
        face = face[:, :, 0]
    if face.ndim == 3:
        if face.shape[2] != 3:
            raise ValueError(f"face crop must have 1 or 3 channels, got {face.shape[2]}")
        if color not in _TO_GRAY:
            raise ValueError(f"color must be one of {sorted(_TO_GRAY)}, got {color!r}")
        face = cv2.cvtColor(np.ascontiguousarray(face), _TO_GRAY[color])
    elif face.ndim != 2:
        raise ValueError(f"face crop must be HxW or HxWx3, got shape {face.shape}")
    if face.shape != (size, size):
        shrinking = face.shape[0] > size or face.shape[1] > size
        face = cv2.resize(face, (size, size),
                          interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return face


def normalize_gray(gray: np.ndarray) -> np.ndarray:
    """uint8 gray batch [N,H,W] to the float32 NCHW network input [N,3,H,W]."""
    g = gray.astype(np.float32)[:, None, :, :]
    return g * GRAY_SCALE + GRAY_OFFSET


def preprocess_faces(faces: np.ndarray | Sequence[np.ndarray], color: str = "bgr",
                     size: int = INPUT_SIZE) -> np.ndarray:
    """Crops (one array, an [N,H,W(,C)] stack, or a list of any sizes) to [N,3,size,size]."""
    if isinstance(faces, np.ndarray) and faces.ndim in (2, 3) and not (
            faces.ndim == 3 and faces.shape[2] not in (1, 3)):
        faces = [faces]
    grays = [to_gray64(f, color, size) for f in faces]
    if not grays:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return normalize_gray(np.stack(grays))
