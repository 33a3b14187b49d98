"""End to end on a synthetic scene of real faces (RAF-DB test crops) at known positions.

Skipped where ../shared/data is absent. Six faces per frame, 60..114 px, moving; 480
distinct faces over 160 frames (960 face instances: at 240, one face was 0.4 points and
the gap to the crops moved by a point between scenes). Checks detection recall, that the
output keeps every frame and timestamp, and (with the shipped weights) that accuracy
through the pipeline is within 3 points of the same model on the dataset's crops.
Rendering the scene (resizing each crop, H.264) costs part of that, measured here by
cutting the true boxes out of the decoded frames; the pipeline is also held to those
true boxes with a paired sign test at two standard deviations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.run import annotate_video
from gimefive.pipeline.tracking import match_boxes

from gimefive.checkpoint import DEFAULT_WEIGHTS, save_weights
from gimefive.model import GiMeFive

N_FACES, FACES_PER_FRAME, N_FRAMES = 480, 6, 160


@pytest.fixture(scope="module")
def scene(fer_data, tmp_path_factory):
    from gimefive.pipeline.bench.scenes import load_dataset_faces, make_scene_video

    faces = load_dataset_faces(N_FACES, "rafdb_test", root=fer_data, seed=1)
    path = tmp_path_factory.mktemp("scene") / "scene.mp4"
    truth = make_scene_video(path, faces, 640, 360, n_frames=N_FRAMES, fps=25, seed=0,
                             faces_per_frame=FACES_PER_FRAME)
    return path, truth, faces


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """$GIMEFIVE_TEST_WEIGHTS, else the shipped weights where present (accuracy is then
    meaningful), else random ones (the accuracy test is skipped)."""
    chosen = os.environ.get("GIMEFIVE_TEST_WEIGHTS")
    if chosen:
        return Path(chosen), True
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, True
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    return save_weights(path, GiMeFive().eval()), False


@pytest.fixture(scope="module")
def annotated(scene, weights, tmp_path_factory):
    path, truth, _ = scene
    out = tmp_path_factory.mktemp("out")
    config = load_annotate_config(None, weights=str(weights[0]), backend="auto")
    result = annotate_video(path, out / "scene_annotated.mp4", json_path=out / "faces.jsonl",
                            config=config, progress=False)
    records = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    return result, records, out / "scene_annotated.mp4"


def matches(truth, records):
    """Per ground-truth face instance: (face id, label, predicted label or None)."""
    rows = []
    for frame, record in zip(truth["frames"], records, strict=True):
        gt = np.array(frame["boxes"], np.float32)
        found = np.array([f["box"] for f in record["faces"]], np.float32).reshape(-1, 4)
        pairs = dict(match_boxes(gt, found, 0.5))
        for g, (face_id, label) in enumerate(zip(frame["ids"], frame["labels"], strict=True)):
            k = pairs.get(g)
            pred = None if k is None else int(np.argmax(record["faces"][k]["probs"]))
            rows.append((face_id, label, pred))
    return rows


def test_every_frame_and_timestamp_kept(scene, annotated):
    path, truth, _ = scene
    result, records, video = annotated
    with av.open(str(video)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert len(times) == len(records) == N_FRAMES == result.frames
    np.testing.assert_allclose(times, [f["time_s"] for f in truth["frames"]], atol=1e-6)
    np.testing.assert_allclose([r["pts"] for r in records], times, atol=1e-6)


def test_detection_recall_at_iou_half(scene, annotated):
    _, truth, _ = scene
    rows = matches(truth, annotated[1])
    recall = np.mean([pred is not None for *_, pred in rows])
    assert len(rows) == N_FRAMES * FACES_PER_FRAME
    print(f"detection recall at IoU 0.5: {recall:.3f} of {len(rows)} face instances")
    assert recall >= 0.95, f"recall {recall:.3f}"


def test_accuracy_matches_the_crops(scene, annotated, weights):
    if not weights[1]:
        pytest.skip(f"shipped weights not found at {DEFAULT_WEIGHTS} (nor "
                    f"$GIMEFIVE_TEST_WEIGHTS): accuracy of random weights says nothing")
    from gimefive.backends import create_backend
    from gimefive.preprocess import preprocess_faces

    path, truth, faces = scene
    index = {f["id"]: f["source_index"] for f in truth["faces"]}
    every = matches(truth, annotated[1])
    rows = [r for r in every if r[2] is not None]
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    exact = []  # each detected face cut at its true box from the decoded frame
    for image, frame in zip(decoded, truth["frames"], strict=True):
        for (x1, y1, x2, y2), face_id in zip(frame["boxes"], frame["ids"], strict=True):
            exact.append((face_id, image[y1:y2, x1:x2]))
    found = {(i, k) for k, (i, _, p) in enumerate(every) if p is not None}
    with create_backend("auto", weights=str(weights[0])) as backend:
        crop_pred = backend(preprocess_faces([f[0] for f in faces]), cam=False)[0].argmax(1)
        exact_pred = backend(preprocess_faces([e[1] for k, e in enumerate(exact)
                                               if (e[0], k) in found]), cam=False)[0].argmax(1)
    labels = np.array([label for _, label, _ in rows])
    pipeline = float(np.mean([pred == label for _, label, pred in rows]))
    crops = float(np.mean([crop_pred[index[i]] == label for i, label, _ in rows]))
    rendered = float(np.mean(exact_pred == labels))
    print(f"accuracy through the pipeline {pipeline:.3f}; same model on the dataset crops "
          f"{crops:.3f}, on the true boxes cut from the decoded video {rendered:.3f} "
          f"({len(rows)} detected face instances, weights {weights[0]})")
    # Detection, cropping and batching against perfect boxes on the same frames, as a
    # paired sign test: of the faces only one of the two gets right, the pipeline may lose
    # no more than two standard deviations of chance (sqrt(discordant)) plus one face.
    pipe_ok = np.array([pred == label for _, label, pred in rows])
    exact_ok = exact_pred == labels
    lost, won = int(np.sum(exact_ok & ~pipe_ok)), int(np.sum(pipe_ok & ~exact_ok))
    print(f"faces right only at the true box: {lost}; right only through the pipeline: {won}")
    assert lost - won <= 2 * np.sqrt(lost + won) + 1, (lost, won, pipeline, rendered)
    # The criterion: within 3 points of the same faces as the dataset's crops.
    assert crops - pipeline <= 0.03, (pipeline, crops, rendered)
