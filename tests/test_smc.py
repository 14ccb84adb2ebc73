"""Sequential Monte Carlo for compositions (cj.smc_sample): exact composed laws and normalizers
as oracles.

References computed independently of the sampler: tilts and Gaussian compositions in closed form
(precision algebra on the noised laws), mixture compositions by scipy quadrature (1-D) and a
fine grid (2-D) of densities built from the distribution parameters with scipy.stats. Standard
errors of means, variances and log-normalizers come from independent repeats (``vmap`` over
keys); tolerances are ``k`` standard errors with ``k`` stated at each assertion.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import composition_jax as cj
from composition_jax.samplers import smc
from composition_jax.verify.sampler_law import sampler_law

SCH = cj.VPSchedule()
T_MIN = 1e-3


def _noised(t):
    """``(alpha_t, sigma_t^2)`` of the VP schedule as floats."""
    return float(SCH.alpha(t)), float(SCH.sigma2(t))


def _tilt(w):
    pb = cj.diffuse(cj.Gaussian(jnp.zeros(1), jnp.eye(1)), SCH)
    p1 = cj.diffuse(cj.Gaussian(jnp.array([2.0]), jnp.array([[0.25]])), SCH)
    return cj.compose(pb, [p1], weights=jnp.array([w]))


def _gauss_power_log_z(ms, vs, es):
    """``log ∫ prod_j N(x; m_j, v_j)^{e_j} dx`` in 1-D, closed form."""
    lam = sum(e / v for e, v in zip(es, vs))
    h = sum(e * m / v for e, m, v in zip(es, ms, vs))
    c = sum(e * (-m * m / (2 * v) - 0.5 * math.log(2 * math.pi * v)) for e, m, v in zip(es, ms, vs))
    return c + h * h / (2 * lam) + 0.5 * math.log(2 * math.pi / lam), h / lam, 1.0 / lam


def _tilt_exact(w, t):
    """Exact ``(log Z, mean, var)`` of ``N(0,1)_t^{1-w} N(2,1/4)_t^w`` at time ``t``."""
    a, s2 = _noised(t)
    return _gauss_power_log_z([0.0, 2 * a], [a * a + s2, 0.25 * a * a + s2], [1 - w, w])


def _repeats(model, d, n, reps, **kw):
    """``reps`` independent runs (keys 0..reps-1) in one compiled program."""
    keys = jax.vmap(jax.random.key)(jnp.arange(reps))
    run = jax.jit(jax.vmap(lambda k: smc.smc_sample(k, model, SCH, (n, d), return_info=True,
                                                    **kw)))
    return run(keys)


def _mean_se(a):
    a = np.asarray(a, np.float64)
    return a.mean(0), a.std(0, ddof=1) / np.sqrt(a.shape[0])


# ----------------------------------------------------------------------------- the weights
def _pde_rate(model, x, t):
    """``h = d_tau E + div v + v . grad E - g^2/2 (Lap E + |grad E|^2)`` with ``d_tau E =
    -d_t E`` by autodiff of the exact ``log_prob`` in ``t`` and the Laplacian by ``jacfwd``:
    the general Feynman-Kac rate, without the cancellations that ``fk_rate`` uses."""
    d = x.shape[-1]
    dtE = jax.grad(lambda tt: model.log_prob(x, tt))(t)
    s = model.score(x, t)
    lap = jnp.trace(jax.jacfwd(model.score)(x, t))
    f, g2 = SCH.drift_coeff(t), SCH.g2(t)
    v = g2 * s - f * x
    div_v = g2 * lap - f * d
    return -dtE + div_v + v @ s - 0.5 * g2 * (lap + s @ s)


def _models_2d():
    mix = cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, 0.0]]),
                             jnp.stack([0.2 * jnp.eye(2), jnp.array([[0.3, 0.1], [0.1, 0.5]])]))
    g = cj.Gaussian(jnp.array([0.5, 1.0]), jnp.array([[0.6, -0.2], [-0.2, 0.4]]))
    bg = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    dm, dg, db = (cj.diffuse(p, SCH) for p in (mix, g, bg))
    return {
        "compose": cj.compose(db, [dm, dg], weights=jnp.array([1.5, 0.7])),
        "linear_combination": cj.linear_combination([dm, dg], jnp.array([0.7, 0.6])),
        "nested": cj.compose(db, [cj.guidance(dg, db, 2.0), dm]),
    }


@pytest.mark.parametrize("name", ["compose",
                                  pytest.param("linear_combination", marks=pytest.mark.slow),
                                  pytest.param("nested", marks=pytest.mark.slow)])
def test_fk_rate_is_the_feynman_kac_pde_rate(name):
    """fk_rate (scores only, the divergence cancelled analytically) equals the general rate
    computed from the exact log_prob's time derivative and the score's Jacobian trace."""
    model = _models_2d()[name]
    xs = jnp.array([[0.3, -0.4], [1.2, 0.8], [-0.7, 1.5]])
    ts = jnp.array([0.05, 0.3, 0.8])

    @jax.jit
    def both(model, x, t):
        s, h = smc.fk_rate(model, SCH, x, t)
        return s, h, model.score(x, t), _pde_rate(model, x, t)

    grid = jax.vmap(jax.vmap(both, (None, 0, None)), (None, None, 0))
    s, h, s_ref, h_ref = (np.asarray(a, np.float64) for a in grid(model, xs, ts))
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)
    # float32: both sides are sums of O(g^2 |s|^2) terms; 1e-3 relative to that scale
    scale = np.asarray(jax.vmap(SCH.g2)(ts))[:, None] * (1.0 + np.sum(s * s, -1))
    assert np.all(np.abs(h - h_ref) < 1e-3 * scale), (name, h, h_ref)
    assert np.abs(h_ref).max() > 0.1  # a non-trivial rate (not a diffusion path)


@pytest.mark.slow
def test_score_form_converges_to_log_prob_form():
    """Without resampling both forms move the same particles with the same noise; their final
    log-weights differ by the time discretization of the score form, which shrinks like
    steps^(-1/2) (strong order 1/2 of the Ito integral): measured ratio 0.49 for 4x steps."""
    model = _tilt(2.0)
    rms = []
    for steps in (40, 160):
        kw = {"steps": steps, "ess_threshold": 0.0, "final_resample": False, "return_info": True}
        a = smc.smc_sample(jax.random.key(0), model, SCH, (400, 1), weights="log_prob", **kw)
        b = smc.smc_sample(jax.random.key(0), model, SCH, (400, 1), weights="score", **kw)
        np.testing.assert_allclose(np.asarray(a.samples), np.asarray(b.samples), atol=1e-5)
        dl = np.asarray(a.log_weights, np.float64) - np.asarray(b.log_weights, np.float64)
        rms.append(np.sqrt(np.mean((dl - dl.mean()) ** 2)))
    assert rms[1] < 0.65 * rms[0], rms  # 0.5 expected
    assert rms[1] < 1.0, rms


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("scheme", smc.RESAMPLERS)
def test_resampling_is_unbiased(scheme):
    w = jnp.array([0.05, 0.4, 0.0, 0.25, 0.3])
    n = w.shape[0]
    lw = jnp.log(w)
    reps = 2000
    idx = jax.vmap(lambda k: smc.resample_indices(k, lw, scheme))(
        jax.vmap(jax.random.key)(jnp.arange(reps)))
    counts = np.stack([(np.asarray(idx) == j).sum(1) for j in range(n)], 1)
    assert counts[:, 2].max() == 0  # zero weight is never drawn
    m, se = _mean_se(counts)
    expect = n * np.asarray(w)
    # 5 SE (an index whose count never varies must have exactly its expected count)
    assert np.all(np.abs(m - expect) <= 5 * se + 1e-9), (m, expect, se)
    if scheme == "systematic":  # each count is floor(n W) or ceil(n W)
        assert np.all(counts >= np.floor(expect) - 1e-9) and np.all(counts <= np.ceil(expect))


# ----------------------------------------------------------------------------- reproducibility
def test_same_key_and_n_same_output_eager_and_jit():
    model = _tilt(4.0)
    kw = {"steps": 20, "return_info": True}
    a = smc.smc_sample(jax.random.key(3), model, SCH, (200, 1), **kw)
    b = smc.smc_sample(jax.random.key(3), model, SCH, (200, 1), **kw)
    c = jax.jit(lambda k, m: smc.smc_sample(k, m, SCH, (200, 1), **kw))(jax.random.key(3), model)
    d = smc.smc_sample(jax.random.key(4), model, SCH, (200, 1), **kw)
    for field in ("samples", "log_weights", "log_normalizer", "ess", "resampled"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(c, field)))
    assert not np.array_equal(np.asarray(a.samples), np.asarray(d.samples))
    assert np.asarray(a.resampled).any()  # the coupling step was exercised


@pytest.mark.x64
def test_float64_run_resamples():
    """Under jax_enable_x64 (strict promotion) the resampling step's index arrays agree in dtype
    (``arange`` is int64 there, ``searchsorted`` int32: it raised before), the output is float64
    and finite, and resampling happened."""
    r = smc.smc_sample(jax.random.key(3), _tilt(4.0), SCH, (64, 1), steps=10, return_info=True)
    assert r.samples.dtype == jnp.float64 and np.isfinite(np.asarray(r.samples)).all()
    assert np.isfinite(float(r.log_normalizer)) and np.asarray(r.resampled).any()


# ----------------------------------------------------------------------------- target laws
def test_tilt_w4_reached_and_normalizer():
    """w = 4: N(32/13, 1/13) at t = 0 (exact law at t_min within 1e-3 of it); 8 repeats of
    n = 1000; mean and variance within 5 SE, log Z within 3 SE. Plain EM's exact law is far."""
    w = 4.0
    lz, mu, var = _tilt_exact(w, T_MIN)
    assert abs(mu - 32 / 13) < 1e-3 and abs(var - 1 / 13) < 1e-3
    r = _repeats(_tilt(w), 1, 1000, 8, steps=60, mcmc_steps=1, t_min=T_MIN)
    x = np.asarray(r.samples[..., 0], np.float64)
    m, se_m = _mean_se(x.mean(1))
    v, se_v = _mean_se(x.var(1))
    z, se_z = _mean_se(r.log_normalizer)
    assert abs(m - mu) < 5 * se_m, (m, mu, se_m)
    assert abs(v - var) < 5 * se_v, (v, var, se_v)
    assert abs(z - lz) < 3 * se_z, (z, lz, se_z)
    em = sampler_law(_tilt(w), SCH, method="euler_maruyama", steps=60, t_min=T_MIN, dim=1,
                     denoise_final=False)
    assert abs(float(em.mean[0]) - mu) > 10 * se_m  # EM stays measurably off


# ----------------------------------------------------------------------------- validation
def test_errors_name_the_argument():
    model = _tilt(2.0)
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="shape"):
        smc.smc_sample(k, model, SCH, (10,))
    with pytest.raises(ValueError, match="resample"):
        smc.smc_sample(k, model, SCH, (10, 1), resample="residual")
    with pytest.raises(ValueError, match="ess_threshold"):
        smc.smc_sample(k, model, SCH, (10, 1), ess_threshold=1.5)
    with pytest.raises(ValueError, match="weights"):
        smc.smc_sample(k, model, SCH, (10, 1), weights="exact")
    with pytest.raises(TypeError, match="kernel"):
        smc.smc_sample(k, model, SCH, (10, 1), kernel="ode_heun")
    with pytest.raises(TypeError, match="log_prob"):
        smc.smc_sample(k, lambda x, t: -x, SCH, (10, 1), weights="log_prob")
    with pytest.raises(TypeError, match="log_prob"):
        smc.smc_sample(k, lambda x, t: -x, SCH, (10, 1), mcmc_steps=1)
    with pytest.raises(ValueError, match="mcmc_steps"):
        smc.smc_sample(k, model, SCH, (10, 1), mcmc_steps=-1)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        smc.smc_sample(k, model, SCH, (10, 2))


# ----------------------------------------------------------------------------- slow: the table
def _shear_model():
    from composition_jax.zoo._common import push
    from composition_jax.zoo.feature import TRANSFORMS, _z_tuple

    A = TRANSFORMS["shear"]
    zb, zc = _z_tuple()
    Ai = np.linalg.inv(A)
    bg, conds = push(Ai, zb), [push(Ai, c) for c in zc]
    return A, cj.compose(cj.diffuse(bg, SCH), [cj.diffuse(c, SCH) for c in conds])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["w2", "w4", "shear"])
def test_smc_reaches_composed_law_where_em_does_not(case):
    """8 repeats of n = 2000, 100 steps, one MALA move per level: mean and variance (of each z
    coordinate for the shear) within 5 SE of the exact t = 0 law; Euler-Maruyama (same steps,
    exact law of its output) more than 10 SE away."""
    n, reps, steps = 2000, 8, 100
    if case == "shear":
        A, model = _shear_model()
        d, mu, var = 2, np.array([2.0, 2.0]), np.array([0.25, 0.25])
    else:
        A, d = np.eye(1), 1
        w = 2.0 if case == "w2" else 4.0
        model = _tilt(w)
        mu, var = np.array([8 * w / (1 + 3 * w)]), np.array([1 / (1 + 3 * w)])
    r = _repeats(model, d, n, reps, steps=steps, mcmc_steps=1, t_min=T_MIN)
    z = np.asarray(r.samples, np.float64) @ A.T
    m, se_m = _mean_se(z.mean(1))
    v, se_v = _mean_se(z.var(1))
    print(case, "SMC mean", m, "+-", se_m, "var", v, "+-", se_v, "target", mu, var)
    assert np.all(np.abs(m - mu) < 5 * se_m), (m, mu, se_m)
    assert np.all(np.abs(v - var) < 5 * se_v), (v, var, se_v)
    em = sampler_law(model, SCH, method="euler_maruyama", steps=steps, t_min=T_MIN, dim=d,
                     denoise_final=False)
    em_m = A @ np.asarray(em.mean, np.float64)
    em_v = np.diag(A @ np.asarray(em.cov, np.float64) @ A.T)
    print(case, "EM exact law mean", em_m, "var", em_v)
    off = np.maximum(np.abs(em_m - mu) / se_m, np.abs(em_v - var) / se_v)
    assert np.max(off) > 10, off


def _mixture_1d():
    """``N(0,1)^{-1} M^2`` with ``M = 0.3 N(-1, .2) + 0.7 N(1.5, .3)`` (integer power of the
    mixture, negative power of the Gaussian background)."""
    mix = cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0], [1.5]]),
                             jnp.array([[[0.2]], [[0.3]]]))
    pb = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
    model = cj.compose(cj.diffuse(pb, SCH), [cj.diffuse(mix, SCH)], weights=jnp.array([2.0]))
    a, s2 = _noised(T_MIN)

    def dens(x):
        m = 0.3 * stats.norm.pdf(x, -a, np.sqrt(0.2 * a * a + s2)) + 0.7 * stats.norm.pdf(
            x, 1.5 * a, np.sqrt(0.3 * a * a + s2))
        return m * m / stats.norm.pdf(x, 0.0, np.sqrt(a * a + s2))

    return model, dens


def _mixture_2d():
    """``C[p_b, M, g]`` in 2-D with unit weights: ``M g / p_b``."""
    mix = cj.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
                             jnp.stack([0.3 * jnp.eye(2), jnp.array([[0.4, 0.1], [0.1, 0.3]])]))
    g = cj.Gaussian(jnp.array([0.5, 0.5]), jnp.array([[0.8, 0.2], [0.2, 0.6]]))
    pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    model = cj.compose(cj.diffuse(pb, SCH), [cj.diffuse(mix, SCH), cj.diffuse(g, SCH)])
    a, s2 = _noised(T_MIN)

    def nz(m, c):
        return stats.multivariate_normal(a * np.asarray(m), a * a * np.asarray(c) + s2 * np.eye(2))

    comps = [(0.4, nz([-1.0, 0.5], 0.3 * np.eye(2))),
             (0.6, nz([1.0, -0.5], [[0.4, 0.1], [0.1, 0.3]]))]
    gd, bd = nz([0.5, 0.5], [[0.8, 0.2], [0.2, 0.6]]), nz([0.0, 0.0], np.eye(2))

    def dens(pts):
        m = sum(wk * c.pdf(pts) for wk, c in comps)
        return m * gd.pdf(pts) / bd.pdf(pts)

    return model, dens


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gauss_w2", "mixture_1d", "mixture_2d"])
def test_log_normalizer_matches_exact(case):
    """log Z of the composed density at t_min: closed form (Gaussian tilt), scipy quadrature
    (1-D mixture), a 0.01-spaced grid on [-6, 6]^2 (2-D mixture); SMC within 3 SE (8 repeats of
    n = 2000)."""
    if case == "gauss_w2":
        model, d = _tilt(2.0), 1
        exact = _tilt_exact(2.0, T_MIN)[0]
        quad = math.log(integrate.quad(
            lambda x: math.exp(float(model.log_prob(jnp.array([x]), T_MIN))), -6, 8)[0])
        assert abs(quad - exact) < 1e-3  # the model's own log_prob integrates to the same Z
    elif case == "mixture_1d":
        model, dens = _mixture_1d()
        d = 1
        exact = math.log(integrate.quad(dens, -8, 8, limit=200)[0])
    else:
        model, dens = _mixture_2d()
        d = 2
        g = np.arange(-6, 6, 0.01) + 0.005
        X, Y = np.meshgrid(g, g)
        exact = math.log(dens(np.stack([X.ravel(), Y.ravel()], 1)).sum() * 1e-4)
    r = _repeats(model, d, 2000, 8, steps=100, mcmc_steps=1, t_min=T_MIN)
    z, se = _mean_se(r.log_normalizer)
    print(case, "log Z", z, "+-", se, "exact", exact)
    assert abs(z - exact) < 3 * se, (z, exact, se)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smc_weights_tilt", "smc_shear", "likelihood_pf_ode",
                                  "score_locality_eq17"])
def test_zoo_scenarios_minimal(name):
    import json

    from composition_jax import zoo

    r = zoo.run_scenario(name, zoo.Config.for_mode("minimal"))
    json.dumps(r.to_dict())
    assert r.observed == r.expected == "success", r.reasons
