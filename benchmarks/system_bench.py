"""The whole system side by side: runs ``gimefive bench`` (same options, same output).

    nice python benchmarks/system_bench.py [VIDEO] [-o DIR]

The code is gimefive/pipeline/bench/system_bench.py; the options are defined once, by
the click command in pipeline/bench_cli.py.
"""

import sys

from gimefive.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
