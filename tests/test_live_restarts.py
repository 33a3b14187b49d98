"""Restarting crashed live stages: capped exponential backoff, what a spent budget ends
(one camera, or the run), and failures that restarting cannot fix (a full disk) ending
the run with one line instead of a restart loop."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
import types
from pathlib import Path

import av
import numpy as np
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import Monitor, MonitorConfig
from gimefive.pipeline.stages.source import RESTART_INDEX_GAP
from gimefive.pipeline.supervisor import (
    RestartPolicy,
    StageProcess,
    Supervisor,
    restart_cannot_fix,
)

from gimefive.errors import GimefiveError, StageError


class RecordingSupervisor(Supervisor):
    """The one supervisor with the monitor's policy; records restarts instead of
    starting processes."""

    def __init__(self, tmp_path: Path, m: Monitor, names: list[str]) -> None:
        super().__init__([StageProcess(n, []) for n in names],
                         f"ipc://{tmp_path}/control.sock", tmp_path, on_event=m.on_event,
                         policy=m.policy())
        self.restarted: list[tuple[str, float]] = []

    def failure(self, stage: StageProcess, rc: int) -> str:
        return f"stage {stage.name} failed: boom (exited with status {rc})"

    def restart(self, name: str, delay_s: float = 0.0) -> None:
        self.restarted.append((name, delay_s))


@pytest.fixture
def supervised(tmp_path):
    """``supervised(**cfg)``: a monitor and its supervisor over two cameras and detect."""
    made: list[Supervisor] = []

    def make(**cfg) -> tuple[Monitor, RecordingSupervisor]:
        m = Monitor({"cam0": "a.mp4", "cam1": "b.mp4"},
                    MonitorConfig(restart_window_s=600, **cfg), AnnotateConfig(), quiet=True)
        m.directory = tmp_path
        m.endpoints = {n: f"ipc://{tmp_path}/{n}.sock"
                       for n in ("detect", "classify", "track", "annotate")}
        m.supervisor = RecordingSupervisor(
            tmp_path, m, ["source-cam0", "source-cam1", "detect", "annotate"])
        made.append(m.supervisor)
        return m, m.supervisor

    yield make
    for sup in made:
        for stage in sup.stages.values():
            stage.proc = None  # the stand-ins of exits() are no processes to stop
        sup.stop()


def exits(rc: int | None) -> types.SimpleNamespace:
    """A stand-in process whose poll() says it exited with ``rc`` (None: running)."""
    return types.SimpleNamespace(poll=lambda: rc, pid=0)


def test_restarts_back_off_exponentially_up_to_a_cap(supervised):
    m, sup = supervised(restart_budget=5, restart_backoff_s=0.5, restart_backoff_max_s=3)
    detect = sup.stages["detect"]
    assert all(sup.crashed(detect, 3) for _ in range(5))
    assert sup.restarted == [("detect", d) for d in (0.5, 1.0, 2.0, 3.0, 3.0)]


def test_a_restarted_camera_numbers_its_frames_past_what_it_sent(supervised):
    m, sup = supervised(restart_budget=5)
    m.source_live["cam0"] = {"decoded": 40}
    assert sup.crashed(sup.stages["source-cam0"], 3)
    assert m.index_from["cam0"] == 40 + RESTART_INDEX_GAP
    assert sup.stages["source-cam0"].args == m._args("source-cam0", m.endpoints)


def test_a_shared_stage_past_its_budget_ends_the_run(supervised):
    m, sup = supervised(restart_budget=2)
    detect = sup.stages["detect"]
    assert sup.crashed(detect, 3) and sup.crashed(detect, 3)
    for stage in sup.stages.values():
        stage.proc = exits(3 if stage is detect else None)
    with pytest.raises(StageError) as info:
        sup._poll_stages()
    assert str(info.value) == ("stage detect failed: boom (exited with status 3) "
                               "(restart budget spent: 2 restarts within 600 s)")


def test_a_camera_past_its_budget_ends_alone(supervised):
    m, sup = supervised(restart_budget=1)
    cam0, cam1 = sup.stages["source-cam0"], sup.stages["source-cam1"]
    assert sup.crashed(cam0, 3)           # restarted once
    assert sup.crashed(cam0, 3)           # budget spent: only this camera ends ...
    assert "source-cam0" in m.ended and m.status()["streams"]["cam0"]["ended"]
    for stage in sup.stages.values():
        stage.proc = exits(3 if stage is cam0 else None)
    assert sup._poll_stages()             # ... and stays ended, not restarted again
    assert sup.restarted == [("source-cam0", 0.5)]
    assert sup.crashed(cam1, 3)
    assert not sup.crashed(cam1, 3)       # no camera left: the run ends
    assert m._failure_line("x") == (
        "no camera left: camera cam0 ended: restart budget spent (1 restarts within 600 s), "
        "last: stage source-cam0 failed: boom (exited with status 3); camera cam1 ended: "
        "restart budget spent (1 restarts within 600 s), last: stage source-cam1 failed: "
        "boom (exited with status 3)")


def test_a_camera_that_gave_up_ends_alone_once(supervised):
    m, sup = supervised(restart_budget=5)
    cam0 = sup.stages["source-cam0"]
    from gimefive.pipeline.supervisor import EXIT_GAVE_UP

    cam0.error = "camera cam0 gave up after 3 reconnect attempt(s): Connection refused"
    assert sup.crashed(cam0, EXIT_GAVE_UP) and sup.restarted == []
    assert m.ended == {"source-cam0": cam0.error}


def test_the_words_gave_up_in_an_error_do_not_end_a_camera(supervised):
    # only the exit status says a camera is given up; any other failure is restarted
    m, sup = supervised(restart_budget=5)
    cam0 = sup.stages["source-cam0"]
    cam0.error = "decoder said: peer gave up"
    assert sup.crashed(cam0, 3) and sup.restarted == [("source-cam0", 0.5)]
    assert m.ended == {}


def test_a_stage_restarting_cannot_fix_is_not_restarted(supervised):
    from gimefive.pipeline.supervisor import EXIT_NO_RESTART

    m, sup = supervised(restart_budget=5)
    assert not sup.crashed(sup.stages["annotate"], EXIT_NO_RESTART)
    assert sup.restarted == []
    assert sup.why == "; not restarted: restarting cannot fix this"


def test_a_file_job_ends_at_the_first_crash(tmp_path):
    sup = Supervisor([StageProcess("detect", [])], f"ipc://{tmp_path}/control.sock", tmp_path)
    try:
        sup.stages["detect"].proc = exits(3)
        with pytest.raises(StageError) as info:
            sup._poll_stages()
    finally:
        sup.stages["detect"].proc = None
        sup.stop()
    assert str(info.value) == "stage detect failed: exited with status 3"


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

    def __init__(self, tmp_path: Path, **kwargs) -> None:
        super().__init__([StageProcess("crash", [])], f"ipc://{tmp_path}/control.sock",
                         tmp_path, **kwargs)
        self.started: list[float] = []

    def command(self, stage: StageProcess) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]

    def start(self, stage: StageProcess) -> None:
        self.started.append(time.monotonic())
        super().start(stage)


@pytest.mark.integration
def test_supervisor_waits_out_the_backoff_without_blocking(tmp_path):
    ticks, scheduled = [], []

    def on_event(stage: StageProcess, event: str, data: dict) -> None:
        if event == "restart":
            scheduled.append(time.monotonic())

    sup = CrashingSupervisor(tmp_path, on_event=on_event, policy=RestartPolicy(
        budget=2, backoff_s=0.3, backoff_max_s=0.6))
    delays = [0.3, 0.6]
    sup.start_all()
    with pytest.raises(StageError, match="stage crash failed.*restart budget spent"):
        sup.run(tick=lambda: ticks.append(time.monotonic()))
    assert len(sup.started) == 3
    gaps = [b - a for a, b in zip(sup.started, sup.started[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=True)), gaps
    # the loop kept ticking (status lines, control messages) while a restart was pending
    assert sum(scheduled[1] <= t < sup.started[2] for t in ticks) >= 2


# ----------------------------------------------------------------------- disk full, whole run


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


def test_retention_reaches_the_segment_writer(supervised, tmp_path):
    from gimefive.pipeline.cli import stage_command
    from gimefive.pipeline.segments import SegmentsSink
    from gimefive.pipeline.stages.annotate import AnnotateStage

    m, _ = supervised(out=str(tmp_path / "cam.mp4"), keep_age_s=3600, keep_bytes=2**30)
    # the options the monitor gives `gimefive stage annotate`, as that command reads them
    args = stage_command.make_context(
        "stage", ["annotate", *m._args("annotate", m.endpoints)]).params
    assert args["live_out"] and (args["keep_age_s"], args["keep_bytes"]) == (3600, 2**30)
    stage = AnnotateStage(AnnotateConfig(), live=True, output=str(tmp_path / "cam.mp4"),
                          streams=["cam0"], keep_age_s=args["keep_age_s"],
                          keep_bytes=args["keep_bytes"])
    (video,) = stage.make_sinks()
    assert isinstance(video, SegmentsSink)
    assert (video.options["keep_age_s"], video.options["keep_bytes"]) == (3600.0, 2**30)
