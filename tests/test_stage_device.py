"""The ``device`` setting: which detector the detect stage builds and where the classify
stage crops. This machine has no GPU: ``cpu`` and ``auto`` must keep onnxruntime and
OpenCV; the torch path is forced onto CPU tensors (``devices.torch_device`` answering
"cpu") and must give the default path's results within the parity tolerances of
tests/test_torch_detector.py (boxes IoU >= 0.95) and tests/test_torch_crops.py (network
input max abs 0.05); ``cuda`` without CUDA is one clear line.
"""

from __future__ import annotations

import numpy as np
import pytest
from gimefive.pipeline import devices
from gimefive.pipeline.bench.scenes import face_ladder
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.messages import EndOfStream, FrameMsg, TrackIdsMsg
from gimefive.pipeline.stages.classify import ClassifyStage
from gimefive.pipeline.stages.detect import DetectStage
from gimefive.pipeline.summary import AnnotateResult, format_summary

from gimefive.detector import FaceDetector, box_iou
from gimefive.errors import GimefiveError
from gimefive.torch_detector import TorchFaceDetector


def run_stage(stage, messages):
    out = []
    for m in messages:
        out += list(stage.process(m))
    out += list(stage.end_stream(EndOfStream(stream="s", frames=len(messages))))
    return out[:-1]


@pytest.fixture(scope="module")
def frames(astronaut_bgr):
    """The astronaut, mirrored, and a generated scene of six faces (20..120 px)."""
    images = [astronaut_bgr, np.ascontiguousarray(astronaut_bgr[:, ::-1]), face_ladder()]
    return [FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25], image=img)
            for i, img in enumerate(images)]


def detect(frames, **config):
    stage = DetectStage(AnnotateConfig(detect_batch=2, **config))
    stage.setup()
    return stage, run_stage(stage, frames)


def classify(detections, weights):
    """The stage's outputs and the network inputs it built (the engine is wrapped)."""
    # one engine worker: with two, the CAM and no-CAM batches are recorded in whichever
    # order their threads run, and the two paths' inputs would not line up row by row
    stage = ClassifyStage(AnnotateConfig(backend="torch", weights=str(weights), cam_every=2,
                                         classify_workers=1))
    stage.setup()
    engine, inputs = stage.backend, []

    def recording(batch, cam=True):
        inputs.append(batch.copy())
        return engine(batch, cam=cam)

    stage.backend = recording
    # every face a new track (ids unique per frame): each is classified, with Grad-CAM
    tracked = [TrackIdsMsg(**d.detection_fields(), track_ids=100 * d.index + np.arange(
        len(d.boxes), dtype=np.int64)) for d in detections]
    out = run_stage(stage, tracked)
    stage.backend = engine
    info = stage.info()
    stage.close()
    return out, np.concatenate(inputs), info


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_and_auto_without_cuda_keep_onnxruntime_and_opencv(device, monkeypatch):
    monkeypatch.setattr(devices, "_cuda_available", lambda: False)
    stage = DetectStage(AnnotateConfig(device=device))
    stage.setup()
    assert type(stage.detector) is FaceDetector
    assert stage.info() == {"detector": "onnxruntime cpu"}
    assert devices.torch_device(device) is None


def test_auto_and_cuda_pick_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_available", lambda: True)
    assert devices.torch_device("auto") == devices.torch_device("cuda") == "cuda"
    assert devices.torch_device("cpu") is None


def test_cuda_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_available", lambda: False)
    for stage in (DetectStage(AnnotateConfig(device="cuda")),
                  ClassifyStage(AnnotateConfig(device="cuda"))):
        with pytest.raises(GimefiveError) as err:
            stage.setup()
        assert str(err.value) == ("device=cuda: CUDA is not available to torch (use "
                                  "device: cpu or auto)")


def test_this_machine_has_no_cuda_so_auto_is_the_cpu_path():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    assert devices._cuda_available() is False
    assert devices.torch_device("auto") is None


def test_torch_path_gives_the_default_paths_results(frames, weights, monkeypatch):
    default_stage, default = detect(frames)
    ref_out, ref_inputs, ref_info = classify(default, weights)
    # the tensor path on CPU tensors: what ``cuda`` runs, minus the GPU
    monkeypatch.setattr(devices, "torch_device", lambda device: "cpu")
    torch_stage, found = detect(frames)
    assert isinstance(torch_stage.detector, TorchFaceDetector)
    assert torch_stage.info() == {"detector": "torch cpu fp32"}
    assert [len(d.boxes) for d in found] == [len(d.boxes) for d in default] == [1, 1, 6]
    for ref, got in zip(default, found, strict=True):
        assert np.diag(box_iou(ref.boxes, got.boxes)).min() >= 0.95
    # same detections into both classify paths: the crops alone are compared
    out, inputs, info = classify(default, weights)
    assert (ref_info["crops"], info["crops"]) == ("opencv cpu", "torch cpu")
    assert inputs.shape == ref_inputs.shape == (8, 3, 64, 64)
    assert np.abs(inputs - ref_inputs).max() < 0.05
    for ref, got in zip(ref_out, out, strict=True):
        assert np.array_equal(ref.probs.argmax(1), got.probs.argmax(1))
        assert np.abs(ref.probs - got.probs).max() < 0.05
        assert ref.measured.all() and got.measured.all()
        assert (ref.cam_from == ref.index).all() and (got.cam_from == got.index).all()
        assert ref.cam.shape == got.cam.shape == (len(ref.boxes), 4, 4)


def test_summary_says_which_detector_and_crops_ran():
    result = AnnotateResult(frames=1, faces=0, wall_s=1, processing_s=1, fps=1, cores=1,
                            parallel_efficiency=1,
                            info={"detect": {"detector": "torch cuda fp16"},
                                  "classify": {"backend": "torch", "crops": "torch cuda"}})
    assert "detector: torch cuda fp16; crops: torch cuda" in format_summary(result).splitlines()


@pytest.mark.slow
def test_annotate_with_device_cuda_unavailable_is_one_line(tmp_path, astronaut_bgr):
    import subprocess
    import sys

    from clips import write_still_clip

    if devices._cuda_available():
        pytest.skip("a GPU is present here")
    clip = write_still_clip(tmp_path / "clip.mp4", astronaut_bgr, (96, 64), 3)
    config = tmp_path / "cuda.yaml"
    config.write_text("device: cuda\n")
    run = subprocess.run([sys.executable, "-c", "from gimefive.cli import main; main()",
                          "annotate", str(clip), "-o", str(tmp_path / "out.mp4"),
                          "--config", str(config), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("gimefive: error: stage ")
    assert (" failed: device=cuda: CUDA is not available to torch (use device: cpu or auto)"
            in lines[0])
