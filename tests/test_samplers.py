"""Samplers: moments against the exact sampler law, reproducibility, retracing, errors."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sampler_helpers import gaussian_moment_check

import composition_jax as cj
from composition_jax.samplers import KERNELS, time_grid, trace_count
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
CASES = (
    [(m, o, "vp", 5, "uniform") for m, o in AFFINE_METHODS]
    + [
        ("euler_maruyama", {}, "ve", 20, "uniform"),
        ("ddpm", {}, "ve", 20, "uniform"),
        ("ddpm", {}, "cos", 20, "log_snr"),
        ("ode_heun", {}, "ve", 20, "edm"),
    ]
    + [
        pytest.param(m, o, "ve", 20, "uniform", marks=_SLOW)
        for m, o in AFFINE_METHODS
        if m not in ("euler_maruyama", "ddpm")
    ]
    + [
        pytest.param("euler_maruyama", {}, "vp", 100, "uniform", marks=_SLOW),
        pytest.param("ddim", {}, "ve", 100, "uniform", marks=_SLOW),
    ]
)


@pytest.mark.parametrize("method,opts,sch_name,steps,grid", CASES)
def test_moments_match_sampler_law(key, method, opts, sch_name, steps, grid):
    sch = SCHEDULES[sch_name]
    p = _model(sch)
    n = 4000
    x = cj.sample(key, p, sch, (n, 3), method=method, steps=steps, grid=grid, **opts)
    law = sampler_law(p, sch, method=method, steps=steps, grid=grid, **opts)
    zm, zc = gaussian_moment_check(x, law.mean, law.cov)
    print(f"{method} {sch_name} steps={steps}: worst z mean {zm:.2f}, cov {zc:.2f}")


def test_sampler_law_detects_a_wrong_law(key):
    """The moment check has power: samples of 20 steps fail against the 5-step law."""
    sch = SCHEDULES["vp"]
    p = _model(sch)
    x = cj.sample(key, p, sch, (4000, 3), method="ddpm", steps=20)
    wrong = sampler_law(p, sch, method="ddpm", steps=5)
    with pytest.raises(AssertionError):
        gaussian_moment_check(x, wrong.mean, wrong.cov)


def test_composition_moments_match_sampler_law(key):
    sch = SCHEDULES["vp"]
    bg = cj.diffuse(cj.Gaussian(jnp.zeros(3), 2.0 * jnp.eye(3)), sch)
    c1 = _model(sch)
    c2 = cj.diffuse(cj.Gaussian(-MEAN, jnp.eye(3)), sch)
    model = cj.compose(bg, [c1, c2])
    x = cj.sample(key, model, sch, (4000, 3), method="euler_maruyama", steps=20)
    law = sampler_law(model, sch, method="euler_maruyama", steps=20)
    gaussian_moment_check(x, law.mean, law.cov)


def test_plain_score_function_is_a_model(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)

    def score_fn(x, t):
        return p.score(x, t)

    a = cj.sample(key, score_fn, sch, (64, 3), steps=10)
    # without .denoise the final step is (x + sigma^2 s) / alpha: equal to the exact denoiser
    # for this model up to rounding
    c = cj.sample(key, p, sch, (64, 3), steps=10)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grid", ["uniform", "log_snr", "edm"])
@pytest.mark.parametrize("sch_name", ["vp", "ve", "cos"])
def test_time_grids(grid, sch_name):
    sch = SCHEDULES[sch_name]
    ts = np.asarray(time_grid(sch, 16, 1e-3, grid))
    assert ts.shape == (17,)
    assert ts[0] == np.float32(sch.t_max) and ts[-1] == np.float32(1e-3)
    assert np.all(np.diff(ts) < 0)
    lam = np.asarray(jax.vmap(sch.log_snr)(jnp.asarray(ts)), np.float64)
    if grid == "log_snr":  # equally spaced in log-SNR
        np.testing.assert_allclose(np.diff(lam), np.full(16, (lam[-1] - lam[0]) / 16), rtol=2e-3)
    if grid == "edm":  # equally spaced in r^(1/7), r = sigma / alpha = exp(-lam / 2)
        r7 = np.exp(-lam / 2) ** (1 / 7)
        np.testing.assert_allclose(np.diff(r7), np.full(16, (r7[-1] - r7[0]) / 16), rtol=2e-3)
    if grid == "uniform":
        np.testing.assert_allclose(np.diff(ts), (1e-3 - sch.t_max) / 16, rtol=1e-4)


def test_batched_normal_prefix_property(key):
    """The driver draws one batched normal per step; row i must not depend on n."""
    assert jax.config.jax_threefry_partitionable
    a = jax.random.normal(key, (1000, 2, 5))
    b = jax.random.normal(key, (37, 2, 5))
    np.testing.assert_array_equal(a[:37], b)
    u = jax.random.uniform(key, (1000, 3))
    np.testing.assert_array_equal(u[:37], jax.random.uniform(key, (37, 3)))


@pytest.mark.parametrize("method", ["annealed_mala"])
def test_prefix_reproducibility_and_jit(key, method):
    sch = SCHEDULES["vp"]
    p = _model(sch)
    big = cj.sample(key, p, sch, (50, 3), method=method, steps=8)
    small = cj.sample(key, p, sch, (7, 3), method=method, steps=8)
    np.testing.assert_allclose(big[:7], small, rtol=1e-6, atol=1e-6)
    jitted = jax.jit(lambda k, m: cj.sample(k, m, sch, (7, 3), method=method, steps=8))(key, p)
    np.testing.assert_allclose(jitted, small, rtol=1e-6, atol=1e-6)
    other = cj.sample(jax.random.fold_in(key, 1), p, sch, (7, 3), method=method, steps=8)
    assert not np.allclose(other, small)


def test_no_retrace_for_new_model_numbers(key):
    sch = SCHEDULES["vp"]
    p1 = _model(sch)
    p2 = cj.diffuse(cj.Gaussian(MEAN + 1.0, 2.0 * COV), cj.VPSchedule(0.2, 15.0))
    t0 = time.perf_counter()
    before = trace_count()
    cj.sample(key, p1, sch, (16, 3), method="ddim", steps=13).block_until_ready()
    t1 = time.perf_counter()
    cj.sample(key, p1, sch, (16, 3), method="ddim", steps=13).block_until_ready()
    t2 = time.perf_counter()
    x2 = cj.sample(key, p2, cj.VPSchedule(0.2, 15.0), (16, 3), method="ddim", steps=13)
    assert trace_count() - before == 1
    print(f"ddim first call (trace + compile + run) {t1 - t0:.3f} s, cached call {t2 - t1:.4f} s")
    law = sampler_law(p2, cj.VPSchedule(0.2, 15.0), method="ddim", steps=13)
    assert np.all(np.isfinite(x2)) and law.mean.shape == (3,)


def test_return_info_and_trajectory(key):
    sch = SCHEDULES["vp"]
    p = _model(sch)
    r = cj.sample(key, p, sch, (10, 3), steps=10, record_every=3, denoise_final=False)
    assert isinstance(r, cj.SampleResult)
    assert r.trajectory.shape == (4, 10, 3)  # steps 0, 3, 6, 9
    assert r.info.times.shape == (11,) and r.info.nonfinite.shape == (10,)
    assert int(r.info.nonfinite.sum()) == 0 and int(r.info.nonfinite_final) == 0
    assert r.info.acceptance is None
    # the trajectory is the same run: recording does not change the samples
    plain = cj.sample(key, p, sch, (10, 3), steps=10, denoise_final=False)
    np.testing.assert_allclose(r.samples, plain, rtol=1e-6, atol=1e-6)
    # trajectory[0] is the prior draw, trajectory[-1] the state after step 9: one more EM step
    # from there gives the final (undenoised) samples, so a run of 9 steps to times[9] from
    # the same key reproduces trajectory[-1]
    nine = cj.sample(key, p, sch, (10, 3), steps=9, t_min=float(r.info.times[9]),
                     denoise_final=False)
    assert nine.shape == (10, 3) and np.all(np.isfinite(r.trajectory))


def test_nonfinite_reported_and_checkify(key):
    sch = SCHEDULES["vp"]

    def bad_score(x, t):
        return jnp.where(t < 0.5, jnp.full_like(x, jnp.nan), -x)

    r = cj.sample(key, bad_score, sch, (8, 2), steps=10, return_info=True)
    assert int(r.info.nonfinite[0]) == 0 and int(r.info.nonfinite[-1]) == 8
    assert int(r.info.nonfinite_final) == 8
    with pytest.raises(Exception, match="non-finite"):
        cj.sample(key, bad_score, sch, (8, 2), steps=10, check=True)
    ok = cj.sample(key, lambda x, t: -x, sch, (8, 2), steps=10, check=True)
    assert ok.shape == (8, 2)


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
    with pytest.raises(ValueError, match="sampler_law needs a kernel"):
        sampler_law(p, sch, method="annealed_mala", steps=5)
    with pytest.raises(ValueError, match="sampler_law needs a kernel"):
        sampler_law(p, sch, method="predictor_corrector", steps=5)


def test_registry_lists_all_methods():
    assert set(KERNELS) >= {
        "euler_maruyama", "ode_euler", "ode_heun", "ddpm", "ddim", "predictor_corrector",
        "annealed_mala", "annealed_hmc",
    }
