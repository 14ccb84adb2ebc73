r"""The paper's success heuristic (Bradley et al. 2025, Lemma 8.1 and Section 8).

Under Factorized Conditionals (directly, or after an orthogonal feature map) the mean differences
``d_i = mu_i - mu_b`` are supported on disjoint blocks, hence pairwise orthogonal. Their pairwise
cosines are therefore a necessary-condition diagnostic: ``cos_ij ~ 0`` suggests concepts ``i`` and
``j`` may compose; a large ``|cos_ij|`` suggests they will not.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["mean_difference_cosines", "sampler_disagreement"]


def mean_difference_cosines(means: Any, background_mean: Any) -> jnp.ndarray:
    r"""Pairwise cosines of ``d_i = means[i] - background_mean``.

    ``cos_ij = d_i^T d_j / (|d_i| |d_j|)``; the result is symmetric with unit diagonal (exact
    arithmetic; the diagonal is set to 1 exactly).

    Args:
      means: ``(k, d)`` concept means ``mu_i`` (e.g. average embeddings), ``k >= 1``.
      background_mean: ``(d,)`` background mean ``mu_b``.

    Returns:
      ``(k, k)`` matrix of cosines, in ``means``' dtype.

    Raises:
      ValueError: on shape mismatch, or when some ``d_i`` is exactly zero (cosine undefined).

    Example:
      >>> import jax.numpy as jnp
      >>> mean_difference_cosines(jnp.array([[1., 0.], [0., 1.]]), jnp.zeros(2))
      Array([[1., 0.],
             [0., 1.]], dtype=float32)
    """
    m = jnp.asarray(means)
    b = jnp.asarray(background_mean)
    if m.ndim != 2:
        raise ValueError(f"means must have shape (k, d), got {tuple(m.shape)}")
    if b.shape != (m.shape[1],):
        raise ValueError(
            f"background_mean must have shape ({m.shape[1]},) to match means "
            f"{tuple(m.shape)}, got {tuple(b.shape)}"
        )
    dt = jnp.result_type(m.dtype, b.dtype, float)
    diff = m.astype(dt) - b.astype(dt)[None, :]
    norms = jnp.linalg.norm(diff, axis=1)
    if not bool(jnp.all(norms > 0)):
        bad = [int(i) for i in jnp.nonzero(norms == 0)[0]]
        raise ValueError(f"means[{bad}] equal background_mean: the cosine is undefined")
    u = diff / norms[:, None]
    c = jnp.clip(u @ u.T, -1.0, 1.0)
    c = 0.5 * (c + c.T)
    return jnp.where(jnp.eye(m.shape[0], dtype=bool), jnp.ones((), dt), c)


def sampler_disagreement(samples: Any, *, alpha: float = 0.01, floor: float = 0.04) -> dict:
    r"""Do several samplers' endpoints for the SAME composed model disagree? A diagnostic of a
    composition that is not a diffusion path (Bradley et al. 2025, Section 7).

    Under Factorized Conditionals the summed noised scores are the exact scores of
    ``N_t[C[p]]`` (Theorem 5.3), so every consistent reverse-diffusion sampler (reverse SDE,
    probability-flow ODE, predictor-corrector) targets the same law and their endpoints agree up
    to discretization. When FC fails, ``C[p^t]`` is not a diffusion path and the samplers
    integrate different (inconsistent) dynamics: their endpoints differ. The diagnostic compares
    every pair ``(a, b)`` of samplers coordinate-wise:

    * means: ``z = (xbar_a - xbar_b) / sqrt(v_a / n_a + v_b / n_b)`` (two-sample z, their standard
      errors);
    * standard deviations: ``z = (s_a - s_b) / sqrt(s_a^2 / (2 n_a) + s_b^2 / (2 n_b))`` (the
      normal-theory standard error of a sample sd);

    with a two-sided normal p-value, Bonferroni over all pairs, coordinates and the two moments.
    A difference counts when it is significant at ``alpha`` AND larger than ``floor`` pooled
    standard deviations (the discretization bias of consistent samplers, see
    :mod:`composition_jax.zoo.rules`, is below ``0.02`` sd at the zoo's step counts).

    Args:
      samples: ``{name: (n_name, d) array}`` of at least two samplers' outputs.
      alpha: family-wise level.
      floor: smallest difference, in pooled standard deviations, that counts.

    Returns:
      ``{"disagree": bool, "max_abs_z": float, "max_effect_sd": float, "worst": str, "pairs":
      {"a vs b": {"mean_diff": [...], "mean_z": [...], "sd_diff": [...], "sd_z": [...]}}}``.

    Raises:
      ValueError: fewer than two samplers, or samples of different dimensions.
    """
    import itertools
    import math

    import numpy as np
    from scipy.stats import norm

    if not isinstance(samples, dict) or len(samples) < 2:
        raise ValueError("samples must be a dict of at least two samplers' (n, d) outputs")
    arrs = {k: np.asarray(v, np.float64) for k, v in samples.items()}
    dims = {k: v.shape for k, v in arrs.items()}
    if any(v.ndim != 2 or v.shape[0] < 2 for v in arrs.values()) or len(
            {v.shape[1] for v in arrs.values()}) != 1:
        raise ValueError(f"samples must be (n, d) arrays of one dimension d, got {dims}")
    d = next(iter(arrs.values())).shape[1]
    pairs = list(itertools.combinations(arrs, 2))
    m = 2 * d * len(pairs)
    out, best = {}, (0.0, 0.0, "")
    disagree = False
    for a, b in pairs:
        xa, xb = arrs[a], arrs[b]
        na, nb = xa.shape[0], xb.shape[0]
        ma, mb, sa, sb = xa.mean(0), xb.mean(0), xa.std(0, ddof=1), xb.std(0, ddof=1)
        pooled = np.sqrt(0.5 * (sa**2 + sb**2))
        zm = (ma - mb) / np.sqrt(sa**2 / na + sb**2 / nb)
        zs = (sa - sb) / np.sqrt(sa**2 / (2 * na) + sb**2 / (2 * nb))
        for z, diff, what in ((zm, ma - mb, "mean"), (zs, sa - sb, "sd")):
            p = 2 * norm.sf(np.abs(z))
            eff = np.abs(diff) / pooled
            hit = (p < alpha / m) & (eff > floor)
            disagree = disagree or bool(hit.any())
            j = int(np.argmax(np.abs(z)))
            if abs(z[j]) > best[0]:
                best = (float(abs(z[j])), float(eff[j]), f"{a} vs {b}: {what} of coordinate {j}")
        out[f"{a} vs {b}"] = {"mean_diff": np.round(ma - mb, 5).tolist(),
                              "mean_z": np.round(zm, 2).tolist(),
                              "sd_diff": np.round(sa - sb, 5).tolist(),
                              "sd_z": np.round(zs, 2).tolist()}
    return {"disagree": disagree, "max_abs_z": round(best[0], 3),
            "max_effect_sd": round(best[1], 4), "worst": best[2], "alpha": alpha,
            "floor": floor, "num_comparisons": m, "pairs": out,
            "threshold_z": round(float(norm.isf(alpha / (2 * m))), 3) if m else math.inf}
