"""The paper's 68-point facial landmarks, from an optional extra.

``pip install 'gimefive[landmarks68]'`` brings ``dlib-bin`` (dlib's compiled wheel) and
``face-recognition-models``, which ships dlib's 68-point shape predictor trained on
iBUG 300-W (``shape_predictor_68_face_landmarks.dat``). The detector's five points stay
the ones the pipeline aligns crops with; the 68 points are drawn and written to the JSON
lines when ``landmarks68`` is on. Without the extra, asking for them is one clear error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from gimefive.errors import GimefiveError

INSTALL_HINT = "pip install 'gimefive[landmarks68]' (dlib-bin and face-recognition-models)"


def unavailable_reason() -> str | None:
    """``None`` when the 68-point predictor can be loaded here, else why not."""
    for module, package in (("dlib", "dlib-bin"),
                            ("face_recognition_models", "face-recognition-models")):
        if importlib.util.find_spec(module) is None:
            return f"68-point landmarks need {package}, which is not installed: {INSTALL_HINT}"
    return None


def default_model_path() -> Path:
    # located, not imported: the package's __init__ needs pkg_resources, which recent
    # setuptools no longer ships
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise GimefiveError(f"face-recognition-models is not installed: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "models" / "shape_predictor_68_face_landmarks.dat"


class Landmarks68:
    """``predictor(image_bgr, boxes)`` -> float32 [N, 68, 2] in frame pixels."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise GimefiveError(reason)
        import dlib

        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise GimefiveError(f"68-point landmark model not found: {path}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))

    def __call__(self, image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.zeros((len(boxes), 68, 2), np.float32)
        if not len(boxes):
            return out
        # dlib's predictor reads 8-bit gray or RGB; gray is enough and cheaper
        gray = (cv2.cvtColor(np.ascontiguousarray(image_bgr), cv2.COLOR_BGR2GRAY)
                if image_bgr.ndim == 3 else np.ascontiguousarray(image_bgr))
        for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
            rect = self._dlib.rectangle(int(round(x1)), int(round(y1)),
                                        int(round(x2)), int(round(y2)))
            shape = self._predictor(gray, rect)
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out
