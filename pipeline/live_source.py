"""Live inputs that survive outages: RTSP cameras, and video files played as cameras.

* :class:`RtspReader` (kind ``rtsp``) reads a network stream and never ends on its own:
  when the stream closes, stalls (no frame for ``stall_timeout_s``) or fails, it logs the
  outage, reconnects with capped exponential backoff (forever unless ``max_reconnects``
  says otherwise) and carries on. Frame numbers and timestamps continue across
  reconnects: the index counts every decoded frame of the run, the timestamp is the
  run's monotonic clock (1/90000 s units), so JSON and segments stay ordered after an
  outage, and a gap in time shows the outage.
* :class:`LoopReader` (kind ``loop``) plays a video file at its frame rate, looping: the
  stand-in camera of tests and benchmarks.

Both are :class:`~gimefive.pipeline.readers.InputReader` subclasses marked live, so the
source stage (:mod:`gimefive.pipeline.stages.source`) puts them behind a drop-oldest
queue: the pipeline always gets the newest frames, never falls behind real time, and
every dropped frame is counted.

Timeouts: PyAV's ``timeout=(open, read)`` interrupts a blocking open or read, which is
how a silent (stalled) TCP connection is noticed; a stream that delivers packets but no
decodable frames is caught by the frame watchdog. Waiting between attempts uses
``Event.wait`` on the reader's ``stop`` event, so a stop interrupts a backoff at once.
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
from gimefive.pipeline.probe import open_options
from gimefive.pipeline.readers import (
    BgrConverter,
    FileReader,
    Frame,
    InputReader,
    check_local_input,
    reason,
)
from gimefive.pipeline.wallclock import camera_utc

from gimefive.config import check_settings, setting
from gimefive.errors import GimefiveError
from gimefive.urls import redact_url

log = logging.getLogger("gimefive.live")

#: timestamps of live frames: the run's monotonic clock in these units
LIVE_TIME_BASE = Fraction(1, 90000)
#: recent outages a reader remembers (older ones are in the log and the totals)
OUTAGES_KEPT = 100


class LiveSourceError(GimefiveError):
    """The source gave up (reconnect budget spent) or cannot be used at all."""


class CameraGaveUp(LiveSourceError):
    """The reconnect budget is spent: the camera is given up for good. Its source stage
    exits with :data:`~gimefive.pipeline.supervisor.EXIT_GAVE_UP`, so a supervisor knows
    it from the exit status, not from the wording of the line."""


class StreamLost(Exception):
    """Internal: the current connection is gone (closed, stalled or failed)."""


#: ``max_reconnects`` value meaning "never give up" (everywhere: YAML, flags, JSON)
NEVER_GIVE_UP = -1


@dataclass
class LiveOptions:
    """How a live source connects, notices trouble and comes back: the one camera-options
    type (``MonitorConfig`` extends it; a camera's stage gets exactly these fields)."""

    transport: str = setting("tcp", choices=("tcp", "udp"), help="RTSP input transport.")
    open_timeout_s: float = setting(5.0, min=0, min_open=True, help="Seconds to connect, "
                                    "handshake and get the first packets.")
    stall_timeout_s: float = setting(5.0, min=0, min_open=True, flag="--stall-timeout",
                                     help="Seconds without a frame before a stream counts "
                                          "as stalled and is reconnected.")
    backoff_initial_s: float = setting(0.25, min=0, min_open=True, help="First wait after "
                                       "a failed connection; it doubles with each failure.")
    backoff_max_s: float = setting(1.0, min=0, min_open=True, help="Longest wait between "
                                   "reconnect attempts.")
    max_reconnects: int = setting(NEVER_GIVE_UP, min=NEVER_GIVE_UP, help="Failed reconnect "
                                  "attempts in a row before a camera is given up; -1: never.")
    queue_size: int = setting(8, min=1, help="Decoded frames waiting to be sent; when full "
                              "the oldest is dropped (and counted). 8 (a third of a second "
                              "at 25 fps) absorbs a burst, such as five new faces "
                              "measured at once, that 2 frames could not; the run degrades "
                              "when it stays full.")
    loop_files: bool = setting(True, help="A video file source restarts at its end "
                               "(test feeds).")

    def __post_init__(self) -> None:
        check_settings(self, "camera option")

    def gives_up_after(self, attempt: int) -> bool:
        """True when failed attempt ``attempt`` (1, 2, ...) spends the reconnect budget."""
        return self.max_reconnects != NEVER_GIVE_UP and attempt > self.max_reconnects

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


class RtspReader(InputReader):
    """Frames of a network stream, reconnecting for as long as it is allowed to.

    :meth:`read` yields :class:`Frame` until ``stop`` is set or the reconnect budget is
    spent (then :class:`LiveSourceError`). Runs in the caller's thread.
    """

    live = True

    def __init__(self, url: str, stream_id: str = "0", options: LiveOptions | None = None,
                 threads: int = 1, stop: threading.Event | None = None) -> None:
        super().__init__(url, stream_id, options or LiveOptions(), threads, stop)
        self.counters = LiveCounters()
        self.time_base = LIVE_TIME_BASE
        self.size: tuple[int, int] | None = None
        self._clock0 = time.monotonic()
        self._container: Any = None
        self._to_bgr = BgrConverter(threads)  # one for the run: reconnects keep it

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {"stream": self.stream_id, "url": redact_url(self.url),
                "connected": c.connected, "decoded": c.decoded,
                "decode_errors": c.decode_errors, "reconnects": c.reconnects,
                "outages": [o.as_dict() for o in c.outages]}

    # -- connection
    def _open(self) -> av.container.InputContainer:
        o = self.options
        options = open_options(self.url, o.transport, o.open_timeout_s)
        options.pop("timeout", None)  # PyAV's interrupt timeouts below are the ones we want
        # FFmpeg's RTSP reader often returns one more (empty) read after the first
        # interrupt, so a silent stream surfaces after about two read timeouts
        return av.open(self.url, options=options,
                       timeout=(o.open_timeout_s, max(0.25, o.stall_timeout_s / 2)))

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
                why = reason(exc)
                if outage is None:  # the very first connection failed
                    outage = self._begin_outage(f"cannot connect: {why}")
                outage.attempts += 1
                if self.options.gives_up_after(attempt):
                    raise self._gave_up(attempt - 1, why) from None
                delay = self.options.backoff(attempt)
                log.debug("stream %s: attempt %d failed (%s); next in %.2f s",
                          self.stream_id, attempt, why, delay)
                self.stop.wait(delay)
        raise StreamLost("stopped")

    def _gave_up(self, reconnects: int, why: str) -> CameraGaveUp:
        """The one line saying this camera is given up (the monitor prints it as is).

        No URL in it: the camera's id names it, and a URL may hold a password (the
        reason is already redacted by :func:`reason`).
        """
        return CameraGaveUp(f"camera {self.stream_id} gave up after {reconnects} "
                            f"reconnect attempt(s): {why}")

    def _begin_outage(self, why: str, started: float | None = None,
                      attempts: int = 0) -> Outage:
        outage = Outage(self.stream_id, why, started or time.time(), attempts=attempts)
        self.counters.outages.append(outage)
        self.counters.connected = False
        log.warning("stream %s: lost (%s); reconnecting", self.stream_id, why)
        return outage

    def _end_outage(self, outage: Outage) -> None:
        outage.duration_s = time.time() - outage.started
        self.counters.reconnects += 1
        log.warning("stream %s: back after %.1f s outage (%d attempt(s); %s)",
                    self.stream_id, outage.duration_s, outage.attempts, outage.reason)

    # -- frames
    def read(self) -> Iterator[Frame]:
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
                why = "end of stream (server closed it)"
            except StreamLost as exc:
                why = str(exc)
            finally:
                container.close()
            if outage is not None and outage.duration_s is None:
                self.counters.outages.remove(outage)  # connected, but never a frame:
                why = f"{outage.reason}; then {why}"  # the same outage goes on
            if self.stop.is_set():
                return
            attempts = outage.attempts if outage is not None and outage.duration_s is None else 0
            started = outage.started if outage is not None and outage.duration_s is None else None
            outage = self._begin_outage(why, started, attempts)

    def _frames(self, container, outage: Outage | None) -> Iterator[Frame]:
        self._container = container  # its RTCP wall clock dates the frames (_make)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self.rate = Fraction(rate)
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
                    last_frame = time.monotonic()
                    if outage is not None and outage.duration_s is None:
                        self._end_outage(outage)
                    yield self._make(frame)
        except av.error.ExitError:
            gap = time.monotonic() - last_frame
            raise StreamLost(f"stalled: no data for {gap:.1f} s") from None
        except av.error.FFmpegError as exc:
            raise StreamLost(f"read failed: {reason(exc)}") from None

    def _make(self, frame: av.VideoFrame) -> Frame:
        image = self._to_bgr(frame)
        self.size = (image.shape[1], image.shape[0])
        pts = round((time.monotonic() - self._clock0) / self.time_base)
        out = Frame(self.counters.decoded, pts, image, time.time(),
                    camera_utc(self._container, frame))
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


class LoopReader(InputReader):
    """A video file played as a camera: at its own frame rate, from the start again at
    its end (unless ``options.loop_files`` is off). Numbers and timestamps continue like
    a camera's (the run's clock), and a restart at the end is not an outage."""

    live = True

    def __init__(self, url: str, stream_id: str = "0", options: LiveOptions | None = None,
                 threads: int = 1, stop: threading.Event | None = None) -> None:
        super().__init__(url, stream_id, options or LiveOptions(), threads, stop)
        check_local_input(self.url)  # one line now, not a failing decode thread later
        self.time_base = LIVE_TIME_BASE
        self.decoded = 0
        self._clock0 = time.monotonic()

    def read(self) -> Iterator[Frame]:
        while not self.stop.is_set():
            file = FileReader(self.url, self.stream_id, threads=self.threads, stop=self.stop)
            self.rate = file.rate
            pace = _Pacer(self.stop)
            try:
                for frame in file.read():
                    if frame.pts is not None:
                        pace.wait_until(float(frame.pts * file.time_base))
                    if self.stop.is_set():
                        return
                    pts = round((time.monotonic() - self._clock0) / self.time_base)
                    yield Frame(self.decoded, pts, frame.image, time.time())
                    self.decoded += 1
            finally:
                file.close()
            if not self.options.loop_files:
                return

    def stats(self) -> dict[str, Any]:
        return {"stream": self.stream_id, "url": redact_url(self.url), "connected": True,
                "decoded": self.decoded, "decode_errors": 0, "reconnects": 0, "outages": []}
