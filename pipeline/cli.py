"""``gimefive annotate`` and ``gimefive stage``: thin click commands over pipeline.run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from gimefive.pipeline.batch import BatchOptions
from gimefive.pipeline.config import DEFAULT_CONFIG, AnnotateConfig
from gimefive.pipeline.readers import READERS
from gimefive.pipeline.replicas import SPLIT
from gimefive.pipeline.stage import HWM
from gimefive.pipeline.stages import STAGES

from gimefive.config_cli import config_options

#: the stage settings `annotate` offers as flags (all others: --config FILE)
ANNOTATE_FLAGS = ("backend", "weights", "detect_every", "classify_every", "cam_every", "cam",
                  "landmarks68", "cam_opacity", "overlay", "blur_faces", "align", "detect_max_side",
                  "detect_upscale", "detect_replicas", "classify_replicas")

#: how several files are run (`--out-dir`): here in parallel, or on a Ray cluster
BATCH_FLAGS = ("jobs", "ray", "ray_transfer", "ray_cpus", "ray_gpus", "ray_retries")
#: options that name one input's outputs or a camera's recording: refused with --out-dir
ONE_INPUT = {"output": "-o", "json_path": "--json", "cam_npz": "--cam-npz",
             "events_path": "--events", "mqtt": "--mqtt", "summary_path": "--summary",
             "report_dir": "--report", "duration_s": "--duration",
             "max_reconnects": "--max-reconnects"}


@click.command("annotate", context_settings={"show_default": True})
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)  # (click.Path
@click.option("-o", "--output", type=click.Path(path_type=Path),  # would eat the "//")
              help="Annotated video to write (.mp4); same size, frame rate and timestamps.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="JSON lines, one per frame: faces, boxes, landmarks, probabilities, "
                   "label, uncertain flag, Grad-CAM summary.")
@click.option("--cam-npz", type=click.Path(path_type=Path),
              help="Also save every Grad-CAM map computed (frame, track id, box, cam) "
                   "here, each once.")
@click.option("--events", "events_path", type=click.Path(path_type=Path), default=None,
              help="Also append per-track events (appeared, label_changed, left) here as "
                   "JSON lines.")
@click.option("--mqtt", default=None, metavar="mqtt://HOST:PORT/TOPIC",
              help="Also publish the events there (QoS 1; extra: gimefive[mqtt]).")
@config_options(AnnotateConfig, *ANNOTATE_FLAGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help=f"YAML config [default: {DEFAULT_CONFIG.name} from configs/].")
@click.option("--summary", "summary_path", type=click.Path(path_type=Path), default=None,
              help="Write the run summary (per-stage fps, CPU, timings) as JSON here.")
@click.option("--force", is_flag=True,
              help="Replace existing outputs (never the input). Outputs are written under "
                   "a temporary name and renamed only when the run succeeds.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="A camera: stop recording after this many seconds "
              "(default: until Ctrl-C/SIGTERM or the camera is given up).")
@click.option("--max-reconnects", type=click.IntRange(min=-1), default=None,
              help="A camera: failed reconnect attempts in a row before it is given up "
                   "(what was recorded is still written); -1: never [default: -1].")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write `gimefive report`'s folder (tables, timelines, HTML page) "
                   "here once the run succeeds; needs no --json.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Several inputs: write each one's STEM_annotated.mp4, STEM.jsonl and "
                   "STEM.summary.json here (a folder that exists), then print a table.")
@config_options(BatchOptions, *BATCH_FLAGS, dest="batch_overrides",
                ray={"metavar": "auto|ADDRESS"})
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def annotate_command(inputs, output, json_path, cam_npz, events_path, mqtt, overrides,
                     config_path, summary_path, force, duration_s, max_reconnects, quiet,
                     report_dir, out_dir, batch_overrides):
    """Annotate a video: each face's emotion, confidence and Grad-CAM, frame by frame.

    Decoding, detection, classification, tracking and encoding run as separate
    processes connected by ZeroMQ. Every input frame appears exactly once in the
    output, with the input's timestamps; audio is copied through.

    Example: gimefive annotate talk.mp4 -o talk_annotated.mp4 --json faces.jsonl

    A camera (rtsp://...) is read as `gimefive monitor` reads it: timeouts, reconnects
    through outages, the oldest frames dropped when behind. It is recorded until Ctrl-C
    or SIGTERM, --duration, or until it is given up (--max-reconnects); each of these
    ends the recording and the outputs are finalised and written (a camera given up
    still exits non-zero). Cameras have no audio.

    INPUT may be @FILE, a file holding the URL (a camera password then stays out of
    `ps`); passwords are shown as *** in every line and file gimefive writes.

    Several files: gimefive annotate a.mp4 'clips/*.mp4' @list.txt --out-dir out/
    (paths, glob patterns, or @FILE lists of them, one a line). They run --jobs at a
    time here, or as Ray tasks on a cluster with --ray (docs/cluster.md); each file's
    outputs appear under their names only when complete. Cameras are not accepted.
    """
    if out_dir is not None or len(inputs) > 1 or batch_overrides:
        _annotate_files(inputs, out_dir, overrides, config_path, force, quiet,
                        batch_overrides, locals())
        return
    (input_path,) = inputs
    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.run import annotate_video
    from gimefive.pipeline.summary import format_summary

    from gimefive.urls import from_arg_file

    input_path = from_arg_file(input_path)  # @FILE: a camera URL kept out of `ps`
    if output is None and json_path is None and report_dir is None:
        raise click.BadParameter("give -o OUTPUT.mp4 and/or --json FILE", param_hint="-o")
    from gimefive.pipeline.probe import is_live

    if not is_live(input_path) and (duration_s or max_reconnects is not None):
        raise click.BadParameter("only for a camera (rtsp://...); a file is read to its end",
                                 param_hint="--duration" if duration_s else "--max-reconnects")
    config = load_annotate_config(config_path, **overrides)
    report = None
    if report_dir is not None:  # checked now; --json/--cam-npz to a scratch folder if absent
        from gimefive.pipeline.report.cli import ReportAfterRun

        report = ReportAfterRun(report_dir, json_path, cam_npz, config.cam, force)
        click.get_current_context().call_on_close(report.cleanup)
        json_path, cam_npz = report.json_path, report.cam_npz
    camera = {"max_reconnects": max_reconnects} if max_reconnects is not None else None
    result = annotate_video(input_path, output, json_path=json_path, cam_npz=cam_npz,
                            config=config, progress=not quiet, summary_path=summary_path,
                            force=force, duration_s=duration_s or 0.0, camera=camera,
                            events=events_path, mqtt=from_arg_file(mqtt))
    if not quiet:
        click.echo(format_summary(result), err=True)
        written = ", ".join(str(p) for p in (output, json_path, cam_npz) if p)
        click.echo(f"wrote {written}", err=True)
    if report is not None:
        report.write(input_path, output, config, quiet)


def _annotate_files(inputs, out_dir, overrides, config_path, force, quiet, batch_overrides,
                    given):
    """``annotate IN... --out-dir DIR``: the files of pipeline/batch.py, each named after
    its input; options that name one input's outputs are refused with one line."""
    from gimefive.pipeline.batch import run_batch
    from gimefive.pipeline.config import load_annotate_config

    if out_dir is None:
        hint = "--ray" if "ray" in batch_overrides else \
            "--jobs" if batch_overrides else "several inputs"
        raise click.BadParameter(f"{hint}: give --out-dir DIR (each input's outputs are "
                                 "named after it there)", param_hint="--out-dir")
    for name, flag in ONE_INPUT.items():
        if given[name] is not None:
            raise click.BadParameter(f"{flag} names one input's output; with several "
                                     "inputs or --out-dir each file's outputs are named in "
                                     "DIR", param_hint=flag)
    options = BatchOptions(**batch_overrides)
    config = load_annotate_config(config_path, **overrides)
    run_batch(list(inputs), out_dir, config, options, force=force, quiet=quiet)


def _live_options(ctx, param, value):
    """``--live-json``: a JSON object of camera options, checked here (one line)."""
    if value is None:
        return None
    from gimefive.pipeline.live_source import LiveOptions

    from gimefive.errors import GimefiveError

    try:
        options = json.loads(value)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
        LiveOptions(**options)
    except (ValueError, TypeError, GimefiveError) as exc:
        raise click.BadParameter(f"expected camera options as a JSON object: {exc}") from None
    return options


@click.command("stage", context_settings={"show_default": True})
@click.argument("name", type=click.Choice(list(STAGES)))
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
@config_options(AnnotateConfig, "backend", "weights")
@click.option("--hwm", type=click.IntRange(min=1), default=HWM,
              help="Messages queued per hop (per side); the monitor uses 1 (low latency).")
@click.option("--ends", type=click.IntRange(min=0), default=1,
              help="End-of-stream messages that end this stage: the job's number of "
                   "streams; 0: a live run, until stopped.")
@click.option("--upstream", type=click.IntRange(min=1), default=1,
              help="Replicas of the stage before this one, all connected to --in: their "
                   "frames are put back in order, their ends of a stream counted as one.")
@click.option("--replica", type=click.IntRange(min=0), default=None,
              help="detect/classify: this process is replica I of its stage, --in its own "
                   "endpoint; it reports as NAME#I (0: NAME). --out A,B: send to the "
                   "replicas of the next stage.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="annotate: also write JSON lines here.")
@click.option("--cam-npz", type=click.Path(path_type=Path), default=None,
              help="annotate: also save Grad-CAM arrays here.")
@click.option("--audio-from", default=None,
              help="annotate: copy audio from this input (@FILE: read it from FILE).")
@click.option("--events", "events_path", default=None,
              help="annotate: append per-track events (appeared, label_changed, left) "
                   "here as JSON lines.")
@click.option("--mqtt", default=None, help="annotate: publish the events to "
              "mqtt://HOST[:PORT]/TOPIC (@FILE: read it from FILE).")
@click.option("--stream", default=None,
              help="source: stream id carried by its frames [default: 0]; when given the "
                   "stage reports to --control as source-ID.")
@click.option("--reader", type=click.Choice(["auto", *READERS]), default="auto",
              help="source: how to read --in: auto (a URL: rtsp, a path: file); file; rtsp "
                   "(a camera: timeouts, reconnects, drops the oldest frames when behind); "
                   "loop (a file played as a camera, at its frame rate, looping).")
@click.option("--live-json", "live", default=None, callback=_live_options,
              metavar="JSON", help="source: camera options as JSON, e.g. "
              "'{\"transport\": \"udp\", \"max_reconnects\": 5}' (fields of "
              "gimefive.pipeline.live_source.LiveOptions).")
@click.option("--index-from", type=click.IntRange(min=0), default=0, hidden=True,
              help="source: number of its first frame (a restarted camera continues).")
@click.option("--live", "live_out", is_flag=True,
              help="annotate: live outputs, until stopped: --out FILE.mp4 as fragmented-MP4 "
                   "segments (listed in FILE.ffconcat) or an rtsp:// URL to push to; "
                   "--json appended. --out - : no video.")
@click.option("--streams", default="", help="annotate --live: the run's stream ids, comma "
              "separated (several: one video output per stream).")
@click.option("--segment-s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              help="annotate --live: length of each segment in seconds.")
@click.option("--keep-age-s", type=click.FloatRange(min=0), default=0.0,
              help="annotate --live: delete finished segments older than this (0: keep).")
@click.option("--keep-bytes", type=click.IntRange(min=0), default=0,
              help="annotate --live: per stream, delete the oldest finished segments "
                   "beyond this total (0: keep).")
@click.option("--push-transport", type=click.Choice(["udp", "tcp"]), default="udp",
              help="annotate --live: RTSP transport of an rtsp:// --out.")
@click.option("--frames-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The run's private folder of frames in shared memory (/dev/shm), the "
                   "same for every stage on this host: the source writes each frame there "
                   "once and messages refer to it. Without it frames travel inside the "
                   "messages (stages on other hosts).")
@click.option("--control", default=None, help="Supervisor endpoint for status reports.")
@click.option("--gate", default=None, hidden=True,
              help="source: wait for one message on this endpoint before decoding.")
@click.option("--curve-keys", type=click.Path(path_type=Path), default=None,
              help="Folder of CurveZMQ keys for tcp:// across hosts (`gimefive keys`): to "
                   "bind, server.key_secret and clients/*.key (the only clients let in); "
                   "to connect, server.key and this host's client.key_secret.")
@click.option("--insecure", is_flag=True,
              help="Allow binding or connecting a non-loopback address without CurveZMQ.")
def stage_command(name, in_, out, config_path, config_json, overrides, hwm, ends, upstream,
                  replica, json_path,
                  cam_npz, audio_from, events_path, mqtt, stream, reader, live, index_from,
                  live_out, streams,
                  segment_s, keep_age_s, keep_bytes, push_transport, frames_dir, control,
                  gate, curve_keys, insecure):
    """Run one pipeline stage alone, e.g. on another host.

    Stages bind their input and connect their output. A two-host example:

    \b
      host B: gimefive stage classify --in tcp://0.0.0.0:5601 \\
                --out ipc:///tmp/g/annotate.sock --curve-keys keys/
      host A: gimefive stage track --in ipc:///tmp/g/track.sock --out tcp://B:5601 \\
                --curve-keys keys/

    A camera works the same way (`source --in rtsp://...`): it reconnects through
    outages and drops its oldest frames when the pipeline is behind; Ctrl-C or SIGTERM
    ends its stream, and every stage after it then finishes its outputs and exits.
    """
    from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
    from gimefive.pipeline.run import run_stage
    from gimefive.pipeline.transport import CurveKeys

    from gimefive.config import from_dict
    from gimefive.urls import from_arg_file

    # @FILE: the value is in that file (how `annotate`/`monitor` hand a URL to a stage,
    # so that a password in it never shows in `ps`)
    in_, out, audio_from, mqtt = (from_arg_file(v) for v in (in_, out, audio_from, mqtt))
    if config_json:
        data = json.loads(config_json) | overrides
        config = from_dict(AnnotateConfig, data, source="--config-json")
    else:
        config = load_annotate_config(config_path, **overrides)
    curve = CurveKeys.from_directory(curve_keys) if curve_keys else None
    job = {"json": json_path, "cam_npz": cam_npz, "audio_from": audio_from, "gate": gate}
    if name == "annotate":
        job |= {"events": events_path, "mqtt": mqtt}
    if name == "source":
        job |= {"stream": stream, "reader": reader, "live": live, "index_from": index_from}
    if name == "annotate" and live_out:
        job |= {"live": True, "streams": [s for s in streams.split(",") if s],
                "segment_s": segment_s, "keep_age_s": keep_age_s, "keep_bytes": keep_bytes,
                "push_transport": push_transport}
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,  # a camera's outages
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("libav").setLevel(logging.ERROR)
    if replica is not None and name not in SPLIT:
        raise click.BadParameter(f"only {' and '.join(SPLIT)} run as replicas",
                                 param_hint="--replica")
    run_stage(name, in_, out, config, control=control, curve=curve, insecure=insecure,
              hwm=hwm, ends=ends, upstream=upstream, replica=replica,
              frames_dir=frames_dir, **job)


@click.command("keys")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--client", is_flag=True,
              help="Write this host's client pair (client.key*) instead of the server's.")
def keys_command(directory: Path, client: bool) -> None:
    """Write a CurveZMQ key pair for `gimefive stage --curve-keys` (secret file mode 0600).

    \b
    binding host:     gimefive keys keys/            (server.key, server.key_secret, clients/)
    connecting host:  gimefive keys keys/ --client   (client.key, client.key_secret)
    then copy the server's server.key to the connecting host's folder, and the client's
    client.key into the binding host's clients/ (any NAME.key): only those clients get in.
    """
    from gimefive.pipeline.transport import make_keys

    public, secret = make_keys(directory, "client" if client else "server")
    click.echo(f"wrote {public} and {secret}")
