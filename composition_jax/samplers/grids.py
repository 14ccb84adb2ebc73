r"""Time grids for reverse-time samplers.

A grid is a decreasing array ``t_0 = t_max > t_1 > ... > t_steps = t_min`` of length
``steps + 1``, computed inside ``jit`` from the schedule's numbers (the schedule is a pytree
argument, so new schedule numbers never retrace). Three families:

* ``"uniform"``: uniform in ``t``;
* ``"log_snr"``: uniform in ``lambda(t) = log(alpha^2 / sigma^2)`` (``schedule.log_snr`` and its
  inverse ``schedule.t_from_log_snr``), the natural grid of DPM-Solver-type samplers;
* ``"edm"``: Karras et al. (2022) ``rho`` grid in the noise-to-signal ratio ``r = sigma/alpha``:
  ``r_i = (r_max^{1/rho} + i/N (r_min^{1/rho} - r_max^{1/rho}))^rho`` (``rho = 7``), mapped back
  to ``t`` through ``lambda = -2 log r``.

The end points are set exactly to ``t_max`` and ``t_min`` (no round trip through the inverse).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["GRIDS", "time_grid"]

GRIDS = ("uniform", "log_snr", "edm")


def time_grid(
    schedule: Any, steps: int, t_min: float, grid: str = "uniform", *, rho: float = 7.0,
    dtype: Any = None,
) -> jax.Array:
    """Decreasing times of shape ``(steps + 1,)`` from ``schedule.t_max`` to ``t_min``.

    Args:
      schedule: a :class:`~composition_jax.schedules.Schedule`.
      steps: number of intervals (static int ``>= 1``).
      t_min: final time, ``0 < t_min < schedule.t_max``.
      grid: ``"uniform"``, ``"log_snr"`` or ``"edm"``.
      rho: exponent of the EDM grid.
      dtype: floating dtype of the result (default: JAX's default float).

    Returns:
      Array ``(steps + 1,)``; exact end points.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    dtype = jnp.result_type(float) if dtype is None else dtype
    t_max = jnp.asarray(schedule.t_max, dtype)
    t_lo = jnp.asarray(t_min, dtype)
    u = jnp.arange(steps + 1, dtype=dtype) / jnp.asarray(steps, dtype)
    if grid == "uniform":
        ts = t_max + u * (t_lo - t_max)
    elif grid == "log_snr":
        l0, l1 = schedule.log_snr(t_max), schedule.log_snr(t_lo)
        ts = schedule.t_from_log_snr(l0 + u * (l1 - l0))
    else:
        # noise-to-signal ratio r = sigma / alpha = exp(-lambda / 2)
        r_hi = jnp.exp(-0.5 * schedule.log_snr(t_max))
        r_lo = jnp.exp(-0.5 * schedule.log_snr(t_lo))
        inv = 1.0 / rho
        r = (r_hi**inv + u * (r_lo**inv - r_hi**inv)) ** rho
        ts = schedule.t_from_log_snr(-2.0 * jnp.log(r))
    ts = ts.astype(dtype)
    return ts.at[0].set(t_max).at[-1].set(t_lo)
