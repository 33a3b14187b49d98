"""``gimefive bench``: the one definition of the bench options, over
:mod:`gimefive.pipeline.bench.system_bench` (``python benchmarks/system_bench.py`` runs
this same command).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import click
from gimefive.pipeline.bench import system_bench
from gimefive.pipeline.config import AnnotateConfig

from gimefive.config_cli import config_options
from gimefive.errors import GimefiveError

PARTS = system_bench.SKIPPABLE


def _resolutions(ctx, param, value):
    allowed = tuple(system_bench.RESOLUTIONS)
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise click.BadParameter(f"expected a comma list of {', '.join(allowed)}; got {value!r}")
    return ",".join(items)


def _skip(ctx, param, value):
    items = [v.strip() for v in value.split(",") if v.strip()] if value else []
    bad = [v for v in items if v not in PARTS]
    if bad:
        raise click.BadParameter(f"unknown part(s) {bad}; expected some of {', '.join(PARTS)}")
    return ",".join(items)


def _at_least(minimum):
    def check(ctx, param, value):
        if value is not None and value < minimum:
            raise click.BadParameter(f"must be >= {minimum}, got {value}")
        return value
    return check


@click.command("bench", context_settings={"show_default": True})
@click.argument("video", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path),
              default=Path("benchmarks/results/system"),
              help="Folder for bench.json, bench.md and the PNG charts.")
@click.option("--resolutions", default="640x360,1280x720", callback=_resolutions,
              help="Generated scenes to measure on (ignored when VIDEO is given).")
@click.option("--frames", type=int, default=100, callback=_at_least(10),
              help="Frames per generated scene.")
@click.option("--fps", type=int, default=25, callback=_at_least(1),
              help="Frame rate of generated scenes (and the real-time target of scaling).")
@click.option("--scenes", default="closeup,wide",
              help="Generated scene kinds: closeup (5 faces, 1/6..1/1.8 of the height) and "
                   "wide (12 faces, 1/22..1/3, detector on 1280 px frames).")
@click.option("--face-sizes", default=None, metavar="MIN,MAX",
              help="Face sizes of the closeup scenes in px at 360 lines (scaled with the "
                   "height) [default: 60,200, shrunk to fit 5 faces].")
@click.option("--repeat", type=int, default=3, callback=_at_least(1),
              help="Timed runs per measurement (median and best are reported).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="GiMeFive weights [default: shipped; a random-init model if none].")
@config_options(AnnotateConfig, "backend", "cam", "cam_every", "classify_every", "detect_every",
                dest="pipeline")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Annotate YAML config for the pipeline runs.")
@click.option("--no-warmup", is_flag=True,
              help="Skip the untimed warm-up run of the pipeline (quick looks only).")
@click.option("--skip", default="", callback=_skip,
              help=f"Parts to leave out, comma separated: {', '.join(PARTS)}.")
@click.option("--baseline-venv", type=click.Path(path_type=Path),
              default=system_bench.BASELINE_VENV,
              help="Virtual environment with OpenCV 4 for the paper-script baseline "
                   "(created on first use).")
@click.option("--no-create-baseline-venv", is_flag=True,
              help="Skip the baseline (with the reason) instead of creating its venv.")
@click.option("--baseline-frames", type=int, default=None, callback=_at_least(1),
              help="Frames per baseline pass [default: all].")
@click.option("--baseline-repeat", type=int, default=None, callback=_at_least(1),
              help="Timed baseline passes [default: --repeat].")
@click.option("--classify-configs", default="torch fp32 (autograd CAM),"
              "torch bf16 (in-graph CAM),onnxruntime fp32",
              help="Classifier configurations (names from "
                   "gimefive/pipeline/bench/backends_bench.py).")
@click.option("--classify-batches", default="1,8,32", help="Classifier batch sizes.")
@click.option("--scaling-max", type=int, default=8, callback=_at_least(1),
              help="Most concurrent live streams to try (1, 2, 4, ...).")
@click.option("--scaling-seconds", type=float, default=15.0,
              help="Seconds measured per stream count, after the warm-up.")
@click.option("--scaling-warmup", type=float, default=8.0,
              help="Seconds of each stream-count run left out of the measurement.")
def bench_command(video, out, weights, config_path, baseline_venv, **options):
    """Measure the whole system side by side on the same input.

    Decode only, detect only, classify only (each backend, batch sizes, CAM off
    and on), the full annotate pipeline (per-stage fps, CPU, peak RSS, latency
    percentiles), the paper's own script (Haar cascade + per-face autograd
    Grad-CAM) as a baseline, and how many live 640x360 streams run in real time.
    Without VIDEO it generates 640x360 and 1280x720 scenes of real faces (with
    ground truth, so faces found are scored), close-up and wide. Writes JSON, a
    Markdown table and PNG charts to OUT. Run it on an otherwise idle machine: it takes minutes.

    Example: nice gimefive bench -o bench_results
    """
    if video is not None and not video.is_file():
        raise click.BadParameter(f"video not found: {video}", param_hint="VIDEO")
    args = argparse.Namespace(
        video=str(video) if video else None, out=str(out),
        weights=str(weights) if weights else None,
        config=str(config_path) if config_path else None,
        baseline_venv=str(baseline_venv), **options)
    try:
        system_bench.parse_scenes(options["scenes"])
    except GimefiveError as exc:
        raise click.BadParameter(str(exc).removeprefix("--scenes: "),
                                 param_hint="--scenes") from None
    classify_batches = options["classify_batches"]
    try:
        batches = [int(b) for b in classify_batches.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise click.BadParameter(f"expected positive integers, got {classify_batches!r}",
                                 param_hint="--classify-batches")
    result = system_bench.run(args)
    click.echo((out / "bench.md").read_text())
    click.echo(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and "
               f"{', '.join(result.get('charts', []))} in {result['wall_s']} s", err=True)
