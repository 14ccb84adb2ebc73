"""The diagonal-covariance fast paths of GaussianMixture (difference / matmul forms) against the
general eigen-form path (``covariance="full"``) and scipy; the explicit ``covariance`` option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import composition_jax as cj

TIMES = (1e-4, 1e-2, 0.3, 1.0)


def _mixture(rng, d, K, vmin, dtype, isotropic=False, covariance=None):
    means = rng.normal(size=(K, d)) * 2.0
    var = rng.uniform(vmin, 3 * vmin, size=(K, 1 if isotropic else d)) * np.ones((K, d))
    covs = np.stack([np.diag(v) for v in var])
    w = rng.dirichlet(np.ones(K))
    return cj.GaussianMixture(w.astype(dtype), means.astype(dtype), covs.astype(dtype),
                              covariance=covariance)


def _as_full(m):
    """The same mixture on the general (eigendecomposition) path."""
    return cj.GaussianMixture(m.weights, m.means, m.covs, covariance="full")


def test_diagonal_flag_detection():
    rng = np.random.default_rng(0)
    m = _mixture(rng, 3, 4, 0.5, np.float32)
    assert m.diagonal and m.covariance == "diag"
    full = np.stack([np.eye(3) + 0.1 * (np.ones((3, 3)) - np.eye(3))] * 4)
    m2 = cj.GaussianMixture(np.full(4, 0.25), np.zeros((4, 3)), full)
    assert not m2.diagonal and m2.covariance == "full"
    assert m.marginal([0, 2]).diagonal
    iso = _mixture(rng, 3, 4, 0.5, np.float32, isotropic=True)
    assert iso.covariance == "iso" and iso.isotropic
    assert iso.marginal([0, 2]).covariance == "iso"
    # an explicit kind is kept by marginals even where inference would find a narrower one
    f = _as_full(iso)
    assert f.covariance == "full" and not f.diagonal
    assert f.marginal([1]).covariance == "full"
    d = cj.GaussianMixture(iso.weights, iso.means, iso.covs, covariance="diag")
    assert d.covariance == "diag" and d.marginal([0, 1]).covariance == "diag"


def test_covariance_option_validated_when_concrete():
    rng = np.random.default_rng(3)
    m = _mixture(rng, 3, 2, 0.5, np.float32)  # diagonal, not isotropic
    with pytest.raises(ValueError, match=r"covariance='iso'.*covs"):
        cj.GaussianMixture(m.weights, m.means, m.covs, covariance="iso")
    full = np.stack([np.eye(3) + 0.1 * (np.ones((3, 3)) - np.eye(3))] * 2)
    with pytest.raises(ValueError, match=r"covariance='diag'.*covs"):
        cj.GaussianMixture(m.weights, m.means, full, covariance="diag")
    with pytest.raises(ValueError, match=r"covariance='iso'.*covs"):
        cj.GaussianMixture(m.weights, m.means, full, covariance="iso")
    with pytest.raises(ValueError, match="covariance must be None or one of"):
        cj.GaussianMixture(m.weights, m.means, m.covs, covariance="diagonal")
    with pytest.raises(ValueError, match="positive definite"):
        cj.GaussianMixture(m.weights, m.means, 0.0 * m.covs, covariance="diag")


def test_covariance_option_under_jit():
    """Built under jit: None means "full" (the values are unknown), an explicit kind is trusted;
    the kind is static (part of the treedef) and survives flatten / unflatten and jit."""
    rng = np.random.default_rng(4)
    m = _mixture(rng, 3, 4, 0.5, np.float32, isotropic=True)
    seen = {}

    @jax.jit
    def build(w, mu, c):
        seen["none"] = cj.GaussianMixture(w, mu, c).covariance
        g = cj.GaussianMixture(w, mu, c, covariance="iso")
        seen["iso"] = g.covariance
        return g

    g = build(m.weights, m.means, m.covs)
    assert seen == {"none": "full", "iso": "iso"}
    assert g.covariance == "iso"
    leaves, tree = jax.tree.flatten(g)
    assert jax.tree.unflatten(tree, leaves).covariance == "iso"
    _, tree_full = jax.tree.flatten(_as_full(m))
    assert tree != tree_full
    sched = cj.VPSchedule()
    x = jnp.asarray(rng.normal(size=3).astype(np.float32))
    f = jax.jit(lambda mm, z: cj.diffuse(mm, sched).score(z, 0.3))
    np.testing.assert_allclose(np.asarray(f(g, x)), np.asarray(f(m, x)), rtol=1e-6, atol=1e-6)


def test_diagonal_rejects_nonpositive_variance():
    covs = np.stack([np.diag([1.0, 0.0])] * 2)
    with pytest.raises(ValueError, match="positive definite"):
        cj.GaussianMixture(np.array([0.5, 0.5]), np.zeros((2, 2)), covs)


@pytest.mark.parametrize("d,K,vmin,iso", [(2, 8, 0.2, False), (16, 6, 0.01, False),
                                          (16, 6, 0.01, True)])
def test_fast_path_matches_general_path_float32(key, d, K, vmin, iso):
    rng = np.random.default_rng(d)
    fast = _mixture(rng, d, K, vmin, np.float32, isotropic=iso)
    assert fast.isotropic == iso
    slow = _as_full(fast)
    sched = cj.VPSchedule()
    for t in TIMES:
        x = cj.diffuse(fast, sched).sample(jax.random.fold_in(key, int(t * 1e4)), 32, t)
        for what in ("score", "log_prob", "denoise"):
            a, s = sched.alpha(t), sched.sigma(t)
            f = jax.vmap(lambda z, m=fast, a=a, s=s, what=what: m.noised(z, a, s, what))(x)
            g = jax.vmap(lambda z, m=slow, a=a, s=s, what=what: m.noised(z, a, s, what))(x)
            scale = float(jnp.max(jnp.abs(g))) + 1.0
            # float32 expansion error ~ eps * |x|^2 / v_min (documented in gaussian.py)
            tol = 64 * float(jnp.finfo(jnp.float32).eps) * (1.0 + float(jnp.max(x * x)) / vmin)
            assert float(jnp.max(jnp.abs(f - g))) <= tol * scale, (what, t)


@pytest.mark.x64
@pytest.mark.parametrize("iso", [False, True])
def test_fast_path_matches_scipy_and_grad_float64(key, iso):
    rng = np.random.default_rng(1)
    m = _mixture(rng, 3, 5, 0.3, np.float64, isotropic=iso)
    assert m.diagonal and m.isotropic == iso
    sched = cj.VESchedule()
    p = cj.diffuse(m, sched)
    for t in TIMES:
        a, s = float(sched.alpha(t)), float(sched.sigma(t))
        x = p.sample(jax.random.fold_in(key, int(t * 1e4)), 8, t)
        ref = np.array([
            np.log(sum(
                float(m.weights[k]) * stats.multivariate_normal(
                    a * np.asarray(m.means[k]), a * a * np.asarray(m.covs[k]) + s * s * np.eye(3)
                ).pdf(np.asarray(xi))
                for k in range(5)
            ))
            for xi in x
        ])
        lp = jax.vmap(lambda z, t=t: p.log_prob(z, t))(x)
        np.testing.assert_allclose(np.asarray(lp), ref, rtol=1e-9, atol=1e-9)
        sc = jax.vmap(lambda z, t=t: p.score(z, t))(x)
        gr = jax.vmap(jax.grad(lambda z, t=t: p.log_prob(z, t)))(x)
        np.testing.assert_allclose(np.asarray(sc), np.asarray(gr), rtol=1e-9, atol=1e-9)
        dn = jax.vmap(lambda z, t=t: p.denoise(z, t))(x)
        tw = (x + s * s * sc) / a
        np.testing.assert_allclose(np.asarray(dn), np.asarray(tw), rtol=1e-8, atol=1e-8)


def test_diagonal_sample_moments(key):
    rng = np.random.default_rng(2)
    m = _mixture(rng, 4, 3, 0.5, np.float32)
    n = 20000
    x = m.sample(key, n)
    mean, cov = m.moments()
    se = jnp.sqrt(jnp.diagonal(cov) / n)
    assert float(jnp.max(jnp.abs(x.mean(0) - mean) / se)) < 5.0
    assert bool(jnp.all(m.sample(key, 7) == x[:7]))


def test_batched_score_jacobian_is_finite():
    """``jit(vmap(jacfwd(score)))`` of an isotropic mixture: finite and equal to the per-particle
    Jacobian. With XLA:CPU's backend optimization off (as ``make test`` runs), the JVP of the
    log-sum-exp shift ``max(logits)`` found no tie in some batched rows and divided by zero
    (5568 NaN entries in this test's 64 x 3 Jacobians); the shift carries no derivative
    (``stop_gradient``: it cancels between numerator and normalizer)."""
    sch = cj.VPSchedule()
    k1, k2 = jax.random.split(jax.random.key(1))
    K, d = 6, 4
    m = cj.diffuse(cj.GaussianMixture(jnp.full((K,), 1.0 / K), 2 * jax.random.normal(k1, (K, d)),
                                      jnp.stack([0.05 * jnp.eye(d)] * K), covariance="iso"), sch)
    x = 2 * jax.random.normal(k2, (64, d))
    batched = jax.jit(jax.vmap(jax.jacfwd(m.score), (0, None)))
    single = jax.jit(jax.jacfwd(m.score))
    for t in (1e-3, 0.05, 0.2):
        J = np.asarray(batched(x, t))
        assert np.all(np.isfinite(J)), f"t={t}: {np.sum(~np.isfinite(J))} non-finite entries"
        J1 = np.stack([np.asarray(single(xi, t)) for xi in x[:8]])
        np.testing.assert_allclose(J[:8], J1, rtol=1e-4, atol=1e-4 * np.abs(J1).max())


def test_guarded_mixture_eager_calls_reuse_their_programs_and_match_jit():
    """A guarded diagonal mixture (d > 8, means far apart: the expanded quadratic is not always
    within its floor) chooses between the expanded and the anchored form per noise level. Called
    eagerly, the choice is made from the concrete predicate: a repeated call compiles nothing
    (an eager ``lax.cond`` recompiled its branches on every call, ~0.8 s each), and the values
    equal the jitted ones (``lax.cond``) on both branches."""
    rng = np.random.default_rng(11)
    d = 16
    means = (1e3 * rng.normal(size=(3, d))).astype(np.float32)
    covs = np.stack([np.diag(rng.uniform(1e-2, 2e-2, size=d))] * 3).astype(np.float32)
    mix = cj.GaussianMixture(np.full(3, 1 / 3, np.float32), means, covs)
    assert mix._guarded and mix.covariance == "diag"
    sched = cj.VPSchedule()
    p = cj.diffuse(mix, sched)
    x = jnp.asarray(means[0] * 0.5 + rng.normal(size=d).astype(np.float32))
    X = jnp.stack([x, -x], 1)  # (d, 2), particle-minor
    forms = set()
    for t in (1e-3, 0.9999):
        a, s = sched.alpha(jnp.float32(t)), sched.sigma(jnp.float32(t))
        mp, w, _ = mix._diag_consts(a, s)
        forms.add(bool(mix._expansion_ok(mp, w, a)))
    assert forms == {True, False}  # both branches are exercised below

    def values(t):
        return (p.score(x, t), p.log_prob(x, t), p.denoise(x, t), p.score_columns(X, t))

    jitted = jax.jit(values)
    compiles = []

    def listen(ev, _secs, **_kw):
        if ev.endswith("backend_compile_duration"):
            compiles.append(ev)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for t in (1e-3, 0.9999):
            eager = values(jnp.float32(t))
            before = len(compiles)
            again = values(jnp.float32(t))
            assert len(compiles) == before, f"t={t}: {len(compiles) - before} programs compiled"
            for e, g, j in zip(eager, again, jitted(jnp.float32(t))):
                np.testing.assert_array_equal(np.asarray(e), np.asarray(g))
                np.testing.assert_allclose(np.asarray(e), np.asarray(j), rtol=1e-5, atol=1e-5)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
