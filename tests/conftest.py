"""Test configuration.

* Rank and dtype promotion are strict in every test (implicit broadcasting of ranks and implicit
  dtype promotion raise), so the library is tested for shape/dtype hygiene.
* Each test gets a fixed PRNG key derived from its node id (stable across runs, distinct between
  tests): the ``key`` fixture.
* ``x64`` tests run only when ``JAX_ENABLE_X64=1`` (``make test`` runs them in a second process,
  since x64 is global state); ``slow`` tests are deselected by ``make test``.
"""

from __future__ import annotations

import os
import zlib

import jax
import pytest

X64 = bool(jax.config.read("jax_enable_x64"))


def pytest_collection_modifyitems(config, items):
    skip_x64 = pytest.mark.skip(reason="float64 test: run with JAX_ENABLE_X64=1 (make test does)")
    # `slow` tests run only when selected explicitly with -m (make test-slow); a bare `pytest`
    # therefore runs the default suite.
    skip_slow = pytest.mark.skip(reason="slow test: select with -m slow (make test-slow)")
    run_slow = "slow" in (config.getoption("-m") or "")
    for item in items:
        if "x64" in item.keywords and not X64:
            item.add_marker(skip_x64)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _strict_promotion():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def key(request) -> jax.Array:
    """A fixed key, distinct per test (crc32 of the test's node id)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def float_dtype():
    return jax.numpy.float64 if X64 else jax.numpy.float32


def pytest_report_header(config):
    return f"jax {jax.__version__}, x64={X64}, devices={jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}"
