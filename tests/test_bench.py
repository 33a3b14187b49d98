"""`gimefive bench` (gimefive.pipeline.bench) and its benchmarks/ wrappers: wiring, reports,
bad options.

These run the real measurements on a tiny generated clip with the heavy parts skipped;
they check what is written, never how fast anything is (speed lives in the reports).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gimefive.pipeline.bench import system_bench

from gimefive.cli import cli, main

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path, *extra, scenes="closeup"):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "-o", str(out), "--resolutions", "640x360",
                                      "--frames", "10", "--repeat", "1", "--scenes", scenes,
                                      *extra])
    return result, out


def test_help_names_every_part():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    for word in ("decode", "detect", "classify", "pipeline", "baseline", "scaling"):
        assert word in result.output


def test_decode_and_detect_only_report(tmp_path):
    result, out = run_bench(tmp_path, "--skip", "classify,pipeline,baseline,scaling")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    (item,) = data["inputs"]
    assert item["width"] == 640 and item["height"] == 360
    assert item["decode"]["frames"] == 10 and item["decode"]["fps"]["median"] > 0
    assert len(item["decode"]["fps"]["runs"]) == 1
    detect = item["detect"]
    assert detect["fps"]["median"] > 0
    assert detect["faces_truth"] == 10 * item["faces_per_frame"]
    assert 0 <= detect["recall"] <= 1 and detect["faces_found"] >= detect["faces_matched"]
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"]
    md = (out / "bench.md").read_text()
    assert "| decode only (PyAV) |" in md and "| detect only (RetinaFace) |" in md
    assert "annotate pipeline" not in md
    assert (out / "fps_and_faces.png").stat().st_size > 1000
    assert "pipeline" not in item and "baseline" not in item


def test_wide_scene_uses_its_detector_settings_and_reports_recall_by_size(tmp_path):
    result, out = run_bench(tmp_path, "--skip", "decode,classify,pipeline,baseline,scaling",
                            scenes="wide")
    assert result.exit_code == 0, result.output
    (item,) = json.loads((out / "bench.json").read_text())["inputs"]
    assert item["name"] == "640x360 wide" and item["faces_per_frame"] == 12
    assert item["overrides"] == {"detect_max_side": 1280, "detect_upscale": True}
    assert item["detect"]["max_side"] == 1280
    by_size = {int(k): v for k, v in item["detect"]["recall_by_size"].items()}
    assert sorted(by_size) == item["face_sizes"] and min(by_size) == 16
    assert all(0 <= v <= 1 for v in by_size.values())
    assert "Recall at IoU 0.5 by face size (px):" in (out / "bench.md").read_text()


def test_unknown_scene_is_a_bad_parameter(tmp_path):
    result, _ = run_bench(tmp_path, scenes="closeup,crowd")
    assert result.exit_code == 2 and "--scenes" in result.output


@pytest.mark.slow
def test_pipeline_and_classify_in_one_run(tmp_path):
    result, out = run_bench(tmp_path, "--skip", "decode,detect,baseline,scaling", "--no-warmup",
                            "--classify-configs", "onnxruntime fp32",
                            "--classify-batches", "1,4")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    pipe = data["inputs"][0]["pipeline"]
    assert pipe["frames"] == 10 and pipe["fps"]["median"] > 0
    assert set(pipe["stages"]) == {"source", "detect", "classify", "track", "annotate"}
    assert all(st["max_rss_mb"] > 0 for st in pipe["stages"].values())
    assert all(0 < st["startup_s"] < pipe["wall_s_median_run"] for st in pipe["stages"].values())
    assert pipe["recall"] > 0.5  # faces came through the whole pipeline to the JSON lines
    assert set(pipe["latency_ms"]) == {"p50", "p95", "p99"}
    assert pipe["parallel_efficiency_recomputed"] == pytest.approx(
        pipe["parallel_efficiency"]["median_run"], abs=0.02)
    rows = data["classify"]["rows"]
    assert [(r["config"], r["batch"]) for r in rows] == [("onnxruntime fp32", 1),
                                                          ("onnxruntime fp32", 4)]
    md = (out / "bench.md").read_text()
    assert "| annotate pipeline |" in md and "Classify only" in md and "| classify |" in md
    assert "| peak RSS MB | start-up s |" in md
    assert (out / "classify.png").is_file() and (out / "pipeline_stages.png").is_file()


@pytest.mark.integration
def test_a_failing_pipeline_is_recorded_and_the_run_goes_on(tmp_path):
    result, out = run_bench(tmp_path, "--skip", "classify,baseline,scaling,detect",
                            "--no-warmup", "--backend", "nonsense")
    assert result.exit_code == 0, result.output
    item = json.loads((out / "bench.json").read_text())["inputs"][0]
    assert "nonsense" in item["pipeline"]["skipped"] and item["decode"]["fps"]["median"] > 0
    assert "| annotate pipeline | - |" in (out / "bench.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--skip", "nonsense"], "unknown part"),
    (["--resolutions", "1920x1080"], "expected a comma list"),
    (["--repeat", "0"], "must be >= 1"),
    (["--classify-batches", "a,b"], "positive integers"),
    (["no_such_video.mp4"], "video not found"),
    (["--face-sizes", "80"], "MIN,MAX"),
])
def test_bad_options_are_one_clear_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "-o", str(tmp_path / "o"), *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_weights_file_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pt"),
              "--skip", "decode,detect,classify,pipeline,baseline,scaling"])
    assert exc.value.code != 0
    assert "weights" in capsys.readouterr().err


def test_scaling_step_reads_status_records(tmp_path):
    def record(t, written, decoded, dropped):
        return {"kind": "status", "uptime_s": t, "streams": {
            "cam0": {"written": written, "decoded": decoded, "dropped": dropped},
            "cam1": {"written": written // 2, "decoded": decoded, "dropped": dropped * 20}}}
    lines = [record(1, 0, 5, 0), record(2, 10, 10, 0), record(6, 60, 80, 0),
             record(16, 310, 330, 1)]
    status = tmp_path / "s.jsonl"
    status.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    # frames flow from 2 s; warm-up 4 s: measured from 6 s to 16 s
    step = system_bench.scaling_step(status, 2, warmup_s=4, target_fps=25)
    assert step["fps_out"] == [25.0, 12.5]  # (310-60)/10 and (155-30)/10
    assert step["dropped_fraction"] == [0.004, 0.08]
    assert step["sustained"] is False
    one = system_bench.scaling_step(status, 1, warmup_s=20, target_fps=25)
    assert one["sustained"] is False and "status records" in one["error"]


def test_scaling_step_gives_each_stages_cpu_per_frame_written(tmp_path):
    def record(t, written, detect_s, annotate_s, restarts):
        return {"kind": "status", "uptime_s": t,
                "streams": {"cam0": {"written": written, "decoded": written, "dropped": 0}},
                "stages": {"detect": {"cpu_s": detect_s, "restarts": 0},
                           "annotate": {"cpu_s": annotate_s, "restarts": restarts},
                           "track": {"cpu_s": None, "restarts": 0}}}
    status = tmp_path / "s.jsonl"
    status.write_text("\n".join(json.dumps(r) for r in [
        record(1, 5, 0.5, 0.2, 0), record(11, 255, 1.5, 0.1, 1)]) + "\n")
    step = system_bench.scaling_step(status, 1, warmup_s=0, target_fps=25)
    # 1 s of detect CPU over 250 frames; annotate restarted (its CPU from 0), track dead
    assert step["cpu_ms_per_frame"] == {"detect": 4.0}


def test_steal_share_is_the_eighth_counter_of_the_cpu_time():
    from gimefive.pipeline.bench.machine import cpu_times, steal_share

    assert steal_share([100, 0, 50, 800, 0, 0, 0, 0], [300, 0, 150, 1400, 0, 0, 0, 100]) \
        == 0.1
    assert steal_share(None, [1] * 8) is None and steal_share([1] * 8, [1] * 8) is None
    now = cpu_times()
    assert now is None or (len(now) >= 8 and all(v >= 0 for v in now))


def test_ratios():
    res = {"decode": {"fps": {"median": 400.0}},
           "pipeline": {"fps": {"median": 20.0}, "frames": 100, "faces_found": 480,
                        "faces_matched": 470, "parallel_efficiency": {"median_run": 0.85}},
           "baseline": {"fps": {"median": 5.0}, "frames": 50, "faces_found": 60,
                        "faces_matched": 55}}
    r = system_bench.ratios(res)
    assert r["pipeline_over_baseline_fps"] == 4.0
    assert r["pipeline_over_decode_fps"] == 0.05
    assert r["pipeline_over_baseline_faces_found"] == 4.0   # 4.8 vs 1.2 per frame
    assert r["pipeline_over_baseline_faces_matched"] == pytest.approx(4.27, abs=0.01)
    assert r["parallel_efficiency"] == 0.85


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_check_fails_early_and_clearly_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
                          capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path)},
                          timeout=60)
    assert proc.returncode == 3
    assert "gpu_check:" in proc.stderr and "NVIDIA GPU" in proc.stderr


@pytest.mark.integration
def test_gpu_check_python_part_reports_environment_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the real check would run")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path)},
                          timeout=120)
    assert proc.returncode == 3 and "no CUDA device" in proc.stderr
    env = json.loads((tmp_path / "gpu_check.json").read_text())["environment"]
    assert env["cuda_available"] is False and env["torch"] == torch.__version__
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]


@pytest.mark.integration
def test_script_wrapper_is_the_cli_command():
    """`python benchmarks/system_bench.py` runs `gimefive bench` itself: one set of options,
    one help text, from any working directory."""
    script = subprocess.run([sys.executable, str(REPO / "benchmarks" / "system_bench.py"),
                             "--help"], capture_output=True, text=True, timeout=60,
                            cwd=REPO / "tests")
    command = CliRunner().invoke(cli, ["bench", "--help"], prog_name="gimefive")
    assert script.returncode == 0, script.stderr
    assert "".join(script.stdout.split()) == "".join(command.output.split())  # wrap width
    assert "--classify-configs" in script.stdout and "Usage: gimefive bench" in script.stdout


@pytest.mark.integration
def test_script_wrapper_reports_bad_options_like_the_cli():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "system_bench.py"),
                           "--skip", "nonsense"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown part" in proc.stderr and "Traceback" not in proc.stderr
