import numpy as np
import pytest

from gimefive.detector import FaceDetector, box_iou, decode, nms, prior_boxes
from gimefive.errors import GimefiveError

# the astronaut's face, measured by hand on skimage.data.astronaut() (x1, y1, x2, y2)
ASTRONAUT_FACE = (180, 60, 272, 175)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(max_side=640, threads=1)


def test_astronaut_has_exactly_one_face_in_the_right_place(detector, astronaut_bgr):
    (det,) = detector.detect([astronaut_bgr])
    assert len(det) == 1
    assert det.scores[0] > 0.9
    assert box_iou(det.boxes, np.array([ASTRONAUT_FACE]))[0, 0] > 0.7
    right_eye, left_eye, nose, mouth_r, mouth_l = det.landmarks[0]
    x1, y1, x2, y2 = det.boxes[0]
    assert x1 < right_eye[0] < nose[0] < left_eye[0] < x2       # eyes either side of nose
    assert y1 < right_eye[1] < nose[1] < mouth_r[1] < y2         # eyes above nose above mouth
    assert abs(mouth_l[1] - mouth_r[1]) < 10


def test_full_frame_coordinates_after_downscaling(astronaut_bgr):
    """A face pasted into a big frame is found where it was pasted, at any max_side."""
    frame = np.full((720, 1280, 3), 40, np.uint8)
    frame[150:662, 600:1112] = astronaut_bgr
    expected = np.array(ASTRONAUT_FACE, np.float32) + [600, 150, 600, 150]
    for max_side in (320, 640, 1280):
        (det,) = FaceDetector(max_side=max_side, threads=1).detect([frame])
        assert len(det) == 1, max_side
        assert box_iou(det.boxes, expected[None])[0, 0] > 0.7, (max_side, det.boxes)


def test_batch_of_mixed_sizes_matches_one_by_one(detector, astronaut_bgr):
    blank = np.zeros((200, 300, 3), np.uint8)
    flipped = np.ascontiguousarray(astronaut_bgr[:, ::-1])
    frames = [astronaut_bgr, blank, flipped, astronaut_bgr]
    batched = detector.detect(frames)
    assert [len(d) for d in batched] == [1, 0, 1, 1]
    single = detector.detect([flipped])[0]
    np.testing.assert_allclose(batched[2].boxes, single.boxes, atol=0.05)
    # the mirror image's face is mirrored
    assert abs((512 - batched[2].boxes[0, 2]) - batched[0].boxes[0, 0]) < 6


def test_priors_match_the_network_layout():
    priors = prior_boxes(360, 640)
    assert priors.shape == ((45 * 80 + 23 * 40 + 12 * 20) * 2, 4)
    np.testing.assert_allclose(priors[:3], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]])


def test_decode_zero_offsets_returns_the_anchor():
    priors = np.array([[100, 50, 16, 16]], np.float32)
    boxes, points = decode(np.zeros((1, 4), np.float32), np.zeros((1, 10), np.float32), priors)
    np.testing.assert_allclose(boxes, [[92, 42, 108, 58]])
    np.testing.assert_allclose(points, np.tile([[100, 50]], (1, 5, 1)))


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.8], np.float32), 0.4)
    assert keep.tolist() == [1, 2]


def test_bad_frames_and_options_are_named(detector):
    with pytest.raises(ValueError, match="frame 1: expected BGR uint8"):
        detector.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(GimefiveError, match="max_side"):
        FaceDetector(max_side=8)


def test_upscale_finds_a_face_too_small_at_the_frames_own_size(astronaut_bgr):
    """The astronaut shrunk so her face is about 12 px: missed at the frame's own size,
    found (in frame coordinates, where she is) when the frame is enlarged 4x."""
    import cv2

    small = cv2.resize(astronaut_bgr, None, fx=0.125, fy=0.125, interpolation=cv2.INTER_AREA)
    frame = np.full((180, 320, 3), 90, np.uint8)
    frame[20:84, 40:104] = small
    plain = FaceDetector(max_side=1280, threads=1)
    enlarged = FaceDetector(max_side=1280, threads=1, upscale=True)
    assert plain.input_size(180, 320) == (180, 320)
    assert enlarged.input_size(180, 320) == (720, 1280)
    assert len(plain.detect([frame])[0]) == 0
    (found,) = enlarged.detect([frame])
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0]
    assert 40 + 170 / 8 < (x1 + x2) / 2 < 40 + 290 / 8  # her face: x 170..290, y 50..180
    assert 20 + 50 / 8 < (y1 + y2) / 2 < 20 + 180 / 8


def test_empty_frames_give_no_faces_instead_of_dividing_by_zero(detector, astronaut_bgr):
    """A 0x0 (or 0xW) image is handled: no faces for it, the others still detected."""
    empty, flat = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 40, 3), np.uint8)
    found = detector.detect([empty, astronaut_bgr, flat])
    assert [len(d) for d in found] == [0, 1, 0]


class _NmsSpy:
    """Wraps the detector's nms and records how many candidates each call was given."""

    def __init__(self, monkeypatch) -> None:
        import gimefive.detector as module

        self.sizes: list[int] = []
        self.real = module.nms
        monkeypatch.setattr(module, "nms", self)

    def __call__(self, boxes, scores, threshold, **kw):
        self.sizes.append(len(scores))
        return self.real(boxes, scores, threshold, **kw)


def test_nms_is_given_a_bounded_number_of_candidates(detector, monkeypatch):
    """Tens of thousands of candidates above the threshold (a hostile or noisy frame):
    only the top few multiples of the face cap reach NMS; the best ones are kept."""
    import gimefive.detector as module

    spy = _NmsSpy(monkeypatch)
    priors = prior_boxes(640, 640)
    n = priors.shape[0]
    assert n > 16000
    scores = np.linspace(0.7, 0.99, n, dtype=np.float32)
    loc, marks = np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
    det = detector._postprocess(loc, scores, marks, priors, np.ones(2, np.float32), 640, 640)
    cap = module.NMS_CANDIDATES_PER_FACE * detector.max_faces
    assert spy.sizes and max(spy.sizes) <= cap < n / 10
    assert 0 < len(det) <= detector.max_faces
    assert det.scores[0] == pytest.approx(0.99)


def test_top_k_before_nms_leaves_normal_results_unchanged(monkeypatch, astronaut_bgr):
    """On real photos the capped candidate list gives exactly what NMS over all gave."""
    import cv2

    import gimefive.detector as module

    group = np.full((480, 1280, 3), 60, np.uint8)
    for i in range(4):
        group[:, 10 + 300 * i:10 + 300 * i + 240] = cv2.resize(astronaut_bgr, (240, 480))
    frames = [astronaut_bgr, group]
    capped = FaceDetector(threads=1, score_threshold=0.3).detect(frames)
    monkeypatch.setattr(module, "NMS_CANDIDATES_PER_FACE", 10_000)
    full = FaceDetector(threads=1, score_threshold=0.3).detect(frames)
    for a, b in zip(capped, full, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_the_network_input_is_the_frames_minus_the_mean_planar(astronaut_bgr):
    """OpenCV makes the input in one pass (planar, minus the mean); it must be what the
    NumPy way made, value for value, for a frame kept at its size and a downscaled one,
    and for a read-only view (a frame as it arrives over the wire)."""
    from gimefive.detector import BGR_MEAN

    seen = []

    class Recorder:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            seen.append(feeds["input"].copy())
            return self.session.run(names, feeds)

    detector = FaceDetector(max_side=640, threads=1)
    detector.session = Recorder(detector.session)
    wire = np.frombuffer(astronaut_bgr[:360, :480].tobytes(), np.uint8).reshape(360, 480, 3)
    for frame in (wire, np.ascontiguousarray(np.tile(astronaut_bgr, (1, 2, 1)))):
        seen.clear()
        detector.detect([frame])
        h, w = detector.input_size(*frame.shape[:2])
        small = frame if (h, w) == frame.shape[:2] else cv2_resize(frame, w, h)
        expected = (small.astype(np.float32) - BGR_MEAN).transpose(2, 0, 1)[None]
        assert seen[0].dtype == np.float32 and seen[0].flags.c_contiguous
        np.testing.assert_array_equal(seen[0], expected)


def cv2_resize(frame, width, height):
    import cv2

    interpolation = cv2.INTER_AREA if width < frame.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interpolation)
