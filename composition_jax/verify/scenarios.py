"""The paper's scenario zoo, under its former location.

The zoo lives in :mod:`composition_jax.zoo` (it sits above :mod:`composition_jax.verify`, which
it uses); this module re-exports its public names so that existing imports keep working.
"""

from ..zoo import (
    ALPHA,
    EFFECT_FLOORS,
    SCENARIOS,
    STANDARD_SAMPLERS,
    Config,
    Outcome,
    Scenario,
    ScenarioResult,
    material_rejections,
    negligible_rejections,
    run_all,
    run_scenario,
    scenario,
    scenario_key,
    summarize,
    verdict,
)

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
