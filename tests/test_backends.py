"""Backends behind one interface: registry, auto selection, parity, build-on-first-use cache."""

from __future__ import annotations

import numpy as np
import pytest
from gimefive.export.faces import fallback_faces
from gimefive.export.onnx_export import CAM_TOL, PROBS_TOL
from stand_in import random_weights

from gimefive.backends import available_backends, create_backend
from gimefive.backends.base import BACKENDS
from gimefive.errors import GimefiveError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GIMEFIVE_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("w") / "rand.safetensors", seed=4)


@pytest.fixture(scope="module")
def x():
    return fallback_faces(10, seed=5).x


@pytest.fixture(scope="module")
def reference(weights, x):
    with create_backend("torch", weights=weights) as b:
        return b(x)


def test_registry_lists_cpu_backends_and_not_tensorrt():
    names = available_backends()
    assert "torch" in names and "onnxruntime" in names
    assert "tensorrt" not in names  # no machine here has TensorRT
    assert {"torch", "onnxruntime", "tensorrt"} <= set(BACKENDS)


def test_unknown_and_unavailable_backends_are_one_line_errors():
    with pytest.raises(GimefiveError, match="unknown backend 'tflite'"):
        create_backend("tflite")
    with pytest.raises(GimefiveError, match="tensorrt.*not available"):
        create_backend("tensorrt")


def test_missing_default_weights_is_a_clear_error(cache, monkeypatch, tmp_path):
    import gimefive.checkpoint as ck

    monkeypatch.setattr(ck, "DEFAULT_WEIGHTS", tmp_path / "none.safetensors")
    with pytest.raises(GimefiveError, match="weights"):
        create_backend("torch", weights=tmp_path / "missing.safetensors")


def test_torch_reference_outputs(reference, x):
    probs, cam = reference
    assert probs.shape == (10, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert cam.shape == (10, 4, 4) and cam.min() >= 0 and cam.max() <= 1
    assert np.allclose(cam.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_cam_false_skips_cam(weights, x, reference):
    with create_backend("torch", weights=weights) as b:
        probs, cam = b(x, cam=False)
    assert cam is None
    np.testing.assert_allclose(probs, reference[0], atol=1e-6)


def test_torch_graph_cam_matches_autograd(weights, x, reference):
    with create_backend("torch", weights=weights, cam_method="graph") as b:
        probs, cam = b(x)
    assert np.abs(probs - reference[0]).max() <= PROBS_TOL
    assert np.abs(cam - reference[1]).max() <= CAM_TOL


def test_torch_bf16_close_to_fp32(weights, x, reference):
    with create_backend("torch", weights=weights, precision="bf16") as b:
        probs, cam = b(x)
    assert np.abs(probs - reference[0]).max() < 0.05
    assert cam.shape == reference[1].shape and cam.min() >= 0 and cam.max() <= 1


def test_onnxruntime_matches_torch_and_caches(cache, weights, x, reference):
    with create_backend("onnxruntime", weights=weights, threads=1) as b:
        probs, cam = b(x)
        probs_only, none = b(x, cam=False)
    assert np.abs(probs - reference[0]).max() <= PROBS_TOL
    assert np.abs(cam - reference[1]).max() <= CAM_TOL
    assert none is None and np.abs(probs_only - reference[0]).max() <= PROBS_TOL
    built = sorted(p.name for p in (cache / "onnx").glob("*.onnx"))
    assert len(built) == 2 and any("conv5-opset17-fp32" in n for n in built)
    assert any("probs-opset17-fp32" in n for n in built)
    mtimes = {p: p.stat().st_mtime_ns for p in (cache / "onnx").glob("*.onnx")}
    with create_backend("onnxruntime", weights=weights) as b:
        b(x[:2])
    assert {p: p.stat().st_mtime_ns for p in (cache / "onnx").glob("*.onnx")} == mtimes


def test_onnxruntime_conv4_cache_key_differs(cache, weights, x):
    with create_backend("torch", weights=weights, cam_layer="conv4") as t:
        ref = t(x)
    with create_backend("onnxruntime", weights=weights, cam_layer="conv4") as b:
        probs, cam = b(x)
    assert cam.shape == (10, 8, 8) and np.abs(cam - ref[1]).max() <= CAM_TOL
    assert any("conv4-opset17" in p.name for p in (cache / "onnx").glob("*.onnx"))


def test_auto_picks_an_available_backend(cache, weights, x):
    with create_backend("auto", weights=weights) as b:
        assert b.name in available_backends()
        probs, cam = b(x[:3])
    assert probs.shape == (3, 6) and cam.shape == (3, 4, 4)


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_empty_and_bad_batches(cache, weights, name):
    with create_backend(name, weights=weights) as b:
        probs, cam = b(np.zeros((0, 3, 64, 64), np.float32))
        assert probs.shape == (0, 6)
        with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
            b(np.zeros((3, 64, 64), np.float32))


def test_bad_options_are_clear(weights):
    with pytest.raises(GimefiveError, match="cam_layer"):
        create_backend("torch", weights=weights, cam_layer="conv2")
    with pytest.raises(GimefiveError, match="precision"):
        create_backend("onnxruntime", weights=weights, precision="fp8")
    with pytest.raises(GimefiveError, match="fp16 needs CUDA"):
        create_backend("torch", weights=weights, precision="fp16", device="cpu")


def test_int8_calibration_batches_cover_every_face():
    from gimefive.export.quantize import calibration_batches

    x = np.zeros((70, 3, 64, 64), np.float32)
    assert [len(b) for b in calibration_batches(x, 32)] == [32, 32, 6]
    with pytest.raises(GimefiveError, match="non-empty"):
        calibration_batches(x[:0])


def test_onnxruntime_int8_from_training_crops(fer_data, cache, weights, x, reference):
    with create_backend("onnxruntime", weights=weights, precision="int8",
                        calibration_faces=64) as b:
        probs, cam = b(x)
    assert probs.shape == (10, 6) and cam.shape == (10, 4, 4)
    assert np.abs(probs - reference[0]).max() < 0.05  # quantized, so close, not equal
    info = next((cache / "onnx").glob("*int8-cal64.verification.json")).read_text()
    assert "rafdb_train.csv" in info and '"cam_head": "fp32"' in info


def test_auto_choice_prefers_gpu_paths(monkeypatch):
    import onnxruntime as ort
    import torch

    from gimefive.backends import base
    from gimefive.backends.base import auto_choice

    assert auto_choice() == ("onnxruntime", {})  # this CPU-only machine
    monkeypatch.setattr(base, "cuda_driver_present", lambda: True)  # torch is asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_choice() == ("torch", {"device": "cuda", "precision": "fp16",
                                       "cam_method": "graph"})
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert auto_choice() == ("onnxruntime", {})


def test_full_backward_cam_equals_autograd_cam(weights, x, reference):
    with create_backend("torch", weights=weights, cam_method="backward") as b:
        probs, cam = b(x)
        assert all(p.grad is None for p in b.model.parameters())  # left clean
    assert np.abs(probs - reference[0]).max() <= 1e-6
    assert np.abs(cam - reference[1]).max() <= 1e-5
