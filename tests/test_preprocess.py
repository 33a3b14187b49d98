import numpy as np
import pytest

from gimefive.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_faces


def hand_computed(gray: np.ndarray) -> np.ndarray:
    """The paper's transform written out pixel by pixel, channel by channel."""
    out = np.empty((3, *gray.shape), np.float64)
    for c in range(3):
        out[c] = (gray / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return out


def test_gray_64x64_matches_hand_computation():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    out = preprocess_faces(gray)
    assert out.shape == (1, 3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], hand_computed(gray.astype(np.float64)), atol=1e-5)


def test_bgr_and_rgb_use_601_luma():
    bgr = np.zeros((64, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 200, 100, 50  # B, G, R
    luma = round(0.299 * 50 + 0.587 * 100 + 0.114 * 200)
    expected = hand_computed(np.full((64, 64), luma, np.float64))
    np.testing.assert_allclose(preprocess_faces(bgr, color="bgr")[0], expected, atol=1e-5)
    np.testing.assert_allclose(preprocess_faces(bgr[..., ::-1], color="rgb")[0], expected,
                               atol=1e-5)
    # the three channels carry the same gray value, normalised per channel
    g = preprocess_faces(bgr)[0, :, 0, 0] * IMAGENET_STD + IMAGENET_MEAN
    np.testing.assert_allclose(g, luma / 255.0, atol=1e-6)


def test_list_of_sizes_and_uniform_resize():
    crops = [np.full((130, 90, 3), 128, np.uint8), np.full((20, 33, 3), 10, np.uint8)]
    out = preprocess_faces(crops)
    assert out.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(out[0], hand_computed(np.full((64, 64), 128.0)), atol=1e-5)
    np.testing.assert_allclose(out[1], hand_computed(np.full((64, 64), 10.0)), atol=1e-5)


def test_stack_of_gray_faces():
    stack = np.zeros((5, 64, 64), np.uint8)
    assert preprocess_faces(stack).shape == (5, 3, 64, 64)
    assert preprocess_faces([]).shape == (0, 3, 64, 64)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((8, 8, 4, 1), np.uint8), "HxW"),
])
def test_bad_crops_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        preprocess_faces([bad])
