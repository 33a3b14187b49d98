"""Wire format: round trips over real sockets, and malformed messages named and dropped."""

import json
import stat

import numpy as np
import pytest
import zmq
from gimefive.pipeline.messages import (
    DetectionsMsg,
    EndOfStream,
    FrameMsg,
    TrackedMsg,
    TrackIdsMsg,
    WireError,
    decode,
)
from gimefive.pipeline.transport import (
    Receiver,
    Sender,
    ipc_endpoint,
    is_loopback_or_ipc,
    open_socket,
    private_ipc_dir,
)

from gimefive.errors import GimefiveError

RNG = np.random.default_rng(0)
FRAME = dict(stream="cam-1", index=7, pts=3584, time_base=[1, 12800], rate=[25, 1],
             t_decoded=123.5, extra={"dropped": 2})


def image(h=24, w=40):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def faces(k=2):
    boxes = np.array([[1, 2, 11, 14], [20, 3, 30, 15]], np.float32)[:k]
    return dict(boxes=boxes, scores=np.linspace(0.9, 0.8, k, dtype=np.float32),
                landmarks=RNG.random((k, 5, 2), dtype=np.float32) * 10)


def classified(k=2, cam=True):
    probs = RNG.random((k, 6), dtype=np.float32)
    return dict(**faces(k), probs=probs / probs.sum(1, keepdims=True),
                cam=RNG.random((k, 4, 4), dtype=np.float32) if cam else None,
                crops=RNG.random((k, 4), dtype=np.float32), cam_layer="conv5",
                uncertain_threshold=0.4)


def all_messages():
    return [
        FrameMsg(**FRAME, image=image()),
        DetectionsMsg(**FRAME, image=image(), detected=False, **faces()),
        DetectionsMsg(**FRAME, image=image(), **faces(0)),
        TrackIdsMsg(**FRAME, image=image(), **faces(), track_ids=np.array([4, 9])),
        TrackedMsg(**FRAME, image=image(), **classified(), track_ids=np.array([4, 9]),
                   smoothed=np.full((2, 6), 1 / 6, np.float32), labels=np.array([0, 5]),
                   uncertain=np.array([True, False])),
        TrackedMsg(**FRAME, image=image(), **classified(1, cam=False), track_ids=np.array([3]),
                   smoothed=np.full((1, 6), 1 / 6, np.float32), labels=np.array([2]),
                   uncertain=np.array([False]), measured=np.array([False]),
                   result_age=np.array([4]), cam_from=np.array([-1])),
        EndOfStream(stream="cam-1", frames=8, reason="eof"),
    ]


def same(a, b):
    assert type(a) is type(b)
    for name in a.FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    for name in a.ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def pair():
    ctx = zmq.Context()
    with private_ipc_dir() as directory:
        endpoint = ipc_endpoint(directory, "hop")
        pull = open_socket(ctx, zmq.PULL, endpoint, bind=True, hwm=4)
        push = open_socket(ctx, zmq.PUSH, endpoint, bind=False, hwm=4)
        yield Sender(push), Receiver(pull), push
        push.close(0)
        pull.close(0)
    ctx.term()


def test_every_message_type_round_trips_over_ipc(pair):
    sender, receiver, _ = pair
    sent = all_messages()
    for msg in sent:
        sender.send(msg)
    for msg in sent:
        same(msg, receiver.recv(timeout_ms=5000))
    assert receiver.recv(timeout_ms=10) is None  # a timeout, not a hang
    assert receiver.malformed == 0


def test_received_arrays_are_zero_copy_views(pair):
    sender, receiver, _ = pair
    sender.send(FrameMsg(**FRAME, image=image(360, 640)))
    got = receiver.recv(timeout_ms=5000)
    assert not got.image.flags.owndata  # a view on the ZeroMQ frame, not a copy
    assert got.pts_seconds == pytest.approx(3584 / 12800)


def good_parts():
    return [bytes(p) for p in DetectionsMsg(**FRAME, image=image(), **faces()).encode()]


def edit_header(change):
    parts = good_parts()
    header = json.loads(parts[0])
    change(header)
    return [json.dumps(header).encode(), *parts[1:]]


def with_image(shape):
    """A detections message whose image has ``shape`` (and the bytes that shape needs)."""
    parts = edit_header(lambda h: h["arrays"][0].update(shape=shape))
    parts[1] = bytes(int(np.prod(shape)))
    return parts


MALFORMED = {
    "not json": ([b"\x80\x04pickle", b""], "header is not JSON"),
    "schema": (edit_header(lambda h: h.update(schema=2)), "schema version expected 1, got 2"),
    "kind": (edit_header(lambda h: h.update(kind="video")), "unknown message kind 'video'"),
    "missing field": (edit_header(lambda h: h["fields"].pop("pts")),
                      "fields expected .*got"),
    "stream id path": (edit_header(lambda h: h["fields"].update(stream="../../etc/x")),
                       "stream id '../../etc/x': use 1 to 64 letters"),
    "stream id empty": (edit_header(lambda h: h["fields"].update(stream="")),
                        "stream id '': use 1 to 64 letters"),
    "field type": (edit_header(lambda h: h["fields"].update(index="7")),
                   "field 'index' expected integer, got str"),
    "time base": (edit_header(lambda h: h["fields"].update(time_base=[1, 0])),
                  "'time_base' expected \\[numerator, denominator>0\\]"),
    "dtype": (edit_header(lambda h: h["arrays"][1].update(dtype="float64")),
              "float64\\[2, 4\\] needs 64 bytes, got 32"),
    "dtype not allowed": (edit_header(lambda h: h["arrays"][1].update(dtype="object")),
                          "dtype 'object' not allowed"),
    "K disagrees": (edit_header(lambda h: h["arrays"][2].update(shape=[1]) or None),
                    "needs 4 bytes, got 8"),
    "count": (good_parts()[:-1], "lists 4 arrays but 3 buffers arrived"),
    "eos reason": ([json.dumps({"schema": 1, "kind": "eos", "arrays": [], "fields": {
        "stream": "0", "frames": 1, "reason": "crash", "message": ""}}).encode()],
        "'reason' expected one of"),
    "eos frames": ([json.dumps({"schema": 1, "kind": "eos", "arrays": [], "fields": {
        "stream": "0", "frames": -1, "reason": "eof", "message": ""}}).encode()],
        "'frames' expected >= 0"),
    "0x0 image": (with_image([0, 0, 3]), r"image expected at least 1x1 pixels, got 0x0"),
    "0-wide image": (with_image([24, 0, 3]), r"image expected at least 1x1 pixels, got 0x24"),
    "pts 2**100": (edit_header(lambda h: h["fields"].update(pts=2**100)),
                   "field 'pts' expected a 64-bit integer, got 1267650600228229401496703205376"),
    "index 2**64": (edit_header(lambda h: h["fields"].update(index=2**64)),
                    "field 'index' expected a 64-bit integer"),
    "NaN time": (edit_header(lambda h: h["fields"].update(t_decoded=float("nan"))),
                 "field 't_decoded' expected a finite number, got nan"),
    "inf time": (edit_header(lambda h: h["fields"].update(t_decoded=float("-inf"))),
                 "field 't_decoded' expected a finite number, got -inf"),
    "huge time base": (edit_header(lambda h: h["fields"].update(time_base=[1, 2**40])),
                       "'time_base' expected"),
    "zero rate": (edit_header(lambda h: h["fields"].update(rate=[0, 1])), "'rate' expected"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_name_expected_and_actual(case):
    parts, pattern = MALFORMED[case]
    with pytest.raises(WireError, match=pattern):
        decode(parts)


def test_shape_symbols_must_agree_across_arrays():
    with pytest.raises(WireError, match=r"'scores' expected shape \(K=2\), got \(3,\)"):
        DetectionsMsg(**FRAME, image=image(), **(faces() | {"scores": np.zeros(3, np.float32)}))
    with pytest.raises(WireError, match="array 'boxes' expected dtype float32, got float64"):
        DetectionsMsg(**FRAME, image=image(), **(faces() | {"boxes": np.zeros((2, 4))}))


def test_a_stage_receiver_counts_and_drops_malformed_messages(pair):
    sender, receiver, push = pair
    receiver.expect = (DetectionsMsg,)
    for parts, _ in MALFORMED.values():
        push.send_multipart(parts)
    push.send_multipart([bytes(p) for p in FrameMsg(**FRAME, image=image()).encode()])
    good = DetectionsMsg(**FRAME, image=image(), **faces())
    sender.send(good)
    same(good, receiver.recv(timeout_ms=5000))
    assert receiver.malformed == len(MALFORMED) + 1  # + the frame this hop does not take
    assert "unexpected frame message" in receiver.last_error


def test_an_empty_image_is_refused_where_messages_are_built():
    with pytest.raises(WireError, match="at least 1x1 pixels, got 0x0"):
        FrameMsg(**FRAME, image=np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(WireError, match="finite number"):
        FrameMsg(**(FRAME | {"t_decoded": float("inf")}), image=image())


def eos(stream="cam-1", frames=2):
    return EndOfStream(stream=stream, frames=frames)


def test_forged_end_of_stream_is_counted_and_dropped(pair):
    """In a run with a fixed number of streams an end-of-stream ends stages, so it must
    agree with what this stage received of its stream; anything else is forged."""
    sender, receiver, _ = pair
    receiver.streams = 1
    frame = FrameMsg(**FRAME, image=image())
    forged = [eos(frames=5),                  # claims frames that never arrived
              eos(stream="intruder", frames=0)]  # a second stream in a one-stream run
    for msg in [frame, frame, *forged, eos(), eos(), frame]:  # then: repeated, late frame
        sender.send(msg)
    got = [receiver.recv(timeout_ms=5000) for _ in range(3)]
    assert [m.KIND for m in got] == ["frame", "frame", "eos"] and got[2].frames == 2
    assert receiver.recv(timeout_ms=300) is None
    assert receiver.malformed == 4
    assert "after its end-of-stream" in receiver.last_error


@pytest.mark.parametrize("msgs, error", [
    ([eos(frames=5)], "end-of-stream of stream 'cam-1' claims 5 frames, 0 arrived"),
    ([eos(stream="a", frames=0), eos(stream="b", frames=0)],
     "stream 'b' is not one of this run's 1 stream(s)"),
    ([eos(frames=0), eos(frames=0)], "stream 'cam-1' already ended"),
])
def test_forged_end_of_stream_errors_name_the_inconsistency(pair, msgs, error):
    sender, receiver, _ = pair
    receiver.streams = 1
    for msg in msgs:
        sender.send(msg)
    for _ in msgs[:-1]:
        assert isinstance(receiver.recv(timeout_ms=5000), EndOfStream)
    assert receiver.recv(timeout_ms=300) is None
    assert receiver.malformed == 1 and error in receiver.last_error


def test_live_runs_do_not_judge_end_of_stream(pair):
    """streams=0 (a live run, until stopped): an end-of-stream ends nothing, and a restarted
    camera source legitimately repeats one; they all pass."""
    sender, receiver, _ = pair
    for msg in (eos(frames=0), eos(frames=0), eos(frames=9)):
        sender.send(msg)
    assert all(isinstance(receiver.recv(timeout_ms=5000), EndOfStream) for _ in range(3))
    assert receiver.malformed == 0


def test_abstract_ipc_is_not_private():
    """``ipc://@name`` lives in the abstract namespace: no file, no permissions, any local
    user can connect; it is treated like a non-loopback address."""
    assert not is_loopback_or_ipc("ipc://@gimefive-test")
    assert is_loopback_or_ipc("ipc:///tmp/x/y.sock")
    ctx = zmq.Context()
    try:
        for bind in (True, False):
            with pytest.raises(GimefiveError, match="refusing to (bind|connect) "
                                                    "ipc://@gimefive-test without encryption"):
                open_socket(ctx, zmq.PULL, "ipc://@gimefive-test", bind=bind)
        open_socket(ctx, zmq.PULL, "ipc://@gimefive-test", bind=True, insecure=True).close(0)
    finally:
        ctx.term()


def test_private_ipc_dir_is_0700_and_removed():
    with private_ipc_dir() as directory:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert ipc_endpoint(directory, "x").startswith("ipc://")
    assert not directory.exists()


def test_stage_with_unusable_output_endpoint_fails_without_hanging():
    """The output socket's connection monitor must be closed when the connect fails,
    or the context's term() waits for ever (it did, before the fix)."""
    import threading

    from gimefive.pipeline.config import AnnotateConfig
    from gimefive.pipeline.stage import StageRunner
    from gimefive.pipeline.stages.track import TrackStage

    errors: list[str] = []

    def build() -> None:
        with private_ipc_dir() as d:
            try:
                StageRunner(TrackStage(AnnotateConfig()), f"ipc://{d}/in.sock",
                            "tcp://no such host:1", insecure=True)
            except GimefiveError as exc:
                errors.append(str(exc))

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "StageRunner hung on a failed connect"
    assert errors and errors[0].startswith("cannot connect tcp://no such host:1")
