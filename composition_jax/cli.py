"""Command line: ``composition-jax demo | reproduce | bench``."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback


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


EXIT_CODES = """exit codes:
  0    success (reproduce: no definite verdict differs from the expected one)
  1    reproduce: some definite verdict differs from the expected one ('inconclusive' does
       not count); bench: an implementation failed or sampled a different law
  2    usage or I/O error: bad arguments, an unusable or non-empty --out, a file that cannot
       be written (one line on stderr, nothing replaced)
  3    unexpected internal error (traceback on stderr)
  130  interrupted by SIGINT (Ctrl-C); 143 terminated by SIGTERM: --out is left as it was
       (bench keeps the measurements it finished, results.json "complete": false)"""

OUTPUT_RULES = """output folder (--out): refused before any work when it is the current folder or one of
its parents, / or the home folder, an existing non-folder, or not writable. The tool
records what it wrote in --out/.composition-jax-manifest.json; --force replaces exactly
those files and keeps every other file in the folder (a foreign file named like an output
is refused). Folders and files get your umask's permissions."""


#: Measured run times of ``reproduce`` (stated in --help; re-measure when the sizes change).
QUICK_RUNTIME = ("about 4 minutes of wall time on 2 cores for the 20 scenarios, two at a time "
                 "(230 s with empty caches, measured 2026-12-02 on the 2-core development "
                 "machine; 290 s one at a time), about 6.5 minutes of CPU time")
FULL_RUNTIME = ("55 minutes of wall time with the learned experiments (measured 2026-11-30 on the "
                "2-core development machine under heavy other load, load average 5-14: the 20 "
                "scenarios 38 minutes, the 8-D eq. 17 and eq. 18 ones 4-12 minutes each, the "
                "others under 2.5; the learned stage 17 minutes with the ring network's "
                "parameters cached and one blob network trained; its runtime was not measured "
                "on an idle machine; since 2026-12-01 the learned 4-D ring experiment trains a "
                "block-local network and alone took 21.5 minutes with its networks trained anew, "
                "5.6 of them training; since 2026-12-02 the learned stage runs beside the "
                "scenarios, full mode not re-measured)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (options whose default is ``None`` state it in words;
    off-by-default flags need none); descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _fail(command: str, message: str) -> int:
    print(f"composition-jax {command}: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _bench(args: argparse.Namespace) -> int:
    from ._outputs import Staging, check_target
    from .bench.harness import OUTPUTS, failures, run_bench

    target = check_target(args.out, command="bench", force=args.force, outputs=OUTPUTS)
    out = target.path
    impls = args.impls.split(",") if args.impls else None
    ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
    methods = tuple(args.methods.split(",")) if args.methods else ("euler_maruyama", "ode_heun")
    with Staging(target) as stage:
        try:
            result = run_bench(stage.path, quick=args.quick, impls=impls, ks=ks,
                               repeats=args.repeats, scaling=not args.no_scaling,
                               methods=methods, budget_s=args.budget)
        except BaseException:  # interrupted or failed: keep what was measured, flagged
            if (stage.path / "results.json").exists():
                stage.commit(last="results.json")
                print(f"composition-jax bench: partial results (\"complete\": false) in "
                      f"{out / 'results.json'}", file=sys.stderr)
            raise
        stage.commit(last="results.json")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and plots")
    bad = failures(result)
    if bad:
        print("composition-jax bench: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def _list_scenarios() -> int:
    from .report import scenario_catalog

    rows = scenario_catalog()
    w = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{w}}  expected  description")
    for name, expected, desc in rows:
        print(f"{name:<{w}}  {expected:<8}  {desc}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    if args.list:
        return _list_scenarios()
    from .report import reproduce
    from .verify import scenarios as sc

    only = [s for s in args.only.split(",") if s] if args.only else None
    unknown = [n for n in only or () if n not in sc.SCENARIOS]
    if unknown:
        return _fail("reproduce", f"unknown scenario {unknown[0]!r}; valid: "
                                  f"{', '.join(sc.SCENARIOS)} (see --list)")
    from ._compile_cache import enable_for_cli

    enable_for_cli(not args.no_compile_cache)  # before the run's first compilation
    code, out = reproduce(args.out, mode=args.size, force=args.force, only=only,
                          progress=not args.no_progress, learned=args.learned)
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
    figs = "figures" if rep.get("figures", True) else "no figures (matplotlib missing)"
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {figs} ({verdict}; {learned})")
    return code


def _run(command: str, func, args: argparse.Namespace) -> int:
    """Run a subcommand: SIGTERM raises for its duration; usage/I/O errors, interrupts and
    crashes become the documented exit codes (see ``EXIT_CODES``)."""
    from ._outputs import OutputError, Terminated, signals_raise

    try:
        with signals_raise():
            return int(func(args))
    except OutputError as e:
        return _fail(command, str(e))
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return _fail(command, f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        print(f"composition-jax {command}: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as e:
        print(f"composition-jax {command}: terminated (signal {e.signum})", file=sys.stderr)
        return 128 + e.signum
    except Exception:  # noqa: BLE001 - exit code 1 is reserved for verdicts
        traceback.print_exc()
        print(f"composition-jax {command}: unexpected error (exit code 3)", file=sys.stderr)
        return 3


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .report import LEARNED_QUICK_RUNTIME

    parser = argparse.ArgumentParser(
        prog="composition-jax", formatter_class=_Formatter, epilog=EXIT_CODES,
        description="composition_jax: compose diffusion models by adding scores.\n"
                    "`composition-jax COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"composition-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="small end-to-end demonstration: prints the versions and devices, the exact "
             "log-density and score of a diffused 2-D Gaussian mixture at a few t (checked "
             "against autodiff) and a sample mean against its exact value",
        description="Small end-to-end demonstration: prints the versions and devices, the\n"
                    "exact log-density and score of a diffused 2-D Gaussian mixture at a few t\n"
                    "(checked against autodiff) and a sample mean against its exact value.")
    p_demo.set_defaults(func=_demo)

    p_rep = sub.add_parser(
        "reproduce", formatter_class=_Formatter,
        help="the paper's synthetic findings, decided by statistics",
        description="Run the paper's scenario zoo (and, in full mode, the learned-model\n"
                    "experiments) and write report.md, figures and report.json into --out.\n"
                    "Without matplotlib the figures are skipped (said on stderr and in\n"
                    "report.md).",
        epilog=OUTPUT_RULES + "\n\n" + EXIT_CODES)
    p_rep.add_argument("--out", default="reproduce_out",
                       help="output folder for report.md, report.json and the figures (a new "
                            "folder, or one written by an earlier run with --force)")
    p_rep.add_argument("--size", choices=("minimal", "quick", "full"), default="quick",
                       help="run size. quick: n = 2000 samples per sampler, 200 steps, "
                            "learned experiments off unless --learned; " + QUICK_RUNTIME + "; "
                            "full: the paper-size run (n = 10000 samples, 2000 per size in the "
                            "length-generalization scenarios, 1000 steps, learned experiments on "
                            "unless --no-learned); " + FULL_RUNTIME + "; minimal: "
                            "n = 1000, 200 steps, for tests")
    p_rep.add_argument("--quick", dest="size", action="store_const", const="quick",
                       help="alias for --size quick")
    p_rep.add_argument("--force", action="store_true",
                       help="replace the outputs of an earlier run in a non-empty --out (listed "
                            "in its manifest); other files there are kept")
    p_rep.add_argument("--only", default=None,
                       help="comma-separated scenario names (see --list); default: all")
    p_rep.add_argument("--list", action="store_true",
                       help="print the scenarios (name, expected outcome, description) and exit")
    p_rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_rep.add_argument("--no-compile-cache", action="store_true",
                       help="compile every program anew. By default compiled programs are kept "
                            "in <parameter cache>/xla (below) and a rerun reuses them (JAX's "
                            "persistent compilation cache; a folder set by "
                            "JAX_COMPILATION_CACHE_DIR is used instead; report.json records "
                            "which)")
    p_rep.add_argument("--learned", action=argparse.BooleanOptionalAction, default=None,
                       help="also run the learned-model experiments (trained score networks: "
                            "length generalization on blob scenes, learned 4-D ring composition "
                            "vs exact). Default: on with --size full, off with --size "
                            "quick (" + LEARNED_QUICK_RUNTIME + "; the learned 4-D ring "
                            "composition over the empty background "
                            "comes out 'success' and the Bayes one 'failure' in quick and in "
                            "full mode, as expected); never with --size "
                            "minimal. Parameters are cached "
                            "in $COMPOSITION_JAX_CACHE (default: $XDG_CACHE_HOME/composition_jax, "
                            "else ~/.cache/composition_jax; a folder other users can write is "
                            "ignored), not in --out")
    p_rep.set_defaults(func=_reproduce)

    p_bench = sub.add_parser(
        "bench", formatter_class=_Formatter,
        help="speed side by side with NumPy, diffrax, PyTorch",
        description="Speed side by side with NumPy, diffrax and PyTorch: results.json,\n"
                    "table.md and plots in --out.",
        epilog=OUTPUT_RULES + "\n\n" + EXIT_CODES)
    p_bench.add_argument("--out", default="bench_out",
                         help="output folder for results.json, table.md and the plots (a new "
                              "folder, or one written by an earlier run with --force)")
    p_bench.add_argument("--quick", action="store_true", help="small sizes (< 3 minutes)")
    p_bench.add_argument("--force", action="store_true",
                         help="replace the outputs of an earlier run in a non-empty --out "
                              "(listed in its manifest); other files there are kept")
    p_bench.add_argument("--impls", default=None,
                         help="comma-separated subset of composition_jax,"
                              "composition_jax_sharded,composition_jax_fullcov,jax_scan,"
                              "jax_scan_wide,numpy,diffrax,diffrax_wide,torch,torch_compile "
                              "(default: all available)")
    p_bench.add_argument("--ks", default=None,
                         help="comma-separated numbers of composed models (default: 1,2,4; "
                              "quick 1)")
    p_bench.add_argument("--repeats", type=int, default=None,
                         help="timed repeats after the first call (default: 3; quick 2)")
    p_bench.add_argument("--no-scaling", action="store_true", help="skip the scaling sweeps")
    p_bench.add_argument("--budget", type=float, default=None,
                         help="seconds of timed repeats per measurement before stopping early "
                              "(at least one timed run; default: 20, quick 5)")
    p_bench.add_argument("--methods", default=None,
                         help="comma-separated: euler_maruyama,ode_heun (default: both)")
    p_bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args.command, args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
