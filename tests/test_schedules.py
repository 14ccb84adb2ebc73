"""Noise schedules: forward-SDE consistency (moment ODEs), log-SNR inverse, small-t accuracy,
beta = -2 d log alpha / dt, pytree behaviour (no retrace), dtypes, finiteness."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _distribution_cases import oracle_alpha_sigma

import composition_jax as cj

X64 = bool(jax.config.read("jax_enable_x64"))
FT = jnp.float64 if X64 else jnp.float32
SCHEDS = {"vp": cj.VPSchedule(), "cosine": cj.CosineVPSchedule(), "ve": cj.VESchedule()}


def _rk4_moments(sched, t_end, m0, v0, steps):
    """Integrate m' = f m, V' = 2 f V + g^2 from t = 0 (V(0) = v0 + sigma(0)^2) with classical
    RK4 in float64, f and g^2 taken from the schedule at all stage times in one vmapped call."""
    h = t_end / steps
    grid = np.linspace(0.0, t_end, 2 * steps + 1)  # nodes and midpoints
    tg = jnp.asarray(grid, FT)
    f = np.asarray(jax.vmap(sched.drift_coeff)(tg), np.float64)
    g2 = np.asarray(jax.vmap(sched.g2)(tg), np.float64)
    m = float(m0)
    v = float(v0) + float(sched.sigma2(jnp.asarray(0.0, FT)))
    for k in range(steps):
        f0, f1, f2 = f[2 * k], f[2 * k + 1], f[2 * k + 2]
        q0, q1, q2 = g2[2 * k], g2[2 * k + 1], g2[2 * k + 2]
        # linear ODEs: RK4 stages
        km1 = f0 * m
        km2 = f1 * (m + 0.5 * h * km1)
        km3 = f1 * (m + 0.5 * h * km2)
        km4 = f2 * (m + h * km3)
        kv1 = 2 * f0 * v + q0
        kv2 = 2 * f1 * (v + 0.5 * h * kv1) + q1
        kv3 = 2 * f1 * (v + 0.5 * h * kv2) + q1
        kv4 = 2 * f2 * (v + h * kv3) + q2
        m += h * (km1 + 2 * km2 + 2 * km3 + km4) / 6
        v += h * (kv1 + 2 * kv2 + 2 * kv3 + kv4) / 6
    return m, v


@pytest.mark.parametrize("name", list(SCHEDS))
def test_moment_odes_of_forward_sde_reproduce_alpha_sigma(name):
    sched = SCHEDS[name]
    t_end = sched.t_max  # cosine: beta diverges at t = 1
    m0, v0 = 1.7, 0.6
    m, v = _rk4_moments(sched, t_end, m0, v0, steps=2000)
    a, s = oracle_alpha_sigma(name, t_end)
    # RK4 truncation with h = 5e-4 is < 1e-9 here; the remaining error is the rounding of f, g^2
    # (float32: ~1e-7 relative, accumulated over the integral of |f| <= 5: < 1e-5).
    tol = 1e-8 if X64 else 2e-5
    assert abs(m - a * m0) <= tol * (1 + abs(m0)), (m, a * m0)
    assert abs(v - (a * a * v0 + s * s)) <= tol * (1 + v), (v, a * a * v0 + s * s)
    # and the schedule's own alpha/sigma agree with the independent closed forms
    assert abs(float(sched.alpha(t_end)) - a) <= tol
    assert abs(float(sched.sigma(t_end)) - s) <= tol * s


@pytest.mark.parametrize("name", list(SCHEDS))
def test_alpha_sigma_accurate_at_all_t_including_tiny(name):
    sched = SCHEDS[name]
    ts = [0.0, 1e-7, 1e-6, 1e-4, 1e-2, 0.3, 0.7, 0.99, 1.0]
    tol = 1e-12 if X64 else 4 * float(np.finfo(np.float32).eps)
    for t in ts:
        tt = jnp.asarray(t, FT)
        # the oracle at the rounded time itself (near t = 1, alpha ~ 1 - t is ill-conditioned in t)
        a, s = oracle_alpha_sigma(name, float(tt))
        got_a, got_s = float(sched.alpha(tt)), float(sched.sigma(tt))
        assert abs(got_a - a) <= tol * max(a, 1e-30) + (1e-13 if X64 else 1e-7) * (a == 0), (t, got_a, a)
        # sigma relative accuracy even where sigma ~ 1e-4 (no 1 - alpha^2 cancellation); near
        # t_cos = 1 alpha's absolute error is what matters
        assert abs(got_s - s) <= tol * s, (t, got_s, s)
    if name != "ve":
        assert float(sched.alpha(0.0)) == 1.0 and float(sched.sigma(0.0)) == 0.0
    else:
        np.testing.assert_allclose(float(sched.sigma(0.0)), 0.01, rtol=tol)
        np.testing.assert_allclose(float(sched.sigma(1.0)), 50.0, rtol=tol)
    if name == "cosine":
        assert float(sched.alpha(1.0)) == 0.0


@pytest.mark.parametrize("name", list(SCHEDS))
def test_log_snr_and_inverse(name):
    sched = SCHEDS[name]
    ts = jnp.asarray([1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.8, 0.95, sched.t_max], FT)

    @jax.jit
    def ev(sched, ts):
        lam = jax.vmap(sched.log_snr)(ts)
        back = jax.vmap(sched.t_from_log_snr)(lam)
        dt_dlam = jax.vmap(jax.grad(sched.t_from_log_snr))(lam)
        return lam, jax.vmap(sched.alpha)(ts), jax.vmap(sched.sigma)(ts), back, dt_dlam

    lam, a, s, back, dt_dlam = ev(sched, ts)
    rtol = 1e-10 if X64 else 2e-5
    np.testing.assert_allclose(lam, 2 * jnp.log(a) - 2 * jnp.log(s), rtol=rtol, atol=rtol)
    assert np.all(np.diff(np.asarray(lam)) < 0)  # decreasing
    assert back.dtype == FT
    # accuracy in t, including t = 1e-4: a few ulps times the conditioning of t(lam) (lam itself
    # is only known to ~eps |lam|; for VE at t = 1e-4 that alone is ~5e-4 relative in float32,
    # for VP/cosine it is ~eps)
    eps = float(jnp.finfo(FT).eps)
    cond = np.abs(np.asarray(dt_dlam) * np.asarray(lam))
    err = np.abs(np.asarray(back, np.float64) - np.asarray(ts, np.float64))
    assert np.all(err <= 16 * eps * (cond + np.asarray(ts))), (err, cond)
    if name != "ve":
        np.testing.assert_allclose(back, ts, rtol=1e-9 if X64 else 3e-5)
    lams = jnp.asarray(np.linspace(float(lam[-1]), float(lam[0]), 7), FT)
    np.testing.assert_allclose(jax.vmap(sched.log_snr)(jax.vmap(sched.t_from_log_snr)(lams)), lams,
                               rtol=1e-9 if X64 else 1e-4, atol=1e-9 if X64 else 1e-4)


def test_cosine_t_from_log_snr_end_points():
    c = SCHEDS["cosine"]
    assert float(c.t_from_log_snr(jnp.inf)) == 0.0
    np.testing.assert_allclose(float(c.t_from_log_snr(-jnp.inf)), 1.0, rtol=1e-6)
    assert np.isfinite(float(c.t_from_log_snr(-200.0))) and np.isfinite(float(c.t_from_log_snr(200.0)))


@pytest.mark.parametrize("name", list(SCHEDS))
def test_beta_g2_drift_diffusion_consistent(name):
    sched = SCHEDS[name]
    ts = jnp.asarray([1e-4, 0.05, 0.3, 0.6, 0.9, sched.t_max], FT)
    dla = jax.vmap(jax.grad(sched.log_alpha))(ts)
    rtol = 1e-10 if X64 else 1e-4
    np.testing.assert_allclose(jax.vmap(sched.beta)(ts), -2 * dla, rtol=rtol, atol=rtol)
    # g^2 = d sigma^2/dt - 2 f sigma^2
    ds2 = jax.vmap(jax.grad(sched.sigma2))(ts)
    want = ds2 - 2 * jax.vmap(sched.drift_coeff)(ts) * jax.vmap(sched.sigma2)(ts)
    np.testing.assert_allclose(jax.vmap(sched.g2)(ts), want, rtol=rtol * 10, atol=rtol)
    x = jnp.asarray([1.0, -2.0, 0.5], FT)
    np.testing.assert_allclose(sched.drift(x, 0.3), sched.drift_coeff(0.3) * x, rtol=1e-6)
    np.testing.assert_allclose(sched.diffusion(0.3), jnp.sqrt(sched.g2(0.3)), rtol=1e-6)


@pytest.mark.parametrize("name", list(SCHEDS))
def test_finite_and_dtype_preserved(name):
    sched = SCHEDS[name]
    for t in (0.0, 1e-4, sched.t_max, 1.0):
        for dt in (jnp.float32, FT):
            tt = jnp.asarray(t, dt)
            for fn in (sched.alpha, sched.sigma, sched.log_alpha, sched.sigma2):
                out = fn(tt)
                assert out.dtype == dt
            assert np.isfinite(float(sched.alpha(tt))) and np.isfinite(float(sched.sigma(tt)))
            if t == sched.t_max:
                assert np.isfinite(float(sched.beta(tt))) and np.isfinite(float(sched.g2(tt)))
            assert sched.drift(jnp.ones(2, dt), tt).dtype == dt
    key = jax.random.key(0)
    z = sched.prior_sample(key, (3, 2), jnp.float32)
    assert z.shape == (3, 2) and z.dtype == jnp.float32
    np.testing.assert_allclose(z, sched.prior_std * jax.random.normal(key, (3, 2)), rtol=1e-6)
    lp = sched.prior_log_prob(jnp.zeros(2, jnp.float32))
    np.testing.assert_allclose(float(lp), -2 * np.log(float(sched.prior_std)) - np.log(2 * np.pi), rtol=1e-6)


def test_pytree_leaves_and_no_retrace():
    for sched, names in ((cj.VPSchedule(), 2), (cj.CosineVPSchedule(), 1), (cj.VESchedule(), 2)):
        leaves, tree = jax.tree.flatten(sched)
        assert len(leaves) == names
        again = jax.tree.unflatten(tree, leaves)
        assert type(again) is type(sched) and float(again.alpha(0.3)) == float(sched.alpha(0.3))
    traces = []

    @jax.jit
    def f(sched, t):
        traces.append(1)
        return sched.alpha(t), sched.sigma(t)

    t = jnp.asarray(0.3, jnp.float32)
    outs = [f(cj.VPSchedule(beta_min=b, beta_max=20.0), t) for b in (0.1, 0.2)]
    outs.append(f(cj.VPSchedule(beta_min=jnp.float32(0.5), beta_max=np.float32(10.0)), t))
    assert len(traces) == 1
    assert float(outs[0][0]) != float(outs[1][0])
    np.testing.assert_allclose(outs[1][0], cj.VPSchedule(0.2, 20.0).alpha(t), rtol=1e-6)
    # vmap over a batch of schedules
    batch = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf]), cj.VESchedule())
    sig = jax.vmap(lambda s: s.sigma(0.5))(batch)
    np.testing.assert_allclose(sig, [cj.VESchedule().sigma(0.5), cj.VESchedule(0.02, 100.0).sigma(0.5)], rtol=1e-6)


@pytest.mark.x64
@pytest.mark.parametrize("name", list(SCHEDS))
def test_x64_moment_odes_and_inverse(name):
    # the same checks in float64 (X64 switches the tolerances above to ~1e-9 .. 1e-12)
    test_moment_odes_of_forward_sde_reproduce_alpha_sigma(name)
    test_alpha_sigma_accurate_at_all_t_including_tiny(name)
    test_log_snr_and_inverse(name)
    test_beta_g2_drift_diffusion_consistent(name)
