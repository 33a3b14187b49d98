"""The optional 68-point landmarks (dlib, extra ``gimefive[landmarks68]``).

Without the extra: asking for them is one clear line (tested everywhere by hiding dlib).
With it (scripts/setup.sh installs it): the predictor's points sit on the astronaut's
face, agree with the detector's eyes, and `annotate --landmarks68` writes them per face.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from test_pipeline import clip, weights  # noqa: F401 - module fixtures reused
from test_train import run_cli

from gimefive import landmarks68
from gimefive.detector import FaceDetector

NEEDS_EXTRA = pytest.mark.skipif(landmarks68.unavailable_reason() is not None,
                                 reason=str(landmarks68.unavailable_reason()))


def test_missing_extra_is_one_line(tmp_path, clip, weights, capsys, monkeypatch):  # noqa: F811
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dlib" else real(name, *a))
    code, _, err = run_cli(capsys, "annotate", str(clip[0]), "-o", str(tmp_path / "o.mp4"),
                           "--weights", str(weights), "--landmarks68", "-q")
    assert code == 2 and not (tmp_path / "o.mp4").exists()
    assert err.strip() == ("gimefive: error: 68-point landmarks need dlib-bin, which is not "
                           f"installed: {landmarks68.INSTALL_HINT}")


@NEEDS_EXTRA
def test_points_lie_on_the_face_and_match_the_detector(astronaut_bgr):
    (faces,) = FaceDetector().detect([astronaut_bgr])
    (box,), (five,) = faces.boxes, faces.landmarks
    points = landmarks68.Landmarks68()(astronaut_bgr, faces.boxes)[0]
    assert points.shape == (68, 2)
    x1, y1, x2, y2 = box
    margin = 0.15 * (x2 - x1)
    assert np.all((points[:, 0] > x1 - margin) & (points[:, 0] < x2 + margin))
    assert np.all((points[:, 1] > y1 - margin) & (points[:, 1] < y2 + margin))
    # iBUG 300-W order: 36..41 the image-left eye, 42..47 the image-right eye
    eyes = np.stack([points[36:42].mean(0), points[42:48].mean(0)])
    assert np.abs(eyes - five[:2]).max() < 0.08 * (x2 - x1), (eyes, five[:2])


@pytest.mark.integration
@NEEDS_EXTRA
def test_annotate_writes_68_points_per_face(tmp_path, clip, weights, capsys):  # noqa: F811
    jsonl = tmp_path / "faces.jsonl"
    code, _, err = run_cli(capsys, "annotate", str(clip[0]), "--json", str(jsonl),
                           "--weights", str(weights), "--backend", "torch", "--landmarks68",
                           "-q")
    assert code == 0, err
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for record in records:
        (face,) = record["faces"]
        points = np.array(face["landmarks68"])
        x1, y1, x2, y2 = face["box"]
        assert points.shape == (68, 2)
        assert x1 - 10 < points[:, 0].mean() < x2 + 10 and y1 - 10 < points[:, 1].mean() < y2 + 10
