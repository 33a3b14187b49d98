"""benchmarks/gpu_check.sh is run once on a lent GPU: its dry run (CPU, tiny sizes) shows
here that it starts and that every part of the GPU path runs, so that one call is not lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["decode"]["cpu"]["frames"] == 10
    assert result["decode"]["cpu"]["path"] == "cpu"
    assert "unavailable" in result["decode"]["cuda"] or "fps" in result["decode"]["cuda"]
    det = result["torch_detector"]
    assert "absent" in det or det["fps_frames_on_device"] > 0
    assert result["torch_crops"]["faces_per_s"] > 0
    assert result["classifier_cpu"]["faces_per_s_cam"] > 0
    annotate = result["annotate_dry_run"]
    assert annotate["frames"] == 10 and annotate["decode"].startswith("cpu")
