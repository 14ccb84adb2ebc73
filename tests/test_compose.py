"""Composition operators on models: compose, linear_combination, guidance (issue 3).

Oracles: the exact noised laws of ``cj.diffuse`` (closed form), autodiff of the composed
log-density, and the operator formulas written out by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

TIMES = (1e-3, 0.3, 0.9)


def _spd(key, d, dtype, scale=1.0):
    a = jax.random.normal(key, (d, d), dtype)
    return scale * (a @ a.T / d + 0.5 * jnp.eye(d, dtype=dtype))


def _mixture(key, k, d, dtype):
    kw, km, kc = jax.random.split(key, 3)
    w = jax.nn.softmax(jax.random.normal(kw, (k,), dtype))
    means = 2.0 * jax.random.normal(km, (k, d), dtype)
    covs = jnp.stack([_spd(kk, d, dtype, 0.5) for kk in jax.random.split(kc, k)])
    return cj.GaussianMixture(w, means, covs)


def _tuple(key, d, dtype, schedule=None):
    """Diffused background (Gaussian) and three conditionals (mixture, Gaussian, mixture)."""
    sch = cj.VPSchedule() if schedule is None else schedule
    k = jax.random.split(key, 5)
    bg = cj.Gaussian(jax.random.normal(k[0], (d,), dtype), _spd(k[1], d, dtype, 2.0))
    c1 = _mixture(k[2], 2, d, dtype)
    c2 = cj.Gaussian(jax.random.normal(k[3], (d,), dtype), _spd(k[4], d, dtype, 0.5))
    c3 = _mixture(jax.random.fold_in(key, 9), 3, d, dtype)
    return cj.diffuse(bg, sch), [cj.diffuse(c, sch) for c in (c1, c2, c3)]


def _on_grid(fn, xs, ts):
    """Evaluate ``fn(x, t)`` (a pytree of arrays) on every pair of ``xs (n, d)`` and ``ts``, in
    one jitted, vmapped call (eager op-by-op evaluation is slow on small CPUs)."""
    ts = jnp.asarray(ts, xs.dtype)
    x = jnp.repeat(xs, ts.shape[0], axis=0)
    t = jnp.tile(ts, xs.shape[0])
    return jax.jit(jax.vmap(fn))(x, t), x, t


def _check_score_is_grad(key, dtype, d, rtol, atol):
    bg, cs = _tuple(key, d, dtype)
    w = jnp.array([1.0, -0.7, 2.5], dtype)
    model = cj.compose(bg, cs, w)
    inner = cj.compose(bg, cs[:2], jnp.array([0.5, 1.0], dtype))
    nested = cj.compose(inner, [cs[2], bg], jnp.array([1.5, -0.25], dtype))
    xs = 1.5 * jax.random.normal(jax.random.fold_in(key, 1), (4, d), dtype)

    def fn(x, t):
        return [(m.score(x, t), jax.grad(m.log_prob)(x, t)) for m in (model, nested)]

    out, _, _ = _on_grid(fn, xs, TIMES)
    for s, g in out:
        assert s.dtype == dtype and g.dtype == dtype
        np.testing.assert_allclose(s, g, rtol=rtol, atol=atol)


def test_score_is_grad_log_prob_float32(key):
    _check_score_is_grad(key, jnp.float32, 3, rtol=2e-4, atol=2e-4)


@pytest.mark.x64
def test_score_is_grad_log_prob_x64(key):
    _check_score_is_grad(key, jnp.float64, 2, rtol=1e-10, atol=1e-10)


@pytest.mark.x64
def test_operator_formulas_x64(key):
    d = 3
    bg, cs = _tuple(key, d, jnp.float64)
    w = jnp.array([0.8, -0.5, 1.7])
    comp = cj.compose(bg, cs, w)
    lin = cj.linear_combination([bg, *cs], jnp.concatenate([1.0 - jnp.sum(w, keepdims=True), w]))
    nested = cj.compose(cj.compose(bg, cs[:2], w[:2]), [cs[2]], w[2:])
    xs = jax.random.normal(jax.random.fold_in(key, 1), (3, d))
    sch = bg.schedule

    def fn(x, t):
        a, s = sch.alpha(t), sch.sigma(t)
        sb, si = bg.score(x, t), [c.score(x, t) for c in cs]
        lb, li = bg.log_prob(x, t), [c.log_prob(x, t) for c in cs]
        db, di = bg.denoise(x, t), [c.denoise(x, t) for c in cs]
        want_s = sb + sum(w[i] * (si[i] - sb) for i in range(3))
        want_l = lb + sum(w[i] * (li[i] - lb) for i in range(3))
        want_d = db + sum(w[i] * (di[i] - db) for i in range(3))
        inner = cj.compose(bg, cs[:2], w[:2])
        nest_s = inner.score(x, t) + w[2] * (si[2] - inner.score(x, t))
        nest_l = inner.log_prob(x, t) + w[2] * (li[2] - inner.log_prob(x, t))
        return {
            "want": (want_s, want_l, want_d),
            "comp": (comp.score(x, t), comp.log_prob(x, t), comp.denoise(x, t)),
            "comp_joint": comp.log_prob_and_score(x, t),
            # Tweedie is affine in the score with coefficients summing to one: the composed
            # denoiser is the denoiser of the composed score.
            "tweedie": (x + s * s * want_s) / a,
            "lin": (lin.score(x, t), lin.log_prob(x, t)),
            "lin_joint": lin.log_prob_and_score(x, t),
            "nested": (nested.score(x, t), nested.log_prob(x, t)),
            "nested_want": (nest_s, nest_l),
            "inner_manual": (inner.score(x, t), sb + w[0] * (si[0] - sb) + w[1] * (si[1] - sb)),
        }

    o, _, _ = _on_grid(fn, xs, TIMES)
    close = lambda a, b, tol=1e-12: np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    ws, wl, wd = o["want"]
    for got, want in zip(o["comp"], o["want"]):
        close(got, want)
    close(o["comp_joint"][0], wl)
    close(o["comp_joint"][1], ws)
    close(o["tweedie"], wd, 1e-9)
    close(o["lin"][0], ws, 1e-10)
    close(o["lin"][1], wl, 1e-10)
    close(o["lin_joint"][0], wl, 1e-10)
    close(o["lin_joint"][1], ws, 1e-10)
    close(o["nested"][0], o["nested_want"][0])
    close(o["nested"][1], o["nested_want"][1])
    close(*o["inner_manual"])


@pytest.mark.x64
def test_bayes_and_guidance_are_compose_x64(key):
    """Claim 22: Bayes composition is compose with the unconditional mixture as background;
    classifier-free guidance is the k = 1 case with weight ``scale``."""
    d = 2
    sch = cj.VESchedule()
    k1, k2, kx = jax.random.split(key, 3)
    m1 = cj.Gaussian(jnp.array([2.0, 0.0]), _spd(k1, d, jnp.float64, 0.3))
    m2 = cj.Gaussian(jnp.array([0.0, -2.0]), _spd(k2, d, jnp.float64, 0.3))
    pu = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.stack([m1.mean, m2.mean]),
                            jnp.stack([m1.cov, m2.cov]))
    u, c1, c2 = (cj.diffuse(p, sch) for p in (pu, m1, m2))
    bayes = cj.compose(u, [c1, c2])
    cfg = cj.guidance(c1, u, 3.0)
    neg = cj.compose(u, [c1, c2], weights=jnp.array([1.0, -0.5]))  # c1 AND NOT c2

    def fn(x, t):
        # Bayes: grad of log p_u + sum_i (log p_i - log p_u), by autodiff
        def lbayes(y):
            return u.log_prob(y, t) + sum(c.log_prob(y, t) - u.log_prob(y, t) for c in (c1, c2))

        su, sc1, sc2 = u.score(x, t), c1.score(x, t), c2.score(x, t)
        return [
            (bayes.score(x, t), jax.grad(lbayes)(x)),
            (cfg.score(x, t), su + 3.0 * (sc1 - su)),
            (neg.score(x, t), su + (sc1 - su) - 0.5 * (sc2 - su)),
        ]

    out, _, _ = _on_grid(fn, jax.random.normal(kx, (3, d)), (0.05, 0.5))
    for got, want in out:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert isinstance(cfg, cj.Composition) and cfg.background is u
    assert cfg.weights.shape == (1,)
    assert cj.guidance(c1, u, jnp.array([2.0])).weights.shape == (1,)


def test_capabilities_and_function_models(key):
    d = 2
    bg, cs = _tuple(key, d, jnp.float32)
    fn_score = bg.score  # a bound method is a plain function score_fn(x, t)
    comp = cj.compose(fn_score, cs[:2])
    assert isinstance(comp.background, cj.FunctionModel)
    assert not hasattr(comp, "log_prob") and not hasattr(comp, "denoise")
    assert not hasattr(comp, "log_prob_and_score")
    with pytest.raises(AttributeError, match=r"no log_prob: input\(s\) without log_prob: background"):
        _ = comp.log_prob
    x = jnp.array([0.3, -0.4], jnp.float32)
    f = jax.jit(lambda m, y: m.score(y, 0.5))
    np.testing.assert_allclose(f(comp, x), f(cj.compose(bg, cs[:2]), x), rtol=1e-6, atol=1e-6)
    full = cj.compose(bg, cs)
    assert hasattr(full, "log_prob") and hasattr(full, "denoise")
    assert full.dim == d
    lin = cj.linear_combination(cs, jnp.ones(3))
    assert hasattr(lin, "log_prob") and not hasattr(lin, "denoise")
    fm = cj.FunctionModel(bg.score, log_prob_fn=bg.log_prob, dim=d)
    both = cj.compose(fm, cs)
    assert hasattr(both, "log_prob") and not hasattr(both, "denoise")
    lpf = jax.jit(lambda m, y: m.log_prob(y, 0.5))
    np.testing.assert_allclose(lpf(both, x), lpf(full, x), rtol=1e-6)
    assert cj.as_model(bg) is bg

    class Plain:  # a model object that is not a pytree: kept static
        dim = d

        def score(self, x, t):
            return -x

    plain = Plain()
    pc = cj.compose(plain, cs[:1])
    assert not hasattr(pc, "log_prob")
    out, want = jax.jit(lambda m, y: (m.score(y, 0.5), cs[0].score(y, 0.5)))(pc, x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)  # -x + (s_1 - (-x))


def test_transformations(key):
    """jit == eager, vmap == loop, grad of log_prob, and no retrace when only numbers change."""
    d = 2
    bg, cs = _tuple(key, d, jnp.float32)
    model = cj.compose(bg, cs, jnp.array([1.0, 0.5, -0.3], jnp.float32))
    xs = jax.random.normal(jax.random.fold_in(key, 1), (5, d), jnp.float32)
    ts = jnp.linspace(0.1, 0.9, 5, dtype=jnp.float32)

    traces = []

    @jax.jit
    def batch_score(m, x, t):
        traces.append(1)
        return jax.vmap(m.score)(x, t)

    out = batch_score(model, xs, ts)
    loop = jnp.stack([model.score(x, t) for x, t in zip(xs, ts)])
    np.testing.assert_allclose(out, loop, rtol=1e-5, atol=1e-5)
    g = jax.jit(jax.vmap(jax.grad(model.log_prob)))(xs, ts)
    np.testing.assert_allclose(g, loop, rtol=2e-4, atol=2e-4)
    # new weights, new distribution numbers (same shapes), guidance scales: no retrace
    bg2, cs2 = _tuple(jax.random.fold_in(key, 2), d, jnp.float32)
    for m in (
        cj.compose(bg, cs, jnp.array([2.0, -1.0, 0.1], jnp.float32)),
        cj.compose(bg2, cs2, [0.3, 0.3, 0.3]),
        cj.compose(bg2, cs2),
    ):
        batch_score(m, xs, ts)
    assert len(traces) == 1
    cfg_traces = []

    @jax.jit
    def cfg_score(m, x):
        cfg_traces.append(1)
        return m.score(x, 0.5)

    for scale in (1.0, 2.5, jnp.float32(4.0), jnp.array([7.0], jnp.float32)):
        cfg_score(cj.guidance(cs[0], bg, scale), xs[0])
    assert len(cfg_traces) == 1
    # weights built from traced values inside jit
    f = jax.jit(lambda w, x: cj.compose(bg, cs, w).score(x, 0.5))
    w = jnp.array([1.0, 0.5, -0.3], jnp.float32)
    np.testing.assert_allclose(f(w, xs[0]), model.score(xs[0], 0.5), rtol=1e-5, atol=1e-5)
    # gradient with respect to the weights (a leaf)
    dw = jax.jit(jax.grad(lambda w: cj.compose(bg, cs, w).log_prob(xs[0], 0.5)))(w)
    lb = bg.log_prob(xs[0], 0.5)
    want = jnp.stack([c.log_prob(xs[0], 0.5) - lb for c in cs])
    np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-5)


def test_errors(key):
    d = 2
    bg, cs = _tuple(key, d, jnp.float32)
    other = cj.diffuse(cj.Gaussian(jnp.zeros(3), jnp.eye(3)), cj.VPSchedule())
    with pytest.raises(ValueError, match=r"conditionals must not be empty"):
        cj.compose(bg, [])
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\).*got shape \(2,\)"):
        cj.compose(bg, cs, jnp.ones(2))
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\).*got shape \(3, 1\)"):
        cj.compose(bg, cs, jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\).*got shape \(\)"):
        cj.compose(bg, cs, 1.0)
    with pytest.raises(ValueError, match=r"weights must be finite"):
        cj.compose(bg, cs, [1.0, float("nan"), 1.0])
    with pytest.raises(TypeError, match=r"weights must be real numbers, got bool"):
        cj.compose(bg, cs[:1], True)
    with pytest.raises(ValueError, match=r"background.dim=2, conditionals\[0\].dim=2, "
                                         r"conditionals\[1\].dim=3"):
        cj.compose(bg, [cs[0], other])
    with pytest.raises(TypeError, match=r"conditionals\[1\] must be a model.*got int"):
        cj.compose(bg, [cs[0], 3])
    with pytest.raises(TypeError, match=r"background is a Gaussian.*cj.diffuse"):
        cj.compose(bg.dist, cs)
    with pytest.raises(TypeError, match=r"conditionals must be a sequence"):
        cj.compose(bg, cs[0])
    with pytest.raises(ValueError, match=r"models must not be empty"):
        cj.linear_combination([], jnp.ones(0))
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\).*got shape \(3,\)"):
        cj.linear_combination(cs[:2], jnp.ones(3))
    with pytest.raises(TypeError, match=r"linear_combination needs weights"):
        cj.linear_combination(cs[:2], None)
    with pytest.raises(ValueError, match=r"models\[0\].dim=2, models\[1\].dim=3"):
        cj.linear_combination([bg, other], jnp.ones(2))
    with pytest.raises(ValueError, match=r"scale must be a scalar.*got shape \(2,\)"):
        cj.guidance(cs[0], bg, jnp.ones(2))
    with pytest.raises(ValueError, match=r"found unconditional|background.dim=3"):
        cj.guidance(cs[0], other, 2.0)
    with pytest.raises(TypeError, match=r"score_fn must be callable"):
        cj.FunctionModel(3)
    with pytest.raises(ValueError, match=r"dim must be a positive int"):
        cj.FunctionModel(bg.score, dim=0)
    with pytest.raises(ValueError, match=r"found background.dim=2, conditionals\[0\].dim=5"):
        cj.compose(bg, [cj.FunctionModel(bg.score, dim=5)])
