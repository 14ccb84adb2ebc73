r"""Velocity fields as models: exact conversions between score, denoiser, noise and velocity.

For ``x_t = alpha_t x_0 + sigma_t eps`` (any :class:`~composition_jax.schedules.Schedule`) the
four usual predictions of a model at ``(x, t)`` are

* the score ``s = grad log p_t(x)``;
* the noise ``eps_hat = E[eps | x_t = x] = -sigma_t s`` (Tweedie);
* the denoiser ``x0_hat = E[x_0 | x_t = x] = (x + sigma_t^2 s) / alpha_t`` (Tweedie);
* the velocity ``v = E[d x_t / dt | x_t = x] = alpha'_t x0_hat + sigma'_t eps_hat`` -- the
  flow-matching target (Lipman et al. 2023, Eq. 21 with the conditional path
  ``alpha_t x_0 + sigma_t eps``; Liu et al. 2023 for ``alpha = 1 - t``, ``sigma = t``).

All four are affine in the score with coefficients depending only on ``t``; in particular

``v(x, t) = f(t) x - g(t)^2 s(x, t) / 2``   (``f = alpha'/alpha``, ``g^2 = (sigma^2)' - 2 f sigma^2``)

is the probability-flow ODE velocity (Song et al. 2021, Eq. 13): integrating ``dx/dt = v`` from
``t_max`` down to ``t_min`` transports ``p_{t_max}`` to ``p_{t_min}``. Solving the 2x2 system
``x = alpha x0 + sigma eps``, ``v = alpha' x0 + sigma' eps`` (determinant
``D = alpha sigma' - sigma alpha' = alpha g^2 / (2 sigma) > 0`` for ``0 < t < 1``) gives
``x0_hat = (sigma' x - sigma v) / D`` and ``eps_hat = (alpha v - alpha' x) / D``. For the
rectified-flow schedule ``D = 1``: ``x0_hat = x - t v`` and ``eps_hat = x + (1 - t) v``.

Composition: because ``v = f x - g^2 s / 2`` is affine in ``s`` with coefficients that depend
only on ``(x, t)``, any operator ``s = sum_j c_j s_j`` with ``sum_j c_j = 1`` (the composition
operator ``s_b + sum_i w_i (s_i - s_b)`` has coefficients ``1 - sum_i w_i`` and ``w_i``) maps to
the same combination of velocities, ``v = sum_j c_j v_j`` -- and likewise of denoisers and noise
predictions. For ``sum_j c_j = c != 1`` (``cj.linear_combination``) the velocity of the combined
score is ``sum_j c_j v_j + (1 - c) f(t) x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import as_float_array, check_t
from ._pytree import pytree_dataclass, static_field
from .models import Model, as_model
from .schedules import Schedule

__all__ = [
    "PREDICTIONS",
    "VelocityModel",
    "convert_prediction",
    "from_velocity",
    "to_velocity",
]

#: The prediction types :func:`convert_prediction` converts between.
PREDICTIONS = ("score", "eps", "x0", "velocity")


def _check_kind(kind: str, name: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {PREDICTIONS}, got {kind!r}")


def _coeffs(schedule: Schedule, t: Any, dtype: Any):
    a, s = schedule.alpha(t), schedule.sigma(t)
    da, ds = schedule.alpha_sigma_dot(t)
    return tuple(jnp.asarray(c).astype(dtype) for c in (a, s, da, ds))


def convert_prediction(schedule: Schedule, x: Any, t: Any, value: Any, *, source: str,
                       target: str) -> jax.Array:
    r"""Exact conversion of a model's prediction at ``(x, t)`` between ``"score"``, ``"eps"``,
    ``"x0"`` and ``"velocity"`` (see the module docstring for the formulas).

    Args:
      schedule: the schedule of ``x_t = alpha_t x_0 + sigma_t eps``.
      x: the point ``x_t``, shape ``(..., d)``.
      t: scalar time in ``(0, 1)`` (where ``alpha, sigma > 0``).
      value: the prediction of type ``source``, same shape as ``x``.
      source, target: prediction types from :data:`PREDICTIONS`.

    Returns:
      The prediction of type ``target``, shape of ``x``.
    """
    _check_kind(source, "source")
    _check_kind(target, "target")
    x = as_float_array(x, "x")
    value = as_float_array(value, "value")
    if value.shape != x.shape:
        raise ValueError(
            f"value must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}"
        )
    if source == target:
        return value
    a, s, da, ds = _coeffs(schedule, check_t(t), x.dtype)
    det = a * ds - s * da  # alpha sigma' - sigma alpha'
    # the two direct routes that would otherwise divide and multiply by alpha
    if (source, target) == ("velocity", "x0"):
        return (ds * x - s * value) / det
    if (source, target) == ("x0", "velocity"):
        return (ds * x - det * value) / s
    if source == "score":
        eps = -s * value
    elif source == "eps":
        eps = value
    elif source == "x0":
        eps = (x - a * value) / s
    else:
        eps = (a * value - da * x) / det
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    if target == "x0":
        return (x - s * eps) / a
    return (da * x + det * eps) / a


def to_velocity(model: Any, schedule: Schedule, x: Any, t: Any) -> jax.Array:
    r"""The velocity ``v(x, t) = f(t) x - g(t)^2 s(x, t) / 2`` of a model given by its score
    (``E[d x_t / dt | x_t = x]``; the probability-flow velocity). Uses ``model.velocity`` when
    the model has one (a :class:`VelocityModel`)."""
    if isinstance(model, VelocityModel):
        return model.velocity(x, t)
    m = as_model(model)
    return convert_prediction(schedule, x, t, m.score(x, t), source="score", target="velocity")


@pytree_dataclass
class VelocityModel(Model):
    r"""A model given by its velocity field ``v(x, t)`` (a flow-matching / rectified-flow model):
    ``score``, ``denoise`` and ``eps`` are its exact conversions (module docstring).

    ``score = -eps_hat / sigma`` with ``eps_hat = (alpha v - alpha' x) / D``;
    ``denoise = (sigma' x - sigma v) / D``; ``D = alpha sigma' - sigma alpha'``. For
    ``cj.RectifiedFlowSchedule``: ``score = -(x + (1 - t) v) / t`` and ``denoise = x - t v``.
    The model plugs into ``cj.compose``, ``cj.sample`` and ``verify.sampler_law`` like any other.

    Attributes:
      velocity_fn: ``velocity_fn(x (d,), t) -> (d,)`` (static: hashable; a new lambda per call
        means a new trace under ``jit``).
      schedule: the interpolant ``x_t = alpha_t x_0 + sigma_t eps`` the velocity refers to
        (a pytree leaf).
      dim: optional data dimension.
    """

    velocity_fn: Callable = static_field()
    schedule: Schedule
    dim: int | None = static_field(default=None)

    has_denoise = True

    def __post_init__(self):
        if not callable(self.velocity_fn):
            raise TypeError(
                f"velocity_fn must be callable, got {type(self.velocity_fn).__name__}"
            )
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int)
                                     or self.dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {self.dim!r}")

    def velocity(self, x: Any, t: Any) -> jax.Array:
        """``v(x, t)``, shape ``(d,)``."""
        return self.velocity_fn(x, t)

    def score(self, x: Any, t: Any) -> jax.Array:
        return convert_prediction(self.schedule, x, t, self.velocity_fn(x, t),
                                  source="velocity", target="score")

    def eps(self, x: Any, t: Any) -> jax.Array:
        """``E[eps | x_t = x]``, shape ``(d,)``."""
        return convert_prediction(self.schedule, x, t, self.velocity_fn(x, t),
                                  source="velocity", target="eps")

    def _denoise(self, x: Any, t: Any) -> jax.Array:
        return convert_prediction(self.schedule, x, t, self.velocity_fn(x, t),
                                  source="velocity", target="x0")


def from_velocity(velocity_fn: Callable, schedule: Schedule, dim: int | None = None
                  ) -> VelocityModel:
    """``VelocityModel(velocity_fn, schedule, dim)``: a model from a velocity field."""
    return VelocityModel(velocity_fn, schedule, dim)
