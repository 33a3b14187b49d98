"""The wire format between pipeline stages, and the ZeroMQ socket helpers that carry it.

Format (schema version :data:`SCHEMA_VERSION`)
-----------------------------------------------
Every message is one ZeroMQ multipart message::

    part 0      UTF-8 JSON header
    part 1..n   raw C-contiguous array buffers, in the order the header lists them

The header is a JSON object with exactly these keys::

    {"schema": 1,                      # bumped on any incompatible change
     "kind": "frame",                  # which message type (see MESSAGE_TYPES)
     "fields": {...},                  # the scalar fields of that type, all present
     "arrays": [{"name": "image", "dtype": "uint8", "shape": [360, 640, 3]}, ...]}

Each message type declares its scalar fields and its arrays (name, dtype, symbolic
shape such as ``("K", 4)``). On receipt :func:`decode` checks the schema version, the
kind, the field names and JSON types, each array's name, dtype and shape (symbols such
as ``K``, the number of faces, must agree across arrays) and each buffer's byte length;
any mismatch raises :class:`WireError` naming what was expected and what arrived. The
receiving stage counts and drops such a message; it never crashes on one. Nothing is
ever pickled: a header is JSON, an array is bytes plus a dtype from a fixed allow-list.

Hops (one type per hop)::

    source --FrameMsg--> detect --DetectionsMsg--> classify --ClassifiedMsg-->
    track --TrackedMsg--> annotate/encode + sinks

and :class:`EndOfStream` travels the same way at the end of each stream (``reason``:
``eof``, ``stopped`` or ``error``). Array buffers are sent with ``copy=False``; received
arrays are views on the ZeroMQ frames, not copies (copy before drawing on an image).

Sockets
-------
Data sockets are PUSH/PULL: a stage *binds* its input (``--in``) and *connects* its output
(``--out``), so several senders can fan in to one receiver. High-water marks are small
and sends block, which gives lossless back-pressure: a full downstream queue stops the
source (a live source that must drop does so before the first hop, see
``pipeline.stages.source``). ``ipc://`` endpoints live in a private directory (mode
0700, removed at shutdown, :func:`private_ipc_dir`); ``tcp://`` is for stages on
different hosts. Binding a non-loopback TCP address requires CurveZMQ keys
(:class:`CurveKeys`) or an explicit ``insecure=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import zmq

from gimefive.errors import GimefiveError

SCHEMA_VERSION = 1
ALLOWED_DTYPES = frozenset({"uint8", "int32", "int64", "float32", "float64", "bool"})
DEFAULT_HWM = 8

# Limits a message is checked against before anything is parsed or allocated, so that one
# hostile message is dropped, never the stage (see :func:`decode`).
#: the largest frame (width x height) any run accepts: 8K UHD (7680 x 4320) fits, a 16K
#: square does not. A run's probe-time ``max_pixels`` setting must not exceed it.
MAX_PIXELS = 8192 * 8192
#: the largest single buffer: a MAX_PIXELS BGR image; also ZMQ_MAXMSGSIZE (ZeroMQ applies
#: it per part, so a bigger part is dropped, and its peer disconnected, by ZeroMQ itself)
MAX_FRAME_BYTES = MAX_PIXELS * 3
#: all array buffers of one message: the image plus per-face arrays and Grad-CAM maps
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + (64 << 20)
MAX_HEADER_BYTES = 64 << 10   # a real header is well under 2 KiB
MAX_JSON_DEPTH = 16           # a real header nests 4 deep (header, fields, extra, live)
MAX_ARRAY_DIMS = 4
MAX_DIMENSION = 1 << 16
_INT64 = range(-2**63, 2**63)
_AV_INT = range(1, 2**31)     # FFmpeg's rationals are C ints


class WireError(GimefiveError):
    """A message that does not match the schema; the text names expected vs actual."""


# --------------------------------------------------------------------------- messages

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean",
               list: "list", dict: "object", type(None): "null"}


def _check_json_type(kind: str, name: str, value: Any, allowed: tuple[type, ...]) -> Any:
    ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool))
             for t in allowed)
    if not ok:
        raise WireError(f"{kind} message: field {name!r} expected "
                        f"{' or '.join(_JSON_TYPES[t] for t in allowed)}, "
                        f"got {type(value).__name__} {value!r:.40}")
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        raise WireError(f"{kind} message: field {name!r} expected a 64-bit integer, "
                        f"got {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WireError(f"{kind} message: field {name!r} expected a finite number, "
                        f"got {value!r}")
    return float(value) if allowed[0] is float and isinstance(value, int) else value


@dataclass(kw_only=True)
class Message:
    """Base of all wire messages: scalar FIELDS (JSON) and ARRAYS (raw buffers)."""

    KIND: ClassVar[str] = ""
    #: scalar field name -> allowed JSON types (first one is the canonical type)
    FIELDS: ClassVar[dict[str, tuple[type, ...]]] = {}
    #: array name -> (dtype, symbolic shape, optional)
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | str, ...], bool]]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.FIELDS.items():
            setattr(self, name, _check_json_type(self.KIND, name, getattr(self, name), allowed))
        _check_arrays(self.KIND, {n: getattr(self, n) for n in self.ARRAYS}, self.ARRAYS)

    def encode(self) -> list[Any]:
        """Multipart parts: the JSON header then the array buffers (no copies made)."""
        arrays = [(n, getattr(self, n)) for n in self.ARRAYS if getattr(self, n) is not None]
        header = {"schema": SCHEMA_VERSION, "kind": self.KIND,
                  "fields": {n: getattr(self, n) for n in self.FIELDS},
                  "arrays": [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)}
                             for n, a in arrays]}
        return [json.dumps(header, separators=(",", ":")).encode()] + [
            np.ascontiguousarray(a).reshape(-1).view(np.uint8) for _, a in arrays]


def _check_arrays(kind: str, arrays: dict[str, np.ndarray | None],
                  spec: dict[str, tuple[str, tuple[int | str, ...], bool]]) -> None:
    sizes: dict[str, int] = {}
    for name, (dtype, shape, optional) in spec.items():
        value = arrays.get(name)
        if value is None:
            if not optional:
                raise WireError(f"{kind} message: array {name!r} is missing")
            continue
        if not isinstance(value, np.ndarray):
            raise WireError(f"{kind} message: {name!r} expected a numpy array, "
                            f"got {type(value).__name__}")
        if value.dtype.name != dtype:
            raise WireError(f"{kind} message: array {name!r} expected dtype {dtype}, "
                            f"got {value.dtype.name}")
        if value.ndim != len(shape):
            raise WireError(f"{kind} message: array {name!r} expected shape "
                            f"{_shape_text(shape)}, got {tuple(value.shape)}")
        for dim, want in zip(value.shape, shape, strict=True):
            expected = sizes.setdefault(want, dim) if isinstance(want, str) else want
            if dim != expected:
                raise WireError(f"{kind} message: array {name!r} expected shape "
                                f"{_shape_text(shape, sizes)}, got {tuple(value.shape)}")


def _check_image_size(kind: str, image: np.ndarray) -> None:
    """At least 1x1 (a 0x0 image divides by zero downstream), at most MAX_PIXELS."""
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise WireError(f"{kind} message: image expected at least 1x1 pixels, got {w}x{h}")
    if h * w > MAX_PIXELS:
        raise WireError(f"{kind} message: image {w}x{h} is over the limit of {MAX_PIXELS} "
                        f"pixels")


def _shape_text(shape, sizes=None) -> str:
    sizes = sizes or {}
    return "(" + ", ".join(f"{d}={sizes[d]}" if d in sizes else str(d) for d in shape) + ")"


_FRAME_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (str,),            # stream id (one per input file or camera)
    "index": (int,),             # frame number in the stream, from 0, no gaps on files
    "pts": (int, type(None)),    # presentation timestamp in time_base units
    "time_base": (list,),        # [numerator, denominator]
    "rate": (list, type(None)),  # average frame rate [num, den] when known
    "t_decoded": (float,),       # wall clock (time.time()) when decoded: latency
    "extra": (dict,),            # free-form JSON for extensions (e.g. live drop counts)
}


@dataclass(kw_only=True)
class FrameMsg(Message):
    """A decoded frame (BGR) with its stream position and timing."""

    KIND: ClassVar[str] = "frame"
    FIELDS: ClassVar = dict(_FRAME_FIELDS)
    ARRAYS: ClassVar = {"image": ("uint8", ("H", "W", 3), False)}

    stream: str
    index: int
    pts: int | None
    time_base: list
    rate: list | None = None
    t_decoded: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)
    image: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("time_base", "rate"):
            value = getattr(self, name)
            ints = value is not None and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v in _AV_INT for v in value)
            if value is not None and not ints:
                raise WireError(f"{self.KIND} message: field {name!r} expected "
                                f"[numerator, denominator>0] integers, both 1.."
                                f"{_AV_INT[-1]}, got {value!r:.40}")
        if self.index < 0:
            raise WireError(f"{self.KIND} message: field 'index' expected >= 0, got {self.index}")
        _check_image_size(self.KIND, self.image)

    @property
    def pts_seconds(self) -> float | None:
        if self.pts is None:
            return None
        return self.pts * self.time_base[0] / self.time_base[1]

    def frame_fields(self) -> dict[str, Any]:
        """The frame part, to build the next hop's message from this one."""
        return {n: getattr(self, n) for n in _FRAME_FIELDS} | {"image": self.image}


@dataclass(kw_only=True)
class DetectionsMsg(FrameMsg):
    """A frame plus its faces; ``detected`` is False where boxes were tracked, not detected."""

    KIND: ClassVar[str] = "detections"
    FIELDS: ClassVar = _FRAME_FIELDS | {"detected": (bool,)}
    ARRAYS: ClassVar = FrameMsg.ARRAYS | {
        "boxes": ("float32", ("K", 4), False),
        "scores": ("float32", ("K",), False),
        "landmarks": ("float32", ("K", 5, 2), False),
    }
    detected: bool = True
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def detection_fields(self) -> dict[str, Any]:
        return self.frame_fields() | {n: getattr(self, n) for n in
                                      ("detected", "boxes", "scores", "landmarks")}


@dataclass(kw_only=True)
class ClassifiedMsg(DetectionsMsg):
    """Plus per-face probabilities and, on frames where it was computed, Grad-CAM maps."""

    KIND: ClassVar[str] = "classified"
    FIELDS: ClassVar = DetectionsMsg.FIELDS | {"cam_layer": (str,),
                                               "uncertain_threshold": (float,)}
    ARRAYS: ClassVar = DetectionsMsg.ARRAYS | {
        "probs": ("float32", ("K", 6), False),
        "cam": ("float32", ("K", "h", "w"), True),
        "crops": ("float32", ("K", 4), False),
    }
    cam_layer: str = "conv5"
    uncertain_threshold: float = 0.4  # from the weights' metadata (or the config)
    probs: np.ndarray
    cam: np.ndarray | None = None  # absent on frames without Grad-CAM (--cam-every)
    crops: np.ndarray  # the square each face was classified from: cx, cy, side, angle (deg)

    def classified_fields(self) -> dict[str, Any]:
        return self.detection_fields() | {n: getattr(self, n) for n in (
            "cam_layer", "uncertain_threshold", "probs", "cam", "crops")}


@dataclass(kw_only=True)
class TrackedMsg(ClassifiedMsg):
    """Plus track ids, smoothed probabilities, stable labels and the uncertain flag."""

    KIND: ClassVar[str] = "tracked"
    ARRAYS: ClassVar = ClassifiedMsg.ARRAYS | {
        "track_ids": ("int64", ("K",), False),
        "smoothed": ("float32", ("K", 6), False),
        "labels": ("int64", ("K",), False),
        "uncertain": ("bool", ("K",), False),
        "landmarks68": ("float32", ("K", 68, 2), True),
    }
    track_ids: np.ndarray
    smoothed: np.ndarray
    labels: np.ndarray
    uncertain: np.ndarray
    landmarks68: np.ndarray | None = None  # set by the annotate stage when asked for


@dataclass(kw_only=True)
class EndOfStream(Message):
    """The last message of a stream; each stage forwards it, then exits (or waits for more)."""

    KIND: ClassVar[str] = "eos"
    FIELDS: ClassVar = {"stream": (str,), "frames": (int,), "reason": (str,),
                        "message": (str,)}
    REASONS: ClassVar = ("eof", "stopped", "error")
    stream: str
    frames: int
    reason: str = "eof"
    message: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reason not in self.REASONS:
            raise WireError(f"eos message: field 'reason' expected one of {self.REASONS}, "
                            f"got {self.reason!r:.40}")
        if self.frames < 0:
            raise WireError(f"eos message: field 'frames' expected >= 0, got {self.frames}")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (FrameMsg, DetectionsMsg, ClassifiedMsg, TrackedMsg, EndOfStream)}


def decode(parts: list[Any], expect: tuple[type[Message], ...] | None = None) -> Message:
    """Validate and rebuild a message from multipart ``parts`` (bytes or zmq.Frame).

    Sizes are checked before anything is parsed or allocated; whatever else a hostile
    message provokes (OverflowError, RecursionError, MemoryError, UnicodeDecodeError...)
    is still just a malformed message: a :class:`WireError` the stage counts and drops.
    """
    try:
        return _decode(parts, expect)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - a message must never kill its stage
        text = " ".join(str(exc).split())[:80]
        raise WireError(f"malformed message ({exc.__class__.__name__}: {text})") from None


def _decode(parts: list[Any], expect: tuple[type[Message], ...] | None) -> Message:
    if not parts:
        raise WireError("empty multipart message")
    total = sum(len(_as_bytes(p)) for p in parts[1:])
    if total > MAX_MESSAGE_BYTES:
        raise WireError(f"message arrays are {total} bytes, over the limit of "
                        f"{MAX_MESSAGE_BYTES}")
    header = _parse_header(_as_bytes(parts[0]))
    kind = header["kind"]
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r:.40}; expected one of "
                        f"{sorted(MESSAGE_TYPES)}")
    if expect is not None and cls not in expect:
        raise WireError(f"unexpected {kind} message here; expected "
                        f"{' or '.join(c.KIND for c in expect)}")
    fields = header["fields"]
    if not isinstance(fields, dict) or set(fields) != set(cls.FIELDS):
        got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        raise WireError(f"{kind} message: fields expected {sorted(cls.FIELDS)}, got {got}")
    specs = header["arrays"]
    if not isinstance(specs, list) or len(specs) != len(parts) - 1:
        raise WireError(f"{kind} message: header lists "
                        f"{len(specs) if isinstance(specs, list) else 'no'} arrays but "
                        f"{len(parts) - 1} buffers arrived")
    arrays = {}
    for spec, part in zip(specs, parts[1:], strict=True):
        name, array = _parse_array(kind, spec, part)
        if name not in cls.ARRAYS or name in arrays:
            raise WireError(f"{kind} message: unexpected or repeated array {name!r:.40}; "
                            f"expected {list(cls.ARRAYS)}")
        arrays[name] = array
    try:
        return cls(**fields, **arrays)
    except TypeError as exc:  # a required array missing from the constructor call
        raise WireError(f"{kind} message: {exc}") from None


def _as_bytes(part: Any) -> bytes | memoryview:
    return part.buffer if isinstance(part, zmq.Frame) else part


def _parse_header(raw: bytes | memoryview) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header is {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"header is not JSON (first bytes {bytes(raw[:16])!r})") from None
    except RecursionError:
        header = None  # nested far too deep for the parser
    if header is None or _json_depth(header) > MAX_JSON_DEPTH:
        raise WireError(f"header nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(header, dict):
        raise WireError(f"header expected a JSON object, got {type(header).__name__}")
    if header.get("schema") != SCHEMA_VERSION:
        raise WireError(f"schema version expected {SCHEMA_VERSION}, "
                        f"got {header.get('schema')!r:.20}")
    missing = {"kind", "fields", "arrays"} - set(header)
    if missing:
        raise WireError(f"header missing key(s) {sorted(missing)}")
    return header


def _json_depth(value: Any) -> int:
    """How deep lists/objects nest (without recursion; stops past MAX_JSON_DEPTH)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in
                         (value.values() if isinstance(value, dict) else value))
    return deepest


def _parse_array(kind: str, spec: Any, part: Any) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise WireError(f"{kind} message: array spec expected keys ['dtype', 'name', 'shape'], "
                        f"got {spec!r:.60}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"{kind} message: array {name!r:.30} dtype {dtype!r:.20} not allowed; "
                        f"expected one of {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise WireError(f"{kind} message: array {name!r:.30} shape must be non-negative "
                        f"integers, got {shape!r:.40}")
    expected = _check_shape_limits(kind, name, shape, np.dtype(dtype).itemsize)
    buffer = _as_bytes(part)
    if len(buffer) != expected:
        raise WireError(f"{kind} message: array {name!r:.30} {dtype}{shape} needs {expected} "
                        f"bytes, got {len(buffer)}")
    return name, np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _check_shape_limits(kind: str, name: Any, shape: list[int], itemsize: int) -> int:
    """The array's byte size, once its dimensions and size are within the limits (checked
    in that order, so no arithmetic ever runs on a hostile number)."""
    if len(shape) > MAX_ARRAY_DIMS:
        raise WireError(f"{kind} message: array {name!r:.30} has {len(shape)} dimensions, "
                        f"over the limit of {MAX_ARRAY_DIMS}")
    for dim in shape:
        if dim > MAX_DIMENSION:
            raise WireError(f"{kind} message: array {name!r:.30} dimension {dim} over the "
                            f"limit of {MAX_DIMENSION}")
    size = math.prod(shape) * itemsize
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"{kind} message: array {name!r:.30} {shape} needs {size} bytes, "
                        f"over the limit of {MAX_MESSAGE_BYTES}")
    return size


# ---------------------------------------------------------------------- control channel

def control_message(stage: str, event: str, **data: Any) -> bytes:
    """Stage -> supervisor report (one JSON part): ready, progress, stats, error."""
    return json.dumps({"schema": SCHEMA_VERSION, "kind": "control", "stage": stage,
                       "event": event, "data": data}).encode()


def report_stage_error(control: str | None, stage: str, message: str) -> None:
    """Send a stage's fatal error to its supervisor, so the run's one line can name it.

    Uses a fresh context because it runs after the stage's own sockets are gone.
    """
    if not control:
        return
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(control)
        sock.send(control_message(stage, "error", message=message))
        sock.close()
    finally:
        ctx.term()


def parse_control(raw: bytes) -> dict:
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("control message is not JSON") from None
    if not isinstance(msg, dict) or msg.get("kind") != "control" or \
            msg.get("schema") != SCHEMA_VERSION:
        raise WireError(f"control message expected kind 'control' schema {SCHEMA_VERSION}, "
                        f"got {str(msg)[:60]}")
    for key, typ in (("stage", str), ("event", str), ("data", dict)):
        if not isinstance(msg.get(key), typ):
            raise WireError(f"control message: {key!r} expected {typ.__name__}")
    return msg


# ------------------------------------------------------------------------------ sockets

@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ keys for TCP across hosts: encryption plus server authentication.

    The binding side uses the server key pair; a connecting side needs the server's
    public key and makes itself an ephemeral client key pair. Load a pair written by
    ``zmq.auth.create_certificates(DIR, "server")`` with :meth:`from_directory`.
    """

    server_public: bytes
    server_secret: bytes | None = None

    @classmethod
    def from_directory(cls, directory: str | Path) -> CurveKeys:
        import zmq.auth

        directory = Path(directory)
        secret_file, public_file = directory / "server.key_secret", directory / "server.key"
        if secret_file.is_file():
            public, secret = zmq.auth.load_certificate(str(secret_file))
            return cls(public, secret)
        if public_file.is_file():
            public, _ = zmq.auth.load_certificate(str(public_file))
            return cls(public)
        raise GimefiveError(f"no CurveZMQ keys in {directory} (expected server.key_secret "
                            f"or server.key, from zmq.auth.create_certificates)")


def is_loopback_or_ipc(endpoint: str) -> bool:
    """Whether only this host's user can reach ``endpoint`` without keys: loopback TCP,
    inproc, and ipc socket files (ours live in a 0700 folder). Not ``ipc://@name``: an
    abstract socket has no file and no permissions, any local user may connect."""
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc":
        return not endpoint[len("ipc://"):].startswith("@")
    if parts.scheme == "inproc":
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


def check_endpoint(endpoint: str) -> str:
    scheme = urlsplit(endpoint).scheme
    if scheme not in ("ipc", "tcp", "inproc"):
        raise GimefiveError(f"endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
    return endpoint


def open_socket(ctx: zmq.Context, kind: int, endpoint: str, *, bind: bool,
                hwm: int = DEFAULT_HWM, curve: CurveKeys | None = None,
                insecure: bool = False,
                before_connect: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    """A socket with linger 0 and bounded queues, bound or connected to ``endpoint``.

    ``before_connect`` runs on the socket just before it binds or connects (to attach a
    monitor that must see the first connection).
    """
    check_endpoint(endpoint)
    if bind and not is_loopback_or_ipc(endpoint) and curve is None and not insecure:
        raise GimefiveError(f"refusing to bind {endpoint} without encryption: pass CurveZMQ "
                            f"keys or --insecure (or bind a loopback/ipc endpoint)")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if curve is not None:
        if bind:
            if curve.server_secret is None:
                sock.close(0)
                raise GimefiveError("binding with CurveZMQ needs the server secret key")
            sock.curve_server = True
            sock.curve_secretkey = curve.server_secret
            sock.curve_publickey = curve.server_public
        else:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = curve.server_public
            sock.curve_publickey, sock.curve_secretkey = public, secret
    if before_connect is not None:
        before_connect(sock)
    try:
        (sock.bind if bind else sock.connect)(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise GimefiveError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {exc}") from None
    return sock


class StreamLedger:
    """What a stage received of each stream, to tell a genuine end-of-stream from a forged one.

    Only in runs with a fixed number of streams (``streams`` > 0, file runs), where an
    end-of-stream ends the stage. Each stream has one sender and PUSH/PULL keeps its order
    and loses nothing, so a genuine end-of-stream comes once, after exactly the frames it
    counts, from one of the run's streams. Anything else (a repeat, a count that does not
    match, a stream beyond the run's number, a frame after its stream ended) would cut a
    run short or leave it waiting for ever: it is refused, and counted as malformed.
    Live runs (``streams`` = 0) are not judged: there an end-of-stream ends nothing and a
    restarted camera source repeats one legitimately.
    """

    def __init__(self, streams: int) -> None:
        self.limit = streams
        self.received: dict[str, int] = {}  # at most ``limit`` entries
        self.ended: set[str] = set()

    def check(self, msg: Message) -> None:
        """Raise :class:`WireError` when ``msg`` contradicts its stream's history."""
        if self.limit <= 0:
            return
        stream = msg.stream
        if stream not in self.received and len(self.received) >= self.limit:
            raise WireError(f"{msg.KIND} message: stream {stream!r:.40} is not one of this "
                            f"run's {self.limit} stream(s)")
        if stream in self.ended:
            what = "a repeated end-of-stream" if isinstance(msg, EndOfStream) else \
                "a frame after its end-of-stream"
            raise WireError(f"{msg.KIND} message: stream {stream!r:.40} already ended "
                            f"({what})")
        received = self.received.get(stream, 0)
        if isinstance(msg, EndOfStream):
            if msg.frames != received:
                raise WireError(f"end-of-stream of stream {stream!r:.40} claims {msg.frames} "
                                f"frames, {received} arrived")
            self.ended.add(stream)
        self.received[stream] = received + (not isinstance(msg, EndOfStream))


class Receiver:
    """A PULL socket that yields validated messages; malformed ones are counted and dropped.

    ``streams`` > 0 (a run with that many streams) also refuses a forged end-of-stream
    (:class:`StreamLedger`).
    """

    def __init__(self, sock: zmq.Socket, expect: tuple[type[Message], ...] | None = None,
                 streams: int = 0) -> None:
        self.sock = sock
        self.expect = expect
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.malformed = 0
        self.last_error = ""
        self.ledger = StreamLedger(streams)

    @property
    def streams(self) -> int:
        return self.ledger.limit

    @streams.setter
    def streams(self, value: int) -> None:
        self.ledger = StreamLedger(value)

    def recv(self, timeout_ms: float | None) -> Message | None:
        """The next valid message, or None when ``timeout_ms`` passed without one."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            wait = None if deadline is None else max(0, (deadline - time.monotonic()) * 1000)
            if not self.poller.poll(wait):
                return None
            parts = self.sock.recv_multipart(copy=False)
            try:
                msg = decode(parts, self.expect)
                self.ledger.check(msg)
                return msg
            except WireError as exc:
                self.malformed += 1
                self.last_error = str(exc)
                if deadline is not None and time.monotonic() >= deadline:
                    return None


class Sender:
    """A PUSH socket; :meth:`send` blocks while the peer's queue is full (lossless).

    ``monitor`` (from :func:`peer_monitor`) lets :meth:`wait_for_peers_to_leave` hold the
    socket open after the end-of-stream until the receiving stage has gone.
    """

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket | None = None) -> None:
        self.sock = sock
        self.monitor = monitor
        self.peers = 0  # connections now up, from the monitor's events
        self.sent = 0
        self.blocked_s = 0.0

    def _read_events(self, timeout_ms: int) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor is not None and self.monitor.poll(timeout_ms):
            event = recv_monitor_message(self.monitor)["event"]
            self.peers += {zmq.EVENT_CONNECTED: 1, zmq.EVENT_DISCONNECTED: -1}.get(event, 0)
            timeout_ms = 0

    def wait_for_peers_to_leave(self, timeout_s: float) -> bool:
        """After the last message: wait until every peer has disconnected (it read all and
        closed), at most ``timeout_s``; True if they did.

        libzmq can drop the last messages of a PUSH socket that is closed while its peer's
        queue is full, linger or not (a lost end-of-stream hung whole runs, at random);
        a socket kept open until the peer leaves cannot lose them.
        """
        deadline = time.monotonic() + timeout_s
        self._read_events(0)
        while self.peers > 0 and time.monotonic() < deadline:
            self._read_events(int(min(200, max(1, (deadline - time.monotonic()) * 1000))))
        return self.peers <= 0

    def close_monitor(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.monitor = None

    def send(self, msg: Message) -> None:
        parts = msg.encode()
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            start = time.perf_counter()
            self.sock.send_multipart(parts, copy=False)
            self.blocked_s += time.perf_counter() - start
        self.sent += 1


def peer_monitor(sock: zmq.Socket) -> zmq.Socket:
    """A monitor of ``sock``'s connections (attach it before connecting: ``before_connect``)."""
    return sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)


@contextlib.contextmanager
def private_ipc_dir(prefix: str = "gimefive-") -> Iterator[Path]:
    """A fresh directory (mode 0700) for ``ipc://`` sockets, removed on exit; the folders
    of earlier runs that died (SIGKILL) are removed first (see :mod:`private_dir`)."""
    from gimefive.pipeline.private_dir import mark_owner, remove_stale

    remove_stale(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o700)
    mark_owner(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipc_endpoint(directory: Path, name: str) -> str:
    endpoint = f"ipc://{directory / name}.sock"
    if len(endpoint) > 100:  # sun_path is ~107 bytes on Linux
        raise GimefiveError(f"ipc path too long for a unix socket: {endpoint}")
    return endpoint


def replace(msg: Message, **changes: Any) -> Message:
    """A copy of ``msg`` with fields changed, validated again."""
    return dataclasses.replace(msg, **changes)
