"""Calibration of the verdicts, measured: the family-wise false-positive rate (FPR) of
``projective()``, ``same_law()`` and the zoo's decision rule on EXACT samples of a composition,
vectorized over many null data sets (one jitted, vmapped statistic; no per-trial Python loop);
the power of the decision rule against a 10 % variance error; and (slow) the floors recomputed
from the samplers' exact laws.

Binomial design (stated once, computed in ``_binomial_design``): ``T = 500`` null trials at level
``a = 0.05``. The test fails when more than ``c`` trials reject, with ``c`` the 0.99 quantile of
``Bin(T, a)`` (so a correctly calibrated procedure fails this test with probability <= 1 %).
A procedure whose true level is ``2 a = 0.10`` exceeds ``c`` with probability 0.973 (the
binomial tail ``P(Bin(500, 0.10) > c)``, asserted below), so miscalibration by a factor 2 is
caught with probability 0.97. The level is a parameter of the procedures; ``a = 0.05`` is used
because 500 trials resolve ``a`` from ``2 a`` there (at ``a = 0.01`` that would take ~2000).
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as ss

import composition_jax as cj
from composition_jax import zoo
from composition_jax.verify import _laws
from composition_jax.verify.projective import _block_tests

sl = importlib.import_module("composition_jax.verify.same_law")

T, A, N = 500, 0.05, 2000


def _binomial_design(trials=T, level=A):
    c = int(ss.binom.ppf(0.99, trials, level))
    power_2a = float(ss.binom.sf(c, trials, 2 * level))
    return c, power_2a


def _fc_case():
    """The disjoint-masks tuple (FC, Gaussian): C[p] exact, blocks {0} and {1}."""
    bg = zoo._common.gaussian([0.0, 0.0], [4.0, 4.0])
    p1, p2 = zoo._common.gaussian([-2.0, 0.0], [1.0, 4.0]), zoo._common.gaussian([0.0, 2.0],
                                                                                 [4.0, 1.0])
    return cj.composed_distribution(bg, [p1, p2]), [p1, p2], [[0], [1]]


def test_binomial_design_has_power_against_twice_the_level():
    c, power = _binomial_design()
    assert ss.binom.sf(c, T, A) <= 0.01
    assert power >= 0.97, power


@pytest.fixture(scope="module")
def null_arrays():
    """p-values and effect sizes of the block tests (projective) and of same_law's components
    on T exact samples of C[p], n = 2000 each, in one vmapped, jitted call per procedure."""
    comp, conds, blocks = _fc_case()
    margs = [c.marginal(b) for c, b in zip(conds, blocks)]

    def block_arrays(key):
        kx, kt = jax.random.split(key)
        x = comp.sample(kx, N)
        ps, es, names = [], [], []
        for j, (b, tg) in enumerate(zip(blocks, margs)):
            for name, r in _block_tests(jax.random.fold_in(kt, j), x[:, np.asarray(b)], tg,
                                        two_sample_n=300, num_permutations=99, mmd=True,
                                        sw=False):
                ps.append(r.p_value)
                es.append(r.effect_size)
                names.append(r.effect_name)
        return jnp.stack(ps), jnp.stack(es)

    keys = jax.random.split(jax.random.key(20251), T)
    p_blk, e_blk = jax.jit(jax.vmap(block_arrays))(keys)
    names = ["max_ks_D", "mahalanobis_mean_error", "relative_cov_error"] * 2
    x0 = comp.sample(jax.random.key(0), N)
    comp_names, fn = sl.same_law_arrays(x0, comp, alpha=A, two_sample_n=100,
                                        num_permutations=99)

    def joint(key):
        kx, kt = jax.random.split(key)
        return fn(kt, comp.sample(kx, N))

    _, p_sl, e_sl = jax.jit(jax.vmap(joint))(jax.random.split(jax.random.key(20252), T))
    return (np.asarray(p_blk), np.asarray(e_blk), names, np.asarray(p_sl), np.asarray(e_sl),
            comp_names)


def test_projective_family_wise_fpr(null_arrays):
    """projective(): Bonferroni over its 6 tests (KS, mean chi2, covariance z per 1-D block)."""
    p_blk = null_arrays[0]
    m = p_blk.shape[1]
    assert m == 6
    rejections = int(np.sum(np.any(p_blk < A / m, axis=1)))
    c, _ = _binomial_design()
    assert rejections <= c, (rejections, c)


def test_same_law_family_wise_fpr(null_arrays):
    """same_law(): Holm over MMD, energy (permutation), mean chi2 and Wald covariance."""
    p_sl = null_arrays[3]
    rej, _ = jax.vmap(lambda p: sl.holm(p, A))(jnp.asarray(p_sl))
    rejections = int(np.sum(np.any(np.asarray(rej), axis=1)))
    c, _ = _binomial_design()
    assert rejections <= c, (rejections, c)
    # each asymptotic component on its own is close to uniform (KS against U(0, 1))
    for j, name in enumerate(null_arrays[5]):
        if name in ("mean", "cov"):
            assert ss.kstest(p_sl[:, j], "uniform").pvalue > 1e-3, name


def test_decision_rule_family_wise_fpr(null_arrays):
    """The zoo's rule (projective AND same_law rejections that exceed their floors): its
    FPR is at most that of the union of the two procedures."""
    p_blk, e_blk, names, p_sl, e_sl, comp_names = null_arrays
    m = p_blk.shape[1]
    floors_blk = np.asarray([zoo.EFFECT_FLOORS[nm] for nm in names])
    mat_blk = np.any((p_blk < A / m) & (e_blk > floors_blk[None]), axis=1)
    rej, _ = jax.vmap(lambda p: sl.holm(p, A))(jnp.asarray(p_sl))
    floors_sl = np.asarray([zoo.EFFECT_FLOORS[sl._EFFECT_NAMES[c]] for c in comp_names])
    mat_sl = np.any(np.asarray(rej) & (e_sl > floors_sl[None]), axis=1)
    c, _ = _binomial_design(level=2 * A)  # two procedures, each at level A
    assert int(np.sum(mat_blk | mat_sl)) <= c


@pytest.mark.parametrize("scale", [1.1, 0.9])
def test_decision_rule_flags_ten_percent_variance_error(key, scale):
    """Exact samples of C[p] with every variance scaled by 1.1 (or 0.9) are materially
    rejected at the paper-size n = 10000 (Config.for_mode("full").n): the covariance z-score
    is 0.1 / sqrt(2 / n) ~ 7 and the relative covariance error 0.1 > floor 0.06."""
    comp, conds, blocks = _fc_case()
    n = zoo.Config.for_mode("full").n
    x = comp.sample(key, n)
    x = comp.mean[None] + (x - comp.mean[None]) * np.sqrt(scale)
    rep = cj.verify.projective(x, conds, blocks, key=key)
    assert zoo.material_rejections(rep), str(rep)
    jr = cj.verify.same_law(x, comp, key=key, two_sample_n=300, num_permutations=399)
    assert zoo.rules.material_joint(jr), str(jr)


def test_floors_table():
    rows = zoo.rules.floors()
    assert {r["effect"] for r in rows} == set(zoo.EFFECT_FLOORS)
    for r in rows:
        assert r["bias"] <= r["floor"] <= 2.6 * r["bias"], r


@pytest.mark.slow
@pytest.mark.x64
def test_floor_biases_recomputed_exactly():
    """The stored biases are the largest exact biases (sampler_law) of euler_maruyama and
    ode_heun on the zoo's affine FC cases at 200 and 1000 steps."""
    from composition_jax.zoo import eq17, feature

    sch = cj.VPSchedule()
    cases = []
    g = zoo._common.gaussian
    pb, p1 = g([0.0], [1.0]), g([2.0], [0.25])
    cases.append((cj.compose(cj.diffuse(pb, sch), [cj.diffuse(p1, sch)]),
                  cj.composed_distribution(pb, [p1]), np.eye(1)))
    zb, zc = feature._z_tuple()
    for w in ("rotation", "block_diagonal"):
        Amat = feature.TRANSFORMS[w]
        Ai = np.linalg.inv(Amat)
        b, cs = zoo._common.push(Ai, zb), [zoo._common.push(Ai, c) for c in zc]
        cases.append((cj.compose(cj.diffuse(b, sch), [cj.diffuse(c, sch) for c in cs]),
                      cj.composed_distribution(b, cs), Amat))
    conds, empty, _ = eq17.eq17_laws(0.05)
    S = [0, 2, 4, 6]
    cases.append((eq17.eq17_model(sch, conds, empty, "empty", S),
                  cj.composed_distribution(empty, [conds[i] for i in S]), np.eye(8)))
    worst = {"mahalanobis_mean_error": 0.0, "relative_cov_error": 0.0}
    for model, tgt, Amat in cases:
        mu, S0 = _laws.moments(tgt)
        mu, S0 = Amat @ np.asarray(mu), Amat @ np.asarray(S0) @ Amat.T
        for steps in (200, 1000):
            for m in ("euler_maruyama", "ode_heun"):
                mm, cc = cj.verify.sampler_law(model, sch, method=m, steps=steps, t_min=1e-4,
                                               grid="log_snr", dim=len(mu), as_moments=True)
                mm, cc = Amat @ np.asarray(mm), Amat @ np.asarray(cc) @ Amat.T
                w = np.linalg.solve(np.linalg.cholesky(S0), mm - mu)
                worst["mahalanobis_mean_error"] = max(worst["mahalanobis_mean_error"],
                                                      float(np.sqrt(w @ w)))
                worst["relative_cov_error"] = max(worst["relative_cov_error"], float(
                    np.linalg.norm(cc - S0) / np.linalg.norm(S0)))
    for k, v in worst.items():
        stored = zoo.rules.FLOOR_BIAS[k][0]
        assert abs(v - stored) <= 0.05 * stored + 1e-4, (k, v, stored)
        assert zoo.EFFECT_FLOORS[k] <= 2.2 * v
