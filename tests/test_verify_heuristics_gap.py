"""mean_difference_cosines and composition_gap against exact oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

SHEAR = np.array([[1.0, 0.9], [0.0, 1.0]])


def test_cosines_constructed_embeddings():
    b = jnp.array([0.5, -1.0, 2.0])
    orth = b[None, :] + jnp.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, -2.0]])
    c = cj.verify.mean_difference_cosines(orth, b)
    np.testing.assert_array_equal(np.asarray(c), np.eye(3))
    shared = b[None, :] + jnp.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    c = cj.verify.mean_difference_cosines(shared, b)
    assert abs(float(c[0, 1]) - 1.0) <= 4 * float(jnp.finfo(c.dtype).eps)
    assert np.allclose(np.asarray(c), np.asarray(c).T)


def test_cosines_shear_example():
    """Paper shear: A^{-1} maps (2,0),(0,2) to (2,0),(-1.8,2): cos = -1.8/sqrt(7.24)."""
    Ai = np.linalg.inv(SHEAR)
    means = jnp.asarray(np.stack([Ai @ [2.0, 0.0], Ai @ [0.0, 2.0]]), jnp.float32)
    c = cj.verify.mean_difference_cosines(means, jnp.zeros(2))
    assert abs(float(c[0, 1]) - (-1.8 / np.sqrt(7.24))) < 1e-6


def test_cosines_bad_inputs():
    with pytest.raises(ValueError, match="background_mean must have shape"):
        cj.verify.mean_difference_cosines(jnp.ones((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="undefined"):
        cj.verify.mean_difference_cosines(jnp.zeros((2, 2)), jnp.zeros(2))


def _z_tuple():
    pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    p1 = cj.Gaussian(jnp.array([2.0, 0.0]), jnp.diag(jnp.array([0.25, 1.0])))
    p2 = cj.Gaussian(jnp.array([0.0, 2.0]), jnp.diag(jnp.array([1.0, 0.25])))
    return pb, p1, p2


def _np_kl_gap(dists, A_inv, sigma):
    """Independent float64 numpy oracle: KL(N_s[C[p]] || C[p^s]) in VE form (alpha = 1)."""
    ms = [A_inv @ np.asarray(d.mean, np.float64) for d in dists]
    Ss = [A_inv @ np.asarray(d.cov, np.float64) @ A_inv.T for d in dists]
    P = [np.linalg.inv(S) for S in Ss]
    Lam0 = P[1] + P[2] - P[0]
    mu0 = np.linalg.solve(Lam0, P[1] @ ms[1] + P[2] @ ms[2] - P[0] @ ms[0])
    S0 = np.linalg.inv(Lam0) + sigma**2 * np.eye(2)
    Pt = [np.linalg.inv(S + sigma**2 * np.eye(2)) for S in Ss]
    Lam = Pt[1] + Pt[2] - Pt[0]
    mt = np.linalg.solve(Lam, Pt[1] @ ms[1] + Pt[2] @ ms[2] - Pt[0] @ ms[0])
    dm = mt - mu0
    return 0.5 * (np.trace(Lam @ S0) + dm @ Lam @ dm - 2 - np.log(np.linalg.det(Lam @ S0)))


@pytest.mark.x64
@pytest.mark.parametrize("name", ["identity", "rotation", "diag", "shear"])
def test_gaussian_gap_exact(name):
    A = {"identity": np.eye(2),
         "rotation": np.array([[np.cos(.5), -np.sin(.5)], [np.sin(.5), np.cos(.5)]]),
         "diag": np.diag([1.0, 4.0]), "shear": SHEAR}[name]
    Ai = np.linalg.inv(A)
    dists = _z_tuple()
    tup = [cj.LinearPushforward(p, jnp.asarray(Ai)) for p in dists]
    ve = cj.VESchedule(sigma_min=0.01, sigma_max=50.0)
    sig = np.array([0.1, 0.5, 1.0, 3.0])
    ts = np.log(sig / 0.01) / np.log(50 / 0.01)
    res = cj.verify.composition_gap(tup[0], tup[1:], ve, ts)
    assert res.kind == "kl_exact"
    sig_used = np.asarray(jax.vmap(ve.sigma)(jnp.asarray(ts)))
    ref = np.array([_np_kl_gap(dists, Ai, s) for s in sig_used])
    if name == "shear":
        np.testing.assert_allclose(res.divergence, ref, rtol=1e-8)
        assert res.divergence[1] > 1e-3 and res.divergence[2] > 1e-3  # ~0.071, ~0.052
    else:
        assert np.max(res.divergence) < 1e-12  # zero up to float64 rounding
    assert "Composition gap" in str(res)


def test_gaussian_gap_shared_positive_float32():
    pb = cj.Gaussian(jnp.zeros(2), 4 * jnp.eye(2))
    p1 = cj.Gaussian(jnp.array([-2.0, 0.0]), jnp.diag(jnp.array([1.0, 4.0])))
    p2 = cj.Gaussian(jnp.array([2.0, 0.0]), jnp.diag(jnp.array([4.0, 1.0])))
    p2s = cj.Gaussian(jnp.array([0.0, 2.0]), jnp.diag(jnp.array([4.0, 1.0])))
    vp = cj.VPSchedule()
    ts = jnp.array([0.05, 0.2, 0.5])
    bad = cj.verify.composition_gap(pb, [p1, p2], vp, ts)
    good = cj.verify.composition_gap(pb, [p1, p2s], vp, ts)
    eps = float(jnp.finfo(jnp.float32).eps)
    rounding = 2 * (100 * eps) ** 2  # d * (relative rounding)^2
    assert np.max(good.divergence) < rounding
    assert np.min(bad.divergence) > 1e4 * rounding and np.max(bad.divergence) > 1e-2


def test_mixture_gap_fisher(key):
    """FC mixture tuple: Fisher gap ~ 0; an overlapping (non-FC) mixture tuple: > 5 s.e."""
    s0 = 0.3
    pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    mix0 = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
                              jnp.stack([s0 * jnp.eye(1)] * 2))
    p1 = cj.Product((mix0, cj.Gaussian(jnp.zeros(1), jnp.eye(1))), ([0], [1]))
    p2 = cj.Gaussian(jnp.array([0.0, 1.5]), jnp.diag(jnp.array([1.0, 0.5])))
    p2_overlap = cj.Gaussian(jnp.array([1.0, 0.0]), jnp.diag(jnp.array([0.5, 1.0])))
    vp = cj.VPSchedule()
    ts = jnp.array([0.1, 0.4])
    k1, k2 = jax.random.split(key)
    fc = cj.verify.composition_gap(pb, [p1, p2], vp, ts, key=k1, n=256)
    nfc = cj.verify.composition_gap(pb, [p1, p2_overlap], vp, ts, key=k2, n=256)
    assert fc.kind == "fisher_mc"
    assert np.max(fc.divergence) < 1e-6  # exact scores agree up to float32 rounding
    assert np.all(nfc.divergence > 5 * nfc.stderr) and np.all(nfc.stderr > 0)


def test_gap_bad_inputs():
    pb, p1, p2 = _z_tuple()
    vp = cj.VPSchedule()
    with pytest.raises(ValueError, match="ts must lie in"):
        cj.verify.composition_gap(pb, [p1, p2], vp, [0.5, 1.5])
    with pytest.raises(ValueError, match="weights must have shape"):
        cj.verify.composition_gap(pb, [p1, p2], vp, [0.5], weights=jnp.ones(3))
    with pytest.raises(ValueError, match="dim"):
        cj.verify.composition_gap(pb, [cj.Gaussian(jnp.zeros(3), jnp.eye(3))], vp, [0.5])
