"""ONNX Runtime backend: the exported (probs, cam) graph, built and cached on first use.

Execution providers, best first among those installed: TensorRT, CUDA (both come with
``onnxruntime-gpu``, the ``gpu`` extra), then the CPU. ``precision="int8"`` runs the
statically quantized graph (CPU; calibrated on training faces, CAM head in fp32):
within 0.1 point of fp32 on RAF-DB test, also on AVX2 CPUs without VNNI, and 1.4-1.8x
the faces per CPU second at batch 8-32 but no faster at batch 1 (docs/int8.md).
``auto`` still never picks it: building it needs the training crops, which a deployed
machine does not have, and the pipeline's batches are small.
When ``cam=False`` a second, probs-only graph runs, so skipping the CAM saves its cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gimefive.backends.base import Backend, register_backend
from gimefive.errors import GimefiveError

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PRECISIONS = ("fp32", "int8")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in available]


@register_backend
class OnnxRuntimeBackend(Backend):
    """``threads``: intra-op threads (0/None: ONNX Runtime's default, all cores);
    ``onnx_path``: run this graph instead of the cached export (CAM only);
    ``calibration_faces``: training crops that calibrate INT8 (cached per count;
    None: export/artifacts.py's CALIBRATION_FACES)."""

    name = "onnxruntime"

    @classmethod
    def is_available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(self, weights: str | Path | None = None, cam_layer: str = "conv5",
                 precision: str = "fp32", providers: list[str] | None = None,
                 threads: int | None = None, onnx_path: str | Path | None = None,
                 model=None, calibration_faces: int | None = None) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise GimefiveError(f"onnxruntime precision must be one of {PRECISIONS}, "
                                f"got {precision!r}")
        self.weights, self.cam_layer, self.precision = weights, cam_layer, precision
        self._model = model
        self.calibration_faces = calibration_faces
        self.providers = list(providers) if providers else default_providers()
        self.options = ort.SessionOptions()
        self.options.log_severity_level = 3
        if threads:
            self.options.intra_op_num_threads = int(threads)
        self.onnx_path = Path(onnx_path) if onnx_path else None
        path = self.onnx_path or self._artifact(with_cam=True)
        if not path.is_file():
            raise GimefiveError(f"ONNX model not found: {path}")
        self.cam_session = self._session(path)
        self.probs_session = None

    def _artifact(self, with_cam: bool) -> Path:
        from gimefive.export.artifacts import CALIBRATION_FACES, onnx_artifact

        return onnx_artifact(self.weights, self.cam_layer, with_cam, self.precision,
                             model=self._model,
                             calibration_faces=self.calibration_faces or CALIBRATION_FACES)

    def _session(self, path: Path):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), self.options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise GimefiveError(f"onnxruntime cannot load {path}: {exc}") from None

    def infer(self, batch: np.ndarray, cam: bool = True):
        if cam or self.onnx_path is not None:
            probs, cams = self.cam_session.run(["probs", "cam"], {"input": batch})
            return probs, (cams if cam else None)
        if self.probs_session is None:
            self.probs_session = self._session(self._artifact(with_cam=False))
        (probs,) = self.probs_session.run(["probs"], {"input": batch})
        return probs, None

    def close(self) -> None:
        self.cam_session = self.probs_session = None
