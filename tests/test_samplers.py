"""Samplers: moments against the exact sampler law, reproducibility, retracing, errors."""

from __future__ import annotations

import dataclasses
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sampler_helpers import gaussian_moment_check

import composition_jax as cj
from composition_jax._pytree import pytree_dataclass
from composition_jax.samplers import METHODS, driver, time_grid
from composition_jax.verify.sampler_law import sampler_law

MEAN = jnp.array([1.0, -1.0, 0.5])
COV = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.5]])
SCHEDULES = {"vp": cj.VPSchedule(), "ve": cj.VESchedule(), "cos": cj.CosineVPSchedule()}


def _model(sch):
    return cj.diffuse(cj.Gaussian(MEAN, COV), sch)


AFFINE_METHODS = [
    ("euler_maruyama", {}),
    ("ode_euler", {}),
    ("ode_heun", {}),
    ("ddpm", {}),
    ("ddim", {"eta": 0.5}),
    ("predictor_corrector", {"corrector_step": "fixed"}),
]
_SLOW = pytest.mark.slow
# default: the methods that draw noise (where scaling errors hide) on VP, plus two grids on
# other schedules; the deterministic ODE methods on VP and every method on VE are slow
_NOISY = ("euler_maruyama", "ddpm", "ddim", "predictor_corrector")
CASES = (
    [(m, o, "vp", 5, "uniform") if m in _NOISY else
     pytest.param(m, o, "vp", 5, "uniform", marks=_SLOW) for m, o in AFFINE_METHODS]
    + [
        ("ddpm", {}, "cos", 20, "log_snr"),
        ("ode_heun", {}, "ve", 20, "edm"),
    ]
    + [
        pytest.param(m, o, "ve", 20, "uniform", marks=_SLOW)
        for m, o in AFFINE_METHODS
    ]
    + [
        pytest.param("euler_maruyama", {}, "vp", 100, "uniform", marks=_SLOW),
        pytest.param("ddim", {}, "ve", 100, "uniform", marks=_SLOW),
    ]
)
N_MOM = 4000  # one shape for every moment test: (N_MOM, 3) runs share compiled samplers


@pytest.mark.parametrize("method,opts,sch_name,steps,grid", CASES)
def test_moments_match_sampler_law(key, method, opts, sch_name, steps, grid):
    sch = SCHEDULES[sch_name]
    p = _model(sch)
    x = cj.sample(key, p, sch, (N_MOM, 3), method=method, steps=steps, grid=grid, **opts)
    law = sampler_law(p, sch, method=method, steps=steps, grid=grid, **opts)
    zm, zc = gaussian_moment_check(x, law.mean, law.cov)
    print(f"{method} {sch_name} steps={steps}: worst z mean {zm:.2f}, cov {zc:.2f}")


def test_sampler_law_detects_a_wrong_law(key):
    """The moment check has power: samples of 5 steps fail against the 20-step law (the 5-step
    sampler is shared with test_moments_match_sampler_law: no new compile)."""
    sch = SCHEDULES["vp"]
    p = _model(sch)
    x = cj.sample(key, p, sch, (N_MOM, 3), method="ddpm", steps=5)
    gaussian_moment_check(x, *sampler_law(p, sch, method="ddpm", steps=5, as_moments=True))
    wrong = sampler_law(p, sch, method="ddpm", steps=20)
    with pytest.raises(AssertionError):
        gaussian_moment_check(x, wrong.mean, wrong.cov)


def test_composition_moments_match_sampler_law(key):
    sch = SCHEDULES["vp"]
    bg = cj.diffuse(cj.Gaussian(jnp.zeros(3), 2.0 * jnp.eye(3)), sch)
    c1 = _model(sch)
    c2 = cj.diffuse(cj.Gaussian(-MEAN, jnp.eye(3)), sch)
    model = cj.compose(bg, [c1, c2])
    x = cj.sample(key, model, sch, (N_MOM, 3), method="euler_maruyama", steps=5)
    law = sampler_law(model, sch, method="euler_maruyama", steps=5)
    gaussian_moment_check(x, law.mean, law.cov)


def test_plain_score_function_is_a_model(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)

    def score_fn(x, t):
        return p.score(x, t)

    a = cj.sample(key, score_fn, sch, (N_MOM, 3), steps=5)
    # without .denoise the final step is (x + sigma^2 s) / alpha: equal to the exact denoiser
    # for this model up to rounding (the model run shares the moment test's compiled sampler)
    c = cj.sample(key, p, sch, (N_MOM, 3), steps=5)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sch_name", ["vp", "ve", "cos"])
def test_time_grids(sch_name):
    sch = SCHEDULES[sch_name]

    @jax.jit
    def grids(sch):  # one compile per schedule type for the three grids
        out = {}
        for grid in ("uniform", "log_snr", "edm"):
            ts = time_grid(sch, 16, 1e-3, grid)
            out[grid] = (ts, jax.vmap(sch.log_snr)(ts))
        return out

    for grid, (ts, lam) in grids(sch).items():
        ts, lam = np.asarray(ts), np.asarray(lam, np.float64)
        assert ts.shape == (17,)
        assert ts[0] == np.float32(sch.t_max) and ts[-1] == np.float32(1e-3)
        assert np.all(np.diff(ts) < 0)
        if grid == "log_snr":  # equally spaced in log-SNR
            np.testing.assert_allclose(np.diff(lam), np.full(16, (lam[-1] - lam[0]) / 16),
                                       rtol=2e-3)
        if grid == "edm":  # equally spaced in r^(1/7), r = sigma / alpha = exp(-lam / 2)
            r7 = np.exp(-lam / 2) ** (1 / 7)
            np.testing.assert_allclose(np.diff(r7), np.full(16, (r7[-1] - r7[0]) / 16),
                                       rtol=2e-3)
        if grid == "uniform":
            np.testing.assert_allclose(np.diff(ts), (1e-3 - sch.t_max) / 16, rtol=1e-4)


def test_prefix_reproducibility_with_pilot_steps(key):
    """Particle i depends only on (key, i), also when the per-level step sizes come from the
    pilot ensemble (fixed size, keys derived from the main key): the SNR corrector here;
    annealed MALA is checked the same way, sharded, in test_samplers_sharding.py."""
    sch = SCHEDULES["vp"]
    p = _model(sch)
    kw = {"method": "predictor_corrector", "steps": 6}
    big = cj.sample(key, p, sch, (50, 3), **kw)
    small = cj.sample(key, p, sch, (7, 3), **kw)
    np.testing.assert_allclose(big[:7], small, rtol=1e-6, atol=1e-6)
    other = cj.sample(jax.random.fold_in(key, 1), p, sch, (7, 3), **kw)
    assert not np.allclose(other, small)


def test_jit_equals_eager(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)
    eager = cj.sample(key, p, sch, (N_MOM, 3), steps=5)  # the moment test's compiled sampler
    jitted = jax.jit(lambda k, m: cj.sample(k, m, sch, (N_MOM, 3), steps=5))(key, p)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


@pytest.fixture
def one_trace(monkeypatch):
    """The driver's compiled runs (both layouts) wrapped in ``chex.assert_max_traces(n=1)``, jit
    cache cleared before and after (so the count starts at the first call and no other test sees
    it)."""
    chex.clear_trace_counter()
    for name in ("_rows_run", "_columns_run"):
        monkeypatch.setattr(driver, name, chex.assert_max_traces(getattr(driver, name), n=1))
    driver._build.cache_clear()
    yield
    driver._build.cache_clear()
    chex.clear_trace_counter()


def test_no_retrace_for_new_model_numbers(key, one_trace):
    """New model and schedule numbers reuse the compiled sampler (one trace, checked by
    ``chex.assert_max_traces``), and are really used: the samples match the exact law of the NEW
    model."""
    sch = SCHEDULES["vp"]
    p1 = _model(sch)
    sch2 = cj.VPSchedule(0.2, 15.0)
    p2 = cj.diffuse(cj.Gaussian(MEAN + 1.0, 2.0 * COV), sch2)
    t0 = time.perf_counter()
    cj.sample(key, p1, sch, (N_MOM, 3), steps=5).block_until_ready()
    t1 = time.perf_counter()
    x2 = cj.sample(key, p2, sch2, (N_MOM, 3), steps=5).block_until_ready()  # no second trace
    t2 = time.perf_counter()
    print(f"EM first call here (trace + compile + run unless cached) {t1 - t0:.3f} s, call "
          f"with new numbers {t2 - t1:.4f} s")
    law = sampler_law(p2, sch2, method="euler_maruyama", steps=5)
    gaussian_moment_check(x2, law.mean, law.cov)


def test_return_info_and_trajectory(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)
    r = cj.sample(key, p, sch, (N_MOM, 3), steps=5, record_every=2)
    assert isinstance(r, cj.SampleResult)
    assert r.trajectory.shape == (3, N_MOM, 3)  # steps 0, 2, 4
    assert r.info.times.shape == (6,) and r.info.nonfinite.shape == (5,)
    assert int(r.info.nonfinite.sum()) == 0 and int(r.info.nonfinite_final) == 0
    assert r.info.acceptance is None and r.info.step_size is None
    # the trajectory is the same run: recording does not change the samples (the plain run is
    # the moment test's compiled sampler)
    plain = cj.sample(key, p, sch, (N_MOM, 3), steps=5)
    np.testing.assert_allclose(r.samples, plain, rtol=1e-5, atol=1e-5)
    # trajectory[0] is the prior draw N(0, I) of the VP schedule
    gaussian_moment_check(r.trajectory[0], np.zeros(3), np.eye(3))
    assert np.all(np.isfinite(r.trajectory))


@pytree_dataclass
class _NanBelow:
    """Score ``-x`` for ``t >= threshold``, NaN below: ONE compiled sampler serves both a
    failing (threshold 0.5) and a clean (threshold -1) run, the threshold being a leaf."""

    threshold: jax.Array

    def score(self, x, t):
        return jnp.where(t < self.threshold, jnp.full_like(x, jnp.nan), -x)


def test_nonfinite_reported_and_checkify(key):
    sch = SCHEDULES["vp"]
    bad, good = _NanBelow(jnp.asarray(0.5)), _NanBelow(jnp.asarray(-1.0))
    with pytest.warns(cj.NonFiniteWarning, match="8 of 8 particles"):
        r = jax.block_until_ready(cj.sample(key, bad, sch, (8, 2), steps=10, return_info=True))
    assert int(r.info.nonfinite[0]) == 0 and int(r.info.nonfinite[-1]) == 8
    assert int(r.info.nonfinite_final) == 8
    with pytest.raises(Exception, match="non-finite"):
        cj.sample(key, bad, sch, (8, 2), steps=10, check=True)
    ok = cj.sample(key, good, sch, (8, 2), steps=10, check=True)
    assert ok.shape == (8, 2) and np.all(np.isfinite(ok))


def test_bad_input(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)
    with pytest.raises(ValueError, match="shape must be a tuple"):
        cj.sample(key, p, sch, (10,))
    with pytest.raises(ValueError, match="shape must be a tuple"):
        cj.sample(key, p, sch, (0, 3))
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        cj.sample(key, p, sch, (10, 3), steps=0)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"t_min must lie in \(0, 1\)"):
            cj.sample(key, p, sch, (10, 3), t_min=bad)
    with pytest.raises(ValueError, match="t_min must be < schedule.t_max"):
        cj.sample(key, _model(SCHEDULES["cos"]), SCHEDULES["cos"], (10, 3), t_min=0.999)
    with pytest.raises(ValueError, match=r"must return shape \(3,\).*got \(4,\)"):
        cj.sample(key, lambda x, t: jnp.zeros(4), sch, (10, 3))
    with pytest.raises(ValueError, match=r"model.score failed.*\(2,\)"):
        cj.sample(key, p, sch, (10, 2))
    with pytest.raises(TypeError, match="needs model.log_prob"):
        cj.sample(key, lambda x, t: -x, sch, (10, 3), method="annealed_hmc")
    with pytest.raises(ValueError, match="unknown method 'heun'.*annealed_mala.*ode_heun"):
        cj.sample(key, p, sch, (10, 3), method="heun")
    with pytest.raises(TypeError, match="unknown option.*'eta'"):
        cj.sample(key, p, sch, (10, 3), method="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="eta must be"):
        cj.sample(key, p, sch, (10, 3), method="ddim", eta=2.0)
    with pytest.raises(ValueError, match="grid must be one of"):
        cj.sample(key, p, sch, (10, 3), grid="cosine")
    with pytest.raises(ValueError, match="x_init must have shape"):
        cj.sample(key, p, sch, (10, 3), x_init=jnp.zeros((10, 2)))
    with pytest.raises(ValueError, match="record_every must be <= steps"):
        cj.sample(key, p, sch, (10, 3), steps=5, record_every=6)
    with pytest.raises(ValueError, match="n_pilot must be an int >= 2"):
        cj.sample(key, p, sch, (10, 3), method="annealed_hmc", n_pilot=1)
    with pytest.raises(ValueError, match="n_pilot must be an int >= 2"):
        cj.sample(key, p, sch, (10, 3), method="predictor_corrector", n_pilot=2.5)
    with pytest.raises(TypeError, match="adapt must be a bool"):
        cj.sample(key, p, sch, (10, 3), method="annealed_mala", adapt=1)
    with pytest.raises(TypeError, match="unknown option.*'adapt_rate'"):
        cj.sample(key, p, sch, (10, 3), method="annealed_mala", adapt_rate=0.5)
    with pytest.raises(ValueError, match="sampler_law needs a kernel"):
        sampler_law(p, sch, method="annealed_mala", steps=5)
    with pytest.raises(ValueError, match="sampler_law needs a kernel"):
        sampler_law(p, sch, method="predictor_corrector", steps=5)


def test_registry_lists_all_methods():
    assert set(METHODS) >= {
        "euler_maruyama", "ode_euler", "ode_heun", "ddpm", "ddim", "predictor_corrector",
        "annealed_mala", "annealed_hmc",
    }


def test_particle_mesh_errors():
    with pytest.raises(ValueError, match="devices must be a non-empty"):
        cj.particle_mesh([])
    m = cj.particle_mesh(axis_name="p")
    assert m.axis_names == ("p",) and m.devices.size == jax.device_count()


# --------------------------------------------------------------------------- model calls
_CALLS = [0]


def _count(x):
    """Host side of one model evaluation (``jax.debug.callback``: unrolled per particle under
    ``vmap``, so the count is of particle evaluations)."""
    del x
    _CALLS[0] += 1


@pytree_dataclass
class _CountingModel(cj.Model):
    """``N(0, I)`` at every ``t`` (the VP prior): score ``-x``, ``log p = -|x|^2 / 2``; every
    evaluation (``score``, ``log_prob``, ``log_prob_and_score``) reports one call to the host."""

    has_log_prob = True

    def score(self, x, t):
        jax.debug.callback(_count, x)
        return -x

    def _log_prob(self, x, t):
        jax.debug.callback(_count, x)
        return -0.5 * jnp.sum(x * x)

    def _log_prob_and_score(self, x, t):
        jax.debug.callback(_count, x)
        return -0.5 * jnp.sum(x * x), -x


def _no_pilot(cls):
    """Options of a method class that skip its pilot ensemble (the pilot's evaluations do not
    belong to the main particles): a fixed corrector step, no step-size adaptation."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return ({"corrector_step": "fixed"} if "corrector_step" in fields else {}) | (
        {"adapt": False} if "adapt" in fields else {})


_CALLS_DEFAULT = ("euler_maruyama", "ode_heun", "predictor_corrector", "annealed_hmc")


@pytest.mark.parametrize("name", [n if n in _CALLS_DEFAULT else pytest.param(n, marks=_SLOW)
                                  for n in sorted(METHODS)
                                  # the library's own methods (another test file registers
                                  # a method from outside for the duration of its module)
                                  if METHODS[n].__module__.startswith("composition_jax")])
def test_model_calls_counts_the_evaluations_made(key, name):
    """``info.model_calls`` equals the evaluations a counting model sees, per particle: every
    registered method in rows (the columns layout runs the same ``transition``: checked on one
    tile of 8 for two methods)."""
    cls = METHODS[name]
    method = cls(**_no_pilot(cls))
    sch, steps = SCHEDULES["vp"], 3
    columns = method.elementwise and name in ("euler_maruyama", "ode_heun")
    layouts = [("rows", 2)] + ([("columns", 8)] if columns else [])
    for layout, n in layouts:
        _CALLS[0] = 0
        r = cj.sample(key, _CountingModel(), sch, (n, 2), method=method, steps=steps,
                      layout=layout, return_info=True,
                      **({"tile_size": 8} if layout == "columns" else {}))
        jax.block_until_ready(r)
        jax.effects_barrier()
        per_particle, rem = divmod(_CALLS[0], n)
        assert rem == 0, (name, layout, _CALLS[0])
        assert int(r.info.model_calls) == per_particle == steps * method.model_calls_per_step + 1
    if name == "ode_heun":  # without the final denoising step
        _CALLS[0] = 0
        r = cj.sample(key, _CountingModel(), sch, (2, 2), method=method, steps=steps,
                      layout="rows", return_info=True, denoise_final=False)
        jax.effects_barrier()
        assert int(r.info.model_calls) == _CALLS[0] // 2 == steps * 2
