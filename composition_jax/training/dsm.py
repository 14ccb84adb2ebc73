r"""Denoising score matching (Vincent, 2011; Song et al., 2021; Ho et al., 2020).

For ``x_t = alpha x_0 + sigma eps`` the conditional score is ``-eps / sigma``, and

``L(theta) = E_t E_{x_0, eps} [ w(t) lambda(t) |s_theta(x_t, t) + eps / sigma(t)|^2 ]``

is minimised by the true noised score ``grad log p_t`` for every positive ``lambda``. With the
predicted noise ``eps_hat = -sigma s_theta`` the integrand is ``lambda / sigma^2 |eps_hat - eps|^2``:

==============  ========================  =============================================================
weighting       ``lambda(t)``             per-example loss
==============  ========================  =============================================================
``"eps"``       ``sigma^2``               ``|eps_hat - eps|^2`` (DDPM's simple loss; the default)
``"score"``     ``1``                     ``|eps_hat - eps|^2 / sigma^2`` (plain score matching;
                                          Fisher-divergence weighting, high variance at small t)
``"x0"``        ``sigma^4 / alpha^2``     ``(sigma/alpha)^2 |eps_hat - eps|^2 = |x0_hat - x0|^2``
``"velocity"``  ``sigma^2 (D/alpha)^2``   ``(D/alpha)^2 |eps_hat - eps|^2 = |v_hat - v|^2``
==============  ========================  =============================================================

``"velocity"`` is the (conditional) flow-matching loss (Lipman et al. 2023, Eq. 23; Liu et al.
2023): the target is the conditional velocity ``v = alpha' x_0 + sigma' eps`` of the path
``x_t = alpha x_0 + sigma eps`` and ``v_hat = (alpha' x_t + D eps_hat) / alpha`` with
``D = alpha sigma' - sigma alpha'`` (:mod:`composition_jax.velocity`), so
``v_hat - v = (D / alpha)(eps_hat - eps)``: flow matching is denoising score matching with the
weight ``lambda = sigma^2 (D / alpha)^2`` (``sigma^2 / (1 - t)^2`` for the rectified-flow
schedule) and has the same minimiser. With ``parameterization="velocity"`` it is computed in the
exact form ``|out - v|^2``.

Times: ``"uniform"`` (``t ~ U[t_min, t_max]``), ``"stratified"`` (one uniform shift of a regular
grid across the batch: same law per example, lower variance; Kingma et al., 2021) or
``"log_snr"`` (``log SNR`` uniform between its values at ``t_max`` and ``t_min``). With
``importance_weight=True`` a log-SNR draw is reweighted by the density ratio
``w(t) = (lam_max - lam_min) / ((t_max - t_min) |d lam / dt|)``, so the objective is the same as
with uniform ``t`` but the samples concentrate where ``log SNR`` changes (an importance sampler
of the uniform-``t`` objective).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..nn.model import input_scale, output_to_eps

__all__ = [
    "TIME_SAMPLINGS", "WEIGHTINGS", "dsm_loss_per_example", "flow_matching_loss_per_example",
    "sample_times",
]

WEIGHTINGS = ("eps", "score", "x0", "velocity")
TIME_SAMPLINGS = ("uniform", "stratified", "log_snr")


def sample_times(
    key: jax.Array,
    n: int,
    schedule: Any,
    t_min: float,
    t_max: float,
    method: str = "uniform",
    importance_weight: bool = False,
    dtype: Any = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Draw ``n`` training times and their importance weights, each of shape ``(n,)``.

    The weights are 1 except for ``method="log_snr"`` with ``importance_weight=True``, where
    ``E_q[w(t) f(t)] = E_{U[t_min, t_max]}[f(t)]`` for every ``f``.
    """
    lo = jnp.asarray(t_min, dtype)
    hi = jnp.asarray(t_max, dtype)
    ones = jnp.ones((n,), dtype)
    if method == "uniform":
        return lo + (hi - lo) * jax.random.uniform(key, (n,), dtype), ones
    if method == "stratified":
        u = jax.random.uniform(key, (), dtype)
        grid = (u + jnp.arange(n, dtype=dtype) / n) % 1.0
        return lo + (hi - lo) * grid, ones
    if method == "log_snr":
        lam_lo = schedule.log_snr(hi).astype(dtype)
        lam_hi = schedule.log_snr(lo).astype(dtype)
        lam = lam_lo + (lam_hi - lam_lo) * jax.random.uniform(key, (n,), dtype)
        t = jnp.clip(jax.vmap(schedule.t_from_log_snr)(lam).astype(dtype), lo, hi)
        if not importance_weight:
            return t, ones
        dlam = jax.vmap(jax.grad(lambda s: schedule.log_snr(s).astype(dtype)))(t)
        w = (lam_hi - lam_lo) / ((hi - lo) * jnp.abs(dlam))
        return t, w
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {method!r}")


def dsm_loss_per_example(
    params: Any,
    network: Any,
    schedule: Any,
    parameterization: str,
    weighting: str,
    x0: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    cond: jax.Array,
) -> jax.Array:
    """Per-example DSM loss, shape ``(B,)``, for ``x0, eps (B, d)``, ``t (B,)``, ``cond (B,)``.

    The network sees ``x_t / sqrt(alpha^2 + sigma^2)`` exactly as
    :class:`composition_jax.nn.ScoreNetModel` feeds it, so the trained parameters are the model's.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    a = jax.vmap(schedule.alpha)(t).astype(x0.dtype)[:, None]
    s = jax.vmap(schedule.sigma)(t).astype(x0.dtype)[:, None]
    xt = a * x0 + s * eps
    da, ds = jax.vmap(schedule.alpha_sigma_dot)(t)
    da, ds = da.astype(x0.dtype)[:, None], ds.astype(x0.dtype)[:, None]
    out = network.apply(params, xt * input_scale(a, s), t, cond)
    if parameterization == "x0" and weighting == "x0":
        err = jnp.sum((out - x0) ** 2, -1)  # exact form, no division by sigma
        return err
    if parameterization == "velocity" and weighting == "velocity":
        return jnp.sum((out - (da * x0 + ds * eps)) ** 2, -1)  # exact form
    eps_hat = output_to_eps(out, xt, a, s, parameterization, da, ds)
    err = jnp.sum((eps_hat - eps) ** 2, -1)
    if weighting == "eps":
        return err
    if weighting == "score":
        return err / (s[:, 0] ** 2)
    if weighting == "velocity":
        return err * ((a[:, 0] * ds[:, 0] - s[:, 0] * da[:, 0]) / a[:, 0]) ** 2
    return err * (s[:, 0] / a[:, 0]) ** 2


def flow_matching_loss_per_example(
    params: Any,
    network: Any,
    schedule: Any,
    x0: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    cond: jax.Array,
    parameterization: str = "velocity",
) -> jax.Array:
    """Per-example conditional flow-matching loss ``|v_hat(x_t, t) - (alpha' x_0 + sigma' eps)|^2``,
    shape ``(B,)`` (Lipman et al. 2023, Eq. 23): :func:`dsm_loss_per_example` with
    ``weighting="velocity"``."""
    return dsm_loss_per_example(params, network, schedule, parameterization, "velocity", x0, t,
                                eps, cond)
