r"""Weighted composition of one conditional over a Gaussian background (Bradley et al. 2025,
Definition 5.1 with weights; Section 3, weighted and guided compositions).

``p_b = N(0, 1)``, ``p_1 = N(2, 1/4)``: the tuple satisfies Factorized Conditionals, so the unit
weight is exact. For ``w != 1`` the ``t = 0`` target is the tilt ``p_b^(1-w) p_1^w``, which is not
projective, and the noised compositions are not a diffusion path, so reverse diffusion does not
even reach the tilt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..compose import compose, composed_distribution
from ..distributions import diffuse
from ..schedules import VPSchedule
from ..verify.sampler_law import sampler_law
from ._common import (
    Config,
    Outcome,
    check_projective,
    check_same_law,
    gap,
    gaussian,
    sample_model,
    strip,
)
from .registry import scenario
from .rules import STANDARD_SAMPLERS, floors_for, summarize, verdict

__all__: list[str] = []


def _run(cfg: Config, key: jax.Array, w: float) -> Outcome:
    sch = VPSchedule()
    pb, p1 = gaussian([0.0], [1.0]), gaussian([2.0], [0.25])
    weights = jnp.asarray([w], jnp.result_type(float))
    tilted = composed_distribution(pb, [p1], weights=weights)
    model = compose(diffuse(pb, sch), [diffuse(p1, sch)], weights=weights)
    per = {}
    for i, m in enumerate(STANDARD_SAMPLERS):
        ks, kv = jax.random.split(jax.random.fold_in(key, i))
        x = sample_model(cfg, ks, model, sch, 1, m)
        rep, mat = check_projective(cfg, kv, x, [p1], [[0]], method=m)
        _, mat_t = check_projective(cfg, jax.random.fold_in(kv, 1), x, [tilted], [[0]],
                                    method=m)
        # the joint law against the exact t = 0 composition (the tilt; p_1 itself at w = 1)
        joint, mat_j = check_same_law(cfg, jax.random.fold_in(kv, 2), x, tilted, method=m)
        per[m] = {**summarize(rep, mat, floors_for(cfg.steps, m)), "mean": float(x.mean()),
                  "var": float(x.var()),
                  "matches_tilted_target": not mat_t, "joint_law": joint,
                  "_material": mat + mat_j}
    lm, lc = sampler_law(model, sch, method="euler_maruyama", steps=cfg.steps, t_min=cfg.t_min,
                         grid=cfg.grid, dim=1, as_moments=True)
    law = {"mean": float(lm[0]), "var": float(lc[0, 0])}
    observed, reasons = verdict(per)
    tm, tv = float(tilted.mean[0]), float(tilted.cov[0, 0])
    reasons.insert(0, f"theory: weight w = {w:g} on an FC tuple; the t = 0 target is the tilt "
                      f"p_b^(1-w) p_1^w = N({tm:.3f}, {tv:.3f}), projective only at w = 1; "
                      "and reverse diffusion does not even reach the tilt for w != 1")
    reasons.append(f"euler_maruyama exact law (sampler_law): N({law['mean']:.3f}, "
                   f"{law['var']:.3f}); samples match the tilted t = 0 target: " + ", ".join(
                       f"{m}={per[m]['matches_tilted_target']}" for m in STANDARD_SAMPLERS))
    metrics = {"w": w, "tilted_target": {"mean": tm, "var": tv}, "sampler_law_em": law,
               "composition_gap": gap(pb, [p1], sch, cfg, key, weights=weights),
               "samplers": strip(per)}
    return Outcome(observed, metrics, reasons, {})


@scenario("weights_w1", expected="success", title="1-D weight w = 1",
          description="Unit weight on a Factorized-Conditionals tuple: exact, projective")
def weight_1(cfg: Config, key: jax.Array) -> Outcome:
    """Unit weight: exact -> success."""
    return _run(cfg, key, 1.0)


@scenario("weights_w2", expected="failure", title="1-D weight w = 2",
          description="Weight 2: the t = 0 target is a tilt, not projective, and reverse "
                      "diffusion misses even the tilt")
def weight_2(cfg: Config, key: jax.Array) -> Outcome:
    """Weight 2: not projective -> failure."""
    return _run(cfg, key, 2.0)


@scenario("weights_w4", expected="failure", title="1-D weight w = 4",
          description="Weight 4: the t = 0 target is a tilt, not projective, and reverse "
                      "diffusion misses even the tilt")
def weight_4(cfg: Config, key: jax.Array) -> Outcome:
    """Weight 4: not projective -> failure."""
    return _run(cfg, key, 4.0)
