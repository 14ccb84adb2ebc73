r"""Gaussian and Gaussian-mixture laws with exact noised log-density, score and denoiser.

The noised law of ``N(m, S)`` under ``x_t = a x_0 + s eps`` is ``N(a m, a^2 S + s^2 I)``. With the
eigendecomposition ``S = U diag(lam) U^T`` (computed once, at construction) the noised covariance
is ``U diag(a^2 lam + s^2) U^T`` for every ``(a, s)``: every evaluation costs two ``d x d``
matvecs, never a factorization, and ``log det`` is a sum of ``log(a^2 lam + s^2)`` -- accurate for
tiny ``s``. With ``y = U^T (x - a m)`` and ``v = a^2 lam + s^2``:

* ``log p_t(x) = -1/2 sum(y^2 / v) - 1/2 sum(log v) - d/2 log(2 pi)``
* ``score = -U (y / v)``
* ``E[x_0 | x_t = x] = m + U (a lam y / v)``  (Gaussian posterior mean)

Mixtures combine per-component values with ``logsumexp`` responsibilities. The covariance
structure of a mixture (``covariance="full" | "diag" | "iso"``) is a static, user-visible option
that selects the code path; see :class:`GaussianMixture` for the diagonal fast paths and their
float32 error bounds (no catastrophic cancellation far from the origin nor for widely spread
means).

Low precision (float16 / bfloat16): eigendecompositions run in float32 and are stored in the
input dtype; every evaluation then runs in the input dtype.
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

__all__ = ["COVARIANCE_KINDS", "Gaussian", "GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)

COVARIANCE_KINDS = ("full", "diag", "iso")


def factorization_dtype(dtype: Any) -> Any:
    """The dtype in which LAPACK-backed factorizations (eigh, LU) run for data of ``dtype``:
    float16 / bfloat16 (no LAPACK kernels) are promoted to float32; wider types are kept."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype


def _check_cov(cov: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
    """Eigendecompose a (batch of) covariance(s); check symmetry and positive definiteness when
    concrete. Returns ``(eigvals, eigvecs)`` in ``cov``'s dtype (the decomposition itself runs in
    :func:`factorization_dtype`, float32 for float16 / bfloat16 input)."""
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
    evals, evecs = jnp.linalg.eigh(cov.astype(factorization_dtype(cov.dtype)))
    if concrete:
        lo = float(jnp.min(evals))
        if not lo > 0:
            raise ValueError(
                f"{name} must be positive definite; smallest eigenvalue {lo:.3g} "
                f"(shape {tuple(cov.shape)})"
            )
    return evals.astype(cov.dtype), evecs.astype(cov.dtype)


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


_ROW_SUM_MAX = 64  # most rows summed as row additions by _sum_rows


def _sum_rows(A):
    """``A.sum(0, keepdims=True)`` for ``A (K, n)``; for ``K <= _ROW_SUM_MAX`` as ``K - 1``
    additions of rows (element-wise, fused by XLA; a reduce over a small major axis is one more
    kernel on XLA:CPU, and the difference form takes ``d`` of them). The max and the normalizer
    keep ``jnp.max``/``jnp.sum``: written as rows they made the d = 2 sampler 2x slower."""
    if A.shape[0] > _ROW_SUM_MAX:
        return jnp.sum(A, 0, keepdims=True)
    acc = A[:1]
    for k in range(1, A.shape[0]):
        acc = acc + A[k:k + 1]
    return acc


def _shifted_exp_columns(logits):
    """``exp(logits - max_k logits)`` for ``logits (K, n)``, with the largest entry of each
    column exactly 1 and the others at most 1.

    XLA fuses the logits into each of their consumers, so the kernel that takes the max and the
    kernel that exponentiates may compute them with different rounding; far from every mean
    (logits ~ -1e12) that difference exceeds the range of ``exp`` and ``exp(l - max)`` gave
    ``inf`` or ``0`` for every component (NaN scores). Pinning the argmax's weight to 1 keeps the
    normalizer in ``[1, K]`` whatever the recomputation. (On XLA:CPU this form is also faster: the
    d = 2, K = 8 Euler-Maruyama / Heun sampler ran 1.4-1.9x the plain ``exp(l - max)``, 2 cores.)"""
    ks = jax.lax.stop_gradient(jnp.argmax(logits, 0))
    mx = jax.lax.stop_gradient(jnp.max(logits, 0, keepdims=True))
    top = jnp.arange(logits.shape[0])[:, None] == ks[None, :]
    # the top weight is 1 + (l - l): exactly 1, with the derivative of exp(l - max) there
    one = 1.0 + (logits - jax.lax.stop_gradient(logits))
    return jnp.where(top, one, jnp.exp(jnp.minimum(logits - mx, 0.0)))


def _cond(pred, true_fn, false_fn, operand):
    """``lax.cond``, or, for a concrete predicate (an eager call; also an eager ``vmap`` over
    the points, as the predicate depends only on the noise level), the branch it selects. An
    eager ``lax.cond`` traces and compiles its branches anew on every call (they close over that
    call's arrays); under ``jit`` the predicate is a tracer and this is ``lax.cond``."""
    if is_concrete(pred):
        return (true_fn if bool(pred) else false_fn)(operand)
    return jax.lax.cond(pred, true_fn, false_fn, operand)


def _sym(c):
    """Symmetrize (``A S A^T`` is symmetric only up to rounding)."""
    return 0.5 * (c + jnp.swapaxes(c, -1, -2))


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

    # Particle-minor layout: the same form as the rows path, column by column.
    columns_native = True

    def _noised_score_columns(self, X, a, s):
        """``-U ((U^T (X - a m)) / v)`` for ``X (d, n)``, ``v = a^2 lam + s^2``: the residuals
        ``X - a m`` are formed explicitly (no expanded quadratic, exact far from the origin);
        for ``d <= 8`` the two rotations are broadcast products (element-wise, fused)."""
        U = self.eigvecs
        v = a * a * self.eigvals + s * s
        Y = _small_matmul(U.T, X - a * self.mean[:, None])  # (d, n)
        return -_small_matmul(U, Y / v[:, None])

    def _gaussian_mixture(self, max_components, name):
        return GaussianMixture(jnp.ones((1,), self.mean.dtype), self.mean[None], self.cov[None])

    def _affine_image(self, matrix, shift):
        return Gaussian(matrix @ self.mean + shift, _sym(matrix @ self.cov @ matrix.T))


def _covariance_kind(covariance: Any, covs: jax.Array) -> str:
    """Resolve the ``covariance`` option: validate an explicit kind against concrete ``covs``,
    infer it from concrete ``covs`` when ``None``, and trust it (``None`` -> ``"full"``) when
    ``covs`` is traced."""
    if covariance is not None and covariance not in COVARIANCE_KINDS:
        raise ValueError(
            f"covariance must be None or one of {COVARIANCE_KINDS}, got {covariance!r}"
        )
    if not is_concrete(covs):
        return "full" if covariance is None else covariance
    c = np.asarray(covs)
    d = c.shape[-1]
    diagonal = bool(np.all(c[:, ~np.eye(d, dtype=bool)] == 0))
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    isotropic = diagonal and bool(np.all(diag == diag[:, :1]))
    found = "iso" if isotropic else "diag" if diagonal else "full"
    if covariance is None:
        return found
    if covariance == "diag" and not diagonal:
        off = float(np.max(np.abs(c[:, ~np.eye(d, dtype=bool)])))
        raise ValueError(
            f"covariance='diag' but covs (shape {tuple(c.shape)}) has non-zero off-diagonal "
            f"entries (max |off-diagonal| = {off:.3g})"
        )
    if covariance == "iso" and not isotropic:
        why = ("non-zero off-diagonal entries" if not diagonal else
               "diagonal entries that differ within a component")
        raise ValueError(
            f"covariance='iso' but covs (shape {tuple(c.shape)}) has {why}; an 'iso' mixture "
            "needs covs[k] = v_k I"
        )
    return covariance


# Expansion about the reference point is used (in the diagonal / isotropic paths with
# d > _SMALL_INNER) when its extra rounding term a^2 max_k |m_k - c|^2_{w_k} is at most
# _EXPANSION_SLACK * d (see GaussianMixture's docstring); otherwise the anchored form.
_EXPANSION_SLACK = 64.0


def _expansion_safe(means, center, evals) -> bool:
    """Whether the quadratic expanded about ``center`` (``None``: the origin) is within its
    floor at EVERY noise level: since ``a^2 / (a^2 lam + s^2) <= 1 / lam``,
    ``a^2 |m - c|^2_{w(t)} <= |m - c|^2_{1/lam}``. Decided on concrete values only (traced:
    ``False``)."""
    if not is_concrete(means, center, evals):
        return False
    mp = np.asarray(means, np.float64)
    if center is not None:
        mp = mp - np.asarray(center, np.float64)[None, :]
    ratio = np.sum(mp * mp / np.asarray(evals, np.float64), -1)
    return bool(np.max(ratio) <= _EXPANSION_SLACK * means.shape[-1])


@pytree_dataclass
class GaussianMixture(Distribution):
    r"""Mixture ``sum_k w_k N(means[k], covs[k])``; ``weights (K,)`` non-negative summing to 1,
    ``means (K, d)``, ``covs (K, d, d)``. Exact at every noise level via ``logsumexp``.

    Args:
      weights: ``(K,)`` non-negative, summing to 1.
      means: ``(K, d)``.
      covs: ``(K, d, d)`` symmetric positive definite.
      covariance: the covariance structure, a static option that selects the code path:
        ``"full"`` (eigendecompositions, ``O(K d^2)`` per point), ``"diag"`` (diagonal
        ``covs``) or ``"iso"`` (``covs[k] = v_k I``), both ``O(K d)`` with matmul /
        broadcast-product forms. ``None`` (default) infers it from concrete ``covs`` (exact zero
        off-diagonals, exactly equal diagonals); an explicit kind is validated against concrete
        ``covs`` (``ValueError``) and trusted when ``covs`` is traced, where ``None`` means
        ``"full"``. After construction the field holds the resolved kind, part of the pytree's
        static structure (never changed by tracing); ``marginal`` keeps it.

    Diagonal / isotropic paths (``v_k = a^2 lam_k + s^2``, ``w_k = 1 / v_k`` per coordinate).
    Everything is computed relative to a reference point ``c``: ``x' = x - a c``,
    ``m'_k = m_k - c``. ``c`` is the mean of the means (the leaf ``center``, set at
    construction), except when the means already lie within the expansion's safe ball about
    the origin (``max_k |m_k|^2_{1 / lam_k} <= 64 d``, decided from concrete parameters; see
    below): then ``c = 0`` and no subtraction runs. The quadratic
    ``Q_k = sum_j w_kj (x'_j - a m'_kj)^2`` is formed

    * for ``d <= 8``: as ``d`` unrolled broadcast products of explicit differences (exact form);
    * for ``d > 8`` with ``a^2 max_k |m'_k|^2_{w_k} <= 64 d`` (means spread at most ~8 sqrt(d)
      noised component standard deviations about ``c``): expanded as
      ``|x'|^2_w - 2 a x'.(w m'_k) + a^2 |m'_k|^2_w`` (matmuls, the fast path);
    * otherwise (``d > 8``, widely spread means): anchored at ``k*``, the best component of the
      expanded logits: with ``u = x' - a m'_{k*}``,
      ``Q_k = (u (u + 2 a m'_{k*})).w_k - 2 a u.(w m'_k) + a^2 |m'_{k*} - m'_k|^2_{w_k}`` (the
      last term from explicit differences, ``Q_{k*} = |u|^2_{w_{k*}}`` exactly): one more
      ``(n, d) x (d, K)`` matmul.

    Since ``a^2 / (a^2 lam + s^2) <= 1 / lam``, the expanded form is within its floor at every
    ``t`` when ``max_k |m'_k|^2_{1 / lam_k} <= 64 d``; that is decided once, at construction,
    from concrete parameters (private static flags, as is the choice ``c = 0``). Otherwise (or
    when the parameters are traced: then ``c`` is the mean of the means) a ``lax.cond`` on the
    scalar test above picks the form per call: only the branch taken runs (under ``vmap`` over
    points with a shared ``t`` the predicate is not batched). Replacing leaves after
    construction (``jax.tree.map``) keeps the flags: build a new mixture instead. The choices
    only trade speed within the bounds below (measured: no cost against the former
    unconditional expansion at the benchmark sizes).

    Float32 error bounds (backward stability; checked by ``tests/test_properties.py`` with
    ``C = 16`` against a float64 reference on the same inputs). With ``eps = 2^-23``,
    ``rho = |x| + a max_k |m_k|`` and per component ``k``: ``v_k`` the smallest eigenvalue of the
    noised covariance, ``kappa_k`` its condition number (1 for the diagonal kinds, whose
    eigenvalues are exact), the quadratic ``Q_k``, responsibility ``r_k``, score
    ``s_k = -Sigma_k^{-1} (x - a m_k)``, posterior mean ``D_k`` and
    ``tau_k = kappa_k (Q_k + d) + 2 sqrt(Q_k) rho / sqrt(v_k) + d (1 + max|log v|) + |log w_k|``
    (``+ 64 d`` for the expanded form, its floor):

    * ``|log_prob error| <= C eps (sum_k r_k tau_k + |log p|)``;
    * ``|score error| <= C eps (sum_k r_k (kappa_k |s_k| + rho / v_k + |s_k - s| tau_k) + |s|)``;
    * ``|denoise error| <= C eps (sum_k r_k (max|m| + kappa_k g_k rho + |D_k - D| tau_k) + |D|)``
      with ``g_k = max a lam / (a^2 lam + s^2)``.

    Each term is the change of the exact value when ``x``, the means or the covariances move by
    ``eps`` relative (the floor excepted), so the bounds hold whatever the offset of the data
    from the origin and the spread of the means relative to the component scale (the old
    expanded form lost ``eps |x|^2 / v``: hundreds of nats for means 1e4 apart and variance
    1e-2). The full path forms ``x - a m_k`` directly.
    """

    weights: Any
    means: Any
    covs: Any
    covariance: str | None = static_field(default=None)
    log_weights: Any = dataclasses.field(init=False, repr=False)
    eigvals: Any = dataclasses.field(init=False, repr=False)
    eigvecs: Any = dataclasses.field(init=False, repr=False)
    center: Any = dataclasses.field(init=False, repr=False)
    # Diagonal kinds: whether to work relative to `center` (False when the means are already
    # within the expansion's safe ball about the origin: then c = 0 and no subtraction runs);
    # d > 8: whether the expanded quadratic may exceed its error floor at some t (then a
    # lax.cond picks expanded / anchored per call). Both decided on concrete parameters.
    _centered: bool = static_field(init=False, repr=False, default=True)
    _guarded: bool = static_field(init=False, repr=False, default=False)

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
        kind = _covariance_kind(self.covariance, covs)
        if kind == "full":
            evals, evecs = _check_cov(covs, "covs")
        else:
            evals = jnp.diagonal(covs, axis1=-2, axis2=-1)
            evecs = None
            if is_concrete(evals):
                ev = np.asarray(evals, np.float64)
                if not (np.all(np.isfinite(ev)) and float(np.min(ev)) > 0):
                    raise ValueError(
                        f"covs must be positive definite; smallest diagonal entry "
                        f"{float(np.min(ev)):.3g} (shape {tuple(covs.shape)}, "
                        f"covariance={kind!r})"
                    )
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covs", covs)
        object.__setattr__(self, "covariance", kind)
        object.__setattr__(self, "log_weights", jnp.log(w))
        object.__setattr__(self, "eigvals", evals)
        object.__setattr__(self, "eigvecs", evecs)
        center = jnp.mean(means, 0)
        centered = kind != "full" and not _expansion_safe(means, None, evals)
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "_centered", centered)
        object.__setattr__(self, "_guarded", kind != "full" and d > _SMALL_INNER and not (
            _expansion_safe(means, center if centered else None, evals)))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def diagonal(self) -> bool:
        """Whether the covariances are diagonal (``covariance`` is ``"diag"`` or ``"iso"``)."""
        return self.covariance != "full"

    @property
    def isotropic(self) -> bool:
        """Whether ``covs[k] = v_k I`` (``covariance == "iso"``)."""
        return self.covariance == "iso"

    # ------------------------------------------------------------------ diagonal / isotropic
    # Per-call constants: offsets m' = m - c, w = 1 / v with v (K, d) [diag] or (K,) [iso], and
    # log det = sum_j log v_kj (K,).
    def _diag_consts(self, a, s):
        mp = self.means - self.center[None, :] if self._centered else self.means
        if self.isotropic:
            v = a * a * self.eigvals[:, 0] + s * s  # (K,)
            logdet = self.dim * jnp.log(v)
        else:
            v = a * a * self.eigvals + s * s  # (K, d)
            logdet = jnp.sum(jnp.log(v), -1)
        w = 1.0 / v
        return mp, w, logdet

    def _base_logits(self, w):
        """The logits without ``-Q/2``, from ``w = 1 / v``."""
        logdet = -self.dim * jnp.log(w) if self.isotropic else -jnp.sum(jnp.log(w), -1)
        return self.log_weights - 0.5 * (logdet + self.dim * _LOG_2PI)

    def _expansion_ok(self, mp, w, a):
        """Scalar: the expanded quadratic's extra error term is within its floor (see class
        docstring)."""
        sq = mp * mp
        spread = jnp.sum(sq, -1) * w if self.isotropic else jnp.sum(sq * w, -1)
        return a * a * jnp.max(spread) <= _EXPANSION_SLACK * self.dim

    def _quad_rows(self, xp, a, mp, w, form):
        """``Q_k = sum_j w_kj (x'_j - a m'_kj)^2`` for one point ``xp = x - a c`` (d,) -> (K,),
        in ``form`` "difference", "expanded" or "anchored" (see the class docstring)."""
        iso = self.isotropic
        if form == "difference":
            # d broadcast products of explicit differences (element-wise under vmap)
            q = None
            for j in range(self.dim):
                r = xp[j] - a * mp[:, j]
                t = r * r if iso else w[:, j] * (r * r)
                q = t if q is None else q + t
            return q * w if iso else q
        if iso:
            q0 = (jnp.dot(xp, xp) - 2.0 * a * (xp @ mp.T) + a * a * jnp.sum(mp * mp, -1)) * w
        else:
            mw = mp * w
            q0 = (xp * xp) @ w.T - 2.0 * a * (xp @ mw.T) + a * a * jnp.sum(mp * mw, -1)
        if form == "expanded":
            return q0
        # anchored at the best component of the expanded logits
        ks = jnp.argmax(self._base_logits(w) - 0.5 * q0)
        mk = mp[ks]
        u = xp - a * mk
        delta = mk[None, :] - mp  # (K, d), explicit differences
        if iso:
            # u.m'_k* and u.m'_k from the same product: exactly zero at k = k*
            um = u @ mp.T
            dd = jnp.sum(delta * delta, -1)
            return (jnp.dot(u, u) + 2.0 * a * (um[ks] - um) + a * a * dd) * w
        dd = jnp.sum(w * delta * delta, -1)
        q = (u * (u + 2.0 * a * mk)) @ w.T - 2.0 * a * (u @ (mp * w).T) + a * a * dd
        # the anchor's own term exactly: Q_k* = |u|^2_{w_k*}
        return jnp.where(jnp.arange(q.shape[0]) == ks, jnp.dot(w[ks], u * u), q)

    def _diag_eval(self, x, a, s, finish):
        """``finish(logits, xp, mp, w)`` for one point ``x`` (diagonal kinds), the quadratic in
        the form the class docstring prescribes: differences for ``d <= 8``; for ``d > 8`` the
        expanded form, or, when the mixture is ``_guarded``, a ``lax.cond`` on a scalar between
        the expanded and the anchored forms (each branch runs ``finish``, so XLA fuses within
        it, and only the branch taken runs)."""
        mp, w, logdet = self._diag_consts(a, s)
        xp = x - a * self.center if self._centered else x

        def branch(form):
            def f(xp):
                q = self._quad_rows(xp, a, mp, w, form)
                logits = self.log_weights - 0.5 * (q + logdet + self.dim * _LOG_2PI)
                return finish(logits, xp, mp, w)
            return f

        if self.dim <= _SMALL_INNER:
            return branch("difference")(xp)
        if not self._guarded:
            return branch("expanded")(xp)
        return _cond(self._expansion_ok(mp, w, a), branch("expanded"), branch("anchored"), xp)

    @staticmethod
    def _unnormalized(logits):
        """``e = exp(logits - max)`` and ``Z = sum(e)`` (as a product with ones: sums over a
        small axis are slow on XLA:CPU, a matvec is not)."""
        e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits)))
        return e, e @ jnp.ones_like(e)

    def _diag_score(self, logits, xp, mp, w, a):
        e, z = self._unnormalized(logits)
        if self.isotropic:
            ew = e * w
            return (a * (ew @ mp) - xp * (ew @ jnp.ones_like(ew))) / z
        return (a * (e @ (mp * w)) - xp * (e @ w)) / z

    def _diag_denoise(self, logits, xp, mp, w, a):
        # E[x0 | x, k] = m_k + a lam_k w_k (x - a m_k) = c + m'_k + a lam_k w_k (x' - a m'_k)
        r = jax.nn.softmax(logits)
        if self.isotropic:
            lw = r * self.eigvals[:, 0] * w
            out = r @ mp + a * xp * jnp.sum(lw) - a * a * (lw @ mp)
        else:
            lw = self.eigvals * w
            out = r @ mp + a * xp * (r @ lw) - a * a * (r @ (lw * mp))
        return out + self.center if self._centered else out

    # ------------------------------------------------------------------ full covariances
    def _terms(self, x, a, s):
        y, v = _component_terms(x, a, s, self.means, self.eigvals, self.eigvecs)
        return y, v, self.log_weights + _component_log_probs(y, v)

    def _logits(self, x, a, s):
        if self.diagonal:
            return self._diag_eval(x, a, s, lambda lg, *_: lg)
        return self._terms(x, a, s)[2]

    def _noised_log_prob(self, x, a, s):
        return logsumexp(self._logits(x, a, s))

    def responsibilities(self, x, a, s):
        """Posterior component probabilities ``P(k | x_t = x)`` under the noised law."""
        return jax.nn.softmax(self._logits(x, a, s))

    def _noised_log_prob_and_score(self, x, a, s):
        if self.diagonal:
            return self._diag_eval(x, a, s, lambda lg, xp, mp, w: (
                logsumexp(lg), self._diag_score(lg, xp, mp, w, a)))
        y, v, logits = self._terms(x, a, s)
        r = jax.nn.softmax(logits)
        return logsumexp(logits), r @ _component_scores(y, v, self.eigvecs)

    def _noised_score(self, x, a, s):
        if self.diagonal:
            return self._diag_eval(
                x, a, s, lambda lg, xp, mp, w: self._diag_score(lg, xp, mp, w, a))
        return self._noised_log_prob_and_score(x, a, s)[1]

    # Particle-minor ("columns") layout for the samplers: X is (d, n), one particle per column.
    # The (K, n) logits then have the particle axis contiguous, so every element-wise op and the
    # softmax over components (a reduction over the MAJOR axis) vectorize over particles; on
    # XLA:CPU this is 2-3x faster than the particle-major form at small d (benchmarks/).
    @property
    def columns_native(self) -> bool:
        """Declared fact (see :class:`Distribution`): the diagonal kinds implement
        :meth:`_noised_score_columns` as a batched particle-minor computation."""
        return self.diagonal

    def _quad_columns(self, Xp, a, mp, w, form):
        """``Q (K, n)`` for ``Xp = X - a c`` ``(d, n)`` (same forms as :meth:`_quad_rows`)."""
        iso = self.isotropic
        if form == "difference":
            q = None
            for j in range(self.dim):
                r = Xp[j:j + 1] - (a * mp[:, j])[:, None]  # (K, n)
                t = r * r if iso else w[:, j:j + 1] * (r * r)
                q = t if q is None else q + t
            return q * w[:, None] if iso else q
        if iso:
            xsq = jnp.sum(Xp * Xp, 0, keepdims=True)
            q0 = (xsq - 2.0 * a * (mp @ Xp) + (a * a * jnp.sum(mp * mp, -1))[:, None]) * w[:, None]
        else:
            mw = mp * w
            q0 = w @ (Xp * Xp) - 2.0 * a * (mw @ Xp) + (a * a * jnp.sum(mp * mw, -1))[:, None]
        if form == "expanded":
            return q0
        ks = jnp.argmax(self._base_logits(w)[:, None] - 0.5 * q0, 0)  # (n,)
        Mk = jnp.take(mp.T, ks, axis=1)  # (d, n)
        U = Xp - a * Mk
        delta = mp[:, None, :] - mp[None, :, :]  # (K, K, d): m'_l - m'_k
        if iso:
            um = mp @ U  # (K, n)
            umk = jnp.take_along_axis(um, ks[None, :], 0)  # (1, n)
            dd = jnp.sum(delta * delta, -1)  # symmetric
            usq = jnp.sum(U * U, 0, keepdims=True)
            return (usq + 2.0 * a * (umk - um) + a * a * jnp.take(dd, ks, axis=1)) * w[:, None]
        dd = jnp.sum(w[None, :, :] * delta * delta, -1)  # dd[l, k]
        q = (w @ (U * (U + 2.0 * a * Mk)) - 2.0 * a * ((mp * w) @ U)
             + a * a * jnp.take(dd.T, ks, axis=1))
        exact = jnp.sum(jnp.take(w.T, ks, axis=1) * (U * U), 0, keepdims=True)
        return jnp.where(jnp.arange(q.shape[0])[:, None] == ks[None, :], exact, q)

    def _noised_score_columns(self, X, a, s):
        """Score of the noised law for ``X (d, n)`` (diagonal / isotropic components)."""
        mp, w, logdet = self._diag_consts(a, s)
        base = self.log_weights - 0.5 * (logdet + self.dim * _LOG_2PI)
        Xp = X - (a * self.center)[:, None] if self._centered else X

        def branch(form):
            def f(Xp):
                logits = base[:, None] - 0.5 * self._quad_columns(Xp, a, mp, w, form)
                e = _shifted_exp_columns(logits)
                z = jnp.sum(e, 0, keepdims=True)
                if form == "difference":
                    # -sum_k r_k w_kj (x'_j - a m'_kj) from explicit differences; for K <= 8 the
                    # sum over components is written as K - 1 row additions (element-wise, so
                    # XLA fuses all d outputs into one loop instead of d reduce kernels: 1.1-1.5x
                    # the whole d = 2, K = 8 sampler on 2 CPU cores)
                    ew = e * w[:, None] if self.isotropic else None
                    out = []
                    for j in range(self.dim):
                        r = Xp[j:j + 1] - (a * mp[:, j])[:, None]
                        wj = ew if self.isotropic else e * w[:, j:j + 1]
                        out.append(-_sum_rows(wj * r))
                    return jnp.concatenate(out, 0) / z
                if self.isotropic:
                    ew = e * w[:, None]
                    return (a * _small_matmul(mp.T, ew) - Xp * jnp.sum(ew, 0, keepdims=True)) / z
                return (a * _small_matmul((mp * w).T, e) - Xp * _small_matmul(w.T, e)) / z
            return f

        if self.dim <= _SMALL_INNER:
            return branch("difference")(Xp)
        if not self._guarded:
            return branch("expanded")(Xp)
        return _cond(self._expansion_ok(mp, w, a), branch("expanded"), branch("anchored"), Xp)

    def _noised_denoise(self, x, a, s):
        if self.diagonal:
            return self._diag_eval(
                x, a, s, lambda lg, xp, mp, w: self._diag_denoise(lg, xp, mp, w, a))
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

    def _sample(self, key, n):
        keys = per_sample_keys(key, n)
        if n == 0:
            return jnp.zeros((0, self.dim), self.means.dtype)
        if self.diagonal:
            return jax.vmap(self._sample_one)(keys)
        return jax.lax.map(self._sample_one, keys, batch_size=min(n, _sample_chunk(self.dim)))

    def marginal(self, indices) -> GaussianMixture:
        idx = np.asarray(check_indices(indices, self.dim))
        return GaussianMixture(self.weights, self.means[:, idx], self.covs[:, idx][:, :, idx],
                               covariance=self.covariance)

    def _gaussian_mixture(self, max_components, name):
        return self

    def _affine_image(self, matrix, shift):
        return GaussianMixture(
            self.weights,
            self.means @ matrix.T + shift[None, :],
            _sym(jnp.einsum("ij,kjl,ml->kim", matrix, self.covs, matrix)),
        )

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """Mean ``sum_k w_k m_k`` and covariance (law of total covariance)."""
        m = self.weights @ self.means
        dm = self.means - m[None, :]
        cov = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, dm, dm
        )
        return m, cov
