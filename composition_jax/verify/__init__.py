"""Verification of compositions: calibrated statistics, projective-composition tests, exact
Factorized-Conditionals decisions, the composition gap, the mean-difference heuristic and exact
sampler laws (Bradley et al. 2025)."""

from __future__ import annotations

from typing import Any

from . import stats
from .factorized import FCResult, factorized_conditionals
from .gap import GapResult, composition_gap
from .heuristics import mean_difference_cosines, sampler_disagreement
from .locality import LocalityReport, score_locality
from .projective import BlockReport, ProjectiveReport, TestOutcome, projective
from .same_law import SameLawReport, same_law
from .sampler_law import sampler_law  # the function (binds over the submodule attribute)

__all__ = [
    "BlockReport",
    "FCResult",
    "GapResult",
    "LocalityReport",
    "ProjectiveReport",
    "TestOutcome",
    "composition_gap",
    "factorized_conditionals",
    "mean_difference_cosines",
    "projective",
    "sampler_law",
    "score_locality",
    "SameLawReport",
    "same_law",
    "sampler_disagreement",
    "scenarios",
    "stats",
]


def __getattr__(name: str) -> Any:
    if name == "scenarios":  # the zoo sits above verify: import its compatibility module lazily
        import importlib

        return importlib.import_module(".scenarios", __name__)
    raise AttributeError(f"module 'composition_jax.verify' has no attribute {name!r}")
