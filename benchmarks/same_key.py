"""Same key, same samples: ``cj.sample`` of this tree against an earlier git revision.

For every sampler method, both layouts (rows; particle-minor columns where the method is
element-wise), VP and VE schedules, a Gaussian and a mixture background and a plain diffused
mixture, in d = 2 or d = 3 (alternating over the schedule/model pairs; both with ``--full``),
this script draws ``n = 64`` samples with the same fixed key from
the code of a git revision (default ``a5644f0``, the last commit before the model-protocol /
typed-methods redesign) and from the current working tree, each in its own process, and
compares them element by element:

* ``identical``: every float32 bit equal (NaNs compare equal to NaNs);
* ``rounding``: every difference at most ``--max-ulps`` (default 64) float32 units in the last
  place of the largest ``|coordinate|`` (about ``64 * 4.8e-7 = 3e-5`` for samples of size ~5): a
  different order of the same floating-point operations, propagated through the run;
* ``DIFFERS``: anything else (a different algorithm, different noise, or a rounding difference
  that flipped a discrete event such as a Metropolis accept/reject decision: the table gives the
  fraction of particles that moved by more than the tolerance).

The revision is checked out with ``git worktree add --detach`` in a temporary directory (removed
afterwards) and imported through ``PYTHONPATH``; both processes share this script's case list,
so the two sides build the same models with the same numbers. Only arguments that both APIs
accept are passed (the method as a string plus options, ``layout=``, ``steps=``).

Usage::

    python benchmarks/same_key.py [--rev a5644f0] [--max-ulps 64] [--out table.md] [--keep DIR]
    python benchmarks/same_key.py --compare DIR     # the table again from kept samples

Exit status: 0 when no case differs beyond the threshold, 1 otherwise, 2 when a case failed to
run on one side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
N, STEPS, SEED = 64, 30, 20261130

# name -> (cj.sample method string, options, element-wise: columns layout allowed)
METHODS = {
    "euler_maruyama": ("euler_maruyama", {}, True),
    "ode_euler": ("ode_euler", {}, True),
    "ode_heun": ("ode_heun", {}, True),
    "ddpm": ("ddpm", {}, True),
    "ddim(eta=0)": ("ddim", {"eta": 0.0}, True),
    "ddim(eta=0.5)": ("ddim", {"eta": 0.5}, True),
    "pc(snr)": ("predictor_corrector", {"corrector_step": "snr"}, False),
    "pc(fixed)": ("predictor_corrector", {"corrector_step": "fixed"}, False),
    "annealed_mala": ("annealed_mala", {}, False),
    "annealed_hmc": ("annealed_hmc", {}, False),
}
MODELS = ("gauss-bg", "mix-bg", "mixture")
SCHEDULES = ("VP", "VE")
DIMS = (2, 3)


def cases(full: bool = False):
    """``(case id, method name, layout, schedule, model, d)`` for every comparison: every
    method, layout, schedule and model, with ``d`` alternating between 2 and 3 over the
    (schedule, model) pairs (each pair in both dimensions with ``full``)."""
    out = []
    for i, sch in enumerate(SCHEDULES):
        for j, model in enumerate(MODELS):
            for d in DIMS if full else (DIMS[(i + j) % 2],):
                for name, (_, _, elementwise) in METHODS.items():
                    for layout in ("rows", "columns") if elementwise else ("rows",):
                        out.append((f"{name}|{layout}|{sch}|{model}|d={d}", name, layout,
                                    sch, model, d))
    return out


# ------------------------------------------------------------------------- worker side
def _models(cj, jnp, d):
    """The three models of dimension ``d`` (same numbers in both processes)."""
    rng = np.random.default_rng(d)
    eye = np.eye(d)

    def mixture(k, kind, scale):
        means = rng.normal(0.0, scale, (k, d))
        w = rng.uniform(0.5, 1.5, k)
        if kind == "iso":
            covs = np.stack([rng.uniform(0.2, 0.6) * eye for _ in range(k)])
        elif kind == "diag":
            covs = np.stack([np.diag(rng.uniform(0.2, 0.8, d)) for _ in range(k)])
        else:
            a = rng.normal(0.0, 0.4, (k, d, d))
            covs = a @ np.swapaxes(a, 1, 2) + 0.3 * eye
        return cj.GaussianMixture(weights=jnp.asarray(w / w.sum(), jnp.float32),
                                  means=jnp.asarray(means, jnp.float32),
                                  covs=jnp.asarray(covs, jnp.float32))

    gauss = cj.Gaussian(jnp.asarray(rng.normal(0.0, 0.3, d), jnp.float32),
                        jnp.asarray(4.0 * eye, jnp.float32))
    c1, c2 = mixture(4, "iso", 2.0), mixture(3, "diag", 2.0)
    bg = mixture(5, "iso", 1.5)
    # broad background covariances (4 I; 3 I below): the composed t = 0 law exists
    bg = cj.GaussianMixture(weights=bg.weights, means=bg.means,
                            covs=jnp.asarray(np.stack([3.0 * eye] * 5), jnp.float32))
    full = mixture(3, "full", 2.0)
    return {"gauss-bg": (gauss, [c1, c2]), "mix-bg": (bg, [c1, c2]), "mixture": (full, None)}


def worker(out_dir: str, expect_root: str, full: bool) -> None:
    """Run every case with the ``composition_jax`` found first on ``sys.path`` (checked to be
    the one under ``expect_root``); ``out_dir/<i>.npy`` per case (written as it finishes, so a
    run cut short keeps what it did), ``out_dir/meta.json`` at the end."""
    import warnings

    import jax
    import jax.numpy as jnp

    import composition_jax as cj

    root = Path(cj.__file__).resolve().parents[1]
    if root != Path(expect_root).resolve():
        raise SystemExit(f"imported composition_jax from {root}, expected {expect_root}")
    warnings.simplefilter("ignore")
    out = Path(out_dir)
    schedules = {"VP": cj.VPSchedule(), "VE": cj.VESchedule()}
    built = {}
    errors = {}
    key = jax.random.key(SEED)
    all_cases = cases(full)
    for j, (cid, name, layout, sch_name, model_name, d) in enumerate(all_cases):
        if j % 16 == 0:
            print(f"  {root.name}: case {j} of {len(all_cases)}", file=sys.stderr, flush=True)
        sch = schedules[sch_name]
        if (d, sch_name) not in built:
            built[d, sch_name] = {}
            for mname, (base, conds) in _models(cj, jnp, d).items():
                if conds is None:
                    built[d, sch_name][mname] = cj.diffuse(base, sch)
                else:
                    built[d, sch_name][mname] = cj.compose(
                        cj.diffuse(base, sch), [cj.diffuse(c, sch) for c in conds])
        model = built[d, sch_name][model_name]
        method, opts, _ = METHODS[name]
        try:
            x = cj.sample(key, model, sch, (N, d), method=method, steps=STEPS, layout=layout,
                          **opts)
            np.save(out / f"{j}.npy", np.asarray(x))
        except Exception as e:  # noqa: BLE001 - reported in the table
            errors[cid] = f"{type(e).__name__}: {e}"[:300]
    meta = {"errors": errors, "jax": jax.__version__, "root": str(root)}
    (out / "meta.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------- comparison
def compare(a: np.ndarray, b: np.ndarray, max_ulps: int) -> tuple[str, float, float, float]:
    """``(verdict, max |a - b| in ulps of the samples' scale, max |a - b|, fraction of particles
    beyond max_ulps)``. The scale's ulp is the float32 spacing at the largest ``|a|``: a
    difference is measured against the precision of the largest coordinate, so coordinates
    near 0 (whose own ulps are tiny) do not inflate it."""
    if a.shape != b.shape:
        return "DIFFERS", float("inf"), float("inf"), 1.0
    both_nan = np.isnan(a) & np.isnan(b)
    if np.array_equal(a.view(np.uint32)[~both_nan], b.view(np.uint32)[~both_nan]):
        return "identical", 0.0, 0.0, 0.0
    with np.errstate(invalid="ignore"):
        absdiff = np.where(both_nan, 0.0, np.abs(a.astype(np.float64) - b))
    absdiff = np.where(np.isnan(absdiff), np.inf, absdiff)
    ulp = float(np.spacing(np.float32(np.nanmax(np.abs(a)))))
    units = absdiff / ulp
    worst = float(units.max())
    frac = float(np.mean(np.any(units > max_ulps, axis=-1)))
    verdict = "rounding" if worst <= max_ulps else "DIFFERS"
    return verdict, worst, float(absdiff.max()), frac


def _start_worker(root: Path, out: Path, full: bool) -> subprocess.Popen:
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out), "--root",
           str(root)] + (["--full"] if full else [])
    return subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir())


def _load(out: Path, full: bool) -> tuple[dict, dict]:
    """``({case id: samples}, meta)`` of a worker's output directory (what it finished)."""
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"errors": {}}
    arrays = {}
    for j, c in enumerate(cases(full)):
        f = out / f"{j}.npy"
        if f.exists():
            arrays[c[0]] = np.load(f)
    return arrays, meta


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="a5644f0", help="git revision to compare against")
    p.add_argument("--max-ulps", type=int, default=64,
                   help="largest difference counted as rounding, in float32 ulps of the "
                        "largest |coordinate| (default 64)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                   help="run the two sides at the same time (2, default) or one after the other")
    p.add_argument("--full", action="store_true",
                   help="every (schedule, model) pair in both d = 2 and d = 3 (192 cases; "
                        "default: d alternates, 96 cases)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="keep both sides' samples in DIR/old and DIR/new")
    p.add_argument("--compare", default=None, metavar="DIR",
                   help="only compare the samples kept in DIR by an earlier --keep run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.root, args.full)
        return 0

    if args.compare:
        outs = (Path(args.compare) / "old", Path(args.compare) / "new")
        return _report(args, [_load(out, args.full) for out in outs], [])
    signal.signal(signal.SIGTERM, _on_sigterm)  # clean up the worktree when killed
    with tempfile.TemporaryDirectory(prefix="same_key_") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet",
                        str(tree), args.rev], check=True)
        procs = []
        try:
            outs = (Path(tmp) / "old", Path(tmp) / "new")
            for root, out in zip((tree, REPO), outs):
                procs.append(_start_worker(root, out, args.full))
                if args.jobs == 1:
                    procs[-1].wait()
            for proc in procs:
                proc.wait()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           check=False)
        sides = [_load(out, args.full) for out in outs]
        failed = [p.returncode for p in procs if p.returncode]
        if args.keep:
            for out in outs:
                shutil.copytree(out, Path(args.keep) / out.name, dirs_exist_ok=True)
    return _report(args, sides, failed)


def _report(args, sides, failed) -> int:
    """Print (and write) the table; the exit status."""
    (old, old_meta), (new, new_meta) = sides
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    lines = [
        (f"Same key, same samples: `{args.rev}` vs working tree (HEAD `{head}`); jax "
         f"{new_meta.get('jax', '?')}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
         f"n = {N}, {STEPS} steps, float32, key = jax.random.key({SEED}); rounding = at most "
         f"{args.max_ulps} float32 ulps of the largest |coordinate|."),
        "",
        ("| method | layout | schedule | model | d | verdict | max diff (ulps of max abs) "
         "| max abs diff | particles beyond |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    counts = {"identical": 0, "rounding": 0, "DIFFERS": 0, "error": 0}
    for cid, *_ in cases(args.full):
        fields = cid.split("|")
        if cid not in old_meta["errors"] and cid not in old:
            old_meta["errors"][cid] = "not run (worker stopped)"
        if cid not in new_meta["errors"] and cid not in new:
            new_meta["errors"][cid] = "not run (worker stopped)"
        if cid in old_meta["errors"] or cid in new_meta["errors"]:
            msg = old_meta["errors"].get(cid) or new_meta["errors"].get(cid)
            side = "old" if cid in old_meta["errors"] else "new"
            lines.append("| " + " | ".join(fields) + f" | error ({side}) | | {msg} | |")
            counts["error"] += 1
            continue
        verdict, ulps, diff, frac = compare(old[cid], new[cid], args.max_ulps)
        counts[verdict] += 1
        lines.append("| " + " | ".join(fields) + f" | {verdict} | {ulps:.3g} | {diff:.3g} | "
                     f"{frac:.3g} |")
    lines += ["", ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(cases(args.full))})"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if counts["error"] or failed:
        return 2
    return 1 if counts["DIFFERS"] else 0


if __name__ == "__main__":
    sys.exit(main())
