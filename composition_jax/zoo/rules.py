r"""The decision rule of the scenario zoo: when a sampler's output counts as a projective
composition (Definition 4.1 of Bradley et al. 2025), and the observed verdict of a scenario.

**Material rejections: a minimum-effect test.** A sampler's output is *projective* when no test
of :func:`~composition_jax.verify.projective` at family-wise level :data:`PROCEDURE_ALPHA`
(Bonferroni over its ``m`` tests, each at ``gamma = PROCEDURE_ALPHA / m``) rejects
*materially*. Where the exact ``t = 0`` composition ``C[p]`` has a closed form
(:func:`~composition_jax.composed_distribution`) and Theorem 5.3 (or its feature-space form)
says the samplers reach it, the JOINT law is tested too, with
:func:`~composition_jax.verify.same_law` (Holm at :data:`PROCEDURE_ALPHA` over MMD, energy
distance, the exact mean chi-square and the Wald covariance test, ``c = 4`` components), and its
material rejections count like the block tests'. A rejection is material when, besides the test
rejecting, the LOWER confidence bound on the true effect ``theta`` exceeds the effect's floor
``f`` (:func:`is_material`):

``theta_lo = theta_hat - z_{1 - gamma} se(theta_hat) > f``

at the test's own level ``gamma`` (``alpha / c`` for the joint components), with
``se(theta_hat)`` estimated from the data (delta method: the Mahalanobis mean error and the
relative Frobenius covariance error; Hoeffding's first-order term plus the permutation variance:
MMD and energy) and, for the Kolmogorov distance, the exact distribution-free bound
``theta_lo = D_n - sqrt(log(2 k / gamma) / (2 n))`` (Dvoretzky--Kiefer--Wolfowitz with Massart's
constant, ``k`` coordinates): :func:`~composition_jax.verify.stats.effect_lower_bound`. This is
the floor-shifted test of ``H0': theta <= f`` (a minimum-effect test); since the law test's
null ``theta = 0`` lies inside ``H0'``, requiring both is an intersection-union test of level
``gamma`` for ``H0'``, and by Bonferroni over the tests **the probability that a sampler whose
true effects are all at most their floors is declared non-projective is at most
``PROCEDURE_ALPHA`` per procedure** (normal approximation of ``se`` apart from the KS bound).
This covers biased samplers, not only exact ones; ``z`` is not a tuning constant but the quantile
of the test's own Bonferroni level (``z ~ 2.9-3.5`` for the zoo's 3-20 tests at level 0.005).
Measured in ``tests/test_calibration.py``: with every variance 6 % too large (the covariance
effect exactly at its floor) the rule declares a material rejection in 17 of 500 data sets
(``n = 2000``, both procedures at level 0.05: bound 10 %), the former rule (effect itself above
the floor) in 333.

**Floors: tight, and justified by the exact discretization bias at the run's step count.** The
floors make the verdict about the *law* and not about ``n``: at large ``n`` the tests resolve the
samplers' own bias, which is not what the theory is about. Each floor is the largest bias of the
zoo's samplers on the affine-score (Gaussian) Factorized-Conditionals cases of the zoo --
``weights_w1``, ``disjoint_masks``, ``feature_rotation``, ``feature_block_diagonal``,
``eq17_empty_background`` -- at the run's step count (``t_min = 1e-4``, log-SNR grid, VP
schedule), computed EXACTLY with :func:`~composition_jax.verify.sampler_law` for
``euler_maruyama`` and ``ode_heun`` (the sampler's output law is Gaussian; the effect is
evaluated between that law and the exact ``C[p]``: Kolmogorov distance of 1-D marginals,
Mahalanobis mean error, relative Frobenius covariance error, closed-form Gaussian-kernel
``MMD^2`` at the median bandwidth, energy coefficient by Monte Carlo with common random numbers),
times a factor :data:`FLOOR_FACTOR` = 2, rounded up. ``predictor_corrector`` (its step is tuned
on a pilot, so it has no affine-exact law) was measured by Monte Carlo (``n = 1e5``, standard
error 0.45 %): variance error 2.7 % (``weights_w1``) and 4.2 % (``feature_block_diagonal``,
``z_1``) at 200 steps, 2.96 % and 4.1 % at 1000 steps -- its Langevin corrector's bias, which
the step count does not shrink. Its floor is therefore only 1.45 times its bias; the
rule's guarantee needs only that the bias be at most the floor. :func:`floors_for` gives the
floors of a run and of the sampler judged (200 steps: quick and minimal modes, and every run with
200-999 steps; 1000 steps: full mode), :func:`floors` the table.

==========================  =======  =======  ===========================================
effect (name)               200      1000     largest bias at 200 / 1000 steps
==========================  =======  =======  ===========================================
``max_ks_D``                0.011    0.011    0.0054 / 0.0053 (weights_w1, rotation; ode_heun)
``mahalanobis_mean_error``  0.04     0.04     0.0190 / 0.0186 (rotation joint; ode_heun)
``relative_cov_error``      0.06     0.06     0.0416 / 0.0413 (block_diagonal z_1,
                                              predictor_corrector, Monte Carlo)
  euler_maruyama            0.06     0.01     0.0281 / 0.0049 (eq17 / block_diagonal)
  ode_heun                  0.06     0.01     0.0040 / 0.0040 (eq17)
``mmd2_unbiased``           1e-4     1e-4     4.4e-5 / 4.2e-5 (2-D cases, ode_heun)
``energy_coefficient``      1.2e-4   1.2e-4   6e-5 (disjoint_masks joint, ode_heun)
``sliced_w2``               0.04     0.04     (not used by the zoo; the mean-error floor)
==========================  =======  =======  ===========================================

The ``ode_heun`` mean bias (~0.013-0.019 sd) does not shrink with the step count: it is the
prior mismatch at ``t = 1`` (the VP ``alpha(1) = e^{-5.05}`` is not 0), carried deterministically
by the ODE; the Euler--Maruyama variance bias is first order in the step (2.8 % at 200 steps,
0.5 % at 1000), hence the tighter covariance floor of Euler--Maruyama and Heun output in the
full mode (:data:`SAMPLER_FLOORS`). **Power.** A true effect is flagged once it exceeds its
floor by about ``(z_{1-gamma} + z_{power}) se``: a 10 % variance error in a 1-D block
(``se ~ 1.1 sqrt(2 / n)``) of Euler--Maruyama or Heun output at the full mode's ``n = 10000``
(lower bound ``0.1 - 3.1 x 0.016 ~ 0.05 > 0.01``), which ``tests/test_calibration.py`` checks;
under the floor 0.06 (the 200-step floor, and the predictor-corrector's at 1000 steps) only
from ``n ~ 30000``. Every failure the theory
predicts is far above the floors at the minimal size (Bayes background, eq. (17): mean error
``> 10`` sd; overlapping masks: ``0.5`` sd; weights ``w != 1``: ``> 0.5`` sd; sheared feature
space, Section 7: ``~0.25`` sd, lower bound ``~0.15`` at ``n = 1000``).

**Verdict.** A scenario's observed verdict is ``"success"`` iff the output of every standard
sampler (:data:`STANDARD_SAMPLERS`) has no material rejection; scenario-specific criteria (e.g.
exact-count fractions for length generalization, the conditional blocks only for
``eq18_clutter_bayes``) are stated by the scenario. Nothing is hard-coded: the verdict is
computed from the samples. The family-wise false-positive rate on exact samples is measured in
``tests/test_calibration.py`` (500 null data sets of the disjoint-masks composition, n = 2000, at
level 0.05): ``projective()`` 24 / 500 = 4.8 %, ``same_law()`` 20 / 500 = 4.0 %, the rule's
material rejections 0 / 500 (bound: 10 %); with every variance 6 % too large (a biased sampler
at the covariance floor) 17 / 500 = 3.4 %, where the former rule gave 333 / 500
(:data:`MEASURED_FPR`). Each sampler's output is judged at family-wise
level :data:`ALPHA` (the two procedures at ``ALPHA / 2`` each), so a success scenario decided by
three samplers whose biases are within the floors is falsely observed as a failure with
probability at most 3 % (union bound). The former rule asked only ``theta_hat > f``: a floor
then absorbed a bias only once ``n >~ 2 (z / f)^2``, and at the minimal size (``n = 1000``)
``feature_block_diagonal``'s Euler--Maruyama output was rejected with relative covariance error
0.16 (``p = 3.6e-4``, a ~3-sd deviation on top of its 2.8 % bias), whose lower bound at the
test's level is below the floor.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ALPHA",
    "EFFECT_FLOORS",
    "FLOORS_BY_STEPS",
    "FLOOR_BIAS",
    "FLOOR_BIAS_1000",
    "FLOOR_BIAS_BY_STEPS",
    "FLOOR_FACTOR",
    "MEASURED_FPR",
    "PROCEDURE_ALPHA",
    "SAMPLER_FLOORS",
    "SAMPLER_FLOOR_BIAS",
    "STANDARD_SAMPLERS",
    "effect_lower",
    "floors",
    "floors_for",
    "is_material",
    "material_joint",
    "material_rejections",
    "negligible_rejections",
    "summarize",
    "verdict",
]

ALPHA = 0.01
"""Family-wise level of the judgement of one sampler's output: its block tests
(:func:`~composition_jax.verify.projective`) and its joint-law test
(:func:`~composition_jax.verify.same_law`) each run at :data:`PROCEDURE_ALPHA` = ``ALPHA / 2``
(Bonferroni over the two procedures)."""

PROCEDURE_ALPHA = ALPHA / 2
"""Family-wise level of each of the two procedures that judge one sampler's output."""

MEASURED_FPR = {"trials": 500, "exact": 0, "at_floor": 17, "at_floor_former_rule": 333}
"""Material rejections of the rule (either procedure) counted by ``tests/test_calibration.py``
in 500 data sets of the disjoint-masks composition (n = 2000, each procedure at level 0.05),
which checks these counts: on exact samples; with every variance 6 % too large (the covariance
effect at its floor: bound 10 %); the same data under the former rule (effect size itself above
the floor)."""

FLOOR_FACTOR = 2.0
"""Each floor is at most this factor times the largest exact discretization bias it absorbs."""

FLOOR_BIAS = {
    "max_ks_D": (0.0054, "weights_w1 / feature_rotation, ode_heun, 200 steps"),
    "mahalanobis_mean_error": (0.0190, "feature_rotation (joint law), ode_heun, 200 steps"),
    "relative_cov_error": (0.0416, ("feature_block_diagonal z_1, predictor_corrector (Monte "
                                    "Carlo, n = 1e5, +- 0.0045)")),
    "mmd2_unbiased": (4e-5, "2-D Gaussian cases, ode_heun, 200 steps"),
    "energy_coefficient": (6e-5, "disjoint_masks (joint law), ode_heun, 200 steps"),
    "sliced_w2": (0.0190, "not used by the zoo; the mean-error bias in sd units"),
}
"""The largest exact bias of the zoo's samplers on its affine-score Factorized-Conditionals
cases, per effect (computed with :func:`~composition_jax.verify.sampler_law`; see the module
docstring and ``tests/test_calibration.py``, which recomputes it)."""

EFFECT_FLOORS = {
    "max_ks_D": 0.011,
    "mahalanobis_mean_error": 0.04,
    "relative_cov_error": 0.06,
    "mmd2_unbiased": 1e-4,
    "energy_coefficient": 1.2e-4,
    "sliced_w2": 0.04,
}
"""The floors of runs with 200 to 999 steps (the quick and minimal modes): ``FLOOR_FACTOR``
times :data:`FLOOR_BIAS`, rounded up; a rejection is material when the lower confidence bound
on its effect exceeds its floor (:func:`is_material`)."""

FLOOR_BIAS_1000 = {
    "max_ks_D": (0.00525, "feature_rotation / disjoint_masks, ode_heun"),
    "mahalanobis_mean_error": (0.0186, "feature_rotation (joint law), ode_heun"),
    "relative_cov_error": (0.0413, ("feature_block_diagonal z_1, predictor_corrector (Monte "
                                    "Carlo, n = 1e5, +- 0.0045)")),
    "mmd2_unbiased": (4.2e-5, "2-D Gaussian cases, ode_heun"),
    "energy_coefficient": (6e-5, "as at 200 steps: the ode_heun mean bias, unchanged"),
    "sliced_w2": (0.0186, "not used by the zoo; the mean-error bias in sd units"),
}
"""As :data:`FLOOR_BIAS`, at 1000 steps (the full mode), over all standard samplers."""

FLOOR_BIAS_BY_STEPS = {200: FLOOR_BIAS, 1000: FLOOR_BIAS_1000}
"""The largest exact bias per effect over the standard samplers, by the step count of the
run."""

FLOORS_BY_STEPS = {
    200: EFFECT_FLOORS,
    1000: dict(EFFECT_FLOORS),
}
"""The floors by step count, valid for every standard sampler (:func:`floors_for` picks the
row of a run). At 1000 steps they equal the 200-step floors: the two biases that set them do not
shrink with the step (the ODE's prior mismatch; the predictor-corrector's 3-4 % variance bias,
its Langevin corrector's own)."""

SAMPLER_FLOOR_BIAS = {
    200: {"euler_maruyama": {"relative_cov_error": (0.0281, "eq17_empty_background")},
          "ode_heun": {"relative_cov_error": (0.0040, "eq17_empty_background")}},
    1000: {"euler_maruyama": {"relative_cov_error": (0.0049, "feature_block_diagonal, 1-D")},
           "ode_heun": {"relative_cov_error": (0.0040, "eq17_empty_background")}},
}
"""The exact covariance bias of ``euler_maruyama`` (first order in the step: 2.8 % at 200
steps, 0.5 % at 1000) and ``ode_heun`` (:func:`~composition_jax.verify.sampler_law`, every
affine case of the zoo), below the predictor-corrector's, which sets the rows of
:data:`FLOOR_BIAS_BY_STEPS`."""

SAMPLER_FLOORS = {
    1000: {"euler_maruyama": {**EFFECT_FLOORS, "relative_cov_error": 0.01},
           "ode_heun": {**EFFECT_FLOORS, "relative_cov_error": 0.01}},
}
"""Floors of one sampler where its own bias is smaller than the row's (by step count, then
method): a floor absorbs the bias of the sampler it judges, so at 1000 steps a covariance error
of Euler--Maruyama or Heun output counts from 1 %, twice their exact bias."""


def floors_for(steps: int, method: str | None = None) -> dict:
    """The floors of a run with ``steps`` reverse steps: those of the largest step count of
    :data:`FLOORS_BY_STEPS` at most ``steps`` (the biases they absorb do not grow with the step
    count: first order in the step for Euler--Maruyama, constant for the ODE's prior mismatch
    and the predictor-corrector's Langevin bias); below 200 steps the 200-step floors, which
    then do not absorb the larger bias. ``method``: the sampler whose output is judged; its own
    floors (:data:`SAMPLER_FLOORS`) where they are tighter, else the row's (valid for every
    standard sampler; also for other samplers, e.g. MCMC, and exact samples)."""
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    best = min(FLOORS_BY_STEPS)
    for k in sorted(FLOORS_BY_STEPS):
        if int(steps) >= k:
            best = k
    own = SAMPLER_FLOORS.get(best, {}).get(method)
    return dict(FLOORS_BY_STEPS[best] if own is None else own)


def floors(steps: int | None = None, method: str | None = None) -> list[dict]:
    """The decision rule's floors with their justification: one row per effect name with the
    floor, the largest exact discretization bias it absorbs, where that bias occurs, and the
    ratio floor / bias (at most :data:`FLOOR_FACTOR` up to rounding). ``steps``: one step count
    of :data:`FLOORS_BY_STEPS` (default 200, the quick and minimal modes); ``method``: a sampler
    with floors of its own (:data:`SAMPLER_FLOORS`), else the row valid for every sampler."""
    steps = min(FLOORS_BY_STEPS) if steps is None else int(steps)
    if steps not in FLOORS_BY_STEPS:
        raise ValueError(f"steps must be one of {sorted(FLOORS_BY_STEPS)}, got {steps}")
    fl = floors_for(steps, method)
    bias = dict(FLOOR_BIAS_BY_STEPS[steps])
    if method in SAMPLER_FLOOR_BIAS.get(steps, {}):
        bias.update({k: (v[0], f"{method}: {v[1]}")
                     for k, v in SAMPLER_FLOOR_BIAS[steps][method].items()})
    return [{"effect": k, "floor": v, "bias": bias[k][0], "where": bias[k][1],
             "ratio": round(v / bias[k][0], 2), "steps": steps} for k, v in fl.items()]


def effect_lower(test: Any) -> float:
    """The lower confidence bound on a test's true effect (``effect_lower`` of a
    :class:`~composition_jax.verify.TestOutcome` or a ``same_law`` component); an outcome
    built without one (``nan``) is judged by its effect size."""
    lo = float(getattr(test, "effect_lower", float("nan")))
    return lo if math.isfinite(lo) else float(test.effect_size)


def is_material(test: Any, floors: dict | None = None) -> bool:
    """A rejection is material when the test rejects AND the lower confidence bound on its true
    effect exceeds the effect's floor (a name without a floor has floor 0)."""
    floors = EFFECT_FLOORS if floors is None else floors
    return bool(test.rejected) and effect_lower(test) > floors.get(test.effect_name, 0.0)


def _describe(test: Any, floors: dict) -> str:
    return (f"{test.name} p={test.p_value:.2g}, {test.effect_name}={test.effect_size:.3g} "
            f"(lower bound {effect_lower(test):.3g} > floor {floors.get(test.effect_name, 0.0):g})")


def material_joint(report: Any, floors: dict | None = None) -> list[str]:
    """Material rejections of a :class:`~composition_jax.verify.same_law.SameLawReport` (joint
    law against the exact ``C[p]``), see :func:`is_material`."""
    floors = EFFECT_FLOORS if floors is None else floors
    return [f"joint law: {_describe(c, floors)}" for c in report.components
            if is_material(c, floors)]


STANDARD_SAMPLERS = ("euler_maruyama", "ode_heun", "predictor_corrector")
"""The reverse-diffusion samplers whose outputs decide a scenario's verdict."""


def material_rejections(report: Any, floors: dict | None = None) -> list[str]:
    """Material rejections of a :class:`~composition_jax.verify.ProjectiveReport` (see
    :func:`is_material`).

    Args:
      report: the result of :func:`~composition_jax.verify.projective`.
      floors: effect-size floors by ``effect_name`` (default :data:`EFFECT_FLOORS`, the 200-step
        floors; :func:`floors_for` gives those of a step count; a name not listed has floor 0).

    Returns:
      One line per material rejection (block, test, p-value, effect size and its lower bound);
      empty when the sampled law is projective under this rule.
    """
    floors = EFFECT_FLOORS if floors is None else floors
    return [f"{b.name} {list(b.indices)}: {_describe(t, floors)}"
            for b in report.blocks for t in b.tests if is_material(t, floors)]


def negligible_rejections(report: Any, floors: dict | None = None) -> list[str]:
    """Rejections that are not material (reported, not counted): the law differs, but the
    difference is not resolved above its floor."""
    floors = EFFECT_FLOORS if floors is None else floors
    return [f"{b.name}: {t.name} {t.effect_name}={t.effect_size:.3g} (lower bound "
            f"{effect_lower(t):.3g})"
            for b in report.blocks for t in b.tests if t.rejected and not is_material(t, floors)]


def summarize(report: Any, material: list[str], floors: dict | None = None) -> dict:
    """JSON-serializable summary of a projective report under the decision rule: whether it
    passed outright, the counts of material and negligible rejections (under ``floors``,
    default :data:`EFFECT_FLOORS`), the worst effect size and the worst lower bound per effect
    name, and the smallest p-value."""
    worst: dict[str, float] = {}
    worst_lo: dict[str, float] = {}
    for b in report.blocks:
        for t in b.tests:
            worst[t.effect_name] = max(worst.get(t.effect_name, 0.0), round(t.effect_size, 4))
            worst_lo[t.effect_name] = max(worst_lo.get(t.effect_name, -math.inf),
                                          round(effect_lower(t), 4))
    return {
        "projective_passed": bool(report.passed),
        "material_rejections": len(material),
        "negligible_rejections": len(negligible_rejections(report, floors)),
        "num_tests": report.num_tests,
        "worst_effects": worst,
        "worst_effect_lower_bounds": worst_lo,
        "min_p": float(min(t.p_value for b in report.blocks for t in b.tests)),
    }


def verdict(per_sampler: dict, samplers: tuple[str, ...] = STANDARD_SAMPLERS
            ) -> tuple[str, list[str]]:
    """The observed verdict from the material rejections of each sampler's output.

    Args:
      per_sampler: ``{method: {"_material": [material rejections], ...}}``.
      samplers: the methods that decide (default :data:`STANDARD_SAMPLERS`).

    Returns:
      ``("success" | "failure", reasons)``: success iff no deciding sampler has a material
      rejection; one reason line per sampler.
    """
    reasons = []
    ok = True
    for m in samplers:
        mat = per_sampler[m]["_material"]
        if mat:
            ok = False
            reasons.append(f"{m}: not projective ({len(mat)} material rejections, e.g. {mat[0]})")
        else:
            reasons.append(f"{m}: projective (no material rejection at alpha={ALPHA})")
    return ("success" if ok else "failure"), reasons
