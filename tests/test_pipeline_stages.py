"""Stages in-process (no sockets): ordering, batching, cam-every, detect-every, alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.crops import (
    FACE_TEMPLATE,
    crop_geometry,
    crop_matrix,
    cut_faces,
    template_fit,
)
from gimefive.pipeline.draw import draw_faces
from gimefive.pipeline.messages import DetectionsMsg, EndOfStream, FrameMsg, TrackIdsMsg
from gimefive.pipeline.sinks import frame_record
from gimefive.pipeline.stages.classify import ClassifyStage
from gimefive.pipeline.stages.detect import DetectStage
from gimefive.pipeline.stages.track import TrackStage

from gimefive.backends import BACKENDS, Backend
from gimefive.backends.base import BACKEND_MODULES
from gimefive.detector import FaceDetector


class StandIn(Backend):
    """Deterministic tiny engine: class = brightness bucket, CAM = a fixed gradient."""

    name = "standin-test"

    def __init__(self, weights=None, cam_layer="conv5", threads=None) -> None:
        self.calls: list[tuple[int, bool]] = []

    def infer(self, batch, cam=True):
        self.calls.append((len(batch), cam))
        level = batch.mean(axis=(1, 2, 3))
        probs = np.full((len(batch), 6), 0.02, np.float32)
        probs[np.arange(len(batch)), np.clip(((level + 2) * 1.5).astype(int), 0, 5)] = 0.9
        grid = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
        return probs, (np.repeat(grid[None], len(batch), 0) if cam else None)


@pytest.fixture(autouse=True)
def standin_backend(monkeypatch):
    """Selectable by name for these tests only (the registry is restored afterwards)."""
    monkeypatch.setitem(BACKENDS, StandIn.name, StandIn)
    monkeypatch.setitem(BACKEND_MODULES, StandIn.name, __name__)


def frame(index: int, value: int = 100, size=(120, 160)) -> FrameMsg:
    return FrameMsg(stream="s", index=index, pts=index, time_base=[1, 25],
                    image=np.full((*size, 3), value, np.uint8))


def with_faces(msg: FrameMsg, k: int) -> DetectionsMsg:
    boxes = np.array([[10 + 30 * i, 10, 40 + 30 * i, 45] for i in range(k)],
                     np.float32).reshape(k, 4)
    marks = np.array([[[18 + 30 * i, 22], [32 + 30 * i, 22], [25 + 30 * i, 30],
                       [19 + 30 * i, 37], [31 + 30 * i, 37]] for i in range(k)],
                     np.float32).reshape(k, 5, 2)
    return DetectionsMsg(**msg.frame_fields(), boxes=boxes, scores=np.ones(k, np.float32),
                         landmarks=marks)


def with_ids(msg: DetectionsMsg) -> TrackIdsMsg:
    """Track ids by position: the face at the i-th place is track i + 1."""
    return TrackIdsMsg(**msg.detection_fields(),
                       track_ids=np.arange(1, len(msg.boxes) + 1, dtype=np.int64))


def classify_stage(**overrides) -> ClassifyStage:
    stage = ClassifyStage(AnnotateConfig(backend="standin-test", **overrides))
    stage.setup()
    stage.backend.calls.clear()  # forget the warm-up call
    return stage


def run_all(stage, messages):
    out = []
    for m in messages:
        out += list(stage.process(m))
    out += list(stage.end_stream(EndOfStream(stream="s", frames=len(messages))))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_classify_batches_across_frames_keeps_order_and_cam_every(workers):
    """Every face measured (classify_every 1), Grad-CAM at most every 2 frames per track:
    output in input order, each face's map from its own last CAM frame."""
    stage = classify_stage(classify_max_batch=5, cam_every=2, classify_workers=workers,
                           classify_every=1)
    faces_per_frame = [2, 0, 3, 1, 2, 2, 0, 1]
    msgs = [with_ids(with_faces(frame(i, 40 * i % 250), k))
            for i, k in enumerate(faces_per_frame)]
    out = run_all(stage, msgs)
    assert isinstance(out[-1], EndOfStream)
    assert [m.index for m in out[:-1]] == list(range(8))
    last_cam: dict[int, int] = {}
    for m, k in zip(out[:-1], faces_per_frame, strict=True):
        assert m.probs.shape == (k, 6) and m.measured.all() and not m.result_age.any()
        assert m.cam is not None and m.cam.shape == (k, 4, 4)
        for tid, cam_from in zip(m.track_ids.tolist(), m.cam_from.tolist(), strict=True):
            due = tid not in last_cam or m.index - last_cam[tid] >= 2
            assert cam_from == (m.index if due else last_cam[tid]), (m.index, tid)
            last_cam[tid] = cam_from
    assert sum(n for n, _ in stage.backend.calls) == sum(faces_per_frame)
    assert all(n <= 5 for n, _ in stage.backend.calls)
    stage.close()


def test_classify_waits_at_most_max_wait():
    stage = classify_stage(classify_max_batch=32, classify_max_wait_ms=50)
    assert stage.wait_ms() is None
    assert stage.process(with_ids(with_faces(frame(0), 1))) == []
    assert 0 < stage.wait_ms() <= 50
    out = stage.flush()
    assert len(out) == 1 and out[0].probs.shape == (1, 6)


def test_alignment_levels_the_eyes(astronaut_bgr):
    """Rotate the astronaut by 20 degrees; the aligned crop has her eyes level again."""
    detector = FaceDetector(threads=1)
    m = cv2.getRotationMatrix2D((256, 256), 20, 1.0)
    tilted = cv2.warpAffine(astronaut_bgr, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    (det,) = detector.detect([tilted])
    eyes = det.landmarks[0, :2]
    assert abs(np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1]))) > 12  # really tilted
    for align, level in (("landmarks", True), ("eyes", True), ("none", False)):
        crop = cut_faces(tilted, crop_geometry(det.boxes, det.landmarks, 2.0, align))[0]
        big = cv2.resize(crop, (256, 256))
        (found,) = detector.detect([big])
        e = found.landmarks[0, :2]
        angle = abs(np.degrees(np.arctan2(e[1, 1] - e[0, 1], e[1, 0] - e[0, 0])))
        assert (angle < 5) == level, (align, angle)


def test_template_fit_recovers_a_known_similarity():
    """Landmarks made from the template by a known scale, roll and shift give back that
    square; the fitted square then cuts the template's points to where the template says."""
    side, angle, cx, cy = 90.0, -25.0, 300.0, 140.0
    m = cv2.getRotationMatrix2D((0.5, 0.5), -angle, side)  # unit square -> frame
    m[:, 2] += (cx - 0.5, cy - 0.5)
    marks = (FACE_TEMPLATE @ m[:, :2].T + m[:, 2]).astype(np.float32)[None]
    fit = template_fit(marks)[0]
    np.testing.assert_allclose(fit, [cx, cy, side, angle], atol=1e-3)
    box = np.array([[cx - 40, cy - 40, cx + 40, cy + 40]], np.float32)
    crop = crop_geometry(box, marks, 1.0, "landmarks")[0]
    in_crop = marks[0] @ crop_matrix(crop, 64)[:, :2].T + crop_matrix(crop, 64)[:, 2]
    np.testing.assert_allclose(in_crop / 64, FACE_TEMPLATE, atol=1e-4)


def test_template_fit_falls_back_to_the_box_when_implausible():
    """A fit four times the box (landmarks gone astray) is not trusted."""
    marks = (FACE_TEMPLATE * 400)[None].astype(np.float32)
    box = np.array([[150, 100, 250, 200]], np.float32)
    crop = crop_geometry(box, marks, 1.0, "landmarks")[0]
    np.testing.assert_allclose(crop[:3], [200, 150, 100])
    with pytest.raises(ValueError, match="align: expected one of"):
        crop_geometry(box, marks, 1.0, "sideways")


def test_detect_every_moves_boxes_between_detections(astronaut_bgr):
    stage = DetectStage(AnnotateConfig(detect_every=3, detect_batch=2))
    stage.setup()
    photo = cv2.resize(astronaut_bgr, (200, 200))
    msgs = []
    for i in range(7):
        image = np.full((240, 400, 3), 60, np.uint8)
        image[20:220, 10 + 10 * i:210 + 10 * i] = photo
        msgs.append(FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25], image=image))
    out = run_all(stage, msgs)[:-1]
    assert [m.detected for m in out] == [True, False, False, True, False, False, True]
    xs = [float(m.boxes[0, 0]) for m in out]
    # frames 1, 2 repeat frame 0 (no velocity yet); 4, 5 move on at the measured 10 px/frame
    assert xs[1] == xs[0] and xs[4] == pytest.approx(xs[3] + 10, abs=2)
    assert xs[5] == pytest.approx(xs[3] + 20, abs=3)


def test_track_then_classify_then_draw_and_record():
    classify = classify_stage()
    track = TrackStage(AnnotateConfig())
    track.setup()
    msgs = [with_faces(frame(i, 120), 2) for i in range(3)]
    ids = [m for d in msgs for m in track.process(d)]
    assert [m.track_ids.tolist() for m in ids] == [[1, 2]] * 3
    tracked = run_all(classify, ids)[:-1]
    image = draw_faces(np.array(tracked[-1].image), tracked[-1])
    assert image.shape == (120, 160, 3) and (image != 120).any()  # something was drawn
    record = frame_record(tracked[-1])
    assert record["frame"] == 2 and len(record["faces"]) == 2
    face, other = record["faces"]
    assert face["label"] == "anger" and face["uncertain"] is False
    assert face["cam"]["layer"] == "conv5" and len(face["cam"]["peak"]) == 2
    # two still faces, classify_every 5: both measured on frame 0; the first
    # re-measurement of track t comes 1 + t % 5 frames later (frames 2 and 3)
    assert [m.measured.tolist() for m in tracked] == [[True, True], [False, False],
                                                      [True, False]]
    assert face["measured"] is True and face["result_age"] == 0 and face["cam"]["frame"] == 2
    assert other["measured"] is False and other["result_age"] == 2
    assert other["cam"]["frame"] == 0 and other["label"] == face["label"]
