"""Cost of ``cj.sample``'s exact-law check of compositions (``CompositionWarning``).

With every exponent of ``prod_j p_j^{e_j}`` non-negative (``compose`` with ``w_i >= 0`` and
``sum w <= 1``, e.g. ``k = 1``), Hoelder's inequality gives ``int prod p_j^{e_j} <= 1``: the law
exists and no product mixture may be built (at d = 256, K = 64 that cost the first call tens of
seconds). With a negative exponent the check still runs, up to a cost cap on
``components x d^3``."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import pytest

import composition_jax as cj
from composition_jax.samplers import driver

SCH = cj.VPSchedule()


def _mix(k, d, scale=3.0):
    means = scale * jnp.eye(d)[jnp.arange(k) % d] * (1.0 + (jnp.arange(k)[:, None] // d).astype(jnp.float32))
    return cj.diffuse(cj.GaussianMixture(jnp.full((k,), 1.0 / k), means,
                                         jnp.stack([jnp.eye(d)] * k), covariance="iso"), SCH)


def _count_law_builds(monkeypatch):
    from composition_jax import _compose_exact

    calls = []
    real = _compose_exact.composed_distribution
    monkeypatch.setattr(_compose_exact, "composed_distribution",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("weights", [None, [0.5, 0.5], [0.2, 0.3]],
                         ids=["k1", "convex", "sub-convex"])
def test_nonnegative_exponents_build_no_law(monkeypatch, weights):
    calls = _count_law_builds(monkeypatch)
    bg, c1, c2 = _mix(4, 3), _mix(6, 3, 2.0), _mix(5, 3, 1.0)
    model = (cj.compose(bg, [c1]) if weights is None
             else cj.compose(bg, [c1, c2], weights=jnp.asarray(weights)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.CompositionWarning)
        driver.warn_if_no_law(model)
    assert calls == []
    assert driver._law_inputs(*driver._law_tree(model)) is None


def test_negative_exponent_still_checked(monkeypatch):
    """``compose(narrow Gaussian, [p1, p2])`` has background exponent -1: checked (and flagged
    when the narrow background's precision is subtracted too strongly), so the shortcut only
    skips the cases Hoelder covers."""
    calls = _count_law_builds(monkeypatch)
    narrow = cj.diffuse(cj.Gaussian(jnp.zeros(2), 0.01 * jnp.eye(2)), SCH)
    with pytest.warns(cj.CompositionWarning, match="not normalizable"):
        driver.warn_if_no_law(cj.compose(narrow, [_mix(3, 2), _mix(2, 2)]))
    assert calls == [1]


def test_cost_cap_skips_large_dimension():
    """Components x d^3 above the cap: not built (silent), though small enough in components."""
    bg, c = _mix(8, 4), _mix(8, 4)
    small = cj.compose(bg, [c, c])
    assert driver._law_inputs(*driver._law_tree(small)) is not None
    d = 1 + round((driver._MAX_LAW_FLOPS / 64) ** (1 / 3))  # 8 x 8 components at this d: over
    big = cj.compose(_mix(8, d), [_mix(8, d), _mix(8, d)])
    assert driver._law_inputs(*driver._law_tree(big)) is None


def test_mixture_background_to_a_negative_power_is_refused_before_any_algebra():
    """``compose(mixture, [p1, p2])`` puts the mixture background to the power -1, which has no
    closed form: ``composed_distribution`` says so (NotImplementedError) before computing any
    natural parameters, so ``cj.sample``'s check of this common Bayes-style composition builds
    at most one small program (the weights' dtype conversion; 16 programs and 0.6 s of the first
    call went to the background's algebra before) and stays silent; the same refusal for a
    mixture to a non-integer power among Gaussians."""
    from _programs import programs_built

    bg, c1, c2 = _mix(8, 2), _mix(6, 2, 2.0), _mix(5, 2, 1.0)
    model = cj.compose(bg, [c1, c2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.CompositionWarning)
        _, built = programs_built(driver.warn_if_no_law, model)
    assert built <= 1
    with pytest.raises(NotImplementedError, match="exponent -1 in"):
        cj.composed_distribution(bg.dist, [c1.dist, c2.dist])
    g = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    with pytest.raises(NotImplementedError, match="exponent 0.5 in"):
        cj.composed_distribution(g, [bg.dist], weights=jnp.asarray([0.5]))
