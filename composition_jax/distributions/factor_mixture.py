r"""Product of many independent small Gaussian mixtures, evaluated as one vectorized graph.

``FactorMixture`` is the law of ``x = concat(x_1, ..., x_B)`` with independent blocks
``x_i in R^b`` (coordinates ``i b .. (i + 1) b - 1``), each a ``K``-component Gaussian mixture:

.. math::

    p(x) = \prod_{i=1}^{B} \sum_{k=1}^{K} w_{ik}\, \mathcal N(x_i;\, m_{ik},\, S_{ik}).

It is the same law as ``Product([GaussianMixture(w_i, m_i, S_i) for i], blocks)``, but every
method is a few element-wise operations per component on ``(b, B)`` arrays (the block axis
last, so that it vectorizes), so the traced graph (and the compile time of a sampler that uses
it) grows with ``K`` (and ``b``) but not with ``B``. This is the shape of the
cluttered-scene laws of Bradley et al. (2025), eq. (18) (each pixel an independent two-component
"empty or object" mixture), and of any factorized prior over many coordinates.

Noised law (exact at every noise level). Isotropic noise factorizes over the blocks, and under
``x_t = a x_0 + s eps`` component ``(i, k)`` becomes ``N(a m_ik, a^2 S_ik + s^2 I)``. With
``S_ik = U diag(lam) U^T`` (computed once, at construction), ``y = U^T (x_i - a m_ik)`` and
``v = a^2 lam + s^2``:

* ``log p_t(x) = sum_i logsumexp_k [log w_ik - 1/2 sum(y^2 / v) - 1/2 sum(log v)] - d/2 log 2 pi``
* ``score_i = sum_k r_ik (-U (y / v))`` with responsibilities ``r_ik = softmax_k(...)``
* ``E[x_0,i | x_t = x] = sum_k r_ik (m_ik + U (a lam y / v))``

Residuals ``x - a m`` are formed directly (no expanded quadratic), so there is no cancellation far
from the origin, and ``log v`` is a sum of logs of ``a^2 lam + s^2`` (accurate for tiny ``s``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, is_concrete
from .._pytree import pytree_dataclass, static_field
from .base import Distribution, check_indices, per_sample_keys
from .gaussian import GaussianMixture
from .product import Product, _is_block_diagonal

__all__ = ["FactorMixture"]

_LOG_2PI = math.log(2.0 * math.pi)
_COV_NDIM = {"full": 4, "diag": 3, "iso": 2}


def _full_covs(covs: jax.Array, kind: str, b: int) -> jax.Array:
    """``(B, K, b, b)`` covariance matrices from the ``kind`` representation."""
    if kind == "full":
        return covs
    eye = jnp.eye(b, dtype=covs.dtype)[None, None]
    if kind == "diag":
        return covs[..., :, None] * eye
    return covs[..., None, None] * eye


def _sum_list(xs: list) -> jax.Array:
    """Element-wise sum of a list of equal-shape arrays (unrolled adds)."""
    out = xs[0]
    for v in xs[1:]:
        out = out + v
    return out


def _max_list(xs: list) -> jax.Array:
    out = xs[0]
    for v in xs[1:]:
        out = jnp.maximum(out, v)
    return out


def _sum0(z: jax.Array) -> jax.Array:
    """Sum over the (small) leading axis as unrolled adds (a reduction beyond 8 rows)."""
    if z.shape[0] > 8:
        return jnp.sum(z, 0)
    return _sum_list([z[i] for i in range(z.shape[0])])


@pytree_dataclass
class FactorMixture(Distribution):
    r"""Independent Gaussian mixtures on ``B`` contiguous blocks of ``b`` coordinates.

    ``p(x) = prod_i sum_k w_ik N(x[i b:(i + 1) b]; m_ik, S_ik)``, ``d = B b``. Exact noised
    ``log_prob``, score and denoiser at every ``t`` through :func:`~composition_jax.diffuse` (see
    the module docstring); one vectorized graph whatever ``B``.

    Args:
      weights: ``(B, K)`` non-negative, each row summing to 1. Zero weights are allowed (a block
        with fewer components is padded with zero-weight components).
      means: ``(B, K, b)``.
      covs: the component covariances, in the representation named by ``covariance``:
        ``(B, K, b, b)`` symmetric positive definite matrices (``"full"``), ``(B, K, b)``
        positive variances per coordinate (``"diag"``) or ``(B, K)`` positive variances shared by
        the block's coordinates (``"iso"``).
      covariance: ``"full"``, ``"diag"`` or ``"iso"``; by default inferred from ``covs.ndim``
        (4, 3 or 2). A static choice: it selects the code path.

    Raises:
      ValueError: inconsistent shapes, weights that are negative or do not sum to 1 per block,
        non-positive variances or non-symmetric / non-positive-definite covariances (value checks
        run when the arrays are concrete), naming the argument and the shapes found.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> B = 8  # eight independent "empty (0) or object (1)" coordinates, q = 0.3
      >>> p = cj.FactorMixture(jnp.tile(jnp.array([0.7, 0.3]), (B, 1)),
      ...                      jnp.tile(jnp.array([[0.0], [1.0]]), (B, 1, 1)),
      ...                      jnp.full((B, 2), 0.01))
      >>> p.dim, p.covariance
      (8, 'iso')
      >>> cj.diffuse(p, cj.VPSchedule()).score(jnp.zeros(8), 0.5).shape
      (8,)
    """

    weights: Any
    means: Any
    covs: Any
    covariance: str | None = static_field(default=None)
    log_weights: Any = dataclasses.field(init=False, repr=False)
    eigvals: Any = dataclasses.field(init=False, repr=False)
    eigvecs: Any = dataclasses.field(init=False, repr=False)
    # the same numbers with the block axis last (see the layout note of the noised law)
    _lw: Any = dataclasses.field(init=False, repr=False)
    _m: Any = dataclasses.field(init=False, repr=False)
    _lam: Any = dataclasses.field(init=False, repr=False)
    _U: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        w = as_float_array(self.weights, "weights", ndim=2)
        means = as_float_array(self.means, "means", ndim=3)
        covs = as_float_array(self.covs, "covs")
        kind = self.covariance
        if kind is None:
            kinds = {v: k for k, v in _COV_NDIM.items()}
            if covs.ndim not in kinds:
                raise ValueError(
                    "covs must have shape (B, K, b, b), (B, K, b) or (B, K), got shape "
                    f"{tuple(covs.shape)}")
            kind = kinds[covs.ndim]
        elif kind not in _COV_NDIM:
            raise ValueError(f"covariance must be 'full', 'diag' or 'iso', got {kind!r}")
        dt = jnp.result_type(w.dtype, means.dtype, covs.dtype)
        w, means, covs = w.astype(dt), means.astype(dt), covs.astype(dt)
        B, K, b = means.shape
        if B == 0 or K == 0 or b == 0:
            raise ValueError(f"means must have non-empty shape (B, K, b), got {tuple(means.shape)}")
        if w.shape != (B, K):
            raise ValueError(f"weights must have shape ({B}, {K}) to match means "
                             f"{tuple(means.shape)}, got {tuple(w.shape)}")
        want = {"full": (B, K, b, b), "diag": (B, K, b), "iso": (B, K)}[kind]
        if covs.shape != want:
            raise ValueError(f"covs must have shape {want} for covariance={kind!r} and means "
                             f"{tuple(means.shape)}, got {tuple(covs.shape)}")
        if is_concrete(w):
            wn = np.asarray(w, np.float64)
            if np.any(wn < 0) or not np.all(np.isfinite(wn)):
                raise ValueError("weights must be finite and non-negative")
            sums = wn.sum(-1)
            tol = max(1e-5, 10 * K * float(jnp.finfo(dt).eps))
            bad = np.flatnonzero(np.abs(sums - 1.0) > tol)
            if bad.size:
                raise ValueError(f"each row of weights must sum to 1; rows {bad[:5].tolist()} "
                                 f"sum to {sums[bad[:5]].round(6).tolist()}")
        if kind == "full":
            if is_concrete(covs):
                c = np.asarray(covs, np.float64)
                if not np.all(np.isfinite(c)):
                    raise ValueError("covs has non-finite entries")
                scale = max(1.0, float(np.max(np.abs(c))))
                asym = float(np.max(np.abs(c - np.swapaxes(c, -1, -2))))
                if asym > 100 * float(jnp.finfo(dt).eps) * scale:
                    raise ValueError(f"covs must be symmetric; max |C - C^T| = {asym:.3g}")
            evals, evecs = jnp.linalg.eigh(covs)
        else:
            evals = covs if kind == "diag" else jnp.broadcast_to(covs[..., None], (B, K, b))
            evecs = None
        if is_concrete(evals):
            lo = float(jnp.min(evals))
            if not lo > 0 or not bool(jnp.all(jnp.isfinite(evals))):
                raise ValueError(f"covs must be positive definite; smallest eigenvalue "
                                 f"{lo:.3g} (covariance={kind!r}, shape {tuple(covs.shape)})")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covs", covs)
        object.__setattr__(self, "covariance", kind)
        object.__setattr__(self, "log_weights", jnp.log(w))
        object.__setattr__(self, "eigvals", evals)
        object.__setattr__(self, "eigvecs", evecs)
        object.__setattr__(self, "_lw", jnp.log(w).T)  # (K, B)
        object.__setattr__(self, "_m", jnp.moveaxis(means, 0, -1))  # (K, b, B)
        object.__setattr__(self, "_lam", jnp.moveaxis(evals, 0, -1))  # (K, b, B)
        object.__setattr__(self, "_U", None if evecs is None else jnp.moveaxis(evecs, 0, -1))

    # -- shapes ---------------------------------------------------------------------------
    @property
    def num_factors(self) -> int:
        """``B``, the number of independent blocks."""
        return self.means.shape[0]

    @property
    def num_components(self) -> int:
        """``K``, the number of components of each block's mixture."""
        return self.means.shape[1]

    @property
    def factor_dim(self) -> int:
        """``b``, the dimension of each block."""
        return self.means.shape[2]

    @property
    def dim(self) -> int:
        return self.num_factors * self.factor_dim

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        """The coordinates of each block: ``((0..b-1), (b..2b-1), ...)``."""
        b = self.factor_dim
        return tuple(tuple(range(i * b, (i + 1) * b)) for i in range(self.num_factors))

    # -- noised law -----------------------------------------------------------------------
    # Layout: per point, every quantity is a (b, B) array per component: the block axis last, so
    # that under vmap over particles it is the minor (contiguous) axis and every operation
    # vectorizes over blocks. Sums over the small axes (components k, block coordinates) are
    # written as unrolled element-wise adds when those axes are small: XLA:CPU reduces over tiny
    # axes very slowly (measured: 20-60x slower than the unrolled form for K = 2, b = 1).
    def _rotate(self, k: int, z, transpose: bool):
        """``U_k^T z`` (``transpose``) or ``U_k z`` for ``z (b, B)``; identity without
        eigenvectors."""
        if self._U is None:
            return z
        U = self._U[k]  # (b, b, B): U[j, l] is entry (j, l) of each block's matrix
        if z.ndim == 3:  # particle-minor blocks (b, B, n)
            U = U[..., None]
        if transpose:  # (U^T z)_l = sum_j U_jl z_j
            return jnp.stack([_sum0(U[:, col] * z) for col in range(self.factor_dim)])
        return jnp.stack([_sum0(U[row] * z) for row in range(self.factor_dim)])

    def _point_to_blocks(self, x):
        """``(d,)`` -> ``(b, B)``; particle-minor ``(d, n)`` -> ``(b, B, n)``."""
        B, b = self.num_factors, self.factor_dim
        if x.ndim == 1:
            return x.reshape(B, b).T
        return jnp.transpose(x.reshape(B, b, x.shape[-1]), (1, 0, 2))

    def _components(self, X, a, s):
        """Per component ``k``: ``y_k``, ``w_k = 1 / v_k`` (``(b, B)`` each) and the logits
        ``log w_k + log N_k`` (``(B,)``) of the noised law at the blocks ``X (b, B)`` of one
        point; for particle-minor blocks ``X (b, B, n)`` each has a trailing particle axis."""
        cols = X.ndim == 3

        def ex(p):  # parameters broadcast against the particle axis
            return p[..., None] if cols else p

        ys, ws, logits = [], [], []
        for k in range(self.num_components):
            y = self._rotate(k, X - a * ex(self._m[k]), transpose=True)
            v = a * a * self._lam[k] + s * s
            w = ex(1.0 / v)  # independent of x: computed once per time under vmap
            logits.append(ex(self._lw[k]) - 0.5 * (_sum0(y * y * w) + ex(_sum0(jnp.log(v)))))
            ys.append(y)
            ws.append(w)
        return ys, ws, logits

    def _terms(self, x, a, s):
        """``(ys, ws, responsibilities r_k (B,), block log-densities (B,))`` at one point
        ``x (d,)``, or (trailing particle axis) at the columns of ``x (d, n)``."""
        ys, ws, logits = self._components(self._point_to_blocks(x), a, s)
        top = jax.lax.stop_gradient(_max_list(logits))  # finite: each row of weights sums to 1
        es = [jnp.exp(lg - top) for lg in logits]
        z = _sum_list(es)
        inv = 1.0 / z
        return ys, ws, [e * inv for e in es], top + jnp.log(z)

    def _blocks_to_point(self, z):
        """``(b, B)`` -> ``(d,)`` (block ``i`` at coordinates ``i b .. (i + 1) b - 1``);
        ``(b, B, n)`` -> ``(d, n)``."""
        if z.ndim == 2:
            return z.T.reshape(-1)
        return jnp.transpose(z, (1, 0, 2)).reshape(self.dim, z.shape[-1])

    def _score_from(self, ys, ws, rs):
        return -self._blocks_to_point(_sum_list(
            [r[None] * self._rotate(k, y * w, transpose=False) for k, (y, w, r) in
             enumerate(zip(ys, ws, rs))]))

    def _noised_log_prob(self, x, a, s):
        lz = self._terms(x, a, s)[3]
        return jnp.sum(lz) - 0.5 * self.dim * _LOG_2PI

    def _noised_score(self, x, a, s):
        ys, ws, rs, _ = self._terms(x, a, s)
        return self._score_from(ys, ws, rs)

    # Particle-minor layout: the same element-wise graph with a trailing particle axis (the
    # block axis stays contiguous within each particle column block).
    columns_native = True

    def _noised_score_columns(self, X, a, s):
        """Noised scores for ``X (d, n)``, one particle per column (same form as the rows)."""
        ys, ws, rs, _ = self._terms(X, a, s)
        return self._score_from(ys, ws, rs)

    def _noised_log_prob_and_score(self, x, a, s):
        ys, ws, rs, lz = self._terms(x, a, s)
        return jnp.sum(lz) - 0.5 * self.dim * _LOG_2PI, self._score_from(ys, ws, rs)

    def _noised_denoise(self, x, a, s):
        ys, ws, rs, _ = self._terms(x, a, s)
        post = [r[None] * (self._m[k] + self._rotate(k, a * self._lam[k] * w * y, transpose=False))
                for k, (y, w, r) in enumerate(zip(ys, ws, rs))]  # E[x_0 | x, k] r_k
        return self._blocks_to_point(_sum_list(post))

    def responsibilities(self, x, a, s) -> jax.Array:
        """``P(component k of block i | x_t = x)`` under the noised law, shape ``(B, K)``."""
        return jnp.stack(self._terms(x, a, s)[2], -1)

    # -- sampling -------------------------------------------------------------------------
    def _sample_one(self, key):
        kc, kz = jax.random.split(key)
        c = jax.random.categorical(kc, self.log_weights, axis=-1)  # (B,)
        z = jax.random.normal(kz, (self.num_factors, self.factor_dim), self.means.dtype)

        def pick(arr):  # the chosen component of every block: (B, K, ...) -> (B, ...)
            return jnp.take_along_axis(arr, c.reshape((-1, 1) + (1,) * (arr.ndim - 2)), 1)[:, 0]

        z = jnp.sqrt(pick(self.eigvals)) * z
        if self.eigvecs is not None:
            z = jnp.einsum("iab,ib->ia", pick(self.eigvecs), z)
        return (pick(self.means) + z).reshape(-1)

    def _sample(self, key, n):
        """``n`` independent samples ``(n, d)``; sample ``j`` depends only on ``(key, j)``."""
        keys = per_sample_keys(key, n)
        if n == 0:
            return jnp.zeros((0, self.dim), self.means.dtype)
        return jax.vmap(self._sample_one)(keys)

    # -- conversions ----------------------------------------------------------------------
    def full_covs(self) -> jax.Array:
        """Component covariances as ``(B, K, b, b)`` matrices."""
        return _full_covs(self.covs, self.covariance, self.factor_dim)

    def factor(self, i: int) -> GaussianMixture:
        """The law of block ``i`` as a :class:`GaussianMixture`."""
        if not 0 <= int(i) < self.num_factors:
            raise ValueError(f"factor index must lie in range({self.num_factors}), got {i}")
        return GaussianMixture(self.weights[i], self.means[i], self.full_covs()[i])

    def as_product(self) -> Product:
        """The same law as a :class:`Product` of :class:`GaussianMixture` factors (one per
        block): the reference form, accepted by every verification routine."""
        covs = self.full_covs()
        factors = tuple(GaussianMixture(self.weights[i], self.means[i], covs[i])
                        for i in range(self.num_factors))
        return Product(factors, self.blocks)

    def _gaussian_mixture(self, max_components, name):
        """The mixture over the ``K^B`` combinations of the blocks' components (when that is at
        most ``max_components``)."""
        if self.num_components ** self.num_factors > max_components:
            raise NotImplementedError(
                f"{name}: expanding the FactorMixture into a mixture would need more than "
                f"{max_components} components"
            )
        return self.as_product()._gaussian_mixture(max_components, name)

    def _affine_image(self, matrix, shift):
        """That of :meth:`as_product`: the product of the blocks' pushforwards when ``matrix``
        is block-diagonal over the blocks, else ``None``."""
        if not is_concrete(matrix) or not _is_block_diagonal(np.asarray(matrix), self.blocks):
            return None  # decided before building the B factors
        return self.as_product()._affine_image(matrix, shift)

    def _compose_parts(self, others, compose):
        """FactorMixtures with the same blocks compose block by block (as their
        :meth:`as_product`), never through the ``K^B``-component mixture."""
        if not all(isinstance(d, FactorMixture) and d.blocks == self.blocks for d in others):
            return None
        return self.as_product()._compose_parts([d.as_product() for d in others], compose)

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """Exact mean ``(d,)`` and block-diagonal covariance ``(d, d)`` (law of total
        covariance within each block)."""
        m = jnp.einsum("ik,ikj->ij", self.weights, self.means)  # (B, b)
        dm = self.means - m[:, None, :]
        cov = (jnp.einsum("ik,ikab->iab", self.weights, self.full_covs())
               + jnp.einsum("ik,ika,ikb->iab", self.weights, dm, dm))  # (B, b, b)
        B, b = self.num_factors, self.factor_dim
        eye = jnp.eye(B, dtype=cov.dtype)
        full = (eye[:, None, :, None] * cov[:, :, None, :]).reshape(B * b, B * b)
        return m.reshape(-1), full

    def marginal(self, indices: Sequence[int]) -> Distribution:
        """Law of ``x[indices]`` (closed form).

        A ``FactorMixture`` when the selected coordinates come block by block (all of a block's
        selected coordinates adjacent in ``indices``) with the same number from every block that
        is touched; otherwise the equivalent :class:`Product` of block marginals.
        """
        idx = check_indices(indices, self.dim)
        b = self.factor_dim
        groups: list[tuple[int, list[int]]] = []  # (block, local coordinates), in output order
        for j in idx:
            blk, loc = divmod(j, b)
            if groups and groups[-1][0] == blk:
                groups[-1][1].append(loc)
            else:
                groups.append((blk, [loc]))
        covs = self.full_covs()
        contiguous = len({g[0] for g in groups}) == len(groups)
        if contiguous and len({len(g[1]) for g in groups}) == 1:
            blks = np.asarray([g[0] for g in groups])
            locs = np.asarray([g[1] for g in groups])  # (B', b')
            means = jnp.take_along_axis(self.means[blks], locs[:, None, :], axis=2)
            if self.covariance == "iso":
                c = self.covs[blks]
            elif self.covariance == "diag":
                c = jnp.take_along_axis(self.covs[blks], locs[:, None, :], axis=2)
            else:
                c = jnp.take_along_axis(covs[blks], locs[:, None, :, None], axis=2)
                c = jnp.take_along_axis(c, locs[:, None, None, :], axis=3)
            return FactorMixture(self.weights[blks], means, c, covariance=self.covariance)
        # general case: one GaussianMixture marginal per touched block, placed where it lands
        per_block: dict[int, list[tuple[int, int]]] = {}
        for p, j in enumerate(idx):
            per_block.setdefault(j // b, []).append((p, j % b))
        factors, blocks = [], []
        for blk, pairs in per_block.items():
            loc = np.asarray([lc for _, lc in pairs])
            factors.append(GaussianMixture(self.weights[blk], self.means[blk][:, loc],
                                           covs[blk][:, loc][:, :, loc]))
            blocks.append([p for p, _ in pairs])
        return Product(tuple(factors), tuple(blocks))
