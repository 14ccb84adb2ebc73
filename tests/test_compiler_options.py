"""``cj.sample(compiler_options=)`` (and ``smc_sample``'s): the
per-platform default (512-bit vectors on CPU), options reaching XLA's compiler for a top-level
run, none for a run traced by the caller's ``jit``, and the argument's checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.samplers import driver, smc

SCH = cj.VPSchedule()
P = cj.diffuse(cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [2.0, 0.0]]),
                                  jax.vmap(jnp.diag)(jnp.array([[0.4, 0.3], [0.2, 0.5]])),
                                  covariance="diag"), SCH)
KW = {"steps": 6, "layout": "rows"}
WIDTH = "xla_cpu_prefer_vector_width"


@pytest.fixture
def built(monkeypatch):
    """The ``_Config`` of every compiled run in call order."""
    seen = []
    real = driver._build
    monkeypatch.setattr(driver, "_build", lambda cfg: seen.append(cfg) or real(cfg))
    return seen


YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_default_options_per_platform():
    assert driver.check_compiler_options(None, "cpu") == ((WIDTH, 512),)
    # the columns layout's matrix-product forms (d > 8) without YNNPACK fusions, on CPU only
    assert driver.check_compiler_options(None, "cpu", "columns", 9) == ((YNN, ""), (WIDTH, 512))
    assert driver.check_compiler_options(None, "cpu", "columns", 8) == ((WIDTH, 512),)
    assert driver.check_compiler_options(None, "cpu", "rows", 64) == ((WIDTH, 512),)
    assert driver.check_compiler_options(None, "gpu", "columns", 64) == ()
    assert driver.check_compiler_options({WIDTH: 256}, "cpu", "columns", 64) == ((WIDTH, 256),)
    for platform in ("gpu", "tpu", "cuda"):
        assert driver.check_compiler_options(None, platform) == ()
    assert driver.check_compiler_options({}, "cpu") == ()
    opts = {WIDTH: 256, "xla_cpu_enable_fast_math": False}
    assert driver.check_compiler_options(opts, "gpu") == tuple(sorted(opts.items()))


def test_smc_takes_the_same_options(key, monkeypatch):
    """``smc_sample`` compiles with the same default; an option XLA does not know fails in
    XLA; a bad value is a TypeError naming the argument."""
    seen, real = [], smc._build
    monkeypatch.setattr(smc, "_build", lambda cfg: seen.append(cfg) or real(cfg))

    def run(**kw):
        return smc.smc_sample(key, P, SCH, (16, 2), steps=4, **kw)

    assert np.all(np.isfinite(np.asarray(run())))
    assert seen[-1].compiler_options == ((WIDTH, 512),)
    with pytest.raises(RuntimeError, match="xla_no_such_option"):
        run(compiler_options={"xla_no_such_option": 1})
    with pytest.raises(TypeError, match="compiler_options must be None or a mapping"):
        run(compiler_options="fast")


def test_options_reach_the_compiler(key, built):
    """The default and an explicit width compile (their samples agree to rounding: 512-bit
    vectors may round a reduction differently); an option XLA does not know fails in XLA,
    which shows the options are passed to it."""
    wide = np.asarray(cj.sample(key, P, SCH, (64, 2), **KW))
    narrow = np.asarray(cj.sample(key, P, SCH, (64, 2), compiler_options={WIDTH: 256}, **KW))
    assert [c.compiler_options for c in built] == [((WIDTH, 512),), ((WIDTH, 256),)]
    np.testing.assert_allclose(narrow, wide, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="xla_no_such_option"):
        cj.sample(key, P, SCH, (64, 2), compiler_options={"xla_no_such_option": 1}, **KW)


def test_traced_run_takes_the_callers_options(key, built):
    """Inside the caller's ``jit`` JAX forbids options on the nested run: none are passed, so
    even an unknown one compiles (the caller's program, with the caller's options), and the
    samples match the top-level run with the same width to rounding."""
    def run(k):
        return cj.sample(k, P, SCH, (64, 2), compiler_options={"xla_no_such_option": 1},
                         nonfinite="ignore", **KW)

    out = jax.jit(run, compiler_options={WIDTH: 256})(key)
    assert [c.compiler_options for c in built] == [()]
    eager = cj.sample(key, P, SCH, (64, 2), compiler_options={WIDTH: 256}, **KW)
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [[(WIDTH, 512)], {WIDTH: None}, {1: 2}, "fast"])
def test_bad_compiler_options(key, bad):
    with pytest.raises(TypeError, match="compiler_options must be None or a mapping"):
        cj.sample(key, P, SCH, (4, 2), compiler_options=bad, **KW)
