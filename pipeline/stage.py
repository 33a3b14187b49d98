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
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import zmq
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.control import control_message
from gimefive.pipeline.messages import EndOfStream, Message
from gimefive.pipeline.reorder import input_receiver
from gimefive.pipeline.replicas import fan_out, split_endpoints
from gimefive.pipeline.shared_frames import RING_WAIT, SharedFrames
from gimefive.pipeline.transport import Sender, leaves_host, open_socket, peer_monitor

from gimefive.errors import GimefiveError
from gimefive.memory import peak_rss_mb, process_age_s

PROGRESS_EVERY_S = 0.5
#: how often a stage's live counters (:meth:`Stage.live_stats`) go to the supervisor
LIVE_EVERY_S = 1.0
#: after the end of a stream whose next stage runs until stopped (a live run), how long
#: the output socket may take to deliver what is queued (that stage never leaves)
LIVE_LINGER_MS = 1000
#: after a normal end, how long the output socket may take to deliver what is queued
#: (linger 0 would discard the last frames and the end-of-stream message)
DRAIN_TIMEOUT_MS = 120_000
#: how long a source waits at the gate for the supervisor's start signal (the other
#: stages load their models meanwhile); past it the stage ends with one line
GATE_TIMEOUT_S = 600.0
#: messages queued per hop (per side) in a file job; a live run queues 1: low latency
HWM = 4
LIVE_HWM = 1


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

    def messages(self) -> Iterator[Message | None]:
        """For source stages: the messages to send (the runner adds nothing). ``None``
        means "nothing to send now" (a camera in an outage): the runner then does its
        reports and asks again."""
        raise NotImplementedError(f"stage {self.name} has no input; it must override messages()")

    def live_stats(self) -> dict[str, Any] | None:
        """Counters the supervisor shows while the stage runs (a camera: decoded, dropped,
        reconnects, outages; a live sink: written per stream); None: nothing to show.
        The runner sends them as a "live" report about once a second, also while no
        frame flows, and once more after :meth:`close`."""
        return None

    def stop(self) -> bool:
        """SIGTERM arrived. True: the stage ends by itself, soon and cleanly (a live source
        ends its stream, so the frames in flight are still written); False: the stage is
        interrupted at once (the runner raises :class:`Stopped`)."""
        return False

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


def startup_report(setup_s: float) -> dict[str, Any]:
    """What the ready report says about the stage's start-up: process start to ready
    (``startup_s``; absent without /proc), split into ``import_s`` (the interpreter,
    imports, sockets) and ``setup_s`` (models loaded, warm-up), and whether torch was
    imported (seconds of it; a stage that needs no torch should not load it)."""
    out = {"setup_s": round(setup_s, 2), "torch": "torch" in sys.modules}
    age = process_age_s()
    if age is not None:
        out |= {"startup_s": round(age, 2), "import_s": round(max(0.0, age - setup_s), 2)}
    return out


class Stopped(Exception):
    """SIGTERM/SIGINT arrived: finish what is written and leave."""


class StageRunner:
    """Runs one stage: sockets in and out, the receive loop, statistics, control reports."""

    def __init__(self, stage: Stage, in_endpoint: str | None, out_endpoint: str | None,
                 control_endpoint: str | None = None, bind_input: bool = True,
                 curve=None, insecure: bool = False, gate_endpoint: str | None = None,
                 hwm: int = HWM, ends: int = 1, upstream: int = 1,
                 frames_dir: str | None = None) -> None:
        """``hwm`` and ``ends`` are facts of the run, not user settings: how many messages
        queue per hop (per side), and how many end-of-stream messages end this stage
        (one per stream of a file job; 0: a live run, until stopped). ``upstream``: the
        replicas of the stage before, whose frames are put back in order here; an
        ``out_endpoint`` "A,B" sends to the replicas of the next (pipeline.replicas).
        ``frames_dir``: the run's folder of frames in shared memory (the last stage
        releases each frame there once it is done with it; pipeline.shared_frames)."""
        self.stage = stage
        self.ends = ends
        self.frames = None
        self.releases_on_send = False  # the frames' last stage on this host sends on
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.out_sockets: list[zmq.Socket] = []
        self.receiver = self.sender = self.control = None
        self.drain = False
        try:
            if stage.accepts is not None:
                sock = self._open(zmq.PULL, in_endpoint, bind_input, hwm, curve, insecure)
                # ends > 0: a forged end-of-stream would end this stage; refuse it
                self.receiver = input_receiver(sock, (*stage.accepts, EndOfStream), ends,
                                               upstream, type(stage).name, stage.counters)
                if frames_dir:
                    self.frames = self.receiver.frames = SharedFrames(frames_dir)
                    self.releases_on_send = stage.has_output and any(
                        leaves_host(e) for e in split_endpoints(out_endpoint))
            if stage.has_output:
                senders: list[Sender] = []
                try:
                    for endpoint in split_endpoints(out_endpoint):  # several: replicas
                        senders.append(self._open_sender(endpoint, not bind_input, hwm,
                                                         curve, insecure))
                    self.sender = fan_out(senders, type(stage).name)
                except BaseException:
                    for sender in senders:  # an open monitor would block ctx.term()
                        sender.close_monitor()
                    raise
                self.out_sockets = [sender.sock for sender in senders]
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
        self.last_live = 0.0
        self.last_connected: bool | None = None
        self.stopping = False

    def _open(self, kind, endpoint, bind, hwm, curve, insecure,
              before_connect=None) -> zmq.Socket:
        if not endpoint:
            raise GimefiveError(f"stage {self.stage.name}: needs an "
                                f"{'input' if kind == zmq.PULL else 'output'} endpoint")
        sock = open_socket(self.ctx, kind, endpoint, bind=bind, hwm=hwm, curve=curve,
                           insecure=insecure, before_connect=before_connect)
        self.sockets.append(sock)
        return sock

    def _open_sender(self, endpoint, bind, hwm, curve, insecure) -> Sender:
        monitors: list[zmq.Socket] = []
        try:
            sock = self._open(zmq.PUSH, endpoint, bind, hwm, curve, insecure,
                              before_connect=lambda s: monitors.append(peer_monitor(s)))
        except BaseException:
            for monitor in monitors:  # an open monitor would block ctx.term()
                monitor.close(0)
            raise
        return Sender(sock, monitors[0], inline=leaves_host(endpoint))

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
        # a source waiting for a free slot of its ring (shared_frames) is held back by
        # the stages after it, as by a full socket queue: blocked, not busy
        waited = self.stage.timers.get(RING_WAIT, 0.0)
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "malformed": self.receiver.malformed if self.receiver else 0,
            "last_malformed": self.receiver.last_error if self.receiver else "",
            "wall_s": wall, "cpu_s": cpu, "busy_s": self.busy_s - waited,
            # wall-clock span of the work, comparable across processes on one host
            "first_at": time.time() - (now - self.started) if self.started else None,
            "last_at": time.time(),
            "blocked_s": (self.sender.blocked_s if self.sender else 0.0) + waited,
            "max_rss_mb": peak_rss_mb(),
            "counters": dict(self.stage.counters), "timers": dict(self.stage.timers),
        }

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            self.report("progress", frames=self.frames_out if self.sender else self.frames_in,
                        malformed=self.receiver.malformed if self.receiver else 0)

    def _report_live(self, force: bool = False) -> None:
        """The stage's live counters, about once a second (``force``: now), and at once
        when a camera connects or loses its connection: otherwise frames written could
        show before the camera that sent them shows up (its report up to a second late)."""
        now = time.monotonic()
        stats = self.stage.live_stats()
        if stats is None:
            return
        connected = stats.get("connected")
        if force or now - self.last_live >= LIVE_EVERY_S or connected != self.last_connected:
            self.last_live, self.last_connected = now, connected
            self.report("live", **stats)

    def _on_signal(self, signum, frame) -> None:
        """A stage that can end cleanly is asked to (once); otherwise, or on a second
        signal, it is interrupted."""
        if not self.stopping and self.stage.stop():
            self.stopping = True
            return
        raise Stopped(signal.Signals(signum).name)

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
                if self.releases_on_send:  # sent inline to another host: done with here
                    self.frames.release(msg.image)

    def _timed_emit(self, produce) -> None:
        start = time.perf_counter()
        out = list(produce())
        self.busy_s += time.perf_counter() - start
        self._emit(out)

    # -- main loops
    def run(self) -> dict[str, Any]:
        # Under a supervisor (a control endpoint) SIGINT is ignored: Ctrl-C in a terminal
        # reaches every process of the group, and the supervisor decides the order of the
        # stop (it sends SIGTERM); alone, Ctrl-C stops the stage like SIGTERM.
        interrupt = signal.SIG_IGN if self.control is not None else self._on_signal
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_signal),
                    signal.SIGINT: signal.signal(signal.SIGINT, interrupt)}
        try:
            try:
                setup_start = time.perf_counter()
                self.stage.setup()
                self.report("ready", **self.stage.info(),
                            startup=startup_report(time.perf_counter() - setup_start))
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
                try:
                    self.stage.close()
                finally:
                    self._report_live(force=True)  # the final counters
                    self.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

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
        iterator, end = iter(self.stage.messages()), object()
        while True:
            start = time.perf_counter()
            msg = next(iterator, end)
            self.busy_s += time.perf_counter() - start
            if msg is end:
                return
            if msg is not None:
                self._emit([msg])
            self._progress()
            self._report_live()

    def _run_filter(self) -> None:
        stage, ended = self.stage, 0
        expected = self.ends
        while expected == 0 or ended < expected:
            wait = stage.wait_ms()
            msg = self.receiver.recv(wait if wait is not None else 1000)
            self._progress()
            self._report_live()
            if msg is None:
                if wait is not None:
                    self._timed_emit(stage.flush)
                continue
            self._start_clock()
            if isinstance(msg, EndOfStream):
                ended += 1
                self._timed_emit(lambda m=msg: stage.end_stream(m))
                if self.frames is not None:
                    self.frames.forget(msg.stream)
                continue
            self.frames_in += 1
            self._timed_emit(lambda m=msg: stage.process(m))
            if self.sender is None and self.frames is not None:
                self.frames.release(msg.image)  # the last stage: the frame is done with

    def close(self) -> None:
        # a live run's next stage runs until stopped: it never leaves, so do not wait
        live = self.ends == 0
        if self.sender is not None:
            if self.drain and not live:  # the end-of-stream is sent: keep it until the
                self.sender.wait_for_peers_to_leave(DRAIN_TIMEOUT_MS / 1000)  # next leaves
            self.sender.close_monitor()
        linger = LIVE_LINGER_MS if live else DRAIN_TIMEOUT_MS
        for sock in self.sockets:
            keep = self.drain and (any(sock is out for out in self.out_sockets)
                                   or sock is self.control)
            if sock is self.control and not keep:  # the last reports (final counters,
                sock.close(linger=LIVE_LINGER_MS)  # after a stop too) are small
                continue
            sock.close(linger=linger if keep else 0)
        self.sockets.clear()
        self.ctx.term()
        if self.frames is not None:
            self.frames.close()
