"""The paper-script baseline: runs gimefive/pipeline/bench/paper_baseline.py (see there).

Kept so that the documented command works; it runs in the baseline venv, which has no
gimefive installed, so it starts the packaged script by its path in this checkout::

    benchmarks/.venv-baseline/bin/python benchmarks/paper_baseline.py VIDEO --weights W
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parent.parent / "pipeline" / "bench" / "paper_baseline.py"
    runpy.run_path(str(script), run_name="__main__")
