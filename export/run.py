"""What ``gimefive export`` does, as a library call: resolve the config, export, verify.

Beside every artifact: ``<name>.verification.json`` (checker, parity figures, operators,
hashes, the resolved config) and ``<name>.export.yaml`` (the resolved config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gimefive.config import (
    check_settings,
    load_config,
    save_config,
    setting,
    shipped_config,
    to_dict,
)
from gimefive.errors import GimefiveError

DEFAULT_CONFIG = shipped_config("export.yaml")
FORMATS = ("onnx", "tensorrt")
PRECISIONS = {"onnx": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}


@dataclass
class ExportConfig:
    """What ``gimefive export`` builds; ``configs/export.yaml`` is generated from it."""

    format: str = setting("onnx", choices=FORMATS, help="onnx (any machine) or tensorrt "
                          "(needs an NVIDIA GPU with TensorRT).")
    precision: str = setting("fp32", choices=("fp32", "fp16", "int8"), help="onnx: fp32 or "
                             "int8 (static, calibrated on training faces); tensorrt: fp32, "
                             "fp16 or int8.")
    cam_layer: str = setting("conv5", choices=("conv5", "conv4"), help="Grad-CAM layer: "
                             "conv5 (4x4 map, the paper's) or conv4 (8x8, finer).")
    class_input: bool = setting(False, help="Add an int64 input `class_index` [N] choosing "
                                "the explained class.")
    opset: int = setting(17, min=13, help="ONNX opset.")
    weights: str | None = setting(None, path=True, help="A .safetensors from `gimefive "
                                  "train` or the paper's .pth; not given (null): the "
                                  "shipped weights.")
    output: str | None = setting(None, path=True, flag="-o --output", help="Where to write "
                                 "the model; not given (null): gimefive-<layer>"
                                 "[-<precision>].onnx / .engine here.")
    verify_faces: int = setting(64, min=1, help="RAF-DB test faces (else astronaut + "
                                "synthetic) compared with PyTorch autograd Grad-CAM.")
    calibration_faces: int = setting(2048, min=1, help="RAF-DB training crops for INT8 "
                                     "calibration.")
    max_batch: int = setting(128, min=1, help="TensorRT dynamic batch profile: "
                             "1..max_batch.")
    opt_batch: int = setting(32, min=1, help="TensorRT batch size optimised for.")

    def __post_init__(self) -> None:
        check_settings(self)

    def validate(self) -> ExportConfig:
        """The limit that depends on two fields (each field's own: ``__post_init__``)."""
        if self.precision not in PRECISIONS[self.format]:
            raise GimefiveError(f"precision {self.precision!r} is not offered for "
                                f"{self.format}; choose one of {PRECISIONS[self.format]}")
        return self

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        suffix = ".onnx" if self.format == "onnx" else ".engine"
        tail = "" if self.precision == "fp32" else f"-{self.precision}"
        return Path(f"gimefive-{self.cam_layer}{tail}{suffix}")


def load_export_config(path: str | Path | None = None, **overrides) -> ExportConfig:
    return load_config(ExportConfig, path or DEFAULT_CONFIG, **overrides).validate()


def run_export(config: ExportConfig) -> dict:
    """Export as configured; returns the verification report (also written beside it)."""
    from gimefive.export.faces import verification_faces
    from gimefive.export.onnx_export import export_verified, report_path

    from gimefive.checkpoint import DEFAULT_WEIGHTS, load_model
    from gimefive.digest import file_sha256

    if config.format == "tensorrt":
        from gimefive.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work when TensorRT cannot run here
    out = config.output_path()
    if out.parent and not out.parent.exists():
        raise GimefiveError(f"output folder does not exist: {out.parent}")
    model, _ = load_model(config.weights)
    weights = Path(config.weights) if config.weights else DEFAULT_WEIGHTS
    weights_id = {"path": str(weights), "sha256": file_sha256(weights)}
    faces = verification_faces(config.verify_faces)
    onnx_out = out if config.format == "onnx" and config.precision == "fp32" else \
        out.with_name(out.stem + ".fp32.onnx")
    result = export_verified(model, onnx_out, config.cam_layer, config.class_input,
                             config.opset, faces=faces, weights_id=weights_id,
                             config=to_dict(config))
    report = result.report
    if config.format == "onnx" and config.precision == "int8":
        report = _int8(onnx_out, out, faces, config, report)
    elif config.format == "tensorrt":
        report = _tensorrt(onnx_out, out, config, report)
    report_path(out).write_text(json.dumps(report, indent=2))
    save_config(config, out.with_name(out.stem + ".export.yaml"))
    return report


def _int8(fp32: Path, out: Path, faces, config: ExportConfig, fp32_report: dict) -> dict:
    """Quantize, then measure (not gate) how far INT8 moves from the fp32 graph."""
    import onnxruntime as ort
    from gimefive.export.faces import calibration_faces
    from gimefive.export.quantize import DEFAULT_METHOD, quantize_int8

    calib = calibration_faces(config.calibration_faces)
    quantize_int8(fp32, out, calib.x)
    runs = {}
    for name, path in (("fp32", fp32), ("int8", out)):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"input": faces.x}
        if config.class_input:
            feed["class_index"] = np.zeros(len(faces.x), np.int64)
        runs[name] = s.run(["probs", "cam"], feed)
    (p32, c32), (p8, c8) = runs["fp32"], runs["int8"]
    return {**fp32_report, "format": "onnx", "precision": "int8", "path": str(out),
            "sha256": _sha(out), "calibration": calib.source,
            "int8_method": DEFAULT_METHOD.tag, "fp32_reference": str(fp32),
            "int8_vs_fp32": {"faces": len(faces.x),
                             "top1_agreement": float((p32.argmax(1) == p8.argmax(1)).mean()),
                             "probs_max_abs_diff": float(np.abs(p32 - p8).max()),
                             "cam_mean_abs_diff": float(np.abs(c32 - c8).mean())}}


def _tensorrt(onnx_path: Path, out: Path, config: ExportConfig, report: dict) -> dict:
    from gimefive.export.faces import calibration_faces
    from gimefive.export.tensorrt import build_engine, engine_key

    key = engine_key(onnx_path, config.precision, config.max_batch)
    calib = calibration_faces(config.calibration_faces).x if config.precision == "int8" else None
    build_engine(onnx_path, out, config.precision, config.max_batch, config.opt_batch,
                 calibration=calib,
                 calibration_cache=out.with_name(key.calibration_cache_name()))
    return {**report, "format": "tensorrt", "precision": config.precision, "path": str(out),
            "sha256": _sha(out), "onnx": str(onnx_path), "engine_key": key.filename(),
            "engine_verified_numerically": False}


def _sha(path: Path) -> str:
    from gimefive.digest import file_sha256

    return file_sha256(path) if os.path.exists(path) else ""
