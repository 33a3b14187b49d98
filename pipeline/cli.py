"""``gimefive annotate`` and ``gimefive stage``: thin click commands over pipeline.run."""

from __future__ import annotations

import json
from pathlib import Path

import click
from gimefive.pipeline.config import DEFAULT_CONFIG


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be >= 1, got {value}")
    return value


def _opacity(ctx, param, value):
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"must be between 0 and 1, got {value}")
    return value


@click.command("annotate", context_settings={"show_default": True})
@click.argument("input_path", metavar="INPUT")  # a file or an rtsp:// URL (click.Path
@click.option("-o", "--output", type=click.Path(path_type=Path),  # would eat the "//")
              help="Annotated video to write (.mp4); same size, frame rate and timestamps.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="JSON lines, one per frame: faces, boxes, landmarks, probabilities, "
                   "label, uncertain flag, Grad-CAM summary.")
@click.option("--cam-npz", type=click.Path(path_type=Path),
              help="Also save every face's Grad-CAM map (frame, track id, box, cam) here.")
@click.option("--backend", default=None, help="Classifier engine: auto|torch|onnxruntime|"
              "tensorrt [config default: auto, the fastest available].")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="GiMeFive weights (.safetensors or the paper's .pth) [default: shipped].")
@click.option("--detect-every", type=int, callback=_positive, default=None,
              help="Detect faces on every Nth frame, track them in between [config: 1].")
@click.option("--cam-every", type=int, callback=_positive, default=None,
              help="Grad-CAM on every Nth frame; probabilities on all [config: 1].")
@click.option("--no-cam", is_flag=True, help="No Grad-CAM at all (faster).")
@click.option("--landmarks68", is_flag=True, default=None,
              help="Also draw and write dlib's 68 landmarks (extra: gimefive[landmarks68]).")
@click.option("--cam-opacity", type=float, callback=_opacity, default=None,
              help="Opacity of the Grad-CAM overlay inside each box, 0..1 [config: 0.45].")
@click.option("--align", type=click.Choice(["eyes", "landmarks", "none"]), default=None,
              help="Crop framing: the box turned so the eyes are level, a fit of the "
                   "training crops' landmark template, or the plain box [config: eyes].")
@click.option("--detect-size", type=int, callback=_positive, default=None,
              help="Long side frames are shrunk to for detection; larger finds smaller "
                   "faces, slower [config: 640].")
@click.option("--detect-upscale", is_flag=True, default=None,
              help="Also enlarge smaller frames to --detect-size: finds faces under about "
                   "30 px (wide shots), at several times the detector's cost.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help=f"YAML config [default: {DEFAULT_CONFIG.name} from configs/].")
@click.option("--summary", "summary_path", type=click.Path(path_type=Path), default=None,
              help="Write the run summary (per-stage fps, CPU, timings) as JSON here.")
@click.option("--force", is_flag=True,
              help="Replace existing outputs (never the input). Outputs are written under "
                   "a temporary name and renamed only when the run succeeds.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def annotate_command(input_path, output, json_path, cam_npz, backend, weights, detect_every,
                     cam_every, no_cam, landmarks68, cam_opacity, align, detect_size,
                     detect_upscale, config_path, summary_path, force, quiet):
    """Annotate a video: each face's emotion, confidence and Grad-CAM, frame by frame.

    Decoding, detection, classification, tracking and encoding run as separate
    processes connected by ZeroMQ. Every input frame appears exactly once in the
    output, with the input's timestamps; audio is copied through.

    Example: gimefive annotate talk.mp4 -o talk_annotated.mp4 --json faces.jsonl

    INPUT may be @FILE, a file holding the URL (a camera password then stays out of
    `ps`); passwords are shown as *** in every line and file gimefive writes.
    """
    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.run import annotate_video, format_summary

    from gimefive.urls import from_arg_file

    input_path = from_arg_file(input_path)  # @FILE: a camera URL kept out of `ps`
    if output is None and json_path is None:
        raise click.BadParameter("give -o OUTPUT.mp4 and/or --json FILE", param_hint="-o")
    config = load_annotate_config(
        config_path, backend=backend, weights=str(weights) if weights else None,
        detect_every=detect_every, cam_every=cam_every, cam_opacity=cam_opacity,
        cam=False if no_cam else None, landmarks68=landmarks68, align=align,
        detect_max_side=detect_size, detect_upscale=detect_upscale)
    result = annotate_video(input_path, output, json_path=json_path, cam_npz=cam_npz,
                            config=config, progress=not quiet, summary_path=summary_path,
                            force=force)
    if not quiet:
        click.echo(format_summary(result), err=True)
        written = ", ".join(str(p) for p in (output, json_path, cam_npz) if p)
        click.echo(f"wrote {written}", err=True)


@click.command("stage", context_settings={"show_default": True})
@click.argument("name", type=click.Choice(["source", "detect", "classify", "track",
                                           "annotate"]))
@click.option("--in", "in_", required=True,
              help="Input: the video for `source`, else an endpoint this stage binds "
                   "(ipc://PATH or tcp://HOST:PORT). @FILE: read it from FILE (keeps a "
                   "URL's password out of `ps`).")
@click.option("--out", "out", required=True,
              help="Output: the video for `annotate`, else the next stage's endpoint "
                   "(connected). @FILE: read it from FILE.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help=f"YAML config [default: {DEFAULT_CONFIG.name}].")
@click.option("--config-json", default=None, hidden=True)
@click.option("--backend", default=None, help="classify: engine [config default: auto].")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="classify: GiMeFive weights [default: shipped].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="annotate: also write JSON lines here.")
@click.option("--cam-npz", type=click.Path(path_type=Path), default=None,
              help="annotate: also save Grad-CAM arrays here.")
@click.option("--audio-from", default=None,
              help="annotate: copy audio from this input (@FILE: read it from FILE).")
@click.option("--stream", default="0", help="source: stream id carried by its frames.")
@click.option("--control", default=None, help="Supervisor endpoint for status reports.")
@click.option("--gate", default=None, hidden=True,
              help="source: wait for one message on this endpoint before decoding.")
@click.option("--curve-keys", type=click.Path(path_type=Path), default=None,
              help="Directory with CurveZMQ keys (server.key_secret to bind, server.key "
                   "to connect) for tcp:// across hosts.")
@click.option("--insecure", is_flag=True,
              help="Allow binding a non-loopback tcp:// address without CurveZMQ.")
def stage_command(name, in_, out, config_path, config_json, backend, weights, json_path,
                  cam_npz, audio_from, stream, control, gate, curve_keys, insecure):
    """Run one pipeline stage alone, e.g. on another host.

    Stages bind their input and connect their output. A two-host example:

    \b
      host B: gimefive stage classify --in tcp://0.0.0.0:5601 --out ipc:///tmp/g/track.sock \\
                --curve-keys keys/
      host A: gimefive stage detect --in ipc:///tmp/g/detect.sock --out tcp://B:5601 \\
                --curve-keys keys/
    """
    from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
    from gimefive.pipeline.run import run_stage
    from gimefive.pipeline.wire import CurveKeys

    from gimefive.config import from_dict
    from gimefive.urls import from_arg_file

    # @FILE: the value is in that file (how `annotate`/`monitor` hand a URL to a stage,
    # so that a password in it never shows in `ps`)
    in_, out, audio_from = (from_arg_file(v) for v in (in_, out, audio_from))
    overrides = {"backend": backend, "weights": str(weights) if weights else None}
    if config_json:
        data = json.loads(config_json) | {k: v for k, v in overrides.items() if v is not None}
        config = from_dict(AnnotateConfig, data, source="--config-json")
    else:
        config = load_annotate_config(config_path, **overrides)
    curve = CurveKeys.from_directory(curve_keys) if curve_keys else None
    run_stage(name, in_, out, config, control=control, curve=curve, insecure=insecure,
              json=json_path, cam_npz=cam_npz, audio_from=audio_from, stream=stream, gate=gate)
