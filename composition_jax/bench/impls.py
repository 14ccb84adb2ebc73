"""Implementations of the standard problem, side by side.

Each ``run_<impl>(problem, seed, method)`` returns a callable ``go() -> np.ndarray (n, d)`` whose
first call includes compilation/warm-up; later calls are the steady state. Every implementation
integrates the same recursion on the same uniform grid, evaluating coefficients at the left
(larger-``t``) end of each step:

* Euler-Maruyama (reverse SDE): ``x <- x + (-f x + g^2 s(x, t)) h + g sqrt(h) z``
* probability-flow Heun: ``v(x, t) = f x - g^2 s / 2``; ``x~ = x - h v(x, t)``,
  ``x <- x - h/2 (v(x, t) + v(x~, t - h))``

with VP coefficients ``f = -beta/2``, ``g^2 = beta``. The composed score is
``sum_i s_i - (k - 1) s_b`` over isotropic-component mixtures, written in matmul form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .problem import BETA_MAX, BETA_MIN, T_MIN, Problem

__all__ = ["IMPLEMENTATIONS", "available"]


def _vp_np(t):
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    log_a = -0.5 * (BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t)
    return beta, math.exp(log_a), -math.expm1(2 * log_a)


def _coeffs(p: Problem):
    """Per-step scalars (float64 -> float32): t, h, beta, alpha, sigma^2, and at t - h."""
    g = p.grid()
    rows = []
    for i in range(p.steps):
        t, tn = g[i], g[i + 1]
        b, a, s2 = _vp_np(t)
        bn, an, s2n = _vp_np(tn)
        rows.append((t, t - tn, b, a, s2, bn, an, s2n))
    return np.asarray(rows, np.float64)


def _score_weights(p: Problem) -> np.ndarray:
    """Coefficient of each model in the composed score: background 1 - k, conditionals 1."""
    c = np.ones(p.k + 1, np.float32)
    c[0] = 1.0 - p.k
    return c


# ----------------------------------------------------------------------------- NumPy
def run_numpy(p: Problem, seed: int, method: str) -> Callable[[], np.ndarray]:
    logw = np.log(p.weights).astype(np.float32)  # (m, K)
    M = p.means  # (m, K, d)
    Msq = np.sum(M * M, -1)  # (m, K)
    V = p.variances
    cw = _score_weights(p)
    co = _coeffs(p).astype(np.float32)
    d = p.d

    def score(x, a, s2):
        out = np.zeros_like(x)
        xsq = np.sum(x * x, 1, keepdims=True)
        for j in range(p.k + 1):
            vt = a * a * V[j] + s2
            xm = x @ M[j].T
            lg = logw[j] - (0.5 / vt) * (xsq - 2 * a * xm + a * a * Msq[j]) - 0.5 * d * np.log(vt)
            lg -= lg.max(1, keepdims=True)
            r = np.exp(lg)
            r /= r.sum(1, keepdims=True)
            rv = r / vt
            out += cw[j] * (a * (rv @ M[j]) - x * rv.sum(1, keepdims=True))
        return out

    def go():
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((p.n, d), dtype=np.float32)
        for t, h, b, a, s2, bn, an, s2n in co:
            if method == "euler_maruyama":
                z = rng.standard_normal((p.n, d), dtype=np.float32)
                x = x + (0.5 * b * x + b * score(x, a, s2)) * h + np.sqrt(b * h) * z
            else:
                v1 = -0.5 * b * x - 0.5 * b * score(x, a, s2)
                xt = x - h * v1
                v2 = -0.5 * bn * xt - 0.5 * bn * score(xt, an, s2n)
                x = x - 0.5 * h * (v1 + v2)
        return x

    return go


# ----------------------------------------------------------------------------- PyTorch
def run_torch(p: Problem, seed: int, method: str, compile: bool = False):
    import torch

    logw = torch.from_numpy(np.log(p.weights).astype(np.float32))
    M = torch.from_numpy(p.means)
    Msq = (M * M).sum(-1)
    V = torch.from_numpy(p.variances)
    cw = torch.from_numpy(_score_weights(p))
    co = torch.from_numpy(_coeffs(p).astype(np.float32))
    d = p.d

    def score(x, a, s2):
        out = torch.zeros_like(x)
        xsq = (x * x).sum(1, keepdim=True)
        for j in range(p.k + 1):
            vt = a * a * V[j] + s2
            xm = x @ M[j].T
            lg = logw[j] - (0.5 / vt) * (xsq - 2 * a * xm + a * a * Msq[j]) - 0.5 * d * torch.log(vt)
            r = torch.softmax(lg, dim=1)
            rv = r / vt
            out = out + cw[j] * (a * (rv @ M[j]) - x * rv.sum(1, keepdim=True))
        return out

    def em_step(x, z, row):
        _t, h, b, a, s2 = row[0], row[1], row[2], row[3], row[4]
        return x + (0.5 * b * x + b * score(x, a, s2)) * h + torch.sqrt(b * h) * z

    def heun_step(x, row):
        _t, h, b, a, s2, bn, an, s2n = (row[i] for i in range(8))
        v1 = -0.5 * b * x - 0.5 * b * score(x, a, s2)
        xt = x - h * v1
        v2 = -0.5 * bn * xt - 0.5 * bn * score(xt, an, s2n)
        return x - 0.5 * h * (v1 + v2)

    if compile:
        em_step = torch.compile(em_step, dynamic=False)
        heun_step = torch.compile(heun_step, dynamic=False)

    @torch.no_grad()
    def go():
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((p.n, d), generator=gen)
        for i in range(p.steps):
            if method == "euler_maruyama":
                z = torch.randn((p.n, d), generator=gen)
                x = em_step(x, z, co[i])
            else:
                x = heun_step(x, co[i])
        return x.numpy()

    return go


def run_torch_compile(p: Problem, seed: int, method: str):
    return run_torch(p, seed, method, compile=True)


# ----------------------------------------------------------------------------- JAX helpers
def _jax_mixture_params(p: Problem):
    import jax.numpy as jnp

    return {
        "logw": jnp.asarray(np.log(p.weights)),
        "M": jnp.asarray(p.means),
        "Msq": jnp.asarray(np.sum(p.means * p.means, -1)),
        "V": jnp.asarray(p.variances),
        "cw": jnp.asarray(_score_weights(p)),
    }


def _jax_batched_score(params, x, a, s2):
    """Matmul-form composed score of a batch ``x (n, d)`` (hand-written, what a JAX user writes)."""
    import jax
    import jax.numpy as jnp

    d = x.shape[-1]
    xsq = jnp.sum(x * x, 1, keepdims=True)
    out = jnp.zeros_like(x)
    for j in range(params["M"].shape[0]):
        vt = a * a * params["V"][j] + s2
        xm = x @ params["M"][j].T
        lg = params["logw"][j] - (0.5 / vt) * (xsq - 2 * a * xm + a * a * params["Msq"][j])
        lg = lg - 0.5 * d * jnp.log(vt)
        r = jax.nn.softmax(lg, axis=1)
        rv = r / vt
        out = out + params["cw"][j] * (a * (rv @ params["M"][j]) - x * jnp.sum(rv, 1, keepdims=True))
    return out


# ----------------------------------------------------------------------------- diffrax
def run_diffrax(p: Problem, seed: int, method: str):
    import diffrax
    import jax
    import jax.numpy as jnp
    import lineax

    params = _jax_mixture_params(p)
    h = (1.0 - T_MIN) / p.steps

    def coeffs(t):
        beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
        log_a = -0.5 * (BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t)
        return beta, jnp.exp(log_a), -jnp.expm1(2 * log_a)

    def drift(t, x, args):  # forward-time drift of the reverse SDE / PF-ODE, integrated with dt < 0
        beta, a, s2 = coeffs(t)
        s = _jax_batched_score(args, x, a, s2)
        scale = 1.0 if method == "euler_maruyama" else 0.5
        return -0.5 * beta * x - scale * beta * s

    def diffusion(t, x, args):
        beta, _, _ = coeffs(t)
        return lineax.DiagonalLinearOperator(jnp.sqrt(beta) * jnp.ones_like(x))

    @jax.jit
    def solve(params, key):
        k0, kb = jax.random.split(key)
        x0 = jax.random.normal(k0, (p.n, p.d))
        if method == "euler_maruyama":
            bm = diffrax.UnsafeBrownianPath(shape=(p.n, p.d), key=kb)
            terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
            solver = diffrax.Euler()
        else:
            terms = diffrax.ODETerm(drift)
            solver = diffrax.Heun()
        sol = diffrax.diffeqsolve(
            terms, solver, t0=1.0, t1=T_MIN, dt0=-h, y0=x0, args=params,
            saveat=diffrax.SaveAt(t1=True), max_steps=p.steps + 2,
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[0]

    key = jax.random.key(seed)

    def go():
        return np.asarray(jax.block_until_ready(solve(params, key)))

    return go


# ----------------------------------------------------------------------------- composition_jax
def build_cj_model(p: Problem, general: bool = False):
    """``compose(background, conditionals)`` of diffused mixtures. ``general=True`` builds them
    with ``covariance="full"`` (the eigenvector path of ``GaussianMixture``): the "before" of
    the isotropic / diagonal fast path, ``O(K d^2)`` instead of ``O(K d)`` per particle.
    Otherwise ``covariance="iso"`` (the problem's covariances are ``v_k I``)."""
    import jax.numpy as jnp

    import composition_jax as cj

    kind = "full" if general else "iso"
    sched = cj.VPSchedule(BETA_MIN, BETA_MAX)
    eye = jnp.eye(p.d, dtype=jnp.float32)
    models = [
        cj.diffuse(
            cj.GaussianMixture(
                jnp.asarray(p.weights[j]),
                jnp.asarray(p.means[j]),
                jnp.asarray(p.variances[j])[:, None, None] * eye[None],
                covariance=kind,
            ),
            sched,
        )
        for j in range(p.k + 1)
    ]
    return cj.compose(models[0], models[1:]), sched


def run_cj(p: Problem, seed: int, method: str, general: bool = False):
    import jax

    import composition_jax as cj

    model, sched = build_cj_model(p, general=general)
    key = jax.random.key(seed)

    def go():
        x = cj.sample(key, model, sched, (p.n, p.d), method=method, steps=p.steps, t_min=T_MIN,
                      denoise_final=False)
        return np.asarray(jax.block_until_ready(x))

    return go


def run_cj_fullcov(p: Problem, seed: int, method: str):
    return run_cj(p, seed, method, general=True)


IMPLEMENTATIONS = {
    "composition_jax": run_cj,
    "composition_jax_fullcov": run_cj_fullcov,
    "numpy": run_numpy,
    "diffrax": run_diffrax,
    "torch": run_torch,
    "torch_compile": run_torch_compile,
}


def available(name: str) -> bool:
    mod = {"diffrax": "diffrax", "torch": "torch", "torch_compile": "torch"}.get(name)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None
