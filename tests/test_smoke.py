import jax
import jax.numpy as jnp
import pytest

import composition_jax as cj


def test_gaussian_score_is_grad_log_prob(key):
    g = cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    p = cj.diffuse(g, cj.VPSchedule())
    x = jax.random.normal(key, (2,))
    for t in (1e-4, 0.3, 1.0):
        assert jnp.allclose(p.score(x, t), jax.grad(p.log_prob)(x, t), rtol=1e-4, atol=1e-5)


@pytest.mark.x64
def test_x64_gaussian_score_is_grad_log_prob(key):
    g = cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    assert g.mean.dtype == jnp.float64
    p = cj.diffuse(g, cj.VPSchedule())
    x = jax.random.normal(key, (2,), jnp.float64)
    for t in (1e-4, 0.3, 1.0):
        assert jnp.allclose(p.score(x, t), jax.grad(p.log_prob)(x, t), rtol=1e-10, atol=1e-12)
