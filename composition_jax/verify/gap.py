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

Under Factorized Conditionals (and after orthogonal transforms) both are zero up to float
rounding; for a shear they are positive at intermediate noise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Sequence

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


@functools.partial(jax.jit, static_argnames=("n",))
def _fisher_path(key, comp, inputs, w, alphas, sigmas, n):
    dt = alphas.dtype
    coef = jnp.concatenate([jnp.reshape(1.0 - jnp.sum(w), (1,)), w])

    def one(args):
        k, a, s = args
        k0, ke = jax.random.split(k)
        x0 = comp.sample(k0, n).astype(dt)
        eps = jax.vmap(lambda kk: jax.random.normal(kk, (x0.shape[1],), dt))(
            per_sample_keys(ke, n))
        x = a * x0 + s * eps

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
    inputs = tuple(cast_tree(p, dt) for p in [bg] + conds)
    mean, se = _fisher_path(key, cast_tree(comp, dt), inputs, w, a, s, int(n))
    return GapResult(np.asarray(t), np.asarray(mean), np.asarray(se), "fisher_mc", int(n))
