"""The annotated frame: overlays that keep the face visible, sizes that scale with the
frame, and --blur-faces / metadata-only runs that draw and write nothing of a face."""

from __future__ import annotations

import dataclasses
import json

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clips import write_still_clip
from gimefive.pipeline.config import OVERLAY_CHOICES, AnnotateConfig
from gimefive.pipeline.crops import crop_geometry
from gimefive.pipeline.draw import OVERLAYS, Style, draw_faces
from gimefive.pipeline.messages import TrackedMsg

from gimefive.errors import GimefiveError


@pytest.fixture(scope="module")
def astronaut_msg(astronaut_bgr) -> TrackedMsg:
    """The astronaut photo at 640x360 with her detected face, classified 'happiness' at
    0.7 and a Grad-CAM that peaks in one corner of the map (as real 4x4 maps do)."""
    from gimefive.detector import FaceDetector

    image = np.full((360, 640, 3), 90, np.uint8)
    image[:, 140:500] = cv2.resize(astronaut_bgr, (360, 360), interpolation=cv2.INTER_AREA)
    (det,) = FaceDetector(threads=1).detect([image])
    assert len(det.boxes) == 1
    cam = np.array([[0, .1, .2, .1], [.1, .3, .6, .4], [.2, .5, 1, .6], [0, .2, .4, .2]],
                   np.float32)[None]
    probs = np.array([[0.7, 0.1, 0.05, 0.05, 0.05, 0.05]], np.float32)
    return TrackedMsg(stream="s", index=0, pts=0, time_base=[1, 25], image=image,
                      boxes=det.boxes, scores=det.scores, landmarks=det.landmarks,
                      probs=probs, cam=cam,
                      crops=crop_geometry(det.boxes, det.landmarks, 1.0, "eyes"),
                      track_ids=np.array([1]), smoothed=probs, labels=np.array([0]),
                      uncertain=np.array([False]))


def face_region(msg: TrackedMsg, image: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in msg.boxes[0])
    return image[y1:y2, x1:x2].astype(np.float32)


def draw(msg: TrackedMsg, **options) -> np.ndarray:
    return draw_faces(np.array(msg.image), msg, bars=False, landmarks=False, **options)


def detail_kept(original: np.ndarray, shown: np.ndarray) -> float:
    """How much of a face's fine detail (eyes, mouth, hair: its Laplacian) is still in
    what is shown: the correlation of the two Laplacians, 1 = all of it. (Plain Laplacian
    variance would not do: a pixelated face is all sharp block edges, none of them hers.)"""
    def edges(region):
        gray = cv2.cvtColor(region.astype(np.uint8), cv2.COLOR_BGR2GRAY)
        return cv2.Laplacian(gray, cv2.CV_64F).ravel()

    return float(np.corrcoef(edges(original), edges(shown))[0, 1])


def test_the_overlay_setting_offers_exactly_the_registered_renderings():
    assert set(OVERLAY_CHOICES) == set(OVERLAYS)
    assert AnnotateConfig().overlay == "peak"
    with pytest.raises(GimefiveError, match="overlay"):
        AnnotateConfig(overlay="rainbow")


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_each_overlay_draws_in_or_beside_the_box(astronaut_msg, name):
    plain = draw(astronaut_msg, draw_cam=False)
    drawn = draw(astronaut_msg, overlay=name)
    x1, y1, x2, y2 = (int(v) for v in astronaut_msg.boxes[0])
    pad = x2 - x1  # the thumbnail sits beside the box
    near = np.s_[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
    changed = (np.abs(drawn[near].astype(int) - plain[near]).max(axis=2) > 30).sum()
    assert changed > 0.05 * (x2 - x1) * (y2 - y1), name


def test_the_default_overlay_keeps_the_face_visible_the_old_one_hid_it(astronaut_msg):
    face = face_region(astronaut_msg, astronaut_msg.image)
    default = np.abs(face_region(astronaut_msg, draw(astronaut_msg)) - face).mean()
    old = np.abs(face_region(astronaut_msg, draw(astronaut_msg, overlay="full")) - face).mean()
    assert default < 12 and old > 3 * default, (default, old)
    contour = draw(astronaut_msg, overlay="contour")
    assert np.abs(face_region(astronaut_msg, contour) - face).mean() < 12


def test_text_lines_and_bars_grow_with_the_frame_height():
    styles = [Style.for_height(h) for h in (360, 720, 1080, 2160)]
    assert styles[0].text_h >= 9  # readable at 360p
    for small, big in zip(styles, styles[1:], strict=False):
        assert big.font > small.font and big.text_h > small.text_h
        assert big.line >= small.line and big.row_h >= small.row_h
    assert styles[-1].text_h >= 3 * styles[0].text_h  # 4K: not the 360p size


def test_labels_of_a_small_face_are_outside_its_box(astronaut_msg):
    """A 24 px face at 1080p: the label and bars go beside the box, the face stays clear."""
    image = np.full((1080, 1920, 3), 90, np.uint8)
    face = cv2.resize(face_region(astronaut_msg, astronaut_msg.image).astype(np.uint8), (24, 24))
    image[500:524, 900:924] = face
    msg = dataclasses.replace(
        astronaut_msg, image=image, boxes=np.array([[900, 500, 924, 524]], np.float32),
        landmarks=astronaut_msg.landmarks * 0 + 512, cam=None,
        crops=np.array([[912, 512, 24, 0]], np.float32))
    drawn = draw_faces(np.array(image), msg, landmarks=False)
    line = Style.for_height(1080).line + 1  # half the outline, and its anti-aliasing
    inside = np.s_[500 + line:524 - line, 900 + line:924 - line]
    assert np.array_equal(drawn[inside], image[inside])
    assert (drawn[:500] != 90).any() and (drawn[:, 924:] != 90).any()  # above, right


def test_blur_faces_pixelates_the_face_also_under_its_overlay(astronaut_msg):
    face = face_region(astronaut_msg, astronaut_msg.image)
    for name in OVERLAYS:
        clear = detail_kept(face, face_region(astronaut_msg, draw(astronaut_msg, overlay=name)))
        hidden = detail_kept(face, face_region(astronaut_msg, draw(astronaut_msg, overlay=name,
                                                                   blur_faces=True)))
        assert hidden < 0.15 and (name == "full" or clear > 0.4), (name, clear, hidden)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory, astronaut_bgr):
    image = np.full((360, 640, 3), 90, np.uint8)
    image[:, 140:500] = cv2.resize(astronaut_bgr, (360, 360), interpolation=cv2.INTER_AREA)
    return write_still_clip(tmp_path_factory.mktemp("clip") / "astronaut.mp4", image,
                            (640, 360), frames=6)


def annotate(clip, folder, weights, *extra):
    from gimefive.cli import cli

    folder.mkdir()
    args = ["annotate", str(clip), "--json", str(folder / "faces.jsonl"), "-q",
            "--weights", str(weights), "--backend", "torch", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (folder / "faces.jsonl").read_text().splitlines()]


def first_frame(path):
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


@pytest.mark.slow
def test_blur_faces_hides_the_face_in_the_video_and_leaves_the_json(tmp_path, weights,
                                                                      astronaut_clip):
    plain = annotate(astronaut_clip, tmp_path / "plain", weights, "-o",
                     str(tmp_path / "plain" / "out.mp4"))
    hidden = annotate(astronaut_clip, tmp_path / "hidden", weights, "--blur-faces", "-o",
                      str(tmp_path / "hidden" / "out.mp4"))
    assert all(r.pop("blur_faces") is True for r in hidden)
    assert hidden == plain and len(plain) == 6 and all(len(r["faces"]) == 1 for r in plain)
    x1, y1, x2, y2 = (int(v) for v in plain[0]["faces"][0]["box"])
    face = first_frame(astronaut_clip)[y1:y2, x1:x2]
    clear = detail_kept(face, first_frame(tmp_path / "plain" / "out.mp4")[y1:y2, x1:x2])
    hidden = detail_kept(face, first_frame(tmp_path / "hidden" / "out.mp4")[y1:y2, x1:x2])
    assert hidden < 0.15 < 0.4 < clear, (clear, hidden)  # clear: under the overlay, H.264
    config = (tmp_path / "hidden" / "out.mp4.config.yaml").read_text()
    assert "blur_faces: true" in config


@pytest.mark.slow
def test_metadata_only_writes_the_json_and_nothing_else(tmp_path, weights, astronaut_clip):
    records = annotate(astronaut_clip, tmp_path / "meta", weights)
    assert [p.name for p in (tmp_path / "meta").iterdir()] == ["faces.jsonl"]
    assert len(records) == 6 and records[0]["faces"][0]["cam"] is not None
