r"""Metropolis-corrected annealed samplers (Du et al., 2023, "Reduce, Reuse, Recycle").

Each step goes from noise level ``t`` to ``s = t_next``: an Euler-Maruyama reverse-SDE step, then
``mcmc_steps`` Metropolis-adjusted moves that leave the model's unnormalized ``p_s`` (its
``log_prob(x, s)``; ``log_prob_and_score`` is used when present) exactly invariant:

* ``annealed_mala``: proposal ``y = x + e grad log p(x) + sqrt(2 e) z``, accepted with
  probability ``min(1, p(y) q(x|y) / (p(x) q(y|x)))``;
* ``annealed_hmc``: ``n_leapfrog`` leapfrog steps of size ``e`` with a fresh ``N(0, I)`` momentum,
  accepted with ``min(1, exp(-Delta H))``.

Step sizes are per particle (so results do not depend on the batch): ``e = c * rho(s)`` with
``rho(s) = sigma_s^2 + alpha_s^2`` (the variance scale of ``p_s`` for unit-scale data) and
``log c`` adapted by Robbins-Monro toward ``target_accept`` after every move:
``log c += adapt_rate / sqrt(1 + k) * (a - target_accept)`` with ``a`` the acceptance
probability and ``k`` the number of moves so far (diminishing adaptation). A per-particle,
history-dependent step size makes the moves only approximately invariant while it still adapts
(it is state dependent); set ``adapt_rate=0`` for exactly invariant moves with fixed
``c = step_size``. The info reports per-particle mean acceptance
probability and step size of each level (the driver averages them over particles).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .kernels import Kernel, em_transition, model_log_prob_and_score, register_kernel

__all__ = ["MCMCInfo", "MCMCState"]


class MCMCState(NamedTuple):
    """``position (d,)`` and the per-particle ``log_scale`` (log of ``c``; scalar)."""

    position: jax.Array
    log_scale: jax.Array
    moves: jax.Array


class MCMCInfo(NamedTuple):
    """Per particle and level: mean acceptance probability and the last step size ``e``."""

    acceptance: jax.Array
    step_size: jax.Array


def _defaults(target):
    return (
        ("mcmc_steps", 2),
        ("step_size", 0.1),
        ("target_accept", target),
        ("adapt_rate", 1.0),
        ("n_leapfrog", 3),
    )


def _validate(opts):
    k = opts["mcmc_steps"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"mcmc_steps must be an int >= 1, got {k!r}")
    L = opts["n_leapfrog"]
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"n_leapfrog must be an int >= 1, got {L!r}")
    if not isinstance(opts["step_size"], (int, float)) or not opts["step_size"] > 0:
        raise ValueError(f"step_size must be a positive float, got {opts['step_size']!r}")
    if not 0 < opts["target_accept"] < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {opts['target_accept']!r}")
    if not opts["adapt_rate"] >= 0:
        raise ValueError(f"adapt_rate must be >= 0, got {opts['adapt_rate']!r}")


def _init(x, t, opts):
    return MCMCState(
        x, jnp.asarray(math.log(opts["step_size"]), x.dtype), jnp.zeros((), x.dtype)
    )


def _accept_prob(log_r):
    a = jnp.exp(jnp.minimum(log_r, 0.0))
    return jnp.where(jnp.isfinite(a), a, 0.0)


def _mala_move(model, s, x, lp, g, e, z):
    y = x + e * g + jnp.sqrt(2.0 * e) * z
    lpy, gy = model_log_prob_and_score(model, y, s)
    fwd = -jnp.sum((y - x - e * g) ** 2) / (4.0 * e)
    bwd = -jnp.sum((x - y - e * gy) ** 2) / (4.0 * e)
    return y, lpy, gy, lpy - lp + bwd - fwd


def _hmc_move(model, s, x, lp, g, e, p, n_leapfrog):
    def leap(_, c):
        q, p, lq, gq = c
        p = p + 0.5 * e * gq
        q = q + e * p
        lq, gq = model_log_prob_and_score(model, q, s)
        p = p + 0.5 * e * gq
        return q, p, lq, gq

    q, p1, lq, gq = jax.lax.fori_loop(0, n_leapfrog, leap, (x, p, lp, g))
    log_r = (lq - 0.5 * jnp.sum(p1 * p1)) - (lp - 0.5 * jnp.sum(p * p))
    return q, lq, gq, log_r


def _make_step(kind):
    def step(model, schedule, state, t, s, normals, uniforms, opts):
        x = em_transition(model, schedule, state.position, normals[:1], t, s, opts)
        rho = schedule.sigma2(s) + jnp.exp(2.0 * schedule.log_alpha(s))
        lp, g = model_log_prob_and_score(model, x, s)

        def move(carry, zu):
            x, lp, g, log_c, k = carry
            z, u = zu
            e = jnp.exp(log_c) * rho
            if kind == "mala":
                y, lpy, gy, log_r = _mala_move(model, s, x, lp, g, e, z)
            else:
                y, lpy, gy, log_r = _hmc_move(model, s, x, lp, g, e, z, opts["n_leapfrog"])
            a = _accept_prob(log_r)
            acc = jnp.log(u) < log_r
            x = jnp.where(acc, y, x)
            lp = jnp.where(acc, lpy, lp)
            g = jnp.where(acc, gy, g)
            gain = opts["adapt_rate"] / jnp.sqrt(1.0 + k)
            log_c = log_c + gain * (a - opts["target_accept"])
            return (x, lp, g, log_c, k + 1.0), (a, e)

        (x, lp, g, log_c, k), (a, e) = jax.lax.scan(
            move, (x, lp, g, state.log_scale, state.moves), (normals[1:], uniforms)
        )
        return MCMCState(x, log_c, k), MCMCInfo(jnp.mean(a), e[-1])

    return step


for _name, _kind, _target in (("annealed_mala", "mala", 0.574), ("annealed_hmc", "hmc", 0.65)):
    register_kernel(
        Kernel(
            name=_name,
            defaults=_defaults(_target),
            init=_init,
            step=_make_step(_kind),
            num_normals=lambda o: 1 + o["mcmc_steps"],
            num_uniforms=lambda o: o["mcmc_steps"],
            transition=None,
            affine=lambda o: False,
            needs_log_prob=True,
            validate=_validate,
        )
    )
