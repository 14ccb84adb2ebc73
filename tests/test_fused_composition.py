"""The fused score of compositions of diffused isotropic or diagonal mixtures (``Composition.score`` when
every input qualifies, :func:`composition_jax.compose._fused_mixtures`): all inputs' components
in one logits product and one output product, against the per-model formula
``(1 - sum w) s_b + sum_i w_i s_i`` built from each input's own score (float64: to rounding),
for different component counts and schedules per input, negative and traced weights, points far
from the means; and which compositions take it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.compose import _fused_mixtures


def _iso_mixture(rng, K, d, scale=1.0, dtype=None, diag=False):
    dtype = jnp.result_type(float) if dtype is None else dtype
    w = rng.dirichlet(np.ones(K))
    m = rng.normal(size=(K, d)) * scale
    if diag:  # per-coordinate variances
        v = 10 ** rng.uniform(-1, 0.5, size=(K, d))
        covs = v[:, :, None] * np.eye(d)[None]
    else:
        covs = 10 ** rng.uniform(-1, 0.5, size=K)[:, None, None] * np.eye(d)
    return cj.GaussianMixture(jnp.asarray(w, dtype), jnp.asarray(m, dtype), jnp.asarray(covs, dtype),
                              covariance="diag" if diag else "iso")


SCHEDULES = (cj.VPSchedule(), cj.CosineVPSchedule(), cj.VESchedule(0.01, 5.0))


def _composition(seed, d=12, ks=(3, 5, 2), weights=(1.0, -0.5), diag=()):
    """Inputs with ``ks`` components, schedules VP / cosine / VE in turn; those indexed in
    ``diag`` have diagonal (per-coordinate) covariances."""
    rng = np.random.default_rng(seed)
    models = [cj.diffuse(_iso_mixture(rng, K, d, diag=j in diag), SCHEDULES[j % 3])
              for j, K in enumerate(ks)]
    return cj.compose(models[0], models[1:], weights=jnp.asarray(weights)), rng


def _per_model(comp, x, t):
    sb = comp.background.score(x, t)
    return (1.0 - jnp.sum(comp.weights)) * sb + sum(
        w * c.score(x, t) for w, c in zip(comp.weights, comp.conditionals))


@pytest.mark.x64
@pytest.mark.parametrize("seed,diag", [(0, ()), (1, ()), (2, (1,)), (3, (0, 1, 2))])
def test_fused_score_is_the_per_model_formula_x64(seed, diag):
    comp, rng = _composition(seed, diag=diag)
    assert _fused_mixtures(comp._inputs) is not None
    score = jax.jit(jax.vmap(comp.score, (0, None)))
    ref = jax.jit(jax.vmap(lambda x, t: _per_model(comp, x, t), (0, None)))
    columns = jax.jit(lambda x, t: comp.score_columns(x.T, t).T)  # particle-minor form
    for scale in (1.0, 30.0):
        x = jnp.asarray(rng.normal(size=(64, 12)) * scale)
        for t in (1e-3, 0.05, 0.4, 1.0):
            b = np.asarray(ref(x, t))
            for a in (np.asarray(score(x, t)), np.asarray(columns(x, t))):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


@pytest.mark.parametrize("diag", [(), (2,)])
def test_fused_score_float32_jit_and_traced_weights(diag):
    comp, rng = _composition(3, weights=(0.7, 1.3), diag=diag)
    x = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
    f = jax.jit(lambda c, x, t: jax.vmap(c.score, (0, None))(x, t))
    for w in ((0.7, 1.3), (2.0, -1.0)):
        c = cj.compose(comp.background, comp.conditionals, weights=jnp.asarray(w, jnp.float32))
        got = np.asarray(f(c, x, 0.2))
        ref = np.asarray(jax.vmap(lambda x, c=c: _per_model(c, x, 0.2))(x))
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    assert f._cache_size() == 1  # new weights: no retrace


def test_which_compositions_are_fused():
    rng = np.random.default_rng(4)
    sch = cj.VPSchedule()
    iso = [cj.diffuse(_iso_mixture(rng, 3, 12), sch) for _ in range(2)]
    assert _fused_mixtures(tuple(iso)) is not None
    small = [cj.diffuse(_iso_mixture(rng, 3, 8), sch) for _ in range(2)]  # d <= 8: differences
    assert _fused_mixtures(tuple(small)) is None
    far = cj.diffuse(_iso_mixture(rng, 3, 12, scale=1e3), sch)  # centred expansion
    assert far.dist._centered and _fused_mixtures((iso[0], far)) is None
    diag = cj.diffuse(_iso_mixture(rng, 2, 12, diag=True), sch)
    assert _fused_mixtures((iso[0], diag)) is not None  # diagonal components join in
    full = cj.diffuse(cj.GaussianMixture(jnp.full((2,), 0.5), jnp.zeros((2, 12)),
                                         jnp.broadcast_to(jnp.eye(12), (2, 12, 12)),
                                         covariance="full"), sch)
    assert _fused_mixtures((iso[0], full)) is None
    gauss = cj.diffuse(cj.Gaussian(jnp.zeros(12), jnp.eye(12)), sch)
    assert _fused_mixtures((gauss, iso[0])) is None
    # the composed score still agrees where the fused path is not taken
    c = cj.compose(iso[0], [far])
    x = jnp.asarray(rng.normal(size=(12,)), jnp.result_type(float))
    np.testing.assert_allclose(c.score(x, 0.3), _per_model(c, x, 0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.x64
@pytest.mark.parametrize("diag", [(), (3, 5, 4)], ids=["iso", "diag"])
def test_fused_float32_error_at_the_edges_is_the_per_model_error_x64(diag):
    """Float32 far from the means (|x| up to 1e5) and at small and large t, over 6 random
    compositions of 3 mixtures (isotropic, or all diagonal): the fused score is finite and its
    error against the float64 per-model reference is of the per-model float32 path's size --
    largest within 10x of that path's largest, median within 2x of its median (measured over 8
    compositions: iso largest 7.2e-6 vs 1.4e-6, median 1.4e-7 vs 1.8e-7; diagonal largest
    8.2e-5 vs 1.2e-4, median 1.9e-7 vs 2.0e-7, relative to the largest score). Single cases
    differ either way: near-tied logits make both paths' rounding jump."""
    def comp(seed, dtype):
        rng = np.random.default_rng(seed)
        ms = [cj.diffuse(_iso_mixture(rng, K, 16, dtype=dtype, diag=K in diag), cj.VPSchedule())
              for K in (3, 5, 4)]
        return cj.compose(ms[0], ms[1:], weights=jnp.asarray([1.0, -0.5], dtype))

    fused = jax.jit(lambda c, x, t: jax.vmap(c.score, (0, None))(x, t))
    columns = jax.jit(lambda c, x, t: c.score_columns(x.T, t).T)
    per = jax.jit(lambda c, x, t: jax.vmap(lambda z: _per_model(c, z, t))(x))
    rng = np.random.default_rng(6)
    errs_f, errs_c, errs_p = [], [], []
    for seed in range(6):
        c32, c64 = comp(seed, jnp.float32), comp(seed, jnp.float64)
        assert _fused_mixtures(c32._inputs) is not None
        for scale in (1.0, 1e3, 1e5):
            x = rng.normal(size=(128, 16)) * scale
            for t in (1e-3, 0.1, 0.9):
                ref = np.asarray(per(c64, jnp.asarray(x), t))
                f = np.asarray(fused(c32, jnp.asarray(x, jnp.float32), t))
                col = np.asarray(columns(c32, jnp.asarray(x, jnp.float32), t))
                p = np.asarray(per(c32, jnp.asarray(x, jnp.float32), t))
                assert np.isfinite(f).all() and np.isfinite(col).all(), (seed, scale, t)
                if not np.isfinite(p).all():
                    # the per-model path itself can overflow far out when XLA compiles at
                    # optimization level 0 (make test's fast-compile lanes): nothing to compare
                    continue
                nrm = np.abs(ref).max()
                errs_f.append(np.abs(f - ref).max() / nrm)
                errs_c.append(np.abs(col - ref).max() / nrm)
                errs_p.append(np.abs(p - ref).max() / nrm)
    assert len(errs_f) >= 27, len(errs_f)  # most of the 54 cases compared
    for errs in (errs_f, errs_c):  # the rows and the columns (particle-minor) fused forms
        assert max(errs) <= 10 * max(errs_p), (max(errs), max(errs_p))
        assert np.median(errs) <= 2 * np.median(errs_p), (np.median(errs), np.median(errs_p))


def test_fused_composition_samples_the_same_in_both_layouts(key):
    """``cj.sample`` of a fused composition: the columns layout (the default up to
    ``FUSED_COLUMN_MAX_D``, compiled on CPU without YNNPACK fusions) and the rows layout give
    the same samples to float32 rounding, for every particle of a batch that spans two tiles."""
    comp, _ = _composition(5, diag=(1,))
    comp = cj.compose(*(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), m)
                        for m in (comp.background, list(comp.conditionals))),
                      weights=jnp.asarray([1.0, -0.5], jnp.float32))
    kw = {"steps": 20, "dtype": jnp.float32}
    sch = cj.VPSchedule()
    a = np.asarray(cj.sample(key, comp, sch, (203, 12), layout="rows", **kw))
    b = np.asarray(cj.sample(key, comp, sch, (203, 12), layout="columns", tile_size=128, **kw))
    c = np.asarray(cj.sample(key, comp, sch, (203, 12), **kw))  # "auto": columns
    assert np.isfinite(a).all()
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
