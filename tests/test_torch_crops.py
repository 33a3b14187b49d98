"""The tensor crop path (pipeline/torch_crops.py) against the OpenCV one (cut_faces +
preprocess_faces), on CPU tensors.

Measured here (1 Dec 2026, CPU): max abs diff 0.017..0.024 and mean 0.0047..0.0054 in
normalised units over every align mode, on the astronaut and a generated scene; one gray
level is 1 / (255 * 0.224) = 0.0175 normalised. The difference is OpenCV's rounding to
uint8 after each of warp, gray and resize (and its fixed-point bilinear weights); the
tensor path stays in float32. Tolerances: max 0.05 (under 3 gray levels), mean 0.01
(0.6 gray level); a wrong half-pixel convention or a mirrored axis gives errors of whole
tens of gray levels on these textured faces, far above them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gimefive.pipeline.crops import ALIGN_MODES, crop_geometry, cut_faces  # noqa: E402
from gimefive.pipeline.torch_crops import (  # noqa: E402
    preprocess_crops_torch,
    resize_weights,
)

from gimefive.preprocess import preprocess_faces  # noqa: E402

MAX_DIFF, MEAN_DIFF = 0.05, 0.01


@pytest.fixture(scope="module")
def scenes(astronaut_bgr):
    """Real frames with the detector's boxes and landmarks: the astronaut (one face) and
    a generated scene (six faces of 20..120 px)."""
    from gimefive.pipeline.bench.scenes import face_ladder

    from gimefive.detector import FaceDetector

    frames = [astronaut_bgr, face_ladder()]
    found = FaceDetector().detect(frames)
    assert [len(d.boxes) for d in found] == [1, 6]
    return frames, found


def opencv_batch(frames, crops):
    return preprocess_faces([f for img, c in zip(frames, crops, strict=True)
                             for f in cut_faces(img, c)])


def torch_batch(frames, crops):
    return preprocess_crops_torch([torch.from_numpy(f) for f in frames], crops).numpy()


@pytest.mark.parametrize("align", ALIGN_MODES)
@pytest.mark.parametrize("scale", [1.0, 1.4])
def test_matches_opencv_on_detected_faces(scenes, align, scale):
    frames, found = scenes
    crops = [crop_geometry(d.boxes, d.landmarks, scale, align) for d in found]
    ref, got = opencv_batch(frames, crops), torch_batch(frames, crops)
    assert got.shape == ref.shape == (7, 3, 64, 64)
    diff = np.abs(ref - got)
    assert diff.max() < MAX_DIFF, f"max {diff.max():.4f}"
    assert diff.mean() < MEAN_DIFF, f"mean {diff.mean():.5f}"


def test_matches_opencv_rotated_at_the_edges_and_every_size(astronaut_bgr):
    """Random squares of 8..300 px, turned -40..40 degrees, many past the frame's edge
    (border replicated), over several frames in one batch."""
    rng = np.random.default_rng(0)
    frames = [astronaut_bgr, np.ascontiguousarray(astronaut_bgr[::-1, ::-1]),
              np.ascontiguousarray(astronaut_bgr[100:400, :300])]
    crops = []
    for f in frames:
        n = 12
        h, w = f.shape[:2]
        crops.append(np.column_stack([rng.uniform(-20, w + 20, n), rng.uniform(-20, h + 20, n),
                                      rng.uniform(8, 300, n), rng.uniform(-40, 40, n)]
                                     ).astype(np.float32))
    ref, got = opencv_batch(frames, crops), torch_batch(frames, crops)
    diff = np.abs(ref - got)
    assert diff.max() < MAX_DIFF, f"max {diff.max():.4f}"
    assert diff.mean() < MEAN_DIFF, f"mean {diff.mean():.5f}"


def test_same_classification(scenes, weights):
    """The classifier's answers from both inputs: same top-1, probabilities close (random
    weights, the plumbing; and the shipped weights where present)."""
    from gimefive.backends import create_backend
    from gimefive.checkpoint import DEFAULT_WEIGHTS

    frames, found = scenes
    crops = [crop_geometry(d.boxes, d.landmarks, s, a) for a in ALIGN_MODES
             for s in (1.0, 1.3) for d in found]
    frames = frames * (len(crops) // 2)
    ref, got = opencv_batch(frames, crops), torch_batch(frames, crops)
    for w in [weights] + ([DEFAULT_WEIGHTS] if DEFAULT_WEIGHTS.is_file() else []):
        with create_backend("torch", weights=w) as b:
            p_ref, p_got = b(ref)[0], b(got)[0]
        assert np.abs(p_ref - p_got).max() < 0.05
        assert (p_ref.argmax(1) == p_got.argmax(1)).mean() >= 0.97


def test_resize_weights_rows_sum_to_one():
    for side in (16, 40, 63, 64, 65, 100, 128):
        w = resize_weights(side)
        assert np.allclose(w.sum(1), 1.0)
        assert not w[:, side:].any()  # nothing read beyond the face's own square


def test_bad_frame_is_one_clear_error():
    with pytest.raises(ValueError, match="uint8 \\[H,W,3\\] BGR"):
        preprocess_crops_torch([torch.zeros((10, 10, 3))], [np.zeros((1, 4), np.float32)])


def test_no_faces_gives_an_empty_batch(astronaut_bgr):
    out = preprocess_crops_torch([torch.from_numpy(astronaut_bgr)],
                                 [np.zeros((0, 4), np.float32)])
    assert out.shape == (0, 3, 64, 64)
