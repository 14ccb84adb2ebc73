"""Random test laws and an independent NumPy/SciPy oracle for their noised versions.

Every case is built from NumPy parameters, and the same parameters are turned (independently of
the library) into an explicit Gaussian mixture ``[(w_k, m_k, C_k)]`` of the clean law (``C_k = 0``
for point masses; products become the Cartesian product of their factors' components;
pushforwards map each component to ``(A m_k + b, A C_k A^T)``). The noised law at ``(a, s)`` is
then ``sum_k w_k N(a m_k, a^2 C_k + s^2 I)``, evaluated with ``scipy.stats.multivariate_normal``
and ``numpy.linalg.solve`` only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, ortho_group

import composition_jax as cj

SCHEDULES = {
    "vp": lambda: cj.VPSchedule(),
    "cosine": lambda: cj.CosineVPSchedule(),
    "ve": lambda: cj.VESchedule(),
}
TIMES = (1e-4, 0.01, 0.3, 1.0)


@dataclass
class Case:
    name: str
    dist: object
    comps: list  # [(w, m (d,), C (d, d))] float64 numpy: the clean law as a mixture

    @property
    def dim(self) -> int:
        return self.comps[0][1].shape[0]


def spd(rng, d, lo=0.3):
    b = rng.normal(size=(d, d))
    return b @ b.T / d + lo * np.eye(d)


def make_gaussian(rng, d, dtype=jnp.float32):
    m, c = rng.normal(size=d), spd(rng, d)
    return Case(f"gaussian{d}", cj.Gaussian(jnp.asarray(m, dtype), jnp.asarray(c, dtype)),
                [(1.0, m, c)])


def make_mixture(rng, d, k=3, dtype=jnp.float32):
    w = rng.dirichlet(np.ones(k) * 2.0)
    ms = 2.0 * rng.normal(size=(k, d))
    cs = np.stack([spd(rng, d) for _ in range(k)])
    dist = cj.GaussianMixture(jnp.asarray(w, dtype), jnp.asarray(ms, dtype), jnp.asarray(cs, dtype))
    return Case(f"mixture{d}", dist, [(w[i], ms[i], cs[i]) for i in range(k)])


def make_empirical(rng, d, m=5, dtype=jnp.float32):
    pts = rng.normal(size=(m, d))
    w = rng.dirichlet(np.ones(m) * 3.0)
    dist = cj.Empirical(jnp.asarray(pts, dtype), jnp.asarray(w, dtype))
    return Case(f"empirical{d}", dist, [(w[i], pts[i], np.zeros((d, d))) for i in range(m)])


def product_comps(parts, blocks, d):
    """Cartesian product of the factors' components, placed on their blocks."""
    out = []
    for combo in itertools.product(*parts):
        w, m, c = 1.0, np.zeros(d), np.zeros((d, d))
        for (wk, mk, ck), b in zip(combo, blocks):
            b = np.asarray(b)
            w *= wk
            m[b] = mk
            c[np.ix_(b, b)] = ck
        out.append((w, m, c))
    return out


def make_product(rng, dtype=jnp.float32):
    """d = 5: a Gaussian on 2 coordinates, a 1-d mixture and a 2-d empirical law, interleaved."""
    perm = rng.permutation(5)
    blocks = (perm[:2], perm[2:3], perm[3:])
    f = [make_gaussian(rng, 2, dtype), make_mixture(rng, 1, 2, dtype), make_empirical(rng, 2, 3, dtype)]
    dist = cj.Product(tuple(c.dist for c in f), tuple(blocks))
    return Case("product", dist, product_comps([c.comps for c in f], blocks, 5))


def push_comps(comps, a_mat, b):
    return [(w, a_mat @ m + b, a_mat @ c @ a_mat.T) for w, m, c in comps]


def make_pushforward(rng, kind, dtype=jnp.float32):
    if kind == "gaussian":
        base, d = make_gaussian(rng, 3, dtype), 3
        a_mat = rng.normal(size=(d, d)) + 2.0 * np.eye(d)
    elif kind == "mixture":
        base, d = make_mixture(rng, 3, 2, dtype), 3
        a_mat = rng.normal(size=(d, d)) + 2.0 * np.eye(d)
    elif kind == "empirical":
        base, d = make_empirical(rng, 3, 4, dtype), 3
        a_mat = rng.normal(size=(d, d)) + 2.0 * np.eye(d)
    elif kind == "orth_product":  # orthogonal, not block-diagonal: the generic orthogonal path
        base, d = make_product(rng, dtype), 5
        a_mat = ortho_group.rvs(d, random_state=rng)
    elif kind == "blockdiag_product":  # block-diagonal over the product's blocks
        base, d = make_product(rng, dtype), 5
        a_mat = np.zeros((d, d))
        for blk in base.dist.blocks:
            ix = np.asarray(blk)
            a_mat[np.ix_(ix, ix)] = rng.normal(size=(len(ix), len(ix))) + 2.0 * np.eye(len(ix))
    else:  # pragma: no cover
        raise ValueError(kind)
    b = rng.normal(size=d)
    dist = cj.LinearPushforward(base.dist, jnp.asarray(a_mat, dtype), jnp.asarray(b, dtype))
    return Case(f"pushforward_{kind}", dist, push_comps(base.comps, a_mat, b))


FAMILY_NAMES = (
    "gaussian", "mixture", "empirical", "product",
    "pf_gaussian", "pf_mixture", "pf_empirical", "pf_orth_product", "pf_blockdiag_product",
)


def make_case(name, seed=0, dtype=jnp.float32, d=3):
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        return make_gaussian(rng, d, dtype)
    if name == "mixture":
        return make_mixture(rng, d, 3, dtype)
    if name == "empirical":
        return make_empirical(rng, d, 5, dtype)
    if name == "product":
        return make_product(rng, dtype)
    if name.startswith("pf_"):
        return make_pushforward(rng, name[3:], dtype)
    raise ValueError(name)  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Oracle: the noised law as an explicit mixture, evaluated with numpy / scipy only.
def noised_comps(comps, a, s):
    d = comps[0][1].shape[0]
    return [(w, a * m, a * a * c + s * s * np.eye(d)) for w, m, c in comps]


def oracle_log_prob(comps, a, s, x):
    nc = noised_comps(comps, a, s)
    lps = [np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in nc if w > 0]
    return float(logsumexp(lps))


def _resp(comps, a, s, x):
    nc = noised_comps(comps, a, s)
    lps = np.array([np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in nc])
    return np.exp(lps - logsumexp(lps))


def oracle_score(comps, a, s, x):
    r = _resp(comps, a, s, x)
    nc = noised_comps(comps, a, s)
    return sum(ri * -np.linalg.solve(c, x - m) for ri, (_, m, c) in zip(r, nc))


def oracle_denoise(comps, a, s, x):
    """E[x0 | xt = x]: responsibilities times per-component Gaussian conditioning of the joint
    (x0, xt) ~ N((m, a m), [[C, a C], [a C, a^2 C + s^2 I]])."""
    r = _resp(comps, a, s, x)
    d = x.shape[0]
    out = np.zeros(d)
    for ri, (_, m, c) in zip(r, comps):
        sxx = a * a * c + s * s * np.eye(d)
        out += ri * (m + (a * c) @ np.linalg.solve(sxx, x - a * m))
    return out


def oracle_moments(comps, a, s):
    """Mean, covariance and Var of each centred product (x_i - mu_i)(x_j - mu_j) of the noised
    law (exact fourth moments of a Gaussian mixture)."""
    nc = noised_comps(comps, a, s)
    w = np.array([c[0] for c in nc])
    ms = np.stack([c[1] for c in nc])
    cs = np.stack([c[2] for c in nc])
    mu = w @ ms
    dm = ms - mu[None, :]
    cov = np.einsum("k,kij->ij", w, cs) + np.einsum("k,ki,kj->ij", w, dm, dm)
    dii = np.einsum("kii->ki", cs)
    # E[(d_i + z_i)^2 (d_j + z_j)^2] for z ~ N(0, C_k), d = m_k - mu.
    m4 = (
        np.einsum("ki,kj->kij", dm**2, dm**2)
        + np.einsum("ki,kj->kij", dm**2, dii)
        + np.einsum("ki,kj->kij", dii, dm**2)
        + 4.0 * np.einsum("ki,kj,kij->kij", dm, dm, cs)
        + np.einsum("ki,kj->kij", dii, dii)
        + 2.0 * cs**2
    )
    var_prod = np.einsum("k,kij->ij", w, m4) - cov**2
    return mu, cov, var_prod


def marginal_comps(comps, idx):
    idx = np.asarray(idx)
    return [(w, m[idx], c[np.ix_(idx, idx)]) for w, m, c in comps]


def draw_points(case, a, s, n, rng):
    """Points typical of the noised law (drawn from the oracle mixture) plus a few wider ones."""
    nc = noised_comps(case.comps, a, s)
    w = np.array([c[0] for c in nc])
    ks = rng.choice(len(nc), size=n, p=w / w.sum())
    pts = np.stack([rng.multivariate_normal(nc[k][1], nc[k][2]) for k in ks])
    return pts


# Independent float64 (long double where it matters) closed forms of the default schedules.
def oracle_alpha_sigma(name, t):
    t = np.longdouble(t)
    if name == "vp":
        b0, b1 = np.longdouble(0.1), np.longdouble(20.0)
        la = -0.5 * (b0 * t + 0.5 * (b1 - b0) * t * t)
        a = np.exp(la)
        s2 = -np.expm1(2 * la)
    elif name == "cosine":
        sc = np.longdouble(0.008)
        half_pi = np.arccos(np.longdouble(-1.0)) / 2
        big, small = half_pi * (t + sc) / (1 + sc), half_pi * sc / (1 + sc)
        a = max(np.cos(big) / np.cos(small), np.longdouble(0.0))
        # 1 - a^2 = (cos^2 B - cos^2 A) / cos^2 B = sin(A - B) sin(A + B) / cos^2 B, in long
        # double (the direct 1 - a^2 loses ~1e-11 relative at t = 1e-7 even there)
        s2 = min(np.sin(big - small) * np.sin(big + small) / np.cos(small) ** 2, np.longdouble(1))
    elif name == "ve":
        lo, hi = np.longdouble(0.01), np.longdouble(50.0)
        a = np.longdouble(1.0)
        s2 = (lo * (hi / lo) ** t) ** 2
    else:  # pragma: no cover
        raise ValueError(name)
    return float(a), float(np.sqrt(s2))
