r"""Sampler methods as values: frozen, hashable objects whose fields are their options.

A method is an instance of a :class:`SamplerMethod` subclass (``cj.DDIM(eta=0.3)``), like a
diffrax solver or a blackjax kernel; the strings of ``cj.sample(..., method="ddim", eta=0.3)``
are aliases looked up in :data:`METHODS`. Every method acts on ONE particle (the driver vmaps
it, or runs its ``transition`` on particle-minor tiles) and receives all its randomness as
pre-drawn standard normals ``normals (num_normals, d)`` and uniforms ``uniforms
(num_uniforms,)`` that the driver generates per step, so particle ``i``'s randomness depends only
on ``(key, i)``.

Non-Metropolis methods are a deterministic ``transition(model, schedule, x, normals, t, t_next)``.
For a model whose score is affine in ``x`` it is affine in ``(x, normals)``;
:func:`composition_jax.verify.sampler_law` differentiates this very function to propagate the
exact Gaussian law (``affine_exact``), so the sampler and its oracle cannot drift apart.

Notation: ``x_t = alpha_t x_0 + sigma_t eps``; forward SDE ``dx = f(t) x dt + g(t) dW``; a
reverse step goes from ``t`` to ``s = t_next < t``; ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (the forward transition ``x_t | x_s``).

* :class:`EulerMaruyama`: reverse SDE ``x + [g^2 s(x,t) - f x] dt + g sqrt(dt) z``,
  ``dt = t - s`` (weak order 1; Song et al. 2021).
* :class:`ODEEuler` / :class:`ODEHeun`: probability flow ``dx/dt = f x - g^2 s / 2``, Euler
  (order 1) or Heun's trapezoidal predictor-corrector (order 2; Karras et al. 2022).
* :class:`DDPM`: ancestral sampling with the exact Gaussian posterior of the forward transition
  in score form: mean ``(x + sigma_{t|s}^2 s(x,t)) / alpha_{t|s}``, variance
  ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Ho et al. 2020); valid for VP and VE.
* :class:`DDIM`: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) z`` with
  ``x0_hat = (x + sigma_t^2 s) / alpha_t``, ``eps_hat = -sigma_t s`` and
  ``v = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Song, Meng & Ermon 2021); ``eta = 1`` is
  DDPM, ``eta = 0`` is deterministic.
* :class:`PredictorCorrector`: Euler-Maruyama predictor then ``n_corrector`` Langevin steps at
  ``s``: ``x + e s(x, s) + sqrt(2 e) z``. ``corrector_step="snr"`` (default) is Song et al.
  (2021, Alg. 5): ``e = 2 alpha_i (r |z| / |s(x)|)^2`` with ``r = snr`` and
  ``alpha_i = alpha_{t|s}^2`` (their ``1 - beta_i``). The paper's code takes the norms as
  batch means, which makes ``e`` depend on the batch; computed per particle ``e`` is noisy in
  low dimension AND a function of the particle's state, which over-disperses (``|s(x)| ~ 0``
  near a mode gives huge steps). Here the ratio is the ratio of population second moments,
  ``e = 2 alpha_i snr^2 d / E_{p_s}|s(x)|^2`` (``E|z|^2 = d``; ``E|s|^2`` is the Fisher
  information of the particles' law), with ``E|s|^2`` estimated once per level and corrector
  sweep on a PILOT ensemble of fixed size ``n_pilot`` drawn from a key derived from the main key
  (:func:`~.noise.pilot_keys`). The step is then one number per level, the same for every
  particle and independent of ``n``: each corrector is an ordinary (state-independent) Langevin
  step and particle ``i`` still depends only on ``(key, i)``. ``"fixed"`` uses
  ``e = 2 snr^2 sigma_s^2`` (the noise-dominated limit ``E|s|^2 -> d / sigma_s^2``;
  deterministic, so the exact law is available).
* :class:`AnnealedMALA` / :class:`AnnealedHMC`: Euler-Maruyama predictor then Metropolis moves
  that leave ``p_s`` exactly invariant (:mod:`.mcmc`); they need ``model.log_prob``.
* :class:`DPMSolver2M` / :class:`DPMSolver2S`: DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095),
  the second-order multistep (Alg. 2) and single-step (Alg. 1 with ``r_1 = 1/2``) solvers of
  the probability-flow ODE in data-prediction form, in ``lambda = log(alpha / sigma)``
  (``= schedule.log_snr / 2``); any schedule. With ``h = lambda_s - lambda_t`` and
  ``x0_hat = (x + sigma_t^2 s(x, t)) / alpha_t`` the first-order step (DDIM with ``eta = 0``) is
  ``x_s = (sigma_s / sigma_t) x - alpha_s expm1(-h) x0_hat``; 2M replaces ``x0_hat`` by
  ``(1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev`` with ``r = h_prev / h`` (the previous step's
  denoised estimate is carried in the state); 2S evaluates the denoiser a second time at the
  log-SNR midpoint ``lambda_t + h/2`` and steps with it.

EDM stochastic churn (Karras et al. 2022, Alg. 2, lines 5-6; options ``s_churn``, ``s_tmin``,
``s_tmax``, ``s_noise`` of :class:`ODEEuler`, :class:`ODEHeun` and :class:`DDIM`, named as in
k-diffusion's ``sample_euler``/``sample_heun``). EDM's noise level is the noise-to-signal ratio
``r_t = sigma_t / alpha_t = exp(-lambda_t)`` of the scaled variable ``y = x / alpha_t`` (the VE
form of any schedule: ``y_t = x_0 + r_t eps``). Before step ``i``, with ``N = steps``,
``gamma_i = min(s_churn / N, sqrt(2) - 1)`` if ``s_tmin <= r_{t_i} <= s_tmax`` else ``0``;
``r_hat = (1 + gamma_i) r_{t_i}``, ``t_hat`` the time with ``r_{t_hat} = r_hat``
(``schedule.t_from_log_snr``), and

``x_hat = alpha_{t_hat} (x / alpha_{t_i} + sqrt(r_hat^2 - r_{t_i}^2) s_noise z)``,

i.e. ``y_hat = y + sqrt(r_hat^2 - r^2) s_noise z``. With ``s_noise = 1`` this is exactly the
forward transition ``x_{t_hat} | x_{t_i}`` (``alpha_{t_hat|t_i} x + sigma_{t_hat|t_i} z``), so
it maps ``p_{t_i}`` to ``p_{t_hat}``; the method's own deterministic step then goes from
``t_hat`` to ``t_{i+1}``. ``gamma_i`` depends on ``N``, so it is computed per level by
``tune`` from the time grid and passed to ``transition(..., gamma=)``; one extra normal per step
(the last row). The churn is element-wise (per coordinate, with per-level scalars), so churned
samplers run in both layouts, and ``layout="auto"`` picks the particle-minor one for the models
that declare ``columns_native``.

``model_calls_per_step`` (every method): model evaluations (``score``, ``denoise``,
``log_prob_and_score``) per particle and step -- the cost unit to compare methods at equal cost.
``pilot_model_calls(steps)``: the evaluations of the pilot ensemble of the tuned methods over a
run (all ``n_pilot`` pilot particles together; ``0`` for the others), a fixed cost on top of
``n`` times the per-particle count.

All of these are approximate samplers of ``p_{t_min}`` whose discretization error vanishes as
``steps -> inf``.

Adding a method: subclass :class:`SamplerMethod` (fields with defaults are its options, checked
in ``__post_init__``), implement ``num_normals`` and ``transition`` (or ``step``), and call
:func:`register_method` to give it a string alias (an instance works without one).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ..schedules import CosineVPSchedule, RectifiedFlowSchedule, VPSchedule
from . import mcmc
from .mcmc import MCMCInfo, MCMCState
from .noise import draw_normals, pilot_init, pilot_keys

__all__ = [
    "DDIM",
    "DDPM",
    "METHODS",
    "AnnealedHMC",
    "AnnealedMALA",
    "DPMSolver2M",
    "DPMSolver2S",
    "DPMState",
    "EmptyInfo",
    "EulerMaruyama",
    "MCMCInfo",
    "MCMCState",
    "ODEEuler",
    "ODEHeun",
    "PredictorCorrector",
    "SamplerMethod",
    "SamplerState",
    "denoise",
    "register_method",
    "resolve_method",
]


class SamplerState(NamedTuple):
    """State of a non-Metropolis method: the particle ``position (d,)``."""

    position: jax.Array


class EmptyInfo(NamedTuple):
    """Per-particle info of non-Metropolis methods (the driver adds non-finite counts)."""


def _unflatten(cls, names, aux, children):
    del children
    obj = object.__new__(cls)
    for n, v in zip(names, aux):
        object.__setattr__(obj, n, v)
    return obj


class SamplerMethod(abc.ABC):
    """Abstract base of every sampler method (the protocol ``cj.sample`` drives).

    Subclasses are made frozen dataclasses and registered as pytrees automatically: their
    annotated fields are the options (static, hashable: the method is part of ``cj.sample``'s
    jit cache key; equal options give equal, equally hashed methods), validated in
    ``__post_init__`` with a ``ValueError``/``TypeError`` naming the option.

    Protocol (all on ONE particle ``x (d,)``; ``t_next < t``):

    * ``init(x, t) -> state`` (a NamedTuple with a ``position`` field);
    * ``step(model, schedule, state, t, t_next, normals, uniforms, params=None) ->
      (state, info)`` with ``normals (num_normals, d)``, ``uniforms (num_uniforms,)`` and
      ``params`` this level's slice of what :meth:`tune` returned (``None`` without tuning);
      ``info`` is a NamedTuple (fields ``acceptance`` / ``step_size`` are averaged per level
      into ``SampleInfo``);
    * ``transition(model, schedule, x, normals, t, t_next) -> x_next``: deterministic given the
      normals, reading the model only through ``model.score``; ``None`` for methods that are
      not a transition (Metropolis);
    * ``num_normals``, ``num_uniforms``: ints, per particle and step;
    * ``model_calls_per_step``: int, model evaluations (``score``, ``denoise``, ``log_prob``,
      ``log_prob_and_score``: one each) per particle and step (not counting a pilot's);
    * ``pilot_model_calls(steps)``: int, model evaluations that :meth:`tune` makes over a run
      of ``steps`` levels, all pilot particles together (``0`` without a pilot);
    * ``tune(model, schedule, key, times, d, dtype)``: per-level parameters (a pytree with
      leading axis ``steps``) computed BEFORE the main run from a pilot ensemble of fixed size
      drawn from ``key``, or ``None``.

    Class-level facts the driver reads:

    * ``elementwise``: ``init`` and ``step`` are element-wise formulas in ``(state, score,
      normals)`` and this level's ``params`` (scalars or arrays without a particle axis) with no
      reduction over coordinates and no uniforms (``num_uniforms == 0``), so they may run on
      particle-minor ``(d, B)`` tiles (``x`` and every state field ``(d, B)``, ``normals
      (num_normals, d, B)``) with ``model.score_columns`` (``layout="columns"``);
    * ``affine_exact``: ``transition`` is affine in ``(x, normals)`` for affine scores, so
      :func:`~composition_jax.verify.sampler_law` gives the exact law of the output;
    * ``needs_log_prob``: the model must declare ``has_log_prob``.
    """

    elementwise: ClassVar[bool] = False
    needs_log_prob: ClassVar[bool] = False
    num_uniforms: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)  # in place: fields = options, eq and hash
        names = tuple(f.name for f in dataclasses.fields(cls))
        jax.tree_util.register_pytree_node(
            cls,
            lambda obj: ((), tuple(getattr(obj, n) for n in names)),
            lambda aux, children: _unflatten(cls, names, aux, children),
        )

    @property
    @abc.abstractmethod
    def num_normals(self) -> int:
        """Standard normal vectors ``(d,)`` consumed per particle and step."""

    @property
    @abc.abstractmethod
    def model_calls_per_step(self) -> int:
        """Model evaluations (``score``, ``denoise``, ``log_prob_and_score``) per particle and
        step: the cost of a step in the unit that dominates for neural models."""

    #: ``transition(model, schedule, x, normals, t, t_next) -> x_next`` (a method), or ``None``.
    transition: ClassVar[Any] = None

    @property
    def affine_exact(self) -> bool:
        """Whether :func:`~composition_jax.verify.sampler_law` applies (default: the method is a
        transition)."""
        return self.transition is not None

    def init(self, x: jax.Array, t: jax.Array) -> NamedTuple:
        """The state of one particle ``x (d,)`` at the first time ``t``."""
        del t
        return SamplerState(x)

    def step(self, model, schedule, state, t, t_next, normals, uniforms, params=None):
        """One step ``t -> t_next`` of one particle: ``(state, info)`` (default: the
        transition)."""
        del uniforms, params
        x = self.transition(model, schedule, state.position, normals, t, t_next)
        return SamplerState(x), EmptyInfo()

    def tune(self, model, schedule, key, times, d, dtype):
        """Per-level parameters from a pilot ensemble (default: none)."""
        del model, schedule, key, times, d, dtype
        return None

    def pilot_model_calls(self, steps: int) -> int:
        """Model evaluations that :meth:`tune` makes for a run of ``steps`` levels, summed over
        the pilot particles: ``n_pilot`` times the evaluations of one pilot particle (default
        ``0``: no pilot, or a ``tune`` that reads only the time grid). Independent of the
        number ``n`` of main particles; ``cj.sample`` reports it as
        ``info.pilot_model_calls``."""
        del steps
        return 0


# ------------------------------------------------------------------------- option checks
def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _check_positive(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{name} must be a positive float, got {v!r}")


def _check_n_pilot(n):
    """``n_pilot`` must be an int >= 2 (an ensemble average needs particles)."""
    _check_int(n, "n_pilot", 2)


# ------------------------------------------------------------------------- shared math
def denoise(model, schedule, x, t):
    """Tweedie's ``E[x_0 | x_t = x]``: ``model.denoise`` when the model declares
    ``has_denoise``, else ``(x + sigma_t^2 s(x, t)) / alpha_t`` (the driver's final step)."""
    if model.has_denoise:
        return model.denoise(x, t)
    return (x + schedule.sigma2(t) * model.score(x, t)) / schedule.alpha(t)


def _sigma2_between(schedule, t, s):
    """``alpha_{t|s}`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (exact
    ``-expm1`` form for variance-preserving schedules: no cancellation for small steps)."""
    log_a = schedule.log_alpha(t) - schedule.log_alpha(s)
    a_ts = jnp.exp(log_a)
    if isinstance(schedule, (VPSchedule, CosineVPSchedule)):
        s2_ts = -jnp.expm1(2.0 * log_a)
    elif isinstance(schedule, RectifiedFlowSchedule):
        # t^2 - ((1-t)/(1-s))^2 s^2 = (t - s)(t + s - 2 t s) / (1 - s)^2
        s2_ts = (t - s) * (t + s - 2.0 * t * s) / ((1.0 - s) * (1.0 - s))
    else:
        s2_ts = schedule.sigma2(t) - a_ts * a_ts * schedule.sigma2(s)
    return a_ts, s2_ts


def _pf_velocity(model, schedule, x, t):
    """Probability-flow velocity ``dx/dt = f(t) x - g(t)^2 s(x, t) / 2``."""
    return schedule.drift_coeff(t) * x - 0.5 * schedule.g2(t) * model.score(x, t)


def _check_churn(m):
    """Validate the EDM churn options of ``m`` (``s_churn``, ``s_tmin``, ``s_tmax``,
    ``s_noise``)."""
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
        v = getattr(m, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a float >= 0, got {v!r}")
    if not m.s_tmax >= m.s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin = {m.s_tmin}, got {m.s_tmax!r}")


def churn_gammas(schedule, times, s_churn, s_tmin, s_tmax):
    """Per-level churn ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` where
    ``s_tmin <= sigma_{t_i} / alpha_{t_i} <= s_tmax``, else 0 (Karras et al. 2022, Alg. 2);
    ``times (N + 1,)`` -> ``(N,)``."""
    n = times.shape[0] - 1
    r = jnp.exp(-0.5 * jax.vmap(schedule.log_snr)(times[:-1]))
    g = min(s_churn / n, 2.0**0.5 - 1.0)
    inside = (r >= s_tmin) & (r <= s_tmax)
    return jnp.where(inside, jnp.asarray(g, times.dtype), jnp.zeros((), times.dtype))


def churn(schedule, x, z, t, gamma, s_noise):
    """EDM churn in the scaled variable ``y = x / alpha``: ``(x_hat, t_hat)`` with
    ``r_{t_hat} = (1 + gamma) r_t`` and ``x_hat = alpha_{t_hat} (x / alpha_t +
    sqrt(r_hat^2 - r_t^2) s_noise z)`` (module docstring). ``gamma = 0`` returns ``(x, t)``."""
    lam = schedule.log_snr(t)
    t_hat = schedule.t_from_log_snr(lam - 2.0 * jnp.log1p(gamma)).astype(jnp.result_type(t))
    t_hat = jnp.where(gamma > 0, t_hat, t)
    a_t, a_hat = schedule.alpha(t), schedule.alpha(t_hat)
    r_t = schedule.sigma(t) / a_t
    noise = a_hat * r_t * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise
    return (a_hat / a_t) * x + noise * z, t_hat


class _Churned(SamplerMethod):
    """Shared EDM churn options of the deterministic samplers (module docstring)."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    @property
    def _base_normals(self) -> int:
        return 0

    @property
    def num_normals(self) -> int:
        return self._base_normals + (1 if self.s_churn > 0 else 0)

    def _churn(self, schedule, x, normals, t, gamma):
        if self.s_churn == 0:
            return x, t
        if gamma is None:
            raise ValueError(
                f"{type(self).__name__}(s_churn={self.s_churn}) needs this level's churn "
                "gamma= (from tune; it depends on the number of steps)"
            )
        return churn(schedule, x, normals[-1], t, gamma, self.s_noise)

    def step(self, model, schedule, state, t, t_next, normals, uniforms, params=None):
        del uniforms
        x = self.transition(model, schedule, state.position, normals, t, t_next, params)
        return SamplerState(x), EmptyInfo()

    def tune(self, model, schedule, key, times, d, dtype):
        """Per-level churn ``gamma (steps,)`` (:func:`churn_gammas`), or ``None`` without churn."""
        del model, key, d, dtype
        if self.s_churn == 0:
            return None
        return churn_gammas(schedule, times, self.s_churn, self.s_tmin, self.s_tmax)


# ------------------------------------------------------------------------- methods
class EulerMaruyama(SamplerMethod):
    """Reverse-SDE Euler-Maruyama (weak order 1). One normal per step."""

    elementwise: ClassVar[bool] = True
    num_normals: ClassVar[int] = 1
    model_calls_per_step: ClassVar[int] = 1

    def transition(self, model, schedule, x, normals, t, t_next):
        dt = t - t_next
        g2 = schedule.g2(t)
        sc = model.score(x, t)
        return x + (g2 * sc - schedule.drift_coeff(t) * x) * dt + jnp.sqrt(g2 * dt) * normals[0]


#: ``(model, schedule, x, normals, t, t_next) -> x``: the Euler-Maruyama step, the predictor of
#: the predictor-corrector and annealed Metropolis methods.
_em = EulerMaruyama().transition


class ODEEuler(_Churned):
    """Probability-flow ODE, explicit Euler (order 1). Deterministic unless ``s_churn > 0``
    (EDM churn, Karras et al. 2022 Alg. 2 with Euler steps; module docstring)."""

    elementwise: ClassVar[bool] = True
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self):
        _check_churn(self)

    def transition(self, model, schedule, x, normals, t, t_next, gamma=None):
        """``gamma``: this level's churn (needed when ``s_churn > 0``)."""
        x, t = self._churn(schedule, x, normals, t, gamma)
        return x + (t_next - t) * _pf_velocity(model, schedule, x, t)


class ODEHeun(_Churned):
    """Probability-flow ODE, Heun's explicit trapezoidal rule (order 2). Deterministic unless
    ``s_churn > 0`` (EDM churn, Karras et al. 2022 Alg. 2; module docstring)."""

    elementwise: ClassVar[bool] = True
    model_calls_per_step: ClassVar[int] = 2

    def __post_init__(self):
        _check_churn(self)

    def transition(self, model, schedule, x, normals, t, t_next, gamma=None):
        """``gamma``: this level's churn (needed when ``s_churn > 0``)."""
        x, t = self._churn(schedule, x, normals, t, gamma)
        h = t_next - t
        v1 = _pf_velocity(model, schedule, x, t)
        v2 = _pf_velocity(model, schedule, x + h * v1, t_next)
        return x + 0.5 * h * (v1 + v2)


class DDPM(SamplerMethod):
    """Ancestral sampling: the exact Gaussian posterior of the forward transition, score
    form. One normal per step."""

    elementwise: ClassVar[bool] = True
    num_normals: ClassVar[int] = 1
    model_calls_per_step: ClassVar[int] = 1

    def transition(self, model, schedule, x, normals, t, t_next):
        a_ts, s2_ts = _sigma2_between(schedule, t, t_next)
        mean = (x + s2_ts * model.score(x, t)) / a_ts
        var = s2_ts * schedule.sigma2(t_next) / schedule.sigma2(t)
        return mean + jnp.sqrt(var) * normals[0]


class DDIM(_Churned):
    """DDIM with stochasticity ``eta`` in ``[0, 1]`` (``0``: deterministic, ``1``: DDPM);
    optional EDM churn before each step (``s_churn``; module docstring)."""

    eta: float = 0.0
    elementwise: ClassVar[bool] = True
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self):
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a float in [0, 1], got {eta!r}")
        _check_churn(self)

    @property
    def _base_normals(self) -> int:
        return 0 if self.eta == 0 else 1

    def transition(self, model, schedule, x, normals, t, t_next, gamma=None):
        """``gamma``: this level's churn (needed when ``s_churn > 0``; the churn uses the last
        normal row, the DDIM noise the first)."""
        x, t = self._churn(schedule, x, normals, t, gamma)
        eta = self.eta
        a_ts, s2_ts = _sigma2_between(schedule, t, t_next)
        s2_t, s2_s = schedule.sigma2(t), schedule.sigma2(t_next)
        sc = model.score(x, t)
        # alpha_s x0_hat = (x + sigma_t^2 sc) / alpha_{t|s};  eps_hat = -sigma_t sc
        out = (x + s2_t * sc) / a_ts
        if eta == 0:
            return out - jnp.sqrt(s2_s) * jnp.sqrt(s2_t) * sc
        var = (eta * eta) * s2_ts * s2_s / s2_t
        out = out - jnp.sqrt(jnp.maximum(s2_s - var, 0.0)) * jnp.sqrt(s2_t) * sc
        return out + jnp.sqrt(var) * normals[0]


class PredictorCorrector(SamplerMethod):
    """Euler-Maruyama predictor, then ``n_corrector`` Langevin corrector steps at ``t_next``
    with step ``2 alpha_i snr^2 d / E|s|^2`` tuned on a pilot (``corrector_step="snr"``) or
    ``2 snr^2 sigma_s^2`` (``"fixed"``, affine-exact). ``1 + n_corrector`` normals per step."""

    snr: float = 0.16
    n_corrector: int = 1
    corrector_step: str = "snr"
    n_pilot: int = 256

    def __post_init__(self):
        if self.corrector_step not in ("snr", "fixed"):
            raise ValueError(
                f"corrector_step must be 'snr' or 'fixed', got {self.corrector_step!r}"
            )
        _check_int(self.n_corrector, "n_corrector", 0)
        _check_positive(self.snr, "snr")
        _check_n_pilot(self.n_pilot)

    @property
    def num_normals(self) -> int:
        return 1 + self.n_corrector

    @property
    def model_calls_per_step(self) -> int:
        return 1 + self.n_corrector

    @property
    def _tuned(self) -> bool:
        return self.corrector_step == "snr" and self.n_corrector > 0

    @property
    def affine_exact(self) -> bool:
        return not self._tuned

    def pilot_model_calls(self, steps: int) -> int:
        """``n_pilot * steps * (1 + n_corrector)`` with the SNR step (the pilot runs this
        sampler: one predictor score and one score per corrector sweep per level), else 0."""
        return self.n_pilot * steps * (1 + self.n_corrector) if self._tuned else 0

    def transition(self, model, schedule, x, normals, t, t_next, eps=None):
        """``eps (n_corrector,)``: this level's corrector steps from :meth:`tune` (needed for
        ``corrector_step="snr"``; ignored for ``"fixed"``)."""
        if self._tuned and eps is None:
            raise ValueError(
                "PredictorCorrector(corrector_step='snr') has per-level corrector steps from "
                "its pilot (tune); pass eps=, or use corrector_step='fixed'"
            )
        x = _em(model, schedule, x, normals[:1], t, t_next)
        for j in range(self.n_corrector):
            if self.corrector_step == "fixed":
                e = 2.0 * self.snr**2 * schedule.sigma2(t_next)
            else:
                e = eps[j]
            x = x + e * model.score(x, t_next) + jnp.sqrt(2.0 * e) * normals[1 + j]
        return x

    def step(self, model, schedule, state, t, t_next, normals, uniforms, params=None):
        del uniforms
        x = self.transition(model, schedule, state.position, normals, t, t_next, params)
        return SamplerState(x), EmptyInfo()

    def tune(self, model, schedule, key, times, d, dtype):
        """Corrector steps ``(steps, n_corrector)`` from a pilot run (``"snr"``), else ``None``.

        The pilot is this sampler on ``n_pilot`` particles from :func:`~.noise.pilot_keys`;
        before corrector sweep ``j`` of level ``i`` it sets
        ``e_ij = 2 alpha_i snr^2 d / mean_pilot |s(x, s_i)|^2`` and moves with it."""
        if not self._tuned:
            return None
        nc, n_p = self.n_corrector, self.n_pilot
        k_init, k_norm, _ = pilot_keys(key)
        xp = pilot_init(schedule, k_init, n_p, d, dtype)
        score_v = jax.vmap(lambda x, t: model.score(x, t), (0, None))
        em_v = jax.vmap(_em, (None, None, 0, 0, None, None))

        def level(xp, i):
            t, s = times[i], times[i + 1]
            z = draw_normals(k_norm, i, n_p, 1 + nc, d, dtype)
            xp = em_v(model, schedule, xp, z[:, :1], t, s)
            eps = []
            for j in range(nc):
                sc = score_v(xp, s)
                e = _snr_step(schedule, sc, t, s, self.snr)
                xp = xp + e * sc + jnp.sqrt(2.0 * e) * z[:, 1 + j]
                eps.append(e)
            return xp, jnp.stack(eps)

        _, eps = jax.lax.scan(level, xp, jnp.arange(times.shape[0] - 1))
        return eps


def _snr_step(schedule, scores, t, s, snr):
    """``e = 2 alpha_i snr^2 d / mean_pilot |s|^2`` for pilot scores ``(n_pilot, d)``."""
    d = scores.shape[-1]
    a_ts, _ = _sigma2_between(schedule, t, s)
    fisher = jnp.mean(jnp.sum(scores * scores, axis=-1))
    fisher = jnp.maximum(fisher, jnp.finfo(scores.dtype).tiny)
    return 2.0 * a_ts * a_ts * snr * snr * d / fisher


class _Annealed(SamplerMethod):
    """Shared options and steps of the annealed Metropolis methods (:mod:`.mcmc`)."""

    mcmc_steps: int = 2
    step_size: float = 0.1
    target_accept: float = 0.574
    adapt: bool = True
    n_pilot: int = 256
    needs_log_prob: ClassVar[bool] = True
    _kind: ClassVar[str] = ""

    def __post_init__(self):
        _check_int(self.mcmc_steps, "mcmc_steps", 1)
        _check_positive(self.step_size, "step_size")
        ta = self.target_accept
        if isinstance(ta, bool) or not isinstance(ta, (int, float)) or not 0 < ta < 1:
            raise ValueError(f"target_accept must lie in (0, 1), got {ta!r}")
        if not isinstance(self.adapt, bool):
            raise TypeError(f"adapt must be a bool, got {self.adapt!r}")
        _check_n_pilot(self.n_pilot)

    @property
    def num_normals(self) -> int:
        return 1 + self.mcmc_steps

    @property
    def num_uniforms(self) -> int:
        # per move: the Metropolis-Hastings test (HMC: and the step draw, see :mod:`.mcmc`)
        return self.mcmc_steps * mcmc.uniforms_per_move(self._kind)

    @property
    def _n_leapfrog(self) -> int:
        return 0

    @property
    def model_calls_per_step(self) -> int:
        """Predictor score, ``log_prob_and_score`` at the chain's start, then one per proposal
        (MALA) or per leapfrog step (HMC)."""
        return 2 + self.mcmc_steps * max(1, self._n_leapfrog)

    def pilot_model_calls(self, steps: int) -> int:
        """With ``adapt=True``: ``n_pilot * steps * (2 + (BISECT_ITERS + mcmc_steps) * L)``
        (per pilot particle and level: the predictor score, ``log_prob_and_score`` at the
        chain's start, then ``BISECT_ITERS`` probe moves and ``mcmc_steps`` moves of ``L``
        evaluations each, ``L = 1`` for MALA and ``n_leapfrog`` for HMC; see
        :func:`.mcmc.mcmc_tune`); ``0`` with ``adapt=False`` (no pilot)."""
        if not self.adapt:
            return 0
        per_level = 2 + (mcmc.BISECT_ITERS + self.mcmc_steps) * max(1, self._n_leapfrog)
        return self.n_pilot * steps * per_level

    def init(self, x, t):
        del t
        return MCMCState(x)

    def step(self, model, schedule, state, t, t_next, normals, uniforms, params=None):
        x, info = mcmc.annealed_step(self._kind, self._n_leapfrog, _em, model, schedule,
                                     state.position, t, t_next, normals, uniforms, params)
        return MCMCState(x), info

    def tune(self, model, schedule, key, times, d, dtype):
        """Per-level log step scales ``log c_l (steps,)`` (:func:`.mcmc.mcmc_tune`)."""
        return mcmc.mcmc_tune(
            self._kind, self._n_leapfrog, _em, model, schedule, key, times, d, dtype,
            mcmc_steps=self.mcmc_steps, step_size=self.step_size,
            target_accept=self.target_accept, adapt=self.adapt, n_pilot=self.n_pilot,
        )


class AnnealedMALA(_Annealed):
    """Euler-Maruyama predictor then ``mcmc_steps`` MALA moves targeting ``p_{t_next}``
    (``target_accept`` 0.574, Roberts & Rosenthal 1998)."""

    _kind: ClassVar[str] = "mala"


class AnnealedHMC(_Annealed):
    """Euler-Maruyama predictor then ``mcmc_steps`` HMC moves of ``n_leapfrog`` leapfrog steps
    targeting ``p_{t_next}`` (``target_accept`` 0.65, Beskos et al. 2013)."""

    target_accept: float = 0.65
    n_leapfrog: int = 3
    _kind: ClassVar[str] = "hmc"

    def __post_init__(self):
        super().__post_init__()
        _check_int(self.n_leapfrog, "n_leapfrog", 1)

    @property
    def _n_leapfrog(self) -> int:
        return self.n_leapfrog


# ------------------------------------------------------------------------- DPM-Solver++
def _half_lambda(schedule, t):
    """``lambda_t = log(alpha_t / sigma_t)`` (half the schedule's log-SNR)."""
    return 0.5 * schedule.log_snr(t)


def _x0_hat(model, schedule, x, t):
    """Data prediction ``(x + sigma_t^2 s(x, t)) / alpha_t`` (Tweedie; score only, so it runs
    on the particle-minor view of the model too)."""
    return (x + schedule.sigma2(t) * model.score(x, t)) / schedule.alpha(t)


def _dpm_first_order(schedule, x, x0, t, t_next, h):
    """``x_s = (sigma_s / sigma_t) x - alpha_s expm1(-h) x0`` (Lu et al. 2022, Eq. 9 with a
    constant data prediction: DDIM with ``eta = 0``)."""
    return (schedule.sigma(t_next) / schedule.sigma(t)) * x - schedule.alpha(t_next) * jnp.expm1(
        -h) * x0


class DPMSolver2S(SamplerMethod):
    r"""DPM-Solver++(2S) (Lu et al. 2022, Alg. 1 with ``r_1 = 1/2``; k-diffusion's
    ``sample_dpmpp_2s_ancestral`` with ``eta = 0``): single-step second order in
    ``lambda = log(alpha/sigma)``. With ``h = lambda_s - lambda_t`` and ``t_mid`` the time of
    ``lambda_t + h/2``: ``u = (sigma_mid/sigma_t) x - alpha_mid expm1(-h/2) x0_hat(x, t)`` and
    ``x_s = (sigma_s/sigma_t) x - alpha_s expm1(-h) x0_hat(u, t_mid)``. Deterministic, two model
    calls per step, weak (and strong) order 2; self-starting, so no warm-up and no lower-order
    final step are needed (k-diffusion lowers the order only for a step to ``sigma = 0``, which
    never occurs here: ``t_min > 0``, then the final Tweedie step)."""

    elementwise: ClassVar[bool] = True
    num_normals: ClassVar[int] = 0
    model_calls_per_step: ClassVar[int] = 2

    def transition(self, model, schedule, x, normals, t, t_next):
        lam_t, lam_s = _half_lambda(schedule, t), _half_lambda(schedule, t_next)
        h = lam_s - lam_t
        t_mid = schedule.t_from_log_snr(2.0 * (lam_t + 0.5 * h)).astype(jnp.result_type(t))
        u = _dpm_first_order(schedule, x, _x0_hat(model, schedule, x, t), t, t_mid, 0.5 * h)
        return _dpm_first_order(schedule, x, _x0_hat(model, schedule, u, t_mid), t, t_next, h)


class DPMState(NamedTuple):
    """State of :class:`DPMSolver2M`: the particle ``position (d,)`` and the previous step's
    data prediction ``denoised (d,)`` (zeros before the first step)."""

    position: jax.Array
    denoised: jax.Array


class DPMSolver2M(SamplerMethod):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; k-diffusion's ``sample_dpmpp_2m``): multistep
    second order in ``lambda = log(alpha/sigma)``, one model call per step. Step ``i``:
    ``D_i = x0_hat(x, t_i)``, ``h = lambda_{i+1} - lambda_i``, ``r = h_{i-1} / h`` and
    ``x_{i+1} = (sigma_{i+1}/sigma_i) x - alpha_{i+1} expm1(-h) ((1 + 1/(2r)) D_i -
    D_{i-1} / (2r))``. The first step is first order (``D_i`` alone: DDIM with ``eta = 0``, the
    warm-up: no ``D_{-1}`` yet); with ``lower_order_final`` (default) the last step is first
    order too when ``steps < 10`` (the reference implementation's rule, which stabilizes very
    few steps). ``D_{i-1}`` is carried in the state (:class:`DPMState`, element-wise, so it is a
    ``(d, B)`` array in the particle-minor layout); the per-level order and previous time come
    from :meth:`tune` (the time grid). Weak order 2."""

    lower_order_final: bool = True
    elementwise: ClassVar[bool] = True
    num_normals: ClassVar[int] = 0
    model_calls_per_step: ClassVar[int] = 1

    def __post_init__(self):
        if not isinstance(self.lower_order_final, bool):
            raise TypeError(f"lower_order_final must be a bool, got {self.lower_order_final!r}")

    @property
    def affine_exact(self) -> bool:
        return True

    def init(self, x, t):
        del t
        return DPMState(x, jnp.zeros_like(x))

    def tune(self, model, schedule, key, times, d, dtype):
        """Per level: ``(t_prev, second)``: the previous grid time (``t_0`` at level 0) and
        whether the step is second order (``1.0``) or first order (``0.0``)."""
        del model, schedule, key, d, dtype
        n = times.shape[0] - 1
        second = jnp.ones((n,), times.dtype).at[0].set(0.0)
        if self.lower_order_final and n < 10:
            second = second.at[-1].set(0.0)
        t_prev = jnp.concatenate([times[:1], times[:-2]])
        return t_prev, second

    def step(self, model, schedule, state, t, t_next, normals, uniforms, params=None):
        del normals, uniforms
        if params is None:
            raise ValueError("DPMSolver2M.step needs this level's params (from tune)")
        t_prev, second = params
        x, d_prev = state.position, state.denoised
        lam_t, lam_s = _half_lambda(schedule, t), _half_lambda(schedule, t_next)
        h = lam_s - lam_t
        d_now = _x0_hat(model, schedule, x, t)
        h_last = lam_t - _half_lambda(schedule, t_prev)
        r = jnp.where(second > 0, h_last / h, 1.0)
        c = second * 0.5 / r
        d_eff = (1.0 + c) * d_now - c * d_prev
        x = _dpm_first_order(schedule, x, d_eff, t, t_next, h)
        return DPMState(x, d_now), EmptyInfo()


# ------------------------------------------------------------------------- registry
#: String aliases of ``cj.sample(..., method=...)``: name -> method class.
METHODS: dict[str, type[SamplerMethod]] = {
    "euler_maruyama": EulerMaruyama,
    "ode_euler": ODEEuler,
    "ode_heun": ODEHeun,
    "ddpm": DDPM,
    "ddim": DDIM,
    "predictor_corrector": PredictorCorrector,
    "annealed_mala": AnnealedMALA,
    "annealed_hmc": AnnealedHMC,
    "dpm_solver_2m": DPMSolver2M,
    "dpm_solver_2s": DPMSolver2S,
}


def register_method(name: str, cls: type[SamplerMethod]) -> type[SamplerMethod]:
    """Give a method class the string alias ``name`` (new) for ``cj.sample(..., method=name,
    **options)``; returns ``cls``. Instances of any :class:`SamplerMethod` work without one."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, SamplerMethod)):
        raise TypeError(f"cls must be a SamplerMethod subclass, got {cls!r}")
    if getattr(cls, "__abstractmethods__", None):
        raise TypeError(
            f"{cls.__name__} is abstract (missing {sorted(cls.__abstractmethods__)})"
        )
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name]})")
    METHODS[name] = cls
    return cls


def options_of(cls: type[SamplerMethod]) -> tuple[str, ...]:
    """The option names (dataclass fields) of a method class."""
    return tuple(f.name for f in dataclasses.fields(cls))


def resolve_method(method: Any, options: dict, extra: tuple = ()) -> SamplerMethod:
    """A method instance from ``cj.sample``'s ``method`` and ``**options``: a string alias (in
    :data:`METHODS`) or a class is constructed with ``options``; an instance is used as is (then
    options raise ``TypeError``). ``extra`` lists the caller's own keywords (for messages)."""
    if isinstance(method, SamplerMethod):
        if options:
            raise TypeError(
                f"unknown option(s) {sorted(options)} next to the method object {method!r}: "
                f"give options to its constructor, e.g. {type(method).__name__}(...), or pass "
                "method as a string"
            )
        return method
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {sorted(METHODS)}")
        cls, label = METHODS[method], repr(method)
    elif isinstance(method, type) and issubclass(method, SamplerMethod):
        cls, label = method, method.__name__
    else:
        raise TypeError(
            f"method must be a SamplerMethod (e.g. cj.DDIM(eta=0.3)) or one of the names "
            f"{sorted(METHODS)}, got {type(method).__name__}"
        )
    valid = options_of(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {label}; valid options: "
            f"{sorted(valid) + list(extra)}"
        )
    return cls(**options)
