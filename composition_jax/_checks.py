"""Trace-time and construction-time validation helpers.

All checks on *values* run only when the values are concrete (not traced); checks on shapes and
dtypes always run (shapes are static under ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "as_float_array",
    "check_t",
    "check_point",
    "check_columns",
    "float_dtype_of",
]


def is_concrete(*xs: Any) -> bool:
    """True when none of ``xs`` (pytrees) contains a tracer."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(xs))


def as_float_array(x: Any, name: str, *, ndim: int | None = None) -> jax.Array:
    """Convert ``x`` to a floating JAX array (ints become the default float dtype).

    Raises ``TypeError`` for complex/bool/object input and ``ValueError`` for a wrong rank,
    naming ``name`` and the shape found.
    """
    if isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        arr = x
    else:
        arr = jnp.asarray(x)
    dt = arr.dtype
    if jnp.issubdtype(dt, jnp.complexfloating) or dt == jnp.bool_ or not (
        jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)
    ):
        raise TypeError(f"{name} must be a real floating array, got dtype {dt}")
    if jnp.issubdtype(dt, jnp.integer):
        arr = arr.astype(jnp.result_type(float))
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(arr.shape)}")
    return arr


def float_dtype_of(x: Any) -> Any:
    """The floating dtype of ``x``; Python scalars/ints map to JAX's default float dtype."""
    dt = jnp.result_type(x)
    if not jnp.issubdtype(dt, jnp.floating):
        return jnp.result_type(float)
    return dt


def check_t(t: Any, name: str = "t") -> jax.Array:
    """Validate a time: a real scalar in ``[0, 1]`` (value checked only when concrete)."""
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real scalar, got bool")
    arr = as_float_array(t, name)
    if arr.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar (vmap over times if needed), got shape {tuple(arr.shape)}"
        )
    if is_concrete(arr):
        v = float(arr)
        if not (0.0 <= v <= 1.0) or v != v:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    return arr


def check_point(x: Any, dim: int, name: str = "x") -> jax.Array:
    """Validate one sample: floating, shape ``(dim,)``."""
    arr = as_float_array(x, name)
    if arr.shape != (dim,):
        hint = " (one sample; use jax.vmap for batches)" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must have shape ({dim},), got {tuple(arr.shape)}{hint}")
    return arr


def check_columns(X: Any, dim: int) -> jax.Array:
    """Validate particles in particle-minor layout: shape ``(dim, n)``, one per column."""
    X = jnp.asarray(X)
    if X.ndim != 2 or X.shape[0] != dim:
        raise ValueError(f"X must have shape ({dim}, n), got {tuple(X.shape)}")
    return X
