"""Track stage: face ids across frames, smoothed probabilities, stable labels, uncertainty.

Lost tracks are re-linked for ``relink_s`` seconds, converted to frames with the
stream's frame rate (:data:`FALLBACK_FPS` where the stream has none), using the colour
cue of each face cut from the frame (:func:`gimefive.pipeline.tracking.appearance`).
"""

from __future__ import annotations

from gimefive.pipeline.messages import ClassifiedMsg, EndOfStream, Message, TrackedMsg
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.tracking import IoUTracker, appearance

#: frame rate assumed for re-linking where a stream states none (some cameras)
FALLBACK_FPS = 25.0


def stream_fps(msg: ClassifiedMsg) -> float:
    """The stream's frame rate, kept within 1..1000 (a hostile rate must not make the
    re-link window huge; the tracker's track cap bounds memory anyway)."""
    fps = msg.rate[0] / msg.rate[1] if msg.rate else FALLBACK_FPS
    return min(1000.0, max(1.0, fps))


class TrackStage(Stage):
    name = "track"
    accepts = (ClassifiedMsg,)

    def setup(self) -> None:
        self.trackers: dict[str, IoUTracker] = {}

    def _tracker(self, msg: ClassifiedMsg) -> IoUTracker:
        tracker = self.trackers.get(msg.stream)
        if tracker is None:
            c = self.config
            tracker = self.trackers[msg.stream] = IoUTracker(
                min_iou=c.track_iou, max_age=c.track_max_age, smoothing=c.smoothing,
                alpha=c.smoothing_alpha, window=c.smoothing_window,
                hysteresis=c.label_hysteresis, uncertain_threshold=msg.uncertain_threshold,
                relink_frames=round(c.relink_s * stream_fps(msg)))
        return tracker

    def process(self, msg: ClassifiedMsg) -> list[Message]:
        tracker = self._tracker(msg)
        looks = appearance(msg.image, msg.boxes) if tracker.relink_frames else None
        result = tracker.update(msg.index, msg.boxes, msg.probs, looks)
        self.count("faces", len(msg.boxes))
        self.count("uncertain", int(result.uncertain.sum()))
        return [TrackedMsg(**msg.classified_fields(), track_ids=result.track_ids,
                           smoothed=result.smoothed, labels=result.labels,
                           uncertain=result.uncertain)]

    def end_stream(self, eos: EndOfStream):
        self.trackers.pop(eos.stream, None)
        yield eos
