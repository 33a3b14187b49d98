"""`gimefive export` end to end: artifact, resolved config, report, and one-line errors."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import yaml
from stand_in import random_weights

from gimefive.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("w") / "rand.safetensors", seed=9)


def run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_export_onnx_writes_model_report_and_config(weights, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, _ = run(["export", "--weights", str(weights), "-o", str(out),
                           "--cam-layer", "conv4"], capsys)
    assert code == 0 and "opset 17" in stdout and "CAM conv4 8x8" in stdout
    report = json.loads((tmp_path / "m.verification.json").read_text())
    assert report["passed"] and report["cam_max_abs_diff"] <= 1e-4
    assert report["weights"]["path"] == str(weights) and len(report["weights"]["sha256"]) == 64
    config = yaml.safe_load((tmp_path / "m.export.yaml").read_text())
    assert config["cam_layer"] == "conv4" and config["opset"] == 17
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in s.get_outputs()] == ["probs", "cam"]


@pytest.mark.parametrize("argv,message", [
    (["--format", "tensorrt"], "TensorRT is not installed"),
    (["--precision", "fp16"], "precision 'fp16' is not offered for onnx"),
    (["-o", "/nonexistent-dir/x.onnx"], "output folder does not exist: /nonexistent-dir"),
    (["--weights", "/nonexistent.safetensors"], "weights file not found"),
])
def test_export_errors_are_one_line(weights, argv, message, capsys):
    args = ["export", *argv] + ([] if "--weights" in argv else ["--weights", str(weights)])
    code, _, err = run(args, capsys)
    assert code != 0 and message in err
    # click usage errors add "Usage:" and "Try --help" lines around the one message
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 4
