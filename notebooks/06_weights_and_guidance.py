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
# # 6. Weights and guidance: what does the sampler actually produce?
#
# With weights, $\hat s = s_b + \sum_i w_i (s_i - s_b)$; classifier-free guidance is the
# one-conditional case $s_u + w\,(s_c - s_u)$ with $p_b = p_u$. The $t = 0$ target is the
# **tilt** $p_b^{1-w} p_1^{w}$, projective only at $w = 1$. Worse, for $w \neq 1$ the composed
# noisy laws are not a diffusion path, so reverse diffusion does not even reach the tilt
# (computed below with exact scores): $p_b = N(0, 1)$, $p_1 = N(2, 0.25)$; at $w = 2$ the tilt is $N(2.286, 0.143)$ but the
# reverse SDE ends near $N(2.50, 0.110)$.
#
# `cj.verify.sampler_law` gives the exact Gaussian law of the sampler output (discretization
# included), so these numbers are exact, and the samples are checked against them.
# `COMPOSITION_JAX_QUICK=1` shrinks sample sizes and steps.

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
checks = Checks("weights and guidance")  # a failed check prints a warning (raises in the test suite)


def show(fig, name):
    """Show the figure (Jupyter) or save it as ``FIGURES/name.png`` (script); every plot axis
    must carry both axis labels."""
    checks.labelled(fig, name)
    fig.savefig(FIGURES / f"{name}.png", dpi=80)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)



N = 2000 if QUICK else 20000
STEPS = 100 if QUICK else 1000
sched = cj.VPSchedule()
key = jax.random.key(6)
p_b = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
p_1 = cj.Gaussian(jnp.full((1,), 2.0), 0.25 * jnp.eye(1))
d_b, d_1 = cj.diffuse(p_b, sched), cj.diffuse(p_1, sched)
print(f"QUICK={QUICK}: n={N}, steps={STEPS}")

# %% [markdown]
# ## Guidance is composition with one conditional
# `cj.guidance(conditional, unconditional, scale)` and `cj.compose(background, [conditional],
# weights=[scale])` are the same score.

# %%
xs = jnp.linspace(-2.0, 4.0, 7)
for w in (0.5, 2.0, 4.0):
    g = cj.guidance(d_1, d_b, w)
    c = cj.compose(d_b, [d_1], weights=jnp.array([w]))
    for t in (0.05, 0.5):
        sg = jax.vmap(lambda x, g=g, t=t: g.score(x[None], t))(xs)
        sc = jax.vmap(lambda x, c=c, t=t: c.score(x[None], t))(xs)
        checks.close(sg, sc, rtol=1e-5, atol=1e-5, what=f"w={w}, t={t}: guidance = compose")
print("guidance == compose with one weighted conditional: checked")

# %% [markdown]
# ## Tilted target vs exact sampler law vs samples
# The weights are pytree leaves: one compiled sampler (and one compiled `sampler_law`) serves
# every $w$.

# %%
WEIGHTS = [0.5, 1.0, 2.0, 4.0]
rows = {}
for i, w in enumerate(WEIGHTS):
    wv = jnp.array([w])
    tilt = cj.composed_distribution(p_b, [p_1], weights=wv)  # exact t = 0 target
    model = cj.compose(d_b, [d_1], weights=wv)
    law = cj.verify.sampler_law(model, sched, method="euler_maruyama", steps=STEPS,
                                grid="log_snr")
    x = np.asarray(cj.sample(jax.random.fold_in(key, i), model, sched, (N, 1),
                             method="euler_maruyama", steps=STEPS, grid="log_snr"))[:, 0]
    gap = cj.verify.composition_gap(p_b, [p_1], sched, jnp.linspace(0.02, 0.98, 25), wv)
    rows[w] = dict(tilt=(float(tilt.mean[0]), float(tilt.cov[0, 0])),
                   law=(float(law.mean[0]), float(law.cov[0, 0])), x=x, gap=gap.max)
    print(f"w = {w}: tilt N({rows[w]['tilt'][0]:.3f}, {rows[w]['tilt'][1]:.3f}) | sampler law "
          f"N({rows[w]['law'][0]:.3f}, {rows[w]['law'][1]:.3f}) | samples mean {x.mean():.3f} "
          f"var {x.var():.3f} | max gap {gap.max:.3g}")

# %%
fig, axs = plt.subplots(1, len(WEIGHTS), figsize=(14, 3.2), sharey=True)
grid = np.linspace(0.0, 4.0, 300)


def normal_pdf(m, v):
    return np.exp(-0.5 * (grid - m) ** 2 / v) / np.sqrt(2 * np.pi * v)


for ax, w in zip(axs, WEIGHTS):
    r = rows[w]
    ax.hist(r["x"], bins=50, range=(0, 4), density=True, alpha=0.5, label="samples (reverse SDE)")
    ax.plot(grid, normal_pdf(*r["tilt"]), "k", label="t = 0 target (tilt)")
    ax.plot(grid, normal_pdf(*r["law"]), "r--", label="exact sampler law")
    ax.plot(grid, normal_pdf(2.0, 0.25), color="tab:green", lw=0.8, label="p_1")
    ax.set(xlabel="x", ylabel="density", title=f"weight w = {w}")
axs[0].legend(fontsize=6)
fig.tight_layout()
show(fig, "06_weights")

# %% [markdown]
# Checks: (i) the tilt is the closed form $N\big(\frac{2w/.25}{(1-w) + w/.25},
# \frac{1}{(1-w) + w/.25}\big)$; (ii) the samples follow the exact sampler law (mean within 5
# standard errors, variance within a chi-square bound); (iii) at $w = 1$ the sampler reaches
# $p_1$ (up to discretization) and the gap is zero; at $w \neq 1$ the sampler law misses the tilt
# by far more than the discretization error, and the gap is positive; at $w = 2, 4$ the tilts
# are $N(2.286, 0.143)$ and $N(2.462, 0.077)$, the reverse-SDE laws $N(2.50, 0.110)$ and
# $N(2.656, 0.048)$.

# %%
for w, r in rows.items():
    prec = (1 - w) + w / 0.25
    checks.close(r["tilt"], (2 * w / 0.25 / prec, 1 / prec), rtol=1e-5,
                 what=f"w={w}: tilt = closed form")
    m, v = r["law"]
    checks.that(abs(r["x"].mean() - m) < 5 * np.sqrt(v / N),
                f"w={w}: sample mean within 5 SE of the exact sampler law")
    checks.that(abs(r["x"].var() / v - 1) < 5 * np.sqrt(2 / (N - 1)),
                f"w={w}: sample variance within 5 SE of the exact sampler law")
    if w == 1.0:
        checks.that(abs(m - 2.0) < 0.01 and abs(v / 0.25 - 1) < 0.05 and r["gap"] < 1e-6,
                    "w=1: the sampler reaches p_1 and the gap is zero")
    else:
        checks.that(abs(m - r["tilt"][0]) > 0.05 and r["gap"] > 1e-3,
                    f"w={w}: the sampler law misses the tilt and the gap is positive")
checks.close(rows[2.0]["tilt"], (2.286, 0.143), atol=1e-3, what="w=2: tilt")
checks.close(rows[4.0]["tilt"], (2.462, 0.077), atol=1e-3, what="w=4: tilt")
checks.close(rows[2.0]["law"], (2.50, 0.110), atol=0.02, what="w=2: reverse-SDE law")
checks.close(rows[4.0]["law"], (2.656, 0.048), atol=0.02, what="w=4: reverse-SDE law")

# %% [markdown]
# ## Sweeping the guidance scale
# The exact sampler law as a function of $w$ (probability-flow ODE and reverse SDE) against the
# tilt: the two samplers disagree with each other whenever $w \neq 1$, a practical symptom that
# the composed path is not a diffusion path.

# %%
ws = np.linspace(0.25, 5.0, 20)
curves = {"tilt (t = 0 target)": [], "reverse SDE law": [], "probability-flow ODE (Heun) law": []}
for w in ws:
    wv = jnp.array([w], jnp.float32)
    model = cj.compose(d_b, [d_1], weights=wv)
    curves["tilt (t = 0 target)"].append(float(cj.composed_distribution(p_b, [p_1], wv).mean[0]))
    for name, method in (("reverse SDE law", "euler_maruyama"),
                         ("probability-flow ODE (Heun) law", "ode_heun")):
        law = cj.verify.sampler_law(model, sched, method=method, steps=STEPS, grid="log_snr")
        curves[name].append(float(law.mean[0]))
fig, ax = plt.subplots(figsize=(6, 3.6))
for name, ys in curves.items():
    ax.plot(ws, ys, label=name)
ax.axvline(1.0, color="k", ls=":", lw=0.8)
ax.set(xlabel="weight / guidance scale w", ylabel="mean of the law", title="exact means vs w")
ax.legend(fontsize=7)
show(fig, "06_sweep")
sde, ode = np.asarray(curves["reverse SDE law"]), np.asarray(curves["probability-flow ODE (Heun) law"])
far = np.abs(ws - 1.0) > 0.5
checks.that(np.all(np.abs(sde - ode)[far] > 0.02), "the samplers disagree away from w = 1")
checks.that(np.abs(sde - ode)[np.argmin(np.abs(ws - 1.0))] < 0.02,
            "the samplers agree at w = 1")
checks.done()
