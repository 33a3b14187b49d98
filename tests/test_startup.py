"""Stage start-up (issue 13): stages that need no torch do not import it, every stage is
spawned before any is waited for, and the summary says what each stage's start-up took.

Importing torch costs a stage seconds (2.5 s of the classify stage's 3.4 s here before
this was fixed), so with ONNX Runtime on the CPU no stage may import it. No timing
thresholds here: the figures are checked for presence and consistency only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clips import write_still_clip
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.run import annotate_video
from gimefive.pipeline.stages import ORDER
from gimefive.pipeline.summary import AnnotateResult, format_summary, startup_line, startup_of
from gimefive.pipeline.supervisor import StageProcess, Supervisor
from procs import running

from gimefive.backends.base import cuda_driver_present

CPU_ORT = {"backend": "onnxruntime", "device": "cpu"}

# What a stage process does up to its ready report: the imports of `gimefive stage`,
# then the stage's setup (models loaded, warm-up); then the torch modules it has loaded.
CHILD = """
import json, sys
import gimefive.pipeline.cli, gimefive.pipeline.run  # what `gimefive stage` imports
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.stages import stage_class

name, job, settings = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
stage = stage_class(name)(load_annotate_config(**settings), **job)
try:
    stage.setup()
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))
finally:
    stage.close()
"""


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, weights):
    """A cache holding the random weights' ONNX graph, built here (with torch): a stage
    that finds no graph exports one, and that needs torch."""
    from gimefive.export.artifacts import onnx_artifact

    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GIMEFIVE_CACHE", str(path))
    onnx_artifact(weights)
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut_bgr) -> Path:
    return write_still_clip(tmp_path_factory.mktemp("clip") / "face.mp4", astronaut_bgr,
                            (160, 120), frames=4)


def stage_job(name: str, clip: Path, tmp: Path) -> dict:
    return {"source": {"input": str(clip)},
            "annotate": {"output": str(tmp / "out.mp4"), "json": str(tmp / "out.jsonl")},
            }.get(name, {})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_no_stage_imports_torch_on_the_cpu_with_onnxruntime(backend, onnx_cache, weights,
                                                           clip, tmp_path):
    if backend == "auto" and cuda_driver_present():
        pytest.skip("a CUDA driver is here: auto may rightly choose torch")
    settings = {"backend": backend, "device": "cpu", "weights": str(weights)}
    loaded = {}
    for name in ORDER:  # each in a fresh process: one stage's imports must not hide another's
        done = subprocess.run(
            [sys.executable, "-c", CHILD, name, json.dumps(stage_job(name, clip, tmp_path)),
             json.dumps(settings)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        loaded[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {name: [] for name in ORDER}


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_each_engine_loads_once(backend, onnx_cache, weights, monkeypatch):
    """One ONNX Runtime session per stage, the warm-up included; with the graph cached,
    no stage builds the torch model (to export it, or to read the weights' metadata)."""
    import onnxruntime as ort
    from gimefive.pipeline.stages.classify import ClassifyStage
    from gimefive.pipeline.stages.detect import DetectStage

    from gimefive import checkpoint

    if backend == "auto" and cuda_driver_present():
        pytest.skip("a CUDA driver is here: auto may choose another engine")
    sessions = []
    session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda model, *a, **k: sessions.append(str(model)[-60:])
                        or session(model, *a, **k))
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("model built"))
    config = load_annotate_config(weights=str(weights), backend=backend, device="cpu")
    for stage in (ClassifyStage(config), DetectStage(config)):
        sessions.clear()
        stage.setup()
        stage.close()
        assert len(sessions) == 1, (stage.name, sessions)


class _Sleepers(Supervisor):
    """Stages that never report ready: whatever start_all returns with was started
    without waiting for a ready report."""

    def command(self, stage: StageProcess) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.mark.slow
def test_start_all_spawns_every_stage_before_any_is_ready(tmp_path):
    supervisor = _Sleepers([StageProcess(name, []) for name in ORDER],
                           f"ipc://{tmp_path}/control", tmp_path)
    try:
        supervisor.start_all()
        started = {name: s.proc is not None and running(s.proc.pid)
                   for name, s in supervisor.stages.items()}
        ready = [name for name, s in supervisor.stages.items() if s.ready is not None]
    finally:
        supervisor.stop()
    assert started == {name: True for name in ORDER} and ready == []
    assert all(s.proc.poll() is not None for s in supervisor.stages.values())


def _ready(startup: dict | None) -> StageProcess:
    stage = StageProcess("x", [])
    stage.ready = {"backend": "onnxruntime"} | ({"startup": startup} if startup else {})
    return stage


def test_summary_startup_is_per_stage_and_the_slowest_stage():
    stages = {"source": _ready({"startup_s": 0.5, "import_s": 0.49, "setup_s": 0.01,
                                "torch": False}),
              "classify": _ready({"startup_s": 1.25, "import_s": 0.5, "setup_s": 0.75,
                                  "torch": True}),
              "track": _ready(None)}  # a stage of an older version: no figures
    startup = startup_of(stages)
    assert startup["startup_s"] == 1.25 and set(startup["stages"]) == {"source", "classify"}
    assert startup_line(startup) == (
        "start-up 1.25 s (stages in parallel); per stage s, imports + setup: source 0.50 "
        "(0.49 + 0.01), classify 1.25 (0.50 + 0.75); torch imported by classify")
    assert startup_line({"stages": {}}) is None


def test_format_summary_shows_the_startup_line():
    result = AnnotateResult(frames=1, faces=0, wall_s=2, processing_s=1, fps=1, cores=1,
                            parallel_efficiency=1.0, startup={"startup_s": 0.8, "stages": {
                                "detect": {"startup_s": 0.8, "import_s": 0.5,
                                           "setup_s": 0.3, "torch": False}}})
    assert ("start-up 0.80 s (stages in parallel); per stage s, imports + setup: detect 0.80 "
            "(0.50 + 0.30)") in format_summary(result).splitlines()  # no torch: not named
    assert result.to_dict()["startup"]["stages"]["detect"]["setup_s"] == 0.3


@pytest.mark.slow
def test_annotate_summary_has_each_stages_startup(onnx_cache, weights, clip, tmp_path):
    config = load_annotate_config(weights=str(weights), **CPU_ORT)
    summary = tmp_path / "summary.json"
    result = annotate_video(clip, tmp_path / "out.mp4", json_path=tmp_path / "faces.jsonl",
                            config=config, progress=False, summary_path=summary)
    startup = json.loads(summary.read_text())["startup"]
    assert set(startup["stages"]) == set(ORDER)
    for name, st in startup["stages"].items():
        assert st["torch"] is False, name
        assert 0 < st["import_s"] <= st["startup_s"] <= result.wall_s, (name, st)
        assert 0 <= st["setup_s"] <= st["startup_s"], (name, st)
        assert st["import_s"] + st["setup_s"] == pytest.approx(st["startup_s"], abs=0.02)
    assert startup["startup_s"] == max(st["startup_s"] for st in startup["stages"].values())
    assert "startup" not in result.info["classify"]  # the figures are not repeated there
    assert startup_line(startup) in format_summary(result)
