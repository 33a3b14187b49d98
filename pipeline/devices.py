"""Where the detect stage's detector and the classify stage's crops run (``device``).

``cpu`` keeps onnxruntime's detector and OpenCV's crops (faster than torch on a CPU);
``cuda`` runs :class:`gimefive.torch_detector.TorchFaceDetector` and
:func:`gimefive.pipeline.torch_crops.preprocess_crops_torch` on the GPU; ``auto`` is cuda
when torch sees a GPU, else cpu. Both stages ask :func:`torch_device`, so they agree.
"""

from __future__ import annotations

from gimefive.backends.base import torch_cuda_available
from gimefive.errors import GimefiveError

DEVICES = ("auto", "cpu", "cuda")


def _cuda_available() -> bool:
    """torch's answer, without importing torch (seconds) where the NVIDIA driver library
    that torch would load is absent (the one check, shared with the ``auto`` backend)."""
    return torch_cuda_available()


def torch_device(device: str) -> str | None:
    """The torch device for the stages' tensor path, or None for the CPU path
    (onnxruntime + OpenCV). ``cuda`` without CUDA is one clear error."""
    if device not in DEVICES:
        raise GimefiveError(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return None
    if _cuda_available():
        return "cuda"
    if device == "cuda":
        raise GimefiveError("device=cuda: CUDA is not available to torch (use device: cpu "
                            "or auto)")
    return None
