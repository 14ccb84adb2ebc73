r"""``diffuse(dist, schedule)``: the exact noised family ``p_t = law(alpha(t) x_0 + sigma(t) eps)``.

The returned :class:`Diffused` is a *model* (it has ``.score(x, t)``) usable by the composition
operators and samplers, and an oracle: ``log_prob``, ``score``, ``denoise`` are closed form at
every ``t in [0, 1]`` (no Monte Carlo, no autodiff of something else), and ``sample(key, n, t)``
draws exactly from ``p_t``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_columns, check_point, check_t
from .._pytree import pytree_dataclass
from ..models import Model, jit_when_concrete
from ..schedules import Schedule
from .base import Distribution, cast_tree, check_count, per_sample_keys

__all__ = ["Diffused", "diffuse"]


@pytree_dataclass
class Diffused(Model):
    """Noised family of ``dist`` under ``schedule``. Methods act on one point ``x`` of shape
    ``(d,)`` and a scalar ``t``; results have ``x``'s dtype.

    A :class:`~composition_jax.models.Model` with exact ``log_prob``, ``log_prob_and_score``
    and ``denoise`` (``has_log_prob`` and ``has_denoise`` are ``True``)."""

    has_log_prob = True
    has_denoise = True

    dist: Distribution
    schedule: Schedule

    def __post_init__(self):
        if not isinstance(self.dist, Distribution):
            raise TypeError(f"dist must be a Distribution, got {type(self.dist).__name__}")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        self.dist._check_noisable()

    @property
    def dim(self) -> int:
        return self.dist.dim

    # Every public method validates its inputs (shapes always, values when concrete), then runs
    # the computation through ``jit_when_concrete``: called eagerly, one program per structure
    # and shapes instead of dozens of op-by-op compilations; under a transformation, inline.
    def _checked(self, x, t):
        return check_point(x, self.dim), check_t(t)

    def _run(self, what: str, x: Any, t: Any) -> jax.Array:
        return jit_when_concrete(_noised, self, *self._checked(x, t), what, static_argnums=(2,))

    def _prep(self, x, t):
        x, t = self._checked(x, t)
        t = t.astype(x.dtype)
        return x, cast_tree(self.dist, x.dtype), self.schedule.alpha(t), self.schedule.sigma(t)

    def _log_prob(self, x: Any, t: Any) -> jax.Array:
        """Exact ``log p_t(x)``."""
        return self._run("log_prob", x, t)

    def score(self, x: Any, t: Any) -> jax.Array:
        """Exact ``grad_x log p_t(x)``."""
        return self._run("score", x, t)

    @property
    def columns_native(self) -> bool:
        """Whether :meth:`score_columns` has a batched particle-minor implementation rather
        than a vmap of :meth:`score`: the distribution's declaration (Gaussians, diagonal or
        isotropic mixtures, FactorMixtures, and Products / pushforwards of those)."""
        return bool(self.dist.columns_native)

    def score_columns(self, X: Any, t: Any) -> jax.Array:
        """Scores of many particles at once in particle-minor layout: ``X (d, n)`` -> ``(d, n)``
        (column ``j`` is ``score(X[:, j], t)``). Used by ``cj.sample``'s columns layout."""
        return jit_when_concrete(_score_columns, self, check_columns(X, self.dim), check_t(t))

    def batched_score(self, X: Any, t: Any) -> jax.Array:
        """Scores of many particles ``X (n, d)`` -> ``(n, d)`` (a ``vmap`` of :meth:`score`)."""
        X = jnp.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"X must have shape (n, {self.dim}), got {tuple(X.shape)}")
        return jit_when_concrete(_batched_score, self, X, check_t(t))

    def _log_prob_and_score(self, x: Any, t: Any) -> tuple[jax.Array, jax.Array]:
        """Both at once, sharing work (used by Metropolis-corrected samplers)."""
        return self._run("log_prob_and_score", x, t)

    def _denoise(self, x: Any, t: Any) -> jax.Array:
        """Exact posterior mean ``E[x_0 | x_t = x]`` (Tweedie:
        ``(x + sigma^2 score) / alpha``, computed here without dividing by ``alpha``)."""
        return self._run("denoise", x, t)

    def sample(self, key: jax.Array, n: int, t: Any) -> jax.Array:
        """``n`` exact samples of ``p_t``, shape ``(n, d)``; sample ``i`` depends on ``(key, i)``."""
        return jit_when_concrete(_sample, self, key, check_count(n), check_t(t),
                                 static_argnums=(1,))

    def marginal(self, indices) -> Diffused:
        """Noised law of ``x[indices]`` (noising commutes with coordinate projection)."""
        return Diffused(self.dist.marginal(indices), self.schedule)


def _noised(model: Diffused, x, t, what: str):
    """``what`` of the noised law at one point (inputs already validated)."""
    x, d, a, s = model._prep(x, t)
    return getattr(d, f"_noised_{what}")(x, a, s)


def _score_columns(model: Diffused, X, t):
    if not model.columns_native:
        return jax.vmap(model.score, (1, None), 1)(X, t)
    t = t.astype(X.dtype)
    d = cast_tree(model.dist, X.dtype)
    return d._noised_score_columns(X, model.schedule.alpha(t), model.schedule.sigma(t))


def _batched_score(model: Diffused, X, t):
    return jax.vmap(model.score, (0, None))(X, t)


def _sample(model: Diffused, key, n: int, t):
    k0, ke = jax.random.split(key)
    x0 = model.dist.sample(k0, n)
    t = t.astype(x0.dtype)
    eps = jax.vmap(lambda k: jax.random.normal(k, (model.dim,), x0.dtype))(
        per_sample_keys(ke, n)
    )
    return model.schedule.alpha(t) * x0 + model.schedule.sigma(t) * eps


def diffuse(dist: Distribution, schedule: Schedule) -> Diffused:
    """Exact noised family of ``dist`` under ``schedule``.

    Raises ``NotImplementedError`` when the noised density has no closed form (a non-orthogonal
    pushforward of a non-Gaussian law), naming the reason.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), cj.VPSchedule())
      >>> p.score(jnp.ones(2), 0.5).shape
      (2,)
    """
    return Diffused(dist, schedule)

