r"""Gaussian and Gaussian-mixture laws with exact noised log-density, score and denoiser.

The noised law of ``N(m, S)`` under ``x_t = a x_0 + s eps`` is ``N(a m, a^2 S + s^2 I)``. With the
eigendecomposition ``S = U diag(lam) U^T`` (computed once, at construction) the noised covariance
is ``U diag(a^2 lam + s^2) U^T`` for every ``(a, s)``: every evaluation costs two ``d x d``
matvecs, never a factorization, and ``log det`` is a sum of ``log(a^2 lam + s^2)`` -- accurate for
tiny ``s``. With ``y = U^T (x - a m)`` and ``v = a^2 lam + s^2``:

* ``log p_t(x) = -1/2 sum(y^2 / v) - 1/2 sum(log v) - d/2 log(2 pi)``
* ``score = -U (y / v)``
* ``E[x_0 | x_t = x] = m + U (a lam y / v)``  (Gaussian posterior mean)

Mixtures combine per-component values with ``logsumexp`` responsibilities.
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
from .._pytree import pytree_dataclass, static_field
from .base import Distribution, check_indices, per_sample_keys

__all__ = ["Gaussian", "GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _check_cov(cov: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
    """Eigendecompose a (batch of) covariance(s); check symmetry and positive definiteness when
    concrete. Returns ``(eigvals, eigvecs)``."""
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"{name} must be square, got shape {tuple(cov.shape)}")
    concrete = is_concrete(cov)
    if concrete:
        c = np.asarray(cov, dtype=np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError(f"{name} has non-finite entries")
        scale = max(1.0, float(np.max(np.abs(c))))
        eps = float(jnp.finfo(cov.dtype).eps)
        asym = float(np.max(np.abs(c - np.swapaxes(c, -1, -2)))) if c.size else 0.0
        if asym > 100 * eps * scale:
            raise ValueError(f"{name} must be symmetric; max |C - C^T| = {asym:.3g}")
    evals, evecs = jnp.linalg.eigh(cov)
    if concrete:
        lo = float(jnp.min(evals))
        if not lo > 0:
            raise ValueError(
                f"{name} must be positive definite; smallest eigenvalue {lo:.3g} "
                f"(shape {tuple(cov.shape)})"
            )
    return evals, evecs


def _component_terms(x, a, s, means, evals, evecs):
    """Per-component ``y = U^T (x - a m)`` and ``v = a^2 lam + s^2``; shapes ``(K, d)``."""
    r = x[None, :] - a * means
    y = jnp.einsum("kij,ki->kj", evecs, r)
    v = a * a * evals + s * s
    return y, v


def _component_log_probs(y, v):
    d = y.shape[-1]
    return -0.5 * (jnp.sum(y * y / v, -1) + jnp.sum(jnp.log(v), -1) + d * _LOG_2PI)


def _component_scores(y, v, evecs):
    return -jnp.einsum("kij,kj->ki", evecs, y / v)


def _component_denoise(y, v, a, means, evals, evecs):
    return means + jnp.einsum("kij,kj->ki", evecs, a * evals * y / v)


_SMALL_INNER = 8  # largest inner dimension written as broadcast products


def _small_matmul(A, X):
    """``A @ X`` for ``A (p, q)``, ``X (q, n)``; with a small inner dimension ``q`` as a sum of
    ``q`` broadcast products (element-wise, fused by XLA) instead of a dot call."""
    q = A.shape[1]
    if q > _SMALL_INNER:
        return A @ X
    out = A[:, :1] * X[:1]
    for i in range(1, q):
        out = out + A[:, i:i + 1] * X[i:i + 1]
    return out


def _sample_chunk(n_dim: int) -> int:
    """Batch size for gathered ``d x d`` factors: keeps the gather below ~16M floats."""
    return max(1, min(4096, (1 << 24) // max(1, n_dim * n_dim)))


@pytree_dataclass
class Gaussian(Distribution):
    """Multivariate normal ``N(mean, cov)``; ``mean (d,)``, ``cov (d, d)`` symmetric positive
    definite. Exact at every noise level (see module docstring)."""

    mean: Any
    cov: Any
    eigvals: Any = dataclasses.field(init=False, repr=False)
    eigvecs: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        mean = as_float_array(self.mean, "mean", ndim=1)
        cov = as_float_array(self.cov, "cov")
        dt = jnp.result_type(mean.dtype, cov.dtype)
        mean, cov = mean.astype(dt), cov.astype(dt)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"cov must be a square (d, d) matrix, got shape {tuple(cov.shape)}")
        if cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(
                f"cov must have shape ({mean.shape[0]}, {mean.shape[0]}) to match mean "
                f"{tuple(mean.shape)}, got {tuple(cov.shape)}"
            )
        evals, evecs = _check_cov(cov, "cov")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "eigvals", evals)
        object.__setattr__(self, "eigvecs", evecs)

    @property
    def dim(self) -> int:
        return self.mean.shape[-1]

    def _terms(self, x, a, s):
        return _component_terms(x, a, s, self.mean[None], self.eigvals[None], self.eigvecs[None])

    def _noised_log_prob(self, x, a, s):
        y, v = self._terms(x, a, s)
        return _component_log_probs(y, v)[0]

    def _noised_score(self, x, a, s):
        y, v = self._terms(x, a, s)
        return _component_scores(y, v, self.eigvecs[None])[0]

    def _noised_log_prob_and_score(self, x, a, s):
        y, v = self._terms(x, a, s)
        return _component_log_probs(y, v)[0], _component_scores(y, v, self.eigvecs[None])[0]

    def _noised_denoise(self, x, a, s):
        y, v = self._terms(x, a, s)
        return _component_denoise(
            y, v, a, self.mean[None], self.eigvals[None], self.eigvecs[None]
        )[0]

    def _sample_one(self, key):
        z = jax.random.normal(key, (self.dim,), self.mean.dtype)
        return self.mean + self.eigvecs @ (jnp.sqrt(self.eigvals) * z)

    def marginal(self, indices) -> Gaussian:
        idx = np.asarray(check_indices(indices, self.dim))
        return Gaussian(self.mean[idx], self.cov[np.ix_(idx, idx)])

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """Mean and covariance."""
        return self.mean, self.cov

    def noised_moments(self, alpha, sigma) -> tuple[jax.Array, jax.Array]:
        """Mean ``alpha m`` and covariance ``alpha^2 S + sigma^2 I`` of the noised law."""
        a = jnp.asarray(alpha, self.mean.dtype)
        s = jnp.asarray(sigma, self.mean.dtype)
        return a * self.mean, a * a * self.cov + s * s * jnp.eye(self.dim, dtype=self.mean.dtype)


@pytree_dataclass
class GaussianMixture(Distribution):
    """Mixture ``sum_k w_k N(means[k], covs[k])``; ``weights (K,)`` non-negative summing to 1,
    ``means (K, d)``, ``covs (K, d, d)``. Exact at every noise level via ``logsumexp``."""

    weights: Any
    means: Any
    covs: Any
    log_weights: Any = dataclasses.field(init=False, repr=False)
    eigvals: Any = dataclasses.field(init=False, repr=False)
    eigvecs: Any = dataclasses.field(init=False, repr=False)
    diagonal: bool = static_field(init=False, repr=False, default=False)
    isotropic: bool = static_field(init=False, repr=False, default=False)

    def __post_init__(self):
        w = as_float_array(self.weights, "weights", ndim=1)
        means = as_float_array(self.means, "means", ndim=2)
        covs = as_float_array(self.covs, "covs", ndim=3)
        dt = jnp.result_type(w.dtype, means.dtype, covs.dtype)
        w, means, covs = w.astype(dt), means.astype(dt), covs.astype(dt)
        k, d = means.shape
        if covs.shape[-1] != covs.shape[-2]:
            raise ValueError(
                f"covs must hold square (d, d) matrices, got shape {tuple(covs.shape)}"
            )
        if w.shape[0] != k:
            raise ValueError(
                f"weights has shape {tuple(w.shape)} but means has {k} components "
                f"(shape {tuple(means.shape)})"
            )
        if covs.shape != (k, d, d):
            raise ValueError(
                f"covs must have shape ({k}, {d}, {d}) to match means {tuple(means.shape)}, "
                f"got {tuple(covs.shape)}"
            )
        if k == 0:
            raise ValueError("a GaussianMixture needs at least one component")
        if is_concrete(w):
            wn = np.asarray(w, np.float64)
            if np.any(wn < 0) or not np.all(np.isfinite(wn)):
                raise ValueError(f"weights must be finite and non-negative, got {wn.tolist()}")
            tol = max(1e-5, 10 * k * float(jnp.finfo(dt).eps))
            if abs(wn.sum() - 1.0) > tol:
                raise ValueError(f"weights must sum to 1, got sum {wn.sum():.8g}")
        diagonal = is_concrete(covs) and bool(
            np.all(np.asarray(covs)[:, ~np.eye(d, dtype=bool)] == 0)
        )
        if diagonal:
            evals = jnp.diagonal(covs, axis1=-2, axis2=-1)
            if not float(jnp.min(evals)) > 0:
                raise ValueError(
                    f"covs must be positive definite; smallest diagonal entry "
                    f"{float(jnp.min(evals)):.3g} (shape {tuple(covs.shape)})"
                )
            evecs = jnp.broadcast_to(jnp.eye(d, dtype=dt), (k, d, d))
        else:
            evals, evecs = _check_cov(covs, "covs")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covs", covs)
        object.__setattr__(self, "log_weights", jnp.log(w))
        object.__setattr__(self, "eigvals", evals)
        object.__setattr__(self, "eigvecs", evecs)
        object.__setattr__(self, "diagonal", diagonal)
        isotropic = diagonal and bool(
            np.all(np.asarray(evals) == np.asarray(evals)[:, :1])
        )
        object.__setattr__(self, "isotropic", isotropic)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # Diagonal covariances (flag set at construction when covs are concrete and diagonal) use a
    # matmul form: with W = 1/v (K, d) and A = m * W,
    #   sum_j (x_j - a m_kj)^2 / v_kj = x^2 . W_k - 2 a x . A_k + a^2 (m_k . A_k),
    # so the per-particle work is a few (K x d) matrix-vector products, which vmap turns into
    # matrix-matrix products. Written as ``x @ M.T`` (not ``M @ x``) so the batched result has the
    # particle axis first, and with the softmax normalizer and responsibility sums as products
    # with a ones vector: on XLA:CPU this is 3-4x faster than the naive per-particle form
    # (measured in benchmarks/; sums over a small axis are slow there). The expansion loses
    # ~eps |x|^2 / v in the logits (not in the score's linear part); it is used for the diagonal
    # case only, which is where large K d (benchmarks) makes it matter.
    def _iso_logits(self, x, a, s):
        # isotropic components: v_k scalar, two (K x d) matvecs per particle in all.
        v = a * a * self.eigvals[:, 0] + s * s
        w = 1.0 / v
        d = self.dim
        msq = jnp.sum(self.means * self.means, -1)
        quad = (jnp.dot(x, x) - 2.0 * a * (x @ self.means.T) + a * a * msq) * w
        logits = self.log_weights - 0.5 * (quad + d * jnp.log(v) + d * _LOG_2PI)
        return logits, w

    def _diag_logits(self, x, a, s):
        v = a * a * self.eigvals + s * s
        w = 1.0 / v
        mw = self.means * w
        d = self.dim
        quad = (x * x) @ w.T - 2.0 * a * (x @ mw.T) + a * a * jnp.sum(self.means * mw, -1)
        logits = self.log_weights - 0.5 * (quad + jnp.sum(jnp.log(v), -1) + d * _LOG_2PI)
        return logits, w, mw

    @staticmethod
    def _unnormalized(logits):
        """``e = exp(logits - max)`` and ``Z = sum(e)`` (as a product with ones; see above)."""
        e = jnp.exp(logits - jnp.max(logits))
        return e, e @ jnp.ones_like(e)

    def _terms(self, x, a, s):
        y, v = _component_terms(x, a, s, self.means, self.eigvals, self.eigvecs)
        return y, v, self.log_weights + _component_log_probs(y, v)

    def _logits(self, x, a, s):
        if self.isotropic:
            return self._iso_logits(x, a, s)[0]
        if self.diagonal:
            return self._diag_logits(x, a, s)[0]
        return self._terms(x, a, s)[2]

    def _noised_log_prob(self, x, a, s):
        return logsumexp(self._logits(x, a, s))

    def responsibilities(self, x, a, s):
        """Posterior component probabilities ``P(k | x_t = x)`` under the noised law."""
        return jax.nn.softmax(self._logits(x, a, s))

    def _noised_log_prob_and_score(self, x, a, s):
        if self.isotropic:
            logits, w = self._iso_logits(x, a, s)
            e, z = self._unnormalized(logits)
            ew = e * w
            score = (a * (ew @ self.means) - x * (ew @ jnp.ones_like(ew))) / z
            return logsumexp(logits), score
        if self.diagonal:
            logits, w, mw = self._diag_logits(x, a, s)
            e, z = self._unnormalized(logits)
            return logsumexp(logits), (a * (e @ mw) - x * (e @ w)) / z
        y, v, logits = self._terms(x, a, s)
        r = jax.nn.softmax(logits)
        return logsumexp(logits), r @ _component_scores(y, v, self.eigvecs)

    def _noised_score(self, x, a, s):
        return self._noised_log_prob_and_score(x, a, s)[1]

    # Particle-minor ("columns") layout for the samplers: X is (d, n), one particle per column.
    # The (K, n) logits then have the particle axis contiguous, so every element-wise op and the
    # softmax over components (a reduction over the MAJOR axis) vectorize over particles; on
    # XLA:CPU this is 2-3x faster than the particle-major form at small d (benchmarks/).
    @property
    def _columns_native(self) -> bool:
        return self.diagonal

    def _noised_score_columns(self, X, a, s):
        """Score of the noised law for ``X (d, n)`` (diagonal / isotropic components)."""
        d = self.dim
        if self.isotropic:
            v = a * a * self.eigvals[:, 0] + s * s  # (K,)
            w = 1.0 / v
            msq = jnp.sum(self.means * self.means, -1)
            xsq = jnp.sum(X * X, 0, keepdims=True)  # (1, n)
            quad = (xsq - 2.0 * a * _small_matmul(self.means, X) + (a * a * msq)[:, None]) * w[:, None]
            logits = (self.log_weights - 0.5 * (d * jnp.log(v) + d * _LOG_2PI))[:, None] - 0.5 * quad
            e = jnp.exp(logits - jnp.max(logits, 0, keepdims=True))
            ew = e * w[:, None]
            z = jnp.sum(e, 0, keepdims=True)
            return (a * _small_matmul(self.means.T, ew) - X * jnp.sum(ew, 0, keepdims=True)) / z
        v = a * a * self.eigvals + s * s  # (K, d)
        w = 1.0 / v
        mw = self.means * w
        quad = (_small_matmul(w, X * X) - 2.0 * a * _small_matmul(mw, X)
                + (a * a * jnp.sum(self.means * mw, -1))[:, None])
        logits = (self.log_weights - 0.5 * (jnp.sum(jnp.log(v), -1) + d * _LOG_2PI))[:, None]
        logits = logits - 0.5 * quad
        e = jnp.exp(logits - jnp.max(logits, 0, keepdims=True))
        z = jnp.sum(e, 0, keepdims=True)
        return (a * _small_matmul(mw.T, e) - X * _small_matmul(w.T, e)) / z

    def _noised_denoise(self, x, a, s):
        if self.isotropic:
            logits, w = self._iso_logits(x, a, s)
            r = jax.nn.softmax(logits)
            lw = r * self.eigvals[:, 0] * w
            return r @ self.means + a * x * jnp.sum(lw) - a * a * (lw @ self.means)
        if self.diagonal:
            logits, w, mw = self._diag_logits(x, a, s)
            r = jax.nn.softmax(logits)
            # E[x0 | x, k] = m_k + a lam_k w_k (x - a m_k)
            lw = self.eigvals * w
            return r @ self.means + a * x * (r @ lw) - a * a * (r @ (lw * self.means))
        y, v, logits = self._terms(x, a, s)
        r = jax.nn.softmax(logits)
        return r @ _component_denoise(y, v, a, self.means, self.eigvals, self.eigvecs)

    def _sample_one(self, key):
        kc, kz = jax.random.split(key)
        c = jax.random.categorical(kc, self.log_weights)
        z = jax.random.normal(kz, (self.dim,), self.means.dtype)
        if self.diagonal:
            return self.means[c] + jnp.sqrt(self.eigvals[c]) * z
        return self.means[c] + self.eigvecs[c] @ (jnp.sqrt(self.eigvals[c]) * z)

    def sample(self, key, n):
        keys = per_sample_keys(key, n)
        if n == 0:
            return jnp.zeros((0, self.dim), self.means.dtype)
        if self.diagonal:
            return jax.vmap(self._sample_one)(keys)
        return jax.lax.map(self._sample_one, keys, batch_size=min(n, _sample_chunk(self.dim)))

    def marginal(self, indices) -> GaussianMixture:
        idx = np.asarray(check_indices(indices, self.dim))
        return GaussianMixture(self.weights, self.means[:, idx], self.covs[:, idx][:, :, idx])

    def component(self, k: int) -> Gaussian:
        return Gaussian(self.means[k], self.covs[k])

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """Mean ``sum_k w_k m_k`` and covariance (law of total covariance)."""
        m = self.weights @ self.means
        dm = self.means - m[None, :]
        cov = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, dm, dm
        )
        return m, cov
