"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--out DIR] [--force]``."""

import sys

from composition_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
