r"""Composition operators on models: score functions in, score functions out.

A *model* (:class:`composition_jax.models.Model`) has ``.score(x, t)`` acting on ONE sample ``x``
of shape ``(d,)`` and a scalar ``t``, and declares what else it has: ``has_log_prob``
(``.log_prob(x, t)``, possibly unnormalized, and ``.log_prob_and_score(x, t)``), ``has_denoise``
(``.denoise(x, t) = E[x_0 | x_t = x]``) and ``columns_native`` (a batched ``.score_columns``).
A bare function ``score_fn(x, t)`` or a foreign object with ``.score`` is accepted wherever a
model is (see :func:`~composition_jax.models.as_model`).

The operators (Bradley et al. 2025, Definition 5.1 and eqs. (5)-(6); Liu et al. 2022; Ho &
Salimans 2022):

* :func:`compose` -- ``s = s_b + sum_i w_i (s_i - s_b)``, the score of
  ``C[p] ∝ p_b prod_i (p_i / p_b)^{w_i}`` (unit weights: the paper's operator);
* :func:`linear_combination` -- ``s = sum_i w_i s_i``, the score of ``prod_i p_i^{w_i}``;
* :func:`guidance` -- classifier-free guidance ``s = s_u + scale (s_c - s_u)``, i.e. ``compose``
  with one conditional of weight ``scale`` over the unconditional background;
* negation is a negative weight, e.g. "``c_1`` AND NOT ``c_2``" is
  ``compose(uncond, [m_1, m_2], weights=[1.0, -0.5])``.

Results are models (pytrees whose weights are leaves: one jitted sampler serves any weights and
any distribution parameters without retracing) and compose again. Their capabilities are declared
from their inputs' declarations: a result ``has_log_prob`` (so a sampler may apply a Metropolis
correction) when every input does, and likewise ``has_denoise`` and ``columns_native``:

* ``log_prob``: the *unnormalized* ``lp_b + sum_i w_i (lp_i - lp_b)`` (exact up to the unknown
  constant ``-log Z``); its gradient is exactly ``score``;
* ``denoise`` (``compose`` only): ``D_b + sum_i w_i (D_i - D_b)``. Tweedie's formula
  ``D = (x + sigma^2 s) / alpha`` is affine in the score with coefficients that sum to one here,
  so this is exactly the denoiser that corresponds to the composed score (no division by
  ``alpha``: fine at ``alpha = 0``). ``linear_combination`` has no ``denoise`` (its coefficients
  need not sum to one).

The exact ``t = 0`` law of a composition, where one exists in closed form, is
:func:`composition_jax.compose.composed_distribution`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float_array, check_columns, check_point, check_t, is_concrete
from ._pytree import pytree_dataclass
from .distributions import Distribution
from .distributions.base import cast_tree
from .models import FunctionModel, Model, as_model

__all__ = [
    "Composition",
    "FunctionModel",
    "LinearCombination",
    "Model",
    "as_model",
    "columns_native",
    "compose",
    "composed_distribution",
    "guidance",
    "linear_combination",
    "score_columns",
]


def _input_names(n: int, first: str = "background", rest: str = "conditionals") -> list[str]:
    return [first] + [f"{rest}[{i}]" for i in range(n - 1)]


def _model_dim(m: Model) -> int | None:
    d = m.dim
    return d if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else None


def _check_dims(models: Sequence[Model], names: Sequence[str]) -> int | None:
    dims = [(n, _model_dim(m)) for n, m in zip(names, models)]
    known = [(n, d) for n, d in dims if d is not None]
    if len({d for _, d in known}) > 1:
        found = ", ".join(f"{n}.dim={d}" for n, d in known)
        raise ValueError(f"all inputs must have the same dimension; found {found}")
    return int(known[0][1]) if known else None


def _check_weights(weights: Any, k: int, name: str = "weights") -> jax.Array:
    """Weights as a float array of shape ``(k,)`` (defaults: ones)."""
    if weights is None:
        return jnp.ones((k,), jnp.result_type(float))
    if isinstance(weights, (bool, np.bool_)):
        raise TypeError(f"{name} must be real numbers, got bool")
    w = as_float_array(weights, name)
    w = w.astype(w.dtype)  # drop weak typing (Python scalars): same trace for every weight
    if w.shape != (k,):
        raise ValueError(
            f"{name} must have shape ({k},) (one weight per model), got shape {tuple(w.shape)}"
        )
    if is_concrete(w) and not np.all(np.isfinite(np.asarray(w))):
        raise ValueError(f"{name} must be finite, got {np.asarray(w).tolist()}")
    return w


def _declares(m: Model, capability: str) -> bool:
    return {"log_prob": m.has_log_prob, "denoise": m.has_denoise}[capability]


def _without(models: Sequence[Model], names: Sequence[str], capability: str) -> str:
    """``"input(s) without <capability>: <names>"`` for the ``models`` that do not declare it."""
    lack = ", ".join(n for n, m in zip(names, models) if not _declares(m, capability))
    return f"input(s) without {capability}: {lack}"


def columns_native(model: Any) -> bool:
    """``as_model(model).columns_native``: whether ``model`` computes the scores of many
    particles in particle-minor layout natively (see :meth:`Model.score_columns`)."""
    return as_model(model).columns_native


def score_columns(model: Any, X: Any, t: Any) -> jax.Array:
    """``as_model(model).score_columns(X, t)``: scores for ``X (d, n)`` (one particle per
    column) -> ``(d, n)``."""
    return as_model(model).score_columns(X, t)


def _fused_mixtures(models: tuple) -> tuple | None:
    """``models`` when every one is a diffused isotropic or diagonal :class:`GaussianMixture` of
    dimension above ``_SMALL_INNER`` that evaluates its quadratic in the expanded form at every
    noise level (neither centred nor guarded: decided from concrete parameters when it was
    built), else ``None``. Only then does :func:`_fused_mixture_score` compute what each model's
    own score computes (in one pass over all components)."""
    from .distributions.diffuse import Diffused
    from .distributions.gaussian import _SMALL_INNER, GaussianMixture

    for m in models:
        g = getattr(m, "dist", None)
        if not (isinstance(m, Diffused) and isinstance(g, GaussianMixture) and g.diagonal
                and not g._centered and not g._guarded and g.dim > _SMALL_INNER):
            return None
    return models


def _fused_terms(models: tuple, dtype: Any, t: Any):
    """The per-step constants of :func:`_fused_mixture_score` in ``dtype``: ``B (M, d)``, ``W``
    (``(M,)`` when every input is isotropic, else ``(M, d)``), ``c (M,)`` for
    ``M = sum_j K_j`` components, and the component counts ``K_j``."""
    iso = all(m.dist.isotropic for m in models)
    t = check_t(t).astype(dtype)
    rows, prec, const, sizes = [], [], [], []
    for m in models:
        g = cast_tree(m.dist, dtype)
        a = m.schedule.alpha(t)
        mp, w, logdet = g._diag_consts(a, m.schedule.sigma(t))  # mp: means (not centred)
        am = a * mp
        if iso or not g.isotropic:  # (K_j,) when all inputs are isotropic, else (K_j, d)
            wk = w
        else:
            wk = jnp.broadcast_to(w[:, None], mp.shape)
        wc = wk[:, None] if iso else wk
        rows.append(am * wc)
        prec.append(wk)
        # the common 2 pi term cancels in each softmax
        const.append(g.log_weights - 0.5 * (logdet + jnp.sum(am * am * wc, -1)))
        sizes.append(g.num_components)
    return jnp.concatenate(rows), jnp.concatenate(prec), jnp.concatenate(const), sizes


def _responsibilities(logits: jax.Array, sizes: list, coeffs: jax.Array, axis: int):
    """``G = coeffs_j softmax_j(logits)`` with one softmax per model over its ``sizes[j]``
    components along ``axis`` (0 or -1 of ``logits``). The logits are pinned before the max
    and the exponential read them (``optimization_barrier``), a precaution: XLA may recompute
    them in each consumer with different rounding, and far from every mean (logits ~ -1e12)
    that difference exceeds ``exp``'s range (inf or 0 for every component), as it did for the
    mixtures' own particle-minor score (``gaussian._shifted_exp_columns``). Pinned or not
    measured the same speed."""
    logits = jax.lax.optimization_barrier(logits)
    coeffs = coeffs.astype(logits.dtype)
    ax = axis % logits.ndim
    if len(set(sizes)) == 1:  # one softmax over a (models, K) view
        shape = logits.shape[:ax] + (len(sizes), sizes[0]) + logits.shape[ax + 1:]
        lg = logits.reshape(shape)
        e = jnp.exp(lg - jax.lax.stop_gradient(jnp.max(lg, ax + 1, keepdims=True)))
        cw = coeffs.reshape((len(sizes), 1) + (1,) * (logits.ndim - 1 - ax))
        return (e * (cw / jnp.sum(e, ax + 1, keepdims=True))).reshape(logits.shape)
    G, start = [], 0
    for j, k in enumerate(sizes):
        lg = jax.lax.slice_in_dim(logits, start, start + k, axis=ax)
        e = jnp.exp(lg - jax.lax.stop_gradient(jnp.max(lg, ax, keepdims=True)))
        G.append(e * (coeffs[j] / jnp.sum(e, ax, keepdims=True)))
        start += k
    return jnp.concatenate(G, ax)


def _fused_mixture_score(models: tuple, coeffs: jax.Array, x: Any, t: Any) -> jax.Array:
    """``sum_j coeffs[j] * score_j(x, t)`` for diffused isotropic or diagonal mixtures
    (:func:`_fused_mixtures`) with every model's components in one matrix.

    With ``a_j = alpha_j(t)``, ``v_jk = a_j^2 lam_jk + sigma_j(t)^2`` (per coordinate for
    diagonal components) and ``W = 1 / v``, component ``jk``'s logit is ``b_jk - Q_jk / 2`` with
    ``Q_jk = sum W (x - a_j m_jk)^2``; expanded, with the constants folded once per step,
    ``logit = c_jk + B_jk . x - (W_jk . x^2) / 2`` where ``B = a m W`` and
    ``c = b - sum a^2 m^2 W / 2``. So the logits of all ``sum_j K_j`` components are one product
    ``B x`` plus a term per component, each model's responsibilities ``r_j`` a softmax over its
    own components, and with ``G_jk = coeffs_j r_jk`` the output is one more product:
    ``sum_jk G_jk W_jk (a_j m_jk - x) = G B - x (G W)``."""
    x = check_point(x, models[0].dim)
    B, w, c, sizes = _fused_terms(models, x.dtype, t)
    quad = jnp.dot(x, x) * w if w.ndim == 1 else w @ (x * x)
    G = _responsibilities(c + B @ x - 0.5 * quad, sizes, coeffs, -1)
    return G @ B - x * (G @ w)


def _fused_mixture_score_columns(models: tuple, coeffs: jax.Array, X: jax.Array, t: Any):
    """:func:`_fused_mixture_score` for ``X (d, n)``, one particle per column: the ``(M, n)``
    logits have the particle axis contiguous, so each model's softmax reduces over the major
    axis, element-wise across particles."""
    B, w, c, sizes = _fused_terms(models, X.dtype, t)
    if w.ndim == 1:
        quad = w[:, None] * jnp.sum(X * X, 0, keepdims=True)
    else:
        quad = w @ (X * X)
    G = _responsibilities(c[:, None] + B @ X - 0.5 * quad, sizes, coeffs, 0)
    return B.T @ G - X * ((w @ G)[None] if w.ndim == 1 else w.T @ G)


@pytree_dataclass
class Composition(Model):
    r"""``C[p_b, p_1..p_k]`` with weights: ``score = s_b + sum_i w_i (s_i - s_b)``.

    Attributes:
      background: the background model ``p_b``.
      conditionals: tuple of ``k >= 1`` models ``p_i``.
      weights: ``(k,)`` array (a pytree leaf).

    ``has_log_prob`` when every input does: ``log_prob`` / ``log_prob_and_score`` are the
    unnormalized ``lp_b + sum_i w_i (lp_i - lp_b)``; ``has_denoise`` when every input does:
    ``denoise`` is ``D_b + sum_i w_i (D_i - D_b)`` (exact by Tweedie since the coefficients sum to
    one); ``columns_native`` when every input is. Build it with :func:`compose`.
    """

    background: Any
    conditionals: tuple
    weights: Any = None

    def __post_init__(self):
        conds = self.conditionals
        if isinstance(conds, (str, bytes)) or not isinstance(conds, Sequence):
            raise TypeError(
                "conditionals must be a sequence (list or tuple) of models, got "
                f"{type(conds).__name__}"
            )
        conds = tuple(conds)
        if not conds:
            raise ValueError("conditionals must not be empty (got 0 conditionals)")
        bg = as_model(self.background, "background")
        conds = tuple(as_model(c, f"conditionals[{i}]") for i, c in enumerate(conds))
        _check_dims((bg,) + conds, _input_names(len(conds) + 1))
        w = _check_weights(self.weights, len(conds))
        object.__setattr__(self, "background", bg)
        object.__setattr__(self, "conditionals", conds)
        object.__setattr__(self, "weights", w)

    @property
    def _inputs(self) -> tuple:
        return (self.background,) + tuple(self.conditionals)

    @property
    def dim(self) -> int | None:
        return _check_dims(self._inputs, _input_names(len(self._inputs)))

    @property
    def has_log_prob(self) -> bool:
        """Every input declares ``log_prob``."""
        return all(m.has_log_prob for m in self._inputs)

    @property
    def has_denoise(self) -> bool:
        """Every input declares ``denoise``."""
        return all(m.has_denoise for m in self._inputs)

    @property
    def columns_native(self) -> bool:
        """Every input has a batched particle-minor score (see :meth:`score_columns`)."""
        return all(m.columns_native for m in self._inputs)

    def _why_not(self, capability: str) -> str:
        return _without(self._inputs, _input_names(len(self._inputs)), capability)

    @property
    def _coefficients(self) -> jax.Array:
        """``(1 - sum w, w_1, ..., w_k)``: each input's coefficient in the composed score."""
        w = self.weights
        return jnp.concatenate([1.0 - jnp.sum(w, keepdims=True), w])

    @property
    def _fused_columns(self) -> bool:
        """Scored in the fused form (:func:`_fused_mixtures`), in both layouts: ``cj.sample``'s
        ``layout="auto"`` then picks the columns layout up to ``FUSED_COLUMN_MAX_D``."""
        return _fused_mixtures(self._inputs) is not None

    def score(self, x: Any, t: Any) -> jax.Array:
        """Composed score ``s_b + sum_i w_i (s_i - s_b)``, shape ``(d,)``.

        When every input is a diffused isotropic or diagonal Gaussian mixture of dimension
        ``d > 8`` whose expanded quadratic needs no guard (see :func:`_fused_mixtures`), all
        inputs' components are scored together: one ``(sum K) x d`` product for the logits and
        one for the output,
        ``sum_j c_j sum_k r_jk (a_j m_jk - x) / v_jk`` with ``c = (1 - sum w, w)`` and ``r`` each
        model's own softmax (the same expanded form as the mixture's own score; rounding
        differs). Otherwise each input is scored on its own."""
        fused = _fused_mixtures(self._inputs)
        if fused is not None:
            return _fused_mixture_score(fused, self._coefficients, x, t)
        sb = self.background.score(x, t)
        s = jnp.stack([c.score(x, t) for c in self.conditionals])
        w = self.weights.astype(sb.dtype)
        return sb + w @ (s.astype(sb.dtype) - sb[None])

    def batched_score(self, X: Any, t: Any) -> jax.Array:
        """Composed scores of ``X (n, d)`` -> ``(n, d)`` from the inputs' ``batched_score``."""
        sb = self.background.batched_score(X, t)
        w = self.weights.astype(sb.dtype)
        out = sb
        for i, c in enumerate(self.conditionals):
            out = out + w[i] * (c.batched_score(X, t).astype(sb.dtype) - sb)
        return out

    def score_columns(self, X: Any, t: Any) -> jax.Array:
        """Composed scores in particle-minor layout: ``X (d, n)`` -> ``(d, n)`` (the fused form
        of :meth:`score` when it applies, see :func:`_fused_mixture_score_columns`)."""
        fused = _fused_mixtures(self._inputs)
        if fused is not None:
            return _fused_mixture_score_columns(fused, self._coefficients,
                                                check_columns(X, self.dim), t)
        sb = self.background.score_columns(X, t)
        w = self.weights.astype(sb.dtype)
        out = sb
        for i, c in enumerate(self.conditionals):
            out = out + w[i] * (c.score_columns(X, t).astype(sb.dtype) - sb)
        return out

    def _log_prob(self, x, t):
        """Unnormalized ``log C[p](x, t) = lp_b + sum_i w_i (lp_i - lp_b)`` (scalar)."""
        lb = self.background.log_prob(x, t)
        lp = jnp.stack([c.log_prob(x, t) for c in self.conditionals]).astype(lb.dtype)
        return lb + self.weights.astype(lb.dtype) @ (lp - lb)

    def _log_prob_and_score(self, x, t):
        """``(log_prob, score)`` sharing the inputs' work (for Metropolis-corrected samplers)."""
        lb, sb = self.background.log_prob_and_score(x, t)
        pairs = [c.log_prob_and_score(x, t) for c in self.conditionals]
        lp = jnp.stack([p[0] for p in pairs]).astype(lb.dtype)
        s = jnp.stack([p[1] for p in pairs]).astype(sb.dtype)
        w = self.weights
        return lb + w.astype(lb.dtype) @ (lp - lb), sb + w.astype(sb.dtype) @ (s - sb[None])

    def _denoise(self, x, t):
        """Composed denoiser ``D_b + sum_i w_i (D_i - D_b)``, shape ``(d,)``."""
        db = self.background.denoise(x, t)
        ds = jnp.stack([c.denoise(x, t) for c in self.conditionals]).astype(db.dtype)
        return db + self.weights.astype(db.dtype) @ (ds - db[None])


@pytree_dataclass
class LinearCombination(Model):
    r"""``score = sum_i w_i s_i`` (the score of ``prod_i p_i^{w_i}``).

    Attributes:
      models: tuple of ``k >= 1`` models.
      weights: ``(k,)`` array (a pytree leaf).

    ``has_log_prob`` when every input does: ``log_prob`` / ``log_prob_and_score`` are
    ``sum_i w_i lp_i`` (unnormalized). There is no ``denoise`` (``has_denoise`` is ``False``):
    Tweedie's formula is affine in the score, so a combination whose weights do not sum to one has
    no model-free denoiser. Build it with :func:`linear_combination`.
    """

    models: tuple
    weights: Any = None

    def __post_init__(self):
        models = self.models
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
            raise TypeError(f"models must be a sequence of models, got {type(models).__name__}")
        models = tuple(as_model(m, f"models[{i}]") for i, m in enumerate(models))
        if not models:
            raise ValueError("models must not be empty (got 0 models)")
        names = [f"models[{i}]" for i in range(len(models))]
        _check_dims(models, names)
        if self.weights is None:
            raise TypeError("linear_combination needs weights of shape (k,)")
        w = _check_weights(self.weights, len(models))
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "weights", w)

    @property
    def _names(self) -> list[str]:
        return [f"models[{i}]" for i in range(len(self.models))]

    @property
    def dim(self) -> int | None:
        return _check_dims(self.models, self._names)

    @property
    def has_log_prob(self) -> bool:
        """Every input declares ``log_prob``."""
        return all(m.has_log_prob for m in self.models)

    @property
    def columns_native(self) -> bool:
        """Every input has a batched particle-minor score (see :meth:`score_columns`)."""
        return all(m.columns_native for m in self.models)

    def _why_not(self, capability: str) -> str:
        if capability == "denoise":
            return ("a linear combination has no model-free denoiser (its weights need not sum "
                    "to one; Tweedie's formula is affine in the score)")
        return _without(self.models, self._names, capability)

    def score(self, x: Any, t: Any) -> jax.Array:
        """``sum_i w_i s_i(x, t)``, shape ``(d,)``."""
        s = jnp.stack([m.score(x, t) for m in self.models])
        return self.weights.astype(s.dtype) @ s

    def batched_score(self, X: Any, t: Any) -> jax.Array:
        """``sum_i w_i s_i`` for ``X (n, d)`` -> ``(n, d)`` from the inputs' ``batched_score``."""
        out = None
        for i, m in enumerate(self.models):
            term = m.batched_score(X, t)
            term = self.weights.astype(term.dtype)[i] * term
            out = term if out is None else out + term
        return out

    def score_columns(self, X: Any, t: Any) -> jax.Array:
        """``sum_i w_i s_i`` in particle-minor layout: ``X (d, n)`` -> ``(d, n)``."""
        out = None
        for i, m in enumerate(self.models):
            term = m.score_columns(X, t)
            term = self.weights.astype(term.dtype)[i] * term
            out = term if out is None else out + term
        return out

    def _log_prob(self, x, t):
        """Unnormalized ``sum_i w_i lp_i(x, t)`` (scalar)."""
        lp = jnp.stack([m.log_prob(x, t) for m in self.models])
        return self.weights.astype(lp.dtype) @ lp

    def _log_prob_and_score(self, x, t):
        pairs = [m.log_prob_and_score(x, t) for m in self.models]
        lp = jnp.stack([p[0] for p in pairs])
        s = jnp.stack([p[1] for p in pairs])
        return self.weights.astype(lp.dtype) @ lp, self.weights.astype(s.dtype) @ s


def compose(background: Any, conditionals: Sequence[Any], weights: Any = None) -> Composition:
    r"""The composition operator of Bradley et al. (2025), Definition 5.1, with optional weights.

    ``score(x, t) = s_b(x, t) + sum_i w_i (s_i(x, t) - s_b(x, t))`` -- the score of
    ``C[p^t] ∝ p_b^t prod_i (p_i^t / p_b^t)^{w_i}`` at every noise level (eq. (6)). With unit
    weights and ``p_b`` the unconditional model this is Bayes composition (Liu et al. 2022); with
    ``k = 1`` it is classifier-free guidance (:func:`guidance`). Exact as an operator on scores;
    whether sampling with it reaches ``C[p]`` at ``t = 0`` is the paper's question (exact under
    Factorized Conditionals, Theorem 5.3).

    Args:
      background: model ``p_b`` (or a function ``score_fn(x, t)``).
      conditionals: non-empty sequence of ``k`` models ``p_i``.
      weights: ``(k,)`` weights (default ones). Negative weights negate a concept.

    Returns:
      A :class:`Composition` model (a pytree; ``weights`` is a leaf).

    Raises:
      ValueError: empty ``conditionals``; ``weights`` not of shape ``(k,)`` or non-finite; inputs
        with different ``.dim``.
      TypeError: an input that is not a model.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> bg = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sch)
      >>> dog = cj.diffuse(cj.Gaussian(jnp.array([2.0, 0.0]), 0.25 * jnp.eye(2)), sch)
      >>> hat = cj.diffuse(cj.Gaussian(jnp.array([0.0, 2.0]), 0.25 * jnp.eye(2)), sch)
      >>> both = cj.compose(bg, [dog, hat])                         # dog AND hat
      >>> no_hat = cj.compose(bg, [dog, hat], weights=[1.0, -1.0])  # dog AND NOT hat
      >>> both.score(jnp.zeros(2), 0.5).shape, both.has_log_prob, both.has_denoise
      ((2,), True, True)
    """
    return Composition(background, conditionals, weights)


def linear_combination(models: Sequence[Any], weights: Any) -> LinearCombination:
    r"""``score = sum_i w_i s_i`` -- the score of the (unnormalized) product ``prod_i p_i^{w_i}``.

    ``compose(b, cs, w)`` equals ``linear_combination([b, *cs], [1 - sum(w), *w])``.

    Args:
      models: non-empty sequence of ``k`` models.
      weights: ``(k,)`` weights (required).

    Raises:
      ValueError: empty ``models``, ``weights`` not of shape ``(k,)``, mismatched ``.dim``.
      TypeError: an input that is not a model, or missing ``weights``.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> m = cj.diffuse(cj.Gaussian(jnp.zeros(1), jnp.eye(1)), cj.VESchedule())
      >>> prod = cj.linear_combination([m, m], jnp.array([1.0, 1.0]))  # p^2 (tempered)
      >>> round(float(prod.score(jnp.ones(1), 0.0)[0]), 2)  # VE: sigma(0) = 0.01
      -2.0
    """
    return LinearCombination(models, weights)


def guidance(conditional: Any, unconditional: Any, scale: Any) -> Composition:
    r"""Classifier-free guidance: ``score = s_u + scale (s_c - s_u)``.

    The ``k = 1`` case of :func:`compose` with background ``unconditional`` and weight ``scale``;
    at ``t = 0`` its law is ``∝ p_u^{1 - scale} p_c^{scale}`` (exactly ``p_c`` at ``scale = 1``;
    for ``scale != 1`` the noisy sequence is not a diffusion path). ``scale`` is a leaf (a scalar
    or an array of shape ``()`` or ``(1,)``). A negative ``scale`` steers away from the condition.

    Raises:
      ValueError: ``scale`` of another shape; mismatched ``.dim``.
      TypeError: an input that is not a model.
    """
    if isinstance(scale, (bool, np.bool_)):
        raise TypeError("scale must be a real number, got bool")
    s = as_float_array(scale, "scale")
    s = s.astype(s.dtype)  # drop weak typing: one trace for every scale
    if s.shape not in ((), (1,)):
        raise ValueError(f"scale must be a scalar (shape () or (1,)), got shape {tuple(s.shape)}")
    return Composition(unconditional, (conditional,), jnp.reshape(s, (1,)))


def composed_distribution(background: Any, conditionals: Sequence[Any],
                          weights: Any = None) -> Distribution:
    r"""The exact ``t = 0`` law ``C[p] ∝ p_b prod_i (p_i / p_b)^{w_i}`` as a distribution.

    Closed forms (see :mod:`composition_jax._compose_exact`):

    * Gaussians (and anything reducible to one: products of Gaussians, linear pushforwards of
      Gaussians), any real weights: precision algebra
      ``Λ = P_b + sum_i w_i (P_i - P_b)``, ``h = h_b + sum_i w_i (h_i - h_b)`` with ``P = S^{-1}``,
      ``h = P m``; the result is ``N(Λ^{-1} h, Λ^{-1})``.
    * Gaussian mixtures: every input is a factor ``p^e`` with exponent ``e`` (``1 - sum w`` for the
      background, ``w_i`` for conditional ``i``; identical inputs are merged first, so a
      conditional that equals the background off its block cancels). A mixture needs a
      non-negative integer exponent (``p^n`` is a mixture over ``n``-tuples of components); the
      result is the mixture over the product of the component index sets, with log-weights from
      the Gaussian product integrals (log-normalizers of ``exp(quadratic)`` via eigendecompositions).
    * ``Product`` inputs that share one block structure: blockwise, recursively (cost additive).
    * ``LinearPushforward`` inputs sharing one matrix and shift:
      ``A# C[p_b, p_1..]`` (Lemma 6.2, reparameterization equivariance).

    ``Diffused`` inputs are accepted (their clean law is used).

    Args:
      background: distribution ``p_b``.
      conditionals: non-empty sequence of ``k`` distributions.
      weights: ``(k,)`` weights (default ones). They may be traced only when no Gaussian mixture
        is involved.

    Returns:
      A ``Gaussian``, ``GaussianMixture``, ``Product`` or ``LinearPushforward``.

    Raises:
      ValueError: non-normalizable composition (the composed precision, or that of some mixture
        component, is not positive definite: the message lists the eigenvalues, weights and the
        inputs' precisions along the offending direction); empty ``conditionals``; weights of the
        wrong shape; mismatched dimensions.
      TypeError: inputs that are not distributions.
      NotImplementedError: no closed form (e.g. a mixture with a non-integer or negative exponent,
        such as Bayes composition over a mixture background with ``k >= 2``; ``Empirical`` laws;
        non-closed pushforwards), naming what has no closed form.

    Example:
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> pb = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
      >>> p1 = cj.Gaussian(jnp.array([2.0]), jnp.array([[0.25]]))
      >>> g = cj.composed_distribution(pb, [p1], weights=jnp.array([2.0]))  # N(16/7, 1/7)
      >>> round(float(g.mean[0]), 3), round(float(g.cov[0, 0]), 3)
      (2.286, 0.143)
    """
    from ._compose_exact import composed_distribution as _cd

    return _cd(background, conditionals, weights)
