"""Live video sources that survive outages: RTSP cameras (and files played at real time).

Two layers:

* :class:`LiveReader` is a blocking iterator of decoded frames that never ends on its own:
  when the stream closes, stalls (no frame for ``stall_timeout_s``) or fails, it logs the
  outage, reconnects with capped exponential backoff (forever unless ``max_reconnects``
  says otherwise) and carries on. Frame numbers and timestamps continue across
  reconnects: the index counts every decoded frame of the run, the timestamp is the
  run's monotonic clock (1/90000 s units), so JSON and segments stay ordered after an
  outage, and a gap in time shows the outage.
* :class:`LiveSource` runs a reader on a decode thread and hands frames to the consumer
  through a small bounded queue that drops its *oldest* frame when full: the consumer
  always gets the newest frames and never falls behind real time; every dropped frame is
  counted. (Files for ``annotate`` use the pipeline's lossless blocking queue instead.)

Timeouts: PyAV's ``timeout=(open, read)`` interrupts a blocking open or read, which is
how a silent (stalled) TCP connection is noticed; a stream that delivers packets but no
decodable frames is caught by the frame watchdog. Waiting between attempts uses
``Event.wait`` so that :meth:`LiveSource.stop` interrupts a backoff at once.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from gimefive.pipeline.probe import is_live, open_options

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

log = logging.getLogger("gimefive.live")

#: timestamps of live frames: the run's monotonic clock in these units
LIVE_TIME_BASE = Fraction(1, 90000)
#: recent outages a reader remembers (older ones are in the log and the totals)
OUTAGES_KEPT = 100


class LiveSourceError(GimefiveError):
    """The source gave up (reconnect budget spent) or cannot be used at all."""


class StreamLost(Exception):
    """Internal: the current connection is gone (closed, stalled or failed)."""


@dataclass
class LiveOptions:
    """How a live source connects, notices trouble and comes back."""

    transport: str = "tcp"            # RTSP lower transport: tcp | udp
    open_timeout_s: float = 5.0       # connect + handshake + first packets
    stall_timeout_s: float = 5.0      # no frame for this long: the stream is stalled
    backoff_initial_s: float = 0.25   # first wait after a failure
    backoff_max_s: float = 1.0        # cap of the exponential backoff
    max_reconnects: int | None = None  # failed attempts in a row before giving up; None: never
    queue_size: int = 2               # frames buffered between decode and consumer
    loop_files: bool = True           # a file source restarts at its end (test feeds)

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "udp"):
            raise GimefiveError(f"transport must be 'tcp' or 'udp', got {self.transport!r}")
        for name in ("open_timeout_s", "stall_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise GimefiveError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_reconnects is not None and self.max_reconnects < 0:
            raise GimefiveError(f"max_reconnects must be >= 0, got {self.max_reconnects}")
        if self.queue_size < 1:
            raise GimefiveError(f"queue_size must be >= 1, got {self.queue_size}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1, 2, ...): doubling, capped, +-10%."""
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
        return base * random.uniform(0.9, 1.1)


@dataclass
class Outage:
    """One interruption of a stream: when it began, why, and how long it lasted."""

    stream: str
    reason: str
    started: float                    # time.time() when the stream was lost
    duration_s: float | None = None   # None while it lasts
    attempts: int = 0                 # connection attempts until it came back

    def as_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "reason": self.reason, "started": self.started,
                "duration_s": self.duration_s, "attempts": self.attempts}


@dataclass
class LiveFrame:
    """One decoded live frame; ``index`` counts from 0 over the whole run."""

    stream: str
    index: int
    pts: int                 # LIVE_TIME_BASE units since the source started
    t_decoded: float         # time.time() at decode
    image: np.ndarray        # BGR uint8 HxWx3
    source_pts: int | None   # the camera's own timestamp (resets on reconnect)


@dataclass
class LiveCounters:
    """Totals of the run, and the most recent outages (at most ``OUTAGES_KEPT``: a camera
    that drops every few minutes for weeks must not grow the process); ``reconnects``
    counts every outage that ended, so the totals stay right."""

    decoded: int = 0
    dropped: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    connected: bool = False
    outages: collections.deque[Outage] = field(
        default_factory=lambda: collections.deque(maxlen=OUTAGES_KEPT))


class LiveReader:
    """Frames of one live input, reconnecting for as long as it is allowed to.

    Iterating yields :class:`LiveFrame` until ``stop`` is set or the reconnect budget is
    spent (then :class:`LiveSourceError`). Runs in the caller's thread.
    """

    def __init__(self, url: str, stream_id: str = "0", options: LiveOptions | None = None,
                 stop: threading.Event | None = None) -> None:
        self.url = str(url)
        self.stream_id = stream_id
        self.options = options or LiveOptions()
        self.stop = stop or threading.Event()
        self.counters = LiveCounters()
        self.time_base = LIVE_TIME_BASE
        self.rate: Fraction | None = None
        self.size: tuple[int, int] | None = None
        self._clock0 = time.monotonic()
        self._live = is_live(self.url)

    # -- connection
    def _open(self) -> av.container.InputContainer:
        o = self.options
        options = open_options(self.url, o.transport, o.open_timeout_s)
        options.pop("timeout", None)  # PyAV's interrupt timeouts below are the ones we want
        if self._live:
            # FFmpeg's RTSP reader often returns one more (empty) read after the first
            # interrupt, so a silent stream surfaces after about two read timeouts
            return av.open(self.url, options=options,
                           timeout=(o.open_timeout_s, max(0.25, o.stall_timeout_s / 2)))
        return av.open(self.url)

    def _connect(self, outage: Outage | None) -> av.container.InputContainer:
        """Open the stream; after a loss, retry with backoff until it works or we give up."""
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            try:
                container = self._open()
                if not container.streams.video:
                    container.close()
                    raise StreamLost("no video stream")
                if outage is not None:
                    outage.attempts += 1
                return container
            except (av.error.FFmpegError, StreamLost, OSError) as exc:
                reason = _reason(exc)
                if outage is None:  # the very first connection failed
                    outage = self._begin_outage(f"cannot connect: {reason}")
                outage.attempts += 1
                limit = self.options.max_reconnects
                if limit is not None and attempt > limit:
                    raise self._gave_up(attempt - 1, reason) from None
                delay = self.options.backoff(attempt)
                log.debug("stream %s: attempt %d failed (%s); next in %.2f s",
                          self.stream_id, attempt, reason, delay)
                self.stop.wait(delay)
        raise StreamLost("stopped")

    def _gave_up(self, reconnects: int, reason: str) -> LiveSourceError:
        """The one line saying this camera is given up (the monitor prints it as is).

        No URL in it: the camera's id names it, and a URL may hold a password (the
        reason is already redacted by :func:`_reason`).
        """
        return LiveSourceError(f"camera {self.stream_id} gave up after {reconnects} "
                               f"reconnect attempt(s): {reason}")

    def _begin_outage(self, reason: str, started: float | None = None,
                      attempts: int = 0) -> Outage:
        outage = Outage(self.stream_id, reason, started or time.time(), attempts=attempts)
        self.counters.outages.append(outage)
        self.counters.connected = False
        log.warning("stream %s: lost (%s); reconnecting", self.stream_id, reason)
        return outage

    def _end_outage(self, outage: Outage) -> None:
        outage.duration_s = time.time() - outage.started
        self.counters.reconnects += 1
        log.warning("stream %s: back after %.1f s outage (%d attempt(s); %s)",
                    self.stream_id, outage.duration_s, outage.attempts, outage.reason)

    # -- frames
    def __iter__(self) -> Iterator[LiveFrame]:
        outage: Outage | None = None
        while not self.stop.is_set():
            try:
                container = self._connect(outage)
            except StreamLost:
                return
            self.counters.connected = True
            try:
                # the outage ends with the first decoded frame, not with the handshake
                yield from self._frames(container, outage)
                reason = "end of stream (server closed it)"
            except StreamLost as exc:
                reason = str(exc)
            finally:
                container.close()
            if outage is not None and outage.duration_s is None:
                self.counters.outages.remove(outage)  # connected, but never a frame:
                reason = f"{outage.reason}; then {reason}"  # the same outage goes on
            if self.stop.is_set():
                return
            if not self._live and not self.options.loop_files:
                return
            if not self._live:  # a looping file: start again at once, no outage
                outage = None
                continue
            attempts = outage.attempts if outage is not None and outage.duration_s is None else 0
            started = outage.started if outage is not None and outage.duration_s is None else None
            outage = self._begin_outage(reason, started, attempts)

    def _frames(self, container, outage: Outage | None) -> Iterator[LiveFrame]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self.rate = Fraction(rate)
        pace = None if self._live else _Pacer(self.stop)
        stall = self.options.stall_timeout_s
        last_frame = time.monotonic()
        try:
            for packet in container.demux(stream):
                if self.stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:  # a damaged packet (UDP loss): skip, count
                    self.counters.decode_errors += 1
                    frames = []
                now = time.monotonic()
                if not frames and now - last_frame > stall:
                    raise StreamLost(f"stalled: packets but no frame for {now - last_frame:.1f} s")
                for frame in frames:
                    if pace is not None:
                        pace.wait_until(frame.time)
                    last_frame = time.monotonic()
                    if outage is not None and outage.duration_s is None:
                        self._end_outage(outage)
                    yield self._make(frame)
        except av.error.ExitError:
            gap = time.monotonic() - last_frame
            raise StreamLost(f"stalled: no data for {gap:.1f} s") from None
        except av.error.FFmpegError as exc:
            raise StreamLost(f"read failed: {_reason(exc)}") from None

    def _make(self, frame: av.VideoFrame) -> LiveFrame:
        image = frame.to_ndarray(format="bgr24")
        self.size = (image.shape[1], image.shape[0])
        pts = round((time.monotonic() - self._clock0) / self.time_base)
        out = LiveFrame(self.stream_id, self.counters.decoded, pts, time.time(), image,
                        frame.pts)
        self.counters.decoded += 1
        return out


class _Pacer:
    """Plays a file at its own frame rate (a stand-in camera for tests and benchmarks)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.start: float | None = None
        self.t0 = 0.0

    def wait_until(self, t: float | None) -> None:
        if t is None:
            return
        if self.start is None:
            self.start, self.t0 = time.monotonic(), t
        due = self.start + (t - self.t0) - time.monotonic()
        if due > 0:
            self.stop.wait(due)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return redact_text(exc.strerror or type(exc).__name__)
    return redact_text(str(exc) or type(exc).__name__)


class DropOldestQueue:
    """A bounded queue that, when full, discards its oldest item (and counts it)."""

    def __init__(self, maxsize: int) -> None:
        self.items: collections.deque = collections.deque()
        self.maxsize = maxsize
        self.cond = threading.Condition()
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self.cond:
            if len(self.items) >= self.maxsize:
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.cond.notify()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item, or ``None`` when ``timeout`` passed with the queue empty."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.items, timeout):
                return None
            return self.items.popleft()

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)


class LiveSource:
    """A :class:`LiveReader` on its own decode thread, behind a drop-oldest queue.

    ``get(timeout)`` returns the next :class:`LiveFrame`, or ``None`` when none came in
    time (the stream may be in an outage). Iterating ends when the reader has ended and
    the queue is empty; if the reader ended with an error (the reconnect budget was
    spent) the error is raised to the consumer then.
    """

    def __init__(self, url: str, stream_id: str = "0", options: LiveOptions | None = None
                 ) -> None:
        self.options = options or LiveOptions()
        self.stop_event = threading.Event()
        self.reader = LiveReader(url, stream_id, self.options, self.stop_event)
        self.queue = DropOldestQueue(self.options.queue_size)
        self.thread = threading.Thread(target=self._run, name=f"decode-{stream_id}",
                                       daemon=True)
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.delivered = 0

    @property
    def stream_id(self) -> str:
        return self.reader.stream_id

    def start(self) -> LiveSource:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.reader:
                self.queue.put(frame)
        except BaseException as exc:  # handed to the consumer by get()
            self.error = exc
        finally:
            self.finished.set()
            with self.queue.cond:
                self.queue.cond.notify_all()

    @property
    def done(self) -> bool:
        return self.finished.is_set() and len(self.queue) == 0

    def get(self, timeout: float | None = None) -> LiveFrame | None:
        if self.done:
            if self.error is not None:
                raise self.error
            return None
        item = self.queue.get(timeout)
        if item is not None:
            self.delivered += 1
        return item

    def __iter__(self) -> Iterator[LiveFrame]:
        while not self.done:
            frame = self.get(timeout=0.5)
            if frame is not None:
                yield frame
        if self.error is not None:
            raise self.error

    def stats(self) -> dict[str, Any]:
        """Counters for the status line and the JSON (``dropped`` = dropped by the queue)."""
        c = self.reader.counters
        return {"stream": self.stream_id, "url": redact_url(self.reader.url),
                "connected": c.connected,
                "decoded": c.decoded, "delivered": self.delivered, "dropped": self.queue.dropped,
                "queue": len(self.queue),
                "decode_errors": c.decode_errors, "reconnects": c.reconnects,
                "outages": [o.as_dict() for o in c.outages]}

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the decode thread to end; waits at most ``timeout`` (a blocked read ends at
        the read timeout)."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> LiveSource:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
