"""Score networks and ScoreNetModel: shapes, exact parameterization conversions (checked with a
network whose output is the exact Gaussian answer), conditioning, retracing, errors."""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _programs import programs_built

import composition_jax as cj
from composition_jax import nn

SCHEDULES = [cj.VPSchedule(), cj.CosineVPSchedule(), cj.VESchedule(0.01, 5.0)]


class ExactGaussNet(fnn.Module):
    """Outputs the exact eps/score/x0 of the noised law of N(0, v I) (a test oracle network)."""

    dim: int
    kind: str
    schedule: object
    v: float = 1.0
    num_conditions: int | None = None

    @property
    def null_condition(self):
        return 0

    @fnn.compact
    def __call__(self, x_in, t, cond):
        one = self.param("one", fnn.initializers.ones, (), x_in.dtype)
        a = jax.vmap(self.schedule.alpha)(t).astype(x_in.dtype)[:, None]
        s = jax.vmap(self.schedule.sigma)(t).astype(x_in.dtype)[:, None]
        x = x_in * jnp.sqrt(a * a + s * s)  # undo the model's input scaling
        var = a * a * self.v + s * s
        score = -x / var * one
        return {"score": score, "eps": -s * score, "x0": a * self.v * x / var}[self.kind]


def _conversion_scales(kind, x, a, s, score, x0):
    """Magnitudes entering the cancelling conversions (score from x0 divides by sigma^2,
    denoise from eps/score divides by alpha): float rounding error is eps_machine times these."""
    ax, sc = jnp.abs(x), jnp.abs(score)
    score_scale = (ax + a * jnp.abs(x0)) / s**2 if kind == "x0" else sc
    denoise_scale = jnp.abs(x0) if kind == "x0" else (ax + s * s * sc) / a
    return score_scale, denoise_scale


@pytest.mark.parametrize("sched", SCHEDULES, ids=["vp", "cos", "ve"])
@pytest.mark.parametrize("kind", ["eps", "score", "x0"])
def test_parameterizations_exact_on_gaussian(sched, kind, key, float_dtype):
    d, v = 3, 2.0
    net = ExactGaussNet(d, kind, sched, v)
    params = nn.init_params(net, key)
    model = nn.ScoreNetModel(net, params, sched, kind)
    cov = v * jnp.eye(d, dtype=float_dtype)
    exact = cj.diffuse(cj.Gaussian(jnp.zeros(d, float_dtype), cov), sched)
    x = jax.random.normal(key, (d,), float_dtype)
    ts = jnp.array([0.02, 0.3, 0.9], float_dtype)

    @jax.jit
    def both(model, exact):
        f = lambda m: jax.vmap(lambda t: (m.score(x, t), m.denoise(x, t)))(ts)
        return f(model), f(exact), jax.vmap(model.eps, in_axes=(None, 0))(x, ts)

    (sm, dm), (se, de), em = both(model, exact)
    a = jax.vmap(sched.alpha)(ts)[:, None]
    s = jax.vmap(sched.sigma)(ts)[:, None]
    eps_mach = float(jnp.finfo(float_dtype).eps)
    ss, ds = _conversion_scales(kind, x[None, :], a, s, se, de)
    assert sm.dtype == float_dtype and dm.dtype == float_dtype
    assert np.all(np.abs(sm - se) <= 16 * eps_mach * ss), (sm, se)
    assert np.all(np.abs(dm - de) <= 16 * eps_mach * ds), (dm, de)
    assert np.all(np.abs(em + s * se) <= 16 * eps_mach * s * ss)


@pytest.mark.x64
def test_float64_inputs_cast_float32_params(key):
    sched = cj.VPSchedule()
    net = ExactGaussNet(2, "eps", sched)
    model = nn.ScoreNetModel(net, nn.init_params(net, key, jnp.float32), sched, "eps")
    exact = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sched)
    x = jnp.array([0.3, -1.2])
    out = jax.jit(model.score)(x, 0.01)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, exact.score(x, 0.01), rtol=1e-10)


def test_mlp_and_unet_shapes(key):
    k1, k2, k3 = jax.random.split(key, 3)
    mlp = nn.MLPScoreNet(dim=3, hidden=16, depth=2, num_conditions=4)
    p = nn.init_params(mlp, k1)
    out = jax.jit(mlp.apply)(p, jnp.ones((5, 3)), jnp.full((5,), 0.3), jnp.arange(5, dtype=jnp.int32))
    assert out.shape == (5, 3)
    unet = nn.UNetScoreNet(height=8, width=8, channels=2, features=(8, 16), num_conditions=3)
    assert unet.dim == 128 and unet.null_condition == 3
    m = nn.ScoreNetModel(unet, nn.init_params(unet, k2), cj.VPSchedule())
    x = jax.random.normal(k3, (128,))
    sc, de = jax.eval_shape(lambda m, x: (m.score(x, 0.5), m.denoise(x, 0.5)), m, x)
    assert sc.shape == (128,) and de.shape == (128,)
    ep = jax.jit(m.eps)(x, 0.5)
    # zero-initialised output layer: an untrained eps network predicts eps = 0
    np.testing.assert_array_equal(ep, np.zeros(128, np.float32))
    assert nn.param_count(m.params) > 0


def test_conditioning_and_null(key):
    net = nn.MLPScoreNet(dim=2, hidden=16, depth=1, num_conditions=3)
    params = nn.init_params(net, key)
    # perturb the params so that outputs differ between conditions
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    params = jax.tree.unflatten(
        tdef, [l + 0.1 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
    )
    m = nn.ScoreNetModel(net, params, cj.VPSchedule())
    assert int(m.cond) == 3 == m.null_condition  # default: the unconditional (NULL) model
    x = jnp.array([0.5, -0.2])
    score = jax.jit(lambda m: m.score(x, 0.4))
    s = [score(m.condition(c)) for c in range(4)]
    assert not np.allclose(s[0], s[1])
    np.testing.assert_array_equal(score(m.unconditional()), s[3])
    np.testing.assert_array_equal(score(m), s[3])
    # composing per-condition models with the library operator
    comp = cj.compose(m.unconditional(), [m.condition(0), m.condition(1)])
    eps32 = float(jnp.finfo(jnp.float32).eps)
    tol = 8 * eps32 * sum(np.abs(v) for v in s)
    assert np.all(np.abs(score(comp) - (s[3] + (s[0] - s[3]) + (s[1] - s[3]))) <= tol)
    g = cj.guidance(m.condition(2), m.unconditional(), 3.0)
    assert np.all(np.abs(score(g) - (s[3] + 3.0 * (s[2] - s[3]))) <= 4 * tol)


def test_no_retrace_across_params_and_conditions(key):
    net = nn.MLPScoreNet(dim=2, hidden=16, depth=1, num_conditions=2)
    traces = []

    @jax.jit
    def f(model, x):
        traces.append(1)
        return jax.vmap(model.score, in_axes=(0, None))(x, 0.3)

    x = jnp.ones((4, 2))
    k1, k2 = jax.random.split(key)
    for k in (k1, k2):
        m = nn.ScoreNetModel(nn.MLPScoreNet(dim=2, hidden=16, depth=1, num_conditions=2),
                             nn.init_params(net, k), cj.VPSchedule())
        for c in (0, 1, 2):
            f(m.condition(c), x).block_until_ready()
    assert len(traces) == 1
    # eager == jit (to float rounding)
    eager = jax.vmap(m.score, in_axes=(0, None))(x, 0.3)
    np.testing.assert_allclose(f(m, x), eager, rtol=1e-5, atol=1e-6)


def test_errors(key):
    with pytest.raises(ValueError, match="dim must be a positive int"):
        nn.MLPScoreNet(dim=0)
    with pytest.raises(ValueError, match="hidden must be an even int"):
        nn.MLPScoreNet(dim=2, hidden=7)
    with pytest.raises(ValueError, match="num_conditions must be None or a positive int"):
        nn.MLPScoreNet(dim=2, num_conditions=0)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(features\)-1\) = 4, got \(6, 8\)"):
        nn.UNetScoreNet(height=6, width=8, features=(8, 8, 8))
    with pytest.raises(ValueError, match="features must be a non-empty sequence of even ints"):
        nn.UNetScoreNet(features=(7,))
    net = nn.MLPScoreNet(dim=2, hidden=8, depth=1)
    params = nn.init_params(net, key)
    with pytest.raises(ValueError, match="parameterization must be one of"):
        nn.ScoreNetModel(net, params, cj.VPSchedule(), "v")
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        nn.ScoreNetModel(net, params, "vp")
    with pytest.raises(TypeError, match="network must be a composition_jax.nn score network"):
        nn.ScoreNetModel(object(), params, cj.VPSchedule())
    m = nn.ScoreNetModel(net, params, cj.VPSchedule())
    with pytest.raises(ValueError, match=r"x must have shape \(2,\), got \(3, 2\)"):
        m.score(jnp.ones((3, 2)), 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        m.score(jnp.ones(2), 1.5)
    with pytest.raises(ValueError, match="this network is unconditional"):
        m.condition(0)
    cnet = nn.MLPScoreNet(dim=2, hidden=8, depth=1, num_conditions=3)
    cm = nn.ScoreNetModel(cnet, nn.init_params(cnet, key), cj.VPSchedule())
    with pytest.raises(ValueError, match=r"c must lie in \[0, 3\] \(3 = NULL\), got 4"):
        cm.condition(4)
    with pytest.raises(TypeError, match="c must be an integer scalar"):
        cm.condition(1.0)


# ------------------------------------------------------------------ LocalScoreNet
LOCAL_BLOCKS = ((0, 4), (1, 2, 5), (3,))  # a partition of range(6), out of order on purpose


def _perturbed(net, key):
    """A model of ``net`` with every parameter moved by N(0, 0.3^2): an untrained network
    outputs zero (zero output layer), whose Jacobian would be block-diagonal trivially."""
    return nn.ScoreNetModel(net, _perturb(nn.init_params(net, key), key), cj.VPSchedule())


@jax.jit
def _perturb(params, key):
    """One compiled program per network structure (op by op, every parameter shape compiled
    its own few programs)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])


def _local_model(key):
    return _perturbed(nn.LocalScoreNet(dim=6, blocks=LOCAL_BLOCKS, hidden=8, depth=2,
                                       num_conditions=3), key)


def _block_of():
    lab = np.empty(6, int)
    for b, pix in enumerate(LOCAL_BLOCKS):
        lab[list(pix)] = b
    return lab


def test_local_score_net_jacobian_is_exactly_block_diagonal(key):
    """Every off-block entry of d score / d x is exactly 0 (not rounding), for every condition
    and time, while the on-block entries are not all zero (the check can fail: the same test on
    an MLP of the same width finds off-block entries)."""
    m = _local_model(key)
    off = _block_of()[:, None] != _block_of()[None, :]
    x = 2.0 * jax.random.normal(jax.random.fold_in(key, 2), (6,))
    jac = jax.jit(lambda mc, t: jax.jacfwd(lambda z: mc.score(z, t))(x))  # one trace per network
    for c in range(4):
        for t in (0.02, 0.3, 0.99):
            J = np.asarray(jac(m.condition(c), t))
            assert np.all(J[off] == 0.0), (c, t, np.abs(J[off]).max())
            assert np.abs(J[~off]).max() > 1e-3
    mlp = _perturbed(nn.MLPScoreNet(dim=6, hidden=8, depth=2), key)
    assert np.abs(np.asarray(jac(mlp, 0.3))[off]).max() > 1e-3


def test_local_score_net_compositions_measure_local(key):
    """cj.verify.score_locality: a composition of the local network's conditionals over its own
    background measures exactly 0 off-block; over an unconstrained network's model it does not.
    Outputs are per-pixel: moving a pixel's value changes only its own block's output."""
    m = _local_model(key)
    x = jax.random.normal(jax.random.fold_in(key, 3), (16, 6))
    loc = cj.compose(m.condition(3), [m.condition(0), m.condition(1)])
    r = cj.verify.score_locality(loc, x, 0.2, LOCAL_BLOCKS)
    assert float(r.off_block_ratio) == 0.0 and float(r.off_block_ratio_se) == 0.0
    pu = _perturbed(nn.MLPScoreNet(dim=6, hidden=8, depth=1), key)
    r = cj.verify.score_locality(cj.compose(pu, [m.condition(0), m.condition(1)]), x, 0.2,
                                 LOCAL_BLOCKS)
    assert float(r.off_block_ratio) > 10 * float(r.off_block_ratio_se) > 0
    # the batched network: perturbing block 1's pixels leaves blocks 0 and 2 bit-identical
    net, params = m.network, m.params
    t, c = jnp.full((16,), 0.4), jnp.zeros((16,), jnp.int32)
    apply = jax.jit(net.apply)
    y0 = apply(params, x, t, c)
    y1 = apply(params, x.at[:, [1, 2, 5]].add(1.0), t, c)
    assert np.array_equal(y0[:, [0, 3, 4]], y1[:, [0, 3, 4]])
    assert not np.allclose(y0[:, [1, 2, 5]], y1[:, [1, 2, 5]])


def test_local_score_net_block_equals_its_own_one_block_network(key):
    """Block ``b`` of the network's output is the output of a one-block ``LocalScoreNet`` over
    ``M_b`` alone with block ``b``'s parameters (its slices of every per-block kernel, bias and
    condition-embedding column range; the shared time embedding and layer-norm parameters): the
    batched block-major layout mixes nothing between blocks, weights or conditions."""
    m = _local_model(key)
    net, params = m.network, m.params["params"]
    n, hid, last = 5, net.hidden, f"_BlockDense_{3 * net.depth + 1}"
    x = jax.random.normal(jax.random.fold_in(key, 4), (n, 6))
    t = jax.random.uniform(jax.random.fold_in(key, 5), (n,))
    c = jnp.array([0, 1, 2, 3, 1], jnp.int32)
    full = np.asarray(jax.jit(net.apply)({"params": params}, x, t, c))
    for b, pix in enumerate(LOCAL_BLOCKS):
        k = len(pix)
        one = nn.LocalScoreNet(dim=k, blocks=(tuple(range(k)),), hidden=hid, depth=net.depth,
                               num_conditions=net.num_conditions)

        def part(name, leaf, b=b, k=k):
            if name == "_BlockDense_0" and leaf.ndim == 3:
                return leaf[b:b + 1, :k]  # the padded input rows multiply zeros
            if name == last:
                return leaf[b:b + 1, ..., :k]
            if name.startswith("_BlockDense"):
                return leaf[b:b + 1]
            if name == "cond_embed":
                return leaf[:, b * hid:(b + 1) * hid]
            return leaf

        sub = {name: jax.tree.map(lambda a, name=name: part(name, a), tree)
               for name, tree in params.items()}
        want = np.asarray(jax.jit(one.apply)({"params": sub}, x[:, list(pix)], t, c))
        np.testing.assert_allclose(full[:, list(pix)], want, rtol=2e-5, atol=1e-6)


def test_local_score_net_errors():
    with pytest.raises(ValueError, match=r"blocks must partition range\(dim = 4\): repeated "
                                         r"\[1\], missing \[3\], out of range \[\]"):
        nn.LocalScoreNet(dim=4, blocks=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match=r"out of range \[4\]"):
        nn.LocalScoreNet(dim=4, blocks=((0, 1, 2), (3, 4)))
    with pytest.raises(ValueError, match="blocks must be non-empty"):
        nn.LocalScoreNet(dim=2, blocks=((0, 1), ()))
    with pytest.raises(ValueError, match="blocks must be non-empty"):
        nn.LocalScoreNet(dim=2)
    with pytest.raises(TypeError, match="blocks must be a sequence of sequences"):
        nn.LocalScoreNet(dim=2, blocks=(0, 1))
    with pytest.raises(ValueError, match="hidden must be an even int"):
        nn.LocalScoreNet(dim=2, blocks=((0, 1),), hidden=3)


@pytest.mark.parametrize("parameterization", ["eps", "velocity"])
def test_eager_network_call_is_one_program_and_equals_jit_bitwise(parameterization):
    """Called eagerly, a network model's score / denoise / eps / velocity each run ONE program
    (not one per layer op); new parameters of the same network reuse it; and the result equals
    ``jax.jit`` of the same call bit for bit."""
    net = nn.MLPScoreNet(dim=3, hidden=24, depth=2)
    params = nn.init_params(net, jax.random.key(1))
    sched = cj.CosineVPSchedule()
    m = nn.ScoreNetModel(net, params, sched, parameterization=parameterization)
    m2 = nn.ScoreNetModel(net, jax.tree.map(lambda a: 0.5 * a, params), sched,
                          parameterization=parameterization)
    x, t = jnp.asarray([0.3, -1.2, 2.0], jnp.float32), jnp.float32(0.4)
    for name in ("score", "denoise", "eps", "velocity"):
        eager, first = programs_built(lambda m, name=name: getattr(m, name)(x, t), m)
        _, again = programs_built(lambda m, name=name: getattr(m, name)(x, t), m2)
        assert first <= 1 and again == 0, (name, first, again)
        jitted = jax.jit(lambda m, x, t, name=name: getattr(m, name)(x, t))(m, x, t)
        np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted), err_msg=name)
