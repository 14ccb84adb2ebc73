r"""2-D Gaussian experts whose masks overlap (a hybrid, Section 4 / Figure 7 left of Bradley et
al. 2025) or are disjoint (Factorized Conditionals, Theorem 5.3)."""

from __future__ import annotations

import jax
import numpy as np

from ..schedules import VPSchedule
from ._common import Config, Outcome, cosines, fc, gap, gaussian, strip, target_2d, two_d
from .registry import scenario
from .rules import verdict

__all__: list[str] = []


@scenario("overlapping_masks", expected="failure", title="2-D overlapping masks (hybrid)",
          description="Two experts both change coordinate 0 (masks {0} and {0,1}): not "
                      "Factorized Conditionals, the composition is a hybrid of the two")
def overlapping(cfg: Config, key: jax.Array) -> Outcome:
    """Overlapping masks: the composition is a hybrid -> failure."""
    bg = gaussian([0.0, 0.0], [4.0, 4.0])
    p1, p2 = gaussian([-2.0, 0.0], [1.0, 4.0]), gaussian([2.0, 0.0], [4.0, 1.0])
    masks = [[0], [0, 1]]
    k1, _, k3 = jax.random.split(key, 3)
    fc_, _ = fc(bg, [p1, p2], None)
    mean, cov = target_2d(bg, [p1, p2])
    per, plots, laws = two_d(cfg, k1, bg, [p1, p2], masks)
    observed, reasons = verdict(per)
    reasons.insert(0, "theory: both experts change coordinate 0 (masks {0} and {0,1} overlap), "
                      f"FC fails (exact check, blocks discovered: {fc_['reasons'][:1]}); C[p] = "
                      f"N({np.round(mean, 3).tolist()}, diag {np.round(np.diag(cov), 3).tolist()})"
                      ": its x0 marginal matches neither expert (-2 or +2): a hybrid")
    plots["target"] = (mean, cov)
    metrics = {"factorized_conditionals": fc_, "heuristic": cosines(bg, [p1, p2]),
               "target_mean": mean.tolist(), "target_cov": cov.tolist(),
               "composition_gap": gap(bg, [p1, p2], VPSchedule(), cfg, k3),
               "sampler_law": laws, "samplers": strip(per)}
    return Outcome(observed, metrics, reasons, plots)


@scenario("disjoint_masks", expected="success", title="2-D disjoint masks",
          description="Expert 1 changes only x0, expert 2 only x1: Factorized Conditionals "
                      "holds and every sampler reaches the projective composition")
def disjoint(cfg: Config, key: jax.Array) -> Outcome:
    """Disjoint masks: projective -> success."""
    bg = gaussian([0.0, 0.0], [4.0, 4.0])
    p1, p2 = gaussian([-2.0, 0.0], [1.0, 4.0]), gaussian([0.0, 2.0], [4.0, 1.0])
    k1, _, k3 = jax.random.split(key, 3)
    fc_, _ = fc(bg, [p1, p2], [[0], [1]])
    mean, cov = target_2d(bg, [p1, p2])
    per, plots, laws = two_d(cfg, k1, bg, [p1, p2], [[0], [1]])
    observed, reasons = verdict(per)
    reasons.insert(0, "theory: expert 1 changes only x0, expert 2 only x1: FC holds (exact "
                      f"check: {fc_['holds']}); C[p] = N({np.round(mean, 3).tolist()}, ...) is "
                      "the projective composition and every sampler reaches it")
    plots["target"] = (mean, cov)
    metrics = {"factorized_conditionals": fc_, "heuristic": cosines(bg, [p1, p2]),
               "target_mean": mean.tolist(),
               "composition_gap": gap(bg, [p1, p2], VPSchedule(), cfg, k3),
               "sampler_law": laws, "samplers": strip(per)}
    return Outcome(observed, metrics, reasons, plots)
