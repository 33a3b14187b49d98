"""``gimefive report``: a thin click command over :func:`build_report`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report", context_settings={"show_default": True})
@click.argument("jsonl", metavar="FACES.jsonl", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Report folder to write (tracks.csv, faces.csv, timeline.png, "
                   "classes.png, report.html).")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="The annotated or the source video: face thumbnails are cut from it.")
@click.option("--cam-npz", type=click.Path(path_type=Path), default=None,
              help="annotate's --cam-npz file: Grad-CAM thumbnails.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="The run's resolved config [default: VIDEO.config.yaml when present].")
@click.option("--no-thumbnails", is_flag=True,
              help="Show no face pixels in the report (CAM maps alone).")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty report folder "
              "(written aside and swapped in only when the report is complete).")
def report_command(jsonl, out_dir, video, cam_npz, config_path, no_thumbnails, force):
    """Per-person tables, emotion timelines and one HTML page from annotate's JSON lines.

    Example: gimefive report faces.jsonl --video talk.mp4 -o talk_report/

    report.html is self-contained (no network resources): open it in any browser.
    """
    from . import build_report

    result = build_report(jsonl, out_dir, video=video, cam_npz=cam_npz,
                          config_path=config_path, force=force,
                          thumbnails=not no_thumbnails)
    echo_result(result)


def echo_result(result) -> None:
    """The notes (e.g. Parquet skipped) and what was written, on stderr."""
    for note in result.notes:
        click.echo(note, err=True)
    summary = result.summary
    click.echo(f"report of {summary.records} frames, {len(summary.tracks)} tracks: wrote "
               f"{', '.join(result.files)} in {result.out_dir}", err=True)


class ReportAfterRun:
    """``annotate --report DIR``: the report built from the run's published outputs.

    The folder is checked before the run (no long run for a refused folder). Without
    ``--json`` (and ``--cam-npz``, when Grad-CAM is on) the run writes them into a hidden
    folder beside DIR, removed by :meth:`cleanup` whatever happens.
    """

    def __init__(self, out_dir: Path, json_path: Path | None, cam_npz: Path | None,
                 cam: bool, force: bool) -> None:
        import os
        import shutil

        from .build import check_report_dir

        self.out_dir, self.force = check_report_dir(out_dir, force), force
        self.scratch = None
        if json_path is None or (cam_npz is None and cam):
            self.scratch = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.run")
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir(mode=0o700)
        self.json_path = json_path or self.scratch / "faces.jsonl"
        self.cam_npz = cam_npz or (self.scratch / "cam.npz" if cam else None)

    def write(self, input_path, output: Path | None, config, quiet: bool) -> None:
        """Build the report; thumbnails from the source file (no overlay over the face),
        else the annotated video; the run's settings from ``config``."""
        from gimefive.config import to_dict

        from . import build_report

        source = Path(input_path) if "://" not in str(input_path) else None
        video = source if source is not None and source.is_file() else output
        result = build_report(self.json_path, self.out_dir, video=video, cam_npz=self.cam_npz,
                              settings=to_dict(config), force=self.force)
        if not quiet:
            echo_result(result)

    def cleanup(self) -> None:
        import shutil

        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
