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

The peers (``numpy``, ``jax_scan``, ``diffrax``, ``torch``, ``torch_compile``) are written as
their best users would write them, in the fused form of :func:`fused_tables`: with the
augmented state ``[x, |x|^2]`` the logits of ALL ``(k + 1) K`` components are one matrix
product, and after the per-model softmax the composed score (with the step's coefficient folded
in) is a second one, so a step costs two matmuls whatever ``k``. Their ``*_loop`` variants are
the straightforward versions (a Python loop over the models, two matmuls each, coefficients
applied per step): kept to show that each peer is at least as fast as the straightforward
version of itself (``benchmarks/README.md``). ``jax_scan_wide`` and ``diffrax_wide`` are the
JAX peers compiled with the XLA options ``cj.sample`` uses on CPU (512-bit vectors), so that
the comparison also shows what that compiler option alone is worth.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from .problem import BETA_MAX, BETA_MIN, T_MIN, Problem

__all__ = ["IMPLEMENTATIONS", "LOOP_VERSIONS", "available", "fused_tables"]


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


def fused_tables(p: Problem, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-time constants of the fused composed score at times ``t (S,)`` (float64 -> float32).

    For model ``j`` (coefficient ``c_j``: ``1 - k`` for the background, 1 for the conditionals)
    with component weights ``w_jk``, means ``m_jk`` and variances ``v_jk``, the noised component
    at time ``t`` is ``N(a m_jk, u_jk I)``, ``u_jk = a^2 v_jk + sigma^2``, so its logit is
    ``x . (a m_jk / u_jk) - |x|^2 / (2 u_jk) + b_jk`` with
    ``b_jk = log w_jk - (d/2) log u_jk - a^2 |m_jk|^2 / (2 u_jk)``, and the composed score is
    ``sum_jk c_j r_jk (a m_jk - x) / u_jk = (R G)[:, :d] - x (R G)[:, d]`` with the per-model
    softmax ``R`` of the logits and ``G_jk = c_j [a m_jk / u_jk, 1 / u_jk]``. Returns
    ``A (S, d + 1, J K)`` (logits = ``[x, |x|^2] A + b``), ``b (S, J K)``, ``G (S, J K, d + 1)``
    and the VP coefficients ``beta, alpha, sigma2 (S,)``.
    """
    J, K, d = p.k + 1, p.K, p.d
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    log_a = -0.5 * (BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t)
    a, s2 = np.exp(log_a), -np.expm1(2 * log_a)
    M = p.means.astype(np.float64).reshape(J * K, d)
    v = p.variances.astype(np.float64).reshape(J * K)
    logw = np.log(p.weights.astype(np.float64)).reshape(J * K)
    cw = np.repeat(_score_weights(p).astype(np.float64), K)
    u = a[:, None] ** 2 * v[None] + s2[:, None]  # (S, JK)
    am = a[:, None, None] * M[None] / u[:, :, None]  # (S, JK, d)
    A = np.concatenate([am, -0.5 / u[:, :, None]], 2).transpose(0, 2, 1)
    b = logw[None] - 0.5 * d * np.log(u) - 0.5 * a[:, None] ** 2 * np.sum(M * M, 1)[None] / u
    G = cw[None, :, None] * np.concatenate([am, 1.0 / u[:, :, None]], 2)
    return {"A": np.ascontiguousarray(A, np.float32), "b": np.ascontiguousarray(b, np.float32),
            "G": np.ascontiguousarray(G, np.float32), "beta": beta, "alpha": a, "sigma2": s2}


def _step_tables(p: Problem, method: str) -> dict[str, np.ndarray]:
    """Per-step tables with the update's scalars folded into ``G`` (float32).

    Euler-Maruyama: ``x <- x (1 + beta h / 2 - T[:, d]) + T[:, :d] + sqrt(beta h) z`` with
    ``T = R (beta h G)``. Heun: ``u1 = (h beta / 2) s(x, t)`` gives the predictor
    ``x~ = x (1 + h beta / 2) + u1``, then with ``u2 = (h beta' / 4) s(x~, t - h)``:
    ``x <- x (1 + h beta / 4) + u1 / 2 + x~ h beta' / 4 + u2``.
    """
    g = p.grid()
    t, tn = g[:-1], g[1:]
    h = t - tn
    f = fused_tables(p, t)
    out = {"A": f["A"], "b": f["b"]}
    bh = f["beta"] * h
    if method == "euler_maruyama":
        out["G"] = (bh[:, None, None] * f["G"]).astype(np.float32)
        out["scal"] = np.stack([1 + 0.5 * bh, np.sqrt(bh)], 1).astype(np.float32)
    else:
        fn = fused_tables(p, tn)
        bhn = fn["beta"] * h
        out["G"] = (0.5 * bh[:, None, None] * f["G"]).astype(np.float32)
        out["A2"], out["b2"] = fn["A"], fn["b"]
        out["G2"] = (0.25 * bhn[:, None, None] * fn["G"]).astype(np.float32)
        out["scal"] = np.stack([1 + 0.5 * bh, 1 + 0.25 * bh, 0.25 * bhn], 1).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- NumPy
def run_numpy(p: Problem, seed: int, method: str) -> Callable[[], np.ndarray]:
    """Batched NumPy, single-thread BLAS (the harness sets ``OPENBLAS_NUM_THREADS=1``): the fused
    score (two matmuls per evaluation, :func:`fused_tables`), the step's scalars folded into
    its tables, in-place element-wise work on preallocated buffers."""
    tab = _step_tables(p, method)
    n, d, J, K = p.n, p.d, p.k + 1, p.K
    xa = np.empty((n, d + 1), np.float32)
    L = np.empty((n, J * K), np.float32)
    L3 = L.reshape(n, J, K)
    mx = np.empty((n, J, 1), np.float32)
    T = np.empty((n, d + 1), np.float32)

    def term(x, A, b, G):
        """``R G`` for the softmax ``R`` of the logits ``[x, |x|^2] A + b``."""
        xa[:, :d] = x
        np.einsum("ij,ij->i", x, x, out=xa[:, d])
        np.matmul(xa, A, out=L)
        np.add(L, b, out=L)
        np.max(L3, axis=2, keepdims=True, out=mx)
        np.subtract(L3, mx, out=L3)
        np.exp(L, out=L)
        np.sum(L3, axis=2, keepdims=True, out=mx)
        np.divide(L3, mx, out=L3)
        return np.matmul(L, G, out=T)

    def go():
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, d), dtype=np.float32)
        z = np.empty((n, d), np.float32)
        for i in range(p.steps):
            sc = tab["scal"][i]
            Ti = term(x, tab["A"][i], tab["b"][i], tab["G"][i])
            if method == "euler_maruyama":
                rng.standard_normal(dtype=np.float32, out=z)
                z *= sc[1]
                z += Ti[:, :d]
                x *= sc[0] - Ti[:, d:]
                x += z
            else:
                u1 = Ti[:, :d] - x * Ti[:, d:]
                xt = x * sc[0] + u1
                T2 = term(xt, tab["A2"][i], tab["b2"][i], tab["G2"][i])
                x = x * sc[1] + 0.5 * u1 + xt * sc[2] + (T2[:, :d] - xt * T2[:, d:])
        return x

    return go


def run_numpy_loop(p: Problem, seed: int, method: str) -> Callable[[], np.ndarray]:
    """The straightforward NumPy version: a loop over the models, two matmuls each."""
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


def run_torch_loop(p: Problem, seed: int, method: str):
    """The straightforward PyTorch eager version (a loop over the models)."""
    return run_torch(p, seed, method, compile=False)


def run_torch_fused(p: Problem, seed: int, method: str, compile: bool = False,
                    noise_in_graph: bool = True):
    """PyTorch as its best users write it: the fused score (:func:`fused_tables`), the step's
    scalars folded into its tables, ``torch.no_grad``; with ``compile``, ONE
    ``torch.compile(dynamic=False)`` of the step, tables passed as tensors (no recompiles).
    ``noise_in_graph``: the noise draw is part of the step (Inductor fuses the softmax, the
    update and the normals); otherwise the step takes the normals as an input, drawn eagerly by
    ``torch.randn`` into a preallocated buffer (faster on CPU: :func:`run_torch_compile`)."""
    import torch

    tab = {k: torch.from_numpy(v) for k, v in _step_tables(p, method).items()}
    n, d, J, K = p.n, p.d, p.k + 1, p.K

    def term(x, A, b, G):
        xa = torch.cat([x, (x * x).sum(1, keepdim=True)], 1)
        r = torch.softmax((xa @ A + b).view(n, J, K), dim=2).view(n, J * K)
        return r @ G

    def em_step(x, A, b, G, sc, z=None):
        T = term(x, A, b, G)
        z = torch.randn_like(x) if z is None else z
        return x * (sc[0] - T[:, d:]) + T[:, :d] + sc[1] * z

    def heun_step(x, A, b, G, A2, b2, G2, sc):
        T = term(x, A, b, G)
        u1 = T[:, :d] - x * T[:, d:]
        xt = x * sc[0] + u1
        T2 = term(xt, A2, b2, G2)
        return x * sc[1] + 0.5 * u1 + xt * sc[2] + (T2[:, :d] - xt * T2[:, d:])

    if compile:
        em_step = torch.compile(em_step, dynamic=False)
        heun_step = torch.compile(heun_step, dynamic=False)

    @torch.no_grad()
    def go():
        torch.manual_seed(seed)
        x = torch.randn((n, d))
        z = None if noise_in_graph else torch.empty((n, d))
        for i in range(p.steps):
            if method == "euler_maruyama":
                if z is not None:
                    torch.randn((n, d), out=z)
                x = em_step(x, tab["A"][i], tab["b"][i], tab["G"][i], tab["scal"][i], z)
            else:
                x = heun_step(x, tab["A"][i], tab["b"][i], tab["G"][i], tab["A2"][i],
                              tab["b2"][i], tab["G2"][i], tab["scal"][i])
        return x.numpy()

    return go


def run_torch_fused_eager(p: Problem, seed: int, method: str):
    return run_torch_fused(p, seed, method, compile=False)


def run_torch_compile(p: Problem, seed: int, method: str):
    """``torch.compile`` as its best users write it on CPU: the fused step compiled, the normals
    drawn eagerly into a preallocated buffer. Compiling the noise draw into the step as well
    (``noise_in_graph=True``) measured 0.24x (d = 2, K = 8, N = 100k) and 0.34x (d = 64, K = 16,
    N = 10k) of this on 2 cores, and slower than the straightforward ``torch_compile_loop``."""
    return run_torch_fused(p, seed, method, compile=True, noise_in_graph=False)


def run_torch_compile_loop(p: Problem, seed: int, method: str):
    """The straightforward ``torch.compile`` version: the looped score, the step compiled
    without the noise draw."""
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


# ----------------------------------------------------------------------------- plain JAX
def _jax_fused_term(x, A, b, G, J, K):
    """``R G`` for the per-model softmax ``R`` of the logits ``[x, |x|^2] A + b``."""
    import jax
    import jax.numpy as jnp

    n = x.shape[0]
    xa = jnp.concatenate([x, jnp.sum(x * x, 1, keepdims=True)], 1)
    r = jax.nn.softmax((xa @ A + b[None]).reshape(n, J, K), axis=2).reshape(n, J * K)
    return r @ G


def run_jax_scan(p: Problem, seed: int, method: str, compiler_options: dict | None = None):
    """Hand-written JAX, as an expert writes it: ONE ``jax.jit`` of a ``lax.scan`` over the
    steps, the per-step tables of :func:`_step_tables` (constants folded, update scalars inside
    ``G``) as the scanned input, the fused score (two matmuls per evaluation), and the noise drawn
    inside the scan (``jax.random.normal`` of ``fold_in(key, step)``): no ``(steps, n, d)``
    noise array in memory. ``compiler_options``: XLA options of that ``jit``
    (:func:`run_jax_scan_wide`)."""
    import jax
    import jax.numpy as jnp

    tab = {k: jnp.asarray(v) for k, v in _step_tables(p, method).items()}
    n, d, J, K = p.n, p.d, p.k + 1, p.K

    def em(carry, xs):
        x, key = carry
        i, A, b, G, sc = xs  # the step index keys the noise
        T = _jax_fused_term(x, A, b, G, J, K)
        z = jax.random.normal(jax.random.fold_in(key, i), (n, d), x.dtype)
        return (x * (sc[0] - T[:, d:]) + T[:, :d] + sc[1] * z, key), None

    def heun(carry, xs):
        x, key = carry
        _, A, b, G, A2, b2, G2, sc = xs
        T = _jax_fused_term(x, A, b, G, J, K)
        u1 = T[:, :d] - x * T[:, d:]
        xt = x * sc[0] + u1
        T2 = _jax_fused_term(xt, A2, b2, G2, J, K)
        return (x * sc[1] + 0.5 * u1 + xt * sc[2] + (T2[:, :d] - xt * T2[:, d:]), key), None

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def solve(tab, key):
        k0, k1 = jax.random.split(key)
        x0 = jax.random.normal(k0, (n, d), jnp.float32)
        i = jnp.arange(p.steps)
        if method == "euler_maruyama":
            xs, body = (i, tab["A"], tab["b"], tab["G"], tab["scal"]), em
        else:
            xs = (i, tab["A"], tab["b"], tab["G"], tab["A2"], tab["b2"], tab["G2"], tab["scal"])
            body = heun
        (x, _), _ = jax.lax.scan(body, (x0, k1), xs)
        return x

    key = jax.random.key(seed)

    def go():
        return np.asarray(jax.block_until_ready(solve(tab, key)))

    return go


# ----------------------------------------------------------------------------- diffrax
def run_diffrax(p: Problem, seed: int, method: str, fused: bool = True,
                compiler_options: dict | None = None):
    """``diffeqsolve`` on the batched ``(n, d)`` state: ``Euler`` with an ``UnsafeBrownianPath``
    (no Brownian tree: the fastest path for a fixed-step SDE solve) for the reverse SDE,
    ``Heun`` for the probability-flow ODE, ``ForwardMode`` adjoint (no backward pass is taken),
    the whole solve under one ``jax.jit``. ``fused``: the drift evaluates the fused score, its
    tables computed from ``t`` inside the drift (:func:`fused_tables` in ``jnp``: ``O(J K d)``
    per step, nothing against the ``n``-row matmuls); otherwise the looped score.
    ``compiler_options``: XLA options of the ``jit`` (:func:`run_diffrax_wide`)."""
    import diffrax
    import jax
    import jax.numpy as jnp
    import lineax

    params = _jax_mixture_params(p)
    h = (1.0 - T_MIN) / p.steps
    J, K, d = p.k + 1, p.K, p.d
    cw = jnp.repeat(params["cw"], K)
    M = params["M"].reshape(J * K, d)
    Msq, V = params["Msq"].reshape(J * K), params["V"].reshape(J * K)
    logw = params["logw"].reshape(J * K)

    def coeffs(t):
        beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
        log_a = -0.5 * (BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t)
        return beta, jnp.exp(log_a), -jnp.expm1(2 * log_a)

    scale = 1.0 if method == "euler_maruyama" else 0.5

    def drift_fused(t, x, args):  # forward-time drift, integrated with dt < 0
        beta, a, s2 = coeffs(t)
        u = a * a * V + s2
        am = (a / u)[:, None] * M
        A = jnp.concatenate([am, (-0.5 / u)[:, None]], 1).T
        b = logw - 0.5 * d * jnp.log(u) - 0.5 * a * a * Msq / u
        G = (-scale * beta * cw)[:, None] * jnp.concatenate([am, (1.0 / u)[:, None]], 1)
        T = _jax_fused_term(x, A, b, G, J, K)
        return x * (-0.5 * beta - T[:, d:]) + T[:, :d]

    def drift_loop(t, x, args):
        beta, a, s2 = coeffs(t)
        s = _jax_batched_score(args, x, a, s2)
        return -0.5 * beta * x - scale * beta * s

    drift = drift_fused if fused else drift_loop

    def diffusion(t, x, args):
        beta, _, _ = coeffs(t)
        return lineax.DiagonalLinearOperator(jnp.sqrt(beta) * jnp.ones_like(x))

    @functools.partial(jax.jit, compiler_options=compiler_options)
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


def wide_options(layout: str = "rows", d: int = 0) -> dict | None:
    """The XLA options ``cj.sample`` compiles with by default on this backend (its own policy,
    ``driver.default_compiler_options``: on CPU 512-bit vectors, and no YNNPACK fusions in the
    columns layout at d > 8; none elsewhere), for the JAX peers' ``*_wide`` versions and the
    benchmark's ceilings."""
    import jax

    from ..samplers.driver import default_compiler_options

    return default_compiler_options(jax.default_backend(), layout, d) or None


def run_jax_scan_wide(p: Problem, seed: int, method: str):
    """:func:`run_jax_scan` compiled with the XLA options composition_jax uses on CPU: the
    hand-written scan as written by an expert who also knows that option."""
    return run_jax_scan(p, seed, method, compiler_options=wide_options())


def run_diffrax_wide(p: Problem, seed: int, method: str):
    """:func:`run_diffrax` (fused) compiled with the XLA options composition_jax uses on CPU."""
    return run_diffrax(p, seed, method, compiler_options=wide_options())


def run_diffrax_loop(p: Problem, seed: int, method: str):
    """The straightforward diffrax version: the looped score in the drift."""
    return run_diffrax(p, seed, method, fused=False)


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
    "jax_scan": run_jax_scan,
    "jax_scan_wide": run_jax_scan_wide,
    "numpy": run_numpy,
    "diffrax": run_diffrax,
    "diffrax_wide": run_diffrax_wide,
    "torch": run_torch_fused_eager,
    "torch_compile": run_torch_compile,
    # the straightforward versions of the peers (see the module docstring)
    "numpy_loop": run_numpy_loop,
    "diffrax_loop": run_diffrax_loop,
    "torch_loop": run_torch_loop,
    "torch_compile_loop": run_torch_compile_loop,
}
#: each peer's straightforward version
LOOP_VERSIONS = {"numpy": "numpy_loop", "diffrax": "diffrax_loop", "torch": "torch_loop",
                 "torch_compile": "torch_compile_loop"}


def available(name: str) -> bool:
    mod = "diffrax" if name.startswith("diffrax") else None
    if name.startswith("torch"):
        mod = "torch"
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None
