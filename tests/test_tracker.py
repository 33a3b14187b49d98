import numpy as np
from gimefive.pipeline.tracking import IoUTracker, match_boxes, match_centers


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
        ids.append(tracker.update(i, boxes).tolist())
    assert all(row[:2] == [1, 2] for row in ids)
    assert all(row[2] == 3 for row in ids[5:])


def test_track_expires_after_max_age():
    tracker = IoUTracker(max_age=2)
    box = np.array([[0, 0, 50, 50]], np.float32)
    assert tracker.update(0, box)[0] == 1
    assert tracker.update(2, box)[0] == 1  # gap of 2: kept
    assert tracker.update(5, box)[0] == 2  # gap of 3: new


def test_empty_frames():
    tracker = IoUTracker()
    assert tracker.update(0, np.zeros((0, 4), np.float32)).shape == (0,)


def test_center_matching_bridges_gaps_where_iou_fails():
    old = np.array([[0, 0, 30, 30], [100, 0, 130, 30]], np.float32)
    new = old + np.array([25, 5, 25, 5], np.float32)  # moved most of a box: IoU ~0.1
    assert match_boxes(new, old, 0.3) == []
    assert match_centers(new, old, 1.0) == [(0, 0), (1, 1)]
    assert match_centers(new + 200, old, 1.0) == []
