"""Everything around TensorRT that can be checked without a GPU or TensorRT installed."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from gimefive.export.onnx_export import export_onnx, export_probs_onnx
from gimefive.export.tensorrt import (
    MISSING,
    CalibrationBatches,
    build_engine,
    engine_key,
    require_tensorrt,
    unsupported_operators,
)
from gimefive.export.tensorrt_ops import SUPPORTED, UNSUPPORTED
from onnx import TensorProto, helper
from stand_in import random_model

from gimefive.backends import create_backend
from gimefive.backends.trt_backend import TensorRTBackend
from gimefive.errors import GimefiveError


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    m = random_model(seed=7)
    return {
        "conv5": export_onnx(m, d / "c5.onnx", "conv5"),
        "conv4+class": export_onnx(m, d / "c4.onnx", "conv4", class_input=True),
        "probs": export_probs_onnx(m, d / "p.onnx"),
    }


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError


def test_support_table_is_consistent():
    assert not SUPPORTED & UNSUPPORTED
    assert {"Conv", "ConvTranspose", "MatMul", "MaxPool", "Softmax", "Equal"} <= SUPPORTED


@pytest.mark.parametrize("name", ["conv5", "conv4+class", "probs"])
def test_exported_graphs_use_only_tensorrt_operators(graphs, name):
    assert unsupported_operators(graphs[name]) == []


def _graph(tmp_path, nodes, inits=(), name="g.onnx", opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, tmp_path / name)
    return tmp_path / name


def test_check_flags_unsupported_ops_rules_and_opset(tmp_path):
    bad_op = _graph(tmp_path, [helper.make_node("Hardmax", ["x"], ["y"], name="h")])
    assert unsupported_operators(bad_op) == ["Hardmax (h) is not supported"]
    starts = helper.make_tensor("s", TensorProto.INT64, [1], [0])
    dyn_axes = _graph(tmp_path, [
        helper.make_node("Shape", ["x"], ["ax"], name="shape"),
        helper.make_node("Slice", ["x", "s", "s", "ax"], ["y"], name="sl")], [starts], "s.onnx")
    assert unsupported_operators(dyn_axes) == ["Slice (sl): `axes` must be an initializer"]
    new_opset = _graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], name="o.onnx",
                       opset=21)
    assert unsupported_operators(new_opset) == ["opset 21 > 17"]


def test_calibration_batches_are_full_and_cover_the_set():
    x = np.random.default_rng(0).normal(size=(70, 3, 64, 64)).astype(np.float32)
    batches = CalibrationBatches(x, batch_size=32)
    got = list(batches)
    assert len(batches) == 2 and [b.shape[0] for b in got] == [32, 32]
    np.testing.assert_array_equal(np.concatenate(got), x[:64])  # the partial tail is dropped
    assert all(b.flags["C_CONTIGUOUS"] and b.dtype == np.float32 for b in got)
    assert batches.digest() == CalibrationBatches(x.copy(), 32).digest()


@pytest.mark.parametrize("shape,size,match", [((10, 3, 64, 64), 32, "full calibration batch"),
                                              ((40, 1, 64, 64), 8, r"\[N,3,64,64\]")])
def test_calibration_batches_reject_bad_sets(shape, size, match):
    with pytest.raises(GimefiveError, match=match):
        CalibrationBatches(np.zeros(shape, np.float32), size)


def test_engine_key_names_every_dependency():
    common = dict(onnx_path="/c/gimefive-abc-conv5-opset17-fp32.onnx", max_batch=128,
                  gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", trt_version="10.3.0")
    fp16 = engine_key(precision="fp16", **common)
    name = fp16.filename()
    assert name == ("gimefive-abc-conv5-opset17-fp32-NVIDIA_H100_80GB_HBM3-sm90-trt10.3.0"
                    "-fp16-b128.engine")
    others = {engine_key(precision="int8", **common).filename(),
              engine_key(precision="fp16", **{**common, "gpu": "NVIDIA L4"}).filename(),
              engine_key(precision="fp16", **{**common, "trt_version": "10.4.0"}).filename(),
              engine_key(precision="fp16", **{**common, "max_batch": 64}).filename()}
    assert name not in others and len(others) == 4
    a100 = engine_key(precision="int8", **{**common, "gpu": "A100"})
    assert a100.calibration_cache_name() == engine_key(precision="int8", **common
                                                       ).calibration_cache_name()
    with pytest.raises(GimefiveError, match="precision"):
        engine_key(precision="int4", **common)


def test_missing_tensorrt_is_one_clear_line(no_tensorrt, graphs, tmp_path):
    with pytest.raises(GimefiveError) as err:
        require_tensorrt()
    assert str(err.value) == MISSING and "\n" not in MISSING
    with pytest.raises(GimefiveError, match="TensorRT is not installed"):
        build_engine(graphs["conv5"], tmp_path / "e.engine")
    assert not TensorRTBackend.is_available()
    with pytest.raises(GimefiveError, match="'tensorrt' is not available"):
        create_backend("tensorrt")
