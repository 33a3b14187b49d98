"""Two-scale detection (``detect_upscale_every``): which frames get the enlarged pass,
what the cheap passes keep from it, and that plain runs are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.messages import EndOfStream, FrameMsg
from gimefive.pipeline.replicas import replica_counts
from gimefive.pipeline.stages.detect import DetectStage, with_carried

from gimefive.detector import Detections
from gimefive.errors import GimefiveError


def dets(boxes, scores) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    marks = np.repeat(boxes[:, None, :2], 5, axis=1)
    return Detections(boxes, np.asarray(scores, np.float32), marks)


def test_a_small_detection_yields_to_the_carried_face_a_large_one_replaces_it():
    carried = dets([[10, 10, 30, 30], [100, 100, 180, 180], [300, 10, 320, 30]],
                   [0.9, 0.8, 0.7])
    found = dets([[11, 11, 31, 31], [102, 101, 182, 181], [500, 50, 560, 110]],
                 [0.95, 0.99, 0.6])
    out = with_carried(found, carried, small_side=40)
    # the 20 px face: the carried box; the 80 px face: the new one; the rest of both kept
    assert out.boxes.tolist() == [[102, 101, 182, 181], [10, 10, 30, 30],
                                  [300, 10, 320, 30], [500, 50, 560, 110]]
    assert out.scores.tolist() == pytest.approx([0.99, 0.9, 0.7, 0.6])
    assert out.landmarks.shape == (4, 5, 2)


def test_with_nothing_on_one_side_the_other_side_stands():
    some = dets([[0, 0, 50, 50]], [0.9])
    assert with_carried(some, Detections.empty(), 40) is some
    assert with_carried(Detections.empty(), some, 40) is some


class SpyDetector:
    """Records each call's frame count and upscale argument; no faces."""

    def __init__(self, detector) -> None:
        self.inner, self.calls = detector, []

    def input_size(self, *args, **kwargs):
        return self.inner.input_size(*args, **kwargs)

    def detect(self, frames, upscale=None):
        self.calls += [upscale] * len(frames)
        return [Detections.empty() for _ in frames]


def passes(config: AnnotateConfig, size=(360, 640), n=7) -> list:
    stage = DetectStage(config)
    stage.setup()
    stage.detector = spy = SpyDetector(stage.detector)
    for i in range(n):
        frame = np.zeros((*size, 3), np.uint8)
        list(stage.process(FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25],
                                    image=frame)))
    list(stage.end_stream(EndOfStream(stream="s", frames=n)))
    return spy.calls


def test_every_third_detected_frame_is_enlarged_the_others_kept_at_their_size():
    wide = dict(detect_max_side=1280, detect_upscale=True, detect_batch=1)
    assert passes(AnnotateConfig(**wide)) == [None, False, False, None, False, False, None]
    assert passes(AnnotateConfig(**wide, detect_upscale_every=1)) == [None] * 7
    # with detect_every 2, the turns count detected frames only
    assert passes(AnnotateConfig(**wide, detect_every=2)) == [None, False, False, None]


def test_frames_the_detector_would_not_enlarge_always_get_the_plain_pass():
    assert passes(AnnotateConfig(detect_max_side=1280, detect_upscale=True),
                  size=(720, 1280)) == [None] * 7
    assert passes(AnnotateConfig(detect_max_side=640)) == [None] * 7


def test_two_scale_detection_keeps_a_single_detect_replica():
    config = AnnotateConfig(device="cpu", detect_upscale=True)
    assert replica_counts(config, 16)["detect"] == 1
    assert replica_counts(AnnotateConfig(device="cpu", detect_upscale=True,
                                         detect_upscale_every=1), 16)["detect"] == 4
    with pytest.raises(GimefiveError, match="detect_replicas 2 needs detect_upscale_every 1"):
        replica_counts(AnnotateConfig(device="cpu", detect_upscale=True, detect_replicas=2))


def test_a_face_only_the_enlarged_pass_finds_is_carried_and_moved():
    """The ladder's 15 px face is found enlarged, not at 640x360: the cheap passes keep
    it, moved at the speed measured between enlarged passes (2 px per frame here)."""
    from gimefive.pipeline.bench.scenes import face_ladder

    ladder = face_ladder()
    stage = DetectStage(AnnotateConfig(detect_max_side=1280, detect_upscale=True,
                                       detect_batch=1))
    stage.setup()
    out = []
    for i in range(6):
        image = np.ascontiguousarray(np.roll(ladder, 2 * i, axis=1))
        out += stage.process(FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25],
                                      image=image))
    out += [m for m in stage.end_stream(EndOfStream(stream="s", frames=6))
            if not isinstance(m, EndOfStream)]
    small = [m.boxes[np.argmin(m.boxes[:, 2] - m.boxes[:, 0])] for m in out]
    assert [len(m.boxes) for m in out] == [7] * 6
    assert all(s[2] - s[0] < 20 for s in small)
    x0 = float(small[0][0])
    for i in (3, 4, 5):  # enlarged at 3; 4 and 5 carried at the speed from 0 to 3
        assert float(small[i][0]) == pytest.approx(x0 + 2 * i, abs=1.5)
    assert stage.counters["own_size_frames"] == 4
