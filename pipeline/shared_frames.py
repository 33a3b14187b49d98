"""Frames in shared memory: the image crosses each hop as a reference, not as bytes.

A 640x360 frame is 691 KB; carried inside every message it is copied into and out of
the kernel at each of the four hops, about 0.8 ms of CPU a hop (``benchmarks/
frame_overheads.py``), a sixth of what a live stream may spend on a frame on 2 cores.
On one host the source instead writes each frame once into a *ring* of slots in a
private folder on ``/dev/shm`` (tmpfs, mode 0700), and the message carries the frame's
place (ring, slot, sequence number) in its array spec (:mod:`messages`); each stage
maps the ring and reads the frame where it lies (as a read-only array).

Flow control is by slots, not by socket queues (small messages fit by the dozen in a
kernel buffer, so ZeroMQ's high-water marks no longer bound the frames in flight): the
last stage (annotate) *releases* each frame when it is done with it, a cumulative count
in the ring's header (a stream's frames reach it in order), and wakes the source through
a FIFO. A source with every slot taken waits, as it waited on a full socket before: a
file loses nothing, a camera's decode queue drops its oldest frames meanwhile (counted,
and seen by the degrade ladder). A live source whose ring stays full for
:data:`RENEW_S` (frames lost with a restarted stage, which nothing will release)
starts a fresh ring and removes the old one's files; frames still held in the old one
keep their memory until the stages drop them, so nothing in flight is overwritten. Each
slot also records the sequence number it holds, so a reference to a frame that was
overwritten is refused (a :class:`WireError`), never read as another frame.

Across hosts (``tcp://``) frames travel inside the messages, as before: a stage started
without ``--frames-dir`` refuses a reference. Linux only (``/dev/shm``, FIFOs); where it
is missing or full the run carries frames inside the messages and says so once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import select
import stat
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.messages import WireError

log = logging.getLogger(__name__)

SHM_PARENT = Path("/dev/shm")
PREFIX = "gimefive-frames-"
MAGIC = 0x47354652494E4731  # "G5FRING1"
HEADER_BYTES = 4096  # magic, slots, slot bytes, released; then each slot's sequence number
_MAGIC, _SLOTS, _SLOT_BYTES, _RELEASED = range(4)
_SEQS = 8  # int64 index where the slots' sequence numbers start
MAX_SLOTS = (HEADER_BYTES // 8) - _SEQS
#: frames a live stream may have in flight: about what its socket queues held before
LIVE_SLOTS = 6
#: a file's frames in flight (plus a detector batch, which holds frames back)
FILE_SLOTS = 16
#: the most shared memory one stream's ring may take (a 4K stream gets fewer slots)
MAX_RING_BYTES = 256 << 20
#: a live ring full this long without a release: its frames were lost (a stage
#: restarted); the source starts a fresh ring
RENEW_S = 3.0
RING_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
#: the source stage's timer of its waits for a free slot (blocked, not busy: StageRunner)
RING_WAIT = "ring_wait"


class SharedImage(np.ndarray):
    """An image that lies in a ring slot; ``ref`` = (ring, slot, seq) says where, so a
    stage that passes the image on passes the reference. Views and results of the image
    are plain data (``ref`` None): they travel inside the message."""

    ref: tuple[str, int, int] | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.ref = None


def ring_slots(frame_bytes: int, live: bool, held: int = 0) -> int:
    """Slots for a stream of ``frame_bytes`` frames; ``held``: frames a stage may hold
    back (a detector batch), on top."""
    wanted = (LIVE_SLOTS if live else FILE_SLOTS) + held
    return max(2, min(wanted, MAX_SLOTS, MAX_RING_BYTES // max(1, frame_bytes)))


def _ring_path(directory: Path, name: str, suffix: str) -> Path:
    return directory / f"{name}{suffix}"


def _map(fd: int, size: int) -> tuple[mmap.mmap, np.ndarray]:
    memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return memory, np.frombuffer(memory, np.int64, HEADER_BYTES // 8)


def _slot_image(memory: mmap.mmap, name: str, slot: int, seq: int, slot_bytes: int,
                shape: tuple[int, ...] | list[int], size: int) -> SharedImage:
    """The ``shape`` image in ``slot`` of a mapped ring, knowing its place."""
    start = HEADER_BYTES + slot * slot_bytes
    shared = np.frombuffer(memory, np.uint8, size, start).reshape(shape).view(SharedImage)
    shared.ref = (name, slot, seq)
    return shared


def ring_name(stream: str, number: int) -> str:
    """The name of a stream's ``number``-th ring made by this process: STREAM-PID_N."""
    return f"{stream}-{os.getpid()}_{number}"


def _stream(name: str) -> str:
    """The stream a ring is of (:func:`ring_name`)."""
    return name.rpartition("-")[0]


def remove_rings(directory: Path, stream: str) -> None:
    """Remove every ring file of ``stream`` in ``directory`` (a restarted source's
    predecessors: that process is gone)."""
    mine = re.compile(re.escape(stream) + r"-\d+_\d+\.(ring|wake)")
    for path in directory.iterdir():
        if mine.fullmatch(path.name):
            path.unlink(missing_ok=True)


class FrameRing:
    """The source's side: one ring per stream, written in order, slot = seq % slots."""

    def __init__(self, directory: Path, name: str, slots: int, slot_bytes: int) -> None:
        if not RING_NAME.fullmatch(name) or not 2 <= slots <= MAX_SLOTS or slot_bytes < 1:
            raise ValueError(f"ring {name!r}: {slots} slots of {slot_bytes} bytes")
        self.name, self.slots, self.slot_bytes = name, slots, slot_bytes
        self.path = _ring_path(directory, name, ".ring")
        self.wake_path = _ring_path(directory, name, ".wake")
        self.written = 0
        self.memory = self.wake_fd = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            # tmpfs allocates pages when first touched; a full /dev/shm would then kill
            # the process (SIGBUS). Reserving them now fails here, with ENOSPC, instead.
            os.posix_fallocate(fd, 0, HEADER_BYTES + slots * slot_bytes)
            self.memory, self.header = _map(fd, HEADER_BYTES + slots * slot_bytes)
            self.header[[_MAGIC, _SLOTS, _SLOT_BYTES, _RELEASED]] = \
                (MAGIC, slots, slot_bytes, 0)
            self.header[_SEQS:_SEQS + slots] = -1
            os.mkfifo(self.wake_path, 0o600)
            # read and write ends both here: the FIFO never reports a hang-up, whichever
            # annotate process comes and goes
            self.wake_fd = os.open(self.wake_path, os.O_RDWR | os.O_NONBLOCK)
        except BaseException:
            self.close()
            self.remove()
            raise
        finally:
            os.close(fd)
        self.poller = select.poll()
        self.poller.register(self.wake_fd, select.POLLIN)

    @property
    def in_flight(self) -> int:
        """Frames written and not yet released."""
        return self.written - int(self.header[_RELEASED])

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for a free slot; True when there is one."""
        if self.in_flight < self.slots:
            return True
        if self.poller.poll(max(0, int(timeout_s * 1000))):
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_fd, 4096)  # the wake-ups so far; the count is the truth
        return self.in_flight < self.slots

    def put(self, image: np.ndarray) -> SharedImage | None:
        """Copy ``image`` into the next slot (call when :meth:`wait` said one is free);
        None when it is bigger than a slot (a camera that came back larger)."""
        if image.nbytes > self.slot_bytes or self.in_flight >= self.slots:
            return None
        seq = self.written
        slot = seq % self.slots
        shared = _slot_image(self.memory, self.name, slot, seq, self.slot_bytes,
                             image.shape, image.nbytes)
        shared[...] = image
        self.header[_SEQS + slot] = seq
        self.written += 1
        return shared

    def remove(self) -> None:
        """Remove the ring's files (stages that mapped it keep their mapping)."""
        for path in (self.path, self.wake_path):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap the ring. Its files stay (:meth:`remove`): a stage may not have opened
        them yet (the frames of a short file, still in flight); the run's folder goes
        when the run ends, and a restarted source removes its predecessor's."""
        if self.wake_fd is not None:
            os.close(self.wake_fd)
            self.wake_fd = None
        if self.memory is not None:
            self.header = None
            with contextlib.suppress(BufferError):  # a frame still referenced: the
                self.memory.close()  # mapping goes with the process
            self.memory = None


class _OpenRing:
    """A ring as a reading stage maps it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.wake_fd: int | None = None
        path = _ring_path(directory, name, ".ring")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise WireError(f"frame in shared memory: ring {name!r} cannot be opened "
                            f"({os.strerror(exc.errno or errno.EIO)})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() \
                    or st.st_size < HEADER_BYTES:
                raise WireError(f"frame in shared memory: {name!r} is not a ring")
            self.memory, self.header = _map(fd, st.st_size)
        finally:
            os.close(fd)
        magic, slots, slot_bytes = (int(v) for v in self.header[:_RELEASED])
        if magic != MAGIC or not 2 <= slots <= MAX_SLOTS or slot_bytes < 1 \
                or HEADER_BYTES + slots * slot_bytes > st.st_size:
            self.close()
            raise WireError(f"frame in shared memory: {name!r} is not a ring")
        self.name, self.slots, self.slot_bytes = name, slots, slot_bytes
        self.wake_path = _ring_path(directory, name, ".wake")

    def image(self, slot: int, seq: int, shape: list[int]) -> SharedImage:
        size = int(np.prod(shape))
        if not 0 <= slot < self.slots or size > self.slot_bytes:
            raise WireError(f"frame in shared memory: slot {slot} of {size} bytes is not in "
                            f"ring {self.name!r} ({self.slots} slots of {self.slot_bytes})")
        if int(self.header[_SEQS + slot]) != seq:
            raise WireError(f"frame in shared memory: frame {seq} of ring {self.name!r} "
                            f"is no longer in its slot")
        shared = _slot_image(self.memory, self.name, slot, seq, self.slot_bytes, shape, size)
        shared.flags.writeable = False  # the source's frame: no stage draws on it
        return shared

    def release(self, seq: int) -> None:
        """Every frame up to ``seq`` is done with; wake the source."""
        if seq + 1 <= int(self.header[_RELEASED]):
            return
        self.header[_RELEASED] = seq + 1
        try:
            if self.wake_fd is None:
                self.wake_fd = os.open(self.wake_path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(self.wake_fd, b"\0")
        except OSError:  # full (wake-ups pending) or the source is gone: nothing to wake
            pass

    def close(self) -> None:
        if self.wake_fd is not None:
            os.close(self.wake_fd)
            self.wake_fd = None
        self.header = None
        with contextlib.suppress(BufferError):  # frames still referenced: the mapping
            self.memory.close()  # goes when they do


class SharedFrames:
    """A reading stage's side: the rings of a run's frames folder, mapped as frames
    refer to them (at most :attr:`MAX_OPEN`, least recently used closed first)."""

    MAX_OPEN = 512  # above a monitor's most cameras (256), with room for restarts

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.rings: OrderedDict[str, _OpenRing] = OrderedDict()

    def _ring(self, name: Any) -> _OpenRing:
        if not isinstance(name, str) or not RING_NAME.fullmatch(name):
            raise WireError(f"frame in shared memory: ring name {name!r:.40} is not valid")
        ring = self.rings.get(name)
        if ring is None:
            ring = _OpenRing(self.directory, name)
            self.forget(_stream(name))  # a stream's new ring: the old one's memory goes
            self.rings[name] = ring
            while len(self.rings) > self.MAX_OPEN:
                self.rings.popitem(last=False)[1].close()
        self.rings.move_to_end(name)
        return ring

    def image(self, spec: dict[str, Any], shape: list[int]) -> SharedImage:
        """The frame a (validated-shape) array spec refers to."""
        slot, seq = spec["slot"], spec["seq"]
        if type(slot) is not int or type(seq) is not int or seq < 0:
            raise WireError(f"frame in shared memory: slot and seq expected integers, got "
                            f"{slot!r:.20}, {seq!r:.20}")
        return self._ring(spec["ring"]).image(slot, seq, shape)

    def release(self, image: Any) -> None:
        """Done with ``image``: when it lies in a ring, free its slot (and earlier ones)."""
        ref = getattr(image, "ref", None)
        if ref is not None:
            ring = self.rings.get(ref[0])
            if ring is not None:
                ring.release(ref[2])

    def forget(self, stream: str) -> None:
        """The stream ended: its rings' mappings go (once no frame of theirs is held)."""
        for name in [n for n in self.rings if _stream(n) == stream]:
            self.rings.pop(name).close()

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


@contextlib.contextmanager
def frames_dir(enabled: bool = True) -> Iterator[Path | None]:
    """A private folder (0700) on ``/dev/shm`` for a run's rings, removed on exit (those
    of runs that died first); None, with one log line, where there is no usable
    ``/dev/shm``: the frames then travel inside the messages."""
    if not enabled:
        yield None
        return
    if not (SHM_PARENT.is_dir() and os.access(SHM_PARENT, os.W_OK | os.X_OK)):
        log.info("no writable %s: frames travel inside the messages", SHM_PARENT)
        yield None
        return
    from gimefive.pipeline.transport import private_ipc_dir

    with private_ipc_dir(PREFIX, parent=SHM_PARENT) as directory:
        yield directory
