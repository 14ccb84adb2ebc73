"""cj.NonlinearPushforward (a t = 0 law by change of variables) and Lemma 6.2 for a nonlinear
diffeomorphism: C[F# p] = F# C[p] on a grid (relative L1 < 1e-4), with a control showing the
grid comparison detects a missing Jacobian factor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

F, FI, LD = cj.affine_coupling_map()


def _tuple():
    """A non-FC x-space Gaussian tuple (overlapping experts, correlated): the identity must hold
    for any tuple, FC or not."""
    pb = cj.Gaussian(jnp.asarray([0.0, 0.3]), jnp.asarray([[1.5, 0.4], [0.4, 1.0]]))
    p1 = cj.Gaussian(jnp.asarray([1.0, 0.0]), jnp.asarray([[0.5, 0.1], [0.1, 0.8]]))
    p2 = cj.Gaussian(jnp.asarray([0.0, 1.0]), jnp.asarray([[0.9, -0.2], [-0.2, 0.4]]))
    return pb, [p1, p2]


def test_map_inverse_and_log_det(key):
    x = 1.5 * jax.random.normal(key, (64, 2))
    np.testing.assert_allclose(jax.vmap(FI)(jax.vmap(F)(x)), x, atol=2e-5)
    ld_ad = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(F)(v))[1])(x)
    np.testing.assert_allclose(jax.vmap(LD)(x), ld_ad, atol=2e-5)
    assert float(jnp.std(ld_ad)) > 0.1  # the Jacobian is not constant (unlike a linear map)
    base = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    explicit = cj.NonlinearPushforward(base, F, FI, LD)
    autodiff = cj.NonlinearPushforward(base, F, FI)
    z = jax.vmap(F)(x[:8])
    np.testing.assert_allclose(jax.vmap(explicit.log_prob)(z), jax.vmap(autodiff.log_prob)(z),
                               atol=3e-5)


def test_log_prob_normalized_score_and_samples(key):
    base = cj.Gaussian(jnp.asarray([0.3, -0.2]), jnp.asarray([[0.6, 0.2], [0.2, 0.5]]))
    p = cj.NonlinearPushforward(base, F, FI, LD)
    g = np.linspace(-7, 7, 701)
    Z = jnp.asarray(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), jnp.float32)
    mass = float(jnp.sum(jnp.exp(jax.vmap(p.log_prob)(Z)))) * (g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 2e-3  # Riemann sum on a 0.02 grid of a smooth density
    z0 = jnp.asarray([0.4, -0.1])
    h = 1e-2
    fd = [(p.log_prob(z0 + h * e) - p.log_prob(z0 - h * e)) / (2 * h) for e in jnp.eye(2)]
    np.testing.assert_allclose(p.score(z0), jnp.stack(fd), rtol=2e-3, atol=2e-3)
    s = p.sample(key, 5)
    np.testing.assert_allclose(s, jax.vmap(F)(base.sample(key, 5)), rtol=1e-6)
    # sample i depends only on (key, i)
    np.testing.assert_allclose(p.sample(key, 3), s[:3], rtol=1e-6)


def test_lemma_6_2_nonlinear_on_a_grid():
    """Claim 14 (Lemma 6.2): C[F# p] (composed from the Jacobian-corrected densities of the
    pushed tuple) equals F# C[p] (the exact x-space composition pushed by F), after
    normalization on a grid: relative L1 < 1e-4. Control: without the Jacobian factor the
    same comparison gives a relative L1 above 0.05, so the test can fail."""
    pb, pcs = _tuple()
    comp = cj.composed_distribution(pb, pcs)  # exact Gaussian C[p] in x
    pushed = [cj.NonlinearPushforward(q, F, FI, LD) for q in [pb, *pcs]]
    target = cj.NonlinearPushforward(comp, F, FI, LD)
    g = np.linspace(-6, 8, 561)
    Z = jnp.asarray(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), jnp.float32)
    lps = [jax.vmap(q.log_prob)(Z) for q in pushed]
    log_c = lps[0] + sum(lp - lps[0] for lp in lps[1:])
    a = jnp.exp(log_c - jnp.max(log_c))
    a = a / jnp.sum(a)
    lt = jax.vmap(target.log_prob)(Z)
    b = jnp.exp(lt - jnp.max(lt))
    b = b / jnp.sum(b)
    assert float(jnp.sum(jnp.exp(lt))) * (g[1] - g[0]) ** 2 > 0.99  # the grid holds F# C[p]
    rel = float(jnp.sum(jnp.abs(a - b)))
    assert rel < 1e-4, rel
    # control: composing base densities without the change-of-variables Jacobian
    no_jac = [jax.vmap(lambda z, q=q: q.log_prob(FI(z)))(Z) for q in [pb, *pcs]]
    log_c2 = no_jac[0] + sum(lp - no_jac[0] for lp in no_jac[1:])
    c = jnp.exp(log_c2 - jnp.max(log_c2))
    c = c / jnp.sum(c)
    assert float(jnp.sum(jnp.abs(c - b))) > 0.05


def test_t0_only_and_errors():
    base = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    p = cj.NonlinearPushforward(base, F, FI, LD)
    with pytest.raises(NotImplementedError, match="t = 0 law"):
        cj.diffuse(p, cj.VPSchedule())
    with pytest.raises(TypeError, match="base must be a Distribution"):
        cj.NonlinearPushforward(object(), F, FI)
    with pytest.raises(TypeError, match="forward must be a callable"):
        cj.NonlinearPushforward(base, 3, FI)
    with pytest.raises(ValueError, match="forward must map shape"):
        cj.NonlinearPushforward(base, lambda x: x[:1], FI)
    with pytest.raises(ValueError):
        p.log_prob(jnp.zeros(3))
    assert cj.affine_coupling_map() == (F, FI, LD)  # cached: same functions, no retrace
