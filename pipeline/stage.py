"""The stage base class and the loop that runs one stage in its own process.

A stage implements one hook, :meth:`Stage.process`: one input message in, zero or more
output messages out. Batching stages hold messages back and say how long the oldest
may wait (:meth:`Stage.wait_ms`); the runner calls :meth:`Stage.flush` when that time
is up and at end of stream. Everything else (sockets, validation, end-of-stream,
statistics, error reporting to the supervisor) is the runner's job, so each stage
module stays short.

A source stage has no input socket: it overrides :meth:`Stage.messages` to yield the
messages that the runner then sends (see ``pipeline.stages.source``). A sink stage has
no output socket: it returns nothing from ``process``.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import zmq
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.wire import (
    EndOfStream,
    Message,
    Receiver,
    Sender,
    control_message,
    open_socket,
    peer_monitor,
)

from gimefive.errors import GimefiveError

PROGRESS_EVERY_S = 0.5
#: after a normal end, how long the output socket may take to deliver what is queued
#: (linger 0 would discard the last frames and the end-of-stream message)
DRAIN_TIMEOUT_MS = 120_000
#: how long a source waits at the gate for the supervisor's start signal (the other
#: stages load their models meanwhile); past it the stage ends with one line
GATE_TIMEOUT_S = 600.0



def peak_rss_mb() -> float:
    """This process's own peak resident memory.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` keeps the parent's peak across fork and exec
    on Linux, so every stage would report the supervisor's; ``VmHWM`` belongs to the
    process's current address space alone.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass  # not Linux: fall back to getrusage below
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

class Stage(ABC):
    """One step of the pipeline. Subclasses set ``name``/``accepts`` and implement process."""

    name: ClassVar[str] = ""
    #: message types this stage takes as input (None for a source)
    accepts: ClassVar[tuple[type[Message], ...] | None] = None
    #: whether the stage sends messages downstream
    has_output: ClassVar[bool] = True

    def __init__(self, config: AnnotateConfig, **job: Any) -> None:
        self.config = config
        self.job = job
        self.counters: dict[str, float] = {}
        self.timers: dict[str, float] = {}

    def setup(self) -> None:
        """Load models, open files; runs in the stage's process, before any message."""

    @abstractmethod
    def process(self, msg: Message) -> Iterable[Message]:
        """Handle one input message; return (or yield) the messages to send on."""

    def wait_ms(self) -> float | None:
        """How long held-back input may still wait (None: nothing held back)."""
        return None

    def flush(self) -> Iterable[Message]:
        """Release held-back messages (wait time up, or end of stream)."""
        return ()

    def end_stream(self, eos: EndOfStream) -> Iterable[Message]:
        """A stream ended: flush it, then pass its end-of-stream message on."""
        yield from self.flush()
        yield eos

    def info(self) -> dict[str, Any]:
        """Facts for the supervisor's ready report (a source: the expected frame count)."""
        return {}

    def messages(self) -> Iterator[Message]:
        """For source stages: the messages to send (the runner adds nothing)."""
        raise NotImplementedError(f"stage {self.name} has no input; it must override messages()")

    def close(self) -> None:
        """Release resources; always called, also after an error."""

    def count(self, key: str, n: float = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def timed(self, key: str) -> _Timer:
        """``with self.timed("encode"):`` adds the block's wall time to ``timers[key]``."""
        return _Timer(self.timers, key)


class BatchWindow:
    """Messages held back for a fuller batch, and how long the oldest may still wait.

    Detect and classify both gather messages until a batch is full or the first one
    has waited its limit; this is the one copy of that clock.
    """

    def __init__(self, max_wait_ms: float) -> None:
        self.max_wait_ms = max_wait_ms
        self.items: list = []
        self.started = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Any) -> None:
        if not self.items:
            self.started = time.monotonic()
        self.items.append(item)

    def wait_ms(self) -> float | None:
        """Milliseconds until the oldest item is due; None when nothing waits."""
        if not self.items:
            return None
        waited = (time.monotonic() - self.started) * 1000
        return max(0.0, self.max_wait_ms - waited)

    def take(self) -> list:
        items, self.items = self.items, []
        return items


class _Timer:
    def __init__(self, store: dict[str, float], key: str) -> None:
        self.store, self.key = store, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.store[self.key] = self.store.get(self.key, 0.0) + time.perf_counter() - self.start


class Stopped(Exception):
    """SIGTERM/SIGINT arrived: finish what is written and leave."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


class StageRunner:
    """Runs one stage: sockets in and out, the receive loop, statistics, control reports."""

    def __init__(self, stage: Stage, in_endpoint: str | None, out_endpoint: str | None,
                 control_endpoint: str | None = None, bind_input: bool = True,
                 curve=None, insecure: bool = False, gate_endpoint: str | None = None
                 ) -> None:
        self.stage = stage
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        hwm = stage.config.hwm
        self.receiver = self.sender = self.control = None
        self.drain = False
        try:
            if stage.accepts is not None:
                sock = self._open(zmq.PULL, in_endpoint, bind_input, hwm, curve, insecure)
                self.receiver = Receiver(sock, (*stage.accepts, EndOfStream))
            if stage.has_output:
                monitors: list[zmq.Socket] = []
                try:
                    sock = self._open(zmq.PUSH, out_endpoint, not bind_input, hwm, curve,
                                      insecure,
                                      before_connect=lambda s: monitors.append(peer_monitor(s)))
                except BaseException:
                    for monitor in monitors:  # an open monitor would block ctx.term()
                        monitor.close(0)
                    raise
                self.sender = Sender(sock, monitors[0])
            if control_endpoint:
                self.control = self._open(zmq.PUSH, control_endpoint, False, 1000, None, False)
            self.gate = self._open(zmq.PULL, gate_endpoint, True, 1, None, False) \
                if gate_endpoint else None
        except BaseException:
            self.close()
            raise
        self.frames_in = self.frames_out = 0
        self.started: float | None = None
        self.cpu_start = 0.0
        self.busy_s = 0.0
        self.last_progress = 0.0

    def _open(self, kind, endpoint, bind, hwm, curve, insecure,
              before_connect=None) -> zmq.Socket:
        if not endpoint:
            raise GimefiveError(f"stage {self.stage.name}: needs an "
                                f"{'input' if kind == zmq.PULL else 'output'} endpoint")
        sock = open_socket(self.ctx, kind, endpoint, bind=bind, hwm=hwm, curve=curve,
                           insecure=insecure, before_connect=before_connect)
        self.sockets.append(sock)
        return sock

    # -- reporting
    def report(self, event: str, **data: Any) -> None:
        if self.control is not None:
            try:
                self.control.send(control_message(self.stage.name, event, **data), zmq.NOBLOCK)
            except zmq.Again:  # supervisor gone or slow: reports are best effort
                pass

    def stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        wall = now - self.started if self.started else 0.0
        cpu = time.process_time() - self.cpu_start if self.started else 0.0
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "malformed": self.receiver.malformed if self.receiver else 0,
            "last_malformed": self.receiver.last_error if self.receiver else "",
            "wall_s": wall, "cpu_s": cpu, "busy_s": self.busy_s,
            # wall-clock span of the work, comparable across processes on one host
            "first_at": time.time() - (now - self.started) if self.started else None,
            "last_at": time.time(),
            "blocked_s": self.sender.blocked_s if self.sender else 0.0,
            "max_rss_mb": peak_rss_mb(),
            "counters": dict(self.stage.counters), "timers": dict(self.stage.timers),
        }

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            self.report("progress", frames=self.frames_out if self.sender else self.frames_in,
                        malformed=self.receiver.malformed if self.receiver else 0)

    def _start_clock(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_start = time.process_time()

    def _emit(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            if self.sender is None:
                if isinstance(msg, EndOfStream):
                    continue  # a sink: the stream ends here
                raise GimefiveError(f"stage {self.stage.name} produced output but has no output")
            self.sender.send(msg)
            if not isinstance(msg, EndOfStream):
                self.frames_out += 1

    def _timed_emit(self, produce) -> None:
        start = time.perf_counter()
        out = list(produce())
        self.busy_s += time.perf_counter() - start
        self._emit(out)

    # -- main loops
    def run(self) -> dict[str, Any]:
        previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.stage.setup()
            self.report("ready", **self.stage.info())
            self._wait_for_gate()
            if self.receiver is None:
                self._run_source()
            else:
                self._run_filter()
            stats = self.stats()
            self.report("stats", **stats)
            self.drain = True
            return stats
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            try:
                self.stage.close()
            finally:
                self.close()

    def _wait_for_gate(self) -> None:
        """Hold a source until the supervisor says every stage is ready (fair timing), but
        not for ever: a supervisor that died never will."""
        if self.gate is None:
            return
        parent, deadline = os.getppid(), time.monotonic() + GATE_TIMEOUT_S
        while not self.gate.poll(100):
            if time.monotonic() >= deadline or os.getppid() != parent:
                raise GimefiveError(f"no start signal from the supervisor within "
                                    f"{GATE_TIMEOUT_S:g} s (is it still running?)")
        self.gate.recv()

    def _run_source(self) -> None:
        self._start_clock()
        iterator = iter(self.stage.messages())
        while True:
            start = time.perf_counter()
            msg = next(iterator, None)
            self.busy_s += time.perf_counter() - start
            if msg is None:
                return
            self._emit([msg])
            self._progress()

    def _run_filter(self) -> None:
        stage, ended = self.stage, 0
        expected = stage.config.streams
        while expected == 0 or ended < expected:
            wait = stage.wait_ms()
            msg = self.receiver.recv(wait if wait is not None else 1000)
            self._progress()
            if msg is None:
                if wait is not None:
                    self._timed_emit(stage.flush)
                continue
            self._start_clock()
            if isinstance(msg, EndOfStream):
                ended += 1
                self._timed_emit(lambda m=msg: stage.end_stream(m))
                continue
            self.frames_in += 1
            self._timed_emit(lambda m=msg: stage.process(m))

    def close(self) -> None:
        if self.sender is not None:
            if self.drain:  # the end-of-stream is sent: keep it until the next stage leaves
                self.sender.wait_for_peers_to_leave(DRAIN_TIMEOUT_MS / 1000)
            self.sender.close_monitor()
        for sock in self.sockets:
            keep = self.drain and (sock is getattr(self.sender, "sock", None)
                                   or sock is self.control)
            sock.close(linger=DRAIN_TIMEOUT_MS if keep else 0)
        self.sockets.clear()
        self.ctx.term()
