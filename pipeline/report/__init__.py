"""``gimefive report``: per-person summaries, timelines and one HTML page from the JSON
lines of ``gimefive annotate`` (see docs/report.md).

:func:`build_report` writes ``tracks.csv``, ``faces.csv`` (+ ``faces.parquet`` with
pyarrow), ``timeline.png``, ``classes.png`` and ``report.html`` into one folder.
"""

from .build import ReportResult, build_report, check_report_dir

__all__ = ["ReportResult", "build_report", "check_report_dir"]
