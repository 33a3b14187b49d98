"""Hostile input on the wire: random multipart messages never crash a stage's receiver.

Hypothesis throws random and half-valid multipart messages at :func:`pipeline.messages.decode`
as each stage's receiver sees them (its ``accepts`` types plus end-of-stream), then through
real PUSH/PULL sockets into a :class:`Receiver` and into a running stage (track), checking
that every bad message is counted and dropped, every good one delivered, nothing raised.
Also: ZeroMQ binds only loopback/ipc unless CurveZMQ keys or ``insecure`` are given, ipc
directories are private (0700), and nothing in the code base unpickles.
"""

from __future__ import annotations

import json
import re
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from gimefive.pipeline import messages, transport
from gimefive.pipeline.messages import (
    DetectionsMsg,
    EndOfStream,
    FrameMsg,
    TrackedMsg,
    TrackIdsMsg,
    WireError,
    decode,
)
from gimefive.pipeline.transport import CurveKeys, Receiver, open_socket, private_ipc_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gimefive.errors import GimefiveError

REPO = Path(__file__).resolve().parent.parent


def stage_inputs() -> dict[str, tuple]:
    """What each stage with an input accepts (plus end-of-stream, as the runner adds)."""
    from gimefive.pipeline.stages import STAGES, stage_class

    found = {name: stage_class(name).accepts for name in STAGES}  # live runs included
    return {n: (*a, EndOfStream) for n, a in found.items() if a is not None}


STAGE_INPUTS = stage_inputs()


def frame_fields() -> dict:
    return dict(stream="cam0", index=3, pts=1200, time_base=[1, 90000], rate=[25, 1],
                image=np.zeros((8, 10, 3), np.uint8))


def valid_messages() -> list:
    k = 2
    det = dict(boxes=np.ones((k, 4), np.float32), scores=np.ones(k, np.float32),
               landmarks=np.ones((k, 5, 2), np.float32))
    frame = FrameMsg(**frame_fields())
    detections = DetectionsMsg(**frame_fields(), **det)
    ids = TrackIdsMsg(**frame_fields(), **det, track_ids=np.arange(k, dtype=np.int64))
    tracked = TrackedMsg(**ids.track_fields(), probs=np.full((k, 6), 1 / 6, np.float32),
                         cam=np.zeros((k, 4, 4), np.float32), crops=np.ones((k, 4), np.float32),
                         smoothed=np.full((k, 6), 1 / 6, np.float32),
                         labels=np.zeros(k, np.int64), uncertain=np.zeros(k, bool))
    return [frame, detections, ids, tracked, EndOfStream(stream="cam0", frames=4)]


def parts_of(msg) -> list[bytes]:
    return [bytes(p) for p in msg.encode()]


# ------------------------------------------------------------------------ strategies
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@st.composite
def mutated_valid(draw):
    """A valid message with one part of its header or one buffer changed."""
    msg = draw(st.sampled_from(valid_messages()))
    parts = parts_of(msg)
    header = json.loads(parts[0])
    how = draw(st.sampled_from(["field", "drop_field", "schema", "kind", "dtype", "shape",
                                "buffer", "extra_part", "drop_part", "array_name"]))
    if how == "field" and header["fields"]:
        key = draw(st.sampled_from(sorted(header["fields"])))
        header["fields"][key] = draw(json_values)
    elif how == "drop_field" and header["fields"]:
        header["fields"].pop(draw(st.sampled_from(sorted(header["fields"]))))
    elif how == "schema":
        header["schema"] = draw(json_values)
    elif how == "kind":
        header["kind"] = draw(st.one_of(json_values, st.sampled_from(list(messages.MESSAGE_TYPES))))
    elif how in ("dtype", "shape", "array_name") and header["arrays"]:
        i = draw(st.integers(0, len(header["arrays"]) - 1))
        key = {"dtype": "dtype", "shape": "shape", "array_name": "name"}[how]
        header["arrays"][i][key] = draw(st.one_of(
            json_values, st.sampled_from(["object", "float16", "U8", "O", "<f8", "uint8"]),
            st.lists(st.integers(-3, 2**31), max_size=5)))
    elif how == "buffer" and len(parts) > 1:
        i = draw(st.integers(1, len(parts) - 1))
        parts[i] = draw(st.binary(max_size=64))
    elif how == "extra_part":
        parts.append(draw(st.binary(max_size=32)))
    elif how == "drop_part" and len(parts) > 1:
        parts.pop(draw(st.integers(1, len(parts) - 1)))
    return [json.dumps(header).encode()] + parts[1:]


random_parts = st.lists(st.binary(max_size=200), min_size=0, max_size=6)
json_headers = st.builds(lambda h, rest: [json.dumps(h).encode()] + rest,
                         json_values, st.lists(st.binary(max_size=32), max_size=3))
any_message = st.one_of(random_parts, json_headers, mutated_valid())


def check_decode(parts: list[bytes], expect: tuple) -> bool:
    """True when decoded to an accepted type; False when rejected with WireError."""
    try:
        msg = decode(parts, expect)
    except WireError as exc:
        assert "\n" not in str(exc)
        return False
    assert isinstance(msg, expect)
    return True


@pytest.mark.parametrize("stage", sorted(STAGE_INPUTS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=any_message)
def test_stage_receiver_never_crashes(stage, parts):
    check_decode(parts, STAGE_INPUTS[stage])


def test_valid_messages_pass_where_expected():
    for name, expect in STAGE_INPUTS.items():
        accepted = {m.KIND for m in valid_messages() if check_decode(parts_of(m), expect)}
        assert accepted == {t.KIND for t in expect}, name


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(any_message, min_size=1, max_size=30))
def test_receiver_counts_every_bad_message(batch):
    """Through real sockets: good + malformed == sent, and no exception escapes."""
    expect = STAGE_INPUTS["track"]
    ctx = zmq.Context()
    try:
        with private_ipc_dir() as d:
            endpoint = f"ipc://{d}/fuzz.sock"
            pull = open_socket(ctx, zmq.PULL, endpoint, bind=True, hwm=1000)
            push = open_socket(ctx, zmq.PUSH, endpoint, bind=False, hwm=1000)
            receiver = Receiver(pull, expect)
            for parts in batch:
                if parts:  # ZeroMQ cannot send a message with no parts at all
                    push.send_multipart(parts)
            sent = sum(1 for p in batch if p)
            good = sum(check_decode(p, expect) for p in batch if p)
            delivered = 0
            while receiver.recv(timeout_ms=300) is not None:
                delivered += 1
            assert delivered == good
            assert receiver.malformed == sent - good
            push.close(0)
            pull.close(0)
    finally:
        ctx.term()


# ------------------------------------------------------------------------ hostile sizes
def track_input_with(change, buffers=None) -> list[bytes]:
    """A valid detections message (what track takes) with its header changed."""
    parts = parts_of(valid_messages()[1])
    header = json.loads(parts[0])
    change(header)
    return [json.dumps(header).encode(), *(parts[1:] if buffers is None else buffers)]


def _image_shape(shape):
    return lambda h: h["arrays"][0].update(shape=shape)


HOSTILE = {
    # OverflowError from numpy before the fix: the stage died
    "dimension 2**70": (track_input_with(_image_shape([2**70, 8, 3])),
                        r"dimension 1180591620717411303424 over the limit"),
    # RecursionError from the JSON parser before the fix
    "deep nesting": ([b'{"schema":1,"kind":"tracked","fields":' + b"[" * 30_000
                      + b"]" * 30_000 + b',"arrays":[]}'], "header nested deeper than"),
    "moderate nesting": ([b'{"schema":1,"kind":"tracked","fields":{"extra":' + b"[" * 900
                          + b"]" * 900 + b'},"arrays":[]}'], "header nested deeper than"),
    "unknown header key, deep": ([b'{"schema":1,"kind":"tracked","fields":{},"arrays":[],'
                                  b'"junk":' + b"[" * 40 + b"]" * 40 + b'}'],
                                 r"header has unknown key\(s\) \['junk'\]"),
    "huge header": ([json.dumps({"schema": 1, "pad": "x" * (2 << 20)}).encode()],
                    r"header is \d+ bytes, over the limit"),
    "many dimensions": (track_input_with(_image_shape([1] * 64)),
                        r"64 dimensions, over the limit"),
    "too many bytes": (track_input_with(_image_shape([60000, 60000, 3])),
                       r"10800000000 bytes, over the limit"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sizes_are_rejected_before_parsing_or_allocating(case):
    parts, pattern = HOSTILE[case]
    with pytest.raises(WireError, match=pattern):
        decode(parts, STAGE_INPUTS["track"])


def test_any_exception_from_a_message_is_a_wire_error(monkeypatch):
    """Whatever a hostile message provokes deeper down (MemoryError, UnicodeDecodeError...)
    is a malformed message, not a dead stage."""
    for exc in (MemoryError(), UnicodeDecodeError("utf-8", b"", 0, 1, "x"),
                RecursionError("deep"), OverflowError("big"), IndexError("i")):
        def boom(*args, exc=exc):
            raise exc
        monkeypatch.setattr(messages, "_parse_header", boom)
        with pytest.raises(WireError, match=type(exc).__name__):
            decode(parts_of(valid_messages()[2]))


def test_running_stage_counts_garbage_and_keeps_going():
    """A real track stage in this process: garbage in between valid frames is counted
    in its stats; the valid frames and the end-of-stream go through."""
    from gimefive.pipeline.config import AnnotateConfig
    from gimefive.pipeline.stage import StageRunner
    from gimefive.pipeline.stages.track import TrackStage

    detections = valid_messages()[1]
    garbage = [[b"not json"], [b'{"schema": 1}'], [b"{}", b"\x00" * 7],
               parts_of(valid_messages()[0]),  # a valid frame, but not what track takes
               [json.dumps({"schema": 99, "kind": "eos", "fields": {}, "arrays": []}).encode()],
               *(HOSTILE[case][0] for case in ("dimension 2**70", "deep nesting")),
               # a forged end-of-stream: claims frames that never arrived
               parts_of(EndOfStream(stream="cam0", frames=99))]
    ctx = zmq.Context()
    with private_ipc_dir() as d:
        in_ep, out_ep = f"ipc://{d}/in.sock", f"ipc://{d}/out.sock"
        received = []

        def next_stage():  # reads to the end-of-stream, then leaves, as a real stage does
            sink = open_socket(ctx, zmq.PULL, out_ep, bind=True, hwm=100)
            try:
                while sink.poll(10_000):
                    received.append(decode(sink.recv_multipart()))
                    if received[-1].KIND == "eos":
                        break
            finally:
                sink.close(0)

        reader = threading.Thread(target=next_stage)
        reader.start()
        config = AnnotateConfig()
        runner = StageRunner(TrackStage(config), in_ep, out_ep)
        push = open_socket(ctx, zmq.PUSH, in_ep, bind=False, hwm=100)

        def feed():
            for _ in range(3):
                for parts in garbage:
                    push.send_multipart(parts)
                push.send_multipart(detections.encode(), copy=False)
            push.send_multipart(EndOfStream(stream="cam0", frames=3).encode())

        feeder = threading.Thread(target=feed)
        feeder.start()
        started = time.monotonic()
        stats = runner.run()
        feeder.join(10)
        reader.join(10)
        push.close(0)
    ctx.term()
    # the stage waited for the next stage to leave, not for the 120 s drain timeout
    assert time.monotonic() - started < 60
    assert stats["malformed"] == 3 * len(garbage)
    assert stats["frames_in"] == 3 and stats["frames_out"] == 3
    assert [m.KIND for m in received] == ["track_ids"] * 3 + ["eos"]


# ------------------------------------------------------------------------ transport security
def key_dirs(root: Path) -> tuple[Path, Path, Path]:
    """Keys as an operator lays them out: the binding host's folder (server pair plus
    ``clients/`` with the allowed client public keys), an allowed connecting host's
    folder (its client pair plus the server's public key) and a stranger's (the same,
    but its client key was never added to ``clients/``). Written with
    ``zmq.auth.create_certificates`` and chmod 600, as a user may already have them."""
    import shutil

    import zmq.auth

    server, allowed, stranger = root / "b", root / "a", root / "c"
    for folder, name in ((server, "server"), (allowed, "client"), (stranger, "client")):
        folder.mkdir()
        _, secret = zmq.auth.create_certificates(str(folder), name)
        Path(secret).chmod(0o600)
    (server / "clients").mkdir()
    shutil.copy(allowed / "client.key", server / "clients" / "host-a.key")
    for folder in (allowed, stranger):
        shutil.copy(server / "server.key", folder / "server.key")
    return server, allowed, stranger


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # also closes what a failed test left open


def test_non_loopback_needs_curve_or_insecure_to_bind_and_to_connect(ctx, tmp_path):
    for bind, verb in ((True, "bind"), (False, "connect")):
        kind = zmq.PULL if bind else zmq.PUSH
        with pytest.raises(GimefiveError, match=f"refusing to {verb} tcp://192.0.2.1:5601 "
                                                f"without encryption"):
            open_socket(ctx, kind, "tcp://192.0.2.1:5601", bind=bind)
        open_socket(ctx, kind, "tcp://127.0.0.1:0" if bind else "tcp://127.0.0.1:9",
                    bind=bind).close(0)  # loopback: fine
    open_socket(ctx, zmq.PULL, "tcp://0.0.0.0:0", bind=True, insecure=True).close(0)
    open_socket(ctx, zmq.PUSH, "tcp://192.0.2.1:5601", bind=False, insecure=True).close(0)
    server, allowed, _ = key_dirs(tmp_path)
    open_socket(ctx, zmq.PULL, "tcp://0.0.0.0:0", bind=True,
                curve=CurveKeys.from_directory(server)).close(0)
    open_socket(ctx, zmq.PUSH, "tcp://192.0.2.1:5601", bind=False,
                curve=CurveKeys.from_directory(allowed)).close(0)


def test_plaintext_connect_to_another_host_is_refused_by_the_stage_command(tmp_path, capsys):
    from gimefive.cli import main

    with private_ipc_dir() as d, pytest.raises(SystemExit) as exit_info:
        main(["stage", "track", "--in", f"ipc://{d}/in.sock", "--out", "tcp://192.0.2.1:5601"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1
    assert "refusing to connect tcp://192.0.2.1:5601 without encryption" in err


def test_curve_admits_only_allowed_client_keys(ctx, tmp_path):
    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CurveZMQ support")
    server_dir, allowed_dir, stranger_dir = key_dirs(tmp_path)
    server = open_socket(ctx, zmq.PULL, "tcp://127.0.0.1:0", bind=True,
                         curve=CurveKeys.from_directory(server_dir))
    endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
    sockets = [server]
    try:
        plain = open_socket(ctx, zmq.PUSH, endpoint, bind=False)  # no keys at all
        stranger = open_socket(ctx, zmq.PUSH, endpoint, bind=False,
                               curve=CurveKeys.from_directory(stranger_dir))
        sockets += [plain, stranger]
        for sock in (plain, stranger):
            try:  # queued until the handshake, or refused at once once it has failed:
                sock.send_multipart(parts_of(valid_messages()[-1]), flags=zmq.NOBLOCK)
            except zmq.Again:  # either way nothing may reach the server
                pass
        assert not server.poll(1500)  # neither is heard: the stranger has the server key
        good = open_socket(ctx, zmq.PUSH, endpoint, bind=False,
                           curve=CurveKeys.from_directory(allowed_dir))
        sockets.append(good)
        good.send_multipart(parts_of(valid_messages()[-1]))
        assert server.poll(5000)
        assert isinstance(decode(server.recv_multipart()), EndOfStream)
        assert not server.poll(300)  # and still nothing from the other two
    finally:
        for sock in sockets:
            sock.close(0)


def test_curve_binding_needs_the_allowed_clients_folder(ctx, tmp_path):
    server_dir, allowed_dir, _ = key_dirs(tmp_path)
    (server_dir / "clients" / "host-a.key").unlink()
    with pytest.raises(GimefiveError, match="no allowed client keys"):
        open_socket(ctx, zmq.PULL, "tcp://127.0.0.1:0", bind=True,
                    curve=CurveKeys.from_directory(server_dir))
    (allowed_dir / "client.key_secret").unlink()
    with pytest.raises(GimefiveError, match="client key pair"):
        open_socket(ctx, zmq.PUSH, "tcp://127.0.0.1:9", bind=False,
                    curve=CurveKeys.from_directory(allowed_dir))


@pytest.mark.parametrize("name", ["server", "client"])
def test_secret_key_readable_by_others_is_refused(tmp_path, capsys, name):
    from gimefive.cli import main

    server, allowed, _ = key_dirs(tmp_path)
    folder = server if name == "server" else allowed
    (folder / f"{name}.key_secret").chmod(0o644)
    with pytest.raises(GimefiveError, match=f"{name}.key_secret is readable by group or "
                                            f"others \\(mode 0644\\); chmod 600 it"):
        CurveKeys.from_directory(folder)
    with private_ipc_dir() as d, pytest.raises(SystemExit) as exit_info:
        main(["stage", "track", "--in", f"ipc://{d}/in.sock", "--out", f"ipc://{d}/out.sock",
              "--curve-keys", str(folder)])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1 and "chmod 600" in err


def test_keys_command_writes_private_secret_keys(tmp_path, capsys):
    from gimefive.cli import main

    main(["keys", str(tmp_path / "b")])
    main(["keys", str(tmp_path / "a"), "--client"])
    for path in (tmp_path / "b" / "server.key_secret", tmp_path / "a" / "client.key_secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (tmp_path / "b" / "clients").is_dir()
    CurveKeys.from_directory(tmp_path / "b")
    with pytest.raises(SystemExit) as exit_info:  # never overwrites a key pair
        main(["keys", str(tmp_path / "b")])
    assert exit_info.value.code != 0 and "already exists" in capsys.readouterr().err


def test_oversize_parts_are_dropped_by_zeromq(ctx, monkeypatch):
    """ZMQ_MAXMSGSIZE is set on every socket (the largest frame a run accepts): a bigger
    part is dropped by ZeroMQ before it is ever buffered whole; the stage goes on."""
    with private_ipc_dir() as d:
        endpoint = f"ipc://{d}/big.sock"
        default = open_socket(ctx, zmq.PULL, f"ipc://{d}/default.sock", bind=True)
        assert default.getsockopt(zmq.MAXMSGSIZE) == messages.MAX_FRAME_BYTES
        default.close(0)
        monkeypatch.setattr(transport, "MAX_FRAME_BYTES", 4096)  # what open_socket reads
        pull = open_socket(ctx, zmq.PULL, endpoint, bind=True)
        push = open_socket(ctx, zmq.PUSH, endpoint, bind=False)
        receiver = Receiver(pull)
        try:
            push.send_multipart([parts_of(valid_messages()[-1])[0], b"x" * 8192])
            assert receiver.recv(timeout_ms=1000) is None
            push.send_multipart(parts_of(valid_messages()[-1]))  # after the reconnect
            assert isinstance(receiver.recv(timeout_ms=10_000), EndOfStream)
            assert receiver.malformed == 0  # dropped by ZeroMQ, never reached decode
        finally:
            push.close(0)
            pull.close(0)


def test_ipc_directory_is_private_and_removed():
    with private_ipc_dir() as d:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        ctx = zmq.Context()
        sock = open_socket(ctx, zmq.PULL, f"ipc://{d}/x.sock", bind=True)
        sock.close(0)
        ctx.term()
    assert not d.exists()


def test_nothing_unpickles():
    pattern = re.compile(r"\bpickle\b|recv_pyobj|send_pyobj|allow_pickle\s*=\s*True|"
                         r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    offenders = []
    for folder in ("gimefive", "pipeline", "export", "train"):
        for path in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if pattern.search(code) and "never" not in line.lower():
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
