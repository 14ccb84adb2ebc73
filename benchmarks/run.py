"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--out DIR] [--force]``;
``--backend-only [...]``: composition_jax alone on the present backend (``python -m
composition_jax.bench --help``)."""

import sys

from composition_jax.bench.__main__ import main as bench_main
from composition_jax.cli import main

if __name__ == "__main__":
    if "--backend-only" in sys.argv[1:]:
        sys.exit(bench_main(sys.argv[1:]))
    sys.exit(main(["bench", *sys.argv[1:]]))
