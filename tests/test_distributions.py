"""Sampling, marginals, pushforward cases and JAX transformations of the exact distributions.

Oracle: ``tests/_distribution_cases.py`` (each law as an explicit Gaussian mixture, built from the
same NumPy parameters independently of the library). Monte Carlo tolerances are 5 standard errors
computed from the exact law: ``sqrt(C_ii / n)`` for means and ``sqrt(Var[(x_i-mu_i)(x_j-mu_j)] / n)``
(exact mixture fourth moments) for covariances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _distribution_cases import (
    FAMILY_NAMES,
    SCHEDULES,
    make_case,
    marginal_comps,
    oracle_alpha_sigma,
    oracle_denoise,
    oracle_log_prob,
    oracle_moments,
    oracle_score,
)
from scipy.stats import multivariate_normal, ortho_group

import composition_jax as cj

N = 4000
K_SE = 5.0


def _check_moments(xs, comps, a, s):
    xs = np.asarray(xs, np.float64)
    n = xs.shape[0]
    mu, cov, var_prod = oracle_moments(comps, a, s)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xs.mean(0) - mu) <= K_SE * se_mean), (xs.mean(0), mu, se_mean)
    emp = np.cov(xs, rowvar=False).reshape(cov.shape)
    # + sqrt(C_ii C_jj)/n: the O(1/n) effect of estimating the mean
    tol = K_SE * np.sqrt(var_prod / n) + np.sqrt(np.outer(np.diag(cov), np.diag(cov))) / n
    assert np.all(np.abs(emp - cov) <= tol), (emp, cov, tol)


def _draw(p, key, n, t, m=0):
    """Clean and noised samples in one compiled call (eager sampling compiles op by op, and each
    compile of the threefry sampler is costly on CPU); with ``m`` also the m-sample draws."""

    @jax.jit
    def f(p, key, t):
        k0, k1 = jax.random.split(key)
        out = (p.dist.sample(k0, n), p.sample(k1, n, t))
        if m:
            out += (p.dist.sample(k0, m), p.sample(k1, m, t))
        return out

    return f(p, key, t)


@pytest.mark.parametrize("i,family", list(enumerate(FAMILY_NAMES)))
def test_sample_moments_and_prefix_consistency(key, i, family):
    """Clean samples (t = 0) and exact noised samples at t = 0.3 (schedules in rotation) have the
    exact mean and covariance; sample i depends only on (key, i), so the first m of n samples
    equal m samples drawn with the same key (clean and noised)."""
    case = make_case(family, seed=100 + i)
    sched = list(SCHEDULES)[i % 3]
    p = cj.diffuse(case.dist, SCHEDULES[sched]())
    # prefix check once per sampling code path (pushforwards all sample through their base)
    prefix = family in ("gaussian", "mixture", "empirical", "product", "pf_orth_product")
    out = _draw(p, key, N, 0.3, m=5 if prefix else 0)
    x0, xt = out[:2]
    for x in (x0, xt):
        assert x.shape == (N, case.dim) and x.dtype == jnp.float32
    _check_moments(x0, case.comps, 1.0, 0.0)
    _check_moments(xt, case.comps, *oracle_alpha_sigma(sched, 0.3))
    if prefix:
        # allclose at ulp level: XLA may block a batched matvec differently for different n
        np.testing.assert_allclose(x0[:5], out[2], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xt[:5], out[3], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("t", [1e-4, 0.5, 1.0])
def test_sample_moments_sweep(key, family, sched, t):
    case = make_case(family, seed=7)
    p = cj.diffuse(case.dist, SCHEDULES[sched]())
    x0, xt = _draw(p, key, 40_000, t)
    _check_moments(x0, case.comps, 1.0, 0.0)
    _check_moments(xt, case.comps, *oracle_alpha_sigma(sched, t))


# --- marginals --------------------------------------------------------------------------------
MARGINAL_IDX = {"product": [4, 0, 2], "pf_blockdiag_product": [3, 1], "pf_orth_product": None}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_marginals_match_exact_marginal_law(family):
    case = make_case(family, seed=11)
    idx = MARGINAL_IDX.get(family, [2, 0])
    if idx is None:  # orthogonal mix of a non-Gaussian product: no closed-form marginal
        with pytest.raises(NotImplementedError, match="has no closed form"):
            case.dist.marginal([0])
        return
    comps = marginal_comps(case.comps, idx)
    m = case.dist.marginal(idx)
    assert m.dim == len(idx)
    pm = cj.diffuse(case.dist, cj.VESchedule()).marginal(idx)
    rng = np.random.default_rng(0)
    ts = np.array([1e-4, 0.3])
    xs = rng.normal(size=(2, len(idx))) * 0.5
    fn = jax.jit(jax.vmap(lambda x, t: (pm.log_prob(x, t), pm.score(x, t), pm.denoise(x, t))))
    lps, scs, dns = fn(jnp.asarray(xs, jnp.float32), jnp.asarray(ts, jnp.float32))
    for x, t, lp_, sc_, dn_ in zip(xs, ts, lps, scs, dns):
        a, s = oracle_alpha_sigma("ve", t)
        lp = oracle_log_prob(comps, a, s, x)
        assert abs(float(lp_) - lp) <= 3e-4 * (abs(lp) + len(idx))
        sc = oracle_score(comps, a, s, x)
        np.testing.assert_allclose(sc_, sc, rtol=3e-4, atol=3e-4 * (1 + np.abs(sc).max()))
        np.testing.assert_allclose(dn_, oracle_denoise(comps, a, s, x), rtol=3e-4, atol=3e-4)
    assert isinstance(m, type(pm.dist))


def test_product_marginal_within_one_block_is_the_factor_marginal():
    case = make_case("product", seed=1)
    blk = case.dist.blocks[0]
    m = case.dist.marginal(list(blk))
    assert m is case.dist.factors[0]
    m2 = case.dist.marginal([blk[1]])
    assert isinstance(m2, cj.Gaussian)
    np.testing.assert_allclose(m2.cov, case.dist.factors[0].cov[1:, 1:])


# --- LinearPushforward ------------------------------------------------------------------------
def test_pushforward_closed_forms_have_the_right_type():
    assert isinstance(make_case("pf_gaussian").dist.closed, cj.Gaussian)
    assert isinstance(make_case("pf_mixture").dist.closed, cj.GaussianMixture)
    assert isinstance(make_case("pf_empirical").dist.closed, cj.Empirical)
    bd = make_case("pf_blockdiag_product").dist
    # blockwise: a Product of per-block pushforwards (cost = sum of the blocks' costs)
    assert bd.block_diagonal and isinstance(bd.closed, cj.Product)
    assert bd.closed.blocks == bd.base.blocks
    orth = make_case("pf_orth_product").dist
    assert orth.orthogonal and orth.closed is None and not orth.block_diagonal


def test_orthogonal_path_equals_closed_form_gaussian():
    """Orthogonal pushforward of a Product of Gaussians (generic orthogonal path) == the Gaussian
    N(Q m + b, Q C Q^T) built directly (closed form)."""
    rng = np.random.default_rng(5)
    m1, m2 = rng.normal(size=2), rng.normal(size=3)
    c1 = np.array([[1.0, 0.3], [0.3, 0.7]])
    c2 = np.diag([0.5, 1.5, 1.0])
    base = cj.Product((cj.Gaussian(m1, c1), cj.Gaussian(m2, c2)), ([3, 0], [1, 4, 2]))
    q = ortho_group.rvs(5, random_state=rng)
    b = rng.normal(size=5)
    pf = cj.LinearPushforward(base, jnp.asarray(q, jnp.float32), jnp.asarray(b, jnp.float32))
    assert pf.orthogonal and pf.closed is None
    mean, cov = np.zeros(5), np.zeros((5, 5))
    mean[[3, 0]], mean[[1, 4, 2]] = m1, m2
    cov[np.ix_([3, 0], [3, 0])], cov[np.ix_([1, 4, 2], [1, 4, 2])] = c1, c2
    ref = cj.Gaussian(jnp.asarray(q @ mean + b, jnp.float32), jnp.asarray(q @ cov @ q.T, jnp.float32))
    ts = jnp.array([1e-4, 0.3, 1.0], jnp.float32)
    xs = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)

    @jax.jit
    def ev(q, xs, ts):
        return jax.vmap(lambda x, t: (q.log_prob(x, t), q.score(x, t), q.denoise(x, t)))(xs, ts)

    for sched in (cj.VPSchedule(), cj.CosineVPSchedule(), cj.VESchedule()):
        got, want = ev(cj.diffuse(pf, sched), xs, ts), ev(cj.diffuse(ref, sched), xs, ts)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_pushforward_of_empirical_is_the_empirical_of_the_images():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(4, 3)).astype(np.float32)
    a = (rng.normal(size=(3, 3)) + 2 * np.eye(3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    pf = cj.LinearPushforward(cj.Empirical(pts), a, b)
    ref = cj.Empirical(pts @ a.T + b[None, :])
    p, r = cj.diffuse(pf, cj.VPSchedule()), cj.diffuse(ref, cj.VPSchedule())
    x = jnp.asarray(rng.normal(size=3), jnp.float32)
    np.testing.assert_allclose(p.score(x, 0.2), r.score(x, 0.2), rtol=1e-5)
    np.testing.assert_allclose(p.log_prob(x, 0.2), r.log_prob(x, 0.2), rtol=1e-5)


def test_non_closed_pushforward_at_t0_is_change_of_variables():
    """A general matrix over a Product has no noised closed form, but its t = 0 density does:
    log N(A m + b, A C A^T) for a product of Gaussians (scipy)."""
    rng = np.random.default_rng(9)
    base = cj.Product((cj.Gaussian(np.zeros(1), np.eye(1) * 2.0), cj.Gaussian(np.ones(1), np.eye(1))), ([1], [0]))
    a = np.array([[1.0, 0.5], [-0.3, 2.0]])
    b = np.array([0.2, -0.4])
    pf = cj.LinearPushforward(base, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert pf.closed is None and not pf.orthogonal
    mean, cov = a @ np.array([1.0, 0.0]) + b, a @ np.diag([1.0, 2.0]) @ a.T
    x = rng.normal(size=2)
    np.testing.assert_allclose(pf.log_prob(jnp.asarray(x, jnp.float32)), multivariate_normal(mean, cov).logpdf(x), rtol=1e-5)
    np.testing.assert_allclose(pf.score(jnp.asarray(x, jnp.float32)), -np.linalg.solve(cov, x - mean), rtol=1e-4, atol=1e-5)


# --- pytrees and transformations --------------------------------------------------------------
def test_no_retrace_when_distribution_parameters_change():
    traces = []

    @jax.jit
    def f(p, x, t):
        traces.append(1)
        return p.score(x, t)

    sched = cj.VPSchedule()
    x = jnp.ones(2)
    for shift in (0.0, 1.0, 2.0):
        g = cj.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[shift, 0.0], [0.0, 1.0]]), jnp.stack([jnp.eye(2)] * 2))
        f(cj.diffuse(g, sched), x, 0.5)
        f(cj.diffuse(g, cj.VPSchedule(beta_max=10.0 + shift)), x, 0.7)
    assert len(traces) == 1


def test_vmap_over_distribution_parameters():
    """Distributions are pytrees: vmap over a batch of means equals a loop."""
    means = jnp.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    cov = jnp.array([[1.0, 0.2], [0.2, 0.5]])
    g0 = cj.Gaussian(means[0], cov)
    batched = jax.tree.map(lambda leaf: jnp.stack([leaf] * 3), g0)
    batched = cj._pytree.replace(batched, mean=means)
    x = jnp.array([0.3, -0.2])
    out = jax.vmap(lambda g: cj.diffuse(g, cj.VPSchedule()).score(x, 0.4))(batched)
    loop = jnp.stack([cj.diffuse(cj.Gaussian(m, cov), cj.VPSchedule()).score(x, 0.4) for m in means])
    np.testing.assert_allclose(out, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.x64
def test_x64_float32_input_gives_float32_output(key):
    case = make_case("mixture", seed=4, dtype=jnp.float64)
    p = cj.diffuse(case.dist, cj.CosineVPSchedule())
    x32 = jnp.ones(3, jnp.float32)
    for fn in (p.log_prob, p.score, p.denoise):
        assert fn(x32, 0.5).dtype == jnp.float32
        assert fn(x32.astype(jnp.float64), 0.5).dtype == jnp.float64
    assert p.sample(key, 3, 0.5).dtype == jnp.float64
    p32 = cj.diffuse(make_case("product", seed=4, dtype=jnp.float32).dist, cj.VESchedule())
    assert p32.sample(key, 3, 0.5).dtype == jnp.float32
    assert p32.score(jnp.ones(5, jnp.float32), 0.5).dtype == jnp.float32
