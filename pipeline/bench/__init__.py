"""``gimefive bench``'s measurements, shipped in the package so that the command works
from a wheel install (the ``benchmarks/`` scripts of a checkout are thin wrappers).

Besides modules it holds two files that run outside this interpreter, in the paper
baseline's own OpenCV 4 venv: ``paper_baseline.py`` and ``setup_baseline_venv.sh``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bench_file(name: str) -> Path:
    """Path of a file shipped in this package (a script another interpreter runs)."""
    return Path(str(resources.files(__name__) / name))
