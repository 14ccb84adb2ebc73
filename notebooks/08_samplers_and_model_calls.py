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
# # 8. Samplers at equal cost: error against the exact law versus model calls
#
# For a neural model the cost of sampling is the number of network evaluations, so samplers are
# compared at equal **model calls**: every method declares `model_calls_per_step` (Heun and
# DPM-Solver++(2S) evaluate the model twice per step, Euler-Maruyama, DDIM and DPM-Solver++(2M)
# once), and a budget of $B$ calls is $B$ // `model_calls_per_step` steps.
#
# The problem: a composition $s_b + (s_1 - s_b) + (s_2 - s_b)$ of diffused Gaussians with
# background $N(0, I)$, $p_1 = N((2, 0), \mathrm{diag}(.25, 1))$, $p_2 = N((0, 2),
# \mathrm{diag}(1, .25))$. Each conditional differs from the background in one coordinate
# (Factorized Conditionals, Bradley et al. 2025, Thm 5.3), so the composed score is exactly the
# score of the diffused $C[p] = N((2, 2), .25 I)$ and every sampler targets the exact
# $C[p]_{t_{min}}$. The score is affine, so `cj.verify.sampler_law` gives the exact Gaussian law
# of each sampler's output (discretization included, no Monte Carlo) and the error is the
# 2-Wasserstein distance between Gaussians. The code is `benchmarks/model_calls.py`, which also
# runs a mixture version (`python benchmarks/model_calls.py`). `COMPOSITION_JAX_QUICK=1` uses the
# budgets 10 and 20 and the log-SNR grid only.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # plain script: render off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

from composition_jax._notebook import Checks

for _cand in (Path.cwd() / "benchmarks", Path.cwd().parent / "benchmarks"):
    if (_cand / "model_calls.py").exists():
        sys.path.insert(0, str(_cand))
        break
import model_calls as mc  # benchmarks/model_calls.py

QUICK = os.environ.get("COMPOSITION_JAX_QUICK", "0") not in ("", "0")
FIGURES = Path(os.environ.get("COMPOSITION_JAX_FIGURES")
               or Path(tempfile.gettempdir()) / "composition_jax_notebooks")
FIGURES.mkdir(parents=True, exist_ok=True)
checks = Checks("samplers and model calls")


def show(fig, name):
    """Show the figure (Jupyter) or save it as ``FIGURES/name.png`` (script)."""
    checks.labelled(fig, name)
    fig.savefig(FIGURES / f"{name}.png", dpi=80)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)


BUDGETS = (10, 20) if QUICK else mc.BUDGETS
GRIDS = ("log_snr",) if QUICK else mc.GRIDS
print(f"QUICK={QUICK}: budgets {BUDGETS}, grids {GRIDS}")
for name, m in mc.methods().items():
    print(f"{name:11s} {m!r}: model_calls_per_step = {m.model_calls_per_step}")

# %% [markdown]
# ## Exact error at each budget
# Each entry: the 2-Wasserstein distance from the exact law of the sampler's output at
# $t_{min} = 10^{-3}$ to $C[p]_{t_{min}}$ (in brackets the grid, the better of those tried).

# %%
errors = mc.gaussian_errors(BUDGETS, GRIDS)
print(mc.table(errors, BUDGETS))
fig, ax = plt.subplots(figsize=(6, 3.8))
for name, row in errors.items():
    ax.loglog(BUDGETS, [row[b][0] for b in BUDGETS], "o-", label=name)
ax.set(xlabel="model calls", ylabel="W2 to the exact law", title="error vs cost (exact laws)")
ax.legend(fontsize=7)
show(fig, "08_error_vs_calls")

# %% [markdown]
# ## At 20 model calls
# DPM-Solver++(2M) spends its 20 calls on 20 second-order steps (the previous denoised estimate
# is reused), so it is the most accurate at this budget; Euler-Maruyama and DDIM are first order.
# (With more calls the deterministic samplers level off at W2 = 9.3e-3: every sampler starts from
# $N(0, I)$, which is not $p_1$ since $\alpha(1) = 6.6 \cdot 10^{-3}$ here, and an ODE carries
# that mismatch to the end; Euler-Maruyama and churned Heun forget it.)

# %%
at20 = {k: errors[k][20][0] for k in ("DPM++ 2M", "EM", "DDIM")}
print("| method | W2 at 20 model calls |\n|---|---|")
for k, v in at20.items():
    print(f"| {k} | {v:.3e} |")
checks.that(at20["DPM++ 2M"] < at20["EM"], "DPM-Solver++(2M) beats Euler-Maruyama at 20 calls")
checks.that(at20["DPM++ 2M"] < at20["DDIM"], "DPM-Solver++(2M) beats DDIM at 20 calls")
for name, row in errors.items():
    checks.that(row[BUDGETS[-1]][0] < row[BUDGETS[0]][0], f"{name}: more calls, smaller error")

# %% [markdown]
# ## EDM churn
# Heun with churn (`cj.ODEHeun(s_churn=2.0)`, Karras et al. 2022, Alg. 2) re-injects noise
# before each step, in the scaled variable $x/\alpha$ with EDM's $\sigma = \sigma_t / \alpha_t$.
# It costs no extra model call but one normal per step. With `s_noise = 1` the churn is exactly
# the forward transition from $t$ to the noisier $\hat t$, so for an exact score it adds no error
# and Heun keeps its order 2 (measured in `tests/test_churn.py`); each ODE step is longer
# ($\hat t \to t_{i+1}$), so at a given budget its error is somewhat larger than plain Heun's
# on an exact score. Its use is robustness: the re-injected noise forgets errors of the start
# (the prior's mismatch when $\alpha(t_{max}) > 0$) and of an approximate score along the way.

# %%
checks.done()
