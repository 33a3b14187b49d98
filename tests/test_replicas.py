"""Stage replicas (issue 13, item 7): detect and classify as N processes for one stream.

Fast tier: the reorder buffer (out of order in, in order out; gaps at the end; bounded),
splitting a frame's faces between replicas and joining them back, the ledger of N ends
per stream, a sender to two replicas and the receiver after them over real sockets (no
process), the setting, the stage arguments, the summary. Slow: a clip annotated with one
process per stage and with 2 detect + 2 classify replicas gives the same JSON lines and
the same video; a live monitor run with replicas starts and writes frames in order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import zmq
from gimefive.pipeline.cli import stage_command
from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
from gimefive.pipeline.messages import (
    DetectionsMsg,
    EndOfStream,
    FrameMsg,
    TrackIdsMsg,
    WireError,
)
from gimefive.pipeline.reorder import (
    InOrder,
    ReplicaLedger,
    ReplicaReceiver,
    join_parts,
)
from gimefive.pipeline.replicas import (
    FACES_KEY,
    FanOut,
    auto_replicas,
    input_endpoints,
    replica_args,
    replica_counts,
    split_faces,
)
from gimefive.pipeline.summary import _stage_entry
from gimefive.pipeline.transport import Receiver, Sender
from waiting import wait_until

from gimefive.backends import BACKENDS, Backend
from gimefive.backends.base import BACKEND_MODULES
from gimefive.errors import GimefiveError


def frame(index: int, seq: int | None = None, value: int = 90, stream: str = "s") -> FrameMsg:
    return FrameMsg(stream=stream, index=index, pts=index, time_base=[1, 25], seq=seq,
                    image=np.full((96, 128, 3), value, np.uint8))


def with_tracks(msg: FrameMsg, ids: list[int], shift: float = 0.0) -> TrackIdsMsg:
    """Faces side by side, one per track id (x from the id, moved by ``shift``)."""
    k = len(ids)
    x = np.array([4 + 11 * (t % 9) + shift for t in ids], np.float32)
    boxes = np.stack([x, np.full(k, 20), x + 24, np.full(k, 50)], 1).astype(np.float32)
    marks = np.stack([np.stack([x + 7, np.full(k, 30)], 1)] * 5, 1).astype(np.float32)
    return TrackIdsMsg(**msg.frame_fields(), boxes=boxes.reshape(k, 4),
                       scores=np.linspace(0.9, 0.99, k).astype(np.float32),
                       landmarks=marks.reshape(k, 5, 2), track_ids=np.array(ids, np.int64))


# ------------------------------------------------------------------------- reorder buffer
def test_out_of_order_frames_come_out_in_order():
    order = InOrder(limit=8)
    arrivals = [2, 0, 3, 1, 5, 4, 6]
    out = [m.seq for seq in arrivals for m in order.add(frame(seq + 10, seq))]
    assert out == list(range(7))
    assert order.most_held == 2  # 2 waited for 0 and 1; 3 for 1
    assert order.released["s"] == 7 and order.end("s") == []


def test_order_is_kept_per_stream_and_indices_may_jump():
    order = InOrder(limit=8)
    out = []
    # a live source dropped frames and a restart jumped ahead: indices have gaps, seq not
    for index, seq, stream in [(7, 1, "a"), (0, 0, "b"), (1000, 2, "a"), (3, 0, "a")]:
        out += [(m.stream, m.index) for m in order.add(frame(index, seq, stream=stream))]
    assert out == [("b", 0), ("a", 3), ("a", 7), ("a", 1000)]


def test_gaps_at_the_end_of_a_stream_release_the_rest_in_order():
    order = InOrder(limit=8)
    assert order.add(frame(0, 0)) != []
    assert order.add(frame(3, 3)) == [] and order.add(frame(2, 2)) == []
    assert [m.seq for m in order.end("s")] == [2, 3]  # 1 never came
    assert order.released.pop("s") == 3
    assert [m.seq for m in order.add(frame(0, 0))] == [0]  # the stream may start again


def test_a_file_run_refuses_a_repeat_and_fails_past_the_bound():
    order = InOrder(limit=3)
    order.add(frame(0, 0))
    with pytest.raises(WireError, match="place 0 arrived twice"):
        order.add(frame(0, 0))
    for seq in (2, 3, 4):
        assert order.add(frame(seq, seq)) == []
    with pytest.raises(GimefiveError, match=r"4 frames wait for frame #1 from a replica "
                                            r"\(at most 3\)"):
        order.add(frame(5, 5))


def test_a_live_run_gives_up_a_lost_frame_and_drops_it_late():
    order = InOrder(limit=3, live=True)
    order.add(frame(0, 0))
    assert [order.add(frame(s, s)) for s in (2, 3, 4)] == [[], [], []]
    assert [m.seq for m in order.add(frame(5, 5))] == [2, 3, 4, 5]  # 1 is given up
    assert order.skipped == 1 and order.most_held == 4
    assert order.add(frame(1, 1)) == [] and order.late == 1  # too late: never out of order


def test_a_live_sender_that_starts_again_starts_the_stream_again():
    order = InOrder(limit=8, live=True)
    for seq in (0, 1, 3):
        order.add(frame(seq, seq))
    out = order.add(frame(2000, 0))  # a restarted stage numbers from 0 again
    assert [m.index for m in out] == [3, 2000] and order.restarts == 1
    for seq in range(1, 40):
        order.add(frame(2000 + seq, seq))
    assert order.add(frame(5001, 1)) == []  # again, its place 1 first (from replica 1)
    assert [m.index for m in order.add(frame(5000, 0))] == [5000, 5001]
    assert order.restarts == 2 and order.late == 0


# ------------------------------------------------------------------------- faces shared
def test_faces_split_by_track_and_joined_back_in_their_order():
    msg = with_tracks(frame(4, 9), [5, 2, 7, 4])
    for n in (2, 3, 5):  # n = 5: some parts without faces
        parts = split_faces(msg, n)
        assert [p.track_ids.tolist() for p in parts] == [
            [t for t in (5, 2, 7, 4) if t % n == i] for i in range(n)]
        assert all(p.seq == 9 and p.image is msg.image for p in parts)
        joined = join_parts(parts[::-1])  # in any order they come
        for name in ("boxes", "scores", "landmarks", "track_ids"):
            np.testing.assert_array_equal(getattr(joined, name), getattr(msg, name))
        assert FACES_KEY not in joined.extra and (joined.index, joined.seq) == (4, 9)


def test_parts_that_do_not_fit_are_malformed():
    parts = split_faces(with_tracks(frame(4, 9), [1, 2]), 2)
    with pytest.raises(WireError, match="do not add up to one frame"):
        join_parts([parts[0], parts[0]])
    with pytest.raises(WireError, match="does not fit the others"):
        join_parts([parts[0], split_faces(with_tracks(frame(5, 10), [1, 2]), 2)[1]])


def test_classify_needs_track_ids_to_share_faces():
    detections = DetectionsMsg(**frame(0).frame_fields(), boxes=np.zeros((0, 4), np.float32),
                               scores=np.zeros(0, np.float32),
                               landmarks=np.zeros((0, 5, 2), np.float32))
    with pytest.raises(GimefiveError, match="the track stage must run before classify"):
        split_faces(detections, 2)


class Brightness(Backend):
    """Deterministic engine: class and Grad-CAM from each crop's brightness."""

    name = "replicas-test"

    def __init__(self, weights=None, cam_layer="conv5", threads=None) -> None:
        pass

    def infer(self, batch, cam=True):
        level = batch.mean(axis=(1, 2, 3))
        probs = np.full((len(batch), 6), 0.05, np.float32)
        probs[np.arange(len(batch)), np.clip(((level + 2) * 1.5).astype(int), 0, 5)] = 0.75
        maps = np.repeat(np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4),
                         len(batch), 0) * level[:, None, None]
        return probs, (maps if cam else None)


def test_classify_replicas_sharing_tracks_give_what_one_gives(monkeypatch):
    """The per-track schedule, smoothing and labels of two replicas, each with its tracks'
    faces on every frame, joined: the same messages as one classify stage."""
    from gimefive.pipeline.stages.classify import ClassifyStage

    monkeypatch.setitem(BACKENDS, Brightness.name, Brightness)
    monkeypatch.setitem(BACKEND_MODULES, Brightness.name, __name__)
    coarse = np.random.default_rng(3).integers(0, 255, (3, 4, 3), np.uint8)
    image = cv2.resize(coarse, (128, 96), interpolation=cv2.INTER_CUBIC)  # smooth: faces
    frames = []  # look alike from frame to frame, and differ from each other
    for i in range(40):  # tracks come and go; boxes move (re-measured when far enough)
        ids = [t for t in (1, 2, 3, 4, 6) if (i + 3 * t) % 17 < 12]
        frames.append(with_tracks(FrameMsg(**frame(i, i).frame_fields() | {"image": image}),
                                  ids, shift=(i % 7) * 2.0))

    def run(stage, messages):
        stage.setup()
        try:
            out = [m for msg in messages for m in stage.process(msg)]
            return out + list(stage.end_stream(EndOfStream(stream="s", frames=len(messages))))
        finally:
            stage.close()

    config = AnnotateConfig(backend=Brightness.name, classify_max_batch=3, cam_every=2)
    one = run(ClassifyStage(config), frames)
    shares = [run(ClassifyStage(config), [split_faces(m, 2)[i] for m in frames])
              for i in range(2)]
    joined = [join_parts([a, b]) for a, b in zip(shares[0][:-1], shares[1][:-1], strict=True)]
    assert len(joined) == len(one) - 1 == 40
    assert any(not m.measured.all() for m in joined)  # the schedule carried results
    for a, b in zip(one[:-1], joined, strict=True):
        for name in a.ARRAYS:
            if name != "image":
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)


# ------------------------------------------------------------------------- ends, ledger
def test_the_ledger_takes_one_end_per_replica_claiming_what_arrived():
    ledger = ReplicaLedger(streams=1, senders=2)
    for _ in range(5):
        ledger.check(frame(0))
    ledger.check(EndOfStream(stream="s", frames=2))
    with pytest.raises(WireError, match="claims 6 frames from 2 of 2 replicas, 5 arrived"):
        ledger.check(EndOfStream(stream="s", frames=4))
    ledger.check(EndOfStream(stream="s", frames=3))
    with pytest.raises(WireError, match="already ended"):
        ledger.check(frame(0))


# ------------------------------------------------------------------------- over sockets
@pytest.fixture
def ctx():
    context = zmq.Context()
    sockets: list[zmq.Socket] = []

    def socket(kind: int, endpoint: str, bind: bool) -> zmq.Socket:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        (sock.bind if bind else sock.connect)(endpoint)
        sockets.append(sock)
        return sock

    yield socket
    for sock in sockets:
        sock.close(0)
    context.term()


def drain(sock: zmq.Socket, until_eos: bool = True) -> list:
    receiver, out = Receiver(sock), []
    while True:
        msg = receiver.recv(5000)
        assert msg is not None, f"nothing more after {len(out)} messages"
        out.append(msg)
        if isinstance(msg, EndOfStream) and until_eos:
            return out


@pytest.mark.parametrize("split", ["frames", "tracks"])
def test_two_replicas_over_sockets_come_back_in_order_and_end_once(ctx, split):
    """A sender to two replicas, each replica's output sent on in the worst order (all of
    replica 1's first), then the receiver after them: every frame once, in order, one
    end claiming them all."""
    ins = [ctx(zmq.PULL, f"inproc://replica-{i}", True) for i in range(2)]
    fan = FanOut([Sender(ctx(zmq.PUSH, f"inproc://replica-{i}", False)) for i in range(2)],
                 split)
    n = 9
    for i in range(n):
        msg = frame(100 + i)  # no seq yet: the sender to replicas numbers the stream
        fan.send(with_tracks(msg, [1, 2, 3][: i % 4]) if split == "tracks" else msg)
    fan.send(EndOfStream(stream="s", frames=n))
    got = [drain(sock) for sock in ins]
    if split == "frames":  # in turn, each replica its own end with its share
        assert [[m.seq for m in g[:-1]] for g in got] == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
        assert [g[-1].frames for g in got] == [5, 4]
    else:  # every frame to each, with its tracks' faces
        assert [[m.track_ids.tolist() for m in g[:4]] for g in got] == [
            [[], [], [2], [2]], [[], [1], [1], [1, 3]]]
        assert [g[-1].frames for g in got] == [n, n]
    into = ctx(zmq.PULL, "inproc://after", True)
    receiver = ReplicaReceiver(into, (TrackIdsMsg, FrameMsg, EndOfStream), 1, 2, split, {})
    out = ctx(zmq.PUSH, "inproc://after", False)
    for msg in got[1] + got[0]:
        out.send_multipart(msg.encode())
    back = [receiver.recv(5000) for _ in range(n + 1)]
    assert [m.index for m in back[:-1]] == [100 + i for i in range(n)]
    assert isinstance(back[-1], EndOfStream) and back[-1].frames == n
    assert receiver.malformed == 0 and receiver.recv(50) is None
    assert receiver.counters["reorder_held_max"] >= 1
    if split == "tracks":
        assert [m.track_ids.tolist() for m in back[:4]] == [[], [1], [1, 2], [1, 2, 3]]


def test_a_stream_that_ends_short_counts_the_lost_frames(ctx):
    into = ctx(zmq.PULL, "inproc://short", True)
    counters: dict = {}
    receiver = ReplicaReceiver(into, (FrameMsg, EndOfStream), 1, 2, "frames", counters)
    receiver.ledger = ReplicaLedger(0, 2)  # as if the ledger let a lost frame through
    out = ctx(zmq.PUSH, "inproc://short", False)
    for msg in [frame(0, 0), frame(2, 2), EndOfStream(stream="s", frames=2),
                EndOfStream(stream="s", frames=1)]:
        out.send_multipart(msg.encode())
    back = [receiver.recv(5000) for _ in range(3)]
    assert [m.seq for m in back[:2]] == [0, 2]
    assert back[2].frames == 2 and counters["replica_frames_lost"] == 1


# ------------------------------------------------------------------------- the setting
@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 8)])
def test_auto_follows_the_cores(cores, expected):
    assert auto_replicas("cpu", cores) == expected
    assert replica_counts(AnnotateConfig(device="cpu"), cores) == {
        "source": 1, "detect": expected, "track": 1, "classify": expected, "annotate": 1}


def test_auto_is_one_on_a_gpu_and_an_explicit_count_is_kept():
    assert auto_replicas("cuda", 16) == 1
    config = AnnotateConfig(device="cpu", detect_replicas=3, classify_replicas=2)
    assert replica_counts(config, 2) == {"source": 1, "detect": 3, "track": 1,
                                             "classify": 2, "annotate": 1}


def test_detect_every_above_one_keeps_one_detect():
    assert replica_counts(AnnotateConfig(device="cpu", detect_every=2), 16)["detect"] == 1
    with pytest.raises(GimefiveError, match="detect_replicas 2 needs detect_every 1"):
        replica_counts(AnnotateConfig(device="cpu", detect_every=2, detect_replicas=2))


def test_stage_arguments_wire_the_replicas(tmp_path):
    counts = {"source": 1, "detect": 2, "track": 1, "classify": 3, "annotate": 1}
    ends = input_endpoints(tmp_path, counts)
    assert ends["detect"] == f"ipc://{tmp_path}/detect-0.sock,ipc://{tmp_path}/detect-1.sock"
    base = ["--in", ends["detect"], "--out", ends["track"]]
    assert replica_args("detect", 1, counts, base) == [
        "--in", f"ipc://{tmp_path}/detect-1.sock", "--out", ends["track"], "--replica", "1"]
    assert replica_args("track", 0, counts, ["--in", "x"])[-2:] == ["--upstream", "2"]
    assert replica_args("annotate", 0, counts, ["--in", "y"])[-2:] == ["--upstream", "3"]
    params = stage_command.make_context("stage", ["classify", *replica_args(
        "classify", 2, counts, ["--in", ends["classify"], "--out", ends["annotate"]])]).params
    assert (params["replica"], params["in_"]) == (2, f"ipc://{tmp_path}/classify-2.sock")


def test_the_summary_adds_replicas_up():
    def stats(frames, cpu, busy):
        return {"frames_in": frames, "frames_out": frames, "cpu_s": cpu, "busy_s": busy,
                "blocked_s": 0.5, "malformed": 0, "max_rss_mb": 100.0,
                "timers": {"detector": cpu}, "counters": {"faces": frames}}

    detect, cpu = _stage_entry("detect", [stats(30, 3.0, 1.0), stats(20, 2.0, 1.0)])
    assert (detect["frames"], detect["replicas"], detect["busy_fps"]) == (50, 2, 50.0)
    assert detect["cpu_ms_per_frame"] == 100.0 and cpu == pytest.approx(0.1)
    assert detect["counters"] == {"faces": 50} and detect["max_rss_mb"] == 200.0
    classify, _ = _stage_entry("classify", [stats(50, 1.0, 1.0), stats(50, 1.0, 2.0)])
    assert (classify["frames"], classify["busy_fps"]) == (50, 25.0)  # the slower one


# ------------------------------------------------------------------------- end to end
ASTRONAUT_FACE = (180, 60, 272, 175)  # in the 512x512 photo
W, H, N = 320, 160, 24


@pytest.fixture(scope="module")
def two_faces_clip(tmp_path_factory, astronaut_bgr) -> Path:
    """24 frames: one face moving right, a second one from frame 6 on, none at frame 20."""
    x1, y1, x2, y2 = ASTRONAUT_FACE
    face = cv2.resize(astronaut_bgr[y1 - 30:y2 + 20, x1 - 25:x2 + 25], (70, 90))
    path = tmp_path_factory.mktemp("clip") / "two_faces.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            image = np.full((H, W, 3), 60, np.uint8)
            if i != 20:
                image[30:120, 10 + 3 * i:80 + 3 * i] = face
                if i >= 6:
                    image[40:130, 230:300] = face
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def decoded(path: Path) -> tuple[list[float], list[np.ndarray]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [float(f.pts * f.time_base) for f in frames], [f.to_ndarray() for f in frames]


@pytest.mark.slow
def test_replicas_annotate_exactly_what_one_process_per_stage_does(tmp_path, weights,
                                                                   two_faces_clip):
    """One process per stage, then 2 detect + 2 classify replicas: the same JSON lines,
    the same number of frames in the same order, the same video."""
    runs = {}
    for replicas in (1, 2):
        out, jsonl = tmp_path / f"out{replicas}.mp4", tmp_path / f"faces{replicas}.jsonl"
        config = load_annotate_config(None, weights=str(weights), backend="torch",
                                      device="cpu", detect_replicas=replicas,
                                      classify_replicas=replicas)
        result = annotate_video_quietly(two_faces_clip, out, jsonl, config)
        runs[replicas] = (result, jsonl.read_text().splitlines(), decoded(out))
    (one, lines1, (times1, video1)), (two, lines2, (times2, video2)) = runs[1], runs[2]
    assert len(lines1) == len(lines2) == N and len(video2) == N
    records = [json.loads(line) for line in lines2]
    assert [r["frame"] for r in records] == list(range(N))  # in order, nothing lost
    assert {len(r["faces"]) for r in records} == {0, 1, 2}
    assert {f["track_id"] for r in records for f in r["faces"]} == {1, 2}  # both replicas
    assert lines2 == lines1  # byte for byte: replicas change nothing of the results
    assert times2 == times1 and all(b > a for a, b in zip(times2, times2[1:], strict=False))
    assert all(np.array_equal(a, b) for a, b in zip(video1, video2, strict=True))
    assert "replicas" not in one.stages["detect"]
    for name in ("detect", "classify"):
        assert two.stages[name]["replicas"] == 2 and two.stages[name]["frames"] == N
    counters = two.stages["track"]["counters"] | two.stages["annotate"]["counters"]
    assert "replica_frames_lost" not in counters and counters["reorder_held_max"] >= 1
    assert sum(st["malformed"] for st in two.stages.values()) == 0


def annotate_video_quietly(path: Path, out: Path, jsonl: Path, config: AnnotateConfig):
    from gimefive.pipeline.run import annotate_video

    return annotate_video(path, out, json_path=jsonl, config=config, progress=False,
                          save_resolved_config=False)


@pytest.mark.slow
def test_a_live_monitor_runs_with_replicas(tmp_path, weights, two_faces_clip):
    """A file played as a camera through 2 detect + 2 classify replicas: the stages start
    and frames are written, in order, each once, with both faces."""
    jsonl = tmp_path / "live.jsonl"
    monitor = subprocess.Popen(
        [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor",
         f"cam={two_faces_clip}", "--json", str(jsonl), "--weights", str(weights),
         "--backend", "torch", "--detect-replicas", "2", "--classify-replicas", "2",
         "--status-every", "1", "--log-dir", str(tmp_path / "logs"), "-q"],
        stderr=subprocess.PIPE, text=True)

    def records() -> list[dict]:
        lines = jsonl.read_text().splitlines() if jsonl.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    try:
        wait_until(lambda: len(records()) >= 30, 240, "30 JSON records", 0.5,
                   alive=lambda: monitor.poll() is None)
    finally:
        monitor.send_signal(signal.SIGINT)  # Ctrl-C finalises what is written
        _, err = monitor.communicate(timeout=60)
    assert monitor.returncode == 0, err[-2000:]
    frames = [r["frame"] for r in records()]
    assert frames == sorted(set(frames))  # in order, each once (a live source drops some)
    assert {f["track_id"] for r in records() for f in r["faces"]} >= {1, 2}
    final = json.loads((tmp_path / "live.status.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "final"
    assert {"detect", "detect#1", "classify", "classify#1"} <= set(final["stages"])
    assert final["streams"]["cam"]["written"] == len(frames)
