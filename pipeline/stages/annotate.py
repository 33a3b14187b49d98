"""Annotate stage (the last one): draw each frame's faces, then hand it to every sink."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from gimefive.pipeline.draw import draw_faces
from gimefive.pipeline.latency import LatencyHistogram
from gimefive.pipeline.sinks import CamNpzSink, JsonLinesSink, Sink, VideoFileSink
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.wire import Message, TrackedMsg

from gimefive.errors import GimefiveError


class AnnotateStage(Stage):
    """Job keys: ``output`` (video), ``json`` (JSON lines), ``cam_npz``, ``audio_from``."""

    name = "annotate"
    accepts = (TrackedMsg,)
    has_output = False

    def make_sinks(self) -> list[Sink]:
        c, job = self.config, self.job
        sinks: list[Sink] = []
        if job.get("output"):
            sinks.append(VideoFileSink(job["output"], codec=c.codec, crf=c.crf, preset=c.preset,
                                       threads=c.encoder_threads,
                                       audio_from=job.get("audio_from") if c.audio else None))
        if job.get("json"):
            sinks.append(JsonLinesSink(job["json"]))
        if job.get("cam_npz"):
            sinks.append(CamNpzSink(job["cam_npz"]))
        return sinks

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
                                   landmarks=c.draw_landmarks)
        for sink in self.sinks:
            with self.timed(type(sink).__name__):
                sink.write(msg, image)
            self.counters.update(sink.counters())  # e.g. pts_repaired, for the summary
        self.count("faces", len(msg.boxes))
        self.latency.add(time.time() - msg.t_decoded)
        if self.latency.count % 50 == 0:
            self._latency_counters()
        return []

    def _latency_counters(self) -> None:
        """Decode-to-written latency percentiles (ms), kept in the stage's counters.

        From a log-scale histogram (:mod:`gimefive.pipeline.latency`): constant memory and
        cost per update however long the run, each percentile within 1 % of the exact one.
        """
        for q, value in self.latency.percentiles((50, 95, 99)).items():
            if value is not None:
                self.counters[f"latency_ms_p{q}"] = round(1000 * value, 1)

    def end_stream(self, eos):
        self._latency_counters()
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
