"""The backend base class and its registry."""

from __future__ import annotations

import ctypes
import importlib
import sys
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from gimefive.errors import GimefiveError

BACKENDS: dict[str, type[Backend]] = {}

#: Modules that register backends when imported; imported lazily by the registry.
BACKEND_MODULES: dict[str, str] = {
    "torch": "gimefive.backends.torch_backend",
    "onnxruntime": "gimefive.backends.ort_backend",
    "tensorrt": "gimefive.backends.trt_backend",
}

#: ``auto`` tries these in order and takes the first that is available (see auto_choice).
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


class Backend(ABC):
    """One engine. Subclasses implement :meth:`infer`; the rest is shared."""

    name: ClassVar[str] = ""

    @classmethod
    def is_available(cls) -> bool:
        """Whether this machine can run the backend (libraries, devices)."""
        return True

    @abstractmethod
    def infer(self, batch: np.ndarray, cam: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``float32 [N,3,64,64]`` -> ``(probs [N,6], cam [N,h,w] or None)``."""

    def __call__(self, batch: np.ndarray, cam: bool = True):
        batch = check_batch(batch)
        if batch.shape[0] == 0:
            return np.zeros((0, 6), np.float32), (np.zeros((0, 0, 0), np.float32) if cam else None)
        return self.infer(batch, cam)

    def close(self) -> None:
        """Release sessions and device memory; call it (or use ``with``) when done."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_batch(batch: np.ndarray) -> np.ndarray:
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = getattr(batch, "shape", type(batch).__name__)
        raise ValueError(f"expected a float32 batch [N,3,H,W], got {shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` selectable by its ``name``."""
    BACKENDS[cls.name] = cls
    return cls


def _load(name: str) -> type[Backend] | None:
    if name not in BACKENDS and name in BACKEND_MODULES:
        try:
            importlib.import_module(BACKEND_MODULES[name])
        except ImportError:
            return None
    return BACKENDS.get(name)


def _usable(name: str) -> bool:
    return (cls := _load(name)) is not None and cls.is_available()


def available_backends() -> list[str]:
    return [n for n in BACKEND_MODULES if _usable(n)]


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library that torch's CUDA would load is there (Linux;
    elsewhere assumed, so torch is asked)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def torch_cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch (seconds of a stage's
    start-up) where the driver it would load is absent or torch is not installed."""
    if not cuda_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def auto_choice() -> tuple[str, dict]:
    """The backend ``auto`` means on this machine, with the options that make it fast.

    TensorRT when it can run; else ONNX Runtime when it has a GPU execution provider;
    else PyTorch on CUDA (fp16, in-graph CAM); else ONNX Runtime on the CPU (fp32,
    in-graph CAM: on the benchmarked CPU it beat torch fp32, and bf16 was not reliably
    faster under load); else torch. torch is imported only where it may be chosen (a
    CUDA driver, or no ONNX Runtime), so a CPU stage running ONNX Runtime starts faster.
    """
    if _usable("tensorrt"):
        return "tensorrt", {}
    ort_usable = _usable("onnxruntime")
    if ort_usable:
        import onnxruntime as ort

        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
        if gpu & set(ort.get_available_providers()):
            return "onnxruntime", {}
    if torch_cuda_available() and _usable("torch"):
        return "torch", {"device": "cuda", "precision": "fp16", "cam_method": "graph"}
    chosen = next((n for n in AUTO_ORDER if _usable(n)), None)  # the first, in order
    if chosen is not None:
        return chosen, {}
    raise GimefiveError("no classifier backend is available (install torch or onnxruntime)")


def create_backend(name: str = "auto", **options) -> Backend:
    """Instantiate a backend by name; ``auto`` picks the fastest available one."""
    if name == "auto":
        chosen, defaults = auto_choice()
        return BACKENDS[chosen](**{**defaults, **options})
    if name not in BACKEND_MODULES:
        raise GimefiveError(f"unknown backend {name!r}; expected one of "
                            f"{['auto', *BACKEND_MODULES]}")
    cls = _load(name)
    if cls is None or not cls.is_available():
        raise GimefiveError(f"backend {name!r} is not available on this machine")
    return cls(**options)
