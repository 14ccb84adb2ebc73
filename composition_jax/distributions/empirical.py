r"""Empirical (finite point-set) law ``sum_j w_j delta_{p_j}``.

Its noised law is the mixture ``sum_j w_j N(a p_j, s^2 I)``, whose score is that of the *ideal
denoiser*: ``E[x_0 | x_t = x] = sum_j r_j(x) p_j`` with responsibilities
``r_j ∝ w_j exp(-|x - a p_j|^2 / (2 s^2))`` and ``score = (a E[x_0|x] - x) / s^2``.

The law is singular at ``t = 0`` (``s = 0``): there ``log_prob`` returns the log probability *mass*
of the point (``-inf`` off the support). Squared distances are formed from explicit differences
(no ``|x|^2 - 2 x.p + |p|^2`` cancellation), so values are finite and accurate for
``sigma(t) >~ 3e-3`` (``t >= 1e-4`` with the default schedules) in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .._checks import as_float_array, is_concrete
from .._pytree import pytree_dataclass
from .base import Distribution, check_indices

__all__ = ["Empirical"]


@pytree_dataclass
class Empirical(Distribution):
    """Finite point set ``points (M, d)`` with optional ``weights (M,)`` (default uniform)."""

    points: Any
    weights: Any = None
    log_weights: Any = dataclasses.field(init=False, repr=False, default=None)

    def __post_init__(self):
        pts = as_float_array(self.points, "points", ndim=2)
        m = pts.shape[0]
        if m == 0:
            raise ValueError("points must hold at least one point, got shape (0, d)")
        if self.weights is None:
            w = jnp.full((m,), 1.0 / m, pts.dtype)
        else:
            w = as_float_array(self.weights, "weights", ndim=1).astype(pts.dtype)
            if w.shape != (m,):
                raise ValueError(
                    f"weights must have shape ({m},) to match points {tuple(pts.shape)}, "
                    f"got {tuple(w.shape)}"
                )
            if is_concrete(w):
                wn = np.asarray(w, np.float64)
                if np.any(wn < 0) or not np.all(np.isfinite(wn)):
                    raise ValueError("weights must be finite and non-negative")
                if abs(wn.sum() - 1.0) > max(1e-5, 10 * m * float(jnp.finfo(w.dtype).eps)):
                    raise ValueError(f"weights must sum to 1, got sum {wn.sum():.8g}")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "log_weights", jnp.log(w))

    @property
    def dim(self) -> int:
        return self.points.shape[-1]

    def _logits(self, x, a, s):
        diff = x[None, :] - a * self.points
        sq = jnp.sum(diff * diff, -1)
        d = self.dim
        # s > 0 branch; s == 0 handled by callers through jnp.where (no Python branching).
        safe_s = jnp.where(s > 0, s, jnp.ones_like(s))
        lg = self.log_weights - 0.5 * sq / (safe_s * safe_s)
        norm = -d * (jnp.log(safe_s) + 0.5 * math.log(2 * math.pi))
        return lg, norm, sq, diff, safe_s

    def _noised_log_prob(self, x, a, s):
        lg, norm, sq, _, _ = self._logits(x, a, s)
        noisy = logsumexp(lg) + norm
        mass = logsumexp(jnp.where(sq == 0, self.log_weights, -jnp.inf))
        return jnp.where(s > 0, noisy, mass)

    def responsibilities(self, x, a, s):
        """Posterior point probabilities ``P(x_0 = p_j | x_t = x)``, shape ``(M,)``."""
        lg = self._logits(x, a, s)[0]
        return jax.nn.softmax(lg)

    def _noised_denoise(self, x, a, s):
        lg = self._logits(x, a, s)[0]
        return jnp.where(s > 0, jax.nn.softmax(lg) @ self.points, x)

    def _score_from(self, lg, diff, s, safe_s, x):
        # score = sum_j r_j (a p_j - x) / s^2 = -(r @ diff) / s^2, from the explicit differences
        # (not a E[x_0|x] - x, which cancels when x is within ~sigma of a point).
        sc = -(jax.nn.softmax(lg) @ diff) / (safe_s * safe_s)
        return jnp.where(s > 0, sc, jnp.full_like(x, jnp.nan))

    def _noised_score(self, x, a, s):
        lg, _, _, diff, safe_s = self._logits(x, a, s)
        return self._score_from(lg, diff, s, safe_s, x)

    def _noised_log_prob_and_score(self, x, a, s):
        lg, norm, sq, diff, safe_s = self._logits(x, a, s)
        mass = logsumexp(jnp.where(sq == 0, self.log_weights, -jnp.inf))
        lp = jnp.where(s > 0, logsumexp(lg) + norm, mass)
        return lp, self._score_from(lg, diff, s, safe_s, x)

    def _sample_one(self, key):
        j = jax.random.categorical(key, self.log_weights)
        return self.points[j]

    def _affine_image(self, matrix, shift):
        # the image of a point set is the point set of the images, with the same weights
        return Empirical(self.points @ matrix.T + shift[None, :], self.weights)

    def marginal(self, indices) -> Empirical:
        idx = np.asarray(check_indices(indices, self.dim))
        return Empirical(self.points[:, idx], self.weights)
