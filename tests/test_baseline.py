"""The paper-script baseline (gimefive/pipeline/bench/paper_baseline.py, run by bench and
by the benchmarks/paper_baseline.py wrapper) and its wiring into bench."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from gimefive.pipeline.bench import bench_file, system_bench
from gimefive.pipeline.bench.scenes import astronaut_face, make_scene_video

REPO = Path(__file__).resolve().parent.parent
SCRIPT = bench_file("paper_baseline.py")
WRAPPER = REPO / "benchmarks" / "paper_baseline.py"
VENV_PYTHON = REPO / "benchmarks" / ".venv-baseline" / "bin" / "python"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("clip") / "astronaut.mp4"
    face = astronaut_face()
    truth = make_scene_video(path, [(face, None), (face[:, ::-1].copy(), None)], 640, 360,
                             n_frames=4, fps=25, sizes=(90, 140))
    return path, truth


@pytest.mark.integration
@pytest.mark.skipif(hasattr(cv2, "CascadeClassifier"),
                    reason="this OpenCV still has the Haar cascade")
def test_refuses_opencv_without_haar_cascade(clip, weights):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(clip[0]), "--weights",
                           str(weights)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no CascadeClassifier" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("script", [SCRIPT, WRAPPER], ids=["packaged", "wrapper"])
def test_missing_video_is_one_line(weights, script):
    proc = subprocess.run([sys.executable, str(script), "nope.mp4", "--weights", str(weights)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "video not found" in proc.stderr


@pytest.mark.integration
@pytest.mark.skipif(not VENV_PYTHON.is_file(),
                    reason="baseline venv absent (bash benchmarks/setup_baseline_venv.sh)")
def test_baseline_runs_in_its_venv_and_bench_scores_it(clip, weights, tmp_path):
    """bench starts the script in its OpenCV 4 venv; Haar finds the frontal faces."""
    path, truth = clip
    item = {"name": "clip", "path": str(path), "truth": truth}
    res = system_bench.bench_baseline(item, weights, 1, VENV_PYTHON.parent.parent, tmp_path,
                                      max_frames=3)
    assert "skipped" not in res, res
    assert res["frames"] == 3 and len(res["fps"]["runs"]) == 1 and res["fps"]["median"] > 0
    assert res["versions"]["opencv"].startswith("4.")
    assert res["faces_truth"] == 3 * truth["faces_per_frame"]  # scored on the frames run
    assert res["faces_matched"] >= 3, res  # at least one face per frame


def test_absent_venv_is_reported_not_created(tmp_path):
    reason = system_bench.ensure_baseline_venv(tmp_path / "no-venv", create=False)
    assert "setup_baseline_venv.sh" in reason
    assert not (tmp_path / "no-venv").exists()
