r"""Score locality: how much the score of one block of coordinates depends on another.

For a model with score ``s(x, t)`` and a partition of (some of) the coordinates into blocks
``B_1..B_m``, the Jacobian ``J(x, t) = d s / d x`` splits into blocks ``J_ab = d s_{B_a} /
d x_{B_b}``. Under Factorized Conditionals the composed score is, block by block, one model's
own score of its own block (Bradley et al. 2025, Thm 5.3: ``C[p^t]`` factorizes over the
partition at every ``t``), so every off-diagonal block vanishes identically; a Bayes composition
over the unconditional background couples the blocks through the mixture's posterior. This is
the "local mechanism" of compositional generalization in Bradley (2025, arXiv 2509.16447):
locality of the score is what lets a model compose beyond its training configurations.

:func:`score_locality` measures it on particles: ``jacfwd`` of the score per particle (``d``
Jacobian-vector products each; exact, for moderate ``d``), block Frobenius norms averaged over
particles, per noise level, with the Monte Carlo standard error of the off-block ratio.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models import as_model, score_shape

__all__ = ["LocalityReport", "score_locality"]


class LocalityReport(NamedTuple):
    """Block structure of the score Jacobian (``m`` blocks; ``T`` times when ``t`` is an array).

    Attributes:
      block_norms: ``(m, m)`` (or ``(T, m, m)``): entry ``(a, b)`` is the particle mean of
        ``||d s_{B_a} / d x_{B_b}||_F``.
      off_block_ratio: ``()`` (or ``(T,)``):
        ``sqrt(sum_i ||J_off(x_i)||_F^2 / sum_i ||J(x_i)||_F^2)`` with ``J`` restricted to the
        blocks' coordinates and ``J_off`` its off-diagonal blocks (0: block-local score).
      blocks: the blocks, as tuples of coordinate indices.
      t: the time(s).
      off_block_ratio_se: same shape as ``off_block_ratio``: its Monte Carlo standard error
        when the particles are i.i.d. draws of a law (delta method for the ratio of means
        ``R^2 = mean(o_i) / mean(q_i)`` of the per-particle off-block and total squared norms:
        ``se(R^2) = sd(o_i - R^2 q_i) / (sqrt(n) mean(q_i))``, ``se(R) = se(R^2) / (2 R)``;
        0 where ``R = 0``, ``nan`` for one particle).
    """

    block_norms: jax.Array
    off_block_ratio: jax.Array
    blocks: tuple
    t: jax.Array
    off_block_ratio_se: jax.Array | None = None


def _check_blocks(blocks: Any, d: int) -> tuple:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise TypeError(f"blocks must be a non-empty sequence of index lists, got {blocks!r}")
    out, seen = [], set()
    for a, b in enumerate(blocks):
        if isinstance(b, (str, bytes)) or not isinstance(b, Sequence) or not b:
            raise ValueError(f"blocks[{a}] must be a non-empty list of indices, got {b!r}")
        idx = []
        for j in b:
            if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < d:
                raise ValueError(f"blocks[{a}] has index {j!r} outside range({d})")
            if int(j) in seen:
                raise ValueError(f"blocks overlap: index {int(j)} appears twice (blocks[{a}])")
            seen.add(int(j))
            idx.append(int(j))
        out.append(tuple(idx))
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("blocks", "d"))
def _norms(model, x, ts, blocks, d):
    mask = np.zeros((len(blocks), d))
    for a, b in enumerate(blocks):
        mask[a, list(b)] = 1.0
    M = jnp.asarray(mask, x.dtype)
    off = 1.0 - jnp.eye(len(blocks), dtype=x.dtype)

    def at(t):
        # one particle at a time (lax.map, not vmap): with XLA:CPU's backend optimization off,
        # the batched forward-mode derivative of a max-shifted softmax (Gaussian mixtures) was
        # measured to give NaN for some particles (the max's tie mask came out empty)
        J = jax.lax.map(lambda xi: jax.jacfwd(model.score)(xi, t), x)  # (n, d, d)
        sq = jnp.einsum("ad,ndk,bk->nab", M, J * J, M)  # squared block norms per particle
        tiny = jnp.finfo(x.dtype).tiny
        q = jnp.sum(sq, (1, 2))  # per particle: total and off-block squared norms
        o = jnp.sum(sq * off[None], (1, 2))
        r2 = jnp.sum(o) / jnp.maximum(jnp.sum(q), tiny)
        ratio = jnp.sqrt(r2)
        n = x.shape[0]
        se_r2 = jnp.std(o - r2 * q, ddof=1) / (jnp.sqrt(n) * jnp.maximum(jnp.mean(q), tiny))
        se = jnp.where(ratio > 0, se_r2 / (2.0 * jnp.where(ratio > 0, ratio, 1.0)), 0.0)
        return jnp.mean(jnp.sqrt(sq), 0), ratio, se

    return jax.lax.map(at, ts)


def score_locality(model: Any, x: Any, t: Any, blocks: Sequence[Sequence[int]]
                   ) -> LocalityReport:
    r"""Block norms of the score Jacobian ``d s(x, t) / d x`` over particles (module doc).

    Args:
      model: anything with ``score(x, t)`` (exact ``cj.diffuse`` families, compositions,
        trained networks) or a function ``score_fn(x, t)``.
      x: particles ``(n, d)``.
      t: a time, or an array ``(T,)`` of times (one report row per time).
      blocks: disjoint lists of coordinate indices (coordinates in no block are ignored).

    Returns:
      A :class:`LocalityReport`; exact up to floating point (no sampling beyond the given
      particles).

    Raises:
      ValueError: ``x`` not 2-D, ``t`` not a scalar or 1-D array, overlapping or out-of-range
        blocks, a score of the wrong shape.
      TypeError: ``blocks`` not a sequence of index lists.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.array([[1.0, 0.5], [0.5, 1.0]])), sch)
      >>> r = cj.verify.score_locality(p, jnp.zeros((4, 2)), 0.1, [[0], [1]])
      >>> r.block_norms.shape, bool(r.off_block_ratio > 0.1)
      ((2, 2), True)
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating array (n, d), got shape {tuple(x.shape)} and "
                         f"dtype {x.dtype}")
    _n, d = x.shape
    blocks = _check_blocks(blocks, d)
    t_arr = jnp.asarray(t, x.dtype)
    if t_arr.ndim > 1:
        raise ValueError(f"t must be a scalar or a 1-D array of times, got shape {t_arr.shape}")
    model = as_model(model)
    out = score_shape(model, jax.ShapeDtypeStruct((d,), x.dtype),
                      jax.ShapeDtypeStruct((), x.dtype))
    if out.shape != (d,):
        raise ValueError(f"model.score(x, t) must return shape ({d},), got {out.shape}")
    norms, ratio, se = _norms(model, x, jnp.atleast_1d(t_arr), blocks, d)
    if t_arr.ndim == 0:
        norms, ratio, se = norms[0], ratio[0], se[0]
    return LocalityReport(norms, ratio, blocks, t_arr, se)
