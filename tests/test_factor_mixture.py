"""FactorMixture: a product of many small Gaussian mixtures as one vectorized law, against a
float64 NumPy oracle and the equivalent ``Product`` of ``GaussianMixture`` factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import composition_jax as cj
from composition_jax.verify import _laws

KINDS = ("full", "diag", "iso")
TIMES = (0.0, 1e-4, 1e-2, 0.3, 1.0)
SCH = cj.VPSchedule()


def _params(rng, B, K, b, kind, vmin=0.05):
    w = rng.dirichlet(np.ones(K), size=B)
    means = rng.normal(size=(B, K, b)) * 2.0
    if kind == "full":
        A = rng.normal(size=(B, K, b, b)) * 0.5
        covs = A @ np.swapaxes(A, -1, -2) + vmin * np.eye(b)
    elif kind == "diag":
        covs = rng.uniform(vmin, 3 * vmin, size=(B, K, b))
    else:
        covs = rng.uniform(vmin, 3 * vmin, size=(B, K))
    return w, means, covs


def _full(covs, kind, b):
    if kind == "full":
        return covs
    if kind == "diag":
        return covs[..., :, None] * np.eye(b)
    return covs[..., None, None] * np.eye(b)


def _oracle(w, means, covs, kind, x, a, s):
    """float64 NumPy: log p_t, score and E[x_0 | x_t] of the noised product (inverse-based,
    independent of the library's eigen form)."""
    B, K, b = means.shape
    S = _full(np.asarray(covs, np.float64), kind, b)
    X = np.asarray(x, np.float64).reshape(B, b)
    lp, score, den = 0.0, np.zeros((B, b)), np.zeros((B, b))
    for i in range(B):
        logits, sc, dn = np.zeros(K), np.zeros((K, b)), np.zeros((K, b))
        for k in range(K):
            C = a * a * S[i, k] + s * s * np.eye(b)
            r = X[i] - a * means[i, k]
            sol = np.linalg.solve(C, r)
            _, logdet = np.linalg.slogdet(C)
            with np.errstate(divide="ignore"):
                logits[k] = np.log(w[i, k]) - 0.5 * (r @ sol + logdet + b * np.log(2 * np.pi))
            sc[k] = -sol
            dn[k] = means[i, k] + a * S[i, k] @ sol
        z = logsumexp(logits)
        resp = np.exp(logits - z)
        lp += z
        score[i], den[i] = resp @ sc, resp @ dn
    return lp, score.reshape(-1), den.reshape(-1)


def _points(key, fm, t, n=4):
    x = cj.diffuse(fm, SCH).sample(key, n, t)
    return jnp.concatenate([x, x[:1] + 6.0])  # and one point far from every component


def _evaluate(model):
    """One compiled function: ``(log_prob, score, denoise, log_prob_and_score)`` of ``model``
    at a batch of points and a (traced) time."""
    def one(x, t):
        return (model.log_prob(x, t), model.score(x, t), model.denoise(x, t),
                *model.log_prob_and_score(x, t))

    return jax.jit(jax.vmap(one, (0, None)))


@pytest.mark.parametrize("kind, shape", [(k, (6, 3, 2)) for k in KINDS]
                         + [("full", (2, 5, 10)), ("diag", (40, 2, 1))])
def test_matches_float64_oracle(key, kind, shape):
    """log_prob, score and denoiser of diffuse(FactorMixture) equal the float64 closed form at
    every t, including t = 0, tiny t and a point far from all components (small and large
    blocks, few and many components)."""
    rng = np.random.default_rng(1)
    w, means, covs = _params(rng, *shape, kind)
    fm = cj.FactorMixture(w.astype(np.float32), means.astype(np.float32),
                          covs.astype(np.float32))
    assert fm.covariance == kind and fm.dim == shape[0] * shape[2]
    one, half = jnp.float32(1.0), jnp.float32(0.5)
    assert fm.responsibilities(jnp.zeros(fm.dim, jnp.float32), one, half).shape == shape[:2]
    ev = _evaluate(cj.diffuse(fm, SCH))
    for j, t in enumerate(TIMES):
        a, s = float(SCH.alpha(t)), float(SCH.sigma(t))
        xs = _points(jax.random.fold_in(key, j), fm, t)
        lps, scs, dns, lps2, scs2 = ev(xs, jnp.float32(t))
        for x, lp_, sc_, dn_ in zip(xs, lps, scs, dns):
            lp, sc, dn = _oracle(w, means, covs, kind, x, a, s)
            np.testing.assert_allclose(lp_, lp, rtol=2e-5, atol=2e-4)
            sc_scale = 1.0 + np.max(np.abs(sc))
            np.testing.assert_allclose(sc_, sc, rtol=1e-4, atol=1e-5 * sc_scale)
            np.testing.assert_allclose(dn_, dn, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(lps2, lps, rtol=1e-6)
        np.testing.assert_allclose(scs2, scs, rtol=1e-6)
    # the clean law's own log_prob (t = 0)
    x = xs[0]
    np.testing.assert_allclose(fm.log_prob(x), _oracle(w, means, covs, kind, x, 1.0, 0.0)[0],
                               rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_product_of_gaussian_mixtures(key, kind):
    """The same law as Product([GaussianMixture(w_i, m_i, S_i)], blocks) at several t."""
    rng = np.random.default_rng(2)
    w, means, covs = _params(rng, 5, 2, 3, kind, vmin=0.2)
    fm = cj.FactorMixture(w.astype(np.float32), means.astype(np.float32),
                          covs.astype(np.float32))
    ref_dist = fm.as_product()
    assert isinstance(ref_dist, cj.Product) and ref_dist.blocks == fm.blocks
    ev, ev_ref = _evaluate(cj.diffuse(fm, SCH)), _evaluate(cj.diffuse(ref_dist, SCH))
    for j, t in enumerate((1e-3, 0.1, 0.5, 0.9)):
        x = _points(jax.random.fold_in(key, j), fm, t)
        # the reference's diagonal fast path loses ~eps |x|^2 / v in its logits
        tol = 64 * float(jnp.finfo(jnp.float32).eps) * (1.0 + float(jnp.max(x * x)) / 0.2)
        for what, f, g in zip(("log_prob", "score", "denoise"), ev(x, jnp.float32(t)),
                              ev_ref(x, jnp.float32(t))):
            scale = float(jnp.max(jnp.abs(g))) + 1.0
            assert float(jnp.max(jnp.abs(f - g))) <= tol * scale, (what, t)


def test_score_is_grad_log_prob(key):
    rng = np.random.default_rng(3)
    fm = cj.FactorMixture(*(a.astype(np.float32) for a in _params(rng, 4, 3, 2, "full")))
    p = cj.diffuse(fm, SCH)
    both = jax.jit(jax.vmap(lambda x, t: (p.score(x, t), jax.grad(p.log_prob)(x, t)),
                            (0, None)))
    for t in (1e-3, 0.2, 0.8):
        s, g = both(_points(key, fm, t, n=3), jnp.float32(t))
        np.testing.assert_allclose(s, g, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_moments(key, kind):
    """Sample means and second moments within 5 sigma / sqrt(n) of the exact ones; blocks are
    independent (cross-block covariances within 5 sigma_i sigma_j / sqrt(n) of 0)."""
    rng = np.random.default_rng(4)
    fm = cj.FactorMixture(*(a.astype(np.float32) for a in _params(rng, 4, 3, 2, kind)))
    n = 20_000
    x = np.asarray(fm.sample(key, n), np.float64)
    assert x.shape == (n, 8)
    mu, cov = (np.asarray(a, np.float64) for a in fm.moments())
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(x.mean(0) - mu) < 5 * sd / np.sqrt(n))
    xc = x - mu
    prods = xc[:, :, None] * xc[:, None, :]  # (n, d, d): unbiased for cov with known mean
    se = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov) < 5 * se + 1e-6)
    same_block = np.kron(np.eye(4), np.ones((2, 2))).astype(bool)
    assert np.all(cov[~same_block] == 0)
    # the first m samples of n are the m samples drawn with the same key
    np.testing.assert_array_equal(fm.sample(key, 5), fm.sample(key, n)[:5])
    assert fm.sample(key, 0).shape == (0, 8)


def test_moments_equal_the_product_moments():
    rng = np.random.default_rng(5)
    fm = cj.FactorMixture(*(a.astype(np.float32) for a in _params(rng, 3, 2, 2, "full")))
    mu, cov = fm.moments()
    mu_r, cov_r = _laws.moments(fm.as_product())
    np.testing.assert_allclose(mu, mu_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, cov_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("idx, cls", [([2, 3, 6, 7], cj.FactorMixture),
                                      ([7, 0, 4], cj.FactorMixture),
                                      ([1, 0], cj.FactorMixture),
                                      ([0, 1, 2], cj.Product),
                                      ([0, 2, 1], cj.Product)])
def test_marginal(key, kind, idx, cls):
    """Marginals are FactorMixtures when the coordinates come block by block with equal counts,
    Products otherwise; both equal the Product reference's marginal."""
    rng = np.random.default_rng(6)
    fm = cj.FactorMixture(*(a.astype(np.float32) for a in _params(rng, 4, 3, 2, kind)))
    m = fm.marginal(idx)
    assert isinstance(m, cls) and m.dim == len(idx)
    if cls is cj.FactorMixture:
        assert m.covariance == kind
    ref = fm.as_product().marginal(idx)
    xs = jax.random.normal(key, (3, len(idx)))
    np.testing.assert_allclose(jax.jit(jax.vmap(m.log_prob))(xs),
                               jax.jit(jax.vmap(ref.log_prob))(xs), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="range"):
        fm.marginal([8])


def test_zero_weight_components_are_exact(key):
    """A block padded with a zero-weight component is the smaller mixture (log w = -inf)."""
    rng = np.random.default_rng(7)
    w, means, covs = _params(rng, 3, 2, 1, "iso")
    wp = np.concatenate([w, np.zeros((3, 1))], 1)
    mp = np.concatenate([means, np.full((3, 1, 1), 50.0)], 1)
    cp = np.concatenate([covs, np.ones((3, 1))], 1)
    small = cj.diffuse(cj.FactorMixture(w, means, covs), SCH)
    padded = cj.diffuse(cj.FactorMixture(wp, mp, cp), SCH)
    ev_p, ev_s = _evaluate(padded), _evaluate(small)
    xs = jax.random.normal(key, (3, 3))
    for t in (0.0, 0.3):
        for a, b in zip(ev_p(xs, jnp.float32(t)), ev_s(xs, jnp.float32(t))):
            assert bool(jnp.all(jnp.isfinite(a)))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _num_eqns(fn, *args) -> int:
    def count(jaxpr):
        n = len(jaxpr.eqns)
        for e in jaxpr.eqns:
            for p in e.params.values():
                if hasattr(p, "jaxpr"):
                    n += count(p.jaxpr)
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_graph_size_does_not_grow_with_the_number_of_blocks():
    """The traced score is the same few operations for 4 or 256 blocks (what makes it compile
    fast), while a Product of GaussianMixtures traces one sub-graph per block."""
    sizes = {}
    for B in (4, 256):
        rng = np.random.default_rng(B)
        fm = cj.FactorMixture(*(a.astype(np.float32) for a in _params(rng, B, 2, 1, "iso")))
        x = jnp.zeros((B,), jnp.float32)
        t = jnp.float32(0.3)
        sizes[B] = (_num_eqns(cj.diffuse(fm, SCH).score, x, t),
                    _num_eqns(cj.diffuse(fm.as_product(), SCH).score, x, t) if B == 4 else None)
    assert sizes[4][0] == sizes[256][0]
    assert sizes[4][1] > 4 * sizes[4][0] / 2  # the Product graph is already larger at B = 4


def test_transformations_and_dtype(key, float_dtype):
    """jit == eager, vmap == loop, dtype in = dtype out, no retrace for new parameter values."""
    rng = np.random.default_rng(8)
    w, means, covs = _params(rng, 3, 2, 2, "diag")
    fm = cj.FactorMixture(w.astype(float_dtype), means.astype(float_dtype),
                          covs.astype(float_dtype))
    xs = jax.random.normal(key, (4, 6), float_dtype)
    p = cj.diffuse(fm, SCH)
    traces = []

    @jax.jit
    def score(dist, x, t):
        traces.append(1)
        return cj.diffuse(dist, SCH).score(x, t)

    t = jnp.asarray(0.4, float_dtype)
    batched = jax.vmap(score, (None, 0, None))(fm, xs, t)
    loop = jnp.stack([p.score(x, t) for x in xs])
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-6)
    assert batched.dtype == float_dtype
    assert p.log_prob(xs[0], t).dtype == float_dtype
    fm2 = cj.FactorMixture(w[::-1].copy().astype(float_dtype), (means + 1).astype(float_dtype),
                           (2 * covs).astype(float_dtype))
    score(fm2, xs[0], t)
    score(fm, xs[0], t)
    assert len(traces) == 1  # one trace serves the vmapped call and both parameter sets


def test_validation_errors():
    w = np.full((2, 2), 0.5)
    m = np.zeros((2, 2, 1))
    with pytest.raises(ValueError, match="weights must have shape"):
        cj.FactorMixture(np.full((3, 2), 0.5), m, np.ones((2, 2)))
    with pytest.raises(ValueError, match="sum to 1"):
        cj.FactorMixture(np.array([[0.5, 0.5], [0.5, 0.6]]), m, np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        cj.FactorMixture(np.array([[1.5, -0.5], [0.5, 0.5]]), m, np.ones((2, 2)))
    with pytest.raises(ValueError, match="positive definite"):
        cj.FactorMixture(w, m, np.array([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"covs must have shape \(2, 2, 1\)"):
        cj.FactorMixture(w, m, np.ones((2, 2)), covariance="diag")
    with pytest.raises(ValueError, match="covariance must be"):
        cj.FactorMixture(w, m, np.ones((2, 2)), covariance="dense")
    with pytest.raises(ValueError, match="covs must have shape"):
        cj.FactorMixture(w, m, np.ones((2,)))
    with pytest.raises(ValueError, match="symmetric"):
        cj.FactorMixture(w, np.zeros((2, 2, 2)),
                         np.broadcast_to(np.array([[1.0, 0.5], [0.0, 1.0]]), (2, 2, 2, 2)))
    with pytest.raises(ValueError, match="means must have 3 dimension"):
        cj.FactorMixture(w, np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="factor index"):
        cj.FactorMixture(w, m, np.ones((2, 2))).factor(2)


@pytest.mark.x64
@pytest.mark.parametrize("kind", KINDS)
def test_matches_product_float64(key, kind):
    rng = np.random.default_rng(9)
    fm = cj.FactorMixture(*_params(rng, 5, 3, 2, kind))
    ev, ev_ref = _evaluate(cj.diffuse(fm, SCH)), _evaluate(cj.diffuse(fm.as_product(), SCH))
    for t in (1e-4, 0.3, 1.0):
        x = _points(key, fm, t)
        for a, b in zip(ev(x, jnp.float64(t)), ev_ref(x, jnp.float64(t))):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)
