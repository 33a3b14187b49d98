"""``python -m gimefive.pipeline.stage_main NAME ...``: what the supervisor starts per stage.

It is ``gimefive stage NAME ...`` without the console script, so a stage started by
``gimefive annotate`` and one started by hand run the same code. ``kill -USR1 PID``
writes every thread's stack to the stage's log (stderr): how to see where a stuck
stage is, even inside C code.
"""

import faulthandler
import signal
import sys

from gimefive.cli import main

if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    main(["stage", *sys.argv[1:]])
