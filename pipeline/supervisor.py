"""Starting, watching and stopping stage processes.

Each stage runs as ``python -m gimefive.pipeline.stage_main NAME ...`` (the same code
path as ``gimefive stage NAME``), reports over a control socket (ready, progress, stats,
error) and has its stderr captured to a log file. What a stage that exits non-zero or
dies from a signal leads to is the run's :class:`RestartPolicy`: a file job has none, so
the run fails with one line naming the stage and the reason; a live run restarts the
stage within a budget, after a capped exponential backoff, and a camera's stage past
its budget (or whose camera gave up) ends alone while another camera is left.

Every stage dies with its supervisor, even one killed by SIGKILL (:func:`die_with_parent`),
so no stage is left running, re-parented to init, when the parent is gone.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from gimefive.pipeline.control import parse_control
from gimefive.pipeline.messages import WireError
from gimefive.pipeline.transport import open_socket

from gimefive.errors import StageError

log = logging.getLogger("gimefive.supervisor")
STAGE_MODULE = "gimefive.pipeline.stage_main"
STOP_GRACE_S = 10.0
DRAIN_S = 10.0  # a live stop: how long the frames in flight may take to be written
# A stage exits with this status when it failed in a way restarting cannot fix (a full
# or read-only disk, a permission denied): a live supervisor then ends the run instead.
EXIT_NO_RESTART = 74  # EX_IOERR
# A camera's source stage exits with this status when the camera is given up (its
# reconnect budget is spent): that camera ends, the others go on.
EXIT_GAVE_UP = 75  # EX_TEMPFAIL
NO_RESTART_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                               errno.EPERM, errno.EFBIG, errno.ENOENT, errno.ENOTDIR})


@dataclass(frozen=True)
class RestartPolicy:
    """How a live run treats a crashed stage.

    It is restarted at most ``budget`` times within ``window_s`` seconds, after
    ``backoff_s``, doubled with each restart in the window up to ``backoff_max_s``; past
    the budget the run fails, except for the stages in ``alone`` (the cameras' sources):
    one of them ends alone, while another of them is left. A stage that exits with
    :data:`EXIT_NO_RESTART` (a full disk) ends the run at once.
    """

    budget: int = 5
    window_s: float = 600.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    alone: frozenset[str] = frozenset()

    def delay_s(self, restarts: int) -> float:
        """The wait before the ``restarts``-th restart within the window (1, 2, ...)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (restarts - 1))

    def __str__(self) -> str:
        return f"{self.budget} restarts within {self.window_s:g} s"


@dataclass
class StageProcess:
    """One stage process: ``python -m gimefive.pipeline.stage_main KIND ARGS...``."""

    name: str
    args: list[str]
    kind: str = ""  # the `gimefive stage` NAME it runs ("": its name; source-cam0: source)
    threads: int = 1
    log: Path | None = None
    proc: subprocess.Popen | None = None
    ready: dict | None = None  # the ready report's data, once it came
    stats: dict = field(default_factory=dict)
    error: str = ""
    progress: int = 0
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of a scheduled restart (backoff)
    ended: str = ""  # why this stage ended for good while the run goes on (a camera)


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


def restart_cannot_fix(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from or while handling) is an
    OSError that a restarted stage would hit again, e.g. ENOSPC: disk full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_RESTART_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def die_with_parent(parent: int | None = None):
    """A ``preexec_fn``: the stage gets SIGTERM (outputs finalised) when the process that
    started it dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a
    no-op). If the parent is already gone by then, the stage stops at once."""
    parent = os.getpid() if parent is None else parent
    # Looked up here, in the parent: the child of a threaded process must not import or
    # load libraries between fork and exec (it could deadlock on a lock held by a thread).
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: stages then outlive a killed parent
        prctl = None

    def preexec() -> None:
        if prctl is None:
            return
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Supervisor:
    """Runs stage processes; :meth:`run` returns their stats or raises StageError.

    ``policy``: a live run's :class:`RestartPolicy` (None: a file job, no restart).
    ``on_event(stage, event, data)`` gets every control report and the supervisor's own
    ``restart`` (before the stage starts again: its args may still change) and
    ``ended`` events. ``drained``: a live stop ends the sources first, then the rest once
    it returns True (the frames in flight are written) or after :data:`DRAIN_S`.
    """

    def __init__(self, stages: list[StageProcess], control_endpoint: str, log_dir: Path,
                 on_event: Callable[[StageProcess, str, dict], None] | None = None,
                 gate_endpoint: str | None = None, policy: RestartPolicy | None = None,
                 drained: Callable[[], bool] | None = None) -> None:
        self.stages = {s.name: s for s in stages}
        self.control_endpoint = control_endpoint
        self.log_dir = log_dir
        self.on_event = on_event
        self.policy, self.drained = policy, drained
        self.crashes: dict[str, deque[float]] = {}  # per stage, restarts in the window
        self.why = ""  # what the policy adds to the failure line that ends the run
        self.ctx = zmq.Context()
        self.control = open_socket(self.ctx, zmq.PULL, control_endpoint, bind=True, hwm=10000)
        self.started_at = time.perf_counter()
        self.gate_endpoint = gate_endpoint  # the source waits here until all are ready
        self.gate_open = gate_endpoint is None
        self.bad_control = 0
        self.stopped = False

    def _env(self, stage: StageProcess) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(max(1, stage.threads))
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = threads
        return env

    def command(self, stage: StageProcess) -> list[str]:
        return [sys.executable, "-m", STAGE_MODULE, stage.kind or stage.name, *stage.args,
                "--control", self.control_endpoint]

    def start(self, stage: StageProcess) -> None:
        self.spawn(stage, self.command(stage))

    def spawn(self, stage: StageProcess, cmd: list[str], **popen: object) -> None:
        """Start ``cmd`` as ``stage``: stderr to its log, dying with this process."""
        stage.log = self.log_dir / f"{stage.name}.log"
        popen.setdefault("stdin", subprocess.DEVNULL)
        with open(stage.log, "ab") as log:
            stage.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                          env=self._env(stage),
                                          preexec_fn=die_with_parent(), **popen)

    def start_all(self) -> None:
        for stage in self.stages.values():
            self.start(stage)

    def restart(self, name: str, delay_s: float = 0.0) -> None:
        """Start a stage again (live mode) after ``delay_s``, without blocking the others;
        its sockets reconnect by themselves."""
        stage = self.stages[name]
        stage.restarts += 1
        stage.error = ""
        stage.ready = None
        stage.restart_at = time.monotonic() + delay_s
        self._start_due(stage)

    def _start_due(self, stage: StageProcess) -> bool:
        """Start ``stage`` if its restart is due; True while it is waiting or started."""
        if stage.restart_at is None:
            return False
        if time.monotonic() >= stage.restart_at:
            stage.restart_at = None
            self.start(stage)
        return True

    def _drain_control(self, timeout_ms: int) -> None:
        if not self.control.poll(timeout_ms):
            return
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = parse_control(raw)
            except WireError:
                self.bad_control += 1
                continue
            stage = self.stages.get(msg["stage"])
            if stage is None:
                self.bad_control += 1
                continue
            event, data = msg["event"], msg["data"]
            if event == "ready":
                stage.ready = data
            elif event == "progress":
                stage.progress = int(data.get("frames", 0))
            elif event == "stats":
                stage.stats = data
            elif event == "error":
                stage.error = str(data.get("message", ""))
            if self.on_event is not None:
                self.on_event(stage, event, data)

    def _event(self, stage: StageProcess, event: str, data: dict) -> None:
        if self.on_event is not None:
            self.on_event(stage, event, data)

    def failure(self, stage: StageProcess, rc: int) -> str:
        reason = stage.error or _last_line(stage.log) or _exit_reason(rc)
        if stage.error or _last_line(stage.log):
            reason = f"{reason} ({_exit_reason(rc)})"
        return f"stage {stage.name} failed: {reason}"

    def crashed(self, stage: StageProcess, rc: int) -> bool:
        """Apply the policy to ``stage``, which exited with ``rc`` != 0: restart it or end
        it alone (True), or say why the run ends (False, :attr:`why`)."""
        policy = self.policy
        if policy is None:  # a file job
            return False
        if stage.name in policy.alone and rc == EXIT_GAVE_UP:  # its camera is gone
            return self._end_alone(stage, stage.error, gave_up=True)
        if rc == EXIT_NO_RESTART:  # e.g. disk full: a restart would fail the same way
            self.why = "; not restarted: restarting cannot fix this"
            return False
        window, now = self.crashes.setdefault(stage.name, deque()), time.monotonic()
        while window and now - window[0] > policy.window_s:
            window.popleft()
        reason = self.failure(stage, rc)
        if len(window) >= policy.budget:
            if stage.name in policy.alone:  # only this camera ends; the others go on
                return self._end_alone(stage, f"restart budget spent ({policy}), "
                                              f"last: {reason}")
            self.why = f" (restart budget spent: {policy})"
            return False
        window.append(now)
        delay = policy.delay_s(len(window))
        log.warning("%s; restarting it in %.1f s (%d of %d within %.0f s)", reason, delay,
                    len(window), policy.budget, policy.window_s)
        self._event(stage, "restart", {"delay_s": delay, "reason": reason})
        self.restart(stage.name, delay)
        return True

    def _end_alone(self, stage: StageProcess, why: str, gave_up: bool = False) -> bool:
        """``stage`` ends for good; True while another stage that may end alone is left."""
        stage.ended = why
        self._event(stage, "ended", {"why": why, "gave_up": gave_up})
        return any(not self.stages[n].ended for n in self.policy.alone if n in self.stages)

    def run(self, tick: Callable[[], None] | None = None) -> dict[str, StageProcess]:
        """Wait until every stage has exited 0 (or ended alone); a crash is handled by the
        policy (:meth:`crashed`), else it fails the run with one line."""
        try:
            while True:
                self._drain_control(200)
                if tick is not None:
                    tick()
                if not self.gate_open and all(s.ready is not None for s in self.stages.values()):
                    self._open_gate()
                if not self._poll_stages():
                    self._drain_control(50)
                    return self.stages
        finally:
            self.stop()

    def _poll_stages(self) -> bool:
        """Start due restarts, handle exits; True while any stage runs or waits."""
        running = False
        for stage in self.stages.values():
            if stage.ended:
                continue
            if stage.restart_at is not None:
                running = self._start_due(stage) or running
                continue
            rc = stage.proc.poll()
            if rc is None:
                running = True
            elif rc != 0:
                self._drain_control(0)  # its error report
                if not self.crashed(stage, rc):
                    raise StageError(self.failure(stage, rc) + self.why)
                running = True
        return running

    def _open_gate(self) -> None:
        sock = self.ctx.socket(zmq.PUSH)
        try:
            sock.setsockopt(zmq.LINGER, 5000)
            sock.connect(self.gate_endpoint)
            sock.send(b"go")
        finally:
            sock.close()
        self.gate_open = True

    def stop(self) -> None:
        """SIGTERM every stage (they finalise their outputs), then SIGKILL stragglers.

        With ``drained`` (a live run) the sources stop first and the rest once the
        frames they sent are written, so that the final counts add up.
        """
        if self.stopped:
            return
        self.stopped = True
        stopped = False
        if self.drained is not None:
            stopped = self._terminate([s for s in self.stages.values()
                                       if s.name.startswith("source")])
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline:
                self._drain_control(100)
                if self.drained():
                    break
        if self._terminate(list(self.stages.values())) or stopped:
            self._drain_control(200)  # the stages' final reports
        self.control.close(linger=0)
        self.ctx.term()

    def _terminate(self, stages: list[StageProcess]) -> bool:
        """SIGTERM the running ``stages``, wait for them (reading their reports), SIGKILL
        those left after :data:`STOP_GRACE_S`; True if any was running."""
        alive = [s.proc for s in stages if s.proc and s.proc.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in alive:
            while proc.poll() is None and time.monotonic() < deadline:
                self._drain_control(50)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return bool(alive)

    def add(self, stage: StageProcess) -> None:
        """Start a new stage while the run goes on (a camera added to a live run)."""
        self.stages[stage.name] = stage
        self.crashes.pop(stage.name, None)
        self.start(stage)

    def remove(self, name: str) -> None:
        """Stop stage ``name`` for good (SIGTERM: it finalises its output, its last
        reports are read) and forget it; the other stages go on."""
        stage = self.stages.get(name)
        if stage is not None:
            self._terminate([stage])
            del self.stages[name]
            self.crashes.pop(name, None)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at
