r"""The model protocol: one abstract type for everything that has a score.

A *model* is a noised family ``p_t`` seen through its score ``s(x, t) = grad_x log p_t(x)`` on ONE
sample ``x`` of shape ``(d,)`` and a scalar ``t``. Exact noised laws (``cj.diffuse``), composition
operators, mixtures of models and trained networks all subclass :class:`Model`; a plain function
``score_fn(x, t)`` or a foreign object with a ``.score`` method is adapted once, at the boundary,
by :func:`as_model`.

Capabilities are *declared*, never guessed: every model answers

* ``has_log_prob`` -- it has ``log_prob(x, t)`` (possibly unnormalized, with gradient ``score``)
  and ``log_prob_and_score(x, t)`` (both at once, sharing work);
* ``has_denoise`` -- it has ``denoise(x, t) = E[x_0 | x_t = x]``;
* ``columns_native`` -- its :meth:`Model.score_columns` (scores of many particles in
  particle-minor layout ``(d, n)``) is a batched implementation rather than a ``vmap`` of
  ``score``; the samplers' ``layout="auto"`` picks the particle-minor body from this.

Subclasses implement ``score`` and, where they declare the capability, ``_log_prob``,
``_log_prob_and_score`` (optional; defaults to the two calls) and ``_denoise``. The public
``log_prob`` / ``log_prob_and_score`` / ``denoise`` attributes then exist exactly when declared;
otherwise reading them raises :class:`CapabilityError` (an ``AttributeError``, so ``hasattr``
agrees with the declaration) whose message names the model and why.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

from ._checks import is_concrete
from ._pytree import pytree_dataclass, static_field

__all__ = ["CapabilityError", "FunctionModel", "Model", "as_model", "jit_when_concrete"]


class CapabilityError(AttributeError):
    """A model was asked for a capability it does not declare (``log_prob``, ``denoise``)."""


class Model(abc.ABC):
    """Abstract base of every model (see the module docstring).

    Class-level facts (subclasses override them as class attributes or, when they depend on the
    inputs, as properties): ``has_log_prob``, ``has_denoise``, ``columns_native``; and ``dim``,
    the data dimension ``d`` where known (``None`` otherwise; compositions check it).

    Models are pytrees whose numbers are leaves (``jit`` arguments: new numbers, no retrace);
    :func:`as_model` keeps that true for foreign objects too.
    """

    has_log_prob: ClassVar[bool] = False
    has_denoise: ClassVar[bool] = False
    columns_native: ClassVar[bool] = False
    dim: ClassVar[int | None] = None

    @abc.abstractmethod
    def score(self, x: Any, t: Any) -> jax.Array:
        """``grad_x log p_t(x)`` for one sample ``x (d,)`` and scalar ``t``; shape ``(d,)``."""

    # -- capabilities ---------------------------------------------------------------------
    def _why_not(self, capability: str) -> str:
        """Why ``capability`` is missing (subclasses name the inputs that lack it)."""
        return f"{type(self).__name__} does not declare it"

    def _missing(self, capability: str, why: str | None = None) -> CapabilityError:
        return CapabilityError(
            f"{type(self).__name__} has no {capability}: {why or self._why_not(capability)}"
        )

    def _log_prob(self, x: Any, t: Any) -> jax.Array:
        raise NotImplementedError

    def _log_prob_and_score(self, x: Any, t: Any) -> tuple[jax.Array, jax.Array]:
        return self._log_prob(x, t), self.score(x, t)

    def _denoise(self, x: Any, t: Any) -> jax.Array:
        raise NotImplementedError

    @property
    def log_prob(self) -> Callable:
        """``log_prob(x, t)``: ``log p_t(x)`` up to a constant (scalar); exists when
        ``has_log_prob``."""
        if not self.has_log_prob:
            raise self._missing("log_prob")
        return self._log_prob

    @property
    def log_prob_and_score(self) -> Callable:
        """``log_prob_and_score(x, t) -> (log p_t(x), s(x, t))`` sharing work (Metropolis
        samplers); exists when ``has_log_prob``."""
        if not self.has_log_prob:
            raise self._missing("log_prob_and_score", self._why_not("log_prob"))
        return self._log_prob_and_score

    @property
    def denoise(self) -> Callable:
        """``denoise(x, t) = E[x_0 | x_t = x]``, shape ``(d,)``; exists when ``has_denoise``."""
        if not self.has_denoise:
            raise self._missing("denoise")
        return self._denoise

    # -- batched scores --------------------------------------------------------------------
    def batched_score(self, X: Any, t: Any) -> jax.Array:
        """Scores of many particles ``X (n, d)`` -> ``(n, d)`` (default: ``vmap`` of
        :meth:`score`)."""
        return jax.vmap(self.score, (0, None))(X, t)

    def score_columns(self, X: Any, t: Any) -> jax.Array:
        """Scores in particle-minor layout ``X (d, n)`` -> ``(d, n)`` (column ``j`` is
        ``score(X[:, j], t)``). The default is a ``vmap`` over columns; families that declare
        ``columns_native`` override it with a batched implementation."""
        return jax.vmap(self.score, (1, None), 1)(X, t)


@pytree_dataclass
class FunctionModel(Model):
    """A model made of plain functions (kept as static metadata, so they must be hashable; a new
    lambda per call means a new trace under ``jit``).

    Args:
      score_fn: ``score_fn(x, t) -> (d,)``.
      log_prob_fn: optional ``log_prob_fn(x, t) -> ()`` whose gradient is ``score_fn``.
      denoise_fn: optional ``denoise_fn(x, t) -> (d,)`` (``E[x_0 | x_t = x]``).
      dim: optional data dimension (used to validate compositions).
    """

    score_fn: Callable = static_field()
    log_prob_fn: Callable | None = static_field(default=None)
    denoise_fn: Callable | None = static_field(default=None)
    dim: int | None = static_field(default=None)

    def __post_init__(self):
        for name in ("score_fn", "log_prob_fn", "denoise_fn"):
            f = getattr(self, name)
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int)
                                     or self.dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {self.dim!r}")

    @property
    def has_log_prob(self) -> bool:
        return self.log_prob_fn is not None

    @property
    def has_denoise(self) -> bool:
        return self.denoise_fn is not None

    def _why_not(self, capability: str) -> str:
        return f"no {capability}_fn was given"

    def score(self, x: Any, t: Any) -> jax.Array:
        return self.score_fn(x, t)

    def _log_prob(self, x: Any, t: Any) -> jax.Array:
        return self.log_prob_fn(x, t)

    def _denoise(self, x: Any, t: Any) -> jax.Array:
        return self.denoise_fn(x, t)


class _Caps(NamedTuple):
    """What a foreign object offers, read once when it is adapted (static, hashable)."""

    log_prob: bool = False
    log_prob_and_score: bool = False
    denoise: bool = False
    columns_native: bool = False


def _declared(obj: Any) -> _Caps:
    """Capabilities of an object being adapted: a :class:`Model`'s declarations, or, for a
    foreign object, which of the methods it has (the one place they are probed)."""
    if isinstance(obj, Model):
        return _Caps(obj.has_log_prob, obj.has_log_prob, obj.has_denoise, obj.columns_native)
    return _Caps(
        log_prob=callable(getattr(obj, "log_prob", None)),
        log_prob_and_score=callable(getattr(obj, "log_prob_and_score", None)),
        denoise=callable(getattr(obj, "denoise", None)),
        columns_native=bool(getattr(obj, "columns_native", False))
        and callable(getattr(obj, "score_columns", None)),
    )


class _Adapter(Model):
    """Shared behaviour of the two adapters of foreign objects (below): ``caps`` (a
    :class:`_Caps`) is what the wrapped ``obj`` offers."""

    @property
    def dim(self) -> int | None:
        d = getattr(self.obj, "dim", None)
        return d if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else None

    @property
    def has_log_prob(self) -> bool:
        return self.caps.log_prob or self.caps.log_prob_and_score

    @property
    def has_denoise(self) -> bool:
        return self.caps.denoise

    @property
    def columns_native(self) -> bool:
        return self.caps.columns_native

    def _why_not(self, capability: str) -> str:
        if isinstance(self.obj, Model):
            return self.obj._why_not(capability)
        return f"the wrapped {type(self.obj).__name__} has no callable .{capability}"

    def score(self, x, t):
        return self.obj.score(x, t)

    def _log_prob(self, x, t):
        if self.caps.log_prob:
            return self.obj.log_prob(x, t)
        return self.obj.log_prob_and_score(x, t)[0]

    def _log_prob_and_score(self, x, t):
        if self.caps.log_prob_and_score:
            return self.obj.log_prob_and_score(x, t)
        return self.obj.log_prob(x, t), self.obj.score(x, t)

    def _denoise(self, x, t):
        return self.obj.denoise(x, t)

    def batched_score(self, X, t):
        if isinstance(self.obj, Model):
            return self.obj.batched_score(X, t)
        return super().batched_score(X, t)

    def score_columns(self, X, t):
        if self.caps.columns_native:
            return self.obj.score_columns(X, t)
        return super().score_columns(X, t)


@pytree_dataclass
class _PytreeAdapter(_Adapter):
    """A foreign model that is a pytree of arrays: its leaves stay jit arguments."""

    obj: Any
    caps: _Caps = static_field(default=_Caps())


@pytree_dataclass
class _StaticAdapter(_Adapter):
    """A model that is not a pytree of arrays: kept static (hashed by identity)."""

    obj: Any = static_field()
    caps: _Caps = static_field(default=_Caps())


def _array_like(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex, bool))


def _arrays_only(obj: Any) -> bool:
    leaves = jax.tree.leaves(obj)
    if len(leaves) == 1 and leaves[0] is obj:  # not a pytree node
        return False
    return all(_array_like(leaf) for leaf in leaves)


@functools.cache
def _jitted(fn: Callable, static_argnums: tuple[int, ...]) -> Callable:
    return jax.jit(fn, static_argnums=static_argnums)


def jit_when_concrete(fn: Callable, obj: Any, *args: Any, static_argnums: tuple[int, ...] = ()):
    """``fn(obj, *args)``, run as ONE jitted program when every input is concrete.

    Called eagerly, an exact oracle such as ``Diffused.score`` dispatches dozens of ``jnp`` ops,
    and each op compiles on its own for every new shape (20-50 ms apiece on a CPU). Here the
    object ``obj`` (a pytree: its numbers are leaves) is an ARGUMENT of one cached ``jax.jit``
    of the module-level function ``fn``: one program per structure and shapes, reused by every
    object of that structure whatever its numbers, and the very program ``jax.jit`` of the same
    call gives (eager == jit, bit for bit). Under a transformation (a tracer anywhere in ``obj``
    or ``args``), or when ``obj`` has leaves that are not arrays, ``fn`` runs inline as before.

    ``fn`` must not check *values* of its inputs (under ``jit`` they are tracers): callers
    validate them first. ``static_argnums`` index ``args`` (hashable: ints, strings).
    """
    if is_concrete(obj, args) and _arrays_only(obj):
        static = tuple(i + 1 for i in static_argnums)
        return _jitted(fn, static)(obj, *args)
    return fn(obj, *args)


def as_model(obj: Any, name: str = "model") -> Model:
    """Return ``obj`` as a :class:`Model`.

    * a :class:`Model` whose leaves are arrays is returned as is (so ``as_model`` is
      idempotent); one with other leaves is held static (by identity), keeping its declarations;
    * any other object with a callable ``.score`` is adapted once: its capabilities
      (``log_prob``, ``log_prob_and_score``, ``denoise``, ``columns_native`` with
      ``score_columns``) are read when it is wrapped; a pytree of arrays stays a jit argument,
      anything else is static (by identity);
    * a plain callable ``score_fn(x, t)`` becomes a :class:`FunctionModel`;
    * a clean ``t = 0`` distribution (whose ``score`` takes no ``t``) raises ``TypeError``: use
      ``cj.diffuse(dist, schedule)``.

    Args:
      obj: the object to see as a model.
      name: how error messages call it (e.g. ``"conditionals[1]"``).

    Raises:
      TypeError: for anything else, naming ``name`` and the type found.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> m = cj.as_model(lambda x, t: -x)
      >>> type(m).__name__, m.has_log_prob, m.has_denoise, cj.as_model(m) is m
      ('FunctionModel', False, False, True)
      >>> p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), cj.VPSchedule())
      >>> cj.as_model(p) is p, p.has_log_prob, p.has_denoise
      (True, True, True)
    """
    from .distributions.base import Distribution

    if isinstance(obj, Distribution):
        raise TypeError(
            f"{name} is a {type(obj).__name__} (a clean t = 0 law, not a model with "
            "score(x, t)); wrap it with cj.diffuse(dist, schedule), or use "
            "composed_distribution() for exact t = 0 laws"
        )
    if isinstance(obj, Model):
        return obj if _arrays_only(obj) else _StaticAdapter(obj, _declared(obj))
    if callable(getattr(obj, "score", None)):
        caps = _declared(obj)
        return _PytreeAdapter(obj, caps) if _arrays_only(obj) else _StaticAdapter(obj, caps)
    if callable(obj):
        return FunctionModel(obj)
    raise TypeError(
        f"{name} must be a model (an object with .score(x, t)) or a function score_fn(x, t), "
        f"got {type(obj).__name__}"
    )


def _score_of(model: Any, x: Any, t: Any) -> Any:
    return model.score(x, t)


def score_shape(model: Any, x: Any, t: Any) -> Any:
    """``jax.eval_shape(model.score, x, t)``, traced once per model *structure*.

    A bound method is a new function object on every access, so ``jax.eval_shape(model.score,
    ...)`` retraces the whole score each time (0.25 s for a composition of three MLP networks);
    passing a pytree model as an ARGUMENT of one module-level function lets JAX reuse the trace
    for any model with the same tree structure and leaf shapes (new parameters included). A
    model that is not a pytree (a leaf) takes the bound-method path."""
    if jax.tree_util.all_leaves([model]):
        return jax.eval_shape(model.score, x, t)
    return jax.eval_shape(_score_of, model, x, t)
