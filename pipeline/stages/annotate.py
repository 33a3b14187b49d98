"""Annotate stage (the last one): draw each frame's faces, then hand it to every sink.

The same stage ends a file job and a live run; only its sinks differ, built by the
sink factory (:func:`gimefive.pipeline.sinks.sink_specs`) from the job. Once a second,
also while no frame comes (every camera in an outage), it reports per stream what it
wrote to the supervisor, which shows it in the monitor's status.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from gimefive.pipeline.draw import draw_faces
from gimefive.pipeline.latency import LatencyHistogram
from gimefive.pipeline.messages import Message, TrackedMsg
from gimefive.pipeline.sinks import Sink, open_sinks, sink_specs
from gimefive.pipeline.stage import Stage

from gimefive.errors import GimefiveError


class AnnotateStage(Stage):
    """Job keys: ``output`` (a video file, or an ``rtsp://`` URL to push to), ``json``
    (JSON lines), ``cam_npz``, ``audio_from`` (file jobs: copy its audio);
    ``live`` (True: the video file is written as fragmented-MP4 segments and the JSON
    appended) with ``streams`` (the run's stream ids: one output per camera when
    several), ``segment_s``, ``keep_age_s``, ``keep_bytes``, ``push_transport``."""

    name = "annotate"
    accepts = (TrackedMsg,)
    has_output = False

    def __init__(self, config, **job: Any) -> None:
        super().__init__(config, **job)
        self.per_stream: dict[str, dict[str, Any]] = {}

    def make_sinks(self) -> list[Sink]:
        return open_sinks(sink_specs(self.job, self.config))

    def setup(self) -> None:
        self.sinks = []
        self.sinks = self.make_sinks()
        if not self.sinks:
            raise GimefiveError("annotate stage has nowhere to write (give --out VIDEO and/or "
                                "--json FILE)")
        self.draw = any(s.needs_image for s in self.sinks)
        self.latency = LatencyHistogram()  # bounded: the stage may run for days
        self.landmarks68 = None
        if self.config.landmarks68:
            from gimefive.landmarks68 import Landmarks68

            self.landmarks68 = Landmarks68()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sink in self.sinks:
            out |= sink.info()
        return out

    def process(self, msg: TrackedMsg) -> list[Message]:
        if self.landmarks68 is not None and len(msg.boxes):
            with self.timed("landmarks68"):
                msg = dataclasses.replace(msg, landmarks68=self.landmarks68(msg.image,
                                                                            msg.boxes))
        image = None
        if self.draw:
            with self.timed("draw"):
                c = self.config
                image = draw_faces(np.array(msg.image), msg, draw_cam=c.draw_cam and c.cam,
                                   opacity=c.cam_opacity, bars=c.draw_bars,
                                   landmarks=c.draw_landmarks, overlay=c.overlay,
                                   blur_faces=c.blur_faces)
        for sink in self.sinks:
            with self.timed(type(sink).__name__):
                sink.write(msg, image)
            self.counters.update(sink.counters())  # e.g. pts_repaired, for the summary
        self.count("faces", len(msg.boxes))
        latency = time.time() - msg.t_decoded
        self.latency.add(latency)
        if self.latency.count % 50 == 0:
            self._latency_counters()
        self._per_stream(msg, latency)
        return []

    def _per_stream(self, msg: TrackedMsg, latency: float) -> None:
        s = self.per_stream.setdefault(msg.stream, {"written": 0, "faces": 0, "latency_s": 0.0})
        s["written"] += 1
        s["faces"] += len(msg.boxes)
        s["latency_s"] = round(latency, 3)
        s["last_index"] = msg.index
        s["source"] = msg.extra.get("live", {})

    def live_stats(self) -> dict[str, Any] | None:
        """A live run's counts per stream (the runner reports them once a second, also
        while no frame comes, so the status never repeats stale counts)."""
        return {"streams": self.per_stream} if self.job.get("live") else None

    def _latency_counters(self) -> None:
        """Decode-to-written latency percentiles (ms), kept in the stage's counters.

        From a log-scale histogram (:mod:`gimefive.pipeline.latency`): constant memory and
        cost per update however long the run, each percentile within 1 % of the exact one.
        """
        for q, value in self.latency.percentiles((50, 95, 99)).items():
            if value is not None:
                self.counters[f"latency_ms_p{q}"] = round(1000 * value, 1)

    def end_stream(self, eos):
        """One stream ended: its counts are final and its own outputs finalised (its
        segments and list); the other streams' outputs go on."""
        self._latency_counters()
        for sink in self.sinks:
            sink.end_stream(eos.stream)
        yield from super().end_stream(eos)

    def close(self) -> None:
        errors = []
        for sink in getattr(self, "sinks", []):
            try:
                sink.close()
            except Exception as exc:  # close every sink, then report the first failure
                errors.append(f"{type(sink).__name__}: {exc}")
        if errors:
            raise GimefiveError("; ".join(errors))
