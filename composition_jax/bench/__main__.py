"""``python -m composition_jax.bench [--backend-only] [--distributed ADDR,N,I] ...``.

Without ``--backend-only``: the side-by-side benchmark (the same as ``composition-jax bench``,
see ``benchmarks/README.md``). With ``--backend-only``: composition_jax alone on whatever backend
JAX finds (GPU, TPU or CPU), a size sweep with throughput, first-call time and device memory
statistics into ``--out/results.json`` (:func:`~composition_jax.bench.harness.run_backend`).

``--distributed COORDINATOR:PORT,NUM_PROCESSES,PROCESS_ID`` (backend mode): start JAX's
multi-controller runtime first (``jax.distributed.initialize``) and shard the particles over
the devices of all processes (``mesh=cj.particle_mesh()``); run the same command in every
process. Process 0 writes the results.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m composition_jax.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-only", action="store_true",
                    help="composition_jax alone on the present backend, a size sweep")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--sizes", default=None,
                    help="backend mode: comma-separated d:K:n triples (default: the standard "
                         "sweep over N at d = 2 and over d at N = 100k)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--distributed", default=None, metavar="ADDR:PORT,N,I",
                    help="backend mode: jax.distributed.initialize(ADDR:PORT, N, I) first and "
                         "shard the particles over all processes' devices")
    args, rest = ap.parse_known_args(argv)
    if not args.backend_only:
        from ..cli import main as cli_main

        return cli_main(["bench", "--out", args.out, *rest])
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    sweep = None
    if args.sizes:
        sweep = {"given": [dict(zip(("d", "K", "n"), map(int, s.split(":"))))
                           for s in args.sizes.split(",")]}
    from . import harness

    if args.distributed:
        return _distributed(args, sweep)
    harness.run_backend(args.out, sweep=sweep, steps=args.steps, repeats=args.repeats)
    print(f"wrote {args.out}/results.json")
    return 0


def _distributed(args, sweep) -> int:
    import jax

    addr, n, i = args.distributed.split(",")
    jax.distributed.initialize(coordinator_address=addr, num_processes=int(n),
                               process_id=int(i))
    from . import harness

    records = harness.backend_sweep(sweep, steps=args.steps, repeats=args.repeats,
                                    mesh_all=True,
                                    progress=print if jax.process_index() == 0 else (lambda *_: None))
    if jax.process_index() == 0:
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        harness._atomic_json(out / "results.json", {
            "mode": "backend", "distributed": {"processes": jax.process_count(),
                                               "devices": jax.device_count()},
            "environment": harness.environment(), "complete": True, "records": records})
        print(f"wrote {out}/results.json")
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
