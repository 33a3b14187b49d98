"""``gimefive train`` and ``gimefive eval``: thin click commands over the library."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from gimefive.train.config import DEFAULT_CONFIG, TrainConfig

from gimefive.config_cli import config_options
from gimefive.labels import UNCERTAIN_THRESHOLD

#: the recipe settings `train` offers as flags (all others: --config FILE)
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "seed", "max_train_images", "precision",
               "threads")


def _positive(ctx: click.Context, param: click.Parameter, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


@click.command("train", context_settings={"show_default": True})
@click.option("--data-dir", required=True, type=click.Path(path_type=Path),
              help="Folder holding the images named in the CSV.")
@click.option("--train-csv", required=True, type=click.Path(path_type=Path),
              help="Labels CSV, rows 'filename,label' (no header; labels 0..5). A stratified "
                   "validation split is carved from it; never pass test files here.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Recipe YAML (optimizer, schedule, augmentation, epochs, ...) [default: "
                   f"{DEFAULT_CONFIG.name} from configs/]. With --resume the run's own "
                   "config.yaml is used instead. Flags override it.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder: best.safetensors, state.pt, config.yaml, metrics.csv/json.")
@config_options(TrainConfig, *TRAIN_FLAGS)
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its state.pt (epoch, optimizer, RNG).")
@click.option("--strict", is_flag=True,
              help="Stop at the first missing or unreadable image instead of skipping it.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(data_dir: Path, train_csv: Path, config_path: Path | None, out_dir: Path,
                  overrides: dict, resume: bool, strict: bool, quiet: bool) -> None:
    """Train GiMeFive on an image folder plus a labels CSV.

    \b
    Example:
      gimefive train --data-dir ../shared/data/fer-gimefive/train \\
        --train-csv ../shared/data/fer-gimefive/splits/rafdb_train.csv \\
        --out runs/rafdb --epochs 3

    Interrupt at any time; rerun the same command with --resume to continue.
    """
    from gimefive.train.loop import CONFIG_FILE, load_train_config, train

    own_config = out_dir / CONFIG_FILE
    if resume and own_config.is_file():
        config_path = own_config
    config = load_train_config(config_path, **overrides)
    started = time.monotonic()
    result = train(config, data_dir, train_csv, out_dir, resume=resume, strict=strict,
                   progress=not quiet)
    minutes = (time.monotonic() - started) / 60
    how = "stopped early" if result.stopped_early else "done"
    click.echo(f"{how}: {result.epochs_run} epoch(s) in {minutes:.1f} min; best validation "
               f"accuracy {result.best_val_accuracy * 100:.2f}% at epoch {result.best_epoch}; "
               f"weights: {result.best_weights}")


@click.command("eval", context_settings={"show_default": True})
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="A .safetensors from `gimefive train` or the paper's .pth state dict. "
                   "[default: the shipped weights]")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path),
              help="Folder holding the images named in the CSV.")
@click.option("--csv", "csv_path", required=True, type=click.Path(path_type=Path),
              help="Labels CSV to evaluate on, rows 'filename,label' (no header).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for metrics.json, confusion.png and scores.csv.")
@click.option("--batch-size", type=int, default=256, callback=_positive,
              help="Faces per forward pass.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              help="fp32 for reported numbers; bf16 is faster where the CPU has AMX.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Top probability below which a face is 'uncertain'. [default: the "
                   f"weights' uncertain_threshold, else {UNCERTAIN_THRESHOLD}]")
@click.option("--strict", is_flag=True,
              help="Stop at the first missing or unreadable image instead of skipping it.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(weights: Path | None, data_dir: Path, csv_path: Path, out_dir: Path,
                 batch_size: int, precision: str, threshold: float | None, strict: bool,
                 quiet: bool) -> None:
    """Evaluate weights on a labelled split: accuracy, per-class accuracy, macro recall,
    a confusion-matrix PNG and a per-image scores CSV.

    \b
    Example:
      gimefive eval --data-dir ../shared/data/fer-gimefive/test \\
        --csv ../shared/data/fer-gimefive/splits/rafdb_test.csv -o eval/rafdb
    """
    from gimefive.train.data import load_split
    from gimefive.train.evaluate import (
        compute_metrics,
        format_metrics,
        predict_probs,
        write_report,
    )

    from gimefive.checkpoint import DEFAULT_WEIGHTS, load_model, uncertain_threshold_of

    split = load_split(data_dir, csv_path, strict=strict, progress=not quiet)
    model, meta = load_model(weights)
    if threshold is None:
        threshold = uncertain_threshold_of(weights, meta)
    started = time.monotonic()
    probs = predict_probs(model, split.images, batch_size=batch_size, precision=precision,
                          progress=not quiet)
    seconds = time.monotonic() - started
    metrics = compute_metrics(split.labels, probs)
    extra = {"weights": str(weights or DEFAULT_WEIGHTS), "csv": str(csv_path),
             "csv_sha256": split.csv_sha256, "skipped": split.skipped,
             "precision": precision, "seconds": round(seconds, 2)}
    paths = write_report(out_dir, metrics, split.filenames, split.labels, probs, threshold,
                         extra, title=f"{Path(csv_path).name} ({metrics.accuracy * 100:.2f}%)")
    if split.skipped:
        click.echo(f"skipped {len(split.skipped)} missing or unreadable image(s), e.g. "
                   f"{Path(data_dir) / split.skipped[0]}", err=True)
    click.echo(format_metrics(metrics))
    uncertain = json.loads(paths["metrics"].read_text())["uncertain_count"]
    click.echo(f"uncertain (top probability < {threshold:.2f}): {uncertain} of {metrics.count}")
    click.echo(f"wrote {paths['metrics']}, {paths['confusion']}, {paths['scores']}")
