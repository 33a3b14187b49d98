"""The torch RetinaFace (gimefive.torch_detector) against today's onnxruntime detector, on CPU.

Tolerances: the network itself agrees to ~1e-5; the frames differ only where OpenCV's
fixed-point bilinear resize (upscaling) rounds a grey level the other way, so boxes are
held to IoU >= 0.95 and 2 px, landmarks to 2 px and scores to 0.01 (observed on these
scenes: see docs/performance.md, "Torch RetinaFace").
"""

import cv2
import numpy as np
import pytest
import torch
from gimefive.pipeline.bench.scenes import face_ladder

from gimefive.detector import FaceDetector, box_iou
from gimefive.errors import GimefiveError
from gimefive.torch_detector import (
    OnnxNet,
    TorchFaceDetector,
    greedy_nms_batched,
    resize_like_opencv,
)


@pytest.fixture(scope="module")
def ort():
    return FaceDetector(max_side=640, threads=1)


@pytest.fixture(scope="module")
def tdet():
    return TorchFaceDetector(max_side=640)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """640x360: the astronaut's face at 20..120 px on a generated background."""
    return face_ladder()


def assert_same(ort_det, torch_det, box_px=2.0, point_px=2.0, score=0.01):
    """Same count; each ORT face matched (IoU >= 0.95) by the torch face in the same rank."""
    assert len(torch_det) == len(ort_det)
    if not len(ort_det):
        return
    iou = np.diag(box_iou(ort_det.boxes, torch_det.boxes))
    assert iou.min() >= 0.95, iou
    assert np.abs(ort_det.boxes - torch_det.boxes).max() <= box_px
    assert np.abs(ort_det.landmarks - torch_det.landmarks).max() <= point_px
    assert np.abs(ort_det.scores - torch_det.scores).max() <= score


def test_network_outputs_equal_onnxruntime(ort, tdet):
    x = np.random.default_rng(0).uniform(-127, 150, (2, 3, 64, 96)).astype(np.float32)
    expected = ort.session.run(None, {"input": x})
    with torch.inference_mode():
        got = tdet.net(torch.from_numpy(x))
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, atol=1e-4)


def test_astronaut_same_face(ort, tdet, astronaut_bgr):
    (o,), (t,) = ort.detect([astronaut_bgr]), tdet.detect([astronaut_bgr])
    assert len(o) == 1
    assert_same(o, t, box_px=0.01, point_px=0.01, score=1e-4)


def test_multi_face_scene_same_faces(ort, tdet, scene):
    (o,), (t,) = ort.detect([scene]), tdet.detect([scene])
    assert len(o) >= 4  # the larger faces at least; the scene must exercise NMS
    assert_same(o, t)


def test_downscaled_and_upscaled_scenes(scene):
    """1280x720 shrunk to 640 (area resize) and 640x360 enlarged to 1280 (linear)."""
    big = cv2.resize(scene, (1280, 720), interpolation=cv2.INTER_LINEAR)
    for frame, kw in ((big, {}), (scene, {"max_side": 1280, "upscale": True})):
        (o,) = FaceDetector(threads=1, **kw).detect([frame])
        (t,) = TorchFaceDetector(**kw).detect([frame])
        assert len(o) >= 4
        assert_same(o, t)


def test_batch_equals_one_by_one(tdet, scene, astronaut_bgr):
    frames = [scene, scene[:, ::-1].copy(), astronaut_bgr, np.full((360, 640, 3), 90, np.uint8)]
    batched = tdet.detect(frames)
    for frame, got in zip(frames, batched, strict=True):
        (alone,) = tdet.detect([frame])
        assert_same(alone, got, box_px=1e-3, point_px=1e-3, score=1e-5)
    assert len(batched[3]) == 0


def test_empty_and_faceless_frames(tdet, astronaut_bgr):
    empty, flat = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 40, 3), np.uint8)
    grey = np.full((200, 300, 3), 128, np.uint8)
    found = tdet.detect([empty, astronaut_bgr, flat, grey])
    assert [len(d) for d in found] == [0, 1, 0, 0]
    assert found[0].boxes.shape == (0, 4) and found[0].landmarks.shape == (0, 5, 2)


def test_detect_tensor_pads_to_max_faces(scene):
    det = TorchFaceDetector(max_faces=3)
    boxes, scores, points, counts = det.detect_tensor(torch.from_numpy(np.stack([scene] * 2)))
    assert boxes.shape == (2, 3, 4) and points.shape == (2, 3, 5, 2)
    assert counts.tolist() == [3, 3]
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_greedy_nms_matches_the_numpy_one():
    from gimefive.detector import nms

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 60, (1, 40, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (1, 40, 2)).astype(np.float32)], 2)
    kept = greedy_nms_batched(torch.from_numpy(boxes), torch.ones(1, 40, dtype=torch.bool), 0.3)
    expected = nms(boxes[0], np.linspace(1, 0, 40, dtype=np.float32), 0.3)
    assert np.flatnonzero(kept[0].numpy()).tolist() == expected.tolist()


def test_resize_matches_opencv_area_exactly():
    img = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (300, 500, 3), np.uint8),
                           (0, 0), 1.0)
    for size in ((150, 250), (192, 320)):
        ref = cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)
        got = resize_like_opencv(torch.from_numpy(img).permute(2, 0, 1)[None].float(), *size,
                                 area=True)
        assert np.array_equal(got[0].permute(1, 2, 0).numpy().astype(np.uint8), ref)


def test_bad_device_and_unknown_op_are_named():
    with pytest.raises(GimefiveError, match="detector device"):
        TorchFaceDetector(device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(GimefiveError, match="CUDA is not available"):
            TorchFaceDetector(device="cuda")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(GimefiveError, match="Erf"):
        OnnxNet(helper.make_model(graph).SerializeToString())


def test_half_precision_network_finds_the_same_face(tdet, astronaut_bgr):
    """The fp16 path (default on CUDA) runs on CPU tensors too: same face, boxes within 1 px."""
    (full,) = tdet.detect([astronaut_bgr])
    (half,) = TorchFaceDetector(half=True).detect([astronaut_bgr])
    assert_same(full, half, box_px=1.0, point_px=1.0, score=0.01)
