"""Wire format: round trips over real sockets, and malformed messages named and dropped."""

import json
import stat

import numpy as np
import pytest
import zmq
from gimefive.pipeline.wire import (
    ClassifiedMsg,
    DetectionsMsg,
    EndOfStream,
    FrameMsg,
    Receiver,
    Sender,
    TrackedMsg,
    WireError,
    decode,
    ipc_endpoint,
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
        ClassifiedMsg(**FRAME, image=image(), **classified()),
        ClassifiedMsg(**FRAME, image=image(), **classified(1, cam=False)),
        TrackedMsg(**FRAME, image=image(), **classified(), track_ids=np.array([4, 9]),
                   smoothed=np.full((2, 6), 1 / 6, np.float32), labels=np.array([0, 5]),
                   uncertain=np.array([True, False])),
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


MALFORMED = {
    "not json": ([b"\x80\x04pickle", b""], "header is not JSON"),
    "schema": (edit_header(lambda h: h.update(schema=2)), "schema version expected 1, got 2"),
    "kind": (edit_header(lambda h: h.update(kind="video")), "unknown message kind 'video'"),
    "missing field": (edit_header(lambda h: h["fields"].pop("pts")),
                      "fields expected .*got"),
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
                StageRunner(TrackStage(AnnotateConfig(streams=1)), f"ipc://{d}/in.sock",
                            "tcp://no such host:1")
            except GimefiveError as exc:
                errors.append(str(exc))

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "StageRunner hung on a failed connect"
    assert errors and errors[0].startswith("cannot connect tcp://no such host:1")
