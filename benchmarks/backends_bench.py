"""Classifier backends side by side: runs gimefive/pipeline/bench/backends_bench.py.

    nice python benchmarks/backends_bench.py [--weights W] [-o benchmarks/results/backends]
"""

import sys

from gimefive.pipeline.bench.backends_bench import main

if __name__ == "__main__":
    sys.exit(main())
