"""Starting, watching and stopping stage processes.

Each stage runs as ``python -m gimefive.pipeline.stage_main NAME ...`` (the same code
path as ``gimefive stage NAME``), reports over a control socket (ready, progress, stats,
error) and has its stderr captured to a log file. A stage that exits non-zero or dies
from a signal fails the run with one line naming the stage and the reason; a live
supervisor can instead :meth:`Supervisor.restart` it within a budget, after a delay.

Every stage dies with its supervisor, even one killed by SIGKILL (:func:`die_with_parent`),
so no stage is left running, re-parented to init, when the parent is gone.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from gimefive.pipeline.wire import WireError, open_socket, parse_control

from gimefive.errors import StageError

STOP_GRACE_S = 10.0
# A stage exits with this status when it failed in a way restarting cannot fix (a full
# or read-only disk, a permission denied): a live supervisor then ends the run instead.
EXIT_NO_RESTART = 74  # EX_IOERR
NO_RESTART_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                               errno.EPERM, errno.EFBIG, errno.ENOENT, errno.ENOTDIR})


@dataclass
class StageProcess:
    name: str
    args: list[str]
    threads: int = 1
    log: Path | None = None
    proc: subprocess.Popen | None = None
    ready: dict | None = None  # the ready report's data, once it came
    stats: dict = field(default_factory=dict)
    error: str = ""
    progress: int = 0
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of a scheduled restart (backoff)


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
    """Runs stage processes; :meth:`run` returns their stats or raises StageError."""

    def __init__(self, stages: list[StageProcess], control_endpoint: str, log_dir: Path,
                 on_event: Callable[[StageProcess, str, dict], None] | None = None,
                 gate_endpoint: str | None = None) -> None:
        self.stages = {s.name: s for s in stages}
        self.control_endpoint = control_endpoint
        self.log_dir = log_dir
        self.on_event = on_event
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
        return [sys.executable, "-m", "gimefive.pipeline.stage_main", stage.name,
                *stage.args, "--control", self.control_endpoint]

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

    def failure(self, stage: StageProcess, rc: int) -> str:
        reason = stage.error or _last_line(stage.log) or _exit_reason(rc)
        if stage.error or _last_line(stage.log):
            reason = f"{reason} ({_exit_reason(rc)})"
        return f"stage {stage.name} failed: {reason}"

    def run(self, on_exit: Callable[[StageProcess, int], bool] | None = None,
            tick: Callable[[], None] | None = None) -> dict[str, StageProcess]:
        """Wait until every stage has exited 0; a non-zero exit fails the run.

        ``on_exit(stage, rc)`` may return True to say the exit was handled (restarted).
        """
        try:
            while True:
                self._drain_control(200)
                if tick is not None:
                    tick()
                if not self.gate_open and all(s.ready is not None for s in self.stages.values()):
                    self._open_gate()
                running = False
                for stage in self.stages.values():
                    if stage.restart_at is not None:
                        running = self._start_due(stage) or running
                        continue
                    rc = stage.proc.poll()
                    if rc is None:
                        running = True
                    elif rc != 0:
                        self._drain_control(0)
                        if on_exit is not None and on_exit(stage, rc):
                            running = True
                            continue
                        raise StageError(self.failure(stage, rc))
                if not running:
                    self._drain_control(50)
                    return self.stages
        finally:
            self.stop()

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
        """SIGTERM every live stage (they finalise their outputs), then SIGKILL stragglers."""
        if self.stopped:
            return
        self.stopped = True
        alive = [s.proc for s in self.stages.values() if s.proc and s.proc.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.control.close(linger=0)
        self.ctx.term()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at
