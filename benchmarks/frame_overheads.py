"""What a frame costs on its way through a live run, apart from the models (issue 13).

``python benchmarks/frame_overheads.py [--clip CLIP] [--rounds 3] [--json OUT]``

* ``wire``: each message type of the pipeline's hops built (validated), encoded and
  decoded (validated again), 5 faces on a 640x360 frame; microseconds, best of rounds.
* ``encode``: the live segments' x264 settings (``ultrafast``, CRF 20, zero-latency,
  keyframe every second) on ``--clip``'s frames (or a generated 640x360 scene), one
  encoder thread against FFmpeg's own choice (x264: 1.5 threads a core), interleaved; CPU
  ms a frame, all threads (``annotate_cost.encode``, as its ``live_encode`` part).
* ``detector_input``: RetinaFace's input made from the first frame at its own size (no
  resize; 640x360 for the bench's reference clip), NumPy's way (``astype``, subtract,
  transposed copy) against OpenCV's ``blobFromImages``; and whether the two are equal.
* ``hop``: a stage that only passes frames on: frame messages of the first frame sent
  through a relay process (decoded, validated, encoded again) at 75 a second (3 cameras
  at 25 fps), ZeroMQ PUSH/PULL over ``ipc://`` with a high-water mark of 1 as in a live
  run; the relay's CPU a message (receive + send, with the kernel's copies) and the
  sender's (a source's), with the frame inside the messages (``inline``) and in shared
  memory (``shared``, ``pipeline/shared_frames.py``; the last process releases it).

CPU time (``time.process_time``). Not a test: the numbers depend on the machine and its
load; run it on a quiet one, or compare the ways only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from annotate_cost import encode, read_frames  # this folder: the same encoder measurement
from gimefive.pipeline.encoder import video_frame

FACES = 5
HOP_MESSAGES = 600
HOP_RATE = 75.0


def sample_frames(clip: str | None, count: int = 150) -> list[np.ndarray]:
    if clip:
        return read_frames(clip, count)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (360, 640, 3), np.uint8), (31, 31), 0)
    return [np.roll(base, 4 * i, axis=1) for i in range(count)]


def wire_messages():
    from gimefive.pipeline.messages import DetectionsMsg, FrameMsg, TrackedMsg, TrackIdsMsg

    image = np.zeros((360, 640, 3), np.uint8)
    frame = dict(stream="cam0", index=10, pts=1000, time_base=[1, 25000], rate=[25, 1],
                 extra={"degrade": 3, "live": {"decoded": 11, "dropped": 0, "queue": 2}},
                 image=image)
    faces = dict(detected=True, boxes=np.zeros((FACES, 4), np.float32),
                 scores=np.zeros(FACES, np.float32),
                 landmarks=np.zeros((FACES, 5, 2), np.float32))
    ids = dict(track_ids=np.arange(FACES, dtype=np.int64))
    tracked = dict(probs=np.zeros((FACES, 6), np.float32),
                   cam=np.zeros((FACES, 4, 4), np.float32),
                   crops=np.zeros((FACES, 4), np.float32),
                   smoothed=np.zeros((FACES, 6), np.float32),
                   labels=np.zeros(FACES, np.int64), uncertain=np.zeros(FACES, bool))
    return [(FrameMsg, frame), (DetectionsMsg, frame | faces),
            (TrackIdsMsg, frame | faces | ids), (TrackedMsg, frame | faces | ids | tracked)]


def best_us(fn, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return round(best, 1)


def bench_wire(rounds: int) -> dict:
    from gimefive.pipeline.messages import decode

    out = {}
    for cls, fields in wire_messages():
        msg = cls(**fields)
        parts = [bytes(p) for p in msg.encode()]
        out[cls.KIND] = {"build_us": best_us(lambda c=cls, f=fields: c(**f), 2000, rounds),
                         "encode_us": best_us(msg.encode, 2000, rounds),
                         "decode_us": best_us(lambda p=parts: decode(p), 2000, rounds)}
    out["all_hops_us"] = round(sum(sum(v.values()) for v in out.values()), 1)
    return out


def bench_encode(frames: list[np.ndarray], rounds: int) -> dict:
    runs: dict[str, list[float]] = {"one_thread": [], "ffmpeg_choice": []}
    for _ in range(rounds):
        for name, threads in (("one_thread", 1), ("ffmpeg_choice", None)):
            runs[name].append(encode(frames, video_frame, "ultrafast", live=True,
                                     threads=threads)[0])
    return {k: round(float(np.median(v)), 2) for k, v in runs.items()}


def bench_detector_input(frames: list[np.ndarray], rounds: int) -> dict:
    from gimefive.detector import BGR_MEAN

    batch = frames[:1]
    mean = tuple(float(v) for v in BGR_MEAN)

    def numpy_way():
        b = np.stack(batch).astype(np.float32)
        b -= BGR_MEAN
        return np.ascontiguousarray(b.transpose(0, 3, 1, 2))

    def opencv_way():
        return cv2.dnn.blobFromImages(batch, 1.0, None, mean, False, False)

    return {"numpy_ms": round(best_us(numpy_way, 100, rounds) / 1000, 2),
            "opencv_ms": round(best_us(opencv_way, 100, rounds) / 1000, 2),
            "equal": bool(np.array_equal(numpy_way(), opencv_way()))}


def _frames(shared: str | None):
    from gimefive.pipeline.shared_frames import SharedFrames

    return SharedFrames(shared) if shared else None


def _relay(folder: str, shared: str | None, result) -> None:
    """A stage that only passes frames on: receive and validate a frame message, send it
    on (its image by reference when ``shared``)."""
    import zmq
    from gimefive.pipeline.messages import decode

    ctx, frames = zmq.Context(), _frames(shared)
    inbox, outbox = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        inbox.setsockopt(zmq.RCVHWM, 1)
        outbox.setsockopt(zmq.SNDHWM, 1)
        inbox.bind(f"ipc://{folder}/in")
        outbox.bind(f"ipc://{folder}/out")
        start = None
        for i in range(HOP_MESSAGES):
            if not inbox.poll(10_000):
                result.put(None)  # the sender stopped: say so instead of a bare timeout
                return
            msg = decode(inbox.recv_multipart(copy=False), frames=frames)
            if i == 10:  # past connecting and the first allocations
                start = time.process_time()
            outbox.send_multipart(msg.encode(), copy=False)
        result.put((time.process_time() - start) / (HOP_MESSAGES - 10) * 1000)
    finally:
        inbox.close(0)
        outbox.close(1000)
        ctx.term()


def _drain(folder: str, shared: str | None) -> None:
    """The last stage: receives each frame and releases it."""
    import zmq
    from gimefive.pipeline.messages import decode

    ctx, frames = zmq.Context(), _frames(shared)
    sock = ctx.socket(zmq.PULL)
    try:
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.connect(f"ipc://{folder}/out")
        for _ in range(HOP_MESSAGES):
            if not sock.poll(10_000):
                return
            msg = decode(sock.recv_multipart(copy=False), frames=frames)
            if frames is not None:
                frames.release(msg.image)
    finally:
        sock.close(0)
        ctx.term()


def bench_hop(frame: np.ndarray, shared: bool) -> dict:
    """One relay hop at 75 frame messages a second; ``shared``: frames in shared memory
    (``pipeline/shared_frames.py``, 6 slots as a camera's ring), else inside the messages."""
    import zmq
    from gimefive.pipeline.messages import FrameMsg
    from gimefive.pipeline.shared_frames import LIVE_SLOTS, FrameRing, frames_dir

    with tempfile.TemporaryDirectory(prefix="gimefive-hop-") as folder, \
            frames_dir(shared) as ring_dir:
        result = mp.Queue()
        args = str(ring_dir) if ring_dir else None
        relay = mp.Process(target=_relay, args=(folder, args, result))
        drain = mp.Process(target=_drain, args=(folder, args))
        relay.start()
        drain.start()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        ring = FrameRing(ring_dir, "hop-1", LIVE_SLOTS, frame.nbytes) if ring_dir else None
        try:
            sock.setsockopt(zmq.SNDHWM, 1)
            sock.connect(f"ipc://{folder}/in")
            t0, cpu = time.perf_counter(), 0.0
            for n in range(HOP_MESSAGES):
                start = time.process_time()
                image = frame
                if ring is not None:
                    if not ring.wait(10):
                        raise RuntimeError("hop: no slot came free for 10 s")
                    image = ring.put(frame)
                msg = FrameMsg(stream="hop", index=n, pts=n, time_base=[1, 25], image=image)
                sock.send_multipart(msg.encode(), copy=False)
                cpu += time.process_time() - start if n >= 10 else 0.0
                wait = t0 + (n + 1) / HOP_RATE - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # pacing the camera's frames, not waiting for a peer
            ms = result.get(timeout=60)
            if ms is None:
                raise RuntimeError("hop: the relay got no message for 10 s")
        finally:
            sock.close(1000)
            ctx.term()
            relay.join(30)
            drain.join(30)
            if ring is not None:
                ring.close()
    return {"messages_per_s": HOP_RATE, "frame_bytes": int(frame.nbytes),
            "relay_cpu_ms_per_message": round(ms, 3),
            "source_cpu_ms_per_message": round(cpu / (HOP_MESSAGES - 10) * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", help="a video whose first 150 frames are used")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    frames = sample_frames(args.clip)
    results = {"wire": bench_wire(args.rounds), "encode": bench_encode(frames, args.rounds),
               "detector_input": bench_detector_input(frames, args.rounds),
               "hop": {"inline": bench_hop(frames[0], shared=False),
                       "shared": bench_hop(frames[0], shared=True)}}
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
