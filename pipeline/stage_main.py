"""``python -m gimefive.pipeline.stage_main NAME ...``: what the supervisor starts per stage.

It is ``gimefive stage NAME ...`` without the console script, so a stage started by
``gimefive annotate`` and one started by hand run the same code.
"""

import sys

from gimefive.cli import main

if __name__ == "__main__":
    main(["stage", *sys.argv[1:]])
