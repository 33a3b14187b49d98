"""Per-track classification schedule: which faces are measured, what the others show."""

from __future__ import annotations

import numpy as np
import pytest
from gimefive.pipeline.schedule import (
    MAX_STATES,
    ScheduleSettings,
    StreamSchedule,
    contested,
    moved,
)


def onehot(k, p=0.9):
    v = np.full(6, (1 - p) / 5, np.float32)
    v[k] = p
    return v


def boxes_at(*xs, y=10, side=40):
    return np.array([[x, y, x + side, y + side] for x in xs], np.float32).reshape(-1, 4)


def step(schedule, index, ids, boxes, probs_of=lambda tid: onehot(0)):
    """Plan and record one frame at once (no batching); the measured faces get
    ``probs_of(track_id)``."""
    ids = np.asarray(ids, np.int64)
    plan = schedule.plan(index, ids, boxes)
    measured = [probs_of(t) for t, m in zip(ids.tolist(), plan.measure, strict=True) if m]
    probs = np.stack(measured) if measured else np.zeros((0, 6), np.float32)
    cams = np.ones((int(plan.cam.sum()), 4, 4), np.float32) * index
    return plan, schedule.record(index, ids, plan, probs, cams)


def test_new_tracks_are_measured_then_spread_over_the_interval():
    """Five faces appear together; with every=5 each is re-measured once per 5 frames,
    and on different frames (the first re-measurement comes 1 + id % 5 frames later)."""
    schedule = StreamSchedule(ScheduleSettings(every=5, cam=False))
    ids, boxes = [1, 2, 3, 4, 5], boxes_at(0, 100, 200, 300, 400)
    per_frame = [int(step(schedule, i, ids, boxes)[0].measure.sum()) for i in range(21)]
    assert per_frame[0] == 5
    assert per_frame[1:] == [1] * 20  # one face a frame, never a burst


def test_a_still_confident_face_is_measured_every_n_frames_and_carried_between():
    schedule = StreamSchedule(ScheduleSettings(every=4, cam=False))
    box = boxes_at(0)
    frames = [step(schedule, i, [4], box) for i in range(13)]
    measured = [i for i, (plan, _) in enumerate(frames) if plan.measure[0]]
    assert measured == [0, 1, 5, 9]  # first re-measurement 1 + 4 % 4 = 1 frame later
    ages = [int(out.result_age[0]) for _, out in frames]
    assert ages[:6] == [0, 0, 1, 2, 3, 0]
    np.testing.assert_allclose(frames[3][1].probs[0], onehot(0))  # carried


def test_a_moved_or_resized_face_is_measured_again_at_once():
    assert not moved(boxes_at(0)[0], boxes_at(10)[0], 0.3)  # 10 px of a 40 px side
    assert moved(boxes_at(0)[0], boxes_at(13)[0], 0.3)      # 13 px: beyond 30%
    assert moved(boxes_at(0)[0], boxes_at(0, side=53)[0], 0.3)  # 33% larger
    schedule = StreamSchedule(ScheduleSettings(every=50, move=0.3, cam=False))
    measured = [bool(step(schedule, i, [49], boxes_at(min(i, 10)))[0].measure[0])
                for i in range(10)]  # creeping 1 px a frame: never 30% from frame 0
    assert measured == [True] + [False] * 9
    assert step(schedule, 10, [49], boxes_at(13))[0].measure[0]  # 13 px from frame 0's
    assert not step(schedule, 11, [49], boxes_at(14))[0].measure[0]  # 1 px from frame 10's


def test_a_contested_face_is_measured_twice_as_often():
    close = np.array([0.45, 0.40, 0.05, 0.04, 0.03, 0.03], np.float32)
    assert contested(close, 0.15, 0.3) and not contested(onehot(0), 0.15, 0.3)
    assert contested(np.full(6, 1 / 6, np.float32), 0.0, 0.3)  # below the threshold
    schedule = StreamSchedule(ScheduleSettings(every=6, cam=False, uncertain_threshold=0.3))
    box = boxes_at(0)
    measured = [i for i in range(20)
                if step(schedule, i, [6], box, lambda t: close)[0].measure[0]]
    assert measured == [0, 1, 4, 7, 10, 13, 16, 19]  # every 6 // 2 = 3 frames


def test_grad_cam_only_on_measurements_at_most_every_m_frames_per_track():
    schedule = StreamSchedule(ScheduleSettings(every=2, cam=True, cam_every=4))
    box = boxes_at(0)
    frames = [step(schedule, i, [2], box) for i in range(12)]
    with_cam = [i for i, (plan, _) in enumerate(frames) if plan.cam[0]]
    assert all(frames[i][0].measure[0] for i in with_cam)
    # measured on 0, 1 (1 + 2 % 2), 3, 5, 7, 9, 11; a map at least 4 frames after the last
    assert with_cam == [0, 5, 9]
    # the map shown is the last one computed, and says which frame it is from
    assert [int(out.cam_from[0]) for _, out in frames] == [0] * 5 + [5] * 4 + [9] * 3
    assert [float(out.cam[0, 0, 0]) for _, out in frames][6] == 5.0


def test_smoothing_and_hysteresis_work_on_measured_values_only():
    """A one-measurement flicker does not change the label; between measurements the
    smoother is fed the last measured value, never another."""
    schedule = StreamSchedule(ScheduleSettings(every=1, cam=False, alpha=0.3, hysteresis=0.1))
    box = boxes_at(0)
    labels = [int(step(schedule, i, [1], box, lambda t, i=i: onehot(3) if i == 6 else
                       onehot(0))[1].labels[0]) for i in range(12)]
    assert labels == [0] * 12
    # every 3: measured on frames 0, 1 (1 + 3 % 3) and 4; between them the smoother takes
    # the last measured value again (what would have been measured is never used)
    schedule = StreamSchedule(ScheduleSettings(every=3, cam=False, alpha=0.5))
    smoothed = [step(schedule, i, [3], box, lambda t, i=i: onehot(i % 6))[1].smoothed[0].copy()
                for i in range(6)]
    expected, held = None, [onehot(k) for k in (0, 1, 1, 1, 4, 4)]
    for i, p in enumerate(held):
        expected = p if expected is None else 0.5 * p + 0.5 * expected
        np.testing.assert_allclose(smoothed[i], expected, atol=1e-6)


@pytest.mark.parametrize("smoothing", ["ema", "window"])
def test_a_lasting_change_comes_through(smoothing):
    schedule = StreamSchedule(ScheduleSettings(every=1, cam=False, smoothing=smoothing,
                                               alpha=0.3, window=5))
    box = boxes_at(0)
    for i in range(10):
        step(schedule, i, [1], box)
    for i in range(10, 30):
        _, out = step(schedule, i, [1], box, lambda t: onehot(3))
    assert out.labels[0] == 3
    np.testing.assert_allclose(out.smoothed.sum(), 1, atol=1e-4)


def test_uncertain_when_smoothed_top_probability_below_threshold():
    schedule = StreamSchedule(ScheduleSettings(every=1, cam=False, alpha=1.0,
                                               uncertain_threshold=0.4))
    flat = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1], np.float32)
    assert step(schedule, 0, [1], boxes_at(0), lambda t: flat)[1].uncertain[0]
    assert not step(schedule, 1, [1], boxes_at(0), lambda t: onehot(0, 0.8))[1].uncertain[0]


def test_decisions_wait_for_a_result_they_depend_on():
    """Planned but not yet recorded: a decision that depends on whether the result is
    contested asks for the results first; one that does not, does not."""
    schedule = StreamSchedule(ScheduleSettings(every=6, cam=False))
    ids, box = np.array([6]), boxes_at(0)
    step(schedule, 0, ids, box)
    plan1 = schedule.plan(1, ids, box)  # 1 + 6 % 6 = 1: re-measured, result pending
    assert plan1.measure[0]
    assert not schedule.needs_results(2, ids)  # 1 frame later: due in neither case
    assert schedule.needs_results(4, ids)      # 3 frames: due only if contested
    assert not schedule.needs_results(7, ids)  # 6 frames: due in any case


def test_state_is_bounded_and_unseen_tracks_are_forgotten():
    schedule = StreamSchedule(ScheduleSettings(every=5, cam=False, keep_frames=10))
    for i in range(200):
        step(schedule, i, [i + 1], boxes_at(0))  # a new track every frame
    assert len(schedule.states) <= 11
    schedule = StreamSchedule(ScheduleSettings(every=5, cam=False, keep_frames=10**9))
    ids = np.arange(1, 3 * MAX_STATES, dtype=np.int64)  # hostile: thousands of ids at once
    boxes = np.zeros((len(ids), 4), np.float32) + boxes_at(0)
    plan, out = step(schedule, 0, ids, boxes)
    assert len(schedule.states) <= MAX_STATES and out.probs.shape == (len(ids), 6)


def test_a_repeated_id_on_one_frame_does_not_break_the_frame():
    schedule = StreamSchedule(ScheduleSettings(every=5, cam=True))
    plan, out = step(schedule, 0, [7, 7], boxes_at(0, 100))
    assert plan.measure.tolist() == [True, False] and out.cam.shape == (2, 4, 4)


def test_a_face_that_looks_different_is_measured_again(astronaut_bgr):
    """Same box, someone else in it (the astronaut turned upside down): measured at once;
    the same face again, a few pixels off: not. A flat patch never looks new."""
    import cv2
    from gimefive.pipeline.schedule import thumbnails

    face = cv2.resize(astronaut_bgr[30:230, 140:340], (80, 80))
    image = np.zeros((120, 240, 3), np.uint8)
    image[20:100, 20:100] = face
    image[20:100, 140:220] = face[::-1]
    box, other = np.array([[20, 20, 100, 100]], np.float32), np.array([[140, 20, 220, 100]],
                                                                         np.float32)
    looks = thumbnails(image, np.vstack([box, box + 2, other, [[0, 0, 1, 1]]]))
    assert looks[0] @ looks[1] > 0.8 and looks[0] @ looks[2] < 0.7 and not looks[3].any()
    schedule = StreamSchedule(ScheduleSettings(every=50, cam=False, look=0.7))
    ids = np.array([49])
    assert schedule.plan(0, ids, box, looks=looks[:1]).measure[0]
    assert not schedule.plan(1, ids, box, looks=looks[1:2]).measure[0]
    assert schedule.plan(2, ids, box, looks=looks[2:3]).measure[0]
    assert not schedule.plan(3, ids, box, looks=looks[3:4]).measure[0]


def test_lazy_thumbnails_decide_as_eager_ones_and_are_made_only_where_needed(astronaut_bgr):
    """The same decisions, frame by frame, whether every face's thumbnail is made up front
    or on demand; on demand, a degraded run (scale 8: a new look counts 20 frames after a
    measurement) makes them for the measured faces and for those past that gap only."""
    import cv2
    from gimefive.pipeline.schedule import LazyThumbnails, thumbnails

    rng = np.random.default_rng(3)
    face = cv2.resize(astronaut_bgr[30:230, 140:340], (60, 60))
    ids = np.arange(1, 5)
    for scale in (1, 8):
        eager = StreamSchedule(ScheduleSettings(every=5, cam=False, look=0.9))
        lazy = StreamSchedule(ScheduleSettings(every=5, cam=False, look=0.9))
        made = asked = 0
        for index in range(60):
            image = np.zeros((100, 400, 3), np.uint8)
            xs = [10 + 95 * k + int(rng.integers(0, 6)) for k in range(4)]
            for k, x in enumerate(xs):  # a face that turns now and then
                image[20:80, x:x + 60] = face if (index // 7 + k) % 3 else face[::-1]
            boxes = boxes_at(*xs, y=20, side=60)
            looks = LazyThumbnails(image, boxes)
            plans = [eager.plan(index, ids, boxes, scale, thumbnails(image, boxes)),
                     lazy.plan(index, ids, boxes, scale, looks)]
            assert plans[0].measure.tolist() == plans[1].measure.tolist(), index
            for schedule, plan in zip((eager, lazy), plans, strict=True):
                probs = np.stack([onehot(0)] * int(plan.measure.sum())) \
                    if plan.measure.any() else np.zeros((0, 6), np.float32)
                schedule.record(index, ids, plan, probs, None)
            made, asked = made + len(looks.made), asked + len(ids)
        if scale == 1:
            assert made == asked  # undegraded, every face may look new on every frame
        else:
            assert made < asked / 3


def test_degraded_a_moving_face_is_measured_at_most_every_scale_frames():
    """A face moving 20 px (half its side) a frame: measured on every frame as normal;
    degraded to scale 4 (a live run behind), at most every 5 x 4 / 2 = 10 frames (the
    first re-measurement comes with the spread-out interval, 1 + 7 % 20 = 8 frames on)."""
    def measured(scale):
        schedule = StreamSchedule(ScheduleSettings(every=5, cam=False))
        out = []
        for i in range(21):
            plan = schedule.plan(i, np.array([7]), boxes_at(20 * i), scale=scale)
            probs = np.stack([onehot(0)] * int(plan.measure.sum())) if plan.measure.any() \
                else np.zeros((0, 6), np.float32)
            schedule.record(i, np.array([7]), plan, probs, None)
            out.append(bool(plan.measure[0]))
        return [i for i, m in enumerate(out) if m]

    assert measured(1) == list(range(21))
    assert measured(4) == [0, 8, 18]
