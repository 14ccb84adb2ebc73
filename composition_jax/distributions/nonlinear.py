r"""Law of ``forward(x)`` for ``x ~ base`` under a nonlinear diffeomorphism: a ``t = 0`` object.

By the change of variables, for ``z = F(x)`` with ``F`` a C^1 diffeomorphism of ``R^d``,

``log (F# p)(z) = log p(F^{-1}(z)) - log |det J_F(F^{-1}(z))|``,

and the score ``grad_z log (F# p)(z)`` is obtained by automatic differentiation of that
expression (exact up to float rounding, like the log-density). Sampling pushes exact base samples
through ``F``.

**No noised law.** ``N_t[F# p]`` (noise added AFTER a nonlinear map) has no closed form, so this
family is not a :class:`~composition_jax.distributions.diffuse.Diffused` family: ``diffuse()``
rejects it. It is the object of Lemma 6.2 and Theorem 6.1 of Bradley et al. (2025), which are
``t = 0`` statements: ``C[F# p] = F# C[p]`` (the Jacobian factors cancel in every ratio
``p_i / p_b``) and, when ``F# p`` satisfies Factorized Conditionals, ``C[p]`` is a projective
composition with respect to ``x -> F(x)|_{M_i}``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_point
from .._pytree import pytree_dataclass, static_field
from .base import Distribution

__all__ = ["NonlinearPushforward", "affine_coupling_map"]


def _autodiff_logdet(forward: Callable) -> Callable:
    def logdet(x):
        return jnp.linalg.slogdet(jax.jacfwd(forward)(x))[1]

    return logdet


@pytree_dataclass
class NonlinearPushforward(Distribution):
    """Law of ``forward(x)`` for ``x ~ base`` (``t = 0`` only; see the module docstring).

    Args:
      base: the law of ``x`` (any distribution with exact ``log_prob`` and ``sample``).
      forward: ``F: (d,) -> (d,)``, a C^1 diffeomorphism (a pure JAX function on one point).
      inverse: ``F^{-1}: (d,) -> (d,)``.
      log_det_jacobian: ``x -> log |det J_F(x)|`` (default: ``slogdet`` of ``jax.jacfwd(F)``).

    ``forward``, ``inverse`` and ``log_det_jacobian`` are static (part of the tree structure):
    pass the same function objects to reuse compiled code.

    Example:
      >>> import jax, jax.numpy as jnp, composition_jax as cj
      >>> F, Fi, ld = cj.affine_coupling_map()
      >>> p = cj.NonlinearPushforward(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), F, Fi, ld)
      >>> p.sample(jax.random.key(0), 3).shape
      (3, 2)
    """

    base: Distribution
    forward: Callable = static_field()
    inverse: Callable = static_field()
    log_det_jacobian: Callable | None = static_field(default=None)

    def __post_init__(self):
        if not isinstance(self.base, Distribution):
            raise TypeError(f"base must be a Distribution, got {type(self.base).__name__}")
        for name in ("forward", "inverse"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a callable (d,) -> (d,), got "
                                f"{type(getattr(self, name)).__name__}")
        if self.log_det_jacobian is not None and not callable(self.log_det_jacobian):
            raise TypeError("log_det_jacobian must be a callable (d,) -> scalar or None")
        d = self.base.dim
        probe = jax.eval_shape(self.forward, jax.ShapeDtypeStruct((d,), self.base.dtype))
        if probe.shape != (d,):
            raise ValueError(f"forward must map shape ({d},) to ({d},), got {probe.shape}")
        probe = jax.eval_shape(self.inverse, jax.ShapeDtypeStruct((d,), self.base.dtype))
        if probe.shape != (d,):
            raise ValueError(f"inverse must map shape ({d},) to ({d},), got {probe.shape}")

    @property
    def dim(self) -> int:
        return self.base.dim

    def _logdet(self, x):
        f = self.log_det_jacobian or _autodiff_logdet(self.forward)
        return f(x)

    def _sample_one(self, key):
        return self.forward(self.base._sample_one(key))

    def _sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples ``forward(x_i)``, ``x_i`` exact base samples (sample ``i`` depends only
        on ``(key, i)``)."""
        return jax.vmap(self.forward)(self.base.sample(key, n))

    def log_prob(self, z: Any) -> jax.Array:
        """Exact ``log p(F^{-1}(z)) - log |det J_F(F^{-1}(z))|`` at one point ``z (d,)``."""
        z = check_point(z, self.dim)
        x = self.inverse(z)
        return self.base.log_prob(x) - self._logdet(x)

    def score(self, z: Any) -> jax.Array:
        """``grad_z log (F# p)(z)`` by automatic differentiation of :meth:`log_prob`."""
        z = check_point(z, self.dim)
        return jax.grad(self.log_prob)(z)

    def _check_noisable(self) -> None:
        raise NotImplementedError(
            "NonlinearPushforward is a t = 0 law: the noised law N_t[F# p] of a nonlinear "
            "pushforward has no closed form, so it cannot be diffused exactly (use its t = 0 "
            "log_prob / score, e.g. with Metropolis-corrected MCMC)")

    def _noised_log_prob(self, x, a, s):
        self._check_noisable()

    def _noised_score(self, x, a, s):
        self._check_noisable()

    def _noised_denoise(self, x, a, s):
        self._check_noisable()


@functools.cache
def affine_coupling_map(s1: float = 0.5, t1: float = 0.3, s2: float = 0.4, t2: float = 0.5):
    r"""A nonlinear diffeomorphism of ``R^2`` with a non-constant Jacobian (two affine couplings,
    RealNVP-style; Dinh et al. 2017):

    ``y = (x_0, x_1 exp(s1 tanh x_0) + t1 x_0^3)``,
    ``F(x) = (y_0 exp(s2 tanh y_1) + t2 sin y_1, y_1)``,

    ``log |det J_F(x)| = s1 tanh x_0 + s2 tanh y_1``; the inverse is explicit.

    Returns:
      ``(forward, inverse, log_det_jacobian)`` on one point of shape ``(2,)`` (the same function
      objects for the same parameters, so compiled code is reused).
    """

    def forward(x):
        y1 = x[1] * jnp.exp(s1 * jnp.tanh(x[0])) + t1 * x[0] ** 3
        z0 = x[0] * jnp.exp(s2 * jnp.tanh(y1)) + t2 * jnp.sin(y1)
        return jnp.stack([z0, y1])

    def inverse(z):
        y0 = (z[0] - t2 * jnp.sin(z[1])) * jnp.exp(-s2 * jnp.tanh(z[1]))
        x1 = (z[1] - t1 * y0 ** 3) * jnp.exp(-s1 * jnp.tanh(y0))
        return jnp.stack([y0, x1])

    def log_det_jacobian(x):
        y1 = x[1] * jnp.exp(s1 * jnp.tanh(x[0])) + t1 * x[0] ** 3
        return s1 * jnp.tanh(x[0]) + s2 * jnp.tanh(y1)

    return forward, inverse, log_det_jacobian
