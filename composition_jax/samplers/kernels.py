r"""One-step kernels of the reverse-time samplers (blackjax style).

Every method is a :class:`Kernel`: ``init(x, t, opts) -> state`` and
``step(model, schedule, state, t, t_next, normals, uniforms, opts) -> (state, info)`` acting on
ONE particle (the driver vmaps them), with NamedTuple states and infos. All randomness enters as
pre-drawn standard normals ``normals (num_normals, d)`` and uniforms ``uniforms (num_uniforms,)``
that the driver generates in one batched call per step, so particle ``i``'s randomness depends
only on ``(key, i)``.

Non-Metropolis kernels are built from a deterministic ``transition(model, schedule, x, normals, t,
t_next, opts) -> x_next``. For a model whose score is affine in ``x`` the transition is affine in
``(x, normals)``; :func:`composition_jax.verify.sampler_law.sampler_law` differentiates this very
function to propagate the exact Gaussian law, so the sampler and its oracle cannot drift apart.

Notation: ``x_t = alpha_t x_0 + sigma_t eps``; forward SDE ``dx = f(t) x dt + g(t) dW``; a reverse
step goes from ``t`` to ``s = t_next < t``; ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (the forward transition ``x_t | x_s``).

* ``euler_maruyama``: reverse SDE ``x + [g^2 s(x,t) - f x] dt + g sqrt(dt) z``, ``dt = t - s``
  (weak order 1; Song et al. 2021).
* ``ode_euler`` / ``ode_heun``: probability flow ``dx/dt = f x - g^2 s / 2``, Euler (order 1) or
  Heun's trapezoidal predictor-corrector (order 2; Karras et al. 2022).
* ``ddpm``: ancestral sampling with the exact Gaussian posterior of the forward transition in
  score form: mean ``(x + sigma_{t|s}^2 s(x,t)) / alpha_{t|s}``, variance
  ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Ho et al. 2020); valid for VP and VE.
* ``ddim``: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) z`` with
  ``x0_hat = (x + sigma_t^2 s) / alpha_t``, ``eps_hat = -sigma_t s`` and
  ``v = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Song, Meng & Ermon 2021); ``eta = 1`` is
  ``ddpm``, ``eta = 0`` is deterministic.
* ``predictor_corrector``: Euler-Maruyama predictor then ``n_corrector`` Langevin steps at
  ``s``: ``x + e s(x, s) + sqrt(2 e) z``. ``corrector_step="snr"`` (default) is Song et al.
  (2021, Alg. 5): ``e = 2 alpha_i (r |z| / |s(x)|)^2`` with ``r = snr`` and
  ``alpha_i = alpha_{t|s}^2`` (their ``1 - beta_i``). The paper's code takes the norms as
  batch means, which makes ``e`` depend on the batch; computed per particle (as this library
  once did) ``e`` is noisy in low dimension AND a function of the particle's state, which
  over-disperses (``|s(x)| ~ 0`` near a mode gives huge steps). Here the ratio is the ratio of
  population second moments, ``e = 2 alpha_i snr^2 d / E_{p_s}|s(x)|^2`` (``E|z|^2 = d``;
  ``E|s|^2`` is the Fisher information of the particles' law), with ``E|s|^2`` estimated once
  per level and corrector sweep on a PILOT ensemble of fixed size ``n_pilot`` drawn from a key
  derived from the main key (see :func:`pilot_keys`). The step is then one number per level,
  the same for every particle and independent of ``n``: each corrector is an ordinary
  (state-independent) Langevin step and particle ``i`` still depends only on ``(key, i)``.
  ``"fixed"`` uses ``e = 2 snr^2 sigma_s^2`` (the noise-dominated limit ``E|s|^2 -> d /
  sigma_s^2``; deterministic, so the exact law is available).

All of these are approximate samplers of ``p_{t_min}`` whose discretization error vanishes as
``steps -> inf``; the Metropolis-corrected ones live in :mod:`.mcmc`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..schedules import CosineVPSchedule, VPSchedule
from . import noise

__all__ = [
    "KERNELS",
    "EmptyInfo",
    "Kernel",
    "SamplerState",
    "draw_normals",
    "draw_uniforms",
    "has_log_prob",
    "model_denoise",
    "model_log_prob_and_score",
    "model_score",
    "pc_tune",
    "pilot_keys",
    "register_kernel",
]


# ----------------------------------------------------------------------------- model access
def model_score(model: Any, x: jax.Array, t: jax.Array) -> jax.Array:
    """``s(x, t)`` of a model (anything with ``.score``)."""
    return model.score(x, t)


def has_log_prob(model: Any) -> bool:
    """Whether the model exposes an (unnormalized) ``log_prob(x, t)``."""
    return callable(getattr(model, "log_prob", None)) or callable(
        getattr(model, "log_prob_and_score", None)
    )


def model_log_prob_and_score(model: Any, x: jax.Array, t: jax.Array):
    """``(log p_t(x), s(x, t))`` using ``model.log_prob_and_score`` when present."""
    f = getattr(model, "log_prob_and_score", None)
    if callable(f):
        lp, s = f(x, t)
    else:
        lp, s = model.log_prob(x, t), model.score(x, t)
    return jnp.asarray(lp, x.dtype), s


def model_denoise(model: Any, schedule: Any, x: jax.Array, t: jax.Array) -> jax.Array:
    """Tweedie's ``E[x_0 | x_t = x]``: ``model.denoise`` when present, else
    ``(x + sigma_t^2 s(x, t)) / alpha_t``."""
    f = getattr(model, "denoise", None)
    if callable(f):
        return f(x, t)
    return (x + schedule.sigma2(t) * model.score(x, t)) / schedule.alpha(t)


# ----------------------------------------------------------------------------- randomness
def draw_normals(key, i, n, m, d, dtype):
    """Standard normals ``(n, m, d)`` of step ``i`` from ``fold_in(key, i)``.

    Counter-based (:mod:`.noise`): particle ``j``'s numbers depend only on ``(key, i, j)``, for
    any ``n``, under ``jit`` and sharded over devices.
    """
    return noise.normals(jax.random.fold_in(key, i), n, (m, d), dtype)


def draw_uniforms(key, i, n, m, dtype):
    """Uniforms ``(n, m)`` in ``[0, 1)`` of step ``i`` (same construction as
    :func:`draw_normals`)."""
    return noise.uniforms(jax.random.fold_in(key, i), n, (m,), dtype)


_PILOT_TAG = 0x70696C6F  # "pilo"


def pilot_keys(key):
    """``(k_init, k_normal, k_uniform)`` of the pilot ensemble: derived from the main key by
    ``fold_in`` with a fixed tag, so they are independent of the main particles' streams (the
    driver splits the main key itself) and of the batch size."""
    return jax.random.split(jax.random.fold_in(key, _PILOT_TAG), 3)


def pilot_init(schedule, key, n_pilot, d, dtype):
    """Pilot particles ``(n_pilot, d)`` from the prior ``N(0, prior_std^2 I)`` at ``t_max``."""
    return jnp.asarray(schedule.prior_std, dtype) * draw_normals(key, 0, n_pilot, 1, d, dtype)[:, 0]


# ----------------------------------------------------------------------------- coefficients
def _sigma2_between(schedule: Any, t, s):
    """``alpha_{t|s}`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (exact
    ``-expm1`` form for variance-preserving schedules: no cancellation for small steps)."""
    log_a = schedule.log_alpha(t) - schedule.log_alpha(s)
    a_ts = jnp.exp(log_a)
    if isinstance(schedule, (VPSchedule, CosineVPSchedule)):
        s2_ts = -jnp.expm1(2.0 * log_a)
    else:
        s2_ts = schedule.sigma2(t) - a_ts * a_ts * schedule.sigma2(s)
    return a_ts, s2_ts


def _pf_velocity(model, schedule, x, t):
    """Probability-flow velocity ``dx/dt = f(t) x - g(t)^2 s(x, t) / 2``."""
    return schedule.drift_coeff(t) * x - 0.5 * schedule.g2(t) * model_score(model, x, t)


def em_transition(model, schedule, x, normals, t, s, opts):
    """Reverse-SDE Euler-Maruyama step ``t -> s``."""
    dt = t - s
    g2 = schedule.g2(t)
    sc = model_score(model, x, t)
    return x + (g2 * sc - schedule.drift_coeff(t) * x) * dt + jnp.sqrt(g2 * dt) * normals[0]


def ode_euler_transition(model, schedule, x, normals, t, s, opts):
    """Probability-flow Euler step ``t -> s``."""
    return x + (s - t) * _pf_velocity(model, schedule, x, t)


def ode_heun_transition(model, schedule, x, normals, t, s, opts):
    """Probability-flow Heun (explicit trapezoidal) step ``t -> s``."""
    h = s - t
    v1 = _pf_velocity(model, schedule, x, t)
    v2 = _pf_velocity(model, schedule, x + h * v1, s)
    return x + 0.5 * h * (v1 + v2)


def ddpm_transition(model, schedule, x, normals, t, s, opts):
    """Ancestral step: exact Gaussian posterior of the forward transition, score form."""
    a_ts, s2_ts = _sigma2_between(schedule, t, s)
    mean = (x + s2_ts * model_score(model, x, t)) / a_ts
    var = s2_ts * schedule.sigma2(s) / schedule.sigma2(t)
    return mean + jnp.sqrt(var) * normals[0]


def ddim_transition(model, schedule, x, normals, t, s, opts):
    """DDIM step with stochasticity ``eta``."""
    eta = opts["eta"]
    a_ts, s2_ts = _sigma2_between(schedule, t, s)
    s2_t, s2_s = schedule.sigma2(t), schedule.sigma2(s)
    sc = model_score(model, x, t)
    # alpha_s x0_hat = (x + sigma_t^2 sc) / alpha_{t|s};  eps_hat = -sigma_t sc
    out = (x + s2_t * sc) / a_ts
    if eta == 0:
        return out - jnp.sqrt(s2_s) * jnp.sqrt(s2_t) * sc
    var = (eta * eta) * s2_ts * s2_s / s2_t
    out = out - jnp.sqrt(jnp.maximum(s2_s - var, 0.0)) * jnp.sqrt(s2_t) * sc
    return out + jnp.sqrt(var) * normals[0]


def _corrector(model, x, z, s, e):
    """One Langevin corrector step ``x + e s(x, s) + sqrt(2 e) z`` at level ``s``."""
    return x + e * model_score(model, x, s) + jnp.sqrt(2.0 * e) * z


def pc_transition(model, schedule, x, normals, t, s, opts, eps=None):
    """Euler-Maruyama predictor, then ``n_corrector`` Langevin corrector steps at ``s``.

    ``eps (n_corrector,)``: the corrector step sizes of this level (``corrector_step="snr"``,
    from :func:`pc_tune`); ignored for ``"fixed"`` (``e = 2 snr^2 sigma_s^2``)."""
    x = em_transition(model, schedule, x, normals[:1], t, s, opts)
    for j in range(opts["n_corrector"]):
        if opts["corrector_step"] == "fixed":
            e = 2.0 * opts["snr"] ** 2 * schedule.sigma2(s)
        else:
            e = eps[j]
        x = _corrector(model, x, normals[1 + j], s, e)
    return x


def _snr_step(schedule, scores, t, s, snr):
    """``e = 2 alpha_i snr^2 d / mean_pilot |s|^2`` for pilot scores ``(n_pilot, d)``."""
    d = scores.shape[-1]
    a_ts, _ = _sigma2_between(schedule, t, s)
    fisher = jnp.mean(jnp.sum(scores * scores, axis=-1))
    fisher = jnp.maximum(fisher, jnp.finfo(scores.dtype).tiny)
    return 2.0 * a_ts * a_ts * snr * snr * d / fisher


def pc_tune(model, schedule, key, times, opts, d, dtype):
    """Corrector step sizes ``(steps, n_corrector)`` from a pilot run (``corrector_step="snr"``).

    The pilot is the same predictor-corrector sampler on ``n_pilot`` particles from
    :func:`pilot_keys`; before corrector sweep ``j`` of level ``i`` it sets
    ``e_ij = 2 alpha_i snr^2 d / mean_pilot |s(x, s_i)|^2`` and moves with it. Returns ``None``
    when no tuning applies (``"fixed"`` steps or no corrector).
    """
    nc = opts["n_corrector"]
    if opts["corrector_step"] == "fixed" or nc == 0:
        return None
    n_p = opts["n_pilot"]
    k_init, k_norm, _ = pilot_keys(key)
    xp = pilot_init(schedule, k_init, n_p, d, dtype)
    score_v = jax.vmap(model_score, (None, 0, None))

    def level(xp, i):
        t, s = times[i], times[i + 1]
        z = draw_normals(k_norm, i, n_p, 1 + nc, d, dtype)
        xp = jax.vmap(em_transition, (None, None, 0, 0, None, None, None))(
            model, schedule, xp, z[:, :1], t, s, opts
        )
        eps = []
        for j in range(nc):
            sc = score_v(model, xp, s)
            e = _snr_step(schedule, sc, t, s, opts["snr"])
            xp = xp + e * sc + jnp.sqrt(2.0 * e) * z[:, 1 + j]
            eps.append(e)
        return xp, jnp.stack(eps)

    _, eps = jax.lax.scan(level, xp, jnp.arange(times.shape[0] - 1))
    return eps


# ----------------------------------------------------------------------------- kernels
class SamplerState(NamedTuple):
    """State of a non-Metropolis kernel: the particle ``position (d,)``."""

    position: jax.Array


class EmptyInfo(NamedTuple):
    """Per-particle info of non-Metropolis kernels (the driver adds non-finite counts)."""


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A sampling method.

    Attributes:
      name: method name.
      defaults: accepted options and their defaults (static, hashable values).
      init: ``init(x, t, opts) -> state``.
      step: ``step(model, schedule, state, t, t_next, normals, uniforms, opts, params) ->
        (state, info)``; ``params`` is this level's slice of what ``tune`` returned (``None``
        for kernels without tuning).
      num_normals: ``opts -> int``, standard normal vectors ``(d,)`` per particle and step.
      num_uniforms: ``opts -> int``, uniforms per particle and step.
      transition: deterministic ``(model, schedule, x, normals, t, t_next, opts) -> x_next``,
        affine in ``(x, normals)`` for an affine score when ``affine(opts)``; ``None`` for MCMC.
      affine: ``opts -> bool``, whether :func:`sampler_law` applies.
      needs_log_prob: Metropolis kernels need ``model.log_prob``.
      validate: ``opts -> None``, raises on bad option values.
      tune: optional ``tune(model, schedule, key, times, opts, d, dtype) -> params`` (a pytree
        with leading axis ``steps``, or ``None``): per-level parameters computed BEFORE the
        main run from a pilot ensemble of fixed size drawn from ``key`` (never from the main
        particles), so every level's kernel is fixed and batch independent.
    """

    name: str
    defaults: tuple
    init: Callable
    step: Callable
    num_normals: Callable
    num_uniforms: Callable = lambda opts: 0
    transition: Callable | None = None
    affine: Callable = lambda opts: True
    needs_log_prob: bool = False
    validate: Callable = lambda opts: None
    tune: Callable | None = None


KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    """Add a kernel to the registry used by ``cj.sample`` (name must be new)."""
    if kernel.name in KERNELS:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    KERNELS[kernel.name] = kernel
    return kernel


def _position_init(x, t, opts):
    return SamplerState(x)


def _from_transition(transition):
    def step(model, schedule, state, t, s, normals, uniforms, opts, params=None):
        return SamplerState(transition(model, schedule, state.position, normals, t, s, opts)), (
            EmptyInfo()
        )

    return step


def _simple(name, transition, num_normals, defaults=(), affine=lambda o: True, validate=None,
            step=None, tune=None):
    return register_kernel(
        Kernel(
            name=name,
            defaults=tuple(defaults),
            init=_position_init,
            step=step or _from_transition(transition),
            num_normals=num_normals,
            transition=transition,
            affine=affine,
            validate=validate or (lambda opts: None),
            tune=tune,
        )
    )


def _check_eta(opts):
    eta = opts["eta"]
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a float in [0, 1], got {eta!r}")


def _check_pc(opts):
    if opts["corrector_step"] not in ("snr", "fixed"):
        raise ValueError(
            f"corrector_step must be 'snr' or 'fixed', got {opts['corrector_step']!r}"
        )
    n = opts["n_corrector"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n_corrector must be an int >= 0, got {n!r}")
    if not isinstance(opts["snr"], (int, float)) or not opts["snr"] > 0:
        raise ValueError(f"snr must be a positive float, got {opts['snr']!r}")
    check_n_pilot(opts)


def check_n_pilot(opts):
    """``n_pilot`` must be an int >= 2 (an ensemble average needs particles)."""
    n = opts["n_pilot"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n_pilot must be an int >= 2, got {n!r}")


def _pc_step(model, schedule, state, t, s, normals, uniforms, opts, params=None):
    return SamplerState(pc_transition(model, schedule, state.position, normals, t, s, opts,
                                      params)), EmptyInfo()


_simple("euler_maruyama", em_transition, lambda o: 1)
_simple("ode_euler", ode_euler_transition, lambda o: 0)
_simple("ode_heun", ode_heun_transition, lambda o: 0)
_simple("ddpm", ddpm_transition, lambda o: 1)
_simple(
    "ddim", ddim_transition, lambda o: 0 if o["eta"] == 0 else 1, (("eta", 0.0),),
    validate=_check_eta,
)
_simple(
    "predictor_corrector",
    pc_transition,
    lambda o: 1 + o["n_corrector"],
    (("snr", 0.16), ("n_corrector", 1), ("corrector_step", "snr"), ("n_pilot", 256)),
    affine=lambda o: o["corrector_step"] == "fixed" or o["n_corrector"] == 0,
    validate=_check_pc,
    step=_pc_step,
    tune=pc_tune,
)
