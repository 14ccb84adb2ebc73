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
from ..models import jit_when_concrete

__all__ = [
    "MAX_MIXTURE_COMPONENTS",
    "Distribution",
    "cast_tree",
    "check_count",
    "check_indices",
    "per_sample_keys",
]


def cast_tree(tree: Any, dtype: Any) -> Any:
    """Cast every floating leaf of ``tree`` to ``dtype`` (no-op when already of that dtype)."""

    def f(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(f, tree)


def check_count(n: Any) -> int:
    """Validate a sample count: a non-negative int (a bool is not one)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return int(n)


def per_sample_keys(key: jax.Array, n: int) -> jax.Array:
    """Keys ``fold_in(key, i)`` for ``i < n``: sample ``i`` depends only on ``(key, i)``, so the
    first ``m`` of ``n`` samples equal ``m`` samples drawn with the same key."""
    n = check_count(n)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))


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


#: Default cap on the number of components that :meth:`Distribution.as_gaussian_mixture` builds.
MAX_MIXTURE_COMPONENTS = 4096


class Distribution:
    """Interface of the clean laws. Subclasses are pytree dataclasses.

    Declared facts (class attributes, or properties where they depend on static structure, never
    on values): ``columns_native`` -- the family implements
    ``_noised_score_columns(X (d, n), a, s)``, the noised scores of many particles in
    particle-minor layout (``cj.diffuse(...).score_columns``); otherwise that is a ``vmap`` of
    ``_noised_score``.

    Conversions are methods of the families, so that code which needs a law in a canonical form
    asks the law (a new family implements the hooks in its own file; no type switch elsewhere):

    * :meth:`as_gaussian_mixture` (hook ``_gaussian_mixture``): the law as an exact Gaussian
      mixture, the form the exact oracles of compositions and of the verification statistics
      work with;
    * :meth:`affine_image` (hook ``_affine_image``): the closed-form law of ``A x + b``, which
      :class:`~composition_jax.LinearPushforward` uses as its exact form;
    * ``_compose_parts``: how ``composed_distribution`` composes inputs that share the family's
      structure (blockwise for products, in the base space for a shared pushforward).

    The defaults answer "no closed form" (``None`` / the generic ``NotImplementedError``).
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

    def _noised_score_columns(self, X, a, s):
        """Noised scores for ``X (d, n)``, one particle per column (``(d, n)``). Families that
        declare ``columns_native`` override it with a batched computation."""
        return jax.vmap(self._noised_score, (1, None, None), 1)(X, a, s)

    # -- conversions (hooks; see the class docstring) -----------------------------------------
    def _gaussian_mixture(self, max_components: int, name: str):
        """The law as an exact :class:`~composition_jax.GaussianMixture`, building at most
        ``max_components`` components; otherwise raise ``NotImplementedError`` whose message
        names the input ``name`` (e.g. ``"conditionals[0].factors[1]"``) and why (the message
        ``composed_distribution`` reports)."""
        raise NotImplementedError(
            f"{name} is a {type(self).__name__}: C[p] ∝ p_b prod (p_i/p_b)^w_i has no closed form "
            "for it (closed forms exist for Gaussians, Gaussian mixtures, Products and "
            "LinearPushforwards of those)"
        )

    def _affine_image(self, matrix: jax.Array, shift: jax.Array) -> Distribution | None:
        """Closed-form law of ``matrix @ x + shift`` (``matrix (d, d)``, ``shift (d,)``, both
        validated and of a common float dtype), or ``None``."""
        return None

    def _compose_parts(self, others: Sequence[Distribution], compose) -> Distribution | None:
        """``C[p]`` for the inputs ``(self, *others)`` when they share this family's structure,
        computed from the composition of their parts with ``compose(list_of_laws)`` (which may
        raise ``NotImplementedError``); ``None`` when the structure is not shared."""
        return None

    # -- conversions (public) ---------------------------------------------------------------
    def as_gaussian_mixture(self, max_components: int = MAX_MIXTURE_COMPONENTS):
        """This law as an exact :class:`~composition_jax.GaussianMixture`, or ``None``.

        ``None`` when the family has no finite Gaussian-mixture form, or when the form would
        have to be *built* with more than ``max_components`` components (a product's components
        are the Cartesian product of its factors'; an existing mixture is returned as it is). A
        Gaussian is the one-component mixture.

        Example:
          >>> import jax.numpy as jnp, composition_jax as cj
          >>> g = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
          >>> g.as_gaussian_mixture().num_components
          1
          >>> cj.Empirical(jnp.zeros((3, 2))).as_gaussian_mixture() is None
          True
        """
        if isinstance(max_components, bool) or not isinstance(max_components, (int, np.integer)) \
                or max_components < 1:
            raise ValueError(f"max_components must be a positive int, got {max_components!r}")
        try:
            return self._gaussian_mixture(int(max_components), "dist")
        except NotImplementedError:
            return None

    def affine_image(self, matrix: Any, shift: Any = None) -> Distribution | None:
        """Closed-form law of ``matrix @ x + shift`` for ``x`` of this law, or ``None``.

        ``matrix (d, d)``, ``shift (d,)`` (default zero). Gaussians and Gaussian mixtures map to
        their own family (``A m + b``, ``A S A^T``), a point set to the point set of the images,
        a :class:`~composition_jax.Product` (and a ``FactorMixture``) under a matrix that is
        block-diagonal over its blocks to the product of the blocks' pushforwards.

        Raises:
          ValueError: ``matrix`` or ``shift`` of the wrong shape (naming the shapes).
        """
        d = self.dim
        A = as_float_array(matrix, "matrix")
        if A.shape != (d, d):
            raise ValueError(
                f"matrix must have shape ({d}, {d}) to match dim={d}, got {tuple(A.shape)}"
            )
        A = A.astype(jnp.result_type(A.dtype, self.dtype))
        if shift is None:
            b = jnp.zeros((d,), A.dtype)
        else:
            b = as_float_array(shift, "shift").astype(A.dtype)
            if b.shape != (d,):
                raise ValueError(f"shift must have shape ({d},), got {tuple(b.shape)}")
        return self._affine_image(A, b)

    # -- public ---------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        leaves = [leaf for leaf in jax.tree.leaves(self) if hasattr(leaf, "dtype")]
        floats = [leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)]
        return floats[0] if floats else jnp.result_type(float)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` independent samples, shape ``(n, d)``; sample ``i`` depends only on ``(key, i)``.

        Families override the hook ``_sample(key, n)`` (default: ``_sample_one`` per sample)."""
        return jit_when_concrete(_sample, self, key, check_count(n), static_argnums=(1,))

    def _sample(self, key: jax.Array, n: int) -> jax.Array:
        keys = per_sample_keys(key, n)
        return jax.vmap(self._sample_one)(keys)

    # The public evaluations validate their inputs, then run through ``jit_when_concrete``
    # (called eagerly: one program per structure and shapes, not one per jnp op).
    def log_prob(self, x: Any) -> jax.Array:
        """Exact log-density at one point ``x`` of shape ``(d,)``."""
        x = check_point(x, self.dim)
        return jit_when_concrete(_clean, self, x, "log_prob", static_argnums=(1,))

    def score(self, x: Any) -> jax.Array:
        """Exact ``grad_x log p(x)`` at ``t = 0``."""
        x = check_point(x, self.dim)
        return jit_when_concrete(_clean, self, x, "score", static_argnums=(1,))

    def noised(self, x: Any, alpha: Any, sigma: Any, what: str = "score") -> jax.Array:
        """Evaluate ``log_prob``/``score``/``denoise`` of the law of ``alpha x_0 + sigma eps``."""
        if what not in ("log_prob", "score", "denoise"):
            raise KeyError(what)
        x = check_point(x, self.dim)
        a = as_float_array(alpha, "alpha")
        s = as_float_array(sigma, "sigma")
        return jit_when_concrete(_noised, self, x, a, s, what, static_argnums=(3,))


def _sample(dist: Distribution, key: jax.Array, n: int) -> jax.Array:
    return dist._sample(key, n)


def _noised(dist: Distribution, x: jax.Array, alpha: Any, sigma: Any, what: str) -> jax.Array:
    """``what`` of the law of ``alpha x_0 + sigma eps`` at ``x`` (validated), in ``x``'s dtype."""
    a, s = alpha.astype(x.dtype), sigma.astype(x.dtype)
    return getattr(cast_tree(dist, x.dtype), f"_noised_{what}")(x, a, s)


def _clean(dist: Distribution, x: jax.Array, what: str) -> jax.Array:
    """``what`` of the clean law at ``x`` (validated): ``alpha = 1, sigma = 0`` as constants of
    the program (as in any jitted caller's)."""
    one, zero = jnp.ones((), x.dtype), jnp.zeros((), x.dtype)
    return getattr(cast_tree(dist, x.dtype), f"_noised_{what}")(x, one, zero)
