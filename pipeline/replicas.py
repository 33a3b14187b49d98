"""Stage replicas: several processes of one stage sharing one stream (issue 13, item 7).

With one process per stage, a stream goes no faster than its slowest stage on one core,
however many cores the machine has. ``detect_replicas`` and ``classify_replicas`` start
N processes of those stages instead. How a stream is shared between them follows what
each stage remembers from frame to frame (:data:`SPLIT`):

* ``frames`` (detect): each frame goes to one replica, in turn by its place in the
  stream (``seq % N``), and the stage after them puts the frames back in order. A frame
  is detected without the others -- with ``detect_every`` 1. Above 1 the boxes between
  detections come from the detections before them, so detect then runs once (asking for
  more is refused); likewise with ``detect_upscale`` and ``detect_upscale_every`` above 1,
  where the cheap passes keep faces from the enlarged ones.
* ``tracks`` (classify): it keeps per-track state (the schedule, the smoothing, the
  stable label), so every frame goes to every replica, each with only the faces of its
  tracks (``track_id % N``). A track is always measured by the same replica, which sees
  all its frames in order, as the one classify process would; the stage after them
  joins the N parts of a frame into one message, faces in their original order.

The sender to the replicas (:class:`FanOut`) stamps each frame with its place in the
stream (``seq``, contiguous per stream, kept by every stage after it) and sends each
replica its own end-of-stream, counting the frames that replica got. The stage after
the replicas (:mod:`gimefive.pipeline.reorder`) waits for all N ends of a stream and
releases its frames in ``seq`` order. Frame indices cannot serve: a live source drops
frames and a restarted one jumps ahead.

Each replica binds its own input (``NAME-I.sock``) and the stage before connects to all
of them (``--out A,B``). Replica 0 reports under the stage's name, the others as
``NAME#I``; the summary adds them up under the stage's name.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.messages import EndOfStream, Message
from gimefive.pipeline.stages import ORDER, next_stage
from gimefive.pipeline.transport import Sender, ipc_endpoint

from gimefive.errors import GimefiveError

#: how the stages that can run as replicas share a stream (see the module docstring)
SPLIT: dict[str, str] = {"detect": "frames", "classify": "tracks"}
#: auto (0): one replica per this many cores, at most MAX_AUTO; a single pipeline already
#: keeps about five cores busy (decode, detect, two classify engine threads, annotate)
CORES_PER_REPLICA = 4
MAX_AUTO = 8
#: in a replica's part of a frame (``extra``): the positions of its faces in the frame
FACES_KEY = "_replica_faces"


# ------------------------------------------------------------------------- how many
def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _may_use_gpu(device: str) -> bool:
    """Whether detect/classify may run on a GPU: ``cuda``, or ``auto`` where the NVIDIA
    driver library loads (checked without importing torch, which takes seconds)."""
    if device != "auto":
        return device == "cuda"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def auto_replicas(device: str = "cpu", cores: int | None = None) -> int:
    """Replicas per stage for setting 0: one per :data:`CORES_PER_REPLICA` cores (2 or 4
    cores: 1, 8: 2, 16: 4), at most :data:`MAX_AUTO`. 1 where the stages may use a GPU:
    the replicas would share that one device, which has not been measured."""
    if _may_use_gpu(device):
        return 1
    cores = usable_cores() if cores is None else cores
    return max(1, min(MAX_AUTO, cores // CORES_PER_REPLICA))


def replica_counts(config: Any, cores: int | None = None) -> dict[str, int]:
    """Processes per stage of a run, every stage in ``ORDER`` (1 for the others)."""
    auto = None
    counts = dict.fromkeys(ORDER, 1)
    for name in SPLIT:
        asked = getattr(config, f"{name}_replicas")
        if asked == 0:
            auto = auto_replicas(config.device, cores) if auto is None else auto
        counts[name] = asked or auto
    carries = ("detect_every", config.detect_every) if config.detect_every > 1 else (
        ("detect_upscale_every", config.detect_upscale_every)
        if config.detect_upscale and config.detect_upscale_every > 1 else None)
    if carries and counts["detect"] > 1:
        if config.detect_replicas > 1:
            raise GimefiveError(
                f"detect_replicas {config.detect_replicas} needs {carries[0]} 1 (got "
                f"{carries[1]}): some boxes come from the detections before them, which "
                f"another replica would hold")
        counts["detect"] = 1
    return counts


# ------------------------------------------------------------------------- names, wiring
def replica_names(name: str, count: int) -> list[str]:
    """Process names of a stage's replicas: replica 0 keeps the stage's name."""
    return [name] + [f"{name}#{i}" for i in range(1, count)]


def replica_name(name: str, index: int | None) -> str:
    return f"{name}#{index}" if index else name


def base_name(process: str) -> str:
    """The stage a process runs: ``detect#1`` -> ``detect``."""
    return process.partition("#")[0]


def replica_index(process: str) -> int:
    return int(process.partition("#")[2] or 0)


def previous_stage(name: str) -> str | None:
    """The stage that sends to ``name`` (None for the source)."""
    at = ORDER.index(name)
    return ORDER[at - 1] if at else None


def input_endpoints(directory: Path, counts: dict[str, int],
                    names: tuple[str, ...] = ORDER) -> dict[str, str]:
    """Each stage's input endpoint; a stage with replicas: theirs, comma separated (what
    the stage before connects to)."""
    return {name: ",".join(ipc_endpoint(directory, f"{name}-{i}")
                           for i in range(counts[name])) if counts[name] > 1
            else ipc_endpoint(directory, name) for name in names}


def replica_args(name: str, index: int, counts: dict[str, int], args: list[str]) -> list[str]:
    """``gimefive stage`` arguments of replica ``index`` of stage ``name``, from the
    stage's own: its input is its own endpoint, it says which replica it is, and a
    stage after replicas says how many send to it."""
    args = list(args)
    if counts.get(name, 1) > 1:
        at = args.index("--in") + 1
        args[at] = args[at].split(",")[index]
        args += ["--replica", str(index)]
    before = previous_stage(name)
    if before is not None and counts.get(before, 1) > 1:
        args += ["--upstream", str(counts[before])]
    return args


def split_endpoints(endpoint: str | None) -> list[str | None]:
    """``--out A,B``: one endpoint per replica of the next stage."""
    return endpoint.split(",") if endpoint else [endpoint]


# ------------------------------------------------------------------------- sending
def fan_out(senders: list[Sender], stage: str) -> Sender | FanOut:
    """The output of stage ``stage``: one sender, or a :class:`FanOut` to the replicas
    of the next stage."""
    if len(senders) == 1:
        return senders[0]
    after = next_stage(stage)
    if after not in SPLIT:
        raise GimefiveError(f"stage {stage} sends to {len(senders)} endpoints, but stage "
                            f"{after} cannot run as replicas (only {', '.join(SPLIT)})")
    return FanOut(senders, SPLIT[after])


class FanOut:
    """Sends a stream to the N replicas of the next stage, one PUSH socket each.

    ``frames``: frame ``seq`` goes to replica ``seq % N`` alone. A fixed turn, not the
    first replica free: a replica that falls behind then holds the sender back (its
    queue fills) instead of letting the others run ever further ahead, which bounds
    what the stage after them must hold to restore the order. ``tracks``: every frame
    goes to every replica, each with its tracks' faces (:func:`face_part`).
    """

    def __init__(self, senders: list[Sender], split: str) -> None:
        self.senders, self.split = senders, split
        self.next_seq: dict[str, int] = {}
        self.shares: dict[str, list[int]] = {}  # per stream: frames sent to each replica

    @property
    def blocked_s(self) -> float:
        return sum(s.blocked_s for s in self.senders)

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.senders)

    def send(self, msg: Message) -> None:
        if isinstance(msg, EndOfStream):
            self._end(msg)
            return
        if msg.seq is None:  # the first sender to replicas numbers the stream
            msg.seq = self.next_seq.get(msg.stream, 0)
            self.next_seq[msg.stream] = msg.seq + 1
        n = len(self.senders)
        shares = self.shares.setdefault(msg.stream, [0] * n)
        if self.split == "frames":
            shares[msg.seq % n] += 1
            self.senders[msg.seq % n].send(msg)
            return
        for i, part in enumerate(split_faces(msg, n)):
            shares[i] += 1
            self.senders[i].send(part)

    def _end(self, eos: EndOfStream) -> None:
        """Every replica gets the end-of-stream, each with the frames it got (what its
        next stage checks); the stream's numbering starts again if it comes back."""
        shares = self.shares.pop(eos.stream, [0] * len(self.senders))
        self.next_seq.pop(eos.stream, None)
        for sender, frames in zip(self.senders, shares, strict=True):
            sender.send(dataclasses.replace(eos, frames=frames))

    def wait_for_peers_to_leave(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        return all([s.wait_for_peers_to_leave(max(0.0, deadline - time.monotonic()))
                    for s in self.senders])

    def close_monitor(self) -> None:
        for sender in self.senders:
            sender.close_monitor()


# ------------------------------------------------------------------------- faces
def face_arrays(msg: Message) -> list[str]:
    """The names of ``msg``'s per-face arrays (first dimension ``K``)."""
    return [name for name, (_, shape, _) in msg.ARRAYS.items() if shape[:1] == ("K",)]


def face_count(msg: Message) -> int:
    return next((len(getattr(msg, n)) for n in face_arrays(msg)
                 if getattr(msg, n) is not None), 0)


def face_part(msg: Message, keep: np.ndarray) -> Message:
    """``msg`` with only the faces at positions ``keep``, which it records (in ``extra``)
    so that the parts can be joined in the original order."""
    arrays = {name: getattr(msg, name) for name in msg.ARRAYS}
    for name in face_arrays(msg):
        if arrays[name] is not None:
            arrays[name] = arrays[name][keep]
    fields = {name: getattr(msg, name) for name in msg.FIELDS}
    fields["extra"] = msg.extra | {FACES_KEY: keep.tolist()}
    return type(msg)(**fields, **arrays)


def split_faces(msg: Message, n: int) -> list[Message]:
    """``n`` parts of a frame, part ``i`` with the faces whose ``track_id % n == i``."""
    ids = getattr(msg, "track_ids", None)
    if ids is None:
        raise GimefiveError(f"classify replicas need each face's track id, which {msg.KIND} "
                            f"messages lack: the track stage must run before classify")
    owner = np.mod(np.asarray(ids, np.int64), n)
    return [face_part(msg, np.flatnonzero(owner == i)) for i in range(n)]
