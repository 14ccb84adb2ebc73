"""Verification of compositions: calibrated statistics, projective-composition tests, exact
Factorized-Conditionals decisions, the composition gap, the mean-difference heuristic and exact
sampler laws (Bradley et al. 2025)."""

from __future__ import annotations

from typing import Any

from . import stats
from .factorized import FCResult, factorized_conditionals
from .gap import GapResult, composition_gap
from .heuristics import mean_difference_cosines
from .projective import BlockReport, ProjectiveReport, TestOutcome, projective

__all__ = [
    "stats",
    "projective",
    "ProjectiveReport",
    "BlockReport",
    "TestOutcome",
    "factorized_conditionals",
    "FCResult",
    "composition_gap",
    "GapResult",
    "mean_difference_cosines",
    "sampler_law",
    "scenarios",
]


def __getattr__(name: str) -> Any:
    # ``sampler_law`` lives in ``sampler_law.py`` (written separately); import it lazily so that
    # ``import composition_jax.verify`` never depends on it.
    # Importing the submodule binds the *module* as ``verify.sampler_law``; rebind the function.
    if name == "sampler_law":
        import importlib

        mod = importlib.import_module(".sampler_law", __name__)
        fn = getattr(mod, "sampler_law", None)
        if fn is None:
            raise AttributeError("composition_jax.verify.sampler_law defines no sampler_law")
        globals()["sampler_law"] = fn
        return fn
    if name == "scenarios":  # the zoo sits above verify: import its compatibility module lazily
        import importlib

        return importlib.import_module(".scenarios", __name__)
    raise AttributeError(f"module 'composition_jax.verify' has no attribute {name!r}")
