r"""Base class shared by all clean (t = 0) distributions.

A distribution knows its exact *noised* law for any ``(alpha, sigma)``:
``x_t = alpha x_0 + sigma eps``. ``diffuse(dist, schedule)`` turns those into functions of ``t``.
Subclasses implement the ``_noised_*`` methods on one unbatched point ``x`` of shape ``(d,)`` with
scalar ``a = alpha`` and ``s = sigma`` already in ``x``'s dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_float_array, check_point

__all__ = ["Distribution", "cast_tree", "check_indices", "per_sample_keys"]


def cast_tree(tree: Any, dtype: Any) -> Any:
    """Cast every floating leaf of ``tree`` to ``dtype`` (no-op when already of that dtype)."""

    def f(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(f, tree)


def per_sample_keys(key: jax.Array, n: int) -> jax.Array:
    """Keys ``fold_in(key, i)`` for ``i < n``: sample ``i`` depends only on ``(key, i)``, so the
    first ``m`` of ``n`` samples equal ``m`` samples drawn with the same key."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(int(n), dtype=jnp.uint32))


def check_indices(indices: Any, dim: int, name: str = "indices") -> tuple[int, ...]:
    """Validate a static index set: distinct integers in ``range(dim)``."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name} must be a 1-D sequence of ints, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if arr.min() < 0 or arr.max() >= dim:
        raise ValueError(f"{name} must lie in range({dim}), got {arr.tolist()}")
    if len(np.unique(arr)) != arr.size:
        raise ValueError(f"{name} has repeated entries: {arr.tolist()}")
    return tuple(int(i) for i in arr)


class Distribution:
    """Interface of the clean laws. Subclasses are pytree dataclasses.

    Declared facts (class attributes, or properties where they depend on static structure):
    ``columns_native`` -- the family implements ``_noised_score_columns(X (d, n), a, s)``, the
    noised scores of many particles in particle-minor layout (``cj.diffuse(...).score_columns``);
    otherwise that is a ``vmap`` of ``_noised_score``.
    """

    columns_native: bool = False

    # -- to implement -------------------------------------------------------------------
    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample_one(self, key: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _noised_log_prob(self, x, a, s):  # pragma: no cover - abstract
        raise NotImplementedError

    def _noised_score(self, x, a, s):  # pragma: no cover - abstract
        raise NotImplementedError

    def _noised_denoise(self, x, a, s):  # pragma: no cover - abstract
        raise NotImplementedError

    def _noised_log_prob_and_score(self, x, a, s):
        return self._noised_log_prob(x, a, s), self._noised_score(x, a, s)

    def marginal(self, indices: Sequence[int]) -> Distribution:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no closed-form marginal")

    def _check_noisable(self) -> None:
        """Raise ``NotImplementedError`` if the noised law has no closed form."""

    # -- public ---------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        leaves = [leaf for leaf in jax.tree.leaves(self) if hasattr(leaf, "dtype")]
        floats = [leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)]
        return floats[0] if floats else jnp.result_type(float)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` independent samples, shape ``(n, d)``; sample ``i`` depends only on ``(key, i)``."""
        keys = per_sample_keys(key, n)
        return jax.vmap(self._sample_one)(keys)

    def log_prob(self, x: Any) -> jax.Array:
        """Exact log-density at one point ``x`` of shape ``(d,)``."""
        x = check_point(x, self.dim)
        d = cast_tree(self, x.dtype)
        one, zero = jnp.ones((), x.dtype), jnp.zeros((), x.dtype)
        return d._noised_log_prob(x, one, zero)

    def score(self, x: Any) -> jax.Array:
        """Exact ``grad_x log p(x)`` at ``t = 0``."""
        x = check_point(x, self.dim)
        d = cast_tree(self, x.dtype)
        one, zero = jnp.ones((), x.dtype), jnp.zeros((), x.dtype)
        return d._noised_score(x, one, zero)

    def noised(self, x: Any, alpha: Any, sigma: Any, what: str = "score") -> jax.Array:
        """Evaluate ``log_prob``/``score``/``denoise`` of the law of ``alpha x_0 + sigma eps``."""
        x = check_point(x, self.dim)
        a = as_float_array(alpha, "alpha").astype(x.dtype)
        s = as_float_array(sigma, "sigma").astype(x.dtype)
        d = cast_tree(self, x.dtype)
        fn = {
            "log_prob": d._noised_log_prob,
            "score": d._noised_score,
            "denoise": d._noised_denoise,
        }[what]
        return fn(x, a, s)
