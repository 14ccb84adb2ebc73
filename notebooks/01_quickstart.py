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
# # 1. Quickstart: schedules, exact noised laws, composing scores, sampling, verifying
#
# This is the README tour, runnable, with every number checked. `composition_jax` composes
# diffusion models by adding scores (Bradley et al., ICML 2025, *Mechanisms of Projective
# Composition of Diffusion Models*):
#
# $$\hat s(x, t) = s_b(x, t) + \sum_i w_i\,\big(s_i(x, t) - s_b(x, t)\big).$$
#
# Every law in this notebook is a Gaussian, so every number has an exact oracle: the exact noised
# scores (`cj.diffuse`), the exact $t = 0$ composition (`cj.composed_distribution`) and the exact
# law of the sampler's output (`cj.verify.sampler_law`).
#
# Run as a script: `python notebooks/01_quickstart.py`; `COMPOSITION_JAX_QUICK=1` shrinks the
# sample sizes (the test suite runs it that way). Figures are shown inline in Jupyter and saved
# as PNGs when run as a script (into `$COMPOSITION_JAX_FIGURES`, else a temporary folder).

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # plain script: render off-screen
    matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import composition_jax as cj
from composition_jax._notebook import Checks

QUICK = os.environ.get("COMPOSITION_JAX_QUICK", "0") not in ("", "0")
FIGURES = Path(os.environ.get("COMPOSITION_JAX_FIGURES")
               or Path(tempfile.gettempdir()) / "composition_jax_notebooks")
FIGURES.mkdir(parents=True, exist_ok=True)
checks = Checks("quickstart")  # a failed check prints a warning (raises in the test suite)


def show(fig, name):
    """Show the figure (Jupyter) or save it as ``FIGURES/name.png`` (script); every plot axis
    must carry both axis labels."""
    checks.labelled(fig, name)
    fig.savefig(FIGURES / f"{name}.png", dpi=80)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)


N = 1000 if QUICK else 4000  # samples
STEPS = 50 if QUICK else 200  # reverse steps
print(f"QUICK={QUICK}: n={N}, steps={STEPS}; figures -> {FIGURES}")

# %% [markdown]
# ## Schedules
# A schedule says how data are noised: $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$. The
# variance-preserving schedules keep $\alpha^2 + \sigma^2 = 1$; the variance-exploding one keeps
# $\alpha = 1$ and lets $\sigma$ grow.

# %%
schedules = {"VP (linear beta)": cj.VPSchedule(), "cosine VP": cj.CosineVPSchedule(),
             "VE": cj.VESchedule()}
ts = jnp.linspace(0.0, 1.0, 201)
fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
for name, sch in schedules.items():
    a, s = jax.vmap(sch.alpha)(ts), jax.vmap(sch.sigma)(ts)
    axs[0].plot(ts, a, label=name)
    axs[1].semilogy(ts, s, label=name)
    if name != "VE":
        checks.close(a**2 + s**2, 1.0, atol=1e-5, what=f"{name}: alpha^2 + sigma^2 = 1")
    else:
        checks.close(a, 1.0, what="VE: alpha = 1")
axs[0].set(xlabel="t", ylabel="alpha(t)", title="signal coefficient")
axs[1].set(xlabel="t", ylabel="sigma(t)", title="noise coefficient")
axs[0].legend()
fig.tight_layout()
show(fig, "01_schedules")

# %% [markdown]
# ## Exact noised distributions
# `cj.diffuse(dist, schedule)` is the law of $x_t$ with **exact** `log_prob`, `score` and
# `denoise`. Two identities to check: the score is the gradient of the log-density, and the
# denoiser is Tweedie's formula $E[x_0 \mid x_t] = (x + \sigma^2 \nabla\log p_t(x)) / \alpha$.

# %%
sched = cj.VPSchedule()
g = cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]))
pt = cj.diffuse(g, sched)
x = jnp.array([0.4, 0.2])
for t in (0.01, 0.3, 0.9):
    score = pt.score(x, t)
    checks.close(score, jax.grad(pt.log_prob)(x, t), rtol=1e-4, atol=1e-5,
                 what=f"t={t}: score = grad log p_t")
    a, s = sched.alpha(t), sched.sigma(t)
    checks.close(pt.denoise(x, t), (x + s**2 * score) / a, rtol=1e-4, atol=1e-5,
                 what=f"t={t}: denoise = Tweedie's formula")
    print(f"t={t}: log p_t(x) = {float(pt.log_prob(x, t)):+.4f}, score = {np.round(score, 4)}")

# %% [markdown]
# ## Composing scores (the README tour)
# A 4-D "scene": the background is the empty scene $N(0, 0.05^2 I)$; conditional $i$ puts one
# "object" at coordinate $i$ ($N(e_i, 0.05^2 I)$). Composing the objects at coordinates 0 and 2
# should give a scene with both, $[1, 0, 1, 0]$, which neither conditional ever produces alone.

# %%
e = jnp.eye(4)
background = cj.Gaussian(jnp.zeros(4), 0.05**2 * e)  # "empty scene"
conds = [cj.Gaussian(e[i], 0.05**2 * e) for i in (0, 2)]  # one "object" at coordinate i

p_b, p_1, p_2 = (cj.diffuse(p, sched) for p in (background, *conds))  # exact noised laws
model = cj.compose(p_b, [p_1, p_2])  # s_b + sum_i (s_i - s_b)
key_sample, key_test = jax.random.split(jax.random.key(0))
x = cj.sample(key_sample, model, sched, (N, 4), method="ode_heun", steps=STEPS, grid="log_snr")

exact = cj.composed_distribution(background, conds)  # the exact t = 0 composition
print("exact composed mean:", exact.mean)
checks.close(exact.mean, [1.0, 0.0, 1.0, 0.0], atol=1e-6, what="C[p] mean")
checks.close(exact.cov, 0.05**2 * e, rtol=1e-5, atol=1e-9, what="C[p] covariance")

# %% [markdown]
# ## Verifying
# * `factorized_conditionals` decides **exactly** whether the tuple satisfies the paper's
#   Factorized Conditionals (Definition 5.2); here it finds the blocks $M_1 = \{0\}$,
#   $M_2 = \{2\}$ and the background block $\{1, 3\}$ itself.
# * `projective` tests, on the samples, that each block has the law of its conditional
#   ($\Pi_i\#\hat p = \Pi_i\# p_i$, Definition 4.1), and the background block the background's.
# * `sampler_law` gives the exact Gaussian law of what `cj.sample` produces for these affine
#   scores, including the discretization error, so the sample moments can be checked against it.

# %%
fc = cj.verify.factorized_conditionals(background, conds)
print(fc)
checks.that(fc.holds and fc.blocks == ((0,), (2,)) and fc.background_block == (1, 3),
            "Factorized Conditionals holds with blocks {0}, {2} and background block {1, 3}")

report = cj.verify.projective(x, conds, [[0], [2]], key=key_test, background=background,
                              two_sample_n=300, num_permutations=1999)
print(report)
checks.that(report.passed, "the composed samples are projective")

law = cj.verify.sampler_law(model, sched, method="ode_heun", steps=STEPS, grid="log_snr")
se = np.sqrt(np.diag(np.asarray(law.cov)) / N)
z = (np.asarray(x.mean(0)) - np.asarray(law.mean)) / se
print("sampler law mean:", np.round(law.mean, 4), " sample mean:", np.round(x.mean(0), 4))
print("z-scores of the sample mean against the exact sampler law:", np.round(z, 2))
checks.that(np.all(np.abs(z) < 5), "sample mean within 5 standard errors of the sampler law")
print("variance of the sampler output / data variance:",
      np.round(np.diag(law.cov) / 0.05**2, 3), "(the final Tweedie step shrinks it slightly)")

# %%
fig, axs = plt.subplots(1, 4, figsize=(12, 2.8), sharey=True)
grid = np.linspace(-0.25, 1.25, 300)
for j, ax in enumerate(axs):
    ax.hist(np.asarray(x[:, j]), bins=40, density=True, alpha=0.6, label="samples")
    m, v = float(exact.mean[j]), float(exact.cov[j, j])
    ax.plot(grid, np.exp(-0.5 * (grid - m) ** 2 / v) / np.sqrt(2 * np.pi * v), "k",
            label="exact C[p]")
    ax.set(xlabel=f"x[{j}]", ylabel="density", title=f"coordinate {j}")
axs[0].legend(fontsize=7)
fig.suptitle("composed samples (ode_heun) vs the exact t = 0 composition")
fig.tight_layout()
show(fig, "01_composition")
checks.done()
