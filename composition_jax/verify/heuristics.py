r"""The paper's success heuristic (Bradley et al. 2025, Lemma 8.1 and Section 8).

Under Factorized Conditionals (directly, or after an orthogonal feature map) the mean differences
``d_i = mu_i - mu_b`` are supported on disjoint blocks, hence pairwise orthogonal. Their pairwise
cosines are therefore a necessary-condition diagnostic: ``cos_ij ~ 0`` suggests concepts ``i`` and
``j`` may compose; a large ``|cos_ij|`` suggests they will not.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["mean_difference_cosines"]


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
