"""factorized_conditionals (exact decisions) and projective() reports."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import composition_jax as cj

fc = cj.verify.factorized_conditionals


def _shared():
    pb = cj.Gaussian(jnp.zeros(2), 4 * jnp.eye(2))
    p1 = cj.Gaussian(jnp.array([-2.0, 0.0]), jnp.diag(jnp.array([1.0, 4.0])))
    p2 = cj.Gaussian(jnp.array([2.0, 0.0]), jnp.diag(jnp.array([4.0, 1.0])))
    p2s = cj.Gaussian(jnp.array([0.0, 2.0]), jnp.diag(jnp.array([4.0, 1.0])))
    return pb, p1, p2, p2s


def test_fc_shared_vs_split():
    pb, p1, p2, p2s = _shared()
    ok = fc(pb, [p1, p2s])
    assert ok.holds and ok.blocks == ((0,), (1,))
    bad = fc(pb, [p1, p2])
    assert not bad.holds and "conditionals 0 and 1" in bad.reasons[0]
    given = fc(pb, [p1, p2], blocks=[[0], [1]])
    assert not given.holds and given.condition2 == (True, False)
    assert "conditional 1 differs from the background off its block [1] on coordinates [0]" \
        in given.reasons[0]
    json.dumps(given.to_dict())
    assert "FAILS" in str(given)


def _random_block_cov(rng, blocks, d):
    S = np.zeros((d, d))
    for b in blocks:
        A = rng.normal(size=(len(b), len(b)))
        S[np.ix_(b, b)] = A @ A.T + len(b) * np.eye(len(b))
    return S


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fc_random_gaussian_tuples(seed):
    rng = np.random.default_rng(seed)
    d = 6
    perm = rng.permutation(d)
    M1, M2, Mb = sorted(perm[:2]), sorted(perm[2:4]), sorted(perm[4:])
    Sb = _random_block_cov(rng, [M1, M2, Mb], d)
    mb = rng.normal(size=d)

    def cond(M):
        m, S = mb.copy(), Sb.copy()
        m[M] = rng.normal(size=len(M))
        A = rng.normal(size=(len(M), len(M)))
        S[np.ix_(M, M)] = A @ A.T + np.eye(len(M))
        return m, S

    (m1, S1), (m2, S2) = cond(M1), cond(M2)
    G = lambda m, S: cj.Gaussian(jnp.asarray(m, jnp.float32), jnp.asarray(S, jnp.float32))  # noqa
    r = fc(G(mb, Sb), [G(m1, S1), G(m2, S2)])
    assert r.holds and r.blocks == (tuple(M1), tuple(M2)) and r.background_block == tuple(Mb)
    # violate condition 1: correlate the background across M1 and Mb
    Sb_bad = Sb.copy()
    Sb_bad[M1[0], Mb[0]] = Sb_bad[Mb[0], M1[0]] = 0.5
    r1 = fc(G(mb, Sb_bad), [G(m1, S1), G(m2, S2)], blocks=[M1, M2])
    assert not r1.condition1 and "condition 1 fails" in r1.reasons[0]
    # violate condition 2: conditional 1 shifts a coordinate outside its block
    m2_bad = m2.copy()
    m2_bad[Mb[1]] += 1.0
    r2 = fc(G(mb, Sb), [G(m1, S1), G(m2_bad, S2)], blocks=[M1, M2])
    assert r2.condition1 and r2.condition2 == (True, False)
    assert f"on coordinates [{Mb[1]}]" in r2.reasons[0]


def test_fc_paper_eq17_and_clutter():
    d, s0 = 8, 0.05
    S = [0, 2, 4, 6]
    conds = [cj.Gaussian(jnp.eye(d)[i], s0**2 * jnp.eye(d)) for i in S]
    empty = cj.Gaussian(jnp.zeros(d), s0**2 * jnp.eye(d))
    pu = cj.GaussianMixture(jnp.ones(d) / d, jnp.eye(d), jnp.stack([s0**2 * jnp.eye(d)] * d))
    r = fc(empty, conds)
    assert r.holds and r.blocks == tuple((i,) for i in S) and r.background_block == (1, 3, 5, 7)
    assert not fc(pu, conds).holds
    assert not fc(pu, conds, blocks=[[i] for i in S]).holds
    clut = lambda: cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.0], [1.0]]),  # noqa
                                      jnp.stack([s0**2 * jnp.eye(1)] * 2))
    on = lambda: cj.Gaussian(jnp.ones(1), s0**2 * jnp.eye(1))  # noqa
    blocks = tuple([j] for j in range(d))
    bg = cj.Product(tuple(clut() for _ in range(d)), blocks)
    cc = [cj.Product(tuple(on() if j == i else clut() for j in range(d)), blocks) for i in S]
    r = fc(bg, cc)
    assert r.holds and r.blocks == tuple((i,) for i in S)


def test_fc_bad_inputs():
    pb, p1, p2, _ = _shared()
    with pytest.raises(ValueError, match="overlap"):
        fc(pb, [p1, p2], blocks=[[0], [0, 1]])
    with pytest.raises(ValueError, match="got 2 conditionals but 1 blocks"):
        fc(pb, [p1, p2], blocks=[[0]])
    with pytest.raises(ValueError, match="dim"):
        fc(pb, [cj.Gaussian(jnp.zeros(3), jnp.eye(3))])
    with pytest.raises(NotImplementedError, match="closed form"):
        fc(pb, [cj.Empirical(jnp.zeros((3, 2)))])


def _fc3():
    pb = cj.Gaussian(jnp.zeros(3), jnp.eye(3))
    mix = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
                             jnp.stack([0.2 * jnp.eye(1)] * 2))
    p1 = cj.Product((mix, cj.Gaussian(jnp.zeros(2), jnp.eye(2))), ([0], [1, 2]))
    p2 = cj.Gaussian(jnp.array([0.0, 2.0, 0.0]), jnp.diag(jnp.array([1.0, 0.5, 1.0])))
    return pb, p1, p2


def test_projective_passes_on_exact_composition(key):
    pb, p1, p2 = _fc3()
    comp = cj.composed_distribution(pb, [p1, p2])
    k1, k2 = jax.random.split(key)
    x = comp.sample(k1, 800)
    rep = cj.verify.projective(x, [p1, cj.diffuse(p2, cj.VPSchedule())], [[0], [1]], key=k2,
                               background=pb, alpha=0.05, two_sample_n=200)
    assert rep.passed, str(rep)
    assert [b.name for b in rep.blocks] == ["conditional 0", "conditional 1", "background"]
    assert {t.name for t in rep.blocks[0].tests} == {"ks", "mean", "cov"}
    s = json.dumps(rep.to_dict())
    assert '"passed": true' in s and "PASSED" in str(rep)


def test_projective_fails_on_shared_hybrid(key):
    pb, p1, p2, _ = _shared()
    comp = cj.composed_distribution(pb, [p1, p2])  # N((-1.5, 0), I): a hybrid
    k1, k2 = jax.random.split(key)
    x = comp.sample(k1, 800)
    rep = cj.verify.projective(x, [p1, p2], [[0], [1]], key=k2, alpha=0.05)
    assert not rep.passed
    # x0 ~ N(-1.5, 1) is not conditional 0's N(-2, 1); x1 ~ N(0, 1) happens to match p2's x1
    assert not rep.blocks[0].passed and rep.blocks[1].passed
    assert "FAILED" in str(rep)


def test_projective_two_sample_block(key):
    """A 2-D block gets MMD and sliced-Wasserstein tests; a 0.5-sd shift of it is rejected."""
    pb = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    p1 = cj.Gaussian(jnp.array([1.0, 1.0]), jnp.eye(2))
    k1, k2 = jax.random.split(key)
    x = p1.sample(k1, 300) + jnp.array([[0.5, 0.0]])
    rep = cj.verify.projective(x, [p1], [[0, 1]], key=k2, alpha=0.05, background=pb,
                               sliced_wasserstein=True)
    names = {t.name: t for t in rep.blocks[0].tests}
    assert {"mmd", "sliced_wasserstein"} <= set(names)
    assert names["mmd"].rejected and not rep.passed


def test_projective_bad_inputs(key):
    pb, p1, p2, _ = _shared()
    x = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="samples have shape"):
        cj.verify.projective(jnp.zeros((10, 3)), [p1, p2], [[0], [1]], key=key)
    with pytest.raises(ValueError, match="got 2 conditionals but 1 blocks"):
        cj.verify.projective(x, [p1, p2], [[0]], key=key)
    with pytest.raises(ValueError, match="overlap"):
        cj.verify.projective(x, [p1, p2], [[0], [0, 1]], key=key)
    with pytest.raises(ValueError, match="at least 2 samples"):
        cj.verify.projective(jnp.zeros((1, 2)), [p1, p2], [[0], [1]], key=key)
    with pytest.raises(ValueError, match="outside range"):
        cj.verify.projective(x, [p1, p2], [[0], [2]], key=key)
