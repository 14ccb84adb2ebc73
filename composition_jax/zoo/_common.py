"""Shared pieces of the scenario zoo: run sizes, results, and the steps every scenario takes
(sample a composition, test it, compute the heuristic, the Factorized-Conditionals decision and
the composition gap)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..compose import compose, composed_distribution
from ..distributions import Gaussian, diffuse
from ..samplers import sample
from ..schedules import VPSchedule
from ..verify import _laws
from ..verify.factorized import factorized_conditionals
from ..verify.gap import composition_gap
from ..verify.heuristics import mean_difference_cosines
from ..verify.projective import projective
from ..verify.same_law import same_law
from ..verify.sampler_law import sampler_law
from .rules import (
    PROCEDURE_ALPHA,
    STANDARD_SAMPLERS,
    floors_for,
    material_joint,
    material_rejections,
    summarize,
)

__all__ = [
    "Config",
    "Outcome",
    "ScenarioResult",
    "activity",
    "check_projective",
    "check_same_law",
    "cosines",
    "exact_composition",
    "fc",
    "gap",
    "gaussian",
    "push",
    "sample_model",
    "strip",
    "target_2d",
    "two_d",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of a run.

    Attributes:
      n: samples per sampler.
      steps: reverse steps on the time grid ``grid`` (``"log_snr"``: uniform in log-SNR, which
        resolves the small data scales of the paper's toys), VP schedule.
      grid: the samplers' time grid.
      t_min: the smallest time of the grid (``1e-4``: ``sigma(t_min) ~ 0.003``, so the final
        Tweedie step shrinks a data scale of ``0.05`` by less than 0.4 % in variance; at
        ``1e-3`` it was 4 %, a bias the effect floors would have had to absorb).
      two_sample_n: points per side of the permutation two-sample tests (MMD, energy): a
        random subsample of the ``n`` samples against as many exact reference draws; the
        one-sample and exact-moment tests (KS, mean, covariance) use all ``n``. Their cost is
        ``O((2 m)^2 P)`` per test; at ``m = 1000`` and ``n = 10000`` they took about half of a
        full-mode scenario (``disjoint_masks``: 205 of 402 s under load), hence ``m = 500`` in
        every mode above the minimal one (4x cheaper; the permutation tests then resolve an
        ``MMD^2`` about twice as large, while the moment tests, which carry the power against
        the floors' mean and covariance errors, keep all ``n``).
      num_permutations: permutations of those tests.
      gap_n: Monte Carlo points of the composition gap.
      mcmc_steps: Metropolis steps per level of the annealed MCMC samplers.
      seed: the root seed; each scenario's key is derived from it and the scenario's name.
      mode: the size preset this config came from.
    """

    n: int = 2000
    steps: int = 200
    grid: str = "log_snr"
    t_min: float = 1e-4
    two_sample_n: int = 500
    num_permutations: int = 1999
    gap_n: int = 2048
    mcmc_steps: int = 2
    seed: int = 0
    mode: str = "quick"

    @staticmethod
    def for_mode(mode: str) -> Config:
        """The preset sizes: ``"minimal"`` (tests), ``"quick"`` (default) or ``"full"``."""
        if mode == "minimal":
            return Config(n=1000, steps=200, two_sample_n=300, num_permutations=999,
                          gap_n=512, mode="minimal")
        if mode == "quick":
            return Config(mode="quick")
        if mode == "full":
            return Config(n=10000, steps=1000, two_sample_n=500, gap_n=8192, mcmc_steps=4,
                          mode="full")
        raise ValueError(f"mode must be 'minimal', 'quick' or 'full', got {mode!r}")


@dataclasses.dataclass
class ScenarioResult:
    """One scenario's outcome.

    Attributes:
      name: the scenario's registry name.
      title: a short label for reports.
      expected: what the theory predicts, ``"success"`` or ``"failure"``.
      observed: the verdict computed from the samples.
      metrics: JSON-serializable numbers behind the verdict.
      reasons: human-readable lines: the theory, then the evidence.
      plots: arrays for the report's figures (not serialized).
      seconds: wall time of the run.
    """

    name: str
    title: str
    expected: str
    observed: str
    metrics: dict
    reasons: list
    plots: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        return self.expected == self.observed

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "expected": self.expected,
            "observed": self.observed,
            "agrees": self.agrees,
            "metrics": self.metrics,
            "reasons": list(self.reasons),
            "seconds": round(self.seconds, 2),
        }


class Outcome(NamedTuple):
    """What a scenario function returns; the registry adds the declared name, title and
    expected verdict to make a :class:`ScenarioResult`."""

    observed: str
    metrics: dict
    reasons: list
    plots: dict | None = None


# ------------------------------------------------------------------------ steps of a scenario
def sample_model(cfg: Config, key: jax.Array, model: Any, schedule: Any, d: int, method: str,
                 **opts: Any) -> np.ndarray:
    """``cfg.n`` samples of ``model`` with ``method`` on the config's grid, as float64."""
    x = sample(key, model, schedule, (cfg.n, d), method=method, steps=cfg.steps,
               t_min=cfg.t_min, grid=cfg.grid, **opts)
    return np.asarray(x, np.float64)


def check_projective(cfg: Config, key: jax.Array, x: Any, conds: list, blocks: list,
                     background: Any = None, alpha: float = PROCEDURE_ALPHA,
                     method: str | None = None) -> tuple[Any, list[str]]:
    """:func:`~composition_jax.verify.projective` at the config's sizes, and its material
    rejections under the floors of the config's step count and the sampler ``method`` that
    produced ``x`` (:func:`~composition_jax.zoo.rules.floors_for`; ``None``: floors valid for
    every sampler)."""
    rep = projective(x, conds, blocks, key=key, background=background, alpha=alpha,
                     two_sample_n=cfg.two_sample_n, num_permutations=cfg.num_permutations,
                     sliced_wasserstein=False)
    return rep, material_rejections(rep, floors_for(cfg.steps, method))


def exact_composition(background: Any, conditionals: list, weights: Any = None) -> Any:
    """The exact ``t = 0`` composition ``C[p]`` (:func:`~composition_jax.composed_distribution`),
    or ``None`` where it has no closed form."""
    try:
        return composed_distribution(background, conditionals, weights)
    except (NotImplementedError, ValueError):
        return None


def check_same_law(cfg: Config, key: jax.Array, x: Any, reference: Any,
                   alpha: float = PROCEDURE_ALPHA, method: str | None = None
                   ) -> tuple[dict, list[str]]:
    """:func:`~composition_jax.verify.same_law` of the samples against the exact ``C[p]`` at the
    config's sizes: its summary and its material rejections (``[]`` and ``{}`` when
    ``reference`` is ``None``)."""
    if reference is None:
        return {"available": False}, []
    rep = same_law(x, reference, key=key, alpha=alpha, two_sample_n=cfg.two_sample_n)
    mat = material_joint(rep, floors_for(cfg.steps, method))
    return {"available": True, "passed": rep.passed, "material_rejections": len(mat),
            "p_values": {k: float(f"{v:.3g}") for k, v in rep.p_values.items()},
            "effects": {k: round(v, 5) for k, v in rep.effects.items()}}, mat


def cosines(background: Any, conditionals: list, transform: Any = None) -> dict:
    """The mean-difference heuristic (Section 8, Lemma 8.1) from the exact means, optionally in
    feature coordinates ``z = transform @ x``."""
    mb = np.asarray(_laws.moments(background)[0], np.float64)
    ms = np.stack([np.asarray(_laws.moments(c)[0], np.float64) for c in conditionals])
    if transform is not None:
        mb, ms = mb @ transform.T, ms @ transform.T
    if len(conditionals) < 2:
        return {"cosines": [[1.0]], "max_abs_offdiag": 0.0}
    c = np.asarray(mean_difference_cosines(jnp.asarray(ms), jnp.asarray(mb)), np.float64)
    off = np.abs(c[~np.eye(c.shape[0], dtype=bool)])
    return {"cosines": np.round(c, 4).tolist(), "max_abs_offdiag": float(off.max())}


def fc(background: Any, conditionals: list, blocks: Any) -> tuple[dict, Any]:
    """The exact Factorized-Conditionals decision (Definition 5.2) as a dict, and the result."""
    r = factorized_conditionals(background, conditionals, blocks)
    return {"holds": bool(r.holds), "reasons": list(r.reasons)}, r


def gap(background: Any, conditionals: list, schedule: Any, cfg: Config, key: jax.Array,
        weights: Any = None) -> dict:
    """The composition gap ``C[p^t]`` vs ``N_t[C[p]]`` on 25 times (Section 7), or why it is
    not available."""
    ts = np.linspace(0.02, 0.98, 25)
    try:
        g = composition_gap(background, conditionals, schedule, ts, weights, key=key,
                            n=cfg.gap_n)
    except (NotImplementedError, ValueError) as e:
        return {"available": False, "why": str(e).split(";")[0][:200]}
    return {"available": True, "kind": g.kind, "max": float(np.max(g.divergence)),
            "ts": [round(float(t), 4) for t in g.ts],
            "divergence": [float(v) for v in g.divergence],
            "stderr": [float(v) for v in g.stderr]}


def strip(per_sampler: dict) -> dict:
    """``per_sampler`` without its private (``_``-prefixed) entries, for the metrics."""
    return {m: {k: v for k, v in d.items() if not k.startswith("_")} for m, d in
            per_sampler.items()}


def activity(x: np.ndarray, S: list, thr: float = 0.5) -> dict:
    """Activation statistics of binary-pattern samples (eqs. (17)-(18)): means on and off
    ``S`` and the fraction of samples whose active set (coordinates ``> thr``) is exactly
    ``S``."""
    S = list(S)
    off = [j for j in range(x.shape[1]) if j not in S]
    active = x > thr
    exact = np.all(active[:, S], 1) & ~np.any(active[:, off], 1) if off else np.all(active, 1)
    return {
        "mean_on_S": float(x[:, S].mean()),
        "mean_off_S": float(x[:, off].mean()) if off else None,
        "std_on_S": float(x[:, S].std(0).mean()),
        "frac_exact_count": float(exact.mean()),
        "mean_active_count": float(active.sum(1).mean()),
    }


# ------------------------------------------------------------------------ 2-D Gaussian tuples
def gaussian(mean: Any, var: Any) -> Gaussian:
    """``N(mean, diag(var))`` in the default float dtype."""
    return Gaussian(jnp.asarray(mean, jnp.result_type(float)),
                    jnp.diag(jnp.asarray(var, jnp.result_type(float))))


def push(A_inv: np.ndarray, dist: Gaussian) -> Gaussian:
    """Exact law of ``A^{-1} z`` for ``z ~ dist`` (closed form)."""
    Ai = jnp.asarray(A_inv, dist.mean.dtype)
    return Gaussian(Ai @ dist.mean, Ai @ dist.cov @ Ai.T)


def target_2d(bg: Gaussian, conds: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the exact ``t = 0`` composition ``C[p]`` of Gaussians."""
    t = composed_distribution(bg, conds)
    return np.asarray(t.mean, np.float64), np.asarray(t.cov, np.float64)


def two_d(cfg: Config, key: jax.Array, bg: Gaussian, conds: list, masks: list, *,
          transform: Any = None, z_conds: list | None = None, mcmc: bool = False,
          law_methods: tuple[str, ...] = ("euler_maruyama",)) -> tuple[dict, dict, dict]:
    """Sample a 2-D Gaussian composition with every standard sampler (and annealed MALA/HMC
    with ``mcmc``), test each conditional's mask (in feature space ``z = A x`` when
    ``transform`` is given), and compute the samplers' exact laws.

    Returns ``(per_sampler, plots, laws)``.
    """
    sch = VPSchedule()
    A = np.eye(2) if transform is None else np.asarray(transform, np.float64)
    zc = conds if z_conds is None else z_conds
    model = compose(diffuse(bg, sch), [diffuse(c, sch) for c in conds])
    exact = exact_composition(bg, conds)
    disjoint = len({j for m in masks for j in m}) == sum(len(m) for m in masks)
    per, plots = {}, {"scatter": {}}
    methods = STANDARD_SAMPLERS + (("annealed_mala", "annealed_hmc") if mcmc else ())
    for i, m in enumerate(methods):
        ks, kv = jax.random.split(jax.random.fold_in(key, i))
        opts = {"mcmc_steps": cfg.mcmc_steps} if m.startswith("annealed") else {}
        x = sample_model(cfg, ks, model, sch, 2, m, **opts)
        z = x @ A.T
        if disjoint:
            rep, mat = check_projective(cfg, kv, z, zc, masks, method=m)
            summ = summarize(rep, mat, floors_for(cfg.steps, m))
        else:  # overlapping masks: each conditional's projection tested on its own (alpha / k)
            mat, summ = [], {}
            for j, (c, msk) in enumerate(zip(zc, masks)):
                rep, mj = check_projective(cfg, jax.random.fold_in(kv, j), z, [c], [msk],
                                           alpha=PROCEDURE_ALPHA / len(masks), method=m)
                mat += mj
                summ[f"conditional {j}"] = summarize(rep, mj, floors_for(cfg.steps, m))
        joint, mat_j = check_same_law(cfg, jax.random.fold_in(kv, 99), x, exact, method=m)
        per[m] = {**summ, "joint_law": joint, "z_mean": np.round(z.mean(0), 4).tolist(),
                  "z_cov": np.round(np.cov(z.T), 4).tolist(), "_material": mat + mat_j}
        plots["scatter"][m] = z[:1500]
    laws = {}
    for m in law_methods:
        mean, cov = sampler_law(model, sch, method=m, steps=cfg.steps, t_min=cfg.t_min,
                                grid=cfg.grid, dim=2, as_moments=True)
        mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
        laws[m] = {"z_mean": np.round(A @ mean, 4).tolist(),
                   "z_cov": np.round(A @ cov @ A.T, 4).tolist()}
    return per, plots, laws
