r"""The decision rule of the scenario zoo: when a sampler's output counts as a projective
composition (Definition 4.1 of Bradley et al. 2025), and the observed verdict of a scenario.

**Material rejections.** A sampler's output is *projective* when no test of
:func:`~composition_jax.verify.projective` at family-wise level :data:`ALPHA` (Bonferroni over all
its tests) rejects *materially*: a rejection counts only when its effect size also exceeds a
floor (:data:`EFFECT_FLOORS`): Kolmogorov distance ``D > 0.05``, Mahalanobis mean error ``> 0.1``
(a tenth of a standard deviation), relative covariance error
``|S - Sigma|_F / |Sigma|_F > 0.2``, unbiased ``MMD^2 > 0.01``, sliced ``W_2 > 0.1``.

The floors make the verdict about the *law* and not about ``n``: at large ``n`` the tests resolve
the samplers' discretization bias, which is not what the theory is about. They sit above the
discretization bias of the exactly Factorized-Conditionals cases (measured with
:func:`~composition_jax.verify.sampler_law` for Gaussians: ``< 0.03`` standard deviations) and
well below every failure the theory predicts (Bayes background, eq. (17): mean error ``> 10`` sd;
overlapping masks: ``0.5`` sd; weights ``w != 1``: ``> 0.5`` sd; sheared feature space, Section 7:
``~0.2`` sd).

**Verdict.** A scenario's observed verdict is ``"success"`` iff the output of every standard
sampler (:data:`STANDARD_SAMPLERS`) is projective; scenario-specific criteria (e.g. exact-count
fractions for length generalization) are stated by the scenario. Nothing is hard-coded: the
verdict is computed from the samples.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ALPHA",
    "EFFECT_FLOORS",
    "STANDARD_SAMPLERS",
    "material_rejections",
    "negligible_rejections",
    "summarize",
    "verdict",
]

ALPHA = 0.01
"""Family-wise level of every projective test (Bonferroni over the report's tests)."""

EFFECT_FLOORS = {
    "max_ks_D": 0.05,
    "mahalanobis_mean_error": 0.1,
    "relative_cov_error": 0.2,
    "mmd2_unbiased": 0.01,
    "sliced_w2": 0.1,
}
"""Smallest effect size (by the test's ``effect_name``) for which a rejection is material."""

STANDARD_SAMPLERS = ("euler_maruyama", "ode_heun", "predictor_corrector")
"""The reverse-diffusion samplers whose outputs decide a scenario's verdict."""


def material_rejections(report: Any, floors: dict | None = None) -> list[str]:
    """Rejections of a :class:`~composition_jax.verify.ProjectiveReport` whose effect size
    exceeds its floor.

    Args:
      report: the result of :func:`~composition_jax.verify.projective`.
      floors: effect-size floors by ``effect_name`` (default :data:`EFFECT_FLOORS`; a name not
        listed has floor 0, i.e. every rejection of it is material).

    Returns:
      One line per material rejection (block, test, p-value, effect size); empty when the
      sampled law is projective under this rule.
    """
    floors = EFFECT_FLOORS if floors is None else floors
    out = []
    for b in report.blocks:
        for t in b.tests:
            if t.rejected and t.effect_size > floors.get(t.effect_name, 0.0):
                out.append(f"{b.name} {list(b.indices)}: {t.name} p={t.p_value:.2g}, "
                           f"{t.effect_name}={t.effect_size:.3g}")
    return out


def negligible_rejections(report: Any, floors: dict | None = None) -> list[str]:
    """Rejections whose effect size is at or below its floor (reported, not counted)."""
    floors = EFFECT_FLOORS if floors is None else floors
    out = []
    for b in report.blocks:
        for t in b.tests:
            if t.rejected and t.effect_size <= floors.get(t.effect_name, 0.0):
                out.append(f"{b.name}: {t.name} {t.effect_name}={t.effect_size:.3g}")
    return out


def summarize(report: Any, material: list[str]) -> dict:
    """JSON-serializable summary of a projective report under the decision rule: whether it
    passed outright, the counts of material and negligible rejections, the worst effect size per
    effect name and the smallest p-value."""
    worst: dict[str, float] = {}
    for b in report.blocks:
        for t in b.tests:
            worst[t.effect_name] = max(worst.get(t.effect_name, 0.0), round(t.effect_size, 4))
    return {
        "projective_passed": bool(report.passed),
        "material_rejections": len(material),
        "negligible_rejections": len(negligible_rejections(report)),
        "num_tests": report.num_tests,
        "worst_effects": worst,
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
