"""Rectified-flow schedule and velocity models: closed forms, finite differences, the endpoints,
exact conversions score <-> eps <-> x0 <-> velocity for every schedule, composition of
velocities, the velocity parameterization of ScoreNetModel and the flow-matching loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj
from composition_jax.samplers import time_grid
from composition_jax.training.dsm import dsm_loss_per_example, flow_matching_loss_per_example

X64 = bool(jax.config.read("jax_enable_x64"))
FT = jnp.float64 if X64 else jnp.float32
FLOW = cj.RectifiedFlowSchedule()
SCHEDS = {"vp": cj.VPSchedule(), "cosine": cj.CosineVPSchedule(), "ve": cj.VESchedule(),
          "flow": FLOW}
MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])


# ----------------------------------------------------------------------------- the schedule
@pytest.mark.x64
def test_flow_schedule_closed_forms_and_finite_differences():
    ts = np.array([1e-6, 1e-3, 0.1, 0.37, 0.5, 0.9, 0.999])
    for t in ts:
        tt = jnp.asarray(t, jnp.float64)
        assert float(FLOW.alpha(tt)) == 1.0 - t and float(FLOW.sigma(tt)) == t
        np.testing.assert_allclose(float(FLOW.sigma2(tt)), t * t, rtol=1e-15)
        np.testing.assert_allclose(float(FLOW.log_alpha(tt)), np.log1p(-t), rtol=1e-14)
        np.testing.assert_allclose(float(FLOW.log_snr(tt)), 2 * np.log((1 - t) / t), rtol=1e-13,
                                   atol=1e-13)
        np.testing.assert_allclose(float(FLOW.t_from_log_snr(FLOW.log_snr(tt))), t, rtol=1e-12)
        # f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2, by central differences
        h = 1e-6 * min(t, 1 - t)
        fd = lambda fn: (float(fn(tt + h)) - float(fn(tt - h))) / (2 * h)
        f = fd(FLOW.log_alpha)
        np.testing.assert_allclose(float(FLOW.drift_coeff(tt)), f, rtol=1e-7)
        np.testing.assert_allclose(float(FLOW.beta(tt)), -2 * f, rtol=1e-7)
        g2 = fd(FLOW.sigma2) - 2 * f * t * t
        np.testing.assert_allclose(float(FLOW.g2(tt)), g2, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(FLOW.g2(tt)), 2 * t / (1 - t), rtol=1e-14)
        da, ds = FLOW.alpha_sigma_dot(tt)
        assert float(da) == -1.0 and float(ds) == 1.0
        # the generic Schedule formula gives the same numbers
        gda, gds = cj.Schedule.alpha_sigma_dot(FLOW, tt)
        np.testing.assert_allclose([float(gda), float(gds)], [-1.0, 1.0], rtol=1e-12)


def test_flow_schedule_endpoints_and_prior():
    assert float(FLOW.alpha(1.0)) == 0.0 and float(FLOW.sigma(1.0)) == 1.0
    assert float(FLOW.alpha(0.0)) == 1.0 and float(FLOW.sigma(0.0)) == 0.0
    assert float(FLOW.log_snr(1.0)) == -np.inf and float(FLOW.t_from_log_snr(-np.inf)) == 1.0
    # p_1 = N(0, I) exactly: the exact noised score of any Gaussian at t = 1 is -x
    p = cj.diffuse(cj.Gaussian(jnp.asarray(MEAN, FT), jnp.asarray(COV, FT)), FLOW)
    x = jnp.array([0.3, -2.0], FT)
    np.testing.assert_allclose(p.score(x, 1.0), -x, rtol=1e-6)
    # the sampler start: t_max < 1 where f and g^2 are finite, prior N(0, t_max^2 I)
    assert FLOW.t_max == 0.999 and FLOW.prior_std == 0.999
    assert np.isfinite(float(FLOW.drift_coeff(FLOW.t_max))) and np.isfinite(float(FLOW.g2(FLOW.t_max)))
    for bad in (1.0, 0.0, 1.5, "x"):
        with pytest.raises(ValueError, match="t_max"):
            cj.RectifiedFlowSchedule(t_max=bad)
    # a pytree without leaves (t_max is static)
    assert jax.tree.leaves(FLOW) == []


def test_flow_schedule_grids():
    for grid in ("uniform", "log_snr", "edm"):
        ts = np.asarray(time_grid(FLOW, 16, 1e-3, grid, dtype=FT))
        assert ts[0] == np.float32(FLOW.t_max) if FT == jnp.float32 else ts[0] == FLOW.t_max
        assert np.all(np.diff(ts) < 0) and np.all((ts > 0) & (ts < 1))
        if grid == "log_snr":
            lam = 2 * np.log((1 - ts.astype(np.float64)) / ts)
            np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)
        if grid == "edm":  # sigma/alpha = t/(1-t) follows the rho = 7 grid
            r = ts.astype(np.float64) / (1 - ts)
            q = r ** (1 / 7)
            np.testing.assert_allclose(np.diff(q), np.diff(q)[0], rtol=1e-3)


@pytest.mark.x64
def test_flow_exact_noised_laws_of_every_family():
    """Diffused families read only alpha/sigma: their noised laws under the flow schedule are
    the closed forms N(alpha m, alpha^2 S + t^2 I) (Gaussian) and the mixture of those."""
    t = 0.63
    a, s2 = 1 - t, t * t
    g = cj.Gaussian(jnp.asarray(MEAN), jnp.asarray(COV))
    p = cj.diffuse(g, FLOW)
    x = jnp.array([0.4, 1.1])
    C = a * a * COV + s2 * np.eye(2)
    np.testing.assert_allclose(p.score(x, t), -np.linalg.solve(C, np.asarray(x) - a * MEAN),
                               rtol=1e-12)
    # denoiser (Tweedie) = Gaussian posterior mean
    post = MEAN + a * COV @ np.linalg.solve(C, np.asarray(x) - a * MEAN)
    np.testing.assert_allclose(p.denoise(x, t), post, rtol=1e-12)
    # mixture: score of sum_k w_k N(alpha m_k, alpha^2 S_k + t^2 I)
    means = np.array([[1.0, 0.0], [-1.0, 1.0]])
    covs = np.stack([0.5 * np.eye(2), COV])
    w = np.array([0.3, 0.7])
    mix = cj.diffuse(cj.GaussianMixture(jnp.asarray(w), jnp.asarray(means),
                                        jnp.asarray(covs)), FLOW)
    dens, grads = [], []
    for k in range(2):
        Ck = a * a * covs[k] + s2 * np.eye(2)
        r = np.asarray(x) - a * means[k]
        q = np.linalg.solve(Ck, r)
        dens.append(w[k] * np.exp(-0.5 * r @ q) / np.sqrt(np.linalg.det(2 * np.pi * Ck)))
        grads.append(-q)
    exact = sum(dk * gk for dk, gk in zip(dens, grads)) / sum(dens)
    np.testing.assert_allclose(mix.score(x, t), exact, rtol=1e-11)


# ----------------------------------------------------------------------------- velocity
def _exact_velocity(sch, x, t):
    """E[alpha' x0 + sigma' eps | x_t = x] for N(MEAN, COV) data, from the Gaussian posterior
    and autodiff derivatives of alpha/sigma (independent of alpha_sigma_dot)."""
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    da, ds = float(jax.grad(sch.alpha)(t)), float(jax.grad(sch.sigma)(t))
    C = a * a * COV + s * s * np.eye(2)
    x0 = MEAN + a * COV @ np.linalg.solve(C, x - a * MEAN)
    eps = (x - a * x0) / s
    return da * x0 + ds * eps, x0, eps


@pytest.mark.x64
@pytest.mark.parametrize("name", list(SCHEDS))
def test_conversions_exact_for_every_schedule(name):
    sch = SCHEDS[name]
    p = cj.diffuse(cj.Gaussian(jnp.asarray(MEAN), jnp.asarray(COV)), sch)
    x = np.array([0.4, -1.3])
    for t in (0.05, 0.5, 0.9):
        v, x0, eps = _exact_velocity(sch, x, t)
        score = np.asarray(p.score(jnp.asarray(x), t))
        vals = {"score": score, "eps": eps, "x0": x0, "velocity": v}
        np.testing.assert_allclose(cj.to_velocity(p, sch, x, t), v, rtol=1e-10, atol=1e-12)
        # the probability-flow velocity f x - g^2 s / 2 is the same field
        pf = float(sch.drift_coeff(t)) * x - 0.5 * float(sch.g2(t)) * score
        np.testing.assert_allclose(pf, v, rtol=1e-10, atol=1e-12)
        for src, a in vals.items():
            for dst, b in vals.items():
                got = cj.convert_prediction(sch, x, t, a, source=src, target=dst)
                np.testing.assert_allclose(got, b, rtol=1e-9, atol=1e-11, err_msg=f"{src}->{dst}")
        vm = cj.VelocityModel(lambda y, tt: cj.to_velocity(p, sch, y, tt), sch, dim=2)
        np.testing.assert_allclose(vm.score(x, t), score, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(vm.denoise(x, t), x0, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(vm.eps(x, t), eps, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="target"):
        cj.convert_prediction(sch, x, 0.5, x, source="score", target="v")
    with pytest.raises(ValueError, match="shape"):
        cj.convert_prediction(sch, x, 0.5, x[:1], source="score", target="eps")


@pytest.mark.x64
@pytest.mark.parametrize("name", ["vp", "flow"])
def test_composing_velocities_equals_composing_scores(name):
    """v = f x - g^2 s / 2 is affine in s: an operator whose coefficients sum to one
    (compose: 1 - sum w_i on the background, w_i on the conditionals) commutes with it;
    a linear combination with coefficient sum c gets the extra (1 - c) f x."""
    sch = SCHEDS[name]
    bg = cj.diffuse(cj.Gaussian(jnp.zeros(2), 2.0 * jnp.eye(2)), sch)
    c1 = cj.diffuse(cj.Gaussian(jnp.asarray(MEAN), jnp.asarray(COV)), sch)
    c2 = cj.diffuse(cj.GaussianMixture(jnp.array([0.4, 0.6]),
                                       jnp.array([[2.0, 0.0], [0.0, -2.0]]),
                                       jnp.stack([0.3 * jnp.eye(2), 0.6 * jnp.eye(2)])), sch)
    w = jnp.array([1.5, -0.7])
    comp = cj.compose(bg, [c1, c2], w)
    x, t = jnp.array([0.7, 0.2]), 0.4
    v = lambda m: cj.to_velocity(m, sch, x, t)
    expect = v(bg) + w[0] * (v(c1) - v(bg)) + w[1] * (v(c2) - v(bg))
    np.testing.assert_allclose(v(comp), expect, rtol=1e-12, atol=1e-12)
    # the velocity models themselves composed with cj.compose give the same field (their scores
    # are the exact conversions)
    vms = [cj.VelocityModel(lambda y, tt, m=m: cj.to_velocity(m, sch, y, tt), sch, dim=2)
           for m in (bg, c1, c2)]
    comp_v = cj.compose(vms[0], vms[1:], w)
    np.testing.assert_allclose(cj.to_velocity(comp_v, sch, x, t), expect, rtol=1e-10)
    np.testing.assert_allclose(comp_v.denoise(x, t), comp.denoise(x, t), rtol=1e-10)
    # coefficients summing to c = 2: v(s1 + s2) = v1 + v2 - f x
    lc = cj.linear_combination([c1, c2], jnp.array([1.0, 1.0]))
    f = float(sch.drift_coeff(t))
    np.testing.assert_allclose(v(lc), v(c1) + v(c2) - f * x, rtol=1e-12, atol=1e-12)
    assert not np.allclose(v(lc), v(c1) + v(c2))


def test_velocity_model_samples_like_the_score_model(key):
    """A velocity model plugs into cj.sample: same samples as the score model it converts."""
    p = cj.diffuse(cj.Gaussian(jnp.asarray(MEAN, FT), jnp.asarray(COV, FT)), FLOW)
    vm = cj.from_velocity(lambda y, tt: cj.to_velocity(p, FLOW, y, tt), FLOW, dim=2)
    kw = dict(steps=20, method="ode_heun", nonfinite="raise")
    a = cj.sample(key, p, FLOW, (64, 2), **kw)
    b = cj.sample(key, vm, FLOW, (64, 2), **kw)
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    with pytest.raises(TypeError, match="velocity_fn"):
        cj.VelocityModel(3, FLOW)


# ----------------------------------------------------------------------------- networks
def test_scorenet_velocity_parameterization_is_the_exact_conversion():
    net = cj.nn.MLPScoreNet(dim=2, hidden=16, depth=1)
    params = cj.nn.init_params(net, jax.random.key(1))
    # perturb the zero-initialised output layer so the network output is not zero
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                          params)
    for sch in (FLOW, cj.VPSchedule()):
        m = cj.nn.ScoreNetModel(net, params, sch, "velocity")
        x, t = jnp.array([0.3, -0.8]), 0.35
        out = m.velocity(x, t)
        for tgt, got in (("score", m.score(x, t)), ("x0", m.denoise(x, t)), ("eps", m.eps(x, t))):
            np.testing.assert_allclose(
                got, cj.convert_prediction(sch, x, t, out, source="velocity", target=tgt),
                rtol=1e-5, atol=1e-6)
        me = cj.nn.ScoreNetModel(net, params, sch, "eps")
        np.testing.assert_allclose(me.velocity(x, t), cj.convert_prediction(
            sch, x, t, me.eps(x, t), source="eps", target="velocity"), rtol=1e-5, atol=1e-6)


def test_flow_matching_loss_is_velocity_error():
    net = cj.nn.MLPScoreNet(dim=2, hidden=8, depth=1)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size).reshape(p.shape)),
                          cj.nn.init_params(net, jax.random.key(2)))
    k1, k2 = jax.random.split(jax.random.key(3))
    x0, eps = jax.random.normal(k1, (5, 2)), jax.random.normal(k2, (5, 2))
    t = jnp.linspace(0.05, 0.95, 5)
    cond = jnp.zeros((5,), jnp.int32)
    for sch in (FLOW, cj.CosineVPSchedule()):
        for par in ("velocity", "eps", "x0"):
            loss = flow_matching_loss_per_example(params, net, sch, x0, t, eps, cond, par)
            m = cj.nn.ScoreNetModel(net, params, sch, par)
            xt = jax.vmap(lambda a, b, tt: sch.alpha(tt) * a + sch.sigma(tt) * b)(x0, eps, t)
            target = jax.vmap(lambda a, b, tt: jnp.stack(sch.alpha_sigma_dot(tt)) @ jnp.stack(
                [a, b]))(x0, eps, t)
            vhat = jax.vmap(m.velocity)(xt, t)
            np.testing.assert_allclose(loss, jnp.sum((vhat - target) ** 2, -1), rtol=2e-4)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss_per_example(params, net, FLOW, "eps", "flow", x0, t, eps, cond)


def test_flow_matching_training_learns_the_exact_velocity_1d():
    """A tiny MLP trained 300 steps with the flow-matching loss on N(1.5, 0.25) under the
    rectified-flow schedule: the loss drops and the learned velocity approaches the exact one
    (mean squared error over x ~ p_t, t on a grid)."""
    sch = FLOW
    net = cj.nn.MLPScoreNet(dim=1, hidden=32, depth=1)
    data = cj.Gaussian(jnp.array([1.5]), jnp.array([[0.25]]))
    tr = cj.training.DSMTrainer(net, sch, parameterization="velocity", weighting="velocity",
                                batch_size=128, steps_per_call=100, t_min=0.02, t_max=0.98,
                                ema_decay=0.9)
    st0 = tr.init(jax.random.key(0))
    st, losses = tr.train(st0, data, 300, progress=False)
    losses = np.asarray(losses)
    exact = cj.diffuse(data, sch)
    ts = jnp.linspace(0.05, 0.95, 10)
    z = jax.random.normal(jax.random.key(5), (64, 1))

    def err(model):
        def at(t):
            x = (1 - t) * 1.5 + jnp.sqrt((1 - t) ** 2 * 0.25 + t * t) * z
            vt = jax.vmap(lambda y: cj.to_velocity(exact, sch, y, t))(x)
            return jnp.mean((jax.vmap(lambda y: model.velocity(y, t))(x) - vt) ** 2)
        return float(jnp.mean(jax.vmap(at)(ts)))

    e0, e1 = err(tr.model(st0, ema=False)), err(tr.model(st, ema=False))
    print(f"flow matching: loss {losses[:20].mean():.3f} -> {losses[-20:].mean():.3f}, "
          f"velocity MSE {e0:.4f} -> {e1:.4f}")
    assert losses[-50:].mean() < 0.8 * losses[:20].mean()
    assert e1 < 0.2 * e0
