"""``python -m gimefive.pipeline.live_stage_main source|annotate ...``: one live stage process.

What ``gimefive monitor``'s supervisor starts for the camera sources and the live sink
(detect, classify and track are the pipeline's own ``gimefive stage`` processes). A stop
by SIGTERM/SIGINT is the normal end of a live stage: outputs are finalised and the exit
status is 0. Any other failure is reported to the supervisor as one line and the exit
status is non-zero, so the supervisor can restart the stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_stages import LiveAnnotateStage, LiveSourceStage
from gimefive.pipeline.stage import StageRunner, Stopped
from gimefive.pipeline.supervisor import EXIT_NO_RESTART, restart_cannot_fix
from gimefive.pipeline.wire import report_stage_error

from gimefive.config import from_dict
from gimefive.errors import GimefiveError
from gimefive.urls import from_arg_file, redact_text


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="live_stage_main", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=["source", "annotate"])
    p.add_argument("--in", dest="in_", required=True, help="@FILE: read it from FILE")
    p.add_argument("--out", required=True, help="@FILE: read it from FILE")
    p.add_argument("--config-json", required=True)
    p.add_argument("--control", default=None)
    p.add_argument("--stream", default="0")
    p.add_argument("--live-json", default="{}", help="LiveOptions fields as JSON")
    p.add_argument("--index-from", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--streams", default="")
    p.add_argument("--segment-s", type=float, default=10.0)
    p.add_argument("--keep-age-s", type=float, default=0.0)
    p.add_argument("--keep-bytes", type=int, default=0)
    p.add_argument("--push-transport", default="udp")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[StageRunner, str]:
    config = from_dict(AnnotateConfig, json.loads(args.config_json), source="--config-json")
    # the monitor hands a camera URL and an rtsp:// output as @FILE, never in argv
    args.in_, args.out = from_arg_file(args.in_), from_arg_file(args.out)
    if args.name == "source":
        stage = LiveSourceStage(config, input=args.in_, stream=args.stream,
                                live=json.loads(args.live_json), index_from=args.index_from)
        runner = StageRunner(stage, None, args.out, args.control)
    else:
        stage = LiveAnnotateStage(config, output=args.out if args.out != "-" else "",
                                  json=args.json,
                                  streams=[s for s in args.streams.split(",") if s],
                                  segment_s=args.segment_s, push_transport=args.push_transport,
                                  keep_age_s=args.keep_age_s, keep_bytes=args.keep_bytes)
        runner = StageRunner(stage, args.in_, None, args.control)
    stage.report = runner.report
    return runner, stage.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("libav").setLevel(logging.ERROR)
    name = f"source-{args.stream}" if args.name == "source" else "annotate"
    status = 3
    try:
        runner, name = build(args)
        runner.run()
        return 0
    except Stopped:
        return 0
    except GimefiveError as exc:
        message = str(exc)
        status = EXIT_NO_RESTART if restart_cannot_fix(exc) else 3
    except Exception as exc:  # one line to the supervisor; the traceback goes to the log
        status = EXIT_NO_RESTART if restart_cannot_fix(exc) else 3
        sys.stderr.write(redact_text(traceback.format_exc()))
        message = f"{type(exc).__name__}: {exc}"
    message = redact_text(message)  # an FFmpeg error may quote the URL it opened
    print(f"{name}: {message}", file=sys.stderr)
    report_stage_error(args.control, name, message)
    return status  # EXIT_NO_RESTART: a full disk, say; the monitor then ends the run


if __name__ == "__main__":
    sys.exit(main())
