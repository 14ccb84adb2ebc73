"""Exact t = 0 laws of compositions and the paper's structural facts (issue 3).

Oracles: scipy log-densities of the inputs, quadrature (scipy.integrate.quad in 1-D, a fine
trapezoid grid in 2-D -- spectrally accurate for these smooth, fast-decaying integrands) or
importance sampling with an n-derived tolerance (4-D), Gaussian KL divergences in closed form, and
the closed-form noised laws of ``cj.diffuse``. Paper references: Bradley et al. 2025, Def. 5.1,
Thm 5.3, Lemma 6.2, and the claims of ``paper-digest.md`` section 10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import composition_jax as cj

TIMES = (1e-3, 0.05, 0.3, 0.7, 1.0)


# ---------------------------------------------------------------------------------- helpers
def _spd(key, d, scale=1.0):
    a = jax.random.normal(key, (d, d))
    return scale * (a @ a.T / d + 0.5 * jnp.eye(d))


def _mixture(key, k, d, cov_scale=0.5, spread=2.0):
    kw, km, kc = jax.random.split(key, 3)
    w = jax.nn.softmax(jax.random.normal(kw, (k,)))
    means = spread * jax.random.normal(km, (k, d))
    covs = jnp.stack([_spd(kk, d, cov_scale) for kk in jax.random.split(kc, k)])
    return cj.GaussianMixture(w, means, covs)


def _np_logpdf(dist, x):
    """scipy log-density of a Gaussian / mixture at points ``x (n, d)``."""
    x = np.asarray(x, np.float64)
    if isinstance(dist, cj.Gaussian):
        return np.atleast_1d(multivariate_normal(np.asarray(dist.mean), np.asarray(dist.cov))
                             .logpdf(x))
    comps = [
        np.atleast_1d(multivariate_normal(np.asarray(m), np.asarray(c)).logpdf(x))
        for m, c in zip(dist.means, dist.covs)
    ]
    return logsumexp(np.log(np.asarray(dist.weights))[:, None] + np.stack(comps), axis=0)


def _np_unnormalized(bg, cs, w, x):
    """``log p_b + sum_i w_i (log p_i - log p_b)`` with scipy."""
    lb = _np_logpdf(bg, x)
    return lb + sum(wi * (_np_logpdf(c, x) - lb) for wi, c in zip(np.asarray(w), cs))


_batch_log_prob = jax.jit(lambda d, x: jax.vmap(d.log_prob)(x))


def _on_grid(fn, xs, ts):
    """``fn(x, t)`` on every pair of ``xs (n, d)`` and ``ts`` in one jitted, vmapped call."""
    ts = jnp.asarray(ts, xs.dtype)
    x = jnp.repeat(xs, ts.shape[0], axis=0)
    t = jnp.tile(ts, xs.shape[0])
    return jax.jit(jax.vmap(fn))(x, t)


def _log_normalizer_by_quadrature(logu, mean, cov):
    """``log ∫ exp(logu)`` in 1-D (scipy quad) or 2-D (trapezoid grid covering +-12 sd)."""
    d = mean.shape[0]
    shift = float(logu(mean[None])[0])  # avoid overflow/underflow
    if d == 1:
        val, _ = integrate.quad(lambda s: np.exp(logu(np.array([[s]]))[0] - shift),
                                -np.inf, np.inf, epsabs=0, epsrel=1e-13, limit=200)
        return np.log(val) + shift
    sd = np.sqrt(np.max(np.linalg.eigvalsh(cov)))
    axes = [np.linspace(m - 12 * sd, m + 12 * sd, 401) for m in mean]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    vals = np.exp(logu(g) - shift).reshape(401, 401)
    integral = np.trapezoid(np.trapezoid(vals, axes[1], axis=1), axes[0])
    return np.log(integral) + shift


def _gaussian_kl(m0, s0, m1, s1):
    """KL(N(m0, s0) || N(m1, s1)) in closed form."""
    m0, s0, m1, s1 = (np.asarray(a, np.float64) for a in (m0, s0, m1, s1))
    d = m0.shape[0]
    sol = np.linalg.solve(s1, s0)
    dm = m1 - m0
    return 0.5 * (np.trace(sol) + dm @ np.linalg.solve(s1, dm) - d
                  + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])


def _gaussian_inputs(key, d):
    """A wide Gaussian background and three Gaussian conditionals."""
    k = jax.random.split(key, 8)
    bg = cj.Gaussian(jax.random.normal(k[0], (d,)), _spd(k[1], d, 3.0))
    cs = [cj.Gaussian(2.0 * jax.random.normal(k[2 + 2 * i], (d,)), _spd(k[3 + 2 * i], d, 0.6))
          for i in range(3)]
    return bg, cs


def _mixture_inputs(key, d):
    """Gaussian background; conditionals: mixture (K=2), mixture (K=2), Gaussian."""
    k = jax.random.split(key, 5)
    bg = cj.Gaussian(jax.random.normal(k[0], (d,)), _spd(k[1], d, 3.0))
    cs = [_mixture(k[2], 2, d), _mixture(k[3], 2, d),
          cj.Gaussian(jax.random.normal(k[4], (d,)), _spd(k[4], d, 2.0))]
    return bg, cs


# ------------------------------------------------------------- exact law vs normalized density
@pytest.mark.x64
@pytest.mark.parametrize(("family", "d"), [("gaussian", 1), ("mixture", 2)])
def test_composed_log_density_is_normalized_composition_quadrature_x64(key, d, family):
    if family == "gaussian":
        bg, cs = _gaussian_inputs(key, d)
        w = jnp.array([1.3, -0.4, 0.8])
    else:
        bg, cs = _mixture_inputs(key, d)
        w = jnp.array([1.0, 2.0, -0.3])  # mixtures: integer weights; the Gaussian: any
    q = cj.composed_distribution(bg, cs, w)
    if family == "gaussian":
        assert isinstance(q, cj.Gaussian)
    else:
        assert isinstance(q, cj.GaussianMixture) and q.num_components == 2 * 2 * 2
    mean, cov = (np.asarray(a) for a in q.moments())
    x = mean + 2.0 * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (16, d)))
    logu = lambda y: _np_unnormalized(bg, cs, w, y)
    delta = np.asarray(_batch_log_prob(q, jnp.asarray(x))) - logu(x)
    # log q - log u is the constant -log Z ...
    np.testing.assert_allclose(delta, delta[0], rtol=0, atol=1e-10)
    # ... and Z is the integral of exp(log u)
    log_z = _log_normalizer_by_quadrature(logu, mean, cov)
    np.testing.assert_allclose(-delta[0], log_z, rtol=0, atol=1e-9)
    if d == 2 and family == "mixture":
        # the mixture's moments against quadrature moments of the normalized density
        sd = np.sqrt(np.max(np.linalg.eigvalsh(cov)))
        axes = [np.linspace(m - 12 * sd, m + 12 * sd, 401) for m in mean]
        g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        dens = np.exp(logu(g) - log_z)
        h = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
        m_quad = (dens[:, None] * g).sum(0) * h
        c_quad = (dens[:, None, None] * np.einsum("ni,nj->nij", g - m_quad, g - m_quad)).sum(0) * h
        np.testing.assert_allclose(m_quad, mean, atol=1e-9)
        np.testing.assert_allclose(c_quad, cov, atol=1e-9)


@pytest.mark.x64
@pytest.mark.parametrize("family", ["mixture"])
def test_composed_normalizer_importance_sampling_4d_x64(key, family):
    d, n = 4, 20_000
    if family == "gaussian":
        bg, cs = _gaussian_inputs(key, d)
        w = jnp.array([0.7, 1.5, -0.2])
    else:
        bg, cs = _mixture_inputs(key, d)
        w = jnp.array([1.0, 1.0, 0.5])
    q = cj.composed_distribution(bg, cs, w)
    mean, cov = (np.asarray(a) for a in q.moments())
    # proposal: a Gaussian twice as wide as the composed law (not the law itself)
    prop = multivariate_normal(mean, 2.0 * cov)
    x = mean + np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (n, d))) @ np.linalg.cholesky(
        2.0 * cov).T
    logu = _np_unnormalized(bg, cs, w, x)
    ratio = np.exp(logu - prop.logpdf(x))
    z_hat, se = ratio.mean(), ratio.std(ddof=1) / np.sqrt(n)
    delta = np.asarray(_batch_log_prob(q, jnp.asarray(x[:8]))) - logu[:8]
    np.testing.assert_allclose(delta, delta[0], rtol=0, atol=1e-10)
    z = np.exp(-delta[0])
    assert abs(z_hat - z) < 5 * se, (z_hat, z, se)


def test_composed_samples_have_the_right_moments(key):
    """float32: sample moments of composed laws within 5 standard errors."""
    n = 4000
    bg, cs = _gaussian_inputs(key, 3)
    q = cj.composed_distribution(bg, cs, jnp.array([1.0, 0.5, 1.5]))
    s = np.asarray(q.sample(jax.random.fold_in(key, 1), n), np.float64)
    m, c = np.asarray(q.mean, np.float64), np.asarray(q.cov, np.float64)
    se_m = np.sqrt(np.diag(c) / n)
    assert np.all(np.abs(s.mean(0) - m) < 5 * se_m + 1e-5)
    se_c = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c * c) / n)
    assert np.all(np.abs(np.cov(s.T) - c) < 5 * se_c + 1e-5)
    bgm, csm = _mixture_inputs(jax.random.fold_in(key, 3), 2)
    qm = cj.composed_distribution(bgm, csm, jnp.array([1.0, 1.0, 1.0]))
    sm = np.asarray(qm.sample(jax.random.fold_in(key, 4), n), np.float64)
    mm, cm = (np.asarray(a, np.float64) for a in qm.moments())
    assert np.all(np.abs(sm.mean(0) - mm) < 5 * np.sqrt(np.diag(cm) / n) + 1e-5)


# -------------------------------------------------------------------------------- errors
def test_composed_distribution_errors(key):
    g0 = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
    wide = cj.Gaussian(jnp.zeros(1), 4.0 * jnp.eye(1))
    with pytest.raises(ValueError, match=r"not normalizable.*not positive definite; non-positive "
                                         r"eigenvalue\(s\) \[-0\.5\] with weights \[2\.\].*"
                                         r"background \(exponent -1\): v\^T P v = 1.*"
                                         r"conditionals\[0\] \(exponent 2\): v\^T P v = 0\.25"):
        cj.composed_distribution(g0, [wide], jnp.array([2.0]))
    mix = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.0], [1.0]]),
                             jnp.array([[[4.0]], [[0.25]]]))
    with pytest.raises(ValueError, match=r"not normalizable.*mixture component 0 of 4"):
        cj.composed_distribution(g0, [mix], jnp.array([2.0]))
    with pytest.raises(NotImplementedError, match=r"conditionals\[0\] is a Gaussian mixture with "
                                                  r"exponent 0\.5.*non-integer or negative"):
        cj.composed_distribution(g0, [mix], jnp.array([0.5]))
    with pytest.raises(NotImplementedError, match=r"background is a Gaussian mixture with "
                                                  r"exponent -1"):
        cj.composed_distribution(mix, [g0, wide])  # Bayes composition over a mixture, k = 2
    emp = cj.Empirical(jnp.zeros((3, 1)))
    with pytest.raises(NotImplementedError, match=r"conditionals\[0\] is a Empirical.*no closed"):
        cj.composed_distribution(g0, [emp])
    with pytest.raises(TypeError, match=r"conditionals\[0\] must be a Distribution.*got function"):
        cj.composed_distribution(g0, [lambda x, t: x])
    with pytest.raises(ValueError, match=r"conditionals must not be empty"):
        cj.composed_distribution(g0, [])
    with pytest.raises(ValueError, match=r"background.dim=1, conditionals\[0\].dim=2"):
        cj.composed_distribution(g0, [cj.Gaussian(jnp.zeros(2), jnp.eye(2))])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\).*got shape \(1,\)"):
        cj.composed_distribution(g0, [wide, wide], jnp.ones(1))
    with pytest.raises(ValueError, match=r"weights must be concrete"):
        jax.jit(lambda w: cj.composed_distribution(g0, [mix], w).means)(jnp.ones(1))
    # traced weights are fine for Gaussians (precision algebra is jittable)
    f = jax.jit(lambda w: cj.composed_distribution(g0, [wide], w).mean)
    np.testing.assert_allclose(f(jnp.array([0.5])),
                               cj.composed_distribution(g0, [wide], jnp.array([0.5])).mean)


# ----------------------------------------------------------------- Factorized Conditionals
BLOCKS = ((0, 1), (2, 3), (4,))  # M_1, M_2, M_b


def _block_diag(parts):
    d = sum(p.shape[0] for p in parts)
    out = jnp.zeros((d, d), parts[0].dtype)
    i = 0
    for p in parts:
        out = out.at[i:i + p.shape[0], i:i + p.shape[0]].set(p)
        i += p.shape[0]
    return out


def _fc_gaussian_tuple(key):
    """Gaussian FC tuple on R^5: p_i = p_i|M_i x p_b|M_i^c, p_b block-diagonal."""
    k = jax.random.split(key, 12)
    sizes = [len(b) for b in BLOCKS]
    bm = [jax.random.normal(k[j], (s,)) for j, s in enumerate(sizes)]
    bc = [_spd(k[3 + j], s, 2.0) for j, s in enumerate(sizes)]
    cm = [2.0 + jax.random.normal(k[6 + j], (s,)) for j, s in enumerate(sizes[:2])]
    cc = [_spd(k[8 + j], s, 0.4) for j, s in enumerate(sizes[:2])]
    bg = cj.Gaussian(jnp.concatenate(bm), _block_diag(bc))
    conds = []
    for i in range(2):
        m = [cm[j] if j == i else bm[j] for j in range(3)]
        c = [cc[j] if j == i else bc[j] for j in range(3)]
        conds.append(cj.Gaussian(jnp.concatenate(m), _block_diag(c)))
    target = cj.Gaussian(jnp.concatenate([cm[0], cm[1], bm[2]]), _block_diag([cc[0], cc[1], bc[2]]))
    return bg, conds, target


def _random_orthogonal(key, d):
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
    return q * jnp.sign(jnp.diag(r))[None, :]


def _check_fc_gaussian(key, schedule, tol):
    bg, conds, target = _fc_gaussian_tuple(key)
    q = cj.composed_distribution(bg, conds)
    # t = 0: the product of the conditionals' block marginals (claim 2), independent coupling
    # of the blocks (claim 24: zero cross-block covariance)
    np.testing.assert_allclose(q.mean, target.mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(q.cov, target.cov, rtol=tol, atol=tol)
    for i, p in enumerate((*conds, bg)):  # projective: Pi_i# C[p] = Pi_i# p_i (and p_b on M_b)
        qi, pi = q.marginal(BLOCKS[i]), p.marginal(BLOCKS[i])
        np.testing.assert_allclose(qi.mean, pi.mean, rtol=tol, atol=tol)
        np.testing.assert_allclose(qi.cov, pi.cov, rtol=tol, atol=tol)
    d = 5
    shear = jnp.eye(d).at[0, 2].set(0.9)  # mixes M_1 and M_2: not block-diagonal
    rot = _random_orthogonal(jax.random.fold_in(key, 7), d)
    scale = _block_diag([jnp.array([[1.0, 0.5], [0.0, 4.0]]), jnp.diag(jnp.array([0.5, 2.0])),
                         jnp.array([[3.0]])])  # block-diagonal, not orthogonal (claim 18)
    shift = jnp.arange(d, dtype=q.mean.dtype)
    cases = {"id": None, "rot": rot, "scale": scale, "shear": shear}
    models, laws = {}, {}
    for name, a in cases.items():
        if a is None:
            ins = [bg, *conds]
        else:
            ins = [cj.LinearPushforward(p, a, shift) for p in (bg, *conds)]
        models[name] = cj.compose(cj.diffuse(ins[0], schedule),
                                  [cj.diffuse(c, schedule) for c in ins[1:]])
        laws[name] = cj.diffuse(cj.composed_distribution(ins[0], ins[1:]), schedule)
        if a is not None:  # Lemma 6.2 at t = 0: C[A# p] = A# C[p]
            assert isinstance(laws[name].dist, cj.LinearPushforward)
    diff_bg = cj.diffuse(bg, schedule)
    diff_c = [cj.diffuse(c, schedule) for c in conds]
    xs = 2.0 + 1.5 * jax.random.normal(jax.random.fold_in(key, 3), (6, d), q.mean.dtype)

    def fn(x, t):
        out = {n: (models[n].score(x, t), laws[n].score(x, t),
                   models[n].log_prob(x, t), laws[n].log_prob(x, t)) for n in cases}
        out["blocks"] = (models["id"].score(x, t), [c.score(x, t) for c in diff_c],
                         diff_bg.score(x, t))
        return out

    o = _on_grid(fn, xs, TIMES)
    for name in ("id", "rot", "scale"):
        s_model, s_law, l_model, l_law = o[name]
        # C[p^t] = N_t[C[p]] at every t, including the normalizer (Z = 1 under FC)
        np.testing.assert_allclose(s_model, s_law, rtol=tol, atol=tol)
        np.testing.assert_allclose(l_model, l_law, rtol=tol, atol=tol)
    # blockwise score locality (claim 5): s on M_i is s_i, on M_b is s_b, at every t
    s, sc, sb = o["blocks"]
    for i in range(2):
        ix = np.asarray(BLOCKS[i])
        np.testing.assert_allclose(s[:, ix], sc[i][:, ix], rtol=tol, atol=tol)
    np.testing.assert_allclose(s[:, 4], sb[:, 4], rtol=tol, atol=tol)
    # shear (claim 17): the composed noisy scores are NOT the noised composition's
    s_model, s_law, _, _ = o["shear"]
    assert float(jnp.max(jnp.abs(s_model - s_law))) > 0.05


@pytest.mark.x64
def test_factorized_gaussian_tuple_x64(key):
    _check_fc_gaussian(key, cj.VPSchedule(), 1e-10)


def test_factorized_gaussian_tuple_float32(key):
    _check_fc_gaussian(key, cj.VESchedule(sigma_max=20.0), 2e-4)


@pytest.mark.x64
def test_factorized_product_of_mixtures_x64(key):
    """Product-of-mixtures FC tuple (claims 3-5): blockwise composition, exact at every t, also
    after a random rotation (claim 16)."""
    blocks = ((0, 1), (2,), (3,))
    k = jax.random.split(key, 6)
    b1, b2, bb = _mixture(k[0], 2, 2), _mixture(k[1], 3, 1), _mixture(k[2], 2, 1)
    c1, c2 = _mixture(k[3], 3, 2), _mixture(k[4], 2, 1)
    bg = cj.Product((b1, b2, bb), blocks)
    conds = [cj.Product((c1, b2, bb), blocks), cj.Product((b1, c2, bb), blocks)]
    target = cj.Product((c1, c2, bb), blocks)
    q = cj.composed_distribution(bg, conds)
    assert isinstance(q, cj.Product) and q.blocks == blocks
    assert [f.num_components for f in q.factors] == [3, 2, 2]  # additive, not 3*2*2*3*2
    xs = 1.5 * jax.random.normal(k[5], (8, 4))
    np.testing.assert_allclose(_batch_log_prob(q, xs), _batch_log_prob(target, xs),
                               rtol=1e-12, atol=1e-12)
    rot = _random_orthogonal(jax.random.fold_in(key, 1), 4)
    rot_in = [cj.LinearPushforward(p, rot) for p in (bg, *conds)]
    q_rot = cj.composed_distribution(rot_in[0], rot_in[1:])
    assert isinstance(q_rot, cj.LinearPushforward) and q_rot.orthogonal
    sch = cj.VPSchedule()
    pairs = {
        "id": (cj.compose(cj.diffuse(bg, sch), [cj.diffuse(c, sch) for c in conds]),
               cj.diffuse(q, sch)),
        "rot": (cj.compose(cj.diffuse(rot_in[0], sch), [cj.diffuse(c, sch) for c in rot_in[1:]]),
                cj.diffuse(q_rot, sch)),
    }
    dc = [cj.diffuse(c, sch) for c in conds]
    db = cj.diffuse(bg, sch)

    def fn(x, t):
        out = {n: (m.score(x, t), law.score(x, t), m.log_prob(x, t), law.log_prob(x, t))
               for n, (m, law) in pairs.items()}
        out["blocks"] = (pairs["id"][0].score(x, t), [c.score(x, t) for c in dc], db.score(x, t))
        return out

    o = _on_grid(fn, xs, TIMES)
    for name in pairs:
        s_m, s_l, l_m, l_l = o[name]
        np.testing.assert_allclose(s_m, s_l, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(l_m, l_l, rtol=1e-10, atol=1e-10)
    s, sc, sb = o["blocks"]
    np.testing.assert_allclose(s[:, :2], sc[0][:, :2], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s[:, 2], sc[1][:, 2], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s[:, 3], sb[:, 3], rtol=1e-10, atol=1e-10)


@pytest.mark.x64
def test_noised_path_kl_rotation_diag_and_shear_x64():
    """Digest 5.6 / claims 16-18: KL(N_s[C[p]] || C[p^s]) is 0 for a rotation and for diag(1, 4),
    and clearly positive for the shear [[1, .9], [0, 1]] (VE noising, x = A^{-1} z)."""
    pb = (jnp.zeros(2), jnp.eye(2))
    p1 = (jnp.array([2.0, 0.0]), jnp.diag(jnp.array([0.25, 1.0])))
    p2 = (jnp.array([0.0, 2.0]), jnp.diag(jnp.array([1.0, 0.25])))
    c, s_ = np.cos(0.5), np.sin(0.5)
    mats = {
        "rotation": jnp.array([[c, -s_], [s_, c]]),
        "diag": jnp.diag(jnp.array([1.0, 4.0])),
        "shear": jnp.array([[1.0, 0.9], [0.0, 1.0]]),
    }
    kls = {}
    for name, a in mats.items():
        ainv = jnp.linalg.inv(a)
        xs = [cj.LinearPushforward(cj.Gaussian(m, s), ainv).closed for m, s in (pb, p1, p2)]
        q = cj.composed_distribution(xs[0], xs[1:])
        # t = 0 (Lemma 6.2 / Thm 6.1): C[p_x] = A^{-1}# N((2, 2), .25 I) for every A
        np.testing.assert_allclose(a @ q.mean, [2.0, 2.0], atol=1e-10)
        np.testing.assert_allclose(a @ q.cov @ a.T, 0.25 * np.eye(2), atol=1e-10)
        for sigma in (0.1, 0.5, 1.0, 3.0):
            noised = [cj.Gaussian(g.mean, g.cov + sigma**2 * jnp.eye(2)) for g in xs]
            path = cj.composed_distribution(noised[0], noised[1:])
            kls[name, sigma] = _gaussian_kl(q.mean, q.cov + sigma**2 * jnp.eye(2),
                                            path.mean, path.cov)
    for sigma in (0.1, 0.5, 1.0, 3.0):
        assert abs(kls["rotation", sigma]) < 1e-10 and abs(kls["diag", sigma]) < 1e-10
    # the digest's values (exact, deterministic): 8.3e-4, 0.071, 0.052, 8.1e-4
    np.testing.assert_allclose([kls["shear", s] for s in (0.1, 0.5, 1.0, 3.0)],
                               [8.3e-4, 0.071, 0.052, 8.1e-4], rtol=0.03)


@pytest.mark.x64
def test_pushforward_equivariance_general_matrix_x64(key):
    """Lemma 6.2 with a non-orthogonal A and mixtures, via two independent routes: the closed
    form of the pushed-forward inputs vs the pushforward of the closed form."""
    d = 2
    k = jax.random.split(key, 4)
    bg = cj.Gaussian(jnp.zeros(d), _spd(k[0], d, 3.0))
    c1, c2 = _mixture(k[1], 2, d), cj.Gaussian(jnp.ones(d), _spd(k[2], d, 0.5))
    a = jnp.array([[1.5, 0.7], [-0.3, 0.8]])
    b = jnp.array([1.0, -2.0])
    w = jnp.array([2.0, 0.6])
    manual = [
        cj.Gaussian(a @ bg.mean + b, a @ bg.cov @ a.T),
        cj.GaussianMixture(c1.weights, c1.means @ a.T + b[None],
                           jnp.einsum("ij,kjl,ml->kim", a, c1.covs, a)),
        cj.Gaussian(a @ c2.mean + b, a @ c2.cov @ a.T),
    ]
    q_direct = cj.composed_distribution(manual[0], manual[1:], w)
    q_push = cj.LinearPushforward(cj.composed_distribution(bg, [c1, c2], w), a, b)
    pushed = [cj.LinearPushforward(p, a, b) for p in (bg, c1, c2)]
    q_struct = cj.composed_distribution(pushed[0], pushed[1:], w)
    assert isinstance(q_direct, cj.GaussianMixture) and isinstance(q_struct, cj.LinearPushforward)
    xs = 2.0 * jax.random.normal(k[3], (10, d))
    ref = _batch_log_prob(q_direct, xs)
    np.testing.assert_allclose(_batch_log_prob(q_push, xs), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_batch_log_prob(q_struct, xs), ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ paper toys
@pytest.mark.x64
def test_paper_gaussian_toys_x64():
    g = lambda m, v: cj.Gaussian(jnp.array(m, float), jnp.diag(jnp.array(v, float)))
    # claim 13: overlapping masks give a hybrid; the split variant is projective
    pb = g([0.0, 0.0], [4.0, 4.0])
    p1 = g([-2.0, 0.0], [1.0, 4.0])
    shared = cj.composed_distribution(pb, [p1, g([2.0, 0.0], [4.0, 1.0])])
    np.testing.assert_allclose(shared.mean, [-1.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(shared.cov, np.eye(2), atol=1e-12)
    split = cj.composed_distribution(pb, [p1, g([0.0, 2.0], [4.0, 1.0])])
    np.testing.assert_allclose(split.mean, [-2.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(split.cov, np.eye(2), atol=1e-12)
    # claim 23: conflicting projections (same mask, different marginals): the composed marginal
    # matches neither expert
    b1 = g([0.0], [1.0])
    e1, e2 = g([-1.0], [0.5]), g([1.0], [0.5])
    conf = cj.composed_distribution(b1, [e1, e2])
    np.testing.assert_allclose(conf.mean, [0.0], atol=1e-12)
    np.testing.assert_allclose(conf.cov, [[1.0 / 3.0]], atol=1e-12)
    for e in (e1, e2):
        assert _gaussian_kl(conf.mean, conf.cov, e.mean, e.cov) > 0.5
    # claim 21: weights != 1 give a geometric tilt N(16/7, 1/7), N(32/13, 1/13); and the noised
    # composition is then not the composition's diffusion path, while at w = 1 it is
    p1d = g([2.0], [0.25])
    sch = cj.VESchedule(sigma_max=20.0)
    xs = jnp.linspace(-1.0, 4.0, 6)[:, None]
    for w, (m, v) in {1.0: (2.0, 0.25), 2.0: (16 / 7, 1 / 7), 4.0: (32 / 13, 1 / 13)}.items():
        q = cj.composed_distribution(b1, [p1d], jnp.array([w]))
        np.testing.assert_allclose([q.mean[0], q.cov[0, 0]], [m, v], rtol=1e-12)
        model = cj.guidance(cj.diffuse(p1d, sch), cj.diffuse(b1, sch), w)
        law = cj.diffuse(q, sch)
        gap = _on_grid(lambda x, t, m=model, q=law: m.score(x, t) - q.score(x, t), xs,
                       (0.3, 0.5, 0.7))
        if w == 1.0:
            assert float(jnp.max(jnp.abs(gap))) < 1e-10
        else:
            assert float(jnp.max(jnp.abs(gap))) > 0.05
    np.testing.assert_allclose([16 / 7, 1 / 7, 32 / 13, 1 / 13], [2.286, 0.143, 2.462, 0.077],
                               atol=5e-4)  # the digest's rounded numbers


@pytest.mark.x64
def test_bayes_composition_laws_x64():
    """Bayes = compose with the unconditional mixture as background: one conditional gives it
    back exactly (the background cancels); two have no closed form (p_u^{-1})."""
    m1 = cj.Gaussian(jnp.array([2.0, 0.0]), 0.3 * jnp.eye(2))
    m2 = cj.Gaussian(jnp.array([0.0, 2.0]), 0.3 * jnp.eye(2))
    pu = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.stack([m1.mean, m2.mean]),
                            jnp.stack([m1.cov, m2.cov]))
    q = cj.composed_distribution(pu, [m1])
    assert isinstance(q, cj.Gaussian)
    np.testing.assert_allclose(q.mean, m1.mean, atol=1e-12)
    np.testing.assert_allclose(q.cov, m1.cov, atol=1e-12)
    with pytest.raises(NotImplementedError, match=r"background is a Gaussian mixture"):
        cj.composed_distribution(pu, [m1, m2])
    # CFG at t = 0 with a Gaussian unconditional: ∝ p_u^{1-w} p_c^w
    u = cj.Gaussian(jnp.zeros(2), 2.0 * jnp.eye(2))
    cfg = cj.composed_distribution(u, [m1], jnp.array([3.0]))
    prec = (1 - 3.0) / 2.0 + 3.0 / 0.3
    np.testing.assert_allclose(cfg.cov, np.eye(2) / prec, rtol=1e-12)
    np.testing.assert_allclose(cfg.mean, (3.0 / 0.3) * np.asarray(m1.mean) / prec, rtol=1e-12)


def test_float32_weight_rounding_still_cancels(key):
    """Exponent bookkeeping is done in float64: float32 weights whose exponents cancel only up to
    rounding still give the closed form (here the background mixture cancels: 1 - .3 - .7 = 0)."""
    mix = _mixture(key, 2, 1)
    g = cj.Gaussian(jnp.array([1.0]), jnp.array([[0.5]]))
    q = cj.composed_distribution(mix, [g, g], jnp.array([0.3, 0.7], jnp.float32))
    assert isinstance(q, cj.Gaussian)
    np.testing.assert_allclose(q.mean, g.mean, rtol=1e-6)
    np.testing.assert_allclose(q.cov, g.cov, rtol=1e-6)


def test_inputs_without_closed_form_are_named():
    """Each family says why it has no mixture form, naming the input (and the factor)."""
    g = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    g1, emp1 = cj.Gaussian(jnp.zeros(1), jnp.eye(1)), cj.Empirical(jnp.zeros((3, 1)))
    prod = cj.Product((g1, emp1), ((0,), (1,)))
    with pytest.raises(NotImplementedError, match=r"^conditionals\[0\]\.factors\[1\] is a "
                                                  r"Empirical: C\[p\] .* no closed form"):
        cj.composed_distribution(g, [prod])
    shear = cj.LinearPushforward(prod, jnp.array([[1.0, 1.0], [0.0, 1.0]]))
    assert shear.closed is None
    with pytest.raises(NotImplementedError, match=r"^background is a LinearPushforward of a "
                                                  r"Product with no closed form"):
        cj.composed_distribution(shear, [g])
    k0, k1 = jax.random.split(jax.random.key(0))
    mixes = cj.Product((_mixture(k0, 2, 1), _mixture(k1, 3, 1)), ((0,), (1,)))
    assert mixes.as_gaussian_mixture(6).num_components == 6
    assert mixes.as_gaussian_mixture(5) is None
    with pytest.raises(NotImplementedError, match=r"^x: expanding the Product into a mixture "
                                                  r"would need more than 5 components"):
        mixes._gaussian_mixture(5, "x")


def test_one_component_mixture_composes_as_a_gaussian():
    """A one-component mixture is a Gaussian: any real exponent of it has the closed form (the
    same law as with the equivalent ``cj.Gaussian``), traced weights included."""
    g0 = cj.Gaussian(jnp.zeros(1), jnp.eye(1))
    m1 = cj.GaussianMixture(jnp.ones(1), jnp.ones((1, 1)), 0.5 * jnp.ones((1, 1, 1)))
    g1 = cj.Gaussian(jnp.ones(1), 0.5 * jnp.ones((1, 1)))
    for w in (jnp.array([0.5]), jnp.array([2.0])):
        q, ref = cj.composed_distribution(g0, [m1], w), cj.composed_distribution(g0, [g1], w)
        assert isinstance(q, cj.Gaussian)
        np.testing.assert_allclose(q.mean, ref.mean, rtol=1e-6)
        np.testing.assert_allclose(q.cov, ref.cov, rtol=1e-6)
    f = jax.jit(lambda w: cj.composed_distribution(g0, [m1], w).mean)
    np.testing.assert_allclose(f(jnp.array([0.5])),
                               cj.composed_distribution(g0, [g1], jnp.array([0.5])).mean, rtol=1e-6)
