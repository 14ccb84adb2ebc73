"""Tiling of the particle-minor ("columns") layout: the backend policy (cache-sized tiles on CPU,
one memory-bounded tile per device on accelerators, forced here on CPU), the ``tile_size``
option, and the same samples for every tiling (particle ``i`` depends only on ``(key, i)``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.samplers import driver

SCH = cj.VPSchedule()
N, STEPS = 100, 6


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)

    def iso(k):
        w = rng.dirichlet(np.ones(k)).astype(np.float32)
        m = rng.normal(0.0, 2.0, (k, 2)).astype(np.float32)
        v = rng.uniform(0.2, 0.6, k).astype(np.float32)
        return cj.diffuse(cj.GaussianMixture(jnp.asarray(w), jnp.asarray(m),
                                             jnp.asarray(v)[:, None, None] * jnp.eye(2)), SCH)

    return cj.compose(iso(4), [iso(3), iso(2)], weights=jnp.array([1.0, 0.5]))


@pytest.fixture
def built(monkeypatch):
    """The ``_Config`` of every compiled run (``driver._build``'s argument) in call order."""
    seen = []
    real = driver._build

    def spy(cfg):
        seen.append(cfg)
        return real(cfg)

    monkeypatch.setattr(driver, "_build", spy)
    return seen


def test_tiles_cover_every_particle_once():
    """``_tiles``: B a multiple of 8, at most ``tile`` rounded up to 8, T tiles per device
    covering the device's share, padding below 8 particles per tile."""
    for n in (1, 7, 8, 9, 100, 16384, 16385, 100_003):
        for devices in (1, 2, 8):
            for tile in (1, 8, 24, 100, 16384, 1 << 40):
                B, T, n_pad = driver._tiles(n, devices, tile)
                per_dev = -(-n // devices)
                assert B % 8 == 0 and B <= -(-tile // 8) * 8 and T >= 1
                assert n_pad == devices * T * B and T * B >= per_dev
                assert T * B - per_dev < 8 * T  # padding
                assert T == -(-per_dev // tile)


def test_tile_plan_policy():
    """CPU: ``COLUMN_TILE``; accelerators: the byte budget over ``itemsize d (2 + m)``."""
    assert driver.tile_plan("cpu", 2, 1, jnp.float32) == driver.COLUMN_TILE
    assert driver.tile_plan("cpu", 30, 0, jnp.float64) == driver.COLUMN_TILE
    budget = driver.COLUMN_TILE_BYTES
    for platform in ("gpu", "tpu", "cuda", "rocm"):
        for d, m, dtype in ((2, 1, jnp.float32), (3, 0, jnp.float32), (32, 2, jnp.float64)):
            per = jnp.dtype(dtype).itemsize * d * (2 + m)
            b = driver.tile_plan(platform, d, m, dtype)
            assert b % 8 == 0 and b * per <= budget < (b + 8) * per
    # one tile of a million particles at d = 2 (float32, one normal per step: 24 bytes each)
    assert driver._tiles(1_000_000, 1, driver.tile_plan("gpu", 2, 1, jnp.float32))[1] == 1
    # the CPU policy runs the same million as 62 sequential tiles
    assert driver._tiles(1_000_000, 1, driver.tile_plan("cpu", 2, 1, jnp.float32))[1] == 62
    assert driver.tile_plan("gpu", 10**9, 1, jnp.float32) == 8  # never below one vector


@pytest.mark.parametrize("method", ["euler_maruyama",
                                    pytest.param("ode_heun", marks=pytest.mark.slow)])
def test_same_samples_for_every_tiling(key, model, built, method):
    """One tile (the policy for n = 100 on CPU), tiles of 8, 24 and 40 (padding in every
    case): bit-identical samples; each run compiled with the tile it was asked for."""
    runs = {}
    for tile in (None, 8, 24, 40):
        runs[tile] = np.asarray(cj.sample(key, model, SCH, (N, 2), method=method, steps=STEPS,
                                          layout="columns", tile_size=tile))
    assert [c.tile for c in built] == [driver.COLUMN_TILE, 8, 24, 40]
    assert [driver._tiles(N, 1, c.tile)[1] for c in built] == [1, 13, 5, 3]
    assert np.all(np.isfinite(runs[None]))
    for tile in (8, 24, 40):
        np.testing.assert_array_equal(runs[tile], runs[None], err_msg=f"tile_size={tile}")
    # prefix property, bit for bit, of the tiled run (the final denoising step is vmapped over
    # the (n, d) rows afterwards, whose rounding XLA may vectorize differently for other n)
    kw = {"method": method, "steps": STEPS, "layout": "columns", "denoise_final": False}
    big = cj.sample(key, model, SCH, (N, 2), tile_size=24, **kw)
    small = cj.sample(key, model, SCH, (9, 2), tile_size=8, **kw)
    np.testing.assert_array_equal(np.asarray(small), np.asarray(big)[:9])


def test_accelerator_policy_forced_on_cpu(key, model, built, monkeypatch):
    """The GPU/TPU policy, forced on CPU: one tile for the whole batch; with a byte budget of
    40 particles (40 * 2 * (2 + 1) * 4 bytes), memory-bounded tiles of 40; the samples equal the
    CPU policy's bit for bit."""
    kw = {"method": "euler_maruyama", "steps": STEPS}
    cpu = np.asarray(cj.sample(key, model, SCH, (N, 2), **kw))
    monkeypatch.setattr(driver, "_platform", lambda mesh: "gpu")
    gpu = np.asarray(cj.sample(key, model, SCH, (N, 2), **kw))
    gpu_tile = driver.tile_plan("gpu", 2, 1, jnp.float32)
    monkeypatch.setattr(driver, "COLUMN_TILE_BYTES", 40 * 2 * 3 * 4)
    bounded = np.asarray(cj.sample(key, model, SCH, (N, 2), **kw))
    assert [c.layout for c in built] == ["columns"] * 3
    assert built[0].tile == driver.COLUMN_TILE
    assert built[1].tile == gpu_tile == (1 << 30) // 24 // 8 * 8
    assert built[2].tile == 40 and driver._tiles(N, 1, 40)[:2] == (40, 3)
    np.testing.assert_array_equal(gpu, cpu)
    np.testing.assert_array_equal(bounded, cpu)


def test_tile_size_errors(key, model):
    for bad in (0, -8, 2.5, True, "16"):
        with pytest.raises(ValueError, match="tile_size must be None or an int >= 1"):
            cj.sample(key, model, SCH, (4, 2), steps=2, layout="columns", tile_size=bad)
    with pytest.raises(ValueError, match="tile_size=8 applies to layout='columns'"):
        cj.sample(key, model, SCH, (4, 2), steps=2, layout="rows", tile_size=8)
