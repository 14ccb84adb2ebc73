"""A peer library's acceptance suite, literal configuration: 2-D three-component Gaussian
mixture, 300 steps, n = 500, pass when MMD < 0.1 against n = 500 exact samples; linear VP with
beta 0.01 -> 7 (``cj.VPSchedule(beta_min=0.01, beta_max=7.0)``: beta(t) = 0.01 + 6.99 t on
t in [0, 1], so alpha(1) = exp(-(0.01 + 6.99 / 2) / 2) = 0.173 and the N(0, I) prior is not
p_1), cosine VP and rectified flow; Euler-Maruyama, DDIM / Heun / Euler with EDM churn
(s_churn = 40) and DPM-Solver++(2S).

MMD: ``sqrt(max(MMD_u^2, 0))`` with the unbiased estimator of ``cj.verify.stats.mmd2_unbiased``
and the Gaussian kernel ``k(u, v) = exp(-|u - v|^2 / (2 h^2))``, ``h = 1`` (the data's scale:
component standard deviation 0.55, means 4 apart). Two independent exact samples of this size
give about 0.00-0.02 (measured); a sampler that misses a mode or has the wrong spread gives far
more than 0.1 (checked below with half the score).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import composition_jax as cj
from composition_jax.verify.stats import mmd2_unbiased

W = jnp.array([0.3, 0.3, 0.4])
MU = jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
COVS = jnp.stack([0.3 * jnp.eye(2)] * 3)
MIX = cj.GaussianMixture(W, MU, COVS)
SCHEDS = {"linear_vp": cj.VPSchedule(beta_min=0.01, beta_max=7.0),
          "cosine_vp": cj.CosineVPSchedule(), "rectified_flow": cj.RectifiedFlowSchedule()}
METHODS = {"euler_maruyama": cj.EulerMaruyama(), "ddim_churn": cj.DDIM(s_churn=40.0),
           "heun_churn": cj.ODEHeun(s_churn=40.0), "euler_churn": cj.ODEEuler(s_churn=40.0),
           "dpm_solver_2s": cj.DPMSolver2S()}
N, STEPS, H = 500, 300, 1.0


def mmd(x, y):
    return float(jnp.sqrt(jnp.maximum(mmd2_unbiased(x, y, H), 0.0)))


@pytest.fixture(scope="module")
def reference():
    return MIX.sample(jax.random.key(123), N)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("sch_name", list(SCHEDS))
def test_peer_acceptance(sch_name, method, reference):
    sch = SCHEDS[sch_name]
    x = cj.sample(jax.random.key(0), cj.diffuse(MIX, sch), sch, (N, 2), method=METHODS[method],
                  steps=STEPS, nonfinite="raise")
    value = mmd(x, reference)
    print(f"{sch_name} {method}: MMD {value:.4f}")
    assert value < 0.1


@pytest.mark.slow
def test_peer_criterion_rejects_a_wrong_sampler(reference):
    """The criterion has power: half the score (a sampler of a wider law) fails it."""
    sch = SCHEDS["linear_vp"]
    p = cj.diffuse(MIX, sch)
    bad = cj.FunctionModel(lambda x, t: 0.5 * p.score(x, t))
    x = cj.sample(jax.random.key(0), bad, sch, (N, 2), method=METHODS["heun_churn"],
                  steps=STEPS, nonfinite="raise", denoise_final=False)
    value = mmd(x, reference)
    print(f"half score: MMD {value:.4f}")
    assert value > 0.1
