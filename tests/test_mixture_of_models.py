"""MixtureOfModels: the responsibility-weighted mixture of models, against exact noised
mixtures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

SCH = cj.VPSchedule()


def _gaussians(rng, K, d):
    means = rng.normal(size=(K, d)) * 2.0
    A = rng.normal(size=(K, d, d)) * 0.6
    covs = A @ np.swapaxes(A, -1, -2) + 0.2 * np.eye(d)
    w = rng.dirichlet(np.ones(K))
    return w.astype(np.float32), means.astype(np.float32), covs.astype(np.float32)


def _evaluate(model):
    def one(x, t):
        return model.log_prob(x, t), model.score(x, t), model.denoise(x, t)

    return jax.jit(jax.vmap(one, (0, None)))


def test_equals_the_exact_mixture_of_diffused_gaussians(key):
    """MixtureOfModels([diffuse(N(m_k, S_k))], w) == diffuse(GaussianMixture(w, m, S)): score,
    log_prob and denoiser at several t."""
    rng = np.random.default_rng(0)
    w, means, covs = _gaussians(rng, 4, 3)
    mix = cj.MixtureOfModels([cj.diffuse(cj.Gaussian(m, c), SCH) for m, c in zip(means, covs)],
                             w)
    ref = cj.diffuse(cj.GaussianMixture(w, means, covs), SCH)
    assert mix.dim == 3
    ev, ev_ref = _evaluate(mix), _evaluate(ref)
    for j, t in enumerate((1e-3, 0.1, 0.5, 1.0)):
        xs = ref.sample(jax.random.fold_in(key, j), 6, t)
        for name, a, b in zip(("log_prob", "score", "denoise"), ev(xs, jnp.float32(t)),
                              ev_ref(xs, jnp.float32(t))):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * (1 + float(jnp.max(
                jnp.abs(b)))), err_msg=f"{name} t={t}")


def test_score_is_grad_log_prob(key):
    rng = np.random.default_rng(1)
    w, means, covs = _gaussians(rng, 3, 2)
    mix = cj.MixtureOfModels([cj.diffuse(cj.Gaussian(m, c), SCH) for m, c in zip(means, covs)],
                             w)
    f = jax.jit(jax.vmap(lambda x, t: (mix.score(x, t), jax.grad(mix.log_prob)(x, t),
                                       mix.log_prob(x, t), *mix.log_prob_and_score(x, t)),
                         (0, None)))
    for t in (1e-3, 0.3, 0.9):
        xs = 2.0 * jax.random.normal(jax.random.fold_in(key, int(t * 1e3)), (5, 2))
        s, g, lp, lp2, s2 = f(xs, jnp.float32(t))
        np.testing.assert_allclose(s, g, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(lp2, lp, rtol=1e-6)
        np.testing.assert_allclose(s2, s, rtol=1e-6)


def test_nested_mixtures_and_zero_weights(key):
    """A mixture of diffused mixtures is the flat mixture; a zero weight removes its component
    exactly (even one far away)."""
    rng = np.random.default_rng(2)
    w, means, covs = _gaussians(rng, 4, 2)
    g1 = cj.GaussianMixture(w[:2] / w[:2].sum(), means[:2], covs[:2])
    g2 = cj.GaussianMixture(w[2:] / w[2:].sum(), means[2:], covs[2:])
    outer = np.array([w[:2].sum(), w[2:].sum()], np.float32)
    nested = cj.MixtureOfModels([cj.diffuse(g1, SCH), cj.diffuse(g2, SCH)], outer / outer.sum())
    flat = cj.diffuse(cj.GaussianMixture(w, means, covs), SCH)
    far = cj.diffuse(cj.Gaussian(jnp.full((2,), 80.0), jnp.eye(2)), SCH)
    dropped = cj.MixtureOfModels([cj.diffuse(g1, SCH), far], jnp.array([1.0, 0.0]))
    xs = jax.random.normal(key, (5, 2))
    t = jnp.float32(0.2)
    for a, b in zip(_evaluate(nested)(xs, t), _evaluate(flat)(xs, t)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    for a, b in zip(_evaluate(dropped)(xs, t), _evaluate(cj.diffuse(g1, SCH))(xs, t)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_composes_and_is_a_pytree(key):
    """It composes like any model; weights are leaves (one trace for new weights)."""
    rng = np.random.default_rng(3)
    w, means, covs = _gaussians(rng, 3, 2)
    comps = [cj.diffuse(cj.Gaussian(m, c), SCH) for m, c in zip(means, covs)]
    traces = []

    @jax.jit
    def score(model, x, t):
        traces.append(1)
        return cj.compose(model, comps[:1], weights=jnp.array([0.5])).score(x, t)

    x, t = jnp.ones(2), jnp.float32(0.4)
    a = score(cj.MixtureOfModels(comps, w), x, t)
    b = score(cj.MixtureOfModels(comps, np.array([0.2, 0.3, 0.5], np.float32)), x, t)
    assert len(traces) == 1 and not np.allclose(a, b)
    composed = cj.compose(cj.MixtureOfModels(comps, w), comps[:1])
    assert callable(composed.log_prob) and callable(composed.denoise)


def test_errors():
    g = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), SCH)
    g3 = cj.diffuse(cj.Gaussian(jnp.zeros(3), jnp.eye(3)), SCH)
    score_only = cj.FunctionModel(lambda x, t: -x, dim=2)
    with pytest.raises(TypeError, match=r"log_prob.*models\[1\]"):
        cj.MixtureOfModels([g, score_only], jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cj.MixtureOfModels([g, g], jnp.array([1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        cj.MixtureOfModels([g, g], jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        cj.MixtureOfModels([g, g], jnp.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="same dimension"):
        cj.MixtureOfModels([g, g3], jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="must not be empty"):
        cj.MixtureOfModels([], jnp.zeros((0,)))
    no_denoise = cj.FunctionModel(lambda x, t: -x, log_prob_fn=lambda x, t: -0.5 * x @ x, dim=2)
    m = cj.MixtureOfModels([g, no_denoise], jnp.array([0.5, 0.5]))
    m.score(jnp.ones(2), 0.5)
    with pytest.raises(AttributeError, match=r"denoise.*models\[1\]"):
        m.denoise  # noqa: B018
