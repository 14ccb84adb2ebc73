r"""Log-likelihoods of the probability-flow ODE (instantaneous change of variables).

A model's probability flow ``dx/dt = v(x, t) = f(t) x - g(t)^2 s(x, t) / 2`` (Song et al.,
ICLR 2021, eq. 13) carries the prior ``N(0, prior_std^2 I)`` at ``t_max`` to a law ``q_t`` at
every ``t``; when ``s`` is the score of a diffusion ``p_t`` (a ``cj.diffuse`` family, a
composition satisfying Factorized Conditionals) ``q_t = p_t`` up to the prior mismatch at
``t_max``. Along a trajectory ``d/dt log q_t(x_t) = -div v(x_t, t)`` (Chen et al., NeurIPS 2018,
Thm. 1), so, integrating from the data point ``x`` at ``t_min`` up to ``t_max``:

``log q_{t_min}(x) = log q_{t_max}(x_{t_max}) + int_{t_min}^{t_max} div v(x_t, t) dt``,
``div v = f d - g^2/2 tr(d s / d x)``.

The ODE for ``(x, int div v)`` is integrated with Euler or Heun's trapezoidal rule (order 2) on
:func:`~.grids.time_grid` run forwards. The divergence is exact (trace of ``jacfwd`` of the score,
``d`` Jacobian-vector products per evaluation) or Hutchinson's estimator ``eps^T (ds/dx) eps`` with
Rademacher probes ``eps`` fixed along each trajectory (Grathwohl et al., ICLR 2019): the
integral is linear in the trace, so each probe gives an unbiased estimate of the discretized
log-likelihood, and ``n_probes >= 2`` probes give a standard error. For a composition whose noised
laws are not a diffusion path (no Factorized Conditionals), ``q_{t_min}`` is the law the PF-ODE
sampler produces, not ``C[p]``: the difference of the two log-densities is the sampler's error.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models import as_model
from ..schedules import Schedule
from .driver import check_key, check_model_shape, check_times
from .grids import time_grid
from .noise import uniforms

__all__ = ["LikelihoodInfo", "log_likelihood"]


class LikelihoodInfo(NamedTuple):
    """Output of :func:`log_likelihood` with ``return_info=True`` (``n`` points).

    Attributes:
      log_prob: ``(n,)`` the log-likelihoods (mean over probes for Hutchinson).
      stderr: ``(n,)`` Hutchinson's standard error over the ``n_probes`` probes
        (``n_probes >= 2``); ``None`` for the exact trace or a single probe.
      prior: ``(n,)`` the log-density at ``t_max`` of the end points (``prior=`` option).
      divergence: ``(n,)`` ``int div v dt`` (mean over probes).
      x_end: ``(n, d)`` the points carried to ``t_max``.
      times: ``(steps + 1,)`` the increasing time grid from ``t_min`` to ``t_max``.
    """

    log_prob: jax.Array
    stderr: jax.Array | None
    prior: jax.Array
    divergence: jax.Array
    x_end: jax.Array
    times: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
    steps: int
    t_min: float
    grid: str
    method: str
    trace: str
    n_probes: int
    prior: str


def _velocity_and_div(model, schedule, x, t, probes, trace):
    """PF velocity ``(d,)`` and divergence: ``()`` exact, or ``(n_probes,)`` estimates."""
    d = x.shape[-1]
    f, g2 = schedule.drift_coeff(t), schedule.g2(t)
    score = functools.partial(lambda tt, y: model.score(y, tt), t)
    if trace == "exact":
        s = score(x)
        tr = jnp.trace(jax.jacfwd(score)(x))[None]
    else:
        s, lin = jax.linearize(score, x)
        tr = jnp.sum(jax.vmap(lin)(probes) * probes, -1)
    return f * x - 0.5 * g2 * s, f * d - 0.5 * g2 * tr


def _one_point(cfg: _Config, model, schedule, times, x, probes):
    def step(carry, i):
        x, acc = carry
        t, tn = times[i], times[i + 1]
        h = tn - t
        v1, dv1 = _velocity_and_div(model, schedule, x, t, probes, cfg.trace)
        if cfg.method == "euler":
            return (x + h * v1, acc + h * dv1), None
        v2, dv2 = _velocity_and_div(model, schedule, x + h * v1, tn, probes, cfg.trace)
        return (x + 0.5 * h * (v1 + v2), acc + 0.5 * h * (dv1 + dv2)), None

    m = cfg.n_probes if cfg.trace == "hutchinson" else 1
    (x_end, acc), _ = jax.lax.scan(step, (x, jnp.zeros((m,), x.dtype)), jnp.arange(cfg.steps))
    if cfg.prior == "model":
        prior = jnp.asarray(model.log_prob(x_end, times[-1]), x.dtype)
    else:
        prior = schedule.prior_log_prob(x_end)
    return prior, acc, x_end


def _run(model, schedule, x, key, cfg: _Config):
    n, d = x.shape
    times = time_grid(schedule, cfg.steps, cfg.t_min, cfg.grid, dtype=x.dtype)[::-1]
    if cfg.trace == "hutchinson":
        u = uniforms(key, n, (cfg.n_probes, d), x.dtype)
        probes = jnp.where(u < 0.5, -1.0, 1.0).astype(x.dtype)
        axes = (0, 0)
    else:  # the exact trace needs no probes
        probes, axes = None, (0, None)
    prior, acc, x_end = jax.vmap(functools.partial(_one_point, cfg, model, schedule, times),
                                 axes)(x, probes)
    lp = prior[:, None] + acc  # (n, m)
    stderr = None
    if cfg.trace == "hutchinson" and cfg.n_probes >= 2:
        stderr = jnp.std(lp, axis=1, ddof=1) / jnp.sqrt(jnp.asarray(cfg.n_probes, x.dtype))
    return LikelihoodInfo(jnp.mean(lp, 1), stderr, prior, jnp.mean(acc, 1), x_end, times)


@functools.lru_cache(maxsize=64)
def _build(cfg: _Config):
    return jax.jit(functools.partial(_run, cfg=cfg))


def log_likelihood(
    model: Any,
    schedule: Schedule,
    x: Any,
    *,
    steps: int = 200,
    method: str = "heun",
    trace: str = "exact",
    key: Any = None,
    n_probes: int = 1,
    t_min: float = 1e-3,
    grid: str = "uniform",
    prior: str = "auto",
    return_info: bool = False,
) -> Any:
    r"""``log q_{t_min}(x)``: the log-density that the model's probability-flow ODE, started from
    the prior at ``t_max``, assigns to points ``x`` at ``t_min`` (module docstring).

    Approximate: time discretization (order 1 for ``"euler"``, 2 for ``"heun"``) and, at
    ``t_max``, the prior in place of the model's own ``p_{t_max}``. For a diffused family, or a
    composition satisfying Factorized Conditionals, this is its exact ``log p_{t_min}(x)`` up to
    those errors (``C[p^t] = N_t[C[p]]``, Thm 5.3 of Bradley et al. 2025).

    Args:
      model: anything with ``score(x, t)`` (a model or a function ``score_fn(x, t)``).
      schedule: the model's noise schedule.
      x: points ``(n, d)`` or one point ``(d,)``.
      steps: ODE steps from ``t_min`` to ``t_max``.
      method: ``"heun"`` (default) or ``"euler"``.
      trace: ``"exact"`` (``jacfwd``, ``d`` Jacobian-vector products per score evaluation; for
        moderate ``d``) or ``"hutchinson"`` (``n_probes`` Rademacher probes, one
        Jacobian-vector product each).
      key: PRNG key of the probes (required for ``"hutchinson"``); point ``i``'s probes depend
        only on ``(key, i)``.
      n_probes: probes per point (``"hutchinson"``); ``>= 2`` gives a standard error.
      t_min: the time of the points, in ``(0, t_max)``.
      grid: the time grid (:func:`~.grids.time_grid`), run from ``t_min`` to ``t_max``.
      prior: the log-density at ``t_max``: ``"model"`` (``model.log_prob(x, t_max)``: exact for
        a diffused family; for a composition its unnormalized energy, whose normalizer is
        ``1 + O(alpha_{t_max}^2)``), ``"gaussian"`` (``N(0, prior_std^2 I)``, the samplers'
        start; error ``O(alpha_{t_max} |x_0|)`` against the model's own ``p_{t_max}``) or
        ``"auto"`` (``"model"`` when the model declares ``has_log_prob``).
      return_info: return a :class:`LikelihoodInfo` (with the standard error).

    Returns:
      ``(n,)`` log-likelihoods (a scalar for one point), or a :class:`LikelihoodInfo`.

    Raises:
      ValueError: bad ``x`` shape, ``steps``, ``t_min``, ``grid``, ``method``, ``trace``,
        ``n_probes``; a model whose score has the wrong shape.
      TypeError: a missing or bad ``key`` for ``"hutchinson"``; non-floating ``x``.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sch)
      >>> x = jnp.array([[0.5, -1.0]])
      >>> ll = cj.log_likelihood(p, sch, x, steps=50)
      >>> bool(jnp.abs(ll - p.log_prob(x[0], 1e-3))[0] < 1e-2)
      True
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating, got dtype {x.dtype}")
    single = x.ndim == 1
    if x.ndim not in (1, 2) or x.shape[-1] < 1 or (x.ndim == 2 and x.shape[0] < 1):
        raise ValueError(f"x must have shape (n, d) or (d,), got {tuple(x.shape)}")
    X = x[None] if single else x
    steps, t_min_f = check_times(schedule, steps, t_min, grid)
    if method not in ("heun", "euler"):
        raise ValueError(f"method must be 'heun' or 'euler', got {method!r}")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    if trace == "hutchinson":
        if key is None:
            raise TypeError("trace='hutchinson' needs key= (a PRNG key for the probes)")
        check_key(key)
    else:
        key = jax.random.key(0)  # unused
    model = as_model(model)
    check_model_shape(model, X.shape[1], X.dtype)
    if prior not in ("auto", "model", "gaussian"):
        raise ValueError(f"prior must be 'auto', 'model' or 'gaussian', got {prior!r}")
    if prior == "auto":
        prior = "model" if model.has_log_prob else "gaussian"
    if prior == "model" and not model.has_log_prob:
        raise TypeError(f"prior='model' needs model.log_prob; {type(model).__name__} has none")
    cfg = _Config(steps=steps, t_min=t_min_f, grid=grid, method=method, trace=trace,
                  n_probes=int(n_probes), prior=prior)
    info = _build(cfg)(model, schedule, X, key)
    if return_info:
        return info
    return info.log_prob[0] if single else info.log_prob
