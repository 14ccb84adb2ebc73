"""EDM stochastic churn (Karras et al. 2022, Alg. 2) on ODEEuler / ODEHeun / DDIM: the churn
map is the exact forward transition in the scaled variable, the per-level gamma follows
k-diffusion's rule, sampler_law covers it, sample moments match the exact law on every
schedule, reproducibility and layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_dpm_solver import SCHEDS, _moments_match, fitted_order

import composition_jax as cj
from composition_jax.samplers import driver, time_grid
from composition_jax.samplers.methods import churn, churn_gammas
from composition_jax.verify.sampler_law import sampler_law

MEAN = jnp.array([1.0, -1.0])
COV = jnp.array([[2.0, 0.5], [0.5, 1.0]])


@pytest.mark.parametrize("sch_name", list(SCHEDS))
def test_churn_maps_p_t_to_p_t_hat_exactly(sch_name):
    """With s_noise = 1 the churn is the forward transition x_{t_hat} | x_t: it maps
    N(alpha_t m, alpha_t^2 S + sigma_t^2 I) to N(alpha_that m, alpha_that^2 S + sigma_that^2 I),
    and sigma_that / alpha_that = (1 + gamma) sigma_t / alpha_t."""
    sch = SCHEDS[sch_name]
    t, gamma = jnp.asarray(0.6 * sch.t_max), jnp.asarray(0.3)
    f = lambda x, z: churn(sch, x, z, t, gamma, 1.0)[0]
    t_hat = churn(sch, jnp.zeros(2), jnp.zeros(2), t, gamma, 1.0)[1]
    r = lambda s: float(sch.sigma(s) / sch.alpha(s))
    np.testing.assert_allclose(r(t_hat), 1.3 * r(t), rtol=1e-4)
    P = jax.jacfwd(f, 0)(jnp.zeros(2), jnp.zeros(2))
    Q = jax.jacfwd(f, 1)(jnp.zeros(2), jnp.zeros(2))
    q = f(jnp.zeros(2), jnp.zeros(2))
    a, s2 = sch.alpha(t), sch.sigma2(t)
    m_in, C_in = a * MEAN, a * a * COV + s2 * jnp.eye(2)
    ah, s2h = sch.alpha(t_hat), sch.sigma2(t_hat)
    np.testing.assert_allclose(P @ m_in + q, ah * MEAN, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(P @ C_in @ P.T + Q @ Q.T, ah * ah * COV + s2h * jnp.eye(2),
                               rtol=1e-4, atol=1e-6)
    # gamma = 0 is the identity (no round trip through t_from_log_snr)
    x = jnp.array([0.3, 0.1])
    xh, th = churn(sch, x, jnp.ones(2), t, jnp.asarray(0.0), 1.0)
    assert float(th) == float(t) and np.array_equal(np.asarray(xh), np.asarray(x))


def test_churn_gammas_follow_karras_rule():
    sch = cj.VPSchedule()
    times = time_grid(sch, 20, 1e-3, "uniform", dtype=jnp.float32)
    r = np.exp(-0.5 * np.asarray(jax.vmap(sch.log_snr)(times[:-1])))
    g = np.asarray(churn_gammas(sch, times, 4.0, 0.05, 1.0))
    expect = np.where((r >= 0.05) & (r <= 1.0), min(4.0 / 20, 2**0.5 - 1), 0.0)
    np.testing.assert_allclose(g, expect, rtol=1e-6)
    assert 0 < (g > 0).sum() < 20  # the window really selects
    big = np.asarray(churn_gammas(sch, times, 80.0, 0.0, float("inf")))
    np.testing.assert_allclose(big, 2**0.5 - 1, rtol=1e-6)  # capped at sqrt(2) - 1


def test_churn_options_validated_and_layouts(key):
    for bad in (dict(s_churn=-1.0), dict(s_noise=-0.1), dict(s_tmin=1.0, s_tmax=0.5)):
        with pytest.raises(ValueError, match="s_"):
            cj.ODEHeun(**bad)
    m = cj.ODEHeun(s_churn=2.0)
    assert m.num_normals == 1 and cj.ODEHeun().num_normals == 0
    assert cj.DDIM(eta=0.5, s_churn=1.0).num_normals == 2
    assert m.elementwise is True  # the churn is element-wise: both layouts
    sch = cj.VPSchedule()
    mix = cj.diffuse(cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[1.0, 0.0], [-1.0, 0.0]]),
                                        jnp.stack([0.2 * jnp.eye(2)] * 2), covariance="diag"), sch)
    assert driver.choose_layout("auto", m, mix, 2, None, False) == "columns"
    # reproducible per particle: a prefix of a larger run, over several tiles (auto: columns)
    big = cj.sample(key, mix, sch, (24, 2), method=m, steps=6, nonfinite="raise", tile_size=8)
    small = cj.sample(key, mix, sch, (7, 2), method=m, steps=6, nonfinite="raise")
    np.testing.assert_allclose(small, big[:7], rtol=1e-5, atol=1e-6)
    # the churn noise is used: differs from the deterministic sampler
    det = cj.sample(key, mix, sch, (7, 2), method="ode_heun", steps=6, nonfinite="raise")
    assert not np.allclose(small, det)
    with pytest.raises(ValueError, match="gamma"):
        m.transition(mix, sch, jnp.zeros(2), jnp.zeros((1, 2)), 0.5, 0.4)


N = 2000
CHURNED = [cj.ODEEuler(s_churn=4.0), cj.ODEHeun(s_churn=4.0, s_tmin=0.05, s_noise=1.003),
           cj.DDIM(s_churn=4.0), cj.DDIM(eta=0.5, s_churn=2.0)]


@pytest.mark.parametrize(
    "sch_name,layout",
    [("vp", "columns")]
    + [pytest.param(s, lay, marks=pytest.mark.slow) for s in SCHEDS
       for lay in ("rows", "columns") if (s, lay) != ("vp", "columns")])
def test_churned_sample_moments_match_exact_law(sch_name, layout, key):
    """Sample moments of churned samplers within 5 standard errors (n = 2000) of sampler_law,
    which propagates the churn noise exactly (it is affine in (x, normals)); both layouts (the
    rows layout in the slow lane: by default it is tied to the columns layout particle by
    particle, ``test_churned_rows_equal_columns``)."""
    sch = SCHEDS[sch_name]
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    for method in CHURNED:
        x = cj.sample(key, p, sch, (N, 2), method=method, steps=10, nonfinite="raise",
                      layout=layout)
        law = sampler_law(p, sch, method=method, steps=10)
        zm, zc = _moments_match(x, law)
        assert zm < 5 and zc < 5, (method, zm, zc)
    # and the law with churn differs from the law without it
    a = sampler_law(p, sch, method=cj.ODEHeun(s_churn=4.0), steps=10)
    b = sampler_law(p, sch, method=cj.ODEHeun(), steps=10)
    assert not np.allclose(a.cov, b.cov, rtol=1e-3)


@pytest.mark.x64
@pytest.mark.parametrize(
    "method,lo,hi",
    [(cj.ODEHeun(s_churn=1.0), 1.7, 2.5),
     pytest.param(cj.ODEEuler(s_churn=1.0), 0.8, 1.3, marks=pytest.mark.slow),
     pytest.param(cj.DDIM(s_churn=1.0), 0.8, 1.3, marks=pytest.mark.slow)],
)
def test_churned_weak_order(method, lo, hi):
    """With s_noise = 1 the churn is the exact forward transition p_t -> p_t_hat (see
    test_churn_maps_p_t_to_p_t_hat_exactly): for an exact score it adds no error to the
    marginals, so the churned sampler keeps the weak order of its ODE step (measured, VP,
    uniform grid, 25/50/100 steps: Heun 2.0, Euler and DDIM 1)."""
    order, errs = fitted_order(cj.VPSchedule(), method, grid="uniform")
    print(f"{method}: errors {errs}, fitted weak order {order:.3f}")
    assert lo <= order <= hi


@pytest.mark.x64
def test_churn_at_zero_window_equals_plain_heun():
    """gamma = 0 at every level (window below all noise levels) gives exactly the plain Heun law
    through the state path of sampler_law."""
    sch = cj.VPSchedule()
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    a = sampler_law(p, sch, method=cj.ODEHeun(s_churn=5.0, s_tmin=0.0, s_tmax=1e-9), steps=7)
    b = sampler_law(p, sch, method=cj.ODEHeun(), steps=7)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-12)


def _iso(seed, K=3):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K)).astype(np.float32)
    m = rng.normal(size=(K, 2)).astype(np.float32)
    v = rng.uniform(0.2, 0.6, K).astype(np.float32)
    return cj.GaussianMixture(jnp.asarray(w), jnp.asarray(m),
                              jnp.asarray(v)[:, None, None] * jnp.eye(2)[None])


def composed(sch_name, background):
    """``compose(background, [iso mixture])`` under schedule ``sch_name``, with a Gaussian or
    an isotropic-mixture background: both declare ``columns_native``."""
    sch = SCHEDS[sch_name]
    bg = (cj.Gaussian(jnp.array([0.5, -0.5]), jnp.array([[1.0, 0.2], [0.2, 0.7]]))
          if background == "gaussian" else _iso(0))
    model = cj.compose(cj.diffuse(bg, sch), [cj.diffuse(_iso(1), sch)])
    assert model.columns_native
    return sch, model


def rows_equal_columns(key, sch, model, method, n=50, steps=8):
    """Same key, same samples in both layouts (several columns tiles and padding), within
    float rounding: the noise of every particle is the same stream bit for bit, the arithmetic
    is not (the rows layout vmaps ``model.score`` over (d,) particles, the columns layout
    calls ``score_columns`` on (d, B) tiles, and XLA fuses and contracts the two programs
    differently), so outputs of order 1 agree to a few 1e-6 (measured: at most 3e-6 after 8
    steps), far below the 2e-5 used here and far above what a wrong noise row or a lost state
    would give (order 0.1 or more)."""
    kw = {"method": method, "steps": steps, "nonfinite": "raise"}
    a = cj.sample(key, model, sch, (n, 2), layout="rows", **kw)
    b = cj.sample(key, model, sch, (n, 2), layout="columns", tile_size=24, **kw)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-5)
    return np.asarray(a)


_CHURN_LAYOUT_CASES = [(m, s, b) for m in ("euler", "heun", "ddim")
                       for s in ("vp", "ve") for b in ("mixture", "gaussian")]


@pytest.mark.parametrize(
    "name,sch_name,background",
    [c if c == ("heun", "vp", "mixture") else pytest.param(*c, marks=pytest.mark.slow)
     for c in _CHURN_LAYOUT_CASES])
def test_churned_rows_equal_columns(key, name, sch_name, background):
    """Churned Euler, Heun and DDIM (eta = 0.5): the same particles in both layouts (VP and VE,
    Gaussian and mixture backgrounds; churned Heun on VP by default, the rest in the slow
    lane); ``layout="auto"`` picks columns for them. Heun's window ``[0.5, 20]`` holds some
    levels of the 8-step grids and not others (``gamma`` varies over the run), so a columns
    body that misaligned the per-level ``gamma`` would be seen. (That the churn noise is used in the
    columns layout: ``test_churn_options_validated_and_layouts``.)"""
    sch, model = composed(sch_name, background)
    method = {"euler": cj.ODEEuler(s_churn=4.0),
              "heun": cj.ODEHeun(s_churn=4.0, s_tmin=0.5, s_tmax=20.0),
              "ddim": cj.DDIM(eta=0.5, s_churn=2.0)}[name]
    assert driver.choose_layout("auto", method, model, 2, None, False) == "columns"
    rows_equal_columns(key, sch, model, method)
