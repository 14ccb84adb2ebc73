"""Bad input gets a clear error at construction / trace time naming the argument and the shapes
(issue 2, item 4), for distributions, diffuse() and schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

I2 = np.eye(2, dtype=np.float32)
G2 = lambda: cj.Gaussian(jnp.zeros(2), jnp.eye(2))


# --- Gaussian ---------------------------------------------------------------------------------
def test_gaussian_mean_cov_shape_mismatch():
    with pytest.raises(ValueError, match=r"cov must have shape \(3, 3\) to match mean \(3,\), got \(2, 2\)"):
        cj.Gaussian(jnp.zeros(3), jnp.eye(2))


def test_gaussian_non_square_cov():
    with pytest.raises(ValueError, match=r"cov must be a square .*got shape \(2, 3\)"):
        cj.Gaussian(jnp.zeros(2), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cov must be a square .*got shape \(2,\)"):
        cj.Gaussian(jnp.zeros(2), jnp.ones(2))


def test_gaussian_mean_rank():
    with pytest.raises(ValueError, match=r"mean must have 1 dimension\(s\), got shape \(1, 2\)"):
        cj.Gaussian(jnp.zeros((1, 2)), jnp.eye(2))


def test_gaussian_non_symmetric_cov():
    with pytest.raises(ValueError, match=r"cov must be symmetric; max \|C - C\^T\| = 0\.5"):
        cj.Gaussian(jnp.zeros(2), jnp.array([[1.0, 0.5], [0.0, 1.0]]))


@pytest.mark.parametrize("cov", [[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
def test_gaussian_non_pd_cov(cov):
    with pytest.raises(ValueError, match=r"cov must be positive definite; smallest eigenvalue"):
        cj.Gaussian(jnp.zeros(2), jnp.array(cov))


def test_gaussian_non_finite_cov():
    with pytest.raises(ValueError, match="cov has non-finite entries"):
        cj.Gaussian(jnp.zeros(2), jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]]))


@pytest.mark.parametrize("bad", [np.zeros(2, np.complex64), np.zeros(2, bool)])
def test_gaussian_non_floating_dtypes(bad):
    with pytest.raises(TypeError, match=r"mean must be a real floating array, got dtype"):
        cj.Gaussian(bad, I2)
    with pytest.raises(TypeError, match=r"cov must be a real floating array, got dtype"):
        cj.Gaussian(np.zeros(2, np.float32), np.eye(2).astype(bad.dtype))


def test_integer_parameters_become_floats():
    g = cj.Gaussian(np.zeros(2, np.int32), np.eye(2, dtype=np.int32))
    assert jnp.issubdtype(g.mean.dtype, jnp.floating) and jnp.issubdtype(g.cov.dtype, jnp.floating)


# --- GaussianMixture --------------------------------------------------------------------------
MS = np.zeros((2, 2), np.float32)
CS = np.stack([I2, I2])


def test_mixture_negative_weights():
    with pytest.raises(ValueError, match=r"weights must be finite and non-negative, got \[1\.5, -0\.5\]"):
        cj.GaussianMixture(jnp.array([1.5, -0.5]), MS, CS)


def test_mixture_weights_not_summing_to_one():
    with pytest.raises(ValueError, match=r"weights must sum to 1, got sum 0\.9"):
        cj.GaussianMixture(jnp.array([0.5, 0.4]), MS, CS)


def test_mixture_weights_wrong_length():
    with pytest.raises(ValueError, match=r"weights has shape \(3,\) but means has 2 components"):
        cj.GaussianMixture(jnp.array([0.2, 0.3, 0.5]), MS, CS)


def test_mixture_cov_shapes():
    with pytest.raises(ValueError, match=r"covs must have shape \(2, 2, 2\) to match means"):
        cj.GaussianMixture(jnp.array([0.5, 0.5]), MS, np.stack([np.eye(3)] * 2))
    with pytest.raises(ValueError, match=r"covs must hold square .*got shape \(2, 2, 3\)"):
        cj.GaussianMixture(jnp.array([0.5, 0.5]), MS, np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"covs must have 3 dimension\(s\), got shape \(2, 2\)"):
        cj.GaussianMixture(jnp.array([0.5, 0.5]), MS, I2)


def test_mixture_non_pd_and_non_symmetric_component():
    bad = np.stack([I2, np.array([[1.0, 3.0], [3.0, 1.0]], np.float32)])
    with pytest.raises(ValueError, match="covs must be positive definite"):
        cj.GaussianMixture(jnp.array([0.5, 0.5]), MS, bad)
    asym = np.stack([I2, np.array([[1.0, 0.3], [0.0, 1.0]], np.float32)])
    with pytest.raises(ValueError, match="covs must be symmetric"):
        cj.GaussianMixture(jnp.array([0.5, 0.5]), MS, asym)


# --- Empirical --------------------------------------------------------------------------------
def test_empirical_errors():
    pts = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\) to match points \(3, 2\), got \(2,\)"):
        cj.Empirical(pts, np.array([0.5, 0.5], np.float32))
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        cj.Empirical(pts, np.array([1.5, -0.25, -0.25], np.float32))
    with pytest.raises(ValueError, match=r"weights must sum to 1, got sum 0\.6"):
        cj.Empirical(pts, np.array([0.2, 0.2, 0.2], np.float32))
    with pytest.raises(ValueError, match=r"points must have 2 dimension\(s\), got shape \(3,\)"):
        cj.Empirical(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"points must hold at least one point"):
        cj.Empirical(np.zeros((0, 2), np.float32))
    with pytest.raises(TypeError, match="points must be a real floating array"):
        cj.Empirical(np.zeros((3, 2), np.complex64))


# --- Product ----------------------------------------------------------------------------------
def _g1():
    return cj.Gaussian(jnp.zeros(1), jnp.eye(1))


def test_product_blocks_overlap():
    with pytest.raises(ValueError, match=r"blocks overlap on coordinates \[1\]"):
        cj.Product((G2(), G2()), ([0, 1], [1, 2]))


def test_product_blocks_missing():
    with pytest.raises(ValueError, match=r"blocks do not cover range\(4\); missing coordinates \[2\]"):
        cj.Product((G2(), _g1()), ([0, 1], [3]))


def test_product_blocks_out_of_range():
    with pytest.raises(ValueError, match=r"blocks has indices out of range\(3\): \[-1\]"):
        cj.Product((G2(), _g1()), ([0, 1], [-1]))


def test_product_factor_block_mismatch():
    with pytest.raises(ValueError, match=r"factors\[1\] has dim 2 but blocks\[1\] has 1 indices"):
        cj.Product((G2(), G2()), ([0, 1], [2]))
    with pytest.raises(ValueError, match="got 2 factors but 1 blocks"):
        cj.Product((G2(), G2()), ([0, 1, 2, 3],))
    with pytest.raises(TypeError, match=r"factors\[0\] must be a Distribution"):
        cj.Product((jnp.zeros(2),), ([0, 1],))
    with pytest.raises(ValueError, match=r"blocks\[0\] must be a 1-D integer array"):
        cj.Product((G2(),), ([0.0, 1.0],))
    with pytest.raises(ValueError, match=r"blocks\[1\] is empty"):
        cj.Product((G2(), G2()), ([0, 1], []))


# --- LinearPushforward ------------------------------------------------------------------------
def test_pushforward_singular_matrix():
    with pytest.raises(ValueError, match=r"matrix must be invertible; shape \(2, 2\), smallest singular value"):
        cj.LinearPushforward(G2(), jnp.array([[1.0, 2.0], [2.0, 4.0]]))


def test_pushforward_shapes():
    with pytest.raises(ValueError, match=r"matrix must have shape \(2, 2\) to match base.dim=2, got \(3, 3\)"):
        cj.LinearPushforward(G2(), jnp.eye(3))
    with pytest.raises(ValueError, match=r"shift must have shape \(2,\), got \(3,\)"):
        cj.LinearPushforward(G2(), jnp.eye(2), jnp.zeros(3))
    with pytest.raises(TypeError, match="base must be a Distribution"):
        cj.LinearPushforward(jnp.zeros(2), jnp.eye(2))


def test_pushforward_non_orthogonal_over_product_not_block_diagonal():
    base = cj.Product((cj.Empirical(jnp.array([[0.0], [1.0]])), _g1()), ([0], [1]))
    pf = cj.LinearPushforward(base, jnp.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(NotImplementedError, match=r"LinearPushforward of a Product by a non-orthogonal matrix .*no closed-form noised density"):
        cj.diffuse(pf, cj.VPSchedule())
    with pytest.raises(NotImplementedError, match="marginal of a LinearPushforward of a Product"):
        pf.marginal([0])
    # nested: a block-diagonal pushforward whose block is such a pushforward also refuses
    outer = cj.Product((pf, _g1()), ([0, 1], [2]))
    with pytest.raises(NotImplementedError, match="no closed-form noised density"):
        cj.diffuse(outer, cj.VESchedule())


# --- diffuse / times / points -----------------------------------------------------------------
@pytest.fixture
def p():
    return cj.diffuse(cj.Gaussian(jnp.zeros(3), jnp.eye(3)), cj.VPSchedule())


@pytest.mark.parametrize("t", [1.5, -0.1, float("nan")])
def test_t_outside_unit_interval(p, key, t):
    x = jnp.zeros(3)
    for fn in (p.log_prob, p.score, p.denoise, p.log_prob_and_score):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got"):
            fn(x, t)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        p.sample(key, 2, t)
    for sched in (cj.VPSchedule(), cj.CosineVPSchedule(), cj.VESchedule()):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            sched.alpha(t)


def test_t_not_scalar_or_not_real(p):
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match=r"t must be a scalar \(vmap over times if needed\), got shape \(2,\)"):
        p.score(x, jnp.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="t must be a real scalar, got bool"):
        p.score(x, True)
    with pytest.raises(TypeError, match="t must be a real floating array, got dtype complex64"):
        p.score(x, jnp.array(0.5 + 0.0j, jnp.complex64))


def test_t_traced_is_not_value_checked(p):
    # under jit the value is unknown: no error, and the result is the same as eager
    x = jnp.ones(3)
    np.testing.assert_allclose(jax.jit(p.score)(x, 0.3), p.score(x, 0.3), rtol=1e-6)


def test_x_wrong_shape_or_dtype(p):
    with pytest.raises(ValueError, match=r"x must have shape \(3,\), got \(2,\)"):
        p.score(jnp.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\), got \(4, 3\) \(one sample; use jax.vmap"):
        p.log_prob(jnp.zeros((4, 3)), 0.5)
    with pytest.raises(TypeError, match="x must be a real floating array, got dtype complex64"):
        p.denoise(jnp.zeros(3, jnp.complex64), 0.5)
    with pytest.raises(TypeError, match="x must be a real floating array, got dtype bool"):
        p.dist.log_prob(jnp.zeros(3, bool))


def test_sample_bad_n(p, key):
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        p.sample(key, -1, 0.5)
    with pytest.raises(ValueError, match="n must be a non-negative int, got 2.0"):
        p.dist.sample(key, 2.0)


def test_diffuse_type_errors():
    with pytest.raises(TypeError, match="dist must be a Distribution, got ArrayImpl"):
        cj.diffuse(jnp.zeros(2), cj.VPSchedule())
    with pytest.raises(TypeError, match="schedule must be a Schedule, got str"):
        cj.diffuse(G2(), "vp")


def test_marginal_bad_indices():
    g = cj.Gaussian(jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match=r"indices must lie in range\(3\), got \[0, 3\]"):
        g.marginal([0, 3])
    with pytest.raises(ValueError, match=r"indices has repeated entries: \[1, 1\]"):
        g.marginal([1, 1])
    with pytest.raises(ValueError, match="indices must not be empty"):
        g.marginal([])


# --- schedules --------------------------------------------------------------------------------
def test_schedule_parameter_errors():
    with pytest.raises(ValueError, match=r"VPSchedule needs 0 < beta_min <= beta_max, got -1\.0, 20\.0"):
        cj.VPSchedule(beta_min=-1.0)
    with pytest.raises(ValueError, match=r"VPSchedule needs 0 < beta_min <= beta_max, got 5\.0, 1\.0"):
        cj.VPSchedule(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match=r"VESchedule needs 0 < sigma_min < sigma_max, got 2\.0, 1\.0"):
        cj.VESchedule(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"CosineVPSchedule needs s >= 0, got -0\.1"):
        cj.CosineVPSchedule(s=-0.1)
    with pytest.raises(ValueError, match=r"t_max must lie in \(0, 1\], got 1\.5"):
        cj.CosineVPSchedule(t_max=1.5)
    with pytest.raises(ValueError, match=r"beta_min must be a scalar, got shape \(2,\)"):
        cj.VPSchedule(beta_min=jnp.ones(2))
    with pytest.raises(TypeError, match="sigma_max must be a real floating array, got dtype complex"):
        cj.VESchedule(sigma_max=1.0 + 2.0j)
