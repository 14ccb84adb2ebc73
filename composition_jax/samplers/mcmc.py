r"""Metropolis-corrected annealed samplers (Du et al., 2023, "Reduce, Reuse, Recycle").

Each step goes from noise level ``t`` to ``s = t_next``: an Euler-Maruyama reverse-SDE step, then
``mcmc_steps`` Metropolis-adjusted moves that leave the model's unnormalized ``p_s`` (its
``log_prob(x, s)``; ``log_prob_and_score`` is used when present) exactly invariant:

* ``annealed_mala``: proposal ``y = x + e grad log p(x) + sqrt(2 e) z``, accepted with
  probability ``min(1, p(y) q(x|y) / (p(x) q(y|x)))``;
* ``annealed_hmc``: ``n_leapfrog`` leapfrog steps of size ``e' = e (1 - v)``, ``v ~ U[0, 1)``
  drawn afresh for every move (so ``e'`` is uniform on ``(0, e]``), with a fresh ``N(0, I)``
  momentum, accepted with ``min(1, exp(-Delta H))``. The step is drawn independently of the
  state, so every move is a mixture over ``e'`` of exact Metropolis-Hastings kernels and leaves
  ``p_s`` invariant (step-size jittering, Neal 2011, "MCMC using Hamiltonian dynamics",
  Sec. 5.4.2.2). It breaks the near-periodicity of a fixed step: on a Gaussian target with
  precision eigenvalue ``w^2`` one leapfrog step turns phase space by
  ``phi = arccos(1 - (e w)^2 / 2)``, and when ``n_leapfrog * phi`` is close to a multiple of
  ``pi`` an accepted move barely changes ``q`` along that axis (with the tuned step of a 2-D
  Gaussian, ``3 phi = 2 pi + 0.45``: the mean error decayed by only 0.93 per move).

Step sizes: ``e_l = c_l * rho(s_l)`` at level ``l``, with ``rho(s) = sigma_s^2 + alpha_s^2`` (the
variance scale of ``p_s`` for unit-scale data) and ONE number ``c_l`` per level, shared by all
particles and fixed before the main run:

* ``adapt=True`` (default): ``c_l`` is tuned on a PILOT ensemble of ``n_pilot`` particles drawn
  from a key derived from the main key (:func:`~composition_jax.samplers.noise.pilot_keys`),
  never from the main particles. The pilot runs this very sampler; at each level, after its
  predictor step, ``log c_l`` solves ``A(log c) = target_accept`` by bisection on
  ``log c_{l-1} +- 3`` (8 halvings; ``c_{-1} = step_size``), where ``A`` is the pilot's
  ensemble-mean acceptance probability of one probe move with common probe noise (a smooth,
  nearly deterministic function of ``c`` for ``n_pilot`` in the hundreds: its standard error is
  ``<= 0.5 / sqrt(n_pilot)``); the pilot then moves with ``c_l``. For HMC the probe moves
  use the full step ``e_l``, which the moves' ``e' ~ U(0, e_l]`` never exceed: the moves accept
  more often than ``target_accept`` (about 0.9 against 0.65 on a 2-D Gaussian).
  ``target_accept`` defaults to 0.574 (MALA, Roberts & Rosenthal 1998) and 0.65 (HMC, Beskos et
  al. 2013).
  Why not dual averaging (Hoffman & Gelman 2014): it was tried first (restarted at each level
  from ``log c_{l-1}``, driven by the same ensemble mean): with the few moves of a level it
  oscillated across HMC's acceptance cliff near the leapfrog stability limit (levels with
  acceptance 2e-4 next to 0.99 on the 2-D ring); the bisection keeps every level near target.
* ``adapt=False``: ``c_l = step_size`` for every level.

Why this is exact and batch independent: ``c_l`` is a function of ``(key, n_pilot)`` only, so for
the main particles each level's move is a Metropolis-Hastings kernel with a FIXED proposal, which
leaves ``p_{s_l}`` exactly invariant, and particle ``i`` still depends only on ``(key, i)``
whatever ``n``, jit or devices. (Adapting each particle's step from its own acceptance history,
as an earlier version did, makes the step a function of the particle's past states; the moves
are then not ``p_s``-invariant, and HMC measurably over-dispersed on a 2-D mixture. Averaging
acceptance over the main batch would instead tie particle ``i`` to the others.) The annealed
sampler as a whole is still approximate: the predictor steps move particles off ``p_s`` and a
few moves only partly correct that; the error vanishes as ``steps`` grows.

The info reports, per level, the main particles' mean acceptance probability and the step size
``e_l`` (for HMC the upper end of the per-move step ``e' ~ U(0, e_l]``). The method objects
are :class:`~composition_jax.samplers.methods.AnnealedMALA` and
:class:`~composition_jax.samplers.methods.AnnealedHMC`; this module holds their math (``kind``
is ``"mala"`` or ``"hmc"``; ``predictor`` is the Euler-Maruyama transition
``predictor(model, schedule, x, normals, t, t_next)``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .noise import draw_normals, draw_uniforms, pilot_init, pilot_keys

__all__ = [
    "BISECT_ITERS", "BISECT_WIDTH", "MCMCInfo", "MCMCState", "annealed_step", "mcmc_tune",
    "uniforms_per_move",
]

#: Step-size search per level: bisection in ``log c`` on ``log c_{l-1} +- BISECT_WIDTH`` with
#: ``BISECT_ITERS`` halvings (final resolution ``2 * 3 / 2^8 ~ 0.023`` in ``log c``).
BISECT_WIDTH, BISECT_ITERS = 3.0, 8


class MCMCState(NamedTuple):
    """``position (d,)`` of one particle."""

    position: jax.Array


class MCMCInfo(NamedTuple):
    """Per particle and level: mean acceptance probability of its moves and the step size."""

    acceptance: jax.Array
    step_size: jax.Array


def log_prob_and_score(model, x, t):
    """``(log p_t(x), s(x, t))`` of a model that declares ``has_log_prob`` (the log density in
    ``x``'s dtype)."""
    lp, s = model.log_prob_and_score(x, t)
    return jnp.asarray(lp, x.dtype), s


def _rho(schedule, s):
    return schedule.sigma2(s) + jnp.exp(2.0 * schedule.log_alpha(s))


def _accept_prob(log_r):
    a = jnp.exp(jnp.minimum(log_r, 0.0))
    return jnp.where(jnp.isfinite(a), a, 0.0)


def _mala_move(model, s, x, lp, g, e, z):
    y = x + e * g + jnp.sqrt(2.0 * e) * z
    lpy, gy = log_prob_and_score(model, y, s)
    fwd = -jnp.sum((y - x - e * g) ** 2) / (4.0 * e)
    bwd = -jnp.sum((x - y - e * gy) ** 2) / (4.0 * e)
    return y, lpy, gy, lpy - lp + bwd - fwd


def _hmc_move(model, s, x, lp, g, e, p, n_leapfrog):
    def leap(_, c):
        q, p, lq, gq = c
        p = p + 0.5 * e * gq
        q = q + e * p
        lq, gq = log_prob_and_score(model, q, s)
        p = p + 0.5 * e * gq
        return q, p, lq, gq

    q, p1, lq, gq = jax.lax.fori_loop(0, n_leapfrog, leap, (x, p, lp, g))
    log_r = (lq - 0.5 * jnp.sum(p1 * p1)) - (lp - 0.5 * jnp.sum(p * p))
    return q, lq, gq, log_r


def _mh(kind, n_leapfrog, model, s, x, lp, g, e, z, u):
    """One Metropolis-Hastings move of ONE particle with step size ``e``; returns the new
    ``(x, log p, score)`` and the acceptance probability."""
    if kind == "mala":
        y, lpy, gy, log_r = _mala_move(model, s, x, lp, g, e, z)
    else:
        y, lpy, gy, log_r = _hmc_move(model, s, x, lp, g, e, z, n_leapfrog)
    acc = jnp.log(u) < log_r
    x = jnp.where(acc, y, x)
    lp = jnp.where(acc, lpy, lp)
    g = jnp.where(acc, gy, g)
    return x, lp, g, _accept_prob(log_r)


def uniforms_per_move(kind):
    """Uniforms a move consumes: the Metropolis-Hastings test, plus for HMC the step draw."""
    return 2 if kind == "hmc" else 1


def annealed_step(kind, n_leapfrog, predictor, model, schedule, x, t, s, normals, uniforms,
                  log_c):
    """One level ``t -> s`` of ONE particle: the predictor with ``normals[0]``, then
    ``k = len(normals) - 1`` Metropolis moves with step ``e = exp(log_c) rho(s)`` (HMC: move
    ``j``'s step is ``e (1 - uniforms[k + j])``); ``uniforms[:k]`` are the moves' accept tests.
    Returns the new position and its :class:`MCMCInfo`."""
    k = normals.shape[0] - 1
    if uniforms.shape != (k * uniforms_per_move(kind),):
        raise ValueError(
            f"annealed_step ({kind}): uniforms must have shape "
            f"({k * uniforms_per_move(kind)},) for normals of shape {normals.shape} "
            f"({k} moves), got {uniforms.shape}")
    x = predictor(model, schedule, x, normals[:1], t, s)
    e = jnp.exp(log_c) * _rho(schedule, s)
    lp, g = log_prob_and_score(model, x, s)
    # HMC: the step of each move uniform on (0, e] (module docstring); MALA: e
    e_moves = e * (1.0 - uniforms[k:]) if kind == "hmc" else jnp.broadcast_to(e, (k,))

    def move(carry, zue):
        x, lp, g = carry
        z, u, e_j = zue
        x, lp, g, a = _mh(kind, n_leapfrog, model, s, x, lp, g, e_j, z, u)
        return (x, lp, g), a

    (x, _, _), a = jax.lax.scan(move, (x, lp, g), (normals[1:], uniforms[:k], e_moves))
    return x, MCMCInfo(jnp.mean(a), e)


def mcmc_tune(kind, n_leapfrog, predictor, model, schedule, key, times, d, dtype, *,
              mcmc_steps, step_size, target_accept, adapt, n_pilot):
    """Per-level log step scales ``log c_l`` ``(steps,)`` (see the module docstring).

    With ``adapt=False`` this is ``log(step_size)`` at every level (no pilot is run). Otherwise
    the pilot (``n_pilot`` particles, keys from :func:`~.noise.pilot_keys`) runs the annealed
    sampler; at each level, after its predictor step, ``log c_l`` solves
    ``A(log c) = target_accept`` by ``BISECT_ITERS`` bisections on
    ``[log c_{l-1} - BISECT_WIDTH, log c_{l-1} + BISECT_WIDTH]``, where ``A`` is the pilot's
    ensemble-mean acceptance probability of one probe move with a fixed (common) probe noise
    and the full step ``e_l``, then the pilot makes its ``mcmc_steps`` moves with ``c_l`` (for
    HMC with steps drawn from ``(0, e_l]``, like the main moves).
    """
    steps = times.shape[0] - 1
    log_c0 = jnp.asarray(math.log(step_size), dtype)
    if not adapt:
        return jnp.full((steps,), log_c0)
    n_p, k_moves, delta = n_pilot, mcmc_steps, target_accept
    k_init, k_norm, k_unif = pilot_keys(key)
    xp = pilot_init(schedule, k_init, n_p, d, dtype)
    em_v = jax.vmap(predictor, (None, None, 0, 0, None, None))
    lps_v = jax.vmap(log_prob_and_score, (None, 0, None))
    mh = functools.partial(_mh, kind, n_leapfrog, model)
    mh_v = jax.vmap(mh, (None, 0, 0, 0, 0, 0, 0))  # a step per pilot particle (HMC moves)
    ones = jnp.ones((n_p,), dtype)
    hmc = kind == "hmc"

    def level(carry, i):
        xp, log_prev = carry
        t, s = times[i], times[i + 1]
        z = draw_normals(k_norm, i, n_p, 2 + k_moves, d, dtype)  # predictor, probe, moves
        # the moves' accept tests, then (HMC) their step draws: factors 1 - v in (0, 1]
        u = draw_uniforms(k_unif, i, n_p, k_moves * uniforms_per_move(kind), dtype)
        move_f = 1.0 - u[:, k_moves:] if hmc else None
        xp = em_v(model, schedule, xp, z[:, :1], t, s)
        lp, g = lps_v(model, xp, s)
        rho = _rho(schedule, s)

        # one scan, ONE copy of the move in the compiled program (compile time): iterations
        # j < BISECT_ITERS are probes from the fixed state (xp, lp, g) with the probe noise
        # z[:, 1] and u = 1, narrowing [lo, hi]; the next mcmc_steps are the pilot's moves with
        # c_l = exp((lo + hi) / 2)
        def body(c, j):
            x, lpx, gx, lo, hi = c
            probe = j < BISECT_ITERS
            mid = 0.5 * (lo + hi)
            m = jnp.maximum(j - BISECT_ITERS, 0)
            xin = jnp.where(probe, xp, x)
            lpin = jnp.where(probe, lp, lpx)
            gin = jnp.where(probe, g, gx)
            zj = jnp.where(probe, z[:, 1], z[:, 2 + m])
            uj = jnp.where(probe, ones, u[:, m])
            ej = jnp.broadcast_to(jnp.exp(mid) * rho, (n_p,))  # probes: the full step e
            if hmc:  # the pilot's moves: e (1 - v), like the main moves
                ej = ej * jnp.where(probe, ones, move_f[:, m])
            y, lpy, gy, a = mh_v(s, xin, lpin, gin, ej, zj, uj)
            ok = jnp.mean(a) >= delta
            lo = jnp.where(probe & ok, mid, lo)
            hi = jnp.where(probe & ~ok, mid, hi)
            return (jnp.where(probe, x, y), jnp.where(probe, lpx, lpy),
                    jnp.where(probe, gx, gy), lo, hi), None

        (xp, _, _, lo, hi), _ = jax.lax.scan(
            body, (xp, lp, g, log_prev - BISECT_WIDTH, log_prev + BISECT_WIDTH),
            jnp.arange(BISECT_ITERS + k_moves),
        )
        log_c = 0.5 * (lo + hi)
        return (xp, log_c), log_c

    _, log_c = jax.lax.scan(level, (xp, log_c0), jnp.arange(steps))
    return log_c
