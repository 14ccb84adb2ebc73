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
# # 9. Beyond reverse diffusion: SMC, probability-flow likelihoods, score locality
#
# Reverse diffusion with a composed score $\hat s = s_b + \sum_i w_i (s_i - s_b)$ reaches the
# composed law $C[p]$ only when the noised compositions form a diffusion path (Factorized
# Conditionals, Thm 5.3). Three tools that go further, each checked against exact laws:
#
# 1. `cj.smc_sample`: sequential Monte Carlo whose intermediate targets are the composed
#    energies $E_t = \log p_{b,t} + \sum_i w_i(\log p_{i,t} - \log p_{b,t})$; it reaches
#    $C[p]$ where plain reverse diffusion does not, and estimates $\log \int e^{E_t}$.
# 2. `cj.log_likelihood`: the log-density a model's probability-flow ODE assigns to points
#    (instantaneous change of variables), exact trace or Hutchinson.
# 3. `cj.verify.score_locality`: block norms of the score Jacobian; zero off the diagonal
#    blocks under Factorized Conditionals.
#
# `COMPOSITION_JAX_QUICK=1` shrinks sizes.

# %%
import math
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
checks = Checks("smc and likelihoods")  # a failed check prints a warning (raises in the tests)


def show(fig, name):
    """Show the figure (Jupyter) or save it as ``FIGURES/name.png`` (script); every plot axis
    must carry both axis labels."""
    checks.labelled(fig, name)
    fig.savefig(FIGURES / f"{name}.png", dpi=80)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)


N = 1000 if QUICK else 4000
STEPS = 50 if QUICK else 200
REPEATS = 8
T_MIN = 1e-3
sched = cj.VPSchedule()
print(f"QUICK={QUICK}: n={N}, steps={STEPS}, repeats={REPEATS}")

# %% [markdown]
# ## 1. SMC reaches the w = 4 tilt that reverse diffusion misses
# $p_b = N(0, 1)$, $p_1 = N(2, 1/4)$, weight $w = 4$: $C[p] = p_b^{-3} p_1^4 = N(32/13, 1/13)$.
# Particles move by Euler-Maruyama steps of the composed score and are reweighted by
# $E_{k+1}(x') + \log L(x|x') - E_k(x) - \log M(x'|x)$ (forward noising kernel $L$ as backward
# kernel), resampled when the ESS falls below $n/2$, and refreshed by one MALA move per level.
# Independent repeats give the standard errors.

# %%
w = 4.0
p_b = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
p_1 = cj.Gaussian(jnp.full((1,), 2.0), 0.25 * jnp.eye(1))
model = cj.compose(cj.diffuse(p_b, sched), [cj.diffuse(p_1, sched)], weights=jnp.array([w]))
tilt = cj.composed_distribution(p_b, [p_1], weights=jnp.array([w]))
mu, var = float(tilt.mean[0]), float(tilt.cov[0, 0])
checks.close([mu, var], [32 / 13, 1 / 13], rtol=1e-5, what="the w = 4 tilt is N(32/13, 1/13)")


@jax.jit
def smc_runs(keys, model):
    return jax.vmap(lambda k: cj.smc_sample(k, model, sched, (N, 1), steps=STEPS, t_min=T_MIN,
                                            mcmc_steps=1, return_info=True))(keys)


runs = smc_runs(jax.random.split(jax.random.key(9), REPEATS), model)
x = np.asarray(runs.samples[..., 0], np.float64)
m, se_m = x.mean(1).mean(), x.mean(1).std(ddof=1) / math.sqrt(REPEATS)
v, se_v = x.var(1).mean(), x.var(1).std(ddof=1) / math.sqrt(REPEATS)
em = cj.verify.sampler_law(model, sched, method="euler_maruyama", steps=STEPS, t_min=T_MIN,
                           dim=1, denoise_final=False)
em_m, em_v = float(em.mean[0]), float(em.cov[0, 0])
print(f"target N({mu:.4f}, {var:.4f}) | SMC mean {m:.4f} +- {se_m:.4f}, var {v:.4f} +- {se_v:.4f}"
      f" | Euler-Maruyama exact law N({em_m:.4f}, {em_v:.4f})")
checks.that(abs(m - mu) < 5 * se_m, "SMC mean within 5 standard errors of 32/13")
checks.that(abs(v - var) < 5 * se_v, "SMC variance within 5 standard errors of 1/13")
checks.that(abs(em_m - mu) > 10 * se_m, "Euler-Maruyama's exact law is > 10 SE off")

# %% [markdown]
# The normalizer of the composed density at $t_{\min}$ in closed form: the product of Gaussian
# powers $\prod_j N(x; m_j, v_j)^{e_j}$ integrates to
# $\exp(c + h^2 / 2\Lambda)\sqrt{2\pi/\Lambda}$ with $\Lambda = \sum_j e_j/v_j$,
# $h = \sum_j e_j m_j / v_j$, $c = \sum_j e_j(-m_j^2/2v_j - \tfrac12\log 2\pi v_j)$.

# %%
a, s2 = float(sched.alpha(T_MIN)), float(sched.sigma2(T_MIN))
ms, vs, es = (0.0, 2 * a), (a * a + s2, 0.25 * a * a + s2), (1 - w, w)
lam = sum(e / vv for e, vv in zip(es, vs))
h = sum(e * mm / vv for e, mm, vv in zip(es, ms, vs))
c = sum(e * (-mm * mm / (2 * vv) - 0.5 * math.log(2 * math.pi * vv)) for e, mm, vv in
        zip(es, ms, vs))
log_z = c + h * h / (2 * lam) + 0.5 * math.log(2 * math.pi / lam)
lz = np.asarray(runs.log_normalizer, np.float64)
lz_m, lz_se = lz.mean(), lz.std(ddof=1) / math.sqrt(REPEATS)
print(f"log Z: SMC {lz_m:.4f} +- {lz_se:.4f}, exact {log_z:.4f}")
checks.that(abs(lz_m - log_z) < 3 * lz_se, "SMC log Z within 3 standard errors of the exact")

# %%
fig, axs = plt.subplots(1, 2, figsize=(10, 3.2))
grid = np.linspace(1.0, 3.6, 300)


def pdf(mm, vv):
    return np.exp(-0.5 * (grid - mm) ** 2 / vv) / np.sqrt(2 * np.pi * vv)


axs[0].hist(x.ravel(), bins=60, range=(1.0, 3.6), density=True, alpha=0.5, label="SMC")
axs[0].plot(grid, pdf(mu, var), "k", label="C[p] = N(32/13, 1/13)")
axs[0].plot(grid, pdf(em_m, em_v), "r--", label="Euler-Maruyama (exact law)")
axs[0].set(xlabel="x", ylabel="density", title="w = 4 tilt")
axs[0].legend(fontsize=7)
ess = np.asarray(runs.ess[0]) / N
axs[1].plot(np.asarray(runs.times[0][1:]), ess, label="ESS / n")
res = np.asarray(runs.resampled[0])
axs[1].plot(np.asarray(runs.times[0][1:])[res], ess[res], "rx", label="resampled")
axs[1].invert_xaxis()
axs[1].set(xlabel="t (reverse time runs right)", ylabel="ESS / n", title="weights")
axs[1].legend(fontsize=7)
fig.tight_layout()
show(fig, "09_smc_tilt")

# %% [markdown]
# ## 2. Probability-flow likelihoods
# Along $\dot x = f x - \tfrac12 g^2 s$, $\frac{d}{dt}\log q_t(x_t) = -\nabla\cdot v$. For a
# diffused mixture this recovers its exact $\log p_{t_{\min}}$; Hutchinson's estimator is
# unbiased with the standard error it reports.

# %%
mix = cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.2, -0.3]]),
                         jnp.stack([0.3 * jnp.eye(2), jnp.array([[0.5, 0.2], [0.2, 0.4]])]),
                         covariance="full")
p = cj.diffuse(mix, sched)
pts = a * mix.sample(jax.random.key(1), 64) + math.sqrt(s2) * jax.random.normal(
    jax.random.key(2), (64, 2))
exact = np.asarray(jax.vmap(p.log_prob, (0, None))(pts, T_MIN))
ll = np.asarray(cj.log_likelihood(p, sched, pts, steps=100 if QUICK else 200, t_min=T_MIN))
hut = cj.log_likelihood(p, sched, pts, steps=100 if QUICK else 200, t_min=T_MIN,
                        trace="hutchinson", key=jax.random.key(3), n_probes=16,
                        return_info=True)
print(f"exact trace: max |log q - log p| = {np.abs(ll - exact).max():.2e} nats; Hutchinson "
      f"(16 probes): median standard error {np.median(np.asarray(hut.stderr)):.3f}")
checks.that(np.abs(ll - exact).max() < 1e-2, "PF-ODE log-likelihood within 1e-2 nats")
zs = (np.asarray(hut.log_prob) - ll) / np.asarray(hut.stderr)
checks.that(np.abs(zs).max() < 5 and 0.3 < np.sqrt(np.mean(zs**2)) < 2.0,
            "Hutchinson's z-scores against the exact trace look N(0, 1)")

# %%
fig, ax = plt.subplots(figsize=(4.2, 3.6))
ax.errorbar(exact, np.asarray(hut.log_prob), yerr=2 * np.asarray(hut.stderr), fmt=".",
            alpha=0.5, label="Hutchinson +- 2 SE")
ax.plot(exact, ll, "k.", ms=3, label="exact trace")
ax.plot([exact.min(), exact.max()], [exact.min(), exact.max()], "r-", lw=0.8)
ax.set(xlabel="exact log p_t(x)", ylabel="PF-ODE log-likelihood", title="diffused mixture")
ax.legend(fontsize=7)
show(fig, "09_likelihood")

# %% [markdown]
# ## 3. Score locality on eq. (17)
# The composed score of $S = \{0, 2, 4, 6\}$ over the empty background (FC) is block-local: the
# off-diagonal blocks of $\partial s / \partial x$ vanish. Over the Bayes background $p_u$ they do
# not, most strongly at low noise.

# %%
from composition_jax.zoo.eq17 import S_DEFAULT, eq17_laws, eq17_model

conds, empty, _ = eq17_laws(0.05)
xs = 0.5 + 0.5 * jax.random.normal(jax.random.key(4), (32, 8))
ts = jnp.array([0.05, 0.2, 0.5, 0.9])
blocks = [[i] for i in range(8)]
rep = {bg: cj.verify.score_locality(eq17_model(sched, conds, empty, bg, list(S_DEFAULT)), xs, ts,
                                    blocks) for bg in ("empty", "bayes")}
for bg, r in rep.items():
    print(f"{bg:5s}: off-block ratio at t = {[round(float(t), 2) for t in ts]}: "
          f"{[float(f'{v:.3g}') for v in np.asarray(r.off_block_ratio, np.float64)]}")
checks.that(np.all(np.asarray(rep["empty"].off_block_ratio) < 1e-6),
            "empty background: block-local score (off-block ratio < 1e-6)")
checks.that(np.all(np.asarray(rep["bayes"].off_block_ratio)[:3] > 1e-2),
            "Bayes background: off-block ratio > 1e-2 for t <= 0.5")

# %%
fig, axs = plt.subplots(1, 2, figsize=(9, 3.8))
for ax, (bg, r) in zip(axs, rep.items()):
    im = ax.imshow(np.log10(np.asarray(r.block_norms[0]) + 1e-8), cmap="viridis", vmin=-8)
    ax.set(xlabel="coordinate b", ylabel="coordinate a",
           title=f"{bg}: log10 mean |ds_a/dx_b|, t = 0.05")
    fig.colorbar(im, ax=ax, label="log10 norm")
fig.tight_layout()
show(fig, "09_locality")

# %% [markdown]
# ## 4. Locality of the length-generalization laws
# The blob scenes of the learned length-generalization experiment
# (`composition_jax.experiments.blobs`: one object at one of L = 6 locations of an 8 x 8 image)
# have exact laws in `blobs.mixture_law` (amplitude and jitter on a midpoint grid: Gaussian
# mixtures, exact noised scores). Over the locations' pixel blocks (`blobs.location_blocks`)
# they are Factorized Conditionals up to the Gaussian templates' leakage into neighbouring blocks;
# with every template cut to its own block they are exactly FC. Composing S = {0, 1, 2} over the
# empty scene is then local (exactly, or up to leakage); over the single-object mixture $p_u$
# (Bayes) it is not. `run_length_generalization` measures the same for the trained network
# (`metrics["score_locality"]` of its `learned_length_empty` record).

# %%
import dataclasses

from composition_jax.experiments import blobs
from composition_jax.experiments.length_generalization import (
    LengthGenConfig,
    exact_models,
    locality_particles,
)

lcfg = dataclasses.replace(LengthGenConfig.for_mode("quick"), quadrature=(3, 3))
S_blob, lts = (0, 1, 2), (0.05, 0.2, 0.5)
blk, _ = blobs.location_blocks(lcfg.blobs)
xb = locality_particles(jax.random.key(6), lcfg.blobs, S_blob, 16 if QUICK else 64, lts, sched)
ratios = {}
for label, cut in (("templates cut to blocks", True), ("full templates", False)):
    conds_b, empty_b, uncond_b = exact_models(lcfg, sched, truncate=cut)
    for bg, law in (("empty", empty_b), ("Bayes", uncond_b)):
        model = cj.compose(law, [conds_b[i] for i in S_blob])
        ratios[label, bg] = [float(cj.verify.score_locality(model, xb[j], t, blk).off_block_ratio)
                             for j, t in enumerate(lts)]
        print(f"{label:>23s}, {bg:5s}: off-block ratio at t = {list(lts)}: "
              f"{[float(f'{v:.3g}') for v in ratios[label, bg]]}")
checks.that(max(ratios["templates cut to blocks", "empty"]) < 1e-5,
            "exactly FC blob laws: the empty-background composition is local (float rounding)")
checks.that(all(e < 0.2 * b for e, b in zip(ratios["full templates", "empty"],
                                            ratios["full templates", "Bayes"])),
            "full templates: the empty-background composition is 5x more local than Bayes")
checks.that(min(ratios["templates cut to blocks", "Bayes"][:2]) > 1e-2,
            "the Bayes composition couples the blocks")
checks.done()
