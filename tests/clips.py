"""Small test clips written with PyAV: a still picture repeated, H.264 at a given rate."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def write_still_clip(path: Path, image_bgr: np.ndarray, size: tuple[int, int], frames: int,
                     fps: int = 10, pix_fmt: str | None = None) -> Path:
    """``frames`` copies of ``image_bgr`` resized to ``size`` (width, height), libx264."""
    width, height = size
    picture = cv2.resize(image_bgr, (width, height))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        if pix_fmt:
            stream.pix_fmt = pix_fmt
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="bgr24")))
        container.mux(stream.encode())
    return path
