"""Particle-minor scores of every exact family, and the families' own conversions.

* ``Diffused.score_columns(X (d, n), t)`` equals ``vmap(score)`` over the columns for every family
  (VP and VE, tiny ``t`` to ``t = 1``), with the declared ``columns_native`` fact per family;
  far from the origin the Gaussian's columns score matches a float64 reference (differences
  ``X - a m``, no expanded quadratic);
* ``cj.sample(layout="auto")`` on ``compose(diffuse(Gaussian), [diffuse(iso mixture)])`` takes the
  columns body and gives the rows layout's samples (same key) within float rounding;
* ``Distribution.as_gaussian_mixture`` / ``affine_image`` per family, and a family defined only
  in this file that gets the noised oracles, the columns score, ``composed_distribution``, the
  verification moments and ``verify.sampler_law`` through the base-class hooks alone (adding a
  family touches one file plus an export).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _distribution_cases import make_case

import composition_jax as cj
from composition_jax._pytree import pytree_dataclass
from composition_jax.distributions import Distribution
from composition_jax.samplers import driver
from composition_jax.samplers.methods import resolve_method
from composition_jax.verify import _laws

EPS32 = float(np.finfo(np.float32).eps)
SCHEDULES = {"vp": cj.VPSchedule(), "ve": cj.VESchedule()}
TIMES = (1e-4, 0.05, 0.5, 1.0)


def _f32(a):
    return jnp.asarray(np.asarray(a), jnp.float32)


def _spd(rng, d, lo=0.3):
    b = rng.normal(size=(d, d))
    return b @ b.T / d + lo * np.eye(d)


def _iso_mixture(seed, d=2, k=3, spread=1.5):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.2, 0.6, k)
    return cj.GaussianMixture(_f32(rng.dirichlet(np.ones(k))), _f32(spread * rng.normal(size=(k, d))),
                              _f32(v[:, None, None] * np.eye(d)[None]))


def _diag_mixture(seed, d=3, k=2):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.2, 2.0, (k, d))
    return cj.GaussianMixture(_f32(rng.dirichlet(np.ones(k))), _f32(rng.normal(size=(k, d))),
                              _f32(np.stack([np.diag(r) for r in v])))


def _factor_mixture(seed, covariance):
    rng = np.random.default_rng(seed)
    B, K, b = 3, 2, 2
    covs = {"iso": rng.uniform(0.2, 0.8, (B, K)), "diag": rng.uniform(0.2, 0.8, (B, K, b)),
            "full": np.stack([np.stack([_spd(rng, b) for _ in range(K)]) for _ in range(B)])}
    return cj.FactorMixture(_f32(rng.dirichlet(np.ones(K), B)), _f32(rng.normal(size=(B, K, b))),
                            _f32(covs[covariance]))


def _rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return _f32([[c, -s], [s, c]])  # not symmetric: A and A^T differ


def _families():
    """name -> (distribution, declared columns_native)."""
    rng = np.random.default_rng(0)
    g3 = cj.Gaussian(_f32(rng.normal(size=3)), _f32(_spd(rng, 3)))
    g12 = cj.Gaussian(_f32(rng.normal(size=12)), _f32(_spd(rng, 12)))  # d > 8: matmul form
    g1 = cj.Gaussian(_f32([0.5]), _f32([[0.7]]))
    m1 = _iso_mixture(1, d=1, k=2)
    emp = cj.Empirical(_f32(rng.normal(size=(4, 2))))
    a3 = _f32(rng.normal(size=(3, 3)) + 2.0 * np.eye(3))
    return {
        "gaussian": (g3, True),
        "gaussian_d12": (g12, True),
        "mixture_iso": (_iso_mixture(2), True),
        "mixture_diag": (_diag_mixture(3), True),
        "mixture_full": (make_case("mixture").dist, False),
        "empirical": (emp, False),
        # blocks interleaved, so the reassembly permutation is exercised
        "product": (cj.Product((g1, _iso_mixture(4, d=2)), ((1,), (2, 0))), True),
        "product_with_empirical": (cj.Product((g1, emp), ((2,), (0, 1))), False),
        "pushforward_gaussian": (cj.LinearPushforward(g3, a3, _f32([1.0, -2.0, 0.5])), True),
        # A S A^T is not diagonal: a full-covariance mixture, no batched form
        "pushforward_mixture": (cj.LinearPushforward(_iso_mixture(5, d=3), a3), False),
        # orthogonal, not block-diagonal over the product: the base's columns score, rotated
        "pushforward_orthogonal": (cj.LinearPushforward(cj.Product((m1, g1), ((0,), (1,))),
                                                        _rotation(0.6), _f32([3.0, -1.0])), True),
        # block-diagonal over the product: a product of per-block pushforwards
        "pushforward_block_diagonal": (cj.LinearPushforward(
            cj.Product((m1, g1), ((0,), (1,))), _f32(np.diag([2.0, -0.5])), _f32([1.0, 1.0])),
            True),
        "factor_mixture_iso": (_factor_mixture(7, "iso"), True),
        "factor_mixture_diag": (_factor_mixture(8, "diag"), True),
        "factor_mixture_full": (_factor_mixture(9, "full"), True),
    }


FAMILIES = _families()


@jax.jit
def _both_layouts(model, X, t):
    return model.score_columns(X, t), jax.vmap(model.score, (1, None), 1)(X, t)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_score_columns_equals_vmapped_score(name, key):
    """Every family: columns score == vmap(score) within float32 rounding (``64 eps`` times the
    scale of the scores: the two layouts evaluate the same formula in a different summation
    order), for VP and VE, from tiny ``t`` to ``t = 1``."""
    dist, native = FAMILIES[name]
    X = 2.0 * jax.random.normal(key, (dist.dim, 16), jnp.float32)
    for sname, sched in SCHEDULES.items():
        model = cj.diffuse(dist, sched)
        assert model.columns_native is native, (name, sname)
        assert cj.compose(model, [model]).columns_native is native
        for t in TIMES:
            cols, ref = (np.asarray(v, np.float64) for v in _both_layouts(model, X, t))
            assert cols.shape == (dist.dim, 16)
            assert np.all(np.isfinite(ref)), (name, sname, t)
            tol = 64 * EPS32 * np.max(np.abs(ref))
            err = np.max(np.abs(cols - ref))
            assert err <= tol, (name, sname, t, err, tol)


@pytest.mark.parametrize("name", ["mixture_iso", "mixture_diag", "factor_mixture_diag"])
def test_score_columns_jacobian_equals_vmapped_score_jacobian(name, key):
    """The mixtures' columns score pins the top component's softmax weight to exactly 1 (for
    overflow safety); its derivative must stay that of ``exp(l - max)``: the Jacobian of the
    columns score over a particle equals the per-particle score's Jacobian."""
    dist, _native = FAMILIES[name]
    model = cj.diffuse(dist, SCHEDULES["vp"])
    X = 2.0 * jax.random.normal(key, (dist.dim, 4), jnp.float32)
    for t in (0.05, 0.5):
        col = jax.jit(jax.vmap(jax.jacfwd(
            lambda x, t=t: model.score_columns(x[:, None], t)[:, 0]), 1))(X)
        row = jax.jit(jax.vmap(jax.jacfwd(lambda x, t=t: model.score(x, t)), 1))(X)
        col, row = np.asarray(col, np.float64), np.asarray(row, np.float64)
        tol = 64 * EPS32 * np.max(np.abs(row))
        assert np.max(np.abs(col - row)) <= tol, (name, t, np.max(np.abs(col - row)), tol)
        # not trivially equal: the softmax part matters (the Jacobian is not -diag(w))
        assert np.max(np.abs(row - row[:1])) > 0.0


@pytest.mark.parametrize("d", [3, 12])
def test_gaussian_score_columns_far_from_origin(d):
    """Mean 1e4 from the origin, particles within a few standard deviations of it, tiny ``t``:
    the columns score matches a float64 reference within the backward-stable bound
    ``C eps (rho / v_min + |s|)`` with ``rho = |x| + a |m|`` (``C = 2``; measured 0.13): the
    rounding of ``a m`` is the only error that grows with the offset."""
    rng = np.random.default_rng(d)
    cov = _spd(rng, d, lo=0.05)
    mean = 1e4 + rng.normal(size=d)
    dist = cj.Gaussian(_f32(mean), _f32(cov))
    mean64, cov64 = (np.asarray(v, np.float64) for v in (dist.mean, dist.cov))
    sched = SCHEDULES["vp"]
    for t in (1e-3, 0.3):
        a, s = float(sched.alpha(jnp.float32(t))), float(sched.sigma(jnp.float32(t)))
        S = a * a * cov64 + s * s * np.eye(d)
        X = (a * mean64[:, None] + np.linalg.cholesky(S) @ rng.normal(size=(d, 8))).astype(np.float32)
        got = np.asarray(cj.diffuse(dist, sched).score_columns(jnp.asarray(X), t), np.float64)
        ref = -np.linalg.solve(S, X.astype(np.float64) - a * mean64[:, None])
        rho = np.max(np.abs(X)) + a * np.max(np.abs(mean64))
        vmin = np.linalg.eigvalsh(S)[0]
        tol = 2 * EPS32 * (rho / vmin + np.max(np.abs(ref)))  # measured: <= 0.13 eps (...)
        assert np.max(np.abs(got - ref)) <= tol, (t, np.max(np.abs(got - ref)), tol)


def test_auto_layout_takes_columns_for_a_gaussian_background(key, monkeypatch):
    """The README's composition (Gaussian background, isotropic mixture conditional) declares
    ``columns_native``: ``layout="auto"`` resolves to the columns body, whose samples are those of
    ``layout="columns"`` bit for bit and those of ``layout="rows"`` (same key, same noise per
    particle) within float rounding."""
    sched = SCHEDULES["vp"]
    bg = cj.diffuse(cj.Gaussian(jnp.zeros(2), 4.0 * jnp.eye(2)), sched)
    model = cj.compose(bg, [cj.diffuse(_iso_mixture(11, k=8), sched)])
    assert bg.columns_native and model.columns_native
    em = resolve_method("euler_maruyama", {})
    assert driver.choose_layout("auto", em, model, 2, None, False) == "columns"
    emp = cj.diffuse(cj.Empirical(jnp.zeros((3, 2))), sched)  # no batched score: rows
    assert driver.choose_layout("auto", em, cj.compose(emp, [model.conditionals[0]]), 2, None,
                                False) == "rows"
    chosen = []
    real = driver.choose_layout
    monkeypatch.setattr(driver, "choose_layout",
                        lambda *a, **k: chosen.append(real(*a, **k)) or chosen[-1])
    n, steps = 128, 16
    run = {lay: np.asarray(cj.sample(key, model, sched, (n, 2), steps=steps, layout=lay))
           for lay in ("auto", "columns", "rows")}
    assert chosen == ["columns", "columns", "rows"]
    np.testing.assert_array_equal(run["auto"], run["columns"])
    # rounding differences per step (~eps |x|), accumulated over the steps
    scale = np.max(np.abs(run["rows"]))
    np.testing.assert_allclose(run["auto"], run["rows"], rtol=0, atol=steps * 64 * EPS32 * scale)


# ------------------------------------------------------------------------------------------
# Conversions: Distribution.as_gaussian_mixture / affine_image


def _mixture_moments(mix):
    w, m, c = (np.asarray(v, np.float64) for v in (mix.weights, mix.means, mix.covs))
    mu = w @ m
    dm = m - mu
    return mu, np.einsum("k,kij->ij", w, c) + np.einsum("k,ki,kj->ij", w, dm, dm)


def test_as_gaussian_mixture_per_family():
    g = FAMILIES["gaussian"][0]
    mg = g.as_gaussian_mixture()
    assert mg.num_components == 1
    np.testing.assert_array_equal(mg.means[0], g.mean)
    np.testing.assert_array_equal(mg.covs[0], g.cov)
    mix = FAMILIES["mixture_diag"][0]
    assert mix.as_gaussian_mixture() is mix
    # a product: the Cartesian product of the factors' components, same moments
    prod = FAMILIES["product"][0]  # N(0.5, 0.7) on coordinate 1, a 2-d mixture on (2, 0)
    pm = prod.as_gaussian_mixture()
    assert pm.num_components == 1 * 3
    m2, c2 = (np.asarray(v, np.float64) for v in prod.factors[1].moments())
    mean = np.array([m2[1], 0.5, m2[0]])
    cov = np.zeros((3, 3))
    cov[np.ix_([2, 0], [2, 0])] = c2
    cov[1, 1] = 0.7
    for got, want in zip(_mixture_moments(pm), (mean, cov)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pm.covs[:, 1, 1], 0.7, rtol=1e-7)
    # a FactorMixture: K^B components with its exact moments; over the cap: None
    fm = FAMILIES["factor_mixture_full"][0]
    fmm = fm.as_gaussian_mixture()
    assert fmm.num_components == 2 ** 3
    for got, want in zip(_mixture_moments(fmm), fm.moments()):
        np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-5, atol=1e-5)
    assert fm.as_gaussian_mixture(max_components=7) is None
    assert prod.as_gaussian_mixture(max_components=2) is None
    # pushforwards: the exact form's; none without one; no mixture for point sets
    pf = FAMILIES["pushforward_gaussian"][0]
    assert pf.as_gaussian_mixture().num_components == 1
    assert FAMILIES["pushforward_block_diagonal"][0].as_gaussian_mixture().num_components == 2
    assert FAMILIES["pushforward_orthogonal"][0].as_gaussian_mixture() is None  # no closed form
    assert FAMILIES["empirical"][0].as_gaussian_mixture() is None
    assert FAMILIES["product_with_empirical"][0].as_gaussian_mixture() is None
    with pytest.raises(ValueError, match=r"max_components must be a positive int, got 0"):
        g.as_gaussian_mixture(0)


def test_affine_image_per_family():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(3, 3)) + 2.0 * np.eye(3)
    b = rng.normal(size=3)
    g = FAMILIES["gaussian"][0]
    ga = g.affine_image(_f32(A), _f32(b))
    m64, c64 = np.asarray(g.mean, np.float64), np.asarray(g.cov, np.float64)
    np.testing.assert_allclose(ga.mean, A @ m64 + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ga.cov, A @ c64 @ A.T, rtol=1e-5, atol=1e-5)
    mix = _iso_mixture(5, d=3)
    ma = mix.affine_image(_f32(A))
    np.testing.assert_allclose(ma.means, np.asarray(mix.means, np.float64) @ A.T, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(ma.weights, mix.weights)
    emp = cj.Empirical(_f32(rng.normal(size=(4, 3))))
    np.testing.assert_allclose(emp.affine_image(_f32(A), _f32(b)).points,
                               np.asarray(emp.points, np.float64) @ A.T + b, rtol=1e-5, atol=1e-5)
    # products and factor mixtures: only matrices block-diagonal over their blocks
    prod = FAMILIES["pushforward_block_diagonal"][0].base
    assert isinstance(prod.affine_image(_f32(np.diag([2.0, 3.0]))), cj.Product)
    assert prod.affine_image(_f32([[1.0, 1.0], [0.0, 1.0]])) is None
    fm = FAMILIES["factor_mixture_iso"][0]
    blockdiag = np.kron(np.eye(3), np.array([[1.0, 0.5], [0.0, 2.0]]))
    img = fm.affine_image(_f32(blockdiag))
    assert isinstance(img, cj.Product)
    for got, want in zip(_mixture_moments(img.as_gaussian_mixture()), fm.moments()):
        want = np.asarray(want, np.float64)
        np.testing.assert_allclose(got, (blockdiag @ want if got.ndim == 1
                                         else blockdiag @ want @ blockdiag.T), rtol=1e-5,
                                   atol=1e-5)
    assert fm.affine_image(_f32(np.eye(6) + np.eye(6, k=2))) is None
    # a LinearPushforward of a FactorMixture by a block-diagonal matrix has an exact form
    # (full block covariances: no batched columns score)
    lp = cj.LinearPushforward(fm, _f32(blockdiag))
    assert lp.block_diagonal and lp.closed is not None and not lp.columns_native
    with pytest.raises(ValueError, match=r"matrix must have shape \(3, 3\).*got \(2, 2\)"):
        g.affine_image(jnp.eye(2))
    with pytest.raises(ValueError, match=r"shift must have shape \(3,\), got \(2,\)"):
        g.affine_image(jnp.eye(3), jnp.zeros(2))


def test_factor_mixture_compositions_are_blockwise():
    """FactorMixtures with the same blocks compose block by block (a Product of per-block
    compositions), equal to the composition of their Product forms."""
    fb, fc = FAMILIES["factor_mixture_iso"][0], _factor_mixture(12, "iso")
    q = cj.composed_distribution(fb, [fc])
    ref = cj.composed_distribution(fb.as_product(), [fc.as_product()])
    assert isinstance(q, cj.Product) and q.blocks == fb.blocks
    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# A family defined here only: everything through the base-class hooks.
@pytree_dataclass
class IsoNormal(Distribution):
    """``N(mean, exp(2 log_std) I)``: a Gaussian parameterized by its log standard deviation.

    Noised law ``N(a m, v I)``, ``v = a^2 exp(2 log_std) + s^2``."""

    mean: Any
    log_std: Any
    columns_native = True

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def _var(self, a, s):
        return a * a * jnp.exp(2.0 * self.log_std) + s * s

    def _sample_one(self, key):
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape,
                                                                     self.mean.dtype)

    def _noised_log_prob(self, x, a, s):
        v, r = self._var(a, s), x - a * self.mean
        return -0.5 * (jnp.dot(r, r) / v + self.dim * jnp.log(2.0 * math.pi * v))

    def _noised_score(self, x, a, s):
        return -(x - a * self.mean) / self._var(a, s)

    def _noised_score_columns(self, X, a, s):
        return -(X - a * self.mean[:, None]) / self._var(a, s)

    def _noised_denoise(self, x, a, s):
        lam = jnp.exp(2.0 * self.log_std)
        return self.mean + a * lam * (x - a * self.mean) / self._var(a, s)

    def _gaussian_mixture(self, max_components, name):
        eye = jnp.eye(self.dim, dtype=self.mean.dtype)
        return cj.GaussianMixture(jnp.ones((1,), self.mean.dtype), self.mean[None],
                                  (jnp.exp(2.0 * self.log_std) * eye)[None])

    def _affine_image(self, matrix, shift):
        return cj.Gaussian(matrix @ self.mean + shift,
                           jnp.exp(2.0 * self.log_std) * (matrix @ matrix.T))


def test_new_family_needs_only_its_own_file(key):
    """``IsoNormal`` (above) is defined in this test alone: the library composes it exactly,
    checks its moments and sampler laws, and samples it with the columns body, as it does the
    equivalent ``cj.Gaussian``, with no edit anywhere else."""
    sched = SCHEDULES["vp"]
    mean = _f32([0.5, -1.0])
    iso = IsoNormal(mean, jnp.float32(math.log(1.5)))
    same = cj.Gaussian(mean, 2.25 * jnp.eye(2))
    cond = cj.Gaussian(_f32([2.0, 1.0]), _f32([[0.5, 0.1], [0.1, 0.3]]))
    p, q = cj.diffuse(iso, sched), cj.diffuse(same, sched)
    X = 2.0 * jax.random.normal(key, (2, 8), jnp.float32)
    for t in (1e-3, 0.5):
        np.testing.assert_allclose(p.score_columns(X, t), q.score_columns(X, t), rtol=1e-5,
                                   atol=1e-5)
        x = X[:, 0]
        for what in ("log_prob", "score", "denoise"):
            np.testing.assert_allclose(getattr(p, what)(x, t), getattr(q, what)(x, t), rtol=1e-5,
                                       atol=1e-5)
    assert p.columns_native and cj.compose(p, [cj.diffuse(cond, sched)]).columns_native
    # exact t = 0 composition through as_gaussian_mixture; blockwise inside a Product
    for got, want in ((cj.composed_distribution(iso, [cond], jnp.array([1.5])),
                       cj.composed_distribution(same, [cond], jnp.array([1.5]))),
                      (cj.composed_distribution(cj.Product((iso, cond), ((0, 1), (2, 3))),
                                                [cj.Product((cond, iso), ((0, 1), (2, 3)))]),
                       cj.composed_distribution(cj.Product((same, cond), ((0, 1), (2, 3))),
                                                [cj.Product((cond, same), ((0, 1), (2, 3)))]))):
        assert type(got) is type(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # exact pushforward through affine_image; verification moments through the mixture form
    A = _f32([[2.0, 1.0], [0.0, 1.0]])
    assert isinstance(cj.LinearPushforward(iso, A).closed, cj.Gaussian)
    for a, b in zip(_laws.moments(iso), _laws.moments(same)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # the exact law of the sampler (affine score): the same as for the Gaussian
    law_p = cj.verify.sampler_law(cj.compose(p, [cj.diffuse(cond, sched)]), sched,
                                  method="euler_maruyama", steps=8)
    law_q = cj.verify.sampler_law(cj.compose(q, [cj.diffuse(cond, sched)]), sched,
                                  method="euler_maruyama", steps=8)
    np.testing.assert_allclose(law_p.mean, law_q.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(law_p.cov, law_q.cov, rtol=1e-4, atol=1e-5)
