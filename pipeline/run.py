"""Library entry points: run one stage (``gimefive stage``) or a whole annotate job.

``annotate_video`` starts the five stages as processes wired over ``ipc://`` sockets in a
private directory, shows progress, and returns a summary: frames, faces, overall fps and
per stage the CPU seconds, busy fps and where the time went. Parallel efficiency is
``fps x (sum over stages of CPU seconds per frame) / cores``: 1.0 means every core was
busy with pipeline work for the whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
from gimefive.pipeline.control import report_stage_error
from gimefive.pipeline.live_source import CameraGaveUp
from gimefive.pipeline.probe import check_output, is_live, probe_input, same_file
from gimefive.pipeline.replicas import (
    input_endpoints,
    replica_args,
    replica_counts,
    replica_name,
    replica_names,
)
from gimefive.pipeline.shared_frames import frames_dir
from gimefive.pipeline.stage import HWM, StageRunner, Stopped
from gimefive.pipeline.stages import ORDER, next_stage, stage_class
from gimefive.pipeline.summary import AnnotateResult, summarize
from gimefive.pipeline.supervisor import (
    EXIT_GAVE_UP,
    EXIT_NO_RESTART,
    StageProcess,
    Supervisor,
    restart_cannot_fix,
)
from gimefive.pipeline.transport import (
    CurveKeys,
    ipc_endpoint,
    leaves_host,
    private_ipc_dir,
)

from gimefive.config import save_config, to_dict
from gimefive.errors import GimefiveError, StageError
from gimefive.urls import arg_file, expand_env, redact_text, url_arg

#: a camera's recording ended: how long the stages may take to write the frames in flight
LIVE_STOP_S = 60.0


def run_stage(name: str, in_: str | None, out: str | None, config: AnnotateConfig,
              control: str | None = None, curve: CurveKeys | None = None,
              insecure: bool = False, hwm: int = HWM, ends: int = 1, upstream: int = 1,
              replica: int | None = None, frames_dir: str | Path | None = None,
              **job: Any) -> dict[str, Any]:
    """Run stage ``name`` in this process until its input ends; return its stats.

    For ``source`` ``in_`` is the video to read; for ``annotate`` ``out`` is the video to
    write (``job`` may add ``json``, ``cam_npz``, ``audio_from``). Other stages take
    endpoints; a stage binds ``in_`` and connects ``out``. ``hwm`` and ``ends`` are the
    run's queue depth per hop and its number of streams (0: live, until stopped);
    ``upstream`` the replicas of the stage before, ``replica`` which replica this is
    (:mod:`gimefive.pipeline.replicas`); ``frames_dir`` the run's folder of frames in
    shared memory (:mod:`gimefive.pipeline.shared_frames`), None: frames travel inline.

    Every stage runs here, a camera source and the live sink included. A stop (SIGTERM)
    is the normal end of a live run (``ends`` 0): it returns. A failure is reported to
    ``control`` as one line and raised as :class:`StageError`, whose exit status is
    :data:`EXIT_NO_RESTART` when restarting cannot fix it (a full disk, say).
    """
    gate = job.pop("gate", None)
    cls = stage_class(name)
    if name == "source":
        job["input"], in_ = in_, None
        # frames for another host travel inside the messages: no ring
        job["frames_dir"] = None if leaves_host(out) else frames_dir
    if name == "annotate":
        job["output"], out = ("" if out == "-" else out), None
    status = StageError.exit_code
    try:
        stage = cls(config, **job)
        # a camera's source reports as source-ID, a replica as NAME#I
        name = stage.name = replica_name(stage.name, replica)
        runner = StageRunner(stage, in_, out, control, curve=curve, insecure=insecure,
                             gate_endpoint=gate, hwm=hwm, ends=ends, upstream=upstream,
                             frames_dir=str(frames_dir) if frames_dir else None)
        return runner.run()
    except Stopped as exc:
        if ends == 0:
            return {}
        message = f"stopped by {exc}"
    except Exception as exc:
        message = str(exc) if isinstance(exc, GimefiveError) else f"{type(exc).__name__}: {exc}"
        if control and not isinstance(exc, GimefiveError):  # the traceback goes to the
            import traceback  # stage's log (its stderr under a supervisor)

            sys.stderr.write(redact_text(traceback.format_exc()))
        if restart_cannot_fix(exc):
            status = EXIT_NO_RESTART
        elif isinstance(exc, CameraGaveUp):
            status = EXIT_GAVE_UP
    message = redact_text(message)  # an FFmpeg error may quote the URL it opened
    report_stage_error(control, name, message)
    error = StageError(f"stage {name}: {message}")
    error.exit_code = status
    raise error


# ------------------------------------------------------------------------ annotate job

#: how each output is named in error lines
OUTPUT_NAMES = {"output": "output", "json": "JSON lines output", "cam_npz": "CAM output",
                "summary": "summary"}


def _check_paths(input_path: Path | str, outputs: dict[str, Path | None], max_pixels: int,
                 force: bool = False) -> None:
    """One clear line for an unusable input or output, before any stage starts.

    Outputs are compared with the input and with each other by file identity, so a hard
    link to the input is the input; an existing output needs ``force``.
    """
    # a camera URL's ${VAR} expanded for this probe only (its stage expands its own)
    probe_input(expand_env(input_path) if isinstance(input_path, str) else input_path,
                max_pixels=max_pixels)
    named = [(OUTPUT_NAMES[key], out) for key, out in outputs.items() if out is not None]
    for i, (what, out) in enumerate(named):
        if isinstance(input_path, Path) and same_file(out, input_path):
            raise GimefiveError(f"{what} {out} is the input file")
        for other_what, other in named[:i]:
            if same_file(out, other):
                raise GimefiveError(f"{what} {out} is the same file as the {other_what}")
        check_output(out, what)
        if out.exists() and not force:
            raise GimefiveError(f"{what} {out} already exists (give --force to overwrite it)")


def _partial_name(path: Path) -> Path:
    """Where ``path`` is written until the run succeeds: beside it (so the rename is
    atomic), hidden, with its suffix (which picks the container format)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")


def _publish(partial: dict[str, Path], finals: dict[str, Path | None]) -> None:
    """Rename each finished output to its final name (an output never opened, e.g. the
    video of an input without frames, leaves an earlier file alone)."""
    for key, path in partial.items():
        if path.exists():
            os.replace(path, finals[key])


def stage_args(name: str, endpoints: dict[str, str], config: AnnotateConfig,
               job: dict[str, Any], private_dir: Path) -> list[str]:
    """Command-line arguments that start stage ``name`` of an annotate job.

    A URL (input, ``--audio-from``) goes as ``@FILE`` in ``private_dir`` (0700), never in
    argv, where every local user could read a password in it.
    """
    in_ = url_arg(private_dir, "input.url", job["input"]) if name == "source" \
        else endpoints[name]
    out = url_arg(private_dir, "output.url", job["output"]) if name == "annotate" \
        else endpoints[next_stage(name)]
    args = ["--in", str(in_), "--out", str(out), "--config-json", json.dumps(to_dict(config))]
    if name == "source" and job.get("gate"):
        args += ["--gate", job["gate"]]
    if name == "source" and job.get("live"):
        args += ["--live-json", json.dumps(job["live"])]
    if name == "annotate":
        for key in ("json", "cam_npz", "audio_from"):
            if job.get(key):
                value = url_arg(private_dir, "audio.url", str(job[key])) \
                    if key == "audio_from" else str(job[key])
                args += [f"--{key.replace('_', '-')}", value]
        args += _events_args(job, private_dir)
    return args


def _events_args(job: dict[str, Any], private_dir: Path) -> list[str]:
    """The annotate stage's event outputs; the broker URL (credentials) as @FILE."""
    args = ["--events", str(job["events"])] if job.get("events") else []
    if job.get("mqtt"):
        args += ["--mqtt", arg_file(private_dir, "mqtt.url", job["mqtt"])]
    return args


def _threads(name: str, config: AnnotateConfig) -> int:
    return {"detect": config.detect_threads, "classify": config.classify_threads,
            "source": config.decode_threads, "annotate": config.encoder_threads}.get(name, 1)


class _Progress:
    """tqdm bar fed by the annotate stage's progress reports."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.done = enabled, None, 0

    def event(self, stage: StageProcess, event: str, data: dict) -> None:
        if not self.enabled:
            return
        if stage.name == "source" and event == "ready":
            from tqdm import tqdm

            total = data.get("frames_estimate") or None
            self.bar = tqdm(total=total, unit="frame", desc="annotate", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        if stage.name == "annotate" and event in ("progress", "stats") and self.bar is not None:
            frames = int(data.get("frames", data.get("frames_in", 0)))
            if frames > self.done:
                self.bar.update(frames - self.done)
                self.done = frames

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def annotate_video(input_path: str | Path, output: str | Path | None,
                   json_path: str | Path | None = None, cam_npz: str | Path | None = None,
                   config: AnnotateConfig | None = None, progress: bool = True,
                   save_resolved_config: bool = True, summary_path: str | Path | None = None,
                   force: bool = False, duration_s: float = 0.0,
                   camera: dict[str, Any] | None = None, events: str | Path | None = None,
                   mqtt: str | None = None) -> AnnotateResult:
    """Annotate a video file; every input frame appears once in ``output``, same timing.

    ``summary_path``: also write the summary there as JSON. ``force``: replace existing
    outputs (never the input). Outputs appear under their names only if the run succeeds.

    A camera (an ``rtsp://`` URL) is read like ``gimefive monitor`` reads it (timeouts,
    reconnects, drop-oldest; ``camera``: LiveOptions fields) and recorded until SIGINT or
    SIGTERM, ``duration_s`` (0: no limit), or until it is given up; each of these ends
    the recording normally: the outputs are finalised and published. A camera given up
    then raises :class:`StageError` with its line, after publishing.

    ``events`` (a JSON-lines file, appended as it goes) and ``mqtt`` (a broker URL): the
    per-track events of :mod:`gimefive.pipeline.events`.
    """
    config = config or load_annotate_config()
    replica_counts(config)  # replicas it cannot have: one line before anything starts
    live = is_live(input_path)
    if not live and (duration_s or camera):
        raise GimefiveError("--duration and camera options apply to a live input "
                            "(rtsp://...); a file is read to its end")
    # a URL stays a string: Path("rtsp://h/x") would collapse the "//"
    input_path = str(input_path) if live else Path(input_path)
    output = Path(output) if output else None
    json_path = Path(json_path) if json_path else None
    cam_npz = Path(cam_npz) if cam_npz else None
    if output is None and json_path is None:
        raise GimefiveError("nothing to write: give an output video and/or a JSON lines file")
    summary_path = Path(summary_path) if summary_path else None
    finals = {"output": output, "json": json_path, "cam_npz": cam_npz, "summary": summary_path}
    # one clear line, before any stage
    if events or mqtt:
        from gimefive.pipeline.events import check_events_outputs

        check_events_outputs(str(events) if events else None, mqtt)
    _check_paths(input_path, finals, config.max_pixels, force)
    if config.landmarks68:
        from gimefive.landmarks68 import unavailable_reason

        if reason := unavailable_reason():
            raise GimefiveError(reason)
    # written under partial names, renamed when the run succeeded: a failed run leaves no
    # partial file under a final name, and an earlier file there is not lost
    partial = {key: _partial_name(path) for key, path in finals.items() if path}
    stop = _LiveStop(duration_s) if live else None
    try:
        result = _run_job(input_path, partial, config, progress, stop, camera,
                          {"events": events, "mqtt": mqtt})
        if "summary" in partial:
            partial["summary"].write_text(json.dumps(result.to_dict(), indent=2))
        _publish(partial, finals)
    finally:
        for path in partial.values():  # left only after a failure
            path.unlink(missing_ok=True)
    if save_resolved_config and output is not None:
        save_config(config, output.with_name(output.name + ".config.yaml"))
    if stop is not None and stop.gave_up:  # what was recorded is published; still an error
        raise StageError(f"{stop.gave_up} (the frames recorded until then are written)")
    return result


def _run_job(input_path: Path | str, partial: dict[str, Path], config: AnnotateConfig,
             progress: bool, stop: _LiveStop | None = None,
             camera: dict[str, Any] | None = None,
             events: dict[str, Any] | None = None) -> AnnotateResult:
    """Run the five stages, which write to the ``partial`` paths; summarise the run.

    ``stop``: the input is a camera, and this says when its recording ends."""
    job = {"input": str(input_path), "output": str(partial.get("output", "")),
           "json": partial.get("json"), "cam_npz": partial.get("cam_npz"),
           # a camera has no audio to copy (and is not opened a second time for it)
           "audio_from": str(input_path) if config.audio and stop is None else None,
           "live": camera} | (events or {})
    bar = _Progress(progress)
    start = time.perf_counter()
    with private_ipc_dir() as directory, frames_dir(config.shared_frames) as shared:
        counts = replica_counts(config)  # detect and classify may run as several
        endpoints = input_endpoints(directory, counts)
        job["gate"] = ipc_endpoint(directory, "gate")
        shared_args = ["--frames-dir", str(shared)] if shared else []
        processes = [StageProcess(process, replica_args(
            name, i, counts, stage_args(name, endpoints, config, job, directory))
            + shared_args, kind=name, threads=_threads(name, config))
            for name in ORDER for i, process in enumerate(replica_names(name, counts[name]))]
        kind = Supervisor if stop is None else _CameraJobSupervisor
        supervisor = kind(processes, ipc_endpoint(directory, "control"), directory,
                          on_event=bar.event, gate_endpoint=job["gate"])
        try:
            if stop is None:
                with sigterm_as_interrupt():
                    supervisor.start_all()
                    stages = supervisor.run()
            else:
                with stop.handling_signals(supervisor):
                    supervisor.start_all()
                    stages = supervisor.run(tick=stop.tick)
                stop.gave_up = stages["source"].ended
        finally:
            supervisor.stop()
            bar.close()
    return summarize(stages, time.perf_counter() - start)


class _CameraJobSupervisor(Supervisor):
    """An annotate job's supervisor for a camera: a camera given up ends the recording,
    not the job; the stages after it write what it sent (it ended its stream first)."""

    def crashed(self, stage: StageProcess, rc: int) -> bool:
        if stage.name == "source" and rc == EXIT_GAVE_UP:
            stage.ended = stage.error
            return True
        return super().crashed(stage, rc)


class _LiveStop:
    """When the recording of a camera ends: SIGINT, SIGTERM or ``duration_s`` (counted
    from the start signal) ask the source to end its stream, once; the stages after it
    then write the frames in flight and exit 0, so the outputs are complete. A second
    signal, or stages still running :data:`LIVE_STOP_S` after the request, interrupt."""

    def __init__(self, duration_s: float = 0.0) -> None:
        self.duration_s = duration_s
        self.requested = False
        self.started: float | None = None
        self.asked: float | None = None
        self.gave_up = ""
        self.supervisor: Supervisor | None = None

    @contextlib.contextmanager
    def handling_signals(self, supervisor: Supervisor):
        self.supervisor = supervisor
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._signal) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _signal(self, signum, frame) -> None:
        if self.requested:  # asked twice: stop now
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.requested = True

    def tick(self) -> None:
        now = time.monotonic()
        if self.started is None and self.supervisor.gate_open:
            self.started = now  # the recording begins
        due = self.duration_s and self.started is not None \
            and now - self.started >= self.duration_s
        if self.asked is None and (self.requested or due):
            self.asked = now
            source = self.supervisor.stages["source"]
            if source.proc is not None and source.proc.poll() is None:
                source.proc.send_signal(signal.SIGTERM)  # it ends its stream
        elif self.asked is not None and now - self.asked > LIVE_STOP_S:
            raise StageError(f"the stages did not finish within {LIVE_STOP_S:g} s after "
                             f"the camera's recording ended")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the stages (outputs finalised) and removes the sockets, like Ctrl-C
    (in the main thread only; elsewhere a no-op). A batch of files uses it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
