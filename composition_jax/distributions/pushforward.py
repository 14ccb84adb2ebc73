r"""Linear pushforward ``y = A x + b`` of a base law, ``A`` invertible.

At ``t = 0``: ``log p_Y(y) = log p_X(A^{-1}(y - b)) - log|det A|`` (LU factorization computed once).

Noised law (``y_t = a y_0 + s eps``), exact in these cases:

* the base has a closed-form affine image (``base.affine_image(A, b)``: a Gaussian, mixture or
  ``Empirical`` is again one, ``A m + b``, ``A S A^T``, points ``A p_j + b``), built once at
  construction and used for everything;
* ``A`` orthogonal, any base: ``y_t = A x_t + a b`` with ``x_t`` the base's noised variable (since
  ``A^T eps ~ eps``), so ``log p_t(y) = log p^X_t(A^T (y - a b))``,
  ``score = A score^X``, ``E[y_0|y_t] = A E[x_0|x_t] + b``;
* base a ``Product`` (or a ``FactorMixture``) and ``A`` block-diagonal over its blocks: the
  base's affine image is the ``Product`` of the blocks' pushforwards.

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
from .gaussian import factorization_dtype
from .product import Product

__all__ = ["LinearPushforward"]


def _same_map(a: LinearPushforward, b: LinearPushforward) -> bool:
    """Whether two pushforwards use the same matrix and shift (same objects or equal concrete
    values)."""
    if a.matrix is b.matrix and a.shift is b.shift:
        return True
    if not is_concrete(a.matrix, b.matrix, a.shift, b.shift):
        return False
    return bool(
        np.array_equal(np.asarray(a.matrix), np.asarray(b.matrix))
        and np.array_equal(np.asarray(a.shift), np.asarray(b.shift))
    )


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
        orth = bool(orth) if orth is not None else False
        # the base's own answer (Distribution.affine_image): no type switch here
        closed = self.base._affine_image(A, b)
        object.__setattr__(self, "matrix", A)
        object.__setattr__(self, "shift", b)
        object.__setattr__(self, "orthogonal", orth)
        object.__setattr__(self, "closed", closed)
        object.__setattr__(self, "lu", lu)
        object.__setattr__(self, "piv", piv)
        object.__setattr__(self, "log_abs_det", logdet)

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def block_diagonal(self) -> bool:
        """Whether the exact form is a product of per-block pushforwards (a product base and a
        matrix block-diagonal over its blocks)."""
        return isinstance(self.closed, Product)

    @property
    def columns_native(self) -> bool:
        """Declared fact (see :class:`Distribution`): the closed form's, else (orthogonal
        ``matrix``) the base's; a pushforward with no exact noised law has none."""
        if self.closed is not None:
            return self.closed.columns_native
        return self.orthogonal and self.base.columns_native

    def _noised_score_columns(self, X, a, s):
        """``X (d, n)``: the closed form's columns score, or (orthogonal ``A``)
        ``A score^X(A^T (X - a b))`` column by column."""
        if self.closed is not None:
            return self.closed._noised_score_columns(X, a, s)
        if self.orthogonal:
            Z = self.matrix.T @ (X - a * self.shift[:, None])
            return self.matrix @ self.base._noised_score_columns(Z, a, s)
        return super()._noised_score_columns(X, a, s)

    # -- conversions ------------------------------------------------------------------------
    def _gaussian_mixture(self, max_components, name):
        if self.closed is not None:
            return self.closed._gaussian_mixture(max_components, name)
        raise NotImplementedError(
            f"{name} is a LinearPushforward of a {type(self.base).__name__} with no closed form; "
            "composed_distribution has closed forms for Gaussians, Gaussian mixtures, Products of "
            "those, and pushforwards sharing one matrix"
        )

    def _affine_image(self, matrix, shift):
        return None if self.closed is None else self.closed._affine_image(matrix, shift)

    def _compose_parts(self, others, compose):
        """Lemma 6.2: ``C[A# p] = A# C[p]`` when every input is pushed forward by the same map
        (composed in the base space). When the bases have no closed-form composition but every
        input has an exact form, ``None`` (the caller composes the exact forms)."""
        if not all(isinstance(d, LinearPushforward) and _same_map(self, d) for d in others):
            return None
        try:
            base = compose([self.base] + [d.base for d in others])
        except NotImplementedError:
            if not all(d.closed is not None for d in (self, *others)):
                raise
            return None
        return LinearPushforward(base, self.matrix, self.shift, orthogonal=self.orthogonal)

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

    def _sample(self, key, n):
        return self.base.sample(key, n) @ self.matrix.T + self.shift[None, :]

    def _sample_one(self, key):  # pragma: no cover - _sample() is overridden
        return self.sample(key, 1)[0]

    def marginal(self, indices) -> Distribution:
        if self.closed is not None:
            return self.closed.marginal(indices)
        raise NotImplementedError(
            f"the marginal of a LinearPushforward of a {type(self.base).__name__} by a "
            "general matrix has no closed form (it mixes coordinates of a non-Gaussian law)"
        )
