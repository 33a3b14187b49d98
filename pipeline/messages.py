"""The wire format between pipeline stages: message types, their schema and validation.

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

    source --FrameMsg--> detect --DetectionsMsg--> track --TrackIdsMsg-->
    classify --TrackedMsg--> annotate/encode + sinks

and :class:`EndOfStream` travels the same way at the end of each stream (``reason``:
``eof``, ``stopped`` or ``error``). Array buffers are sent with ``copy=False``; received
arrays are views on the ZeroMQ frames, not copies (copy before drawing on an image).

On one host the image lies in shared memory instead (:mod:`shared_frames`): its array
spec adds ``"ring"``, ``"slot"`` and ``"seq"`` and no buffer follows for it; :func:`decode`
resolves it through the stage's :class:`~gimefive.pipeline.shared_frames.SharedFrames`
(a stage without one refuses it).

Every message is checked against size limits (:data:`MAX_PIXELS` and the rest) before it
is parsed. The sockets that carry messages are in :mod:`transport` (which also has ZeroMQ
drop any part over :data:`MAX_FRAME_BYTES`); stage -> supervisor reports in :mod:`control`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import zmq

from gimefive.errors import GimefiveError
from gimefive.labels import UNCERTAIN_THRESHOLD

SCHEMA_VERSION = 1
ALLOWED_DTYPES = frozenset({"uint8", "int32", "int64", "float32", "float64", "bool"})
#: each allowed dtype by name (native byte order): compared as objects, since reading a
#: dtype's ``name`` runs Python code, a cost paid for every array of every message
_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}

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
    exact = type(value) in allowed  # the common case (a bool is never taken for an int)
    if not exact and not any(isinstance(value, t) and not (
            t in (int, float) and isinstance(value, bool)) for t in allowed):
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
        if "stream" in self.FIELDS:
            check_stream_id(self.stream, f"{self.KIND} message: stream id")
        _check_arrays(self.KIND, {n: getattr(self, n) for n in self.ARRAYS}, self.ARRAYS)

    def encode(self, inline: bool = False) -> list[Any]:
        """Multipart parts: the JSON header then the array buffers (no copies made).
        An image in shared memory goes as its place, unless ``inline`` (a hop to
        another host)."""
        arrays = [(n, getattr(self, n)) for n in self.ARRAYS if getattr(self, n) is not None]
        specs, buffers = [], []
        for name, array in arrays:  # the dtype __post_init__ checked
            spec = {"name": name, "dtype": self.ARRAYS[name][0], "shape": list(array.shape)}
            ref = None if inline else getattr(array, "ref", None)  # (shared_frames)
            if ref is None:
                buffers.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            else:
                spec |= zip(REF_KEYS, ref, strict=True)
            specs.append(spec)
        header = {"schema": SCHEMA_VERSION, "kind": self.KIND,
                  "fields": {n: getattr(self, n) for n in self.FIELDS}, "arrays": specs}
        return [json.dumps(header, separators=(",", ":")).encode(), *buffers]


#: a stream id names a camera's output files (live sinks): letters, digits, - and _ only,
#: so no message can steer a file name outside its folder
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_stream_id(value: str, what: str = "stream id") -> str:
    """``value`` if it is a valid stream id, else :class:`WireError` naming ``what``."""
    if not STREAM_ID.fullmatch(value):
        raise WireError(f"{what} {value!r:.70}: use 1 to 64 letters, digits, - and _")
    return value


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
        if value.dtype != _DTYPES[dtype]:
            raise WireError(f"{kind} message: array {name!r} expected dtype {dtype}, "
                            f"got {value.dtype}")
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
    # place in the stream's contiguous sequence, stamped by a sender to stage replicas
    # (pipeline.replicas) so the stage after them can put the frames back in order; null
    # without replicas
    "seq": (int, type(None)),
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
    seq: int | None = None
    image: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq is not None and self.seq < 0:
            raise WireError(f"{self.KIND} message: field 'seq' expected >= 0, got {self.seq}")
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
class TrackIdsMsg(DetectionsMsg):
    """Plus each face's track id: who is who, which the classify stage's schedule needs."""

    KIND: ClassVar[str] = "track_ids"
    ARRAYS: ClassVar = DetectionsMsg.ARRAYS | {"track_ids": ("int64", ("K",), False)}
    track_ids: np.ndarray

    def track_fields(self) -> dict[str, Any]:
        return self.detection_fields() | {"track_ids": self.track_ids}


@dataclass(kw_only=True)
class TrackedMsg(TrackIdsMsg):
    """Plus each face's emotion: probabilities, smoothed probabilities, stable label,
    uncertain flag and Grad-CAM, measured on this frame or carried from the track's last
    measurement (per-track classification, :mod:`gimefive.pipeline.schedule`).

    ``measured``: classified on this frame; ``result_age``: frames since the face's
    probabilities were measured (0: now); ``cam_from``: the frame its Grad-CAM map was
    computed on (-1: none). Left out, they say "everything measured on this frame".
    """

    KIND: ClassVar[str] = "tracked"
    FIELDS: ClassVar = DetectionsMsg.FIELDS | {"cam_layer": (str,),
                                               "uncertain_threshold": (float,)}
    ARRAYS: ClassVar = TrackIdsMsg.ARRAYS | {
        "probs": ("float32", ("K", 6), False),
        "cam": ("float32", ("K", "h", "w"), True),
        "crops": ("float32", ("K", 4), False),
        "smoothed": ("float32", ("K", 6), False),
        "labels": ("int64", ("K",), False),
        "uncertain": ("bool", ("K",), False),
        "measured": ("bool", ("K",), False),
        "result_age": ("int64", ("K",), False),
        "cam_from": ("int64", ("K",), False),
        "landmarks68": ("float32", ("K", 68, 2), True),
    }
    cam_layer: str = "conv5"
    uncertain_threshold: float = UNCERTAIN_THRESHOLD  # the weights' metadata, or the config
    probs: np.ndarray
    cam: np.ndarray | None = None  # absent when Grad-CAM is off
    crops: np.ndarray  # the square each face is framed by: cx, cy, side, angle (deg)
    smoothed: np.ndarray
    labels: np.ndarray
    uncertain: np.ndarray
    measured: np.ndarray | None = None
    result_age: np.ndarray | None = None
    cam_from: np.ndarray | None = None
    landmarks68: np.ndarray | None = None  # set by the annotate stage when asked for

    def __post_init__(self) -> None:
        k = len(self.boxes) if isinstance(self.boxes, np.ndarray) else 0
        if self.measured is None:
            self.measured = np.ones(k, bool)
        if self.result_age is None:
            self.result_age = np.zeros(k, np.int64)
        if self.cam_from is None:
            self.cam_from = np.full(k, self.index if self.cam is not None else -1, np.int64)
        super().__post_init__()
        if len(self.result_age) and int(self.result_age.min()) < 0:
            raise WireError(f"{self.KIND} message: array 'result_age' expected >= 0")


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
    cls.KIND: cls for cls in (FrameMsg, DetectionsMsg, TrackIdsMsg, TrackedMsg, EndOfStream)}


def decode(parts: list[Any], expect: tuple[type[Message], ...] | None = None,
           frames: Any = None) -> Message:
    """Validate and rebuild a message from multipart ``parts`` (bytes or zmq.Frame).

    ``frames`` (a :class:`~gimefive.pipeline.shared_frames.SharedFrames`) resolves the
    arrays that lie in shared memory; without it such a message is refused.

    Sizes are checked before anything is parsed or allocated; whatever else a hostile
    message provokes (OverflowError, RecursionError, MemoryError, UnicodeDecodeError...)
    is still just a malformed message: a :class:`WireError` the stage counts and drops.
    """
    try:
        return _decode(parts, expect, frames)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - a message must never kill its stage
        text = " ".join(str(exc).split())[:80]
        raise WireError(f"malformed message ({exc.__class__.__name__}: {text})") from None


def _decode(parts: list[Any], expect: tuple[type[Message], ...] | None,
            frames: Any) -> Message:
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
    inline = len(specs) - sum(isinstance(s, dict) and "ring" in s for s in specs) \
        if isinstance(specs, list) else -1
    if inline != len(parts) - 1:
        raise WireError(f"{kind} message: header lists "
                        f"{inline if inline >= 0 else 'no'} arrays but "
                        f"{len(parts) - 1} buffers arrived")
    arrays, buffers = {}, iter(parts[1:])
    for spec in specs:
        name, array = _parse_array(kind, spec, buffers, frames)
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
    # the fields are the free-form part (``extra``) that travels on; the array specs are
    # checked item by item (:func:`_parse_array`), keys beyond the four are refused below
    if header is None or (isinstance(header, dict)
                          and 1 + _json_depth(header.get("fields")) > MAX_JSON_DEPTH):
        raise WireError(f"header nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(header, dict):
        raise WireError(f"header expected a JSON object, got {type(header).__name__}")
    if header.get("schema") != SCHEMA_VERSION:
        raise WireError(f"schema version expected {SCHEMA_VERSION}, "
                        f"got {header.get('schema')!r:.20}")
    missing = {"kind", "fields", "arrays"} - set(header)
    if missing:
        raise WireError(f"header missing key(s) {sorted(missing)}")
    unknown = set(header) - _HEADER_KEYS
    if unknown:  # exactly the four keys: nothing travels that no check has read
        raise WireError(f"header has unknown key(s) {sorted(map(str, unknown))[:4]!r:.80}")
    return header


def _json_depth(value: Any) -> int:
    """How deep lists/objects nest (without recursion; stops past MAX_JSON_DEPTH)."""
    if not isinstance(value, dict | list):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((v, depth + 1) for v in
                     (value.values() if isinstance(value, dict) else value)
                     if isinstance(v, dict | list))  # only containers nest
    return deepest


_SPEC_KEYS = frozenset({"name", "dtype", "shape"})
#: an array that lies in shared memory (pipeline.shared_frames): where, instead of a buffer
REF_KEYS = ("ring", "slot", "seq")
_SHARED_SPEC_KEYS = _SPEC_KEYS | frozenset(REF_KEYS)
_HEADER_KEYS = frozenset({"schema", "kind", "fields", "arrays"})


def _parse_array(kind: str, spec: Any, buffers: Iterator[Any],
                 frames: Any) -> tuple[str, np.ndarray]:
    """One array: from the next buffer, or (``ring``, ``slot``, ``seq`` in its spec) from
    shared memory through ``frames``."""
    shared = isinstance(spec, dict) and "ring" in spec
    if not isinstance(spec, dict) or spec.keys() != (_SHARED_SPEC_KEYS if shared
                                                    else _SPEC_KEYS):
        raise WireError(f"{kind} message: array spec expected keys ['dtype', 'name', 'shape'] "
                        f"(and ['ring', 'slot', 'seq'] for shared memory), got {spec!r:.60}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"{kind} message: array {name!r:.30} dtype {dtype!r:.20} not allowed; "
                        f"expected one of {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise WireError(f"{kind} message: array {name!r:.30} shape must be non-negative "
                        f"integers, got {shape!r:.40}")
    expected = _check_shape_limits(kind, name, shape, _DTYPES[dtype].itemsize)
    if shared:
        if frames is None or dtype != "uint8":
            raise WireError(f"{kind} message: array {name!r:.30} lies in shared memory, "
                            f"which this stage does not read (no --frames-dir)"
                            if frames is None else
                            f"{kind} message: array {name!r:.30} in shared memory must be "
                            f"uint8, got {dtype}")
        return name, frames.image(spec, shape)
    buffer = _as_bytes(next(buffers))
    if len(buffer) != expected:
        raise WireError(f"{kind} message: array {name!r:.30} {dtype}{shape} needs {expected} "
                        f"bytes, got {len(buffer)}")
    return name, np.frombuffer(buffer, dtype=_DTYPES[dtype]).reshape(shape)


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


def replace(msg: Message, **changes: Any) -> Message:
    """A copy of ``msg`` with fields changed, validated again."""
    return dataclasses.replace(msg, **changes)
