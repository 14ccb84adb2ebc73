"""Exact facts about the closed-form laws used by the verification module.

``as_mixture`` turns a law with an exact Gaussian-mixture form (a Gaussian, Gaussian mixture,
Product or FactorMixture of those, a LinearPushforward with a closed form: whatever
``Distribution.as_gaussian_mixture`` answers) into mixture parameters
``(weights (K,), means (K, d), covs (K, d, d))`` (a Product's components are the Cartesian product
of its factors' components). From these: exact mean and
covariance, exact fourth central moments, and exact 1-D marginal CDFs.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.scipy.stats import norm

from ..distributions import Distribution
from ..distributions.base import MAX_MIXTURE_COMPONENTS
from ..distributions.diffuse import Diffused

__all__ = ["MAX_COMPONENTS", "as_mixture", "cdf_columns", "fourth_moments", "moments", "unwrap"]

MAX_COMPONENTS = MAX_MIXTURE_COMPONENTS


def unwrap(dist: Any, name: str) -> Any:
    """Accept a clean distribution or a ``Diffused`` model (take its ``.dist``)."""
    if isinstance(dist, Diffused):
        return dist.dist
    if not hasattr(dist, "dim") or not hasattr(dist, "sample"):
        raise TypeError(
            f"{name} must be a distribution (or diffuse(distribution, schedule)), "
            f"got {type(dist).__name__}"
        )
    return dist


def as_mixture(dist: Any):
    """``(weights, means, covs)`` of ``dist`` as a Gaussian mixture, or ``None`` if it is not one
    (or would need more than ``MAX_COMPONENTS`` components): the family's own answer,
    :meth:`~composition_jax.distributions.Distribution.as_gaussian_mixture`."""
    if not isinstance(dist, Distribution):
        return None
    mix = dist.as_gaussian_mixture(MAX_COMPONENTS)
    return None if mix is None else (mix.weights, mix.means, mix.covs)


def moments(dist: Any):
    """Exact ``(mean (d,), cov (d, d))`` or ``None``."""
    mix = as_mixture(dist)
    if mix is None:
        return None
    w, m, c = mix
    mu = w @ m
    dm = m - mu[None, :]
    cov = jnp.einsum("k,kij->ij", w, c) + jnp.einsum("k,ki,kj->ij", w, dm, dm)
    return mu, cov


def fourth_moments(dist: Any):
    """Exact ``E[(x_j-mu_j)^2 (x_k-mu_k)^2]`` ``(d, d)`` or ``None``."""
    from .stats import _fourth_moments_mixture

    mix = as_mixture(dist)
    if mix is None:
        return None
    w, m, c = mix
    return _fourth_moments_mixture(w, m, c, w @ m)


def cdf_columns(dist: Any):
    """A function mapping ``x (n, d)`` to the exact per-coordinate marginal CDFs ``(n, d)``, or
    ``None`` when a coordinate's marginal is not a (mixture of) Gaussian(s)."""
    mix = as_mixture(dist)
    if mix is None:
        return None
    w, m, c = mix
    sd = jnp.sqrt(jnp.diagonal(c, axis1=1, axis2=2))  # (K, d)

    def cdf(x):
        z = (x[:, None, :] - m[None].astype(x.dtype)) / sd[None].astype(x.dtype)
        return jnp.einsum("nkd,k->nd", norm.cdf(z), w.astype(x.dtype))

    return cdf
