"""The samplers' counter-based noise (composition_jax.samplers.noise): batch-size invariance,
jit invariance, and its law (moments, KS against the exact CDF, independence) with tolerances
from the sample size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from composition_jax.samplers import noise
from composition_jax.samplers.noise import draw_normals, draw_uniforms

# jitted whole (one compilation per size and shape; op by op, the unrolled hash compiles each of
# its ~100 operations for every size); one eager call per shape checks eager == jit
_normals = jax.jit(noise.normals, static_argnums=(1, 2, 3))
_uniforms = jax.jit(noise.uniforms, static_argnums=(1, 2))


@pytest.mark.parametrize("shape", [(), (1,), (2, 5), (3, 4)])
def test_rows_depend_only_on_key_and_index(key, shape):
    big = _normals(key, 1000, shape, jnp.float32)
    small = _normals(key, 37, shape, jnp.float32)
    eager = noise.normals(key, 37, shape, jnp.float32)
    assert big.shape == (1000, *shape) and big.dtype == jnp.float32
    np.testing.assert_array_equal(big[:37], small)
    np.testing.assert_array_equal(small, eager)
    u_big, u_small = _uniforms(key, 500, shape), _uniforms(key, 3, shape)
    np.testing.assert_array_equal(u_big[:3], u_small)
    other = _normals(jax.random.fold_in(key, 1), 37, shape, jnp.float32)
    assert not np.any(np.asarray(other) == np.asarray(small))


def test_driver_draws_are_prefix_consistent(key):
    a, b = draw_normals(key, 3, 1000, 2, 5, jnp.float32), draw_normals(key, 3, 37, 2, 5, jnp.float32)
    np.testing.assert_array_equal(a[:37], b)
    u, v = draw_uniforms(key, 4, 1000, 3, jnp.float32), draw_uniforms(key, 4, 37, 3, jnp.float32)
    np.testing.assert_array_equal(u[:37], v)
    c = draw_normals(key, 4, 37, 2, 5, jnp.float32)  # another step: another stream
    assert not np.any(np.asarray(c) == np.asarray(b))


def _check_normal_law(z: np.ndarray, k: float = 5.0):
    z = np.asarray(z, np.float64).ravel()
    n = z.size
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < k / np.sqrt(n)
    assert abs(z.var() - 1.0) < k * np.sqrt(2.0 / n)
    assert abs(stats.skew(z)) < k * np.sqrt(6.0 / n)
    assert abs(stats.kurtosis(z)) < k * np.sqrt(24.0 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_normal_law_float32(key):
    z = noise.normals(key, 100_000, (5,), jnp.float32)
    _check_normal_law(z)
    # the two output words of one hash feed different columns: they must be uncorrelated, as
    # must neighbouring particles (rows) and different columns in general
    c = np.corrcoef(np.asarray(z, np.float64), rowvar=False)
    n = z.shape[0]
    assert np.max(np.abs(c - np.eye(5))) < 5.0 / np.sqrt(n)
    zz = np.asarray(z[:, 0], np.float64)
    assert abs(np.corrcoef(zz[:-1], zz[1:])[0, 1]) < 5.0 / np.sqrt(n)
    # truncation of the tails is at 5.3 sd, like jax.random.normal
    assert np.max(np.abs(z)) < 5.5


def test_uniform_law(key):
    u = np.asarray(noise.uniforms(key, 200_000, (2,), jnp.float32), np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 5.0 / np.sqrt(u.shape[0])


def test_bad_dtype(key):
    with pytest.raises(TypeError, match="dtype must be floating"):
        noise.normals(key, 3, (2,), jnp.int32)


@pytest.mark.x64
def test_normal_law_float64(key):
    z = noise.normals(key, 100_000, (3,), jnp.float64)
    assert z.dtype == jnp.float64
    _check_normal_law(z)
    np.testing.assert_array_equal(noise.normals(key, 10, (3,), jnp.float64), z[:10])
    u = noise.uniforms(key, 100_000, (1,), jnp.float64)
    assert u.dtype == jnp.float64 and stats.kstest(np.asarray(u).ravel(), "uniform").pvalue > 1e-4


def test_unrolled_threefry_matches_jax_primitive(key):
    from jax.extend.random import threefry2x32_p

    k1, k2 = noise.key_pair(key)
    a = jax.random.bits(jax.random.fold_in(key, 1), (4097,), jnp.uint32)
    b = jax.random.bits(jax.random.fold_in(key, 2), (4097,), jnp.uint32)
    for mine, ref in zip(noise.threefry2x32(k1, k2, a, b), threefry2x32_p.bind(k1, k2, a, b)):
        np.testing.assert_array_equal(mine, ref)


def test_float32_inverse_cdf_every_input():
    """Every one of the 2^23 float32 uniforms (the low 9 bits of a word are dropped, so random
    low bits ride along): within 5 float32 ulps of ``sqrt(2) erfinv(u)`` computed in float64 by
    scipy, exactly odd (``u`` and ``-u`` are both inputs), non-decreasing, tails at 5.3 sd."""
    m = np.arange(2**23, dtype=np.uint32)
    low = np.random.default_rng(0).integers(0, 512, m.size, dtype=np.uint32)
    z = np.asarray(jax.jit(noise._to_normals, static_argnums=1)(
        jnp.asarray((m << np.uint32(9)) | low), jnp.float32))
    u = (m.astype(np.float64) + 0.5) * 2.0**-22 - 1.0
    ref = np.sqrt(2.0) * special.erfinv(u)
    ulps = np.abs(z - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 5.0, (ulps.max(), u[np.argmax(ulps)])
    np.testing.assert_array_equal(z, -z[::-1])
    assert np.all(np.diff(z) >= 0)
    assert 5.25 < z.max() < 5.3


def test_log_of_the_unit_interval_within_one_ulp():
    """``noise._log_unit`` on every mantissa of three binades of ``(0, 1)`` and at 1: within
    one float32 ulp of float64's log (0 exactly at 1)."""
    mant = np.arange(2**23, dtype=np.uint32)
    f = jax.jit(noise._log_unit)
    assert float(f(jnp.float32(1.0))) == 0.0
    for biased in (126, 100, 1):  # [1/2, 1), [2^-27, 2^-26), the smallest normal binade
        y = ((np.uint32(biased) << np.uint32(23)) | mant).view(np.float32)
        ref = np.log(y.astype(np.float64))
        err = np.abs(np.asarray(f(jnp.asarray(y)), np.float64) - ref)
        assert np.max(err / np.spacing(np.abs(ref).astype(np.float32))) <= 1.0, biased
