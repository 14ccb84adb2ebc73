r"""Noise schedules: ``x_t = alpha(t) x_0 + sigma(t) eps``, ``eps ~ N(0, I)``, ``t in [0, 1]``.

Every schedule is a pytree whose numbers are leaves, and exposes

* ``alpha(t)``, ``sigma(t)``, ``log_alpha(t)``, ``log_snr(t) = log(alpha^2 / sigma^2)`` and its
  inverse ``t_from_log_snr(lam)``;
* the forward SDE ``dx = f(t) x dt + g(t) dW`` consistent with ``alpha``/``sigma``:
  ``f(t) = d log alpha / dt = -beta(t)/2`` and ``g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2``
  (``drift(x, t) = f(t) x``, ``diffusion(t) = g(t)``). With ``Var[x_0] = v`` the moment ODEs
  ``m' = f m``, ``V' = 2 f V + g^2`` started at ``(m_0, v + sigma(0)^2)`` give
  ``alpha(t) m_0`` and ``alpha(t)^2 v + sigma(t)^2`` (tested numerically);
* the prior used to start reverse-time samplers at ``t_max``: ``N(0, prior_std^2 I)``.

All quantities are evaluated in closed form without catastrophic cancellation at small ``t``
(``expm1``/``sin`` identities), in the dtype of ``t``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import as_float_array, check_t, float_dtype_of, is_concrete
from ._pytree import pytree_dataclass, static_field

__all__ = ["CosineVPSchedule", "RectifiedFlowSchedule", "Schedule", "VESchedule", "VPSchedule"]


def _time(t: Any) -> jax.Array:
    t = check_t(t)
    return t.astype(float_dtype_of(t))


def _param(x: Any, name: str) -> jax.Array:
    arr = as_float_array(x, name)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(arr.shape)}")
    # Strong dtype: a schedule built from Python floats and one built from arrays have the same
    # avals, so a jitted function taking the schedule as an argument is not retraced.
    return arr.astype(arr.dtype)


class Schedule:
    """Base class. Subclasses implement ``log_alpha``, ``sigma2`` and ``beta`` (and may override
    ``g2``, ``log_snr``, ``t_from_log_snr``)."""

    t_max: float = 1.0

    # -- to implement -------------------------------------------------------------------
    def log_alpha(self, t: Any) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma2(self, t: Any) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def beta(self, t: Any) -> jax.Array:
        """``beta(t) = -2 d log alpha / dt``."""
        raise NotImplementedError  # pragma: no cover - abstract

    # -- derived ------------------------------------------------------------------------
    def alpha(self, t: Any) -> jax.Array:
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Any) -> jax.Array:
        return jnp.sqrt(self.sigma2(t))

    def alpha_sigma(self, t: Any) -> tuple[jax.Array, jax.Array]:
        return self.alpha(t), self.sigma(t)

    def log_snr(self, t: Any) -> jax.Array:
        """``log(alpha(t)^2 / sigma(t)^2)``, decreasing in ``t``."""
        return 2.0 * self.log_alpha(t) - jnp.log(self.sigma2(t))

    def t_from_log_snr(self, lam: Any) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def drift_coeff(self, t: Any) -> jax.Array:
        """``f(t)`` with ``drift(x, t) = f(t) x``."""
        return -0.5 * self.beta(t)

    def g2(self, t: Any) -> jax.Array:
        """Squared diffusion ``g(t)^2``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def alpha_sigma_dot(self, t: Any) -> tuple[jax.Array, jax.Array]:
        r"""``(alpha'(t), sigma'(t))``, the time derivatives, from the SDE coefficients:
        ``alpha' = f alpha`` and ``sigma' = (g^2 + 2 f sigma^2) / (2 sigma)`` (from
        ``g^2 = (sigma^2)' - 2 f sigma^2``); the conditional velocity of ``x_t`` is
        ``alpha' x_0 + sigma' eps``. Needs ``sigma(t) > 0``."""
        f = self.drift_coeff(t)
        s2 = self.sigma2(t)
        return f * self.alpha(t), (self.g2(t) + 2.0 * f * s2) / (2.0 * jnp.sqrt(s2))

    def drift(self, x: Any, t: Any) -> jax.Array:
        """Forward-SDE drift ``f(t) x``."""
        x = as_float_array(x, "x")
        return self.drift_coeff(t).astype(x.dtype) * x

    def diffusion(self, t: Any) -> jax.Array:
        """Forward-SDE diffusion coefficient ``g(t)``."""
        return jnp.sqrt(self.g2(t))

    @property
    def prior_std(self) -> float:
        """Standard deviation of the reverse-time prior ``N(0, prior_std^2 I)`` at ``t_max``."""
        return 1.0

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = None) -> jax.Array:
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jnp.asarray(self.prior_std, dtype) * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x: Any) -> jax.Array:
        x = as_float_array(x, "x")
        s = jnp.asarray(self.prior_std, x.dtype)
        d = x.shape[-1]
        return -0.5 * jnp.sum((x / s) ** 2, -1) - d * (jnp.log(s) + 0.5 * math.log(2 * math.pi))


@pytree_dataclass
class VPSchedule(Schedule):
    r"""Variance-preserving schedule with linear ``beta(t) = beta_min + t (beta_max - beta_min)``.

    ``log alpha(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2``,
    ``sigma^2 = 1 - alpha^2`` (computed as ``-expm1(2 log alpha)``), ``g^2 = beta``.
    Song et al. (2021) VP-SDE; DDPM's linear schedule in the continuous limit.
    """

    beta_min: Any = 0.1
    beta_max: Any = 20.0
    t_max: float = static_field(default=1.0)

    def __post_init__(self):
        bmin = _param(self.beta_min, "beta_min")
        bmax = _param(self.beta_max, "beta_max")
        if is_concrete(bmin, bmax) and not (0 < float(bmin) <= float(bmax)):
            raise ValueError(
                f"VPSchedule needs 0 < beta_min <= beta_max, got {float(bmin)}, {float(bmax)}"
            )
        object.__setattr__(self, "beta_min", bmin)
        object.__setattr__(self, "beta_max", bmax)

    def _p(self, t):
        t = _time(t)
        return t, self.beta_min.astype(t.dtype), self.beta_max.astype(t.dtype)

    def log_alpha(self, t):
        t, b0, b1 = self._p(t)
        return -0.5 * (b0 * t + 0.5 * (b1 - b0) * t * t)

    def sigma2(self, t):
        return -jnp.expm1(2.0 * self.log_alpha(t))

    def beta(self, t):
        t, b0, b1 = self._p(t)
        return b0 + t * (b1 - b0)

    def g2(self, t):
        return self.beta(t)

    def t_from_log_snr(self, lam):
        lam = as_float_array(lam, "lam")
        b0, b1 = self.beta_min.astype(lam.dtype), self.beta_max.astype(lam.dtype)
        # alpha^2 = sigmoid(lam)  =>  b0 t + (b1-b0) t^2 / 2 = softplus(-lam) =: c
        c = jax.nn.softplus(-lam)
        return 2.0 * c / (b0 + jnp.sqrt(b0 * b0 + 2.0 * (b1 - b0) * c))


@pytree_dataclass
class CosineVPSchedule(Schedule):
    r"""Cosine variance-preserving schedule (Nichol & Dhariwal, 2021).

    ``alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))`` so ``alpha(0) = 1`` and
    ``alpha(1) = 0`` exactly. ``sigma^2 = 1 - alpha^2`` is evaluated as
    ``sin(b-a) sin(b+a) / cos(a)^2`` (no cancellation at small ``t``), and
    ``beta(t) = pi/(1+s) tan(pi/2 (t+s)/(1+s))``, which diverges at ``t = 1``; reverse-time
    samplers therefore start at ``t_max`` (default 0.995, where ``alpha ~ 8e-3``) from ``N(0, I)``.
    """

    s: Any = 0.008
    t_max: float = static_field(default=0.995)

    def __post_init__(self):
        s = _param(self.s, "s")
        if is_concrete(s) and not (float(s) >= 0):
            raise ValueError(f"CosineVPSchedule needs s >= 0, got {float(s)}")
        if not (0.0 < self.t_max <= 1.0):
            raise ValueError(f"t_max must lie in (0, 1], got {self.t_max}")
        object.__setattr__(self, "s", s)

    def _angles(self, t):
        t = _time(t)
        s = self.s.astype(t.dtype)
        h = 0.5 * jnp.pi / (1.0 + s)
        return t, s, h

    def log_alpha(self, t):
        t, s, h = self._angles(t)
        # alpha = cos(h (t + s)) / cos(h s).  For t <= 1/2 expand the cosine of a sum:
        # alpha = cos(h t) - tan(h s) sin(h t) = 1 - 2 sin(h t / 2)^2 - tan(h s) sin(h t), so that
        # log alpha = log1p(...) is accurate for tiny t and alpha(0) == 1 exactly.  For t > 1/2 use
        # cos(h (t + s)) == sin(h (1 - t)) (h (1 + s) = pi/2): alpha(1) == 0 exactly.
        # Each branch sees a safe time (double-where) so gradients stay finite.
        lo = t <= 0.5
        t_lo = jnp.where(lo, t, jnp.zeros_like(t))
        t_hi = jnp.where(lo, jnp.ones_like(t), t)
        small = jnp.log1p(
            -2.0 * jnp.sin(0.5 * h * t_lo) ** 2 - jnp.tan(h * s) * jnp.sin(h * t_lo)
        )
        large = jnp.log(jnp.sin(h * (1.0 - t_hi))) - jnp.log(jnp.cos(h * s))
        return jnp.where(lo, small, large)

    def sigma2(self, t):
        t, s, h = self._angles(t)
        a, b = h * s, h * (t + s)
        return jnp.sin(h * t) * jnp.sin(a + b) / jnp.cos(a) ** 2

    def beta(self, t):
        t, _, h = self._angles(t)
        return 2.0 * h / jnp.tan(h * (1.0 - t))

    def g2(self, t):
        return self.beta(t)

    def log_snr(self, t):
        t, s, h = self._angles(t)
        a, b = h * s, h * (t + s)
        return 2.0 * jnp.log(jnp.sin(h * (1.0 - t))) - jnp.log(jnp.sin(h * t)) - jnp.log(
            jnp.sin(a + b)
        )

    def t_from_log_snr(self, lam):
        lam = as_float_array(lam, "lam")
        s = self.s.astype(lam.dtype)
        h = 0.5 * jnp.pi / (1.0 + s)
        # With theta = h (t + s), S = sin(h s), C = cos(h s) and q^2 = exp(-lam) = sigma^2/alpha^2:
        # 1/alpha^2 = 1 + q^2 gives tan(theta) = R / C with R = sqrt(q^2 + S^2), hence
        # tan(h t) = tan(theta - h s) = q^2 C / ((R + S)(C^2 + R S))   (no cancellation),
        # and t = atan2(q^2 C, (R + S)(C^2 + R S)) / h.  For lam < 0 numerator and denominator
        # are divided by q^2 (p = 1/q = exp(lam/2) <= 1) so nothing overflows; lam = +-inf give
        # t = 0 and t = 1.  (arcsin(alpha cos(h s)) would lose ~1e-2 relative at t = 1e-4 in
        # float32.)
        S, C = jnp.sin(h * s), jnp.cos(h * s)
        pos = lam >= 0
        q = jnp.exp(-0.5 * jnp.maximum(lam, 0.0))
        r_q = jnp.hypot(q, S)
        num_pos = q * q * C
        den_pos = (r_q + S) * (C * C + r_q * S)
        p = jnp.exp(0.5 * jnp.minimum(lam, 0.0))
        r_p = jnp.hypot(jnp.ones_like(p), S * p)
        num_neg = jnp.broadcast_to(C, p.shape)
        den_neg = (r_p + S * p) * (C * C * p + r_p * S)
        t = jnp.arctan2(jnp.where(pos, num_pos, num_neg), jnp.where(pos, den_pos, den_neg)) / h
        return jnp.clip(t, 0.0, 1.0)


@pytree_dataclass
class VESchedule(Schedule):
    r"""Variance-exploding schedule: ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    ``g(t)^2 = d sigma^2 / dt = 2 log(sigma_max/sigma_min) sigma(t)^2`` and zero drift (Song et
    al., 2021). Note ``sigma(0) = sigma_min > 0``: the law at ``t = 0`` is the data convolved with
    ``N(0, sigma_min^2 I)``; the exact oracles use exactly this ``sigma(t)``. The reverse-time prior
    is ``N(0, sigma_max^2 I)``.
    """

    sigma_min: Any = 0.01
    sigma_max: Any = 50.0
    t_max: float = static_field(default=1.0)

    def __post_init__(self):
        lo = _param(self.sigma_min, "sigma_min")
        hi = _param(self.sigma_max, "sigma_max")
        if is_concrete(lo, hi) and not (0 < float(lo) < float(hi)):
            raise ValueError(
                f"VESchedule needs 0 < sigma_min < sigma_max, got {float(lo)}, {float(hi)}"
            )
        object.__setattr__(self, "sigma_min", lo)
        object.__setattr__(self, "sigma_max", hi)

    def _p(self, t):
        t = _time(t)
        lo, hi = self.sigma_min.astype(t.dtype), self.sigma_max.astype(t.dtype)
        return t, lo, jnp.log(hi) - jnp.log(lo)

    def log_alpha(self, t):
        t = _time(t)
        return jnp.zeros_like(t)

    def log_sigma(self, t):
        t = _time(t)
        lo, hi = self.sigma_min.astype(t.dtype), self.sigma_max.astype(t.dtype)
        # (1 - t) log sigma_min + t log sigma_max: exact end points sigma(0) = sigma_min and
        # sigma(1) = sigma_max (to one rounding of exp).
        return (1.0 - t) * jnp.log(lo) + t * jnp.log(hi)

    def sigma(self, t):
        return jnp.exp(self.log_sigma(t))

    def sigma2(self, t):
        return jnp.exp(2.0 * self.log_sigma(t))

    def beta(self, t):
        t = _time(t)
        return jnp.zeros_like(t)

    def g2(self, t):
        t, _, r = self._p(t)
        return 2.0 * r * self.sigma2(t)

    def log_snr(self, t):
        return -2.0 * self.log_sigma(t)

    def t_from_log_snr(self, lam):
        lam = as_float_array(lam, "lam")
        lo = self.sigma_min.astype(lam.dtype)
        r = jnp.log(self.sigma_max.astype(lam.dtype)) - jnp.log(lo)
        return (-0.5 * lam - jnp.log(lo)) / r

    @property
    def prior_std(self):
        return self.sigma_max


@pytree_dataclass
class RectifiedFlowSchedule(Schedule):
    r"""Rectified flow / flow matching interpolant: ``alpha(t) = 1 - t``, ``sigma(t) = t``.

    ``x_t = (1 - t) x_0 + t eps`` is the linear interpolation between data and noise of
    rectified flow (Liu et al. 2023) and conditional flow matching with the optimal-transport
    path (Lipman et al. 2023; the family of SD3, Esser et al. 2024, whose ``t`` is this one).
    Derived quantities, all in closed form:

    * ``log alpha = log1p(-t)``, ``sigma^2 = t^2``, ``log SNR = 2 log((1 - t) / t)`` and its
      inverse ``t = sigmoid(-lam / 2)``;
    * forward SDE: ``f(t) = d log alpha / dt = -1 / (1 - t)`` (``beta = 2 / (1 - t)``) and
      ``g(t)^2 = d sigma^2/dt - 2 f sigma^2 = 2 t + 2 t^2 / (1 - t) = 2 t / (1 - t)``;
    * the conditional velocity ``d x_t / dt = eps - x_0`` (``alpha' = -1``, ``sigma' = 1``).

    Endpoints: ``alpha(1) = 0`` and ``sigma(1) = 1`` exactly, so ``p_1 = N(0, I)`` exactly; but
    ``f`` and ``g^2`` diverge at ``t = 1`` (the score-form probability-flow velocity
    ``f x - g^2 s / 2`` is an ``inf - inf`` there although its limit ``(x - E[x_0|x]) / t`` is
    finite) and ``x_0``-predictions divide by ``alpha``. Reverse-time samplers therefore start
    at ``t_max`` (default ``0.999``, a static field, must lie in ``(0, 1)``) where every
    coefficient is finite (``|f| = 1000``, ``alpha = 1e-3``), from the prior
    ``N(0, t_max^2 I)`` (``prior_std = sigma(t_max)``, as for VE): it differs from the exact
    ``p_{t_max} = law((1 - t_max) x_0 + t_max eps)`` only by the data's ``alpha(t_max) x_0``
    contribution (mean ``1e-3 E[x_0]``, covariance ``1e-6 Cov[x_0]``). ``sigma(0) = 0``, so
    ``t_min > 0`` as for VP.
    """

    t_max: float = static_field(default=0.999)

    def __post_init__(self):
        if isinstance(self.t_max, bool) or not isinstance(self.t_max, (int, float)) or not (
            0.0 < self.t_max < 1.0
        ):
            raise ValueError(
                f"t_max must lie in (0, 1) (f(t) = -1/(1 - t) diverges at t = 1), got "
                f"{self.t_max!r}"
            )

    def log_alpha(self, t):
        return jnp.log1p(-_time(t))

    def alpha(self, t):
        return 1.0 - _time(t)

    def sigma(self, t):
        return _time(t)

    def sigma2(self, t):
        t = _time(t)
        return t * t

    def beta(self, t):
        return 2.0 / (1.0 - _time(t))

    def drift_coeff(self, t):
        return -1.0 / (1.0 - _time(t))

    def g2(self, t):
        t = _time(t)
        return 2.0 * t / (1.0 - t)

    def log_snr(self, t):
        t = _time(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, lam):
        lam = as_float_array(lam, "lam")
        return jax.nn.sigmoid(-0.5 * lam)

    def alpha_sigma_dot(self, t):
        """``(alpha', sigma') = (-1, 1)`` exactly."""
        t = _time(t)
        return -jnp.ones_like(t), jnp.ones_like(t)

    @property
    def prior_std(self):
        return float(self.t_max)
