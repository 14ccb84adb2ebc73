"""The scenario registry: names, declared outcomes, keys derived from names, runners.

A scenario is a function ``fn(cfg, key) -> Outcome`` registered with :func:`scenario`. Its random
key depends only on ``cfg.seed`` and its *name* (:func:`scenario_key`), so adding, removing or
reordering scenarios never changes another scenario's result.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax

from ._common import Config, Outcome, ScenarioResult

__all__ = ["SCENARIOS", "Scenario", "run_all", "run_scenario", "scenario", "scenario_key"]

_VERDICTS = ("success", "failure")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A registered scenario (callable like its function, returning a :class:`ScenarioResult`).

    Attributes:
      name: the registry name (used in reports and for the key).
      fn: ``fn(cfg, key) -> Outcome``.
      expected: the theory's prediction, ``"success"`` or ``"failure"``.
      title: a short label for reports.
      description: one line: the setting and why the theory predicts ``expected``.
    """

    name: str
    fn: Callable[[Config, jax.Array], Outcome]
    expected: str
    title: str
    description: str

    def __call__(self, cfg: Config, key: jax.Array) -> ScenarioResult:
        out = self.fn(cfg, key)
        if not isinstance(out, Outcome):
            raise TypeError(f"scenario {self.name!r} must return an Outcome, got "
                            f"{type(out).__name__}")
        if out.observed not in _VERDICTS + ("inconclusive",):
            raise ValueError(f"scenario {self.name!r} observed {out.observed!r}; expected one "
                             "of 'success', 'failure', 'inconclusive'")
        return ScenarioResult(self.name, self.title, self.expected, out.observed,
                              out.metrics, list(out.reasons), dict(out.plots or {}))


SCENARIOS: dict[str, Callable[[Config, jax.Array], ScenarioResult]] = {}
"""Every registered scenario by name, in registration order (the order of reports). Values are
:class:`Scenario` records; any callable ``(cfg, key) -> ScenarioResult`` may stand in."""


def scenario(name: str, *, expected: str, title: str, description: str
             ) -> Callable[[Callable[[Config, jax.Array], Outcome]], Scenario]:
    """Decorator registering ``fn(cfg, key) -> Outcome`` in :data:`SCENARIOS` under ``name``.

    Example (a new scenario is one module plus one import line that loads it)::

        from composition_jax.zoo import Outcome, scenario

        @scenario("my_case", expected="success", title="my case",
                  description="what it tests and why the theory predicts success")
        def my_case(cfg, key):
            ...
            return Outcome(observed, metrics, reasons, plots)

    Raises:
      ValueError: a name already registered, or ``expected`` not ``"success"``/``"failure"``.
    """
    if expected not in _VERDICTS:
        raise ValueError(f"expected must be 'success' or 'failure', got {expected!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def register(fn: Callable[[Config, jax.Array], Outcome]) -> Scenario:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is already registered")
        spec = Scenario(name, fn, expected, title, description)
        SCENARIOS[name] = spec
        return spec

    return register


def scenario_key(name: str, seed: int = 0) -> jax.Array:
    """The key of scenario ``name``: ``fold_in(key(seed), crc32(name) & 0x7fffffff)``."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _check_names(names: list[str]) -> None:
    for n in names:
        if n not in SCENARIOS:
            raise ValueError(f"unknown scenario {n!r}; valid: {sorted(SCENARIOS)}")


def run_scenario(name: str, cfg: Config | None = None) -> ScenarioResult:
    """Run one scenario with its key :func:`scenario_key` ``(name, cfg.seed)``.

    Raises:
      ValueError: an unknown name (the valid names are listed).
    """
    _check_names([name])
    cfg = Config() if cfg is None else cfg
    t0 = time.perf_counter()
    res = SCENARIOS[name](cfg, scenario_key(name, cfg.seed))
    res.seconds = time.perf_counter() - t0
    return res


def run_all(cfg: Config | None = None, names: list[str] | None = None,
            progress: Callable[[str], Any] | None = None) -> list[ScenarioResult]:
    """Run the zoo (or ``names``) in order; ``progress(name)`` is called after each."""
    names = list(SCENARIOS) if names is None else list(names)
    _check_names(names)
    out = []
    for n in names:
        out.append(run_scenario(n, cfg))
        if progress is not None:
            progress(n)
    return out
