"""sampler_law: exact laws, identities between methods, and weak convergence orders."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.verify.sampler_law import sampler_law

MEAN = jnp.array([1.0, -1.0])
COV = jnp.array([[2.0, 0.5], [0.5, 1.0]])


def _exact(sch, t):
    """Exact moments of p_t for N(MEAN, COV): (alpha m, alpha^2 S + sigma^2 I)."""
    a, s2 = sch.alpha(jnp.asarray(t)), sch.sigma2(jnp.asarray(t))
    return a * MEAN, a * a * COV + s2 * jnp.eye(2, dtype=COV.dtype)


def _error(sch, method, steps, t_min=1e-2, grid="uniform"):
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    init = _exact(sch, sch.t_max)
    m, c = sampler_law(p, sch, method=method, steps=steps, t_min=t_min, grid=grid, init=init,
                       denoise_final=False, as_moments=True)
    em, ec = _exact(sch, t_min)
    return float(jnp.linalg.norm(m - em) + jnp.linalg.norm(c - ec))


@pytest.mark.x64
@pytest.mark.parametrize(
    "method,sch_name,lo,hi",
    [
        ("euler_maruyama", "vp", 0.8, 1.3),
        pytest.param("ode_euler", "vp", 0.8, 1.3, marks=pytest.mark.slow),
        ("ode_heun", "vp", 1.7, 2.5),
        # observed 2.0 here: for this linear problem the first-order EM error terms of the
        # driftless VE reverse SDE cancel (super-convergence); the claim is order >= 1
        pytest.param("euler_maruyama", "ve", 0.8, 2.3, marks=pytest.mark.slow),
        pytest.param("ode_euler", "ve", 0.8, 1.3, marks=pytest.mark.slow),
        pytest.param("ode_heun", "ve", 1.7, 2.5, marks=pytest.mark.slow),
        pytest.param("ddpm", "vp", 0.8, 1.3, marks=pytest.mark.slow),
        pytest.param("ddim", "vp", 0.8, 1.3, marks=pytest.mark.slow),
    ],
)
def test_weak_convergence_order(method, sch_name, lo, hi):
    """Fitted log-log slope of the exact moment error against the exact p_{t_min} law
    (started from the exact p_{t_max}, so only the discretization error remains)."""
    sch = {"vp": cj.VPSchedule(), "ve": cj.VESchedule()}[sch_name]
    steps = np.array([50, 100, 200])  # one compile each (static scan length)
    errs = np.array([_error(sch, method, int(n)) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    print(f"{method} {sch_name}: errors {errs}, fitted weak order {slope:.3f}")
    assert lo <= slope <= hi


@pytest.mark.x64
def test_ddim_eta_one_is_ddpm_for_vp():
    sch = cj.VPSchedule()
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    a = sampler_law(p, sch, method="ddim", eta=1.0, steps=7)
    b = sampler_law(p, sch, method="ddpm", steps=7)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-10)


@pytest.mark.x64
def test_one_ddpm_step_closed_form():
    """One DDPM step from the exact p_1 of N(0, I) data under VP (p_t = N(0, I) for all t):
    mean 0 and covariance (a^2 + (1 - a^2) sigma_s^2 / sigma_1^2) I with a = alpha_s / alpha_1,
    written out independently from the linear-beta formula log alpha(t) = -(0.1 t + 9.95 t^2)/2.
    (DDPM ignores Var[x_0 | x_t], so this is not 1: the step is biased, as it should be.)"""
    sch = cj.VPSchedule()
    p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sch)
    s = 0.3
    law = sampler_law(p, sch, method="ddpm", steps=1, t_min=s, denoise_final=False,
                      init=(jnp.zeros(2), jnp.eye(2)))

    def log_alpha(t):
        return -0.5 * (0.1 * t + 9.95 * t * t)

    a_ts = np.exp(log_alpha(1.0) - log_alpha(s))
    s2_ts, s2_s, s2_t = 1 - a_ts**2, 1 - np.exp(2 * log_alpha(s)), 1 - np.exp(2 * log_alpha(1.0))
    mean_coef = (1 - s2_ts) / a_ts
    expected = mean_coef**2 + s2_ts * s2_s / s2_t
    np.testing.assert_allclose(law.mean, 0.0, atol=1e-14)
    np.testing.assert_allclose(law.cov, expected * np.eye(2), rtol=1e-10)


def test_sampler_law_float32_close_to_exact_at_many_steps():
    sch = cj.VPSchedule()
    e20, e200 = _error(sch, "ode_heun", 20), _error(sch, "ode_heun", 200)
    print(f"heun float32 errors: 20 steps {e20:.3g}, 200 steps {e200:.3g}")
    assert e200 < e20 / 10
