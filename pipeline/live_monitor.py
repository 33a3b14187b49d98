"""``gimefive monitor`` as a library: live cameras through the staged pipeline, for days.

Process layout (one host, ``ipc://`` sockets in a private 0700 directory)::

    source-cam0 --\\
    source-cam1 ---+--> detect --> classify --> track --> annotate (live sinks)
    ...         --/

Every stage is a ``gimefive stage NAME`` process: one source stage per camera (an RTSP
reader behind a drop-oldest queue, :mod:`gimefive.pipeline.stages.source`) fans in to
the detect stage, so faces from all cameras share the classifier's batches, and the
annotate stage writes the live outputs (``--live``).
Live mode differs from ``annotate`` in three ways: each source drops its oldest frames
rather than fall behind real time (counted), stages run until stopped, and a stage that
crashes is restarted by the supervisor within a budget (``restart_budget`` restarts per
``restart_window_s``) while the others keep running. A camera whose reconnect budget is
spent ends; when no camera is left the run fails with that camera's line.

Every ``status_every_s`` seconds a status line goes to stderr and the same figures, as
one JSON object, to ``status_json``: per stream fps in (decoded) and out (written),
dropped frames, the source queue, frames in flight, reconnects and outages; per stage
restarts and resident memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
from gimefive.pipeline.live_source import LiveOptions
from gimefive.pipeline.messages import check_stream_id
from gimefive.pipeline.probe import check_output, is_live, probe_input
from gimefive.pipeline.readers import is_v4l2
from gimefive.pipeline.replicas import (
    base_name,
    input_endpoints,
    replica_args,
    replica_counts,
    replica_index,
    replica_names,
)
from gimefive.pipeline.shared_frames import frames_dir
from gimefive.pipeline.stage import LIVE_HWM
from gimefive.pipeline.stages import MIDDLE, ORDER, next_stage
from gimefive.pipeline.stages.source import RESTART_INDEX_GAP
from gimefive.pipeline.supervisor import RestartPolicy, StageProcess, Supervisor
from gimefive.pipeline.transport import ipc_endpoint, private_ipc_dir
from gimefive.pipeline.v4l2 import probe_v4l2

from gimefive.config import check_settings, load_config, setting, shipped_config, to_dict
from gimefive.errors import GimefiveError, StageError
from gimefive.memory import cpu_seconds, rss_mb
from gimefive.urls import (
    arg_file,
    check_env,
    expand_env,
    from_arg_file,
    redact_url,
    url_arg,
)

log = logging.getLogger("gimefive.monitor")
DEFAULT_MONITOR_CONFIG = shipped_config("monitor.yaml")
STATUS_KEPT = 100     # status records kept in memory (the status file has them all)
OUTAGES_KEPT = 1000   # ended outages kept for the final record (plus their totals)


@dataclass
class MonitorConfig(LiveOptions):
    """Live-mode settings: the camera options (inherited, one definition) and the run's
    outputs, status and restart policy; the stages' own settings come from the annotate
    config."""

    sources: list[str] = setting(factory=list, help='Cameras: "rtsp://..." or '
                                 '"ID=rtsp://..."; a video file plays at real time, looping; '
                                 'a webcam is /dev/videoN or v4l2:///dev/videoN?size=WxH&fps=N; '
                                 '${VAR} is taken from the environment by the camera\'s stage.')
    out: str | None = setting(None, flag="-o --out", help="Annotated video: FILE.mp4 writes "
                              "FILE_00000.mp4, ... segments (fragmented MP4, listed in "
                              "FILE.ffconcat); rtsp://... pushes to a server. Several "
                              "cameras: FILE-ID.mp4 / rtsp://.../PATH-ID.")
    json: str | None = setting(None, path=True, help="JSON lines, one per frame, all cameras "
                               "(appended); status records go to NAME.status.jsonl beside it.")
    status_json: str | None = setting(None, path=True, help="Where to append the status "
                                      "records instead.")
    status_every_s: float = setting(10.0, min=0, min_open=True, flag="--status-every",
                                    help="Seconds between status lines (stderr) and "
                                         "status records (JSON).")
    segment_s: float = setting(10.0, min=0, min_open=True, flag="--segment",
                               help="Length of each output segment in seconds: a crash "
                                    "loses at most about 1 s of it.")
    push_transport: str = setting("udp", choices=("tcp", "udp"),
                                  help="Transport for --out rtsp:// (publishing).")
    restart_budget: int = setting(5, min=0, help="A crashed stage is restarted at most this "
                                  "often within restart_window_s; then the run fails (a "
                                  "camera's source stage: only that camera ends).")
    restart_window_s: float = setting(600.0, min=0, min_open=True,
                                      help="The window of restart_budget, seconds.")
    restart_backoff_s: float = setting(0.5, min=0, help="Wait before restarting a crashed "
                                       "stage, doubling with each restart in the window.")
    restart_backoff_max_s: float = setting(30.0, min=0, help="Longest wait before a restart "
                                           "(a full disk is never restarted: the run ends).")
    keep_age_s: float = setting(0.0, min=0, flag="--keep-age", help="Delete finished "
                                "segments older than this many seconds and drop them from "
                                "the .ffconcat list (flag: 90s, 30m, 24h, 7d); 0: keep all.")
    keep_bytes: int = setting(0, min=0, flag="--keep-size", help="Per camera, delete the "
                              "oldest finished segments beyond this total size (flag: 500M, "
                              "10G, 1T); 0: keep all.")
    duration_s: float = setting(0.0, min=0, flag="--duration", help="Stop after this many "
                                "seconds; 0: run until Ctrl-C/SIGTERM.")
    cameras: str | None = setting(None, path=True, help="YAML list of cameras (id, url, "
                                  "optional settings) instead of URLs; re-read on SIGHUP or "
                                  "when it changes: added cameras start, removed ones stop.")
    metrics_port: int = setting(0, min=0, max=65535, help="Serve Prometheus metrics at "
                                "/metrics, and /healthz, /readyz, on this port (needs "
                                "prometheus-client); 0: off.")
    metrics_host: str = setting("127.0.0.1", help="Address the metrics port listens on "
                                "(0.0.0.0: every interface).")
    annotate_config: str | None = setting(None, path=True, flag="--stage-config",
                                          help="YAML for the stages (backend, detector, "
                                               "tracker, drawing, encoder); null: "
                                               "configs/annotate.yaml.")
    events: str | None = setting(None, path=True, help="Append per-track events (appeared, "
                                 "label_changed, left; camera, track id, UTC time, label, "
                                 "confidence) here as JSON lines.")
    mqtt: str | None = setting(None, help="Also publish "
                               "the events there (QoS 1, extra: gimefive[mqtt]); "
                               "reconnects when the broker goes away, never slows the run.")

    def __post_init__(self) -> None:
        check_settings(self, "monitor config")

    def live_options(self) -> dict[str, Any]:
        """The camera options alone: what each camera's source stage is given."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LiveOptions)}


def load_monitor_config(path: str | Path | None = None, **overrides) -> MonitorConfig:
    if path is None and DEFAULT_MONITOR_CONFIG.is_file():
        path = DEFAULT_MONITOR_CONFIG
    return load_config(MonitorConfig, path, **overrides)


def parse_sources(specs: list[str]) -> dict[str, str]:
    """``["rtsp://a", "door=rtsp://b"]`` -> ``{"cam0": "rtsp://a", "door": "rtsp://b"}``."""
    sources: dict[str, str] = {}
    for i, spec in enumerate(specs):
        name, sep, url = spec.partition("=")
        if not sep or "://" in name or "/" in name:
            name, url = f"cam{i}", spec
        check_stream_id(name, "source id")  # it names the camera's output files
        if name in sources:
            raise GimefiveError(f"source id {name!r} given twice")
        sources[name] = from_arg_file(url)  # [ID=]@FILE: the URL kept out of `ps`
        check_env(sources[name])  # ${VAR} unset: one line now; expanded by its stage
    if not sources:
        raise GimefiveError("no source: give at least one rtsp:// URL (or a video file)")
    return sources


def source_reader(url: str) -> str:
    """The reader kind of a camera's stage: a webcam ``v4l2``, a network URL ``auto``
    (``rtsp``), a video file ``loop`` (played as a camera: paced, looping)."""
    if is_v4l2(url):
        return "v4l2"
    return "auto" if is_live(url) else "loop"


def check_monitor_inputs(sources: dict[str, str], cfg: MonitorConfig) -> dict[str, Any]:
    """Probe every camera and check every output before starting any process."""
    if cfg.events or cfg.mqtt:
        from gimefive.pipeline.events import check_events_outputs

        check_events_outputs(cfg.events, cfg.mqtt)  # cheap: before the probes
    infos = {}
    for name, url in sources.items():
        if is_v4l2(url):  # a webcam: opened and closed at once, for its stage to open
            infos[name] = probe_v4l2(url, cfg.open_timeout_s)
            continue
        # ${VAR} expanded for this probe only, in memory; its errors are redacted
        info = probe_input(expand_env(url), transport=cfg.transport,
                           timeout_s=cfg.open_timeout_s)
        infos[name] = {"url": redact_url(url), "codec": info.codec,
                       "size": [info.width, info.height], "fps": info.fps}
    if cfg.out and not is_live(cfg.out):
        check_output(cfg.out)
        if Path(cfg.out).suffix.lower() not in (".mp4", ".mov", ".m4v"):
            raise GimefiveError(f"--out must be an .mp4/.mov file base or an rtsp:// URL, "
                                f"got {cfg.out}")
    for path in (cfg.json, cfg.status_json):
        if path:
            check_output(path, "JSON output")
    return infos


class _StopRequested(Exception):
    pass


class Monitor:
    """Builds, runs and watches the live pipeline; :meth:`run` blocks until stopped."""

    def __init__(self, sources: dict[str, str], cfg: MonitorConfig,
                 stage_config: AnnotateConfig | None = None, quiet: bool = False,
                 log_dir: str | Path | None = None) -> None:
        self.sources, self.cfg, self.quiet = sources, cfg, quiet
        self.stage_config = stage_config or load_annotate_config(cfg.annotate_config)
        self.counts = replica_counts(self.stage_config)  # processes per stage
        self.source_live: dict[str, dict] = {}
        self.sink_live: dict[str, dict] = {}
        self.index_from = {name: 0 for name in sources}
        self.ended: dict[str, str] = {}  # camera source stage -> the line it ended with
        self.started = time.monotonic()
        self.last_status: tuple[float, dict[str, tuple[int, int]]] | None = None
        # bounded histories (the run may last weeks): the recent status records and
        # outages; the totals are counted, and the status file has every record
        self.status_records: deque[dict] = deque(maxlen=STATUS_KEPT)
        self.status_file = None
        self.final: dict[str, Any] = {}
        self.outages_seen: dict[tuple, str] = {}  # only those the sources still report
        self.outage_log: deque[dict] = deque(maxlen=OUTAGES_KEPT)
        self.outages_total = 0
        self.outage_s_total = 0.0
        self._drain_last = (-1, time.monotonic())
        self.log_dir = log_dir
        self.directory: Path | None = None  # the run's private folder, set by run()
        self.frames_dir: Path | None = None  # its frames in shared memory, set by run()
        self.camera_options: dict[str, dict] = {}  # per camera (--cameras FILE)
        self.reloader = None  # CameraReloader with --cameras FILE
        self.metrics = None  # MonitorMetrics with --metrics-port, set by run()

    # -- process layout
    def _args(self, name: str, endpoints: dict[str, str]) -> list[str]:
        config_json = json.dumps(to_dict(self.stage_config))
        if name.startswith("source-"):
            sid = name.removeprefix("source-")
            # URLs go as @FILE in the private folder: argv is readable by every local user
            source = url_arg(self.directory, f"source-{sid}.url", self.sources[sid])
        live = ["--config-json", config_json, "--hwm", str(LIVE_HWM), "--ends", "0"]
        if self.frames_dir:  # every stage of this host reads the frames in shared memory
            live += ["--frames-dir", str(self.frames_dir)]
        if name.startswith("source-"):
            sid = name.removeprefix("source-")
            # URLs go as @FILE in the private folder: argv is readable by every local user
            source = url_arg(self.directory, f"source-{sid}.url", self.sources[sid])
            # a video file given as a camera plays as one (paced, looping)
            reader = source_reader(self.sources[sid])
            return ["--in", source, "--out", endpoints["detect"], "--reader", reader,
                    "--stream", sid, "--live-json", json.dumps(self._live_options(sid)),
                    "--index-from", str(self.index_from[sid]), *live]
        if name == "annotate":
            out = url_arg(self.directory, "output.url", self.cfg.out) if self.cfg.out else "-"
            args = ["--live", "--in", endpoints["annotate"], "--out", out,
                    "--streams", ",".join(self.sources), "--segment-s", str(self.cfg.segment_s),
                    "--keep-age-s", str(self.cfg.keep_age_s),
                    "--keep-bytes", str(self.cfg.keep_bytes),
                    "--push-transport", self.cfg.push_transport, *live]
            return replica_args(name, 0, self.counts, args) \
                + (["--json", self.cfg.json] if self.cfg.json else []) + self._events_args()
        stage = base_name(name)  # detect#1: a replica of detect
        return replica_args(stage, replica_index(name), self.counts, [
            "--in", endpoints[stage], "--out", endpoints[next_stage(stage)], *live])

    def _events_args(self) -> list[str]:
        """The annotate stage's event outputs; the broker URL (credentials) as @FILE."""
        args = ["--events", self.cfg.events] if self.cfg.events else []
        if self.cfg.mqtt:
            args += ["--mqtt", arg_file(self.directory, "mqtt.url", self.cfg.mqtt)]
        return args

    def _live_options(self, sid: str) -> dict[str, Any]:
        """The run's camera options, with camera ``sid``'s own from the cameras file."""
        return {**self.cfg.live_options(), **self.camera_options.get(sid, {})}

    def _process(self, name: str) -> StageProcess:
        """Every stage, cameras and the live sink included, runs as `gimefive stage`."""
        return StageProcess(name, self._args(name, self.endpoints), threads=self._threads(name),
                            kind="source" if name.startswith("source-") else base_name(name))

    def _threads(self, name: str) -> int:
        c = self.stage_config
        return {"detect": c.detect_threads,
                "classify": c.classify_threads}.get(base_name(name), 1)

    # -- events from the stages
    def on_event(self, stage: StageProcess, event: str, data: dict) -> None:
        if event == "restart":
            self._restarting(stage)
        elif event == "ended":
            self._camera_ended(stage, data["why"], data["gave_up"])
        if event != "live":
            return
        if stage.name.startswith("source-"):
            sid = stage.name.removeprefix("source-")
            self._log_outages(sid, data.get("outages", []))
            self.source_live[sid] = data
        elif stage.name == "annotate":
            self.sink_live = data.get("streams", {})

    def _log_outages(self, sid: str, outages: list[dict]) -> None:
        """Log each outage when it starts and when it ends, with its duration.

        A source reports only its few most recent outages, so what was seen is kept for
        those alone: an outage that left the source's list never comes back.
        """
        reported = {(sid, o.get("started")) for o in outages}
        self.outages_seen = {k: v for k, v in self.outages_seen.items()
                             if k[0] != sid or k in reported}
        for outage in outages:
            key = (sid, outage.get("started"))
            state = "open" if outage.get("duration_s") is None else "closed"
            if self.outages_seen.get(key) == state:
                continue
            if state == "open":
                log.warning("stream %s: lost (%s); reconnecting", sid, outage.get("reason"))
            else:
                if key not in self.outages_seen:
                    log.warning("stream %s: lost (%s)", sid, outage.get("reason"))
                log.warning("stream %s: back after %.1f s outage (%d attempt(s))", sid,
                            outage["duration_s"], outage.get("attempts", 0))
                self.outage_log.append(outage)
                self.outages_total += 1
                self.outage_s_total += float(outage["duration_s"])
            self.outages_seen[key] = state

    def _restarting(self, stage: StageProcess) -> None:
        """A camera's source restarts: its frame numbers go on past what it sent."""
        if stage.name.startswith("source-"):
            sid = stage.name.removeprefix("source-")
            decoded = int(self.source_live.get(sid, {}).get("decoded", 0))
            self.index_from[sid] += decoded + RESTART_INDEX_GAP
            self.source_live.pop(sid, None)
            stage.args = self._args(stage.name, self.endpoints)

    def _camera_ended(self, stage: StageProcess, why: str, gave_up: bool) -> None:
        """Camera ``stage`` ended for good while others go on: one line, said once."""
        line = why if gave_up else f"camera {stage.name.removeprefix('source-')} ended: {why}"
        self.ended[stage.name] = line
        if self.metrics is not None:
            self.metrics.camera_ended(stage.name.removeprefix("source-"), line)
        log.error("%s", line)  # e.g. "camera ID gave up after N reconnect attempt(s): ..."

    def policy(self) -> RestartPolicy:
        cfg = self.cfg
        return RestartPolicy(budget=cfg.restart_budget, window_s=cfg.restart_window_s,
                             backoff_s=cfg.restart_backoff_s,
                             backoff_max_s=cfg.restart_backoff_max_s,
                             alone=frozenset(f"source-{sid}" for sid in self.sources))

    # -- status
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        previous = self.last_status
        streams, counts = {}, {}
        for sid in self.sources:
            src = self.source_live.get(sid, {})
            sink = self.sink_live.get(sid, {})
            decoded, written = int(src.get("decoded", 0)), int(sink.get("written", 0))
            counts[sid] = (decoded, written)
            fps_in = fps_out = None
            # no frame written since the last status (an outage): no latency to show,
            # rather than repeat the last frame's
            fresh = previous is None or written != previous[1].get(sid, (0, -1))[1]
            if previous is not None and sid in previous[1]:
                dt = max(1e-6, now - previous[0])
                fps_in = round((decoded - previous[1][sid][0]) / dt, 1)
                fps_out = round((written - previous[1][sid][1]) / dt, 1)
            open_outage = next((o for o in reversed(src.get("outages", []))
                                if o.get("duration_s") is None), None)
            streams[sid] = {
                "connected": bool(src.get("connected", False)),
                "fps_in": fps_in, "fps_out": fps_out, "decoded": decoded, "written": written,
                "dropped": int(src.get("dropped", 0)), "queue": int(src.get("queue", 0)),
                "in_flight": max(0, int(src.get("sent", 0)) - written),
                "reconnects": int(src.get("reconnects", 0)),
                "outage_s": round(time.time() - open_outage["started"], 1) if open_outage else None,
                "latency_s": sink.get("latency_s") if fresh else None,
                "faces": int(sink.get("faces", 0)),
                "degrade_step": int(src.get("degrade_step", 0)),
                "intervals": src.get("intervals"),
                "ended": f"source-{sid}" in self.ended}
        self.last_status = (now, counts)
        stages = {s.name: _stage_status(s) for s in self.supervisor.stages.values()}
        return {"kind": "status", "time": round(time.time(), 3),
                "uptime_s": round(now - self.started, 1), "streams": streams, "stages": stages}

    def _emit_status(self) -> None:
        record = self.status()
        self.status_records.append(record)
        if self.metrics is not None:
            self.metrics.update(record)
        if self.status_file is not None:
            self.status_file.write(json.dumps(record, separators=(",", ":")) + "\n")
        if not self.quiet:
            print(format_status(record), file=sys.stderr, flush=True)

    def tick(self) -> None:
        now = time.monotonic()
        if self.last_tick is None or now - self.last_tick >= self.cfg.status_every_s:
            self.last_tick = now
            self._emit_status()
        if self.reloader is not None:
            self.reloader.poll()  # --cameras FILE edited, or SIGHUP
        if self.cfg.duration_s and now - self.started >= self.cfg.duration_s:
            raise _StopRequested()

    # -- cameras added and removed while running (--cameras FILE: cameras_file.py)
    def add_camera(self, sid: str, url: str, options: dict[str, Any]) -> None:
        """Start camera ``sid``'s source stage, built as the first ones were."""
        self.sources[sid], self.camera_options[sid] = url, options
        self.index_from.setdefault(sid, 0)
        self.ended.pop(f"source-{sid}", None)
        self.supervisor.policy = self.policy()
        self.supervisor.add(self._process(f"source-{sid}"))
        self._cameras_changed()

    def remove_camera(self, sid: str) -> None:
        """Stop camera ``sid`` cleanly (SIGTERM: its stream ends, so the live sink
        finalises its segments and list); its frame numbers go on if it comes back."""
        self.supervisor.remove(f"source-{sid}")
        decoded = int(self.source_live.pop(sid, {}).get("decoded", 0))
        self.index_from[sid] = self.index_from.get(sid, 0) + decoded + RESTART_INDEX_GAP
        self.sources.pop(sid, None)
        self.camera_options.pop(sid, None)
        self.ended.pop(f"source-{sid}", None)
        self.supervisor.policy = self.policy()
        self._cameras_changed()

    def _cameras_changed(self) -> None:
        """/metrics, /healthz and /readyz follow the cameras now in the run."""
        if self.metrics is not None:
            self.metrics.set_cameras(list(self.sources))

    # -- run
    def run(self) -> dict[str, Any]:
        """Run until stopped (SIGINT/SIGTERM or ``duration_s``); returns the last status."""
        self.last_tick = None
        status_path = self.cfg.status_json or (
            str(Path(self.cfg.json).with_suffix(".status.jsonl")) if self.cfg.json else None)
        # explicit handlers: a monitor started in the background inherits SIGINT ignored
        previous = {sig: signal.signal(sig, _raise_stop)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        server = None
        try:
            if self.cfg.metrics_port:  # first: a port in use stops the run before it starts
                from gimefive.pipeline.metrics import MonitorMetrics, serve_metrics

                self.metrics = MonitorMetrics(list(self.sources))
                server = serve_metrics(self.metrics, self.cfg.metrics_host,
                                       self.cfg.metrics_port)
                log.info("metrics at http://%s:%d/metrics (also /healthz, /readyz)",
                         self.cfg.metrics_host, server.port)
            with private_ipc_dir("gimefive-monitor-") as directory, \
                    frames_dir(self.stage_config.shared_frames) as shared:
                self.directory = directory  # also where stage arguments holding URLs go
                self.frames_dir = shared
                if status_path:
                    self.status_file = open(status_path, "a", buffering=1)  # noqa: SIM115
                self.endpoints = input_endpoints(directory, self.counts, ORDER[1:])
                names = [f"source-{s}" for s in self.sources] + [
                    p for n in (*MIDDLE, "annotate") for p in replica_names(n, self.counts[n])]
                processes = [self._process(n) for n in names]
                logs = Path(self.log_dir) if self.log_dir else directory
                logs.mkdir(parents=True, exist_ok=True)
                self.supervisor = Supervisor(processes, ipc_endpoint(directory, "control"),
                                             logs, on_event=self.on_event,
                                             policy=self.policy(), drained=self._drained)
                try:
                    self.supervisor.start_all()
                    self.supervisor.run(tick=self.tick)
                except (_StopRequested, KeyboardInterrupt):
                    pass
                except StageError as exc:
                    raise StageError(self._failure_line(str(exc))) from None
                finally:
                    self.final = self.status()
                    self._write_final()
        finally:
            if self.reloader is not None:
                self.reloader.close()
            if server is not None:
                server.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.status_file is not None:
                self.status_file.close()
        return self.final

    def _drained(self) -> bool:
        """Every frame the cameras sent is written, or nothing more arrived for 3 s
        (frames lost in a crashed stage never arrive), or the sink is gone."""
        sent = sum(int(v.get("sent", 0)) for v in self.source_live.values())
        written = sum(int(v.get("written", 0)) for v in self.sink_live.values())
        now = time.monotonic()
        if written != self._drain_last[0]:
            self._drain_last = (written, now)
        annotate = self.supervisor.stages.get("annotate")
        return (written >= sent or now - self._drain_last[1] > 3.0
                or annotate is None or annotate.proc.poll() is not None)

    def _failure_line(self, message: str) -> str:
        if self.ended and len(self.ended) == len(self.sources):
            return f"no camera left: {'; '.join(self.ended.values())}"
        return message

    def _write_final(self) -> None:
        self.final["kind"] = "final"
        self.final["outages"] = list(self.outage_log)  # the most recent OUTAGES_KEPT
        self.final["outages_total"] = self.outages_total  # every outage that ended
        self.final["outage_s_total"] = round(self.outage_s_total, 3)
        for sid, st in self.final["streams"].items():
            st["sent"] = int(self.source_live.get(sid, {}).get("sent", 0))
            # sent but never written: in flight at the stop, or lost in a crashed stage
            st["lost_in_pipeline"] = max(0, st["sent"] - st["written"])
        if self.status_file is not None:
            self.status_file.write(json.dumps(self.final, separators=(",", ":")) + "\n")


def _stage_status(stage: StageProcess) -> dict[str, Any]:
    """A stage's part of a status record; ``alive``: running, or its restart is due."""
    running = stage.proc is not None and stage.proc.poll() is None
    return {"restarts": stage.restarts,
            "rss_mb": rss_mb(stage.proc.pid) if running else None,
            "cpu_s": cpu_seconds(stage.proc.pid) if running else None,
            "alive": running or stage.restart_at is not None}


def _raise_stop(signum, frame) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _degraded(s: dict[str, Any]) -> str:
    """The intervals in force while a camera is degraded to keep up (nothing otherwise)."""
    if not s.get("degrade_step") or not s.get("intervals"):
        return ""
    i = s["intervals"]
    return (f", degraded (step {s['degrade_step']}: detect every {i['detect_every']}, "
            f"classify every {i['classify_every']}, CAM every {i['cam_every']})")


def format_status(record: dict[str, Any]) -> str:
    parts = []
    for sid, s in record["streams"].items():
        state = ("ENDED" if s["ended"] else "up" if s["connected"] else
                 f"DOWN {s['outage_s']:.0f}s" if s["outage_s"] is not None else "connecting")
        fin = "-" if s["fps_in"] is None else f"{s['fps_in']:.1f}"
        fout = "-" if s["fps_out"] is None else f"{s['fps_out']:.1f}"
        parts.append(f"{sid} [{state}] in {fin} out {fout} fps, dropped {s['dropped']}, "
                     f"queue {s['queue']}, in flight {s['in_flight']}, "
                     f"reconnects {s['reconnects']}{_degraded(s)}")
    restarts = {n: st["restarts"] for n, st in record["stages"].items() if st["restarts"]}
    extra = f" | restarts {restarts}" if restarts else ""
    return f"[monitor {record['uptime_s']:.0f}s] " + " | ".join(parts) + extra


def run_monitor(sources: list[str], cfg: MonitorConfig,
                stage_config: AnnotateConfig | None = None, quiet: bool = False,
                log_dir: str | Path | None = None) -> dict[str, Any]:
    """Check everything, then run the live pipeline until stopped; returns the last status."""
    cameras = None
    if cfg.cameras:
        if sources:
            raise GimefiveError("give cameras either as URLs or with --cameras FILE, not both")
        from gimefive.pipeline.cameras_file import load_cameras

        cameras = load_cameras(cfg.cameras)
        named = {sid: camera.url for sid, camera in cameras.items()}
    else:
        named = parse_sources(sources)
    if not (cfg.out or cfg.json or cfg.events or cfg.mqtt):
        raise GimefiveError("nothing to write: give --out FILE.mp4|rtsp://... and/or --json FILE")
    check_monitor_inputs(named, cfg)
    monitor = Monitor(named, cfg, stage_config, quiet=quiet, log_dir=log_dir)
    if cameras is not None:
        from gimefive.pipeline.cameras_file import CameraReloader

        monitor.camera_options = {sid: c.live_options() for sid, c in cameras.items()}
        monitor.reloader = CameraReloader(monitor, cfg.cameras, cameras)
    return monitor.run()
