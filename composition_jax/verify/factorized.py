r"""Exact decision of Factorized Conditionals (Definition 5.2 of Bradley et al. 2025).

A tuple ``(p_b, p_1, ..., p_k)`` on ``R^d`` satisfies FC with the disjoint blocks
``M_1, ..., M_k`` (and ``M_b`` = the rest) when

1. the background factorizes: ``p_b = p_b|_{M_b} prod_j p_b|_{M_j}``, and
2. each conditional is "background plus its own block": ``p_i = p_i|_{M_i} ⊗ p_b|_{M_i^c}``.

**How the decision is exact.** Every input with a closed form (Gaussian, GaussianMixture,
Product of those, LinearPushforward with a closed form) is a finite Gaussian mixture. Finite
Gaussian mixtures are identifiable: two are the same law iff, after merging components with equal
``(mean, cov)`` and dropping zero weights, they have the same multiset of
``(weight, mean, cov)``. Marginals of mixtures are mixtures, and the product of two mixtures on
disjoint coordinates is the mixture over pairs of components (block-diagonal covariances). Both
conditions are equalities of such laws and are decided by comparing canonical component lists,
with tolerance ``1000 eps`` of the inputs' dtype relative to the parameters' scale (this is the
only approximation: float rounding). A Gaussian is the one-component case: condition 1 is
block-diagonality of ``Sigma_b``; condition 2 is ``mu_i = mu_b``, ``Sigma_i = Sigma_b`` off
``M_i`` and ``Sigma_i[M_i, M_i^c] = 0``. Mixtures with more than 4096 (product) components are
refused.

**Block discovery** (``blocks=None``): ``D_i`` = coordinates where ``p_i`` and ``p_b`` differ
(1-D marginal laws, or the rows of the covariance). Any valid ``M_i`` contains ``D_i`` and is a
union of connected components of the graph linking coordinates ``j, k`` that are dependent
(pairwise: the ``{j, k}`` marginal of ``p_b`` or ``p_i`` is not the product of its 1-D marginals,
which includes non-zero covariance). ``M_i`` is taken as the smallest such union. For Gaussians
(pairwise independence = independence) this is exactly the minimal valid block, so the discovery
is complete; for mixtures whose coordinates are pairwise but not jointly independent the minimal
block may be larger: the exact check then reports failure and explicit ``blocks`` can be given.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from . import _laws
from .projective import check_blocks

__all__ = ["FCResult", "factorized_conditionals"]


@dataclasses.dataclass(frozen=True)
class FCResult:
    """Decision of :func:`factorized_conditionals`.

    Attributes:
      holds: whether the tuple satisfies Factorized Conditionals with ``blocks``.
      blocks: the blocks ``M_i`` (given or discovered), one per conditional.
      background_block: ``M_b``, the coordinates in no block.
      condition1: whether the background factorizes over the partition.
      condition2: per conditional, whether ``p_i = p_i|M_i ⊗ p_b|M_i^c``.
      reasons: human-readable explanations of every failure (empty when ``holds``).
      discovered: whether the blocks were discovered.
    """

    holds: bool
    blocks: tuple[tuple[int, ...], ...]
    background_block: tuple[int, ...]
    condition1: bool
    condition2: tuple[bool, ...]
    reasons: tuple[str, ...]
    discovered: bool

    def __bool__(self) -> bool:
        return self.holds

    def to_dict(self) -> dict:
        return {
            "holds": self.holds,
            "blocks": [list(b) for b in self.blocks],
            "background_block": list(self.background_block),
            "condition1": self.condition1,
            "condition2": list(self.condition2),
            "reasons": list(self.reasons),
            "discovered": self.discovered,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        how = "discovered" if self.discovered else "given"
        head = "HOLDS" if self.holds else "FAILS"
        lines = [f"Factorized Conditionals {head} (blocks {how}: "
                 f"{[list(b) for b in self.blocks]}, background block "
                 f"{list(self.background_block)})"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


# ------------------------------------------------------------------------ canonical mixtures
class _Mix:
    """Canonical mixture: merged components, float64 numpy."""

    def __init__(self, w, m, c, tol):
        self.tol = tol
        w, m, c = np.asarray(w, np.float64), np.asarray(m, np.float64), np.asarray(c, np.float64)
        keep = w > tol
        w, m, c = w[keep], m[keep], c[keep]
        K = w.shape[0]
        if K > 1:
            scale = max(1.0, float(np.max(np.abs(m))), float(np.max(np.abs(c))))
            key = np.concatenate([m, c.reshape(K, -1)], 1)
            # identical components (to tolerance) share a rounded key
            _, first, label = np.unique(np.round(key / (tol * scale)), axis=0,
                                        return_index=True, return_inverse=True)
            w = np.bincount(label.reshape(-1), weights=w, minlength=first.shape[0])
            m, c = m[first], c[first]
        self.w, self.m, self.c = w, m, c

    @property
    def dim(self):
        return self.m.shape[1]

    def marginal(self, idx):
        ix = np.asarray(idx, int)
        return _Mix(self.w, self.m[:, ix], self.c[:, ix][:, :, ix], self.tol)


def _product(parts: Sequence[tuple[_Mix, Sequence[int]]], d: int, tol: float) -> _Mix:
    """Independent product of mixtures placed on disjoint coordinate sets covering ``range(d)``."""
    sizes = [p.w.shape[0] for p, _ in parts]
    if int(np.prod(sizes)) > _laws.MAX_COMPONENTS:
        raise NotImplementedError(
            f"the product of marginals has {int(np.prod(sizes))} components "
            f"(> {_laws.MAX_COMPONENTS}); pass smaller blocks or simpler laws"
        )
    total = int(np.prod(sizes))
    grids = np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij")
    w = np.ones((total,))
    m = np.zeros((total, d))
    c = np.zeros((total, d, d))
    for (p, idx), g in zip(parts, grids):
        ix = np.asarray(idx, int)
        k = g.reshape(-1)
        w = w * p.w[k]
        m[:, ix] = p.m[k]
        c[:, ix[:, None], ix[None, :]] = p.c[k]
    return _Mix(w, m, c, tol)


def _equal(a: _Mix, b: _Mix) -> bool:
    if a.w.shape[0] != b.w.shape[0]:
        return False
    tol = a.tol
    scale = max(1.0, float(np.max(np.abs(a.m))), float(np.max(np.abs(a.c))))
    used = np.zeros(b.w.shape[0], bool)
    for k in range(a.w.shape[0]):
        dm = np.max(np.abs(b.m - a.m[k]), -1)
        dc = np.max(np.abs(b.c - a.c[k]).reshape(b.w.shape[0], -1), -1)
        dw = np.abs(b.w - a.w[k])
        ok = (dm <= tol * scale) & (dc <= tol * scale) & (dw <= tol) & ~used
        if not ok.any():
            return False
        used[np.argmax(ok)] = True
    return True


def _moments(mx: _Mix):
    mu = mx.w @ mx.m
    dm = mx.m - mu
    return mu, np.einsum("k,kij->ij", mx.w, mx.c) + np.einsum("k,ki,kj->ij", mx.w, dm, dm)


def _to_mix(dist, name, tol):
    mix = _laws.as_mixture(dist)
    if mix is None:
        raise NotImplementedError(
            f"{name} ({type(dist).__name__}) has no closed form as a Gaussian mixture (or more "
            f"than {_laws.MAX_COMPONENTS} components); factorized_conditionals decides "
            "Gaussian, GaussianMixture, Product and closed-form LinearPushforward tuples"
        )
    return _Mix(*mix, tol)


def _independent(mx: _Mix, a, b) -> bool:
    joint = mx.marginal(list(a) + list(b))
    k = len(a)
    prod = _product([(mx.marginal(a), range(k)), (mx.marginal(b), range(k, k + len(b)))],
                    k + len(b), mx.tol)
    return _equal(joint, prod)


def _differing_coords(pi: _Mix, pb: _Mix, coords) -> list[int]:
    """Coordinates (among ``coords``) where 1-D marginals or covariance rows differ."""
    mu_i, S_i = _moments(pi)
    mu_b, S_b = _moments(pb)
    scale = max(1.0, float(np.max(np.abs(S_b))), float(np.max(np.abs(mu_b))))
    out = []
    cs = list(coords)
    for j in cs:
        row = np.max(np.abs(S_i[j, cs] - S_b[j, cs])) > pi.tol * scale
        if row or not _equal(pi.marginal([j]), pb.marginal([j])):
            out.append(j)
    return out


def _check(pb: _Mix, pis: list[_Mix], blocks, d, tol, labels=None):
    labels = list(range(len(blocks))) if labels is None else list(labels)
    rest = tuple(j for j in range(d) if j not in {k for b in blocks for k in b})
    reasons = []
    parts = [b for b in blocks] + ([rest] if rest else [])
    names = [f"block of conditional {labels[i]}" for i in range(len(blocks))] + (
        ["background block"] if rest else [])
    cond1 = _equal(pb, _product([(pb.marginal(p), p) for p in parts], d, tol))
    if not cond1:
        _, Sb = _moments(pb)
        for (ia, a), (ib, b) in itertools.combinations(enumerate(parts), 2):
            if not _independent(pb, a, b):
                cross = Sb[np.ix_(a, b)]
                where = sorted({int(a[r]) for r in np.nonzero(np.abs(cross) > tol)[0]}
                               | {int(b[c]) for c in np.nonzero(np.abs(cross) > tol)[1]})
                extra = f" (non-zero covariance on coordinates {where})" if where else ""
                reasons.append(
                    f"condition 1 fails: the background does not factorize: its {names[ia]} "
                    f"{list(a)} and {names[ib]} {list(b)} are dependent{extra}")
        if not reasons:
            reasons.append("condition 1 fails: the background is not the product of its block "
                           "marginals (blocks are pairwise but not jointly independent)")
    cond2 = []
    for i0, (pi, b) in enumerate(zip(pis, blocks)):
        i = labels[i0]
        comp = tuple(j for j in range(d) if j not in b)
        if comp:
            target = _product([(pi.marginal(b), b), (pb.marginal(comp), comp)], d, tol)
        else:
            target = pi
        ok = _equal(pi, target)
        cond2.append(ok)
        if ok:
            continue
        diff = _differing_coords(pi.marginal(comp), pb.marginal(comp), range(len(comp)))
        if diff:
            reasons.append(
                f"condition 2 fails: conditional {i} differs from the background off its block "
                f"{list(b)} on coordinates {[comp[j] for j in diff]}")
            continue
        if not _equal(pi.marginal(comp), pb.marginal(comp)):
            reasons.append(
                f"condition 2 fails: conditional {i}'s joint law off its block {list(b)} differs "
                f"from the background's (coordinates {list(comp)})")
            continue
        _, Si = _moments(pi)
        cross = np.abs(Si[np.ix_(b, comp)]) > tol
        where = sorted({comp[c] for c in np.nonzero(cross)[1]})
        extra = f" (non-zero covariance with coordinates {where})" if where else ""
        reasons.append(
            f"condition 2 fails: under conditional {i} its block {list(b)} is not independent "
            f"of the other coordinates{extra}")
    return cond1, tuple(cond2), tuple(reasons), rest


def _components(nodes, edges):
    """Connected components (lists) of an undirected graph on ``nodes``."""
    parent = {v: v for v in nodes}

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in edges:
        parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for v in nodes:
        comps.setdefault(find(v), []).append(v)
    return list(comps.values())


def factorized_conditionals(background: Any, conditionals: Sequence[Any],
                            blocks: Sequence[Any] | None = None) -> FCResult:
    r"""Decide exactly whether ``(background, *conditionals)`` satisfies Factorized Conditionals.

    Args:
      background: ``p_b`` (Gaussian, GaussianMixture, Product, closed-form LinearPushforward, or
        a ``Diffused`` of one).
      conditionals: ``k`` such distributions of the same dimension.
      blocks: optional ``k`` disjoint index sets ``M_i`` (conditional ``i`` is 0-based); when
        ``None`` the minimal blocks are discovered (see module docstring).

    Returns:
      :class:`FCResult` with ``.holds``, ``.blocks``, ``.reasons`` (which condition fails and on
      which coordinates), ``.to_dict()``.

    Raises:
      ValueError: mismatched dimensions; blocks that overlap, are out of range, or whose number
        differs from the number of conditionals.
      NotImplementedError: an input that is not a (closed-form) Gaussian mixture.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
      >>> p1 = cj.Gaussian(jnp.array([1.0, 0.0]), jnp.eye(2))
      >>> factorized_conditionals(pb, [p1]).blocks
      ((0,),)
    """
    bg = _laws.unwrap(background, "background")
    conds = [_laws.unwrap(c, f"conditionals[{i}]") for i, c in enumerate(conditionals)]
    if not conds:
        raise ValueError("conditionals must not be empty")
    d = bg.dim
    for i, c in enumerate(conds):
        if c.dim != d:
            raise ValueError(f"conditionals[{i}] has dim {c.dim} but background has dim {d}")
    dts = [bg.dtype] + [c.dtype for c in conds]
    eps = max(float(jnp.finfo(dt).eps) for dt in dts)
    tol = 1000.0 * eps
    pb = _to_mix(bg, "background", tol)
    pis = [_to_mix(c, f"conditionals[{i}]", tol) for i, c in enumerate(conds)]
    if blocks is not None:
        blks = check_blocks(blocks, d, len(conds))
        c1, c2, reasons, rest = _check(pb, pis, blks, d, tol)
        holds = c1 and all(c2)
        return FCResult(holds, blks, rest, c1, c2, reasons, False)

    # ---- discovery
    pairs = list(itertools.combinations(range(d), 2))
    dep_b = {(a, b) for a, b in pairs if not _independent(pb, [a], [b])}
    found, pre_reasons = [], []
    for i, pi in enumerate(pis):
        D = _differing_coords(pi, pb, range(d))
        if not D:
            found.append(())
            continue
        edges = dep_b | {(a, b) for a, b in pairs if not _independent(pi, [a], [b])}
        comps = _components(list(range(d)), edges)
        M = sorted(j for comp in comps if set(comp) & set(D) for j in comp)
        found.append(tuple(M))
    owner: dict[int, int] = {}
    overlaps = []
    for i, b in enumerate(found):
        for j in b:
            if j in owner:
                overlaps.append((owner[j], i, j))
            else:
                owner[j] = i
    if overlaps:
        by_pair: dict[tuple[int, int], list[int]] = {}
        for a, b, j in overlaps:
            by_pair.setdefault((a, b), []).append(j)
        for (a, b), js in by_pair.items():
            pre_reasons.append(
                f"no disjoint blocks exist: conditionals {a} and {b} both differ from the "
                f"background (or depend on such coordinates) on coordinates {sorted(js)}")
        rest = tuple(j for j in range(d) if j not in owner)
        return FCResult(False, tuple(found), rest, False, tuple(False for _ in found),
                        tuple(pre_reasons), True)
    nonempty = [i for i, b in enumerate(found) if b]
    notes = tuple(f"conditional {i} equals the background (empty block)"
                  for i, b in enumerate(found) if not b)
    # check with the non-empty blocks (an empty block is trivially fine for condition 2)
    c1, c2s, reasons, rest = _check(pb, [pis[i] for i in nonempty],
                                    [found[i] for i in nonempty], d, tol, labels=nonempty)
    c2 = [True] * len(found)
    for k, i in enumerate(nonempty):
        c2[i] = c2s[k]
    holds = c1 and all(c2)
    return FCResult(holds, tuple(found), rest, c1, tuple(c2), reasons + notes, True)
