"""Literal reproducers of the numerical findings of issue 13 (items 1 and 5); each failed before
the fix. References are float64 NumPy closed forms on the same float32 inputs, independent of
the library.

* The diagonal / isotropic mixture paths expanded ``|x|^2 - 2 a x.m + a^2 |m|^2`` and cancelled
  catastrophically in float32 away from the origin (score off by 27 % at offset 1000, sign
  flipped at 3000) and for widely spread means (``log_prob`` off by hundreds of nats for means
  1e4 apart with variance 1e-2), in every method built on them: ``score``, ``log_prob``,
  ``log_prob_and_score`` (the Metropolis samplers' accept step), ``denoise``, and the
  particle-minor ``score_columns`` of ``cj.sample(..., layout="columns")``.
* A ``Gaussian`` or full-covariance mixture in float16 / bfloat16 failed with a raw ``KeyError``
  from the eigendecomposition (and a ``LinearPushforward`` from the LU factorization).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

EPS32 = float(np.finfo(np.float32).eps)


def _ref(w, means, variances, x, a, s):
    """float64 ``(log p, score, denoise)`` of ``sum_k w_k N(a m_k, diag(a^2 var_k + s^2))``."""
    w, M, V, x = (np.asarray(z, np.float64) for z in (w, means, variances, x))
    v = a * a * V + s * s
    r = x[None, :] - a * M
    lg = np.log(w) - 0.5 * (np.sum(r * r / v, -1) + np.sum(np.log(v), -1)
                            + M.shape[1] * math.log(2 * math.pi))
    mx = lg.max()
    lse = mx + math.log(np.exp(lg - mx).sum())
    resp = np.exp(lg - lse)
    score = -(resp[:, None] * r / v).sum(0)
    den = (resp[:, None] * (M + a * V * r / v)).sum(0)
    return lse, score, den


def _score_tol(w, means, variances, x, a, s, C=8.0):
    """Backward-stable score tolerance (as in tests/test_properties.py, diagonal components):
    ``C eps (sum_k r_k (|s_k| + rho / v_k + |s_k - s| tau_k) + |s|)`` with
    ``rho = |x| + a max|m|`` and ``tau_k = Q_k + 2 sqrt(Q_k) rho / sqrt(v_k) + d (1 + max|log v|)
    + |log w_k|``: what perturbing ``x``, the means and the variances by ``eps`` relative does."""
    w, M, V, x = (np.asarray(z, np.float64) for z in (w, means, variances, x))
    d = M.shape[1]
    v = a * a * V + s * s
    r = x[None, :] - a * M
    Q = np.sum(r * r / v, -1)
    lg = np.log(w) - 0.5 * (Q + np.sum(np.log(v), -1))
    resp = np.exp(lg - lg.max())
    resp /= resp.sum()
    sk = -r / v
    sbar = resp @ sk
    rho = np.linalg.norm(x) + a * np.linalg.norm(M, axis=1).max()
    vmin = v.min(1)
    tau = Q + 2 * np.sqrt(Q) * rho / np.sqrt(vmin) + d * (1 + np.abs(np.log(v)).max(1)) + np.abs(
        np.log(w))
    ds = np.linalg.norm(sk - sbar, axis=1)
    return C * EPS32 * (np.sum(resp * (np.linalg.norm(sk, axis=1) + rho / vmin + ds * tau))
                        + np.linalg.norm(sbar))


def _mixture(means, variances, weights=None, covariance=None):
    means = np.asarray(means, np.float32)
    V = np.asarray(variances, np.float32) * np.ones_like(means)
    w = np.full(len(means), 1.0 / len(means), np.float32) if weights is None else weights
    covs = np.stack([np.diag(v) for v in V])
    kw = {} if covariance is None else {"covariance": covariance}
    return cj.GaussianMixture(w, means, covs, **kw), w, means, V


def test_issue_reproducer_score_at_offset_3000():
    """The issue's example: true score [0.0200, -0.3]; the old fast path gave [-0.0621, -0.3]."""
    s = cj.VPSchedule()
    m = jnp.array([[3000.0, 0], [3002.0, 0]])
    c = jnp.stack([jnp.eye(2)] * 2)
    mix = cj.GaussianMixture(jnp.array([0.5, 0.5]), m, c)
    x = jnp.array([3000.6, 0.3])
    got = np.asarray(cj.diffuse(mix, s).score(x, 0.0))
    assert got.dtype == np.float32
    _, ref, _ = _ref([0.5, 0.5], np.asarray(m), np.ones((2, 2)), np.asarray(x), 1.0, 0.0)
    np.testing.assert_allclose(got, [0.0200, -0.3], atol=5e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["iso", "diag"])
def test_score_at_offset_1000_and_every_method(kind):
    """Offset 1000: the old relative score error was 27 %; now a few float32 roundings of the
    offset-free problem (a per-model reference point), for score, log_prob, denoise."""
    var = [1.0, 1.0] if kind == "iso" else [1.0, 0.5]
    mix, w, M, V = _mixture([[1000.0, 0.0], [1002.0, 0.0]], var)
    sched = cj.VPSchedule()
    p = cj.diffuse(mix, sched)
    x = np.array([1000.6, 0.3], np.float32)
    for t in (0.0, 1e-3, 0.1):
        a, s = float(sched.alpha(jnp.float32(t))), float(sched.sigma(jnp.float32(t)))
        lp, sc, dn = _ref(w, M, V, x, a, s)
        got = np.asarray(p.score(x, t), np.float64)
        assert np.linalg.norm(got - sc) <= 1e-4 * np.linalg.norm(sc), (t, got, sc)
        assert abs(float(p.log_prob(x, t)) - lp) <= 1e-5 * (1.0 + abs(lp)), t
        # denoise ~ 1000: relative float32 accuracy
        np.testing.assert_allclose(np.asarray(p.denoise(x, t)), dn, rtol=16 * EPS32, atol=1e-4)
    assert mix.covariance == kind


@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("kind", ["iso", "diag"])
def test_log_prob_means_1e4_apart_variance_1e_2(d, kind):
    """Means 1e4 apart, variance 1e-2: the old log_prob was off by hundreds of nats. d = 2 takes
    the difference form, d = 16 the anchored form (the expansion is not within its floor)."""
    M = np.zeros((2, d), np.float32)
    M[1, 0] = 1e4
    var = np.full((2, d), 1e-2, np.float32)
    if kind == "diag":
        var[:, 1] = 2e-2
    mix, w, M, V = _mixture(M, var)
    sched = cj.VPSchedule()
    rng = np.random.default_rng(0)
    for t in (0.0, 1e-4):
        a, s = float(sched.alpha(jnp.float32(t))), float(sched.sigma(jnp.float32(t)))
        for k in (0, 1):
            x = (a * M[k] + 0.1 * rng.normal(size=d)).astype(np.float32)
            lp, sc, _ = _ref(w, M, V, x, a, s)
            got = float(cj.diffuse(mix, sched).log_prob(x, t))
            # backward-stable level: |dQ| ~ 2 sqrt(Q) eps |x| / sqrt(v) ~ 1e-2 nats here
            assert abs(got - lp) <= 2e-2, (t, k, got, lp)
            full = cj.GaussianMixture(mix.weights, mix.means, mix.covs, covariance="full")
            assert abs(got - float(cj.diffuse(full, sched).log_prob(x, t))) <= 2e-2
            gs = np.asarray(cj.diffuse(mix, sched).score(x, t), np.float64)
            assert np.linalg.norm(gs - sc) <= _score_tol(w, M, V, x, a, s), (t, k, gs, sc)


@pytest.mark.parametrize("d", [2, 16])
def test_score_columns_far_from_origin(d):
    """The particle-minor path of cj.sample(..., layout="columns") had the same expansion."""
    rng = np.random.default_rng(d)
    M = 1e4 + rng.normal(size=(3, d))
    M[1] = M[0] + rng.normal(size=d) / math.sqrt(d)  # two overlapping components ...
    M[2, 0] += 1e4  # ... and one far away: spread / scale ~ 1e4
    M = M.astype(np.float32)
    mix, w, M, V = _mixture(M, [[1.0], [0.5], [1e-2]])
    sched = cj.VPSchedule()
    p = cj.diffuse(mix, sched)
    assert p.columns_native
    t = 1e-3
    a, s = float(sched.alpha(jnp.float32(t))), float(sched.sigma(jnp.float32(t)))
    X = np.stack([a * M[k] + rng.normal(size=d) for k in (0, 1, 2, 0)]).astype(np.float32)
    got = np.asarray(p.score_columns(jnp.asarray(X.T), t), np.float64).T
    for x, g in zip(X, got):
        _, sc, _ = _ref(w, M, V, x, a, s)
        # the old expanded logits lost eps |x|^2 / v ~ 10 nats: responsibilities were noise
        assert np.linalg.norm(g - sc) <= _score_tol(w, M, V, x, a, s), (g, sc)


def test_sample_columns_equals_rows_far_from_origin(key):
    """Same key, same samples in both layouts, for a mixture far from the origin."""
    mix, *_ = _mixture([[3000.0, 0.0], [3002.0, 1.0]], [[1.0], [0.5]])
    sched = cj.VPSchedule()
    p = cj.diffuse(mix, sched)
    kw = {"method": "euler_maruyama", "steps": 20, "denoise_final": False}
    rows = cj.sample(key, p, sched, (64, 2), layout="rows", **kw)
    cols = cj.sample(key, p, sched, (64, 2), layout="columns", **kw)
    np.testing.assert_allclose(np.asarray(cols), np.asarray(rows), rtol=0, atol=1e-2)


def test_log_prob_and_score_far_from_origin_metropolis():
    """annealed_mala / annealed_hmc accept with log_prob_and_score: log-density differences of
    nearby points far from the origin must be accurate (the old ones were rounding noise)."""
    mix, w, M, V = _mixture([[1e4, -1e4, 5e3], [1e4 + 3.0, -1e4, 5e3]], [[1.0], [0.7]])
    sched = cj.VESchedule()
    p = cj.diffuse(mix, sched)
    t = 0.05
    a, s = float(sched.alpha(jnp.float32(t))), float(sched.sigma(jnp.float32(t)))
    x1 = np.array([1e4 + 0.5, -1e4 + 0.25, 5e3 - 0.5], np.float32)
    x2 = np.array([1e4 + 1.0, -1e4 + 0.5, 5e3 - 0.25], np.float32)
    (l1, s1), (l2, s2) = p.log_prob_and_score(x1, t), p.log_prob_and_score(x2, t)
    r1, r2 = _ref(w, M, V, x1, a, s), _ref(w, M, V, x2, a, s)
    # the log acceptance ratio's target part, to a few float32 roundings of |x| |score|
    dref = r1[0] - r2[0]
    assert abs((float(l1) - float(l2)) - dref) <= 1e-2 * max(1.0, abs(dref)), (l1, l2, dref)
    for got, ref in ((s1, r1[1]), (s2, r2[1])):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(float(l1), r1[0], rtol=1e-6, atol=2e-3)


LOW = [(jnp.float16, 2.0**-10), (jnp.bfloat16, 2.0**-7)]


@pytest.mark.parametrize("dtype,eps", LOW)
def test_low_precision_gaussian_and_full_mixture(dtype, eps):
    """float16 / bfloat16: the eigendecomposition runs in float32 (it raised KeyError)."""
    cov = np.array([[2.0, 0.3], [0.3, 1.0]], np.float32)
    mean = np.array([1.0, -0.5], np.float32)
    g32 = cj.Gaussian(mean, cov)
    g = cj.Gaussian(jnp.asarray(mean, dtype), jnp.asarray(cov, dtype))
    m32 = cj.GaussianMixture(np.array([0.4, 0.6], np.float32), np.stack([mean, -mean]),
                             np.stack([cov, 0.5 * cov]))
    m = cj.GaussianMixture(jnp.asarray(m32.weights, dtype), jnp.asarray(m32.means, dtype),
                           jnp.asarray(m32.covs, dtype))
    assert m.covariance == "full" and m.eigvals.dtype == dtype
    sched = cj.VPSchedule()
    x = np.array([0.7, 0.2], np.float32)
    for lo, hi in ((g, g32), (m, m32)):
        assert lo.dtype == dtype
        plo, phi = cj.diffuse(lo, sched), cj.diffuse(hi, sched)
        for t in (0.0, 0.3):
            xl = jnp.asarray(x, dtype)
            lp, sc = plo.log_prob(xl, t), plo.score(xl, t)
            assert lp.dtype == dtype and sc.dtype == dtype
            assert bool(jnp.isfinite(lp)) and bool(jnp.all(jnp.isfinite(sc)))
            lref, sref = float(phi.log_prob(x, t)), np.asarray(phi.score(x, t))
            assert abs(float(lp) - lref) <= 16 * eps * (1.0 + abs(lref)), (t, lp, lref)
            np.testing.assert_allclose(np.asarray(sc, np.float32), sref, rtol=16 * eps,
                                       atol=16 * eps * (1.0 + np.abs(sref).max()))
        assert bool(jnp.isfinite(lo.log_prob(jnp.asarray(x, dtype))))


@pytest.mark.parametrize("dtype,eps", LOW)
def test_low_precision_pushforward(dtype, eps):
    """LinearPushforward: the LU factorization and solves run in float32 (they raised)."""
    A = np.array([[1.0, 0.5], [0.0, 1.0]], np.float32)
    base32 = cj.Product((cj.Gaussian(np.zeros(1, np.float32), np.eye(1, dtype=np.float32)),
                         cj.Gaussian(np.ones(1, np.float32), 2 * np.eye(1, dtype=np.float32))),
                        ((0,), (1,)))
    base = jax.tree.map(lambda v: v.astype(dtype), base32)
    for b, cast in ((base32, np.float32), (base, dtype)):
        pf = cj.LinearPushforward(b, jnp.asarray(A, cast))
        x = jnp.asarray([0.3, 0.2], cast)
        out = pf.log_prob(x), pf.score(x)
        if cast is np.float32:
            ref = out
            continue
        assert out[0].dtype == dtype and out[1].dtype == dtype
        assert abs(float(out[0]) - float(ref[0])) <= 16 * eps * (1 + abs(float(ref[0])))
        np.testing.assert_allclose(np.asarray(out[1], np.float32), np.asarray(ref[1]),
                                   rtol=16 * eps, atol=16 * eps)
