"""Track stage: which face is which, before the classifier (it spends its work per track).

Lost tracks are re-linked for ``relink_s`` seconds, converted to frames with the
stream's frame rate (:data:`FALLBACK_FPS` where the stream has none), using the colour
cue of each face cut from the frame (:func:`gimefive.pipeline.tracking.appearance`).
"""

from __future__ import annotations

from gimefive.pipeline.messages import DetectionsMsg, EndOfStream, Message, TrackIdsMsg
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.tracking import IoUTracker, appearance

#: frame rate assumed for re-linking where a stream states none (some cameras)
FALLBACK_FPS = 25.0


def stream_fps(msg: DetectionsMsg) -> float:
    """The stream's frame rate, kept within 1..1000 (a hostile rate must not make the
    re-link window huge; the tracker's track cap bounds memory anyway)."""
    fps = msg.rate[0] / msg.rate[1] if msg.rate else FALLBACK_FPS
    return min(1000.0, max(1.0, fps))


def relink_frames(config, msg: DetectionsMsg) -> int:
    """``relink_s`` in frames of ``msg``'s stream."""
    return round(config.relink_s * stream_fps(msg))


class TrackStage(Stage):
    name = "track"
    accepts = (DetectionsMsg,)

    def setup(self) -> None:
        self.trackers: dict[str, IoUTracker] = {}

    def _tracker(self, msg: DetectionsMsg) -> IoUTracker:
        tracker = self.trackers.get(msg.stream)
        if tracker is None:
            c = self.config
            tracker = self.trackers[msg.stream] = IoUTracker(
                min_iou=c.track_iou, max_age=c.track_max_age,
                relink_frames=relink_frames(c, msg))
        return tracker

    def process(self, msg: DetectionsMsg) -> list[Message]:
        tracker = self._tracker(msg)
        # a face's colour cue is learnt on detected frames only: a box carried between
        # detections (``detect_every`` > 1) drifts off a face that turns or speeds up, and
        # a cue mixed with the background then failed to re-link it (the reference clip
        # with detection every 16 frames: 24 tracks for 5 faces, 9 with this)
        looks = appearance(msg.image, msg.boxes) if tracker.relink_frames and msg.detected \
            else None
        ids = tracker.update(msg.index, msg.boxes, looks)
        self.count("faces", len(msg.boxes))
        return [TrackIdsMsg(**msg.detection_fields(), track_ids=ids)]

    def end_stream(self, eos: EndOfStream):
        self.trackers.pop(eos.stream, None)
        yield eos
