"""Closed-form Grad-CAM and the ONNX export: parity with autograd, checker, dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from gimefive.export.faces import fallback_faces, load_split
from gimefive.export.onnx_export import (
    CAM_TOL,
    OPSET,
    PROBS_TOL,
    ExportError,
    export_verified,
    report_path,
    verify_onnx,
)
from stand_in import random_model

from gimefive.backends.torch_backend import autograd_gradcam
from gimefive.cam_graph import GiMeFiveCam, normalize_cam, route_maxpool_grad


@pytest.fixture(scope="module")
def model():
    return random_model(seed=1)


@pytest.fixture(scope="module")
def faces():
    return fallback_faces(12, seed=3)


@pytest.fixture(scope="module")
def conv5_onnx(model, faces, tmp_path_factory):
    return export_verified(model, tmp_path_factory.mktemp("onnx") / "g5.onnx", "conv5",
                           faces=faces)


@pytest.fixture(scope="module")
def conv4_class_onnx(model, faces, tmp_path_factory):
    return export_verified(model, tmp_path_factory.mktemp("onnx") / "g4c.onnx", "conv4",
                           class_input=True, faces=faces)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("layer,size", [("conv5", 4), ("conv4", 8)])
def test_closed_form_matches_autograd_in_torch(model, faces, layer, size):
    x = torch.from_numpy(faces.x)
    logits, ref = autograd_gradcam(model, x, layer)
    with torch.no_grad():
        probs, cam = GiMeFiveCam(model, layer)(x)
    assert cam.shape == (len(x), size, size)
    assert torch.allclose(probs, logits.softmax(1), atol=1e-6)
    assert (cam - ref).abs().max().item() < 1e-5
    assert ref.amax(dim=(1, 2)).min() > 0.99  # non-trivial maps, each scaled to reach 1


def test_closed_form_with_given_class(model, faces):
    x = torch.from_numpy(faces.x)
    cls = torch.arange(len(x)) % 6
    _, ref = autograd_gradcam(model, x, "conv4", cls)
    with torch.no_grad():
        _, cam = GiMeFiveCam(model, "conv4", class_input=True)(x, cls)
        _, predicted = GiMeFiveCam(model, "conv4")(x)
    assert (cam - ref).abs().max().item() < 1e-5
    assert (cam - predicted).abs().max().item() > 0.05  # the class input changes the map


def test_maxpool_routing_matches_autograd_including_ties():
    g = torch.Generator().manual_seed(0)
    pre = torch.randint(0, 3, (2, 3, 6, 8), generator=g).float()  # many exact ties
    pre.requires_grad_(True)
    pooled = F.max_pool2d(pre, 2)
    grad_out = torch.randn(pooled.shape, generator=g)
    (ref,) = torch.autograd.grad((pooled * grad_out).sum(), pre)
    ours = route_maxpool_grad(pre.detach(), pooled.detach(), grad_out)
    assert torch.equal(ours, ref)


def test_normalize_cam_range_and_flat_map():
    cam = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0),
                       torch.arange(16.0).reshape(4, 4)])
    out = normalize_cam(cam)
    assert torch.equal(out[0], torch.zeros(4, 4)) and torch.equal(out[1], torch.zeros(4, 4))
    assert out[2].min() == 0 and out[2].max() == 1


def test_export_passes_checker_and_states_opset(conv5_onnx):
    m = onnx.load(str(conv5_onnx.path))
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain: o.version for o in m.opset_import}[""] == OPSET
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["probs", "cam"]
    dims = [d.dim_param or d.dim_value for d in m.graph.output[1].type.tensor_type.shape.dim]
    assert dims == ["batch", 4, 4]


def test_export_parity_report_written(conv5_onnx):
    report = json.loads(report_path(conv5_onnx.path).read_text())
    assert report["passed"] and report["checker"] == "passed"
    assert report["probs_max_abs_diff"] <= PROBS_TOL and report["cam_max_abs_diff"] <= CAM_TOL
    assert report["batch_sizes"] == [1, 12] and report["opset"] == OPSET
    assert "Softmax" in report["operators"] and "Loop" not in report["operators"]


@pytest.mark.parametrize("n", [1, 3, 33])
def test_dynamic_batch(model, conv5_onnx, n):
    x = np.random.default_rng(n).normal(size=(n, 3, 64, 64)).astype(np.float32)
    probs, cam = session(conv5_onnx.path).run(None, {"input": x})
    logits, ref = autograd_gradcam(model, torch.from_numpy(x), "conv5")
    assert probs.shape == (n, 6) and cam.shape == (n, 4, 4)
    assert np.abs(probs - logits.softmax(1).numpy()).max() <= PROBS_TOL
    assert np.abs(cam - ref.numpy()).max() <= CAM_TOL


def test_class_input_variant_conv4(model, faces, conv4_class_onnx):
    s = session(conv4_class_onnx.path)
    assert [i.name for i in s.get_inputs()] == ["input", "class_index"]
    cls = np.array([5, 4, 3, 2, 1, 0] * 2, dtype=np.int64)
    probs, cam = s.run(None, {"input": faces.x, "class_index": cls})
    _, ref = autograd_gradcam(model, torch.from_numpy(faces.x), "conv4", torch.from_numpy(cls))
    assert cam.shape == (12, 8, 8)
    assert np.abs(cam - ref.numpy()).max() <= CAM_TOL


def test_failed_verification_is_loud_and_leaves_no_model(model, faces, tmp_path, monkeypatch):
    import gimefive.export.onnx_export as ox

    real = ox.verify_onnx
    monkeypatch.setattr(ox, "verify_onnx",
                        lambda *a, **k: real(*a, **{**k, "cam_tol": 0.0, "probs_tol": 0.0}))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch autograd"):
        export_verified(model, out, "conv5", faces=faces)
    assert not out.exists() and not report_path(out).exists()


def test_verify_detects_a_wrong_graph(model, faces, conv5_onnx):
    other = random_model(seed=2)  # same architecture, other weights: must not pass
    with pytest.raises(ExportError):
        verify_onnx(conv5_onnx.path, other, faces.x, "conv5")


@pytest.mark.parametrize("layer", ["conv5", "conv4"])
def test_parity_on_real_rafdb_faces(fer_data, model, layer, tmp_path):
    real = load_split("rafdb_test", limit=48, seed=0, root=fer_data)
    result = export_verified(model, tmp_path / f"{layer}.onnx", layer, faces=real)
    assert result.report["faces_source"].startswith("rafdb_test.csv")
    assert result.report["cam_max_abs_diff"] <= CAM_TOL


@pytest.mark.parametrize("layer", ["conv5", "conv4"])
def test_parity_with_shipped_weights_on_real_faces(fer_data, layer, tmp_path):
    from gimefive.checkpoint import DEFAULT_WEIGHTS, load_model

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped weights at {DEFAULT_WEIGHTS}")
    shipped, _ = load_model()
    real = load_split("rafdb_test", limit=64, seed=1, root=fer_data)
    result = export_verified(shipped, tmp_path / f"shipped-{layer}.onnx", layer, faces=real)
    assert result.report["probs_max_abs_diff"] <= PROBS_TOL
    assert result.report["cam_max_abs_diff"] <= CAM_TOL


def test_branch_signature_sees_relu_and_pool_flips():
    from gimefive.export.boundaries import branch_signature

    rng = np.random.default_rng(0)
    z1, z2, logits = rng.normal(size=(2, 8)), rng.normal(size=(2, 4)), rng.normal(size=(2, 6))
    bn4, bn5 = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 5, 4, 4))
    base = branch_signature(z1, z2, logits, bn4, bn5, "conv4", False)
    flipped = z2.copy()
    flipped[1, 0] = -flipped[1, 0]
    other = branch_signature(z1, flipped, logits, bn4, bn5, "conv4", False)
    assert (base != other).any(axis=1).tolist() == [False, True]
    moved = bn4.copy()
    moved[0, 0, :2, :2] = [[1.0, 2.0], [3.0, 4.0]]  # the window's argmax moves
    moved2 = moved.copy()
    moved2[0, 0, 0, 0] = 5.0
    a = branch_signature(z1, z2, logits, moved, bn5, "conv4", False)
    b = branch_signature(z1, z2, logits, moved2, bn5, "conv4", False)
    assert (a != b).any(axis=1).tolist() == [True, False]
    # conv5's channel weights only depend on whether a window passes gradient
    a5 = branch_signature(z1, z2, logits, moved, bn5, "conv5", False)
    b5 = branch_signature(z1, z2, logits, moved2, bn5, "conv5", False)
    assert not (a5 != b5).any()


def test_runtimes_rarely_sit_on_a_boundary(model, faces, conv5_onnx):
    from gimefive.export.boundaries import boundary_faces

    on_edge = boundary_faces(conv5_onnx.path, model, faces.x, "conv5", False)
    assert on_edge.shape == (12,) and on_edge.sum() <= 1
