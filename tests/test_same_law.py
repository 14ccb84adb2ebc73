"""cj.verify.same_law: the joint-law test. Exact oracles for its pieces (energy distance and MMD
against NumPy, the Wald covariance of vech(S) against closed forms, Holm against its definition)
and its acceptance criteria: at n = 2000 it rejects blocks with exact marginals but
cross-correlation rho = 0.3 (claim 24: the composition is the INDEPENDENT coupling), and a 10 %
variance error; it passes exact samples."""

from __future__ import annotations

import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

sl = importlib.import_module("composition_jax.verify.same_law")

N = 2000
P = 399  # permutations: smallest p-value 1/400 = alpha / 4 at alpha = 0.01
M = 500  # points per side of the permutation tests (all N enter the moment tests)


@pytest.fixture(scope="module")
def ref4():
    return cj.Gaussian(jnp.asarray([0.5, -1.0, 2.0, 0.0]),
                       jnp.diag(jnp.asarray([1.0, 0.25, 4.0, 1.0])))


def _correlated_blocks(key, ref, rho):
    """Exact N(mean, diag var) block marginals ({0, 1} and {2, 3} each exact), but
    corr(x_j, x_{j+2}) = rho across the blocks."""
    z = jax.random.normal(key, (N, 4))
    z = z.at[:, 2:].set(rho * z[:, :2] + np.sqrt(1.0 - rho**2) * z[:, 2:])
    return ref.mean[None] + z * jnp.sqrt(jnp.diag(ref.cov))[None]


def test_exact_samples_pass_and_report_shape(key, ref4):
    x = ref4.sample(jax.random.fold_in(key, 1), N)
    r = cj.verify.same_law(x, ref4, key=key, num_permutations=P, two_sample_n=M)
    assert r.passed, str(r)
    assert [c.name for c in r.components] == ["mmd", "energy", "mean", "cov"]
    assert r.correction == "holm" and r.n == N and r.m == M
    d = r.to_dict()
    assert set(d) >= {"passed", "alpha", "components", "n", "m"} and r.to_json()
    assert "Holm" in str(r) and set(r.p_values) == {"mmd", "energy", "mean", "cov"}


@pytest.mark.parametrize("rho", [0.3, -0.3])
def test_rejects_correlated_blocks_with_exact_marginals(key, ref4, rho):
    """The acceptance criterion: block marginals exact (projective() cannot see it), blocks
    correlated with rho = +-0.3 at n = 2000: rejected; the Wald covariance statistic has
    non-centrality n * 2 * rho^2 ~ 360 on 10 degrees of freedom."""
    x = _correlated_blocks(jax.random.fold_in(key, 2), ref4, rho)
    r = cj.verify.same_law(x, ref4, key=key, num_permutations=P, two_sample_n=M)
    assert not r.passed
    cov = {c.name: c for c in r.components}["cov"]
    assert cov.rejected and cov.p_value < 1e-10
    # the block marginals alone are exact: the projective test passes
    conds = [ref4, ref4]
    rp = cj.verify.projective(x, conds, [[0, 1], [2, 3]], key=key, num_permutations=P,
                              two_sample_n=M)
    assert rp.passed, str(rp)


def test_rejects_ten_percent_variance_error(key, ref4):
    """Exact samples with every variance scaled by 1.1 (sd by 1.049): the Wald statistic has
    non-centrality n/2 * 4 * 0.1^2 = 40 on 10 d.o.f. (power > 0.99 at the Holm level)."""
    x = ref4.sample(jax.random.fold_in(key, 3), N)
    x = ref4.mean[None] + (x - ref4.mean[None]) * np.sqrt(1.1)
    r = cj.verify.same_law(x, ref4, key=key, num_permutations=P, two_sample_n=M)
    assert not r.passed and {c.name: c for c in r.components}["cov"].rejected


@pytest.mark.slow
def test_two_sample_components_alone_detect_the_coupling_mixture_blocks(key):
    """Without moment tests, against a REFERENCE SAMPLE (no exact law): 2-D blocks that are
    two-component mixtures, coupled by sharing the component label with probability 0.6."""
    n = N
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lab1 = jax.random.bernoulli(k1, 0.5, (n,))
    lab2 = jnp.where(jax.random.bernoulli(k2, 0.6, (n,)), lab1, jax.random.bernoulli(k3, 0.5, (n,)))
    mu = lambda lab: jnp.where(lab[:, None], 2.0, -2.0)
    z = 0.5 * jax.random.normal(k4, (n, 4))
    x = jnp.concatenate([mu(lab1) + z[:, :2], mu(lab2) + z[:, 2:]], 1)
    g = cj.GaussianMixture(jnp.asarray([0.5, 0.5]), jnp.asarray([[-2.0, -2.0], [2.0, 2.0]]),
                           jnp.stack([0.25 * jnp.eye(2)] * 2))
    ref = cj.Product((g, g), ([0, 1], [2, 3]))
    y = ref.sample(jax.random.fold_in(key, 9), n)
    r = cj.verify.same_law(x, y, key=key, num_permutations=P, two_sample_n=M)
    assert not r.passed and [c.name for c in r.components] == ["mmd", "energy"]
    # and the mixture reference's exact moments (its Wald covariance uses the mixture's fourth
    # moments): cross-covariance 0.2 * 4 = 0.8 is resolved
    r2 = cj.verify.same_law(x, ref, key=key, num_permutations=P, two_sample_n=M)
    assert {c.name: c for c in r2.components}["cov"].p_value < 1e-10
    # exact samples of the mixture product pass
    r3 = cj.verify.same_law(ref.sample(jax.random.fold_in(key, 5), n), ref, key=key,
                            num_permutations=P, two_sample_n=M)
    assert r3.passed, str(r3)


def test_energy_and_mmd_match_numpy(key):
    """The blocked one-pass statistics equal the direct U-statistics (observed column)."""
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (60, 3))
    y = 1.3 * jax.random.normal(k2, (45, 3)) + 0.4
    h = 1.7
    mmd, energy, exy, _, _ = sl._two_sample(k3, x, y, jnp.asarray(h), 9, 16)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    D = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    K = lambda a, b: np.exp(-D(a, b) ** 2 / (2 * h * h))
    n, m = 60, 45
    e_ref = 2 * D(xn, yn).mean() - D(xn, xn).sum() / (n * (n - 1)) - D(yn, yn).sum() / (m * (m - 1))
    k_ref = ((K(xn, xn).sum() - n) / (n * (n - 1)) + (K(yn, yn).sum() - m) / (m * (m - 1))
             - 2 * K(xn, yn).mean())
    np.testing.assert_allclose(float(energy[0]), e_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(mmd[0]), k_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(exy[0]), D(xn, yn).mean(), rtol=1e-5)
    assert energy.shape == (10,)


def _se_ratios(key, two_sample):
    """mean reported effect_se / standard deviation of the effect, per component, over 300
    data sets of N(0.3, 1.3 I) tested against N(0, I) (n = 1000)."""
    ref = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    names, fn = sl.same_law_arrays(ref.sample(key, 1000), ref, two_sample_n=200,
                                   num_permutations=99, two_sample=two_sample)

    def one(k):
        kx, kt = jax.random.split(k)
        x = 0.3 + jnp.sqrt(1.3) * jax.random.normal(kx, (1000, 2))
        _, _, e, se = fn(kt, x)
        return e, se

    e, se = jax.jit(jax.vmap(one))(jax.random.split(jax.random.fold_in(key, 7), 300))
    return names, np.mean(np.asarray(se), 0) / np.std(np.asarray(e), 0, ddof=1)


@pytest.mark.parametrize("two_sample", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_effect_standard_errors_match_monte_carlo(key, two_sample):
    """Each component's reported ``effect_se`` (delta method for the mean and covariance
    effects; Hoeffding's first-order term plus the permutation variance for MMD and energy)
    agrees with the actual spread of its effect size over 300 independent data sets of a law
    that differs from the reference (mean shifted by 0.3 sd, variances x 1.3): ratio within
    [0.75, 1.33] (the spread of 300 draws is itself known to about 4 %, so this is a ~7-sd
    band; a standard error off by a factor sqrt(2), e.g. a missing factor 2 in a variance,
    fails). The permutation components (MMD, energy) run in the slow lane."""
    names, ratio = _se_ratios(key, two_sample)
    assert list(names) == (["mmd", "energy"] if two_sample else []) + ["mean", "cov"]
    assert np.all((ratio > 0.75) & (ratio < 1.33)), dict(zip(names, ratio.round(3)))


def test_wald_gamma_closed_forms():
    """Gamma = Cov(vech(c c^T)): Gaussian closed form S_ik S_jl + S_il S_jk; a 1-D mixture's
    fourth central moment sum_k w_k (d^4 + 6 d^2 s^2 + 3 s^4) - var^2."""
    A = np.array([[2.0, 0.3, -0.4], [0.3, 1.0, 0.2], [-0.4, 0.2, 0.5]])
    g = cj.Gaussian(jnp.zeros(3), jnp.asarray(A))
    G, r = sl.wald_cov_whitener(g)
    iu = np.triu_indices(3)
    gam = np.array([[A[i, k] * A[j, l] + A[i, l] * A[j, k] for k, l in zip(*iu)]
                    for i, j in zip(*iu)])
    assert r == 6
    np.testing.assert_allclose(np.linalg.pinv(G.T @ G), gam, rtol=2e-4, atol=1e-5)
    w, mu, s2 = np.array([0.3, 0.7]), np.array([-1.0, 2.0]), np.array([0.5, 0.2])
    mix = cj.GaussianMixture(jnp.asarray(w), jnp.asarray(mu[:, None]),
                             jnp.asarray(s2[:, None, None]))
    G1, r1 = sl.wald_cov_whitener(mix)
    m = w @ mu
    dl = mu - m
    var = w @ (s2 + dl**2)
    m4 = w @ (dl**4 + 6 * dl**2 * s2 + 3 * s2**2)
    assert r1 == 1
    np.testing.assert_allclose(1.0 / float((G1.T @ G1)[0, 0]), m4 - var**2, rtol=1e-4)


def test_holm_against_definition():
    rng = np.random.default_rng(0)
    for c in (1, 2, 4, 6):
        for _ in range(50):
            p = rng.uniform(0, 0.05, c) ** rng.uniform(0.5, 2)
            rej, thr = sl.holm(jnp.asarray(p), 0.01)
            order = np.argsort(p)
            ref = np.zeros(c, bool)
            for j, i in enumerate(order):
                if p[i] <= 0.01 / (c - j):
                    ref[i] = True
                else:
                    break
            np.testing.assert_array_equal(np.asarray(rej), ref)
            np.testing.assert_allclose(np.asarray(thr)[order], 0.01 / (c - np.arange(c)),
                                       rtol=1e-6)


def test_errors(key, ref4):
    x = ref4.sample(key, 10)
    with pytest.raises(ValueError, match="reference has dim 4"):
        cj.verify.same_law(x[:, :3], ref4, key=key)
    with pytest.raises(ValueError, match="reference must have 4 columns"):
        cj.verify.same_law(x, x[:, :2], key=key)
    with pytest.raises(ValueError, match="two_sample=True"):
        cj.verify.same_law(x, x, key=key, two_sample=False)
    with pytest.raises(TypeError, match="key must be"):
        cj.verify.same_law(x, ref4, key=0)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        cj.verify.same_law(x[0], ref4, key=key)


def test_same_key_same_report(key, ref4):
    x = ref4.sample(jax.random.fold_in(key, 1), N)
    a = cj.verify.same_law(x, ref4, key=key, num_permutations=P, two_sample_n=M)
    b = cj.verify.same_law(x, ref4, key=key, num_permutations=P, two_sample_n=M)
    assert a.to_dict() == b.to_dict()
    assert list(itertools.chain(a.p_values.values()))
