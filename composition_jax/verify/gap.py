r"""The composition gap: how far the summed-score path ``C[p^t]`` is from a diffusion path.

Reverse diffusion with the composed score ``s_b^t + sum_i w_i (s_i^t - s_b^t)`` follows the path of
laws ``t -> C[p^t]``; it samples the ``t = 0`` composition ``C[p]`` correctly only when that path
is the forward-noising path ``N_t[C[p]]`` (Bradley et al. 2025, Theorem 5.3 and Section 7). This
module measures the divergence between the two at each ``t``:

* **Gaussian tuples** (Gaussians, Products of Gaussians, closed-form linear pushforwards; every
  input a single Gaussian): the **exact** ``KL(N_t[C[p]] || C[p^t])``. ``C[p^t]`` is the Gaussian
  with precision ``Lambda_t = P_b^t + sum_i w_i (P_i^t - P_b^t)`` and precision-mean
  ``h_t = P_b^t m_b^t + sum_i w_i (P_i^t m_i^t - P_b^t m_b^t)`` where ``P^t`` is the inverse of the
  noised covariance ``alpha^2 S + sigma^2 I``; ``N_t[C[p]] = N(alpha mu, alpha^2 Sigma + sigma^2 I)``
  with ``(mu, Sigma)`` the same algebra at ``t = 0``. With ``lam`` the eigenvalues of
  ``Sigma_t^{1/2} Lambda_t Sigma_t^{1/2}``:
  ``KL = 1/2 [sum (lam - 1 - log lam) + delta^T Lambda_t delta]`` (``delta`` = mean difference),
  ``inf`` where ``Lambda_t`` is not positive definite (``C[p^t]`` not normalizable).
* **Mixture tuples**: a Monte Carlo estimate of the **Fisher divergence**
  ``F_t = E_{x ~ N_t[C[p]]} |grad log N_t[C[p]](x) - s_comp(x, t)|^2`` with exact scores on
  both sides (``C[p]`` from :func:`composition_jax.composed_distribution`; its noised score is
  exact) and ``n`` exact samples; the standard error ``std / sqrt(n)`` is reported. ``F_t = 0``
  iff the two laws coincide (they have positive densities on ``R^d``). The unnormalized
  ``C[p^t]`` of a mixture tuple has no closed normalizer in general, which is why the score-based
  divergence is used rather than KL.

  Evaluation: every law of the tuple and ``C[p]`` is written as a Gaussian mixture on each block
  that all of them share (``Product`` laws with one block structure; otherwise the whole space is
  one block), the mixtures padded to a common number of components (absent components have
  weight zero) and stacked, so all noised scores come from ONE vectorised computation per block
  size, and the Fisher integrand of a product law is the sum of its blocks' integrands. The
  compiled program does not grow with the number of laws, blocks or components (eq. (18)'s
  clutter tuple, five products of eight 1-D laws: one (8 blocks, 6 laws, 2 components) array
  program instead of 48 separately traced mixture scores). Samples are processed in ``lax.map``
  chunks, so memory is bounded whatever ``n``. Laws without a mixture form fall back to each
  law's own noised score.

Under Factorized Conditionals (and after orthogonal transforms) both are zero up to float
rounding; for a shear they are positive at intermediate noise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..distributions.base import cast_tree, per_sample_keys
from ..schedules import Schedule
from . import _laws

__all__ = ["GapResult", "composition_gap", "gaussian_composition_gap"]


@dataclasses.dataclass(frozen=True)
class GapResult:
    """``divergence[j]`` at ``ts[j]``; ``kind`` is ``"kl_exact"`` or ``"fisher_mc"``;
    ``stderr`` is zero for exact values."""

    ts: np.ndarray
    divergence: np.ndarray
    stderr: np.ndarray
    kind: str
    n: int | None = None

    @property
    def max(self) -> float:
        return float(np.max(self.divergence))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "n": self.n,
            "ts": [float(t) for t in self.ts],
            "divergence": [float(v) for v in self.divergence],
            "stderr": [float(v) for v in self.stderr],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        what = ("exact KL(N_t[C[p]] || C[p^t])" if self.kind == "kl_exact"
                else f"Monte Carlo Fisher divergence (n={self.n}) of C[p^t] from N_t[C[p]]")
        lines = [f"Composition gap: {what}"]
        for t, v, e in zip(self.ts, self.divergence, self.stderr):
            err = f" ± {e:.2e}" if e > 0 else ""
            lines.append(f"  t={float(t):<8.4g} {float(v):.4e}{err}")
        return "\n".join(lines)


def _check_weights(weights, k, dtype):
    if weights is None:
        return jnp.ones((k,), dtype)
    w = jnp.asarray(weights, dtype)
    if w.shape != (k,):
        raise ValueError(f"weights must have shape ({k},) for {k} conditionals, got {w.shape}")
    return w


def _check_ts(ts, dtype):
    t = jnp.atleast_1d(jnp.asarray(ts, dtype))
    if t.ndim != 1:
        raise ValueError(f"ts must be a scalar or 1-D array, got shape {t.shape}")
    tn = np.asarray(t)
    if not np.all((tn >= 0) & (tn <= 1)):
        raise ValueError(f"ts must lie in [0, 1], got {tn.tolist()}")
    return t


@jax.jit
def _gaussian_kl_path(ms, Ss, w, alphas, sigmas):
    """Exact KL at each ``(alpha, sigma)``; ``ms (k+1, d)``, ``Ss (k+1, d, d)``, input 0 is the
    background."""
    d = ms.shape[1]
    eye = jnp.eye(d, dtype=ms.dtype)
    coef = jnp.concatenate([jnp.reshape(1.0 - jnp.sum(w), (1,)), w])  # background first

    def algebra(a, s):
        St = a * a * Ss + s * s * eye[None]
        Pt = jnp.linalg.inv(St)
        Pt = 0.5 * (Pt + jnp.swapaxes(Pt, -1, -2))
        Lam = jnp.einsum("k,kij->ij", coef, Pt)
        h = jnp.einsum("k,kij,kj->i", coef, Pt, a * ms)
        return Lam, h

    Lam0, h0 = algebra(jnp.ones((), ms.dtype), jnp.zeros((), ms.dtype))
    Sig0 = jnp.linalg.inv(Lam0)
    Sig0 = 0.5 * (Sig0 + Sig0.T)
    mu0 = Sig0 @ h0

    def one(a, s):
        Lam, h = algebra(a, s)
        St = a * a * Sig0 + s * s * eye  # N_t[C[p]] covariance
        mt = a * mu0
        ev, U = jnp.linalg.eigh(St)
        R = U * jnp.sqrt(ev)[None, :]  # St = R R^T
        M = R.T @ Lam @ R
        lam = jnp.linalg.eigvalsh(0.5 * (M + M.T))
        ok = jnp.min(jnp.linalg.eigvalsh(Lam)) > 0
        lam_safe = jnp.where(ok, lam, jnp.ones_like(lam))
        # Lam^{-1} h is C[p^t]'s mean
        mc = jnp.linalg.solve(jnp.where(ok, Lam, eye), h)
        dl = mt - mc
        u = lam_safe - 1.0
        kl = 0.5 * (jnp.sum(u - jnp.log1p(u)) + dl @ Lam @ dl)
        return jnp.where(ok, jnp.maximum(kl, 0.0), jnp.inf)

    return jax.vmap(one)(alphas, sigmas), jnp.linalg.eigvalsh(Lam0)


def gaussian_composition_gap(background, conditionals, schedule, ts, weights=None) -> GapResult:
    """Exact KL path for a Gaussian tuple (see module docstring); raises ``ValueError`` if some
    input is not a single Gaussian or ``C[p]`` is not normalizable."""
    dists = [_laws.unwrap(background, "background")] + [
        _laws.unwrap(c, f"conditionals[{i}]") for i, c in enumerate(conditionals)
    ]
    mixes = [_laws.as_mixture(p) for p in dists]
    for i, m in enumerate(mixes):
        if m is None or m[0].shape[0] != 1:
            raise ValueError(f"input {i} is not a single Gaussian; use composition_gap")
    dt = jnp.result_type(*[m[1].dtype for m in mixes])
    ms = jnp.stack([m[1][0].astype(dt) for m in mixes])
    Ss = jnp.stack([m[2][0].astype(dt) for m in mixes])
    w = _check_weights(weights, len(dists) - 1, dt)
    t = _check_ts(ts, dt)
    a = jax.vmap(schedule.alpha)(t)
    s = jax.vmap(schedule.sigma)(t)
    kl, ev0 = _gaussian_kl_path(ms, Ss, w, a, s)
    if not float(jnp.min(ev0)) > 0:
        raise ValueError(
            f"C[p] is not normalizable: composed precision eigenvalues {np.asarray(ev0).tolist()}"
        )
    return GapResult(np.asarray(t), np.asarray(kl), np.zeros(t.shape[0]), "kl_exact", None)


# Padded mixture parameters of every law of the tuple, block by block ----------------------
#: Upper bound on the floats of one chunk of the per-sample working set (samples x blocks x laws x
#: components x d x d) of :func:`_fisher_path`; the samples are processed by ``lax.map`` in chunks
#: of this size, so memory does not grow with ``n``.
_CHUNK_FLOATS = 1 << 22


def _common_blocks(dists) -> tuple:
    """The blocks shared by every law (all ``Product`` with identical ``blocks``), else the
    single block ``range(d)``."""
    from ..distributions import Product

    if all(isinstance(p, Product) for p in dists) and len({p.blocks for p in dists}) == 1:
        return tuple(tuple(int(j) for j in b) for b in dists[0].blocks)
    return (tuple(range(dists[0].dim)),)


def _block_mixture_groups(dists, dt):
    """Every law of ``dists`` (``J`` of them) as a Gaussian mixture on every common block
    (:func:`_common_blocks`), stacked into one padded array set per block size ``d_b``.

    Returns a list of groups ``(idx (B, d_b) int, log_w (B, J, K), means (B, J, K, d_b),
    evecs (B, J, K, d_b, d_b), evals (B, J, K, d_b))``: component ``k`` of law ``j`` on block
    ``b`` is ``N(means, evecs diag(evals) evecs^T)``; absent (padding) components have
    ``log_w = -inf``. The eigendecompositions are computed once, in float64 NumPy, from the
    concrete parameters. ``None`` when some law has no mixture form on some block (more than
    ``MAX_COMPONENTS`` components, or not a closed-form law)."""
    blocks = _common_blocks(dists)
    per_block = []  # per block: J mixtures (w, m, C) as float64 arrays
    for bi in range(len(blocks)):
        row = []
        for p in dists:
            law = p.factors[bi] if len(blocks) > 1 else p
            mix = _laws.as_mixture(law)
            if mix is None:
                return None
            row.append(tuple(np.asarray(a, np.float64) for a in mix))
        per_block.append(row)
    groups = []
    for db in sorted({len(b) for b in blocks}):
        ids = [i for i, b in enumerate(blocks) if len(b) == db]
        K = max(r[0].shape[0] for i in ids for r in per_block[i])
        B, J = len(ids), len(dists)
        logw = np.full((B, J, K), -np.inf)
        means = np.zeros((B, J, K, db))
        evecs = np.broadcast_to(np.eye(db), (B, J, K, db, db)).copy()
        evals = np.ones((B, J, K, db))
        for g, i in enumerate(ids):
            for j, (w, m, C) in enumerate(per_block[i]):
                k = w.shape[0]
                with np.errstate(divide="ignore"):
                    logw[g, j, :k] = np.log(w)
                means[g, j, :k] = m
                lam, U = np.linalg.eigh(0.5 * (C + np.swapaxes(C, -1, -2)))
                evals[g, j, :k], evecs[g, j, :k] = np.maximum(lam, 0.0), U
        idx = np.asarray([blocks[i] for i in ids], np.int32)
        groups.append(tuple(jnp.asarray(a, dt) if a.dtype != np.int32 else jnp.asarray(a)
                            for a in (idx, logw, means, evecs, evals)))
    return groups


def _mixture_scores(xb, a, s, logw, means, evecs, evals):
    r"""Noised scores of padded mixtures at one point: ``xb (B, d)`` against the laws
    ``(B, J, K, ...)`` (see :func:`_block_mixture_groups`) at ``x_t = a x_0 + s eps``.

    Component ``k`` is noised to ``N(a m_k, U_k diag(a^2 lam_k + s^2) U_k^T)``; with
    ``y_k = U_k^T (x - a m_k)`` and ``v_k = a^2 lam_k + s^2`` the score is
    ``-sum_k r_k U_k (y_k / v_k)``, ``r = softmax_k(log w_k - |y_k|^2_{1/v_k} / 2 -
    sum log v_k / 2)`` (the component posterior; differences, not an expanded quadratic, so no
    cancellation at small ``s``). Returns ``(B, J, d)``."""
    v = a * a * evals + s * s  # (B, J, K, d)
    y = jnp.einsum("bjkde,bjkd->bjke", evecs, xb[:, None, None, :] - a * means)
    z = y / v
    logits = logw - 0.5 * jnp.sum(y * z + jnp.log(v), -1)  # (B, J, K)
    r = jax.nn.softmax(logits, axis=-1)
    return -jnp.einsum("bjk,bjkde,bjke->bjd", r, evecs, z)


@functools.partial(jax.jit, static_argnames=("n", "chunk"))
def _fisher_path(key, comp, groups, w, alphas, sigmas, n, chunk):
    """Monte Carlo Fisher divergence at each ``(alpha, sigma)`` with every law's noised score
    evaluated as one padded, vectorised mixture computation per block size (law 0 of
    ``groups`` is ``C[p]``, law 1 the background, then the conditionals): one graph whatever the
    number of laws, blocks or components, the samples in ``lax.map`` chunks of ``chunk``. The
    samples are those of :func:`_fisher_path_generic` for the same key."""
    dt = alphas.dtype
    coef = jnp.concatenate([jnp.reshape(1.0 - jnp.sum(w), (1,)), w])
    comb = jnp.concatenate([jnp.ones((1,), dt), -coef])  # s_comp - sum_j coef_j s_j

    def one(args):
        k, a, s = args
        x = _fisher_samples(k, comp, a, s, n, dt)

        def diff(xi):
            f = jnp.zeros((), dt)
            for idx, logw, means, evecs, evals in groups:
                sc = _mixture_scores(xi[idx], a, s, logw, means, evecs, evals)  # (B, J, d)
                f = f + jnp.sum(jnp.einsum("j,bjd->bd", comb, sc) ** 2)
            return f

        f = jax.lax.map(diff, x, batch_size=chunk)
        return jnp.mean(f), jnp.std(f) / jnp.sqrt(jnp.asarray(n, dt))

    keys = jax.random.split(key, alphas.shape[0])
    return jax.lax.map(one, (keys, alphas, sigmas))


def _fisher_samples(k, comp, a, s, n, dt):
    """``n`` exact draws of ``N_t[C[p]]``: ``a x_0 + s eps``, ``x_0 ~ C[p]``."""
    k0, ke = jax.random.split(k)
    x0 = comp.sample(k0, n).astype(dt)
    eps = jax.vmap(lambda kk: jax.random.normal(kk, (x0.shape[1],), dt))(per_sample_keys(ke, n))
    return a * x0 + s * eps


@functools.partial(jax.jit, static_argnames=("n",))
def _fisher_path_generic(key, comp, inputs, w, alphas, sigmas, n):
    """The same estimate through each law's own ``_noised_score`` (laws without a mixture form:
    one graph per law, so it compiles slowly for many laws or factors)."""
    dt = alphas.dtype
    coef = jnp.concatenate([jnp.reshape(1.0 - jnp.sum(w), (1,)), w])

    def one(args):
        k, a, s = args
        x = _fisher_samples(k, comp, a, s, n, dt)

        def diff(xi):
            st = comp._noised_score(xi, a, s)
            sc = sum(c * p._noised_score(xi, a, s) for c, p in zip(coef, inputs))
            return jnp.sum((st - sc) ** 2)

        f = jax.vmap(diff)(x)
        return jnp.mean(f), jnp.std(f) / jnp.sqrt(jnp.asarray(n, dt))

    keys = jax.random.split(key, alphas.shape[0])
    return jax.lax.map(one, (keys, alphas, sigmas))


def composition_gap(
    background: Any,
    conditionals: Sequence[Any],
    schedule: Schedule,
    ts: Any,
    weights: Any = None,
    *,
    key: jax.Array | None = None,
    n: int = 4096,
) -> GapResult:
    r"""Divergence between ``C[p^t]`` (summed noisy scores) and ``N_t[C[p]]`` at each ``t``.

    Args:
      background: ``p_b`` (distribution or ``Diffused``; its ``.dist`` is used).
      conditionals: ``k`` distributions ``p_i``.
      schedule: the noise schedule (``alpha(t)``, ``sigma(t)``).
      ts: times in ``[0, 1]`` (scalar or ``(T,)``).
      weights: ``(k,)`` weights (default ones).
      key: PRNG key, required for mixture tuples (Monte Carlo).
      n: Monte Carlo sample size per time for mixture tuples.

    Returns:
      :class:`GapResult`: exact KL for Gaussian tuples, Monte Carlo Fisher divergence with
      standard errors otherwise (see module docstring).

    Raises:
      ValueError: mismatched dimensions or weights, ``ts`` outside ``[0, 1]``, a
        non-normalizable ``C[p]``, missing ``key`` for a mixture tuple.
      NotImplementedError: ``C[p]`` has no closed form (e.g. Bayes composition over a mixture
        background with several conditionals).
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    conds = [_laws.unwrap(c, f"conditionals[{i}]") for i, c in enumerate(conditionals)]
    if not conds:
        raise ValueError("conditionals must not be empty")
    bg = _laws.unwrap(background, "background")
    for i, c in enumerate(conds):
        if c.dim != bg.dim:
            raise ValueError(f"conditionals[{i}] has dim {c.dim} but background has dim {bg.dim}")
    mixes = [_laws.as_mixture(p) for p in [bg] + conds]
    if all(m is not None and m[0].shape[0] == 1 for m in mixes):
        return gaussian_composition_gap(bg, conds, schedule, ts, weights)
    if key is None:
        raise ValueError("key is required for the Monte Carlo gap of a mixture tuple")
    from ..compose import composed_distribution

    comp = composed_distribution(bg, conds, weights)
    dt = comp.dtype
    w = _check_weights(weights, len(conds), dt)
    t = _check_ts(ts, dt)
    a = jax.vmap(schedule.alpha)(t)
    s = jax.vmap(schedule.sigma)(t)
    comp = cast_tree(comp, dt)
    inputs = tuple(cast_tree(p, dt) for p in [bg] + conds)
    groups = _block_mixture_groups((comp,) + inputs, dt)
    if groups is None:
        mean, se = _fisher_path_generic(key, comp, inputs, w, a, s, int(n))
    else:
        per_sample = max(int(np.prod(g[3].shape[:3])) * g[3].shape[-1] ** 2 for g in groups)
        chunk = int(max(1, min(int(n), _CHUNK_FLOATS // per_sample)))
        mean, se = _fisher_path(key, comp, tuple(groups), w, a, s, int(n), chunk)
    return GapResult(np.asarray(t), np.asarray(mean), np.asarray(se), "fisher_mc", int(n))
