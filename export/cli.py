"""``gimefive export`` and ``gimefive explain``: thin click commands over the library."""

from __future__ import annotations

from pathlib import Path

import click
from gimefive.export.run import DEFAULT_CONFIG, ExportConfig, load_export_config, run_export

from gimefive.config_cli import config_options
from gimefive.errors import GimefiveError
from gimefive.labels import UNCERTAIN_THRESHOLD

CAM_LAYERS = click.Choice(["conv5", "conv4"])


#: the export settings offered as flags (the rest: --config FILE)
EXPORT_FLAGS = ("format", "precision", "cam_layer", "class_input", "weights", "output")


@click.command("export", context_settings={"show_default": True})
@config_options(ExportConfig, *EXPORT_FLAGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help=f"YAML config, the keys it changes [default: {DEFAULT_CONFIG.name} "
                   "from configs/].")
def export_command(overrides, config_path):
    """Export GiMeFive to ONNX or TensorRT with probabilities and Grad-CAM in one pass.

    Outputs `probs` [N,6] and `cam` [N,h,w] (the predicted class's Grad-CAM, 0..1 per
    face; 4x4 at conv5, 8x8 at conv4), batch size N dynamic, ONNX opset 17. The export
    verifies itself: onnx.checker, then ONNX Runtime against PyTorch autograd Grad-CAM
    on real faces (probs within 1e-5, CAM within 1e-4); it fails if they differ.

    Example: gimefive export --format onnx -o gimefive.onnx
    """
    try:
        config = load_export_config(config_path, **overrides)
    except GimefiveError as exc:
        raise click.BadParameter(str(exc)) from None
    report = run_export(config)
    click.echo(f"wrote {report['path']} ({report['format']} {report.get('precision', 'fp32')}, "
               f"opset {report['opset']}, CAM {report['cam_layer']} "
               f"{'x'.join(map(str, report['cam_shape']))})")
    click.echo(f"verified on {report['faces_source']}: probs max abs diff "
               f"{report['probs_max_abs_diff']:.2e}, CAM max abs diff "
               f"{report['cam_max_abs_diff']:.2e} (fp32 graph vs PyTorch autograd)")
    if "int8_vs_fp32" in report:
        q = report["int8_vs_fp32"]
        click.echo(f"int8 vs fp32 on the same faces: top-1 agreement "
                   f"{q['top1_agreement'] * 100:.1f}%, probs max abs diff "
                   f"{q['probs_max_abs_diff']:.3f}")
    if report["format"] == "tensorrt":
        click.echo("note: the engine's outputs were not compared numerically (see README)")


@click.command("explain", context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for scores.csv and the figures.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Model weights. [default: the shipped weights]")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]),
              default="auto", help="Classifier engine.")
@click.option("--cam-layer", type=CAM_LAYERS, default="conv5", help="Grad-CAM layer.")
@click.option("--detect", type=click.Choice(["auto", "always", "never"]), default="auto",
              help="auto: detect faces in images larger than --crop-max-side px, treat "
                   "smaller ones as face crops; never: every image is a face crop.")
@click.option("--crop-max-side", type=click.IntRange(min=1), default=128,
              help="Images up to this size count as face crops (with --detect auto).")
@click.option("--activations", is_flag=True,
              help="Also write a grid of the most active feature maps per conv block.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Uncertain below this top probability. [default: the weights' "
                   f"uncertain_threshold, else {UNCERTAIN_THRESHOLD}]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def explain_command(inputs, out_dir, weights, backend, cam_layer, detect, crop_max_side,
                    activations, threshold, quiet):
    """Classification scores and Grad-CAM figures for images (files or folders).

    Writes OUT/scores.csv (one row per face: the six probabilities, label, uncertain
    flag) and per face OUT/<image>_face<k>.png: original | heatmap | overlay.

    Example: gimefive explain photos/ -o explained/
    """
    from gimefive.export import explain as ex
    from tqdm import tqdm

    from gimefive.backends import create_backend
    from gimefive.checkpoint import load_model, uncertain_threshold_of

    paths = ex.collect_images(inputs)  # fail on a bad path before loading any model
    for p in paths:
        ex.read_image(p)
    ex_threshold = threshold if threshold is not None else uncertain_threshold_of(weights)
    model = load_model(weights)[0] if activations else None
    progress = None if quiet or len(paths) < 2 else (
        lambda it: tqdm(it, desc="explain", unit="face"))
    with create_backend(backend, weights=weights, cam_layer=cam_layer) as engine:
        summary = ex.explain(paths, out_dir, engine, ex_threshold, detect, model,
                             progress=progress, crop_max_side=crop_max_side)
    click.echo(f"{summary['faces']} face(s) from {summary['images']} image(s) "
               f"({summary['detected']} detected) with backend {engine.name}: "
               f"{summary['csv']} and figures in {out_dir}")
