"""Probability-flow log-likelihoods (cj.log_likelihood) against exact noised log-densities.

Oracles: the exact ``log p_t`` of diffused mixtures; the closed-form composed law under
Factorized Conditionals (``C[p^t] = N_t[C[p]]``); for a composition that is not FC, the exact
Gaussian law of the PF-ODE's output (``sampler_law``: the composed score is affine, so the flow
is linear) and the closed-form composed density at ``t_min``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import composition_jax as cj
from composition_jax.samplers.likelihood import log_likelihood
from composition_jax.verify.sampler_law import sampler_law

SCH = cj.VPSchedule()
T_MIN = 1e-3


def _mixture(d, seed=0):
    """Three components with random full covariances (eigenvalues ~0.1-1)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, d)) * 1.5
    L = rng.normal(size=(3, d, d)) * 0.4 / np.sqrt(d)
    covs = L @ np.swapaxes(L, 1, 2) + 0.1 * np.eye(d)
    return cj.GaussianMixture(jnp.array([0.2, 0.5, 0.3]), jnp.asarray(means), jnp.asarray(covs),
                              covariance="full")


def _noised_points(dist, key, n, t):
    """``n`` exact samples of the noised law at ``t``."""
    k1, k2 = jax.random.split(key)
    x0 = dist.sample(k1, n)
    a, s = SCH.alpha(t), jnp.sqrt(SCH.sigma2(t))
    return a * x0 + s * jax.random.normal(k2, x0.shape, x0.dtype)


@pytest.mark.x64
@pytest.mark.parametrize("d", [2, pytest.param(5, marks=pytest.mark.slow),
                               pytest.param(8, marks=pytest.mark.slow)])
def test_mixture_pf_ode_likelihood_is_exact(key, d):
    """200 Heun steps, exact trace: within 1e-2 nats of log p_{t_min} (measured: <= 2e-3)."""
    mix = _mixture(d)
    p = cj.diffuse(mix, SCH)
    x = _noised_points(mix, key, 16, T_MIN)
    exact = jax.vmap(p.log_prob, (0, None))(x, T_MIN)
    ll = log_likelihood(p, SCH, x, steps=200, t_min=T_MIN)
    err = np.abs(np.asarray(ll - exact))
    assert err.max() < 1e-2, err
    # Heun is order 2: 50 steps are measurably worse than 200 (the test can fail)
    ll50 = log_likelihood(p, SCH, x, steps=50, t_min=T_MIN, method="euler")
    assert np.abs(np.asarray(ll50 - exact)).max() > 2 * err.max()


def _fc_tuple():
    bg = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    p1 = cj.Gaussian(jnp.array([2.0, 0.0]), jnp.diag(jnp.array([0.25, 1.0])))
    p2 = cj.Gaussian(jnp.array([0.0, 2.0]), jnp.diag(jnp.array([1.0, 0.25])))
    return bg, [p1, p2]


@pytest.mark.x64
def test_fc_composition_likelihood_is_the_composed_density(key):
    """Under Factorized Conditionals the PF-ODE of the composed score is that of N_t[C[p]]:
    log_likelihood equals the exact composed log-density (normalized: Z = 1 under FC)."""
    bg, conds = _fc_tuple()
    model = cj.compose(cj.diffuse(bg, SCH), [cj.diffuse(c, SCH) for c in conds])
    target = cj.diffuse(cj.composed_distribution(bg, conds), SCH)
    x = _noised_points(cj.composed_distribution(bg, conds), key, 16, T_MIN)
    exact = jax.vmap(target.log_prob, (0, None))(x, T_MIN)
    ll = log_likelihood(model, SCH, x, steps=200, t_min=T_MIN)
    assert np.abs(np.asarray(ll - exact)).max() < 1e-2


@pytest.mark.x64
def test_non_fc_gap_equals_exact_sampler_error(key):
    """w = 2 tilt (not a diffusion path): log_likelihood is the log-density of the PF-ODE's
    output law q (exact: Gaussian, from sampler_law with 4000 Heun steps), NOT of the composed
    law C[p^{t_min}]; the gap log q - log C is reproduced within 1e-2 and is material."""
    w = 2.0
    pb, p1 = cj.Gaussian(jnp.zeros(1), jnp.eye(1)), cj.Gaussian(jnp.array([2.0]),
                                                               jnp.array([[0.25]]))
    model = cj.compose(cj.diffuse(pb, SCH), [cj.diffuse(p1, SCH)], weights=jnp.array([w]))
    a, s2 = float(SCH.alpha(T_MIN)), float(SCH.sigma2(T_MIN))

    def noised(g):
        return cj.Gaussian(a * g.mean, a * a * g.cov + s2 * jnp.eye(1))

    comp = cj.composed_distribution(noised(pb), [noised(p1)], weights=jnp.array([w]))
    law = sampler_law(model, SCH, method="ode_heun", steps=4000, t_min=T_MIN, dim=1,
                      denoise_final=False)
    x = jnp.linspace(1.6, 3.2, 9)[:, None]
    ll = np.asarray(log_likelihood(model, SCH, x, steps=200, t_min=T_MIN, prior="gaussian"))
    log_q = stats.norm.logpdf(np.asarray(x[:, 0]), float(law.mean[0]),
                              np.sqrt(float(law.cov[0, 0])))
    log_c = np.asarray(jax.vmap(comp.log_prob)(x))
    assert np.abs(ll - log_q).max() < 1e-2
    gap = ll - log_c
    assert np.abs(gap - (log_q - log_c)).max() < 1e-2
    assert np.abs(gap).max() > 0.5  # the PF-ODE misses the tilt by a material amount


def test_hutchinson_is_unbiased_within_its_standard_error(key):
    """4-D Gaussian with a full covariance (off-diagonal Jacobian: the estimator has variance);
    64 probes per point; every estimate within 4 of its standard errors of the exact trace."""
    c = jnp.array([[1.0, 0.5, 0.2, 0.0], [0.5, 0.8, -0.3, 0.1], [0.2, -0.3, 0.6, 0.2],
                   [0.0, 0.1, 0.2, 0.4]])
    g = cj.Gaussian(jnp.array([1.0, -0.5, 0.3, 2.0]), c)
    p = cj.diffuse(g, SCH)
    x = _noised_points(g, key, 6, 0.05)
    kw = {"steps": 40, "t_min": 0.05}
    exact = np.asarray(log_likelihood(p, SCH, x, **kw))
    info = log_likelihood(p, SCH, x, trace="hutchinson", key=jax.random.key(7), n_probes=64,
                          return_info=True, **kw)
    est, se = np.asarray(info.log_prob), np.asarray(info.stderr)
    assert np.all(se > 0) and np.all(se < 1.0)
    assert np.all(np.abs(est - exact) < 4 * se), (est, exact, se)  # 4 SE per point
    # point i's probes depend only on (key, i): the first point alone gives the same number
    one = log_likelihood(p, SCH, x[0], trace="hutchinson", key=jax.random.key(7), n_probes=64,
                         **kw)
    assert one.shape == ()
    np.testing.assert_allclose(float(one), est[0], rtol=1e-6)


def test_errors_name_the_argument():
    p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), SCH)
    x = jnp.zeros((3, 2))
    with pytest.raises(TypeError, match="key"):
        log_likelihood(p, SCH, x, trace="hutchinson")
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(p, SCH, x, trace="skilling")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(p, SCH, x, method="rk4")
    with pytest.raises(ValueError, match="x must have shape"):
        log_likelihood(p, SCH, jnp.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        log_likelihood(p, SCH, jnp.zeros((4, 3)))
    with pytest.raises(TypeError, match="prior='model'"):
        log_likelihood(lambda y, t: -y, SCH, x, prior="model")
