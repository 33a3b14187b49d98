"""Restarting crashed live stages: capped exponential backoff, what a spent budget ends
(one camera, or the run), and failures that restarting cannot fix (a full disk) ending
the run with one line instead of a restart loop."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import Monitor, MonitorConfig
from gimefive.pipeline.supervisor import (
    StageProcess,
    Supervisor,
    restart_cannot_fix,
)

from gimefive.errors import GimefiveError


class StubSupervisor:
    """Records restarts instead of starting processes."""

    def __init__(self) -> None:
        self.restarted: list[tuple[str, float]] = []
        self.stages: dict[str, StageProcess] = {}

    def failure(self, stage: StageProcess, rc: int) -> str:
        return f"stage {stage.name} failed: boom (exited with status {rc})"

    def restart(self, name: str, delay_s: float = 0.0) -> None:
        self.restarted.append((name, delay_s))


def monitor(tmp_path, **cfg) -> Monitor:
    m = Monitor({"cam0": "a.mp4", "cam1": "b.mp4"},
                MonitorConfig(restart_window_s=600, **cfg), AnnotateConfig(), quiet=True)
    m.supervisor, m.budget_spent, m.directory = StubSupervisor(), "", tmp_path
    m.endpoints = {n: f"ipc://{tmp_path}/{n}.sock"
                   for n in ("detect", "classify", "track", "annotate")}
    return m


def test_restarts_back_off_exponentially_up_to_a_cap(tmp_path):
    m = monitor(tmp_path, restart_budget=5, restart_backoff_s=0.5, restart_backoff_max_s=3)
    detect = StageProcess("detect", [])
    assert all(m.on_exit(detect, 3) for _ in range(5))
    assert m.supervisor.restarted == [("detect", d) for d in (0.5, 1.0, 2.0, 3.0, 3.0)]


def test_a_shared_stage_past_its_budget_ends_the_run(tmp_path):
    m = monitor(tmp_path, restart_budget=2)
    detect = StageProcess("detect", [])
    assert m.on_exit(detect, 3) and m.on_exit(detect, 3)
    assert not m.on_exit(detect, 3)
    assert m._failure_line("stage detect failed: boom") == (
        "stage detect failed: boom (restart budget spent: 2 restarts within 600 s)")


def test_a_camera_past_its_budget_ends_alone(tmp_path):
    m = monitor(tmp_path, restart_budget=1)
    cam0, cam1 = StageProcess("source-cam0", []), StageProcess("source-cam1", [])
    assert m.on_exit(cam0, 3)           # restarted once
    assert m.on_exit(cam0, 3)           # budget spent: only this camera ends ...
    assert "source-cam0" in m.ended and m.status()["streams"]["cam0"]["ended"]
    assert m.on_exit(cam0, 3)           # ... and stays ended, not restarted again
    assert m.supervisor.restarted == [("source-cam0", 0.5)]
    assert m.on_exit(cam1, 3)
    assert not m.on_exit(cam1, 3)       # no camera left: the run ends
    assert m._failure_line("x") == (
        "no camera left: camera cam0 ended: restart budget spent (1 restarts within 600 s), "
        "last: stage source-cam0 failed: boom (exited with status 3); camera cam1 ended: "
        "restart budget spent (1 restarts within 600 s), last: stage source-cam1 failed: "
        "boom (exited with status 3)")


def test_a_stage_restarting_cannot_fix_is_not_restarted(tmp_path):
    from gimefive.pipeline.supervisor import EXIT_NO_RESTART

    m = monitor(tmp_path, restart_budget=5)
    assert not m.on_exit(StageProcess("annotate", []), EXIT_NO_RESTART)
    assert m.supervisor.restarted == []
    assert m._failure_line("stage annotate failed: disk full") == (
        "stage annotate failed: disk full; not restarted: restarting cannot fix this")


def test_which_errors_restarting_cannot_fix():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            raise GimefiveError("cannot write x: No space left on device") from None
    except GimefiveError as exc:
        wrapped = exc
    assert restart_cannot_fix(full) and restart_cannot_fix(wrapped)
    assert not restart_cannot_fix(OSError(errno.ECONNRESET, "reset"))
    assert not restart_cannot_fix(ValueError("bad frame"))


@pytest.mark.parametrize("bad", [dict(restart_backoff_s=-1), dict(restart_backoff_max_s=-1),
                                 dict(keep_age_s=-1), dict(keep_bytes=-1)])
def test_bad_restart_and_retention_settings(bad):
    with pytest.raises(GimefiveError, match="monitor config"):
        MonitorConfig(**bad)


class CrashingSupervisor(Supervisor):
    """Real processes that exit 3 at once; records when each one was started."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__([StageProcess("crash", [])], f"ipc://{tmp_path}/control.sock",
                         tmp_path)
        self.started: list[float] = []

    def command(self, stage: StageProcess) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]

    def start(self, stage: StageProcess) -> None:
        self.started.append(time.monotonic())
        super().start(stage)


def test_supervisor_waits_out_the_backoff_without_blocking(tmp_path):
    from gimefive.errors import StageError

    sup = CrashingSupervisor(tmp_path)
    delays = [0.3, 0.6]
    ticks, scheduled = [], []

    def on_exit(stage: StageProcess, rc: int) -> bool:
        if stage.restarts < len(delays):
            scheduled.append(time.monotonic())
            sup.restart(stage.name, delays[stage.restarts])
            return True
        return False

    sup.start_all()
    with pytest.raises(StageError, match="stage crash failed"):
        sup.run(on_exit=on_exit, tick=lambda: ticks.append(time.monotonic()))
    assert len(sup.started) == 3
    gaps = [b - a for a, b in zip(sup.started, sup.started[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=True)), gaps
    # the loop kept ticking (status lines, control messages) while a restart was pending
    assert sum(scheduled[1] <= t < sup.started[2] for t in ticks) >= 2


# ----------------------------------------------------------------------- disk full, whole run
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    from gimefive.checkpoint import save_weights
    from gimefive.model import GiMeFive

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_weights(path, GiMeFive())
    return path


@pytest.mark.slow
def test_disk_full_ends_the_monitor_with_one_line(tmp_path, weights):
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 64
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8),
                                               format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "cam.ffconcat").symlink_to("/dev/full")  # every write: ENOSPC
    proc = subprocess.run(
        [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor", str(clip),
         "-o", str(out_dir / "cam.mp4"), "--weights", str(weights), "--backend", "torch",
         "--duration", "120", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "restarting it" not in proc.stderr  # no restart loop
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gimefive: error:")]
    assert errors == [
        f"gimefive: error: stage annotate failed: cannot write {out_dir / 'cam.ffconcat'}: "
        "No space left on device (exited with status 74); not restarted: restarting "
        "cannot fix this"], proc.stderr


# ------------------------------------------------------------------------ retention options
def test_keep_options_parse_durations_and_sizes():
    from gimefive.pipeline.monitor_cli import parse_duration, parse_size

    assert [parse_duration(v) for v in ("90", "90s", "30m", "24h", "7d", "1.5h")] == \
        [90, 90, 1800, 86400, 7 * 86400, 5400]
    assert [parse_size(v) for v in ("1000", "500K", "500M", "10G", "1T", "1.5G")] == \
        [1000, 500 * 2**10, 500 * 2**20, 10 * 2**30, 2**40, int(1.5 * 2**30)]


@pytest.mark.parametrize("args,expected", [
    (["--keep-size", "10Q"], "Invalid value for '--keep-size': expected a size like 500M, "
                             "10G or 1T, got '10Q'"),
    (["--keep-age", "-1h"], "Invalid value for '--keep-age': expected a duration like 90s, "
                            "30m, 24h or 7d, got '-1h'")])
def test_bad_keep_options_are_one_line(capsys, args, expected):
    from gimefive.cli import main

    with pytest.raises(SystemExit) as info:
        main(["monitor", "rtsp://127.0.0.1:1/cam", "--json", "x.jsonl", *args])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"Error: {expected}"


def test_retention_reaches_the_segment_writer(tmp_path):
    from gimefive.pipeline.live_stage_main import parse_args
    from gimefive.pipeline.live_stages import LiveAnnotateStage

    m = monitor(tmp_path, out=str(tmp_path / "cam.mp4"), keep_age_s=3600, keep_bytes=2**30)
    args = parse_args(m._args("annotate", m.endpoints))
    assert (args.keep_age_s, args.keep_bytes) == (3600, 2**30)
    stage = LiveAnnotateStage(AnnotateConfig(), output=str(tmp_path / "cam.mp4"),
                              streams=["cam0"], keep_age_s=args.keep_age_s,
                              keep_bytes=args.keep_bytes)
    (video,) = [s for s in stage.make_sinks() if hasattr(s, "keep")]
    assert video.keep == {"keep_age_s": 3600.0, "keep_bytes": 2**30}
