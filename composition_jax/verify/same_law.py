r"""Test the WHOLE joint law of a sample against a reference: ``law(x) == q``.

:func:`projective` tests block marginals only (Definition 4.1 of Bradley et al. 2025 constrains
nothing else). Theorem 5.3 says more: under Factorized Conditionals the sampler reaches the
exact composition ``C[p] = p_b|_{M_b} prod_i p_i|_{M_i}``, blocks *independent* (the independent
coupling of the blocks). :func:`same_law` tests that joint statement. Its components:

* ``mmd``: permutation test with the unbiased Gaussian-kernel ``MMD_u^2`` (median-heuristic
  bandwidth on the pooled sample), ``x`` against ``m`` reference points (exact draws from the
  reference distribution, or the given reference sample);
* ``energy``: permutation test with the U-statistic energy distance (Szekely & Rizzo 2013)
  ``E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|``, i.e. MMD with the distance-induced kernel
  ``-|u - v|``; it is characteristic and needs no bandwidth. Both statistics are evaluated on
  the SAME permutations in one blocked pass over the pooled distance matrix. The permutation
  p-value ``(1 + #{T_perm >= T_obs}) / (1 + P)`` is exactly valid (exchangeability under the
  null), whatever ``n``;
* ``mean`` (a reference with exact moments: Gaussian, mixture, products and closed-form
  pushforwards of those): ``chi2 = n (xbar - mu)^T Sigma^{-1} (xbar - mu)``, the Hotelling
  statistic with the covariance known; ``chi2_d`` exactly for a Gaussian reference, by the CLT
  otherwise;
* ``cov``: the Wald test of ``Cov(x) = Sigma``, ``W = n v^T Gamma^+ v`` with
  ``v = vech(S - Sigma)`` (``S`` the unbiased sample covariance) and ``Gamma`` the exact
  covariance of ``vech((x - mu)(x - mu)^T)`` under the reference, computed from its fourth
  moments (Isserlis per mixture component: for a Gaussian ``Gamma_{ij,kl} = Sigma_ik Sigma_jl +
  Sigma_il Sigma_jk``); ``W -> chi2_r`` with ``r = rank(Gamma)`` (asymptotic; the pooled statistic
  has more power than entrywise z-scores against a spread-out change such as a 10 % variance
  error on every coordinate or a cross-block correlation).

**Family-wise level.** The components' p-values are combined with Holm's step-down procedure at
level ``alpha`` (the ``j``-th smallest p-value is compared with ``alpha / (c - j + 1)``; valid under
any dependence between the components, uniformly more powerful than Bonferroni). The report
``.passed`` when no component rejects; the family-wise false-positive rate is at most ``alpha``
(up to the asymptotic approximations of the ``mean`` / ``cov`` components, measured in
``tests/test_calibration.py``).

**Effect sizes with their sampling error.** Each component reports the standard error of its
effect size estimated from the data (``effect_se``): delta method for the mean and covariance
effects (:func:`~composition_jax.verify.stats.mahalanobis_se`,
:func:`~composition_jax.verify.stats.relative_frobenius_se`), Hoeffding's first-order term plus
the permutation variance for MMD and energy
(:func:`~composition_jax.verify.stats.two_sample_se`), and ``effect_lower = effect_size -
z_{1 - alpha/c} effect_se``, a lower confidence bound on the true effect (Bonferroni over the
``c`` components).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc

from . import _laws, stats

__all__ = ["SameLawReport", "holm", "same_law", "same_law_arrays", "wald_cov_whitener"]

_NAMES_2S = ("mmd", "energy")


@dataclasses.dataclass(frozen=True)
class SameLawComponent:
    """One component test of :func:`same_law` (``threshold``: its Holm level; ``effect_se``: the
    standard error of ``effect_size`` estimated from the data; ``effect_lower``: a lower
    confidence bound on the true effect at confidence ``1 - alpha / c``, Bonferroni over the
    ``c`` components)."""

    name: str
    statistic: float
    p_value: float
    effect_size: float
    effect_name: str
    threshold: float
    rejected: bool
    effect_se: float = float("nan")
    effect_lower: float = float("nan")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SameLawReport:
    """Result of :func:`same_law`: ``.passed`` iff no component rejects under Holm at
    ``alpha``."""

    components: tuple[SameLawComponent, ...]
    alpha: float
    n: int
    m: int
    correction: str = "holm"
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not any(c.rejected for c in self.components)

    @property
    def p_values(self) -> dict:
        return {c.name: c.p_value for c in self.components}

    @property
    def effects(self) -> dict:
        return {c.effect_name: c.effect_size for c in self.components}

    def to_dict(self) -> dict:
        return {"passed": self.passed, "alpha": self.alpha, "correction": self.correction,
                "n": self.n, "m": self.m, "notes": list(self.notes),
                "components": [c.to_dict() for c in self.components]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        lines = [f"Same-law test: {'PASSED' if self.passed else 'FAILED'} (n={self.n}, "
                 f"m={self.m} reference points, {len(self.components)} components, Holm at "
                 f"alpha={self.alpha})"]
        for c in self.components:
            lines.append(f"  {c.name:<8s} stat={c.statistic:<11.4g} p={c.p_value:<10.3g} "
                         f"{c.effect_name}={c.effect_size:<10.4g} lower={c.effect_lower:<10.3g} "
                         f"level={c.threshold:.2e} {'REJECT' if c.rejected else 'ok'}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ Holm
def holm(p_values: Any, alpha: float) -> tuple[jax.Array, jax.Array]:
    """Holm's step-down procedure (traceable, vmappable).

    Args:
      p_values: ``(c,)`` p-values.
      alpha: family-wise level.

    Returns:
      ``(rejected (c,) bool, thresholds (c,))``: ``thresholds[j] = alpha / (c - r_j)`` with
      ``r_j`` the rank (0-based) of ``p_j``; ``p_(r)`` is rejected iff ``p_(s) <= alpha/(c - s)``
      for every ``s <= r``.
    """
    p = jnp.asarray(p_values)
    c = p.shape[-1]
    order = jnp.argsort(p, axis=-1)
    ps = jnp.take_along_axis(p, order, axis=-1)
    thr_sorted = alpha / (c - jnp.arange(c, dtype=p.dtype))
    ok_sorted = jnp.cumprod((ps <= thr_sorted).astype(jnp.int32), axis=-1).astype(bool)
    inv = jnp.argsort(order, axis=-1)
    return (jnp.take_along_axis(ok_sorted, inv, axis=-1),
            jnp.take_along_axis(jnp.broadcast_to(thr_sorted, ps.shape), inv, axis=-1))


# ------------------------------------------------------------------- two-sample statistics
def _dist_kernel_matmul(z, W, h, block_size):
    """``(K @ W, D @ W)`` with ``K_ij = exp(-|z_i - z_j|^2 / (2 h^2))`` and ``D_ij = |z_i - z_j|``
    computed in row blocks (memory ``block_size * N``)."""
    N, d = z.shape
    nb = -(-N // block_size)
    zp = jnp.concatenate([z, jnp.zeros((nb * block_size - N, d), z.dtype)])
    sq = jnp.sum(z * z, -1)
    inv = 0.5 / (h * h)

    def rows(zb):
        d2 = jnp.maximum(jnp.sum(zb * zb, -1)[:, None] + sq[None, :] - 2.0 * zb @ z.T, 0.0)
        return jnp.exp(-d2 * inv) @ W, jnp.sqrt(d2) @ W

    kw, dw = jax.lax.map(rows, zp.reshape(nb, block_size, d))
    return (kw.reshape(nb * block_size, -1)[:N], dw.reshape(nb * block_size, -1)[:N])


def _quadratic_forms(U, MW, n, m):
    """Within/between sums of a symmetric matrix ``M`` for every labelling column of ``U``
    (``MW = M @ [U, 1]``): ``(s_xx, s_yy, s_xy)`` including the diagonal of ``M`` in
    ``s_xx``/``s_yy``."""
    MU, M1 = MW[:, :-1], MW[:, -1]
    uMu = jnp.sum(U * MU, 0)
    uM1 = U.T @ M1
    oMo = jnp.sum(M1)
    return uMu, oMo - 2.0 * uM1 + uMu, uM1 - uMu


def _two_sample(key, x, y, bandwidth, num_permutations, block_size):
    """Observed and permuted ``MMD_u^2`` and energy distance; bandwidth (NaN: median)."""
    n, m = x.shape[0], y.shape[0]
    z = jnp.concatenate([x, y])
    kb, kp = jax.random.split(key)
    h = jnp.where(jnp.isnan(bandwidth), stats.median_bandwidth(kb, z, 1000),
                  bandwidth).astype(z.dtype)
    U = stats._perm_labels(kp, n, m, num_permutations, z.dtype)
    W = jnp.concatenate([U, jnp.ones((z.shape[0], 1), z.dtype)], axis=1)
    KW, DW = _dist_kernel_matmul(z, W, h, block_size)
    kxx, kyy, kxy = _quadratic_forms(U, KW, n, m)
    mmd = (kxx - n) / (n * (n - 1)) + (kyy - m) / (m * (m - 1)) - 2.0 * kxy / (n * m)
    dxx, dyy, dxy = _quadratic_forms(U, DW, n, m)  # zero diagonal
    exy = dxy / (n * m)
    energy = 2.0 * exy - dxx / (n * (n - 1)) - dyy / (m * (m - 1))
    # standard errors (first-order Hoeffding term + permutation variance); the energy distance
    # is the U-statistic of the kernel -|u - v| (zero diagonal)
    se_mmd = stats.two_sample_se(KW, U[:, 0], n, m, 1.0, mmd[1:])
    se_energy = stats.two_sample_se(-DW, U[:, 0], n, m, 0.0, energy[1:])
    return mmd, energy, exy, se_mmd, se_energy


# ------------------------------------------------------------------------ moment statistics
def wald_cov_whitener(dist: Any, rtol: float = 1e-8) -> tuple[np.ndarray, int] | None:
    r"""``(G, r)`` with ``G (r, q)`` such that ``W = n |G vech(S - Sigma)|^2`` is the Wald
    statistic of ``Cov = Sigma`` (``G^T G = Gamma^+``), from the reference's exact fourth
    moments; ``q = d(d+1)/2``, ``r = rank(Gamma)`` (eigenvalues above ``rtol * max``). ``None``
    when the reference has no closed-form mixture representation. Computed in float64 NumPy
    from concrete parameters (the reference is fixed across trials)."""
    mix = _laws.as_mixture(dist)
    if mix is None:
        return None
    w, M, C = (np.asarray(a, np.float64) for a in mix)
    mu = w @ M
    dl = M - mu[None]
    Sig = np.einsum("k,kij->ij", w, C) + np.einsum("k,ki,kj->ij", w, dl, dl)
    # E[c_i c_j c_k c_l] per component (c = x - mu, component offset dl, covariance C)
    e4 = np.einsum("a,ai,aj,ak,al->ijkl", w, dl, dl, dl, dl)
    for (p, q_), (r, s) in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)),
                            ((2, 3), (0, 1)), ((1, 3), (0, 2)), ((1, 2), (0, 3))):
        sub = "a" + "ijkl"[p] + ",a" + "ijkl"[q_] + ",a" + "ijkl"[r] + "ijkl"[s]
        e4 = e4 + np.einsum(f"a,{sub}->ijkl", w, dl, dl, C)
    e4 = e4 + (np.einsum("a,aij,akl->ijkl", w, C, C) + np.einsum("a,aik,ajl->ijkl", w, C, C)
               + np.einsum("a,ail,ajk->ijkl", w, C, C))
    d = Sig.shape[0]
    iu = np.triu_indices(d)
    gam = (e4 - Sig[:, :, None, None] * Sig[None, None])[iu[0], iu[1]][:, iu[0], iu[1]]
    ev, V = np.linalg.eigh(0.5 * (gam + gam.T))
    keep = ev > rtol * max(ev.max(), 0.0)
    G = (V[:, keep] / np.sqrt(ev[keep])).T
    return G, int(keep.sum())


def _moment_stats(x, mu, chol, G, r):
    n, d = x.shape
    xbar = jnp.mean(x, 0)
    wv = jax.scipy.linalg.solve_triangular(chol, xbar - mu, lower=True)
    maha2 = jnp.sum(wv * wv)
    chi2 = n * maha2
    p_mean = gammaincc(jnp.asarray(d / 2.0, x.dtype), chi2 / 2.0)
    xc = x - xbar[None, :]
    S = xc.T @ xc / (n - 1)
    Sig = chol @ chol.T
    iu = np.triu_indices(d)
    v = (S - Sig)[iu]
    gv = G @ v
    W = n * jnp.sum(gv * gv)
    p_cov = gammaincc(jnp.asarray(r / 2.0, x.dtype), W / 2.0)
    rel = jnp.linalg.norm(S - Sig) / jnp.linalg.norm(Sig)
    return ((chi2, p_mean, jnp.sqrt(maha2), stats.mahalanobis_se(x, chol, wv)),
            (W, p_cov, rel, stats.relative_frobenius_se(xc, S - Sig, Sig)))


# ------------------------------------------------------------------------------ the core
@functools.partial(jax.jit, static_argnames=("num_permutations", "block_size", "two_sample",
                                             "moments", "m", "rank"))
def _core(key, x, ref, ref_sample, mu, chol, G, bandwidth, *, num_permutations, block_size,
          two_sample, moments, m, rank):
    kr, ks, kt = jax.random.split(key, 3)
    stat, pv, eff, se = [], [], [], []
    if two_sample:
        n = x.shape[0]
        xs = x
        if n > m:
            xs = x[jax.random.choice(ks, n, (m,), replace=False)]
        y = ref.sample(kr, m).astype(x.dtype) if ref_sample is None else ref_sample
        mmd, energy, exy, se_m, se_e = _two_sample(kt, xs, y, bandwidth, num_permutations,
                                                   block_size)
        for s in (mmd, energy):
            stat.append(s[0])
            pv.append(stats._perm_pvalue(s))
        eff += [mmd[0], energy[0] / (2.0 * exy[0])]
        se += [se_m, se_e / (2.0 * exy[0])]
    if moments:
        (c2, pm, em, sm), (W, pc, ec, sc) = _moment_stats(x, mu, chol, G, rank)
        stat += [c2, W]
        pv += [pm, pc]
        eff += [em, ec]
        se += [sm, sc]
    return jnp.stack(stat), jnp.stack(pv), jnp.stack(eff), jnp.stack(se)


_EFFECT_NAMES = {"mmd": "mmd2_unbiased", "energy": "energy_coefficient",
                 "mean": "mahalanobis_mean_error", "cov": "relative_cov_error"}


def _prepare(x, reference, alpha, two_sample_n, num_permutations, moments, two_sample):
    x = stats.check_samples(x, "x")
    n, d = x.shape
    notes = []
    if isinstance(reference, (jax.Array, np.ndarray, list, tuple)):
        ref_sample = stats.check_samples(reference, "reference", dim=d).astype(x.dtype)
        ref = None
        mom = None
        if not two_sample:
            raise ValueError("a reference sample needs the two-sample components "
                             "(two_sample=True): there are no exact moments to test")
        m = int(ref_sample.shape[0])
        if m > two_sample_n:
            ref_sample = ref_sample[:two_sample_n]
            m = two_sample_n
            notes.append(f"reference sample truncated to its first {m} points")
    else:
        ref = _laws.unwrap(reference, "reference")
        if ref.dim != d:
            raise ValueError(f"reference has dim {ref.dim} but x has shape {tuple(x.shape)}")
        ref_sample = None
        m = int(min(n, two_sample_n))
        mom = _laws.moments(ref) if moments else None
        if moments and mom is None:
            notes.append("reference has no closed-form moments: mean/cov components skipped")
    if mom is not None:
        wh = wald_cov_whitener(ref)
        mu = jnp.asarray(mom[0], x.dtype)
        chol = jnp.asarray(np.linalg.cholesky(np.asarray(mom[1], np.float64)), x.dtype)
        G, rank = jnp.asarray(wh[0], x.dtype), wh[1]
    else:
        mu = chol = G = None
        rank = 0
    names = (_NAMES_2S if two_sample else ()) + (("mean", "cov") if mom is not None else ())
    if not names:
        raise ValueError("no component to run: enable two_sample or give a reference with "
                         "exact moments")
    c = len(names)
    if num_permutations is None:
        num_permutations = max(99, int(math.ceil(2.0 * c / alpha)) - 1)
    P = int(num_permutations)
    if two_sample and 1.0 / (P + 1) > alpha / c:
        notes.append(f"num_permutations={P}: the smallest permutation p-value 1/{P + 1} is "
                     f"above the smallest Holm level {alpha}/{c}")
    return x, ref, ref_sample, mu, chol, G, rank, m, P, names, notes


def same_law_arrays(x: Any, reference: Any, *, alpha: float = 0.01,
                    two_sample_n: int = 1000, num_permutations: int | None = None,
                    bandwidth: float | None = None, moments: bool = True,
                    two_sample: bool = True, block_size: int = 1024):
    """The arrays behind :func:`same_law`: ``(names, fn)`` where ``fn(key, x) -> (statistics,
    p_values, effect_sizes, effect_ses)`` (each ``(c,)``) is a jitted pure function of
    ``(key, x)`` for this
    reference, to be ``jax.vmap``-ed over many data sets (calibration). Same arguments as
    :func:`same_law`; ``x`` fixes the shape."""
    x, ref, ref_sample, mu, chol, G, rank, m, P, names, _ = _prepare(
        x, reference, alpha, int(two_sample_n), num_permutations, moments, two_sample)
    bw = jnp.asarray(np.nan if bandwidth is None else bandwidth, x.dtype)
    fn = functools.partial(_core, ref=ref, ref_sample=ref_sample, mu=mu, chol=chol, G=G,
                           bandwidth=bw, num_permutations=P, block_size=int(block_size),
                           two_sample=bool(two_sample), moments=mu is not None, m=m, rank=rank)
    return names, lambda k, xx: fn(k, xx)


def same_law(
    x: Any,
    reference: Any,
    *,
    key: jax.Array,
    alpha: float = 0.01,
    two_sample_n: int = 1000,
    num_permutations: int | None = None,
    bandwidth: float | None = None,
    moments: bool = True,
    two_sample: bool = True,
    block_size: int = 1024,
) -> SameLawReport:
    r"""Calibrated test of ``law(x) == reference`` for the whole joint law (module docstring).

    Args:
      x: ``(n, d)`` samples, ``n >= 2``.
      reference: a distribution with exact ``sample`` (Gaussian, GaussianMixture, Product,
        LinearPushforward, FactorMixture, ... or ``diffuse(dist, schedule)``, whose clean law is
        used; exact moment tests run when it has a closed-form mixture representation), or an
        ``(m, d)`` array of reference samples (two-sample components only).
      key: PRNG key: exact reference draws (``fold``-derived from ``key``), the subsample of
        ``x``, the bandwidth subsample and the permutations.
      alpha: family-wise level (Holm over the components).
      two_sample_n: at most this many points of ``x`` (a random subsample) and of the reference
        enter the permutation tests (cost ``O((2 m)^2 P)``); the moment tests use all ``n``.
      num_permutations: ``P``; default ``max(99, ceil(2 c / alpha) - 1)`` for ``c`` components,
        so the smallest attainable p-value ``1/(P + 1)`` is below the smallest Holm level.
      bandwidth: Gaussian-kernel bandwidth of the MMD (default: median heuristic).
      moments: run the exact ``mean`` / ``cov`` tests when the reference allows them.
      two_sample: run the ``mmd`` / ``energy`` permutation tests.
      block_size: rows of the pooled distance matrix computed at once.

    Returns:
      :class:`SameLawReport` (``.passed``, ``.p_values``, ``.effects``, ``.components``,
      ``.to_dict()``, ``str()``).

    Raises:
      ValueError: ``x`` not ``(n, d)``, a reference of another dimension, a reference sample
        without the two-sample components, nothing to run.
      TypeError: a reference that is neither a distribution nor an array.

    Example:
      >>> import jax, jax.numpy as jnp, composition_jax as cj
      >>> q = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
      >>> x = q.sample(jax.random.key(1), 500)
      >>> cj.verify.same_law(x, q, key=jax.random.key(2), num_permutations=199).passed
      True
    """
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
    x_, ref, ref_sample, mu, chol, G, rank, m, P, names, notes = _prepare(
        x, reference, alpha, int(two_sample_n), num_permutations, moments, two_sample)
    bw = jnp.asarray(np.nan if bandwidth is None else bandwidth, x_.dtype)
    st, pv, ef, se = _core(key, x_, ref, ref_sample, mu, chol, G, bw, num_permutations=P,
                           block_size=int(block_size), two_sample=bool(two_sample),
                           moments=mu is not None, m=m, rank=rank)
    pv = np.asarray(pv, np.float64)
    rej, thr = holm(jnp.asarray(pv), float(alpha))
    level = float(alpha) / len(names)
    comps = tuple(
        SameLawComponent(nm, float(s), float(p), float(e), _EFFECT_NAMES[nm], float(t), bool(r),
                         float(sd), float(stats.effect_lower_bound(_EFFECT_NAMES[nm], e, sd,
                                                                   level, int(x_.shape[0]))))
        for nm, s, p, e, t, r, sd in zip(names, np.asarray(st), pv, np.asarray(ef),
                                         np.asarray(thr), np.asarray(rej), np.asarray(se)))
    return SameLawReport(comps, float(alpha), int(x_.shape[0]), m, "holm", tuple(notes))
