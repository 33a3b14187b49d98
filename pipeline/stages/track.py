"""Track stage: face ids across frames, smoothed probabilities, stable labels, uncertainty."""

from __future__ import annotations

from gimefive.pipeline.messages import ClassifiedMsg, EndOfStream, Message, TrackedMsg
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.tracking import IoUTracker


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
                hysteresis=c.label_hysteresis, uncertain_threshold=msg.uncertain_threshold)
        return tracker

    def process(self, msg: ClassifiedMsg) -> list[Message]:
        result = self._tracker(msg).update(msg.index, msg.boxes, msg.probs)
        self.count("faces", len(msg.boxes))
        self.count("uncertain", int(result.uncertain.sum()))
        return [TrackedMsg(**msg.classified_fields(), track_ids=result.track_ids,
                           smoothed=result.smoothed, labels=result.labels,
                           uncertain=result.uncertain)]

    def end_stream(self, eos: EndOfStream):
        self.trackers.pop(eos.stream, None)
        yield eos
