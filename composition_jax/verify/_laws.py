"""Exact facts about the closed-form laws used by the verification module.

``as_mixture`` turns a Gaussian, Gaussian mixture, Product of those, or a LinearPushforward with a
closed form into mixture parameters ``(weights (K,), means (K, d), covs (K, d, d))`` (a Product's
components are the Cartesian product of its factors' components). From these: exact mean and
covariance, exact fourth central moments, and exact 1-D marginal CDFs.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from ..distributions import Gaussian, GaussianMixture, LinearPushforward, Product
from ..distributions.diffuse import Diffused

__all__ = ["unwrap", "as_mixture", "moments", "fourth_moments", "cdf_columns", "MAX_COMPONENTS"]

MAX_COMPONENTS = 4096


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
    (or would need more than ``MAX_COMPONENTS`` components)."""
    if isinstance(dist, Gaussian):
        return jnp.ones((1,), dist.mean.dtype), dist.mean[None], dist.cov[None]
    if isinstance(dist, GaussianMixture):
        return dist.weights, dist.means, dist.covs
    if isinstance(dist, LinearPushforward):
        return as_mixture(dist.closed) if dist.closed is not None else None
    if isinstance(dist, Product):
        parts = [as_mixture(f) for f in dist.factors]
        if any(p is None for p in parts):
            return None
        sizes = [p[0].shape[0] for p in parts]
        total = int(np.prod(sizes))
        if total > MAX_COMPONENTS:
            return None
        dt = jnp.result_type(*[p[1].dtype for p in parts])
        grids = np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij")
        combos = [g.reshape(-1) for g in grids]  # component index of each factor, (total,)
        d = dist.dim
        w = np.ones((total,), np.float64)
        mean = np.zeros((total, d), np.float64)
        cov = np.zeros((total, d, d), np.float64)
        for (pw, pm, pc), blk, idx in zip(parts, dist.blocks, combos):
            ix = np.asarray(blk)
            w = w * np.asarray(pw, np.float64)[idx]
            mean[:, ix] = np.asarray(pm, np.float64)[idx]
            cov[:, ix[:, None], ix[None, :]] = np.asarray(pc, np.float64)[idx]
        return jnp.asarray(w, dt), jnp.asarray(mean, dt), jnp.asarray(cov, dt)
    return None


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
