r"""Linear pushforward ``y = A x + b`` of a base law, ``A`` invertible.

At ``t = 0``: ``log p_Y(y) = log p_X(A^{-1}(y - b)) - log|det A|`` (LU factorization computed once).

Noised law (``y_t = a y_0 + s eps``), exact in these cases:

* base Gaussian, mixture or ``Empirical``: the pushforward is again one (``A m + b``,
  ``A S A^T``; points ``A p_j + b``), built once at construction and used for everything;
* ``A`` orthogonal, any base: ``y_t = A x_t + a b`` with ``x_t`` the base's noised variable (since
  ``A^T eps ~ eps``), so ``log p_t(y) = log p^X_t(A^T (y - a b))``,
  ``score = A score^X``, ``E[y_0|y_t] = A E[x_0|x_t] + b``;
* base a ``Product`` and ``A`` block-diagonal over its blocks: a ``Product`` of pushforwards.

Otherwise the noised density is a convolution with no closed form, and ``diffuse`` raises
``NotImplementedError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, is_concrete
from .._pytree import pytree_dataclass, static_field
from .base import Distribution
from .empirical import Empirical
from .gaussian import Gaussian, GaussianMixture, factorization_dtype
from .product import Product

__all__ = ["LinearPushforward"]


def _sym(c):
    """Symmetrize (``A S A^T`` is symmetric only up to rounding)."""
    return 0.5 * (c + jnp.swapaxes(c, -1, -2))


def _closed_form(base, matrix, shift):
    """The pushforward as a Gaussian / mixture / empirical law when one exists, else ``None``."""
    if isinstance(base, Gaussian):
        return Gaussian(matrix @ base.mean + shift, _sym(matrix @ base.cov @ matrix.T))
    if isinstance(base, GaussianMixture):
        return GaussianMixture(
            base.weights,
            base.means @ matrix.T + shift[None, :],
            _sym(jnp.einsum("ij,kjl,ml->kim", matrix, base.covs, matrix)),
        )
    if isinstance(base, Empirical):
        # An affine image of a point set is the point set of the images, same weights.
        return Empirical(base.points @ matrix.T + shift[None, :], base.weights)
    if isinstance(base, LinearPushforward) and base.closed is not None:
        return _closed_form(base.closed, matrix, shift)
    return None


def _is_block_diagonal(matrix: np.ndarray, blocks) -> bool:
    m = np.abs(np.asarray(matrix, np.float64))
    for i, bi in enumerate(blocks):
        for j, bj in enumerate(blocks):
            if i != j and np.any(m[np.ix_(bi, bj)] != 0.0):
                return False
    return True


@pytree_dataclass
class LinearPushforward(Distribution):
    """Law of ``matrix @ x + shift`` for ``x ~ base``; ``matrix (d, d)`` invertible.

    Args:
      base: the law of ``x``.
      matrix: invertible ``(d, d)`` matrix.
      shift: ``(d,)`` offset (default zero).
      orthogonal: whether ``matrix`` is orthogonal; detected when ``matrix`` is concrete
        (``None``), assumed ``False`` when traced unless given.
    """

    base: Distribution
    matrix: Any
    shift: Any = None
    orthogonal: bool | None = static_field(default=None)
    block_diagonal: bool = static_field(default=False, init=False)
    closed: Any = dataclasses.field(default=None, init=False, repr=False)
    lu: Any = dataclasses.field(default=None, init=False, repr=False)
    piv: Any = dataclasses.field(default=None, init=False, repr=False)
    log_abs_det: Any = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.base, Distribution):
            raise TypeError(f"base must be a Distribution, got {type(self.base).__name__}")
        d = self.base.dim
        A = as_float_array(self.matrix, "matrix")
        if A.shape != (d, d):
            raise ValueError(
                f"matrix must have shape ({d}, {d}) to match base.dim={d}, got {tuple(A.shape)}"
            )
        A = A.astype(jnp.result_type(A.dtype, self.base.dtype))
        b = (
            jnp.zeros((d,), A.dtype)
            if self.shift is None
            else as_float_array(self.shift, "shift").astype(A.dtype)
        )
        if b.shape != (d,):
            raise ValueError(f"shift must have shape ({d},), got {tuple(b.shape)}")
        # LU in float32 for float16 / bfloat16 matrices (no LAPACK kernels for them)
        lu, piv = jax.scipy.linalg.lu_factor(A.astype(factorization_dtype(A.dtype)))
        logdet = jnp.sum(jnp.log(jnp.abs(jnp.diag(lu)))).astype(A.dtype)
        orth = self.orthogonal
        block_diag = False
        if is_concrete(A):
            An = np.asarray(A, np.float64)
            if not np.all(np.isfinite(An)):
                raise ValueError("matrix has non-finite entries")
            sv = np.linalg.svd(An, compute_uv=False)
            eps = float(jnp.finfo(A.dtype).eps)
            if sv[-1] <= d * eps * sv[0]:
                raise ValueError(
                    f"matrix must be invertible; shape {tuple(A.shape)}, smallest singular "
                    f"value {sv[-1]:.3g} (largest {sv[0]:.3g})"
                )
            if orth is None:
                orth = bool(np.max(np.abs(An.T @ An - np.eye(d))) <= 100 * d * eps)
            if isinstance(self.base, Product):
                block_diag = _is_block_diagonal(An, self.base.blocks)
        orth = bool(orth) if orth is not None else False
        closed = _closed_form(self.base, A, b)
        if closed is None and block_diag:
            parts = []
            for f, blk in zip(self.base.factors, self.base.blocks):
                ix = np.asarray(blk)
                parts.append(LinearPushforward(f, A[np.ix_(ix, ix)], b[ix]))
            closed = Product(tuple(parts), self.base.blocks)
        object.__setattr__(self, "matrix", A)
        object.__setattr__(self, "shift", b)
        object.__setattr__(self, "orthogonal", orth)
        object.__setattr__(self, "block_diagonal", block_diag)
        object.__setattr__(self, "closed", closed)
        object.__setattr__(self, "lu", lu)
        object.__setattr__(self, "piv", piv)
        object.__setattr__(self, "log_abs_det", logdet)

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    def _check_noisable(self):
        if self.closed is not None:
            self.closed._check_noisable()
            return
        if self.orthogonal:
            self.base._check_noisable()
            return
        raise NotImplementedError(
            f"LinearPushforward of a {type(self.base).__name__} by a non-orthogonal matrix "
            "(not block-diagonal over a Product's blocks) has no closed-form noised density: "
            "the noised law is a convolution of a non-Gaussian law with an anisotropic "
            "Gaussian. Exact noising needs a Gaussian/mixture/Empirical base, an orthogonal "
            "matrix, or a Product base with a block-diagonal matrix."
        )

    def _lu_solve(self, y, trans=0):
        """``A^{-1} y`` (``trans=1``: ``A^{-T} y``) with the stored LU factors; float16 /
        bfloat16 ``y`` is solved in float32 and cast back."""
        ft = factorization_dtype(y.dtype)
        out = jax.scipy.linalg.lu_solve((self.lu.astype(ft), self.piv), y.astype(ft), trans=trans)
        return out.astype(y.dtype)

    def inverse(self, y):
        """``A^{-1} (y - b)`` via the stored LU factors."""
        return self._lu_solve(y - self.shift)

    def _noised_log_prob(self, x, a, s):
        if self.closed is not None:
            return self.closed._noised_log_prob(x, a, s)
        if self.orthogonal:
            return self.base._noised_log_prob(self.matrix.T @ (x - a * self.shift), a, s)
        # t = 0 only (diffuse() refuses this case before any s > 0 can reach here).
        return self.base._noised_log_prob(self.inverse(x), a, s) - self.log_abs_det

    def _noised_score(self, x, a, s):
        if self.closed is not None:
            return self.closed._noised_score(x, a, s)
        if self.orthogonal:
            return self.matrix @ self.base._noised_score(self.matrix.T @ (x - a * self.shift), a, s)
        # t = 0: grad_y log p_X(A^{-1}(y-b)) = A^{-T} score_X
        sx = self.base._noised_score(self.inverse(x), a, s)
        return self._lu_solve(sx, trans=1)

    def _noised_log_prob_and_score(self, x, a, s):
        if self.closed is not None:
            return self.closed._noised_log_prob_and_score(x, a, s)
        return self._noised_log_prob(x, a, s), self._noised_score(x, a, s)

    def _noised_denoise(self, x, a, s):
        if self.closed is not None:
            return self.closed._noised_denoise(x, a, s)
        if self.orthogonal:
            z = self.matrix.T @ (x - a * self.shift)
            return self.matrix @ self.base._noised_denoise(z, a, s) + self.shift
        return x  # t = 0: the posterior mean is the point itself

    def sample(self, key, n):
        return self.base.sample(key, n) @ self.matrix.T + self.shift[None, :]

    def _sample_one(self, key):  # pragma: no cover - sample() is overridden
        return self.sample(key, 1)[0]

    def marginal(self, indices) -> Distribution:
        if self.closed is not None:
            return self.closed.marginal(indices)
        raise NotImplementedError(
            f"the marginal of a LinearPushforward of a {type(self.base).__name__} by a "
            "general matrix has no closed form (it mixes coordinates of a non-Gaussian law)"
        )
