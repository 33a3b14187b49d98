"""INT8 quantization: weights that cannot saturate AVX2's int16 sums, fidelity to fp32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gimefive.export.artifacts import onnx_key
from gimefive.export.faces import calibration_faces, fallback_faces, load_split
from gimefive.export.onnx_export import export_probs_onnx
from gimefive.export.quantize import DEFAULT_METHOD, Int8Method, quantize_int8
from onnx import numpy_helper
from stand_in import random_model

from gimefive.errors import GimefiveError

#: u8 activation x s8 weight, two products per int16 sum (VPMADDUBSW on AVX2 without VNNI)
INT16_MAX = 32767


def predict(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["probs"], {"input": x})[0]


def int8_weights(path) -> list[np.ndarray]:
    """The quantized Conv/Gemm weight tensors (int8 initializers) of a QDQ model."""
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]


def test_default_int8_weights_cannot_saturate_avx2_int16_sums(tmp_path):
    fp32 = tmp_path / "probs.onnx"
    export_probs_onnx(random_model(seed=2), fp32, 17)
    out = quantize_int8(fp32, tmp_path / "int8.onnx", fallback_faces(16, seed=1).x)
    weights = int8_weights(out)
    assert len(weights) == 8  # 5 convolutions + 3 fully connected layers
    worst = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 2 * 255 * worst <= INT16_MAX, f"int8 weights reach {worst}: AVX2 sums saturate"


def test_int8_cache_key_names_the_method():
    key = onnx_key("ab" * 32, "conv5", True, "int8", calibration_faces=64)
    assert DEFAULT_METHOD.tag in key and key.endswith("int8-cal64")
    assert Int8Method("minmax", reduce_range=False).tag not in key


def test_unknown_int8_method_is_an_error():
    with pytest.raises(GimefiveError, match="unknown INT8 method"):
        Int8Method("kl-divergence")


def test_default_int8_agrees_with_fp32_on_training_faces(fer_data, tmp_path):
    from gimefive.checkpoint import DEFAULT_WEIGHTS, load_model

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped weights at {DEFAULT_WEIGHTS}")
    fp32 = tmp_path / "probs.onnx"
    export_probs_onnx(load_model()[0], fp32, 17)
    out = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_faces(256).x)
    faces = load_split("rafdb_train", limit=256, seed=7, root=fer_data).x
    agreement = (predict(out, faces).argmax(1) == predict(fp32, faces).argmax(1)).mean()
    assert agreement >= 0.97, f"top-1 agreement with fp32 {agreement:.3f}"
