r"""Mixture of models: the noised law ``p^t = sum_k w_k p_k^t`` as a model.

Forward noising is linear in the law, so the noised mixture is the mixture of the noised
components, and its score is the responsibility-weighted average of the components' scores:

.. math::

    \nabla \log p^t(x) = \sum_k r_k(x, t)\, s_k(x, t), \qquad
    r_k = \operatorname{softmax}_k\bigl(\log w_k + \log p_k^t(x)\bigr).

This is how the Bayes background ``p_u = (1/k) sum_i p_i`` of Bradley et al. (2025) (Section 3,
"Bayes composition"; eqs. (17)-(18) and Figure 12) is built from the conditionals' own noised
models, and how a scene model is assembled from a catalogue of component models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ._checks import as_float_array, is_concrete
from ._pytree import pytree_dataclass
from .compose import _check_dims
from .models import Model, as_model

__all__ = ["MixtureOfModels"]


@pytree_dataclass
class MixtureOfModels(Model):
    r"""``p^t = sum_k w_k p_k^t`` for models ``p_k`` with (normalized) ``log_prob(x, t)``.

    Exact when the inputs are exact noised laws (e.g. ``cj.diffuse(dist, schedule)``): then
    ``MixtureOfModels([diffuse(p_k, sch)], w)`` has the score, ``log_prob`` and denoiser of
    ``diffuse(sum_k w_k p_k, sch)`` at every ``t``. The responsibilities need each input's
    *normalized* log-density; with unnormalized inputs (a :class:`~composition_jax.Composition`)
    the result is the mixture with weights ``w_k Z_k / sum_j w_j Z_j``.

    Methods (on one point ``x`` of shape ``(d,)`` and a scalar ``t``):

    * ``score``: ``sum_k r_k s_k`` (exactly ``grad_x log_prob``);
    * ``log_prob``: ``logsumexp_k(log w_k + log p_k^t(x))``; ``log_prob_and_score`` shares work
      (``has_log_prob`` is always ``True``);
    * ``denoise`` (``has_denoise`` when every input declares it): ``sum_k r_k D_k``. Exact:
      Tweedie's ``D = (x + sigma^2 s) / alpha`` is affine in the score and the ``r_k`` sum to one.

    Args:
      models: ``K >= 1`` models, each declaring ``has_log_prob`` (their ``log_prob_and_score``
        is used), all of the same dimension.
      weights: ``(K,)`` non-negative, summing to 1 (a pytree leaf: one compiled sampler serves
        any weights). A zero weight removes its component exactly.

    Raises:
      TypeError: an input without ``log_prob`` (named).
      ValueError: weights of the wrong shape, negative, or not summing to 1; inputs of
        different dimensions.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> p1 = cj.diffuse(cj.Gaussian(-jnp.ones(2), jnp.eye(2)), sch)
      >>> p2 = cj.diffuse(cj.Gaussian(jnp.ones(2), jnp.eye(2)), sch)
      >>> m = cj.MixtureOfModels([p1, p2], jnp.array([0.5, 0.5]))
      >>> m.score(jnp.zeros(2), 0.3).shape
      (2,)
    """

    models: tuple
    weights: Any
    log_weights: Any = dataclasses.field(init=False, repr=False)

    has_log_prob = True

    def __post_init__(self):
        models = self.models
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
            raise TypeError(f"models must be a sequence of models, got {type(models).__name__}")
        models = tuple(as_model(m, f"models[{i}]") for i, m in enumerate(models))
        if not models:
            raise ValueError("models must not be empty (got 0 models)")
        names = [f"models[{i}]" for i in range(len(models))]
        lacking = [n for n, m in zip(names, models) if not m.has_log_prob]
        if lacking:
            raise TypeError("MixtureOfModels needs log_prob(x, t) of every input (for the "
                            f"responsibilities); missing on: {', '.join(lacking)}")
        _check_dims(models, names)
        if isinstance(self.weights, (bool, np.bool_)):
            raise TypeError("weights must be real numbers, got bool")
        w = as_float_array(self.weights, "weights")
        if w.shape != (len(models),):
            raise ValueError(f"weights must have shape ({len(models)},) (one per model), got "
                             f"shape {tuple(w.shape)}")
        if is_concrete(w):
            wn = np.asarray(w, np.float64)
            if np.any(wn < 0) or not np.all(np.isfinite(wn)):
                raise ValueError(f"weights must be finite and non-negative, got {wn.tolist()}")
            tol = max(1e-5, 10 * len(models) * float(jnp.finfo(w.dtype).eps))
            if abs(wn.sum() - 1.0) > tol:
                raise ValueError(f"weights must sum to 1, got sum {wn.sum():.8g}")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "log_weights", jnp.log(w))

    @property
    def _names(self) -> list[str]:
        return [f"models[{i}]" for i in range(len(self.models))]

    @property
    def dim(self) -> int | None:
        return _check_dims(self.models, self._names)

    @property
    def has_denoise(self) -> bool:
        """Every input declares ``denoise``."""
        return all(m.has_denoise for m in self.models)

    def _why_not(self, capability: str) -> str:
        lacking = [n for n, m in zip(self._names, self.models) if not m.has_denoise]
        return f"input(s) without {capability}: {', '.join(lacking)}"

    def _logits(self, lps: jax.Array) -> jax.Array:
        return self.log_weights.astype(lps.dtype) + lps

    def _mix(self, logits: jax.Array, values: jax.Array) -> jax.Array:
        """``sum_k r_k values_k``; zero-weight components contribute exactly zero (even where
        their values are not finite)."""
        r = jax.nn.softmax(logits)
        values = jnp.where((r > 0)[:, None], values.astype(r.dtype), 0)
        return r @ values

    def _log_prob_and_score(self, x: Any, t: Any) -> tuple[jax.Array, jax.Array]:
        """``(log p^t(x), grad_x log p^t(x))`` sharing the inputs' work."""
        pairs = [m.log_prob_and_score(x, t) for m in self.models]
        logits = self._logits(jnp.stack([jnp.asarray(p[0]) for p in pairs]))
        return logsumexp(logits), self._mix(logits, jnp.stack([p[1] for p in pairs]))

    def score(self, x: Any, t: Any) -> jax.Array:
        """Responsibility-weighted score ``sum_k r_k(x, t) s_k(x, t)``, shape ``(d,)``."""
        return self._log_prob_and_score(x, t)[1]

    def _log_probs(self, x: Any, t: Any) -> jax.Array:
        return jnp.stack([jnp.asarray(m.log_prob(x, t)) for m in self.models])

    def _log_prob(self, x: Any, t: Any) -> jax.Array:
        """``log sum_k w_k p_k^t(x)`` (normalized when the inputs are)."""
        return logsumexp(self._logits(self._log_probs(x, t)))

    def _denoise(self, x, t):
        """Posterior mean ``E[x_0 | x_t = x] = sum_k r_k D_k(x, t)``, shape ``(d,)``."""
        logits = self._logits(self._log_probs(x, t))
        return self._mix(logits, jnp.stack([m.denoise(x, t) for m in self.models]))
