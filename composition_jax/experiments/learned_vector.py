r"""Composition of *learned* vector score models against the exact composition.

The tuple (``d = 4``, blocks ``M_1 = {0, 1}``, ``M_2 = {2, 3}``; an analogue of the paper's
empty-background toy, eq. 17, with a non-Gaussian law per block):

* background ``p_b = N(0, s^2 I_4)`` ("empty"),
* ``p_1`` = a ring of ``K`` Gaussians (radius ``R``, std ``s``) on ``M_1``, times ``N(0, s^2 I)``
  on ``M_2``; ``p_2`` the same with the blocks swapped (as 4-D ``GaussianMixture`` laws),
* ``p_u = (p_1 + p_2) / 2`` (the unconditional law of the pair).

``(p_b, p_1, p_2)`` satisfies Factorized Conditionals, so the exact composition
``C[p] = cj.composed_distribution(p_b, [p_1, p_2])`` is the product of the two rings (Theorem
5.3), while Bayes composition over ``p_u`` is not projective. One conditional ``MLPScoreNet`` with
3 conditions (0: ``p_1``, 1: ``p_2``, 2: ``p_b``; NULL: ``p_u``) is trained by DSM on exact
samples; its Fisher divergence against each exact noised law is reported
(:func:`composition_jax.training.fisher_divergence`). The learned compositions
``cj.compose(background, [m_1, m_2])`` are sampled with ``cj.sample`` and tested:

* block-wise with ``cj.verify.projective(samples, [p_1, p_2], blocks)`` (the paper's definition),
* jointly against the exact composed law (one block = all coordinates),

under the zoo's decision rule (:func:`composition_jax.verify.scenarios.material_rejections`: a
rejection at family-wise level ``ALPHA`` counts only when its effect size exceeds its floor).
Expected: empty background ``success``, Bayes background ``failure``.

Model-error control: a composition of *learned* models can only be as good as the models. Each
learned conditional ``m_i`` is also sampled alone (same sampler) and tested against its exact law
``p_i`` on all 4 coordinates; ``control[e]`` is the largest effect size of kind ``e`` (KS D,
covariance error, ...) among these controls. Verdict: ``success`` when the composition has no
material rejection; ``failure`` when some material rejection has an effect size above
``CONTROL_FACTOR * control[e]`` (the composition deviates far more than its ingredients do: the
error of two composed scores is at most about the sum of theirs, hence the factor 2); otherwise
``inconclusive`` (the deviation is within what the training error alone explains: the models
are too inaccurate at this size to decide, e.g. the quick mode's short training).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..compose import compose, composed_distribution
from ..distributions import Gaussian, GaussianMixture, diffuse
from ..nn import MLPScoreNet
from ..samplers import sample
from ..schedules import VPSchedule
from ..training import DSMTrainer, fisher_divergence
from ..verify.projective import projective
from ._common import cache_dir, train_cached

__all__ = ["CONTROL_FACTOR", "VectorConfig", "decide", "ring_tuple", "run_learned_vector"]

CONTROL_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class VectorConfig:
    """Sizes of the learned-vector experiment (see the module docstring)."""

    components: int = 4
    radius: float = 1.5
    std: float = 0.3
    hidden: int = 128
    depth: int = 2
    n_train: int = 20000
    train_steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    ema_decay: float = 0.995
    n_samples: int = 2000
    sample_steps: int = 200
    method: str = "euler_maruyama"
    grid: str = "log_snr"
    t_min: float = 1e-3
    fisher_n: int = 1024
    fisher_ts: tuple = (0.01, 0.05, 0.1, 0.3, 0.6, 0.9)
    two_sample_n: int = 500
    num_permutations: int = 999
    seed: int = 1
    mode: str = "custom"

    @staticmethod
    def for_mode(mode: str) -> VectorConfig:
        if mode == "minimal":
            return VectorConfig(hidden=16, depth=1, n_train=64, train_steps=4, batch_size=16,
                                n_samples=64, sample_steps=4, fisher_n=16, fisher_ts=(0.5,),
                                two_sample_n=32, num_permutations=99, mode="minimal")
        if mode == "quick":
            return VectorConfig(train_steps=3000, n_samples=1000, sample_steps=100, mode="quick")
        if mode == "full":
            return VectorConfig(hidden=256, depth=3, n_train=50000, train_steps=6000, lr=1e-3,
                                ema_decay=0.999, n_samples=4000, sample_steps=300,
                                fisher_n=4096, two_sample_n=1000, num_permutations=1999,
                                mode="full")
        raise ValueError(f"mode must be 'minimal', 'quick' or 'full', got {mode!r}")


def ring_tuple(cfg: VectorConfig) -> dict:
    """The exact laws ``{"p1", "p2", "background", "unconditional"}`` (4-D) and ``blocks``."""
    K, R, s = cfg.components, cfg.radius, cfg.std
    ang = 2 * np.pi * np.arange(K) / K
    ring = np.stack([R * np.cos(ang), R * np.sin(ang)], 1)  # (K, 2)
    z = np.zeros_like(ring)
    m1 = np.concatenate([ring, z], 1)
    m2 = np.concatenate([z, ring], 1)
    f = jnp.result_type(float)
    covs = jnp.asarray(np.broadcast_to(s * s * np.eye(4), (K, 4, 4)), f)
    w = jnp.full((K,), 1.0 / K, f)
    p1 = GaussianMixture(w, jnp.asarray(m1, f), covs)
    p2 = GaussianMixture(w, jnp.asarray(m2, f), covs)
    pb = Gaussian(jnp.zeros(4, f), jnp.asarray(s * s * np.eye(4), f))
    pu = GaussianMixture(jnp.full((2 * K,), 0.5 / K, f), jnp.asarray(np.concatenate([m1, m2]), f),
                         jnp.concatenate([covs, covs]))
    return {"p1": p1, "p2": p2, "background": pb, "unconditional": pu,
            "blocks": (np.array([0, 1]), np.array([2, 3]))}


def _material(report) -> list[str]:
    from ..zoo.rules import material_rejections

    return material_rejections(report)


def _effects(report) -> dict:
    """Largest effect size per effect kind over a report's tests (rejected or not)."""
    out: dict = {}
    for b in report.blocks:
        for t in b.tests:
            out[t.effect_name] = max(out.get(t.effect_name, -np.inf), float(t.effect_size))
    return out


def decide(reports, control: dict, factor: float = CONTROL_FACTOR) -> tuple[str, list, list]:
    """Verdict of a learned composition (see the module docstring).

    Args:
      reports: the composition's :class:`~composition_jax.verify.projective.ProjectiveReport` s.
      control: largest effect size per effect kind of the learned models alone vs their exact
        laws.
      factor: a material rejection is decisive when its effect exceeds ``factor * control``.

    Returns:
      ``(observed, material, decisive)``: ``observed`` in ``{"success", "failure",
      "inconclusive"}``, the material rejections (strings) and the decisive ones.
    """
    from ..zoo.rules import EFFECT_FLOORS

    material, decisive = [], []
    for rep in reports:
        for b in rep.blocks:
            for t in b.tests:
                if t.rejected and t.effect_size > EFFECT_FLOORS.get(t.effect_name, 0.0):
                    msg = (f"{b.name} {list(b.indices)}: {t.name} p={t.p_value:.2g}, "
                           f"{t.effect_name}={t.effect_size:.3g}")
                    material.append(msg)
                    c = control.get(t.effect_name, 0.0)
                    if t.effect_size > factor * c:
                        decisive.append(f"{msg} > {factor:g} x control {c:.3g}")
    if not material:
        return "success", material, decisive
    return ("failure" if decisive else "inconclusive"), material, decisive


def run_learned_vector(cfg: VectorConfig | None = None, *, key: jax.Array | None = None,
                       cache: Any = "default") -> dict:
    """Train, measure Fisher divergences, compose, sample, verify. Returns
    ``{"config", "training", "fisher", "records", "samples"}`` (records as in
    :func:`~composition_jax.experiments.length_generalization.run_length_generalization`)."""
    from ..zoo.rules import ALPHA

    cfg = VectorConfig.for_mode("quick") if cfg is None else cfg
    key = jax.random.key(cfg.seed) if key is None else key
    cache_path = cache_dir() if cache == "default" else (None if cache is None else cache_dir(cache))
    laws = ring_tuple(cfg)
    order = [laws["p1"], laws["p2"], laws["background"]]
    sch = VPSchedule()
    kd, kt, kf, ks, kv = jax.random.split(key, 5)
    kds = jax.random.split(kd, 4)
    xs = [law.sample(k, cfg.n_train) for law, k in zip(order + [laws["unconditional"]], kds)]
    labels = np.concatenate([np.full(cfg.n_train, c) for c in range(4)])
    data = (jnp.concatenate(xs), jnp.asarray(labels, jnp.int32))
    net = MLPScoreNet(dim=4, hidden=cfg.hidden, depth=cfg.depth, num_conditions=3)
    trainer = DSMTrainer(net, sch, optimizer=optax.adam(cfg.lr), batch_size=cfg.batch_size,
                         steps_per_call=min(100, max(1, cfg.train_steps)), p_uncond=0.0,
                         ema_decay=cfg.ema_decay)
    desc = {"laws": [cfg.components, cfg.radius, cfg.std], "n_train": cfg.n_train,
            "seed": cfg.seed, "network": repr(net), "lr": cfg.lr}
    state, info = train_cached(trainer, kt, data, cfg.train_steps, "learned-vector", desc,
                               cache_path)
    m = trainer.model(state)
    models = {"p1": m.condition(0), "p2": m.condition(1), "background": m.condition(2),
              "unconditional": m.unconditional()}
    fisher = {}
    for i, (name, mod) in enumerate(models.items()):
        rep = fisher_divergence(mod, diffuse(laws[name], sch), jnp.asarray(cfg.fisher_ts),
                                key=jax.random.fold_in(kf, i), n=cfg.fisher_n)
        d = rep.to_dict()
        d["mean"], d["mean_se"] = rep.mean()
        fisher[name] = d
    exact = composed_distribution(laws["background"], [laws["p1"], laws["p2"]])
    blocks = laws["blocks"]
    # model-error control: each learned conditional alone vs its exact law (all 4 coordinates)
    kc = jax.random.fold_in(ks, 100)
    control: dict = {}
    control_reports = {}
    for c_i, name in enumerate(("p1", "p2")):
        kcs, kcv = jax.random.split(jax.random.fold_in(kc, c_i))
        xc = sample(kcs, models[name], sch, (cfg.n_samples, 4), method=cfg.method,
                    steps=cfg.sample_steps, grid=cfg.grid, t_min=cfg.t_min)
        rep_c = projective(xc, [laws[name]], [np.arange(4)], key=kcv, alpha=ALPHA,
                           two_sample_n=cfg.two_sample_n, num_permutations=cfg.num_permutations)
        control_reports[name] = rep_c.to_dict()
        for e, v in _effects(rep_c).items():
            control[e] = max(control.get(e, -np.inf), v)
    records, samples = [], {}
    for b_i, (bname, expected) in enumerate((("background", "success"),
                                             ("unconditional", "failure"))):
        model = compose(models[bname], [models["p1"], models["p2"]])
        t0 = time.perf_counter()
        x = jax.block_until_ready(sample(
            jax.random.fold_in(ks, b_i), model, sch, (cfg.n_samples, 4), method=cfg.method,
            steps=cfg.sample_steps, grid=cfg.grid, t_min=cfg.t_min))
        secs = time.perf_counter() - t0
        samples[bname] = np.asarray(x)
        kb, kj = jax.random.split(jax.random.fold_in(kv, b_i))
        rep_b = projective(x, [laws["p1"], laws["p2"]], blocks, key=kb, alpha=ALPHA,
                           background=laws["background"], two_sample_n=cfg.two_sample_n,
                           num_permutations=cfg.num_permutations)
        rep_j = projective(x, [exact], [np.arange(4)], key=kj, alpha=ALPHA,
                           two_sample_n=cfg.two_sample_n, num_permutations=cfg.num_permutations)
        observed, material, decisive = decide([rep_b, rep_j], control)
        label = "empty" if bname == "background" else "Bayes (p_u)"
        records.append({
            "name": f"learned_vector_{'empty' if bname == 'background' else 'bayes'}",
            "title": f"learned 4-D ring models composed over the {label} background vs the exact "
                     "composition",
            "expected": expected, "observed": observed,
            "metrics": {"projective": rep_b.to_dict(), "joint_vs_exact": rep_j.to_dict(),
                        "material_rejections": material, "decisive_rejections": decisive,
                        "control_effects": control, "control": control_reports,
                        "control_factor": CONTROL_FACTOR, "fisher": fisher,
                        "training": info, "sample_seconds": round(secs, 2),
                        "block_mean_norms": records_block_means(x, blocks)},
            "reasons": [
                "theory: (p_b, p_1, p_2) is FC on blocks {0,1}, {2,3}: the composition is the "
                "product of the two rings (Theorem 5.3); over p_u (Bayes) FC fails",
                "decision rule: success iff neither the block-wise projective test nor the joint "
                "test against cj.composed_distribution has a material rejection (alpha = "
                f"{ALPHA}, Bonferroni, effect floors of the zoo); failure iff some material "
                f"rejection's effect exceeds {CONTROL_FACTOR:g} x the largest effect of the same "
                "kind of a learned conditional sampled alone vs its exact law (model-error "
                "control); else inconclusive (the training error alone could explain it)",
                "material rejections: " + ("; ".join(material) or "none"),
                "decisive (beyond the model-error control): " + ("; ".join(decisive) or "none"),
                "model-error control (largest effect, learned p_1/p_2 alone vs exact): " + ", ".join(
                    f"{k}={v:.3g}" for k, v in control.items()),
                "learned-model Fisher divergence (mean over t, ± se): " + ", ".join(
                    f"{k}: {v['mean']:.3g}±{v['mean_se']:.2g}" for k, v in fisher.items()),
                "mean ring radius per block (exact composition: about "
                f"{cfg.radius:.2f}): " + ", ".join(
                    f"{v:.3f}" for v in records_block_means(x, blocks)),
            ],
        })
    return {"config": dataclasses.asdict(cfg), "training": info, "fisher": fisher,
            "records": records, "samples": samples}


def records_block_means(x: Any, blocks) -> list[float]:
    """Mean Euclidean norm of the samples on each block, ``(len(blocks),)``."""
    x = np.asarray(x)
    return [float(np.mean(np.linalg.norm(x[:, np.asarray(b)], axis=1))) for b in blocks]
