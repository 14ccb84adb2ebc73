"""Score locality (cj.verify.score_locality): block norms of the score Jacobian.

Oracles: for Gaussian compositions the Jacobian is the constant ``-Λ_t`` (the composed precision
of the noised laws, in closed form); eq. (17) with the empty background satisfies Factorized
Conditionals, so its composed score is block-local (off-diagonal blocks exactly 0); with the
Bayes background it is not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.verify.locality import score_locality
from composition_jax.zoo.eq17 import S_DEFAULT, eq17_laws, eq17_model

SCH = cj.VPSchedule()


def test_gaussian_composition_matches_closed_form_precision():
    """3-D: J = -Λ_t with Λ_t = sum_j e_j (α² C_j + σ² I)^{-1}; blocks {0, 1} and {2}."""
    c1 = np.array([[1.0, 0.3, 0.2], [0.3, 0.5, 0.1], [0.2, 0.1, 0.8]])
    c2 = np.array([[0.4, 0.0, -0.1], [0.0, 0.9, 0.2], [-0.1, 0.2, 0.6]])
    cb = np.eye(3)
    gs = [cj.Gaussian(jnp.zeros(3), jnp.asarray(c)) for c in (cb, c1, c2)]
    w = np.array([1.5, 0.8])
    model = cj.compose(cj.diffuse(gs[0], SCH), [cj.diffuse(g, SCH) for g in gs[1:]],
                       weights=jnp.asarray(w))
    blocks = [[0, 1], [2]]
    ts = np.array([0.1, 0.4])
    x = jax.random.normal(jax.random.key(0), (5, 3))
    r = score_locality(model, x, jnp.asarray(ts), blocks)
    assert r.block_norms.shape == (2, 2, 2) and r.off_block_ratio.shape == (2,)
    for k, t in enumerate(ts):
        a2, s2 = float(SCH.alpha(t)) ** 2, float(SCH.sigma2(t))
        es = [1.0 - w.sum(), *w]
        lam = sum(e * np.linalg.inv(a2 * c + s2 * np.eye(3)) for e, c in zip(es, (cb, c1, c2)))
        ref = np.array([[np.linalg.norm(lam[np.ix_(a, b)]) for b in blocks] for a in blocks])
        np.testing.assert_allclose(np.asarray(r.block_norms[k]), ref, rtol=1e-4)
        off = np.sqrt(2 * np.sum(lam[np.ix_([0, 1], [2])] ** 2) / np.sum(lam * lam))
        np.testing.assert_allclose(float(r.off_block_ratio[k]), off, rtol=1e-4)
        assert off > 0.05
    one = score_locality(model, x, float(ts[1]), blocks)  # one time: a scalar report
    assert one.block_norms.shape == (2, 2) and one.off_block_ratio.shape == ()
    np.testing.assert_allclose(np.asarray(one.block_norms), np.asarray(r.block_norms[1]),
                               rtol=1e-6)


def test_eq17_empty_is_block_local_and_bayes_is_not():
    conds, empty, _ = eq17_laws(0.05)
    x = 0.5 + 0.5 * jax.random.normal(jax.random.key(1), (32, 8))
    ts = jnp.array([0.05, 0.2, 0.5])
    blocks = [[i] for i in range(8)]
    r_e = score_locality(eq17_model(SCH, conds, empty, "empty", list(S_DEFAULT)), x, ts, blocks)
    r_b = score_locality(eq17_model(SCH, conds, empty, "bayes", list(S_DEFAULT)), x, ts, blocks)
    diag_e = np.diagonal(np.asarray(r_e.block_norms), axis1=1, axis2=2)
    assert np.all(diag_e > 1.0)
    # float rounding only (measured: exactly 0)
    assert np.all(np.asarray(r_e.off_block_ratio) < 1e-6), r_e.off_block_ratio
    assert np.all(np.asarray(r_b.off_block_ratio) > 1e-2), r_b.off_block_ratio  # 0.66 .. 0.01


def test_errors_name_the_argument():
    p = cj.diffuse(cj.Gaussian(jnp.zeros(3), jnp.eye(3)), SCH)
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="overlap"):
        score_locality(p, x, 0.1, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="outside range"):
        score_locality(p, x, 0.1, [[0], [3]])
    with pytest.raises(ValueError, match=r"x must be"):
        score_locality(p, jnp.zeros(3), 0.1, [[0], [1]])
    with pytest.raises(TypeError, match="blocks"):
        score_locality(p, x, 0.1, "01")
    with pytest.raises(ValueError, match="t must be"):
        score_locality(p, x, jnp.zeros((2, 2)), [[0], [1]])


def test_off_block_ratio_se_matches_the_spread_over_particle_sets():
    """The delta-method standard error against the spread of the ratio over 40 independent
    particle sets (n = 32 each): the sample SD of 40 ratios has relative SE 1 / sqrt(78) = 0.11,
    so SD / mean(SE) must lie within 1 +- 3 x 0.11 (widened to [0.6, 1.5] for the delta
    method's O(1/n) bias); an SE that ignored the particles' spread would be far off."""
    conds, empty, _ = eq17_laws(0.05)
    model = eq17_model(SCH, conds, empty, "bayes", list(S_DEFAULT))
    blocks = [[i] for i in range(8)]
    keys = jax.random.split(jax.random.key(5), 40)
    reps = [score_locality(model, 0.5 + 0.5 * jax.random.normal(k, (32, 8)), 0.2, blocks)
            for k in keys]
    ratios = np.array([float(r.off_block_ratio) for r in reps])
    ses = np.array([float(r.off_block_ratio_se) for r in reps])
    assert np.all(ses > 0)
    assert 0.6 < ratios.std(ddof=1) / ses.mean() < 1.5, (ratios.std(ddof=1), ses.mean())
    r_e = score_locality(eq17_model(SCH, conds, empty, "empty", list(S_DEFAULT)),
                         0.5 + 0.5 * jax.random.normal(keys[0], (32, 8)), 0.2, blocks)
    assert float(r_e.off_block_ratio_se) == 0.0  # R = 0 exactly: no spread to report
