r"""Sequential Monte Carlo for compositions: reverse diffusion corrected by importance weights.

A composition's score ``s = s_b + sum_i w_i (s_i - s_b)`` is the score of the unnormalized
energy ``E_t(x) = log p_{b,t}(x) + sum_i w_i (log p_{i,t}(x) - log p_{b,t}(x))`` at every noise
level, but the laws ``pi_t ∝ exp(E_t)`` are in general NOT the marginals of one diffusion
(Bradley et al. 2025, Section 7): reverse diffusion with the composed score then misses
``pi_0 = C[p]``. Here particles move with a reverse-diffusion kernel of the composed model and
carry importance weights that make the weighted population target ``pi_{t_k}`` at every level of
the time grid ``t_0 = t_max > ... > t_K = t_min`` (sequential Monte Carlo samplers, Del Moral,
Doucet & Jasra 2006; Feynman-Kac correctors, Skreta et al., ICML 2025), with resampling when
the effective sample size drops.

Weights, two forms (``weights=``):

* ``"log_prob"`` (models that declare ``has_log_prob``): the SMC-sampler incremental weight of
  Del Moral et al. (2006, eq. 31) for the proposal ``M_k(x' | x)`` (one Gaussian reverse step
  ``t_k -> t_{k+1}``, mean ``mu_k(x)`` and isotropic standard deviation ``c_k``) with the
  forward noising transition as backward kernel, ``L_k(x | x') = N(x; alpha_{t|s} x',
  sigma_{t|s}^2 I)``:

  ``log w_k = E_{k+1}(x') + log L_k(x | x') - E_k(x) - log M_k(x' | x)``.

  Exact for every step count: ``pi_K`` is targeted without discretization bias, only the
  Monte Carlo variance depends on how well ``M_k`` matches. Initial weights
  ``E_0(x) - log N(x; 0, prior_std^2 I)`` correct the prior to ``pi_0``.
* ``"score"`` (score-only models): the Feynman-Kac weights of the continuous reverse SDE. For a
  weighted particle system ``dx = v dtau + g dW``, ``d log w = h dtau`` (``tau = t_max - t``)
  the weighted measure solves ``d mu = -div(mu v) + g^2/2 Lap mu + h mu``; asking
  ``mu_tau = exp(E_tau)`` gives ``h = d_tau E + div v + v . grad E - g^2/2 (Lap E + |grad E|^2)``.
  Write the model as a product of diffusions ``E_t = sum_j e_j log p_{j,t}`` (a
  :class:`~composition_jax.Composition` or :class:`~composition_jax.LinearCombination`, nested
  ones flattened; each leaf a diffusion model with score ``s_j``) and use each leaf's
  Fokker-Planck equation ``d_t log p_j = -f d - f x . s_j + g^2/2 (div s_j + |s_j|^2)``. With
  the reverse-SDE drift ``v = g^2 s - f x``, ``s = sum_j e_j s_j``, the divergence terms cancel
  exactly and

  ``h = (sum_j e_j - 1) f d + g^2/2 (|s|^2 - sum_j e_j |s_j|^2)``

  (Skreta et al. 2025, product-of-experts case: ``g^2 s_1 . s_2`` for two experts); the same
  ``h`` holds for the whole family of samplers with the same marginals (DDIM-type drifts
  ``(1 + eta^2)/2 g^2 s - f x`` with diffusion ``eta g``). No score Jacobian is needed. The
  weight is integrated with the left-point rule (``O(dt)`` bias, vanishing as ``steps`` grows);
  the start assumes ``p_{j, t_max} = N(0, prior_std^2 I)`` (initial weight
  ``(sum_j e_j - 1) log N(x; 0, prior_std^2 I)``). A model that is neither composition is one
  leaf (``h = 0``: plain reverse diffusion).

Both forms leave an unbiased estimate of the normalizer ``Z_K = ∫ exp(E_{t_min})`` (for compositions
of normalized noised laws: ``Z_{t_max} ≈ 1``, so this is the composed normalizer at
``t_min``): ``log Z = log mean_i w_i`` with the running product over resampling epochs.

Resampling (``systematic`` | ``stratified`` | ``multinomial``, Douc, Cappé & Moulines 2005)
when ``ESS / n < ess_threshold``. Reproducibility: resampling couples the particles, so the
output is a function of ``(key, n)``: the same key and ``n`` give the same output (eager or
under ``jit``); there is no prefix property (the first ``m`` particles of a run with ``n``
particles are not a run with ``m``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..models import Model, _Adapter, as_model
from ..schedules import Schedule
from .driver import (
    _platform,
    check_compiler_options,
    check_key,
    check_model_shape,
    check_shape,
    check_times,
    jit_run,
)
from .grids import time_grid
from .mcmc import _mh
from .methods import DDIM, DDPM, EulerMaruyama, SamplerMethod, _sigma2_between, resolve_method
from .noise import draw_normals, draw_uniforms

__all__ = ["RESAMPLERS", "SMCResult", "resample_indices", "smc_sample"]

RESAMPLERS = ("systematic", "stratified", "multinomial")
_LOG_2PI = math.log(2.0 * math.pi)


class SMCResult(NamedTuple):
    """Output of :func:`smc_sample` with ``return_info=True``.

    Attributes:
      samples: ``(n, d)`` particles at ``t_min`` (equally weighted after the final resampling
        when ``final_resample``).
      log_weights: ``(n,)`` normalized log-weights of ``samples`` (``logsumexp = 0``).
      log_normalizer: ``()`` estimate of ``log ∫ exp(E_{t_min}(x)) dx`` (see the module doc).
      ess: ``(steps,)`` effective sample size ``(sum w)^2 / sum w^2`` after each step's
        reweighting, before any resampling.
      resampled: ``(steps,)`` bool, whether the population was resampled after that step.
      times: ``(steps + 1,)`` the time grid.
      acceptance: ``(steps,)`` mean MALA acceptance probability per level (``mcmc_steps > 0``),
        else ``None``.
    """

    samples: jax.Array
    log_weights: jax.Array
    log_normalizer: jax.Array
    ess: jax.Array
    resampled: jax.Array
    times: jax.Array
    acceptance: jax.Array | None = None


# ------------------------------------------------------------------------------- resampling
def resample_indices(key: jax.Array, log_weights: jax.Array, scheme: str = "systematic"
                     ) -> jax.Array:
    """Ancestor indices ``(n,)`` drawn from normalized weights ``softmax(log_weights)``.

    ``multinomial``: ``n`` i.i.d. uniforms; ``stratified``: ``u_i = (i + U_i) / n``;
    ``systematic``: ``u_i = (i + U) / n`` (one uniform); then the inverse CDF of the weights.
    Each index ``j`` appears ``n W_j`` times in expectation (unbiased).
    """
    if scheme not in RESAMPLERS:
        raise ValueError(f"resample must be one of {RESAMPLERS}, got {scheme!r}")
    n = log_weights.shape[0]
    dtype = log_weights.dtype
    w = jnp.exp(log_weights - jax.scipy.special.logsumexp(log_weights))
    c = jnp.cumsum(w)
    c = c / c[-1]
    base = jnp.arange(n, dtype=dtype)
    if scheme == "multinomial":
        u = jax.random.uniform(key, (n,), dtype)
    elif scheme == "stratified":
        u = (base + jax.random.uniform(key, (n,), dtype)) / n
    else:
        u = (base + jax.random.uniform(key, (), dtype)) / n
    idx = jnp.searchsorted(c, u, side="right").astype(jnp.int32)
    return jnp.minimum(idx, n - 1)


def _ess(lw: jax.Array) -> jax.Array:
    lse = jax.scipy.special.logsumexp
    return jnp.exp(2.0 * lse(lw) - lse(2.0 * lw))


# ------------------------------------------------------------------------------- kernels
_KERNELS = (EulerMaruyama, DDPM, DDIM)


def _check_kernel(kernel: Any) -> SamplerMethod:
    method = resolve_method(kernel, {})
    if not isinstance(method, _KERNELS) or (isinstance(method, DDIM) and method.eta == 0):
        raise TypeError(
            "kernel must be a Gaussian reverse-diffusion step with one isotropic normal per "
            "step: 'euler_maruyama' / cj.EulerMaruyama(), 'ddpm' / cj.DDPM(), or cj.DDIM(eta) "
            f"with eta > 0; got {method!r}"
        )
    return method


def _gaussian_step(method, schedule, x, sc, t, s):
    """Mean ``(d,)`` and standard deviation ``()`` of the kernel's Gaussian step ``t -> s``
    from the score ``sc = s(x, t)`` (the formulas of :mod:`.methods`)."""
    if isinstance(method, EulerMaruyama):
        dt = t - s
        g2 = schedule.g2(t)
        return x + (g2 * sc - schedule.drift_coeff(t) * x) * dt, jnp.sqrt(g2 * dt)
    a_ts, s2_ts = _sigma2_between(schedule, t, s)
    s2_t, s2_s = schedule.sigma2(t), schedule.sigma2(s)
    if isinstance(method, DDPM):
        return (x + s2_ts * sc) / a_ts, jnp.sqrt(s2_ts * s2_s / s2_t)
    var = (method.eta * method.eta) * s2_ts * s2_s / s2_t
    mean = (x + s2_t * sc) / a_ts - jnp.sqrt(jnp.maximum(s2_s - var, 0.0)) * jnp.sqrt(s2_t) * sc
    return mean, jnp.sqrt(var)


# ------------------------------------------------------------------------------- energies
def energy_leaves(model: Model, coef: Any = 1.0) -> list[tuple[Model, Any]]:
    """``[(leaf, e_leaf), ...]`` with ``E = sum e_leaf log p_leaf`` for the model's energy:
    :class:`~composition_jax.Composition` (exponents ``1 - sum w`` for the background, ``w_i``)
    and :class:`~composition_jax.LinearCombination` (``w_i``) are flattened recursively; any
    other model is a leaf. Exponents are (possibly traced) scalars."""
    from ..compose import Composition, LinearCombination

    if isinstance(model, _Adapter) and isinstance(model.obj, Model):
        return energy_leaves(model.obj, coef)
    if isinstance(model, Composition):
        w = model.weights
        out = energy_leaves(model.background, coef * (1.0 - jnp.sum(w)))
        for i, c in enumerate(model.conditionals):
            out += energy_leaves(c, coef * w[i])
        return out
    if isinstance(model, LinearCombination):
        out = []
        for i, m in enumerate(model.models):
            out += energy_leaves(m, coef * model.weights[i])
        return out
    return [(model, coef)]


def fk_rate(model: Model, schedule: Schedule, x: jax.Array, t: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """``(s(x, t), h(x, t))``: the composed score and the Feynman-Kac weight rate
    ``h = (sum_j e_j - 1) f d + g^2/2 (|s|^2 - sum_j e_j |s_j|^2)`` of one particle ``x (d,)``
    (module doc; ``d log w = h dtau`` along the reverse SDE)."""
    leaves = energy_leaves(model)
    dtype = x.dtype
    s = jnp.zeros_like(x)
    sq = jnp.zeros((), dtype)
    esum = jnp.zeros((), dtype)
    for leaf, e in leaves:
        sj = leaf.score(x, t).astype(dtype)
        e = jnp.asarray(e, dtype)
        s = s + e * sj
        sq = sq + e * jnp.sum(sj * sj)
        esum = esum + e
    d = x.shape[-1]
    h = (esum - 1.0) * schedule.drift_coeff(t) * d + 0.5 * schedule.g2(t) * (jnp.sum(s * s) - sq)
    return s, h


def _energy_sum(model: Model, dtype) -> jax.Array:
    return sum((jnp.asarray(e, dtype) for _, e in energy_leaves(model)), jnp.zeros((), dtype))


# ------------------------------------------------------------------------------- driver
@dataclasses.dataclass(frozen=True)
class _Config:
    kernel: SamplerMethod
    shape: tuple
    steps: int
    t_min: float
    grid: str
    weights: str
    resample: str
    ess_threshold: float
    final_resample: bool
    mcmc_steps: int
    mcmc_step_size: float
    dtype: Any
    compiler_options: tuple = ()


def _run(key, model, schedule, cfg: _Config):
    n, d = cfg.shape
    dtype = cfg.dtype
    lse = jax.scipy.special.logsumexp
    times = time_grid(schedule, cfg.steps, cfg.t_min, cfg.grid, dtype=dtype)
    k_init, k_norm, k_res, k_mz, k_mu = jax.random.split(key, 5)
    std0 = jnp.asarray(schedule.prior_std, dtype)
    x = std0 * draw_normals(k_init, 0, n, 1, d, dtype)[:, 0]
    log_q0 = -0.5 * jnp.sum(x * x, -1) / (std0 * std0) - d * (jnp.log(std0) + 0.5 * _LOG_2PI)
    log_n = jnp.log(jnp.asarray(n, dtype))
    kernel = cfg.kernel
    step_v = jax.vmap(_gaussian_step, (None, None, 0, 0, None, None))

    if cfg.weights == "log_prob":
        lps = jax.vmap(model.log_prob_and_score, (0, None))
        E, sc = lps(x, times[0])
        E, sc = E.astype(dtype), sc.astype(dtype)
        lw = E - log_q0
        carry0 = (x, E, sc)
    else:
        lw = (_energy_sum(model, dtype) - 1.0) * log_q0
        carry0 = (x,)
    rate_v = jax.vmap(fk_rate, (None, None, 0, None))
    mh_v = jax.vmap(functools.partial(_mh, "mala", 0, model),
                    (None, 0, 0, 0, None, 0, 0))

    def rejuvenate(i, lw, carry):
        """``mcmc_steps`` MALA moves leaving ``pi_{t_{i+1}}`` invariant (resample-move), step
        ``mcmc_step_size * v * d^{-1/3}`` with ``v`` the population's weighted mean
        coordinate variance at this level."""
        x, E, sc = carry
        W = jnp.exp(lw - lse(lw))
        m1 = W @ x
        v = jnp.mean(W @ (x * x) - m1 * m1)
        e = cfg.mcmc_step_size * jnp.maximum(v, jnp.finfo(dtype).tiny) * d ** (-1.0 / 3.0)
        zs = draw_normals(k_mz, i, n, cfg.mcmc_steps, d, dtype)
        us = draw_uniforms(k_mu, i, n, cfg.mcmc_steps, dtype)
        acc = jnp.zeros((), dtype)
        for j in range(cfg.mcmc_steps):
            x, E, sc, a = mh_v(times[i + 1], x, E, sc, e, zs[:, j], us[:, j])
            acc = acc + jnp.mean(a) / cfg.mcmc_steps
        return (x, E, sc), acc

    def maybe_resample(i, lw, carry):
        ess = _ess(lw)
        do = ess < cfg.ess_threshold * n
        idx = resample_indices(jax.random.fold_in(k_res, i), lw, cfg.resample)
        idx = jnp.where(do, idx, jnp.arange(n, dtype=idx.dtype))
        carry = jax.tree.map(lambda a: a[idx], carry)
        lw = jnp.where(do, jnp.full_like(lw, lse(lw) - log_n), lw)
        return lw, carry, ess, do

    def one_step(state, i):
        lw, carry = state
        t, s = times[i], times[i + 1]
        z = draw_normals(k_norm, i, n, 1, d, dtype)[:, 0]
        if cfg.weights == "log_prob":
            x, E, sc = carry
            mean, std = step_v(kernel, schedule, x, sc, t, s)
            xn = mean + std[:, None] * z
            En, scn = lps(xn, s)
            En, scn = En.astype(dtype), scn.astype(dtype)
            a_ts, s2_ts = _sigma2_between(schedule, t, s)
            r = x - a_ts * xn
            log_l = -0.5 * jnp.sum(r * r, -1) / s2_ts - 0.5 * d * jnp.log(s2_ts)
            log_m = -0.5 * jnp.sum(z * z, -1) - d * jnp.log(std)
            lw = lw + (En - E) + (log_l - log_m)
            carry = (xn, En, scn)
        else:
            (x,) = carry
            sc, h = rate_v(model, schedule, x, t)
            mean, std = step_v(kernel, schedule, x, sc, t, s)
            lw = lw + h * (t - s)
            carry = (mean + std[:, None] * z,)
        lw, carry, ess, do = maybe_resample(i, lw, carry)
        acc = jnp.full((), jnp.nan, dtype)
        if cfg.mcmc_steps:
            carry, acc = rejuvenate(i, lw, carry)
        return (lw, carry), (ess, do, acc)

    (lw, carry), (ess, resampled, acc) = jax.lax.scan(one_step, (lw, carry0),
                                                      jnp.arange(cfg.steps))
    x = carry[0]
    log_z = lse(lw) - log_n
    lw_norm = lw - lse(lw)
    if cfg.final_resample:
        idx = resample_indices(jax.random.fold_in(k_res, cfg.steps), lw, cfg.resample)
        x = x[idx]
        lw_norm = jnp.full_like(lw, -log_n)
    return SMCResult(x, lw_norm, log_z, ess, resampled, times,
                     acc if cfg.mcmc_steps else None)


@functools.lru_cache(maxsize=64)
def _build(cfg: _Config):
    return jit_run(functools.partial(_run, cfg=cfg), cfg.compiler_options)


def smc_sample(
    key: jax.Array,
    model: Any,
    schedule: Schedule,
    shape: tuple[int, int],
    *,
    steps: int = 200,
    kernel: str | SamplerMethod = "euler_maruyama",
    weights: str = "auto",
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    t_min: float = 1e-3,
    grid: str = "uniform",
    final_resample: bool = True,
    mcmc_steps: int = 0,
    mcmc_step_size: float = 1.0,
    return_info: bool = False,
    dtype: Any = None,
    compiler_options: Any = None,
) -> Any:
    r"""Sample the composed law ``pi_{t_min} ∝ exp(E_{t_min})`` by sequential Monte Carlo.

    ``n`` particles start from the prior ``N(0, prior_std^2 I)`` at ``t_max``, move with
    ``kernel`` (a Gaussian reverse-diffusion step of the model's score) down the time grid, and
    are reweighted towards ``pi_t ∝ exp(E_t)``, ``E_t`` the model's unnormalized log-density
    (for a composition ``log p_b + sum_i w_i (log p_i - log p_b)`` of the noised laws), with
    adaptive resampling. Weights and guarantees: module docstring (``"log_prob"`` form exact
    for any ``steps``; ``"score"`` form with ``O(dt)`` time-discretization error). As
    ``n -> inf`` the weighted particles follow ``pi_{t_min}``, which tends to ``C[p]`` as
    ``t_min -> 0`` (e.g. the tilt ``p_b^{1-w} p_1^w`` for a weight ``w``, where plain reverse
    diffusion is biased).

    Args:
      key: PRNG key.
      model: a model (``cj.compose`` / ``cj.linear_combination`` of ``cj.diffuse`` families, a
        network, ...), or a function ``score_fn(x, t)``.
      schedule: the models' noise schedule.
      shape: ``(n, d)``.
      steps: number of reverse steps.
      kernel: ``"euler_maruyama"`` (default), ``"ddpm"``, ``cj.EulerMaruyama()``,
        ``cj.DDPM()`` or ``cj.DDIM(eta)`` with ``eta > 0``.
      weights: ``"log_prob"`` (needs ``model.has_log_prob``), ``"score"`` or ``"auto"``
        (``"log_prob"`` when the model has it).
      resample: ``"systematic"`` (default), ``"stratified"`` or ``"multinomial"``.
      ess_threshold: resample after a step when ``ESS / n`` falls below it, in ``[0, 1]``
        (``0``: never, ``1``: every step).
      t_min: final time in ``(0, t_max)``.
      grid: ``"uniform"``, ``"log_snr"`` or ``"edm"`` (:func:`~.grids.time_grid`).
      final_resample: resample once more at the end so that the returned samples are equally
        weighted.
      mcmc_steps: MALA moves per level after the reweighting and resampling (resample-move,
        Del Moral et al. 2006, Sec. 3.3.2; Gilks & Berzuini 2001), each leaving
        ``pi_{t_{k+1}}`` exactly invariant, so the weights are unchanged; they restore the
        diversity that resampling removes (needs ``log_prob``). ``0``: none.
      mcmc_step_size: the MALA step is ``mcmc_step_size * v * d^(-1/3)`` with ``v`` the
        weighted population's mean coordinate variance at that level (adaptive SMC; Fearnhead
        & Taylor 2013).
      return_info: return an :class:`SMCResult` (samples, log-weights, log-normalizer, ESS
        trace, resampling steps, times) instead of the samples.
      dtype: floating dtype (default: JAX's default float).
      compiler_options: XLA options of the compiled program, as for ``cj.sample`` (default on
        CPU: ``CPU_COMPILER_OPTIONS``, 512-bit vectors; ``{}``: XLA's defaults; none when
        traced by your ``jit``/``vmap``/``grad``).

    Returns:
      ``samples (n, d)`` (weighted by ``log_weights`` when ``final_resample=False``), or an
      :class:`SMCResult`.

    Raises:
      ValueError: bad ``shape``, ``steps``, ``t_min``, ``grid``, ``weights``, ``resample`` or
        ``ess_threshold``; a model whose score has the wrong shape.
      TypeError: a bad key or kernel; ``weights="log_prob"`` for a model without ``log_prob``.

    Example:
      >>> import jax, jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> pb = cj.diffuse(cj.Gaussian(jnp.zeros(1), jnp.eye(1)), sch)
      >>> p1 = cj.diffuse(cj.Gaussian(jnp.array([2.0]), jnp.array([[0.25]])), sch)
      >>> tilt = cj.compose(pb, [p1], weights=jnp.array([2.0]))  # C[p] = N(16/7, 1/7)
      >>> r = cj.smc_sample(jax.random.key(0), tilt, sch, (256, 1), steps=50, return_info=True)
      >>> r.samples.shape, r.ess.shape
      ((256, 1), (50,))
    """
    check_key(key)
    n, d = check_shape(shape)
    steps, t_min_f = check_times(schedule, steps, t_min, grid)
    method = _check_kernel(kernel)
    if resample not in RESAMPLERS:
        raise ValueError(f"resample must be one of {RESAMPLERS}, got {resample!r}")
    if (isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float))
            or not 0.0 <= ess_threshold <= 1.0):
        raise ValueError(f"ess_threshold must be a float in [0, 1], got {ess_threshold!r}")
    model = as_model(model)
    if weights not in ("auto", "log_prob", "score"):
        raise ValueError(f"weights must be 'auto', 'log_prob' or 'score', got {weights!r}")
    if weights == "auto":
        weights = "log_prob" if model.has_log_prob else "score"
    if weights == "log_prob" and not model.has_log_prob:
        raise TypeError(
            f"weights='log_prob' needs model.log_prob(x, t); {type(model).__name__} has none "
            "(use weights='score')"
        )
    if isinstance(mcmc_steps, bool) or not isinstance(mcmc_steps, int) or mcmc_steps < 0:
        raise ValueError(f"mcmc_steps must be an int >= 0, got {mcmc_steps!r}")
    if (isinstance(mcmc_step_size, bool) or not isinstance(mcmc_step_size, (int, float))
            or not mcmc_step_size > 0):
        raise ValueError(f"mcmc_step_size must be a positive float, got {mcmc_step_size!r}")
    if mcmc_steps and weights != "log_prob":
        raise TypeError("mcmc_steps > 0 (Metropolis moves) needs model.log_prob: the model "
                        "has no log_prob or weights='score' was asked")
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    check_model_shape(model, d, dtype)
    cfg = _Config(kernel=method, shape=(n, d), steps=steps, t_min=t_min_f, grid=grid,
                  weights=weights, resample=resample, ess_threshold=float(ess_threshold),
                  final_resample=bool(final_resample), mcmc_steps=mcmc_steps,
                  mcmc_step_size=float(mcmc_step_size), dtype=dtype,
                  compiler_options=check_compiler_options(compiler_options, _platform(None)))
    out = _build(cfg)(key, model, schedule)
    return out if return_info else out.samples
