"""No silent failure in cj.sample (issue 13 item 2, issue 18): non-finite samples are reported
(warn / raise / ignore, eager, under jit and vmap, both layouts, sharded), compositions whose
exact t = 0 law does not exist are flagged, and a bad ``key`` gets a clear TypeError. The checks
never change the samples."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax._pytree import pytree_dataclass

SCH = cj.VPSchedule()
PB = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), SCH)
P1 = cj.diffuse(cj.Gaussian(jnp.array([2.0, 0.0]), 0.25 * jnp.eye(2)), SCH)


@pytree_dataclass
class _NanBelow:
    """Score ``-x`` for ``t >= threshold``, NaN below (the threshold is a leaf)."""

    threshold: jax.Array

    def score(self, x, t):
        return jnp.where(t < self.threshold, jnp.full_like(x, jnp.nan), -x)


BAD = _NanBelow(jnp.asarray(0.5))  # every particle NaN from t < 0.5 on
GOOD = _NanBelow(jnp.asarray(-1.0))
KW = {"steps": 4}


def _recorded(fn, category=Warning):
    """Run ``fn`` (blocking on its output) and return its warnings of ``category``."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
        jax.block_until_ready(out)
    return out, [w for w in rec if issubclass(w.category, category)]


# ------------------------------------------------------------------ the literal findings
def test_literal_guidance_nan_warns_with_count(key):
    """Issue 13: 256 NaN rows came back without a word (float32 overflow; float64 stays
    finite, so an x64 session runs it in float32)."""
    f32 = {"dtype": jnp.float32} if jax.config.read("jax_enable_x64") else {}

    def run():
        return cj.sample(key, cj.guidance(P1, PB, 1e3), SCH, (256, 2), method="ode_heun",
                         steps=200, **f32)

    x, rec = _recorded(run, RuntimeWarning)
    assert not np.isfinite(np.asarray(x)).any()  # the samples themselves are unchanged
    assert len(rec) == 1, [str(w.message) for w in rec]
    msg = str(rec[0].message)
    assert "256 of 256 particles are non-finite" in msg
    assert "return_info" in msg and "check=True" in msg


def test_literal_non_normalizable_composition_warns(key):
    """Issue 13: a composition that composed_distribution refuses was sampled silently."""
    comp = cj.compose(PB, [P1], weights=[-1.0])
    with pytest.raises(ValueError, match="not normalizable") as exact:
        cj.composed_distribution(PB, [P1], weights=[-1.0])
    with pytest.warns(UserWarning, match="not normalizable") as rec:
        x = cj.sample(key, comp, SCH, (64, 2), steps=10)
    assert np.isfinite(np.asarray(x)).all()
    assert str(exact.value) in str(rec[-1].message)  # the reason, word for word


@pytest.mark.parametrize(
    "bad", [1.0, 3, np.zeros(3, np.uint32), jnp.zeros((2,), jnp.float32)],
    ids=["float", "int", "uint32-shape-3", "float-array"],
)
def test_literal_bad_key_type_error(bad):
    """Issue 18: JAX's raw 'invalid PRNG key data' becomes a TypeError naming key."""
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key: pass jax\.random\.key\(seed\)"):
        cj.sample(bad, P1, SCH, (4, 2), **KW)


# ------------------------------------------------------------------ keys
def test_split_keys_rejected_and_legacy_key_accepted():
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(TypeError, match=r"key must be .*2 keys.*jax\.vmap"):
        cj.sample(keys, P1, SCH, (4, 2), **KW)
    a = cj.sample(jax.random.PRNGKey(3), P1, SCH, (4, 2), **KW)
    b = cj.sample(jax.random.key(3), P1, SCH, (4, 2), **KW)
    np.testing.assert_array_equal(a, b)  # the legacy key is the same stream


# ------------------------------------------------------------------ nonfinite modes
def test_invalid_mode():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        cj.sample(jax.random.key(0), P1, SCH, (4, 2), nonfinite="loud", **KW)


def test_warn_eager_once_with_first_step(key):
    r, rec = _recorded(lambda: cj.sample(key, BAD, SCH, (8, 2), return_info=True, **KW),
                       cj.NonFiniteWarning)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "8 of 8 particles" in msg
    first = int(np.argmax(np.asarray(r.info.nonfinite) > 0))
    assert f"after step {first} of 4" in msg
    assert int(r.info.nonfinite_final) == 8


def test_raise_eager(key):
    with pytest.raises(cj.NonFiniteError, match="8 of 8 particles") as e:
        cj.sample(key, BAD, SCH, (8, 2), nonfinite="raise", **KW)
    assert isinstance(e.value, FloatingPointError) and isinstance(e.value, RuntimeError)
    x = cj.sample(key, GOOD, SCH, (8, 2), nonfinite="raise", **KW)  # same program, finite
    assert np.isfinite(np.asarray(x)).all()


def test_ignore_is_silent(key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = cj.sample(key, BAD, SCH, (8, 2), nonfinite="ignore", **KW)
        jax.block_until_ready(x)
    assert not np.isfinite(np.asarray(x)).any()


def test_warn_and_raise_under_jit(key):
    run = jax.jit(lambda k, m: cj.sample(k, m, SCH, (8, 2), **KW))
    _, rec = _recorded(lambda: run(key, BAD), cj.NonFiniteWarning)
    assert len(rec) == 1 and "8 of 8 particles" in str(rec[0].message)
    _, rec = _recorded(lambda: run(key, GOOD), Warning)  # same compiled program, no report
    assert rec == []
    run_raise = jax.jit(lambda k, m: cj.sample(k, m, SCH, (8, 2), nonfinite="raise", **KW))
    with pytest.raises(RuntimeError, match="NonFiniteError: cj.sample: 8 of 8"):
        jax.block_until_ready(run_raise(key, BAD))
    assert np.isfinite(np.asarray(run_raise(key, GOOD))).all()


def test_vmap_reports_once_over_the_batch(key):
    keys = jax.random.split(key, 3)
    run = jax.vmap(lambda k: cj.sample(k, BAD, SCH, (8, 2), **KW))
    x, rec = _recorded(lambda: run(keys), cj.NonFiniteWarning)
    assert x.shape == (3, 8, 2)
    assert len(rec) == 1 and "24 of 24 particles" in str(rec[0].message)
    _, rec = _recorded(lambda: jax.jit(run)(keys), cj.NonFiniteWarning)
    assert len(rec) == 1 and "24 of 24 particles" in str(rec[0].message)
    good = jax.vmap(lambda k: cj.sample(k, GOOD, SCH, (8, 2), **KW))
    _, rec = _recorded(lambda: good(keys), Warning)
    assert rec == []


def test_columns_layout_one_warning_for_all_tiles(key):
    kw = dict(KW, layout="columns", tile_size=24)  # 50 particles: 3 tiles and padding
    _, rec = _recorded(lambda: cj.sample(key, BAD, SCH, (50, 2), **kw), cj.NonFiniteWarning)
    assert len(rec) == 1 and "50 of 50 particles" in str(rec[0].message)
    _, rec = _recorded(lambda: cj.sample(key, BAD, SCH, (50, 2), return_info=True, **kw),
                       cj.NonFiniteWarning)
    assert len(rec) == 1 and "after step" in str(rec[0].message)
    with pytest.raises(cj.NonFiniteError, match="50 of 50"):
        cj.sample(key, BAD, SCH, (50, 2), nonfinite="raise", **kw)


def test_record_every_counts_final_samples(key):
    r, rec = _recorded(lambda: cj.sample(key, BAD, SCH, (8, 2), record_every=2, **KW),
                       cj.NonFiniteWarning)
    assert r.trajectory.shape == (3, 8, 2)
    assert len(rec) == 1 and "8 of 8 particles" in str(rec[0].message)


def test_nan_from_final_denoise_only(key):
    m = cj.FunctionModel(lambda x, t: -x, denoise_fn=lambda x, t: jnp.full_like(x, jnp.nan))
    _, rec = _recorded(lambda: cj.sample(key, m, SCH, (8, 2), return_info=True, **KW),
                       cj.NonFiniteWarning)
    assert len(rec) == 1 and "final denoising step" in str(rec[0].message)


def test_check_true_replaces_the_report(key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="non-finite"):
            cj.sample(key, BAD, SCH, (8, 2), check=True, **KW)


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_finite_run_is_silent_and_samples_bit_identical(key, layout):
    model = cj.compose(PB, [P1], weights=jnp.array([0.5]))  # normalizable: no warning
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("warn", "raise", "ignore"):
            out[mode] = np.asarray(cj.sample(key, model, SCH, (40, 2), layout=layout,
                                             nonfinite=mode, **KW))
        j = jax.jit(lambda k: cj.sample(k, model, SCH, (40, 2), layout=layout, **KW))(key)
        jax.block_until_ready(j)
    np.testing.assert_array_equal(out["warn"], out["ignore"])
    np.testing.assert_array_equal(out["raise"], out["ignore"])


def test_nonfinite_report_does_not_break_grad(key):
    g = jax.grad(lambda s: jnp.sum(cj.sample(key, cj.guidance(P1, PB, s), SCH, (8, 2),
                                            method="ode_euler", **KW)))(jnp.float32(1.5))
    assert np.isfinite(float(g))


# ------------------------------------------------------------------ composition law
@pytest.mark.parametrize("model", [
    cj.compose(PB, [P1]),
    cj.guidance(P1, PB, 1e3),  # normalizable (it is the sampler that overflows)
    cj.linear_combination([PB, P1], [0.5, 0.5]),
], ids=["compose", "guidance", "linear"])
def test_normalizable_compositions_are_silent(key, model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.CompositionWarning)
        cj.sample(key, model, SCH, (4, 2), nonfinite="ignore", **KW)


def test_linear_combination_and_guidance_without_law_warn(key):
    with pytest.warns(cj.CompositionWarning, match="not normalizable"):
        cj.sample(key, cj.linear_combination([PB, P1], [2.0, -1.0]), SCH, (4, 2),
                  nonfinite="ignore", **KW)
    with pytest.warns(cj.CompositionWarning, match="not normalizable"):
        cj.sample(key, cj.guidance(P1, PB, -1.0), SCH, (4, 2), **KW)


def test_no_closed_form_or_traced_weights_are_silent(key):
    mix = cj.diffuse(cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[1.0, 0.0], [-1.0, 0.0]]),
                                        jnp.stack([jnp.eye(2)] * 2)), SCH)
    with pytest.raises(NotImplementedError):  # mixture background to the power 1 - 2 = -1
        cj.composed_distribution(mix, [P1, P1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.CompositionWarning)
        cj.sample(key, cj.compose(mix, [P1, PB]), SCH, (4, 2), **KW)
        run = jax.jit(lambda w, k: cj.sample(k, cj.compose(PB, [P1], w), SCH, (4, 2), **KW))
        jax.block_until_ready(run(jnp.array([-1.0]), key))  # traced weights: no check


def test_composition_check_any_family_and_size_cap():
    """The check asks the families themselves (their Gaussian-mixture form): a narrow
    background to the power -1 under two 40-component mixtures (1600 components) is flagged;
    with 70 components each the exact law (4900 components, beyond the check's 4096) is not
    computed: silent, although ``composed_distribution`` raises for it. ``warn_if_no_law`` is
    the check ``cj.sample`` runs (no sampler is compiled here)."""
    from composition_jax.samplers.driver import warn_if_no_law

    narrow = cj.diffuse(cj.Gaussian(jnp.zeros(2), 0.01 * jnp.eye(2)), SCH)

    def mix(k):
        ang = jnp.linspace(0.0, 2.0 * jnp.pi, k, endpoint=False)
        means = 3.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
        return cj.diffuse(cj.GaussianMixture(jnp.full((k,), 1.0 / k), means,
                                             jnp.stack([jnp.eye(2)] * k)), SCH)

    with pytest.warns(cj.CompositionWarning, match="not normalizable"):
        warn_if_no_law(cj.compose(narrow, [mix(40), mix(40)]))
    big = cj.compose(narrow, [mix(70), mix(70)])
    with pytest.raises(ValueError, match="not normalizable"):
        cj.composed_distribution(narrow.dist, [c.dist for c in big.conditionals])
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.CompositionWarning)
        warn_if_no_law(big)


def test_composition_check_is_cached(key, monkeypatch):
    from composition_jax.samplers import driver

    calls = []
    real = driver._law_problem
    monkeypatch.setattr(driver, "_law_problem", lambda tree: calls.append(1) or real(tree))
    comp = cj.compose(PB, [P1], weights=jnp.array([-1.0]))
    for _ in range(3):
        with pytest.warns(cj.CompositionWarning):
            cj.sample(key, comp, SCH, (4, 2), **KW)
    assert len(calls) == 1
    with pytest.warns(cj.CompositionWarning):  # new numbers: checked again
        cj.sample(key, cj.compose(PB, [P1], weights=jnp.array([-2.0])), SCH, (4, 2), **KW)
    assert len(calls) == 2


# ------------------------------------------------------------------ sharded
SHARDED = textwrap.dedent(
    """
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    import composition_jax as cj
    from composition_jax._pytree import pytree_dataclass
    assert len(jax.devices()) == 4, jax.devices()

    @pytree_dataclass
    class NanBelow:
        threshold: jax.Array
        def score(self, x, t):
            return jnp.where(t < self.threshold, jnp.full_like(x, jnp.nan), -x)

    sch, key, mesh = cj.VPSchedule(), jax.random.key(0), cj.particle_mesh()
    bad, good = NanBelow(jnp.asarray(0.5)), NanBelow(jnp.asarray(-1.0))
    for layout in ("rows", "columns"):
        run = jax.jit(lambda k, m: cj.sample(k, m, sch, (64, 2), steps=3, mesh=mesh,
                                             layout=layout))
        for fn in (run, lambda k, m: cj.sample(k, m, sch, (64, 2), steps=3, mesh=mesh,
                                               layout=layout)):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                x = jax.block_until_ready(fn(key, bad))
                assert len(x.sharding.device_set) == 4, x.sharding
            msgs = [str(w.message) for w in rec if w.category is cj.NonFiniteWarning]
            assert len(msgs) == 1 and "64 of 64" in msgs[0], (layout, msgs)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                jax.block_until_ready(fn(key, good))
        try:
            cj.sample(key, bad, sch, (64, 2), steps=3, mesh=mesh, layout=layout,
                      nonfinite="raise")
        except cj.NonFiniteError as e:
            assert "64 of 64" in str(e)
        else:
            raise AssertionError("no NonFiniteError")
    print("SHARDED_REPORT_OK")
    """
)


def test_sharded_runs_report_once():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                        " --xla_backend_optimization_level=0")
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", SHARDED], check=False, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SHARDED_REPORT_OK" in r.stdout


# ------------------------------------------------------------------ persistent compilation cache
def _callbacks(jaxpr) -> int:
    """Host-callback equations in ``jaxpr`` and all its sub-jaxprs."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    n = 0
    for eqn in jaxpr.eqns:
        n += "callback" in eqn.primitive.name
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                    n += _callbacks(sub)
    return n


@pytest.mark.parametrize("mode", ["warn", "raise"])
def test_compiled_program_holds_no_host_callback(key, mode):
    """The compiled ``cj.sample`` program returns the non-finite counts and holds no host
    callback (JAX does not store programs with host callbacks in its persistent compilation
    cache); traced by a caller (here ``make_jaxpr``), the report is staged in the CALLER's
    program, outside the compiled run, as one conditional callback."""
    for layout in ("rows", "columns"):
        closed = jax.make_jaxpr(lambda k, lay=layout: cj.sample(
            k, BAD, SCH, (8, 2), layout=lay, nonfinite=mode, **KW))(key)
        runs = [e for e in closed.jaxpr.eqns if "jaxpr" in e.params
                and "_run" in str(e.params.get("name"))]
        assert len(runs) == 1, [e.primitive.name for e in closed.jaxpr.eqns]
        assert _callbacks(runs[0].params["jaxpr"]) == 0
        assert _callbacks(closed) == 1


CACHE_PROBE = textwrap.dedent(
    """
    import collections, sys
    import jax, jax.numpy as jnp
    from jax import monitoring
    import composition_jax as cj
    events = collections.Counter()
    monitoring.register_event_listener(lambda name, **kw: events.update([name]))
    sch = cj.VPSchedule()
    p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sch)
    jax.block_until_ready(cj.sample(jax.random.key(0), p, sch, (16, 2), steps=5,
                                    nonfinite=sys.argv[1]))
    print("REQUESTS", events["/jax/compilation_cache/compile_requests_use_cache"],
          "HITS", events["/jax/compilation_cache/cache_hits"])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["warn", "raise", "ignore"])
def test_second_process_hits_the_persistent_cache(tmp_path, mode):
    """A second process running the same small ``cj.sample`` finds EVERY program it compiles
    (the sampler's included) in the persistent compilation cache the first one wrote."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    out = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", CACHE_PROBE, mode], check=False, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        words = r.stdout.split()
        out.append((int(words[words.index("REQUESTS") + 1]), int(words[words.index("HITS") + 1])))
    (req1, hits1), (req2, hits2) = out
    assert hits1 == 0 and req2 == req1 > 0 and hits2 == req2, out
