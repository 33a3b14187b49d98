"""The two stages that make the annotate pipeline live: a camera source and a live sink.

``gimefive monitor`` runs the pipeline's own detect, classify and track stages unchanged
between these two:

* :class:`LiveSourceStage` (one process per camera) reads a :class:`LiveSource`
  (reconnecting, drop-oldest) and sends :class:`FrameMsg` frames whose index continues
  across outages and whose ``extra["live"]`` carries the camera's counters (decoded,
  dropped, reconnects, queue), so every later stage and the JSON see them. Once a second
  it also reports those counters to the supervisor, including during an outage, when no
  frame flows.
* :class:`LiveAnnotateStage` (one process for all cameras) draws each frame like the
  annotate stage and routes it by stream id to that camera's outputs: fragmented-MP4
  segments (:class:`SegmentWriter`) and/or an RTSP push, plus one JSON-lines file for
  all streams, opened for appending so that a restarted stage continues it.

Both are plain :class:`Stage` subclasses run by the pipeline's :class:`StageRunner`;
``python -m gimefive.pipeline.live_stage_main`` starts them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.live_source import LIVE_TIME_BASE, LiveOptions, LiveSource
from gimefive.pipeline.segments import RtspPushSink, SegmentWriter
from gimefive.pipeline.sinks import Sink, frame_record
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.stages.annotate import AnnotateStage
from gimefive.pipeline.wire import EndOfStream, FrameMsg, Message, TrackedMsg

from gimefive.errors import GimefiveError
from gimefive.urls import redact_url

REPORT_EVERY_S = 1.0
#: a restarted source continues numbering this far past the last reported frame, so no
#: index is ever used twice (frames sent after the last report are at most ~1 s worth)
RESTART_INDEX_GAP = 1000


class LiveSourceStage(Stage):
    """Job keys: ``input`` (URL or file), ``stream`` (id), ``live`` (LiveOptions fields),
    ``index_from`` (first frame number, after a restart)."""

    name = "source"
    accepts = None

    def __init__(self, config, **job: Any) -> None:
        super().__init__(config, **job)
        self.stream_id = str(job.get("stream") or "0")
        self.name = f"source-{self.stream_id}"
        self.report: Callable[..., None] = lambda event, **data: None
        self.sent = 0

    def setup(self) -> None:
        if not self.job.get("input"):
            raise GimefiveError("live source stage needs an input URL")
        options = LiveOptions(**(self.job.get("live") or {}))
        self.source = LiveSource(str(self.job["input"]), self.stream_id, options)
        self.index_from = int(self.job.get("index_from") or 0)
        self.time_base = [LIVE_TIME_BASE.numerator, LIVE_TIME_BASE.denominator]

    def info(self) -> dict[str, Any]:
        return {"stream": self.stream_id, "url": redact_url(self.job["input"])}

    def live_stats(self) -> dict[str, Any]:
        stats = self.source.stats()
        stats["sent"] = self.sent
        stats["outages"] = stats["outages"][-5:]  # the recent ones; the log has them all
        return stats

    def process(self, msg: Message) -> list[Message]:  # a source has no input messages
        raise GimefiveError("the live source stage takes no input")

    def messages(self) -> Iterator[Message]:
        self.source.start()
        last_report = 0.0
        while True:
            frame = self.source.get(timeout=0.25)  # raises when the reconnect budget is spent
            now = time.monotonic()
            if now - last_report >= REPORT_EVERY_S:
                self.report("live", **self.live_stats())
                last_report = now
            if frame is None:
                if self.source.done:
                    self._raise_if_gave_up()
                    break
                continue
            rate = self.source.reader.rate
            self.sent += 1
            counters = self.source.stats()
            yield FrameMsg(
                stream=self.stream_id, index=self.index_from + frame.index, pts=frame.pts,
                time_base=self.time_base,
                rate=[rate.numerator, rate.denominator] if rate else None,
                t_decoded=frame.t_decoded, image=frame.image,
                extra={"live": {k: counters[k] for k in (
                    "decoded", "dropped", "reconnects", "queue", "decode_errors")}
                    | {"sent": self.sent}})
        self.counters.update(decoded=self.source.reader.counters.decoded,
                             dropped=self.source.queue.dropped)
        yield EndOfStream(stream=self.stream_id, frames=self.sent, reason="stopped")

    def _raise_if_gave_up(self) -> None:
        """A reader that ended with an error (its reconnect budget spent) fails the stage
        with that error's line, so the monitor sees the camera given up; ending quietly
        with a "stopped" end-of-stream would look like a normal end and the stage would
        wait for the drain, exit 0 and leave the camera DOWN for ever."""
        if self.source.error is not None:
            raise self.source.error

    def close(self) -> None:
        if hasattr(self, "source"):
            self.source.stop(timeout=5)
            self.report("live", **self.live_stats())  # the final counters


def stream_output(base: str, stream: str, single: bool) -> str:
    """Where one camera's video goes: ``base`` itself with one camera, else per stream
    (``DIR/NAME-STREAM.mp4`` or ``rtsp://.../PATH-STREAM``)."""
    if single:
        return base
    if base.lower().startswith("rtsp://"):
        return f"{base.rstrip('/')}-{stream}"
    path = Path(base)
    return str(path.with_name(f"{path.stem}-{stream}{path.suffix}"))


class LiveVideoSink(Sink):
    """Per-stream segments or RTSP push, opened on each stream's first frame."""

    needs_image = True

    def __init__(self, base: str, streams: list[str], segment_s: float, codec: str,
                 crf: int, preset: str, push_transport: str = "udp",
                 keep: dict[str, float] | None = None) -> None:
        self.base, self.streams = base, streams
        self.keep = keep or {}  # SegmentWriter's retention: keep_age_s, keep_bytes
        self.segment_s, self.codec, self.crf, self.preset = segment_s, codec, crf, preset
        self.push_transport = push_transport
        self.outputs: dict[str, SegmentWriter | RtspPushSink] = {}

    def _output(self, msg: TrackedMsg) -> SegmentWriter | RtspPushSink:
        out = self.outputs.get(msg.stream)
        if out is None:
            target = stream_output(self.base, msg.stream, len(self.streams) <= 1)
            fps = msg.rate[0] / msg.rate[1] if msg.rate else 25.0
            if target.lower().startswith("rtsp://"):
                out = RtspPushSink(target, fps=fps, transport=self.push_transport,
                                   codec=self.codec)
            else:
                out = SegmentWriter(target, segment_s=self.segment_s, fps=fps,
                                    codec=self.codec, crf=self.crf, preset=self.preset,
                                    **self.keep)
            self.outputs[msg.stream] = out
        return out

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        t = msg.pts_seconds if msg.pts_seconds is not None else time.monotonic()
        self._output(msg).write(image, t)

    def info(self) -> dict[str, Any]:
        return {"video": {s: (o.stats() if isinstance(o, RtspPushSink) else
                              {"segments": len(o.segments), "frames": o.frames})
                          for s, o in self.outputs.items()}}

    def close(self) -> None:
        errors = []
        for out in self.outputs.values():
            try:
                out.close()
            except Exception as exc:  # close every camera's output, then report
                errors.append(str(exc))
        if errors:
            raise GimefiveError("; ".join(errors))


class LiveJsonSink(Sink):
    """JSON lines for all streams, appended (a restarted stage continues the file); each
    record also carries the camera's live counters at the time the frame was sent."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise GimefiveError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        record = frame_record(msg)
        record["live"] = msg.extra.get("live", {})
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.file.close()


class LiveAnnotateStage(AnnotateStage):
    """Job keys: ``output`` (file base or rtsp:// URL), ``json``, ``streams`` (ids),
    ``segment_s``, ``push_transport``, ``keep_age_s``, ``keep_bytes``."""

    name = "annotate"

    def __init__(self, config, **job: Any) -> None:
        super().__init__(config, **job)
        self.report: Callable[..., None] = lambda event, **data: None
        self.per_stream: dict[str, dict[str, Any]] = {}
        self.last_report = 0.0

    def make_sinks(self) -> list[Sink]:
        c, job = self.config, self.job
        sinks: list[Sink] = []
        if job.get("output"):
            sinks.append(LiveVideoSink(str(job["output"]), list(job.get("streams") or []),
                                       float(job.get("segment_s") or 10.0), c.codec, c.crf,
                                       c.preset, job.get("push_transport") or "udp",
                                       keep={"keep_age_s": float(job.get("keep_age_s") or 0),
                                             "keep_bytes": int(job.get("keep_bytes") or 0)}))
        if job.get("json"):
            sinks.append(LiveJsonSink(job["json"]))
        return sinks

    def process(self, msg: TrackedMsg) -> list[Message]:
        out = super().process(msg)
        s = self.per_stream.setdefault(msg.stream, {"written": 0, "faces": 0, "latency_s": 0.0})
        s["written"] += 1
        s["faces"] += len(msg.boxes)
        s["latency_s"] = round(time.time() - msg.t_decoded, 3)
        s["last_index"] = msg.index
        s["source"] = msg.extra.get("live", {})
        self._report_if_due()
        return out

    def wait_ms(self) -> float | None:
        """Until the next report is due: the runner calls :meth:`flush` then even when no
        frame comes (every camera in an outage), so the frames written just before an
        outage are reported and the status never repeats stale counts."""
        return max(0.0, 1000 * (self.last_report + REPORT_EVERY_S - time.monotonic()))

    def flush(self) -> list[Message]:
        self._report_if_due()
        return []

    def _report_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_report >= REPORT_EVERY_S:
            self.last_report = now
            self.report("live", streams=self.per_stream)

    def end_stream(self, eos: EndOfStream):
        return iter(())  # a camera that stopped does not end the other cameras' outputs

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.report("live", streams=self.per_stream)  # the final counters
