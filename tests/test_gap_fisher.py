"""The Monte Carlo Fisher composition gap of mixture tuples (``cj.verify.composition_gap``):
the vectorised padded-mixture evaluation against a closed form and against each law's own
noised score on the same samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.distributions.base import cast_tree
from composition_jax.verify import gap as G

VP = cj.VPSchedule()
TS = np.array([0.1, 0.3])


def _paths(bg, conds, weights, key, n, generic=True):
    """(vectorised, per-law) Fisher paths of a tuple on the same key: the same samples (the
    per-law one only with ``generic``)."""
    comp = cast_tree(cj.composed_distribution(bg, conds, weights), jnp.float32)
    dt = comp.dtype
    inputs = tuple(cast_tree(p, dt) for p in [bg] + list(conds))
    w = G._check_weights(weights, len(conds), dt)
    t = jnp.asarray(TS, dt)
    a, s = jax.vmap(VP.alpha)(t), jax.vmap(VP.sigma)(t)
    groups = G._block_mixture_groups((comp,) + inputs, dt)
    new = G._fisher_path(key, comp, tuple(groups), w, a, s, n, 64)  # several chunks
    old = G._fisher_path_generic(key, comp, inputs, w, a, s, n) if generic else new
    return [tuple(np.asarray(v, np.float64) for v in r) for r in (new, old)]


def _shear_tuple():
    """A Gaussian tuple whose conditionals are FC in z = A x for the shear A (Section 7): a
    positive gap at intermediate t; full (non-diagonal) covariances in x."""
    Ai = np.linalg.inv(np.array([[1.0, 0.9], [0.0, 1.0]]))
    g = [cj.Gaussian(jnp.asarray(Ai @ m, jnp.float32), jnp.asarray(Ai @ np.diag(v) @ Ai.T,
                                                                    jnp.float32))
         for m, v in (([0.0, 0.0], [1.0, 1.0]), ([2.0, 0.0], [0.25, 1.0]),
                      ([0.0, 2.0], [1.0, 0.25]))]
    return g[0], g[1:]


def _exact_fisher(bg, conds, t):
    """Closed form for a Gaussian tuple (float64): both scores are affine, ``s_comp(x) =
    -P_t (x - mu_t)`` and ``s_sum(x) = h_t - Lam_t x``, so with ``D = Lam_t - P_t`` and
    ``e = P_t mu_t - h_t`` the divergence is ``E|D x + e|^2 = tr(D Sigma_t D^T) + |D mu_t + e|^2``
    under ``x ~ N(mu_t, Sigma_t)``."""
    a, s = float(VP.alpha(t)), float(VP.sigma(t))
    ms = [np.asarray(p.mean, np.float64) for p in [bg] + conds]
    Ss = [np.asarray(p.cov, np.float64) for p in [bg] + conds]
    coef = [1.0 - len(conds)] + [1.0] * len(conds)
    P0 = sum(c * np.linalg.inv(S) for c, S in zip(coef, Ss))
    Sig0 = np.linalg.inv(P0)
    mu0 = Sig0 @ sum(c * np.linalg.solve(S, m) for c, S, m in zip(coef, Ss, ms))
    St, mt = a * a * Sig0 + s * s * np.eye(2), a * mu0
    Pt = [np.linalg.inv(a * a * S + s * s * np.eye(2)) for S in Ss]
    Lam = sum(c * P for c, P in zip(coef, Pt))
    h = sum(c * P @ (a * m) for c, P, m in zip(coef, Pt, ms))
    D, e = Lam - np.linalg.inv(St), np.linalg.solve(St, mt) - h
    return np.trace(D @ St @ D.T) + np.sum((D @ mt + e) ** 2)


def test_fisher_path_matches_the_closed_form_gaussian_gap(key):
    """The Monte Carlo Fisher divergence of the shear tuple (non-diagonal covariances: the
    eigenvector path) within 4 standard errors of its closed form, at t = 0.1 and 0.3."""
    bg, conds = _shear_tuple()
    (m, se), _ = _paths(bg, conds, None, key, 2048, generic=False)
    exact = np.array([_exact_fisher(bg, conds, t) for t in TS])
    assert np.all(exact > 0.05)  # a material gap, not rounding
    assert np.all(np.abs(m - exact) < 4.0 * se), (m, se, exact)


@pytest.mark.slow
def test_vectorised_equals_per_law_scores_on_the_same_samples(key):
    """A non-FC mixture tuple (a 2-component mixture factor in a Product, and a weight-2
    mixture tilt, C[p] a mixture over pairs): the vectorised evaluation and each law's own
    ``_noised_score`` give the same estimate on the same samples, to float32 rounding
    (measured relative difference ~1e-5). Slow lane: it compiles the per-law path, ~10-20 s of
    CPU; the padded path is checked by default against float64 scores and a closed form."""
    s0 = 0.3
    pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    mix0 = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
                              jnp.stack([s0 * jnp.eye(1)] * 2))
    p1 = cj.Product((mix0, cj.Gaussian(jnp.zeros(1), jnp.eye(1))), ([0], [1]))
    p2 = cj.Gaussian(jnp.array([1.0, 0.0]), jnp.diag(jnp.array([0.5, 1.0])))
    tilt = cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, 0.0]]),
                              jnp.stack([jnp.array([[0.3, 0.1], [0.1, 0.5]]), 0.4 * jnp.eye(2)]))
    k1, k2 = jax.random.split(key)
    for (bg, conds, w), k in (((pb, [p1, p2], None), k1), ((pb, [tilt], jnp.array([2.0])), k2)):
        (m1, s1), (m0, s0_) = _paths(bg, conds, w, k, 256)
        assert np.all(m0 > 5 * s0_)  # a material gap
        np.testing.assert_allclose(m1, m0, rtol=1e-4)
        np.testing.assert_allclose(s1, s0_, rtol=1e-3)


def _np_mixture_score(x, a, s, w, m, C):
    """float64 oracle: ``sum_k r_k (a^2 C_k + s^2 I)^{-1} (a m_k - x)`` with ``r`` the posterior
    from the Gaussian log-densities (scipy)."""
    from scipy.stats import multivariate_normal

    d = x.shape[0]
    Ct = [a * a * Ck + s * s * np.eye(d) for Ck in C]
    lg = np.array([np.log(wk) + multivariate_normal(a * mk, Ck).logpdf(x)
                   for wk, mk, Ck in zip(w, m, Ct)])
    r = np.exp(lg - lg.max())
    r /= r.sum()
    return sum(rk * np.linalg.solve(Ck, a * mk - x) for rk, mk, Ck in zip(r, m, Ct))


def test_mixture_scores_match_a_float64_oracle():
    """The padded evaluation's noised scores of a 3-component full-covariance 3-D mixture and a
    Gaussian (padded to 3 components) equal the float64 closed form at random points and
    t in {0.05, 0.5} (relative error < 1e-4 of the score's norm)."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3, 3))
    C = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(3)
    w, m = np.array([0.2, 0.5, 0.3]), rng.normal(size=(3, 3))
    mix = cj.GaussianMixture(jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32),
                             jnp.asarray(C, jnp.float32))
    gauss = cj.Gaussian(jnp.asarray(m[0], jnp.float32), jnp.asarray(C[1], jnp.float32))
    ((_, *params),) = G._block_mixture_groups((mix, gauss), jnp.float32)
    laws = [(w, m, C), (np.ones(1), m[:1], C[1:2])]
    for t in (0.05, 0.5):
        a, s = float(VP.alpha(t)), float(VP.sigma(t))
        for x in rng.normal(size=(4, 3)) * 2.0:
            got = np.asarray(G._mixture_scores(jnp.asarray(x[None], jnp.float32), a, s,
                                               *params)[0], np.float64)
            for j, law in enumerate(laws):
                ref = _np_mixture_score(x, a, s, *law)
                assert np.linalg.norm(got[j] - ref) < 1e-4 * (1.0 + np.linalg.norm(ref)), (
                    t, j, got[j], ref)


def test_product_tuples_are_evaluated_blockwise():
    """Shared-block Product laws become one padded group per block size (absent components
    with log-weight -inf); a non-Product law makes the whole space one block."""
    blocks = ([0], [1, 2])
    g1 = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
    m1 = cj.GaussianMixture(jnp.array([0.25, 0.75]), jnp.array([[-1.0], [1.0]]),
                            jnp.stack([0.5 * jnp.eye(1)] * 2))
    g2 = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    pa, pb = cj.Product((g1, g2), blocks), cj.Product((m1, g2), blocks)
    groups = G._block_mixture_groups((pa, pb), jnp.float32)
    assert [tuple(g[0].shape) for g in groups] == [(1, 1), (1, 2)]  # (blocks, block size)
    _, logw, means, _, _ = groups[0]
    assert logw.shape == (1, 2, 2) and means.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(np.exp(np.asarray(logw[0, 1])), [0.25, 0.75], rtol=1e-6)
    assert np.asarray(logw[0, 0, 0]) == 0.0 and np.isneginf(np.asarray(logw[0, 0, 1]))
    whole = G._block_mixture_groups((pa, cj.Gaussian(jnp.zeros(3), jnp.eye(3))), jnp.float32)
    assert [tuple(g[0].shape) for g in whole] == [(1, 3)]


def test_fisher_gap_fc_product_tuple_is_rounding(key):
    """A 3-D analogue of eq. (18)'s clutter tuple (products of 1-D two-component mixtures, each
    conditional forcing one coordinate to be an object; FC holds): the gap is float32 rounding
    at every t (Theorem 5.3: the noised composition is a diffusion path)."""
    var = jnp.full((1, 1), 0.05 ** 2)
    clutter = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.0], [1.0]]),
                                 jnp.stack([var, var]))
    active = cj.Gaussian(jnp.ones((1,)), var)
    blocks = ([0], [1], [2])
    pb = cj.Product((clutter,) * 3, blocks)
    conds = [cj.Product((active, clutter, clutter), blocks),
             cj.Product((clutter, clutter, active), blocks)]
    g = cj.verify.composition_gap(pb, conds, VP, TS, key=key, n=100)
    assert g.kind == "fisher_mc"
    assert np.max(g.divergence) < 1e-6
