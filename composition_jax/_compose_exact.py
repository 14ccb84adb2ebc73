r"""Exact ``t = 0`` laws of compositions: ``C[p] ∝ p_b prod_i (p_i / p_b)^{w_i}``.

Write the composition as a product of powers ``prod_j q_j^{e_j}`` with ``e_b = 1 - sum_i w_i`` and
``e_i = w_i`` (the exponents sum to one). Each Gaussian factor ``N(m, S)`` is
``exp(-1/2 x^T P x + h^T x + c)`` with ``P = S^{-1}``, ``h = P m`` and
``c = -1/2 m^T P m - 1/2 log det(2 pi S)``; powers scale ``(P, h, c)``. A Gaussian mixture to a
non-negative integer power ``n`` is a mixture over ``n``-tuples of components, so the whole
composition is a sum over the product of the component index sets of ``exp(quadratic)`` terms,
each with precision ``Λ``, linear term ``h`` and constant ``c``. Term ``n`` integrates to
``exp(c + 1/2 h^T Λ^{-1} h) (2 pi)^{d/2} det(Λ)^{-1/2}`` when ``Λ`` is positive definite, which
gives the mixture weights (``softmax`` of the log-integrals), the component means ``Λ^{-1} h`` and
covariances ``Λ^{-1}``. Everything goes through eigendecompositions (the inputs' stored
``eigh`` factors and one ``eigh`` of each ``Λ``): no explicit inverse of an input covariance.

Structure is kept where it exists, as each family decides (``Distribution._compose_parts``):
``Product`` (and ``FactorMixture``) inputs sharing a block structure are composed block by block
(cost additive), and ``LinearPushforward`` inputs sharing one matrix and shift are composed in the
base space and pushed forward (Lemma 6.2: ``C[A# p] = A# C[p]``). The mixture form of an input is
its own answer too (``Distribution.as_gaussian_mixture``): no switch over families here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float_array, is_concrete
from .distributions import Diffused, Distribution, Gaussian, GaussianMixture

__all__ = ["composed_distribution"]

_LOG_2PI = math.log(2.0 * math.pi)
_MAX_COMPONENTS = 1 << 16


def _names(k: int) -> list[str]:
    return ["background"] + [f"conditionals[{i}]" for i in range(k)]


def _prepare(background: Any, conditionals: Any, weights: Any):
    if isinstance(conditionals, (str, bytes)) or not isinstance(conditionals, Sequence):
        raise TypeError(
            "conditionals must be a sequence of distributions, got "
            f"{type(conditionals).__name__}"
        )
    conds = tuple(conditionals)
    if not conds:
        raise ValueError("conditionals must not be empty (got 0 conditionals)")
    dists = []
    for name, d in zip(_names(len(conds)), (background,) + conds):
        if isinstance(d, Diffused):
            d = d.dist
        if not isinstance(d, Distribution):
            raise TypeError(
                f"{name} must be a Distribution (a clean t = 0 law, e.g. cj.Gaussian), got "
                f"{type(d).__name__}"
            )
        dists.append(d)
    dims = [d.dim for d in dists]
    if len(set(dims)) > 1:
        found = ", ".join(f"{n}.dim={d}" for n, d in zip(_names(len(conds)), dims))
        raise ValueError(f"all inputs must have the same dimension; found {found}")
    k = len(conds)
    if weights is None:
        w = jnp.ones((k,), jnp.result_type(float))
    else:
        if isinstance(weights, (bool, np.bool_)):
            raise TypeError("weights must be real numbers, got bool")
        w = as_float_array(weights, "weights")
        if w.shape != (k,):
            raise ValueError(
                f"weights must have shape ({k},) (one per conditional), got shape "
                f"{tuple(w.shape)}"
            )
        if is_concrete(w) and not np.all(np.isfinite(np.asarray(w))):
            raise ValueError(f"weights must be finite, got {np.asarray(w).tolist()}")
    return dists, w


def _same_law(a: Distribution, b: Distribution) -> bool:
    """Whether two distributions are the same object or have equal concrete parameters."""
    if a is b:
        return True
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb or not is_concrete(la, lb):
        return False
    return all(
        np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


# ----------------------------------------------------------------------------------------
# Gaussian / mixture form
# ----------------------------------------------------------------------------------------


def _as_mixture(d: Distribution, name: str):
    """``(log_weights (K,), means (K, d), covs (K, d, d), is_one_gaussian)`` of ``d``'s exact
    Gaussian-mixture form (the family's own answer, ``Distribution._gaussian_mixture``), or the
    family's ``NotImplementedError`` naming ``name``. A one-component form is a Gaussian: any
    real power of it is again one."""
    mix = d._gaussian_mixture(_MAX_COMPONENTS, name)
    return mix.log_weights, mix.means, mix.covs, mix.num_components == 1


def _natural(log_w, means, covs):
    """Per-component natural parameters ``(P, h, c)`` of ``w_k N(m_k, S_k)`` via ``eigh``."""
    lam, u = jnp.linalg.eigh(covs)
    inv = 1.0 / lam
    um = jnp.einsum("kji,kj->ki", u, means)  # U^T m
    prec = jnp.einsum("kij,kj,klj->kil", u, inv, u)
    h = jnp.einsum("kij,kj->ki", u, um * inv)
    d = means.shape[-1]
    c = log_w - 0.5 * jnp.sum(um * um * inv, -1) - 0.5 * jnp.sum(jnp.log(lam), -1) - 0.5 * d * _LOG_2PI
    return prec, h, c


def _fmt(a) -> str:
    return np.array2string(np.asarray(a, np.float64), precision=4, separator=", ")


def _mixture_power(e: float, tol: float, label: str) -> int:
    """The exponent ``e`` of a Gaussian mixture as the non-negative integer power it must be,
    else the ``NotImplementedError`` naming ``label``."""
    n_int = round(e)
    if abs(e - n_int) > tol or n_int < 0:
        raise NotImplementedError(
            f"{label} is a Gaussian mixture with exponent {e:.6g} in "
            "C[p] ∝ p_b^(1 - sum_i w_i) prod_i p_i^(w_i) (identical inputs add their "
            "exponents); a mixture to a non-integer or negative power is not a mixture and "
            "has no closed form (only non-negative integer exponents do; e.g. Bayes "
            "composition with a mixture background needs exactly one conditional)"
        )
    return n_int


def _closed_form(dists: list, w: jax.Array) -> Distribution:
    k = len(dists) - 1
    names = _names(k)
    dt = jnp.result_type(*[d.dtype for d in dists])
    w = w.astype(dt)
    concrete_w = is_concrete(w)
    if concrete_w:  # exponent bookkeeping in float64, tolerances from the input dtype
        wn = np.asarray(w, np.float64)
        exps: list[Any] = [1.0 - float(wn.sum())] + [float(v) for v in wn]
        tol = 1e3 * float(jnp.finfo(dt).eps) * (1.0 + float(np.abs(wn).sum()))
    else:
        exps = [1.0 - jnp.sum(w)] + [w[i] for i in range(k)]
        tol = 0.0
    # Merge identical inputs (sum their exponents): under Factorized Conditionals a conditional's
    # off-block factors are the background's and cancel exactly.
    groups: list[tuple[Distribution, Any, list[str]]] = []
    for d, e, n in zip(dists, exps, names):
        for gi, (gd, ge, gn) in enumerate(groups):
            if _same_law(gd, d):
                groups[gi] = (gd, ge + e, gn + [n])
                break
        else:
            groups.append((d, e, [n]))
    forms = [(_as_mixture(d, " = ".join(n)), e, n) for d, e, n in groups]
    has_mixture = any(not single for (_, _, _, single), _, _ in forms)
    if has_mixture and not concrete_w:
        raise ValueError(
            "weights must be concrete (not traced) when a Gaussian mixture is composed: "
            "mixture exponents must be checked to be non-negative integers"
        )
    # every mixture's power before any algebra: cj.sample's law check of a Bayes-style
    # composition (a mixture background to a negative power) otherwise spent 0.6 s of its first
    # call on the background's natural parameters before this error (d = 2, K = 8). None: a
    # Gaussian factor or a cancelled exponent (with traced weights every factor is a Gaussian).
    powers = [_mixture_power(float(e), tol, " = ".join(n))
              if concrete_w and not single and abs(float(e)) > tol else None
              for (_, _, _, single), e, n in forms]
    d = dists[0].dim
    prec = jnp.zeros((1, d, d), dt)
    lin = jnp.zeros((1, d), dt)
    const = jnp.zeros((1,), dt)
    used = []  # (name, exponent, P, h) of the Gaussian factors, for error messages
    for ((lw, means, covs, single), e, n), power in zip(forms, powers):
        label = " = ".join(n)
        if concrete_w:
            ev = float(e)
            if abs(ev) <= tol:  # cancelled (e.g. a conditional's off-block background factor)
                continue
        p, h, c = _natural(lw.astype(dt), means.astype(dt), covs.astype(dt))
        if single:
            ee = jnp.asarray(e, dt)
            prec, lin, const = prec + ee * p, lin + ee * h, const + ee * c
            used.append((label, e, p[0]))
            continue
        for _ in range(power):
            m0, m1 = prec.shape[0], p.shape[0]
            if m0 * m1 > _MAX_COMPONENTS:
                raise NotImplementedError(
                    f"the composed mixture would have more than {_MAX_COMPONENTS} components"
                )
            prec = (prec[:, None] + p[None]).reshape(-1, d, d)
            lin = (lin[:, None] + h[None]).reshape(-1, d)
            const = (const[:, None] + c[None]).reshape(-1)
            used.append((label, 1.0, None))
    prec = 0.5 * (prec + jnp.swapaxes(prec, -1, -2))
    mu, v = jnp.linalg.eigh(prec)
    if is_concrete(mu):
        mun = np.asarray(mu, np.float64)
        bad = np.nonzero(~(mun.min(-1) > 0))[0]
        if bad.size:
            j = int(bad[0])
            neg = mun[j][mun[j] <= 0]
            direction = np.asarray(v[j], np.float64)[:, int(np.argmin(mun[j]))]
            along = "; ".join(
                f"{lab} (exponent {float(e):.4g}): v^T P v = "
                f"{float(direction @ np.asarray(p, np.float64) @ direction):.4g}"
                for lab, e, p in used if p is not None
            )
            comp = f" (mixture component {j} of {mun.shape[0]})" if mun.shape[0] > 1 else ""
            raise ValueError(
                "composition is not normalizable: the composed precision "
                "Λ = P_b + sum_i w_i (P_i - P_b)" + comp + " is not positive definite; "
                f"non-positive eigenvalue(s) {_fmt(neg)} with weights {_fmt(w)}; along the "
                f"worst eigenvector v = {_fmt(direction)} the inputs' precisions (inverse "
                f"covariances) give: {along}. Lower the weights that multiply a larger "
                "background precision, or widen the conditionals."
            )
    inv = 1.0 / mu
    vh = jnp.einsum("nji,nj->ni", v, lin)
    means = jnp.einsum("nij,nj->ni", v, vh * inv)
    covs = jnp.einsum("nij,nj,nlj->nil", v, inv, v)
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    if prec.shape[0] == 1:  # a one-component composition (e.g. mixtures that cancelled)
        return Gaussian(means[0], covs[0])
    log_z = const + 0.5 * jnp.sum(vh * vh * inv, -1) + 0.5 * d * _LOG_2PI - 0.5 * jnp.sum(
        jnp.log(mu), -1
    )
    weights = jax.nn.softmax(log_z)
    return GaussianMixture(weights, means, covs)


def composed_distribution(background: Any, conditionals: Sequence[Any],
                          weights: Any = None) -> Distribution:
    """See :func:`composition_jax.compose.composed_distribution`."""
    dists, w = _prepare(background, conditionals, weights)
    return _compose(dists, w)


def _compose(dists: list, w: jax.Array) -> Distribution:
    # Structure first, where every input shares the first one's (the family decides: blockwise
    # for Products, Lemma 6.2 in the base space for one shared pushforward), else the mixture form.
    out = dists[0]._compose_parts(dists[1:], lambda parts: _compose(list(parts), w))
    return _closed_form(dists, w) if out is None else out
