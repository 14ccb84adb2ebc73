"""Exactness of the noised oracles: score == grad log_prob, log_prob == scipy, denoise == Tweedie ==
an independent posterior mean, for every family and schedule at t in {1e-4, 0.01, 0.3, 1}.

The reference is ``tests/_distribution_cases.py``: the clean law written (from the same NumPy
parameters, independently of the library) as an explicit Gaussian mixture and noised analytically;
evaluated with scipy / numpy in float64, with ``alpha``/``sigma`` from independent long-double
closed forms of the schedules.

float32 tolerances: every quantity is a smooth function of O(1) inputs, so rounding gives a
relative error of a few hundred ulps at most (eps32 = 1.2e-7) times the conditioning, which here
is at most ``|x| / sigma`` (distance to a point mass at t = 1e-4: sigma ~ 2e-3); we allow 3e-4
relative (and the absolute floors stated per check). float64: 1e-10 relative as the issue asks.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _distribution_cases import (
    FAMILY_NAMES,
    SCHEDULES,
    TIMES,
    draw_points,
    make_case,
    make_gaussian,
    make_mixture,
    oracle_alpha_sigma,
    oracle_denoise,
    oracle_log_prob,
    oracle_score,
)
from _programs import programs_built

import composition_jax as cj

N_PER_T = 3


def _evaluate(p, xs, ts):
    def one(x, t):
        lp, sc = p.log_prob_and_score(x, t)
        return {
            "log_prob": p.log_prob(x, t),
            "score": p.score(x, t),
            "grad": jax.grad(p.log_prob)(x, t),
            "denoise": p.denoise(x, t),
            "lp2": lp,
            "sc2": sc,
        }

    return jax.jit(jax.vmap(one))(xs, ts)


@functools.cache
def results(family: str, sched: str, x64: bool):
    dtype = jnp.float64 if x64 else jnp.float32
    case = make_case(family, seed=zlib.crc32(f"{family}/{sched}".encode()), dtype=dtype)
    schedule = SCHEDULES[sched]()
    p = cj.diffuse(case.dist, schedule)
    rng = np.random.default_rng(7)
    xs, ts, a_s = [], [], []
    for t in TIMES:
        a, s = oracle_alpha_sigma(sched, t)
        pts = draw_points(case, a, s, N_PER_T, rng)
        xs.append(pts)
        ts += [t] * N_PER_T
        a_s += [(a, s)] * N_PER_T
    xs = np.concatenate(xs)
    out = _evaluate(p, jnp.asarray(xs, dtype), jnp.asarray(ts, dtype))
    for k, v in out.items():
        assert v.dtype == dtype, (k, v.dtype)
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    return case, xs, a_s, out


def _rel_err(got, want, floor):
    return np.linalg.norm(got - want, axis=-1) / (np.linalg.norm(want, axis=-1) + floor)


CASES = [(f, s) for f in FAMILY_NAMES for s in SCHEDULES]


def _tol(x64):
    return 1e-10 if x64 else 3e-4


def _check_score_is_grad(family, sched, x64):
    _, _, _, out = results(family, sched, x64)
    for k in ("log_prob", "score", "denoise"):  # t in {1e-4, ..., 1} included
        assert np.all(np.isfinite(out[k])), k
    err = _rel_err(out["score"], out["grad"], 1.0)
    assert err.max() < _tol(x64), err
    # the fused version agrees with the separate ones
    np.testing.assert_allclose(out["sc2"], out["score"], rtol=_tol(x64), atol=_tol(x64))
    np.testing.assert_allclose(out["lp2"], out["log_prob"], rtol=_tol(x64), atol=_tol(x64))


def _check_against_oracle(family, sched, x64):
    case, xs, a_s, out = results(family, sched, x64)
    tol = _tol(x64)
    for i, (x, (a, s)) in enumerate(zip(xs, a_s)):
        lp = oracle_log_prob(case.comps, a, s, x)
        assert abs(out["log_prob"][i] - lp) <= tol * (abs(lp) + case.dim), (i, a, s)
        sc = oracle_score(case.comps, a, s, x)
        assert _rel_err(out["score"][i], sc, 1.0) < tol, (i, a, s, out["score"][i], sc)
        dn = oracle_denoise(case.comps, a, s, x)
        assert _rel_err(out["denoise"][i], dn, 1.0) < tol, (i, a, s)
        # Tweedie: alpha E[x0|xt] = xt + sigma^2 score (multiplied out: holds at alpha = 0 too).
        tw = x + s * s * out["score"][i]
        assert np.linalg.norm(a * out["denoise"][i] - tw) <= tol * (np.linalg.norm(x) + 1.0)


@pytest.mark.parametrize("family,sched", CASES)
def test_score_is_grad_log_prob(family, sched):
    _check_score_is_grad(family, sched, False)


@pytest.mark.parametrize("family,sched", CASES)
def test_log_prob_score_denoise_match_independent_oracle(family, sched):
    _check_against_oracle(family, sched, False)


@pytest.mark.x64
@pytest.mark.parametrize("family,sched", CASES)
def test_x64_score_is_grad_log_prob(family, sched):
    _check_score_is_grad(family, sched, True)


@pytest.mark.x64
@pytest.mark.parametrize("family,sched", CASES)
def test_x64_log_prob_score_denoise_match_independent_oracle(family, sched):
    _check_against_oracle(family, sched, True)


def _dims_sweep(dtype, tol_fn, full=False):
    """Random Gaussians (odd d) and 3-component mixtures (even d) in dimensions 1..8 at the four
    times under one schedule per dimension in rotation (``full``: both families, all schedules).
    One compiled function per law keeps this cheap."""
    rng = np.random.default_rng(123)
    names = list(SCHEDULES)
    ts = np.array(TIMES)

    @jax.jit
    def log_probs(p, xs, ts):
        return jax.vmap(p.log_prob)(xs, ts)

    for d in range(1, 9):
        makers = (make_gaussian, make_mixture) if full else ((make_gaussian, make_mixture)[d % 2],)
        for j, maker in enumerate(makers):
            case = maker(rng, d, dtype=dtype)
            scheds = names if full else [names[d % 3]]
            for sched in scheds:
                p = cj.diffuse(case.dist, SCHEDULES[sched]())
                a_s = [oracle_alpha_sigma(sched, t) for t in ts]
                xs = np.stack([draw_points(case, a, s, 1, rng)[0] for a, s in a_s])
                lps = np.asarray(log_probs(p, jnp.asarray(xs, dtype), jnp.asarray(ts, dtype)))
                assert lps.dtype == dtype
                for x, (a, s), lp in zip(xs, a_s, lps.astype(np.float64)):
                    want = oracle_log_prob(case.comps, a, s, x)
                    assert abs(lp - want) <= tol_fn(want, d), (case.name, sched, a, s, lp, want)


# float32: log-density errors are ~ eps32 * (sum of |terms|) ~ eps32 * (|log p| + d) times modest
# conditioning; 2e-5 * (|log p| + d) is ~150 ulps of the largest term.
def _tol32(want, d):
    return 2e-5 * (abs(want) + d)


def _tol64(want, d):
    return 1e-10 * (abs(want) + d)


def test_log_prob_matches_scipy_dims_1_to_8():
    _dims_sweep(jnp.float32, _tol32)


@pytest.mark.x64
def test_x64_log_prob_matches_scipy_dims_1_to_8():
    _dims_sweep(jnp.float64, _tol64)


@pytest.mark.slow
def test_log_prob_matches_scipy_dims_1_to_8_all_schedules():
    _dims_sweep(jnp.float32, _tol32, full=True)


@pytest.mark.slow
@pytest.mark.x64
def test_x64_log_prob_matches_scipy_dims_1_to_8_all_schedules():
    _dims_sweep(jnp.float64, _tol64, full=True)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eager_call_is_one_program_and_equals_jit_bitwise(family):
    """Called eagerly, each public method of a diffused law (and of the clean law) runs ONE
    program for its structure and shapes, not one per jnp op; a law of the same structure with
    other numbers reuses it (nothing built); and the result equals ``jax.jit`` of the same call
    bit for bit (the fused roundings, FMAs included, are the same)."""
    p = cj.diffuse(make_case(family, seed=5).dist, SCHEDULES["cosine"]())
    # the same structure with other numbers (unflattened: no validation, none needed here)
    q = jax.tree.map(lambda a: a * 1.25 if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
    x = jnp.asarray(np.linspace(-1.5, 2.0, p.dim), jnp.float32)
    X = jnp.asarray(np.stack([x, -x, 0.5 * x], 1))
    XT, t, s, key = jnp.asarray(X.T), jnp.float32(0.3), jnp.float32(0.7), jax.random.key(7)
    calls = {
        "score": lambda m, x, X, t: m.score(x, t),
        "log_prob": lambda m, x, X, t: m.log_prob(x, t),
        "denoise": lambda m, x, X, t: m.denoise(x, t),
        "log_prob_and_score": lambda m, x, X, t: m.log_prob_and_score(x, t),
        "score_columns": lambda m, x, X, t: m.score_columns(X, t),
        "batched_score": lambda m, x, X, t: m.batched_score(XT, t),
        "sample": lambda m, x, X, t: m.sample(key, 5, t),
        "clean log_prob": lambda m, x, X, t: m.dist.log_prob(x),
        "clean score": lambda m, x, X, t: m.dist.score(x),
        "clean noised": lambda m, x, X, t: m.dist.noised(x, t, s, "denoise"),
        "clean sample": lambda m, x, X, t: m.dist.sample(key, 4),
    }
    for name, call in calls.items():
        eager, built = programs_built(call, p, x, X, t)
        assert built <= 1, f"{family} {name}: {built} programs for one eager call"
        _, built = programs_built(call, q, x, X, t)
        assert built == 0, f"{family} {name}: {built} programs for a law of the same structure"
        jitted = jax.jit(call)(p, x, X, t)
        for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            assert e.dtype == j.dtype and e.shape == j.shape, (family, name)
            np.testing.assert_array_equal(np.asarray(e), np.asarray(j), err_msg=f"{family} {name}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eager_loop_equals_jit_vmap(family):
    """Eager, unbatched calls in a Python loop == the jitted, vmapped results above (jit == eager
    and vmap == loop at once), at the smallest and largest t, all finite, dtype preserved."""
    sched = "vp"
    case, xs, _, out = results(family, sched, False)
    p = cj.diffuse(case.dist, SCHEDULES[sched]())
    for i in (0, len(xs) - 1):  # t = 1e-4 and t = 1
        t = TIMES[i // N_PER_T]
        x = jnp.asarray(xs[i], jnp.float32)
        # Different fusion (FMAs) under jit changes roundings of x - a p; the results then move by
        # rounding(x) * derivative: ~eps32 |x| |score| for log_prob (score ~ 1/sigma near a
        # point mass at t = 1e-4) and ~eps32 |x| / sigma relative for score/denoise (3e-4).
        lp_tol = 1e-6 * (1 + np.abs(xs[i]).max()) * (1 + np.linalg.norm(out["score"][i]))
        for name, fn in (("log_prob", p.log_prob), ("score", p.score), ("denoise", p.denoise)):
            got = fn(x, t)
            assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
            want = out[name][i]
            if name == "log_prob":
                assert abs(float(got) - want) <= lp_tol, (got, want, lp_tol)
            else:
                assert _rel_err(np.asarray(got, np.float64), want, 1.0) < 3e-4, (name, got, want)
