"""Command line: ``composition-jax demo | reproduce | bench``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    import composition_jax as cj

    sched = cj.VPSchedule()
    mix = cj.GaussianMixture(
        jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [2.0, 0.0]]), jnp.stack([jnp.eye(2)] * 2)
    )
    p = cj.diffuse(mix, sched)
    x = jnp.array([0.5, -0.3])
    print("composition_jax", cj.__version__, "| jax", jax.__version__, "| devices", jax.devices())
    for t in (1e-4, 0.1, 0.5, 1.0):
        lp = p.log_prob(x, t)
        sc = p.score(x, t)
        g = jax.grad(p.log_prob)(x, t)
        print(f"t={t:<7g} log p_t={float(lp):+.5f} score={sc} |score - grad log p|={float(jnp.max(jnp.abs(sc - g))):.2e}")
    xs = p.sample(jax.random.key(0), 20000, 0.5)
    print("sample mean at t=0.5:", xs.mean(0), " exact:", sched.alpha(0.5) * mix.weights @ mix.means)
    return 0


def _prepare_out(path: str, force: bool) -> Path:
    from pathlib import Path

    out = Path(path)
    if out.exists() and any(out.iterdir()) and not force:
        raise SystemExit(f"output folder {out} exists and is not empty; use --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _bench(args: argparse.Namespace) -> int:
    from .bench.harness import failures, run_bench

    out = _prepare_out(args.out, args.force)
    impls = args.impls.split(",") if args.impls else None
    ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
    methods = tuple(args.methods.split(",")) if args.methods else ("euler_maruyama", "ode_heun")
    result = run_bench(out, quick=args.quick, impls=impls, ks=ks, repeats=args.repeats,
                       scaling=not args.no_scaling, methods=methods, budget_s=args.budget)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and plots")
    bad = failures(result)
    if bad:
        print("composition-jax bench: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .report import OutputExists, reproduce

    mode = args.size or ("quick" if args.quick else "full")
    only = [s for s in args.only.split(",") if s] if args.only else None
    try:
        code, out = reproduce(args.out, mode=mode, force=args.force, only=only,
                              progress=not args.no_progress, learned=args.learned)
    except OutputExists as e:
        print(f"composition-jax reproduce: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"composition-jax reproduce: {e}", file=sys.stderr)
        return 2
    import json

    rep = json.loads((out / "report.json").read_text())
    flags = {"agrees": "ok", "inconclusive": "INCONCLUSIVE", "mismatch": "MISMATCH"}
    for s in rep["scenarios"]:
        flag = flags[s["status"]]
        print(f"{s['name']:<32s} expected {s['expected']:<8s} observed {s['observed']:<12s} "
              f"{flag}")
    if rep["mismatches"]:
        verdict = "some verdicts differ"
    elif rep["inconclusive"]:
        verdict = f"no verdict contradicts the expected one; {len(rep['inconclusive'])} inconclusive"
    else:
        verdict = "all verdicts as expected"
    learned = {"on": "learned experiments included", "off": "learned experiments off",
               "skipped": "learned experiments skipped (minimal size)"}[rep["learned"]]
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and figures ({verdict}; {learned})")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="composition-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="small end-to-end demonstration")
    p_demo.set_defaults(func=_demo)
    p_rep = sub.add_parser("reproduce", help="the paper's synthetic findings, decided by statistics")
    p_rep.add_argument("--out", default="reproduce_out")
    p_rep.add_argument("--quick", action="store_true",
                       help="small sizes (< 3 minutes on 2 cores; learned experiments off "
                            "unless --learned)")
    p_rep.add_argument("--size", choices=("minimal", "quick", "full"), default=None,
                       help="run size (overrides --quick; 'minimal' is for tests)")
    p_rep.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p_rep.add_argument("--only", default=None, help="comma-separated scenario names")
    p_rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_rep.add_argument("--learned", action=argparse.BooleanOptionalAction, default=None,
                       help="also run the learned-model experiments (trained score networks: "
                            "length generalization on blob scenes, learned 4-D ring composition "
                            "vs exact). Default: on in full mode, OFF with --quick (adds about "
                            "3.5 minutes on 2 cores with an empty parameter cache, less once "
                            "cached; in quick mode the ring composition over the empty "
                            "background and configuration C come out 'inconclusive'); never in "
                            "--size minimal. Parameters are cached in $COMPOSITION_JAX_CACHE "
                            "(default: a temporary folder), not in --out. Exit code: 1 only for "
                            "a definite verdict that differs from the expected one; "
                            "'inconclusive' results are flagged but do not fail the run")
    p_rep.set_defaults(func=_reproduce)
    p_bench = sub.add_parser("bench", help="speed side by side with NumPy, diffrax, PyTorch")
    p_bench.add_argument("--out", default="bench_out")
    p_bench.add_argument("--quick", action="store_true", help="small sizes (< 3 minutes)")
    p_bench.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p_bench.add_argument("--impls", default=None,
                         help="comma-separated subset of composition_jax,numpy,diffrax,torch,torch_compile")
    p_bench.add_argument("--ks", default=None,
                         help="comma-separated numbers of composed models (default 1,2,4)")
    p_bench.add_argument("--repeats", type=int, default=None,
                         help="timed repeats after the first call (default 3; quick 2)")
    p_bench.add_argument("--no-scaling", action="store_true", help="skip the scaling sweeps")
    p_bench.add_argument("--budget", type=float, default=None,
                         help="seconds of timed repeats per measurement before stopping early "
                              "(at least one timed run; default 20, quick 5)")
    p_bench.add_argument("--methods", default=None,
                         help="comma-separated: euler_maruyama,ode_heun (default both)")
    p_bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
