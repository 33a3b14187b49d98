"""Build-on-first-use ONNX artifacts for the backends, cached by what they depend on.

A backend asks for ``onnx_artifact(weights, cam_layer, with_cam, precision)`` and gets
a path under ``~/.cache/gimefive/onnx/``; the first call exports (and verifies) the
graph, later calls (and other processes) reuse it. Files are written under a
process-unique temporary name and renamed into place, so concurrent first uses by
several pipeline processes never see a half-written model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gimefive.export.onnx_export import (
    OPSET,
    check_onnx,
    export_probs_onnx,
    export_verified,
    report_path,
    state_sha256,
)

from gimefive.backends.cache import artifact_key, cache_dir, weights_sha256
from gimefive.errors import GimefiveError

PRECISIONS = ("fp32", "int8")
#: faces used to verify a graph built on first use (the export command uses more)
VERIFY_FACES = 16
#: training crops that calibrate INT8 (benchmarks/int8_accuracy.py; docs/int8.md)
CALIBRATION_FACES = 2048


def onnx_key(weights_hash: str, cam_layer: str, with_cam: bool, precision: str,
             opset: int = OPSET, calibration_faces: int = CALIBRATION_FACES) -> str:
    """The artifact's file stem; INT8 keys name the quantization method, so a cache built
    with another method is never reused."""
    from gimefive.export.quantize import DEFAULT_METHOD

    head = cam_layer if with_cam else "probs"
    method = DEFAULT_METHOD.tag if precision == "int8" else ""
    calib = f"cal{calibration_faces}" if precision == "int8" else ""
    return artifact_key("gimefive", weights_hash, head, f"opset{opset}", method, precision,
                        calib)


def onnx_artifact(weights: str | Path | None = None, cam_layer: str = "conv5",
                  with_cam: bool = True, precision: str = "fp32", model=None,
                  opset: int = OPSET, calibration_faces: int = CALIBRATION_FACES) -> Path:
    """The cached ONNX file for these settings, building it when missing."""
    if precision not in PRECISIONS:
        raise GimefiveError(f"ONNX precision must be one of {PRECISIONS}, got {precision!r}")
    if model is None:
        from gimefive.checkpoint import load_model

        whash = weights_sha256(weights)
        if not whash:
            model, _ = load_model(weights)  # raises the clear missing-weights error
    else:
        whash = state_sha256(model)
    key = onnx_key(whash, cam_layer, with_cam, precision, opset, calibration_faces)
    path = cache_dir("onnx") / (key + ".onnx")
    if path.is_file():
        return path
    if model is None:
        from gimefive.checkpoint import load_model

        model, _ = load_model(weights)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        if precision == "int8":
            _build_int8(tmp, weights, cam_layer, with_cam, model, opset, calibration_faces)
        elif with_cam:
            export_verified(model, tmp, cam_layer, opset=opset, n_faces=VERIFY_FACES,
                            weights_id={"sha256": whash})
            os.replace(report_path(tmp), report_path(path))
        else:
            export_probs_onnx(model, tmp, opset)
            check_onnx(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        report_path(tmp).unlink(missing_ok=True)
    return path


def _build_int8(tmp: Path, weights, cam_layer: str, with_cam: bool, model, opset: int,
                n_faces: int) -> None:
    from gimefive.export.faces import calibration_faces
    from gimefive.export.quantize import DEFAULT_METHOD, QUANTIZED_OPS, quantize_int8

    fp32 = onnx_artifact(weights, cam_layer, with_cam, "fp32", model, opset)
    faces = calibration_faces(n_faces)
    quantize_int8(fp32, tmp, faces.x)
    info = {"precision": "int8", "from": fp32.name, "calibration": faces.source,
            "method": DEFAULT_METHOD.tag, "quantized_ops": list(QUANTIZED_OPS),
            "cam_head": "fp32"}
    final = tmp.with_name(tmp.name.replace(f".{os.getpid()}.tmp", ""))
    report_path(final).write_text(json.dumps(info, indent=2))
