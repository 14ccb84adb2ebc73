r"""Composition of *learned* vector score models against the exact composition.

The tuple (``d = 4``, blocks ``M_1 = {0, 1}``, ``M_2 = {2, 3}``; an analogue of the paper's
empty-background toy, eq. 17, with a non-Gaussian law per block):

* background ``p_b = N(0, s^2 I_4)`` ("empty"),
* ``p_1`` = a ring of ``K`` Gaussians (radius ``R``, std ``s``) on ``M_1``, times ``N(0, s^2 I)``
  on ``M_2``; ``p_2`` the same with the blocks swapped (as 4-D ``GaussianMixture`` laws),
* ``p_u = (p_1 + p_2) / 2`` (the unconditional law of the pair).

``(p_b, p_1, p_2)`` satisfies Factorized Conditionals, so the exact composition
``C[p] = cj.composed_distribution(p_b, [p_1, p_2])`` is the product of the two rings (Theorem
5.3), while Bayes composition over ``p_u`` is not projective. The models are trained by DSM on
exact samples (``VectorConfig.network``):

* ``"local"`` (the default): one conditional :class:`~composition_jax.nn.LocalScoreNet` over the
  two blocks with 3 conditions (0: ``p_1``, 1: ``p_2``, 2: ``p_b``), whose output on a block
  depends only on that block's input (the local conditional scores of the follow-up paper,
  Bradley 2025, arXiv 2509.16447). Each of the three laws factorizes over the blocks, so the
  network can represent its score exactly. ``p_u`` couples the blocks (which ring is present), so
  no block-local network can represent it: it gets an unconditional ``MLPScoreNet``.
* ``"mlp"``: one conditional ``MLPScoreNet`` with the 3 conditions and NULL for ``p_u`` (the
  design before 2026-12-01).

Each model's Fisher divergence against its exact noised law is reported
(:func:`composition_jax.training.fisher_divergence`). The learned compositions
``cj.compose(background, [m_1, m_2])`` are sampled with ``cj.sample`` and tested:

* block-wise with ``cj.verify.projective(samples, [p_1, p_2], blocks)`` (the paper's definition),
* jointly against the exact composed law (one block = all coordinates).

Expected: empty background ``success``, Bayes background ``failure``.

**Decision: an error budget of the composition itself.** A composition of learned models
misses ``C[p]`` for two reasons: the theory's (none under FC; Bayes composition is not
projective) and the models' score error. The second is bounded at the level of the sampled law.
The compositions are sampled by Euler--Maruyama (no final denoising step); a step from ``t_k`` to
``t_{k+1}`` (``h_k = t_k - t_{k+1}``) is Gaussian with covariance ``g(t_k)^2 h_k I`` and a mean
that depends on the score only through ``h_k g(t_k)^2 s(x, t_k)``, so for the chain of the
learned composed score ``s_hat`` and the chain of the EXACT composed score ``s`` (the same
composition of the exact noised laws), started from the same prior, the chain rule of the
Kullback--Leibler divergence gives the identity (the discrete-time form of Girsanov's theorem)

``KL(exact chain || learned chain) = sum_k (g(t_k)^2 h_k / 2) E_{x_k} |s_hat(x_k, t_k) -
s(x_k, t_k)|^2``,

the expectation over the EXACT chain's states ``x_k`` (simulated, all states recorded; the
per-trajectory sums are i.i.d., hence a standard error; :func:`composition_budget`); the same
sum with the expectation over the LEARNED chain's states is ``KL(learned chain || exact
chain)`` (the per-step Gaussian KL is symmetric in the two means). By data processing each
bounds the KL of the final samples in its direction, and either gives
``TV <= min(sqrt(KL / 2), sqrt(1 - e^{-KL}))`` (Pinsker; Bretagnolle--Huber; the budget takes
the smaller). A total-variation
budget bounds the effects that are bounded functionals of the law: the KS distance of any 1-D
marginal (at most TV) and the Gaussian-kernel MMD (kernel bounded by 1: at most 2 TV). The
verdict (:func:`decide`), under the zoo's rule for material rejections (a lower confidence bound
on the effect above its floor, :func:`composition_jax.zoo.rules.is_material`):

* ``success``: no material rejection (block-wise and joint);
* ``failure``: some KS effect's lower bound exceeds ``floor + TV budget`` (MMD: ``sqrt(floor) +
  2 TV``): by the triangle inequality the EXACT composition itself is then farther from
  ``C[p]`` than its floor -- the deviation is not the models' doing;
* otherwise ``inconclusive``: the deviation is within what the score error explains (or only
  effects a TV budget does not bound, mean and covariance errors, are material).

* with a material rejection, also ``failure`` when an event -- ``E_i = {|x_{M_i}| <= R / 2}``
  (the ring of block ``M_i`` collapsed to half its radius) or ``E = {min_i |x_{M_i}| <= R / 2}``
  (some ring collapsed) -- is so much more (or less) frequent in the sample than under ``C[p]``
  that the binary KL between the two probabilities exceeds the path-KL budget of its direction
  (:func:`event_kl_bound`: by data processing, ``kl(P_X(E) || P_L(E))`` is at most
  ``KL(exact || learned)`` and ``kl(P_L(E) || P_X(E))`` at most ``KL(learned || exact)``, so an
  exact composition within the KS floor of ``C[p]`` on ``E`` could not be that far from the
  learned one). For an event that is rare under ``C[p]`` and common in the sample this is far
  tighter than the Pinsker route through the TV budget, the reverse direction most of all.
  Each of the 3 events x 2 directions compares a 3-standard-error Wilson bound with a
  3-standard-error budget bound.

The budget is taken at its upper 3-standard-error bound (:data:`~composition_jax.experiments._common.Z`),
which can only make ``failure`` rarer. Why not a control from a learned model sampled on its own
(the former rule: failure beyond twice the largest effect of a learned conditional sampled
alone): the composition evaluates each ingredient OFF its own training law -- ``s_b`` and
``s_2`` at points whose block ``M_1`` lies on the ring, five standard deviations from where their
training data put it -- where their errors no longer cancel; the chain sums per ingredient along
the composition's chain and along the ingredient's own chain are reported (``budget_parts``) and
show it. The single-model control is still reported, as a diagnostic.

**Measured, local network** (quick mode: 3000 DSM steps, width 128, depth 2; 100
Euler--Maruyama steps, ``n = 1000``; 2026-12-01): each ingredient's path KL along its own exact
chain is 0.03-0.11 and along the exact composed chain 0.26-0.50 (still queried off its training
law on the other block), but the composition's is 0.12 along the exact chain and 0.16 along the
learned one (empty background): the block-local ingredients' errors largely cancel in ``s_1 +
s_2 - s_b``. Empty background: no material rejection (block KS ``D = 0.033`` / ``0.040``, mean
ring radius 1.50 / 1.54): ``success``. Bayes: ``D = 0.21`` / ``0.22``, radius 0.82 / 0.79; 545 of
1000 samples have some ring collapsed below ``R / 2`` against ``P_C = 0.008``, and each block's
event alone exceeds the reverse budget (``kl(P_L || P_X) >= 0.79`` and ``1.00 > 0.76``):
``failure``. Full mode (6000 steps, width 256, depth 3; 300 steps, ``n = 4000``): the
composition's path KL 0.077 / 0.092 (ingredients 0.35-0.67 along the composed chain); empty
``success`` (no material rejection, radius 1.53 / 1.52); Bayes ``failure`` (radius 0.83 / 0.81,
each block's collapse event beyond the reverse budget: ``kl(P_L || P_X) >= 0.83`` and ``0.91 >
0.61``). The full run took 22 minutes on 2 cores (training 5.6 minutes, most of the rest the
path-KL budgets: 4096 chains of 300 steps each).

**Measured, MLP** (``network="mlp"``, the same quick sizes): each learned model's path KL along
its OWN exact chain is 0.04-0.11, along the
exact composed chain 0.40-0.72 (4-16 times more: the composition queries it off its training
law); the composition's path KL is 0.98 (empty background) and 1.21 (Bayes) along the exact
chain, 1.97 and 1.46 along the learned one. Empty background: block KS ``D = 0.097`` (lower bound
0.033, material), mean ring radius 1.38 / 1.42 (exact 1.50; the EXACT composition sampled the
same way gives ``D = 0.02`` at ``n = 4000``, so this is the models' error), within every
budget: ``inconclusive``. Bayes: ``D = 0.22``, radius 0.73 / 0.74; 705 of 1000 samples have
some ring collapsed below ``R / 2`` against ``P_C = 0.008``: ``kl(P_L || P_X) >= 1.97 > 1.50 =
KL(learned || exact)`` (the per-block events give 1.35 and 1.27, and the forward direction 0.59
/ 0.55 / 0.97 against 1.24), so ``failure``. Full mode (6000 steps, width 256, depth 3; 300
steps, ``n = 4000``): empty ``inconclusive`` (within the path-KL budgets 0.73 / 1.40 of the two
directions), Bayes ``failure``
from all three events in the reverse direction (1.17 / 1.26 / 1.72 against 1.06). The
some-block event was added after the quick run above had left Bayes ``inconclusive`` with
the per-block events alone; the full run, trained and sampled independently, decides with the
per-block events too. The single-model control (KS 0.056) understates the composition's error.
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
from ..nn import LocalScoreNet, MLPScoreNet
from ..samplers import sample
from ..schedules import VPSchedule
from ..training import DSMTrainer, fisher_divergence
from ..verify.projective import projective
from ._common import Z, cache_dir, train_cached

__all__ = ["TV_BOUNDED", "VectorConfig", "any_disc_probability", "binary_kl", "composition_budget",
           "decide", "disc_probability", "event_kl_bound", "ring_tuple", "run_learned_vector"]


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
    network: str = "local"

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


def _effects(report) -> dict:
    """Largest effect size per effect kind over a report's tests (rejected or not)."""
    out: dict = {}
    for b in report.blocks:
        for t in b.tests:
            out[t.effect_name] = max(out.get(t.effect_name, -np.inf), float(t.effect_size))
    return out


@jax.jit
def _chain_errors(models, exact, schedule, traj, times):
    """``w_k |s_m(x_k, t_k) - s(x_k, t_k)|^2`` summed over the steps ``k`` of each trajectory,
    for each model ``m`` of the tuple ``models`` against ``exact`` (``(len(models), n)``), with
    ``w_k = g(t_k)^2 (t_k - t_{k+1}) / 2`` (the Euler--Maruyama transition's KL weight)."""
    ts, dt = times[:-1], times[:-1] - times[1:]

    def one(a):
        x, t, h = a
        t = t.astype(x.dtype)
        s0 = jax.vmap(exact.score, in_axes=(0, None))(x, t)
        w = 0.5 * schedule.g2(t) * h
        return jnp.stack([w * jnp.sum((jax.vmap(m.score, in_axes=(0, None))(x, t) - s0) ** 2,
                                      -1) for m in models])

    return jnp.sum(jax.lax.map(one, (traj[:-1], ts, dt)), 0)


def _path_kl(a: Any, b: Any, schedule: Any, key: jax.Array, dim: int, n: int, steps: int,
             t_min: float, grid: str, others=()) -> list[np.ndarray]:
    """Per-trajectory sums of ``w_k |s_b(x_k) - s_a(x_k)|^2`` along ``n`` Euler--Maruyama
    trajectories of ``a`` (all states recorded): the first for the pair ``(b, a)``, then one per
    ``(m, e)`` of ``others`` (``m`` against ``e`` along the SAME chain of ``a``)."""
    res = sample(key, a, schedule, (int(n), int(dim)), method="euler_maruyama",
                 steps=int(steps), t_min=t_min, grid=grid, denoise_final=False,
                 record_every=1, return_info=True)
    traj, times = res.trajectory, res.info.times
    return [np.asarray(_chain_errors((m,), e, schedule, traj, times)[0], np.float64)
            for m, e in ((b, a),) + tuple(others)]


def _kl_summary(sums: np.ndarray, z: float) -> tuple[float, float, float, float]:
    """``(kl, se, upper, tv)`` of per-trajectory path-KL sums: the mean, its standard error, the
    upper ``z``-standard-error bound and the TV bound ``min(sqrt(up / 2), sqrt(1 - e^-up))``."""
    kl = float(sums.mean())
    se = float(sums.std(ddof=1) / np.sqrt(len(sums)))
    up = kl + z * se
    return kl, se, up, float(min(1.0, np.sqrt(up / 2.0), np.sqrt(1.0 - np.exp(-up))))


def composition_budget(learned: Any, exact: Any, schedule: Any, *, key: jax.Array, dim: int,
                       n: int, steps: int, t_min: float, grid: str, parts: dict | None = None,
                       z: float = Z, reverse: bool = True) -> dict:
    r"""Error budget of a learned composition sampled by Euler--Maruyama: the largest
    total-variation distance between the output laws of ``learned`` and ``exact`` that the score
    error of ``learned`` can cause (module docstring).

    Both chains start from the same prior and take the same steps ``t_0 = 1 > ... > t_K =
    t_min``; a step is Gaussian with mean ``x + h_k (g_k^2 s(x, t_k) - f_k x)`` and covariance
    ``g_k^2 h_k I`` (``h_k = t_k - t_{k+1}``, ``g_k^2 = g(t_k)^2``), so the chain rule for the
    Kullback--Leibler divergence of the two path laws gives EXACTLY (the discrete-time form of
    Girsanov's theorem)

    ``KL(path_exact || path_learned) = sum_k (g_k^2 h_k / 2) E|s_learned(x_k, t_k) -
    s_exact(x_k, t_k)|^2``,  ``x_k`` the EXACT chain's state,

    and the same sum with ``x_k`` the LEARNED chain's state is ``KL(path_learned ||
    path_exact)`` (the per-step Gaussian KL is symmetric in the two means; only the law the
    expectation is taken under changes). By data processing each bounds the KL of the final
    states in its direction. Each is estimated from ``n`` trajectories of its chain (the
    per-trajectory sums are i.i.d., so the standard error is theirs) and taken at its upper
    ``z``-standard-error bound; the TV bound ``min(sqrt(KL / 2), sqrt(1 - exp(-KL)))``
    (Pinsker; Bretagnolle--Huber) holds for either direction, so ``tv`` is the smaller one.

    Args:
      learned, exact: composed models (same structure of the composition, learned and exact
        ingredients).
      parts: optional ``{name: (learned_i, exact_i)}``: the forward sum for single models along
        the SAME exact composed chain (where the composition's error comes from).
      reverse: also simulate the learned chain for ``KL(path_learned || path_exact)``.

    Returns:
      ``{"kl", "kl_se", "kl_upper", "tv", "parts": {name: kl_i}}`` (forward direction, ``tv``
      the smaller of both directions' bounds) and, with ``reverse``, ``"kl_reverse",
      "kl_reverse_se", "kl_reverse_upper", "tv_forward", "tv_reverse"``.
    """
    names = list(parts or {})
    sums = _path_kl(exact, learned, schedule, key, dim, n, steps, t_min, grid,
                    others=tuple(parts[k] for k in names))
    kl, se, up, tv = _kl_summary(sums[0], z)
    out = {"kl": kl, "kl_se": se, "kl_upper": up, "tv": tv,
           "parts": {k: float(v.mean()) for k, v in zip(names, sums[1:])}}
    if reverse:
        rsums = _path_kl(learned, exact, schedule, jax.random.fold_in(key, 1), dim, n, steps,
                         t_min, grid)[0]
        klr, ser, upr, tvr = _kl_summary(rsums, z)
        out.update({"kl_reverse": klr, "kl_reverse_se": ser, "kl_reverse_upper": upr,
                    "tv_forward": tv, "tv_reverse": tvr, "tv": min(tv, tvr)})
    return out


TV_BOUNDED = ("max_ks_D", "mmd2_unbiased")
"""The effects a total-variation budget bounds: a KS distance of any 1-D marginal is at most the
TV distance of the joint laws, and the Gaussian-kernel ``MMD`` (kernel bounded by 1) at most
twice it."""


def decide(reports, tv_budget: float, floors: dict | None = None, events=(),
           kl_budget: float | None = None, kl_budget_reverse: float | None = None
           ) -> tuple[str, list, list]:
    """Verdict of a learned composition (see the module docstring).

    Args:
      reports: the composition's :class:`~composition_jax.verify.projective.ProjectiveReport` s.
      tv_budget: the total-variation distance the learned models' score error can cause
        (:func:`composition_budget`).
      floors: the effect floors (default: the zoo's :data:`~composition_jax.zoo.rules.EFFECT_FLOORS`).
      events: ``{"name", "p_exact", "hits", "n"}`` records of events of the sample
        (:func:`event_kl_bound`); they only decide between ``failure`` and ``inconclusive``
        when some test already rejects materially, never create a rejection.
      kl_budget: the path-KL budget ``KL(exact || learned)`` the events' forward binary KL is
        compared with (its upper bound, :func:`composition_budget`'s ``kl_upper``); required
        with ``events``.
      kl_budget_reverse: optional ``KL(learned || exact)`` budget (``kl_reverse_upper``) the
        events' reverse binary KL ``kl(P_L(E) || P_X(E))`` is compared with.

    Returns:
      ``(observed, material, decisive)``: ``observed`` in ``{"success", "failure",
      "inconclusive"}``, the material rejections (strings) and the decisive ones.
    """
    from ..zoo.rules import EFFECT_FLOORS, effect_lower, is_material

    floors = EFFECT_FLOORS if floors is None else floors
    material, decisive = [], []
    for rep in reports:
        for b in rep.blocks:
            for t in b.tests:
                if not is_material(t, floors):
                    continue
                lo, fl = effect_lower(t), floors.get(t.effect_name, 0.0)
                msg = (f"{b.name} {list(b.indices)}: {t.name} p={t.p_value:.2g}, "
                       f"{t.effect_name}={t.effect_size:.3g} (lower bound {lo:.3g})")
                material.append(msg)
                if t.effect_name == "max_ks_D" and lo > fl + tv_budget:
                    decisive.append(f"{msg} > floor {fl:g} + TV budget {tv_budget:.3g}")
                elif (t.effect_name == "mmd2_unbiased"
                      and np.sqrt(max(lo, 0.0)) > np.sqrt(fl) + 2.0 * tv_budget):
                    decisive.append(f"{msg}: MMD {np.sqrt(lo):.3g} > sqrt(floor) "
                                    f"{np.sqrt(fl):.3g} + 2 x TV budget {tv_budget:.3g}")
    if not material:
        return "success", material, decisive
    if events and kl_budget is None:
        raise ValueError("kl_budget is required with events")
    checks = [(False, kl_budget, "kl(P_X || P_L)", "KL(exact || learned)")]
    if kl_budget_reverse is not None:
        checks.append((True, kl_budget_reverse, "kl(P_L || P_X)", "KL(learned || exact)"))
    for ev in events:
        for rev, budget, what, path in checks:
            kl, lo, hi = event_kl_bound(ev["p_exact"], ev["hits"], ev["n"],
                                        floors.get("max_ks_D", 0.0), reverse=rev)
            if kl > budget:
                decisive.append(f"{ev['name']}: {ev['hits']}/{ev['n']} (interval [{lo:.3g}, "
                                f"{hi:.3g}]) against exact {ev['p_exact']:.3g} +- floor: binary "
                                f"{what} lower bound {kl:.3g} > path {path} budget {budget:.3g}")
    return ("failure" if decisive else "inconclusive"), material, decisive


def binary_kl(q: float, p: float) -> float:
    """``kl(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p))`` (nats), ``0 log 0 = 0``."""
    def term(a, b):
        return 0.0 if a <= 0.0 else (np.inf if b <= 0.0 else a * np.log(a / b))
    return float(term(q, p) + term(1.0 - q, 1.0 - p))


def event_kl_bound(p_exact: float, hits: int, n: int, floor: float, z: float = Z,
                   reverse: bool = False) -> tuple[float, float, float]:
    r"""Smallest binary KL between an event's probability under the exact composition's sampler
    and under the learned one that the data allow: ``(kl, lower, upper)``.

    For any event ``E``, data processing gives ``kl(P_X(E) || P_L(E)) <= KL(X || L)``, ``X`` the
    exact chain's output and ``L`` the learned chain's, and ``KL(X || L)`` is at most the path KL
    of :func:`composition_budget` (``reverse``: ``kl(P_L(E) || P_X(E)) <= KL(L || X)``, the
    reverse path KL). If ``X`` were within the floors of ``C[p]`` -- here:
    ``|P_X(E) - P_C(E)| <= floor`` with the KS floor, the largest tolerated deviation of a 1-D
    distribution function (``E`` is ``{phi(x) <= c}`` for a 1-D statistic ``phi``) -- then
    ``P_X(E)`` lies in ``[P_C(E) - floor, P_C(E) + floor]`` while ``P_L(E)`` lies in the Wilson
    interval (``z`` standard errors) of the observed ``hits / n``. The return value is the
    smallest binary KL in the chosen direction over the two intervals (0 when they meet; ``kl``
    is jointly convex and zero on ``q = p``, so the minimum is at the nearest ends). When it
    exceeds the budget of its direction, ``X`` is NOT within the floor on ``E``: the exact
    composition itself misses ``C[p]``. Unlike the total-variation route (Pinsker), this uses
    the KL budget directly, which is much tighter for events that are rare under ``C[p]`` and
    common in the sample -- the reverse direction most of all: ``kl(q || p)`` grows like
    ``q log(q / p)`` as ``p -> 0``, the forward one only like ``log(1 / (1 - q))``."""
    from ._common import binomial

    b = binomial(int(hits), int(n), z)
    qa, qb = max(0.0, p_exact - floor), min(1.0, p_exact + floor)
    if qb < b["lower"]:
        pair = (qb, b["lower"])
    elif b["upper"] < qa:
        pair = (qa, b["upper"])
    else:
        return 0.0, b["lower"], b["upper"]
    kl = binary_kl(pair[1], pair[0]) if reverse else binary_kl(*pair)
    return kl, b["lower"], b["upper"]


def _disc_components(mix, block, radius: float, points: int) -> np.ndarray:
    """``P(|x_B| <= radius)`` under each component ``(K,)`` of a mixture ``(w, M, C)`` whose
    components are isotropic on the 2-D block ``B`` (Rice density, trapezoid rule, float64)."""
    M, C = (np.asarray(a, np.float64) for a in mix[1:])
    blk = np.asarray(block)
    if blk.shape != (2,):
        raise ValueError(f"block must hold 2 coordinates, got {blk.tolist()}")
    Cb = C[:, blk][:, :, blk]
    v = Cb[:, 0, 0]
    if not np.allclose(Cb, v[:, None, None] * np.eye(2)[None], rtol=1e-5, atol=1e-12):
        raise ValueError("the components are not isotropic on the block")
    mu = np.linalg.norm(M[:, blk], axis=1)
    rho = np.linspace(0.0, float(radius), int(points))
    dens = (rho[None] / v[:, None]) * np.exp(-(rho[None] - mu[:, None]) ** 2 / (2 * v[:, None])) \
        * _i0e(rho[None] * mu[:, None] / v[:, None])
    return np.clip(np.trapezoid(dens, rho, axis=1), 0.0, 1.0)


def _as_mixture(dist: Any):
    from ..verify import _laws

    mix = _laws.as_mixture(dist)
    if mix is None:
        raise ValueError(f"dist has no Gaussian-mixture form: {type(dist).__name__}")
    return mix


def disc_probability(dist: Any, block, radius: float, points: int = 4001) -> float:
    r"""``P(|x_B| <= radius)`` for ``x ~ dist`` (a Gaussian mixture whose components are
    isotropic on the 2-D block ``B``), exactly up to quadrature: per component with mean ``m``
    and variance ``v`` on ``B``, the radial density of ``|x_B|`` is the Rice density
    ``(rho / v) exp(-(rho^2 + |m|^2) / (2 v)) I_0(rho |m| / v)``, integrated by the trapezoid
    rule on ``points`` nodes of ``[0, radius]`` (float64)."""
    mix = _as_mixture(dist)
    return float(np.clip(np.asarray(mix[0], np.float64)
                         @ _disc_components(mix, block, radius, points), 0.0, 1.0))


def any_disc_probability(dist: Any, blocks, radius: float, points: int = 4001) -> float:
    r"""``P(min_i |x_{B_i}| <= radius)`` -- some block's norm at most ``radius`` -- for a
    Gaussian mixture whose components are isotropic on each 2-D block and have no covariance
    between the blocks (so that, per component, the blocks are independent):
    ``sum_c w_c (1 - prod_i (1 - P_c(|x_{B_i}| <= radius)))`` with :func:`disc_probability`'s
    per-component quadrature."""
    mix = _as_mixture(dist)
    C = np.asarray(mix[2], np.float64)
    idx = [np.asarray(b) for b in blocks]
    for i, a in enumerate(idx):
        for b in idx[i + 1:]:
            if np.abs(C[:, a][:, :, b]).max() > 1e-12 * max(1.0, np.abs(C).max()):
                raise ValueError(f"the components have covariance between blocks "
                                 f"{a.tolist()} and {b.tolist()}")
    miss = np.prod([1.0 - _disc_components(mix, b, radius, points) for b in idx], axis=0)
    return float(np.clip(np.asarray(mix[0], np.float64) @ (1.0 - miss), 0.0, 1.0))


def _i0e(x):
    """``exp(-x) I_0(x)`` for ``x >= 0`` (``np.i0`` below 500, the asymptotic series above)."""
    x = np.asarray(x, np.float64)
    small = x < 500.0
    xs = np.where(small, x, 0.0)
    xl = np.where(small, 1.0, x)
    big = (1.0 + 1.0 / (8 * xl) + 9.0 / (128 * xl * xl)) / np.sqrt(2 * np.pi * xl)
    return np.where(small, np.exp(-xs) * np.i0(xs), big)


def _train_models(cfg: VectorConfig, sch: Any, key: jax.Array, xs: list, blocks: Any,
                  cache_path: Any) -> tuple[dict, dict]:
    """The learned models ``{"p1", "p2", "background", "unconditional"}`` and the training
    information, trained by DSM (or restored from the parameter cache) on the exact samples ``xs``
    (``p_1``, ``p_2``, ``p_b``, ``p_u``: labels 0, 1, 2 and NULL = 3), ``blocks`` those of
    :func:`ring_tuple`.

    ``cfg.network == "mlp"``: one conditional :class:`~composition_jax.nn.MLPScoreNet` (conditions
    0-2, NULL for ``p_u``). ``"local"``: one conditional
    :class:`~composition_jax.nn.LocalScoreNet` over the blocks for ``p_1, p_2, p_b`` (each
    factorizes over the blocks, so a block-local network can represent its score exactly) and an
    unconditional ``MLPScoreNet`` for ``p_u``, a law that couples the blocks (which ring is
    active), which no block-local network can represent.
    """
    def fit(net, k, data, tag):
        tr = DSMTrainer(net, sch, optimizer=optax.adam(cfg.lr), batch_size=cfg.batch_size,
                        steps_per_call=min(100, max(1, cfg.train_steps)), p_uncond=0.0,
                        ema_decay=cfg.ema_decay)
        desc = {"laws": [cfg.components, cfg.radius, cfg.std], "n_train": cfg.n_train,
                "seed": cfg.seed, "network": repr(net), "lr": cfg.lr}
        state, info = train_cached(tr, k, data, cfg.train_steps, tag, desc, cache_path)
        return tr.model(state), info

    def labelled(parts):
        labels = np.concatenate([np.full(len(x), c) for c, x in enumerate(parts)])
        return jnp.concatenate(parts), jnp.asarray(labels, jnp.int32)

    if cfg.network == "mlp":
        net = MLPScoreNet(dim=4, hidden=cfg.hidden, depth=cfg.depth, num_conditions=3)
        m, info = fit(net, key, labelled(xs), "learned-vector")
        mu = m.unconditional()
    else:
        kc, ku = jax.random.split(key)
        local = LocalScoreNet(dim=4, blocks=tuple(tuple(int(i) for i in b) for b in blocks),
                              hidden=cfg.hidden, depth=cfg.depth, num_conditions=3)
        m, info_c = fit(local, kc, labelled(xs[:3]), "learned-vector-local")
        mu, info_u = fit(MLPScoreNet(dim=4, hidden=cfg.hidden, depth=cfg.depth), ku, xs[3],
                         "learned-vector-unconditional")
        info = {"train_seconds": round(info_c["train_seconds"] + info_u["train_seconds"], 2),
                "cached": bool(info_c["cached"] and info_u["cached"]),
                "conditionals": info_c, "unconditional": info_u}
    return {"p1": m.condition(0), "p2": m.condition(1), "background": m.condition(2),
            "unconditional": mu}, info


def run_learned_vector(cfg: VectorConfig | None = None, *, key: jax.Array | None = None,
                       cache: Any = "default") -> dict:
    """Train, measure Fisher divergences, compose, sample, verify. Returns
    ``{"config", "training", "fisher", "records", "samples", "models"}``: records as in
    :func:`~composition_jax.experiments.length_generalization.run_length_generalization`,
    ``models`` the learned ``{"p1", "p2", "background", "unconditional"}``."""
    from ..zoo.rules import ALPHA, floors_for

    cfg = VectorConfig.for_mode("quick") if cfg is None else cfg
    if cfg.network not in ("local", "mlp"):
        raise ValueError(f"cfg.network must be 'local' or 'mlp', got {cfg.network!r}")
    if cfg.method != "euler_maruyama":
        raise ValueError(f"cfg.method must be 'euler_maruyama' (the error budget is the KL of "
                         f"its Gaussian transitions), got {cfg.method!r}")
    key = jax.random.key(cfg.seed) if key is None else key
    cache_path = cache_dir() if cache == "default" else (None if cache is None else cache_dir(cache))
    laws = ring_tuple(cfg)
    order = [laws["p1"], laws["p2"], laws["background"]]
    sch = VPSchedule()
    kd, kt, kf, ks, kv = jax.random.split(key, 5)
    kds = jax.random.split(kd, 4)
    xs = [law.sample(k, cfg.n_train) for law, k in zip(order + [laws["unconditional"]], kds)]
    models, info = _train_models(cfg, sch, kt, xs, laws["blocks"], cache_path)
    fisher = {}
    for i, (name, mod) in enumerate(models.items()):
        rep = fisher_divergence(mod, diffuse(laws[name], sch), jnp.asarray(cfg.fisher_ts),
                                key=jax.random.fold_in(kf, i), n=cfg.fisher_n)
        d = rep.to_dict()
        d["mean"], d["mean_se"] = rep.mean()
        fisher[name] = d
    exact = composed_distribution(laws["background"], [laws["p1"], laws["p2"]])
    blocks = laws["blocks"]
    floors = floors_for(cfg.sample_steps)
    exact_models = {k: diffuse(laws[k], sch) for k in models}
    # single-model control (a diagnostic): each learned conditional alone vs its exact law
    kc = jax.random.fold_in(ks, 100)
    control: dict = {}
    for c_i, name in enumerate(("p1", "p2")):
        kcs, kcv = jax.random.split(jax.random.fold_in(kc, c_i))
        xc = sample(kcs, models[name], sch, (cfg.n_samples, 4), method=cfg.method,
                    steps=cfg.sample_steps, grid=cfg.grid, t_min=cfg.t_min, denoise_final=False)
        rep_c = projective(xc, [laws[name]], [np.arange(4)], key=kcv, alpha=ALPHA,
                           two_sample_n=cfg.two_sample_n, num_permutations=cfg.num_permutations)
        for e, v in _effects(rep_c).items():
            control[e] = max(control.get(e, -np.inf), v)
    records, samples = [], {}
    kbud = jax.random.fold_in(kf, 1000)
    # each ingredient's path KL along its OWN exact chain (all a single-model control can see)
    t0 = time.perf_counter()
    own = {k: composition_budget(models[k], exact_models[k], sch,
                                 key=jax.random.fold_in(kbud, 10 + j), dim=4, n=cfg.fisher_n,
                                 steps=cfg.sample_steps, t_min=cfg.t_min, grid=cfg.grid,
                                 reverse=False)["kl"]
           for j, k in enumerate(("p1", "p2", "background", "unconditional"))}
    own_secs = time.perf_counter() - t0
    # ring-collapse events: per block {|x_Mi| <= R / 2}, and some block; their exact
    # probabilities under C[p] are the same for both compositions
    r0 = 0.5 * cfg.radius
    ev_names = [f"block {list(map(int, b))} radius <= {r0:g}" for b in blocks] + [
        f"some block radius <= {r0:g}"]
    ev_exact = [disc_probability(exact, b, r0) for b in blocks] + [
        any_disc_probability(exact, blocks, r0)]
    for b_i, (bname, expected) in enumerate((("background", "success"),
                                             ("unconditional", "failure"))):
        model = compose(models[bname], [models["p1"], models["p2"]])
        exact_model = compose(exact_models[bname], [exact_models["p1"], exact_models["p2"]])
        t0 = time.perf_counter()
        # what the learned models' score error can do to the composition: along the exact
        # composed chain (both directions), for the composition and for each ingredient
        budget = composition_budget(
            model, exact_model, sch, key=jax.random.fold_in(kbud, b_i), dim=4,
            n=cfg.fisher_n, steps=cfg.sample_steps, t_min=cfg.t_min, grid=cfg.grid,
            parts={k: (models[k], exact_models[k]) for k in ("p1", "p2", bname)})
        parts = {k: {"kl_along_composition": v, "kl_along_own_chain": own[k]}
                 for k, v in budget["parts"].items()}
        budget_secs = time.perf_counter() - t0 + own_secs / 2
        t0 = time.perf_counter()
        x = jax.block_until_ready(sample(
            jax.random.fold_in(ks, b_i), model, sch, (cfg.n_samples, 4), method=cfg.method,
            steps=cfg.sample_steps, grid=cfg.grid, t_min=cfg.t_min, denoise_final=False))
        secs = time.perf_counter() - t0
        samples[bname] = np.asarray(x)
        kb, kj = jax.random.split(jax.random.fold_in(kv, b_i))
        rep_b = projective(x, [laws["p1"], laws["p2"]], blocks, key=kb, alpha=ALPHA,
                           background=laws["background"], two_sample_n=cfg.two_sample_n,
                           num_permutations=cfg.num_permutations)
        rep_j = projective(x, [exact], [np.arange(4)], key=kj, alpha=ALPHA,
                           two_sample_n=cfg.two_sample_n, num_permutations=cfg.num_permutations)
        # the events' frequencies in the sample: binary KL against the path-KL budgets
        norms = np.stack([np.linalg.norm(np.asarray(x)[:, np.asarray(b)], axis=1)
                          for b in blocks], 1)
        hits = [int(np.sum(norms[:, i] <= r0)) for i in range(len(blocks))] + [
            int(np.sum(norms.min(1) <= r0))]
        events = [{"name": nm, "p_exact": p, "hits": h, "n": int(x.shape[0])}
                  for nm, p, h in zip(ev_names, ev_exact, hits)]
        for ev in events:  # reported in the metrics and the reasons (decide() derives its own)
            for tag, rev in (("kl_lower_bound", False), ("kl_reverse_lower_bound", True)):
                ev[tag] = event_kl_bound(ev["p_exact"], ev["hits"], ev["n"],
                                         floors.get("max_ks_D", 0.0), reverse=rev)[0]
        observed, material, decisive = decide([rep_b, rep_j], budget["tv"], floors,
                                              events=events, kl_budget=budget["kl_upper"],
                                              kl_budget_reverse=budget["kl_reverse_upper"])
        label = "empty" if bname == "background" else "Bayes (p_u)"
        radii = records_block_means(x, blocks)
        records.append({
            "name": f"learned_vector_{'empty' if bname == 'background' else 'bayes'}",
            "title": f"learned 4-D ring models composed over the {label} background vs the exact "
                     "composition",
            "expected": expected, "observed": observed,
            "metrics": {"projective": rep_b.to_dict(), "joint_vs_exact": rep_j.to_dict(),
                        "material_rejections": material, "decisive_rejections": decisive,
                        "budget": budget, "budget_parts": parts,
                        "budget_seconds": round(budget_secs, 2),
                        "single_model_control_effects": control, "fisher": fisher,
                        "training": info, "sample_seconds": round(secs, 2),
                        "block_mean_norms": radii, "radius_events": events},
            "reasons": [
                ("theory: (p_b, p_1, p_2) is FC on blocks {0,1}, {2,3}: the composition is the "
                 "product of the two rings (Theorem 5.3); over p_u (Bayes) FC fails"),
                ("decision rule: success iff neither the block-wise projective test nor the "
                 "joint test against cj.composed_distribution has a material rejection (alpha = "
                 f"{ALPHA}, Bonferroni, the zoo's floors, effect lower bound above its floor); "
                 "failure iff, with a material rejection, a KS or MMD effect exceeds its floor "
                 "plus what the learned models' score error can cause (the total-variation "
                 "budget from Girsanov's theorem along the exact composition's noised path), or "
                 "a ring-collapse event's binary KL exceeds the path-KL budget of its direction "
                 "(exact || learned along the exact chain, learned || exact along the learned "
                 "one); else "
                 "inconclusive"),
                "material rejections: " + ("; ".join(material) or "none"),
                "decisive (beyond floor + TV budget, or event binary KL beyond the KL budget): "
                + ("; ".join(decisive) or "none"),
                "ring-collapse events (learned fraction vs exact C[p] probability; binary-KL "
                "lower bounds kl(P_X || P_L) vs the path budget KL(exact || learned) "
                f"{budget['kl_upper']:.3g} and kl(P_L || P_X) vs KL(learned || exact) "
                f"{budget['kl_reverse_upper']:.3g}): " + ", ".join(
                    f"{ev['name']}: {ev['hits']}/{ev['n']} vs {ev['p_exact']:.3g}, kl >= "
                    f"{ev['kl_lower_bound']:.3g} / {ev['kl_reverse_lower_bound']:.3g}"
                    for ev in events),
                f"TV budget {budget['tv']:.3g}, the smaller of the two directions' (path KL of "
                f"the learned vs the exact composition {budget['kl']:.3g} ± {budget['kl_se']:.2g}"
                f" along the exact chain, {budget['kl_reverse']:.3g} ± "
                f"{budget['kl_reverse_se']:.2g} along the learned one); path KL of each learned "
                "model along the exact composition's chain / along its own chain: " + ", ".join(
                    f"{k} {v['kl_along_composition']:.3g} / {v['kl_along_own_chain']:.3g}"
                    for k, v in parts.items()),
                "single-model control (each learned conditional sampled alone vs its exact law, "
                "largest effect): " + ", ".join(f"{k}={v:.3g}" for k, v in control.items()),
                "learned-model Fisher divergence on its own law (mean over t, ± se): " + ", ".join(
                    f"{k}: {v['mean']:.3g}±{v['mean_se']:.2g}" for k, v in fisher.items()),
                "mean ring radius per block (exact composition: about "
                f"{cfg.radius:.2f}): " + ", ".join(f"{v:.3f}" for v in radii),
            ],
        })
    return {"config": dataclasses.asdict(cfg), "training": info, "fisher": fisher,
            "records": records, "samples": samples, "models": models}


def records_block_means(x: Any, blocks) -> list[float]:
    """Mean Euclidean norm of the samples on each block, ``(len(blocks),)``."""
    x = np.asarray(x)
    return [float(np.mean(np.linalg.norm(x[:, np.asarray(b)], axis=1))) for b in blocks]
