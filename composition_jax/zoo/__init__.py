r"""The scenario zoo: every synthetic finding of Bradley et al. (2025), decided by statistics.

Each scenario builds a tuple ``(background, conditionals, weights, blocks)`` from exact
distributions, declares what the theory predicts (``"success"``: the sampled law is a projective
composition, Definition 4.1; ``"failure"``: it is not) and why, then

1. decides Factorized Conditionals exactly (:func:`~composition_jax.verify.factorized_conditionals`,
   Definition 5.2),
2. computes the success heuristic (:func:`~composition_jax.verify.mean_difference_cosines`,
   Section 8, from the exact means),
3. computes the composition gap ``C[p^t]`` vs ``N_t[C[p]]`` (Section 7) where ``C[p]`` has a
   closed form,
4. samples the composition with several reverse-diffusion samplers (``euler_maruyama``,
   ``ode_heun``, ``predictor_corrector``; annealed MALA/HMC where they are the point), and
5. tests the samples with :func:`~composition_jax.verify.projective` under the decision rule of
   :mod:`composition_jax.zoo.rules`.

Families (one module each): :mod:`~composition_jax.zoo.eq17` (eq. (17): empty vs Bayes
background), :mod:`~composition_jax.zoo.eq18` (eq. (18): cluttered scenes),
:mod:`~composition_jax.zoo.masks` (overlapping vs disjoint 2-D masks),
:mod:`~composition_jax.zoo.feature` (feature-space FC: rotation, ``diag(1, 4)``, shear, and the
exact ``t = 0`` check), :mod:`~composition_jax.zoo.weights` (weights ``w != 1``),
:mod:`~composition_jax.zoo.length` (length generalization).

**Adding a scenario** takes one new module and one line here that imports it::

    # composition_jax/zoo/my_family.py
    from .registry import scenario
    from ._common import Outcome

    @scenario("my_case", expected="success", title="...", description="...")
    def my_case(cfg, key):
        ...
        return Outcome(observed, metrics, reasons, plots)

The registration order (the order of the imports below) is the order of reports. A scenario's
random key depends only on ``cfg.seed`` and its name (:func:`scenario_key`), so adding or
reordering scenarios changes no other scenario's result.

Example:
  >>> from composition_jax import zoo
  >>> r = zoo.run_scenario("weights_w1", zoo.Config.for_mode("minimal"))  # doctest: +SKIP
  >>> r.expected, r.observed  # doctest: +SKIP
  ('success', 'success')
"""

from ._common import Config, Outcome, ScenarioResult
from .registry import SCENARIOS, Scenario, run_all, run_scenario, scenario, scenario_key
from .rules import (
    ALPHA,
    EFFECT_FLOORS,
    STANDARD_SAMPLERS,
    material_rejections,
    negligible_rejections,
    summarize,
    verdict,
)

# The scenario families, in report order: importing a module registers its scenarios.
# isort: off
from . import eq17  # noqa: F401  (empty vs Bayes background, eq. 17)
from . import eq18  # noqa: F401  (cluttered scenes, eq. 18)
from . import masks  # noqa: F401  (overlapping vs disjoint 2-D masks)
from . import feature  # noqa: F401  (feature-space FC, Sections 6-7)
from . import weights  # noqa: F401  (weights w != 1)
from . import length  # noqa: F401  (length generalization)
from . import feature_nonlinear  # noqa: F401  (nonlinear feature map, t = 0, MCMC)
from . import smc  # noqa: F401  (SMC, PF-ODE likelihoods, score locality)
# isort: on

__all__ = [
    "ALPHA",
    "EFFECT_FLOORS",
    "SCENARIOS",
    "STANDARD_SAMPLERS",
    "Config",
    "Outcome",
    "Scenario",
    "ScenarioResult",
    "material_rejections",
    "negligible_rejections",
    "run_all",
    "run_scenario",
    "scenario",
    "scenario_key",
    "summarize",
    "verdict",
]
