"""Re-linking lost tracks (issue 16, stable people): unit tests of the tracker, no processes.

Faces are coloured squares with some texture on a grey frame; boxes move in pixels per
frame at 25 fps, so 25 frames are one second.
"""

import json

import numpy as np
import pytest
from gimefive.pipeline.tracking import IoUTracker, appearance

FPS = 25
RED, BLUE, GREEN = (40, 60, 200), (200, 80, 30), (60, 180, 60)  # BGR


def onehot(k, p=0.9):
    v = np.full(6, (1 - p) / 5, np.float32)
    v[k] = p
    return v


def frame_with(faces):
    """A 640x360 grey frame with (box, colour) squares drawn, textured so they vary."""
    image = np.full((360, 640, 3), 128, np.uint8)
    for box, colour in faces:
        x1, y1, x2, y2 = (int(v) for v in box)
        patch = np.empty((y2 - y1, x2 - x1, 3), np.uint8)
        patch[:] = colour
        patch[::4] = np.clip(np.array(colour) * 0.7, 0, 255).astype(np.uint8)
        image[max(0, y1):y2, max(0, x1):x2] = patch[max(0, -y1):, max(0, -x1):]
    return image


def step(tracker, index, faces):
    """One frame: ``faces`` are (box, colour) pairs; returns the track ids."""
    boxes = np.array([b for b, _ in faces], np.float32).reshape(-1, 4)
    looks = appearance(frame_with(faces), boxes)
    return tracker.update(index, boxes, looks).tolist()


def box_at(x, y, side=60):
    return (x, y, x + side, y + side)


def test_appearance_cue_tells_colours_apart_and_ignores_empty_boxes():
    image = frame_with([(box_at(50, 50), RED), (box_at(300, 50), RED),
                        (box_at(50, 200), BLUE)])
    looks = appearance(image, np.array([box_at(50, 50), box_at(300, 50), box_at(50, 200),
                                        (700, 400, 760, 460)], np.float32))
    assert looks.shape == (4, 40)
    assert looks[0] @ looks[1] > 0.99   # same colours
    assert looks[0] @ looks[2] < 0.6    # different colours (same brightness)
    assert not looks[3].any()           # outside the image: similar to nothing


def test_face_missing_for_one_second_comes_back_with_its_id():
    tracker = IoUTracker(relink_frames=2 * FPS)
    ids = [step(tracker, i, [(box_at(100 + 2 * i, 100), RED)]) for i in range(20)]
    for i in range(20, 20 + FPS):  # hidden for a second while it keeps walking
        assert step(tracker, i, []) == []
    back = step(tracker, 20 + FPS, [(box_at(100 + 2 * (20 + FPS), 100), RED)])
    assert ids[0] == ids[-1] == back == [1]


def test_without_relinking_the_same_face_comes_back_as_someone_new():
    tracker = IoUTracker(relink_frames=0)
    step(tracker, 0, [(box_at(100, 100), RED)])
    for i in range(1, 20):
        step(tracker, i, [(box_at(100 + 2 * i, 100), RED)])
    assert step(tracker, 20 + FPS, [(box_at(100 + 2 * (20 + FPS), 100), RED)]) == [2]


def test_two_faces_crossing_keep_their_ids():
    """Red walks right, blue walks left in front of it: red is hidden while they overlap."""
    tracker = IoUTracker(relink_frames=2 * FPS)
    seen = {}
    for i in range(80):
        red, blue = box_at(60 + 5 * i, 120), box_at(460 - 5 * i, 130, 64)
        faces = [(blue, BLUE)]
        if abs((60 + 5 * i) - (460 - 5 * i)) > 70:  # overlapping: only blue is detected
            faces = [(red, RED), (blue, BLUE)]
        ids = step(tracker, i, faces)
        for (_, colour), tid in zip(faces, ids, strict=True):
            seen.setdefault(colour, set()).add(tid)
    assert seen == {RED: {1}, BLUE: {2}}


def test_a_different_face_where_a_lost_one_was_gets_a_new_id():
    tracker = IoUTracker(relink_frames=2 * FPS)
    for i in range(10):
        assert step(tracker, i, [(box_at(200, 100), RED)]) == [1]
    # a second later (past max_age: IoU no longer applies), same place, not red
    assert step(tracker, 10 + FPS, [(box_at(200, 100), BLUE)]) == [2]
    assert step(tracker, 11 + FPS, [(box_at(200, 100), BLUE), (box_at(260, 100), RED)]
                ) == [2, 1]  # red comes back beside it: still itself


def test_a_track_lost_longer_than_relink_gets_a_new_id():
    tracker = IoUTracker(relink_frames=2 * FPS)
    for i in range(10):
        step(tracker, i, [(box_at(200, 100), RED)])
    assert step(tracker, 9 + 2 * FPS, [(box_at(200, 100), RED)]) == [1]  # 2 s: still linked
    assert step(tracker, 10 + 4 * FPS + 1, [(box_at(200, 100), RED)]) == [2]  # 2 s + 1 frame


def test_relinked_track_keeps_its_smoothing_state():
    """The id comes back, so the classify stage's state of that track (smoothing, the
    shown label under hysteresis) continues rather than starting again."""
    from gimefive.pipeline.schedule import ScheduleSettings, StreamSchedule

    tracker = IoUTracker(relink_frames=2 * FPS)
    schedule = StreamSchedule(ScheduleSettings(every=1, alpha=0.5, hysteresis=0.2,
                                               keep_frames=tracker.keep_frames + 1))
    box = np.array([box_at(200, 100)], np.float32)
    looks = appearance(frame_with([(box_at(200, 100), RED)]), box)

    def frame(index, probs):
        ids = tracker.update(index, box, looks)
        plan = schedule.plan(index, ids, box)
        return ids, schedule.record(index, ids, plan, probs[None][plan.measure], None)

    for i in range(10):
        ids_before, before = frame(i, onehot(2))
    ids_after, after = frame(10 + FPS, onehot(4))
    assert ids_after[0] == ids_before[0]
    np.testing.assert_allclose(after.smoothed[0], 0.5 * before.smoothed[0] + 0.5 * onehot(4),
                               atol=1e-6)
    assert after.labels[0] == 2  # the shown label did not reset: hysteresis still holds


def test_memory_stays_bounded_over_100k_frames_of_churn():
    """100k frames: now and then a burst of faces nobody saw before (3 a frame), else a
    new face every 20 frames; lost tracks expire after relink_frames or are capped."""
    rng = np.random.default_rng(0)
    tracker = IoUTracker(relink_frames=2 * FPS, max_age=15, max_tracks=32)
    empty, most = np.zeros((0, 4), np.float32), 0
    for i in range(100_000):
        n = 3 if i % 5000 < 30 else int(i % 20 == 0)
        if n == 0:
            tracker.update(i, empty)
            continue
        xy = rng.uniform(0, 580, (n, 2)).astype(np.float32)
        boxes = np.hstack([xy, xy + rng.uniform(20, 60, (n, 1))]).astype(np.float32)
        tracker.update(i, boxes)
        most = max(most, len(tracker.tracks))
    assert most == 32  # the bursts hit the cap, never more
    assert len(tracker.tracks) <= 2 * FPS // 20 + 1  # quiet: only the last 2 s remain
    assert tracker.next_id > 1000  # churn did happen: many distinct faces


@pytest.mark.slow
def test_relinking_cuts_identity_switches_on_the_crossing_scene(fer_data, weights, tmp_path):
    """The real pipeline on the crossing scene (seed 1 of benchmarks/track_switches.py):
    measured 7 switches with IoU only, 1 with re-linking (docs/accuracy.md)."""
    from gimefive.pipeline.bench.crossing import make_crossing_scene_video, score_identities
    from gimefive.pipeline.bench.scenes import load_dataset_faces
    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.run import annotate_video

    faces = load_dataset_faces(5, "rafdb_test", root=fer_data, seed=1)
    truth = make_crossing_scene_video(tmp_path / "crossing.mp4", faces, seed=1)
    scores = {}
    for relink in (0.0, 2.0):
        out = tmp_path / f"faces_{relink}.jsonl"
        config = load_annotate_config(None, weights=str(weights), relink_s=relink)
        annotate_video(tmp_path / "crossing.mp4", None, json_path=out, config=config,
                       progress=False)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        scores[relink] = score_identities(truth, records)
    before, after = scores[0.0], scores[2.0]
    assert before["matched"] > 0.8 * before["shown"]  # the detector found the faces
    assert after["switches"] <= before["switches"]
    assert after["switches"] <= 2
    assert after["track_ids"] < before["track_ids"]
