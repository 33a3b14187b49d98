"""INT8 static quantization of the exported graph for ONNX Runtime on the CPU.

Only the convolutions and the fully connected layers' forward Gemms are quantized
(QDQ format, per-channel int8 weights, uint8 activations whose range leaves out the
0.01% most extreme values seen on training face crops: ``percentile`` 99.99). The
closed-form Grad-CAM head (MatMul with the MLP weights, masks, the max-pool routing)
stays fp32: it is cheap and its scaling to 0..1 would amplify quantization noise.

Weights use 7 bits (``reduce_range``) by default. On x86 CPUs with AVX2 but without
VNNI (e.g. AMD EPYC Rome/Milan) ONNX Runtime multiplies uint8 activations by int8
weights with VPMADDUBSW, which adds pairs of products into int16 and saturates: with
full 8-bit weights GiMeFive lost 26 points of RAF-DB test accuracy there while losing
nothing on VNNI CPUs. 7-bit weights keep every pair below the int16 limit. See
docs/int8.md and benchmarks/int8_accuracy.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Int8Method:
    """How a graph is quantized (the knobs benchmarks/int8_accuracy.py compares).

    ``calibration``: minmax | entropy | percentile (the range keeps ``percentile`` % of
    the values seen, cutting half the rest at each end);
    ``reduce_range``: 7-bit weights (safe from int16 saturation on AVX2 without VNNI);
    ``symmetric_activations``: int8 activations with zero point 0 instead of uint8;
    ``weights``: int8 | uint8; ``exclude``: node names kept in fp32;
    ``quant_format``: qdq | qoperator; ``preprocess``: run ONNX Runtime's
    ``quant_pre_process`` (shape inference, graph optimisation) first.
    """

    calibration: str = "percentile"
    percentile: float = 99.99
    reduce_range: bool = True
    symmetric_activations: bool = False
    weights: str = "int8"
    exclude: tuple[str, ...] = ()
    quant_format: str = "qdq"
    preprocess: bool = False

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS or self.weights not in ("int8", "uint8") \
                or self.quant_format not in ("qdq", "qoperator"):
            raise GimefiveError(f"unknown INT8 method {self}")

    @property
    def tag(self) -> str:
        """A short, file-name-safe name for cache keys and reports."""
        parts = [self.calibration if self.calibration != "percentile"
                 else f"pct{self.percentile:g}"]
        parts += [name for on, name in ((self.reduce_range, "rr"),
                                        (self.symmetric_activations, "symact"),
                                        (self.weights == "uint8", "u8u8"),
                                        (self.quant_format == "qoperator", "qop"),
                                        (self.preprocess, "pre")) if on]
        parts += [f"skip{n.strip('/').split('/')[0]}" for n in self.exclude]
        return "_".join(parts)


CALIBRATIONS = ("minmax", "entropy", "percentile")
#: the method ``gimefive export --precision int8`` and the onnxruntime backend use
DEFAULT_METHOD = Int8Method()


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_x: np.ndarray,
                  batch_size: int = 32, input_name: str = "input",
                  method: Int8Method = DEFAULT_METHOD) -> Path:
    """Write an int8 copy of ``fp32_path``, calibrated on ``calib_x`` as ``method`` says.

    Calibration sees one batch at a time, so thousands of faces fit in memory even for
    the histogram methods (ONNX Runtime otherwise keeps every intermediate tensor).
    ONNX Runtime writes ``<input>-inferred.onnx`` beside its input and deletes it, so it
    reads a private copy: two processes quantizing one cached graph would collide.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    src = out_path.with_name(out_path.name + ".src.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice, printed 4 times
    try:
        if method.preprocess:
            _preprocess(fp32_path, src)
        else:
            shutil.copyfile(fp32_path, src)
        with contextlib.redirect_stdout(io.StringIO()):  # histogram progress prints
            quantize_static(
                str(src), str(tmp), _Reader(calibration_batches(calib_x, batch_size),
                                               input_name),
                quant_format=QuantFormat.QDQ if method.quant_format == "qdq"
                else QuantFormat.QOperator,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                reduce_range=method.reduce_range,
                activation_type=QuantType.QInt8 if method.symmetric_activations
                else QuantType.QUInt8,
                weight_type=QuantType.QInt8 if method.weights == "int8" else QuantType.QUInt8,
                nodes_to_exclude=list(method.exclude),
                calibrate_method=_calibrate_method(method), extra_options=_extra(method))
    finally:
        root.setLevel(level)
        src.unlink(missing_ok=True)
        src.with_name(src.stem + "-inferred.onnx").unlink(missing_ok=True)
    tmp.replace(out_path)
    return out_path


class _Reader:
    """Calibration batches for ONNX Runtime, fed one at a time (``CalibStridedMinMax``)."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self.batches, self.input_name = batches, input_name
        self._it = iter(())

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def _calibrate_method(method: Int8Method):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method.calibration]


def _extra(method: Int8Method) -> dict:
    extra = {"CalibStridedMinMax": 1}  # despite the name: any method, batch by batch
    if method.calibration == "percentile":
        extra["CalibPercentile"] = method.percentile
    if method.symmetric_activations:
        extra["ActivationSymmetric"] = True
    return extra


def _preprocess(fp32_path: str | Path, out: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out))
