"""TensorRT backend: the (probs, cam) graph as a serialized engine, built on first use.

NOT VERIFIED HERE: written against TensorRT 10's documented Python API, but no machine
this project was built on has an NVIDIA GPU or TensorRT, so this file has never run.
:meth:`TensorRTBackend.is_available` is False without the ``tensorrt`` module and a
CUDA device, so ``auto`` never picks it on such machines.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from gimefive.backends.base import Backend, register_backend
from gimefive.backends.cache import cache_dir
from gimefive.errors import GimefiveError


@register_backend
class TensorRTBackend(Backend):
    """``precision``: fp32, fp16 (default) or int8 (calibrated on training faces);
    batches above ``max_batch`` are split; ``threads`` is accepted for a uniform
    interface and unused (the GPU does the work)."""

    name = "tensorrt"

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("tensorrt") is None:
            return False
        import torch

        return torch.cuda.is_available()

    def __init__(self, weights: str | Path | None = None, cam_layer: str = "conv5",
                 precision: str = "fp16", max_batch: int = 128, engine_path=None,
                 model=None, threads: int | None = None) -> None:
        from gimefive.export.tensorrt import require_tensorrt

        trt = require_tensorrt()
        import torch

        self.torch = torch
        path = Path(engine_path) if engine_path else engine_for(
            weights, cam_layer, precision, max_batch, model)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise GimefiveError(f"TensorRT could not load the engine {path}")
        self.context = self.engine.create_execution_context()
        self.max_batch = max_batch
        self.stream = torch.cuda.Stream()

    def infer(self, batch: np.ndarray, cam: bool = True):
        parts = [self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch),
                                                                      self.max_batch)]
        probs = np.concatenate([p for p, _ in parts])
        return probs, (np.concatenate([c for _, c in parts]) if cam else None)

    def _run(self, batch: np.ndarray):
        torch = self.torch
        n = len(batch)
        x = torch.from_numpy(batch).cuda(non_blocking=True)
        self.context.set_input_shape("input", tuple(x.shape))
        outputs = {}
        for name in ("probs", "cam"):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty((n, *shape[1:]), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, int(outputs[name].data_ptr()))
        self.context.set_tensor_address("input", int(x.data_ptr()))
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise GimefiveError("TensorRT execution failed")
        self.stream.synchronize()
        return outputs["probs"].cpu().numpy(), outputs["cam"].cpu().numpy()

    def close(self) -> None:
        self.context = self.engine = None


def engine_for(weights, cam_layer: str, precision: str, max_batch: int, model=None) -> Path:
    """The cached engine for this GPU, TensorRT version and precision (built when missing)."""
    from gimefive.export.artifacts import onnx_artifact
    from gimefive.export.tensorrt import build_engine, engine_key

    onnx_path = onnx_artifact(weights, cam_layer, with_cam=True, model=model)
    key = engine_key(onnx_path, precision, max_batch)
    path = cache_dir("tensorrt") / key.filename()
    if path.is_file():
        return path
    calibration = None
    if precision == "int8":
        from gimefive.export.faces import calibration_faces

        calibration = calibration_faces().x
    return build_engine(onnx_path, path, precision, max_batch, calibration=calibration,
                        calibration_cache=cache_dir("tensorrt") / key.calibration_cache_name())
