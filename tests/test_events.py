"""Emotion events per track (issue 17, item 3): appeared, label changed, left.

The tracker is tested alone (pure, no processes); the MQTT publisher against a real
broker (Debian's ``mosquitto``, started here on loopback), including a broker restart:
events published while the broker is down wait in paho's queue and arrive after it is
back. Run with ``-s`` to see the events received across the restart.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from gimefive.pipeline.events import EventTracker, parse_mqtt_url
from rtsp_server import free_port
from waiting import wait_until

from gimefive.errors import GimefiveError

T = "2026-12-01T12:00:00.000+00:00"


def kinds(events):
    return [(e["event"], e["track_id"], e["label"]) for e in events]


# ------------------------------------------------------------------------ tracker

def test_appeared_once_then_label_changes_only_when_the_label_does():
    tracker = EventTracker(gap_frames=3)
    first = tracker.update("door", [(1, "happy", 0.8)], T, frame=0)
    assert kinds(first) == [("appeared", 1, "happy")]
    assert first[0]["camera"] == "door" and first[0]["time"] == T
    assert first[0]["confidence"] == 0.8 and first[0]["frame"] == 0
    # the same label, another confidence: no event
    assert tracker.update("door", [(1, "happy", 0.6)], T, frame=1) == []
    changed = tracker.update("door", [(1, "sad", 0.7)], T, frame=2)
    assert kinds(changed) == [("label_changed", 1, "sad")]
    assert changed[0]["previous_label"] == "happy"
    assert tracker.update("door", [(1, "sad", 0.9)], T, frame=3) == []


def test_left_after_the_gap_and_per_camera():
    tracker = EventTracker(gap_frames=3)
    tracker.update("door", [(1, "happy", 0.8)], T)
    tracker.update("hall", [(1, "angry", 0.5)], T)  # the same id on another camera
    assert tracker.update("door", [], T) == []
    assert tracker.update("door", [], T) == []
    left = tracker.update("door", [], T)  # 3 frames of door without track 1
    assert kinds(left) == [("left", 1, "happy")] and left[0]["camera"] == "door"
    assert len(tracker) == 1  # hall's track 1 is still there: hall had no frames
    # a track seen again within the gap never leaves
    tracker.update("hall", [], T)
    tracker.update("hall", [(1, "angry", 0.5)], T)
    assert tracker.update("hall", [], T) == [] and tracker.update("hall", [], T) == []


def test_finish_makes_every_track_of_the_stream_leave():
    tracker = EventTracker(gap_frames=100)
    tracker.update("door", [(1, "happy", 0.8), (2, "fear", 0.4)], T)
    tracker.update("hall", [(7, "sad", 0.6)], T)
    assert kinds(tracker.finish("door", T)) == [("left", 1, "happy"), ("left", 2, "fear")]
    assert kinds(tracker.finish(None, T)) == [("left", 7, "sad")]
    assert len(tracker) == 0 and tracker.frames == {}


def test_bounded_the_oldest_tracks_leave():
    tracker = EventTracker(gap_frames=10**6, max_tracks=5)
    events = []
    for i in range(50):
        events += tracker.update("door", [(i, "neutral", 0.5)], T)
        assert len(tracker) <= 5
    left = [e for e in events if e["event"] == "left"]
    assert [e["track_id"] for e in left] == list(range(45))
    assert {e["reason"] for e in left} == {"evicted"}


def test_mqtt_url_checked_and_credentials_redacted():
    target = parse_mqtt_url("mqtt://bob:S3cret@broker.lan:1884/home/faces")
    assert (target.host, target.port, target.topic) == ("broker.lan", 1884, "home/faces")
    assert (target.username, target.password) == ("bob", "S3cret")
    assert parse_mqtt_url("mqtt://h/t").port == 1883
    for bad in ("mqtt://bob:S3cret@h:99999/t", "http://bob:S3cret@h/t",
                "mqtt://bob:S3cret@h/", "mqtt://bob:S3cret@h/a/#"):
        with pytest.raises(GimefiveError) as err:
            parse_mqtt_url(bad)
        assert "S3cret" not in str(err.value) and "***" in str(err.value)


def test_without_paho_mqtt_is_one_line(monkeypatch):
    import sys

    from gimefive.pipeline.events import check_events_outputs

    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # import fails
    with pytest.raises(GimefiveError, match=r"^--mqtt needs paho-mqtt: pip install "):
        check_events_outputs(None, "mqtt://127.0.0.1/t")


def test_publisher_never_waits_and_counts_what_its_queue_drops():
    """No broker at all: publish returns at once; beyond the bounded queue, dropped."""
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed")
    from gimefive.pipeline.events import MqttPublisher

    pub = MqttPublisher(f"mqtt://127.0.0.1:{free_port()}/t", max_queued=3)
    try:
        assert [pub.publish({"n": n}) for n in range(5)] == [True] * 3 + [False] * 2
        assert (pub.published, pub.dropped) == (3, 2)
    finally:
        pub.close()


# ------------------------------------------------------------ sink and monitor

def test_events_sink_from_the_sink_factory(tmp_path):
    """A job with events gets the events sink; a frame's UTC time (live) is the event's."""
    from gimefive.pipeline.config import AnnotateConfig
    from gimefive.pipeline.sinks import open_sinks, sink_specs
    from test_outputs import tracked

    path = tmp_path / "events.jsonl"
    (sink,) = open_sinks(sink_specs({"events": str(path)}, AnnotateConfig()))
    live = tracked(0, 0, faces=2)
    live.extra["utc"], live.extra["utc_source"] = 1796130000.25, "rtcp"
    sink.write(live, None)
    sink.write(tracked(1, 40, faces=1), None)   # track 2 not seen from here on
    sink.end_stream("0")
    sink.close()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert kinds(events) == [("appeared", 1, "happiness"), ("appeared", 2, "happiness"),
                             ("left", 2, "happiness"), ("left", 1, "happiness")]
    assert {e["reason"] for e in events[2:]} == {"ended"}
    assert events[0]["time"] == "2026-12-01T13:00:00.250Z" and events[0]["camera"] == "0"
    assert events[0]["frame"] == 0 and events[0]["confidence"] == round(1 / 6, 4)
    assert sink.counters() == {"events": 4}


def test_monitor_bad_broker_url_is_one_line_without_the_password(capsys, tmp_path):
    from test_live_monitor import run_cli

    code, err = run_cli(capsys, "rtsp://127.0.0.1:1/cam", "--events",
                        tmp_path / "e.jsonl", "--mqtt", "mqtt://bob:S3cret@broker/")
    assert code != 0 and "S3cret" not in err
    assert err == ("gimefive: error: --mqtt must be mqtt://HOST[:PORT]/TOPIC, got "
                   "mqtt://bob:***@broker/\n")


# ------------------------------------------------------------------ real broker

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
need_broker = pytest.mark.skipif(
    MOSQUITTO is None, reason="no mosquitto broker (apt-get install mosquitto; "
    "scripts/setup.sh installs it)")


class Broker:
    """mosquitto on 127.0.0.1:PORT with persistence, so that a restart keeps the
    subscriber's session (and the QoS 1 messages queued for it)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        # run as root, mosquitto switches to its own user unless told to stay: it then
        # could not save its persistence file in the test's folder
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"user {user}\npersistence true\n"
                               f"persistence_location {directory}/\n")
        self.log = directory / "mosquitto.log"
        self.proc = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config), "-v"],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: f"port {self.port}" in self.log.read_text(), 10,
                   "mosquitto listening", alive=lambda: self.proc.poll() is None,
                   context=self.log.read_text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # mosquitto saves its persistence file on SIGTERM
            self.proc.wait(10)


class Subscriber:
    """A paho client with a persistent session (clean_session False) on the topic."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[dict] = []
        self.connects = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="gimefive-test-sub", clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, rc, p=None: (
            self._connected(), c.subscribe(topic, qos=1))
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self) -> None:
        self.connects += 1

    def _message(self, client, userdata, msg) -> None:
        with self.lock:
            self.received.append(json.loads(msg.payload))

    def ids(self) -> list[int]:
        with self.lock:
            return [e["frame"] for e in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _event(n: int) -> dict:
    return {"event": "appeared", "camera": "door", "track_id": n, "time": T, "frame": n,
            "label": "happy", "confidence": 0.9}


@pytest.mark.slow
@need_broker
def test_events_reach_a_subscriber_across_a_broker_restart(tmp_path):
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed")
    from gimefive.pipeline.events import MqttPublisher

    broker = Broker(tmp_path)
    broker.start()
    sub = pub = None
    try:
        sub = Subscriber(broker.port, "gimefive/events")
        wait_until(lambda: sub.connects, 10, "subscriber connected")
        pub = MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/gimefive/events",
                            client_id="gimefive-test-pub")
        pub.client.reconnect_delay_set(0.2, 1)  # a fast test; the default is 1..30 s
        for n in range(5):
            assert pub.publish(_event(n))
        wait_until(sub.ids, 10, "events 0-4 received", until=lambda ids: len(ids) >= 5)

        broker.stop()
        wait_until(lambda: not pub.client.is_connected(), 10, "publisher sees the outage")
        for n in range(5, 10):  # queued in paho: the broker is down
            assert pub.publish(_event(n))
        broker.start()  # the same port
        wait_until(sub.ids, 20, "events 5-9 received after the restart",
                   until=lambda ids: set(range(10)) <= set(ids),
                   context=lambda: broker.log.read_text()[-2000:])
        assert sub.connects >= 2 and pub.dropped == 0
        assert "Error" not in broker.log.read_text()  # e.g. its session not saved
        print("\nevents received across the broker restart (frame: event track label):")
        for e in sub.received:
            print(f"  {e['frame']}: {e['event']} {e['track_id']} {e['label']}")
    finally:
        for client in (pub, sub):
            if client is not None:
                client.close()
        broker.stop()


# ------------------------------------------------------------- whole pipeline

@pytest.mark.slow
def test_annotate_writes_appeared_and_left(tmp_path, weights, astronaut_bgr):
    """``gimefive annotate --events``: the one face appears once and leaves at the end."""
    import cv2
    import numpy as np
    from click.testing import CliRunner
    from clips import write_still_clip

    from gimefive.cli import cli

    image = np.full((360, 640, 3), 90, np.uint8)
    image[:, 140:500] = cv2.resize(astronaut_bgr, (360, 360), interpolation=cv2.INTER_AREA)
    clip = write_still_clip(tmp_path / "astronaut.mp4", image, (640, 360), frames=6)
    events_path = tmp_path / "events.jsonl"
    result = CliRunner().invoke(cli, [
        "annotate", str(clip), "--json", str(tmp_path / "faces.jsonl"), "--events",
        str(events_path), "-q", "--weights", str(weights), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    track = events[0]["track_id"]
    assert [e["event"] for e in events if e["event"] != "label_changed"] == ["appeared", "left"]
    assert all(e["track_id"] == track and e["camera"] == "0" for e in events)
    assert events[-1]["reason"] == "ended" and events[0]["frame"] == 0
