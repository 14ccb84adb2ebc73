"""Statistics of composition_jax.verify.stats: exact oracles, calibration under the null, power."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as ss

from composition_jax.verify import stats


def _np_mmd2(x, y, h):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    K = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))  # noqa: E731
    n, m = len(x), len(y)
    return ((K(x, x).sum() - n) / (n * (n - 1)) + (K(y, y).sum() - m) / (m * (m - 1))
            - 2 * K(x, y).mean())


def test_mmd2_unbiased_matches_numpy(key, float_dtype):
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (130, 3), float_dtype)
    y = jax.random.normal(k2, (70, 3), float_dtype) + jnp.asarray(0.3, float_dtype)
    got = stats.mmd2_unbiased(x, y, jnp.asarray(1.3, float_dtype), block_size=32)
    ref = _np_mmd2(x, y, 1.3)
    eps = float(jnp.finfo(float_dtype).eps)
    # sums of ~4e4 kernel values of size <= 1: rounding <= N * eps relative to O(1) terms
    assert abs(float(got) - ref) <= 200 * 200 * eps
    assert got.dtype == float_dtype


def test_median_bandwidth_exact_on_small_sample(key):
    z = jax.random.normal(key, (50, 2))
    zn = np.asarray(z, np.float64)
    d = np.sqrt(((zn[:, None] - zn[None]) ** 2).sum(-1))[np.triu_indices(50, 1)]
    h = stats.median_bandwidth(key, z)
    assert abs(float(h) - np.median(d)) <= 1e-5 * np.median(d)


def test_nanmedian_by_selection_is_jnp_nanmedian_bit_for_bit(float_dtype):
    """The median heuristic's selection (bisection on the bit patterns) returns exactly what
    jnp.nanmedian's sort returns: odd and even counts, ties, NaNs (ignored), a single valid
    entry, none, and magnitudes from 1e-30 to 1e30 (float32 and, x64, float64); -0.0 and 0.0
    only as equal numbers (the stable sort keeps their input order, which decides the sign)."""
    rng = np.random.default_rng(7)
    size = 41
    rows = [rng.normal(size=size), rng.integers(-2, 3, size).astype(float),
            np.abs(rng.standard_cauchy(size)) * 10.0 ** rng.integers(-30, 30, size),
            np.where(rng.random(size) < 0.5, -0.0, 0.0), np.full(size, np.nan)]
    for frac in (0.1, 0.5, 0.97):  # NaNs: odd and even valid counts, one valid entry
        r = rng.normal(size=size)
        r[rng.permutation(size)[: int(frac * size)]] = np.nan
        rows.append(r)
    rows += [rng.exponential(size=size) * s for s in (1e-30, 1e-3, 1e3, 1e30)]
    a = jnp.asarray(np.stack(rows), float_dtype)
    got = np.asarray(jax.jit(jax.vmap(stats._nanmedian))(a))
    ref = np.asarray(jax.jit(lambda a: jnp.nanmedian(a, axis=1))(a))
    assert got.dtype == ref.dtype == float_dtype
    # float equality is bitwise except that it equates -0.0 and 0.0; NaN where NaN
    assert np.array_equal(got, ref, equal_nan=True), np.stack([got, ref])
    assert np.isnan(got[4]) and got[3] == 0 and np.isfinite(np.delete(got, 4)).all()


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_ks_pvalue_against_scipy(n):
    D = np.array([0.3, 0.5, 0.8, 1.0, 1.3, 1.8]) / np.sqrt(n)
    p = np.asarray(stats._ks_p(jnp.asarray(D, jnp.float32), n))
    exact = ss.kstwo.sf(D, n)
    # Stephens' corrected asymptotic formula: documented absolute error 1.5e-2 (n >= 50),
    # 1e-2 (n >= 200)
    assert np.max(np.abs(p - exact)) < (1.5e-2 if n < 200 else 1e-2)


def test_kolmogorov_sf_against_scipy():
    lam = np.linspace(0.2, 3.0, 57)
    got = np.asarray(stats.kolmogorov_sf(jnp.asarray(lam, jnp.float32)))
    np.testing.assert_allclose(got, ss.kstwobign.sf(lam), rtol=1e-4, atol=1e-6)


def test_ks_statistic_against_scipy(key):
    x = jax.random.normal(key, (500,))
    r = stats.ks_test_1d(x, jax.scipy.stats.norm.cdf)
    ref = ss.kstest(np.asarray(x, np.float64), "norm")
    assert abs(float(r.statistic) - ref.statistic) < 1e-5
    assert abs(float(r.p_value) - ref.pvalue) < 1e-2


def _check_uniform_2_of_5(u, num):
    """Every column takes exactly 2 of the 5 positions, and each of the C(5, 2) = 10 subsets
    appears with frequency 1/10 (every cell within 5 standard errors; chi-square goodness of
    fit, 9 degrees of freedom)."""
    assert u.shape == (5, num) and u.dtype == bool
    assert np.all(u.sum(0) == 2)
    codes = (u * (1 << np.arange(5))[:, None]).sum(0)
    values, counts = np.unique(codes, return_counts=True)
    assert len(values) == 10
    expected = num / 10
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected * 0.9)), counts
    assert ss.chisquare(counts).pvalue > 1e-3, counts


def test_random_subsets_are_uniform_n_subsets(monkeypatch):
    """The permutation tests' random splits (selection sampling), over 60000 columns; a larger
    split includes each position with frequency n / N; the same key gives the same splits.
    Above the selection limit the label permutation takes over, with the same law."""
    num = 60000
    u = np.asarray(stats._random_subsets(jax.random.key(7), 2, 3, num))
    _check_uniform_2_of_5(u, num)
    big = np.asarray(stats._random_subsets(jax.random.key(8), 300, 200, 2000))
    assert np.all(big.sum(0) == 300)
    freq = big.mean(1)  # per position, binomial(2000, 0.6) / 2000
    assert np.all(np.abs(freq - 0.6) <= 5 * np.sqrt(0.6 * 0.4 / 2000)), (freq.min(), freq.max())
    np.testing.assert_array_equal(u, np.asarray(stats._random_subsets(jax.random.key(7), 2, 3, num)))
    assert not np.array_equal(u, np.asarray(stats._random_subsets(jax.random.key(9), 2, 3, num)))
    monkeypatch.setattr(stats, "_SELECTION_MAX_N", 4)
    _check_uniform_2_of_5(np.asarray(stats._random_subsets(jax.random.key(10), 2, 3, 20000)),
                          20000)


def test_mean_test_chi2_pvalue(key):
    x = jax.random.normal(key, (400, 3))
    mu, cov = jnp.array([0.05, 0.0, -0.05]), jnp.diag(jnp.array([1.0, 2.0, 0.5]))
    r = stats.mean_test(x, mu, cov)
    xb = np.asarray(x, np.float64).mean(0) - np.asarray(mu)
    chi2 = 400 * xb @ np.linalg.solve(np.asarray(cov, np.float64), xb)
    assert abs(float(r.statistic) - chi2) < 1e-4 * max(1.0, chi2)
    assert abs(float(r.p_value) - ss.chi2.sf(chi2, 3)) < 1e-5


def test_mixture_fourth_moments_gauss_hermite():
    """Isserlis formula for E[(x_j-mu_j)^2 (x_k-mu_k)^2] vs tensor Gauss-Hermite quadrature."""
    w = np.array([0.3, 0.7])
    m = np.array([[1.0, -0.5], [-0.2, 0.8]])
    c = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 2.0]]])
    mu = w @ m
    got = np.asarray(stats._fourth_moments_mixture(jnp.asarray(w), jnp.asarray(m),
                                                   jnp.asarray(c), jnp.asarray(mu)))
    t, gw = np.polynomial.hermite_e.hermegauss(6)  # exact for polynomials of degree <= 11
    gw = gw / gw.sum()
    ref = np.zeros((2, 2))
    for k in range(2):
        L = np.linalg.cholesky(c[k])
        z = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        ww = np.outer(gw, gw).reshape(-1)
        y = z @ L.T + m[k] - mu
        ref += w[k] * np.einsum("n,nj,nk->jk", ww, y**2, y**2)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def _null_rejections(key, trials, n, d=2, two_sample=True):
    """Rejection counts at level 0.05 of each test over ``trials`` null data sets (vmapped)."""
    cov, mu = jnp.eye(d), jnp.zeros(d)
    f4 = stats._fourth_moments_mixture(jnp.ones(1), mu[None], cov[None], mu)

    def one(k):
        kx, ky, k1, k2 = jax.random.split(k, 4)
        x = jax.random.normal(kx, (n, d))
        y = jax.random.normal(ky, (n, d))
        p = [
            stats.ks_test_coordinates(x, jax.scipy.stats.norm.cdf).p_value,
            stats.mean_test(x, mu, cov).p_value,
            stats.cov_test(x, cov, fourth=f4).p_value,
        ]
        if two_sample:
            p += [
                stats.mmd_test(k1, x, y, num_permutations=49).p_value,
                stats.sliced_wasserstein_test(k2, x, y, num_permutations=49,
                                              num_projections=16).p_value,
            ]
        return jnp.stack(p)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(trials, dtype=jnp.uint32))
    p = np.asarray(jax.jit(jax.vmap(one))(keys))
    return dict(zip(["ks", "mean", "cov", "mmd", "sw"], (p < 0.05).sum(0).tolist()))


def _check_calibration(counts, trials):
    # at most nominal: the count is below the 99.9% quantile of Binomial(trials, 0.05)
    bound = ss.binom.ppf(0.999, trials, 0.05)
    for name, c in counts.items():
        assert c <= bound, f"{name}: {c} rejections of {trials} at level 0.05 (bound {bound})"


def test_calibration_fast(key):
    # one-sample tests only (the permutation p-values of MMD / SW are valid by construction;
    # their calibration is checked in the slow test)
    trials = 60
    _check_calibration(_null_rejections(key, trials, 300, two_sample=False), trials)


@pytest.mark.slow
def test_calibration_slow(key):
    trials = 300
    _check_calibration(_null_rejections(key, trials, 300), trials)


def test_power_one_sample_shift_point_one_sd_n10000(key):
    """KS and the mean test reject a 0.1-sd shift in 2-D at n = 10,000 (cheap: one-sample)."""
    x = jax.random.normal(key, (10_000, 2)) + jnp.array([[0.1, 0.0]])
    ks = stats.ks_test_coordinates(x, jax.scipy.stats.norm.cdf)
    mean = stats.mean_test(x, jnp.zeros(2), jnp.eye(2))
    assert float(ks.p_value) < 0.05 and float(mean.p_value) < 0.05


@pytest.mark.slow
def test_power_shift_point_one_sd_n10000(key):
    """A 0.1-standard-deviation shift in 2-D at n = 10,000 is rejected by every location test
    (MMD with the exact kernel on all 20,000 points, 99 permutations)."""
    kx, ky, k1, k2 = jax.random.split(key, 4)
    n = 10_000
    shift = jnp.array([[0.1, 0.0]])
    x = jax.random.normal(kx, (n, 2)) + shift
    y = jax.random.normal(ky, (n, 2))
    mmd = stats.mmd_test(k1, x, y, num_permutations=99)  # full n, exact kernel
    sw = stats.sliced_wasserstein_test(k2, x, y, num_permutations=99)
    ks = stats.ks_test_coordinates(x, jax.scipy.stats.norm.cdf)
    mean = stats.mean_test(x, jnp.zeros(2), jnp.eye(2))
    assert float(mmd.p_value) < 0.05 and float(sw.p_value) < 0.05
    assert float(ks.p_value) < 0.05 and float(mean.p_value) < 0.05


def test_bad_inputs():
    x = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.check_samples(jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        stats.check_samples(jnp.zeros((5,)))
    with pytest.raises(ValueError, match="2 columns"):
        stats.mmd_test(jax.random.key(0), x, jnp.zeros((10, 3)))
    with pytest.raises(TypeError, match="real floating"):
        stats.check_samples(jnp.zeros((4, 2), bool))
    with pytest.raises(ValueError, match="cov must have shape"):
        stats.cov_test(x, jnp.eye(3))
