"""The particle-minor ("columns") layout of cj.sample: same samples as the rows layout (same
noise stream per particle), batch-size invariance across tiles and padding, x_init, info, the
automatic choice, errors, and the score_columns protocol of the models."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.compose import columns_native, score_columns
from composition_jax.samplers import driver

SCH = cj.VPSchedule()


def _iso(seed, d=2, K=3):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K)).astype(np.float32)
    m = rng.normal(size=(K, d)).astype(np.float32)
    v = rng.uniform(0.2, 0.6, K).astype(np.float32)
    return cj.GaussianMixture(jnp.asarray(w), jnp.asarray(m),
                              jnp.asarray(v)[:, None, None] * jnp.eye(d)[None])


def _diag(seed, d=3, K=2):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K)).astype(np.float32)
    m = rng.normal(size=(K, d)).astype(np.float32)
    v = rng.uniform(0.2, 2.0, (K, d)).astype(np.float32)
    return cj.GaussianMixture(jnp.asarray(w), jnp.asarray(m),
                              jax.vmap(jnp.diag)(jnp.asarray(v)))


def _full():
    cov = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    return cj.diffuse(cj.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[1.0, 1.0],
                                                                             [-1.0, 0.5]]),
                                         jnp.stack([cov, 2.0 * cov]), covariance="full"), SCH)


def _composition(d=2):
    bg, c1, c2 = (cj.diffuse(_iso(s, d), SCH) for s in (0, 1, 2))
    return cj.compose(bg, [c1, c2], weights=jnp.array([1.0, 0.7]))


TILE = 24  # tile_size of the columns runs below: several tiles and padding in every run


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)


def test_score_columns_equals_vmapped_score(key):
    # K = 16 and 70 components: the difference form's sums over components as row additions
    # (K <= 64) and as a reduce
    for model in (_composition(), cj.diffuse(_diag(3), SCH),
                  cj.linear_combination([cj.diffuse(_diag(4), SCH), cj.diffuse(_diag(5), SCH)],
                                        jnp.array([0.5, 0.5])),
                  cj.diffuse(_diag(6, d=2, K=16), SCH), cj.diffuse(_iso(7, d=3, K=70), SCH)):
        assert columns_native(model)
        X = 2.0 * jax.random.normal(key, (model.dim, 37))
        for t in (1e-3, 0.3, 1.0):
            _close(score_columns(model, X, t), jax.vmap(model.score, (1, None), 1)(X, t))
    # models without a batched score fall back to vmap (a full-covariance mixture)
    g = _full()
    assert not columns_native(g)
    X = jax.random.normal(key, (2, 5))
    _close(score_columns(g, X, 0.2), jax.vmap(g.score, (1, None), 1)(X, 0.2))


@pytest.mark.parametrize("method", [m for m in ("euler_maruyama", "ode_euler", "ode_heun", "ddpm",
                                                 "ddim") if cj.METHODS[m].elementwise])
def test_columns_equal_rows(key, method):
    model = _composition()
    kw = {"method": method, "steps": 12}
    a = cj.sample(key, model, SCH, (101, 2), layout="rows", **kw)
    b = cj.sample(key, model, SCH, (101, 2), layout="columns", tile_size=TILE, **kw)
    _close(a, b)
    assert np.all(np.isfinite(np.asarray(b)))


def test_columns_batch_independent_and_x_init(key):
    model = cj.diffuse(_diag(7), SCH)
    big = cj.sample(key, model, SCH, (70, 3), steps=8, layout="columns", tile_size=TILE)
    small = cj.sample(key, model, SCH, (9, 3), steps=8, layout="columns", tile_size=TILE)
    _close(big[:9], small)
    x0 = jax.random.normal(jax.random.fold_in(key, 1), (30, 3))
    a = cj.sample(key, model, SCH, (30, 3), steps=8, x_init=x0, layout="rows")
    b = cj.sample(key, model, SCH, (30, 3), steps=8, x_init=x0, layout="columns",
                  tile_size=TILE)
    _close(a, b)


def test_columns_fallback_model_and_info(key):
    g = _full()
    a = cj.sample(key, g, SCH, (50, 2), steps=6, layout="rows", return_info=True)
    b = cj.sample(key, g, SCH, (50, 2), steps=6, layout="columns", tile_size=TILE,
                  return_info=True)
    _close(a.samples, b.samples)
    assert b.info.nonfinite.shape == (6,) and int(b.info.nonfinite.sum()) == 0
    assert int(b.info.nonfinite_final) == 0 and b.trajectory is None
    np.testing.assert_allclose(a.info.times, b.info.times)


def test_columns_count_nonfinite_particles(key):
    """A score that overflows for x > 1 blows up some particles; both layouts count the same
    ones (padding particles are not counted)."""
    bad = cj.as_model(lambda x, t: jnp.where(x > 1.0, jnp.float32(3e38), -x))
    with pytest.warns(cj.NonFiniteWarning, match="particles are non-finite"):
        a = jax.block_until_ready(cj.sample(key, bad, SCH, (50, 2), steps=4, layout="rows",
                                              return_info=True, denoise_final=False))
    with pytest.warns(cj.NonFiniteWarning, match="particles are non-finite"):
        b = jax.block_until_ready(cj.sample(key, bad, SCH, (50, 2), steps=4, layout="columns",
                                            tile_size=TILE, return_info=True,
                                            denoise_final=False))
    assert int(a.info.nonfinite[-1]) > 0
    np.testing.assert_array_equal(a.info.nonfinite, b.info.nonfinite)


def test_auto_layout_choice():
    comp = _composition()
    g = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), SCH)
    readme = cj.compose(g, [comp.conditionals[0]])  # Gaussian background, mixture conditional
    choose = driver.choose_layout
    em = cj.EulerMaruyama()
    assert choose("auto", em, comp, 2, None, False) == "columns"
    assert choose("auto", em, readme, 2, None, False) == "columns"
    assert choose("auto", em, _full(), 2, None, False) == "rows"  # not native
    assert choose("auto", em, comp, 2, 5, False) == "rows"  # trajectory
    assert choose("auto", em, comp, 2, None, True) == "rows"  # checkify
    assert choose("auto", cj.AnnealedMALA(), comp, 2, None, False) == "rows"
    assert choose("auto", cj.PredictorCorrector(), comp, 2, None, False) == "rows"
    # EDM churn and DPM-Solver++(2M) (per-level parameters, a carried state) run in columns
    for m in (cj.ODEHeun(s_churn=2.0), cj.DDIM(eta=0.5, s_churn=1.0), cj.DPMSolver2M()):
        assert choose("auto", m, comp, 2, None, False) == "columns"
        assert choose("auto", m, _full(), 2, None, False) == "rows"
    assert choose("auto", em, comp, driver.COLUMN_MAX_D + 1, None, False) == "rows"
    assert choose("rows", em, comp, 2, None, False) == "rows"
    # d > 8 isotropic mixtures: the composition is scored in the fused form (both layouts),
    # whose columns layout "auto" picks up to FUSED_COLUMN_MAX_D
    def fused_of(d):
        rng = np.random.default_rng(0)
        mix = [cj.diffuse(cj.GaussianMixture(jnp.full((3,), 1 / 3),
                                             jnp.asarray(rng.normal(size=(3, d))),
                                             jnp.broadcast_to(jnp.eye(d), (3, d, d)),
                                             covariance="iso"), SCH) for _ in range(2)]
        return cj.compose(mix[0], [mix[1]])

    fused, wide = fused_of(16), fused_of(driver.FUSED_COLUMN_MAX_D + 1)
    assert fused._fused_columns and not comp._fused_columns
    assert choose("auto", em, fused, 16, None, False) == "columns"
    assert choose("auto", em, wide, wide.dim, None, False) == "rows"
    assert choose("auto", cj.PredictorCorrector(), fused, 16, None, False) == "rows"
    assert choose("rows", em, fused, 16, None, False) == "rows"  # still available


def test_layout_errors(key):
    model = _composition()
    with pytest.raises(ValueError, match="layout must be"):
        cj.sample(key, model, SCH, (4, 2), steps=2, layout="diagonal")
    with pytest.raises(ValueError, match="layout='columns' supports"):
        cj.sample(key, model, SCH, (4, 2), steps=2, layout="columns", method="annealed_mala")
    with pytest.raises(ValueError, match="layout='columns' supports"):
        cj.sample(key, model, SCH, (4, 2), steps=2, layout="columns", record_every=1)


def test_columns_no_retrace_on_new_weights(key, monkeypatch):
    chex.clear_trace_counter()
    monkeypatch.setattr(driver, "_columns_run", chex.assert_max_traces(driver._columns_run, n=1))
    driver._build.cache_clear()
    try:
        model = _composition()
        cj.sample(key, model, SCH, (16, 2), steps=3)
        other = cj.compose(model.background, list(model.conditionals),
                           weights=jnp.array([0.2, 2.0]))
        cj.sample(key, other, SCH, (16, 2), steps=3)  # no second trace
    finally:
        driver._build.cache_clear()
        chex.clear_trace_counter()


def test_score_columns_checks_the_shape():
    """``score_columns`` takes ``(d, n)``: a diffused mixture and a fused composition (d > 8)
    name the expected shape."""
    rng = np.random.default_rng(1)
    mix = [cj.diffuse(cj.GaussianMixture(jnp.full((2,), 0.5), jnp.asarray(rng.normal(size=(2, 12))),
                                         jnp.broadcast_to(jnp.eye(12), (2, 12, 12)),
                                         covariance="iso"), SCH) for _ in range(2)]
    fused = cj.compose(mix[0], [mix[1]])
    assert fused._fused_columns
    for model in (mix[0], fused):
        with pytest.raises(ValueError, match=r"X must have shape \(12, n\), got \(3, 5\)"):
            model.score_columns(jnp.ones((3, 5)), 0.3)
        with pytest.raises(ValueError, match=r"X must have shape \(12, n\), got \(12,\)"):
            model.score_columns(jnp.ones(12), 0.3)
