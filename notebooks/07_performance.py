# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Performance: reading `composition-jax bench` results
#
# `composition-jax bench --out DIR [--quick]` samples the standard problem (a composition of
# diffused Gaussian mixtures, reverse SDE / probability-flow Heun) with composition_jax and, side
# by side, NumPy, diffrax and PyTorch where installed, each measurement in a fresh process. It
# writes `DIR/results.json` (one record per implementation and size, with the machine and
# versions), `DIR/table.md` and plots. This notebook reads such a file and plots it.
#
# Where the results come from, in order:
# 1. `$COMPOSITION_JAX_BENCH_RESULTS` (a `results.json`),
# 2. `bench_out/results.json` in the working directory (not in quick mode),
# 3. a fresh `composition-jax bench --quick` run into a temporary folder (not in quick mode:
#    a few minutes),
# 4. quick mode: one tiny size measured in this process with the harness's own worker
#    (`composition_jax.bench.worker.run`) for composition_jax and NumPy: cheap, and the numbers
#    only illustrate the format.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # plain script: render off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from composition_jax._notebook import Checks

QUICK = os.environ.get("COMPOSITION_JAX_QUICK", "0") not in ("", "0")
FIGURES = Path(os.environ.get("COMPOSITION_JAX_FIGURES")
               or Path(tempfile.gettempdir()) / "composition_jax_notebooks")
FIGURES.mkdir(parents=True, exist_ok=True)
checks = Checks("performance")  # a failed check prints a warning (raises in the test suite)


def show(fig, name):
    """Show the figure (Jupyter) or save it as ``FIGURES/name.png`` (script); every plot axis
    must carry both axis labels."""
    checks.labelled(fig, name)
    fig.savefig(FIGURES / f"{name}.png", dpi=80)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)



import json
import math
import subprocess

from composition_jax.bench import harness, worker


def tiny_results() -> dict:
    """A results.json-shaped dict from one tiny size (the harness's worker, in-process)."""
    spec = dict(d=2, K=8, k=1, n=512, steps=20, method="euler_maruyama", repeats=2, seed=0)
    records = []
    for impl in ("composition_jax", "numpy"):
        rec = worker.run(dict(spec, impl=impl))
        rec["group"] = "compare"
        records.append(rec)
    ref = records[0]
    for rec in records[1:]:
        rec["agreement"] = harness.agreement(ref, rec)
        rec["ratio_cj_over_impl"] = ref["particle_steps_per_s"] / rec["particle_steps_per_s"]
    return {"environment": harness.environment(), "ceilings": None, "quick": True,
            "synthetic": True, "records": records}


source = os.environ.get("COMPOSITION_JAX_BENCH_RESULTS")
if source:
    result = json.loads(Path(source).read_text())
elif not QUICK and Path("bench_out/results.json").exists():
    source = "bench_out/results.json"
    result = json.loads(Path(source).read_text())
elif not QUICK:
    out = Path(tempfile.mkdtemp(prefix="cj_bench_"))
    subprocess.run([sys.executable, "-c", "from composition_jax.cli import main; main()",
                    "bench", "--quick", "--out", str(out), "--force"], check=True)
    source = str(out / "results.json")
    result = json.loads(Path(source).read_text())
else:
    source = "tiny in-process measurement (quick mode)"
    result = tiny_results()
print("results from:", source)
print("environment:", {k: result["environment"].get(k) for k in ("jax", "cpu_count", "devices")})

# %% [markdown]
# ## The side-by-side table
# `harness.ratio_table` renders the comparison records: throughput in particle-steps per second
# (particles x steps / steady-state seconds, compile excluded), first-call time (compile +
# one run), peak memory, composition_jax's speed-up, and whether the implementations sample the
# same law (a Bonferroni z-test on the per-coordinate means, derived from n).

# %%
print(harness.ratio_table(result))
# (timings are reported, never asserted: they depend on the machine and its load)
records = [r for r in result["records"] if "error" not in r]
compare = [r for r in records if r.get("group") == "compare"]
checks.that(compare, "the results hold comparison records")
for r in records:
    checks.that(r["particle_steps_per_s"] > 0 and math.isfinite(r["particle_steps_per_s"]),
                f"{r['impl']} {r['problem']}: positive, finite throughput")
for r in compare:
    if "agreement" in r:
        checks.that(r["agreement"]["agree"],
                    f"{r['impl']} {r['problem']}: samples the same law ({r['agreement']})")
        cj_rec = next(c for c in compare if c["impl"] == "composition_jax"
                      and c["problem"] == r["problem"] and c["method"] == r["method"])
        checks.close(r["ratio_cj_over_impl"], cj_rec["particle_steps_per_s"]
                     / r["particle_steps_per_s"], rtol=1e-9,
                     what=f"{r['impl']} {r['problem']}: speed-up column")

# %% [markdown]
# ## Throughput and compile time per implementation

# %%
problems = sorted({(r["problem"], r["method"]) for r in compare})
impls = sorted({r["impl"] for r in compare})
fig, axs = plt.subplots(1, 2, figsize=(12, 3.8))
width = 0.8 / len(impls)
for i, impl in enumerate(impls):
    ys, cs = [], []
    for prob in problems:
        r = next((r for r in compare if (r["problem"], r["method"]) == prob and r["impl"] == impl),
                 None)
        ys.append(r["particle_steps_per_s"] if r else np.nan)
        cs.append(r["compile_s"] if r else np.nan)
    xs = np.arange(len(problems)) + i * width
    axs[0].bar(xs, ys, width, label=impl)
    axs[1].bar(xs, cs, width, label=impl)
labels = [f"{p}\n{m}" for p, m in problems]
for ax, ylabel, title in ((axs[0], "particle-steps / s (steady state)", "throughput"),
                          (axs[1], "first call - steady (s)", "compile / warm-up time")):
    ax.set_xticks(np.arange(len(problems)) + 0.4 - width / 2, labels, fontsize=6)
    ax.set(xlabel="problem, method", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
axs[0].set_yscale("log")
fig.tight_layout()
show(fig, "07_compare")

# %% [markdown]
# ## Scaling (full bench runs only)
# composition_jax's throughput against particles $N$, dimension $d$, mixture components $K$,
# composed conditionals $k$ and (emulated) devices, plus the roofline: which machine ceiling
# (matmul FLOP/s, normal-sample rate, memory bandwidth) bounds each record.

# %%
scaling = [r for r in records if r.get("group") == "scaling"]
axes_spec = [(a, k) for a, k in (("N", "n"), ("d", "d"), ("K", "K"), ("k", "k"),
                                 ("devices", "devices"))
             if any(r.get("axis") == a for r in scaling)]
if axes_spec:
    fig, axs = plt.subplots(1, len(axes_spec), figsize=(3.6 * len(axes_spec), 3.2),
                            squeeze=False)
    for ax, (axis, k) in zip(axs[0], axes_spec):
        rs = sorted((r for r in scaling if r.get("axis") == axis), key=lambda r: r[k])
        ax.loglog([r[k] for r in rs], [r["particle_steps_per_s"] for r in rs], "o-")
        ax.set(xlabel=k, ylabel="particle-steps / s", title=f"scaling in {k}")
    fig.tight_layout()
    show(fig, "07_scaling")
else:
    print("no scaling records in this results file (quick in-process measurement)")
roof = [r for r in records if "roofline" in r]
for r in roof[:8]:
    rf = r["roofline"]
    print(f"{r['problem']:<24} {r['method']:<15} bound by {rf['binding_ceiling']:<16} "
          f"achieved {rf['fraction_of_ceiling']:.2f} of the floor")
checks.done()
