"""Frozen dataclasses registered as JAX pytrees.

Fields are leaves (arrays, or nested pytrees such as other distributions) unless declared with
``static_field()``, in which case they are part of the treedef (hashable metadata: block index
tuples, flags, plain Python functions).

Unflattening bypasses ``__init__``/``__post_init__``: construction-time validation runs only when a
user builds an object, never when JAX rebuilds one from (possibly traced or placeholder) leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax

T = TypeVar("T")

__all__ = ["pytree_dataclass", "static_field", "replace"]


def static_field(**kwargs: Any) -> Any:
    """A dataclass field stored in the treedef (must be hashable)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Decorate ``cls`` as a frozen dataclass and register it as a pytree (with key paths)."""
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=True)(cls)
    fields = dataclasses.fields(cls)
    data_names = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta_names = tuple(f.name for f in fields if f.metadata.get("static", False))

    def flatten_with_keys(obj):
        children = tuple((jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data_names)
        aux = tuple(getattr(obj, n) for n in meta_names)
        return children, aux

    def flatten(obj):
        return tuple(getattr(obj, n) for n in data_names), tuple(getattr(obj, n) for n in meta_names)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for n, v in zip(data_names, children):
            object.__setattr__(obj, n, v)
        for n, v in zip(meta_names, aux):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def replace(obj: T, **changes: Any) -> T:
    """Return a copy of a pytree dataclass with some fields replaced, without re-validation."""
    new = object.__new__(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(new, f.name, changes.pop(f.name, getattr(obj, f.name)))
    if changes:
        raise TypeError(f"replace(): unknown fields {sorted(changes)} for {type(obj).__name__}")
    return new
