"""The sampler-method protocol, tested for EVERY registered method (blackjax-style API tests):
parametrized over ``cj.METHODS``, so a new registration is tested automatically -- including
``damped_euler_maruyama``, a method defined in this file (outside the package) and registered
with one ``cj.register_method`` call."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax._pytree import pytree_dataclass
from composition_jax.samplers import time_grid


class DampedEulerMaruyama(cj.SamplerMethod):
    """Euler-Maruyama with its drift scaled by ``damping`` (``1``: Euler-Maruyama)."""

    damping: float = 0.5
    elementwise: ClassVar[bool] = True
    num_normals: ClassVar[int] = 1
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self):
        d = self.damping
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise ValueError(f"damping must lie in (0, 1], got {d!r}")

    def transition(self, model, schedule, x, normals, t, t_next):
        dt = t - t_next
        g2 = schedule.g2(t)
        drift = g2 * model.score(x, t) - schedule.drift_coeff(t) * x
        return x + self.damping * drift * dt + jnp.sqrt(g2 * dt) * normals[0]


NEW = "damped_euler_maruyama"
if NEW not in cj.METHODS:
    cj.register_method(NEW, DampedEulerMaruyama)


@pytest.fixture(scope="module", autouse=True)
def _unregister():
    yield
    cj.METHODS.pop(NEW, None)


NAMES = sorted(cj.METHODS)
SCH = cj.VPSchedule()
D = 2
MODEL = cj.diffuse(cj.Gaussian(jnp.array([1.0, -0.5]), jnp.array([[1.0, 0.3], [0.3, 0.5]])), SCH)
#: another valid option value per method (instances with it must differ)
OTHER = {"ddim": {"eta": 0.3}, "predictor_corrector": {"corrector_step": "fixed"},
         "ode_euler": {"s_churn": 1.0}, "ode_heun": {"s_noise": 1.003},
         "dpm_solver_2m": {"lower_order_final": False},
         "annealed_mala": {"mcmc_steps": 3}, "annealed_hmc": {"n_leapfrog": 2},
         NEW: {"damping": 1.0}}
SMALL = {"predictor_corrector": {"n_pilot": 16}, "annealed_mala": {"n_pilot": 16},
         "annealed_hmc": {"n_pilot": 16}}  # keep the pilots cheap


def _method(name, **kw):
    return cj.METHODS[name](**{**SMALL.get(name, {}), **kw})


def _options(cls):
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("name", NAMES)
def test_constructor_validates_every_option(name):
    cls = cj.METHODS[name]
    cls()  # the defaults are valid
    for opt in _options(cls):
        for bad in ("bad", -1, None):
            with pytest.raises((ValueError, TypeError), match=opt):
                cls(**{opt: bad})
    with pytest.raises(TypeError):
        cls(not_an_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_instances_are_hashable_frozen_values(name):
    cls = cj.METHODS[name]
    a, b = cls(), cls()
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, "anything", 1)
    leaves, treedef = jax.tree.flatten(a)
    assert leaves == [] and jax.tree.unflatten(treedef, []) == a  # options are static
    if name in OTHER:
        c = cls(**OTHER[name])
        assert c != a and c == cls(**OTHER[name])
    assert isinstance(cls.elementwise, bool) and isinstance(cls.needs_log_prob, bool)
    assert isinstance(a.affine_exact, bool)
    assert type(a.num_normals) is int and a.num_normals >= 0
    assert type(a.num_uniforms) is int and a.num_uniforms >= 0
    assert type(a.model_calls_per_step) is int and a.model_calls_per_step >= 1


@functools.lru_cache(maxsize=None)
def _params(m, i=0):
    """The time grid and level ``i``'s slice of ``m.tune`` (one pilot per method value)."""
    times = time_grid(SCH, 4, 1e-3, "uniform", dtype=jnp.float32)
    p = jax.jit(m.tune, static_argnums=(4, 5))(MODEL, SCH, jax.random.key(3), times, D,
                                                jnp.float32)
    return times, None if p is None else jax.tree.map(lambda a: a[i], p)


def _inputs(m, key):
    kz, kx = jax.random.split(key)
    z = jax.random.normal(kz, (m.num_normals, D))
    u = jnp.zeros((m.num_uniforms,))  # u = 0: every Metropolis proposal is accepted
    x = jax.random.normal(kx, (D,))
    return x, z, u


@pytest.mark.parametrize("name", NAMES)
def test_init_step_signatures_and_namedtuple_types(name, key):
    m = _method(name)
    assert list(inspect.signature(m.init).parameters) == ["x", "t"]
    assert list(inspect.signature(m.step).parameters) == [
        "model", "schedule", "state", "t", "t_next", "normals", "uniforms", "params"]
    assert list(inspect.signature(m.tune).parameters) == [
        "model", "schedule", "key", "times", "d", "dtype"]
    if m.transition is not None:
        assert list(inspect.signature(m.transition).parameters)[:6] == [
            "model", "schedule", "x", "normals", "t", "t_next"]
    times, p = _params(m)
    x, z, u = _inputs(m, key)
    state = m.init(x, times[0])
    assert hasattr(type(state), "_fields") and "position" in state._fields
    new, info = m.step(MODEL, SCH, state, times[0], times[1], z, u, p)
    assert type(new) is type(state) and hasattr(type(info), "_fields")
    chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
    chex.assert_tree_all_finite(new)


@pytest.mark.parametrize("name", NAMES)
def test_step_consumes_exactly_num_normals(name, key):
    m = _method(name)
    times, p = _params(m)
    x, z, u = _inputs(m, key)
    state = m.init(x, times[0])
    step = jax.jit(lambda z: m.step(MODEL, SCH, state, times[0], times[1], z, u, p)[0])
    base = step(z)
    extra = jnp.concatenate([z, 100.0 * jnp.ones((1, D))])  # an extra row is never read...
    try:
        chex.assert_trees_all_close(step(extra), base, rtol=0, atol=0)
    except (TypeError, ValueError) as e:  # ...or refused by a shape check
        assert "shape" in str(e) or "size" in str(e), e
    for r in range(m.num_normals):  # each of the num_normals rows is read
        moved = step(z.at[r].add(0.5))
        assert not np.allclose(moved.position, base.position), (name, r)


@pytest.mark.parametrize("name", NAMES)
def test_step_jit_equals_eager(name, key):
    m = _method(name)
    times, p = _params(m)
    x, z, u = _inputs(m, key)
    state = m.init(x, times[0])
    eager = m.step(MODEL, SCH, state, times[0], times[1], z, u, p)
    jitted = jax.jit(m.step)(MODEL, SCH, state, times[0], times[1], z, u, p)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_sample_prefix_invariance_and_alias_equals_instance(name, key):
    m = _method(name)
    kw = dict(steps=4, nonfinite="ignore")
    big = cj.sample(key, MODEL, SCH, (24, D), method=m, **kw)
    small = cj.sample(key, MODEL, SCH, (7, D), method=m, **kw)
    chex.assert_trees_all_close(small, big[:7], rtol=1e-5, atol=1e-6)
    opts = {**SMALL.get(name, {})}
    by_name = cj.sample(key, MODEL, SCH, (7, D), method=name, **opts, **kw)
    chex.assert_trees_all_equal(by_name, small)
    with pytest.raises(TypeError, match="unknown option"):
        cj.sample(key, MODEL, SCH, (7, D), method=m, eta=0.1, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_sampler_law_exactly_when_affine_exact(name):
    m = _method(name)
    if m.affine_exact:
        law = cj.verify.sampler_law(MODEL, SCH, method=m, steps=4)
        assert law.mean.shape == (D,) and np.all(np.isfinite(law.cov))
        by_name = cj.verify.sampler_law(MODEL, SCH, method=name, steps=4, **SMALL.get(name, {}))
        chex.assert_trees_all_equal(by_name.mean, law.mean)
    else:
        with pytest.raises(ValueError, match="sampler_law needs"):
            cj.verify.sampler_law(MODEL, SCH, method=m, steps=4)


def test_new_method_registered_outside_samples_in_both_layouts(key):
    assert cj.METHODS[NEW] is DampedEulerMaruyama
    kw = dict(steps=6, nonfinite="ignore")
    rows = cj.sample(key, MODEL, SCH, (40, D), method=NEW, damping=0.7, layout="rows", **kw)
    cols = cj.sample(key, MODEL, SCH, (40, D), method=NEW, damping=0.7, layout="columns", **kw)
    chex.assert_trees_all_close(cols, rows, rtol=1e-5, atol=2e-6)
    # damping 1 is Euler-Maruyama; the option is really used
    one = cj.sample(key, MODEL, SCH, (40, D), method=DampedEulerMaruyama(1.0), **kw)
    em = cj.sample(key, MODEL, SCH, (40, D), method="euler_maruyama", **kw)
    chex.assert_trees_all_close(one, em, rtol=1e-6, atol=1e-6)
    assert not np.allclose(rows, em)
    with pytest.raises(ValueError, match="already registered"):
        cj.register_method(NEW, DampedEulerMaruyama)
    with pytest.raises(ValueError, match="damping"):
        cj.sample(key, MODEL, SCH, (4, D), method=NEW, damping=2.0)


class _CountingModel(cj.Model):
    """``MODEL`` whose every evaluation (score, log_prob, log_prob_and_score, denoise) runs a
    host callback at RUN time, so evaluations inside ``lax.scan``/``fori_loop`` bodies count
    once per iteration."""

    has_log_prob = True
    has_denoise = True
    dim = D

    def __init__(self):
        self.calls = 0

    def _tick(self):
        def inc():
            self.calls += 1

        jax.debug.callback(inc)

    def score(self, x, t):
        self._tick()
        return MODEL.score(x, t)

    def _log_prob(self, x, t):
        self._tick()
        return MODEL.log_prob(x, t)

    def _log_prob_and_score(self, x, t):
        self._tick()
        return MODEL.log_prob_and_score(x, t)

    def _denoise(self, x, t):
        self._tick()
        return MODEL.denoise(x, t)


def _count_calls(m, key):
    """Model evaluations of one jitted ``m.step`` on ``_CountingModel``."""
    times, p = _params(m)
    x, z, u = _inputs(m, key)
    state = m.init(x, times[0])
    cm = _CountingModel()
    t0, t1 = times[0], times[1]
    out = jax.jit(lambda st: m.step(cm, SCH, st, t0, t1, z, u, p)[0])(state)
    jax.block_until_ready(out)
    jax.effects_barrier()
    return cm.calls


@pytest.mark.parametrize("name", NAMES)
def test_model_calls_per_step_counts_the_evaluations_of_one_step(name, key):
    """``model_calls_per_step`` equals the model evaluations one jitted ``step`` makes, counted
    at run time (for every registered method and a second option value)."""
    for m in [_method(name)] + ([_method(name, **OTHER[name])] if name in OTHER else []):
        calls = _count_calls(m, key)
        assert calls == m.model_calls_per_step, (m, calls, m.model_calls_per_step)


# ------------------------------------------------------------------ the run's model calls
_TALLY = [0]


def _tally(x):
    """Host side of one evaluation (``jax.debug.callback`` runs once per particle under
    ``vmap`` and once per iteration inside ``lax.scan``/``fori_loop``)."""
    del x
    _TALLY[0] += 1


@pytree_dataclass
class _TallyModel(cj.Model):
    """``MODEL`` as a pytree model (a ``cj.sample`` argument) whose every evaluation adds one to
    ``_TALLY`` at run time."""

    has_log_prob = True
    has_denoise = True

    def score(self, x, t):
        jax.debug.callback(_tally, x)
        return MODEL.score(x, t)

    def _log_prob(self, x, t):
        jax.debug.callback(_tally, x)
        return MODEL.log_prob(x, t)

    def _log_prob_and_score(self, x, t):
        jax.debug.callback(_tally, x)
        return MODEL.log_prob_and_score(x, t)

    def _denoise(self, x, t):
        jax.debug.callback(_tally, x)
        return MODEL.denoise(x, t)


def _tallied(fn):
    """``(fn(), evaluations made while it ran)``."""
    _TALLY[0] = 0
    out = jax.block_until_ready(fn())
    jax.effects_barrier()
    return out, _TALLY[0]


_STEPS = 2
_TIMES = time_grid(SCH, _STEPS, 1e-3, "uniform", dtype=jnp.float32)
_PILOTED = ("predictor_corrector", "annealed_mala", "annealed_hmc")


def _counted(name, **kw):
    """The method with the smallest pilot (``n_pilot = 2``): each evaluation of a vmapped pilot
    is one host callback per particle in the compiled program."""
    small = {"n_pilot": 2} if "n_pilot" in _options(cj.METHODS[name]) else {}
    return cj.METHODS[name](**{**small, **kw})


@pytest.mark.parametrize("name,other", [(n, False) for n in NAMES] + [
    (n, True) if n not in _PILOTED else pytest.param(n, True, marks=pytest.mark.slow)
    for n in NAMES if n in OTHER])
def test_pilot_model_calls_counts_the_evaluations_of_tune(name, other, key):
    """``pilot_model_calls(steps)`` equals the evaluations ``tune`` makes (all pilot particles),
    for every registered method with its default options and a second option value (for the
    Metropolis methods in the slow lane); positive exactly for the tuned methods
    (``n_pilot = 2``)."""
    for m in [_counted(name, **(OTHER[name] if other else {}))]:
        tune = jax.jit(m.tune, static_argnums=(4, 5))
        _, calls = _tallied(lambda f=tune: f(_TallyModel(), SCH, key, _TIMES, D, jnp.float32))
        assert m.pilot_model_calls(_STEPS) == calls, (m, calls)
        tuned = name in _PILOTED and getattr(m, "corrector_step", "snr") == "snr"
        assert (calls > 0) == tuned, (m, calls)
    for m in (cj.AnnealedMALA(adapt=False), cj.PredictorCorrector(corrector_step="fixed")):
        assert m.pilot_model_calls(_STEPS) == 0


@pytest.mark.parametrize("name", [n if n in _PILOTED else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_info_counts_every_model_evaluation_of_the_run(name, key):
    """A whole ``cj.sample`` run makes exactly ``n * info.model_calls +
    info.pilot_model_calls`` evaluations, for every registered method, with
    ``info.pilot_model_calls = method.pilot_model_calls(steps)``, the evaluations of the pilot
    alone (``test_pilot_model_calls_counts_the_evaluations_of_tune``)."""
    m, n = _counted(name), 3
    r, total = _tallied(lambda: cj.sample(key, _TallyModel(), SCH, (n, D), method=m,
                                          steps=_STEPS, return_info=True, nonfinite="ignore"))
    pilot = m.pilot_model_calls(_STEPS)
    assert (pilot > 0) == (name in _PILOTED)
    assert int(r.info.pilot_model_calls) == pilot
    assert int(r.info.model_calls) == _STEPS * m.model_calls_per_step + 1
    assert total == n * int(r.info.model_calls) + pilot, (total, r.info)
