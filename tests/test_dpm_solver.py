"""DPM-Solver++ (2M, 2S): exact laws through sampler_law (including 2M's state), identities with
DDIM, weak orders in float64, sample moments against the exact law on every schedule."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.verify.sampler_law import sampler_law

MEAN = jnp.array([1.0, -1.0])
COV = jnp.array([[2.0, 0.5], [0.5, 1.0]])
SCHEDS = {"vp": cj.VPSchedule(), "cosine": cj.CosineVPSchedule(), "ve": cj.VESchedule(),
          "flow": cj.RectifiedFlowSchedule()}


def _exact(sch, t, dtype=None):
    a, s2 = sch.alpha(jnp.asarray(t)), sch.sigma2(jnp.asarray(t))
    m, c = a * MEAN, a * a * COV + s2 * jnp.eye(2)
    return (m, c) if dtype is None else (m.astype(dtype), c.astype(dtype))


def law_error(sch, method, steps, t_min=1e-2, grid="log_snr"):
    """|mean - exact| + |cov - exact|_F of the method's exact output law at t_min, started from
    the exact p_{t_max} (so only the discretization error remains)."""
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    m, c = sampler_law(p, sch, method=method, steps=steps, t_min=t_min, grid=grid,
                       init=_exact(sch, sch.t_max), denoise_final=False, as_moments=True)
    em, ec = _exact(sch, t_min)
    return float(jnp.linalg.norm(m - em) + jnp.linalg.norm(c - ec))


def fitted_order(sch, method, steps=(25, 50, 100), **kw):
    errs = np.array([law_error(sch, method, int(n), **kw) for n in steps])
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.x64
@pytest.mark.parametrize(
    "method,sch_name",
    [("dpm_solver_2m", "vp"), ("dpm_solver_2s", "flow")]
    + [pytest.param(m, s, marks=pytest.mark.slow)
       for m in ("dpm_solver_2m", "dpm_solver_2s") for s in SCHEDS
       if (m, s) not in (("dpm_solver_2m", "vp"), ("dpm_solver_2s", "flow"))],
)
def test_weak_order_two(method, sch_name):
    """Fitted log-log slope of the exact-law error at 25/50/100 steps (log-SNR grid)."""
    order, errs = fitted_order(SCHEDS[sch_name], method)
    print(f"{method} {sch_name}: errors {errs}, fitted weak order {order:.3f}")
    assert 1.7 <= order <= 2.6


@pytest.mark.x64
@pytest.mark.parametrize("sch_name", list(SCHEDS))
def test_first_step_of_2m_is_ddim_and_second_step_is_not(sch_name):
    """2M's warm-up step is DDIM(eta=0) exactly; with lower_order_final two steps are both
    first order (steps < 10) and equal two DDIM steps; without it the second step is the
    second-order multistep update and differs."""
    sch = SCHEDS[sch_name]
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    kw = dict(t_min=0.05, grid="log_snr", denoise_final=False)
    for steps in (1, 2):
        a = sampler_law(p, sch, method="dpm_solver_2m", steps=steps, **kw)
        b = sampler_law(p, sch, method="ddim", steps=steps, **kw)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.cov, b.cov, rtol=1e-9, atol=1e-12)
    c = sampler_law(p, sch, method=cj.DPMSolver2M(lower_order_final=False), steps=2, **kw)
    assert not np.allclose(c.cov, b.cov, rtol=1e-6)


@pytest.mark.x64
def test_2m_multistep_update_by_hand():
    """Two steps of 2M (no lower-order final step) on a 1-D Gaussian, written out from
    Lu et al. (2022) Alg. 2 with closed-form scalars: the exact law is affine in the prior."""
    sch = cj.VPSchedule()
    m0, v0 = 0.7, 0.4
    p = cj.diffuse(cj.Gaussian(jnp.array([m0]), jnp.array([[v0]])), sch)
    times = np.asarray(cj.time_grid(sch, 2, 0.1, "uniform", dtype=jnp.float64))
    a = lambda t: float(sch.alpha(t))
    sg = lambda t: float(sch.sigma(t))
    lam = lambda t: np.log(a(t) / sg(t))

    def x0hat(t):  # E[x0 | x_t = x] = c1 x + c0 for Gaussian data
        var = a(t) ** 2 * v0 + sg(t) ** 2
        c1 = a(t) * v0 / var
        return c1, m0 - c1 * a(t) * m0

    # state (x, D_prev) affine in x_start: track coefficients (slope, offset)
    x = (1.0, 0.0)
    t0, t1, t2 = times
    c1, c0 = x0hat(t0)
    D0 = (c1 * x[0], c1 * x[1] + c0)
    h = lam(t1) - lam(t0)
    x = tuple(sg(t1) / sg(t0) * xi - a(t1) * np.expm1(-h) * di for xi, di in zip(x, D0))
    c1, c0 = x0hat(t1)
    D1 = (c1 * x[0], c1 * x[1] + c0)
    h2 = lam(t2) - lam(t1)
    r = h / h2
    Dd = tuple((1 + 1 / (2 * r)) * u - 1 / (2 * r) * w for u, w in zip(D1, D0))
    x = tuple(sg(t2) / sg(t1) * xi - a(t2) * np.expm1(-h2) * di for xi, di in zip(x, Dd))
    law = sampler_law(p, sch, method=cj.DPMSolver2M(lower_order_final=False), steps=2,
                      t_min=0.1, denoise_final=False, init=(jnp.zeros(1), jnp.eye(1)))
    np.testing.assert_allclose(law.mean, [x[1]], rtol=1e-12)
    np.testing.assert_allclose(law.cov, [[x[0] ** 2]], rtol=1e-12)


def _moments_match(x, law, k=5.0):
    """Sample mean and covariance within k standard errors of the exact Gaussian law:
    se(mean_j) = sqrt(C_jj / n), se(S_jk) = sqrt((C_jj C_kk + C_jk^2) / n) (Gaussian fourth
    moments; the output of a deterministic or affine-Gaussian sampler is Gaussian here)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    m, C = np.asarray(law.mean, np.float64), np.asarray(law.cov, np.float64)
    z_mean = (x.mean(0) - m) / np.sqrt(np.diag(C) / n)
    S = np.cov(x.T)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C * C) / n)
    z_cov = (S - C) / se
    return float(np.max(np.abs(z_mean))), float(np.max(np.abs(z_cov)))


N = 2000


@pytest.mark.parametrize(
    "sch_name,layout",
    [("flow", "columns")]
    + [pytest.param(s, lay, marks=pytest.mark.slow) for s in SCHEDS
       for lay in ("rows", "columns") if (s, lay) != ("flow", "columns")])
def test_sample_moments_match_exact_law(sch_name, layout, key):
    """cj.sample with 2M and 2S: sample moments within 5 standard errors (n = 2000; 2 x (2 + 3)
    statistics per schedule, so a false alarm has probability < 1e-5) of sampler_law, in both
    layouts (rows in the slow lane: by default it is tied to the columns layout particle by
    particle, ``test_rows_equal_columns``)."""
    sch = SCHEDS[sch_name]
    p = cj.diffuse(cj.Gaussian(MEAN, COV), sch)
    for method in (cj.DPMSolver2M(), cj.DPMSolver2S()):
        x = cj.sample(key, p, sch, (N, 2), method=method, steps=12, grid="log_snr",
                      nonfinite="raise", layout=layout)
        law = sampler_law(p, sch, method=method, steps=12, grid="log_snr")
        zm, zc = _moments_match(x, law)
        assert zm < 5 and zc < 5, (method, zm, zc)


_DPM_LAYOUT_CASES = [(m, s, b) for m in ("2m", "2s") for s in ("vp", "ve")
                     for b in ("mixture", "gaussian")]


@pytest.mark.parametrize(
    "name,sch_name,background",
    [c if c == ("2m", "ve", "gaussian") else pytest.param(*c, marks=pytest.mark.slow)
     for c in _DPM_LAYOUT_CASES])
def test_rows_equal_columns(key, name, sch_name, background):
    """2M (its previous data prediction carried as a (d, B) state, its per-level order from
    ``tune``) and 2S: the same particles in both layouts (VP and VE, Gaussian and mixture
    backgrounds; 2M on VE by default, the rest in the slow lane; tolerance in
    ``test_churn.rows_equal_columns``); ``layout="auto"`` picks columns for both. A columns
    body that dropped 2M's state or its order would differ from the rows body (which
    ``sampler_law`` checks exactly) by far more than the tolerance."""
    from test_churn import composed, rows_equal_columns

    from composition_jax.samplers import driver

    sch, model = composed(sch_name, background)
    method = cj.DPMSolver2M() if name == "2m" else cj.DPMSolver2S()
    assert driver.choose_layout("auto", method, model, 2, None, False) == "columns"
    rows_equal_columns(key, sch, model, method, steps=12)
