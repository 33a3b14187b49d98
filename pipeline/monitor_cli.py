"""``gimefive monitor``: a thin click command over :mod:`gimefive.pipeline.live_monitor`."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import click


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be > 0, got {value}")
    return value


def _reconnects(ctx, param, value):
    if value is not None and value < -1:
        raise click.BadParameter(f"must be >= 0, or -1 for never give up; got {value}")
    return value


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
    if value is None:
        return None
    return parse_size(value) if param.name == "keep_size" else parse_duration(value)


@click.command("monitor", context_settings={"show_default": True})
@click.argument("urls", metavar="[URL]...", nargs=-1)
@click.option("-s", "--source", "sources", multiple=True, metavar="[ID=]URL",
              help="A camera (repeatable): rtsp://HOST:PORT/PATH, optionally named "
                   "ID=rtsp://...; a video file plays at real time, looping.")
@click.option("-o", "--out", default=None, metavar="FILE.mp4|rtsp://...",
              help="Annotated video: FILE.mp4 writes FILE_00000.mp4, ... segments "
                   "(fragmented MP4, listed in FILE.ffconcat); rtsp://... pushes to a "
                   "server. Several cameras: FILE-ID.mp4 / rtsp://.../PATH-ID.")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path),
              help="JSON lines, one per frame, all cameras (appended); status records go "
                   "to NAME.status.jsonl beside it.")
@click.option("--status-json", default=None, type=click.Path(path_type=Path),
              help="Where to append the status records instead.")
@click.option("--transport", type=click.Choice(["tcp", "udp"]), default=None,
              help="RTSP transport for the cameras [config: tcp].")
@click.option("--stall-timeout", type=float, callback=_positive, default=None,
              help="Seconds without a frame before a stream counts as stalled and is "
                   "reconnected [config: 5].")
@click.option("--max-reconnects", type=int, callback=_reconnects, default=None,
              help="Failed reconnect attempts in a row before a camera is given up; "
                   "-1: never [config: -1].")
@click.option("--status-every", type=float, callback=_positive, default=None,
              help="Seconds between status lines [config: 10].")
@click.option("--segment", "segment_s", type=float, callback=_positive, default=None,
              help="Length of each output segment in seconds [config: 10].")
@click.option("--keep-age", callback=_keep, default=None, metavar="DURATION",
              help="Delete finished segments older than this (90s, 30m, 24h, 7d) and drop "
                   "them from the .ffconcat list [config: keep all].")
@click.option("--keep-size", callback=_keep, default=None, metavar="SIZE",
              help="Per camera, delete the oldest finished segments beyond this total "
                   "(500M, 10G, 1T) [config: keep all].")
@click.option("--duration", "duration_s", type=float, callback=_positive, default=None,
              help="Stop after this many seconds (default: run until Ctrl-C/SIGTERM).")
@click.option("--backend", default=None, help="Classifier engine: auto|torch|onnxruntime|"
              "tensorrt [annotate config: auto].")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="GiMeFive weights (.safetensors or the paper's .pth) [default: shipped].")
@click.option("--detect-every", type=int, default=None,
              help="Detect on every Nth frame, track in between [annotate config: 1].")
@click.option("--cam-every", type=int, default=None,
              help="Grad-CAM on every Nth frame [annotate config: 1].")
@click.option("--no-cam", is_flag=True, help="No Grad-CAM (faster).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Monitor YAML [default: configs/monitor.yaml].")
@click.option("--stage-config", type=click.Path(path_type=Path), default=None,
              help="YAML for the stages [default: configs/annotate.yaml].")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="Keep each stage's log (stderr) here [default: a temporary folder "
                   "removed at the end].")
@click.option("-q", "--quiet", is_flag=True, help="No status lines (the JSON still gets them).")
@click.option("-v", "--verbose", is_flag=True, help="Also log every reconnect attempt.")
def monitor_command(urls, sources, out, json_path, status_json, transport, stall_timeout,
                    max_reconnects, status_every, segment_s, keep_age, keep_size,
                    duration_s, backend, weights,
                    detect_every, cam_every, no_cam, config_path, stage_config, log_dir, quiet,
                    verbose):
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
    cfg = load_monitor_config(
        config_path, out=out, json=str(json_path) if json_path else None,
        status_json=str(status_json) if status_json else None, transport=transport,
        stall_timeout_s=stall_timeout, max_reconnects=max_reconnects,
        status_every_s=status_every, segment_s=segment_s, duration_s=duration_s,
        keep_age_s=keep_age, keep_bytes=keep_size)
    all_sources = [*urls, *sources] or list(cfg.sources)
    if not all_sources:
        raise click.UsageError("give at least one camera URL (or --source, or sources: in "
                               "the config)")
    if not cfg.out and not cfg.json:
        raise click.UsageError("give -o FILE.mp4|rtsp://... and/or --json FILE")
    stage_cfg = load_annotate_config(
        stage_config or cfg.annotate_config, backend=backend,
        weights=str(weights) if weights else None, detect_every=detect_every,
        cam_every=cam_every, cam=False if no_cam else None)
    final = run_monitor(all_sources, cfg, stage_cfg, quiet=quiet, log_dir=log_dir)
    if not quiet:
        from gimefive.pipeline.live_monitor import format_status

        click.echo("stopped; " + format_status(final), err=True)
