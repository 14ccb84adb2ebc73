"""The standard benchmark problem: reverse-SDE sampling of a composition of diffused mixtures.

``compose(background, [p_1..p_k])`` with every law an isotropic-component Gaussian mixture
(``K`` components in ``d`` dimensions), VP schedule (beta 0.1 -> 20), uniform time grid from
``t = 1`` to ``t_min = 1e-3``, ``steps`` Euler-Maruyama (or probability-flow Heun) steps, no final
denoising. Every implementation (composition_jax, NumPy, PyTorch, diffrax) integrates exactly the
same recursion from the same prior, so their sample laws agree up to Monte Carlo error.

Per particle-step, the composed score of ``k + 1`` mixtures costs two ``(K x d)`` matrix-vector
products per model (``x M^T`` and ``r M``): ``4 K d (k + 1)`` flops, plus ``O(K + d)``
elementwise work, and ``d`` standard normals for the update.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["QUICK_SIZES", "SIZES", "Problem", "flops_per_particle_step", "make_problem"]

BETA_MIN, BETA_MAX = 0.1, 20.0
T_MIN = 1e-3


@dataclasses.dataclass(frozen=True)
class Problem:
    d: int
    K: int
    k: int  # number of composed conditionals
    n: int  # particles
    steps: int
    weights: np.ndarray  # (k+1, K) mixture weights; row 0 is the background
    means: np.ndarray  # (k+1, K, d)
    variances: np.ndarray  # (k+1, K) isotropic component variances

    @property
    def name(self) -> str:
        return f"d={self.d},K={self.K},k={self.k},N={self.n}"

    def grid(self) -> np.ndarray:
        """Uniform time grid ``1 = t_0 > ... > t_steps = t_min`` (float64)."""
        return np.linspace(1.0, T_MIN, self.steps + 1)


def make_problem(d: int, K: int, k: int, n: int, steps: int = 500, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(K, 5.0), size=k + 1)
    means = rng.normal(0.0, 1.0, size=(k + 1, K, d)) / np.sqrt(max(d, 1)) * 2.0
    var = rng.uniform(0.2, 0.5, size=(k + 1, K))
    return Problem(d, K, k, n, steps, w.astype(np.float32), means.astype(np.float32),
                   var.astype(np.float32))


def flops_per_particle_step(p: Problem, method: str = "euler_maruyama") -> int:
    """Floating-point operations per particle-step (matmul terms + elementwise terms)."""
    per_model = 4 * p.K * p.d + 8 * p.K + 4 * p.d
    score = (p.k + 1) * per_model + 2 * p.k * p.d
    update = 6 * p.d
    evals = 2 if method == "ode_heun" else 1
    return evals * score + update


# The standard sizes and the quick subset run by CI.
SIZES = [
    {"d": 2, "K": 8, "n": 100_000},
    {"d": 64, "K": 16, "n": 10_000},
    {"d": 256, "K": 64, "n": 4_000},
]
QUICK_SIZES = [{"d": 2, "K": 8, "n": 4_000}, {"d": 16, "K": 8, "n": 1_000}]
