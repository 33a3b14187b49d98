"""Prometheus metrics and health checks for ``gimefive monitor --metrics-port``.

The monitor feeds :class:`MonitorMetrics` each status record (every ``--status-every``
seconds) and each camera that ends; a small threaded HTTP server answers:

* ``/metrics``: Prometheus text from a private registry (never the process-global one);
* ``/healthz``: 200 while every camera is up or reconnecting within its budget and every
  stage alive, else 503 with one line saying why;
* ``/readyz``: 200 once the first frame of every camera is written, 503 before.

The status records carry cumulative figures that start again from 0 when a camera's
source stage restarts; the counters are fed the increases only, so they never go back.
``prometheus-client`` is an optional dependency (``pip install 'gimefive[metrics]'``).
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gimefive.errors import GimefiveError

#: latency buckets, seconds: a live pipeline takes tens of ms to a few seconds
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: status field -> counter name (without ``gimefive_`` and ``_total``)
CAMERA_COUNTERS = {"decoded": "frames_decoded", "written": "frames_written",
                   "dropped": "frames_dropped", "reconnects": "reconnects", "faces": "faces"}
COUNTER_HELP = {"decoded": "Frames decoded from the camera.",
                "written": "Frames written to the outputs.",
                "dropped": "Frames dropped (oldest first) to keep up with real time.",
                "reconnects": "Reconnections to the camera.",
                "faces": "Faces written to the outputs."}


def _prometheus():
    """The library, or one line saying how to get it."""
    try:
        import prometheus_client
    except ImportError:
        raise GimefiveError("--metrics-port needs prometheus-client: pip install "
                            "'gimefive[metrics]' (or prometheus-client)") from None
    return prometheus_client


class MonitorMetrics:
    """The run's metrics and health, fed status records; safe to read from the server."""

    def __init__(self, cameras: list[str]) -> None:
        prom = _prometheus()
        self.cameras = list(cameras)
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.lock = threading.Lock()
        self.last: dict[tuple[str, str], float] = {}  # (camera or stage, field) -> total
        self.ended: dict[str, str] = {}  # camera -> the line it ended with
        self.dead_stages: list[str] = []
        self.written_once: set[str] = set()
        self._build(prom)

    def _build(self, prom) -> None:
        reg, cam, stage = self.registry, ["camera"], ["stage"]
        self.counters = {f: prom.Counter(f"gimefive_{name}", COUNTER_HELP[f], cam,
                                         registry=reg)
                         for f, name in CAMERA_COUNTERS.items()}
        self.up = prom.Gauge("gimefive_camera_up", "1 while the camera is connected and "
                             "not ended, else 0.", cam, registry=reg)
        self.outage = prom.Gauge("gimefive_camera_outage_seconds", "Length of the current "
                                 "outage, seconds (0 while up).", cam, registry=reg)
        self.degrade = prom.Gauge("gimefive_degrade_step", "How far the camera's work "
                                  "intervals are raised to keep up (0: as configured).",
                                  cam, registry=reg)
        self.intervals = prom.Gauge("gimefive_interval_frames", "The detect / classify / "
                                    "Grad-CAM interval in force, frames.", ["camera", "work"],
                                    registry=reg)
        self.latency = prom.Histogram("gimefive_latency_seconds", "Decode-to-written "
                                      "latency of the latest frame at each status record.",
                                      cam, buckets=LATENCY_BUCKETS, registry=reg)
        self.restarts = prom.Counter("gimefive_stage_restarts", "Restarts of the stage.",
                                     stage, registry=reg)
        self.cpu = prom.Gauge("gimefive_stage_cpu_seconds", "CPU time of the stage's "
                              "current process, seconds.", stage, registry=reg)
        self.rss = prom.Gauge("gimefive_stage_resident_memory_bytes", "Resident memory of "
                              "the stage's process, bytes.", stage, registry=reg)
        for camera in self.cameras:  # every camera shows from the first scrape
            for counter in self.counters.values():
                counter.labels(camera)
            self.up.labels(camera).set(0)
            self.outage.labels(camera).set(0)

    def set_cameras(self, cameras: list[str]) -> None:
        """The cameras changed while running (``--cameras`` file): a new one shows from the
        next scrape, a removed one's series go (it is neither up nor awaited any more)."""
        with self.lock:
            for camera in set(self.cameras) - set(cameras):
                for family in (*self.counters.values(), self.up, self.outage, self.latency,
                               self.degrade):
                    with contextlib.suppress(KeyError):  # a series never created
                        family.remove(camera)
                for work in ("detect", "classify", "cam"):
                    with contextlib.suppress(KeyError):
                        self.intervals.remove(camera, work)
                self.ended.pop(camera, None)
                self.written_once.discard(camera)
                self.last = {k: v for k, v in self.last.items() if k[0] != camera}
            for camera in set(cameras) - set(self.cameras):
                for counter in self.counters.values():
                    counter.labels(camera)
                self.up.labels(camera).set(0)
                self.outage.labels(camera).set(0)
            self.cameras = list(cameras)

    def _increase(self, key: tuple[str, str], total: float) -> float:
        """How much a cumulative figure grew; one that went back (its process restarted)
        started again from 0, so all of it is new."""
        previous = self.last.get(key, 0.0)
        self.last[key] = total
        return total - previous if total >= previous else total

    def update(self, record: dict[str, Any]) -> None:
        """Take one status record (:meth:`Monitor.status`)."""
        with self.lock:
            for camera, s in record.get("streams", {}).items():
                self._camera(camera, s)
            self.dead_stages = []
            for name, st in record.get("stages", {}).items():
                self._stage(name, st)

    def _camera(self, camera: str, s: dict[str, Any]) -> None:
        for field, counter in self.counters.items():
            counter.labels(camera).inc(self._increase((camera, field), float(s.get(field) or 0)))
        up = bool(s.get("connected")) and not s.get("ended")
        self.up.labels(camera).set(1 if up else 0)
        self.outage.labels(camera).set(float(s.get("outage_s") or 0.0))
        self.degrade.labels(camera).set(float(s.get("degrade_step") or 0))
        for key, value in (s.get("intervals") or {}).items():
            self.intervals.labels(camera, key.removesuffix("_every")).set(float(value))
        if s.get("latency_s") is not None:
            self.latency.labels(camera).observe(float(s["latency_s"]))
        if int(s.get("written") or 0) > 0:
            self.written_once.add(camera)
        if s.get("ended") and camera not in self.ended:
            self.ended[camera] = f"camera {camera} ended"

    def _stage(self, name: str, st: dict[str, Any]) -> None:
        self.restarts.labels(name).inc(self._increase((name, "restarts"),
                                                      float(st.get("restarts") or 0)))
        if st.get("cpu_s") is not None:
            self.cpu.labels(name).set(float(st["cpu_s"]))
        if st.get("rss_mb") is not None:
            self.rss.labels(name).set(float(st["rss_mb"]) * 2**20)
        if st.get("alive") is False and not name.startswith("source-"):
            self.dead_stages.append(name)  # a camera's source: said by its camera's line

    def camera_ended(self, camera: str, line: str) -> None:
        """Camera ``camera`` ended for good (``line``: why, as the monitor logged it)."""
        with self.lock:
            self.ended[camera] = line

    def health(self) -> tuple[bool, str]:
        with self.lock:
            if self.ended:
                return False, "; ".join(self.ended.values())
            if self.dead_stages:
                return False, (f"stage {', '.join(self.dead_stages)} is not running "
                               f"(restart budget spent or failed)")
            return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self.lock:
            waiting = [c for c in self.cameras if c not in self.written_once]
        if waiting:
            return False, f"waiting for the first frame of {', '.join(waiting)}"
        return True, "ready"

    def exposition(self) -> tuple[bytes, str]:
        prom = _prometheus()
        with self.lock:
            return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class _Handler(BaseHTTPRequestHandler):
    metrics: MonitorMetrics  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, kind = self.metrics.exposition()
            self._answer(200, body, kind)
        elif path in ("/healthz", "/readyz"):
            ok, line = (self.metrics.health if path == "/healthz" else self.metrics.ready)()
            self._answer(200 if ok else 503, (line + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._answer(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain")

    def _answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes every few seconds would flood the monitor's stderr: no access log."""


class MetricsServer:
    """The HTTP server on its own daemon thread; :meth:`close` stops it."""

    def __init__(self, metrics: MonitorMetrics, host: str, port: int) -> None:
        handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise GimefiveError(f"--metrics-port {port}: cannot listen on {host}:{port}: "
                                f"{exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,),
                                       name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve_metrics(metrics: MonitorMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on ``host:port`` (0: a free port, :attr:`MetricsServer.port`)."""
    return MetricsServer(metrics, host, port)
