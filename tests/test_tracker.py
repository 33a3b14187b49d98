import numpy as np
import pytest
from gimefive.pipeline.tracking import IoUTracker, match_boxes, match_centers


def onehot(k, p=0.9):
    v = np.full(6, (1 - p) / 5, np.float32)
    v[k] = p
    return v


def test_match_is_greedy_one_to_one_above_threshold():
    new = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [1, 0, 11, 10]], np.float32)
    old = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    assert match_boxes(new, old, 0.3) == [(0, 0)]  # box 2 overlaps too but box 0 is better
    assert match_boxes(new, old[:0], 0.3) == []


def test_ids_follow_moving_faces_and_new_faces_get_new_ids():
    tracker = IoUTracker(min_iou=0.3)
    ids = []
    for i in range(10):
        boxes = np.array([[10 + 3 * i, 10, 60 + 3 * i, 60], [200, 10 + 2 * i, 250, 60 + 2 * i]],
                         np.float32)
        if i >= 5:  # a third face enters
            boxes = np.vstack([boxes, [[400, 400, 450, 450]]]).astype(np.float32)
        result = tracker.update(i, boxes, np.stack([onehot(0)] * len(boxes)))
        ids.append(result.track_ids.tolist())
    assert all(row[:2] == [1, 2] for row in ids)
    assert all(row[2] == 3 for row in ids[5:])


def test_track_expires_after_max_age():
    tracker = IoUTracker(max_age=2)
    box = np.array([[0, 0, 50, 50]], np.float32)
    assert tracker.update(0, box, onehot(1)[None]).track_ids[0] == 1
    assert tracker.update(2, box, onehot(1)[None]).track_ids[0] == 1  # gap of 2: kept
    assert tracker.update(5, box, onehot(1)[None]).track_ids[0] == 2  # gap of 3: new


@pytest.mark.parametrize("smoothing", ["ema", "window"])
def test_smoothing_stops_single_frame_flicker(smoothing):
    tracker = IoUTracker(smoothing=smoothing, alpha=0.3, window=5, hysteresis=0.1)
    box = np.array([[0, 0, 50, 50]], np.float32)
    labels = []
    for i in range(12):
        p = onehot(3) if i == 6 else onehot(0)  # one frame says anger
        labels.append(int(tracker.update(i, box, p[None]).labels[0]))
    assert labels == [0] * 12
    for i in range(12, 30):  # a lasting change does come through
        result = tracker.update(i, box, onehot(3)[None])
    assert result.labels[0] == 3
    np.testing.assert_allclose(result.smoothed.sum(), 1, atol=1e-4)


def test_uncertain_when_smoothed_top_probability_below_threshold():
    tracker = IoUTracker(uncertain_threshold=0.4, smoothing="ema", alpha=1.0)
    box = np.array([[0, 0, 50, 50]], np.float32)
    flat = np.array([[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]], np.float32)
    assert tracker.update(0, box, flat).uncertain[0]
    assert not tracker.update(1, box, onehot(0, 0.8)[None]).uncertain[0]


def test_empty_frames():
    tracker = IoUTracker()
    result = tracker.update(0, np.zeros((0, 4), np.float32), np.zeros((0, 6), np.float32))
    assert result.track_ids.shape == (0,) and result.smoothed.shape == (0, 6)


def test_center_matching_bridges_gaps_where_iou_fails():
    old = np.array([[0, 0, 30, 30], [100, 0, 130, 30]], np.float32)
    new = old + np.array([25, 5, 25, 5], np.float32)  # moved most of a box: IoU ~0.1
    assert match_boxes(new, old, 0.3) == []
    assert match_centers(new, old, 1.0) == [(0, 0), (1, 1)]
    assert match_centers(new + 200, old, 1.0) == []
