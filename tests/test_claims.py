"""Claims of Bradley et al. (2025) and its follow-up (Bradley 2025, "Local mechanisms of
compositional generalization") that no other test file asserts directly:

* claim 26: reverse-diffusion samplers agree under Factorized Conditionals and disagree when it
  fails (the Bayes background of eq. (17), a sheared feature space), as a user diagnostic
  ``cj.verify.sampler_disagreement``, with the samplers' exact laws as the oracle;
* claim 27: a conditionally projective (CPC) mixture over grid "pixels" has local conditional
  scores (LCS): the score's Jacobian blocks outside ``M_j`` are exactly zero, also w.r.t. other
  conditioners; with a cross-block correlation ``rho`` the off-block norm grows with ``rho`` and
  shrinks with the noise level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.zoo import eq17, feature
from composition_jax.zoo._common import push

STEPS, T_MIN = 200, 1e-4
SAMPLERS = ("euler_maruyama", "ode_heun", "predictor_corrector")


def _feature_model(which):
    A = feature.TRANSFORMS[which]
    Ai = np.linalg.inv(A)
    zb, zc = feature._z_tuple()
    sch = cj.VPSchedule()
    bg, conds = push(Ai, zb), [push(Ai, c) for c in zc]
    return cj.compose(cj.diffuse(bg, sch), [cj.diffuse(c, sch) for c in conds]), sch, A


@pytest.mark.parametrize("which, fc_holds", [("rotation", True), ("shear", False)])
def test_claim26_exact_laws_disagree_iff_fc_fails(which, fc_holds):
    """Oracle: the EXACT output laws of Euler-Maruyama and Heun (sampler_law) for the same
    composed model, in z = A x. Rotation (FC after an orthogonal map): their means differ by less
    than the decision rule's mean floor 0.04 sd (discretization: 0.023 sd at 200 steps); shear
    (FC only after a non-orthogonal map, not a diffusion path): by more than 0.05 sd."""
    model, sch, A = _feature_model(which)
    laws = {m: cj.verify.sampler_law(model, sch, method=m, steps=STEPS, t_min=T_MIN,
                                     grid="log_snr", dim=2, as_moments=True)
            for m in ("euler_maruyama", "ode_heun")}
    (m1, c1), (m2, c2) = [(A @ np.asarray(m), A @ np.asarray(c) @ A.T) for m, c in laws.values()]
    diff_sd = np.abs(m1 - m2) / np.sqrt(0.5 * (np.diag(c1) + np.diag(c2)))
    if fc_holds:
        assert diff_sd.max() < 0.04, diff_sd
    else:
        assert diff_sd.max() > 0.05, diff_sd


@pytest.mark.parametrize("which, fc_holds", [("rotation", True), ("shear", False)])
def test_claim26_sampler_disagreement_feature(key, which, fc_holds):
    """The diagnostic on samples (n = 20000 per sampler): it flags the shear and not the
    rotation."""
    model, sch, _ = _feature_model(which)
    xs = {m: cj.sample(jax.random.fold_in(key, i), model, sch, (20000, 2), method=m,
                       steps=STEPS, t_min=T_MIN, grid="log_snr")
          for i, m in enumerate(SAMPLERS)}
    r = cj.verify.sampler_disagreement(xs)
    assert r["disagree"] is (not fc_holds), r["worst"]
    assert r["num_comparisons"] == 2 * 2 * 3


@pytest.mark.slow
@pytest.mark.parametrize("background, fc_holds", [("empty", True), ("bayes", False)])
def test_claim26_sampler_disagreement_eq17(key, background, fc_holds):
    """Eq. (17): SDE, ODE and predictor-corrector agree with the empty background (FC) and
    disagree with the Bayes background (SDE ~0.25 vs ODE ~0.27 on S, data std 0.05)."""
    sch = cj.VPSchedule()
    conds, empty, _ = eq17.eq17_laws(0.05)
    model = eq17.eq17_model(sch, conds, empty, background, [0, 2, 4, 6])
    xs = {m: cj.sample(jax.random.fold_in(key, i), model, sch, (4000, 8), method=m,
                       steps=STEPS, t_min=T_MIN, grid="log_snr")
          for i, m in enumerate(SAMPLERS)}
    r = cj.verify.sampler_disagreement(xs)
    assert r["disagree"] is (not fc_holds), r["worst"]


def test_sampler_disagreement_errors_and_null(key):
    x = jax.random.normal(key, (500, 3))
    with pytest.raises(ValueError, match="at least two"):
        cj.verify.sampler_disagreement({"a": x})
    with pytest.raises(ValueError, match="one dimension"):
        cj.verify.sampler_disagreement({"a": x, "b": x[:, :2]})
    y = jax.random.normal(jax.random.fold_in(key, 1), (500, 3))
    assert not cj.verify.sampler_disagreement({"a": x, "b": y})["disagree"]
    assert cj.verify.sampler_disagreement({"a": x, "b": y + 0.5})["disagree"]
    assert cj.verify.sampler_disagreement({"a": x, "b": 1.5 * y})["disagree"]


# ------------------------------------------------------------------------------- claim 27
BLOCKS = ((0, 1), (2, 3), (4, 5))  # M_1, M_2 (conditioned pixels) and M_b (background)


def _cpc_mixture(c, rho):
    """A CPC model over 6 "pixels": block j in {0, 1} is a 2-component mixture whose means are
    shifted by its conditioner c_j (along (1, 1)); the background block a 2-component mixture;
    the full law is the product (8 joint components), written as ONE GaussianMixture over R^6
    whose component covariances get a cross-block coupling rho (rho = 0: exactly CPC)."""
    base = jnp.asarray([[-1.0, 0.5], [1.0, -0.5]])
    comps = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    shift = [c[0], c[1], jnp.zeros(())]
    means = jnp.stack([jnp.concatenate([base[k[j]] + shift[j] for j in range(3)])
                       for k in comps])
    blk = jnp.asarray([[0.3, 0.1], [0.1, 0.2]])
    cov = jax.scipy.linalg.block_diag(blk, blk, blk)
    same = np.zeros((6, 6))
    for b in BLOCKS:
        same[np.ix_(b, b)] = 1.0
    cov = cov + rho * 0.2 * jnp.asarray(1.0 - same)
    w = jnp.asarray([0.3, 0.7])
    weights = jnp.stack([w[k[0]] * w[k[1]] * w[k[2]] for k in comps])
    return cj.GaussianMixture(weights, means, jnp.broadcast_to(cov, (8, 6, 6)))


def _jacobians(rho, t, x, c):
    sch = cj.VPSchedule()

    def score(x, c):
        return cj.diffuse(_cpc_mixture(c, rho), sch).score(x, jnp.asarray(t))

    return jax.jacfwd(score, 0)(x, c), jax.jacfwd(score, 1)(x, c)


def _off_block_norm(J):
    mask = np.ones((6, 6), bool)
    for b in BLOCKS:
        mask[np.ix_(b, b)] = False
    return float(jnp.sqrt(jnp.sum(jnp.where(jnp.asarray(mask), J, 0.0) ** 2)))


@pytest.mark.x64
def test_claim27_cpc_gives_local_scores_exactly(key):
    """rho = 0: for i in M_j, ds_i/dx_l = 0 for l outside M_j and ds_i/dc_l = 0 for l != j, at
    every t (float64: < 1e-12 against on-block entries of order 1)."""
    c = jnp.asarray([0.4, -0.3])
    xs = 1.5 * jax.random.normal(key, (5, 6), jnp.float64)
    for t in (0.05, 0.3, 0.8):
        for x in xs:
            Jx, Jc = _jacobians(0.0, t, x, c)
            assert _off_block_norm(Jx) < 1e-12
            assert float(jnp.max(jnp.abs(Jx))) > 1e-2
            # conditioner j moves only block j; the background block depends on neither
            assert float(jnp.max(jnp.abs(Jc[2:4, 0]))) < 1e-12
            assert float(jnp.max(jnp.abs(Jc[0:2, 1]))) < 1e-12
            assert float(jnp.max(jnp.abs(Jc[4:6, :]))) < 1e-12
            assert float(jnp.max(jnp.abs(Jc[0:2, 0]))) > 1e-3


@pytest.mark.x64
def test_claim27_approximate_locality_grows_with_rho_shrinks_with_noise(key):
    """With cross-block coupling rho, the mean off-block Jacobian norm (over points of the noised
    law) increases with rho at fixed t and decreases with t (sigma) at fixed rho."""
    c = jnp.asarray([0.4, -0.3])
    xs = jax.random.normal(key, (8, 6), jnp.float64)

    def avg(rho, t):
        return float(np.mean([_off_block_norm(_jacobians(rho, t, x, c)[0]) for x in xs]))

    t_grid = (0.05, 0.2, 0.5, 0.9)
    table = {rho: [avg(rho, t) for t in t_grid] for rho in (0.05, 0.1, 0.2)}
    for j in range(len(t_grid)):
        col = [table[r][j] for r in (0.05, 0.1, 0.2)]
        assert col[0] < col[1] < col[2], (t_grid[j], col)
    for rho, row in table.items():
        assert all(a > b for a, b in zip(row, row[1:])), (rho, row)
    assert table[0.05][0] > 1e3 * avg(0.0, 0.05) or avg(0.0, 0.05) < 1e-12
