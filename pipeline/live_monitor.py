"""``gimefive monitor`` as a library: live cameras through the staged pipeline, for days.

Process layout (one host, ``ipc://`` sockets in a private 0700 directory)::

    source-cam0 --\\
    source-cam1 ---+--> detect --> classify --> track --> annotate (live sinks)
    ...         --/

One :class:`~gimefive.pipeline.live_stages.LiveSourceStage` per camera fans in to the
pipeline's own detect stage, so faces from all cameras share the classifier's batches.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
from gimefive.pipeline.live_source import LiveOptions
from gimefive.pipeline.live_stages import RESTART_INDEX_GAP
from gimefive.pipeline.probe import check_output, is_live, probe_input
from gimefive.pipeline.supervisor import EXIT_NO_RESTART, StageProcess, Supervisor
from gimefive.pipeline.wire import ipc_endpoint, private_ipc_dir

from gimefive.config import load_config, shipped_config, to_dict
from gimefive.errors import GimefiveError, StageError
from gimefive.urls import from_arg_file, redact_url, url_arg

log = logging.getLogger("gimefive.monitor")
DEFAULT_MONITOR_CONFIG = shipped_config("monitor.yaml")
LIVE_MODULE = "gimefive.pipeline.live_stage_main"
PIPELINE_MODULE = "gimefive.pipeline.stage_main"
MIDDLE_STAGES = ("detect", "classify", "track")
STATUS_KEPT = 100     # status records kept in memory (the status file has them all)
OUTAGES_KEPT = 1000   # ended outages kept for the final record (plus their totals)


@dataclass
class MonitorConfig:
    """Live-mode settings; the stages' own settings come from the annotate config."""

    sources: list[str] = field(default_factory=list)  # "URL" or "ID=URL"
    out: str | None = None            # FILE.mp4 (segments) or rtsp://HOST:PORT/PATH
    json: str | None = None           # JSON lines, one per frame, all streams
    status_json: str | None = None    # status records (default: beside --json)
    transport: str = "tcp"            # RTSP input transport: tcp | udp
    open_timeout_s: float = 5.0
    stall_timeout_s: float = 5.0      # no frame for this long: reconnect
    backoff_max_s: float = 1.0        # cap of the reconnect backoff
    max_reconnects: int = -1          # failed attempts in a row before a camera ends; -1: never
    queue_size: int = 2               # frames between decode and send (drop oldest)
    status_every_s: float = 10.0
    segment_s: float = 10.0           # length of each MP4 segment of --out FILE
    push_transport: str = "udp"       # transport for --out rtsp://
    restart_budget: int = 5           # restarts per stage within restart_window_s
    restart_window_s: float = 600.0
    restart_backoff_s: float = 0.5    # wait before a restart, doubling each time ...
    restart_backoff_max_s: float = 30.0  # ... up to this
    keep_age_s: float = 0.0           # delete finished segments older than this (0: keep)
    keep_bytes: int = 0               # ... or beyond this total size per camera (0: keep)
    hwm: int = 1                      # messages queued per hop: small keeps latency low
    duration_s: float = 0.0           # stop after this long (0: until stopped)
    annotate_config: str | None = None  # YAML for the stages (default configs/annotate.yaml)

    def __post_init__(self) -> None:
        checks = [(self.status_every_s > 0, "status_every_s", "> 0"),
                  (self.segment_s > 0, "segment_s", "> 0"),
                  (self.restart_budget >= 0, "restart_budget", ">= 0"),
                  (self.restart_backoff_s >= 0, "restart_backoff_s", ">= 0"),
                  (self.restart_backoff_max_s >= 0, "restart_backoff_max_s", ">= 0"),
                  (self.keep_age_s >= 0, "keep_age_s", ">= 0 (0: keep all)"),
                  (self.keep_bytes >= 0, "keep_bytes", ">= 0 (0: keep all)"),
                  (self.hwm >= 1, "hwm", ">= 1"), (self.duration_s >= 0, "duration_s", ">= 0"),
                  (self.max_reconnects >= -1, "max_reconnects", ">= -1 (-1: never give up)"),
                  (self.transport in ("tcp", "udp"), "transport", "tcp or udp"),
                  (self.push_transport in ("tcp", "udp"), "push_transport", "tcp or udp")]
        for ok, key, expected in checks:
            if not ok:
                raise GimefiveError(f"monitor config {key!r}: expected {expected}, "
                                    f"got {getattr(self, key)!r}")

    def live_options(self) -> dict[str, Any]:
        return dataclasses.asdict(LiveOptions(
            transport=self.transport, open_timeout_s=self.open_timeout_s,
            stall_timeout_s=self.stall_timeout_s, backoff_max_s=self.backoff_max_s,
            max_reconnects=None if self.max_reconnects < 0 else self.max_reconnects,
            queue_size=self.queue_size))


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
        if not name.replace("-", "").replace("_", "").isalnum():
            raise GimefiveError(f"source id {name!r}: use letters, digits, - and _")
        if name in sources:
            raise GimefiveError(f"source id {name!r} given twice")
        sources[name] = from_arg_file(url)  # [ID=]@FILE: the URL kept out of `ps`
    if not sources:
        raise GimefiveError("no source: give at least one rtsp:// URL (or a video file)")
    return sources


def check_monitor_inputs(sources: dict[str, str], cfg: MonitorConfig) -> dict[str, Any]:
    """Probe every camera and check every output before starting any process."""
    infos = {}
    for name, url in sources.items():
        info = probe_input(url, transport=cfg.transport, timeout_s=cfg.open_timeout_s)
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


class LiveSupervisor(Supervisor):
    """The pipeline's supervisor, starting live stages from their own module, and
    stopping in order: cameras first, then (once the frames in flight are written, or
    after ``drain_s``) the rest, so that the final counts add up."""

    drained = staticmethod(lambda: True)
    drain_s = 10.0

    def stop(self) -> None:
        sources = [s for s in self.stages.values() if s.name.startswith("source-")]
        self._terminate(sources)
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline:
            self._drain_control(100)
            if self.drained():
                break
        self._terminate(list(self.stages.values()))
        self._drain_control(200)  # the stages' final reports
        self.control.close(linger=0)
        self.ctx.term()

    def _terminate(self, stages: list[StageProcess]) -> None:
        alive = [s.proc for s in stages if s.proc and s.proc.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for proc in alive:
            while proc.poll() is None and time.monotonic() < deadline:
                self._drain_control(50)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def command(self, stage: StageProcess) -> list[str]:
        """Started by :meth:`Supervisor.spawn`, so stages die with a killed monitor too."""
        module = LIVE_MODULE if stage.name.startswith("source-") or stage.name == "annotate" \
            else PIPELINE_MODULE
        return [sys.executable, "-m", module, *stage.args, "--control", self.control_endpoint]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class _StopRequested(Exception):
    pass


class Monitor:
    """Builds, runs and watches the live pipeline; :meth:`run` blocks until stopped."""

    def __init__(self, sources: dict[str, str], cfg: MonitorConfig,
                 stage_config: AnnotateConfig | None = None, quiet: bool = False,
                 log_dir: str | Path | None = None) -> None:
        self.sources, self.cfg, self.quiet = sources, cfg, quiet
        self.stage_config = stage_config or load_annotate_config(cfg.annotate_config)
        self.stage_config.streams = 0       # run until stopped
        self.stage_config.hwm = cfg.hwm
        self.source_live: dict[str, dict] = {}
        self.sink_live: dict[str, dict] = {}
        self.index_from = {name: 0 for name in sources}
        self.restarts: dict[str, deque] = {}
        self.ended: dict[str, str] = {}
        self.budget_spent = self.no_restart = ""  # why the run ended, if so
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

    # -- process layout
    def _args(self, name: str, endpoints: dict[str, str]) -> list[str]:
        config_json = json.dumps(to_dict(self.stage_config))
        if name.startswith("source-"):
            sid = name.removeprefix("source-")
            # URLs go as @FILE in the private folder: argv is readable by every local user
            source = url_arg(self.directory, f"source-{sid}.url", self.sources[sid])
            return ["source", "--in", source, "--out", endpoints["detect"],
                    "--stream", sid, "--live-json", json.dumps(self.cfg.live_options()),
                    "--index-from", str(self.index_from[sid]), "--config-json", config_json]
        if name == "annotate":
            out = url_arg(self.directory, "output.url", self.cfg.out) if self.cfg.out else "-"
            args = ["annotate", "--in", endpoints["annotate"], "--out", out,
                    "--streams", ",".join(self.sources), "--segment-s", str(self.cfg.segment_s),
                    "--keep-age-s", str(self.cfg.keep_age_s),
                    "--keep-bytes", str(self.cfg.keep_bytes),
                    "--push-transport", self.cfg.push_transport, "--config-json", config_json]
            return args + (["--json", self.cfg.json] if self.cfg.json else [])
        following = {"detect": "classify", "classify": "track", "track": "annotate"}[name]
        return [name, "--in", endpoints[name], "--out", endpoints[following],
                "--config-json", config_json]

    def _threads(self, name: str) -> int:
        c = self.stage_config
        return {"detect": c.detect_threads, "classify": c.classify_threads}.get(name, 1)

    # -- events from the stages
    def on_event(self, stage: StageProcess, event: str, data: dict) -> None:
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

    def on_exit(self, stage: StageProcess, rc: int) -> bool:
        """Restart a crashed stage within the budget; True when handled."""
        name = stage.name
        if name.startswith("source-") and (name in self.ended or "gave up" in stage.error):
            if name not in self.ended:
                self.ended[name] = stage.error
                log.error("%s", stage.error)  # "camera ID gave up after N ...": one line
            return len(self.ended) < len(self.sources)  # the run fails when none is left
        window = self.restarts.setdefault(name, deque())
        now = time.monotonic()
        while window and now - window[0] > self.cfg.restart_window_s:
            window.popleft()
        if rc == EXIT_NO_RESTART:  # e.g. disk full: a restart would fail the same way
            self.no_restart = name
            return False
        reason = self.supervisor.failure(stage, rc)
        if len(window) >= self.cfg.restart_budget:
            if name.startswith("source-"):  # only this camera ends; the others go on
                return self._end_camera(name, f"restart budget spent ({self._budget()}), "
                                              f"last: {reason}")
            self.budget_spent = name
            return False
        window.append(now)
        delay = min(self.cfg.restart_backoff_max_s,
                    self.cfg.restart_backoff_s * 2 ** (len(window) - 1))
        log.warning("%s; restarting it in %.1f s (%d of %d within %.0f s)", reason, delay,
                    len(window), self.cfg.restart_budget, self.cfg.restart_window_s)
        if name.startswith("source-"):
            sid = name.removeprefix("source-")
            decoded = int(self.source_live.get(sid, {}).get("decoded", 0))
            self.index_from[sid] += decoded + RESTART_INDEX_GAP
            self.source_live.pop(sid, None)
            stage.args = self._args(name, self.endpoints)
        self.supervisor.restart(name, delay)
        return True

    def _end_camera(self, name: str, why: str) -> bool:
        """Camera ``name`` ends for good (one line); True while another camera is left."""
        line = f"camera {name.removeprefix('source-')} ended: {why}"
        self.ended[name] = line
        log.error("%s", line)
        return len(self.ended) < len(self.sources)

    def _budget(self) -> str:
        return f"{self.cfg.restart_budget} restarts within {self.cfg.restart_window_s:g} s"

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
                "ended": f"source-{sid}" in self.ended}
        self.last_status = (now, counts)
        stages = {s.name: {"restarts": s.restarts,
                           "rss_mb": rss_mb(s.proc.pid) if s.proc and s.proc.poll() is None
                           else None}
                  for s in self.supervisor.stages.values()}
        return {"kind": "status", "time": round(time.time(), 3),
                "uptime_s": round(now - self.started, 1), "streams": streams, "stages": stages}

    def _emit_status(self) -> None:
        record = self.status()
        self.status_records.append(record)
        if self.status_file is not None:
            self.status_file.write(json.dumps(record, separators=(",", ":")) + "\n")
        if not self.quiet:
            print(format_status(record), file=sys.stderr, flush=True)

    def tick(self) -> None:
        now = time.monotonic()
        if self.last_tick is None or now - self.last_tick >= self.cfg.status_every_s:
            self.last_tick = now
            self._emit_status()
        if self.cfg.duration_s and now - self.started >= self.cfg.duration_s:
            raise _StopRequested()

    # -- run
    def run(self) -> dict[str, Any]:
        """Run until stopped (SIGINT/SIGTERM or ``duration_s``); returns the last status."""
        self.budget_spent = self.no_restart = ""
        self.last_tick = None
        status_path = self.cfg.status_json or (
            str(Path(self.cfg.json).with_suffix(".status.jsonl")) if self.cfg.json else None)
        # explicit handlers: a monitor started in the background inherits SIGINT ignored
        previous = {sig: signal.signal(sig, _raise_stop)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with private_ipc_dir("gimefive-monitor-") as directory:
                self.directory = directory  # also where stage arguments holding URLs go
                if status_path:
                    self.status_file = open(status_path, "a", buffering=1)  # noqa: SIM115
                self.endpoints = {n: ipc_endpoint(directory, n)
                                  for n in ("detect", "classify", "track", "annotate")}
                names = [f"source-{s}" for s in self.sources] + [*MIDDLE_STAGES, "annotate"]
                processes = [StageProcess(n, self._args(n, self.endpoints),
                                          threads=self._threads(n)) for n in names]
                logs = Path(self.log_dir) if self.log_dir else directory
                logs.mkdir(parents=True, exist_ok=True)
                self.supervisor = LiveSupervisor(processes, ipc_endpoint(directory, "control"),
                                                 logs, on_event=self.on_event)
                self.supervisor.drained = self._drained
                try:
                    self.supervisor.start_all()
                    self.supervisor.run(on_exit=self.on_exit, tick=self.tick)
                except (_StopRequested, KeyboardInterrupt):
                    pass
                except StageError as exc:
                    raise StageError(self._failure_line(str(exc))) from None
                finally:
                    self.final = self.status()
                    self._write_final()
        finally:
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
        if self.no_restart:
            return f"{message}; not restarted: restarting cannot fix this"
        if self.budget_spent:
            return f"{message} (restart budget spent: {self._budget()})"
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


def _raise_stop(signum, frame) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def format_status(record: dict[str, Any]) -> str:
    parts = []
    for sid, s in record["streams"].items():
        state = ("ENDED" if s["ended"] else "up" if s["connected"] else
                 f"DOWN {s['outage_s']:.0f}s" if s["outage_s"] is not None else "connecting")
        fin = "-" if s["fps_in"] is None else f"{s['fps_in']:.1f}"
        fout = "-" if s["fps_out"] is None else f"{s['fps_out']:.1f}"
        parts.append(f"{sid} [{state}] in {fin} out {fout} fps, dropped {s['dropped']}, "
                     f"queue {s['queue']}, in flight {s['in_flight']}, "
                     f"reconnects {s['reconnects']}")
    restarts = {n: st["restarts"] for n, st in record["stages"].items() if st["restarts"]}
    extra = f" | restarts {restarts}" if restarts else ""
    return f"[monitor {record['uptime_s']:.0f}s] " + " | ".join(parts) + extra


def run_monitor(sources: list[str], cfg: MonitorConfig,
                stage_config: AnnotateConfig | None = None, quiet: bool = False,
                log_dir: str | Path | None = None) -> dict[str, Any]:
    """Check everything, then run the live pipeline until stopped; returns the last status."""
    named = parse_sources(sources)
    if not cfg.out and not cfg.json:
        raise GimefiveError("nothing to write: give --out FILE.mp4|rtsp://... and/or --json FILE")
    check_monitor_inputs(named, cfg)
    return Monitor(named, cfg, stage_config, quiet=quiet, log_dir=log_dir).run()
