"""The ``gimefive`` command: a thin click group over the library.

Subcommands are imported only when used, so ``gimefive --help`` stays fast and one
broken optional dependency cannot take the whole CLI down. Library code raises
:class:`~gimefive.errors.GimefiveError`; :func:`main` turns it into one line on stderr
and a non-zero exit status.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from gimefive import __version__
from gimefive.errors import GimefiveError
from gimefive.urls import redact_text

#: subcommand name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "train": "gimefive.train.cli:train_command",
    "eval": "gimefive.train.cli:eval_command",
    "pack-data": "gimefive.train.pack:pack_command",
    "unpack-data": "gimefive.train.pack:unpack_command",
    "export": "gimefive.export.cli:export_command",
    "explain": "gimefive.export.cli:explain_command",
    "annotate": "gimefive.pipeline.cli:annotate_command",
    "stage": "gimefive.pipeline.cli:stage_command",
    "keys": "gimefive.pipeline.cli:keys_command",
    "monitor": "gimefive.pipeline.monitor_cli:monitor_command",
    "bench": "gimefive.pipeline.bench_cli:bench_command",
    "report": "gimefive.pipeline.report.cli:report_command",
}

SHORT_HELP: dict[str, str] = {
    "train": "Train GiMeFive on an image folder + labels CSV.",
    "eval": "Accuracy, per-class recall, confusion matrix and per-image scores.",
    "pack-data": "Pack a training split into one small file (to train elsewhere).",
    "unpack-data": "Unpack a packed split into a folder + CSV for `gimefive train`.",
    "export": "Export the model to ONNX or TensorRT (probabilities + Grad-CAM).",
    "explain": "Scores CSV and Grad-CAM figures for images.",
    "annotate": "Annotate a video file: faces, emotions, Grad-CAM.",
    "stage": "Run one pipeline stage alone (for multi-host set-ups).",
    "keys": "Write CurveZMQ keys for stages on several hosts.",
    "monitor": "Monitor live RTSP cameras.",
    "bench": "Measure the whole system side by side.",
    "report": "Per-person tables, timelines and an HTML page from annotate's JSON.",
}


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if _available(n)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, SHORT_HELP.get(n, "")) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gimefive")
def cli() -> None:
    """GiMeFive: which of six emotions each face shows, frame by frame, and why.

    Classes: happiness, surprise, sadness, anger, disgust, fear. Every
    prediction can carry a Grad-CAM heatmap computed in the same forward pass.
    Run `gimefive COMMAND --help` for each command's options.
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="gimefive", standalone_mode=False)
    except GimefiveError as exc:
        click.echo(f"gimefive: error: {redact_text(exc)}", err=True)  # no URL password
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("gimefive: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("gimefive: interrupted", err=True)
        sys.exit(130)
