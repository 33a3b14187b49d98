"""``gimefive monitor``: a thin click command over :mod:`gimefive.pipeline.live_monitor`."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import click
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import MonitorConfig

from gimefive.config_cli import config_options

_UNITS = {"duration": {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400},
          "size": {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}}
_EXAMPLES = {"duration": "a duration like 90s, 30m, 24h or 7d",
             "size": "a size like 500M, 10G or 1T"}


def _amount(text: str, kind: str) -> float:
    """``"24h"`` -> 86400.0 (kind "duration"), ``"10G"`` -> 10 * 2**30 (kind "size")."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]?)(?:i?[bB])?\s*", str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _UNITS[kind]:
        raise click.BadParameter(f"expected {_EXAMPLES[kind]}, got {text!r}")
    return float(match.group(1)) * _UNITS[kind][unit]


def parse_duration(text: str) -> float:
    return _amount(text, "duration")


def parse_size(text: str) -> int:
    return int(_amount(text, "size"))


def _keep(ctx, param, value):
    """``--keep-age 24h`` / ``--keep-size 10G`` in seconds / bytes (the config's units)."""
    if isinstance(value, int | float):  # the dataclass default
        return value
    return parse_size(value) if param.name == "keep_bytes" else parse_duration(value)


#: the monitor settings offered as flags (all: --config FILE), and the stages' ones
MONITOR_FLAGS = ("out", "json", "status_json", "transport", "stall_timeout_s",
                 "max_reconnects", "status_every_s", "segment_s", "keep_age_s", "keep_bytes",
                 "duration_s", "cameras", "metrics_port", "metrics_host", "annotate_config",
                 "events", "mqtt")
STAGE_FLAGS = ("backend", "weights", "detect_every", "classify_every", "cam_every", "cam",
               "overlay", "blur_faces", "detect_replicas", "classify_replicas")


@click.command("monitor", context_settings={"show_default": True})
@click.argument("urls", metavar="[URL]...", nargs=-1)
@click.option("-s", "--source", "sources", multiple=True, metavar="[ID=]URL",
              help="A camera (repeatable): rtsp://HOST:PORT/PATH, optionally named "
                   "ID=rtsp://...; a video file plays at real time, looping.")
@config_options(MonitorConfig, *MONITOR_FLAGS,
                out={"metavar": "FILE.mp4|rtsp://..."},
                mqtt={"metavar": "mqtt://HOST:PORT/TOPIC"},
                keep_age_s={"type": str, "callback": _keep, "metavar": "DURATION"},
                keep_bytes={"type": str, "callback": _keep, "metavar": "SIZE"})
@config_options(AnnotateConfig, *STAGE_FLAGS, dest="stage_overrides")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Monitor YAML [default: configs/monitor.yaml].")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="Keep each stage's log (stderr) here [default: a temporary folder "
                   "removed at the end].")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS", default=None,
              help="Run each camera as a Ray actor on a cluster's nodes, moved to another "
                   "node when its node dies, with its JSON lines, events and status "
                   "gathered here: auto (RAY_ADDRESS or the cluster `ray start` began on "
                   "this machine) or HOST:PORT of the head; needs gimefive[ray] here and "
                   "on every node (docs/cluster.md).")
@click.option("-q", "--quiet", is_flag=True, help="No status lines (the JSON still gets them).")
@click.option("-v", "--verbose", is_flag=True, help="Also log every reconnect attempt.")
def monitor_command(urls, sources, overrides, stage_overrides, config_path, log_dir, ray_address,
                    quiet, verbose):
    """Monitor live cameras: faces, emotions and Grad-CAM, for days, through outages.

    Each camera is read over RTSP (TCP by default) with open and read timeouts; a
    closed or stalled stream is reconnected with capped exponential backoff, each
    outage logged with its duration, frame numbers continuing. When the pipeline is
    slower than the cameras, the oldest frames are dropped (and counted) so that the
    output stays at real time. A crashed stage is restarted within a budget.

    \b
    Examples:
      gimefive monitor rtsp://127.0.0.1:8554/cam -o out/cam.mp4 --json out/cam.jsonl
      gimefive monitor -s door=rtsp://10.0.0.5/live -s hall=rtsp://10.0.0.6/live \\
          --json faces.jsonl --status-every 30
    """
    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.live_monitor import load_monitor_config, run_monitor

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("libav").setLevel(logging.ERROR)
    cfg = load_monitor_config(config_path, **overrides)
    all_sources = [*urls, *sources] or list(cfg.sources)
    if cfg.cameras:  # the cameras file replaces the config's own list
        all_sources = [*urls, *sources]
    elif not all_sources:
        raise click.UsageError("give at least one camera URL (or --source, --cameras FILE, "
                               "or sources: in the config)")
    if not (cfg.out or cfg.json or cfg.events or cfg.mqtt):
        raise click.UsageError("give -o FILE.mp4|rtsp://... and/or --json FILE (or "
                               "--events FILE, --mqtt URL)")
    stage_cfg = load_annotate_config(cfg.annotate_config, **stage_overrides)
    if ray_address:
        from gimefive.pipeline.ray_monitor import format_ray_status as format_status
        from gimefive.pipeline.ray_monitor import run_ray_monitor

        final = run_ray_monitor(all_sources, cfg, stage_cfg, ray_address, quiet=quiet,
                                log_dir=log_dir)
    else:
        from gimefive.pipeline.live_monitor import format_status

        final = run_monitor(all_sources, cfg, stage_cfg, quiet=quiet, log_dir=log_dir)
    if not quiet:
        click.echo("stopped; " + format_status(final), err=True)
