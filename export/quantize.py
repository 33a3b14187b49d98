"""INT8 static quantization of the exported graph for ONNX Runtime on the CPU.

Only the convolutions and the fully connected layers' forward Gemms are quantized
(QDQ format, per-channel int8 weights, uint8 activations calibrated with MinMax on
training face crops). The closed-form Grad-CAM head (MatMul with the MLP weights,
masks, the max-pool routing) stays fp32: it is cheap and its scaling to 0..1 would
amplify quantization noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gimefive.errors import GimefiveError

QUANTIZED_OPS = ("Conv", "Gemm")


def calibration_batches(x: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Split calibration faces ``[N,3,64,64]`` into batches; the last may be smaller."""
    if x.ndim != 4 or len(x) == 0:
        raise GimefiveError(f"calibration needs a non-empty [N,3,64,64] batch, got {x.shape}")
    if batch_size < 1:
        raise GimefiveError(f"calibration batch size must be >= 1, got {batch_size}")
    return [np.ascontiguousarray(x[i:i + batch_size], np.float32)
            for i in range(0, len(x), batch_size)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_x: np.ndarray,
                  batch_size: int = 32, input_name: str = "input") -> Path:
    """Write a QDQ int8 copy of ``fp32_path``, calibrated on ``calib_x``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration_batches(calib_x, batch_size))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice, printed 4 times
    try:
        quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    tmp.replace(out_path)
    return out_path
