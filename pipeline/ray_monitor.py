"""``gimefive monitor --ray auto|ADDRESS``: the cameras spread over a Ray cluster's nodes.

Each camera is one Ray actor (:class:`~gimefive.pipeline.ray_camera.CameraGroup`,
``max_restarts=-1``, ``SPREAD`` scheduling, ``CPUS_PER_CAMERA`` logical CPUs) that runs
the single-machine monitor for that camera on its node. When a node dies, Ray starts
the actor again on a node that has room and the camera goes on from there; nothing of
the lost node is needed.

This process (the *driver*, where the command runs) fetches, about twice a second, what
every camera's monitor wrote (JSON lines, status records, events, log lines) and writes
it here, so the files and the status line look as they do on one machine:

* JSON lines and events are appended to ``--json`` / ``--events`` (and events published
  to ``--mqtt`` from here). After a move the camera's frame numbers jump ahead by at least
  ``RESTART_INDEX_GAP`` (as a restarted camera's do on one machine) and its track ids
  continue after the highest one seen, so no frame or track id is used twice; tracks
  that were open on the lost node get a ``left`` event with ``"reason": "node_lost"``.
* One status record every ``status_every_s`` merges the cameras' latest ones: per
  camera the usual figures (counts summed over its nodes) plus ``node`` and ``moves``;
  per stage ``CAMERA/STAGE``; and ``ray``: per camera its node, address, state
  (``starting``, ``running``, ``lost`` while its actor is being restarted, ``ended``),
  moves and lines lost. While a camera's actor is unreachable the camera shows as down
  (``connected`` false, its outage growing), so the gap is visible.
* The annotated video (``-o``) is written by the camera's node: an ``rtsp://`` push
  works from any node; a file path is a path on that node (a shared file system gives
  one recording, since segment numbers continue after the files already there).

Cameras from a file (``--cameras``) are not supported with ``--ray``. ``${VAR}`` in a
camera URL is checked here and expanded on the camera's node.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import MonitorConfig, format_status, parse_sources
from gimefive.pipeline.probe import check_output, is_live
from gimefive.pipeline.segments import stream_output
from gimefive.pipeline.stages.source import RESTART_INDEX_GAP

from gimefive.config import to_dict
from gimefive.errors import GimefiveError
from gimefive.urls import redact_text

log = logging.getLogger("gimefive.monitor")
POLL_S = 0.5            # seconds between two fetches from one camera
UNREACHABLE_S = 5.0     # a fetch unanswered this long: the camera's node counts as lost
DEAD_AFTER = 3          # fetches failed in a row with ActorDiedError: the actor is gone
CPUS_PER_CAMERA = 1.0   # logical CPUs each camera's actor asks its node for
NO_ROOM_S = 60.0        # a camera not started by then: said once (no node has room?)
STOP_TIMEOUT_S = 90.0   # for every camera's monitor to stop and write its final record
WORKER_STATUS_S = 1.0   # most seconds between a camera monitor's own status records
#: per-camera figures that count up from 0 in each actor: summed over its nodes
CUMULATIVE = ("decoded", "written", "dropped", "reconnects", "faces")
_NEW_STREAM = {"connected": False, "fps_in": None, "fps_out": None, "decoded": 0,
               "written": 0, "dropped": 0, "queue": 0, "in_flight": 0, "reconnects": 0,
               "outage_s": None, "latency_s": None, "faces": 0, "ended": False}


def _check_reachable(address: str) -> None:
    """``HOST:PORT`` must accept a connection: Ray itself retries a dead address for
    minutes before it gives up."""
    import socket

    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise GimefiveError(f"--ray: expected auto or HOST:PORT (the head's GCS address), "
                            f"got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise GimefiveError(f"--ray {address}: no Ray cluster there "
                            f"({exc.strerror or type(exc).__name__})") from None


@dataclass
class _Camera:
    """The driver's view of one camera's actor."""

    sid: str
    actor: Any
    incarnation: str | None = None
    node: str | None = None
    ip: str | None = None
    cursors: dict[str, int] = field(default_factory=dict)
    ref: Any = None               # the fetch in flight
    sent_at: float = 0.0          # when it was asked for
    next_poll: float = 0.0
    lost_at: float | None = None  # wall time the node was found lost (None: reachable)
    died: int = 0                 # fetches failed in a row with ActorDiedError
    moves: int = 0
    ended: str | None = None
    exit: int | None = None
    status: dict | None = None    # the latest status (or final) record of this actor
    base: dict[str, int] = field(default_factory=dict)  # counts of earlier actors
    lines_lost: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=20))  # its last log lines

    def state(self) -> str:
        if self.ended:
            return "ended"
        if self.lost_at is not None:
            return "lost"
        return "running" if self.incarnation else "starting"


class RayMonitor:
    """Runs the cameras on the cluster and gathers their outputs here; see the module
    docstring. :meth:`run` blocks until stopped and returns the final status record."""

    def __init__(self, sources: dict[str, str], cfg: MonitorConfig, stage: AnnotateConfig,
                 address: str, quiet: bool = False, log_dir: str | Path | None = None
                 ) -> None:
        self.sources, self.cfg, self.stage, self.quiet = sources, cfg, stage, quiet
        self.address = address
        self.log_dir = Path(log_dir) if log_dir else None
        self.run_id = uuid.uuid4().hex[:12]
        self.cameras: dict[str, _Camera] = {}
        self.offsets: dict[str, tuple[int, int]] = {}  # camera -> (frame, track id) shift
        self.max_frame: dict[str, int] = {}
        self.max_track: dict[str, int] = {}
        self.open_tracks: dict[str, dict[int, dict]] = {}
        self.outages: list[dict] = []
        self.files: dict[str, Any] = {}
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.last_status = 0.0
        self.warned_waiting = False
        self.metrics = self.mqtt = self.server = None

    # -- start
    def _start(self, ray) -> None:
        from gimefive.pipeline.ray_camera import CameraGroup

        actor_class = ray.remote(num_cpus=CPUS_PER_CAMERA, max_restarts=-1,
                                 max_task_retries=0)(CameraGroup)
        cfg = self.cfg
        monitor = _absolute(cfg) | {"status_every_s": min(cfg.status_every_s,
                                                          WORKER_STATUS_S),
                                    "mqtt": None}  # published from here (and its password)
        pipes = ["status", *(["json"] if cfg.json else []),
                 *(["events"] if cfg.events or cfg.mqtt else [])]
        stage = _absolute(self.stage)
        for sid, url in self.sources.items():
            out = stream_output(monitor["out"], sid, len(self.sources) == 1) \
                if monitor["out"] else None
            actor = actor_class.options(scheduling_strategy="SPREAD").remote(
                self.run_id, sid, {sid: url}, monitor, stage, out, pipes)
            self.cameras[sid] = _Camera(sid, actor)
            self.open_tracks[sid] = {}

    def _open_files(self) -> None:
        cfg = self.cfg
        status = cfg.status_json or (str(Path(cfg.json).with_suffix(".status.jsonl"))
                                     if cfg.json else None)
        for name, path in (("json", cfg.json), ("status", status), ("events", cfg.events)):
            if path:
                self.files[name] = open(path, "a", buffering=1)  # noqa: SIM115 (closed in run)
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if cfg.mqtt:
            from gimefive.pipeline.events import MqttPublisher

            self.mqtt = MqttPublisher(cfg.mqtt)
        if cfg.metrics_port:
            from gimefive.pipeline.metrics import MonitorMetrics, serve_metrics

            self.metrics = MonitorMetrics(list(self.sources))
            self.server = serve_metrics(self.metrics, cfg.metrics_host, cfg.metrics_port)

    # -- run
    def run(self) -> dict[str, Any]:
        from gimefive.pipeline.ray_files import connected  # one way to join, as annotate

        if self.address != "auto":
            _check_reachable(self.address)
        with connected(self.address) as ray:
            previous = {sig: signal.signal(sig, lambda *_: self.stopping.set())
                        for sig in (signal.SIGTERM, signal.SIGINT)}
            failure = None
            try:
                self._open_files()
                self._start(ray)
                failure = self._loop(ray)
            finally:
                final = self._shutdown(ray)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self._close_files()
        if failure:
            raise GimefiveError(failure)
        return final

    def _loop(self, ray) -> str | None:
        """Fetch, write and report until stopped; the run's failure line, if it fails."""
        while not self.stopping.is_set():
            self._fetch(ray, time.monotonic())
            self._tick()
            if failure := self._no_camera_left():
                return failure
            if self.cfg.duration_s and time.monotonic() - self.started >= self.cfg.duration_s:
                break
        return None

    def _no_camera_left(self) -> str | None:
        """The run's failure line once every camera has ended, as on one machine."""
        ended = [cam.ended for cam in self.cameras.values()]
        return f"no camera left: {'; '.join(ended)}" if all(ended) else None

    def _fetch(self, ray, now: float) -> None:
        """Ask every camera that is due for what is new; take the answers that come
        within a short wait."""
        for cam in self.cameras.values():
            if cam.ref is None and not cam.ended and now >= cam.next_poll:
                cam.ref, cam.sent_at = cam.actor.poll.remote(cam.incarnation, cam.cursors), now
        waiting = {cam.ref: cam for cam in self.cameras.values() if cam.ref is not None}
        if not waiting:
            self.stopping.wait(POLL_S / 2)
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=POLL_S / 2)
        for ref in ready:
            cam = waiting[ref]
            cam.ref = None
            try:
                full = self._take(cam, ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                self._unreachable(cam, exc)
                full = False
            cam.next_poll = time.monotonic() + (0 if full else POLL_S)
        for cam in waiting.values():
            if cam.ref is not None and time.monotonic() - cam.sent_at > UNREACHABLE_S:
                self._node_lost(cam)  # no answer: its node is gone or cut off

    def _unreachable(self, cam: _Camera, exc: Exception) -> None:
        """A fetch failed: the actor is being restarted (its node died), or it is gone."""
        from ray.exceptions import ActorDiedError

        self._node_lost(cam)
        cam.died = cam.died + 1 if isinstance(exc, ActorDiedError) else 0
        if cam.died >= DEAD_AFTER:  # a restarting actor queues calls; a dead one refuses
            first = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            self._ended(cam, f"camera {cam.sid} ended: its Ray actor died ({first})")

    # -- what a camera sent
    def _take(self, cam: _Camera, reply: dict[str, Any]) -> bool:
        """Write what ``reply`` carries; whether a pipe had more than one reply holds."""
        from gimefive.pipeline.ray_camera import POLL_LIMIT

        cam.died = 0
        if reply["incarnation"] != cam.incarnation:
            self._arrived(cam, reply)
        elif cam.lost_at is not None:  # slow, not lost: the same actor answered after all
            log.warning("camera %s: node %s answers again after %.1f s", cam.sid,
                        (cam.node or "?")[:8], time.time() - cam.lost_at)
            cam.lost_at = None
        full = False
        for name, part in reply["pipes"].items():
            cam.lines_lost += part["start"] - cam.cursors.get(name, 0)  # dropped there
            cam.cursors[name] = part["end"]
            full |= part["end"] - part["start"] >= POLL_LIMIT // 2
            for line in part["data"].decode("utf-8", "replace").splitlines():
                getattr(self, f"_{name}_line")(cam, line)
        if reply["exit"] is not None and cam.exit is None:
            cam.exit = reply["exit"]
            if not self.stopping.is_set():
                self._ended(cam, self._end_line(cam))
        return full

    def _arrived(self, cam: _Camera, reply: dict[str, Any]) -> None:
        """The first answer of a (re)started actor: its counts start again from 0."""
        if cam.incarnation is not None:
            self._node_lost(cam)
            cam.moves += 1
            down = time.time() - cam.lost_at
            log.warning("camera %s: running again on node %s (%s) after %.1f s", cam.sid,
                        reply["node"][:8], reply["ip"], down)
            self.outages.append({"stream": cam.sid, "reason": "node lost",
                                 "started": round(cam.lost_at, 3),
                                 "duration_s": round(down, 3), "node": cam.node})
            self._shift_numbers(cam.sid)
        else:
            log.info("camera %s: on node %s (%s)", cam.sid, reply["node"][:8], reply["ip"])
        for key in CUMULATIVE:
            counts = (cam.status or {}).get("streams", {}).get(cam.sid, {})
            cam.base[key] = cam.base.get(key, 0) + int(counts.get(key) or 0)
        cam.incarnation, cam.node, cam.ip = reply["incarnation"], reply["node"], reply["ip"]
        cam.cursors, cam.status, cam.lost_at = {}, None, None

    def _node_lost(self, cam: _Camera) -> None:
        """Say once that ``cam``'s node is lost; its open tracks leave."""
        if cam.lost_at is not None or cam.incarnation is None:
            return
        cam.lost_at = time.time()
        log.warning("camera %s: node %s (%s) lost; Ray restarts it elsewhere", cam.sid,
                    (cam.node or "?")[:8], cam.ip)
        from gimefive.pipeline.events import now_iso

        for track_id, track in self.open_tracks[cam.sid].items():
            self._emit_event({"event": "left", "camera": cam.sid, "time": now_iso(),
                              "frame": None, "track_id": track_id, **track,
                              "reason": "node_lost"})
        self.open_tracks[cam.sid] = {}

    def _shift_numbers(self, sid: str) -> None:
        """The new actor numbers frames and tracks from 0 again: shift them past the
        ones already written."""
        frame = self.max_frame.get(sid)
        track = self.max_track.get(sid)
        self.offsets[sid] = (0 if frame is None else frame + 1 + RESTART_INDEX_GAP,
                             0 if track is None else track + 1)

    def _json_line(self, cam: _Camera, line: str) -> None:
        record = _loads(line)
        if record is not None and isinstance(record.get("frame"), int):
            frame, track = self.offsets.get(cam.sid, (0, 0))
            if frame or track:
                record["frame"] += frame
                for face in record.get("faces") or []:
                    face["track_id"] += track
                line = json.dumps(record, separators=(",", ":"))
            self.max_frame[cam.sid] = max(self.max_frame.get(cam.sid, -1), record["frame"])
            ids = [face["track_id"] for face in record.get("faces") or []]
            self.max_track[cam.sid] = max([self.max_track.get(cam.sid, -1), *ids])
        self._write("json", line)

    def _events_line(self, cam: _Camera, line: str) -> None:
        event = _loads(line)
        if event is None or not isinstance(event.get("track_id"), int):
            return self._write("events", line)
        frame, track = self.offsets.get(cam.sid, (0, 0))
        event["track_id"] += track
        if isinstance(event.get("frame"), int):
            event["frame"] += frame
        tracks = self.open_tracks[cam.sid]
        if event.get("event") == "left":
            tracks.pop(event["track_id"], None)
        else:
            tracks[event["track_id"]] = {"label": event.get("label"),
                                         "confidence": event.get("confidence")}
        self._emit_event(event)

    def _emit_event(self, event: dict[str, Any]) -> None:
        if "events" in self.files:
            self._write("events", json.dumps(event, separators=(",", ":")))
        if self.mqtt is not None:
            self.mqtt.publish(event)

    def _status_line(self, cam: _Camera, line: str) -> None:
        record = _loads(line)
        if record is not None and record.get("kind") in ("status", "final"):
            cam.status = record
            self.outages += [o | {"stream": cam.sid} for o in record.get("outages", [])]

    def _log_line(self, cam: _Camera, line: str) -> None:
        """A line of the camera's monitor: shown here as it is (its own error line
        becomes the camera's end, said once by :meth:`_ended`)."""
        cam.recent.append(line)
        if self.log_dir:
            with open(self.log_dir / f"ray-{cam.sid}.log", "a") as f:
                f.write(line + "\n")
        if not line.startswith("gimefive: error: "):
            print(line, file=sys.stderr, flush=True)

    def _end_line(self, cam: _Camera) -> str:
        errors = [line for line in cam.recent if line.startswith("gimefive: error: ")]
        why = errors[-1].removeprefix("gimefive: error: ").removeprefix("no camera left: ") \
            if errors else f"its monitor exited with status {cam.exit}"
        return why if why.startswith(f"camera {cam.sid} ") else f"camera {cam.sid} ended: {why}"

    def _ended(self, cam: _Camera, line: str) -> None:
        """Camera ``cam`` ended for good (gave up, or its monitor failed): said once; its
        actor goes, so that a later node loss cannot start it again."""
        cam.ended = line
        cam.actor.close.remote()  # it then exits for good (a Ray actor's own exit)
        if self.metrics is not None:
            self.metrics.camera_ended(cam.sid, line)
        if not any(r.endswith(line) for r in cam.recent):  # its monitor said it already
            log.error("%s", line)

    def _write(self, name: str, line: str) -> None:
        if name in self.files:
            self.files[name].write(line + "\n")

    # -- status
    def status(self) -> dict[str, Any]:
        """One record for every camera, as :meth:`Monitor.status` makes on one machine."""
        streams, stages, nodes = {}, {}, {}
        for sid, cam in self.cameras.items():
            record = cam.status or {}
            streams[sid] = self._stream(cam, record.get("streams", {}).get(sid))
            if cam.lost_at is None:
                stages |= {f"{sid}/{name}": st for name, st in record.get("stages", {}).items()}
            nodes[sid] = {"node": cam.node, "ip": cam.ip, "state": cam.state(),
                          "moves": cam.moves, "lines_lost": cam.lines_lost}
        return {"kind": "status", "time": round(time.time(), 3),
                "uptime_s": round(time.monotonic() - self.started, 1), "streams": streams,
                "stages": stages, "ray": nodes}

    def _stream(self, cam: _Camera, latest: dict | None) -> dict[str, Any]:
        stream = dict(_NEW_STREAM) | (latest or {})
        for key in CUMULATIVE:
            stream[key] = cam.base.get(key, 0) + int(stream.get(key) or 0)
        if cam.lost_at is not None:
            stream.update(connected=False, fps_in=0.0, fps_out=0.0, latency_s=None,
                          queue=0, in_flight=0, outage_s=round(time.time() - cam.lost_at, 1))
        stream["ended"] = bool(stream["ended"] or cam.ended)
        return stream | {"node": cam.node, "moves": cam.moves}

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self.started > NO_ROOM_S and not self.warned_waiting:
            waiting = [sid for sid, cam in self.cameras.items() if cam.state() == "starting"]
            if waiting:
                self.warned_waiting = True
                log.warning("camera(s) %s not started after %.0f s: does a node have %g "
                            "free CPU(s) for each?", ", ".join(waiting), NO_ROOM_S,
                            CPUS_PER_CAMERA)
        if now - self.last_status < self.cfg.status_every_s:
            return
        self.last_status = now
        record = self.status()
        if self.metrics is not None:
            self.metrics.update(record)
        self._write("status", json.dumps(record, separators=(",", ":")))
        if not self.quiet:
            print(format_ray_status(record), file=sys.stderr, flush=True)

    # -- stop
    def _shutdown(self, ray) -> dict[str, Any]:
        """Stop every camera's monitor, take what it wrote last, free its node; the final
        record (each camera's figures from its last node's final record)."""
        self.stopping.set()
        running = [c for c in self.cameras.values() if c.state() == "running"]
        starting = [c for c in self.cameras.values() if c.state() == "starting"]
        for cameras, timeout in ((running, STOP_TIMEOUT_S), (starting, 10.0)):
            stops = [cam.actor.stop.remote() for cam in cameras]
            ray.wait(stops, num_returns=len(stops), timeout=timeout)
        for cam in running + starting:
            self._drain(ray, cam)
        closing = [cam.actor.close.remote() for cam in running + starting]
        ray.wait(closing, num_returns=len(closing), timeout=30)
        for cam in self.cameras.values():  # also those lost: Ray would restart them
            ray.kill(cam.actor, no_restart=True)
        final = self.status() | {"kind": "final"}
        final["outages"] = self.outages
        final["outages_total"] = len(self.outages)
        final["outage_s_total"] = round(sum(o.get("duration_s") or 0 for o in self.outages), 3)
        self._write("status", json.dumps(final, separators=(",", ":")))
        return final

    def _drain(self, ray, cam: _Camera) -> None:
        """Fetch until nothing is left (a camera unreachable now keeps what it had)."""
        for _ in range(100):
            try:
                if not self._take(cam, ray.get(cam.actor.poll.remote(cam.incarnation,
                                                                      cam.cursors),
                                                timeout=30)):
                    return
            except (ray.exceptions.RayError, TimeoutError):
                return

    def _close_files(self) -> None:
        for f in self.files.values():
            f.close()
        if self.mqtt is not None:
            self.mqtt.close()
        if self.server is not None:
            self.server.close()


def _absolute(config: Any) -> dict[str, Any]:
    """``config`` as a dict whose relative paths are made absolute: the camera's node
    reads them from another working folder (the same path must exist there)."""
    import dataclasses

    data = to_dict(config)
    for f in dataclasses.fields(config):
        value = data[f.name]
        is_path = f.metadata.get("path") or f.name == "out"
        if is_path and isinstance(value, str) and value and not is_live(value):
            data[f.name] = str(Path(value).absolute())
    return data


def _loads(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:  # a line cut short when its writer crashed: kept as it is
        return None
    return record if isinstance(record, dict) else None


def format_ray_status(record: dict[str, Any]) -> str:
    """The one-machine status line, then where each camera runs."""
    where = []
    for sid, r in record.get("ray", {}).items():
        moved = f" moved {r['moves']}" if r["moves"] else ""
        state = "" if r["state"] == "running" else f" {r['state'].upper()}"
        where.append(f"{sid}@{(r['node'] or '-')[:8]}{moved}{state}")
    return format_status(record) + " | nodes " + ", ".join(where)


def check_ray_outputs(cfg: MonitorConfig) -> None:
    """What --ray can write, checked before the cluster is joined: the files written
    here must be writable; cameras from a file are not supported."""
    if cfg.cameras:
        raise GimefiveError("--cameras FILE is not supported with --ray: give the cameras "
                            "as URLs or --source ID=URL")
    if cfg.out and not is_live(cfg.out) and \
            Path(cfg.out).suffix.lower() not in (".mp4", ".mov", ".m4v"):
        raise GimefiveError(f"--out must be an .mp4/.mov file base or an rtsp:// URL, "
                            f"got {cfg.out}")
    for path in (cfg.json, cfg.status_json, cfg.events):
        if path:
            check_output(path, "JSON output")


def run_ray_monitor(sources: list[str], cfg: MonitorConfig, stage: AnnotateConfig,
                    address: str, quiet: bool = False,
                    log_dir: str | Path | None = None) -> dict[str, Any]:
    """``run_monitor`` with the cameras on the Ray cluster at ``address``."""
    from gimefive.pipeline.ray_files import require_ray  # the same line as annotate --ray

    require_ray()
    check_ray_outputs(cfg)
    if not (cfg.out or cfg.json or cfg.events or cfg.mqtt):
        raise GimefiveError("nothing to write: give --out FILE.mp4|rtsp://... and/or --json FILE")
    if cfg.mqtt:
        from gimefive.pipeline.events import check_events_outputs

        check_events_outputs(None, cfg.mqtt)
    named = parse_sources(sources)
    return RayMonitor(named, cfg, stage, address, quiet=quiet, log_dir=log_dir).run()
