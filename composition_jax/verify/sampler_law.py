r"""Exact law of a sampler's output for models whose score is affine in ``x``.

For ``s(x, t) = A(t) x + b(t)`` (any Gaussian, any score composition of Gaussians) every
method with ``affine_exact`` (:mod:`composition_jax.samplers.methods`) is an affine-Gaussian
recursion ``x' = P x + q + Q z`` with ``z ~ N(0, I)``. :func:`sampler_law` obtains ``P``, ``Q``
(by ``jax.jacfwd``) and ``q`` (at ``x = 0, z = 0``) from THE SAME ``method.transition`` the
sampler runs -- so the law and the sampler cannot drift apart -- and propagates

``m' = P m + q``,   ``C' = P C P^T + Q Q^T``

over the same time grid from the prior ``N(0, prior_std^2 I)`` at ``t_max`` (or ``init``), then
through the same final Tweedie step.

Methods with per-level parameters from ``tune`` that do not depend on a pilot (EDM churn's
``gamma_i``, DPM-Solver++(2M)'s orders) or with a state beyond the position (2M carries the
previous denoised estimate) are propagated through ``method.init`` / ``method.step`` instead:
the flattened state ``S`` (position and carried vectors) is jointly Gaussian, ``S' = P S + q +
Q z`` with ``P, Q, q`` from differentiating ``step`` at this level's parameters, and the law of
the position is read off at the end. Stateless methods without parameters keep the
``transition`` path above (bit-identical results). The result is exact (up to float rounding; run with
``jax_enable_x64`` for float64) whenever the score is affine; for a non-affine score it is
meaningless. Sample moments of ``cj.sample`` must match it within ``k sigma / sqrt(n)``: this
catches every sign, noise-scaling and off-by-one error in the driver and its randomness, and
convergence of the law to the exact ``p_{t_min}`` measures each method's weak order.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..distributions import Gaussian
from ..models import as_model
from ..samplers.driver import DRIVER_OPTIONS, check_model_shape, check_times
from ..samplers.grids import time_grid
from ..samplers.methods import SamplerMethod, denoise, resolve_method

__all__ = ["sampler_law"]


def _affine(f, d, m, dtype, n=None):
    """``(q, P, Q)`` of ``f(x, z) = P x + Q vec(z) + q``; ``x`` has size ``n`` (default
    ``d``), ``z`` shape ``(m, d)``."""
    n = d if n is None else n
    x0, z0 = jnp.zeros((n,), dtype), jnp.zeros((m, d), dtype)
    q = f(x0, z0)
    out = q.shape[0]
    P = jax.jacfwd(f, 0)(x0, z0)
    Q = jax.jacfwd(f, 1)(x0, z0).reshape(out, m * d) if m else jnp.zeros((out, 0), dtype)
    return q, P, Q


def _propagate_states(model, schedule, m0, C0, times, params, method, denoise_final):
    d, dtype = m0.shape[0], m0.dtype
    m_norm, steps = method.num_normals, times.shape[0] - 1
    state0 = method.init(jnp.zeros((d,), dtype), times[0])
    flat0, unravel = ravel_pytree(state0)
    n = flat0.shape[0]
    q, P, _ = _affine(lambda x, z: ravel_pytree(method.init(x, times[0]))[0], d, 0, dtype)
    mean, cov = P @ m0 + q, P @ C0 @ P.T
    no_u = jnp.zeros((method.num_uniforms,), dtype)

    def body(carry, i):
        mean, cov = carry
        t, s = times[i], times[i + 1]
        p_i = None if params is None else jax.tree.map(lambda a: a[i], params)

        def f(v, z):
            new, _ = method.step(model, schedule, unravel(v), t, s, z, no_u, p_i)
            return ravel_pytree(new)[0]

        q, P, Q = _affine(f, d, m_norm, dtype, n)
        mean = P @ mean + q
        cov = P @ cov @ P.T + Q @ Q.T
        return (mean, 0.5 * (cov + cov.T)), None

    (mean, cov), _ = jax.lax.scan(body, (mean, cov), jnp.arange(steps))
    q, P, _ = _affine(lambda v, z: unravel(v).position, d, 0, dtype, n)
    mean, cov = P @ mean + q, P @ cov @ P.T
    if denoise_final:
        f = lambda x, z: denoise(model, schedule, x, times[-1])
        q, P, _ = _affine(f, d, 0, dtype)
        mean = P @ mean + q
        cov = P @ cov @ P.T
    return mean, 0.5 * (cov + cov.T)


def _propagate(model, schedule, m0, C0, *, method, steps, t_min, grid, rho, denoise_final):
    d, dtype = m0.shape[0], m0.dtype
    m_norm = method.num_normals
    times = time_grid(schedule, steps, t_min, grid, rho=rho, dtype=dtype)
    # affine-exact methods tune from the grid alone (no pilot): the key is unused
    params = method.tune(model, schedule, jax.random.key(0), times, d, dtype)
    if params is not None or method.transition is None:
        return _propagate_states(model, schedule, m0, C0, times, params, method, denoise_final)

    def body(carry, i):
        mean, cov = carry
        t, s = times[i], times[i + 1]
        f = lambda x, z: method.transition(model, schedule, x, z, t, s)
        q, P, Q = _affine(f, d, m_norm, dtype)
        mean = P @ mean + q
        cov = P @ cov @ P.T + Q @ Q.T
        return (mean, 0.5 * (cov + cov.T)), None

    (mean, cov), _ = jax.lax.scan(body, (m0, C0), jnp.arange(steps))
    if denoise_final:
        f = lambda x, z: denoise(model, schedule, x, times[-1])
        q, P, _ = _affine(f, d, 0, dtype)
        mean = P @ mean + q
        cov = P @ cov @ P.T
        cov = 0.5 * (cov + cov.T)
    return mean, cov


def sampler_law(
    model: Any,
    schedule: Any,
    *,
    method: str | SamplerMethod,
    steps: int,
    t_min: float = 1e-3,
    grid: str = "uniform",
    rho: float = 7.0,
    denoise_final: bool = True,
    init: tuple[Any, Any] | None = None,
    dim: int | None = None,
    dtype: Any = None,
    as_moments: bool = False,
    **options: Any,
):
    r"""Exact Gaussian law of ``cj.sample(key, model, schedule, (n, d), method=..., ...)``.

    Args:
      model: a model whose score is affine in ``x`` (e.g. ``cj.diffuse(Gaussian, schedule)`` or
        any score composition of such models); a plain ``score_fn`` is accepted.
      schedule: the schedule passed to the sampler.
      method, steps, t_min, grid, rho, denoise_final, **options: exactly as in ``cj.sample``
        (a method object such as ``cj.DDIM(eta=0.3)``, or a string alias with its options).
      init: ``(mean (d,), cov (d, d))`` of the initial particles at ``t_max`` (default: the
        prior ``N(0, prior_std^2 I)``, as the sampler's default initialization).
      dim: data dimension when neither the model (``.dim``) nor ``init`` tells it.
      dtype: computation dtype (default: ``init``'s, else JAX's default float; float64 under
        ``jax_enable_x64``).
      as_moments: return ``(mean, cov)`` instead of a :class:`~composition_jax.Gaussian`
        (useful when the covariance is singular, e.g. from a deterministic start).

    Returns:
      ``Gaussian(mean, cov)`` (or ``(mean, cov)``): exact, up to float rounding.

    Raises:
      ValueError: a method without ``affine_exact`` (Metropolis methods,
        ``PredictorCorrector(corrector_step="snr")``), or bad
        ``steps``/``t_min``/``grid``/``method``, or unknown dimension.
    """
    method = resolve_method(method, options, DRIVER_OPTIONS)
    if not method.affine_exact:
        raise ValueError(
            f"sampler_law needs a kernel that is affine-Gaussian for affine scores "
            f"(method.affine_exact); {method!r} is not (Metropolis methods, or "
            "predictor_corrector with corrector_step='snr')"
        )
    steps, t_min_f = check_times(schedule, steps, t_min, grid)
    if init is not None:
        m0 = jnp.asarray(init[0])
        dtype = m0.dtype if dtype is None else dtype
        d = m0.shape[-1]
    else:
        d = dim if dim is not None else getattr(model, "dim", None)
        if d is None:
            raise ValueError("sampler_law: pass dim= (the model has no .dim and no init given)")
        dtype = jnp.result_type(float) if dtype is None else dtype
    dtype = jnp.dtype(dtype)
    if init is not None:
        m0 = jnp.asarray(init[0], dtype)
        C0 = jnp.asarray(init[1], dtype)
        if m0.shape != (d,) or C0.shape != (d, d):
            raise ValueError(
                f"init must be (mean ({d},), cov ({d}, {d})), got {tuple(m0.shape)}, "
                f"{tuple(C0.shape)}"
            )
    else:
        m0 = jnp.zeros((d,), dtype)
        C0 = jnp.asarray(schedule.prior_std, dtype) ** 2 * jnp.eye(d, dtype=dtype)
    model = as_model(model)
    check_model_shape(model, d, dtype)
    mean, cov = _propagate_jit(
        model, schedule, m0, C0, method=method, steps=steps, t_min=t_min_f,
        grid=grid, rho=float(rho), denoise_final=bool(denoise_final),
    )
    if as_moments:
        return mean, cov
    return Gaussian(mean, cov)


_propagate_jit = jax.jit(
    _propagate,
    static_argnames=("method", "steps", "t_min", "grid", "rho", "denoise_final"),
)
