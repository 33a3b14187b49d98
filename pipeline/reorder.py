"""The input of the stage after replicas: their frames put back together, in order.

Replicas of a stage (:mod:`gimefive.pipeline.replicas`) finish frames in their own time,
so their output reaches the next stage out of order: :class:`ReplicaReceiver` releases
each stream's frames in ``seq`` order (:class:`InOrder`), joins the parts of a frame
where the replicas shared its faces (:func:`join_parts`), and turns the N ends of a
stream (one per replica) into one, after the last of its frames. The stage itself never
sees a replica: it gets one stream, in order, ended once.

What is held while a frame is awaited is bounded per stream. Past the bound a file run
fails with one line (a replica lost the frame, or fell that far behind: with the fixed
turns of ``FanOut`` neither happens); a live run gives the frame up, counts it and goes
on, as it must after a replica crashed with frames in hand.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from typing import Any

import numpy as np
import zmq
from gimefive.pipeline.messages import EndOfStream, Message, StreamLedger, WireError
from gimefive.pipeline.replicas import FACES_KEY, SPLIT, face_arrays, face_count, previous_stage
from gimefive.pipeline.transport import Receiver

from gimefive.errors import GimefiveError

log = logging.getLogger("gimefive.reorder")
#: frames held per stream and replica before a missing one is given up (file: an
#: error). A file's bound is far above what back-pressure lets through (HWM 4 a side
#: plus a batch); a live run (HWM 1) gives up on a lost frame within about a second.
HELD_PER_REPLICA = 128
LIVE_HELD_PER_REPLICA = 16
#: a live run also gives a missing frame up once the frames after it have waited this
#: long: with frames in shared memory a camera has only a few in flight
#: (shared_frames.LIVE_SLOTS), fewer than the count above, so that alone would never come
LIVE_WAIT_S = 1.0


class InOrder:
    """Releases each stream's messages in ``seq`` order (0, 1, 2, ...), holding those that
    come early, at most ``limit`` per stream.

    ``live``: past the limit the missing messages are given up (:attr:`skipped`) and one
    that comes after that is dropped (:attr:`late`); a place at 0, or one below ``limit``
    while the stream is past twice that, is a sender numbering from 0 again (a restarted
    stage, its first frames in any order): the stream starts again. Otherwise a repeated
    place is a :class:`WireError` (the message is malformed) and passing the limit an
    error.
    """

    def __init__(self, limit: int, live: bool = False) -> None:
        self.limit, self.live = limit, live
        self.next: dict[str, int] = {}
        self.held: dict[str, dict[int, Message | None]] = {}
        self.released: dict[str, int] = {}
        self.waiting: dict[str, float] = {}  # since when a stream's held frames wait
        self.most_held = self.skipped = self.late = self.restarts = 0

    def add(self, msg: Message) -> list[Message]:
        """Take ``msg``; return the messages now due, in order."""
        stream, seq = msg.stream, msg.seq
        held, out = self.held.setdefault(stream, {}), []
        if seq < self.next.get(stream, 0) or seq in held:
            if not self.live:
                raise WireError(f"{msg.KIND} message: stream {stream!r:.40} place {seq} "
                                f"arrived twice")
            restarted = seq == 0 or seq < self.limit < self.next.get(stream, 0) - self.limit
            if not restarted:
                self.late += 1  # behind what was given up: never out of order
                return []
            self.restarts += 1  # numbered from 0 again (a restarted sender): what is
            out = self.end(stream)  # held goes first
            held = self.held.setdefault(stream, {})
        held[seq] = msg
        out += self._release(stream)
        self.most_held = max(self.most_held, len(held))  # waiting for an earlier one
        if len(held) > self.limit:
            out += self._overflow(stream)
        if self.held[stream]:
            self.waiting.setdefault(stream, time.monotonic())
        else:
            self.waiting.pop(stream, None)
        return out

    def expire(self, wait_s: float) -> list[Message]:
        """Live: the frames of every stream whose held ones have waited ``wait_s`` for a
        missing one, which is given up (as past the limit)."""
        out, now = [], time.monotonic()
        for stream, since in list(self.waiting.items()):
            if now - since >= wait_s and self.held.get(stream):
                out += self._overflow(stream)
                if self.held[stream]:
                    self.waiting[stream] = now
                    continue
            if not self.held.get(stream):
                self.waiting.pop(stream, None)
        return out

    def skip(self, stream: str, seq: int) -> list[Message]:
        """Place ``seq`` will not come (its parts could not be joined): do not wait for it."""
        if seq >= self.next.get(stream, 0):
            self.held.setdefault(stream, {})[seq] = None
        return self._release(stream)

    def end(self, stream: str) -> list[Message]:
        """The stream ended: everything held, in order, gaps and all; its state goes."""
        held = self.held.pop(stream, {})
        self.waiting.pop(stream, None)
        self.next.pop(stream, None)
        out = [held[seq] for seq in sorted(held) if held[seq] is not None]
        self.released[stream] = self.released.get(stream, 0) + len(out)
        return out

    def _release(self, stream: str) -> list[Message]:
        held, seq, out = self.held[stream], self.next.get(stream, 0), []
        while seq in held:
            msg = held.pop(seq)
            if msg is not None:
                out.append(msg)
            seq += 1
        self.next[stream] = seq
        self.released[stream] = self.released.get(stream, 0) + len(out)
        return out

    def _overflow(self, stream: str) -> list[Message]:
        held, expected = self.held[stream], self.next[stream]
        if not self.live:
            raise GimefiveError(f"stream {stream}: {len(held)} frames wait for frame "
                                f"#{expected} from a replica (at most {self.limit}): it was "
                                f"lost, or its replica stalled")
        first = min(held)
        self.skipped += first - expected
        self.next[stream] = first
        return self._release(stream)


def join_parts(parts: list[Message]) -> Message:
    """One frame from the replicas' parts of it (:func:`~replicas.face_part`): the
    per-face arrays joined, faces in their original order, the rest from the first."""
    first, order = parts[0], []
    for part in parts:
        faces = part.extra.get(FACES_KEY)
        if type(part) is not type(first) or part.index != first.index or not (
                isinstance(faces, list) and len(faces) == face_count(part)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in faces)):
            raise WireError(f"{first.KIND} message: stream {first.stream!r:.40} frame "
                            f"{first.index}: a replica's part does not fit the others")
        order += faces
    if sorted(order) != list(range(len(order))):
        raise WireError(f"{first.KIND} message: stream {first.stream!r:.40} frame "
                        f"{first.index}: the replicas' faces do not add up to one frame")
    position = np.argsort(order)
    arrays = {name: getattr(first, name) for name in first.ARRAYS}
    for name in face_arrays(first):
        values = [getattr(part, name) for part in parts]
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            raise WireError(f"{first.KIND} message: frame {first.index}: array {name!r} "
                            f"in some replicas' parts only")
        rows = [v for v in values if len(v)] or values[:1]
        arrays[name] = np.concatenate(rows)[position]
    fields = {name: getattr(first, name) for name in first.FIELDS}
    fields["extra"] = {k: v for k, v in first.extra.items() if k != FACES_KEY}
    return type(first)(**fields, **arrays)


class ReplicaLedger(StreamLedger):
    """:class:`StreamLedger` for a stream sent by ``senders`` replicas: each sends its own
    end-of-stream, claiming the frames it sent; together they claim all that arrived.
    A claim beyond what arrived, a fourth end of three, or a frame after the last end is
    refused (counted as malformed)."""

    def __init__(self, streams: int, senders: int) -> None:
        super().__init__(streams)
        self.senders = senders
        self.claims: dict[str, list[int]] = {}

    def check(self, msg: Message) -> None:
        if self.limit <= 0 or not isinstance(msg, EndOfStream):
            return super().check(msg)
        stream = msg.stream
        if stream not in self.received and len(self.received) >= self.limit:
            raise WireError(f"eos message: stream {stream!r:.40} is not one of this run's "
                            f"{self.limit} stream(s)")
        if stream in self.ended:
            raise WireError(f"eos message: stream {stream!r:.40} already ended (a repeated "
                            f"end-of-stream)")
        claims, received = self.claims.setdefault(stream, []), self.received.get(stream, 0)
        claimed = sum(claims) + msg.frames
        last = len(claims) + 1 == self.senders
        if claimed > received or (last and claimed != received):
            raise WireError(f"end-of-stream of stream {stream!r:.40} claims {claimed} frames "
                            f"from {len(claims) + 1} of {self.senders} replicas, {received} "
                            f"arrived")
        claims.append(msg.frames)
        self.received[stream] = received
        if last:
            self.ended.add(stream)


class ReplicaReceiver(Receiver):
    """The input of a stage after ``upstream`` replicas (``split``: how they shared the
    stream, :data:`~replicas.SPLIT`): messages come out as from one sender, in order.

    ``counters`` (the stage's) get ``reorder_held_max`` and, when it happens,
    ``replica_frames_lost`` (a stream ended without them), ``replica_skipped`` and
    ``replica_late`` (a live run gave frames up), ``replica_restarts``.
    """

    def __init__(self, sock: zmq.Socket, expect: tuple[type[Message], ...], streams: int,
                 upstream: int, split: str, counters: dict[str, Any]) -> None:
        super().__init__(sock, expect)
        self.ledger = ReplicaLedger(streams, upstream)
        self.upstream, self.split, self.counters = upstream, split, counters
        self.live = streams == 0
        self.limit = (LIVE_HELD_PER_REPLICA if self.live else HELD_PER_REPLICA) * upstream
        self.order = InOrder(self.limit, self.live)
        self.parts: dict[tuple[str, int, int], list[Message]] = {}  # (stream, seq, index)
        self.ends: dict[str, list[EndOfStream]] = {}
        self.ready: deque[Message] = deque()
        self.most_parts = 0  # frames waiting for a replica's part, at most

    def recv(self, timeout_ms: float | None) -> Message | None:
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while not self.ready:
            wait = None if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000)
            if self.live and self.order.waiting:  # look at the held frames' wait often
                wait = LIVE_WAIT_S * 250 if wait is None else min(wait, LIVE_WAIT_S * 250)
            msg = super().recv(wait)
            if self.live and self.order.waiting:
                self.ready.extend(self.order.expire(LIVE_WAIT_S))
            if msg is None:
                if self.ready:
                    break
                if deadline is None or time.monotonic() < deadline:
                    continue
                return None
            try:
                self._take(msg)
            except WireError as exc:
                self.malformed += 1
                self.last_error = str(exc)
            self._count()
        return self.ready.popleft()

    def _take(self, msg: Message) -> None:
        if isinstance(msg, EndOfStream):
            self._end(msg)
            return
        if msg.seq is None:
            raise WireError(f"{msg.KIND} message: from a replica without its place ('seq')")
        if self.split == "tracks":
            msg = self._gather(msg)
            if msg is None:
                return
        self.ready.extend(self.order.add(msg))

    def _gather(self, msg: Message) -> Message | None:
        """The whole frame once every replica's part of it is here (keyed by index too:
        after a live restart the same place can come again for another frame)."""
        key = (msg.stream, msg.seq, msg.index)
        parts = self.parts.setdefault(key, [])
        parts.append(msg)
        if len(parts) < self.upstream:
            waiting = [k for k in self.parts if k[0] == msg.stream]
            self.most_parts = max(self.most_parts, len(waiting))
            if len(waiting) > self.limit:
                self._give_up(waiting[0])
            return None
        del self.parts[key]
        try:
            return join_parts(parts)
        except WireError:
            self.ready.extend(self.order.skip(msg.stream, msg.seq))
            raise

    def _give_up(self, key: tuple[str, int, int]) -> None:
        if not self.live:
            raise GimefiveError(f"stream {key[0]}: more than {self.limit} frames wait for a "
                                f"replica's part of frame {key[2]}: it was lost, or its "
                                f"replica stalled")
        del self.parts[key]
        self.order.skipped += 1
        self.ready.extend(self.order.skip(key[0], key[1]))

    def _end(self, eos: EndOfStream) -> None:
        """The last of the N ends of a stream: its held frames, then one end-of-stream
        counting the frames this stage got."""
        ends = self.ends.setdefault(eos.stream, [])
        ends.append(eos)
        if len(ends) < self.upstream:
            return
        del self.ends[eos.stream]
        for key in [k for k in self.parts if k[0] == eos.stream]:
            del self.parts[key]  # parts whose siblings never came
        self.ready.extend(self.order.end(eos.stream))
        released = self.order.released.pop(eos.stream, 0)
        claims = [e.frames for e in ends]
        sent = sum(claims) if self.split == "frames" else max(claims)
        if sent > released:
            self.counters["replica_frames_lost"] = \
                self.counters.get("replica_frames_lost", 0) + sent - released
            log.warning("stream %s: %d of %d frames did not come back from the replicas",
                        eos.stream, sent - released, sent)
        worst = max(ends, key=lambda e: EndOfStream.REASONS.index(e.reason))
        self.ready.append(dataclasses.replace(worst, frames=released))

    def _count(self) -> None:
        order, c = self.order, self.counters
        c["reorder_held_max"] = max(c.get("reorder_held_max", 0), order.most_held,
                                    self.most_parts)
        for key, value in (("replica_skipped", order.skipped), ("replica_late", order.late),
                           ("replica_restarts", order.restarts)):
            if value:
                c[key] = value


def input_receiver(sock: zmq.Socket, expect: tuple[type[Message], ...], streams: int,
                   upstream: int, stage: str, counters: dict[str, Any]) -> Receiver:
    """Stage ``stage``'s input: a plain :class:`Receiver`, or after ``upstream`` > 1
    replicas a :class:`ReplicaReceiver`."""
    if upstream <= 1:
        return Receiver(sock, expect, streams)
    before = previous_stage(stage)
    if before not in SPLIT:
        raise GimefiveError(f"stage {stage}: --upstream {upstream}, but the stage before it "
                            f"({before}) cannot run as replicas (only {', '.join(SPLIT)})")
    return ReplicaReceiver(sock, expect, streams, upstream, SPLIT[before], counters)
