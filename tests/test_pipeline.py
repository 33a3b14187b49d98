"""End to end: `gimefive annotate` on a short clip of the astronaut's face (runs anywhere)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.run import annotate_video
from procs import child_processes, running
from waiting import wait_until

from gimefive.checkpoint import save_weights
from gimefive.detector import box_iou
from gimefive.model import GiMeFive

ASTRONAUT_FACE = np.array((180, 60, 272, 175), np.float32)  # in the 512x512 photo
W, H, N, SCALE = 320, 240, 20, 0.45
TIME_BASE = Fraction(1, 12800)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random-init GiMeFive: these tests check the plumbing, not the accuracy."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    return save_weights(path, GiMeFive().eval(), {"uncertain_threshold": 0.3})


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut_bgr):
    """20 frames (25 fps, time base 1/12800, a B-frame codec) plus an AAC audio track;
    the astronaut moves right 4 px a frame. Returns path and the face box per frame."""
    path = tmp_path_factory.mktemp("clip") / "astronaut.mp4"
    photo = cv2.resize(astronaut_bgr, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)
    boxes = []
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for i in range(N):
            frame = np.full((H, W, 3), 70, np.uint8)
            x, y = 10 + 4 * i, 5
            frame[y:y + photo.shape[0], x:x + photo.shape[1]] = photo
            boxes.append(ASTRONAUT_FACE * SCALE + [x, y, x, y])
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = i * 512, TIME_BASE
            for packet in video.encode(vf):
                out.mux(packet)
        for t in range(0, int(N / 25 * 44100), 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 44100, t
            for packet in audio.encode(af):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)
    return path, np.array(boxes, np.float32)


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(v)]
        return {"times": times, "size": (v.codec_context.width, v.codec_context.height),
                "rate": v.average_rate, "kinds": sorted(s.type for s in c.streams)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_annotate_astronaut_end_to_end(tmp_path, clip, weights):
    path, truth = clip
    out, jsonl, npz = tmp_path / "out.mp4", tmp_path / "faces.jsonl", tmp_path / "cams.npz"
    config = load_annotate_config(None, weights=str(weights), backend="torch")
    result = annotate_video(path, out, json_path=jsonl, cam_npz=npz, config=config,
                            progress=False)

    src, dst = video_facts(path), video_facts(out)
    assert len(dst["times"]) == len(src["times"]) == N  # every frame exactly once
    np.testing.assert_allclose(dst["times"], src["times"], atol=1e-6)  # same timestamps
    assert dst["size"] == src["size"] and dst["rate"] == src["rate"]
    assert dst["kinds"] == ["audio", "video"]  # audio copied through

    lines = read_jsonl(jsonl)
    assert [r["frame"] for r in lines] == list(range(N))
    np.testing.assert_allclose([r["pts"] for r in lines], src["times"], atol=1e-6)
    for record, box in zip(lines, truth, strict=True):
        (face,) = record["faces"]  # exactly the one face, in the right place
        assert box_iou(np.array([face["box"]]), box[None])[0, 0] > 0.5, (record["frame"], face)
        assert face["track_id"] == 1
        assert sum(face["probs"]) == pytest.approx(1, abs=1e-3)
        assert face["label"] in ("happiness", "surprise", "sadness", "anger", "disgust", "fear")
        assert isinstance(face["uncertain"], bool) and len(face["landmarks"]) == 5
        x1, y1, x2, y2 = box
        peak = face["cam"]["peak"]
        assert face["cam"]["shape"] == [4, 4] and x1 - 30 < peak[0] < x2 + 30, face["cam"]
        assert y1 - 30 < peak[1] < y2 + 30

    # the face is classified (and its map computed) on some frames, carried on the others;
    # the .npz has each computed map once, on the frame the JSON says it is from
    computed = sorted({r["faces"][0]["cam"]["frame"] for r in lines})
    assert computed[0] == 0 and len(computed) < N
    assert all(r["faces"][0]["measured"] == (r["faces"][0]["result_age"] == 0) for r in lines)
    cams = np.load(npz)
    assert cams["cam"].shape == (len(computed), 4, 4) and cams["frame"].tolist() == computed
    assert result.frames == N and result.faces == N
    assert set(result.stages) == {"source", "detect", "classify", "track", "annotate"}
    assert all(st["cpu_s"] > 0 and st["malformed"] == 0 for st in result.stages.values())
    assert result.stages["source"]["counters"]["shared_frames"] == N  # by reference
    assert 0 < result.parallel_efficiency <= 1.5
    assert (tmp_path / "out.mp4.config.yaml").is_file()


@pytest.mark.integration
def test_frames_inside_the_messages_give_the_same_json_as_shared_ones(tmp_path, clip,
                                                                       weights):
    lines = {}
    for shared in (True, False):
        # one frame a detector batch: a ring of 17 slots for 20 frames, so the source
        # has to wait for the annotate stage's releases
        config = load_annotate_config(None, weights=str(weights), backend="torch",
                                      shared_frames=shared, detect_batch=1)
        jsonl = tmp_path / f"{shared}.jsonl"
        result = annotate_video(clip[0], None, json_path=jsonl, config=config,
                                progress=False)
        assert result.stages["source"]["counters"].get("shared_frames", 0) == N * shared
        lines[shared] = jsonl.read_text()
    assert lines[True] == lines[False] and len(lines[True].splitlines()) == N


def gimefive(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from gimefive.cli import main; main()",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.mark.integration
def test_stage_error_fails_the_run_with_one_line(tmp_path, clip):
    bad = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, bad)
    proc = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "o.mp4"), "--weights",
                    str(bad), "--backend", "torch", "-q")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3
    (line,) = err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"gimefive: error: stage classify failed: {bad}: not GiMeFive "
                           f"weights"), line


@pytest.mark.integration
def test_a_killed_stage_fails_the_run_and_sockets_are_removed(tmp_path, clip, weights):
    proc = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "o.mp4"), "--weights",
                    str(weights), "--backend", "torch", "-q")
    pid, cmd = wait_until(
        lambda: next(((p, " ".join(argv)) for p, argv in child_processes(proc.pid).items()
                      if "stage_main detect" in " ".join(argv)), None),
        60, "the detect stage to start")
    ipc_dir = Path(cmd.split("--in ipc://", 1)[1].split()[0]).parent
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert err.strip().splitlines() == [
        "gimefive: error: stage detect failed: killed by signal SIGKILL"], err
    assert not ipc_dir.exists()


@pytest.mark.integration
def test_bad_flags_and_paths_are_one_line(tmp_path, clip):
    proc = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "o.mp4"), "--detect-every",
                    "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--detect-every" in err and "must be >= 1" in err
    proc = gimefive("annotate", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and err.strip().splitlines() == [
        f"gimefive: error: input not found: {tmp_path / 'missing.mp4'}"]
    proc = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "no" / "o.mp4"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "output folder does not exist" in err


@pytest.mark.slow
def test_sigkill_of_annotate_takes_its_stages_along_and_next_run_cleans_up(tmp_path, clip,
                                                                           weights):
    args = ["--weights", str(weights), "--backend", "torch", "-q"]
    proc = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "o.mp4"), *args)
    stages = wait_until(lambda: {p: argv for p, argv in child_processes(proc.pid).items()
                                 if "gimefive.pipeline.stage_main" in argv},
                        60, "the five stages to run", until=lambda found: len(found) >= 5)
    assert len(stages) == 5, f"not five stages: {stages}"
    detect = next(" ".join(a) for a in stages.values() if "detect" in a)
    ipc_dir = Path(detect.split("--in ipc://", 1)[1].split()[0]).parent
    shm_dir = Path(detect.split("--frames-dir ", 1)[1].split()[0])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_until(lambda: {p: " ".join(stages[p])[:80] for p in stages if running(p)}, 60,
                   "the stages to end with their killed parent", 0.1, until=lambda left: not left)
    finally:
        for pid in stages:  # on failure, do not leave orphans (no longer our descendants)
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert ipc_dir.is_dir() and shm_dir.is_dir()  # SIGKILL: nothing could remove them ...
    again = gimefive("annotate", str(clip[0]), "-o", str(tmp_path / "o2.mp4"), *args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert not ipc_dir.exists() and not shm_dir.exists()  # ... the next run did


def test_source_gives_up_waiting_at_the_gate(tmp_path, clip, monkeypatch):
    from gimefive.pipeline import stage as stage_module
    from gimefive.pipeline.run import run_stage

    from gimefive.errors import StageError

    monkeypatch.setattr(stage_module, "GATE_TIMEOUT_S", 0.5)
    config = load_annotate_config()
    with pytest.raises(StageError) as info:  # nobody opens the gate
        run_stage("source", str(clip[0]), f"ipc://{tmp_path}/detect.sock", config,
                  gate=f"ipc://{tmp_path}/gate.sock")
    assert str(info.value) == ("stage source: no start signal from the supervisor within "
                               "0.5 s (is it still running?)")
