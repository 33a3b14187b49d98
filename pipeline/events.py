"""Emotion events per track: appeared, label changed, left; to a JSON-lines file and MQTT.

A frame record says what every face shows now; an event says what changed, which is what
a home-automation flow (Home Assistant, Node-RED) wants to react to. The annotate stage
feeds each frame's tracked faces to an :class:`EventTracker` (pure, bounded, one per
stage, all cameras), which turns them into events:

* ``appeared``: a track id seen for the first time on that camera;
* ``label_changed``: the track's shown label changed (the tracker's smoothed label,
  after hysteresis: no event per noisy frame);
* ``left``: the track was not seen for ``gap_frames`` frames of its camera, or its
  camera's stream ended, or the run stopped.

Each event is one JSON object: ``event``, ``camera``, ``track_id``, ``time`` (UTC, ISO
8601: the frame's wall-clock time when the record carries one, else when the event was
made), ``frame``, ``label``, ``confidence`` (and ``previous_label`` for a change).

:class:`EventsSink` (kind ``events`` of :data:`gimefive.pipeline.sinks.SINKS`) writes
them to a file and/or hands them to :class:`MqttPublisher`, which publishes with QoS 1
through paho-mqtt's own network thread: a broker that goes away is reconnected to in the
background, events made meanwhile wait in paho's bounded queue (the overflow is dropped
and counted), and the pipeline never waits on the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.sinks import Sink
from gimefive.pipeline.wallclock import utc_fields, utc_iso

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS
from gimefive.urls import check_env, expand_env, redact_url

log = logging.getLogger("gimefive.events")
#: frames of its camera a track may go unseen before it has ``left``
GAP_FRAMES = 30
#: tracks followed at once, all cameras (the oldest beyond it is said to have left)
MAX_TRACKS = 1000
#: events waiting for the broker (an outage); beyond it they are dropped and counted
MAX_QUEUED = 10000


@dataclass
class _Track:
    label: str
    confidence: float
    seen: int  # the camera's frame count when the track was last seen


def now_iso() -> str:
    """Now, UTC ISO 8601 (as the records' ``utc``)."""
    return utc_iso(time.time())


class EventTracker:
    """Per-track events from each frame's faces; memory bounded by ``max_tracks``.

    Frames are counted per camera (not by frame number, which jumps after a restart or
    dropped frames), so ``gap_frames`` means frames this tracker saw of that camera.
    """

    def __init__(self, gap_frames: int = GAP_FRAMES, max_tracks: int = MAX_TRACKS) -> None:
        if gap_frames < 1 or max_tracks < 1:
            raise ValueError("gap_frames and max_tracks must be at least 1")
        self.gap_frames, self.max_tracks = gap_frames, max_tracks
        #: camera -> track id -> track, least recently seen first
        self.tracks: dict[str, OrderedDict[int, _Track]] = {}
        self.frames: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self.tracks.values())

    def update(self, camera: str, faces: Iterable[tuple[int, str, float]], when: str,
               frame: int | None = None) -> list[dict[str, Any]]:
        """One frame of ``camera``: its faces as (track id, label, confidence)."""
        n = self.frames[camera] = self.frames.get(camera, 0) + 1
        tracks = self.tracks.setdefault(camera, OrderedDict())
        base = {"camera": camera, "time": when, "frame": frame}
        events = []
        for track_id, label, confidence in faces:
            track = tracks.get(track_id)
            if track is None:
                tracks[track_id] = _Track(label, confidence, n)
                events.append(_event("appeared", base, track_id, tracks[track_id]))
                continue
            previous = track.label
            track.label, track.confidence, track.seen = label, confidence, n
            tracks.move_to_end(track_id)
            if label != previous:
                events.append(_event("label_changed", base, track_id, track,
                                     previous_label=previous))
        while tracks and n - next(iter(tracks.values())).seen >= self.gap_frames:
            track_id, track = tracks.popitem(last=False)
            events.append(_event("left", base, track_id, track, reason="gone"))
        return events + self._evict(base)

    def _evict(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Beyond ``max_tracks``: the least recently seen tracks (any camera) leave."""
        events = []
        while len(self) > self.max_tracks:
            camera = min((c for c in self.tracks if self.tracks[c]),
                         key=lambda c: next(iter(self.tracks[c].values())).seen
                         - self.frames[c])
            track_id, track = self.tracks[camera].popitem(last=False)
            events.append(_event("left", base | {"camera": camera}, track_id, track,
                                 reason="evicted"))
        return events

    def finish(self, camera: str | None, when: str, reason: str = "ended"
               ) -> list[dict[str, Any]]:
        """Every track of ``camera`` (None: of all cameras) leaves: its stream ended."""
        events = []
        for cam in [camera] if camera is not None else list(self.tracks):
            tracks = self.tracks.pop(cam, OrderedDict())
            self.frames.pop(cam, None)
            base = {"camera": cam, "time": when, "frame": None}
            events += [_event("left", base, tid, t, reason=reason) for tid, t in tracks.items()]
        return events


def _event(kind: str, base: dict[str, Any], track_id: int, track: _Track, **extra
           ) -> dict[str, Any]:
    return {"event": kind, **base, "track_id": int(track_id), "label": track.label,
            "confidence": round(float(track.confidence), 4), **extra}


def frame_faces(msg: TrackedMsg) -> list[tuple[int, str, float]]:
    """(track id, shown label, its smoothed probability) of each face, as the JSON has."""
    out = []
    for i in range(len(msg.boxes)):
        label = int(msg.labels[i])
        out.append((int(msg.track_ids[i]), EMOTIONS[label], float(msg.smoothed[i, label])))
    return out


def frame_time(msg: TrackedMsg) -> str:
    """The frame's UTC time as its JSON record has it (a live frame: from the camera or
    its arrival), else now: a file's frames have only their pts."""
    return utc_fields(msg.extra).get("utc") or now_iso()


# ----------------------------------------------------------------------------- MQTT

@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    topic: str
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[USER[:PASS]@]HOST[:PORT]/TOPIC`` (port 1883); one clear line otherwise."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 1883
    except ValueError:
        raise GimefiveError(f"--mqtt: bad port in {shown}") from None
    topic = unquote(parts.path.lstrip("/"))
    if parts.scheme != "mqtt" or not parts.hostname or not topic:
        raise GimefiveError(f"--mqtt must be mqtt://HOST[:PORT]/TOPIC, got {shown}")
    if parts.query or parts.fragment or "#" in url or any(c in topic for c in "+\0"):
        raise GimefiveError(f"--mqtt topic must not hold + # ? or NUL, got {shown}")
    return MqttTarget(parts.hostname, port, topic,
                      unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None)


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise GimefiveError("--mqtt needs paho-mqtt: pip install 'gimefive[mqtt]'") from None
    return mqtt


def check_events_outputs(events: str | None, mqtt: str | None) -> None:
    """Before any stage starts: the events file is writable, the broker URL well formed
    and paho-mqtt installed (each failure one line, the URL's password hidden)."""
    if events:
        from gimefive.pipeline.probe import check_output

        check_output(events, "events output")
    if mqtt:
        check_env(mqtt)
        parse_mqtt_url(mqtt)
        _paho()


class MqttPublisher:
    """Publishes events (QoS 1) without ever blocking the caller.

    paho's network thread (``loop_start``) connects in the background and reconnects
    with capped backoff when the broker goes away; :meth:`publish` only puts the event in
    paho's queue (at most ``max_queued``; beyond it the event is dropped and counted).
    """

    def __init__(self, url: str, max_queued: int = MAX_QUEUED, client_id: str = "") -> None:
        mqtt = _paho()
        # ${NAME} expanded only here, where the broker is connected to (gimefive.urls)
        self.target, self.shown = parse_mqtt_url(expand_env(url)), redact_url(url)
        self.published = self.dropped = 0
        self.last = None  # the newest message's info: close() waits for it a little
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if self.target.username:
            self.client.username_pw_set(self.target.username, self.target.password)
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        self.client.connect_async(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        log.info("MQTT %s: connected (%s)", self.shown, reason)

    def _on_disconnect(self, client, userdata, flags, reason, properties=None) -> None:
        log.warning("MQTT %s: disconnected (%s); reconnecting", self.shown, reason)

    def publish(self, event: dict[str, Any]) -> bool:
        """Queue one event; False (and counted) when paho's queue is full."""
        payload = json.dumps(event, separators=(",", ":"))
        info = self.client.publish(self.target.topic, payload, qos=1)
        if info.rc == self._queue_full:
            self.dropped += 1
            return False
        self.published, self.last = self.published + 1, info
        return True

    def close(self, wait_s: float = 2.0) -> None:
        """Give the queued events ``wait_s`` to reach a connected broker, then stop."""
        if self.last is not None and self.client.is_connected():
            try:
                self.last.wait_for_publish(wait_s)
            except (RuntimeError, ValueError):  # not connected after all
                pass
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------- sink

class EventsSink(Sink):
    """The annotate stage's events output: ``target`` a JSON-lines file (appended; ""
    for none) and/or ``mqtt`` a broker URL."""

    def __init__(self, target: str | Path, mqtt: str | None = None,
                 gap_frames: int = GAP_FRAMES) -> None:
        self.tracker = EventTracker(gap_frames)
        self.file = self.mqtt = None
        self.written = 0
        if target:
            try:  # closed in close()
                self.file = open(target, "a", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise GimefiveError(f"cannot write {target}: {exc.strerror}") from None
        if mqtt:
            self.mqtt = MqttPublisher(mqtt)

    def write(self, msg: TrackedMsg, image=None) -> None:
        self.emit(self.tracker.update(msg.stream, frame_faces(msg), frame_time(msg),
                                      msg.index))

    def end_stream(self, stream: str) -> None:
        """The stream ended: its tracks have left."""
        self.emit(self.tracker.finish(stream, now_iso()))

    def emit(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if self.file is not None:
                self.file.write(json.dumps(event, separators=(",", ":")) + "\n")
            if self.mqtt is not None:
                self.mqtt.publish(event)
            self.written += 1

    def counters(self) -> dict[str, int]:
        out = {"events": self.written}
        if self.mqtt is not None and self.mqtt.dropped:
            out["mqtt_dropped"] = self.mqtt.dropped
        return out

    def close(self) -> None:
        try:
            self.emit(self.tracker.finish(None, now_iso(), reason="stopped"))
        finally:
            if self.file is not None:
                self.file.close()
            if self.mqtt is not None:
                self.mqtt.close()
