"""GiMeFive to ONNX with probabilities and in-graph Grad-CAM, verified against PyTorch.

The graph: input ``input`` float32 [N,3,64,64] (N dynamic), optional ``class_index``
int64 [N]; outputs ``probs`` [N,6] and ``cam`` [N,h,w] (4x4 at conv5, 8x8 at conv4).
Opset 17, through PyTorch's TorchScript-based exporter (the dynamo exporter emits
opset 18+ only, and TensorRT's parser is best tested on 17).

An export verifies itself: ``onnx.checker`` (full check, with shape inference), then
ONNX Runtime on real faces against autograd Grad-CAM in PyTorch, at batch 1 and at
the full set (the dynamic batch axis). A failed check raises and leaves no model behind.

torch is imported by the functions that export, not by this module: the backends import
it (through :mod:`gimefive.export.artifacts`) only to find a graph already cached, and a
stage running ONNX Runtime must not pay for importing torch.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gimefive.digest import file_sha256
from gimefive.errors import GimefiveError

if TYPE_CHECKING:
    import torch

OPSET = 17
INPUT_NAME, CLASS_NAME = "input", "class_index"
OUTPUT_NAMES = ("probs", "cam")
PROBS_TOL, CAM_TOL = 1e-5, 1e-4


class ExportError(GimefiveError):
    """An export that failed its own verification."""


@dataclass
class ExportResult:
    path: Path
    report: dict


def state_sha256(model: torch.nn.Module) -> str:
    """A hash of the weights themselves, for models that did not come from a file."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def export_onnx(model, path: str | Path, cam_layer: str = "conv5", class_input: bool = False,
                opset: int = OPSET) -> Path:
    """Write the (probs, cam) graph of ``model`` to ``path`` (weights embedded, no checks)."""
    import torch

    from gimefive.cam_graph import GiMeFiveCam

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = GiMeFiveCam(model.float().cpu(), cam_layer, class_input=class_input)
    x = torch.zeros(2, 3, 64, 64)
    args: tuple = (x,)
    names = [INPUT_NAME]
    axes = {INPUT_NAME: {0: "batch"}, "probs": {0: "batch"}, "cam": {0: "batch"}}
    if class_input:
        args = (x, torch.zeros(2, dtype=torch.int64))
        names.append(CLASS_NAME)
        axes[CLASS_NAME] = {0: "batch"}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapper, args, str(tmp), dynamo=False, opset_version=opset,
                          input_names=names, output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, do_constant_folding=True)
    model.eval()
    tmp.replace(path)
    return path


def _probs_only(model) -> torch.nn.Module:
    """``model`` followed by softmax (a class made here: this module imports no torch)."""
    import torch

    class ProbsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(x), dim=1)

    return ProbsOnly()


def export_probs_onnx(model, path: str | Path, opset: int = OPSET) -> Path:
    """The classifier alone (``input`` -> ``probs``): what a backend runs when no CAM is asked."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_probs_only(model.float().cpu()), (torch.zeros(2, 3, 64, 64),), str(tmp),
                          dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=["probs"], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, "probs": {0: "batch"}})
    model.eval()
    tmp.replace(path)
    return path


def check_onnx(path: str | Path) -> list[str]:
    """``onnx.checker`` full check; returns the graph's operator types."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejected the graph: {exc}") from None
    return sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node})


def reference_outputs(model, x: np.ndarray, cam_layer: str,
                      class_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Autograd Grad-CAM in fp32 PyTorch: the definition the graph must reproduce."""
    import torch

    from gimefive.backends.torch_backend import autograd_gradcam

    model = model.float().cpu().eval()
    cls = None if class_index is None else torch.from_numpy(class_index)
    logits, cam = autograd_gradcam(model, torch.from_numpy(x), cam_layer, cls)
    return torch.softmax(logits, 1).numpy(), cam.numpy()


def verify_onnx(path: str | Path, model, x: np.ndarray, cam_layer: str = "conv5",
                class_input: bool = False, probs_tol: float = PROBS_TOL,
                cam_tol: float = CAM_TOL) -> dict:
    """Compare ONNX Runtime (CPU, fp32) with the autograd reference; raise when out of tolerance.

    Every face must meet the CAM tolerance unless the two runtimes took different ReLU,
    max-pool or arg-max branches for it (:mod:`gimefive.export.boundaries`); such faces
    are counted and reported, and more than 10% of them over tolerance fails the check.
    """
    import onnxruntime as ort
    from gimefive.export.boundaries import MAX_BOUNDARY_FRACTION, boundary_faces

    ops = check_onnx(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 6, size=len(x)).astype(np.int64) if class_input else None
    ref_probs, ref_cam = reference_outputs(model, x, cam_layer, cls)
    extra = {CLASS_NAME: cls} if class_input else {}
    boundary = boundary_faces(path, model, x, cam_layer, class_input, extra)
    probs_diff, cam_diff = np.zeros(len(x)), np.zeros(len(x))
    for batch in _batches(len(x)):
        feed = {INPUT_NAME: x[batch], **{k: v[batch] for k, v in extra.items()}}
        probs, cam = session.run(list(OUTPUT_NAMES), feed)
        n = len(cam)
        probs_diff[batch] = np.maximum(probs_diff[batch],
                                       np.abs(probs - ref_probs[batch]).reshape(n, -1).max(1))
        cam_diff[batch] = np.maximum(cam_diff[batch],
                                     np.abs(cam - ref_cam[batch]).reshape(n, -1).max(1))
    over = cam_diff > cam_tol
    unexplained, excused = over & ~boundary, over & boundary
    allowed = max(1, int(MAX_BOUNDARY_FRACTION * len(x)))
    report = {
        "checker": "passed", "operators": ops, "faces": int(len(x)),
        "batch_sizes": sorted({b.stop - b.start for b in _batches(len(x))}),
        "probs_max_abs_diff": float(probs_diff.max()),
        "cam_max_abs_diff": float(cam_diff[~excused].max(initial=0.0)),
        "probs_tolerance": probs_tol, "cam_tolerance": cam_tol,
        "boundary_faces": int(boundary.sum()),
        "boundary_faces_over_tolerance": int(excused.sum()),
        "boundary_faces_allowed_over_tolerance": allowed,
        "cam_max_abs_diff_all_faces": float(cam_diff.max()),
        "cam_shape": list(ref_cam.shape[1:]),
    }
    if probs_diff.max() > probs_tol or unexplained.any() or excused.sum() > allowed:
        raise ExportError(
            f"{path}: ONNX output differs from PyTorch autograd Grad-CAM: probs max abs diff "
            f"{probs_diff.max():.2e} (tolerance {probs_tol:.0e}); {int(unexplained.sum())} "
            f"face(s) with CAM diff over {cam_tol:.0e} (worst {cam_diff.max():.2e}) not "
            f"explained by a ReLU/max-pool branch boundary, {int(excused.sum())} explained "
            f"(at most {allowed})")
    report["passed"] = True
    return report


def _batches(n: int) -> list[slice]:
    """Batch 1 and the whole set: exercises the dynamic batch axis at both ends."""
    return [slice(0, 1), slice(0, n)] if n > 1 else [slice(0, 1)]


def export_verified(model, path: str | Path, cam_layer: str = "conv5",
                    class_input: bool = False, opset: int = OPSET, faces=None,
                    weights_id: dict | None = None, config: dict | None = None,
                    n_faces: int = 64) -> ExportResult:
    """Export, verify on real faces, and write ``<name>.json`` (report) beside the model.

    On a failed check the model file is removed, so no unverified graph is left behind.
    """
    import torch
    from gimefive.export.faces import verification_faces

    path = Path(path)
    faces = faces if faces is not None else verification_faces(n_faces)
    t0 = time.perf_counter()
    export_onnx(model, path, cam_layer, class_input, opset)
    try:
        report = verify_onnx(path, model, faces.x, cam_layer, class_input)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    report.update({
        "format": "onnx", "opset": opset, "path": str(path), "sha256": file_sha256(path),
        "cam_layer": cam_layer, "class_input": class_input, "faces_source": faces.source,
        "inputs": [INPUT_NAME] + ([CLASS_NAME] if class_input else []),
        "outputs": {"probs": ["batch", 6], "cam": ["batch", *report["cam_shape"]]},
        "weights": weights_id or {"sha256": state_sha256(model)},
        "seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    })
    if config is not None:
        report["config"] = config
    report_path(path).write_text(json.dumps(report, indent=2))
    return ExportResult(path, report)


def report_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".verification.json")
