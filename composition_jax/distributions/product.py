r"""Product of independent blocks: ``p(x) = prod_i factors[i](x[blocks[i]])``.

Isotropic noise factorizes over any coordinate partition, so the noised law is the product of the
noised factors: log-densities add and scores/denoisers are assembled blockwise. The cost is the
sum of the factors' costs (never a mixture with a product number of components).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._pytree import pytree_dataclass, static_field
from .base import Distribution, check_indices

__all__ = ["Product", "normalize_blocks"]


def normalize_blocks(blocks: Any, dim: int | None = None, *, name: str = "blocks",
                     partition: bool = True) -> tuple[tuple[int, ...], ...]:
    """Validate ``blocks`` (a sequence of integer index arrays) and return a tuple of tuples.

    With ``partition=True`` the blocks must be disjoint and cover ``range(dim)`` exactly (``dim``
    defaults to ``max(total size, largest index + 1)``).
    """
    if isinstance(blocks, (np.ndarray, jax.Array)) and np.ndim(blocks) == 1:
        raise ValueError(f"{name} must be a sequence of index arrays, got a flat array")
    try:
        out = []
        for i, b in enumerate(blocks):
            arr = np.asarray(b)
            if arr.ndim == 0:
                arr = arr[None]
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"{name}[{i}] must be a 1-D integer array, got {arr!r}")
            if arr.size == 0:
                raise ValueError(f"{name}[{i}] is empty")
            out.append(tuple(int(j) for j in arr))
    except TypeError as e:
        raise ValueError(f"{name} must be a sequence of index arrays: {e}") from None
    flat = [j for b in out for j in b]
    # Without ``dim`` the blocks must cover range(max index + 1): a gap is reported as missing.
    total = max(len(flat), max(flat, default=-1) + 1) if dim is None else dim
    if any(j < 0 or j >= total for j in flat):
        bad = sorted({j for j in flat if j < 0 or j >= total})
        raise ValueError(f"{name} has indices out of range({total}): {bad}")
    if len(set(flat)) != len(flat):
        seen, dup = set(), set()
        for j in flat:
            (dup if j in seen else seen).add(j)
        raise ValueError(f"{name} overlap on coordinates {sorted(dup)}")
    if partition and len(flat) != total:
        missing = sorted(set(range(total)) - set(flat))
        raise ValueError(f"{name} do not cover range({total}); missing coordinates {missing}")
    return tuple(out)


def _is_block_diagonal(matrix: np.ndarray, blocks) -> bool:
    """Whether ``matrix`` has exact zeros off the diagonal blocks ``blocks x blocks``."""
    m = np.asarray(matrix, np.float64)
    label = np.empty(m.shape[0], np.int64)
    for i, b in enumerate(blocks):
        label[np.asarray(b)] = i
    return not np.any(m[label[:, None] != label[None, :]] != 0.0)


@pytree_dataclass
class Product(Distribution):
    """Independent blocks. ``blocks`` partitions ``range(d)``; ``factors[i]`` is the law of
    ``x[blocks[i]]`` (its ``dim`` must equal ``len(blocks[i])``)."""

    factors: tuple
    blocks: tuple = static_field()
    _perm: tuple = static_field(init=False, repr=False, default=())
    _inv_perm: tuple = static_field(init=False, repr=False, default=())

    def __post_init__(self):
        factors = tuple(self.factors)
        if not factors:
            raise ValueError("Product needs at least one factor")
        for i, f in enumerate(factors):
            if not isinstance(f, Distribution):
                raise TypeError(f"factors[{i}] must be a Distribution, got {type(f).__name__}")
        blocks = normalize_blocks(self.blocks)
        if len(blocks) != len(factors):
            raise ValueError(f"got {len(factors)} factors but {len(blocks)} blocks")
        for i, (f, b) in enumerate(zip(factors, blocks)):
            if f.dim != len(b):
                raise ValueError(
                    f"factors[{i}] has dim {f.dim} but blocks[{i}] has {len(b)} indices {list(b)}"
                )
        perm = tuple(j for b in blocks for j in b)
        inv = tuple(int(i) for i in np.argsort(np.asarray(perm)))
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "_perm", perm)
        object.__setattr__(self, "_inv_perm", inv)

    @property
    def dim(self) -> int:
        return len(self._perm)

    def _split(self, x):
        return [x[np.asarray(b)] for b in self.blocks]

    def _join(self, parts):
        return jnp.concatenate(parts)[np.asarray(self._inv_perm)]

    def _noised_log_prob(self, x, a, s):
        return sum(f._noised_log_prob(xb, a, s) for f, xb in zip(self.factors, self._split(x)))

    def _noised_score(self, x, a, s):
        return self._join(
            [f._noised_score(xb, a, s) for f, xb in zip(self.factors, self._split(x))]
        )

    def _noised_log_prob_and_score(self, x, a, s):
        out = [f._noised_log_prob_and_score(xb, a, s) for f, xb in zip(self.factors, self._split(x))]
        return sum(lp for lp, _ in out), self._join([sc for _, sc in out])

    def _noised_denoise(self, x, a, s):
        return self._join(
            [f._noised_denoise(xb, a, s) for f, xb in zip(self.factors, self._split(x))]
        )

    def _check_noisable(self):
        for f in self.factors:
            f._check_noisable()

    @property
    def columns_native(self) -> bool:
        """Declared fact (see :class:`Distribution`): every factor is ``columns_native``."""
        return all(f.columns_native for f in self.factors)

    def _noised_score_columns(self, X, a, s):
        """Blockwise: factor ``i``'s particle-minor score on the rows ``blocks[i]`` of
        ``X (d, n)``."""
        parts = [f._noised_score_columns(X[np.asarray(b)], a, s)
                 for f, b in zip(self.factors, self.blocks)]
        return jnp.concatenate(parts, 0)[np.asarray(self._inv_perm)]

    # -- conversions ------------------------------------------------------------------------
    def _gaussian_mixture(self, max_components, name):
        """The mixture over the Cartesian product of the factors' components: component
        ``(k_1, .., k_B)`` has weight ``prod_i w_{i k_i}``, mean and (block-diagonal) covariance
        assembled from the factors' ``k_i``-th components (one compiled program per structure,
        :func:`_expand_product`)."""
        parts = [f._gaussian_mixture(max_components, f"{name}.factors[{j}]")
                 for j, f in enumerate(self.factors)]
        total = 1
        for p in parts:
            total *= p.num_components
            if total > max_components:
                raise NotImplementedError(
                    f"{name}: expanding the Product into a mixture would need more than "
                    f"{max_components} components"
                )
        from .gaussian import GaussianMixture

        dt = jnp.result_type(*[p.means.dtype for p in parts])
        return GaussianMixture(*_expand_product(
            tuple((p.weights.astype(dt), p.means.astype(dt), p.covs.astype(dt)) for p in parts),
            self.blocks, self.dim))

    def _affine_image(self, matrix, shift):
        """For a concrete ``matrix`` that is block-diagonal over ``blocks``: the product of the
        blocks' pushforwards (each exact when its factor has a closed form or the block matrix
        is orthogonal); otherwise ``None``."""
        if not is_concrete(matrix) or not _is_block_diagonal(np.asarray(matrix), self.blocks):
            return None
        from .pushforward import LinearPushforward

        parts = []
        for f, blk in zip(self.factors, self.blocks):
            ix = np.asarray(blk)
            parts.append(LinearPushforward(f, matrix[np.ix_(ix, ix)], shift[ix]))
        return Product(tuple(parts), self.blocks)

    def _compose_parts(self, others, compose):
        """Products with one shared block structure compose blockwise (cost additive)."""
        if not all(isinstance(d, Product) and d.blocks == self.blocks for d in others):
            return None
        factors = tuple(compose([self.factors[j]] + [d.factors[j] for d in others])
                        for j in range(len(self.blocks)))
        return Product(factors, self.blocks)

    def _sample(self, key, n):
        keys = jax.random.split(key, len(self.factors))
        parts = [f.sample(k, n) for f, k in zip(self.factors, keys)]
        return jnp.concatenate(parts, axis=-1)[:, np.asarray(self._inv_perm)]

    def _sample_one(self, key):  # pragma: no cover - _sample() is overridden
        return self.sample(key, 1)[0]

    def marginal(self, indices: Sequence[int]) -> Distribution:
        """Law of ``x[indices]``: the product of the factors' marginals on their share."""
        idx = check_indices(indices, self.dim)
        pos = {j: p for p, j in enumerate(idx)}
        factors, blocks = [], []
        for f, b in zip(self.factors, self.blocks):
            local = [k for k, j in enumerate(b) if j in pos]
            if not local:
                continue
            factors.append(f if local == list(range(len(b))) else f.marginal(local))
            blocks.append([pos[b[k]] for k in local])
        if len(factors) == 1 and blocks[0] == list(range(len(idx))):
            return factors[0]
        return Product(tuple(factors), tuple(blocks))


@functools.partial(jax.jit, static_argnames=("blocks", "dim"))
def _expand_product(parts, blocks, dim):
    """``(weights, means, covs)`` of the product of the mixtures ``parts`` (each ``(w, m, S)``
    on ``blocks[i]``) over the Cartesian product of their components, factor 0's index
    slowest. One jitted program per structure (the blocks and component counts): built op by
    op, every partial product had its own shapes, so an eager call compiled a few programs per
    factor."""
    dt = parts[0][0].dtype
    w = jnp.ones((1,), dt)
    means = jnp.zeros((1, dim), dt)
    covs = jnp.zeros((1, dim, dim), dt)
    for (pw, pm, pc), blk in zip(parts, blocks):
        ix = np.asarray(blk)
        k0, k1 = w.shape[0], pw.shape[0]
        w = (w[:, None] * pw[None, :]).reshape(-1)
        means = jnp.repeat(means, k1, axis=0).at[:, ix].set(jnp.tile(pm, (k0, 1)))
        covs = jnp.repeat(covs, k1, axis=0).at[:, ix[:, None], ix[None, :]].set(
            jnp.tile(pc, (k0, 1, 1)))
    return w, means, covs
