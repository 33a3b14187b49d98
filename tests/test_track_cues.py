"""The tracker's colour cue on a fixed sample grid, and tracks following their faces (box,
velocity, running-mean cue) all at once: unit tests, no processes."""

import cv2
import numpy as np
from gimefive.pipeline.tracking import IoUTracker, appearance

RED, BLUE = (40, 60, 200), (200, 80, 30)  # BGR


def every_pixel_cue(image, box):
    """The cue counted over every pixel of the inner box (what the sample stands for)."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * 0.1, (y2 - y1) * 0.1
    hsv = cv2.cvtColor(np.ascontiguousarray(
        image[int(y1 + my):int(y2 - my), int(x1 + mx):int(x2 - mx)]), cv2.COLOR_BGR2HSV)
    hs = cv2.calcHist([hsv], [0, 1], None, [8, 4], [0, 180, 0, 256]).ravel()
    v = cv2.calcHist([hsv], [2], None, [8], [0, 256]).ravel()
    vec = np.sqrt(np.concatenate([hs, v]))
    return vec / np.linalg.norm(vec)


def noisy_face(size, seed=0):
    """A size x size face-like patch: red and blue halves, noise, a darker band."""
    rng = np.random.default_rng(seed)
    face = np.empty((size, size, 3), np.float32)
    face[:, : size // 2], face[:, size // 2:] = RED, BLUE
    face[size // 3: size // 2] *= 0.6
    face += rng.normal(0, 25, face.shape)
    return np.clip(face, 0, 255).astype(np.uint8)


def test_sampled_cue_matches_every_pixel_on_large_and_small_faces():
    image = np.full((720, 1280, 3), 128, np.uint8)
    image[100:500, 100:500] = noisy_face(400)
    image[600:612, 700:712] = noisy_face(12, seed=1)  # inner box 10x10: under the grid
    boxes = np.array([(100, 100, 500, 500), (700, 600, 712, 612)], np.float32)
    cues = appearance(image, boxes)
    assert cues.shape == (2, 40) and cues.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(cues, axis=1), 1, atol=1e-5)
    for cue, box in zip(cues, boxes, strict=True):
        assert cue @ every_pixel_cue(image, box) > 0.99


def test_cue_of_one_colour_is_exact_and_read_only_frames_work():
    image = np.full((360, 640, 3), 128, np.uint8)
    image[50:150, 60:160] = RED
    image.flags.writeable = False  # frames arrive as read-only views of the message
    box = (60, 50, 160, 150)
    cue = appearance(image, np.array([box], np.float32))[0]
    np.testing.assert_allclose(cue, every_pixel_cue(image, box), atol=1e-6)
    assert np.count_nonzero(cue) == 2  # one hue x saturation bin, one value bin


def test_track_cue_is_a_running_mean_and_a_face_without_cue_keeps_it():
    tracker = IoUTracker(relink_frames=50)
    a, b = np.zeros((1, 40), np.float32), np.zeros((1, 40), np.float32)
    a[0, 0], b[0, 1] = 1, 1
    box = np.array([(100, 100, 160, 160)], np.float32)
    tracker.update(0, box, a)
    np.testing.assert_array_equal(tracker.tracks[0].look, a[0])  # a new track: its first cue
    tracker.update(1, box, b)
    want = (0.7 * a[0] + 0.3 * b[0]) / np.linalg.norm(0.7 * a[0] + 0.3 * b[0])
    np.testing.assert_allclose(tracker.tracks[0].look, want, rtol=1e-6)
    tracker.update(2, box, np.zeros((1, 40), np.float32))  # e.g. its box left the image
    np.testing.assert_allclose(tracker.tracks[0].look, want, rtol=1e-6)
    tracker.update(3, box)  # no cues at all
    np.testing.assert_allclose(tracker.tracks[0].look, want, rtol=1e-6)


def test_velocity_is_a_smoothed_step_per_frame_for_each_track():
    tracker = IoUTracker(relink_frames=50)
    first = np.array([(100, 100, 160, 160), (400, 100, 460, 160)], np.float32)
    assert tracker.update(0, first).tolist() == [1, 2]
    moved = first + np.array([[8, 0, 8, 0], [-6, 4, -6, 4]], np.float32)
    assert tracker.update(2, moved).tolist() == [1, 2]  # two frames later
    by_id = {t.track_id: t for t in tracker.tracks}
    np.testing.assert_allclose(by_id[1].velocity, [2, 0])    # 0.5 * (8, 0) / 2 + 0.5 * 0
    np.testing.assert_allclose(by_id[2].velocity, [-1.5, 1])
    np.testing.assert_array_equal(by_id[2].box, moved[1])
    assert by_id[1].last_index == by_id[2].last_index == 2


def test_the_stage_learns_a_face_colour_cue_on_detected_frames_only():
    """A box carried between detections (``detected`` False) may sit on the background:
    the track keeps the cue of its detections, so the face detected again in a new
    place is re-linked to its track rather than given a new one."""
    from gimefive.pipeline.config import AnnotateConfig
    from gimefive.pipeline.messages import DetectionsMsg
    from gimefive.pipeline.stages.track import TrackStage

    image = np.full((240, 320, 3), (30, 160, 40), np.uint8)  # green background
    image[40:120, 40:120] = noisy_face(80)
    image[130:210, 150:230] = noisy_face(80, seed=1)  # the face has moved there

    def msg(index, box, detected):
        return DetectionsMsg(stream="s", index=index, pts=index, time_base=[1, 25],
                             image=image, detected=detected,
                             boxes=np.array([box], np.float32),
                             scores=np.ones(1, np.float32),
                             landmarks=np.zeros((1, 5, 2), np.float32))

    stage = TrackStage(AnnotateConfig())
    stage.setup()
    ids = [stage.process(msg(0, (40, 40, 120, 120), True))[0].track_ids.tolist()]
    learnt = stage.trackers["s"].tracks[0].look.copy()
    for i in range(1, 8):  # carried onto the green background, not on a face
        ids.append(stage.process(msg(i, (40, 130, 120, 210), False))[0].track_ids.tolist())
    assert np.array_equal(stage.trackers["s"].tracks[0].look, learnt)
    ids.append(stage.process(msg(8, (150, 130, 230, 210), True))[0].track_ids.tolist())
    assert ids == [[1]] * 9  # re-linked by its colours: no new track
