"""The source stage: one input reader on a decode thread, its frames sent as FrameMsg.

One stage for every input: what it reads is an :class:`~gimefive.pipeline.readers.InputReader`
chosen by kind (a file, an RTSP camera, a file played as a camera; see
:mod:`gimefive.pipeline.readers`), and the queue between the decode thread and the
sender follows the reader: *blocking* for a file (lossless: when the pipeline is slower
than decoding, decoding waits), *drop-oldest* for a live input (a camera cannot wait:
the newest frames go on and every dropped one is counted), whichever command opened it.

A live source sends its camera's counters with each frame (``extra["live"]``) and, about
once a second, to the supervisor (:meth:`SourceStage.live_stats`), also during an outage,
when no frame flows. Asked to stop (SIGTERM), it ends its stream cleanly, so the frames
in flight are still written; a camera whose reconnect budget is spent also ends its
stream first, then fails the stage with the give-up line.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline import degrade
from gimefive.pipeline.live_source import LiveOptions
from gimefive.pipeline.messages import EndOfStream, FrameMsg, Message
from gimefive.pipeline.probe import check_frame_size
from gimefive.pipeline.readers import Frame, InputReader, open_reader
from gimefive.pipeline.shared_frames import (
    RENEW_S,
    RING_WAIT,
    FrameRing,
    remove_rings,
    ring_name,
    ring_slots,
)
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.timestamps import IncreasingPts, frame_step

from gimefive.errors import GimefiveError
from gimefive.urls import expand_env, redact_text

log = logging.getLogger(__name__)
#: frames between decoding and sending for a file (a live input: its queue_size option)
FILE_QUEUE_SIZE = 8
#: a restarted source continues numbering this far past the last reported frame, so no
#: index is ever used twice (frames sent after the last report are at most ~1 s worth)
RESTART_INDEX_GAP = 1000
#: a camera's counters carried by each of its frames (and so by the JSON lines)
FRAME_COUNTERS = ("decoded", "dropped", "reconnects", "queue", "decode_errors")


class FrameQueue:
    """A bounded queue between the decode thread and the sender.

    ``block``: a full queue blocks the producer (files: lossless). ``drop_oldest``: a
    full queue discards its oldest item and counts it (live: never fall behind).
    """

    def __init__(self, maxsize: int, policy: str = "block") -> None:
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"queue policy must be block or drop_oldest, got {policy!r}")
        self.items: collections.deque = collections.deque()
        self.maxsize, self.policy = maxsize, policy
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = self.finished = False

    def put(self, item: Any) -> bool:
        """False when the consumer has gone (the producer should stop)."""
        with self.cond:
            while self.policy == "block" and len(self.items) >= self.maxsize and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            if len(self.items) >= self.maxsize:
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item; ``None`` when ``timeout`` passed or the producer finished
        with the queue empty."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.items or self.finished, timeout) \
                    or not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def finish(self) -> None:
        """The producer is done: a waiting :meth:`get` returns."""
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def close(self) -> None:
        """The consumer is done: a blocked :meth:`put` returns False."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)


class FrameFeed:
    """A reader on its own decode thread, behind a :class:`FrameQueue` whose policy
    follows the reader (live: drop-oldest, else blocking).

    ``get(timeout)`` returns the next :class:`Frame`, or ``None`` when none came in time
    (a camera in an outage) or the reader has ended (then :attr:`done`). If the reader
    ended with an error (a file that cannot be decoded, a camera given up), ``get``
    raises it once every frame before it was taken.
    """

    def __init__(self, reader: InputReader, queue_size: int | None = None) -> None:
        self.reader = reader
        if queue_size is None:  # a camera's own option; a file's is fixed
            queue_size = reader.options.queue_size if reader.live else FILE_QUEUE_SIZE
        self.queue = FrameQueue(queue_size, "drop_oldest" if reader.live else "block")
        self.thread = threading.Thread(target=self._run, name=f"decode-{reader.stream_id}",
                                       daemon=True)
        self.error: BaseException | None = None
        self.delivered = 0

    def start(self) -> FrameFeed:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.reader.read():
                if not self.queue.put(frame):
                    return
        except BaseException as exc:  # handed to the consumer by get()
            self.error = exc
        finally:
            self.queue.finish()

    @property
    def done(self) -> bool:
        return self.queue.finished and len(self.queue) == 0

    def get(self, timeout: float | None = None) -> Frame | None:
        frame = self.queue.get(timeout)
        if frame is not None:
            self.delivered += 1
        elif self.done and self.error is not None:
            raise self.error
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while not self.done:
            frame = self.get(timeout=0.5)
            if frame is not None:
                yield frame
        if self.error is not None:
            raise self.error

    def stats(self) -> dict[str, Any]:
        """The reader's counters and the queue's (``dropped``: dropped by the queue)."""
        return self.reader.stats() | {"delivered": self.delivered,
                                      "dropped": self.queue.dropped, "queue": len(self.queue)}

    def stop(self, timeout: float = 10.0) -> None:
        """End the decode thread; waits at most ``timeout`` (a blocked read ends at the
        read timeout)."""
        self.reader.stop.set()
        self.queue.close()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> FrameFeed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def live_utc(frame: Frame) -> dict[str, Any]:
    """A live frame's wall-clock time for its records (see
    :mod:`gimefive.pipeline.wallclock`): the camera's (RTCP) when it sent one, else the
    arrival (decode) time. Files keep their pts and get none."""
    if frame.utc is not None:
        return {"utc": frame.utc, "utc_source": "rtcp"}
    return {"utc": frame.t_decoded or time.time(), "utc_source": "arrival"}


class SourceStage(Stage):
    """Job keys: ``input`` (file or URL), ``reader`` (kind; default ``auto``: a URL is
    a camera, a path a file), ``stream`` (id; when given the stage reports as
    ``source-ID``), ``live`` (LiveOptions fields), ``index_from`` (the first frame
    number, after a restart)."""

    name = "source"
    accepts = None

    def __init__(self, config, **job: Any) -> None:
        super().__init__(config, **job)
        stream = job.get("stream")
        self.stream_id = str(stream or "0")
        if stream:  # one of several cameras: the supervisor knows it by this name
            self.name = f"source-{self.stream_id}"
        self.stopping = False
        self.sent = 0
        self.gave_up: BaseException | None = None
        self.degrader = degrade.Degrader()  # live inputs only: files never degrade
        self.frames_dir = job.get("frames_dir")
        self.ring: FrameRing | None = None  # made at the first frame, when frames_dir
        self.rings_made = 0

    def setup(self) -> None:
        if not self.job.get("input"):
            raise GimefiveError("source stage needs an input (--in VIDEO or URL)")
        options = LiveOptions(**(self.job.get("live") or {}))
        # ${VAR} (a password in the environment) is expanded here, where the URL is
        # opened, never in the parent: argv, logs and files keep the unexpanded form
        self.reader = open_reader(expand_env(str(self.job["input"])),
                                  self.job.get("reader") or "auto",
                                  self.stream_id, options, self.config.decode_threads,
                                  decode_device=self.config.decode_device)
        self.feed = FrameFeed(self.reader)
        self.index_from = int(self.job.get("index_from") or 0)
        tb = self.reader.time_base
        self.time_base = [tb.numerator, tb.denominator]
        self.clock = IncreasingPts(frame_step(self._rate(), self.time_base))

    def _rate(self) -> list[int] | None:
        rate = self.reader.rate  # a camera's is known once it is connected
        return [rate.numerator, rate.denominator] if rate else None

    def info(self) -> dict[str, Any]:
        return self.reader.info()

    def live_stats(self) -> dict[str, Any] | None:
        if not hasattr(self, "feed") or not self.reader.live:
            return None
        stats = self.feed.stats() | {"sent": self.sent, "degrade_step": self.degrader.step,
                                     "degrade_raises": self.degrader.raises,
                                     "intervals": degrade.intervals(self.config,
                                                                    self.degrader.step)}
        stats["outages"] = stats.get("outages", [])[-5:]  # the recent ones; the log has all
        return stats

    def stop(self) -> bool:
        """A live input ends its stream cleanly; a file is interrupted (as before)."""
        if not hasattr(self, "reader") or not self.reader.live:
            return False
        self.stopping = True
        self.reader.stop.set()
        return True

    def process(self, msg: Frame) -> list[Message]:
        image = msg.image
        # a frame over the limit would cost that much in every queue down the pipeline
        check_frame_size(image.shape[1], image.shape[0], self.config.max_pixels,
                         f"frame {msg.index} of the input")
        pts = self.clock(msg.pts)  # missing, repeated or going back: after the previous one
        self.counters["pts_repaired"] = self.clock.repaired
        extra = {}
        if self.reader.live:
            counters = self.feed.stats()
            step = self.degrader.update(counters.get("queue", 0), self.feed.queue.maxsize,
                                        counters.get("dropped", 0))
            extra = {"live": {k: counters.get(k, 0) for k in FRAME_COUNTERS}
                     | {"sent": self.sent + 1}, degrade.KEY: step} | live_utc(msg)
        out = FrameMsg(stream=self.stream_id, index=self.index_from + msg.index, pts=pts,
                       time_base=self.time_base, rate=self._rate(),
                       t_decoded=msg.t_decoded or time.time(), extra=extra,
                       image=self._shared(image))
        self.sent += 1
        return [out]

    def _shared(self, image: np.ndarray) -> np.ndarray:
        """The frame copied into the stream's ring in shared memory, once a slot is free
        (as a full socket queue made it wait before); as it is where there is no ring or
        it does not fit a slot (a camera that came back larger)."""
        if self.frames_dir and self.ring is None:
            self.ring = self._open_ring(image) or False
        if not self.ring or image.nbytes > self.ring.slot_bytes:
            if self.ring:
                self.count("inline_frames")
            return image
        waiting = time.monotonic()
        with self.timed(RING_WAIT):  # as a full socket queue's wait was (blocked_s)
            while not self.ring.wait(0.25):
                if self.reader.live and time.monotonic() - waiting >= RENEW_S:
                    self._fresh_ring(image)  # its frames were lost with a stage
                    if not self.ring:
                        return image
        self.count("shared_frames")
        return self.ring.put(image)

    def _fresh_ring(self, image: np.ndarray) -> None:
        """A new ring instead of a full one nothing releases; the old one's frames that
        a stage still holds are not overwritten (their memory goes with the last)."""
        self.ring.close()
        self.ring.remove()
        self.ring = self._open_ring(image) or False
        self.count("ring_renewals")

    def _open_ring(self, image: np.ndarray) -> FrameRing | None:
        directory = Path(self.frames_dir)
        remove_rings(directory, self.stream_id)
        c = self.config
        held = 0 if self.reader.live else c.detect_batch * c.detect_every
        slots = ring_slots(image.nbytes, self.reader.live, held)
        try:
            self.rings_made += 1
            return FrameRing(directory, ring_name(self.stream_id, self.rings_made), slots,
                             image.nbytes)
        except OSError as exc:
            log.warning("no room for frames in shared memory (%s): they travel inside the "
                        "messages", exc)
            return None

    def messages(self) -> Iterator[Message | None]:
        self.feed.start()
        while True:
            try:
                frame = self.feed.get(timeout=0.25)
            except BaseException as exc:
                if not self.reader.live:
                    raise  # a file that cannot be decoded fails the run, as it is
                self.gave_up = exc  # the camera is given up: end the stream first,
                break  # so what was recorded is written; close() then fails the stage
            if frame is not None:
                yield from self.process(frame)
            elif self.feed.done:
                break
            else:
                yield None  # an outage: the runner reports meanwhile
        self.counters.update(decoded=self.reader.stats().get("decoded", self.sent),
                             dropped=self.feed.queue.dropped)
        if self.gave_up is not None:
            yield EndOfStream(stream=self.stream_id, frames=self.sent, reason="error",
                              message=redact_text(str(self.gave_up)))
        else:
            yield EndOfStream(stream=self.stream_id, frames=self.sent,
                              reason="stopped" if self.stopping else "eof")

    def close(self) -> None:
        if self.ring:
            self.ring.close()
            if self.reader.live:  # a camera removed for good leaves nothing on /dev/shm
                self.ring.remove()  # (a file's last frames may not be opened yet)
        if hasattr(self, "feed"):
            self.feed.stop(timeout=5)
        if hasattr(self, "reader"):
            self.reader.close()
        if self.gave_up is not None:
            raise self.gave_up
