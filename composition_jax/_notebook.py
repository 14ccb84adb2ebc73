"""Checks for the example notebooks (``notebooks/*.py``): a notebook states the numbers it
expects, and a check that does not hold either stops the run or warns, depending on who runs it.

* Under the test suite (``COMPOSITION_JAX_CHECKS=raise``, set by ``tests/test_notebooks.py``) a
  failed check raises :class:`CheckFailed`, so a notebook that no longer tells the truth fails
  its test.
* Everywhere else (Jupyter, ``python notebooks/NN_*.py``, ``make notebooks``) a failed check
  prints a visible ``CHECK FAILED`` line and the notebook goes on, so a reader who changes a
  size (``STEPS``, ``N``) sees what no longer holds instead of a stopped notebook.

Usage in a notebook::

    from composition_jax._notebook import Checks

    checks = Checks("quickstart")
    checks.that(report.passed, "the composed samples are projective")
    checks.close(law.mean, [1, 0, 1, 0], atol=0.05, what="sampler-law mean")
    checks.labelled(fig, "01_schedules")   # every plot axis has a title and x/y labels
    checks.done()                          # "quickstart: all checks passed" or a summary
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

__all__ = ["CHECKS_ENV", "CheckFailed", "Checks", "strict"]

CHECKS_ENV = "COMPOSITION_JAX_CHECKS"
"""Environment variable: ``raise`` makes a failed check raise; anything else warns."""


class CheckFailed(AssertionError):
    """A notebook's stated expectation does not hold (raised only in strict mode)."""


def strict() -> bool:
    """Whether failed checks raise (``$COMPOSITION_JAX_CHECKS == "raise"``)."""
    return os.environ.get(CHECKS_ENV, "").strip().lower() == "raise"


class Checks:
    """The checks of one notebook: each records its outcome; :meth:`done` prints the summary
    line (``"<name>: all checks passed"`` only when every check held)."""

    def __init__(self, name: str):
        self.name = name
        self.failed: list[str] = []
        self.count = 0

    def that(self, condition: Any, what: str) -> bool:
        """Check ``condition`` (anything ``bool`` accepts, e.g. a NumPy bool); ``what`` says
        what is expected, in words. Returns whether it held."""
        self.count += 1
        if bool(condition):
            return True
        message = f"{self.name}: {what}"
        if strict():
            raise CheckFailed(message)
        self.failed.append(what)
        print(f"CHECK FAILED ({self.name}): {what}", flush=True)
        print(f"CHECK FAILED ({self.name}): {what}", file=sys.stderr, flush=True)
        return False

    def close(self, actual: Any, desired: Any, *, rtol: float = 1e-7, atol: float = 0.0,
              what: str = "values") -> bool:
        """``|actual - desired| <= atol + rtol |desired|`` elementwise (as
        :func:`numpy.testing.assert_allclose`); the message shows both arrays."""
        try:
            np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol,
                                       atol=atol)
        except AssertionError as e:
            detail = " ".join(str(e).split())
            return self.that(False, f"{what}: {detail}")
        return self.that(True, what)

    def labelled(self, fig: Any, name: str) -> bool:
        """Every axes of ``fig`` that draws data has x and y labels (colorbars: one label)."""
        ok = True
        for ax in fig.axes:
            if hasattr(ax, "_colorbar"):
                ok &= self.that(bool(ax.get_ylabel() or ax.get_xlabel()),
                                f"figure {name}: colorbar without a label")
            else:
                ok &= self.that(bool(ax.get_xlabel() and ax.get_ylabel()),
                                f"figure {name}: unlabelled axes {ax.get_title()!r}")
        return ok

    def done(self) -> bool:
        """Print ``"<name>: all checks passed"`` or the list of failed checks; returns whether
        all held."""
        if not self.failed:
            print(f"{self.name}: all checks passed ({self.count} checks)")
            return True
        print(f"{self.name}: {len(self.failed)} of {self.count} checks FAILED:")
        for w in self.failed:
            print(f"  - {w}")
        return False
